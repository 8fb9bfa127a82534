"""`clipindex bench` / `run_bench` / `clipindex demo` on the small demo world.

The mechanics run with the stand-in encoders of fixtures_store (no weights): three
session-scoped runs on the small world (``run_demo`` through the Python API, the same
config through ``clipindex bench`` with its own stores, and ``--protocol study``).
The tiny backbones' demo (real models) runs once their weights ship.
"""

from __future__ import annotations

import dataclasses
import json
import shlex
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from click.testing import CliRunner
from fixtures_store import FAKE_BACKBONES, install_fakes

from clipindex.bench import (
    ENSEMBLE_PREFIX,
    TABLE_COLUMNS,
    TIMING_COLUMNS,
    load_bench_config,
    run_bench,
    validate_bench,
)
from clipindex.bench.outputs import retrieval_table
from clipindex.classifiers import majority_vote, soft_vote
from clipindex.cli import main
from clipindex.config import load_dataset_config
from clipindex.demo import DEMO_METHODS, demo_config, run_demo
from clipindex.errors import UserInputError

REPO = Path(__file__).resolve().parents[1]
CLASSES = ["cat", "dog", "cow", "sheep", "horse"]
ENSEMBLES = ("majority", "soft")
MODELS = [*FAKE_BACKBONES, *(f"{ENSEMBLE_PREFIX}{e}" for e in ENSEMBLES)]


def _yaml_config(path: Path, world: Path, **changes: object) -> Path:
    """The demo config for the stand-in backbones as a bench YAML (dataset inline)."""
    cfg = demo_config(world, scale="small", backbones=FAKE_BACKBONES).to_dict()
    cfg.update(changes)
    path.write_text(yaml.safe_dump(cfg), encoding="utf-8")
    return path


@pytest.fixture(scope="session")
def runs(small_world: Path, tmp_path_factory: pytest.TempPathFactory) -> dict:
    """Three bench runs with stand-in encoders (patched only while they run)."""
    import torch

    torch.set_num_threads(2)
    tmp = tmp_path_factory.mktemp("bench")
    runner = CliRunner()
    with pytest.MonkeyPatch.context() as mp:
        install_fakes(mp)
        demo = run_demo(tmp / "demo", world=small_world, scale="small",
                        backbones=FAKE_BACKBONES, workers=0, progress=False)
        config = _yaml_config(tmp / "fake.yaml", small_world)
        second = runner.invoke(main, ["bench", str(config), "--out", str(tmp / "second"),
                                      "--workers", "0", "--no-progress"])
        # the study protocol needs only zero-shot and few-shot: a smaller, faster config
        small = _yaml_config(tmp / "study.yaml", small_world, methods=["prompt", "prototype"],
                             retrieval=False)
        study = runner.invoke(main, ["bench", str(small), "--out", str(tmp / "study"),
                                     "--index-root", str(tmp / "demo" / "indexes"),
                                     "--protocol", "study", "--no-progress"])
    assert second.exit_code == 0, second.output
    assert study.exit_code == 0, study.output
    return {"demo": demo, "first": demo.bench.out, "second": tmp / "second",
            "study": tmp / "study", "config": config, "second_output": second.output,
            "indexes": tmp / "demo" / "indexes"}


def _preds(out: Path, model: str, method: str) -> pd.DataFrame:
    return pd.read_parquet(out / "predictions" / f"{model}__{method}.parquet")


