"""Train the tiny CLIP backbones on the ``train`` split of a demo world.

Usage::

    python -m clipindex.demo.train --world DIR --all          # the three, into the package
    python -m clipindex.demo.train --world DIR --name tiny-vit --seed 0 --out /tmp/ckpts

The shipped ViTs learnt from a seed-0 world of scale ``training`` (16,940 train images;
on the ~4.2k of ``default`` they overfit), tiny-rn from the ``default`` one (it did worse
on more images in its 600 steps); both worlds share the ``val`` split.

Only ``train`` images and captions are read for learning; the ``val`` split of the same
world is used afterwards to report the figures recorded in ``clipindex.json``, measured
by the product itself (:mod:`clipindex.demo.evaluate`: a store of the study images and
the ``prompt`` classifier on it), plus any ``--eval-world`` folders (e.g. worlds made
with seeds not used for training). Every random
step is seeded: weights (``torch.manual_seed``), data order, caption choice and crops.
"""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import tempfile
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import click
import numpy as np
import torch

from clipindex.demo.evaluate import STUDY_TEMPLATE, evaluate_world
from clipindex.demo.world.captions import CLASS_WORDS
from clipindex.demo.world.knobs import TARGET_CLASSES
from clipindex.errors import DataError
from clipindex.files import write_json_atomic
from clipindex.tiny import CONFIGS_DIR, RECORD_FILE, TINY_BACKBONES
from clipindex.tiny.configs import ARCHITECTURES, CONTEXT_LENGTH, model_cfg
from clipindex.tiny.tokenizer import build_tokenizer, save_tokenizer, words_of

__all__ = ["TrainConfig", "DEFAULT_STEPS", "DEFAULT_LR", "DEFAULT_CROP", "TrainData",
           "DEFAULT_SAME_ANIMAL", "named_animal", "same_animal_loss",
           "load_train_data", "train_backbone", "save_backbone", "train_and_save",
           "record_figures", "write_registry_config"]

#: Where the shipped tiny backbones live (``clipindex/tiny/``): the default ``--out``.
PACKAGE_DIR = CONFIGS_DIR.parent
MEAN = (0.48145466, 0.4578275, 0.40821073)
STD = (0.26862954, 0.26130258, 0.27577711)
# Fixed step counts (not wall-clock budgets) keep training deterministic; each takes
# under 5 minutes on 2 CPU threads. More steps helped the ViTs (a higher lr, a larger
# logit-scale init or average pooling hurt) until they overfit ~4k train images; the
# shipped ViTs learnt from a "training"-scale world (16,940) with these same steps.
DEFAULT_STEPS: dict[str, int] = {"tiny-vit": 1800, "tiny-rn": 600, "tiny-vit-s": 3200}
# ViTs trained from scratch on ~4k images did better at a lower learning rate.
DEFAULT_LR: dict[str, float] = {"tiny-vit": 1e-3, "tiny-rn": 3e-3, "tiny-vit-s": 1e-3}
# ...and with milder crops (random-resized-crop area share).
DEFAULT_CROP: dict[str, tuple[float, float]] = {
    "tiny-vit": (0.8, 1.0), "tiny-rn": (0.4, 1.0), "tiny-vit-s": (0.8, 1.0)}
# Weight of the same-animal term next to ClipLoss (see same_animal_loss). With ClipLoss
# alone the image towers learnt colour and background more than the animal, and the top 10
# for "a photo of a dog" filled with look-alikes; weights 1 and 3 both fixed that for
# tiny-rn and lifted every backbone's zero-shot accuracy by 0.02-0.07 on seed-0 val.
DEFAULT_SAME_ANIMAL: dict[str, float] = {"tiny-vit": 3.0, "tiny-rn": 3.0, "tiny-vit-s": 3.0}


@dataclass(frozen=True)
class TrainConfig:
    """Hyper-parameters of one training run."""

    name: str
    seed: int = 0
    steps: int = 300
    batch_size: int = 128
    lr: float = 3e-3
    weight_decay: float = 0.1
    warmup: int = 20
    crop_scale: tuple[float, float] = (0.4, 1.0)
    threads: int = 2
    same_animal_weight: float = 0.0  # weight of :func:`same_animal_loss` next to ClipLoss


