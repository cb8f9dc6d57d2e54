"""Writing the FreiHAND layout: :func:`write_synthetic_dataset`, resumable and deterministic."""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path

from meshrec.data.synthetic.images import remove_uncommitted_images
from meshrec.data.synthetic.interrupts import signals_deferred, sigterm_stops_the_run
from meshrec.data.synthetic.labels import LABEL_NAMES
from meshrec.data.synthetic.manifest import FIXED_SETTINGS, committed_state, manifest_record, recorded_setting, SplitLabels
from meshrec.data.synthetic.pool import WorkerSettings, chunk_results
from meshrec.data.synthetic.scene import HandSynthesizer
from meshrec.data.synthetic.timing import PhaseClock
from meshrec.errors import MeshrecError

DEFAULT_BATCH_SIZE = 64
DEFAULT_FLUSH_EVERY = 1024  # samples between commits of the label files


@dataclass(frozen=True)
class SynthSummary:
    """What :func:`write_synthetic_dataset` did.

    Attributes:
        root: the data set folder.
        counts: samples per split now present.
        rendered: samples rendered by this call.
        seconds: wall seconds per phase, summed over the worker processes (``sample``,
            ``pose``, ``shade``, ``render``, ``background``, ``composite``, ``images``
            (encode and write), ``labels`` (format)) and in this process (``commit``:
            append the labels, sync, write the manifest).
        cpu_seconds: the same phases' CPU seconds (what they cost the machine; wall
            seconds also count waiting for the disk and for cores other jobs hold).
    """

    root: Path
    counts: dict[str, int]
    rendered: int
    seconds: dict[str, float] = field(default_factory=dict)
    cpu_seconds: dict[str, float] = field(default_factory=dict)


def split_counts(num: int, eval_fraction: float) -> dict[str, int]:
    """``{'training': n_train, 'evaluation': n_eval}`` with ``n_eval = round(num * eval_fraction)``."""
    evaluation = int(math.floor(num * eval_fraction + 0.5))
    return {"training": num - evaluation, "evaluation": evaluation}


def _absolute(path: str | os.PathLike | None) -> Path | None:
    return None if path is None else Path(os.path.abspath(path))


