"""The benchmark harness: the study's tables, records, predictions and errors from a store.

:func:`run_bench` takes a bench config (a dataset, backbones, methods, ensembles),
validates all of it, builds any missing or stale store under ``index_root`` (encode once
per backbone), evaluates every (backbone, method) from the stored vectors with
:func:`clipindex.classifiers.runner.classify` (the study's zero-shot with ``rows="all"``),
combines the backbones' predictions into ensemble
rows, measures retrieval Recall@K over the captions and writes::

    RESULTS/records/<backbone>__<method>.json         metrics, per-class recall, params, timings
    RESULTS/predictions/<backbone>__<method>.parquet  as `clipindex classify --out`
    RESULTS/tables.csv, tables.md, retrieval.csv      (see clipindex.bench.outputs)
    RESULTS/confusion_zero_shot.png, confusion_few_shot.png
    RESULTS/errors.csv, errors.md
    RESULTS/run.json                                  what a report needs to find everything

Ensemble rows are named ``ensemble-<kind>`` (``ensemble-majority``, ``ensemble-soft``)
and are computed from the single-backbone predictions with
:func:`clipindex.classifiers.ensemble_table`, so anyone can recompute them from
``predictions/``.

Protocols:

- ``same-rows`` (default): every method is evaluated on the same rows, the split's
  ``test`` rows (or, with ``shots``, every row not drawn as support).
- ``study``: the reference study's choice: zero-shot (``prompt``) on ALL sampled rows
  (support + test: 1,000 images on COCO), every other method on the test rows.

Example
-------
>>> from clipindex.bench import run_bench
>>> res = run_bench("demo", "results/demo")  # doctest: +SKIP
>>> res.tables[["backbone", "method", "accuracy"]].head(2)  # doctest: +SKIP
"""

from __future__ import annotations

import json
import os
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from clipindex.bench import breakdowns, outputs, suspects, timing
from clipindex.bench.outputs import (
    METRIC_DIGITS,
    TABLE_COLUMNS,
    TIME_DIGITS,
    TIMING_COLUMNS,
    clean_json,
    retrieval_table,
    round_or_none,
    tables_frame,
    write_csv,
    write_json,
)
from clipindex.checks import positive_int
from clipindex.config import (
    BenchConfig,
    DatasetConfig,
    apply_overrides,
    load_bench_config,
    load_dataset_config,
)
from clipindex.errors import ConfigError, DataError, UserInputError
from clipindex.files import atomic_write_bytes

__all__ = ["PROTOCOLS", "ZERO_SHOT", "FEW_SHOT", "ENSEMBLE_PREFIX", "TABLE_COLUMNS",
           "TIMING_COLUMNS", "BenchConfig", "BenchPlan", "BenchResult", "load_bench_config",
           "validate_bench", "run_bench"]

PROTOCOLS: tuple[str, ...] = ("same-rows", "study")
ZERO_SHOT = outputs.ZERO_SHOT
FEW_SHOT = outputs.FEW_SHOT
ENSEMBLE_PREFIX = "ensemble-"


# --------------------------------------------------------------------------- config
def _as_config(config: BenchConfig | str | os.PathLike[str]) -> BenchConfig:
    if isinstance(config, BenchConfig):
        return config
    return load_bench_config(os.fspath(config))


@dataclass(frozen=True)
class BenchPlan:
    """A validated config (:func:`validate_bench`): the protocol, the resolved backbone
    specs and the dataset config to load."""

    cfg: BenchConfig
    protocol: str
    specs: list[Any]
    dataset_cfg: DatasetConfig


def _check_names(names: Sequence[str], known: Sequence[str], what: str) -> None:
    unknown = [n for n in names if n not in known]
    if unknown:
        raise UserInputError(f"Unknown {what} {unknown[0]!r}. Known: {', '.join(known)}")
    if len(set(names)) != len(names):
        raise ConfigError(f"A {what} is listed twice: {list(names)}")


def _check_int(value: Any, name: str) -> None:
    if value is not None:
        positive_int(f"Field '{name}'", value, error=ConfigError)


