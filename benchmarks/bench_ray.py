"""``build --engine ray`` against ``--engine local`` on one machine: Ray's overhead.

Both sides build the same images (a manifest of the demo world's JPEGs) with the same
backbone, batch and shard sizes into fresh stores, back to back. The ray side starts its
own local Ray (``ray.init(num_cpus=<cores>)``), as ``clipindex build --engine ray`` does
with no address. Figures: the image-encoding rate each build records in its manifest
(``timings.images_per_s``) and the wall time of the whole build (the ray side including
Ray's start and the actors' model loads). GPU actors need a GPU machine: the CPU run's
table says "not measured" for them; ``--device cuda`` (on a GPU machine: one encoder actor
per GPU, ``gpus_per_encoder=1``, the batch size the build chooses unless ``--batch-size``)
writes its own section, ``bench_ray_cuda``.
"""

from __future__ import annotations

import shutil
import statistics
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as common  # noqa: E402

NAME = "bench_ray"


def image_manifest(world: Path, n: int, out: Path) -> Path:
    """A CSV manifest of the first ``n`` JPEGs of the world (train, then val)."""
    import pandas as pd

    files = sorted((world / "train").glob("*.jpg")) + sorted((world / "val").glob("*.jpg"))
    if len(files) < n:
        raise SystemExit(f"the demo world has {len(files)} JPEGs, fewer than --images {n}")
    rows = pd.DataFrame({"path": [f.relative_to(world).as_posix() for f in files[:n]],
                         "label": ["a" if i % 2 else "b" for i in range(n)]})
    out.mkdir(parents=True, exist_ok=True)
    path = out / "images.csv"
    rows.to_csv(path, index=False)
    return path


def one_build(manifest: Path, world: Path, out: Path, args: Any, engine: str) -> dict[str, Any]:
    from clipindex.store import build_store, open_index

    shutil.rmtree(out, ignore_errors=True)
    gpus = 1.0 if engine == "ray" and args.kind == "cuda" else 0.0
    with common.stopwatch() as t:
        paths = build_store(manifest, [args.backbone], out=out, root=world, engine=engine,
                            batch_size=args.batch_size, device=args.device,
                            pretrained=args.pretrained, progress=False,
                            gpus_per_encoder=gpus)
    m = open_index(paths[0].parent, paths[0].name).manifest
    ray_ = m.get("ray") or {}
    rate = float(m["timings"]["images_per_s"] or 0)
    first = ray_.get("first_image_batch_seconds")
    stage = float(m["timings"]["image_encode_seconds"])
    batch = int(m["timings"]["settings"]["batch_size"])  # what the build used
    # after Ray's start-up (the first batch back): the steady rate of the pipeline
    rest = int(m["n_images"]) - batch
    steady = rest / (stage - first) if first and rest > 0 and stage > first else rate
    return {"wall_s": t["s"], "images_per_s": rate, "steady": steady, "startup": first,
            "n": int(m["n_images"]), "actors": ray_.get("actors"), "batch": batch}


