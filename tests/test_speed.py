"""Issue 21: settings chosen from the machine and the model, the GPU path's pieces run on
CPU (uint8 and nvJPEG routes, low-precision weights, out-of-memory back-off, torch exact
search), trimmed caption batches and model creation without a double weight init."""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from clipindex.encode import choose_settings, load_encoder, resolve_backbone
from clipindex.encode.create import create_model, no_weight_init
from clipindex.encode.encoder import Encoder
from clipindex.encode.text import can_trim
from clipindex.encode.tuning import model_gflops
from clipindex.errors import UserInputError
from clipindex.index.kinds import brute_force, build_index, search_index, torch_search

COS = 1 - 1e-5  # "changes no vector by more than 1e-5 in cosine"


@pytest.fixture(scope="module", autouse=True)
def one_thread() -> None:
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def files(small_world: Path) -> list[str]:
    return [str(p) for p in sorted((small_world / "val").glob("*.jpg"))[:24]]


@pytest.fixture(scope="module")
def encoders() -> dict[str, Encoder]:
    return {name: load_encoder(name, device="cpu") for name in ("tiny-vit", "tiny-rn")}


def _cos(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.sum(a * b, axis=1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))


# ----------------------------------------------------------------------------- settings
def test_settings_follow_cores_cost_and_device() -> None:
    vit_b32 = choose_settings(8.8, "cpu", cores=2)
    assert (vit_b32.batch_size, vit_b32.workers, vit_b32.threads) == (32, 1, 2)
    assert vit_b32.decode == "pil" and not vit_b32.channels_last and not vit_b32.auto_batch
    assert choose_settings(12.2, "cpu", cores=2, resnet=True).channels_last
    assert choose_settings(35.1, "cpu", cores=2).batch_size == 8  # ViT-B/16
    tiny = choose_settings(0.03, "cpu", cores=2)  # decode-bound: workers take the cores
    assert (tiny.workers, tiny.threads, tiny.batch_size) == (2, 1, 256)
    assert choose_settings(8.8, "cpu", cores=1).workers == 0  # one core: decode in-process
    wide = choose_settings(8.8, "cpu", cores=16)
    assert wide.threads == 16 and wide.workers == 1
    gpu = choose_settings(382.0, "cuda", cores=16)  # ViT-L/14@336
    assert (gpu.batch_size, gpu.decode, gpu.auto_batch, gpu.workers) == (256, "nvjpeg", True, 15)
    assert choose_settings(8.8, "cuda", cores=16).batch_size == 1024
    assert choose_settings(8.8, "cpu", cores=2) == vit_b32  # deterministic


def test_every_knob_can_be_given() -> None:
    s = choose_settings(382.0, "cuda", cores=16, batch_size=64, workers=3, threads=2,
                        text_batch_size=100, decode="pil")
    assert (s.batch_size, s.workers, s.threads, s.text_batch_size, s.decode) == (
        64, 3, 2, 100, "pil")
    assert not s.auto_batch  # a given batch size is kept, never halved
    assert set(s.overridden) == {"batch_size", "workers", "threads", "text_batch_size",
                                 "decode"}
    assert "given: batch_size" in s.note("ViT-L/14@336")
    for bad in ({"batch_size": 0}, {"workers": -1}, {"threads": 0}, {"decode": "gpu"}):
        with pytest.raises(UserInputError):
            choose_settings(1.0, "cpu", cores=2, **bad)


def test_gflops_are_counted_on_meta_for_study_backbones() -> None:
    import open_clip

    counted = {}
    for name in ("ViT-B-32", "RN50"):
        model = open_clip.create_model(name, pretrained=None, device="meta")
        counted[name] = model_gflops(model.visual, (224, 224))
    assert 8.0 < counted["ViT-B-32"] < 9.5 and 11.5 < counted["RN50"] < 13.0
    # What the issue measured fastest on 2 cores: batch 32, 1 worker, 2 torch threads.
    for name, gflops in counted.items():
        s = choose_settings(gflops, "cpu", cores=2, resnet=name == "RN50")
        assert (s.batch_size, s.workers, s.threads) == (32, 1, 2)


