"""The k-NN probe: DINO's weighted vote, frozen feature extraction, and KnnProbe on a synthetic card."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

import medvit
from medvit.errors import ConfigError, InputError
from medvit.ssl.probe import KnnProbe, extract_features, knn_accuracy

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(autouse=True)
def cache(monkeypatch):
    monkeypatch.setenv("MEDVIT_CACHE", str(REPO / ".pytest_cache" / "medvit"))


def _tiny():
    return medvit.create_backbone("vit_tiny_patch16", img_size=(64, 64), embed_dim=48, depth=2, num_heads=2)


def _clusters(n_per_class: int, num_classes: int = 3, dim: int = 8, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    centres = torch.eye(dim)[:num_classes] * 5
    labels = torch.arange(num_classes).repeat_interleave(n_per_class)
    return centres[labels] + 0.3 * torch.randn(len(labels), dim, generator=g), labels


def test_separable_clusters_are_all_right():
    bank, bank_labels = _clusters(20)
    queries, query_labels = _clusters(10, seed=1)
    assert knn_accuracy(bank, bank_labels, queries, query_labels) == 1.0
    assert knn_accuracy(bank, bank_labels, queries, query_labels, k=1, temperature=0.5, num_classes=5) == 1.0


def test_random_labels_give_chance():
    g = torch.Generator().manual_seed(0)
    bank, queries = torch.randn(2000, 16, generator=g), torch.randn(2000, 16, generator=g)
    bank_labels, query_labels = (
        torch.randint(0, 4, (2000,), generator=g),
        torch.randint(0, 4, (2000,), generator=g),
    )
    assert 0.18 < knn_accuracy(bank, bank_labels, queries, query_labels) < 0.32


def test_k_above_the_bank_size():
    bank, bank_labels = _clusters(1)  # three features
    queries, query_labels = _clusters(4, seed=2)
    accuracy = knn_accuracy(bank, bank_labels, queries, query_labels, k=20)
    assert accuracy == 1.0  # the nearest one outweighs the other two at T = 0.07


def test_weights_decide_against_the_majority():
    bank = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.0, 1.0]])
    bank_labels = torch.tensor([0, 1, 1])
    query = torch.tensor([[1.0, 0.05]])
    assert knn_accuracy(bank, bank_labels, query, torch.tensor([0]), k=3) == 1.0  # exp(1/T) >> 2 exp(0.05/T)
    assert knn_accuracy(bank, bank_labels, query, torch.tensor([1]), k=3, temperature=100.0) == 1.0  # near-equal


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"k": 0}, ConfigError, r"^k: must be at least 1"),
        ({"temperature": 0.0}, ConfigError, r"^temperature: must be positive"),
        ({"num_classes": 2}, InputError, r"class index 2 is outside num_classes 2"),
    ],
)
def test_bad_arguments(kwargs, error, match):
    bank, labels = _clusters(2)
    with pytest.raises(error, match=match):
        knn_accuracy(bank, labels, bank, labels, **kwargs)


def test_bad_features():
    bank, labels = _clusters(2)
    with pytest.raises(InputError, match=r"features must be \[N, D\] and \[M, D\]"):
        knn_accuracy(bank, labels, bank[:, :4], labels)
    with pytest.raises(InputError, match=r"needs training and query features, got 0 and 6"):
        knn_accuracy(bank[:0], labels[:0], bank, labels)
    with pytest.raises(InputError, match=r"6 training features with 5 labels"):
        knn_accuracy(bank, labels[:5], bank, labels)


def test_extract_features_restores_every_mode():
    backbone = _tiny().train()
    backbone.blocks[0].eval()  # a frozen part stays in eval mode
    loader = [{"image": torch.randn(2, 3, 64, 64), "label": torch.tensor([0, 1])} for _ in range(3)]
    features, labels = extract_features(backbone, loader)
    assert features.shape == (6, 48) and features.dtype == torch.float32 and features.device.type == "cpu"
    assert labels.tolist() == [0, 1] * 3 and not features.requires_grad
    assert backbone.training and backbone.blocks[1].training and not backbone.blocks[0].training
    with pytest.raises(InputError, match=r"a batch has no label"):
        extract_features(backbone, [{"image": torch.randn(1, 3, 64, 64)}])
    assert backbone.training and not backbone.blocks[0].training
    with pytest.raises(InputError, match=r"the loader yielded no batches"):
        extract_features(backbone, [])


def test_features_are_the_pre_logits_pooled_tokens():
    backbone = medvit.create_backbone(
        "vit_tiny_patch16", img_size=(64, 64), embed_dim=48, depth=2, num_heads=2, num_classes=5
    ).eval()
    x = torch.randn(2, 3, 64, 64)
    features, _ = extract_features(backbone, [{"image": x, "label": torch.tensor([1, 2])}])
    with torch.no_grad():
        expected = backbone.forward_head(backbone.forward_features(x), pre_logits=True)
    assert features.shape == (2, 48) and torch.allclose(features, expected, atol=1e-6)


def test_probe_on_a_synthetic_card():
    torch.manual_seed(0)
    probe = KnnProbe("synthetic_cls", transforms={"preset": "photo"}, batch_size=4, k=5, limit_cases=8)
    probe.check()
    backbone = _tiny()
    accuracy = probe.run(backbone)
    assert isinstance(accuracy, float) and 0.0 <= accuracy <= 1.0
    assert backbone.training  # left as it was
    assert probe.run(backbone) == accuracy  # deterministic: no augmentation in the bank or the queries
    assert len(probe.datamodule.datalist["train"]) == 8


def test_probe_refuses_other_cards():
    with pytest.raises(ConfigError, match=r"^card 'synthetic_fundus': the k-NN probe needs a classification card"):
        KnnProbe("synthetic_fundus", transforms={"preset": "fundus"})
    with pytest.raises(ConfigError, match=r"^k: must be at least 1"):
        KnnProbe("synthetic_cls", transforms={"preset": "photo"}, k=0)
