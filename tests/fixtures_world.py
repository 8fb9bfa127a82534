"""Session fixtures for the synthetic demo world (registered in ``tests/conftest.py``).

``small_world`` is a ``--scale small`` world (seed 0) generated once per test session;
treat it as read-only (copy it if a test must change files).
"""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def small_world(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Path of a small demo world (seed 0), generated once per session."""
    from clipindex.demo.world import make_world

    out = tmp_path_factory.mktemp("small-world") / "world"
    return make_world(out, seed=0, scale="small", progress=False)


# Seeds of the worlds never trained on (the tiny backbones were trained on seed 0's train).
HELD_OUT_SEEDS = (1, 2)


@pytest.fixture(scope="session")
def val_only_scale():
    """The default scale without its train split: the same val images, a fifth the work."""
    from clipindex.demo.world.knobs import SCALES, Scale

    return Scale("default-val-only", train_per_class=0,
                 val_per_class=SCALES["default"].val_per_class)


@pytest.fixture(scope="session")
def val_only_worlds(tmp_path_factory: pytest.TempPathFactory, val_only_scale) -> dict:
    """seed -> a default-scale world holding only its val split, made on first use.

    Seed 0's val split is the one ``clipindex demo`` indexes; seeds in ``HELD_OUT_SEEDS``
    are worlds the tiny backbones never saw.
    """
    from clipindex.demo.world import make_world

    class _Worlds(dict):
        def __missing__(self, seed: int) -> Path:
            out = tmp_path_factory.mktemp(f"val-only{seed}") / "w"
            self[seed] = make_world(out, seed=seed, scale=val_only_scale, progress=False)
            return self[seed]

    return _Worlds()
