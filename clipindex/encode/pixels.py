"""From image files to uint8 crops: the three decoders of the encoder.

- ``pil`` (default on CPU): DataLoader workers decode the whole file with
  :func:`clipindex.encode.decode.load_rgb` and resize/center-crop with the very PIL
  steps of open_clip's ``preprocess``; they send **uint8** CHW crops (4× less to copy
  between processes than float). Normalisation and the float conversion happen on the
  device (:meth:`Encoder.encode_pixels`) with ``ToTensor``'s and ``Normalize``'s own
  arithmetic, so the crop is open_clip's to the bit and the vector equals
  ``encode_image(preprocess(Image.open(f).convert("RGB")))`` (of the upright image).
- ``draft`` (an explicit speed option, never a default): as ``pil``, but JPEGs are
  decoded at a reduced DCT scale (``Image.draft``, :func:`load_rgb`'s ``target_size``).
  Faster on large photos, and *not* open_clip's pixels: the store records it
  (``decode_route: draft``) and its queries are decoded the same way.
- ``nvjpeg`` (default on CUDA): workers only read the files; JPEG bytes are decoded in
  one batched ``torchvision.io.decode_jpeg(..., device=...)`` call on the encoder's
  device (nvJPEG on a GPU; the same call runs on CPU, which is how CI tests it), then
  resized (bicubic, antialiased) and center-cropped there. A file that is not a JPEG, or
  that the batched decoder rejects, goes through the PIL route in the worker or in the
  main process, so both routes skip the same files with the same reasons.

A file that fails to decode becomes a zero crop plus its reason; it never stops a run.
A fault of the machine does (:class:`~clipindex.errors.ResourceError`, one line): a
worker that runs out of file descriptors (or meets another OS fault) sends it once as
its batch and stops; the parent raises it, and also fails, never waits, when a worker
dies or sends nothing for :func:`worker_timeout` seconds (:func:`worker_batches`). A
worker sends a batch as **one** shared-memory block (:class:`Packed`), never one per
image, so a batch costs a worker a couple of descriptors, not one per image.
"""

from __future__ import annotations

import errno
import os
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from PIL import Image

from clipindex.encode.decode import decode_rgb_bytes, failure_reason, load_rgb
from clipindex.errors import (
    OS_FAULTS,
    ModelLoadError,
    ResourceError,
    os_error_from_text,
    os_fault,
)

__all__ = ["FDS_PER_WORKER", "ImageFiles", "Packed", "PixelPipeline", "check_descriptors",
           "collate", "device_crops", "split_preprocess", "worker_batches", "worker_timeout"]

_JPEG_MAGIC = b"\xff\xd8\xff"


class PixelPipeline:
    """Picklable PIL-side preprocessing: open_clip's resize/crop steps, then uint8 CHW.

    ``resize_side`` is the shorter-side size of open_clip's ``Resize`` when the steps are
    the plain ``Resize(int)`` + ``CenterCrop`` pair (what the nvJPEG route re-does on the
    device); ``None`` for anything else, which then always takes the PIL route.
    """

    def __init__(self, pil_steps: Callable[[Image.Image], Image.Image],
                 input_size: tuple[int, int]) -> None:
        self.pil_steps = pil_steps
        self.input_size = input_size  # (height, width)
        self.resize_side = _plain_resize(pil_steps)

    @property
    def draft_size(self) -> int:
        return max(self.input_size)

    def empty(self) -> torch.Tensor:
        return torch.zeros((3, *self.input_size), dtype=torch.uint8)

    def __call__(self, img: Image.Image) -> torch.Tensor:
        out = self.pil_steps(img)
        array = np.asarray(out.convert("RGB") if out.mode != "RGB" else out, dtype=np.uint8)
        if array.shape[:2] != self.input_size:
            raise ValueError(f"preprocessing gave {array.shape[:2]}, expected {self.input_size}")
        return torch.from_numpy(np.ascontiguousarray(array.transpose(2, 0, 1)))

    def from_file(self, path: str, draft: bool = False) -> tuple[torch.Tensor, str]:
        """PIL route for one file: ``(uint8 crop, "")`` or ``(zeros, reason)``; with
        ``draft`` a JPEG is decoded at a reduced scale (the ``draft`` decoder); a fault of
        the machine (:func:`clipindex.encode.decode.load_rgb`) is raised."""
        try:
            return self(load_rgb(path, target_size=self.draft_size if draft else None)), ""
        except ResourceError:
            raise
        except Exception as exc:  # noqa: BLE001 - a bad file is skipped, never fatal
            return self.empty(), failure_reason(exc)

    def from_bytes(self, data: bytes | BaseException, draft: bool = False,
                   name: str | None = None) -> tuple[torch.Tensor, str]:
        """:meth:`from_file` for one image in memory (or the exception reading it
        raised; ``name`` is what a fault names): ``draft`` as there; a fault of the
        machine is raised."""
        try:
            size = self.draft_size if draft else None
            return self(decode_rgb_bytes(data, target_size=size, name=name)), ""
        except ResourceError:
            raise
        except Exception as exc:  # noqa: BLE001 - a bad image is skipped, never fatal
            return self.empty(), failure_reason(exc)


