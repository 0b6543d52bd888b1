"""Where each kept token came from: its document token index and its character span.

A cache's kept document tokens are a subsequence of the document's tokens, in document order
(merges concatenate left before right; pruning keeps an ascending subset). Each kept token
still carries its word id (`homer.words`), and a word is a contiguous run of document tokens,
so matching the kept tokens to the document inside their words recovers their indices without
the tree keeping any extra state. The match is exact except inside a word that repeats one
token id (a run like `====`), where a kept piece may be credited to an equal piece of the same
word: its span still falls inside that word.

Pure functions over 1-D int64 tensors; no model, no tokenizer.
"""

from __future__ import annotations

import torch


def kept_sources(
    kept_ids: torch.Tensor,
    kept_words: torch.Tensor,
    doc_ids: torch.Tensor,
    doc_words: torch.Tensor,
) -> torch.Tensor:
    """The document token index of every kept token, -1 for prompt tokens.

    Args:
        kept_ids / kept_words: `(T,)` int64 token and word ids of the cache, in cache order;
            word id -1 marks the instruction around the document.
        doc_ids / doc_words: `(C,)` int64 token and word ids of the whole document.

    Returns:
        `(T,)` int64 indices into the document, strictly increasing over the document tokens.
    """
    if doc_ids.shape != doc_words.shape or kept_ids.shape != kept_words.shape:
        raise ValueError("ids and word ids must have the same shape")
    num_words = int(doc_words.max()) + 1 if doc_words.numel() else 0
    # First token of each word: words are contiguous and numbered in document order.
    starts = torch.full((num_words + 1,), doc_words.numel(), dtype=torch.long)
    positions = torch.arange(doc_words.numel(), dtype=torch.long)
    starts.scatter_reduce_(0, doc_words.long(), positions, reduce="amin")
    starts[num_words] = doc_words.numel()
    doc = doc_ids.tolist()
    word_start = starts.tolist()
    out: list[int] = []
    cursor = 0
    for token, word in zip(kept_ids.tolist(), kept_words.tolist(), strict=True):
        if word < 0:
            out.append(-1)
            continue
        if not 0 <= word < num_words:
            raise ValueError(f"word id {word} is not in the document")
        begin = max(cursor, word_start[word])
        end = word_start[word + 1]
        index = next((i for i in range(begin, end) if doc[i] == token), None)
        if index is None:  # not found: a token the document does not hold at this word
            index = min(begin, end - 1)
        out.append(index)
        cursor = index + 1
    return torch.tensor(out, dtype=torch.long)


def char_spans(sources: torch.Tensor, offsets: torch.Tensor) -> torch.Tensor:
    """`(T, 2)` int64 `[start, end)` character spans of kept tokens, `(-1, -1)` for prompt
    tokens, from their `sources` `(T,)` and the document's token `offsets` `(C, 2)`."""
    spans = torch.full((sources.numel(), 2), -1, dtype=torch.long)
    inside = sources >= 0
    spans[inside] = offsets[sources[inside]].long()
    return spans
