"""OS-level faults (issue #35, rows 2-7): a full disk, a read-only file system, a store
without write permission and a low open-file limit each end a command with one
``Error:`` line (exit 2) in bounded time: never a traceback, a SIGBUS or a hang.

Real faults where the suite runs as root and may mount: a small tmpfs filled to a
chosen free space, a read-only remount, a command run as ``nobody`` in a subprocess,
``RLIMIT_NOFILE`` set in a subprocess. The mount-based tests skip (with the reason)
only where ``mount`` is refused; the injected-errno tests below them run everywhere.
Every subprocess is bounded by a timeout, so a hang fails its test, not the suite.
"""

from __future__ import annotations

import errno
import json
import os
import resource
import shutil
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from fixtures_robust import assert_one_line_error, run_cli
from fixtures_store import FakeEncoder, write_images

TESTS = Path(__file__).resolve().parent
ROOT = TESTS.parent
PAGE = 4096

pytestmark = pytest.mark.usefixtures("faiss_single_thread")


# ----------------------------------------------------------------------------- helpers
def _env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1",
            "HF_HUB_OFFLINE": "1"}


@pytest.fixture
def tmpfs() -> Iterator[Callable[[Path, str], Path]]:
    """``mount(dir, size)``: a tmpfs of ``size`` at ``dir`` (unmounted afterwards);
    skips, saying why, only where this process may not mount."""
    mounted: list[Path] = []

    def mount(where: Path, size: str) -> Path:
        if os.geteuid() != 0:
            pytest.skip(f"mounting a tmpfs needs root (euid {os.geteuid()}); the "
                        "injected-errno tests cover this row")
        where.mkdir(parents=True, exist_ok=True)
        res = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size},mode=0755",
                              "tmpfs", str(where)], capture_output=True, text=True,
                             timeout=30)
        if res.returncode != 0:
            said = res.stderr.strip().lower()
            if "permission denied" in said or "not permitted" in said:
                pytest.skip(f"mount is not permitted here ({res.stderr.strip()}); the "
                            "injected-errno tests cover this row")
            pytest.fail(f"mount failed: {res.stderr.strip()}")
        mounted.append(where)
        return where

    yield mount
    for where in reversed(mounted):
        subprocess.run(["umount", "-l", str(where)], capture_output=True, timeout=30)


