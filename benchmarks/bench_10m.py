"""10M rows measured on one machine (issue 34 part 3): generation, import, search, add.

Steps (each its own sub-command, so the long ones run in the background and resume):

- ``gen``: clip-retrieval's layout (``img_emb/img_emb_<i>.npy`` float16 parts of
  ``--part`` rows, ``metadata/metadata_<i>.parquet`` with ``image_path`` and ``label``)
  of ``--n`` 512-d unit vectors around ``--centres`` random unit centres plus Gaussian
  noise of norm ~0.9 (bench_search's ``clustered`` set), each part seeded by its number
  (so the first parts of the 10M set are the 1M / 3M sets); ``queries.npy``: held-out
  queries from the same distribution (another seed: not in the index); ``add.npy``:
  the rows ``add`` appends.
- ``truth``: exact top-10 of the queries over the first ``--n`` rows, by brute force
  over the float16 parts in chunks (float32 products).
- ``search``: open the imported store (``open_index``) and time ``search_indexes`` one
  query at a time (1 thread) and the process's resident memory (VmRSS / VmHWM).

- ``add``: ``clipindex add`` of ``add.npy`` (1%) written as the next clip-retrieval part
  (the real CLI path: nothing encoded), then held-out recall. It writes a new generation
  into ``--store``.

Run (figures in benchmarks/RESULTS.md, section ``bench_10m``, written by hand)::

    python benchmarks/bench_10m.py gen --out /work/big/src --n 10000000
    python benchmarks/bench_10m.py truth --out /work/big/src --n 10000000
    clipindex import /work/big/src --backbone ViT-B-32 --pretrained none \
        --out /work/big/stores --name s10m --dtype float16 --max-index-memory 2GB
    python benchmarks/bench_10m.py search --store /work/big/stores/s10m --n 10000000
    python benchmarks/bench_10m.py add --store /work/big/stores/s10m --n 10000000
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

DIM = 512
K = 10


def centres(count: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    c = rng.standard_normal((count, DIM), dtype=np.float32)
    return c / np.linalg.norm(c, axis=1, keepdims=True)


def draw(n: int, c: np.ndarray, seed: int, noise: float = 0.9,
         chunk: int = 65536) -> np.ndarray:
    """``n`` float16 unit vectors, each a random centre of ``c`` plus noise."""
    rng = np.random.default_rng(seed)
    out = np.empty((n, DIM), dtype=np.float16)
    for lo in range(0, n, chunk):
        m = min(chunk, n - lo)
        block = c[rng.integers(0, len(c), m)] + noise * rng.standard_normal(
            (m, DIM), dtype=np.float32) / np.sqrt(DIM)
        out[lo:lo + m] = block / np.linalg.norm(block, axis=1, keepdims=True)
    return out


def gen(args: argparse.Namespace) -> None:
    import pandas as pd

    out = Path(args.out)
    (out / "img_emb").mkdir(parents=True, exist_ok=True)
    (out / "metadata").mkdir(parents=True, exist_ok=True)
    c = centres(args.centres, 12345)
    if not (out / "queries.npy").exists():
        np.save(out / "queries.npy", draw(args.queries, c, 999_999).astype(np.float32))
        np.save(out / "add.npy", draw(args.add, c, 888_888))
    for i in range(args.first, (args.n + args.part - 1) // args.part):
        emb = out / "img_emb" / f"img_emb_{i}.npy"
        if emb.exists():
            continue
        t0 = time.time()
        rows = min(args.part, args.n - i * args.part)
        x = draw(rows, c, 1000 + i)
        ids = np.arange(i * args.part, i * args.part + rows)
        pd.DataFrame({"image_path": [f"img/{j:08d}.jpg" for j in ids],
                      "label": np.array(["cat", "dog", "cow", "sheep", "horse"])[ids % 5]}
                     ).to_parquet(out / "metadata" / f"metadata_{i}.parquet", index=False)
        np.save(str(emb) + ".tmp.npy", x)
        os.replace(str(emb) + ".tmp.npy", emb)
        print(f"part {i}: {rows} rows in {time.time() - t0:.1f} s", flush=True)


def truth(args: argparse.Namespace) -> None:
    """Exact top-K of the held-out queries over the first ``--n`` rows of the parts."""
    src = Path(args.out)
    q = np.load(src / "queries.npy").astype(np.float32)
    best_s = np.full((len(q), K), -np.inf, np.float32)
    best_i = np.full((len(q), K), -1, np.int64)
    start, t0 = 0, time.time()
    i = 0
    while start < args.n:
        x = np.load(src / "img_emb" / f"img_emb_{i}.npy", mmap_mode="r")
        x = x[:args.n - start]
        for lo in range(0, len(x), 131072):
            block = np.asarray(x[lo:lo + 131072], dtype=np.float32)
            s = q @ block.T
            part = np.argpartition(-s, K - 1, axis=1)[:, :K]
            all_s = np.concatenate([best_s, np.take_along_axis(s, part, 1)], 1)
            all_i = np.concatenate([best_i, part + start + lo], 1)
            order = np.argsort(-all_s, axis=1, kind="stable")[:, :K]
            best_s = np.take_along_axis(all_s, order, 1)
            best_i = np.take_along_axis(all_i, order, 1)
        start += len(x)
        i += 1
        if start in (1_000_000, 3_000_000) or start >= args.n:  # the 1M / 3M prefixes
            np.save(src / f"truth_{start}.npy", best_i)
    print(f"truth over {start} rows in {time.time() - t0:.1f} s", flush=True)


def rss_gb() -> dict[str, float]:
    """This process's resident memory now (VmRSS) and at its peak (VmHWM), GB."""
    fields = dict(line.split(":", 1) for line in
                  Path("/proc/self/status").read_text().splitlines() if ":" in line)
    return {k: round(int(fields[k].split()[0]) * 1024 / 1e9, 2) for k in ("VmRSS", "VmHWM")}


