"""Data sources: COCO funnel and sampling, class folders, manifests, errors, fingerprint."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from clipindex.errors import ConfigError, DataError
from clipindex.sources import Dataset, fingerprint, load_dataset

REPO = Path(__file__).resolve().parents[1]
CATS = {1: "person", 17: "cat", 18: "dog", 21: "cow", 62: "chair"}
# Hand-made COCO: image id -> list of (category id, bbox).
CAT_ONLY = {i: [(17, [1, 2, 10, 20])] for i in range(1, 13)}
DOG_ONLY = {i: [(18, [0, 0, 8, 8])] for i in range(20, 30)}
COW_ONLY = {i: [(21, [2, 2, 6, 4])] for i in range(40, 48)}
SPECIAL = {
    13: [(17, [0, 0, 5, 5]), (1, [0, 0, 9, 9])],  # cat + person
    14: [(17, [0, 0, 5, 5]), (18, [3, 3, 6, 6])],  # cat + dog: two targets
    15: [(62, [0, 0, 4, 4])],  # distractor only
    30: [(18, [0, 0, 5, 5]), (1, [1, 1, 2, 2])],  # dog + person
    48: [(21, [0, 0, 5, 5]), (62, [0, 0, 50, 50])],  # cow + chair: kept
    49: [(21, [0, 0, 5, 5]), (21, [1, 1, 30, 40])],  # two cows: largest box is the subject
}
LAYOUT = {**CAT_ONLY, **DOG_ONLY, **COW_ONLY, **SPECIAL}
# Expected funnel for classes cat, dog, cow with person excluded.
FUNNEL = {
    "all_images": 36,
    "with_class": {"cat": 14, "dog": 12, "cow": 10},
    "without_person": {"cat": 13, "dog": 11, "cow": 10},
    "single_target": {"cat": 12, "dog": 10, "cow": 10},
}
# the world's sidecar format: {"images": {"<id>": {"causes": [...], ...}}}
CAUSES = {
    "generator_version": "test",
    "images": {
        "1": {"causes": ["tiny"], "kind": "single"},
        "40": {"causes": ["off_context", "camouflage"], "kind": "single"},
        "3": {"causes": [], "kind": "single"},
    },
}


def _coco_files(root: Path, layout: dict[int, list[tuple[int, list[float]]]]) -> None:
    images = [
        {"id": i, "file_name": f"{i:06d}.jpg", "width": 100 + i, "height": 80 + i}
        for i in sorted(layout, reverse=True)  # file order differs from id order on purpose
    ]
    anns, caps = [], []
    for img_id, objs in layout.items():
        for cat, box in objs:
            anns.append({"id": len(anns) + 1, "image_id": img_id, "category_id": cat, "bbox": box})
        for k in range(2):
            caps.append({"id": len(caps) + 1, "image_id": img_id, "caption": f"c{k} of {img_id} "})
    cats = [{"id": k, "name": v, "supercategory": "x"} for k, v in CATS.items()]
    (root / "annotations").mkdir(parents=True, exist_ok=True)
    inst = {"images": images, "annotations": anns, "categories": cats}
    (root / "annotations" / "instances_val.json").write_text(json.dumps(inst))
    (root / "annotations" / "captions_val.json").write_text(
        json.dumps({"images": images, "annotations": caps})
    )
    (root / "annotations" / "causes_val.json").write_text(json.dumps(CAUSES))


def _config(root: Path, **fields: Any) -> Path:
    cfg = {
        "name": "mini",
        "source": "coco",
        "root": str(root),
        "split": "val",
        "instances": "annotations/instances_{split}.json",
        "captions": "annotations/captions_{split}.json",
        "images": "{split}",
        "classes": ["cat", "dog", "cow"],
        "per_class": 6,
        "seed": 42,
        "support_per_class": 2,
        **fields,
    }
    path = root / f"mini-{len(list(root.glob('mini-*.yaml')))}.yaml"
    path.write_text(json.dumps(cfg))  # JSON is YAML
    return path


@pytest.fixture(scope="module")
def coco_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("coco")
    _coco_files(root, LAYOUT)
    return root


@pytest.fixture(scope="module")
def mini(coco_root: Path) -> Dataset:
    return load_dataset(_config(coco_root))


# --- COCO ----------------------------------------------------------------------


def test_coco_funnel_counts_every_stage(mini: Dataset) -> None:
    funnel = mini.info["funnel"]
    assert {k: funnel[k] for k in FUNNEL} == FUNNEL
    assert funnel["sampled"] == {"cat": 6, "dog": 6, "cow": 6}
    assert mini.info["source"] == "coco" and mini.info["classes"] == ["cat", "dog", "cow"]
    json.dumps(mini.info)  # dataset.json content is JSON-ready


def test_coco_sampling_and_support(mini: Dataset) -> None:
    img = mini.images
    assert list(img.columns) == [
        "row_id", "file", "width", "height", "label", "split",
        "coco_id", "bbox", "area_frac", "causes",
    ]  # fmt: skip
    assert img["row_id"].tolist() == list(range(18))
    assert img.groupby("label").size().to_dict() == {"cat": 6, "dog": 6, "cow": 6}
    support = img[img["split"] == "support"].groupby("label").size().to_dict()
    assert support == {"cat": 2, "dog": 2, "cow": 2}
    assert set(img["split"]) == {"support", "test"}
    # rows: by class in config order, then by image id
    assert img["label"].tolist() == ["cat"] * 6 + ["dog"] * 6 + ["cow"] * 6
    for _, part in img.groupby("label", sort=False):
        assert part["coco_id"].is_monotonic_increasing
    # filtered images never appear
    assert not set(img["coco_id"]) & {13, 14, 15, 30}
    counts = mini.info["counts"]
    assert counts["support"] == {"cat": 2, "dog": 2, "cow": 2} and counts["images"] == 18


def test_coco_rows_carry_size_file_and_box(coco_root: Path) -> None:
    ds = load_dataset(_config(coco_root, per_class=None, support_per_class=None))
    img = ds.images.set_index("coco_id")
    assert len(ds.images) == 32 and set(ds.images["split"]) == {"test"}
    assert img.loc[49, "file"] == "val/000049.jpg"
    assert (img.loc[49, "width"], img.loc[49, "height"]) == (149, 129)
    assert img.loc[49, "bbox"] == [1.0, 1.0, 30.0, 40.0]
    assert img.loc[49, "area_frac"] == pytest.approx(1200 / (149 * 129))
    assert img.loc[48, "bbox"] == [0.0, 0.0, 5.0, 5.0]  # the cow's box, not the chair's
    assert img.loc[1, "causes"] == "tiny" and img.loc[40, "causes"] == "off_context,camouflage"
    assert img.loc[3, "causes"] == "" and img.loc[2, "causes"] == ""
    assert ds.image_paths()[0] == coco_root / "val" / "000001.jpg"
    assert ds.info["funnel"]["sampled"] == FUNNEL["single_target"]


def test_coco_captions_join_the_right_rows(mini: Dataset) -> None:
    cap = mini.captions
    assert list(cap.columns) == ["row_id", "image_row_id", "text", "label"]
    assert cap["row_id"].tolist() == list(range(36))
    assert cap.groupby("image_row_id").size().eq(2).all()
    joined = cap.merge(mini.images, left_on="image_row_id", right_on="row_id")
    # each caption names its own image id ("c0 of 49"), stripped of the trailing space
    assert joined["text"].tolist() == [f"c{k % 2} of {i}" for k, i in enumerate(joined["coco_id"])]
    assert (joined["label_x"] == joined["label_y"]).all()
    assert cap["image_row_id"].is_monotonic_increasing


def test_coco_is_deterministic_and_seeded(coco_root: Path, mini: Dataset) -> None:
    again = load_dataset(_config(coco_root))
    pd.testing.assert_frame_equal(again.images, mini.images)
    pd.testing.assert_frame_equal(again.captions, mini.captions)
    assert again.info["fingerprint"] == mini.info["fingerprint"]
    other = load_dataset(_config(coco_root), seed=7)
    assert set(other.images["coco_id"]) != set(mini.images["coco_id"])
    assert other.info["fingerprint"] != mini.info["fingerprint"]


def test_fingerprint_ignores_root_and_follows_content(
    coco_root: Path, mini: Dataset, tmp_path: Path
) -> None:
    moved = tmp_path / "elsewhere"
    shutil.copytree(coco_root / "annotations", moved / "annotations")
    ds = load_dataset(_config(coco_root), root=moved)
    assert ds.root == moved and ds.info["root"] == str(moved)
    assert ds.info["fingerprint"] == mini.info["fingerprint"]
    assert fingerprint(mini.images, mini.captions) == mini.info["fingerprint"]
    caps = mini.captions.copy()
    caps.loc[0, "text"] = "changed"
    assert fingerprint(mini.images, caps) != mini.info["fingerprint"]


def test_tables_round_trip_through_parquet(mini: Dataset, tmp_path: Path) -> None:
    mini.images.to_parquet(tmp_path / "images.parquet")
    mini.captions.to_parquet(tmp_path / "captions.parquet")
    back = pd.read_parquet(tmp_path / "images.parquet")
    assert back["bbox"].map(list).tolist() == mini.images["bbox"].tolist()
    assert (
        back["row_id"].dtype == np.int64
        and back["coco_id"].tolist() == mini.images["coco_id"].tolist()
    )
    assert (
        pd.read_parquet(tmp_path / "captions.parquet")["text"].tolist()
        == mini.captions["text"].tolist()
    )


def test_keeping_multi_target_images_labels_them_by_largest_box(coco_root: Path) -> None:
    ds = load_dataset(_config(coco_root, drop_multi_target=False, per_class=None))
    funnel = ds.info["funnel"]
    assert "single_target" not in funnel
    assert funnel["assigned"] == {"cat": 12, "dog": 11, "cow": 10}  # image 14 goes to dog
    assert ds.images.set_index("coco_id").loc[14, "label"] == "dog"
    assert ds.images["coco_id"].is_unique


def test_coco_without_captions_or_causes(coco_root: Path, tmp_path: Path) -> None:
    root = tmp_path / "plain"
    shutil.copytree(coco_root / "annotations", root / "annotations")
    (root / "annotations" / "causes_val.json").unlink()
    ds = load_dataset(_config(root, captions=None))
    assert "causes" not in ds.images.columns and len(ds.captions) == 0
    assert list(ds.captions.columns) == ["row_id", "image_row_id", "text", "label"]


@pytest.mark.parametrize(
    ("content", "pattern"),
    [
        ("{not json", r"instances_val\.json is not valid JSON"),
        (
            '{"images": [], "categories": []}',
            r"instances_val\.json is not a COCO .* no 'annotations'",
        ),
        ('{"images": [], "annotations": []}', r"no 'categories'"),
        ("[1, 2]", r"top level is not an object"),
        (
            '{"images": [{"id": 1}], "annotations": [], "categories": []}',
            r"lacks one of id, file_name",
        ),
    ],
)
def test_malformed_annotation_json(tmp_path: Path, content: str, pattern: str) -> None:
    (tmp_path / "annotations").mkdir()
    (tmp_path / "annotations" / "instances_val.json").write_text(content)
    with pytest.raises(DataError, match=pattern) as err:
        load_dataset(_config(tmp_path))
    assert "\n" not in str(err.value)


@pytest.mark.parametrize(
    ("content", "pattern"),
    [
        ("{bad", r"causes_val\.json is not valid JSON"),
        ('{"images": {"x": {"causes": []}}}', r"entry 'x' is not an image id"),
        ('{"images": {"1": {"causes": "tiny"}}}', r"entry '1' is not an image id with a list"),
        ("[1]", r"expected \{'images'"),
    ],
)
def test_malformed_causes_sidecar(
    coco_root: Path, tmp_path: Path, content: str, pattern: str
) -> None:
    shutil.copytree(coco_root / "annotations", tmp_path / "annotations")
    (tmp_path / "annotations" / "causes_val.json").write_text(content)
    with pytest.raises(DataError, match=pattern):
        load_dataset(_config(tmp_path))


def test_unknown_class_lists_categories(coco_root: Path) -> None:
    with pytest.raises(DataError) as err:
        load_dataset(_config(coco_root, classes=["cat", "zebra"]))
    msg = str(err.value)
    assert "Unknown class 'zebra' in 'classes'" in msg
    assert msg.endswith("Available: person, cat, dog, cow, chair") and "\n" not in msg
    with pytest.raises(DataError, match="Unknown class 'persn' in 'exclude'"):
        load_dataset(_config(coco_root, exclude=["persn"]))


def test_selections_that_leave_nothing(tmp_path: Path) -> None:
    _coco_files(tmp_path, {1: [(17, [0, 0, 1, 1]), (1, [0, 0, 1, 1])], 2: [(62, [0, 0, 1, 1])]})
    with pytest.raises(DataError, match=r"The selection in .* leaves no images \(classes: cat\)"):
        load_dataset(_config(tmp_path, classes=["cat"], per_class=None, support_per_class=None))
    _coco_files(tmp_path, {1: [(17, [0, 0, 1, 1])], 2: [(62, [0, 0, 1, 1])]})
    with pytest.raises(DataError, match="Class 'dog' has no images left after the filters"):
        load_dataset(
            _config(tmp_path, classes=["cat", "dog"], per_class=None, support_per_class=None)
        )
    with pytest.raises(DataError, match="Class 'cat' has 1 images .* fewer than per_class=6"):
        load_dataset(_config(tmp_path, classes=["cat"]))
    with pytest.raises(DataError, match="fewer than support_per_class=2"):
        load_dataset(_config(tmp_path, classes=["cat"], per_class=None))


def test_missing_files_and_roots(coco_root: Path, tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"instances_val2017\.json \(field 'instances' of"):
        load_dataset(_config(coco_root), split="val2017")
    with pytest.raises(DataError, match="Data root .* is not a folder"):
        load_dataset(_config(coco_root), root=tmp_path / "nowhere")
    cfg = tmp_path / "noroot.yaml"
    cfg.write_text("name: x\nsource: coco\ninstances: a.json\n")
    with pytest.raises(ConfigError, match="sets no 'root': give the data root"):
        load_dataset(cfg)
    with pytest.raises(ConfigError, match="does not exist"):
        load_dataset(tmp_path / "missing.yaml")
    (tmp_path / "notes.txt").write_text("x")
    with pytest.raises(ConfigError, match="Cannot tell what"):
        load_dataset(tmp_path / "notes.txt")


# --- class folders -------------------------------------------------------------


def _png(path: Path, size: tuple[int, int]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, (10, 120, 30)).save(path)


@pytest.fixture(scope="module")
def fields_roads(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("fr") / "fields_roads"
    for i in range(45):
        _png(root / "fields" / f"f{i:03d}.png", (8 + i % 3, 6))
    for i in range(108):
        _png(root / "roads" / f"r{i:03d}.PNG", (5, 7))
    (root / "roads" / "broken.jpg").write_bytes(b"not an image")
    (root / "roads" / "notes.txt").write_text("ignored")
    (root / ".cache").mkdir()
    _png(root / ".cache" / "x.png", (3, 3))
    return root


def test_folder_imbalanced_classes(fields_roads: Path) -> None:
    ds = load_dataset(fields_roads)
    img = ds.images
    assert ds.name == "fields_roads" and ds.classes == ["fields", "roads"]
    assert img.groupby("label").size().to_dict() == {"fields": 45, "roads": 109}
    assert set(img["split"]) == {"test"} and ds.info["split_from"] == "none"
    assert img["file"].iloc[0] == "fields/f000.png" and img["row_id"].tolist() == list(range(154))
    row = img.set_index("file")
    assert (row.loc["fields/f001.png", "width"], row.loc["fields/f001.png", "height"]) == (9, 6)
    assert (row.loc["roads/broken.jpg", "width"], row.loc["roads/broken.jpg", "height"]) == (0, 0)
    assert ds.info["funnel"] == {
        "all_images": 154,
        "with_class": {"fields": 45, "roads": 109},
        "sampled": {"fields": 45, "roads": 109},
    }
    assert all(p.is_file() for p in ds.image_paths())


def test_folder_seeded_support_and_sampling(fields_roads: Path) -> None:
    a = load_dataset(fields_roads, support_per_class=5, per_class=40, seed=3)
    b = load_dataset(fields_roads, support_per_class=5, per_class=40, seed=3)
    c = load_dataset(fields_roads, support_per_class=5, per_class=40, seed=4)
    pd.testing.assert_frame_equal(a.images, b.images)
    assert a.images.groupby(["label", "split"]).size().to_dict() == {
        ("fields", "support"): 5, ("fields", "test"): 35,
        ("roads", "support"): 5, ("roads", "test"): 35,
    }  # fmt: skip
    assert a.info["split_from"] == "drawn"
    assert a.images["file"].tolist() != c.images["file"].tolist()


def test_folder_train_test_layout_and_captions(tmp_path: Path) -> None:
    root = tmp_path / "tt"
    for split, n in (("train", 3), ("test", 4)):
        for cls in ("cats", "dogs"):
            for i in range(n):
                _png(root / split / cls / f"{i}.png", (4, 4))
    (root / "captions.csv").write_text(
        "file,caption\ntrain/dogs/1.png,a dog\ntest/cats/0.png, a cat \ntest/cats/0.png,kitty\n"
    )
    ds = load_dataset(root)
    img = ds.images
    assert ds.info["split_from"] == "given"
    assert img.groupby(["label", "split"]).size().to_dict() == {
        ("cats", "support"): 3, ("cats", "test"): 4, ("dogs", "support"): 3, ("dogs", "test"): 4,
    }  # fmt: skip
    assert img["file"].iloc[0] == "train/cats/0.png" and img["file"].iloc[3] == "test/cats/0.png"
    cap = ds.captions.merge(img, left_on="image_row_id", right_on="row_id")
    assert cap[["file", "text", "label_x"]].values.tolist() == [
        ["test/cats/0.png", "a cat", "cats"],
        ["test/cats/0.png", "kitty", "cats"],
        ["train/dogs/1.png", "a dog", "dogs"],
    ]
    with pytest.raises(ConfigError, match="support_per_class conflicts with the train/test split"):
        load_dataset(root, support_per_class=1)
    (root / "captions.csv").write_text("file,caption\ntest/cats/9.png,none\n")
    with pytest.raises(DataError, match=r"captions\.csv row 2: 'test/cats/9.png' is not an image"):
        load_dataset(root)


def test_folder_errors(tmp_path: Path) -> None:
    one = tmp_path / "one"
    _png(one / "fields" / "a.png", (4, 4))
    with pytest.raises(DataError, match=r"has 1 class folder\(s\) \(fields\): a classifier needs"):
        load_dataset(one)
    with pytest.raises(ConfigError, match="--root does not apply"):
        load_dataset(one, root=tmp_path)
    _png(one / "roads" / "b.png", (4, 4))
    with pytest.raises(
        DataError, match="Unknown class 'sky' in 'classes' .* Available: fields, roads"
    ):
        load_dataset(one, classes=["fields", "sky"])
    assert load_dataset(one, classes=["roads", "fields"]).classes == ["roads", "fields"]


# --- manifests -----------------------------------------------------------------


def _manifest_frame(files: list[str]) -> pd.DataFrame:
    rows = []
    for i, f in enumerate(files):
        label = "fields" if f.startswith("fields") else "roads"
        rows.append({"path": f, "label": label, "caption": f"photo {i}"})
        if i % 2 == 0:
            rows.append({"path": f, "label": label, "caption": f"another {i}"})
    return pd.DataFrame(rows)


@pytest.mark.parametrize("suffix", [".csv", ".parquet"])
def test_manifest_csv_and_parquet(fields_roads: Path, tmp_path: Path, suffix: str) -> None:
    files = ["roads/r001.PNG", "fields/f000.png", "fields/f002.png", "roads/r000.PNG"]
    frame = _manifest_frame(files)
    path = tmp_path / f"list{suffix}"
    frame.to_csv(path, index=False) if suffix == ".csv" else frame.to_parquet(path)
    ds = load_dataset(path, root=fields_roads)
    assert ds.name == "list" and ds.root == fields_roads
    assert ds.images["file"].tolist() == files  # manifest order
    assert ds.images["width"].tolist() == [5, 8, 10, 5]
    assert ds.info["funnel"]["with_class"] == {"fields": 2, "roads": 2}
    assert ds.captions.groupby("image_row_id").size().tolist() == [2, 1, 2, 1]
    assert ds.captions["text"].tolist()[:3] == ["photo 0", "another 0", "photo 1"]
    assert (ds.captions["label"] == ds.images["label"][ds.captions["image_row_id"]].values).all()


def test_manifest_split_column_and_relative_root(fields_roads: Path) -> None:
    path = fields_roads / "split.csv"
    path.write_text(
        "path,label,split\nfields/f000.png,fields,train\nfields/f001.png,fields,test\n"
        "roads/r000.PNG,roads,support\nroads/r001.PNG,roads,val\n"
    )
    ds = load_dataset(path)
    assert ds.root == fields_roads and ds.images["split"].tolist() == [
        "support", "test", "support", "test",
    ]  # fmt: skip
    assert ds.info["split_from"] == "given" and len(ds.captions) == 0
    path.unlink()


@pytest.mark.parametrize(
    ("text", "pattern"),
    [
        ("file,label\na.png,x\n", r"has no 'path' column \(columns: file, label\)"),
        ("path,class\na.png,x\n", r"has no 'label' column"),
        ("path,label\n", r"has no rows"),
        ("path,label\na.png,x\n", r"has 1 class\(es\)"),
        ("path,label\na.png,x\na.png,y\n", r"row 3: 'a.png' appears again with another label"),
        ("path,label,split\na.png,x,dev\nb.png,y,test\n", r"row 2: unknown split 'dev'"),
        ("path,label,split\na.png,x,test\nb.png,y,\n", r"some rows have a split and others none"),
        ("path,label\n,x\n", r"row 2: empty path or label"),
    ],
)
def test_manifest_errors(tmp_path: Path, text: str, pattern: str) -> None:
    path = tmp_path / "m.csv"
    path.write_text(text)
    with pytest.raises(DataError, match=pattern) as err:
        load_dataset(path)
    assert "m.csv" in str(err.value) and "\n" not in str(err.value)


# --- the demo world ------------------------------------------------------------


# ``small_world`` (tests/conftest.py): a small demo world, made once per session.


def test_demo_config_matches_the_generators_record(small_world: Path) -> None:
    record = json.loads((small_world / "world.json").read_text())["splits"]["val"]["funnel"]
    per_class = min(200, *record["single_target"].values())
    ds = load_dataset(REPO / "clipindex/configs/datasets/demo.yaml", root=small_world,
                      per_class=per_class)
    funnel = ds.info["funnel"]
    for stage in ("all_images", "with_class", "without_person", "single_target"):
        assert funnel[stage] == record[stage], stage
    counts = ds.images.groupby("label").size().to_dict()
    assert counts == {c: per_class for c in ("cat", "dog", "cow", "sheep", "horse")}
    support = ds.images[ds.images["split"] == "support"].groupby("label").size()
    assert support.eq(10).all() and len(support) == 5
    sidecar = json.loads((small_world / "annotations" / "causes_val.json").read_text())["images"]
    expected = [",".join(sidecar[str(i)]["causes"]) for i in ds.images["coco_id"]]
    assert ds.images["causes"].tolist() == expected and any(expected)
    words = {w for v in expected for w in v.split(",") if w}
    assert words <= {"lookalike", "tiny", "camouflage", "off_context", "mislabeled"}
    assert all(p.is_file() for p in ds.image_paths())
    assert ds.info["fingerprint"] == load_dataset(
        REPO / "clipindex/configs/datasets/demo.yaml", root=small_world, per_class=per_class
    ).info["fingerprint"]


def test_funnel_matches_a_pandas_reference(tmp_path: Path) -> None:
    """Random COCO layout; the funnel recomputed independently with pandas."""
    rng = np.random.default_rng(0)
    layout = {
        i: [(int(rng.choice(list(CATS))), [0, 0, 1 + i % 7, 2]) for _ in range(rng.integers(1, 4))]
        for i in range(1, 401)
    }
    _coco_files(tmp_path, layout)
    ds = load_dataset(_config(tmp_path, per_class=None, support_per_class=None))
    anns = pd.DataFrame(
        [(i, CATS[c]) for i, objs in layout.items() for c, _ in objs], columns=["img", "cat"]
    )
    targets = ["cat", "dog", "cow"]
    has = anns.assign(v=1).pivot_table(index="img", columns="cat", values="v", aggfunc="max")
    has = has.reindex(columns=list(CATS.values())).fillna(0).astype(bool)
    n_targets = has[targets].sum(axis=1)
    expected = {
        "all_images": 400,
        "with_class": {c: int(has[c].sum()) for c in targets},
        "without_person": {c: int((has[c] & ~has["person"]).sum()) for c in targets},
        "single_target": {
            c: int((has[c] & ~has["person"] & (n_targets == 1)).sum()) for c in targets
        },
    }
    assert {k: ds.info["funnel"][k] for k in expected} == expected
    kept = has[has[targets].any(axis=1) & ~has["person"] & (n_targets == 1)]
    assert sorted(ds.images["coco_id"]) == sorted(kept.index)
    labels = ds.images.set_index("coco_id")["label"].sort_index()
    assert labels.tolist() == kept[targets].idxmax(axis=1).sort_index().tolist()


def test_yaml_configs_for_folder_and_manifest_sources(fields_roads: Path, tmp_path: Path) -> None:
    folder_cfg = tmp_path / "fr.yaml"
    folder_cfg.write_text(
        f"name: fr\nsource: folder\nroot: {fields_roads.parent}\nimages: {fields_roads.name}\n"
        "classes: [roads, fields]\nper_class: 20\nsupport_per_class: 4\nseed: 1\n"
    )
    ds = load_dataset(folder_cfg)
    assert ds.name == "fr" and ds.classes == ["roads", "fields"]
    assert ds.images["file"].iloc[0].startswith("fields_roads/roads/")
    assert ds.info["counts"]["support"] == {"roads": 4, "fields": 4}
    assert all(p.is_file() for p in ds.image_paths())
    (tmp_path / "lists").mkdir()
    _manifest_frame(["fields/f000.png", "roads/r000.PNG"]).to_csv(
        tmp_path / "lists" / "m.csv", index=False
    )
    manifest_cfg = tmp_path / "m.yaml"
    manifest_cfg.write_text(f"name: m\nsource: manifest\nmanifest: {tmp_path}/lists/m.csv\n")
    ds = load_dataset(manifest_cfg, root=fields_roads)
    assert ds.images["file"].tolist() == ["fields/f000.png", "roads/r000.PNG"]
    assert ds.images["width"].tolist() == [8, 5] and len(ds.captions) == 3
    assert ds.info["config"]["root"] == str(fields_roads)


def _one_shot_fingerprint(images: pd.DataFrame, captions: pd.DataFrame) -> str:
    """The fingerprint as first written (every row serialised at once): stores record
    it, so the chunked one must give the same bytes."""
    import hashlib

    from clipindex.sources.fingerprint import _json_native

    h = hashlib.sha256(b"clipindex-tables-v1")
    for name, table in (("images", images), ("captions", captions)):
        payload = {"table": name, "columns": [str(c) for c in table.columns],
                   "rows": table.to_dict(orient="split")["data"]}
        h.update(json.dumps(payload, separators=(",", ":"), default=_json_native,
                            allow_nan=True).encode("utf-8"))
    return h.hexdigest()


@pytest.mark.parametrize("chunk", [1, 2, 3, 65536])
def test_the_chunked_fingerprint_equals_the_one_shot_one(chunk: int,
                                                        monkeypatch: pytest.MonkeyPatch
                                                        ) -> None:
    import importlib

    fp_module = importlib.import_module("clipindex.sources.fingerprint")
    monkeypatch.setattr(fp_module, "_CHUNK", chunk)
    images = pd.DataFrame({"row_id": np.arange(5, dtype=np.int64),
                           "file": pd.Series(["a.jpg", "b/é.jpg", "c.jpg", "d", "e"],
                                             dtype="str"),
                           "label": ["cat", None, "dog", "cat", "dog"],
                           "score": [0.5, np.nan, 1e-9, -2.0, 3.0],
                           "flag": [True, False, True, True, False],
                           "n": np.array([1, 2, 3, 4, 5], dtype=np.int32)})
    captions = pd.DataFrame({"row_id": np.arange(4), "image_row_id": [0, 0, 2, 4],
                             "text": ["a \"quoted\" cat", "x", "", "ünï"]})
    for imgs, caps in ((images, captions), (images.iloc[:0], captions.iloc[:0]),
                       (images.iloc[:1], captions)):
        assert fingerprint(imgs, caps) == _one_shot_fingerprint(imgs, caps)
