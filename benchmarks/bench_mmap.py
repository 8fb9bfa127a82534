"""Resident memory of a memory-mapped store vs one read into memory, same files, same run.

Writes ``images.npy`` (``--n`` x 512 float32 clustered vectors; the default 520k rows is
a 1.06 GB file) into ``--workdir`` and, for each configuration, the FAISS index that
``--index-kind auto`` builds over it, chosen and tuned by the store's own code
(``choose_index`` + ``tune_index`` to recall@10 0.95 on held-out store queries):

- ``auto``: no memory budget, so IVF-Flat (its inverted lists hold a copy of the vectors);
- ``auto, budget`` (with ``--with-budget``): ``--max-index-memory`` of 1/8 of the
  vectors file, so OPQ + IVF-PQ codes, with the candidates rescored exactly from the
  vectors file. Off by default: its OPQ training did not finish in 5 min even at 20k
  rows on 2 cores (not measured yet).

Then, each in a fresh process, the files are opened the way ``open_index`` does
(``load_matrix``: ``np.load(mmap_mode="r")`` + ``MADV_RANDOM``; ``load_faiss``:
``IO_FLAG_MMAP_IFC``) and 100 held-out queries are answered through ``rescored_search``
(what ``BackboneIndex.search`` runs), and the same with both files read into memory.
Figures: VmRSS after opening and after the queries, the growth as a share of the vectors
file (the issue's goal: below 25%), and the recall@10 of those 100 answers.

Run: ``python benchmarks/bench_mmap.py`` (~3 GB of disk in --workdir) or ``--quick``.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as common  # noqa: E402
from bench_search import clustered, numpy_top_k, recall_at_k, unit_vectors  # noqa: E402

SECTION = "bench_mmap"
DIM = 512
K = 10

_CHILD = """
import json, sys, numpy as np
from pathlib import Path
from clipindex.index.files import load_index
from clipindex.index.kinds import build_index, set_search_knob
from clipindex.store.loading import load_faiss, load_matrix
from clipindex.index.topk import top_k as rescored_search
def rss():
    for line in open('/proc/self/status'):
        if line.startswith('VmRSS'):
            return int(line.split()[1]) * 1024
folder, name, mmap = Path(sys.argv[1]), sys.argv[2], sys.argv[3] == 'mmap'
meta = json.loads((folder / (name + '.json')).read_text())
# warm-up on a small in-memory index: BLAS / OpenMP buffers are allocated once, up front
w = np.random.default_rng(0).standard_normal((4096, 512)).astype('float32')
wi = build_index(w, kind='ivf', nlist=16)
rescored_search(wi, w, w[:1], 10, rerank=4)
del w, wi
q = np.load(folder / 'queries.npy')
before = rss()
x = load_matrix(folder / 'images.npy') if mmap else np.load(folder / 'images.npy')
index = load_faiss(folder / (name + '.faiss'), True)[0] if mmap else load_index(
    folder / (name + '.faiss'))
knob = int(sys.argv[4]) if len(sys.argv) > 4 else meta['knob']
if knob is not None:
    set_search_knob(index, knob)
opened = rss()
found = [rescored_search(index, x, q[i:i + 1], 10, rerank=meta['rerank'])[1][0]
         for i in range(len(q))]
np.save(folder / (name + '-' + '-'.join(sys.argv[3:]) + '-found.npy'), np.array(found))
print(json.dumps({'before': before, 'opened': opened, 'after': rss()}))
"""


def _configs(size: int, budget: bool) -> dict[str, int | None]:
    return {"auto": None, **({"auto, budget": size // 8} if budget else {})}


def _make(folder: Path, n: int, seed: int, with_budget: bool) -> dict[str, dict[str, Any]]:
    from clipindex.index import files, tuning
    from clipindex.index import kinds as indexes

    folder.mkdir(parents=True, exist_ok=True)
    if not (folder / "images.npy").is_file() or np.load(
            folder / "images.npy", mmap_mode="r").shape != (n, DIM):
        centres = unit_vectors(max(10, n // 100), DIM, seed)
        np.save(folder / "images.npy", clustered(n, centres, seed + 1))
        np.save(folder / "queries.npy", clustered(100, centres, seed + 2))
        np.save(folder / "cross.npy", clustered(500, centres, seed + 3))
        for old in folder.glob("auto*"):
            old.unlink()
    x = np.load(folder / "images.npy", mmap_mode="r")
    ids = np.arange(n, dtype=np.int64)
    metas = {}
    for name, budget in _configs(x.nbytes, with_budget).items():
        meta_path = folder / f"{name}.json"
        if meta_path.is_file():
            metas[name] = json.loads(meta_path.read_text())
            continue
        settings = tuning.AutoSettings(max_memory=budget, seed=seed)
        kind, options = tuning.choose_index(n, DIM, settings)
        common.log(f"mmap: building {name} ({kind}, {options}) over {n:,} vectors")
        with common.cpu_threads(2), common.stopwatch() as t:
            index = indexes.build_index(x, ids, kind=kind, seed=seed, **options)
            tuned = tuning.tune_index(index, x, ids, kind,
                                      {"text_to_image": np.load(folder / "cross.npy")},
                                      "image_to_image", settings)
        files.save_index(index, folder / f"{name}.faiss")
        metas[name] = {"kind": kind, "options": options, "knob": tuned["tuned_value"],
                       "knob_name": tuned["tuned_knob"], "rerank": tuned["rerank_factor"],
                       "recorded_recall": tuned["recall_at_10"], "build_s": t["s"]}
        meta_path.write_text(json.dumps(metas[name]))
    return metas


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark (``argv``: command-line arguments) and update RESULTS.md."""
    return common.run_with_threads(_main, argv)


