"""Issue 19: abstention coverage and the uncertain band, per-group accuracy, on the
demo store built with the shipped tiny backbones (``fixtures_store.demo_store``)."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner

from clipindex import tiny
from clipindex.classifiers.abstain import (
    DEFAULT_THRESHOLDS,
    confidence_of,
    parse_band,
    risk_coverage,
    threshold_for_accuracy,
    uncertain_band,
)
from clipindex.classifiers.groups import group_table
from clipindex.classifiers.runner import classify
from clipindex.cli import main
from clipindex.errors import UserInputError

BACKBONES = list(tiny.TINY_BACKBONES)


# ----------------------------------------------------------------------------- abstention
def test_risk_coverage_by_hand() -> None:
    conf = np.array([0.95, 0.9, 0.55, 0.4])
    curve = risk_coverage(["a", "b", "a", "b"], ["a", "b", "b", "b"], conf,
                          thresholds=[0.0, 0.5, 0.6, 0.99])
    assert curve["coverage"].tolist() == [1.0, 0.75, 0.5, 0.0]
    assert curve["n_kept"].tolist() == [4, 3, 2, 0]
    np.testing.assert_allclose(curve["accuracy"][:3], [0.75, 2 / 3, 1.0])
    assert np.isnan(curve["accuracy"][3])
    assert threshold_for_accuracy(curve, 0.99)["threshold"] == 0.6
    assert threshold_for_accuracy(curve, 0.8)["threshold"] == 0.6  # 0.75, 2/3 < 0.8
    assert threshold_for_accuracy(curve, 0.7)["threshold"] == 0.0
    assert threshold_for_accuracy(risk_coverage(["a"], ["b"], np.array([1.0])), 0.5) is None


def test_uncertain_band_is_two_sided_on_the_positive_class() -> None:
    p = np.array([[0.9, 0.1], [0.65, 0.35], [0.5, 0.5], [0.25, 0.75], [0.05, 0.95]])
    assert uncertain_band(p, 0.3, 0.7).tolist() == [False, True, True, False, False]
    assert uncertain_band(p, 0.3, 0.8, positive=0).tolist() == [False, True, True, False,
                                                                  False]
    with pytest.raises(UserInputError, match="two classes"):
        uncertain_band(np.full((2, 3), 1 / 3), 0.3, 0.7)
    for bad in ("0.7,0.3", "0.1", "a,b", "-0.1,0.5"):
        with pytest.raises(UserInputError, match="uncertain band"):
            parse_band(bad)


@pytest.mark.parametrize("backbone", BACKBONES)
def test_coverage_curve_of_the_prompt_method_on_the_demo(demo_store: Path, backbone: str
                                                         ) -> None:
    """At threshold 0 coverage is 1 and accuracy the plain accuracy. Kept-row accuracy is
    NOT non-decreasing at every 0.01 step on 175 test rows, and cannot be: when a step
    drops a low-confidence row that was right, the kept accuracy falls (measured: 1 to 10
    such small drops per curve on this store). It rises along coarse steps of coverage
    (all rows, then the 80%, 60% and 40% most confident), which is what is asserted."""
    res = classify(demo_store, backbone, "prompt")
    t = res.predictions
    curve = risk_coverage(t["true"], t["predicted"], confidence_of(t))
    assert curve["threshold"].tolist() == list(DEFAULT_THRESHOLDS)
    first = curve.iloc[0]
    assert first["coverage"] == 1.0 and first["accuracy"] == pytest.approx(
        res.metrics["accuracy"])
    assert curve["coverage"].is_monotonic_decreasing
    conf = np.sort(confidence_of(t))[::-1]
    right = (t["true"] == t["predicted"]).to_numpy()[np.argsort(-confidence_of(t),
                                                                kind="stable")]
    coarse = [right[:int(len(conf) * share)].mean() for share in (1.0, 0.8, 0.6, 0.4)]
    assert all(a <= b for a, b in zip(coarse, coarse[1:], strict=False)), coarse
    assert coarse[-1] > coarse[0] + 0.05
    # the band and --reject-below agree with the curve: P keeps exactly conf >= P
    p = 0.6
    kept = ~classify(demo_store, backbone, "prompt", reject_below=p).predictions["uncertain"]
    row = curve[np.isclose(curve["threshold"], p)].iloc[0]
    assert kept.mean() == pytest.approx(row["coverage"])


def test_classify_uncertain_band_on_two_demo_classes(demo_store: Path) -> None:
    res = classify(demo_store, "tiny-rn", "prompt", classes="cow,sheep",
                   uncertain_band="0.2,0.8")
    t = res.predictions
    expected = t["p_sheep"].between(0.2, 0.8).to_numpy()
    assert t["uncertain"].tolist() == expected.tolist() and expected.any()
    assert res.metrics["coverage"] == pytest.approx(1 - expected.mean())
    assert res.metrics["positive_class"] == "sheep"
    out = CliRunner().invoke(main, ["classify", "--index", str(demo_store), "--backbone",
                                    "tiny-rn", "--method", "prompt", "--uncertain-band",
                                    "0.2,0.8", "--json"])
    assert out.exit_code == 2 and out.output.startswith("Error: the uncertain band is for two")
    assert len(out.output.strip().splitlines()) == 1


# ----------------------------------------------------------------------------- groups
def test_context_tag_is_a_column(demo_store: Path, small_world: Path) -> None:
    images = pd.read_parquet(demo_store / "images.parquet")
    sidecar = json.loads((small_world / "annotations" / "causes_val.json").read_text())
    expected = [sidecar["images"][str(i)]["context"] for i in images["coco_id"]]
    assert images["context"].tolist() == expected
    assert set(expected) <= {"field", "road", "indoor", "beach", "snow"}


@pytest.mark.parametrize("backbone", BACKBONES)
def test_group_accuracy_recomputed_and_off_context_lower(demo_store: Path, backbone: str
                                                         ) -> None:
    res = classify(demo_store, backbone, "prompt", group_by="causes")
    groups = pd.DataFrame(res.metrics["groups"]).set_index("group")
    images = pd.read_parquet(demo_store / "images.parquet").set_index("row_id")
    t = res.predictions
    cause = images.loc[t["row_id"], "causes"].replace("", "(none)").to_numpy()
    right = (t["true"] == t["predicted"]).to_numpy()
    for g, row in groups.iterrows():
        assert row["n"] == (cause == g).sum()
        assert row["accuracy"] == pytest.approx(right[cause == g].mean())
    acc = groups["accuracy"]
    assert groups["gap"].iloc[0] == pytest.approx(acc.max() - acc.min())
    assert groups["bias"].iloc[0] == pytest.approx(np.mean(np.abs(acc - right.mean())))
    # the off-context animals (cows on roads, ...) score lower than the clean, in-context
    assert acc["off_context"] < acc["(none)"] - 0.3, acc.to_dict()


def test_unknown_group_column_is_one_line(demo_store: Path) -> None:
    out = CliRunner().invoke(main, ["classify", "--index", str(demo_store), "--backbone",
                                    "tiny-vit", "--method", "prompt", "--group-by", "nope"])
    assert out.exit_code == 2 and out.output.startswith("Error: no column 'nope'")
    assert len(out.output.strip().splitlines()) == 1


def test_group_table_by_hand() -> None:
    preds = pd.DataFrame({"row_id": [0, 1, 2, 3, 4], "true": list("aaabb"),
                          "predicted": list("abbbb")})
    images = pd.DataFrame({"row_id": [4, 3, 2, 1, 0], "g": ["x", "y", None, "y", "x"]})
    t = group_table(preds, images, "g").set_index("group")
    assert t["n"].to_dict() == {"(missing)": 1, "x": 2, "y": 2}
    assert t["accuracy"].to_dict() == {"(missing)": 0.0, "x": 1.0, "y": 0.5}
    assert t["gap"].iloc[0] == 1.0
    assert t["bias"].iloc[0] == pytest.approx((0.6 + 0.4 + 0.1) / 3)


# ----------------------------------------------------------------------------- bench
@pytest.fixture(scope="module")
def bench_out(demo_store: Path, small_world: Path, tmp_path_factory) -> Path:
    """The demo bench (prompt + prototype, majority vote) on the demo store, grouped by
    context, through the CLI."""
    import yaml
    from fixtures_store import DEMO_PER_CLASS, DEMO_SUPPORT

    from clipindex.demo import demo_config

    cfg = demo_config(small_world, scale="small")
    cfg = dataclasses.replace(
        cfg, dataset=dataclasses.replace(cfg.dataset, per_class=DEMO_PER_CLASS,
                                         support_per_class=DEMO_SUPPORT),
        methods=("prompt", "prototype"), ensembles=("majority",), retrieval=False)
    tmp = tmp_path_factory.mktemp("study-bench")
    path = tmp / "bench.yaml"
    path.write_text(yaml.safe_dump(cfg.to_dict()), encoding="utf-8")
    out = tmp / "results"
    res = CliRunner().invoke(main, ["bench", str(path), "--out", str(out), "--index-root",
                                    str(demo_store.parent), "--group-by", "context",
                                    "--no-progress"])
    assert res.exit_code == 0, res.output
    return out


def test_bench_writes_coverage_and_groups(bench_out: Path) -> None:
    cov = pd.read_csv(bench_out / "coverage.csv")
    models = BACKBONES + ["ensemble-majority"]
    assert set(zip(cov["backbone"], cov["method"], strict=True)) == {
        (b, m) for b in models for m in ("prompt", "prototype")}
    groups = pd.read_csv(bench_out / "groups.csv")
    images = pd.read_parquet(Path(json.loads((bench_out / "run.json").read_text())
                                  ["dataset_dir"]) / "images.parquet").set_index("row_id")
    for (b, m), g in groups.groupby(["backbone", "method"]):
        preds = pd.read_parquet(bench_out / "predictions" / f"{b}__{m}.parquet")
        ctx = images.loc[preds["row_id"], "context"].to_numpy()
        right = (preds["true"] == preds["predicted"]).to_numpy()
        for r in g.itertuples():
            assert r.n == (ctx == r.group).sum()
            assert r.accuracy == pytest.approx(right[ctx == r.group].mean(), abs=1e-6)
        curve = cov[(cov["backbone"] == b) & (cov["method"] == m)]
        assert curve["accuracy"].iloc[0] == pytest.approx(right.mean(), abs=1e-6)
    md = (bench_out / "tables.md").read_text()
    assert "## Abstention: the threshold that reaches accuracy 0.99" in md
    assert "## Accuracy per `context`" in md


def test_report_shows_coverage_and_groups(bench_out: Path) -> None:
    from clipindex.report import build_report

    html, missing = build_report(bench_out)
    assert 'id="abstention"' in html and 'id="groups"' in html
    assert "abstention" not in missing and "groups" not in missing
    assert "risk-coverage" in html.lower()
    assert "Time from JPEG (s)" in html and "Res (px)" in html and "D_feat" in html


# ----------------------------------------------------------------------------- dedup
@pytest.fixture(scope="module")
def planted(small_world: Path, tmp_path_factory) -> dict:
    """200 distinct demo images in train/ (10 a class: support) and test/ folders, plus
    planted copies of one test image (two exact copies, a half-size resize, a crop keeping
    98% of each side) and an exact copy of a support image put in test/ (leakage)."""
    import shutil

    from PIL import Image

    from clipindex.sources import load_dataset
    from clipindex.store import build_store

    ds = load_dataset(Path(__file__).resolve().parents[1] / "clipindex/configs/datasets/demo.yaml",
                      root=small_world, per_class=40, support_per_class=None)
    root = tmp_path_factory.mktemp("dedup") / "photos"
    names = {}
    for i, r in enumerate(ds.images.itertuples()):
        part = "train" if i % 40 < 10 else "test"
        dst = root / part / r.label / f"{i:03d}.jpg"
        dst.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(small_world / r.file, dst)
        names[i] = dst.relative_to(root).as_posix()
    original = root / names[10]  # the first test image of the first class
    cls = original.parent
    shutil.copyfile(original, cls / "copy1.jpg")
    shutil.copyfile(original, cls / "copy2.jpg")
    with Image.open(original) as im:
        rgb = im.convert("RGB")
        rgb.resize((rgb.width // 2, rgb.height // 2), Image.BICUBIC).save(cls / "half.jpg",
                                                                          quality=95)
        w, h = rgb.size
        dw, dh = round(w * 0.01), round(h * 0.01)
        rgb.crop((dw, dh, w - dw, h - dh)).save(cls / "crop.jpg", quality=95)
    support = root / names[0]
    leak = root / "test" / support.parent.name / "leak.jpg"
    shutil.copyfile(support, leak)
    data = load_dataset(root)
    out = tmp_path_factory.mktemp("dedup-store")
    build_store(data, ["tiny-vit"], out=out, workers=0, batch_size=64, progress=False)
    planted_files = {f"{cls.relative_to(root).as_posix()}/{n}" for n in
                     ("copy1.jpg", "copy2.jpg", "half.jpg", "crop.jpg")}
    return {"index": out / data.name, "original": names[10], "planted": planted_files,
            "support": names[0], "leak": leak.relative_to(root).as_posix(), "n": len(names),
            "root": root}


def test_dedup_finds_the_planted_copies_and_no_false_pair(planted: dict) -> None:
    from clipindex.search.dedup import DEFAULT_THRESHOLD, find_duplicates
    from clipindex.store import open_index

    pairs = find_duplicates(open_index(planted["index"], "tiny-vit"))
    got = {frozenset((a, b)): (k, lk) for a, b, k, lk in
           zip(pairs["file_a"], pairs["file_b"], pairs["kind"], pairs["leakage"], strict=True)}
    original = planted["original"]
    for f in planted["planted"]:
        kind = "exact" if "copy" in f else "near"
        assert got.get(frozenset((original, f)), (None,))[0] == kind, (f, pairs)
    leak = got[frozenset((planted["support"], planted["leak"]))]
    assert leak == ("exact", True)
    copies = planted["planted"] | {original, planted["support"], planted["leak"]}
    false = [p for p in got if not p <= copies]
    assert not false, f"false pairs among the {planted['n']} distinct images: {false}"
    assert pairs["leakage"].sum() == 1
    near = pairs[pairs["kind"] == "near"]
    assert (near["cosine"] >= DEFAULT_THRESHOLD).all()


def test_dedup_cli_json(planted: dict) -> None:
    res = CliRunner().invoke(main, ["dedup", "--index", str(planted["index"]),
                                    "--backbone", "tiny-vit", "--json"])
    assert res.exit_code == 0, res.output
    pairs = json.loads(res.stdout)
    assert {p["kind"] for p in pairs} == {"exact", "near"}
    (leak,) = [p for p in pairs if p["leakage"]]
    assert {leak["a"]["split"], leak["b"]["split"]} == {"support", "test"}
    assert {leak["a"]["file"], leak["b"]["file"]} == {planted["support"], planted["leak"]}
    assert all({"row_id", "file", "split"} <= set(p["a"]) for p in pairs)
    bad = CliRunner().invoke(main, ["dedup", "--index", str(planted["index"]),
                                    "--backbone", "tiny-vit", "--threshold", "2"])
    assert bad.exit_code == 2 and bad.output.startswith("Error: the cosine threshold")


def test_bench_warns_about_leakage_and_the_report_shows_it(planted: dict, tmp_path: Path,
                                                           capsys) -> None:
    from clipindex.bench import run_bench
    from clipindex.config import BenchConfig, DatasetConfig
    from clipindex.report import build_report

    cfg = BenchConfig(dataset=DatasetConfig(name=planted["index"].name, source="folder",
                                            root=str(planted["root"])),
                      backbones=("tiny-vit",), methods=("image-knn",), ensembles=(),
                      retrieval=False)
    out = tmp_path / "r"
    res = run_bench(cfg, out, index_root=planted["index"].parent, progress=False)
    assert res.run["backbones"][0]["store"] == "reused"
    err = capsys.readouterr().err
    assert "Warning: 1 duplicate pair(s) straddle support and test" in err
    leaks = pd.read_csv(out / "leakage.csv")
    assert set(leaks[["file_a", "file_b"]].iloc[0]) == {planted["support"], planted["leak"]}
    html, missing = build_report(out)
    assert "leakage" not in missing
    section = html.split('id="leakage"')[1].split("</section>")[0]
    assert "1 duplicate pair(s) straddle support and test" in section
    assert section.count("data:image/png;base64,") == 2


def test_leakage_needs_a_majority_of_backbones_for_a_near_pair() -> None:
    """A true duplicate (near in all three) and an exact copy are flagged; a pair only
    tiny-rn calls near (it packs distinct demo images up to cosine 0.9992) is not."""
    from clipindex.bench.breakdowns import agreed_pairs
    from clipindex.search.dedup import PAIR_COLUMNS

    def pairs(*rows):
        return pd.DataFrame([dict(zip(PAIR_COLUMNS, r, strict=True)) for r in rows],
                            columns=list(PAIR_COLUMNS))

    true = ("near", 0.9990, 1, "a.jpg", "support", 2, "b.jpg", "test", True)
    copy = ("exact", 1.0, 3, "c.jpg", "support", 4, "d.jpg", "test", True)
    false = ("near", 0.9980, 5, "e.jpg", "support", 6, "f.jpg", "test", True)
    got = agreed_pairs({"tiny-vit": pairs(copy, true[:1] + (0.9980,) + true[2:]),
                        "tiny-vit-s": pairs(copy, true),
                        "tiny-rn": pairs(copy, true[:1] + (0.9995,) + true[2:], false)})
    assert list(zip(got["kind"], got["row_id_a"], got["backbones"], strict=True)) == [
        ("exact", 3, 3), ("near", 1, 3)]
    assert got["cosine"].iloc[1] == pytest.approx(0.9990)  # the median of the three
    only_rn = agreed_pairs({"tiny-rn": pairs(false), "tiny-vit": pairs()})
    assert len(only_rn) == 0 and "backbones" in only_rn.columns  # 1 of 2 is no majority
    assert len(agreed_pairs({"tiny-rn": pairs(false)})) == 1  # one backbone: its own call


# ----------------------------------------------------------------------------- arithmetic
@pytest.mark.parametrize("backbone", BACKBONES)
def test_cow_minus_grass_ranks_the_cows_on_roads_higher(demo_store: Path, backbone: str
                                                        ) -> None:
    """README's example: "a photo of a cow" - "grass" lifts the off-context cows on
    roads (ranked over the whole store) and pushes the cows in fields out of the top 10."""
    from clipindex.search import search_indexes
    from clipindex.search.arithmetic import Terms
    from clipindex.store import open_index

    index = open_index(demo_store, backbone)
    images = index.images.set_index("row_id")
    n = len(images)

    def ranking(terms):
        frame = search_indexes(index, texts=["a photo of a cow"], k=n, terms=terms).frame
        rows = images.loc[frame["row_id"]]
        on_road = ((rows["label"] == "cow") & (rows["context"] == "road")).to_numpy()
        in_field_top10 = int(((rows["label"] == "cow") & (rows["context"] == "field"))
                             .to_numpy()[:10].sum())
        return frame["rank"].to_numpy()[on_road], in_field_top10, frame

    plain, field_plain, _ = ranking(None)
    minus, field_minus, frame = ranking(Terms(subtract=("grass",)))
    assert len(plain) >= 2
    assert minus.mean() < plain.mean() - 10, (plain, minus)
    assert field_minus < field_plain
    assert frame["query"].iloc[0] == "a photo of a cow - grass"


def test_arithmetic_is_the_documented_sum(demo_store: Path) -> None:
    from clipindex.search import search_indexes
    from clipindex.search.arithmetic import Terms
    from clipindex.store import open_index

    index = open_index(demo_store, "tiny-vit")
    q, a, s = index.text_vectors(["a photo of a cat", "snow", "indoor"])
    want = q / np.linalg.norm(q) + 0.5 * a / np.linalg.norm(a) - 0.5 * s / np.linalg.norm(s)
    want /= np.linalg.norm(want)
    scores = index.image_vectors @ want
    scores[~index.image_valid] = -np.inf
    top = np.argsort(-scores, kind="stable")[:5]
    frame = search_indexes(index, texts=["a photo of a cat"], k=5,
                           terms=Terms(add=("snow",), subtract=("indoor",), weight=0.5)).frame
    assert frame["row_id"].tolist() == top.tolist()
    np.testing.assert_allclose(frame["score"], scores[top], atol=1e-5)


def test_image_term_and_cli_errors(demo_store: Path, small_world: Path) -> None:
    images = pd.read_parquet(demo_store / "images.parquet")
    target = images.iloc[7]
    runner = CliRunner()
    res = runner.invoke(main, ["search", "a photo of a dog", "--index", str(demo_store),
                               "--backbone", "tiny-vit", "--add-image",
                               str(small_world / target["file"]), "--term-weight", "5",
                               "-k", "3", "--json"])
    assert res.exit_code == 0, res.output
    hits = json.loads(res.stdout)
    assert hits[0]["row_id"] == int(target["row_id"])
    assert hits[0]["query"].startswith("a photo of a dog + ")
    for args, message in (([" --add", ""], "Error: Empty --add term"),
                          (["--subtract", " "], "Error: Empty --subtract term"),
                          (["--add", "snow", "--term-weight", "0"], "Error: the term weight")):
        args = [a.strip() if a.strip().startswith("--") else a for a in args]
        bad = runner.invoke(main, ["search", "a cat", "--index", str(demo_store),
                                   "--backbone", "tiny-vit", *args])
        assert bad.exit_code == 2 and bad.output.startswith(message), bad.output
        assert len(bad.output.strip().splitlines()) == 1


# ----------------------------------------------------------------------------- study sampler
def _study_recomputed(root: Path, split: str, classes: list[str], n: int, seed: int
                      ) -> pd.DataFrame:
    """The report's own code, written out again (seeds/000: extract, merge, drop, sample)."""
    import warnings

    inst = json.loads((root / "annotations" / f"instances_{split}.json").read_text())
    caps = json.loads((root / "annotations" / f"captions_{split}.json").read_text())
    name = {c["id"]: c["name"] for c in inst["categories"]}
    target_ids = [k for k, v in name.items() if v in classes]
    person = {a["image_id"] for a in inst["annotations"] if name[a["category_id"]] == "person"}
    extracted = [{"image_id": a["image_id"], "class": name[a["category_id"]]}
                 for a in inst["annotations"]
                 if a["category_id"] in target_ids and a["image_id"] not in person]
    df_caps = pd.DataFrame(caps["annotations"])[["image_id", "caption"]]
    df_animal = pd.DataFrame(extracted).merge(df_caps, on="image_id")
    df_animal = df_animal.drop_duplicates(subset=["image_id", "class", "caption"])
    with warnings.catch_warnings():  # pandas 2 warns about apply on the grouping column
        warnings.simplefilter("ignore")
        sample = df_animal.groupby("class").apply(lambda x: x.sample(n=n, random_state=seed))
    if "class" in sample.columns:  # pandas 2
        return sample.reset_index(drop=True)
    # pandas 3 leaves the grouping column out of apply's frames: take it from the index
    return sample.reset_index(level=0).reset_index(drop=True)


