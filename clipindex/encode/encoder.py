"""Batched encoding of images and texts with an open_clip backbone.

Images go through a torch ``DataLoader`` whose worker processes decode
(:func:`clipindex.encode.decode.load_rgb`) and resize/center-crop them to the model's input
size with the very PIL transforms of open_clip's own ``preprocess``; they send **uint8**
crops (4× less to copy between processes than float), and the main process turns them
into normalised floats on the device and encodes whole batches. Decoding of the next
batches overlaps encoding of the current one (DESIGN "Speed"). A file that fails to
decode becomes a zero row plus ``(index, reason)`` in ``skipped``; it never stops a run.

Device and precision are resolved in one place (:func:`resolve_device`,
:func:`resolve_precision`): CUDA when available, fp16 autocast there (bf16 on request),
fp32 on CPU. Model weights stay fp32; only the matrix work runs in reduced precision.
"""

from __future__ import annotations

import hashlib
import os
import sys
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from clipindex.encode.backbones import BackboneSpec, registered_backbone, resolve_backbone
from clipindex.encode.decode import failure_reason, load_rgb, to_rgb
from clipindex.errors import ModelLoadError, UserInputError

__all__ = [
    "DEFAULT_BATCH_SIZE",
    "ImageBatch",
    "Encoder",
    "load_encoder",
    "resolve_device",
    "resolve_precision",
    "default_workers",
]

DEFAULT_BATCH_SIZE = {"cpu": 256, "cuda": 1024}
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


def default_workers() -> int:
    """Decoding worker processes when none are asked for: ``min(4, cpu count)``."""
    return min(4, os.cpu_count() or 1)


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


class _PixelPipeline:
    """Picklable PIL-side preprocessing: open_clip's resize/crop steps, then uint8 CHW."""

    def __init__(self, pil_steps: Callable[[Image.Image], Image.Image],
                 input_size: tuple[int, int]) -> None:
        self.pil_steps = pil_steps
        self.input_size = input_size  # (height, width)

    @property
    def draft_size(self) -> int:
        return max(self.input_size)

    def empty(self) -> torch.Tensor:
        return torch.zeros((3, *self.input_size), dtype=torch.uint8)

    def load(self, path: str | os.PathLike[str]) -> tuple[torch.Tensor, str]:
        """Decode and preprocess one file: ``(uint8 CHW, "")``, or a blank crop and the
        reason the file was skipped. The one per-file step of every image build."""
        try:
            return self(load_rgb(path, target_size=self.draft_size)), ""
        except Exception as exc:  # noqa: BLE001 - a bad file is skipped, never fatal
            return self.empty(), failure_reason(exc)

    def __call__(self, img: Image.Image) -> torch.Tensor:
        out = self.pil_steps(img)
        array = np.asarray(out.convert("RGB") if out.mode != "RGB" else out, dtype=np.uint8)
        if array.shape[:2] != self.input_size:
            raise ValueError(f"preprocessing gave {array.shape[:2]}, expected {self.input_size}")
        return torch.from_numpy(np.ascontiguousarray(array.transpose(2, 0, 1)))


class _ImageFiles(torch.utils.data.Dataset):
    """``files[start:]`` as ``(uint8 CHW tensor, reason)``; reason ``""`` when decoded."""

    def __init__(self, files: Sequence[str | os.PathLike[str]], start: int,
                 pipeline: _PixelPipeline) -> None:
        self.files = files
        self.start = start
        self.pipeline = pipeline

    def __len__(self) -> int:
        return len(self.files) - self.start

    def __getitem__(self, i: int) -> tuple[torch.Tensor, str]:
        return self.pipeline.load(self.files[self.start + i])


def _collate(items: list[tuple[torch.Tensor, str]]) -> tuple[torch.Tensor, list[str]]:
    return torch.stack([pixels for pixels, _ in items]), [reason for _, reason in items]


def _split_preprocess(preprocess: Any) -> tuple[Callable, tuple[float, ...], tuple[float, ...]]:
    """Split open_clip's eval transform into (PIL steps, mean, std).

    Everything before ``ToTensor`` runs in the workers; ``ToTensor`` + ``Normalize`` are
    re-done on the device so that workers ship uint8.
    """
    from torchvision import transforms as T

    steps = list(getattr(preprocess, "transforms", []))
    names = [type(step).__name__ for step in steps]
    tensor_at = next((i for i, n in enumerate(names) if n in ("ToTensor", "MaybeToTensor")), None)
    if tensor_at is None or names[tensor_at + 1:] != ["Normalize"]:
        raise ModelLoadError(f"Unexpected open_clip preprocessing {names}: cannot split it.")
    normalize = steps[-1]
    return (T.Compose(steps[:tensor_at]), tuple(map(float, normalize.mean)),
            tuple(map(float, normalize.std)))


