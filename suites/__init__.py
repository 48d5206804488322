"""Suite definitions: one module (``SUITE``) and one YAML config per suite."""
