"""Synthetic hand images with full labels (a package; the code is in ``scene`` for now)."""

from meshrec.data.synthetic.scene import (
    GENERATOR_VERSION,
    SPLIT_CODES,
    HandSynthesizer,
    SynthBatch,
    SynthSummary,
    SyntheticHandDataset,
    make_background,
    split_counts,
    write_synthetic_dataset,
)

__all__ = [
    "GENERATOR_VERSION",
    "SPLIT_CODES",
    "SynthBatch",
    "HandSynthesizer",
    "SynthSummary",
    "split_counts",
    "write_synthetic_dataset",
    "SyntheticHandDataset",
    "make_background",
]
