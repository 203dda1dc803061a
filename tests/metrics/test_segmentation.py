import pytest
import torch

from medvit.metrics import dice, hd95


def test_dice_and_hd95_through_monai():
    target = torch.zeros(1, 16, 16, dtype=torch.long)
    target[0, 4:10, 4:10] = 1
    pred = target.clone()
    pred[0, 4:10, 8:10] = 2
    d = dice(pred, target, num_classes=3)
    assert d.shape == (1, 2)
    assert d[0, 0].item() == pytest.approx(2 * 24 / 60)
    assert torch.isnan(d[0, 1])  # class 2 absent from the truth
    assert dice(target, target, num_classes=2)[0, 0].item() == 1.0
    with pytest.warns(UserWarning):
        h = hd95(pred, target, num_classes=3)
    assert h[0, 0].item() == pytest.approx(2.0)


def test_bad_shape():
    with pytest.raises(ValueError, match="labels"):
        dice(torch.zeros(4, dtype=torch.long), torch.zeros(4, dtype=torch.long), num_classes=2)
