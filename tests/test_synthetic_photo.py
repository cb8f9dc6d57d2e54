"""The photo style of synthetic data: labels as in the flat style, deterministic, mask without
forearm and occluders, manifest and CLI; the flat style's files unchanged."""

from __future__ import annotations

import hashlib
import json

import numpy as np
import pytest

from meshrec.errors import MeshrecError
from meshrec.render import gl_available

pytestmark = pytest.mark.skipif(not gl_available(), reason="OpenGL/EGL renderer unavailable")

# sha256 of every file (relative path, then bytes, sorted) of the flat set written by
# _flat_digest, made with the code before styles existed (Mesa llvmpipe, this repo's
# pinned numpy/PIL); a flat set must stay byte for byte what existing benchmarks used
FLAT_SET_SHA256 = "89b5794813120b8f0784761b2d9966726e1dd497a708fe8f70ef9c2b32300284"


def _files(root):
    return {p.relative_to(root): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def _digest(root) -> str:
    digest = hashlib.sha256()
    for path, data in _files(root).items():
        digest.update(str(path).encode())
        digest.update(data)
    return digest.hexdigest()


@pytest.fixture(scope="module")
def synthesizers():
    from meshrec.data.synthetic import HandSynthesizer

    return {style: HandSynthesizer(size=64, seed=4, style=style) for style in ("flat", "photo")}


@pytest.fixture(scope="module")
def batches(synthesizers):
    indices = list(range(12))
    return {style: s.render("training", indices) for style, s in synthesizers.items()}


def test_flat_set_is_byte_identical_to_the_code_before_styles(tmp_path):
    from meshrec.data.synthetic import write_synthetic_dataset

    write_synthetic_dataset(tmp_path / "flat", 24, size=64, seed=5, progress=False, workers=1, batch_size=8)
    assert "style" not in json.loads((tmp_path / "flat" / "manifest.json").read_text())
    assert _digest(tmp_path / "flat") == FLAT_SET_SHA256


def test_labels_do_not_depend_on_the_style(batches):
    flat, photo = batches["flat"], batches["photo"]
    for name in ("K", "joints", "vertices", "mano"):
        assert np.array_equal(getattr(flat, name), getattr(photo, name)), name
    assert flat.sides == photo.sides
    assert flat.jpeg_quality is None
    assert all(40 <= q <= 95 for q in photo.jpeg_quality)
    assert not np.array_equal(flat.rgb, photo.rgb)


def test_photo_mask_is_the_hands_visible_pixels_only(synthesizers, batches):
    """Forearm pixels are drawn but not in the mask; the mask never grows past the hand alone;
    an occluder removes the pixels it covers."""
    from meshrec.data.synthetic import photo

    flat, ours = batches["flat"], batches["photo"]
    assert not np.any(ours.mask & ~flat.mask), "the photo mask covers pixels the hand does not"
    params = [{"photo": photo.draw_photo_parameters(np.random.default_rng(i))} for i in range(len(ours.mask))]
    arm = photo.forearm_vertices(ours.vertices, ours.joints, synthesizers["photo"].wrist_ring, params)
    assert arm.shape == (len(ours.mask), photo.FOREARM_RINGS * photo.FOREARM_AROUND + 2, 3)
    # the forearm starts at the wrist and runs away from the fingers
    away = ours.joints[:, photo.WRIST] - ours.joints[:, photo.MIDDLE_BASE]
    far_end = arm[:, -1] - ours.joints[:, photo.WRIST]
    assert np.all(np.einsum("bk,bk->b", away, far_end) > 0)
    # hand pixels lost in the photo style are few on average (forearm and occluders only)
    kept = ours.mask.sum() / flat.mask.sum()
    assert 0.6 < kept <= 1.0


def test_occluders_cover_at_most_their_share_and_leave_the_mask(synthesizers, monkeypatch):
    """Every sample occluded vs none: same labels, the occluded mask is the other one less at
    most ``OCCLUDER_MAX_COVER`` of its pixels, and some pixels are taken in most samples."""
    from meshrec.data.synthetic import photo

    synthesizer, indices = synthesizers["photo"], list(range(12))
    monkeypatch.setattr(photo, "OCCLUDER_PROBABILITY", 0.0)
    clear = synthesizer.render("evaluation", indices)
    monkeypatch.setattr(photo, "OCCLUDER_PROBABILITY", 1.0)
    occluded = synthesizer.render("evaluation", indices)
    assert np.array_equal(clear.joints, occluded.joints) and np.array_equal(clear.K, occluded.K)
    assert not np.any(occluded.mask & ~clear.mask)
    lost = 1 - occluded.mask.sum((1, 2)) / np.maximum(clear.mask.sum((1, 2)), 1)
    assert np.all(lost <= photo.OCCLUDER_MAX_COVER + 0.02)
    assert np.mean(lost > 0.01) >= 0.5


def test_photo_render_is_deterministic_and_batch_independent(synthesizers, batches):
    from meshrec.data.synthetic import HandSynthesizer

    again = HandSynthesizer(size=64, seed=4, style="photo").render("training", [3, 4, 5])
    ours = batches["photo"]
    for name in ("K", "joints", "vertices", "mano"):
        assert np.array_equal(getattr(again, name), getattr(ours, name)[3:6])
    assert again.jpeg_quality == ours.jpeg_quality[3:6]
    # images may differ in an edge pixel with the position in the render batch (see the package)
    difference = np.abs(again.rgb.astype(int) - ours.rgb[3:6].astype(int))
    assert (difference > 8).mean() < 0.01


@pytest.mark.parametrize("workers", [1, 2])
def test_photo_files_are_the_same_for_a_seed_and_any_worker_count(tmp_path, workers):
    from meshrec.data.synthetic import write_synthetic_dataset

    options = dict(size=32, seed=5, batch_size=3, progress=False, style="photo")
    write_synthetic_dataset(tmp_path / "one", 9, workers=1, **options)
    write_synthetic_dataset(tmp_path / "again", 9, workers=workers, **options)
    assert _files(tmp_path / "again") == _files(tmp_path / "one")
    manifest = json.loads((tmp_path / "one" / "manifest.json").read_text())
    assert manifest["style"] == "photo" and manifest["generator_version"] == "3"


def test_resuming_with_another_style_is_refused(tmp_path):
    from meshrec.data.synthetic import write_synthetic_dataset

    options = dict(size=32, seed=1, progress=False, workers=1)
    write_synthetic_dataset(tmp_path / "flat", 2, **options)
    with pytest.raises(MeshrecError, match="made with style='flat' but this run has style='photo'"):
        write_synthetic_dataset(tmp_path / "flat", 4, style="photo", **options)
    write_synthetic_dataset(tmp_path / "photo", 2, style="photo", **options)
    with pytest.raises(MeshrecError, match="made with style='photo' but this run has style='flat'"):
        write_synthetic_dataset(tmp_path / "photo", 4, **options)
    summary = write_synthetic_dataset(tmp_path / "photo", 4, style="photo", **options)
    assert summary.rendered == 2


def test_unknown_style_is_refused():
    from meshrec.data.synthetic import HandSynthesizer, SyntheticHandDataset

    with pytest.raises(MeshrecError, match=r"style must be one of \('flat', 'photo'\), got 'glossy'"):
        HandSynthesizer(size=32, style="glossy")
    with pytest.raises(MeshrecError, match="style must be one of"):
        SyntheticHandDataset(2, size=32, style="Photo")


def test_online_dataset_takes_the_style():
    from meshrec.data.synthetic import SyntheticHandDataset

    flat = SyntheticHandDataset(2, size=32, seed=2)[1]
    ours = SyntheticHandDataset(2, size=32, seed=2, style="photo")[1]
    assert np.array_equal(flat.joints2d.numpy(), ours.joints2d.numpy())
    assert not np.array_equal(flat.image.numpy(), ours.image.numpy())


def test_cli_style_reaches_the_manifest(tmp_path, capsys):
    from pipelines.cli import main as cli

    out = tmp_path / "set"
    assert cli(["synth", "--out", str(out), "--num", "2", "--size", "32", "--workers", "1", "--no-progress", "--style", "photo"]) == 0
    assert json.loads((out / "manifest.json").read_text())["style"] == "photo"
    with pytest.raises(SystemExit):
        cli(["synth", "--out", str(out), "--num", "2", "--style", "glossy"])
    assert "invalid choice: 'glossy'" in capsys.readouterr().err
