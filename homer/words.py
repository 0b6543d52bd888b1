"""Words, the unit that span-aware token reduction keeps whole: where each starts, how rare
each is in the document, and which look like numbers or names (the keys of facts).

Small models split numbers into digits and names into pieces; losing one piece loses the fact.
A token starts a new word when its text begins with whitespace (or a tokenizer's space marker),
or is punctuation; a token after punctuation also starts one. So ` 4`, `7`, `1`, `9` is one
word, and `.` is a word of its own. Only the tokenizer's vocabulary and the document's ids are
read; nothing here runs a model.
"""

from __future__ import annotations

import contextlib
import itertools
import weakref
from collections.abc import Callable
from typing import Any

import torch

# Markers byte-level BPE (GPT-2 style) and SentencePiece put for a leading space or newline.
_SPACE_MARKERS = frozenset("\u0120\u2581\u010a\u0109")
_SPACE, _WORD, _OTHER = 0, 1, 2

_TABLES: weakref.WeakKeyDictionary[Any, torch.Tensor] = weakref.WeakKeyDictionary()
_TRAITS: weakref.WeakKeyDictionary[Any, torch.Tensor] = weakref.WeakKeyDictionary()

# Bits of `token_traits`.
CAPITAL, DIGIT, SENTENCE_END, LETTER, BLANK = 1, 2, 4, 8, 16
_SENTENCE_ENDS = frozenset('.!?:;"\u201d)]')


def _vocab_table(
    tokenizer: Any,
    tables: weakref.WeakKeyDictionary[Any, torch.Tensor],
    classify: Callable[[str], int],
    fill: int,
) -> torch.Tensor:
    """`(vocab,)` int8 of `classify(piece)` per token (`fill` for special and empty tokens),
    built once per tokenizer."""
    try:
        return tables[tokenizer]
    except (KeyError, TypeError):
        pass
    size = max(len(tokenizer), max(tokenizer.get_vocab().values()) + 1)
    pieces = tokenizer.convert_ids_to_tokens(list(range(size)))
    table = torch.full((size,), fill, dtype=torch.int8)
    special = set(getattr(tokenizer, "all_special_ids", []))
    for idx, piece in enumerate(pieces):
        if piece and idx not in special:
            table[idx] = classify(piece)
    with contextlib.suppress(TypeError):  # tokenizers that cannot be weakly referenced
        tables[tokenizer] = table
    return table


def _kind(piece: str) -> int:
    first = piece[0]
    if first in _SPACE_MARKERS or first.isspace():
        return _SPACE
    return _WORD if first.isalnum() else _OTHER


def _traits(piece: str) -> int:
    text = piece.lstrip("".join(_SPACE_MARKERS))
    bits = 0
    letter = next((c for c in text if c.isalpha()), "")
    if letter:
        bits |= LETTER | (CAPITAL if letter.isupper() else 0)
    if any(c.isdigit() for c in text):
        bits |= DIGIT
    if "\n" in piece or "\u010a" in piece or text.rstrip()[-1:] in _SENTENCE_ENDS:
        bits |= SENTENCE_END
    elif not text.strip():
        bits |= BLANK
    return bits


def token_kinds(tokenizer: Any) -> torch.Tensor:
    """`(vocab,)` int8: 0 = starts with a space, 1 = starts with a letter or digit, 2 = other."""
    return _vocab_table(tokenizer, _TABLES, _kind, _OTHER)


def token_traits(tokenizer: Any) -> torch.Tensor:
    """`(vocab,)` int8 bit mask per token: `LETTER` (it holds a letter), `CAPITAL` (its first
    letter is upper case), `DIGIT` (it holds a digit), `SENTENCE_END` (it holds a line break, or
    its text ends with closing punctuation such as `.`, `?` or `"`), `BLANK` (only spaces)."""
    return _vocab_table(tokenizer, _TRAITS, _traits, 0)


def word_ids(token_ids: torch.Tensor, kinds: torch.Tensor) -> torch.Tensor:
    """`(T,)` ids -> `(T,)` int64 word index, increasing along the text.

    A token continues the previous word when it starts with a letter or digit and the previous
    token was not punctuation.
    """
    kind = kinds[token_ids.clamp(max=kinds.shape[0] - 1).cpu()].long()
    previous = torch.cat([torch.tensor([_OTHER]), kind[:-1]])
    continues = (kind == _WORD) & (previous != _OTHER)
    return torch.cumsum((~continues).long(), dim=0) - 1


