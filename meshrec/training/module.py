"""The LightningModule: one training step, validation with the FreiHAND protocol, optimiser.

Randomness inside a step (Gumbel noise) is seeded from ``(seed, global step, rank)``, and
augmentation in the loader from ``(seed, epoch, sample)``, so a resumed run repeats exactly
what an uninterrupted one would have done.
"""

from __future__ import annotations

import math

import lightning as L
import torch

from meshrec.config import config_from_dict, config_to_dict
from meshrec.errors import MeshrecError
from meshrec.losses import HandPrior, hand_losses
from meshrec.metrics import final_stage, stage_scores
from meshrec.models.joint_groups import gumbel_temperature
from meshrec.models.reconstructor import HandMeshReconstructor
from meshrec.training.config import TrainConfig


class TrainingDivergedError(MeshrecError):
    """A loss became NaN or infinite."""


class HandMeshModule(L.LightningModule):
    """Trains a :class:`HandMeshReconstructor` as configured by a :class:`TrainConfig`.

    The configuration is stored in the checkpoint's hyper-parameters, so
    :meth:`HandMeshReconstructor.from_checkpoint`-style loading needs nothing else.
    """

    def __init__(self, config: TrainConfig | dict) -> None:
        super().__init__()
        if isinstance(config, dict):  # Lightning passes the saved hyper-parameters back as plain data
            config = config_from_dict(TrainConfig, config)
        self.config = config
        self.save_hyperparameters({"config": config_to_dict(config)})
        self.model = HandMeshReconstructor(config.model)
        # with optim.train_only, the parts that do not train run as at inference (eval mode): the
        # trained part learns from what they give then (norm statistics kept, no sampling noise)
        self._frozen_modules = freeze_all_but(self.model, config.optim.train_only) if config.optim.train_only else []
        self.prior = HandPrior.from_model(self.model.hand_model)
        self._validation: list[dict[str, torch.Tensor]] = []
        self._stage_order: list[str] = []  # the network's stages as it ran them, for validation

    # ------------------------------------------------------------------ training

    def train(self, mode: bool = True):
        super().train(mode)
        if mode:
            self._frozen_parts_as_at_inference()
        return self

    def on_train_batch_start(self, batch, batch_index) -> None:
        # Lightning restores each submodule's mode after validation without calling train()
        self._frozen_parts_as_at_inference()

    def _frozen_parts_as_at_inference(self) -> None:
        for module in self._frozen_modules:
            module.eval()

    def max_passes(self) -> int | None:
        """Loop passes trained now: all (end-to-end) or one more every few epochs (progressive)."""
        trainer_config, t_max = self.config.trainer, self.config.model.gate.max_passes
        if trainer_config.protocol == "end_to_end":
            return None
        return min(t_max, 1 + self.current_epoch // trainer_config.progressive_epochs)

    def _seed_step(self) -> None:
        """Seeds the Gumbel noise and anything else drawn from the global generator in this step."""
        torch.manual_seed((self.config.seed * 1_000_003 + self.global_step) * 1009 + self.global_rank)

    def training_step(self, batch, batch_index):
        self._seed_step()  # augmentation happened in the loader (meshrec.training.data)
        temperature = gumbel_temperature(self.global_step, self.config.model.keypoints)
        prediction = self.model(batch.image, batch.K, batch.side, max_passes=self.max_passes(), temperature=temperature)
        losses = hand_losses(
            prediction, batch, self.config.loss, step=self.global_step,
            joint_regressor=self.model.joint_regressor, mesh_levels=self.model.mesh_levels, faces=self.model.faces, prior=self.prior,
        )
        if not torch.isfinite(losses.total):
            bad = [f"{name}={value.item():g}" for name, value in losses.terms.items() if not torch.isfinite(value)]
            raise TrainingDivergedError(
                f"loss is {losses.total.item():g} at step {self.global_step} (epoch {self.current_epoch}); "
                f"non-finite terms: {', '.join(bad) or 'none (overflow in the sum)'}. The last good checkpoint "
                "is kept; lower optim.lr or raise trainer.gradient_clip, then --resume"
            )
        batch_size = len(batch)
        self.log("train/loss", losses.total, prog_bar=True, batch_size=batch_size)
        self.log_dict({f"train/{name}": value for name, value in losses.terms.items()}, batch_size=batch_size)
        self.log("train/passes", float(prediction.passes_used.float().mean()), batch_size=batch_size)
        return losses.total

    # ---------------------------------------------------------------- validation

    def validation_step(self, batch, batch_index):
        prediction = self.model(batch.image, batch.K, batch.side)
        has_mesh = batch.has_mesh
        record = {
            "has_mesh": has_mesh,
            "passes": prediction.passes_used.float(),
            "joints2d_error": _visible_pixel_error(prediction.joints2d, batch),
        }
        if prediction.keypoints2d is not None:
            record["keypoints2d_error"] = _visible_pixel_error(prediction.keypoints2d, batch)
        if bool(has_mesh.any()):
            record["gt_vertices"] = batch.vertices[has_mesh]
            record["gt_joints"] = batch.joints3d[has_mesh]
            regressor = self.model.joint_regressor
            max_passes = self.model.config.gate.max_passes if self.model.refiner is not None else None
            stages = prediction.stage_vertices(max_passes)
            self._stage_order = list(stages)
            for stage, vertices in stages.items():
                record[f"{stage}/vertices"] = vertices[has_mesh]
                record[f"{stage}/joints"] = regressor.to(vertices) @ vertices[has_mesh]
        self._validation.append({k: v.detach().cpu() for k, v in record.items()})

    def on_validation_epoch_end(self) -> None:
        records, self._validation = self._validation, []
        if not records:
            return
        keys = {key for record in records for key in record if key != "has_mesh"}
        gathered = {key: torch.cat([r[key] for r in records if key in r]) for key in sorted(keys)}
        gathered = {key: _gather_all(self, value) for key, value in gathered.items()}
        # joints2d_px: the final mesh's joints projected; keypoints2d_px: the keypoint head's own
        metrics = {"val/passes_mean": gathered["passes"].mean().item(), "val/joints2d_px": gathered["joints2d_error"].nanmean().item()}
        if "keypoints2d_error" in gathered:
            metrics["val/keypoints2d_px"] = gathered["keypoints2d_error"].nanmean().item()
        if "gt_vertices" in gathered:
            # the stages in the order the network ran them (never sorted: "global" < "coarse_to_fine"
            # and "pass_10" < "pass_2" alphabetically), so the final stage is the last one
            ordered = {stage: (gathered[f"{stage}/joints"], gathered[f"{stage}/vertices"]) for stage in self._stage_order}
            scores = stage_scores(ordered, gathered["gt_joints"], gathered["gt_vertices"])
            for stage, stage_score in scores.items():
                for name in ("pa_mpjpe_mm", "pa_mpvpe_mm", "f5", "f15", "mpjpe_mm"):
                    metrics[f"val/{stage}/{name}"] = stage_score[name]
            final = scores[final_stage(scores)]
            for name in ("pa_mpjpe_mm", "pa_mpvpe_mm", "f5", "f15", "auc_pa_joints", "mpjpe_mm", "rr_mpjpe_mm"):
                metrics[f"val/{name}"] = final[name]
        self.log_dict(metrics, sync_dist=False, rank_zero_only=False)

    # ----------------------------------------------------------------- optimiser

    def configure_optimizers(self):
        optim = self.config.optim
        decay, no_decay = [], []
        for name, parameter in self.model.named_parameters():
            if not parameter.requires_grad:
                continue
            # norms, biases and the joint-group logits are not weights to shrink
            (no_decay if parameter.ndim <= 1 or name.endswith("group_logits") else decay).append(parameter)
        optimizer = torch.optim.AdamW(
            [{"params": decay, "weight_decay": optim.weight_decay}, {"params": no_decay, "weight_decay": 0.0}], lr=optim.lr
        )
        total = max(1, int(self.trainer.estimated_stepping_batches))

        def factor(step: int) -> float:
            if step < optim.warmup_steps:
                return (step + 1) / optim.warmup_steps
            progress = min(1.0, (step - optim.warmup_steps) / max(1, total - optim.warmup_steps))
            return optim.min_lr_ratio + (1 - optim.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress))

        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}


