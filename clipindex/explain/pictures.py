"""Pictures of Grad-CAM maps: overlays, the box-mass score and captioned panels."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from clipindex.errors import UserInputError
from clipindex.explain.cam import load_image

__all__ = ["box_mass", "gradcam_panel", "overlay"]


def overlay(
    image: str | Path | Image.Image, cam: np.ndarray, *, alpha: float = 0.5
) -> Image.Image:
    """The image with the CAM drawn over it as a jet heat map (``alpha`` = heat weight).

    Example
    -------
    >>> overlay("cat.jpg", cam).save("cat_cam.png")   # doctest: +SKIP
    """
    from matplotlib import colormaps

    img = load_image(image)
    cam = np.asarray(cam, dtype=np.float32)
    if cam.shape != (img.height, img.width):
        raise UserInputError(
            f"CAM shape {cam.shape} does not match the image ({img.height}, {img.width})."
        )
    heat = colormaps["jet"](np.clip(cam, 0.0, 1.0))[..., :3]
    base = np.asarray(img, dtype=np.float32) / 255.0
    mixed = (1.0 - alpha) * base + alpha * heat
    return Image.fromarray(np.clip(mixed * 255.0 + 0.5, 0, 255).astype(np.uint8))


def box_mass(cam: np.ndarray, bbox: tuple[float, float, float, float]) -> float:
    """Share of the CAM's mass inside a COCO box ``(x, y, w, h)`` (0 when the CAM is 0).

    Example
    -------
    >>> box_mass(np.ones((4, 4)), (0, 0, 2, 2))
    0.25
    """
    x, y, w, h = (float(v) for v in bbox)
    total = float(np.sum(cam))
    if total <= 0.0:
        return 0.0
    x0, y0 = max(0, int(np.floor(x))), max(0, int(np.floor(y)))
    x1, y1 = int(np.ceil(x + w)), int(np.ceil(y + h))
    return float(np.sum(cam[y0:y1, x0:x1])) / total


def gradcam_panel(
    items: list[tuple[Image.Image, np.ndarray, str]],
    *,
    columns: int = 4,
    thumb: int = 160,
    title: str | None = None,
) -> Image.Image:
    """A grid of CAM overlays, each with a caption under it (e.g. ``true cat / pred dog
    0.71``). ``items`` are ``(image, cam, caption)``; make them from a store with
    :func:`clipindex.explain.runs.explain_rows`.

    Example
    -------
    >>> panel = gradcam_panel([(img, cam, "true cat / pred cat 0.93")])  # doctest: +SKIP
    >>> panel.save("panel.png")                                          # doctest: +SKIP
    """
    if not items:
        raise UserInputError("Nothing to draw: gradcam_panel needs at least one item.")
    columns = max(1, min(columns, len(items)))
    rows = -(-len(items) // columns)
    line, top = 14, (18 if title else 0)
    cell_h = thumb + 2 * line + 6
    panel = Image.new("RGB", (columns * (thumb + 8) + 8, top + rows * cell_h + 4), "white")
    draw = ImageDraw.Draw(panel)
    if title:
        draw.text((8, 3), title, fill="black")
    for i, (image, cam, caption) in enumerate(items):
        pic = overlay(image, cam)
        pic.thumbnail((thumb, thumb))
        x0 = 8 + (i % columns) * (thumb + 8)
        y0 = top + 4 + (i // columns) * cell_h
        panel.paste(pic, (x0 + (thumb - pic.width) // 2, y0 + (thumb - pic.height) // 2))
        for j, text in enumerate(_wrap(caption, thumb)):
            draw.text((x0, y0 + thumb + 2 + j * line), text, fill="black")
    return panel


def _wrap(caption: str, width: int) -> list[str]:
    """At most two lines of about ``width / 6`` characters (PIL's default font)."""
    chars = max(8, width // 6)
    words, lines = caption.split(), [""]
    for word in words:
        if lines[-1] and len(lines[-1]) + 1 + len(word) > chars:
            lines.append("")
        lines[-1] = f"{lines[-1]} {word}".strip()
    return [ln[:chars] for ln in lines[:2]]
