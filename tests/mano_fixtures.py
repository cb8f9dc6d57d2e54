"""Tiny MANO-format model files written by the tests themselves.

The official MANO files cannot be shipped, so these fixtures reproduce their *storage*:
a protocol-2 pickle of a dict whose ``shapedirs`` is a chumpy ``Select`` over a chumpy
``Ch``, whose ``J_regressor`` is a scipy CSC matrix, and whose ``kintree_table`` stores
the root's parent as 4294967295 — all written without chumpy, through stand-in classes
that pickle under the original module and class names.
"""

from __future__ import annotations

import contextlib
import copyreg
import pickle
import sys
import types
from pathlib import Path

import numpy as np

from manolayer.testing import random_mano_arrays  # noqa: F401  (re-exported for the tests)


class _StandIn:
    """Pickles as ``__newobj__(cls)`` + a state dict, like chumpy and scipy objects do."""

    def __init__(self, **state):
        self.__dict__.update(state)

    def __reduce_ex__(self, protocol):
        return copyreg.__newobj__, (type(self),), dict(self.__dict__)


@contextlib.contextmanager
def _importable_as(classes: dict[str, type]):
    """Make stand-in classes findable under the official module names while pickling."""
    saved = {}
    try:
        for qualified, cls in classes.items():
            module_name, name = qualified.rsplit(".", 1)
            for part in _prefixes(module_name):
                saved.setdefault(part, sys.modules.get(part))
                if part not in sys.modules:
                    sys.modules[part] = types.ModuleType(part)
            module = types.ModuleType(module_name)
            setattr(module, name, cls)
            sys.modules[module_name] = module
            cls.__module__, cls.__qualname__, cls.__name__ = module_name, name, name
        yield
    finally:
        for part, module in saved.items():
            if module is None:
                sys.modules.pop(part, None)
            else:
                sys.modules[part] = module


def _prefixes(module_name: str) -> list[str]:
    parts = module_name.split(".")
    return [".".join(parts[: i + 1]) for i in range(len(parts))]


def official_style_payload(arrays: dict[str, np.ndarray]) -> dict:
    """The dict an official pickle holds: chumpy shapedirs, CSC regressor, uint32 root parent."""
    Ch = type("Ch", (_StandIn,), {})
    Select = type("Select", (_StandIn,), {})
    Csc = type("csc_matrix", (_StandIn,), {})
    payload = dict(arrays)

    shapedirs = arrays["shapedirs"]
    order = np.random.default_rng(1).permutation(shapedirs.size)
    scrambled = np.empty(shapedirs.size)
    scrambled[order] = shapedirs.ravel()
    payload["shapedirs"] = Select(a=Ch(x=scrambled), idxs=order, preferred_shape=shapedirs.shape)

    dense = arrays["J_regressor"]
    rows, cols = np.nonzero(dense.T)  # column-major walk: (col, row) pairs sorted by column
    payload["J_regressor"] = Csc(
        _shape=dense.shape,
        data=dense[cols, rows],
        indices=cols.astype(np.int32),
        indptr=np.searchsorted(rows, np.arange(dense.shape[1] + 1)).astype(np.int32),
        maxprint=50,
    )
    kintree = arrays["kintree_table"].astype(np.uint32)  # -1 wraps to 4294967295 as in the file
    payload["kintree_table"] = kintree
    payload["_classes"] = {"chumpy.ch.Ch": Ch, "chumpy.reordering.Select": Select, "scipy.sparse.csc.csc_matrix": Csc}
    return payload


def write_official_style_pickle(path: Path, arrays: dict[str, np.ndarray]) -> Path:
    payload = official_style_payload(arrays)
    classes = payload.pop("_classes")
    with _importable_as(classes):
        path.write_bytes(pickle.dumps(payload, protocol=2))
    return path


def write_hostile_pickle(path: Path) -> Path:
    """A pickle that would run ``os.system`` if loaded naively."""

    class Exploit:
        def __reduce__(self):
            import os

            return os.system, (f"touch {path.parent / 'PWNED'}",)

    path.write_bytes(pickle.dumps({"v_template": Exploit()}, protocol=2))
    return path