def test_demo_bench_writes_every_file(runs: dict) -> None:
    out = runs["first"]
    expected = {"tables.csv", "tables.md", "retrieval.csv", "confusion_zero_shot.png",
                "confusion_few_shot.png", "errors.csv", "errors.md", "run.json",
                "coverage.csv", "leakage.csv"}
    for model in MODELS:
        for method in DEMO_METHODS:
            expected |= {f"records/{model}__{method}.json",
                         f"predictions/{model}__{method}.parquet"}
    run = json.loads((out / "run.json").read_text())
    assert set(run["files"]) == expected
    assert all((out / f).is_file() and (out / f).stat().st_size > 0 for f in expected)
    assert {b["backbone"] for b in run["backbones"]} == set(FAKE_BACKBONES)
    assert all(b["store"] == "built" for b in run["backbones"])
    assert run["index_root"] == str((out.parent / "indexes").absolute())
    assert run["versions"]["torch"] and run["protocol"] == "same-rows"
    tables = pd.read_csv(out / "tables.csv")
    assert tables.columns.tolist() == list(TABLE_COLUMNS)
    assert len(tables) == len(MODELS) * len(DEMO_METHODS)
    assert set(zip(tables["backbone"], tables["method"], strict=True)) == {
        (m, meth) for m in MODELS for meth in DEMO_METHODS}
    assert runs["demo"].made_world is False and runs["demo"].world_scale == "small"


def test_records_hold_metrics_params_and_timings(runs: dict) -> None:
    out = runs["first"]
    manifest = json.loads((runs["indexes"] / "demo" / "fake-a" / "manifest.json").read_text())
    for method in DEMO_METHODS:
        rec = json.loads((out / "records" / f"fake-a__{method}.json").read_text())
        preds = _preds(out, "fake-a", method)
        assert rec["n"] == len(preds) == 160  # the small world's test rows
        assert rec["accuracy"] == pytest.approx((preds["true"] == preds["predicted"]).mean(),
                                                abs=1e-6)
        assert set(rec["per_class_recall"]) == set(CLASSES)
        cat = preds[preds["true"] == "cat"]
        assert rec["per_class_recall"]["cat"] == pytest.approx(
            (cat["predicted"] == "cat").mean(), abs=1e-6)
        assert rec["params"] == manifest["params"]
        assert rec["encode_s"] == pytest.approx(manifest["timings"]["image_encode_seconds"],
                                                abs=1e-3)
        assert rec["images_per_s"] == pytest.approx(manifest["timings"]["images_per_s"], abs=0.1)
        assert rec["classify_ms"] > 0 and rec["settings"]["method"] == method
    ens = json.loads((out / "records" / "ensemble-majority__prompt.json").read_text())
    assert ens["members"] == list(FAKE_BACKBONES)
    assert ens["params"] == 3 * manifest["params"]


def test_two_runs_give_identical_tables_apart_from_timing(runs: dict) -> None:
    a = pd.read_csv(runs["first"] / "tables.csv").drop(columns=list(TIMING_COLUMNS))
    b = pd.read_csv(runs["second"] / "tables.csv").drop(columns=list(TIMING_COLUMNS))
    assert a.to_csv(index=False) == b.to_csv(index=False)
    for model in MODELS:
        for method in DEMO_METHODS:
            pd.testing.assert_frame_equal(_preds(runs["first"], model, method),
                                          _preds(runs["second"], model, method))
    ra = pd.read_csv(runs["first"] / "retrieval.csv")
    rb = pd.read_csv(runs["second"] / "retrieval.csv")
    pd.testing.assert_frame_equal(ra, rb)


def test_ensemble_rows_equal_a_vote_recomputed_from_predictions(runs: dict) -> None:
    out = runs["first"]
    tables = pd.read_csv(out / "tables.csv").set_index(["backbone", "method"])
    pcols = [f"p_{c}" for c in CLASSES]
    for method in DEMO_METHODS:
        singles = [_preds(out, b, method).set_index("row_id") for b in FAKE_BACKBONES]
        rows = singles[0].index
        probas = [s.loc[rows, pcols].to_numpy() for s in singles]
        true = singles[0]["true"].to_numpy()
        votes = {"majority": majority_vote(probas, CLASSES).astype(str),
                 "soft": np.asarray(CLASSES)[soft_vote(probas, CLASSES).argmax(axis=1)]}
        for kind, vote in votes.items():
            ens = _preds(out, f"{ENSEMBLE_PREFIX}{kind}", method).set_index("row_id")
            assert ens.index.equals(rows)
            assert (ens["predicted"].to_numpy() == vote).all(), (kind, method)
            acc = tables.loc[(f"{ENSEMBLE_PREFIX}{kind}", method), "accuracy"]
            assert acc == pytest.approx(np.mean(vote == true), abs=1e-6)
    # the vote is not a copy of one backbone: it disagrees with each somewhere
    maj = _preds(out, "ensemble-majority", "prompt")["predicted"].to_numpy()
    assert all((_preds(out, b, "prompt")["predicted"].to_numpy() != maj).any()
               for b in FAKE_BACKBONES)


