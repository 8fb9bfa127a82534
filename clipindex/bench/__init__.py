"""Bench: the study harness over stores, its tables and its plots.

Owns: ``harness.py`` (:func:`run_bench`: stores built once, every (backbone, method)
evaluated, ensembles, records), ``outputs.py`` (tables, markdown, errors, retrieval)
and ``plots.py`` (confusion grids).
May import: ``clipindex.errors``, ``clipindex.config``, ``clipindex.files``,
``clipindex.metrics``, ``clipindex.sources``, ``clipindex.encode`` (backbone names),
``clipindex.store``, ``clipindex.classifiers``. Never report, explain or the CLI.
"""

from clipindex.bench import harness as _harness
from clipindex.bench.harness import *  # noqa: F403  (the harness's __all__ is the package's)

__all__ = list(_harness.__all__)
