"""Exceptions raised by clipindex on purpose.

Everything clipindex raises for a reason a user can act on derives from
:class:`ClipindexError`; the CLI turns these into a one-line ``Error: ...``
message and exit code 2, never a traceback::

    ClipindexError
    ├── UserInputError (ValueError)   bad argument, config or data given by the user
    │   ├── ConfigError               a config file or one of its fields is wrong
    │   ├── DataError                 images/annotations unreadable, or a selection is empty
    │   └── IndexMismatchError        a store opened with another backbone / dim / dataset
    │       └── DamagedStoreError     a store file is missing, unreadable or changed since
    │                                 its build (the message names the file and the fix)
    ├── IncompleteIndexError          a store folder without a finished manifest
    ├── ModelLoadError                weights could not be loaded (offline, bad checkpoint)
    ├── ResourceError                 the system refused what a run needs: disk full, read-only
    │                                 file system, no permission, open-file limit, I/O error
    │                                 (``errno``, ``path``; the message names both and the fix)
    ├── NotFittedError (sklearn's NotFittedError) a classifier used before ``fit``
    └── MissingExtraError (ImportError) an optional dependency is missing; says what to install

``NotFittedError`` is also :class:`sklearn.exceptions.NotFittedError` (so scikit-learn's
own checks recognise it); it is made on first use, so importing this module never loads
scikit-learn.

Messages say what to do, e.g. ``Unknown backbone 'ViT-B/31'. Known: RN50, ...``.
:func:`os_fault` (and the :func:`os_faults` context) turns an ``OSError`` whose errno is
one of :data:`OS_FAULTS` into a :class:`ResourceError` naming the path, the space an
operation needs and what to do.
"""

from __future__ import annotations

import errno as _errno
import os
from collections.abc import Iterator
from contextlib import contextmanager

__all__ = [
    "ClipindexError",
    "UserInputError",
    "ConfigError",
    "DataError",
    "IndexMismatchError",
    "DamagedStoreError",
    "IncompleteIndexError",
    "ModelLoadError",
    "MissingExtraError",
    "ResourceError",
    "OS_FAULTS",
    "os_fault",
    "os_faults",
    "disk_full",
    "os_error_from_text",
    "NotFittedError",  # noqa: F822  (made on first access, see __getattr__)
]


class ClipindexError(Exception):
    """Base class of every error clipindex raises on purpose."""


class UserInputError(ClipindexError, ValueError):
    """Bad input from the user: an argument, a config value or a data file."""


class ConfigError(UserInputError):
    """A config file or one of its fields is wrong."""


class DataError(UserInputError):
    """Images or annotations cannot be used (malformed, missing, empty selection)."""


class IndexMismatchError(UserInputError):
    """A store was opened for another backbone, dimension or dataset than it holds."""


class DamagedStoreError(IndexMismatchError):
    """A store file is missing, unreadable or no longer what its manifest recorded."""


class IncompleteIndexError(ClipindexError):
    """A store folder has no finished manifest: the build was interrupted or is running."""


class ModelLoadError(ClipindexError):
    """Model weights could not be loaded."""


class MissingExtraError(ClipindexError, ImportError):
    """An optional dependency is missing; the message names the pip line that fixes it."""


class ResourceError(ClipindexError):
    """The system refused what a run needs: the disk is full, the file system read-only,
    a permission is missing, the open-file limit is reached, or the device failed.

    ``errno`` is the OS error number, ``path`` the file or folder concerned, ``needs``
    the bytes the operation needs (disk full only; None when unknown).
    """

    def __init__(self, message: str, *, errno: int | None = None,
                 path: str | None = None, needs: int | None = None) -> None:
        super().__init__(message)
        self.errno = errno
        self.path = path
        self.needs = needs


#: The OS errors that are faults of the machine, not of clipindex or of its input.
OS_FAULTS = frozenset({_errno.ENOSPC, _errno.EDQUOT, _errno.EROFS, _errno.EACCES,
                       _errno.EPERM, _errno.EMFILE, _errno.ENFILE, _errno.EIO})
_DISK_FULL = frozenset({_errno.ENOSPC, _errno.EDQUOT})


def _size(n: int) -> str:
    for unit, scale in (("GB", 1 << 30), ("MB", 1 << 20), ("KB", 1 << 10)):
        if n >= scale:
            return f"{n / scale:.1f} {unit}"
    return f"{n} bytes"


def _free(path: str) -> int | None:
    """Free bytes on the file system holding ``path`` (its nearest existing parent)."""
    probe = os.path.abspath(path)
    while not os.path.exists(probe) and os.path.dirname(probe) != probe:
        probe = os.path.dirname(probe)
    try:
        st = os.statvfs(probe)
    except OSError:
        return None
    return st.f_bavail * st.f_frsize


def _nofile_limit() -> str:
    try:
        import resource

        soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    except (ImportError, OSError, ValueError):  # pragma: no cover - Windows
        return ""
    return f" (limit {soft}, see `ulimit -n`)"


