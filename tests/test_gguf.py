"""`--model file.gguf`: converted once to safetensors by content, reused after, atomic, one-line
errors. The GGUF is a tiny random Llama written in the test (tests/tiny.py `write_tiny_gguf`)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import torch
from typer.testing import CliRunner

from homer import models
from homer.errors import ModelLoadError
from tests.tiny import make_tiny_tokenizer, write_tiny_gguf

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def tiny_gguf(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Any]:
    """A tiny Llama GGUF (float32 tensors) and the model it was written from."""
    return write_tiny_gguf(tmp_path_factory.mktemp("gguf") / "tiny-llama.gguf")


def converted_dirs() -> list[Path]:
    return sorted(p for p in models.paths.models_dir().glob("gguf-*") if p.is_dir())


def test_gguf_is_converted_once_and_reused(
    tiny_gguf: tuple[Path, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    path, source = tiny_gguf
    events: list[models.ConversionProgress] = []
    model, tokenizer = models.load_model(str(path), dtype="float32", progress=events.append)
    stages = [e.stage for e in events]
    assert stages[0] == "hash" and events[0].total == path.stat().st_size
    assert stages[-3:] == ["read", "tokenizer", "write"]
    assert models.model_id(model) == str(path.resolve())
    (folder,) = converted_dirs()
    assert (folder / "model.safetensors").is_file()
    marker = json.loads((folder / ".homer-converted").read_text())
    assert marker["source"] == str(path.resolve()) and marker["dtype"] == "torch.float32"

    # The same weights and tokenizer as the model the file was written from.
    ids = tokenizer("The captain kept the keys.", return_tensors="pt").input_ids
    assert ids[0].tolist() == make_tiny_tokenizer()("The captain kept the keys.").input_ids
    with torch.no_grad():
        torch.testing.assert_close(model(ids).logits, source(ids).logits, rtol=0, atol=0)
    assert tokenizer.chat_template and tokenizer.eos_token == "<|im_end|>"

    # Second load: neither hashed (size and mtime unchanged) nor converted.
    def no_conversion(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("converted twice")

    monkeypatch.setattr(models, "_convert_gguf", no_conversion)
    again: list[models.ConversionProgress] = []
    assert not models.conversion_pending(str(path))
    models.load_model(str(path), dtype="float32", progress=again.append)
    assert again == []

    # Touched (same content, new mtime): hashed again, still not converted.
    os.utime(path, ns=(time.time_ns(), time.time_ns() + 10**9))
    models.load_model(str(path), dtype="float32", progress=again.append)
    assert [e.stage for e in again] == ["hash"]
    assert converted_dirs() == [folder]


def test_gguf_through_homer_model_and_the_service(
    tiny_gguf: tuple[Path, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    from homer.service import ModelChoice, load_model

    path, _ = tiny_gguf
    monkeypatch.setenv("HOMER_MODEL", str(path))
    assert models.conversion_pending(None)
    loaded = load_model(ModelChoice(dtype="float32"))
    assert loaded.id == str(path.resolve())
    assert load_model(ModelChoice(name=str(path))).id == str(path.resolve())


def test_a_file_without_the_gguf_magic_is_refused_in_one_line(tmp_path: Path) -> None:
    for name in ("fake.gguf", "model.safetensors", "blob"):
        file = tmp_path / name
        file.write_bytes(b"PK\x03\x04 not a gguf at all")
        with pytest.raises(ModelLoadError) as info:
            models.load_model(str(file))
        message = str(info.value)
        assert "is not a GGUF file" in message and str(file) in message
        assert "\n" not in message
    assert converted_dirs() == []


def test_a_missing_gguf_is_refused_in_one_line(tmp_path: Path) -> None:
    with pytest.raises(ModelLoadError, match=r"GGUF file '.*missing\.gguf' does not exist") as info:
        models.load_model(str(tmp_path / "missing.gguf"))
    assert "\n" not in str(info.value)


def test_an_architecture_transformers_cannot_read_is_refused_in_one_line(tmp_path: Path) -> None:
    import gguf
    import numpy as np

    path = tmp_path / "strange.gguf"
    writer = gguf.GGUFWriter(str(path), "rwkv7")
    writer.add_block_count(1)
    writer.add_tensor("token_embd.weight", np.zeros((4, 8), dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    with pytest.raises(
        ModelLoadError, match="'rwkv7' model, which transformers cannot read"
    ) as info:
        models.load_model(str(path))
    assert "\n" not in str(info.value)
    assert not [p for p in models.paths.models_dir().glob("gguf-*") if p.is_dir()]


def test_a_truncated_gguf_is_refused_in_one_line(
    tiny_gguf: tuple[Path, Any], tmp_path: Path
) -> None:
    path = tmp_path / "cut.gguf"
    path.write_bytes(tiny_gguf[0].read_bytes()[:2000])
    with pytest.raises(ModelLoadError, match="damaged or truncated") as info:
        models.load_model(str(path))
    assert "\n" not in str(info.value)


_KILLED_CHILD = """
import sys, time
from pathlib import Path
from homer import models

