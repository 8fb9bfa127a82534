"""PNG plots of benchmark results (matplotlib figures rendered by Agg: no display needed).

:func:`confusion_grid` draws the study's figure: one confusion matrix per backbone in
blue, then each ensemble in its own colour map (the study used orange for its majority
vote), counts written in every cell and the panel's accuracy in its title.

Example
-------
>>> import numpy as np
>>> from clipindex.bench.plots import ConfusionPanel, confusion_grid
>>> panel = ConfusionPanel("tiny-vit", np.array([[9, 1], [2, 8]]), ["cat", "dog"])
>>> confusion_grid([panel], "confusion.png", title="zero-shot")  # doctest: +SKIP
PosixPath('confusion.png')
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from clipindex.files import atomic_write

__all__ = ["ConfusionPanel", "confusion_grid", "ENSEMBLE_CMAPS"]

#: Colour map of the single-backbone panels, and of each ensemble kind in turn.
BACKBONE_CMAP = "Blues"
ENSEMBLE_CMAPS: tuple[str, ...] = ("Oranges", "Greens", "Purples", "Reds")


@dataclass(frozen=True)
class ConfusionPanel:
    """One matrix of the grid: rows = true class, columns = predicted class."""

    title: str
    matrix: np.ndarray
    classes: Sequence[str]
    ensemble: bool = False


def _draw(ax: Any, panel: ConfusionPanel, cmap: str) -> None:
    m = np.asarray(panel.matrix, dtype=np.int64)
    ax.imshow(m, cmap=cmap, vmin=0, vmax=max(int(m.max()), 1))
    n = len(panel.classes)
    ticks = np.arange(n)
    ax.set_xticks(ticks, labels=list(panel.classes), rotation=45, ha="right")
    ax.set_yticks(ticks, labels=list(panel.classes))
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    total = int(m.sum())
    acc = float(np.trace(m)) / total if total else float("nan")
    ax.set_title(f"{panel.title}\naccuracy {acc:.3f} (n={total})", fontsize=10)
    high = m.max() / 2 if m.size else 0
    for i in range(n):
        for j in range(n):
            ax.text(j, i, str(m[i, j]), ha="center", va="center", fontsize=9,
                    color="white" if m[i, j] > high else "black")


def confusion_grid(panels: Sequence[ConfusionPanel], path: str | os.PathLike[str], *,
                   title: str = "", ncols: int = 4) -> Path:
    """Write a grid of confusion matrices to ``path`` (PNG, written atomically).

    Single-backbone panels use :data:`BACKBONE_CMAP`; ensemble panels use
    :data:`ENSEMBLE_CMAPS` in order, so the ensembles stand out as in the study.

    Example
    -------
    >>> confusion_grid([ConfusionPanel("a", np.eye(2, dtype=int) * 5, ["x", "y"])],
    ...                "grid.png")  # doctest: +SKIP
    PosixPath('grid.png')
    """
    # A bare Figure renders with Agg on savefig: no pyplot state, no global backend switch.
    from matplotlib.figure import Figure

    if not panels:
        raise ValueError("confusion_grid needs at least one panel")
    # As few rows as ncols allows, then as few columns as those rows need (5 -> 3 + 2).
    rows = -(-len(panels) // max(1, ncols))
    cols = -(-len(panels) // rows)
    side = 2.2 + 0.45 * max(len(p.classes) for p in panels)
    fig = Figure(figsize=(side * cols, (side + 0.4) * rows + (0.5 if title else 0)))
    axes = fig.subplots(rows, cols, squeeze=False)
    ens = 0
    for ax, panel in zip(axes.flat, panels, strict=False):
        if panel.ensemble:
            cmap = ENSEMBLE_CMAPS[ens % len(ENSEMBLE_CMAPS)]
            ens += 1
        else:
            cmap = BACKBONE_CMAP
        _draw(ax, panel, cmap)
    for ax in list(axes.flat)[len(panels):]:
        ax.set_axis_off()
    if title:
        fig.suptitle(title, fontsize=12)
    fig.tight_layout()
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    return atomic_write(out, lambda fh: fig.savefig(fh, format="png", dpi=110))
