"""Folding a ResNet tower's BatchNorm layers into the convolutions before them.

In eval mode a BatchNorm is a fixed per-channel affine map, so ``bn(conv(x))`` equals one
convolution with rescaled weights and a bias (torch's own
:func:`torch.nn.utils.fusion.fuse_conv_bn_eval` computes them). On a CPU every BatchNorm
is one more pass over an activation map: folding the 55 of open_clip's RN50 made its
image tower 17-21% faster on 2 cores (batch 8-32), at a minimum cosine of 0.9999998 to
the unfolded tower's vectors (issue 21).

Only pairs whose order in ``forward`` is known are folded: ``convN`` → ``bnN`` inside
open_clip's ``ModifiedResNet`` stem and its ``Bottleneck`` blocks (their ``forward`` is
``bnN(convN(x))``), and a ``Conv2d`` directly followed by a ``BatchNorm2d`` in an
``nn.Sequential`` (the blocks' ``downsample``). The folded model is for inference only:
it is what :class:`~clipindex.encode.encoder.Encoder` holds, which never trains.
"""

from __future__ import annotations

from itertools import pairwise

from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_eval

__all__ = ["fold_batchnorm"]

#: Modules whose ``forward`` applies ``bnN`` directly to ``convN``'s output.
_NAMED_PAIRS = {"ModifiedResNet": 3, "Bottleneck": 3}


def _pairs(module: nn.Module) -> list[tuple[str, str]]:
    if isinstance(module, nn.Sequential):
        return list(pairwise(name for name, _ in module.named_children()))
    count = _NAMED_PAIRS.get(type(module).__name__, 0)
    return [(f"conv{i}", f"bn{i}") for i in range(1, count + 1)]


def fold_batchnorm(tower: nn.Module) -> int:
    """Fold every eval-mode ``BatchNorm2d`` of ``tower`` that directly follows a
    ``Conv2d`` (in the sense above) into it; the BatchNorm becomes ``nn.Identity``.
    Returns the number folded. Memory format and ``requires_grad`` are kept.

    Examples
    --------
    >>> block = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4)).eval()
    >>> fold_batchnorm(block)
    1
    >>> type(block[1]).__name__
    'Identity'
    """
    folded = 0
    for module in list(tower.modules()):
        for conv_name, bn_name in _pairs(module):
            conv = getattr(module, conv_name, None)
            bn = getattr(module, bn_name, None)
            if not (type(conv) is nn.Conv2d and type(bn) is nn.BatchNorm2d):
                continue
            if bn.training or bn.running_mean is None or bn.running_var is None:
                continue  # a BatchNorm that normalises by batch statistics: not affine
            fused = fuse_conv_bn_eval(conv, bn)  # keeps the weight's memory format
            fused.requires_grad_(conv.weight.requires_grad)  # its new bias: no grad
            setattr(module, conv_name, fused)
            setattr(module, bn_name, nn.Identity())
            folded += 1
    return folded
