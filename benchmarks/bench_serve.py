"""``clipindex serve`` under a bounded load on loopback vs a minimal FastAPI + FAISS app and
the same searches in-process.

- contender: text searches sent to a real ``clipindex serve`` process (uvicorn, one
  worker) on a free 127.0.0.1 port by C client threads, each with its own keep-alive
  connection (``http.client``), at C = 1 and C = 16;
- baseline: the very same searches in this process, through the function the route
  runs (``clipindex.serve.answers.search`` on a snapshot opened as ``serve`` opens it),
  sequentially and from 16 threads.

Both sides search the demo store (the shipped ``demo`` dataset config on a demo world, the
shipped tiny backbones) with the same queries, whose text vectors are encoded once
before timing (both sides keep them in memory, as ``serve`` does), so the ratio is the
cost of HTTP: parsing, routing, validation, JSON, the socket. The load is bounded: a
fixed number of requests per level and a time cap; every answer must be a 200 (errors
are counted and must be 0). The client threads share the machine's cores with the
server, as a client on the same box would.

The baseline contender (issue 33) is :func:`minimal_app`: the ~30-line FastAPI +
uvicorn app a user would write over the same FAISS file (query vectors from a dict,
metadata from Python lists made at start), run as its own uvicorn process and measured
in the same run, alternating with ``clipindex serve`` at each level. Besides the demo
store, ``--stores`` adds synthetic stores of ``--big`` rows (images + captions, dim 64,
``benchmarks/_bigstore.py``, flat and auto) carrying ``tiny-vit``'s identity, so
``serve`` loads its encoder; their query texts are in the store's text cache. CPU per
request is the server process's own (user + system).

Run: ``python benchmarks/bench_serve.py`` (or ``--quick``).
"""

from __future__ import annotations

import http.client
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import threading
import time
import urllib.parse
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as common  # noqa: E402

SECTION = "bench_serve"
CONFIG = "builtin:demo"  # the shipped dataset config
CLASSES = ("cat", "dog", "cow", "sheep", "horse")
PLACES = ("in a field", "on a road", "inside a house", "on a beach", "near a fence",
          "in the grass", "next to a car", "under a tree", "in the snow", "by a bench")


def queries(n: int) -> list[str]:
    """``n`` distinct text queries (cycled when more requests are sent)."""
    out = [f"a photo of a {c} {p}" for p in PLACES for c in CLASSES]
    return out[:n]


def store(args: Any) -> Path:
    """The demo store of the benchmark, built once under the workdir and reused."""
    from clipindex.sources import load_dataset
    from clipindex.store import build_store, list_backbones

    world = common.demo_world(args.workdir, args.scale, args.seed)
    dataset = load_dataset(CONFIG, root=world, per_class=args.per_class or None)
    out = Path(args.workdir) / f"serve-store-{args.scale}-{args.seed}-{args.per_class}"
    folder = out / dataset.name
    if set(args.backbones) - set(list_backbones(folder)):
        common.log(f"building the store ({len(dataset.images)} images)")
        build_store(dataset, args.backbones, out=out, workers=0, progress=False)
    return folder


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def minimal_app(ddir: str, backbone: str, vectors: str, threads: int) -> Any:
    """The baseline: a minimal FastAPI app over the store's FAISS file (what a user writes
    in ~30 lines): metadata in Python lists, each image's first caption in a dict, the
    query vectors (encoded before timing, as the text cache of ``serve``) in a dict."""
    import faiss
    import numpy as np
    import pyarrow.parquet as pq
    from fastapi import FastAPI

    faiss.omp_set_num_threads(max(1, threads))
    index = faiss.read_index(f"{ddir}/{backbone}/images.faiss")
    images = pq.read_table(f"{ddir}/images.parquet", columns=["file", "label"]).to_pydict()
    caps = pq.read_table(f"{ddir}/captions.parquet", columns=["image_row_id", "text"])
    first: dict[int, str] = {}
    for image, text in zip(*caps.to_pydict().values(), strict=True):
        first.setdefault(image, text)
    data = np.load(vectors)
    cache = dict(zip(data["texts"].tolist(), data["vectors"], strict=True))
    app = FastAPI()

    @app.get("/search")
    def search(q: str, k: int = 10) -> list[dict[str, Any]]:
        scores, ids = index.search(cache[q][None], k)
        return [{"row_id": int(i), "score": float(s), "file": images["file"][i],
                 "label": images["label"][i], "caption": first.get(int(i), "")}
                for s, i in zip(scores[0].tolist(), ids[0].tolist(), strict=True) if i >= 0]

    return app


