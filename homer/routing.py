"""Which documents a question is about: Okapi BM25 over each document's kept text.

Pure functions on strings; nothing here knows about caches, models or files. The texts ranked
are what HOMER kept of each document (its cache's token ids, decoded), so a document is ranked
by the very tokens a question would read.
"""

from __future__ import annotations

import math
import re
from collections import Counter
from collections.abc import Sequence

_WORD = re.compile(r"[^\W_]+", re.UNICODE)

#: BM25's term-frequency saturation and length normalisation (the usual values).
K1 = 1.5
B = 0.75


def words(text: str) -> list[str]:
    """Lower-cased words and numbers of `text` (punctuation and underscores split them)."""
    return [w.lower() for w in _WORD.findall(text)]


def bm25_scores(query: str, documents: Sequence[str]) -> list[float]:
    """BM25 score of each of `documents` for `query`: higher is more relevant, 0 shares no word.

    Uses the idf `log(1 + (N - n + 0.5) / (n + 0.5))`, which stays positive for words found in
    most documents, so a word common to the whole library still counts a little.
    """
    bags = [Counter(words(doc)) for doc in documents]
    lengths = [sum(bag.values()) for bag in bags]
    average = sum(lengths) / len(lengths) if lengths else 0.0
    count = len(bags)
    scores = []
    terms = set(words(query))
    for bag, length in zip(bags, lengths, strict=True):
        score = 0.0
        for term in terms:
            tf = bag.get(term, 0)
            if not tf:
                continue
            holding = sum(1 for other in bags if term in other)
            idf = math.log(1 + (count - holding + 0.5) / (holding + 0.5))
            norm = tf + K1 * (1 - B + B * length / (average or 1.0))
            score += idf * tf * (K1 + 1) / norm
        scores.append(score)
    return scores


def rank(query: str, documents: Sequence[str]) -> list[int]:
    """Indices of `documents`, most relevant to `query` first (ties keep their order)."""
    scores = bm25_scores(query, documents)
    return sorted(range(len(documents)), key=lambda i: -scores[i])