@dataclass(frozen=True)
class TrainData:
    """The decoded train split: square uint8 crops, caption token ids, the vocabulary."""

    images: torch.Tensor  # [N, 3, S, S] uint8, centre crops at the largest model's size
    tokens: torch.Tensor  # [N, 5, CONTEXT_LENGTH] int64
    tokenizer: Any  # tokenizers.Tokenizer
    world: dict[str, Any] = field(default_factory=dict)  # world.json (version, seed, ...)
    # [N] int64: the one target class the image's captions name (index into
    # TARGET_CLASSES), -1 when they name none or several. Read from caption text only.
    animals: torch.Tensor | None = None


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError as exc:
        raise DataError(f"{path} is missing: is this a demo world folder?") from exc


def vocab_texts(category_names: Sequence[str], captions: Sequence[str]) -> list[str]:
    """Texts whose words form the vocabulary: captions and every prompt template."""
    from open_clip.zero_shot_metadata import OPENAI_IMAGENET_TEMPLATES

    prompts = [STUDY_TEMPLATE.format(c) for c in category_names]
    prompts += [t(c) for t in OPENAI_IMAGENET_TEMPLATES for c in category_names]
    return [*captions, *prompts, *category_names]


def named_animal(captions: Sequence[str]) -> int:
    """Index in ``TARGET_CLASSES`` of the one animal ``captions`` name, else -1.

    Words come from the world's caption grammar (``kitten`` names a cat, ``calves`` cows).

    Examples
    --------
    >>> named_animal(["A puppy on a road.", "two dogs near some buildings"])
    1
    >>> named_animal(["a cat and a dog"]), named_animal(["an empty room"])
    (-1, -1)
    """
    words = set(re.findall(r"[a-z]+", " ".join(captions).lower()))
    hits = [k for k, c in enumerate(TARGET_CLASSES) if words & CLASS_WORDS[c]]
    return hits[0] if len(hits) == 1 else -1


def same_animal_loss(image_f: torch.Tensor, text_f: torch.Tensor, scale: torch.Tensor,
                     animals: torch.Tensor) -> torch.Tensor:
    """Contrastive loss in which captions naming the same animal are all positives.

    ``ClipLoss`` treats the other 20-odd dog captions of a batch as negatives of a dog
    image, so tiny models learn colour and background (what tells one caption from
    another) more than the animal. Here each image's target is spread evenly over every
    caption in the batch that names its animal (its own caption always included; rows
    with ``animals == -1`` keep only their own), and likewise from text to image: the
    multi-positive cross-entropy of UniCL / SupCon, symmetric like ``ClipLoss``.
    """
    logits = scale * image_f @ text_f.T
    same = (animals[:, None] == animals[None, :]) & (animals[:, None] >= 0)
    same |= torch.eye(len(animals), dtype=torch.bool)
    target = same.float() / same.sum(1, keepdim=True)
    to_text = -(target * logits.log_softmax(1)).sum(1).mean()
    to_image = -(target * logits.T.log_softmax(1)).sum(1).mean()
    return (to_text + to_image) / 2


def _decode_square(path: Path, size: int) -> np.ndarray:
    from PIL import Image

    with Image.open(path) as im:
        im.draft("RGB", (size, size))
        im = im.convert("RGB")
        w, h = im.size
        s = size / min(w, h)
        im = im.resize((max(size, round(w * s)), max(size, round(h * s))), Image.BICUBIC)
        left, top = (im.width - size) // 2, (im.height - size) // 2
        return np.asarray(im.crop((left, top, left + size, top + size)))


def load_train_data(world_dir: str | Path, *, size: int) -> TrainData:
    """Decode the world's ``train`` images (centre squares of side ``size``) and captions."""
    world = Path(world_dir)
    inst = _read_json(world / "annotations" / "instances_train.json")
    caps = _read_json(world / "annotations" / "captions_train.json")
    by_image: dict[int, list[str]] = {}
    for ann in sorted(caps["annotations"], key=lambda a: a["id"]):
        by_image.setdefault(ann["image_id"], []).append(ann["caption"])
    images = sorted(inst["images"], key=lambda r: r["id"])
    if not images or any(i["id"] not in by_image for i in images):
        raise DataError(f"{world}: every train image needs captions in captions_train.json")
    texts = [by_image[i["id"]] for i in images]
    names = [c["name"] for c in sorted(inst["categories"], key=lambda c: c["id"])]
    tok = build_tokenizer(words_of(vocab_texts(names, [t for ts in texts for t in ts])),
                          context_length=CONTEXT_LENGTH)
    per = 5
    flat = [ts[j % len(ts)] for ts in texts for j in range(per)]
    ids = torch.tensor([e.ids for e in tok.encode_batch(flat)], dtype=torch.int64)
    pixels = np.stack([_decode_square(world / "train" / i["file_name"], size) for i in images])
    info = _read_json(world / "world.json") if (world / "world.json").exists() else {}
    animals = torch.tensor([named_animal(ts) for ts in texts], dtype=torch.int64)
    return TrainData(torch.from_numpy(pixels).permute(0, 3, 1, 2).contiguous(),
                     ids.view(len(images), per, -1), tok, info, animals)


