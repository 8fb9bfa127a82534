"""Fetching named pretrained weights (open_clip tags): fast and quiet when offline.

Before open_clip asks the Hugging Face hub for a tag's weights, :func:`hub_guard` looks
for them in the local hub cache, and otherwise checks that the hub (``HF_ENDPOINT``) is
reachable at all, within :data:`PROBE_SECONDS`. Offline (``HF_HUB_OFFLINE=1``) or with the
hub unreachable and nothing cached, it fails at once with the whole message and the
local-checkpoint route, instead of a minute of retries; whatever runs, the hub's retry
chatter (its ``WARNING`` log lines) is silenced.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import threading
from collections.abc import Iterator
from typing import Any
from urllib.parse import urlparse

from clipindex.errors import ModelLoadError

__all__ = ["PROBE_SECONDS", "hub_guard", "hub_reachable", "quiet_hub"]

#: How long the reachability probe of the hub may take.
PROBE_SECONDS = 3.0
_WEIGHT_FILES = ("open_clip_model.safetensors", "open_clip_pytorch_model.bin")
_TRUE = {"1", "true", "yes", "on"}


def _offline() -> bool:
    if os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in _TRUE:
        return True
    with contextlib.suppress(Exception):
        from huggingface_hub import constants

        return bool(constants.HF_HUB_OFFLINE)
    return False


def _endpoint() -> str:
    with contextlib.suppress(Exception):
        from huggingface_hub import constants

        return str(constants.ENDPOINT)
    return os.environ.get("HF_ENDPOINT", "https://huggingface.co")


def hub_reachable(url: str, timeout: float = PROBE_SECONDS) -> bool:
    """Whether a TCP connection to ``url``'s host opens within ``timeout`` seconds (DNS
    included: the lookup runs in a thread that is abandoned when it hangs)."""
    parts = urlparse(url)
    host = parts.hostname
    if not host:
        return False
    port = parts.port or (443 if parts.scheme == "https" else 80)
    result: list[bool] = []

    def probe() -> None:
        try:
            with socket.create_connection((host, port), timeout=timeout):
                result.append(True)
        except OSError:
            result.append(False)

    thread = threading.Thread(target=probe, daemon=True)
    thread.start()
    thread.join(timeout)
    return bool(result and result[0])


def _cached(repo: str) -> bool:
    with contextlib.suppress(Exception):
        from huggingface_hub import try_to_load_from_cache

        return any(isinstance(try_to_load_from_cache(repo, f), str) for f in _WEIGHT_FILES)
    return False


@contextlib.contextmanager
def quiet_hub() -> Iterator[None]:
    """The hub's retry warnings silenced (they print each attempt, twice)."""
    loggers = [logging.getLogger(n) for n in ("huggingface_hub", "urllib3")]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.ERROR)
    try:
        yield
    finally:
        for lg, level in zip(loggers, levels, strict=True):
            lg.setLevel(level)


def hub_guard(model: str, tag: str, display: str) -> None:
    """Fail at once, with the local route, when ``model``/``tag``'s weights are neither
    in the local hub cache nor fetchable (offline or the hub unreachable)."""
    import open_clip

    cfg: dict[str, Any] = open_clip.get_pretrained_cfg(model, tag) or {}
    repo = str(cfg.get("hf_hub") or "").strip("/")
    url = str(cfg.get("url") or "")
    if repo and _cached(repo):
        return
    if not repo and url and os.path.isfile(
            os.path.expanduser(os.path.join("~", ".cache", "clip", os.path.basename(url)))):
        return  # open_clip's own download cache
    where = repo and f"huggingface.co/{repo}"
    source = where or url
    if _offline():
        why = "HF_HUB_OFFLINE is set and they are not in the local cache"
    elif not hub_reachable(_endpoint() if repo else source):
        why = f"the hub ({_endpoint() if repo else source}) cannot be reached"
    else:
        return
    raise ModelLoadError(
        f"Could not load pretrained weights {tag!r} for {display}: {why}. Download the "
        f"checkpoint elsewhere{f' (from {source})' if source else ''} and pass "
        "--pretrained /path/to/open_clip_pytorch_model.bin (or a folder with "
        "open_clip_config.json and open_clip_model.safetensors)")
