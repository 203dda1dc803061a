"""UrFound (Yu et al., "UrFound: Towards Universal Retinal Foundation Models via Knowledge-Guided Masked
Modeling", MICCAI 2024): the ViT-B/16 encoder of the pre-training checkpoint.

The pre-training file is ``{'model', 'optimizer', 'epoch', 'scaler', 'args'}``; ``args`` is a pickled
``argparse.Namespace``, so it needs ``trust_pickle=True``. Besides the encoder it carries the MAE decoder,
``mask_token`` and the BERT branch (``bert_encoder.*``, ``bert_mlp.*``), all dropped. The export writes
``{'model': state_dict}`` (RETFound's ``export_mae``), without the pickled ``args``.
"""

from __future__ import annotations

from typing import Any

from medvit.backbones.registry import Family, PretrainedCfg, register
from medvit.backbones.retfound import IMAGENET_MEAN, IMAGENET_STD, export_mae, normalise_mae

URFOUND_DROPS = ("mask_token", "decoder_*", "decoder.*", "bert_*")

URFOUND = Family("UrFound", normalise_mae, URFOUND_DROPS, export=export_mae)


@register(
    arch="vit_base_patch16",
    cfg=PretrainedCfg(
        name="vit_base_patch16.urfound",
        input_size=(3, 224, 224),
        mean=IMAGENET_MEAN,
        std=IMAGENET_STD,
        license="unspecified by the authors (check https://github.com/yukkai/UrFound)",
        paper="Yu et al., UrFound: Towards Universal Retinal Foundation Models via Knowledge-Guided Masked "
        "Modeling, MICCAI 2024",
        source="https://github.com/yukkai/UrFound (ViT-B weights announced in issue #1; no link in the README)",
        file_names=("urfound.pth", "UrFound.pth", "checkpoint-best.pth"),
        layout="{'model': state_dict, 'args': Namespace, ...} with decoder_*, mask_token, bert_* keys",
        notes="the file pickles argparse args: load with trust_pickle=True if you trust it",
    ),
    family=URFOUND,
)
def urfound() -> dict[str, Any]:
    """UrFound ViT-B/16 encoder (MAE + knowledge-guided masked modelling) for fundus and OCT images."""
    return dict(embed_dim=768, depth=12, num_heads=12, patch_size=16, pos_embed="sincos")
