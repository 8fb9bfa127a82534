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

__all__ = ["PROBE_SECONDS", "check_weights", "hub_guard", "hub_reachable", "quiet_hub"]

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


@contextlib.contextmanager
def _forced_offline() -> Iterator[None]:
    """The hub in offline mode (cached files only, no requests) for one load."""
    try:
        from huggingface_hub import constants
    except Exception:  # noqa: BLE001 - no hub: nothing to switch
        yield
        return
    before = constants.HF_HUB_OFFLINE
    constants.HF_HUB_OFFLINE = True
    try:
        yield
    finally:
        constants.HF_HUB_OFFLINE = before


def hub_guard(model: str, tag: str, display: str) -> contextlib.AbstractContextManager[Any]:
    """Fail at once, with the local route, when ``model``/``tag``'s weights are neither
    in the local hub cache nor fetchable (offline or the hub unreachable). Returns the
    context to load them in: the hub's chatter silenced and, when they are cached but the
    hub cannot be reached, the hub switched offline (no minute of retries first)."""
    repo, url, endpoint = _where(model, tag)
    if repo and _cached(repo):
        if _offline() or hub_reachable(endpoint):
            return quiet_hub()
        stack = contextlib.ExitStack()
        stack.enter_context(quiet_hub())
        stack.enter_context(_forced_offline())
        return stack
    if not repo and _in_clip_cache(url):
        return quiet_hub()  # open_clip's own download cache
    _refuse_unfetchable(repo, url, endpoint, tag, display)
    return quiet_hub()


def check_weights(model: str, tag: str, display: str) -> None:
    """Raise the :class:`ModelLoadError` :func:`hub_guard` would, loading nothing: cached
    weights pass at once; otherwise only when they can be fetched (a build checks this
    before it writes anything)."""
    repo, url, endpoint = _where(model, tag)
    if not (repo or url):  # a tag open_clip does not know: its loading says so
        return
    if (repo and _cached(repo)) or (not repo and _in_clip_cache(url)):
        return
    _refuse_unfetchable(repo, url, endpoint, tag, display)


def _where(model: str, tag: str) -> tuple[str, str, str]:
    """(hub repo, download url, endpoint to probe) of ``model``/``tag``'s weights."""
    import open_clip

    cfg: dict[str, Any] = open_clip.get_pretrained_cfg(model, tag) or {}
    repo = str(cfg.get("hf_hub") or "").strip("/")
    url = str(cfg.get("url") or "")
    return repo, url, _endpoint() if repo else url


def _in_clip_cache(url: str) -> bool:
    return bool(url) and os.path.isfile(
        os.path.expanduser(os.path.join("~", ".cache", "clip", os.path.basename(url))))


def _refuse_unfetchable(repo: str, url: str, endpoint: str, tag: str, display: str) -> None:
    source = f"huggingface.co/{repo}" if repo else url
    if _offline():
        why = "HF_HUB_OFFLINE is set and they are not in the local cache"
    elif not hub_reachable(endpoint):
        why = f"the hub ({endpoint}) cannot be reached"
    else:
        return
    raise ModelLoadError(
        f"Could not load pretrained weights {tag!r} for {display}: {why}. Download the "
        f"checkpoint elsewhere{f' (from {source})' if source else ''} and pass "
        "--pretrained /path/to/open_clip_pytorch_model.bin (or a folder with "
        "open_clip_config.json and open_clip_model.safetensors)")
