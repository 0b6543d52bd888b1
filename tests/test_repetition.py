"""The loop rule (`homer.repetition`): three copies of a clause, or a long run of a short one."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from homer.repetition import MAX_SPAN, SHORT_RUN_TOKENS, loop_start

CLAUSE = [11, 12, 13, 14, 15, 16, 17]  # "King Duncan's two sons are:"


def test_a_clause_said_three_times_is_a_loop_cut_after_its_first_copy() -> None:
    answer = [1, 2, *CLAUSE, *CLAUSE, *CLAUSE]
    assert loop_start(answer) == 2 + len(CLAUSE)
    assert loop_start(answer[:-1]) is None  # two copies and a bit: not yet


def test_two_copies_are_ordinary_speech() -> None:
    assert loop_start([1, *CLAUSE, *CLAUSE]) is None
    assert loop_start([5, 6, 5, 6, 7]) is None


def test_a_short_span_loops_only_when_its_run_is_long() -> None:
    assert loop_start([9] * (SHORT_RUN_TOKENS - 1)) is None
    assert loop_start([3, *([9] * SHORT_RUN_TOKENS)]) == 2
    assert loop_start([3, *([8, 9] * (SHORT_RUN_TOKENS // 2))]) == 3


def test_a_loop_longer_than_the_longest_span_is_not_looked_for() -> None:
    sentence = list(range(100, 100 + MAX_SPAN + 1))
    assert loop_start(sentence * 3) is None


@given(st.lists(st.integers(0, 50), max_size=60))
def test_the_cut_keeps_one_copy_and_drops_only_repeats(tokens: list[int]) -> None:
    start = loop_start(tokens)
    if start is None:
        return
    dropped = tokens[start:]
    span = next(
        s
        for s in range(1, len(dropped) + 1)
        if dropped == tokens[start - s : start] * (len(dropped) // s) and len(dropped) % s == 0
    )
    assert tokens[start - span : start] == dropped[:span]
