"""Body parameters of the demo world's animals: the class prototypes, their real sizes
and bounding extents, and the look-alike blend that :mod:`clipindex.demo.world.bodies` draws.
"""

from __future__ import annotations

import numpy as np

from clipindex.demo.world.knobs import LOOKALIKE

__all__ = ["REAL_SIZE", "body_params", "extent"]

# Prototype parameters in units of body length (angles in degrees, features are
# probabilities). Cow / horse / sheep share the quadruped plan, cat / dog the pet plan.
_QUAD: dict[str, dict[str, float]] = {
    "cow": dict(
        body_h=0.50,
        body_p=3.2,
        leg_len=0.42,
        leg_w=0.085,
        neck_len=0.22,
        neck_w=0.22,
        neck_ang=15,
        head_len=0.30,
        head_h=0.19,
        head_ang=-40,
        ear_len=0.10,
        ear_ang=5,
        horns=0.7,
        mane=0.0,
        wool=0.0,
        tail_len=0.45,
        tail_w=0.025,
        tail_tuft=1.0,
        udder=0.6,
        face_dark=0.0,
    ),
    "horse": dict(
        body_h=0.40,
        body_p=2.3,
        leg_len=0.68,
        leg_w=0.06,
        neck_len=0.48,
        neck_w=0.17,
        neck_ang=55,
        head_len=0.40,
        head_h=0.15,
        head_ang=-62,
        ear_len=0.09,
        ear_ang=85,
        horns=0.0,
        mane=1.0,
        wool=0.0,
        tail_len=0.55,
        tail_w=0.09,
        tail_tuft=0.0,
        udder=0.0,
        face_dark=0.0,
    ),
    "sheep": dict(
        body_h=0.58,
        body_p=2.0,
        leg_len=0.30,
        leg_w=0.055,
        neck_len=0.10,
        neck_w=0.20,
        neck_ang=20,
        head_len=0.24,
        head_h=0.17,
        head_ang=-35,
        ear_len=0.11,
        ear_ang=-25,
        horns=0.05,
        mane=0.0,
        wool=1.0,
        tail_len=0.12,
        tail_w=0.06,
        tail_tuft=0.0,
        udder=0.0,
        face_dark=0.35,
    ),
}
_PET: dict[str, dict[str, float]] = {
    "cat": dict(
        body_h=0.36,
        body_p=2.1,
        leg_len=0.36,
        leg_w=0.07,
        head_r=0.22,
        snout=0.04,
        ear_len=0.17,
        ear_floppy=0.0,
        ear_w=0.12,
        tail_len=0.8,
        tail_w=0.045,
        tail_ang=200,
        tail_curl=110,
        whiskers=1.0,
        tongue=0.0,
        stripes=0.35,
    ),
    "dog": dict(
        body_h=0.42,
        body_p=2.4,
        leg_len=0.46,
        leg_w=0.085,
        head_r=0.21,
        snout=0.24,
        ear_len=0.17,
        ear_floppy=0.75,
        ear_w=0.13,
        tail_len=0.38,
        tail_w=0.065,
        tail_ang=145,
        tail_curl=15,
        whiskers=0.0,
        tongue=0.35,
        stripes=0.03,
    ),
}
_FEATURES = {
    "horns",
    "mane",
    "wool",
    "tail_tuft",
    "udder",
    "face_dark",
    "whiskers",
    "tongue",
    "stripes",
}
_ANGLES = {"neck_ang", "head_ang", "ear_ang", "tail_ang", "tail_curl", "ear_floppy"}
#: Real sizes in metres (body length, person height, object width) for relative scale.
REAL_SIZE = {
    "cat": 0.45,
    "dog": 0.75,
    "sheep": 1.1,
    "cow": 2.0,
    "horse": 2.0,
    "person": 1.7,
    "car": 4.2,
    "bench": 1.6,
    "chair": 0.5,
    "potted plant": 0.45,
}


def extent(name: str, pose: str = "standing") -> tuple[float, float]:
    """Approximate (width, height) of a body's bounding box in local units."""
    if name in _QUAD:
        return (1.6, 0.75 if pose == "lying" else 1.2)
    if name in _PET:
        return {"sitting": (0.95, 1.3), "lying": (1.5, 0.8)}.get(pose, (1.55, 1.1))
    return {
        "person": (0.3, 1.0),
        "car": (1.0, 0.55),
        "bench": (1.0, 0.6),
        "chair": (1.0, 2.0),
        "potted plant": (1.2, 2.0),
    }[name]


def body_params(cls: str, drift: float, jitter: float, rng: np.random.Generator) -> dict:
    """Blend the class prototype toward its look-alike by ``drift`` and jitter it.

    Continuous parameters interpolate; features (horns, wool, ...) are present with the
    blended probability.
    """
    table = _QUAD if cls in _QUAD else _PET
    other = LOOKALIKE[cls]
    own, oth = table[cls], table.get(other, table[cls])
    out: dict = {}
    for key, v in own.items():
        v = (1 - drift) * v + drift * oth[key]
        if key in _FEATURES:
            out[key] = bool(rng.random() < v)
        elif key == "ear_floppy":
            out[key] = float(np.clip(v + rng.normal(0, 0.2), 0, 1))
        elif key in _ANGLES:
            out[key] = float(v + rng.normal(0, 12 * jitter / 0.12))
        else:
            out[key] = float(v * max(0.4, 1 + rng.normal(0, jitter)))
    return out