def _within(name: str, part: str) -> bool:
    """Whether the parameter or module ``name`` is ``part`` or inside it (state-dict names)."""
    return name == part or name.startswith(part + ".")


def freeze_all_but(model: torch.nn.Module, parts: tuple[str, ...] | list[str]) -> list[torch.nn.Module]:
    """Freeze every parameter of ``model`` but those of ``parts`` (names as in its state dict: a
    parameter trains when its name is a part or starts with one and a dot). A part that names no
    parameter is an error listing the top-level names.

    Returns:
        the outermost modules wholly outside ``parts`` (neither in one nor holding one), which
        should run as at inference (``eval()`` reaches their submodules).
    """
    names = [name for name, _ in model.named_parameters()]
    unknown = [part for part in parts if not any(_within(name, part) for name in names)]
    if unknown:
        tops = sorted({name.split(".")[0] for name in names})
        raise MeshrecError(f"optim.train_only: {unknown} name no parameter of the model; names start with one of "
                           f"{tops}, e.g. {names[-1]!r}")
    for name, parameter in model.named_parameters():
        parameter.requires_grad_(any(_within(name, part) for part in parts))

    def holds_a_part(name: str) -> bool:
        return not name or any(_within(part, name) for part in parts)

    return [
        module for name, module in model.named_modules()
        if not holds_a_part(name) and not any(_within(name, part) for part in parts)
        and holds_a_part(name.rpartition(".")[0])
    ]


def _visible_pixel_error(joints2d: torch.Tensor, batch) -> torch.Tensor:
    """``(B,)`` mean pixel error over visible labelled keypoints (NaN for samples without any)."""
    visible = batch.joints2d_visible & batch.has_joints2d.unsqueeze(1)
    error = (joints2d - batch.joints2d).norm(dim=-1)
    count = visible.sum(1)
    return torch.where(count > 0, (error * visible).sum(1) / count.clamp(min=1), torch.full_like(count, float("nan"), dtype=error.dtype))


def _gather_all(module: L.LightningModule, tensor: torch.Tensor) -> torch.Tensor:
    """Concatenate a per-process tensor over DDP processes (identity in one process)."""
    if module.trainer.world_size == 1:
        return tensor
    # sizes may differ per rank: pad to the largest, gather, cut
    size = torch.tensor([tensor.shape[0]], device=module.device)
    sizes = module.all_gather(size).flatten().tolist()
    padded = torch.zeros((max(sizes), *tensor.shape[1:]), dtype=tensor.dtype, device=module.device)
    padded[: tensor.shape[0]] = tensor.to(module.device)
    everything = module.all_gather(padded)
    return torch.cat([everything[rank, :count] for rank, count in enumerate(sizes)]).cpu()