# ----------------------------------------------------------------------------- images
@pytest.mark.parametrize("name", ["tiny-vit", "tiny-rn"])
def test_chosen_batch_size_changes_no_vector(encoders: dict[str, Encoder], files: list[str],
                                             name: str) -> None:
    enc = encoders[name]
    assert enc.channels_last == (name == "tiny-rn")
    one, _ = enc.encode_images(files, batch_size=1, workers=0, progress=False)
    chosen, skipped = enc.encode_images(files, progress=False)  # the encoder's own settings
    odd, _ = enc.encode_images(files, batch_size=7, workers=1, threads=2, progress=False)
    assert not skipped and enc.settings().batch_size >= len(files)
    assert _cos(one, chosen).min() >= COS and _cos(one, odd).min() >= COS


def test_nvjpeg_route_runs_on_cpu_and_skips_the_same_files(
        encoders: dict[str, Encoder], files: list[str], tmp_path: Path) -> None:
    from PIL import Image

    png = tmp_path / "a.png"
    Image.open(files[0]).save(png)
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(Path(files[1]).read_bytes()[:300])
    todo = [*files[:6], str(png), str(broken), str(tmp_path / "missing.jpg")]
    enc = encoders["tiny-vit"]
    pil, pil_skipped = enc.encode_images(todo, workers=0, decode="pil", progress=False)
    gpu_route, skipped = enc.encode_images(todo, workers=1, decode="nvjpeg", batch_size=4,
                                           progress=False)
    assert skipped == pil_skipped and [i for i, _ in skipped] == [7, 8]
    ok = np.linalg.norm(pil, axis=1) > 0
    # Same crops up to the resize kernel (torch bicubic vs PIL's): near-identical vectors.
    assert _cos(pil[ok], gpu_route[ok]).min() > 0.999
    assert not np.any(gpu_route[~ok])


def test_out_of_memory_halves_the_batch(encoders: dict[str, Encoder], files: list[str],
                                        monkeypatch: pytest.MonkeyPatch) -> None:
    enc = load_encoder("tiny-vit", device="cpu")
    want, _ = enc.encode_images(files[:10], batch_size=10, workers=0, progress=False)
    real = enc.model.encode_image
    sizes: list[int] = []

    def small_memory(x: torch.Tensor) -> torch.Tensor:
        sizes.append(len(x))
        if len(x) > 3:
            raise torch.OutOfMemoryError("CUDA out of memory (simulated)")
        return real(x)

    monkeypatch.setattr(enc.model, "encode_image", small_memory)
    pixels = torch.stack([enc._pipeline.from_file(f)[0] for f in files[:10]])
    got = enc.encode_with_backoff(pixels)
    assert enc.batch_limit == 2 and sizes[:3] == [10, 5, 2]
    assert _cos(want, got).min() >= COS
    enc.batch_limit = 1
    monkeypatch.setattr(enc.model, "encode_image",
                        lambda x: (_ for _ in ()).throw(torch.OutOfMemoryError("one")))
    with pytest.raises(torch.OutOfMemoryError):
        enc.encode_with_backoff(pixels[:1])


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_a_real_cuda_out_of_memory_halves_the_batch() -> None:
    # The GPU's memory filled (plain allocations) but for 1 GiB: a batch of 20k crops
    # (2.2 GB as float32 on the device) cannot fit, so the batch halves until it does.
    enc = load_encoder("tiny-vit", device="cuda")
    cpu = load_encoder("tiny-vit", device="cpu")
    height, width = enc.input_size
    pixels = torch.randint(0, 256, (20_000, 3, height, width), dtype=torch.uint8,
                           generator=torch.Generator().manual_seed(0))
    torch.cuda.empty_cache()
    free, _ = torch.cuda.mem_get_info()
    filler = torch.empty(free - (1 << 30), dtype=torch.uint8, device="cuda")
    try:
        got = enc.encode_with_backoff(pixels)
    finally:
        del filler
        torch.cuda.empty_cache()
    assert enc.batch_limit is not None and enc.batch_limit < len(pixels)
    assert got.shape == (len(pixels), enc.embed_dim)
    assert _cos(cpu.encode_pixels(pixels[:64]), got[:64]).min() > 0.999


def test_iter_batches_backs_off_when_the_batch_is_automatic(
        files: list[str], monkeypatch: pytest.MonkeyPatch) -> None:
    from clipindex.encode import encoder as encoders_module
    from clipindex.encode import tuning

    enc = load_encoder("tiny-vit", device="cpu")
    real = enc.model.encode_image
    monkeypatch.setattr(enc.model, "encode_image", lambda x: (
        (_ for _ in ()).throw(torch.OutOfMemoryError("simulated")) if len(x) > 4 else real(x)))
    auto = tuning.choose_settings(enc.gflops, "cuda", cores=2)  # what CUDA would choose
    monkeypatch.setattr(encoders_module.Encoder, "settings",
                        lambda self, **kw: dataclasses.replace(auto, decode="pil", workers=0,
                                                               batch_size=8))
    batches = list(enc.iter_image_batches(files[:16], progress=False))
    assert [b.start for b in batches] == [0, 8] and enc.batch_limit == 4


