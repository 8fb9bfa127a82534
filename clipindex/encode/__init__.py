"""Encode: the backbone registry, image decoding and batched CLIP encoding.

Owns: ``backbones.py`` (study names, open_clip names and tags, local checkpoints, the
tiny demo backbones as one more registered source), ``decode.py`` (robust decoding with
a reason for every rejected file), ``encoder.py`` (:class:`Encoder`, :func:`load_encoder`,
batched encoding with decode workers).
May import: ``clipindex.errors``, ``clipindex.files``, ``clipindex.tiny`` (weights and
configs only). Never ``clipindex.world`` nor anything above it in the pipeline.
"""

from clipindex.encode.backbones import (
    CHECKPOINT_SUFFIXES,
    STUDY_BACKBONES,
    BackboneSpec,
    known_backbones,
    resolve_backbone,
)
from clipindex.encode.decode import DecodeError, failure_reason, load_rgb, to_rgb
from clipindex.encode.encoder import (
    DEFAULT_BATCH_SIZE,
    Encoder,
    ImageBatch,
    default_workers,
    load_encoder,
    resolve_device,
    resolve_precision,
)

__all__ = [
    "CHECKPOINT_SUFFIXES",
    "STUDY_BACKBONES",
    "BackboneSpec",
    "known_backbones",
    "resolve_backbone",
    "DecodeError",
    "failure_reason",
    "load_rgb",
    "to_rgb",
    "DEFAULT_BATCH_SIZE",
    "Encoder",
    "ImageBatch",
    "default_workers",
    "load_encoder",
    "resolve_device",
    "resolve_precision",
]