def test_study_protocol_runs_zero_shot_on_all_sampled_rows(runs: dict) -> None:
    study, same = runs["study"], runs["first"]
    images = pd.read_parquet(runs["indexes"] / "demo" / "images.parquet")
    tables = pd.read_csv(study / "tables.csv").set_index(["backbone", "method"])
    for model in MODELS:
        assert tables.loc[(model, "prompt"), "n"] == len(images) == 210
        assert tables.loc[(model, "prototype"), "n"] == (images["split"] == "test").sum()
    zs = _preds(study, "fake-b", "prompt").set_index("row_id")
    assert set(zs.index) == set(images["row_id"])
    # on the test rows the study's zero-shot is exactly the same-rows zero-shot
    ref = _preds(same, "fake-b", "prompt").set_index("row_id")
    pd.testing.assert_frame_equal(zs.loc[ref.index], ref)
    run = json.loads((study / "run.json").read_text())
    assert run["protocol"] == "study" and all(b["store"] == "reused" for b in run["backbones"])
    rec = json.loads((study / "records" / "fake-b__prompt.json").read_text())
    assert rec["settings"]["rows"] == "all" and rec["n_support"] == 0


def test_cli_prints_the_tables_and_where_files_are(runs: dict) -> None:
    text = runs["second_output"]
    assert "## Zero-shot" in text and "## Few-shot" in text
    assert f"results in {runs['second']}" in text
    assert (runs["second"] / "dataset.yaml").is_file()  # the inline dataset, as used


def test_tables_md_has_the_studys_shape(runs: dict) -> None:
    md = (runs["first"] / "tables.md").read_text()
    zero = md.split("## Zero-shot")[1].split("## Few-shot")[0]
    rows = [line for line in zero.splitlines() if line.startswith("| ") and "Model" not in line]
    assert len(rows) == len(MODELS)
    accs = [float(r.split("|")[2]) for r in rows]
    assert accs == sorted(accs, reverse=True)
    assert "**Ensemble (majority vote)**" in zero and "**Ensemble (soft vote)**" in zero
    few = md.split("## Few-shot")[1].split("##")[0]
    assert "50 support images (10 per class)" in few and "**Ensemble (majority vote)**" in few
    assert "## Other methods" in md and "| linear-probe |" in md.replace(" mlp |", "")
    assert "T→I R@1" in md and "I→T R@10" in md and "ANY of their captions" in md


def _brute_recall(img: np.ndarray, cap: np.ndarray, owner: np.ndarray, k: int) -> tuple:
    t2i = []
    for c in range(len(cap)):
        order = sorted(range(len(img)), key=lambda j: (-float(cap[c] @ img[j]), j))
        t2i.append(owner[c] in order[:k])
    i2t = []
    for j in range(len(img)):
        order = sorted(range(len(cap)), key=lambda c: (-float(img[j] @ cap[c]), c))
        i2t.append(any(owner[c] == j for c in order[:k]))
    return float(np.mean(t2i)), float(np.mean(i2t))


