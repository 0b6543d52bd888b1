"""The `homer` command through Typer's CliRunner, on a tiny random model saved to a temp dir."""

from __future__ import annotations

import json
import random
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from homer_cli.main import app
from tests.conftest import MAX_CHUNK

runner = CliRunner()

COMMANDS = ["ingest", "ask", "summarize", "chat", "list", "show", "rm", "calibrate", "serve"]


@pytest.fixture
def document(tmp_path: Path) -> Path:
    rng = random.Random(0)
    words = [
        "the",
        "captain",
        "sailed",
        "across",
        "a",
        "sea",
        "with",
        "his",
        "brother",
        "and",
        "a",
        "crew",
        "who",
        "read",
        "books",
    ]
    text = " ".join(rng.choice(words) for _ in range(150))
    path = tmp_path / "story.txt"
    path.write_text(text[:400] + " The passkey is 71234. " + text[400:], encoding="utf-8")
    return path


def invoke(*args: str, input: str | None = None) -> object:
    return runner.invoke(app, list(args), input=input)


def one_line_error(result: object, *needles: str) -> str:
    assert result.exit_code == 1, (result.exit_code, result.output, result.exception)  # type: ignore[attr-defined]
    err: str = result.stderr  # type: ignore[attr-defined]
    assert err.startswith("homer: "), err
    assert err.count("\n") == 1, err
    for needle in needles:
        assert needle in err, (needle, err)
    return err


# ----------------------------------------------------------------------------- help


def test_top_level_help_lists_every_command() -> None:
    result = invoke("--help")
    assert result.exit_code == 0  # type: ignore[attr-defined]
    for command in COMMANDS:
        assert command in result.stdout  # type: ignore[attr-defined]


@pytest.mark.parametrize("command", COMMANDS)
def test_every_command_has_help_with_an_example(command: str) -> None:
    result = invoke(command, "--help")
    assert result.exit_code == 0, result.output  # type: ignore[attr-defined]
    assert "Example" in result.stdout  # type: ignore[attr-defined]
    assert f"homer {command}" in result.stdout  # type: ignore[attr-defined]


