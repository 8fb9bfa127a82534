"""Store search (FAISS through clipindex.store.indexes) vs numpy brute force, same run.

Random L2-normalised 512-d float32 vectors at 10k, 100k and 1M rows. For each size:

- latency of 1 query: median over repeats (store and numpy alternate, each with its own
  query of the same batch);
- throughput of 1,000 queries in one call;

where "store" is ``clipindex.store.indexes.search_index`` on the exact flat index that
``build_store`` writes (``IndexIDMap2(IndexFlatIP)``), the same call
``BackboneIndex.search`` makes, and "numpy" is ``X @ q`` + ``np.argpartition``.
Approximate kinds (IVF, HNSW) are timed against the flat index of the same size and
their recall@10 against the exact top-10 is measured. Random vectors on a 512-d sphere
are the hardest case for approximate indexes (every neighbour is nearly as far as any
other), so their recall here is a lower bound for real embeddings.

Run: ``python benchmarks/bench_search.py`` (about 3 minutes on 2 cores) or ``--quick``.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as common  # noqa: E402

SECTION = "bench_search"
DIM = 512
K = 10


def unit_vectors(n: int, dim: int, seed: int, chunk: int = 65536) -> np.ndarray:
    """``n`` random unit vectors (float32), generated and normalised chunk by chunk."""
    rng = np.random.default_rng(seed)
    out = np.empty((n, dim), dtype=np.float32)
    for start in range(0, n, chunk):
        block = rng.standard_normal((min(chunk, n - start), dim), dtype=np.float32)
        block /= np.linalg.norm(block, axis=1, keepdims=True)
        out[start:start + len(block)] = block
    return out


def numpy_top_k(x: np.ndarray, queries: np.ndarray, k: int,
                chunk: int = 64) -> tuple[np.ndarray, np.ndarray]:
    """Exact top-``k`` by inner product: ``X @ q`` then ``np.argpartition``, sorted.

    Queries go ``chunk`` at a time so the score matrix stays small (64 x 1M floats).
    """
    scores_out = np.empty((len(queries), k), dtype=np.float32)
    ids_out = np.empty((len(queries), k), dtype=np.int64)
    for start in range(0, len(queries), chunk):
        s = queries[start:start + chunk] @ x.T
        part = np.argpartition(-s, k - 1, axis=1)[:, :k]
        top = np.take_along_axis(s, part, axis=1)
        order = np.argsort(-top, axis=1, kind="stable")
        ids_out[start:start + len(s)] = np.take_along_axis(part, order, axis=1)
        scores_out[start:start + len(s)] = np.take_along_axis(top, order, axis=1)
    return scores_out, ids_out


def recall_at_k(found: np.ndarray, exact: np.ndarray) -> float:
    """Mean share of each query's exact top-k ids that ``found`` also returns."""
    hits = [len(set(f[f >= 0].tolist()) & set(e.tolist())) / len(e)
            for f, e in zip(found, exact, strict=True)]
    return float(np.mean(hits))


def _latency(fns: dict[str, Any], queries: np.ndarray, repeats: int) -> dict[str, float]:
    """Median seconds of one single-query call per contender, alternating contenders."""
    import time

    times: dict[str, list[float]] = {name: [] for name in fns}
    for fn in fns.values():  # warm-up (page faults, BLAS thread start)
        fn(queries[:1])
    for i in range(repeats):
        q = queries[i % len(queries)][None]
        for name, fn in fns.items():
            start = time.perf_counter()
            fn(q)
            times[name].append(time.perf_counter() - start)
    return {name: float(np.median(t)) for name, t in times.items()}


def _throughput(fns: dict[str, Any], queries: np.ndarray) -> tuple[dict[str, float], dict]:
    results, seconds = {}, {}
    for name, fn in fns.items():
        with common.stopwatch() as t:
            results[name] = fn(queries)
        seconds[name] = t["s"]
    return seconds, results


