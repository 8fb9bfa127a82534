"""The settings of a build or an add, resolved and checked before anything is written.

:class:`BuildOptions` holds every knob a caller gives (``clipindex build``/``add`` and
:func:`~clipindex.store.build_store`/:func:`~clipindex.store.add_to_store` alike) and
checks each one on its own when it is made. :func:`plan_encoding` then resolves what
the build will actually use per backbone, and checks the knobs against it: the device
(``--device cuda`` without CUDA), the batch size the build would choose when none is
given (from the model's GFLOPs on that device, read off its skeleton without loading
weights: :mod:`clipindex.encode.facts`) against ``--shard-size``, and
``--max-index-memory`` against the store's rows and the model's dimension. Both
:func:`~clipindex.store.build_store` and :func:`~clipindex.store.add_to_store` call it
before they take the dataset folder's lock, so a bad combination leaves the output
folder exactly as it was (not even created) and loads no model.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from clipindex.checks import choice, non_negative_int, positive_int
from clipindex.errors import UserInputError
from clipindex.index.tuning import (
    DEFAULT_TARGET_RECALL,
    AutoSettings,
    choose_index,
    parse_memory,
)
from clipindex.store.engines import Engine, engine_for
from clipindex.store.manifest import DTYPES, MANIFEST, Target
from clipindex.store.ray_engine import RayOptions

__all__ = ["DEFAULT_SHARD_ROWS", "BuildOptions", "EncodePlan", "build_options",
           "chosen_settings", "options", "plan_encoding"]

log = logging.getLogger("clipindex.store")

#: Rows per shard when ``shard_size`` is not given (rounded down to a multiple of the batch).
DEFAULT_SHARD_ROWS = 4096


@dataclass(frozen=True)
class BuildOptions:
    """Every knob of a build (or an add), checked on its own when made."""

    out: Path
    batch_size: int | None
    shard_size: int | None
    workers: int | None
    threads: int | None
    text_batch_size: int | None
    decode: str | None
    device: str | None
    strict: bool
    index_kind: str
    dtype: str
    progress: bool
    engine: str = "local"
    ray: RayOptions = field(default_factory=RayOptions)
    rebuild: bool = False
    auto: AutoSettings = AutoSettings()

    def __post_init__(self) -> None:
        from clipindex.encode import DECODES
        from clipindex.index.kinds import INDEX_KINDS

        for name in ("batch_size", "shard_size", "threads", "text_batch_size"):
            if getattr(self, name) is not None:
                positive_int(name, getattr(self, name))
        if self.workers is not None:
            non_negative_int("workers", self.workers)
        if self.batch_size and self.shard_size and self.shard_size % self.batch_size:
            raise UserInputError(f"shard_size ({self.shard_size}) must be a positive "
                                 f"multiple of batch_size ({self.batch_size})")
        choice("index kind", self.index_kind, ("auto", *INDEX_KINDS))
        if self.decode is not None:
            choice("decode", self.decode, DECODES)
        choice("dtype", self.dtype, DTYPES)
        self.ray.check()
        self.runner.check(self)  # e.g. a missing ray extra, before anything is written

    @property
    def runner(self) -> Engine:
        """The :class:`~clipindex.store.engines.Engine` that encodes (``engine``)."""
        return engine_for(self.engine)


def options(out: Any, batch_size: int | None, shard_size: int | None, **kw: Any
            ) -> BuildOptions:
    """:class:`BuildOptions` from a caller's values (integers as integers)."""
    ints: dict[str, int | None] = {
        name: None if kw.get(name) is None else int(kw[name])
        for name in ("workers", "threads", "text_batch_size") if name in kw}
    return BuildOptions(out=Path(out), batch_size=None if batch_size is None else int(batch_size),
                        shard_size=None if shard_size is None else int(shard_size),
                        **{**kw, **ints})


def build_options(out: Any = "indexes", *, batch_size: int | None = None,
                  shard_size: int | None = None, workers: int | None = None,
                  threads: int | None = None, text_batch_size: int | None = None,
                  decode: str | None = None, device: str | None = None, strict: bool = False,
                  index_kind: str = "auto", target_recall: float = DEFAULT_TARGET_RECALL,
                  max_index_memory: int | str | None = None, dtype: str = "float32",
                  rebuild: bool = False, progress: bool = True, engine: str = "local",
                  ray_address: str | None = None, encoders: int | None = None,
                  gpus_per_encoder: float = 0.0, ray_hooks: dict[str, Any] | None = None
                  ) -> BuildOptions:
    """:class:`BuildOptions` from :func:`~clipindex.store.build_store`'s keywords (the
    same names and defaults), checked once: what ``clipindex build`` makes and hands to
    :func:`~clipindex.store.build.build_with_options`."""
    ray_opts = RayOptions(address=ray_address, encoders=encoders,
                          gpus_per_encoder=float(gpus_per_encoder), **(ray_hooks or {}))
    auto = AutoSettings(target_recall=float(target_recall),
                        max_memory=parse_memory(max_index_memory))
    return options(out, batch_size, shard_size, workers=workers, threads=threads,
                   text_batch_size=text_batch_size, decode=decode, device=device,
                   strict=strict, index_kind=index_kind, dtype=dtype, progress=progress,
                   engine=engine, ray=ray_opts, auto=auto, rebuild=bool(rebuild))


