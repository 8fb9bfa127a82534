"""Exact top-k search in torch (matmul + top-k in chunks): the GPU search when faiss-gpu
is not installed, and the same code on CPU for the tests. No FAISS here: the FAISS side of
device search (faiss-gpu) stays in :mod:`clipindex.index.kinds`, which re-exports
:func:`torch_search`."""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from clipindex.checks import positive_int
from clipindex.errors import IndexMismatchError, UserInputError

__all__ = ["as_matrix", "read_only_tensor", "torch_search"]


def read_only_tensor(array: Any) -> Any:
    """A torch view of a (possibly read-only, memory-mapped) numpy matrix, without a copy.

    torch warns that it cannot mark such a tensor read-only; the search only reads it, so
    the warning is silenced here and nowhere else."""
    import warnings

    import torch

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
        return torch.from_numpy(np.ascontiguousarray(array))


def as_matrix(x: np.ndarray, name: str) -> np.ndarray:
    """``x`` as a C-contiguous float32 ``(n, dim)`` matrix, or a one-line error."""
    x = np.asarray(x)
    if x.ndim != 2:
        raise UserInputError(f"{name} must be a 2-D array (n, dim), got shape {x.shape}")
    return np.ascontiguousarray(x, dtype=np.float32)


def allowed_mask(n: int, valid: Any, rows: Any) -> np.ndarray:
    """The rows a search may return: ``valid`` (None: all) and, when given, only ``rows``
    (ids outside 0..n-1 ignored)."""
    allowed = np.ones(n, dtype=bool) if valid is None else np.asarray(valid, bool).copy()
    if rows is not None:
        mask = np.zeros_like(allowed)
        rows = np.asarray(rows, dtype=np.int64)
        mask[rows[(rows >= 0) & (rows < n)]] = True
        allowed &= mask
    return allowed


def torch_search(
    vectors: Any,
    queries: np.ndarray,
    k: int,
    valid: np.ndarray | None = None,
    *,
    rows: np.ndarray | None = None,
    device: str = "cpu",
    chunk_bytes: int = 1 << 28,
) -> tuple[np.ndarray, np.ndarray]:
    """Exact top-``k`` inner-product search in torch (matmul + top-k) on ``device``.

    ``vectors`` (numpy, or a torch tensor already on the device) are scored in chunks of
    rows so that one chunk's score matrix stays under ``chunk_bytes``; each chunk's
    top-``k`` merges into the running one. Row ``i`` has id ``i``; rows where ``valid``
    is False, or outside ``rows``, never come back; ids -1 / scores -inf where fewer
    than ``k`` qualify (as :func:`brute_force` and :func:`search_index`). The GPU path of
    ``clipindex search --device cuda`` when faiss has no GPU; tested on CPU against FAISS.

    Example
    -------
    >>> import numpy as np
    >>> torch_search(np.eye(3, dtype="float32"), np.eye(3, dtype="float32")[:1], 2,
    ...              valid=np.array([True, False, True]))[1]
    array([[0, 2]])
    """
    import torch

    q_np = as_matrix(queries, "queries")
    positive_int("k", k)
    x = vectors if isinstance(vectors, torch.Tensor) else read_only_tensor(vectors)
    x = x.to(device)
    if q_np.shape[1] != x.shape[1]:
        raise IndexMismatchError(
            f"query vectors have dim {q_np.shape[1]} but the index holds dim {x.shape[1]}; "
            "encode the queries with the same backbone as the store")
    allowed = allowed_mask(x.shape[0], valid, rows)
    keep = torch.from_numpy(allowed).to(device)
    q = torch.from_numpy(q_np).to(device=device, dtype=x.dtype)
    step = max(1, int(chunk_bytes // max(1, 4 * len(q))))
    best_s = torch.full((len(q), 0), -math.inf, device=device)
    best_i = torch.zeros((len(q), 0), dtype=torch.int64, device=device)
    for begin in range(0, x.shape[0], step):
        scores = (q @ x[begin:begin + step].T).float()
        scores[:, ~keep[begin:begin + step]] = -math.inf
        top = torch.topk(scores, min(int(k), scores.shape[1]), dim=1)
        best_s = torch.cat([best_s, top.values], dim=1)
        best_i = torch.cat([best_i, top.indices + begin], dim=1)
        if best_s.shape[1] > k:
            merged = torch.topk(best_s, int(k), dim=1)
            best_s, best_i = merged.values, torch.gather(best_i, 1, merged.indices)
    out_s = np.full((len(q), int(k)), -np.inf, dtype=np.float32)
    out_i = np.full((len(q), int(k)), -1, dtype=np.int64)
    s, i = best_s.cpu().numpy(), best_i.cpu().numpy()
    out_s[:, :s.shape[1]], out_i[:, :s.shape[1]] = s, np.where(np.isfinite(s), i, -1)
    out_s[out_i < 0] = -np.inf
    return out_s, out_i