def recall(found: np.ndarray, exact: np.ndarray) -> float:
    return float(np.mean([len(set(f[f >= 0].tolist()) & set(e.tolist())) / len(e)
                          for f, e in zip(found, exact, strict=True)]))


def search(args: argparse.Namespace) -> None:
    """p50/p99 of ``search_indexes`` (one query vector at a time, 1 thread) over the
    opened store, recall@10 against the exact truth, RSS; with ``--nprobe`` a sweep."""
    from clipindex.index.kinds import search_knob, set_search_knob, set_search_threads
    from clipindex.search import search_indexes
    from clipindex.store import open_index

    set_search_threads(1)
    src = Path(args.out)
    q = np.load(src / "queries.npy")[:args.queries]
    exact = np.load(src / f"truth_{args.n}.npy")[:args.queries]
    t0 = time.perf_counter()
    index = open_index(args.store, args.backbone)
    open_s = time.perf_counter() - t0
    desc = index.index_description("images")
    faiss_index = index.faiss_index("images")
    rows = []
    factor = desc.get("rerank_factor")
    points = [(None, factor), *((p, factor) for p in args.nprobe),
              *((args.nprobe[-1] if args.nprobe else None, r) for r in args.rerank)]
    for knob, rerank in points:
        if knob is not None:
            set_search_knob(faiss_index, knob)
        desc["rerank_factor"] = rerank  # what BackboneIndex.search reads per query
        for i in range(args.warm if knob is None and rerank == factor else 1):
            search_indexes(index, vectors=q[-1 - i], k=K)  # warm-up: queries not timed
        times, found = [], []
        for i in range(len(q) - args.warm):
            t1 = time.perf_counter()
            frame = search_indexes(index, vectors=q[i], k=K).frame
            times.append(time.perf_counter() - t1)
            found.append(np.pad(frame["row_id"].to_numpy(np.int64), (0, K - len(frame)),
                                constant_values=-1))
        now = search_knob(faiss_index)
        rows.append({"nprobe": now[1] if now else None, "tuned": knob is None,
                     "rerank": rerank, "p50_ms": round(1e3 * np.percentile(times, 50), 2),
                     "p99_ms": round(1e3 * np.percentile(times, 99), 2),
                     "recall_at_10": round(recall(np.array(found), exact[:len(found)]), 4),
                     **rss_gb()})
        print(json.dumps(rows[-1]), flush=True)
    print(json.dumps({"store": args.store, "n": args.n, "queries": len(q) - args.warm,
                      "warm": args.warm,
                      "open_s": round(open_s, 2), "kind": desc.get("kind"),
                      "nlist": desc.get("nlist"), "pq_m": desc.get("pq_m"),
                      "rerank_factor": factor,
                      "build_seconds": desc.get("build_seconds"),
                      "manifest_recall": desc.get("recall_at_10"), "rows": rows,
                      "load": os.getloadavg()}), flush=True)


