"""The demo: everything that exists only to run the study offline on a synthetic world.

Owns: ``world/`` (the seeded COCO-format demo world generator, ``clipindex world``),
``train.py`` and ``evaluate.py`` (train the three tiny CLIP backbones on a world and
score them with the product's own store and ``prompt`` classifier;
``python -m clipindex.demo.train``) and ``run.py`` (``clipindex demo``: world + tiny
stores + bench + report). The shipped backbones themselves (registry, weights,
tokenizer) live in :mod:`clipindex.tiny`, a registered backbone source on the product
path.

May import: everything below the CLI. Nothing but the CLI imports it: the product path
(sources, encode, store, classifiers, search, bench, report, ...) never does.

The run's names are imported on first use, so ``clipindex.demo.world`` (the ``world``
command, training) does not load the benchmark.

Example
-------
>>> from clipindex.demo import demo_config
>>> demo_config("worlds/demo").name
'demo'
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from clipindex.demo.run import (
        DEMO_METHODS,
        DEMO_PER_CLASS,
        DemoResult,
        demo_config,
        run_demo,
    )

__all__ = ["DEMO_METHODS", "DEMO_PER_CLASS", "DemoResult", "demo_config", "run_demo"]


def __getattr__(name: str) -> object:
    if name in __all__:
        import importlib

        value = getattr(importlib.import_module("clipindex.demo.run"), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'clipindex.demo' has no attribute {name!r}")
