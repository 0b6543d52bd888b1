"""Faults while saving or computing: a full or read-only disk, running out of (GPU) memory.

Each fault is injected where the system would raise it, while the real `homer ingest` runs (the
compression itself is replaced by a ready cache: only the store's reaction matters here). The
user sees one line that says what to do, the exit code is 1, and no partial file is left; an
existing cache being replaced survives intact.
"""

from __future__ import annotations

import errno
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch

import homer.store
from homer.store import Store
from tests.reliability.harness import invoke, one_line_error, store_entries
from tests.test_store import make_cache
from tests.test_store import save as save_synthetic


def _fail(code: int) -> Callable[..., Any]:
    def raiser(*args: object, **kwargs: object) -> Any:
        raise OSError(code, os.strerror(code))

    return raiser


def _fail_second_call(real: Callable[..., Any], code: int) -> Callable[..., Any]:
    calls = {"n": 0}

    def maybe(*args: Any, **kwargs: Any) -> Any:
        calls["n"] += 1
        if calls["n"] == 2:
            raise OSError(code, os.strerror(code))
        return real(*args, **kwargs)

    return maybe


# (id, target to patch, replacement factory, fragment of the message)
FAULTS: list[tuple[str, str, Callable[[], Callable[..., Any]], str]] = [
    ("tensor-write", "safetensors.torch.save_file", lambda: _fail(errno.ENOSPC), "no space left"),
    ("tensor-fsync", "os.fsync", lambda: _fail(errno.ENOSPC), "no space left"),
    ("meta-write", "homer.store.fs.write_durable", lambda: _fail(errno.ENOSPC), "no space left"),
    ("quota", "homer.store.fs.write_durable", lambda: _fail(errno.EDQUOT), "no space left"),
    ("temp-folder", "tempfile.mkdtemp", lambda: _fail(errno.ENOSPC), "no space left"),
    ("store-folder", "pathlib.Path.mkdir", lambda: _fail(errno.ENOSPC), "no space left"),
    ("read-only", "tempfile.mkdtemp", lambda: _fail(errno.EROFS), "HOMER_HOME"),
    ("permission", "tempfile.mkdtemp", lambda: _fail(errno.EACCES), "HOMER_HOME"),
    ("rename-io-error", "os.replace", lambda: _fail(errno.EIO), "could not save the cache"),
    ("lock-file", "os.open", lambda: _fail_second_call(os.open, errno.ENOSPC), "no space left"),
]


@pytest.fixture
def ready_cache(monkeypatch: pytest.MonkeyPatch, tiny_model_dir: Path) -> None:
    """`compress` returns a ready-made cache at once (the store is what is under test)."""
    monkeypatch.setattr("homer.compression.compress", lambda *a, **k: make_cache())


@pytest.mark.parametrize(
    ("target", "factory", "needle"), [f[1:] for f in FAULTS], ids=[f[0] for f in FAULTS]
)
def test_write_fault_is_one_line_and_leaves_no_partial_file(
    ready_cache: None,
    monkeypatch: pytest.MonkeyPatch,
    document: Path,
    tiny_model_dir: Path,
    target: str,
    factory: Callable[[], Callable[..., Any]],
    needle: str,
) -> None:
    args = ["ingest", str(document), "--model", str(tiny_model_dir), "--name", "new"]
    with monkeypatch.context() as patch:
        if target == "os.open":  # the first os.open is the ingest lock, the second a name lock
            patch.setattr(os, "open", factory())
        else:
            patch.setattr(target, factory())
        result = invoke(*args)
    one_line_error(result, needle)
    assert Store().names() == []
    assert [e for e in store_entries() if not e.startswith(".locks")] == []
    # Once the disk is back, the same command works.
    again = invoke(*args)
    assert again.exit_code == 0 and again.stdout == "new\n", again.output


