"""Merging two sibling nodes and applying a keep-set: pure tensor functions, no model.

A node's state is the output of its last layer (hidden states), its tokens' ids, position ids,
word ids, and the keys and values of every layer it (and its descendants) ran. Merging follows
ALGORITHM.md §6: `[mean(prefix), context_left, context_right, mean(suffix)]` along the token axis,
positions kept as they are; `apply_keep` is propagative refinement (§5): one keep-set for all.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class NodeState:
    """Everything a node of the merge tree carries between stages.

    Attributes:
        hidden: `(1, T, hidden)` output of the last layer the node ran.
        token_ids / positions / word_ids: `(T,)` int64. Word ids are -1 for prefix and suffix.
        keys / values: per layer run so far, each `(1, kv_heads, T, head_dim)`.
    """

    hidden: torch.Tensor
    token_ids: torch.Tensor
    positions: torch.Tensor
    word_ids: torch.Tensor
    keys: list[torch.Tensor]
    values: list[torch.Tensor]

    @property
    def length(self) -> int:
        return int(self.token_ids.shape[0])


def merge_along(
    left: torch.Tensor,
    right: torch.Tensor,
    prefix_len: int,
    suffix_len: int,
    dim: int,
    average: bool,
) -> torch.Tensor:
    """Concatenate two siblings' tensors along token axis `dim` with shared affixes.

    The prefix and suffix appear once: averaged when `average` (hidden states, keys, values), else
    taken from the left sibling (ids and positions, which are equal in both).
    """
    n_left, n_right = left.shape[dim], right.shape[dim]
    left_ctx = left.narrow(dim, prefix_len, n_left - prefix_len - suffix_len)
    right_ctx = right.narrow(dim, prefix_len, n_right - prefix_len - suffix_len)
    prefix = left.narrow(dim, 0, prefix_len)
    suffix = left.narrow(dim, n_left - suffix_len, suffix_len)
    if average:
        prefix = torch.lerp(prefix, right.narrow(dim, 0, prefix_len), 0.5)
        suffix = torch.lerp(suffix, right.narrow(dim, n_right - suffix_len, suffix_len), 0.5)
    return torch.cat([prefix, left_ctx, right_ctx, suffix], dim=dim)


def merge_nodes(left: NodeState, right: NodeState, prefix_len: int, suffix_len: int) -> NodeState:
    """The parent of two siblings, before it runs its own layers."""
    if len(left.keys) != len(right.keys):
        raise ValueError("siblings must have run the same layers")

    def tensors(a: torch.Tensor, b: torch.Tensor, dim: int, average: bool) -> torch.Tensor:
        return merge_along(a, b, prefix_len, suffix_len, dim, average)

    return NodeState(
        hidden=tensors(left.hidden, right.hidden, 1, True),
        token_ids=tensors(left.token_ids, right.token_ids, 0, False),
        positions=tensors(left.positions, right.positions, 0, False),
        word_ids=tensors(left.word_ids, right.word_ids, 0, False),
        keys=[tensors(a, b, 2, True) for a, b in zip(left.keys, right.keys, strict=True)],
        values=[tensors(a, b, 2, True) for a, b in zip(left.values, right.values, strict=True)],
    )


def apply_keep(node: NodeState, keep: torch.Tensor) -> NodeState:
    """Keep only the tokens at indices `keep` (ascending)."""
    if keep.shape[0] == node.length:
        return node
    hidden_keep = keep.to(node.hidden.device)
    return NodeState(
        hidden=node.hidden.index_select(1, hidden_keep),
        token_ids=node.token_ids[keep.to(node.token_ids.device)],
        positions=node.positions[keep.to(node.positions.device)],
        word_ids=node.word_ids[keep.to(node.word_ids.device)],
        keys=[k.index_select(2, keep.to(k.device)) for k in node.keys],
        values=[v.index_select(2, keep.to(v.device)) for v in node.values],
    )
