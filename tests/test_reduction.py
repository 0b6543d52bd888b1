"""Pure token-reduction functions: word grouping, rarity, pooling and whole-word selection."""

from __future__ import annotations

import torch

from homer.significance import (
    RUN_DECAY,
    boost_rare,
    pool_over_words,
    reserve_facts,
    select_tokens,
    select_words,
    share_budget,
    spread_to_runs,
)
from homer.words import (
    CAPITAL,
    DIGIT,
    LETTER,
    PLAIN_RARE_SHARE,
    RARE_MAX_COUNT,
    SENTENCE_END,
    fact_words,
    token_kinds,
    token_traits,
    widen,
    word_ids,
    word_rarity,
)
from tests.tiny import make_tiny_tokenizer


def test_word_rarity_counts_exact_token_sequences() -> None:
    # words: [5 6] [7] [5 6] [8] [5] -> "5 6" twice, "7" once, "8" once, "5" once
    tokens = torch.tensor([5, 6, 7, 5, 6, 8, 5])
    words = torch.tensor([0, 0, 1, 2, 2, 3, 4])
    assert word_rarity(tokens, words).tolist() == [0.5, 1.0, 0.5, 1.0, 1.0]
    common = torch.tensor([3] * (RARE_MAX_COUNT + 1) + [4])
    assert word_rarity(common, torch.arange(common.numel())).tolist() == [0.0] * 5 + [1.0]
    empty = torch.zeros(0, dtype=torch.long)
    assert word_rarity(empty, empty).numel() == 0


def test_word_rarity_gives_words_that_are_not_facts_a_share() -> None:
    tokens = torch.tensor([5, 6, 7, 8])
    words = torch.arange(4)
    facts = torch.tensor([True, False, True, False])
    share = PLAIN_RARE_SHARE
    assert word_rarity(tokens, words, facts).tolist() == [1.0, share, 1.0, share]


def test_fact_words_marks_numbers_and_names_the_sentence_does_not_capitalise() -> None:
    # vocabulary: 0 "The", 1 " cat", 2 " Orlan", 3 ".", 4 " 48", 5 "213", 6 " Then", 7 "\n",
    # 8 " Paris", 9 ' "'
    traits = torch.tensor(
        [
            LETTER | CAPITAL,
            LETTER,
            LETTER | CAPITAL,
            SENTENCE_END,
            DIGIT,
            DIGIT,
            LETTER | CAPITAL,
            SENTENCE_END,
            LETTER | CAPITAL,
            SENTENCE_END,
        ],
        dtype=torch.int8,
    )
    # "The cat Orlan. Then 48213\n Paris cat" -> words: The, cat, Orlan, ., Then, 48213, \n,
    # Paris, cat; and '"' + "Then" as one word after a quote mark.
    tokens = torch.tensor([0, 1, 2, 3, 6, 4, 5, 7, 8, 1, 9, 6])
    words = torch.tensor([0, 1, 2, 3, 4, 5, 5, 6, 7, 8, 9, 9])
    facts = fact_words(tokens, words, traits).tolist()
    # "The" opens the document, "Then" follows a full stop, "Paris" a line break, and the last
    # word's capital follows a quote mark: none is a name. "Orlan" is; "48213" is a number.
    assert facts == [False, False, True, False, False, True, False, False, False, False]
    empty = torch.zeros(0, dtype=torch.long)
    assert fact_words(empty, empty, traits).numel() == 0


def test_token_traits_and_fact_words_on_a_real_tokenizer() -> None:
    tokenizer = make_tiny_tokenizer()
    text = "The keeper was called Orlan Vesk. In 1854 the keeper left.\nParis was far"
    ids = torch.tensor(tokenizer(text, add_special_tokens=False)["input_ids"])
    words = word_ids(ids, token_kinds(tokenizer))
    facts = fact_words(ids, words, token_traits(tokenizer))
    found = {tokenizer.decode(ids[words == w]).strip() for w in facts.nonzero().squeeze(1).tolist()}
    assert found == {"Orlan", "Vesk", "1854"}


