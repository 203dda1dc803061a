"""Foundation backbones on one ViT core: RETFound, UrFound, Hi-End-MAE, DINOv3, UNI, and tiny test models.

``create_backbone(name, weights=PATH)`` builds a registered backbone and loads its official file strictly;
``list_backbones()`` names them; ``save_official(model, path)`` writes a backbone back in its family's official
layout. Importing this package registers every family.
"""

from medvit.backbones import dinov3, hiendmae, retfound, tiny, uni, urfound  # noqa: F401  (register)
from medvit.backbones.checkpoints import (
    CheckpointError,
    LoadReport,
    read_checkpoint,
    save_backbone,
    save_official,
)
from medvit.backbones.registry import (
    PretrainedCfg,
    create_backbone,
    describe_backbone,
    get_entry,
    list_backbones,
    register,
)
from medvit.backbones.vit import VisionTransformer

__all__ = [
    "CheckpointError",
    "LoadReport",
    "PretrainedCfg",
    "VisionTransformer",
    "create_backbone",
    "describe_backbone",
    "get_entry",
    "list_backbones",
    "read_checkpoint",
    "register",
    "save_backbone",
    "save_official",
]
