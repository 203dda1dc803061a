"""The task kinds' LightningModules (training only: importing this loads Lightning)."""

from medvit.tasks.modules.base import MedvitTask
from medvit.tasks.modules.cells import CellTask
from medvit.tasks.modules.classification import ClassificationTask
from medvit.tasks.modules.segmentation import SegmentationTask

__all__ = ["CellTask", "ClassificationTask", "MedvitTask", "SegmentationTask"]
