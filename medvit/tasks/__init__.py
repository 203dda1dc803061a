"""Lightning modules, one per task kind: classification, segmentation (2D/3D) and cell instances."""

from medvit.tasks.base import MedvitTask
from medvit.tasks.cells import CellTask
from medvit.tasks.classification import ClassificationTask
from medvit.tasks.optim import OptimizerSpec, build_optimizer, build_scheduler, param_groups
from medvit.tasks.segmentation import SegmentationTask

TASKS: dict[str, type[MedvitTask]] = {
    "classification": ClassificationTask,
    "segmentation": SegmentationTask,
    "cells": CellTask,
}

__all__ = [
    "TASKS",
    "CellTask",
    "ClassificationTask",
    "MedvitTask",
    "OptimizerSpec",
    "SegmentationTask",
    "build_optimizer",
    "build_scheduler",
    "param_groups",
]
