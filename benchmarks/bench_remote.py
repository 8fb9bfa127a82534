"""A build from S3 (moto's server on loopback) against a build from local disk.

The same demo-world JPEGs, once as local files (a manifest) and once as objects in a
moto S3 bucket (the same manifest, read through s3fs), built with the same backbone,
batch size and decode workers into fresh stores, alternating (local, s3, local, s3,
...). Figure: the image-encoding rate each build records in its manifest
(``timings.images_per_s``: decode workers reading and decoding, the model encoding);
the s3 side's workers read each batch with one concurrent ``cat`` of its objects. The
moto server runs in its own process on 127.0.0.1 (a free port) and is stopped at the
end. Loopback S3 has no network latency: the ratio measures the cost of the remote read
path (requests, s3fs, the server), not a real network's.
"""

from __future__ import annotations

import os
import shutil
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as common  # noqa: E402

NAME = "bench_remote"
BUCKET = "bench"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_moto() -> tuple[subprocess.Popen, dict[str, str]]:
    port = _free_port()
    env = {**os.environ, "AWS_ACCESS_KEY_ID": "bench", "AWS_SECRET_ACCESS_KEY": "bench",
           "AWS_DEFAULT_REGION": "us-east-1"}
    proc = subprocess.Popen([str(Path(sys.executable).parent / "moto_server"), "-H",
                             "127.0.0.1", "-p", str(port)], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 60
    while True:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                break
        except OSError:
            if proc.poll() is not None or time.monotonic() > deadline:
                raise SystemExit("moto_server did not start") from None
            time.sleep(0.2)
    return proc, {"endpoint_url": f"http://127.0.0.1:{port}", "key": "bench",
                  "secret": "bench"}


def upload(world: Path, n: int, out: Path, options: dict[str, str]) -> Path:
    """A local manifest of the first ``n`` JPEGs; the JPEGs and it in the bucket."""
    import pandas as pd
    import s3fs

    files = sorted((world / "train").glob("*.jpg")) + sorted((world / "val").glob("*.jpg"))
    if len(files) < n:
        raise SystemExit(f"the demo world has {len(files)} JPEGs, fewer than --images {n}")
    rel = [f.relative_to(world).as_posix() for f in files[:n]]
    frame = pd.DataFrame({"path": rel, "label": ["a" if i % 2 else "b" for i in range(n)]})
    out.mkdir(parents=True, exist_ok=True)
    manifest = out / "images.csv"
    frame.to_csv(manifest, index=False)
    fs = s3fs.S3FileSystem(**options)
    fs.mkdir(BUCKET)
    fs.pipe({f"{BUCKET}/data/{r}": (world / r).read_bytes() for r in rel})
    fs.pipe(f"{BUCKET}/data/images.csv", manifest.read_bytes())
    return manifest


def serving_ceiling(manifest: Path, options: dict[str, str]) -> float:
    """Objects/s moto serves to a bare concurrent ``s3fs`` ``cat`` of every image (batches
    of 32, as a decode worker reads them): no build can read faster from this server."""
    import pandas as pd
    import s3fs

    rel = pd.read_csv(manifest)["path"].tolist()
    fs = s3fs.S3FileSystem(**options)
    with common.stopwatch() as t:
        for i in range(0, len(rel), 32):
            fs.cat([f"{BUCKET}/data/{r}" for r in rel[i:i + 32]], batch_size=32)
    return len(rel) / t["s"]


def one_build(source: str, root: Path | None, out: Path, args: Any,
              options: dict[str, str] | None) -> dict[str, Any]:
    from clipindex.store import build_store, open_index

    shutil.rmtree(out, ignore_errors=True)
    with common.stopwatch() as t:
        paths = build_store(source, [args.backbone], out=out, root=root,
                            batch_size=args.batch_size, workers=args.workers,
                            pretrained=args.pretrained, progress=False,
                            storage_options=options)
    m = open_index(paths[0].parent, paths[0].name).manifest
    assert m["n_skipped"] == 0, m["skipped"][:3]
    return {"wall_s": t["s"], "images_per_s": float(m["timings"]["images_per_s"]),
            "n": int(m["n_images"])}


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark (``argv``: command-line arguments) and update RESULTS.md."""
    return common.run_with_threads(_main, argv)


def _main(argv: list[str] | None = None) -> int:
    parser = common.base_parser(__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=600)
    parser.add_argument("--backbone", default=None,
                        help="default ViT-B/32 with random weights; tiny-rn with --quick")
    parser.add_argument("--pretrained", default=None)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args(argv)
    common.register_model_configs(args.model_config)
    if args.backbone is None:
        args.backbone = "tiny-rn" if args.quick else "ViT-B/32"
    if args.pretrained is None:
        args.pretrained = "default" if args.backbone.startswith("tiny") else "none"
    info = common.machine_info("cpu")
    n = 40 if args.quick else args.images
    world = common.demo_world(args.workdir, "small" if args.quick else "default")
    proc, options = start_moto()
    try:
        manifest = upload(world, n, args.workdir / f"remote-manifest-{n}", options)
        ceiling = serving_ceiling(manifest, options)
        rounds = []
        for _ in range(max(1, args.repeats)):
            rounds.append({
                "local": one_build(str(manifest), world, args.workdir / "remote-local", args,
                                   None),
                "s3": one_build(f"s3://{BUCKET}/data/images.csv", None,
                                args.workdir / "remote-s3", args, options)})
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    ratio = statistics.median(r["s3"]["images_per_s"] / r["local"]["images_per_s"]
                              for r in rounds)
    lines = [*common.machine_lines(info),
             f"- command: `{common.command_line()}`",
             f"- data: {n} demo-world JPEGs, a manifest on local disk vs the same files and "
             f"manifest in moto's S3 server (loopback, s3fs); backbone {args.backbone} "
             f"({args.pretrained}), batch {args.batch_size}, {args.workers} decode "
             f"worker(s); {len(rounds)} alternating round(s), the ratio is the median of "
             "the rounds' ratios",
             f"- moto's serving ceiling here: {ceiling:.0f} objects/s (a bare concurrent "
             "s3fs cat of every image in batches of 32; moto is a Python server on the same "
             "cores): a build whose local rate is above it (a decode-bound tiny model) is "
             "bound by the server, not by the read path (tiny-rn, 600 images, 1 worker: "
             "~500 images/s local vs ~130 from moto, 0.3x, with a ceiling of ~250)",
             "",
             "| round | source | images/s (encoding stage) | whole build, s |",
             "|---|---|---|---|",
             *(f"| {i + 1} | {k} | {r['images_per_s']:.1f} | {r['wall_s']:.1f} |"
               for i, rnd in enumerate(rounds) for k, r in rnd.items())]
    ratios = [common.ratio_line(ratio, "build from S3 (moto, loopback) over local disk, "
                                       "images/s")]
    print("\n".join(lines + ratios))
    if not args.no_write:
        common.write_section(NAME, "Build from S3 (moto) vs local disk", lines, ratios,
                             args.results)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