def report(rounds: list[dict[str, Any]], args: Any, n: int, info: dict[str, Any]
           ) -> tuple[list[str], list[str]]:
    """The section's table lines and its ``ratio:`` lines (medians over the rounds)."""

    def median(key: str, engine: str) -> float:
        return statistics.median(r[engine][key] for r in rounds)

    def med_ratio(fn: Any) -> float:
        return statistics.median(fn(r["local"], r["ray"]) for r in rounds)

    many = len(rounds) > 1
    lines = [*common.machine_lines(info),
             f"- command: `{common.command_line()}`",
             f"- data: {n} demo-world JPEGs (a manifest), backbone {args.backbone} "
             f"({args.pretrained}), batch {rounds[0]['ray']['batch']}, device {args.device}; "
             f"the ray side starts its own local Ray with {rounds[0]['ray']['actors']} encoder "
             f"actor(s); {len(rounds)} alternating round(s) (local, ray, local, ray, ...)"
             + ("; ratios are medians of the rounds' ratios" if many else ""),
             "",
             "| engine | images/s (encoding stage, from the manifest) | images/s after the "
             "first batch | Ray start-up to the first batch, s | whole build, s |",
             "|---|---|---|---|---|",
             *(f"| {e}{f' (round {i + 1})' if many else ''} | {r['images_per_s']:.1f} | "
               f"{r['steady']:.1f} | "
               f"{'' if r['startup'] is None else format(r['startup'], '.1f')} | "
               f"{r['wall_s']:.1f} |" for i, rnd in enumerate(rounds) for e, r in rnd.items())]
    if args.kind == "cpu":
        lines.append("| ray, GPU actors (ViT-B/32 from JPEG) | not measured: no GPU available "
                     "| | | |")
    if many:
        lines.append(f"\nMedians: local {median('images_per_s', 'local'):.1f} images/s, ray "
                     f"{median('images_per_s', 'ray'):.1f} (encoding stage); whole build "
                     f"{median('wall_s', 'local'):.1f} s vs {median('wall_s', 'ray'):.1f} s.")
    ratios = [
        common.ratio_line(med_ratio(lambda lo, ra: ra["images_per_s"] / lo["images_per_s"]),
                          f"ray over local build, {args.backbone} {args.kind}, images/s "
                          "(encoding stage)"),
        common.ratio_line(med_ratio(lambda lo, ra: ra["steady"] / lo["images_per_s"]),
                          f"ray (after its start-up) over local build, "
                          f"{args.backbone} {args.kind}, images/s"),
        common.ratio_line(med_ratio(lambda lo, ra: lo["wall_s"] / ra["wall_s"]),
                          f"ray over local build, {args.backbone} {args.kind}, whole build "
                          "wall time (Ray start included)"),
    ]
    return lines, ratios


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark (``argv``: command-line arguments) and update RESULTS.md."""
    return common.run_with_threads(_main, argv)


def _main(argv: list[str] | None = None) -> int:
    parser = common.base_parser(__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=2000)
    parser.add_argument("--backbone", default=None,
                        help="default ViT-B/32 with random weights (a real CPU model's "
                             "cost); tiny-rn with --quick")
    parser.add_argument("--pretrained", default=None)
    parser.add_argument("--batch-size", type=int, default=None,
                        help="default 32 on CPU; on CUDA the build's own choice")
    parser.add_argument("--device", default="cpu", type=common.device_arg,
                        help="cpu, cuda or cuda:N")
    parser.add_argument("--repeats", type=int, default=1,
                        help="alternating rounds (local, ray, local, ray, ...); the ratios "
                             "are the medians of the rounds' ratios")
    args = parser.parse_args(argv)
    if args.repeats < 1:
        parser.error(f"--repeats must be at least 1, got {args.repeats}")
    common.register_model_configs(args.model_config)
    args.kind = "cuda" if args.device.startswith("cuda") else "cpu"
    if args.batch_size is None and args.kind == "cpu":
        args.batch_size = 32
    if args.backbone is None:
        args.backbone = "tiny-rn" if args.quick else "ViT-B/32"
    if args.pretrained is None:
        args.pretrained = "default" if args.backbone.startswith("tiny") else "none"
    info = common.machine_info(args.device)
    n = 40 if args.quick else args.images
    world = common.demo_world(args.workdir, "small" if args.quick else "default")
    manifest = image_manifest(world, n, args.workdir / f"ray-manifest-{n}")
    rounds = []  # alternating local, ray, local, ray, ...: drift on a shared machine
    for _ in range(args.repeats):  # hits both engines alike
        rounds.append({engine: one_build(manifest, world, args.workdir / f"ray-bench-{engine}",
                                         args, engine) for engine in ("local", "ray")})

    lines, ratios = report(rounds, args, n, info)
    print("\n".join(lines + ratios))
    if not args.no_write:
        name, title = NAME, "Ray engine vs local build (one machine)"
        if args.kind == "cuda":
            name, title = f"{NAME}_cuda", "Ray engine vs local build (one GPU machine)"
        common.write_section(name, title, lines, ratios, args.results)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
