"""Which rows of a store a run uses: the classes, the support rows and the rows to predict.

Usable rows: images whose vector is valid in every backbone asked for (skipped images
are neither support nor predicted) and whose label is one of the classes. Support rows
are the stored ``split == "support"`` rows; with ``shots=K``, K rows per class are drawn
(seeded) from all usable rows instead. Predicted rows (``rows``): ``"test"``, the stored
``split == "test"`` rows (with ``shots``: every usable row not drawn); ``"all"``, every
usable row (the study protocol's zero-shot; a fitted method then also predicts its own
support rows).

Example
-------
>>> parse_classes("cat,dog=puppy")
(['cat', 'dog'], {'dog': 'puppy'})
"""

from __future__ import annotations

import weakref
from collections.abc import Sequence
from typing import Any

import numpy as np

from clipindex.checks import positive_int
from clipindex.errors import UserInputError

__all__ = ["ROWS", "parse_classes", "store_classes", "pick_classes", "draw_shots",
           "split_rows", "image_labels", "label_codes", "caption_columns"]

#: What ``classify(rows=...)`` predicts: the test rows, or every usable row.
ROWS = ("test", "all")


def parse_classes(spec: str | Sequence[str] | None) -> tuple[list[str] | None, dict[str, str]]:
    """``"cat,dog"`` or ``"fields=field,roads=road"`` -> (labels, {label: prompt name}).

    Example
    -------
    >>> parse_classes("fields=field,roads")
    (['fields', 'roads'], {'fields': 'field'})
    """
    if spec is None:
        return None, {}
    items = spec.split(",") if isinstance(spec, str) else list(spec)
    labels, names = [], {}
    for item in (s.strip() for s in items):
        label, eq, name = item.partition("=")
        if not label.strip() or (eq and not name.strip()):  # '=cat' or 'cat='
            raise UserInputError(f"empty class in {spec!r}; give e.g. 'cat,dog' or "
                                 "'cat=kitten,dog'")
        labels.append(label.strip())
        if name.strip():
            names[label.strip()] = name.strip()
    if len(set(labels)) != len(labels):
        raise UserInputError(f"a class is listed twice in {spec!r}")
    return labels, names


#: Per opened store: (its images table, label strings, split strings, row ids, distinct
#: labels, each row's code into them). A run reads them instead of converting pandas
#: columns on every call (a classify call on stored vectors costs about a millisecond:
#: the conversions were most of it).
_COLUMNS: weakref.WeakKeyDictionary[Any, tuple[Any, ...]] = weakref.WeakKeyDictionary()
#: Per opened store: (its captions table, owner image row, caption row id, valid flag).
_CAPTIONS: weakref.WeakKeyDictionary[Any, tuple[Any, ...]] = weakref.WeakKeyDictionary()


def _cached(cache: weakref.WeakKeyDictionary[Any, tuple[Any, ...]], bi: Any, table: Any,
            make: Any) -> tuple[Any, ...]:
    """``make(table)`` (read-only arrays), kept per opened store while ``table`` is its
    table (an object that is not weak-referenceable is not cached)."""
    try:
        hit = cache.get(bi)
    except TypeError:
        hit = None
    if hit is not None and hit[0] is table:
        return hit[1:]
    made = make(table)
    for a in made:
        a.flags.writeable = False
    try:
        cache[bi] = (table, *made)
    except TypeError:
        pass
    return made


def _image_columns(images: Any) -> tuple[np.ndarray, ...]:
    labels = images["label"].astype(str).to_numpy().astype(str)
    split = (images["split"].astype(str).to_numpy().astype(str) if "split" in images
             else np.full(len(images), ""))
    uniq, codes = np.unique(labels, return_inverse=True)
    return labels, split, images["row_id"].to_numpy(np.int64), uniq, codes.ravel()


def _columns(bi: Any) -> tuple[np.ndarray, ...]:
    """(labels, split, row ids, distinct labels, codes) of a store's images."""
    return _cached(_COLUMNS, bi, bi.images, _image_columns)


def image_labels(bi: Any) -> np.ndarray:
    """The images' labels as strings (read-only; cached per opened store)."""
    return _columns(bi)[0]


def label_codes(bi: Any) -> tuple[np.ndarray, np.ndarray]:
    """(the store's distinct labels, sorted; each image's position in them), made once
    per opened store: a run tests its classes on the few distinct labels, not on every
    row's string."""
    cols = _columns(bi)
    return cols[3], cols[4]


def _caption_columns(captions: Any) -> tuple[np.ndarray, ...]:
    return (captions["image_row_id"].to_numpy(np.int64), captions["row_id"].to_numpy(np.int64))


def caption_columns(bi: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(owner image row, caption row id, valid flag) of each stored caption (read-only;
    cached per opened store)."""
    owner, ids = _cached(_CAPTIONS, bi, bi.captions, _caption_columns)
    return owner, ids, np.asarray(bi.caption_valid, bool)


def store_classes(bi: Any) -> list[str]:
    """The store's classes: ``dataset.json``'s order, then any other label, sorted."""
    known = [str(c) for c in bi.dataset_info.get("classes") or []]
    seen = set(known)
    known += sorted(set(label_codes(bi)[0].tolist()) - seen)
    return known


def pick_classes(bi: Any, wanted: list[str] | None) -> list[str]:
    """``wanted`` (checked against the store's classes), or all of them."""
    known = store_classes(bi)
    if wanted is None:
        return known
    unknown = [c for c in wanted if c not in known]
    if unknown:
        raise UserInputError(
            f"Unknown class(es) {', '.join(map(repr, unknown))}. Known: {', '.join(known)}")
    if len(wanted) < 2:
        raise UserInputError("give at least two classes to classify between")
    return wanted


def draw_shots(labels: np.ndarray, rows: np.ndarray, classes: list[str], shots: int,
               seed: int) -> np.ndarray:
    """``shots`` rows per class drawn with ``seed`` (sorted), at least one left over."""
    positive_int("--shots", shots)
    rng = np.random.default_rng(seed)
    picked = []
    for c in classes:
        pool = np.sort(rows[labels == c])
        if shots >= len(pool):
            raise UserInputError(
                f"--shots {shots} is too many: class {c!r} has only {len(pool)} usable "
                f"images (at least one must stay for testing); use --shots {max(len(pool) - 1, 1)}"
                " or fewer")
        picked.append(rng.choice(pool, size=shots, replace=False))
    return np.sort(np.concatenate(picked))


def split_rows(bi_list: list[Any], classes: list[str], shots: int | None, seed: int,
               rows: str = "test") -> tuple[np.ndarray, np.ndarray]:
    """(support row ids, predicted row ids); see the module docstring for ``rows``."""
    if rows not in ROWS:
        raise UserInputError(f"Unknown rows {rows!r}. Known: {', '.join(ROWS)}")
    labels, split, row_ids, uniq, codes = _columns(bi_list[0])
    valid = np.asarray(bi_list[0].image_valid, bool)
    for b in bi_list[1:]:
        valid = valid & np.asarray(b.image_valid, bool)
    usable = valid & np.isin(uniq, classes)[codes]  # classes tested on distinct labels
    ids = row_ids[usable]
    if shots is not None:
        support = draw_shots(labels[usable], ids, classes, shots, seed)
        test = np.setdiff1d(ids, support)
    else:
        split = split[usable]
        support, test = ids[split == "support"], ids[split == "test"]
    return support, (ids if rows == "all" else test)
