"""FAISS and top-k: the floor below the store (``sources <- encode <- index <- store``).

Owns every FAISS index kind and the numpy reference (``kinds.py``: build, search, knobs,
description, recall against exact, faiss-gpu), index files (``files.py``: atomic
``save_index``, ``load_index`` read or memory-mapped), exact search in torch
(``torchsearch.py``), the one top-k (``topk.py``: over-fetch, exact rescoring from the
stored vectors, one sort; chunked exact top-k; recall@k), ``--index-kind auto``
(``tuning.py``: settings, the kind, held-out queries, the knob; ``structure.py``: the IVF
cell count; ``auto.py``: the whole choice), building one matrix's index file
(``build.py``) and updating one for ``clipindex add`` (``update.py``). Only modules of
this package import ``faiss``, and only when a function needs it: importing the package
loads no FAISS.
May import: ``clipindex.errors``, ``clipindex.checks``. Never the store or anything above.
"""
