"""Search: text/image queries against a store's images or captions, fused across backbones.

Owns: ``query.py`` (the entry points: text→image, image→image, image→text, and the
store-level search the CLI runs), ``ranking.py`` (exact top-k among the allowed valid
rows, candidates rescored from the stored vectors), ``fusion.py`` (reciprocal rank
fusion), ``frames.py`` (the hits table) and ``filters.py`` (the ``--where`` row filters
on a store's tables).
May import: ``clipindex.errors``, ``clipindex.store``, ``clipindex.encode`` (only
:func:`~clipindex.encode.encode_query_images` / ``check_query_images``: search never
decodes an image itself). Never classifiers, bench, report or the CLI.
"""

from clipindex.search.query import (
    RRF_DEPTH,
    RRF_K,
    TARGETS,
    SearchResult,
    read_queries_file,
    rrf_fuse,
    search_captions,
    search_image,
    search_indexes,
    search_store,
    search_text,
)

__all__ = [
    "RRF_DEPTH",
    "RRF_K",
    "TARGETS",
    "SearchResult",
    "read_queries_file",
    "rrf_fuse",
    "search_captions",
    "search_image",
    "search_indexes",
    "search_store",
    "search_text",
]
