"""The invariants of ALGORITHM.md §10 on tiny random models, for every supported family.

Each model is a real `save_pretrained` folder (tests/tiny.py) loaded with `from_pretrained`, so
the loading code runs too. Llama uses grouped-query attention; Qwen3 adds q/k norms; Gemma 2/3,
Qwen2 and Mistral have sliding-window layers (Gemma 3 two RoPE bases, Gemma 2 soft-capping);
Phi-3 partial rotary; Granite multipliers outside its layers.

Every family (`ARCHS`) is held to the equivalences (one chunk is a plain prefill, greedy answers
are `model.generate`'s) and compresses a tree, in eager and SDPA attention; the families in
`DEEP_ARCHS` run the whole invariant suite (the rest repeat the same code paths, and time).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

import homer.tree
from homer import HomerConfig, compress, generate
from homer.adapter import ModelAdapter, output_cache
from homer.calibration import calibrate, calibration_text
from homer.config import Ablations
from homer.positions import turn_keys
from homer.prompts import PromptTemplate, encode
from homer.pruning import PaperPruning, SpanPruning
from homer.schedule import LayerSchedule
from tests.tiny import ARCHS as ALL_ARCHS
from tests.tiny import EAGER_ONLY, WINDOW, make_tiny_model_dir

#: Every family homer supports (README's table links here).
ARCHS = list(ALL_ARCHS)
#: Families that run every invariant below: the four first families, and the hybrid Gemma 3.
DEEP_ARCHS = ["llama", "qwen2", "qwen3", "mistral", "gemma3"]
ATTNS = ["sdpa", "eager"]
TEXT = calibration_text()
NO_BIAS = Ablations(calibrated_bias=False)


def pairs(archs: list[str]) -> list[tuple[str, str]]:
    """(arch, attention) pairs transformers can run."""
    return [(a, b) for a in archs for b in ATTNS if not (a in EAGER_ONLY and b == "sdpa")]


@pytest.fixture(scope="module")
def model_dirs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("tiny-models")
    dirs = {arch: make_tiny_model_dir(root / arch, arch=arch, num_layers=6) for arch in ARCHS}
    dirs["deep"] = make_tiny_model_dir(root / "deep", arch="llama", num_layers=10)
    return dirs


def load(path: Path, attn: str) -> tuple[Any, Any]:
    model = AutoModelForCausalLM.from_pretrained(
        path, attn_implementation=attn, dtype=torch.float32
    )
    return model.eval(), AutoTokenizer.from_pretrained(path)


@pytest.fixture(params=pairs(ARCHS), ids=lambda p: f"{p[0]}-{p[1]}")
def family(
    request: pytest.FixtureRequest, model_dirs: dict[str, Path]
) -> Iterator[tuple[Any, Any]]:
    arch, attn = request.param
    yield load(model_dirs[arch], attn)


@pytest.fixture(params=pairs(DEEP_ARCHS), ids=lambda p: f"{p[0]}-{p[1]}")
def tiny(request: pytest.FixtureRequest, model_dirs: dict[str, Path]) -> Iterator[tuple[Any, Any]]:
    arch, attn = request.param
    yield load(model_dirs[arch], attn)


def prompt_ids(tokenizer: Any, text: str) -> list[int]:
    template = PromptTemplate.for_tokenizer(tokenizer)
    return (
        encode(tokenizer, template.prefix())
        + encode(tokenizer, text)
        + encode(tokenizer, template.suffix())
    )


# 1. One chunk is a plain prefill -------------------------------------------------------------


def test_one_chunk_gives_the_plain_prefill_cache_and_logits(family: tuple[Any, Any]) -> None:
    model, tokenizer = family
    text = TEXT[:120]
    cache = compress(model, tokenizer, text, HomerConfig(max_chunk_len=256))
    ids = prompt_ids(tokenizer, text)
    assert cache.token_ids.tolist() == ids
    assert cache.positions.tolist() == list(range(len(ids)))
    with torch.no_grad():
        out = model(torch.tensor([ids]), use_cache=True)
    torch.testing.assert_close(cache.last_logits, out.logits[0, -1], rtol=1e-4, atol=1e-4)
    plain = output_cache(out)
    for layer, (k, v) in enumerate(zip(cache.keys, cache.values, strict=True)):
        # A sliding layer's cache keeps only its window's last tokens; homer keeps them all.
        n = plain.layers[layer].keys.shape[2]
        assert n == len(ids) or n == WINDOW - 1 < len(ids)
        torch.testing.assert_close(k[:, :, -n:], plain.layers[layer].keys, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(v[:, :, -n:], plain.layers[layer].values, rtol=1e-5, atol=1e-5)


def test_greedy_answer_from_one_chunk_matches_plain_generation(family: tuple[Any, Any]) -> None:
    model, tokenizer = family
    text = TEXT[:100]
    cache = compress(model, tokenizer, text, HomerConfig(max_chunk_len=256))
    stream = generate(model, tokenizer, cache, "Who is he?", max_new_tokens=6)
    answer_ids = [*stream] and stream.token_ids
    template = PromptTemplate.for_tokenizer(tokenizer)
    full = prompt_ids(tokenizer, text) + encode(tokenizer, template.continuation("Who is he?"))
    with torch.no_grad():
        plain = model.generate(
            torch.tensor([full]),
            max_new_tokens=6,
            do_sample=False,
            eos_token_id=None,
            pad_token_id=0,
        )[0, len(full) :].tolist()
    assert answer_ids == plain[: len(answer_ids)]
    assert stream.stats.prompt_tokens > 0 and stream.stats.total_s > 0


def test_every_family_compresses_a_tree_and_answers_from_it(family: tuple[Any, Any]) -> None:
    model, tokenizer = family
    config = HomerConfig(max_chunk_len=128, target_len=100)
    cache = compress(model, tokenizer, TEXT[:2500], config, ablations=NO_BIAS)
    assert cache.info.height >= 2
    assert {k.shape[2] for k in cache.keys} == {100} == {v.shape[2] for v in cache.values}
    assert cache.positions.tolist() == list(range(100))
    assert torch.isfinite(cache.last_logits).all()
    before = [k.clone() for k in cache.keys]
    stream = generate(model, tokenizer, cache, "Who is Tom?", max_new_tokens=4)
    assert "".join(stream) == stream.text and stream.stats.new_tokens > 0
    assert all(torch.equal(a, b) for a, b in zip(before, cache.keys, strict=True))


def test_captured_query_gives_the_models_own_attention_row(model_dirs: dict[str, Path]) -> None:
    # With eager attention the model returns its attention probabilities; the softmax of the
    # logits homer computes from the captured last query must reproduce the last row.
    model, tokenizer = load(model_dirs["qwen3"], "eager")
    ids = torch.tensor(prompt_ids(tokenizer, TEXT[:80]))
    adapter = ModelAdapter(model)
    hidden = adapter.embed(ids)
    layers = range(adapter.num_layers)
    run = adapter.run_layers(
        hidden, adapter.rotary(hidden, torch.arange(len(ids))), layers, frozenset(layers)
    )
    with torch.no_grad():
        attentions = model(ids[None], output_attentions=True).attentions
    from homer.significance import last_query_logits

    for layer in layers:
        logits = last_query_logits(run.queries[layer], run.keys[layer][0], run.scaling[layer])
        torch.testing.assert_close(
            logits.softmax(-1), attentions[layer][0, :, -1, :], rtol=1e-4, atol=1e-5
        )


# 2-3. Fixed length, protected affixes, exact drops per node --------------------------------------


@pytest.mark.parametrize("target", [None, 100, 70])
def test_every_layer_has_the_final_length_and_affixes_survive(
    tiny: tuple[Any, Any], target: int | None
) -> None:
    model, tokenizer = tiny
    config = HomerConfig(max_chunk_len=128, target_len=target)
    cache = compress(model, tokenizer, TEXT[:3000], config, ablations=NO_BIAS)
    template = PromptTemplate.for_tokenizer(tokenizer)
    prefix, suffix = encode(tokenizer, template.prefix()), encode(tokenizer, template.suffix())
    context = encode(tokenizer, TEXT[:3000])
    expected = min(target or 128, len(prefix) + len(context) + len(suffix))
    assert cache.info.height >= 2
    assert cache.length == expected
    assert {k.shape[2] for k in cache.keys} == {expected} == {v.shape[2] for v in cache.values}
    assert cache.token_ids[: len(prefix)].tolist() == prefix
    assert cache.token_ids[-len(suffix) :].tolist() == suffix
    assert cache.last_position == cache.positions[-1]
    assert cache.num_layers == model.config.num_hidden_layers


def record_merges(monkeypatch: pytest.MonkeyPatch) -> list[tuple[int, int]]:
    """A list that every later merge appends its (left, right) child lengths to."""
    merges: list[tuple[int, int]] = []
    real_merge = homer.tree.merge_nodes

    def merge_spy(left: Any, right: Any, prefix_len: int, suffix_len: int) -> Any:
        merges.append((left.length, right.length))
        return real_merge(left, right, prefix_len, suffix_len)

    monkeypatch.setattr(homer.tree, "merge_nodes", merge_spy)
    return merges


@pytest.mark.parametrize("budget", ["halves", "shared"])
def test_each_node_drops_exactly_down_to_its_target(
    tiny: tuple[Any, Any], monkeypatch: pytest.MonkeyPatch, budget: str
) -> None:
    """With halves every child keeps exactly its half; with shared budgets two siblings may
    split their room unevenly, but every merged node still holds exactly what halves give."""
    model, tokenizer = tiny
    seen: list[tuple[int, int]] = []
    merges = record_merges(monkeypatch)
    real_apply_keep = homer.tree.apply_keep

    def spy(node: Any, keep: torch.Tensor) -> Any:
        out = real_apply_keep(node, keep)
        seen.append((node.length, out.length))
        assert len(set(out.token_ids.shape + out.positions.shape + out.hidden.shape[1:2])) == 1
        assert {k.shape[2] for k in out.keys} == {out.length}
        return out

    monkeypatch.setattr(homer.tree, "apply_keep", spy)
    rule = SpanPruning(sibling_budget=budget)  # type: ignore[arg-type]
    config = HomerConfig(max_chunk_len=128, target_len=90, pruning=rule)
    cache = compress(model, tokenizer, TEXT[:3000], config)
    p, s = cache.info.prefix_tokens, cache.info.suffix_tokens
    child_keep = p + (128 - p - s) // 2 + s
    assert len(merges) == cache.info.num_chunks - 1
    assert all(a + b == 2 * child_keep for a, b in merges)
    assert all(before > after for before, after in seen)
    assert seen[-1][1] == 90
    if budget == "halves":
        assert len(seen) == 2 * cache.info.num_chunks - 1
        assert all(after in (child_keep, 90) for _, after in seen)
        assert set(merges) == {(child_keep, child_keep)}
    else:
        assert len(set(merges)) > 1  # the text is not uniform: some sibling took more room


# 4. The schedule along every path, as actually run ---------------------------------------------


def test_layers_run_cover_the_model_once_along_every_path(
    model_dirs: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    model, tokenizer = load(model_dirs["llama"], "sdpa")
    runs: list[range] = []
    real = ModelAdapter.run_layers

    def spy(
        self: ModelAdapter,
        hidden: Any,
        rope: Any,
        layers: range,
        query_layers: Any = frozenset(),
        mask: Any = None,
    ) -> Any:
        runs.append(layers)
        return real(self, hidden, rope, layers, query_layers, mask)

    monkeypatch.setattr(ModelAdapter, "run_layers", spy)
    cache = compress(
        model, tokenizer, TEXT[:3000], HomerConfig(max_chunk_len=128), ablations=NO_BIAS
    )
    height = cache.info.height
    schedule = LayerSchedule(6, cache.info.settings["warmup_layers"], height)
    # Post-order: each leaf run is followed by merges up the levels it completes.
    assert runs[0] == schedule.layers(0)
    assert runs[-1] == schedule.layers(height)
    assert sorted({r.start for r in runs}) == [
        schedule.layers(lv).start for lv in range(height + 1)
    ]
    assert [layer for lv in range(height + 1) for layer in schedule.layers(lv)] == list(range(6))


# 5. Memory: depth-first ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("chars", "budget"), [(3000, "halves"), (12000, "halves"), (12000, "shared")]
)
def test_chunks_alive_never_exceed_height_plus_one(
    model_dirs: dict[str, Path], chars: int, budget: str
) -> None:
    """Shared budgets hold each level's left sibling unpruned, not more siblings."""
    model, tokenizer = load(model_dirs["deep"], "sdpa")
    events: list[homer.tree.ProgressEvent] = []
    cache = compress(
        model,
        tokenizer,
        (TEXT * 2)[:chars],
        HomerConfig(max_chunk_len=128, pruning=SpanPruning(sibling_budget=budget)),  # type: ignore[arg-type]
        progress=events.append,
        ablations=NO_BIAS,
    )
    tree_events = [e for e in events if e.stage in ("leaf", "merge")]
    assert len(tree_events) == 2 * cache.info.num_chunks - 1
    assert cache.info.num_chunks >= 16
    assert max(e.alive for e in tree_events) <= cache.info.height + 1
    # ... and the bound is reached: siblings are kept, not recomputed.
    assert max(e.alive for e in tree_events) == cache.info.height + 1