def _base(images: torch.Tensor, res: int) -> torch.Tensor:
    """Downscale the decoded squares once (antialiased) to 1.25x the model's input side."""
    side = math.ceil(res * 1.25)
    if images.shape[-1] <= side:
        return images
    out = [torch.nn.functional.interpolate(images[i:i + 512].float(), size=(side, side),
                                           mode="bilinear", antialias=True, align_corners=False)
           for i in range(0, len(images), 512)]
    return torch.cat(out).round_().clamp_(0, 255).to(torch.uint8)


def _augment(batch: torch.Tensor, res: int, scale: tuple[float, float],
             gen: torch.Generator) -> torch.Tensor:
    """Random resized crop + horizontal flip of uint8 squares, then CLIP normalisation.

    One batched ``affine_grid``/``grid_sample``: each sample's crop covers a random share
    ``scale`` of the square's area with an aspect ratio in [3/4, 4/3].
    """
    n = batch.shape[0]
    u = torch.rand(n, 5, generator=gen)
    area = scale[0] + (scale[1] - scale[0]) * u[:, 0]
    ratio = torch.exp(math.log(3 / 4) + (math.log(4 / 3) - math.log(3 / 4)) * u[:, 1])
    sx = torch.sqrt(area * ratio).clamp(max=1.0)  # half-widths in [-1, 1] grid units
    sy = torch.sqrt(area / ratio).clamp(max=1.0)
    tx, ty = (1 - sx) * (2 * u[:, 2] - 1), (1 - sy) * (2 * u[:, 3] - 1)
    flip = torch.where(u[:, 4] < 0.5, -1.0, 1.0)
    theta = torch.zeros(n, 2, 3)
    theta[:, 0, 0], theta[:, 0, 2] = sx * flip, tx
    theta[:, 1, 1], theta[:, 1, 2] = sy, ty
    grid = torch.nn.functional.affine_grid(theta, [n, 3, res, res], align_corners=False)
    out = torch.nn.functional.grid_sample(batch.float(), grid, mode="bilinear",
                                          padding_mode="border", align_corners=False)
    mean = torch.tensor(MEAN).view(1, 3, 1, 1) * 255.0
    std = torch.tensor(STD).view(1, 3, 1, 1) * 255.0
    return (out - mean) / std


def train_backbone(data: TrainData, cfg: TrainConfig) -> tuple[torch.nn.Module, dict]:
    """Train backbone ``cfg.name`` with AdamW on open_clip's ``ClipLoss`` plus
    ``cfg.same_animal_weight`` × :func:`same_animal_loss`; return it + stats."""
    from open_clip.loss import ClipLoss
    from open_clip.model import CLIP

    torch.set_num_threads(cfg.threads)
    torch.manual_seed(cfg.seed)
    mcfg = model_cfg(cfg.name, vocab_size=data.tokenizer.get_vocab_size())
    mcfg["text_cfg"].pop("hf_tokenizer_name")
    model = CLIP(**mcfg)
    res = mcfg["vision_cfg"]["image_size"]
    base = _base(data.images, res)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda k: min(1.0, (k + 1) / cfg.warmup)
                                              * 0.5 * (1 + math.cos(math.pi * k / cfg.steps)))
    loss_fn, gen = ClipLoss(), torch.Generator().manual_seed(cfg.seed)
    n, order, pos, losses = len(data.images), torch.empty(0, dtype=torch.int64), 0, []
    t0, c0 = time.perf_counter(), time.process_time()
    model.train()
    for step in range(cfg.steps):
        if step % 50 == 0 and step:
            click.echo(f"{cfg.name}: step {step}/{cfg.steps} loss {np.mean(losses[-50:]):.3f} "
                       f"{time.perf_counter() - t0:.0f} s", err=True)
        if pos + cfg.batch_size > len(order):
            order, pos = torch.randperm(n, generator=gen), 0
        idx = order[pos:pos + cfg.batch_size]
        pos += cfg.batch_size
        pick = torch.randint(0, data.tokens.shape[1], (len(idx),), generator=gen)
        images = _augment(base[idx], res, cfg.crop_scale, gen)
        img_f, txt_f, scale = model(images, data.tokens[idx, pick])
        loss = loss_fn(img_f, txt_f, scale)
        if cfg.same_animal_weight:
            loss = loss + cfg.same_animal_weight * same_animal_loss(
                img_f, txt_f, scale, data.animals[idx])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        with torch.no_grad():
            model.logit_scale.clamp_(0, math.log(100))
        losses.append(loss.item())
    model.eval()
    stats = {"steps": cfg.steps, "seconds": round(time.perf_counter() - t0, 1),
             "cpu_seconds": round(time.process_time() - c0, 1),
             "final_loss": round(float(np.mean(losses[-20:])), 4),
             "params": sum(p.numel() for p in model.parameters())}
    return model, stats


