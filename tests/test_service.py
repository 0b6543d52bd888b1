"""The library use-cases (`homer.service`): ingest once, ask many, as a Python user runs them."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

import homer
from homer import HomerConfig, compress, generate
from homer.calibration import calibration_text
from homer.documents import load_document
from homer.service import CacheExistsError, Sampling, StoreEmptyError
from tests.conftest import MAX_CHUNK

CONFIG = HomerConfig(max_chunk_len=int(MAX_CHUNK))
QUESTION = "Who sailed across the sea?"


@pytest.fixture
def book(tmp_path: Path) -> Path:
    path = tmp_path / "book.txt"
    path.write_text(calibration_text()[:5000], encoding="utf-8")
    return path


def test_ingest_then_ask_gives_the_engines_own_answer(
    model: homer.LoadedModel, book: Path, engine_home: Path
) -> None:
    """The use-cases add the store around the engine and change nothing it computes."""
    done = homer.ingest(book, model, config=CONFIG)
    assert not done.reused and done.seconds > 0
    assert done.name.startswith("book-") and done.record.source == book.name
    opened = homer.open_cache(model, done.name)
    answer = "".join(homer.ask(model, opened.cache, QUESTION, Sampling(max_new_tokens=12)))

    direct = compress(model.model, model.tokenizer, book.read_text(encoding="utf-8"), CONFIG)
    assert torch.equal(opened.cache.token_ids, direct.token_ids)
    assert all(torch.equal(a, b) for a, b in zip(opened.cache.keys, direct.keys, strict=True))
    expected = "".join(generate(model.model, model.tokenizer, direct, QUESTION, max_new_tokens=12))
    assert answer == expected


def test_a_second_ingest_reuses_and_a_name_is_never_taken_silently(
    model: homer.LoadedModel, book: Path, tmp_path: Path, engine_home: Path
) -> None:
    first = homer.ingest(book, model, config=CONFIG, name="book")
    again = homer.ingest(load_document(book), model, config=CONFIG, name="book")
    assert again.reused and again.name == "book" and again.record.key == first.record.key

    other = tmp_path / "other.txt"
    other.write_text(calibration_text()[5000:9000], encoding="utf-8")
    with pytest.raises(CacheExistsError) as refused:
        homer.ingest(other, model, config=CONFIG, name="book")
    assert (refused.value.name, refused.value.source) == ("book", book.name)
    replaced = homer.ingest(other, model, config=CONFIG, name="book", force=True)
    assert not replaced.reused and replaced.record.source == other.name


def test_open_cache_defaults_to_the_last_used_and_refuses_an_empty_store(
    model: homer.LoadedModel, book: Path, engine_home: Path
) -> None:
    with pytest.raises(StoreEmptyError):
        homer.open_cache(model)
    done = homer.ingest(book, model, config=CONFIG)
    assert homer.open_cache(model).name == done.name
    other = book.with_name("other.txt")
    other.write_text(calibration_text()[6000:9000], encoding="utf-8")
    newer = homer.ingest(other, model, config=CONFIG)
    assert homer.open_cache(model).name == newer.name
    # Ingesting the first document again reuses its cache, and it is the one that answers next,
    # though another was created after it.
    assert homer.ingest(book, model, config=CONFIG).reused
    assert homer.open_cache(model).name == done.name
    homer.open_cache(model, newer.name)  # answering from a cache makes it the latest used too
    assert homer.open_cache(model).name == newer.name
    homer.Store().remove(newer.name)  # gone: the newest that still exists
    assert homer.open_cache(model).name == done.name


@pytest.mark.parametrize(
    "bad",
    [{"max_new_tokens": 0}, {"temperature": -1.0}, {"temperature": float("nan")}, {"top_p": 0}],
)
def test_sampling_refuses_bad_values(bad: dict[str, float]) -> None:
    with pytest.raises(ValueError):
        Sampling(**bad)  # type: ignore[arg-type]
