"""What a backbone's encoding will be, known before its weights are loaded.

A build checks its settings before it writes anything (issue 32): a ``--shard-size``
that is no multiple of the batch size the build would choose, or a
``--max-index-memory`` too small for the store's vectors, must fail before the tables
are written and before a model is loaded. Both depend on the model: the chosen batch
size on its GFLOPs per image (:func:`clipindex.encode.tuning.choose_settings`), the
index budget on its embedding dimension. :func:`model_facts` builds the backbone's
open_clip model on torch's ``meta`` device (shapes only: no weights read, no memory
allocated, no arithmetic) and reads them off it; :func:`planned_settings` is then
exactly what :meth:`Encoder.settings` picks once the model is loaded (the same counter,
the same cache key, the same device rule).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import torch

from clipindex.encode.backbones import BackboneSpec, registered_backbone
from clipindex.encode.create import model_error, no_weight_init
from clipindex.encode.tuning import EncodeSettings, choose_settings, model_gflops

__all__ = ["ModelFacts", "model_facts", "planned_settings"]


@dataclass(frozen=True)
class ModelFacts:
    """``gflops`` per image, ``input_size`` ``(height, width)``, ``embed_dim`` and
    ``resnet`` (a ``ModifiedResNet`` image tower, encoded ``channels_last``)."""

    gflops: float
    input_size: tuple[int, int]
    embed_dim: int
    resnet: bool


def model_facts(spec: BackboneSpec) -> ModelFacts:
    """The facts of ``spec``'s model, from its skeleton on the ``meta`` device.

    Nothing is read but the model's config (a registered backbone's shipped folder, a
    ``local-dir`` folder's ``open_clip_config.json``, open_clip's own configs); any
    failure is a :class:`~clipindex.errors.ModelLoadError`.
    """
    import open_clip

    if spec.tiny:
        entry = registered_backbone(spec.display)
        if entry is not None:
            entry.prepare()  # registers its open_clip config
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)  # open_clip logs "no pretrained weights loaded"
    try:
        with torch.device("meta"), no_weight_init():
            model = open_clip.create_model(spec.model, pretrained=None, load_weights=False,
                                           device="meta", force_quick_gelu=spec.quick_gelu)
    except Exception as exc:  # noqa: BLE001 - open_clip raises many kinds; one clear error
        raise model_error(spec, exc) from exc
    finally:
        root.setLevel(level)
    visual: Any = model.visual.eval()
    size = getattr(visual, "image_size", None) or 224
    input_size = ((int(size[0]), int(size[1])) if isinstance(size, (tuple, list))
                  else (int(size), int(size)))
    dim = getattr(visual, "output_dim", None)
    if not isinstance(dim, int):  # shapes only: a meta forward pass
        with torch.no_grad():
            dim = int(visual(torch.empty(1, 3, *input_size, device="meta")).shape[-1])
    return ModelFacts(gflops=model_gflops(visual, input_size, key=spec.model),
                      input_size=input_size, embed_dim=int(dim),
                      resnet=type(visual).__name__ == "ModifiedResNet")


def planned_settings(spec: BackboneSpec, device: str | torch.device,
                     **overrides: Any) -> EncodeSettings:
    """The settings :meth:`Encoder.settings` will choose for ``spec`` on ``device`` with
    ``overrides``, without loading the model.

    Examples
    --------
    >>> from clipindex.encode import resolve_backbone
    >>> planned_settings(resolve_backbone("tiny-vit"), "cpu", cores=2).batch_size
    256
    """
    facts = model_facts(spec)
    return choose_settings(facts.gflops, device, resnet=facts.resnet, **overrides)