def _study_config(tmp: Path, root: Path, **fields) -> Path:
    import yaml

    cfg = yaml.safe_load((Path(__file__).resolve().parents[1] / "clipindex/configs/datasets/"
                          "coco-animals-study.yaml").read_text())
    cfg.update(root=str(root), split="val", **fields)
    path = tmp / "study.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def test_study_sampler_matches_the_reports_pandas_code(small_world: Path, tmp_path: Path
                                                       ) -> None:
    from clipindex.sources import load_dataset

    classes = ["cat", "dog", "cow", "sheep", "horse"]
    ds = load_dataset(_study_config(tmp_path, small_world))
    want = _study_recomputed(small_world, "val", classes, 200, 42)
    img, cap = ds.images, ds.captions
    assert len(img) == len(cap) == 1000 and (cap["image_row_id"] == img["row_id"]).all()
    for c in classes:
        mine = img[img["label"] == c]
        theirs = want[want["class"] == c]
        assert mine["coco_id"].tolist() == theirs["image_id"].tolist(), c
        assert cap.loc[mine["row_id"], "text"].tolist() == theirs["caption"].str.strip().tolist()
    # what the selection implies, on this world: images drawn twice, and in two classes
    pairs = img.groupby("coco_id")["label"].agg(["size", "nunique"])
    assert (pairs["size"] > 1).any() and (pairs["nunique"] > 1).any()
    assert img[img["split"] == "support"].groupby("label").size().eq(10).all()
    assert ds.info["funnel"]["sampled"] == {c: 200 for c in classes}


