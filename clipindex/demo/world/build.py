"""Write a demo world: plan, draw and caption every image, then the COCO JSON files.

Everything is written into a staging folder inside ``out_dir`` and moved into place at
the end; ``world.json`` is written last (a folder without it is an unfinished world).
"""

from __future__ import annotations

import json
import os
import shutil
import sys
from collections import Counter
from pathlib import Path
from typing import Any

import tqdm

from clipindex.checks import non_negative_int
from clipindex.demo.world.captions import make_captions
from clipindex.demo.world.knobs import (
    CATEGORIES,
    CATEGORY_IDS,
    CAUSES,
    GENERATOR_VERSION,
    TARGET_CLASSES,
    Scale,
    WorldKnobs,
    resolve_scale,
)
from clipindex.demo.world.plan import SPLITS, ImagePlan, image_rng, plan_split
from clipindex.demo.world.render import noise_bank, render_image
from clipindex.errors import UserInputError, os_fault
from clipindex.files import atomic_write_bytes
from clipindex.progress import bar as progress_bar

__all__ = ["make_world", "funnel", "OUTPUTS"]

#: What a world folder holds; ``force=True`` replaces exactly these.
OUTPUTS = ("world.json", "annotations", *SPLITS)
# "clipindex.world" below names the generator in the files it writes (its name before it
# moved into clipindex.demo); kept so that a seed's output, and GENERATOR_VERSION, hold.
_INFO = {
    "description": "clipindex synthetic demo world (COCO format)",
    "version": GENERATOR_VERSION,
    "contributor": "clipindex.world",
    "url": "",
    "year": 2026,
    "date_created": "",
}


def write_json(path: Path, obj: Any) -> None:
    """Atomic, deterministic JSON write (sorted keys, compact, ASCII)."""
    text = json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=True)
    atomic_write_bytes(path, text.encode("utf-8"))


def funnel(images: list[dict], annotations: list[dict], categories: list[dict]) -> dict[str, Any]:
    """The study's selection funnel from COCO instances records.

    ``with_class[c]``: images with an annotation of c; ``without_person[c]``: of those, no
    ``person`` annotation; ``single_target[c]``: of those, no other target class.
    """
    names = {c["id"]: c["name"] for c in categories}
    per_image: dict[int, set[str]] = {im["id"]: set() for im in images}
    for a in annotations:
        per_image[a["image_id"]].add(names[a["category_id"]])
    out: dict[str, Any] = {"all_images": len(images)}
    for key in ("with_class", "without_person", "single_target"):
        out[key] = {c: 0 for c in TARGET_CLASSES}
    for cats in per_image.values():
        targets = cats & set(TARGET_CLASSES)
        for c in targets:
            out["with_class"][c] += 1
            if "person" not in cats:
                out["without_person"][c] += 1
                if len(targets) == 1:
                    out["single_target"][c] += 1
    return out


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError, ValueError):
        return True  # someone else's process, or not a pid we can check: leave it alone
    return True


def _remove_stale_stages(out_dir: Path) -> None:
    """Delete staging folders left by a killed run (their process no longer exists)."""
    if not out_dir.is_dir():
        return
    for stage in out_dir.glob(".world-staging-*"):
        pid = stage.name.rsplit("-", 1)[-1]
        if stage.is_dir() and pid.isdigit() and not _pid_alive(int(pid)):
            shutil.rmtree(stage, ignore_errors=True)


def _check_target(out_dir: Path, force: bool) -> None:
    if out_dir.exists() and not out_dir.is_dir():
        raise UserInputError(f"{out_dir} exists and is not a directory; choose another path.")
    if out_dir.is_dir() and any(out_dir.iterdir()) and not force:
        raise UserInputError(
            f"{out_dir} is not empty; choose an empty directory or pass --force to overwrite."
        )
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        probe = out_dir / f".write-test-{os.getpid()}"
        probe.touch()
        probe.unlink()
    except OSError as exc:
        fault = os_fault(exc, out_dir)  # read-only, no permission, full: what to do
        if fault is not None:
            raise fault from None
        raise UserInputError(f"Cannot write to {out_dir}: {exc.strerror or exc}.") from None


