"""Training: tiny runs on synthetic data rendered on the fly (CPU, deterministic)."""

from __future__ import annotations

import dataclasses
import os
import sys
import textwrap
from pathlib import Path

import lightning as L
import pytest
import signal
import torch

from meshrec.config import ConfigError, config_from_dict, config_to_dict, load_config
from meshrec.errors import MeshrecError
from meshrec.render import gl_available
from meshrec.training.config import TrainConfig
from tests import processes

needs_gl = pytest.mark.skipif(not gl_available(), reason="OpenGL (EGL) renderer unavailable for synthetic data")
CONFIGS = Path(__file__).resolve().parents[1] / "configs"

TINY = {
    "seed": 3,
    "model": {
        "image_size": 64,
        "backbone": {"widths": [8, 16, 24, 32]},
        "global_stage": {"hidden": 32},
        "keypoints": {"channels": 8},
        "refinement": {"widths": [8, 8, 16, 16]},
        "gate": {"max_passes": 2},
    },
    "data": {"kind": "synthetic", "root": None, "train_samples": 16, "val_samples": 8, "batch_size": 8, "num_workers": 0},
    "optim": {"lr": 3e-3, "warmup_steps": 0},
    "trainer": {"max_epochs": 2, "accelerator": "cpu", "devices": 1, "progress_bar": False, "log_every_steps": 1},
}


def tiny_config(run_dir: Path, **sections) -> TrainConfig:
    data = config_to_dict(config_from_dict(TrainConfig, TINY))
    for section, values in sections.items():
        data[section].update(values) if isinstance(values, dict) else data.__setitem__(section, values)
    data["run_dir"] = str(run_dir)
    return config_from_dict(TrainConfig, data)


def final_weights(run_dir: Path) -> dict[str, torch.Tensor]:
    return torch.load(run_dir / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)["state_dict"]


@pytest.mark.parametrize("name", sorted(p.name for p in CONFIGS.glob("*.yaml")))
def test_shipped_configs_load(name):
    config = load_config(TrainConfig, CONFIGS / name)
    assert config.run_dir.startswith("runs/")


