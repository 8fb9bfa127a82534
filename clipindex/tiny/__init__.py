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

Examples
--------
>>> import open_clip
>>> from clipindex import tiny
>>> folder = tiny.checkpoint_dir("tiny-vit")
>>> tiny.check_world_version(folder)  # warns if trained on another world generator
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
            f"{path} is missing: train the backbone with `python -m clipindex.tiny.train`"
        ) from exc
    except json.JSONDecodeError as exc:
        raise ModelLoadError(f"{path} is not valid JSON ({exc}); retrain the backbone") from exc


def check_world_version(folder: str | Path) -> bool:
    """Warn (``UserWarning``) if ``folder`` was trained on another world generator version.

    Returns True when the versions match.

    Examples
    --------
    >>> check_world_version(checkpoint_dir("tiny-vit"))
    True
    """
    from clipindex.world import GENERATOR_VERSION

    trained_on = read_record(folder).get("world_version")
    if trained_on == GENERATOR_VERSION:
        return True
    warnings.warn(
        f"Tiny backbone {Path(folder).name!r} was trained on demo-world generator version "
        f"{trained_on!r}, but this clipindex generates version {GENERATOR_VERSION!r}; its "
        "accuracy on a freshly generated world may differ. Retrain it with "
        "`python -m clipindex.tiny.train --world DIR --all`.",
        UserWarning,
        stacklevel=2,
    )
    return False
