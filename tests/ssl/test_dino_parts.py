"""DINO / iBOT parts: head, centred losses, KoLeo, block masks, schedules and the EMA update."""

from __future__ import annotations

import math

import pytest
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from medvit.ssl.dino import (
    DINOHead,
    DINOLoss,
    IBOTPatchLoss,
    block_masks,
    cosine_schedule,
    ema_update,
    koleo_loss,
    momentum_schedule,
    teacher_temp_schedule,
)


def _gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


# ---------------------------------------------------------------- head


def test_head_shapes_and_init():
    head = DINOHead(32, out_dim=64, hidden_dim=48, bottleneck_dim=16)
    assert head(torch.randn(2, 5, 32)).shape == (2, 5, 64)
    assert DINOHead(32, out_dim=10, bottleneck_dim=8, nlayers=1)(torch.randn(3, 32)).shape == (3, 10)
    linears = [m for m in head.modules() if isinstance(m, nn.Linear)]
    assert len(linears) == 4 and head.last_layer.bias is None
    assert all(torch.count_nonzero(m.bias) == 0 for m in linears if m.bias is not None)
    assert all(0.015 < float(m.weight.detach().std()) < 0.025 for m in linears)  # trunc-normal, std 0.02
    with pytest.raises(ValueError):
        DINOHead(8, nlayers=0)


def test_head_rows_are_normalised():
    head = DINOHead(16, out_dim=12, hidden_dim=24, bottleneck_dim=8)
    x = torch.randn(4, 16)
    before = head(x)
    assert before.abs().max() <= 1 + 1e-5  # cosine similarity to the prototypes
    with torch.no_grad():
        head.last_layer.weight.mul_(torch.rand(12, 1) * 10 + 0.1)
    torch.testing.assert_close(head(x), before)


# ---------------------------------------------------------------- DINO loss


def _dino_reference(students, teachers, center, t_temp, s_temp):
    total, pairs = 0.0, 0
    for q, t in enumerate(teachers):
        p = F.softmax((t - center) / t_temp, dim=-1)
        for v, s in enumerate(students):
            if v == q:
                continue
            total = total + (-(p * F.log_softmax(s / s_temp, dim=-1)).sum(dim=-1)).mean()
            pairs += 1
    return total / pairs


def test_dino_loss_matches_reference():
    torch.manual_seed(0)
    loss = DINOLoss(7, student_temp=0.1, center_momentum=0.9)
    loss.center.copy_(torch.randn(1, 7) * 0.1)
    students = [torch.randn(3, 7) for _ in range(5)]
    teachers = [torch.randn(3, 7) for _ in range(2)]
    want = _dino_reference(students, teachers, loss.center, 0.05, 0.1)
    torch.testing.assert_close(loss(students, teachers, 0.05), want)


def test_dino_loss_known_values_and_gradient():
    k = 6
    loss = DINOLoss(k, student_temp=0.1)
    zeros = [torch.zeros(2, k) for _ in range(4)]
    torch.testing.assert_close(loss(zeros, zeros[:2], 0.1), torch.tensor(math.log(k)))
    # student view v equal to teacher view q != v, same temperatures, zero centre: the gradient vanishes
    a, b = torch.randn(2, k), torch.randn(2, k)
    students = [b.clone().requires_grad_(), a.clone().requires_grad_()]
    loss(students, [a, b], 0.1).backward()
    for s in students:
        torch.testing.assert_close(s.grad, torch.zeros_like(s.grad), atol=1e-6, rtol=0)


def test_teacher_gets_no_gradient():
    loss = DINOLoss(5)
    teacher = torch.randn(2, 5, requires_grad=True)
    student = torch.randn(2, 5, requires_grad=True)
    loss([student, student * 2], [teacher, teacher * 3], 0.04).backward()
    assert teacher.grad is None and student.grad is not None


