"""The one-command demo: weak labels pay off on a domain the bundled model has not seen.

``meshrec demo`` (the README's first command, ``make demo``) needs no file from anywhere but the
package itself:

1. renders a **shifted** synthetic domain in the FreiHAND layout (``out/data``; reused when
   present): the photo style (:mod:`meshrec.data.synthetic.photo`: skin tones, a key light with
   shading, cluttered backgrounds, forearms and sleeves, occluders, camera blur, JPEG), which the
   bundled ``synthetic-hands`` model never saw (it was trained on the flat style only);
2. scores the bundled model on the domain's held-out split (``before``), with the mean-hand
   baseline;
3. fine-tunes the bundled model on the domain's training split with ``configs/demo.yaml``, once per
   label kind in :data:`LABEL_KINDS` from the same start for the same steps: 2D keypoints only,
   sparse 3D keypoints, full meshes (``out/finetune_<kind>``; a folder already holding a run is
   left alone and the next free ``out/finetune_<kind>_N`` is used);
4. scores each run at its last step and says how much of full-mesh fine-tuning's gain each weak
   label recovers (``out/metrics.md``, ``out/metrics.json``);
5. writes predictions of the 2D-only model for a few held-out images: OBJ meshes, JSON, and
   overlays before | after (``out/predictions``).
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from manolayer.io import write_bytes_atomic
from meshrec.errors import MeshrecError

CONFIG = Path(__file__).resolve().parents[1] / "configs" / "demo.yaml"
DEMO_JSON_FORMAT = "meshrec.demo/1"
DOMAIN_STYLE = "photo"
# label kind -> what the run's table row calls it; the order the runs go in
LABEL_KINDS: dict[str, str] = {
    "joints2d": "2D keypoints only",
    "joints3d": "sparse 3D keypoints",
    "full": "full meshes",
}
BEFORE = "before (bundled model)"
SCORE_KEYS = ("pa_mpvpe_mm", "pa_mpjpe_mm", "f5", "f15", "joints2d_px")


@dataclass
class DemoSettings:
    """Attributes:
        out: the demo folder.
        num_samples: synthetic samples of the shifted domain (both splits; 10 % held out).
        steps: fine-tuning steps of each run (batch 32).
        minutes: wall-clock cap of each run (a busy machine stops it early: the scores say so).
        predictions: how many held-out images get a mesh and an overlay.
        seed: of the data and the training.
        progress: progress bars.
    """

    out: Path = Path("runs/demo")
    num_samples: int = 4000
    steps: int = 150
    minutes: float = 5.0
    predictions: int = 8
    seed: int = 0
    progress: bool = True


@dataclass
class DemoRun:
    """One fine-tuning run: its label kind, checkpoint, steps done and scores of its final stage."""

    kind: str
    checkpoint: Path
    steps: int
    scores: dict[str, float]


@dataclass
class DemoSummary:
    """Attributes:
        before, mean_hand: final-stage scores of the bundled model and of the mean-hand baseline.
        runs: the fine-tuning runs, in :data:`LABEL_KINDS` order.
        recovered: label kind -> its PA-MPVPE gain over ``before`` as a share of the full run's
            (nan when full fine-tuning gained nothing).
    """

    out: Path
    metrics_table: str
    before: dict[str, float]
    mean_hand: dict[str, float]
    runs: list[DemoRun]
    recovered: dict[str, float]
    prediction_files: list[Path]
    minutes: dict[str, float] = field(default_factory=dict)


def run_demo(settings: DemoSettings = DemoSettings()) -> DemoSummary:
    from meshrec.data.synthetic import write_synthetic_dataset
    from meshrec.models.reconstructor import HandMeshReconstructor

    if not CONFIG.exists():
        raise MeshrecError(f"the demo reads {CONFIG}; run it from a source checkout (pip install -e .)")
    if settings.steps < 1 or not settings.minutes > 0 or settings.num_samples < 20:
        raise MeshrecError(
            f"the demo needs steps >= 1, minutes > 0 and num_samples >= 20; got {settings.steps}, "
            f"{settings.minutes}, {settings.num_samples}"
        )
    out = Path(settings.out)
    minutes: dict[str, float] = {}

    start = time.perf_counter()
    data = out / "data"
    write_synthetic_dataset(
        data, settings.num_samples, size=128, seed=settings.seed, style=DOMAIN_STYLE, progress=settings.progress
    )
    minutes["data"] = (time.perf_counter() - start) / 60

    start = time.perf_counter()
    bundled = HandMeshReconstructor.load(None)
    before_result = _score(bundled, data, "bundled synthetic-hands", settings.progress)
    before = _final(before_result)
    mean_hand = next(iter(before_result.baseline.values()))
    minutes["evaluate"] = (time.perf_counter() - start) / 60

    runs, tuned = [], {}
    for kind in LABEL_KINDS:
        start = time.perf_counter()
        result = _fine_tune(kind, data, out, settings)
        model = tuned[kind] = HandMeshReconstructor.load(result.last_checkpoint)
        minutes[f"train {kind}"] = (time.perf_counter() - start) / 60
        start = time.perf_counter()
        scores = _final(_score(model, data, str(result.last_checkpoint), settings.progress))
        minutes["evaluate"] += (time.perf_counter() - start) / 60
        runs.append(DemoRun(kind, result.last_checkpoint, result.global_step, scores))

    recovered = recovered_shares(before, runs)
    table = format_demo_table(before, mean_hand, runs, recovered, settings)
    write_bytes_atomic(out / "metrics.md", (table + "\n").encode())
    document = {
        "format": DEMO_JSON_FORMAT,
        "domain": {"data": str(data), "style": DOMAIN_STYLE, "num_samples": settings.num_samples, "seed": settings.seed},
        "mean_hand": _finite_or_none(mean_hand),
        "before": _finite_or_none(before),
        "runs": [{"labels": r.kind, "checkpoint": str(r.checkpoint), "steps": r.steps, "scores": _finite_or_none(r.scores)}
                 for r in runs],
        "recovered_share_of_full_gain": _finite_or_none(recovered),
        "units": {"*_mm": "millimetres after Procrustes alignment", "f5, f15": "fraction in [0, 1]", "joints2d_px": "pixels at 128 x 128"},
    }
    write_bytes_atomic(out / "metrics.json", (json.dumps(document, indent=1, allow_nan=False) + "\n").encode())

    files = write_predictions(bundled, tuned["joints2d"], data, out / "predictions", settings.predictions)
    return DemoSummary(out, table, before, mean_hand, runs, recovered, files, minutes)


def recovered_shares(before: dict[str, float], runs: list[DemoRun]) -> dict[str, float]:
    """Each run's PA-MPVPE gain over ``before`` as a share of the full-mesh run's gain."""
    full = next((r for r in runs if r.kind == "full"), None)
    full_gain = before["pa_mpvpe_mm"] - full.scores["pa_mpvpe_mm"] if full else float("nan")
    return {
        r.kind: (before["pa_mpvpe_mm"] - r.scores["pa_mpvpe_mm"]) / full_gain if full_gain > 0 else float("nan")
        for r in runs
    }


def format_demo_table(before, mean_hand, runs: list[DemoRun], recovered, settings: DemoSettings) -> str:
    """The demo's result as a Markdown table (final stage; PA- errors in mm, 2D in px)."""
    lines = [
        f"Shifted domain: {settings.num_samples} synthetic hands in the {DOMAIN_STYLE!r} style (seed {settings.seed}), "
        "scored on its held-out split; each fine-tuning run starts from the bundled model.",
        "",
        "| model | steps | PA-MPVPE | PA-MPJPE | F@5 | F@15 | 2D px | share of full's gain |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]

    def cell(scores, key):
        value = scores.get(key, float("nan"))
        return "-" if np.isnan(value) else f"{value:.2f}" if key.endswith(("mm", "px")) else f"{value:.3f}"

    def row(name, steps, scores, share=""):
        return f"| {name} | {steps} | " + " | ".join(cell(scores, key) for key in SCORE_KEYS) + f" | {share} |"

    lines.append(row("mean hand", "-", mean_hand))
    lines.append(row(BEFORE, "-", before))
    for run in runs:
        share = recovered[run.kind]
        lines.append(row(f"fine-tuned: {LABEL_KINDS[run.kind]}", run.steps, run.scores,
                         "-" if np.isnan(share) else f"{100 * share:.0f} %"))
    short = [LABEL_KINDS[run.kind] for run in runs if run.steps < settings.steps]
    if short:
        lines += ["", f"Stopped by the {settings.minutes:g}-minute cap before {settings.steps} steps (a busy machine?): "
                  f"{', '.join(short)}; the runs are not comparable step for step."]
    return "\n".join(lines)


def write_predictions(before_model, after_model, data: Path, folder: Path, count: int) -> list[Path]:
    """OBJ and JSON of ``after_model``, and overlays image | before | after, for ``count`` held-out images."""
    from meshrec.data.freihand import FreiHandDataset
    from meshrec.data.sample import collate_hand_samples
    from meshrec.export import save_mesh, save_prediction_json
    from meshrec.inference import png_bytes
    from meshrec.viz import overlay_mesh

    dataset = FreiHandDataset(data, "evaluation", crop_size=after_model.config.image_size)
    batch = collate_hand_samples([dataset[i] for i in range(min(count, len(dataset)))])
    before = before_model.predict(batch.image, batch.K, batch.side)
    after = after_model.predict(batch.image, batch.K, batch.side)
    folder.mkdir(parents=True, exist_ok=True)
    files = []
    for i in range(len(batch)):
        stem = folder / f"{int(batch.index[i]):08d}"
        files.append(save_mesh(stem.with_suffix(".obj"), mesh=after.to_trimesh(i, with_uncertainty=False)))
        files.append(save_prediction_json(stem.with_suffix(".json"), after, i))
        image = (batch.image[i].permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
        panels = [image] + [
            overlay_mesh(image, prediction.vertices[i], prediction.faces_of(i), prediction.K[i]) for prediction in (before, after)
        ]
        png = Path(f"{stem}_overlay.png")
        write_bytes_atomic(png, png_bytes(np.concatenate(panels, axis=1)))
        files.append(png)
    return files


def _fine_tune(kind: str, data: Path, out: Path, settings: DemoSettings):
    from meshrec.config import load_config
    from meshrec.training.config import TrainConfig
    from meshrec.training.run import train

    config = load_config(
        TrainConfig,
        CONFIG,
        [f"run_dir={_free_run_dir(out, f'finetune_{kind}')}", f"data.root={data}", f"data.supervision={kind}",
         f"seed={settings.seed}", f"trainer.max_steps={settings.steps}", f"trainer.max_minutes={settings.minutes}",
         f"trainer.progress_bar={str(settings.progress).lower()}", "trainer.accelerator=auto"],
    )
    return train(config)


def _score(model, data: Path, checkpoint: str, progress: bool):
    from meshrec.evaluate import evaluate

    return evaluate(model, data, "evaluation", progress=progress, checkpoint=checkpoint)


def _final(result) -> dict[str, float]:
    from meshrec.metrics import final_stage

    scores = result.stages[final_stage(result.stages)]
    return {key: float(scores[key]) for key in SCORE_KEYS}


def _finite_or_none(values: dict[str, float]) -> dict[str, float | None]:
    """JSON has no NaN: a score that does not exist (the mean hand's 2D error) is null."""
    return {key: (float(value) if np.isfinite(value) else None) for key, value in values.items()}


def _free_run_dir(out: Path, name: str) -> Path:
    """``out/name``, or the first ``out/name_N`` that does not hold a run yet."""
    candidate, number = out / name, 2
    while (candidate / "checkpoints" / "last.ckpt").exists():
        candidate, number = out / f"{name}_{number}", number + 1
    return candidate
