"""`homer.store`: round trips, content keys, names, refusal of every damaged or foreign cache."""

from __future__ import annotations

import json
import os
import pickle
import threading
import time
from pathlib import Path
from typing import Any

import pytest
import torch

from homer.cache import CacheInfo, HomerCache
from homer.errors import CacheDamagedError, CacheError, CacheMismatchError, CacheVersionError
from homer.store import (
    FORMAT_VERSION,
    META_FILE,
    TENSOR_FILE,
    CacheNotFoundError,
    CacheRecord,
    DocumentRef,
    Provenance,
    Store,
    content_key,
    derive_name,
    fs,
    validate_name,
)

LAYERS, KV_HEADS, LENGTH, HEAD_DIM, VOCAB = 3, 2, 12, 16, 50


def make_cache(dtype: torch.dtype = torch.bfloat16, seed: int = 0) -> HomerCache:
    gen = torch.Generator().manual_seed(seed)
    shape = (1, KV_HEADS, LENGTH, HEAD_DIM)
    return HomerCache(
        keys=[torch.randn(shape, generator=gen).to(dtype) for _ in range(LAYERS)],
        values=[torch.randn(shape, generator=gen).to(dtype) for _ in range(LAYERS)],
        token_ids=torch.arange(LENGTH, dtype=torch.int64),
        positions=torch.arange(LENGTH, dtype=torch.int64) * 3,
        last_logits=torch.randn(VOCAB, generator=gen),
        info=CacheInfo(
            prefix_text="Read:",
            suffix_text="(end)",
            focus=None,
            document_tokens=100,
            prefix_tokens=2,
            suffix_tokens=2,
            num_chunks=4,
            height=2,
            settings={"max_chunk_len": 32, "target_len": 12},
            model_type="llama",
        ),
    )


def save(
    store: Store,
    name: str = "doc",
    cache: HomerCache | None = None,
    *,
    overwrite: bool = False,
    source: str = "doc.txt",
    kind: str = "text",
    page_map: tuple[int, ...] = (),
    **kw: Any,
) -> CacheRecord:
    """Save a synthetic cache; `kw` overrides `Provenance` fields."""
    fields: dict[str, Any] = {
        "key": "k" * 32,
        "model_id": "tiny-model",
        "model_fingerprint": "mfp",
        "tokenizer_fingerprint": "tfp",
        "document": DocumentRef(sha256="d" * 64, source=source, kind=kind, page_map=page_map),
        "settings": {"max_chunk_len": 32},
        **kw,
    }
    return store.save(cache or make_cache(), Provenance(**fields), name=name, overwrite=overwrite)


def assert_same(a: HomerCache, b: HomerCache) -> None:
    assert a.num_layers == b.num_layers
    for x, y in zip([*a.keys, *a.values], [*b.keys, *b.values], strict=True):
        assert x.dtype == y.dtype
        assert torch.equal(x, y)
    assert torch.equal(a.token_ids, b.token_ids)
    assert torch.equal(a.positions, b.positions)
    assert torch.equal(a.last_logits, b.last_logits)
    assert a.info == b.info


def test_round_trip_is_bit_identical() -> None:
    store = Store()
    cache = make_cache()
    record = save(store, page_map=(0, 10), kind="pdf")
    loaded, loaded_record = store.load("doc", model_fingerprint="mfp", tokenizer_fingerprint="tfp")
    assert_same(cache, loaded)
    meta = loaded_record.meta
    assert meta["format_version"] == FORMAT_VERSION
    assert meta["dtype"] == "bfloat16"
    assert meta["document"]["page_map"] == [0, 10]
    assert meta["tokens"] == {"document": 100, "prefix": 2, "suffix": 2, "cache": LENGTH}
    assert meta["last_position"] == (LENGTH - 1) * 3
    assert record.size_bytes > 0
    assert (record.path / TENSOR_FILE).is_file()


def test_store_lives_under_homer_home(homer_home: Path) -> None:
    save(Store())
    assert (homer_home / "caches" / "doc" / META_FILE).is_file()


