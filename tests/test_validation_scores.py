"""Validation scores: every stage in the order the network ran it, the final one last.

One scorer (``meshrec.metrics.stage_scores``) serves training-time validation and
``meshrec.evaluate``; ``val/pa_mpvpe_mm`` (which picks ``best.ckpt``) must score the final
stage, never the alphabetically last one.
"""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from meshrec.models.reconstructor import ModelConfig
from meshrec.metrics import MetricInputError, final_stage, stage_scores
from meshrec.training.config import TrainConfig
from meshrec.training.module import HandMeshModule

NUM_SAMPLES = 3


def _stage_names(max_passes: int) -> list[str]:
    return ["global", "coarse_to_fine", *(f"pass_{index}" for index in range(1, max_passes + 1))]


def test_stage_scores_keep_the_given_order_and_the_last_is_final():
    generator = torch.Generator().manual_seed(0)
    truth = torch.rand(2, 21, 3, generator=generator)
    names = _stage_names(11)  # sorted, "pass_10" < "pass_2" and "global" > "coarse_to_fine"
    stages = {name: (truth + 0.001 * index, truth + 0.001 * index) for index, name in enumerate(names)}
    scores = stage_scores(stages, truth, truth)
    assert list(scores) == names and final_stage(scores) == "pass_11"
    joints_only = stage_scores(stages, truth, joints_only=True)
    assert list(joints_only) == names and "pa_mpvpe_mm" not in joints_only["global"]


def test_stage_scores_need_label_meshes_unless_joints_only():
    truth = torch.zeros(1, 21, 3)
    with pytest.raises(MetricInputError, match="joints_only=True"):
        stage_scores({"global": (truth, truth)}, truth)
    with pytest.raises(MetricInputError, match="no stage"):
        final_stage({})


class _ScriptedPrediction:
    """What ``HandMeshModule.validation_step`` reads of a prediction, with one distinct,
    known error per stage: stage ``i`` is the truth scaled by ``1 + scale_i`` in depth, so
    every stage has its own PA-MPVPE (a similarity alignment cannot undo a one-axis stretch)."""

    def __init__(self, truth_vertices: torch.Tensor, names: list[str], stretch: dict[str, float]) -> None:
        self.names, self.truth, self.stretch = names, truth_vertices, stretch
        self.passes_used = torch.ones(len(truth_vertices), dtype=torch.long)
        self.joints2d = torch.zeros(len(truth_vertices), 21, 2)
        self.keypoints2d = None

    def stage_vertices(self, max_passes):
        return {name: self.truth * torch.tensor([1.0, 1.0, 1.0 + self.stretch[name]]) for name in self.names}


def _validate(max_passes: int, monkeypatch) -> dict[str, float]:
    config = TrainConfig(model=ModelConfig(image_size=64))
    config.model.gate.max_passes = max_passes
    module = HandMeshModule(config)
    names = _stage_names(max_passes)
    stretch = {name: 0.05 * (index + 1) for index, name in enumerate(names)}
    generator = torch.Generator().manual_seed(1)
    vertices = torch.rand(NUM_SAMPLES, module.model.num_vertices, 3, generator=generator) + torch.tensor([0.0, 0.0, 0.5])
    prediction = _ScriptedPrediction(vertices, names, stretch)
    monkeypatch.setattr(module.model, "forward", lambda *args, **kwargs: prediction)
    regressor = module.model.joint_regressor
    batch = SimpleNamespace(
        image=None, K=None, side=None,
        has_mesh=torch.ones(NUM_SAMPLES, dtype=torch.bool), vertices=vertices, joints3d=regressor @ vertices,
        joints2d=torch.zeros(NUM_SAMPLES, 21, 2), joints2d_visible=torch.ones(NUM_SAMPLES, 21, dtype=torch.bool),
        has_joints2d=torch.ones(NUM_SAMPLES, dtype=torch.bool),
    )
    logged: dict[str, float] = {}
    monkeypatch.setattr(module, "log_dict", lambda metrics, **kwargs: logged.update(metrics))
    module._trainer = SimpleNamespace(world_size=1)  # one process: nothing to gather
    module.validation_step(batch, 0)
    module.on_validation_epoch_end()
    return logged


@pytest.mark.parametrize("max_passes, final", [(0, "coarse_to_fine"), (11, "pass_11")])
def test_validation_scores_the_final_stage(max_passes, final, monkeypatch):
    """``gate.max_passes = 0``: the refined mesh, not ``global``; 11 passes: ``pass_11``, not ``pass_9``."""
    logged = _validate(max_passes, monkeypatch)
    stage_errors = {key.split("/")[1]: value for key, value in logged.items() if key.endswith("/pa_mpvpe_mm") and key.count("/") == 2}
    assert list(stage_errors) == _stage_names(max_passes)
    assert len(set(stage_errors.values())) == len(stage_errors)  # every stage distinguishable
    assert logged["val/pa_mpvpe_mm"] == stage_errors[final]
