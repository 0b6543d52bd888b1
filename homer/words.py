"""Which tokens start a new word: the unit that span-aware token reduction keeps whole.

Small models split numbers into digits and names into pieces; losing one piece loses the fact.
A token starts a new word when its text begins with whitespace (or a tokenizer's space marker),
or is punctuation; a token after punctuation also starts one. So ` 4`, `7`, `1`, `9` is one
word, and `.` is a word of its own. Only the tokenizer's vocabulary is read.
"""

from __future__ import annotations

import contextlib
import itertools
import weakref
from typing import Any

import torch

# Markers byte-level BPE (GPT-2 style) and SentencePiece put for a leading space or newline.
_SPACE_MARKERS = frozenset("\u0120\u2581\u010a\u0109")
_SPACE, _WORD, _OTHER = 0, 1, 2

_TABLES: weakref.WeakKeyDictionary[Any, torch.Tensor] = weakref.WeakKeyDictionary()


def token_kinds(tokenizer: Any) -> torch.Tensor:
    """`(vocab,)` int8: 0 = starts with a space, 1 = starts with a letter or digit, 2 = other."""
    try:
        return _TABLES[tokenizer]
    except (KeyError, TypeError):
        pass
    size = max(len(tokenizer), max(tokenizer.get_vocab().values()) + 1)
    pieces = tokenizer.convert_ids_to_tokens(list(range(size)))
    kinds = torch.full((size,), _OTHER, dtype=torch.int8)
    special = set(getattr(tokenizer, "all_special_ids", []))
    for idx, piece in enumerate(pieces):
        if not piece or idx in special:
            continue
        first = piece[0]
        if first in _SPACE_MARKERS or first.isspace():
            kinds[idx] = _SPACE
        elif first.isalnum():
            kinds[idx] = _WORD
    with contextlib.suppress(TypeError):  # tokenizers that cannot be weakly referenced
        _TABLES[tokenizer] = kinds
    return kinds


def word_ids(token_ids: torch.Tensor, kinds: torch.Tensor) -> torch.Tensor:
    """`(T,)` ids -> `(T,)` int64 word index, increasing along the text.

    A token continues the previous word when it starts with a letter or digit and the previous
    token was not punctuation.
    """
    kind = kinds[token_ids.clamp(max=kinds.shape[0] - 1).cpu()].long()
    previous = torch.cat([torch.tensor([_OTHER]), kind[:-1]])
    continues = (kind == _WORD) & (previous != _OTHER)
    return torch.cumsum((~continues).long(), dim=0) - 1


#: Words seen more often than this are not rare at all (rarity 0), so that adding a sentence
#: leaves the rarity of common words, and with it every untouched subtree, exactly unchanged.
RARE_MAX_COUNT = 4

#: A rare word lends `RARE_SHARE` of its rarity to the words within `RARE_RADIUS` of it, so a
#: fact keeps the small words that make it readable (see `widen`).
RARE_RADIUS = 3
RARE_SHARE = 0.5


def word_rarity(token_ids: torch.Tensor, words: torch.Tensor) -> torch.Tensor:
    """How rare each word is in this document: `1 / count` of its exact token sequence.

    A fact stated once (a code, an invented name) is a word seen once; the words of ordinary
    prose repeat. Case and the leading space count, as they do for the tokenizer. Words seen
    more than `RARE_MAX_COUNT` times get 0.

    Args:
        token_ids: `(T,)` int64 document tokens.
        words: `(T,)` int64 word index from `word_ids` (contiguous runs from 0).

    Returns:
        `(num_words,)` float32, indexed by word id, in `(0, 1]`.
    """
    if token_ids.numel() == 0:
        return torch.zeros(0)
    # Word boundaries -> one tuple per word; counting tuples is linear in the document.
    starts = torch.ones_like(words, dtype=torch.bool)
    starts[1:] = words[1:] != words[:-1]
    bounds = [*starts.nonzero().squeeze(1).tolist(), int(words.numel())]
    ids = token_ids.tolist()
    spelled = [tuple(ids[a:b]) for a, b in itertools.pairwise(bounds)]
    counts: dict[tuple[int, ...], int] = {}
    for word in spelled:
        counts[word] = counts.get(word, 0) + 1
    rarity = [1.0 / n if (n := counts[word]) <= RARE_MAX_COUNT else 0.0 for word in spelled]
    return torch.tensor(rarity, dtype=torch.float32)


def widen(rarity: torch.Tensor, radius: int, share: float) -> torch.Tensor:
    """Lend a share of each word's rarity to the words around it.

    A rare word alone reads as noise ("passkey vault 48213"); the function words around it are
    what make it a fact ("the passkey for the vault is 48213"). Each word gets at least `share`
    times the largest rarity within `radius` words on either side.

    Args:
        rarity: `(W,)` float per word, from `word_rarity`.
        radius: words on each side; 0 returns `rarity` unchanged.
        share: in `[0, 1]`.

    Returns:
        `(W,)` float32.
    """
    if radius <= 0 or rarity.numel() == 0:
        return rarity
    pooled = torch.nn.functional.max_pool1d(
        rarity.view(1, 1, -1).float(), kernel_size=2 * radius + 1, stride=1, padding=radius
    ).view(-1)
    return torch.maximum(rarity.float(), share * pooled)
