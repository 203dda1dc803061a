"""CellVTA: a frozen pathology ViT with a ViT-Adapter-style CNN branch and a HoVer decoder for nuclei
instance segmentation and classification (CellVTA, github.com/JieZheng-ShanghaiTech/CellVTA; ViT-Adapter,
Chen et al., ICLR 2023).

* Spatial prior module: a small CNN giving ``c1..c4`` at strides 2, 4, 8, 16, each projected to the ViT width;
  ``c2..c4`` get a learned level embedding and form the multi-scale keys.
* Interactions, one after each quarter of the blocks: an injector (deformable cross-attention from the ViT
  patch tokens to ``c2..c4``, added with a learnable ``gamma`` that starts at 0), the quarter's blocks, and an
  extractor (deformable cross-attention from ``c2..c4`` back to the tokens, plus a ConvFFN); the last one has
  two extra extractors. Prefix tokens (CLS, registers) run through the blocks with the patches (CellVTA splits
  CLS off first, so it never sees a block); the final-norm CLS feeds the tissue head.
* Fusion: each quarter's token map is resized onto ``c1..c4`` and added, then BatchNorm -> ``f1..f4``.
* Decoder: :class:`~medvit.heads.hover.HoverDecoder`; tissue head: a linear layer on the CLS token.

The backbone is run block by block through its public pieces (``prepare_tokens``, ``blocks``, ``norm``) and
is frozen by default.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from medvit.backbones.tokens import check_backbone, map_to_tokens, tokens_to_map
from medvit.heads.deform_attn import MSDeformAttn, reference_points
from medvit.heads.hover import HoverDecoder, conv_block
from medvit.layers.params import freeze
from medvit.postprocess.hover import HoverResult, hover_postprocess


class SpatialPriorModule(nn.Module):
    """CNN pyramid ``c1..c4`` at strides 2/4/8/16, each projected to ``dim`` channels."""

    def __init__(self, dim: int, *, in_chans: int = 3, width: int = 64) -> None:
        super().__init__()

        def down(cin: int, cout: int) -> nn.Sequential:
            return nn.Sequential(
                nn.Conv2d(cin, cout, 3, stride=2, padding=1, bias=False),
                nn.BatchNorm2d(cout),
                nn.ReLU(inplace=True),
            )

        self.stem = nn.Sequential(down(in_chans, width), conv_block(width, width))  # stride 2
        self.conv2 = down(width, 2 * width)  # 4
        self.conv3 = down(2 * width, 4 * width)  # 8
        self.conv4 = down(4 * width, 4 * width)  # 16
        self.proj = nn.ModuleList(nn.Conv2d(c, dim, 1) for c in (width, 2 * width, 4 * width, 4 * width))

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        c1 = self.stem(x)
        c2 = self.conv2(c1)
        c3 = self.conv3(c2)
        c4 = self.conv4(c3)
        return [p(c) for p, c in zip(self.proj, (c1, c2, c3, c4), strict=True)]


class ConvFFN(nn.Module):
    """Linear, depthwise 3x3 conv per pyramid level, GELU, Linear."""

    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.dw = nn.Conv2d(hidden, hidden, 3, padding=1, groups=hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor, shapes: list[tuple[int, int]]) -> torch.Tensor:
        x = self.fc1(x)
        parts = x.split([h * w for h, w in shapes], dim=1)
        x = torch.cat([map_to_tokens(self.dw(tokens_to_map(p, s))) for p, s in zip(parts, shapes, strict=True)], 1)
        return self.fc2(self.act(x))


class Injector(nn.Module):
    """ViT tokens += gamma * deform_attn(tokens -> c2..c4)."""

    def __init__(self, dim: int, *, heads: int, points: int, ratio: float) -> None:
        super().__init__()
        self.query_norm = nn.LayerNorm(dim, eps=1e-6)
        self.feat_norm = nn.LayerNorm(dim, eps=1e-6)
        self.attn = MSDeformAttn(dim, n_levels=3, n_heads=heads, n_points=points, ratio=ratio)
        self.gamma = nn.Parameter(torch.zeros(dim))

    def forward(self, x, ref, c, shapes):
        return x + self.gamma * self.attn(self.query_norm(x), ref, self.feat_norm(c), shapes)


class Extractor(nn.Module):
    """c2..c4 += deform_attn(c -> ViT tokens), then += ConvFFN."""

    def __init__(self, dim: int, *, heads: int, points: int, ratio: float, ffn_ratio: float = 0.25) -> None:
        super().__init__()
        self.query_norm = nn.LayerNorm(dim, eps=1e-6)
        self.feat_norm = nn.LayerNorm(dim, eps=1e-6)
        self.attn = MSDeformAttn(dim, n_levels=1, n_heads=heads, n_points=points, ratio=ratio)
        self.ffn_norm = nn.LayerNorm(dim, eps=1e-6)
        self.ffn = ConvFFN(dim, max(1, int(dim * ffn_ratio)))

    def forward(self, c, ref, x, grid, shapes):
        c = c + self.attn(self.query_norm(c), ref, self.feat_norm(x), [grid])
        return c + self.ffn(self.ffn_norm(c), shapes)


class CellVTA(nn.Module):
    """Frozen ViT + CNN adapter + HoVer decoder: ``[B, 3, H, W]`` -> the three maps and tissue logits.

    Args:
        backbone: A 2D backbone meeting the contract (UNI ViT-L/16 in the paper); H and W must be multiples
            of 16 and of the patch size.
        num_types: Nuclei types including background (6 for PanNuke).
        num_tissues: Tissue classes (19 for PanNuke); 0 for no tissue head.
        deform_heads: Heads of the deformable attentions.
        deform_points: Sampling points per head and level.
        deform_ratio: Value width ratio of the deformable attentions.
        spm_width: Base width of the spatial prior module.
        decoder_width: Base width of the HoVer decoder.
        freeze_backbone: Keep the ViT frozen (CellVTA never unfreezes it).
    """

    def __init__(
        self,
        backbone: nn.Module,
        num_types: int = 6,
        *,
        num_tissues: int = 19,
        deform_heads: int = 8,
        deform_points: int = 4,
        deform_ratio: float = 0.5,
        spm_width: int = 64,
        decoder_width: int = 64,
        freeze_backbone: bool = True,
    ) -> None:
        super().__init__()
        check_backbone(backbone, spatial_dims=(2,), blocks=True)
        depth = len(backbone.blocks)
        if depth < 4:
            raise ValueError(f"backbone needs at least 4 blocks for 4 interactions, has {depth}")
        self.backbone = freeze(backbone) if freeze_backbone else backbone
        dim = backbone.embed_dim
        q = depth / 4
        self.groups = [(round(q * i), round(q * (i + 1))) for i in range(4)]
        kw = dict(heads=deform_heads, points=deform_points, ratio=deform_ratio)
        self.spm = SpatialPriorModule(dim, width=spm_width)
        self.level_embed = nn.Parameter(torch.randn(3, dim) * 0.02)
        self.injectors = nn.ModuleList(Injector(dim, **kw) for _ in range(4))
        self.extractors = nn.ModuleList(Extractor(dim, **kw) for _ in range(4 + 2))
        self.up = nn.ConvTranspose2d(dim, dim, 2, stride=2)
        self.norms = nn.ModuleList(nn.BatchNorm2d(dim) for _ in range(4))
        self.decoder = HoverDecoder(dim, num_types, width=decoder_width)
        self.tissue_head = nn.Linear(dim, num_tissues) if num_tissues > 0 else None

    def no_weight_decay(self) -> set[str]:
        """The level embedding gets no weight decay (names relative to this module; the backbone has its own)."""
        return {"level_embed"}

    def forward_features(self, x: torch.Tensor) -> tuple[list[torch.Tensor], torch.Tensor]:
        """The fused pyramid ``f1..f4`` and the pooled (final-norm CLS, else mean) token."""
        bb = self.backbone
        if x.shape[-1] % 16 or x.shape[-2] % 16:
            raise ValueError(f"input height and width must be multiples of 16, got {tuple(x.shape[2:])}")
        c1, c2, c3, c4 = self.spm(x)
        shapes = [tuple(c.shape[2:]) for c in (c2, c3, c4)]
        c = torch.cat([map_to_tokens(ci) + self.level_embed[i] for i, ci in enumerate((c2, c3, c4))], dim=1)
        tokens, grid, rope = bb.prepare_tokens(x)
        p = bb.num_prefix_tokens
        ref_x = reference_points([grid], x.device)
        ref_c = reference_points(shapes, x.device)
        outs = []
        for i, (start, stop) in enumerate(self.groups):
            patches = self.injectors[i](tokens[:, p:], ref_x, c, shapes)
            tokens = torch.cat([tokens[:, :p], patches], dim=1)
            for blk in bb.blocks[start:stop]:
                tokens = blk(tokens, rope)
            patches = tokens[:, p:]
            extractors = self.extractors[i : i + 1] if i < 3 else self.extractors[3:]
            for ext in extractors:
                c = ext(c, ref_c, patches, grid, shapes)
            outs.append(tokens_to_map(patches, grid))
        parts = c.split([h * w for h, w in shapes], dim=1)
        c2, c3, c4 = (tokens_to_map(t, s) for t, s in zip(parts, shapes, strict=True))
        c1 = c1 + self.up(c2)
        feats = []
        for ci, xi, norm in zip((c1, c2, c3, c4), outs, self.norms, strict=True):
            xi = F.interpolate(xi, size=ci.shape[2:], mode="bilinear", align_corners=False)
            feats.append(norm(ci + xi))
        final = bb.norm(tokens)
        pooled = final[:, 0] if p > 0 else final.mean(1)
        return feats, pooled

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """``nuclei_binary_map [B, 2, H, W]``, ``hv_map [B, 2, H, W]``, ``nuclei_type_map [B, T, H, W]``
        (logits; hv raw) and ``tissue_types [B, num_tissues]`` when there is a tissue head."""
        feats, pooled = self.forward_features(x)
        out = self.decoder(x, feats)
        if self.tissue_head is not None:
            out["tissue_types"] = self.tissue_head(pooled)
        return out

    @torch.no_grad()
    def predict_instances(self, x: torch.Tensor, **kwargs) -> list[HoverResult]:
        """Run the model and :func:`~medvit.postprocess.hover.hover_postprocess` on each image."""
        out = self(x)
        binary = out["nuclei_binary_map"].softmax(1)[:, 1].float().cpu().numpy()
        hv = out["hv_map"].float().cpu().numpy()
        types = out["nuclei_type_map"].argmax(1).cpu().numpy()
        return [hover_postprocess(binary[i], hv[i], types[i], **kwargs) for i in range(x.shape[0])]
