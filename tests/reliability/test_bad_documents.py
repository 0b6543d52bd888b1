"""Bad documents through `homer ingest`: a one-line error, exit 1, and nothing written.

Every case is refused before a model is loaded, so these run in milliseconds. The library-level
behaviour (`homer.documents`) is unit-tested in tests/test_documents.py; here the whole command is
checked, including that the store stays empty.
"""

from __future__ import annotations

import io
import logging
import os
import random
from collections.abc import Callable
from pathlib import Path

import pytest

from homer.documents import load_document
from homer.errors import DocumentError
from tests.pdfs import encrypt_pdf, make_pdf
from tests.reliability.harness import assert_nothing_written, invoke, one_line_error

Builder = Callable[[Path], list[str]]


def _file(name: str, data: bytes) -> Builder:
    def build(tmp: Path) -> list[str]:
        path = tmp / name
        path.write_bytes(data)
        return [str(path)]

    return build


def _missing(tmp: Path) -> list[str]:
    return [str(tmp / "missing.txt")]


def _directory(tmp: Path) -> list[str]:
    (tmp / "folder").mkdir()
    return [str(tmp / "folder")]


def _broken_symlink(tmp: Path) -> list[str]:
    (tmp / "link.txt").symlink_to(tmp / "gone.txt")
    return [str(tmp / "link.txt")]


def _fifo(tmp: Path) -> list[str]:
    os.mkfifo(tmp / "pipe")
    return [str(tmp / "pipe")]


def _device(tmp: Path) -> list[str]:
    return [os.devnull]


def _encrypted(password: str | None) -> Builder:
    def build(tmp: Path) -> list[str]:
        path = tmp / "locked.pdf"
        path.write_bytes(encrypt_pdf(make_pdf(["Top secret text"]), "s3cret"))
        return [str(path)] + ([] if password is None else ["--password", password])

    return build


_GOOD_PDF = make_pdf([f"Page {i} of a report about lighthouses." for i in range(1, 6)])
_RANDOM = random.Random(5).randbytes(64 * 1024)

