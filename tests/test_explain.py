"""Grad-CAM explanations: map shape and content, layers, state, pictures, CLI, and the
box-mass check on the tiny ResNet and ViT backbones."""

from __future__ import annotations

import json
import zlib
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import open_clip
import pandas as pd
import pytest
import torch
from click.testing import CliRunner
from PIL import Image

from clipindex.errors import UserInputError
from clipindex.explain import (
    SimilarityTarget,
    box_mass,
    class_vectors,
    default_layer,
    explain,
    explain_errors,
    explain_rows,
    gradcam_panel,
    image_embedding,
    overlay,
    resolve_layer,
)
from clipindex.explain.cam import _Geometry, _RESIZE_MODES, _to_original

CLASSES = ("cat", "dog", "cow")
_TEXT_CFG = {"context_length": 8, "vocab_size": 64, "width": 16, "heads": 2, "layers": 1}
_VISION_CFGS = {
    "rn": {"image_size": 64, "layers": [1, 1, 1, 1], "width": 8, "head_width": 8},
    "vit": {"image_size": 32, "patch_size": 4, "width": 32, "layers": 2, "head_width": 16},
}


@pytest.fixture(autouse=True)
def _threads():
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    yield
    torch.set_num_threads(before)


def _small_clip(kind: str, seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    return open_clip.CLIP(embed_dim=24, vision_cfg=_VISION_CFGS[kind], text_cfg=_TEXT_CFG)


def _picture(width: int, height: int, seed: int = 0) -> Image.Image:
    """Noise with a bright square subject left of centre."""
    rng = np.random.default_rng(seed)
    arr = rng.integers(0, 90, (height, width, 3), dtype=np.uint8)
    s = min(width, height) // 3
    y0, x0 = (height - s) // 2, width // 2 - s
    arr[y0 : y0 + s, x0 : x0 + s] = (250, 200, 40)
    return Image.fromarray(arr)


def _direction(model: torch.nn.Module, seed: int = 0) -> np.ndarray:
    dim = int(model.text_projection.shape[1])
    return np.random.default_rng(seed).standard_normal(dim).astype(np.float32)


def _signed_cam(img, model, v, **kwargs) -> tuple[np.ndarray, np.ndarray]:
    """With random weights, Grad-CAM's ReLU may leave nothing for one sign of a random
    class direction; then the opposite direction has the positive evidence."""
    cam = explain(img, model, v, **kwargs)
    if cam.std() > 0.01:
        return v, cam
    return -v, explain(img, model, -v, **kwargs)


# ----------------------------------------------------------------------------- real archs
@pytest.fixture(scope="module", params=["RN50", "ViT-B-32"])
def real_model(request):
    torch.manual_seed(0)
    return request.param, open_clip.create_model(request.param, pretrained=None)


def test_real_architectures_map_has_input_size_and_is_not_constant(real_model):
    name, model = real_model
    img = _picture(260, 150)
    _, cam = _signed_cam(img, model, _direction(model, seed=1))
    assert cam.shape == (150, 260)
    assert cam.dtype == np.float32 and cam.min() >= 0.0 and cam.max() <= 1.0
    assert cam.std() > 0.01, f"{name}: the CAM is constant"
    # 'shortest' resize + centre crop: the model saw x in [55, 205) only.
    assert np.all(cam[:, :54] == 0) and np.all(cam[:, 206:] == 0)
    assert cam[:, 56:204].max() > 0.5
    expected = {"RN50": "visual.layer4[-1]", "ViT-B-32": "visual.transformer.resblocks[-1].ln_1"}
    assert default_layer(model) == expected[name]


# ----------------------------------------------------------------------------- layers, state
def test_default_layer_keeps_a_real_grid_for_small_resnets():
    assert default_layer(_small_clip("rn")) == "visual.layer2[-1]"  # 64 px: layer4 is 2x2
    model = _small_clip("rn")
    model.visual.image_size = 128
    assert default_layer(model) == "visual.layer3[-1]"  # layer4 would be 4x4
    assert default_layer(_small_clip("vit")) == "visual.transformer.resblocks[-1].ln_1"


def test_resolve_layer_accepts_dotted_and_indexed_names():
    model = _small_clip("rn")
    assert resolve_layer(model, "visual.layer4[-1]") is model.visual.layer4[-1]
    assert resolve_layer(model, "visual.layer4.0") is model.visual.layer4[0]
    assert resolve_layer(model, "layer2") is model.visual.layer2


@pytest.mark.parametrize("name", ["visual.layer9", "visual.layer4[5]", "", "visual.layer4.0.x"])
def test_unknown_layer_is_a_one_line_error_listing_valid_names(name):
    model = _small_clip("rn")
    with pytest.raises(UserInputError, match=r"Unknown layer .*visual\.layer1") as info:
        explain(_picture(64, 64), model, np.ones(24), layer=name)
    assert "\n" not in str(info.value)


def test_explain_leaves_the_model_as_it_was():
    model = _small_clip("vit")
    model.train()
    model.visual.conv1.weight.requires_grad_(False)
    flags = {n: p.requires_grad for n, p in model.named_parameters()}
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    cam = explain(_picture(48, 40), model, np.arange(24, dtype=np.float32) - 12)
    assert cam.shape == (40, 48)
    assert all(m.training for m in model.modules())
    assert flags == {n: p.requires_grad for n, p in model.named_parameters()}
    assert all(p.grad is None for p in model.parameters())
    assert all(torch.equal(before[n], p) for n, p in model.named_parameters())


def test_other_layer_gives_another_map_and_target_changes_the_map():
    model = _small_clip("rn", seed=1)
    img = _picture(96, 80, seed=2)
    v, default = _signed_cam(img, model, _direction(model))
    early = explain(img, model, v, layer="visual.layer1")
    assert default.shape == early.shape == (80, 96)
    assert not np.allclose(default, early)
    assert not np.allclose(default, explain(img, model, -v))


def test_similarity_target_is_the_cosine():
    rng = np.random.default_rng(0)
    v, e = rng.standard_normal(8), rng.standard_normal(8)
    got = float(SimilarityTarget(v)(torch.tensor(e, dtype=torch.float32)))
    assert got == pytest.approx(v @ e / np.linalg.norm(v) / np.linalg.norm(e), abs=1e-6)
    with pytest.raises(UserInputError, match="zero"):
        SimilarityTarget(np.zeros(8))


# ----------------------------------------------------------------------------- geometry
@pytest.mark.parametrize(
    ("mode", "region"),
    [
        ("shortest", (0, 50, 100, 150)),  # 100x200 portrait: centre 100x100 seen
        ("squash", (0, 0, 100, 200)),
        ("longest", (0, 0, 100, 200)),
    ],
)
def test_cam_maps_back_onto_the_part_of_the_image_the_model_saw(mode, region):
    geo: _Geometry = _RESIZE_MODES[mode](100, 200, 32, 32)
    cam = np.zeros((32, 32), np.float32)
    dx, dy, dw, dh = geo.dst
    cam[dy : dy + dh, dx : dx + dw] = 1.0
    back = _to_original(cam, geo)
    x0, y0, x1, y1 = region
    assert back.shape == (200, 100)
    assert back[y0:y1, x0:x1].min() > 0.99
    assert back.sum() == pytest.approx((x1 - x0) * (y1 - y0), rel=0.02)


# ----------------------------------------------------------------------------- pictures
def test_box_mass_and_overlay_and_panel(tmp_path):
    cam = np.zeros((40, 60), np.float32)
    cam[10:20, 30:50] = 1.0
    assert box_mass(cam, (30, 10, 20, 10)) == pytest.approx(1.0)
    assert box_mass(cam, (0, 0, 30, 40)) == 0.0
    assert box_mass(np.zeros((4, 4)), (0, 0, 2, 2)) == 0.0
    img = _picture(60, 40)
    over = overlay(img, cam)
    assert over.size == (60, 40) and over.mode == "RGB"
    assert not np.array_equal(np.asarray(over), np.asarray(img))
    with pytest.raises(UserInputError, match="does not match"):
        overlay(img, cam.T)
    panel = gradcam_panel([(img, cam, "true cat / pred dog 0.71")] * 3, columns=2, thumb=64,
                          title="tiny-rn")
    assert panel.width == 2 * (64 + 8) + 8
    panel.save(tmp_path / "p.png")
    with Image.open(tmp_path / "p.png") as reread:
        assert reread.size == panel.size
    with pytest.raises(UserInputError):
        gradcam_panel([])