def test_study_sampler_by_hand(tmp_path: Path) -> None:
    """Five images, hand-computed: two cat boxes on one image (rows dropped as
    duplicates), a cat + dog image in both classes, a cat + person image out, and an
    image whose two captions are the same text (one row)."""
    from clipindex.sources import load_dataset

    root = tmp_path / "coco"
    (root / "annotations").mkdir(parents=True)
    (root / "val").mkdir()
    boxes = {1: [17, 17], 2: [17, 18], 3: [17, 1], 4: [18], 5: [17]}
    inst = {"images": [{"id": i, "file_name": f"{i}.jpg", "width": 50, "height": 40}
                       for i in boxes],
            "annotations": [{"id": 10 * i + j, "image_id": i, "category_id": c,
                             "bbox": [0, 0, 10 + j, 10]}
                            for i, cs in boxes.items() for j, c in enumerate(cs)],
            "categories": [{"id": 17, "name": "cat"}, {"id": 18, "name": "dog"},
                           {"id": 1, "name": "person"}]}
    caps = {"annotations": [{"id": 10 * i + k, "image_id": i,
                             "caption": "same" if i == 5 else f"c{k} of {i}"}
                            for i in boxes for k in range(2)]}
    (root / "annotations" / "instances_val.json").write_text(json.dumps(inst))
    (root / "annotations" / "captions_val.json").write_text(json.dumps(caps))
    ds = load_dataset(_study_config(tmp_path, root, classes=["cat", "dog"], per_class=4,
                                    support_per_class=1))
    funnel = ds.info["funnel"]
    assert funnel["caption_rows"] == {"cat": 5, "dog": 4}  # 1c0 1c1 2c0 2c1 5same | 2c0 2c1 4c0 4c1
    rows = list(zip(ds.images["label"], ds.images["coco_id"], ds.captions["text"],
                    strict=True))
    dog = sorted(r for r in rows if r[0] == "dog")
    assert dog == [("dog", 2, "c0 of 2"), ("dog", 2, "c1 of 2"), ("dog", 4, "c0 of 4"),
                   ("dog", 4, "c1 of 4")]  # all four dog rows, image 2 in both classes
    cat = [r for r in rows if r[0] == "cat"]
    assert len(cat) == 4 and len(set(cat)) == 4 and 3 not in {r[1] for r in rows}
    assert {r[1] for r in cat} <= {1, 2, 5}
    want = _study_recomputed(root, "val", ["cat", "dog"], 4, 42)
    assert [r[1:] for r in cat] == list(zip(want.loc[want["class"] == "cat", "image_id"],
                                            want.loc[want["class"] == "cat", "caption"],
                                            strict=True))


