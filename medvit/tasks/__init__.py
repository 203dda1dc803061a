"""Task kinds, one module each (classification, segmentation, cells): pipeline section, LightningModule and
the :class:`~medvit.tasks.kinds.TaskKind` that declares them. A new kind is one module plus one line in
``KINDS`` below (or :func:`register_kind`)."""

from medvit.tasks import cells, classification, segmentation
from medvit.tasks.base import MedvitTask
from medvit.tasks.cells import CellTask
from medvit.tasks.classification import ClassificationTask
from medvit.tasks.kinds import KINDS, TaskKind, TaskSection, get_kind, register_kind
from medvit.tasks.optim import OptimizerSpec, build_optimizer, build_scheduler, param_groups
from medvit.tasks.segmentation import SegmentationTask

for _module in (classification, segmentation, cells):  # the registration of the built-in kinds
    register_kind(_module.KIND)

__all__ = [
    "KINDS",
    "CellTask",
    "ClassificationTask",
    "MedvitTask",
    "OptimizerSpec",
    "SegmentationTask",
    "TaskKind",
    "TaskSection",
    "build_optimizer",
    "build_scheduler",
    "get_kind",
    "param_groups",
    "register_kind",
]
