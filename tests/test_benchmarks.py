"""Smoke tests of the speed benchmarks in ``benchmarks/`` (not timed tests).

Each script runs in ``--quick`` mode on micro open_clip configs (registered with
``--model-config``) and must write its own section of a RESULTS.md with one
``ratio: N.Nx <what> over <what>`` line per comparison, leaving the other sections alone.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import numpy as np
import pytest

BENCH = Path(__file__).resolve().parents[1] / "benchmarks"
RATIO = re.compile(r"^ratio: \d+\.\dx \S.* over \S.*$")
MICRO = {
    # Micro architectures: seconds to build and run, same code paths as real backbones.
    "bench-micro-vit": {"embed_dim": 32, "vision_cfg": {
        "image_size": 32, "layers": 1, "width": 32, "patch_size": 8, "head_width": 16}},
    "bench-micro-rn": {"embed_dim": 32, "vision_cfg": {
        "image_size": 64, "layers": [1, 1, 1, 1], "width": 8, "head_width": 16}},
}
_TEXT = {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1}


def _module(name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(f"_bench_{name}", BENCH / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def bench_env(tmp_path_factory: pytest.TempPathFactory, small_world: Path) -> dict[str, Path]:
    """A workdir holding the session's small world, micro model configs, a RESULTS.md."""
    root = tmp_path_factory.mktemp("bench")
    (root / "work").mkdir()
    (root / "work" / "world-small-0").symlink_to(small_world, target_is_directory=True)
    configs = root / "configs"
    configs.mkdir()
    for name, cfg in MICRO.items():
        (configs / f"{name}.json").write_text(json.dumps({**cfg, "text_cfg": _TEXT}))
    return {"work": root / "work", "configs": configs, "results": root / "RESULTS.md"}


def _args(env: dict[str, Path]) -> list[str]:
    return ["--quick", "--results", str(env["results"]), "--workdir", str(env["work"]),
            "--model-config", str(env["configs"])]


def _section(text: str, name: str) -> list[str]:
    match = re.search(rf"<!-- {name}:start -->\n(.*?)\n<!-- {name}:end -->", text, re.DOTALL)
    assert match, f"section {name} missing"
    return match.group(1).splitlines()


def _ratios(lines: list[str]) -> list[str]:
    return [line for line in lines if line.startswith("ratio:")]


def test_replace_section_rewrites_only_its_own_block() -> None:
    common = _module("_common")
    text = common.replace_section("# head\n", "a", "A1")
    text = common.replace_section(text, "b", "B1")
    text = common.replace_section(text, "a", "A2\nmore")
    assert text.count("<!-- a:start -->") == 1 and "A1" not in text
    assert "A2\nmore" in text and "B1" in text and text.startswith("# head")
    assert text.index("<!-- a:start -->") < text.index("<!-- b:start -->")


def test_ratio_line_form() -> None:
    common = _module("_common")
    assert common.ratio_line(12.345, "a over b") == "ratio: 12.3x a over b"
    assert RATIO.match(common.ratio_line(0.04, "a over b"))


def test_numpy_top_k_matches_the_reference() -> None:
    import numpy as np

    from clipindex.index.kinds import brute_force

    search = _module("bench_search")
    x = search.unit_vectors(300, 16, seed=0)
    q = search.unit_vectors(70, 16, seed=1)
    scores, ids = search.numpy_top_k(x, q, 5, chunk=32)
    ref_scores, ref_ids = brute_force(x, q, 5)
    assert (ids == ref_ids).all()
    np.testing.assert_allclose(scores, ref_scores, atol=1e-5)
    assert search.recall_at_k(ids, ref_ids) == 1.0
    assert search.recall_at_k(np.full_like(ids, -1), ref_ids) == 0.0


