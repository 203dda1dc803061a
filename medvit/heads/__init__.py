"""Task heads on backbone features: linear classification and segmentation probes, UNETR, the Segmenter
mask transformer, the HoVer-style three-branch cell decoder, and the two heads that also reach into the
frozen backbone: FunduSegmenter and CellVTA."""

from medvit.heads.cbam import CBAM
from medvit.heads.cellvta import CellVTA
from medvit.heads.funduseg import FunduSegmenter
from medvit.heads.hover import HoverDecoder
from medvit.heads.linear import ClassificationHead, LinearClassifier, LinearSegProbe
from medvit.heads.segmenter import MaskTransformer
from medvit.heads.unetr import UNETR

__all__ = [
    "CBAM",
    "CellVTA",
    "ClassificationHead",
    "FunduSegmenter",
    "HoverDecoder",
    "LinearClassifier",
    "LinearSegProbe",
    "MaskTransformer",
    "UNETR",
]