def validate_bench(config: BenchConfig | str | os.PathLike[str], *,
                   protocol: str = "same-rows") -> BenchPlan:
    """Check every name and value of a bench config before any work; return the plan.

    Raises :class:`~clipindex.errors.UserInputError` (one line) for an unknown backbone,
    method, ensemble, template set, protocol or dataset field.

    Example
    -------
    >>> validate_bench("demo").protocol  # doctest: +SKIP
    'same-rows'
    """
    from clipindex.classifiers import KNN_WEIGHTS
    from clipindex.classifiers.runner import ENSEMBLES, METHODS
    from clipindex.classifiers.templates import check_template, get_templates
    from clipindex.encode import backbones as bb

    cfg = _as_config(config)
    if protocol not in PROTOCOLS:
        raise UserInputError(f"Unknown protocol {protocol!r}. Known: {', '.join(PROTOCOLS)}")
    _check_names(cfg.methods, list(METHODS), "method")
    _check_names(cfg.ensembles, list(ENSEMBLES), "ensemble")
    if cfg.weights not in KNN_WEIGHTS:
        raise UserInputError(f"Unknown weights {cfg.weights!r}. Known: {', '.join(KNN_WEIGHTS)}")
    if cfg.prompt is not None and cfg.templates is not None:
        raise ConfigError("Give either 'prompt' or 'templates' in a bench config, not both")
    if cfg.prompt is not None:
        check_template(cfg.prompt)
    get_templates(cfg.templates or "default")
    for name in ("shots", "k"):
        _check_int(getattr(cfg, name), name)
    for k in cfg.recall_ks:
        _check_int(k, "recall_ks")
    specs = [bb.resolve_backbone(b, cfg.pretrained) for b in cfg.backbones]
    folders = [s.name for s in specs]
    if len(set(folders)) != len(folders):
        raise ConfigError(f"Two backbones name the same model: {list(cfg.backbones)}")
    if cfg.ensembles and len(specs) < 2:
        raise ConfigError("Ensembles need at least two backbones: list more backbones or "
                          "set 'ensembles: []'")
    if isinstance(cfg.dataset, DatasetConfig):
        ds = apply_overrides(cfg.dataset, cfg.dataset_overrides, "dataset_overrides")
    else:
        ds = load_dataset_config(cfg.dataset, **cfg.dataset_overrides)
    return BenchPlan(cfg, protocol, specs, ds)


# --------------------------------------------------------------------------- results
@dataclass(frozen=True)
class BenchResult:
    """What :func:`run_bench` returns: where everything is, and the tables.

    ``tables`` is ``tables.csv`` as a DataFrame, ``retrieval`` is ``retrieval.csv``,
    ``files`` maps each output's name to its path and ``run`` is ``run.json``.
    """

    out: Path
    tables: pd.DataFrame
    retrieval: pd.DataFrame
    files: dict[str, Path]
    run: dict[str, Any]
    markdown: str = ""


# --------------------------------------------------------------------------- stores
def _load_data(plan: BenchPlan, root: Any, out: Path) -> tuple[Any, Path]:
    """Load the dataset the config names (an inline config is saved under RESULTS)."""
    from clipindex.sources import load_dataset

    cfg = plan.cfg
    if isinstance(cfg.dataset, DatasetConfig):
        import yaml

        text = yaml.safe_dump(cfg.dataset.to_dict(), sort_keys=False)
        path = atomic_write_bytes(out / "dataset.yaml", text.encode("utf-8"))
    else:
        path = Path(cfg.dataset)
    return load_dataset(path, root=root, **cfg.dataset_overrides), path


