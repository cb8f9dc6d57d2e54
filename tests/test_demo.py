"""The demo: the bundled model fine-tuned on a shifted synthetic domain with each kind of label."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from meshrec.demo import LABEL_KINDS, DemoRun, DemoSettings, format_demo_table, recovered_shares, run_demo
from meshrec.errors import MeshrecError
from meshrec.render import gl_available

needs_gl = pytest.mark.skipif(not gl_available(), reason="OpenGL (EGL) renderer unavailable for synthetic data")


def scores(pa_mpvpe: float) -> dict[str, float]:
    return {"pa_mpvpe_mm": pa_mpvpe, "pa_mpjpe_mm": pa_mpvpe + 1, "f5": 0.5, "f15": 0.9, "joints2d_px": 6.0}


def test_shares_of_the_full_runs_gain():
    runs = [DemoRun(kind, Path(kind), 10, scores(value)) for kind, value in zip(LABEL_KINDS, (11.0, 10.5, 10.0))]
    shares = recovered_shares(scores(12.0), runs)
    assert shares == pytest.approx({"joints2d": 0.5, "joints3d": 0.75, "full": 1.0})
    assert all(math.isnan(v) for v in recovered_shares(scores(9.0), runs).values())  # full gained nothing
    table = format_demo_table(scores(12.0), {"pa_mpvpe_mm": 13.0, "pa_mpjpe_mm": 14.0, "f5": 0.4, "f15": 0.8},
                              runs, shares, DemoSettings(num_samples=100, steps=10))
    assert "| mean hand | - | 13.00 | 14.00 | 0.400 | 0.800 | - |  |" in table
    assert "| fine-tuned: 2D keypoints only | 10 | 11.00 | 12.00 | 0.500 | 0.900 | 6.00 | 50 % |" in table
    assert "cap" not in table
    capped = format_demo_table(scores(12.0), {}, runs, shares, DemoSettings(steps=20, minutes=5))
    assert "Stopped by the 5-minute cap before 20 steps (a busy machine?): 2D keypoints only, sparse 3D" in capped


def test_bad_settings_are_refused_before_any_work(tmp_path):
    with pytest.raises(MeshrecError, match="steps >= 1, minutes > 0 and num_samples >= 20; got 0"):
        run_demo(DemoSettings(out=tmp_path / "demo", steps=0))
    assert not (tmp_path / "demo").exists()


@needs_gl
@pytest.mark.slow
def test_demo_end_to_end_with_one_step_per_run(tmp_path):
    out = tmp_path / "demo"
    summary = run_demo(DemoSettings(out=out, num_samples=40, steps=1, predictions=2, progress=False))
    assert [run.kind for run in summary.runs] == list(LABEL_KINDS) and all(run.steps == 1 for run in summary.runs)
    assert [run.checkpoint.parent.parent.name for run in summary.runs] == [f"finetune_{k}" for k in LABEL_KINDS]
    document = json.loads((out / "metrics.json").read_text(), parse_constant=lambda name: pytest.fail(f"{name} in metrics.json"))
    assert document["format"] == "meshrec.demo/1" and document["domain"]["style"] == "photo"
    assert set(document["recovered_share_of_full_gain"]) == set(LABEL_KINDS)
    assert np.isfinite(document["before"]["pa_mpvpe_mm"]) and document["mean_hand"]["pa_mpvpe_mm"] > 0
    assert "fine-tuned: full meshes" in (out / "metrics.md").read_text()
    overlays = sorted((out / "predictions").glob("*_overlay.png"))
    assert len(overlays) == 2 and Image.open(overlays[0]).size == (3 * 128, 128)  # image | before | after
    assert len(list((out / "predictions").glob("*.obj"))) == 2
