"""``clipindex build``'s encoding with its default settings vs the study's one-image-at-a-time loop.

All paths use the same weights (random-initialised by default: ``--pretrained none``
costs the same compute as pretrained weights) and the same JPEG files of a demo world, in
the same run. The loop runs open_clip's model as open_clip builds it (the study's model);
the build paths run the :class:`Encoder`'s copy (for ResNets: ``channels_last`` and the
BatchNorms folded into the convolutions), so the loop is not credited with them:

- baseline, the study's loop: for each file ``Image.open``, open_clip's ``preprocess``,
  ``model.encode_image`` on a batch of one under ``torch.no_grad`` (fp32), normalise —
  with torch's default threads, as the study ran it;
- contender, what ``clipindex build`` runs with no flags: ``Encoder.encode_images`` with
  the settings the encoder chooses from the cores, the model's GFLOPs and the device
  (batch size, decode workers, torch threads, channels_last for ResNets; the build's own
  thread settings, not the benchmark's);
- the compute limit: model-only, the same batched ``encode_pixels`` on crops decoded
  beforehand (not timed), same batch size and threads: how close the pipeline gets.

Also in the same run: model creation from a local checkpoint file, open_clip's way
(every weight initialised, then overwritten) vs clipindex's (``no_weight_init``), and
``--pretrained none`` creation (unchanged: seeded full init); caption encoding
(length-sorted, trimmed batches vs open_clip's 77-token ``encode_text`` in batches of
the same size). On CUDA (``--device cuda``: ViT-B-32 and ViT-L-14-336 from 12k JPEGs)
the contenders are the PIL uint8 route and the nvJPEG route. With ``--repeats R`` paths
alternate R times and median rates are used.

``--decode-routes`` times only the build's decoders, back to back: the default (a full
decode, open_clip's own pixels) vs ``--decode draft`` (JPEG draft mode), alternating
rounds, with the cosine of the draft vectors to the default ones (section
``bench_encode_decode_<device>``).

Run: ``python benchmarks/bench_encode.py`` (CPU: ViT-B/32, RN50, ViT-B/16, RN50x4; 300
images, 100 for the larger two; ~15 minutes on 2 idle cores), ``--device cuda`` on a
GPU machine, or ``--quick``.
"""

from __future__ import annotations

import statistics
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as common  # noqa: E402

#: Per device type: default backbones, images (per backbone), baseline images.
DEFAULTS: dict[str, dict[str, Any]] = {
    "cpu": {"backbones": "ViT-B-32:300,RN50:300,ViT-B-16:100,RN50x4:100", "images": None,
            "baseline_images": None, "scale": "small", "captions": 500},
    "cuda": {"backbones": "ViT-B-32,ViT-L-14-336", "images": 12000, "baseline_images": 1000,
             "scale": "default", "captions": 20000},
}
GPU_GOALS = {"ViT-B/32": 4000, "ViT-L/14@336": 950}


def image_files(world: Path, n: int) -> list[Path]:
    """The first ``n`` JPEG files of a demo world (train then val, sorted), repeated
    when the world has fewer."""
    files = sorted(world.glob("train/*.jpg")) + sorted(world.glob("val/*.jpg"))
    if not files:
        raise SystemExit(f"no JPEG files under {world}")
    return [files[i % len(files)] for i in range(n)]


def study_loop(encoder: Any, files: list[Path], model: Any = None) -> np.ndarray:
    """The study's way: open, preprocess, encode a batch of one, normalise — per image.
    ``model``: open_clip's model as created (fp32, default memory format, BatchNorms;
    :func:`encoder_and_plain_model`); default the Encoder's own."""
    import torch
    from PIL import Image

    preprocess, device = encoder.preprocess, encoder.device
    model = encoder.model if model is None else model
    out = []
    # On CUDA the loop runs under the build's autocast, as it did when it shared the
    # build's fp16 model (fp32 on CPU: autocast is off).
    with torch.no_grad(), encoder._autocast():
        for path in files:
            image = preprocess(Image.open(path)).unsqueeze(0).to(device)
            features = model.encode_image(image)
            features = features / features.norm(dim=-1, keepdim=True)
            out.append(features.float().cpu().numpy()[0])
    return np.stack(out)


