"""Run a training: the run folder, the Lightning ``Trainer``, checkpoints, interruption.

Run folder layout::

    run_dir/config.yaml              the resolved configuration
    run_dir/checkpoints/last.ckpt    written after every epoch (and on Ctrl-C / the time budget)
    run_dir/checkpoints/best.ckpt    the best validation PA-MPVPE so far
    run_dir/logs/version_N/          TensorBoard events and metrics.csv, one folder per start/resume

Checkpoints are written through a temporary file and a rename, so a crash while saving leaves
the previous checkpoint intact. Ctrl-C (SIGINT) finishes the current step, saves ``last.ckpt``
and returns; ``--resume`` continues from it.
"""

from __future__ import annotations

import io
import signal
import warnings
from dataclasses import dataclass
from pathlib import Path

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback, LearningRateMonitor, ModelCheckpoint
from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger
from lightning.pytorch.plugins.io import TorchCheckpointIO

from manolayer.io import write_bytes_atomic
from meshrec.config import config_to_dict, load_config, save_config
from meshrec.errors import MeshrecError
from meshrec.training.config import TrainConfig
from meshrec.training.data import ResumableSampler, build_datasets, build_loaders
from meshrec.training.module import HandMeshModule

CONFIG_NAME = "config.yaml"
# sections that define the network: a resumed run must not change them
_ARCHITECTURE_SECTIONS = ("model",)


class AtomicCheckpointIO(TorchCheckpointIO):
    """Checkpoints written through a temporary file in the same folder and ``os.replace``."""

    def save_checkpoint(self, checkpoint, path, storage_options=None) -> None:
        buffer = io.BytesIO()
        torch.save(checkpoint, buffer)
        write_bytes_atomic(Path(path), buffer.getvalue())


class LastCheckpoint(Callback):
    """Keeps ``last.ckpt``: after every epoch, and on Ctrl-C (SIGINT) after the current step.

    Ctrl-C finishes the step, saves, and stops the run cleanly (instead of Lightning's exit(1));
    the epoch-end save is then skipped so the mid-epoch checkpoint, which knows how far the epoch
    got, is the one kept.
    """

    def __init__(self, last_path: Path) -> None:
        self.last_path = last_path
        self.interrupted = False
        self._previous = None

    def on_fit_start(self, trainer, module) -> None:
        self._previous = signal.signal(signal.SIGINT, self._handle)

    def on_fit_end(self, trainer, module) -> None:
        if self._previous is not None:
            signal.signal(signal.SIGINT, self._previous)

    def _handle(self, signum, frame) -> None:
        if self.interrupted:  # a second Ctrl-C: the user means it
            raise KeyboardInterrupt
        self.interrupted = True
        print("\nmeshrec: interrupted; finishing this step and saving the checkpoint (Ctrl-C again to abort)", flush=True)

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_index) -> None:
        if self.interrupted and not trainer.should_stop:
            trainer.save_checkpoint(self.last_path)
            trainer.should_stop = True

    def on_train_epoch_end(self, trainer, module) -> None:
        if not self.interrupted:
            trainer.save_checkpoint(self.last_path)


class ResumeDataPosition(Callback):
    """A run resumed mid-epoch continues with the very batches it had not trained on yet.

    Lightning restores the step counters but restarts the epoch's data; before it builds the data
    iterator this puts the sampler on the saved epoch (its keys carry the epoch to the dataset,
    e.g. a :class:`MixedDataset`'s plan) and makes it skip the batches already done.
    """

    def __init__(self, loader) -> None:
        self.loader = loader

    def on_load_checkpoint(self, trainer, module, checkpoint) -> None:
        # 'processed': batches whose optimiser step ran ('completed' lags by one when the save
        # happened in on_train_batch_end, which Lightning itself corrects on restart)
        done = checkpoint["loops"]["fit_loop"]["epoch_loop.batch_progress"]["current"]["processed"]
        if not 0 < done < len(self.loader):
            return  # saved at an epoch boundary: Lightning starts the next epoch afresh
        epoch = checkpoint["epoch"]
        if isinstance(self.loader.sampler, ResumableSampler):
            self.loader.sampler.set_epoch(epoch)
            self.loader.sampler.skip_next(done * self.loader.batch_size)


@dataclass
class TrainResult:
    """Where a run left its files, and how it ended."""

    run_dir: Path
    last_checkpoint: Path
    best_checkpoint: Path | None
    global_step: int
    epochs: int
    interrupted: bool
    metrics: dict[str, float]


