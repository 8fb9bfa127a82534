"""Backbone registry: which open_clip model and which weights a backbone name means.

A backbone is named three ways, all accepted by :func:`resolve_backbone`:

- the study's names (``RN50``, ``RN50x4``, ``RN50x16``, ``ViT-B/32``, ``ViT-B/16``,
  ``ViT-L/14``, ``ViT-L/14@336px``), whose default pretrained tag is ``openai``;
- any open_clip model name (``ViT-B-32``, ``ViT-L-14-336``, ``convnext_base``...), checked
  against ``open_clip.list_models()``;
- the registered local backbones (:func:`register_backbone`): backbones whose default
  weights ship as an open_clip ``local-dir`` folder, like open_clip's own pretrained
  registry but on disk. The tiny demo backbones of :mod:`clipindex.tiny` (``tiny-vit``,
  ``tiny-rn``, ...) are the built-in entries; nothing else special-cases them.

``pretrained`` is ``"default"``, an open_clip tag (``laion2b_s34b_b79k``), ``"none"``
(random initialisation, for speed measurements), a local checkpoint file
(``.pt``/``.pth``/``.bin``/``.safetensors``) or a self-contained ``local-dir`` folder
(``open_clip_config.json`` + weights). Resolving never loads or downloads anything; see
:func:`clipindex.encode.encoder.load_encoder` for that.

The store folder of a backbone (``BackboneSpec.name``) is the open_clip model name, with
``__<tag>`` appended only for a non-default tag (``none`` counts as non-default), and
``__<file stem>`` / ``__<folder name>`` for local checkpoints.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from clipindex.errors import UserInputError

__all__ = [
    "STUDY_BACKBONES",
    "CHECKPOINT_SUFFIXES",
    "BackboneSpec",
    "resolve_backbone",
    "known_backbones",
    "RegisteredBackbone",
    "register_backbone",
    "registered_backbone",
    "registered_backbones",
    "config_facts",
]

# study name -> open_clip model name, in the study's order (smallest to largest per family).
STUDY_BACKBONES: dict[str, str] = {
    "RN50": "RN50",
    "RN50x4": "RN50x4",
    "RN50x16": "RN50x16",
    "ViT-B/32": "ViT-B-32",
    "ViT-B/16": "ViT-B-16",
    "ViT-L/14": "ViT-L-14",
    "ViT-L/14@336px": "ViT-L-14-336",
}
STUDY_DEFAULT_TAG = "openai"
CHECKPOINT_SUFFIXES = (".pt", ".pth", ".bin", ".safetensors")
LOCAL_DIR_PREFIX = "local-dir:"


@dataclass(frozen=True)
class BackboneSpec:
    """A resolved backbone: what to build and where its vectors live.

    Attributes
    ----------
    name : str
        Store folder name: the open_clip model name (``ViT-B-32``, ``tiny-vit``) with
        ``__<tag>`` for a non-default pretrained tag (``ViT-B-32__none``).
    display : str
        Name for tables and plots: the study's name where there is one (``ViT-B/32``).
    model : str
        The open_clip model name (``ViT-B-32``), or ``local-dir:DIR`` for a folder.
    pretrained : str or None
        Tag (``openai``), ``None`` for random initialisation, or the absolute path of a
        checkpoint file or ``local-dir`` folder.
    source : str
        How the weights come: ``"tag"``, ``"none"``, ``"file"`` or ``"dir"``.
    quick_gelu : bool
        Build the model with QuickGELU (OpenAI weights were trained with it).
    tiny : bool
        A registered local backbone (:func:`registered_backbone`; the tiny demo
        backbones): its tokenizer always comes from its shipped folder.
    """

    name: str
    display: str
    model: str
    pretrained: str | None
    source: str
    quick_gelu: bool = False
    tiny: bool = False

    @property
    def checkpoint_path(self) -> Path | None:
        """The local checkpoint file or folder, or ``None`` for a tag / random init."""
        return Path(self.pretrained) if self.source in ("file", "dir") and self.pretrained else None


def _key(name: str) -> str:
    """Normalise a user-typed name: ``vit-l/14@336px`` and ``ViT-L-14-336`` meet."""
    key = name.strip().lower().replace("/", "-")
    return re.sub(r"@(\d+)(px)?$", r"-\1", key)


# ----------------------------------------------------------------------------- registry
@dataclass(frozen=True)
class RegisteredBackbone:
    """A backbone whose default weights ship as a local open_clip folder.

    Like an entry of open_clip's pretrained registry, but on disk: ``folder()`` is the
    ``local-dir`` folder of the default weights (``open_clip_config.json``, weights,
    tokenizer files), whose tokenizer is used whatever weights are loaded; ``setup()``
    runs before a model is built (e.g. registering the model config with open_clip so
    ``--pretrained none`` builds it by name).
    """

    name: str
    folder: Callable[[], Path]
    setup: Callable[[], object] | None = None

    def prepare(self) -> Path:
        """Run ``setup`` and return the folder (resolved)."""
        if self.setup is not None:
            self.setup()
        return Path(self.folder()).resolve()


_REGISTRY: dict[str, RegisteredBackbone] = {}
_BUILTINS: list[bool] = []  # filled once the built-in sources are registered


def register_backbone(entry: RegisteredBackbone, *, replace: bool = False) -> None:
    """Add a backbone source to the registry :func:`resolve_backbone` consults.

    Raises
    ------
    UserInputError
        The name is taken (by the study's names or another entry) and not ``replace``.
    """
    taken = {_key(n) for n in (*STUDY_BACKBONES, *STUDY_BACKBONES.values())}
    if not replace and (_key(entry.name) in taken or entry.name in _registry()):
        raise UserInputError(f"Backbone {entry.name!r} is registered already.")
    _REGISTRY[entry.name] = entry


def _registry() -> dict[str, RegisteredBackbone]:
    if not _BUILTINS:
        _BUILTINS.append(True)
        _register_builtins()
    return _REGISTRY


def _register_builtins() -> None:
    """The shipped sources: the tiny demo backbones of :mod:`clipindex.tiny`."""
    from clipindex import tiny

    for name in tiny.TINY_BACKBONES:
        _REGISTRY.setdefault(name, RegisteredBackbone(
            name, functools.partial(tiny.checkpoint_dir, name), tiny.register_configs))


def registered_backbone(name: str) -> RegisteredBackbone | None:
    """The registry entry of ``name`` (exact or normalised spelling), or None.

    Examples
    --------
    >>> registered_backbone("tiny-vit").name
    'tiny-vit'
    """
    registry = _registry()
    if name in registry:
        return registry[name]
    return next((e for n, e in registry.items() if _key(n) == _key(name)), None)


def registered_backbones() -> list[str]:
    """Names of the registered local backbones, in registration order."""
    return list(_registry())


def _open_clip_models() -> list[str]:
    import open_clip

    return list(open_clip.list_models())


def known_backbones(*, include_open_clip: bool = False) -> list[str]:
    """Names :func:`resolve_backbone` knows: the study's seven, then the tiny backbones.

    Parameters
    ----------
    include_open_clip : bool
        Also list every open_clip model name.

    Examples
    --------
    >>> known_backbones()[:3]
    ['RN50', 'RN50x4', 'RN50x16']
    """
    names = list(STUDY_BACKBONES) + registered_backbones()
    if include_open_clip:
        names += [m for m in _open_clip_models() if m not in names]
    return names


def _unknown(name: str) -> UserInputError:
    known = ", ".join(known_backbones())
    return UserInputError(
        f"Unknown backbone {name!r}. Known: {known} "
        "(or any open_clip model name; see open_clip.list_models())"
    )


def _lookup(name: str) -> tuple[str, str, str | None, bool]:
    """Map a name to ``(open_clip model, display, default tag, is_tiny)``."""
    key = _key(name)
    for display, model in STUDY_BACKBONES.items():
        if key in (_key(display), _key(model)):
            return model, display, STUDY_DEFAULT_TAG, False
    entry = registered_backbone(name)
    if entry is not None:
        return entry.name, entry.name, None, True
    by_key = {_key(m): m for m in _open_clip_models()}
    if key in by_key:
        model = by_key[key]
        return model, model, _default_tag(model), False
    raise _unknown(name)


def _default_tag(model: str) -> str | None:
    """``openai`` where open_clip has OpenAI weights for the model, else no default."""
    import open_clip

    tags = open_clip.list_pretrained_tags_by_model(model)
    return STUDY_DEFAULT_TAG if STUDY_DEFAULT_TAG in tags else None


def _no_default(model: str) -> UserInputError:
    import open_clip

    tags = ", ".join(open_clip.list_pretrained_tags_by_model(model)) or "none listed"
    return UserInputError(
        f"Backbone {model!r} has no default pretrained weights: pass a pretrained tag "
        f"(known: {tags}), 'none' for random initialisation, or a local checkpoint path."
    )


def _safe(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "-", text).strip("-") or "checkpoint"


def _local_dir_spec(path: Path, display: str | None = None) -> BackboneSpec:
    if not (path / "open_clip_config.json").is_file():
        raise UserInputError(
            f"{path} is not an open_clip folder: it has no open_clip_config.json. "
            "Pass a checkpoint file (.pt/.bin/.safetensors) or a folder saved for "
            "open_clip's 'local-dir:' loading."
        )
    path = path.resolve()
    return BackboneSpec(
        name=_safe(path.name), display=display or path.name, model=LOCAL_DIR_PREFIX + str(path),
        pretrained=str(path), source="dir",
    )


def _tag_quick_gelu(model: str, tag: str) -> bool:
    import open_clip

    return bool((open_clip.get_pretrained_cfg(model, tag) or {}).get("quick_gelu", False))


def resolve_backbone(name: str, pretrained: str | None = "default") -> BackboneSpec:
    """Resolve a backbone name and a ``pretrained`` choice to a :class:`BackboneSpec`.

    Parameters
    ----------
    name : str
        A study name (``ViT-B/32``), an open_clip model name (``ViT-B-32``), a tiny
        backbone (``tiny-vit``) or ``local-dir:/path/to/folder``.
    pretrained : str or None
        ``"default"`` (``openai`` for the study's backbones, the shipped weights for tiny
        ones, random init otherwise), an open_clip tag, ``"none"``/``None`` (random
        initialisation), a checkpoint file or an open_clip ``local-dir`` folder.

    Raises
    ------
    UserInputError
        Unknown name (the message lists the known ones), unknown tag, or a path that is
        neither a checkpoint file nor an open_clip folder.

    Examples
    --------
    >>> resolve_backbone("ViT-B/32").name
    'ViT-B-32'
    >>> resolve_backbone("ViT-B/32", "none").name
    'ViT-B-32__none'
    """
    if not isinstance(name, str) or not name.strip():
        raise UserInputError("A backbone name is required, e.g. ViT-B/32 or tiny-vit.")
    if name.startswith(LOCAL_DIR_PREFIX):
        return _local_dir_spec(Path(name[len(LOCAL_DIR_PREFIX):]).expanduser())
    model, display, default_tag, is_tiny = _lookup(name)
    choice = "none" if pretrained is None else str(pretrained).strip()
    if choice.startswith(LOCAL_DIR_PREFIX):  # open_clip's spelling of a folder path
        choice = str(Path(choice[len(LOCAL_DIR_PREFIX):]).expanduser())
    if choice == "default":
        if is_tiny:
            return _registered_default(model)
        if default_tag is None:
            raise _no_default(model)
        return BackboneSpec(model, display, model, default_tag, "tag",
                            quick_gelu=_tag_quick_gelu(model, default_tag))
    if choice.lower() == "none":
        return BackboneSpec(f"{model}__none", display, model, None, "none", tiny=is_tiny)
    return _with_explicit_weights(model, display, default_tag, choice, is_tiny)


def _registered_default(model: str) -> BackboneSpec:
    """The spec of a registered backbone's shipped weights (its ``local-dir`` folder)."""
    entry = registered_backbone(model)
    assert entry is not None  # _lookup only marks registered names
    folder = Path(entry.folder()).resolve()
    return BackboneSpec(model, model, LOCAL_DIR_PREFIX + str(folder), str(folder), "dir",
                        tiny=True)


def _with_explicit_weights(
    model: str, display: str, default_tag: str | None, choice: str, is_tiny: bool
) -> BackboneSpec:
    path = Path(choice).expanduser()
    if path.is_dir():
        spec = _local_dir_spec(path, display)
        return BackboneSpec(f"{model}__{spec.name}", display, spec.model, spec.pretrained,
                            "dir", tiny=is_tiny)
    if path.suffix.lower() in CHECKPOINT_SUFFIXES or path.is_file():
        if not path.is_file():
            raise UserInputError(f"Checkpoint file {choice!r} does not exist.")
        # A file for one of the study's backbones is taken to hold OpenAI weights (the
        # offline route the ModelLoadError message points at), so QuickGELU as for 'openai'.
        quick = default_tag is not None and _tag_quick_gelu(model, default_tag)
        return BackboneSpec(f"{model}__{_safe(path.stem)}", display, model,
                            str(path.resolve()), "file", quick_gelu=quick, tiny=is_tiny)
    import open_clip

    tags = list(open_clip.list_pretrained_tags_by_model(model))
    if choice not in tags:
        hint = f"Known tags for {model}: {', '.join(tags)}. " if tags else ""
        raise UserInputError(
            f"Unknown pretrained {choice!r} for backbone {display!r}. {hint}"
            "Use 'default', 'none', a tag, or the path of a local checkpoint file."
        )
    suffix = "" if choice == default_tag else f"__{choice}"
    return BackboneSpec(f"{model}{suffix}", display, model, choice, "tag",
                        quick_gelu=_tag_quick_gelu(model, choice))


def config_facts(spec: BackboneSpec) -> dict[str, Any] | None:
    """``dim``, ``image_size`` and ``context_length`` of ``spec``'s model from its open_clip
    config, without building the model or reading weights (``clipindex import`` checks
    the dim of vectors it did not encode); None when no config names them.

    Examples
    --------
    >>> config_facts(resolve_backbone("ViT-B/32", "none"))["dim"]
    512
    """
    import json

    import open_clip

    if spec.model.startswith(LOCAL_DIR_PREFIX):
        path = Path(spec.model[len(LOCAL_DIR_PREFIX):]) / "open_clip_config.json"
        try:
            cfg = json.loads(path.read_text(encoding="utf-8")).get("model_cfg")
        except (OSError, ValueError):
            return None
    else:
        entry = registered_backbone(spec.model) if spec.tiny else None
        if entry is not None:
            entry.prepare()  # registers its model config with open_clip
        cfg = open_clip.get_model_config(spec.model)
    if not isinstance(cfg, dict) or not isinstance(cfg.get("embed_dim"), int):
        return None
    return {"dim": int(cfg["embed_dim"]),
            "image_size": (cfg.get("vision_cfg") or {}).get("image_size"),
            "context_length": (cfg.get("text_cfg") or {}).get("context_length")}