def test_misspelled_key_lists_the_valid_ones(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("optim:\n  learning_rate: 0.1\n")
    with pytest.raises(ConfigError, match=r"optim\.learning_rate.*lr"):
        load_config(TrainConfig, path)
    with pytest.raises(ConfigError, match=r"data\.supervision"):
        load_config(TrainConfig, None, ["data.supervision=weak"])


@needs_gl
def test_training_lowers_the_loss_and_writes_the_run_folder(tmp_path):
    from meshrec.training.run import train

    run_dir = tmp_path / "run"
    settings = dict(trainer={"max_epochs": 6}, data={"train_samples": 8, "augment": False})
    result = train(tiny_config(run_dir, **settings))  # one batch, seen 6 times
    assert result.global_step == 6 and not result.interrupted
    assert (run_dir / "config.yaml").exists() and (run_dir / "checkpoints" / "last.ckpt").exists()
    assert (run_dir / "checkpoints" / "best.ckpt").exists()
    assert load_config(TrainConfig, run_dir / "config.yaml") == tiny_config(run_dir, **settings)
    import csv

    rows = list(csv.DictReader(open(run_dir / "logs" / "version_0" / "metrics.csv")))
    losses = [float(r["train/loss"]) for r in rows if r.get("train/loss")]
    assert len(losses) == 6 and losses[-1] < losses[0]
    assert any(r.get("val/pa_mpvpe_mm") for r in rows) and any(r.get("val/global/pa_mpvpe_mm") for r in rows)
    # an existing run is never overwritten by accident
    with pytest.raises(MeshrecError, match="already holds a run.*--resume"):
        train(tiny_config(run_dir))


def test_keypoint_labels_train_2d_only_and_score_a_held_out_split(tmp_path):
    import csv

    from meshrec.training.run import train
    from tests.test_data import generic_records, write_jsonl

    records = [{"image": r["image"], "joints2d": r["joints2d"]} for r in generic_records(tmp_path, count=20) if "joints2d" in r]
    labels = write_jsonl(tmp_path / "labels.jsonl", records)
    data = {"kind": "keypoints_json", "root": str(labels), "supervision": "joints2d", "val_fraction": 0.25}
    result = train(tiny_config(tmp_path / "run", data=data, trainer={"max_epochs": 1}))
    rows = list(csv.DictReader(open(tmp_path / "run" / "logs" / "version_0" / "metrics.csv")))
    scored = [r for r in rows if r.get("val/keypoints2d_px")]
    assert scored and float(scored[-1]["val/joints2d_px"]) > 0 and not any(r.get("val/pa_mpvpe_mm") for r in rows)
    assert result.best_checkpoint is not None and result.best_checkpoint.exists()  # chosen by the 2D score
    with pytest.raises(MeshrecError, match=r"data.val_fraction must be in \[0, 1\)"):
        tiny_config(tmp_path / "bad", data=dict(data, val_fraction=1.5))


def test_exported_weights_start_a_new_run_and_its_checkpoint_outlives_the_file(tmp_path):
    """``meshrec export-weights`` -> ``model.weights=FILE`` -> a checkpoint that loads even after
    FILE is gone (the checkpoint holds every weight)."""
    import json

    from meshrec.models.reconstructor import HandMeshReconstructor
    from meshrec.training.run import train
    from pipelines.cli import main

    settings = dict(trainer={"max_epochs": 1}, data={"train_samples": 8, "augment": False})
    first = train(tiny_config(tmp_path / "first", **settings))
    weights = tmp_path / "exported" / "start.pt"
    assert main(["export-weights", "--checkpoint", str(first.last_checkpoint), "--out", str(weights), "--note", "tiny"]) == 0
    meta = json.loads(weights.with_suffix(".json").read_text())
    assert meta["model"]["backbone"]["widths"] == [8, 16, 24, 32] and meta["global_step"] == 1 and meta["note"] == "tiny"

    trained = final_weights(tmp_path / "first")
    started = HandMeshReconstructor(dataclasses.replace(tiny_config(tmp_path / "x").model, weights=str(weights)))
    for name, tensor in started.state_dict().items():
        torch.testing.assert_close(tensor, trained[f"model.{name}"])

    second = train(tiny_config(tmp_path / "second", model=dict(TINY["model"], weights=str(weights)), **settings))
    weights.unlink()
    restored = HandMeshReconstructor.from_checkpoint(second.last_checkpoint)
    for name, tensor in restored.state_dict().items():
        torch.testing.assert_close(tensor, final_weights(tmp_path / "second")[f"model.{name}"])
    assert main(["export-weights", "--checkpoint", str(tmp_path / "missing.ckpt"), "--out", str(weights)]) == 2
    assert not weights.exists()

    older = torch.load(second.last_checkpoint, weights_only=True)  # starting weights under model.backbone
    older["hyper_parameters"]["config"]["model"]["backbone"]["weights"] = older["hyper_parameters"]["config"]["model"].pop("weights")
    torch.save(older, tmp_path / "older.ckpt")
    assert HandMeshReconstructor.from_checkpoint(tmp_path / "older.ckpt").config.weights is None


@needs_gl
def test_overfits_one_batch(tmp_path):
    """The full objective on 8 fixed samples falls a lot in 60 steps."""
    from meshrec.training.data import build_datasets, build_loaders
    from meshrec.training.module import HandMeshModule
    from meshrec.losses import hand_losses

    config = tiny_config(tmp_path, data={"augment": False, "train_samples": 8})
    torch.manual_seed(0)
    module = HandMeshModule(config)
    train_set, _ = build_datasets(config)
    batch = next(iter(build_loaders(config, train_set, None)[0]))
    optimizer = torch.optim.Adam(module.model.parameters(), lr=3e-3)
    values = []
    for step in range(60):
        prediction = module.model(batch.image, batch.K, batch.side)
        losses = hand_losses(prediction, batch, config.loss, step=1000, joint_regressor=module.model.joint_regressor,
                             mesh_levels=module.model.mesh_levels, faces=module.model.faces)
        optimizer.zero_grad()
        losses.total.backward()
        optimizer.step()
        values.append(losses.total.item())
    assert values[-1] < 0.3 * values[0], values[::10]


def train_with_callback(config: TrainConfig, callback, monkeypatch, resume: bool = False):
    """``train`` with one more Lightning callback (to crash or interrupt it on purpose)."""
    import meshrec.training.run as run_module

    original = run_module.L.Trainer
    monkeypatch.setattr(run_module.L, "Trainer", lambda **kw: original(**{**kw, "callbacks": [*kw["callbacks"], callback]}))
    try:
        return run_module.train(config, resume=resume)
    finally:
        monkeypatch.setattr(run_module.L, "Trainer", original)


class CrashAtEpoch(L.Callback):
    def __init__(self, epoch):
        self.epoch = epoch

    def on_train_epoch_start(self, trainer, module):
        if trainer.current_epoch == self.epoch:
            raise RuntimeError("simulated crash")


class CtrlCAtStep(L.Callback):
    """Delivers Ctrl-C as the handler installed by the run sees it, after a given step."""

    def __init__(self, step):
        self.step = step

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_index):
        if trainer.global_step == self.step:
            from meshrec.training.run import LastCheckpoint

            next(c for c in trainer.callbacks if isinstance(c, LastCheckpoint))._handle(signal.SIGINT, None)


