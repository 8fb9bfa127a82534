"""`clipindex audit` / `audit_store`: planted mislabels found, the files, the errors, and
`bench --drop-suspects`.

The shared ``demo_store`` (the small demo world, seed 0, 200 images, the three tiny
backbones) carries the world's planted wrong labels in its ``causes`` column, which the
audit never reads: it is the truth the ranking is measured against.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner
from fixtures_store import FAKE_BACKBONES

from clipindex.audit import ISSUE_COLUMNS, AuditSettings, audit_store
from clipindex.cli import main
from clipindex.errors import DataError, UserInputError

TINY = ("tiny-vit", "tiny-rn", "tiny-vit-s")


def _truth(ddir: Path) -> set[int]:
    images = pd.read_parquet(ddir / "images.parquet")
    return set(images["row_id"][images["causes"].map(lambda c: "mislabeled" in str(c))])


@pytest.fixture(scope="module")
def audited(demo_store: Path, tmp_path_factory: pytest.TempPathFactory):
    out = tmp_path_factory.mktemp("audit") / "audit"
    return audit_store(demo_store, list(TINY), out), out


def test_audit_finds_planted_mislabels_far_above_chance(demo_store: Path, audited) -> None:
    res, _ = audited
    truth = _truth(demo_store)
    n = len(res.issues)
    k = len(truth)
    assert n == 200 and k >= 3  # the small world plants a few wrong labels in 200 images
    hits = len(truth & set(res.issues["row_id"].head(k)))
    base_rate = k / n
    assert hits / k >= 0.6 > 5 * base_rate, (hits, k)
    top = res.issues.head(k)
    # a planted mislabel's suggestion is the drawn class: never the wrong given label
    found = top[top["row_id"].isin(truth)]
    assert (found["suggested"] != found["label"]).all()


def test_label_issues_columns_and_order(audited) -> None:
    res, out = audited
    frame = pd.read_csv(out / "label_issues.csv")
    assert tuple(frame.columns[:len(ISSUE_COLUMNS)]) == ISSUE_COLUMNS
    signals = [f"p_label_{kind}_{b}" for b in TINY for kind in ("image", "caption")]
    assert sorted(c for c in frame.columns if c.startswith("p_label_")) == sorted(signals)
    assert frame["rank"].tolist() == list(range(1, len(frame) + 1))
    score = frame["score"].to_numpy()
    assert (np.diff(score) <= 0).all()
    ties = frame[frame.duplicated("score", keep=False)]
    for _, g in ties.groupby("score"):
        assert g["row_id"].is_monotonic_increasing
    np.testing.assert_allclose(frame["score"], 1 - frame["p_label"], atol=2e-6)
    assert (frame["issue"] == (frame["label"] != frame["suggested"])).all()
    assert frame["votes_against"].between(0, frame["n_signals"]).all()
    assert frame["n_signals"].max() == 6
    for name in ("duplicates.csv", "outliers.csv", "audit.md", "audit.json"):
        assert (out / name).is_file(), name
    md = (out / "audit.md").read_text()
    assert "## Most likely mislabeled" in md and "## Outliers" in md


def test_no_image_is_scored_by_a_probe_that_saw_its_label(demo_store: Path) -> None:
    """Flipping one image's label cannot change that image's own out-of-fold probe."""
    from clipindex.audit.signals import fold_ids, out_of_fold_probe
    from clipindex.store import open_index

    bi = open_index(demo_store, "tiny-vit")
    labels = bi.images["label"].astype(str).to_numpy()
    classes = sorted(set(labels))
    x = np.asarray(bi.image_vectors)
    fold = fold_ids(labels, 5, 0)
    before = out_of_fold_probe(x, labels, classes, fold)
    flipped = labels.copy()
    flipped[7] = next(c for c in classes if c != labels[7])
    after = out_of_fold_probe(x, flipped, classes, fold)
    np.testing.assert_allclose(after[7], before[7])
    others = fold != fold[7]
    assert not np.allclose(after[others], before[others])


def test_cli_json_and_table(demo_store: Path, tmp_path: Path) -> None:
    runner = CliRunner()
    args = ["audit", "--index", str(demo_store), "--backbone", "tiny-vit", "--backbone",
            "tiny-rn", "--out", str(tmp_path / "a")]
    done = runner.invoke(main, [*args, "--json"])
    assert done.exit_code == 0, done.output
    doc = json.loads(done.stdout)
    assert doc["n_audited"] == 200 and doc["backbones"] == ["tiny-vit", "tiny-rn"]
    assert doc["signals"] == ["image_tiny-vit", "caption_tiny-vit", "image_tiny-rn",
                              "caption_tiny-rn"]
    assert [r["rank"] for r in doc["top"][:3]] == [1, 2, 3]
    assert doc["top"][0]["score"] >= doc["top"][1]["score"]
    text = runner.invoke(main, [*args, "--top", "3"])
    assert text.exit_code == 0 and "labelled images audited" in text.stdout
    assert len(text.stdout.splitlines()) == 1 + 1 + 3 + 1


@pytest.mark.parametrize("extra, needle", [
    (["--backbone", "ViT-B/31"], "ViT-B/31"),
    (["--backbone", "tiny-vit", "--folds", "1"], "--folds"),
])
def test_cli_bad_input_is_one_line(demo_store: Path, tmp_path: Path, extra: list[str],
                                   needle: str) -> None:
    done = CliRunner().invoke(main, ["audit", "--index", str(demo_store), "--out",
                                     str(tmp_path / "a"), *extra])
    assert done.exit_code == 2
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error:") and needle in lines[0]


def test_out_inside_a_store_is_refused_before_any_work(demo_store: Path) -> None:
    done = CliRunner().invoke(main, ["audit", "--index", str(demo_store), "--backbone",
                                     "tiny-vit", "--out", str(demo_store / "audit")])
    assert done.exit_code == 2 and "inside the store" in done.stderr
    assert not (demo_store / "audit").exists()


def test_store_without_two_labelled_classes_is_a_data_error(tmp_path: Path,
                                                            use_fake_encoders) -> None:
    from fixtures_store import dataset_from_files, write_images

    from clipindex.store import build_store

    ds = dataset_from_files(tmp_path / "img", write_images(tmp_path / "img", 6, ("cat",)))
    ddir = build_store(ds, [FAKE_BACKBONES[0]], out=tmp_path / "idx", workers=0,
                       progress=False)[0].parent
    with pytest.raises(DataError, match="at least two classes"):
        audit_store(ddir, [FAKE_BACKBONES[0]])
    done = CliRunner().invoke(main, ["audit", "--index", str(ddir), "--backbone",
                                     FAKE_BACKBONES[0], "--out", str(tmp_path / "o")])
    assert done.exit_code == 2 and done.stderr.count("\n") == 1


def test_settings_are_checked() -> None:
    with pytest.raises(UserInputError, match="folds"):
        AuditSettings(folds=1).check()
    with pytest.raises(UserInputError, match="listed twice"):
        audit_store("nowhere", ["tiny-vit", "tiny-vit"])


def test_conflicting_duplicates_pool_their_evidence(tmp_path: Path, use_fake_encoders) -> None:
    """An exact copy of a dog image labelled cat, in the other split: one conflict group;
    the copy (wrong label) is the top suspect, the original is not flagged."""
    import shutil

    from fixtures_store import dataset_from_files, write_images

    from clipindex.store import build_store

    root = tmp_path / "img"
    rel = write_images(root, 12, ("cat", "dog"))
    shutil.copy(root / "dog" / "003.jpg", root / "cat" / "copy.jpg")
    ds = dataset_from_files(root, [*rel, "cat/copy.jpg"])
    ds.images.loc[ds.images["file"] == "cat/copy.jpg", "split"] = "support"
    ds.images.loc[ds.images["file"] == "dog/003.jpg", "split"] = "test"
    ddir = build_store(ds, list(FAKE_BACKBONES), out=tmp_path / "idx", workers=0,
                       progress=False)[0].parent
    res = audit_store(ddir, list(FAKE_BACKBONES), tmp_path / "out",
                      settings=AuditSettings(captions=False))
    d = res.duplicates
    assert sorted(d["file"]) == ["cat/copy.jpg", "dog/003.jpg"]
    assert d["cross_split"].all() and d["group"].nunique() == 1
    assert (d["suggested"] == "dog").all()
    top = res.issues.iloc[0]
    assert top["file"] == "cat/copy.jpg" and top["suggested"] == "dog" and top["dup_group"] == 1
    original = res.issues[res.issues["file"] == "dog/003.jpg"].iloc[0]
    assert not original["issue"]


# ----------------------------------------------------------------------------- bench
def test_bench_drop_suspects_changes_the_evaluated_rows_as_stated(
        demo_store: Path, demo_world: Path, audited, tmp_path: Path) -> None:
    from fixtures_store import DEMO_PER_CLASS, DEMO_SUPPORT

    from clipindex.bench import run_bench
    from clipindex.demo import demo_config

    res_audit, out = audited
    cfg = demo_config(demo_world, scale="small", backbones=("tiny-vit",))
    cfg = dataclasses.replace(
        cfg, methods=("prompt",), ensembles=(),
        dataset=dataclasses.replace(cfg.dataset, per_class=DEMO_PER_CLASS,
                                    support_per_class=DEMO_SUPPORT))
    n = 10
    res = run_bench(cfg, tmp_path / "r", index_root=demo_store.parent, workers=0,
                    progress=False, drop_suspects=n, audit=out)
    table = pd.read_csv(res.files["suspects.csv"])
    pred = pd.read_parquet(tmp_path / "r" / "predictions" / "tiny-vit__prompt.parquet")
    drop = set(res_audit.issues["row_id"].head(n))
    kept = pred[~pred["row_id"].isin(drop)]
    row = table.iloc[0]
    assert row["n"] == len(pred) and row["n_dropped"] == len(pred) - len(kept) > 0
    assert row["n_kept"] == len(kept)
    assert row["accuracy_kept"] == pytest.approx((kept["true"] == kept["predicted"]).mean(),
                                                 abs=1e-4)
    assert row["accuracy_kept"] > row["accuracy"]  # the dropped rows were mostly wrong labels
    assert "Without the audit's top 10 suspects" in res.markdown
    assert res.run["drop_suspects"] == n


def test_bench_refuses_an_audit_of_another_store(demo_store: Path, demo_world: Path,
                                                 tmp_path: Path) -> None:
    from fixtures_store import DEMO_PER_CLASS, DEMO_SUPPORT

    from clipindex.bench import run_bench
    from clipindex.demo import demo_config

    bad = tmp_path / "label_issues.csv"
    pd.DataFrame({"row_id": [0], "file": ["elsewhere.jpg"], "score": [0.9]}).to_csv(bad)
    cfg = demo_config(demo_world, scale="small", backbones=("tiny-vit",))
    cfg = dataclasses.replace(
        cfg, methods=("prompt",), ensembles=(),
        dataset=dataclasses.replace(cfg.dataset, per_class=DEMO_PER_CLASS,
                                    support_per_class=DEMO_SUPPORT))
    with pytest.raises(DataError, match="another store"):
        run_bench(cfg, tmp_path / "r", index_root=demo_store.parent, workers=0,
                  progress=False, drop_suspects=3, audit=bad)
    with pytest.raises(UserInputError, match="positive integer"):
        run_bench(cfg, tmp_path / "r2", index_root=demo_store.parent, drop_suspects=0)
