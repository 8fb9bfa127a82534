"""Issue 18, one test per row of its table: every damaged store, cache or input gets a
one-line error (or, for caches, one warning and a correct answer); nothing stale is
ever served. Each of these failed on the code before the fix."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import shutil
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from fixtures_robust import COLORS, assert_one_line_error, run_cli
from fixtures_store import FakeEncoder, make_image_dataset

from clipindex.errors import (
    ConfigError,
    DamagedStoreError,
    DataError,
    IndexMismatchError,
    ModelLoadError,
    UserInputError,
)
from clipindex.store import build_store, open_index

KW = dict(workers=0, batch_size=4, shard_size=8, progress=False)
QUERY = "a small red picture"


def _search(ddir: Path, *extra: object):
    return run_cli("search", QUERY, "--index", ddir, "--backbone", "tiny-vit", "-k", 5,
                   "--json", *extra)


def _classify(ddir: Path, *extra: object):
    return run_cli("classify", "--index", ddir, "--backbone", "tiny-vit", "--method",
                   "prompt", "--json", *extra)


# ----------------------------------------------------------------------------- text cache
@pytest.fixture
def weight_dependent_texts(monkeypatch):
    """Fake text vectors that depend on the checkpoint's bytes (as real ones do)."""
    def encode_texts(self, texts):
        weights = Path(self.spec.pretrained).read_bytes() if self.spec.source == "file" else b""
        out = np.zeros((len(texts), self.embed_dim), dtype=np.float32)
        for i, t in enumerate(texts):
            seed = int(hashlib.sha256(weights + t.encode()).hexdigest(), 16) % 2**32
            v = np.random.default_rng(seed).standard_normal(self.embed_dim)
            out[i] = v / np.linalg.norm(v)
        return out

    monkeypatch.setattr(FakeEncoder, "encode_texts", encode_texts)


def _fresh_text(ckpt: Path, text: str) -> np.ndarray:
    from fixtures_store import fake_load_encoder

    return fake_load_encoder("fake-a", pretrained=str(ckpt)).encode_texts([text])[0]


def test_rebuild_with_other_weights_of_the_same_file_name_drops_the_text_cache(
        tmp_path, use_fake_encoders, weight_dependent_texts):
    ds = make_image_dataset(tmp_path / "data", 4)
    ckpt = tmp_path / "w" / "open_clip_pytorch_model.bin"
    ckpt.parent.mkdir()
    ckpt.write_bytes(b"weights one")
    out = tmp_path / "out"
    build_store(ds, ["fake-a"], out=out, pretrained=str(ckpt), **KW)
    old = open_index(out / "toy", "fake-a__open_clip_pytorch_model").text_vectors(["a cat"])
    ckpt.write_bytes(b"weights two")  # other weights, same file name: same folder
    build_store(ds, ["fake-a"], out=out, pretrained=str(ckpt), **KW)
    idx = open_index(out / "toy", "fake-a__open_clip_pytorch_model")
    got = idx.text_vectors(["a cat"])[0]
    np.testing.assert_allclose(got, _fresh_text(ckpt, "a cat"), atol=1e-6)
    assert not np.allclose(got, old[0], atol=1e-3)


def test_a_text_cache_of_other_weights_is_discarded_with_one_warning(
        tmp_path, use_fake_encoders, weight_dependent_texts, caplog):
    ds = make_image_dataset(tmp_path / "data", 4)
    one, two = tmp_path / "a" / "model.bin", tmp_path / "b" / "model.bin"
    for path, data in ((one, b"weights one"), (two, b"weights two")):
        path.parent.mkdir()
        path.write_bytes(data)
    build_store(ds, ["fake-a"], out=tmp_path / "o1", pretrained=str(one), **KW)
    build_store(ds, ["fake-a"], out=tmp_path / "o2", pretrained=str(two), **KW)
    folder = "fake-a__model"
    open_index(tmp_path / "o1" / "toy", folder).text_vectors(["a cat", "a dog"])
    shutil.copy(tmp_path / "o1" / "toy" / folder / "text_cache.npz",
                tmp_path / "o2" / "toy" / folder / "text_cache.npz")
    with caplog.at_level(logging.WARNING):
        got = open_index(tmp_path / "o2" / "toy", folder).text_vectors(["a cat"])[0]
    np.testing.assert_allclose(got, _fresh_text(two, "a cat"), atol=1e-6)
    warned = [r for r in caplog.records if "text cache" in r.getMessage()]
    assert len(warned) == 1 and "stale" in warned[0].getMessage()


