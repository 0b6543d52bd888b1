"""What a cache kept of its document: the share kept per page (or stretch of text), and the
kept text with its gaps marked. Pure functions over the cache's spans and the saved text.

A share is of characters: the characters of the page covered by kept tokens over the page's
characters. A kept token covers its own characters, so this is the share of tokens kept up to
how long the kept tokens are against the page's average.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

#: Tokens per stretch of a text document in the evidence map.
STRETCH_TOKENS = 1000
#: What marks dropped text between two kept pieces.
GAP = " … "


@dataclass(frozen=True)
class Region:
    """A page of a PDF, or a stretch of a text document.

    Attributes:
        label: `p. 12`, or `tokens 4k-5k` for a stretch.
        start / end: its `[start, end)` characters in the document.
        kept_chars: characters of it that kept tokens cover.
    """

    label: str
    start: int
    end: int
    kept_chars: int

    @property
    def share(self) -> float:
        return self.kept_chars / max(1, self.end - self.start)


def _merged(spans: torch.Tensor) -> list[tuple[int, int]]:
    """Kept `[start, end)` character ranges, sorted and merged where they touch or overlap."""
    inside = spans[spans[:, 0] >= 0].tolist()
    merged: list[tuple[int, int]] = []
    for start, end in sorted(inside):
        if merged and start <= merged[-1][1]:
            merged[-1] = (merged[-1][0], max(merged[-1][1], end))
        else:
            merged.append((start, end))
    return merged


def kept_regions(
    spans: torch.Tensor, text_chars: int, page_map: tuple[int, ...], document_tokens: int
) -> list[Region]:
    """The share kept per PDF page (`page_map`: where each page starts), or per stretch of
    `STRETCH_TOKENS` tokens of a text document (`document_tokens` long in all).

    Args:
        spans: `(T, 2)` character spans of the cache's tokens (`-1` outside the document).
        text_chars: length of the document text.
    """
    if page_map:
        starts = list(page_map)
        labels = [f"p. {i}" for i in range(1, len(starts) + 1)]
    else:
        per_token = text_chars / max(1, document_tokens)
        step = max(1, round(STRETCH_TOKENS * per_token))
        starts = list(range(0, max(1, text_chars), step))
        labels = [
            f"tokens {i * STRETCH_TOKENS // 1000}k-{(i + 1) * STRETCH_TOKENS // 1000}k"
            for i in range(len(starts))
        ]
    ends = [*starts[1:], text_chars]
    covered = [0] * len(starts)
    for start, end in _merged(spans):
        for i, (lo, hi) in enumerate(zip(starts, ends, strict=True)):
            if start < hi and lo < end:
                covered[i] += min(end, hi) - max(start, lo)
    return [
        Region(label, lo, hi, kept)
        for label, lo, hi, kept in zip(labels, starts, ends, covered, strict=True)
    ]


def kept_text(spans: torch.Tensor, text: str, gap: str = GAP) -> str:
    """The document's kept text in order, `gap` where text was dropped (text dropped between
    two kept pieces only; whitespace alone is not a gap)."""
    pieces: list[str] = []
    last = 0
    for start, end in _merged(spans):
        if pieces and text[last:start].strip():
            pieces.append(gap)
        elif pieces:
            pieces.append(text[last:start])
        pieces.append(text[start:end])
        last = end
    return "".join(pieces)
