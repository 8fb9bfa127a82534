"""Issue 32 (part 4): ``build`` and ``add`` check every knob against the settings they
will actually use (the batch size chosen for the backbone on this device, the device,
the index budget) before they write a byte or load a model (``store/plan.py``).

Each bad combination is one ``Error:`` line with exit code 2, leaves the output folder
exactly as it was (a new one is not even created: every path, size and mtime is
compared) and never loads a model. The stand-in backbones of ``fixtures_store`` claim
:data:`FAKE_GFLOPS` per image; one test runs the real ``tiny-vit`` (the issue's case).
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
from fixtures_robust import COLORS, assert_one_line_error, run_cli
from fixtures_store import (
    FAKE_GFLOPS,
    install_fakes,
    write_images,
)

from clipindex.encode import choose_settings, resolve_backbone, resolve_device
from clipindex.encode.facts import model_facts, planned_settings
from clipindex.errors import UserInputError

pytestmark = pytest.mark.usefixtures("faiss_single_thread")

FAST = ["--workers", "0", "--no-progress"]
NO_CUDA = pytest.mark.skipif(torch.cuda.is_available(),
                             reason="this machine has CUDA: --device cuda is valid here")


def _tree(path: Path) -> dict[str, tuple[bool, int, int]] | None:
    """Every path under ``path`` (itself included) with (is folder, size, mtime in ns);
    None when ``path`` does not exist."""
    if not path.exists():
        return None
    found = {}
    for here, dirs, files in os.walk(path):
        for name in ["", *dirs, *files]:
            full = Path(here) / name
            st = full.lstat()
            found[str(full.relative_to(path))] = (full.is_dir(), st.st_size, st.st_mtime_ns)
    return found


def _chosen_fake_batch() -> int:
    return choose_settings(FAKE_GFLOPS, resolve_device(None)).batch_size


@pytest.fixture
def no_model(monkeypatch: pytest.MonkeyPatch) -> list[Any]:
    """Stand-in backbones whose loading is a test failure; returns the load calls."""
    from clipindex.encode import encoder as encoders

    install_fakes(monkeypatch)
    loads: list[Any] = []

    def refuse(spec: Any, **kw: Any) -> Any:
        loads.append(spec)
        raise AssertionError(f"a model was loaded: {spec}")

    monkeypatch.setattr(encoders, "load_encoder", refuse)
    return loads


@pytest.fixture(scope="module")
def stores(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Path]]:
    """A class folder (``data``, 2 x 6 JPEGs), the same with 4 more images (``more``)
    and ``OUT/data`` built from ``data`` with ``fake-a`` (batch 4, shard 8)."""
    from clipindex.store import build_store

    base = tmp_path_factory.mktemp("validate")
    data, more = base / "data", base / "more" / "data"
    write_images(data, 6)
    write_images(more, 8)
    with pytest.MonkeyPatch.context() as mp:
        install_fakes(mp)
        build_store(data, ["fake-a"], out=base / "out", batch_size=4, shard_size=8,
                    workers=0, progress=False)
    yield {"data": data, "more": more, "store": base / "out" / "data", "out": base / "out"}


# ----------------------------------------------------------------------------- build
def test_shard_size_is_checked_against_the_batch_the_build_would_choose(
        stores: dict[str, Path], tmp_path: Path, no_model: list[Any]) -> None:
    out = tmp_path / "out"
    batch = _chosen_fake_batch()
    res = run_cli("build", stores["data"], "--backbone", "fake-a", "--out", out,
                  "--shard-size", str(batch + 1), *FAST)
    assert_one_line_error(res, f"shard_size ({batch + 1})", f"batch_size ({batch}, chosen for "
                          "FAKE-A", "--batch-size")
    assert _tree(out) is None and not no_model  # not even created; no model loaded


def test_a_shard_size_fitting_the_chosen_batch_builds_with_that_batch(
        stores: dict[str, Path], tmp_path: Path, use_fake_encoders: Any) -> None:
    out = tmp_path / "out"
    batch = _chosen_fake_batch()
    res = run_cli("build", stores["data"], "--backbone", "fake-a", "--out", out,
                  "--shard-size", str(2 * batch), *FAST)
    assert res.exit_code == 0, res.output
    timings = json.loads((out / "data" / "fake-a" / "manifest.json").read_text())["timings"]
    assert (timings["batch_size"], timings["shard_size"]) == (batch, 2 * batch)


@pytest.mark.parametrize(("args", "needle"), [
    pytest.param(["--shard-size", "1001"], "shard_size (1001)", id="shard-vs-chosen-batch"),
    pytest.param(["--batch-size", "4", "--shard-size", "6"], "batch_size (4)",
                 id="shard-vs-given-batch"),
    pytest.param(["--backbone", "fake-z"], "fake-z", id="unknown-backbone"),
    pytest.param(["--device", "cuda"], "CUDA is not available", id="cuda-without-cuda",
                 marks=NO_CUDA),
])
@pytest.mark.parametrize("where", ["new", "existing"])
def test_bad_build_knobs_leave_the_output_folder_as_it_was(
        stores: dict[str, Path], tmp_path: Path, no_model: list[Any], args: list[str],
        needle: str, where: str) -> None:
    out = tmp_path / "out" if where == "new" else stores["out"]
    source = stores["more"] if where == "existing" else stores["data"]  # work to do
    backbone = [] if "--backbone" in args else ["--backbone", "fake-a"]
    before = _tree(out)
    res = run_cli("build", source, *backbone, "--out", out, *args, *FAST)
    assert_one_line_error(res, needle)
    assert _tree(out) == before and not no_model


def test_library_build_checks_workers_before_writing(
        stores: dict[str, Path], tmp_path: Path, no_model: list[Any]) -> None:
    from clipindex.store import build_store

    out = tmp_path / "out"
    with pytest.raises(UserInputError, match="workers must be a non-negative integer"):
        build_store(stores["data"], ["fake-a"], out=out, workers=-1, progress=False)
    assert _tree(out) is None and not no_model


def test_the_plan_refuses_an_index_budget_too_small_for_the_rows(no_model: list[Any]) -> None:
    """1M rows x 24 dims need an IVF index whose smallest form does not fit in 1 MB:
    known from the row count and the model's dimension (its skeleton), before encoding."""
    from clipindex.index.tuning import AutoSettings, parse_memory
    from clipindex.store.manifest import resolve_targets
    from clipindex.store.plan import options, plan_encoding

    def opts(budget: str | None) -> Any:
        return options("out", None, None, workers=0, threads=None, text_batch_size=None,
                       decode=None, device=None, strict=False, index_kind="auto",
                       dtype="float32", progress=False,
                       auto=AutoSettings(max_memory=parse_memory(budget)))

    targets = resolve_targets(["fake-a"], "default")
    with pytest.raises(UserInputError, match="1,000,000 bytes is too small for 1,000,000"):
        plan_encoding(opts("1MB"), targets, n_images=1_000_000, n_captions=10)
    plans = plan_encoding(opts("1GB"), targets, n_images=1_000_000, n_captions=10)
    assert plans["fake-a"].batch_size is None and not no_model  # chosen once loaded