def _world_bytes(stage: Path, n_images: int) -> int | None:
    """About the bytes a whole world takes, from the images staged before the disk
    filled (None when none were)."""
    try:
        sizes = [p.stat().st_size for p in stage.rglob("*.jpg")]
    except OSError:
        return None
    if not sizes or not n_images:
        return None
    return int(sum(sizes) / len(sizes) * n_images * 1.1)  # and the annotation files


def _image_records(
    plan: ImagePlan, anns: list[dict], next_ann: int, captions: list[str], next_cap: int
) -> tuple[dict, list[dict], list[dict], dict]:
    image = {
        "id": plan.image_id,
        "file_name": plan.file_name,
        "width": plan.width,
        "height": plan.height,
        "license": 0,
        "date_captured": "",
    }
    inst = []
    for k, a in enumerate(anns):
        category = a["category"]
        if category in TARGET_CLASSES and "mislabeled" in plan.causes and plan.label:
            category = plan.label  # the annotation names another class than the drawing
        inst.append(
            {
                "id": next_ann + k,
                "image_id": plan.image_id,
                "category_id": CATEGORY_IDS[category],
                "bbox": a["bbox"],
                "area": a["area"],
                "iscrowd": 0,
                "segmentation": [],
            }
        )
    caps = [
        {"id": next_cap + k, "image_id": plan.image_id, "caption": t}
        for k, t in enumerate(captions)
    ]
    true_classes = list(plan.true_classes)
    cause = {
        "causes": list(plan.causes),
        "kind": plan.kind,
        "context": plan.context,
        "true_classes": true_classes,
        "label": plan.label,
        "true_class": true_classes[0] if len(true_classes) == 1 else None,
    }
    return image, inst, caps, cause


def _split_summary(
    images: list[dict], inst: list[dict], caps: list[dict], causes: dict[str, dict]
) -> dict[str, Any]:
    names = {c["id"]: c["name"] for c in CATEGORIES}
    cat_images: dict[str, set[int]] = {c["name"]: set() for c in CATEGORIES}
    for a in inst:
        cat_images[names[a["category_id"]]].add(a["image_id"])
    cause_counts = Counter(c for rec in causes.values() for c in rec["causes"])
    return {
        "images": len(images),
        "annotations": len(inst),
        "captions": len(caps),
        "kinds": dict(Counter(rec["kind"] for rec in causes.values())),
        "category_images": {k: len(v) for k, v in cat_images.items()},
        "category_annotations": dict(Counter(names[a["category_id"]] for a in inst)),
        "causes": {name: cause_counts.get(name, 0) for name in CAUSES},
        "clean_single": sum(
            1 for r in causes.values() if r["kind"] == "single" and not r["causes"]
        ),
        "funnel": funnel(images, inst, list(CATEGORIES)),
    }


def _write_split(
    stage: Path,
    split: str,
    seed: int,
    scale: Scale,
    knobs: WorldKnobs,
    bar: tqdm.tqdm,
    next_ids: list[int],
) -> dict[str, Any]:
    plans = plan_split(seed, split, scale, knobs)
    bank = noise_bank(seed, knobs)
    (stage / split).mkdir()
    images: list[dict] = []
    inst: list[dict] = []
    caps: list[dict] = []
    causes: dict[str, dict] = {}
    for plan in plans:
        jpeg, anns = render_image(plan, seed, knobs, bank)
        (stage / split / plan.file_name).write_bytes(jpeg)
        captions = make_captions(plan, image_rng(seed, split, plan.index, 2))
        image, i_recs, c_recs, cause = _image_records(
            plan, anns, next_ids[0], captions, next_ids[1]
        )
        next_ids[0] += len(i_recs)
        next_ids[1] += len(c_recs)
        images.append(image)
        inst += i_recs
        caps += c_recs
        causes[str(plan.image_id)] = cause
        bar.update(1)
    common = {
        "info": _INFO,
        "licenses": [{"id": 0, "name": "synthetic, CC0", "url": ""}],
        "images": images,
    }
    ann_dir = stage / "annotations"
    write_json(
        ann_dir / f"instances_{split}.json",
        {**common, "annotations": inst, "categories": list(CATEGORIES)},
    )
    write_json(ann_dir / f"captions_{split}.json", {**common, "annotations": caps})
    write_json(
        ann_dir / f"causes_{split}.json",
        {
            "generator_version": GENERATOR_VERSION,
            "split": split,
            "cause_descriptions": CAUSES,
            "images": causes,
        },
    )
    return _split_summary(images, inst, caps, causes)


