"""Label files and the manifest that commits them: append, commit, restore after a killed run."""

from __future__ import annotations

import os
from pathlib import Path

from meshrec.data.synthetic.labels import LABEL_NAMES
from meshrec.data.synthetic.scene import GENERATOR_VERSIONS, HandSynthesizer
from meshrec.errors import MeshrecError


class SplitLabels:
    """One split's label files (JSON lists), appended to in place at each commit.

    ``sizes`` are the committed byte lengths (what the manifest records); entries staged
    since the last commit are held in memory.
    """

    def __init__(self, root: Path, split: str, count: int, sizes: dict[str, int] | None) -> None:
        from manolayer.io import write_bytes_atomic

        self.paths = {name: root / f"{split}_{name}.json" for name in LABEL_NAMES}
        self.count = count
        self.staged: dict[str, list[bytes]] = {name: [] for name in LABEL_NAMES}
        self.staged_count = 0
        if count == 0:
            for path in self.paths.values():
                write_bytes_atomic(path, b"[]")
            self.sizes = {name: 2 for name in LABEL_NAMES}
            return
        self.sizes = dict(sizes)
        for name, path in self.paths.items():
            _restore_committed(path, self.sizes[name])

    def stage(self, texts: dict[str, bytes], count: int) -> None:
        for name in LABEL_NAMES:
            self.staged[name].append(texts[name])
        self.staged_count += count

    def append_staged(self) -> None:
        if not self.staged_count:
            return
        for name, path in self.paths.items():
            # overwrite the closing ']' with the new entries and a new ']'
            text = (b"," if self.count else b"") + b",".join(self.staged[name]) + b"]"
            with open(path, "r+b") as handle:
                handle.seek(self.sizes[name] - 1)
                handle.write(text)
            self.sizes[name] += len(text) - 1
            self.staged[name] = []
        self.count += self.staged_count
        self.staged_count = 0


def _restore_committed(path: Path, size: int) -> None:
    """Cut a label file back to its committed ``size`` bytes ending in ``]`` (undoes an append
    that a killed run left unfinished or uncommitted)."""
    try:
        actual = path.stat().st_size
        with open(path, "rb") as handle:
            first = handle.read(1)
            handle.seek(size - 1)
            last = handle.read(1)
    except OSError as error:
        raise MeshrecError(f"{path}: cannot read labels to resume ({error}); use a new folder") from None
    if actual < size or first != b"[":
        raise MeshrecError(
            f"{path}: {actual} bytes, but manifest.json committed {size} bytes of a JSON list; "
            "the labels were changed by something else, use a new folder"
        )
    if actual == size and last == b"]":
        return
    with open(path, "r+b") as handle:
        handle.truncate(size)
        handle.seek(size - 1)
        handle.write(b"]")
        handle.flush()
        os.fsync(handle.fileno())


def manifest_record(
    synthesizer: HandSynthesizer,
    eval_fraction: float,
    counts: dict[str, int],
    backgrounds,
    label_bytes: dict[str, dict[str, int]] | None = None,
) -> dict:
    record = {
        "generator": "meshrec.data.synthetic",
        "generator_version": GENERATOR_VERSIONS[synthesizer.style],
        "seed": synthesizer.seed,
        "image_size": synthesizer.size,
        "eval_fraction": eval_fraction,
        "model_content_hash": synthesizer.model_hash,
        "backgrounds": None if backgrounds is None else str(Path(backgrounds).resolve()),
        "num_background_images": len(synthesizer.background_images),
        "counts": counts,
        "side_files": {split: f"{split}_side.json" for split in counts},
        # what a resumed run trusts: every label file's committed length
        "label_bytes": label_bytes or {},
    }
    if synthesizer.style != DEFAULT_STYLE:
        # a flat set's manifest stays byte for byte what it was before styles existed
        record["style"] = synthesizer.style
    return record


DEFAULT_STYLE = "flat"  # what a manifest without a "style" entry was made with


def recorded_setting(manifest: dict, key: str):
    """``manifest[key]`` as a resumed run compares it (a missing ``style`` is the flat style)."""
    if key == "style":
        return manifest.get(key, DEFAULT_STYLE)
    return manifest.get(key)


# settings a resumed run must share with the first run (the same samples need the same settings)
FIXED_SETTINGS = ("style", "generator_version", "seed", "image_size", "eval_fraction", "model_content_hash", "num_background_images")


def committed_state(manifest: dict, split: str, manifest_path: Path) -> tuple[int, dict[str, int] | None]:
    """``(count, label file sizes)`` of ``split`` that ``manifest`` commits."""
    count = manifest.get("counts", {}).get(split, 0)
    sizes = manifest.get("label_bytes", {}).get(split)
    if not isinstance(count, int) or count < 0:
        raise MeshrecError(
            f"{manifest_path}: counts.{split} must be a non-negative int, got {count!r}; use a new folder"
        )
    sizes_ok = isinstance(sizes, dict) and all(
        isinstance(sizes.get(name), int) and sizes[name] >= 2 for name in LABEL_NAMES
    )
    if count and not sizes_ok:
        raise MeshrecError(f"{manifest_path}: no label_bytes for the {count} {split} samples; use a new folder")
    return count, sizes
