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


# --------------------------------------------------------------------------- fast paths and crash safety


def _old_label_text(entry: np.ndarray) -> str:
    """How labels were written before the vectorised formatter (the reference)."""
    import json

    return json.dumps(np.round(np.asarray(entry, dtype=np.float64), 6).tolist(), separators=(",", ":"))


@pytest.mark.parametrize("shape, spread", [((7, 40, 3), 0.2), ((5, 3, 3), 150.0), ((6, 1, 61), 2.0), ((4, 5), 3000.0)])
def test_label_text_parses_to_the_same_doubles_as_json_dumps(shape, spread):
    import json

    from meshrec.data.synthetic.labels import _json_entries

    rng = np.random.default_rng(0)
    values = rng.normal(0.0, spread, shape).astype(np.float32).astype(np.float64)
    flat = values.reshape(-1)
    # halfway cases, values that round to -0.0, round up a digit, or are tiny
    flat[:8] = [5e-7, -5e-7, -4e-7, 0.0, -0.0, 999.9999996, 1.5e-6, 2.5e-6][: flat.size]
    ours = np.array(json.loads("[" + _json_entries(values).decode() + "]"), dtype=np.float64)
    reference = np.array(json.loads("[" + ",".join(_old_label_text(e) for e in values) + "]"), dtype=np.float64)
    assert ours.shape == values.shape
    np.testing.assert_array_equal(ours.view(np.int64), reference.view(np.int64))  # bit for bit, signs of zero too


def test_label_text_rejects_non_finite_values():
    from meshrec.data.synthetic.labels import _json_entries

    with pytest.raises(MeshrecError, match="finite"):
        _json_entries(np.array([[0.5, np.nan]]))


def test_enlarging_matrix_is_pils_bicubic_resize():
    from PIL import Image

    from meshrec.data.synthetic.backgrounds import _enlarging_matrix

    grid = np.random.default_rng(1).random((7, 7)).astype(np.float32)
    enlarge = _enlarging_matrix(7, 64)
    pil = np.asarray(Image.fromarray(grid).resize((64, 64), Image.BICUBIC))
    np.testing.assert_allclose(enlarge @ grid @ enlarge.T, pil, atol=1e-5)


def test_backgrounds_are_repeatable_images_in_range(tmp_path):
    from PIL import Image

    from meshrec.data.synthetic import make_background

    Image.fromarray(np.full((40, 50, 3), 200, np.uint8)).save(tmp_path / "grey.png")
    kinds = set()
    for seed in range(24):
        first = make_background(np.random.default_rng(seed), 32, [tmp_path / "grey.png"])
        again = make_background(np.random.default_rng(seed), 32, [tmp_path / "grey.png"])
        assert first.shape == (32, 32, 3) and first.dtype == np.float32
        assert first.min() >= 0.0 and first.max() <= 1.0
        np.testing.assert_array_equal(first, again)
        kinds.add(int(np.random.default_rng(seed).integers(4)))
    assert kinds == {0, 1, 2, 3}


def test_hands_look_like_lit_skin(written):
    """Mean brightness of the hand pixels: hands were once rendered too dark."""
    from PIL import Image

    luma = []
    for i in range(18):
        rgb = np.asarray(Image.open(written / "training" / "rgb" / f"{i:08d}.jpg"), dtype=np.float64) / 255
        mask = np.asarray(Image.open(written / "training" / "mask" / f"{i:08d}.jpg")) > 127
        luma.append(rgb[mask].mean(0) @ [0.299, 0.587, 0.114])
    assert 0.4 < np.mean(luma) < 0.8, luma


def test_worker_processes_write_what_one_process_writes(tmp_path, written):
    one = tmp_path / "one"
    _write(one, 20, workers=1)
    assert _files(one) == _files(written)  # the fixture used the default, two worker processes


def _assert_valid_committed_set(root: Path) -> dict[str, int]:
    """Every label file parses, all hold the manifest's counts, and images exist for exactly those samples."""
    import json

    manifest = json.loads((root / "manifest.json").read_text())
    for split, count in manifest["counts"].items():
        for name in ("K", "xyz", "verts", "mano", "side"):
            path = root / f"{split}_{name}.json"
            assert len(json.loads(path.read_text())) == count, path
            assert path.stat().st_size == manifest["label_bytes"][split][name]
        for folder in ("rgb", "mask"):
            assert sorted(p.name for p in (root / split / folder).iterdir()) == [f"{i:08d}.jpg" for i in range(count)]
    return manifest["counts"]


