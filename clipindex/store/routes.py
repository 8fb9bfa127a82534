"""A store's decode route: how its image vectors were decoded, kept by builds and adds.

Every manifest records ``decode_route`` (:data:`clipindex.encode.DECODE_ROUTES`):

- ``reference``: a full decode and open_clip's own ``preprocess`` (the ``pil`` or
  ``nvjpeg`` decoder): the vectors are open_clip's ``encode_image`` of the upright image;
- ``draft``: JPEGs decoded at a reduced DCT scale (``--decode draft``), faster and not
  open_clip's pixels. A manifest without the key was written before clipindex recorded
  it, when draft was the only route (:func:`~clipindex.store.manifest.stored_route`).

Who picks it:

- ``build``: ``--decode`` given, its route; else with ``--rebuild``, ``reference``; else a
  finished store keeps its own route (an old draft store stays "up to date" and says so);
  a new store is ``reference``. A finished store of another route is re-encoded.
- ``add``: the store's route (new rows decoded like the old ones); a ``--decode`` of the
  other route is refused, since one store would then hold two kinds of vectors.
- queries: the store's encoder decodes query files by the store's route
  (:attr:`Encoder.decode_route`), so a stored image queried by its file finds itself.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from clipindex.errors import UserInputError
from clipindex.store.manifest import MANIFEST, read_manifest, stored_route

__all__ = ["add_decoder", "build_route", "route_note"]


def build_route(bdir: Path, decode: str | None, rebuild: bool) -> str:
    """The route a build of backbone folder ``bdir`` encodes with (module notes)."""
    from clipindex.encode import decode_route

    if decode is not None:
        return decode_route(decode)
    if rebuild or not (bdir / MANIFEST).is_file():
        return "reference"
    try:
        return stored_route(read_manifest(bdir))
    except UserInputError:  # damaged: rebuilt, the reference way
        return "reference"


def add_decoder(manifest: dict[str, Any], decode: str | None, folder: str) -> str | None:
    """The decoder an ``add`` encodes ``folder``'s new rows with: ``decode`` when its
    route is the store's, ``"draft"`` for a draft store, else None (chosen: pil or
    nvjpeg). A ``decode`` of another route is a :class:`UserInputError`."""
    from clipindex.encode import decode_route

    route = stored_route(manifest)
    if decode is not None and decode_route(decode) != route:
        raise UserInputError(
            f"{folder} holds {route}-decoded vectors (decode_route {route}); --decode "
            f"{decode} would add {decode_route(decode)}-decoded ones to it. Leave --decode "
            f"out to keep the store's route, or re-encode the store with `clipindex build "
            f"SOURCE --backbone {folder} --rebuild"
            + (" --decode draft`" if route == "reference" else "`") + " first")
    if decode is not None:
        return decode
    return "draft" if route == "draft" else None


def route_note(route: str, recorded: bool = True) -> str:
    """What ``clipindex info`` says about a backbone's decode route (``store_info``'s
    ``decode_route`` and ``decode_route_recorded``).

    Examples
    --------
    >>> route_note("reference")
    "decode reference (open_clip's preprocess on a full decode)"
    """
    if not recorded:
        return ("decode draft (built before clipindex recorded the decode route: JPEGs "
                "decoded at a reduced scale, not open_clip's pixels; `clipindex build ... "
                "--rebuild` re-encodes it the reference way)")
    if route == "draft":
        return "decode draft (JPEG draft mode, --decode draft: not open_clip's pixels)"
    return "decode reference (open_clip's preprocess on a full decode)"
