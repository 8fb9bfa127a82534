"""The report's static charts: matplotlib figures rendered by Agg to PNG bytes.

A bare :class:`matplotlib.figure.Figure` renders with Agg on ``savefig``: no pyplot
state and no global backend switch. Every chart takes plain data and returns PNG bytes.
"""

from __future__ import annotations

import io
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

__all__ = ["class_colours", "funnel_chart", "size_scatter", "caption_hist", "words_chart",
           "accuracy_chart", "cause_chart", "projection_chart"]

ACCENT, ACCENT2 = "#2f6fdb", "#e8793a"
DPI = 100


def _figure(w: float, h: float) -> Any:
    from matplotlib.figure import Figure

    fig = Figure(figsize=(w, h), dpi=DPI)
    fig.patch.set_facecolor("white")
    return fig


def _png(fig: Any) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=DPI, bbox_inches="tight", pad_inches=0.15)
    return buf.getvalue()


def _clean(ax: Any) -> None:
    for side in ("top", "right"):
        ax.spines[side].set_visible(False)
    ax.grid(axis="y", color="#e4e7eb", linewidth=0.8)
    ax.set_axisbelow(True)


def class_colours(classes: Sequence[str]) -> dict[str, Any]:
    """One colour per class (tab10, then tab20), stable for a class order."""
    from matplotlib import colormaps

    cmap = colormaps["tab10" if len(classes) <= 10 else "tab20"]
    return {c: cmap(i % cmap.N) for i, c in enumerate(classes)}


def funnel_chart(stages: Mapping[str, Mapping[str, int]], classes: Sequence[str]) -> bytes:
    """Grouped bars: images per class at each filter stage (``stage -> class -> n``)."""
    fig = _figure(8.6, 3.6)
    ax = fig.subplots()
    names = list(stages)
    x = np.arange(len(classes))
    width = 0.8 / max(1, len(names))
    from matplotlib import colormaps

    blues = colormaps["Blues"]
    for i, stage in enumerate(names):
        vals = [int(stages[stage].get(c, 0)) for c in classes]
        colour = blues(0.35 + 0.6 * i / max(1, len(names) - 1))
        bars = ax.bar(x + (i - (len(names) - 1) / 2) * width, vals, width, label=stage,
                      color=colour)
        if i == len(names) - 1:
            ax.bar_label(bars, fontsize=8, padding=2)
    ax.set_xticks(x, labels=list(classes))
    ax.set_ylabel("images")
    ax.legend(frameon=False, fontsize=8, ncols=min(len(names), 5), loc="upper center",
              bbox_to_anchor=(0.5, 1.16))
    _clean(ax)
    return _png(fig)


def size_scatter(width: np.ndarray, height: np.ndarray, labels: Sequence[str],
                 classes: Sequence[str]) -> bytes:
    """Image width x height, one dot per image, coloured by class."""
    fig = _figure(5.2, 4.0)
    ax = fig.subplots()
    colours = class_colours(classes)
    names = np.asarray(labels).astype(str)
    for c in classes:
        sel = names == c
        if sel.any():
            ax.scatter(width[sel], height[sel], s=12, alpha=0.6, color=colours[c], label=c,
                       edgecolors="none")
    ax.set_xlabel("width (px)")
    ax.set_ylabel("height (px)")
    ax.legend(frameon=False, fontsize=8, markerscale=1.5)
    _clean(ax)
    return _png(fig)


def caption_hist(lengths: np.ndarray) -> bytes:
    """Histogram of caption lengths in characters, with the mean marked."""
    fig = _figure(5.2, 4.0)
    ax = fig.subplots()
    lengths = np.asarray(lengths, dtype=np.float64)
    bins = np.arange(0, max(10, int(lengths.max()) + 6), 3) if len(lengths) else 10
    ax.hist(lengths, bins=bins, color=ACCENT, alpha=0.85, edgecolor="white")
    if len(lengths):
        mean = float(lengths.mean())
        ax.axvline(mean, color=ACCENT2, linewidth=2)
        ax.text(mean, ax.get_ylim()[1] * 0.95, f"  mean {mean:.0f}", color=ACCENT2,
                va="top", fontsize=9)
    ax.set_xlabel("caption length (characters)")
    ax.set_ylabel("captions")
    _clean(ax)
    return _png(fig)


