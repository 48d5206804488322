"""One module per structured-matrix family; importing this package registers every module in it.

Adding a family is adding a file here with a ``@register_family`` class: the registry,
the CLI and the registry-driven tests pick it up with no other edit.
"""
import importlib
import pkgutil

for _info in pkgutil.iter_modules(__path__):
    importlib.import_module(f"{__name__}.{_info.name}")
