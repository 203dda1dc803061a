import pytest
from torch import nn

from medvit.layers.params import count_parameters, freeze, parameter_report, remove_hooks, unfreeze


def test_count_and_freeze():
    m = nn.Sequential(nn.Linear(3, 4), nn.Linear(4, 2))
    assert count_parameters(m) == (26, 26)
    freeze(m[0])
    assert count_parameters(m) == (10, 26)
    assert parameter_report(m)["trainable_pct"] == pytest.approx(100 * 10 / 26)
    unfreeze(m)
    assert count_parameters(m) == (26, 26)


def test_remove_hooks_removes_only_that_function():
    m = nn.Linear(2, 2)

    def hook(module, args, output):
        return output

    def other(module, args, output):
        return output

    m.register_forward_hook(hook)
    m.register_forward_hook(other)
    remove_hooks(m, hook)
    assert list(m._forward_hooks.values()) == [other]


def test_adapters_reexport_the_public_helpers():
    import medvit.adapters

    assert medvit.adapters.count_parameters is count_parameters
    assert medvit.adapters.freeze is freeze
