"""Metrics: panoptic quality for nuclei (PQ, bPQ, mPQ) and MONAI's Dice / HD95 for segmentation."""

from medvit.metrics.pq import (
    PQStats,
    instance_types,
    match_instances,
    mpq,
    multiclass_pq,
    pairwise_iou,
    panoptic_quality,
    remap_label,
)
from medvit.metrics.segmentation import dice, hd95

__all__ = [
    "PQStats",
    "dice",
    "hd95",
    "instance_types",
    "match_instances",
    "mpq",
    "multiclass_pq",
    "pairwise_iou",
    "panoptic_quality",
    "remap_label",
]