def progress(event):
    if event.stage == "write":  # everything written, not yet renamed into place
        Path(sys.argv[2]).write_text("ready")
        time.sleep(600)

models.ensure_gguf_converted(models.check_gguf(sys.argv[1]), progress)
"""


def test_a_conversion_killed_midway_leaves_no_half_folder(
    tiny_gguf: tuple[Path, Any], tmp_path: Path
) -> None:
    path, _ = tiny_gguf
    ready = tmp_path / "ready"
    child = subprocess.Popen(
        [sys.executable, "-c", _KILLED_CHILD, str(path), str(ready)], cwd=REPO, env=os.environ
    )
    try:
        deadline = time.monotonic() + 120
        while not ready.exists():
            assert child.poll() is None, "the converting process ended early"
            assert time.monotonic() < deadline, "the conversion never reached its last step"
            time.sleep(0.1)
        os.kill(child.pid, signal.SIGKILL)
    finally:
        child.wait()
    root = models.paths.models_dir()
    work = [p for p in root.iterdir() if p.is_dir()]
    assert converted_dirs() == []  # nothing that looks converted
    assert len(work) == 1 and work[0].name.startswith(".gguf-")  # the dead process's work folder
    assert models.conversion_pending(str(path))

    model, _ = models.load_model(str(path), dtype="float32")
    assert [p for p in root.iterdir() if p.is_dir()] == converted_dirs()  # work folder swept
    assert (converted_dirs()[0] / ".homer-converted").is_file()
    assert model.config.num_hidden_layers == 2


def test_cli_ingest_a_gguf_then_ask_finds_the_model(
    tiny_gguf: tuple[Path, Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from homer_cli.main import app

    path, _ = tiny_gguf
    document = tmp_path / "note.txt"
    document.write_text("The keeper of the lighthouse was called Orlan. " * 8, encoding="utf-8")
    runner = CliRunner()
    ingest = ["ingest", str(document), "--model", str(path), "--max-chunk", "200"]
    result = runner.invoke(app, [*ingest, "--dtype", "float32"])
    assert result.exit_code == 0, (result.output, result.exception)
    assert result.stderr == ""  # not a terminal: no progress bars, no conversion chatter
    name = result.stdout.strip()
    shown = json.loads(runner.invoke(app, ["show", name]).stdout)
    assert shown["model"]["id"] == str(path.resolve())
    # From another working directory, without --model: the cache names the file.
    monkeypatch.chdir(tmp_path)
    answer = runner.invoke(app, ["ask", "Who kept the lighthouse?", "--max-tokens", "3", "--json"])
    assert answer.exit_code == 0, (answer.output, answer.exception)
    assert json.loads(answer.stdout)["model"] == str(path.resolve())


def test_an_ollama_model_is_found_through_its_manifest(
    tiny_gguf: tuple[Path, Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`ollama:NAME:TAG` reads ollama's store as `ollama pull` leaves it: a manifest naming the
    model layer's digest, and the GGUF under blobs/ without an extension."""
    import hashlib
    import shutil

    path, _ = tiny_gguf
    store = tmp_path / "ollama"
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    (store / "blobs").mkdir(parents=True)
    shutil.copy(path, store / "blobs" / f"sha256-{digest}")
    manifest = store / "manifests" / "registry.ollama.ai" / "library" / "tiny" / "1b"
    manifest.parent.mkdir(parents=True)
    layers = [
        {"mediaType": "application/vnd.ollama.image.template", "digest": "sha256:00"},
        {"mediaType": "application/vnd.ollama.image.model", "digest": f"sha256:{digest}"},
    ]
    manifest.write_text(json.dumps({"schemaVersion": 2, "layers": layers}))
    monkeypatch.setenv("OLLAMA_MODELS", str(store))

    assert models.conversion_pending("ollama:tiny:1b")
    model, _ = models.load_model("ollama:tiny:1b", dtype="float32")
    assert models.model_id(model) == "ollama:tiny:1b"
    assert not models.conversion_pending("ollama:tiny:1b")
    with pytest.raises(ModelLoadError, match="no ollama model 'ollama:tiny:latest'") as info:
        models.load_model("ollama:tiny")
    assert "ollama pull tiny:latest" in str(info.value) and "\n" not in str(info.value)


def test_the_conversion_bar_names_the_step_under_way() -> None:
    from homer.models import ConversionProgress
    from homer_cli.main import _ConversionBar

    path = Path("model.gguf")
    seen = []
    with _ConversionBar("model.gguf") as bar:
        for stage, done, total in [
            ("hash", 5, 10),
            ("hash", 10, 10),
            ("read", 1, 3),
            ("tokenizer", 2, 3),
            ("write", 3, 3),
        ]:
            bar.update(ConversionProgress(stage, done, total, path))
            task = bar.progress.tasks[0]
            seen.append((task.description.split(": ")[1], task.completed, task.total))
    assert seen == [
        ("hashing the file", 5, 10),
        ("dequantizing the weights", 0, 3),
        ("reading the tokenizer", 1, 3),
        ("writing safetensors", 2, 3),
        ("done", 3, 3),
    ]
