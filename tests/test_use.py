"""Using a trained model: ``meshrec eval`` (every stage + mean-hand baseline, submission file)
and ``meshrec predict`` (own images, bad ones skipped, left hands, JSONL boxes, atomic files).

One tiny checkpoint is trained once for the module (seconds on CPU) on synthetic data, and a
tiny synthetic FreiHAND-layout folder is written next to it.
"""

from __future__ import annotations

import argparse
import importlib
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from meshrec.render import gl_available
from tests.test_training import tiny_config

pytestmark = pytest.mark.skipif(not gl_available(), reason="OpenGL (EGL) renderer unavailable for synthetic data")

STAGES = ["global", "coarse_to_fine", "pass_1", "pass_2", "final"]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """``(checkpoint, data folder, model)``: one tiny training run and a 24-sample synthetic set."""
    from meshrec.data.synthetic import write_synthetic_dataset
    from meshrec.models.reconstructor import HandMeshReconstructor
    from meshrec.training.run import train

    root = tmp_path_factory.mktemp("use")
    result = train(tiny_config(root / "run", trainer={"max_epochs": 1}, data={"train_samples": 8}))
    write_synthetic_dataset(root / "data", 24, size=64, progress=False)
    model = HandMeshReconstructor.from_checkpoint(result.last_checkpoint)
    return result.last_checkpoint, root / "data", model


def meshrec_command(name: str, argv: list[str]) -> int:
    """Run ``meshrec NAME ARGV`` through the CLI when the subcommand is registered, else through
    the module's own parser (the same ``register`` / ``run`` the CLI calls)."""
    from pipelines import cli

    if name in cli.SUBCOMMANDS:
        return cli.main([name, *argv])
    module = importlib.import_module(f"pipelines.{name}")
    parser = argparse.ArgumentParser()
    module.register(parser.add_subparsers(dest="command"), name)
    return module.run(parser.parse_args([name, *argv]))


def no_temporary_files(folder: Path) -> None:
    leftovers = [p.name for p in folder.rglob("*") if p.name.endswith(".tmp") or p.name.startswith(".")]
    assert not leftovers, leftovers


# --------------------------------------------------------------------------- eval


def test_eval_scores_every_stage_and_the_mean_hand(trained, tmp_path, capsys):
    checkpoint, data, _ = trained
    scores_path, pred_path = tmp_path / "out" / "scores.json", tmp_path / "out" / "pred.json"
    argv = ["--checkpoint", str(checkpoint), "--data", str(data), "--split", "training", "--limit", "6",
            "--batch-size", "3", "--out", str(scores_path), "--write-pred", str(pred_path),
            "--no-progress"]  # fmt: skip
    assert meshrec_command("eval", argv) == 0
    table = capsys.readouterr().out
    for name in ["mean_hand", *STAGES]:
        assert any(line.startswith(name) for line in table.splitlines()), (name, table)
    assert "passes used: mean" in table

    scores = json.loads(scores_path.read_text())
    assert scores["format"] == "meshrec.eval/1" and scores["num_samples"] == scores["num_scored"] == 6
    assert list(scores["stages"]) == STAGES
    for stage in [*scores["stages"].values(), scores["baseline"]["mean_hand"]]:
        assert {"pa_mpjpe_mm", "pa_mpvpe_mm", "f5", "f15", "mpjpe_mm"} <= set(stage)
        assert 0 < stage["pa_mpjpe_mm"] < 100 and 0 <= stage["f15"] <= 1
    histogram = scores["passes_used"]["histogram"]
    assert list(histogram) == ["0", "1", "2"] and sum(histogram.values()) == 6
    assert 0 <= scores["passes_used"]["mean"] <= 2

    xyz, verts = json.loads(pred_path.read_text())
    assert len(xyz) == len(verts) == 6
    assert np.asarray(xyz).shape == (6, 21, 3) and np.asarray(verts).shape[::2] == (6, 3)
    no_temporary_files(tmp_path / "out")


def test_eval_without_labels_still_predicts(trained, tmp_path):
    from meshrec.evaluate import evaluate, format_table, save_freihand_submission

    _, data, model = trained
    unlabelled = tmp_path / "data"
    shutil.copytree(data, unlabelled)
    for name in ("xyz", "verts", "mano"):
        (unlabelled / f"evaluation_{name}.json").unlink()
    result = evaluate(model, unlabelled, "evaluation", progress=False)
    assert result.num_scored == 0 and result.stages == {} and result.num_samples == 2
    assert "no sample has 3D labels" in format_table(result)
    written = save_freihand_submission(tmp_path / "pred.json", result.joints, result.vertices)
    xyz, verts = json.loads(written.read_text())
    assert len(xyz) == len(verts) == 2


