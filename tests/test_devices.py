"""homer on devices: CUDA (the `gpu`-marked tests, skipped without one; benchmarks/gpu_check.sh
runs them) and the numerics a GPU's half precision tests (run everywhere)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from homer import HomerConfig, compress, generate
from homer.adapter import ModelAdapter, output_cache
from homer.calibration import calibration_text
from homer.config import Ablations
from homer.prompts import PromptTemplate, encode
from homer.significance import last_query_logits
from tests.tiny import make_tiny_model_dir

TEXT = calibration_text()
CUDA = torch.cuda.is_available()


@pytest.fixture(scope="module")
def tiny_dirs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("device-models")
    return {arch: make_tiny_model_dir(root / arch, arch=arch) for arch in ("llama", "gemma3")}


def on(path: Path, device: str, dtype: torch.dtype, attn: str = "sdpa") -> tuple[Any, Any]:
    model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype, attn_implementation=attn)
    return model.to(device).eval(), AutoTokenizer.from_pretrained(path)


def prompt_ids(tokenizer: Any, text: str) -> list[int]:
    template = PromptTemplate.for_tokenizer(tokenizer)
    return (
        encode(tokenizer, template.prefix())
        + encode(tokenizer, text)
        + encode(tokenizer, template.suffix())
    )


# -- everywhere ------------------------------------------------------------------------------


def test_half_precision_significance_cannot_overflow() -> None:
    """Keys and queries in float16 whose dot products pass float16's largest value (65,504):
    the logits are computed in float32, finite and exact."""
    query = torch.full((4, 16), 300.0, dtype=torch.float16)
    keys = torch.full((2, 5, 16), 300.0, dtype=torch.float16)
    assert not torch.isfinite(query @ keys[0].T).all()  # what a float16 product would give
    logits = last_query_logits(query, keys, 0.25)
    assert logits.dtype == torch.float32 and torch.isfinite(logits).all()
    torch.testing.assert_close(logits, torch.full((4, 5), 300.0 * 300.0 * 16 * 0.25))


# -- on CUDA ---------------------------------------------------------------------------------


@pytest.mark.parametrize("arch", ["llama", "gemma3"])
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.gpu
@pytest.mark.skipif(not CUDA, reason="needs a CUDA device")
def test_one_chunk_on_cuda_is_the_plain_prefill(
    tiny_dirs: dict[str, Path], arch: str, dtype: torch.dtype
) -> None:
    model, tokenizer = on(tiny_dirs[arch], "cuda", dtype)
    text = TEXT[:120]
    cache = compress(model, tokenizer, text, HomerConfig(max_chunk_len=256))
    assert cache.device.type == "cuda" and cache.dtype == dtype
    with torch.no_grad():
        out = model(torch.tensor([prompt_ids(tokenizer, text)], device="cuda"), use_cache=True)
    torch.testing.assert_close(cache.last_logits, out.logits[0, -1].float().cpu(), **_loose(dtype))
    for layer, k in enumerate(cache.keys):
        plain = output_cache(out).layers[layer].keys
        torch.testing.assert_close(k[:, :, -plain.shape[2] :], plain, **_loose(dtype))


def _loose(dtype: torch.dtype) -> dict[str, float]:
    return {"rtol": 2e-2, "atol": 2e-2} if dtype != torch.float32 else {"rtol": 1e-4, "atol": 1e-4}


@pytest.mark.gpu
@pytest.mark.skipif(not CUDA, reason="needs a CUDA device")
def test_a_tree_on_cuda_keeps_its_tensors_on_the_device(tiny_dirs: dict[str, Path]) -> None:
    model, tokenizer = on(tiny_dirs["gemma3"], "cuda", torch.float16)
    config = HomerConfig(max_chunk_len=128, target_len=100)
    cache = compress(model, tokenizer, TEXT[:3000], config)
    assert cache.info.height >= 2
    assert {t.device.type for t in (*cache.keys, *cache.values)} == {"cuda"}
    assert {t.dtype for t in (*cache.keys, *cache.values)} == {torch.float16}
    assert all(torch.isfinite(t).all() for t in (*cache.keys, *cache.values))
    assert torch.isfinite(cache.last_logits).all()
    assert len("".join(generate(model, tokenizer, cache, "Who is Tom?", max_new_tokens=4))) >= 0


@pytest.mark.gpu
@pytest.mark.skipif(not CUDA, reason="needs a CUDA device")
def test_the_layer_loop_never_waits_for_the_host(tiny_dirs: dict[str, Path]) -> None:
    """Running a stage's layers queues GPU work only: no `.item()`, no copy to the host, no
    synchronisation (CUDA's sync debug mode turns any of them into an error)."""
    model, tokenizer = on(tiny_dirs["gemma3"], "cuda", torch.float16)
    adapter = ModelAdapter(model)
    ids = torch.tensor(prompt_ids(tokenizer, TEXT[:300]))
    hidden = adapter.embed(ids)
    rope = adapter.rotary(hidden, torch.arange(len(ids)))
    masks = adapter.attention_mask(hidden)
    layers = range(adapter.num_layers)
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        run = adapter.run_layers(hidden, rope, layers, frozenset({5}), masks)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert run.hidden.device.type == "cuda" and len(run.keys) == adapter.num_layers


@pytest.mark.gpu
@pytest.mark.skipif(not CUDA, reason="needs a CUDA device")
def test_greedy_answer_on_cuda_is_model_generate(tiny_dirs: dict[str, Path]) -> None:
    model, tokenizer = on(tiny_dirs["llama"], "cuda", torch.float32)
    text = TEXT[:100]
    cache = compress(model, tokenizer, text, HomerConfig(max_chunk_len=256))
    stream = generate(model, tokenizer, cache, "Who is he?", max_new_tokens=6)
    answer = [*stream] and stream.token_ids
    template = PromptTemplate.for_tokenizer(tokenizer)
    full = prompt_ids(tokenizer, text) + encode(tokenizer, template.continuation("Who is he?"))
    with torch.no_grad():
        plain = model.generate(
            torch.tensor([full], device="cuda"),
            max_new_tokens=6,
            do_sample=False,
            eos_token_id=None,
            pad_token_id=0,
        )[0, len(full) :].tolist()
    assert answer == plain[: len(answer)]


@pytest.mark.gpu
@pytest.mark.skipif(not CUDA, reason="needs a CUDA device")
def test_ingest_then_ask_on_cuda_through_the_store(
    tiny_dirs: dict[str, Path], tmp_path: Path
) -> None:
    from homer.service import ModelChoice, Sampling, ask, ingest, load_model, open_cache

    loaded = load_model(ModelChoice(name=str(tiny_dirs["llama"]), device="cuda", dtype="float16"))
    document = tmp_path / "story.txt"
    document.write_text(TEXT[:3000], encoding="utf-8")
    done = ingest(document, loaded, config=HomerConfig(max_chunk_len=128))
    opened = open_cache(loaded, done.name)
    assert opened.cache.device.type == "cuda" and opened.cache.dtype == torch.float16
    again = compress(
        loaded.model,
        loaded.tokenizer,
        TEXT[:3000],
        HomerConfig(max_chunk_len=128),
        ablations=Ablations(),
    )
    assert torch.equal(opened.cache.token_ids, again.token_ids)  # deterministic on the GPU
    answer = "".join(ask(loaded, opened.cache, "Who is Tom?", Sampling(max_new_tokens=4)))
    assert isinstance(answer, str)


# -- placed by accelerate ----------------------------------------------------------------------


def dispatched(path: Path) -> tuple[Any, Any]:
    """The model with accelerate's hooks on every module, as a `device_map` load leaves it; here
    every module maps to the CPU (`force_hooks`: without it accelerate skips the hooks)."""
    from accelerate import dispatch_model

    model, tokenizer = on(path, "cpu", torch.float32)
    layers = model.config.num_hidden_layers
    device_map = {
        "model.embed_tokens": "cpu",
        "model.rotary_emb": "cpu",
        **{f"model.layers.{i}": "cpu" for i in range(layers)},
        "model.norm": "cpu",
        "lm_head": "cpu",
    }
    return dispatch_model(model, device_map=device_map, force_hooks=True), tokenizer


def test_a_model_placed_by_accelerate_compresses_and_answers_as_the_plain_one(
    tiny_dirs: dict[str, Path], tmp_path: Path
) -> None:
    from homer.service import LoadedModel, Sampling, ask, ingest, open_cache

    plain, tokenizer = on(tiny_dirs["gemma3"], "cpu", torch.float32)
    placed, _ = dispatched(tiny_dirs["gemma3"])
    adapter = ModelAdapter(placed)
    assert all(getattr(layer, "_hf_hook", None) is not None for layer in adapter.layers)
    assert adapter.layer_devices() == [torch.device("cpu")] * adapter.num_layers
    config = HomerConfig(max_chunk_len=128, target_len=100)
    no_bias = Ablations(calibrated_bias=False)
    expected = compress(plain, tokenizer, TEXT[:3000], config, ablations=no_bias)
    cache = compress(placed, tokenizer, TEXT[:3000], config, ablations=no_bias)
    assert cache.info.height >= 2
    assert torch.equal(cache.token_ids, expected.token_ids)
    for a, b in zip((*cache.keys, *cache.values), (*expected.keys, *expected.values), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(cache.last_logits, expected.last_logits, rtol=1e-5, atol=1e-5)

    def answer(model: Any, source: Any) -> list[int]:
        stream = generate(model, tokenizer, source, "Who is Tom?", max_new_tokens=5)
        list(stream)
        return stream.token_ids

    assert answer(placed, cache) == answer(plain, expected)

    # Saved by the store and loaded back for the placed model: same answer.
    loaded = LoadedModel(model=placed, tokenizer=tokenizer, id="tiny-gemma3-placed")
    document = tmp_path / "story.txt"
    document.write_text(TEXT[:3000], encoding="utf-8")
    done = ingest(document, loaded, config=config)
    opened = open_cache(loaded, done.name)
    stream = ask(loaded, opened.cache, "Who is Tom?", Sampling(max_new_tokens=5))
    list(stream)
    assert stream.token_ids == answer(placed, opened.cache)


def test_placement_puts_each_layers_keys_where_the_layer_runs() -> None:
    from homer.cache import CacheInfo, HomerCache

    info = CacheInfo("", "", None, 3, 0, 0, 1, 0)
    cache = HomerCache(
        keys=[torch.zeros(1, 1, 3, 4), torch.zeros(1, 1, 3, 4)],
        values=[torch.zeros(1, 1, 3, 4), torch.zeros(1, 1, 3, 4)],
        token_ids=torch.arange(3),
        positions=torch.arange(3),
        last_logits=torch.zeros(5),
        info=info,
    )
    cpu = torch.device("cpu")
    assert cache.placed([cpu, cpu]) is cache  # nothing to move: no copy
    halved = cache.placed([cpu, cpu], torch.float16)
    assert halved is not cache and {k.dtype for k in halved.keys} == {torch.float16}
    with pytest.raises(ValueError, match="3 devices for a cache of 2 layers"):
        cache.placed([cpu, cpu, cpu])


def test_only_host_to_cuda_copies_go_through_pinned_memory() -> None:
    from homer.transfer import move_all, pins_for

    cpu, cuda = torch.device("cpu"), torch.device("cuda", 0)
    assert pins_for(cpu, cuda) is CUDA  # pinning needs CUDA present
    assert not pins_for(cuda, cpu) and not pins_for(cpu, cpu) and not pins_for(cuda, cuda)
    tensors = [torch.randn(2, 3), torch.randn(4)]
    moved = move_all(tensors, [cpu, cpu], torch.float16)
    assert [t.dtype for t in moved] == [torch.float16, torch.float16]
    assert torch.equal(moved[0], tensors[0].half()) and torch.equal(moved[1], tensors[1].half())
    with pytest.raises(ValueError, match="2 tensors for 1 devices"):
        move_all(tensors, [cpu])


@pytest.mark.gpu
@pytest.mark.skipif(not CUDA, reason="needs a CUDA device")
def test_a_cache_loaded_onto_cuda_through_pinned_memory_is_the_same_cache() -> None:
    from homer.cache import CacheInfo, HomerCache

    layers = 4
    cache = HomerCache(
        keys=[torch.randn(1, 2, 300, 64) for _ in range(layers)],
        values=[torch.randn(1, 2, 300, 64) for _ in range(layers)],
        token_ids=torch.arange(300),
        positions=torch.arange(300),
        last_logits=torch.zeros(7),
        info=CacheInfo("", "", None, 300, 0, 0, 1, 0),
    )
    for dtype in (None, torch.float16):
        moved = cache.to("cuda", dtype)
        for a, b in zip([*cache.keys, *cache.values], [*moved.keys, *moved.values], strict=True):
            assert b.device.type == "cuda" and not b.is_pinned()
            assert torch.equal(b.cpu(), a if dtype is None else a.to(dtype))
        assert moved.token_ids.device.type == "cuda"


@pytest.mark.gpu
@pytest.mark.skipif(not CUDA, reason="needs a CUDA device")
def test_device_auto_loads_through_accelerate(tiny_dirs: dict[str, Path]) -> None:
    from homer import models

    model, tokenizer = models.load_model(str(tiny_dirs["llama"]), device="auto", dtype="float16")
    assert getattr(model, "hf_device_map", None)  # placed by accelerate, not moved by homer
    cache = compress(model, tokenizer, TEXT[:3000], HomerConfig(max_chunk_len=128))
    assert {k.device.type for k in cache.keys} == {"cuda"}
    assert isinstance("".join(generate(model, tokenizer, cache, "Who?", max_new_tokens=3)), str)


@pytest.mark.gpu
@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs two CUDA devices")
def test_layers_on_two_gpus_give_the_one_gpu_cache(tiny_dirs: dict[str, Path]) -> None:
    from accelerate import dispatch_model

    one, tokenizer = on(tiny_dirs["gemma3"], "cuda:0", torch.float32)
    two, _ = on(tiny_dirs["gemma3"], "cpu", torch.float32)
    layers = two.config.num_hidden_layers
    device_map = {
        "model.embed_tokens": 0,
        "model.rotary_emb": 0,
        **{f"model.layers.{i}": 0 if i < layers // 2 else 1 for i in range(layers)},
        "model.norm": 1,
        "lm_head": 0,  # tied to the embeddings
    }
    two = dispatch_model(two, device_map=device_map)
    config = HomerConfig(max_chunk_len=128, target_len=100)
    no_bias = Ablations(calibrated_bias=False)
    expected = compress(one, tokenizer, TEXT[:3000], config, ablations=no_bias)
    cache = compress(two, tokenizer, TEXT[:3000], config, ablations=no_bias)
    assert [k.device for k in cache.keys] == ModelAdapter(two).layer_devices()
    assert {k.device.index for k in cache.keys} == {0, 1}
    assert torch.equal(cache.token_ids, expected.token_ids)
    for a, b in zip(cache.keys, expected.keys, strict=True):
        torch.testing.assert_close(a.cpu(), b.cpu(), rtol=1e-4, atol=1e-4)
    answer = generate(two, tokenizer, cache, "Who is Tom?", max_new_tokens=5)
    reference = generate(one, tokenizer, expected, "Who is Tom?", max_new_tokens=5)
    assert "".join(answer) == "".join(reference)
