"""What every image of a split shows, decided before anything is drawn.

A plan fixes the semantic content of an image (kind, classes, colours, poses, context,
failure causes, annotated label); :mod:`.render` draws it and :mod:`.captions` describes
it. Every image gets its own random stream derived from ``(seed, split, index)`` so the
content of one image never depends on how the others were drawn.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np

from clipindex.demo.world.knobs import (
    CONTEXTS,
    DISTRACTORS,
    HOME_CONTEXTS,
    TARGET_CLASSES,
    Scale,
    WorldKnobs,
)

__all__ = ["AnimalSpec", "ImagePlan", "plan_split", "SPLITS", "COLOURS", "image_rng"]

SPLITS: tuple[str, ...] = ("train", "val")
#: First image id of each split (COCO ids are unique across splits).
_ID_BASE = {"train": 1, "val": 1_000_001}

#: Named colours (RGB) that animals are drawn in; the names appear in captions.
COLOURS: dict[str, tuple[int, int, int]] = {
    "black": (34, 32, 34),
    "white": (232, 230, 224),
    "grey": (128, 126, 124),
    "brown": (112, 72, 42),
    "orange": (214, 128, 52),
    "golden": (206, 162, 84),
    "cream": (226, 210, 172),
    "tan": (186, 146, 98),
    "chestnut": (146, 70, 36),
}

#: Coat colours per class. Each class has its own most likely colours (v5: a tiny ViT
#: learns colour long before body shape), but every class shares some with its look-alike.
_CLASS_COLOURS: dict[str, dict[str, float]] = {
    "cat": {"orange": 0.35, "grey": 0.3, "black": 0.15, "white": 0.1, "cream": 0.1},
    "dog": {"golden": 0.35, "brown": 0.3, "tan": 0.15, "black": 0.1, "cream": 0.1},
    "horse": {"chestnut": 0.4, "brown": 0.3, "black": 0.15, "grey": 0.1, "white": 0.05},
    "sheep": {"white": 0.55, "cream": 0.35, "grey": 0.1},
    "cow": {"black": 0.4, "brown": 0.25, "white": 0.15, "tan": 0.1, "cream": 0.1},
}
#: Probability of patches in a second colour (a "black and white cow").
_SPOT_RATE = {"cat": 0.15, "dog": 0.2, "horse": 0.08, "sheep": 0.0, "cow": 0.45}
_POSES = {
    "cat": {"standing": 0.35, "walking": 0.15, "sitting": 0.35, "lying": 0.15},
    "dog": {"standing": 0.35, "walking": 0.2, "sitting": 0.3, "lying": 0.15},
    "horse": {"standing": 0.5, "walking": 0.2, "grazing": 0.3},
    "sheep": {"standing": 0.4, "grazing": 0.4, "lying": 0.2},
    "cow": {"standing": 0.4, "grazing": 0.4, "lying": 0.2},
}
#: Which target class a person is most often seen with (riding horses, walking dogs).
_PERSON_CLASS = {"horse": 0.35, "dog": 0.3, "cat": 0.1, "sheep": 0.13, "cow": 0.12}
_PERSON_WORDS = ("man", "woman", "boy", "girl", "person")
#: Distractor objects that fit each context.
_SCENE_OBJECTS = {
    "field": ("bench", "car"),
    "road": ("car", "bench"),
    "indoor": ("chair", "potted plant"),
    "beach": ("bench", "car"),
    "snow": ("car", "bench"),
}


@dataclass(frozen=True)
class AnimalSpec:
    """One drawn target animal."""

    cls: str  #: the class actually drawn
    colour: str  #: named base colour (ignored in drawing when camouflaged)
    spots: str | None  #: named patch colour, or None
    pose: str
    drift: float  #: 0 = class prototype, 1 = its look-alike class


@dataclass(frozen=True)
class ImagePlan:
    """Everything an image shows; the renderer only adds geometry and noise."""

    image_id: int
    index: int
    split: str
    kind: str  #: "single" | "person" | "multi" | "distractor"
    width: int
    height: int
    context: str
    animals: tuple[AnimalSpec, ...]
    label: str | None  #: annotated class of every animal (differs when mislabeled)
    causes: tuple[str, ...]
    objects: tuple[str, ...]  #: distractor categories in the scene
    person: str | None  #: word for the person ("man", ...) or None
    person_action: str | None  #: "riding" | "beside"
    area: float  #: bbox area fraction of the (whole group of) subject(s)

    @property
    def file_name(self) -> str:
        return f"{self.image_id:012d}.jpg"

    @property
    def true_classes(self) -> tuple[str, ...]:
        return tuple(sorted({a.cls for a in self.animals}))


def image_rng(seed: int, split: str, index: int, stream: int) -> np.random.Generator:
    """The random stream ``stream`` (0 plan, 1 render, 2 captions) of one image."""
    return np.random.default_rng([seed, SPLITS.index(split), index, stream])


def _pick(rng: np.random.Generator, weights: dict[str, float]) -> str:
    names = list(weights)
    p = np.array([weights[n] for n in names], dtype=float)
    return names[int(rng.choice(len(names), p=p / p.sum()))]


def _kinds(rng: np.random.Generator, n_single: int, knobs: WorldKnobs) -> list[tuple[str, str]]:
    """The shuffled list of (kind, first class) for a split."""
    total = n_single * len(TARGET_CLASSES)
    items = [("single", c) for c in TARGET_CLASSES for _ in range(n_single)]
    n_person = int(round(knobs.person_rate * total))
    items += [("person", _pick(rng, _PERSON_CLASS)) for _ in range(n_person)]
    n_multi = int(round(knobs.multi_rate * total))
    items += [("multi", str(rng.choice(TARGET_CLASSES))) for _ in range(n_multi)]
    n_dis = int(round(knobs.distractor_rate * total))
    items += [("distractor", "") for _ in range(n_dis)]
    order = rng.permutation(len(items))
    return [items[i] for i in order]


def _size(rng: np.random.Generator, knobs: WorldKnobs) -> tuple[int, int]:
    aspects = (4 / 3, 3 / 4, 1.0, 16 / 9, 3 / 2, 2 / 3, 9 / 16)
    weights = np.array([0.35, 0.15, 0.1, 0.1, 0.15, 0.1, 0.05])
    aspect = aspects[int(rng.choice(len(aspects), p=weights / weights.sum()))]
    lo, hi = knobs.long_side
    long = hi if rng.random() < knobs.full_size_rate else int(rng.integers(lo, hi + 1))
    if aspect >= 1:
        return long, max(96, int(round(long / aspect)))
    return max(96, int(round(long * aspect))), long


def _animal(rng: np.random.Generator, cls: str, drift: float) -> AnimalSpec:
    colour = _pick(rng, _CLASS_COLOURS[cls])
    spots = None
    if rng.random() < _SPOT_RATE[cls]:
        spots = "white" if colour in ("black", "brown", "chestnut", "grey") else "black"
    return AnimalSpec(cls, colour, spots, _pick(rng, _POSES[cls]), float(drift))


def _context(rng: np.random.Generator, cls: str, home: bool) -> str:
    homes = HOME_CONTEXTS[cls]
    if home:
        return _pick(rng, homes)
    return str(rng.choice([c for c in CONTEXTS if c not in homes]))


def _single_causes(rng: np.random.Generator, knobs: WorldKnobs) -> list[str]:
    rates = (
        ("lookalike", knobs.lookalike_rate),
        ("tiny", knobs.tiny_rate),
        ("camouflage", knobs.camouflage_rate),
        ("off_context", 1.0 - knobs.home_context_rate),
        ("mislabeled", knobs.mislabel_rate),
    )
    return [name for name, rate in rates if rng.random() < rate]


def _plan_animals(
    rng: np.random.Generator, kind: str, cls: str, causes: list[str], knobs: WorldKnobs
) -> list[AnimalSpec]:
    """The animals of one image (a herd for some singles, a second class for multis)."""

    def drift() -> float:
        if "lookalike" in causes:
            return float(rng.uniform(*knobs.lookalike_drift))
        return float(rng.uniform(0.0, knobs.base_drift))

    animals: list[AnimalSpec] = []
    if kind == "single":
        n = 1 if rng.random() >= knobs.herd_rate else int(rng.integers(2, 4))
        animals = [_animal(rng, cls, drift()) for _ in range(n)]
        # a herd shares its colouring, so "three black cows" is true of all three
        animals = [replace(a, colour=animals[0].colour, spots=animals[0].spots) for a in animals]
    elif kind in ("person", "multi"):
        animals = [_animal(rng, cls, drift())]
    if kind == "multi":
        other = str(rng.choice([c for c in TARGET_CLASSES if c != cls]))
        animals.append(_animal(rng, other, drift()))
    return animals


def _plan_objects(
    rng: np.random.Generator, kind: str, context: str, knobs: WorldKnobs
) -> list[str]:
    """The distractor objects of one image (the subject of a distractor image)."""
    objects: list[str] = []
    if kind == "distractor":
        pool = _SCENE_OBJECTS[context] + tuple(
            d for d in DISTRACTORS if d not in _SCENE_OBJECTS[context]
        )
        objects = [pool[int(rng.choice(len(pool), p=[0.5, 0.3, 0.1, 0.1]))]]
        if rng.random() < 0.4:
            objects.append(str(rng.choice(_SCENE_OBJECTS[context])))
    elif rng.random() < knobs.scene_distractor_rate:
        objects = [str(rng.choice(_SCENE_OBJECTS[context]))]
    return objects


def _plan_one(
    seed: int, split: str, index: int, kind: str, cls: str, knobs: WorldKnobs
) -> ImagePlan:
    rng = image_rng(seed, split, index, 0)
    width, height = _size(rng, knobs)
    causes = _single_causes(rng, knobs) if kind == "single" else []

    animals = _plan_animals(rng, kind, cls, causes, knobs)
    if kind == "distractor":
        context = str(rng.choice(CONTEXTS))
    else:
        context = _context(rng, cls, "off_context" not in causes)
    label = cls if animals else None
    if "mislabeled" in causes:
        label = str(rng.choice([c for c in TARGET_CLASSES if c != cls]))
    objects = _plan_objects(rng, kind, context, knobs)
    person = str(rng.choice(_PERSON_WORDS)) if kind == "person" else None
    action = None
    if person is not None:
        action = "riding" if cls == "horse" and rng.random() < 0.6 else "beside"
    lo, hi = knobs.tiny_area if "tiny" in causes else knobs.subject_area
    area = float(np.exp(rng.uniform(np.log(lo), np.log(hi))))
    return ImagePlan(
        image_id=_ID_BASE[split] + index,
        index=index,
        split=split,
        kind=kind,
        width=width,
        height=height,
        context=context,
        animals=tuple(animals),
        label=label,
        causes=tuple(causes),
        objects=tuple(objects),
        person=person,
        person_action=action,
        area=area,
    )


def plan_split(seed: int, split: str, scale: Scale, knobs: WorldKnobs) -> list[ImagePlan]:
    """Plan every image of ``split`` (cheap: nothing is drawn).

    Examples
    --------
    >>> from clipindex.demo.world.knobs import SCALES
    >>> plans = plan_split(0, "val", SCALES["small"], WorldKnobs())
    >>> sum(p.kind == "single" for p in plans) == 5 * SCALES["small"].val_per_class
    True
    """
    n_single = scale.train_per_class if split == "train" else scale.val_per_class
    rng = np.random.default_rng([seed, SPLITS.index(split), 10**6])
    kinds = _kinds(rng, n_single, knobs)
    return [_plan_one(seed, split, i, kind, cls, knobs) for i, (kind, cls) in enumerate(kinds)]