# --------------------------------------------------------------------------- predict


@pytest.fixture(scope="module")
def images(trained, tmp_path_factory):
    """A folder of two good images and one of each bad kind."""
    from PIL import Image

    _, data, _ = trained
    folder = tmp_path_factory.mktemp("images")
    first = Image.open(data / "training" / "rgb" / "00000000.jpg").convert("RGB")
    first.save(folder / "good.png")
    Image.open(data / "training" / "rgb" / "00000001.jpg").convert("RGB").save(folder / "good2.jpg")
    first.convert("L").save(folder / "gray.png")
    rgba = first.convert("RGBA")
    rgba.putalpha(0)  # fully transparent: the colours must still be used, not composited away
    rgba.save(folder / "rgba.png")
    first.resize((20, 20)).save(folder / "tiny.png")
    first.resize((2000, 1600)).save(folder / "huge.jpg", quality=80)
    (folder / "corrupt.jpg").write_bytes(b"\xff\xd8\xff\xe0" + b"not a jpeg" * 20)
    (folder / "notes.txt").write_text("not an image: ignored")
    return folder


def predict_args(checkpoint, source, out, *extra) -> list[str]:
    """Whole images or boxes, without the detector (tests/test_predict_photos.py covers it)."""
    return ["--checkpoint", str(checkpoint), "--input", str(source), "--out", str(out), "--no-progress", "--no-detect", *extra]


def obj_vertices(path: Path) -> np.ndarray:
    lines = path.read_text().splitlines()
    return np.array([[float(v) for v in line.split()[1:4]] for line in lines if line.startswith("v ")])


def test_predict_folder_skips_bad_images_and_writes_the_rest(trained, images, tmp_path, capsys):
    from meshrec.inference import ImageRequest, predict_crops, prepare_crop

    checkpoint, _, model = trained
    out = tmp_path / "out"
    assert meshrec_command("predict", predict_args(checkpoint, images, out, "--format", "obj,ply", "--overlay")) == 0
    report = capsys.readouterr().out
    assert "5 of 7 images" in report
    assert "corrupt.jpg: cannot decode" in report and "tiny.png: image is 20 x 20 pixels" in report
    for stem in ("good", "good2", "gray", "rgba", "huge"):
        for suffix in (".obj", ".ply", ".json", "_overlay.png"):
            assert (out / f"{stem}{suffix}").is_file(), stem + suffix
    assert not any(p.stem.startswith(("tiny", "corrupt", "notes")) for p in out.iterdir())
    no_temporary_files(out)

    # the OBJ holds exactly the model's vertices; the JSON's 2D joints are in the image's pixels
    crop = prepare_crop(ImageRequest(images / "huge.jpg"), model.config.image_size)
    prediction = predict_crops(model, [crop])
    np.testing.assert_allclose(obj_vertices(out / "huge.obj"), prediction.vertices[0].double().numpy(), atol=1e-6)
    record = json.loads((out / "huge.json").read_text())
    assert record["image_size"] == [1600, 2000] and record["crop"]["image_size"] == [64, 64]
    joints3d, K = torch.tensor(record["joints3d"]), torch.tensor(record["K"])
    np.testing.assert_allclose(joints3d.numpy(), prediction.joints[0].numpy(), atol=1e-6)
    projected = (joints3d @ K.T)[:, :2] / (joints3d @ K.T)[:, 2:]
    np.testing.assert_allclose(projected.numpy(), np.asarray(record["joints2d"]), atol=1e-2)
    crop_K = torch.tensor(record["crop"]["K"])
    image_to_crop = torch.tensor(record["crop"]["transform"])
    np.testing.assert_allclose(crop_K.numpy(), (image_to_crop @ K).numpy(), rtol=1e-5, atol=1e-4)
    assert record["passes_used"] in (0, 1, 2) and len(record["joint_variance"]) == 21
    # grey and transparent copies of the same picture read as that picture
    gray, rgba, good = (json.loads((out / f"{s}.json").read_text()) for s in ("gray", "rgba", "good"))
    np.testing.assert_allclose(rgba["joints3d"], good["joints3d"], atol=1e-6)
    assert np.isfinite(gray["joints3d"]).all()


def test_predict_returns_1_when_every_image_fails(trained, images, tmp_path, capsys):
    checkpoint, _, _ = trained
    assert meshrec_command("predict", predict_args(checkpoint, images / "corrupt.jpg", tmp_path / "out")) == 1
    assert "0 of 1 images" in capsys.readouterr().out


