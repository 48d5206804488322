"""User-facing errors: the CLI prints these as one line and exits non-zero, no traceback."""


class StructbenchError(ValueError):
    """Bad input from a user (name, shape, ratio, hyperparameter, config); message is one line."""