# (id, builder, fragments the one error line must hold)
CASES: list[tuple[str, Builder, tuple[str, ...]]] = [
    ("missing", _missing, ("missing.txt", "no such file")),
    ("directory", _directory, ("folder", "no documents in")),  # an empty folder: nothing to ingest
    ("broken-symlink", _broken_symlink, ("link.txt", "no such file")),
    ("fifo", _fifo, ("pipe", "not a regular file")),
    ("device", _device, ("not a regular file",)),
    ("empty", _file("empty.txt", b""), ("empty.txt", "empty")),
    ("whitespace", _file("blank.md", b" \n\t\r\n   \n" * 50), ("blank.md", "empty")),
    ("bom-only", _file("bom.txt", b"\xef\xbb\xbf\n"), ("bom.txt", "empty")),
    ("random-bytes", _file("noise.txt", _RANDOM), ("noise.txt", "binary")),
    ("nul-bytes", _file("zeros.txt", b"\x00" * 4096), ("zeros.txt", "binary")),
    ("elf", _file("prog", b"\x7fELF\x02\x01\x01" + bytes(200)), ("prog", "binary")),
    ("png", _file("img.txt", b"\x89PNG\r\n\x1a\n" + _RANDOM[:2000]), ("img.txt", "binary")),
    ("gzip", _file("a.txt.gz", b"\x1f\x8b\x08\x00" + _RANDOM[:3000]), ("a.txt.gz", "binary")),
    ("utf16-bom", _file("u16.txt", "hello world".encode("utf-16")), ("u16.txt", "UTF-16")),
    ("utf16-no-bom", _file("u16le.txt", ("hello world " * 40).encode("utf-16-le")), ("UTF-16",)),
    ("pdf-name-not-pdf", _file("fake.pdf", b"just some text"), ("fake.pdf", "not a PDF")),
    ("pdf-header-only", _file("head.pdf", b"%PDF-1.7\n"), ("head.pdf", "PDF")),
    ("pdf-garbage", _file("junk.pdf", b"%PDF-1.4\n" + _RANDOM[:5000]), ("junk.pdf", "PDF")),
    ("pdf-truncated-10", _file("cut.pdf", _GOOD_PDF[: len(_GOOD_PDF) // 10]), ("cut.pdf",)),
    ("pdf-no-pages", _file("nopages.pdf", make_pdf([])), ("nopages.pdf", "no pages")),
    ("pdf-image-only", _file("scan.pdf", make_pdf([None, None, None])), ("scan.pdf", "OCR")),
    ("pdf-encrypted", _encrypted(None), ("locked.pdf", "--password")),
    ("pdf-wrong-password", _encrypted("nope"), ("locked.pdf", "wrong password")),
    ("pdf-empty-password", _encrypted(""), ("locked.pdf", "wrong password")),
]


@pytest.mark.parametrize(("builder", "needles"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_bad_document_is_one_line_and_writes_nothing(
    tmp_path: Path, builder: Builder, needles: tuple[str, ...]
) -> None:
    args = builder(tmp_path)
    one_line_error(invoke("ingest", *args, "--model", str(tmp_path / "never-loaded")), *needles)
    assert_nothing_written()


@pytest.mark.parametrize(
    ("data", "needle"),
    [(b"", "empty"), (b"  \n\n", "empty"), (b"\x00\x01\x02\x03" * 500, "binary")],
    ids=["stdin-empty", "stdin-whitespace", "stdin-binary"],
)
def test_bad_stdin_is_one_line(data: bytes, needle: str) -> None:
    one_line_error(invoke("ingest", "-", input=data), "stdin", needle)
    assert_nothing_written()


def test_unreadable_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "secret.txt"
    path.write_text("readable words")
    if os.geteuid() != 0:
        path.chmod(0)
    else:  # root reads through chmod 000: inject the error the kernel would give anyone else

        def refuse(self: Path, *args: object, **kwargs: object) -> None:
            raise PermissionError(13, "Permission denied", str(self))

        monkeypatch.setattr(Path, "open", refuse)
    try:
        one_line_error(invoke("ingest", str(path)), "secret.txt", "permission denied")
    finally:
        path.chmod(0o644)
    assert_nothing_written()


# ----------------------------------------------------------------------------- PDFs, library level


def test_pdf_with_broken_fonts_keeps_the_readable_pages(tmp_path: Path) -> None:
    """Pages pypdf cannot decode are skipped with a warning; the rest is read."""
    path = tmp_path / "fonts.pdf"
    data = make_pdf(["Readable first page", "Second page", "Readable third page"])
    # Point page 2's text at a font that does not exist and feed it undecodable bytes.
    data = data.replace(b"(Second page) Tj", b"/F9 12 Tf <FFFEFD00> Tj", 1)
    path.write_bytes(data)
    doc = load_document(path)
    assert "Readable first page" in doc.text and "Readable third page" in doc.text
    assert doc.num_pages == 3


def test_pdf_whose_text_extraction_raises_is_skipped(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """A page whose extraction raises (pypdf does, on some broken fonts) costs only that page."""
    from pypdf import PageObject

    original = PageObject.extract_text
    calls = {"n": 0}

    def flaky(self: PageObject, *args: object, **kwargs: object) -> str:
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyError("/Widths")  # what a font without widths makes pypdf raise
        return original(self)

    monkeypatch.setattr(PageObject, "extract_text", flaky)
    path = tmp_path / "fonts.pdf"
    path.write_bytes(make_pdf(["one", "two", "three"]))
    with caplog.at_level(logging.WARNING, logger="homer.documents"):
        doc = load_document(path)
    assert doc.text.split("\n\n") == ["one", "", "three"]
    assert "page 2 has no readable text" in caplog.text
    assert "1 of 3 page(s) could not be read" in caplog.text


def test_thousands_of_pages(tmp_path: Path) -> None:
    """A 2,000-page PDF is read whole (about 2 ms a page in pypdf), page map included."""
    path = tmp_path / "long.pdf"
    path.write_bytes(make_pdf([f"Page {i} holds line {i}." for i in range(1, 2001)]))
    doc = load_document(path)
    assert doc.num_pages == 2000
    assert doc.text[doc.page_map[1999] :] == "Page 2000 holds line 2000."
    assert doc.page_of(doc.page_map[1234] + 1) == 1235


def test_pages_written_by_pypdf(tmp_path: Path) -> None:
    """A PDF re-written by pypdf's own writer (shared resources, object streams) reads the same."""
    from pypdf import PdfReader, PdfWriter

    source = PdfReader(io.BytesIO(make_pdf([f"Page {i} holds line {i}." for i in range(1, 11)])))
    writer = PdfWriter()
    for _ in range(20):
        for page in source.pages:
            writer.add_page(page)
    writer.compress_identical_objects()
    path = tmp_path / "rewritten.pdf"
    with path.open("wb") as fh:
        writer.write(fh)
    doc = load_document(path)
    assert doc.num_pages == 200
    assert doc.text[doc.page_map[199] :] == "Page 10 holds line 10."


@pytest.mark.parametrize("seed", range(24))
def test_fuzzed_pdf_never_escapes_as_a_bug(tmp_path: Path, seed: int) -> None:
    """Random damage (cuts, flipped bytes, deleted spans) is read or refused, never a traceback."""
    rng = random.Random(seed)
    data = bytearray(_GOOD_PDF)
    for _ in range(rng.randint(1, 6)):
        action = rng.choice(["flip", "cut", "delete", "insert"])
        at = rng.randrange(len(b"%PDF-1.4"), len(data))
        if action == "flip":
            data[at] ^= 1 << rng.randrange(8)
        elif action == "cut":
            del data[at:]
        elif action == "delete":
            del data[at : at + rng.randint(1, 200)]
        else:
            data[at:at] = rng.randbytes(rng.randint(1, 50))
        if len(data) <= len(b"%PDF-1.4") + 1:
            break
    path = tmp_path / "fuzz.pdf"
    path.write_bytes(bytes(data))
    try:
        doc = load_document(path)
    except DocumentError as exc:
        assert "fuzz.pdf" in str(exc) and "\n" not in str(exc)
    else:
        assert doc.text.strip()
