"""The settings of one ``clipindex serve`` process, checked once at start."""

from __future__ import annotations

import ipaddress
import json
import os
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from clipindex.checks import non_negative, positive_int
from clipindex.errors import UserInputError

__all__ = ["LOOPBACK", "LOOPBACK_NAMES", "ServeOptions", "allowed_hosts", "is_ip",
           "is_loopback"]

LOOPBACK = "127.0.0.1"
_MB = 1024 * 1024


#: Host names every server answers to (a request's ``Host`` header, port stripped).
LOOPBACK_NAMES = ("localhost", "127.0.0.1", "::1")
_WILDCARDS = frozenset({"", "0.0.0.0", "::"})


def is_ip(name: str) -> bool:
    """Whether ``name`` is an IP address literal (no brackets)."""
    try:
        ipaddress.ip_address(name)
    except ValueError:
        return False
    return True


def allowed_hosts(host: str, extra: tuple[str, ...] = ()) -> tuple[frozenset[str], bool]:
    """The ``Host`` names a server bound to ``host`` answers to, and whether any IP
    literal is allowed too. By default: the loopback names, any loopback address, and
    the bound address; bound to every interface (``0.0.0.0``, ``::``) any IP literal
    (a DNS-rebinding page can only send a name it owns, never a bare address); ``extra``
    (``--allow-host``) adds names, ``*`` allows every name."""
    names = {*LOOPBACK_NAMES, *(h.strip().lower().strip("[]") for h in extra if h.strip())}
    if host not in _WILDCARDS:
        names.add(host.lower().strip("[]"))
    return frozenset(names), host in _WILDCARDS


def is_loopback(host: str) -> bool:
    """Whether ``host`` only listens on this machine (``127.0.0.1``, ``::1``, ``localhost``)."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


@dataclass(frozen=True)
class ServeOptions:
    """What a served store allows; every request is bounded by these.

    Attributes
    ----------
    index_dir : the store's dataset folder (``OUT/<dataset>``)
    backbones : the backbones to serve (empty: every finished one at start)
    data_root : where the tables' ``file`` paths live (default: ``dataset.json``'s root;
        a URL for a store built from object storage)
    storage_options : fsspec options (``(key, value)`` pairs) for images kept in object
        storage, on top of the non-secret ones ``dataset.json`` records
    token : with a token, every data route needs ``Authorization: Bearer TOKEN``
    max_k : the largest ``k`` (and ``k + offset``) a search may ask for
    max_upload_bytes : the largest request body (an uploaded image)
    max_query_chars : the longest text query
    max_pixels : the most pixels an uploaded image may declare (the bomb guard)
    thumb_size : the longest side of a thumbnail
    thumb_cache : how many thumbnails are kept in memory
    text_cache : how many query text vectors are kept in memory per backbone
    reload_interval : seconds between two checks of the manifests (0: every request)
    reject_below : the default abstention threshold of ``/classify``
    threads : CPU threads one request may use for FAISS and torch (default 1: a server
        gets its parallelism from concurrent requests, not from each one)
    cors_origins : origins allowed by CORS (empty: CORS off)
    host : the address the server binds (what the ``Host`` allow-list starts from)
    allow_hosts : more ``Host`` names to answer (``--allow-host``; see :func:`allowed_hosts`)
    max_in_flight : requests handled at once; past it a request gets a 503 (idle and
        half-open connections never count)
    """

    index_dir: str
    backbones: tuple[str, ...] = ()
    data_root: str | None = None
    storage_options: tuple[tuple[str, Any], ...] = ()
    token: str | None = None
    max_k: int = 1000
    max_upload_bytes: int = 10 * _MB
    max_query_chars: int = 500
    max_pixels: int = 40_000_000
    thumb_size: int = 256
    thumb_cache: int = 2048
    text_cache: int = 4096
    reload_interval: float = 1.0
    reject_below: float = 0.5
    threads: int = 1
    cors_origins: tuple[str, ...] = field(default_factory=tuple)
    host: str = LOOPBACK
    allow_hosts: tuple[str, ...] = field(default_factory=tuple)
    max_in_flight: int = 64

    def __post_init__(self) -> None:
        for name in ("max_k", "max_upload_bytes", "max_query_chars", "max_pixels",
                     "thumb_size", "thumb_cache", "text_cache", "threads", "max_in_flight"):
            positive_int(name, getattr(self, name))
        non_negative("reload_interval", self.reload_interval)
        if not 0.0 <= self.reject_below <= 1.0:
            raise UserInputError(f"reject_below must be in [0, 1], got {self.reject_below}")
        if self.token is not None and len(self.token) < 8:
            raise UserInputError("--token must be at least 8 characters long")
        if not Path(self.index_dir).is_dir():
            raise UserInputError(f"--index {self.index_dir} is not a folder")

    def to_env(self) -> str:
        """JSON for :meth:`from_env` (how ``--workers N`` hands the options to each worker)."""
        return json.dumps(asdict(self))

    @classmethod
    def from_env(cls, text: str | None = None) -> ServeOptions:
        """The options a parent process put in ``CLIPINDEX_SERVE_OPTIONS``."""
        raw: dict[str, Any] = json.loads(text if text is not None
                                         else os.environ["CLIPINDEX_SERVE_OPTIONS"])
        names = {f.name for f in fields(cls)}
        for key in ("backbones", "cors_origins", "allow_hosts"):
            raw[key] = tuple(raw.get(key) or ())
        raw["storage_options"] = tuple(tuple(kv) for kv in raw.get("storage_options") or ())
        return cls(**{k: v for k, v in raw.items() if k in names})
