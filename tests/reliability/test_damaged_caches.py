"""Damaged and foreign caches: refused with one line naming the file and the fix; never used.

Each test copies one real cache (`book`, built once by `homer ingest` with the tiny model), damages
it in one way and asks about it through the CLI. A cache built with another model or tokenizer is
refused; another dtype is converted (exactly, or refused when values would overflow).
"""

from __future__ import annotations

import hashlib
import json
import random
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest
import torch

from homer.errors import CacheDtypeError
from homer.store import META_FILE, TENSOR_FILE, Store
from homer_cli.errors import describe
from tests.conftest import MAX_CHUNK
from tests.reliability.harness import invoke, one_line_error
from tests.test_store import make_cache
from tests.test_store import save as save_synthetic

Damage = Callable[[Path], Path]  # damages the cache folder, returns the file the error must name


def _edit_meta(edit: Callable[[dict], object]) -> Damage:
    def damage(folder: Path) -> Path:
        path = folder / META_FILE
        meta = json.loads(path.read_text())
        edit(meta)
        path.write_text(json.dumps(meta))
        return path

    return damage


def _write_meta(data: bytes) -> Damage:
    def damage(folder: Path) -> Path:
        (folder / META_FILE).write_bytes(data)
        return folder / META_FILE

    return damage


def _truncate(fraction: float) -> Damage:
    def damage(folder: Path) -> Path:
        path = folder / TENSOR_FILE
        path.write_bytes(path.read_bytes()[: int(path.stat().st_size * fraction)])
        return path

    return damage