RESUME = dict(data={"supervision": "mixed", "mesh_fraction": 0.5, "train_samples": 32})  # 4 steps per epoch


@needs_gl
def test_resumed_runs_end_with_the_same_weights(tmp_path, monkeypatch):
    """Crash at an epoch boundary, or Ctrl-C in mid-epoch: --resume ends where a straight run ends."""
    from meshrec.training.run import train

    straight = tmp_path / "straight"
    train(tiny_config(straight, **RESUME))
    expected = final_weights(straight)

    crashed = tmp_path / "crashed"
    with pytest.raises(RuntimeError, match="simulated crash"):
        train_with_callback(tiny_config(crashed, **RESUME), CrashAtEpoch(1), monkeypatch)
    train(tiny_config(crashed, **RESUME), resume=True)

    interrupted = tmp_path / "interrupted"
    result = train_with_callback(tiny_config(interrupted, **RESUME), CtrlCAtStep(6), monkeypatch)
    assert result.interrupted and result.global_step == 7  # the step after the signal completes, then it stops
    train(tiny_config(interrupted, **RESUME), resume=True)

    for run in (crashed, interrupted):
        weights = final_weights(run)
        assert weights.keys() == expected.keys()
        for name in expected:
            torch.testing.assert_close(weights[name], expected[name], rtol=0, atol=0, msg=f"{run.name}: {name}")
    assert sorted(p.name for p in (interrupted / "logs").iterdir()) == ["version_0", "version_1"]


def test_resume_refuses_a_changed_model_or_a_missing_checkpoint(tmp_path):
    from meshrec.config import save_config
    from meshrec.training.run import train

    run_dir = tmp_path / "run"
    with pytest.raises(MeshrecError, match="no checkpoint"):
        train(tiny_config(run_dir), resume=True)
    (run_dir / "checkpoints").mkdir(parents=True)
    (run_dir / "checkpoints" / "last.ckpt").write_bytes(b"x")
    save_config(tiny_config(run_dir), run_dir / "config.yaml")
    changed = tiny_config(run_dir, model={**TINY["model"], "image_size": 96})
    with pytest.raises(MeshrecError, match="model configuration differs"):
        train(changed, resume=True)


@needs_gl
def test_mixed_batches_hold_full_and_2d_only_samples(tmp_path):
    from meshrec.training.data import build_datasets, build_loaders

    config = tiny_config(tmp_path, data={"supervision": "mixed", "mesh_fraction": 0.25})
    train_set, _ = build_datasets(config)
    for batch in build_loaders(config, train_set, None)[0]:
        assert batch.has_mesh.sum() == 2 and batch.has_joints2d.all() and batch.has_joints3d.sum() == 2
        assert (batch.vertices[~batch.has_mesh] == 0).all()


@needs_gl
def test_photos_mixed_into_every_batch_bring_their_2d_keypoints_only(tmp_path):
    from meshrec.training.data import build_datasets, build_loaders
    from tests.test_data import generic_records, write_jsonl

    records = [{"image": r["image"], "joints2d": r["joints2d"]} for r in generic_records(tmp_path, count=3)]
    labels = write_jsonl(tmp_path / "photos.jsonl", records)
    config = tiny_config(tmp_path, data={"mix_labels": str(labels), "mix_fraction": 0.25})
    train_set, val_set = build_datasets(config)
    assert len(train_set) == 16 and len(val_set) == 8  # validation: the synthetic hands only
    for batch in build_loaders(config, train_set, None)[0]:
        assert batch.has_mesh.sum() == 6 and batch.has_joints3d.sum() == 6 and batch.has_joints2d.all()
    with pytest.raises(MeshrecError, match="data.mix_supervision must be one of"):
        tiny_config(tmp_path, data={"mix_labels": str(labels), "mix_supervision": "mixed"})


