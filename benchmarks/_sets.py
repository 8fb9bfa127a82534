"""``bench_search.py --set clustered|loose``: clipindex ``auto`` against hand-tuned sweeps
(IVF nlist=sqrt(N) over nprobe, HNSW32 over efSearch) on one data set, in one run.

- ``clustered``: 10,000 centres, noise 0.9 (every cluster ~N/10k rows: IVF cells hold
  whole clusters);
- ``loose``: 100 centres, noise 0.75 (nearest-neighbour cosine ~0.7: each cluster spans
  many cells, the hard case for IVF).

Queries (``--queries``, default 1,000) come from the same distribution and are not in
the base; recall@10 is against their exact top-10. Every point's one-query p50 is over
``--repeats`` calls at 1 thread. Builds run at 1 thread, hand IVF then auto (``--rounds``
alternating rounds; the median of each). Hand IVF is swept at nlist = sqrt(N) (the
build yardstick, FAISS's default training) and at 4 sqrt(N) (k-means on 64 points a
cell, 10 rounds: FAISS's default 256 a cell would train on every row of 1M, ~30 min
here). ``auto`` is ``clipindex.index.auto.auto_index``
(what ``--index-kind auto`` builds), searched as ``BackboneIndex.search`` does. The best
hand-tuned point is the fastest sweep point whose recall is >= auto's (else the most
accurate one); the build ratio compares auto with hand IVF at the nprobe reaching
auto's recall (the build does not depend on nprobe). HNSW (``--hnsw-m``, default 32; e.g.
``32,16``) is built at 1 thread over the first ``--hnsw-n`` rows (``0``: all N) and swept
over efSearch; only a graph over all N rows counts as a hand-tuned point at N (a smaller
one is reported, not counted). With ``--hnsw-cache DIR`` a graph over all N rows is
written there (keyed by set, N, M and seed, with its build seconds and the load it was
built under) and read back by a later run instead of being rebuilt; at most two graphs
are kept there (the oldest goes first).
"""

from __future__ import annotations

import json
import os
import statistics
import time
from pathlib import Path
from typing import Any

import _common as common
import numpy as np

SETS = {"clustered": (10_000, 0.9), "loose": (100, 0.75)}
NPROBES = (1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 48, 64)
EF_SEARCH = (16, 24, 32, 48, 64, 96, 128, 256, 512)
K = 10


def _p50(search: Any, queries: np.ndarray, repeats: int) -> float:
    search(queries[:1])
    times = []
    for i in range(repeats):
        q = queries[i % len(queries)][None]
        t0 = time.perf_counter()
        search(q)
        times.append(time.perf_counter() - t0)
    return statistics.median(times) * 1e3


def _recall(found: np.ndarray, truth: np.ndarray) -> float:
    return float(np.mean([len(set(f[f >= 0].tolist()) & set(t.tolist())) / len(t)
                          for f, t in zip(found, truth, strict=True)]))


def _sweep(index: Any, knob_values: tuple[int, ...], queries: np.ndarray, truth: np.ndarray,
           repeats: int, name: str) -> list[dict[str, Any]]:
    from clipindex.index import kinds

    points = []
    for value in knob_values:
        kinds.set_search_knob(index, value)
        found = kinds.search_index(index, queries, K)[1]
        points.append({"contender": name, "knob": value, "recall": _recall(found, truth),
                       "p50": _p50(lambda q: kinds.search_index(index, q, K), queries,
                                   repeats)})
        if points[-1]["recall"] >= 0.999:
            break
    return points


def _builds(x: np.ndarray, args: Any, nlist: int) -> tuple[Any, list[float], Any, dict,
                                                            list[float]]:
    from clipindex.index import kinds
    from clipindex.index.auto import auto_index
    from clipindex.index.tuning import AutoSettings

    ids = np.arange(len(x), dtype=np.int64)
    hand_s, auto_s = [], []
    hand = auto = desc = None
    for r in range(args.rounds):
        del hand, auto
        common.log(f"set {args.set}: round {r + 1}: hand IVF{nlist}")
        t0 = time.perf_counter()
        hand = kinds.build_index(x, ids, kind="ivf", nlist=nlist)
        hand_s.append(time.perf_counter() - t0)
        common.log(f"set {args.set}: round {r + 1}: auto ({hand_s[-1]:.0f} s for hand)")
        t0 = time.perf_counter()
        auto, desc = auto_index(x, ids, {}, "image_to_image",
                                AutoSettings(target_recall=0.95, queries=args.tune_queries))
        auto_s.append(time.perf_counter() - t0)
        common.log(f"set {args.set}: auto {auto_s[-1]:.0f} s: {desc.get('kind')} "
                   f"{desc.get('nlist') or desc.get('hnsw_m')} {desc.get('tuned_knob')}="
                   f"{desc.get('tuned_value')}")
    return hand, hand_s, auto, desc, auto_s


