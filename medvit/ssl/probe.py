"""A weighted k-nearest-neighbour probe of frozen backbone features (Wu et al., "Unsupervised Feature Learning
via Non-Parametric Instance Discrimination", CVPR 2018; as evaluated by DINO, Caron et al., ICCV 2021).

:func:`extract_features` runs a frozen backbone over a loader; :func:`knn_accuracy` classifies query features by
the cosine-similarity-weighted votes of their ``k`` nearest training features; :class:`KnnProbe` does both on a
labelled classification data card (train split = memory bank, val split = queries), so that self-supervised
pre-training can report how linearly useful its features are without training a head.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from medvit.data.cards import DataCard, load_card
from medvit.errors import ConfigError, InputError
from medvit.transforms.presets import TransformsSpec, parse_transforms

_QUERY_CHUNK = 256  # queries scored at once: bounds the [chunk, bank] similarity matrix


def extract_features(
    backbone: nn.Module, loader, *, device: torch.device | str | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Frozen pooled features ``forward_head(forward_features(x), pre_logits=True)`` of every batch.

    The backbone runs in eval mode under :func:`torch.inference_mode`; the train/eval mode of each of its
    modules is restored afterwards, also when a batch fails.

    Args:
        backbone: A model with medvit's backbone contract (:class:`~medvit.backbones.vit.VisionTransformer`).
        loader: Batches of dicts with ``image`` ``[B, C, *S]`` and ``label`` ``[B]`` (class indices).
        device: Where the images go; default: the device of the backbone's parameters.

    Returns:
        ``(features [N, D] float32, labels [N] long)``, both on the CPU.

    Raises:
        InputError: A batch without ``image`` or ``label``, or a loader without batches.
    """
    if device is None:
        first = next(backbone.parameters(), None)
        device = first.device if first is not None else torch.device("cpu")
    modes = [(m, m.training) for m in backbone.modules()]
    features, labels = [], []
    backbone.eval()
    try:
        with torch.inference_mode():
            for batch in loader:
                missing = [k for k in ("image", "label") if k not in batch]
                if missing:
                    raise InputError(f"extract_features: a batch has no {', '.join(missing)}")
                images = batch["image"]
                images = images.as_tensor() if hasattr(images, "as_tensor") else images  # MetaTensor -> Tensor
                pooled = backbone.forward_head(backbone.forward_features(images.to(device)), pre_logits=True)
                features.append(pooled.float().cpu())
                labels.append(torch.as_tensor(batch["label"]).reshape(-1).long().cpu())
    finally:
        for module, training in modes:
            module.train(training)
    if not features:
        raise InputError("extract_features: the loader yielded no batches")
    return torch.cat(features), torch.cat(labels)


def knn_accuracy(
    train_features: torch.Tensor,
    train_labels: torch.Tensor,
    query_features: torch.Tensor,
    query_labels: torch.Tensor,
    *,
    k: int = 20,
    temperature: float = 0.07,
    num_classes: int | None = None,
) -> float:
    """Top-1 accuracy of DINO's weighted k-NN classifier.

    Features are L2-normalised; each query takes its ``k`` most cosine-similar training features (``k`` capped
    at the bank size), each voting for its class with weight ``exp(similarity / temperature)``; the class with
    the largest sum wins (ties: the lower class index).

    Args:
        train_features: The memory bank ``[N, D]``.
        train_labels: Its class indices ``[N]``.
        query_features: The features to classify ``[M, D]``.
        query_labels: Their true class indices ``[M]``.
        k: Neighbours that vote.
        temperature: Softness of the vote weights.
        num_classes: Classes; default: the largest label seen plus one.

    Returns:
        The fraction of queries classified correctly, in [0, 1].

    Raises:
        ConfigError: ``k`` or ``temperature`` not positive.
        InputError: Empty or mismatching features and labels.
    """
    if k < 1:
        raise ConfigError(f"k: must be at least 1, got {k}")
    if temperature <= 0:
        raise ConfigError(f"temperature: must be positive, got {temperature}")
    bank, queries = train_features.float(), query_features.float()
    bank_labels, query_labels = train_labels.reshape(-1).long(), query_labels.reshape(-1).long()
    if bank.ndim != 2 or queries.ndim != 2 or bank.shape[1] != queries.shape[1]:
        raise InputError(
            f"knn_accuracy: features must be [N, D] and [M, D], got {list(bank.shape)}, {list(queries.shape)}"
        )
    if len(bank) == 0 or len(queries) == 0:
        raise InputError(f"knn_accuracy: needs training and query features, got {len(bank)} and {len(queries)}")
    if len(bank_labels) != len(bank) or len(query_labels) != len(queries):
        raise InputError(
            f"knn_accuracy: {len(bank)} training features with {len(bank_labels)} labels, "
            f"{len(queries)} queries with {len(query_labels)} labels"
        )
    if min(int(bank_labels.min()), int(query_labels.min())) < 0:
        raise InputError("knn_accuracy: class indices must be 0 or more")
    seen = max(int(bank_labels.max()), int(query_labels.max())) + 1
    num_classes = seen if num_classes is None else num_classes
    if num_classes < seen:
        raise InputError(f"knn_accuracy: class index {seen - 1} is outside num_classes {num_classes}")
    bank, queries = F.normalize(bank, dim=1), F.normalize(queries, dim=1)
    k = min(k, len(bank))
    correct = 0
    for start in range(0, len(queries), _QUERY_CHUNK):
        chunk = queries[start : start + _QUERY_CHUNK]
        similarity, index = (chunk @ bank.T).topk(k, dim=1)  # [B, k]
        weights = (similarity / temperature).exp()
        votes = torch.zeros(len(chunk), num_classes, dtype=weights.dtype)
        votes.scatter_add_(1, bank_labels[index], weights)
        correct += int((votes.argmax(dim=1) == query_labels[start : start + _QUERY_CHUNK]).sum())
    return correct / len(queries)