def test_cli_import_is_light() -> None:
    """`homer --help` must not wait for torch or transformers."""
    code = (
        "import sys, homer_cli.main; "
        "heavy = [m for m in ('torch', 'transformers', 'homer.compression', 'homer.tree') "
        "if m in sys.modules]; print(heavy)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


# ----------------------------------------------------------------------------- no model needed


def test_list_empty() -> None:
    result = invoke("list")
    assert result.exit_code == 0  # type: ignore[attr-defined]
    assert result.stdout == ""  # type: ignore[attr-defined]
    assert "no saved caches" in result.stderr  # type: ignore[attr-defined]
    assert json.loads(invoke("list", "--json").stdout) == []  # type: ignore[attr-defined]


def test_ask_without_any_cache() -> None:
    one_line_error(invoke("ask", "Who?"), "homer ingest")


def test_show_and_rm_unknown() -> None:
    one_line_error(invoke("show", "nope"), "no cache named 'nope'")
    one_line_error(invoke("rm", "nope"), "no cache named 'nope'")


def test_debug_env_shows_traceback(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HOMER_DEBUG", "1")
    result = invoke("show", "nope")
    assert result.exit_code != 0  # type: ignore[attr-defined]
    from homer.errors import CacheError

    assert isinstance(result.exception, CacheError)  # type: ignore[attr-defined]


# ----------------------------------------------------------------------------- with the engine


def test_ingest_ask_list_show_rm(tiny_model_dir: Path, document: Path, engine_home: Path) -> None:
    model = str(tiny_model_dir)
    result = invoke("ingest", str(document), "--model", model, "--max-chunk", MAX_CHUNK)
    assert result.exit_code == 0, (result.output, result.exception)  # type: ignore[attr-defined]
    name = result.stdout.strip()  # type: ignore[attr-defined]
    assert name.startswith("story-")
    assert result.stdout == name + "\n"  # type: ignore[attr-defined]  # only the name
    assert result.stderr == ""  # type: ignore[attr-defined]  # not a terminal: silent

    # Same document, model and settings: reused, same name.
    again = invoke("ingest", str(document), "--model", model, "--max-chunk", MAX_CHUNK)
    assert again.exit_code == 0 and again.stdout.strip() == name  # type: ignore[attr-defined]

    answer = invoke("ask", "What is the passkey?", "--max-tokens", "5")
    assert answer.exit_code == 0, (answer.output, answer.exception)  # type: ignore[attr-defined]
    assert answer.stdout.endswith("\n")  # type: ignore[attr-defined]

    as_json = invoke("ask", "-", "--cache", name, "--max-tokens", "5", "--json", input="Who?\n")
    assert as_json.exit_code == 0, as_json.output  # type: ignore[attr-defined]
    payload = json.loads(as_json.stdout)  # type: ignore[attr-defined]
    assert payload["cache"] == name
    assert payload["model"] == model
    assert payload["tokens"]["cache"] > 0
    assert payload["tokens"]["document"] > payload["tokens"]["cache"]
    assert payload["tokens"]["answer"] <= 5
    # 5 tokens cannot make a loop: it ended at the end-of-sequence token or at the limit
    assert payload["finish_reason"] == ("length" if payload["tokens"]["answer"] == 5 else "stop")
    assert set(payload["timings"]) >= {"model_load_s", "cache_load_s", "time_to_first_token_s"}

    summary = invoke("summarize", "--max-tokens", "4", "--json")
    assert summary.exit_code == 0, summary.output  # type: ignore[attr-defined]
    assert json.loads(summary.stdout)["cache"] == name  # type: ignore[attr-defined]

    listing = invoke("list")
    assert listing.exit_code == 0 and name in listing.stdout  # type: ignore[attr-defined]
    assert "story.txt" in listing.stdout  # type: ignore[attr-defined]
    rows = json.loads(invoke("list", "--json").stdout)  # type: ignore[attr-defined]
    assert [r["name"] for r in rows] == [name]

    shown = json.loads(invoke("show", name).stdout)  # type: ignore[attr-defined]
    assert shown["document"]["source"] == "story.txt"
    assert shown["model"]["id"] == model

    removed = invoke("rm", name)
    assert removed.exit_code == 0  # type: ignore[attr-defined]
    assert json.loads(invoke("list", "--json").stdout) == []  # type: ignore[attr-defined]


def test_names_force_and_unknown_cache(
    tiny_model_dir: Path, document: Path, engine_home: Path
) -> None:
    model = str(tiny_model_dir)
    base = ["ingest", str(document), "--model", model, "--max-chunk", MAX_CHUNK]
    first = invoke(*base, "--name", "book")
    assert first.exit_code == 0 and first.stdout == "book\n"  # type: ignore[attr-defined]
    # Same content under another name: copied, not recomputed.
    second = invoke(*base, "--name", "book2")
    assert second.exit_code == 0 and second.stdout == "book2\n"  # type: ignore[attr-defined]
    # Another document under a taken name: refused without --force.
    other = document.with_name("other.txt")
    other.write_text("A different document about a lighthouse keeper. " * 20)
    taken = invoke(
        "ingest", str(other), "--model", model, "--max-chunk", MAX_CHUNK, "--name", "book"
    )
    one_line_error(taken, "already exists", "--force")
    forced = invoke(
        "ingest",
        str(other),
        "--model",
        model,
        "--max-chunk",
        MAX_CHUNK,
        "--name",
        "book",
        "--force",
    )
    assert forced.exit_code == 0, forced.output  # type: ignore[attr-defined]
    shown = json.loads(invoke("show", "book").stdout)  # type: ignore[attr-defined]
    assert shown["document"]["source"] == "other.txt"

    one_line_error(
        invoke("ask", "Who?", "--cache", "nope"), "no cache named 'nope'", "book", "book2"
    )

    # rm removes every existing name given, then says which were missing (exit 1).
    message = one_line_error(invoke("rm", "book", "nope", "book2"), "no cache named 'nope'")
    assert "book2" not in message.split("no cache named")[1].split(";")[0]
    assert json.loads(invoke("list", "--json").stdout) == []  # type: ignore[attr-defined]


def test_version() -> None:
    from homer import __version__

    result = invoke("--version")
    assert result.exit_code == 0  # type: ignore[attr-defined]
    assert result.stdout.strip() == f"homer {__version__}"  # type: ignore[attr-defined]


def test_ingest_from_stdin_and_dtype_conversion(tiny_model_dir: Path, engine_home: Path) -> None:
    text = "Notes piped from another program. The key is 4242. " * 12
    result = invoke(
        "ingest",
        "-",
        "--model",
        str(tiny_model_dir),
        "--max-chunk",
        MAX_CHUNK,
        "--dtype",
        "bfloat16",
        input=text,
    )
    assert result.exit_code == 0, (result.output, result.exception)  # type: ignore[attr-defined]
    name = result.stdout.strip()  # type: ignore[attr-defined]
    assert name.startswith("stdin-")
    assert json.loads(invoke("show", name).stdout)["dtype"] == "bfloat16"  # type: ignore[attr-defined]
    # Asking with float32 converts the bfloat16 cache exactly instead of refusing it.
    answer = invoke("ask", "What is the key?", "--dtype", "float32", "--max-tokens", "3")
    assert answer.exit_code == 0, answer.output  # type: ignore[attr-defined]


# ----------------------------------------------------------------------------- old caches


def test_a_format1_cache_written_by_homer_0_1_answers(tiny_model_dir: Path) -> None:
    """A cache folder as homer 0.1.0 wrote it (built by hand) is listed, shown and answers."""
    import torch

    from homer.cache import CacheInfo, HomerCache
    from homer.fingerprint import model_fingerprint, tokenizer_fingerprint
    from homer.models import load_model
    from homer.store import Store
    from tests.test_store import FORMAT1_META, write_format1_cache

    model, tokenizer = load_model(str(tiny_model_dir))
    ids = tokenizer("The captain's brother kept the keys. The passkey is 71234.")["input_ids"]
    length, config = len(ids), model.config
    shape = (1, config.num_key_value_heads, length, config.head_dim)
    gen = torch.Generator().manual_seed(0)
    cache = HomerCache(
        keys=[torch.randn(shape, generator=gen).to(model.dtype) for _ in range(6)],
        values=[torch.randn(shape, generator=gen).to(model.dtype) for _ in range(6)],
        token_ids=torch.tensor(ids),
        positions=torch.arange(length),
        last_logits=torch.randn(config.vocab_size, generator=gen),
        info=CacheInfo("", "", None, length, 0, 0, 1, 0, {}, "llama"),
    )
    meta = json.loads(FORMAT1_META)
    meta.update(
        name="old",
        model={"id": str(tiny_model_dir), "fingerprint": model_fingerprint(model), "type": "llama"},
        tokenizer={"fingerprint": tokenizer_fingerprint(tokenizer)},
        dtype=str(model.dtype).removeprefix("torch."),
        tokens={"document": length, "prefix": 0, "suffix": 0, "cache": length},
        last_position=length - 1,
        num_layers=6,
        kv_shape=list(shape),
        info=cache.info.to_dict(),
    )
    write_format1_cache(Store().root / "old", cache, meta)
    rows = json.loads(invoke("list", "--json").stdout)  # type: ignore[attr-defined]
    assert [(r["name"], r["cache_tokens"]) for r in rows] == [("old", length)]
    shown = json.loads(invoke("show", "old").stdout)  # type: ignore[attr-defined]
    assert {k: v for k, v in shown.items() if k not in ("path", "size_bytes")} == meta
    answer = invoke("ask", "What is the passkey?", "--max-tokens", "3", "--json")
    assert answer.exit_code == 0, (answer.output, answer.exception)  # type: ignore[attr-defined]
    payload = json.loads(answer.stdout)  # type: ignore[attr-defined]
    assert payload["cache"] == "old" and 1 <= payload["tokens"]["answer"] <= 3


def test_list_skips_one_odd_cache_with_a_one_line_warning() -> None:
    """`tokens.document` set to null used to end `homer list` with exit 2 (issue 24)."""
    from homer.store import Store
    from tests.test_store import save

    store = Store()
    save(store, "good")
    odd = save(store, "odd", key="o" * 32)
    meta = json.loads((odd.path / "meta.json").read_text())
    meta["tokens"]["document"] = None
    (odd.path / "meta.json").write_text(json.dumps(meta))
    for args in (["list"], ["list", "--json"]):
        result = invoke(*args)
        assert result.exit_code == 0, result.output  # type: ignore[attr-defined]
        assert "good" in result.stdout and "odd" not in result.stdout  # type: ignore[attr-defined]
        err = result.stderr  # type: ignore[attr-defined]
        assert err.count("\n") == 1 and err.startswith("homer: "), err
        assert str(odd.path / "meta.json") in err and "homer rm odd" in err
    one_line_error(invoke("show", "odd"), "'tokens.document' is null", "homer rm odd")


# ----------------------------------------------------------------------------- advice


def test_library_errors_get_advice_in_the_cli_s_terms() -> None:
    """The library's errors name no flag; the CLI adds the fix in its own flags and commands."""
    import errno

    from homer.errors import (
        CacheDamagedError,
        CacheDtypeError,
        CacheExistsError,
        CacheMismatchError,
        CacheNotFoundError,
        CacheVersionError,
        StoreAccessError,
    )
    from homer_cli.errors import describe

    common = {"saved": "f1", "current": "f2", "model_id": "small", "dtype": "bfloat16"}
    cases = [
        (CacheNotFoundError("x", ["a", "b"]), "no cache named 'x' (existing: a, b)"),
        (CacheNotFoundError("x", []), "(existing: none; run `homer ingest` first)"),
        (CacheDamagedError("/s/x/meta.json", "damaged", "x"), "; remove it with `homer rm x`"),
        (CacheVersionError("/s/x/meta.json", 2, 1, "x"), "; upgrade homer, or remove it"),
        (CacheMismatchError("x", "model", using="big", **common), "; use --model small or re-run"),
        (CacheMismatchError("x", "model", using="small", **common), "; ask with --dtype bfloat16"),
        (CacheMismatchError("x", "tokenizer", using="big", **common), "with this model"),
        (CacheExistsError("x"), "; choose another --name, or pass --force to replace it"),
        (CacheDtypeError("x", "bfloat16", "float16"), "; ask with --dtype bfloat16"),
        (StoreAccessError("save the cache", "/s", errno.ENOSPC, "full"), "; free some space"),
        (StoreAccessError("save the cache", "/s", errno.EROFS, "read-only"), "(set HOMER_HOME"),
    ]
    for error, advice in cases:
        assert "--" not in str(error) and "`homer" not in str(error), error
        assert str(error).split(" (existing")[0] in describe(error)
        assert advice in describe(error), (describe(error), advice)


def test_errors_about_settings_name_the_flags(
    tiny_model_dir: Path, document: Path, engine_home: Path
) -> None:
    model = str(tiny_model_dir)
    early = invoke("ingest", str(document), "--model", model, "--max-chunk", "64", "--budget", "99")
    message = one_line_error(early, "--budget (99) cannot exceed --max-chunk (64)")
    assert "target_len" not in message and "max_chunk_len" not in message
    # Past the default chunk size (half the tiny model's 256-token window): found after loading.
    late = invoke("ingest", str(document), "--model", model, "--budget", "200")
    one_line_error(late, "--budget (200) cannot exceed --max-chunk (128)")


def _run_with_terminal_stderr(args: list[str], env: dict[str, str]) -> tuple[str, str, int]:
    """Run `python -m homer_cli ARGS` with stderr on a pseudo-terminal (stdout a pipe)."""
    import os
    import pty

    leader, follower = pty.openpty()
    proc = subprocess.Popen(
        [sys.executable, "-m", "homer_cli", *args],
        stdout=subprocess.PIPE,
        stderr=follower,
        stdin=subprocess.DEVNULL,
        env={**os.environ, **env, "COLUMNS": "200"},
    )
    os.close(follower)
    chunks = []
    while True:
        try:
            data = os.read(leader, 4096)
        except OSError:  # the child closed the terminal
            break
        if not data:
            break
        chunks.append(data)
    stdout = proc.stdout.read().decode() if proc.stdout else ""
    code = proc.wait(timeout=120)
    os.close(leader)
    return stdout, b"".join(chunks).decode(errors="replace"), code


def test_a_finished_ingest_says_what_it_saved_on_a_terminal(
    tiny_model_dir: Path, document: Path, engine_home: Path
) -> None:
    args = ["ingest", str(document), "--model", str(tiny_model_dir), "--max-chunk", MAX_CHUNK]
    stdout, stderr, code = _run_with_terminal_stderr(args, {"HOMER_HOME": str(engine_home)})
    assert code == 0, stderr
    name = stdout.strip()
    assert "\n" not in name  # stdout keeps only the name
    assert f"saved {name}: " in stderr and "document tokens" in stderr, stderr
    stdout, stderr, code = _run_with_terminal_stderr(
        ["ask", "Who?", "--max-tokens", "3", "--local"], {"HOMER_HOME": str(engine_home)}
    )
    assert code == 0 and stdout.endswith("\n"), stderr
    assert "reading the cache" in stderr  # the spinner until the first token
