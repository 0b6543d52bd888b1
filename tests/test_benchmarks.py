"""The benchmarks' own scoring, which every reported answer rate rests on."""

from __future__ import annotations

from benchmarks.needles import answered


def test_an_answer_counts_only_when_it_states_the_whole_key() -> None:
    assert answered("74989", "The combination of the harbour safe is 74989.")
    assert not answered("74989", "The combination of the harbour safe is 749899.")
    assert not answered("74989", "It is 174989.")
    assert answered("Isbet Strand", "The chronicler was called Isbet Strand.")
    assert not answered("Isbet Strand", "The chronicler was called Isbet Strandling.")
    assert not answered("Isbet Strand", "The chronicler was called Isbet.")
