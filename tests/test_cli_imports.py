"""``clipindex --help`` loads no heavy library, and the option values it lists are the
library's own (clipindex/cli/_choices.py spells them out so parsing imports nothing)."""

from __future__ import annotations

import json
import subprocess
import sys

import click
import pytest

from clipindex.cli import main

HEAVY = ("torch", "faiss", "sklearn", "pandas", "numpy", "pyarrow", "open_clip", "PIL",
         "matplotlib", "yaml", "ray")

_PROBE = (
    "import json, sys\n"
    "from clipindex.cli import main\n"
    "try:\n"
    "    main(sys.argv[1:], prog_name='clipindex')\n"
    "except SystemExit as exc:\n"
    "    code = exc.code\n"
    "heavy = sorted(m for m in {heavy!r} if m in sys.modules)\n"
    "print(json.dumps({{'code': code, 'heavy': heavy}}), file=sys.stderr)\n"
)


def _probe(*args: str) -> tuple[str, dict]:
    proc = subprocess.run([sys.executable, "-c", _PROBE.format(heavy=HEAVY), *args],
                          capture_output=True, text=True, timeout=60, check=False)
    return proc.stdout, json.loads(proc.stderr.strip().splitlines()[-1])


@pytest.mark.parametrize("args", [["--help"], ["build", "--help"], ["search", "--help"],
                                  ["classify", "--help"], ["bench", "--help"],
                                  ["serve", "--help"], ["--version"]])
def test_help_imports_no_heavy_library(args: list[str]) -> None:
    out, probe = _probe(*args)
    assert probe["code"] == 0
    assert probe["heavy"] == [], f"`clipindex {' '.join(args)}` imported {probe['heavy']}"
    assert "Usage: clipindex" in out or "clipindex, version" in out


def test_a_bad_option_value_is_still_one_line_without_imports() -> None:
    proc = subprocess.run([sys.executable, "-c", _PROBE.format(heavy=HEAVY), "world", "w",
                           "--scale", "huge"], capture_output=True, text=True, timeout=60,
                          check=False)
    lines = proc.stderr.strip().splitlines()
    assert lines[0].startswith("Error: ") and "huge" in lines[0] and len(lines) == 2
    assert json.loads(lines[-1]) == {"code": 2, "heavy": []}


def _choices(command: str, option: str) -> tuple:
    params = {p.name: p for p in main.commands[command].params}
    kind = params[option].type
    assert isinstance(kind, click.Choice), (command, option)
    return tuple(kind.choices)


def _default(command: str, option: str) -> object:
    return {p.name: p for p in main.commands[command].params}[option].default


def test_listed_choices_are_the_librarys() -> None:
    from clipindex.bench import PROTOCOLS
    from clipindex.classifiers import KNN_WEIGHTS
    from clipindex.classifiers.runner import ENSEMBLES, METHODS
    from clipindex.classifiers.templates import TEMPLATE_SETS
    from clipindex.demo import DEMO_PER_CLASS
    from clipindex.demo.world import SCALES
    from clipindex.encode import DECODES
    from clipindex.explain import METHODS as EXPLAIN_METHODS
    from clipindex.report import PROJECTIONS
    from clipindex.search import TARGETS
    from clipindex.search.dedup import DEFAULT_THRESHOLD

    assert _choices("bench", "protocol") == tuple(PROTOCOLS)
    assert _choices("classify", "method") == tuple(METHODS)
    assert _choices("classify", "ensemble") == tuple(ENSEMBLES)
    assert _choices("classify", "weights") == tuple(KNN_WEIGHTS)
    assert _choices("classify", "templates") == tuple(TEMPLATE_SETS)
    assert _choices("demo", "scale") == tuple(sorted(DEMO_PER_CLASS))
    assert _choices("build", "decode") == _choices("add", "decode") == tuple(DECODES)
    assert _choices("explain", "method") == tuple(sorted(EXPLAIN_METHODS))
    assert _choices("report", "projection") == tuple(sorted(PROJECTIONS))
    assert _choices("search", "target") == tuple(TARGETS)
    assert _choices("world", "scale") == tuple(sorted(SCALES))
    assert _default("dedup", "threshold") == DEFAULT_THRESHOLD


def test_batch_size_help_states_the_librarys_rule() -> None:
    from clipindex.cli import _choices
    from clipindex.encode import tuning

    assert _choices.CPU_BATCH_GFLOPS == tuning.CPU_BATCH_GFLOPS
    assert _choices.CUDA_BATCH_GFLOPS == tuning.CUDA_BATCH_GFLOPS
    assert _choices.CPU_BATCH_RANGE == tuning.CPU_BATCH_RANGE
    assert _choices.CUDA_BATCH_RANGE == tuning.CUDA_BATCH_RANGE
    from clipindex.index.tuning import DEFAULT_TARGET_RECALL

    assert _choices.TARGET_RECALL == DEFAULT_TARGET_RECALL
    assert _choices.TEXT_BATCH_SIZES == (tuning.DEFAULT_TEXT_BATCH_SIZE["cpu"],
                                         tuning.DEFAULT_TEXT_BATCH_SIZE["cuda"])