def _write_json(path: Path, obj: Any) -> None:
    """Write JSON atomically (sorted keys, trailing newline)."""
    write_json_atomic(path, obj)


def _swap_in(tmp: Path, final: Path) -> Path:
    """Replace folder ``final`` by the finished folder ``tmp`` (same parent): two renames."""
    old = final.with_name(f".{final.name}.old")
    shutil.rmtree(old, ignore_errors=True)
    if final.exists():
        os.replace(final, old)
    os.replace(tmp, final)
    shutil.rmtree(old, ignore_errors=True)
    return final


def save_backbone(model: torch.nn.Module, name: str, tokenizer: Any, record: dict,
                  out: str | Path) -> Path:
    """Write ``out/<name>/`` (config, fp16 safetensors, tokenizer, record), swapped in whole."""
    from safetensors.torch import save_file

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    mcfg = model_cfg(name, vocab_size=tokenizer.get_vocab_size())
    res = mcfg["vision_cfg"]["image_size"]
    config = {"model_cfg": mcfg, "preprocess_cfg": {
        "size": res, "mean": list(MEAN), "std": list(STD), "interpolation": "bicubic",
        "resize_mode": "shortest"}}
    tmp = Path(tempfile.mkdtemp(dir=out, prefix=f".{name}."))
    os.chmod(tmp, 0o755)
    state = {k: v.detach().to(torch.float16).contiguous() for k, v in model.state_dict().items()}
    save_file(state, str(tmp / "open_clip_model.safetensors"))
    os.chmod(tmp / "open_clip_model.safetensors", 0o644)
    _write_json(tmp / "open_clip_config.json", config)
    save_tokenizer(tokenizer, tmp)
    _write_json(tmp / RECORD_FILE, record)
    final = _swap_in(tmp, out / name)
    if out.resolve() == PACKAGE_DIR:  # keep open_clip's registry copy in step
        write_registry_config(final)
    return final


def write_registry_config(folder: str | Path) -> Path:
    """Write ``tiny/configs/<name>.json`` (what ``register_configs`` adds) from a folder."""
    folder = Path(folder)
    config = json.loads((folder / "open_clip_config.json").read_text(encoding="utf-8"))
    CONFIGS_DIR.mkdir(exist_ok=True)
    path = CONFIGS_DIR / f"{folder.name}.json"
    _write_json(path, config["model_cfg"])
    return path


def _figures(summary: dict, name: str, world_seed: Any) -> dict:
    """One backbone's share of an :func:`evaluate_world` summary."""
    return {
        "world_seed": world_seed,
        "n_images": summary["n_images"],
        "accuracy": round(summary["accuracy"][name], 4),
        "clean": round(summary["clean"][name], 4),
        "by_cause": {c: round(v[name], 4) for c, v in summary["by_cause"].items()},
        "disagreement": {k: round(v, 4) for k, v in summary["disagreement"].items()
                         if name in k.split("|")},
    }