def test_retrieval_equals_a_brute_force_reference(runs: dict) -> None:
    from clipindex.store import open_index

    ddir = runs["indexes"] / "demo"
    chunked = retrieval_table(ddir, ["fake-c"], ks=(1, 5, 10), chunk=7)
    whole = pd.read_csv(runs["first"] / "retrieval.csv").set_index("backbone").loc["fake-c"]
    bi = open_index(ddir, "fake-c")
    img, cap = bi.image_vectors.astype(np.float64), bi.caption_vectors.astype(np.float64)
    owner = bi.captions["image_row_id"].to_numpy()
    assert np.bincount(owner).min() == 5  # five captions per image
    for k in (1, 5, 10):
        t2i, i2t = _brute_recall(img, cap, owner, k)
        assert chunked.loc[0, f"t2i_R@{k}"] == pytest.approx(t2i, abs=1e-6)
        assert chunked.loc[0, f"i2t_R@{k}"] == pytest.approx(i2t, abs=1e-6)
        assert whole[f"t2i_R@{k}"] == pytest.approx(t2i, abs=1e-6)
    assert chunked.loc[0, "captions"] == 1050 and chunked.loc[0, "images"] == 210


def test_errors_list_every_wrong_prediction_with_causes(runs: dict) -> None:
    out = runs["first"]
    errors = pd.read_csv(out / "errors.csv", keep_default_na=False)
    wrong = 0
    for model in MODELS:
        for method in DEMO_METHODS:
            p = _preds(out, model, method)
            wrong += int((p["true"] != p["predicted"]).sum())
    assert len(errors) == wrong > 0
    assert {"backbone", "method", "file", "true", "predicted", "p_true", "p_predicted",
            "causes", "area_frac", *[f"p_{c}" for c in CLASSES]} <= set(errors.columns)
    assert (errors["true"] != errors["predicted"]).all()
    assert (errors["p_predicted"] >= errors["p_true"] - 1e-9).all()
    md = (out / "errors.md").read_text()
    first = md.split("- ", 1)[1].splitlines()[0]
    true, _, rest = first.partition(" → ")
    pred, _, count = rest.partition(": ")
    single = errors[(errors["method"] == "prompt") & errors["backbone"].isin(FAKE_BACKBONES)]
    pairs = single.groupby(["true", "predicted"]).size()
    assert int(count) == pairs.max() == pairs[(true, pred)]
    assert "## Error rate by cause" in md and "| tiny |" in md and "| (none) |" in md
    assert "## Error rate by subject size" in md and "| < 2% |" in md


def test_confusion_pngs_open_and_show_the_ensembles(runs: dict) -> None:
    from PIL import Image

    for name in ("confusion_zero_shot.png", "confusion_few_shot.png"):
        with Image.open(runs["first"] / name) as im:
            rgb = np.asarray(im.convert("RGB")).astype(int)
        assert rgb.shape[0] > 400 and rgb.shape[1] > 800
        r, g, b = rgb[..., 0], rgb[..., 1], rgb[..., 2]
        assert len(np.unique(r * 65536 + g * 256 + b)) > 100
        assert ((b > r + 60) & (b > g)).sum() > 1000  # the backbones' blue panels
        assert ((r > b + 80) & (g > b) & (r > g)).sum() > 1000  # the majority vote in orange
        assert ((g > r + 40) & (g > b + 20)).sum() > 1000  # the soft vote in green


def test_skip_existing_reuses_matching_records_only(runs: dict, tmp_path: Path,
                                                    use_fake_encoders) -> None:
    out = tmp_path / "again"
    shutil.copytree(runs["first"], out)
    cfg = demo_config(runs["demo"].world, scale="small", backbones=FAKE_BACKBONES)
    cfg = dataclasses.replace(cfg, retrieval=False)
    res = run_bench(cfg, out, index_root=runs["indexes"], skip_existing=True, progress=False)
    assert len(res.run["reused_records"]) == len(FAKE_BACKBONES) * len(DEMO_METHODS)
    before = json.loads((runs["first"] / "records" / "fake-a__mlp.json").read_text())
    after = json.loads((out / "records" / "fake-a__mlp.json").read_text())
    assert before == after  # timings included: nothing was re-run
    res = run_bench(dataclasses.replace(cfg, k=3), out, index_root=runs["indexes"],
                    skip_existing=True, progress=False)
    redone = {k.split("__")[1] for k in set(res.tables["backbone"] + "__" + res.tables["method"])
              if k.split("__")[0] in FAKE_BACKBONES} - {
        k.split("__")[1] for k in res.run["reused_records"]}
    assert {"caption-knn", "image-knn"} <= redone