def start_server(folder: Path, backbones: list[str], threads: int,
                 minimal: Path | None = None) -> tuple[Any, int]:
    """A real ``clipindex serve`` (or, with ``minimal``, the query vectors' file,
    :func:`minimal_app`) on a free loopback port, answering /health."""
    port = free_port()
    env = {**os.environ, "PYTHONPATH": str(common.HERE.parent)}
    if threads:
        env.update(OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
    cmd = [sys.executable, "-c", "from clipindex.cli import main; main()", "serve",
           "--index", str(folder), "--port", str(port), "--log-level", "warning",
           "--threads", str(max(1, threads)),
           *[a for b in backbones for a in ("--backbone", b)]]
    if minimal is not None:
        code = (f"import sys; sys.path.insert(0, {str(common.HERE)!r}); import bench_serve, "
                f"uvicorn; uvicorn.run(bench_serve.minimal_app({str(folder)!r}, "
                f"{backbones[0]!r}, {str(minimal)!r}, {threads}), host='127.0.0.1', "
                f"port={port}, log_level='warning')")
        cmd = [sys.executable, "-c", code]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            text=True)
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"clipindex serve exited: {proc.stderr.read()[-2000:]}")
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
        try:
            conn.request("GET", "/health")
            if conn.getresponse().status in (200, 404):  # the minimal app has no /health
                return proc, port
        except OSError:
            time.sleep(0.3)
        finally:
            conn.close()
    proc.kill()
    raise SystemExit("clipindex serve did not answer /health in 300 s")


def process_cpu(pid: int) -> float:
    """CPU seconds (user + system) a process has used so far, from ``/proc``."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _summary(latencies: list[float], errors: int, seconds: float, cpu: float
             ) -> dict[str, Any]:
    ordered = sorted(latencies)
    p99 = ordered[min(len(ordered) - 1, int(0.99 * len(ordered)))] if ordered else float("nan")
    n = len(latencies) + errors
    return {"requests": n, "errors": errors,
            "rps": len(latencies) / seconds if seconds else 0.0,
            "p50_ms": 1000 * statistics.median(ordered) if ordered else float("nan"),
            "p99_ms": 1000 * p99, "seconds": seconds,
            "cpu_ms": 1000 * cpu / n if n else float("nan")}


def _load(worker: Any, clients: int, total: int, cap_s: float,
          cpu: Any = time.process_time) -> dict[str, Any]:
    """Run ``total`` calls of ``worker(i, state)`` from ``clients`` threads, stopping
    early at ``cap_s`` seconds; each call returns True for a good answer. ``cpu()`` is
    the CPU time used so far by every process doing the work."""
    latencies: list[float] = []
    errors, lock, counter = [0], threading.Lock(), iter(range(total))
    deadline = time.monotonic() + cap_s

    def client() -> None:
        state: dict[str, Any] = {}
        while time.monotonic() < deadline:
            with lock:
                i = next(counter, None)
            if i is None:
                return
            start = time.perf_counter()
            try:
                ok = worker(i, state)
            except Exception:  # noqa: BLE001 - a failed request is an error, counted
                ok = False
            took = time.perf_counter() - start
            with lock:
                (latencies.append(took) if ok else errors.__setitem__(0, errors[0] + 1))

    start, cpu_start = time.perf_counter(), cpu()
    with ThreadPoolExecutor(clients) as pool:
        for f in [pool.submit(client) for _ in range(clients)]:
            f.result()
    return _summary(latencies, errors[0], time.perf_counter() - start, cpu() - cpu_start)


def http_worker(port: int, texts: list[str], k: int, opened: list[Any]) -> Any:
    """One keep-alive connection per client thread (kept in ``opened`` to close later)."""
    def call(i: int, state: dict[str, Any]) -> bool:
        conn = state.get("conn")
        if conn is None:
            conn = state["conn"] = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
            opened.append(conn)
        query = urllib.parse.urlencode({"q": texts[i % len(texts)], "k": k})
        conn.request("GET", f"/search?{query}")
        response = conn.getresponse()
        body = response.read()
        return response.status == 200 and len(json.loads(body)) == k

    return call


def local_worker(snapshot: Any, texts: list[str], k: int) -> Any:
    """The route's own function; it pins FAISS to the snapshot's threads in each client
    thread, as the server's request threads do."""
    from clipindex.serve import answers

    def call(i: int, state: dict[str, Any]) -> bool:
        records, _ = answers.search(snapshot, text=texts[i % len(texts)], k=k)
        return len(records) == k

    return call