def _labels_and_masks_match(root: Path, reference: Path) -> None:
    grown, fresh = _files(root), _files(reference)
    assert grown.keys() == fresh.keys()
    for name, data in fresh.items():
        if name.suffix == ".json":
            assert grown[name] == data, name
        else:  # other chunking: an edge pixel may move (float32 rounding inside a render batch)
            assert np.abs(_decoded(grown[name]) - _decoded(data)).mean() < 0.5, name


def test_interrupted_run_keeps_a_valid_set_and_resumes_to_the_same_labels(tmp_path, monkeypatch, written):
    import meshrec.data.synthetic.pool as pool

    root = tmp_path / "interrupted"
    real_write_images = pool.write_images
    calls = []

    def interrupted_write_images(*args):
        calls.append(1)
        if len(calls) == 4:  # Ctrl-C while the fourth chunk's images are written
            real_write_images(*args)
            raise KeyboardInterrupt
        real_write_images(*args)

    monkeypatch.setattr(pool, "write_images", interrupted_write_images)
    with pytest.raises(KeyboardInterrupt):
        _write(root, 20, workers=1, batch_size=3, flush_every=5)
    assert _assert_valid_committed_set(root) == {"training": 6, "evaluation": 0}  # commits after chunks 2 and 4
    monkeypatch.setattr(pool, "write_images", real_write_images)
    _write(root, 20, workers=1, batch_size=3, flush_every=5)
    _assert_valid_committed_set(root)
    _labels_and_masks_match(root, written)


def test_a_run_killed_mid_append_is_cut_back_to_its_last_commit(tmp_path, written):
    root = tmp_path / "killed"
    _write(root, 10)
    committed = _files(root)
    # what a kill during the append and before the commit leaves: a torn label file, images
    # of samples no commit names
    verts = root / "training_verts.json"
    verts.write_bytes(verts.read_bytes()[:-1] + b",[[0.1,0.2")
    (root / "training" / "rgb" / "00000009.jpg").write_bytes(b"partial")
    (root / "training" / "mask" / "00000012.jpg").write_bytes(b"partial")
    _write(root, 10)  # nothing to render: only the repair
    assert _files(root) == committed
    verts.write_bytes(verts.read_bytes()[:-1] + b",[[0.1,0.2")
    _write(root, 20)
    _assert_valid_committed_set(root)
    _labels_and_masks_match(root, written)


def test_label_files_without_a_manifest_are_refused(tmp_path):
    (tmp_path / "foreign").mkdir()
    (tmp_path / "foreign" / "training_K.json").write_text("[]")
    with pytest.raises(MeshrecError, match="no manifest.json"):
        _write(tmp_path / "foreign", 5)


def test_signals_wait_for_the_commit():
    import signal

    from meshrec.data.synthetic.interrupts import signals_deferred

    reached_end = False
    with pytest.raises(KeyboardInterrupt):
        with signals_deferred():
            signal.raise_signal(signal.SIGINT)
            reached_end = True
    assert reached_end


def test_gl_tiles_keep_meshes_cut_by_the_border_apart():
    """One draw call renders a whole sheet: a mesh leaving its tile must not reach its neighbour's."""
    from meshrec.render import get_renderer

    z = 0.4
    K = torch.tensor([[80.0, 0.0, 15.5], [0.0, 80.0, 15.5], [0.0, 0.0, 1.0]])
    square = torch.tensor([[-0.1, -0.1, z], [0.1, -0.1, z], [0.1, 0.1, z], [-0.1, 0.1, z]])
    faces = torch.tensor([[0, 1, 2], [0, 2, 3]])
    big = square * torch.tensor([1.0, 1.0, 1.0])  # covers the whole 32 x 32 image and far beyond
    small = square * torch.tensor([0.05, 0.05, 1.0])
    renderer = get_renderer("gl")
    together = renderer.render(torch.stack([big, small, big, small]), faces, K, 32)
    alone = renderer.render(small[None], faces, K, 32)
    assert together.mask[0].all() and together.mask[2].all()
    np.testing.assert_array_equal(together.mask[1], alone.mask[0])
    np.testing.assert_array_equal(together.mask[3], alone.mask[0])
    np.testing.assert_array_equal(together.rgb[1], alone.rgb[0])
