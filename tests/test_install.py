"""The dev/CI venv is the committed lock: `make venv` installs requirements/dev.lock exactly."""

from __future__ import annotations

import re
import sysconfig
from importlib.metadata import distributions
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
LOCK = ROOT / "requirements" / "dev.lock"
NODEPS = ROOT / "requirements" / "nodeps.txt"


def _norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _locked() -> dict[str, str]:
    text = LOCK.read_text() + NODEPS.read_text()
    pins = re.findall(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==(\S+)", text, flags=re.M)
    return {_norm(name): version for name, version in pins}


def test_the_venv_is_the_lock() -> None:
    # Every package this suite runs with is pinned at the installed version, and every pin
    # is installed: a package released tomorrow cannot change what CI tests.
    # only what pip installed into this venv: ray puts its vendored psutil (ray/
    # thirdparty_files) on sys.path once it is imported, which is not an installed package
    site = {Path(sysconfig.get_paths()[k]).resolve() for k in ("purelib", "platlib")}
    installed = {_norm(d.metadata["Name"]): d.version for d in distributions()
                 if Path(str(d.locate_file(""))).resolve() in site}
    installed.pop("clipindex")
    installed.pop("pip", None)  # the venv's own installer, not a dependency
    locked = _locked()
    assert {n: v for n, v in installed.items() if locked.get(n) != v} == {}
    assert set(locked) - set(installed) == set()


def test_make_venv_installs_the_lock_and_the_library_keeps_ranges() -> None:
    makefile = (ROOT / "Makefile").read_text()
    assert "LOCK := requirements/dev.lock" in makefile
    assert "pip install -q -r $(LOCK)" in makefile
    assert "pip install -q --no-deps -r $(NODEPS)" in makefile
    assert "--no-deps --no-build-isolation -e ." in makefile
    pyproject = (ROOT / "pyproject.toml").read_text()
    start = pyproject.index("dependencies = [")
    deps = pyproject[start:pyproject.index("]\n", start)]
    assert "==" not in deps and ">=" in deps  # users install the library beside other packages
    must = {"torch", "torchvision", "open-clip-torch", "faiss-cpu", "ray", "pytest"}
    assert set(_locked()) >= must