def train(config: TrainConfig, *, resume: bool = False) -> TrainResult:
    """Train as configured; with ``resume``, continue from ``run_dir/checkpoints/last.ckpt``.

    Raises:
        MeshrecError: the run folder already holds a run and ``resume`` is False (nothing is
            overwritten), ``resume`` without a checkpoint, or a resumed run whose model
            configuration differs from the saved one.
    """
    run_dir = Path(config.run_dir)
    checkpoints = run_dir / "checkpoints"
    last = checkpoints / "last.ckpt"
    _check_run_folder(config, run_dir, last, resume)
    save_config(config, run_dir / CONFIG_NAME)

    # each start writes its own logs/version_N, so Lightning's "will be deleted" warning does not apply
    warnings.filterwarnings("ignore", message="Experiment logs directory .* exists and is not empty")
    warnings.filterwarnings("ignore", message=r"`isinstance\(treespec, LeafSpec\)` is deprecated")
    L.seed_everything(config.seed, workers=True, verbose=False)
    module = HandMeshModule(config)
    train_set, val_set = build_datasets(config)
    train_loader, val_loader = build_loaders(config, train_set, val_set)

    monitor = "val/pa_mpvpe_mm" if _has_meshes(val_set) else "val/joints2d_px"
    best = ModelCheckpoint(dirpath=checkpoints, filename="best", monitor=monitor, mode="min", save_top_k=1,
                           save_last=False, auto_insert_metric_name=False, enable_version_counter=False)
    interrupt = LastCheckpoint(last)
    callbacks = [interrupt, ResumeDataPosition(train_loader)]
    if val_loader is not None:
        callbacks.append(best)
    # one version folder per start or resume (logs/version_N), so a resumed run never erases earlier logs
    version = _next_log_version(run_dir / "logs")
    loggers = [TensorBoardLogger(run_dir, name="logs", version=version), CSVLogger(run_dir, name="logs", version=version)]
    callbacks.append(LearningRateMonitor(logging_interval="step"))
    trainer_config = config.trainer
    trainer = L.Trainer(
        default_root_dir=run_dir,
        max_epochs=trainer_config.max_epochs,
        max_steps=trainer_config.max_steps,
        max_time={"minutes": trainer_config.max_minutes} if trainer_config.max_minutes else None,
        accelerator=trainer_config.accelerator,
        devices=trainer_config.devices,
        strategy=trainer_config.strategy,
        num_nodes=trainer_config.num_nodes,
        precision=trainer_config.precision,
        gradient_clip_val=trainer_config.gradient_clip or None,
        log_every_n_steps=trainer_config.log_every_steps,
        check_val_every_n_epoch=trainer_config.val_every_epochs,
        enable_progress_bar=trainer_config.progress_bar,
        enable_model_summary=False,
        deterministic=trainer_config.deterministic,
        callbacks=callbacks,
        logger=loggers,
        plugins=[AtomicCheckpointIO()],
        num_sanity_val_steps=0,
    )
    trainer.fit(module, train_loader, val_loader, ckpt_path=str(last) if resume else None)
    if trainer.interrupted and not interrupt.interrupted:
        trainer.save_checkpoint(last)
    metrics = {k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith("val/")}
    return TrainResult(
        run_dir=run_dir,
        last_checkpoint=last,
        best_checkpoint=checkpoints / "best.ckpt" if (checkpoints / "best.ckpt").exists() else None,
        global_step=trainer.global_step,
        epochs=trainer.current_epoch,
        interrupted=interrupt.interrupted,
        metrics=metrics,
    )


def _next_log_version(folder: Path) -> str:
    existing = [int(p.name.split("_")[1]) for p in folder.glob("version_*") if p.name.split("_")[1].isdigit()]
    return f"version_{max(existing, default=-1) + 1}"


def _has_meshes(dataset) -> bool:
    if dataset is None or len(dataset) == 0:
        return False
    return bool(dataset[0].has_mesh)


def _check_run_folder(config: TrainConfig, run_dir: Path, last: Path, resume: bool) -> None:
    if not resume:
        if last.exists():
            raise MeshrecError(
                f"{run_dir} already holds a run ({last}); pass --resume to continue it, or set run_dir to a new folder"
            )
        return
    if not last.exists():
        raise MeshrecError(f"--resume: no checkpoint at {last}; start without --resume")
    saved_path = run_dir / CONFIG_NAME
    if saved_path.exists():
        saved = config_to_dict(load_config(TrainConfig, saved_path))
        current = config_to_dict(config)
        changed = [section for section in _ARCHITECTURE_SECTIONS if saved.get(section) != current.get(section)]
        if changed:
            raise MeshrecError(
                f"--resume: the {', '.join(changed)} configuration differs from the one the run was started with "
                f"({saved_path}); resume with the same settings, or start a new run_dir"
            )
