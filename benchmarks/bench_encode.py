"""Batched encoding (the ``clipindex build`` path) vs the study's one-image-at-a-time loop.

Both paths use the very same model object (random-initialised by default: ``--pretrained
none`` costs the same compute as pretrained weights) and the same JPEG files of a demo
world, in the same run:

- baseline, the study's loop: for each file ``Image.open``, open_clip's ``preprocess``,
  ``model.encode_image`` on a batch of one under ``torch.no_grad`` (fp32), normalise;
- contender, what ``clipindex build`` runs: ``Encoder.encode_images`` — DataLoader
  workers decode and resize to uint8 crops, the main process normalises and encodes
  whole batches (fp16 autocast on CUDA).

The mean cosine between the two paths' vectors is reported as a check that both did the
same work (the batched path decodes JPEGs with PIL's draft mode, so pixels differ a
little). With ``--repeats R`` the two paths alternate R times and median rates are used.

Run: ``python benchmarks/bench_encode.py`` (CPU: ViT-B-32 and RN50, 300 images, about
3 minutes on 2 cores), ``--device cuda`` on a GPU machine (ViT-B-32 and ViT-L-14-336),
or ``--quick``.
"""

from __future__ import annotations

import statistics
import sys
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as common  # noqa: E402

#: Per device type: default backbones, images, decoding workers, baseline images.
DEFAULTS: dict[str, dict[str, Any]] = {
    "cpu": {"backbones": "ViT-B-32,RN50", "images": 300, "workers": 2,
            "baseline_images": None, "scale": "small"},
    "cuda": {"backbones": "ViT-B-32,ViT-L-14-336", "images": 5000, "workers": 16,
             "baseline_images": 1000, "scale": "default"},
}


def image_files(world: Path, n: int) -> list[Path]:
    """The first ``n`` JPEG files of a demo world (train then val, sorted)."""
    files = sorted(world.glob("train/*.jpg")) + sorted(world.glob("val/*.jpg"))
    if not files:
        raise SystemExit(f"no JPEG files under {world}")
    return files[:n]


def study_loop(encoder: Any, files: list[Path]) -> np.ndarray:
    """The study's way: open, preprocess, encode a batch of one, normalise — per image."""
    import torch
    from PIL import Image

    model, preprocess, device = encoder.model, encoder.preprocess, encoder.device
    out = []
    with torch.no_grad():
        for path in files:
            image = preprocess(Image.open(path)).unsqueeze(0).to(device)
            features = model.encode_image(image)
            features = features / features.norm(dim=-1, keepdim=True)
            out.append(features.float().cpu().numpy()[0])
    return np.stack(out)


def batched(encoder: Any, files: list[Path], workers: int,
            batch_size: int | None) -> np.ndarray:
    """What ``clipindex build`` runs: the Encoder's DataLoader path."""
    vectors, skipped = encoder.encode_images([str(f) for f in files], workers=workers,
                                             batch_size=batch_size, progress=False)
    if skipped:
        raise SystemExit(f"{len(skipped)} files failed to decode: {skipped[:3]}")
    return vectors


def _sync(encoder: Any) -> None:
    import torch

    if encoder.device.type == "cuda":
        torch.cuda.synchronize(encoder.device)


def bench_backbone(name: str, args: Any, files: list[Path], first: str) -> dict[str, Any]:
    """Time both paths on one backbone, alternating (starting with ``first``)."""
    from clipindex.encode.encoder import load_encoder

    common.log(f"encode: loading {name} ({args.pretrained})")
    encoder = load_encoder(name, pretrained=args.pretrained, device=args.device)
    base_files = files[:args.baseline_images] if args.baseline_images else files
    runs = {
        "one_at_a_time": lambda: study_loop(encoder, base_files),
        "batched": lambda: batched(encoder, files, args.workers, args.batch_size),
    }
    counts = {"one_at_a_time": len(base_files), "batched": len(files)}
    study_loop(encoder, files[:2])  # warm-up: first-call allocations, thread pools
    encoder.encode_images([str(f) for f in files[:2]], workers=0, progress=False)
    order = [first, *(k for k in runs if k != first)]
    rates: dict[str, list[float]] = {k: [] for k in runs}
    vectors: dict[str, np.ndarray] = {}
    for i in range(args.repeats):
        for key in order if i % 2 == 0 else order[::-1]:
            common.log(f"encode: {name} {key} ({counts[key]} images)")
            _sync(encoder)
            with common.stopwatch() as t:
                vectors[key] = runs[key]()
                _sync(encoder)
            rates[key].append(counts[key] / t["s"])
    n = len(vectors["one_at_a_time"])
    a, b = vectors["one_at_a_time"], vectors["batched"][:n]
    cosine = np.sum(a * b, axis=1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))
    return {"backbone": encoder.spec.display, "folder": encoder.spec.name,
            "params_m": encoder.params / 1e6, "image_size": encoder.image_size,
            "batch_size": args.batch_size or encoder.default_batch_size,
            "precision": encoder.precision, "n": counts,
            "one_at_a_time": statistics.median(rates["one_at_a_time"]),
            "batched": statistics.median(rates["batched"]),
            "cosine_mean": float(cosine.mean()), "cosine_min": float(cosine.min())}