def test_study_sampler_needs_its_settings_and_default_is_numpy(small_world: Path,
                                                               tmp_path: Path) -> None:
    from clipindex.config import load_dataset_config
    from clipindex.errors import ConfigError
    from clipindex.sources import load_dataset

    with pytest.raises(ConfigError, match="drop_multi_target: false"):
        load_dataset_config(_study_config(tmp_path, small_world, drop_multi_target=True))
    with pytest.raises(ConfigError, match="Unknown sampler 'pandas'"):
        load_dataset_config(_study_config(tmp_path, small_world, sampler="pandas"))
    demo = Path(__file__).resolve().parents[1] / "clipindex/configs/datasets/demo.yaml"
    assert load_dataset_config(demo).sampler == "numpy"
    a = load_dataset(demo, root=small_world, per_class=30)
    b = load_dataset(demo, root=small_world, per_class=30, sampler="numpy")
    pd.testing.assert_frame_equal(a.images, b.images)
    assert a.images.groupby("coco_id").size().max() == 1  # images, not caption rows


# ----------------------------------------------------------------------------- study columns
def test_res_dfeat_and_time_from_jpeg(bench_out: Path) -> None:
    run = json.loads((bench_out / "run.json").read_text())
    ddir = Path(run["dataset_dir"])
    tables = pd.read_csv(bench_out / "tables.csv").set_index(["backbone", "method"])
    for b in BACKBONES:
        m = json.loads((ddir / b / "manifest.json").read_text())
        t = m["timings"]
        for method in ("prompt", "prototype"):
            rec = json.loads((bench_out / "records" / f"{b}__{method}.json").read_text())
            row = tables.loc[(b, method)]
            assert row["res"] == m["image_size"] and row["d_feat"] == m["dim"]
            caps = rec["n_support"] * m["n_captions"] / m["n_images"] if method == "prototype" \
                else 0
            want = (rec["load_s"] + rec["n"] * t["image_encode_seconds"] / t["images_encoded"]
                    + caps * t["caption_encode_seconds"] / t["captions_encoded"]
                    + rec["classify_ms"] / 1000)
            assert row["time_from_jpeg_s"] == pytest.approx(want, abs=2e-3)
            assert rec["load_s"] > 0
    for method in ("prompt", "prototype"):
        members = sum(tables.loc[(b, method), "time_from_jpeg_s"] for b in BACKBONES)
        assert tables.loc[("ensemble-majority", method), "time_from_jpeg_s"] == pytest.approx(
            members, abs=5e-3)
    md = (bench_out / "tables.md").read_text()
    assert "| Res | D_feat |" in md and "Time from JPEG (s)" in md
    assert {b["backbone"]: b["res"] for b in run["backbones"]} == {
        b: json.loads((ddir / b / "manifest.json").read_text())["image_size"] for b in BACKBONES}


