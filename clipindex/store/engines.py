"""The engines that encode a build's shards: one object per ``BuildOptions.engine``.

A build does the same work before and after encoding whichever engine encodes
(:mod:`clipindex.store.build`); what differs is behind one interface, :class:`Engine`,
chosen once by :func:`engine_for` from the options' ``engine`` name:

- ``planning_device(opts)``: the device the settings are chosen for before any model
  loads (:func:`~clipindex.store.plan.plan_encoding`);
- ``fixed_batch(opts)``: a batch size the engine fixes when none is given, and why;
- ``encoder_device(opts)``: where the build's own encoder loads (a Ray driver needs
  the model only for its facts: the CPU);
- ``session(opts)``: a context the encoding runs in (a Ray build joins or starts Ray;
  the build enters it only once a backbone needs encoding);
- ``encode(dataset, target, encoder, img, cap, opts, settings, counter)``: every
  unfinished image and caption shard encoded; the timings for the manifest (a Ray
  build adds its ``ray`` record).

:class:`LocalEngine` encodes in this process (:mod:`clipindex.store.shards`),
:class:`RayEngine` on Ray Data (:mod:`clipindex.store.ray_engine`).
"""

from __future__ import annotations

import sys
import time
from collections.abc import Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager, nullcontext
from pathlib import Path
from typing import Any, Protocol

from clipindex.checks import choice
from clipindex.store.manifest import Target
from clipindex.store.ray_engine import encode_with_ray, import_ray, ray_session
from clipindex.store.shards import ShardCounter, Shards, encode_captions, encode_images

#: A :class:`clipindex.store.plan.BuildOptions` (plan imports this module to pick the
#: engine, so the type is named here, not imported: no import cycle).
BuildOptions = Any

__all__ = ["ENGINES", "Engine", "LocalEngine", "RayEngine", "engine_for", "image_inputs"]


def image_inputs(dataset: Any, files: Sequence[str] | None = None
                 ) -> tuple[list[str], Any]:
    """What the encoder reads for ``files`` (default: every row's ``file``): local paths
    under the data root, or, for a source with a reader (shards, parquet, URLs), the
    files themselves and that reader."""
    rel = dataset.images["file"].astype(str).tolist() if files is None else list(files)
    reader = getattr(dataset, "reader", None)
    if reader is not None:
        return rel, reader
    return [str(Path(dataset.root) / f) for f in rel], None


class Engine(Protocol):
    """What a build asks of the engine that encodes (module docstring)."""

    name: str

    def check(self, opts: BuildOptions) -> None: ...
    def planning_device(self, opts: BuildOptions) -> str: ...
    def fixed_batch(self, opts: BuildOptions) -> tuple[int | None, str]: ...
    def encoder_device(self, opts: BuildOptions) -> str | None: ...
    def session(self, opts: BuildOptions) -> AbstractContextManager[Any]: ...
    def encode(self, dataset: Any, target: Target, encoder: Any, img: Shards, cap: Shards,
               opts: BuildOptions, settings: dict[str, Any], counter: ShardCounter
               ) -> dict[str, Any]: ...