class Encoder:
    """An open_clip model ready to encode images and texts in large batches.

    Built by :func:`load_encoder`. Attributes: ``spec`` (:class:`BackboneSpec`),
    ``device``, ``precision``, ``params`` (parameter count), ``image_size`` (input side,
    the larger one for non-square inputs), ``input_size`` ``(height, width)``,
    ``embed_dim``, ``context_length``, ``mean``/``std`` and ``checkpoint_sha256``.
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
        pil_steps, self.mean, self.std = _split_preprocess(preprocess)
        size = getattr(model.visual, "image_size", None) or 224
        self.input_size: tuple[int, int] = (
            (int(size[0]), int(size[1])) if isinstance(size, (tuple, list))
            else (int(size), int(size))
        )
        self.image_size = max(self.input_size)
        self._pipeline = _PixelPipeline(pil_steps, self.input_size)
        self.params = int(sum(p.numel() for p in model.parameters()))
        self.context_length = int(
            getattr(model, "context_length", None)
            or getattr(tokenizer, "context_length", None) or 77
        )
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

    @property
    def pixel_pipeline(self) -> Callable[[str | os.PathLike[str]], tuple[torch.Tensor, str]]:
        """The picklable per-file decode + resize/crop step (``.load(path)`` gives
        ``(uint8 CHW, reason)``): what decode workers and Ray decode tasks run."""
        return self._pipeline.load

    @property
    def default_batch_size(self) -> int:
        """256 on CPU, 1024 on CUDA."""
        return DEFAULT_BATCH_SIZE["cuda" if self.device.type == "cuda" else "cpu"]

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
        enabled = self.device.type == "cuda" and self.precision != "fp32"
        return torch.autocast(device_type=self.device.type, dtype=_PRECISIONS[self.precision],
                              enabled=enabled)

    @torch.inference_mode()
    def encode_pixels(self, pixels: torch.Tensor) -> np.ndarray:
        """Encode a ``(b, 3, H, W)`` uint8 batch (already resized/cropped) to unit vectors.

        Normalisation (``/255``, mean, std) happens here, on the device.

        Examples
        --------
        >>> pixels = torch.zeros(2, 3, 224, 224, dtype=torch.uint8)
        >>> enc.encode_pixels(pixels).shape  # doctest: +SKIP
        (2, 512)
        """
        x = pixels.to(self.device, non_blocking=True).float().div_(255)
        x = x.sub_(self._mean_t).div_(self._std_t)
        with self._autocast():
            features = self.model.encode_image(x)
        return _unit_rows(features)

    def iter_image_batches(
        self, files: Sequence[str | os.PathLike[str]], *, batch_size: int | None = None,
        workers: int | None = None, progress: bool = True, start: int = 0,
    ) -> Iterator[ImageBatch]:
        """Encode ``files[start:]`` batch by batch, decoding in worker processes.

        Parameters
        ----------
        files : sequence of paths
            All files; indices in the batches refer to this sequence.
        batch_size : int, optional
            Images per batch (default 256 on CPU, 1024 on CUDA). Batches cover
            ``[start, start + batch_size)``, ``[start + batch_size, ...)``, ...
        workers : int, optional
            Decoding processes (default ``min(4, cpu count)``); 0 decodes in-process.
        progress : bool
            Show a tqdm bar (images/s) on stderr.
        start : int
            First index to encode (resuming an interrupted build).

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
        batch_size, workers = self._check_run(files, batch_size, workers, start)
        paths = [os.fspath(f) for f in files]
        # Arguments are checked now; the generator below starts at the first next().
        return self._batches(_ImageFiles(paths, start, self._pipeline), batch_size, workers,
                             progress)

    def _batches(self, dataset: _ImageFiles, batch_size: int, workers: int,
                 progress: bool) -> Iterator[ImageBatch]:
        if len(dataset) == 0:
            return
        loader = torch.utils.data.DataLoader(
            dataset, batch_size=batch_size, shuffle=False, num_workers=workers,
            collate_fn=_collate, pin_memory=self.device.type == "cuda",
            persistent_workers=False,
        )
        from tqdm.auto import tqdm

        bar = tqdm(total=len(dataset), unit="img", desc=f"encode {self.spec.display}",
                   file=sys.stderr, disable=not progress, dynamic_ncols=True)
        position, n_skipped = dataset.start, 0
        try:
            for pixels, reasons in loader:
                vectors = self.encode_pixels(pixels)
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

    def _check_run(self, files: Sequence[Any], batch_size: int | None, workers: int | None,
                   start: int) -> tuple[int, int]:
        if isinstance(files, (str, os.PathLike)):
            raise UserInputError("files must be a sequence of paths, not a single path.")
        batch_size = self.default_batch_size if batch_size is None else int(batch_size)
        workers = default_workers() if workers is None else int(workers)
        if batch_size < 1:
            raise UserInputError(f"batch size must be at least 1, got {batch_size}.")
        if workers < 0:
            raise UserInputError(f"workers must be 0 or more, got {workers}.")
        if not 0 <= start <= len(files):
            raise UserInputError(f"start must be within 0..{len(files)}, got {start}.")
        return batch_size, workers

    def encode_images(
        self, files: Sequence[str | os.PathLike[str]], *, batch_size: int | None = None,
        workers: int | None = None, progress: bool = True,
    ) -> tuple[np.ndarray, list[tuple[int, str]]]:
        """Encode all ``files``: ``(vectors (n, d) float32, skipped [(index, reason)])``.

        Examples
        --------
        >>> vectors, skipped = enc.encode_images(["a.jpg", "b.png"], workers=0)  # doctest: +SKIP
        """
        parts: list[np.ndarray] = []
        skipped: list[tuple[int, str]] = []
        for batch in self.iter_image_batches(files, batch_size=batch_size, workers=workers,
                                             progress=progress):
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
        size = self.default_batch_size if batch_size is None else int(batch_size)
        if size < 1:
            raise UserInputError(f"batch size must be at least 1, got {size}.")
        parts = [np.zeros((0, self.embed_dim), dtype=np.float32)]
        for begin in range(0, len(images), size):
            chunk = [self._pipeline(to_rgb(img)) for img in images[begin:begin + size]]
            parts.append(self.encode_pixels(torch.stack(chunk)))
        return np.concatenate(parts)

    @torch.inference_mode()
    def encode_texts(self, texts: Sequence[str], *, batch_size: int = 1024) -> np.ndarray:
        """Encode texts (truncated to the model's context length) to unit vectors.

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
        if batch_size < 1:
            raise UserInputError(f"batch size must be at least 1, got {batch_size}.")
        parts = [np.zeros((0, self.embed_dim), dtype=np.float32)]
        for begin in range(0, len(texts), batch_size):
            tokens = self.tokenizer(texts[begin:begin + batch_size],
                                    context_length=self.context_length)
            with self._autocast():
                features = self.model.encode_text(tokens.to(self.device))
            parts.append(_unit_rows(features))
        return np.concatenate(parts)


def _unit_rows(features: torch.Tensor) -> np.ndarray:
    features = features.float()
    features = features / features.norm(dim=-1, keepdim=True).clamp_min(1e-12)
    return features.cpu().numpy().astype(np.float32, copy=False)


def _model_error(spec: BackboneSpec, exc: BaseException) -> ModelLoadError:
    cause = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else type(exc).__name__
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


def _create(spec: BackboneSpec, device: torch.device) -> tuple[torch.nn.Module, Any, Any]:
    """Build model, eval preprocess and tokenizer; any failure is a ModelLoadError."""
    import open_clip

    tokenizer_dir: Path | None = None
    entry = registered_backbone(spec.display) if spec.tiny else None
    if entry is not None:
        # A registered local backbone: its tokenizer lives in the shipped folder, whatever
        # weights are loaded; setup registers its model config (``--pretrained none``).
        tokenizer_dir = entry.prepare()
    pretrained = spec.pretrained if spec.source in ("tag", "file") else None
    try:
        model, _, preprocess = open_clip.create_model_and_transforms(
            spec.model, pretrained=pretrained, device=device, precision="fp32",
            force_quick_gelu=spec.quick_gelu,
        )
        tokenizer_name = f"local-dir:{tokenizer_dir}" if tokenizer_dir is not None else spec.model
        tokenizer = open_clip.get_tokenizer(tokenizer_name)
    except Exception as exc:  # noqa: BLE001 - open_clip raises many kinds; one clear error
        raise _model_error(spec, exc) from exc
    return model, preprocess, tokenizer


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
    >>> enc.embed_dim, enc.image_size
    (512, 224)
    """
    spec = (spec_or_name if isinstance(spec_or_name, BackboneSpec)
            else resolve_backbone(spec_or_name, pretrained))
    resolved = resolve_device(device)
    chosen = resolve_precision(resolved, precision)
    model, preprocess, tokenizer = _create(spec, resolved)
    return Encoder(spec, model, tokenizer, preprocess, resolved, chosen)

