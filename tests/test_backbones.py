"""backbones.py: names ↔ open_clip names ↔ store folders; real architectures' shapes; an
unfetchable tag is a ModelLoadError pointing at a local checkpoint (never downloads)."""

from __future__ import annotations

import gc
from pathlib import Path

import numpy as np
import pytest
import torch

from clipindex.encode.backbones import (
    STUDY_BACKBONES,
    BackboneSpec,
    known_backbones,
    resolve_backbone,
)
from clipindex.encode.encoder import load_encoder
from clipindex.errors import ModelLoadError, UserInputError


@pytest.mark.parametrize(
    ("name", "model", "display"),
    [("RN50", "RN50", "RN50"), ("RN50x4", "RN50x4", "RN50x4"), ("RN50x16", "RN50x16", "RN50x16"),
     ("ViT-B/32", "ViT-B-32", "ViT-B/32"), ("ViT-B-32", "ViT-B-32", "ViT-B/32"),
     ("ViT-B/16", "ViT-B-16", "ViT-B/16"), ("ViT-L/14", "ViT-L-14", "ViT-L/14"),
     ("ViT-L/14@336px", "ViT-L-14-336", "ViT-L/14@336px"),
     ("ViT-L-14-336", "ViT-L-14-336", "ViT-L/14@336px"),
     ("vit-l/14@336", "ViT-L-14-336", "ViT-L/14@336px")],
)
def test_study_names_and_open_clip_names_meet(name: str, model: str, display: str) -> None:
    spec = resolve_backbone(name)
    assert (spec.name, spec.model, spec.display) == (model, model, display)
    assert spec.pretrained == "openai" and spec.source == "tag"
    assert spec.quick_gelu  # OpenAI weights were trained with QuickGELU


def test_folder_names_for_non_default_weights() -> None:
    assert resolve_backbone("ViT-B/32", "none").name == "ViT-B-32__none"
    assert resolve_backbone("ViT-B/32", None).pretrained is None
    assert resolve_backbone("ViT-B/32", "openai").name == "ViT-B-32"
    laion = resolve_backbone("ViT-B/32", "laion2b_s34b_b79k")
    assert laion.name == "ViT-B-32__laion2b_s34b_b79k" and not laion.quick_gelu
    assert laion.display == "ViT-B/32"
    other = resolve_backbone("RN101")  # any open_clip name; openai is its default when listed
    assert (other.name, other.display, other.pretrained) == ("RN101", "RN101", "openai")


def test_unknown_names_and_tags_list_what_is_known() -> None:
    with pytest.raises(UserInputError) as info:
        resolve_backbone("ViT-B/31")
    message = str(info.value)
    assert message.startswith("Unknown backbone 'ViT-B/31'. Known: RN50, RN50x4, RN50x16, ")
    assert all(name in message for name in STUDY_BACKBONES)
    assert "open_clip.list_models()" in message
    with pytest.raises(UserInputError, match="laion2b_s34b_b79k"):
        resolve_backbone("ViT-B/32", "laion9000")
    with pytest.raises(UserInputError, match="does not exist"):
        resolve_backbone("ViT-B/32", "/nowhere/weights.bin")
    with pytest.raises(UserInputError, match="no default pretrained"):
        resolve_backbone("convnext_base")
    with pytest.raises(UserInputError, match="open_clip_config.json"):
        resolve_backbone("local-dir:/nowhere")
    assert known_backbones()[:7] == list(STUDY_BACKBONES)
    assert "ViT-H-14" in known_backbones(include_open_clip=True)


def test_checkpoint_file_and_local_dir_names(tmp_path: Path) -> None:
    weights = tmp_path / "open_clip_pytorch_model.bin"
    weights.write_bytes(b"x")
    spec = resolve_backbone("ViT-B/32", str(weights))
    assert spec.name == "ViT-B-32__open_clip_pytorch_model" and spec.source == "file"
    assert spec.checkpoint_path == weights.resolve() and spec.quick_gelu
    folder = tmp_path / "my-clip"
    folder.mkdir()
    (folder / "open_clip_config.json").write_text("{}")
    direct = resolve_backbone(f"local-dir:{folder}")
    assert (direct.name, direct.source, direct.model) == ("my-clip", "dir", f"local-dir:{folder}")
    via_pretrained = resolve_backbone("ViT-B/32", str(folder))
    assert via_pretrained.name == "ViT-B-32__my-clip" and via_pretrained.source == "dir"
    # open_clip's spelling as --pretrained is the same folder (the README offers both)
    assert resolve_backbone("ViT-B/32", f"local-dir:{folder}") == via_pretrained


