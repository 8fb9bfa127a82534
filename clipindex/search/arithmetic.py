"""Query arithmetic (rclip's ``+`` / ``-``): ``search "cat" --add "snow" --subtract "indoor"``.

Every query vector q (a text or an image query) is combined with the terms, each term's
vector normalised first::

    q' = normalise( normalise(q) + sum_i w_i * normalise(t_i) )

with ``w_i = +weight`` for an ``--add`` term and ``-weight`` for a ``--subtract`` term
(``--term-weight``, default 1). Terms are texts (through the store's cached
``text_vectors``) or images (through the backbone's encoder, ``--add-image``); with
several backbones each combines in its own space before the rankings are fused.

Example
-------
>>> import numpy as np
>>> t = Terms(add=("snow",), subtract=("indoor",))
>>> t.label("a cat")
'a cat + snow - indoor'
>>> combine(np.array([[1.0, 0.0]]), np.array([[0.0, 1.0]]), np.array([1.0])).round(3)
array([[0.707, 0.707]], dtype=float32)
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from clipindex.errors import UserInputError

__all__ = ["Terms", "combine", "term_vectors"]


def _norm(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64)
    n = np.linalg.norm(x, axis=-1, keepdims=True)
    return x / np.where(n > 0, n, 1.0)


@dataclass(frozen=True)
class Terms:
    """The ``--add`` / ``--subtract`` terms of a search (texts and image paths)."""

    add: tuple[str, ...] = ()
    subtract: tuple[str, ...] = ()
    add_images: tuple[str, ...] = ()
    subtract_images: tuple[str, ...] = ()
    weight: float = 1.0

    def __post_init__(self) -> None:
        for flag, texts in (("--add", self.add), ("--subtract", self.subtract)):
            for text in texts:
                if not isinstance(text, str) or not text.strip():
                    raise UserInputError(f"Empty {flag} term {text!r}: give some words "
                                         f"(e.g. {flag} \"snow\").")
        w = self.weight
        if isinstance(w, bool) or not isinstance(w, (int, float)) or not np.isfinite(w) \
                or w <= 0:
            raise UserInputError(f"the term weight must be a positive number, got {w!r}")

    @property
    def empty(self) -> bool:
        """No term at all (a plain search)."""
        return not (self.add or self.subtract or self.add_images or self.subtract_images)

    def label(self, query: str) -> str:
        """The query as the hits table shows it: ``q + a - b``."""
        parts = [query]
        parts += [f"+ {t}" for t in (*self.add, *self.add_images)]
        parts += [f"- {t}" for t in (*self.subtract, *self.subtract_images)]
        return " ".join(parts)


def term_vectors(index: Any, terms: Terms, images: list[Path]) -> tuple[np.ndarray, np.ndarray]:
    """The terms' vectors in ``index``'s space and their signed weights.

    ``images`` are the checked paths of ``terms.add_images + terms.subtract_images``.
    """
    texts = [t.strip() for t in (*terms.add, *terms.subtract)]
    signs = [1.0] * len(terms.add) + [-1.0] * len(terms.subtract)
    parts = []
    if texts:
        parts.append(np.asarray(index.text_vectors(texts), dtype=np.float64))
    if images:
        from clipindex.encode import encode_query_images

        parts.append(np.asarray(encode_query_images(index.encoder(), images), np.float64))
        signs += [1.0] * len(terms.add_images) + [-1.0] * len(terms.subtract_images)
    if not parts:
        return np.zeros((0, int(index.dim))), np.zeros(0)
    return np.concatenate(parts), np.asarray(signs) * float(terms.weight)


def combine(queries: np.ndarray, vectors: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """``normalise(normalise(q) + sum_i w_i normalise(t_i))`` for every query row."""
    q = _norm(queries)
    if len(vectors):
        q = q + (np.asarray(weights, np.float64)[:, None] * _norm(vectors)).sum(axis=0)
    out = _norm(q)
    if not np.all(np.isfinite(out)) or np.any(np.linalg.norm(q, axis=-1) < 1e-9):
        raise UserInputError("the query and its --add/--subtract terms cancel out: "
                             "nothing is left to search for")
    return out.astype(np.float32)
