"""The configs shipped in the package (``clipindex/configs/{datasets,bench}/*.yaml``).

A bare name such as ``demo`` stands for one of them wherever a config path is taken,
unless a file or folder of that name exists; ``builtin:NAME`` always does.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from clipindex.errors import ConfigError

__all__ = ["BUILTIN_PREFIX", "builtin_configs", "copy_builtin_configs",
           "describe_builtin_configs", "is_bare_name", "resolve_config_source"]

_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")


#: Prefix that names a shipped config whatever the working folder holds (``builtin:demo``).
BUILTIN_PREFIX = "builtin:"
_BUILTIN_FOLDERS = {"dataset": "datasets", "bench": "bench"}


def builtin_configs(kind: str) -> dict[str, Path]:
    """The configs of ``kind`` (``dataset`` or ``bench``) shipped in the package, by name.

    Examples
    --------
    >>> sorted(builtin_configs("dataset"))
    ['coco-animals', 'coco-animals-study', 'demo']
    """
    if kind not in _BUILTIN_FOLDERS:
        raise ConfigError(f"Unknown config kind {kind!r}: use one of {', '.join(_BUILTIN_FOLDERS)}")
    folder = Path(__file__).resolve().parents[1] / "configs" / _BUILTIN_FOLDERS[kind]
    return {p.stem: p for p in sorted(folder.glob("*.yaml"), key=lambda p: p.stem)}


def _summary(path: Path) -> str:
    for line in path.read_text(encoding="utf-8").splitlines():
        text = line.lstrip("#").strip()
        if line.startswith("#") and text:
            return text
    return ""


def describe_builtin_configs() -> list[dict[str, str]]:
    """One row per shipped config: kind, name, path and the first line of its comment."""
    return [{"kind": kind, "name": name, "path": str(path), "summary": _summary(path)}
            for kind in _BUILTIN_FOLDERS for name, path in builtin_configs(kind).items()]


def copy_builtin_configs(dest: str | os.PathLike[str], *, force: bool = False) -> list[Path]:
    """Copy the shipped configs to ``dest/datasets/`` and ``dest/bench/`` (the layout they
    refer to each other by); an existing file is kept unless ``force``."""
    dest = Path(dest).expanduser()
    pairs = [(path, dest / _BUILTIN_FOLDERS[kind] / path.name)
             for kind in _BUILTIN_FOLDERS for path in builtin_configs(kind).values()]
    there = [str(target) for _, target in pairs if target.exists()]
    if there and not force:
        raise ConfigError(f"{there[0]} exists ({len(there)} of the files do): pass --force to "
                          "overwrite them, or copy to another folder")
    for source, target in pairs:
        try:
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(source.read_bytes())
        except OSError as exc:
            raise ConfigError(f"Cannot write {target}: {exc.strerror or exc}") from None
    return [target for _, target in pairs]


def is_bare_name(text: str) -> bool:
    """Whether ``text`` could name a shipped config (no folder part, no suffix)."""
    return bool(_NAME_RE.match(text)) and not Path(text).suffix and text not in (".", "..")


def resolve_config_source(source: str | os.PathLike[str], kind: str) -> Path:
    """The path a config argument stands for: a shipped config for ``builtin:NAME`` or for a
    bare ``NAME`` (a ``str``; a ``Path`` is always a path) that is no file or folder here;
    otherwise the path itself.

    A bare name that is both a file or folder here and a shipped config is refused, naming
    both spellings (``./NAME`` for the file or folder, ``builtin:NAME`` for the config).

    Examples
    --------
    >>> resolve_config_source("builtin:demo", "dataset").name
    'demo.yaml'
    >>> resolve_config_source("my/data.yaml", "dataset")
    PosixPath('my/data.yaml')
    """
    text = os.fspath(source)
    shipped = builtin_configs(kind)
    if text.startswith(BUILTIN_PREFIX):
        name = text[len(BUILTIN_PREFIX):]
        if name not in shipped:
            raise ConfigError(f"No built-in {kind} config {name!r}: the shipped ones are "
                              f"{', '.join(shipped)} (clipindex configs lists them)")
        return shipped[name]
    if not isinstance(source, str) or not is_bare_name(text) or text not in shipped:
        return Path(text)
    here = Path(text)
    if here.exists() or here.is_symlink():
        what = "folder" if here.is_dir() else "file"
        raise ConfigError(f"'{text}' is both a {what} in the working folder and a built-in "
                          f"{kind} config: write ./{text} for the {what} or {BUILTIN_PREFIX}"
                          f"{text} for the config")
    return shipped[text]
