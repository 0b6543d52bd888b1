"""Moving cached keys to new position ids: pure tensor functions on post-RoPE keys.

A rotary key at position `p` is the raw key turned by the angles `p * inv_freq`. Turning it again
by `(q - p) * inv_freq` gives exactly the key the model would have cached at position `q`, so a
finished cache can be given new position ids without running the model again: only keys change,
values carry no position.

HOMER uses this to give the final cache consecutive positions `0 .. T-1` in cache (document)
order (`HomerConfig(positions="compact")`, the default; see docs/DESIGN.md for the evidence).
"""

from __future__ import annotations

import torch


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    """`[x1, x2] -> [-x2, x1]` over the last dimension (Llama-style rotary pairing)."""
    half = x.shape[-1] // 2
    return torch.cat([-x[..., half:], x[..., :half]], dim=-1)


def turn_keys(keys: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate post-RoPE keys by further angles.

    Args:
        keys: `(B, kv_heads, T, head_dim)` keys already rotated to their current positions.
        cos / sin: `(B, T, rotary_dim)` cosines and sines of the *extra* angle per token
            (`(new - old) * inv_freq`, without any attention scaling). With partial rotary
            embeddings (`rotary_dim < head_dim`, Phi-3 style) only the first `rotary_dim`
            dimensions of each key carry position and are turned; the rest pass unchanged.

    Returns:
        `(B, kv_heads, T, head_dim)` keys as if rotated to the new positions.
    """
    rotary_dim = cos.shape[-1]
    if rotary_dim > keys.shape[-1] or rotary_dim % 2:
        raise ValueError(
            f"rotary dimension {rotary_dim} does not fit head_dim {keys.shape[-1]} in pairs"
        )
    # In float32: a second rounding of bfloat16 keys would blur them for no reason.
    turned = keys.float()
    rotated, passed = turned[..., :rotary_dim], turned[..., rotary_dim:]
    cos = cos.unsqueeze(1).float()
    sin = sin.unsqueeze(1).float()
    rotated = rotated * cos + rotate_half(rotated) * sin
    return torch.cat([rotated, passed], dim=-1).to(keys.dtype)


def compact_positions(positions: torch.Tensor) -> torch.Tensor:
    """`(T,)` position ids -> `(T,)` consecutive ids `0 .. T-1` in the same (cache) order."""
    return torch.arange(positions.shape[0], dtype=positions.dtype, device=positions.device)
