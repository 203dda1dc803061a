"""Masked autoencoding (He et al., "Masked Autoencoders Are Scalable Vision Learners", CVPR 2022) for any medvit
ViT, 2D or 3D, with the hierarchical encoder-driven decoder of Hi-End-MAE (Tang et al., MedIA 2025) as an
option.

:class:`MaskedAutoencoder` wraps a backbone (``self.backbone``) with MAE's light decoder. Its parameter names
are MAE's (``mask_token``, ``decoder_embed``, ``decoder_pos_embed``, ``decoder_blocks.N``, ``decoder_norm``,
``decoder_pred``), so a RETFound MAE file's decoder loads into it strictly, and the decoder goes back into
RETFound's layout on export. Per-token pixel order is MAE's: ``(p1, p2[, p3], C)``, tokens row-major over the
patch grid (the order of the backbone's patch tokens).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from medvit.backbones.checkpoints import CheckpointError
from medvit.layers import Block, resample_abs_pos_embed, sincos_pos_embed
from medvit.layers.mlp import Mlp

log = logging.getLogger(__name__)

# decoder sizes as published: MAE / RETFound (8 blocks of width 512, 16 heads); Hi-End-MAE (width 528, two
# self-attention blocks, then three blocks cross-attending to encoder blocks 9, 6 and 3 of its 12: "quarters"
# takes blocks 3/4, 1/2 and 1/4 deep of any encoder). Hi-End-MAE's head count is not stated in the paper; 12
# (44 channels per head) is medvit's choice.
DECODER_PRESETS: dict[str, dict[str, Any]] = {
    "mae": {"decoder_dim": 512, "decoder_depth": 8, "decoder_heads": 16, "hierarchical": None},
    "hiendmae": {"decoder_dim": 528, "decoder_depth": 2, "decoder_heads": 12, "hierarchical": "quarters"},
}
MAE_DECODER_KEYS = ("mask_token", "decoder_")  # what a RETFound/MAE file's decoder keys start with


def patchify(images: torch.Tensor, patch: Sequence[int]) -> torch.Tensor:
    """``[B, C, *S] -> [B, N, prod(patch) * C]``: tokens row-major over the grid, pixels ``(p1, p2[, p3], C)``."""
    b, c, *size = images.shape
    n = len(size)
    grid = [s // p for s, p in zip(size, patch, strict=True)]
    if any(s % p for s, p in zip(size, patch, strict=True)):
        raise ValueError(f"image size {size} is not a multiple of the patch {list(patch)}")
    shape = [b, c]
    for g, p in zip(grid, patch, strict=True):
        shape += [g, p]
    x = images.reshape(shape)
    order = [0, *range(2, 2 + 2 * n, 2), *range(3, 3 + 2 * n, 2), 1]
    return x.permute(order).reshape(b, math.prod(grid), math.prod(patch) * c)


def unpatchify(tokens: torch.Tensor, patch: Sequence[int], grid: Sequence[int], channels: int) -> torch.Tensor:
    """The inverse of :func:`patchify`: ``[B, N, prod(patch) * C] -> [B, C, *S]``."""
    b, n = tokens.shape[0], len(grid)
    x = tokens.reshape(b, *grid, *patch, channels)
    order = [0, 1 + 2 * n]
    for i in range(n):
        order += [1 + i, 1 + n + i]
    return x.permute(order).reshape(b, channels, *[g * p for g, p in zip(grid, patch, strict=True)])


def random_masking(
    batch: int, num_patches: int, ratio: float, *, device=None, generator: torch.Generator | None = None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """MAE's per-sample random masking by shuffling.

    Returns:
        ``keep [B, K]`` (indices of the visible patches, ``K = round(N * (1 - ratio))``, at least 1),
        ``mask [B, N]`` (1 = masked) and ``restore [B, N]`` (the permutation that undoes the shuffle).
    """
    if not 0.0 <= ratio < 1.0:
        raise ValueError(f"mask ratio must be in [0, 1), got {ratio}")
    n_keep = max(1, int(round(num_patches * (1.0 - ratio))))
    noise = torch.rand(batch, num_patches, generator=generator, device=generator.device if generator else device)
    shuffle = noise.argsort(dim=1).to(device)
    restore = shuffle.argsort(dim=1)
    keep = shuffle[:, :n_keep]
    mask = torch.ones(batch, num_patches, device=device)
    mask[:, :n_keep] = 0
    return keep, torch.gather(mask, 1, restore), restore


class CrossBlock(nn.Module):
    """A decoder block whose queries also attend to encoder features (Hi-End-MAE's encoder-driven decoding):
    self-attention, cross-attention to ``memory``, then the MLP, each pre-norm with a residual."""

    def __init__(self, dim: int, *, num_heads: int, mlp_ratio: float = 4.0, norm_eps: float = 1e-6) -> None:
        super().__init__()
        self.self_block = Block(dim, num_heads=num_heads, mlp_hidden_dim=int(dim * mlp_ratio), norm_eps=norm_eps)
        self.norm_q = nn.LayerNorm(dim, eps=norm_eps)
        self.norm_kv = nn.LayerNorm(dim, eps=norm_eps)
        self.cross = nn.MultiheadAttention(dim, num_heads, batch_first=True)
        self.norm2 = nn.LayerNorm(dim, eps=norm_eps)
        self.mlp = Mlp(dim, hidden_dim=int(dim * mlp_ratio))

    def forward(self, x: torch.Tensor, memory: torch.Tensor) -> torch.Tensor:
        x = self.self_block(x)
        kv = self.norm_kv(memory)
        x = x + self.cross(self.norm_q(x), kv, kv, need_weights=False)[0]
        return x + self.mlp(self.norm2(x))


class MaskedAutoencoder(nn.Module):
    """A backbone plus MAE's decoder; :meth:`forward` masks, encodes the visible patches only, decodes, and
    returns the loss on the masked patches.

    Args:
        backbone: A medvit :class:`~medvit.backbones.VisionTransformer` (2D or 3D).
        num_classes: Unused (the model-building contract passes it).
        preset: ``"auto"`` (the decoder a RETFound/MAE file carries when the backbone was loaded from one,
            else ``mae``), ``"mae"``, ``"hiendmae"`` (see :data:`DECODER_PRESETS`) or ``None`` (the options
            below only). Explicit options override the preset.
        decoder_dim: Decoder width.
        decoder_depth: Decoder self-attention blocks.
        decoder_heads: Decoder attention heads.
        hierarchical: Encoder blocks (0-based) whose outputs the decoder cross-attends to, one cross-attention
            block each, deepest first (Hi-End-MAE: ``[9, 6, 3]``); ``None`` for MAE's plain decoder.
        mlp_ratio: Decoder MLP width relative to ``decoder_dim``.

    A backbone loaded from a file with MAE decoder keys (``backbone.load_report.dropped_state``) gets them
    loaded strictly: a decoder that does not fit is an error naming the file.
    """

    def __init__(
        self,
        backbone: nn.Module,
        num_classes: int = 0,
        *,
        preset: str | None = "auto",
        decoder_dim: int | None = None,
        decoder_depth: int | None = None,
        decoder_heads: int | None = None,
        hierarchical: Sequence[int] | None = None,
        mlp_ratio: float = 4.0,
    ) -> None:
        super().__init__()
        report = getattr(backbone, "load_report", None)
        stored = {
            k: v for k, v in (report.dropped_state if report else {}).items() if k.startswith(MAE_DECODER_KEYS)
        }
        stored_mae = "decoder_embed.weight" in stored and "decoder_pred.weight" in stored
        options = self._options(preset, stored if stored_mae else {})
        given = {"decoder_dim": decoder_dim, "decoder_depth": decoder_depth, "decoder_heads": decoder_heads}
        options.update({k: v for k, v in given.items() if v is not None})
        if hierarchical is not None:
            options["hierarchical"] = list(hierarchical)
        dim, depth, heads = options["decoder_dim"], options["decoder_depth"], options["decoder_heads"]
        taps = options.get("hierarchical") or []
        if taps == "quarters":
            d = backbone.depth
            taps = sorted({max(0, min(d - 1, round(d * f))) for f in (0.75, 0.5, 0.25)}, reverse=True)
        if dim % heads:
            raise ValueError(f"decoder_dim {dim} is not divisible by decoder_heads {heads}")
        for t in taps:
            if not 0 <= t < backbone.depth:
                raise ValueError(f"hierarchical: encoder block {t} out of range for depth {backbone.depth}")
        self.backbone = backbone
        self.patch_size = tuple(backbone.patch_size)
        self.in_chans = backbone.patch_embed.proj.in_channels
        self.decoder_options = {"decoder_dim": dim, "decoder_depth": depth, "decoder_heads": heads,
                                "hierarchical": list(taps) or None}  # fmt: skip
        self.taps = list(taps)
        enc = backbone.embed_dim
        prefix = backbone.num_prefix_tokens
        self.mask_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.decoder_embed = nn.Linear(enc, dim)
        n_pos = prefix + math.prod(backbone.grid)
        self.decoder_pos_embed = nn.Parameter(torch.zeros(1, n_pos, dim), requires_grad=False)  # fixed sin-cos
        self.decoder_blocks = nn.ModuleList(
            Block(dim, num_heads=heads, mlp_hidden_dim=int(dim * mlp_ratio), norm_eps=1e-6) for _ in range(depth)
        )
        if taps:
            self.encoder_to_decoder = nn.ModuleList(nn.Linear(enc, dim) for _ in taps)
            self.decoder_cross_blocks = nn.ModuleList(
                CrossBlock(dim, num_heads=heads, mlp_ratio=mlp_ratio) for _ in taps
            )
        self.decoder_norm = nn.LayerNorm(dim, eps=1e-6)
        self.decoder_pred = nn.Linear(dim, math.prod(self.patch_size) * self.in_chans)
        self._init_decoder()
        self.loaded_decoder: str | None = None
        if stored:
            self._load_decoder(stored, report.path, mae_layout=stored_mae)
        if report is not None:
            report.dropped_state = {}  # loaded or not, nothing else needs the file's leftovers

    @staticmethod
    def _options(preset: str | None, stored: dict[str, torch.Tensor]) -> dict[str, Any]:
        if preset == "auto":
            if stored:  # the decoder the file carries: width and depth from its tensors
                depth = len({k.split(".")[1] for k in stored if k.startswith("decoder_blocks.")})
                return {"decoder_dim": int(stored["decoder_embed.weight"].shape[0]), "decoder_depth": depth,
                        "decoder_heads": 16, "hierarchical": None}  # fmt: skip
            preset = "mae"
        if preset is None:
            return dict(DECODER_PRESETS["mae"])
        if preset not in DECODER_PRESETS:
            raise ValueError(
                f"preset must be 'auto', {', '.join(map(repr, DECODER_PRESETS))} or null, got {preset!r}"
            )
        return dict(DECODER_PRESETS[preset])

    @torch.no_grad()
    def _init_decoder(self) -> None:
        prefix = self.backbone.num_prefix_tokens
        self.decoder_pos_embed.zero_()
        self.decoder_pos_embed[0, prefix:] = sincos_pos_embed(self.decoder_pos_embed.shape[-1], self.backbone.grid)
        nn.init.normal_(self.mask_token, std=0.02)
        for name, m in self.named_modules():
            if name.startswith("backbone"):
                continue
            if isinstance(m, nn.Linear):
                nn.init.xavier_uniform_(m.weight)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.LayerNorm):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def decoder_state_dict(self) -> dict[str, torch.Tensor]:
        """The decoder's tensors under MAE's names (what RETFound's layout stores beside the encoder)."""
        return {k: v for k, v in self.state_dict().items() if not k.startswith("backbone.")}

    def _load_decoder(self, stored: dict[str, torch.Tensor], path: str, *, mae_layout: bool) -> None:
        if not mae_layout or self.taps:
            log.info("%s: the file's decoder is not MAE's plain decoder; the MAE decoder starts fresh", path)
            return
        own = self.decoder_state_dict()
        stored = dict(stored)
        pos = stored.get("decoder_pos_embed")
        if pos is not None and pos.ndim == 3 and pos.shape != own["decoder_pos_embed"].shape:
            prefix = self.backbone.num_prefix_tokens
            if pos.shape[-1] == own["decoder_pos_embed"].shape[-1] and pos.shape[1] > prefix:
                stored["decoder_pos_embed"] = resample_abs_pos_embed(
                    pos, self.backbone.grid, num_prefix_tokens=prefix
                )
        missing = sorted(set(own) - set(stored))
        unexpected = sorted(set(stored) - set(own))
        shapes = sorted(f"{k} {tuple(stored[k].shape)} vs {tuple(own[k].shape)}"
                        for k in set(own) & set(stored) if stored[k].shape != own[k].shape)  # fmt: skip
        if missing or unexpected or shapes:
            found = (("missing", missing), ("unexpected", unexpected), ("shapes", shapes))
            parts = [
                f"{what}: {', '.join(keys[:4])}{' ...' if len(keys) > 4 else ''}" for what, keys in found if keys
            ]
            raise CheckpointError(
                f"{path}: the file's MAE decoder does not fit model.head (decoder_dim "
                f"{self.decoder_options['decoder_dim']}, depth {self.decoder_options['decoder_depth']}): "
                + "; ".join(parts)
            )
        self.load_state_dict({**{f"backbone.{k}": v for k, v in self.backbone.state_dict().items()}, **stored})
        self.loaded_decoder = path

    def no_weight_decay(self) -> set[str]:
        return {"mask_token", "decoder_pos_embed"}

    # ------------------------------------------------------------------------------------------- forward

    def _decoder_pos(self, grid: tuple[int, ...]) -> torch.Tensor:
        if tuple(grid) == tuple(self.backbone.grid):
            return self.decoder_pos_embed
        prefix = self.backbone.num_prefix_tokens
        return resample_abs_pos_embed(
            self.decoder_pos_embed, grid, old_grid=self.backbone.grid, num_prefix_tokens=prefix
        )

    def forward(
        self, images: torch.Tensor, mask_ratio: float = 0.75, *, norm_pix_loss: bool = True,
        generator: torch.Generator | None = None,
    ) -> dict[str, torch.Tensor]:  # fmt: skip
        """Mask ``images``, encode the visible patches, reconstruct every patch.

        Returns:
            ``loss`` (mean squared error on the masked patches' pixels, per-patch normalised when
            ``norm_pix_loss``), ``pred [B, N, L]`` (in the target's space), ``mask [B, N]`` (1 = masked),
            ``target [B, N, L]`` and ``grid``.
        """
        bb = self.backbone
        grid = bb.patch_embed.grid(images.shape[2:])
        n = math.prod(grid)
        b = images.shape[0]
        keep, mask, restore = random_masking(b, n, mask_ratio, device=images.device, generator=generator)
        tokens, _, rope = bb.prepare_tokens(images, keep=keep)
        latent, hidden = bb.forward_tokens(tokens, rope, taps=self.taps)
        pred = self.decode(latent, hidden, restore, grid)
        target = patchify(images, self.patch_size).float()
        if norm_pix_loss:
            mean = target.mean(dim=-1, keepdim=True)
            var = target.var(dim=-1, keepdim=True)
            target = (target - mean) / (var + 1e-6).sqrt()
        per_patch = (pred.float() - target).pow(2).mean(dim=-1)
        loss = (per_patch * mask).sum() / mask.sum().clamp_min(1)
        return {"loss": loss, "pred": pred, "mask": mask, "target": target, "grid": torch.tensor(grid)}

    def decode(
        self, latent: torch.Tensor, hidden: list[torch.Tensor], restore: torch.Tensor, grid: tuple[int, ...]
    ) -> torch.Tensor:
        """Decoder: visible tokens plus mask tokens, unshuffled, with positions -> pixels ``[B, N, L]``."""
        p = self.backbone.num_prefix_tokens
        x = self.decoder_embed(latent)
        b, n = restore.shape
        patches = torch.cat([x[:, p:], self.mask_token.to(x.dtype).expand(b, n - (x.shape[1] - p), -1)], dim=1)
        patches = torch.gather(patches, 1, restore.unsqueeze(-1).expand(-1, -1, x.shape[-1]))
        pos = self._decoder_pos(grid).to(x.dtype)
        x = torch.cat([x[:, :p], patches], dim=1) + pos
        for blk in self.decoder_blocks:
            x = blk(x)
        if self.taps:
            # encoder features of the visible tokens, with their decoder positions, as keys and values
            keep_pos = pos[:, p:].expand(b, -1, -1)
            visible = restore.argsort(dim=1)[:, : latent.shape[1] - p]
            visible_pos = torch.gather(keep_pos, 1, visible.unsqueeze(-1).expand(-1, -1, pos.shape[-1]))
            mem_pos = torch.cat([pos[:, :p].expand(b, -1, -1), visible_pos], dim=1)
            for proj, blk, h in zip(self.encoder_to_decoder, self.decoder_cross_blocks, hidden, strict=True):
                x = blk(x, proj(h) + mem_pos)
        x = self.decoder_norm(x)
        return self.decoder_pred(x[:, p:])

    def reconstruct(self, out: dict[str, torch.Tensor], images: torch.Tensor) -> torch.Tensor:
        """The reconstruction in image space ``[B, C, *S]``: visible patches from the input, masked ones from the
        prediction (de-normalised with each patch's own mean and variance when the loss was per-patch
        normalised)."""
        target = patchify(images, self.patch_size).float()
        mean = target.mean(dim=-1, keepdim=True)
        std = (target.var(dim=-1, keepdim=True) + 1e-6).sqrt()
        pred = out["pred"].float()
        if not torch.allclose(out["target"], target):
            pred = pred * std + mean
        mask = out["mask"].unsqueeze(-1)
        mixed = target * (1 - mask) + pred * mask
        grid = tuple(int(g) for g in out["grid"])
        return unpatchify(mixed, self.patch_size, grid, self.in_chans)

    def masked_input(self, out: dict[str, torch.Tensor], images: torch.Tensor) -> torch.Tensor:
        """The input with its masked patches greyed out (zero), ``[B, C, *S]``."""
        target = patchify(images, self.patch_size).float()
        grid = tuple(int(g) for g in out["grid"])
        return unpatchify(target * (1 - out["mask"].unsqueeze(-1)), self.patch_size, grid, self.in_chans)
