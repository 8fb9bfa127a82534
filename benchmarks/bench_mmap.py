"""Resident memory of a memory-mapped store vs one read into memory, same files, same run.

Writes ``images.npy`` (``--n`` x 512 float32 clustered vectors; the default 520k rows is
a 1.06 GB file) and an IVF-Flat ``images.faiss`` over it into ``--workdir``, then, each in
a fresh process, opens them the way ``open_index`` does (``np.load(mmap_mode="r")`` and
``load_index(mmap=True)``: ``IO_FLAG_MMAP_IFC``) and answers 100 queries through
``rescored_search`` (what ``BackboneIndex.search`` runs on an approximate store), and
the same with both files read into memory. Figures: VmRSS after the queries.

Run: ``python benchmarks/bench_mmap.py`` (~2 GB of disk in --workdir) or ``--quick``.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as common  # noqa: E402
from bench_search import clustered, unit_vectors  # noqa: E402

SECTION = "bench_mmap"
DIM = 512

_CHILD = """
import json, sys, numpy as np
from clipindex.store.indexes import load_index, set_search_knob
from clipindex.store.tuning import rescored_search
def rss():
    for line in open('/proc/self/status'):
        if line.startswith('VmRSS'):
            return int(line.split()[1]) * 1024
from clipindex.store.indexes import build_index
folder, mmap = sys.argv[1], sys.argv[2] == 'mmap'
# warm-up on a small in-memory index: BLAS / OpenMP buffers are allocated once, up front
w = np.random.default_rng(0).standard_normal((4096, 512)).astype('float32')
wi = build_index(w, kind='ivf', nlist=16)
rescored_search(wi, w, w[:1], 10, rerank=4)
del w, wi
before = rss()
from clipindex.store.reader import advise_random
x = np.load(folder + '/images.npy', mmap_mode='r' if mmap else None)
x = advise_random(x) if mmap else x
index = load_index(folder + '/images.faiss', mmap=mmap)
set_search_knob(index, 16)
q = np.load(folder + '/queries.npy')
opened = rss()
for i in range(len(q)):
    rescored_search(index, x, q[i:i + 1], 10, rerank=4)
print(json.dumps({'before': before, 'opened': opened, 'after': rss()}))
"""


def _make(folder: Path, n: int, seed: int) -> None:
    from clipindex.store import indexes
    from clipindex.store.indexes import save_index

    folder.mkdir(parents=True, exist_ok=True)
    if (folder / "images.faiss").is_file() and np.load(
            folder / "images.npy", mmap_mode="r").shape == (n, DIM):
        return
    centres = unit_vectors(max(10, n // 100), DIM, seed)
    x = clustered(n, centres, seed + 1)
    np.save(folder / "images.npy", x)
    np.save(folder / "queries.npy", clustered(100, centres, seed + 2))
    rng = np.random.default_rng(seed)
    nlist = max(4, min(1024, n // 64))
    sample = np.sort(rng.choice(n, size=min(n, 48 * nlist), replace=False))
    common.log(f"mmap: building IVF{nlist} over {n:,} vectors")
    index = indexes.INDEX_KINDS["ivf"](DIM, n, indexes.IndexSpec(kind="ivf", nlist=nlist))
    index.train(x[sample])
    index.add_with_ids(x, np.arange(n, dtype=np.int64))
    save_index(index, folder / "images.faiss")


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark (``argv``: command-line arguments) and update RESULTS.md."""
    return common.run_with_threads(_main, argv)


def _main(argv: list[str] | None = None) -> int:
    parser = common.base_parser(__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=520_000)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    if args.quick:
        args.n = 20_000
    info = common.machine_info()
    folder = args.workdir / f"mmap-{args.n}"
    _make(folder, args.n, args.seed)
    size = (folder / "images.npy").stat().st_size
    rss = {}
    for mode in ("mmap", "read"):
        done = subprocess.run([sys.executable, "-c", _CHILD, str(folder), mode],
                              capture_output=True, text=True, check=True)
        rss[mode] = json.loads(done.stdout.strip().splitlines()[-1])
    lines = ["| open | vectors file (MB) | RSS before (MB) | after open (MB) | after 100 "
             "queries (MB) | share of the file |", "|---|---|---|---|---|---|"]
    for mode, r in rss.items():
        grown = r["after"] - r["before"]
        lines.append(f"| {mode} | {size / 1e6:,.0f} | {r['before'] / 1e6:,.0f} | "
                     f"{r['opened'] / 1e6:,.0f} | {r['after'] / 1e6:,.0f} | "
                     f"{grown / size:.1%} |")
    grown_m = max(rss["mmap"]["after"] - rss["mmap"]["before"], 1)
    grown_r = rss["read"]["after"] - rss["read"]["before"]
    ratios = [common.ratio_line(grown_r / grown_m, (
        f"resident memory grown by opening + 100 queries, read into memory over memory-"
        f"mapped, {size / 1e9:.2f} GB vectors file (mapped: {grown_m / size:.1%} of it)"))]
    print("\n".join(lines + [""] + ratios))
    if not args.no_write:
        head = [f"- command: `{common.command_line()}`", *common.machine_lines(info),
                f"- {args.n:,} x {DIM} float32 clustered vectors, IVF-Flat (nprobe 16), 100 "
                "queries rescored x4 from the vectors; RSS = VmRSS of a fresh process "
                "(python + numpy + faiss, warmed up on a small index, are the 'before')", ""]
        common.write_section(SECTION, "Memory-mapped store: resident memory",
                             head + lines, ratios, args.results)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
