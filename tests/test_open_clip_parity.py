"""A store's vectors are open_clip's vectors (issue 32).

The reference is computed with open_clip alone, never with clipindex code:
``open_clip.create_model_and_transforms("local-dir:" + folder)`` and its ``preprocess`` on
``Image.open(f)`` (upright: ``ImageOps.exif_transpose``, which clipindex applies too) and
``.convert("RGB")``, then ``encode_image``; texts through ``get_tokenizer`` and
``encode_text``. Every stored image vector of every tiny backbone must be within cosine
0.9999 of it, and clipindex's zero-shot accuracy and Recall@K must be CLIP_benchmark's
(``clip_benchmark/metrics/zeroshot_classification.py`` / ``zeroshot_retrieval.py``)
computed on the reference vectors, within one image.
"""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from fixtures_robust import assert_one_line_error, run_cli
from PIL import Image, ImageOps

BOUND = 0.9999
TINY = ("tiny-vit", "tiny-rn", "tiny-vit-s")
SHIPPED = Path(__file__).resolve().parents[1] / "clipindex" / "tiny"  # the shipped folders
STORE_V1 = Path(__file__).resolve().parent / "data" / "store-v1"


def _unit(x: torch.Tensor) -> np.ndarray:
    return (x / x.norm(dim=-1, keepdim=True)).float().numpy()


def _open_clip(folder: Path):
    import open_clip

    model, _, preprocess = open_clip.create_model_and_transforms(f"local-dir:{folder}")
    return model.eval(), preprocess, open_clip.get_tokenizer(f"local-dir:{folder}")


@torch.no_grad()
def reference_images(model, preprocess, files) -> np.ndarray:
    """open_clip's own vectors of image files (upright, RGB), in batches of 64."""
    parts = []
    for i in range(0, len(files), 64):
        x = torch.stack([preprocess(ImageOps.exif_transpose(Image.open(f)).convert("RGB"))
                         for f in files[i:i + 64]])
        parts.append(_unit(model.encode_image(x)))
    return np.concatenate(parts)


@torch.no_grad()
def reference_texts(model, tokenizer, texts) -> np.ndarray:
    return np.concatenate([_unit(model.encode_text(tokenizer(texts[i:i + 256])))
                           for i in range(0, len(texts), 256)])


@pytest.fixture(scope="module")
def reference(demo_store: Path, demo_world: Path) -> dict:
    """Per tiny backbone: open_clip's image vectors of the demo store's files, its caption
    vectors, and the zero-shot class vectors ("a photo of a {c}")."""
    import pandas as pd

    torch.set_num_threads(2)
    images = pd.read_parquet(demo_store / "images.parquet")
    captions = pd.read_parquet(demo_store / "captions.parquet")
    files = [demo_world / f for f in images["file"]]
    classes = sorted(images["label"].dropna().unique())
    out = {"images": images, "captions": captions, "classes": classes}
    for name in TINY:
        model, preprocess, tokenizer = _open_clip(SHIPPED / name)
        out[name] = {
            "images": reference_images(model, preprocess, files),
            "captions": reference_texts(model, tokenizer, captions["text"].tolist()),
            "classes": reference_texts(model, tokenizer, [f"a photo of a {c}" for c in classes]),
        }
    return out


def test_every_stored_image_vector_is_open_clips(demo_store: Path, reference: dict) -> None:
    for name in TINY:
        manifest = json.loads((demo_store / name / "manifest.json").read_text())
        assert manifest["decode_route"] == "reference"
        stored = np.load(demo_store / name / "images.npy")
        cos = (stored * reference[name]["images"]).sum(1)
        assert len(cos) == 200 and cos.min() >= BOUND, (name, cos.min(), int(cos.argmin()))
        text = (np.load(demo_store / name / "captions.npy") * reference[name]["captions"]).sum(1)
        assert text.min() >= BOUND, (name, text.min())


# CLIP_benchmark's definitions, restated (not its code):
# - zero-shot top-1: class vector = normalise(mean over templates of normalised text
#   vectors); prediction = argmax of image . class vectors; accuracy = mean(pred == label).
# - text->image ("image_retrieval_recall@k"): per caption, 1 if its image is among the k
#   images of highest score; mean over captions.
# - image->text ("text_retrieval_recall@k"): per image, 1 if at least one of its captions
#   is among the k captions of highest score; mean over images.
def _cb_zero_shot(images: np.ndarray, class_vectors: np.ndarray, labels, classes) -> float:
    pred = np.asarray(classes)[(images @ class_vectors.T).argmax(1)]
    return float(np.mean(pred == np.asarray(labels)))


