"""Lazy package attributes: a package lists what it offers, and imports each only when used.

``import meshrec`` must stay light (no torch, no trimesh, no renderer) while
``from meshrec import HandMeshReconstructor`` works; a package's ``__getattr__`` and
``__dir__`` come from :func:`lazy_attributes`.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping


def lazy_attributes(package: str, exports: Mapping[str, str]) -> tuple[Callable[[str], object], Callable[[], list[str]]]:
    """``(__getattr__, __dir__)`` for ``package`` whose public name ``N`` lives in module ``exports[N]``.

    An attribute is imported on first use and then cached in the package's namespace.
    """
    namespace = importlib.import_module(package).__dict__

    def __getattr__(name: str) -> object:
        if name not in exports:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(exports[name]), name)
        namespace[name] = value
        return value

    def __dir__() -> list[str]:
        return sorted(set(namespace) | set(exports))

    return __getattr__, __dir__
