"""Where meshrec caches what it can rebuild (mesh hierarchies, parsed label files)."""

from __future__ import annotations

import os
from pathlib import Path


def cache_root() -> Path:
    """``$MESHREC_CACHE_DIR``, else ``~/.cache/meshrec``. Nothing is created here."""
    root = os.environ.get("MESHREC_CACHE_DIR")
    return Path(root) if root else Path.home() / ".cache" / "meshrec"
