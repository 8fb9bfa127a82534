"""Draw one planned image: background, clutter, objects in depth order, noise, JPEG.

Annotations (category, bbox, area) come from each object's own silhouette mask, so
they match the pixels exactly (before the object is occluded by nearer ones).
"""

from __future__ import annotations

import io
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
from PIL import Image, ImageChops, ImageDraw, ImageFilter

from clipindex.demo.world.bodies import (
    REAL_SIZE,
    Painter,
    body_params,
    draw_animal,
    draw_object,
    draw_person,
    extent,
    ground_offset,
)
from clipindex.demo.world.knobs import WorldKnobs
from clipindex.demo.world.plan import COLOURS, ImagePlan, image_rng
from clipindex.demo.world.scenes import draw_background, draw_clutter

__all__ = ["render_image", "noise_bank"]

# Horizontal reach of a body around its origin, in local units (left, right when facing
# right): used to keep bodies inside the frame.
_REACH = {
    "quad": (-0.68, 0.95),
    "standing": (-0.75, 0.82),
    "walking": (-0.75, 0.82),
    "sitting": (-0.45, 0.5),
    "lying": (-0.75, 0.8),
}


@dataclass
class _Item:
    category: str
    foot: float
    paint: Callable[[ImageDraw.ImageDraw, ImageDraw.ImageDraw], None]
    layer: int = 1  #: 0 scenery behind the animals, 1 standing bodies, 2 riders


_NOISE_MEAN = 64  # offset that keeps the uint8 noise bank positive (removed when adding)


def noise_bank(seed: int, knobs: WorldKnobs) -> Image.Image:
    """A seeded block of Gaussian noise (std ``pixel_noise``) as a uint8 image centred on
    ``_NOISE_MEAN``; images crop from it, which keeps per-pixel noise fast."""
    side = int(knobs.long_side[1]) + 16
    z = np.random.default_rng([seed, 7]).standard_normal((side, side, 3), dtype=np.float32)
    return Image.fromarray(np.clip(z * knobs.pixel_noise + _NOISE_MEAN, 0, 255).astype(np.uint8))


def _fit(s: float, ew: float, eh: float, w: int, h: int, min_px: float = 6.0) -> float:
    """Clamp scale ``s`` so an extent (ew, eh) fits the frame and stays visible."""
    s = min(s, 0.96 * w / ew, 0.94 * h / eh)
    return max(s, min_px / min(ew, eh))


def _place(
    rng: np.random.Generator,
    w: int,
    h: int,
    horizon: int,
    bw: float,
    bh: float,
    near: float | None = None,
) -> tuple[float, float]:
    """Pick the bbox left x and the foot y of a body of bw x bh pixels."""
    lo = max(horizon + 0.03 * (h - horizon), bh + 2)
    # photographers centre their subjects: positions lean toward the middle (beta(2, 2))
    foot = h - 2 if lo > h - 2 else lo + (h - 2 - lo) * rng.beta(2, 2)
    if near is not None:
        foot = float(np.clip(near + rng.uniform(-0.05, 0.05) * h, min(lo, h - 2), h - 2))
    x0 = 2 + max(0.0, w - bw - 4) * rng.beta(2, 2)
    return x0, foot


def _animal_items(
    plan: ImagePlan, knobs: WorldKnobs, rng: np.random.Generator, bg: np.ndarray, horizon: int
) -> tuple[list[_Item], float, list[tuple[float, float, float, float]]]:
    """Items for the plan's animals; returns them, pixels per metre and their boxes."""
    w, h = plan.width, plan.height
    camo = "camouflage" in plan.causes
    items: list[_Item] = []
    boxes: list[tuple[float, float, float, float]] = []
    ppm = first_scale = 0.0
    n = len(plan.animals)
    for i, a in enumerate(plan.animals):
        q = body_params(a.cls, a.drift, knobs.shape_jitter, rng)
        ew, eh = extent(a.cls, a.pose)
        if i == 0:
            share = plan.area / (n if plan.kind == "single" else 1)
            s = np.sqrt(share * w * h / (ew * eh))
        elif plan.kind == "single":
            s = first_scale * rng.uniform(0.75, 1.1)
        else:
            s = ppm * REAL_SIZE[a.cls] * rng.uniform(0.85, 1.15)
        s = _fit(float(s), ew, eh, w, h)
        if i == 0:
            first_scale = s
            ppm = s / REAL_SIZE[a.cls]
        near = boxes[0][3] if boxes and plan.kind == "multi" else None
        x0, foot = _place(rng, w, h, horizon, ew * s, eh * s, near)
        if near is not None:  # the second animal of a pair stands beside the first
            fx, _, fw, _ = boxes[0]
            x0 = fx + fw + rng.uniform(0, 0.05) * w if fx + fw / 2 < w / 2 else fx - ew * s
            x0 = float(np.clip(x0 - rng.uniform(0, 0.05) * w, 2, max(2, w - ew * s - 2)))
        boxes.append((x0, foot - eh * s, ew * s, foot))
        mirror = 1.0 if rng.random() < 0.5 else -1.0
        reach = _REACH["quad" if "neck_len" in q else a.pose]
        ox = x0 - reach[0] * s if mirror > 0 else x0 + reach[1] * s
        oy = foot - ground_offset(q, a.pose) * s
        box = (x0, foot, ew * s, eh * s)
        colour, spots, outline = _animal_colour(a, camo, knobs, rng, bg, box)
        paint = _animal_painter(a.cls, a.pose, q, s, (ox, oy, mirror), (colour, spots, outline),
                                int(rng.integers(2**31)))
        items.append(_Item(a.cls, foot, paint))
        if i == 0 and plan.person_action == "riding":
            items.append(_rider(rng, q, ox, oy, s, mirror, ppm, foot))
    return items, ppm, boxes