def test_list_latest_show_remove() -> None:
    store = Store()
    assert store.latest() is None
    save(store, "first")
    time.sleep(0.01)  # creation times have millisecond resolution
    save(store, "second", key="x" * 32)
    assert [r.name for r in store.records()] == ["first", "second"]
    latest = store.latest()
    assert latest is not None and latest.name == "second"
    assert store.record("first").source == "doc.txt"
    assert store.find("x" * 32) is not None
    store.remove("second")
    assert store.names() == ["first"]
    with pytest.raises(CacheNotFoundError) as info:
        store.remove("second")
    assert info.value.available == ["first"]


def test_unknown_name_lists_existing() -> None:
    store = Store()
    save(store, "alpha")
    with pytest.raises(CacheNotFoundError, match="alpha"):
        store.load("beta")


def test_dtype_is_converted_on_load() -> None:
    store = Store()
    cache = make_cache(torch.bfloat16)
    save(store, cache=cache)
    loaded, _ = store.load("doc", dtype=torch.float32)
    assert loaded.dtype == torch.float32
    # bfloat16 -> float32 is exact.
    assert torch.equal(loaded.keys[0].to(torch.bfloat16), cache.keys[0])


def test_existing_name_needs_overwrite() -> None:
    store = Store()
    save(store)
    with pytest.raises(CacheError, match="already exists"):
        save(store)
    save(store, cache=make_cache(seed=1), overwrite=True)
    loaded, _ = store.load("doc")
    assert_same(loaded, make_cache(seed=1))


def test_copy_keeps_content() -> None:
    store = Store()
    save(store, "orig")
    record = store.copy("orig", "copy")
    assert record.key == store.record("orig").key
    assert_same(store.load("copy")[0], make_cache())
    # A second name, not a second copy: the same tensor file on disk.
    first, second = (store.record(n).path / TENSOR_FILE for n in ("orig", "copy"))
    assert first.stat().st_ino == second.stat().st_ino
    # Replacing or removing one name leaves the other whole.
    save(store, "orig", cache=make_cache(seed=1), overwrite=True)
    assert_same(store.load("copy")[0], make_cache())
    store.remove("orig")
    assert_same(store.load("copy")[0], make_cache())


def test_content_key_depends_on_everything() -> None:
    base: dict[str, Any] = {
        "document_sha256": "a",
        "model_fingerprint": "m",
        "tokenizer_fingerprint": "t",
        "settings": {"max_chunk_len": 32},
        "focus": None,
    }
    key = content_key(**base)
    assert key == content_key(**base)
    for field, other in [
        ("document_sha256", "b"),
        ("model_fingerprint", "m2"),
        ("tokenizer_fingerprint", "t2"),
        ("settings", {"max_chunk_len": 64}),
        ("focus", "who?"),
    ]:
        assert content_key(**{**base, field: other}) != key, field


def test_derive_name() -> None:
    assert derive_name("My Book (2nd ed).pdf", "abcdef1234") == "My-Book-2nd-ed-abcdef12"
    assert derive_name("stdin", "0123456789") == "stdin-01234567"
    assert derive_name("...", "0123456789") == "doc-01234567"
    assert derive_name("../../etc/passwd", "0123456789") == "passwd-01234567"


@pytest.mark.parametrize(
    "name",
    ["../evil", "..", ".", "a/b", "/abs", ".hidden", "", "a" * 101, "x..y", "sp ace", "a\x00b"],
)
def test_path_traversal_and_bad_names_refused(name: str, tmp_path: Path) -> None:
    store = Store()
    with pytest.raises(CacheError, match="invalid cache name"):
        validate_name(name)
    with pytest.raises(CacheError, match="invalid cache name"):
        save(store, name)
    with pytest.raises(CacheError):
        store.load(name)
    with pytest.raises(CacheError):
        store.remove(name)
    assert not (tmp_path / "evil").exists()


# ------------------------------------------------------------------------- damage


def test_flipped_byte_is_refused() -> None:
    store = Store()
    record = save(store)
    path = record.path / TENSOR_FILE
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    path.write_bytes(bytes(data))
    with pytest.raises(CacheDamagedError, match="checksum") as info:
        store.load("doc")
    assert str(path) in str(info.value)
    assert (info.value.path, info.value.name) == (path, "doc")  # the CLI words the fix


def test_truncated_file_is_refused() -> None:
    store = Store()
    record = save(store)
    path = record.path / TENSOR_FILE
    path.write_bytes(path.read_bytes()[:-100])
    with pytest.raises(CacheError, match="truncated"):
        store.load("doc")