def run_set(args: Any, unit_vectors: Any, clustered: Any, numpy_top_k: Any) -> int:
    """Run one set (module docstring); print and write its RESULTS.md section.

    Long because it is the whole benchmark: data, builds, sweeps, ratios, section."""
    import logging

    from clipindex.index import kinds
    from clipindex.index.topk import top_k

    logging.basicConfig(format="%(asctime)s %(message)s", level=logging.WARNING)
    logging.getLogger("clipindex.store").setLevel(logging.INFO)
    centres_n, noise = SETS[args.set]
    n, size = args.n, (f"{args.n / 1e6:g}M" if args.n >= 1_000_000 else f"{args.n / 1e3:g}k")
    centres = unit_vectors(centres_n, 512, args.seed)
    common.log(f"set {args.set}: {n:,} vectors, {centres_n:,} centres, noise {noise}")
    x = clustered(n, centres, args.seed + 1, noise=noise)
    queries = clustered(args.queries, centres, args.seed + 2, noise=noise)
    scores, truth = numpy_top_k(x, queries, K)
    nn_cos = float(np.mean(scores[:, 0]))
    nlist = max(1, int(round(np.sqrt(n))))
    with common.cpu_threads(1):
        hand, hand_s, auto, desc, auto_s = _builds(x, args, nlist)
        points = _sweep(hand, NPROBES, queries, truth, args.repeats, f"hand IVF{nlist}")
        del hand
        big = max(1, min(4 * nlist, n // 39))  # the other usual hand choice, 4 sqrt(N)
        common.log(f"set {args.set}: hand IVF{big}")
        t0 = time.perf_counter()
        hand = kinds.build_index(x, np.arange(n), kind="ivf", nlist=big, train_per_cell=64)
        big_s = time.perf_counter() - t0
        points += _sweep(hand, NPROBES, queries, truth, args.repeats, f"hand IVF{big}")
        del hand
        rerank = int(desc.get("rerank_factor") or 1)
        found = top_k(auto, x, queries, K, rerank=rerank)[1]
        a = {"recall": _recall(found, truth),
             "p50": _p50(lambda q: top_k(auto, x, q, K, rerank=rerank), queries,
                         args.repeats)}
        hn = n if args.hnsw_n <= 0 else min(n, args.hnsw_n)
        sub_truth = truth if hn == n else numpy_top_k(x[:hn], queries, K)[1]
        hpoints, hbuilds = [], []
        for m in (int(v) for v in str(args.hnsw_m).split(",") if v.strip()):
            got, built = _hnsw_sweep(x, hn, m, queries, sub_truth, args)
            hpoints += got
            hbuilds.append(built)
    counted = points + (hpoints if hn == n else [])
    at = [p for p in counted if p["recall"] >= a["recall"]]
    best = min(at, key=lambda p: p["p50"]) if at else max(counted, key=lambda p: p["recall"])
    small = [p for p in points if p["contender"] == f"hand IVF{nlist}"]
    ivf_at = [p for p in small if p["recall"] >= a["recall"]]
    ivf_ref = ivf_at[0] if ivf_at else max(small, key=lambda p: p["recall"])
    load = os.getloadavg()
    lines = [
        f"- {n:,} x 512 float32, {centres_n:,} centres, noise {noise}: mean cosine of a "
        f"query's nearest neighbour {nn_cos:.2f}; {args.queries:,} held-out queries not "
        f"in the base; p50 over {args.repeats} one-query calls, 1 thread; load average "
        f"{load[0]:.1f} / {load[1]:.1f} / {load[2]:.1f} (2 shared cores)",
        f"- builds, {args.rounds} round(s) alternating: hand IVF{nlist} "
        f"{', '.join(f'{s:.0f}' for s in hand_s)} s; auto {', '.join(f'{s:.0f}' for s in auto_s)}"
        f" s; hand IVF{big} (once) {big_s:.0f} s; " + "; ".join(hbuilds),
        f"- auto chose {desc.get('kind')} ({_knobs(desc)}); recorded held-out recall@10 "
        f"{desc.get('recall_at_10')} on {desc.get('held_out_queries')} queries; cell "
        f"candidates {desc.get('cell_candidates')}; HNSW: {desc.get('hnsw_candidate')}",
        "", "| contender | knob | recall@10 | p50 (ms) |", "|---|---|---|---|",
        f"| clipindex auto | {_knobs(desc)} | {a['recall']:.3f} | {a['p50']:.3f} |",
        *(f"| {p['contender']} | {p['knob']} | {p['recall']:.3f} | {p['p50']:.3f} |"
          for p in points + hpoints), "",
        f"- best hand-tuned point at recall >= auto's: {best['contender']} {best['knob']} "
        f"(recall {best['recall']:.3f}, p50 {best['p50']:.3f} ms)"
        + (f"; its build {best['build']}" if "build" in best else ""),
        *_best_of_each(counted, a["recall"])]
    ratios = [
        common.ratio_line(a["p50"] / best["p50"], (
            f"clipindex auto over best hand-tuned point, 1-query p50 at equal recall, "
            f"{size} {args.set} (auto recall@10 {a['recall']:.3f}, best point "
            f"{best['contender']} {best['knob']} {best['recall']:.3f})")),
        common.ratio_line(statistics.median(auto_s) / statistics.median(hand_s), (
            f"clipindex auto build time over hand IVF at equal recall, {size} {args.set} "
            f"(hand IVF{nlist} reaches {ivf_ref['recall']:.3f} at nprobe {ivf_ref['knob']}; "
            f"auto {a['recall']:.3f})"))]
    print("\n".join(lines + [""] + ratios))
    if not args.no_write:
        # --section (e.g. a 200k run beside the 1M figures), else bench_search_<set>
        common.write_section(getattr(args, "section", None) or f"bench_search_{args.set}",
                             f"Auto against hand-tuned sweeps ({size} {args.set})",
                             [f"- command: `{common.command_line()}`", *lines], ratios,
                             args.results)
    return 0


def _knobs(desc: dict[str, Any]) -> str:
    keys = ("nlist", "nprobe", "hnsw_m", "ef_search", "pq_m", "rerank_factor")
    return ", ".join(f"{k}={desc[k]}" for k in keys if k in desc)


def _hnsw_sweep(x: np.ndarray, hn: int, m: int, queries: np.ndarray, truth: np.ndarray,
                args: Any) -> tuple[list[dict[str, Any]], str]:
    """HNSW``m`` over the first ``hn`` rows (built at the caller's 1 thread, or read from
    ``--hnsw-cache``), swept over efSearch; its points and a line on its build."""
    from clipindex.index import kinds

    cache = getattr(args, "hnsw_cache", None)
    path = (Path(cache) / f"{args.set}-n{hn}-M{m}-seed{args.seed}.index"
            if cache and hn == len(x) else None)
    if path is not None and path.is_file() and path.with_suffix(".json").is_file():
        from clipindex.index.files import load_index

        meta = json.loads(path.with_suffix(".json").read_text())
        index = load_index(path)
        build = (f"HNSW{m} over {hn:,} rows {meta['build_s']:.0f} s (1 thread, load "
                 f"{meta['load']}; read from {path.name})")
    else:
        common.log(f"set {args.set}: HNSW{m} over {hn:,} rows")
        load0 = os.getloadavg()[0]
        t0 = time.perf_counter()
        index = kinds.build_index(x[:hn], np.arange(hn), kind="hnsw", hnsw_m=m)
        build_s = time.perf_counter() - t0
        load = f"{load0:.1f} -> {os.getloadavg()[0]:.1f}"
        build = f"HNSW{m} over {hn:,} rows {build_s:.0f} s (1 thread, load {load})"
        common.log(f"set {args.set}: {build}")
        if path is not None:
            _cache_graph(index, path, {"build_s": build_s, "load": load})
    name = f"hand HNSW{m}" + ("" if hn == len(x) else f" (first {hn:,} rows)")
    points = _sweep(index, EF_SEARCH, queries, truth, args.repeats, name)
    del index
    for p in points:
        p["build"] = build.split(" (")[0].split(" rows ")[-1]
    return points, build


def _cache_graph(index: Any, path: Path, meta: dict[str, Any]) -> None:
    """Write ``index`` and its build ``meta`` to ``path``, leaving at most two graphs in
    its folder (the oldest removed first)."""
    from clipindex.index.files import save_index

    path.parent.mkdir(parents=True, exist_ok=True)
    old = sorted(path.parent.glob("*.index"), key=lambda f: f.stat().st_mtime)
    for f in old[:max(0, len(old) - 1)]:
        f.unlink()
        f.with_suffix(".json").unlink(missing_ok=True)
    save_index(index, path)
    path.with_suffix(".json").write_text(json.dumps(meta))


def _best_of_each(points: list[dict[str, Any]], recall: float) -> list[str]:
    """The fastest point of each swept contender at recall >= ``recall``."""
    out = []
    for name in dict.fromkeys(p["contender"] for p in points):
        at = [p for p in points if p["contender"] == name and p["recall"] >= recall]
        if at:
            b = min(at, key=lambda p: p["p50"])
            out.append(f"  - {name}: {b['knob']} (recall {b['recall']:.3f}, p50 "
                       f"{b['p50']:.3f} ms" + (f", build {b['build']})" if "build" in b
                                               else ")"))
        else:
            out.append(f"  - {name}: no point reaches {recall:.3f}")
    return out
