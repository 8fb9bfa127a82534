"""Pytest plugin: ``colors_store``, a tiny store built with the real ``tiny-vit`` weights
(format of today's code) from ``tests/data/store-v1/colors`` (12 images, one truncated,
18 captions), and helpers to run the CLI in-process and check its one-line errors.

The store is built once per session (a few seconds); tests damage a copy
(``store_copy``: ``shutil.copytree`` keeps file dates, so an untouched copy opens
without re-hashing).
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

COLORS = Path(__file__).resolve().parent / "data" / "store-v1" / "colors"


@pytest.fixture(scope="session")
def colors_store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``OUT/colors`` with ``tiny-vit`` (flat, float32). Treat it as read-only."""
    import torch

    from clipindex.store import build_store

    torch.set_num_threads(1)
    out = tmp_path_factory.mktemp("colors-store")
    data = out / "data" / "colors"
    shutil.copytree(COLORS, data)
    paths = build_store(data, ["tiny-vit"], out=out / "indexes", workers=0, batch_size=4,
                        progress=False)
    return paths[0].parent


@pytest.fixture
def store_copy(colors_store: Path, tmp_path: Path) -> Path:
    """A private copy of ``colors_store`` (file dates kept)."""
    copy = tmp_path / "indexes" / colors_store.name
    shutil.copytree(colors_store, copy)
    return copy


def run_cli(*args: object):
    """``clipindex ARGS`` in-process; the click result (stdout, stderr, exit code)."""
    from click.testing import CliRunner

    from clipindex.cli import main

    return CliRunner().invoke(main, [str(a) for a in args])


def assert_one_line_error(res, *needles: str) -> str:
    """Exit 2, exactly one ``Error: ...`` line on stderr holding every needle, no
    traceback anywhere."""
    assert res.exception is None or isinstance(res.exception, SystemExit), res.exc_info
    assert res.exit_code == 2, (res.exit_code, res.output, res.stderr)
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: "), res.stderr
    assert "Traceback" not in res.output + res.stderr
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])
    return lines[0]
