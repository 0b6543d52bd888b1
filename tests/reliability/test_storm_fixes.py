"""Regression tests for what the held-out hostile-user campaign found (issue 24).

Terminal escape injection (names and metadata printed raw), unbounded input (stdin read until
memory ran out, a PDF claiming 100,000 pages extracted before any check), and the close-behind
items: `--device meta`/`mps`, forged tensor shapes, symbolic link loops, NUL bytes past the
first 8 KiB, Ctrl-C while the CLI is still importing, and a `--force` killed between its two
renames. Each was reproduced here before it was fixed.
"""

from __future__ import annotations

import io
import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from safetensors.torch import load_file, save_file

from homer.store import Store
from tests.reliability.harness import ROOT, invoke, one_line_error

#: What a hostile file name or PDF title carries: clear screen, window title, OSC 52 clipboard,
#: a CSI as one C1 character, a bidi override, and rich markup (a link, a closing tag).
HOSTILE = (
    "evil\x1b[2J\x1b]0;pwned\x07\x1b]52;c;ZXZpbA==\x07\u009b31m\u202etxt.exe"
    "[link=http://x.example]click[/link][/]"
)
RAW = ("\x1b", "\x07", "\u009b", "\u202e")


def _set_source(book: Path, source: str) -> None:
    """Give the cache `book` a hostile source name (meta.json carries no checksum of it)."""
    meta_path = book / "meta.json"
    meta = json.loads(meta_path.read_text(encoding="utf-8"))
    meta["document"]["source"] = source
    meta_path.write_text(json.dumps(meta), encoding="utf-8")


def _assert_no_raw(text: str) -> None:
    for ch in RAW:
        assert ch not in text, (ch, text)


# ----------------------------------------------------------------------------- escapes


def test_list_shows_hostile_names_as_text(book: Path) -> None:
    _set_source(book, "\x1b[2J\x1b]0;t\x07\u009b\u202e[link=http://e]c[/link][/]")
    result = invoke("list")
    assert result.exit_code == 0, result.output
    _assert_no_raw(result.stdout)
    assert "\\x1b[2J\\x1b]0;t\\x07\\x9b\\u202e" in result.stdout
    assert "[link=http://e]c[/link][/]" in result.stdout  # markup shown, not obeyed


@pytest.mark.parametrize("argv", [["list", "--json"], ["show", "book"]])
def test_json_output_is_exact_and_inert(book: Path, argv: list[str]) -> None:
    _set_source(book, HOSTILE)
    result = invoke(*argv)
    assert result.exit_code == 0, result.output
    _assert_no_raw(result.stdout)
    payload = json.loads(result.stdout)
    row = payload[0] if isinstance(payload, list) else payload
    source = row["source"] if "source" in row else row["document"]["source"]
    assert source == HOSTILE  # the exact value, escaped only as JSON escapes it


def test_error_messages_show_hostile_paths_as_text(tmp_path: Path) -> None:
    name = str(tmp_path / "a\x1b]0;pwned\x07\u009bb[bold]x.txt")
    err = one_line_error(invoke("ingest", name), "no such file")
    _assert_no_raw(err)
    assert "\\x1b]0;pwned\\x07" in err


def test_warnings_show_hostile_file_names_as_text(tmp_path: Path, engine_home: Path) -> None:
    from homer_cli.main import _setup_logging

    path = tmp_path / "latin\x1b[31m.txt"
    path.write_bytes(b"caf\xe9 au lait, " * 20)
    stream = io.StringIO()
    real = sys.stderr
    sys.stderr = stream
    try:
        _setup_logging()
        from homer.documents import load_document

        load_document(path)
    finally:
        sys.stderr = real
    assert "not valid UTF-8" in stream.getvalue()
    _assert_no_raw(stream.getvalue())
    assert "latin\\x1b[31m.txt" in stream.getvalue()


