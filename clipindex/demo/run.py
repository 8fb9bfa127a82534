"""``clipindex demo``: the whole study on the bundled demo world, offline, in minutes.

:func:`run_demo` makes the demo world if it is missing, builds the three tiny backbones'
stores (encode once) and runs the demo bench (:func:`demo_config`, the same settings as
the shipped ``demo`` bench config, ``clipindex/configs/bench/demo.yaml``: every method,
majority and soft ensembles)::

    OUT/world/      the world (unless --world names another folder)
    OUT/indexes/    the stores
    OUT/results/    tables.md, tables.csv, records/, predictions/, PNGs, errors, run.json,
                    report.html (clipindex.report)

Scale: ``default`` is the study's size, 200 images per class from the world's ``val``
split (1,000 images, 50 support + 950 test); ``small`` takes every ``val`` image of a
small world (~42 per class) for quick checks.

Example
-------
>>> from clipindex.demo import run_demo
>>> res = run_demo("demo-out")  # doctest: +SKIP
>>> print(res.bench.markdown)  # doctest: +SKIP
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from clipindex.bench import BenchResult, run_bench
from clipindex.config import BenchConfig, DatasetConfig
from clipindex.errors import ModelLoadError

__all__ = ["DEMO_METHODS", "DEMO_PER_CLASS", "DemoResult", "demo_config", "run_demo"]

#: Images sampled per class from the world's val split, by world scale (None: all).
DEMO_PER_CLASS: dict[str, int | None] = {"default": 200, "small": None}
DEMO_METHODS = ("prompt", "prototype", "caption-knn", "image-knn", "linear-probe", "mlp")


def _tiny_names() -> tuple[str, ...]:
    from clipindex import tiny

    return tuple(tiny.TINY_BACKBONES)


def demo_config(world: str | os.PathLike[str], *, scale: str = "default",
                backbones: Sequence[str] | None = None) -> BenchConfig:
    """The demo bench: the shipped ``demo`` bench config with its dataset inline at ``world``.

    Example
    -------
    >>> demo_config("worlds/demo").dataset.per_class
    200
    """
    from clipindex.errors import UserInputError

    if scale not in DEMO_PER_CLASS:
        raise UserInputError(f"Unknown demo scale {scale!r}. Known: {', '.join(DEMO_PER_CLASS)}")
    dataset = DatasetConfig(
        name="demo", source="coco", root=str(Path(world)), split="val",
        instances="annotations/instances_{split}.json",
        captions="annotations/captions_{split}.json", images="{split}",
        classes=("cat", "dog", "cow", "sheep", "horse"), exclude=("person",),
        drop_multi_target=True, per_class=DEMO_PER_CLASS[scale], seed=42,
        support_per_class=10)
    return BenchConfig(dataset=dataset, name="demo",
                       backbones=tuple(backbones) if backbones else _tiny_names(),
                       methods=DEMO_METHODS, ensembles=("majority", "soft"), k=10, seed=0)


@dataclass(frozen=True)
class DemoResult:
    """What :func:`run_demo` did: the bench result, the world, and the wall-clock time."""

    bench: BenchResult
    world: Path
    made_world: bool
    world_scale: str | None
    seconds: float
    report: Path | None = None


def _check_tiny_weights(backbones: Sequence[str]) -> None:
    """Fail before the (slow) world generation when a tiny backbone has no weights."""
    from clipindex import tiny

    for name in backbones:
        if name in tiny.TINY_BACKBONES:
            weights = tiny.checkpoint_dir(name) / "open_clip_model.safetensors"
            if not weights.is_file():
                raise ModelLoadError(
                    f"tiny backbone {name!r} has no weights ({weights} is missing); train "
                    "them with `python -m clipindex.demo.train --world DIR --all`")


def _ensure_world(world: Path, scale: str, seed: int, progress: bool) -> tuple[bool, str | None]:
    from clipindex.demo.world import make_world

    record = world / "world.json"
    if record.is_file():
        return False, json.loads(record.read_text(encoding="utf-8")).get("scale")
    make_world(world, seed=seed, scale=scale, progress=progress)
    return True, scale


def run_demo(
    out: str | os.PathLike[str] = "demo-out",
    *,
    world: str | os.PathLike[str] | None = None,
    scale: str = "default",
    seed: int = 0,
    backbones: Sequence[str] | None = None,
    workers: int | None = None,
    skip_existing: bool = False,
    progress: bool = True,
) -> DemoResult:
    """Make the world if missing, build the tiny backbones' stores, run the demo bench.

    Parameters
    ----------
    out : path
        Folder for ``indexes/`` and ``results/`` (and ``world/`` unless ``world`` is given).
    world : path, optional
        An existing world to use (or where to make it); default ``OUT/world``.
    scale : {"default", "small"}
        World scale when the world is made, and the per-class sample (:data:`DEMO_PER_CLASS`);
        an existing world is sampled by its own recorded scale.
    backbones : list of str, optional
        Default: the three tiny backbones.

    Example
    -------
    >>> res = run_demo("demo-out", scale="small")  # doctest: +SKIP
    >>> res.bench.files["tables.md"]  # doctest: +SKIP
    PosixPath('demo-out/results/tables.md')
    """
    from clipindex.store.owned import refuse_store_path

    t0 = time.perf_counter()
    out = refuse_store_path(out)
    world_dir = Path(world) if world is not None else out / "world"
    cfg = demo_config(world_dir, scale=scale, backbones=backbones)
    _check_tiny_weights(cfg.backbones)
    from clipindex.bench import validate_bench

    validate_bench(cfg)  # every name checked before the world is made
    made, world_scale = _ensure_world(world_dir, scale, seed, progress)
    if world_scale != scale and world_scale in DEMO_PER_CLASS:
        # An existing world keeps its own scale: sample it as that scale's demo does.
        cfg = demo_config(world_dir, scale=world_scale, backbones=backbones)
    bench = run_bench(cfg, out / "results", index_root=out / "indexes", workers=workers,
                      skip_existing=skip_existing, progress=progress)
    from clipindex.report import write_report

    report = write_report(bench.out)  # RESULTS/report.html; the CLI prints its path
    return DemoResult(bench=bench, world=world_dir, made_world=made, world_scale=world_scale,
                      seconds=time.perf_counter() - t0, report=report)
