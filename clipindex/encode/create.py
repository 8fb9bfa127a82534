"""Creating the open_clip model of a backbone, without initialising weights twice.

Where creation time goes (ViT-B/32 on 2 cores, measured for issue 21): importing
open_clip (which imports torchvision's ops, torch's dynamo and, when installed,
transformers) and then building the model, most of it in torch's default weight
initialisers (``kaiming_uniform_`` of every ``nn.Linear``, ``normal_`` of the token
embedding) — 2.6 s of random numbers, every one of which a checkpoint load overwrites.
So a backbone with weights (a tag, a checkpoint file, an open_clip folder, the tiny
backbones) is built under :func:`no_weight_init`, which turns torch's ``nn.init``
functions into no-ops while the modules are constructed; open_clip then loads the
checkpoint with ``strict=True``, so every parameter is overwritten and none stays
uninitialised. ``--pretrained none`` keeps the full seeded initialisation, unchanged, so
a random-init store encodes queries exactly as it was built.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch

from clipindex.encode.backbones import BackboneSpec, registered_backbone
from clipindex.encode.hub import hub_guard, quiet_hub
from clipindex.errors import ModelLoadError

__all__ = ["create_model", "model_error", "no_weight_init"]

_INITIALISERS = ("uniform_", "normal_", "trunc_normal_", "constant_", "ones_", "zeros_",
                 "eye_", "dirac_", "xavier_uniform_", "xavier_normal_", "kaiming_uniform_",
                 "kaiming_normal_", "orthogonal_", "sparse_")


@contextmanager
def no_weight_init() -> Iterator[None]:
    """Within the block, ``torch.nn.init.*_`` leave tensors as they are (uninitialised).

    Only for models whose every parameter is loaded from a checkpoint right after.

    Examples
    --------
    >>> with no_weight_init():
    ...     layer = torch.nn.Linear(4, 4)  # weights are whatever memory held
    """
    init = torch.nn.init
    saved = {name: getattr(init, name) for name in _INITIALISERS if hasattr(init, name)}

    def skip(tensor: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        return tensor

    for name in saved:
        setattr(init, name, skip)
    try:
        yield
    finally:
        for name, fn in saved.items():
            setattr(init, name, fn)


#: Characters of the underlying error a load error quotes.
_MAX_CAUSE = 400


def model_error(spec: BackboneSpec, exc: BaseException) -> ModelLoadError:
    """The one clear error for a model that could not be created or loaded."""
    cause = " ".join(str(exc).split()) or type(exc).__name__  # one line
    if len(cause) > _MAX_CAUSE:  # torch lists every missing key of a state dict
        cause = f"{cause[:_MAX_CAUSE - 1]}… ({len(cause):,} characters)"
    if "state_dict" in cause:
        cause += "; is it a checkpoint of another architecture than this backbone's?"
    if spec.source == "tag":
        import open_clip

        hub = (open_clip.get_pretrained_cfg(spec.model, spec.pretrained or "") or {}).get(
            "hf_hub", "").strip("/")
        where = f" (e.g. from huggingface.co/{hub})" if hub else ""
        return ModelLoadError(
            f"Could not load pretrained weights {spec.pretrained!r} for {spec.display} "
            f"({cause}). Offline? Download the checkpoint elsewhere{where} and pass "
            "--pretrained /path/to/open_clip_pytorch_model.bin"
        )
    what = f"checkpoint {spec.pretrained}" if spec.pretrained else "random-init model"
    return ModelLoadError(f"Could not load {what} for {spec.display}: {cause}")


def create_model(spec: BackboneSpec, device: torch.device, *,
                 skip_init: bool | None = None) -> tuple[torch.nn.Module, Any, Any]:
    """Build model, eval preprocess and tokenizer; any failure is a ModelLoadError.

    ``skip_init`` (default: whenever weights are loaded, i.e. not ``--pretrained none``)
    builds the modules under :func:`no_weight_init`.
    """
    import open_clip

    tokenizer_dir: Path | None = None
    entry = registered_backbone(spec.display) if spec.tiny else None
    if entry is not None:
        # A registered local backbone: its tokenizer lives in the shipped folder, whatever
        # weights are loaded; setup registers its model config (``--pretrained none``).
        tokenizer_dir = entry.prepare()
    pretrained = spec.pretrained if spec.source in ("tag", "file") else None
    skip = spec.source != "none" if skip_init is None else bool(skip_init)
    # a tag offline: fail now, not after a minute of retries; quiet either way
    hub = (hub_guard(spec.model, pretrained, spec.display)
           if spec.source == "tag" and pretrained else quiet_hub())
    try:
        with hub, no_weight_init() if skip else _nothing():
            model, _, preprocess = open_clip.create_model_and_transforms(
                spec.model, pretrained=pretrained, device=device, precision="fp32",
                force_quick_gelu=spec.quick_gelu,
            )
        tokenizer_name = f"local-dir:{tokenizer_dir}" if tokenizer_dir is not None else spec.model
        tokenizer = open_clip.get_tokenizer(tokenizer_name)
    except Exception as exc:  # noqa: BLE001 - open_clip raises many kinds; one clear error
        raise model_error(spec, exc) from exc
    return model, preprocess, tokenizer


@contextmanager
def _nothing() -> Iterator[None]:
    yield