def test_terminal_helpers() -> None:
    from homer_cli.terminal import json_text, markup_safe, printable

    assert printable("a\x1bb\nc\td") == "a\\x1bb\\nc\\td"
    assert printable("a\nb\x9b", keep_lines=True) == "a\nb\\x9b"
    assert printable("plain é 字") == "plain é 字"
    assert markup_safe("[bold]x") == "\\[bold]x"
    assert json.loads(json_text({"k": HOSTILE})) == {"k": HOSTILE}
    _assert_no_raw(json_text({"k": HOSTILE}))


# ----------------------------------------------------------------------------- bounded input


_READ_STDIN = """
import sys
from homer.documents import ReadLimits, load_document
from homer.errors import DocumentTooLargeError
try:
    load_document("-", limits=ReadLimits(max_bytes=8 * 1024 * 1024))
except DocumentTooLargeError as exc:
    print("refused:", exc)
"""


def test_endless_stdin_is_refused_at_the_limit() -> None:
    """`yes | homer ingest -` used to read until memory ran out."""
    yes = subprocess.Popen(["yes"], stdout=subprocess.PIPE)
    try:
        out = subprocess.run(
            [sys.executable, "-c", _READ_STDIN],
            stdin=yes.stdout,
            capture_output=True,
            text=True,
            cwd=ROOT,
            timeout=60,
        )
    finally:
        yes.kill()
        yes.wait()
    assert "refused:" in out.stdout and "8,388,608 bytes" in out.stdout, out


@pytest.mark.parametrize(
    ("args", "flag"),
    [
        (["--max-bytes", "100"], "--max-bytes"),
        (["--max-doc-tokens", "10"], "--max-doc-tokens"),
    ],
)
def test_limits_are_one_line_naming_the_flag(document: Path, args: list[str], flag: str) -> None:
    one_line_error(invoke("ingest", str(document), *args), "over the limit", flag)
    assert "HOMER_MAX_BYTES" not in os.environ  # the flag held for that command only


def test_stdin_limit_and_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    one_line_error(
        invoke("ingest", "-", "--max-bytes", "1000", input="word " * 1000), "--max-bytes"
    )
    monkeypatch.setenv("HOMER_MAX_BYTES", "1000")
    one_line_error(invoke("ingest", "-", input="word " * 1000), "1,000 bytes", "HOMER_MAX_BYTES")
    monkeypatch.setenv("HOMER_MAX_BYTES", "lots")
    one_line_error(invoke("ingest", "-", input="word"), "HOMER_MAX_BYTES")


def _many_pages_pdf(count: int) -> bytes:
    """A small PDF whose page tree lists one page `count` times (as a hostile file can)."""
    objects = [
        b"<< /Type /Catalog /Pages 2 0 R >>",
        f"<< /Type /Pages /Kids [{' '.join(['4 0 R'] * count)}] /Count {count} >>".encode(),
        b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica >>",
        b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] "
        b"/Resources << /Font << /F1 3 0 R >> >> /Contents 5 0 R >>",
    ]
    stream = b"BT /F1 12 Tf 72 720 Td (the captain sailed) Tj ET"
    objects.append(b"<< /Length %d >>\nstream\n%s\nendstream" % (len(stream), stream))
    out = io.BytesIO()
    out.write(b"%PDF-1.4\n")
    offsets = []
    for number, body in enumerate(objects, start=1):
        offsets.append(out.tell())
        out.write(b"%d 0 obj\n%s\nendobj\n" % (number, body))
    xref = out.tell()
    out.write(b"xref\n0 %d\n0000000000 65535 f \n" % (len(objects) + 1))
    for offset in offsets:
        out.write(b"%010d 00000 n \n" % offset)
    out.write(b"trailer\n<< /Size %d /Root 1 0 R >>\nstartxref\n%d\n%%%%EOF\n" % (6, xref))
    return out.getvalue()


