"""Procedural bodies: the quadruped plan (cow, horse, sheep), the small-pet plan (cat,
dog), a person and the distractor objects.

Every body is drawn in local units through a :class:`Painter`, which maps them to
pixels (scale, offset, mirror) and paints the silhouette on a mask as well, so the
bounding box and area of each object come from its own pixels. Classes of one plan
share the drawing code and differ only in parameters; a look-alike rendering blends
the parameters toward the other class (``drift``; the parameters themselves are
:mod:`clipindex.demo.world.species`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from PIL import ImageDraw

from clipindex.demo.world.species import REAL_SIZE, body_params, extent

__all__ = ["REAL_SIZE", "Painter", "body_params", "draw_animal", "draw_person", "draw_object",
           "extent"]

RGB = tuple[int, int, int]

def _rgb(values: np.ndarray | tuple[float, ...] | list[float]) -> RGB:
    r, g, b = (int(v) for v in values)
    return (r, g, b)


def _shade(c: np.ndarray, f: float) -> RGB:
    return _rgb(np.clip(c * f, 0, 255))


@dataclass
class Painter:
    """Draw in local units: x forward, y down; pixels = origin + scale * (mirror*x, y)."""

    draw: ImageDraw.ImageDraw
    mask: ImageDraw.ImageDraw
    ox: float
    oy: float
    s: float
    mirror: float = 1.0
    outline: RGB | None = None

    def pts(self, xy: list[tuple[float, float]]) -> list[tuple[float, float]]:
        return [(self.ox + self.mirror * self.s * x, self.oy + self.s * y) for x, y in xy]

    def poly(self, xy: list[tuple[float, float]], fill: RGB, silhouette: bool = True) -> None:
        p = self.pts(xy)
        if len(p) < 3:
            return
        width = max(1, int(self.s / 120))
        self.draw.polygon(p, fill=fill, outline=self.outline if silhouette else None, width=width)
        if silhouette:
            self.mask.polygon(p, fill=255)

    def ellipse(
        self,
        cx: float,
        cy: float,
        rx: float,
        ry: float,
        fill: RGB,
        ang: float = 0.0,
        p: float = 2.0,
        silhouette: bool = True,
        n: int = 24,
    ) -> None:
        t = np.linspace(0, 2 * np.pi, n, endpoint=False)
        c, s = np.cos(t), np.sin(t)
        x = rx * np.sign(c) * np.abs(c) ** (2 / p)
        y = ry * np.sign(s) * np.abs(s) ** (2 / p)
        a = math.radians(ang)
        xr = cx + x * math.cos(a) + y * math.sin(a)
        yr = cy - x * math.sin(a) + y * math.cos(a)
        self.poly(list(zip(xr.tolist(), yr.tolist(), strict=True)), fill, silhouette)

    def limb(
        self, pts: list[tuple[float, float]], w: float, fill: RGB, silhouette: bool = True
    ) -> None:
        """A thick polyline with round joints (legs, tails, necks)."""
        p = self.pts(pts)
        width = max(1, int(round(w * self.s)))
        self.draw.line(p, fill=fill, width=width, joint="curve")
        r = width / 2
        for x, y in (p[0], p[-1]):
            self.draw.ellipse([x - r, y - r, x + r, y + r], fill=fill)
        if silhouette:
            self.mask.line(p, fill=255, width=width, joint="curve")

    def dot(self, x: float, y: float, r: float, fill: RGB) -> None:
        ((px, py),) = self.pts([(x, y)])
        rr = max(0.6, r * self.s)
        self.draw.ellipse([px - rr, py - rr, px + rr, py + rr], fill=fill)


def _dir(ang: float) -> tuple[float, float]:
    a = math.radians(ang)
    return math.cos(a), -math.sin(a)


def _quad_tail(pt: Painter, q: dict, bh: float, c: np.ndarray) -> None:
    x0, y0 = -0.48, -bh * 0.3
    L = q["tail_len"]
    path = [(x0, y0), (x0 - 0.1 * L / 0.5, y0 + 0.15 * L), (x0 - 0.13 * L / 0.5, y0 + 0.95 * L)]
    pt.limb(path, q["tail_w"], _shade(c, 0.8))
    if q["tail_tuft"]:
        pt.ellipse(path[-1][0], path[-1][1], 0.035, 0.06, _shade(c, 0.45))


def _quad_head(pt: Painter, q: dict, c: np.ndarray, pose: str, detail: bool) -> None:
    bh = q["body_h"]
    base = (0.4, -bh * 0.18)
    neck_ang = -55.0 if pose == "grazing" else q["neck_ang"]
    dx, dy = _dir(neck_ang)
    end = (base[0] + q["neck_len"] * dx, base[1] + q["neck_len"] * dy)
    pt.limb([base, end], q["neck_w"], _rgb(c))
    if q["mane"]:
        off = q["neck_w"] * 0.45
        pt.limb(
            [(base[0] - off * 0.6, base[1] - off), (end[0] - off * 0.5, end[1] - off * 0.4)],
            0.05,
            _shade(c, 0.45),
        )
    head_ang = -100.0 if pose == "grazing" else q["head_ang"]
    hx, hy = _dir(head_ang)
    L, H = q["head_len"], q["head_h"]
    face = np.array([40, 38, 40], np.float32) if q["face_dark"] else c
    pt.ellipse(
        end[0] + hx * L * 0.45, end[1] + hy * L * 0.45, L / 2, H / 2, _shade(face, 1.0), head_ang
    )
    mx, my = end[0] + hx * L * 0.85, end[1] + hy * L * 0.85
    muzzle = np.array([214, 160, 150], np.float32) if q["udder"] else face * 0.75
    pt.ellipse(mx, my, H * 0.42, H * 0.4, _shade(muzzle, 1.0), head_ang, silhouette=False)
    ex, ey = _dir(q["ear_ang"])
    pt.ellipse(
        end[0] + ex * q["ear_len"] * 0.5,
        end[1] - H * 0.3 + ey * q["ear_len"] * 0.5,
        q["ear_len"] / 2,
        q["ear_len"] / 5,
        _shade(face, 0.85),
        q["ear_ang"],
    )
    if q["horns"]:
        horn = (226, 216, 186)
        hb = (end[0] + hx * L * 0.1, end[1] - H * 0.45)
        pt.limb([hb, (hb[0] + 0.02, hb[1] - 0.06), (hb[0] + 0.06, hb[1] - 0.09)], 0.025, horn)
    if detail:
        pt.dot(
            end[0] + hx * L * 0.35 + 0.01, end[1] + hy * L * 0.35 - H * 0.15, H * 0.09, (20, 18, 18)
        )


def _quad(
    pt: Painter,
    q: dict,
    c: np.ndarray,
    spots: np.ndarray | None,
    pose: str,
    rng: np.random.Generator,
    detail: bool,
) -> None:
    bh, lw = q["body_h"], q["leg_w"]
    ground = bh / 2 + q["leg_len"]
    lying = pose == "lying"
    swing = 0.07 if pose == "walking" else 0.0
    if not lying:
        for x, sw in ((-0.3, swing), (0.36, -swing)):
            pt.limb([(x + 0.04, bh * 0.2), (x + 0.04 + sw, ground)], lw, _shade(c, 0.78))
    _quad_tail(pt, q, bh, c)
    pt.ellipse(0, 0, 0.5, bh / 2, _shade(c, 1.0), p=q["body_p"])
    if q["wool"]:
        for a in np.linspace(0, 2 * np.pi, 18, endpoint=False):
            pt.ellipse(0.47 * math.cos(a), bh / 2 * 0.95 * math.sin(a), 0.08, 0.07, _shade(c, 1.0))
        if detail:
            for _ in range(14):
                x, y = rng.uniform(-0.38, 0.38), rng.uniform(-bh * 0.35, bh * 0.35)
                pt.ellipse(x, y, 0.04, 0.03, _shade(c, 0.88), silhouette=False, n=10)
    if spots is not None:
        for _ in range(int(rng.integers(3, 7))):
            x, y = rng.uniform(-0.25, 0.25), rng.uniform(-bh * 0.22, bh * 0.22)
            pt.ellipse(
                x,
                y,
                rng.uniform(0.05, 0.15),
                bh * rng.uniform(0.08, 0.17),
                _shade(spots, 1.0),
                ang=rng.uniform(0, 180),
                silhouette=False,
                n=12,
            )
    if q["udder"] and not lying:
        pt.ellipse(-0.16, bh * 0.5, 0.07, 0.05, (222, 168, 166), silhouette=False)
    if not lying:
        for x, sw in ((-0.32, -swing), (0.34, swing)):
            pt.limb([(x, bh * 0.2), (x + sw, ground)], lw, _shade(c, 1.0))
            pt.limb([(x + sw, ground - lw * 0.6), (x + sw, ground)], lw * 1.1, (40, 34, 30))
    _quad_head(pt, q, c, pose, detail)


def _pet_head(pt: Painter, q: dict, c: np.ndarray, hx: float, hy: float, detail: bool) -> None:
    r = q["head_r"]
    far = _shade(c, 0.8)
    for k, ang in ((0, 115.0), (1, 70.0)):  # far ear then near ear
        bx, by = hx + r * math.cos(math.radians(ang)), hy - r * math.sin(math.radians(ang))
        tilt = ang + 15 - q["ear_floppy"] * 150
        tx, ty = _dir(tilt)
        nx, ny = -ty, tx
        w, L = q["ear_w"] / 2, q["ear_len"]
        bulge = 0.3 + 0.5 * q["ear_floppy"]
        pts = [
            (bx - nx * w, by - ny * w),
            (bx + tx * L * 0.6 - nx * w * bulge, by + ty * L * 0.6 - ny * w * bulge),
            (bx + tx * L, by + ty * L),
            (bx + tx * L * 0.6 + nx * w * bulge, by + ty * L * 0.6 + ny * w * bulge),
            (bx + nx * w, by + ny * w),
        ]
        pt.poly(pts, far if k == 0 else _shade(c, 0.9))
    pt.ellipse(hx, hy, r, r * 0.92, _shade(c, 1.0))
    sl = q["snout"]
    sx = hx + r * 0.75 + sl * 0.5
    pt.ellipse(sx, hy + r * 0.3, max(0.05, sl * 0.55 + 0.03), r * 0.38, _shade(c, 0.95))
    nose = (sx + max(0.05, sl * 0.55 + 0.03) * 0.85, hy + r * 0.22)
    pt.dot(nose[0], nose[1], 0.028, (28, 24, 26))
    if q["tongue"]:
        pt.ellipse(sx, hy + r * 0.65, 0.035, 0.05, (216, 96, 110), silhouette=False)
    if detail:
        eye = (150, 190, 60) if q["whiskers"] else (30, 24, 20)
        pt.dot(hx + r * 0.45, hy - r * 0.2, r * 0.16, eye)
        pt.dot(hx + r * 0.47, hy - r * 0.2, r * 0.06, (10, 10, 10))
        if q["whiskers"]:
            for dy in (-0.02, 0.01, 0.04):
                pt.limb([nose, (nose[0] + 0.16, nose[1] + dy * 2)], 0.006, (236, 236, 230), False)


def _pet_tail(pt: Painter, q: dict, x0: float, y0: float, c: np.ndarray) -> None:
    pts, ang = [(x0, y0)], q["tail_ang"]
    step = q["tail_len"] / 6
    for i in range(6):
        dx, dy = _dir(ang)
        pts.append((pts[-1][0] + step * dx, pts[-1][1] + step * dy))
        ang -= q["tail_curl"] / 6 * (1 if q["tail_ang"] > 180 else -1) * (i + 1) / 3
    pt.limb(pts, q["tail_w"], _shade(c, 0.92))


def _pet(
    pt: Painter,
    q: dict,
    c: np.ndarray,
    spots: np.ndarray | None,
    pose: str,
    rng: np.random.Generator,
    detail: bool,
) -> None:
    bh, lw, ll = q["body_h"], q["leg_w"], q["leg_len"]
    if pose == "sitting":
        ground = 0.42
        _pet_tail(pt, q, -0.2, ground - 0.05, c)
        pt.ellipse(-0.02, 0.02, bh * 0.62, 0.4, _shade(c, 1.0), ang=-60, p=q["body_p"])
        pt.ellipse(-0.14, ground - 0.17, 0.24, 0.17, _shade(c, 0.95))
        for x in (0.14, 0.2):
            pt.limb([(x, -0.05), (x + 0.02, ground)], lw, _shade(c, 1.0 if x > 0.15 else 0.8))
        hx, hy = 0.16, -0.4
    elif pose == "lying":
        ground = bh * 0.5
        _pet_tail(pt, q, -0.48, 0.05, c)
        pt.ellipse(0, bh * 0.1, 0.5, bh * 0.42, _shade(c, 1.0), p=q["body_p"])
        pt.limb([(0.3, ground - lw / 2), (0.62, ground - lw / 2)], lw, _shade(c, 1.0))
        hx, hy = 0.5, -bh * 0.35
    else:
        ground = bh / 2 + ll
        swing = 0.08 if pose == "walking" else 0.0
        for x, sw in ((-0.3, swing), (0.33, -swing)):
            pt.limb([(x + 0.04, 0), (x + 0.04 + sw, ground)], lw, _shade(c, 0.78))
        _pet_tail(pt, q, -0.47, -bh * 0.25, c)
        pt.ellipse(0, 0, 0.5, bh / 2, _shade(c, 1.0), p=q["body_p"])
        for x, sw in ((-0.33, -swing), (0.31, swing)):
            pt.limb([(x, 0), (x + sw, ground)], lw, _shade(c, 1.0))
        pt.limb([(0.34, -bh * 0.1), (0.5, -bh * 0.55)], q["head_r"] * 1.1, _shade(c, 1.0))
        hx, hy = 0.52, -bh * 0.6
    if spots is not None:
        for _ in range(int(rng.integers(2, 5))):
            pt.ellipse(
                rng.uniform(-0.25, 0.2),
                rng.uniform(-bh * 0.15, bh * 0.15),
                rng.uniform(0.05, 0.12),
                bh * rng.uniform(0.1, 0.2),
                _shade(spots, 1.0),
                silhouette=False,
                n=12,
            )
    if q["stripes"] and detail and pose != "sitting":
        for x in np.linspace(-0.35, 0.25, 5):
            pt.limb([(x, -bh * 0.42), (x + 0.04, bh * 0.1)], 0.025, _shade(c, 0.6), False)
    _pet_head(pt, q, c, hx, hy, detail)


def draw_animal(
    pt: Painter,
    cls: str,
    q: dict,
    colour: np.ndarray,
    spots: np.ndarray | None,
    pose: str,
    rng: np.random.Generator,
    detail: bool,
) -> None:
    """Draw a target animal with parameters ``q`` from :func:`body_params`."""
    (_quad if "neck_len" in q else _pet)(pt, q, colour, spots, pose, rng, detail)


def ground_offset(q: dict, pose: str) -> float:
    """Local y of the feet below the body centre (objects stand on the ground)."""
    if "neck_len" in q:
        return q["body_h"] * 0.5 if pose == "lying" else q["body_h"] / 2 + q["leg_len"]
    if pose == "sitting":
        return 0.42
    return q["body_h"] * 0.5 if pose == "lying" else q["body_h"] / 2 + q["leg_len"]


def draw_person(pt: Painter, rng: np.random.Generator, riding: bool) -> None:
    """A person 1 unit tall, feet at the origin (or seated at the origin when riding)."""
    skin = [(236, 200, 170), (198, 150, 110), (140, 96, 66), (92, 62, 44)][int(rng.integers(4))]
    shirt = _rgb(rng.integers(20, 236, 3))
    trousers = _rgb(rng.integers(20, 140, 3))
    hip = 0.0 if riding else -0.48
    if riding:
        pt.limb([(0, 0), (0.12, 0.12), (0.08, 0.36)], 0.075, trousers)
    else:
        for dx in (-0.045, 0.045):
            pt.limb([(dx, hip), (dx * 1.3, -0.03)], 0.075, trousers)
            pt.limb([(dx * 1.3, -0.02), (dx * 1.3 + 0.05, -0.01)], 0.05, (40, 34, 30))
    top = hip - 0.34
    pt.poly([(-0.1, top), (0.1, top), (0.085, hip), (-0.085, hip)], shirt)
    for dx in (-0.11, 0.11):
        pt.limb([(dx, top + 0.02), (dx * 1.4 + 0.05, top + 0.3)], 0.055, shirt)
    pt.limb([(0, top), (0, top - 0.04)], 0.05, skin)
    pt.ellipse(0, top - 0.1, 0.065, 0.075, skin)
    hair = [(30, 24, 20), (90, 60, 30), (200, 170, 100), (120, 120, 118)][int(rng.integers(4))]
    pt.ellipse(-0.01, top - 0.15, 0.068, 0.035, hair)


def draw_object(pt: Painter, name: str, rng: np.random.Generator) -> None:
    """A distractor object, 1 unit wide, standing on the origin."""
    if name == "car":
        body = _rgb(rng.integers(20, 236, 3))
        pt.poly(
            [
                (-0.5, -0.1),
                (0.5, -0.1),
                (0.5, -0.3),
                (0.34, -0.33),
                (0.2, -0.52),
                (-0.22, -0.52),
                (-0.34, -0.33),
                (-0.5, -0.3),
            ],
            body,
        )
        pt.poly(
            [(-0.19, -0.34), (0.17, -0.34), (0.12, -0.49), (-0.16, -0.49)], (150, 180, 200), False
        )
        for x in (-0.3, 0.3):
            pt.ellipse(x, -0.1, 0.1, 0.1, (24, 24, 26))
            pt.ellipse(x, -0.1, 0.045, 0.045, (170, 170, 170), silhouette=False)
    elif name == "bench":
        wood = _rgb(np.clip(np.array([140, 96, 56]) + rng.normal(0, 20, 3), 0, 255))
        for x in (-0.42, 0.42):
            pt.limb([(x, 0), (x, -0.6)], 0.04, (50, 50, 54))
        pt.poly([(-0.5, -0.3), (0.5, -0.3), (0.5, -0.36), (-0.5, -0.36)], wood)
        for y in (-0.46, -0.56):
            pt.poly([(-0.5, y), (0.5, y), (0.5, y - 0.05), (-0.5, y - 0.05)], wood)
    elif name == "chair":
        col = _rgb(rng.integers(30, 220, 3))
        for x in (-0.4, 0.4):
            pt.limb([(x, 0), (x, -0.95)], 0.08, col)
        pt.poly([(-0.5, -0.9), (0.5, -0.9), (0.5, -1.0), (-0.5, -1.0)], col)
        pt.limb([(-0.4, -1.0), (-0.4, -1.95)], 0.1, col)
        pt.poly([(-0.45, -1.9), (0.1, -1.9), (0.1, -1.6), (-0.45, -1.6)], col)
    else:  # potted plant
        pt.poly([(-0.3, 0), (0.3, 0), (0.38, -0.6), (-0.38, -0.6)], (176, 96, 60))
        leaf = _rgb(np.clip(np.array([60, 120, 50]) + rng.normal(0, 15, 3), 0, 255))
        for a in np.linspace(-70, 70, 7):
            dx, dy = math.sin(math.radians(a)), -math.cos(math.radians(a))
            pt.ellipse(dx * 0.35, -0.65 + dy * 0.45, 0.4, 0.1, leaf, ang=90 - a)
