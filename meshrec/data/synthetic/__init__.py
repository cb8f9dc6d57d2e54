"""Synthetic hand images with full labels: a writer of the FreiHAND layout and an on-the-fly dataset.

Each sample is a MANO-format hand (both sides) in a pose from ``manolayer``'s anatomical
sampler (``mode='mixture'``), with random shape (the model's non-zero shape components in
``[-2, 2]``), a uniformly random global rotation, a random focal length and a camera
distance that makes the hand fill roughly 60-100 % of the crop (shifted so some hands are
cut by the border), random lighting and skin tone, over a random background (blurred
noise, gradients, sums of sinusoids, or crops of user images). The composite is
``mask * render + (1 - mask) * background`` plus mild sensor noise. That is the default
``style='flat'``; ``style='photo'`` adds a forearm or sleeve, blotchy skin, cluttered scene
backgrounds, occluders (left out of the mask), camera blur and a JPEG quality per image, with
the same labels (module ``photo``).

Every random number of sample ``i`` of a split comes from ``(seed, split, i)`` alone, so a
sample does not depend on batching, on how many samples are made, on the number of worker
processes, or on resuming: labels are identical to the bit, an image or mask may differ in
an edge pixel (float32 rounding depends on where in a render batch the hand is drawn).

:func:`write_synthetic_dataset` writes what :class:`~meshrec.data.freihand.FreiHandDataset`
reads (one colour version), plus ``S_side.json`` (``'right'``/``'left'`` per sample,
FreiHAND has no side field) and ``manifest.json``. The ``mano`` labels are
``[global_orient (3), hand_pose (45), betas (10), transl (3)]`` for the sample's own side
model with a *flat* mean pose (``flat_hand_mean=True``, axis-angle, no PCA), such that
``ManoLayer(side=side, flat_hand_mean=True, use_pca=False)`` gives back ``verts``/``xyz``.

How the writer stays fast and safe: worker processes render, encode and write whole chunks
of samples and format their labels (numpy, a chunk at a time); this process appends the
label texts to the JSON lists in place, syncs, and then commits them in ``manifest.json``
(sample counts and the byte length of every label file), the record of what is done.
Ctrl-C and SIGTERM stop a run cleanly (the set holds exactly the committed samples). A run
killed outright (SIGKILL, power loss) may leave label files longer than the manifest says
and images of uncommitted samples; the next run cuts the files back to their committed
length and removes those images before it goes on.

Modules, one job each:

- ``scene``: :class:`HandSynthesizer` renders a batch of samples by ``(split, index)``
  (sampling, posing, camera, shading, render, composite); :class:`SynthBatch`.
- ``backgrounds``: :func:`make_background`, the photo style's scene backgrounds, the user's images.
- ``photo``: the photo style's forearm, skin, occluders and camera blur.
- ``labels``: a chunk's labels as JSON text.
- ``images``: a chunk's JPEG files; removal of uncommitted ones.
- ``pool``: chunks made in this process or in worker processes.
- ``manifest``: label files and the manifest that commits them.
- ``interrupts``: Ctrl-C and SIGTERM wait for a commit.
- ``writer``: :func:`write_synthetic_dataset`, :class:`SynthSummary`, :func:`split_counts`.
- ``online``: :class:`SyntheticHandDataset`, rendered when asked.
- ``timing``: seconds per phase.
"""

from meshrec.data.synthetic.backgrounds import make_background
from meshrec.data.synthetic.online import SyntheticHandDataset
from meshrec.data.synthetic.scene import GENERATOR_VERSION, SPLIT_CODES, HandSynthesizer, SynthBatch
from meshrec.data.synthetic.writer import SynthSummary, split_counts, write_synthetic_dataset

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
