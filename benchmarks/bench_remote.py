"""A build from S3 (moto's server on loopback) against a build from local disk.

The same demo-world JPEGs, stored two ways (``--route``):

- ``files``: one object per image (a manifest on local disk vs the same files and
  manifest in a moto S3 bucket); each decode worker reads a batch with one concurrent
  ``cat`` of its objects (one request per image);
- ``shards``: webdataset tar shards (written by the ``webdataset`` library, 100 images a
  shard) on local disk vs the same shards in the bucket; a batch's members of one shard
  are one merged range request.

Each route builds the same backbone, batch size and decode workers into fresh stores,
alternating (local, s3, local, s3, ...). Figure: the image-encoding rate each build
records in its manifest (``timings.images_per_s``: decode workers reading and decoding,
the model encoding). Beside it, what moto itself can serve in the same run, read the way
the build reads (no decode, no model): objects/s for the ``files`` route, images/s of
merged member ranges for ``shards``; a build faster than that on local disk is bound
by the server, not the read path. The moto server runs in its own process on 127.0.0.1
(a free port) and is stopped at the end. Loopback S3 has no network latency: the ratio
measures the cost of the remote read path (requests, s3fs, the server), not a real
network's.
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


def write_shards(world: Path, manifest: Path, out: Path, options: dict[str, str],
                 per_shard: int = 100) -> tuple[str, str]:
    """The manifest's images as webdataset shards on local disk and in the bucket:
    ``(local pattern, s3 pattern)``."""
    import pandas as pd
    import s3fs
    import webdataset as wds

    frame = pd.read_csv(manifest)
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    with wds.ShardWriter(str(out / "%05d.tar"), maxcount=per_shard, verbose=0) as sink:
        for i, (rel, label) in enumerate(zip(frame["path"], frame["label"], strict=True)):
            sink.write({"__key__": f"{i:06d}", "jpg": (world / rel).read_bytes(),
                        "cls": str(label)})
    shards = sorted(out.glob("*.tar"))
    fs = s3fs.S3FileSystem(**options)
    fs.pipe({f"{BUCKET}/shards/{s.name}": s.read_bytes() for s in shards})
    braces = f"{{00000..{len(shards) - 1:05d}}}.tar"
    return str(out / braces), f"s3://{BUCKET}/shards/{braces}"


def shards_ceiling(pattern: str, options: dict[str, str], batch: int) -> float:
    """Images/s the build's own shard reader gets from moto (member ranges of ``batch``
    consecutive samples merged, as a decode worker reads a batch; no decode)."""
    from clipindex.sources import load_dataset

    ds = load_dataset(pattern, storage_options=options)
    files = ds.images["file"].tolist()
    with common.stopwatch() as t:
        for i in range(0, len(files), batch):
            got = ds.reader.read_many(files[i:i + batch])
            assert not any(isinstance(g, BaseException) for g in got)
    return len(files) / t["s"]


def one_build(source: str, root: Path | None, out: Path, args: Any,
              options: dict[str, str] | None, read_ahead: bool = True) -> dict[str, Any]:
    """One fresh build; ``read_ahead=False``: the decode workers read each batch only
    when they decode it (the read path before the one-batch read-ahead), for the
    with/without comparison."""
    from clipindex.encode.pixels import ImageFiles
    from clipindex.store import build_store, open_index

    shutil.rmtree(out, ignore_errors=True)
    guess = ImageFiles._next
    if not read_ahead:  # the workers are forked from here: they inherit the switch
        ImageFiles._next = lambda self, indices: []  # type: ignore[method-assign]
    try:
        with common.stopwatch() as t:
            paths = build_store(source, [args.backbone], out=out, root=root,
                                batch_size=args.batch_size, workers=args.workers,
                                pretrained=args.pretrained, progress=False,
                                storage_options=options)
    finally:
        ImageFiles._next = guess  # type: ignore[method-assign]
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
    parser.add_argument("--route", choices=["files", "shards", "both"], default="both",
                        help="one object per image, webdataset shards, or both")
    parser.add_argument("--no-read-ahead-row", action="store_true",
                        help="skip the third contender of each round (S3 without the "
                             "decode workers' one-batch read-ahead)")
    args = parser.parse_args(argv)
    common.register_model_configs(args.model_config)
    if args.backbone is None:
        args.backbone = "tiny-rn" if args.quick else "ViT-B/32"
    if args.pretrained is None:
        args.pretrained = "default" if args.backbone.startswith("tiny") else "none"
    info = common.machine_info("cpu")
    n = 40 if args.quick else args.images
    world = common.demo_world(args.workdir, "small" if args.quick else "default")
    routes = ["files", "shards"] if args.route == "both" else [args.route]
    proc, options = start_moto()
    rounds: dict[str, list[dict[str, Any]]] = {}
    try:
        manifest = upload(world, n, args.workdir / f"remote-manifest-{n}", options)
        ceiling = {"files": serving_ceiling(manifest, options)}
        sources = {"files": ((str(manifest), world), (f"s3://{BUCKET}/data/images.csv", None))}
        if "shards" in routes:
            local, remote = write_shards(world, manifest, args.workdir / f"remote-shards-{n}",
                                         options)
            sources["shards"] = ((local, None), (remote, None))
            ceiling["shards"] = shards_ceiling(remote, options, args.batch_size)
        for route in routes:
            (lsrc, lroot), (ssrc, sroot) = sources[route]
            rounds[route] = []
            for _ in range(max(1, args.repeats)):
                rnd = {"local": one_build(lsrc, lroot, args.workdir / "remote-local", args,
                                          None),
                       "s3": one_build(ssrc, sroot, args.workdir / "remote-s3", args,
                                       options)}
                if not args.no_read_ahead_row:
                    rnd["s3, no read-ahead"] = one_build(ssrc, sroot,
                                                         args.workdir / "remote-s3", args,
                                                         options, read_ahead=False)
                rounds[route].append(rnd)
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    lines, ratios = _report(args, info, n, rounds, ceiling)
    print("\n".join(lines + ratios))
    if not args.no_write:
        common.write_section(NAME, "Build from S3 (moto) vs local disk", lines, ratios,
                             args.results)
    return 0


def _median(rounds: list[dict[str, Any]], top: str, bottom: str) -> float:
    return statistics.median(r[top]["images_per_s"] / r[bottom]["images_per_s"]
                             for r in rounds)


def _report(args: Any, info: Any, n: int, rounds: dict[str, list[dict[str, Any]]],
            ceiling: dict[str, float]) -> tuple[list[str], list[str]]:
    what = {"files": "one object per image: a manifest on local disk vs the same files and "
                     "manifest in the bucket",
            "shards": "webdataset shards of 100 images on local disk vs the same shards in "
                      "the bucket"}
    bound = {"files": "objects/s (a bare concurrent s3fs cat of every image in batches of "
                      "32)",
             "shards": f"images/s (the build's shard reader, merged member ranges of "
                       f"{args.batch_size} samples, no decode)"}
    lines = [*common.machine_lines(info),
             f"- command: `{common.command_line()}`",
             f"- data: {n} demo-world JPEGs in moto's S3 server (loopback, s3fs); backbone "
             f"{args.backbone} ({args.pretrained}), batch {args.batch_size}, "
             f"{args.workers} decode worker(s); {args.repeats} alternating round(s) per "
             "route, each ratio is the median of its rounds' ratios",
             *(f"- route `{r}`: {what[r]}; moto serves {ceiling[r]:.0f} {bound[r]} in "
               "this run: a build whose local rate is near or above it is bound by the "
               "server (a Python process on the same cores), not by the read path"
               for r in rounds),
             *(f"- route `{r}`, the decode workers' one-batch read-ahead: S3 with it over "
               "S3 without it, median of the rounds: "
               f"{_median(rs, 's3', 's3, no read-ahead'):.2f}x"
               for r, rs in rounds.items() if "s3, no read-ahead" in rs[0]),
             "",
             "| route | round | source | images/s (encoding stage) | whole build, s |",
             "|---|---|---|---|---|",
             *(f"| {route} | {i + 1} | {k} | {r['images_per_s']:.1f} | {r['wall_s']:.1f} |"
               for route, rs in rounds.items() for i, rnd in enumerate(rs)
               for k, r in rnd.items())]
    ratios = [common.ratio_line(
        _median(rs, "s3", "local"),
        f"build from S3 (moto, loopback) over local disk, images/s, {route}, "
        f"{args.backbone}") for route, rs in rounds.items()]
    return lines, ratios

if __name__ == "__main__":
    raise SystemExit(main())
