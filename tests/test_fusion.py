"""fusion.py: folding a ResNet tower's BatchNorms into its convolutions keeps its vectors
(cosine within 1e-5 of open_clip's own, unfolded tower) and folds only known pairs."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from torch import nn

from clipindex.encode.backbones import resolve_backbone
from clipindex.encode.create import create_model
from clipindex.encode.encoder import load_encoder
from clipindex.encode.fusion import fold_batchnorm


@pytest.fixture(scope="module")
def plain_rn() -> nn.Module:
    """tiny-rn as open_clip builds it (trained weights: BatchNorm statistics not 0/1)."""
    model, _, _ = create_model(resolve_backbone("tiny-rn"), torch.device("cpu"))
    return model.eval().requires_grad_(False)


def _unit(x: torch.Tensor) -> np.ndarray:
    return torch.nn.functional.normalize(x, dim=-1).numpy()


def test_folding_keeps_the_towers_vectors(plain_rn: nn.Module) -> None:
    n_bn = sum(isinstance(m, nn.BatchNorm2d) for m in plain_rn.visual.modules())
    assert n_bn > 0
    folded = copy.deepcopy(plain_rn)
    assert fold_batchnorm(folded.visual) == n_bn  # every one: stem, blocks, downsample
    assert not any(isinstance(m, nn.BatchNorm2d) for m in folded.visual.modules())
    assert not any(p.requires_grad for p in folded.parameters())
    x = torch.randn(6, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    size = plain_rn.visual.image_size
    x = torch.nn.functional.interpolate(x, size=(size, size) if isinstance(size, int)
                                        else tuple(size))
    with torch.no_grad():
        want, got = _unit(plain_rn.encode_image(x)), _unit(folded.encode_image(x))
    assert float(np.min(np.sum(want * got, axis=1))) > 1 - 1e-5
    # the statistics were real: the unfolded BatchNorms did change the activations
    stats = [m.running_var for m in plain_rn.visual.modules() if isinstance(m, nn.BatchNorm2d)]
    assert max(float((v - 1).abs().max()) for v in stats) > 1e-2


def test_the_encoder_folds_a_resnet_and_encodes_as_open_clip(plain_rn: nn.Module) -> None:
    enc = load_encoder("tiny-rn", device="cpu")
    assert enc.channels_last and enc.folded_batchnorms == sum(
        isinstance(m, nn.BatchNorm2d) for m in plain_rn.visual.modules())
    size = enc.input_size
    pixels = torch.randint(0, 256, (5, 3, *size), dtype=torch.uint8,
                           generator=torch.Generator().manual_seed(2))
    x = (pixels.float() / 255 - torch.tensor(enc.mean).view(1, -1, 1, 1)) / torch.tensor(
        enc.std).view(1, -1, 1, 1)
    with torch.no_grad():
        want = _unit(plain_rn.encode_image(x))
    got = enc.encode_pixels(pixels)
    assert float(np.min(np.sum(want * got, axis=1))) > 1 - 1e-5


def test_a_vit_tower_is_left_alone() -> None:
    enc = load_encoder("tiny-vit", device="cpu")
    assert not enc.channels_last and enc.folded_batchnorms == 0


def test_only_pairs_in_a_known_order_and_eval_mode_are_folded() -> None:
    seq = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4)).eval()
    seq.train()  # batch statistics: not an affine map, not foldable
    assert fold_batchnorm(seq) == 0 and isinstance(seq[1], nn.BatchNorm2d)

    class Unknown(nn.Module):  # conv1/bn1 names, but a forward we do not know
        def __init__(self) -> None:
            super().__init__()
            self.conv1, self.bn1 = nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.conv1(self.bn1(x[:, :4]))  # pragma: no cover - never called

    module = Unknown().eval()
    assert fold_batchnorm(module) == 0 and isinstance(module.bn1, nn.BatchNorm2d)
    seq = nn.Sequential(nn.BatchNorm2d(3), nn.Conv2d(3, 4, 3)).eval()  # BN before conv
    assert fold_batchnorm(seq) == 0
