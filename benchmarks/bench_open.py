"""What verifying a store costs when it is opened: the checks of every open (tables and
manifest hashed, vectors and FAISS files by size and mtime) against hashing every file
(``clipindex info --verify``), on a store of 1M images and 1M captions.

The store is written with the store's own writers (tables, float32 matrices, flat FAISS
indexes, a sealed format-2 manifest) from random unit vectors: nothing is encoded, the
files have the sizes a real 1M-row, 64-d store has. Baseline and contender run back to
back in the same process, alternating, after one warm-up each (the page cache then holds
the files for both: the figures are CPU cost, not disk reads).

    python benchmarks/bench_open.py            # 1M rows (~1.1 GB of files)
    python benchmarks/bench_open.py --quick    # 20k rows, seconds
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as common  # noqa: E402

SECTION = "bench_open"
DIM = 64


def write_store(ddir: Path, n: int, seed: int = 0) -> Path:
    """``ddir`` (``OUT/<dataset>``) with one backbone folder ``synthetic`` of ``n`` rows."""
    from clipindex.sources import fingerprint
    from clipindex.store.manifest import (
        FORMAT_VERSION,
        file_records,
        table_records,
        write_json,
        write_manifest,
        write_parquet,
    )
    from clipindex.store.outputs import write_outputs

    rng = np.random.default_rng(seed)
    classes = np.array(["cat", "dog", "cow", "sheep", "horse"])
    images = pd.DataFrame({"row_id": np.arange(n), "file": [f"img/{i:07d}.jpg" for i in range(n)],
                           "width": 640, "height": 480, "label": classes[np.arange(n) % 5],
                           "split": np.where(np.arange(n) % 20 == 0, "support", "test")})
    captions = pd.DataFrame({"row_id": np.arange(n), "image_row_id": np.arange(n),
                             "text": [f"a photo of a {classes[i % 5]} number {i}"
                                      for i in range(n)],
                             "label": classes[np.arange(n) % 5]})
    ddir.mkdir(parents=True, exist_ok=True)
    write_parquet(ddir / "images.parquet", images)
    write_parquet(ddir / "captions.parquet", captions)
    fp = fingerprint(images.head(0), captions.head(0)) + f"-{n}"  # any stable value
    write_json(ddir / "dataset.json", {"name": ddir.name, "fingerprint": fp,
                                       "tables": table_records(ddir)})
    bdir = ddir / "synthetic"
    bdir.mkdir(exist_ok=True)

    def unit(rows: int) -> np.ndarray:
        x = rng.standard_normal((rows, DIM)).astype(np.float32)
        return x / np.linalg.norm(x, axis=1, keepdims=True)

    index = write_outputs(bdir, unit(n), unit(n), np.ones(n, bool), "float32", "flat")
    write_manifest(bdir, {
        "format_version": FORMAT_VERSION, "backbone_folder": "synthetic",
        "backbone": "synthetic", "weights": "none", "dim": DIM, "dtype": "float32",
        "n_images": n, "n_captions": n, "n_skipped": 0, "dataset_fingerprint": fp,
        "index": index, "files": file_records(bdir), "skipped": []})
    return ddir


def checks(ddir: Path, verify: bool) -> None:
    """What an open checks before it loads anything (verify: every file hashed)."""
    from clipindex.store.manifest import read_manifest
    from clipindex.store.verify import check_backbone, read_dataset_info, table_damage

    info = read_dataset_info(ddir)
    assert not table_damage(ddir, info)
    assert not check_backbone(ddir / "synthetic", read_manifest(ddir / "synthetic"), verify)


def open_store(ddir: Path, verify: bool) -> None:
    from clipindex.store import open_index

    open_index(ddir, "synthetic", verify=verify)


def _sizes(ddir: Path) -> dict[str, int]:
    return {p.relative_to(ddir).as_posix(): p.stat().st_size
            for p in sorted(ddir.rglob("*")) if p.is_file()}


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark (``argv``: command-line arguments) and update RESULTS.md."""
    return common.run_with_threads(_main, argv)


def _main(argv: list[str] | None = None) -> int:
    parser = common.base_parser(__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args(argv)
    n = 20_000 if args.quick else args.rows
    info = common.machine_info()
    ddir = args.workdir / f"open-{n}" / "synthetic-store"
    shutil.rmtree(ddir.parent, ignore_errors=True)
    with common.stopwatch() as t_write:
        write_store(ddir, n)
    sizes = _sizes(ddir)
    times: dict[str, Any] = {}
    for name, fn in (("checks", lambda: checks(ddir, False)),
                     ("checks_verify", lambda: checks(ddir, True)),
                     ("open", lambda: open_store(ddir, False)),
                     ("open_verify", lambda: open_store(ddir, True))):
        fn()  # warm-up: page cache, imports
        times[name] = common.median_seconds(fn, args.repeats)
    shutil.rmtree(ddir.parent, ignore_errors=True)
    total = sum(sizes.values()) / 1e6
    small = sum(v for k, v in sizes.items() if k.endswith((".parquet", ".json"))) / 1e6
    lines = ["| store | files (MB) | tables + manifests (MB) | checks of an open (s) | "
             "every file hashed (s) | open_index (s) | open_index verify=True (s) |",
             "|---|---|---|---|---|---|---|",
             f"| {n:,} images + {n:,} captions, dim {DIM} float32, flat | {total:,.0f} | "
             f"{small:,.1f} | {times['checks']:.3f} | {times['checks_verify']:.3f} | "
             f"{times['open']:.3f} | {times['open_verify']:.3f} |"]
    ratios = [common.ratio_line(times["checks_verify"] / times["checks"],
                                "every file hashed over the checks of an open"),
              common.ratio_line(times["open_verify"] / times["open"],
                                "open_index verify=True over the default open")]
    print("\n".join(lines + [""] + ratios))
    if not args.no_write:
        head = [f"- command: `{common.command_line()}`", *common.machine_lines(info),
                f"- store written in {t_write['s']:.0f} s by the store's own writers from "
                "random unit vectors (no encoding); medians of "
                f"{args.repeats} runs after a warm-up, files in the page cache", ""]
        common.write_section(SECTION, "Opening a store: checks of every open vs full hashing",
                             head + lines, ratios, args.results)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