# ----------------------------------------------------------------------------- UMAP
def test_umap_projection_is_seeded_and_keeps_classes_apart(demo_store: Path) -> None:
    """The clipindex[umap] extra (in dev): a seeded 2-D UMAP of tiny-rn's image vectors
    in which an image's 5 nearest points mostly share its class (chance: 0.2)."""
    from clipindex.report._analysis import PROJECTIONS
    from clipindex.store import open_index

    index = open_index(demo_store, "tiny-rn")
    x = index.image_vectors[index.image_valid]
    labels = index.images["label"].to_numpy()[index.image_valid]
    a = PROJECTIONS["umap"](x, 0)
    assert a.shape == (len(x), 2) and np.isfinite(a).all()
    np.testing.assert_allclose(PROJECTIONS["umap"](x, 0), a, atol=1e-4)
    d = ((a[:, None, :] - a[None, :, :]) ** 2).sum(-1)
    np.fill_diagonal(d, np.inf)
    near = np.argsort(d, axis=1)[:, :5]
    assert (labels[near] == labels[:, None]).mean() > 0.5


# ----------------------------------------------------------------------------- progress
def test_progress_is_a_line_every_few_seconds_when_stderr_is_a_file(tmp_path: Path) -> None:
    import subprocess
    import sys

    err = tmp_path / "log"
    code = "from clipindex.cli import main; main()"
    with err.open("wb") as fh:
        done = subprocess.run([sys.executable, "-c", code, "world", str(tmp_path / "w"),
                               "--scale", "small"], stdout=subprocess.DEVNULL, stderr=fh,
                              timeout=600)
    assert done.returncode == 0
    text = err.read_text(encoding="utf-8")
    lines = [line for line in text.splitlines() if line.startswith("world:")]
    assert "\r" not in text and lines[-1].startswith("world: 100%")
    assert 2 <= len(lines) <= 40, lines  # one per 5 s (tqdm redrew ~10 times a second)