def grown_folder(src: Path, parts: list[int], n: int, out: Path) -> Path:
    """clip-retrieval's output grown by one part: ``out`` holds symlinks to the
    imported ``parts`` of ``src`` and part ``max(parts) + 1``, ``add.npy`` (a symlink:
    it is already an ``img_emb`` part) with metadata of image paths the store lacks
    (``img/<n + j>.jpg``: the import's numbering goes on)."""
    import pandas as pd

    shutil.rmtree(out, ignore_errors=True)
    for sub, name, ext in (("img_emb", "img_emb", "npy"), ("metadata", "metadata", "parquet"),
                           ("text_emb", "text_emb", "npy")):
        if not (src / sub).is_dir():
            continue
        (out / sub).mkdir(parents=True)
        for i in parts:
            (out / sub / f"{name}_{i}.{ext}").symlink_to((src / sub / f"{name}_{i}.{ext}"
                                                          ).resolve())
    nxt = max(parts) + 1
    (out / "img_emb" / f"img_emb_{nxt}.npy").symlink_to((src / "add.npy").resolve())
    rows = len(np.load(src / "add.npy", mmap_mode="r"))
    ids = np.arange(n, n + rows)
    pd.DataFrame({"image_path": [f"img/{j:08d}.jpg" for j in ids],
                  "label": np.array(["cat", "dog", "cow", "sheep", "horse"])[ids % 5]}
                 ).to_parquet(out / "metadata" / f"metadata_{nxt}.parquet", index=False)
    return out


