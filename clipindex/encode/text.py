"""Batched text encoding: captions sorted by length, each batch cut to its longest caption.

open_clip pads every text to the context length (77 tokens) and runs the whole padded
sequence through the text tower; a caption is ~15 tokens, so most of that work is on
padding. CLIP's text tower is causal and pools the end-of-text token, so positions after
the last end-of-text token of a batch can change nothing that is pooled: cutting them
off gives the same vectors (float noise only) for a fraction of the work. Sorting by
length first keeps the batches short. Models whose text tower is not the plain causal
CLIP one (HF towers, class-token or bidirectional towers) take open_clip's own
``encode_text`` on the full sequence.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import torch

__all__ = ["can_trim", "encode_tokens", "pool_positions"]


def can_trim(model: Any) -> bool:
    """Whether ``model``'s text tower is the plain causal CLIP tower (safe to cut)."""
    needed = ("token_embedding", "positional_embedding", "transformer", "ln_final",
              "attn_mask", "text_pool_type")
    if not all(hasattr(model, name) for name in needed):
        return False
    mask = getattr(model, "attn_mask", None)
    return (isinstance(mask, torch.Tensor) and mask.ndim == 2
            and model.text_pool_type in ("argmax", "eos")
            and getattr(model, "cls_emb", None) is None)


def pool_positions(model: Any, tokens: torch.Tensor) -> torch.Tensor:
    """The position each row is pooled at (its end-of-text token)."""
    if model.text_pool_type == "eos":
        return (tokens == model.text_eos_id).int().argmax(dim=-1)
    return tokens.argmax(dim=-1)


def _trimmed(model: Any, tokens: torch.Tensor) -> torch.Tensor:
    """open_clip ``CLIP.encode_text`` on ``tokens`` cut to their last pooled position."""
    from open_clip.transformer import text_global_pool

    length = int(pool_positions(model, tokens).max()) + 1
    tokens = tokens[:, :length]
    cast = model.transformer.get_cast_dtype()
    x = model.token_embedding(tokens).to(cast)
    x = x + model.positional_embedding[:length].to(cast)
    x = model.transformer(x, attn_mask=model.attn_mask[:length, :length])
    x = model.ln_final(x)
    x = text_global_pool(x, tokens, model.text_pool_type,
                         eos_token_id=getattr(model, "text_eos_id", None))
    projection = model.text_projection
    if projection is None:
        return x
    return projection(x) if isinstance(projection, torch.nn.Linear) else x @ projection


def encode_tokens(model: Any, tokens: torch.Tensor, batch_size: int, device: torch.device,
                  run: Callable[[Callable[[], torch.Tensor]], np.ndarray]) -> np.ndarray:
    """Encode ``(n, context)`` token ids in length-sorted batches; rows in input order.

    ``run(fn)`` calls ``fn()`` (under the caller's autocast) and returns unit rows.
    """
    trim = can_trim(model)
    order = (torch.argsort(pool_positions(model, tokens), stable=True) if trim
             else torch.arange(len(tokens)))
    parts: list[np.ndarray] = []
    for begin in range(0, len(tokens), batch_size):
        chunk = tokens[order[begin:begin + batch_size]].to(device)

        def forward(c: torch.Tensor = chunk) -> torch.Tensor:
            return _trimmed(model, c) if trim else model.encode_text(c)

        parts.append(run(forward))
    vectors = np.concatenate(parts) if parts else np.zeros((0, 0), dtype=np.float32)
    out = np.empty_like(vectors)
    out[order.numpy()] = vectors
    return out

