"""Where FAISS is touched: exact and approximate indexes and the numpy reference.

Every index stores L2-normalised vectors under their *row ids* (the tables'
``row_id``), and scores by inner product, which on unit vectors is cosine
similarity. Rows of skipped inputs are never added, so a search can never return
them. ``brute_force`` is the exact numpy computation every index is checked
against; approximate kinds report their recall@k against it (``measure_recall``).
On a GPU (``--device cuda`` at query time) a flat index is searched by faiss-gpu when it
is installed (``clipindex[gpu]``, :func:`to_faiss_gpu`), else exactly in torch
(:func:`torch_search`: matmul + top-k in chunks); the CPU path is unchanged.

Example
-------
>>> import numpy as np
>>> from clipindex.index.kinds import build_index, search_index, brute_force
>>> rng = np.random.default_rng(0)
>>> x = rng.standard_normal((50, 8)).astype("float32")
>>> x /= np.linalg.norm(x, axis=1, keepdims=True)
>>> index = build_index(x, np.arange(50))
>>> scores, ids = search_index(index, x[:2], k=3)
>>> bool((ids == brute_force(x, x[:2], k=3)[1]).all())
True
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import faiss
import numpy as np

from clipindex.checks import positive_int
from clipindex.errors import IndexMismatchError, UserInputError
from clipindex.index.torchsearch import (
    allowed_mask,
    torch_search,  # re-exported: the device search
)
from clipindex.index.torchsearch import as_matrix as _as_matrix

__all__ = [
    "set_search_threads",
    "INDEX_KINDS",
    "IndexSpec",
    "index_nlist",
    "scores_are_exact",
    "search_knob",
    "set_search_knob",
    "brute_force",
    "build_index",
    "describe_index",
    "faiss_gpus",
    "measure_recall",
    "search_index",
    "to_faiss_gpu",
    "torch_search",
]


#: faiss's bundled type stubs lack the SearchParameters* constructors it has at runtime.
_SWIG: Any = faiss


@dataclass(frozen=True)
class IndexSpec:
    """How an index of one kind is built and searched.

    ``nlist`` (IVF cells), ``nprobe`` (cells visited), ``hnsw_m`` (graph degree),
    ``ef_search`` (HNSW beam) and ``pq_m`` (PQ sub-quantisers) are resolved from the
    number of vectors when left at ``None``.
    """

    kind: str = "flat"
    nlist: int | None = None
    nprobe: int | None = None
    hnsw_m: int = 32
    ef_search: int = 128
    pq_m: int | None = None
    seed: int = 0
    train_per_cell: int | None = None
    opq_iter: int = 10


def _nlist(n: int, spec: IndexSpec) -> int:
    # FAISS wants >= 39 training points per centroid; stay within that.
    if spec.nlist is not None:
        return max(1, min(spec.nlist, n))
    return max(1, min(int(4 * math.sqrt(n)), n // 39))


def _pq_m(d: int, spec: IndexSpec) -> int:
    if spec.pq_m is not None:
        if d % spec.pq_m:
            raise UserInputError(f"pq_m={spec.pq_m} must divide the vector dim {d}")
        return spec.pq_m
    for m in (16, 8, 4, 2, 1):
        if d % m == 0 and d // m >= 2:
            return m
    return 1


def _flat(d: int, n: int, spec: IndexSpec) -> faiss.Index:
    return faiss.IndexIDMap2(faiss.IndexFlatIP(d))


def _ivf(d: int, n: int, spec: IndexSpec) -> faiss.Index:
    quantizer = faiss.IndexFlatIP(d)
    index = faiss.IndexIVFFlat(quantizer, d, _nlist(n, spec), faiss.METRIC_INNER_PRODUCT)
    index.cp.seed = spec.seed
    if spec.train_per_cell:  # k-means on a sample: its cost grows with nlist x sample
        index.cp.max_points_per_centroid = int(spec.train_per_cell)
        index.cp.niter = 10  # auto tunes nprobe afterwards: fewer k-means rounds suffice
    return index


def _ivfpq(d: int, n: int, spec: IndexSpec) -> faiss.Index:
    # OPQ rotation + IVF cells + 8-bit PQ codes of pq_m bytes (autofaiss's large kind);
    # "np": no polysemous training (a Hamming-filter ordering of the codes no search here
    # uses; it was ~80% of an IVF-PQ's training: 62 -> 11 s for PQ32 on 12k x 64 rows).
    m = _pq_m(d, spec)
    index = faiss.index_factory(d, f"OPQ{m},IVF{_nlist(n, spec)},PQ{m}x8np",
                                faiss.METRIC_INNER_PRODUCT)
    ivf = faiss.extract_index_ivf(index)
    ivf.cp.seed = spec.seed
    if spec.train_per_cell:
        ivf.cp.max_points_per_centroid = int(spec.train_per_cell)
    pre: Any = faiss.downcast_index(index)
    opq: Any = faiss.downcast_VectorTransform(pre.chain.at(0))
    opq.niter = int(spec.opq_iter)
    faiss.downcast_index(ivf).pq.cp.seed = spec.seed
    return index


def _hnsw(d: int, n: int, spec: IndexSpec) -> faiss.Index:
    inner = faiss.IndexHNSWFlat(d, spec.hnsw_m, faiss.METRIC_INNER_PRODUCT)
    return faiss.IndexIDMap2(inner)


def _pq(d: int, n: int, spec: IndexSpec) -> faiss.Index:
    # 4-bit codes keep training feasible on small collections (16 centroids each).
    nbits = 8 if n >= 256 * 39 else 4
    inner = faiss.IndexPQ(d, _pq_m(d, spec), nbits, faiss.METRIC_INNER_PRODUCT)
    inner.pq.cp.seed = spec.seed
    return faiss.IndexIDMap2(inner)


#: Builders by kind name: ``builder(dim, n_vectors, spec) -> untrained FAISS index``.
INDEX_KINDS: dict[str, Callable[[int, int, IndexSpec], faiss.Index]] = {
    "flat": _flat,
    "ivf": _ivf,
    "hnsw": _hnsw,
    "pq": _pq,
    "ivfpq": _ivfpq,
}


def build_index(
    vectors: np.ndarray,
    ids: np.ndarray | None = None,
    kind: str = "flat",
    **options: Any,
) -> faiss.Index:
    """Build a FAISS inner-product index holding ``vectors[i]`` under id ``ids[i]``.

    Parameters
    ----------
    vectors : (n, d) array
        L2-normalised vectors to add (only the valid rows: skipped rows are left out
        by the caller, so they can never be returned).
    ids : (n,) int array, optional
        Row ids of ``vectors``; default ``0..n-1``.
    kind : {"flat", "ivf", "hnsw", "pq"}
        ``flat`` is exact (``IndexIDMap2`` over ``IndexFlatIP``); the others are
        approximate and should be checked with :func:`measure_recall`.
    **options
        Fields of :class:`IndexSpec` (``nlist``, ``nprobe``, ``hnsw_m``, ...).

    Returns
    -------
    faiss.Index

    Example
    -------
    >>> import numpy as np
    >>> build_index(np.eye(4, dtype="float32"), np.array([3, 5, 7, 9])).ntotal
    4
    """
    if kind not in INDEX_KINDS:
        raise UserInputError(f"Unknown index kind {kind!r}. Known: {', '.join(INDEX_KINDS)}")
    spec = IndexSpec(kind=kind, **options)
    x = np.asarray(vectors)  # a memory map stays one: converted a block at a time
    if x.ndim != 2:
        raise UserInputError(f"vectors must be a 2-D array (n, dim), got shape {x.shape}")
    n, d = x.shape
    ids = np.arange(n, dtype=np.int64) if ids is None else np.asarray(ids, dtype=np.int64)
    if ids.shape != (n,):
        raise UserInputError(f"ids must have shape ({n},), got {ids.shape}")
    index = INDEX_KINDS[kind](d, n, spec)
    if not index.is_trained:
        if n == 0:
            raise UserInputError(f"cannot train a {kind!r} index on zero vectors")
        index.train(_as_matrix(x[_training_rows(index, n, spec.seed)], "vectors"))
    for lo in range(0, n, _ADD_ROWS):  # a float16 10M x 512 matrix is 20 GB as float32
        index.add_with_ids(_as_matrix(x[lo:lo + _ADD_ROWS], "vectors"), ids[lo:lo + _ADD_ROWS])
    _set_search_defaults(index, spec)
    return index


#: Rows converted to float32 and added at a time (256 MB at 512-d).
_ADD_ROWS = 131072
#: Training rows of the PQ codebooks and the OPQ rotation (FAISS samples 256 per centroid).
_PQ_TRAIN = 256 * 256


def _training_rows(index: faiss.Index, n: int, seed: int) -> Any:
    """The rows an untrained index is trained on: all of them, or (IVF, PQ) the seeded
    sample FAISS would draw itself (``max_points_per_centroid`` per cell, 65,536 for the
    codebooks), taken before the float32 copy and any OPQ rotation of the whole matrix."""
    inner = _inner(index)
    need = _PQ_TRAIN if isinstance(inner, (faiss.IndexPQ, faiss.IndexIVFPQ)) else 0
    if isinstance(inner, faiss.IndexIVF):
        need = max(need, int(inner.nlist) * int(inner.cp.max_points_per_centroid))
    if need == 0 or n <= need:
        return slice(None)
    return np.sort(np.random.default_rng(seed).choice(n, size=need, replace=False))


def _set_search_defaults(index: faiss.Index, spec: IndexSpec) -> None:
    inner = _inner(index)
    if isinstance(inner, faiss.IndexIVF):
        inner.nprobe = spec.nprobe or max(1, inner.nlist // 4)
    elif isinstance(inner, faiss.IndexHNSW):
        inner.hnsw.efSearch = max(spec.ef_search, 1)


def _inner(index: faiss.Index) -> Any:  # SWIG classes: faiss's stubs are incomplete
    index = faiss.downcast_index(index)
    if isinstance(index, faiss.IndexIDMap):
        return faiss.downcast_index(index.index)
    if isinstance(index, faiss.IndexPreTransform):  # OPQ rotation in front of IVF-PQ
        return faiss.downcast_index(index.index)
    return index


def search_knob(index: faiss.Index) -> tuple[str, int] | None:
    """The search-time knob of ``index``: ``("nprobe", n)`` (IVF kinds),
    ``("ef_search", n)`` (HNSW) or None (flat, PQ: nothing to tune).

    Example
    -------
    >>> import numpy as np
    >>> search_knob(build_index(np.eye(4, dtype="float32"))) is None
    True
    """
    inner = _inner(index)
    if isinstance(inner, faiss.IndexIVF):
        return "nprobe", int(inner.nprobe)
    if isinstance(inner, faiss.IndexHNSW):
        return "ef_search", int(inner.hnsw.efSearch)
    return None


def set_search_knob(index: faiss.Index, value: int) -> None:
    """Set ``index``'s search knob (:func:`search_knob`) to ``value`` (clamped to >= 1;
    ``nprobe`` to at most ``nlist``)."""
    inner = _inner(index)
    if isinstance(inner, faiss.IndexIVF):
        inner.nprobe = int(min(max(1, value), inner.nlist))
    elif isinstance(inner, faiss.IndexHNSW):
        inner.hnsw.efSearch = int(max(1, value))
    else:
        raise UserInputError(f"a {type(inner).__name__} index has no search knob")


def scores_are_exact(index: faiss.Index) -> bool:
    """Whether ``index`` scores its candidates with the full float32 vectors (flat,
    IVF-Flat, HNSW-Flat), so its scores are exact inner products, not code distances."""
    inner = _inner(index)
    return isinstance(inner, (faiss.IndexFlat, faiss.IndexIVFFlat, faiss.IndexHNSWFlat))


def index_nlist(index: faiss.Index) -> int | None:
    """IVF cells of ``index`` (None for kinds without cells)."""
    inner = _inner(index)
    return int(inner.nlist) if isinstance(inner, faiss.IndexIVF) else None


def describe_index(index: faiss.Index) -> dict[str, Any]:
    """A JSON-ready description of an index (kind, FAISS class, size and knobs).

    Example
    -------
    >>> import numpy as np
    >>> describe_index(build_index(np.eye(4, dtype="float32")))["kind"]
    'flat'
    """
    inner = _inner(index)
    out: dict[str, Any] = {
        "faiss_class": type(inner).__name__,
        "metric": "inner_product",
        "ntotal": int(index.ntotal),
        "dim": int(index.d),
    }
    if isinstance(inner, faiss.IndexIVFPQ):
        opq = isinstance(faiss.downcast_index(index), faiss.IndexPreTransform)
        out.update(kind="ivfpq", nlist=int(inner.nlist), nprobe=int(inner.nprobe),
                   pq_m=int(inner.pq.M), pq_nbits=int(inner.pq.nbits), opq=opq)
    elif isinstance(inner, faiss.IndexIVF):
        out.update(kind="ivf", nlist=int(inner.nlist), nprobe=int(inner.nprobe))
    elif isinstance(inner, faiss.IndexHNSW):
        hnsw: Any = inner.hnsw
        out.update(kind="hnsw", hnsw_m=int(hnsw.nb_neighbors(1)), ef_search=int(hnsw.efSearch))
    elif isinstance(inner, faiss.IndexPQ):
        out.update(kind="pq", pq_m=int(inner.pq.M), pq_nbits=int(inner.pq.nbits))
    else:
        out.update(kind="flat")
    return out


def _search_params(index: faiss.Index, rows: np.ndarray | None) -> Any:
    if rows is None:
        return None
    sel = faiss.IDSelectorBatch(np.ascontiguousarray(rows, dtype=np.int64))
    inner = _inner(index)
    params: Any
    if isinstance(inner, faiss.IndexIVF):
        params = _SWIG.SearchParametersIVF(sel=sel, nprobe=int(inner.nprobe))
    elif isinstance(inner, faiss.IndexHNSW):
        params = _SWIG.SearchParametersHNSW(sel=sel, efSearch=int(inner.hnsw.efSearch))
    elif isinstance(inner, faiss.IndexFlat):
        params = _SWIG.SearchParameters(sel=sel)
    else:
        return None  # no selector support (e.g. IndexPQ): filtered after the search
    if isinstance(faiss.downcast_index(index), faiss.IndexPreTransform):
        outer = _SWIG.SearchParametersPreTransform(index_params=params)
        outer._keep = params
        params = outer
    params._keep_selector = sel  # the SWIG object must outlive the search
    return params


def search_index(
    index: faiss.Index,
    queries: np.ndarray,
    k: int,
    *,
    rows: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Top-``k`` inner-product search; ``rows`` restricts results to those row ids.

    Returns ``(scores, ids)``, both ``(n_queries, k)``; where fewer than ``k`` rows
    qualify, ids are ``-1`` and scores ``-inf``.

    Example
    -------
    >>> import numpy as np
    >>> idx = build_index(np.eye(3, dtype="float32"))
    >>> search_index(idx, np.eye(3, dtype="float32")[:1], 2, rows=np.array([0]))[1]
    array([[ 0, -1]])
    """
    q = _as_matrix(queries, "queries")
    if q.shape[1] != index.d:
        raise IndexMismatchError(
            f"query vectors have dim {q.shape[1]} but the index holds dim {index.d}; "
            "encode the queries with the same backbone as the store"
        )
    positive_int("k", k)
    params = _search_params(index, rows)
    if rows is not None and params is None:
        scores, ids = _search_filtered(index, q, int(k), rows)
    else:
        scores, ids = index.search(q, int(k), params=params)
    ids = ids.astype(np.int64)
    scores = np.where(ids < 0, -np.inf, scores).astype(np.float32)
    return scores, ids


