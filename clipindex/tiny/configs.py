"""Architectures of the three tiny CLIP backbones (open_clip ``model_cfg`` templates).

The text tower's ``vocab_size`` is filled in at training time from the compact vocabulary
(see :mod:`clipindex.tiny.tokenizer`); everything else here is the architecture. The three
differ on purpose so that their errors differ and a majority vote means something:

- ``tiny-vit``: VisionTransformer, 96 px, patch 12 (8×8 tokens), width 64, 3 layers;
- ``tiny-rn``: ModifiedResNet, 128 px, layers [1, 1, 1, 1], width 8, so ``layer4`` keeps a
  4×4 map for Grad-CAM;
- ``tiny-vit-s``: a smaller VisionTransformer at 48 px, patch 6, width 48, 2 layers, with a
  48-d embedding.
"""

from __future__ import annotations

import copy
from typing import Any

__all__ = ["ARCHITECTURES", "CONTEXT_LENGTH", "model_cfg"]

# Captions of the demo world are <= 22 tokens; 24 leaves room for the longer ImageNet prompts.
CONTEXT_LENGTH = 24

_TEXT = {"context_length": CONTEXT_LENGTH, "width": 64, "heads": 4, "layers": 2}

ARCHITECTURES: dict[str, dict[str, Any]] = {
    "tiny-vit": {
        "embed_dim": 64,
        "vision_cfg": {
            "image_size": 96, "patch_size": 12, "width": 64, "layers": 3, "head_width": 32,
        },
        "text_cfg": _TEXT,
    },
    "tiny-rn": {
        "embed_dim": 64,
        "vision_cfg": {"image_size": 128, "layers": [1, 1, 1, 1], "width": 8, "head_width": 32},
        "text_cfg": _TEXT,
    },
    "tiny-vit-s": {
        "embed_dim": 48,
        "vision_cfg": {
            "image_size": 48, "patch_size": 6, "width": 48, "layers": 2, "head_width": 24,
        },
        "text_cfg": {**_TEXT, "width": 48, "heads": 3},
    },
}


def model_cfg(name: str, *, vocab_size: int) -> dict[str, Any]:
    """Return the full open_clip ``model_cfg`` of backbone ``name`` for a vocabulary size.

    The text config names an HF tokenizer so that open_clip's ``get_tokenizer`` takes the
    HF-tokenizer route (for ``local-dir:`` folders it reads the folder's own files).

    Examples
    --------
    >>> model_cfg("tiny-rn", vocab_size=500)["text_cfg"]["vocab_size"]
    500
    """
    cfg = copy.deepcopy(ARCHITECTURES[name])
    cfg["text_cfg"].update(vocab_size=int(vocab_size), hf_tokenizer_name=f"clipindex.tiny/{name}")
    return cfg
