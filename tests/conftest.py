"""Shared fixtures. Expensive things (the demo world, built stores) are session-scoped."""

from __future__ import annotations

import os

# Keep tests on the 2 CPU cores we have and away from any network.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

# Fixture plugins (one module each); append yours.
pytest_plugins = ["fixtures_store", "fixtures_world", "fixtures_robust", "fixtures_serve",
                  "fixtures_remote"]