def test_missing_tensor_file_is_refused() -> None:
    store = Store()
    record = save(store)
    (record.path / TENSOR_FILE).unlink()
    with pytest.raises(CacheError, match="missing"):
        store.load("doc")


def test_edited_metadata_is_refused() -> None:
    store = Store()
    record = save(store)
    (record.path / META_FILE).write_text("{ not json")
    with pytest.raises(CacheError, match="damaged metadata"):
        store.load("doc")
    # A damaged cache is skipped by list, and rm still removes it.
    assert store.records() == []
    store.remove("doc")
    assert store.names() == []


def test_metadata_missing_fields_is_refused() -> None:
    store = Store()
    record = save(store)
    meta = json.loads((record.path / META_FILE).read_text())
    del meta["tokenizer"]
    (record.path / META_FILE).write_text(json.dumps(meta))
    with pytest.raises(CacheError, match="lacks 'tokenizer'"):
        store.load("doc")


def test_future_format_version_is_refused() -> None:
    store = Store()
    record = save(store)
    meta = json.loads((record.path / META_FILE).read_text())
    meta["format_version"] = FORMAT_VERSION + 1
    (record.path / META_FILE).write_text(json.dumps(meta))
    with pytest.raises(CacheError, match="newer than this homer reads"):
        store.load("doc")


def test_other_model_is_refused_naming_both() -> None:
    store = Store()
    save(store)
    with pytest.raises(CacheMismatchError) as info:
        store.load("doc", model_fingerprint="other", model_id="big-model")
    message = str(info.value)
    assert "tiny-model" in message and "big-model" in message
    with pytest.raises(CacheMismatchError, match="tokenizer"):
        store.load("doc", model_fingerprint="mfp", tokenizer_fingerprint="other")