def _check_data(plan: BenchPlan, dataset: Any) -> None:
    """What the methods need from the data, checked before anything is encoded."""
    from clipindex.classifiers.runner import CAPTION_METHODS

    methods = plan.cfg.methods
    need_captions = [m for m in methods if m in CAPTION_METHODS]
    if need_captions and len(dataset.captions) == 0:
        raise DataError(f"dataset {dataset.name!r} has no captions, so method(s) "
                        f"{', '.join(need_captions)} cannot run: remove them from 'methods'")
    fitted = [m for m in methods if m != ZERO_SHOT]
    if fitted and plan.cfg.shots is None and not (dataset.images["split"] == "support").any():
        raise DataError(f"dataset {dataset.name!r} has no support rows for {', '.join(fitted)}: "
                        "set 'support_per_class' in the dataset config or 'shots' in the bench "
                        "config")


def _ensure_stores(plan: BenchPlan, dataset: Any, index_root: Path, *, workers: int | None,
                   batch_size: int | None, device: str | None, progress: bool
                   ) -> tuple[Path, dict[str, str]]:
    """Build what is missing or stale (another dataset fingerprint); reuse the rest."""
    from clipindex.store import build_store

    ddir = index_root / dataset.name
    before = {s.name: _manifest_stamp(ddir / s.name) for s in plan.specs}
    paths = build_store(dataset, list(plan.cfg.backbones), out=index_root,
                        pretrained=plan.cfg.pretrained, workers=workers,
                        batch_size=batch_size, device=device, rebuild=True,
                        progress=progress)
    state = {p.name: ("reused" if before.get(p.name) == _manifest_stamp(p) else "built")
             for p in paths}
    return paths[0].parent, state


def _manifest_stamp(bdir: Path) -> tuple[int, int] | None:
    m = bdir / "manifest.json"
    return (m.stat().st_mtime_ns, m.stat().st_size) if m.is_file() else None


def _backbone_facts(ddir: Path, folder: str) -> dict[str, Any]:
    from clipindex.store.manifest import read_json

    m = read_json(ddir / folder / "manifest.json")
    t = m.get("timings") or {}
    params = m.get("params")
    return {
        "backbone": folder, "display": m.get("display_name") or folder,
        "weights": m.get("weights"), "params": params,
        "params_m": None if params is None else round(params / 1e6, 3),
        "encode_s": round_or_none(t.get("image_encode_seconds"), TIME_DIGITS),
        "images_per_s": round_or_none(t.get("images_per_s"), 1),
        "n_images": m.get("n_images"), "n_skipped": m.get("n_skipped"),
        "dim": m.get("dim"), "res": m.get("image_size"), "device": m.get("device"),
    }


# --------------------------------------------------------------------------- evaluation
def _rows(plan: BenchPlan, method: str) -> str:
    """The rows ``classify`` predicts: the study protocol's zero-shot takes all of them."""
    return "all" if plan.protocol == "study" and method == ZERO_SHOT else "test"


def _settings(plan: BenchPlan, method: str, facts: dict[str, Any], fingerprint: str
              ) -> dict[str, Any]:
    """What determines a record's metrics (``--skip-existing`` reuses only on a match)."""
    c = plan.cfg
    return {"method": method, "backbone": facts["backbone"], "weights": facts["weights"],
            "dataset_fingerprint": fingerprint, "protocol": plan.protocol,
            "rows": _rows(plan, method),
            "shots": c.shots, "k": c.k, "knn_weights": c.weights, "seed": c.seed,
            "templates": c.templates, "prompt": c.prompt, "class_weight": c.class_weight}


def _evaluate(plan: BenchPlan, ddir: Path, folder: str, method: str) -> tuple[dict, pd.DataFrame,
                                                                           float]:
    from clipindex.classifiers.runner import classify

    cfg = plan.cfg
    t0 = time.perf_counter()
    res = classify(ddir, folder, method, shots=cfg.shots, k=cfg.k, seed=cfg.seed,
                   prompt=cfg.prompt, templates=cfg.templates, weights=cfg.weights,
                   class_weight=cfg.class_weight, rows=_rows(plan, method))
    return res.metrics, res.predictions, (time.perf_counter() - t0) * 1000.0


