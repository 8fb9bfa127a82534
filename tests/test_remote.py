"""Data where users keep it: webdataset shards (written by ``webdataset`` and by
``img2dataset``), image bytes in parquet (written by Hugging Face ``datasets``) and S3
(moto's server on loopback) give the store a local build of the same images gives."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tarfile
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner
from fixtures_remote import write_shards

from clipindex.cli import main
from clipindex.sources import load_dataset
from clipindex.store import add_to_store, build_store, open_index

FAST = {"batch_size": 4, "shard_size": 8, "workers": 0, "progress": False}
BACKBONE = "tiny-vit"


@pytest.fixture(scope="module")
def reference(demo_images, tmp_path_factory):
    """The store of the demo images built from local files (a manifest, in row order)."""
    out = tmp_path_factory.mktemp("reference")
    return open_index(build_store(demo_images.manifest, [BACKBONE], out=out, **FAST)[0].parent,
                      BACKBONE)


def assert_same_vectors(store, reference, order=None) -> None:
    """Row i of ``store`` is row ``order[i]`` of ``reference`` (default i): same vector
    (cosine >= 0.9999), label and caption."""
    order = np.arange(len(reference.images)) if order is None else np.asarray(order)
    assert len(store.images) == len(order)
    assert store.images["label"].tolist() == reference.images["label"].iloc[order].tolist()
    cos = np.sum(store.image_vectors * reference.image_vectors[order], axis=1)
    assert cos.min() >= 0.9999, cos
    ref_caps = reference.captions.set_index("image_row_id")["text"]
    caps = store.captions.set_index("image_row_id")["text"]
    assert [caps[i] for i in range(len(order))] == [ref_caps[j] for j in order]


# ----------------------------------------------------------------------------- shards
def test_webdataset_shards_equal_the_local_build(demo_images, reference, tmp_path):
    shards = write_shards(demo_images, tmp_path / "shards")
    assert len(shards) == 3
    pattern = str(tmp_path / "shards" / "{00000..00002}.tar")
    ds = load_dataset(pattern)
    assert ds.info["source"] == "webdataset" and ds.name == "shards"
    assert ds.images["file"].tolist()[:2] == ["00000.tar#000000", "00000.tar#000001"]
    # extra .json keys are columns; member sizes and the shard's mtime are its identity
    assert ds.images["source"].tolist() == demo_images.files
    assert (ds.images["bytes"] > 0).all() and ds.images["etag"].str.startswith("mtime:").all()
    assert (ds.images["width"] > 0).all()
    store = open_index(build_store(pattern, [BACKBONE], out=tmp_path / "out",
                                   **FAST)[0].parent, BACKBONE)
    assert_same_vectors(store, reference)
    assert store.manifest["skipped"] == []


def test_label_from_a_json_key_and_corrupt_members_are_skips(demo_images, tmp_path):
    write_shards(demo_images, tmp_path / "shards", per_shard=12, label_key="animal")
    src = tmp_path / "shards" / "00000.tar"
    bad = tmp_path / "bad" / "00000.tar"
    bad.parent.mkdir()
    with tarfile.open(src) as tin, tarfile.open(bad, "w") as tout:
        for info in tin.getmembers():
            data = tin.extractfile(info).read()
            if info.name == "000003.jpg":
                data = data[:200]  # truncated image
                info.size = len(data)
            tout.addfile(info, __import__("io").BytesIO(data))
    with pytest.raises(Exception, match="no label field 'cls'"):
        load_dataset(str(bad))
    ds = load_dataset(str(bad), label_field="animal")
    assert ds.images["label"].tolist() == demo_images.labels
    out = build_store(ds, [BACKBONE], out=tmp_path / "out", **FAST)[0]
    skipped = open_index(out.parent, BACKBONE).manifest["skipped"]
    assert [(s["row_id"], s["file"]) for s in skipped] == [(3, "00000.tar#000003")]
    assert "truncated" in skipped[0]["reason"]


def test_img2dataset_shards(demo_images, reference, http_root, tmp_path):
    folder, base = http_root
    rows = []
    for file, label, caption in zip(demo_images.files, demo_images.labels,
                                    demo_images.captions, strict=True):
        target = folder / "img2dataset" / file
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes((demo_images.root / file).read_bytes())
        rows.append({"url": f"{base}/img2dataset/{file}", "caption": caption, "label": label})
    urls = tmp_path / "urls.parquet"
    pd.DataFrame(rows).to_parquet(urls)
    out = tmp_path / "i2d"
    script = (
        "from img2dataset import download\n"
        f"download(url_list={str(urls)!r}, input_format='parquet', url_col='url', "
        "caption_col='caption', save_additional_columns=['label'], "
        f"output_folder={str(out)!r}, output_format='webdataset', processes_count=1, "
        "thread_count=1, resize_mode='no', skip_reencode=True, number_sample_per_shard=5, "
        "enable_wandb=False, distributor='multiprocessing', timeout=10, retries=0)\n")
    env = {**os.environ, "NO_ALBUMENTATIONS_UPDATE": "1", "WANDB_MODE": "disabled",
           "NO_PROXY": "127.0.0.1", "no_proxy": "127.0.0.1"}
    res = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True,
                         text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-2000:]
    shards = sorted(out.glob("*.tar"))
    assert len(shards) == 3
    ds = load_dataset(str(out / "{00000..00002}.tar"), label_field="label")
    assert len(ds.images) == 12 and ds.images["status"].eq("success").all()
    store = open_index(build_store(ds, [BACKBONE], out=tmp_path / "store", **FAST)[0].parent,
                       BACKBONE)
    where = {f"{base}/img2dataset/{f}": i for i, f in enumerate(demo_images.files)}
    assert_same_vectors(store, reference, [where[u] for u in store.images["url"]])


# ----------------------------------------------------------------------------- parquet
def test_parquet_of_image_bytes_written_by_datasets(demo_images, reference, tmp_path):
    import datasets

    names = sorted(set(demo_images.labels))
    features = datasets.Features({"image": datasets.Image(),
                                  "label": datasets.ClassLabel(names=names),
                                  "text": datasets.Value("string")})
    data = {"image": [{"bytes": (demo_images.root / f).read_bytes(), "path": f}
                      for f in demo_images.files],
            "label": [names.index(c) for c in demo_images.labels],
            "text": demo_images.captions}
    path = tmp_path / "train.parquet"
    datasets.Dataset.from_dict(data, features=features).to_parquet(str(path))
    cfg = tmp_path / "hf.yaml"
    cfg.write_text(f"name: hf\nparquet: {path}\ncaption_column: text\n")
    ds = load_dataset(cfg)
    assert ds.info["source"] == "parquet" and ds.images["label"].tolist() == demo_images.labels
    assert ds.images["file"].tolist()[:2] == ["train.parquet#0", "train.parquet#1"]
    store = open_index(build_store(ds, [BACKBONE], out=tmp_path / "out", workers=1,
                                   batch_size=4, shard_size=8, progress=False)[0].parent,
                       BACKBONE)
    assert_same_vectors(store, reference)


# ----------------------------------------------------------------------------- S3
@pytest.fixture(scope="module")
def s3_data(moto_s3, demo_images, tmp_path_factory):
    """The demo images, their manifest and their shards in moto's S3."""
    fs = moto_s3.fs()
    for file in demo_images.files:
        fs.pipe(f"{moto_s3.bucket}/images/{file}", (demo_images.root / file).read_bytes())
    fs.pipe(f"{moto_s3.bucket}/images/manifest.csv", demo_images.manifest.read_bytes())
    local = tmp_path_factory.mktemp("s3-shards")
    for shard in write_shards(demo_images, local):
        fs.pipe(f"{moto_s3.bucket}/shards/{shard.name}", shard.read_bytes())
    return moto_s3


