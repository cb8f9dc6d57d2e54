"""meshrec.data: FreiHAND-layout and generic readers, bad input, crops, augmentation, collate, mixing.

Every dataset here is tiny and written by the tests, in the real on-disk layouts.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from manolayer.rotations import axis_angle_to_matrix
from meshrec.data import (
    AugmentSettings,
    FreiHandDataset,
    HandAugmentation,
    KeypointsJsonDataset,
    MixedDataset,
    augment_batch,
    collate_hand_samples,
    crop_image,
    make_hand_sample,
    mirror_batch,
)
from meshrec.data.augment import identity_augment_params, sample_augment_params
from meshrec.data.crop import (
    crop_sample,
    crop_transform,
    full_image_box,
    square_box,
    transform_points,
)
from meshrec.data.freihand import FREIHAND_VERSIONS, read_json_array
from meshrec.sides import SIDE_LEFT, SIDE_RIGHT
from meshrec.errors import DatasetError, MeshrecError
from meshrec.geometry.camera import default_intrinsics, project_points

IMAGE_SIZE = 64  # the tiny FreiHAND-layout images (the real ones are 224)
FOCAL = 150.0
NUM_VERTICES = 30  # stand-in for MANO's 778, the reader accepts any (V, 3)


def make_K(size: int = IMAGE_SIZE, focal: float = FOCAL, shift=(0.0, 0.0)) -> np.ndarray:
    c = (size - 1) / 2
    return np.array([[focal, 0.0, c + shift[0]], [0.0, focal, c + shift[1]], [0.0, 0.0, 1.0]])


def hand_joints(rng: np.random.Generator, depth: float = 0.5) -> np.ndarray:
    """21 points in an 8 cm cube in front of the camera (hand-sized, metres)."""
    return rng.uniform(-0.04, 0.04, (21, 3)) + np.array([0.0, 0.0, depth])


def project_np(points: np.ndarray, K: np.ndarray) -> np.ndarray:
    uvw = points @ K.T
    return uvw[:, :2] / uvw[:, 2:]


def save_image(path: Path, array: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array.astype(np.uint8)).save(path, quality=95)


def write_freihand(
    root: Path,
    split: str = "training",
    n: int = 3,
    versions: int = 4,
    labels: tuple[str, ...] = ("xyz", "verts", "mano", "scale"),
    masks: bool = False,
    seed: int = 0,
) -> dict:
    """Write a FreiHAND-layout split; version v's images are filled with grey level 40 * (v + 1)."""
    root.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    K = [make_K(shift=(rng.uniform(-3, 3), rng.uniform(-3, 3))) for _ in range(n)]
    xyz = [hand_joints(rng) for _ in range(n)]
    verts = [x[rng.integers(0, 21, NUM_VERTICES)] + rng.normal(0, 0.002, (NUM_VERTICES, 3)) for x in xyz]
    mano = [[list(rng.normal(0, 0.3, 61))] for _ in range(n)]  # FreiHAND stores (1, 61) per sample
    data = {"K": K, "xyz": xyz, "verts": verts, "mano": mano, "scale": [0.03] * n}
    (root / f"{split}_K.json").write_text(json.dumps([k.tolist() for k in K]))
    for name in labels:
        value = data[name]
        (root / f"{split}_{name}.json").write_text(json.dumps([np.asarray(v).tolist() for v in value]))
    for v in range(versions):
        for i in range(n):
            save_image(
                root / split / "rgb" / f"{v * n + i:08d}.jpg", np.full((IMAGE_SIZE, IMAGE_SIZE, 3), 40 * (v + 1))
            )
    if masks:
        for i in range(n):
            mask = np.zeros((IMAGE_SIZE, IMAGE_SIZE), np.uint8)
            mask[10:30, 20:50] = 255
            save_image(root / split / "mask" / f"{i:08d}.jpg", mask)
    return data


# ---------------------------------------------------------------------------------------
# FreiHAND layout
# ---------------------------------------------------------------------------------------


def test_freihand_training_four_versions_share_labels(tmp_path):
    data = write_freihand(tmp_path, n=3, versions=4, masks=True)
    dataset = FreiHandDataset(tmp_path, "training", crop_size=None)
    assert len(dataset) == 12 and dataset.versions == [0, 1, 2, 3] and dataset.num_unique == 3
    for position in range(12):
        sample = dataset[position]
        version, i = divmod(position, 3)
        assert sample.index == position and sample.source.endswith(f"{position:08d}.jpg")
        assert sample.image.shape == (3, IMAGE_SIZE, IMAGE_SIZE)
        assert sample.image.mean().item() == pytest.approx(40 * (version + 1) / 255, abs=0.01)
        assert torch.allclose(sample.joints3d, torch.tensor(data["xyz"][i], dtype=torch.float32))
        assert torch.allclose(sample.K, torch.tensor(data["K"][i], dtype=torch.float32))
        assert torch.allclose(
            sample.joints2d, torch.tensor(project_np(data["xyz"][i], data["K"][i]), dtype=torch.float32), atol=1e-3
        )
        assert torch.allclose(sample.mano_pose, torch.tensor(data["mano"][i][0][:48], dtype=torch.float32))
        assert torch.allclose(sample.mano_betas, torch.tensor(data["mano"][i][0][48:58], dtype=torch.float32))
        assert sample.vertices.shape == (NUM_VERTICES, 3)
        assert sample.has_mesh and sample.has_joints3d and sample.has_joints2d and sample.has_mano and sample.has_mask
        assert sample.joints2d_visible.all() and sample.side == SIDE_RIGHT
        assert sample.mask.sum().item() == pytest.approx(20 * 30, rel=0.05)