def _parse(argv: list[str] | None) -> Any:
    parser = common.base_parser(__doc__.splitlines()[0])
    parser.add_argument("--scale", default="default", help="demo world scale")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--per-class", type=int, default=200)
    parser.add_argument("--backbones", default="tiny-vit",
                        help="comma-separated; several are fused, as the CLI does")
    parser.add_argument("--requests", type=int, default=400, help="requests per level")
    parser.add_argument("--cap-s", type=float, default=60.0, help="time cap per level")
    parser.add_argument("--clients", default="1,16", help="concurrency levels")
    parser.add_argument("--queries", type=int, default=50, help="distinct query texts")
    parser.add_argument("--stores", default="demo,flat,auto",
                        help="demo and/or synthetic stores of --big rows: flat, auto")
    parser.add_argument("--big", type=int, default=1_000_000, help="rows of flat/auto")
    parser.add_argument("-k", type=int, default=10)
    args = parser.parse_args(argv)
    if args.quick:
        args.scale, args.per_class, args.requests, args.cap_s = "small", 40, 24, 30.0
        args.big = 5000
    args.backbones = [b.strip() for b in args.backbones.split(",") if b.strip()]
    args.clients = [int(c) for c in args.clients.split(",")]
    args.stores = [s.strip() for s in args.stores.split(",") if s.strip()]
    return args


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark (``argv``: command-line arguments) and update RESULTS.md."""
    return common.run_with_threads(_main, argv)


def big_store(args: Any, demo: Path, kind: str, texts: list[str]) -> Path:
    """A synthetic store of ``args.big`` rows with the demo's ``tiny-vit`` identity."""
    import _bigstore

    from clipindex.store import list_backbones
    from clipindex.store.manifest import read_manifest

    ddir = Path(args.workdir) / f"serve-{kind}-{args.big}" / "synthetic"
    if "tiny-vit" not in (list_backbones(ddir) if ddir.is_dir() else []):
        common.log(f"writing a {kind} store of {args.big:,} rows")
        reuse = Path(args.workdir) / f"overhead-{kind}-{args.big}" / "synthetic-store" / \
            "synthetic"  # bench_search --overhead's store: same rows, vectors, index
        _bigstore.write_store(ddir, args.big, kind=kind, folder="tiny-vit",
                              template=read_manifest(demo / "tiny-vit"), texts=texts,
                              reuse=reuse)
    return ddir


def _query_file(args: Any, folder: Path, backbone: str, texts: list[str]) -> Path:
    """The query vectors (the store's, encoded or cached) for the minimal app."""
    import numpy as np

    from clipindex.store import open_index

    vectors = open_index(folder, backbone).text_vectors(texts, save=False)
    out = Path(args.workdir) / f"queries-{folder.parent.name}.npz"
    np.savez(out, texts=np.array(texts), vectors=vectors)
    return out


def _stop(proc: Any) -> None:
    proc.send_signal(signal.SIGTERM)
    try:
        proc.communicate(timeout=60)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.communicate()