class LocalEngine:
    """Encodes in this process: batched decode workers feeding the build's encoder."""

    name = "local"

    def check(self, opts: BuildOptions) -> None:
        """Nothing beyond the options' own checks."""

    def planning_device(self, opts: BuildOptions) -> str:
        """``--device`` resolved here, so ``cuda`` without CUDA fails before writing."""
        from clipindex.encode import resolve_device

        return resolve_device(opts.device).type

    def fixed_batch(self, opts: BuildOptions) -> tuple[int | None, str]:
        return opts.batch_size, ""

    def encoder_device(self, opts: BuildOptions) -> str | None:
        return opts.device

    def session(self, opts: BuildOptions) -> AbstractContextManager[Any]:
        return nullcontext()

    def encode(self, dataset: Any, target: Target, encoder: Any, img: Shards, cap: Shards,
               opts: BuildOptions, settings: dict[str, Any], counter: ShardCounter
               ) -> dict[str, Any]:
        from clipindex.progress import bar as tqdm

        rel = dataset.images["file"].astype(str).tolist()
        files, reader = image_inputs(dataset)
        with tqdm(total=img.n, initial=img.done_rows, desc=f"{target.name} images",
                  unit="img", disable=not opts.progress, file=sys.stderr) as bar:
            t0 = time.perf_counter()
            knobs = {k: settings.get(k) for k in ("threads", "decode") if settings.get(k)}
            if reader is not None:
                knobs["reader"] = reader
            n_img = encode_images(encoder, img, files, rel,
                                  batch_size=int(settings["batch_size"]),
                                  workers=settings.get("workers"), strict=opts.strict,
                                  counter=counter, bar=bar, **knobs)
            t_img = time.perf_counter() - t0
        with tqdm(total=cap.n, desc=f"{target.name} captions", unit="txt",
                  disable=not opts.progress, file=sys.stderr) as bar:
            t0 = time.perf_counter()
            texts = dataset.captions["text"].astype(str).tolist()
            n_cap = encode_captions(encoder, cap, texts, counter, bar,
                                    batch_size=settings.get("text_batch_size"),
                                    threads=settings.get("threads"))
            t_cap = time.perf_counter() - t0
        return {
            "image_encode_seconds": round(t_img, 4), "images_encoded": n_img,
            "images_per_s": round(n_img / t_img, 2) if n_img and t_img > 0 else None,
            "caption_encode_seconds": round(t_cap, 4), "captions_encoded": n_cap,
        }


class RayEngine:
    """Encodes on Ray Data (:func:`~clipindex.store.ray_engine.encode_with_ray`); the
    driver chooses settings on the CPU and its actors resolve their own device."""

    name = "ray"

    def check(self, opts: BuildOptions) -> None:
        """A missing ``ray`` extra fails before anything is written."""
        import_ray()

    def planning_device(self, opts: BuildOptions) -> str:
        return "cpu"

    def fixed_batch(self, opts: BuildOptions) -> tuple[int | None, str]:
        """The GPU actors' default batch when none is given (the CPU driver's choice
        would not fit them)."""
        if opts.batch_size is None and opts.ray.gpus_per_encoder > 0:
            from clipindex.encode import DEFAULT_BATCH_SIZE

            return DEFAULT_BATCH_SIZE["cuda"], "the default of GPU encoder actors"
        return opts.batch_size, ""

    def encoder_device(self, opts: BuildOptions) -> str | None:
        return "cpu"  # the driver needs the model only for its facts (dim, preprocessing)

    def session(self, opts: BuildOptions) -> AbstractContextManager[Any]:
        return ray_session(opts.ray.address)

    def encode(self, dataset: Any, target: Target, encoder: Any, img: Shards, cap: Shards,
               opts: BuildOptions, settings: dict[str, Any], counter: ShardCounter
               ) -> dict[str, Any]:
        from clipindex.progress import bar as tqdm

        @contextmanager
        def bars(total: int, initial: int, what: str) -> Iterator[Any]:
            with tqdm(total=total, initial=initial, desc=f"{target.name} {what}",
                      unit="row", disable=not opts.progress, file=sys.stderr) as bar:
                yield bar

        device = opts.device or ("cuda" if opts.ray.gpus_per_encoder > 0 else "cpu")
        batch = int(settings["batch_size"])
        return encode_with_ray(dataset, target.spec, encoder, img, cap, batch=batch,
                               text_batch=int(settings.get("text_batch_size") or batch),
                               device=device, strict=opts.strict,
                               progress=opts.progress, counter=counter, ray_opts=opts.ray,
                               bars=bars, threads=settings.get("threads") if device == "cpu"
                               else None)


#: The engines by ``BuildOptions.engine`` name.
ENGINES: dict[str, Engine] = {"local": LocalEngine(), "ray": RayEngine()}


def engine_for(name: str) -> Engine:
    """The :class:`Engine` named ``name`` (``BuildOptions.engine``)."""
    return ENGINES[choice("engine", name, ENGINES)]