def test_freihand_version_subset_and_crop(tmp_path):
    data = write_freihand(tmp_path, n=3, versions=4)
    dataset = FreiHandDataset(tmp_path, version=["hom", 3], crop_size=32)
    assert len(dataset) == 6 and dataset.versions == [1, 3]
    assert [dataset[k].index for k in range(6)] == [3, 4, 5, 9, 10, 11]
    sample = dataset[0]
    assert sample.image.shape == (3, 32, 32)
    # The whole 64 px image is resized to 32 px: K halves around the new pixel grid and
    # the 3D joints still project onto the 2D joints.
    assert torch.allclose(project_points(sample.joints3d[None], sample.K[None])[0], sample.joints2d, atol=1e-3)
    expected_fx = FOCAL * 32 / IMAGE_SIZE
    assert sample.K[0, 0].item() == pytest.approx(expected_fx)
    assert torch.allclose(sample.joints3d, torch.tensor(data["xyz"][0], dtype=torch.float32))
    keypoint_crop = FreiHandDataset(tmp_path, version="gs", crop_size=32, crop_from="keypoints")[0]
    assert torch.allclose(
        project_points(keypoint_crop.joints3d[None], keypoint_crop.K[None])[0], keypoint_crop.joints2d, atol=1e-3
    )
    assert keypoint_crop.K[0, 0] > sample.K[0, 0]  # a tighter box magnifies


def test_freihand_single_version_like_the_synthetic_generator(tmp_path):
    write_freihand(tmp_path, n=4, versions=1, labels=("xyz", "mano"))
    dataset = FreiHandDataset(tmp_path, crop_size=None)
    assert len(dataset) == 4 and dataset.versions == [0]
    sample = dataset[2]
    assert not sample.has_mesh and sample.vertices.shape == (0, 3) and sample.has_mano
    with pytest.raises(DatasetError, match="colour version 'auto'"):
        len(FreiHandDataset(tmp_path, version="auto"))
    with pytest.raises(ValueError, match="version"):
        FreiHandDataset(tmp_path, version="nope")


def test_freihand_reads_the_sides_of_synthetic_sets(tmp_path):
    """``S_side.json`` (written by meshrec synth) gives left hands; without it all are right."""
    write_freihand(tmp_path, n=3, versions=2, labels=("xyz",))
    assert [FreiHandDataset(tmp_path, crop_size=None)[i].side for i in range(6)] == [0] * 6
    (tmp_path / "training_side.json").write_text(json.dumps(["right", "left", "left"]))
    assert [FreiHandDataset(tmp_path, crop_size=None)[i].side for i in range(6)] == [0, 1, 1, 0, 1, 1]
    (tmp_path / "training_side.json").write_text(json.dumps(["right", "up"]))
    with pytest.raises(DatasetError, match="training_side.json must be a list of 3 entries"):
        len(FreiHandDataset(tmp_path))


def test_freihand_evaluation_split_with_and_without_labels(tmp_path):
    write_freihand(tmp_path, split="evaluation", n=2, versions=1, labels=())
    dataset = FreiHandDataset(tmp_path, "evaluation", crop_size=None)
    sample = dataset[1]
    assert len(dataset) == 2
    assert not (sample.has_mesh or sample.has_joints3d or sample.has_joints2d or sample.has_mano)
    assert sample.joints3d.abs().sum() == 0 and not sample.joints2d_visible.any()

    labelled = tmp_path / "labelled"
    write_freihand(labelled, split="evaluation", n=2, versions=1, labels=("xyz", "verts"))
    sample = FreiHandDataset(labelled, "evaluation", crop_size=None)[0]
    assert sample.has_mesh and sample.has_joints3d and sample.has_joints2d and not sample.has_mano
    with pytest.raises(ValueError, match="evaluation split has only version 0"):
        FreiHandDataset(labelled, "evaluation", version="hom")


def test_freihand_json_cache(tmp_path):
    write_freihand(tmp_path, n=2, versions=1)
    cache = tmp_path / "cache"
    first = read_json_array(tmp_path / "training_verts.json", None, cache)
    assert len(list(cache.glob("*.npy"))) == 1
    second = read_json_array(tmp_path / "training_verts.json", None, cache)
    assert isinstance(second, np.memmap) and np.array_equal(first, second)
    mano = read_json_array(tmp_path / "training_mano.json", (61,))
    assert mano.shape == (2, 61)
    dataset = FreiHandDataset(tmp_path, crop_size=None, cache_dir=cache)
    assert dataset[0].has_mesh


# ---------------------------------------------------------------------------------------
# FreiHAND layout: bad input
# ---------------------------------------------------------------------------------------


def test_freihand_label_lengths_disagree_always_raise(tmp_path):
    write_freihand(tmp_path, n=3, versions=1)
    (tmp_path / "training_xyz.json").write_text(json.dumps([hand_joints(np.random.default_rng(1)).tolist()] * 2))
    for on_error in ("raise", "skip"):
        with pytest.raises(DatasetError, match=r"training_xyz.json has 2 entries but .*training_K.json has 3"):
            len(FreiHandDataset(tmp_path, on_error=on_error))


