"""The ``clipindex`` command: one thin click group.

Each sub-command lives in its own module under ``clipindex.cli`` and only parses,
calls one library function and prints. Errors that clipindex raises on purpose
(:class:`clipindex.errors.ClipindexError`) become one line on stderr and exit code 2.
"""

from __future__ import annotations

from clipindex.cli._app import main

# Importing a command module registers its command on ``main`` (one line per module).
# isort: off
from clipindex.cli import search  # noqa: E402,F401
from clipindex.cli import explain  # noqa: E402,F401
from clipindex.cli import build  # noqa: E402,F401
from clipindex.cli import info  # noqa: E402,F401
from clipindex.cli import world  # noqa: E402,F401
from clipindex.cli import classify  # noqa: E402,F401
from clipindex.cli import bench  # noqa: E402,F401
from clipindex.cli import demo  # noqa: E402,F401
from clipindex.cli import report  # noqa: E402,F401
from clipindex.cli import serve  # noqa: E402,F401
from clipindex.cli import dedup  # noqa: E402,F401
from clipindex.cli import audit  # noqa: E402,F401
from clipindex.cli import add  # noqa: E402,F401
from clipindex.cli import compact  # noqa: E402,F401
from clipindex.cli import configs  # noqa: E402,F401
from clipindex.cli import importing  # noqa: E402,F401
from clipindex.cli import exporting  # noqa: E402,F401
# isort: on

__all__ = ["main"]
