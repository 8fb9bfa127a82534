"""Shared helpers of the speed benchmarks: machine record, timing, RESULTS.md sections.

Every benchmark measures a contender against a baseline *in the same run* and writes
its own section of ``benchmarks/RESULTS.md``, delimited by ``<!-- NAME:start -->`` /
``<!-- NAME:end -->`` markers, so the scripts can run independently and in any order.
Each comparison is one line ``ratio: 12.3x <what over what>`` inside the section.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import fcntl
import hashlib
import os
import platform
import re
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "RESULTS.md"
_HEADER = """# Speed benchmark results

Written by the scripts in `benchmarks/` (see `benchmarks/README.md`). Each script
measures a contender against a baseline **in the same run** and rewrites only its own
section below; every comparison is one line `ratio: N.Nx <what over what>`.
"""


# ----------------------------------------------------------------------------- machine
def cpu_model() -> str:
    """The CPU model name from ``/proc/cpuinfo`` (or ``platform.processor()``)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown"


def machine_info(device: str = "cpu") -> dict[str, Any]:
    """What the figures were measured on: CPU, cores, load, library versions, GPU. Called
    before the work starts: a ``device`` this machine lacks is a one-line error here
    (:class:`clipindex.errors.UserInputError`), not after minutes of set-up."""
    import faiss
    import numpy as np
    import torch

    from clipindex.encode import resolve_device

    resolve_device(device)

    try:
        usable = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        usable = os.cpu_count() or 1
    info: dict[str, Any] = {
        "cpu": cpu_model(),
        "cores": usable,
        "load_1min": round(os.getloadavg()[0], 2) if hasattr(os, "getloadavg") else None,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "faiss": getattr(faiss, "__version__", "unknown"),
        "numpy": np.__version__,
    }
    try:
        import open_clip

        info["open_clip"] = open_clip.__version__
    except Exception:  # noqa: BLE001 - informational only
        info["open_clip"] = "unknown"
    if device.startswith("cuda"):
        info["gpu"] = torch.cuda.get_device_name(torch.device(device))
    return info


def machine_lines(info: dict[str, Any]) -> list[str]:
    """Markdown bullet lines describing ``info`` (machine_info's dict)."""
    gpu = f"; GPU {info['gpu']}" if info.get("gpu") else "; no GPU used"
    return [
        f"- machine: {info['cpu']}, {info['cores']} usable cores{gpu}; load average "
        f"{info['load_1min']} at start (a shared machine: other jobs ran on the same "
        "cores, so absolute figures are noisy; the ratios compare runs made back to back)",
        f"- versions: python {info['python']}, torch {info['torch']} "
        f"(threads: {info['torch_threads']} for torch, BLAS and FAISS), faiss {info['faiss']}, "
        f"open_clip {info['open_clip']}, numpy {info['numpy']}",
        f"- date: {_dt.datetime.now(_dt.timezone.utc).strftime('%Y-%m-%d %H:%M UTC')}",
    ]


# ----------------------------------------------------------------------------- timing
@contextmanager
def stopwatch() -> Iterator[dict[str, float]]:
    """``with stopwatch() as t: ...`` then ``t["s"]`` holds the elapsed seconds."""
    out: dict[str, float] = {}
    start = time.perf_counter()
    try:
        yield out
    finally:
        out["s"] = time.perf_counter() - start


def median_seconds(fn: Callable[[], Any], repeats: int) -> float:
    """Median wall time of ``repeats`` calls of ``fn`` (after the caller's warm-up)."""
    times = []
    for _ in range(max(1, repeats)):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def ratio_line(ratio: float, what: str) -> str:
    """One comparison line, the form RESULTS.md uses: ``ratio: 12.3x <what>``."""
    return f"ratio: {ratio:.1f}x {what}"


def run_with_threads(main: Callable[[list[str] | None], int], argv: list[str] | None) -> int:
    """Run a script's ``main(argv)`` with its ``--threads`` applied to torch, BLAS and FAISS.

    A clipindex error (bad input: no CUDA for ``--device cuda``, an unknown backbone)
    is one line on stderr and exit code 2, as in the ``clipindex`` command."""
    from clipindex.errors import ClipindexError

    try:
        with cpu_threads(base_parser("").parse_known_args(argv)[0].threads):
            return main(argv)
    except ClipindexError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


def device_arg(text: str) -> str:
    """The ``--device`` argument type: ``cpu``, ``cuda`` or ``cuda:N`` (whether CUDA is
    there is checked where the device is used: a GPU run can be planned without one)."""
    if not re.fullmatch(r"cpu|cuda(:\d+)?", text):
        raise argparse.ArgumentTypeError(f"use cpu, cuda or cuda:N, not {text!r}")
    return text


