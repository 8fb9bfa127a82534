"""The public API: pinned like httpx pins its exports, and light to import."""

from __future__ import annotations

import subprocess
import sys

import clipindex

EXPECTED = {
    "__version__",
    "ClipindexError", "ConfigError", "DataError", "IncompleteIndexError",
    "IndexMismatchError", "MissingExtraError", "ModelLoadError", "UserInputError",
    "make_world", "load_dataset", "build_store", "open_index", "classify",
    "classify_images", "search_text", "search_image", "run_bench", "run_demo",
    "write_report", "explain_image",
}


def test_public_api_is_pinned() -> None:
    assert set(clipindex.__all__) == EXPECTED


def test_every_export_resolves_to_a_callable_or_class() -> None:
    for name in clipindex.__all__:
        value = getattr(clipindex, name)
        if name != "__version__":
            assert callable(value), name


def test_import_is_light_and_side_effect_free() -> None:
    code = ("import sys, logging, clipindex; "
            "heavy = [m for m in ('torch', 'faiss', 'open_clip') if m in sys.modules]; "
            "print(heavy, logging.getLogger().handlers)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout.strip()
    assert out == "[] []"


def test_library_never_imports_the_cli() -> None:
    code = ("import sys, clipindex, clipindex.store, clipindex.classifiers.runner, "
            "clipindex.search, clipindex.bench; "
            " print(any(m.startswith('clipindex.cli') for m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout.strip()
    assert out == "False"


def test_errors_are_value_errors_where_the_user_is_at_fault() -> None:
    assert issubclass(clipindex.UserInputError, ValueError)
    assert issubclass(clipindex.DataError, clipindex.UserInputError)
    assert issubclass(clipindex.MissingExtraError, ImportError)


def test_atomic_writes_get_ordinary_permissions(tmp_path) -> None:
    import os
    import stat

    from clipindex.files import atomic_write_bytes

    mask = os.umask(0o022)
    try:
        path = atomic_write_bytes(tmp_path / "report.html", b"<html></html>")
    finally:
        os.umask(mask)
    assert stat.S_IMODE(path.stat().st_mode) == 0o644
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


def test_cli_usage_errors_are_one_line_with_exit_2(tmp_path) -> None:
    from click.testing import CliRunner

    from clipindex.cli import main

    cases = [
        ["build", str(tmp_path / "missing.yaml"), "--backbone", "tiny-rn"],
        ["classify", "--index", str(tmp_path), "--backbone", "tiny-rn"],
        ["classify", "--index", str(tmp_path), "--backbone", "tiny-rn", "--method", "foo"],
        ["no-such-command"],
    ]
    for args in cases:
        result = CliRunner().invoke(main, args)
        assert result.exit_code == 2, (args, result.output)
        lines = [line for line in result.output.splitlines() if line.strip()]
        assert len(lines) == 1 and lines[0].startswith("Error: "), (args, result.output)
        assert "--help" in lines[0] and "Traceback" not in result.output