class _Planted:
    """A pickle payload that would create a file if it were ever unpickled."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Any, ...]:
        return (Path.touch, (self.marker,))


def test_planted_pickle_is_refused_and_never_executed(tmp_path: Path) -> None:
    store = Store()
    record = save(store)
    marker = tmp_path / "pwned"
    payload = pickle.dumps(_Planted(marker))
    path = record.path / TENSOR_FILE
    path.write_bytes(payload)
    # Even with the checksum and size forged to match, the file is parsed as safetensors only.
    meta = json.loads((record.path / META_FILE).read_text())
    import hashlib

    meta["tensor_sha256"] = hashlib.sha256(payload).hexdigest()
    meta["tensor_bytes"] = len(payload)
    (record.path / META_FILE).write_text(json.dumps(meta))
    with pytest.raises(CacheError, match="not a valid safetensors"):
        store.load("doc")
    assert not marker.exists()
    # A torch.save'd zip pickle is refused the same way.
    torch.save({"x": _Planted(marker)}, path)
    meta["tensor_sha256"] = hashlib.sha256(path.read_bytes()).hexdigest()
    meta["tensor_bytes"] = path.stat().st_size
    (record.path / META_FILE).write_text(json.dumps(meta))
    with pytest.raises(CacheError):
        store.load("doc")
    assert not marker.exists()


# ------------------------------------------------------------------------- faults


def test_failed_write_leaves_nothing(monkeypatch: pytest.MonkeyPatch) -> None:
    store = Store()

    def disk_full(*args: object, **kwargs: object) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr("safetensors.torch.save_file", disk_full)
    with pytest.raises(CacheError, match="no space left"):
        save(store)
    assert store.names() == []
    assert [p.name for p in store.root.iterdir() if not p.name.startswith(".locks")] == []


def test_stale_temp_dirs_are_swept() -> None:
    store = Store()
    store.root.mkdir(parents=True)
    # A pid that cannot exist: the write of a killed process.
    stale = store.root / ".tmp-999999999-abc"
    stale.mkdir()
    (stale / TENSOR_FILE).write_bytes(b"half")
    save(store)
    assert not stale.exists()
    assert store.names() == ["doc"]


def test_ingest_lock_serialises() -> None:
    store = Store()
    order: list[str] = []
    waited = threading.Event()

    def second() -> None:
        with store.ingest_lock("key", on_wait=waited.set):
            order.append("second")

    with store.ingest_lock("key"):
        thread = threading.Thread(target=second)
        thread.start()
        assert waited.wait(5)
        order.append("first")
    thread.join(5)
    assert order == ["first", "second"]


def test_reader_never_sees_a_half_replaced_cache() -> None:
    store = Store()
    save(store)
    errors: list[BaseException] = []
    stop = threading.Event()

    def reader() -> None:
        while not stop.is_set():
            try:
                store.load("doc")
            except BaseException as exc:
                errors.append(exc)

    thread = threading.Thread(target=reader)
    thread.start()
    try:
        for seed in range(15):
            save(store, cache=make_cache(seed=seed), overwrite=True)
    finally:
        stop.set()
        thread.join(10)
    assert errors == []


def test_listing_waits_for_a_cache_being_replaced() -> None:
    """Mid-replacement (old cache renamed into a swap folder, new one not yet in place, the
    name's lock held), a listing waits for the lock instead of dropping the name."""
    store = Store()
    save(store, "other")
    save(store)
    listed: list[list[str]] = []
    with store._name_lock("doc", exclusive=True):
        swap = store.root / f".swap-{os.getpid()}-test"
        swap.mkdir()
        os.replace(store.root / "doc", swap / "old")
        thread = threading.Thread(target=lambda: listed.append([r.name for r in store.records()]))
        thread.start()
        time.sleep(0.5)
        assert thread.is_alive(), f"the listing did not wait: {listed}"
        os.replace(swap / "old", store.root / "doc")
        swap.rmdir()
    thread.join(10)
    assert sorted(listed[0]) == ["doc", "other"]


def test_files_are_data_only() -> None:
    record = save(Store())
    names = sorted(os.listdir(record.path))
    assert names == [META_FILE, TENSOR_FILE]
    assert (record.path / TENSOR_FILE).read_bytes()[8:9] == b"{"  # safetensors JSON header


_WRITER = """
import sys, torch
from tests.test_store import make_cache, save
from homer.store import Store
store = Store()
big = make_cache()
big = type(big)(
    keys=[torch.randn(1, 2, 4096, 64).to(torch.bfloat16) for _ in range(8)],
    values=[torch.randn(1, 2, 4096, 64).to(torch.bfloat16) for _ in range(8)],
    token_ids=torch.arange(4096), positions=torch.arange(4096),
    last_logits=torch.randn(50), info=big.info,
)
print("ready", flush=True)
i = 0
while True:
    save(store, f"doc{i % 3}", cache=big, overwrite=True)
    i += 1
"""


def test_sigkill_during_saves_leaves_a_consistent_store(homer_home: Path) -> None:
    """Kill a process that keeps saving at random moments: nothing half-written is ever seen."""
    import random
    import signal
    import subprocess
    import sys

    rng = random.Random(0)
    root = Path(__file__).resolve().parent.parent
    store = Store()
    for _trial in range(3):
        proc = subprocess.Popen(
            [sys.executable, "-c", _WRITER],
            cwd=root,
            stdout=subprocess.PIPE,
            env={**os.environ, "HOMER_HOME": str(homer_home)},
        )
        assert proc.stdout is not None
        assert proc.stdout.readline().strip() == b"ready"
        time.sleep(rng.uniform(0.05, 0.6))
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
        for name in store.names():
            cache, _ = store.load(name)  # every listed cache is complete and checks out
            assert cache.length == 4096
    assert store.names(), "the writer never finished a save: the trials tested nothing"
    save(store, "after")  # the next write works and sweeps the dead writer's temp folders
    leftovers = [p.name for p in store.root.iterdir() if p.name.startswith((".tmp-", ".trash-"))]
    assert leftovers == []


# ------------------------------------------------------------------------- format 1 (homer 0.1.0)

#: meta.json exactly as homer 0.1.0's store (commit 8bcb3b5, before `homer.store` became a
#: package) wrote it for `save(store, page_map=(0, 10), kind="pdf", extra=...)` of `make_cache()`.
FORMAT1_META = """{
  "format": "homer-cache",
  "format_version": 1,
  "name": "doc",
  "key": "kkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkk",
  "created": "2026-12-06T02:36:36.755+00:00",
  "model": {
    "id": "tiny-model",
    "fingerprint": "mfp",
    "type": "llama"
  },
  "tokenizer": {
    "fingerprint": "tfp"
  },
  "dtype": "bfloat16",
  "settings": {
    "max_chunk_len": 32
  },
  "focus": null,
  "document": {
    "sha256": "dddddddddddddddddddddddddddddddddddddddddddddddddddddddddddddddd",
    "source": "doc.txt",
    "kind": "pdf",
    "page_map": [
      0,
      10
    ]
  },
  "tokens": {
    "document": 100,
    "prefix": 2,
    "suffix": 2,
    "cache": 12
  },
  "last_position": 33,
  "num_layers": 3,
  "kv_shape": [
    1,
    2,
    12,
    16
  ],
  "info": {
    "prefix_text": "Read:",
    "suffix_text": "(end)",
    "focus": null,
    "document_tokens": 100,
    "prefix_tokens": 2,
    "suffix_tokens": 2,
    "num_chunks": 4,
    "height": 2,
    "settings": {
      "max_chunk_len": 32,
      "target_len": 12
    },
    "model_type": "llama"
  },
  "tensor_file": "tensors.safetensors",
  "tensor_sha256": "76df1123f9d65e554a7e4b3d8395913c2fd761129f768f4616ff870de947c840",
  "tensor_bytes": 5736,
  "extra": {
    "compress_seconds": 1.5,
    "device": "cpu"
  }
}"""


def write_format1_cache(folder: Path, cache: HomerCache, meta: dict[str, Any]) -> None:
    """A cache folder as homer 0.1.0 wrote it, built by hand (safetensors and json only).

    `meta` is completed with the tensor file's real size and SHA-256.
    """
    import hashlib

    from safetensors.torch import save_file

    folder.mkdir(parents=True)
    tensors = {}
    for i, (k, v) in enumerate(zip(cache.keys, cache.values, strict=True)):
        tensors[f"layers.{i}.keys"] = k.contiguous()
        tensors[f"layers.{i}.values"] = v.contiguous()
    tensors["token_ids"] = cache.token_ids.to(torch.int64)
    tensors["positions"] = cache.positions.to(torch.int64)
    tensors["last_logits"] = cache.last_logits.to(torch.float32)
    path = folder / "tensors.safetensors"
    save_file(tensors, str(path), metadata={"format": "homer-cache"})
    meta["tensor_sha256"] = hashlib.sha256(path.read_bytes()).hexdigest()
    meta["tensor_bytes"] = path.stat().st_size
    (folder / "meta.json").write_text(json.dumps(meta, indent=2), encoding="utf-8")


def test_a_format1_cache_written_by_homer_0_1_loads_as_before() -> None:
    store = Store()
    saved = json.loads(FORMAT1_META)
    write_format1_cache(store.root / "doc", make_cache(), dict(saved))
    # The same tensors give the same file, byte for byte, as 0.1.0's save did.
    assert (store.root / "doc" / META_FILE).read_text() == FORMAT1_META
    cache, record = store.load(
        "doc", model_fingerprint="mfp", tokenizer_fingerprint="tfp", model_id="tiny-model"
    )
    assert_same(cache, make_cache())
    assert record.meta == saved  # `homer show` prints exactly what was saved
    assert record.metadata.document == DocumentRef("d" * 64, "doc.txt", "pdf", (0, 10))
    assert (record.key, record.model_id, record.source) == ("k" * 32, "tiny-model", "doc.txt")
    assert (record.document_tokens, record.cache_tokens) == (100, LENGTH)
    assert [r.name for r in store.records()] == ["doc"]
    assert store.find("k" * 32) == record
    copied = store.copy("doc", "again")
    assert {**copied.meta, "name": "doc", "created": saved["created"]} == saved
    assert_same(store.load("again")[0], make_cache())


def test_a_new_save_keeps_format1s_fields_and_adds_format2s_at_the_end() -> None:
    """Format 2 is format 1 (the same fields, types and order as homer 0.1.0 wrote) with the
    spans flag and the saved text's reference after them."""
    record = save(Store(), page_map=(0, 10), kind="pdf", extra={"compress_seconds": 1.5})
    written = json.loads((record.path / META_FILE).read_text())
    expected = json.loads(FORMAT1_META)
    assert list(written) == [*expected, "spans", "text"]
    assert written["format_version"] == 2 and written["spans"] is False and written["text"] is None
    for part in ("model", "tokenizer", "document", "tokens", "info"):
        assert list(written[part]) == list(expected[part]), part
    skip = ("created", "extra", "format_version", "spans", "text")
    assert {k: v for k, v in written.items() if k not in skip} == {
        k: v for k, v in expected.items() if k not in skip
    }


def test_content_keys_are_those_of_homer_0_1() -> None:
    """Existing stores keep reusing their caches: the same inputs give the same key."""
    key = content_key(
        document_sha256="d" * 64,
        model_fingerprint="mfp",
        tokenizer_fingerprint="tfp",
        settings={"max_chunk_len": 32, "target_len": None, "bias": "calibrated"},
        focus=None,
    )
    assert key == "4f2a4997e41d167cbdc1c03bafba4280"
    focused = content_key(
        document_sha256="d" * 64,
        model_fingerprint="mfp",
        tokenizer_fingerprint="tfp",
        settings={"max_chunk_len": 32},
        focus="who?",
    )
    assert focused == "30aadae4a0245b6757c89d62fcf43680"


# ------------------------------------------------------------------------- metadata schema


def _edit_saved(store: Store, name: str, edit: Any) -> Path:
    path = store.root / name / META_FILE
    meta = json.loads(path.read_text())
    edit(meta)
    path.write_text(json.dumps(meta))
    return path


@pytest.mark.parametrize(
    ("edit", "needle"),
    [
        (lambda m: m["tokens"].update(document=None), "'tokens.document' is null, not an int"),
        (lambda m: m["tokens"].update(document="100"), "'tokens.document' is a str, not an int"),
        (lambda m: m["tokens"].update(cache=True), "'tokens.cache' is a bool, not an int"),
        (lambda m: m["model"].pop("id"), "lacks 'model.id'"),
        (lambda m: m["document"].update(source=7), "'document.source' is an int, not a str"),
        (lambda m: m["document"].update(page_map=["1"]), "'document.page_map' holds something"),
        (lambda m: m.update(created=None), "'created' is null, not a str"),
        (lambda m: m["info"].update(height="2"), "'info.height' is a str, not an int"),
        (lambda m: m.update(extra=[]), "'extra' is a list, not a dict"),
    ],
)
def test_one_odd_field_skips_that_cache_only(
    edit: Any, needle: str, caplog: pytest.LogCaptureFixture
) -> None:
    store = Store()
    save(store, "good")
    save(store, "odd", key="o" * 32)
    path = _edit_saved(store, "odd", edit)
    with pytest.raises(CacheDamagedError, match=needle) as info:
        store.record("odd")
    assert (info.value.path, info.value.name) == (path, "odd")
    caplog.clear()
    assert [r.name for r in store.records()] == ["good"]
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert len(warnings) == 1 and str(path) in warnings[0] and needle in warnings[0]


def test_a_newer_format_is_refused_not_misread() -> None:
    store = Store()
    save(store)
    path = _edit_saved(store, "doc", lambda m: m.update(format_version=FORMAT_VERSION + 1))
    with pytest.raises(CacheVersionError) as info:
        store.load("doc")
    error = info.value
    assert (error.path, error.version, error.supported) == (path, FORMAT_VERSION + 1, 2)
    assert store.records() == []


# ------------------------------------------------------------------------- filesystem helper


def test_replacing_writes_whole_files_or_nothing(tmp_path: Path) -> None:
    target = tmp_path / "sub" / "bias.safetensors"
    with fs.replacing(target) as tmp:
        tmp.write_bytes(b"new")
    assert target.read_bytes() == b"new"
    with pytest.raises(RuntimeError), fs.replacing(target) as tmp:
        tmp.write_bytes(b"half")
        raise RuntimeError("killed mid-write")
    assert target.read_bytes() == b"new"
    assert sorted(p.name for p in target.parent.iterdir()) == ["bias.safetensors"]


def test_sweep_removes_only_dead_processes_work(tmp_path: Path) -> None:
    dead, alive = 999_999_999, os.getpid()
    (tmp_path / f".tmp-{dead}-a.safetensors").write_bytes(b"x")
    (tmp_path / f".tmp-{dead}-b").mkdir()
    (tmp_path / f".tmp-{alive}-c").mkdir()
    (tmp_path / f".swap-{dead}-d").mkdir()
    (tmp_path / "keep.safetensors").write_bytes(b"x")
    fs.sweep(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        f".swap-{dead}-d",
        f".tmp-{alive}-c",
        "keep.safetensors",
    ]
