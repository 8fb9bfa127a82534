"""Everything that decides what the demo world contains: knobs, scales, categories.

All difficulty settings live in :class:`WorldKnobs` so that the world can be made
harder or easier in one place; :data:`GENERATOR_VERSION` must change whenever the
output for a given seed changes (a new default knob value included).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from clipindex.errors import UserInputError

__all__ = [
    "GENERATOR_VERSION",
    "WorldKnobs",
    "Scale",
    "SCALES",
    "resolve_scale",
    "CATEGORIES",
    "TARGET_CLASSES",
    "DISTRACTORS",
    "CAUSES",
    "LOOKALIKE",
    "CONTEXTS",
    "HOME_CONTEXTS",
]

#: Bump whenever the files written for a seed change (code or knob defaults).
GENERATOR_VERSION = "5"

#: Real COCO category ids and supercategories (instances_*.json, 2017 release).
CATEGORIES: tuple[dict[str, Any], ...] = (
    {"id": 1, "name": "person", "supercategory": "person"},
    {"id": 3, "name": "car", "supercategory": "vehicle"},
    {"id": 15, "name": "bench", "supercategory": "outdoor"},
    {"id": 17, "name": "cat", "supercategory": "animal"},
    {"id": 18, "name": "dog", "supercategory": "animal"},
    {"id": 19, "name": "horse", "supercategory": "animal"},
    {"id": 20, "name": "sheep", "supercategory": "animal"},
    {"id": 21, "name": "cow", "supercategory": "animal"},
    {"id": 62, "name": "chair", "supercategory": "furniture"},
    {"id": 64, "name": "potted plant", "supercategory": "furniture"},
)
CATEGORY_IDS: dict[str, int] = {c["name"]: c["id"] for c in CATEGORIES}

#: The study's five classes, in COCO id order.
TARGET_CLASSES: tuple[str, ...] = ("cat", "dog", "horse", "sheep", "cow")
DISTRACTORS: tuple[str, ...] = ("car", "bench", "chair", "potted plant")

#: Each class drifts toward this one in a ``lookalike`` rendering (shared body plans:
#: cat/dog are small pets, cow/horse/sheep are grazing quadrupeds).
LOOKALIKE: dict[str, str] = {
    "cat": "dog",
    "dog": "cat",
    "cow": "horse",
    "horse": "cow",
    "sheep": "cow",
}

CONTEXTS: tuple[str, ...] = ("field", "road", "indoor", "beach", "snow")

#: Where each class usually is (weights of the "home" contexts). Any other context is
#: ``off_context``. Cows and sheep mostly in fields, cats and dogs indoors or on roads.
HOME_CONTEXTS: dict[str, dict[str, float]] = {
    "cat": {"indoor": 1.0},
    "dog": {"indoor": 0.5, "road": 0.5},
    "horse": {"field": 0.8, "beach": 0.2},
    "sheep": {"field": 1.0},
    "cow": {"field": 1.0},
}

#: Failure causes the generator applies on purpose (sidecar ``causes_{split}.json``).
CAUSES: dict[str, str] = {
    "lookalike": "body plan, parts and markings drift toward the look-alike class",
    "tiny": "subject bounding box covers only a few percent of the image",
    "camouflage": "subject colour close to the background colour, no outline",
    "off_context": "background against the class's usual context (e.g. a cow indoors)",
    "mislabeled": "the instances annotation names another target class than drawn",
}


@dataclass(frozen=True)
class WorldKnobs:
    """Every setting that makes the demo world easier or harder.

    Rates of the failure causes are independent per single-class image (an image can
    carry several). Composition rates are relative to the number of single-class images.

    Examples
    --------
    >>> from dataclasses import replace
    >>> harder = replace(WorldKnobs(), tiny_rate=0.2)
    >>> harder.tiny_rate
    0.2
    """

    # -- composition (so the study's filters have something to remove) --
    #: images with a person next to / riding a target animal (dropped by the person filter)
    person_rate: float = 0.08
    #: images with two different target animals (dropped by the single-class filter)
    multi_rate: float = 0.07
    #: images with only distractor objects (never enter the study's selection)
    distractor_rate: float = 0.06
    #: share of single-class images that show 2-3 animals of that class (a herd)
    herd_rate: float = 0.2
    #: probability that an animal image also shows a distractor object in the scene
    scene_distractor_rate: float = 0.15

    # -- failure causes --
    #: share of images whose animal is drawn drifting toward its look-alike class
    lookalike_rate: float = 0.15
    #: how far a look-alike rendering moves toward the other class (0 = own, 1 = other)
    lookalike_drift: tuple[float, float] = (0.45, 0.75)
    #: share of images with a tiny subject
    tiny_rate: float = 0.10
    #: bounding-box area of a tiny subject, as a fraction of the image area
    tiny_area: tuple[float, float] = (0.004, 0.025)
    #: share of images whose subject is coloured like the background (camouflage)
    camouflage_rate: float = 0.10
    #: std (0-255 scale) of a camouflaged subject's colour around the background colour
    camouflage_noise: float = 14.0
    #: probability that an animal is shown in one of its class's home contexts
    home_context_rate: float = 0.9
    #: share of single-class images whose annotation names another target class
    mislabel_rate: float = 0.03

    # -- always-on variation (applies to every image) --
    #: bounding-box area of an ordinary subject, as a fraction of the image area
    subject_area: tuple[float, float] = (0.12, 0.5)
    #: every ordinary animal drifts by up to this much toward its look-alike class
    base_drift: float = 0.0
    #: relative std of body proportions around the class prototype
    shape_jitter: float = 0.06
    #: std (0-255) of an animal's colour around its named colour
    colour_jitter: float = 14.0
    #: std (0-255) of per-pixel noise added to every image
    pixel_noise: float = 5.0
    #: maximum Gaussian blur radius in pixels (drawn uniformly per image)
    blur_max: float = 0.6
    #: number of clutter blobs (rocks, bushes, toys) scattered in the background
    clutter: tuple[int, int] = (0, 4)

    # -- image geometry and encoding --
    #: long side range in pixels (COCO's are mostly 640)
    long_side: tuple[int, int] = (160, 640)
    #: probability that the long side is exactly the maximum
    full_size_rate: float = 0.5
    #: JPEG quality (fixed so files are byte-identical for a seed)
    jpeg_quality: int = 85

    def to_dict(self) -> dict[str, Any]:
        """Plain-JSON view (tuples become lists) for ``world.json``."""
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}


@dataclass(frozen=True)
class Scale:
    """How many single-class images per target class each split gets."""

    name: str
    train_per_class: int
    val_per_class: int
    extra: dict[str, Any] = field(default_factory=dict)


#: ``default`` leaves >= 300 val images per class after the study's filters even when a
#: few percent are mislabeled into other classes; ``small`` is for tests (seconds).
#: ``training`` is ``default`` with a train split four times larger: a split's images
#: depend only on the seed, the split and that split's size, so its ``val`` split is
#: byte-identical to ``default``'s (the one ``clipindex demo`` indexes). The tiny ViTs,
#: which overfit ``default``'s ~4k train images, are trained on it.
SCALES: dict[str, Scale] = {
    "small": Scale("small", train_per_class=24, val_per_class=42),
    "default": Scale("default", train_per_class=700, val_per_class=350),
    "training": Scale("training", train_per_class=2800, val_per_class=350),
}


def resolve_scale(scale: str | Scale) -> Scale:
    """Return the :class:`Scale` named ``scale`` (or ``scale`` itself).

    Examples
    --------
    >>> resolve_scale("small").val_per_class
    42
    """
    if isinstance(scale, Scale):
        return scale
    try:
        return SCALES[scale]
    except (KeyError, TypeError):
        known = ", ".join(SCALES)
        raise UserInputError(f"Unknown world scale {scale!r}. Known: {known}.") from None
