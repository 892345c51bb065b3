"""Re-exports imported on first use (PEP 562), for the packages' `__init__` files: importing a
module of a package runs the package's `__init__` first, and a module with no IO (`_wire`,
`_record`) must not bring trio, zmq or zeroconf in with it."""

from __future__ import annotations

import importlib
from collections.abc import Callable, Iterable, Mapping
from typing import Any


def lazy_exports(
    package: str, namespace: dict[str, Any], exports: Mapping[str, Iterable[str]]
) -> tuple[Callable[[str], object], Callable[[], list[str]]]:
    """A package's module `__getattr__` and `__dir__`: `exports` maps each relative module name
    to the names it provides; a name is imported on first access and stored in `namespace` (the
    package's globals), so later lookups never reach `__getattr__`. An unknown name raises
    `AttributeError`, as for any module."""
    module_of = {name: module for module, names in exports.items() for name in names}

    def import_export(name: str) -> object:
        try:
            module = module_of[name]
        except KeyError:
            raise AttributeError(f"module {package!r} has no attribute {name!r}") from None
        value = getattr(importlib.import_module(module, package), name)
        namespace[name] = value
        return value

    def names() -> list[str]:
        return sorted({*namespace, *namespace["__all__"]})

    return import_export, names
