"""Grad-CAM maps: where in an image a CLIP backbone sees a class.

The Grad-CAM target is the cosine similarity between the image embedding and a class
vector (a prompt text vector or a caption prototype), so the map answers "which regions
make this image look like class c to this backbone". The gradients come from
``pytorch_grad_cam`` (package ``grad-cam``); the model runs in fp32 on the CPU and is
left exactly as it was found (training flag and ``requires_grad`` restored).

Layers are chosen per visual tower type (a registry, :data:`DEFAULT_LAYERS`):

* ``ModifiedResNet`` -> ``visual.layer4[-1]``, the last residual block, as the study did
  for RN50x16. A CAM can only be as sharp as that block's grid (image size / 32); when it
  is smaller than :data:`MIN_CAM_GRID` cells a side (a 64 px ResNet has a 2x2 ``layer4``),
  the deepest earlier stage with a large enough grid is used instead.
* ``VisionTransformer`` -> ``visual.transformer.resblocks[-1].ln_1``: the last block's
  output only reaches the pooled embedding through the class token, so its patch tokens
  get no gradient; the input of its attention does. A reshape transform drops the class
  token and lays the patch tokens out on ``visual.grid_size``.

Backbones measured to localise better elsewhere record their layer in
:data:`PREFERRED_LAYERS` (the tiny demo ViTs); it applies when :func:`explain` is given
an ``Encoder`` (whose ``spec.name`` names the backbone), as every store-based call is.

Example
-------
>>> from clipindex.explain import explain, overlay          # doctest: +SKIP
>>> cam = explain("cat.jpg", encoder, class_vector)         # doctest: +SKIP
>>> overlay("cat.jpg", cam).save("cat_cam.png")             # doctest: +SKIP
"""

from __future__ import annotations

import copy
import re
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from clipindex.errors import UserInputError

__all__ = [
    "DEFAULT_LAYERS",
    "MIN_CAM_GRID",
    "PREFERRED_LAYERS",
    "SimilarityTarget",
    "default_layer",
    "explain",
    "image_embedding",
    "load_image",
    "resolve_layer",
]

#: A default CAM layer is moved to an earlier stage when its map is smaller than this
#: many cells a side (a 2x2 or 4x4 map cannot say where a subject is).
MIN_CAM_GRID = 7

_OPENAI_MEAN = (0.48145466, 0.4578275, 0.40821073)
_OPENAI_STD = (0.26862954, 0.26130258, 0.27577711)


# ----------------------------------------------------------------------------- layers
def _resnet_layer(visual: torch.nn.Module) -> str:
    """The last residual block, or the deepest stage whose grid is >= MIN_CAM_GRID."""
    size = _square_size(getattr(visual, "image_size", 224))
    for stage, stride in (("layer4", 32), ("layer3", 16), ("layer2", 8)):
        if size // stride >= MIN_CAM_GRID:
            return f"visual.{stage}[-1]"
    return "visual.layer2[-1]"


def _vit_layer(visual: torch.nn.Module) -> str:
    return "visual.transformer.resblocks[-1].ln_1"


#: Default Grad-CAM layer by visual tower class name: a function of the tower.
DEFAULT_LAYERS: dict[str, Callable[[torch.nn.Module], str]] = {
    "ModifiedResNet": _resnet_layer,
    "VisionTransformer": _vit_layer,
}


def _square_size(size: Any) -> int:
    return int(min(size)) if isinstance(size, (tuple, list)) else int(size)


#: Layers measured to localise better than the architecture default, by backbone name
#: (store folder name without any ``__<tag>``), for the shipped tiny demo weights. In
#: these 2-3-block ViTs global attention has mixed every token with the whole scene,
#: class-correlated background included, by the last block; the first block's attention
#: input is still local. In tiny-rn (width 8) ``layer3``'s 8x8 map was empty (no positive
#: evidence) for ~1 in 4 images, ``layer2``'s 16x16 map for none. Share of CAM mass in the
#: subject box, 80 correctly classified images of a held-out small world (box share
#: 0.20-0.21), default vs preferred: tiny-rn 0.31 (``layer3``) vs 0.42; tiny-vit 0.32 vs
#: 0.40; tiny-vit-s 0.29 vs 0.34 (earlier training runs: same ordering, smaller margins).
PREFERRED_LAYERS: dict[str, str] = {
    "tiny-rn": "visual.layer2[-1]",
    "tiny-vit": "visual.transformer.resblocks[0].ln_1",
    "tiny-vit-s": "visual.transformer.resblocks[0].ln_1",
}


