"""The configs shipped in the package: `clipindex configs`, bare names, `builtin:NAME`, and
class-folder sources that refuse folders clipindex wrote (#37)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner

from clipindex.cli import main
from clipindex.config import builtin_configs, load_bench_config, resolve_config_source
from clipindex.errors import ConfigError, DataError
from clipindex.sources import load_dataset

pytestmark = pytest.mark.usefixtures("faiss_single_thread")
FAST = ["--batch-size", "4", "--shard-size", "8", "--workers", "0", "--no-progress"]


def _one_line_error(res, *needles: str) -> str:
    assert res.exit_code == 2, res.output
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: "), res.stderr
    for needle in needles:
        assert needle in lines[0], lines[0]
    return lines[0]


def test_the_package_ships_its_configs() -> None:
    assert sorted(builtin_configs("dataset")) == ["coco-animals", "coco-animals-study", "demo"]
    assert sorted(builtin_configs("bench")) == ["demo", "study"]
    for path in [*builtin_configs("dataset").values(), *builtin_configs("bench").values()]:
        assert "clipindex/configs/" in path.as_posix() and path.is_file()


def test_configs_lists_and_copies(tmp_path: Path) -> None:
    res = CliRunner().invoke(main, ["configs", "--json"])
    assert res.exit_code == 0, res.output
    rows = json.loads(res.stdout)
    assert {(r["kind"], r["name"]) for r in rows} == {
        ("dataset", "demo"), ("dataset", "coco-animals"), ("dataset", "coco-animals-study"),
        ("bench", "demo"), ("bench", "study")}
    assert all(r["summary"] for r in rows)
    dest = tmp_path / "mine"
    res = CliRunner().invoke(main, ["configs", "--copy", str(dest)])
    assert res.exit_code == 0, res.output
    assert (dest / "datasets" / "demo.yaml").read_bytes() == \
        builtin_configs("dataset")["demo"].read_bytes()
    # the copied bench config still finds its dataset config beside it
    bench = load_bench_config(dest / "bench" / "demo.yaml")
    assert Path(bench.dataset) == dest / "datasets" / "demo.yaml"
    again = CliRunner().invoke(main, ["configs", "--copy", str(dest)])
    _one_line_error(again, "exists", "--force")
    assert CliRunner().invoke(main, ["configs", "--copy", str(dest), "--force"]).exit_code == 0


def test_a_bare_name_is_the_shipped_config_unless_a_file_has_it(tmp_path: Path,
                                                                 monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    assert resolve_config_source("demo", "dataset") == builtin_configs("dataset")["demo"]
    assert resolve_config_source("builtin:study", "bench") == builtin_configs("bench")["study"]
    assert resolve_config_source("other", "dataset") == Path("other")  # not shipped: a path
    assert load_bench_config("demo").backbones == ("tiny-vit", "tiny-rn", "tiny-vit-s")
    (tmp_path / "demo").mkdir()
    with pytest.raises(ConfigError, match=r"'demo' is both a folder .* write ./demo for the "
                                          r"folder or builtin:demo for the config"):
        resolve_config_source("demo", "dataset")
    assert resolve_config_source("./demo", "dataset") == Path("demo")
    assert resolve_config_source("builtin:demo", "dataset") == builtin_configs("dataset")["demo"]
    with pytest.raises(ConfigError, match="No built-in dataset config 'nope': the shipped ones "
                                          "are coco-animals, coco-animals-study, demo"):
        resolve_config_source("builtin:nope", "dataset")


def test_build_demo_finds_the_shipped_config_from_an_empty_folder(
        small_world: Path, tmp_path: Path, monkeypatch, use_fake_encoders) -> None:
    # The Quick start's `clipindex build demo`: the shipped config, no checkout needed; its
    # root (worlds/demo) is relative to the working folder, like --root.
    work = tmp_path / "empty"
    work.mkdir()
    monkeypatch.chdir(work)
    res = CliRunner().invoke(main, ["build", "demo", "--backbone", "fake-a", *FAST])
    _one_line_error(res, "worlds/demo is not a folder",
                    str(builtin_configs("dataset")["demo"]))
    (work / "worlds").mkdir()
    (work / "worlds" / "demo").symlink_to(small_world)
    ds = load_dataset("demo", per_class=8, support_per_class=2)
    assert ds.name == "demo" and len(ds.images) == 40
    assert set(ds.images["label"]) == {"cat", "dog", "cow", "sheep", "horse"}
    (work / "demo").mkdir()  # now a folder of that name is here: refused, naming both
    res = CliRunner().invoke(main, ["build", "demo", "--backbone", "fake-a", *FAST])
    _one_line_error(res, "./demo", "builtin:demo")
    assert not (work / "indexes").exists()


def _demo_out_copy(root: Path) -> Path:
    # what `cp -r demo-out demo` gives: world/ (world.json), indexes/, results/ (run.json)
    (root / "world" / "val").mkdir(parents=True)
    (root / "world" / "world.json").write_text("{}")
    (root / "results").mkdir()
    (root / "results" / "run.json").write_text("{}")
    return root


@pytest.mark.parametrize("marker,what", [("world.json", "a demo world"),
                                         ("run.json", "a clipindex results folder"),
                                         ("dataset.json", "a clipindex store")])
def test_a_class_folder_source_refuses_folders_clipindex_wrote(tmp_path: Path, marker: str,
                                                               what: str) -> None:
    inside = tmp_path / "inside"
    (inside / "a").mkdir(parents=True)
    (inside / "b").mkdir()
    (inside / marker).write_text("{}")
    with pytest.raises(DataError, match=f"is {what} \\(it holds {marker}\\), not a folder of "
                                        "class sub-folders"):
        load_dataset(inside)


def test_a_copy_of_demo_out_is_not_encoded_as_classes(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    _demo_out_copy(tmp_path / "demo")
    res = CliRunner().invoke(main, ["build", "./demo", "--backbone", "tiny-vit", "--no-progress"])
    line = _one_line_error(res, "results", "run.json", "not a folder of class sub-folders")
    assert not (tmp_path / "indexes").exists(), line
    dumped = yaml.safe_load(builtin_configs("dataset")["demo"].read_text())
    assert dumped["root"] == "worlds/demo"
