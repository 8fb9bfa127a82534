"""Store search at scale on clustered, embedding-like vectors: clipindex ``auto`` vs exact
flat, hand-tuned FAISS IVF and HNSW, and autofaiss, in one run.

Data: ``--n`` (default 1M) x 512 float32 vectors drawn around ``--centres`` random unit
centres plus Gaussian noise, normalised (real CLIP embeddings cluster the same way;
uniform random vectors, where no approximate index works, are not used any more);
queries come from the same distribution but are not in the base. Per contender: build
time, index size, p50/p99 latency of one query, 1,000-query throughput, recall@10 vs
the exact top-10, at 1 and 2 threads.

- ``flat``: exact ``IndexFlatIP`` (what ``--index-kind flat`` stores);
- ``auto``: ``clipindex.index.tuning.choose_index`` + ``tune_index`` (what
  ``--index-kind auto`` builds), searched as ``BackboneIndex.search`` does (candidates
  rescored exactly from the stored vectors);
- ``hand-ivf``: IVF-Flat, nlist = sqrt(N), the smallest nprobe of 8/16/32/64/128 that
  reaches recall 0.95 on the benchmark's own queries (an optimistic hand-tuning);
- ``hand-hnsw``: HNSW32, efSearch 64, over the first ``--hnsw-n`` rows only (its build
  runs ~1k vectors/s per core at 512-d) against flat at the same size;
- ``autofaiss``: ``autofaiss.build_index`` at the same memory budget (``--budget``,
  else the bytes of the ``auto`` index, so both trade speed for recall inside the same
  memory), run in the
  Python given by ``--autofaiss-python`` (autofaiss 2.18 pins numpy<2 and pandas<3, so
  it cannot live in clipindex's environment), searched here with the knobs it chose
  (it spends its query-time target, 5 ms, on recall); ``autofaiss-tuned`` is the same
  index with the smallest power-of-two nprobe reaching recall 0.95 on the benchmark's
  queries, so the two are also compared at equal recall;
- ``device`` (not in the default set): exact search in torch on ``--device`` (matmul +
  top-k in chunks, :func:`clipindex.index.kinds.torch_search`, what ``search --device
  cuda`` runs without faiss-gpu), the vectors moved there once (not timed), against
  ``flat`` on the CPU.

With ``--overhead`` it measures instead what clipindex adds to the engine for one query
(issue 33): on synthetic stores of ``--overhead-sizes`` rows (images and captions, dim
64, ``benchmarks/_bigstore.py``; flat and auto), the p50 of ``search_indexes`` over an
open store (text vector from the store's cache, ranking, exact rescoring, the hits'
metadata and first captions) minus the p50 of the raw FAISS ``index.search`` of the same
query vector on the same index file, measured alternately; and ``open_index``'s time.

With ``--set clustered|loose`` it runs ``auto`` against hand-tuned IVF (nprobe sweep)
and HNSW (efSearch sweep) points on one data set and prints the ratios of issue 34
(``benchmarks/_sets.py``).

Run: ``python benchmarks/bench_search.py`` (1M: ~2-4 GB RAM) or ``--quick``;
``python benchmarks/bench_search.py --overhead`` (stores kept in ``--workdir``).
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as common  # noqa: E402

SECTION = "bench_search"
DIM = 512
K = 10
AUTOFAISS_PY = Path("/tmp/afvenv/bin/python")


def unit_vectors(n: int, dim: int, seed: int, chunk: int = 65536) -> np.ndarray:
    """``n`` random unit vectors (float32), generated and normalised chunk by chunk."""
    rng = np.random.default_rng(seed)
    out = np.empty((n, dim), dtype=np.float32)
    for start in range(0, n, chunk):
        block = rng.standard_normal((min(chunk, n - start), dim), dtype=np.float32)
        block /= np.linalg.norm(block, axis=1, keepdims=True)
        out[start:start + len(block)] = block
    return out


def clustered(n: int, centres: np.ndarray, seed: int, noise: float = 0.9,
              chunk: int = 65536) -> np.ndarray:
    """``n`` unit vectors, each a random centre plus noise of norm ~``noise``."""
    rng = np.random.default_rng(seed)
    dim = centres.shape[1]
    out = np.empty((n, dim), dtype=np.float32)
    for start in range(0, n, chunk):
        m = min(chunk, n - start)
        block = centres[rng.integers(0, len(centres), m)] + noise * rng.standard_normal(
            (m, dim), dtype=np.float32) / np.sqrt(dim)
        out[start:start + m] = block / np.linalg.norm(block, axis=1, keepdims=True)
    return out


def numpy_top_k(x: np.ndarray, queries: np.ndarray, k: int,
                chunk: int = 64) -> tuple[np.ndarray, np.ndarray]:
    """Exact top-``k`` by inner product: ``X @ q`` then ``np.argpartition``, sorted."""
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


def _measure(search: Any, queries: np.ndarray, truth: np.ndarray, repeats: int,
             threads: int) -> dict[str, float]:
    """p50/p99 of single-query calls, 1,000-query seconds and recall@10 at ``threads``."""
    with common.cpu_threads(threads):
        search(queries[:1])
        times = []
        for i in range(repeats):
            t0 = time.perf_counter()
            search(queries[i % len(queries)][None])
            times.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        ids = search(queries)
        batch = time.perf_counter() - t0
    return {"p50": float(np.percentile(times, 50)), "p99": float(np.percentile(times, 99)),
            "batch": batch, "recall": recall_at_k(ids, truth)}


def _autofaiss(x: np.ndarray, budget: int, python: Path, work: Path) -> dict[str, Any]:
    """Build autofaiss's index in its own environment; returns its file and knobs."""
    np.save(work / "base.npy", x)
    script = (
        "import json,sys,numpy as np\nfrom autofaiss import build_index\n"
        "x=np.load(sys.argv[1])\n"
        "idx,info=build_index(embeddings=x,save_on_disk=True,index_path=sys.argv[2],"
        "index_infos_path=sys.argv[3],metric_type='ip',max_index_memory_usage=sys.argv[4],"
        "current_memory_available=sys.argv[5],min_nearest_neighbors_to_retrieve=10,"
        "max_index_query_time_ms=5,nb_cores=2,verbose=30)\n"
        "sys.exit(0 if idx is not None else 3)\n")
    # autofaiss returns (None, None) instead of raising when the budget leaves under 10%
    # of current_memory_available free: give it what this machine has (24 GiB) less the
    # two copies of the vectors this process and the child hold.
    available = max(budget * 2, _ram_bytes() - 2 * x.nbytes)
    t0 = time.perf_counter()
    done = subprocess.run([str(python), "-c", script, str(work / "base.npy"),
                           str(work / "af.index"), str(work / "af.json"),
                           f"{max(1, budget // 2**20)}M", f"{available // 2**20}M"],
                          capture_output=True, text=True, timeout=3600)
    seconds = time.perf_counter() - t0
    if done.returncode or not (work / "af.json").is_file():
        raise RuntimeError(f"exit {done.returncode}: " + done.stderr[-1500:])
    infos = json.loads((work / "af.json").read_text())
    return {"path": work / "af.index", "infos": infos, "build_s": seconds}


