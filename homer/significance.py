"""Token significance and selection: pure tensor functions, no model.

HOMER ranks a chunk's tokens by how strongly its last token attends to them: the pre-softmax
attention logit from the last query, maximised over heads, minus a calibration bias that removes
the logit's dependence on distance (ALGORITHM.md §4). Selection keeps the prefix and suffix and
the best-scoring document tokens, either one by one (the paper's rule) or whole words at a time.
"""

from __future__ import annotations

import torch


def last_query_logits(query: torch.Tensor, keys: torch.Tensor, scaling: float) -> torch.Tensor:
    """Pre-softmax attention logits of one query row against every key.

    Args:
        query: `(H, D)` post-RoPE query of the last token, one row per query head.
        keys: `(KV, T, D)` post-RoPE keys; with grouped-query attention `H = KV * G` and query
            head `h` reads kv head `h // G`, as in transformers' `repeat_kv`.
        scaling: the attention's softmax scale (usually `D ** -0.5`).

    Returns:
        `(H, T)` float32 logits.
    """
    heads, dim = query.shape
    kv_heads = keys.shape[0]
    if heads % kv_heads:
        raise ValueError(f"{heads} query heads cannot share {kv_heads} kv heads evenly")
    grouped = query.float().reshape(kv_heads, heads // kv_heads, dim)  # (KV, G, D)
    logits = torch.matmul(grouped, keys.float().transpose(1, 2))  # (KV, G, T)
    return logits.reshape(heads, -1) * scaling


def significance(
    logits: torch.Tensor,
    positions: torch.Tensor,
    bias: torch.Tensor | None,
) -> torch.Tensor:
    """Per-token significance: max over heads, minus the calibration bias at each distance.

    Args:
        logits: `(H, T)` from `last_query_logits`.
        positions: `(T,)` position ids; the last one is the query's.
        bias: `(max_distance,)` mean max-logit at each distance on ordinary text for this layer,
            or None for raw logits. Distances past its end use its last value.

    Returns:
        `(T,)` float32 scores.
    """
    scores = logits.max(dim=0).values
    if bias is None:
        return scores
    distance = (positions[-1] - positions).clamp(min=0, max=bias.shape[0] - 1)
    return scores - bias.to(scores.device)[distance]


def boost_rare(
    scores: torch.Tensor, prunable: torch.Tensor, rarity: torch.Tensor, weight: float
) -> torch.Tensor:
    """Raise rare words' scores by `weight` standard deviations of the prunable scores, scaled.

    The shift is in units of the scores' own spread, so one weight means the same for every
    layer and model.

    Args:
        scores: `(T,)` significance.
        prunable: `(T,)` bool.
        rarity: `(T,)` float in `[0, 1]` (the token's word's rarity; 0 for protected tokens).
        weight: 0 leaves the scores as they are.

    Returns:
        `(T,)` float32 scores.
    """
    candidates = scores[prunable].float()
    if weight == 0 or candidates.numel() < 2:
        return scores
    return scores.float() + weight * candidates.std() * rarity.to(scores.device)


#: How much a token's inherited score falls per token of distance from the neighbour it inherits
#: from, in standard deviations of the prunable scores (see `spread_to_runs`).
RUN_DECAY = 0.2


def spread_to_runs(
    scores: torch.Tensor, prunable: torch.Tensor, radius: int, decay: float = RUN_DECAY
) -> torch.Tensor:
    """Let every token inherit its best prunable neighbour's score, less a little per token away.

    A token's new score is `max(own, max over |d| <= radius of scores[t + d] - decay * |d| * sd)`,
    where `sd` is the standard deviation of the prunable scores. A strong token (a fact's key,
    lifted by the rarity prior) then pulls the tokens around it in with it, so what survives is
    runs of text instead of isolated words: the model reads a run far better than scattered
    words (docs/RESULTS.md), and the words that say what a number or name *is* stay beside it.
    Protected tokens neither give nor take (their scores are returned unchanged).

    Args:
        scores: `(T,)` significance (after any prior).
        prunable: `(T,)` bool.
        radius: tokens on each side; 0 returns `scores` unchanged.
        decay: fall per token of distance, in standard deviations.

    Returns:
        `(T,)` float32 scores, never lower than `scores`.
    """
    out = scores.float()
    candidates = out[prunable]
    if radius <= 0 or candidates.numel() < 2:
        return out
    step = decay * float(candidates.std())
    source = out.masked_fill(~prunable, float("-inf"))
    spread = source.clone()
    for d in range(1, min(radius, out.shape[0] - 1) + 1):
        spread[:-d] = torch.maximum(spread[:-d], source[d:] - d * step)
        spread[d:] = torch.maximum(spread[d:], source[:-d] - d * step)
    return torch.where(prunable, torch.maximum(out, spread), out)


def reserve_facts(
    scores: torch.Tensor,
    own: torch.Tensor,
    prunable: torch.Tensor,
    facts: torch.Tensor,
    keep: int,
) -> torch.Tensor:
    """Put the fact words that their own scores would keep ahead of everything else.

    Runs (`spread_to_runs`) let strong words lend their score to neighbours, and the borrowed
    scores of many strong facts' neighbours can push a weaker fact word out of the budget that
    its own score would have won. Reserving exactly those fact tokens first means runs only
    ever take the room left after them.

    Args:
        scores: `(T,)` scores after runs.
        own: `(T,)` the same tokens' scores before runs (after any prior).
        prunable: `(T,)` bool.
        facts: `(T,)` bool, tokens of fact words (rare numbers and names; `homer.words`).
        keep: how many prunable tokens survive.

    Returns:
        `(T,)` float32: reserved tokens rank above every other prunable token, in the order of
        their own scores; the rest keep `scores`.
    """
    out = scores.float()
    candidates = own[prunable].float()
    if keep <= 0 or candidates.numel() == 0 or not bool((facts & prunable).any()):
        return out
    keep = min(keep, candidates.numel())
    threshold = torch.topk(candidates, keep).values[-1]
    reserved = facts & prunable & (own.float() >= threshold)
    if not bool(reserved.any()):
        return out
    ceiling = float(out[prunable].max())
    lifted = ceiling + 1.0 + (own.float() - float(candidates.min()))
    return torch.where(reserved, lifted, out)


def share_budget(left: torch.Tensor, right: torch.Tensor, total: int) -> tuple[int, int]:
    """Split `total` kept tokens between two siblings by one ranking of both.

    The paper gives each child of a merge half the room. Ranking the two children's candidates
    together instead lets the one with more strong tokens (facts lifted by the rarity prior,
    tokens its last query attends to) keep more of them, at the expense of a sibling whose
    tokens rank low. Both children's scores are in the same units: the same layer, bias removed,
    and priors in units of each chunk's own spread.

    Args:
        left / right: `(A,)` and `(B,)` scores of each child's prunable tokens.
        total: prunable tokens the two keep together.

    Returns:
        `(a, b)` with `a + b == min(total, A + B)`, `a <= A`, `b <= B`: how many of its prunable
        tokens each child keeps.
    """
    sizes = left.numel(), right.numel()
    if total >= sizes[0] + sizes[1]:
        return sizes
    if total <= 0:
        return 0, 0
    best = torch.topk(torch.cat([left.float(), right.float()]), total).indices
    from_left = int((best < sizes[0]).sum())
    return from_left, total - from_left


def select_tokens(scores: torch.Tensor, prunable: torch.Tensor, keep: int) -> torch.Tensor:
    """Indices of the `keep` tokens to keep: every protected token, then the best prunable ones.

    Args:
        scores: `(T,)` significance.
        prunable: `(T,)` bool, False for prefix and suffix tokens (always kept).
        keep: how many tokens survive in total.

    Returns:
        `(keep,)` int64 indices in ascending (cache) order.
    """
    total = scores.shape[0]
    protected = int((~prunable).sum())
    if keep >= total:
        return torch.arange(total, device=scores.device)
    if keep < protected:
        raise ValueError(f"cannot keep {keep} tokens: {protected} are protected")
    ranked = scores.masked_fill(~prunable, float("inf"))
    chosen = torch.topk(ranked, keep, sorted=False).indices
    return chosen.sort().values


def pool_over_words(scores: torch.Tensor, word_ids: torch.Tensor) -> torch.Tensor:
    """Give every token the best score of the word it belongs to.

    Args:
        scores: `(T,)` significance.
        word_ids: `(T,)` int64, equal for tokens of one word (any order; -1 for protected tokens,
            which are pooled among themselves harmlessly).

    Returns:
        `(T,)` pooled scores.
    """
    _, inverse = torch.unique(word_ids, return_inverse=True)
    best = torch.full((int(inverse.max()) + 1,), float("-inf"), device=scores.device)
    best = best.scatter_reduce(0, inverse, scores.float(), reduce="amax")
    return best[inverse]


def select_words(
    scores: torch.Tensor, prunable: torch.Tensor, word_ids: torch.Tensor, keep: int
) -> torch.Tensor:
    """Like `select_tokens`, but keeps whole words: a word's tokens survive or go together.

    Words are ranked by their best token's score; whole words are taken in that order while they
    fit, and the last few slots go to the best single tokens left, so exactly `keep` survive.

    Returns:
        `(keep,)` int64 indices in ascending order.
    """
    total = scores.shape[0]
    if keep >= total:
        return torch.arange(total, device=scores.device)
    pooled = pool_over_words(scores, word_ids)
    # Rank tokens by (word score, then own score) so a word's tokens sit together in the ranking.
    own_rank = scores.float().argsort().argsort().float() / max(total, 1)
    ranked = (pooled + 1e-3 * own_rank).masked_fill(~prunable, float("inf"))
    order = ranked.argsort(descending=True)
    chosen = torch.zeros(total, dtype=torch.bool, device=scores.device)
    chosen[order[:keep]] = True
    # The cut through `order` may split one word; that is the only partial word, by construction.
    return chosen.nonzero().squeeze(1)
