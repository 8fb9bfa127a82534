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
    from clipindex.world import make_world

    out = tmp_path_factory.mktemp("small-world") / "world"
    return make_world(out, seed=0, scale="small", progress=False)
