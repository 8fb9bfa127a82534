"""The study's filters: target classes, excluded classes, single-target images, and the
seeded per-class sample with its support draw.

COCO (:func:`class_pools`): ``all_images`` (images in the instances JSON),
``with_class`` (images with an annotation of the class), ``without_person`` (of those,
none of an excluded class), ``single_target`` (of those, no other target class; with
``drop_multi_target`` False, ``assigned``: the class of the largest box) — the same
definition the demo world's ``world.json`` funnel uses.

Random draws (:func:`select`) use ``numpy.random.default_rng(seed)`` over candidates in
their source's order: first ``per_class`` images per class (classes in order), then
``support_per_class`` support images per class from that sample; the rest are ``test``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from clipindex.config import DatasetConfig
from clipindex.errors import ConfigError, DataError

__all__ = ["box_area", "class_pools", "largest_annotation", "sample_rows", "select"]


def class_pools(
    coco: Any, classes: Sequence[str], exclude: Sequence[str], drop_multi_target: bool, where: str
) -> tuple[list[str], dict[str, list[int]], dict[str, Any]]:
    """Candidate image ids per class (sorted) and the funnel counts that led to them.

    ``classes`` empty means every category not excluded, in category-id order. With
    ``drop_multi_target`` False an image with several target classes goes to the class
    of its largest box (funnel stage ``assigned`` instead of ``single_target``).
    """
    cats = sorted(coco.dataset["categories"], key=lambda c: c["id"])
    cat_id = {c["name"]: c["id"] for c in cats}
    classes = list(classes) or [c["name"] for c in cats if c["name"] not in exclude]
    for name, field in [(c, "classes") for c in classes] + [(e, "exclude") for e in exclude]:
        if name not in cat_id:
            raise DataError(
                f"Unknown class '{name}' in '{field}' of {where}. Available: {', '.join(cat_id)}"
            )
    target_ids = {cat_id[c] for c in classes}
    excluded = {cat_id[e] for e in exclude}
    cats_of = {i: {a["category_id"] for a in anns} for i, anns in coco.imgToAnns.items()}
    with_class = {c: sorted(set(coco.catToImgs.get(cat_id[c], []))) for c in classes}
    clean = {c: [i for i in ids if not cats_of[i] & excluded] for c, ids in with_class.items()}
    if drop_multi_target:
        stage = "single_target"
        pools = {c: [i for i in v if len(cats_of[i] & target_ids) == 1] for c, v in clean.items()}
    else:
        stage = "assigned"
        owner = {i: largest_annotation(coco, i, target_ids)["category_id"]
                 for v in clean.values() for i in v}
        pools = {c: [i for i in ids if owner[i] == cat_id[c]] for c, ids in clean.items()}
    funnel: dict[str, Any] = {"all_images": len(coco.imgs)}
    for name, table in (("with_class", with_class), ("without_person", clean), (stage, pools)):
        funnel[name] = {c: len(v) for c, v in table.items()}
    return classes, pools, funnel


def box_area(ann: dict[str, Any]) -> float:
    """Area of an annotation's ``[x, y, w, h]`` box."""
    return float(ann["bbox"][2]) * float(ann["bbox"][3])


def largest_annotation(coco: Any, img_id: int, category_ids: set[int]) -> dict[str, Any]:
    """The image's largest box among ``category_ids`` (ties: the first annotation)."""
    anns = [a for a in coco.imgToAnns[img_id] if a["category_id"] in category_ids]
    return max(anns, key=lambda a: (box_area(a), -a["id"]))


def select(
    pools: dict[str, list[Any]], cfg: DatasetConfig, origin: str, *, given_split: bool = False
) -> tuple[dict[str, list[Any]], dict[str, set[int]]]:
    """Seeded per-class sample, then the support draw (indexes into each sample)."""
    if not any(pools.values()):
        raise DataError(
            f"The selection in {origin} leaves no images (classes: {', '.join(pools)}): "
            "check classes, exclude and the data root"
        )
    empty = [c for c, pool in pools.items() if not pool]
    if empty:
        raise DataError(f"Class '{empty[0]}' has no images left after the filters in {origin}")
    k = cfg.support_per_class
    if k is not None and given_split:
        raise ConfigError(
            f"support_per_class conflicts with the train/test split given by {origin}: "
            "drop one of them"
        )
    rng = np.random.default_rng(cfg.seed)
    sampled: dict[str, list[Any]] = {}
    for c, pool in pools.items():
        n = cfg.per_class
        if n is not None and len(pool) < n:
            raise DataError(
                f"Class '{c}' has {len(pool)} images after the filters in {origin}, fewer than "
                f"per_class={n}: lower per_class or set it to null to take all"
            )
        keep = range(len(pool)) if n is None else sorted(rng.choice(len(pool), n, replace=False))
        sampled[c] = [pool[i] for i in keep]
    support: dict[str, set[int]] = {c: set() for c in pools}
    for c, rows in sampled.items():
        if k is None:
            continue
        if k > len(rows):
            raise DataError(
                f"Class '{c}' has {len(rows)} images in {origin}, fewer than "
                f"support_per_class={k}: lower support_per_class"
            )
        support[c] = {int(i) for i in rng.choice(len(rows), k, replace=False)}
    return sampled, support


def sample_rows(rows: dict[str, dict[str, Any]], cfg: DatasetConfig, origin: str, what: str,
                *, given_split: bool
                ) -> tuple[list[str], dict[str, set[int]], dict[str, tuple[str, int]],
                           dict[str, Any]]:
    """The classes, support draw and chosen rows of a table of rows (``rel -> {"label":
    ...}``, a manifest's or a remote folder's): ``classes`` checked against the labels
    (two at least; ``what`` names the table in the error), then :func:`select`.
    ``chosen`` maps each sampled ``rel`` to ``(class, index in its sample)``; the last
    item is the funnel (``all_images``, ``with_class``, ``sampled``)."""
    from clipindex.sources.records import unknown_class

    labels = list(dict.fromkeys(e["label"] for e in rows.values()))
    classes = list(cfg.classes) or sorted(labels)
    for c in classes:
        if c not in labels:
            raise unknown_class(c, "classes", origin, sorted(labels))
    if len(classes) < 2:
        raise DataError(f"{what} has {len(classes)} class(es): a classifier needs two")
    pools = {c: [rel for rel, e in rows.items() if e["label"] == c] for c in classes}
    sampled, support = select(pools, cfg, origin, given_split=given_split)
    chosen = {rel: (c, j) for c, rels in sampled.items() for j, rel in enumerate(rels)}
    funnel = {"all_images": len(rows), "with_class": {c: len(v) for c, v in pools.items()},
              "sampled": {c: len(v) for c, v in sampled.items()}}
    return classes, support, chosen, funnel