@pytest.mark.parametrize("damage", ["truncate", "flip"])
def test_a_damaged_text_cache_is_discarded_and_rebuilt(store_copy, damage):
    clean_search, clean_classify = _search(store_copy), _classify(store_copy)
    assert clean_search.exit_code == 0 and clean_classify.exit_code == 0, clean_search.output
    cache = store_copy / "tiny-vit" / "text_cache.npz"
    data = bytearray(cache.read_bytes())
    if damage == "truncate":
        data = data[: len(data) // 2]
    else:
        data[len(data) // 2] ^= 0xFF
    for run, clean in ((_search, clean_search), (_classify, clean_classify)):
        cache.write_bytes(bytes(data))
        res = run(store_copy)
        assert res.exit_code == 0, res.output
        assert res.stdout == clean.stdout  # the answer of a run without any cache
        warnings = [line for line in res.stderr.splitlines() if line.startswith("Warning:")]
        assert len(warnings) == 1 and "text cache" in warnings[0], res.stderr
        assert "Traceback" not in res.stderr


def test_a_long_query_costs_its_own_bytes_and_a_short_header(store_copy):
    long_query = ("red " * 25_000).strip() + "!"  # 100,000 characters
    res = run_cli("search", long_query, "--index", store_copy, "--backbone", "tiny-vit",
                  "-k", 3)
    assert res.exit_code == 0, res.output
    header = res.stdout.splitlines()[0]
    assert header.startswith("query: ") and len(header) < 300 and "100,000 characters" in header
    idx = open_index(store_copy, "tiny-vit")
    for i in range(100):
        idx.text_vectors([f"query number {i}"])
    size = (store_copy / "tiny-vit" / "text_cache.npz").stat().st_size
    # variable-length: the long text once (100 KB) + 101 vectors; fixed-width was 40 MB
    assert size < 200_000, size
    again = open_index(store_copy, "tiny-vit")
    np.testing.assert_allclose(again.text_vectors([long_query, "query number 7"]),
                               idx.encoder().encode_texts([long_query, "query number 7"]),
                               atol=1e-5)


def test_the_text_cache_respects_its_size_cap(store_copy, monkeypatch):
    monkeypatch.setenv("CLIPINDEX_TEXT_CACHE_MB", "0.002")  # 2,000 bytes: a few entries
    idx = open_index(store_copy, "tiny-vit")
    texts = [f"a photo of thing {i}" for i in range(40)]
    want = idx.encoder().encode_texts(texts)
    for t in texts:
        idx.text_vectors([t])
    assert (store_copy / "tiny-vit" / "text_cache.npz").stat().st_size < 6_000
    kept = open_index(store_copy, "tiny-vit")._load_text_cache()
    assert 0 < len(kept) < 40 and texts[-1] in kept and texts[0] not in kept
    np.testing.assert_allclose(open_index(store_copy, "tiny-vit").text_vectors(texts), want,
                               atol=1e-5)


# ----------------------------------------------------------------------------- store files
@pytest.mark.parametrize("table", ["images.parquet", "captions.parquet"])
def test_a_deleted_table_is_one_line(store_copy, table):
    (store_copy / table).unlink()
    for res in (_search(store_copy), _classify(store_copy), run_cli("info", store_copy)):
        assert_one_line_error(res, table, "clipindex build", "--rebuild")


def test_a_table_with_garbage_bytes_is_one_line(store_copy):
    path = store_copy / "images.parquet"
    data = bytearray(path.read_bytes())
    data[len(data) // 2: len(data) // 2 + 64] = os.urandom(64)
    path.write_bytes(bytes(data))
    for res in (_search(store_copy), _classify(store_copy), run_cli("info", store_copy)):
        assert_one_line_error(res, "images.parquet", "sha256")


@pytest.mark.parametrize("content", ["truncated", "list"])
def test_an_unreadable_manifest_is_one_line_in_info_too(store_copy, content):
    path = store_copy / "tiny-vit" / "manifest.json"
    text = path.read_text()
    path.write_text(text[: len(text) // 2] if content == "truncated" else "[1, 2, 3]\n")
    for res in (_search(store_copy), _classify(store_copy), run_cli("info", store_copy),
                run_cli("info", "--json", store_copy)):
        assert_one_line_error(res, "manifest.json", "unreadable", "clipindex build")


def test_labels_edited_in_the_images_table_are_refused(store_copy):
    path = store_copy / "images.parquet"
    images = pd.read_parquet(path)
    images["label"] = np.roll(images["label"].to_numpy(), 1)  # still valid parquet
    images.to_parquet(path, index=False)
    for res in (_search(store_copy), _classify(store_copy), run_cli("info", store_copy)):
        assert_one_line_error(res, "images.parquet", "does not match")
    with pytest.raises(DamagedStoreError, match="images.parquet"):
        open_index(store_copy, "tiny-vit")


def test_info_says_not_verified_and_verify_hashes_every_file(store_copy):
    res = run_cli("info", store_copy)
    assert res.exit_code == 0, res.output
    assert "not verified" in res.stdout and "healthy" not in res.stdout
    assert "info --verify" in res.stdout
    res = run_cli("info", "--verify", store_copy)
    assert res.exit_code == 0 and "verified, every file matches" in res.stdout, res.output
    # a change that keeps the size and the date slips past the fast check, not --verify
    path = store_copy / "tiny-vit" / "images.npy"
    st = path.stat()
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    path.write_bytes(bytes(data))
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert run_cli("info", store_copy).exit_code == 0
    res = run_cli("info", "--verify", store_copy)
    assert_one_line_error(res, "images.npy", "sha256")
    assert "DAMAGED" in res.stdout and "images.npy" in res.stdout


def test_info_verify_lists_every_damaged_file(store_copy):
    for name in ("tiny-vit/images.faiss", "captions.parquet"):
        path = store_copy / name
        path.write_bytes(path.read_bytes()[:-5])
    res = run_cli("info", "--verify", "--json", store_copy)
    assert_one_line_error(res, "1 more damaged file")
    damaged = json.loads(res.stdout)["damaged"]
    assert len(damaged) == 2 and any("images.faiss" in d for d in damaged)
    assert any("captions.parquet" in d for d in damaged)


# ----------------------------------------------------------------------------- inputs
def _colors(tmp_path: Path) -> Path:
    root = tmp_path / "colors"
    shutil.copytree(COLORS, root)
    return root


def test_folder_captions_naming_an_absolute_path_are_one_line(tmp_path):
    root = _colors(tmp_path)
    outside = tmp_path / "elsewhere.jpg"
    shutil.copy(root / "red" / "00.jpg", outside)
    with open(root / "captions.csv", "a", encoding="utf-8") as fh:
        fh.write(f"{outside},an image from elsewhere\n")
    res = run_cli("build", root, "--backbone", "tiny-vit", "--out", tmp_path / "out",
                  "--workers", 0, "--no-progress")
    assert_one_line_error(res, "captions.csv", "outside the data root")


def _coco(tmp_path: Path, file_names: list[str], extra_annotation: dict | None = None) -> Path:
    """A small COCO data set: 4 images per class (cat, dog) from the colors JPEGs."""
    root = tmp_path / "coco"
    (root / "images").mkdir(parents=True)
    sources = sorted((COLORS / "red").glob("*.jpg")) + sorted((COLORS / "green").glob("*.jpg"))
    images, anns = [], []
    for i, src in enumerate(sources):
        shutil.copy(src, root / "images" / f"{i:02d}.jpg")
        name = file_names[i] if i < len(file_names) else f"{i:02d}.jpg"
        images.append({"id": i + 1, "file_name": name, "width": 30, "height": 32})
        anns.append({"id": i + 1, "image_id": i + 1, "category_id": 1 + i // 4,
                     "bbox": [1, 1, 10, 10], "area": 100})
    if extra_annotation:
        anns.append(extra_annotation)
    cats = [{"id": 1, "name": "cat"}, {"id": 2, "name": "dog"}, {"id": 3, "name": "person"}]
    (root / "instances.json").write_text(json.dumps(
        {"images": images, "annotations": anns, "categories": cats}))
    (root / "coco.yaml").write_text(
        "name: coco-test\nsource: coco\ninstances: instances.json\nimages: images\n"
        f"classes: [cat, dog]\nroot: {root}\n")
    return root


@pytest.mark.parametrize("name", ["../../outside/x.jpg", "/etc/passwd"])
def test_coco_file_names_outside_the_root_are_refused(tmp_path, name):
    from clipindex.sources import load_dataset

    root = _coco(tmp_path, [name])
    with pytest.raises(DataError, match="outside the data root"):
        load_dataset(root / "coco.yaml")
    res = run_cli("build", root / "coco.yaml", "--backbone", "tiny-vit", "--out",
                  tmp_path / "out", "--workers", 0, "--no-progress")
    assert_one_line_error(res, "outside the data root", "--allow-outside-root")
    ds = load_dataset(root / "coco.yaml", allow_outside_root=True)
    assert ds.info["config"]["allow_outside_root"] is True
    assert any(Path(f).is_absolute() for f in ds.images["file"])


def test_coco_unknown_category_ids_are_reported(tmp_path):
    from clipindex.sources import load_dataset

    root = _coco(tmp_path, [], {"id": 99, "image_id": 1, "category_id": 77,
                                "bbox": [0, 0, 2, 2], "area": 4})
    assert load_dataset(root / "coco.yaml").info["unknown_category_ids"] == {
        "annotations": 1, "ids": 1, "first_ids": [77]}
    res = run_cli("build", root / "coco.yaml", "--backbone", "tiny-vit", "--out",
                  tmp_path / "out", "--workers", 0, "--batch-size", 4, "--no-progress")
    assert res.exit_code == 0, res.output
    assert "1 annotation(s) name unknown category ids (first: 77)" in res.stdout
    info = json.loads((tmp_path / "out" / "coco-test" / "dataset.json").read_text())
    assert info["unknown_category_ids"]["first_ids"] == [77]


def _damage(path: Path, section: str, field: str, value: object) -> None:
    """Set ``field`` of the first entry of ``section`` in a COCO JSON file."""
    data = json.loads(path.read_text())
    data[section][0][field] = value
    path.write_text(json.dumps(data))


def _build(root: Path, out: Path):
    return run_cli("build", root / "coco.yaml", "--backbone", "tiny-vit", "--out", out,
                   "--workers", 0, "--batch-size", 4, "--no-progress")


@pytest.mark.parametrize("section,field,value,needle", [
    ("images", "width", "big", "image 1 has a bad width 'big'"),
    ("images", "height", [1], "image 1 has a bad height [1]"),
    ("images", "file_name", None, "image 1 has a bad file_name None"),
    ("images", "id", "1", "entry 0 of 'images' has a bad id '1'"),
    ("images", "id", 2, "image id 2 is used by more than one image"),
    ("annotations", "bbox", "x", "annotation 1 has a bad bbox 'x'"),
    ("annotations", "bbox", [1, 2, 3], "annotation 1 has a bad bbox [1, 2, 3]"),
    ("annotations", "image_id", "1", "annotation 1 has a bad image_id '1'"),
    ("annotations", "image_id", 99, "annotation 1 names image 99, which is not in 'images'"),
    ("annotations", "category_id", None, "annotation 1 has a bad category_id None"),
    ("categories", "name", 5, "category 1 (5) needs a whole-number id and a name"),
])
def test_coco_values_of_the_wrong_type_are_one_line(tmp_path, section, field, value, needle):
    from clipindex.sources import load_dataset

    root = _coco(tmp_path, [])
    _damage(root / "instances.json", section, field, value)
    with pytest.raises(DataError, match=re.escape(needle)):
        load_dataset(root / "coco.yaml")
    assert_one_line_error(_build(root, tmp_path / "out"), "instances.json", needle)


def test_add_refuses_a_coco_value_of_the_wrong_type_in_one_line(tmp_path):
    root = _coco(tmp_path, [])
    res = _build(root, tmp_path / "out")
    assert res.exit_code == 0, res.output
    _damage(root / "instances.json", "images", "width", "big")
    res = run_cli("add", root / "coco.yaml", "--index", tmp_path / "out" / "coco-test",
                  "--workers", 0, "--no-progress")
    assert_one_line_error(res, "instances.json", "image 1 has a bad width 'big'")


@pytest.mark.parametrize("sampler", ["numpy", "study"])
@pytest.mark.parametrize("caption", [None, 123, {"a": 1}, "  "])
def test_coco_captions_that_are_not_text_are_one_line(tmp_path, sampler, caption):
    from clipindex.sources import load_dataset

    root = _coco(tmp_path, [])
    caps = [{"id": 100 + i, "image_id": i, "caption": f"picture {i}"} for i in range(1, 9)]
    with open(root / "coco.yaml", "a", encoding="utf-8") as fh:
        fh.write("captions: captions.json\n")
    study = {"sampler": "study", "per_class": 4, "drop_multi_target": False}
    overrides = study if sampler == "study" else {}
    (root / "captions.json").write_text(json.dumps({"annotations": caps}))
    assert len(load_dataset(root / "coco.yaml", **overrides).captions) == 8  # the fixture
    caps[4]["caption"] = caption
    (root / "captions.json").write_text(json.dumps({"annotations": caps}))
    needle = f"caption annotation 105 (image 5) has a bad caption {caption!r}"
    with pytest.raises(DataError, match=re.escape(needle)):
        load_dataset(root / "coco.yaml", **overrides)
    if sampler == "numpy":
        assert_one_line_error(_build(root, tmp_path / "out"), "captions.json",
                              "caption annotation 105 (image 5) has a bad caption")


def test_image_knn_k_larger_than_the_support_set_is_capped_with_a_note(store_copy):
    res = run_cli("classify", "--index", store_copy, "--backbone", "tiny-vit", "--method",
                  "image-knn", "--shots", 2, "--k", 10_000_000, "--json")
    assert res.exit_code == 0, res.output
    assert json.loads(res.stdout)["k"] == 6  # 2 shots x 3 classes
    notes = [line for line in res.stderr.splitlines() if line.startswith("Note:")]
    assert len(notes) == 1 and "k=10000000" in notes[0] and "using k=6" in notes[0]


def test_offline_tag_weights_fail_fast_quietly_and_whole(monkeypatch):
    from huggingface_hub import constants

    from clipindex.encode import load_encoder

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(constants, "ENDPOINT", "http://127.0.0.1:9")  # refused at once
    t0 = time.perf_counter()
    with pytest.raises(ModelLoadError) as info:
        load_encoder("ViT-B/32", device="cpu")
    assert time.perf_counter() - t0 < 8  # the hub's retries took ~25 s per file
    message = str(info.value)
    assert "cannot be reached" in message and "--pretrained /path/to/" in message
    assert message.endswith("open_clip_model.safetensors)")  # whole, not cut
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ModelLoadError, match="HF_HUB_OFFLINE is set"):
        load_encoder("ViT-B/32", device="cpu")


def test_offline_build_is_one_line(tmp_path, monkeypatch):
    from huggingface_hub import constants

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(constants, "ENDPOINT", "http://127.0.0.1:9")
    root = _colors(tmp_path)
    t0 = time.perf_counter()
    res = run_cli("build", root, "--backbone", "ViT-B/32", "--out", tmp_path / "out",
                  "--no-progress")
    assert time.perf_counter() - t0 < 8
    assert_one_line_error(res, "ViT-B/32", "cannot be reached", "--pretrained")


def test_a_yaml_tag_is_refused_as_not_allowed(tmp_path):
    from clipindex.config import load_dataset_config

    path = tmp_path / "evil.yaml"
    path.write_text("name: x\nsource: folder\nroot: !!python/object/apply:os.getcwd []\n")
    with pytest.raises(ConfigError, match="tag 'tag:yaml.org,2002:python/object/apply:os.getcwd'"
                       ".*not allowed") as info:
        load_dataset_config(path)
    assert "fix the syntax" not in str(info.value)
    res = run_cli("build", path, "--backbone", "tiny-vit")
    assert_one_line_error(res, "not allowed")


def test_exif_rotated_images_record_their_displayed_size(tmp_path):
    from PIL import Image

    from clipindex.sources import load_dataset

    root = tmp_path / "rot"
    for cls in ("a", "b"):
        (root / cls).mkdir(parents=True)
        for i, orientation in enumerate((1, 6)):
            im = Image.new("RGB", (40, 20), (200, 10, 10))
            exif = Image.Exif()
            exif[0x0112] = orientation
            im.save(root / cls / f"{i}.jpg", exif=exif)
    images = load_dataset(root).images.set_index("file")
    assert images.loc["a/0.jpg", ["width", "height"]].tolist() == [40, 20]
    assert images.loc["a/1.jpg", ["width", "height"]].tolist() == [20, 40]  # turned a quarter


def test_local_weights_are_rechecked_by_size_and_mtime_not_rehashed(
        tmp_path, use_fake_encoders, monkeypatch):
    from clipindex.store import manifest as manifest_module

    ds = make_image_dataset(tmp_path / "data", 4)
    ckpt = tmp_path / "w" / "weights.bin"
    ckpt.parent.mkdir()
    ckpt.write_bytes(b"weights one")
    build_store(ds, ["fake-a"], out=tmp_path / "out", pretrained=str(ckpt), **KW)
    hashed = []
    real = manifest_module._weights_sha256
    monkeypatch.setattr(manifest_module, "_weights_sha256",
                        lambda path: hashed.append(path) or real(path))
    idx = open_index(tmp_path / "out" / "toy", "fake-a__weights")
    idx.encoder()
    assert idx.manifest["checkpoint_stamp"][0][1] == len(b"weights one")
    assert hashed == []  # size and mtime as recorded: trusted, not re-hashed
    os.utime(ckpt, ns=(0, 10**18))  # moved date, same bytes: hashed once, still the same
    open_index(tmp_path / "out" / "toy", "fake-a__weights").encoder()
    assert hashed == [ckpt.resolve()] or hashed == [ckpt]
    ckpt.write_bytes(b"weights two")  # other weights under the recorded path: refused
    with pytest.raises(IndexMismatchError, match="weights .* differ"):
        open_index(tmp_path / "out" / "toy", "fake-a__weights").encoder()


# ----------------------------------------------------------------------------- dedup files
def _dedup(ddir: Path, root: Path, *extra: object):
    return run_cli("dedup", "--index", ddir, "--backbone", "tiny-vit", "--root", root, *extra)


def test_dedup_says_which_files_it_could_not_hash_for_exact_duplicates(colors_store, tmp_path):
    root = tmp_path / "colors"
    shutil.copytree(COLORS, root)
    shutil.copyfile(root / "red" / "00.jpg", root / "red" / "01.jpg")  # a byte copy
    found = _dedup(colors_store, root, "--json")
    assert found.exit_code == 0 and found.stderr == "", found.output
    exact = [{p["a"]["file"], p["b"]["file"]} for p in json.loads(found.stdout)
             if p["kind"] == "exact"]
    assert exact == [{"red/00.jpg", "red/01.jpg"}]
    (root / "red" / "00.jpg").unlink()  # its copy can no longer be found
    for extra in ((), ("--json",)):
        res = _dedup(colors_store, root, *extra)
        assert res.exit_code == 0, res.output
        (warning,) = res.stderr.strip().splitlines()
        assert warning.startswith("Warning: 1 of 12 image files could not be read under "
                                  f"{root} (e.g. red/00.jpg): exact duplicates were not "
                                  "checked for them"), warning
    assert all(p["kind"] != "exact" for p in json.loads(res.stdout))


def test_dedup_with_a_root_holding_none_of_the_files_is_one_line(colors_store, tmp_path,
                                                                 caplog):
    from clipindex.bench.breakdowns import write_leakage
    from clipindex.search.dedup import find_duplicates

    empty = tmp_path / "empty"
    empty.mkdir()
    assert_one_line_error(_dedup(colors_store, empty), "none of the 12 image files could be "
                          f"read under {empty}", "--root DATA_DIR")
    index = open_index(colors_store, "tiny-vit")
    with pytest.raises(DataError, match="none of the 12 image files"):
        find_duplicates(index, root=empty)
    with caplog.at_level(logging.WARNING):
        pairs = find_duplicates(index, root=empty, require_files=False)  # bench's way
        assert pairs.attrs["unreadable_files"] == 12 and not caplog.records
        write_leakage(colors_store, ["tiny-vit"], empty, tmp_path)  # finishes, warns once
    (warned,) = caplog.records
    assert warned.getMessage().startswith(f"12 image file(s) could not be read under {empty}: "
                                          "leakage.csv has no exact duplicates of them")
    assert (tmp_path / "leakage.csv").is_file()
    assert find_duplicates(index, root=COLORS).attrs["unreadable_files"] == 0


# ----------------------------------------------------------------------------- outputs
def _store_files(ddir: Path) -> dict[str, bytes]:
    return {p.relative_to(ddir).as_posix(): p.read_bytes()
            for p in sorted(ddir.rglob("*")) if p.is_file()}


def _output_commands(ddir: Path, tmp: Path) -> dict[str, list[object]]:
    """Every command that writes an output the user names, aimed inside the store."""
    results = tmp / "results"
    results.mkdir(exist_ok=True)
    (results / "tables.csv").write_text("")  # a results folder that renders
    bench = "builtin:demo"
    image = COLORS / "red" / "00.jpg"
    return {
        "classify": ["classify", "--index", ddir, "--backbone", "tiny-vit", "--method",
                     "prompt", "--out", ddir / "images.parquet"],
        "classify-image": ["classify", "--index", ddir, "--backbone", "tiny-vit", "--method",
                           "prompt", "--image", image, "--out", ddir / "preds.csv"],
        "report": ["report", results, "--out", ddir / "dataset.json"],
        "explain": ["explain", image, "--index", ddir, "--backbone", "tiny-vit",
                    "--out", ddir / "tiny-vit" / "manifest.json"],
        "explain-errors": ["explain", "--errors", results, "--backbone", "tiny-vit",
                           "--out", ddir / "tiny-vit" / "cams"],
        "bench": ["bench", bench, "--out", ddir / "results", "--root", tmp],
        "demo": ["demo", "--out", ddir / "tiny-vit"],
        "build": ["build", COLORS, "--backbone", "tiny-vit", "--out", ddir],
        "bench-index-root": ["bench", bench, "--out", tmp / "r", "--root", tmp,
                             "--index-root", ddir / "tiny-vit"],
    }


@pytest.mark.parametrize("command", ["classify", "classify-image", "report", "explain",
                                     "explain-errors", "bench", "demo", "build",
                                     "bench-index-root"])
def test_an_output_inside_the_store_is_refused_before_anything_is_written(
        store_copy, tmp_path, command):
    before = _store_files(store_copy)
    args = _output_commands(store_copy, tmp_path)[command]
    option = "--index-root" if "--index-root" in args else "--out"
    out = str(args[args.index(option) + 1])
    assert_one_line_error(run_cli(*args), f"{option} {out} is ",
                          f"the store {store_copy.resolve()}; write it elsewhere")
    assert _store_files(store_copy) == before  # nothing added, nothing replaced
    assert run_cli("info", store_copy).exit_code == 0


def test_outputs_beside_the_store_are_written_and_the_library_refuses_too(store_copy,
                                                                         tmp_path):
    from clipindex.classifiers import write_predictions
    from clipindex.report import write_report

    res = _classify(store_copy, "--out", store_copy.parent / "preds.csv")  # beside: fine
    assert res.exit_code == 0 and (store_copy.parent / "preds.csv").is_file(), res.output
    results = _output_commands(store_copy, tmp_path)["report"][1]
    assert write_report(results, tmp_path / "r.html").is_file()
    frame = pd.read_csv(store_copy.parent / "preds.csv")
    for call in (lambda: write_predictions(frame, store_copy / "captions.parquet"),
                 lambda: write_report(results, store_copy / "tiny-vit" / "r.html"),
                 lambda: write_report(results, store_copy)):
        with pytest.raises(UserInputError, match="write it elsewhere"):
            call()
    assert "captions.parquet" in {p.name for p in store_copy.iterdir()}


# ----------------------------------------------------------------------------- arguments
def test_group_by_row_id_is_refused_and_every_listed_column_is_accepted(store_copy):
    line = assert_one_line_error(_classify(store_copy, "--group-by", "row_id"),
                                 "cannot group by 'row_id'", "unique per image")
    assert "row_id" not in line.split("group by one of: ")[1].split(", ")
    line = assert_one_line_error(_classify(store_copy, "--group-by", "nope"), "no column 'nope'")
    listed = line.split("columns: ")[1].split(", ")
    assert "row_id" not in listed and "label" in listed
    for column in listed:
        res = _classify(store_copy, "--group-by", column)
        assert res.exit_code == 0, (column, res.output)
        assert {g["column"] for g in json.loads(res.stdout)["groups"]} == {column}


def test_bench_group_by_row_id_is_refused_in_one_line(store_copy, tmp_path):
    (tmp_path / "colors.yaml").write_text(f"name: colors\nsource: folder\nroot: {COLORS}\n")
    bench = tmp_path / "bench.yaml"
    bench.write_text("name: b\ndataset: colors.yaml\nbackbones: [tiny-vit]\nmethods: [prompt]\n"
                     "ensembles: []\nretrieval: false\n")
    res = run_cli("bench", bench, "--out", tmp_path / "results", "--index-root",
                  store_copy.parent, "--group-by", "row_id", "--no-progress")
    assert_one_line_error(res, "cannot group by 'row_id'", "group by one of: file")


@pytest.mark.parametrize("spec", ["=red,green", "red=,green", "red,green= "])
def test_an_empty_class_or_prompt_name_is_one_line(store_copy, spec):
    assert_one_line_error(_classify(store_copy, "--classes", spec), f"empty class in {spec!r}")


@pytest.mark.parametrize("call,needle", [
    (lambda c: c.load_dataset({"name": "x"}), "source must be a path (str or Path)"),
    (lambda c: c.load_dataset(5), "got int"),
    (lambda c: c.load_dataset(""), "source is an empty path"),
    (lambda c: c.config.DatasetConfig(name=5, source="folder", root="."),
     "Field 'name' must be a folder name"),
    (lambda c: c.load_dataset(COLORS, root=5), "root must be a path"),
    (lambda c: c.load_dataset(c.config.DatasetConfig(name="x", source="folder", root=str(COLORS),
                                                      classes="red")),
     "Field 'classes' in dataset config 'x' must be a list"),
    (lambda c: c.sources.dataset_fingerprint({"images": 1}), "give a Dataset"),
    (lambda c: c.sources.fingerprint([], []), "images must be a pandas DataFrame"),
], ids=["dict", "int", "empty", "name", "root", "config", "dataset_fingerprint", "fingerprint"])
def test_sources_entry_points_refuse_a_wrong_type_in_one_line(call, needle):
    import clipindex
    import clipindex.config
    import clipindex.sources
    from clipindex.errors import UserInputError

    with pytest.raises(UserInputError) as info:
        call(clipindex)
    assert needle in str(info.value) and "\n" not in str(info.value)