# 6. Answering never mutates the cache ----------------------------------------------------------


def test_answering_leaves_the_cache_bit_identical(tiny: tuple[Any, Any]) -> None:
    model, tokenizer = tiny
    cache = compress(model, tokenizer, TEXT[:2000], HomerConfig(max_chunk_len=128))
    before = [t.clone() for t in (*cache.keys, *cache.values, cache.token_ids, cache.positions)]
    first = "".join(generate(model, tokenizer, cache, "Who?", max_new_tokens=5))
    second = "".join(generate(model, tokenizer, cache, "Who?", max_new_tokens=5))
    after = [*cache.keys, *cache.values, cache.token_ids, cache.positions]
    assert all(torch.equal(a, b) for a, b in zip(before, after, strict=True))
    assert first == second


def test_sampling_is_reproducible_with_a_seed(model_dirs: dict[str, Path]) -> None:
    model, tokenizer = load(model_dirs["llama"], "sdpa")
    cache = compress(
        model, tokenizer, TEXT[:500], HomerConfig(max_chunk_len=128), ablations=NO_BIAS
    )

    def answer(seed: int) -> list[int]:
        stream = generate(
            model, tokenizer, cache, "Why?", max_new_tokens=8, temperature=1.0, seed=seed
        )
        list(stream)
        return stream.token_ids

    assert answer(1) == answer(1)


