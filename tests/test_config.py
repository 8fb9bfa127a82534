"""Typed dataset configs: YAML loading, unknown keys, missing fields, overrides."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from clipindex.config import (
    CONFIG_LOADERS,
    DatasetConfig,
    apply_overrides,
    build_config,
    load_config,
    load_dataset_config,
    read_yaml_mapping,
)
from clipindex.errors import ConfigError

REPO = Path(__file__).resolve().parents[1]
DATASETS = REPO / "clipindex" / "configs" / "datasets"


def _write(tmp_path: Path, text: str, name: str = "x.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def test_shipped_coco_config_is_the_study_protocol() -> None:
    cfg = load_dataset_config(DATASETS / "coco-animals.yaml")
    assert cfg.name == "coco-animals" and cfg.source == "coco"
    assert cfg.classes == ("cat", "dog", "cow", "sheep", "horse")
    assert cfg.exclude == ("person",)
    assert (cfg.per_class, cfg.seed, cfg.support_per_class) == (200, 42, 10)
    assert cfg.drop_multi_target is True
    assert cfg.path("instances") == "annotations/instances_train2017.json"
    assert cfg.path("captions") == "annotations/captions_train2017.json"
    assert cfg.path("images") == "train2017"


def test_shipped_demo_config_uses_val_split() -> None:
    cfg = load_dataset_config(DATASETS / "demo.yaml")
    assert cfg.name == "demo" and cfg.root == "worlds/demo"
    assert cfg.path("instances") == "annotations/instances_val.json"
    assert cfg.path("captions") == "annotations/captions_val.json"
    assert cfg.path("images") == "val"
    coco = load_dataset_config(DATASETS / "coco-animals.yaml")
    same = ("classes", "exclude", "per_class", "seed", "support_per_class", "drop_multi_target")
    assert all(getattr(cfg, f) == getattr(coco, f) for f in same)


def test_split_override_moves_every_path() -> None:
    cfg = load_dataset_config(DATASETS / "coco-animals.yaml", split="val2017")
    assert cfg.path("instances") == "annotations/instances_val2017.json"
    assert cfg.path("images") == "val2017"


def test_unknown_key_lists_valid_keys(tmp_path: Path) -> None:
    path = _write(tmp_path, "name: x\nsource: coco\ninstances: a.json\nclases: [cat]\n")
    with pytest.raises(ConfigError) as err:
        load_dataset_config(path)
    msg = str(err.value)
    assert msg.startswith(f"Unknown key 'clases' in {path}. Valid: name, source, root")
    assert "classes, exclude" in msg and "\n" not in msg


def test_missing_required_field_names_file_and_field(tmp_path: Path) -> None:
    path = _write(tmp_path, "source: folder\n")
    with pytest.raises(ConfigError, match=r"Missing required field 'name' in .*x\.yaml"):
        load_dataset_config(path)


def test_coco_without_instances_names_the_field(tmp_path: Path) -> None:
    path = _write(tmp_path, "name: x\nsource: coco\n")
    with pytest.raises(ConfigError, match=r"x\.yaml: Missing field 'instances'"):
        load_dataset_config(path)


@pytest.mark.parametrize(
    ("line", "pattern"),
    [
        ("per_class: many", r"Field 'per_class' in .* must be an integer, got a string 'many'"),
        ("classes: cat", r"Field 'classes' in .* must be a list"),
        ("drop_multi_target: 1", r"Field 'drop_multi_target' in .* must be a boolean"),
        ("per_class: 0", r"per_class' must be at least 1 or null"),
        ("source: lmdb",
         r"Unknown source .lmdb.*Known: coco, folder, manifest, webdataset, parquet"),
        ("name: 'a b/c'", r"Field 'name' must be a folder name"),
        ("classes: [cat, cat]", r"lists a class twice"),
        ("classes: [cat, person]", r"both in 'classes' and 'exclude'"),
    ],
)
def test_bad_values_are_config_errors(tmp_path: Path, line: str, pattern: str) -> None:
    base = {"name": "name: x", "source": "source: folder"}
    base[line.split(":")[0]] = line
    path = _write(tmp_path, "\n".join(base.values()) + "\n")
    with pytest.raises(ConfigError, match=pattern) as err:
        load_dataset_config(path)
    assert isinstance(err.value, ValueError) and "\n" not in str(err.value)


def test_yaml_problems(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        read_yaml_mapping(tmp_path / "nope.yaml")
    with pytest.raises(ConfigError, match=r"not valid YAML \(line"):
        read_yaml_mapping(_write(tmp_path, "name: [x\nsource: y\n"))
    with pytest.raises(ConfigError, match="must hold a mapping"):
        read_yaml_mapping(_write(tmp_path, "- a\n- b\n"))


def test_overrides_use_replace_and_validate() -> None:
    cfg = load_dataset_config(DATASETS / "demo.yaml")
    changed = apply_overrides(cfg, {"per_class": 20, "classes": ["cat", "dog"], "seed": 7})
    assert changed == dataclasses.replace(cfg, per_class=20, classes=("cat", "dog"), seed=7)
    assert cfg.per_class == 200  # frozen original untouched
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.seed = 1  # type: ignore[misc]
    with pytest.raises(ConfigError, match=r"Unknown override 'perclass'\. Valid: name, source"):
        apply_overrides(cfg, {"perclass": 3})
    with pytest.raises(ConfigError, match="support_per_class' must be 0 or more"):
        apply_overrides(cfg, {"support_per_class": -1})
    with pytest.raises(ConfigError, match="must be an integer"):
        load_dataset_config(DATASETS / "demo.yaml", seed="x")


def test_split_placeholder_without_split() -> None:
    cfg = DatasetConfig(name="x", source="coco", instances="ann/instances_{split}.json")
    with pytest.raises(ConfigError, match="uses \\{split\\} but 'split' is not set"):
        cfg.path("instances")


def test_loader_registry_and_generic_builder(tmp_path: Path) -> None:
    assert load_config("dataset", DATASETS / "demo.yaml").name == "demo"
    assert "dataset" in CONFIG_LOADERS
    with pytest.raises(ConfigError, match="Unknown config kind 'benchh'. Known: dataset"):
        load_config("benchh", DATASETS / "demo.yaml")

    @dataclasses.dataclass(frozen=True)
    class Other:  # the pattern another config kind reuses
        methods: tuple[str, ...]
        k: int = 10
        scale: float = 1.0

    other = build_config(Other, {"methods": ["prompt"], "scale": 2}, "b.yaml")
    assert other == Other(methods=("prompt",), k=10, scale=2.0)
    with pytest.raises(ConfigError, match="Unknown key 'kk' in b.yaml. Valid: methods, k, scale"):
        build_config(Other, {"methods": [], "kk": 1}, "b.yaml")


def test_to_dict_is_json_ready() -> None:
    d = load_dataset_config(DATASETS / "demo.yaml").to_dict()
    assert d["classes"] == ["cat", "dog", "cow", "sheep", "horse"]
    assert d["exclude"] == ["person"] and d["instances"] == "annotations/instances_{split}.json"
