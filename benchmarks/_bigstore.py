"""Large synthetic stores for the query-cost benchmarks (``bench_search``, ``bench_serve``).

A store of ``n`` images and ``n`` captions written by the store's own writers (tables,
matrices, FAISS indexes through ``write_outputs``, a sealed format-2 manifest), from
clustered unit vectors (centres plus noise, as CLIP embeddings cluster): nothing is
encoded. With ``template`` (the manifest of a real backbone folder, e.g. the demo
store's ``tiny-vit``) the store carries that backbone's identity, so ``clipindex serve``
loads its encoder and encodes text queries; query texts given in ``texts`` are put in the
store's text cache with random vectors, so an in-process search needs no model.

Until ``clipindex import`` (clip-retrieval's layout) lands, this is how the benchmarks
make 1M-row stores.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

CLASSES = np.array(["cat", "dog", "cow", "sheep", "horse"])
IDENTITY = ("backbone", "display_name", "model_name", "pretrained", "weights",
            "weights_source", "random_init_seed", "tokenizer", "context_length", "requested",
            "params", "image_size")


def clustered(n: int, dim: int, seed: int, centres: int = 1000, noise: float = 0.9,
              chunk: int = 65536) -> np.ndarray:
    """``n`` unit vectors (float32) around ``centres`` random unit centres."""
    rng = np.random.default_rng(seed)
    c = rng.standard_normal((centres, dim)).astype(np.float32)
    c /= np.linalg.norm(c, axis=1, keepdims=True)
    out = np.empty((n, dim), dtype=np.float32)
    for start in range(0, n, chunk):
        m = min(chunk, n - start)
        block = c[rng.integers(0, centres, m)] + noise * rng.standard_normal(
            (m, dim), dtype=np.float32) / np.sqrt(dim)
        out[start:start + m] = block / np.linalg.norm(block, axis=1, keepdims=True)
    return out


def tables(n: int) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Image and caption tables of ``n`` rows each (caption i belongs to image i)."""
    ids = np.arange(n)
    images = pd.DataFrame({"row_id": ids, "file": [f"img/{i:07d}.jpg" for i in range(n)],
                           "width": 320 + ids % 321, "height": 480, "label": CLASSES[ids % 5],
                           "split": np.where(ids % 20 == 0, "support", "test")})
    captions = pd.DataFrame({"row_id": ids, "image_row_id": ids,
                             "text": [f"a photo of a {CLASSES[i % 5]} number {i}"
                                      for i in range(n)],
                             "label": CLASSES[ids % 5]})
    return images, captions


def write_store(ddir: Path, n: int, *, kind: str = "flat", dim: int = 64,
                dtype: str = "float32", folder: str = "synthetic",
                template: dict[str, Any] | None = None, texts: list[str] | tuple[str, ...] = (),
                seed: int = 0, reuse: Path | None = None) -> Path:
    """``ddir`` (``OUT/<dataset>``) with one backbone folder of ``n`` rows; returns it.
    ``reuse``: a backbone folder this function wrote with the same ``n``, ``kind``,
    ``dim``, ``dtype`` and ``seed``, whose matrices and FAISS files are copied (an auto
    index of 1M rows takes minutes to tune)."""
    from clipindex.index.tuning import AutoSettings
    from clipindex.sources import fingerprint
    from clipindex.store.manifest import (
        FORMAT_VERSION,
        TEXT_CACHE,
        file_records,
        table_records,
        text_cache_key,
        write_json,
        write_manifest,
        write_parquet,
    )
    from clipindex.store.outputs import write_outputs
    from clipindex.store.textcache import TextCache

    shutil.rmtree(ddir, ignore_errors=True)
    ddir.mkdir(parents=True)
    images, captions = tables(n)
    write_parquet(ddir / "images.parquet", images)
    write_parquet(ddir / "captions.parquet", captions)
    fp = fingerprint(images.head(0), captions.head(0)) + f"-{n}-{seed}"
    write_json(ddir / "dataset.json", {"name": ddir.name, "fingerprint": fp,
                                       "tables": table_records(ddir)})
    del images, captions
    bdir = ddir / folder
    bdir.mkdir()
    if reuse is not None and (reuse / "manifest.json").is_file():
        from clipindex.store.manifest import OUTPUT_FILES, read_manifest

        for name in OUTPUT_FILES:
            shutil.copyfile(reuse / name, bdir / name)
        index = read_manifest(reuse)["index"]
    else:
        x_img, x_cap = clustered(n, dim, seed), clustered(n, dim, seed + 1)
        index = write_outputs(bdir, x_img, x_cap, np.ones(n, bool), dtype, kind,
                              AutoSettings(queries=200) if kind == "auto" else None)
        del x_img, x_cap
    manifest = {k: v for k, v in (template or {}).items() if k in IDENTITY}
    manifest.setdefault("backbone", folder)
    manifest.setdefault("weights", "none")
    manifest.update({
        "format_version": FORMAT_VERSION, "backbone_folder": folder, "dim": dim,
        "dtype": dtype, "n_images": n, "n_captions": n, "n_skipped": 0,
        "dataset_fingerprint": fp, "index": index, "skipped": []})
    if texts:
        rng = np.random.default_rng(seed + 2)
        vectors = rng.standard_normal((len(texts), dim)).astype(np.float32)
        vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
        TextCache(bdir / TEXT_CACHE, text_cache_key(manifest), dim).save(
            dict(zip(texts, vectors, strict=True)))
    write_manifest(bdir, {**manifest, "files": file_records(bdir)})
    return ddir
