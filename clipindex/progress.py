"""Progress on stderr when it is not a terminal: a line every few seconds.

tqdm redraws its bar in place with ``\\r`` many times a second; in a CI log or a file
(``> log 2>&1``) every redraw is kept, hundreds per bar. :class:`LineProgress` is tqdm with
the same counts and rates written as whole lines (``\\n``), at most one per
:data:`LINE_INTERVAL` seconds, plus the final one. Every clipindex bar is made by
:func:`bar`; :func:`use_line_progress` makes those bars lines (only clipindex's: tqdm
itself is never replaced, so a user's own bars in the same process keep redrawing), and
the ``clipindex`` command calls it when stderr is not a terminal, for that command only
(``CLIPINDEX_PROGRESS=bar`` keeps tqdm's own bars).

Example
-------
>>> import io
>>> buf = io.StringIO()
>>> for _ in LineProgress(range(3), file=buf, desc="demo", mininterval=0):
...     pass
>>> "\\r" in buf.getvalue(), buf.getvalue().splitlines()[-1].startswith("demo: 100%")
(False, True)
"""

from __future__ import annotations

import os
from typing import Any

from tqdm.std import tqdm as _std_tqdm

__all__ = ["LINE_INTERVAL", "LineProgress", "bar", "use_line_progress"]

LINE_INTERVAL = 5.0
_LINES = {"on": False}


class LineProgress(_std_tqdm):  # type: ignore[misc]
    """tqdm writing one ``\\n``-terminated line per update (every ``mininterval`` s)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("mininterval", LINE_INTERVAL)
        kwargs.setdefault("dynamic_ncols", False)
        kwargs.setdefault("ncols", 100)
        super().__init__(*args, **kwargs)

    def display(self, msg: str | None = None, pos: int | None = None) -> bool:
        """Write the bar's text as one line (never a carriage return)."""
        if self.fp is None:
            return False
        if msg == "":  # tqdm clearing a bar it leaves no trace of: nothing to clear
            return False
        text = (msg if msg is not None else self.__str__()).strip()
        if text:  # on close tqdm itself writes the final newline
            self.fp.write(text if getattr(self, "_closing", False) else text + "\n")
            self.fp.flush()
        return True

    def clear(self, nolock: bool = False) -> None:
        """Nothing to clear: lines are never redrawn."""

    def close(self) -> None:
        """tqdm's close; its final line ends with tqdm's own newline."""
        self._closing = True
        super().close()


def bar(*args: Any, **kwargs: Any) -> Any:
    """A clipindex progress bar: tqdm's (``tqdm.auto``), or a :class:`LineProgress`
    while :func:`use_line_progress` is on."""
    if _LINES["on"]:
        return LineProgress(*args, **kwargs)
    import tqdm.auto

    return tqdm.auto.tqdm(*args, **kwargs)


def use_line_progress(on: bool = True) -> bool:
    """Make clipindex's bars (:func:`bar`) lines (``on=False``: tqdm's bars again);
    False when ``CLIPINDEX_PROGRESS=bar`` asks for tqdm's own. tqdm is left as it is."""
    if on and os.environ.get("CLIPINDEX_PROGRESS", "").lower() == "bar":
        return False
    _LINES["on"] = bool(on)
    return bool(on)