def test_line_progress_by_hand() -> None:
    import io

    from clipindex.progress import LineProgress

    buf = io.StringIO()
    with LineProgress(total=4, file=buf, desc="x", mininterval=0) as bar:
        for _ in range(4):
            bar.update(1)
    text = buf.getvalue()
    assert "\r" not in text and text.endswith("\n")
    assert [line.split("|")[0] for line in text.splitlines()] == [
        "x:   0%", "x:  25%", "x:  50%", "x:  75%", "x: 100%", "x: 100%"]


def test_line_progress_is_only_clipindex_bars_and_only_for_the_command(tmp_path) -> None:
    import io

    import tqdm
    import tqdm.auto

    from clipindex import progress

    original = (tqdm.tqdm, tqdm.auto.tqdm)
    assert progress.use_line_progress() is True
    try:
        assert isinstance(progress.bar(total=1, file=io.StringIO()), progress.LineProgress)
        assert (tqdm.tqdm, tqdm.auto.tqdm) == original  # a user's own tqdm is untouched
        theirs = io.StringIO()
        with tqdm.tqdm(total=2, file=theirs, mininterval=0) as own:
            own.update(2)
        assert "\r" in theirs.getvalue()  # and still redraws in place
    finally:
        progress.use_line_progress(False)
    assert not isinstance(progress.bar(total=1, file=io.StringIO(), disable=True),
                          progress.LineProgress)
    # The command turns lines on (CliRunner's stderr is no terminal) and off at its end.
    res = CliRunner().invoke(main, ["info", "--index", str(tmp_path / "nothing")])
    assert res.exit_code == 2 and not progress._LINES["on"]
    assert (tqdm.tqdm, tqdm.auto.tqdm) == original


