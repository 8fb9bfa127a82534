"""COCO-style captions from a small grammar: templates, synonyms, colours, counts and
context phrases. Captions always describe what is drawn (a mislabeled image's captions
name the true class; only its instances annotation is wrong, as in COCO).
"""

from __future__ import annotations

import numpy as np

from clipindex.demo.world.plan import AnimalSpec, ImagePlan

__all__ = ["make_captions", "CAPTIONS_PER_IMAGE", "CLASS_WORDS"]

CAPTIONS_PER_IMAGE = 5

# The class name itself comes first and is repeated so it dominates (zero-shot prompts
# use it); synonyms give the variety of real captions.
_NOUNS = {
    "cat": ("cat", "cat", "cat", "cat", "kitty", "kitten", "house cat"),
    "dog": ("dog", "dog", "dog", "dog", "puppy", "pup", "doggy"),
    "horse": ("horse", "horse", "horse", "horse", "pony", "stallion", "mare"),
    "sheep": ("sheep", "sheep", "sheep", "sheep", "lamb", "ewe"),
    "cow": ("cow", "cow", "cow", "cow", "calf", "steer", "bull"),
}
_PLURALS = {
    "cat": ("cats", "cats", "kittens", "kitties"),
    "dog": ("dogs", "dogs", "puppies", "dogs"),
    "horse": ("horses", "horses", "ponies", "horses"),
    "sheep": ("sheep", "sheep", "lambs", "sheep"),
    "cow": ("cows", "cows", "cattle", "calves"),
}
#: Every word a caption may use to name each target class (singular and plural).
CLASS_WORDS: dict[str, frozenset[str]] = {
    c: frozenset(_NOUNS[c]) | frozenset(_PLURALS[c]) for c in _NOUNS}
_GROUPS = {"sheep": "a flock of", "cow": "a herd of", "horse": "a group of"}
_COUNTS = {2: ("two", "a couple of", "two"), 3: ("three", "a few", "three")}
_VERBS = {
    "standing": ("standing", "standing still", "posing", "standing around"),
    "walking": ("walking", "walking along", "strolling", "moving"),
    "grazing": ("grazing", "eating grass", "grazing on grass", "feeding"),
    "lying": ("lying down", "laying down", "resting", "relaxing"),
    "sitting": ("sitting", "sitting down", "sitting still", "sitting quietly"),
}
_PLACES = {
    "field": (
        "in a grassy field",
        "in a green pasture",
        "on the grass",
        "in a meadow",
        "in an open field",
        "in a farm field",
    ),
    "road": (
        "on a road",
        "on the street",
        "on a city street",
        "in the middle of the road",
        "on the side of the road",
        "near some buildings",
    ),
    "indoor": (
        "in a living room",
        "inside a house",
        "on the floor",
        "in a room",
        "indoors",
        "inside the house",
    ),
    "beach": ("on a sandy beach", "on the beach", "by the ocean", "near the water", "on the sand"),
    "snow": ("in the snow", "in a snowy field", "on snowy ground", "in the winter snow"),
}
_SCENES = {
    "field": ("a grassy field", "a green pasture", "a meadow"),
    "road": ("a city street", "a road", "a street"),
    "indoor": ("a living room", "a room", "a house"),
    "beach": ("a sandy beach", "a beach"),
    "snow": ("a snowy field", "a snow covered field"),
}
_OBJECTS = {
    "car": ("a car", "a parked car", "a small car"),
    "bench": ("a bench", "a wooden bench", "a park bench"),
    "chair": ("a chair", "an empty chair", "a small chair"),
    "potted plant": ("a potted plant", "a plant", "a house plant"),
}
_OBJECT_VERBS = {
    "car": ("parked", "stopped"),
    "bench": ("sitting empty", "standing"),
    "chair": ("standing", "sitting"),
    "potted plant": ("sitting", "standing"),
}
_PEOPLE = ("a man", "a woman", "a young boy", "a little girl", "a person")
_PERSON_WORD = {"man": 0, "woman": 1, "boy": 2, "girl": 3, "person": 4}
_SIZES = ("small", "large", "little", "big", "young")
_TINY = ("small", "distant", "tiny")


def _c(rng: np.random.Generator, options: tuple[str, ...]) -> str:
    return options[int(rng.integers(len(options)))]


def _a(word: str) -> str:
    return ("an " if word[0] in "aeiou" else "a ") + word


def _colour(a: AnimalSpec, camo: bool) -> str:
    if camo:
        return ""
    return f"{a.colour} and {a.spots}" if a.spots else a.colour


def _subject(
    rng: np.random.Generator, animals: tuple[AnimalSpec, ...], camo: bool, tiny: bool
) -> tuple[str, bool]:
    """Noun phrase for a group of same-class animals; returns (phrase, plural)."""
    a, n = animals[0], len(animals)
    colour = _colour(a, camo) if rng.random() < 0.55 else ""
    if n > 1:
        if a.cls in _GROUPS and rng.random() < 0.3:
            return f"{_GROUPS[a.cls]} {_PLURALS[a.cls][0]}", True
        words = [_c(rng, _COUNTS[n]), colour, _c(rng, _PLURALS[a.cls])]
        return " ".join(w for w in words if w), True
    size = ""
    if tiny and rng.random() < 0.5:
        size = _c(rng, _TINY)
    elif rng.random() < 0.2:
        size = _c(rng, _SIZES)
    return _a(" ".join(w for w in (size, colour, _c(rng, _NOUNS[a.cls])) if w)), False