def test_left_hand_is_the_mirrored_right_hand(trained, images, tmp_path):
    from PIL import Image, ImageOps

    checkpoint, _, _ = trained
    # a non-square picture, so the crop really resizes and pads
    Image.open(images / "good.png").resize((80, 64)).save(tmp_path / "hand.png")
    ImageOps.mirror(Image.open(tmp_path / "hand.png")).save(tmp_path / "mirrored.png")
    assert meshrec_command("predict", predict_args(checkpoint, tmp_path / "hand.png", tmp_path / "right")) == 0
    left_args = predict_args(checkpoint, tmp_path / "mirrored.png", tmp_path / "left", "--side", "left")
    assert meshrec_command("predict", left_args) == 0
    right = obj_vertices(tmp_path / "right" / "hand.obj")
    left = obj_vertices(tmp_path / "left" / "mirrored.obj")
    np.testing.assert_allclose(left, right * np.array([-1.0, 1.0, 1.0]), atol=1e-4)
    right_json = json.loads((tmp_path / "right" / "hand.json").read_text())
    left_json = json.loads((tmp_path / "left" / "mirrored.json").read_text())
    assert left_json["side"] == "left" and right_json["side"] == "right"
    # in pixels: u -> W - 1 - u on the 80-pixel-wide image
    mirrored_2d = np.asarray(right_json["joints2d"]) * [-1, 1] + [79, 0]
    np.testing.assert_allclose(np.asarray(left_json["joints2d"]), mirrored_2d, atol=1e-2)


def test_jsonl_records_with_boxes_keypoints_and_sides(trained, images, tmp_path, capsys):
    from meshrec.data.crop import square_box

    checkpoint, _, _ = trained
    records = [
        {"image": str(images / "huge.jpg"), "box": [400, 300, 1600, 1300]},
        {"image": str(images / "good.png"), "joints2d": [[20 + j, 30 - j / 2] for j in range(21)], "side": "left"},
        {"image": str(images / "missing.png")},
        {"image": str(images / "good2.jpg"), "sidee": "left"},
    ]
    listing = tmp_path / "list.jsonl"
    listing.write_text("\n".join(json.dumps(r) for r in records) + "\n{broken\n")
    out = tmp_path / "out"
    assert meshrec_command("predict", predict_args(checkpoint, listing, out, "--side", "right")) == 0
    report = capsys.readouterr().out
    assert "2 of 5 images" in report
    assert "record 2" in report and "not found" in report and "unknown keys" in report and "not valid JSON" in report
    boxed = json.loads((out / "huge.json").read_text())
    expected = square_box(torch.tensor([400.0, 300.0, 1600.0, 1300.0]), 1.5)
    np.testing.assert_allclose(boxed["crop"]["box"], expected.tolist(), atol=1e-6)
    assert boxed["side"] == "right"
    keypoint_boxed = json.loads((out / "good.json").read_text())
    assert keypoint_boxed["side"] == "left"
    x0, y0, x1, y1 = keypoint_boxed["crop"]["box"]
    assert x1 - x0 == pytest.approx(30.0) and (x0 + x1) / 2 == pytest.approx(30.0)  # 20 px wide x 1.5
    no_temporary_files(out)


def test_big_images_are_reduced_without_moving_pixels(tmp_path):
    """A 1280 x 1000 ramp cut to 64 x 64 (pre-reduced 5x): every crop pixel holds the ramp value
    of the image point its centre maps back to (forgetting the reduced pixels' centre shift
    would put them 2 source pixels off). An odd factor: Pillow rounds exact halves of 8-bit
    averages up, which would bias an even factor's mean by ~0.5 px on this ramp."""
    from PIL import Image

    from meshrec.data.crop import transform_points
    from meshrec.inference import ImageRequest, prepare_crop

    width, height = 1280, 1000
    u, v = np.meshgrid(np.arange(width), np.arange(height))
    ramp = np.stack([u * 250 / width, v * 250 / height, np.zeros_like(u, dtype=float)], -1)
    Image.fromarray(ramp.round().astype(np.uint8)).save(tmp_path / "ramp.png")
    crop = prepare_crop(ImageRequest(tmp_path / "ramp.png", box=np.array([250.0, 150.0, 700.0, 600.0])), 64)
    centres = torch.stack(torch.meshgrid(torch.arange(64.0), torch.arange(64.0), indexing="xy"), -1).reshape(-1, 2)
    source = transform_points(centres.double(), torch.linalg.inv(crop.transform))  # (4096, 2) image pixels
    values = crop.image.reshape(3, -1).double() * 255
    offset_u = values[0] * width / 250 - source[:, 0]
    offset_v = values[1] * height / 250 - source[:, 1]
    # 8-bit steps are ~5 source pixels wide: their rounding averages out over the crop
    assert abs(float(offset_u.mean())) < 0.3 and abs(float(offset_v.mean())) < 0.3
    assert crop.image.shape == (3, 64, 64) and crop.image_size == (height, width)
