"""Task heads on backbone features: linear classification and segmentation probes, UNETR, the Segmenter
mask transformer and the HoVer-style three-branch cell decoder."""

from medvit.heads.cbam import CBAM
from medvit.heads.hover import HoverDecoder
from medvit.heads.linear import ClassificationHead, LinearClassifier, LinearSegProbe
from medvit.heads.segmenter import MaskTransformer
from medvit.heads.unetr import UNETR

__all__ = [
    "CBAM",
    "ClassificationHead",
    "HoverDecoder",
    "LinearClassifier",
    "LinearSegProbe",
    "MaskTransformer",
    "UNETR",
]
