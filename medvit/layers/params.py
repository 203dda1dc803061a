"""Module utilities every model part shares: parameter counts, freezing, and removing forward hooks."""

from __future__ import annotations

from torch import nn


def count_parameters(module: nn.Module) -> tuple[int, int]:
    """``(trainable, total)`` parameter counts of ``module`` (shared parameters counted once)."""
    trainable = total = 0
    for p in module.parameters():
        total += p.numel()
        if p.requires_grad:
            trainable += p.numel()
    return trainable, total


def parameter_report(module: nn.Module) -> dict[str, float]:
    """Trainable and total parameters and the trainable percentage, as plain data for logs."""
    trainable, total = count_parameters(module)
    return {"trainable": trainable, "total": total, "trainable_pct": 100.0 * trainable / max(total, 1)}


def freeze(module: nn.Module) -> nn.Module:
    """Stop gradients for every parameter of ``module``; returns it."""
    for p in module.parameters():
        p.requires_grad_(False)
    return module


def unfreeze(module: nn.Module) -> nn.Module:
    """Let every parameter of ``module`` receive gradients; returns it."""
    for p in module.parameters():
        p.requires_grad_(True)
    return module


def remove_hooks(module: nn.Module, fn: object) -> None:
    """Remove every forward hook of ``module`` that is ``fn`` (copies of a model carry their own hooks)."""
    for key in [k for k, hook in module._forward_hooks.items() if hook is fn]:
        del module._forward_hooks[key]
