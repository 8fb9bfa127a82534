"""Encoding settings chosen from the machine and the model, never from timings of the run.

:func:`choose_settings` picks torch threads, decode workers, the image and text batch
sizes, the decode route and ``channels_last`` from three things only: the usable core
count, the model's cost (GFLOPs per image, counted once by :func:`model_gflops` on the
``meta`` device, so no real compute runs) and the device. The same inputs always give the
same settings; every field can be overridden.

The rule (DESIGN "Speed": decoding overlaps encoding, threads and workers share the
cores):

- **Cores split by cost.** One image costs about :data:`DECODE_SECONDS` of one core to
  decode and resize (PIL) and ``gflops / CPU_GFLOPS_PER_CORE`` core-seconds
  to encode on CPU. The decode share ``f`` of the total is what the workers need; they
  get ``ceil(cores * f)`` processes (at least one on two cores or more, so decoding of
  the next batch overlaps encoding of this one) and torch keeps every core the workers
  do not fill (``cores - floor(cores * f)``). A worker that needs a tenth of a core
  sleeps the rest of the time, so the encoder never waits and never loses a core.
- **Batch by cost.** On CPU a batch holds about :data:`CPU_BATCH_GFLOPS` of work (32
  images of ViT-B/32 or RN50, 8 of ViT-B/16 or RN50x4): large enough to amortise the
  per-call overhead, small enough that activations stay in cache (a batch of 256 ran
  RN50 slower than one image at a time). On CUDA a batch holds about
  :data:`CUDA_BATCH_GFLOPS` (1,024 images of ViT-B/32, 256 of ViT-L/14@336), halved on
  out-of-memory by the encoder. Powers of two, clamped.
- **ResNets** run ``channels_last`` (oneDNN and cuDNN pick faster convolutions).
- **On CUDA** the workers only read files (``decode="nvjpeg"``: JPEGs are decoded on the
  GPU in batches, anything else on the CPU) and the weights are fp16.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from typing import Any

import torch

from clipindex.checks import choice, non_negative_int, positive_int

__all__ = [
    "CPU_BATCH_GFLOPS",
    "CPU_BATCH_RANGE",
    "CPU_GFLOPS_PER_CORE",
    "CUDA_BATCH_GFLOPS",
    "CUDA_BATCH_RANGE",
    "DECODE_SECONDS",
    "DECODES",
    "DECODE_ROUTES",
    "DEFAULT_BATCH_SIZE",
    "DEFAULT_TEXT_BATCH_SIZE",
    "EncodeSettings",
    "decode_route",
    "choose_settings",
    "model_gflops",
    "torch_threads",
    "usable_cores",
]

#: Core-seconds to decode + resize one photo with PIL (~200 images/s/core; measured in
#: draft mode, a full decode of a large photo costs more: a planning constant).
DECODE_SECONDS = 1 / 200
#: Assumed fp32 throughput of one CPU core (a planning constant, not a measurement).
CPU_GFLOPS_PER_CORE = 40.0
#: Work per CPU batch; per CUDA batch.
CPU_BATCH_GFLOPS = 384.0
CUDA_BATCH_GFLOPS = float(2**17)
#: Smallest and largest chosen image batch on CPU; on CUDA.
CPU_BATCH_RANGE = (8, 256)
CUDA_BATCH_RANGE = (32, 1024)
#: Decoders: PIL in the workers, file bytes from the workers + nvJPEG on the device (both
#: full decodes: open_clip's pixels), or PIL with JPEG draft mode (reduced-scale DCT
#: decode: faster, *not* open_clip's pixels; an explicit option only).
DECODES = ("pil", "nvjpeg", "draft")
#: What a store's vectors are (its manifest's ``decode_route``): ``reference`` (open_clip's
#: own transform on a full decode: ``pil`` or ``nvjpeg``) or ``draft``.
DECODE_ROUTES = ("reference", "draft")
#: Captions per text batch by device kind (every default batch size lives in this module).
DEFAULT_TEXT_BATCH_SIZE = {"cpu": 256, "cuda": 1024}
#: Image batch by device kind when no model cost is known: the batch sizes before issue 21
#: (kept for callers; the Ray engine's GPU actors start from the CUDA one). Builds use
#: :func:`choose_settings`.
DEFAULT_BATCH_SIZE = {"cpu": 256, "cuda": 1024}
_GFLOPS_CACHE: dict[tuple[str, tuple[int, ...]], float] = {}


def decode_route(decode: str | None) -> str:
    """The route (:data:`DECODE_ROUTES`) a decoder gives: ``draft`` for ``"draft"``,
    else ``reference`` (``None``: the chosen decoder, ``pil`` or ``nvjpeg``).

    Examples
    --------
    >>> decode_route("nvjpeg"), decode_route("draft")
    ('reference', 'draft')
    """
    return "draft" if decode == "draft" else "reference"


def usable_cores() -> int:
    """Cores this process may run on (``sched_getaffinity``), else ``os.cpu_count()``."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not Linux
        return max(1, os.cpu_count() or 1)


