"""Public names loaded on first use (PEP 562): one helper for every package that re-exports heavy modules.

``import deidpipe`` and ``deidpipe --help`` must cost milliseconds, not the second that pydicom, numpy, polars or
SimpleITK take to import; so a package lists which module defines each public name and imports it on first
access. Type checkers see the names through the package's ``if TYPE_CHECKING:`` imports.
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Callable, Iterable, Mapping
from typing import Any


def lazy_names(package: str, where: Mapping[str, str], modules: Iterable[str] = ()) -> Callable[[str], Any]:
    """A module ``__getattr__`` for ``package``: ``where`` maps each public name to the module that defines it
    (absolute, or relative to ``package`` with a leading dot). The first access imports that module and caches
    the name in the package, so the next one is a plain attribute. ``modules``: public names that are sub-modules
    of ``package`` themselves (``deidpipe.serve``), imported on first access."""
    submodules = frozenset(modules)

    def __getattr__(name: str) -> Any:
        if name in submodules:  # importing a sub-module binds it in its package: the next access is plain
            return importlib.import_module(f"{package}.{name}")
        module = where.get(name)
        if module is None:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(module, package), name)
        setattr(sys.modules[package], name, value)
        return value

    return __getattr__