def default_layer(model: Any, backbone: str | None = None) -> str:
    """The default Grad-CAM layer of an open_clip model: the backbone's entry in
    :data:`PREFERRED_LAYERS` if it has one, else by visual tower (:data:`DEFAULT_LAYERS`).

    Example
    -------
    >>> default_layer(open_clip.create_model("RN50"))   # doctest: +SKIP
    'visual.layer4[-1]'
    """
    if backbone is not None and backbone.split("__")[0] in PREFERRED_LAYERS:
        return PREFERRED_LAYERS[backbone.split("__")[0]]
    kind = type(model.visual).__name__
    if kind not in DEFAULT_LAYERS:
        raise UserInputError(
            f"No default Grad-CAM layer for a {kind} visual tower; pass --layer NAME "
            f"(e.g. {', '.join(_layer_names(model)[:6])})."
        )
    return DEFAULT_LAYERS[kind](model.visual)


def _layer_names(model: Any, limit: int = 12) -> list[str]:
    """A few valid layer names: the visual tower's modules two or three levels deep."""
    names = [f"visual.{n}" for n, _ in model.visual.named_modules() if n and n.count(".") <= 2]
    stages = [n for n in names if n.count(".") <= 1]
    return (stages + [n for n in names if n not in stages])[:limit]


def resolve_layer(model: torch.nn.Module, name: str) -> torch.nn.Module:
    """The module at a dotted path with indices, e.g. ``visual.layer4[-1]`` or
    ``visual.transformer.resblocks.0.ln_1``; the leading ``visual.`` may be left out.

    Example
    -------
    >>> resolve_layer(model, "visual.layer2")   # doctest: +SKIP
    Sequential(...)
    """
    parts = [p for p in re.split(r"\.|\[|\]", name.strip()) if p]
    if parts and parts[0] != "visual" and not hasattr(model, parts[0]):
        parts = ["visual", *parts]
    module: Any = model
    try:
        for part in parts:
            if re.fullmatch(r"-?\d+", part):
                module = module[int(part)]
            else:
                module = getattr(module, part)
    except (AttributeError, IndexError, KeyError, TypeError):
        module = None
    if not parts or not isinstance(module, torch.nn.Module):
        raise UserInputError(
            f"Unknown layer {name!r}. Valid names include: {', '.join(_layer_names(model))}."
        )
    return module


class _TokenGrid:
    """Reshape transform for ViT token sequences: drop prefix tokens (the class token),
    lay the patch tokens on the patch grid, channels first. 4-D maps pass through."""

    def __init__(self, grid: tuple[int, int], batch_first: bool) -> None:
        self.grid = grid
        self.batch_first = batch_first

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 3:
            return x
        if not self.batch_first:
            x = x.transpose(0, 1)
        gh, gw = self.grid
        x = x[:, x.shape[1] - gh * gw :, :]
        return x.reshape(x.shape[0], gh, gw, x.shape[2]).permute(0, 3, 1, 2)


def _reshape_for(model: torch.nn.Module) -> _TokenGrid | None:
    visual = model.visual
    grid = getattr(visual, "grid_size", None)
    if grid is None or not hasattr(visual, "transformer"):
        return None
    return _TokenGrid(tuple(grid), bool(getattr(visual.transformer, "batch_first", True)))


class _SpatialOnly:
    """Reshape transform that refuses a layer without a spatial map: Grad-CAM needs a
    (batch, channels, height, width) activation, and a pooled or projected output (such
    as a ResNet's ``visual.attnpool`` or a ViT's ``visual.ln_post``) has none. Checked on
    the forward pass, before any gradient is taken, with a message naming the fix."""

    def __init__(self, inner: _TokenGrid | None, layer: str, default: str | None) -> None:
        self.inner, self.layer, self.default = inner, layer, default

    def __call__(self, x: Any) -> torch.Tensor:
        if isinstance(x, torch.Tensor) and self.inner is not None:
            x = self.inner(x)
        if isinstance(x, torch.Tensor) and x.dim() == 4:
            return x
        shape = tuple(x.shape) if isinstance(x, torch.Tensor) else f"a {type(x).__name__}"
        hint = f"e.g. {self.default} (the default)" if self.default else "a conv or block layer"
        raise UserInputError(
            f"Layer {self.layer} has no spatial map (its output is {shape}, Grad-CAM needs "
            f"channels x height x width); pick {hint} or leave --layer out."
        )


def _default_or_none(model: Any, backbone: str | None) -> str | None:
    try:
        return default_layer(model, backbone)
    except UserInputError:
        return None