def train_and_save(world_dir: str | Path, names: Sequence[str], *, seed: int = 0,
                   out: str | Path = PACKAGE_DIR, steps: dict[str, int] | None = None,
                   eval_worlds: Sequence[str | Path] = (), threads: int = 2) -> dict[str, dict]:
    """Train ``names`` on ``world_dir``'s train split, save them, and record val figures.

    Returns ``{name: record}`` (the content of each folder's ``clipindex.json``).

    Examples
    --------
    >>> train_and_save("demo_world", ["tiny-vit"], out="/tmp/ckpts")  # doctest: +SKIP
    """
    size = math.ceil(max(ARCHITECTURES[n]["vision_cfg"]["image_size"] for n in names) * 1.25)
    data = load_train_data(world_dir, size=size)
    folders = []
    for name in names:
        cfg = TrainConfig(name=name, seed=seed, steps=(steps or DEFAULT_STEPS)[name],
                          lr=DEFAULT_LR[name], crop_scale=DEFAULT_CROP[name],
                          threads=threads, same_animal_weight=DEFAULT_SAME_ANIMAL[name])
        model, stats = train_backbone(data, cfg)
        click.echo(f"{name}: {stats}", err=True)
        record = {
            "backbone": name, "world_version": data.world.get("generator_version"),
            "world_seed": data.world.get("seed"), "world_scale": data.world.get("scale"),
            "training_seed": seed,
            "train_images": len(data.images), "vocab_size": data.tokenizer.get_vocab_size(),
            **stats, "train_config": asdict(cfg),
        }
        folders.append(save_backbone(model, name, data.tokenizer, record, out))
        if len(names) > 1:  # early feedback before the joint evaluation below
            acc = evaluate_world(world_dir, folders[-1:], split="val")["accuracy"][name]
            click.echo(f"{name}: val accuracy {acc:.4f}", err=True)
    return record_figures(folders, world_dir, eval_worlds)


def record_figures(folders: Sequence[str | Path], world_dir: str | Path,
                   eval_worlds: Sequence[str | Path] = ()) -> dict[str, dict]:
    """Evaluate backbone folders together and write the figures into their records.

    ``val`` holds the figures on the training world's ``val`` split (never trained on);
    ``held_out_val`` one entry per world in ``eval_worlds``. Disagreement is measured
    between the folders given. Returns ``{name: record}``.
    """
    folders = [Path(f) for f in folders]
    records = {f.name: json.loads((f / RECORD_FILE).read_text(encoding="utf-8"))
               for f in folders}
    for name in records:
        records[name].pop("held_out_val", None)
    for i, world in enumerate([Path(world_dir), *map(Path, eval_worlds)]):
        summary = evaluate_world(world, folders, split="val")
        wseed = (_read_json(world / "world.json").get("seed")
                 if (world / "world.json").exists() else None)
        for name in records:
            fig = _figures(summary, name, wseed)
            if i == 0:
                records[name]["val"] = fig
            else:
                records[name].setdefault("held_out_val", []).append(fig)
        click.echo(f"val of {world}: {json.dumps(summary, indent=1)}", err=True)
    for folder in folders:
        _write_json(folder / RECORD_FILE, records[folder.name])
    return records


@click.command()
@click.option("--world", "world_dir", required=True,
              type=click.Path(exists=True, file_okay=False, path_type=Path),
              help="Demo world folder (trained on its train split only).")
@click.option("--name", "names", multiple=True, type=click.Choice(TINY_BACKBONES),
              help="Backbone to train (repeatable).")
@click.option("--all", "train_all", is_flag=True, help="Train all three tiny backbones.")
@click.option("--seed", default=0, show_default=True, help="Training seed.")
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), default=PACKAGE_DIR,
              show_default=True, help="Parent folder of the <name>/ checkpoint folders.")
@click.option("--steps", type=click.IntRange(min=1), default=None,
              help="Override the number of optimisation steps.")
@click.option("--eval-world", "eval_worlds", multiple=True,
              type=click.Path(exists=True, file_okay=False, path_type=Path),
              help="Extra world(s) whose val split is evaluated after training.")
@click.option("--threads", type=click.IntRange(min=1), default=2, show_default=True,
              help="torch CPU threads (1 is faster on an oversubscribed machine).")
def main(world_dir: Path, names: tuple[str, ...], train_all: bool, seed: int, out: Path,
         steps: int | None, eval_worlds: tuple[Path, ...], threads: int) -> None:
    """Train tiny CLIP backbones on a demo world and save them as open_clip folders."""
    chosen = list(TINY_BACKBONES) if train_all else list(dict.fromkeys(names))
    if not chosen:
        raise click.UsageError("Give --name NAME (repeatable) or --all.")
    step_map = {n: steps for n in chosen} if steps else None
    records = train_and_save(world_dir, chosen, seed=seed, out=out, steps=step_map,
                             eval_worlds=eval_worlds, threads=threads)
    for name, rec in records.items():
        click.echo(f"{name}: {rec['seconds']} s, val accuracy {rec['val']['accuracy']}")


if __name__ == "__main__":
    main()