def _fill(mnt: Path, leave: int) -> None:
    """Leave about ``leave`` bytes free on the tmpfs at ``mnt`` (a page at most more)."""
    free = shutil.disk_usage(mnt).free
    size = max(0, (free - leave) // PAGE * PAGE)
    with open(mnt / "filler", "wb") as fh:
        if size:
            os.posix_fallocate(fh.fileno(), 0, size)


def _no_traceback(text: str) -> None:
    assert "Traceback" not in text and "Bus error" not in text, text


@pytest.fixture(scope="module")
def images(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """``(base, grown)``: 24 JPEGs in class folders, and the same plus 8 more."""
    top = tmp_path_factory.mktemp("os-faults")
    os.chmod(top, 0o755)  # the `nobody` run of row 5 reads these
    base, grown = top / "base", top / "grown"
    write_images(base, 12)
    write_images(grown, 16)
    return base, grown


def _store(images_dir: Path, out: Path) -> Path:
    """``OUT/<name>`` built from ``images_dir`` with the stand-in ``fake-a``."""
    from clipindex.store import build_store

    return build_store(images_dir, ["fake-a"], out=out, workers=0, progress=False)[0].parent


# The full-disk sweeps run in a subprocess with the stand-in encoders (the CLI's own
# code otherwise), so that a SIGBUS kills it, not pytest: rc -7 fails the test.
SWEEP = r"""
import json, shutil, sys, traceback
from pathlib import Path
sys.path.insert(0, sys.argv[2])
import pytest
from fixtures_store import install_fakes
from test_os_faults import _fill
cfg = json.loads(sys.argv[1])
mp = pytest.MonkeyPatch()
install_fakes(mp)
if not cfg["check"]:  # reach the writes themselves, past the free-space check
    from clipindex.store import add, build, compact
    for module in (add, build, compact):
        mp.setattr(module, "check_space", lambda *a, **k: None)
from click.testing import CliRunner
from clipindex.cli import main
from clipindex.store import open_index

def rows(ddir):
    try:
        return len(open_index(ddir, "fake-a").images)
    except Exception as exc:
        return repr(exc)

mnt = Path(cfg["mnt"])
out = []
for leave in cfg["leaves"]:
    for p in list(mnt.iterdir()):
        shutil.rmtree(p) if p.is_dir() else p.unlink()
    if cfg["store"]:
        shutil.copytree(cfg["store"], mnt / "base")
    _fill(mnt, leave)
    res = CliRunner().invoke(main, cfg["args"])
    exc = (None if res.exception is None or isinstance(res.exception, SystemExit)
           else "".join(traceback.format_exception(res.exception)))
    temps = sorted(str(p.relative_to(mnt)) for p in mnt.rglob("*")
                   if p.name.endswith(".tmp"))
    after = rows(mnt / "base")
    (mnt / "filler").unlink()
    again = CliRunner().invoke(main, cfg["args"]) if res.exit_code else None
    out.append({"leave": leave, "code": res.exit_code, "stderr": res.stderr, "exc": exc,
                "temps": temps, "rows": after,
                "again": None if again is None else [again.exit_code, again.stderr],
                "rows_again": rows(mnt / "base")})
print("RESULT " + json.dumps(out))
"""


def _sweep(mnt: Path, args: list[str], leaves: list[int], *, store: Path | None,
           check: bool) -> list[dict[str, Any]]:
    cfg = {"mnt": str(mnt), "args": args, "leaves": leaves, "check": check,
           "store": None if store is None else str(store)}
    res = subprocess.run([sys.executable, "-c", SWEEP, json.dumps(cfg), str(TESTS)],
                         capture_output=True, text=True, timeout=240, env=_env(),
                         cwd=TESTS)
    assert res.returncode == 0, (res.returncode, res.stderr[-3000:])  # -7: SIGBUS
    line = next(x for x in res.stdout.splitlines() if x.startswith("RESULT "))
    return json.loads(line[len("RESULT "):])


def _check_sweep(results: list[dict[str, Any]], mnt: Path, old_rows: int | None,
                 new_rows: int) -> int:
    """Every run ended with success or one disk-full line naming the store and the
    space needed; nothing half-written is left; the store kept its old rows; the rerun
    with space freed succeeded. Returns how many runs failed for lack of space."""
    failed = 0
    for r in results:
        assert r["exc"] is None, r  # no exception escaped the CLI (a traceback)
        assert not r["temps"], r  # temporary files are removed
        assert r["rows_again"] == new_rows, r
        if r["code"] == 0:
            assert r["rows"] == new_rows, r
            continue
        failed += 1
        assert r["code"] == 2, r
        lines = r["stderr"].strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("Error: no space left"), r
        assert str(mnt) in lines[0] and "needs about" in lines[0], r
        _no_traceback(r["stderr"])
        assert r["rows"] == (old_rows if old_rows is not None else r["rows"]), r
        assert r["again"][0] == 0, r
    return failed


# ----------------------------------------------------------------------------- row 2, 3
LEAVES = [0, PAGE, 3 * PAGE, 6 * PAGE, 10 * PAGE, 16 * PAGE, 24 * PAGE, 40 * PAGE,
          64 * PAGE]


@pytest.mark.parametrize("check", [True, False], ids=["checked", "writes"])
def test_add_on_a_full_disk_is_one_line_and_keeps_the_store(
        use_fake_encoders: type[FakeEncoder], images: tuple[Path, Path],
        tmp_path: Path, tmpfs: Callable[[Path, str], Path], check: bool) -> None:
    base, grown = images
    pristine = _store(base, tmp_path / "pristine")
    mnt = tmpfs(tmp_path / "mnt", "2m")
    results = _sweep(mnt, ["add", str(grown), "--index", str(mnt / "base"), "--workers",
                           "0", "--no-progress"], LEAVES, store=pristine, check=check)
    failed = _check_sweep(results, mnt, 24, 32)
    assert 0 < failed < len(LEAVES), results  # both outcomes were met


@pytest.mark.parametrize("check", [True, False], ids=["checked", "writes"])
def test_build_on_a_full_disk_is_one_line_and_resumes(
        use_fake_encoders: type[FakeEncoder], images: tuple[Path, Path],
        tmp_path: Path, tmpfs: Callable[[Path, str], Path], check: bool) -> None:
    base, _ = images
    mnt = tmpfs(tmp_path / "mnt", "2m")
    results = _sweep(mnt, ["build", str(base), "--backbone", "fake-a", "--out", str(mnt),
                           "--workers", "0", "--no-progress"], LEAVES, store=None,
                     check=check)
    failed = _check_sweep(results, mnt, None, 24)
    assert 0 < failed < len(LEAVES), results


MEMMAP = r"""
import sys
from pathlib import Path
import numpy as np
path, how = Path(sys.argv[1]), sys.argv[2]
if how == "plain":  # what `add` did before: a sparse map, written past the disk's end
    out = np.lib.format.open_memmap(path, mode="w+", dtype="float32", shape=(4096, 64))
else:
    from clipindex.errors import ResourceError
    from clipindex.store.space import reserved_memmap
    try:
        out = reserved_memmap(path, "float32", (4096, 64))
    except ResourceError as exc:
        print("ERROR", exc, "EXISTS", path.exists())
        raise SystemExit(0)
out[:] = 1.0
out.flush()
print("WROTE")
"""


def test_a_memory_map_past_the_free_space_is_an_error_not_a_sigbus(
        tmp_path: Path, tmpfs: Callable[[Path, str], Path]) -> None:
    mnt = tmpfs(tmp_path / "mnt", "1m")  # a 1 MB matrix on a disk with ~256 KB free
    _fill(mnt, 64 * PAGE)
    run = [sys.executable, "-c", MEMMAP, str(mnt / "m.npy")]
    plain = subprocess.run([*run, "plain"], capture_output=True, text=True, timeout=120,
                           env=_env())
    assert plain.returncode == -7, (plain.returncode, plain.stdout)  # SIGBUS: the premise
    (mnt / "m.npy").unlink()
    res = subprocess.run([*run, "reserved"], capture_output=True, text=True, timeout=120,
                         env=_env())
    assert res.returncode == 0, res.stderr[-2000:]
    assert res.stdout.startswith("ERROR no space left") and "needs about 1.0 MB" in res.stdout
    assert res.stdout.strip().endswith("EXISTS False")  # the partial file is removed


# Injected where no tmpfs can be mounted (and everywhere: they pin the messages).
def test_injected_disk_full_in_a_memory_map_and_in_faiss(
        use_fake_encoders: type[FakeEncoder], images: tuple[Path, Path],
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from clipindex.index import files as indexes
    from clipindex.store import open_index

    base, grown = images
    ddir = _store(base, tmp_path)

    def no_space(fd: int, offset: int, size: int) -> None:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(os, "posix_fallocate", no_space)
    res = run_cli("add", grown, "--index", ddir, "--workers", "0", "--no-progress")
    assert_one_line_error(res, "no space left", "images.npy", "needs about")
    assert not (ddir / ".generations").exists() or not any(
        p.name.endswith(".tmp") for p in (ddir / ".generations").iterdir())
    assert len(open_index(ddir, "fake-a").images) == 24
    monkeypatch.undo()
    from fixtures_store import install_fakes

    install_fakes(monkeypatch)

    def short_write(index: Any, path: str) -> None:
        Path(path).write_bytes(b"x")
        raise RuntimeError("Error in faiss::FileIOWriter: 'ret == (size * 4)' failed")

    monkeypatch.setattr(indexes.faiss, "write_index", short_write)
    res = run_cli("add", grown, "--index", ddir, "--workers", "0", "--no-progress")
    assert_one_line_error(res, "no space left", ".faiss")
    assert not list(ddir.rglob(".*.faiss.*.tmp"))
    assert len(open_index(ddir, "fake-a").images) == 24


# ----------------------------------------------------------------------------- row 4
def test_read_only_file_system_is_one_line_for_add_compact_build(
        use_fake_encoders: type[FakeEncoder], images: tuple[Path, Path],
        tmp_path: Path, tmpfs: Callable[[Path, str], Path]) -> None:
    base, grown = images
    mnt = tmpfs(tmp_path / "ro", "4m")
    ddir = _store(base, mnt)
    res = subprocess.run(["mount", "-o", "remount,ro", str(mnt)], capture_output=True,
                         text=True, timeout=30)
    assert res.returncode == 0, res.stderr
    for args in (["add", grown, "--index", ddir, "--workers", "0", "--no-progress"],
                 ["compact", "--index", ddir],
                 ["build", grown, "--backbone", "fake-a", "--out", mnt, "--workers", "0",
                  "--rebuild", "--no-progress"]):
        line = assert_one_line_error(run_cli(*args), "read-only file system", str(mnt))
        assert "remount" in line, line
    from clipindex.store import open_index

    assert len(open_index(ddir, "fake-a").images) == 24  # reading still works


def test_injected_read_only_and_permission_errors_name_the_path(
        use_fake_encoders: type[FakeEncoder], images: tuple[Path, Path],
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from clipindex.store import lock

    base, grown = images
    ddir = _store(base, tmp_path)
    real_open = os.open
    for code, needle in ((errno.EROFS, "read-only file system"),
                         (errno.EACCES, "permission denied")):
        def refuse(path: Any, flags: int, *a: Any, code: int = code, **k: Any) -> int:
            if str(path).endswith(lock.LOCK_NAME):
                raise OSError(code, os.strerror(code), str(path))
            return real_open(path, flags, *a, **k)

        monkeypatch.setattr(lock.os, "open", refuse)
        for args in (["add", grown, "--index", ddir, "--workers", "0", "--no-progress"],
                     ["compact", "--index", ddir]):
            assert_one_line_error(run_cli(*args), needle, str(ddir))


# ----------------------------------------------------------------------------- row 5
DRIVER = r"""
import sys
sys.path.insert(0, sys.argv[1])
import pytest
from fixtures_store import install_fakes
install_fakes(pytest.MonkeyPatch())
from clipindex.cli import main
main(sys.argv[2:], prog_name="clipindex")
"""


def test_store_without_write_permission_is_one_line(
        use_fake_encoders: type[FakeEncoder], images: tuple[Path, Path],
        tmp_path: Path) -> None:
    """``chmod -R a-w`` on the store, the command run by root without CAP_DAC_OVERRIDE
    (``setpriv`` drops it from the bounding set: root then obeys file modes like any
    user, and still reaches the interpreter wherever it is installed)."""
    setpriv = shutil.which("setpriv")
    if os.geteuid() != 0 or setpriv is None:
        pytest.skip("needs root and setpriv to run a command without CAP_DAC_OVERRIDE; "
                    "test_injected_read_only_and_permission_errors_name_the_path covers "
                    "this row")
    base, grown = images
    ddir = _store(base, tmp_path / "indexes")
    subprocess.run(["chmod", "-R", "a-w", str(ddir)], check=True, timeout=30)
    try:
        for args in (["add", str(grown), "--index", str(ddir), "--workers", "0",
                      "--no-progress"], ["compact", "--index", str(ddir)]):
            res = subprocess.run(
                [setpriv, "--bounding-set=-dac_override,-dac_read_search", "--",
                 sys.executable, "-c", DRIVER, str(TESTS), *args],
                capture_output=True, text=True, timeout=120, env=_env())
            lines = res.stderr.strip().splitlines()
            assert res.returncode == 2, (res.returncode, res.stderr[-2000:])
            assert len(lines) == 1 and lines[0].startswith("Error: permission denied"), \
                res.stderr
            assert str(ddir) in lines[0] and "chmod" in lines[0], lines[0]
    finally:
        subprocess.run(["chmod", "-R", "u+w", str(ddir)], timeout=30)


# ----------------------------------------------------------------------------- rows 6, 7
def _limited(limit: int) -> Callable[[], None]:
    def apply() -> None:
        resource.setrlimit(resource.RLIMIT_NOFILE, (limit, limit))
    return apply


def _clipindex(args: list[Any], limit: int, timeout: float = 180
               ) -> subprocess.CompletedProcess[str]:
    """The installed CLI's code in a subprocess under ``ulimit -n limit``; a hang
    raises ``TimeoutExpired`` (the test fails, the suite goes on)."""
    code = "import sys; from clipindex.cli import main; main(sys.argv[1:], prog_name='clipindex')"
    return subprocess.run([sys.executable, "-c", code, *map(str, args)],
                          capture_output=True, text=True, timeout=timeout, env=_env(),
                          preexec_fn=_limited(limit))


@pytest.fixture(scope="module")
def colors(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """48 small JPEGs in class folders: one batch of 48 decoded images."""
    root = tmp_path_factory.mktemp("fd-images") / "colors"
    write_images(root, 24)
    return root


@pytest.mark.slow
def test_build_and_add_under_a_low_descriptor_limit_end_in_time(
        colors: Path, tmp_path: Path) -> None:
    """Under ``ulimit -n 64`` a batch of 48 images sent by a decode worker used to need
    a descriptor per image tensor: the worker's feeder thread died on EMFILE and the
    parent waited for ever (checked at 115e276: build and add both hung past 90 s).
    With batch 64 the 48 images go as one batch, so this setup meets that case."""
    out = tmp_path / "indexes"
    knobs = ["--workers", "1", "--batch-size", "64", "--no-progress"]
    # Row 7: `ulimit -n 64` used to hang with a worker spinning on EMFILE; it now builds.
    res = _clipindex(["build", colors, "--backbone", "tiny-vit", "--out", out, *knobs], 64,
                     timeout=90)
    assert res.returncode == 0, res.stderr[-3000:]
    _no_traceback(res.stderr)
    # Row 6: the same for `add` (48 new images encoded by a real decode worker).
    grown = tmp_path / "grown"
    write_images(grown, 48)
    res = _clipindex(["add", grown, "--index", out / "colors", *knobs], 64, timeout=90)
    assert res.returncode == 0, res.stderr[-3000:]
    assert "encoded 48 new images" in res.stdout + res.stderr
    _no_traceback(res.stderr)
    # Too few descriptors for a worker: one line at once, naming the limit and the fix.
    more = tmp_path / "more"
    write_images(more, 56)  # 16 images beyond `grown`
    for args in (["build", colors, "--backbone", "tiny-vit", "--out", tmp_path / "low",
                  *knobs], ["add", more, "--index", out / "colors", *knobs]):
        res = _clipindex(args, 20, timeout=60)
        lines = res.stderr.strip().splitlines()
        assert res.returncode == 2, res.stderr[-3000:]
        assert lines[-1].startswith("Error: too many open files"), res.stderr[-3000:]
        assert "ulimit -n" in lines[-1] and "--workers 0" in lines[-1]
        assert len(lines) <= 2, res.stderr[-3000:]  # the settings line, the error
        _no_traceback(res.stderr)


def test_a_worker_out_of_descriptors_reports_once_and_the_parent_stops(
        colors: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """EMFILE met by a real decode worker (injected before the fork) is sent once as
    the batch and raised in the parent as one line, instead of every image becoming a
    skipped row; a worker that dies or goes silent fails the parent too."""
    import time

    from clipindex.encode import decode, load_encoder, pixels
    from clipindex.errors import ResourceError

    files = sorted(str(p) for p in colors.rglob("*.jpg"))
    enc = load_encoder("tiny-vit", device="cpu")

    def no_descriptor(path: Any, target_size: Any) -> Any:
        raise OSError(errno.EMFILE, os.strerror(errno.EMFILE), str(path))

    monkeypatch.setattr(decode, "_open_decoded", no_descriptor)
    t0 = time.perf_counter()
    with pytest.raises(ResourceError, match="too many open files") as err:
        enc.encode_images(files, workers=1, batch_size=8, progress=False)
    assert err.value.errno == errno.EMFILE and "\n" not in str(err.value)
    assert time.perf_counter() - t0 < 60
    monkeypatch.undo()

    def dies(path: Any, target_size: Any) -> Any:
        os._exit(3)

    monkeypatch.setattr(decode, "_open_decoded", dies)
    with pytest.raises(ResourceError, match="decode worker stopped"):
        enc.encode_images(files, workers=1, batch_size=8, progress=False)
    monkeypatch.undo()

    def stalls(path: Any, target_size: Any) -> Any:
        time.sleep(60)

    monkeypatch.setattr(decode, "_open_decoded", stalls)
    monkeypatch.setattr(pixels, "worker_timeout", lambda batch: 3.0)
    from clipindex.encode import encoder as encoder_module

    monkeypatch.setattr(encoder_module, "worker_timeout", lambda batch: 3.0)
    t0 = time.perf_counter()
    with pytest.raises(ResourceError, match="timed out"):
        enc.encode_images(files, workers=1, batch_size=8, progress=False)
    assert time.perf_counter() - t0 < 30


# ----------------------------------------------------------------------------- world, bench,
# report, explain, serve: a read-only or full output folder is one line too (issue #35)
@pytest.fixture
def read_only(tmpfs: Callable[[Path, str], Path]) -> Callable[..., Path]:
    """``make(where, fill=None)``: a tmpfs at ``where`` (``fill(mnt)`` writes into it
    first), remounted read-only."""
    def make(where: Path, fill: Callable[[Path], None] | None = None) -> Path:
        mnt = tmpfs(where, "64m")
        if fill is not None:
            fill(mnt)
        res = subprocess.run(["mount", "-o", "remount,ro", str(mnt)], capture_output=True,
                             text=True, timeout=30)
        assert res.returncode == 0, res.stderr
        return mnt
    return make


def _read_only_line(res: Any, path: Path) -> str:
    line = assert_one_line_error(res, "read-only file system", str(path))
    assert "remount" in line, line
    return line


def test_world_into_a_read_only_or_full_folder_is_one_line(
        tmp_path: Path, tmpfs: Callable[[Path, str], Path],
        read_only: Callable[..., Path]) -> None:
    ro = read_only(tmp_path / "ro")
    _read_only_line(run_cli("world", ro / "w", "--scale", "small", "--no-progress"), ro)
    full = tmpfs(tmp_path / "full", "1m")  # a small world takes ~14 MB
    res = run_cli("world", full / "w", "--scale", "small", "--no-progress")
    line = assert_one_line_error(res, "no space left", str(full), "needs about")
    assert "MB" in line.split("needs about")[1].split(";")[0], line
    assert not any(p.name.startswith(".world-staging") for p in (full / "w").iterdir())


def test_world_injected_read_only_and_disk_full(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from clipindex.demo.world import build as world_build

    for code, needle in ((errno.EROFS, "read-only file system"),
                         (errno.EACCES, "permission denied"),
                         (errno.ENOSPC, "no space left")):
        def refuse(*a: Any, code: int = code, **k: Any) -> None:
            raise OSError(code, os.strerror(code))

        monkeypatch.setattr(world_build, "_install", refuse)
        out = tmp_path / f"w{code}"
        res = run_cli("world", out, "--scale", "small", "--no-progress")
        assert_one_line_error(res, needle, str(out))


@pytest.fixture(scope="module")
def bench_config(small_world: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A one-backbone, one-method bench on the small world with a stand-in encoder."""
    import yaml

    from clipindex.demo import demo_config

    cfg = demo_config(small_world, scale="small", backbones=("fake-a",)).to_dict()
    cfg.update(methods=["prompt"], retrieval=False, ensembles=[])
    path = tmp_path_factory.mktemp("bench-cfg") / "tiny.yaml"
    path.write_text(yaml.safe_dump(cfg), encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def bench_results(bench_config: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    from fixtures_store import install_fakes

    out = tmp_path_factory.mktemp("bench-results") / "results"
    with pytest.MonkeyPatch.context() as mp:
        install_fakes(mp)
        res = run_cli("bench", bench_config, "--out", out, "--workers", "0",
                      "--no-progress")
    assert res.exit_code == 0, res.output
    return out


def test_bench_into_a_read_only_folder_is_one_line(
        use_fake_encoders: type[FakeEncoder], bench_config: Path, bench_results: Path,
        tmp_path: Path, read_only: Callable[..., Path]) -> None:
    ro = read_only(tmp_path / "ro")
    res = run_cli("bench", bench_config, "--out", ro / "results", "--index-root",
                  bench_results / "indexes", "--workers", "0", "--no-progress")
    _read_only_line(res, ro)
    # the stores themselves on a read-only disk, results elsewhere: the bench takes the
    # stores' build lock (it builds what is missing), so it stops there in one line
    idx = read_only(tmp_path / "idx", lambda m: shutil.copytree(bench_results / "indexes",
                                                                 m / "indexes"))
    res = run_cli("bench", bench_config, "--out", tmp_path / "results", "--index-root",
                  idx / "indexes", "--workers", "0", "--no-progress")
    _read_only_line(res, idx)


def test_bench_injected_read_only_out(
        use_fake_encoders: type[FakeEncoder], bench_config: Path, bench_results: Path,
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from clipindex import files

    real = files.atomic_write_bytes
    out = tmp_path / "results"

    def refuse(path: Any, *a: Any, **k: Any) -> Any:
        if str(path).startswith(str(out)):
            raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(path))
        return real(path, *a, **k)

    monkeypatch.setattr(files, "atomic_write_bytes", refuse)
    res = run_cli("bench", bench_config, "--out", out, "--index-root",
                  bench_results / "indexes", "--workers", "0", "--no-progress")
    _read_only_line(res, out)


def test_report_into_a_read_only_folder_is_one_line(
        bench_results: Path, tmp_path: Path, read_only: Callable[..., Path]) -> None:
    ro = read_only(tmp_path / "ro")
    _read_only_line(run_cli("report", bench_results, "--out", ro / "report.html"), ro)
    # RESULTS itself read-only: the default RESULTS/report.html cannot be written
    res_ro = read_only(tmp_path / "res", lambda m: shutil.copytree(bench_results,
                                                                    m / "results"))
    _read_only_line(run_cli("report", res_ro / "results"), res_ro)


def test_report_injected_permission_denied(
        bench_results: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import tempfile
    import types

    from clipindex import files

    out = tmp_path / "r.html"

    def mkstemp(*a: Any, dir: Any = None, **k: Any) -> Any:
        if str(dir) == str(tmp_path):
            raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), str(dir))
        return tempfile.mkstemp(*a, dir=dir, **k)

    monkeypatch.setattr(files, "tempfile", types.SimpleNamespace(mkstemp=mkstemp))
    res = run_cli("report", bench_results, "--out", out)
    line = assert_one_line_error(res, "permission denied", str(tmp_path))
    assert "chmod" in line, line


def test_explain_into_a_read_only_folder_is_one_line(
        colors_store: Path, tmp_path: Path, read_only: Callable[..., Path]) -> None:
    image = next((colors_store.parent.parent / "data" / "colors").rglob("*.jpg"))
    ro = read_only(tmp_path / "ro")
    res = run_cli("explain", image, "--index", colors_store, "--backbone", "tiny-vit",
                  "--out", ro / "x.png")
    _read_only_line(res, ro)


def test_explain_injected_read_only(colors_store: Path, tmp_path: Path,
                                    monkeypatch: pytest.MonkeyPatch) -> None:
    import tempfile
    import types

    from clipindex import files

    image = next((colors_store.parent.parent / "data" / "colors").rglob("*.jpg"))
    out = tmp_path / "x.png"

    def mkstemp(*a: Any, dir: Any = None, **k: Any) -> Any:
        if str(dir) == str(tmp_path):
            raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(dir))
        return tempfile.mkstemp(*a, dir=dir, **k)

    monkeypatch.setattr(files, "tempfile", types.SimpleNamespace(mkstemp=mkstemp))
    res = run_cli("explain", image, "--index", colors_store, "--backbone", "tiny-vit",
                  "--out", out)
    _read_only_line(res, tmp_path)


SERVE = r"""
import sys
sys.path.insert(0, sys.argv[1])
import pytest
from fixtures_store import install_fakes
install_fakes(pytest.MonkeyPatch())
from clipindex.cli import main
main(sys.argv[2:], prog_name="clipindex")
"""


def test_serve_on_a_read_only_store_answers(
        images: tuple[Path, Path], tmp_path: Path,
        read_only: Callable[..., Path]) -> None:
    """A store on a read-only file system: serve starts and answers text searches (the
    query vectors are kept in memory, nothing is written to the store)."""
    import socket
    import time
    import urllib.request

    base, _ = images
    built = _store_in_subprocess(base, tmp_path / "built")
    mnt = read_only(tmp_path / "ro", lambda m: shutil.copytree(built, m / built.name))
    ddir = mnt / built.name
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen(
        [sys.executable, "-c", SERVE, str(TESTS), "serve", "--index", str(ddir),
         "--port", str(port), "--root", str(base), "--log-level", "warning"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=_env())
    try:
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and proc.poll() is None:
            try:
                with urllib.request.urlopen(f"{url}/health", timeout=5) as r:
                    if r.status == 200:
                        break
            except OSError:
                time.sleep(0.5)
        assert proc.poll() is None, proc.stderr.read()  # it serves: nothing is written
        for q in ("cat", "a photo of a dog", "cat"):
            with urllib.request.urlopen(f"{url}/search?q={q.replace(' ', '+')}&k=3",
                                        timeout=60) as r:
                body = json.loads(r.read())
            assert r.status == 200 and len(body) == 3, body
            assert {"rank", "score"} <= set(body[0]), body
        assert proc.poll() is None  # still serving
    finally:
        proc.terminate()
        try:
            _, err = proc.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            _, err = proc.communicate()
    _no_traceback(err)


def _store_in_subprocess(images_dir: Path, out: Path) -> Path:
    """A ``fake-a`` store built by the CLI (as the server's subprocess will see it)."""
    res = subprocess.run([sys.executable, "-c", SERVE, str(TESTS), "build",
                          str(images_dir), "--backbone", "fake-a", "--out", str(out),
                          "--workers", "0", "--no-progress"],
                         capture_output=True, text=True, timeout=180, env=_env())
    assert res.returncode == 0, res.stderr[-2000:]
    return out / images_dir.name


def test_text_search_on_a_read_only_store_answers_with_one_warning(
        use_fake_encoders: type[FakeEncoder], images: tuple[Path, Path], tmp_path: Path,
        read_only: Callable[..., Path], monkeypatch: pytest.MonkeyPatch) -> None:
    """The query-text cache is a convenience: a store that cannot be written still
    answers `search` and `classify`, with one warning instead of an error."""
    base, _ = images
    built = _store(base, tmp_path / "built")
    mnt = read_only(tmp_path / "ro", lambda m: shutil.copytree(built, m / built.name))
    ddir = mnt / built.name
    for args in (["search", "a cat", "--index", ddir, "-k", "2", "--json"],
                 ["classify", "--index", ddir, "--backbone", "fake-a", "--method",
                  "prompt"]):
        res = run_cli(*args)
        assert res.exit_code == 0, (res.output, res.stderr)
        lines = res.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("Warning: query text vectors are "
                                                       "not cached"), res.stderr
        assert "read-only file system" in lines[0] and str(ddir) in lines[0], lines[0]
    assert not (ddir / "fake-a" / "text_cache.npz").exists()
    # injected: a full disk under the cache is a warning too; EIO stays an error
    from clipindex.store import textcache

    for code, ok in ((errno.ENOSPC, True), (errno.EIO, False)):
        def refuse(self: Any, cache: Any, code: int = code) -> None:
            from clipindex.errors import os_fault

            raise os_fault(OSError(code, os.strerror(code)), built / "fake-a")

        monkeypatch.setattr(textcache.TextCache, "save", refuse)
        res = run_cli("search", "a dog", "--index", built, "-k", "2", "--json")
        if ok:
            assert res.exit_code == 0 and "no space left" in res.stderr, res.stderr
        else:
            assert_one_line_error(res, "input/output error")


def test_report_and_explain_on_a_full_disk_name_the_space_needed(
        bench_results: Path, colors_store: Path, tmp_path: Path,
        tmpfs: Callable[[Path, str], Path]) -> None:
    mnt = tmpfs(tmp_path / "full", "1m")
    _fill(mnt, 0)
    line = assert_one_line_error(run_cli("report", bench_results, "--out",
                                         mnt / "report.html"),
                                 "no space left", str(mnt), "needs about")
    assert "--out" in line, line
    image = next((colors_store.parent.parent / "data" / "colors").rglob("*.jpg"))
    assert_one_line_error(run_cli("explain", image, "--index", colors_store, "--backbone",
                                  "tiny-vit", "--out", mnt / "x.png"),
                          "no space left", str(mnt), "needs about")
    assert not [p for p in mnt.iterdir() if p.name != "filler"]  # no partial file left
