"""The synthetic COCO-format demo world (``clipindex world DIR``).

A seeded generator of instances + captions JSON and JPEG files whose five target classes
(cat, dog, horse, sheep, cow) carry the reference study's failure causes on purpose:
look-alike renderings, tiny subjects, camouflage, off-context backgrounds and wrong
labels. Layout (see ``docs/architecture.md``)::

    DIR/world.json                               record: version, seed, knobs, counts, funnel
    DIR/annotations/instances_{train,val}.json   COCO instances
    DIR/annotations/captions_{train,val}.json    COCO captions (5 per image)
    DIR/annotations/causes_{train,val}.json      per image id: causes applied, true class
    DIR/{train,val}/<file_name>.jpg

All difficulty settings are in :class:`WorldKnobs`; :data:`GENERATOR_VERSION` changes
whenever the output for a seed changes.

Examples
--------
>>> import tempfile
>>> from clipindex.demo.world import make_world
>>> root = make_world(tempfile.mkdtemp() + "/w", scale="small", progress=False)
>>> (root / "annotations" / "instances_val.json").is_file()
True
"""

from __future__ import annotations

from clipindex.demo.world.build import funnel, make_world
from clipindex.demo.world.knobs import (
    CATEGORIES,
    CAUSES,
    GENERATOR_VERSION,
    SCALES,
    TARGET_CLASSES,
    Scale,
    WorldKnobs,
)

__all__ = [
    "make_world",
    "funnel",
    "WorldKnobs",
    "Scale",
    "SCALES",
    "GENERATOR_VERSION",
    "CATEGORIES",
    "TARGET_CLASSES",
    "CAUSES",
]
