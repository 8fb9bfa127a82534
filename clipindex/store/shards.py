"""Resumable shards and the encode loops that fill them.

A shard is ``<kind>-NNNNN.npy`` (float32 rows ``start..stop``) plus a ``.json`` written
after it, which marks it finished and records what it was built from (its *stamp*:
dataset fingerprint, backbone, weights, dim) and the files it skipped. A rerun reuses
a shard only when its stamp, bounds and sha256 all match.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from clipindex.errors import DataError
from clipindex.store.manifest import (
    normalise_rows,
    read_json,
    sha256_file,
    write_json,
    write_npy,
)

__all__ = [
    "BuildInterrupted",
    "ShardCounter",
    "Shards",
    "batch_skips",
    "encode_captions",
    "encode_images",
    "flush_full",
]

log = logging.getLogger("clipindex.store")


class BuildInterrupted(RuntimeError):
    """Raised by the ``_stop_after_shards`` test hook of :func:`clipindex.store.build_store`."""


@dataclass
class Shards:
    """The shard plan of one matrix (images or captions) and what is already done."""

    kind: str
    folder: Path
    n: int
    size: int
    stamp: dict[str, Any]
    done: dict[int, dict[str, Any]] = field(default_factory=dict)

    def bounds(self, i: int) -> tuple[int, int]:
        return i * self.size, min(self.n, (i + 1) * self.size)

    @property
    def count(self) -> int:
        return -(-self.n // self.size) if self.n else 0

    @property
    def done_rows(self) -> int:
        """Rows in the finished shards."""
        return sum(self.bounds(i)[1] - self.bounds(i)[0] for i in self.done)

    def paths(self, i: int) -> tuple[Path, Path]:
        stem = self.folder / f"{self.kind}-{i:05d}"
        return stem.with_suffix(".npy"), stem.with_suffix(".json")

    def scan(self) -> None:
        """Record finished shards whose stamp (dataset, backbone, bounds) matches."""
        for i in range(self.count):
            npy, meta = self.paths(i)
            if not (npy.exists() and meta.exists()):
                continue
            try:
                rec = read_json(meta)
            except (OSError, ValueError):
                continue
            start, stop = self.bounds(i)
            if (rec.get("stamp") == self.stamp and rec.get("start") == start
                    and rec.get("stop") == stop and rec.get("sha256") == sha256_file(npy)):
                self.done[i] = rec

    def save(self, i: int, vectors: np.ndarray, skipped: list[dict[str, Any]]) -> None:
        npy, meta = self.paths(i)
        start, stop = self.bounds(i)
        if vectors.shape[0] != stop - start:
            raise RuntimeError(f"shard {i} has {vectors.shape[0]} rows, expected {stop - start}")
        write_npy(npy, vectors.astype(np.float32))
        rec = {"stamp": self.stamp, "start": start, "stop": stop,
               "sha256": sha256_file(npy), "skipped": skipped}
        write_json(meta, rec)  # the json marks the shard finished
        self.done[i] = rec

    def assemble(self, dim: int) -> tuple[np.ndarray, list[dict[str, Any]]]:
        out = np.zeros((self.n, dim), dtype=np.float32)
        skipped: list[dict[str, Any]] = []
        for i in range(self.count):
            start, stop = self.bounds(i)
            out[start:stop] = np.load(self.paths(i)[0], allow_pickle=False)
            skipped.extend(self.done[i]["skipped"])
        return out, skipped


class ShardCounter:
    """Counts shards finished in this run; the test hook stops after N of them."""

    def __init__(self, stop_after: int | None) -> None:
        self.stop_after = stop_after
        self.finished = 0

    def tick(self, label: str) -> None:
        self.finished += 1
        log.info("encoded shard %s", label)
        if self.stop_after is not None and self.finished >= self.stop_after:
            raise BuildInterrupted(f"stopped after {self.finished} shard(s) (test hook)")


def batch_skips(batch: Any) -> list[tuple[int, str]]:
    """``(index into the encoded files, reason)`` of every file a batch skipped."""
    return [(int(pos), str(reason)) for pos, reason in getattr(batch, "skipped", None) or ()]


def encode_images(
    encoder: Any, shards: Shards, files: Sequence[Any], rel: Sequence[str], *,
    batch_size: int, workers: int | None, strict: bool, counter: ShardCounter, bar: Any,
    **knobs: Any,
) -> int:
    """Encode every unfinished image shard; returns the number of rows encoded."""
    pending = [i for i in range(shards.count) if i not in shards.done]
    if not pending:
        return 0
    rows = np.concatenate([np.arange(*shards.bounds(i)) for i in pending])
    todo = [files[r] for r in rows]
    kwargs: dict[str, Any] = {"batch_size": batch_size, "progress": False, **knobs}
    if workers is not None:
        kwargs["workers"] = workers
    buf: list[np.ndarray] = []
    skipped: list[dict[str, Any]] = []
    for batch in encoder.iter_image_batches(todo, **kwargs):
        vectors = np.asarray(batch.vectors, dtype=np.float32)
        for pos, reason in batch_skips(batch):
            row = int(rows[pos])
            if strict:
                raise DataError(f"cannot use image {rel[row]}: {reason} (--strict)")
            skipped.append({"row_id": row, "file": rel[row], "reason": reason})
            vectors[pos - batch.start] = 0.0
        buf.append(vectors)
        bar.update(len(vectors))
        flush_full(shards, pending, buf, skipped, counter)
    if pending or buf:  # a broken encoder, never a user mistake
        raise RuntimeError(f"the encoder did not return one vector per file ({len(todo)})")
    return len(rows)


def flush_full(
    shards: Shards, pending: list[int], buf: list[np.ndarray],
    skipped: list[dict[str, Any]], counter: ShardCounter,
) -> None:
    """Save every pending shard that the buffered vectors complete."""
    have = sum(len(b) for b in buf)
    while pending:
        start, stop = shards.bounds(pending[0])
        if have < stop - start:
            break
        block = np.concatenate(buf) if len(buf) > 1 else buf[0]
        part, rest = block[: stop - start], block[stop - start:]
        mine = [s for s in skipped if start <= s["row_id"] < stop]
        shards.save(pending[0], normalise_rows(part), mine)
        skipped[:] = [s for s in skipped if not start <= s["row_id"] < stop]
        buf[:] = [rest] if len(rest) else []
        have -= stop - start
        counter.tick(f"{shards.kind}-{pending.pop(0):05d}")


def encode_captions(
    encoder: Any, shards: Shards, texts: Sequence[str], counter: ShardCounter, bar: Any,
    **knobs: Any,
) -> int:
    """Encode every unfinished caption shard; returns the number of rows encoded.

    ``knobs`` (``batch_size``, ``threads``) go to ``encoder.encode_texts`` when set."""
    kwargs = {k: v for k, v in knobs.items() if v is not None}
    n = 0
    for i in range(shards.count):
        if i in shards.done:
            continue
        start, stop = shards.bounds(i)
        vectors = np.asarray(encoder.encode_texts(list(texts[start:stop]), **kwargs),
                             dtype=np.float32)
        shards.save(i, normalise_rows(vectors), [])
        n += stop - start
        bar.update(stop - start)
        counter.tick(f"{shards.kind}-{i:05d}")
    return n
