"""The synthetic demo world: COCO format, the generator's record, causes, determinism, CLI.

Counts are recomputed here from the JSON files and compared with ``world.json``; nothing
depends on the exact knob values (a colleague tunes them), only on rates with tolerance.
"""

from __future__ import annotations

import hashlib
import json
import re
import subprocess
import sys
from collections import Counter
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image
from pycocotools.coco import COCO

from clipindex.cli import main
from clipindex.demo.world import GENERATOR_VERSION, SCALES, Scale, WorldKnobs, make_world
from clipindex.demo.world.knobs import HOME_CONTEXTS
from clipindex.demo.world.plan import plan_split
from clipindex.errors import UserInputError

SPLITS = ("train", "val")
TARGETS = {17: "cat", 18: "dog", 19: "horse", 20: "sheep", 21: "cow"}
# Written out independently of the generator's grammar: words that name each class.
NAMES = {
    "cat": {"cat", "cats", "kitty", "kitties", "kitten", "kittens"},
    "dog": {"dog", "dogs", "puppy", "puppies", "pup", "doggy"},
    "horse": {"horse", "horses", "pony", "ponies", "stallion", "mare"},
    "sheep": {"sheep", "lamb", "lambs", "ewe"},
    "cow": {"cow", "cows", "calf", "calves", "cattle", "steer", "bull"},
}
MINI = Scale("mini", train_per_class=2, val_per_class=3)


def _load(root: Path, kind: str, split: str) -> dict:
    return json.loads((root / "annotations" / f"{kind}_{split}.json").read_text())


