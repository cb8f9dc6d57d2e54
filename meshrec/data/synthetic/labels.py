"""Label text: a chunk's labels as JSON list entries, formatted by numpy a whole chunk at once
(``json.dumps`` per sample was a third of the writer's time)."""

from __future__ import annotations

import functools
import json
from collections.abc import Sequence

import numpy as np

from meshrec.data.synthetic.scene import SynthBatch
from meshrec.errors import MeshrecError

LABEL_DECIMALS = 6  # micrometres / 1e-6 rad: below any label's accuracy, keeps the JSON short


def _word_table(texts: Sequence[str]) -> np.ndarray:
    """``(len(texts),)`` uint32 whose bytes are the 4-character ``texts``."""
    return np.frombuffer("".join(texts).encode("ascii"), dtype=np.uint32)


# A label value below 1000 in magnitude is written as 12 characters, three 4-byte words:
# sign and whole part ("-  5"), "." and three decimals (".123"), three decimals and a blank
# ("456 "). Blanks are removed from the finished text (JSON needs no padding).
_SIGN_AND_WHOLE = _word_table([f"{sign}{whole:3d}" for sign in " -" for whole in range(1000)])
_POINT_AND_DIGITS = _word_table([f".{digits:03d}" for digits in range(1000)])
_DIGITS_AND_BLANK = _word_table([f"{digits:03d} " for digits in range(1000)])
_FIELD_WIDTH = 12
_FAST_LABEL_LIMIT = 999.0  # larger magnitudes (intrinsics of images above ~400 px) go through json.dumps


@functools.lru_cache(maxsize=32)
def _entry_layout(entry_shape: tuple[int, ...]) -> tuple[np.ndarray, tuple[int, ...]]:
    """The JSON text of one entry of ``entry_shape`` with blank numbers, then a ``,``, as
    uint8, and the byte strides between its numbers along each axis (the first number
    starts after the ``len(entry_shape)`` opening brackets)."""

    def nested(shape: tuple[int, ...]) -> str:
        if not shape:
            return " " * _FIELD_WIDTH
        return "[" + ",".join([nested(shape[1:])] * shape[0]) + "]"

    strides = tuple(len(nested(entry_shape[axis + 1 :])) + 1 for axis in range(len(entry_shape)))
    return np.frombuffer((nested(entry_shape) + ",").encode("ascii"), np.uint8), strides


def _json_entries(values: np.ndarray) -> bytes:
    """``(B, *entry_shape)`` numbers as B JSON entries (nested lists) joined by commas.

    Each number is rounded to ``LABEL_DECIMALS`` decimals exactly as ``np.round`` does and
    written with that many decimals, so ``json.loads`` gives back the same doubles as
    ``json.dumps(np.round(entry, LABEL_DECIMALS).tolist())`` (``-0.0`` included); the
    digits come from lookup tables for a whole chunk at once.

    Raises:
        MeshrecError: a value is not finite.
    """
    values = np.asarray(values, dtype=np.float64)
    scale = 10.0**LABEL_DECIMALS
    scaled = np.rint(values * scale)  # np.round's own steps: multiply, rint, divide
    if not np.isfinite(scaled).all():
        raise MeshrecError(f"labels must be finite, got {values[~np.isfinite(scaled)][:3].tolist()}")
    if values.size == 0 or np.abs(values).max() >= _FAST_LABEL_LIMIT:
        return ",".join(json.dumps(entry.tolist(), separators=(",", ":")) for entry in scaled / scale).encode()
    batch, entry_shape = values.shape[0], values.shape[1:]
    negative = np.signbit(scaled / scale).ravel()  # a value that rounds to -0.0 keeps its sign
    whole, fraction = np.divmod(np.abs(scaled).astype(np.int64).ravel(), 1_000_000)
    high, low = np.divmod(fraction, 1000)
    words = np.empty((whole.size, 3), np.uint32)
    np.take(_SIGN_AND_WHOLE, whole + 1000 * negative, out=words[:, 0])
    np.take(_POINT_AND_DIGITS, high, out=words[:, 1])
    np.take(_DIGITS_AND_BLANK, low, out=words[:, 2])
    template, strides = _entry_layout(entry_shape)
    text = np.empty((batch, template.size), np.uint8)
    text[:] = template
    # the numbers' places in the text form a regular grid: write them through a strided view
    places = np.lib.stride_tricks.as_strided(
        text[:, len(entry_shape) :],
        shape=(batch, *entry_shape, _FIELD_WIDTH),
        strides=(template.size, *strides, 1),
        writeable=True,
    )
    places[...] = words.view(np.uint8).reshape(batch, *entry_shape, _FIELD_WIDTH)
    return text.tobytes()[:-1].translate(None, b" ")


LABEL_NAMES = ("K", "xyz", "verts", "mano", "side")


def label_texts(batch: SynthBatch) -> dict[str, bytes]:
    """The chunk's entries of each label file, comma-joined JSON (FreiHAND keeps mano as [[61]])."""
    return {
        "K": _json_entries(batch.K),
        "xyz": _json_entries(batch.joints),
        "verts": _json_entries(batch.vertices),
        "mano": _json_entries(batch.mano[:, None]),
        "side": ",".join(json.dumps(side) for side in batch.sides).encode(),
    }