def test_low_precision_weights_encode_close_to_fp32(files: list[str]) -> None:
    spec = resolve_backbone("tiny-vit")
    fp32 = load_encoder(spec, device="cpu")
    model, preprocess, tokenizer = create_model(spec, torch.device("cpu"))
    low = Encoder(spec, model, tokenizer, preprocess, torch.device("cpu"), "bf16")
    assert any(p.dtype == torch.bfloat16 for p in low.model.parameters())
    a, _ = fp32.encode_images(files[:8], workers=0, progress=False)
    b, _ = low.encode_images(files[:8], workers=0, progress=False)
    assert _cos(a, b).min() > 0.98
    t = ["a photo of a cat", "a cow in a field"]
    assert _cos(fp32.encode_texts(t), low.encode_texts(t)).min() > 0.98


# ----------------------------------------------------------------------------- text + creation
@pytest.mark.parametrize("name", ["tiny-vit", "tiny-rn"])
def test_trimmed_sorted_caption_batches_equal_open_clip(encoders: dict[str, Encoder],
                                                        name: str) -> None:
    enc = encoders[name]
    assert can_trim(enc.model)
    texts = ["a cat", "a dog running on a long road next to some sheep in a green field",
             "", "three cows", "a horse " * 30] * 3
    tokens = enc.tokenizer(texts, context_length=enc.context_length)
    with torch.no_grad():
        ref = enc.model.encode_text(tokens).numpy()
    for batch_size in (1, 4, None):
        got = enc.encode_texts(texts, batch_size=batch_size)
        assert _cos(ref, got).min() >= COS