def _cb_recall(scores: np.ndarray, positives: np.ndarray, k: int) -> float:
    top = np.argsort(-scores, axis=1, kind="stable")[:, :k]
    return float(np.take_along_axis(positives, top, axis=1).any(axis=1).mean())


def test_zero_shot_and_recall_are_clip_benchmarks(demo_store: Path, reference: dict) -> None:
    from clipindex.bench.outputs import retrieval_table
    from clipindex.classifiers.runner import classify

    images, captions, classes = reference["images"], reference["captions"], reference["classes"]
    owner = captions["image_row_id"].to_numpy()
    positives = owner[:, None] == images["row_id"].to_numpy()[None, :]  # (captions, images)
    table = retrieval_table(demo_store, list(TINY), ks=(1, 5, 10)).set_index("backbone")
    for name in TINY:
        ref = reference[name]
        result = classify(demo_store, name, "prompt")  # "a photo of a {}", the test rows
        test = result.predictions["row_id"].to_numpy()
        ours = float(np.mean(result.predictions["true"] == result.predictions["predicted"]))
        theirs = _cb_zero_shot(ref["images"][test], ref["classes"],
                               images["label"].to_numpy()[test], classes)
        assert abs(ours - theirs) <= 1 / len(test) + 1e-9, (name, ours, theirs)
        assert ours == pytest.approx(result.metrics["accuracy"])
        scores = ref["captions"] @ ref["images"].T
        for k in (1, 5, 10):
            t2i = _cb_recall(scores, positives, k)
            i2t = _cb_recall(scores.T, positives.T, k)
            row = table.loc[name]
            assert abs(row[f"t2i_R@{k}"] - t2i) <= 1 / len(captions) + 1e-4, (name, k)
            assert abs(row[f"i2t_R@{k}"] - i2t) <= 1 / len(images) + 1e-4, (name, k)


# ----------------------------------------------------------------------------- routes
def _photos(root: Path) -> list[str]:
    """Two classes of JPEGs large enough for draft decoding (a 48 px model: 1/8 scale),
    one stored sideways (EXIF orientation 6), one greyscale, one PNG."""
    rng = np.random.default_rng(0)
    rel = []
    for c, tint in (("cat", (40, 0, 0)), ("dog", (0, 0, 40))):
        (root / c).mkdir(parents=True)
        for i in range(3):
            yy, xx = np.mgrid[0:480, 0:640]
            img = np.stack([(xx * (i + 1)) % 256, (yy * 3) % 256, (xx + yy) % 256], -1)
            img = np.clip(img + rng.normal(0, 40, img.shape) + tint, 0, 255).astype(np.uint8)
            pic = Image.fromarray(img)
            name = f"{c}/{i}.jpg"
            if i == 0:
                exif = Image.Exif()
                exif[0x0112] = 6
                pic.save(root / name, quality=90, exif=exif)
            elif i == 1 and c == "dog":
                name = f"{c}/{i}.png"
                pic.save(root / name)
            else:
                (pic.convert("L") if c == "cat" and i == 2 else pic).save(root / name,
                                                                          quality=90)
            rel.append(name)
    return rel