def test_boost_rare_shifts_by_the_prunable_spread() -> None:
    scores = torch.tensor([100.0, 0.0, 2.0, 4.0, -50.0])
    prunable = torch.tensor([False, True, True, True, False])
    rarity = torch.tensor([0.0, 1.0, 0.5, 0.0, 0.0])
    boosted = boost_rare(scores, prunable, rarity, weight=2.0)
    spread = scores[prunable].std()  # 2.0: protected outliers do not widen it
    torch.testing.assert_close(boosted, scores + 2.0 * spread * rarity)
    assert torch.equal(boost_rare(scores, prunable, rarity, weight=0.0), scores)


def test_boost_turns_a_once_seen_word_into_a_kept_one() -> None:
    scores = torch.tensor([9.0, 1.0, 3.0, 2.0, 2.5, 9.0])
    prunable = torch.tensor([False, True, True, True, True, False])
    rarity = torch.tensor([0.0, 1.0, 0.1, 0.1, 0.1, 0.0])
    assert 1 not in select_tokens(scores, prunable, keep=3).tolist()
    boosted = boost_rare(scores, prunable, rarity, weight=4.0)
    assert 1 in select_tokens(boosted, prunable, keep=3).tolist()


def test_pool_over_words_gives_each_token_its_words_best_score() -> None:
    scores = torch.tensor([1.0, 5.0, 2.0, 0.0, 3.0])
    words = torch.tensor([-1, 0, 0, 1, 1])
    assert pool_over_words(scores, words).tolist() == [1.0, 5.0, 5.0, 3.0, 3.0]


def test_select_words_keeps_words_whole_and_exactly_keep_tokens() -> None:
    # prefix, a three-token number whose first digit scores high, two one-token words, suffix
    scores = torch.tensor([0.0, 9.0, -5.0, -5.0, 4.0, 3.0, 0.0])
    words = torch.tensor([-1, 0, 0, 0, 1, 2, -1])
    prunable = torch.tensor([False, True, True, True, True, True, False])
    kept = select_words(scores, prunable, words, keep=5).tolist()
    assert kept == [0, 1, 2, 3, 6]  # the whole number, not its first digit plus word 1
    by_token = select_tokens(scores, prunable, keep=5).tolist()
    assert by_token == [0, 1, 4, 5, 6]
    assert len(select_words(scores, prunable, words, keep=4)) == 4


def test_widen_lends_a_share_of_rarity_to_neighbouring_words() -> None:
    rarity = torch.tensor([0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 0.25])
    widened = widen(rarity, radius=2, share=0.5)
    assert widened.tolist() == [0.0, 0.5, 0.5, 1.0, 0.5, 0.5, 0.125, 0.25]
    assert torch.equal(widen(rarity, radius=0, share=0.5), rarity)


def test_spread_to_runs_lets_neighbours_inherit_a_strong_score_less_a_decay() -> None:
    scores = torch.tensor([0.0, 1.0, 0.0, 1.0, 10.0, 1.0, 0.0, 1.0, 0.0])
    prunable = torch.ones(9, dtype=torch.bool)
    step = RUN_DECAY * float(scores.std())
    spread = spread_to_runs(scores, prunable, radius=2)
    # The definition, written out: the best of every neighbour within 2, less the decay.
    for t in range(9):
        inherited = [
            float(scores[u]) - abs(u - t) * step for u in range(max(0, t - 2), min(9, t + 3))
        ]
        assert abs(float(spread[t]) - max(inherited)) < 1e-5
    # The strong token's neighbours now outrank every other token.
    assert bool((spread[2:7] > spread[[0, 1, 7, 8]].max()).all())
    assert bool((spread >= scores).all())
    assert torch.equal(spread_to_runs(scores, prunable, radius=0), scores)


def test_spread_to_runs_ignores_protected_tokens() -> None:
    # A protected token (prefix/suffix) with a huge score must not pull the document's edge in,
    # and keeps its own score.
    scores = torch.tensor([100.0, 0.0, 1.0, 0.0, 1.0, 0.0])
    prunable = torch.tensor([False, True, True, True, True, True])
    spread = spread_to_runs(scores, prunable, radius=3)
    assert float(spread[0]) == 100.0
    assert float(spread[1:].max()) < 2.0


