"""Session-wide test settings (here, at the root, so doctests under meshrec/ and manolayer/ get them too)."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="session", autouse=True)
def private_cache(tmp_path_factory):
    """Tests never write to the user's cache (``~/.cache/meshrec``): mesh hierarchies and parsed
    labels go to one session folder, shared by the tests and the processes they start."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("MESHREC_CACHE_DIR", str(tmp_path_factory.mktemp("meshrec-cache")))
        yield
