"""Security: no model code runs unless asked; nothing in a cache can run code.

`trust_remote_code` reaches transformers only when `--trust-remote-code` is given, and a model
folder that ships its own Python is refused without it (its code never imported). Pickles planted
where a cache's files belong are refused without being unpickled. (Names that would leave the store
are covered in test_bad_options.py.)
"""

from __future__ import annotations

import hashlib
import json
import pickle
import shutil
from pathlib import Path
from typing import Any

import pytest

from homer.store import META_FILE, TENSOR_FILE, Store
from tests.reliability.harness import invoke, one_line_error
from tests.test_store import save as save_synthetic


class _Seen(Exception):
    pass


@pytest.mark.parametrize("flag", [False, True], ids=["without-flag", "with-flag"])
@pytest.mark.parametrize("command", ["ingest", "ask", "summarize", "calibrate"])
def test_trust_remote_code_only_when_asked(
    monkeypatch: pytest.MonkeyPatch, document: Path, command: str, flag: bool
) -> None:
    seen: list[Any] = []

    def record(*args: object, **kwargs: Any) -> None:
        seen.append(kwargs.get("trust_remote_code"))
        raise OSError("stop here")  # the test is about the call, not the load

    monkeypatch.setattr("transformers.AutoTokenizer.from_pretrained", record)
    monkeypatch.setattr("transformers.AutoModelForCausalLM.from_pretrained", record)
    save_synthetic(Store(), "doc", model_id="some-org/some-model")
    args = {
        "ingest": ["ingest", str(document), "--model", "some-org/some-model"],
        "ask": ["ask", "Who?"],
        "summarize": ["summarize"],
        "calibrate": ["calibrate", "--model", "some-org/some-model"],
    }[command]
    result = invoke(*args, *(["--trust-remote-code"] if flag else []))
    one_line_error(result, "could not load model")
    assert seen == [flag]


@pytest.mark.parametrize("model_type", ["llama", "homer-test-custom"])
def test_model_code_is_never_imported_without_the_flag(
    document: Path, tiny_model_dir: Path, tmp_path: Path, engine_home: Path, model_type: str
) -> None:
    """A folder whose config points at its own Python: a known architecture loads with
    transformers' own class; an unknown one is refused. Either way the folder's code never runs."""
    folder = tmp_path / "custom"
    shutil.copytree(tiny_model_dir, folder)
    marker = tmp_path / "model-code-ran"
    code = f"from pathlib import Path\nPath({str(marker)!r}).touch()\n"
    for module in ("configuration_custom.py", "modeling_custom.py"):
        (folder / module).write_text(code + "from transformers import LlamaConfig as X\n")
    config = json.loads((folder / "config.json").read_text())
    config["model_type"] = model_type
    config["auto_map"] = {
        "AutoConfig": "configuration_custom.X",
        "AutoModelForCausalLM": "modeling_custom.X",
    }
    (folder / "config.json").write_text(json.dumps(config))
    result = invoke("ingest", str(document), "--model", str(folder), "--max-chunk", "200")
    if model_type == "llama":
        assert result.exit_code == 0, result.output
    else:
        one_line_error(result, "could not load model", "--trust-remote-code")
    assert not marker.exists()


class _Planted:
    """A pickle payload that creates a file if it is ever unpickled."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Any, ...]:
        return (Path.touch, (self.marker,))


def test_pickle_as_tensor_file_is_refused_unread(book: Path, tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    payload = pickle.dumps(_Planted(marker))
    (book / TENSOR_FILE).write_bytes(payload)
    meta = json.loads((book / META_FILE).read_text())
    meta["tensor_sha256"] = hashlib.sha256(payload).hexdigest()  # forged to pass the checks
    meta["tensor_bytes"] = len(payload)
    (book / META_FILE).write_text(json.dumps(meta))
    one_line_error(invoke("ask", "Who?", "--cache", "book"), "not a valid safetensors", "homer rm")
    assert not marker.exists()


def test_pickle_as_metadata_is_refused_unread(book: Path, tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    (book / META_FILE).write_bytes(pickle.dumps(_Planted(marker)))
    one_line_error(invoke("ask", "Who?", "--cache", "book"), "damaged metadata", "homer rm book")
    one_line_error(invoke("show", "book"), "damaged metadata")
    assert not marker.exists()


@pytest.mark.parametrize("filename", ["cache.pkl", "tensors.pt", "model.bin"])
def test_folder_of_pickles_is_not_a_cache(engine_home: Path, tmp_path: Path, filename: str) -> None:
    marker = tmp_path / "pwned"
    folder = engine_home / "caches" / "evil"
    folder.mkdir(parents=True)
    (folder / filename).write_bytes(pickle.dumps(_Planted(marker)))
    listed = invoke("list", "--json")
    assert listed.exit_code == 0 and json.loads(listed.stdout) == []
    one_line_error(invoke("ask", "Who?", "--cache", "evil"), "metadata missing", "homer rm evil")
    assert invoke("rm", "evil").exit_code == 0
    assert not marker.exists() and not folder.exists()