# ----------------------------------------------------------------------------- geometry
@dataclass(frozen=True)
class _Geometry:
    """Where the model input came from: original box (x, y, w, h) -> input box."""

    size: tuple[int, int]  # original (width, height)
    src: tuple[float, float, float, float]
    dst: tuple[int, int, int, int]


def _fit(w: int, h: int, tw: int, th: int, scale: float) -> _Geometry:
    """Scale by ``scale`` and centre in (tw, th): crops when larger, pads when smaller."""
    sw, sh = min(tw / scale, w), min(th / scale, h)
    src = ((w - sw) / 2, (h - sh) / 2, sw, sh)
    dw, dh = max(1, round(sw * scale)), max(1, round(sh * scale))
    return _Geometry((w, h), src, ((tw - dw) // 2, (th - dh) // 2, dw, dh))


_RESIZE_MODES: dict[str, Callable[[int, int, int, int], _Geometry]] = {
    "shortest": lambda w, h, tw, th: _fit(w, h, tw, th, max(tw / w, th / h)),
    "longest": lambda w, h, tw, th: _fit(w, h, tw, th, min(tw / w, th / h)),
    "squash": lambda w, h, tw, th: _Geometry((w, h), (0, 0, w, h), (0, 0, tw, th)),
}


def _preprocess_cfg(model: torch.nn.Module) -> dict[str, Any]:
    cfg = dict(getattr(model.visual, "preprocess_cfg", None) or {})
    size = cfg.get("size", getattr(model.visual, "image_size", 224))
    th, tw = (size, size) if isinstance(size, int) else (int(size[0]), int(size[1]))
    return {
        "size": (tw, th),
        "mean": cfg.get("mean", getattr(model.visual, "image_mean", None) or _OPENAI_MEAN),
        "std": cfg.get("std", getattr(model.visual, "image_std", None) or _OPENAI_STD),
        "resize_mode": cfg.get("resize_mode", "shortest"),
        "fill": cfg.get("fill_color", 0),
    }


def _to_input(image: Image.Image, model: torch.nn.Module) -> tuple[torch.Tensor, _Geometry]:
    """The model's eval preprocessing (resize mode, crop, normalise) with its geometry."""
    cfg = _preprocess_cfg(model)
    tw, th = cfg["size"]
    geo = _RESIZE_MODES[cfg["resize_mode"]](image.width, image.height, tw, th)
    x, y, w, h = geo.src
    crop = image.resize(geo.dst[2:], Image.Resampling.BICUBIC, box=(x, y, x + w, y + h))
    canvas = Image.new("RGB", (tw, th), (cfg["fill"],) * 3)
    canvas.paste(crop, geo.dst[:2])
    arr = torch.from_numpy(np.asarray(canvas, dtype=np.float32) / 255.0).permute(2, 0, 1)
    mean = torch.tensor(cfg["mean"], dtype=torch.float32)[:, None, None]
    std = torch.tensor(cfg["std"], dtype=torch.float32)[:, None, None]
    return ((arr - mean) / std)[None], geo


def _to_original(cam: np.ndarray, geo: _Geometry) -> np.ndarray:
    """Map an input-sized CAM back onto the original image (zero outside the crop)."""
    w, h = geo.size
    dx, dy, dw, dh = geo.dst
    part = Image.fromarray(np.ascontiguousarray(cam[dy : dy + dh, dx : dx + dw], np.float32))
    x, y, sw, sh = geo.src
    x0, y0 = round(x), round(y)
    pw, ph = min(w - x0, max(1, round(sw))), min(h - y0, max(1, round(sh)))
    out = np.zeros((h, w), dtype=np.float32)
    out[y0 : y0 + ph, x0 : x0 + pw] = np.asarray(part.resize((pw, ph), Image.Resampling.BILINEAR))
    return np.clip(out, 0.0, 1.0)


# ----------------------------------------------------------------------------- model
class _Embedder(torch.nn.Module):
    """The image tower as a module whose output is the L2-normalised embedding."""

    def __init__(self, model: Any) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.normalize(self.model.encode_image(x), dim=-1)


class SimilarityTarget:
    """Grad-CAM target: cosine similarity of an image embedding to a class vector.

    Example
    -------
    >>> SimilarityTarget(np.ones(4))(torch.ones(4) / 2)
    tensor(1.)
    """

    def __init__(self, class_vector: np.ndarray | torch.Tensor) -> None:
        vec = torch.as_tensor(np.asarray(class_vector, dtype=np.float32)).reshape(-1)
        norm = float(vec.norm())
        if not np.isfinite(norm) or norm == 0.0:
            raise UserInputError("The class vector is zero or not finite; pick another class.")
        self.vector = vec / norm

    def __call__(self, embedding: torch.Tensor) -> torch.Tensor:
        emb = embedding.reshape(-1)
        return (emb / emb.norm().clamp_min(1e-12)) @ self.vector.to(emb)


def _unwrap(encoder_or_model: Any) -> torch.nn.Module:
    model = getattr(encoder_or_model, "model", encoder_or_model)
    if not hasattr(model, "encode_image") or not hasattr(model, "visual"):
        raise UserInputError(
            "explain() needs an Encoder or an open_clip CLIP model (with encode_image and "
            f"visual); got {type(encoder_or_model).__name__}."
        )
    return model


@contextmanager
def _cpu_fp32(model: torch.nn.Module) -> Iterator[torch.nn.Module]:
    """The model in eval mode, fp32, on the CPU, with parameters frozen; restored after.

    A model elsewhere (GPU, half precision) is copied rather than moved, so the caller's
    model is never touched."""
    first = next(model.parameters(), None)
    if first is not None and (first.device.type != "cpu" or first.dtype != torch.float32):
        model = copy.deepcopy(model).to(device="cpu", dtype=torch.float32)
    modes = {m: m.training for m in model.modules()}
    grads = {p: p.requires_grad for p in model.parameters()}
    try:
        model.eval()
        for p in grads:
            p.requires_grad_(False)
        yield model
    finally:
        for m, training in modes.items():
            m.train(training)
        for p, flag in grads.items():
            p.requires_grad_(flag)
            p.grad = None


def load_image(image: str | Path | Image.Image) -> Image.Image:
    """An RGB PIL image from a path (decoded by :func:`clipindex.encode.decode.load_rgb`, EXIF
    applied; ``DataError`` if unreadable) or a PIL image."""
    if isinstance(image, Image.Image):
        return image.convert("RGB")
    from clipindex.encode.decode import load_rgb

    return load_rgb(Path(image))


def image_embedding(image: str | Path | Image.Image, encoder_or_model: Any) -> np.ndarray:
    """The L2-normalised embedding of one image under the same preprocessing as
    :func:`explain` (float32, shape ``(dim,)``).

    Example
    -------
    >>> vec = image_embedding("cat.jpg", encoder)   # doctest: +SKIP
    """
    model = _unwrap(encoder_or_model)
    img = load_image(image)
    with _cpu_fp32(model) as m, torch.no_grad():
        x, _ = _to_input(img, m)
        return _Embedder(m)(x)[0].numpy().astype(np.float32)


def explain(
    image_path_or_pil: str | Path | Image.Image,
    encoder_or_model: Any,
    class_vector: np.ndarray | torch.Tensor,
    *,
    layer: str | None = None,
) -> np.ndarray:
    """Grad-CAM map of an image for a class vector, at the image's own size.

    Parameters
    ----------
    image_path_or_pil : an image file or a PIL image.
    encoder_or_model : a clipindex ``Encoder`` (its ``.model`` is used) or an open_clip
        CLIP model.
    class_vector : the class's embedding (prompt vector or caption prototype).
    layer : a module name such as ``visual.layer2`` (default: :func:`default_layer`, with
        the Encoder's backbone name when given an Encoder).

    Returns
    -------
    float32 array ``(height, width)`` of the input image, values in [0, 1]; zero outside
    the region the model saw (the centre crop).

    Example
    -------
    >>> cam = explain("cat.jpg", encoder, index.text_vectors(["a photo of a cat"])[0])
    ... # doctest: +SKIP
    """
    from pytorch_grad_cam import GradCAM

    model = _unwrap(encoder_or_model)
    backbone = getattr(getattr(encoder_or_model, "spec", None), "name", None)
    target = SimilarityTarget(class_vector)
    img = load_image(image_path_or_pil)
    with _cpu_fp32(model) as m, torch.enable_grad():
        name = default_layer(m, backbone) if layer is None else layer
        module = resolve_layer(m, name)
        x, geo = _to_input(img, m)
        x.requires_grad_(True)  # gradients flow to the layer with the weights frozen
        reshape = _SpatialOnly(_reshape_for(m), name, _default_or_none(m, backbone))
        cam = GradCAM(_Embedder(m), [module], reshape_transform=reshape)
        try:
            maps = cam(x, targets=[target])
        finally:
            cam.activations_and_grads.release()
    return _to_original(np.nan_to_num(maps[0]), geo)
