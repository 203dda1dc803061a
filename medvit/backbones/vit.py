"""The one vision transformer behind every medvit backbone, for 2D images and 3D volumes."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from medvit.layers import (
    Block,
    PatchEmbed,
    RopePositionEmbedding,
    resample_abs_pos_embed,
    sincos_pos_embed,
    to_tuple,
)


class VisionTransformer(nn.Module):
    """A pre-norm ViT (Dosovitskiy et al., "An Image is Worth 16x16 Words", ICLR 2021) in 2D or 3D.

    One class covers MAE-style encoders (RETFound, UrFound, Hi-End-MAE: CLS token, absolute position
    embedding), DINOv2/UNI (LayerScale, learned position embedding) and DINOv3 (CLS + storage tokens, axial
    RoPE, masked key bias, SwiGLU for the ``plus`` and 7B sizes). Token order is always
    ``[CLS, registers..., patches]``.

    The absolute position embedding, when present, is ``pos_embed [1, P + N, D]`` where ``P`` is the number of
    prefix tokens if ``pos_embed_prefix`` (MAE/timm layout: the CLS entry is stored) and 0 otherwise
    (Hi-End-MAE: the CLS token gets no position). It is made for the ``img_size`` grid and resampled on the
    fly (float32, bicubic 2D / trilinear 3D, prefix kept) for any other input size.

    Args:
        img_size: Input size the position embedding is made for (int or one per spatial axis).
        patch_size: Patch side (int or one per axis).
        in_chans: Input channels.
        spatial_dims: 2 (``[B, C, H, W]``) or 3 (``[B, C, H, W, D]``).
        embed_dim: Token channels.
        depth: Number of blocks.
        num_heads: Attention heads.
        mlp_ratio: Feed-forward width relative to ``embed_dim`` when ``mlp_hidden_dim`` is not given.
        mlp_hidden_dim: Feed-forward width (overrides ``mlp_ratio``).
        ffn_layer: ``"mlp"`` or ``"swiglu"``.
        qkv_bias: Bias on qkv.
        proj_bias: Bias on the attention output projection.
        mlp_bias: Biases in the feed-forward layers.
        mask_k_bias: Hold the key bias at zero (DINOv3).
        class_token: Prepend a CLS token.
        num_reg_tokens: Register/storage tokens after CLS.
        pos_embed: ``"learned"`` (truncated-normal init), ``"sincos"`` (fixed sin-cos init, still a
            parameter so that fine-tuning can move it, as RETFound does), or ``"none"``.
        pos_embed_prefix: Whether ``pos_embed`` has entries for the prefix tokens.
        rope: Use DINOv3 axial RoPE on patch tokens.
        rope_theta: RoPE period base.
        rope_rescale_coords: Train-time RoPE coordinate rescale bound.
        init_values: LayerScale init, ``None`` for none.
        norm_eps: LayerNorm epsilon.
        drop_path_rate: Stochastic depth, increasing linearly to this value over the blocks.
        num_classes: Size of a linear head; 0 for none.
        global_pool: ``"token"`` (CLS after norm) or ``"avg"`` (mean of patch tokens) for ``forward``.
        fc_norm: RETFound/MAE fine-tuning layout: no final ``norm``, a LayerNorm after average pooling.
        feature_indices: Default blocks tapped by :meth:`forward_intermediates`.
        dynamic_img_pad: Zero-pad inputs whose sides are not multiples of the patch (grid = ceiling).
        grad_checkpointing: Recompute block activations in the backward pass to save memory.
    """

    def __init__(
        self,
        *,
        img_size: int | Sequence[int] = 224,
        patch_size: int | Sequence[int] = 16,
        in_chans: int = 3,
        spatial_dims: int = 2,
        embed_dim: int = 768,
        depth: int = 12,
        num_heads: int = 12,
        mlp_ratio: float = 4.0,
        mlp_hidden_dim: int | None = None,
        ffn_layer: str = "mlp",
        qkv_bias: bool = True,
        proj_bias: bool = True,
        mlp_bias: bool = True,
        mask_k_bias: bool = False,
        class_token: bool = True,
        num_reg_tokens: int = 0,
        pos_embed: str = "learned",
        pos_embed_prefix: bool = True,
        rope: bool = False,
        rope_theta: float = 100.0,
        rope_rescale_coords: float | None = None,
        init_values: float | None = None,
        norm_eps: float = 1e-6,
        drop_path_rate: float = 0.0,
        num_classes: int = 0,
        global_pool: str = "token",
        fc_norm: bool = False,
        feature_indices: Sequence[int] | None = None,
        dynamic_img_pad: bool = False,
        grad_checkpointing: bool = False,
    ) -> None:
        super().__init__()
        if pos_embed not in ("learned", "sincos", "none"):
            raise ValueError(f"pos_embed must be 'learned', 'sincos' or 'none', got {pos_embed!r}")
        if global_pool not in ("token", "avg"):
            raise ValueError(f"global_pool must be 'token' or 'avg', got {global_pool!r}")
        if global_pool == "token" and not class_token:
            raise ValueError("global_pool='token' needs a class token")
        self.spatial_dims = spatial_dims
        self.embed_dim = self.num_features = embed_dim
        self.depth = depth
        self.num_heads = num_heads
        self.patch_size = to_tuple(patch_size, spatial_dims, name="patch_size")
        self.img_size = to_tuple(img_size, spatial_dims, name="img_size")
        self.num_reg_tokens = num_reg_tokens
        self.num_prefix_tokens = int(class_token) + num_reg_tokens
        self.global_pool = global_pool
        self.grad_checkpointing = grad_checkpointing
        self.pos_embed_type = pos_embed
        self.pos_embed_prefix = pos_embed_prefix

        self.patch_embed = PatchEmbed(
            patch_size=self.patch_size,
            in_chans=in_chans,
            embed_dim=embed_dim,
            spatial_dims=spatial_dims,
            dynamic_img_pad=dynamic_img_pad,
        )
        self.grid = self.patch_embed.grid(self.img_size)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, embed_dim)) if class_token else None
        self.reg_token = nn.Parameter(torch.zeros(1, num_reg_tokens, embed_dim)) if num_reg_tokens else None
        if pos_embed == "none":
            self.pos_embed = None
        else:
            n_pos = math.prod(self.grid) + (self.num_prefix_tokens if pos_embed_prefix else 0)
            self.pos_embed = nn.Parameter(torch.zeros(1, n_pos, embed_dim))
        self.rope_embed = (
            RopePositionEmbedding(
                embed_dim // num_heads,
                spatial_dims=spatial_dims,
                theta=rope_theta,
                rescale_coords=rope_rescale_coords,
            )
            if rope
            else None
        )
        hidden = mlp_hidden_dim or int(embed_dim * mlp_ratio)
        rates = [drop_path_rate * i / (depth - 1) for i in range(depth)] if depth > 1 else [drop_path_rate] * depth
        self.blocks = nn.ModuleList(
            Block(
                embed_dim,
                num_heads=num_heads,
                mlp_hidden_dim=hidden,
                ffn_layer=ffn_layer,
                qkv_bias=qkv_bias,
                proj_bias=proj_bias,
                mlp_bias=mlp_bias,
                mask_k_bias=mask_k_bias,
                init_values=init_values,
                norm_eps=norm_eps,
                drop_path=rate,
            )
            for rate in rates
        )
        self.norm = nn.Identity() if fc_norm else nn.LayerNorm(embed_dim, eps=norm_eps)
        self.fc_norm = nn.LayerNorm(embed_dim, eps=norm_eps) if fc_norm else None
        self.head = nn.Linear(embed_dim, num_classes) if num_classes > 0 else None
        self.num_classes = num_classes
        self.feature_indices = tuple(feature_indices) if feature_indices is not None else self._default_indices()
        self.pretrained_cfg = None  # set by the registry
        self.init_weights()

    def _default_indices(self) -> tuple[int, ...]:
        step = self.depth / 4
        return tuple(sorted({max(0, round(step * (i + 1)) - 1) for i in range(4)}))

    @torch.no_grad()
    def init_weights(self) -> None:
        """Truncated-normal (std 0.02) linear weights, zero biases; sin-cos or truncated-normal pos embed."""
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=0.02)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
        w = self.patch_embed.proj.weight
        nn.init.trunc_normal_(w.view(w.shape[0], -1), std=0.02)
        for p in (self.cls_token, self.reg_token):
            if p is not None:
                nn.init.normal_(p, std=1e-6 if self.pos_embed is not None else 0.02)
        if self.pos_embed is not None:
            if self.pos_embed_type == "sincos" and not self.pos_embed.is_meta:
                self.pos_embed.zero_()
                start = self.num_prefix_tokens if self.pos_embed_prefix else 0
                self.pos_embed[0, start:] = sincos_pos_embed(self.embed_dim, self.grid)
            else:
                nn.init.trunc_normal_(self.pos_embed, std=0.02)

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        """Recompute each block's activations during backward (trades compute for memory)."""
        self.grad_checkpointing = enable

    def no_weight_decay(self) -> set[str]:
        """Names (relative to this module) of the tokens and embeddings that get no weight decay (timm's hook)."""
        return {name for name in ("cls_token", "reg_token", "pos_embed") if getattr(self, name) is not None}

    # -- embedding ---------------------------------------------------------------------------------------

    def _pos_for_grid(self, grid: tuple[int, ...]) -> torch.Tensor:
        assert self.pos_embed is not None
        if grid == self.grid:
            return self.pos_embed
        prefix = self.num_prefix_tokens if self.pos_embed_prefix else 0
        return resample_abs_pos_embed(self.pos_embed, grid, old_grid=self.grid, num_prefix_tokens=prefix)

    def prepare_tokens(
        self,
        x: torch.Tensor,
        *,
        mask: torch.Tensor | None = None,
        mask_token: torch.Tensor | None = None,
        keep: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, tuple[int, ...], tuple | None]:
        """Patch-embed ``x`` and add prefix tokens and position information.

        Two optional ways of hiding patches, for self-supervised objectives:

        * ``mask [B, N]`` (bool) with ``mask_token [D]``: masked patch tokens are replaced by the mask token
          before position information is added (iBOT, DINOv2/v3); the sequence keeps all N patches.
        * ``keep [B, K]`` (patch indices): only those patch tokens go on, after their position is added
          (MAE: the encoder sees the visible patches only); RoPE angles are gathered the same way.

        Returns:
            The tokens ``[B, P + N, D]`` (``[B, P + K, D]`` with ``keep``), the patch grid, and the RoPE
            ``(cos, sin)`` (``[P + N, hd]``, or ``[B, 1, P + K, hd]`` with ``keep``; ``None`` without RoPE).
        """
        x, grid = self.patch_embed(x)
        b = x.shape[0]
        if mask is not None:
            if mask_token is None:
                raise ValueError("mask needs a mask_token")
            x = torch.where(mask.unsqueeze(-1), mask_token.to(x.dtype).reshape(1, 1, -1), x)
        pos = self._pos_for_grid(grid) if self.pos_embed is not None else None
        prefix_pos = None
        if pos is not None:
            start = self.num_prefix_tokens if self.pos_embed_prefix else 0
            x = x + pos[:, start:]
            prefix_pos = pos[:, :start] if start else None
        if keep is not None:
            x = torch.gather(x, 1, keep.unsqueeze(-1).expand(-1, -1, x.shape[-1]))
        prefix = [t.expand(b, -1, -1) for t in (self.cls_token, self.reg_token) if t is not None]
        if prefix:
            tokens = torch.cat(prefix, dim=1)
            if prefix_pos is not None:
                tokens = tokens + prefix_pos
            x = torch.cat([tokens, x], dim=1)
        rope = self.rope_embed(grid, num_prefix_tokens=self.num_prefix_tokens) if self.rope_embed else None
        if rope is not None and keep is not None:
            p = self.num_prefix_tokens
            rope = tuple(torch.cat([r[:p].expand(b, p, -1), r[p:][keep]], dim=1).unsqueeze(1) for r in rope)
        return x, grid, rope

    def forward_tokens(
        self, x: torch.Tensor, rope: tuple | None = None, *, taps: Sequence[int] = ()
    ) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """Run prepared tokens through every block: the final normed tokens and the raw outputs of the blocks
        in ``taps`` (in that order; what hierarchical decoders read)."""
        wanted = set(taps)
        hidden: dict[int, torch.Tensor] = {}
        for i, blk in enumerate(self.blocks):
            x = self._run_block(blk, x, rope)
            if i in wanted:
                hidden[i] = x
        return self.norm(x), [hidden[i] for i in taps]

    def _run_block(self, blk: Block, x: torch.Tensor, rope: tuple | None) -> torch.Tensor:
        if self.grad_checkpointing and torch.is_grad_enabled():
            return checkpoint(blk, x, rope, use_reentrant=False)
        return blk(x, rope)

    # -- the backbone contract --------------------------------------------------------------------------

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """All tokens after the final norm, prefix tokens first: ``[B, P + N, D]``."""
        x, _, rope = self.prepare_tokens(x)
        return self.forward_tokens(x, rope)[0]

    def forward_head(self, tokens: torch.Tensor, *, pre_logits: bool = False) -> torch.Tensor:
        """Pool tokens (CLS or mean of patch tokens), apply ``fc_norm`` if any, then the head if any."""
        if self.global_pool == "avg":
            x = tokens[:, self.num_prefix_tokens :].mean(dim=1)
        else:
            x = tokens[:, 0]
        if self.fc_norm is not None:
            x = self.fc_norm(x)
        if pre_logits or self.head is None:
            return x
        return self.head(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Pooled features ``[B, D]`` or logits ``[B, num_classes]`` when a head is present."""
        return self.forward_head(self.forward_features(x))

    def resolve_indices(self, indices: int | Sequence[int] | None) -> list[int]:
        """Block indices from ``None`` (the defaults), ``n`` (the last n blocks) or a list (negatives allowed)."""
        if indices is None:
            return list(self.feature_indices)
        if isinstance(indices, int):
            if not 0 < indices <= self.depth:
                raise ValueError(f"cannot take the last {indices} of {self.depth} blocks")
            return list(range(self.depth - indices, self.depth))
        out = []
        for i in indices:
            j = i + self.depth if i < 0 else i
            if not 0 <= j < self.depth:
                raise ValueError(f"block index {i} out of range for depth {self.depth}")
            out.append(j)
        return out

    def forward_intermediates(
        self,
        x: torch.Tensor,
        indices: int | Sequence[int] | None = None,
        *,
        norm: bool = False,
        output_fmt: str | None = None,
    ) -> list[torch.Tensor]:
        """Patch-token maps after the given blocks (prefix tokens dropped).

        Args:
            x: The input image or volume.
            indices: Blocks to tap (0-based): ``None`` for :attr:`feature_indices` (e.g. 5, 11, 17, 23 for
                ViT-L), an int for the last n blocks, or a list.
            norm: Apply the final norm to each tapped output.
            output_fmt: ``"NCHW"`` (2D) / ``"NCDHW"`` (3D) for ``[B, D, *grid]`` maps (the default), or
                ``"NLC"`` for ``[B, N, D]`` tokens.

        Returns:
            One tensor per index, in the order given.
        """
        expected = "NCHW" if self.spatial_dims == 2 else "NCDHW"
        output_fmt = output_fmt or expected
        if output_fmt not in (expected, "NLC"):
            raise ValueError(f"output_fmt must be {expected!r} or 'NLC' for a {self.spatial_dims}D backbone")
        wanted = self.resolve_indices(indices)
        x, grid, rope = self.prepare_tokens(x)
        taps: dict[int, torch.Tensor] = {}
        for i, blk in enumerate(self.blocks[: max(wanted) + 1]):
            x = self._run_block(blk, x, rope)
            if i in wanted:
                y = (self.norm(x) if norm else x)[:, self.num_prefix_tokens :]
                if output_fmt != "NLC":
                    y = y.transpose(1, 2).reshape(y.shape[0], -1, *grid)
                taps[i] = y
        return [taps[i] for i in wanted]