def test_freihand_unreadable_or_misshapen_label_file(tmp_path):
    write_freihand(tmp_path, n=3, versions=1)
    (tmp_path / "training_xyz.json").write_text("[[[0.1, 0.2")
    with pytest.raises(DatasetError, match="training_xyz.json: cannot read JSON"):
        len(FreiHandDataset(tmp_path))
    xyz = [hand_joints(np.random.default_rng(i)).tolist() for i in range(3)]
    xyz[2] = xyz[2][:20]
    (tmp_path / "training_xyz.json").write_text(json.dumps(xyz))
    with pytest.raises(
        DatasetError, match=r"training_xyz.json index 2: entry must have shape \(21, 3\), got \(20, 3\)"
    ) as info:
        len(FreiHandDataset(tmp_path))
    assert info.value.index == 2 and isinstance(info.value, MeshrecError)
    (tmp_path / "training_K.json").unlink()
    with pytest.raises(DatasetError, match="training_K.json: intrinsics file not found"):
        FreiHandDataset(tmp_path)


def test_freihand_missing_image(tmp_path):
    write_freihand(tmp_path, n=3, versions=2)
    (tmp_path / "training" / "rgb" / "00000004.jpg").unlink()
    with pytest.raises(DatasetError, match=r"00000004.jpg: image file not found \(index 4\)") as info:
        len(FreiHandDataset(tmp_path))
    assert info.value.index == 4
    dataset = FreiHandDataset(tmp_path, on_error="skip", crop_size=None)
    assert len(dataset) == 5
    assert [index for index, _ in dataset.skipped] == [4]
    assert "image file not found" in dataset.skip_summary()
    assert [dataset[k].index for k in range(5)] == [0, 1, 2, 3, 5]


def test_freihand_nan_labels(tmp_path):
    data = write_freihand(tmp_path, n=3, versions=2)
    xyz = [x.tolist() for x in data["xyz"]]
    xyz[1][7][2] = float("nan")
    (tmp_path / "training_xyz.json").write_text(json.dumps(xyz))  # json writes NaN
    with pytest.raises(
        DatasetError, match=r"labels of sample 1: training_xyz.json: joints3d has a non-finite value .* \[7, 2\]"
    ):
        len(FreiHandDataset(tmp_path))
    dataset = FreiHandDataset(tmp_path, on_error="skip", crop_size=None)
    assert sorted(index for index, _ in dataset.skipped) == [1, 4]  # sample 1 in both versions
    assert len(dataset) == 4 and all(torch.isfinite(dataset[k].joints3d).all() for k in range(4))


def test_freihand_millimetre_labels_are_caught(tmp_path):
    data = write_freihand(tmp_path, n=2, versions=1)
    (tmp_path / "training_xyz.json").write_text(json.dumps([(x * 1000).tolist() for x in data["xyz"]]))
    with pytest.raises(DatasetError, match="are they in metres"):
        len(FreiHandDataset(tmp_path))