def _plain_resize(pil_steps: Any) -> int | None:
    steps = list(getattr(pil_steps, "transforms", []))
    names = [type(s).__name__ for s in steps]
    if names[:2] != ["Resize", "CenterCrop"] or any(
            n not in ("Resize", "CenterCrop", "MaybeConvertMode") for n in names):
        return None
    size = steps[0].size
    size = size[0] if isinstance(size, (list, tuple)) and len(size) == 1 else size
    interpolation = str(getattr(steps[0], "interpolation", "")).lower()
    return int(size) if isinstance(size, int) and "bicubic" in interpolation else None


class ImageFiles(torch.utils.data.Dataset):
    """``files[start:]`` as ``(kind, tensor, reason)`` items for :func:`collate`.

    ``kind`` is ``"pixels"`` (a uint8 CHW crop; zeros when ``reason`` is set) or, with
    ``raw_jpeg``, ``"jpeg"`` (the file's bytes as a uint8 tensor, decoded later on the
    device). ``draft``: PIL decodes JPEGs in draft mode (the ``draft`` decoder).
    """

    def __init__(self, files: Sequence[str | os.PathLike[str]], start: int,
                 pipeline: PixelPipeline, raw_jpeg: bool = False, draft: bool = False,
                 reader: Any = None) -> None:
        self.files = [os.fspath(f) for f in files]
        self.start = start
        self.pipeline = pipeline
        self.reader = reader
        if reader is not None:  # remote reads: the next batch is read while one decodes
            from clipindex.sources.storage import ReadAhead

            self._ahead = ReadAhead(reader)
        # with a reader, a rejected JPEG could not be re-read by path: PIL route only
        self.raw_jpeg = raw_jpeg and pipeline.resize_side is not None and reader is None
        self.draft = bool(draft) and not self.raw_jpeg  # bytes from a reader too

    def __len__(self) -> int:
        return len(self.files) - self.start

    def path(self, i: int) -> str:
        return self.files[self.start + i]

    def __getitems__(self, indices: list[int]) -> list[tuple[str, Any, str]]:
        """A whole batch: with a reader, its bytes are read in one ``read_many`` call
        (parallel, bounded requests), then decoded one by one (a fault of the machine is
        sent as the batch)."""
        if self.reader is None:
            return [self[i] for i in indices]
        try:
            names = [self.path(i) for i in indices]
            data = self._ahead.read_many(names, [self.path(i) for i in self._next(indices)])
            return [("pixels", *self.pipeline.from_bytes(d, draft=self.draft, name=n))
                    for d, n in zip(data, names, strict=True)]
        except ResourceError as exc:  # sent once as the batch; the parent stops the run
            return [("fault", exc.errno, str(exc))]

    def _next(self, indices: list[int]) -> list[int]:
        """The indices of this process's next batch: a DataLoader worker gets every
        ``num_workers``-th batch of consecutive indices (in-process: the next one)."""
        info = torch.utils.data.get_worker_info()
        stride = len(indices) * (info.num_workers if info is not None else 1)
        return [i + stride for i in indices if i + stride < len(self)]

    def __getitem__(self, i: int) -> tuple[str, Any, str]:
        """``("pixels", crop, reason)``, ``("jpeg", bytes, "")`` or, for a fault of the
        machine, ``("fault", errno, message)``."""
        if self.reader is not None:
            return self.__getitems__([i])[0]
        path = self.path(i)
        try:
            if self.raw_jpeg:
                data = _jpeg_bytes(path)
                if data is not None:
                    return "jpeg", torch.frombuffer(bytearray(data), dtype=torch.uint8), ""
            return ("pixels", *self.pipeline.from_file(path, draft=self.draft))
        except ResourceError as exc:  # sent once as the batch; the parent stops the run
            return "fault", exc.errno, str(exc)