def test_store_of_another_dataset_version_is_rebuilt(runs: dict, tmp_path: Path,
                                                     use_fake_encoders) -> None:
    idx = tmp_path / "indexes"
    shutil.copytree(runs["indexes"], idx)
    cfg = demo_config(runs["demo"].world, scale="small", backbones=FAKE_BACKBONES[:2])
    cfg = dataclasses.replace(cfg, methods=("prompt",), ensembles=(), retrieval=False,
                              dataset_overrides={"per_class": 20})
    res = run_bench(cfg, tmp_path / "r", index_root=idx, progress=False)
    assert [b["store"] for b in res.run["backbones"]] == ["built", "built"]
    fp = json.loads((idx / "demo" / "dataset.json").read_text())["fingerprint"]
    manifest = json.loads((idx / "demo" / "fake-a" / "manifest.json").read_text())
    assert manifest["dataset_fingerprint"] == fp == res.run["dataset_fingerprint"]
    assert res.tables["n"].tolist() == [50, 50]  # 5 classes x (20 - 10 support)
    again = run_bench(cfg, tmp_path / "r2", index_root=idx, progress=False)
    assert [b["store"] for b in again.run["backbones"]] == ["reused", "reused"]


@pytest.mark.parametrize(("field", "value", "message"), [
    ("backbones", ["fake-a", "ViT-B/31"], "Unknown backbone 'ViT-B/31'. Known: fake-a"),
    ("methods", ["prompt", "zero-shot"], "Unknown method 'zero-shot'. Known: prompt, "),
    ("ensembles", ["majority", "median"], "Unknown ensemble 'median'. Known: majority"),
    ("templates", "openai", "Unknown template set 'openai'"),
])
def test_unknown_names_fail_before_any_work(field: str, value: object, message: str,
                                            small_world: Path, tmp_path: Path,
                                            use_fake_encoders) -> None:
    config = _yaml_config(tmp_path / "bad.yaml", small_world, **{field: value})
    out = tmp_path / "results"
    res = CliRunner().invoke(main, ["bench", str(config), "--out", str(out),
                                    "--index-root", str(tmp_path / "idx")])
    assert res.exit_code == 2
    lines = res.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"Error: {message}")
    assert not out.exists() and not (tmp_path / "idx").exists()
    assert use_fake_encoders.encoded_images == 0


def test_real_registry_names_the_known_backbones(tmp_path: Path) -> None:
    cfg = tmp_path / "b.yaml"
    cfg.write_text(yaml.safe_dump({"dataset": str(REPO / "clipindex/configs/datasets/demo.yaml"),
                                   "backbones": ["RN50", "ViT-B/31"], "methods": ["prompt"]}))
    with pytest.raises(UserInputError, match=r"Unknown backbone 'ViT-B/31'.*RN50"):
        validate_bench(cfg)
    res = CliRunner().invoke(main, ["bench", str(cfg), "--out", str(tmp_path / "o"),
                                    "--protocol", "rows"])
    assert res.exit_code == 2 and "rows" in res.output and not (tmp_path / "o").exists()


def test_shipped_bench_configs_load_and_match_the_demo() -> None:
    study = validate_bench(REPO / "clipindex/configs/bench/study.yaml")
    assert [s.display for s in study.specs] == ["RN50", "RN50x4", "RN50x16", "ViT-B/32",
                                                "ViT-B/16", "ViT-L/14", "ViT-L/14@336px"]
    assert study.cfg.methods == ("prompt", "prototype")
    assert study.cfg.ensembles == ("majority",)
    coco = REPO / "clipindex/configs/datasets/coco-animals.yaml"
    assert study.dataset_cfg == load_dataset_config(coco)
    demo = load_bench_config(REPO / "clipindex/configs/bench/demo.yaml")
    code = demo_config("worlds/demo")
    for field in ("backbones", "methods", "ensembles", "k", "seed", "shots", "recall_ks"):
        assert getattr(demo, field) == getattr(code, field), field
    assert load_dataset_config(demo.dataset) == code.dataset  # same data, same sample