@needs_gl
def test_nan_loss_stops_with_the_step_and_term_and_keeps_the_checkpoint(tmp_path, monkeypatch):
    from meshrec.training import module as module_file
    from meshrec.training.module import TrainingDivergedError
    from meshrec.training.run import train

    run_dir = tmp_path / "run"
    train(tiny_config(run_dir, trainer={"max_epochs": 1}))
    good = (run_dir / "checkpoints" / "last.ckpt").read_bytes()
    original = module_file.hand_losses

    def poisoned(*args, step, **kwargs):
        out = original(*args, step=step, **kwargs)
        if step >= 3:
            out.terms["vertices"] = out.terms["vertices"] * float("nan")
            out.total = out.total * float("nan")
        return out

    monkeypatch.setattr(module_file, "hand_losses", poisoned)
    with pytest.raises(TrainingDivergedError, match=r"at step 3 .*vertices=nan"):
        train(tiny_config(run_dir), resume=True)
    assert (run_dir / "checkpoints" / "last.ckpt").read_bytes() == good


def test_checkpoint_write_is_atomic(tmp_path, monkeypatch):
    from meshrec.training.run import AtomicCheckpointIO

    path = tmp_path / "last.ckpt"
    AtomicCheckpointIO().save_checkpoint({"step": 1}, path)
    monkeypatch.setattr(os, "replace", lambda *a: (_ for _ in ()).throw(OSError("disk full")))
    with pytest.raises(OSError, match="disk full"):
        AtomicCheckpointIO().save_checkpoint({"step": 2}, path)
    assert torch.load(path, weights_only=True) == {"step": 1} and os.listdir(tmp_path) == ["last.ckpt"]


@needs_gl
def test_sigint_saves_and_stops_cleanly(tmp_path):
    """Ctrl-C during training: the step finishes, last.ckpt is written, exit code 0."""
    run_dir = tmp_path / "run"
    # after TINY's own settings, so that they win: the run must still be going when Ctrl-C comes
    overrides = _tiny_overrides() + [f"run_dir={run_dir}", "trainer.max_epochs=1000", "data.train_samples=64"]
    process = processes.start([sys.executable, "-m", "pipelines.cli", "train", *overrides], env={**os.environ})
    log = run_dir / "logs" / "version_0" / "metrics.csv"
    processes.wait_for(
        process, lambda: log.exists() and log.stat().st_size > 0 and (run_dir / "checkpoints" / "last.ckpt").exists(),
        timeout=120, what="training never logged a step and wrote last.ckpt (nothing to interrupt)",
    )
    process.send_signal(signal.SIGINT)
    output = processes.finish(process, timeout=60, what="training after Ctrl-C")
    assert process.returncode == 0, output
    assert "training interrupted" in output and (run_dir / "checkpoints" / "last.ckpt").exists()


def _tiny_overrides() -> list[str]:
    flat = []

    def walk(prefix, value):
        if isinstance(value, dict):
            for key, inner in value.items():
                walk(f"{prefix}{key}.", inner)
        else:
            flat.append(f"{prefix[:-1]}={'null' if value is None else value}".replace(" ", ""))

    walk("", TINY)
    return flat


@needs_gl
@pytest.mark.slow
def test_ddp_two_cpu_processes_stay_in_sync(tmp_path):
    """Two gloo processes train a few steps; their weights are identical afterwards."""
    script = tmp_path / "ddp_run.py"
    script.write_text(textwrap.dedent(f"""
        import sys, torch, lightning as L
        sys.path.insert(0, {str(Path(__file__).resolve().parents[1])!r})
        from tests.test_training import tiny_config
        from meshrec.training.run import train

        class Record(L.Callback):
            def save(self, trainer, module, when):
                flat = torch.cat([p.detach().flatten() for p in module.parameters()])
                torch.save(flat, {str(tmp_path)!r} + f"/rank{{trainer.global_rank}}_{{when}}.pt")

            def on_train_start(self, trainer, module):
                self.save(trainer, module, "start")

            def on_train_end(self, trainer, module):
                self.save(trainer, module, "end")

        import meshrec.training.run as run_module
        original = run_module.L.Trainer
        run_module.L.Trainer = lambda **kw: original(**{{**kw, "callbacks": kw["callbacks"] + [Record()]}})
        config = tiny_config({str(tmp_path / "run")!r}, trainer={{"max_epochs": 1, "strategy": "ddp", "devices": 2,
                             "accelerator": "cpu", "progress_bar": False, "log_every_steps": 1}})
        train(config)
    """))
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    # well inside pytest's own time-out, so a hung rank fails here with its output, killed
    done = processes.run([sys.executable, str(script)], timeout=200, what="two-process DDP training", env=env, cwd=tmp_path)
    assert done.returncode == 0, done.stdout[-3000:]
    weights = {(rank, when): torch.load(tmp_path / f"rank{rank}_{when}.pt") for rank in (0, 1) for when in ("start", "end")}
    assert torch.equal(weights[0, "start"], weights[1, "start"]) and torch.equal(weights[0, "end"], weights[1, "end"])
    assert not torch.equal(weights[0, "start"], weights[0, "end"])  # and they trained
    assert (tmp_path / "run" / "checkpoints" / "last.ckpt").exists()


