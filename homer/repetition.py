"""When an answer has started to loop: a pure rule on the generated token ids.

Small models, and any model reading a lossy cache, sometimes fall into a loop ("King Duncan's two
sons are: King Duncan's two sons are: ...") and decode until the token limit. The rule stops the
answer once its tail is one span said again and again:

- a span of `MIN_SPAN` (4) or more tokens ending the answer, said `REPEATS` (3) times in a row;
- or a short span (1 to 3 tokens: "no no no", "!!!!") said until the run covers
  `SHORT_RUN_TOKENS` (16) tokens.

Saying a phrase twice is ordinary ("Yes. Yes."), so two copies never stop an answer; three
identical copies of a clause in a row is a loop in practice. The rule sees token ids only, so it
knows nothing of the tokenizer, the model or the cache.
"""

from __future__ import annotations

from collections.abc import Sequence

#: Shortest span that counts as a repeated clause.
MIN_SPAN = 4
#: Copies of a span of `MIN_SPAN` tokens or more, in a row, that make a loop.
REPEATS = 3
#: Tokens a run of one short span (under `MIN_SPAN` tokens) must cover to be a loop.
SHORT_RUN_TOKENS = 16
#: Longest span looked for (a loop of longer sentences is caught when they come back a third time
#: within this many tokens each).
MAX_SPAN = 64


def _copies(tokens: Sequence[int], span: int) -> int:
    """How many times the last `span` tokens repeat back to back at the end of `tokens`."""
    tail = tokens[len(tokens) - span :]
    copies = 1
    end = len(tokens) - span
    while end >= span and tokens[end - span : end] == tail:
        copies += 1
        end -= span
    return copies


def _periodic(span: Sequence[int]) -> bool:
    """Whether `span` is itself a shorter span said over and over (then that one is judged)."""
    n = len(span)
    return any(n % p == 0 and list(span) == list(span[:p]) * (n // p) for p in range(1, n))


def loop_start(tokens: Sequence[int]) -> int | None:
    """Where the loop at the end of `tokens` began repeating, or None when there is none.

    Returns the index of the first token of the second copy: `tokens[:index]` is the answer
    with its first copy of the span kept and the repeats dropped.

    Args:
        tokens: the token ids generated so far (the answer only, not the prompt).
    """
    n = len(tokens)
    for span in range(1, min(MAX_SPAN, n // 2) + 1):
        copies = _copies(tokens, span)
        if copies < 2 or _periodic(tokens[n - span :]):
            continue
        long_loop = span >= MIN_SPAN and copies >= REPEATS
        short_loop = span < MIN_SPAN and copies * span >= SHORT_RUN_TOKENS
        if long_loop or short_loop:
            return n - (copies - 1) * span
    return None