def add(args: argparse.Namespace) -> None:
    """``clipindex add`` of ``add.npy`` (1% of 10M) to the imported store, through the
    product: ``add.npy`` written as the next clip-retrieval part of a folder of symlinks
    to the imported parts (:func:`grown_folder`, in ``--work``), then ``clipindex add
    FOLDER --index STORE --json`` run as a child process (wall and CPU seconds, peak
    RSS); then held-out recall@10 and p50 of the store's search (``open_index`` +
    ``search_indexes``, one thread) against the exact truth over all rows (the old
    truth merged with the added rows' exact scores), and the recall the add recorded
    in the manifest. The store gets a new generation (``clipindex compact`` or a new
    import undoes it)."""
    import resource

    from clipindex.index.kinds import set_search_threads
    from clipindex.search import search_indexes
    from clipindex.store import open_index

    src, work, store = Path(args.out), Path(args.work), Path(args.store)
    info = json.loads((store / "dataset.json").read_text())
    parts = list(info["imported"]["parts"])
    missing = [i for i in parts if not (src / "img_emb" / f"img_emb_{i}.npy").exists()]
    if missing == [max(parts)] and info.get("generation"):
        parts.remove(max(parts))  # the part an earlier run of this step added
    elif missing:  # the store would lose (tombstone) every row of a missing part
        sys.exit(f"{src}/img_emb lacks the imported parts {missing}; regenerate them (gen)")
    folder = grown_folder(src, parts, args.n, work / "grown")
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, "-c", "from clipindex.cli import main; main()",
                           "add", str(folder), "--index", str(store), "--json",
                           "--no-progress"], capture_output=True, text=True, check=False)
    wall = time.perf_counter() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if proc.returncode:
        sys.exit(f"clipindex add failed: {proc.stderr.strip()}")
    result = json.loads(proc.stdout)
    print(json.dumps({"summary": result["summary"], "wall_s": round(wall, 1),
                      "cpu_s": round(after.ru_utime + after.ru_stime - before.ru_utime
                                     - before.ru_stime, 1),
                      "peak_rss_gb": round(after.ru_maxrss * 1024 / 1e9, 2)}), flush=True)
    set_search_threads(1)
    index = open_index(store, args.backbone)
    desc = index.index_description("images")
    new = np.load(src / "add.npy", mmap_mode="r")
    n_have = len(index.images) - len(new)
    q = np.load(src / "queries.npy")[:args.queries]
    exact = np.load(src / f"truth_{args.n}.npy")[:args.queries]
    matrix = index.stored["images"]  # the memory map (image_vectors: a float32 copy)
    old_s = np.einsum("qd,qkd->qk", q, np.asarray(matrix[exact], np.float32))
    new_s = q @ np.asarray(matrix[n_have:], np.float32).T  # the added rows' exact scores
    all_s = np.concatenate([old_s, new_s], axis=1)
    all_i = np.concatenate([exact, np.broadcast_to(np.arange(n_have, n_have + len(new)),
                                                   new_s.shape)], axis=1)
    truth_after = np.take_along_axis(all_i, np.argsort(-all_s, axis=1, kind="stable")[:, :K],
                                     axis=1)
    for i in range(min(args.warm, len(q))):
        search_indexes(index, vectors=q[-1 - i], k=K)  # warm-up: not timed
    times, found = [], []
    for i in range(len(q)):
        t1 = time.perf_counter()
        frame = search_indexes(index, vectors=q[i], k=K).frame
        times.append(time.perf_counter() - t1)
        found.append(np.pad(frame["row_id"].to_numpy(np.int64), (0, K - len(frame)),
                            constant_values=-1))
    print(json.dumps({"rows_after": int(len(index.images)), "added": result["added"],
                      "generation": result["generation"], "kind": desc.get("kind"),
                      "new_in_truth": int((truth_after >= n_have).sum()),
                      "recall_at_10": round(recall(np.array(found), truth_after), 4),
                      "p50_ms": round(1e3 * np.percentile(times, 50), 2),
                      "manifest_recall_after": desc.get("recall_at_10"),
                      "held_out_queries": desc.get("held_out_queries"),
                      "recall_measured_at_generation":
                          desc.get("recall_measured_at_generation"),
                      **rss_gb(), "load": os.getloadavg()}), flush=True)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("step", choices=["gen", "truth", "search", "add"])
    p.add_argument("--store", help="search, add: the imported dataset folder")
    p.add_argument("--rerank", type=int, nargs="*", default=[],
                   help="search: then these rerank factors (at the last --nprobe)")
    p.add_argument("--warm", type=int, default=200,
                   help="search: the last N queries are run untimed first (open's page "
                        "faults); the others are timed and scored")
    p.add_argument("--work", default="/work/big/add", help="add: where its files go")
    p.add_argument("--backbone", default="ViT-B-32__none")
    p.add_argument("--nprobe", type=int, nargs="*", default=[],
                   help="search: also measure these nprobe values after the tuned one")
    p.add_argument("--out", default="/work/big/src")
    p.add_argument("--n", type=int, default=10_000_000)
    p.add_argument("--part", type=int, default=500_000)
    p.add_argument("--first", type=int, default=0)
    p.add_argument("--centres", type=int, default=10_000)
    p.add_argument("--queries", type=int, default=1000)
    p.add_argument("--add", type=int, default=100_000)
    args = p.parse_args(argv)
    {"gen": gen, "truth": truth, "search": search, "add": add}[args.step](args)


if __name__ == "__main__":
    sys.exit(main())
