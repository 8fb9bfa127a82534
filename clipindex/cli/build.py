"""``clipindex build``: encode a dataset once per backbone into ``OUT/<dataset>/``."""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

import click

from clipindex.cli._app import main
from clipindex.cli._choices import (
    CPU_BATCH_GFLOPS,
    CPU_BATCH_RANGE,
    CUDA_BATCH_GFLOPS,
    CUDA_BATCH_RANGE,
    DECODES,
    TARGET_RECALL,
    TEXT_BATCH_SIZES,
)

#: ``--batch-size`` of build and add: how the default is chosen (static: ``--help``
#: imports no torch; :func:`clipindex.encode.tuning.choose_settings` is the rule).
BATCH_HELP = (
    "Images per batch. Default: chosen per backbone from its GFLOPs per image and the "
    f"device, a power of two holding about {CPU_BATCH_GFLOPS:,} GFLOPs on CPU "
    f"({CPU_BATCH_RANGE[0]}-{CPU_BATCH_RANGE[1]} images: 32 for ViT-B/32 and RN50, 256 "
    f"for the tiny backbones) and {CUDA_BATCH_GFLOPS:,} on CUDA ({CUDA_BATCH_RANGE[0]}-"
    f"{CUDA_BATCH_RANGE[1]}: 1024 for ViT-B/32, 256 for ViT-L/14@336px); the first note "
    "of an encoding says what was chosen.")
#: ``--shard-size`` of build and add.
SHARD_HELP = ("Rows per resumable shard (default: about 4096, a multiple of the batch size). "
              "Given, it must be a multiple of the batch size, given or chosen: checked "
              "before anything is written or any model loaded.")

_INDEX_KINDS = ("auto", "flat", "ivf", "hnsw", "pq", "ivfpq")


class _EchoHandler(logging.Handler):
    """Shows the store's progress notes (resumed shards, up to date) on stderr."""

    def emit(self, record: logging.LogRecord) -> None:
        click.echo(self.format(record), err=True)


@contextmanager
def _store_notes(verbose: bool) -> Iterator[None]:
    logger = logging.getLogger("clipindex.store")
    handler = _EchoHandler(level=logging.INFO)
    handler.addFilter(lambda r: verbose or "encoded shard" not in r.getMessage())
    old_level, old_propagate = logger.level, logger.propagate
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    # Our handler prints each note once: open_clip's module-level ``logging.info`` calls
    # give the root logger a stderr handler (``basicConfig``) that would print them again.
    logger.propagate = False
    try:
        yield
    finally:
        logger.removeHandler(handler)
        logger.setLevel(old_level)
        logger.propagate = old_propagate


def _summary(path: Path) -> str:
    m = json.loads((path / "manifest.json").read_text(encoding="utf-8"))
    speed = (m.get("timings") or {}).get("images_per_s")
    speed_text = f"{speed:,.0f} images/s" if speed else "no images encoded (up to date)"
    engine = ""
    if m.get("engine") == "ray":
        engine = f" (ray, {m.get('ray', {}).get('actors', '?')} encoder actor(s))"
    return (f"{path}: {m['n_images']} images, {m['n_captions']} captions, "
            f"{m['n_skipped']} skipped, dim {m['dim']}, {speed_text}{engine}, decode "
            f"{m.get('decode_route') or 'draft (not recorded)'}")


def _dataset_note(dataset_dir: Path) -> str | None:
    """What the summary says about the dataset: annotations naming unknown categories."""
    from clipindex.files import read_json

    unknown = read_json(dataset_dir / "dataset.json").get("unknown_category_ids")
    if not unknown:
        return None
    return (f"{dataset_dir}: {unknown['annotations']} annotation(s) name unknown category "
            f"ids (first: {', '.join(map(str, unknown['first_ids']))}); they were ignored")


def _facts(path: Path) -> dict:
    """What ``--json`` prints per backbone folder (from its manifest)."""
    m = json.loads((path / "manifest.json").read_text(encoding="utf-8"))
    keys = ("backbone_folder", "display_name", "weights", "n_images", "n_captions",
            "n_skipped", "dim", "dtype", "image_size", "params")
    return {"path": str(path), **{k: m.get(k) for k in keys},
            "decode_route": m.get("decode_route") or "draft",
            "index_kind": (m.get("index") or {}).get("kind"),
            "images_per_s": (m.get("timings") or {}).get("images_per_s")}


F = TypeVar("F", bound=Callable[..., Any])


def _is_location(value: str) -> bool:
    """A URL or a webdataset shard pattern: checked when it is read, not as a path."""
    return "://" in value or value.lower().endswith(".tar")