def words_chart(pairs: Sequence[tuple[str, int]]) -> bytes:
    """Horizontal bars of the most common words, the most common on top."""
    fig = _figure(5.2, 0.6 + 0.22 * max(1, len(pairs)))
    ax = fig.subplots()
    words = [w for w, _ in pairs][::-1]
    counts = [n for _, n in pairs][::-1]
    bars = ax.barh(words, counts, color=ACCENT)
    ax.bar_label(bars, fontsize=7, padding=2)
    ax.set_xlabel("occurrences in captions")
    ax.tick_params(axis="y", labelsize=8)
    for side in ("top", "right"):
        ax.spines[side].set_visible(False)
    return _png(fig)


def _grouped_bars(ax: Any, values: Mapping[str, Mapping[str, float]], groups: Sequence[str],
                  methods: Sequence[str], *, horizontal: bool) -> np.ndarray:
    """One bar per method within each group (``values[group][method]``, NaN if absent),
    coloured by method; returns the group positions."""
    from matplotlib import colormaps

    pos = np.arange(len(groups))
    size = 0.8 / max(1, len(methods))
    cmap = colormaps["tab10"]
    draw = ax.barh if horizontal else ax.bar
    for i, m in enumerate(methods):
        vals = [values[g].get(m, np.nan) for g in groups]
        draw(pos + (i - (len(methods) - 1) / 2) * size, vals, size, label=m, color=cmap(i % 10))
    return pos


def accuracy_chart(acc: Mapping[str, Mapping[str, float]], methods: Sequence[str],
                   ensembles: Sequence[str] = ()) -> bytes:
    """Grouped bars: accuracy of each model (``model -> method -> accuracy``) by method."""
    models = list(acc)
    fig = _figure(max(6.0, 1.0 + 0.9 * len(models)), 3.6)
    ax = fig.subplots()
    x = _grouped_bars(ax, acc, models, methods, horizontal=False)
    ax.set_xticks(x, labels=[m.replace(" (", "\n(") for m in models], fontsize=9)
    for tick, name in zip(ax.get_xticklabels(), models, strict=True):
        if name in ensembles:
            tick.set_color("#8a3d0f")
            tick.set_fontweight("bold")
    ax.set_ylim(0, 1.0)
    ax.set_ylabel("accuracy")
    ax.legend(frameon=False, fontsize=8, ncols=min(len(methods), 6), loc="upper center",
              bbox_to_anchor=(0.5, 1.17))
    _clean(ax)
    return _png(fig)


def cause_chart(rates: Mapping[str, Mapping[str, float]], methods: Sequence[str]) -> bytes:
    """Grouped horizontal bars: error rate by cause (``cause -> method -> rate``)."""
    causes = list(rates)[::-1]
    fig = _figure(6.4, 0.8 + 0.42 * len(causes) * max(1, len(methods)) ** 0.5)
    ax = fig.subplots()
    y = _grouped_bars(ax, rates, causes, methods, horizontal=True)
    ax.set_yticks(y, labels=causes)
    ax.set_xlim(0, 1.0)
    ax.set_xlabel("error rate (single backbones pooled)")
    ax.legend(frameon=False, fontsize=8, loc="lower right")
    ax.grid(axis="x", color="#e4e7eb", linewidth=0.8)
    ax.set_axisbelow(True)
    for side in ("top", "right"):
        ax.spines[side].set_visible(False)
    return _png(fig)


def projection_chart(panels: Sequence[tuple[str, np.ndarray, np.ndarray]],
                     classes: Sequence[str], method: str) -> bytes:
    """One 2-D scatter per backbone (``(title, xy, labels)``), coloured by class."""
    n = len(panels)
    cols = min(3, n)
    rows = -(-n // cols)
    fig = _figure(4.2 * cols, 3.9 * rows + 0.4)
    axes = np.atleast_1d(fig.subplots(rows, cols, squeeze=False)).ravel()
    colours = class_colours(classes)
    for ax, (title, xy, labels) in zip(axes, panels, strict=False):
        labels = np.asarray(labels).astype(str)
        for c in classes:
            sel = labels == c
            if sel.any():
                ax.scatter(xy[sel, 0], xy[sel, 1], s=9, alpha=0.7, color=colours[c],
                           label=c, edgecolors="none")
        ax.set_title(title, fontsize=10)
        ax.set_xticks([])
        ax.set_yticks([])
    for ax in axes[n:]:
        ax.set_axis_off()
    handles, names = axes[0].get_legend_handles_labels()
    fig.legend(handles, names, loc="lower center", ncols=min(len(names), 10), frameon=False,
               fontsize=9, markerscale=2, bbox_to_anchor=(0.5, -0.02))
    fig.suptitle(f"image vectors, {method.upper()} to 2-D", fontsize=11)
    fig.tight_layout(rect=(0, 0.05, 1, 1))
    return _png(fig)