def _jpeg_bytes(path: str) -> bytes | None:
    try:
        with open(path, "rb") as fh:
            data = fh.read()
    except OSError as exc:
        if exc.errno in _MACHINE:
            raise os_fault(exc, path) from exc  # type: ignore[misc]
        return None  # the PIL route gives the reason
    return data if data.startswith(_JPEG_MAGIC) else None


#: Input-side OS errors that are the machine's, not one file's (those are skips).
_MACHINE = frozenset({errno.EMFILE, errno.ENFILE, errno.EIO})


@dataclass
class Packed:
    """One batch as a decode worker sends it: every crop in one uint8 block, every
    JPEG's bytes end to end in another (both in shared memory when made in a worker),
    or the fault that stopped the worker."""

    kinds: list[str] = field(default_factory=list)
    reasons: list[str] = field(default_factory=list)
    crops: torch.Tensor | None = None
    jpeg: torch.Tensor | None = None
    lengths: list[int] = field(default_factory=list)
    fault: tuple[int | None, str] | None = None

    def __len__(self) -> int:
        return len(self.kinds)

    def raise_fault(self) -> None:
        if self.fault is not None:
            raise ResourceError(self.fault[1], errno=self.fault[0])


def collate(items: list[tuple[str, Any, str]]) -> Packed:
    """Pack a batch into a :class:`Packed` (in the worker, so a fault of the machine,
    such as no descriptor left for the shared block, is caught and sent as the batch)."""
    fault = next(((code, text) for kind, code, text in items if kind == "fault"), None)
    if fault is not None:
        return Packed(fault=fault)
    kinds = [kind for kind, _, _ in items]
    pixels = [t for kind, t, _ in items if kind == "pixels"]
    raw = [t for kind, t, _ in items if kind == "jpeg"]
    in_worker = torch.utils.data.get_worker_info() is not None
    try:
        crops = _block(torch.stack(pixels), in_worker) if pixels else None
        jpeg = _block(torch.cat(raw), in_worker) if raw else None
    except (OSError, RuntimeError) as exc:
        error = exc if isinstance(exc, OSError) else os_error_from_text(exc, _SHM)
        if error is None or error.errno not in OS_FAULTS:
            raise
        fault_ = os_fault(error, _SHM)
        return Packed(fault=(error.errno, str(fault_)))
    return Packed(kinds, [r for _, _, r in items], crops, jpeg, [len(t) for t in raw])


def _block(tensor: torch.Tensor, shared: bool) -> torch.Tensor:
    return tensor.share_memory_() if shared else tensor


_SHM = "shared memory for decoded images"
_PIPES = "the decode workers' pipes"
#: Descriptors a decode worker may hold at once (its pipes, shared blocks in flight,
#: the sockets that hand them over), twice what one was seen to use.
FDS_PER_WORKER = 16


def check_descriptors(workers: int) -> None:
    """Refuse to start ``workers`` decode workers when the open-file limit leaves too
    few descriptors for them (a worker without one loses its batch, and the parent would
    wait for it): a one-line :class:`ResourceError` naming the limit and the fix."""
    try:
        import resource

        soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
        used = len(os.listdir("/proc/self/fd"))
    except (ImportError, OSError):  # pragma: no cover - not Linux: cannot tell
        return
    needs = FDS_PER_WORKER * (workers + 1)
    if workers and soft != resource.RLIM_INFINITY and soft - used < needs:
        raise ResourceError(
            f"too many open files for {workers} decode worker(s): the limit is {soft} "
            f"(`ulimit -n`), {used} are open and the workers need about {needs} more; "
            f"raise it (e.g. `ulimit -n 4096`), or decode in-process with --workers 0",
            errno=errno.EMFILE, path="/proc/self/fd")


def worker_timeout(batch_size: int) -> float:
    """Seconds the parent waits for a worker's next batch before failing: generous
    (two seconds an image, the decode of a ~90 MP PNG, plus two minutes), so only a
    worker that lost its batch or hangs trips it."""
    return 120.0 + 2.0 * batch_size