def _root(ctx: click.Context, param: click.Parameter, value: str | None) -> str | None:
    """--root: a URL, or an existing folder."""
    if value is None or "://" in value:
        return value
    if not Path(value).expanduser().is_dir():
        raise click.BadParameter(f"Directory '{value}' does not exist.")
    return value


def _storage_options(ctx: click.Context, param: click.Parameter,
                     values: tuple[str, ...]) -> dict[str, object]:
    """--storage-option KEY=VALUE (repeatable) -> fsspec options; YAML scalars
    (``true``, ``3``) are read as such, ``client_kwargs.region_name=x`` nests."""
    import yaml

    out: dict[str, object] = {}
    for item in values:
        key, sep, raw = item.partition("=")
        if not sep or not key.strip():
            raise click.BadParameter(f"{item!r} is not KEY=VALUE")
        try:
            value = yaml.safe_load(raw) if raw else ""
        except yaml.YAMLError:
            value = raw
        *parents, leaf = key.strip().split(".")
        node = out
        for part in parents:
            node = node.setdefault(part, {})  # type: ignore[assignment]
        node[leaf] = value if isinstance(value, (str, int, float, bool)) else raw
    return out


def storage_option_flags(command: F) -> F:
    """The --storage-option / --label-field options that build and add share."""
    command = click.option(
        "--label-field", metavar="FIELD",
        help="webdataset shards: the member (cls, txt, ...) or .json key holding the "
             "label (default cls).")(command)
    return storage_option_flag(command)


def storage_option_flag(command: F) -> F:
    """--storage-option KEY=VALUE (repeatable): build, add, import, export, serve, dedup."""
    return click.option(
        "--storage-option", "storage_options", multiple=True, metavar="KEY=VALUE",
        callback=_storage_options,
        help="fsspec option of every URL (repeatable): endpoint_url=http://..., anon=true, "
             "key=..., secret=... (default: credentials from the environment).")(command)


def _config_source(ctx: click.Context, param: click.Parameter, value: str) -> str:
    """A shipped config's name passes; any other CONFIG must exist (click's usage error),
    unless it is a URL or a shard pattern."""
    from clipindex.config import resolve_config_source
    from clipindex.errors import ConfigError

    if _is_location(value):
        return value
    try:
        path = resolve_config_source(value, "dataset")
    except ConfigError as exc:
        raise click.BadParameter(str(exc)) from None
    if not (path.exists() or path.is_symlink()):
        raise click.BadParameter(f"Path '{value}' does not exist (and is no shipped config "
                                 "name: clipindex configs lists them).")
    return value


@main.command("build")
@click.argument("config", callback=_config_source)
@click.option("--backbone", "backbones", multiple=True, required=True,
              help="Backbone to build (repeatable): ViT-B/32, RN50, tiny-vit, ...")
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), default="indexes",
              show_default=True, help="Store root; the dataset goes to OUT/<dataset>.")
@click.option("--root", callback=_root,
              help="Data root (a folder or a URL), replacing the config's root.")
@click.option("--pretrained", default="default", show_default=True,
              help="Pretrained tag, 'none' (random init) or a local checkpoint path.")
@click.option("--batch-size", type=int, help=BATCH_HELP)
@click.option("--text-batch-size", type=int,
              help=f"Captions per batch (default: {TEXT_BATCH_SIZES[0]} on CPU, "
                   f"{TEXT_BATCH_SIZES[1]} on CUDA).")
@click.option("--workers", type=click.IntRange(min=0),
              help="Decoding processes (0: decode in-process; default: chosen from the "
                   "cores and the model's cost).")
@click.option("--threads", type=int,
              help="torch threads while encoding (default: the cores the workers leave).")
@click.option("--decode", type=click.Choice(DECODES),
              help="pil: PIL in the workers; nvjpeg: nvJPEG on the device (both full "
                   "decodes: open_clip's own vectors); draft: PIL's reduced-scale JPEG "
                   "decode, faster but not open_clip's pixels (README 'Decode route'). "
                   "Default: nvjpeg on CUDA, pil on CPU; a built store keeps its route "
                   "unless --rebuild.")
@click.option("--device", type=click.Choice(["cpu", "cuda"]), help="Default: cuda if available.")
@click.option("--strict", is_flag=True, help="Fail on the first unreadable image.")
@click.option("--index-kind", type=click.Choice(_INDEX_KINDS), default="auto", show_default=True,
              help="FAISS index: auto (exact flat for small stores, else IVF / IVF-PQ tuned "
                   "to --target-recall), exact flat, or approximate (recall@10 in the manifest).")
@click.option("--target-recall", type=click.FloatRange(0, 1, min_open=True),
              default=TARGET_RECALL,
              show_default=True, help="auto: recall@10 vs exact search the knobs are tuned to.")
