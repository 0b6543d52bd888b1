"""Pruning rules: how a tree node scores its document tokens and picks the ones it keeps.

A rule is a small frozen dataclass, in the spirit of kvpress's presses. The tree runner hands
it, at the last layer of each stage, the last token's attention logits and the node's tokens; the
rule returns scores, and later the indices to keep. The maths is the pure functions of
`homer.significance`; a rule only says which of them run, in what order, with what weights.

- `PaperPruning()`: the paper's rule. Tokens one by one, by calibrated significance; each
  sibling keeps half of the merged node's room.
- `SpanPruning()` (the default): whole words, a prior for words rare in this document (numbers
  and names most), runs of text around strong words, the facts their own scores win reserved
  before runs take the room left. docs/ALGORITHM.md describes each part, and docs/notes/ how the
  defaults were measured.

Write your own by subclassing either one and overriding a method (`significance`, `score`,
`select`), then pass it as `HomerConfig(pruning=...)`. Every field of a rule is part of the
subtree memo's key and of the cache's recorded settings, so a rule must be a frozen dataclass
whose fields say everything its result depends on.

Nothing here runs a model.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, ClassVar, Literal

import torch

from homer.significance import (
    boost_rare,
    reserve_facts,
    select_tokens,
    select_words,
    significance,
    spread_to_runs,
)
from homer.words import (
    RARE_RADIUS,
    RARE_SHARE,
    fact_words,
    token_kinds,
    token_traits,
    widen,
    word_ids,
    word_rarity,
)

SiblingBudget = Literal["halves", "shared"]
CalibrationMode = Literal["plain", "template"]

#: `SpanPruning.rare_word_boost`. On 16k tokens of prose, 2.0 took facts' key spans from 4/10
#: to 10/10 surviving (1.0: 8/10); with numbers and names favoured over other rare words, 4.0 kept
#: the names that 2.0 and 3.0 lost at 32k (docs/notes/).
DEFAULT_RARE_WORD_BOOST = 4.0

#: `SpanPruning.run_radius`. Natural-prose needles on the embedded model: runs answered 8/20 at
#: 32k and 2/20 at 16k against 1/20 and 0/20 without; passkey and perplexity no worse
#: (docs/notes/). Runs cost the weakest names their key, which `keep_facts` wins back.
DEFAULT_RUN_RADIUS = 8

#: `sibling_budget`. "shared" answered a few more needles, within noise (sign test p = 0.06), but
#: holds each level's left sibling unpruned until the right one is done: peak memory grew 37.5%
#: from 8k to 64k tokens (halves: 3.9%), up to a gigabyte per level at a 7B model's shape.
DEFAULT_SIBLING_BUDGET: SiblingBudget = "halves"


@dataclass(frozen=True)
class WordTables:
    """What a rule knows of the whole document, computed once per compression.

    Attributes:
        word_ids: `(C,)` int64 word id of each document token (`homer.words.word_ids`).
        rarity: `(num_words,)` float32, how much each word is favoured (its rarity, widened to
            its neighbours), or None when the rule has no rarity prior.
        facts: `(num_words,)` bool, the rare numbers and names, or None when facts are not
            reserved.
    """

    word_ids: torch.Tensor
    rarity: torch.Tensor | None = None
    facts: torch.Tensor | None = None


@dataclass(frozen=True)
class Scores:
    """A node's `(T,)` float32 scores: `ranked` decides what is kept; `own` is the same before
    any score was lent between neighbours (what `reserve_facts` compares)."""

    ranked: torch.Tensor
    own: torch.Tensor


def per_token(table: torch.Tensor, words: torch.Tensor, fill: float | bool) -> torch.Tensor:
    """`(T,)` values of a per-word `(num_words,)` table at each token's word; `fill` for the
    prompt's tokens (word id -1)."""
    return table.to(words.device)[words.clamp(min=0)].masked_fill(words < 0, fill)


@dataclass(frozen=True)
class PruningRule:
    """The interface every rule implements (see the module docstring).

    Attributes:
        sibling_budget: how two siblings about to merge share the merged node's room.
            `"halves"` (the paper): each keeps half, whatever it holds. `"shared"`: both finish
            their stage unpruned, their prunable tokens are ranked together and each keeps as
            many as it places in the joint best (`homer.significance.share_budget`); it holds
            one unpruned sibling per level until the other is done.
    """

    #: A short name recorded in a cache's settings.
    name: ClassVar[str] = "rule"
    #: How the calibration bias is measured for this rule (`homer.calibration`).
    calibration_mode: ClassVar[CalibrationMode] = "template"

    sibling_budget: SiblingBudget = DEFAULT_SIBLING_BUDGET

    def __post_init__(self) -> None:
        if self.sibling_budget not in ("halves", "shared"):
            raise ValueError(
                f"sibling_budget must be 'halves' or 'shared', got {self.sibling_budget!r}"
            )

    @property
    def shares_budget(self) -> bool:
        return self.sibling_budget == "shared"

    def settings(self) -> dict[str, Any]:
        """The rule's name and every field, JSON-able: a cache's record and the memo's key."""
        fields = dataclasses.fields(self)
        return {"rule": self.name, **{f.name: getattr(self, f.name) for f in fields if f.compare}}

    def tables(self, context: torch.Tensor, tokenizer: Any) -> WordTables:
        """Per-document tables for `(C,)` document ids (word ids alone by default)."""
        return WordTables(word_ids=word_ids(context, token_kinds(tokenizer)))

    def significance(
        self, logits: torch.Tensor, positions: torch.Tensor, bias: torch.Tensor | None
    ) -> torch.Tensor:
        """`(T,)` significance from `(H, T)` last-query logits, `(T,)` positions and the
        layer's `(max_distance,)` calibration bias (None: raw logits)."""
        return significance(logits, positions, bias)

    def score(
        self,
        base: torch.Tensor,
        prunable: torch.Tensor,
        words: torch.Tensor,
        tables: WordTables,
    ) -> Scores:
        """Scores of a node's `(T,)` tokens from their `(T,)` significance `base`;
        `prunable` is `(T,)` bool and `words` `(T,)` word ids (-1 for the prompt's tokens)."""
        return Scores(base, base)

    def select(
        self,
        scores: Scores,
        prunable: torch.Tensor,
        words: torch.Tensor,
        tables: WordTables,
        keep: int,
    ) -> torch.Tensor:
        """`(keep,)` int64 ascending indices of the tokens the node keeps."""
        return select_tokens(scores.ranked, prunable, keep)


