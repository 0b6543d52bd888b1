"""`homer.documents`: every readable kind of input, and a one-line error for every bad one."""

from __future__ import annotations

import hashlib
import io
import logging
import sys
from pathlib import Path

import pytest

from homer.documents import load_document
from homer.errors import DocumentError
from tests.pdfs import encrypt_pdf, make_pdf


def _sha(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def test_text_file(tmp_path: Path) -> None:
    path = tmp_path / "notes.txt"
    path.write_text("Hello, world.\nSecond line — with a dash.\n", encoding="utf-8")
    doc = load_document(path)
    assert doc.text == "Hello, world.\nSecond line — with a dash.\n"
    assert doc.kind == "text"
    assert doc.source == "notes.txt"
    assert doc.sha256 == _sha(doc.text)
    assert doc.page_map == []
    assert doc.page_of(3) is None


def test_markdown_and_bom(tmp_path: Path) -> None:
    path = tmp_path / "README.md"
    path.write_bytes(b"\xef\xbb\xbf# Title\n\nBody text.\n")
    doc = load_document(str(path))
    assert doc.text == "# Title\n\nBody text.\n"


def test_large_text_is_read_in_blocks(tmp_path: Path) -> None:
    # Multi-byte characters straddle the 1 MiB block boundary: the incremental decoder copes.
    text = "é" * (1 << 20) + "end"
    path = tmp_path / "big.txt"
    path.write_text(text, encoding="utf-8")
    doc = load_document(path)
    assert doc.text == text
    assert doc.sha256 == _sha(text)


def test_non_utf8_is_replaced_with_a_warning(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "latin1.txt"
    path.write_bytes("café and naïve".encode("latin-1"))
    with caplog.at_level(logging.WARNING, logger="homer.documents"):
        doc = load_document(path)
    assert doc.text == "caf\ufffd and na\ufffdve"
    assert "not valid UTF-8" in caplog.text


def test_utf16_is_refused_with_the_fix(tmp_path: Path) -> None:
    path = tmp_path / "u16.txt"
    path.write_bytes("hello".encode("utf-16"))
    with pytest.raises(DocumentError, match="UTF-16"):
        load_document(path)


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"", "empty"),
        (b"  \n\t \n", "empty"),
        (b"\x00\x01\x02binary\x00\xff" * 100, "binary"),
        (bytes(range(256)) * 10, "binary"),
    ],
)
def test_unusable_files(tmp_path: Path, content: bytes, message: str) -> None:
    path = tmp_path / "bad.txt"
    path.write_bytes(content)
    with pytest.raises(DocumentError, match=message) as info:
        load_document(path)
    assert "\n" not in str(info.value)
    assert "bad.txt" in str(info.value)


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(DocumentError, match="no such file"):
        load_document(tmp_path / "nope.txt")


def test_directory(tmp_path: Path) -> None:
    with pytest.raises(DocumentError, match="directory"):
        load_document(tmp_path)


def test_unreadable_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "secret.txt"
    path.write_text("text")

    def refuse(self: Path, *args: object, **kwargs: object) -> None:
        raise PermissionError(13, "Permission denied", str(self))

    # Tests may run as root, where chmod 000 does not stop reading: inject the error instead.
    monkeypatch.setattr(Path, "open", refuse)
    with pytest.raises(DocumentError, match="permission denied"):
        load_document(path)


def test_stdin_text(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(b"from a pipe\n")))
    doc = load_document("-")
    assert doc.text == "from a pipe\n"
    assert doc.source == "stdin"


def test_stdin_pdf(monkeypatch: pytest.MonkeyPatch) -> None:
    data = make_pdf(["Piped PDF page"])
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(data)))
    doc = load_document("-")
    assert doc.kind == "pdf"
    assert "Piped PDF page" in doc.text


def test_pdf_pages_and_page_map(tmp_path: Path) -> None:
    path = tmp_path / "two.pdf"
    path.write_bytes(make_pdf(["First page text\nmore", "Second page text", "Third"]))
    doc = load_document(path)
    assert doc.kind == "pdf"
    assert doc.num_pages == 3
    assert doc.page_map[0] == 0
    assert doc.text[doc.page_map[1] :].startswith("Second page text")
    assert doc.text[doc.page_map[2] :].startswith("Third")
    assert doc.page_of(doc.page_map[1] + 3) == 2
    assert doc.sha256 == _sha(doc.text)


def test_pdf_detected_by_signature_not_name(tmp_path: Path) -> None:
    path = tmp_path / "no-extension"
    path.write_bytes(make_pdf(["Signature wins"]))
    assert load_document(path).kind == "pdf"


def test_pdf_with_some_blank_pages_keeps_offsets(tmp_path: Path) -> None:
    path = tmp_path / "gaps.pdf"
    path.write_bytes(make_pdf(["one", None, "three"]))
    doc = load_document(path)
    assert doc.text[doc.page_map[2] :] == "three"


def test_image_only_pdf_suggests_ocr(tmp_path: Path) -> None:
    path = tmp_path / "scan.pdf"
    path.write_bytes(make_pdf([None, None]))
    with pytest.raises(DocumentError, match="OCR"):
        load_document(path)


def test_encrypted_pdf(tmp_path: Path) -> None:
    path = tmp_path / "locked.pdf"
    path.write_bytes(encrypt_pdf(make_pdf(["Top secret text"]), "s3cret"))
    with pytest.raises(DocumentError, match="--password"):
        load_document(path)
    with pytest.raises(DocumentError, match="wrong password"):
        load_document(path, password="nope")
    assert "Top secret text" in load_document(path, password="s3cret").text


@pytest.mark.parametrize(
    "data",
    [
        b"%PDF-1.4\nthis is not a pdf at all",
        make_pdf(["Truncated"])[:120],
    ],
)
def test_corrupt_pdf(tmp_path: Path, data: bytes) -> None:
    path = tmp_path / "broken.pdf"
    path.write_bytes(data)
    with pytest.raises(DocumentError) as info:
        load_document(path)
    assert "broken.pdf" in str(info.value)


def test_pdf_name_without_pdf_content(tmp_path: Path) -> None:
    path = tmp_path / "fake.pdf"
    path.write_text("just text")
    with pytest.raises(DocumentError, match="not a PDF"):
        load_document(path)
