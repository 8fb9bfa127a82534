"""Classifying on stored vectors: clipindex's estimators and its whole ``classify`` call
against a numpy reference (normalise, mean, matmul, argmax), on the demo store.

The demo store is the shipped ``demo`` dataset config on a default-scale demo world (seed 0;
1,000 images, 5,000 captions) built once with ``tiny-vit`` (cached in ``--workdir``).
Two comparisons per method (``prompt``: zero-shot from the class prompts' text vectors;
``prototype``: mean caption vector of the support images per class), measured in the
same process, alternating, on the same test rows:

- estimators: ``PromptClassifier(class_vectors=W).fit().predict(X)`` /
  ``PrototypeClassifier().fit(C, y).predict(X)`` over the numpy reference on the same
  arrays (ratio goal: <= 2x);
- the whole ``clipindex.classify`` call on an opened store (store open excluded;
  support/test rows, fit, predict, metrics and the predictions table included; goal
  <= 1 ms).

    python benchmarks/bench_classify.py            # the demo store
    python benchmarks/bench_classify.py --quick    # a small world, fewer repeats
"""

from __future__ import annotations

import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as common  # noqa: E402

SECTION = "bench_classify"
BACKBONE = "tiny-vit"
CONFIG = "builtin:demo"  # the shipped dataset config


def demo_store(workdir: Path, quick: bool) -> Path:
    """The demo store (``OUT/demo``), built once per world under ``workdir``."""
    from clipindex.sources import load_dataset
    from clipindex.store import build_store

    world = common.demo_world(workdir, "small" if quick else "default")
    extra = {"per_class": 40, "support_per_class": 5} if quick else {}
    dataset = load_dataset(CONFIG, root=world, **extra)
    out = workdir / f"classify-store-{world.name}"
    build_store(dataset, [BACKBONE], out=out, workers=0, progress=False)
    return out / dataset.name