@dataclass(frozen=True)
class EncodePlan:
    """One backbone's encoding as checked before the build writes anything.

    ``device``: the device its settings are chosen for (``cpu``/``cuda``; a Ray driver
    chooses on ``cpu``); ``batch_size``: fixed before the model loads (given, the Ray
    GPU actors' default, or chosen from the model's facts because a shard size was
    given), else ``None`` (chosen from the loaded model by the same rule);
    ``shard_size``: given, else ``None`` (~:data:`DEFAULT_SHARD_ROWS` rows aligned to
    the batch).
    """

    device: str
    batch_size: int | None
    shard_size: int | None

    def sizes(self, chosen_batch: int) -> tuple[int, int]:
        """(batch, shard): the planned batch, else ``chosen_batch``, and the shard."""
        batch = self.batch_size or int(chosen_batch)
        shard = self.shard_size or batch * max(1, DEFAULT_SHARD_ROWS // batch)
        if shard % batch:  # plan_encoding refused this pair: never the user's input here
            raise RuntimeError(f"shard size {shard} is no multiple of batch size {batch}")
        return batch, shard


def _given(opts: BuildOptions) -> dict[str, Any]:
    return {"batch_size": opts.batch_size, "workers": opts.workers, "threads": opts.threads,
            "text_batch_size": opts.text_batch_size, "decode": opts.decode}


def _device(opts: BuildOptions) -> str:
    """The device settings are chosen for, resolved by the engine before anything is
    written (``--device cuda`` without CUDA fails here; a Ray driver chooses on the
    CPU, its actors resolve their own device on the cluster)."""
    return opts.runner.planning_device(opts)


def _plan_one(opts: BuildOptions, target: Target, device: str) -> EncodePlan:
    batch, why = opts.runner.fixed_batch(opts)
    if batch is None and opts.shard_size is not None:
        from clipindex.encode import facts

        batch = facts.planned_settings(target.spec, device, **_given(opts)).batch_size
        why = f"chosen for {target.spec.display} on {device}"
    if opts.shard_size is not None and batch is not None and opts.shard_size % batch:
        raise UserInputError(
            f"shard_size ({opts.shard_size}) must be a positive multiple of batch_size "
            f"({batch}, {why}); pass --batch-size, or a --shard-size that is a multiple "
            f"of {batch}")
    return EncodePlan(device=device, batch_size=batch, shard_size=opts.shard_size)


def plan_encoding(opts: BuildOptions, targets: Sequence[Target], *, n_images: int,
                  n_captions: int, dataset_dir: Path | None = None
                  ) -> dict[str, EncodePlan]:
    """Each backbone's :class:`EncodePlan` (by folder), every knob checked against what
    the build will use; the one place a build or an add refuses a combination.

    The model's skeleton (:func:`clipindex.encode.facts.model_facts`, no weights) is
    built only when a check needs it: a ``shard_size`` without ``batch_size``, or an
    ``auto`` index with a memory budget (checked with the rows the store will hold).
    With ``dataset_dir``, a backbone without a finished store there will be encoded, so
    its pretrained tag's weights must be cached or fetchable
    (:func:`clipindex.encode.hub.check_weights`).
    """
    device = _device(opts)
    plans = {}
    for target in targets:
        plans[target.folder] = _plan_one(opts, target, device)
        spec = target.spec
        if (dataset_dir is not None and spec.source == "tag" and spec.pretrained
                and not (dataset_dir / target.folder / MANIFEST).exists()):
            from clipindex.encode import hub

            hub.check_weights(spec.model, spec.pretrained, spec.display)
        if opts.index_kind == "auto" and opts.auto.max_memory is not None:
            from clipindex.encode import facts

            dim = facts.model_facts(target.spec).embed_dim
            for n in (n_images, n_captions):
                choose_index(n, dim, opts.auto)  # a budget too small: one line, now
    return plans


def chosen_settings(opts: BuildOptions, encoder: Any, plan: EncodePlan) -> dict[str, Any]:
    """The encoding knobs: the encoder's choice (:meth:`Encoder.settings`, from the
    cores, the model's GFLOPs and the device) with what the caller gave on top, the
    batch (and shard) being the plan's."""
    given = _given(opts)
    choose = getattr(encoder, "settings", None)
    if choose is None:  # an encoder without a chooser: its default batch, the rest given
        chosen = {**given, "batch_size": opts.batch_size or int(encoder.default_batch_size)}
    else:
        picked = choose(**given)
        log.info("%s", picked.note(encoder.spec.display))
        chosen = picked.as_dict()
    chosen["batch_size"] = plan.sizes(chosen["batch_size"])[0]
    return chosen