# Calibration -----------------------------------------------------------------------------------


def test_calibration_is_built_once_and_cached(
    model_dirs: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HOMER_HOME", str(tmp_path))
    model, tokenizer = load(model_dirs["llama"], "sdpa")
    config = HomerConfig(max_chunk_len=128)
    first = calibrate(model, tokenizer, config, samples=3)
    files = list((tmp_path / "calibration").glob("*.safetensors"))
    assert len(files) == 1
    assert first.bias.shape == (6, 128)
    assert torch.isfinite(first.bias).all()
    second = calibrate(model, tokenizer, config, samples=3)
    assert torch.equal(first.bias, second.bias)
    assert (
        calibrate(
            model, tokenizer, HomerConfig(max_chunk_len=128, pruning=PaperPruning()), samples=3
        ).mode
        == "plain"
    )


def test_bias_changes_which_tokens_survive(model_dirs: dict[str, Path]) -> None:
    model, tokenizer = load(model_dirs["llama"], "sdpa")
    text = TEXT[:3000]
    config = HomerConfig(max_chunk_len=128, pruning=PaperPruning())
    raw = compress(model, tokenizer, text, config, ablations=NO_BIAS)
    calibrated = compress(model, tokenizer, text, config)
    assert raw.length == calibrated.length
    assert raw.token_ids.tolist() != calibrated.token_ids.tolist()


def test_query_aware_suffix_holds_the_question(model_dirs: dict[str, Path]) -> None:
    model, tokenizer = load(model_dirs["qwen2"], "sdpa")
    cache = compress(
        model,
        tokenizer,
        TEXT[:2000],
        HomerConfig(max_chunk_len=160),
        focus="Who is Tom?",
        ablations=NO_BIAS,
    )
    assert "Who is Tom?" in cache.info.suffix_text
    assert tokenizer.decode(cache.token_ids[-cache.info.suffix_tokens :]).endswith("Who is Tom?")


# Final positions ------------------------------------------------------------------------------


def test_compact_cache_is_the_paper_cache_turned_to_consecutive_positions(
    tiny: tuple[Any, Any],
) -> None:
    model, tokenizer = tiny
    text = TEXT[:3000]
    paper = compress(
        model,
        tokenizer,
        text,
        HomerConfig(max_chunk_len=128),
        ablations=Ablations(compact_positions=False),
    )
    compact = compress(model, tokenizer, text, HomerConfig(max_chunk_len=128))
    assert compact.info.height >= 2
    assert sorted(set(paper.positions.tolist())) != paper.positions.tolist()  # reused ranges
    assert compact.positions.tolist() == list(range(compact.length))
    assert compact.last_position == compact.length - 1
    assert torch.equal(compact.token_ids, paper.token_ids)
    assert all(torch.equal(a, b) for a, b in zip(compact.values, paper.values, strict=True))
    turnings = ModelAdapter(model).turnings(compact.positions - paper.positions)
    for a, b, (cos, sin) in zip(compact.keys, paper.keys, turnings, strict=True):
        torch.testing.assert_close(a, turn_keys(b, cos, sin))
        assert not torch.allclose(a, b)
    assert compact.info.settings["ablations"]["compact_positions"] is True
    assert "".join(generate(model, tokenizer, compact, "Who is Tom?", max_new_tokens=4))


@pytest.mark.parametrize("budget", ["halves", "shared"])
def test_memo_reuses_unchanged_subtrees_bit_for_bit(
    model_dirs: dict[str, Path], budget: str
) -> None:
    from homer.tree import SubtreeMemo

    model, tokenizer = load(model_dirs["llama"], "sdpa")
    rule = SpanPruning(sibling_budget=budget)  # type: ignore[arg-type]
    config = HomerConfig(max_chunk_len=128, pruning=rule)
    text = TEXT[:3000] + " The code is 4719 ."
    edited = TEXT[:3000] + " The code is 4718 ."  # only the last chunk changes
    assert len(encode(tokenizer, text)) == len(encode(tokenizer, edited))
    memo = SubtreeMemo()
    compress(model, tokenizer, text, config, memo=memo, ablations=NO_BIAS)
    misses = memo.misses
    with_memo = compress(model, tokenizer, edited, config, memo=memo, ablations=NO_BIAS)
    fresh = compress(model, tokenizer, edited, config, ablations=NO_BIAS)
    assert memo.hits >= 1 and memo.misses - misses < misses
    assert torch.equal(with_memo.token_ids, fresh.token_ids)
    assert all(torch.equal(a, b) for a, b in zip(with_memo.keys, fresh.keys, strict=True))
    torch.testing.assert_close(with_memo.last_logits, fresh.last_logits, rtol=0, atol=0)


@pytest.mark.parametrize("budget", ["halves", "shared"])
def test_memo_reuses_a_subtree_whose_words_moved(model_dirs: dict[str, Path], budget: str) -> None:
    """An edit in the first chunk that keeps its tokens but not its words (" 12" is one word
    of two tokens, " 1 2" two words) renumbers every later word; reused subtrees must look
    their words up under the new numbers (a stale number read another word's rarity, or ran
    off the end of the table)."""
    from homer.tree import SubtreeMemo

    model, tokenizer = load(model_dirs["llama"], "sdpa")
    rule = SpanPruning(sibling_budget=budget)  # type: ignore[arg-type]
    config = HomerConfig(max_chunk_len=128, pruning=rule)
    text = "Then 12 and " + TEXT[:3000] + " The code is 4719 ."
    edited = "Then 1 2 and " + TEXT[:3000] + " The code is 4719 ."
    assert len(encode(tokenizer, text)) == len(encode(tokenizer, edited))
    memo = SubtreeMemo()
    compress(model, tokenizer, text, config, memo=memo, ablations=NO_BIAS)
    with_memo = compress(model, tokenizer, edited, config, memo=memo, ablations=NO_BIAS)
    fresh = compress(model, tokenizer, edited, config, ablations=NO_BIAS)
    assert memo.hits >= 1
    assert torch.equal(with_memo.token_ids, fresh.token_ids)
    assert all(torch.equal(a, b) for a, b in zip(with_memo.keys, fresh.keys, strict=True))


@pytest.mark.parametrize("attn", ATTNS)
def test_position_mask_forbids_only_keys_from_the_future(
    model_dirs: dict[str, Path], attn: str
) -> None:
    model, _ = load(model_dirs["llama"], attn)
    adapter = ModelAdapter(model)
    hidden = torch.zeros(1, 6, 64)
    assert list(adapter.attention_mask(hidden)) == ["full_attention"]
    assert (adapter.attention_mask(hidden)["full_attention"] is None) == (attn == "sdpa")
    # Two merged siblings: contexts at positions 1-2 and 1-2 again, suffix at 3.
    mask = adapter.attention_mask(hidden, torch.tensor([0, 1, 2, 1, 2, 3]))["full_attention"]
    assert mask is not None
    allowed = mask[0, 0] if mask.dtype == torch.bool else mask[0, 0] == 0
    # Row 3 (right sibling, position 1) sees the prefix and the left token at position 1, not
    # the left token at position 2; the suffix (row 5) sees everything.
    assert allowed[3].tolist() == [True, True, False, True, False, False]
    assert allowed[5].all()
    assert not allowed.triu(1).any()


def test_position_mask_keeps_every_invariant(model_dirs: dict[str, Path]) -> None:
    model, tokenizer = load(model_dirs["qwen3"], "sdpa")
    config = HomerConfig(max_chunk_len=128, target_len=100)
    masked = Ablations(position_mask=True)
    cache = compress(model, tokenizer, TEXT[:3000], config, ablations=masked)
    assert {k.shape[2] for k in cache.keys} == {100}
    one_chunk = compress(
        model, tokenizer, TEXT[:100], HomerConfig(max_chunk_len=256), ablations=masked
    )
    plain = compress(model, tokenizer, TEXT[:100], HomerConfig(max_chunk_len=256))
    assert torch.equal(one_chunk.last_logits, plain.last_logits)


def test_long_documents_tokenize_in_pieces_like_one_call(model_dirs: dict[str, Path]) -> None:
    from homer.prompts import encode_document

    _, tokenizer = load(model_dirs["llama"], "sdpa")
    text = TEXT[:20000]
    whole = encode(tokenizer, text)
    assert encode_document(tokenizer, text).tolist() == whole
    assert encode_document(tokenizer, text, piece_chars=3000).tolist() == whole


def test_memo_sees_rarity_changes_outside_the_edited_chunk(model_dirs: dict[str, Path]) -> None:
    """The rarity prior counts words over the whole document, so an edit at the end can change
    how an untouched first chunk is pruned; the memo must not hand back the stale subtree."""
    from homer.tree import SubtreeMemo

    model, tokenizer = load(model_dirs["llama"], "sdpa")
    # The prior alone: runs (on by default) are off, so the one word that differs decides.
    config = HomerConfig(max_chunk_len=128, pruning=SpanPruning(rare_word_boost=50.0, run_radius=0))
    head = TEXT[:3000]
    assert head.split().count("parish") == 1 and head.find("parish") < 300
    # Same token count; the first repeats "parish" (no longer rare), the second does not.
    text = head + " parish parish parish."
    edited = head + " Brr Brr Brr."
    assert len(encode(tokenizer, text)) == len(encode(tokenizer, edited))
    memo = SubtreeMemo()
    first = compress(model, tokenizer, text, config, memo=memo, ablations=NO_BIAS)
    with_memo = compress(model, tokenizer, edited, config, memo=memo, ablations=NO_BIAS)
    fresh = compress(model, tokenizer, edited, config, ablations=NO_BIAS)
    assert first.token_ids[:150].tolist() != fresh.token_ids[:150].tolist()  # the edit matters
    assert torch.equal(with_memo.token_ids, fresh.token_ids)
    assert all(torch.equal(a, b) for a, b in zip(with_memo.keys, fresh.keys, strict=True))


def test_keep_facts_keeps_every_fact_that_selection_without_runs_keeps(
    model_dirs: dict[str, Path],
) -> None:
    """One chunk, one pruning stage: the own scores are the same with or without runs, so every
    rare number or name kept without runs must also be kept with runs and `keep_facts`."""
    from homer.prompts import encode_document
    from homer.words import fact_words, token_kinds, token_traits, word_ids, word_rarity

    model, tokenizer = load(model_dirs["llama"], "sdpa")
    facts_text = " The code is 48213. Ask Orlan Venner. The vault opened in 1871 for Tamsin Vesk."
    text = TEXT[:40] + facts_text + TEXT[40:80]
    leafwise = Ablations(calibrated_bias=False, compact_positions=False)

    def compressed(**kwargs: Any) -> Any:
        config = HomerConfig(max_chunk_len=256, target_len=80, pruning=SpanPruning(**kwargs))
        cache = compress(model, tokenizer, text, config, ablations=leafwise)
        assert cache.info.num_chunks == 1
        return cache

    ids = encode_document(tokenizer, text)
    words = word_ids(ids, token_kinds(tokenizer))
    facts = fact_words(ids, words, token_traits(tokenizer))
    is_fact = (facts & (word_rarity(ids, words, facts) > 0))[words]
    no_runs = compressed(run_radius=0)
    prefix = no_runs.info.prefix_tokens
    fact_positions = {prefix + i for i in is_fact.nonzero().squeeze(1).tolist()}
    assert len(fact_positions) >= 8  # the inserted codes and names at least

    def kept_facts(cache: Any) -> set[int]:
        return set(cache.positions.tolist()) & fact_positions

    without_runs = kept_facts(no_runs)
    runs_alone = kept_facts(compressed(run_radius=4, keep_facts=False))
    with_keep = kept_facts(compressed(run_radius=4, keep_facts=True))
    assert without_runs - runs_alone  # here runs alone do push facts out
    assert without_runs <= with_keep


def test_shared_budgets_give_a_chunk_of_facts_the_room_of_a_chunk_of_filler(
    model_dirs: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two chunks: the first repeats one sentence (nothing rare), the second states a different
    fact in every sentence. With halves both keep the same room; with shared budgets the facts'
    chunk, lifted by the rarity prior, takes room from the filler's."""
    model, tokenizer = load(model_dirs["llama"], "sdpa")
    filler = "the cat sat on the mat and the dog lay by the door. " * 60
    facts = " ".join(
        f"Code {10007 * (i + 3) % 90000 + 10000} opens the vault of Orlan{chr(65 + i % 26)}."
        for i in range(60)
    )
    template = PromptTemplate.for_tokenizer(tokenizer)
    affixes = len(encode(tokenizer, template.prefix())) + len(encode(tokenizer, template.suffix()))
    half = 256 - affixes - 4  # a slice of each, so that each leaf holds one of them
    text = encode_and_cut(tokenizer, filler, half) + encode_and_cut(tokenizer, facts, half)
    merges = record_merges(monkeypatch)

    def root_children(budget: str) -> tuple[int, int]:
        merges.clear()
        rule = SpanPruning(sibling_budget=budget)  # type: ignore[arg-type]
        cache = compress(
            model, tokenizer, text, HomerConfig(max_chunk_len=256, pruning=rule), ablations=NO_BIAS
        )
        assert cache.info.num_chunks == 2
        return merges[-1]

    left, right = root_children("halves")
    assert left == right
    filler_room, facts_room = root_children("shared")
    assert filler_room + facts_room == left + right
    assert facts_room > 1.5 * filler_room, (filler_room, facts_room)


def encode_and_cut(tokenizer: Any, text: str, tokens: int) -> str:
    """The longest start of `text` that encodes to at most `tokens` tokens."""
    ids = encode(tokenizer, text)[:tokens]
    return str(tokenizer.decode(ids))


@pytest.mark.parametrize("attn", ATTNS)
def test_sliding_layers_attend_to_their_window_and_full_layers_to_everything(
    model_dirs: dict[str, Path], attn: str
) -> None:
    model, _ = load(model_dirs["gemma3"], attn)
    adapter = ModelAdapter(model)
    assert adapter.layer_types == ("sliding_attention", "sliding_attention", "full_attention") * 2
    assert adapter.sliding_window == WINDOW
    length = WINDOW + 10
    masks = adapter.attention_mask(torch.zeros(1, length, 64))
    rows = torch.arange(length)[:, None]
    cols = torch.arange(length)[None, :]
    in_window = (cols <= rows) & (cols > rows - WINDOW)
    sliding = masks["sliding_attention"][0, 0]
    allowed = sliding if sliding.dtype == torch.bool else sliding == 0
    assert torch.equal(allowed, in_window)
    full = masks["full_attention"]
    if attn == "sdpa":
        assert full is None  # plain causal: SDPA applies it on its own
    else:
        assert torch.equal(full[0, 0] == 0, cols <= rows)
    # Shorter than the window, a sliding layer sees everything: SDPA needs no mask at all.
    assert (
        adapter.attention_mask(torch.zeros(1, WINDOW - 1, 64))["sliding_attention"] is None
    ) == (attn == "sdpa")


def test_a_hybrid_stage_scores_its_tokens_at_its_last_full_attention_layer(
    model_dirs: dict[str, Path],
) -> None:
    model, _ = load(model_dirs["gemma3"], "sdpa")
    adapter = ModelAdapter(model)  # layers: s s F s s F
    assert adapter.scoring_layer(range(0, 4)) == 2
    assert adapter.scoring_layer(range(3, 6)) == 5
    assert adapter.scoring_layer(range(3, 5)) == 4  # no full layer: the last one
    model, _ = load(model_dirs["llama"], "sdpa")
    assert ModelAdapter(model).scoring_layer(range(2, 5)) == 4


def test_gemma3_turns_each_layer_with_its_own_rope(model_dirs: dict[str, Path]) -> None:
    model, _ = load(model_dirs["gemma3"], "sdpa")
    adapter = ModelAdapter(model)
    shifts = torch.tensor([3, -2, 5])
    turnings = adapter.turnings(shifts)
    local, full = turnings[0], turnings[2]
    assert torch.equal(turnings[1][0], local[0]) and torch.equal(turnings[5][0], full[0])
    assert not torch.allclose(local[0], full[0])  # rope bases 1e4 and 1e6 (linear x8)


def test_unknown_architectures_and_layer_types_are_refused_by_name(
    model_dirs: dict[str, Path],
) -> None:
    from transformers import AutoConfig, GPT2Config, GPT2LMHeadModel

    from homer.errors import UnsupportedModelError

    gpt2 = GPT2LMHeadModel(GPT2Config(n_layer=1, n_embd=32, n_head=2, vocab_size=50))
    with pytest.raises(UnsupportedModelError, match="'gpt2' architecture"):
        ModelAdapter(gpt2)
    model, _ = load(model_dirs["gemma3"], "sdpa")
    config = AutoConfig.from_pretrained(model_dirs["gemma3"])
    model.config.layer_types = ["chunked_attention"] * config.num_hidden_layers
    with pytest.raises(UnsupportedModelError, match="chunked_attention"):
        ModelAdapter(model)
