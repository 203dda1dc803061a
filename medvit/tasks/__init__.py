"""Task kinds, one module each (classification, segmentation, cells; the self-supervised mae and dino): the
pipeline section and the
:class:`~medvit.tasks.kinds.TaskKind` that declares everything about the kind; their LightningModules live in
``medvit.tasks.modules`` and load only for training. A new kind is one module plus one line below (or
:func:`register_kind`)."""

from medvit.tasks import cells, classification, dino, mae, segmentation
from medvit.tasks.kinds import KINDS, TaskKind, TaskSection, get_kind, register_kind

for _module in (classification, segmentation, cells, mae, dino):  # the registration of the built-in kinds
    register_kind(_module.KIND)

__all__ = ["KINDS", "TaskKind", "TaskSection", "get_kind", "register_kind"]