def _animal_colour(
    a: Any, camo: bool, knobs: WorldKnobs, rng: np.random.Generator, bg: np.ndarray,
    box: tuple[float, float, float, float],
) -> tuple[np.ndarray, np.ndarray | None, tuple[int, ...] | None]:
    """(fill colour, spot colour, outline) of one animal; camouflage takes the colour of
    the background under its box ``(x0, foot, width, height)`` and drops spots/outline."""
    x0, foot, bw, bh = box
    if camo:
        y0, y1 = int(max(0, foot - bh)), int(max(foot, foot - bh + 1))
        region = bg[y0:y1, int(x0) : int(x0 + bw) + 1]
        base = region.reshape(-1, 3).mean(0) if region.size else bg.reshape(-1, 3).mean(0)
        colour = np.clip(base + rng.normal(0, knobs.camouflage_noise, 3), 0, 255)
        spots, outline = None, None
    else:
        colour = np.clip(
            np.array(COLOURS[a.colour]) + rng.normal(0, knobs.colour_jitter, 3), 0, 255
        )
        spots = None if a.spots is None else np.array(COLOURS[a.spots], np.float32)
        outline = tuple(int(v) for v in colour * 0.55)
    return colour.astype(np.float32), spots, outline


def _animal_painter(
    cls: str, pose: str, q: dict, s: float, origin: tuple[float, float, float],
    colours: tuple[np.ndarray, np.ndarray | None, tuple[int, ...] | None], seed: int,
) -> Any:
    """The deferred drawing of one animal (painted in depth order later)."""
    ox, oy, mirror = origin
    colour, spots, outline = colours

    def paint(d: Any, m: Any) -> None:
        pt = Painter(d, m, ox, oy, s, mirror, outline)  # type: ignore[arg-type]
        draw_animal(pt, cls, q, colour, spots, pose, np.random.default_rng(seed), s >= 40)

    return paint


def _rider(
    rng: np.random.Generator,
    q: dict,
    ox: float,
    oy: float,
    s: float,
    mirror: float,
    ppm: float,
    foot: float,
) -> _Item:
    seat_x, seat_y = ox + mirror * s * (-0.02), oy - s * q["body_h"] * 0.45
    ps = ppm * REAL_SIZE["person"] * 0.95
    sub_seed = int(rng.integers(2**31))

    def paint(d, m) -> None:
        draw_person(
            Painter(d, m, seat_x, seat_y, ps, mirror), np.random.default_rng(sub_seed), True
        )

    return _Item("person", foot, paint, layer=2)


