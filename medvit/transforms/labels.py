"""Classification targets: a class index becomes a long scalar, a multi-label entry a float multi-hot vector."""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence
from typing import Any

import torch
from monai.config import KeysCollection
from monai.transforms import MapTransform, Transform

from medvit.errors import InputError


class ClassLabel(Transform):
    """Class index -> ``torch.long`` scalar; with ``num_classes`` (multi-label) a list of class indices, or a
    0/1 vector of length ``num_classes``, -> float32 multi-hot ``[num_classes]``.

    Args:
        num_classes: Number of classes when targets are multi-label; ``None`` for single-label.
    """

    def __init__(self, *, num_classes: int | None = None) -> None:
        if num_classes is not None and num_classes < 1:
            raise ValueError(f"num_classes must be positive, got {num_classes}")
        self.num_classes = num_classes

    def __call__(self, label: int | float | str | Sequence[int] | torch.Tensor) -> torch.Tensor:
        if isinstance(label, str):  # "2" or "2.0" from a CSV
            try:
                label = float(label)
            except ValueError:
                raise ValueError(f"class label {label!r} is not a class index") from None
        values = torch.as_tensor(label).reshape(-1)
        if values.is_floating_point() and not torch.equal(values, values.round()):
            raise ValueError(f"class label {label!r} is not a class index")
        values = values.long()
        if self.num_classes is None:
            if values.numel() != 1:
                raise ValueError(f"expected one class index, got {label!r}")
            return values[0]
        k = self.num_classes
        if values.numel() == k and bool(((values == 0) | (values == 1)).all()) and k > 1:
            return values.float()  # already multi-hot
        if values.numel() and (values.min() < 0 or values.max() >= k):
            raise ValueError(f"class indices {values.tolist()} outside 0..{k - 1}")
        out = torch.zeros(k, dtype=torch.float32)
        out[values] = 1.0
        return out


class ClassLabeld(MapTransform):
    """Dictionary version of :class:`ClassLabel`; a bad label names the case."""

    def __init__(
        self, keys: KeysCollection = "label", *, num_classes: int | None = None, allow_missing_keys: bool = False
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        self.converter = ClassLabel(num_classes=num_classes)

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        for key in self.key_iterator(d):
            if d[key] is None:
                raise InputError(f"case {d.get('id', '?')}: no {key} (an unlabelled case cannot be trained on)")
            try:
                d[key] = self.converter(d[key])
            except ValueError as exc:
                raise InputError(f"case {d.get('id', '?')}: {key}: {exc}") from None
        return d