def test_untrimmable_text_towers_use_open_clip(encoders: dict[str, Encoder],
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    from clipindex.encode import text

    enc = encoders["tiny-vit"]
    texts = ["a sheep", "a photo of a dog on a beach"]
    trimmed = enc.encode_texts(texts)
    monkeypatch.setattr(text, "can_trim", lambda model: False)
    calls = []
    real = enc.model.encode_text
    monkeypatch.setattr(enc.model, "encode_text", lambda t: calls.append(t.shape) or real(t))
    full = enc.encode_texts(texts)
    assert calls == [(2, enc.context_length)] and _cos(trimmed, full).min() >= COS


def test_checkpoints_skip_the_weight_init_and_load_the_same_weights(files: list[str]) -> None:
    spec = resolve_backbone("tiny-rn")
    fast, _, _ = create_model(spec, torch.device("cpu"))  # default: no init for checkpoints
    slow, _, _ = create_model(spec, torch.device("cpu"), skip_init=False)
    a, b = fast.state_dict(), slow.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    before = torch.nn.init.kaiming_uniform_
    with no_weight_init():
        assert torch.nn.init.kaiming_uniform_ is not before
    assert torch.nn.init.kaiming_uniform_ is before  # restored


def test_random_init_is_unchanged_and_seeded() -> None:
    from clipindex.store.manifest import load_encoder_for

    spec = resolve_backbone("tiny-vit", "none")
    one = load_encoder_for(spec, "cpu").model.state_dict()
    two = load_encoder_for(spec, "cpu").model.state_dict()
    assert all(torch.equal(one[k], two[k]) for k in one)


# ----------------------------------------------------------------------------- search
def _search_case() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """3,000 unit vectors, 40 noisy queries near some of them, 90% of the rows valid."""
    rng = np.random.default_rng(0)
    x = rng.standard_normal((3000, 32)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    q = x[rng.choice(3000, 40, replace=False)] + 0.1 * rng.standard_normal((40, 32)).astype(
        np.float32)
    return x, q, rng.random(3000) > 0.1


def test_torch_search_equals_faiss_top10() -> None:
    rng = np.random.default_rng(1)
    x, q, valid = _search_case()
    index = build_index(x[valid], np.flatnonzero(valid))
    want_s, want_i = search_index(index, q, 10)
    for chunk in (1 << 28, 4096):  # one chunk, and 25 rows per chunk (merging top-k)
        got_s, got_i = torch_search(x, q, 10, valid, chunk_bytes=chunk)
        assert (got_i == want_i).all()
        np.testing.assert_allclose(got_s, want_s, atol=1e-5)
    rows = np.flatnonzero(rng.random(3000) > 0.5)
    _, want_rows = search_index(index, q, 10, rows=rows)
    assert (torch_search(x, q, 10, valid, rows=rows)[1] == want_rows).all()
    few = torch_search(x, q[:1], 5, valid, rows=np.array([1, 2]))
    assert (few[1][0] == brute_force(x, q[:1], 5, valid, rows=np.array([1, 2]))[1][0]).all()
    assert np.isinf(few[0][0][2:]).all() and (few[1][0][2:] == -1).all()


def test_store_search_on_a_device_matches_faiss(demo_store: Path) -> None:
    from clipindex.store import open_index

    idx = open_index(demo_store, "tiny-vit")
    q = idx.text_vectors(["a photo of a cow", "a photo of a cat"])
    for target in ("images", "captions"):
        want = idx.search(q, 10, target=target)
        got = idx.search(q, 10, target=target, device="torch")
        assert (got[1] == want[1]).all()
    rows = np.arange(0, len(idx.images), 3)
    assert (idx.search(q, 10, rows=rows, device="torch")[1] == idx.search(q, 10, rows=rows)[1]
            ).all()


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_torch_search_on_cuda_equals_faiss_top10() -> None:
    x, q, valid = _search_case()
    want_s, want_i = search_index(build_index(x[valid], np.flatnonzero(valid)), q, 10)
    for chunk in (1 << 28, 4096):
        got_s, got_i = torch_search(x, q, 10, valid, device="cuda", chunk_bytes=chunk)
        assert (got_i == want_i).all()
        np.testing.assert_allclose(got_s, want_s, atol=1e-5)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_store_search_on_cuda_matches_faiss(demo_store: Path) -> None:
    from clipindex.store import open_index

    idx = open_index(demo_store, "tiny-vit")
    q = idx.text_vectors(["a photo of a cow", "a photo of a cat"])
    for target in ("images", "captions"):  # faiss-gpu when installed, else torch on cuda
        assert (idx.search(q, 10, target=target, device="cuda")[1]
                == idx.search(q, 10, target=target)[1]).all()
    rows = np.arange(0, len(idx.images), 3)  # row selections always go to torch
    assert (idx.search(q, 10, rows=rows, device="cuda")[1] == idx.search(q, 10, rows=rows)[1]
            ).all()


def test_search_cli_device_cuda_without_a_gpu_is_a_clear_error(demo_store: Path) -> None:
    from clipindex.cli import main

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA: the error path cannot happen")
    result = CliRunner().invoke(main, ["search", "a cow", "--index", str(demo_store),
                                       "--backbone", "tiny-vit", "--device", "cuda"])
    assert result.exit_code == 2 and "CUDA is not available" in result.output


# ----------------------------------------------------------------------------- build
def test_build_notes_and_records_what_it_chose(small_world: Path, tmp_path: Path) -> None:
    from clipindex.cli import main

    folder = tmp_path / "imgs"
    for label in ("cat", "dog"):
        (folder / label).mkdir(parents=True)
    for i, f in enumerate(sorted((small_world / "val").glob("*.jpg"))[:8]):
        shutil.copy(f, folder / ("cat" if i % 2 else "dog") / f.name)
    runner = CliRunner()
    result = runner.invoke(main, ["build", str(folder), "--backbone", "tiny-vit", "--out",
                                  str(tmp_path / "out"), "--no-progress"])
    assert result.exit_code == 0, result.output
    assert "GFLOPs/image -> batch 256" in result.output and "torch thread" in result.output
    bdir = next((tmp_path / "out").glob("*/tiny-vit"))
    settings = json.loads((bdir / "manifest.json").read_text())["timings"]["settings"]
    assert settings["batch_size"] == 256 and settings["overridden"] == []
    given = runner.invoke(main, ["build", str(folder), "--backbone", "tiny-rn", "--out",
                                 str(tmp_path / "out"), "--no-progress", "--batch-size", "4",
                                 "--text-batch-size", "3", "--threads", "1", "--workers", "0",
                                 "--decode", "nvjpeg"])
    assert given.exit_code == 0, given.output
    bdir = next((tmp_path / "out").glob("*/tiny-rn"))
    settings = json.loads((bdir / "manifest.json").read_text())["timings"]["settings"]
    assert (settings["batch_size"], settings["text_batch_size"], settings["threads"],
            settings["workers"], settings["decode"], settings["channels_last"]) == (
        4, 3, 1, 0, "nvjpeg", True)