class KnnProbe:
    """k-NN accuracy of a backbone's frozen features on a labelled classification card.

    The memory bank is the card's train split, the queries its val split, both through the val transforms
    (no augmentation). The data module and loaders are built on the first :meth:`run` and reused.

    Args:
        card: A classification data card (name, path or :class:`DataCard`).
        root: Folder the card's files are in (``None`` for synthetic cards).
        transforms: The pipeline's ``transforms:`` mapping (or spec) the backbone's inputs need.
        batch_size: Images per forward pass.
        k: Neighbours that vote.
        temperature: Softness of the vote weights.
        limit_cases: Use only the first ``limit_cases`` cases of each split (smoke runs).
        seed: Seed of the data module (splits are the card's).
        num_workers: Loader worker processes.

    Raises:
        ConfigError: A card whose task is not classification, or a bad option.
    """

    def __init__(
        self,
        card: DataCard | str,
        *,
        root: str | None = None,
        transforms: TransformsSpec | dict[str, Any],
        batch_size: int = 32,
        k: int = 20,
        temperature: float = 0.07,
        limit_cases: int | None = None,
        seed: int = 0,
        num_workers: int = 0,
    ) -> None:
        self.card = card if isinstance(card, DataCard) else load_card(card)
        if self.card.task != "classification":
            raise ConfigError(
                f"card {self.card.name!r}: the k-NN probe needs a classification card, not a {self.card.task} one"
            )
        for name, value in (("k", k), ("batch_size", batch_size)):
            if value < 1:
                raise ConfigError(f"{name}: must be at least 1, got {value}")
        if temperature <= 0:
            raise ConfigError(f"temperature: must be positive, got {temperature}")
        if limit_cases is not None and limit_cases < 1:
            raise ConfigError(f"limit_cases: must be at least 1, got {limit_cases}")
        self.root, self.transforms = root, parse_transforms(transforms)
        self.batch_size, self.k, self.temperature = batch_size, k, temperature
        self.limit_cases, self.seed, self.num_workers = limit_cases, seed, num_workers
        self._datamodule = None
        self._loaders: dict[str, Any] = {}

    @property
    def datamodule(self):
        """The card's :class:`~medvit.data.datamodule.MedvitDataModule` (labelled), built on first use."""
        if self._datamodule is None:
            from medvit.data.datamodule import MedvitDataModule  # lazy: Lightning only when the probe runs

            self._datamodule = MedvitDataModule(
                self.card,
                root=self.root,
                transforms=self.transforms,
                batch_size=self.batch_size,
                val_batch_size=self.batch_size,
                num_workers=self.num_workers,
                limit_cases=self.limit_cases,
                seed=self.seed,
            )
        return self._datamodule

    def _splits(self) -> dict[str, list[dict]]:
        dm = self.datamodule
        if dm.datalist is None:
            dm.setup("validate")  # finds and splits the cases; reads no image
        if not dm.datalist["val"]:
            raise InputError(f"card {self.card.name!r}: the k-NN probe needs val cases (its queries); found none")
        return dm.datalist

    def _loader(self, split: str):
        """Deterministic batches of one split through the val transforms (the bank: train, unaugmented)."""
        if split not in self._loaders:
            from monai.data import DataLoader, Dataset, list_data_collate  # lazy: MONAI only when the probe runs

            dataset = Dataset(self._splits()[split], self.datamodule.transforms_for("val"))
            self._loaders[split] = DataLoader(
                dataset,
                batch_size=self.batch_size,
                shuffle=False,
                num_workers=self.num_workers,
                collate_fn=list_data_collate,
            )
        return self._loaders[split]

    def check(self) -> None:
        """Read the card's cases and the first case of every split (the pipeline's ``--check``).

        Raises:
            InputError: One line naming the card and the case of the first problem, or no val cases.
        """
        self.datamodule.check()
        self._splits()

    def run(self, backbone: nn.Module, device: torch.device | str | None = None) -> float:
        """The k-NN top-1 accuracy (in [0, 1]) of ``backbone``'s frozen features on the val split.

        Args:
            backbone: A model with medvit's backbone contract; its train/eval modes are left as they were.
            device: Where the images go; default: the device of the backbone's parameters.
        """
        bank, bank_labels = extract_features(backbone, self._loader("train"), device=device)
        queries, query_labels = extract_features(backbone, self._loader("val"), device=device)
        return knn_accuracy(
            bank,
            bank_labels,
            queries,
            query_labels,
            k=self.k,
            temperature=self.temperature,
            num_classes=len(self.card.labels),
        )
