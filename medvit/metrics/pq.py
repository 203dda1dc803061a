"""Panoptic quality for nuclei (Kirillov et al., "Panoptic Segmentation", CVPR 2019; as used for PanNuke and
CoNIC by HoVer-Net, Graham et al., MedIA 2019): DQ, SQ, PQ = DQ x SQ, binary PQ and multi-class mPQ.

Instances are matched one to one by IoU: with ``match_iou >= 0.5`` every pair above the threshold is unique, so
pairs are taken directly; below 0.5 the assignment maximising total IoU is solved (Hungarian). A pair counts
when its IoU is strictly greater than ``match_iou``.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
from scipy.optimize import linear_sum_assignment


@dataclass(frozen=True)
class PQStats:
    """Matching counts of one image (or a sum of images); ``dq``, ``sq`` and ``pq`` derive from them.

    Attributes:
        tp: Matched pairs.
        fp: Predicted instances left unmatched.
        fn: True instances left unmatched.
        iou_sum: Sum of the IoUs of the matched pairs.
    """

    tp: int = 0
    fp: int = 0
    fn: int = 0
    iou_sum: float = 0.0

    def __add__(self, other: PQStats) -> PQStats:
        return PQStats(self.tp + other.tp, self.fp + other.fp, self.fn + other.fn, self.iou_sum + other.iou_sum)

    @property
    def empty(self) -> bool:
        """Neither truth nor prediction has an instance (PQ is then undefined)."""
        return self.tp + self.fp + self.fn == 0

    @property
    def dq(self) -> float:
        """Detection quality ``TP / (TP + FP/2 + FN/2)``; NaN when empty."""
        return self.tp / (self.tp + 0.5 * self.fp + 0.5 * self.fn) if not self.empty else float("nan")

    @property
    def sq(self) -> float:
        """Segmentation quality: mean IoU of the matched pairs (0 without any; NaN when empty)."""
        if self.empty:
            return float("nan")
        return self.iou_sum / self.tp if self.tp else 0.0

    @property
    def pq(self) -> float:
        """``DQ x SQ``; NaN when empty."""
        return self.dq * self.sq if not self.empty else float("nan")


def remap_label(inst: np.ndarray) -> np.ndarray:
    """Renumber instance ids to ``1..n`` in increasing order of the old ids (0 stays background)."""
    inst = np.asarray(inst)
    ids = np.unique(inst)
    ids = ids[ids != 0]
    out = np.zeros(inst.shape, dtype=np.int32)
    if ids.size:
        lookup = np.searchsorted(ids, inst)
        fg = inst != 0
        out[fg] = lookup[fg] + 1
    return out


def _check_pair(true: np.ndarray, pred: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    true, pred = np.asarray(true), np.asarray(pred)
    if true.shape != pred.shape:
        raise ValueError(f"true and pred must have the same shape, got {true.shape} and {pred.shape}")
    if (true < 0).any() or (pred < 0).any():
        raise ValueError("instance maps must be non-negative integers (0 = background)")
    return remap_label(true), remap_label(pred)


def pairwise_iou(true: np.ndarray, pred: np.ndarray) -> np.ndarray:
    """IoU of every (true, pred) instance pair of two remapped maps: ``[n_true, n_pred]``."""
    nt, npred = int(true.max(initial=0)), int(pred.max(initial=0))
    joint = true.astype(np.int64).ravel() * (npred + 1) + pred.ravel()
    counts = np.bincount(joint, minlength=(nt + 1) * (npred + 1)).reshape(nt + 1, npred + 1)
    inter = counts[1:, 1:].astype(np.float64)
    area_t = counts[1:, :].sum(1, keepdims=True)
    area_p = counts[:, 1:].sum(0, keepdims=True)
    union = area_t + area_p - inter
    return np.divide(inter, union, out=np.zeros_like(inter), where=union > 0)


def match_instances(
    true: np.ndarray, pred: np.ndarray, *, match_iou: float = 0.5
) -> tuple[list[tuple[int, int, float]], list[int], list[int]]:
    """Pair true and predicted instances one to one.

    Args:
        true: Instance map (0 = background).
        pred: Instance map of the same shape.
        match_iou: A pair counts when its IoU is strictly above this.

    Returns:
        ``[(true_id, pred_id, iou), ...]``, the unmatched true ids and the unmatched predicted ids, with ids
        of the remapped maps (:func:`remap_label`).
    """
    if not 0.0 <= match_iou < 1.0:
        raise ValueError(f"match_iou must be in [0, 1), got {match_iou}")
    true, pred = _check_pair(true, pred)
    iou = pairwise_iou(true, pred)
    if iou.size == 0:
        rows, cols = np.zeros(0, int), np.zeros(0, int)
    elif match_iou >= 0.5:
        rows, cols = np.nonzero(iou > match_iou)
    else:
        rows, cols = linear_sum_assignment(-iou)
        keep = iou[rows, cols] > match_iou
        rows, cols = rows[keep], cols[keep]
    pairs = [(int(r) + 1, int(c) + 1, float(iou[r, c])) for r, c in zip(rows, cols, strict=True)]
    free_true = sorted(set(range(1, iou.shape[0] + 1)) - {p[0] for p in pairs})
    free_pred = sorted(set(range(1, iou.shape[1] + 1)) - {p[1] for p in pairs})
    return pairs, free_true, free_pred


def panoptic_quality(true: np.ndarray, pred: np.ndarray, *, match_iou: float = 0.5) -> PQStats:
    """Binary panoptic quality of one image (bPQ when types are ignored): the :class:`PQStats`."""
    pairs, free_true, free_pred = match_instances(true, pred, match_iou=match_iou)
    return PQStats(len(pairs), len(free_pred), len(free_true), sum(p[2] for p in pairs))


def instance_types(inst: np.ndarray, type_map: np.ndarray) -> dict[int, int]:
    """The type of each instance: the most frequent non-zero type of its pixels (0 if it has none)."""
    inst, type_map = np.asarray(inst), np.asarray(type_map)
    if inst.shape != type_map.shape:
        raise ValueError(f"inst and type_map must have the same shape, got {inst.shape} and {type_map.shape}")
    out: dict[int, int] = {}
    for i in np.unique(inst):
        if i == 0:
            continue
        types = type_map[inst == i]
        types = types[types != 0]
        out[int(i)] = int(np.bincount(types.astype(np.int64)).argmax()) if types.size else 0
    return out


def keep_type(inst: np.ndarray, types: Mapping[int, int], cls: int) -> np.ndarray:
    """The instance map restricted to the instances of type ``cls``."""
    ids = [i for i, t in types.items() if t == cls]
    return np.where(np.isin(inst, ids), inst, 0)


def multiclass_pq(
    true_inst: np.ndarray,
    true_type: np.ndarray | Mapping[int, int],
    pred_inst: np.ndarray,
    pred_type: np.ndarray | Mapping[int, int],
    classes: Iterable[int],
    *,
    match_iou: float = 0.5,
) -> dict[int, PQStats]:
    """Per-class :class:`PQStats` of one image: instances of each class are matched among themselves.

    Args:
        true_inst: True instance map.
        true_type: True type map (pixel types) or ``{instance id: type}``.
        pred_inst: Predicted instance map.
        pred_type: Predicted type map or ``{instance id: type}``.
        classes: The (non-background) classes to score.
        match_iou: IoU threshold.
    """
    tt = true_type if isinstance(true_type, Mapping) else instance_types(true_inst, true_type)
    pt = pred_type if isinstance(pred_type, Mapping) else instance_types(pred_inst, pred_type)
    return {
        int(c): panoptic_quality(keep_type(true_inst, tt, c), keep_type(pred_inst, pt, c), match_iou=match_iou)
        for c in classes
    }


def mpq(per_image: Sequence[Mapping[int, PQStats]], *, mode: str = "image") -> float:
    """Multi-class PQ over a set of images.

    Args:
        per_image: One :func:`multiclass_pq` result per image.
        mode: ``"image"`` (PanNuke: the mean over images of the mean over the classes present in truth or
            prediction) or ``"dataset"`` (CoNIC's mPQ+: counts summed over images per class, then the mean
            over classes).

    Returns:
        mPQ, or NaN when nothing was present anywhere.
    """
    if mode == "image":
        scores = []
        for stats in per_image:
            present = [s.pq for s in stats.values() if not s.empty]
            if present:
                scores.append(float(np.mean(present)))
        return float(np.mean(scores)) if scores else float("nan")
    if mode == "dataset":
        totals: dict[int, PQStats] = {}
        for stats in per_image:
            for c, s in stats.items():
                totals[c] = totals.get(c, PQStats()) + s
        present = [s.pq for s in totals.values() if not s.empty]
        return float(np.mean(present)) if present else float("nan")
    raise ValueError(f"mode must be 'image' or 'dataset', got {mode!r}")
