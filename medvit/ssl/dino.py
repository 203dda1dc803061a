"""The DINO / iBOT / DINOv2 self-distillation objective as pure parts.

Projection head, the two centred-teacher cross-entropies (image-level DINO, Caron et al., ICCV 2021; patch-level
iBOT, Zhou et al., ICLR 2022), the KoLeo regulariser (Sablayrolles et al., ICLR 2019, as used by DINOv2, Oquab
et al., 2023), block-wise patch masks (BEiT, Bao et al., ICLR 2022), the schedules, and the EMA teacher update.
The LightningModule composes them; nothing here holds training state beyond the loss centres.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from medvit.ssl.crops import log_uniform_aspect

__all__ = [
    "DINOHead",
    "DINOLoss",
    "IBOTPatchLoss",
    "block_masks",
    "cosine_schedule",
    "ema_update",
    "koleo_loss",
    "momentum_schedule",
    "teacher_temp_schedule",
]


class DINOHead(nn.Module):
    """DINO's projection head: MLP to a bottleneck, L2 normalisation, weight-normalised prototypes.

    The last layer is a bias-free Linear whose rows are L2-normalised at every call (weight normalisation with
    the gain fixed to 1, as DINO/DINOv2 freeze ``weight_g``), so its output is a cosine similarity to
    ``out_dim`` prototypes. Caron et al., "Emerging Properties in Self-Supervised Vision Transformers", 2021.

    Args:
        in_dim: Input features (the backbone's embedding width).
        out_dim: Number of prototypes (DINOv2: 65536 for the CLS head, also for the iBOT head).
        hidden_dim: MLP width.
        bottleneck_dim: Width before the prototypes.
        nlayers: Linear layers before the prototypes (1 = a single projection to the bottleneck).
    """

    def __init__(
        self,
        in_dim: int,
        out_dim: int = 65536,
        hidden_dim: int = 2048,
        bottleneck_dim: int = 256,
        nlayers: int = 3,
    ) -> None:
        super().__init__()
        if nlayers < 1:
            raise ValueError(f"nlayers must be >= 1, got {nlayers}")
        dims = [in_dim] + [hidden_dim] * (nlayers - 1) + [bottleneck_dim]
        layers: list[nn.Module] = []
        for i, (d_in, d_out) in enumerate(zip(dims[:-1], dims[1:], strict=True)):
            layers.append(nn.Linear(d_in, d_out))
            if i < nlayers - 1:
                layers.append(nn.GELU())
        self.mlp = nn.Sequential(*layers)
        self.last_layer = nn.Linear(bottleneck_dim, out_dim, bias=False)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Truncated-normal (std 0.02) weights and zero biases, as DINO initialises its head."""
        for module in self.modules():
            if isinstance(module, nn.Linear):
                nn.init.trunc_normal_(module.weight, std=0.02)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Map ``[..., in_dim]`` features to ``[..., out_dim]`` prototype scores in ``[-1, 1]``."""
        x = F.normalize(self.mlp(x), dim=-1, eps=1e-6)
        return F.linear(x, F.normalize(self.last_layer.weight, dim=1))


def _global_mean(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Row sum ``[1, K]`` and row count of ``x [N, K]``, summed over processes when distributed."""
    packed = torch.cat([x.float().sum(dim=0), x.new_full((1,), x.shape[0], dtype=torch.float32)])
    if dist.is_available() and dist.is_initialized():
        dist.all_reduce(packed)
    return packed[:-1].unsqueeze(0), packed[-1]


class _CentredTeacher(nn.Module):
    """A persistent ``center [1, K]`` buffer, its EMA update and the centred, sharpened teacher softmax."""

    def __init__(self, out_dim: int, *, student_temp: float, center_momentum: float) -> None:
        super().__init__()
        if student_temp <= 0 or not 0 <= center_momentum <= 1:
            raise ValueError(
                f"need student_temp > 0 and center_momentum in [0, 1], got {student_temp}, {center_momentum}"
            )
        self.student_temp = student_temp
        self.center_momentum = center_momentum
        self.register_buffer("center", torch.zeros(1, out_dim))

    def teacher_probs(self, teacher_logits: torch.Tensor, teacher_temp: float) -> torch.Tensor:
        """``softmax((t - center) / teacher_temp)`` in float32, without gradient."""
        with torch.no_grad():
            return F.softmax((teacher_logits.detach().float() - self.center) / teacher_temp, dim=-1)

    @torch.no_grad()
    def update_center(self, teacher_logits: torch.Tensor | Sequence[torch.Tensor]) -> None:
        """EMA of the teacher's mean logits: ``center = m * center + (1 - m) * mean``.

        The mean is over every row given (and every process when ``torch.distributed`` is initialised). With no
        rows at all the centre is kept.

        Args:
            teacher_logits: ``[N, K]`` or a list of them (e.g. the two global views).
        """
        rows = teacher_logits if isinstance(teacher_logits, torch.Tensor) else torch.cat(list(teacher_logits))
        total, count = _global_mean(rows.detach().reshape(-1, self.center.shape[1]))
        mean = total / count.clamp(min=1)
        new = self.center * self.center_momentum + mean * (1 - self.center_momentum)
        self.center.copy_(torch.where(count > 0, new, self.center))


class DINOLoss(_CentredTeacher):
    """DINO's image-level loss: cross-entropy from centred, sharpened teacher views to every other student view.

    For each teacher view ``q`` (the global crops) and each student view ``v != q`` (students 0 and 1 are the
    same two global crops, the rest local crops) the loss is ``-sum_k p_q log s_v`` with
    ``p_q = softmax((t_q - center) / teacher_temp)`` and ``s_v = softmax(x_v / student_temp)``, averaged over
    the batch and over the pairs. Caron et al., ICCV 2021.

    Args:
        out_dim: Number of prototypes ``K``.
        student_temp: Student softmax temperature.
        center_momentum: EMA momentum of the centre.
    """

    def __init__(self, out_dim: int, student_temp: float = 0.1, center_momentum: float = 0.9) -> None:
        super().__init__(out_dim, student_temp=student_temp, center_momentum=center_momentum)

    def forward(
        self,
        student_logits: Sequence[torch.Tensor],
        teacher_logits: Sequence[torch.Tensor],
        teacher_temp: float,
    ) -> torch.Tensor:
        """The loss over all (teacher view, other student view) pairs.

        Args:
            student_logits: ``[B, K]`` per student view, the global views first.
            teacher_logits: ``[B, K]`` per teacher view (the global views).
            teacher_temp: Teacher softmax temperature (see :func:`teacher_temp_schedule`).

        Returns:
            Scalar float32 loss.
        """
        n_t, n_s = len(teacher_logits), len(student_logits)
        n_pairs = n_t * n_s - min(n_t, n_s)
        if n_pairs < 1:
            raise ValueError(f"no (teacher, other student) pair among {n_t} teacher and {n_s} student views")
        probs = self.teacher_probs(torch.stack(list(teacher_logits)), teacher_temp)  # [T, B, K]
        log_s = F.log_softmax(torch.stack(list(student_logits)).float() / self.student_temp, dim=-1)  # [S, B, K]
        ce = -torch.einsum("tbk,sbk->ts", probs, log_s) / probs.shape[1]  # [T, S], mean over the batch
        same = torch.eye(n_t, n_s, dtype=torch.bool, device=ce.device)
        return ce.masked_fill(same, 0.0).sum() / n_pairs


class IBOTPatchLoss(_CentredTeacher):
    """iBOT's masked-patch loss: the student predicts the teacher's centred prototypes at masked tokens.

    Per masked token the loss is ``-sum_k p log s`` as in :class:`DINOLoss`; tokens are weighted by
    ``weights`` (DINOv2: 1 / number of masked tokens of that token's image, so each image counts the same) and
    the sum is divided by ``n_images``. Zhou et al., "iBOT: Image BERT Pre-Training with Online Tokenizer",
    ICLR 2022.

    Args:
        out_dim: Number of patch prototypes ``K``.
        student_temp: Student softmax temperature.
        center_momentum: EMA momentum of the centre.
    """

    def __init__(self, out_dim: int, student_temp: float = 0.1, center_momentum: float = 0.9) -> None:
        super().__init__(out_dim, student_temp=student_temp, center_momentum=center_momentum)

    def forward(
        self,
        student_patch_logits: torch.Tensor,
        teacher_patch_logits: torch.Tensor,
        teacher_temp: float,
        weights: torch.Tensor,
        n_images: int,
    ) -> torch.Tensor:
        """The weighted cross-entropy over the masked tokens.

        Args:
            student_patch_logits: ``[M, K]`` student scores at the masked tokens.
            teacher_patch_logits: ``[M, K]`` teacher scores at the same tokens (the teacher saw them unmasked).
            teacher_temp: Teacher softmax temperature.
            weights: ``[M]`` per-token weights.
            n_images: Divisor; DINOv2 uses the number of global crops in the batch, masked or not.

        Returns:
            Scalar float32 loss (0 when ``M == 0``, still attached to the student graph).
        """
        if n_images < 1:
            raise ValueError(f"n_images must be >= 1, got {n_images}")
        probs = self.teacher_probs(teacher_patch_logits, teacher_temp)
        log_s = F.log_softmax(student_patch_logits.float() / self.student_temp, dim=-1)
        ce = -(probs * log_s).sum(dim=-1)
        return (ce * weights.float()).sum() / n_images


def koleo_loss(x: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """KoLeo regulariser: minus the mean log distance of each L2-normalised row to its nearest neighbour.

    It pushes features apart so they spread uniformly (Sablayrolles et al., "Spreading vectors for similarity
    search", ICLR 2019; DINOv2 applies it to the student's CLS features of each global view). Neighbours are
    found by cosine similarity, excluding the row itself.

    Args:
        x: ``[B, D]`` features, ``B >= 2``.
        eps: Added to the norms and the distances.

    Returns:
        Scalar loss (lower when the rows are spread out).
    """
    if x.dim() != 2 or x.shape[0] < 2:
        raise ValueError(f"koleo_loss needs [B >= 2, D] features, got shape {tuple(x.shape)}")
    x = F.normalize(x.float(), dim=-1, eps=eps)
    with torch.no_grad():
        sim = x @ x.T
        sim.fill_diagonal_(-2.0)
        nearest = sim.argmax(dim=1)
    dist_nn = F.pairwise_distance(x, x[nearest], p=2, eps=eps)
    return -torch.log(dist_nn + eps).mean()


def _box_masks(origin: torch.Tensor, sides: torch.Tensor, grid: Sequence[int]) -> torch.Tensor:
    """Boolean boxes ``[B, *grid]`` from integer ``origin`` and ``sides`` ``[B, n]`` (outer AND over the axes)."""
    box = None
    for axis, size in enumerate(grid):
        coord = torch.arange(size, device=origin.device)
        inside = (coord >= origin[:, axis : axis + 1]) & (
            coord < origin[:, axis : axis + 1] + sides[:, axis : axis + 1]
        )
        shape = [origin.shape[0]] + [1] * len(grid)
        shape[1 + axis] = size
        inside = inside.view(shape)
        box = inside if box is None else box & inside
    return box


def _top_up(mask: torch.Tensor, target: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    """Add random unmasked tokens to each row of ``mask [B, N]`` until it has ``target [B]`` tokens."""
    deficit = (target - mask.sum(dim=1)).clamp(min=0)
    score = torch.rand(mask.shape, generator=generator, device=mask.device).masked_fill(mask, 2.0)
    rank = score.argsort(dim=1).argsort(dim=1)
    return mask | (rank < deficit.unsqueeze(1))


def block_masks(
    batch: int,
    grid: Sequence[int],
    *,
    ratio_range: Sequence[float] = (0.1, 0.5),
    probability: float = 0.5,
    generator: torch.Generator | None = None,
    aspect: Sequence[float] = (0.3, 1 / 0.3),
    min_block: int = 4,
    max_block_fraction: float = 0.5,
    rounds: int = 64,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """Block-wise patch masks as BEiT / iBOT / DINOv2 draw them, for 2D grids and 3D grids alike.

    ``floor(batch * probability)`` samples (one more with the leftover probability) are chosen at random to be
    masked; the others get no mask. Each masked sample draws a target ratio (stratified uniform over
    ``ratio_range`` across the masked samples, as DINOv2 does), then random rectangles (boxes in 3D) of
    ``min_block``..``max_block_fraction * N`` tokens with a log-uniform ``aspect`` are added while they fit the
    remaining budget; whatever budget is left after ``rounds`` proposals is filled with random single tokens, so
    every masked sample ends with exactly ``clamp(round(ratio * N), ceil(lo * N), floor(hi * N))`` tokens.
    All samples are processed together at each round.

    Args:
        batch: Number of samples.
        grid: Patch grid, e.g. ``(14, 14)`` or ``(8, 8, 8)``; tokens are ordered row-major over it like the
            ViT's patch tokens.
        ratio_range: ``(min, max)`` fraction of masked tokens of a masked sample.
        probability: Fraction of samples that are masked.
        generator: Random source (masks are drawn on its device, the CPU by default).
        aspect: ``(min, max)`` aspect ratio of the blocks.
        min_block: Smallest block, in tokens.
        max_block_fraction: Largest block, as a fraction of the tokens.
        rounds: Block proposals per sample before topping up.
        device: Where to return the masks (the generator's device when None).

    Returns:
        ``[batch, prod(grid)]`` boolean mask, True = masked.
    """
    lo, hi = ratio_range
    if not 0 <= lo <= hi <= 1 or not 0 <= probability <= 1 or len(grid) < 1 or min_block < 1:
        raise ValueError(f"bad masking: ratio_range={tuple(ratio_range)}, probability={probability}, grid={grid}")
    gen_device = generator.device if generator is not None else torch.device("cpu")
    grid_t = torch.tensor(list(grid), device=gen_device)
    n_tokens = math.prod(grid)

    def rand(*shape: int) -> torch.Tensor:
        return torch.rand(shape, generator=generator, device=gen_device, dtype=torch.float64)

    expected = batch * probability
    n_masked = min(batch, int(expected) + int(rand(1).item() < expected - int(expected)))
    chosen = torch.randperm(batch, generator=generator, device=gen_device)[:n_masked]
    edges = torch.linspace(lo, hi, n_masked + 1, dtype=torch.float64, device=gen_device)
    ratios = edges[:-1] + (edges[1:] - edges[:-1]) * rand(n_masked)
    counts = (ratios * n_tokens).round().clamp(math.ceil(lo * n_tokens), math.floor(hi * n_tokens))
    target = torch.zeros(batch, dtype=torch.long, device=gen_device)
    target[chosen] = counts.long()

    mask = torch.zeros(batch, *grid, dtype=torch.bool, device=gen_device)
    max_block = max(min_block, int(max_block_fraction * n_tokens))
    for _ in range(rounds):
        left = target - mask.flatten(1).sum(dim=1)
        if not bool((left > 0).any()):
            break
        upper = left.clamp(min=min_block, max=max_block).double()
        area = min_block + (upper - min_block) * rand(batch)
        sides = area.pow(1 / len(grid)).unsqueeze(1) * log_uniform_aspect(
            batch, len(grid), aspect, generator=generator
        )
        sides = sides.round().long().clamp(min=1)
        fits = (sides <= grid_t).all(dim=1)
        origin = (rand(batch, len(grid)) * (grid_t - sides + 1).clamp(min=1)).long()
        box = _box_masks(origin, sides, grid)
        new = (box & ~mask).flatten(1).sum(dim=1)
        accept = fits & (new > 0) & (new <= left)
        mask |= box & accept.view(-1, *([1] * len(grid)))
    mask = _top_up(mask.flatten(1), target, generator)
    return mask if device is None else mask.to(device)


def cosine_schedule(
    start: float,
    end: float,
    step: int,
    total: int,
    *,
    warmup_steps: int = 0,
    warmup_start: float | None = None,
) -> float:
    """Half-cosine from ``start`` (after the warm-up) to ``end`` (at ``total``), with an optional linear warm-up.

    A pure function of ``step``: a resumed run gets the same value at the same step. Steps past ``total``
    stay at ``end``.

    Args:
        start: Value at the end of the warm-up (at step 0 without warm-up).
        end: Value at ``total``.
        step: Current optimiser step (0-based).
        total: Total steps, warm-up included.
        warmup_steps: Linear warm-up length.
        warmup_start: Value at step 0 when warming up (0.0 when None, as DINO's ``cosine_scheduler``).

    Returns:
        The scheduled value.
    """
    if total <= warmup_steps or warmup_steps < 0 or step < 0:
        raise ValueError(f"need 0 <= warmup_steps < total and step >= 0, got {warmup_steps}, {total}, {step}")
    if step < warmup_steps:
        first = 0.0 if warmup_start is None else warmup_start
        return first + (start - first) * step / warmup_steps
    progress = min(1.0, (step - warmup_steps) / (total - warmup_steps))
    return end + 0.5 * (start - end) * (1.0 + math.cos(math.pi * progress))


def teacher_temp_schedule(step: int, *, warmup_steps: int, start: float = 0.04, end: float = 0.07) -> float:
    """DINO's teacher temperature: linear from ``start`` to ``end`` over ``warmup_steps``, then constant.

    Args:
        step: Current optimiser step.
        warmup_steps: Warm-up length (0: ``end`` from the start).
        start: Temperature at step 0.
        end: Temperature after the warm-up.

    Returns:
        The temperature.
    """
    if step >= warmup_steps:
        return end
    return start + (end - start) * step / warmup_steps


def momentum_schedule(step: int, total: int, *, start: float = 0.992, end: float = 1.0) -> float:
    """The teacher's EMA momentum: cosine from ``start`` to ``end`` over ``total`` steps (DINOv2's 0.992 -> 1)."""
    return cosine_schedule(start, end, step, total)


@torch.no_grad()
def ema_update(teacher: nn.Module, student: nn.Module, momentum: float) -> None:
    """Move the teacher towards the student: ``t = m * t + (1 - m) * s`` per parameter; copy the buffers.

    Parameters and buffers are matched by name, so teacher and student must have the same parameter names
    (build them from the same config; unwrap DDP/compile wrappers first). Student entries without a
    teacher counterpart (e.g. adapters trained only in the student) are skipped, and so are the student's
    frozen parameters: they never change, and ``m t + (1 - m) t`` is not always ``t`` in floating point, so a
    frozen weight (ExPLoRA, LoRA) stays bit-identical in the teacher too.

    Args:
        teacher: The EMA model (updated in place).
        student: The trained model.
        momentum: ``m`` in ``[0, 1]``; 1 keeps the teacher, 0 copies the student.
    """
    if not 0 <= momentum <= 1:
        raise ValueError(f"momentum must be in [0, 1], got {momentum}")
    own = dict(teacher.named_parameters())
    pairs = [(own[name], p.detach()) for name, p in student.named_parameters() if name in own and p.requires_grad]
    if pairs:
        t_params, s_params = (list(group) for group in zip(*pairs, strict=True))
        torch._foreach_mul_(t_params, momentum)
        torch._foreach_add_(t_params, s_params, alpha=1.0 - momentum)
    buffers = dict(teacher.named_buffers())
    for name, b in student.named_buffers():
        if name in buffers:
            buffers[name].copy_(b)