def test_center_update_and_state_dict():
    loss = DINOLoss(4, center_momentum=0.9)
    loss.center.fill_(1.0)
    teachers = [torch.randn(3, 4), torch.randn(3, 4)]
    mean = torch.cat(teachers).mean(dim=0, keepdim=True)
    loss.update_center(teachers)
    torch.testing.assert_close(loss.center, 0.9 + 0.1 * mean)
    state = loss.state_dict()
    assert set(state) == {"center"}
    fresh = DINOLoss(4)
    fresh.load_state_dict(state)
    torch.testing.assert_close(fresh.center, loss.center)


def test_center_update_all_reduces(tmp_path):
    assert not dist.is_initialized()
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'pg'}", rank=0, world_size=1)
    try:
        loss = IBOTPatchLoss(3, center_momentum=0.5)
        rows = torch.randn(5, 3)
        loss.update_center(rows)
        torch.testing.assert_close(loss.center, 0.5 * rows.mean(dim=0, keepdim=True))
    finally:
        dist.destroy_process_group()


def test_center_kept_without_rows():
    loss = IBOTPatchLoss(3)
    loss.center.fill_(2.0)
    loss.update_center(torch.zeros(0, 3))
    torch.testing.assert_close(loss.center, torch.full((1, 3), 2.0))


# ---------------------------------------------------------------- iBOT loss


def test_ibot_loss_matches_reference():
    torch.manual_seed(1)
    loss = IBOTPatchLoss(9, student_temp=0.1)
    loss.center.copy_(torch.randn(1, 9) * 0.1)
    student, teacher = torch.randn(7, 9), torch.randn(7, 9)
    weights = torch.tensor([1 / 3] * 3 + [1 / 4] * 4)  # image 0 has 3 masked tokens, image 1 has 4
    want = 0.0
    for i in range(7):
        p = F.softmax((teacher[i] - loss.center[0]) / 0.06, dim=-1)
        want = want + weights[i] * -(p * F.log_softmax(student[i] / 0.1, dim=-1)).sum()
    want = want / 4  # 4 global crops in the batch, two of them unmasked
    torch.testing.assert_close(loss(student, teacher, 0.06, weights, 4), want)
    empty = torch.zeros(0, 9, requires_grad=True)
    out = loss(empty, torch.zeros(0, 9), 0.06, torch.zeros(0), 2)
    assert out.item() == 0.0 and out.requires_grad


# ---------------------------------------------------------------- KoLeo


def test_koleo_prefers_spread_points():
    spread = torch.eye(8)
    clustered = torch.ones(8, 8) + 0.01 * torch.randn(8, 8, generator=_gen())
    assert koleo_loss(spread) < koleo_loss(clustered)
    # orthonormal rows: every nearest neighbour is at distance sqrt(2)
    torch.testing.assert_close(koleo_loss(spread), torch.tensor(-math.log(math.sqrt(2))), atol=1e-5, rtol=0)
    x = torch.randn(6, 4, requires_grad=True)
    koleo_loss(x).backward()
    assert torch.isfinite(x.grad).all()
    with pytest.raises(ValueError):
        koleo_loss(torch.randn(1, 4))


# ---------------------------------------------------------------- masks


@pytest.mark.parametrize("grid", [(14, 14), (6, 10), (4, 5, 6)])
def test_block_masks_ratios_and_coverage(grid):
    n = math.prod(grid)
    masks = block_masks(40, grid, ratio_range=(0.1, 0.5), probability=0.5, generator=_gen())
    assert masks.shape == (40, n) and masks.dtype == torch.bool
    ratio = masks.sum(dim=1) / n
    masked = ratio > 0
    assert int(masked.sum()) == 20
    assert (ratio[masked] >= 0.1).all() and (ratio[masked] <= 0.5).all()


def test_block_masks_are_blocky():
    masks = block_masks(8, (14, 14), ratio_range=(0.3, 0.4), probability=1.0, generator=_gen(2)).view(8, 14, 14)
    padded = F.pad(masks.float(), (1, 1, 1, 1))
    neighbours = padded[:, :-2, 1:-1] + padded[:, 2:, 1:-1] + padded[:, 1:-1, :-2] + padded[:, 1:-1, 2:]
    isolated = (masks & (neighbours == 0)).sum() / masks.sum()
    assert isolated < 0.05