def encoder_and_plain_model(name: str, pretrained: str, device: str | None
                            ) -> tuple[Any, Any]:
    """The build's :class:`Encoder` and, beside it, an untouched copy of the same open_clip
    model (the study's: the Encoder turns a ResNet to ``channels_last`` and folds its
    BatchNorms, which the study's code never did)."""
    import copy

    from clipindex.encode.backbones import resolve_backbone
    from clipindex.encode.create import create_model
    from clipindex.encode.encoder import Encoder, resolve_device, resolve_precision

    spec = resolve_backbone(name, pretrained)
    where = resolve_device(device)
    model, preprocess, tokenizer = create_model(spec, where)
    plain = copy.deepcopy(model).eval().requires_grad_(False)
    return Encoder(spec, model, tokenizer, preprocess, where,
                   resolve_precision(where, None)), plain


def build_defaults(encoder: Any, files: list[Path], **knobs: Any) -> np.ndarray:
    """What ``clipindex build`` runs with no flags (``knobs``: the GPU decode route)."""
    vectors, skipped = encoder.encode_images([str(f) for f in files], progress=False, **knobs)
    if skipped:
        raise SystemExit(f"{len(skipped)} files failed to decode: {skipped[:3]}")
    return vectors


def _crop(step: Any, path: str) -> np.ndarray:
    return step(path)[0].numpy()


def decoded_crops(encoder: Any, files: list[Path]) -> Any:
    """The uint8 crops of ``files`` for model-only (decoded beforehand, not timed): each
    distinct file once, in worker processes when there are many (12k files on a GPU
    machine would take minutes in one process)."""
    import functools
    import os
    from concurrent.futures import ProcessPoolExecutor

    import torch

    unique = sorted({str(f) for f in files})
    step = functools.partial(_crop, encoder._pipeline.from_file)
    if len(unique) < 1000:
        arrays = [step(f) for f in unique]
    else:  # numpy back from the workers (torch tensors would travel as shared-memory fds)
        with ProcessPoolExecutor(max_workers=min(16, os.cpu_count() or 1)) as pool:
            arrays = list(pool.map(step, unique, chunksize=32))
    where = {f: i for i, f in enumerate(unique)}
    stacked = np.stack(arrays)
    return torch.from_numpy(stacked[[where[str(f)] for f in files]])


def model_only(encoder: Any, crops: Any, settings: Any) -> np.ndarray:
    """Batched ``encode_pixels`` on crops already decoded: the compute limit."""
    from clipindex.encode.tuning import torch_threads

    parts = []
    with torch_threads(settings.threads):
        for begin in range(0, len(crops), settings.batch_size):
            parts.append(encoder.encode_pixels(crops[begin:begin + settings.batch_size]))
    return np.concatenate(parts)


def _sync(encoder: Any) -> None:
    import torch

    if encoder.device.type == "cuda":
        torch.cuda.synchronize(encoder.device)


def _timed(encoder: Any, runs: dict[str, Any], counts: dict[str, int], repeats: int,
           first: str, name: str) -> tuple[dict[str, float], dict[str, np.ndarray]]:
    order = [first, *(k for k in runs if k != first)]
    rates: dict[str, list[float]] = {k: [] for k in runs}
    vectors: dict[str, np.ndarray] = {}
    for i in range(repeats):
        for key in order if i % 2 == 0 else order[::-1]:
            common.log(f"encode: {name} {key} ({counts[key]} images)")
            _sync(encoder)
            with common.stopwatch() as t:
                vectors[key] = runs[key]()
                _sync(encoder)
            rates[key].append(counts[key] / t["s"])
    return {k: statistics.median(v) for k, v in rates.items()}, vectors