def report(rows: list[dict[str, Any]], args: Any) -> tuple[list[str], list[str]]:
    """Markdown table and ratio lines."""
    lines = ["| backbone | params (M) | input | one at a time (img/s) | batched, "
             f"workers={args.workers} (img/s) | batch | precision | cosine mean / min |",
             "|---|---|---|---|---|---|---|---|"]
    ratios = []
    for r in rows:
        lines.append(
            f"| {r['backbone']} | {r['params_m']:.1f} | {r['image_size']} | "
            f"{r['one_at_a_time']:.1f} | {r['batched']:.1f} | {r['batch_size']} | "
            f"{r['precision']} | {r['cosine_mean']:.4f} / {r['cosine_min']:.4f} |")
        ratios.append(common.ratio_line(
            r["batched"] / r["one_at_a_time"],
            f"batched build path (workers={args.workers}) over the study's one-image-at-a-"
            f"time loop, images/s, {r['backbone']} on {args.device} "
            f"({r['n']['batched']} JPEG files)"))
    return lines, ratios


def _parse(argv: list[str] | None) -> Any:
    parser = common.base_parser(__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N")
    parser.add_argument("--backbones", help="comma-separated (default per device)")
    parser.add_argument("--pretrained", default="none",
                        help="none (random init, default), default, a tag or a checkpoint")
    parser.add_argument("--images", type=int, help="JPEG files to encode (default per device)")
    parser.add_argument("--baseline-images", type=int,
                        help="files for the one-at-a-time loop (a prefix; default all on CPU, "
                             "1000 on CUDA where the loop is the slow part)")
    parser.add_argument("--workers", type=int, help="DataLoader decoding workers")
    parser.add_argument("--batch-size", type=int, help="default: the encoder's (as build)")
    parser.add_argument("--repeats", type=int, default=1, help="alternating rounds")
    parser.add_argument("--seed", type=int, default=0, help="demo world seed")
    args = parser.parse_args(argv)
    kind = "cuda" if args.device.startswith("cuda") else "cpu"
    for key, value in DEFAULTS[kind].items():
        if getattr(args, key, None) is None:
            setattr(args, key, value)
    if args.quick:
        args.images, args.baseline_images, args.scale = 12, None, "small"
        args.batch_size = args.batch_size or 4
    args.kind = kind
    return args


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark (``argv``: command-line arguments) and update RESULTS.md."""
    return common.run_with_threads(_main, argv)


def _main(argv: list[str] | None = None) -> int:
    args = _parse(argv)
    common.register_model_configs(args.model_config)
    info = common.machine_info(args.device)
    files = image_files(common.demo_world(args.workdir, args.scale, args.seed), args.images)
    names = [b.strip() for b in args.backbones.split(",") if b.strip()]
    rows = [bench_backbone(name, args, files,
                           "one_at_a_time" if i % 2 == 0 else "batched")
            for i, name in enumerate(names)]
    lines, ratios = report(rows, args)
    print("\n".join(lines + [""] + ratios))
    if not args.no_write:
        head = [f"- command: `{common.command_line()}`", *common.machine_lines(info),
                f"- {len(files)} JPEG files of a demo world (`--scale {args.scale}`, seed "
                f"{args.seed}; 160-640 px), weights `--pretrained {args.pretrained}`; the "
                "one-at-a-time loop is open_clip's `preprocess` + `encode_image` on a batch "
                "of one (fp32, `torch.no_grad`); batched is `Encoder.encode_images` (DataLoader "
                "workers send uint8 crops); rates are medians of "
                f"{args.repeats} alternating round(s); cosine compares the two paths' vectors",
                ""]
        if args.kind == "cpu":
            lines = lines + ["", "GPU mode (`--device cuda`: ViT-B-32 and ViT-L-14-336 from "
                             "JPEG; aim on an H100 4,000 and 950 images/s vs ~60 one at a "
                             "time) was **not measured here**: no GPU was available."]
        common.write_section(f"bench_encode_{args.kind}",
                             f"Encoding: batched build path vs one image at a time "
                             f"({args.kind})", head + lines, ratios, args.results)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
