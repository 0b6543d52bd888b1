"""Multi-turn answers, stop strings, finish reasons, cancelling, and the warm pool, on a tiny model.

A follow-up question must be exactly what the model would see if the whole conversation were
one plain prompt after the document, and the saved cache must stay as it was.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from homer import HomerConfig, compress, generate
from homer.calibration import calibration_text
from homer.generation import ContextOverflowError
from homer.prompts import PLAIN_TURN_NEXT, QUESTION, PromptTemplate, Turn, encode
from homer.service import ModelChoice, Sampling, ask, ingest, load_model
from homer.warm import PoolSettings, WarmPool, parse_bytes, parse_keep_alive
from tests.conftest import MAX_CHUNK

TEXT = calibration_text()[:100]


@pytest.fixture(scope="module")
def tiny(tiny_model_dir: Path) -> tuple[Any, Any]:
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32)
    return model.eval(), AutoTokenizer.from_pretrained(tiny_model_dir)


#: The calibration the `calibrated` fixture measured is for this chunk size.
CONFIG = HomerConfig(max_chunk_len=int(MAX_CHUNK))


@pytest.fixture(scope="module")
def cache(tiny: tuple[Any, Any], calibrated: Path) -> Any:
    model, tokenizer = tiny
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("HOMER_HOME", str(calibrated.parent))
        return compress(model, tokenizer, TEXT, CONFIG)


def plain_greedy(model: Any, ids: list[int], new: int) -> list[int]:
    with torch.no_grad():
        out = model.generate(
            torch.tensor([ids]), max_new_tokens=new, do_sample=False, eos_token_id=None
        )
    return out[0, len(ids) :].tolist()  # type: ignore[no-any-return]


# ----------------------------------------------------------------------------- prompts


def test_follow_up_text_is_the_chat_templates_conversation(tiny: tuple[Any, Any]) -> None:
    _, tokenizer = tiny
    template = PromptTemplate.for_tokenizer(tokenizer)
    history = [Turn("Who is he?", " Tom, the brother. "), Turn("Where?", "At sea.")]
    text = template.turn_open + "DOC" + template.conversation(history, "Why?")
    expected = tokenizer.apply_chat_template(
        [
            {"role": "user", "content": "DOC" + QUESTION.format(question="Who is he?")},
            {"role": "assistant", "content": "Tom, the brother."},
            {"role": "user", "content": "Where?"},
            {"role": "assistant", "content": "At sea."},
            {"role": "user", "content": "Why?"},
        ],
        tokenize=False,
        add_generation_prompt=True,
    )
    assert text == expected
    assert template.conversation([], "Why?") == template.continuation("Why?")


def test_plain_fallback_without_a_chat_template(tiny: tuple[Any, Any]) -> None:
    _, tokenizer = tiny
    plain = AutoTokenizer.from_pretrained(tokenizer.name_or_path)
    plain.chat_template = None
    template = PromptTemplate.for_tokenizer(plain)
    assert template.turn_next == PLAIN_TURN_NEXT
    text = template.conversation([Turn("Who?", "Tom")], "Why?")
    assert text.endswith("Who?\nAnswer:Tom\nQuestion: Why?\nAnswer:")


# ----------------------------------------------------------------------------- generation


def test_follow_up_matches_plain_generation_and_leaves_the_cache(
    tiny: tuple[Any, Any], cache: Any
) -> None:
    model, tokenizer = tiny
    before = [t.clone() for t in (*cache.keys, *cache.values)]
    first = generate(model, tokenizer, cache, "Who is he?", max_new_tokens=5)
    answer = "".join(first)
    history = [Turn("Who is he?", answer)]
    second = generate(model, tokenizer, cache, "And then?", max_new_tokens=6, history=history)
    list(second)
    template = PromptTemplate.for_tokenizer(tokenizer)
    full = cache.token_ids.tolist() + encode(tokenizer, template.conversation(history, "And then?"))
    assert second.token_ids == plain_greedy(model, full, 6)[: len(second.token_ids)]
    assert second.stats.prompt_tokens > first.stats.prompt_tokens
    assert all(torch.equal(a, b) for a, b in zip(before, (*cache.keys, *cache.values), strict=True))


def test_stop_strings_end_the_answer_before_them(tiny: tuple[Any, Any], cache: Any) -> None:
    model, tokenizer = tiny
    full = generate(model, tokenizer, cache, "Who?", max_new_tokens=12)
    text = "".join(full)
    assert full.stats.finish_reason == "length"
    assert len(text) > 6
    stop = text[3:6]
    cut = text.find(stop)
    stream = generate(model, tokenizer, cache, "Who?", max_new_tokens=12, stop=["zzzz", stop])
    pieces = list(stream)
    assert "".join(pieces) == text[:cut] == stream.text
    assert stream.stats.finish_reason == "stop"
    # A stop string that never comes holds nothing back at the end.
    never = generate(model, tokenizer, cache, "Who?", max_new_tokens=12, stop=["\u2603\u2603"])
    assert "".join(never) == text and never.stats.finish_reason == "length"


def test_end_of_sequence_finishes_with_stop(tiny: tuple[Any, Any], cache: Any) -> None:
    model, tokenizer = tiny
    probe = generate(model, tokenizer, cache, "Who?", max_new_tokens=8)
    list(probe)
    original = model.generation_config.eos_token_id
    model.generation_config.eos_token_id = probe.token_ids[0]
    try:
        stream = generate(model, tokenizer, cache, "Who?", max_new_tokens=8)
        list(stream)
    finally:
        model.generation_config.eos_token_id = original
    assert stream.token_ids == [] and stream.text == ""
    assert stream.stats.finish_reason == "stop"


def test_window_end_and_overflow(tiny: tuple[Any, Any], cache: Any) -> None:
    model, tokenizer = tiny
    window = model.config.max_position_embeddings
    stream = generate(model, tokenizer, cache, "Who?", max_new_tokens=window, stop_loops=False)
    list(stream)
    assert stream.stats.finish_reason == "length"
    fed = cache.last_position + 1 + stream.stats.prompt_tokens
    assert stream.stats.new_tokens <= window - fed + 1
    with pytest.raises(ContextOverflowError, match="window holds 256"):
        generate(model, tokenizer, cache, "why " * 300)


def test_a_looping_answer_stops_with_finish_reason_repetition(
    tiny: tuple[Any, Any], cache: Any
) -> None:
    """A random model loops long before the window ends; the loop rule stops it, and only it."""
    from homer.repetition import loop_start

    model, tokenizer = tiny
    window = model.config.max_position_embeddings
    looping = generate(model, tokenizer, cache, "Who?", max_new_tokens=window, stop_loops=False)
    list(looping)
    start = next(
        (n for n in range(1, len(looping.token_ids) + 1) if loop_start(looping.token_ids[:n])),
        None,
    )
    assert start is not None, "the tiny model did not loop; pick another question"
    stopped = generate(model, tokenizer, cache, "Who?", max_new_tokens=window)
    list(stopped)
    assert stopped.stats.finish_reason == "repetition"
    assert stopped.token_ids == looping.token_ids[:start]  # the same answer, up to the loop


def test_cancel_stops_the_stream_from_another_thread(tiny: tuple[Any, Any], cache: Any) -> None:
    model, tokenizer = tiny
    stream = generate(model, tokenizer, cache, "Who?", max_new_tokens=50)
    got = []
    for piece in stream:
        got.append(piece)
        threading.Thread(target=stream.cancel).start()
        time.sleep(0.05)
    assert stream.stats.finish_reason == "cancelled"
    assert stream.stats.new_tokens < 50


def test_sampling_validates_stop_strings() -> None:
    with pytest.raises(ValueError, match="stop strings"):
        Sampling(stop=("",))


# ----------------------------------------------------------------------------- the warm pool


def test_keep_alive_and_size_spellings() -> None:
    assert parse_keep_alive("5m") == 300
    assert parse_keep_alive("1h30m") == 5400
    assert parse_keep_alive("0") == 0
    assert parse_keep_alive("-1") is None
    assert parse_keep_alive(-1) is None
    with pytest.raises(ValueError, match="keep-alive"):
        parse_keep_alive("soon")
    assert parse_bytes("2GB") == 2 * 10**9
    assert parse_bytes("512MiB") == 512 * 2**20
    with pytest.raises(ValueError, match="size"):
        parse_bytes("lots")


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def saved(tiny_model_dir: Path, tmp_path: Path, engine_home: Path) -> list[str]:
    """Three small caches of the tiny model in this test's store."""
    loaded = load_model(ModelChoice(name=str(tiny_model_dir), dtype="float32"))
    names = []
    for i in range(3):
        path = tmp_path / f"doc{i}.txt"
        path.write_text(calibration_text()[i * 300 : i * 300 + 300], encoding="utf-8")
        done = ingest(path, loaded, name=f"doc{i}", config=CONFIG)
        names.append(done.name)
    return names