def test_freihand_corrupt_image_raise_skip_and_validate(tmp_path):
    write_freihand(tmp_path, n=3, versions=1)
    (tmp_path / "training" / "rgb" / "00000001.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    dataset = FreiHandDataset(tmp_path, crop_size=None)
    assert dataset[0].index == 0
    with pytest.raises(DatasetError, match=r"00000001.jpg \(index 1\): cannot decode image"):
        dataset[1]
    skipping = FreiHandDataset(tmp_path, on_error="skip", crop_size=None)
    assert skipping[1].index == 2  # the next good sample stands in
    assert [index for index, _ in skipping.skipped] == [1]
    fresh = FreiHandDataset(tmp_path, on_error="skip", crop_size=None)
    assert [index for index, _ in fresh.validate()] == [1]
    assert len(fresh) == 2 and [fresh[k].index for k in range(2)] == [0, 2]
    with pytest.raises(DatasetError, match="cannot decode"):
        FreiHandDataset(tmp_path, crop_size=None).validate()


def test_freihand_truncated_image(tmp_path):
    write_freihand(tmp_path, n=2, versions=1)
    path = tmp_path / "training" / "rgb" / "00000000.jpg"
    path.write_bytes(path.read_bytes()[:200])
    with pytest.raises(DatasetError, match=r"00000000.jpg \(index 0\): cannot decode image"):
        FreiHandDataset(tmp_path, crop_size=None)[0]


def test_freihand_keypoints_far_outside_image(tmp_path):
    data = write_freihand(tmp_path, n=2, versions=1)
    xyz = [x.copy() for x in data["xyz"]]
    xyz[0][:, 0] += 0.6  # 0.6 m to the right at 0.5 m depth: ~180 px right of a 64 px image
    (tmp_path / "training_xyz.json").write_text(json.dumps([x.tolist() for x in xyz]))
    with pytest.raises(
        DatasetError, match=r"00000000.jpg \(index 0\): keypoint \d+ at .* lies far outside the 64x64 image"
    ):
        FreiHandDataset(tmp_path, crop_size=None)[0]
    skipping = FreiHandDataset(tmp_path, on_error="skip", crop_size=None)
    assert skipping[0].index == 1 and skipping.skipped[0][0] == 0


# ---------------------------------------------------------------------------------------
# Generic keypoint format (JSON and JSONL)
# ---------------------------------------------------------------------------------------


def generic_records(folder: Path, count: int = 4, seed: int = 0) -> list[dict]:
    """Records of mixed label sets on 80 x 100 (H x W) images."""
    rng = np.random.default_rng(seed)
    K = make_K(100, 200.0)
    K[1, 2] = 39.5
    records = []
    for i in range(count):
        save_image(folder / "imgs" / f"{i}.png", rng.integers(0, 255, (80, 100, 3)))
        joints3d = hand_joints(rng, depth=0.8)
        joints2d = project_np(joints3d, K)
        record = {"image": f"imgs/{i}.png", "joints2d": joints2d.tolist()}
        if i == 0:
            record.update(K=K.tolist(), joints3d=joints3d.tolist(), mano={"pose": [0.1] * 48, "betas": [0.0] * 10})
            record["vertices"] = (joints3d[:10] + 0.001).tolist()
        if i == 1:
            record["joints2d"] = np.concatenate([joints2d, (np.arange(21) % 2)[:, None]], 1).tolist()
            record["side"] = "left"
        if i == 2:
            record["visible"] = [j != 3 for j in range(21)]
            record["box"] = [10.0, 5.0, 70.0, 60.0]
        if i == 3:
            del record["joints2d"]  # an image without labels, e.g. for prediction
        records.append(record)
    return records


@pytest.mark.parametrize("suffix", [".json", ".jsonl"])
def test_generic_format_reads_every_label_kind(tmp_path, suffix):
    records = generic_records(tmp_path)
    path = tmp_path / f"labels{suffix}"
    if suffix == ".json":
        path.write_text(json.dumps(records))
    else:
        path.write_text("\n".join(json.dumps(r) for r in records) + "\n\n")
    dataset = KeypointsJsonDataset(path, crop_size=48)
    assert len(dataset) == 4
    full, left, partial, unlabelled = (dataset[k] for k in range(4))
    for sample in (full, left, partial, unlabelled):
        assert sample.image.shape == (3, 48, 48)
    assert full.has_joints3d and full.has_mano and full.has_mesh and full.vertices.shape == (10, 3)
    assert torch.allclose(project_points(full.joints3d[None], full.K[None])[0], full.joints2d, atol=1e-3)
    assert full.mano_pose[5].item() == pytest.approx(0.1)
    assert left.side == SIDE_LEFT and left.joints2d_visible.tolist() == [j % 2 == 1 for j in range(21)]
    assert not left.has_joints3d and not left.has_mesh and left.has_joints2d
    # No K: the crop's K is exactly the documented default for the crop size.
    assert torch.allclose(left.K, default_intrinsics(48), atol=1e-3)
    assert partial.joints2d_visible.sum() == 20 and not partial.joints2d_visible[3]
    assert not unlabelled.has_joints2d and not unlabelled.joints2d_visible.any()
    assert torch.allclose(unlabelled.K, default_intrinsics(48), atol=1e-3)
    assert full.source.endswith("0.png") and partial.index == 2


def test_generic_box_and_native_size(tmp_path):
    records = generic_records(tmp_path)
    path = tmp_path / "labels.json"
    path.write_text(json.dumps(records))
    native = KeypointsJsonDataset(path, crop_size=None)[2]
    assert native.image.shape == (3, 80, 100)
    assert torch.allclose(native.joints2d, torch.tensor(records[2]["joints2d"]), atol=1e-4)
    cropped = KeypointsJsonDataset(path, crop_size=40, box_padding=1.0)[2]
    # The 60 x 55 box grows to a 60 px square about its centre (40, 32.5): x from 10 to 70.
    transform = crop_transform(torch.tensor([10.0, 2.5, 70.0, 62.5]), 40)
    assert torch.allclose(cropped.joints2d, transform_points(native.joints2d, transform), atol=1e-4)
    assert torch.allclose(
        cropped.image, crop_image(native.image, torch.tensor([10.0, 2.5, 70.0, 62.5]), 40).image, atol=1e-6
    )


def bad_generic_cases(folder: Path) -> dict[str, tuple[dict, str]]:
    good = generic_records(folder, count=1)[0]
    nan = json.loads(json.dumps(good))
    nan["joints2d"][4][1] = None
    mm = dict(good, joints3d=(np.asarray(good["joints3d"]) * 1000).tolist())
    shifted = dict(good, joints3d=(np.asarray(good["joints3d"]) + [0.05, 0.0, 0.0]).tolist())
    far = dict(good, joints2d=(np.asarray(good["joints2d"]) + [0.0, 400.0]).tolist())
    no_k = {k: v for k, v in good.items() if k != "K"}
    Image.open(folder / "imgs" / "0.png").save(folder / "imgs" / "broken.png")
    (folder / "imgs" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n broken")
    return {
        "unknown": (dict(good, joint2d=[]), r"unknown keys \['joint2d'\]"),
        "missing image": (dict(good, image="imgs/nope.png"), "image file not found"),
        "broken image": (dict(good, image="imgs/broken.png"), "cannot read image header|cannot decode"),
        "nan": (nan, r"joints2d has a non-finite value \(NaN or inf\) at \[4, 1\]"),
        "shape": (dict(good, joints2d=good["joints2d"][:20]), r"joints2d must have shape \(21, 2\), got \(20, 2\)"),
        "3d without K": (no_k, "joints3d / vertices need K"),
        "millimetres": (mm, "are they in metres"),
        "reprojection": (shifted, "joints3d projected with K miss joints2d"),
        "far outside": (far, "lies far outside the 100x80 image"),
        "side": (dict(good, side="both"), "side must be 'right' or 'left'"),
        "box": (dict(good, box=[10, 10, 5, 20]), "x1 > x0"),
        "mano": (dict(good, mano={"pose": [0.0] * 45, "betas": [0.0] * 10}), r"pose must have shape \(48,\)"),
    }


def test_generic_bad_records_raise_naming_file_and_record(tmp_path):
    for name, (record, message) in bad_generic_cases(tmp_path).items():
        path = tmp_path / f"{name.replace(' ', '_')}.jsonl"
        good = generic_records(tmp_path, count=1)[0]
        path.write_text(json.dumps(good) + "\n" + json.dumps(record) + "\n")
        with pytest.raises(DatasetError, match=message) as info:
            KeypointsJsonDataset(path)
        assert f"{path} record 1 (line 2)" in str(info.value), name
        assert info.value.index == 1


def test_generic_bad_records_skipped_and_counted(tmp_path):
    cases = bad_generic_cases(tmp_path)
    good = generic_records(tmp_path, count=1)[0]
    lines = [json.dumps(good)] + [json.dumps(record) for record, _ in cases.values()] + ["{not json", json.dumps(good)]
    path = tmp_path / "mixed.jsonl"
    path.write_text("\n".join(lines))
    dataset = KeypointsJsonDataset(path, on_error="skip", crop_size=32)
    assert len(dataset) == 2 and [dataset[k].index for k in range(2)] == [0, len(lines) - 1]
    assert len(dataset.skipped) == len(cases) + 1
    assert "not valid JSON" in dataset.skipped[-1][1]
    assert dataset.skip_summary().startswith(f"{len(cases) + 1} samples skipped")


def test_generic_whole_file_faults(tmp_path):
    path = tmp_path / "labels.json"
    path.write_text('{"image": "a.png"}')
    with pytest.raises(DatasetError, match="expected a JSON list of records"):
        KeypointsJsonDataset(path)
    path.write_text("[{")
    with pytest.raises(DatasetError, match="labels.json: not valid JSON"):
        KeypointsJsonDataset(path, on_error="skip")
    with pytest.raises(DatasetError, match="cannot read the label file"):
        KeypointsJsonDataset(tmp_path / "absent.json")


def write_jsonl(path: Path, records: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


def test_held_out_split_is_by_image_stable_and_order_free(tmp_path):
    from meshrec.data.keypoints_json import split_by_image

    records = generic_records(tmp_path, count=40)
    records = [r for r in records if "joints2d" in r] + [dict(r, side="left") for r in records[:10]]  # two hands in ten photos
    dataset = KeypointsJsonDataset(write_jsonl(tmp_path / "labels.jsonl", records), crop_size=16)

    def held_out_images(data, fraction=0.3, seed=0):
        return {data.image_of(p) for p in split_by_image(data, fraction, seed)[1]}

    train, held_out = split_by_image(dataset, 0.3)
    assert sorted(train + held_out) == list(range(len(dataset)))
    images = held_out_images(dataset)
    assert 4 <= len(images) <= 20  # about 30 % of 39 images
    assert not images & {dataset.image_of(p) for p in train}  # both hands of a photo on the same side
    reversed_file = KeypointsJsonDataset(write_jsonl(tmp_path / "reversed.jsonl", records[::-1]), crop_size=16)
    assert held_out_images(reversed_file) == images
    more = [dict(r, image=f"more/{r['image']}") for r in generic_records(tmp_path / "more", 8, seed=1)]
    grown = KeypointsJsonDataset(write_jsonl(tmp_path / "grown.jsonl", records + more), crop_size=16)
    assert len(grown) == len(dataset) + 8
    assert held_out_images(grown) - images <= {grown.image_of(p) for p in range(len(dataset), len(grown))}
    assert held_out_images(grown) >= images  # earlier images stay where they were
    assert held_out_images(dataset, seed=1) != images
    assert split_by_image(dataset, 0.0) == (list(range(len(dataset))), [])


def test_held_out_split_refuses_an_empty_side(tmp_path):
    from meshrec.data.keypoints_json import split_by_image

    one_photo = KeypointsJsonDataset(write_jsonl(tmp_path / "one.jsonl", generic_records(tmp_path, count=1)), crop_size=16)
    with pytest.raises(MeshrecError, match=r"one.jsonl: holding out 50% of the images leaves (1 training and 0|0 training and 1) held-out.*data.val_root"):
        split_by_image(one_photo, 0.5)
    with pytest.raises(MeshrecError, match=r"fraction must be in \[0, 1\), got 1.0"):
        split_by_image(one_photo, 1.0)


# ---------------------------------------------------------------------------------------
# Crops
# ---------------------------------------------------------------------------------------


def dot_image(height: int, width: int, points: list[tuple[int, int]], channels: int = 3) -> torch.Tensor:
    """Black image with a 3 x 3 white square centred at each integer (u, v)."""
    image = torch.zeros(channels, height, width)
    for u, v in points:
        image[:, v - 1 : v + 2, u - 1 : u + 2] = 1.0
    return image


def bright_centroid(image: torch.Tensor, threshold: float = 0.25) -> torch.Tensor:
    """Weighted centroid (u, v) of the pixels brighter than ``threshold``."""
    grey = image.mean(0)
    weights = torch.where(grey > threshold, grey, torch.zeros_like(grey))
    rows, cols = torch.meshgrid(torch.arange(grey.shape[0]), torch.arange(grey.shape[1]), indexing="ij")
    return torch.stack([(weights * cols).sum(), (weights * rows).sum()]) / weights.sum()


def test_crop_moves_projection_and_content_together():
    height, width = 120, 160
    K = torch.tensor([[180.0, 0.0, 83.0], [0.0, 180.0, 57.0], [0.0, 0.0, 1.0]])
    point = torch.tensor([[[0.05, -0.03, 0.6]]])
    uv = project_points(point, K[None])[0, 0]
    u, v = int(round(uv[0].item())), int(round(uv[1].item()))
    point = torch.tensor([[[(u - 83.0) / 180.0 * 0.6, (v - 57.0) / 180.0 * 0.6, 0.6]]])  # lands on a pixel centre
    image = dot_image(height, width, [(u, v)])
    box = torch.tensor([90.0, 20.0, 150.0, 100.0])
    result = crop_image(image, box, 64, K)
    moved = transform_points(torch.tensor([[float(u), float(v)]]), result.transform[0])[0]
    # A 3D point projected with the new K lands where the crop moved its pixel ...
    assert torch.allclose(project_points(point, result.K)[0, 0], moved, atol=1e-3)
    # ... and the image content moved there too.
    assert torch.allclose(bright_centroid(result.image), moved, atol=0.2)
    assert result.image.shape == (3, 64, 64)
    assert torch.allclose(result.box, square_box(box[None]))


def test_crop_box_partly_outside_pads_with_zeros():
    image = torch.ones(3, 50, 50)
    result = crop_image(image, torch.tensor([-25.5, -0.5, 24.5, 49.5]), 50, antialias=False)
    assert torch.allclose(result.image[:, :, 26:], torch.ones(3, 50, 24))
    assert result.image[:, :, :24].abs().max() == 0
    outside = crop_image(image, torch.tensor([100.0, 100.0, 140.0, 140.0]), 16)
    assert outside.image.abs().max() == 0


def test_crop_identity_and_downscale_antialias():
    image = torch.rand(2, 3, 40, 40)
    same = crop_image(image, full_image_box(40, 40), 40)
    assert torch.allclose(same.image, image, atol=1e-5)
    assert torch.allclose(same.transform, torch.eye(3).expand(2, 3, 3), atol=1e-6)
    stripes = torch.zeros(1, 400, 400)
    stripes[:, :, ::2] = 1.0  # one-pixel stripes alias badly without the blur
    small = crop_image(stripes, full_image_box(400, 400), 40).image
    assert (small - 0.5).abs().max() < 0.05
    # A photo-sized image with a box: only the window around the box is processed.
    big = crop_image(torch.rand(3, 1500, 2000), torch.tensor([900.0, 600.0, 1300.0, 1000.0]), 32)
    assert big.image.shape == (3, 32, 32)


def test_crop_sample_maps_mask_and_keypoints(tmp_path):
    write_freihand(tmp_path, n=1, versions=1, masks=True)
    native = FreiHandDataset(tmp_path, crop_size=None)[0]
    cropped = crop_sample(native, 32, padding=1.2)
    assert cropped.mask.shape == (1, 32, 32) and cropped.has_mask and cropped.mask.sum() > 0
    assert torch.allclose(project_points(cropped.joints3d[None], cropped.K[None])[0], cropped.joints2d, atol=1e-3)


# ---------------------------------------------------------------------------------------
# Augmentation
# ---------------------------------------------------------------------------------------


def synthetic_batch(batch: int = 4, size: int = 64, seed: int = 0) -> tuple:
    """A batch whose images show a bright dot at joint 0's (integer) projection."""
    rng = np.random.default_rng(seed)
    samples = []
    for b in range(batch):
        K = make_K(size, 90.0, shift=(rng.uniform(-4, 4), rng.uniform(-4, 4)))
        joints3d = hand_joints(rng, depth=0.5)
        uv0 = np.round(project_np(joints3d[:1], K)[0])
        joints3d[0, :2] = (uv0 - K[:2, 2]) / 90.0 * joints3d[0, 2]  # joint 0 projects to a pixel centre
        image = dot_image(size, size, [(int(uv0[0]), int(uv0[1]))])
        samples.append(
            make_hand_sample(
                image,
                torch.tensor(K),
                joints2d=torch.tensor(project_np(joints3d, K)),
                joints3d=torch.tensor(joints3d),
                vertices=torch.tensor(joints3d[:8]) if b != 1 else None,
                mano_pose=torch.tensor(rng.normal(0, 0.4, 48)) if b != 2 else None,
                mano_betas=torch.zeros(10) if b != 2 else None,
                mask=image[0],
                index=b,
                source=f"synthetic {b}",
            )
        )
    return collate_hand_samples(samples)


def assert_consistent(batch) -> None:
    projected = project_points(batch.joints3d.double(), batch.K.double())
    error = (projected - batch.joints2d.double()).norm(dim=-1).max().item()
    assert error < 1e-3, f"3D joints with K miss the 2D joints by {error} px"


def test_augment_keeps_3d_2d_and_image_consistent():
    batch = synthetic_batch()
    assert_consistent(batch)
    settings = AugmentSettings(rotation_deg=40.0, scale_range=(0.8, 1.25), translate=0.1, blur_prob=0.0,
                               brightness=0.0, contrast=0.0, saturation=0.0, hue=0.0)  # fmt: skip
    augmented = HandAugmentation(settings)(batch, torch.Generator().manual_seed(3))
    assert_consistent(augmented)
    for b in range(len(batch)):
        # The bright dot drawn at joint 0 is now at joint 0's augmented 2D position.
        assert torch.allclose(bright_centroid(augmented.image[b]), augmented.joints2d[b, 0], atol=0.35), b
        assert torch.allclose(bright_centroid(augmented.mask[b]), augmented.joints2d[b, 0], atol=0.35), b
    # 3D: a rotation about the camera z axis (depth and bone lengths unchanged).
    assert torch.allclose(augmented.joints3d[..., 2], batch.joints3d[..., 2], atol=1e-6)
    bones = lambda j: (j[:, 1:] - j[:, :1]).norm(dim=-1)  # noqa: E731
    assert torch.allclose(bones(augmented.joints3d), bones(batch.joints3d), atol=1e-6)
    assert not torch.allclose(augmented.joints3d, batch.joints3d)
    # Vertices follow the joints; samples without a mesh / MANO stay zero.
    assert torch.allclose(augmented.vertices[0], augmented.joints3d[0, :8], atol=1e-6)
    assert augmented.vertices[1].abs().max() == 0 and augmented.mano_pose[2].abs().max() == 0
    # The MANO global orientation turned with the 3D labels; the finger joints did not.
    params = sample_augment_params(len(batch), (64, 64), settings, torch.Generator().manual_seed(3))
    angle = params.angle[0].double()
    rotation_z = torch.tensor(
        [[math.cos(angle), -math.sin(angle), 0.0], [math.sin(angle), math.cos(angle), 0.0], [0, 0, 1]],
        dtype=torch.float64,
    )
    expected = rotation_z @ axis_angle_to_matrix(batch.mano_pose[0, :3].double())
    assert torch.allclose(axis_angle_to_matrix(augmented.mano_pose[0, :3].double()), expected, atol=1e-5)
    assert torch.equal(augmented.mano_pose[:, 3:], batch.mano_pose[:, 3:])
    assert torch.equal(augmented.has_mesh, batch.has_mesh) and augmented.source == batch.source


def test_augment_scale_and_translation_only_touch_K():
    batch = synthetic_batch(batch=2)
    params = identity_augment_params(2)
    params = type(params)(
        **{**params.__dict__, "scale": torch.tensor([1.5, 0.7]), "translation": torch.tensor([[3.0, -2.0], [0.0, 5.0]])}
    )
    augmented = augment_batch(batch, params, colour=False)
    assert torch.equal(augmented.joints3d, batch.joints3d)
    assert torch.allclose(augmented.K[:, 0, 0], batch.K[:, 0, 0] * torch.tensor([1.5, 0.7]))
    assert_consistent(augmented)
    centre = 31.5
    assert torch.allclose(augmented.K[0, 0, 2], (batch.K[0, 0, 2] - centre) * 1.5 + centre + 3.0)


def test_augment_is_seeded_and_colour_stays_in_range():
    batch = synthetic_batch(batch=3)
    batch.image = torch.rand_like(batch.image)
    augment = HandAugmentation(AugmentSettings(blur_prob=0.5))
    first = augment(batch, torch.Generator().manual_seed(7))
    second = augment(batch, torch.Generator().manual_seed(7))
    other = augment(batch, torch.Generator().manual_seed(8))
    assert torch.equal(first.image, second.image) and torch.equal(first.K, second.K)
    assert not torch.equal(first.image, other.image)
    assert first.image.min() >= 0 and first.image.max() <= 1
    assert_consistent(first)


def test_mirror_flips_side_and_stays_consistent():
    batch = synthetic_batch(batch=3)
    mirrored = mirror_batch(batch, torch.tensor([True, False, True]))
    assert mirrored.side.tolist() == [SIDE_LEFT, SIDE_RIGHT, SIDE_LEFT]
    assert_consistent(mirrored)
    assert torch.allclose(mirrored.joints3d[0, :, 0], -batch.joints3d[0, :, 0])
    assert torch.allclose(bright_centroid(mirrored.image[0]), mirrored.joints2d[0, 0], atol=0.35)
    assert mirrored.K[0, 0, 1] == 0 and mirrored.K[0, 1, 0] == 0  # still a plain pinhole K
    assert (
        torch.allclose(mirrored.mano_pose[0, 4:6], -batch.mano_pose[0, 4:6])
        and mirrored.mano_pose[0, 3] == batch.mano_pose[0, 3]
    )
    back = mirror_batch(mirrored, torch.tensor([True, False, True]))
    for name in ("image", "K", "joints2d", "joints3d", "vertices", "mano_pose", "side"):
        assert torch.allclose(getattr(back, name).double(), getattr(batch, name).double(), atol=1e-4), name
    flipped = HandAugmentation(AugmentSettings(flip_prob=1.0, rotation_deg=20))(batch, torch.Generator().manual_seed(0))
    assert (flipped.side == SIDE_LEFT).all()
    assert_consistent(flipped)


def test_augment_settings_are_validated():
    with pytest.raises(ValueError, match="scale_range"):
        AugmentSettings(scale_range=(1.2, 0.8))
    with pytest.raises(TypeError):
        AugmentSettings(rotation=10)  # a misspelt setting is an error, not ignored


# ---------------------------------------------------------------------------------------
# Collate and mixing
# ---------------------------------------------------------------------------------------


def test_collate_mixes_label_masks(tmp_path):
    write_freihand(tmp_path / "frei", n=2, versions=1)
    (tmp_path / "generic").mkdir()
    records = generic_records(tmp_path / "generic")
    (tmp_path / "generic" / "labels.json").write_text(json.dumps(records))
    frei = FreiHandDataset(tmp_path / "frei", crop_size=32)
    generic = KeypointsJsonDataset(tmp_path / "generic" / "labels.json", crop_size=32)
    batch = collate_hand_samples([frei[0], generic[1], generic[3], None, frei[1]])
    assert len(batch) == 4
    assert batch.has_mesh.tolist() == [True, False, False, True]
    assert batch.has_joints2d.tolist() == [True, True, False, True]
    assert batch.has_joints3d.tolist() == [True, False, False, True]
    assert batch.vertices.shape == (4, NUM_VERTICES, 3) and batch.vertices[1:3].abs().max() == 0
    assert batch.joints3d[1:3].abs().max() == 0 and batch.mano_pose[1:3].abs().max() == 0
    assert batch.side.tolist() == [SIDE_RIGHT, SIDE_LEFT, SIDE_RIGHT, SIDE_RIGHT]
    assert batch.joints2d_visible.dtype == torch.bool and batch.image.shape == (4, 3, 32, 32)
    assert batch.sample(1).vertices.shape == (0, 3)
    loader = torch.utils.data.DataLoader(frei, batch_size=2, collate_fn=collate_hand_samples)
    assert [len(b) for b in loader] == [2]
    with pytest.raises(DatasetError, match="share one"):
        collate_hand_samples([frei[0], KeypointsJsonDataset(tmp_path / "generic" / "labels.json", crop_size=16)[0]])


def test_mixed_dataset_ratios_per_batch(tmp_path):
    write_freihand(tmp_path / "frei", n=3, versions=1)
    (tmp_path / "generic").mkdir()
    (tmp_path / "generic" / "labels.json").write_text(json.dumps(generic_records(tmp_path / "generic")[1:3]))
    full = FreiHandDataset(tmp_path / "frei", crop_size=24)
    sparse = KeypointsJsonDataset(tmp_path / "generic" / "labels.json", crop_size=24)
    mixed = MixedDataset([full, sparse], [0.3, 0.7], num_samples=40, seed=1)
    sources = np.array([mixed.source_of(k) for k in range(40)])
    assert (sources == 0).sum() == 12
    for start in range(0, 40, 10):  # every batch of 10 holds exactly 3 fully labelled samples
        assert (sources[start : start + 10] == 0).sum() == 3
    loader = torch.utils.data.DataLoader(mixed, batch_size=10, collate_fn=collate_hand_samples)
    batches = list(loader)
    assert [int(b.has_mesh.sum()) for b in batches] == [3, 3, 3, 3]
    assert all(int(b.has_joints2d.sum()) == 10 for b in batches)
    # Fresh sample choices per epoch, same source order; same seed -> same plan.
    before = [mixed[k].index for k in range(40)]
    mixed.set_epoch(1)
    assert [mixed.source_of(k) for k in range(40)] == sources.tolist()
    assert [mixed[k].index for k in range(40)] != before
    again = MixedDataset([full, sparse], [0.3, 0.7], num_samples=40, seed=1)
    assert [again[k].index for k in range(40)] == before
    with pytest.raises(ValueError, match="ratios"):
        MixedDataset([full, sparse], [1.0])
    # a mix inside a mix draws its own samples per epoch too
    outer = MixedDataset([mixed, sparse], [0.5, 0.5], num_samples=20, seed=2)
    outer.set_epoch(3)
    assert mixed.epoch == 3


def test_make_hand_sample_rejects_bad_labels():
    image = torch.zeros(3, 8, 8)
    K = torch.tensor(make_K(8), dtype=torch.float32)
    with pytest.raises(DatasetError, match=r"demo.png \(index 5\): joints2d must have shape \(21, 2\)"):
        make_hand_sample(image, K, joints2d=torch.zeros(20, 2), index=5, source="demo.png")
    with pytest.raises(DatasetError, match="non-finite"):
        make_hand_sample(image, K, joints3d=torch.full((21, 3), float("nan")))
    with pytest.raises(DatasetError, match="last row"):
        make_hand_sample(image, torch.eye(3) * 2)
    with pytest.raises(DatasetError, match="together"):
        make_hand_sample(image, K, mano_pose=torch.zeros(48))


def test_versions_constant_matches_freihand_order():
    # FreiHAND's own tooling numbers the colour versions in this order.
    assert FREIHAND_VERSIONS == ("gs", "hom", "sample", "auto")


def test_augment_and_crop_follow_the_device(device):
    batch = synthetic_batch(batch=2).to(device)
    augmented = HandAugmentation(AugmentSettings(blur_prob=1.0))(batch, torch.Generator().manual_seed(0))
    assert augmented.image.device.type == device.type and augmented.K.device.type == device.type
    assert_consistent(augmented)
    result = crop_image(batch.image, torch.tensor([[0.0, 0.0, 40.0, 40.0]] * 2, device=device), 16, batch.K)
    assert result.image.device.type == device.type and result.K.device.type == device.type


def test_generic_meta_key_is_allowed(tmp_path):
    record = dict(generic_records(tmp_path, count=1)[0], meta={"id": "hand-7", "annotator": 3})
    (tmp_path / "labels.json").write_text(json.dumps([record]))
    assert KeypointsJsonDataset(tmp_path / "labels.json", crop_size=16)[0].has_joints3d
