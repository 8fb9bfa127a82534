"""The README is one screen or two, its links reach the docs site's pages, and its Quick
start runs as written in an empty folder with only the installed package (#37)."""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"


def _quick_start() -> list[list[str]]:
    text = README.read_text()
    block = text.split("## Quick start", 1)[1].split("```bash\n", 1)[1].split("```", 1)[0]
    joined = re.sub(r"\\\n\s*", " ", block)
    return [shlex.split(line, comments=True) for line in joined.splitlines() if line.strip()]


def test_readme_is_short_and_links_to_pages_that_exist() -> None:
    text = README.read_text()
    assert len(text.splitlines()) <= 300
    assert text.startswith("# clipindex\n\n```bash\nmake demo")
    links = re.findall(r"\]\((docs/[^)#]+)", text)
    assert links and all((ROOT / link).is_file() for link in links), links
    nav = yaml.safe_load((ROOT / "mkdocs.yml").read_text().split("\nnav:", 1)[0])
    assert nav["strict"] is True and nav["docs_dir"] == "docs"
    pages = set(re.findall(r":\s+(\S+\.md)\s*$", (ROOT / "mkdocs.yml").read_text(), re.M))
    assert {link.removeprefix("docs/") for link in links} <= pages
    assert all((ROOT / "docs" / page).is_file() for page in pages)


def test_quick_start_uses_shipped_names_only() -> None:
    commands = _quick_start()
    assert [c[:2] for c in commands][:3] == [["clipindex", "world"], ["clipindex", "build"],
                                             ["clipindex", "info"]]
    for command in commands:  # nothing from a checkout: no configs/ path
        assert not any(arg.startswith(("configs/", "./configs")) for arg in command), command


@pytest.mark.slow
def test_quick_start_runs_as_written_in_an_empty_folder(tmp_path: Path) -> None:
    exe = Path(sys.executable).with_name("clipindex")
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env.update(OMP_NUM_THREADS="1", CLIPINDEX_PROGRESS="line")
    for command in _quick_start():
        done = subprocess.run([str(exe), *command[1:]], cwd=tmp_path, env=env,
                              capture_output=True, text=True, timeout=900)
        assert done.returncode == 0, (command, done.stderr[-2000:])
    assert (tmp_path / "results" / "demo" / "report.html").is_file()
    assert (tmp_path / "indexes" / "demo" / "dataset.json").is_file()
    assert not (tmp_path / "results" / "demo" / "indexes").exists()  # the stores were reused
