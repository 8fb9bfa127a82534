"""``add_to_store`` (and ``clipindex add``): which add a source gets.

A clip-retrieval output folder (or URL) added to a store made by ``clipindex import`` is
added from its vectors (:func:`~clipindex.store.addimported.add_embeddings`: nothing
encoded, no encoder settings made, no model loaded); any other source is encoded
(:func:`~clipindex.store.add.add_with_options`, its settings from
:func:`~clipindex.store.add.add_options`). Both write a new generation the same way.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from clipindex.store.add import AddResult, Hook, add_options, add_with_options
from clipindex.store.addimported import add_embeddings, is_embeddings_add

if TYPE_CHECKING:
    from clipindex.sources import Dataset

__all__ = ["add_to_store"]


def add_to_store(
    source: Dataset | str | os.PathLike[str],
    *,
    index: str | os.PathLike[str],
    backbones: Sequence[str] | None = None,
    root: str | os.PathLike[str] | None = None,
    pretrained: str = "default",
    batch_size: int | None = None,
    workers: int | None = None,
    device: str | None = None,
    threads: int | None = None,
    shard_size: int | None = None,
    progress: bool = True,
    allow_outside_root: bool = False,
    storage_options: dict[str, Any] | None = None,
    label_field: str | None = None,
    decode: str | None = None,
    _hook: Hook | None = None,
) -> AddResult:
    """Add a changed source's new images to the store ``index`` (``OUT/<dataset>``) and
    tombstone the ones it lost, as a new generation; encode only the new rows.

    ``source`` is what :func:`build_store` takes (YAML config, class-folder tree,
    CSV/parquet manifest, or a :class:`~clipindex.sources.Dataset`); its root may be
    another folder holding the same relative paths. ``backbones`` (default: every
    backbone of the store) are updated; the others are left stale (refused by queries
    until a later add names them). ``batch_size``, ``workers``, ``threads``, ``device``
    and ``shard_size`` are the build's encoding knobs. New images are decoded by each
    store's own route (``decode_route``; :mod:`clipindex.store.routes`): ``decode``
    (``pil``, ``nvjpeg``, ``draft``) may pick the decoder of that route, and one of the
    other route is a :class:`UserInputError`. Rerunning an interrupted add finishes it;
    an add with nothing to do writes nothing. For a store made by ``clipindex import``,
    ``source`` is its grown clip-retrieval folder: new rows come from its vectors and
    the encoding keywords are not used.

    Example
    -------
    >>> add_to_store("photos/", index="indexes/photos").line()  # doctest: +SKIP
    'encoded 4 new images, removed 1'
    """
    if isinstance(source, (str, os.PathLike)) and is_embeddings_add(source, index):
        return add_embeddings(source, index=index, backbones=backbones, pretrained=pretrained,
                              root=root, label_field=label_field,
                              storage_options=storage_options, _hook=_hook)
    opts = add_options(index, batch_size=batch_size, shard_size=shard_size, workers=workers,
                       threads=threads, device=device, decode=decode, progress=progress)
    return add_with_options(source, opts, index=index, backbones=backbones, root=root,
                            pretrained=pretrained, allow_outside_root=allow_outside_root,
                            storage_options=storage_options, label_field=label_field,
                            _hook=_hook)