def _world_record(seed: int, scale: Scale, knobs: WorldKnobs, splits: dict) -> dict[str, Any]:
    return {
        "generator": "clipindex.world",
        "generator_version": GENERATOR_VERSION,
        "seed": seed,
        "scale": scale.name,
        "knobs": knobs.to_dict(),
        "cause_rates": {
            "lookalike": knobs.lookalike_rate,
            "tiny": knobs.tiny_rate,
            "camouflage": knobs.camouflage_rate,
            "off_context": round(1.0 - knobs.home_context_rate, 10),
            "mislabeled": knobs.mislabel_rate,
        },
        "cause_descriptions": CAUSES,
        "categories": list(CATEGORIES),
        "target_classes": list(TARGET_CLASSES),
        "splits": splits,
    }


def _install(stage: Path, out_dir: Path) -> None:
    for name in OUTPUTS:
        old = out_dir / name
        if old.is_dir() and not old.is_symlink():
            shutil.rmtree(old)
        elif old.exists() or old.is_symlink():
            old.unlink()
    for name in ("annotations", *SPLITS):
        os.replace(stage / name, out_dir / name)


def make_world(
    out_dir: str | os.PathLike[str],
    *,
    seed: int = 0,
    scale: str | Scale = "default",
    force: bool = False,
    progress: bool = True,
    knobs: WorldKnobs | None = None,
) -> Path:
    """Generate the synthetic COCO-format demo world into ``out_dir``.

    Parameters
    ----------
    out_dir : folder to write (must be empty or absent unless ``force``).
    seed : non-negative integer; the same seed gives byte-identical files.
    scale : ``"small"`` (tests, seconds) or ``"default"`` (>= 300 val images per class
        after the study's filters), or a :class:`Scale`.
    force : replace the world files of a non-empty folder (other files are left alone).
    progress : show a tqdm bar on stderr.
    knobs : difficulty settings; ``None`` uses :class:`WorldKnobs` defaults.

    Returns
    -------
    Path of the world folder (``world.json`` holds the record: counts, funnel, causes).

    Examples
    --------
    >>> import tempfile
    >>> root = make_world(tempfile.mkdtemp() + "/w", seed=1, scale="small", progress=False)
    >>> sorted(p.name for p in root.iterdir())
    ['annotations', 'train', 'val', 'world.json']
    """
    seed = non_negative_int("seed", seed)
    sc = resolve_scale(scale)
    knobs = knobs if knobs is not None else WorldKnobs()
    out = Path(out_dir)
    _remove_stale_stages(out)
    _check_target(out, force)
    stage = out / f".world-staging-{os.getpid()}"
    if stage.exists():
        shutil.rmtree(stage)
    n_images = 0
    try:
        (stage / "annotations").mkdir(parents=True)
        n_images = sum(len(plan_split(seed, s, sc, knobs)) for s in SPLITS)
        next_ids = [1, 1]  # annotation ids, caption ids (unique across splits)
        with progress_bar(
            total=n_images, desc="world", unit="img", file=sys.stderr, disable=not progress
        ) as bar:
            splits = {s: _write_split(stage, s, seed, sc, knobs, bar, next_ids) for s in SPLITS}
        _install(stage, out)
        write_json(out / "world.json", _world_record(seed, sc, knobs, splits))
    except OSError as exc:
        fault = os_fault(exc, out, needs=_world_bytes(stage, n_images))
        if fault is not None:
            raise fault from None
        raise UserInputError(f"Cannot write the world to {out}: {exc.strerror or exc}.") from None
    finally:
        if stage.exists():
            shutil.rmtree(stage, ignore_errors=True)
    return out
