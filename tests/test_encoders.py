"""encoders.py: batched encoding equals open_clip's own preprocessing and model, per batch size,
per worker count; bad files become zero rows with reasons; checkpoints load; text batches."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from clipindex.encode.backbones import resolve_backbone
from clipindex.encode.encoder import (
    Encoder,
    ImageBatch,
    load_encoder,
    resolve_device,
    resolve_precision,
)
from clipindex.errors import UserInputError

TEST_MODEL = "clipindex-test-vit"
# A ViT at 32 px, 2 layers, width 64: builds and encodes in milliseconds on one core.
TEST_CONFIG = {
    "embed_dim": 32,
    "vision_cfg": {"image_size": 32, "layers": 2, "width": 64, "patch_size": 8,
                   "head_width": 32},
    "text_cfg": {"context_length": 16, "vocab_size": 49408, "width": 64, "heads": 2,
                 "layers": 2},
}


def register_test_model(folder: Path) -> str:
    import open_clip

    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"{TEST_MODEL}.json").write_text(json.dumps(TEST_CONFIG))
    open_clip.add_model_config(folder)
    try:  # the tiny backbones' tokenizer paths survive open_clip's registry rescan
        from clipindex import tiny

        tiny.register_configs()
    except (ImportError, AttributeError):
        pass
    return TEST_MODEL


@pytest.fixture(scope="session")
def encoder(tmp_path_factory: pytest.TempPathFactory) -> Encoder:
    torch.set_num_threads(2)
    register_test_model(tmp_path_factory.mktemp("configs"))
    torch.manual_seed(0)
    return load_encoder(TEST_MODEL, pretrained="none", device="cpu")


def _scene(width: int, height: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:height, 0:width]
    img = np.stack([xx / width, yy / height, (xx + yy) / (width + height)], -1) * 255
    for _ in range(4):
        x0, y0 = rng.integers(0, width - 12), rng.integers(0, height - 12)
        img[y0:y0 + 12, x0:x0 + 12] = rng.integers(0, 256, 3)
    return img.astype(np.uint8)


@pytest.fixture(scope="session")
def image_files(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    """20 PNGs (lossless) of varied sizes and aspect ratios."""
    folder = tmp_path_factory.mktemp("images")
    files = []
    for i in range(20):
        width, height = [(80, 60), (45, 90), (33, 33), (120, 50), (64, 64)][i % 5]
        path = folder / f"img{i:02d}.png"
        Image.fromarray(_scene(width, height, seed=i)).save(path)
        files.append(path)
    return files


def test_encoder_reports_its_shape(encoder: Encoder) -> None:
    assert (encoder.image_size, encoder.embed_dim, encoder.context_length) == (32, 32, 16)
    assert encoder.params == sum(p.numel() for p in encoder.model.parameters()) > 0
    assert encoder.device.type == "cpu" and encoder.precision == "fp32"
    assert encoder.spec.name == f"{TEST_MODEL}__none" and encoder.checkpoint_sha256 is None


def test_preprocessing_equals_open_clip(encoder: Encoder, image_files: list[Path]) -> None:
    mean = torch.tensor(encoder.mean).view(-1, 1, 1)
    std = torch.tensor(encoder.std).view(-1, 1, 1)
    expected, ours = [], []
    for path in image_files[:5]:
        with Image.open(path) as img:
            expected.append(encoder.preprocess(img))
            pixels = encoder._pipeline(img.convert("RGB"))
        assert pixels.dtype == torch.uint8 and pixels.shape == (3, 32, 32)
        ours.append((pixels.float() / 255 - mean) / std)
    torch.testing.assert_close(torch.stack(ours), torch.stack(expected), atol=1e-6, rtol=0)
    # and the vectors equal open_clip's model applied to open_clip's preprocess
    with torch.no_grad():
        reference = encoder.model.encode_image(torch.stack(expected), normalize=True).numpy()
    vectors, skipped = encoder.encode_images(image_files[:5], workers=0, progress=False)
    assert skipped == []
    np.testing.assert_allclose(vectors, reference, atol=1e-5)


def test_vectors_are_unit_and_independent_of_batching(encoder: Encoder,
                                                      image_files: list[Path]) -> None:
    big, _ = encoder.encode_images(image_files, batch_size=64, workers=0, progress=False)
    small, _ = encoder.encode_images(image_files, batch_size=7, workers=0, progress=False)
    assert big.dtype == np.float32 and big.shape == (20, 32)
    np.testing.assert_allclose(np.linalg.norm(big, axis=1), 1.0, atol=1e-5)
    np.testing.assert_allclose(small, big, atol=1e-5)
    assert len({tuple(np.round(v, 4)) for v in big}) == 20  # distinct images, distinct vectors


def test_worker_processes_give_identical_vectors(encoder: Encoder,
                                                 image_files: list[Path]) -> None:
    in_process, _ = encoder.encode_images(image_files, batch_size=8, workers=0, progress=False)
    workers, _ = encoder.encode_images(image_files, batch_size=8, workers=2, progress=False)
    np.testing.assert_array_equal(workers, in_process)


def test_iter_batches_start_and_absolute_indices(encoder: Encoder, image_files: list[Path],
                                                 tmp_path: Path) -> None:
    files = list(image_files[:10])
    files[8] = tmp_path / "missing.png"
    batches = list(encoder.iter_image_batches(files, batch_size=4, workers=0, progress=False,
                                              start=2))
    assert all(isinstance(b, ImageBatch) for b in batches)
    assert [(b.start, b.stop) for b in batches] == [(2, 6), (6, 10)]
    assert batches[1].skipped == [(8, "missing file")]
    assert not batches[1].vectors[2].any()
    full, _ = encoder.encode_images(files, workers=0, progress=False)
    np.testing.assert_allclose(np.concatenate([b.vectors for b in batches]), full[2:], atol=1e-6)
    assert list(encoder.iter_image_batches(files, start=10, workers=0, progress=False)) == []


def test_bad_files_are_zero_rows_with_reasons(encoder: Encoder, image_files: list[Path],
                                              tmp_path: Path) -> None:
    Image.fromarray(_scene(80, 60, 3)).save(tmp_path / "good.jpg", quality=90)
    data = (tmp_path / "good.jpg").read_bytes()
    (tmp_path / "truncated.jpg").write_bytes(data[: len(data) // 2])
    (tmp_path / "empty.jpg").write_bytes(b"")
    (tmp_path / "text.jpg").write_text("hello")
    files = [image_files[0], tmp_path / "truncated.jpg", image_files[1], tmp_path / "empty.jpg",
             tmp_path / "missing.jpg", tmp_path / "text.jpg", tmp_path / "good.jpg"]
    vectors, skipped = encoder.encode_images(files, batch_size=4, workers=2, progress=False)
    assert vectors.shape == (7, 32)
    assert skipped == [(1, "truncated image file"), (3, "empty file"), (4, "missing file"),
                       (5, "cannot identify image file")]
    np.testing.assert_array_equal(vectors[[1, 3, 4, 5]], 0.0)
    np.testing.assert_allclose(np.linalg.norm(vectors[[0, 2, 6]], axis=1), 1.0, atol=1e-5)
    clean, _ = encoder.encode_images(image_files[:2], workers=0, progress=False)
    np.testing.assert_allclose(vectors[[0, 2]], clean, atol=1e-5)


def test_colour_preserving_copies_encode_alike(encoder: Encoder, tmp_path: Path) -> None:
    from test_decode import write_png16_rgb

    scene = _scene(96, 72, seed=7)
    Image.fromarray(scene).save(tmp_path / "orig.png")
    Image.fromarray(scene).convert("RGBA").save(tmp_path / "rgba.png")
    Image.fromarray(scene).convert("CMYK").save(tmp_path / "cmyk.jpg", quality=95)
    write_png16_rgb(tmp_path / "rgb16.png", scene.astype(np.uint16) * 257)
    Image.fromarray(scene).convert("L").save(tmp_path / "gray.png")
    Image.fromarray(_scene(96, 72, seed=8)).save(tmp_path / "other.png")
    names = ["orig.png", "rgba.png", "cmyk.jpg", "rgb16.png", "gray.png", "other.png"]
    vectors, skipped = encoder.encode_images([tmp_path / n for n in names], workers=0,
                                             progress=False)
    assert skipped == []
    distance = 1.0 - vectors @ vectors[0]
    assert (distance[1:4] <= 0.02).all(), distance
    # A random-init encoder maps every image near every other (here another scene is at
    # ~0.005), so also demand the copies be 10x closer than a different image is.
    assert (distance[1:4] < distance[5] / 10).all(), distance
    assert distance[4] > distance[1:4].max()  # grayscale really lost colour


def test_encode_pil_matches_files(encoder: Encoder, image_files: list[Path]) -> None:
    images = [Image.open(p) for p in image_files[:6]]
    try:
        from_pil = encoder.encode_pil(images, batch_size=4)
    finally:
        for img in images:
            img.close()
    from_files, _ = encoder.encode_images(image_files[:6], workers=0, progress=False)
    np.testing.assert_allclose(from_pil, from_files, atol=1e-5)
    assert encoder.encode_pil([]).shape == (0, 32)


def test_encode_texts_batches_and_truncates(encoder: Encoder) -> None:
    texts = ["a photo of a cat", "a photo of a dog", "cow " * 200, ""]
    one = encoder.encode_texts(texts, batch_size=1)
    many = encoder.encode_texts(texts)
    assert many.shape == (4, 32) and many.dtype == np.float32
    np.testing.assert_allclose(one, many, atol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(many, axis=1), 1.0, atol=1e-5)
    assert encoder.encode_texts([]).shape == (0, 32)
    with pytest.raises(UserInputError):
        encoder.encode_texts("a single string")


def test_progress_bar_on_stderr(encoder: Encoder, image_files: list[Path],
                                capsys: pytest.CaptureFixture[str]) -> None:
    encoder.encode_images(image_files[:3], workers=0, progress=True)
    captured = capsys.readouterr()
    assert "img" in captured.err and captured.out == ""


@pytest.mark.parametrize("suffix", [".pt", ".safetensors"])
def test_local_checkpoint_file_loads_the_same_model(encoder: Encoder, image_files: list[Path],
                                                    tmp_path: Path, suffix: str) -> None:
    state = {k: v.detach().clone().contiguous() for k, v in encoder.model.state_dict().items()}
    path = tmp_path / f"weights{suffix}"
    if suffix == ".pt":
        torch.save(state, path)
    else:
        from safetensors.torch import save_file

        save_file(state, str(path))
    loaded = load_encoder(TEST_MODEL, pretrained=str(path), device="cpu")
    assert loaded.spec.name == f"{TEST_MODEL}__weights" and loaded.spec.source == "file"
    import hashlib

    assert loaded.checkpoint_sha256 == hashlib.sha256(path.read_bytes()).hexdigest()
    expected, _ = encoder.encode_images(image_files[:4], workers=0, progress=False)
    got, _ = loaded.encode_images(image_files[:4], workers=0, progress=False)
    np.testing.assert_allclose(got, expected, atol=1e-6)
    np.testing.assert_allclose(loaded.encode_texts(["a cow"]), encoder.encode_texts(["a cow"]),
                               atol=1e-6)


def test_bad_arguments_are_user_errors(encoder: Encoder, image_files: list[Path]) -> None:
    for kwargs in [{"batch_size": 0}, {"workers": -1}, {"start": 99}]:
        with pytest.raises(UserInputError):  # checked at the call, not at the first batch
            encoder.iter_image_batches(image_files, progress=False, **kwargs)
    with pytest.raises(UserInputError, match="sequence of paths"):
        encoder.encode_images(str(image_files[0]))
    with pytest.raises(UserInputError, match="CPU"):
        resolve_precision(torch.device("cpu"), "fp16")
    with pytest.raises(UserInputError, match="Unknown precision"):
        resolve_precision(torch.device("cpu"), "fp8")
    with pytest.raises(UserInputError):
        resolve_device("tpu")
    assert resolve_device(None).type == ("cuda" if torch.cuda.is_available() else "cpu")
    if not torch.cuda.is_available():
        with pytest.raises(UserInputError, match="CUDA is not available"):
            resolve_device("cuda")


def test_corrupt_checkpoint_is_a_model_load_error(tmp_path: Path, encoder: Encoder) -> None:
    from clipindex.errors import ModelLoadError

    bad = tmp_path / "broken.pt"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(ModelLoadError, match="broken.pt"):
        load_encoder(resolve_backbone(TEST_MODEL, str(bad)), device="cpu")


def test_a_checkpoint_of_another_architecture_is_one_short_line(tmp_path: Path,
                                                                 encoder: Encoder) -> None:
    from clipindex.errors import ModelLoadError

    other = tmp_path / "other.pt"  # every key renamed: torch lists them all as missing
    torch.save({f"other.{k}": v for k, v in encoder.model.state_dict().items()}, other)
    with pytest.raises(ModelLoadError, match="other.pt") as info:
        load_encoder(resolve_backbone(TEST_MODEL, str(other)), device="cpu")
    message = str(info.value)
    assert "\n" not in message and len(message) < 700, len(message)
    assert "another architecture" in message and "characters)" in message


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_fp16_matches_cpu(encoder: Encoder, image_files: list[Path]) -> None:
    cuda = load_encoder(TEST_MODEL, pretrained="none", device="cuda")
    cuda.model.load_state_dict(encoder.model.state_dict())
    assert cuda.precision == "fp16"
    got, _ = cuda.encode_images(image_files, workers=2, progress=False)
    expected, _ = encoder.encode_images(image_files, workers=0, progress=False)
    assert (np.sum(got * expected, axis=1) > 0.999).all()
    texts = ["a photo of a cat", "a dog", "three sheep on a green hill"]
    np.testing.assert_allclose(np.sum(cuda.encode_texts(texts) * encoder.encode_texts(texts),
                                      axis=1), 1.0, atol=1e-3)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_decode_routes_match_cpu(encoder: Encoder, image_files: list[Path],
                                      tmp_path: Path) -> None:
    # JPEG copies of the scenes: nvJPEG decodes them on the GPU, pil in the workers.
    jpegs = []
    for f in image_files:
        jpegs.append(tmp_path / f"{f.stem}.jpg")
        Image.open(f).convert("RGB").save(jpegs[-1], quality=95)
    cuda = load_encoder(TEST_MODEL, pretrained="none", device="cuda")
    cuda.model.load_state_dict(encoder.model.state_dict())
    expected, _ = encoder.encode_images(jpegs, workers=0, progress=False)
    for decode in ("nvjpeg", "pil"):
        got, skipped = cuda.encode_images(jpegs, workers=2, progress=False, decode=decode)
        assert skipped == [] and got.shape == expected.shape
        assert (np.sum(got * expected, axis=1) > 0.99).all(), decode


def test_local_dir_folder_loads_the_same_model(encoder: Encoder, image_files: list[Path],
                                               tmp_path: Path) -> None:
    from safetensors.torch import save_file

    folder = tmp_path / "my-clip"
    folder.mkdir()
    (folder / "open_clip_config.json").write_text(json.dumps({"model_cfg": TEST_CONFIG}))
    state = {k: v.detach().clone().contiguous() for k, v in encoder.model.state_dict().items()}
    save_file(state, str(folder / "open_clip_model.safetensors"))
    direct = load_encoder(f"local-dir:{folder}", device="cpu")
    via_pretrained = load_encoder(TEST_MODEL, pretrained=str(folder), device="cpu")
    assert direct.spec.name == "my-clip" and via_pretrained.spec.name == f"{TEST_MODEL}__my-clip"
    assert direct.checkpoint_sha256 == via_pretrained.checkpoint_sha256
    assert len(direct.checkpoint_sha256 or "") == 64
    expected, _ = encoder.encode_images(image_files[:3], workers=0, progress=False)
    for loaded in (direct, via_pretrained):
        got, _ = loaded.encode_images(image_files[:3], workers=0, progress=False)
        np.testing.assert_allclose(got, expected, atol=1e-6)


def test_embed_dim_falls_back_to_a_forward_pass(encoder: Encoder,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    # timm-backed towers have no output_dim; the encoder then measures one blank image
    monkeypatch.delattr(encoder.model.visual, "output_dim")
    assert encoder._find_embed_dim() == 32


def test_query_images_encode_as_the_store_does_and_fail_with_the_file(
        encoder: Encoder, image_files: list[Path], tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """``encode_query_images`` gives the vectors ``encode_images`` gives (one decode per
    file); a bad file fails by name, from its header before any pixel is decoded."""
    from clipindex.encode import QueryImageError, check_query_images, encode_query_images
    from clipindex.encode import queries as queries_mod

    expected, _ = encoder.encode_images(image_files[:3], workers=0, progress=False)
    np.testing.assert_array_equal(encode_query_images(encoder, image_files[:3]), expected)
    assert encode_query_images(encoder, image_files[0]).shape == (1, encoder.embed_dim)
    assert check_query_images(None) == []
    notes = tmp_path / "notes.jpg"
    notes.write_text("not an image")
    (tmp_path / "empty.png").write_bytes(b"")
    cut = tmp_path / "cut.jpg"
    cut.write_bytes(image_files[0].read_bytes()[:400])
    for path, reason in ((notes, "cannot identify image file"), (tmp_path / "no.jpg",
                         "missing file"), (tmp_path / "empty.png", "empty file"),
                         (tmp_path, "it is a folder")):
        with pytest.raises(QueryImageError, match=f"{path.name}': {reason}") as err:
            check_query_images([image_files[0], path])
        assert (err.value.path, err.value.reason) == (str(path), reason)
    calls = []
    real = queries_mod.identify
    monkeypatch.setattr(queries_mod, "identify", lambda p: calls.append(p) or real(p))
    with pytest.raises(QueryImageError, match="cut.jpg': truncated image file"):
        encode_query_images(encoder, [image_files[0], cut])  # decoded in encode_images
    assert calls == [image_files[0], cut]