def disk_full(path: str | os.PathLike[str], *, needs: int | None = None,
              code: int = _errno.ENOSPC) -> ResourceError:
    """The :class:`ResourceError` of a full disk at ``path``, with the space needed and free.

    Examples
    --------
    >>> disk_full("/data/x.npy", needs=3 << 20).errno == _errno.ENOSPC
    True
    """
    where = os.fspath(path)
    free = _free(where)
    need = f"; the operation needs about {_size(needs)}" if needs else ""
    have = f", {_size(free)} free" if free is not None else ""
    what = "quota exceeded" if code == _errno.EDQUOT else "no space left on the device"
    return ResourceError(
        f"{what} writing {where}{need}{have}. Free some space there, or write to "
        "another disk (--out / --index), and run the command again; partial files "
        "were removed", errno=code, path=where, needs=needs)


def os_fault(exc: BaseException, path: str | os.PathLike[str] | None = None, *,
             needs: int | None = None) -> ResourceError | None:
    """The :class:`ResourceError` for an ``OSError`` whose errno is in :data:`OS_FAULTS`
    (``path`` when the error names none), else None.

    Examples
    --------
    >>> str(os_fault(OSError(30, "Read-only file system"), "/s/a.npy")).split(":")[0]
    '/s/a.npy is on a read-only file system'
    """
    if isinstance(exc, ResourceError):  # an outer operation may know a larger need
        if needs and exc.errno in _DISK_FULL and needs > (exc.needs or 0):
            return disk_full(exc.path or path or "?", needs=needs, code=exc.errno)
        return exc
    code = getattr(exc, "errno", None)
    if not isinstance(exc, OSError) or code not in OS_FAULTS:
        return None
    named = exc.filename if isinstance(exc.filename, (str, os.PathLike)) else None
    where = os.fspath(named if named is not None else (path or "?"))  # not a file object
    if code in _DISK_FULL:
        return disk_full(where, needs=needs, code=code)
    if code == _errno.EROFS:
        text = (f"{where} is on a read-only file system: remount it read-write, or write "
                "to a writable folder (--out / --index)")
    elif code in (_errno.EACCES, _errno.EPERM):
        text = (f"permission denied on {where} (uid {_user()}): give this user access "
                "to it (chmod / chown), or use a folder it owns (--out / --index)")
    elif code in (_errno.EMFILE, _errno.ENFILE):
        limit = _nofile_limit() if code == _errno.EMFILE else " (the system's table is full)"
        text = (f"too many open files{limit} opening {where}: raise the limit (e.g. "
                "`ulimit -n 4096`), or decode in-process with --workers 0")
    else:
        text = (f"input/output error on {where}: the disk or network file system failed; "
                "check it (dmesg, fsck) and run the command again, finished shards are kept")
    return ResourceError(f"{text}", errno=code, path=where)


#: strerror texts that C++ libraries (FAISS, Arrow) put in their messages, and a short
#: write (FAISS's ``'ret == (size * 4)' failed``), which is how a full disk shows there.
_TEXTS = {"No space left": _errno.ENOSPC, "ret == ": _errno.ENOSPC,
          "Disk quota exceeded": _errno.EDQUOT, "Read-only file system": _errno.EROFS,
          "Permission denied": _errno.EACCES, "Operation not permitted": _errno.EPERM,
          "Too many open files": _errno.EMFILE, "Input/output error": _errno.EIO}


def os_error_from_text(exc: BaseException, path: str | os.PathLike[str]) -> OSError | None:
    """The ``OSError`` a library's error message (``RuntimeError`` from FAISS, say)
    stands for, when it carries one of the texts of :data:`OS_FAULTS`; else None.

    Examples
    --------
    >>> os_error_from_text(RuntimeError("'ret == (size * 4)' failed"), "x").errno == 28
    True
    """
    text = str(exc)
    code = next((c for t, c in _TEXTS.items() if t in text), None)
    return None if code is None else OSError(code, os.strerror(code), os.fspath(path))


def _user() -> str:
    try:
        return str(os.geteuid())
    except AttributeError:  # pragma: no cover - Windows
        return "?"


@contextmanager
def os_faults(path: str | os.PathLike[str], *, needs: int | None = None) -> Iterator[None]:
    """Raise an ``OSError`` of :data:`OS_FAULTS` met inside as a :class:`ResourceError`
    naming ``path`` (when the error names no file) and, on a full disk, ``needs`` bytes.

    Examples
    --------
    >>> with os_faults("/tmp/x"):
    ...     pass
    """
    try:
        yield
    except (ResourceError, OSError) as exc:
        fault = os_fault(exc, path, needs=needs)
        if fault is None or fault is exc:
            raise
        raise fault from exc


def _not_fitted_error() -> type:
    from sklearn.exceptions import NotFittedError as SklearnNotFittedError

    class NotFittedError(ClipindexError, SklearnNotFittedError):
        """A classifier was used (``predict``, ``predict_proba``) before ``fit``."""

    NotFittedError.__qualname__ = "NotFittedError"
    NotFittedError.__module__ = __name__
    return NotFittedError


def __getattr__(name: str) -> type:
    """``NotFittedError`` is built on first access (it subclasses scikit-learn's)."""
    if name == "NotFittedError":
        return globals().setdefault(name, _not_fitted_error())  # one class, even if raced
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