def _main(argv: list[str] | None = None) -> int:
    parser = common.base_parser(__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=520_000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--with-budget", action="store_true",
                        help="also the IVF-PQ configuration (its OPQ training is slow here)")
    parser.add_argument("--nprobes", type=lambda t: [int(v) for v in t.split(",") if v],
                        default=[8, 32],
                        help="extra rows with the IVF index searched at these nprobes "
                             "(comma-separated; '' for none)")
    args = parser.parse_args(argv)
    if args.quick:
        args.n = 20_000
    info = common.machine_info()
    folder = args.workdir / f"mmap-{args.n}"
    metas = _make(folder, args.n, args.seed, args.with_budget)
    size = (folder / "images.npy").stat().st_size
    x = np.load(folder / "images.npy", mmap_mode="r")
    truth = numpy_top_k(np.asarray(x), np.load(folder / "queries.npy"), K)[1]
    lines = ["| index | knobs | open | vectors file (MB) | index file (MB) | RSS before (MB) | "
             "after open (MB) | after 100 queries (MB) | grown, share of the vectors file | "
             "recall@10 |", "|---|---|---|---|---|---|---|---|---|---|"]
    ratios, grown = [], {}
    for name, meta in metas.items():
        # the tuned knob, then (IVF) the forced nprobes of --nprobes: a store whose real
        # embeddings need more cells per query touches more of its lists
        knobs_to_run = [None] + ([p for p in args.nprobes if p != meta["knob"]]
                                 if meta["knob_name"] == "nprobe" else [])
        isize = (folder / f"{name}.faiss").stat().st_size
        for forced in knobs_to_run:
            knob = meta["knob"] if forced is None else forced
            knobs = (f"{meta['kind']} {meta['options'].get('nlist')} cells"
                     + (f", pq_m {meta['options']['pq_m']}" if "pq_m" in meta["options"]
                        else "")
                     + f", {meta['knob_name']}={knob}"
                     + (" (tuned)" if forced is None else " (forced)")
                     + f", rerank x{meta['rerank']}")
            for mode in ("mmap", "read"):
                extra = [] if forced is None else [str(forced)]
                done = subprocess.run([sys.executable, "-c", _CHILD, str(folder), name, mode,
                                       *extra], capture_output=True, text=True, check=True)
                r = json.loads(done.stdout.strip().splitlines()[-1])
                found = np.load(folder / f"{name}-{'-'.join([mode, *extra])}-found.npy")
                grown[mode] = r["after"] - r["before"]
                lines.append(
                    f"| {name} | {knobs} | {mode} | {size / 1e6:,.0f} | {isize / 1e6:,.0f} | "
                    f"{r['before'] / 1e6:,.0f} | {r['opened'] / 1e6:,.0f} | "
                    f"{r['after'] / 1e6:,.0f} | {grown[mode] / size:.1%} | "
                    f"{recall_at_k(found, truth):.3f} |")
            mapped = max(grown["mmap"], 1)
            ratios.append(common.ratio_line(grown["read"] / mapped, (
                f"resident memory grown by opening + 100 queries, read into memory over "
                f"memory-mapped, {name} ({meta['kind']}, {meta['knob_name']}={knob}), "
                f"{size / 1e9:.2f} GB vectors file (mapped: {mapped / size:.1%} of it)")))
    print("\n".join(lines + [""] + ratios))
    if not args.no_write:
        head = [f"- command: `{common.command_line()}`", *common.machine_lines(info),
                f"- {args.n:,} x {DIM} float32 clustered vectors; each index built and tuned "
                "by `--index-kind auto`'s own code (budget: none, then 1/8 of the vectors "
                "file); 100 held-out queries through `rescored_search`; RSS = VmRSS of a "
                "fresh process (python + numpy + faiss, warmed up on a small index, are the "
                "'before')", ""]
        common.write_section(SECTION, "Memory-mapped store: resident memory",
                             head + lines, ratios, args.results)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