@pytest.mark.parametrize("target", ["safetensors.torch.save_file", "os.replace"])
def test_failed_replacement_keeps_the_old_cache(
    ready_cache: None,
    monkeypatch: pytest.MonkeyPatch,
    document: Path,
    tiny_model_dir: Path,
    target: str,
) -> None:
    store = Store()
    save_synthetic(store, "book", cache=make_cache(seed=7))
    before = (store.root / "book" / homer.store.TENSOR_FILE).read_bytes()
    real_replace = os.replace
    if target == "os.replace":  # fail the second rename: the old cache is already moved aside
        monkeypatch.setattr(os, "replace", _fail_second_call(real_replace, errno.EIO))
    else:
        monkeypatch.setattr(target, _fail(errno.ENOSPC))
    args = ["ingest", str(document), "--model", str(tiny_model_dir), "--name", "book", "--force"]
    one_line_error(invoke(*args), "could not save the cache")
    monkeypatch.setattr(os, "replace", real_replace)
    assert Store().names() == ["book"]
    assert (store.root / "book" / homer.store.TENSOR_FILE).read_bytes() == before
    Store().load("book")
    assert [e for e in store_entries() if e.startswith(".")] == []


def test_killed_between_the_two_renames_the_old_cache_comes_back() -> None:
    """What a SIGKILL between 'old out' and 'new in' leaves is repaired by the next listing."""
    store = Store()
    save_synthetic(store, "book", cache=make_cache(seed=3))
    dead = 999_999_999  # no such process
    swap = Path(tempfile.mkdtemp(prefix=f".swap-{dead}-", dir=store.root))
    os.replace(store.root / "book", swap / "old")
    half = Path(tempfile.mkdtemp(prefix=f".tmp-{dead}-", dir=store.root))
    (half / homer.store.TENSOR_FILE).write_bytes(b"half a new cache")
    assert Store().names() == ["book"]
    loaded, _ = Store().load("book")
    assert torch.equal(loaded.keys[0], make_cache(seed=3).keys[0])
    save_synthetic(store, "other", key="o" * 32)  # the next save sweeps the dead writer's folders
    assert [e for e in store_entries() if e.startswith(".")] == []


# ----------------------------------------------------------------------------- out of memory

OOM_ERRORS = {
    "torch-oom": lambda: torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB"),
    "runtime-oom": lambda: RuntimeError("CUDA error: out of memory"),
    "host-oom": lambda: MemoryError(),
}


@pytest.mark.parametrize("kind", list(OOM_ERRORS))
def test_out_of_memory_while_compressing(
    monkeypatch: pytest.MonkeyPatch, document: Path, tiny_model_dir: Path, kind: str
) -> None:
    def explode(*args: object, **kwargs: object) -> None:
        raise OOM_ERRORS[kind]()

    monkeypatch.setattr("homer.compression.compress", explode)
    result = invoke("ingest", str(document), "--model", str(tiny_model_dir), "--max-chunk", "200")
    one_line_error(result, "out of memory", "lower --max-chunk (now 200)")
    assert store_entries() == [] or Store().names() == []
    default = invoke("ingest", str(document), "--model", str(tiny_model_dir))
    one_line_error(default, "lower --max-chunk (default: half the window)")


def test_out_of_memory_while_calibrating(
    monkeypatch: pytest.MonkeyPatch, tiny_model_dir: Path
) -> None:
    def explode(*args: object, **kwargs: object) -> None:
        raise torch.OutOfMemoryError("CUDA out of memory.")

    monkeypatch.setattr("homer.calibration.calibrate", explode)
    result = invoke("calibrate", "--model", str(tiny_model_dir), "--max-chunk", "128")
    one_line_error(result, "lower --max-chunk (now 128)")


@pytest.mark.parametrize("command", ["ask", "summarize"])
def test_out_of_memory_while_answering(
    monkeypatch: pytest.MonkeyPatch, book: Path, command: str
) -> None:
    def explode(*args: object, **kwargs: object) -> None:
        raise torch.OutOfMemoryError("CUDA out of memory.")

    monkeypatch.setattr("homer.generation.generate", explode)
    # Grounded answers (the default) decode through GenerationStream without `generate`.
    monkeypatch.setattr("homer.generation.GenerationStream.__iter__", explode)
    args = [command, "Who?"] if command == "ask" else [command]
    err = one_line_error(invoke(*args), "out of memory", "--dtype bfloat16", "smaller model")
    assert "--max-chunk" not in err  # not an option of these commands
    assert Store().names() == ["book"]