def _measure(args: Any, name: str, folder: Path, texts: list[str]) -> list[dict[str, Any]]:
    """In-process, the minimal app and ``clipindex serve`` at each level, alternating."""
    from clipindex.serve import ServeOptions
    from clipindex.serve.state import open_snapshot

    backbones = args.backbones if name == "demo" else ["tiny-vit"]
    snapshot = open_snapshot(ServeOptions(index_dir=str(folder), backbones=tuple(backbones),
                                          threads=max(1, args.threads)))
    local = local_worker(snapshot, texts, args.k)
    for i in range(len(texts)):  # encode every query once, as the server's warm-up does
        local(i, {})
    servers = {"minimal FastAPI+FAISS": start_server(
                   folder, backbones, args.threads, _query_file(args, folder, backbones[0],
                                                                texts)),
               "clipindex serve": start_server(folder, backbones, args.threads)}
    rows: list[dict[str, Any]] = []
    opened: list[Any] = []
    try:
        remote = {side: http_worker(port, texts, args.k, opened)
                  for side, (_, port) in servers.items()}
        for side in servers:  # each server meets every query once before timing
            _load(remote[side], 1, len(texts), args.cap_s)
        for clients in args.clients:
            common.log(f"{name}, {clients} client(s): in-process, minimal app, serve")
            rows.append({"store": name, "mode": "in-process", "clients": clients,
                         **_load(local, clients, args.requests, args.cap_s)})
            for side, (proc, _) in servers.items():
                rows.append({"store": name, "mode": side, "clients": clients,
                             **_load(remote[side], clients, args.requests, args.cap_s,
                                     partial(process_cpu, proc.pid))})
    finally:
        for conn in opened:
            conn.close()
        for proc, _ in servers.values():
            _stop(proc)
    return rows


def report(rows: list[dict[str, Any]]) -> tuple[list[str], list[str]]:
    lines = ["| store | side | clients | requests | errors | requests/s | p50 (ms) | "
             "p99 (ms) | CPU per request (ms) |", "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['store']} | {r['mode']} | {r['clients']} | {r['requests']} | "
                     f"{r['errors']} | {r['rps']:.1f} | {r['p50_ms']:.2f} | "
                     f"{r['p99_ms']:.2f} | {r['cpu_ms']:.2f} |")
    ratios = []
    by = {(r["store"], r["mode"], r["clients"]): r for r in rows}
    for (store, mode, n), ours in by.items():
        base = by.get((store, "minimal FastAPI+FAISS", n))
        if mode != "clipindex serve" or base is None:
            continue
        what = f"{store}, {n} client{'s' if n > 1 else ''}"
        ratios.append(common.ratio_line(ours["rps"] / base["rps"] if base["rps"] else 0.0,
                                        f"clipindex serve over minimal FastAPI+FAISS app, "
                                        f"requests/s, {what}"))
        ratios.append(common.ratio_line(
            ours["cpu_ms"] / base["cpu_ms"] if base["cpu_ms"] else 0.0,
            f"clipindex serve over minimal FastAPI+FAISS app, server CPU per request, {what}"))
    return lines, ratios


def _main(argv: list[str] | None = None) -> int:
    args = _parse(argv)
    info = common.machine_info()
    demo = store(args)
    texts = queries(args.queries)
    big = f"{args.big / 1e6:g}M" if args.big >= 1_000_000 else f"{args.big / 1e3:g}k"
    rows = []
    for name in args.stores:
        folder = demo if name == "demo" else big_store(args, demo, name, texts)
        rows += _measure(args, "demo" if name == "demo" else f"{big} {name}", folder, texts)
    lines, ratios = report(rows)
    print("\n".join(lines + [""] + ratios))
    errors = sum(r["errors"] for r in rows)
    if not args.no_write:
        head = [f"- command: `{common.command_line()}`", *common.machine_lines(info),
                f"- stores: demo world `--scale {args.scale}` (seed {args.seed}), demo.yaml "
                f"with per_class={args.per_class}, backbone(s) {', '.join(args.backbones)}; "
                f"`{big} flat` / `{big} auto`: synthetic, {args.big:,} images + {args.big:,} "
                "captions, dim 64 (benchmarks/_bigstore.py) with tiny-vit's identity; "
                f"{len(texts)} distinct text queries, k={args.k}, each encoded once before "
                "timing on every side",
                f"- load: {args.requests} requests per level (cap {args.cap_s:.0f} s), "
                "loopback only, keep-alive connections, the clients on the same cores as "
                "the servers; the minimal app and clipindex serve run side by side and are "
                "measured one after the other at each level; errors must be 0. CPU per "
                "request: user + system time of the server process (in-process: this "
                "process) divided by the requests",
                ""]
        common.write_section(SECTION, "Serve: clipindex serve vs a minimal FastAPI + FAISS "
                             "app", head + lines, ratios, args.results)
    return 1 if errors else 0


if __name__ == "__main__":
    raise SystemExit(main())
