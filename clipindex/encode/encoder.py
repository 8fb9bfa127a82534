"""Batched encoding of images and texts with an open_clip backbone.

Images go through a torch ``DataLoader`` whose worker processes decode and
resize/center-crop them (:mod:`clipindex.encode.pixels`: PIL in the workers sending
**uint8** crops, or file bytes decoded by nvJPEG on the device); the main process turns
them into normalised floats on the device and encodes whole batches. Decoding of the
next batches overlaps encoding of the current one (DESIGN "Speed"). A file that fails to
decode becomes a zero row plus ``(index, reason)`` in ``skipped``; it never stops a run.

Threads, workers, batch sizes, the decode route and ``channels_last`` (ResNets, whose
BatchNorms are also folded into their convolutions: :mod:`clipindex.encode.fusion`) are
chosen from the core count, the model's GFLOPs and the device
(:meth:`Encoder.settings`, :mod:`clipindex.encode.tuning`); every one can be given.
With an automatic batch size on CUDA, a batch that runs out of memory is split in
halves and the smaller size kept. Captions are encoded in length-sorted batches cut to
their longest caption (:mod:`clipindex.encode.text`).

Device and precision are resolved in one place (:func:`resolve_device`,
:func:`resolve_precision`): CUDA when available, fp16 there (bf16 on request: weights
converted with open_clip's ``convert_weights_to_lp``, layer norms kept fp32, autocast),
fp32 on CPU.
"""

from __future__ import annotations

import hashlib
import os
import sys
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from functools import cached_property, partial
from typing import Any

import numpy as np
import torch
from PIL import Image

from clipindex.checks import positive_int
from clipindex.encode.backbones import BackboneSpec, resolve_backbone
from clipindex.encode.create import create_model
from clipindex.encode.decode import to_rgb
from clipindex.encode.fusion import fold_batchnorm
from clipindex.encode.pixels import (
    ImageFiles,
    PixelPipeline,
    check_descriptors,
    collate,
    device_crops,
    split_preprocess,
    worker_batches,
    worker_timeout,
)
from clipindex.encode.text import encode_tokens
from clipindex.encode.tuning import (
    DEFAULT_BATCH_SIZE,
    EncodeSettings,
    choose_settings,
    model_gflops,
    torch_threads,
)
from clipindex.errors import UserInputError

__all__ = [
    "DEFAULT_BATCH_SIZE",
    "ImageBatch",
    "Encoder",
    "load_encoder",
    "resolve_device",
    "resolve_precision",
]

_PRECISIONS = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


def resolve_device(device: str | torch.device | None = None) -> torch.device:
    """The one place a device is chosen: ``None`` means CUDA when available, else CPU.

    Examples
    --------
    >>> resolve_device("cpu")
    device(type='cpu')
    """
    if device is None or str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        resolved = torch.device(device)
    except (RuntimeError, TypeError) as exc:
        raise UserInputError(f"Unknown device {device!r}: use cpu, cuda or cuda:N.") from exc
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise UserInputError(f"Device {device!r} asked for, but CUDA is not available: use cpu.")
    if resolved.type not in ("cpu", "cuda"):
        raise UserInputError(f"Unsupported device {device!r}: use cpu, cuda or cuda:N.")
    return resolved


def resolve_precision(device: torch.device, precision: str | None = None) -> str:
    """``None`` → ``fp16`` on CUDA, ``fp32`` on CPU; fp16/bf16 are CUDA autocast only.

    Examples
    --------
    >>> resolve_precision(torch.device("cpu"))
    'fp32'
    """
    if precision is None:
        return "fp16" if device.type == "cuda" else "fp32"
    if precision not in _PRECISIONS:
        raise UserInputError(f"Unknown precision {precision!r}. Known: {', '.join(_PRECISIONS)}.")
    if device.type == "cpu" and precision != "fp32":
        raise UserInputError(f"Precision {precision!r} needs CUDA; on CPU use fp32.")
    return precision


@dataclass(frozen=True)
class ImageBatch:
    """One encoded batch of :meth:`Encoder.iter_image_batches`.

    Attributes
    ----------
    start : int
        Index (into the full ``files`` list) of the batch's first row.
    vectors : numpy.ndarray
        ``(b, d)`` float32, L2-normalised; zero rows for skipped files.
    skipped : list of (int, str)
        Absolute index and reason of every file in the batch that failed to decode.
    """

    start: int
    vectors: np.ndarray
    skipped: list[tuple[int, str]] = field(default_factory=list)

    @property
    def stop(self) -> int:
        """One past the index of the batch's last row."""
        return self.start + len(self.vectors)