def _single(rng: np.random.Generator, plan: ImagePlan) -> str:
    camo, tiny = "camouflage" in plan.causes, "tiny" in plan.causes
    s, plural = _subject(rng, plan.animals, camo, tiny)
    v = _c(rng, _VERBS[plan.animals[0].pose])
    c = _c(rng, _PLACES[plan.context])
    be, there = ("are", "There are") if plural else ("is", "There is")
    forms = [
        f"{s} {v} {c}",
        f"{s} {be} {v} {c}",
        f"{there} {s} {v} {c}",
        f"a photo of {s} {v} {c}",
        f"{_c(rng, _SCENES[plan.context])} with {s} {v} in it",
        f"{s} {c}",
        f"an image of {s} that {be} {v} {c}",
    ]
    if plan.objects:
        forms.append(f"{s} {v} {c} next to {_c(rng, _OBJECTS[plan.objects[0]])}")
        forms.append(f"{s} {v} near {_c(rng, _OBJECTS[plan.objects[0]])}")
    if tiny:
        forms += [f"{s} {v} far away {c}", f"{s} in the distance {c}"]
    elif not plural:
        forms += [f"close up of {s} {v} {c}", f"{s} {v} by itself {c}"]
    return _c(rng, tuple(forms))


def _person(rng: np.random.Generator, plan: ImagePlan) -> str:
    p = _PEOPLE[_PERSON_WORD[plan.person or "person"]] if rng.random() < 0.6 else _c(rng, _PEOPLE)
    s, _ = _subject(rng, plan.animals[:1], False, False)
    c = _c(rng, _PLACES[plan.context])
    forms: tuple[str, ...]
    if plan.person_action == "riding":
        forms = (
            f"{p} riding {s} {c}",
            f"{p} is riding on {s} {c}",
            f"{s} with {p} on its back {c}",
            f"{p} sitting on top of {s}",
        )
    else:
        forms = (
            f"{p} standing next to {s} {c}",
            f"{p} with {s} {c}",
            f"{p} petting {s} {c}",
            f"{p} and {s} {c}",
            f"{s} {_c(rng, _VERBS[plan.animals[0].pose])} next to {p}",
        )
    return _c(rng, forms)


def _multi(rng: np.random.Generator, plan: ImagePlan) -> str:
    first, second = plan.animals[0], plan.animals[1]
    if rng.random() < 0.5:
        first, second = second, first
    s1, _ = _subject(rng, (first,), False, False)
    s2, _ = _subject(rng, (second,), False, False)
    c = _c(rng, _PLACES[plan.context])
    v = _c(rng, _VERBS[first.pose])  # the verb belongs to the animal named first
    forms = (
        f"{s1} and {s2} {c}",
        f"{s1} {v} next to {s2} {c}",
        f"there is {s1} and {s2} {c}",
        f"{s1} and {s2} together {c}",
        f"{s1} {v} near {s2}",
    )
    return _c(rng, forms)


def _distractor(rng: np.random.Generator, plan: ImagePlan) -> str:
    name = plan.objects[0]
    o, c = _c(rng, _OBJECTS[name]), _c(rng, _PLACES[plan.context])
    v = _c(rng, _OBJECT_VERBS[name])
    forms = [
        f"{o} {v} {c}",
        f"there is {o} {c}",
        f"a view of {o} {c}",
        f"{_c(rng, _SCENES[plan.context])} with {o} in it",
    ]
    if len(plan.objects) > 1:
        forms.append(f"{o} and {_c(rng, _OBJECTS[plan.objects[1]])} {c}")
    return _c(rng, tuple(forms))


_KINDS = {"single": _single, "person": _person, "multi": _multi, "distractor": _distractor}


def _style(rng: np.random.Generator, text: str) -> str:
    """COCO captions vary in case and punctuation."""
    text = " ".join(text.split())
    r = rng.random()
    if r < 0.75:
        text = text[0].upper() + text[1:]
    if rng.random() < 0.7:
        text += "."
    return text


def make_captions(plan: ImagePlan, rng: np.random.Generator) -> list[str]:
    """Five different captions describing ``plan``.

    Examples
    --------
    >>> from clipindex.demo.world.knobs import SCALES, WorldKnobs
    >>> from clipindex.demo.world.plan import image_rng, plan_split
    >>> plan = plan_split(0, "val", SCALES["small"], WorldKnobs())[0]
    >>> len(make_captions(plan, image_rng(0, "val", 0, 2)))
    5
    """
    make = _KINDS[plan.kind]
    out: list[str] = []
    for _ in range(60):  # distinct captions; the grammar has far more than five per image
        text = _style(rng, make(rng, plan))
        if text.lower().rstrip(".") not in {t.lower().rstrip(".") for t in out}:
            out.append(text)
        if len(out) == CAPTIONS_PER_IMAGE:
            break
    while len(out) < CAPTIONS_PER_IMAGE:
        out.append(out[-1])
    return out
