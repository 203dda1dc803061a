"""Whole models from plain data: a backbone (``medvit.backbones``), an optional adapter and a head.

``ModelSpec`` is the ``model:`` section of a pipeline and of a model package's ``medvit.yaml``;
``build_model(spec)`` turns it into a ``torch.nn.Module``. Parts are chosen by registered names only.
"""

from medvit.models.build import ADAPTERS, HEADS, build_model
from medvit.models.spec import AdapterSpec, BackboneSpec, HeadSpec, ModelSpec

__all__ = ["ADAPTERS", "HEADS", "AdapterSpec", "BackboneSpec", "HeadSpec", "ModelSpec", "build_model"]