def _ram_bytes() -> int:
    return int(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"))


CONTENDERS = ("flat", "auto", "hand-ivf", "autofaiss", "hnsw")
TITLES = {"flat": "flat", "hand-ivf": "IVF", "autofaiss": "autofaiss", "hnsw": "HNSW",
          "device": "exact search in torch on the device"}


def _index_bytes(index: Any, work: Path) -> int:
    """Size of the index's file, written and removed: ``faiss.serialize_index`` would
    hold a second copy in memory (6 GB for IVF-Flat at 3M x 512, which ran out of RAM)."""
    import faiss

    path = work / "size.index"
    faiss.write_index(index, str(path))
    size = path.stat().st_size
    path.unlink()
    return size


def _flat(x: np.ndarray, ctx: dict[str, Any]) -> dict[str, dict[str, Any]]:
    from clipindex.index import kinds as indexes

    with common.cpu_threads(2), common.stopwatch() as t:
        flat = indexes.build_index(x, np.arange(len(x), dtype=np.int64))
    return {"flat": {"search": lambda q: indexes.search_index(flat, q, K)[1],
                     "build_s": t["s"], "bytes": x.nbytes, "knobs": "exact"}}


def _auto(x: np.ndarray, ctx: dict[str, Any]) -> dict[str, dict[str, Any]]:

    from clipindex.index import topk, tuning
    from clipindex.index.auto import auto_index

    args = ctx["args"]
    ids = np.arange(len(x), dtype=np.int64)
    settings = tuning.AutoSettings(target_recall=0.95, max_memory=args.budget,
                                   queries=args.tune_queries)
    with common.cpu_threads(2), common.stopwatch() as t:
        cross = {"text_to_image": clustered(args.tune_queries, args.centre_vectors, 99)}
        auto, tuned = auto_index(x, ids, cross, "image_to_image", settings)
    rerank, kind = tuned["rerank_factor"], tuned["kind"]
    ctx["auto_bytes"] = _index_bytes(auto, ctx["work"])
    return {"auto": {
        "search": lambda q: topk.top_k(auto, x, q, K, rerank=rerank)[1],
        "build_s": t["s"], "bytes": ctx["auto_bytes"],
        "knobs": f"{kind} {tuned.get('nlist')} cells, {tuned['tuned_knob']}="
                 f"{tuned['tuned_value']}, rerank x{rerank}, recorded recall@10 "
                 f"{tuned['recall_at_10']:.3f}"}}


def _hand_ivf(x: np.ndarray, ctx: dict[str, Any]) -> dict[str, dict[str, Any]]:

    from clipindex.index import kinds as indexes

    nlist = max(1, int(np.sqrt(len(x))))
    with common.cpu_threads(2), common.stopwatch() as t:
        ivf = indexes.build_index(x, np.arange(len(x), dtype=np.int64), kind="ivf",
                                  nlist=nlist)
    for nprobe in (8, 16, 32, 64, 128):
        indexes.set_search_knob(ivf, nprobe)
        found = indexes.search_index(ivf, ctx["queries"], K)[1]
        if recall_at_k(found, ctx["truth"]) >= 0.95:
            break
    return {"hand-ivf": {"search": lambda q: indexes.search_index(ivf, q, K)[1],
                         "build_s": t["s"], "bytes": _index_bytes(ivf, ctx["work"]),
                         "knobs": f"IVF{nlist},Flat nprobe={nprobe}"}}


def _autofaiss_pair(x: np.ndarray, ctx: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """autofaiss's index with its own knobs, and at the recall target (if it has nprobe);
    nothing (a logged line) when autofaiss is not installed or fails."""
    import faiss

    args = ctx["args"]
    if not (args.autofaiss_python and Path(args.autofaiss_python).exists()):
        common.log(f"autofaiss left out: no Python at {args.autofaiss_python!r}")
        return {}
    out: dict[str, dict[str, Any]] = {}
    try:
        af = _autofaiss(x, args.budget or ctx.get("auto_bytes") or x.nbytes,
                        Path(args.autofaiss_python), ctx["work"])
        af_index = faiss.read_index(str(af["path"]))
        param = af["infos"].get("index_param", "")
        faiss.ParameterSpace().set_index_parameters(af_index, param)
        out["autofaiss"] = {
            "search": lambda q: af_index.search(np.ascontiguousarray(q), K)[1],
            "build_s": af["build_s"], "bytes": af["path"].stat().st_size,
            "knobs": f"{af['infos'].get('index_key')} {param}"}
        matched = _at_recall(faiss.read_index(str(af["path"])), ctx["queries"],
                             ctx["truth"], 0.95)
        if matched is not None:  # its index, its knob lowered to our recall target
            out["autofaiss-tuned"] = {**out["autofaiss"], **matched}
    except Exception as exc:  # noqa: BLE001 - reported, the other contenders stand
        common.log(f"autofaiss failed: {exc}")
    return out


def _at_recall(index: Any, queries: np.ndarray, truth: np.ndarray, target: float
               ) -> dict[str, Any] | None:
    """An IVF index's smallest power-of-two nprobe reaching ``target`` on the benchmark's
    own queries (optimistic, like hand-ivf); None for kinds without nprobe."""
    from clipindex.index import kinds as indexes

    knob = indexes.search_knob(index)
    if knob is None or knob[0] != "nprobe":
        return None
    nprobe, nlist = 1, indexes.index_nlist(index) or 1
    while True:
        indexes.set_search_knob(index, nprobe)
        found = index.search(np.ascontiguousarray(queries), K)[1]
        reached = recall_at_k(found, truth) >= target
        if reached or nprobe >= nlist:
            break
        nprobe *= 2
    why = (f"smallest power of 2 reaching {target}" if reached
           else f"every cell: no nprobe reaches {target}")
    return {"search": lambda q: index.search(np.ascontiguousarray(q), K)[1],
            "knobs": f"its index, nprobe={nprobe} ({why})"}


def _hnsw(x: np.ndarray, ctx: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """HNSW over the first ``--hnsw-n`` rows, and flat at that size (its own truth)."""
    from clipindex.index import kinds as indexes

    args, queries = ctx["args"], ctx["queries"]
    sub = x[:args.hnsw_n]
    with common.cpu_threads(2), common.stopwatch() as t:
        index = indexes.build_index(sub, np.arange(len(sub)), kind="hnsw", ef_search=64)
    flat = indexes.build_index(sub, np.arange(len(sub)))
    where, truth = _fmt_n(len(sub)), numpy_top_k(sub, queries, K)[1]
    return {f"hnsw@{where}": {"search": lambda q: indexes.search_index(index, q, K)[1],
                              "build_s": t["s"], "knobs": "HNSW32 efSearch=64",
                              "where": where, "truth": truth},
            f"flat@{where}": {"search": lambda q: indexes.search_index(flat, q, K)[1],
                              "build_s": 0.0, "knobs": "exact", "where": where,
                              "truth": truth}}


def _device(x: np.ndarray, ctx: dict[str, Any]) -> dict[str, dict[str, Any]]:
    from clipindex.encode import resolve_device
    from clipindex.index.kinds import torch_search
    from clipindex.index.torchsearch import read_only_tensor

    where = str(resolve_device(ctx["args"].device))
    with common.stopwatch() as t:
        vectors = read_only_tensor(x).to(where)
    return {"device": {"search": lambda q: torch_search(vectors, q, K, device=where)[1],
                       "build_s": t["s"], "bytes": x.nbytes,
                       "knobs": f"exact: torch matmul + top-k on {where}"}}


BUILDERS = {"flat": _flat, "auto": _auto, "hand-ivf": _hand_ivf,
            "autofaiss": _autofaiss_pair, "hnsw": _hnsw, "device": _device}


def _fmt_n(n: int) -> str:
    return f"{n / 1e6:g}M" if n >= 1_000_000 else f"{n / 1e3:g}k"


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark (``argv``: command-line arguments) and update RESULTS.md."""
    return common.run_with_threads(_main, argv)


def _parser() -> Any:
    parser = common.base_parser(__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=1_000_000, help="base vectors")
    parser.add_argument("--centres", type=int, default=10_000, help="cluster centres")
    parser.add_argument("--queries", type=int, default=1000, help="queries in the batch")
    parser.add_argument("--repeats", type=int, default=200, help="single-query repeats")
    parser.add_argument("--tune-queries", type=int, default=500)
    parser.add_argument("--hnsw-n", type=int, default=100_000,
                        help="HNSW over the first rows only (build cost); --set: 0 = all")
    parser.add_argument("--hnsw-m", default="32",
                        help="--set: HNSW degrees swept, comma-separated (e.g. 32,16)")
    parser.add_argument("--hnsw-cache", default=None,
                        help="--set: folder keeping built full-N HNSW graphs for re-runs")
    parser.add_argument("--budget", type=common_memory, default=None,
                        help="index memory budget (e.g. 4GB) for auto and autofaiss")
    parser.add_argument("--autofaiss-python", default=str(AUTOFAISS_PY),
                        help="a Python with autofaiss installed ('' to leave it out)")
    parser.add_argument("--contenders", default=",".join(CONTENDERS),
                        help="comma-separated, from " + ", ".join(BUILDERS)
                             + " (default all but device; each is built, measured and "
                               "freed in turn)")
    parser.add_argument("--device", default="cpu", type=common.device_arg,
                        help="where the device contender searches (cuda, cuda:N, cpu)")
    parser.add_argument("--section", default=None,
                        help="RESULTS.md section to write (default bench_search up to 1M, "
                             "bench_search_<size> beyond): a run of a few contenders can "
                             "write its own section and leave the full run's alone")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--overhead", action="store_true",
                        help="measure search_indexes over raw FAISS instead (issue 33)")
    parser.add_argument("--overhead-sizes", default="10000,100000,1000000")
    parser.add_argument("--overhead-kinds", default="flat,auto")
    parser.add_argument("--set", choices=("clustered", "loose"), default=None,
                        help="auto against hand IVF and HNSW sweeps on one data set "
                             "(benchmarks/_sets.py); writes section bench_search_<set> "
                             "or --section")
    parser.add_argument("--rounds", type=int, default=1,
                        help="--set: alternating build rounds (hand IVF, auto)")
    return parser


def _main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.overhead:
        return _overhead_main(args)
    if args.set:
        import _sets

        if args.quick:
            args.n, args.queries, args.repeats, args.tune_queries = 20_000, 100, 20, 200
            args.hnsw_n = 5_000 if args.hnsw_n else 0  # 0: all rows
        return _sets.run_set(args, unit_vectors, clustered, numpy_top_k)
    chosen = [c.strip() for c in args.contenders.split(",") if c.strip()]
    if unknown := sorted(set(chosen) - set(BUILDERS)):
        raise SystemExit(f"unknown contender(s) {unknown}: choose from {tuple(BUILDERS)}")
    if args.quick:
        args.n, args.centres, args.queries, args.repeats = 20_000, 200, 100, 20
        args.tune_queries, args.hnsw_n, args.autofaiss_python = 100, 3000, ""
    info = common.machine_info(args.device if "device" in chosen else "cpu")
    args.centre_vectors = unit_vectors(args.centres, DIM, args.seed)
    common.log(f"search: {args.n:,} clustered vectors around {args.centres:,} centres")
    x = clustered(args.n, args.centre_vectors, args.seed + 1)
    queries = clustered(args.queries, args.centre_vectors, args.seed + 2)
    size = _fmt_n(args.n)
    lines = ["| contender | vectors | knobs | build (s) | index MB | threads | p50 (ms) | "
             f"p99 (ms) | {args.queries:,} queries (s) | recall@{K} |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    figures: dict[tuple[str, int], dict[str, float]] = {}
    summary = []
    with tempfile.TemporaryDirectory() as tmp:
        ctx = {"args": args, "queries": queries, "truth": numpy_top_k(x, queries, K)[1],
               "work": Path(tmp)}
        for key in (c for c in BUILDERS if c in chosen):
            entries = BUILDERS[key](x, ctx)
            for name, c in entries.items():  # measured, then freed before the next one
                where, ref = c.get("where", size), c.get("truth", ctx["truth"])
                for threads in (1, 2):
                    f = figures[name, threads] = _measure(c["search"], queries, ref,
                                                          args.repeats, threads)
                    mb = f"{c['bytes'] / 1e6:,.0f}" if "bytes" in c else ""
                    lines.append(f"| {name} | {where} | {c['knobs']} | {c['build_s']:.1f} | "
                                 f"{mb} | {threads} | {f['p50'] * 1e3:.2f} | "
                                 f"{f['p99'] * 1e3:.2f} | {f['batch']:.2f} | "
                                 f"{f['recall']:.3f} |")
                f = figures[name, 2]
                summary.append(f"{where} {name.split('@')[0]}: p50 {f['p50'] * 1e3:.1f} ms, "
                               f"p99 {f['p99'] * 1e3:.1f} ms, recall@10 {f['recall']:.3f}")
            del entries
    ratios = _ratios(figures, size, args.queries)
    print("\n".join(lines + [""] + summary + [""] + ratios))
    if not args.no_write:
        head = [f"- command: `{common.command_line()}`", *common.machine_lines(info),
                f"- {size} x {DIM} float32 unit vectors around {args.centres:,} random "
                f"centres plus noise; {args.queries:,} queries from the same distribution, "
                f"not in the base; recall@{K} against the exact top-{K}; p50/p99 over "
                f"{args.repeats} single-query calls"
                + (f"; HNSW over the first {_fmt_n(args.hnsw_n)} rows only (build cost), "
                   "against flat at that size" if "hnsw" in chosen else ""),
                ""]
        extra = _extrapolated(args.results, summary, args.n) if args.n > 1_000_000 else []
        section = args.section or (SECTION if args.n <= 1_000_000 else f"{SECTION}_{size}")
        others = ", ".join(TITLES[c] for c in BUILDERS if c in chosen and c != "auto")
        title = (f"Search at scale ({size}): auto" + (f" vs {others}" if others else "")
                 if "auto" in chosen else f"Search at scale ({size}): {others}")
        common.write_section(section, title,
                             head + lines + ["", *summary, *extra], ratios, args.results)
    return 0


def _ratios(figures: dict[tuple[str, int], dict[str, float]], size: str, n_queries: int
            ) -> list[str]:
    """auto against each other contender measured in the same run, and the device's
    exact search against flat."""
    ratios = []
    for threads in (1, 2):
        if ("device", threads) in figures and ("flat", threads) in figures:
            d, fl = figures["device", threads], figures["flat", threads]
            for key, what in (("p50", "1-query p50 latency"),
                              ("batch", f"{n_queries:,}-query throughput")):
                ratios.append(common.ratio_line(fl[key] / d[key], (
                    f"exact search in torch on the device over exact flat (FAISS, CPU), "
                    f"{what} at {size}, {threads} CPU thread(s)")))
        if ("auto", threads) not in figures:
            continue
        a = figures["auto", threads]
        if ("flat", threads) in figures:
            fl = figures["flat", threads]
            ratios.append(common.ratio_line(fl["p50"] / a["p50"], (
                f"clipindex auto over exact flat, 1-query p50 latency at {size}, {threads} "
                f"thread(s) (recall@10 {a['recall']:.3f})")))
            ratios.append(common.ratio_line(fl["batch"] / a["batch"], (
                f"clipindex auto over exact flat, {n_queries:,}-query throughput at {size}, "
                f"{threads} thread(s)")))
        for other in ("autofaiss", "autofaiss-tuned", "hand-ivf"):
            if (other, threads) in figures:
                o = figures[other, threads]
                ratios.append(common.ratio_line(o["p50"] / a["p50"], (
                    f"clipindex auto over {other}, 1-query p50 latency at {size}, {threads} "
                    f"thread(s) (recall@10 {a['recall']:.3f} vs {o['recall']:.3f})")))
    return ratios


_SUMMARY = re.compile(r"^(?:- )?(\S+) (\S+): p50 ([0-9.]+) ms, p99 ([0-9.]+) ms")


def _extrapolated(results: Path, summary: list[str], n: int) -> list[str]:
    """10M p50 of each contender measured here and at 1M (RESULTS.md's ``1M <name>:``
    lines), from the power law through the two points: not measured, and said so."""
    def parse(text: str, size: str) -> dict[str, float]:
        hits = (_SUMMARY.match(line.strip()) for line in text.splitlines())
        return {m[2]: float(m[3]) for m in hits if m and m[1] == size}

    one = parse(Path(results).read_text(encoding="utf-8"), "1M") if Path(
        results).is_file() else {}
    here = parse("\n".join(summary), _fmt_n(n))
    out = []
    for name in (k for k in here if k in one and one[k] > 0 and here[k] > 0):
        slope = np.log(here[name] / one[name]) / np.log(n / 1e6)
        p10 = here[name] * (1e7 / n) ** slope
        out.append(f"- 10M {name}: p50 ~{p10:.1f} ms, **extrapolated, not measured** "
                   f"(p50 grows as N^{slope:.2f} between 1M and {_fmt_n(n)} on this machine)")
    if out:
        out.insert(0, "")
    return out


def common_memory(text: str) -> int | None:
    from clipindex.index.tuning import parse_memory

    return parse_memory(text)



# ----------------------------------------------------------------------------- overhead
OVERHEAD_SECTION = "bench_search_overhead"
OVERHEAD_TEXTS = [f"a photo of a {c} number {i}" for i in range(20)
                  for c in ("cat", "dog", "cow", "sheep", "horse")]


def overhead_store(workdir: Path, n: int, kind: str) -> Path:
    """The synthetic store of ``n`` rows and ``kind``, written once and kept."""
    import _bigstore

    from clipindex.store import list_backbones

    ddir = workdir / f"overhead-{kind}-{n}" / "synthetic-store"
    if "synthetic" not in list_backbones(ddir) if ddir.is_dir() else True:
        common.log(f"writing a {kind} store of {n:,} rows")
        _bigstore.write_store(ddir, n, kind=kind, texts=OVERHEAD_TEXTS)
    return ddir


def measure_overhead(ddir: Path, repeats: int) -> dict[str, float]:
    """p50 of search_indexes and of the raw FAISS search (alternating), open time."""
    from clipindex.index.files import load_index
    from clipindex.search import search_indexes
    from clipindex.store import open_index

    open_index(ddir, "synthetic")  # warm-up: page cache, imports
    opens = []
    for _ in range(3):
        t0 = time.perf_counter()
        index = open_index(ddir, "synthetic")
        opens.append(time.perf_counter() - t0)
    t0 = time.perf_counter()
    search_indexes(index, texts=OVERHEAD_TEXTS[:1], k=K)
    first = time.perf_counter() - t0
    raw = load_index(ddir / "synthetic" / "images.faiss", mmap=True)
    vectors = index.text_vectors(OVERHEAD_TEXTS)
    ours, theirs, ours_cpu, theirs_cpu = [], [], [], []
    for i in range(repeats):
        j = i % len(OVERHEAD_TEXTS)
        t0, c0 = time.perf_counter(), time.thread_time()
        raw.search(vectors[j:j + 1], K)
        t1, c1 = time.perf_counter(), time.thread_time()
        search_indexes(index, texts=[OVERHEAD_TEXTS[j]], k=K)
        ours.append(time.perf_counter() - t1)
        ours_cpu.append(time.thread_time() - c1)
        theirs.append(t1 - t0)
        theirs_cpu.append(c1 - c0)
    return {"ours": float(np.median(ours)), "raw": float(np.median(theirs)),
            "ours_cpu": float(np.median(ours_cpu)), "raw_cpu": float(np.median(theirs_cpu)),
            "beyond": _beyond_faiss(index, vectors, repeats),
            "open": float(np.median(opens)), "first": first}


def _beyond_faiss(index: Any, vectors: np.ndarray, repeats: int) -> float:
    """Thread CPU p50 of search_indexes with the FAISS answers replayed (recorded once):
    clipindex's own work per query, without the scan's effect on the CPU caches. The
    FAISS call replayed is ``clipindex.index.kinds.search_index``, the one every store
    search makes (through ``clipindex.index.topk.top_k``); ``BackboneIndex.search`` is
    not on that path since the index package (replaying it replayed nothing)."""
    from clipindex.index import kinds
    from clipindex.search import search_indexes

    n = len(OVERHEAD_TEXTS)
    fetch: dict[int, Any] = {}
    real = kinds.search_index

    def record(*a: Any, **kw: Any) -> Any:
        fetch[len(fetch)] = real(*a, **kw)
        return fetch[len(fetch) - 1]

    state = [0]
    try:
        kinds.search_index = record
        for j in range(n):
            search_indexes(index, texts=[OVERHEAD_TEXTS[j]], k=K)
        if len(fetch) != n:
            raise RuntimeError(f"{len(fetch)} FAISS calls recorded for {n} queries")
        kinds.search_index = lambda *a, **kw: fetch[state[0]]
        times = []
        for i in range(repeats):
            state[0] = i % n
            c0 = time.thread_time()
            search_indexes(index, texts=[OVERHEAD_TEXTS[state[0]]], k=K)
            times.append(time.thread_time() - c0)
    finally:
        kinds.search_index = real
    return float(np.median(times))


def _overhead_main(args: Any) -> int:
    sizes = [int(s) for s in args.overhead_sizes.split(",") if s.strip()]
    kinds = [k.strip() for k in args.overhead_kinds.split(",") if k.strip()]
    if args.quick:
        sizes, args.repeats = [2000, 5000], 50
    info = common.machine_info()
    lines = ["| rows (images + captions) | index | raw FAISS p50 (ms) | search_indexes p50 "
             "(ms) | overhead (ms) | overhead, thread CPU time (ms) | beyond FAISS, FAISS "
             "replayed, thread CPU (ms) | open_index (ms) | first query after open (ms) |",
             "|---|---|---|---|---|---|---|---|---|"]
    ratios = []
    for kind in kinds:
        for n in sizes:
            f = measure_overhead(overhead_store(args.workdir, n, kind), args.repeats)
            over = (f["ours"] - f["raw"]) * 1e3
            cpu = (f["ours_cpu"] - f["raw_cpu"]) * 1e3
            lines.append(f"| {n:,} | {kind} | {f['raw'] * 1e3:.2f} | {f['ours'] * 1e3:.2f} | "
                         f"{over:.2f} | {cpu:.2f} | {f['beyond'] * 1e3:.2f} | "
                         f"{f['open'] * 1e3:.0f} | "
                         f"{f['first'] * 1e3:.0f} |")
            ratios.append(f"overhead: {over:.2f} ms clipindex search_indexes over raw FAISS, "
                          f"1-query p50, {_fmt_n(n)} rows {kind}")
            if n == max(sizes) and kind == kinds[0]:
                ratios.append(f"open: {f['open'] * 1e3:.0f} ms open_index, {_fmt_n(n)} rows")
            print(lines[-1], flush=True)
    print("\n".join(lines + [""] + ratios))
    if not args.no_write:
        head = [f"- command: `{common.command_line()}`", *common.machine_lines(info),
                "- stores: synthetic (benchmarks/_bigstore.py), N images + N captions, dim "
                "64 float32, clustered unit vectors, written by the store's own writers; "
                f"p50 over {args.repeats} single text queries (vectors from the store's "
                "text cache), k=10, the raw FAISS search and search_indexes alternating on "
                "the same query vector and index file; open_index: median of 3 after a "
                "warm-up (files in the page cache); the overhead is the difference of the "
                "wall-time p50s (the ratio lines) and, less sensitive to other jobs on "
                "the cores, of the p50s of the calling thread's CPU time; 'beyond FAISS': "
                "search_indexes with each query's FAISS answer recorded once and replayed "
                "(the work clipindex adds, without the scan evicting the CPU caches)", ""]
        common.write_section(OVERHEAD_SECTION, "Query cost: search_indexes over raw FAISS",
                             head + lines, ratios, args.results)
    return 0


if __name__ == "__main__":
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    raise SystemExit(main())
