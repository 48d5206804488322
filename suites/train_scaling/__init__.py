"""The train-scaling suite: its definition (``suite.py``), default config (``default.yaml``) and
other configs beside it, and its report (``report.py``)."""