def _other_items(
    plan: ImagePlan,
    rng: np.random.Generator,
    horizon: int,
    ppm: float,
    boxes: list[tuple[float, float, float, float]],
) -> list[_Item]:
    """Items for the person standing beside the animal and for distractor objects."""
    w, h = plan.width, plan.height
    items: list[_Item] = []
    if plan.person_action == "beside":
        ew, eh = extent("person")
        s = _fit(ppm * REAL_SIZE["person"] * rng.uniform(0.9, 1.1), ew, eh, w, h)
        ax, _, aw, afoot = boxes[0]
        x0 = ax - ew * s - 0.02 * w if rng.random() < 0.5 and ax > ew * s else ax + aw + 0.02 * w
        x0 = float(np.clip(x0, 2, max(2, w - ew * s - 2)))
        foot = float(np.clip(afoot + rng.uniform(-0.04, 0.06) * h, eh * s + 2, h - 2))
        sub_seed = int(rng.integers(2**31))
        mirror = 1.0 if rng.random() < 0.5 else -1.0

        def paint_person(d, m, *, _x=x0 + ew * s / 2, _f=foot, _s=s) -> None:
            draw_person(Painter(d, m, _x, _f, _s, mirror), np.random.default_rng(sub_seed), False)

        items.append(_Item("person", foot, paint_person))
    for j, name in enumerate(plan.objects):
        ew, eh = extent(name)
        if ppm > 0:
            # scenery behind an animal never fills the frame
            s = min(ppm * REAL_SIZE[name] * rng.uniform(0.7, 1.3), 0.6 * w / ew, 0.6 * h / eh)
        else:
            s = np.sqrt(plan.area * w * h / (ew * eh)) * (1.0 if j == 0 else rng.uniform(0.4, 0.9))
        s = _fit(float(s), ew, eh, w, h, min_px=10.0)
        x0, foot = _place(rng, w, h, horizon, ew * s, eh * s)
        if ppm > 0 and boxes:  # scene objects stand a little behind the animals
            foot = float(
                np.clip(min(foot, boxes[0][3] - rng.uniform(0, 0.1) * h), eh * s + 2, h - 2)
            )
        sub_seed = int(rng.integers(2**31))

        def paint_obj(d, m, *, _n=name, _x=x0 + ew * s / 2, _f=foot, _s=s, _seed=sub_seed) -> None:
            mirror = 1.0 if _seed % 2 else -1.0
            draw_object(
                Painter(d, m, _x, _f, _s, mirror, (40, 40, 40)), _n, np.random.default_rng(_seed)
            )

        items.append(_Item(name, foot, paint_obj, layer=0 if ppm > 0 else 1))
    return items


def _finish(
    img: Image.Image, rng: np.random.Generator, knobs: WorldKnobs, bank: Image.Image
) -> bytes:
    """Lighting, sensor noise, optional blur, then a fixed-settings JPEG encode."""
    w, h = img.size
    gain = rng.uniform(0.85, 1.15)
    cast = rng.normal(0, 4, 3) + rng.uniform(-12, 12)
    lut = np.clip(np.arange(256)[None, :] * gain + cast[:, None], 0, 255).astype(np.uint8)
    ox, oy = int(rng.integers(0, bank.size[0] - w + 1)), int(rng.integers(0, bank.size[1] - h + 1))
    out = ImageChops.add(
        img.point(lut.ravel().tolist()), bank.crop((ox, oy, ox + w, oy + h)), 1.0, -_NOISE_MEAN
    )
    radius = rng.uniform(0, knobs.blur_max)
    if radius > 0.5:  # only the blurrier part: box blur is cheap and looks like soft focus
        out = out.filter(ImageFilter.BoxBlur(radius))
    buf = io.BytesIO()
    out.save(
        buf,
        format="JPEG",
        quality=knobs.jpeg_quality,
        subsampling=2,
        optimize=False,
        progressive=False,
    )
    return buf.getvalue()


def render_image(
    plan: ImagePlan, seed: int, knobs: WorldKnobs, bank: Image.Image
) -> tuple[bytes, list[dict]]:
    """Draw ``plan``; return the JPEG bytes and its annotations (category, bbox, area).

    Examples
    --------
    >>> from clipindex.demo.world.knobs import SCALES
    >>> from clipindex.demo.world.plan import plan_split
    >>> k = WorldKnobs()
    >>> plan = plan_split(0, "val", SCALES["small"], k)[0]
    >>> jpeg, anns = render_image(plan, 0, k, noise_bank(0, k))
    >>> jpeg[:2] == b"\\xff\\xd8" and all(a["area"] > 0 for a in anns)
    True
    """
    rng = image_rng(seed, plan.split, plan.index, 1)
    img, horizon = draw_background(rng, plan.context, plan.width, plan.height)
    lo, hi = knobs.clutter
    draw_clutter(rng, img, plan.context, horizon, int(rng.integers(lo, hi + 1)))
    # the background colours are only needed to camouflage a subject
    bg = np.asarray(img, dtype=np.float32) if "camouflage" in plan.causes else np.zeros((1, 1, 3))
    animals, ppm, boxes = _animal_items(plan, knobs, rng, bg, horizon)
    items = animals + _other_items(plan, rng, horizon, ppm, boxes)
    order = sorted(range(len(items)), key=lambda i: (items[i].layer, items[i].foot, i))
    mask = Image.new("L", img.size, 0)
    draw, mdraw = ImageDraw.Draw(img), ImageDraw.Draw(mask)
    anns: list[dict] = []
    for i in order:
        items[i].paint(draw, mdraw)
        box = mask.getbbox()
        if box is None:  # entirely outside the frame: nothing to annotate
            continue
        area = int(np.count_nonzero(np.asarray(mask.crop(box))))
        mask.paste(0, box)
        x0, y0, x1, y1 = box
        anns.append(
            {"category": items[i].category, "bbox": [x0, y0, x1 - x0, y1 - y0], "area": area}
        )
    return _finish(img, rng, knobs, bank), anns