def _record(metrics: Mapping[str, Any], facts: Mapping[str, Any], settings: Mapping[str, Any],
            classify_ms: float, members: Sequence[str] = ()) -> dict[str, Any]:
    d = METRIC_DIGITS
    per = metrics["per_class"]
    return {
        "backbone": facts["backbone"], "display": facts["display"],
        "method": settings["method"], "members": list(members),
        "accuracy": round_or_none(metrics["accuracy"], d),
        "balanced_accuracy": round_or_none(metrics["balanced_accuracy"], d),
        "macro_f1": round_or_none(metrics["macro_f1"], d),
        "per_class_recall": {c: round_or_none(per[c]["recall"], d) for c in metrics["classes"]},
        "per_class": {c: {k: (round_or_none(v, d) if k != "support" else int(v))
                          for k, v in per[c].items()} for c in metrics["classes"]},
        "classes": list(metrics["classes"]), "confusion": metrics["confusion"],
        "n": int(metrics["n"]), "n_support": metrics.get("n_support"),
        "params": facts["params"], "params_m": facts["params_m"],
        "encode_s": facts["encode_s"], "images_per_s": facts["images_per_s"],
        "classify_ms": round_or_none(classify_ms, TIME_DIGITS), "settings": dict(settings),
    }


def _reusable(out: Path, key: str, settings: Mapping[str, Any]) -> tuple[dict, pd.DataFrame] | None:
    rec_path, pred_path = out / "records" / f"{key}.json", out / "predictions" / f"{key}.parquet"
    if not (rec_path.is_file() and pred_path.is_file()):
        return None
    try:
        rec = json.loads(rec_path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return None
    if rec.get("settings") != clean_json(settings):
        return None
    return rec, pd.read_parquet(pred_path)


def _ensemble(kind: str, method: str, tables: Sequence[pd.DataFrame],
              facts: Sequence[Mapping[str, Any]], records: Sequence[Mapping[str, Any]],
              settings: Mapping[str, Any]) -> tuple[dict, pd.DataFrame]:
    """Combine the single-backbone predictions on their common rows with ENSEMBLES[kind]."""
    from clipindex.classifiers import ensemble_table
    from clipindex.metrics import classification_metrics

    classes = list(records[0]["classes"])
    t0 = time.perf_counter()
    table = ensemble_table(kind, tables, classes)
    vote_ms = (time.perf_counter() - t0) * 1000.0
    metrics = classification_metrics(table["true"].to_numpy(), table["predicted"].to_numpy(),
                                     classes)
    metrics["n_support"] = records[0].get("n_support")
    name = f"{ENSEMBLE_PREFIX}{kind}"
    summed = {
        "backbone": name, "display": f"Ensemble ({kind} vote)", "weights": None,
        "params": _sum([f["params"] for f in facts]),
        "params_m": _sum([f["params_m"] for f in facts], 3),
        "encode_s": _sum([f["encode_s"] for f in facts], TIME_DIGITS),
        "images_per_s": None,
    }
    n_img = facts[0].get("n_images")
    if summed["encode_s"] and n_img:
        summed["images_per_s"] = round(n_img / summed["encode_s"], 1)
    ms = sum(float(r["classify_ms"] or 0.0) for r in records) + vote_ms
    rec = _record(metrics, summed, {**settings, "backbone": name, "ensemble": kind},
                  ms, members=[f["backbone"] for f in facts])
    return rec, table


def _sum(values: Sequence[Any], digits: int | None = None) -> Any:
    if any(v is None for v in values):
        return None
    total = sum(values)
    return round(total, digits) if digits is not None else total


# --------------------------------------------------------------------------- the run
@dataclass
class _Outcome:
    """Records and prediction tables by ``<backbone>__<method>`` key, in table order."""

    records: dict[str, dict[str, Any]] = field(default_factory=dict)
    tables: dict[str, pd.DataFrame] = field(default_factory=dict)
    reused: list[str] = field(default_factory=list)


def _evaluate_all(plan: BenchPlan, ddir: Path, out: Path, fingerprint: str, *,
                  skip_existing: bool, progress: bool) -> _Outcome:
    from clipindex.progress import bar as tqdm

    folders = [s.name for s in plan.specs]
    facts = {f: _backbone_facts(ddir, f) for f in folders}
    res = _Outcome()
    pairs = [(m, f) for m in plan.cfg.methods for f in folders]
    for method, folder in tqdm(pairs, desc="bench", unit="run", disable=not progress,
                               file=sys.stderr):
        key = f"{folder}__{method}"
        settings = _settings(plan, method, facts[folder], fingerprint)
        old = _reusable(out, key, settings) if skip_existing else None
        if old is not None:
            res.records[key], res.tables[key] = old
            res.reused.append(key)
            continue
        metrics, table, ms = _evaluate(plan, ddir, folder, method)
        res.records[key] = _record(metrics, facts[folder], settings, ms)
        res.tables[key] = table
    for method in plan.cfg.methods:
        keys = [f"{f}__{method}" for f in folders]
        settings = _settings(plan, method, {"backbone": None, "weights": None}, fingerprint)
        for kind in plan.cfg.ensembles:
            rec, table = _ensemble(kind, method, [res.tables[k] for k in keys],
                                   [facts[f] for f in folders],
                                   [res.records[k] for k in keys], settings)
            key = f"{rec['backbone']}__{method}"
            res.records[key], res.tables[key] = rec, table
    return res


def _write_outcome(res: _Outcome, out: Path) -> dict[str, Path]:
    from clipindex.classifiers.runner import write_predictions

    files: dict[str, Path] = {}
    for key, rec in res.records.items():
        files[f"records/{key}.json"] = write_json(out / "records" / f"{key}.json", rec)
        files[f"predictions/{key}.parquet"] = write_predictions(
            res.tables[key], out / "predictions" / f"{key}.parquet")
    return files


def _root_text(root: Path | str) -> str:
    """The data root as run.json records it: a URL as is, a local path absolute."""
    return root if isinstance(root, str) else str(Path(root).absolute())


def run_bench(
    config: BenchConfig | str | os.PathLike[str],
    out: str | os.PathLike[str],
    *,
    root: str | os.PathLike[str] | None = None,
    index_root: str | os.PathLike[str] | None = None,
    protocol: str = "same-rows",
    skip_existing: bool = False,
    workers: int | None = None,
    batch_size: int | None = None,
    device: str | None = None,
    progress: bool = True,
    group_by: str | None = None,
    target_accuracy: float = breakdowns.DEFAULT_TARGET,
    drop_suspects: int | None = None,
    audit: str | os.PathLike[str] | None = None,
) -> BenchResult:
    """Run a benchmark: validate, build missing stores, evaluate, write every output.

    Parameters
    ----------
    config : BenchConfig or path
        A :class:`BenchConfig`, a bench config YAML, or the name of a shipped one
        (``"demo"``, ``"study"``: ``clipindex/configs/bench/``).
    out : path
        The results folder (``RESULTS``).
    root : path, optional
        Data root replacing the dataset config's ``root``.
    index_root : path, optional
        Store root (default ``RESULTS/indexes``); missing or stale backbones (another
        dataset fingerprint) are (re)built there, up-to-date ones reused.
    protocol : {"same-rows", "study"}
        See the module docstring.
    skip_existing : bool
        Reuse ``records/`` + ``predictions/`` already in ``out`` whose settings match.
    workers, batch_size, device, progress
        Encoding knobs passed to :func:`clipindex.store.build_store`.
    group_by : str, optional
        An ``images.parquet`` column: ``groups.csv`` (:mod:`clipindex.bench.breakdowns`).
    target_accuracy : float
        ``tables.md`` names the abstention threshold reaching it (``coverage.csv``).
    drop_suspects, audit : int, path, optional
        Accuracy also without an audit's top N suspects: ``suspects.csv`` (from ``audit``
        or a fresh audit in ``RESULTS/audit``, see :mod:`clipindex.bench.suspects`).

    Returns
    -------
    BenchResult

    Example
    -------
    >>> res = run_bench("demo", "results/demo",
    ...                 root="worlds/demo")  # doctest: +SKIP
    >>> sorted(res.files)[:2]  # doctest: +SKIP
    ['confusion_few_shot.png', 'confusion_zero_shot.png']
    """
    t_start = time.perf_counter()
    from clipindex.store.owned import refuse_store_path

    plan = validate_bench(config, protocol=protocol)  # every check before any work
    out = refuse_store_path(out)
    iroot = (refuse_store_path(index_root, "--index-root") if index_root is not None
             else out / "indexes")
    breakdowns.check_breakdowns([], None, target_accuracy)
    suspects.check_drop(drop_suspects, audit)
    dataset, ds_path = _load_data(plan, root, out)
    _check_data(plan, dataset)
    breakdowns.check_breakdowns(dataset.images.columns, group_by, target_accuracy)
    ddir, state = _ensure_stores(plan, dataset, iroot, workers=workers,
                                 batch_size=batch_size, device=device, progress=progress)
    fingerprint = str(json.loads((ddir / "dataset.json").read_text("utf-8"))["fingerprint"])
    res = _evaluate_all(plan, ddir, out, fingerprint, skip_existing=skip_existing,
                        progress=progress)
    timing.add_study_columns(res.records, ddir, [s.name for s in plan.specs])
    files = _write_outcome(res, out)
    tables = tables_frame(res.records)
    files["tables.csv"] = write_csv(tables, out / "tables.csv")
    folders = [s.name for s in plan.specs]
    retrieval = (retrieval_table(ddir, folders, plan.cfg.recall_ks) if plan.cfg.retrieval
                 else pd.DataFrame())
    files["retrieval.csv"] = write_csv(retrieval, out / "retrieval.csv")
    images = pd.read_parquet(ddir / "images.parquet")
    context = outputs.Context(plan.cfg.name, dataset.name, plan.protocol, plan.cfg.methods,
                                 plan.cfg.recall_ks, int(len(images)))
    extra, more_md = breakdowns.write_breakdowns(res.records, res.tables, images, out,
                                                 target=target_accuracy, group_by=group_by)
    files.update(extra)
    extra, md = suspects.without_suspects(drop_suspects, audit, res, ddir, folders, out)
    files.update(extra)
    more_md += md
    leak_files, n_leak = breakdowns.write_leakage(ddir, folders, dataset.root, out)
    files.update(leak_files)
    if n_leak:
        print(f"Warning: {n_leak} duplicate pair(s) straddle support and test (few-shot "
              f"leakage): see {out / 'leakage.csv'}", file=sys.stderr)
    markdown = outputs.tables_markdown(res.records, retrieval, context) + more_md
    files["tables.md"] = atomic_write_bytes(out / "tables.md", markdown.encode("utf-8"))
    files.update(outputs.write_errors(res.records, res.tables, images, out, context))
    files.update(outputs.write_confusions(res.records, out))
    run = {
        "config": plan.cfg.to_dict(), "dataset_config": str(ds_path),
        "dataset": dataset.name, "dataset_fingerprint": fingerprint,
        "data_root": _root_text(dataset.root), "index_root": str(iroot.absolute()),
        "dataset_dir": str(ddir.absolute()), "protocol": plan.protocol,
        "backbones": [{**_backbone_facts(ddir, f), "store": state.get(f)} for f in folders],
        "methods": list(plan.cfg.methods), "ensembles": list(plan.cfg.ensembles),
        "reused_records": res.reused, "versions": outputs.package_versions(),
        "group_by": group_by, "target_accuracy": target_accuracy, "leakage_pairs": n_leak,
        "drop_suspects": drop_suspects,
        "elapsed_s": round(time.perf_counter() - t_start, 2),
    }
    files["run.json"] = out / "run.json"
    run["files"] = sorted(str(p.relative_to(out)) for p in files.values())
    write_json(out / "run.json", run)
    return BenchResult(out=out, tables=tables, retrieval=retrieval, files=files, run=run,
                       markdown=markdown)