def bench_backbone(name: str, n_images: int, args: Any, world: Path,
                   first: str) -> dict[str, Any]:
    """Time the loop, the build's defaults and model-only on one backbone."""
    files = image_files(world, n_images)
    common.log(f"encode: loading {name} ({args.pretrained})")
    encoder, plain = encoder_and_plain_model(name, args.pretrained, args.device)
    settings = encoder.settings()
    common.log("encode: " + settings.note(encoder.spec.display))
    base_files = files[:args.baseline_images] if args.baseline_images else files
    crops = decoded_crops(encoder, files)
    runs: dict[str, Any] = {
        "loop": lambda: study_loop(encoder, base_files, plain),
        "build": lambda: build_defaults(encoder, files),
        "model_only": lambda: model_only(encoder, crops, settings),
    }
    if args.kind == "cuda":
        runs["build_pil"] = lambda: build_defaults(encoder, files, decode="pil")
    counts = {k: len(base_files) if k == "loop" else len(files) for k in runs}
    study_loop(encoder, files[:2], plain)  # warm-up: first-call allocations, thread pools
    build_defaults(encoder, files[:2], workers=0)
    rates, vectors = _timed(encoder, runs, counts, args.repeats, first, name)
    n = len(vectors["loop"])
    cosine = _cos(vectors["loop"], vectors["build"][:n])
    same = _cos(vectors["model_only"], vectors["build"])
    return {"backbone": encoder.spec.display, "params_m": encoder.params / 1e6,
            "image_size": encoder.image_size, "gflops": encoder.gflops,
            "settings": settings, "precision": encoder.precision, "n": counts,
            "rates": rates, "cosine_min": float(cosine.min()),
            "same_tensors_min": float(same.min()), "encoder": encoder}


def bench_decode_routes(name: str, n_images: int, args: Any, world: Path,
                        first: str) -> dict[str, Any]:
    """The build's default decoder vs ``--decode draft`` on one backbone, same files."""
    from clipindex.encode import load_encoder

    files = image_files(world, n_images)
    common.log(f"encode: loading {name} ({args.pretrained})")
    encoder = load_encoder(name, pretrained=args.pretrained, device=args.device)
    settings = encoder.settings()
    runs = {"build": lambda: build_defaults(encoder, files),
            "build_draft": lambda: build_defaults(encoder, files, decode="draft")}
    build_defaults(encoder, files[:2], workers=0)  # warm-up
    rates, vectors = _timed(encoder, runs, {k: len(files) for k in runs}, args.repeats,
                            first, name)
    cos = _cos(vectors["build"], vectors["build_draft"])
    return {"backbone": encoder.spec.display, "image_size": encoder.image_size,
            "settings": settings, "n": len(files), "rates": rates,
            "cosine_min": float(cos.min()), "under": int((cos < 0.9999).sum())}


def report_decode(rows: list[dict[str, Any]], args: Any) -> tuple[list[str], list[str]]:
    lines = ["| backbone | input | images | default decode (img/s) | --decode draft (img/s) "
             "| draft / default | chosen settings | draft vs default: min cosine | "
             "cosine < 0.9999 |", "|---|---|---|---|---|---|---|---|---|"]
    ratios = []
    for r in rows:
        s, rate = r["settings"], r["rates"]
        lines.append(
            f"| {r['backbone']} | {r['image_size']} | {r['n']} | {rate['build']:.1f} | "
            f"{rate['build_draft']:.1f} | {rate['build_draft'] / rate['build']:.2f}x | "
            f"batch {s.batch_size}, {s.workers} worker(s), {s.threads} thread(s), "
            f"{s.decode} | {r['cosine_min']:.4f} | {r['under']} of {r['n']} |")
        ratios.append(common.ratio_line(
            rate["build_draft"] / rate["build"],
            f"{r['backbone']} {args.kind} build with --decode draft over the default "
            "(reference) decode, images/s"))
    return lines, ratios


def _cos(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.sum(a * b, axis=1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))


