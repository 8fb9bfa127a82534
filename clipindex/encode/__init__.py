"""Encode: the backbone registry, image decoding and batched CLIP encoding.

Owns: ``backbones.py`` (study names, open_clip names and tags, local checkpoints, and the
registry of local backbone sources, whose built-in entries are the tiny demo backbones),
``decode.py`` (robust decoding with a reason for every rejected file), ``encoder.py``
(:class:`Encoder`, :func:`load_encoder`, batched encoding with decode workers),
``pixels.py`` (the PIL, nvJPEG and PIL-draft decoders to uint8 crops), ``text.py``
(length-sorted, trimmed caption batches), ``tuning.py`` (threads, workers and batch
sizes chosen from the cores, the model's GFLOPs and the device), ``create.py`` (model
creation without initialising weights a checkpoint overwrites) and
``queries.py`` (:func:`encode_query_images`: the one route by which search and classify
turn query image files into vectors, each file decoded once) and ``facts.py`` (a model's
GFLOPs, dim and input size from its skeleton on ``meta``, and the settings it will get,
known before its weights load).
May import: ``clipindex.errors``, ``clipindex.files``, ``clipindex.tiny`` (its registry:
names, shipped folders, model configs). Never ``clipindex.demo`` (the demo world, the tiny
backbones' training) nor anything above it in the pipeline.
"""

from clipindex.encode.backbones import (
    CHECKPOINT_SUFFIXES,
    STUDY_BACKBONES,
    BackboneSpec,
    RegisteredBackbone,
    known_backbones,
    register_backbone,
    registered_backbone,
    registered_backbones,
    resolve_backbone,
)
from clipindex.encode.decode import (
    DecodeError,
    decode_rgb_bytes,
    failure_reason,
    identify,
    load_rgb,
    to_rgb,
)
from clipindex.encode.encoder import (
    DEFAULT_BATCH_SIZE,
    Encoder,
    ImageBatch,
    load_encoder,
    resolve_device,
    resolve_precision,
)
from clipindex.encode.queries import QueryImageError, check_query_images, encode_query_images
from clipindex.encode.tuning import (
    DECODE_ROUTES,
    DECODES,
    EncodeSettings,
    choose_settings,
    decode_route,
    usable_cores,
)

__all__ = [
    "CHECKPOINT_SUFFIXES",
    "STUDY_BACKBONES",
    "BackboneSpec",
    "RegisteredBackbone",
    "known_backbones",
    "register_backbone",
    "registered_backbone",
    "registered_backbones",
    "resolve_backbone",
    "DecodeError",
    "failure_reason",
    "identify",
    "decode_rgb_bytes",
    "load_rgb",
    "to_rgb",
    "DEFAULT_BATCH_SIZE",
    "Encoder",
    "ImageBatch",
    "load_encoder",
    "resolve_device",
    "resolve_precision",
    "QueryImageError",
    "check_query_images",
    "encode_query_images",
    "DECODES",
    "DECODE_ROUTES",
    "decode_route",
    "EncodeSettings",
    "choose_settings",
    "usable_cores",
]