def _tree_digest(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


@pytest.fixture(scope="module")
def record(small_world: Path) -> dict:
    return json.loads((small_world / "world.json").read_text())


# --- COCO format -----------------------------------------------------------------------
@pytest.mark.parametrize("split", SPLITS)
def test_loads_with_pycocotools(small_world: Path, split: str) -> None:
    ann_dir = small_world / "annotations"
    inst = COCO(str(ann_dir / f"instances_{split}.json"))
    caps = COCO(str(ann_dir / f"captions_{split}.json"))
    cats = {c["name"]: (c["id"], c["supercategory"]) for c in inst.loadCats(inst.getCatIds())}
    assert cats["cat"] == (17, "animal") and cats["dog"] == (18, "animal")
    assert cats["horse"] == (19, "animal") and cats["sheep"] == (20, "animal")
    assert cats["cow"] == (21, "animal") and cats["person"] == (1, "person")
    assert len([c for c, (_, sup) in cats.items() if sup not in ("animal", "person")]) >= 2
    assert "categories" not in json.loads((ann_dir / f"captions_{split}.json").read_text())
    assert sorted(inst.getImgIds()) == sorted(caps.getImgIds())
    for ann in inst.loadAnns(inst.getAnnIds()):
        x, y, w, h = ann["bbox"]
        img = inst.imgs[ann["image_id"]]
        assert w > 0 and h > 0 and 0 < ann["area"] <= w * h and ann["iscrowd"] == 0
        assert x >= 0 and y >= 0 and x + w <= img["width"] and y + h <= img["height"]
    for img_id in caps.getImgIds():
        assert len(caps.getAnnIds(imgIds=[img_id])) == 5
    for img in inst.loadImgs(inst.getImgIds()):
        assert "/" not in img["file_name"]
        with Image.open(small_world / split / img["file_name"]) as im:
            assert im.format == "JPEG" and im.size == (img["width"], img["height"])
            assert not im.getexif()


# --- the generator's record --------------------------------------------------------------
def _recount(root: Path, split: str) -> dict:
    """Counts recomputed from the JSON files alone."""
    inst, caps = _load(root, "instances", split), _load(root, "captions", split)
    names = {c["id"]: c["name"] for c in inst["categories"]}
    per_image: dict[int, set[str]] = {im["id"]: set() for im in inst["images"]}
    for a in inst["annotations"]:
        per_image[a["image_id"]].add(names[a["category_id"]])
    targets = {i: c & set(NAMES) for i, c in per_image.items()}
    kept = [t for i, t in targets.items() if len(t) == 1 and "person" not in per_image[i]]
    funnel = {
        "all_images": len(per_image),
        "with_class": {c: sum(c in t for t in targets.values()) for c in NAMES},
        "without_person": {
            c: sum(c in t and "person" not in per_image[i] for i, t in targets.items())
            for c in NAMES
        },
        "single_target": {c: sum(t == {c} for t in kept) for c in NAMES},
    }
    return {
        "images": len(inst["images"]),
        "annotations": len(inst["annotations"]),
        "captions": len(caps["annotations"]),
        "funnel": funnel,
        "person": sum(bool(t) and "person" in per_image[i] for i, t in targets.items()),
        "multi": sum(len(t) >= 2 for t in targets.values()),
        "distractor": sum(not t and "person" not in per_image[i] for i, t in targets.items()),
        "category_images": {n: sum(n in c for c in per_image.values()) for n in names.values()},
    }


@pytest.mark.parametrize("split", SPLITS)
def test_counts_match_the_record(small_world: Path, record: dict, split: str) -> None:
    rec, got = record["splits"][split], _recount(small_world, split)
    assert record["generator_version"] == GENERATOR_VERSION and record["seed"] == 0
    assert record["knobs"] == WorldKnobs().to_dict()
    for key in ("images", "annotations", "captions", "funnel", "category_images"):
        assert got[key] == rec[key], key
    assert got["captions"] == 5 * got["images"]
    for kind in ("person", "multi", "distractor"):
        assert got[kind] == rec["kinds"][kind] > 0, kind
    # the study's filters remove something, and each class keeps images
    funnel = got["funnel"]
    for c in NAMES:
        assert funnel["with_class"][c] > funnel["single_target"][c] > 0
    causes = _load(small_world, "causes", split)["images"]
    assert {int(k) for k in causes} == {
        im["id"] for im in _load(small_world, "instances", split)["images"]
    }
    counted = Counter(c for r in causes.values() for c in r["causes"])
    assert {k: counted.get(k, 0) for k in rec["causes"]} == rec["causes"]
    assert set(counted) <= set(record["cause_rates"])


def test_cause_rates_near_documented_rates(small_world: Path, record: dict) -> None:
    singles = [
        r
        for split in SPLITS
        for r in _load(small_world, "causes", split)["images"].values()
        if r["kind"] == "single"
    ]
    n = len(singles)
    for cause, rate in record["cause_rates"].items():
        observed = sum(cause in r["causes"] for r in singles) / n
        tolerance = 4 * np.sqrt(rate * (1 - rate) / n) + 0.01  # binomial, 4 sigma
        assert abs(observed - rate) <= tolerance, (cause, observed, rate)
        assert observed > 0, cause
    assert any(not r["causes"] for r in singles)


@pytest.mark.parametrize("split", SPLITS)
def test_labels_contexts_and_captions_follow_the_drawing(small_world: Path, split: str) -> None:
    inst, caps = _load(small_world, "instances", split), _load(small_world, "captions", split)
    causes = _load(small_world, "causes", split)["images"]
    labels: dict[int, set[str]] = {}
    for a in inst["annotations"]:
        if a["category_id"] in TARGETS:
            labels.setdefault(a["image_id"], set()).add(TARGETS[a["category_id"]])
    texts: dict[int, list[str]] = {}
    for c in caps["annotations"]:
        texts.setdefault(c["image_id"], []).append(c["caption"])
    mislabeled = 0
    for key, r in causes.items():
        if r["kind"] != "single":
            continue
        img_id, true = int(key), r["true_class"]
        if "mislabeled" in r["causes"]:
            mislabeled += 1
            assert labels[img_id] == {r["label"]} and r["label"] != true
        else:
            assert labels[img_id] == {true}
        assert ("off_context" in r["causes"]) == (r["context"] not in HOME_CONTEXTS[true])
        others = set().union(*(NAMES[c] for c in NAMES if c != true))
        for text in texts[img_id]:  # captions name what is drawn, never the wrong label
            words = set(re.findall(r"[a-z]+", text.lower()))
            assert words & NAMES[true] and not words & others, (text, true)
    assert mislabeled == Counter(c for r in causes.values() for c in r["causes"])["mislabeled"]


def test_caption_length_and_variety(small_world: Path) -> None:
    texts = [c["caption"] for s in SPLITS for c in _load(small_world, "captions", s)["annotations"]]
    lengths = np.array([len(t) for t in texts])
    assert 40 <= lengths.mean() <= 60, lengths.mean()
    assert len(set(texts)) > 0.8 * len(texts)
    words = Counter(w for t in texts for w in re.findall(r"[a-z]+", t.lower()))
    for synonym in ("kitten", "puppy", "pony", "lamb", "calf", "two", "field", "street"):
        assert words[synonym] > 0, synonym


def test_image_sizes_vary(small_world: Path) -> None:
    images = [im for s in SPLITS for im in _load(small_world, "instances", s)["images"]]
    sides = np.array([(im["width"], im["height"]) for im in images])
    assert sides.max() == 640 and sides.min() <= 200
    aspects = {round(w / h, 2) for w, h in sides}
    assert len(aspects) >= 4 and any(a < 1 for a in aspects) and any(a > 1 for a in aspects)


@pytest.mark.parametrize("split", SPLITS)
def test_tiny_subjects_are_tiny(small_world: Path, record: dict, split: str) -> None:
    inst = _load(small_world, "instances", split)
    causes = _load(small_world, "causes", split)["images"]
    size = {im["id"]: im["width"] * im["height"] for im in inst["images"]}
    frac: Counter[int] = Counter()
    for a in inst["annotations"]:
        if a["category_id"] in TARGETS:
            frac[a["image_id"]] += a["bbox"][2] * a["bbox"][3] / size[a["image_id"]]
    tiny_max = record["knobs"]["tiny_area"][1]
    tiny = [frac[int(k)] for k, r in causes.items() if "tiny" in r["causes"]]
    other = [
        frac[int(k)]
        for k, r in causes.items()
        if r["kind"] == "single" and "tiny" not in r["causes"]
    ]
    assert tiny and max(tiny) <= 2 * tiny_max
    assert np.median(tiny) < 0.5 * np.median(other)


def test_camouflaged_subjects_blend_in(small_world: Path) -> None:
    """Colour contrast between a subject's box centre and the ring around the box."""

    def contrast(arr: np.ndarray, box: list[float]) -> float:
        x, y, w, h = (int(v) for v in box)
        core = arr[y + h // 4 : y + 3 * h // 4 + 1, x + w // 4 : x + 3 * w // 4 + 1]
        m = max(2, w // 5)
        ring = arr[max(0, y - m) : y + h + m, max(0, x - m) : x + w + m].reshape(-1, 3)
        return float(np.abs(core.reshape(-1, 3).mean(0) - ring.mean(0)).sum())

    found: dict[bool, list[float]] = {True: [], False: []}
    inst = _load(small_world, "instances", "val")
    causes = _load(small_world, "causes", "val")["images"]
    first = {}
    for a in inst["annotations"]:
        if a["category_id"] in TARGETS:
            first.setdefault(a["image_id"], a["bbox"])
    for im in inst["images"]:
        r = causes[str(im["id"])]
        if r["kind"] != "single" or "tiny" in r["causes"]:
            continue
        camo = "camouflage" in r["causes"]
        if camo or len(found[False]) < 60:
            arr = np.asarray(Image.open(small_world / "val" / im["file_name"]), dtype=np.float32)
            found[camo].append(contrast(arr, first[im["id"]]))
    assert len(found[True]) >= 5
    assert np.median(found[True]) < 0.6 * np.median(found[False])


# --- scale, determinism -------------------------------------------------------------------
def test_default_scale_keeps_300_val_images_per_class() -> None:
    plans = plan_split(0, "val", SCALES["default"], WorldKnobs())
    kept = Counter(p.label for p in plans if p.kind == "single")
    assert set(kept) == set(NAMES) and min(kept.values()) >= 300, kept
    train = plan_split(0, "train", SCALES["default"], WorldKnobs())
    assert 2000 <= len(train) <= 6000


def test_training_scale_is_default_with_a_4x_train_split() -> None:
    """The tiny ViTs train on scale "training": its val split is the demo's."""
    knobs = WorldKnobs()
    for seed in (0, 1):
        assert plan_split(seed, "val", SCALES["training"], knobs) == plan_split(
            seed, "val", SCALES["default"], knobs)
    train = Counter(p.label for p in plan_split(0, "train", SCALES["training"], knobs)
                    if p.kind == "single")
    assert set(train) == set(NAMES) and min(train.values()) >= 4 * 600, train


def test_same_seed_gives_identical_files(small_world: Path, tmp_path: Path) -> None:
    again = make_world(tmp_path / "elsewhere" / "copy", seed=0, scale="small", progress=False)
    first, second = _tree_digest(small_world), _tree_digest(again)
    assert len(first) > 100 and first == second


def test_another_seed_differs(tmp_path: Path) -> None:
    a = _tree_digest(make_world(tmp_path / "a", seed=0, scale=MINI, progress=False))
    b = _tree_digest(make_world(tmp_path / "b", seed=1, scale=MINI, progress=False))
    assert a.keys() == b.keys()
    differing = [k for k in a if a[k] != b[k]]
    assert "annotations/instances_val.json" in differing
    assert len(differing) >= 0.9 * len(a)


def test_knobs_change_the_world(tmp_path: Path) -> None:
    knobs = replace(WorldKnobs(), tiny_rate=1.0, mislabel_rate=0.0)
    root = make_world(tmp_path / "w", seed=3, scale=MINI, progress=False, knobs=knobs)
    rec = json.loads((root / "world.json").read_text())
    assert rec["knobs"]["tiny_rate"] == 1.0 and rec["cause_rates"]["tiny"] == 1.0
    singles = [r for r in _load(root, "causes", "val")["images"].values() if r["kind"] == "single"]
    assert singles and all(
        "tiny" in r["causes"] and "mislabeled" not in r["causes"] for r in singles
    )


def test_library_errors(tmp_path: Path) -> None:
    with pytest.raises(UserInputError, match="Unknown world scale 'huge'. Known: small, default"):
        make_world(tmp_path / "w", scale="huge")
    with pytest.raises(UserInputError, match="non-negative integer"):
        make_world(tmp_path / "w", seed=-1)
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "keep.txt").write_text("mine")
    with pytest.raises(UserInputError, match="not empty"):
        make_world(tmp_path / "full", scale=MINI)
    assert not (tmp_path / "w").exists()


# --- CLI --------------------------------------------------------------------------------
def _one_line_error(result) -> str:  # type: ignore[no-untyped-def]
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output
    assert result.exception is None or isinstance(result.exception, SystemExit)
    lines = [ln for ln in result.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("Error: "), result.stderr
    return lines[0]


def test_cli_refuses_a_non_empty_directory_unless_forced(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(SCALES, "small", replace(MINI, name="small"))  # keep the test fast
    target = tmp_path / "world"
    target.mkdir()
    (target / "notes.txt").write_text("keep me")
    runner = CliRunner()
    refused = runner.invoke(main, ["world", str(target), "--scale", "small"])
    assert "not empty" in _one_line_error(refused) and "--force" in refused.stderr
    assert sorted(p.name for p in target.iterdir()) == ["notes.txt"]
    forced = runner.invoke(
        main, ["world", str(target), "--scale", "small", "--force", "--seed", "2"]
    )
    assert forced.exit_code == 0, forced.output
    assert "after the study's filters" in forced.stdout
    assert (target / "notes.txt").read_text() == "keep me"
    rec = json.loads((target / "world.json").read_text())
    assert rec["seed"] == 2 and rec["scale"] == "small"
    again = runner.invoke(
        main, ["world", str(target), "--scale", "small", "--force", "--seed", "2"]
    )
    assert again.exit_code == 0 and not list(target.glob(".world-staging*"))


def test_a_killed_run_leaves_nothing_that_blocks_the_next(tmp_path: Path) -> None:
    """SIGKILL mid-generation leaves no world.json; the next run (no --force) removes the
    dead run's staging folder instead of calling the folder non-empty."""
    import signal
    import time

    target = tmp_path / "world"
    code = ("from clipindex.demo.world import make_world; "
            f"make_world({str(target)!r}, seed=0, scale='small', progress=False)")
    proc = subprocess.Popen([sys.executable, "-c", code])
    deadline = time.monotonic() + 60
    while not list(target.glob(".world-staging-*/*/*.jpg")) and time.monotonic() < deadline:
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert list(target.glob(".world-staging-*")) and not (target / "world.json").exists()
    make_world(target, seed=0, scale=MINI, progress=False)
    assert (target / "world.json").exists() and not list(target.glob(".world-staging-*"))


def test_a_live_runs_staging_folder_is_left_alone(tmp_path: Path) -> None:
    target = tmp_path / "world"
    live = target / ".world-staging-1"  # pid 1 always exists
    live.mkdir(parents=True)
    with pytest.raises(UserInputError, match="not empty"):
        make_world(target, seed=0, scale=MINI, progress=False)
    assert live.is_dir()


def test_cli_unwritable_path_and_unknown_scale(tmp_path: Path) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    runner = CliRunner()
    line = _one_line_error(
        runner.invoke(main, ["world", str(blocker / "world"), "--scale", "small"])
    )
    assert "Cannot write" in line and str(blocker) in line
    line = _one_line_error(runner.invoke(main, ["world", str(tmp_path / "w"), "--scale", "huge"]))
    assert "huge" in line and "small" in line and "default" in line
    line = _one_line_error(runner.invoke(main, ["world", str(tmp_path / "w"), "--seed", "-3"]))
    assert "--seed" in line
    assert not (tmp_path / "w").exists()


def test_installed_command_one_line_error(tmp_path: Path) -> None:
    exe = Path(sys.executable).with_name("clipindex")
    if not exe.exists():
        pytest.skip("the clipindex console script is not installed in this environment")
    proc = subprocess.run(
        [str(exe), "world", str(tmp_path / "w"), "--scale", "huge"],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert proc.stderr.strip().count("\n") == 0 and proc.stderr.startswith("Error: ")


def test_captions_keep_each_animal_with_its_own_pose_and_colour() -> None:
    from clipindex.demo.world.captions import make_captions
    from clipindex.demo.world.plan import AnimalSpec, ImagePlan

    dog = AnimalSpec("dog", "golden", None, "sitting", 0.0)
    horse = AnimalSpec("horse", "black", None, "standing", 0.0)
    plan = ImagePlan(1, 0, "val", "multi", 640, 480, "field", (dog, horse), "dog", (), (), None,
                     None, 0.2)  # fmt: skip
    texts = [t for seed in range(40) for t in make_captions(plan, np.random.default_rng(seed))]
    assert not [t for t in texts if re.search(r"(horse|stallion|mare|pony) sitting", t.lower())]
    assert not [t for t in texts if re.search(r"(golden|dog|puppy|pup|doggy) standing", t.lower())]
    assert any("sitting" in t for t in texts)
    herds = [p for p in plan_split(0, "val", SCALES["small"], WorldKnobs()) if len(p.animals) > 1]
    assert any(p.kind == "single" for p in herds)
    for p in herds:
        if p.kind == "single":  # "three black cows": a herd shares its colouring
            assert len({(a.colour, a.spots) for a in p.animals}) == 1