def fact_words(token_ids: torch.Tensor, words: torch.Tensor, traits: torch.Tensor) -> torch.Tensor:
    """Which words look like the key of a fact: a number, or a name.

    A word is a number when any of its tokens holds a digit, and a name when its first letter is
    a capital where the sentence does not force one: the last token before that letter's token
    that is not a bare space does not end a sentence or a line (so verse's line-initial capitals
    are not names), and the document's first word opens a sentence. Codes, dates, amounts,
    people and places are what a question about a document usually asks for.

    Args:
        token_ids: `(T,)` int64 document tokens.
        words: `(T,)` int64 word index from `word_ids` (contiguous runs from 0).
        traits: `(vocab,)` int8 from `token_traits`.

    Returns:
        `(num_words,)` bool, indexed by word id.
    """
    if token_ids.numel() == 0:
        return torch.zeros(0, dtype=torch.bool)
    bits = traits[token_ids.clamp(max=traits.shape[0] - 1).cpu()].long()
    words = words.cpu()
    num_words = int(words[-1]) + 1
    digit = torch.zeros(num_words, dtype=torch.bool)
    digit.scatter_reduce_(0, words, (bits & DIGIT) > 0, reduce="amax")
    # The first token of each word that holds a letter (T when none does).
    total = words.numel()
    index = torch.arange(total)
    lettered = torch.where((bits & LETTER) > 0, index, torch.full_like(index, total))
    first = torch.full((num_words,), total, dtype=torch.long)
    first.scatter_reduce_(0, words, lettered, reduce="amin")
    has_letter = first < total
    at = first.clamp(max=total - 1)
    capital = (bits[at] & CAPITAL) > 0
    # The last token before each token that is not a bare space (-1 at the start).
    solid = torch.where((bits & BLANK) > 0, torch.full_like(index, -1), index)
    previous = torch.cat([torch.tensor([-1]), torch.cummax(solid, dim=0).values[:-1]])[at]
    before = bits[previous.clamp(min=0)]
    opens_sentence = (previous < 0) | ((before & SENTENCE_END) > 0)
    return digit | (has_letter & capital & ~opens_sentence)


#: Words seen more often than this are not rare at all (rarity 0), so that adding a sentence
#: leaves the rarity of common words, and with it every untouched subtree, exactly unchanged.
RARE_MAX_COUNT = 4

#: A rare word lends `RARE_SHARE` of its rarity to the words within `RARE_RADIUS` of it, so a
#: fact keeps the small words that make it readable (see `widen`).
RARE_RADIUS = 3
RARE_SHARE = 0.5

#: A rare word that is neither a number nor a name (see `fact_words`) counts for this share of
#: its rarity: rare prose words are many (at 32k tokens of prose, words seen once fill more than a
#: 4,096-token cache), names and numbers are few, and they are what facts hinge on.
PLAIN_RARE_SHARE = 0.25


def word_rarity(
    token_ids: torch.Tensor, words: torch.Tensor, facts: torch.Tensor | None = None
) -> torch.Tensor:
    """How rare each word is in this document: `1 / count` of its exact token sequence.

    A fact stated once (a code, an invented name) is a word seen once; the words of ordinary
    prose repeat. Case and the leading space count, as they do for the tokenizer. Words seen
    more than `RARE_MAX_COUNT` times get 0.

    Args:
        token_ids: `(T,)` int64 document tokens.
        words: `(T,)` int64 word index from `word_ids` (contiguous runs from 0).
        facts: `(num_words,)` bool from `fact_words`, or None. When given, the other words'
            rarity is scaled by `PLAIN_RARE_SHARE`.

    Returns:
        `(num_words,)` float32, indexed by word id, in `[0, 1]`.
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
    result = torch.tensor(rarity, dtype=torch.float32)
    if facts is not None:
        result = torch.where(facts.cpu(), result, result * PLAIN_RARE_SHARE)
    return result


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
