"""Which passages of a document a question points at: pure functions over attention and spans.

A cache keeps a few thousand of the document's tokens, each with its character span
(`homer.provenance`). A question fed after the cache attends to them; the attention it pays
to each kept token, normalised over the document's tokens (the instruction around the document
and the question's own tokens are left out, so attention sinks do not count), averaged over
heads, layers and the question's tokens, is that token's evidence. Most of it goes where any
question's goes, so what a question about nothing in particular pays is taken off (`lift`).
A passage's evidence is the sum over the kept tokens inside it: the document is cut into
passages of a few sentences at paragraph and sentence ends, each read through its kept tokens.
The model's ranking is fused (`fuse`) with a lexical one (BM25 of the question's words over the
passages' text), which finds a rare name or number the small model's attention misses.

How clearly one passage stands out is `strength`: the top passage's score over the mean of the
next ones. Below a threshold the answer is called ungrounded. No model here.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

import torch

#: Passages end after this many characters at the first sentence end, and never run past
#: twice this (then they end at a space).
PASSAGE_CHARS = 400
_SENTENCE_END = re.compile(r"(?<=[.!?;:\"'\u201d)\]])\s+|\n\s*\n")


@dataclass(frozen=True)
class Passage:
    """A stretch of the document: `[start, end)` in characters, and its score."""

    start: int
    end: int
    score: float = 0.0


def split_passages(text: str, target: int = PASSAGE_CHARS) -> list[tuple[int, int]]:
    """`[start, end)` character ranges covering `text`, each ending at a paragraph or sentence
    end once it holds at least `target` characters (at a space past `2 * target`, at the hard
    limit past `3 * target` in text with no spaces)."""
    if target < 1:
        raise ValueError(f"target must be >= 1, got {target}")
    bounds: list[tuple[int, int]] = []
    start = 0
    length = len(text)
    while start < length:
        end = _passage_end(text, start, target)
        bounds.append((start, end))
        start = end
    return bounds


def _passage_end(text: str, start: int, target: int) -> int:
    if len(text) - start <= 2 * target:
        return len(text)
    paragraph = text.find("\n\n", start + target // 2, start + 2 * target)
    if paragraph != -1:
        return paragraph + 2
    match = _SENTENCE_END.search(text, start + target, start + 2 * target)
    if match:
        return match.end()
    space = text.find(" ", start + 2 * target, start + 3 * target)
    return space + 1 if space != -1 else start + 3 * target


def token_evidence(
    attentions: Sequence[torch.Tensor], document: torch.Tensor, layers: slice = slice(None)
) -> torch.Tensor:
    """Each kept token's share of the question's attention to the document.

    Args:
        attentions: per layer, `(H, Q, T)` attention probabilities of the question's `Q`
            tokens over the cache's `T` tokens (from `ModelAdapter.attention_after`).
        document: `(T,)` bool, the kept document tokens (not the instruction around them).
        layers: which layers count.

    Returns:
        `(T,)` float32, zero outside the document, summing to one over it.
    """
    chosen = list(attentions)[layers]
    if not chosen:
        raise ValueError("no layers to read the attention of")
    mask = document.to(chosen[0].device)
    total = torch.zeros(mask.shape[0], dtype=torch.float32, device=mask.device)
    for probs in chosen:
        inside = probs.float() * mask  # (H, Q, T)
        share = inside / inside.sum(-1, keepdim=True).clamp_min(1e-12)
        total += share.mean(dim=(0, 1))
    total = total.cpu()
    return total / total.sum().clamp_min(1e-12)


def passage_scores(
    evidence: torch.Tensor, spans: torch.Tensor, bounds: Sequence[tuple[int, int]]
) -> torch.Tensor:
    """`(P,)` float32: the evidence of the kept tokens inside each passage.

    Args:
        evidence: `(T,)` from `token_evidence`.
        spans: `(T, 2)` character spans of the cache's tokens (`-1` outside the document).
        bounds: the passages, ascending and covering the document (`split_passages`).
    """
    scores = torch.zeros(len(bounds), dtype=torch.float32)
    if not bounds:
        return scores
    starts = torch.tensor([start for start, _ in bounds], dtype=torch.long)
    inside = spans[:, 0] >= 0
    index = torch.bucketize(spans[inside, 0], starts, right=True) - 1
    scores.index_add_(0, index.clamp(0, len(bounds) - 1), evidence[inside].float())
    return scores


def lift(question: torch.Tensor, baseline: torch.Tensor) -> torch.Tensor:
    """`(T,)` evidence the question gives a token beyond what a question about nothing in
    particular gives it: `max(0, question - baseline)`.

    Much of a question's attention goes where any question's goes (the cache's first and last
    tokens, frequent words); what is left is what this question looks for.
    """
    return (question - baseline).clamp_min(0.0)


def fuse(*scores: torch.Tensor, k: float = 10.0) -> torch.Tensor:
    """Reciprocal-rank fusion of several `(P,)` passage scores: each passage gets
    `sum(1 / (k + rank))` over the rankings (rank 1 best; ties keep document order)."""
    total = torch.zeros_like(scores[0], dtype=torch.float32)
    for score in scores:
        order = sorted(range(score.numel()), key=lambda i: (-float(score[i]), i))
        ranks = torch.empty(score.numel(), dtype=torch.float32)
        ranks[torch.tensor(order, dtype=torch.long)] = torch.arange(
            1, score.numel() + 1, dtype=torch.float32
        )
        total += 1.0 / (k + ranks)
    return total


def top_passages(scores: torch.Tensor, bounds: Sequence[tuple[int, int]], k: int) -> list[Passage]:
    """The `k` best passages, best first (ties: earlier first)."""
    if k <= 0 or not bounds:
        return []
    order = sorted(range(len(bounds)), key=lambda i: (-float(scores[i]), i))[:k]
    return [Passage(bounds[i][0], bounds[i][1], float(scores[i])) for i in order]


def strength(scores: torch.Tensor, rest: int = 10) -> float:
    """How far the best passage stands above the next `rest`: its score over their mean
    (1.0: no passage stands out; large: one does). 0.0 for a document of one passage."""
    if scores.numel() < 2:
        return 0.0
    ranked = scores.float().sort(descending=True).values
    others = ranked[1 : 1 + rest]
    return float(ranked[0] / others.mean().clamp_min(1e-12))


def within_budget(
    passages: Sequence[Passage], lengths: Sequence[int], budget: int
) -> list[Passage]:
    """The best passages (given best first) whose token `lengths` fit in `budget` tokens,
    in document order. A passage too long for what is left is skipped, not cut."""
    chosen: list[Passage] = []
    left = budget
    for passage, size in zip(passages, lengths, strict=True):
        if size <= left:
            chosen.append(passage)
            left -= size
    return sorted(chosen, key=lambda p: p.start)