def counting_loader() -> tuple[list[str], Any]:
    loads: list[str] = []

    def loader(choice: ModelChoice) -> Any:
        loads.append(str(choice.name))
        return load_model(choice)

    return loads, loader


def test_pool_keeps_models_and_caches_warm_and_reaps_them(saved: list[str]) -> None:
    clock = Clock()
    loads, loader = counting_loader()
    pool = WarmPool(
        PoolSettings(keep_alive_s=60, max_caches=2, dtype="float32"), loader=loader, clock=clock
    )
    answers = []
    for name in [*saved, saved[0]]:
        with pool.lease(name) as lease:
            answers.append("".join(ask(lease.model, lease.cache.cache, "Who?", Sampling(4))))
    assert len(loads) == 1
    assert pool.loaded()["caches"] == [saved[2], saved[0]]  # bounded LRU, newest last
    with pool.lease(saved[0]) as lease:
        assert lease.model_load_s == 0 and lease.cache_load_s == 0
    clock.now = 59
    assert pool.reap() == []
    clock.now = 121
    assert sorted(pool.reap()) == sorted(
        [f"cache {saved[2]}", f"cache {saved[0]}", "model " + lease.model.id]
    )
    assert pool.loaded() == {"models": [], "caches": [], "cache_bytes": 0}