class Encoder:
    """An open_clip model ready to encode images and texts in large batches.

    Built by :func:`load_encoder`. Attributes: ``spec`` (:class:`BackboneSpec`),
    ``device``, ``precision``, ``params`` (parameter count), ``image_size`` (input side,
    the larger one for non-square inputs), ``input_size`` ``(height, width)``,
    ``embed_dim``, ``context_length``, ``mean``/``std``, ``checkpoint_sha256``,
    ``gflops`` (per image), ``channels_last`` (ResNet towers) and ``batch_limit`` (the
    largest batch that fit in memory so far, or None).
    """

    def __init__(self, spec: BackboneSpec, model: torch.nn.Module,
                 tokenizer: Callable[..., torch.Tensor],
                 preprocess: Callable[..., torch.Tensor], device: torch.device,
                 precision: str) -> None:
        self.spec = spec
        # typed Any: open_clip models (CLIP, CustomTextCLIP, CoCa) share encode_image/encode_text
        self.model: Any = model.eval().requires_grad_(False)
        self.tokenizer = tokenizer
        self.preprocess = preprocess
        self.device = device
        self.precision = precision
        pil_steps, self.mean, self.std = split_preprocess(preprocess)
        size = getattr(model.visual, "image_size", None) or 224
        self.input_size: tuple[int, int] = (
            (int(size[0]), int(size[1])) if isinstance(size, (tuple, list))
            else (int(size), int(size))
        )
        self.image_size = max(self.input_size)
        self._pipeline = PixelPipeline(pil_steps, self.input_size)
        self.params = int(sum(p.numel() for p in model.parameters()))
        self.context_length = int(
            getattr(model, "context_length", None)
            or getattr(tokenizer, "context_length", None) or 77
        )
        self.channels_last = type(model.visual).__name__ == "ModifiedResNet"
        #: BatchNorms folded into their convolutions (ResNet towers; :mod:`.fusion`)
        self.folded_batchnorms = 0
        if self.channels_last:
            self.model.visual.to(memory_format=torch.channels_last)
            self.folded_batchnorms = fold_batchnorm(self.model.visual)
        if precision != "fp32":
            _low_precision_weights(self.model, _PRECISIONS[precision])
        self.batch_limit: int | None = None
        #: ``reference`` or ``draft`` (:data:`~clipindex.encode.tuning.DECODE_ROUTES`): the
        #: decoder when none is given (a store's encoder takes the store's route)
        self.decode_route = "reference"
        self._mean_t = torch.tensor(self.mean, device=device).view(1, -1, 1, 1)
        self._std_t = torch.tensor(self.std, device=device).view(1, -1, 1, 1)
        self.embed_dim = self._find_embed_dim()  # may encode one blank image: needs the above

    def __repr__(self) -> str:
        return (f"Encoder({self.spec.name!r}, params={self.params:,}, image_size="
                f"{self.image_size}, embed_dim={self.embed_dim}, device={self.device.type}, "
                f"precision={self.precision})")

    def _find_embed_dim(self) -> int:
        dim = getattr(self.model.visual, "output_dim", None)
        if isinstance(dim, int):
            return dim
        return int(self.encode_pixels(self._pipeline.empty()[None]).shape[1])

    @cached_property
    def gflops(self) -> float:
        """GFLOPs of one image through the image tower (counted on ``meta``, no compute)."""
        return model_gflops(self.model.visual, self.input_size, key=self.spec.model)

    def settings(self, **overrides: Any) -> EncodeSettings:
        """Threads, workers, batch sizes, decode route chosen for this model and machine.

        Keyword overrides (``threads``, ``workers``, ``batch_size``, ``text_batch_size``,
        ``decode``) replace the chosen values when not ``None``
        (:func:`clipindex.encode.tuning.choose_settings`); with no ``decode``, an encoder
        whose ``decode_route`` is ``draft`` decodes in draft mode.
        """
        if overrides.get("decode") is None and self.decode_route == "draft":
            overrides["decode"] = "draft"
        return choose_settings(self.gflops, self.device, resnet=self.channels_last,
                               **overrides)

    @property
    def pixel_pipeline(self) -> Callable[[str | os.PathLike[str]], tuple[torch.Tensor, str]]:
        """The picklable per-file decode + resize/crop step (``path -> (uint8 CHW,
        reason)``) of :attr:`decode_route`: what the PIL workers and Ray's tasks run."""
        if self.decode_route == "draft":
            return partial(self._pipeline.from_file, draft=True)
        return self._pipeline.from_file

    @property
    def bytes_pipeline(self) -> Callable[[bytes | BaseException], tuple[torch.Tensor, str]]:
        """The picklable decode + resize/crop step of an image in memory (``bytes ->
        (uint8 CHW, reason)``) of :attr:`decode_route`: what Ray's decode tasks run on
        bytes a reader fetched."""
        if self.decode_route == "draft":
            return partial(self._pipeline.from_bytes, draft=True)
        return self._pipeline.from_bytes

    @property
    def default_batch_size(self) -> int:
        """The chosen image batch size (:meth:`settings`)."""
        return self.settings().batch_size

    @cached_property
    def checkpoint_sha256(self) -> str | None:
        """sha256 of the local weights file (file checkpoints, folders, tiny); else None."""
        path = self.spec.checkpoint_path
        if path is None:
            return None
        if path.is_dir():
            found = sorted(path.glob("*.safetensors")) or sorted(path.glob("*.bin")) or sorted(
                path.glob("*.pt*"))
            if not found:
                return None
            path = found[0]
        digest = hashlib.sha256()
        with open(path, "rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                digest.update(chunk)
        return digest.hexdigest()

    def _autocast(self) -> Any:
        enabled = self.precision != "fp32"
        return torch.autocast(device_type=self.device.type, dtype=_PRECISIONS[self.precision],
                              enabled=enabled)

    @torch.inference_mode()
    def encode_pixels(self, pixels: torch.Tensor) -> np.ndarray:
        """Encode a ``(b, 3, H, W)`` uint8 batch (already resized/cropped) to unit vectors.

        Normalisation (``/255``, mean, std) and the float conversion happen here, on the
        device. With ``batch_limit`` set (after an out-of-memory), the batch is encoded
        in pieces of at most that size.

        Examples
        --------
        >>> pixels = torch.zeros(2, 3, 224, 224, dtype=torch.uint8)
        >>> enc.encode_pixels(pixels).shape  # doctest: +SKIP
        (2, 512)
        """
        step = self.batch_limit or len(pixels) or 1
        return np.concatenate([self._encode_chunk(pixels[i:i + step])
                               for i in range(0, max(1, len(pixels)), step)])

    def _encode_chunk(self, pixels: torch.Tensor) -> np.ndarray:
        x = pixels.to(self.device, non_blocking=True).float().div_(255)
        x = x.sub_(self._mean_t).div_(self._std_t)
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        with self._autocast():
            features = self.model.encode_image(x)
        return _unit_rows(features)

    def encode_with_backoff(self, pixels: torch.Tensor) -> np.ndarray:
        """:meth:`encode_pixels`, halving the batch on out-of-memory until it fits.

        The size that fit is kept in ``batch_limit`` for the next batches; an
        out-of-memory error on a single image is raised as it came.
        """
        while True:
            try:
                return self.encode_pixels(pixels)
            except torch.OutOfMemoryError:
                size = self.batch_limit or len(pixels)
                if size <= 1:
                    raise
                self.batch_limit = size // 2
                if self.device.type == "cuda":
                    torch.cuda.empty_cache()

    def iter_image_batches(
        self, files: Sequence[str | os.PathLike[str]], *, batch_size: int | None = None,
        workers: int | None = None, progress: bool = True, start: int = 0,
        threads: int | None = None, decode: str | None = None, reader: Any = None,
    ) -> Iterator[ImageBatch]:
        """Encode ``files[start:]`` batch by batch, decoding in worker processes.

        Parameters
        ----------
        files : sequence of paths
            All files; indices in the batches refer to this sequence.
        batch_size : int, optional
            Images per batch (default: chosen, :meth:`settings`). Batches cover
            ``[start, start + batch_size)``, ``[start + batch_size, ...)``, ...; with the
            automatic size on CUDA a batch that runs out of memory is encoded in halves.
        workers : int, optional
            Decoding processes (default: chosen); 0 decodes in-process.
        progress : bool
            Show a tqdm bar (images/s) on stderr.
        start : int
            First index to encode (resuming an interrupted build).
        threads : int, optional
            torch threads while encoding (default: chosen), restored afterwards.
        decode : {"pil", "nvjpeg", "draft"}, optional
            Decoder (default: nvjpeg on CUDA, pil on CPU, both open_clip's pixels; draft:
            PIL's reduced-scale JPEG decode, faster, not open_clip's pixels;
            :mod:`clipindex.encode.pixels`).
        reader : optional
            What reads the images' bytes when ``files`` are not local paths (a source's
            ``Dataset.reader``: ``read_many(files) -> [bytes | Exception]``); each worker
            reads a whole batch in one call. The PIL route decodes them (``draft`` too:
            reduced-scale JPEG decode of the bytes; ``nvjpeg`` falls back to ``pil``).

        Yields
        ------
        ImageBatch
            L2-normalised float32 vectors, zero rows and ``(index, reason)`` for files
            that failed to decode.

        Examples
        --------
        >>> for batch in enc.iter_image_batches(files, workers=0):  # doctest: +SKIP
        ...     store[batch.start:batch.stop] = batch.vectors
        """
        chosen = self._check_run(files, start, batch_size=batch_size, workers=workers,
                                 threads=threads, decode=decode)
        paths = [os.fspath(f) for f in files]
        dataset = ImageFiles(paths, start, self._pipeline, raw_jpeg=chosen.decode == "nvjpeg",
                             draft=chosen.decode == "draft", reader=reader)
        # Arguments are checked now; the generator below starts at the first next().
        return self._batches(dataset, chosen, progress)

    def _batches(self, dataset: ImageFiles, chosen: EncodeSettings,
                 progress: bool) -> Iterator[ImageBatch]:
        if len(dataset) == 0:
            return
        check_descriptors(chosen.workers)
        loader = torch.utils.data.DataLoader(
            dataset, batch_size=chosen.batch_size, shuffle=False, num_workers=chosen.workers,
            collate_fn=collate, persistent_workers=False,
            timeout=worker_timeout(chosen.batch_size) if chosen.workers else 0,
        )
        from clipindex.progress import bar as tqdm

        bar = tqdm(total=len(dataset), unit="img", desc=f"encode {self.spec.display}",
                   file=sys.stderr, disable=not progress, dynamic_ncols=True)
        position, n_skipped = dataset.start, 0
        pin = self.device.type == "cuda"
        encode = self.encode_with_backoff if chosen.auto_batch else self.encode_pixels
        try:
            with torch_threads(chosen.threads):
                for items in worker_batches(loader):  # a worker's fault: raised, no wait
                    paths = [dataset.path(position - dataset.start + i)
                             for i in range(len(items))]
                    pixels, reasons = device_crops(items, paths, self._pipeline, self.device,
                                                   pin=pin)
                    vectors = encode(pixels)
                    skipped = [(position + i, r) for i, r in enumerate(reasons) if r]
                    for index, _ in skipped:
                        vectors[index - position] = 0.0
                    n_skipped += len(skipped)
                    yield ImageBatch(position, vectors, skipped)
                    position += len(reasons)
                    bar.update(len(reasons))
                    if n_skipped:
                        bar.set_postfix(skipped=n_skipped, refresh=False)
        finally:
            bar.close()

    def _check_run(self, files: Sequence[Any], start: int, **knobs: Any) -> EncodeSettings:
        if isinstance(files, (str, os.PathLike)):
            raise UserInputError("files must be a sequence of paths, not a single path.")
        if not 0 <= start <= len(files):
            raise UserInputError(f"start must be within 0..{len(files)}, got {start}.")
        return self.settings(**knobs)

    def encode_images(
        self, files: Sequence[str | os.PathLike[str]], *, batch_size: int | None = None,
        workers: int | None = None, progress: bool = True, **knobs: Any,
    ) -> tuple[np.ndarray, list[tuple[int, str]]]:
        """Encode all ``files``: ``(vectors (n, d) float32, skipped [(index, reason)])``.

        ``knobs``: ``threads``, ``decode`` (as :meth:`iter_image_batches`).

        Examples
        --------
        >>> vectors, skipped = enc.encode_images(["a.jpg", "b.png"], workers=0)  # doctest: +SKIP
        """
        parts: list[np.ndarray] = []
        skipped: list[tuple[int, str]] = []
        for batch in self.iter_image_batches(files, batch_size=batch_size, workers=workers,
                                             progress=progress, **knobs):
            parts.append(batch.vectors)
            skipped.extend(batch.skipped)
        if not parts:
            return np.zeros((0, self.embed_dim), dtype=np.float32), skipped
        return np.concatenate(parts), skipped

    def encode_pil(self, images: Sequence[Image.Image], *,
                   batch_size: int | None = None) -> np.ndarray:
        """Encode in-memory PIL images (any mode; see :func:`clipindex.encode.decode.to_rgb`).

        Examples
        --------
        >>> enc.encode_pil([Image.new("RGB", (64, 48))]).shape  # doctest: +SKIP
        (1, 512)
        """
        size = positive_int("batch_size", self.default_batch_size if batch_size is None
                            else batch_size)
        parts = [np.zeros((0, self.embed_dim), dtype=np.float32)]
        for begin in range(0, len(images), size):
            chunk = [self._pipeline(to_rgb(img)) for img in images[begin:begin + size]]
            parts.append(self.encode_pixels(torch.stack(chunk)))
        return np.concatenate(parts)

    @torch.inference_mode()
    def encode_texts(self, texts: Sequence[str], *, batch_size: int | None = None,
                     threads: int | None = None) -> np.ndarray:
        """Encode texts (truncated to the model's context length) to unit vectors.

        In length-sorted batches of ``batch_size`` (default: the chosen text batch
        size), each cut to its longest text (:mod:`clipindex.encode.text`); rows come
        back in the order given.

        Examples
        --------
        >>> enc.encode_texts(["a photo of a cat", "a photo of a dog"]).shape  # doctest: +SKIP
        (2, 512)
        """
        if isinstance(texts, str):
            raise UserInputError("texts must be a sequence of strings, not a single string.")
        texts = list(texts)
        if not all(isinstance(t, str) for t in texts):
            raise UserInputError("every text to encode must be a string.")
        if batch_size is not None:
            positive_int("batch_size", batch_size)
        if not texts:
            return np.zeros((0, self.embed_dim), dtype=np.float32)
        size = batch_size or choose_settings(0.0, self.device).text_batch_size
        tokens = self.tokenizer(texts, context_length=self.context_length)

        def run(fn: Callable[[], torch.Tensor]) -> np.ndarray:
            with self._autocast():
                return _unit_rows(fn())

        with torch_threads(threads):
            return encode_tokens(self.model, tokens, size, self.device, run)


def _low_precision_weights(model: torch.nn.Module, dtype: torch.dtype) -> None:
    """fp16/bf16 weights for the matrix layers (open_clip's own conversion; layer norms
    stay fp32 and run fp32 under autocast)."""
    import open_clip

    open_clip.convert_weights_to_lp(model, dtype=dtype)


def _unit_rows(features: torch.Tensor) -> np.ndarray:
    features = features.float()
    features = features / features.norm(dim=-1, keepdim=True).clamp_min(1e-12)
    return features.cpu().numpy().astype(np.float32, copy=False)


def load_encoder(
    spec_or_name: BackboneSpec | str, *, pretrained: str | None = "default",
    device: str | torch.device | None = None, precision: str | None = None,
) -> Encoder:
    """Build the :class:`Encoder` of a backbone (downloads only for a named tag).

    Parameters
    ----------
    spec_or_name : BackboneSpec or str
        A resolved spec, or a name for :func:`clipindex.encode.backbones.resolve_backbone`.
    pretrained : str or None
        Used with a name only: ``"default"``, a tag, ``"none"`` or a checkpoint path.
    device : str, optional
        ``cpu``, ``cuda``, ``cuda:N``; default CUDA when available.
    precision : str, optional
        ``fp32``, ``fp16`` or ``bf16``; default fp16 on CUDA, fp32 on CPU.

    Raises
    ------
    ModelLoadError
        The weights could not be fetched or read; for a tag the message says how to
        point at a local checkpoint instead.

    Examples
    --------
    >>> enc = load_encoder("ViT-B/32", pretrained="none", device="cpu")  # doctest: +SKIP
    >>> enc.embed_dim, enc.image_size  # doctest: +SKIP
    (512, 224)
    """
    spec = (spec_or_name if isinstance(spec_or_name, BackboneSpec)
            else resolve_backbone(spec_or_name, pretrained))
    resolved = resolve_device(device)
    chosen = resolve_precision(resolved, precision)
    model, preprocess, tokenizer = create_model(spec, resolved)
    return Encoder(spec, model, tokenizer, preprocess, resolved, chosen)

