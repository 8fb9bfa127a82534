"""Pytest plugin: stand-in encoders/datasets for store tests, and the shared ``demo_store``.

``demo_store`` is a session-scoped store of the small demo world built with the three
tiny backbones (for other modules' tests). The stand-ins (``FakeEncoder``,
``make_image_dataset``, ``use_fake_encoders``) exercise the store mechanics on real
image files without any model weights: a fake vector is a fixed random projection of
the decoded pixels, so it depends on the image content and nothing else.
"""

from __future__ import annotations

import hashlib
import io
import os
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

FAKE_DIM = 24
FAKE_BACKBONES = ("fake-a", "fake-b", "fake-c")
#: ``demo_store``: the study protocol on the small world, scaled down (5 classes x 40).
DEMO_PER_CLASS = 40
DEMO_SUPPORT = 5


# ----------------------------------------------------------------------------- stand-ins
@dataclass(frozen=True)
class FakeSpec:
    """Mirrors :class:`clipindex.encode.backbones.BackboneSpec` (the fields the store reads)."""

    name: str
    display: str
    model: str
    pretrained: str | None
    source: str

    @property
    def checkpoint_path(self) -> Path | None:
        return Path(self.pretrained) if self.source == "file" and self.pretrained else None


def fake_resolve(name: str, pretrained: str | None = "default") -> FakeSpec:
    from clipindex.errors import UserInputError

    if name not in FAKE_BACKBONES:
        raise UserInputError(f"Unknown backbone {name!r}. Known: {', '.join(FAKE_BACKBONES)}")
    choice = "default" if pretrained is None else str(pretrained)
    if choice == "default":
        return FakeSpec(name, name.upper(), name, "v1", "tag")
    if choice == "none":
        return FakeSpec(f"{name}__none", name.upper(), name, None, "none")
    if Path(choice).is_file():
        stem = Path(choice).stem
        return FakeSpec(f"{name}__{stem}", name.upper(), name, str(Path(choice).resolve()),
                        "file")
    raise UserInputError(f"Unknown pretrained {choice!r}")


@dataclass
class FakeBatch:
    start: int
    vectors: np.ndarray
    skipped: list[tuple[int, str]] = field(default_factory=list)


class FakeEncoder:
    """Deterministic image/text vectors from file content; counts what it encodes."""

    encoded_images = 0  # class-wide counters, reset by tests
    encoded_batches = 0

    def __init__(self, spec: FakeSpec, device: Any = None) -> None:
        self.spec = spec
        self.device = device or "cpu"
        self.embed_dim = FAKE_DIM
        self.params = 1234
        self.image_size = 8
        self.context_length = 16
        self.default_batch_size = 4
        seed = int(hashlib.sha256(f"{spec.model}|{spec.pretrained}".encode()).hexdigest(), 16)
        self._proj = np.random.default_rng(seed % 2**32).standard_normal((8 * 8 * 3, FAKE_DIM))
        self._delay = float(os.environ.get("FAKE_ENCODER_DELAY", "0"))

    def _one(self, path: Any) -> np.ndarray:
        from PIL import Image

        if isinstance(path, BaseException):
            raise path
        source = io.BytesIO(path) if isinstance(path, bytes) else path
        with Image.open(source) as im:
            im.load()
            pixels = np.asarray(im.convert("RGB").resize((8, 8)), dtype=np.float64) / 255.0
        v = (pixels.reshape(-1) - 0.5) @ self._proj
        return (v / np.linalg.norm(v)).astype(np.float32)

    def iter_image_batches(self, files: Sequence[Any], *, batch_size: int | None = None,
                           workers: int | None = None, progress: bool = True,
                           start: int = 0, reader: Any = None) -> Iterator[FakeBatch]:
        bs = batch_size or self.default_batch_size
        for b in range(start, len(files), bs):
            chunk = files[b:b + bs] if reader is None else reader.read_many(files[b:b + bs])
            out = np.zeros((len(chunk), FAKE_DIM), dtype=np.float32)
            skipped = []
            for j, f in enumerate(chunk):
                try:
                    out[j] = self._one(f if isinstance(f, (bytes, BaseException)) else str(f))
                except Exception as exc:  # noqa: BLE001 - the real encoder skips any failure
                    skipped.append((b + j, f"{type(exc).__name__}: {exc}"))
            if self._delay:
                time.sleep(self._delay)
            FakeEncoder.encoded_images += len(chunk)
            FakeEncoder.encoded_batches += 1
            yield FakeBatch(b, out, skipped)

    def encode_texts(self, texts: Sequence[str]) -> np.ndarray:
        out = np.zeros((len(texts), FAKE_DIM), dtype=np.float32)
        for i, t in enumerate(texts):
            seed = int(hashlib.sha256(f"{self.spec.model}|{t}".encode()).hexdigest(), 16)
            v = np.random.default_rng(seed % 2**32).standard_normal(FAKE_DIM)
            out[i] = v / np.linalg.norm(v)
        return out


def fake_load_encoder(spec: Any, *, pretrained: Any = "default", device: Any = None,
                      **_: Any) -> FakeEncoder:
    if isinstance(spec, str):
        spec = fake_resolve(spec, pretrained)
    return FakeEncoder(spec, device)


