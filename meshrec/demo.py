"""The one-command demo: synthetic data -> mixed-supervision training -> evaluation -> meshes.

``meshrec demo`` (the README's first command, ``make demo``) needs no file from anywhere but the
package itself (the config starts from the bundled ``synthetic-hands`` weights):

1. renders a synthetic hand set in the FreiHAND layout (``out/data``; reused when present);
2. trains ``configs/synthetic_mixed.yaml`` (30 % full labels, 70 % 2D keypoints only) for a fixed
   number of minutes on the CPU (``out/train``; a folder already holding a run is left alone
   and the next free ``out/train_N`` is used);
3. evaluates the best checkpoint on the held-out split with the FreiHAND protocol, next to a
   mean-hand baseline (``out/metrics.json``, ``out/metrics.md``);
4. writes a few predictions: OBJ meshes, overlays and their JSON (``out/predictions``).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from manolayer.io import write_bytes_atomic
from meshrec.errors import MeshrecError

CONFIG = Path(__file__).resolve().parents[1] / "configs" / "synthetic_mixed.yaml"


@dataclass
class DemoSettings:
    """Attributes:
        out: the demo folder.
        num_samples: synthetic samples (both splits; 10 % held out).
        train_minutes: training budget.
        predictions: how many held-out images get a mesh and an overlay.
        seed: of the data and the training.
        progress: progress bars.
    """

    out: Path = Path("runs/demo")
    num_samples: int = 6000
    train_minutes: float = 9.0
    predictions: int = 8
    seed: int = 0
    progress: bool = True


@dataclass
class DemoSummary:
    out: Path
    checkpoint: Path
    metrics_table: str
    model_pa_mpvpe_mm: float
    baseline_pa_mpvpe_mm: float
    prediction_files: list[Path]
    minutes: dict[str, float]


def run_demo(settings: DemoSettings = DemoSettings()) -> DemoSummary:
    from meshrec.config import load_config
    from meshrec.data.synthetic import write_synthetic_dataset
    from meshrec.evaluate import evaluate, format_table, save_scores_json
    from meshrec.models.reconstructor import HandMeshReconstructor
    from meshrec.training.config import TrainConfig
    from meshrec.training.run import train

    if not CONFIG.exists():
        raise MeshrecError(f"the demo reads {CONFIG}; run it from a source checkout (pip install -e .)")
    out = Path(settings.out)
    minutes: dict[str, float] = {}

    start = time.perf_counter()
    data = out / "data"
    write_synthetic_dataset(data, settings.num_samples, size=128, seed=settings.seed, progress=settings.progress)
    minutes["data"] = (time.perf_counter() - start) / 60

    start = time.perf_counter()
    run_dir = _free_run_dir(out)
    config = load_config(
        TrainConfig,
        CONFIG,
        [f"run_dir={run_dir}", f"data.root={data}", f"seed={settings.seed}", "trainer.max_epochs=1000",
         f"trainer.max_minutes={settings.train_minutes}", f"trainer.progress_bar={str(settings.progress).lower()}",
         "trainer.accelerator=auto", "data.num_workers=1"],
    )
    result = train(config)
    minutes["train"] = (time.perf_counter() - start) / 60
    checkpoint = result.best_checkpoint or result.last_checkpoint

    start = time.perf_counter()
    model = HandMeshReconstructor.from_checkpoint(checkpoint)
    scores = evaluate(model, data, "evaluation", progress=settings.progress, checkpoint=str(checkpoint))
    table = format_table(scores)
    save_scores_json(out / "metrics.json", scores)
    write_bytes_atomic(out / "metrics.md", (table + "\n").encode())
    minutes["evaluate"] = (time.perf_counter() - start) / 60

    files = write_predictions(model, data, out / "predictions", settings.predictions)
    final = scores.stages[list(scores.stages)[-1]]
    baseline = next(iter(scores.baseline.values()))
    return DemoSummary(
        out=out, checkpoint=checkpoint, metrics_table=table, model_pa_mpvpe_mm=final["pa_mpvpe_mm"],
        baseline_pa_mpvpe_mm=baseline["pa_mpvpe_mm"], prediction_files=files, minutes=minutes,
    )


def write_predictions(model, data: Path, folder: Path, count: int) -> list[Path]:
    """OBJ, overlay PNG and JSON for the first ``count`` held-out images."""
    from meshrec.data.freihand import FreiHandDataset
    from meshrec.data.sample import collate_hand_samples
    from meshrec.export import save_mesh, save_prediction_json
    from meshrec.inference import png_bytes
    from meshrec.viz import overlay_mesh

    dataset = FreiHandDataset(data, "evaluation", crop_size=model.config.image_size)
    batch = collate_hand_samples([dataset[i] for i in range(min(count, len(dataset)))])
    prediction = model.predict(batch.image, batch.K, batch.side)
    folder.mkdir(parents=True, exist_ok=True)
    files = []
    for i in range(len(batch)):
        stem = folder / f"{int(batch.index[i]):08d}"
        files.append(save_mesh(stem.with_suffix(".obj"), mesh=prediction.to_trimesh(i, with_uncertainty=False)))
        files.append(save_prediction_json(stem.with_suffix(".json"), prediction, i))
        image = (batch.image[i].permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
        overlay = overlay_mesh(image, prediction.vertices[i], prediction.faces_of(i), prediction.K[i])
        png = Path(f"{stem}_overlay.png")
        write_bytes_atomic(png, png_bytes(np.concatenate([image, overlay], axis=1)))
        files.append(png)
    return files


def _free_run_dir(out: Path) -> Path:
    """``out/train``, or the first ``out/train_N`` that does not hold a run yet."""
    candidate, number = out / "train", 2
    while (candidate / "checkpoints" / "last.ckpt").exists():
        candidate, number = out / f"train_{number}", number + 1
    return candidate
