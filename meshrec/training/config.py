"""The typed training configuration: what ``meshrec train --config X.yaml key=value`` reads.

Every section is a dataclass with defaults; ``meshrec.config.load_config`` fills it from YAML and
``key=value`` overrides, rejecting unknown keys with the list of valid ones. The resolved
configuration is saved as ``config.yaml`` in the run folder beside the checkpoints.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from meshrec.data.augment import AugmentSettings
from meshrec.errors import MeshrecError
from meshrec.losses import LossConfig
from meshrec.models.reconstructor import ModelConfig

DATA_KINDS = ("synthetic", "freihand", "keypoints_json")
SUPERVISIONS = ("full", "joints3d", "joints2d", "mixed")
PROTOCOLS = ("end_to_end", "progressive")


@dataclass
class DataConfig:
    """Where training and validation samples come from, and which labels training may use.

    Attributes:
        kind: ``'synthetic'`` (a folder written by ``meshrec synth``, or rendered on the fly
            when ``root`` is None), ``'freihand'`` (the FreiHAND layout) or ``'keypoints_json'``
            (your images with a JSON/JSONL label file).
        root: the dataset folder (synthetic, freihand) or the label file (keypoints_json).
        val_root: validation data: for folders, defaults to ``root``'s evaluation split; for
            keypoints_json, another label file (None: ``val_fraction`` of ``root``'s images).
        val_fraction: keypoints_json without ``val_root``: share of the label file's images held
            out for validation (:func:`meshrec.data.keypoints_json.split_by_image`; 0: none).
        train_samples, val_samples: sizes of on-the-fly synthetic sets.
        supervision: labels training sees: ``'full'``, ``'joints3d'`` (3D + 2D keypoints),
            ``'joints2d'`` (2D keypoints only), or ``'mixed'`` (``mesh_fraction`` full, the
            rest 2D only, in every batch). Validation always uses every label it has.
        mesh_fraction: share of fully labelled samples with ``supervision='mixed'``.
        mix_labels: a keypoints_json label file (e.g. ``meshrec pseudo-label``'s, for your own
            photos) whose hands make up ``mix_fraction`` of every training batch, seen with the
            labels ``mix_supervision`` allows; the rest come from ``root`` as configured above.
            Validation reads ``root``'s data only. None: no second source.
        mix_fraction: share of ``mix_labels``' hands in every training batch.
        mix_supervision: labels training sees of ``mix_labels``' hands: ``'full'``, ``'joints3d'``
            or ``'joints2d'`` (a detector's keypoints: 2D only).
        batch_size, num_workers: of the training DataLoader.
        augment: apply ``augmentation`` to training batches.
        seed: seed of on-the-fly data, sample order and augmentation.
    """

    kind: str = "synthetic"
    root: str | None = None
    val_root: str | None = None
    val_fraction: float = 0.0
    train_samples: int = 4000
    val_samples: int = 256
    supervision: str = "full"
    mesh_fraction: float = 0.3
    mix_labels: str | None = None
    mix_fraction: float = 0.25
    mix_supervision: str = "joints2d"
    batch_size: int = 32
    num_workers: int = 0
    augment: bool = True
    augmentation: AugmentSettings = field(default_factory=AugmentSettings)
    seed: int = 0

    def __post_init__(self) -> None:
        if self.kind not in DATA_KINDS:
            raise MeshrecError(f"data.kind must be one of {DATA_KINDS}, got {self.kind!r}")
        if self.supervision not in SUPERVISIONS:
            raise MeshrecError(f"data.supervision must be one of {SUPERVISIONS}, got {self.supervision!r}")
        if not 0.0 <= self.val_fraction < 1.0:
            raise MeshrecError(f"data.val_fraction must be in [0, 1), got {self.val_fraction}")
        if not 0.0 < self.mesh_fraction < 1.0:
            raise MeshrecError(f"data.mesh_fraction must be in (0, 1), got {self.mesh_fraction}")
        if self.kind != "synthetic" and not self.root:
            raise MeshrecError(f"data.root is required for data.kind={self.kind!r} (the dataset folder or label file)")
        for name in ("train_samples", "val_samples", "batch_size"):
            if getattr(self, name) < 1:
                raise MeshrecError(f"data.{name} must be >= 1, got {getattr(self, name)}")
        if self.num_workers < 0:
            raise MeshrecError(f"data.num_workers must be >= 0, got {self.num_workers}")
        if not 0.0 < self.mix_fraction < 1.0:
            raise MeshrecError(f"data.mix_fraction must be in (0, 1), got {self.mix_fraction}")
        if self.mix_supervision not in SUPERVISIONS or self.mix_supervision == "mixed":
            raise MeshrecError(
                f"data.mix_supervision must be one of {[s for s in SUPERVISIONS if s != 'mixed']}, got {self.mix_supervision!r}"
            )


@dataclass
class OptimConfig:
    """AdamW with linear warmup then cosine decay to ``min_lr_ratio * lr``.

    Attributes:
        train_only: names of the parts to train, as in the model's state dict (a parameter
            trains when its name is one of them or starts with one and a dot, e.g.
            ``refiner.loop_heads.variance``); empty: every parameter. The frozen parts run as
            at inference (eval mode: norm statistics kept, no sampling noise), so a head can
            be retrained on what the finished network gives it.
    """

    lr: float = 1e-3
    weight_decay: float = 1e-4
    warmup_steps: int = 200
    min_lr_ratio: float = 0.05
    train_only: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if not self.lr > 0 or self.weight_decay < 0 or self.warmup_steps < 0 or not 0 <= self.min_lr_ratio <= 1:
            raise MeshrecError(
                f"optim needs lr > 0, weight_decay >= 0, warmup_steps >= 0, 0 <= min_lr_ratio <= 1; got "
                f"{self.lr}, {self.weight_decay}, {self.warmup_steps}, {self.min_lr_ratio}"
            )


@dataclass
class TrainerConfig:
    """How long and where to train (passed to Lightning's ``Trainer``).

    Attributes:
        max_epochs, max_steps: stop at whichever comes first (-1: no step limit).
        max_minutes: wall-clock budget (None: none); the run stops cleanly and keeps its checkpoints.
        accelerator: ``'cpu'``, ``'gpu'`` or ``'auto'``; devices: count or ``'auto'``.
        strategy: ``'auto'``, ``'ddp'`` (one process per device; on CPU uses gloo) ...
        num_nodes: machines for multi-node DDP.
        precision: ``'32-true'``, ``'16-mixed'`` or ``'bf16-mixed'`` (mixed precision on GPU).
        gradient_clip: clip gradients' global norm at this value (0: off).
        protocol: ``'end_to_end'`` (every loop pass from the start) or ``'progressive'`` (pass 1
            first, one more pass every ``progressive_epochs`` epochs).
        log_every_steps: logging period (TensorBoard + CSV in the run folder).
        val_every_epochs: validation period; the best checkpoint is kept by PA-MPVPE.
        progress_bar: show Lightning's progress bars.
        deterministic: ask torch for deterministic algorithms (exact resume).
    """

    max_epochs: int = 10
    max_steps: int = -1
    max_minutes: float | None = None
    accelerator: str = "auto"
    devices: int | str = "auto"
    strategy: str = "auto"
    num_nodes: int = 1
    precision: str = "32-true"
    gradient_clip: float = 1.0
    protocol: str = "end_to_end"
    progressive_epochs: int = 1
    log_every_steps: int = 20
    val_every_epochs: int = 1
    progress_bar: bool = True
    deterministic: bool = False

    def __post_init__(self) -> None:
        if self.protocol not in PROTOCOLS:
            raise MeshrecError(f"trainer.protocol must be one of {PROTOCOLS}, got {self.protocol!r}")
        if self.max_epochs < 1 or self.progressive_epochs < 1 or self.val_every_epochs < 1 or self.log_every_steps < 1:
            raise MeshrecError(
                "trainer.max_epochs, progressive_epochs, val_every_epochs and log_every_steps must be >= 1"
            )
        if self.max_minutes is not None and not self.max_minutes > 0:
            raise MeshrecError(f"trainer.max_minutes must be > 0 or null, got {self.max_minutes}")


@dataclass
class TrainConfig:
    """A whole training run.

    Attributes:
        run_dir: the run folder: ``config.yaml``, ``checkpoints/{last,best}.ckpt``, logs.
        seed: seeds everything (weights, data order, augmentation, Gumbel noise).
    """

    run_dir: str = "runs/train"
    seed: int = 0
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
