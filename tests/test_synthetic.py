"""Synthetic data: FreiHAND layout read back, labels agree with the pixels, resume, determinism."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from meshrec.errors import MeshrecError
from meshrec.render import gl_available

pytestmark = pytest.mark.skipif(not gl_available(), reason="OpenGL/EGL renderer unavailable")


def _write(root, num, **kwargs):
    from meshrec.data.synthetic import write_synthetic_dataset

    return write_synthetic_dataset(root, num, size=64, seed=3, progress=False, **kwargs)


def _decoded(jpeg: bytes) -> np.ndarray:
    from io import BytesIO

    from PIL import Image

    return np.asarray(Image.open(BytesIO(jpeg)), dtype=np.float64)


def _files(root):
    return {p.relative_to(root): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def written(tmp_path_factory):
    root = tmp_path_factory.mktemp("synth") / "set"
    _write(root, 20)
    return root


def test_written_set_reads_back_with_consistent_labels(written):
    import json

    from meshrec.data.freihand import FreiHandDataset

    assert json.loads((written / "manifest.json").read_text())["counts"] == {"training": 18, "evaluation": 2}
    assert len(json.loads((written / "training_side.json").read_text())) == 18
    for split, count in (("training", 18), ("evaluation", 2)):
        dataset = FreiHandDataset(written, split, crop_size=None)
        assert len(dataset) == count
        for i in range(count):
            sample = dataset[i]
            assert sample.has_mesh and sample.has_mano and sample.has_mask and sample.image.shape == (3, 64, 64)
            mask = sample.mask[0] > 0.5
            rows, cols = torch.nonzero(mask, as_tuple=True)
            centroid = sample.joints2d.mean(0)
            assert cols.min() - 2 <= centroid[0] <= cols.max() + 2 and rows.min() - 2 <= centroid[1] <= rows.max() + 2
            uv = (sample.vertices[:, :2] / sample.vertices[:, 2:]) * sample.K[[0, 1], [0, 1]] + sample.K[:2, 2]
            inside = (uv[:, 0] > -0.5) & (uv[:, 0] < 63.5) & (uv[:, 1] > -0.5) & (uv[:, 1] < 63.5)
            pixels = uv[inside].round().long()
            assert mask[pixels[:, 1], pixels[:, 0]].float().mean() > 0.8


def test_mano_labels_reproduce_the_vertices(written):
    import json

    from manolayer import ManoLayer

    mano = np.array(json.loads((written / "training_mano.json").read_text()))[:, 0]
    verts = np.array(json.loads((written / "training_verts.json").read_text()))
    sides = json.loads((written / "training_side.json").read_text())
    for side in ("right", "left"):
        chosen = [i for i, s in enumerate(sides) if s == side]
        params = torch.tensor(mano[chosen], dtype=torch.float32)
        out = ManoLayer(side=side, use_pca=False, flat_hand_mean=True)(params[:, :3], params[:, 3:48], params[:, 48:58], params[:, 58:])
        np.testing.assert_allclose(out.vertices.numpy(), verts[chosen], atol=1e-4)


def test_resume_keeps_files_and_matches_a_fresh_run(tmp_path, written):
    root = tmp_path / "grown"
    _write(root, 10)
    first = _files(root)
    _write(root, 20)
    grown = _files(root)
    for name in ("training/rgb/00000008.jpg", "training/mask/00000003.jpg", "evaluation/rgb/00000000.jpg"):
        assert first[Path(name)] == grown[Path(name)]
    fresh = _files(written)
    assert grown.keys() == fresh.keys()
    for name, data in fresh.items():
        if name.parent.name == "rgb":  # float32 rounding inside a render batch may move an edge pixel
            assert np.abs(_decoded(grown[name]) - _decoded(data)).mean() < 0.5, name
        else:
            assert grown[name] == data, name


def test_online_dataset_is_deterministic_and_batched_like_single():
    from meshrec.data.synthetic import SyntheticHandDataset

    dataset = SyntheticHandDataset(8, size=64, seed=1)
    single = dataset[5]
    batch = dataset.__getitems__([2, 5])
    assert torch.equal(single.image, batch[1].image) and torch.equal(single.joints3d, batch[1].joints3d)
    assert single.has_mesh and single.has_joints2d and single.has_mano and single.has_mask
    assert not torch.equal(batch[0].image, batch[1].image)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"num": 0}, "num must be a positive int"),
        ({"num": 5, "eval_fraction": 1.5}, "eval_fraction must be in"),
        ({"num": 5, "size": 4}, "size must be an int >= 16"),
        ({"num": 5, "backgrounds": "/nonexistent/folder"}, "not a folder"),
    ],
)
def test_bad_arguments_raise_meshrec_error(tmp_path, kwargs, message):
    from meshrec.data.synthetic import write_synthetic_dataset

    with pytest.raises(MeshrecError, match=message):
        write_synthetic_dataset(tmp_path / "x", progress=False, **kwargs)


def test_extending_with_other_settings_or_fewer_samples_is_refused(written):
    from meshrec.data.synthetic import write_synthetic_dataset

    with pytest.raises(MeshrecError, match="seed=3 but this run has seed=4"):
        write_synthetic_dataset(written, 30, size=64, seed=4, progress=False)
    with pytest.raises(MeshrecError, match="already has 18 training samples"):
        write_synthetic_dataset(written, 10, size=64, seed=3, progress=False)
