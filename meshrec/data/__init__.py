"""Datasets, label masks, crops and augmentation.

- :mod:`meshrec.data.sample`: :class:`HandSample`, :class:`HandBatch`, :func:`collate_hand_samples`
- :mod:`meshrec.data.freihand`: :class:`FreiHandDataset` (the FreiHAND layout, real or synthetic)
- :mod:`meshrec.data.keypoints_json`: :class:`KeypointsJsonDataset` (your own images)
- :mod:`meshrec.data.mixed`: :class:`MixedDataset` (several datasets with chosen ratios)
- :mod:`meshrec.data.crop`: hand crops (:func:`hand_crop_box` chooses the box) with the matching intrinsics
- :mod:`meshrec.data.augment`: batch augmentation consistent across image, K and labels
- :mod:`meshrec.data.base`: the bad-sample policy (``on_error``) shared by the datasets

kornia and Pillow are imported only when a crop, augmentation or image read runs.
"""

from meshrec.data.augment import AugmentParams, AugmentSettings, HandAugmentation, augment_batch, mirror_batch
from meshrec.data.crop import CropResult, box_from_keypoints, crop_image, crop_sample, hand_crop_box
from meshrec.data.freihand import FreiHandDataset
from meshrec.data.keypoints_json import KeypointsJsonDataset
from meshrec.data.mixed import MixedDataset
from meshrec.data.sample import HandBatch, HandSample, collate_hand_samples, make_hand_sample

__all__ = [
    "AugmentParams",
    "AugmentSettings",
    "HandAugmentation",
    "augment_batch",
    "mirror_batch",
    "CropResult",
    "box_from_keypoints",
    "crop_image",
    "crop_sample",
    "hand_crop_box",
    "FreiHandDataset",
    "KeypointsJsonDataset",
    "MixedDataset",
    "HandBatch",
    "HandSample",
    "collate_hand_samples",
    "make_hand_sample",
]
