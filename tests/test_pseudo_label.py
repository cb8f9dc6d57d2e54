"""``meshrec pseudo-label``: detector keypoints become a label file that training reads; keypoints
outside the image are not visible; images without a hand are listed, not fatal."""

from __future__ import annotations

import json
from types import SimpleNamespace

import numpy as np
import pytest
from PIL import Image

import meshrec.detect
from meshrec.data.keypoints_json import KeypointsJsonDataset
from meshrec.errors import MeshrecError
from meshrec.pseudo_label import pseudo_label


@pytest.fixture
def photos(tmp_path, monkeypatch):
    """Two photos: 'hands.png' (240 x 320) with two hands, the right one partly outside the image,
    and 'empty.png' (200 x 200) without one; a scripted detector answering by image size."""
    folder = tmp_path / "photos"
    folder.mkdir()
    Image.fromarray(np.full((240, 320, 3), 90, np.uint8)).save(folder / "hands.png")
    Image.fromarray(np.full((200, 200, 3), 30, np.uint8)).save(folder / "empty.png")
    left = np.stack([np.linspace(40, 120, 21), np.linspace(60, 180, 21)], 1)
    right = np.stack([np.linspace(250, 340, 21), np.linspace(50, 150, 21)], 1)  # u = 322 > 319.5 from keypoint 16 on

    def detect_hands(image, **_):
        image = np.asarray(image)
        if image.shape[:2] != (240, 320):
            return []
        return [SimpleNamespace(keypoints2d=k.astype(np.float32), side=s, score=0.9, box=np.array([k[:, 0].min(), k[:, 1].min(), k[:, 0].max(), k[:, 1].max()]))
                for k, s in ((left, "left"), (right, "right"))]  # fmt: skip

    monkeypatch.setattr(meshrec.detect, "detect_hands", detect_hands)
    return folder


def test_records_train_and_mark_outside_keypoints_invisible(photos, tmp_path):
    out = tmp_path / "labels" / "hands.jsonl"
    summary = pseudo_label(photos, out)
    assert summary.num_hands == 2 and "2 hands in 1 of 2 images" in summary.describe()
    assert "empty.png: no hand found" in summary.describe()
    records = [json.loads(line) for line in out.read_text().splitlines()]
    assert [(r["image"], r["side"], r["meta"]["hand"]) for r in records] == [("../photos/hands.png", "left", 0), ("../photos/hands.png", "right", 1)]
    visible = [row[2] for row in records[1]["joints2d"]]
    assert visible == [1] * 16 + [0] * 5 and all(row[2] == 1 for row in records[0]["joints2d"])
    dataset = KeypointsJsonDataset(out)  # what configs/keypoints_json.yaml trains on
    assert len(dataset) == 2 and int(dataset[1].joints2d_visible.sum()) == 16


def test_the_label_file_must_be_jsonl(photos, tmp_path):
    with pytest.raises(MeshrecError, match="give a .jsonl path"):
        pseudo_label(photos, tmp_path / "labels.json")
    assert not (tmp_path / "labels.json").exists()


def test_cli(photos, tmp_path, capsys):
    from pipelines import cli

    assert cli.main(["pseudo-label", str(photos), "--out", str(tmp_path / "l.jsonl")]) == 0
    assert "2 hands in 1 of 2 images" in capsys.readouterr().out
    assert cli.main(["pseudo-label", str(photos / "empty.png"), "--out", str(tmp_path / "none.jsonl")]) == 1
