"""The Ray engine of :func:`clipindex.store.build_store` (``--engine ray``).

The driver does what a local build does before and after encoding: it validates the
input, holds the dataset folder's lock, writes the tables, plans the shards (the same
:class:`~clipindex.store.shards.Shards` as a local build, so either engine resumes the
other's work) and, at the end, assembles the matrices, builds the FAISS indexes and
writes the manifest last. Only the encoding runs on the cluster, as Ray Data:

``from_pandas(rows, files)`` → decode + resize/crop as CPU ``map_batches`` tasks (the
local build's own per-file step, :attr:`Encoder.pixel_pipeline`, uint8 crops, the same
skip reasons; for shards, parquet and URLs each task reads its batch's bytes itself
through the source's reader, so the inputs need no storage shared with the driver) →
encode in an actor pool (one model per actor: one actor per GPU, or N
CPU actors) → the vectors (not the images) stream back to the driver, which writes each
shard as soon as all its rows have arrived. Captions go the same way through a text
actor pool. A killed actor is restarted and its batch retried by Ray (Ray Data's actor
pools default to unlimited restarts and task retries); a killed driver leaves finished
shards that the next build (either engine) reuses.

May import what :mod:`clipindex.store` may; ``ray`` is imported only here, lazily.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import numpy as np

from clipindex.checks import non_negative, positive_int
from clipindex.errors import DataError, MissingExtraError, UserInputError
from clipindex.store.manifest import load_encoder_for, normalise_rows
from clipindex.store.shards import ShardCounter, Shards

__all__ = ["ENGINES", "RAY_INSTALL", "RayOptions", "encode_with_ray", "import_ray",
           "ray_session"]

log = logging.getLogger("clipindex.store")

ENGINES = ("local", "ray")
RAY_INSTALL = "pip install 'clipindex[ray]'"
#: CPUs a decode task reserves: two decode tasks per free core, so on a node decode
#: keeps up with an actor the way the local build's decode workers do (Ray's
#: back-pressure stops them running ahead of the encoder).
DECODE_CPUS = 0.5
#: Niceness of the worker processes of a local Ray that clipindex starts. Ray's default
#: (15) lets every nice-0 process on the machine -- the driver's polling, the raylet --
#: preempt the encoder actor's torch threads, and one preempted thread stalls the others
#: at the next barrier: on 2 cores a ViT-B/32 batch of 32 took 2.24 s at 15 and 1.97 s
#: at 0 (median, same run length). A cluster joined by address keeps its own setting.
LOCAL_WORKER_NICENESS = 0


@dataclass(frozen=True)
class RayOptions:
    """Knobs of a Ray build. ``encoders``: actors per pool (default: one per GPU of the
    cluster when ``gpus_per_encoder > 0``, else 1); ``gpus_per_encoder``: GPUs each
    actor reserves (0: CPU actors); ``cpus_per_encoder``: CPUs each CPU actor reserves
    and uses as torch threads. ``kill_once`` and ``batch_delay`` are test hooks (a
    marker file: the first actor call that claims it kills its own process; seconds
    each actor call sleeps)."""

    address: str | None = None
    encoders: int | None = None
    gpus_per_encoder: float = 0.0
    cpus_per_encoder: int = 1
    kill_once: str | None = None
    batch_delay: float = 0.0

    def check(self) -> RayOptions:
        if self.encoders is not None:
            positive_int("encoders", self.encoders)
        non_negative("gpus_per_encoder", self.gpus_per_encoder)
        positive_int("cpus_per_encoder", self.cpus_per_encoder)
        return self


def import_ray() -> Any:
    """``ray`` with Ray Data, or a one-line error naming the extra that installs it."""
    try:
        import ray
        import ray.data  # noqa: F401
    except ImportError as exc:
        raise MissingExtraError(f"--engine ray needs Ray Data: {RAY_INSTALL}") from exc
    return ray


@contextmanager
def _worker_niceness(value: int | None) -> Iterator[None]:
    """``RAY_worker_niceness`` set to ``value`` while a local Ray starts (its raylet reads
    it once, at start), unless the user set it; the environment is restored after."""
    name = "RAY_worker_niceness"
    if value is None or name in os.environ:
        yield
        return
    os.environ[name] = str(value)
    try:
        yield
    finally:
        os.environ.pop(name, None)


@contextmanager
def ray_session(address: str | None) -> Iterator[Any]:
    """Join the cluster at ``address`` (or ``RAY_ADDRESS``), or start a local Ray with
    one CPU per core; shut down at the end whatever this call started. A Ray that the
    caller already initialised is used as it is and left running."""
    ray = import_ray()
    if ray.is_initialized():
        yield ray
        return
    target = address or os.environ.get("RAY_ADDRESS") or None
    kwargs: dict[str, Any] = ({"address": target} if target
                              else {"num_cpus": os.cpu_count() or 1})
    try:
        with _worker_niceness(None if target else LOCAL_WORKER_NICENESS):
            ray.init(include_dashboard=False, log_to_driver=False, **kwargs)
    except (ConnectionError, ValueError, RuntimeError) as exc:
        where = f"the Ray cluster at {target}" if target else "a local Ray"
        raise UserInputError(f"cannot start or join {where}: {exc}".splitlines()[0]) from exc
    try:
        yield ray
    finally:
        ray.shutdown()


# ----------------------------------------------------------------------------- workers
def _decode_batch(batch: dict[str, np.ndarray], load: Any, reader: Any = None
                  ) -> dict[str, np.ndarray]:
    """CPU task: the local build's per-file decode + crop, on a batch of paths; with a
    source's ``reader`` (shards, parquet, URLs) the task reads the batch's bytes itself
    (one ``read_many`` call) and ``load`` decodes bytes."""
    if reader is not None:
        loaded = [load(d) for d in reader.read_many([str(p) for p in batch["path"]])]
    else:
        loaded = [load(str(p)) for p in batch["path"]]
    return {"row": batch["row"],
            "pixels": np.stack([np.asarray(pixels) for pixels, _ in loaded]),
            "reason": np.asarray([reason for _, reason in loaded], dtype=object)}


class _Worker:
    """Base of the actors: one encoder per actor, loaded once."""

    def __init__(self, spec: Any, device: str, threads: int, kill_once: str | None,
                 batch_delay: float) -> None:
        import torch

        torch.set_num_threads(max(1, int(threads)))
        self.encoder = load_encoder_for(spec, device)
        self.kill_once = kill_once
        self.batch_delay = float(batch_delay)

    def _hooks(self) -> None:
        if self.kill_once:
            try:  # exactly one actor call, over the whole cluster, claims the marker
                os.close(os.open(self.kill_once, os.O_CREAT | os.O_EXCL | os.O_WRONLY))
            except FileExistsError:
                pass
            else:
                os._exit(1)  # a worker process dying mid-batch (test hook)
        if self.batch_delay:
            time.sleep(self.batch_delay)


class _ImageWorker(_Worker):
    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        import torch

        self._hooks()
        pixels = torch.from_numpy(np.ascontiguousarray(batch["pixels"]))
        vectors = self.encoder.encode_pixels(pixels)
        reasons = np.asarray(batch["reason"], dtype=object)
        vectors[reasons != ""] = 0.0
        return {"row": batch["row"], "vector": vectors, "reason": reasons}


class _TextWorker(_Worker):
    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        self._hooks()
        texts = [str(t) for t in batch["text"]]
        vectors = self.encoder.encode_texts(texts, batch_size=max(1, len(texts)))
        return {"row": batch["row"], "vector": vectors}


# ----------------------------------------------------------------------------- driver
class _Gather:
    """Collects streamed vectors by row id and saves each shard once it is complete."""

    def __init__(self, shards: Shards, pending: Sequence[int], dim: int,
                 counter: ShardCounter, rel: Sequence[str] | None, strict: bool) -> None:
        self.shards, self.dim, self.counter = shards, dim, counter
        self.rel, self.strict = rel, strict
        self.open: dict[int, list[Any]] = {}  # shard -> [vectors, filled, skipped]
        self.pending = set(pending)

    def add(self, rows: np.ndarray, vectors: np.ndarray,
            reasons: np.ndarray | None = None) -> None:
        rows = np.asarray(rows, dtype=np.int64)
        for i in np.unique(rows // self.shards.size):
            self._fill(int(i), rows, vectors, reasons)

    def _fill(self, i: int, rows: np.ndarray, vectors: np.ndarray,
              reasons: np.ndarray | None) -> None:
        start, stop = self.shards.bounds(i)
        if i not in self.pending:
            raise RuntimeError(f"rows of shard {i} arrived twice or were never asked for")
        entry = self.open.setdefault(i, [np.zeros((stop - start, self.dim), np.float32), 0, []])
        mine = (rows >= start) & (rows < stop)
        entry[0][rows[mine] - start] = vectors[mine]
        entry[1] += int(mine.sum())
        if reasons is not None:
            for row, reason in zip(rows[mine], reasons[mine], strict=True):
                if reason:
                    self._skip(entry, int(row), str(reason))
        if entry[1] == stop - start:
            skipped = sorted(entry[2], key=lambda s: s["row_id"])
            self.shards.save(i, normalise_rows(entry[0]), skipped)
            del self.open[i]
            self.pending.discard(i)
            self.counter.tick(f"{self.shards.kind}-{i:05d}")

    def _skip(self, entry: list[Any], row: int, reason: str) -> None:
        name = self.rel[row] if self.rel is not None else str(row)
        if self.strict:
            raise DataError(f"cannot use image {name}: {reason} (--strict)")
        entry[2].append({"row_id": row, "file": name, "reason": reason})

    def finish(self) -> None:
        if self.pending:  # Ray returned fewer rows than it was given: never a user mistake
            raise RuntimeError(f"the Ray pipeline left shards {sorted(self.pending)} unfinished")


def _pending_rows(shards: Shards) -> tuple[list[int], np.ndarray]:
    pending = [i for i in range(shards.count) if i not in shards.done]
    rows = (np.concatenate([np.arange(*shards.bounds(i)) for i in pending]) if pending
            else np.zeros(0, dtype=np.int64))
    return pending, rows


def _frames(frame: Any, per_block: int) -> list[Any]:
    """The rows cut into blocks of whole batches of ``per_block`` rows (at most 64
    blocks), so ``map_batches(batch_size=per_block)`` sees full batches only: a block
    boundary inside a batch would split it into two short calls of the model. Cut here
    rather than with ``from_pandas(override_num_blocks=)``, which fails on pandas 3."""
    per_block = max(1, int(per_block))
    n_batches = -(-len(frame) // per_block)
    n_blocks = max(1, min(n_batches, 64))
    cuts = np.linspace(0, n_batches, n_blocks + 1).astype(int) * per_block
    bounds = np.minimum(cuts, len(frame))
    return [frame.iloc[a:b].reset_index(drop=True) for a, b in zip(bounds[:-1], bounds[1:],
                                                                    strict=True)]


def _decode_memory(encoder: Any, batch: int) -> int:
    """Bytes a decode task reserves: its batch of crops, uint8, with room for the decoded
    images. Reserving it also keeps decoding a stage of its own (Ray fuses a task stage
    into the next actor stage only when their resource requests agree), so decode tasks
    run beside the actors instead of inside them, one after the other."""
    height, width = encoder.input_size
    return int(batch * 3 * height * width * 4)


def _pool(ray: Any, ray_opts: RayOptions) -> tuple[int, dict[str, Any]]:
    """Actors per pool and the resources each reserves."""
    gpus = float(ray_opts.gpus_per_encoder)
    n = ray_opts.encoders
    if n is None:
        have = float(ray.cluster_resources().get("GPU", 0)) if gpus > 0 else 0.0
        n = max(1, int(have // gpus)) if gpus > 0 else 1
    resources: dict[str, Any] = {"num_cpus": int(ray_opts.cpus_per_encoder)}
    if gpus > 0:
        resources["num_gpus"] = gpus
    return int(n), resources


def _stream(ds: Any, gather: _Gather, bar: Any, with_reason: bool) -> float | None:
    """Feed the pipeline's output to ``gather``; the seconds until the first batch came
    back (Ray's start-up: scheduling, actors importing torch and loading the model)."""
    t0, first = time.perf_counter(), None
    for out in ds.iter_batches(batch_size=None, batch_format="numpy"):
        if first is None:
            first = time.perf_counter() - t0
        gather.add(out["row"], np.asarray(out["vector"], dtype=np.float32),
                   out["reason"] if with_reason else None)
        bar.update(len(out["row"]))
    gather.finish()
    return first


def _worker_args(spec: Any, device: str, ray_opts: RayOptions, threads: int | None
                 ) -> dict[str, Any]:
    return {"spec": spec, "device": device, "threads": threads or ray_opts.cpus_per_encoder,
            "kill_once": ray_opts.kill_once, "batch_delay": ray_opts.batch_delay}


def encode_with_ray(dataset: Any, spec: Any, encoder: Any, img: Shards, cap: Shards, *,
                    batch: int, text_batch: int, device: str, strict: bool, progress: bool,
                    counter: ShardCounter, ray_opts: RayOptions, bars: Any,
                    threads: int | None = None) -> dict[str, Any]:
    """Encode every unfinished image and caption shard on Ray; the timings and engine
    record for the manifest. ``bars(total, initial, desc)`` makes a progress bar.
    ``threads``: torch threads of each actor (the local build's choice for this model
    and core count; default ``cpus_per_encoder``). A CPU actor still reserves
    ``cpus_per_encoder`` CPUs and each decode task :data:`DECODE_CPUS`, so decode runs
    beside compute as the local build's workers do."""
    ray = import_ray()
    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = bool(progress)
    ctx.execution_options.preserve_order = True  # keeps the driver's open shards few
    n_actors, resources = _pool(ray, ray_opts)
    args = _worker_args(spec, device, ray_opts, threads)
    import pandas as pd

    pending, rows = _pending_rows(img)
    first: float | None = None
    rel = dataset.images["file"].astype(str).tolist()
    reader = getattr(dataset, "reader", None)
    files = rel if reader is not None else [str(f) for f in dataset.image_paths()]
    decode = ({"load": encoder.bytes_pipeline, "reader": reader} if reader is not None
              else {"load": encoder.pixel_pipeline})
    t0 = time.perf_counter()
    if len(rows):
        frame = pd.DataFrame({"row": rows, "path": [files[r] for r in rows]})
        ds = (ray.data.from_pandas(_frames(frame, batch))
              .map_batches(_decode_batch, fn_kwargs=decode,
                           batch_size=batch, batch_format="numpy", num_cpus=DECODE_CPUS,
                           memory=_decode_memory(encoder, batch))
              .map_batches(_ImageWorker, fn_constructor_kwargs=args, batch_size=batch,
                           batch_format="numpy",
                           compute=ray.data.ActorPoolStrategy(size=n_actors), **resources))
        with bars(img.n, img.done_rows, "images") as bar:
            first = _stream(ds, _Gather(img, pending, encoder.embed_dim, counter, rel,
                                        strict), bar, with_reason=True)
    t_img = time.perf_counter() - t0
    pending_c, rows_c = _pending_rows(cap)
    t0 = time.perf_counter()
    if len(rows_c):
        texts = dataset.captions["text"].astype(str).to_numpy()
        frame = pd.DataFrame({"row": rows_c, "text": texts[rows_c]})
        ds = (ray.data.from_pandas(_frames(frame, text_batch))
              .map_batches(_TextWorker, fn_constructor_kwargs=args, batch_size=text_batch,
                           batch_format="numpy",
                           compute=ray.data.ActorPoolStrategy(size=n_actors), **resources))
        with bars(cap.n, cap.done_rows, "captions") as bar:
            _stream(ds, _Gather(cap, pending_c, encoder.embed_dim, counter, None, False),
                    bar, with_reason=False)
    t_cap = time.perf_counter() - t0
    return {
        "image_encode_seconds": round(t_img, 4), "images_encoded": int(len(rows)),
        "images_per_s": round(len(rows) / t_img, 2) if len(rows) and t_img > 0 else None,
        "caption_encode_seconds": round(t_cap, 4), "captions_encoded": int(len(rows_c)),
        "ray": {"actors": n_actors, "gpus_per_encoder": float(ray_opts.gpus_per_encoder),
                "cpus_per_encoder": int(ray_opts.cpus_per_encoder), "device": device,
                "threads_per_encoder": int(args["threads"]), "decode_cpus": DECODE_CPUS,
                "address": ray_opts.address or os.environ.get("RAY_ADDRESS") or "local",
                "stage_seconds": {"images": round(t_img, 4), "captions": round(t_cap, 4)},
                "first_image_batch_seconds": None if first is None else round(first, 4)},
    }