def test_keep_alive_zero_unloads_after_each_request(saved: list[str]) -> None:
    loads, loader = counting_loader()
    pool = WarmPool(PoolSettings(keep_alive_s=0, dtype="float32"), loader=loader)
    for _ in range(2):
        with pool.lease(saved[0]):
            assert pool.loaded()["caches"] == [saved[0]]
        assert pool.loaded()["models"] == []
    assert len(loads) == 2


def test_byte_bound_and_replaced_caches(saved: list[str], tiny_model_dir: Path) -> None:
    pool = WarmPool(PoolSettings(max_cache_bytes=1, dtype="float32"))
    for name in saved:
        with pool.lease(name):
            pass
    assert pool.loaded()["caches"] == [saved[2]]  # the one in use always stays
    # Replaced under the same name (ingest --force): the pool notices and loads the new one.
    loaded = load_model(ModelChoice(name=str(tiny_model_dir), dtype="float32"))
    other = Path(pool.store.root).parent / "other.txt"
    other.write_text("A lighthouse keeper counted the ships. " * 8, encoding="utf-8")
    ingest(other, loaded, name=saved[2], config=CONFIG, force=True)
    with pool.lease(saved[2]) as lease:
        assert lease.cache_load_s > 0
        assert lease.cache.record.source == "other.txt"


def test_requests_on_one_model_never_overlap(saved: list[str]) -> None:
    pool = WarmPool(PoolSettings(dtype="float32"))
    inside = []
    overlaps = []
    lock = threading.Lock()

    def request(name: str) -> None:
        with pool.lease(name) as lease:
            with lock:
                inside.append(name)
                overlaps.append(len(inside))
            "".join(ask(lease.model, lease.cache.cache, "Who?", Sampling(3)))
            with lock:
                inside.remove(name)

    threads = [threading.Thread(target=request, args=(n,)) for n in saved * 2]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert max(overlaps) == 1 and len(overlaps) == 6


def test_an_ingest_in_progress_does_not_hold_up_answers(
    saved: list[str], tmp_path: Path, tiny_model_dir: Path
) -> None:
    ingesting = threading.Event()
    release = threading.Event()

    def loader(choice: ModelChoice) -> Any:
        if ingesting.is_set():  # the ingest's own copy: held until the answers are done
            release.wait(60)
        return load_model(choice)

    pool = WarmPool(PoolSettings(dtype="float32"), loader=loader)
    with pool.lease(saved[0]):  # the answering copy, loaded before the ingest starts
        pass
    doc = tmp_path / "new.txt"
    doc.write_text(calibration_text()[2000:2300], encoding="utf-8")
    ingesting.set()
    done: list[Any] = []
    worker = threading.Thread(
        target=lambda: done.append(pool.ingest(doc, str(tiny_model_dir), name="new", config=CONFIG))
    )
    worker.start()
    for name in saved:
        with pool.lease(name) as lease:
            stream = ask(lease.model, lease.cache.cache, "Who?", Sampling(3))
            list(stream)
            assert stream.stats.new_tokens == 3
    assert worker.is_alive() and not done  # answered while the ingest was still under way
    release.set()
    worker.join(60)
    assert done and done[0].name == "new"