def test_block_masks_all_none_and_deterministic():
    assert not block_masks(5, (4, 4), probability=0.0).any()
    assert (block_masks(5, (4, 4), probability=1.0).sum(dim=1) > 0).all()
    a = block_masks(6, (3, 4, 5), probability=0.5, generator=_gen(3))
    torch.testing.assert_close(a, block_masks(6, (3, 4, 5), probability=0.5, generator=_gen(3)))
    with pytest.raises(ValueError):
        block_masks(2, (4, 4), ratio_range=(0.6, 0.2))


# ---------------------------------------------------------------- schedules


def test_cosine_schedule():
    assert cosine_schedule(1.0, 0.0, 0, 100) == 1.0
    assert cosine_schedule(1.0, 0.0, 50, 100) == pytest.approx(0.5)
    assert cosine_schedule(1.0, 0.0, 100, 100) == pytest.approx(0.0)
    assert cosine_schedule(1.0, 0.0, 500, 100) == pytest.approx(0.0)
    assert cosine_schedule(1.0, 0.0, 0, 110, warmup_steps=10) == 0.0
    assert cosine_schedule(1.0, 0.0, 5, 110, warmup_steps=10, warmup_start=0.5) == pytest.approx(0.75)
    assert cosine_schedule(1.0, 0.0, 10, 110, warmup_steps=10) == pytest.approx(1.0)
    assert cosine_schedule(1.0, 0.0, 60, 110, warmup_steps=10) == pytest.approx(0.5)
    with pytest.raises(ValueError):
        cosine_schedule(1.0, 0.0, 0, 10, warmup_steps=10)


def test_teacher_temp_and_momentum_schedules():
    assert teacher_temp_schedule(0, warmup_steps=100) == pytest.approx(0.04)
    assert teacher_temp_schedule(50, warmup_steps=100) == pytest.approx(0.055)
    assert teacher_temp_schedule(100, warmup_steps=100) == pytest.approx(0.07)
    assert teacher_temp_schedule(10**6, warmup_steps=100) == pytest.approx(0.07)
    assert teacher_temp_schedule(0, warmup_steps=0) == pytest.approx(0.07)
    assert momentum_schedule(0, 1000) == pytest.approx(0.992)
    assert momentum_schedule(500, 1000) == pytest.approx(0.996)
    assert momentum_schedule(1000, 1000) == pytest.approx(1.0)


# ---------------------------------------------------------------- EMA


class _Tiny(nn.Module):
    def __init__(self, extra: bool = False) -> None:
        super().__init__()
        self.fc = nn.Linear(3, 2)
        self.register_buffer("stat", torch.zeros(2))
        if extra:
            self.adapter = nn.Parameter(torch.ones(2))


def test_ema_update():
    teacher, student = _Tiny(), _Tiny(extra=True)
    student.stat.fill_(5.0)
    t0 = {k: v.clone() for k, v in teacher.state_dict().items()}
    ema_update(teacher, student, 1.0)
    torch.testing.assert_close(teacher.fc.weight, t0["fc.weight"])
    torch.testing.assert_close(teacher.stat, torch.full((2,), 5.0))
    ema_update(teacher, student, 0.75)
    torch.testing.assert_close(teacher.fc.weight, 0.75 * t0["fc.weight"] + 0.25 * student.fc.weight)
    ema_update(teacher, student, 0.0)
    torch.testing.assert_close(teacher.fc.weight, student.fc.weight)
    torch.testing.assert_close(teacher.fc.bias, student.fc.bias)
    assert not hasattr(teacher, "adapter") and not teacher.fc.weight.grad_fn
    with pytest.raises(ValueError):
        ema_update(teacher, student, 1.5)
