"""Building blocks of medvit's vision transformers: one concept per file."""

from medvit.layers.attention import Attention
from medvit.layers.block import Block
from medvit.layers.drop_path import DropPath, drop_path
from medvit.layers.layer_scale import LayerScale
from medvit.layers.mlp import Mlp, SwiGLU
from medvit.layers.patch_embed import PatchEmbed, to_tuple
from medvit.layers.pos_embed import infer_grid, resample_abs_pos_embed, resample_grid, sincos_pos_embed
from medvit.layers.rope import RopePositionEmbedding, apply_rope, rotate_half

__all__ = [
    "Attention",
    "Block",
    "DropPath",
    "LayerScale",
    "Mlp",
    "PatchEmbed",
    "RopePositionEmbedding",
    "SwiGLU",
    "apply_rope",
    "drop_path",
    "infer_grid",
    "resample_abs_pos_embed",
    "resample_grid",
    "rotate_half",
    "sincos_pos_embed",
    "to_tuple",
]