def _flip(where: str) -> Damage:
    def damage(folder: Path) -> Path:
        path = folder / TENSOR_FILE
        data = bytearray(path.read_bytes())
        at = 20 if where == "header" else random.Random(0).randrange(len(data) // 2, len(data))
        data[at] ^= 0x10
        path.write_bytes(bytes(data))
        return path

    return damage


def _remove(file: str) -> Damage:
    def damage(folder: Path) -> Path:
        (folder / file).unlink()
        return folder / file

    return damage


def _forge(tensors: dict[str, torch.Tensor]) -> Damage:
    """Replace the tensor file by another valid safetensors file, checksum forged to match."""

    def damage(folder: Path) -> Path:
        from safetensors.torch import save_file

        path = folder / TENSOR_FILE
        save_file(tensors, str(path))
        meta_path = folder / META_FILE
        meta = json.loads(meta_path.read_text())
        meta["tensor_sha256"] = hashlib.sha256(path.read_bytes()).hexdigest()
        meta["tensor_bytes"] = path.stat().st_size
        meta_path.write_text(json.dumps(meta))
        return path

    return damage


def _set(field: str, value: object) -> Callable[[dict], None]:
    def edit(meta: dict) -> None:
        target = meta
        *parents, last = field.split(".")
        for part in parents:
            target = target[part]
        if value is _DELETE:
            del target[last]
        else:
            target[last] = value

    return edit


_DELETE = object()

# (id, damage, fragment of the message besides the file and the fix)
DAMAGES: list[tuple[str, Damage, str]] = [
    ("tensors-truncated-half", _truncate(0.5), "truncated"),
    ("tensors-truncated-to-zero", _truncate(0.0), "truncated"),
    ("tensors-one-byte-short", _truncate(0.99999), "truncated"),
    ("tensors-flipped-data", _flip("data"), "checksum"),
    ("tensors-flipped-header", _flip("header"), "checksum"),
    ("tensors-missing", _remove(TENSOR_FILE), "tensor file missing"),
    ("tensors-forged-empty", _forge({"x": torch.zeros(2)}), "missing tensor"),
    ("meta-missing", _remove(META_FILE), "metadata missing"),
    ("meta-not-json", _write_meta(b"{ not json"), "damaged metadata"),
    ("meta-empty", _write_meta(b""), "damaged metadata"),
    ("meta-binary", _write_meta(bytes(range(256))), "damaged metadata"),
    ("meta-a-list", _write_meta(b"[1, 2, 3]"), "not homer cache metadata"),
    ("meta-other-format", _edit_meta(_set("format", "other")), "not homer cache metadata"),
    ("meta-future-version", _edit_meta(_set("format_version", 99)), "upgrade homer"),
    ("meta-version-zero", _edit_meta(_set("format_version", 0)), "bad format_version"),
    ("meta-version-string", _edit_meta(_set("format_version", "1")), "bad format_version"),
    ("meta-lacks-tokenizer", _edit_meta(_set("tokenizer", _DELETE)), "lacks 'tokenizer'"),
    ("meta-lacks-key", _edit_meta(_set("key", _DELETE)), "lacks 'key'"),
    ("meta-model-a-string", _edit_meta(_set("model", "tiny")), "'model' is a str"),
    ("meta-tokens-a-list", _edit_meta(_set("tokens", [1])), "'tokens' is a list"),
    ("meta-checksum-edited", _edit_meta(_set("tensor_sha256", "0" * 64)), "checksum"),
    ("meta-size-edited", _edit_meta(_set("tensor_bytes", 12)), "truncated"),
    ("meta-dtype-unknown", _edit_meta(_set("dtype", "int3")), "unknown dtype 'int3'"),
    ("meta-dtype-integer", _edit_meta(_set("dtype", "int64")), "unknown dtype 'int64'"),
    ("meta-dtype-other", _edit_meta(_set("dtype", "float16")), "not float16 as recorded"),
    ("meta-layers-edited", _edit_meta(_set("num_layers", 99)), "missing tensor"),
    ("meta-length-edited", _edit_meta(_set("tokens.cache", 3)), "metadata says otherwise"),
    ("meta-info-missing", _edit_meta(_set("info", _DELETE)), "lacks 'info'"),
    ("meta-tensor-path-escapes", _edit_meta(_set("tensor_file", "../../x")), "tensor_file"),
]


@pytest.mark.parametrize(
    ("damage", "needle"), [d[1:] for d in DAMAGES], ids=[d[0] for d in DAMAGES]
)
def test_damaged_cache_is_refused_naming_file_and_fix(
    book: Path, damage: Damage, needle: str
) -> None:
    damage(book)
    result = invoke("ask", "Who?", "--cache", "book", "--max-tokens", "1")
    err = one_line_error(result, needle, "homer rm book", "homer ingest")
    assert str(book / META_FILE) in err or str(book / TENSOR_FILE) in err, err
    # `homer list` reads metadata only: damaged metadata is left out with a one-line warning;
    # a damaged tensor file is found (and refused) when a command loads it, as above.
    listed = invoke("list", "--json")
    assert listed.exit_code == 0, listed.output
    if json.loads(listed.stdout) == []:
        assert listed.stderr.count("\n") == 1 and "homer rm book" in listed.stderr
    assert invoke("rm", "book").exit_code == 0
    assert Store().names() == [] and not book.exists()


def test_show_refuses_damaged_metadata(book: Path) -> None:
    (book / META_FILE).write_text("{")
    one_line_error(invoke("show", "book"), "damaged metadata", "homer rm book")


# ----------------------------------------------------------------------------- foreign caches


@pytest.fixture(scope="module")
def other_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Same shape and tokenizer as the tiny model, other weights."""
    from tests.tiny import make_tiny_model_dir

    return make_tiny_model_dir(tmp_path_factory.mktemp("tiny-other"), arch="llama", seed=1)


def test_cache_of_another_model_is_refused(book: Path, other_model_dir: Path) -> None:
    model = json.loads((book / META_FILE).read_text())["model"]["id"]
    err = one_line_error(invoke("ask", "Who?", "--model", str(other_model_dir)), "was built with")
    assert model in err and str(other_model_dir) in err


def test_cache_of_another_tokenizer_is_refused(
    book: Path, tiny_model_dir: Path, tmp_path: Path
) -> None:
    """Same weights, a tokenizer with another chat template: the cache's prompt would not match."""
    twin = tmp_path / "twin"
    shutil.copytree(tiny_model_dir, twin)
    config_path = twin / "tokenizer_config.json"
    config = json.loads(config_path.read_text())
    config["chat_template"] = "{{ messages[0]['content'] }}"
    config_path.write_text(json.dumps(config))
    (twin / "chat_template.jinja").unlink(missing_ok=True)
    one_line_error(invoke("ask", "Who?", "--model", str(twin)), "tokenizer", "homer ingest")


def test_other_homer_settings_are_never_silently_reused(
    book: Path, tiny_model_dir: Path, tmp_path: Path
) -> None:
    """The same document with other settings is a new cache; under a taken name, refused."""
    source = json.loads((book / META_FILE).read_text())
    doc = tmp_path / "book.txt"
    from tests.reliability.conftest import story

    doc.write_text(story(1), encoding="utf-8")
    base = ["ingest", str(doc), "--model", str(tiny_model_dir)]
    same = invoke(*base, "--max-chunk", MAX_CHUNK)
    assert same.exit_code == 0 and same.stdout == "book\n", same.output  # reused as is
    other_budget = ["--max-chunk", MAX_CHUNK, "--budget", "150"]  # same calibration, other key
    taken = invoke(*base, *other_budget, "--name", "book")
    one_line_error(taken, "already exists", "--force")
    other = invoke(*base, *other_budget)
    assert other.exit_code == 0, other.output
    name = other.stdout.strip()
    assert name != "book"
    assert json.loads(invoke("show", name).stdout)["key"] != source["key"]


def test_other_dtype_is_converted(book: Path) -> None:
    """The bfloat16 cache of the tiny model, asked in float32: converted exactly and used."""
    result = invoke("ask", "Who?", "--dtype", "float32", "--max-tokens", "2", "--json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["cache"] == "book"


def test_weights_rounded_otherwise_are_refused_with_the_dtype_to_use(book: Path) -> None:
    """The tiny model's float32 weights in float16 are not the bfloat16 weights that built it."""
    err = one_line_error(invoke("ask", "Who?", "--dtype", "float16"), "ask with --dtype bfloat16")
    assert "homer ingest" in err


def test_conversion_that_would_overflow_is_refused() -> None:
    store = Store()
    cache = make_cache(torch.bfloat16)
    cache.keys[0][0, 0, 0, 0] = 1e30  # fine in bfloat16, infinite in float16
    save_synthetic(store, cache=cache)
    with pytest.raises(CacheDtypeError, match="too large for float16") as info:
        store.load("doc", dtype=torch.float16)
    assert (info.value.saved, info.value.requested) == ("bfloat16", "float16")
    assert describe(info.value).endswith("; ask with --dtype bfloat16")
    loaded, _ = store.load("doc", dtype=torch.float32)
    assert loaded.keys[0][0, 0, 0, 0].item() == pytest.approx(1e30, rel=1e-2)