def bench_exact(n: int, queries: np.ndarray, repeats: int, seed: int) -> dict[str, Any]:
    """Flat store index vs numpy at ``n`` rows; returns figures and the exact top-k."""
    from clipindex.store.indexes import build_index, search_index

    common.log(f"search: {n:,} vectors")
    x = unit_vectors(n, DIM, seed)
    with common.stopwatch() as t:
        index = build_index(x, np.arange(n, dtype=np.int64), kind="flat")
    fns = {"store": lambda q: search_index(index, q, K),
           "numpy": lambda q: numpy_top_k(x, q, K)}
    lat = _latency(fns, queries, repeats)
    seconds, results = _throughput(fns, queries)
    agree = float(np.mean(results["store"][1] == results["numpy"][1]))
    return {"n": n, "build_s": t["s"], "latency": lat, "batch": seconds, "agree": agree,
            "x": x, "exact": results["store"][1]}


def bench_approx(kind: str, x: np.ndarray, exact: np.ndarray, queries: np.ndarray,
                 repeats: int, options: dict[str, Any],
                 nprobes: tuple[int | None, ...] = (None,)) -> list[dict[str, Any]]:
    """Build an approximate index over ``x`` once; per ``nprobe`` (IVF) its latency,
    throughput and recall@10 against the exact top-10."""
    import faiss

    from clipindex.store.indexes import build_index, describe_index, search_index

    common.log(f"search: {kind} over {len(x):,} vectors {options}")
    with common.stopwatch() as t:
        index = build_index(x, np.arange(len(x), dtype=np.int64), kind=kind, **options)
    rows = []
    for nprobe in nprobes:
        if nprobe is not None:
            faiss.extract_index_ivf(index).nprobe = int(nprobe)
        fns = {kind: lambda q: search_index(index, q, K)}
        lat = _latency(fns, queries, repeats)
        seconds, results = _throughput(fns, queries)
        rows.append({"kind": kind, "n": len(x), "build_s": t["s"], "latency": lat[kind],
                     "batch": seconds[kind], "recall": recall_at_k(results[kind][1], exact),
                     "describe": describe_index(index)})
    return rows


def _flat_reference(x: np.ndarray, queries: np.ndarray, repeats: int) -> dict[str, Any]:
    from clipindex.store.indexes import build_index, search_index

    index = build_index(x, np.arange(len(x), dtype=np.int64))
    fns = {"flat": lambda q: search_index(index, q, K)}
    lat = _latency(fns, queries, repeats)
    seconds, results = _throughput(fns, queries)
    return {"latency": lat["flat"], "batch": seconds["flat"], "exact": results["flat"][1]}


def _fmt_n(n: int) -> str:
    return f"{n // 1_000_000}M" if n % 1_000_000 == 0 else (
        f"{n // 1000}k" if n % 1000 == 0 else str(n))


def report_exact(rows: list[dict[str, Any]], n_queries: int) -> tuple[list[str], list[str]]:
    """Markdown table lines and ratio lines of the exact comparison."""
    lines = [f"| vectors | store 1 query (ms) | numpy 1 query (ms) | store {n_queries:,} "
             f"queries (s) | numpy {n_queries:,} queries (s) | same top-{K} ids |",
             "|---|---|---|---|---|---|"]
    ratios = []
    for r in rows:
        lat, bat, size = r["latency"], r["batch"], _fmt_n(r["n"])
        lines.append(f"| {size} | {lat['store'] * 1e3:.2f} | {lat['numpy'] * 1e3:.2f} | "
                     f"{bat['store']:.2f} | {bat['numpy']:.2f} | {r['agree']:.1%} |")
        ratios.append(common.ratio_line(
            lat["numpy"] / lat["store"],
            f"store search (FAISS flat) over numpy brute force, 1-query latency at {size}"))
        ratios.append(common.ratio_line(
            bat["numpy"] / bat["store"],
            f"store search (FAISS flat) over numpy brute force, {n_queries:,}-query "
            f"throughput at {size}"))
    return lines, ratios


