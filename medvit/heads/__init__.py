"""Task heads on backbone features: linear classification and segmentation probes, UNETR, the Segmenter
mask transformer and the HoVer-style three-branch cell decoder."""

from medvit.heads.linear import ClassificationHead, LinearClassifier, LinearSegProbe
from medvit.heads.unetr import UNETR

__all__ = ["ClassificationHead", "LinearClassifier", "LinearSegProbe", "UNETR"]