def test_demo_with_the_tiny_backbones(small_world: Path, tmp_path: Path) -> None:
    """`clipindex demo` end to end with the shipped tiny backbones (real models)."""
    res = CliRunner().invoke(main, ["demo", "--out", str(tmp_path), "--world",
                                    str(small_world), "--scale", "small", "--workers", "0",
                                    "--no-progress"])
    assert res.exit_code == 0, res.output
    tables = pd.read_csv(tmp_path / "results" / "tables.csv").set_index(["backbone", "method"])
    assert len(tables) == 5 * len(DEMO_METHODS)
    # trained tiny backbones are well above chance (0.2) on the demo world
    assert tables.loc[("ensemble-majority", "prototype"), "accuracy"] > 0.4
    assert "demo finished in" in res.output
    # it ends with the next commands, on this run's real store path, which do run
    store = tmp_path / "indexes" / "demo"
    nxt = res.stdout[res.stdout.index("next:"):].splitlines()[1:]
    assert nxt[0].strip() == f"clipindex info {store}"
    info = CliRunner().invoke(main, shlex.split(nxt[0])[1:])
    assert info.exit_code == 0, info.output
    classify = CliRunner().invoke(main, shlex.split(nxt[1])[1:] + ["--json"])
    assert classify.exit_code == 0, classify.output
    # --json: the whole of stdout is one document, the same tables as tables.csv
    again = CliRunner().invoke(main, ["demo", "--out", str(tmp_path), "--world",
                                      str(small_world), "--scale", "small", "--workers",
                                      "0", "--no-progress", "--skip-existing", "--json"])
    assert again.exit_code == 0, again.output
    doc = json.loads(again.stdout)
    assert {"world", "made_world", "world_scale", "seconds", "report", "bench"} <= set(doc)
    assert doc["world"] == str(small_world) and doc["made_world"] is False
    assert Path(doc["report"]).is_file() and doc["bench"]["out"] == str(tmp_path / "results")
    got = {(r["backbone"], r["method"]): r["accuracy"] for r in doc["bench"]["tables"]}
    assert got == pytest.approx(tables["accuracy"].to_dict())


def test_data_the_methods_need_is_checked_before_encoding(small_world: Path, tmp_path: Path,
                                                          use_fake_encoders) -> None:
    cfg = demo_config(small_world, scale="small", backbones=FAKE_BACKBONES)
    cfg = dataclasses.replace(cfg, dataset_overrides={"support_per_class": 0})
    with pytest.raises(UserInputError, match="no support rows for prototype"):
        run_bench(cfg, tmp_path / "r", progress=False)
    assert not (tmp_path / "r" / "indexes").exists()
    assert use_fake_encoders.encoded_images == 0
    # zero-shot alone needs no support rows
    zs = dataclasses.replace(cfg, methods=("prompt",), ensembles=(), backbones=("fake-a",),
                             retrieval=False)
    res = run_bench(zs, tmp_path / "zs", progress=False)
    assert res.tables["n"].tolist() == [210]


def test_demo_without_tiny_weights_fails_before_making_the_world(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from clipindex import tiny

    monkeypatch.setattr(tiny, "checkpoint_dir", lambda name: tmp_path / "empty" / name)
    res = CliRunner().invoke(main, ["demo", "--out", str(tmp_path / "out"), "--scale",
                                    "small", "--no-progress"])
    assert res.exit_code == 2
    assert res.output.startswith("Error: tiny backbone 'tiny-vit' has no weights")
    assert len(res.output.strip().splitlines()) == 1
    assert not (tmp_path / "out").exists()
