"""HOMER's settings: a frozen, validated dataclass, and its resolution against a concrete model.

`HomerConfig` holds what the user chooses (every size may be `None`, meaning "derive it from the
model"). `HomerConfig.resolve` turns it into a `ResolvedConfig` with concrete integers for one
model. Nothing here touches torch.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Literal

Reduction = Literal["paper", "spans"]
MergeMask = Literal["sequence", "position"]
FinalPositions = Literal["compact", "paper"]
BiasMode = Literal["calibrated"]
SiblingBudget = Literal["halves", "shared"]

#: The paper uses 12 warm-up layers for 32-layer Llama-2 models (the `homer-paper-warmup`
#: ablation keeps that share of any model's depth).
PAPER_WARMUP_FRACTION = 12 / 32

#: Our default share: half the model's depth, rounded. On the embedded 30-layer model, 15 warm-up
#: layers instead of the paper's 11 raised passkey retrieval on 15 (length, depth) conditions
#: from 6/15 to 10/15 (14-18 layers all did better than 11) and on 30 fresh ones from 16/30 to
#: 18/30 (docs/RESULTS.md): chunks keep more layers of full, unpruned context before pruning.
DEFAULT_WARMUP_FRACTION = 1 / 2

#: Default `rare_word_boost` with `reduction="spans"`. Session 2: on 16k tokens of prose, 2.0 took
#: facts' key spans from 4/10 to 10/10 surviving (1.0 gave 8/10). Session 5, with names and
#: numbers favoured over other rare words (`homer.words.fact_words`): 4.0 kept all 6 of the names
#: that 2.0 and 3.0 lost at 32k (docs/RESULTS.md).
DEFAULT_RARE_WORD_BOOST = 4.0

#: Default `run_radius` with `reduction="spans"`. Session 6, natural-prose needles on the embedded
#: model: answered 8/20 at 32k and 2/20 at 16k (1/20 and 0/20 without runs; the plain model on a
#: one-chunk excerpt: 4/20 and 6/20), passkey 30/30, perplexity no worse; the cost was the
#: weakest names at 32k (key kept 17/20 instead of 20/20), which `keep_facts` (session 7) wins
#: back: 20/20 at both lengths, answering 6/20 at 32k and 2/20 at 16k. docs/RESULTS.md.
DEFAULT_RUN_RADIUS = 8


#: Default `sibling_budget`. Session 9, natural-prose needles on the embedded model: "shared"
#: answered 7/60 and 16/40 on the mixed haystack at 16k and 32k, and 13/40 on clean prose at 16k,
#: against 5/60, 15/40 and 7/40 with halves (the same needles: 14 answered only with shared, 5
#: only with halves; sign test p = 0.06), keys 100% either way. But shared holds each level's
#: left sibling unpruned, twice the tokens, until the right one is done: peak memory grew 37.5%
#: from 8k to 64k (halves: 3.9%), past issue 2's 25%, and at a 7B model's shape it is up to a
#: gigabyte per level. docs/RESULTS.md.
DEFAULT_SIBLING_BUDGET: SiblingBudget = "halves"


def default_warmup_layers(num_layers: int) -> int:
    """Warm-up layers for a model of `num_layers`: `DEFAULT_WARMUP_FRACTION` of its depth, rounded
    (lowered later by `fit_warmup` when a tall tree needs the layers)."""
    return round(num_layers * DEFAULT_WARMUP_FRACTION)


@dataclass(frozen=True)
class HomerConfig:
    """What the user chooses. `None` sizes are derived from the model by `resolve`.

    Attributes:
        max_chunk_len: tokens per leaf chunk, prefix and suffix included (`M`). Default: half the
            model's native window.
        target_len: tokens per layer in the final cache. Default: `max_chunk_len`. Must not
            exceed `max_chunk_len` (a merged node never holds more than about `M` tokens).
        warmup_layers: layers every leaf runs alone before any merge (`W`). Default: half the
            model's depth (the paper used 12/32; see `DEFAULT_WARMUP_FRACTION`).
        bias: `"calibrated"` subtracts the per-model, per-distance calibration bias from the
            significance scores (the paper's rule); `None` uses raw logits (an ablation).
        reduction: `"spans"` (default) keeps whole words and numbers by pooling significance over
            each word's tokens; `"paper"` selects single tokens, as in the paper.
        rare_word_boost: how much a word that is rare in this document is favoured when pruning:
            its score rises by `boost * std(scores) / count`, where `count` is how often the very
            same word occurs in the document (words seen more than 4 times count as common). Only
            numbers and names (a digit, or a capital the sentence does not force) get the whole
            lift; other rare words get a quarter of it. The words within 3 of a rare word get half
            its lift, so a fact keeps the small words that make it readable. A fact stated once
            (a code, an invented name) is a word seen once; filler repeats. Default: 4.0 with
            `"spans"`, 0 with `"paper"` (the paper has no such prior). 0 turns it off.
        run_radius: tokens on each side from which a token may inherit a neighbour's score (less
            0.2 standard deviations per token of distance; `homer.significance.spread_to_runs`),
            so strong words keep the words around them and the cache holds readable runs of text
            instead of isolated words. Default: 8 with `"spans"`, 0 with `"paper"`. 0 turns it
            off.
        keep_facts: with runs, first keep every rare number or name (a word `rare_word_boost`
            lifts in full, seen at most 4 times) that its own score would keep without runs,
            and let runs fill only the room left (`homer.significance.reserve_facts`). Without
            it, the borrowed scores of strong facts' neighbours push weaker facts out. Default:
            True with `"spans"`, False with `"paper"`. Has no effect when `run_radius` is 0.
        sibling_budget: how two siblings about to merge share the merged node's room.
            `"halves"` (the paper): each keeps half, whatever it holds. `"shared"`: both finish
            their stage unpruned, their prunable tokens are ranked together (scores after the
            rarity prior and runs) and each keeps as many as it places in the joint best, so a
            chunk dense in strong tokens takes room from a sparse sibling
            (`homer.significance.share_budget`). It holds one unpruned sibling per level until
            the other is done. Default: `"halves"` (`DEFAULT_SIBLING_BUDGET`): shared answered
            a few more needles, within noise, at a clear cost in peak memory (docs/RESULTS.md).
        positions: position ids of the final cache. `"compact"` (default) turns its keys to
            consecutive positions `0 .. T-1` in document order, so a question reads the kept
            tokens as one sequence; `"paper"` keeps the positions the merges left, where every
            leaf reused the same range. Passkey on the embedded model, same haystacks: 53/60
            against 36/60 over 8k-32k (19/20 against 11/20 at 32k), at a cost of 0.4-0.9% in
            perplexity (docs/RESULTS.md).
    """

    max_chunk_len: int | None = None
    target_len: int | None = None
    warmup_layers: int | None = None
    bias: BiasMode | None = "calibrated"
    reduction: Reduction = "spans"
    merge_mask: MergeMask = "sequence"
    rare_word_boost: float | None = None
    positions: FinalPositions = "compact"
    run_radius: int | None = None
    keep_facts: bool | None = None
    sibling_budget: SiblingBudget | None = None

    def __post_init__(self) -> None:
        for name in ("max_chunk_len", "target_len"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, int) or value < 8):
                raise ValueError(f"{name} must be an integer >= 8 or None, got {value!r}")
        if self.warmup_layers is not None and (
            not isinstance(self.warmup_layers, int) or self.warmup_layers < 0
        ):
            raise ValueError(
                f"warmup_layers must be an integer >= 0 or None, got {self.warmup_layers!r}"
            )
        if (
            self.max_chunk_len is not None
            and self.target_len is not None
            and self.target_len > self.max_chunk_len
        ):
            raise ValueError(
                f"target_len ({self.target_len}) cannot exceed max_chunk_len "
                f"({self.max_chunk_len}): raise max_chunk_len or lower target_len"
            )
        if self.bias not in ("calibrated", None):
            raise ValueError(f"bias must be 'calibrated' or None, got {self.bias!r}")
        if self.merge_mask not in ("sequence", "position"):
            raise ValueError(
                f"merge_mask must be 'sequence' or 'position', got {self.merge_mask!r}"
            )
        if self.positions not in ("compact", "paper"):
            raise ValueError(f"positions must be 'compact' or 'paper', got {self.positions!r}")
        if self.reduction not in ("paper", "spans"):
            raise ValueError(f"reduction must be 'paper' or 'spans', got {self.reduction!r}")
        boost = self.rare_word_boost
        if boost is not None and (
            isinstance(boost, bool) or not isinstance(boost, int | float) or not 0 <= boost < 1e6
        ):
            raise ValueError(f"rare_word_boost must be a number >= 0 or None, got {boost!r}")
        radius = self.run_radius
        if radius is not None and (
            isinstance(radius, bool) or not isinstance(radius, int) or not 0 <= radius <= 1024
        ):
            raise ValueError(f"run_radius must be an integer in 0..1024 or None, got {radius!r}")
        if self.keep_facts is not None and not isinstance(self.keep_facts, bool):
            raise ValueError(f"keep_facts must be True, False or None, got {self.keep_facts!r}")
        if self.sibling_budget not in ("halves", "shared", None):
            raise ValueError(
                f"sibling_budget must be 'halves', 'shared' or None, got {self.sibling_budget!r}"
            )

    def key_settings(self) -> dict[str, Any]:
        """The settings as the store's content key and metadata record them (JSON-able)."""
        return dataclasses.asdict(self)

    def resolve(self, *, num_layers: int, window: int) -> ResolvedConfig:
        """Concrete sizes for a model with `num_layers` decoder layers and a `window`-token context.

        Raises:
            ValueError: a size does not fit the model (named in the message, with the fix).
        """
        max_chunk = self.max_chunk_len if self.max_chunk_len is not None else window // 2
        if max_chunk > window:
            raise ValueError(
                f"max_chunk_len ({max_chunk}) exceeds the model's context window ({window}); "
                f"use at most {window}"
            )
        target = self.target_len if self.target_len is not None else max_chunk
        if target > max_chunk:
            raise ValueError(
                f"target_len ({target}) cannot exceed max_chunk_len ({max_chunk}): "
                "raise max_chunk_len or lower target_len"
            )
        warmup = (
            self.warmup_layers
            if self.warmup_layers is not None
            else default_warmup_layers(num_layers)
        )
        if warmup >= num_layers:
            raise ValueError(
                f"warmup_layers ({warmup}) must be smaller than the model's {num_layers} layers"
            )
        return ResolvedConfig(
            max_chunk_len=max_chunk,
            target_len=target,
            warmup_layers=warmup,
            num_layers=num_layers,
            window=window,
            bias=self.bias,
            reduction=self.reduction,
            merge_mask=self.merge_mask,
            rare_word_boost=float(
                self.rare_word_boost
                if self.rare_word_boost is not None
                else (DEFAULT_RARE_WORD_BOOST if self.reduction == "spans" else 0.0)
            ),
            positions=self.positions,
            run_radius=(
                self.run_radius
                if self.run_radius is not None
                else (DEFAULT_RUN_RADIUS if self.reduction == "spans" else 0)
            ),
            keep_facts=(
                self.keep_facts if self.keep_facts is not None else self.reduction == "spans"
            ),
            sibling_budget=(
                self.sibling_budget if self.sibling_budget is not None else DEFAULT_SIBLING_BUDGET
            ),
        )


@dataclass(frozen=True)
class ResolvedConfig:
    """`HomerConfig` with every size made concrete for one model."""

    max_chunk_len: int
    target_len: int
    warmup_layers: int
    num_layers: int
    window: int
    bias: BiasMode | None
    reduction: Reduction
    merge_mask: MergeMask = "sequence"
    rare_word_boost: float = 0.0
    positions: FinalPositions = "compact"
    run_radius: int = 0
    keep_facts: bool = False
    sibling_budget: SiblingBudget = "halves"

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)