@dataclass(frozen=True)
class PaperPruning(PruningRule):
    """The paper's rule: single tokens by calibrated significance (no prior, no runs); the
    bias is measured on plain text, as the paper did."""

    name: ClassVar[str] = "paper"
    calibration_mode: ClassVar[CalibrationMode] = "plain"


@dataclass(frozen=True)
class SpanPruning(PruningRule):
    """Whole words, favouring what a reader asks about (the default rule).

    Attributes:
        rare_word_boost: how much a word that is rare in this document is favoured: its score
            rises by `boost * std(scores) / count`, where `count` is how often the very same word
            occurs (words seen more than 4 times count as common). Numbers and names (a digit,
            or a capital the sentence does not force) get the whole lift, other rare words a
            quarter; the words within 3 of a rare word get half its lift, so a fact keeps the
            small words that make it readable. 0 turns it off.
        run_radius: tokens on each side from which a token may inherit a neighbour's score
            (less 0.2 standard deviations per token of distance;
            `homer.significance.spread_to_runs`), so the cache holds readable runs of text
            instead of isolated words. 0 turns it off.
        keep_facts: with runs, first keep every rare number or name that its own score would
            keep without runs, and let runs fill only the room left
            (`homer.significance.reserve_facts`). No effect when `run_radius` is 0.
    """

    name: ClassVar[str] = "spans"

    rare_word_boost: float = DEFAULT_RARE_WORD_BOOST
    run_radius: int = DEFAULT_RUN_RADIUS
    keep_facts: bool = True

    def __post_init__(self) -> None:
        super().__post_init__()
        boost = self.rare_word_boost
        if isinstance(boost, bool) or not isinstance(boost, int | float) or not 0 <= boost < 1e6:
            raise ValueError(f"rare_word_boost must be a number >= 0, got {boost!r}")
        radius = self.run_radius
        if isinstance(radius, bool) or not isinstance(radius, int) or not 0 <= radius <= 1024:
            raise ValueError(f"run_radius must be an integer in 0..1024, got {radius!r}")
        if not isinstance(self.keep_facts, bool):
            raise ValueError(f"keep_facts must be True or False, got {self.keep_facts!r}")

    @property
    def reserves_facts(self) -> bool:
        """Facts are reserved only against runs: without runs no score is lent to push them out."""
        return self.keep_facts and self.run_radius > 0

    def tables(self, context: torch.Tensor, tokenizer: Any) -> WordTables:
        words = word_ids(context, token_kinds(tokenizer))
        if not (self.rare_word_boost or self.reserves_facts):
            return WordTables(word_ids=words)
        facts = fact_words(context, words, token_traits(tokenizer))
        rarity = word_rarity(context, words, facts)
        return WordTables(
            word_ids=words,
            rarity=widen(rarity, RARE_RADIUS, RARE_SHARE) if self.rare_word_boost else None,
            facts=facts & (rarity > 0) if self.reserves_facts else None,
        )

    def score(
        self,
        base: torch.Tensor,
        prunable: torch.Tensor,
        words: torch.Tensor,
        tables: WordTables,
    ) -> Scores:
        scores = base
        if self.rare_word_boost and tables.rarity is not None:
            rarity = per_token(tables.rarity, words, 0.0)
            scores = boost_rare(scores, prunable, rarity, self.rare_word_boost)
        own = scores
        if self.run_radius:
            scores = spread_to_runs(scores, prunable, self.run_radius)
        return Scores(scores, own)

    def select(
        self,
        scores: Scores,
        prunable: torch.Tensor,
        words: torch.Tensor,
        tables: WordTables,
        keep: int,
    ) -> torch.Tensor:
        ranked = scores.ranked
        if self.reserves_facts and tables.facts is not None:
            facts = per_token(tables.facts, words, False)
            protected = int((~prunable).sum())
            ranked = reserve_facts(ranked, scores.own, prunable, facts, keep - protected)
        return select_words(ranked, prunable, words, keep)