def test_s3_manifest_and_shards_equal_the_local_build(s3_data, reference, tmp_path):
    opts = s3_data.options
    ds = load_dataset(s3_data.url("images/manifest.csv"), storage_options=opts)
    assert ds.root == s3_data.url("images") and ds.images["file"].tolist()[0] == "cat/" + \
        Path(ds.images["file"].tolist()[0]).name
    assert ds.images["etag"].str.startswith("etag:").all() and (ds.images["bytes"] > 0).all()
    assert "***" == ds.info["config"]["storage_options"]["secret"]  # never written
    store = open_index(build_store(ds, [BACKBONE], out=tmp_path / "m", workers=1,
                                   batch_size=4, shard_size=8, progress=False)[0].parent,
                       BACKBONE)
    assert_same_vectors(store, reference)
    pattern = s3_data.url("shards/{00000..00002}.tar")
    shards = open_index(build_store(pattern, [BACKBONE], out=tmp_path / "s",
                                    storage_options=opts, **FAST)[0].parent, BACKBONE)
    assert_same_vectors(shards, reference)


def test_s3_folder_root_and_add(s3_data, demo_images, tmp_path, use_fake_encoders):
    """A class-folder root on S3, then `add` after two objects change: one new image,
    one overwritten (a new ETag: a new image, the old row tombstoned)."""
    fs = s3_data.fs()
    root = f"{s3_data.bucket}/folder"
    for file in demo_images.files[:6] + demo_images.files[8:]:
        fs.pipe(f"{root}/{file}", (demo_images.root / file).read_bytes())
    url = s3_data.url("folder")
    out = tmp_path / "out"
    build_store(url, ["fake-a"], out=out, storage_options=s3_data.options, **FAST)
    first = open_index(out / "folder", "fake-a")
    assert len(first.images) == 10
    fs.pipe(f"{root}/{demo_images.files[6]}", (demo_images.root / demo_images.files[6])
            .read_bytes())
    fs.pipe(f"{root}/{demo_images.files[0]}", (demo_images.root / demo_images.files[1])
            .read_bytes())
    result = add_to_store(url, index=out / "folder", storage_options=s3_data.options,
                          **{k: v for k, v in FAST.items() if k != "shard_size"})
    assert (result.added, result.removed) == (2, 1)


