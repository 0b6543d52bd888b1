"""The shape of the merge tree and which layers each of its stages runs (no torch).

For a context of `C` tokens, `P` prefix and `S` suffix tokens and chunks of at most `M` tokens,
`Plan` fixes the number of leaves (a power of two), the tree's height, the layer range of every
level and every node's target length. It follows ALGORITHM.md §2-§4.
"""

from __future__ import annotations

import math
from dataclasses import dataclass


@dataclass(frozen=True)
class LayerSchedule:
    """Layer ranges per tree level.

    `num_layers` L, `warmup` W and tree `height` h give `lpl = (L - W) // (h + 1)` layers per level
    and `left = (L - W) - lpl * (h + 1)` leftover layers, which the leaves absorb. Leaves (level
    0) run `[0, W + lpl + left)`; a node at level `k >= 1` runs
    `[W + left + k*lpl, W + left + (k+1)*lpl)`; the root (level h) ends at L.
    """

    num_layers: int
    warmup: int
    height: int

    def __post_init__(self) -> None:
        if self.height < 0:
            raise ValueError(f"height must be >= 0, got {self.height}")
        if not 0 <= self.warmup < self.num_layers:
            raise ValueError(f"warmup ({self.warmup}) must be in [0, num_layers={self.num_layers})")
        if self.layers_per_level < 1:
            raise ValueError(
                f"a tree of height {self.height} needs at least {self.height + 1} layers after "
                f"the {self.warmup} warm-up layers, but the model has {self.num_layers}"
            )

    @property
    def layers_per_level(self) -> int:
        return (self.num_layers - self.warmup) // (self.height + 1)

    @property
    def leftover(self) -> int:
        return (self.num_layers - self.warmup) - self.layers_per_level * (self.height + 1)

    def layers(self, level: int) -> range:
        """The decoder layers a node at `level` (0 = leaf) runs."""
        if not 0 <= level <= self.height:
            raise ValueError(f"level must be in [0, {self.height}], got {level}")
        lpl, start = self.layers_per_level, self.warmup + self.leftover
        if level == 0:
            return range(0, start + lpl)
        return range(start + level * lpl, start + (level + 1) * lpl)


def fit_warmup(num_layers: int, warmup: int, height: int) -> int:
    """The warm-up to use for a tree of `height`: `warmup`, lowered just enough that every level
    still gets one layer. Raises ValueError when even zero warm-up layers are too many."""
    if height + 1 > num_layers:
        raise ValueError(
            f"the document needs a merge tree of height {height}, which needs at least "
            f"{height + 1} layers; the model has {num_layers}. Raise max_chunk_len."
        )
    return min(warmup, num_layers - (height + 1))


@dataclass(frozen=True)
class Plan:
    """Everything about the tree that follows from sizes alone.

    Attributes:
        context_len: `C`, tokens of the document.
        prefix_len / suffix_len: `P` and `S`.
        max_chunk_len: `M`, the most tokens a leaf holds, prefix and suffix included.
        target_len: tokens the root keeps (before capping at `P + C + S`).
    """

    context_len: int
    prefix_len: int
    suffix_len: int
    max_chunk_len: int
    target_len: int

    def __post_init__(self) -> None:
        if self.context_len < 1:
            raise ValueError("the document holds no tokens")
        if self.per_chunk < 2:
            raise ValueError(
                f"max_chunk_len ({self.max_chunk_len}) leaves {self.per_chunk} document tokens per "
                f"chunk after the {self.prefix_len}-token prefix and {self.suffix_len}-token "
                "suffix; raise max_chunk_len"
            )
        if self.target_len <= self.prefix_len + self.suffix_len:
            raise ValueError(
                f"target_len ({self.target_len}) must exceed prefix + suffix "
                f"({self.prefix_len + self.suffix_len} tokens) to keep any of the document"
            )

    @property
    def per_chunk(self) -> int:
        """`eff = M - P - S`: document tokens that fit in one chunk."""
        return self.max_chunk_len - self.prefix_len - self.suffix_len

    @property
    def raw_chunks(self) -> int:
        return math.ceil(self.context_len / self.per_chunk)

    @property
    def height(self) -> int:
        return math.ceil(math.log2(self.raw_chunks)) if self.raw_chunks > 1 else 0

    @property
    def num_chunks(self) -> int:
        return 2**self.height

    def slice_lengths(self) -> list[int]:
        """Document tokens per leaf: as even as possible, the longer ones first."""
        base, extra = divmod(self.context_len, self.num_chunks)
        return [base + (1 if i < extra else 0) for i in range(self.num_chunks)]

    @property
    def leaf_len(self) -> int:
        """The longest slice; every leaf's suffix sits at positions `P + leaf_len ...`."""
        return self.slice_lengths()[0]

    @property
    def child_keep(self) -> int:
        """Tokens each child of a merge keeps: `P + floor(eff / 2) + S`."""
        return self.prefix_len + self.per_chunk // 2 + self.suffix_len

    @property
    def final_len(self) -> int:
        """Tokens per layer of the result: `min(target_len, P + C + S)`."""
        return min(self.target_len, self.prefix_len + self.context_len + self.suffix_len)

    def keep_at(self, level: int) -> int:
        """The target length of a node at `level` once its layers ran.

        The root keeps `final_len`. Every other node keeps `child_keep`, except that the root's
        two children keep at least half of the root's document share each (rounded up), so the
        root can always reach `final_len` even when `eff` is odd.
        """
        if level == self.height:
            return self.final_len
        if level == self.height - 1:
            share = math.ceil((self.final_len - self.prefix_len - self.suffix_len) / 2)
            return self.prefix_len + max(self.per_chunk // 2, share) + self.suffix_len
        return self.child_keep
