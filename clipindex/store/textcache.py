"""The text-vector cache of a backbone folder (``text_cache.npz``): derived data.

Query texts (prompts, search queries) are encoded once and kept here. The cache is keyed
by what its vectors derive from (:func:`clipindex.store.manifest.text_cache_key`: the
weights' sha256 or tag, the model and tokenizer, dim, context length), never by a folder
name. A cache of other weights, of an older layout, or one that is unreadable or fails its
checksum is discarded with one warning and rebuilt, never served.

Layout (uncompressed ``.npz``, no pickles): ``key`` (the identity above), ``offsets``
(int64, n + 1) into ``text`` (the UTF-8 bytes of every text, concatenated: storage is
variable-length, a 100,000-character query costs its own bytes and no other entry's),
``vectors`` (float32, n x dim) and ``checksum`` (sha256 of the rest). The cache holds at
most ``max_bytes`` (default 64 MB, ``CLIPINDEX_TEXT_CACHE_MB`` to change); past it the
least recently used entries are dropped. A cache is only written into a folder that
still exists: a reader holding a generation that ``clipindex compact`` dropped keeps
its entries in memory and never recreates the folder.
"""

from __future__ import annotations

import hashlib
import io
import logging
import os
from pathlib import Path

import numpy as np

from clipindex.files import atomic_write

__all__ = ["DEFAULT_MAX_MB", "TextCache"]

log = logging.getLogger(__name__)

DEFAULT_MAX_MB = 64.0
_LAYOUT = "clipindex-text-cache-2"


def _max_bytes() -> int:
    raw = os.environ.get("CLIPINDEX_TEXT_CACHE_MB", "")
    try:
        mb = float(raw) if raw else DEFAULT_MAX_MB
    except ValueError:
        mb = DEFAULT_MAX_MB
    return max(0, int(mb * 1e6))


def _checksum(key: str, offsets: np.ndarray, text: np.ndarray, vectors: np.ndarray) -> str:
    h = hashlib.sha256(_LAYOUT.encode())
    for part in (key.encode(), offsets.astype("<i8").tobytes(), text.tobytes(),
                 vectors.astype("<f4").tobytes()):
        h.update(len(part).to_bytes(8, "little"))
        h.update(part)
    return h.hexdigest()


class TextCache:
    """Entries ``text -> vector`` of one backbone folder, checked on load."""

    def __init__(self, path: Path, key: str, dim: int, max_bytes: int | None = None) -> None:
        self.path = path
        self.key = key
        self.dim = int(dim)
        self.max_bytes = _max_bytes() if max_bytes is None else int(max_bytes)

    def load(self) -> dict[str, np.ndarray]:
        """The cached entries; {} (with one warning) when the file cannot be trusted."""
        if not self.path.exists():
            return {}
        try:
            entries, why = self._read()
        except Exception as exc:  # noqa: BLE001 - a damaged zip raises many kinds
            entries, why = None, f"unreadable ({type(exc).__name__})"
        if entries is None:
            log.warning("discarding the text cache %s: %s; it is rebuilt from the model",
                        self.path, why)
            return {}
        return entries

    def _read(self) -> tuple[dict[str, np.ndarray] | None, str]:
        raw_file = io.BytesIO(self.path.read_bytes())  # numpy leaks the handle of a bad zip
        with np.load(raw_file, allow_pickle=False) as data:
            if "key" not in data.files or "checksum" not in data.files:
                return None, "written by an older clipindex (no identity key)"
            key = str(data["key"][()])
            if key != self.key:
                return None, "stale (encoded by other weights, model or tokenizer)"
            offsets, text = data["offsets"], data["text"]
            vectors = data["vectors"]
            if _checksum(key, offsets, text, vectors) != str(data["checksum"][()]):
                return None, "its checksum does not match (corrupted)"
        if vectors.ndim != 2 or vectors.shape[1] != self.dim or len(offsets) != len(vectors) + 1:
            return None, f"its vectors are not of dim {self.dim}"
        raw = text.tobytes()
        texts = [raw[offsets[i]:offsets[i + 1]].decode("utf-8") for i in range(len(vectors))]
        return dict(zip(texts, vectors.astype(np.float32), strict=True)), ""

    def save(self, entries: dict[str, np.ndarray]) -> None:
        """Write ``entries`` (most recent last), dropping the oldest past ``max_bytes``."""
        items = list(entries.items())
        encoded = [t.encode("utf-8") for t, _ in items]
        sizes = np.array([len(b) + 4 * self.dim for b in encoded], dtype=np.int64)
        keep = np.cumsum(sizes[::-1])[::-1] <= self.max_bytes  # newest fit first
        items = [it for it, k in zip(items, keep, strict=True) if k]
        encoded = [b for b, k in zip(encoded, keep, strict=True) if k]
        offsets = np.concatenate([[0], np.cumsum([len(b) for b in encoded])]).astype(np.int64)
        text = np.frombuffer(b"".join(encoded), dtype=np.uint8)
        vectors = (np.stack([v for _, v in items]).astype(np.float32) if items
                   else np.zeros((0, self.dim), np.float32))
        arrays = {"key": np.array(self.key), "offsets": offsets, "text": text,
                  "vectors": vectors,
                  "checksum": np.array(_checksum(self.key, offsets, text, vectors))}
        try:  # never creates the folder: a generation a compact dropped stays gone
            atomic_write(self.path, lambda fh: np.savez(fh, **arrays), make_parents=False)
        except FileNotFoundError:
            log.debug("not writing the text cache %s: its folder was removed (a compact "
                      "dropped this generation)", self.path)
        except OSError as exc:  # a read-only store still answers queries
            log.warning("could not write the text cache %s: %s", self.path, exc)