def _unit(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def numpy_prompt(x: np.ndarray, w: np.ndarray) -> np.ndarray:
    """The reference zero-shot: argmax of the cosines to the class vectors."""
    return (_unit(x) @ _unit(w).T).argmax(axis=1)


def numpy_prototype(x: np.ndarray, c: np.ndarray, codes: np.ndarray, n: int) -> np.ndarray:
    """The reference prototypes: per-class mean of the normalised caption vectors."""
    cn = _unit(c)
    means = np.stack([cn[codes == j].mean(axis=0) for j in range(n)])
    return (_unit(x) @ _unit(means).T).argmax(axis=1)


def _inputs(index: Any) -> dict[str, Any]:
    """The arrays both sides use: test vectors, class vectors, support captions."""
    from clipindex.classifiers.rows import image_labels, pick_classes, split_rows

    classes = pick_classes(index, None)
    support, test = split_rows([index], classes, None, 0)
    labels = image_labels(index)
    caps = index.captions
    owner = caps["image_row_id"].to_numpy(np.int64)
    keep = np.isin(owner, support) & np.asarray(index.caption_valid, bool)
    cap_rows = caps["row_id"].to_numpy(np.int64)[keep]
    cap_labels = labels[owner[keep]]
    return {"classes": classes, "x": np.ascontiguousarray(index.image_vectors[test]),
            "w": index.text_vectors([f"a photo of a {c}" for c in classes]),
            "c": np.ascontiguousarray(index.caption_vectors[cap_rows]), "y": cap_labels,
            "codes": np.searchsorted(np.asarray(classes), cap_labels) if
            list(classes) == sorted(classes) else
            np.array([classes.index(v) for v in cap_labels])}


def _alternate(fns: dict[str, Callable[[], Any]], rounds: int, inner: int) -> dict[str, float]:
    """Median seconds per call of each function (``name``: CPU time of this thread,
    ``name_wall``: wall time), calls of the functions alternating. CPU time is what a
    call costs; on a shared machine the wall time adds the waits for a core."""
    times: dict[str, list[float]] = {k: [] for k in fns}
    walls: dict[str, list[float]] = {k: [] for k in fns}
    for fn in fns.values():
        fn()  # warm-up
    for _ in range(rounds):
        for name, fn in fns.items():
            start, wall = time.thread_time(), time.perf_counter()
            for _ in range(inner):
                fn()
            times[name].append((time.thread_time() - start) / inner)
            walls[name].append((time.perf_counter() - wall) / inner)
    return {**{k: statistics.median(v) for k, v in times.items()},
            **{f"{k}_wall": statistics.median(v) for k, v in walls.items()}}


def measure(store: Path, rounds: int, inner: int) -> dict[str, dict[str, float]]:
    """Seconds per call of numpy, estimators and classify, per method."""
    from clipindex.classifiers import PromptClassifier, PrototypeClassifier
    from clipindex.classifiers.runner import classify
    from clipindex.store import open_index

    index = open_index(store, BACKBONE)
    a = _inputs(index)
    n = len(a["classes"])
    est_p = PromptClassifier(a["classes"], class_vectors=a["w"]).fit().predict(a["x"])
    assert (est_p == np.asarray(a["classes"])[numpy_prompt(a["x"], a["w"])]).all()
    fns = {
        "prompt": {
            "numpy": lambda: numpy_prompt(a["x"], a["w"]),
            "estimator": lambda: PromptClassifier(a["classes"], class_vectors=a["w"]
                                                  ).fit().predict(a["x"]),
            "classify": lambda: classify(store, [index], "prompt")},
        "prototype": {
            "numpy": lambda: numpy_prototype(a["x"], a["c"], a["codes"], n),
            "estimator": lambda: PrototypeClassifier().fit(a["c"], a["y"]).predict(a["x"]),
            "classify": lambda: classify(store, [index], "prototype")},
    }
    return {method: _alternate(f, rounds, inner) for method, f in fns.items()}


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark (``argv``: command-line arguments) and update RESULTS.md."""
    return common.run_with_threads(_main, argv)


def _main(argv: list[str] | None = None) -> int:
    parser = common.base_parser(__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=21)
    parser.add_argument("--inner", type=int, default=50, help="calls per timed round")
    args = parser.parse_args(argv)
    info = common.machine_info()
    store = demo_store(args.workdir, args.quick)
    rounds, inner = (3, 5) if args.quick else (args.rounds, args.inner)
    figures = measure(store, rounds, inner)
    lines = ["| method | numpy reference (ms) | estimators fit + predict (ms) | "
             "whole classify call (ms) | the same three, wall time (ms) |",
             "|---|---|---|---|---|"]
    ratios, whole = [], []
    for method, t in figures.items():
        lines.append(f"| {method} | {t['numpy'] * 1e3:.3f} | {t['estimator'] * 1e3:.3f} | "
                     f"{t['classify'] * 1e3:.3f} | {t['numpy_wall'] * 1e3:.3f} / "
                     f"{t['estimator_wall'] * 1e3:.3f} / {t['classify_wall'] * 1e3:.3f} |")
        ratios.append(common.ratio_line(t["estimator"] / t["numpy"],
                                        f"clipindex classify over numpy, {method}, demo store"))
        whole.append(f"classify: {t['classify'] * 1e3:.2f} ms whole call, {method}, demo store")
    print("\n".join(lines + [""] + ratios + whole))
    if not args.no_write:
        head = [f"- command: `{common.command_line()}`", *common.machine_lines(info),
                f"- store: {store} ({BACKBONE}); medians of {rounds} alternating rounds of "
                f"{inner} calls, CPU time of the calling thread (the wall time, which "
                "adds the waits for a core on this shared machine, in the last column); "
                "`ratio` compares the estimators' fit + predict with the "
                "numpy reference on the same arrays, `classify` is the whole "
                "`clipindex.classify(store, [opened index], method)` call (store open "
                "excluded; rows, fit, predict, metrics and predictions table included)", ""]
        common.write_section(SECTION, "Classifying on stored vectors: clipindex vs numpy",
                             head + lines, ratios + whole, args.results)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
