"""Synthetic data: FreiHAND layout read back, labels consistent with images, resume and extend."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from meshrec.errors import MeshrecError
from meshrec.render import gl_available

pytestmark = pytest.mark.skipif(not gl_available(), reason="the OpenGL renderer (EGL) is unavailable here")


@pytest.fixture(scope="module")
def written(tmp_path_factory):
    from meshrec.data.synthetic import write_synthetic_dataset

    root = tmp_path_factory.mktemp("synth") / "set"
    write_synthetic_dataset(root, 20, size=96, seed=3, eval_fraction=0.25, progress=False)
    return root


def _decoded(jpeg: bytes) -> np.ndarray:
    from io import BytesIO

    from PIL import Image

    return np.asarray(Image.open(BytesIO(jpeg)), dtype=np.float64)


def _files(root):
    return {p.relative_to(root): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_reads_back_as_freihand_with_consistent_labels(written):
    from manolayer import ManoLayer
    from meshrec.data.freihand import FreiHandDataset
    from meshrec.geometry.camera import project_points

    manifest = json.loads((written / "manifest.json").read_text())
    assert manifest["counts"] == {"training": 15, "evaluation": 5}
    train = FreiHandDataset(written, "training", crop_size=None)
    assert len(train) == 15 and len(FreiHandDataset(written, "evaluation", crop_size=None)) == 5
    sides = json.loads((written / "training_side.json").read_text())
    layers = {side: ManoLayer(side=side, use_pca=False, flat_hand_mean=True) for side in ("right", "left")}
    for index in range(0, 15, 3):
        sample = train[index]
        assert sample.has_mesh and sample.has_joints3d and sample.has_mano and sample.has_mask
        # the MANO labels give back the vertices
        mano_labels = json.loads((written / "training_mano.json").read_text())[index]  # FreiHAND: [[61 values]]
        mano = torch.as_tensor(np.asarray(mano_labels), dtype=torch.float32).reshape(61)
        out = layers[sides[index]](mano[:3][None], mano[3:48][None], mano[48:58][None], mano[58:61][None])
        torch.testing.assert_close(out.vertices[0], sample.vertices, atol=1e-4, rtol=0)
        # projected vertices fall on the rendered mask (allowing a pixel at the silhouette)
        uv = project_points(sample.vertices[None], sample.K[None])[0].round().long()
        inside = (uv >= 0).all(1) & (uv < 96).all(1)
        mask = torch.nn.functional.max_pool2d(sample.mask[None].float(), 3, 1, 1)[0, 0] > 0.5
        assert mask[uv[inside, 1], uv[inside, 0]].float().mean() > 0.97


def test_resume_and_extend_render_only_what_is_missing(written, tmp_path):
    from meshrec.data.synthetic import write_synthetic_dataset

    root = tmp_path / "grown"
    first = write_synthetic_dataset(root, 8, size=96, seed=3, eval_fraction=0.25, progress=False)
    before = _files(root / "training" / "rgb")
    grown = write_synthetic_dataset(root, 20, size=96, seed=3, eval_fraction=0.25, progress=False)
    assert first.rendered == 8 and grown.rendered == 12
    after = _files(root / "training" / "rgb")
    assert all(after[name] == data for name, data in before.items())
    grown_files, fresh_files = _files(root), _files(written)
    assert grown_files.keys() == fresh_files.keys()
    for name, data in fresh_files.items():  # the same as a run that made all 20 at once
        if name.suffix == ".json" and name.name not in ("manifest.json", "training_side.json", "evaluation_side.json"):
            # labels: float32 sums in batches of another size may differ in the last written digit
            np.testing.assert_allclose(np.asarray(json.loads(grown_files[name])), np.asarray(json.loads(data)), atol=2e-6)
        elif name.suffix == ".jpg":  # a last-bit difference in a vertex may move an edge pixel
            assert np.abs(_decoded(grown_files[name]) - _decoded(data)).mean() < 0.5, name
        else:
            assert grown_files[name] == data, name
    assert write_synthetic_dataset(root, 20, size=96, seed=3, eval_fraction=0.25, progress=False).rendered == 0


def test_bad_arguments_are_named(tmp_path):
    from meshrec.data.synthetic import write_synthetic_dataset

    with pytest.raises(MeshrecError, match="num"):
        write_synthetic_dataset(tmp_path, 0, progress=False)
    with pytest.raises(MeshrecError, match="eval_fraction"):
        write_synthetic_dataset(tmp_path, 10, eval_fraction=1.5, progress=False)


def test_on_the_fly_dataset_is_repeatable_and_loads_in_workers():
    from meshrec.data.sample import collate_hand_samples
    from meshrec.data.synthetic import SyntheticHandDataset

    dataset = SyntheticHandDataset(8, size=64, seed=5)
    first, again = dataset[3], dataset[3]
    torch.testing.assert_close(first.joints3d, again.joints3d)
    assert first.has_mesh and first.has_joints3d and first.has_joints2d and first.image.shape == (3, 64, 64)
    loader = torch.utils.data.DataLoader(dataset, batch_size=4, num_workers=2, collate_fn=collate_hand_samples)
    batches = list(loader)
    assert len(batches) == 2 and bool(batches[0].has_mesh.all())
    torch.testing.assert_close(batches[0].joints3d[3], first.joints3d)
