from __future__ import annotations

from pathlib import Path

import pytest
import torch

from tests.mano_fixtures import random_mano_arrays, write_official_style_pickle

MAKEHUMAN_ASSETS = Path(__file__).resolve().parents[1].parent / "shared" / "makehuman"


def _devices() -> list:
    cuda = pytest.param(
        "cuda", marks=pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device on this machine")
    )
    return ["cpu", cuda]


@pytest.fixture(params=_devices())
def device(request) -> torch.device:
    return torch.device(request.param)


@pytest.fixture(scope="session")
def mano_arrays() -> dict:
    """Arrays of a random 778-vertex MANO-format model with pose correctives."""
    return random_mano_arrays(num_vertices=778, seed=0)


@pytest.fixture(scope="session")
def right_pickle(tmp_path_factory, mano_arrays) -> Path:
    """An official-style MANO_RIGHT.pkl (chumpy shapedirs, CSC regressor) of random arrays."""
    return write_official_style_pickle(tmp_path_factory.mktemp("mano") / "MANO_RIGHT.pkl", mano_arrays)


@pytest.fixture(scope="module")
def prediction(tmp_path_factory):
    """A tiny random network's prediction for a right and a left crop (64 x 64)."""
    from meshrec.models.backbone import BackboneConfig
    from meshrec.models.reconstructor import HandMeshReconstructor, ModelConfig

    torch.manual_seed(0)
    model = HandMeshReconstructor(
        ModelConfig(image_size=64, backbone=BackboneConfig(widths=(8, 16, 24, 32))),
        hierarchy_cache_dir=tmp_path_factory.mktemp("hierarchy"),
    )
    return model.predict(torch.rand(2, 3, 64, 64), side=["right", "left"])