def test_spec_is_frozen() -> None:
    spec = resolve_backbone("RN50")
    assert isinstance(spec, BackboneSpec)
    with pytest.raises(AttributeError):
        spec.name = "other"  # type: ignore[misc]


def test_unfetchable_tag_is_a_model_load_error_naming_a_local_checkpoint(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    import huggingface_hub.constants as hf_constants
    from open_clip import pretrained

    # Offline and with an empty cache, so nothing can be fetched or found.
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(hf_constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(hf_constants, "HF_HUB_CACHE", str(tmp_path / "hub"))

    def no_url_downloads(*args: object, **kwargs: object) -> str:
        raise RuntimeError("network disabled in tests")

    monkeypatch.setattr(pretrained, "download_pretrained_from_url", no_url_downloads)
    with pytest.raises(ModelLoadError) as info:
        load_encoder("RN50", device="cpu")
    message = str(info.value)
    assert "\n" not in message
    assert "'openai'" in message and "RN50" in message
    assert "--pretrained /path/to/open_clip_pytorch_model.bin" in message


def _check_real(name: str, params: int, image_size: int, embed_dim: int) -> None:
    encoder = load_encoder(name, pretrained="none", device="cpu")
    try:
        assert encoder.params == params
        assert (encoder.image_size, encoder.embed_dim, encoder.context_length) == (
            image_size, embed_dim, 77)
        vectors = encoder.encode_pixels(torch.zeros(1, 3, image_size, image_size,
                                                    dtype=torch.uint8))
        assert vectors.shape == (1, embed_dim)
        assert encoder.encode_texts(["a photo of a cow"]).shape == (1, embed_dim)
    finally:
        del encoder
        gc.collect()


def test_real_vit_b_32_random_init_shape() -> None:
    torch.set_num_threads(2)
    _check_real("ViT-B/32", 151_277_313, 224, 512)


def test_real_rn50_random_init_shape() -> None:
    torch.set_num_threads(2)
    _check_real("RN50", 102_007_137, 224, 1024)


@pytest.mark.slow
def test_real_vit_l_14_336_random_init_shape() -> None:
    torch.set_num_threads(2)
    _check_real("ViT-L/14@336px", 427_944_193, 336, 768)


def test_tiny_backbones_resolve_to_their_shipped_folders() -> None:
    from clipindex import tiny
    from clipindex.encode import registered_backbone, registered_backbones

    assert registered_backbones()[: len(tiny.TINY_BACKBONES)] == list(tiny.TINY_BACKBONES)
    for name in tiny.TINY_BACKBONES:
        spec = resolve_backbone(name)
        assert (spec.name, spec.display, spec.source, spec.tiny) == (name, name, "dir", True)
        assert spec.checkpoint_path == Path(tiny.checkpoint_dir(name)).resolve()
        assert resolve_backbone(name, "none").name == f"{name}__none"
        assert registered_backbone(name.upper()).folder() == tiny.checkpoint_dir(name)


def test_tiny_backbones_load() -> None:
    from clipindex import tiny

    name = tiny.TINY_BACKBONES[0]
    encoder = load_encoder(name, device="cpu")
    assert encoder.spec.name == name and encoder.checkpoint_sha256 is not None
    assert len(encoder.checkpoint_sha256) == 64
    assert encoder.encode_texts(["a photo of a cow"]).shape == (1, encoder.embed_dim)
    random_init = load_encoder(name, pretrained="none", device="cpu")
    assert random_init.embed_dim == encoder.embed_dim
    assert random_init.params == encoder.params


def test_a_registered_backbone_is_resolved_and_loaded_like_a_tiny_one(tmp_path: Path) -> None:
    """The registry is the one entry point: a copy of a shipped folder registered under
    another name resolves to it and loads with its tokenizer, no special case needed."""
    import shutil

    from clipindex import tiny
    from clipindex.encode import RegisteredBackbone, register_backbone
    from clipindex.encode import backbones as registry

    folder = tmp_path / "my-tiny"
    shutil.copytree(tiny.checkpoint_dir("tiny-vit-s"), folder)
    calls = []
    entry = RegisteredBackbone("my-tiny", lambda: folder, lambda: calls.append(1))
    try:
        register_backbone(entry)
        with pytest.raises(UserInputError, match="registered already"):
            register_backbone(entry)
        spec = resolve_backbone("my-tiny")
        assert (spec.source, spec.checkpoint_path, spec.tiny) == ("dir", folder.resolve(), True)
        enc = load_encoder(spec, device="cpu")
        ref = load_encoder("tiny-vit-s", device="cpu")
        assert calls == [1]
        np.testing.assert_array_equal(enc.encode_texts(["a photo of a cow"]),
                                      ref.encode_texts(["a photo of a cow"]))
    finally:
        registry._REGISTRY.pop("my-tiny", None)