def bench_creation(name: str, args: Any) -> dict[str, float]:
    """Model creation: random init (unchanged), checkpoint with and without double init."""
    import torch

    from clipindex.encode import resolve_backbone
    from clipindex.encode.create import create_model

    device = torch.device(args.device)
    spec = resolve_backbone(name, "none")
    times: dict[str, list[float]] = {"none": [], "ckpt_open_clip": [], "ckpt_clipindex": []}
    start = time.perf_counter()
    model, _, _ = create_model(spec, device)
    times["none"].append(time.perf_counter() - start)
    path = Path(args.workdir) / f"{spec.model}-random.pt"
    torch.save(model.state_dict(), path)
    del model
    ckpt = resolve_backbone(name, str(path))
    for i in range(max(2, args.repeats)):
        for key in (["ckpt_open_clip", "ckpt_clipindex"] if i % 2 == 0
                    else ["ckpt_clipindex", "ckpt_open_clip"]):
            start = time.perf_counter()
            create_model(ckpt, device, skip_init=key == "ckpt_clipindex")
            times[key].append(time.perf_counter() - start)
    path.unlink(missing_ok=True)
    return {k: statistics.median(v) for k, v in times.items()}


def bench_captions(encoder: Any, world: Path, n: int, repeats: int) -> dict[str, float]:
    """Captions/s: clipindex's sorted, trimmed batches vs open_clip's padded encode_text."""
    import json

    import torch

    texts: list[str] = []
    for path in sorted((world / "annotations").glob("captions_*.json")):
        texts += [a["caption"] for a in json.loads(path.read_text())["annotations"]]
    texts = [texts[i % len(texts)] for i in range(n)]
    size = encoder.settings().text_batch_size

    def padded() -> np.ndarray:
        tokens = encoder.tokenizer(texts, context_length=encoder.context_length)
        with torch.no_grad():
            return np.concatenate([encoder.model.encode_text(tokens[b:b + size]).float().numpy()
                                   for b in range(0, n, size)])

    runs = {"padded": padded, "trimmed": lambda: encoder.encode_texts(texts, batch_size=size)}
    rates, vectors = _timed(encoder, runs, {"padded": n, "trimmed": n}, repeats, "padded",
                            "captions")
    rates["cosine_min"] = float(_cos(vectors["padded"], vectors["trimmed"]).min())
    return rates