@pytest.fixture(scope="module")
def photos(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("photos") / "photos"
    _photos(root)
    return root


def _cosines(bdir: Path, root: Path, name: str) -> np.ndarray:
    """Cosine of each stored image vector to open_clip's; rows the build skipped (files
    that do not decode) are left out."""
    import pandas as pd

    model, preprocess, _ = _open_clip(SHIPPED / name)
    skipped = {s["row_id"] for s in json.loads((bdir / "manifest.json").read_text())["skipped"]}
    rows = [r for r in pd.read_parquet(bdir.parent / "images.parquet").itertuples()
            if r.row_id not in skipped]
    ref = reference_images(model, preprocess, [root / r.file for r in rows])
    return (np.load(bdir / "images.npy")[[r.row_id for r in rows]] * ref).sum(1)


def test_default_route_is_open_clips_and_draft_is_recorded(photos: Path, tmp_path: Path
                                                           ) -> None:
    from clipindex.encode import encode_query_images
    from clipindex.store import build_store, open_index

    (ref_dir,) = build_store(photos, ["tiny-vit-s"], out=tmp_path / "ref", workers=0,
                             progress=False)
    (draft_dir,) = build_store(photos, ["tiny-vit-s"], out=tmp_path / "draft", workers=0,
                               decode="draft", progress=False)
    exact, drafted = _cosines(ref_dir, photos, "tiny-vit-s"), _cosines(draft_dir, photos,
                                                                       "tiny-vit-s")
    assert exact.min() >= BOUND, exact
    assert drafted.min() < BOUND, drafted  # draft is not open_clip's pixels: the bound bites
    for bdir, route in ((ref_dir, "reference"), (draft_dir, "draft")):
        index = open_index(bdir.parent, "tiny-vit-s")
        assert index.manifest["decode_route"] == route
        assert index.encoder().decode_route == route
        files = [photos / f for f in index.images["file"]]  # queried by file: itself
        query = encode_query_images(index.encoder(), files)
        assert (query * index.image_vectors).sum(1).min() > 0.99999, route
    info = run_cli("info", draft_dir.parent)
    assert info.exit_code == 0 and "decode draft (JPEG draft mode" in info.stdout


def test_add_keeps_the_store_route_and_refuses_another(photos: Path, tmp_path: Path) -> None:
    from clipindex.store import add_to_store, build_store

    data = tmp_path / "photos"
    shutil.copytree(photos, data)
    (bdir,) = build_store(data, ["tiny-vit-s"], out=tmp_path / "out", workers=0,
                          decode="draft", progress=False)
    shutil.copy(data / "cat" / "1.jpg", data / "cat" / "9.jpg")
    res = run_cli("add", data, "--index", bdir.parent, "--decode", "pil", "--no-progress")
    assert_one_line_error(res, "draft", "--decode pil", "--rebuild")
    result = add_to_store(data, index=bdir.parent, workers=0, progress=False)
    assert result.added == 1
    manifest = json.loads((bdir / "manifest.json").read_text())
    assert manifest["decode_route"] == "draft"
    vectors = np.load(bdir / "images.npy")  # the copy was decoded as its original was
    assert float(vectors[-1] @ vectors[1]) > 0.99999  # rows: cat/0, cat/1, cat/2, ...


def test_old_store_is_draft_in_info_and_rebuild_reencodes_it(tmp_path: Path, caplog) -> None:
    from clipindex.sources import load_dataset
    from clipindex.store import build_store

    shutil.copytree(STORE_V1, tmp_path / "v1")
    ddir = tmp_path / "v1" / "indexes" / "colors"
    info = run_cli("info", ddir)
    assert info.exit_code == 0
    assert "decode draft (built before clipindex recorded the decode route" in info.stdout
    dataset = load_dataset(tmp_path / "v1" / "colors")
    with caplog.at_level(logging.INFO, logger="clipindex.store"):
        build_store(dataset, ["tiny-vit"], out=ddir.parent, workers=0, progress=False)
    assert "up to date" in caplog.text and "--rebuild re-encodes it" in caplog.text
    assert "decode_route" not in json.loads((ddir / "tiny-vit" / "manifest.json").read_text())
    (bdir,) = build_store(dataset, ["tiny-vit"], out=ddir.parent, workers=0, progress=False,
                          rebuild=True)
    assert json.loads((bdir / "manifest.json").read_text())["decode_route"] == "reference"
    cos = _cosines(bdir, tmp_path / "v1" / "colors", "tiny-vit")
    assert len(cos) == 11 and cos.min() >= BOUND  # all but the truncated file
    assert "decode reference" in run_cli("info", ddir).stdout


@pytest.mark.slow
def test_random_init_vit_b32_and_rn50_see_open_clips_pixels(photos: Path) -> None:
    """``--pretrained none`` (seeded) ViT-B/32 and RN50: the tensor clipindex feeds the
    model is open_clip's ``preprocess`` output to the bit, and the vectors agree."""
    import open_clip

    from clipindex.encode import load_encoder
    from clipindex.store.manifest import RANDOM_INIT_SEED

    files = sorted(str(p) for p in photos.rglob("*.*"))[:4]
    for name, model_name in (("ViT-B/32", "ViT-B-32"), ("RN50", "RN50")):
        torch.manual_seed(RANDOM_INIT_SEED)  # what clipindex seeds --pretrained none with
        model, _, preprocess = open_clip.create_model_and_transforms(
            model_name, pretrained=None, force_quick_gelu=False)
        x = torch.stack([preprocess(ImageOps.exif_transpose(Image.open(f)).convert("RGB"))
                         for f in files])
        with torch.no_grad():
            ref = _unit(model.eval().encode_image(x))
        torch.manual_seed(RANDOM_INIT_SEED)
        encoder = load_encoder(name, pretrained="none", device="cpu")
        seen: list[torch.Tensor] = []
        encode_image = encoder.model.encode_image

        def spy(t: torch.Tensor, f=encode_image, s=seen) -> torch.Tensor:
            s.append(t.clone())  # the normalised input clipindex gives the model
            return f(t)

        encoder.model.encode_image = spy
        vectors, _ = encoder.encode_images(files, workers=0, progress=False)
        assert torch.equal(torch.cat(seen).contiguous(), x), name
        assert (vectors * ref).sum(1).min() >= BOUND, name
