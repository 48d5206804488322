"""Measuring, one concern per module: timing, FLOP (MAC) counting, memory. No suite logic."""