# ----------------------------------------------------------------------------- add
@pytest.mark.parametrize(("args", "needle"), [
    pytest.param(["--shard-size", "1001"], "shard_size (1001)", id="shard-vs-chosen-batch"),
    pytest.param(["--batch-size", "4", "--shard-size", "6"], "batch_size (4)",
                 id="shard-vs-given-batch"),
    pytest.param(["--backbone", "fake-b"], "not built", id="backbone-not-built"),
    pytest.param(["--device", "cuda"], "CUDA is not available", id="cuda-without-cuda",
                 marks=NO_CUDA),
])
def test_bad_add_knobs_leave_the_store_as_it_was(
        stores: dict[str, Path], no_model: list[Any], args: list[str], needle: str) -> None:
    before = _tree(stores["store"])
    res = run_cli("add", stores["more"], "--index", stores["store"], *args, *FAST)
    assert_one_line_error(res, needle)
    assert _tree(stores["store"]) == before and not no_model


def test_library_add_checks_workers_before_the_lock(
        stores: dict[str, Path], no_model: list[Any]) -> None:
    from clipindex.store import add_to_store

    before = _tree(stores["store"])
    with pytest.raises(UserInputError, match="workers must be a non-negative integer"):
        add_to_store(stores["more"], index=stores["store"], workers=-1, progress=False)
    assert _tree(stores["store"]) == before and not no_model


