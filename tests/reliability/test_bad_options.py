"""Bad options: unknown or unsupported models, impossible sizes, unknown or unsafe cache names.

Each is one line on stderr naming the bad value (and, where there is one, the fix), exit 1, and
nothing written to the store.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from homer.store import Store
from tests.conftest import MAX_CHUNK
from tests.reliability.harness import assert_nothing_written, invoke, one_line_error
from tests.test_store import save as save_synthetic

# (id, arguments after the document, fragments of the one error line). No model is loaded.
INGEST_SIZES = [
    ("max-chunk-zero", ["--max-chunk", "0"], ("--max-chunk", "got 0")),
    ("max-chunk-negative", ["--max-chunk", "-1"], ("--max-chunk", "got -1")),
    ("max-chunk-tiny", ["--max-chunk", "7"], ("--max-chunk", "at least 8")),
    ("budget-zero", ["--budget", "0"], ("--budget", "got 0")),
    ("budget-negative", ["--budget", "-5"], ("--budget", "got -5")),
    ("budget-over-chunk", ["--budget", "300", "--max-chunk", "200"], ("cannot exceed",)),
    ("name-traversal", ["--name", "../escape"], ("invalid cache name",)),
    ("name-absolute", ["--name", "/etc/passwd"], ("invalid cache name",)),
    ("name-hidden", ["--name", ".locks"], ("invalid cache name",)),
    ("name-slash", ["--name", "a/b"], ("invalid cache name",)),
    ("name-too-long", ["--name", "x" * 101], ("invalid cache name",)),
    ("focus-empty", ["--focus", "   "], ("--focus is empty",)),
]


@pytest.mark.parametrize(
    ("args", "needles"), [c[1:] for c in INGEST_SIZES], ids=[c[0] for c in INGEST_SIZES]
)
def test_bad_ingest_option(document: Path, args: list[str], needles: tuple[str, ...]) -> None:
    one_line_error(invoke("ingest", str(document), *args), *needles)
    assert_nothing_written()


ANSWER_OPTIONS = [
    ("max-tokens-zero", ["--max-tokens", "0"], ("--max-tokens",)),
    ("max-tokens-negative", ["--max-tokens", "-3"], ("--max-tokens",)),
    ("top-p-zero", ["--top-p", "0"], ("--top-p",)),
    ("top-p-over-one", ["--top-p", "1.5"], ("--top-p",)),
    ("temperature-negative", ["--temperature", "-1"], ("--temperature",)),
]


@pytest.mark.parametrize("command", ["ask", "summarize"])
@pytest.mark.parametrize(
    ("args", "needles"), [c[1:] for c in ANSWER_OPTIONS], ids=[c[0] for c in ANSWER_OPTIONS]
)
def test_bad_answer_option(command: str, args: list[str], needles: tuple[str, ...]) -> None:
    question = ["Who?"] if command == "ask" else []
    one_line_error(invoke(command, *question, *args), *needles)


@pytest.mark.parametrize("question", ["", "   ", "\n"])
def test_empty_question(question: str) -> None:
    one_line_error(invoke("ask", question), "question is empty")


# ----------------------------------------------------------------------------- cache names

CACHE_COMMANDS = [
    ("ask", ["ask", "Who?", "--cache", "{name}"]),
    ("summarize", ["summarize", "--cache", "{name}"]),
    ("show", ["show", "{name}"]),
    ("rm", ["rm", "{name}"]),
]


@pytest.mark.parametrize(
    ("argv",), [(c[1],) for c in CACHE_COMMANDS], ids=[c[0] for c in CACHE_COMMANDS]
)
def test_unknown_cache_lists_the_existing_ones(argv: list[str]) -> None:
    store = Store()
    save_synthetic(store, "alpha")
    save_synthetic(store, "beta", key="b" * 32)
    args = [a.format(name="nope") for a in argv]
    one_line_error(invoke(*args), "no cache named 'nope'", "alpha, beta")
    assert store.names() == ["alpha", "beta"]


@pytest.mark.parametrize("name", ["../alpha", "../../etc/passwd", "/tmp", ".locks", "a/../b"])
@pytest.mark.parametrize(
    ("argv",), [(c[1],) for c in CACHE_COMMANDS], ids=[c[0] for c in CACHE_COMMANDS]
)
def test_cache_names_cannot_leave_the_store(argv: list[str], name: str, tmp_path: Path) -> None:
    store = Store()
    save_synthetic(store, "alpha")
    (tmp_path / "alpha").mkdir()  # what `../alpha` would reach from the store's parent
    args = [a.format(name=name) for a in argv]
    one_line_error(invoke(*args), "invalid cache name")
    assert store.names() == ["alpha"]
    assert (tmp_path / "alpha").is_dir()


# ----------------------------------------------------------------------------- models


def test_unknown_local_model(document: Path, tmp_path: Path) -> None:
    one_line_error(
        invoke("ingest", str(document), "--model", str(tmp_path / "no-such-model")),
        "no-such-model",
        "does not exist",
    )
    assert_nothing_written()


def test_unknown_hub_model(document: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # The Hub library reads HF_HUB_OFFLINE once, at import: set its constant so no network is tried.
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_OFFLINE", True)
    one_line_error(
        invoke("ingest", str(document), "--model", "no-such-org/no-such-model-0"),
        "could not load model 'no-such-org/no-such-model-0'",
    )
    assert_nothing_written()


def test_folder_without_a_model(document: Path, tmp_path: Path) -> None:
    (tmp_path / "empty-model").mkdir()
    one_line_error(
        invoke("ingest", str(document), "--model", str(tmp_path / "empty-model")),
        "could not load model",
    )
    assert_nothing_written()


def test_unknown_model_type(document: Path, tmp_path: Path) -> None:
    folder = tmp_path / "strange"
    folder.mkdir()
    (folder / "config.json").write_text('{"model_type": "no-such-architecture"}')
    one_line_error(invoke("ingest", str(document), "--model", str(folder)), "could not load model")
    assert_nothing_written()


def _save_tiny_gpt2(folder: Path, tokenizer_dir: Path) -> Path:
    from transformers import AutoTokenizer, GPT2Config, GPT2LMHeadModel

    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    config = GPT2Config(vocab_size=len(tokenizer), n_positions=256, n_embd=32, n_layer=2, n_head=2)
    torch.manual_seed(0)
    GPT2LMHeadModel(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def test_unsupported_architecture(
    document: Path, tiny_model_dir: Path, tmp_path: Path, engine_home: Path
) -> None:
    # Sliding-window models (Qwen2's use_sliding_window, Mistral v0.1, Gemma) are supported
    # since issue 22: tests/test_engine.py holds them to the plain model.
    folder = tmp_path / "gpt2"
    _save_tiny_gpt2(folder, tiny_model_dir)
    result = invoke("ingest", str(document), "--model", str(folder), "--max-chunk", MAX_CHUNK)
    one_line_error(result, "cannot drive the 'gpt2' architecture")
    assert_nothing_written()


@pytest.mark.parametrize(
    ("args", "needles"),
    [
        (["--max-chunk", "512"], ("--max-chunk (512)", "context window (256)")),
        (["--budget", "200"], ("--budget (200) cannot exceed --max-chunk (128)",)),
    ],
    ids=["chunk-over-window", "budget-over-default-chunk"],
)
def test_sizes_that_do_not_fit_the_model(
    args: list[str],
    needles: tuple[str, ...],
    document: Path,
    tiny_model_dir: Path,
    engine_home: Path,
) -> None:
    one_line_error(invoke("ingest", str(document), "--model", str(tiny_model_dir), *args), *needles)
    assert_nothing_written()


@pytest.mark.parametrize(
    ("args", "needles"),
    [
        (["--dtype", "int3"], ("unknown dtype 'int3'",)),
        (["--device", "toaster"], ("unknown device 'toaster'",)),
    ],
    ids=["dtype", "device"],
)
def test_bad_dtype_or_device(
    args: list[str], needles: tuple[str, ...], document: Path, tiny_model_dir: Path
) -> None:
    one_line_error(invoke("ingest", str(document), "--model", str(tiny_model_dir), *args), *needles)
    assert_nothing_written()


@pytest.mark.skipif(torch.cuda.is_available(), reason="CUDA is available here")
def test_cuda_without_cuda(document: Path, tiny_model_dir: Path) -> None:
    result = invoke("ingest", str(document), "--model", str(tiny_model_dir), "--device", "cuda")
    one_line_error(result, "CUDA is not available", "--device cpu")
    assert_nothing_written()