def _plain_samples(count: int):
    from meshrec.data.sample import make_hand_sample
    from meshrec.geometry.camera import default_intrinsics, project_points

    generator = torch.Generator().manual_seed(0)
    K = default_intrinsics((32, 32))
    samples = []
    for index in range(count):
        joints3d = torch.randn(21, 3, generator=generator) * 0.03 + torch.tensor([0.0, 0.0, 0.5])
        samples.append(make_hand_sample(torch.rand(3, 32, 32, generator=generator), K,
                                        joints2d=project_points(joints3d, K), joints3d=joints3d, index=index))
    return samples


def test_loader_augmentation_depends_on_epoch_and_sample_only():
    from meshrec.data.augment import AugmentSettings
    from meshrec.training.data import EPOCH_KEY_STRIDE, AugmentingCollate, EpochKeyed, ResumableSampler

    samples = _plain_samples(6)
    dataset = EpochKeyed(samples)
    collate = AugmentingCollate(AugmentSettings(), seed=3)
    whole = collate([dataset[EPOCH_KEY_STRIDE + i] for i in range(6)])  # epoch 1, samples 0..5
    # sample 4 of epoch 1 alone, or in another batch, gets the very same augmentation
    alone = collate([dataset[EPOCH_KEY_STRIDE + 4]])
    torch.testing.assert_close(alone.image[0], whole.image[4])
    torch.testing.assert_close(alone.joints2d[0], whole.joints2d[4])
    other_epoch = collate([dataset[2 * EPOCH_KEY_STRIDE + 4]])
    assert not torch.equal(other_epoch.image[0], whole.image[4])
    # labels follow the image: the augmented 3D joints project onto the augmented 2D joints
    from meshrec.geometry.camera import project_points

    torch.testing.assert_close(project_points(whole.joints3d, whole.K), whole.joints2d, atol=1e-3, rtol=0)
    # no augmentation: collate only
    plain = AugmentingCollate(None, seed=3)([dataset[EPOCH_KEY_STRIDE + 0]])
    torch.testing.assert_close(plain.image[0], samples[0].image)

    sampler = ResumableSampler(6, seed=0, shuffle=True, epoch_keys=True)
    sampler.set_epoch(2)
    keys = list(sampler)
    assert sorted(k - 2 * EPOCH_KEY_STRIDE for k in keys) == list(range(6))


def test_train_only_retrains_one_head_and_leaves_the_rest_as_it_was(tmp_path):
    """``optim.train_only``: the named part's weights move, every other weight and every norm
    statistic stays (the frozen parts run in eval mode); a part that names nothing is refused."""
    from meshrec.training.module import HandMeshModule
    from meshrec.training.run import train

    settings = dict(trainer={"max_epochs": 1}, data={"train_samples": 16, "augment": False})
    start = train(tiny_config(tmp_path / "start", **settings)).last_checkpoint
    head = "refiner.loop_heads.variance"
    tuned = train(tiny_config(
        tmp_path / "head", model=dict(TINY["model"], weights=str(start)),
        optim=dict(TINY["optim"], train_only=[head]), **settings,
    ))
    before, after = final_weights(tmp_path / "start"), final_weights(tmp_path / "head")
    moved = sorted(name for name in after if not torch.equal(before[name], after[name]))
    assert moved and all(name.startswith(f"model.{head}.") for name in moved), moved
    assert any("running_mean" in name for name in after)  # the backbone's norms were there to move

    module = HandMeshModule(tiny_config(tmp_path / "x", optim=dict(TINY["optim"], train_only=[head])))
    module.train()
    assert module.model.refiner.training and not module.model.backbone.training
    with pytest.raises(MeshrecError, match="refiner.loop_heads.varience"):
        HandMeshModule(tiny_config(tmp_path / "y", optim=dict(TINY["optim"], train_only=["refiner.loop_heads.varience"])))
    assert tuned.last_checkpoint.exists()