def test_a_good_add_still_encodes_with_the_chosen_batch(
        stores: dict[str, Path], tmp_path: Path, use_fake_encoders: Any) -> None:
    store = tmp_path / "out" / "data"
    shutil.copytree(stores["store"], store)
    batch = _chosen_fake_batch()
    res = run_cli("add", stores["more"], "--index", store, "--shard-size", str(batch), *FAST)
    assert res.exit_code == 0, res.output
    assert use_fake_encoders.encoded_images == 4 and use_fake_encoders.encoded_batches == 1


# ----------------------------------------------------------------------------- real model
def test_the_issues_case_with_tiny_vit(tmp_path: Path, monkeypatch: pytest.MonkeyPatch
                                       ) -> None:
    """``build --shard-size 1000`` without ``--batch-size``: refused before the tables,
    the lock or the model, naming the batch size tiny-vit gets on this device."""
    from clipindex.encode import encoder as encoders

    def refuse(*a: Any, **kw: Any) -> Any:
        raise AssertionError("a model was loaded")

    monkeypatch.setattr(encoders, "load_encoder", refuse)
    spec = resolve_backbone("tiny-vit")
    batch = planned_settings(spec, resolve_device(None)).batch_size
    assert 1000 % batch  # 256 on CPU, 1024 on CUDA
    out = tmp_path / "out"
    res = run_cli("build", COLORS, "--backbone", "tiny-vit", "--out", out,
                  "--shard-size", "1000", *FAST)
    assert_one_line_error(res, "shard_size (1000)", f"batch_size ({batch}, chosen for tiny-vit")
    assert _tree(out) is None


def test_planned_settings_are_what_the_loaded_encoder_chooses() -> None:
    from clipindex.encode import load_encoder

    spec = resolve_backbone("tiny-rn")
    enc = load_encoder(spec, device="cpu")
    assert planned_settings(spec, "cpu") == enc.settings()
    facts = model_facts(spec)
    assert (facts.embed_dim, facts.input_size, facts.resnet) == (
        enc.embed_dim, enc.input_size, True)


@pytest.mark.parametrize("command", ["build", "add"])
def test_help_says_how_the_default_batch_is_chosen(command: str) -> None:
    res = run_cli(command, "--help")
    text = " ".join(res.output.split())
    assert res.exit_code == 0
    assert "Default: chosen per backbone from its GFLOPs per image and the device" in text
    assert "32 for ViT-B/32 and RN50, 256 for the tiny backbones" in text
    assert "1024 for ViT-B/32, 256 for ViT-L/14@336px" in text
    assert "must be a multiple of the batch size, given or chosen" in text


def test_the_help_examples_are_what_the_tuning_chooses() -> None:
    def batch(name: str, device: str, pretrained: str = "none") -> int:
        return planned_settings(resolve_backbone(name, pretrained), device).batch_size

    assert batch("ViT-B/32", "cpu") == batch("RN50", "cpu") == 32
    assert batch("tiny-vit", "cpu", "default") == batch("tiny-rn", "cpu", "default") == 256
    assert batch("ViT-B/32", "cuda") == 1024 and batch("ViT-L/14@336px", "cuda") == 256


def test_unfetchable_tag_weights_are_refused_before_the_tables(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from clipindex.encode import encoder as encoders
    from clipindex.encode.hub import check_weights
    from clipindex.errors import ModelLoadError

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    try:
        check_weights("ViT-B-32", "openai", "ViT-B/32")
        pytest.skip("ViT-B/32's openai weights are in this machine's hub cache")
    except ModelLoadError:
        pass
    monkeypatch.setattr(encoders, "load_encoder", lambda *a, **kw: pytest.fail("loaded"))
    out = tmp_path / "out"
    res = run_cli("build", COLORS, "--backbone", "ViT-B/32", "--out", out, *FAST)
    assert_one_line_error(res, "ViT-B/32", "HF_HUB_OFFLINE is set", "--pretrained")
    assert _tree(out) is None