def write_synthetic_dataset(
    root: str | os.PathLike,
    num: int,
    *,
    size: int = 128,
    seed: int = 0,
    eval_fraction: float = 0.1,
    backgrounds: str | os.PathLike | None = None,
    model=None,
    batch_size: int = DEFAULT_BATCH_SIZE,
    flush_every: int = DEFAULT_FLUSH_EVERY,
    progress: bool = True,
    workers: int = 2,
    style: str = "flat",
) -> SynthSummary:
    """Write (or extend) a synthetic data set of ``num`` samples in the FreiHAND layout under ``root``.

    The first ``num - round(num * eval_fraction)`` samples go to ``training``, the rest to
    ``evaluation``. Samples already present (committed by ``manifest.json``) are kept; only
    missing ones are rendered, so re-running with a larger ``num`` extends the set and an
    interrupted run resumes. Chunks of ``batch_size`` samples are rendered by up to
    ``workers`` worker processes (1: in this process, with torch single-threaded meanwhile);
    this process appends their labels to the label files every ``flush_every`` samples and
    at the end, syncs the disks, then commits the new counts and file lengths in the
    manifest. The files do not depend on ``workers``. ``style``: ``'flat'`` or ``'photo'``
    (see :class:`HandSynthesizer`); recorded in the manifest (only when not flat, so flat
    sets are what they were before styles existed), and a set is extended in its own style.

    Workers are started with the ``spawn`` method (fresh interpreters that load the hand
    model and open their GL context themselves), so the writer is safe to call from any
    host process, a Jupyter kernel or one with busy threads included; starting them takes a
    second or two. As with any spawned process, a script that calls this with
    ``workers > 1`` must do so under ``if __name__ == '__main__':``. Ctrl-C or SIGTERM wait for a commit in progress; after an interruption the
    data set holds exactly the committed samples (a killed run's leftovers are removed by
    the next run).

    Raises:
        MeshrecError: bad arguments, or ``root`` holds a data set made with other settings
            (style, seed, size, eval_fraction, model, generator version) or with more samples, or
            label files without a manifest, or a worker process died or could not start.
    """
    from tqdm import tqdm

    from manolayer.io import write_bytes_atomic

    if isinstance(num, bool) or not isinstance(num, int) or num < 1:
        raise MeshrecError(f"num must be a positive int, got {num!r}")
    if not isinstance(eval_fraction, (int, float)) or not 0.0 <= eval_fraction < 1.0:
        raise MeshrecError(f"eval_fraction must be in [0, 1), got {eval_fraction!r}")
    for name, value in (("batch_size", batch_size), ("flush_every", flush_every), ("workers", workers)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise MeshrecError(f"{name} must be a positive int, got {value!r}")
    root = Path(root)
    if root.exists() and not root.is_dir():
        raise MeshrecError(f"out must be a folder, got {str(root)!r} (a file)")
    synthesizer = HandSynthesizer(size=size, seed=seed, model=model, backgrounds=backgrounds, style=style)
    targets = split_counts(num, float(eval_fraction))
    manifest_path = root / "manifest.json"
    previous: dict = {}
    if manifest_path.is_file():
        try:
            previous = json.loads(manifest_path.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError) as error:
            raise MeshrecError(f"{manifest_path}: cannot read ({error}); use a new folder") from None
        wanted = manifest_record(synthesizer, float(eval_fraction), targets, backgrounds)
        for key in FIXED_SETTINGS:
            if recorded_setting(previous, key) != recorded_setting(wanted, key):
                raise MeshrecError(
                    f"{root} was made with {key}={recorded_setting(previous, key)!r} but this run has "
                    f"{key}={recorded_setting(wanted, key)!r}; "
                    "use the same settings to extend it, or a new folder"
                )
    else:
        foreign = [f"{split}_K.json" for split in targets if (root / f"{split}_K.json").exists()]
        if foreign:
            raise MeshrecError(
                f"{root} holds {foreign[0]} but no manifest.json: not a data set this writer made; use a new folder"
            )
    committed = {split: committed_state(previous, split, manifest_path) for split in targets}
    for split, target in targets.items():
        if committed[split][0] > target:
            raise MeshrecError(
                f"{root} already has {committed[split][0]} {split} samples, more than the {target} that "
                f"num={num} gives; use a larger num or a new folder"
            )

    root.mkdir(parents=True, exist_ok=True)
    for split in targets:
        (root / split / "rgb").mkdir(parents=True, exist_ok=True)
        (root / split / "mask").mkdir(parents=True, exist_ok=True)
    if not previous:
        # the manifest first: label files without one would read as someone else's folder
        empty = {split: {name: 2 for name in LABEL_NAMES} for split in targets}
        start = manifest_record(synthesizer, float(eval_fraction), {split: 0 for split in targets}, backgrounds, empty)
        write_bytes_atomic(manifest_path, (json.dumps(start, indent=2) + "\n").encode())
    labels = {split: SplitLabels(root, split, *committed[split]) for split in targets}
    clock = PhaseClock()

    def commit() -> None:
        clock.restart()
        with signals_deferred():
            for split_labels in labels.values():
                split_labels.append_staged()
            if hasattr(os, "sync"):
                # the workers' images and the appended labels reach the disk before the manifest
                # names them (one sync: an fsync per image cost more than rendering it)
                os.sync()
            counts = {split: labels[split].count for split in targets}
            sizes = {split: dict(labels[split].sizes) for split in targets}
            manifest = manifest_record(synthesizer, float(eval_fraction), counts, backgrounds, sizes)
            write_bytes_atomic(manifest_path, (json.dumps(manifest, indent=2) + "\n").encode())
        clock.lap("commit")

    tasks = [
        (split, list(range(start, min(start + batch_size, target))))
        for split, target in targets.items()
        for start in range(labels[split].count, target, batch_size)
    ]
    total = sum(len(indices) for _, indices in tasks)
    settings = WorkerSettings(
        size=size,
        seed=seed,
        style=style,
        # absolute paths (not resolved: a model's file name may declare its side), so that
        # workers find the same files whatever the current folder is when they start
        model=_absolute(model) if isinstance(model, (str, os.PathLike)) else model,
        backgrounds=_absolute(backgrounds),
        model_hash=synthesizer.model_hash,
        num_background_images=len(synthesizer.background_images),
        root=_absolute(root),
        parent=os.getpid(),
    )
    since_commit = 0
    try:
        for split in targets:
            remove_uncommitted_images(root, split, labels[split].count)
        with sigterm_stops_the_run(), chunk_results(synthesizer, tasks, workers, settings) as results, tqdm(
            total=total, unit="img", desc="synth", disable=not progress
        ) as bar:
            for result in results:
                labels[result.split].stage(result.texts, result.count)
                clock.add(result.seconds, result.cpu_seconds)
                since_commit += result.count
                bar.update(result.count)
                if since_commit >= flush_every:
                    commit()
                    since_commit = 0
        commit()
    finally:
        # images of samples no commit names (an error or Ctrl-C stopped the run) are removed
        for split in targets:
            remove_uncommitted_images(root, split, labels[split].count)
    return SynthSummary(
        root=root,
        counts={split: labels[split].count for split in targets},
        rendered=total,
        seconds=clock.seconds,
        cpu_seconds=clock.cpu_seconds,
    )
