"""Search: text/image queries against a store's images or captions, fused across backbones.

Owns: ``query.py`` (text→image, image→image, image→text, reciprocal rank fusion) and
``filters.py`` (the ``--where`` row filters on a store's tables).
May import: ``clipindex.errors``, ``clipindex.store``, ``clipindex.encode`` (to encode
query images). Never classifiers, bench, report or the CLI.
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