@contextmanager
def cpu_threads(n: int) -> Iterator[None]:
    """Limit torch, BLAS (threadpoolctl) and FAISS to ``n`` threads; restore them after.

    ``n == 0`` leaves every library at its default.
    """
    if not n:
        yield
        return
    import faiss
    import torch
    from threadpoolctl import threadpool_limits

    old_torch, old_faiss = torch.get_num_threads(), faiss.omp_get_max_threads()
    torch.set_num_threads(n)
    faiss.omp_set_num_threads(n)
    try:
        with threadpool_limits(limits=n):
            yield
    finally:
        torch.set_num_threads(old_torch)
        faiss.omp_set_num_threads(old_faiss)


# ----------------------------------------------------------------------------- RESULTS.md
def _markers(name: str) -> tuple[str, str]:
    return f"<!-- {name}:start -->", f"<!-- {name}:end -->"


@contextmanager
def _locked(path: Path) -> Iterator[None]:
    # Scripts may run at the same time; serialise the read-modify-write of RESULTS.md.
    key = hashlib.sha256(str(path.resolve()).encode()).hexdigest()[:16]
    lock = Path(tempfile.gettempdir()) / f"clipindex-bench-{key}.lock"
    with open(lock, "a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def _atomic_write(path: Path, text: str) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def replace_section(text: str, name: str, body: str) -> str:
    """``text`` with the section ``name`` replaced by ``body`` (appended if absent)."""
    start, end = _markers(name)
    block = f"{start}\n{body.rstrip()}\n{end}"
    pattern = re.compile(re.escape(start) + r".*?" + re.escape(end), re.DOTALL)
    if pattern.search(text):
        return pattern.sub(lambda _: block, text, count=1)
    return text.rstrip() + "\n\n" + block + "\n"


def write_section(name: str, title: str, lines: Sequence[str], ratios: Sequence[str],
                  path: Path = RESULTS) -> Path:
    """Rewrite section ``name`` of RESULTS.md: a title, bullet lines, the ratio lines."""
    body = "\n".join([f"## {title}", "", *lines, "", "```text", *ratios, "```"])
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with _locked(path):
        text = path.read_text(encoding="utf-8") if path.exists() else _HEADER
        _atomic_write(path, replace_section(text, name, body))
    return path


# ----------------------------------------------------------------------------- arguments
def base_parser(description: str) -> argparse.ArgumentParser:
    """Options every benchmark has: ``--quick``, ``--results``, ``--workdir``, ``--no-write``."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--quick", action="store_true",
                        help="tiny sizes (seconds): for the smoke test, not for figures")
    parser.add_argument("--results", type=Path, default=RESULTS,
                        help=f"the RESULTS.md to update (default {RESULTS})")
    parser.add_argument("--no-write", action="store_true",
                        help="print the figures but leave RESULTS.md alone")
    parser.add_argument("--workdir", type=Path,
                        default=Path(tempfile.gettempdir()) / "clipindex-bench",
                        help="where demo worlds and stores are cached between runs")
    parser.add_argument("--threads", type=int, default=1,
                        help="CPU threads for torch, BLAS and FAISS in both contenders "
                             "(default 1: on a shared 2-core machine more threads spend "
                             "their time in OpenMP waits; 0 leaves the libraries' defaults)")
    parser.add_argument("--model-config", type=Path, action="append", default=[],
                        help="extra open_clip model config (JSON file or folder) to register, "
                             "so its name can be used as a backbone (repeatable)")
    return parser


def register_model_configs(paths: Sequence[Path]) -> None:
    """Register extra open_clip model configs (``open_clip.add_model_config``)."""
    if not paths:
        return
    import open_clip

    for path in paths:
        if not Path(path).exists():
            raise SystemExit(f"--model-config {path}: no such file or folder")
        open_clip.add_model_config(Path(path))
    try:  # a rescan drops the tiny backbones' tokenizer paths; re-apply them
        from clipindex import tiny

        tiny.register_configs()
    except Exception:  # noqa: BLE001 - tiny configs may not be shipped yet
        pass


def command_line() -> str:
    """How this script was run, for the RESULTS.md section."""
    return "python " + " ".join([f"benchmarks/{Path(sys.argv[0]).name}", *sys.argv[1:]])


def demo_world(workdir: Path, scale: str, seed: int = 0) -> Path:
    """A demo world under ``workdir`` (made once, reused while the generator is the same)."""
    import json

    from clipindex.demo.world import GENERATOR_VERSION, make_world

    folder = Path(workdir) / f"world-{scale}-{seed}"
    record = folder / "world.json"
    if record.is_file():
        meta = json.loads(record.read_text())
        if str(meta.get("generator_version")) == GENERATOR_VERSION:
            return folder
    return make_world(folder, seed=seed, scale=scale, force=True, progress=False)


def log(message: str) -> None:
    """Progress note on stderr (stdout carries the figures)."""
    print(message, file=sys.stderr, flush=True)