def report_approx(rows: list[dict[str, Any]], refs: dict[int, dict[str, Any]],
                  n_queries: int) -> tuple[list[str], list[str]]:
    """Markdown table lines and ratio lines of the approximate kinds vs flat."""
    lines = ["", f"| index | vectors | knobs | build (s) | 1 query (ms) | {n_queries:,} "
             f"queries (s) | recall@{K} vs exact |", "|---|---|---|---|---|---|---|"]
    ratios = []
    skip = {"faiss_class", "metric", "ntotal", "dim", "kind"}
    for n, ref in refs.items():
        lines.append(f"| flat (exact) | {_fmt_n(n)} | | | {ref['latency'] * 1e3:.2f} | "
                     f"{ref['batch']:.2f} | 1.000 |")
    for r in rows:
        ref, size = refs[r["n"]], _fmt_n(r["n"])
        knobs = ", ".join(f"{k}={v}" for k, v in r["describe"].items() if k not in skip)
        lines.append(f"| {r['kind']} | {size} | {knobs} | {r['build_s']:.1f} | "
                     f"{r['latency'] * 1e3:.2f} | {r['batch']:.2f} | {r['recall']:.3f} |")
        ratios.append(common.ratio_line(
            ref["latency"] / r["latency"],
            f"{r['kind']} ({knobs}) over flat, 1-query latency at {size} "
            f"(recall@{K} {r['recall']:.3f})"))
        ratios.append(common.ratio_line(
            ref["batch"] / r["batch"],
            f"{r['kind']} ({knobs}) over flat, {n_queries:,}-query throughput at {size} "
            f"(recall@{K} {r['recall']:.3f})"))
    return lines, ratios


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark (``argv``: command-line arguments) and update RESULTS.md."""
    return common.run_with_threads(_main, argv)


def _main(argv: list[str] | None = None) -> int:
    parser = common.base_parser(__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="10000,100000,1000000",
                        help="comma-separated collection sizes for the exact comparison")
    parser.add_argument("--queries", type=int, default=1000, help="queries in the batch")
    parser.add_argument("--repeats", type=int, default=15, help="single-query repeats")
    parser.add_argument("--ivf-nlist", type=int, default=256)
    parser.add_argument("--ivf-nprobe", default="8,32", help="comma-separated nprobe values")
    parser.add_argument("--hnsw-size", type=int, default=50_000,
                        help="HNSW collection size (its build is ~1k vectors/s on 2 cores)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    if args.quick:
        args.sizes, args.queries, args.repeats = "2000,5000", 50, 3
        args.ivf_nlist, args.ivf_nprobe, args.hnsw_size = 16, "4", 2000
    sizes = [int(s) for s in args.sizes.split(",")]
    info = common.machine_info()
    queries = unit_vectors(args.queries, DIM, args.seed + 1)

    exact_rows, approx_rows, refs = [], [], {}
    for n in sizes:
        row = bench_exact(n, queries, args.repeats, args.seed)
        exact_rows.append(row)
        if n == max(sizes):  # approximate kinds over the largest collection
            refs[n] = {"latency": row["latency"]["store"], "batch": row["batch"]["store"]}
            nprobes = tuple(int(p) for p in args.ivf_nprobe.split(","))
            approx_rows += bench_approx("ivf", row["x"], row["exact"], queries, args.repeats,
                                        {"nlist": args.ivf_nlist}, nprobes)
        row.pop("x")
    hx = unit_vectors(args.hnsw_size, DIM, args.seed + 2)
    refs[args.hnsw_size] = _flat_reference(hx, queries, args.repeats)
    approx_rows += bench_approx("hnsw", hx, refs[args.hnsw_size]["exact"], queries,
                                args.repeats, {})

    lines, ratios = report_exact(exact_rows, args.queries)
    more, more_ratios = report_approx(approx_rows, refs, args.queries)
    lines, ratios = lines + more, ratios + more_ratios
    print("\n".join(lines + [""] + ratios))
    if not args.no_write:
        head = [f"- command: `{common.command_line()}`",
                *common.machine_lines(info),
                f"- random unit {DIM}-d float32 vectors, top-{K}, inner product; store = "
                "`clipindex.store.indexes.search_index` on the flat index `build_store` writes; "
                "numpy = `X @ q` + `np.argpartition` (queries 64 at a time); 1-query "
                f"figures are medians of {args.repeats} alternating runs",
                "- approximate kinds: IVF over the largest size, HNSW (default knobs) over "
                f"{_fmt_n(args.hnsw_size)} because building it over 1M on 2 cores would take "
                "tens of minutes; recall is against the exact top-10 of the same queries. "
                "Random vectors are the worst case for approximate recall.", ""]
        common.write_section(SECTION, "Search: store (FAISS) vs numpy brute force",
                             head + lines, ratios, args.results)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
