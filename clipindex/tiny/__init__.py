"""The three tiny CLIP backbones trained on the demo world, shipped inside the package.

Each backbone is a self-contained folder ``clipindex/tiny/<name>/`` that open_clip loads
offline::

    open_clip_config.json         model_cfg (+ preprocess_cfg), as open_clip's local-dir reads it
    open_clip_model.safetensors   fp16 weights (loaded into an fp32 model by open_clip)
    tokenizer.json, tokenizer_config.json   the compact word-level vocabulary
    clipindex.json                world_version, world seed, training seed, steps, seconds,
                                  and the validation figures measured after training

``register_configs()`` also registers the model configs with open_clip under the backbone
names, so ``open_clip.create_model("tiny-vit")`` (random weights, ``--pretrained none``)
and ``open_clip.get_tokenizer("tiny-vit")`` work like any built-in model.

Owns: the backbones' registry (names, shipped folders, open_clip model configs, the
training record); :mod:`clipindex.encode.backbones` registers them as ordinary local
backbones. May import: ``clipindex.errors`` only. Never ``clipindex.demo``: the world
generator version a check compares with is passed in (``check_world_version``), so
loading a backbone imports no world module. Training and scoring them on a demo world
is the demo's (:mod:`clipindex.demo.train`, :mod:`clipindex.demo.evaluate`).

Examples
--------
>>> import open_clip
>>> from clipindex import tiny
>>> folder = tiny.checkpoint_dir("tiny-vit")
>>> tiny.check_world_version(folder, "5")  # False (and a warning) for another generator
True
>>> model, _, preprocess = open_clip.create_model_and_transforms(f"local-dir:{folder}")
>>> tokenizer = open_clip.get_tokenizer(f"local-dir:{folder}")
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import Any

from clipindex.errors import ModelLoadError, UserInputError

__all__ = [
    "TINY_BACKBONES",
    "checkpoint_dir",
    "register_configs",
    "check_world_version",
    "read_record",
    "world_version_of",
]

TINY_BACKBONES: tuple[str, ...] = ("tiny-vit", "tiny-rn", "tiny-vit-s")

_HERE = Path(__file__).resolve().parent
CONFIGS_DIR = _HERE / "configs"
RECORD_FILE = "clipindex.json"


def checkpoint_dir(name: str) -> Path:
    """Return the shipped folder of tiny backbone ``name``.

    Raises
    ------
    UserInputError
        ``name`` is not one of :data:`TINY_BACKBONES`.

    Examples
    --------
    >>> checkpoint_dir("tiny-rn").name
    'tiny-rn'
    """
    if name not in TINY_BACKBONES:
        raise UserInputError(
            f"Unknown tiny backbone {name!r}. Known: {', '.join(TINY_BACKBONES)}"
        )
    return _HERE / name


def register_configs() -> list[str]:
    """Register the tiny model configs with open_clip and return their names.

    The configs are ``clipindex/tiny/configs/<name>.json``; their ``hf_tokenizer_name``
    is pointed at the shipped folder so ``open_clip.get_tokenizer(name)`` finds the
    compact vocabulary. Calling it again is harmless (and re-applies the tokenizer path
    if another ``add_model_config`` call rescanned open_clip's registry).

    Examples
    --------
    >>> "tiny-vit" in register_configs()
    True
    """
    import open_clip
    from open_clip import factory

    open_clip.add_model_config(CONFIGS_DIR)
    # open_clip resolves hf_tokenizer_name as given; an absolute path keeps it offline.
    registry = getattr(factory, "_MODEL_CONFIGS", {})
    names = []
    for name in TINY_BACKBONES:
        if name in registry:
            registry[name]["text_cfg"]["hf_tokenizer_name"] = str(checkpoint_dir(name))
            names.append(name)
    return names


def read_record(folder: str | Path) -> dict[str, Any]:
    """Return the ``clipindex.json`` training record of a tiny backbone folder."""
    path = Path(folder) / RECORD_FILE
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError as exc:
        raise ModelLoadError(
            f"{path} is missing: train the backbone with `python -m clipindex.demo.train`"
        ) from exc
    except json.JSONDecodeError as exc:
        raise ModelLoadError(f"{path} is not valid JSON ({exc}); retrain the backbone") from exc


def check_world_version(folder: str | Path, generator_version: str | None) -> bool:
    """Warn (``UserWarning``) if ``folder`` was trained on another world generator version.

    ``generator_version`` is the version of the world at hand: a world folder's
    ``world.json["generator_version"]`` (:func:`world_version_of`) or
    ``clipindex.demo.world.GENERATOR_VERSION``. The check belongs where a demo world is used
    with the backbones (training, evaluation, the demo), never on the model-loading
    path: loading a backbone must not import the world generator. Returns True when
    the versions match (``None``, an unknown version, counts as another one).

    Examples
    --------
    >>> from clipindex.demo.world import GENERATOR_VERSION  # doctest: +SKIP
    >>> check_world_version(checkpoint_dir("tiny-vit"), GENERATOR_VERSION)  # doctest: +SKIP
    True
    """
    trained_on = read_record(folder).get("world_version")
    if trained_on is not None and trained_on == generator_version:
        return True
    warnings.warn(
        f"Tiny backbone {Path(folder).name!r} was trained on demo-world generator version "
        f"{trained_on!r}, but this world was made by generator version "
        f"{generator_version!r}; its accuracy on it may differ. Retrain it with "
        "`python -m clipindex.demo.train --world DIR --all`.",
        UserWarning,
        stacklevel=2,
    )
    return False


def world_version_of(world_dir: str | Path) -> str | None:
    """The generator version a demo world folder records (``world.json``), else None."""
    path = Path(world_dir) / "world.json"
    try:
        return json.loads(path.read_text(encoding="utf-8")).get("generator_version")
    except (OSError, json.JSONDecodeError, AttributeError):
        return None
