"""The two exceptions a user sees by name: a usage error, and a case that does not apply.

Everything else raised inside a case is a fault: the case becomes an ``error`` row with its
traceback logged (``structbench.cases``).
"""
from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path
from typing import Iterator


class StructbenchError(ValueError):
    """Bad input from a user (name, shape, ratio, hyperparameter, config), or a set-up that
    cannot work (a missing package or file); the message is one line. The CLI prints it as
    ``error: ...`` and exits 2; raised inside a case, it makes an ``error`` row."""


class NotApplicable(ValueError):
    """This case does not apply: a family has no structure at this rho on this shape, a mode
    needs a device or kernel the case lacks. The case becomes a ``skipped`` row with this
    message as its reason. Deliberately not a ``StructbenchError``: a broken set-up must never
    pass for a gap in a table."""


@contextmanager
def writable(flag: str, target: Path) -> Iterator[None]:
    """Turn an ``OSError`` while writing under ``target`` (given by ``flag``, e.g. ``--out``)
    into one line naming the path that could not be written."""
    try:
        yield
    except OSError as err:
        where = err.filename or target
        raise StructbenchError(f"{flag} {target}: cannot write {where} ({err.strerror or err}); "
                               "give a writable folder") from None