@click.option("--max-index-memory", default=None,
              help="auto: memory budget of each FAISS index (e.g. 4GB); over it, IVF-PQ.")
@click.option("--dtype", type=click.Choice(["float32", "float16"]), default="float32",
              show_default=True, help="Storage precision of the vectors.")
@click.option("--shard-size", type=int, help=SHARD_HELP)
@click.option("--rebuild", is_flag=True,
              help="Replace a store built from another version of the dataset.")
@click.option("--allow-outside-root", is_flag=True,
              help="Accept image paths that resolve outside the data root (recorded in "
                   "dataset.json); refused by default.")
@click.option("--progress/--no-progress", default=True, show_default=True,
              help="Progress bars on stderr.")
@click.option("--verbose", "-v", is_flag=True, help="Log every finished shard.")
@click.option("--json", "as_json", is_flag=True,
              help="Print exactly one JSON document on stdout (notes go to stderr).")
@click.option("--engine", type=click.Choice(["local", "ray"]), default="local",
              show_default=True,
              help="local: this process; ray: encode on Ray Data (pip install "
                   "'clipindex[ray]'), a local Ray unless --ray-address/RAY_ADDRESS.")
@click.option("--ray-address", metavar="ADDRESS",
              help="Ray cluster to join (e.g. ray://head:10001 or auto); default RAY_ADDRESS, "
                   "else a local Ray for this build.")
@click.option("--encoders", type=int,
              help="Ray: encoder actors (default: one per GPU with --gpus-per-encoder, else 1).")
@click.option("--gpus-per-encoder", type=click.FloatRange(min=0), default=0.0,
              show_default=True, help="Ray: GPUs each encoder actor reserves (0: CPU actors).")
@storage_option_flags
def build_command(config: str, backbones: tuple[str, ...], out: Path, root: str | None,
                  pretrained: str, batch_size: int | None, text_batch_size: int | None,
                  workers: int | None, threads: int | None, decode: str | None,
                  device: str | None, strict: bool, index_kind: str, target_recall: float,
                  max_index_memory: str | None, dtype: str,
                  shard_size: int | None, rebuild: bool, allow_outside_root: bool,
                  progress: bool, verbose: bool, as_json: bool, engine: str,
                  ray_address: str | None, encoders: int | None,
                  gpus_per_encoder: float, storage_options: dict,
                  label_field: str | None) -> None:
    """Encode CONFIG's images and captions once per --backbone into FAISS indexes.

    CONFIG is a dataset YAML config, a folder with one sub-folder per class, a
    CSV/parquet manifest, webdataset shards (a pattern ending in .tar:
    'shards/{00000..00099}.tar', --label-field names the label), or the name of a config
    shipped with clipindex (demo, coco-animals, coco-animals-study; `clipindex configs`
    lists them). Any of them, and --root, may be a URL (s3://, gs://, http(s)://,
    file://; credentials from the environment or --storage-option). An interrupted
    build resumes from its finished shards.
    Asking a finished store for another --index-kind, or float32 -> float16, rewrites
    it from its stored vectors without encoding anything. Batch sizes, decode workers
    and torch threads are chosen per backbone from the cores, the model's GFLOPs and the
    device (one line says what was chosen); every one can be given.
    --engine ray encodes on a Ray cluster (docs/cluster.md) and writes the same store;
    either engine resumes the other.

    \b
      clipindex build demo --root worlds/demo --backbone tiny-vit --backbone tiny-rn
    """
    from clipindex.store.build import build_with_options
    from clipindex.store.plan import build_options

    # The library's settings, made (and checked) once; click checked only the types.
    opts = build_options(out, batch_size=batch_size, shard_size=shard_size, workers=workers,
                         threads=threads, text_batch_size=text_batch_size, decode=decode,
                         device=device, strict=strict, index_kind=index_kind,
                         target_recall=target_recall, max_index_memory=max_index_memory,
                         dtype=dtype, rebuild=rebuild, progress=progress, engine=engine,
                         ray_address=ray_address, encoders=encoders,
                         gpus_per_encoder=gpus_per_encoder)
    with _store_notes(verbose):
        paths = build_with_options(config, list(backbones), opts, root=root,
                                   pretrained=pretrained, allow_outside_root=allow_outside_root,
                                   storage_options=storage_options or None,
                                   label_field=label_field)
    if as_json:
        click.echo(json.dumps({"backbones": [_facts(p) for p in paths]}))
        return
    for path in paths:
        click.echo(_summary(path))
    if paths:
        note = _dataset_note(paths[0].parent)
        if note:
            click.echo(note)
