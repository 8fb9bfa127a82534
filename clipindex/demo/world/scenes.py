"""Backgrounds (contexts) and clutter of the demo world, drawn with numpy and PIL.

Each context builder returns the background as a PIL image and the horizon row: objects
stand on the ground below it. Large areas are numpy arrays (gradients, smooth noise);
details (fences, windows, buildings) are PIL primitives.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
from PIL import Image, ImageDraw

__all__ = ["draw_background", "draw_clutter", "smooth_noise"]

RGB = tuple[int, int, int]


def smooth_noise(rng: np.random.Generator, h: int, w: int, cell: float) -> np.ndarray:
    """Low-frequency noise (std about 1) of shape (h, w): random cells, bilinear upsampled."""
    gh, gw = max(2, int(h / cell) + 2), max(2, int(w / cell) + 2)
    low = rng.standard_normal((gh, gw)).astype(np.float32)
    return np.asarray(Image.fromarray(low, mode="F").resize((w, h), Image.Resampling.BILINEAR))


def _vgrad(h: int, w: int, top: np.ndarray, bottom: np.ndarray) -> np.ndarray:
    t = np.linspace(0.0, 1.0, max(h, 1), dtype=np.float32)[:, None, None]
    col = top[None, None, :] * (1 - t) + bottom[None, None, :] * t
    return np.broadcast_to(col, (h, w, 3)).astype(np.float32)


def _jit(rng: np.random.Generator, rgb: RGB | np.ndarray, s: float) -> np.ndarray:
    return np.clip(np.asarray(rgb, np.float32) + rng.normal(0, s, 3), 0, 255).astype(np.float32)


def _sky(rng: np.random.Generator, h: int, w: int, overcast: float = 0.3) -> np.ndarray:
    if rng.random() < overcast:
        top, bottom = _jit(rng, (170, 176, 186), 12), _jit(rng, (205, 208, 212), 10)
    else:
        top, bottom = _jit(rng, (92, 146, 214), 18), _jit(rng, (178, 206, 236), 14)
    sky = _vgrad(h, w, top, bottom)
    if h > 4:
        sky = sky + smooth_noise(rng, h, w, max(w, h) / 4)[..., None] * 6
    return sky


def _ground(
    rng: np.random.Generator, h: int, w: int, base: np.ndarray, coarse: float, fine: float
) -> np.ndarray:
    shade = _vgrad(h, w, base * 0.92, base * 1.06)
    shade = shade + smooth_noise(rng, h, w, max(8.0, w / 5))[..., None] * coarse
    return shade + smooth_noise(rng, h, w, 3.0)[..., None] * fine


def _rows(h: int, *cuts: int) -> list[int]:
    """Heights of horizontal bands ending at ``cuts`` (and ``h``) at half resolution:
    large textures are computed at half size and upscaled, which is 4x cheaper."""
    edges = [0] + [max(1, c // 2) for c in cuts] + [max(len(cuts) + 1, (h + 1) // 2)]
    for i in range(1, len(edges)):
        edges[i] = max(edges[i], edges[i - 1] + 1)
    return [b - a for a, b in zip(edges[:-1], edges[1:], strict=True)]


def _to_image(arr: np.ndarray, w: int, h: int) -> Image.Image:
    img = Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8), "RGB")
    return img.resize((w, h), Image.Resampling.BILINEAR) if img.size != (w, h) else img


def _field(rng: np.random.Generator, w: int, h: int) -> tuple[Image.Image, int]:
    yh = int(h * rng.uniform(0.15, 0.5))
    grass = [(86, 138, 58), (112, 150, 62), (146, 156, 84), (70, 116, 52), (128, 140, 70)]
    base = _jit(rng, grass[int(rng.integers(len(grass)))], 10)
    (a, b), w2 = _rows(h, yh), (w + 1) // 2
    arr = np.concatenate([_sky(rng, a, w2), _ground(rng, b, w2, base, 16, 9)], axis=0)
    img = _to_image(arr, w, h)
    d = ImageDraw.Draw(img)
    if rng.random() < 0.6:  # distant hills or a tree line on the horizon
        col = tuple(int(c) for c in _jit(rng, base * 0.7, 8))
        xs = np.linspace(0, w, 9)
        ys = yh - rng.uniform(0.0, 0.12, 9) * h
        d.polygon(
            [(0, yh)] + list(zip(xs.tolist(), ys.tolist(), strict=True)) + [(w, yh)], fill=col
        )
    if rng.random() < 0.35:  # a wooden fence
        fy = yh + (h - yh) * rng.uniform(0.05, 0.3)
        post = tuple(int(c) for c in _jit(rng, (120, 92, 60), 12))
        ph, step = max(4, h * 0.08), max(10, w * rng.uniform(0.06, 0.12))
        for x in np.arange(rng.uniform(0, step), w, step):
            d.rectangle([x, fy - ph, x + max(2, step * 0.08), fy], fill=post)
        d.line([(0, fy - ph * 0.7), (w, fy - ph * 0.7)], fill=post, width=max(1, int(ph * 0.12)))
    return img, yh


def _road(rng: np.random.Generator, w: int, h: int) -> tuple[Image.Image, int]:
    yh = int(h * rng.uniform(0.25, 0.5))
    asphalt = _jit(rng, (96, 96, 100), 12)
    (a, b), w2 = _rows(h, yh), (w + 1) // 2
    arr = np.concatenate([_sky(rng, a, w2), _ground(rng, b, w2, asphalt, 8, 10)], axis=0)
    img = _to_image(arr, w, h)
    d = ImageDraw.Draw(img)
    x = 0.0
    while x < w and yh > 6:  # buildings along the horizon
        bw = w * rng.uniform(0.12, 0.3)
        top = yh * rng.uniform(0.05, 0.7)
        col = tuple(int(c) for c in _jit(rng, (150, 130, 115), 35))
        d.rectangle([x, top, x + bw, yh], fill=col)
        win = tuple(int(c * 0.6) for c in col)
        step = max(6.0, bw / 4)
        for wx in np.arange(x + step * 0.3, x + bw - step * 0.4, step):
            for wy in np.arange(top + step * 0.3, yh - step * 0.5, step):
                d.rectangle([wx, wy, wx + step * 0.4, wy + step * 0.45], fill=win)
        x += bw + w * rng.uniform(0.0, 0.05)
    kerb = yh + (h - yh) * rng.uniform(0.08, 0.2)
    side = tuple(int(c) for c in _jit(rng, (168, 164, 156), 10))
    d.rectangle([0, yh, w, kerb], fill=side)
    d.line([(0, kerb), (w, kerb)], fill=(210, 208, 200), width=max(1, h // 80))
    ly = kerb + (h - kerb) * rng.uniform(0.35, 0.65)
    lcol = (226, 226, 220) if rng.random() < 0.6 else (222, 188, 60)
    dash = max(8.0, w * 0.08)
    for lx in np.arange(rng.uniform(-dash, 0), w, dash * 2):
        d.rectangle([lx, ly, lx + dash, ly + max(2, h // 90)], fill=lcol)
    return img, yh


def _indoor(rng: np.random.Generator, w: int, h: int) -> tuple[Image.Image, int]:
    yf = int(h * rng.uniform(0.42, 0.72))
    walls = [(222, 214, 196), (198, 210, 214), (230, 226, 220), (214, 190, 170), (190, 200, 180)]
    wall = _jit(rng, walls[int(rng.integers(len(walls)))], 10)
    floor_kind = int(rng.integers(3))  # wood, carpet, tiles
    floors = [(150, 104, 64), (132, 120, 112), (200, 196, 188)]
    floor = _jit(rng, floors[floor_kind], 16)
    (a, b), w2 = _rows(h, yf), (w + 1) // 2
    wall_arr = (
        _vgrad(a, w2, wall * 1.02, wall * 0.92) + smooth_noise(rng, a, w2, w2 / 4)[..., None] * 5
    )
    arr = np.concatenate([wall_arr, _ground(rng, b, w2, floor, 6, 8)], axis=0)
    img = _to_image(arr, w, h)
    d = ImageDraw.Draw(img)
    dark = tuple(int(c * 0.8) for c in floor)
    if floor_kind == 0:
        for y in np.arange(yf, h, max(4.0, (h - yf) / rng.uniform(5, 10))):
            d.line([(0, y), (w, y)], fill=dark, width=1)
    elif floor_kind == 2:
        step = max(8.0, w / rng.uniform(6, 12))
        for x in np.arange(0, w, step):
            d.line([(x, yf), (x, h)], fill=dark, width=1)
        for y in np.arange(yf, h, step * 0.6):
            d.line([(0, y), (w, y)], fill=dark, width=1)
    d.rectangle([0, yf - max(2, h // 40), w, yf], fill=(236, 234, 228))
    if rng.random() < 0.6 and yf > 20:  # a window or a picture on the wall
        x0, y0 = w * rng.uniform(0.05, 0.6), yf * rng.uniform(0.1, 0.35)
        x1, y1 = x0 + w * rng.uniform(0.15, 0.35), y0 + yf * rng.uniform(0.25, 0.5)
        fill = (
            (176, 206, 230)
            if rng.random() < 0.6
            else tuple(int(v) for v in rng.integers(40, 220, 3))
        )
        d.rectangle([x0, y0, x1, y1], fill=fill, outline=(245, 245, 240), width=max(2, w // 120))
    if rng.random() < 0.4:  # a rug
        cx, cy = w * rng.uniform(0.2, 0.8), yf + (h - yf) * rng.uniform(0.3, 0.8)
        rx, ry = w * rng.uniform(0.15, 0.35), (h - yf) * rng.uniform(0.12, 0.3)
        d.ellipse(
            [cx - rx, cy - ry, cx + rx, cy + ry],
            fill=tuple(int(v) for v in rng.integers(60, 200, 3)),
        )
    return img, yf


def _beach(rng: np.random.Generator, w: int, h: int) -> tuple[Image.Image, int]:
    yh = int(h * rng.uniform(0.2, 0.45))
    ys = int(yh + (h - yh) * rng.uniform(0.1, 0.3))
    sea = _jit(rng, (52, 110, 160), 14)
    sand = _jit(rng, (216, 196, 152), 12)
    (a, b, c), w2 = _rows(h, yh, ys), (w + 1) // 2
    sea_arr = _vgrad(b, w2, sea * 0.9, sea * 1.15)
    sea_arr = sea_arr + np.abs(smooth_noise(rng, b, w2, 2.5))[..., None] * 14
    arr = np.concatenate([_sky(rng, a, w2), sea_arr, _ground(rng, c, w2, sand, 10, 8)], axis=0)
    img = _to_image(arr, w, h)
    d = ImageDraw.Draw(img)
    wet = tuple(int(c * 0.82) for c in sand)
    d.rectangle([0, ys, w, ys + max(2, (h - ys) * rng.uniform(0.03, 0.1))], fill=wet)
    return img, ys


def _snow(rng: np.random.Generator, w: int, h: int) -> tuple[Image.Image, int]:
    yh = int(h * rng.uniform(0.2, 0.5))
    snow = _jit(rng, (228, 232, 240), 6)
    (a, b), w2 = _rows(h, yh), (w + 1) // 2
    arr = np.concatenate([_sky(rng, a, w2, overcast=0.7), _ground(rng, b, w2, snow, 10, 5)], axis=0)
    img = _to_image(arr, w, h)
    d = ImageDraw.Draw(img)
    if yh > 8:
        tree = tuple(int(c) for c in _jit(rng, (40, 66, 52), 10))
        for x in np.arange(rng.uniform(0, 20), w, max(6.0, w / rng.uniform(8, 20))):
            th = yh * rng.uniform(0.15, 0.5)
            d.polygon([(x - th * 0.3, yh), (x, yh - th), (x + th * 0.3, yh)], fill=tree)
    return img, yh


_BACKGROUNDS: dict[str, Callable[[np.random.Generator, int, int], tuple[Image.Image, int]]] = {
    "field": _field,
    "road": _road,
    "indoor": _indoor,
    "beach": _beach,
    "snow": _snow,
}

_CLUTTER_COLOURS: dict[str, tuple[RGB, ...]] = {
    "field": ((120, 120, 116), (60, 100, 44), (226, 224, 214), (200, 190, 60)),
    "road": ((90, 90, 94), (230, 120, 40), (60, 60, 60), (200, 200, 196)),
    "indoor": ((190, 50, 50), (50, 90, 170), (230, 200, 60), (240, 240, 236)),
    "beach": ((236, 226, 200), (120, 110, 100), (230, 90, 70), (60, 130, 170)),
    "snow": ((60, 60, 58), (250, 250, 252), (40, 70, 50), (150, 140, 130)),
}


def draw_background(
    rng: np.random.Generator, context: str, width: int, height: int
) -> tuple[Image.Image, int]:
    """Draw the background of ``context``; returns the image and the horizon row."""
    return _BACKGROUNDS[context](rng, width, height)


def draw_clutter(
    rng: np.random.Generator, img: Image.Image, context: str, horizon: int, count: int
) -> None:
    """Scatter ``count`` small blobs (rocks, bushes, toys, cones) on the ground."""
    d = ImageDraw.Draw(img)
    w, h = img.size
    palette = _CLUTTER_COLOURS[context]
    for _ in range(count):
        size = h * rng.uniform(0.01, 0.06)
        x, y = rng.uniform(0, w), rng.uniform(horizon, h)
        size *= 0.5 + (y - horizon) / max(1, h - horizon)
        col = tuple(int(c) for c in _jit(rng, palette[int(rng.integers(len(palette)))], 12))
        box = [x - size, y - size * rng.uniform(0.4, 1.0), x + size, y]
        if rng.random() < 0.6:
            d.ellipse(box, fill=col)
        else:
            d.rectangle(box, fill=col)
