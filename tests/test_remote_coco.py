"""A COCO dataset whose annotation files and images are kept elsewhere: its instances
and captions JSON read through fsspec (moto's S3 server, a static HTTP server, a
``file://`` URL) give the store a local build of the same world gives."""

from __future__ import annotations

import numpy as np
import pytest

from clipindex.errors import DataError
from clipindex.sources import load_dataset
from clipindex.store import build_store, open_index

FAST = {"batch_size": 4, "shard_size": 8, "workers": 1, "progress": False}
BACKBONE = "tiny-vit"
PICK = {"per_class": 3, "support_per_class": 1, "classes": ["cat", "cow", "dog"]}
ANNOTATIONS = ("instances_val.json", "captions_val.json", "causes_val.json")


@pytest.fixture(scope="module")
def local_coco(small_world, tmp_path_factory):
    """The demo world's val split as a COCO dataset read from local files, and its store."""
    ds = load_dataset("builtin:demo", root=small_world, **PICK)
    out = tmp_path_factory.mktemp("coco-local")
    store = open_index(build_store(ds, [BACKBONE], out=out, **FAST)[0].parent, BACKBONE)
    return ds, store


@pytest.fixture(scope="module")
def s3_world(moto_s3, small_world, local_coco):
    """The world's annotation files and the chosen rows' images in moto's S3."""
    fs = moto_s3.fs()
    for name in ANNOTATIONS:
        fs.pipe(f"{moto_s3.bucket}/world/annotations/{name}",
                (small_world / "annotations" / name).read_bytes())
    for file in local_coco[0].images["file"]:
        fs.pipe(f"{moto_s3.bucket}/world/{file}", (small_world / file).read_bytes())
    return moto_s3


def assert_same_store(store, ref) -> None:
    """Same rows (order, labels, splits, COCO ids, boxes, causes), captions and vectors."""
    cols = ["file", "label", "split", "coco_id", "causes", "context"]
    assert store.images[cols].to_dict("records") == ref.images[cols].to_dict("records")
    assert store.images["bbox"].map(list).tolist() == ref.images["bbox"].map(list).tolist()
    assert store.captions[["image_row_id", "text"]].to_dict("records") == \
        ref.captions[["image_row_id", "text"]].to_dict("records")
    cos = np.sum(store.image_vectors * ref.image_vectors, axis=1)
    assert len(cos) == len(ref.images) and cos.min() >= 0.9999, cos
    assert store.manifest["skipped"] == []


def test_coco_root_on_s3_equals_the_local_build(s3_world, local_coco, tmp_path):
    ds_local, ref = local_coco
    opts = s3_world.options
    ds = load_dataset("builtin:demo", root=s3_world.url("world"), storage_options=opts, **PICK)
    assert ds.root == s3_world.url("world") and ds.reader is not None
    assert ds.images["etag"].str.startswith("etag:").all() and (ds.images["bytes"] > 0).all()
    assert ds.info["config"]["storage_options"]["secret"] == "***"  # never written
    assert ds.info["funnel"] == ds_local.info["funnel"]
    store = open_index(build_store(ds, [BACKBONE], out=tmp_path / "out",
                                   **FAST)[0].parent, BACKBONE)
    assert_same_store(store, ref)
    assert "testing" not in (tmp_path / "out" / "demo" / "dataset.json").read_text()


def test_coco_annotations_as_urls_over_local_images(small_world, http_root, local_coco,
                                                    tmp_path):
    """Annotation files over HTTP and as ``file://`` URLs, images in the local root."""
    folder, base = http_root
    (folder / "coco").mkdir(exist_ok=True)
    for name in ANNOTATIONS:
        (folder / "coco" / name).write_bytes((small_world / "annotations" / name).read_bytes())
    ds_local, ref = local_coco
    ds = load_dataset("builtin:demo", root=small_world, **PICK,
                      instances=f"{base}/coco/instances_val.json",
                      captions=f"{base}/coco/captions_val.json")
    assert ds.reader is None and "etag" not in ds.images.columns  # local images
    assert ds.info["fingerprint"] == ds_local.info["fingerprint"]  # causes found beside
    as_file = load_dataset("builtin:demo", root=small_world, **PICK,
                           instances=f"file://{small_world}/annotations/instances_val.json")
    assert as_file.info["fingerprint"] == ds_local.info["fingerprint"]
    store = open_index(build_store(ds, [BACKBONE], out=tmp_path / "out",
                                   **FAST)[0].parent, BACKBONE)
    assert_same_store(store, ref)
    with pytest.raises(DataError, match="captions_nope.json does not exist"):
        load_dataset("builtin:demo", root=small_world, **PICK,
                     captions=f"{base}/coco/captions_nope.json")


def test_coco_missing_annotation_on_s3_is_one_line(s3_world):
    with pytest.raises(DataError, match=r"instances_nope\.json does not exist") as err:
        load_dataset("builtin:demo", root=s3_world.url("world"),
                     storage_options=s3_world.options, **PICK,
                     instances="annotations/instances_nope.json")
    assert "\n" not in str(err.value)


def test_cli_build_of_a_coco_yaml_with_an_s3_root(s3_world, local_coco, tmp_path,
                                                  use_fake_encoders):
    import json

    from click.testing import CliRunner

    from clipindex.cli import main

    cfg = tmp_path / "coco.yaml"
    cfg.write_text("name: s3coco\nsource: coco\nsplit: val\n"
                   "instances: annotations/instances_{split}.json\n"
                   "captions: annotations/captions_{split}.json\nimages: '{split}'\n"
                   "classes: [cat, cow, dog]\nexclude: [person]\ndrop_multi_target: true\n"
                   "per_class: 3\nseed: 42\nsupport_per_class: 1\n")
    opts = [x for k, v in s3_world.options.items() for x in ("--storage-option", f"{k}={v}")]
    res = CliRunner().invoke(main, ["build", str(cfg), "--root", s3_world.url("world"),
                                    "--backbone", "fake-a", "--out", str(tmp_path / "o"),
                                    "--no-progress", "--workers", "0", "--json", *opts])
    assert res.exit_code == 0, res.output
    assert json.loads(res.stdout)["backbones"][0]["n_images"] == len(local_coco[0].images)
    missing = CliRunner().invoke(main, ["build", str(cfg), "--root", s3_world.url("nowhere"),
                                        "--backbone", "fake-a", "--out", str(tmp_path / "p"),
                                        "--no-progress", *opts])
    assert missing.exit_code == 2 and "instances_val.json does not exist" in missing.output
    assert "Traceback" not in missing.output