def test_spread_to_runs_keeps_a_run_around_a_kept_fact() -> None:
    # Ten words of one token each; the fact word (index 6) alone is strong. With a budget of 3,
    # selection without runs keeps scattered noise winners; with runs it keeps the fact's
    # neighbours, so the kept tokens are one contiguous run.
    scores = torch.tensor([0.9, 0.0, 0.8, 0.0, 0.1, 0.2, 5.0, 0.1, 0.0, 0.7])
    prunable = torch.ones(10, dtype=torch.bool)
    words = torch.arange(10)
    plain = select_words(scores, prunable, words, keep=3).tolist()
    assert plain == [0, 2, 6]
    runs = select_words(spread_to_runs(scores, prunable, radius=2), prunable, words, keep=3)
    assert runs.tolist() == [5, 6, 7]


def test_reserve_facts_puts_the_facts_their_own_scores_win_first() -> None:
    own = torch.tensor([9.0, 1.0, 5.0, 2.0, 4.0, 0.0, 3.0])
    after_runs = own + torch.tensor([0.0, 8.0, 0.0, 8.0, 0.0, 8.0, 0.0])
    prunable = torch.tensor([False, True, True, True, True, True, True])
    facts = torch.tensor([True, False, True, False, True, False, True])
    out = reserve_facts(after_runs, own, prunable, facts, keep=3)
    # The prunable top 3 by own score are 5, 4, 3 (indices 2, 4, 6); all three are facts.
    reserved = torch.tensor([2, 4, 6])
    others = torch.tensor([1, 3, 5])
    assert float(out[reserved].min()) > float(out[others].max())
    assert out[reserved].argsort().tolist() == [2, 1, 0]  # among themselves: own order, 3 < 4 < 5
    assert torch.equal(out[others], after_runs[others])  # everyone else keeps the runs score
    assert float(out[0]) == 9.0  # protected tokens are not touched
    # With room for 2, the weakest fact (own 3.0) is not reserved: only what own scores win.
    two = reserve_facts(after_runs, own, prunable, facts, keep=2)
    assert float(two[6]) == float(after_runs[6])
    # No facts: the scores come back as they were.
    assert torch.equal(
        reserve_facts(after_runs, own, prunable, torch.zeros(7, dtype=torch.bool), 3), after_runs
    )


def test_reserve_facts_brings_back_a_fact_that_runs_push_out() -> None:
    # Two strong fact words (1 and 7) and one weak one (4, own score 2.0). Without runs a budget
    # of 3 keeps all three facts; runs let 0, 2, 6 and 8 borrow from the strong ones and push
    # the weak fact out; reserving facts first keeps it, and runs fill the one slot left.
    own = torch.tensor([0.0, 6.0, 0.0, 0.0, 2.0, 0.0, 0.0, 5.0, 0.0, 0.0])
    prunable = torch.ones(10, dtype=torch.bool)
    words = torch.arange(10)
    facts = torch.zeros(10, dtype=torch.bool)
    facts[[1, 4, 7]] = True
    assert select_words(own, prunable, words, keep=3).tolist() == [1, 4, 7]
    runs = spread_to_runs(own, prunable, radius=1, decay=0.1)
    assert 4 not in select_words(runs, prunable, words, keep=3).tolist()
    kept = select_words(reserve_facts(runs, own, prunable, facts, 3), prunable, words, keep=3)
    assert kept.tolist() == [1, 4, 7]
    kept = select_words(reserve_facts(runs, own, prunable, facts, 4), prunable, words, keep=4)
    assert {1, 4, 7} <= set(kept.tolist())


def test_share_budget_splits_by_one_ranking_of_both_siblings() -> None:
    left = torch.tensor([9.0, 1.0, 8.0, 0.5])
    right = torch.tensor([2.0, 7.0, 3.0, 0.0])
    # The best 4 of both: 9, 8 (left), 7, 3 (right).
    assert share_budget(left, right, 4) == (2, 2)
    # The best 3: 9, 8, 7.
    assert share_budget(left, right, 3) == (2, 1)
    # A strong sibling takes the room of a weak one, but never more than it holds.
    assert share_budget(left + 100, right, 6) == (4, 2)
    # Room for everyone, or for no one.
    assert share_budget(left, right, 8) == (4, 4)
    assert share_budget(left, right, 99) == (4, 4)
    assert share_budget(left, right, 0) == (0, 0)
    assert share_budget(left, torch.zeros(0), 2) == (2, 0)