def _search_filtered(
    index: faiss.Index, q: np.ndarray, k: int, rows: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    # Index kinds without id selectors: rank everything, keep the allowed ids.
    scores, ids = index.search(q, max(int(index.ntotal), 1))
    keep = np.isin(ids, np.asarray(rows, dtype=np.int64)) & (ids >= 0)
    out_s = np.full((len(q), k), -np.inf, dtype=np.float32)
    out_i = np.full((len(q), k), -1, dtype=np.int64)
    for j in range(len(q)):
        s, i = scores[j][keep[j]][:k], ids[j][keep[j]][:k]
        out_s[j, : len(s)], out_i[j, : len(i)] = s, i
    return out_s, out_i


def brute_force(
    vectors: np.ndarray,
    queries: np.ndarray,
    k: int,
    valid: np.ndarray | None = None,
    *,
    rows: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Exact numpy top-``k`` by inner product: the reference every index is tested against.

    Row ``i`` of ``vectors`` has id ``i``. Rows where ``valid`` is False, or outside
    ``rows`` when given, are never returned. Ties keep the lower id first.

    Example
    -------
    >>> import numpy as np
    >>> brute_force(np.eye(3), np.eye(3)[:1], 2, valid=np.array([False, True, True]))[1]
    array([[1, 2]])
    """
    x = _as_matrix(vectors, "vectors")
    q = _as_matrix(queries, "queries")
    scores = (q.astype(np.float64) @ x.astype(np.float64).T)
    allowed = allowed_mask(x.shape[0], valid, rows)
    scores[:, ~allowed] = -np.inf
    order = np.argsort(-scores, axis=1, kind="stable")[:, :k]
    top = np.take_along_axis(scores, order, axis=1)
    ids = np.where(np.isfinite(top), order, -1).astype(np.int64)
    if ids.shape[1] < k:
        pad = k - ids.shape[1]
        ids = np.pad(ids, ((0, 0), (0, pad)), constant_values=-1)
        top = np.pad(top, ((0, 0), (0, pad)), constant_values=-np.inf)
    return top.astype(np.float32), ids


def measure_recall(
    approx: faiss.Index,
    exact: faiss.Index,
    queries: np.ndarray,
    k: int,
) -> float:
    """Recall@k of ``approx`` against ``exact``: mean share of the exact top-k found.

    Definition: for each query, |approx top-k ∩ exact top-k| / |exact top-k|
    (ids of -1 ignored), averaged over queries.

    Example
    -------
    >>> import numpy as np
    >>> x = np.random.default_rng(0).standard_normal((64, 8)).astype("float32")
    >>> x /= np.linalg.norm(x, axis=1, keepdims=True)
    >>> measure_recall(build_index(x, kind="hnsw"), build_index(x), x, 5)
    1.0
    """
    _, a = search_index(approx, queries, k)
    _, e = search_index(exact, queries, k)
    hits = []
    for ra, re in zip(a, e, strict=True):
        truth = set(re[re >= 0].tolist())
        if truth:
            hits.append(len(truth & set(ra[ra >= 0].tolist())) / len(truth))
    return float(np.mean(hits)) if hits else 1.0


# ----------------------------------------------------------------------------- device search

def faiss_gpus() -> int:
    """GPUs faiss can use (0 for faiss-cpu, which has no GPU support)."""
    counter = getattr(faiss, "get_num_gpus", None)
    return int(counter()) if counter is not None and hasattr(faiss, "StandardGpuResources") else 0


def to_faiss_gpu(index: faiss.Index, device: int = 0) -> faiss.Index | None:
    """A GPU copy of a flat index (faiss-gpu, ``clipindex[gpu]``); None where faiss has
    no GPU or the index is not flat (approximate kinds keep their CPU index)."""
    if faiss_gpus() == 0 or not isinstance(_inner(index), faiss.IndexFlat):
        return None
    resources = _SWIG.StandardGpuResources()
    gpu = _SWIG.index_cpu_to_gpu(resources, int(device), index)
    gpu._keep_resources = resources  # the resources must outlive the index
    return gpu


def set_search_threads(n: int) -> None:
    """Let FAISS use ``n`` OpenMP threads in the *calling* thread (an OpenMP setting is
    per thread: a server's request threads start with the process default, every core)."""
    faiss.omp_set_num_threads(max(1, int(n)))