def test_pdf_claiming_100000_pages_is_refused_before_extraction(tmp_path: Path) -> None:
    path = tmp_path / "huge.pdf"
    path.write_bytes(_many_pages_pdf(100_000))
    started = time.monotonic()
    one_line_error(invoke("ingest", str(path)), "100,000 pages", "--max-pages")
    assert time.monotonic() - started < 10
    small = tmp_path / "small.pdf"
    small.write_bytes(_many_pages_pdf(3))
    one_line_error(invoke("ingest", str(small), "--max-pages", "2"), "3 pages", "--max-pages")


def test_host_out_of_memory_advice(document: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import homer.documents

    def no_memory(*args: object, **kwargs: object) -> None:
        raise MemoryError

    monkeypatch.setattr(homer.documents, "load_document", no_memory)
    one_line_error(invoke("ingest", str(document)), "RAM", "--max-chunk", "--max-bytes")


def test_reading_past_memory_is_a_document_error(
    document: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Reading (limits raised past the memory) is not computing: no --max-chunk advice."""
    import homer.documents

    def no_memory(*args: object, **kwargs: object) -> None:
        raise MemoryError

    monkeypatch.setattr(homer.documents, "_load_text", no_memory)
    err = one_line_error(invoke("ingest", str(document), "--max-bytes", "0"), "memory", "split")
    assert "--max-chunk" not in err


# ----------------------------------------------------------------------------- close behind


@pytest.mark.parametrize("device", ["meta", "mps"])
def test_unusable_devices_are_one_line(book: Path, device: str) -> None:
    one_line_error(invoke("ask", "hi", "-c", "book", "--device", device, "--local"), device)


def test_nan_temperature_is_one_line(book: Path) -> None:
    one_line_error(invoke("ask", "hi", "-c", "book", "--temperature", "nan"), "temperature")


def test_symlink_loops(tmp_path: Path, engine_home: Path) -> None:
    loop = tmp_path / "loop.txt"
    loop.symlink_to(loop)
    one_line_error(invoke("ingest", str(loop)), "loop of symbolic links")


@pytest.mark.parametrize("where", [12_000, 3 * 1024 * 1024 + 5])
def test_nul_bytes_past_the_first_block(tmp_path: Path, where: int) -> None:
    path = tmp_path / "sneaky.txt"
    text = (b"the captain sailed across the sea. " * (where // 35 + 200))[: where + 4096]
    path.write_bytes(text[:where] + b"\x00" + text[where:])
    one_line_error(invoke("ingest", str(path)), "NUL", f"{where:,}")


@pytest.mark.parametrize("forge", ["heads", "head-size", "rank", "all-layers"])
def test_forged_tensor_shapes_are_refused(book: Path, forge: str) -> None:
    import hashlib

    import torch

    tensors = load_file(str(book / "tensors.safetensors"))
    keys = tensors["layers.0.keys"]
    b, h, n, d = keys.shape
    if forge == "heads":
        tensors["layers.0.keys"] = torch.zeros((b, 2 * h, n, d), dtype=keys.dtype)
    elif forge == "head-size":
        tensors["layers.0.values"] = torch.zeros((b, h, n, d + 1), dtype=keys.dtype)
    elif forge == "rank":
        tensors["layers.0.keys"] = torch.zeros((5,), dtype=keys.dtype)
    else:  # every layer, the metadata left as it was
        for name in [k for k in tensors if k.startswith("layers.")]:
            tensors[name] = torch.zeros((b, h, n, d + 2), dtype=keys.dtype)
    save_file(tensors, str(book / "tensors.safetensors"))
    data = (book / "tensors.safetensors").read_bytes()
    meta = json.loads((book / "meta.json").read_text())
    meta["tensor_sha256"], meta["tensor_bytes"] = hashlib.sha256(data).hexdigest(), len(data)
    (book / "meta.json").write_text(json.dumps(meta))
    one_line_error(
        invoke("ask", "hi", "-c", "book", "-n", "2", "--local"), "shapes", "homer rm book"
    )


def _dead_pid() -> int:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


@pytest.mark.parametrize("command", ["show", "ask", "rm"])
def test_force_killed_between_its_renames(book: Path, command: str) -> None:
    """The old cache sits in a dead writer's swap folder and the name is free: every command
    sees the name (the old cache is put back), not only `homer list`."""
    swap = book.parent / f".swap-{_dead_pid()}-killed"
    swap.mkdir()
    os.replace(book, swap / "old")
    argv = {"show": ["show", "book"], "ask": ["ask", "hi", "-c", "book", "-n", "2", "--local"]}
    result = invoke(*argv.get(command, ["rm", "book"]))
    assert result.exit_code == 0, result.output
    if command == "rm":
        assert Store().names() == []
    else:
        assert Store().names() == ["book"]
    assert not swap.exists() or not (swap / "old").exists()


def _homer_command() -> list[str]:
    script = Path(sys.executable).parent / "homer"
    return [str(script)] if script.exists() else [sys.executable, "-m", "homer_cli"]


def test_ctrl_c_while_importing_prints_no_traceback(homer_home: Path) -> None:
    """Ctrl-C in the first third of a second (imports) used to print a traceback (5 of 10).

    Python's own start-up (the `site` module and `.pth` files, before any homer code runs) can
    still be interrupted with CPython's `init_import_site` message; those are counted apart.
    """
    rng = random.Random(3)
    env = {**os.environ, "HOMER_HOME": str(homer_home), "HOMER_SERVER": "off"}
    before_homer = 0
    for _ in range(12):
        proc = subprocess.Popen(
            [*_homer_command(), "list"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env
        )
        time.sleep(rng.uniform(0.05, 0.5))
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=60)
        text = err.decode(errors="replace")
        if "init_import_site" in text:
            before_homer += 1
            continue
        assert "Traceback" not in text, text
        assert proc.returncode in (0, 130, -signal.SIGINT), (proc.returncode, text)
        assert text in ("", "homer: interrupted\n") or text.startswith("homer: no saved"), text
    assert before_homer < 12  # some signals did land while homer was importing


def test_forged_metadata_and_tensors_together_do_not_fit_the_model(book: Path) -> None:
    """Tensors with twice the heads and a `kv_shape` rewritten to match, with a fresh checksum:
    the store's own checks pass; the model's shape does not."""
    import hashlib

    import torch

    tensors = load_file(str(book / "tensors.safetensors"))
    b, h, n, d = tensors["layers.0.keys"].shape
    for name in [k for k in tensors if k.startswith("layers.")]:
        tensors[name] = torch.zeros((b, 2 * h, n, d), dtype=tensors[name].dtype)
    save_file(tensors, str(book / "tensors.safetensors"))
    data = (book / "tensors.safetensors").read_bytes()
    meta = json.loads((book / "meta.json").read_text())
    meta["tensor_sha256"], meta["tensor_bytes"] = hashlib.sha256(data).hexdigest(), len(data)
    meta["kv_shape"] = [b, 2 * h, n, d]
    (book / "meta.json").write_text(json.dumps(meta))
    Store().load("book")  # the store alone accepts it
    one_line_error(
        invoke("ask", "hi", "-c", "book", "-n", "2", "--local"), "does not fit the model", "rm book"
    )


def test_answers_on_a_terminal_show_escapes(monkeypatch: pytest.MonkeyPatch) -> None:
    """A streamed answer (model output a document can steer) is inert on a terminal, and
    byte-exact into a pipe."""
    from homer_cli.terminal import write_answer

    for tty, expected in ((True, "a\\x1b]0;x\\x07\nb"), (False, "a\x1b]0;x\x07\nb")):
        out = io.StringIO()
        monkeypatch.setattr(out, "isatty", lambda tty=tty: tty)
        monkeypatch.setattr(sys, "stdout", out)
        write_answer("a\x1b]0;x\x07\nb")
        assert out.getvalue() == expected