# ----------------------------------------------------------------------------- --json
def test_every_result_command_prints_one_json_document(bench_out: Path, planted: dict,
                                                       demo_store: Path, small_world: Path,
                                                       tmp_path: Path) -> None:
    runner = CliRunner()

    def doc(args):
        res = runner.invoke(main, [*args, "--json"])
        assert res.exit_code == 0, res.output
        return json.loads(res.stdout)  # the whole of stdout is one document

    world = doc(["world", str(tmp_path / "w"), "--scale", "small", "--no-progress"])
    assert world["world"]["seed"] == 0 and Path(world["path"]).is_dir()
    built = doc(["build", str(planted["root"]), "--backbone", "tiny-vit", "--out",
                 str(planted["index"].parent), "--no-progress"])
    (one,) = built["backbones"]
    assert one["backbone_folder"] == "tiny-vit" and one["n_images"] == planted["n"] + 5
    bench = doc(["bench", str(bench_out.parent / "bench.yaml"), "--out",
                 str(bench_out), "--index-root", str(demo_store.parent), "--skip-existing",
                 "--group-by", "context", "--no-progress"])
    assert {r["backbone"] for r in bench["tables"]} >= set(BACKBONES)
    assert bench["run"]["group_by"] == "context"
    report = doc(["report", str(bench_out), "--out", str(tmp_path / "r.html")])
    assert report == {"report": str(tmp_path / "r.html")}
    image = small_world / pd.read_parquet(demo_store / "images.parquet")["file"][0]
    cam = doc(["explain", str(image), "--index", str(demo_store), "--backbone", "tiny-rn",
               "--out", str(tmp_path / "cam.png")])
    assert Path(cam["png"]).is_file() and 0.0 <= cam["prob"] <= 1.0