def worker_batches(loader: Iterable[Packed]) -> Iterator[Packed]:
    """``loader``'s batches; a fault a worker sent, a worker that died and one that
    sent nothing in time are raised as one-line :class:`ResourceError`\\ s."""
    batches = iter(loader)
    while True:
        try:
            batch = next(batches)
        except StopIteration:
            return
        except (OSError, RuntimeError) as exc:
            error = _worker_error(exc)
            if error is exc:
                raise
            raise error from exc
        batch.raise_fault()
        yield batch


def _worker_error(exc: BaseException) -> BaseException:
    error = exc if isinstance(exc, OSError) else os_error_from_text(exc, _PIPES)
    if error is not None and error.errno in OS_FAULTS:
        return os_fault(error, _PIPES) or exc
    text = " ".join(str(exc).split())
    if "timed out" in text or "exited unexpectedly" in text:
        return ResourceError(
            f"a decode worker stopped sending images ({text[:160]}); run the command "
            "again (finished shards are kept), or decode in-process with --workers 0")
    return exc


def device_crops(batch: Packed, paths: Sequence[str], pipeline: PixelPipeline,
                 device: torch.device, pin: bool = False) -> tuple[torch.Tensor, list[str]]:
    """``(b, 3, H, W)`` uint8 crops on ``device`` and one reason per item (``""``: ok).

    JPEG bytes are decoded together on the device; an item the batched decoder rejects
    is decoded alone, and if that fails too, by PIL from ``paths[i]``.
    """
    if batch.crops is not None and len(batch.crops) == len(batch):  # all decoded by PIL
        block = batch.crops.pin_memory() if pin else batch.crops
        return block.to(device, non_blocking=True), list(batch.reasons)
    crops: list[torch.Tensor | None] = [None] * len(batch)
    pixel_rows = [i for i, kind in enumerate(batch.kinds) if kind == "pixels"]
    for j, i in enumerate(pixel_rows):
        crops[i] = batch.crops[j]  # type: ignore[index]
    reasons = list(batch.reasons)
    jpeg = [i for i, kind in enumerate(batch.kinds) if kind == "jpeg"]
    if jpeg:
        data = list(torch.split(batch.jpeg, batch.lengths))  # type: ignore[arg-type]
        for i, crop in zip(jpeg, _decode_jpegs(data, pipeline, device), strict=True):
            if crop is None:
                crop, reasons[i] = pipeline.from_file(paths[i])
            crops[i] = crop
    host = [i for i, c in enumerate(crops) if c is not None and c.device.type == "cpu"]
    if host:
        block = torch.stack([crops[i] for i in host])  # type: ignore[misc]
        block = (block.pin_memory() if pin else block).to(device, non_blocking=True)
        for j, i in enumerate(host):
            crops[i] = block[j]
    stacked = torch.stack(crops)  # type: ignore[arg-type]
    return stacked, reasons


def _decode_jpegs(data: list[torch.Tensor], pipeline: PixelPipeline,
                  device: torch.device) -> list[torch.Tensor | None]:
    from torchvision.io import ImageReadMode, decode_jpeg

    kwargs = {"mode": ImageReadMode.RGB, "device": device, "apply_exif_orientation": True}
    try:
        images = list(decode_jpeg(data, **kwargs))
    except Exception:  # noqa: BLE001 - one bad file fails the batch: decode one by one
        images = []
        for one in data:
            try:
                images.append(decode_jpeg(one, **kwargs))
            except Exception:  # noqa: BLE001 - the PIL route gives the reason
                images.append(None)
    return [None if img is None else _resize_crop(img, pipeline) for img in images]


def _resize_crop(img: torch.Tensor, pipeline: PixelPipeline) -> torch.Tensor:
    """open_clip's ``Resize(side, bicubic)`` + ``CenterCrop`` on a uint8 CHW tensor."""
    from torchvision.transforms import InterpolationMode
    from torchvision.transforms.v2 import functional as F

    side = int(pipeline.resize_side or max(pipeline.input_size))
    resized = F.resize(img, [side], interpolation=InterpolationMode.BICUBIC, antialias=True)
    return F.center_crop(resized, list(pipeline.input_size)).contiguous()


def split_preprocess(preprocess: Any) -> tuple[Callable, tuple[float, ...], tuple[float, ...]]:
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
