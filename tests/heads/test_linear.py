import pytest
import torch
from tiny_models import step_and_compare, tiny_2d, tiny_3d

from medvit.heads import ClassificationHead, LinearClassifier, LinearSegProbe


@pytest.mark.parametrize("pool", ["avg", "cls"])
def test_classifier_shapes_and_backward(backbone_and_input, pool):
    backbone, x = backbone_and_input
    model = LinearClassifier(backbone, 5, pool=pool)
    logits = model(x)
    assert logits.shape == (x.shape[0], 5)
    logits.sum().backward()
    assert backbone.blocks[0].attn.qkv.weight.grad is not None
    probs = model.predict(x)
    torch.testing.assert_close(probs.sum(1), torch.ones(x.shape[0]))


def test_pooling_matches_retfound_recipe():
    head = ClassificationHead(8, 3, num_prefix_tokens=1, pool="avg")
    tokens = torch.randn(2, 5, 8)
    expected = head.head(head.fc_norm(tokens[:, 1:].mean(1)))
    torch.testing.assert_close(head(tokens), expected)
    assert head.head.weight.std() < 1e-4  # trunc_normal std 2e-5
    cls = ClassificationHead(8, 3, pool="cls", fc_norm=False)
    torch.testing.assert_close(cls(tokens), cls.head(tokens[:, 0]))


def test_multi_label_probe_trains_only_head():
    b = tiny_2d()
    model = LinearClassifier(b, 4, multi_label=True, freeze_backbone=True)
    x = torch.randn(2, 3, 32, 32)
    y = torch.tensor([[1.0, 0, 1, 0], [0, 1, 1, 1]])
    assert isinstance(model.criterion(), torch.nn.BCEWithLogitsLoss)
    p = model.predict(x)
    assert p.shape == (2, 4) and ((p > 0) & (p < 1)).all()
    names = [n for n, _ in model.named_parameters()]
    frozen = [n for n in names if n.startswith("backbone.")]
    head = [n for n in names if n.startswith("head.")]
    step_and_compare(model, lambda m: m.criterion()(m(x), y), frozen, head)


@pytest.mark.parametrize(
    "make, x", [(tiny_2d, torch.randn(2, 3, 32, 32)), (tiny_3d, torch.randn(2, 1, 16, 16, 16))]
)
def test_seg_probe_shapes_and_freezing(make, x):
    model = LinearSegProbe(make(), 3, indices=(-2, -1))
    out = model(x)
    assert out.shape == (x.shape[0], 3, *x.shape[2:])
    names = [n for n, _ in model.named_parameters()]
    frozen = [n for n in names if n.startswith("backbone.")]
    probe = [n for n in names if not n.startswith("backbone.")]
    step_and_compare(model, lambda m: m(x).pow(2).mean(), frozen, probe)


def test_bad_arguments():
    b = tiny_2d(depth=1)
    with pytest.raises(ValueError, match="pool"):
        LinearClassifier(b, 2, pool="max")
    with pytest.raises(ValueError, match="num_classes"):
        LinearClassifier(b, 0)
    with pytest.raises(ValueError, match="CLS"):
        ClassificationHead(8, 2, num_prefix_tokens=0, pool="cls")
    with pytest.raises(ValueError, match="indices"):
        LinearSegProbe(b, 2, indices=())