def report(rows: list[dict[str, Any]], creation: dict[str, float] | None,
           captions: dict[str, float] | None, args: Any) -> tuple[list[str], list[str]]:
    """Markdown tables and ratio lines."""
    kind = args.kind
    lines = ["| backbone | params (M) | input | GFLOPs | images | study's loop (img/s) | "
             "build defaults (img/s) | model-only (img/s) | build / model-only | chosen "
             "settings | cosine to loop (min) | build vs model-only (min cos) |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    ratios = []
    for r in rows:
        s, rate = r["settings"], r["rates"]
        chosen = (f"batch {s.batch_size}, {s.workers} worker(s), {s.threads} thread(s)"
                  f"{', channels_last' if s.channels_last else ''}, {s.decode}")
        lines.append(
            f"| {r['backbone']} | {r['params_m']:.1f} | {r['image_size']} | {r['gflops']:.1f} | "
            f"{r['n']['build']} | {rate['loop']:.1f} | {rate['build']:.1f} | "
            f"{rate['model_only']:.1f} | {100 * rate['build'] / rate['model_only']:.0f}% | "
            f"{chosen} | {r['cosine_min']:.4f} | {r['same_tensors_min']:.6f} |")
        ratios.append(common.ratio_line(
            rate["build"] / rate["loop"],
            f"{r['backbone']} {kind} build (defaults) over the study's loop, images/s"))
        ratios.append(common.ratio_line(
            rate["build"] / rate["model_only"],
            f"{r['backbone']} {kind} build (defaults) over model-only on the same tensors, "
            "images/s"))
        if "build_pil" in rate:
            ratios.append(common.ratio_line(
                rate["build"] / rate["build_pil"],
                f"{r['backbone']} {kind} build with nvJPEG over PIL uint8 workers, images/s"))
    if kind == "cuda":
        lines += ["", "| GPU goal (issue #21, end to end from JPEG) | goal | measured |",
                  "|---|---|---|", *_goal_rows(rows)]
    if creation:
        lines += ["", f"Model creation of {rows[0]['backbone']} (s, median): "
                  f"`--pretrained none` {creation['none']:.2f} (seeded full init, unchanged); "
                  f"local checkpoint, open_clip's way (init then overwrite) "
                  f"{creation['ckpt_open_clip']:.2f}, clipindex's (no_weight_init) "
                  f"{creation['ckpt_clipindex']:.2f}."]
        ratios.append(common.ratio_line(
            creation["ckpt_open_clip"] / creation["ckpt_clipindex"],
            f"model creation from a local checkpoint (no double init) over open_clip's "
            f"create_model, {rows[0]['backbone']}, seconds"))
    if captions:
        lines += ["", f"Captions of {rows[0]['backbone']}: open_clip padded encode_text "
                  f"{captions['padded']:.1f} captions/s, sorted trimmed batches "
                  f"{captions['trimmed']:.1f} captions/s (min cosine "
                  f"{captions['cosine_min']:.6f})."]
        ratios.append(common.ratio_line(
            captions["trimmed"] / captions["padded"],
            f"caption encoding (length-sorted, trimmed batches) over open_clip's padded "
            f"encode_text, captions/s, {rows[0]['backbone']}"))
    return lines, ratios


def _goal_rows(rows: list[dict[str, Any]]) -> list[str]:
    """The GPU goals of the backbones measured: the build's default route (nvJPEG), met
    or not, and beside it the PIL route's rate."""
    out = []
    for r in rows:
        goal = next((g for b, g in GPU_GOALS.items() if r["backbone"].startswith(b)), None)
        if goal is not None:
            rate, pil = r["rates"]["build"], r["rates"].get("build_pil")
            out.append(f"| {r['backbone']} | ≥ {goal:,} img/s | {rate:,.0f} img/s: "
                       f"{'met' if rate >= goal else 'not met'}"
                       + (f" (PIL route {pil:,.0f})" if pil else "") + " |")
    return out


def _parse(argv: list[str] | None) -> Any:
    parser = common.base_parser(__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu", type=common.device_arg,
                        help="cpu, cuda or cuda:N")
    parser.add_argument("--backbones",
                        help="comma-separated NAME or NAME:IMAGES (default per device)")
    parser.add_argument("--pretrained", default="none",
                        help="none (random init, default), default, a tag or a checkpoint")
    parser.add_argument("--images", type=int, help="JPEG files per backbone (overrides)")
    parser.add_argument("--baseline-images", type=int,
                        help="files for the one-at-a-time loop (a prefix; default all on CPU, "
                             "1000 on CUDA where the loop is the slow part)")
    parser.add_argument("--captions", type=int, help="captions for the text comparison")
    parser.add_argument("--repeats", type=int, default=1, help="alternating rounds")
    parser.add_argument("--seed", type=int, default=0, help="demo world seed")
    parser.add_argument("--no-creation", action="store_true",
                        help="skip the model-creation timings (a run per backbone)")
    parser.add_argument("--scale", choices=("small", "default"),
                        help="demo world scale (default: small on CPU, default on CUDA)")
    parser.add_argument("--decode-routes", action="store_true",
                        help="time only the default decode vs --decode draft")
    parser.add_argument("--section", default=None,
                        help="RESULTS.md section to write (default bench_encode_<device>): "
                             "a run of one backbone can keep another run's section")
    args = parser.parse_args(argv)
    kind = "cuda" if args.device.startswith("cuda") else "cpu"
    for key, value in DEFAULTS[kind].items():
        if getattr(args, key, None) is None:
            setattr(args, key, value)
    if args.quick:
        args.images, args.baseline_images, args.scale, args.captions = 12, None, "small", 40
    args.kind = kind
    return args


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark (``argv``: command-line arguments) and update RESULTS.md.

    Unlike the other scripts, torch keeps its default threads unless ``--threads`` is
    given: the study's loop ran with them, and the build sets its own.
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    if not any(a == "--threads" or a.startswith("--threads=") for a in argv):
        argv += ["--threads", "0"]
    return common.run_with_threads(_main, argv)


def _plan(args: Any) -> list[tuple[str, int]]:
    plan = []
    for item in (b.strip() for b in args.backbones.split(",")):
        if item:
            name, _, n = item.partition(":")
            plan.append((name, int(args.images or n or 300)))
    return plan


def _main(argv: list[str] | None = None) -> int:
    args = _parse(argv)
    args.workdir.mkdir(parents=True, exist_ok=True)
    common.register_model_configs(args.model_config)
    info = common.machine_info(args.device)
    world = common.demo_world(args.workdir, args.scale, args.seed)
    plan = _plan(args)
    if args.decode_routes:
        return _main_decode(args, info, world, plan)
    creation = None if args.no_creation else bench_creation(plan[0][0], args)
    rows = [bench_backbone(name, n, args, world, "loop" if i % 2 == 0 else "build")
            for i, (name, n) in enumerate(plan)]
    captions = bench_captions(rows[0]["encoder"], world, args.captions, args.repeats)
    lines, ratios = report(rows, creation, captions, args)
    print("\n".join(lines + [""] + ratios))
    if not args.no_write:
        _write(args, info, lines, ratios)
    return 0


def _main_decode(args: Any, info: dict[str, Any], world: Path,
                 plan: list[tuple[str, int]]) -> int:
    rows = [bench_decode_routes(name, n, args, world, "build" if i % 2 == 0 else "build_draft")
            for i, (name, n) in enumerate(plan)]
    lines, ratios = report_decode(rows, args)
    print("\n".join(lines + [""] + ratios))
    if not args.no_write:
        head = [f"- command: `{common.command_line()}`", *common.machine_lines(info),
                f"- JPEG files of a demo world (`--scale {args.scale}`, seed {args.seed}; "
                f"160-640 px), weights `--pretrained {args.pretrained}`; both paths are "
                "`Encoder.encode_images` with the chosen settings, the default decoder "
                "(full decode: open_clip's pixels) vs `decode=\"draft\"` (JPEG draft mode); "
                f"rates are medians of {args.repeats} alternating round(s)", ""]
        common.write_section(args.section or f"bench_encode_decode_{args.kind}",
                             f"Decoding: the build's default (reference) decode vs "
                             f"--decode draft ({args.kind})", head + lines, ratios,
                             args.results)
    return 0


def _write(args: Any, info: dict[str, Any], lines: list[str], ratios: list[str]) -> None:
    head = [f"- command: `{common.command_line()}`", *common.machine_lines(info),
            f"- JPEG files of a demo world (`--scale {args.scale}`, seed {args.seed}; 160-640 "
            f"px), weights `--pretrained {args.pretrained}`; the study's loop is open_clip's "
            "`preprocess` + `encode_image` on a batch of one (fp32, `torch.no_grad`, torch's "
            "default threads); build defaults is `Encoder.encode_images` with no knob given "
            "(the settings it chose are in the table; it sets its own torch threads); "
            "model-only is the same batched `encode_pixels` on crops decoded beforehand; "
            f"rates are medians of {args.repeats} alternating round(s)", ""]
    if args.kind == "cpu":
        lines = lines + [
            "", "| GPU row (`--device cuda`, 12k JPEGs, H100 anchors: loop 62, PIL float "
            "workers 2,002, uint8 + draft 2,329, nvJPEG 3,093 img/s) | goal | measured |",
            "|---|---|---|",
            *[f"| {b} end to end | ≥ {g:,} img/s | not measured: no GPU available |"
              for b, g in GPU_GOALS.items()]]
    common.write_section(args.section or f"bench_encode_{args.kind}",
                         f"Encoding: `clipindex build` defaults vs the study's loop "
                         f"({args.kind})", head + lines, ratios, args.results)


if __name__ == "__main__":
    raise SystemExit(main())
