"""``sampler: study``: the reference study's own selection of COCO rows, with pandas.

The study's code (``shared/seeds/000_*.txt``) builds a *caption-level* frame and samples
it per class::

    rows = [(image_id, class) for every annotation of a target class, in file order,
            on an image with no annotation of an excluded class ('person')]
    df_animal = DataFrame(rows).merge(captions[["image_id", "caption"]], on="image_id")
    df_animal = df_animal.drop_duplicates(subset=["image_id", "class", "caption"])
    sample = df_animal.groupby("class").apply(lambda x: x.sample(n=200, random_state=42))

What that selection implies: a sampled row is a (image, class, caption) row, not an
image, so one image can be drawn more than once (two of its five captions) and an image
with two target animals can sit in two classes (it is never dropped as multi-target).

How clipindex stores it: one image row per sampled row, in class order (the config's
``classes``) and, within a class, in the sample's order; its ``label`` is the row's class
and its one caption is the row's caption. So the store has exactly 200 rows per class like
the study (the same file may back several rows, each encoded, even under two labels), and
the caption prototypes of the support rows use the sampled captions. Support rows are then
``support_per_class`` rows per class drawn with ``numpy.random.default_rng(seed)`` (the
study does not say how it chose its 10; clipindex's draw is documented and seeded). Two
rows of one image can so land in support and test: ``clipindex dedup`` lists such pairs as
exact duplicates with ``leakage``.

Example
-------
>>> cfg = DatasetConfig(name="s", source="coco", instances="i.json", captions="c.json",
...                     per_class=200, seed=42, drop_multi_target=False, sampler="study")
>>> cfg.sampler
'study'
"""

from __future__ import annotations

from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np
import pandas as pd

from clipindex.config import DatasetConfig
from clipindex.errors import DataError
from clipindex.sources.coco import (
    image_record,
    load_instances,
    read_captions,
    remote_images,
    sidecar_tags,
    tag_rows,
)
from clipindex.sources.records import Built, locate_file

__all__ = ["study_frame", "study_sample", "load_study"]

FRAME_COLUMNS = ("image_id", "class", "caption")


def study_frame(instances: dict[str, Any], captions: dict[str, Any], classes: list[str],
                exclude: list[str]) -> pd.DataFrame:
    """The study's ``df_animal``: (image_id, class, caption) rows, duplicates dropped."""
    cat_name = {c["id"]: c["name"] for c in instances["categories"]}
    name_id = {v: k for k, v in cat_name.items()}
    missing = [c for c in [*classes, *exclude] if c not in name_id]
    if missing:
        raise DataError(f"Unknown class '{missing[0]}'. Available: {', '.join(name_id)}")
    targets = {name_id[c] for c in classes}
    excluded = {name_id[e] for e in exclude}
    with_excluded = {a["image_id"] for a in instances["annotations"]
                     if a["category_id"] in excluded}
    rows = [(a["image_id"], cat_name[a["category_id"]]) for a in instances["annotations"]
            if a["category_id"] in targets and a["image_id"] not in with_excluded]
    ann = pd.DataFrame(rows, columns=["image_id", "class"])
    caps = pd.DataFrame([(c["image_id"], c["caption"]) for c in captions["annotations"]],
                        columns=["image_id", "caption"])
    frame = ann.merge(caps, on="image_id")
    return frame.drop_duplicates(subset=list(FRAME_COLUMNS)).reset_index(drop=True)


def study_sample(frame: pd.DataFrame, classes: list[str], n: int, seed: int) -> pd.DataFrame:
    """``x.sample(n=n, random_state=seed)`` of each class's rows, classes in ``classes``
    order (each group sampled exactly as the study's ``groupby("class").apply`` does)."""
    parts = []
    groups = dict(tuple(frame.groupby("class", sort=True)))
    for c in classes:
        g = groups.get(c)
        have = 0 if g is None else len(g)
        if have < n:
            raise DataError(f"Class '{c}' has {have} caption rows after the study's filters, "
                            f"fewer than per_class={n}: lower per_class")
        parts.append(g.sample(n=n, random_state=seed))
    return pd.concat(parts).reset_index(drop=True)


def load_study(cfg: DatasetConfig, root: Path | str, origin: str) -> Built:
    """A COCO config with ``sampler: study`` (see the module docstring)."""
    inst_path = locate_file(root, cfg, "instances", origin)
    coco = load_instances(inst_path, cfg.storage_options)
    captions = read_captions(locate_file(root, cfg, "captions", origin), cfg.storage_options)
    classes = list(cfg.classes) or sorted(
        c["name"] for c in coco.dataset["categories"] if c["name"] not in cfg.exclude)
    frame = study_frame(coco.dataset, captions, classes, list(cfg.exclude))
    sample = study_sample(frame, classes, int(cfg.per_class or 0), cfg.seed)
    image_dir = PurePosixPath(cfg.path("images") or ".")
    rng = np.random.default_rng(cfg.seed)
    records, ids, texts = [], [], []
    for c in classes:
        rows = sample[sample["class"] == c]
        k = cfg.support_per_class or 0
        support = {int(i) for i in rng.choice(len(rows), k, replace=False)} if k else set()
        for j, r in enumerate(rows.itertuples(index=False)):
            rec = image_record(coco, int(r.image_id), c, image_dir)
            rec["split"] = "support" if j in support else "test"
            records.append(rec)
            ids.append(int(r.image_id))
            texts.append(str(r.caption).strip())
    tagged = tag_rows(records, ids, sidecar_tags(cfg, root, origin, inst_path))
    funnel = {"all_images": len(coco.imgs),
              "caption_rows": {c: int((frame["class"] == c).sum()) for c in classes},
              "sampled": {c: int((sample["class"] == c).sum()) for c in classes},
              "distinct_images": {c: int(sample.loc[sample["class"] == c, "image_id"]
                                         .nunique()) for c in classes}}
    split_from = "none" if cfg.support_per_class is None else "drawn"
    return remote_images(Built(classes, records, list(enumerate(texts)), funnel, split_from,
                               ["coco_id", "bbox", "area_frac", *tagged]), cfg, root)
