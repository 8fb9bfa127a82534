"""``clipindex build`` / ``clipindex info``: output, errors, strictness, a real SIGKILL."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import yaml
from click.testing import CliRunner
from fixtures_store import FakeEncoder, write_images
from test_encoders import TEST_CONFIG

from clipindex.cli import main
from clipindex.errors import IncompleteIndexError
from clipindex.store import list_backbones, open_index

pytestmark = pytest.mark.usefixtures("faiss_single_thread")

FAST = ["--batch-size", "4", "--shard-size", "8", "--workers", "0", "--no-progress"]
TESTS = Path(__file__).resolve().parent


def _run(*args: object):
    return CliRunner().invoke(main, [str(a) for a in args])


def _one_line_error(res, *needles: str) -> None:
    assert res.exit_code == 2, res.output
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: "), res.stderr
    assert "Traceback" not in res.output
    for needle in needles:
        assert needle in lines[0], lines[0]


@pytest.fixture
def folder(tmp_path) -> Path:
    root = tmp_path / "fields_roads"
    write_images(root, 9, classes=("fields", "roads"))
    return root


def test_build_prints_a_line_per_backbone_and_info_reads_it(folder, tmp_path,
                                                            use_fake_encoders):
    out = tmp_path / "out"
    res = _run("build", folder, "--backbone", "fake-a", "--backbone", "fake-b", "--out", out,
               *FAST)
    assert res.exit_code == 0, res.output
    lines = res.stdout.strip().splitlines()
    assert len(lines) == 2
    assert "fake-a: 18 images, 0 captions, 0 skipped, dim 24" in lines[0]
    assert "images/s" in lines[0] and "fake-b" in lines[1]
    again = _run("build", folder, "--backbone", "fake-a", "--out", out, *FAST)
    assert again.exit_code == 0 and "up to date" in again.stderr
    res = _run("info", out / "fields_roads", "--json")
    assert res.exit_code == 0
    info = json.loads(res.stdout)
    assert [b["backbone_folder"] for b in info["backbones"]] == ["fake-a", "fake-b"]
    assert info["n_images"] == 18 and info["dataset"]["funnel"]["all_images"] == 18
    text = _run("info", out / "fields_roads")
    assert text.exit_code == 0
    assert "funnel:" in text.stdout and "fake-b: FAKE-B, dim 24" in text.stdout


def test_notes_print_once_even_with_a_root_handler(folder, tmp_path, use_fake_encoders):
    """open_clip's module-level ``logging.info`` gives the root logger a stderr handler;
    the build's notes must still print once, through the CLI's own handler."""
    import logging

    seen: list[logging.LogRecord] = []
    root_handler = logging.Handler()
    root_handler.emit = seen.append  # type: ignore[method-assign]
    logging.getLogger().addHandler(root_handler)
    try:
        out = tmp_path / "out"
        assert _run("build", folder, "--backbone", "fake-a", "--out", out, *FAST).exit_code == 0
        res = _run("build", folder, "--backbone", "fake-a", "--out", out, "--index-kind",
                   "hnsw", *FAST)
    finally:
        logging.getLogger().removeHandler(root_handler)
    assert res.exit_code == 0, res.output
    assert res.stderr.count("re-indexed") == 1 and "nothing encoded" in res.stderr
    assert [r.getMessage() for r in seen if r.name.startswith("clipindex")] == []
    assert logging.getLogger("clipindex.store").propagate


def test_installed_command_runs_end_to_end(folder, tmp_path, use_fake_encoders):
    _run("build", folder, "--backbone", "fake-a", "--out", tmp_path / "out", *FAST)
    exe = Path(sys.executable).parent / "clipindex"
    res = subprocess.run([str(exe), "info", str(tmp_path / "out" / "fields_roads"), "--json"],
                         capture_output=True, text=True, timeout=120, check=False)
    assert res.returncode == 0, res.stderr
    assert json.loads(res.stdout)["backbones"][0]["n_images"] == 18


def test_pretrained_none_and_checkpoint_path(folder, tmp_path, use_fake_encoders):
    ckpt = tmp_path / "ckpt.safetensors"
    ckpt.write_bytes(b"\x00" * 64)
    out = tmp_path / "out"
    for choice in ("none", str(ckpt)):
        res = _run("build", folder, "--backbone", "fake-a", "--out", out, "--pretrained",
                   choice, *FAST)
        assert res.exit_code == 0, res.output
    assert list_backbones(out / "fields_roads") == ["fake-a__ckpt", "fake-a__none"]


def _corrupt_folder(root: Path) -> None:
    write_images(root, 5, classes=("fields", "roads"))
    good = (root / "fields" / "000.jpg").read_bytes()
    (root / "fields" / "zz-trunc.jpg").write_bytes(good[:100])
    (root / "roads" / "zz-empty.jpg").write_bytes(b"")
    (root / "roads" / "zz-text.jpg").write_text("not an image")


def test_skipped_inputs_listed_and_strict_fatal(tmp_path, use_fake_encoders):
    data = tmp_path / "d"
    _corrupt_folder(data)
    res = _run("build", data, "--backbone", "fake-a", "--out", tmp_path / "out", *FAST)
    assert res.exit_code == 0 and ", 3 skipped," in res.stdout
    info = json.loads(_run("info", tmp_path / "out" / "d", "--json").stdout)
    files = sorted(s["file"] for s in info["backbones"][0]["skipped"])
    assert files == ["fields/zz-trunc.jpg", "roads/zz-empty.jpg", "roads/zz-text.jpg"]
    text = _run("info", tmp_path / "out" / "d").stdout
    assert text.count("    skipped row ") == 3 and "roads/zz-empty.jpg: " in text
    res = _run("build", data, "--backbone", "fake-a", "--out", tmp_path / "strict", "--strict",
               *FAST)
    _one_line_error(res, "zz-", "--strict")
    assert list_backbones(tmp_path / "strict" / "d") == []
    with pytest.raises(IncompleteIndexError):
        open_index(tmp_path / "strict" / "d", "fake-a")


# ----------------------------------------------------------------------------- bad inputs
def _mini_coco(root: Path, *, person_on_cats: bool = False) -> Path:
    """A 6-image COCO-format set (cat, dog, person) and its YAML config."""
    write_images(root / "imgs", 3, classes=("c", "d"))
    images, anns = [], []
    for i, f in enumerate(sorted((root / "imgs").rglob("*.jpg"))):
        images.append({"id": i + 1, "file_name": f.relative_to(root / "imgs").as_posix(),
                       "width": 16, "height": 12})
        cat = 17 if f.parent.name == "c" else 18
        anns.append({"id": 100 + i, "image_id": i + 1, "category_id": cat, "iscrowd": 0,
                     "bbox": [1, 1, 8, 6], "area": 48.0})
        if person_on_cats and cat == 17:
            anns.append({"id": 200 + i, "image_id": i + 1, "category_id": 1, "iscrowd": 0,
                         "bbox": [0, 0, 4, 4], "area": 16.0})
    cats = [{"id": 1, "name": "person", "supercategory": "person"},
            {"id": 17, "name": "cat", "supercategory": "animal"},
            {"id": 18, "name": "dog", "supercategory": "animal"}]
    (root / "ann").mkdir(parents=True, exist_ok=True)
    (root / "ann" / "instances.json").write_text(
        json.dumps({"images": images, "annotations": anns, "categories": cats}))
    caps = [{"id": 300 + i, "image_id": im["id"], "caption": f"picture {i}"}
            for i, im in enumerate(images)]
    (root / "ann" / "captions.json").write_text(json.dumps({"images": images,
                                                            "annotations": caps}))
    cfg = {"name": "mini", "source": "coco", "root": str(root),
           "instances": "ann/instances.json", "captions": "ann/captions.json",
           "images": "imgs", "classes": ["cat", "dog"]}
    path = root / "mini.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def test_mini_coco_builds(tmp_path, use_fake_encoders):
    cfg = _mini_coco(tmp_path / "coco")
    res = _run("build", cfg, "--backbone", "fake-a", "--out", tmp_path / "out", *FAST)
    assert res.exit_code == 0, res.output
    assert "6 images, 6 captions" in res.stdout


def _edit_config(cfg: Path, **changes: object) -> Path:
    data = yaml.safe_load(cfg.read_text())
    data.update(changes)
    cfg.write_text(yaml.safe_dump(data))
    return cfg


@pytest.mark.parametrize("case", ["malformed-json", "unknown-class", "no-images", "one-class"])
def test_bad_data_is_a_one_line_error_and_leaves_nothing(case, tmp_path, use_fake_encoders):
    if case == "one-class":
        source = tmp_path / "only"
        write_images(source, 4, classes=("fields",))
        needles: tuple[str, ...] = ()
    else:
        source = _mini_coco(tmp_path / "coco", person_on_cats=case == "no-images")
        if case == "malformed-json":
            (tmp_path / "coco" / "ann" / "instances.json").write_text('{"images": [')
            needles = ("instances.json",)
        elif case == "unknown-class":
            _edit_config(source, classes=["cat", "unicorn"])
            needles = ("unicorn",)
        else:
            _edit_config(source, classes=["cat"])
            needles = ()
    out = tmp_path / "out"
    res = _run("build", source, "--backbone", "fake-a", "--out", out, *FAST)
    _one_line_error(res, *needles)
    assert not out.exists()


def test_cli_rejects_bad_values(folder, tmp_path):
    res = _run("build", folder, "--backbone", "x", "--batch-size", "0")
    assert res.exit_code == 2 and "batch_size must be a positive integer, got 0" in res.output
    res = _run("build", folder, "--backbone", "x", "--index-kind", "annoy")
    assert res.exit_code == 2 and "annoy" in res.output
    res = _run("info", tmp_path)
    _one_line_error(res, "no dataset.json")


# ----------------------------------------------------------------------------- SIGKILL
_RUNNER = """
import sys
import pytest
from fixtures_store import install_fakes
install_fakes(pytest.MonkeyPatch())
from clipindex.cli import main
main(sys.argv[1:], prog_name="clipindex")
"""


def test_sigkill_mid_encoding_then_resume(tmp_path, use_fake_encoders):
    data = tmp_path / "big"
    write_images(data, 20, classes=("fields", "roads"))  # 40 images: 5 shards of 8
    out = tmp_path / "out"
    env = {**os.environ, "PYTHONPATH": str(TESTS), "FAKE_ENCODER_DELAY": "0.25"}
    args = ["build", str(data), "--backbone", "fake-a", "--out", str(out), *FAST]
    proc = subprocess.Popen([sys.executable, "-c", _RUNNER, *args], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    shards = out / "big" / "fake-a" / "shards"
    deadline = time.monotonic() + 120
    try:
        while not list(shards.glob("images-*.json")):
            assert proc.poll() is None, "the build finished before it could be killed"
            assert time.monotonic() < deadline, "no shard was finished in time"
            time.sleep(0.05)
        # A second build of the same folder while the first is writing: refused at once.
        res = _run(*args)
        _one_line_error(res, f"another clipindex build (pid {proc.pid}) is writing")
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.wait(timeout=60)
    assert proc.returncode == -signal.SIGKILL
    # ... and its lock dies with it: the resume below needs no clean-up.
    done = len(list(shards.glob("images-*.json")))
    assert 1 <= done < 5
    assert not (out / "big" / "fake-a" / "manifest.json").exists()
    with pytest.raises(IncompleteIndexError):
        open_index(out / "big", "fake-a")
    FakeEncoder.encoded_images = 0
    res = _run("build", data, "--backbone", "fake-a", "--out", out, "--verbose", *FAST)
    assert res.exit_code == 0, res.output
    assert f"reusing {done} finished shard(s)" in res.stderr
    assert res.stderr.count("encoded shard images") == 5 - done
    assert FakeEncoder.encoded_images == 40 - 8 * done
    ref = tmp_path / "ref"
    assert _run("build", data, "--backbone", "fake-a", "--out", ref, *FAST).exit_code == 0
    a, b = open_index(out / "big", "fake-a"), open_index(ref / "big", "fake-a")
    np.testing.assert_allclose(a.image_vectors, b.image_vectors, atol=1e-5)


# ----------------------------------------------------------------------------- real encoders
REAL_MODEL = "clipindex-store-test-vit"
# The encoder tests' tiny real open_clip ViT (32 px, random weights): milliseconds.
REAL_CONFIG = TEST_CONFIG


@pytest.fixture(scope="module")
def real_model(tmp_path_factory: pytest.TempPathFactory) -> str:
    import open_clip
    import torch

    torch.set_num_threads(2)
    folder = tmp_path_factory.mktemp("model-configs")
    (folder / f"{REAL_MODEL}.json").write_text(json.dumps(REAL_CONFIG))
    open_clip.add_model_config(folder)
    try:  # keep the tiny backbones' configs registered after open_clip's rescan
        from clipindex import tiny

        tiny.register_configs()
    except (ImportError, AttributeError):
        pass
    return REAL_MODEL


def test_real_encoder_none_and_checkpoint_builds(real_model, tmp_path):
    cfg = _mini_coco(tmp_path / "coco")
    out = tmp_path / "out"
    args = ["--backbone", real_model, "--out", out, "--batch-size", "2", "--shard-size", "4",
            "--workers", "0", "--no-progress", "--device", "cpu"]
    res = _run("build", cfg, "--pretrained", "none", *args)
    assert res.exit_code == 0, res.output
    assert "6 images, 6 captions, 0 skipped, dim 32" in res.stdout
    idx = open_index(out / "mini", real_model, pretrained="none")
    assert idx.name == f"{real_model}__none" and idx.manifest["random_init_seed"] == 0
    assert idx.manifest["image_size"] == 32 and idx.manifest["params"] > 0
    # random-init weights are seeded: reopening encodes into the same space
    enc = idx.encoder(device="cpu")
    files = [Path(idx.dataset_info["root"]) / f for f in idx.images["file"]]
    again = np.concatenate([b.vectors for b in enc.iter_image_batches(
        [str(f) for f in files], batch_size=3, workers=0, progress=False)])
    np.testing.assert_allclose(again, idx.image_vectors, atol=1e-5)
    np.testing.assert_allclose(idx.text_vectors(idx.captions["text"].tolist()),
                               idx.caption_vectors, atol=1e-5)
    # the same weights saved as a local checkpoint build the same vectors
    from safetensors.torch import save_file

    ckpt = tmp_path / "weights.safetensors"
    save_file({k: v.contiguous() for k, v in enc.model.state_dict().items()}, str(ckpt))
    res = _run("build", cfg, "--pretrained", ckpt, *args)
    assert res.exit_code == 0, res.output
    local = open_index(out / "mini", real_model, pretrained=str(ckpt))
    assert local.name == f"{real_model}__weights"
    assert local.manifest["checkpoint_sha256"] and local.manifest["weights_source"] == "file"
    np.testing.assert_allclose(local.image_vectors, idx.image_vectors, atol=1e-5)
    s, i = local.search(idx.text_vectors(["picture 3"]), 3, target="captions")
    assert i[0, 0] == 3 and s[0, 0] == pytest.approx(1.0, abs=1e-5)