#: GFLOPs per image the stand-ins claim: a CPU build chooses batch 128 for them.
FAKE_GFLOPS = 3.0


def fake_model_facts(spec: Any) -> Any:
    """What :func:`clipindex.encode.facts.model_facts` says of a stand-in backbone."""
    from clipindex.encode.facts import ModelFacts

    return ModelFacts(gflops=FAKE_GFLOPS, input_size=(8, 8), embed_dim=FAKE_DIM, resnet=False)


def install_fakes(monkeypatch: pytest.MonkeyPatch) -> None:
    """Route clipindex's backbone registry, model facts, weights check and encoder
    loading to the stand-ins."""
    from clipindex.encode import backbones, facts, hub
    from clipindex.encode import encoder as encoders

    monkeypatch.setattr(backbones, "resolve_backbone", fake_resolve)
    monkeypatch.setattr(facts, "model_facts", fake_model_facts)
    monkeypatch.setattr(hub, "check_weights", lambda *a: None)  # no hub for stand-ins
    monkeypatch.setattr(encoders, "load_encoder", fake_load_encoder)


@pytest.fixture
def use_fake_encoders(monkeypatch: pytest.MonkeyPatch) -> type[FakeEncoder]:
    install_fakes(monkeypatch)
    FakeEncoder.encoded_images = FakeEncoder.encoded_batches = 0
    return FakeEncoder


@pytest.fixture(scope="module")
def faiss_single_thread() -> Iterator[None]:
    """FAISS on one OpenMP thread: on a shared 2-core box, more threads spin and run
    20-40x slower (PQ training: 0.1 s vs 4 s)."""
    import faiss

    before = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(1)
    yield
    faiss.omp_set_num_threads(before)


# ----------------------------------------------------------------------------- datasets
@dataclass
class FakeDataset:
    """Mirrors :class:`clipindex.sources.Dataset`."""

    name: str
    root: Path
    images: pd.DataFrame
    captions: pd.DataFrame
    info: dict[str, Any]

    def image_paths(self) -> list[Path]:
        return [self.root / f for f in self.images["file"]]


def write_images(root: Path, n_per_class: int, classes: Sequence[str] = ("cat", "dog"),
                 seed: int = 0) -> list[str]:
    """Small JPEGs in class folders ``root/<class>/<i>.jpg``; returns relative paths."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    rel = []
    for c, name in enumerate(classes):
        (root / name).mkdir(parents=True, exist_ok=True)
        for i in range(n_per_class):
            arr = rng.integers(0, 256, size=(12 + i % 5, 16, 3), dtype=np.uint8)
            arr[..., c % 3] = np.clip(arr[..., c % 3].astype(int) + 80, 0, 255)
            path = root / name / f"{i:03d}.jpg"
            Image.fromarray(arr).save(path, quality=90)
            rel.append(f"{name}/{i:03d}.jpg")
    return rel


def dataset_from_files(root: Path, rel: Sequence[str], name: str = "toy") -> FakeDataset:
    labels = [r.split("/")[0] for r in rel]
    images = pd.DataFrame({
        "row_id": np.arange(len(rel)), "file": list(rel), "width": 16, "height": 12,
        "label": labels, "split": ["support" if i % 5 == 0 else "test" for i in range(len(rel))],
    })
    captions = pd.DataFrame({
        "row_id": np.arange(2 * len(rel)),
        "image_row_id": np.repeat(np.arange(len(rel)), 2),
        "text": [f"a photo of a {lab} number {i} take {t}"
                 for i, lab in enumerate(labels) for t in range(2)],
        "label": np.repeat(labels, 2),
    })
    from clipindex.sources import fingerprint

    info = {"source": "test", "fingerprint": fingerprint(images, captions),
            "classes": sorted(set(labels))}
    return FakeDataset(name, root, images, captions, info)


def make_image_dataset(root: Path, n_per_class: int = 10, name: str = "toy",
                       seed: int = 0) -> FakeDataset:
    return dataset_from_files(root, write_images(root, n_per_class, seed=seed), name)


# ----------------------------------------------------------------------------- demo store
@pytest.fixture(scope="session")
def demo_world(small_world: Path) -> Path:
    """The small demo world (seed 0; ``fixtures_world.small_world``) that the shipped tiny
    backbones were trained on. No skip: the weights ship with the package, so a broken
    import or a missing file fails the tests that need them."""
    return small_world


@pytest.fixture(scope="session")
def demo_store(demo_world: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``OUT/<dataset>`` (``demo``) of the small demo world built with the three tiny
    backbones: demo.yaml's protocol with ``per_class=DEMO_PER_CLASS`` (200 images,
    1000 captions) and ``support_per_class=DEMO_SUPPORT``. Treat it as read-only.
    """
    import torch

    from clipindex import tiny
    from clipindex.sources import load_dataset
    from clipindex.store import build_store

    torch.set_num_threads(2)
    out = tmp_path_factory.mktemp("demo-store")
    config = "builtin:demo"
    # The small world has ~42 val images per class; the study's 200 needs scale="default".
    dataset = load_dataset(config, root=demo_world, per_class=DEMO_PER_CLASS,
                           support_per_class=DEMO_SUPPORT)
    paths = build_store(dataset, list(tiny.TINY_BACKBONES), out=out, workers=0,
                        batch_size=64, progress=False)
    return paths[0].parent