def test_cli_build_from_s3_shards(s3_data, tmp_path, use_fake_encoders):
    pattern = s3_data.url("shards/{00000..00002}.tar")
    args = ["build", pattern, "--backbone", "fake-a", "--out", str(tmp_path / "o"),
            "--no-progress", "--workers", "0", "--json"]
    opts = [x for k, v in s3_data.options.items() for x in ("--storage-option", f"{k}={v}")]
    res = CliRunner().invoke(main, [*args, *opts, "--label-field", "cls"])
    assert res.exit_code == 0, res.output
    assert json.loads(res.stdout)["backbones"][0]["n_images"] == 12
    missing = s3_data.url("shards/{00000..00003}.tar")
    res = CliRunner().invoke(main, ["build", missing, *args[2:], *opts])
    assert res.exit_code == 2 and "00003.tar does not exist" in res.output
    assert "Traceback" not in res.output


# ----------------------------------------------------------------------------- decoders
def test_reader_bytes_take_the_draft_decoder_and_report_machine_faults(tmp_path):
    import errno
    import io

    import torchvision.transforms as T
    from PIL import Image

    from clipindex.encode.pixels import ImageFiles, PixelPipeline

    rng = np.random.default_rng(0)
    buf = io.BytesIO()
    Image.fromarray((rng.random((900, 1200, 3)) * 255).astype(np.uint8)).save(buf, "JPEG")
    path = tmp_path / "big.jpg"
    path.write_bytes(buf.getvalue())
    pipe = PixelPipeline(T.Compose([T.Resize(96, interpolation=T.InterpolationMode.BICUBIC),
                                    T.CenterCrop(96)]), (96, 96))

    class Reader:
        def __init__(self, data):
            self.data = data

        def read_many(self, files):
            return [self.data for _ in files]

    crops = {}
    for draft in (False, True):
        kind, crop, reason = ImageFiles(["shard.tar#0"], 0, pipe, draft=draft,
                                        reader=Reader(buf.getvalue()))[0]
        local = ImageFiles([str(path)], 0, pipe, draft=draft)[0][1]
        assert (kind, reason) == ("pixels", "") and bool((crop == local).all())
        crops[draft] = crop
    assert not bool((crops[True] == crops[False]).all())  # draft is a reduced-scale decode
    fault = ImageFiles(["shard.tar#0"], 0, pipe, reader=Reader(
        OSError(errno.EMFILE, "Too many open files"))).__getitems__([0])
    assert len(fault) == 1 and fault[0][:2] == ("fault", errno.EMFILE)
    assert "shard.tar#0" in fault[0][2]
    gone = ImageFiles(["a.jpg"], 0, pipe, reader=Reader(FileNotFoundError(2, "gone")))[0]
    assert gone[0] == "pixels" and gone[2] == "missing file"