def model_gflops(visual: torch.nn.Module, input_size: tuple[int, int],
                 key: str | None = None) -> float:
    """GFLOPs (2 × multiply-adds) of one image through ``visual``, counted on ``meta``.

    The tower runs on meta tensors (shapes only, no arithmetic) under torch's
    ``FlopCounterMode``; ``key`` caches the count per process.

    Examples
    --------
    >>> round(model_gflops(torch.nn.Conv2d(3, 8, 3), (32, 32)), 4)
    0.0004
    """
    cache_key = (key, tuple(input_size)) if key is not None else None
    if cache_key is not None and cache_key in _GFLOPS_CACHE:
        return _GFLOPS_CACHE[cache_key]
    from torch.func import functional_call
    from torch.utils.flop_counter import FlopCounterMode

    state = {name: torch.empty_like(t, device="meta")
             for name, t in [*visual.named_parameters(), *visual.named_buffers()]}
    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        functional_call(visual, state, (torch.empty(1, 3, *input_size, device="meta"),))
    gflops = counter.get_total_flops() / 1e9
    if cache_key is not None:
        _GFLOPS_CACHE[cache_key] = gflops
    return gflops


@dataclass(frozen=True)
class EncodeSettings:
    """How one backbone is encoded: what :func:`choose_settings` picked (or was told).

    ``threads`` torch threads, ``workers`` decode processes (0: in-process),
    ``batch_size`` images per batch, ``text_batch_size`` captions per batch,
    ``decode`` (``pil``/``nvjpeg``/``draft``), ``channels_last``, ``auto_batch`` (halve the batch
    on out-of-memory), and what they were chosen from: ``cores``, ``gflops``,
    ``device``, ``overridden`` (the fields given by the caller).
    """

    threads: int
    workers: int
    batch_size: int
    text_batch_size: int
    decode: str
    channels_last: bool
    auto_batch: bool
    cores: int
    gflops: float
    device: str
    overridden: tuple[str, ...] = ()

    def note(self, name: str = "") -> str:
        """The one line a build prints about what it chose."""
        given = f"; given: {', '.join(self.overridden)}" if self.overridden else ""
        workers = "decode in-process" if self.workers == 0 else (
            f"{self.workers} decode worker{'s' if self.workers != 1 else ''}")
        return (f"{name + ': ' if name else ''}{self.device}, {self.cores} core"
                f"{'s' if self.cores != 1 else ''}, {self.gflops:.2f} GFLOPs/image -> "
                f"batch {self.batch_size}, text batch {self.text_batch_size}, {workers} "
                f"({self.decode}), {self.threads} torch thread{'s' if self.threads != 1 else ''}"
                f"{', channels_last' if self.channels_last else ''}{given}")

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready (the build's manifest ``timings.settings``)."""
        return {"threads": self.threads, "workers": self.workers,
                "batch_size": self.batch_size, "text_batch_size": self.text_batch_size,
                "decode": self.decode, "channels_last": self.channels_last,
                "auto_batch": self.auto_batch, "cores": self.cores,
                "gflops": round(self.gflops, 3), "device": self.device,
                "overridden": list(self.overridden)}


def _power_of_two(x: float, low: int, high: int) -> int:
    return int(min(high, max(low, 2 ** round(math.log2(max(x, 1e-9))))))


def _split_cores(cores: int, gflops: float) -> tuple[int, int]:
    """(workers, torch threads) on CPU from the decode share of the per-image cost."""
    if cores < 2:
        return 0, 1
    encode_seconds = gflops / CPU_GFLOPS_PER_CORE
    share = DECODE_SECONDS / (DECODE_SECONDS + encode_seconds)
    workers = min(cores, max(1, math.ceil(cores * share)))
    threads = max(1, cores - math.floor(cores * share))
    return workers, threads


def choose_settings(gflops: float, device: str | torch.device = "cpu", *,
                    cores: int | None = None, resnet: bool = False,
                    **overrides: Any) -> EncodeSettings:
    """Settings for a model of ``gflops`` per image on ``device`` with ``cores`` cores.

    Deterministic: the same inputs give the same settings. Keyword ``overrides``
    (``threads``, ``workers``, ``batch_size``, ``text_batch_size``, ``decode``,
    ``channels_last``) replace the chosen values when not ``None``; a given
    ``batch_size`` turns the out-of-memory back-off off.

    Examples
    --------
    >>> s = choose_settings(8.8, "cpu", cores=2)
    >>> s.batch_size, s.workers, s.threads
    (32, 1, 2)
    >>> choose_settings(0.001, "cpu", cores=2).threads  # tiny model: decode-bound
    1
    >>> choose_settings(382.0, "cuda", cores=16).batch_size
    256
    """
    kind = torch.device(device).type
    cores = usable_cores() if cores is None else max(1, int(cores))
    if kind == "cuda":
        workers, threads = max(1, cores - 1), 1
        batch = _power_of_two(CUDA_BATCH_GFLOPS / max(gflops, 1e-9), *CUDA_BATCH_RANGE)
        decode = "nvjpeg"
    else:
        workers, threads = _split_cores(cores, gflops)
        batch = _power_of_two(CPU_BATCH_GFLOPS / max(gflops, 1e-9), *CPU_BATCH_RANGE)
        decode = "pil"
    chosen = EncodeSettings(
        threads=threads, workers=workers, batch_size=batch,
        text_batch_size=DEFAULT_TEXT_BATCH_SIZE[kind], decode=decode,
        channels_last=bool(resnet),
        auto_batch=kind == "cuda", cores=cores, gflops=float(gflops), device=kind)
    given = {k: v for k, v in overrides.items() if v is not None}
    unknown = set(given) - {"threads", "workers", "batch_size", "text_batch_size", "decode",
                            "channels_last"}
    if unknown:
        raise TypeError(f"unknown settings: {', '.join(sorted(unknown))}")
    _check(given)
    if "batch_size" in given:
        given["auto_batch"] = False
    return replace(chosen, **given,
                   overridden=tuple(k for k in given if k != "auto_batch"))


def _check(given: dict[str, Any]) -> None:
    for name in ("threads", "batch_size", "text_batch_size"):
        if name in given:
            given[name] = positive_int(name, given[name])
    if "workers" in given:
        given["workers"] = non_negative_int("workers", given["workers"])
    if "decode" in given:
        choice("decode", given["decode"], DECODES)


@contextmanager
def torch_threads(n: int | None) -> Iterator[None]:
    """Run the block with ``n`` torch intra-op threads (``None``: leave them), then restore."""
    if n is None:
        yield
        return
    before = torch.get_num_threads()
    torch.set_num_threads(int(n))
    try:
        yield
    finally:
        torch.set_num_threads(before)