def test_search_extrapolation_follows_the_power_law_through_1m_and_the_run(
        tmp_path: Path) -> None:
    search = _module("bench_search")
    results = tmp_path / "RESULTS.md"
    results.write_text("- 1M auto: p50 1.0 ms, p99 2.0 ms, recall@10 0.990\n"
                       "- 1M flat: p50 100.0 ms, p99 150.0 ms, recall@10 1.000\n")
    summary = ["3M auto: p50 1.7 ms, p99 3.0 ms, recall@10 0.980",
               "3M flat: p50 300.0 ms, p99 400.0 ms, recall@10 1.000",
               "3M hand-ivf: p50 2.0 ms, p99 3.0 ms, recall@10 0.960"]  # no 1M line
    lines = [line for line in search._extrapolated(results, summary, 3_000_000) if line]
    assert len(lines) == 2 and all("extrapolated, not measured" in line for line in lines)
    assert lines[1].startswith("- 10M flat: p50 ~1000.0 ms") and "N^1.00" in lines[1]
    slope = np.log(1.7) / np.log(3)  # auto: 1.7 ms x (10/3)^slope
    assert lines[0].startswith(f"- 10M auto: p50 ~{1.7 * (10 / 3) ** slope:.1f} ms")


@pytest.mark.slow
def test_each_script_writes_its_section(bench_env: dict[str, Path]) -> None:
    # Installed-command style: bench_search as a real subprocess; the model-heavy ones
    # in-process to share the session's imports.
    done = subprocess.run([sys.executable, str(BENCH / "bench_search.py"), *_args(bench_env)],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert _ratios(done.stdout.splitlines())
    encode = _module("bench_encode")
    assert encode.main([*_args(bench_env), "--backbones", "bench-micro-vit,bench-micro-rn"]) == 0
    study = _module("bench_study")  # the tiny architectures, random init, default tokenizer
    assert study.main([*_args(bench_env), "--tiny-architectures"]) == 0

    text = bench_env["results"].read_text()
    assert text.startswith("# Speed benchmark results")
    expected = {"bench_search": 6, "bench_encode_cpu": 6, "bench_study": 2}
    for name, count in expected.items():
        lines = _section(text, name)
        assert any(line.startswith("- machine: ") for line in lines)
        assert any(line.startswith("- versions: ") and "faiss" in line for line in lines)
        ratios = _ratios(lines)
        assert len(ratios) == count, ratios
        assert all(RATIO.match(r) for r in ratios), ratios
    encode_text = "\n".join(_section(text, "bench_encode_cpu"))
    assert encode_text.count("not measured: no GPU available") == 2  # the two GPU rows
    for backbone in ("bench-micro-vit", "bench-micro-rn"):  # the issue-21 line form
        assert re.search(rf"^ratio: \d+\.\dx {backbone} cpu build \(defaults\) over the "
                         r"study's loop, images/s$", encode_text, re.MULTILINE)
    # The study's two sides did the same work: identical predictions everywhere.
    study_lines = _section(text, "bench_study")
    rows = [line for line in study_lines if line.startswith("| ") and "/" in line
            or line.startswith("| ensemble")]
    assert len(rows) == 7 and all(line.rstrip().endswith("| 100.0% |") for line in rows)
    # The encode paths agree (same model, same files): cosine near 1 to the loop, and the
    # build's vectors equal model-only's on the same crops.
    enc_rows = [line for line in _section(text, "bench_encode_cpu")
                if line.startswith("| bench-micro")]
    assert len(enc_rows) == 2
    for line in enc_rows:
        cells = [c.strip() for c in line.strip(" |").split("|")]
        assert float(cells[-2]) > 0.99 and float(cells[-1]) >= 1 - 1e-5


def test_open_script_writes_its_section(tmp_path: Path) -> None:
    results = tmp_path / "RESULTS.md"
    bench = _module("bench_open")
    assert bench.main(["--quick", "--results", str(results), "--workdir", str(tmp_path),
                       "--repeats", "1"]) == 0
    lines = _section(results.read_text(), "bench_open")
    ratios = _ratios(lines)
    assert len(ratios) == 2 and all(RATIO.match(r) for r in ratios), ratios
    (row,) = [line for line in lines if line.startswith("| 20,000 images")]
    assert float(row.split("|")[2]) > 10  # MB of files: the store was really written


def test_encode_decode_routes_writes_its_section(bench_env: dict[str, Path]) -> None:
    """``--decode-routes``: the default decode vs --decode draft, one ratio per backbone;
    the shipped tiny-vit-s (48 px input) draft-decodes the world's larger JPEGs, so its
    vectors move (cosine under the 0.9999 bound of the default route)."""
    encode = _module("bench_encode")
    assert encode.main([*_args(bench_env), "--backbones", "tiny-vit-s,tiny-vit",
                        "--pretrained", "default", "--decode-routes"]) == 0
    lines = _section(bench_env["results"].read_text(), "bench_encode_decode_cpu")
    ratios = _ratios(lines)
    assert len(ratios) == 2 and all(RATIO.match(r) for r in ratios), ratios
    assert "tiny-vit-s cpu build with --decode draft over the default" in ratios[0]
    (row,) = [line for line in lines if line.startswith("| tiny-vit-s")]
    assert float(row.split("|")[8]) < 0.9999  # draft is not the reference's pixels


def test_encode_cuda_mode_structure() -> None:
    # No GPU here: check the GPU mode's settings and that its backbones resolve (no load).
    from clipindex.encode.backbones import resolve_backbone

    encode = _module("bench_encode")
    args = encode._parse(["--device", "cuda"])
    assert (args.kind, args.images, args.baseline_images, args.scale) == (
        "cuda", 12000, 1000, "default")
    names = args.backbones.split(",")
    assert names == ["ViT-B-32", "ViT-L-14-336"]
    assert [resolve_backbone(n, "none").display for n in names] == ["ViT-B/32", "ViT-L/14@336px"]
    cpu = encode._parse([])
    assert (cpu.kind, cpu.images, cpu.threads) == ("cpu", None, 1)
    assert encode._plan(cpu) == [("ViT-B-32", 300), ("RN50", 300), ("ViT-B-16", 100),
                                 ("RN50x4", 100)]
    assert [resolve_backbone(n, "none").display for n, _ in encode._plan(cpu)] == [
        "ViT-B/32", "RN50", "ViT-B/16", "RN50x4"]


@pytest.mark.slow
def test_bench_serve_writes_its_section(bench_env: dict[str, Path]) -> None:
    """A real ``clipindex serve`` and the minimal FastAPI+FAISS app under the quick bounded
    load, on the demo store and a synthetic flat store: no error, the issue's ratios."""
    serve = _module("bench_serve")
    assert serve.main([*_args(bench_env), "--stores", "demo,flat"]) == 0  # any failure: 1
    lines = _section(bench_env["results"].read_text(), "bench_serve")
    assert any(line.startswith("- machine: ") for line in lines)
    rows = [[c.strip() for c in line.split("|")[1:-1]] for line in lines
            if line.startswith(("| demo", "| 5k"))]
    sides = ["in-process", "minimal FastAPI+FAISS", "clipindex serve"]
    assert [(r[0], r[1], int(r[2])) for r in rows] == [
        (store, side, c) for store in ("demo", "5k flat") for c in (1, 16) for side in sides]
    assert all(int(r[4]) == 0 and int(r[3]) == 24 and float(r[5]) > 0 for r in rows)
    ratios = _ratios(lines)
    assert len(ratios) == 8 and all(RATIO.match(r) for r in ratios), ratios
    assert any(r.endswith("requests/s, 5k flat, 16 clients") for r in ratios)


def test_bench_search_overhead_writes_its_section(bench_env: dict[str, Path]) -> None:
    """search_indexes over raw FAISS on quick synthetic stores: overhead and open lines."""
    search = _module("bench_search")
    assert search.main([*_args(bench_env), "--overhead", "--overhead-kinds", "flat"]) == 0
    lines = _section(bench_env["results"].read_text(), "bench_search_overhead")
    over = [line for line in lines if line.startswith("overhead: ")]
    assert [line.rsplit(", ", 1)[1] for line in over] == ["2k rows flat", "5k rows flat"]
    assert all(re.match(r"overhead: -?\d+\.\d\d ms ", line) for line in over)
    assert any(re.match(r"open: \d+ ms open_index, 5k rows", line) for line in lines)


@pytest.mark.slow
def test_ray_script_writes_its_section(bench_env: dict[str, Path]) -> None:
    # A real local Ray in its own process, as `python benchmarks/bench_ray.py` runs.
    results = bench_env["results"].with_name("RESULTS-ray.md")
    done = subprocess.run([sys.executable, str(BENCH / "bench_ray.py"), "--quick", "--results",
                           str(results), "--workdir", str(bench_env["work"])],
                          capture_output=True, text=True, timeout=400)
    assert done.returncode == 0, done.stderr[-2000:]
    lines = _section(results.read_text(), "bench_ray")
    ratios = _ratios(lines)
    assert len(ratios) == 3 and all(RATIO.match(r) and " cpu, " in r for r in ratios), ratios
    rows = {line.split("|")[1].strip(): line for line in lines if line.startswith("| ")}
    assert float(rows["ray"].split("|")[4]) > 0  # Ray's start-up was measured
    assert "not measured: no GPU available" in rows["ray, GPU actors (ViT-B/32 from JPEG)"]


def test_ray_script_gives_ray_a_gpu_per_actor_on_cuda(monkeypatch: pytest.MonkeyPatch,
                                                       tmp_path: Path) -> None:
    # No GPU here: what the CUDA run asks of build_store, and how it reports.
    import types

    import clipindex.store as store

    bench = _module("bench_ray")
    calls: list[dict] = []
    manifest = {"n_images": 2000, "ray": {"first_image_batch_seconds": 1.0, "actors": 1},
                "timings": {"images_per_s": 400.0, "image_encode_seconds": 5.0,
                            "settings": {"batch_size": 1024}}}
    monkeypatch.setattr(store, "build_store",
                        lambda *a, **kw: calls.append(kw) or [tmp_path / "d" / "b"])
    monkeypatch.setattr(store, "open_index",
                        lambda *a: types.SimpleNamespace(manifest=manifest))
    args = types.SimpleNamespace(kind="cuda", backbone="ViT-B/32", batch_size=None,
                                 device="cuda", pretrained="none")
    rounds = [{e: bench.one_build(tmp_path / "m.csv", tmp_path, tmp_path / e, args, e)
               for e in ("local", "ray")}]
    assert [(c["gpus_per_encoder"], c["batch_size"], c["device"]) for c in calls] == [
        (0.0, None, "cuda"), (1.0, None, "cuda")]
    assert rounds[0]["ray"]["batch"] == 1024 and rounds[0]["ray"]["steady"] == 976 / 4.0
    lines, ratios = bench.report(rounds, args, 2000, bench.common.machine_info("cpu"))
    assert len(ratios) == 3 and all(" cuda, " in r for r in ratios), ratios
    assert not any("not measured" in line for line in lines)


def test_gpu_session_scripts_parse_and_pin_what_ci_tests() -> None:
    # The GPU call is prepared here and run once on a lent machine: its scripts must at
    # least parse, and the wheels it carries must be the versions CI installs, which are
    # the lock's (requirements/dev.lock), not whatever happens to be installed today.
    for script in ("gpu_wheels.sh", "gpu_session.sh"):
        done = subprocess.run(["bash", "-n", str(BENCH / script)], capture_output=True,
                              text=True)
        assert done.returncode == 0, done.stderr
    text = (BENCH / "gpu_wheels.sh").read_text()
    assert not re.search(r"[A-Za-z]==\d", text), "gpu_wheels.sh must not repeat versions"
    done = subprocess.run(["bash", str(BENCH / "gpu_wheels.sh"), "--pins"],
                          capture_output=True, text=True, check=True)
    pins = dict(line.split("==") for line in done.stdout.split())
    assert {"open-clip-torch", "faiss-cpu", "ray", "ftfy", "pycocotools", "wcwidth"} <= set(pins)
    lock = (BENCH.parent / "requirements" / "dev.lock").read_text()
    locked = dict(re.findall(r"^([a-z0-9][a-z0-9._-]*)==(\S+)", lock, flags=re.M))
    assert pins == {name: locked[name] for name in pins}


def test_gpu_wheels_names_a_package_the_lock_lacks(tmp_path: Path) -> None:
    lock = tmp_path / "dev.lock"
    lock.write_text("timm==1.0.31    # via open-clip-torch\n")
    done = subprocess.run(["bash", str(BENCH / "gpu_wheels.sh"), "--pins"], capture_output=True,
                          text=True, env={**os.environ, "LOCK": str(lock)})
    assert done.returncode == 2
    expected = f"gpu_wheels: open-clip-torch is not pinned in {lock} (run make lock)"
    assert done.stderr.strip() == expected


def test_search_script_device_contender_is_exact(tmp_path: Path) -> None:
    # The GPU search contender, run here on the CPU: torch's exact top-10 = FAISS flat's.
    results = tmp_path / "RESULTS.md"
    search = _module("bench_search")
    assert search.main(["--quick", "--results", str(results), "--contenders", "flat,device",
                        "--device", "cpu", "--section", "bench_search_device"]) == 0
    lines = _section(results.read_text(), "bench_search_device")
    ratios = _ratios(lines)
    assert len(ratios) == 4 and all(RATIO.match(r) for r in ratios), ratios
    device_rows = [line for line in lines if line.startswith("| device |")]
    assert len(device_rows) == 2 and all(line.rstrip().endswith("| 1.000 |")
                                         for line in device_rows)


def test_encode_script_section_and_gpu_goal_rows(bench_env: dict[str, Path]) -> None:
    encode = _module("bench_encode")
    results = bench_env["results"].with_name("RESULTS-encode.md")
    assert encode.main([*_args(bench_env), "--results", str(results), "--backbones",
                        "bench-micro-vit", "--no-creation", "--section", "bench_encode_x"]) == 0
    lines = _section(results.read_text(), "bench_encode_x")
    assert not any(line.startswith("Model creation") for line in lines)
    assert "bench_encode_cpu" not in results.read_text()
    rows = [{"backbone": "ViT-B/32", "rates": {"build": 4100.0, "build_pil": 2300.0}},
            {"backbone": "ViT-L/14@336px", "rates": {"build": 900.0}},
            {"backbone": "RN50", "rates": {"build": 5000.0}}]
    assert encode._goal_rows(rows) == [
        "| ViT-B/32 | ≥ 4,000 img/s | 4,100 img/s: met (PIL route 2,300) |",
        "| ViT-L/14@336px | ≥ 950 img/s | 900 img/s: not met |"]


@pytest.mark.parametrize("script", ["bench_encode", "bench_ray", "bench_search"])
def test_scripts_reject_a_bad_device_in_one_line(script: str, tmp_path: Path,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    import torch

    bench = _module(script)
    with pytest.raises(SystemExit) as exit_info:  # argparse: usage, then the error
        bench.main(["--quick", "--no-write", "--device", "tpu"])
    assert exit_info.value.code == 2
    assert "argument --device: use cpu, cuda or cuda:N, not 'tpu'" in capsys.readouterr().err
    if torch.cuda.is_available():
        return  # the no-CUDA error below cannot happen on this machine
    argv = ["--quick", "--no-write", "--workdir", str(tmp_path), "--device", "cuda"]
    if script == "bench_search":
        argv += ["--contenders", "flat,device"]
    assert bench.main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and "CUDA is not available" in err[0]
    assert not any(tmp_path.iterdir())  # refused before any set-up


def test_gpu_session_scripts_reject_bad_input_in_one_line(tmp_path: Path) -> None:
    import os

    env = {**os.environ, "DEVICE": "tpu", "OUT": str(tmp_path / "out"),
           "WORK": str(tmp_path / "work")}
    cases = [(["bash", str(BENCH / "gpu_wheels.sh"), str(tmp_path / "w"), "3.1x"], None,
              "usage: bash benchmarks/gpu_wheels.sh"),
             (["bash", str(BENCH / "gpu_session.sh")], env, "DEVICE must be cpu, cuda or cuda:N")]
    for argv, environ, message in cases:
        done = subprocess.run(argv, capture_output=True, text=True, env=environ, timeout=30)
        assert done.returncode == 2 and done.stdout == ""
        assert done.stderr.count("\n") == 1 and message in done.stderr, done.stderr
    assert not any(tmp_path.iterdir())  # nothing fetched, installed or written


def test_remote_script_writes_its_section(bench_env: dict[str, Path]) -> None:
    # moto's S3 server in its own process on loopback, as `python benchmarks/bench_remote.py`
    results = bench_env["results"].with_name("RESULTS-remote.md")
    done = subprocess.run([sys.executable, str(BENCH / "bench_remote.py"), "--quick",
                           "--repeats", "1", "--results", str(results), "--workdir",
                           str(bench_env["work"])],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    lines = _section(results.read_text(), "bench_remote")
    ratios = _ratios(lines)
    assert len(ratios) == 2 and all(RATIO.match(r) for r in ratios), ratios
    for ratio, route in zip(ratios, ("files", "shards"), strict=True):
        assert ratio.endswith("x build from S3 (moto, loopback) over local disk, images/s, "
                              f"{route}, tiny-rn"), ratio
    rows = [line.split("|") for line in lines if line.startswith(("| files |", "| shards |"))]
    assert [(r[1].strip(), r[3].strip()) for r in rows] == [
        (route, source) for route in ("files", "shards")
        for source in ("local", "s3", "s3, no read-ahead")]
    assert sum("read-ahead: S3 with it over S3 without it" in line for line in lines) == 2
    assert sum("moto serves" in line for line in lines) == 2


def test_classify_script_writes_its_section(tmp_path: Path, small_world: Path) -> None:
    (tmp_path / "world-small-0").symlink_to(small_world)  # the session's world, not a new one
    results = tmp_path / "RESULTS.md"
    bench = _module("bench_classify")
    assert bench.main(["--quick", "--results", str(results), "--workdir", str(tmp_path)]) == 0
    lines = _section(results.read_text(), "bench_classify")
    ratios = _ratios(lines)
    assert len(ratios) == 2 and all(RATIO.match(r) for r in ratios), ratios
    whole = [line for line in lines if line.startswith("classify: ")]
    assert [line.rsplit(", ", 2)[1] for line in whole] == ["prompt", "prototype"]
    assert all(re.match(r"^classify: \d+\.\d\d ms whole call, \w+, demo store$", w)
               for w in whole)


def test_bench_search_set_writes_its_section_and_two_ratios(bench_env: dict[str, Path]
                                                            ) -> None:
    """``--set loose``: auto against the hand IVF and HNSW sweeps, the two issue-34 lines."""
    search = _module("bench_search")
    assert search.main([*_args(bench_env), "--set", "loose"]) == 0
    lines = _section(bench_env["results"].read_text(), "bench_search_loose")
    # --section writes beside it (a 200k run must not replace the 1M figures)
    assert search.main([*_args(bench_env), "--set", "loose", "--section", "bench_x"]) == 0
    assert _section(bench_env["results"].read_text(), "bench_x")[0].startswith("## Auto")
    ratios = _ratios(lines)
    assert len(ratios) == 2 and all(RATIO.match(r) for r in ratios), ratios
    assert "clipindex auto over best hand-tuned point, 1-query p50 at equal recall, " \
           "20k loose" in ratios[0]
    assert "clipindex auto build time over hand IVF at equal recall, 20k loose" in ratios[1]
    assert any(line.startswith("| clipindex auto |") for line in lines)
    assert any(line.startswith("| hand IVF141 |") for line in lines)
    assert any("load average" in line for line in lines)


def test_bench_search_set_sweeps_a_full_hnsw_and_reads_it_back(bench_env: dict[str, Path]
                                                               ) -> None:
    """``--set loose --hnsw-n 0``: HNSW over all N rows is a counted hand point (its build
    seconds beside it); a second run reads the graph from ``--hnsw-cache``."""
    search = _module("bench_search")
    cache = bench_env["work"] / "hnsw"
    argv = [*_args(bench_env), "--set", "loose", "--hnsw-n", "0", "--hnsw-m", "16",
            "--hnsw-cache", str(cache)]
    assert search.main(argv) == 0
    lines = _section(bench_env["results"].read_text(), "bench_search_loose")
    assert any(line.startswith("| hand HNSW16 | 16 |") for line in lines)  # not "first N"
    builds = next(line for line in lines if line.startswith("- builds"))
    assert re.search(r"HNSW16 over 20,000 rows \d+ s \(1 thread, load", builds), builds
    assert any(line.startswith("  - hand HNSW16: ") for line in lines)
    assert sorted(f.name for f in cache.iterdir()) == ["loose-n20000-M16-seed0.index",
                                                       "loose-n20000-M16-seed0.json"]
    assert search.main(argv) == 0
    builds = next(line for line in _section(bench_env["results"].read_text(),
                                            "bench_search_loose") if line.startswith("- builds"))
    assert "read from loose-n20000-M16-seed0.index" in builds
