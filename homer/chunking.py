"""Splitting token ids into the leaves of the merge tree, with HOMER's shared position ids.

Pure functions over 1-D int64 tensors; no model. Every leaf is `prefix + slice + suffix`, all
leaves reuse one position range, and every leaf's suffix sits at the same positions
(ALGORITHM.md §2).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from homer.schedule import Plan


@dataclass(frozen=True)
class Leaf:
    """One leaf chunk's input.

    Attributes:
        token_ids: `(P + n + S,)` int64.
        positions: `(P + n + S,)` int64: `0..P+n-1`, then `P+leaf_len .. P+leaf_len+S-1`.
        start: index of the slice's first token in the document.
    """

    token_ids: torch.Tensor
    positions: torch.Tensor
    start: int


def leaf_positions(prefix_len: int, slice_len: int, suffix_len: int, leaf_len: int) -> torch.Tensor:
    """Position ids of a leaf: prefix and slice contiguous from 0, the suffix after `leaf_len`.

    Returns `(prefix_len + slice_len + suffix_len,)` int64.
    """
    head = torch.arange(prefix_len + slice_len, dtype=torch.long)
    tail = torch.arange(suffix_len, dtype=torch.long) + prefix_len + leaf_len
    return torch.cat([head, tail])


def make_leaf(
    plan: Plan, index: int, prefix: torch.Tensor, context: torch.Tensor, suffix: torch.Tensor
) -> Leaf:
    """Leaf `index` of the plan, built on demand so only ids exist for chunks not yet reached."""
    lengths = plan.slice_lengths()
    start = sum(lengths[:index])
    piece = context[start : start + lengths[index]]
    ids = torch.cat([prefix, piece, suffix])
    positions = leaf_positions(plan.prefix_len, len(piece), plan.suffix_len, plan.leaf_len)
    return Leaf(token_ids=ids, positions=positions, start=start)
