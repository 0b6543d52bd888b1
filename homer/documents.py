"""Reading a document (PDF, UTF-8 text or markdown, or stdin) into plain text.

`load_document` returns a `Document`: the text, where it came from, its kind, the SHA-256 of the
text (the store's content address uses it) and, for PDFs, the character offset at which each page
starts. Every way a file can be unusable becomes a one-line `DocumentError` that names the file and,
where there is one, the fix.

Non-UTF-8 text is decoded with replacement characters (U+FFFD), never refused, and a `logging`
warning says how many bytes could not be decoded: a mostly-readable file with a few stray Latin-1
bytes is still worth reading. UTF-16 (with or without a byte-order mark) is refused with the
`iconv` command that converts it. Text is read in blocks through an incremental decoder and joined
once at the end, so reading a file of N bytes peaks near 2N bytes of memory (the blocks, then the
joined text), never several copies.

This module knows nothing about tokenizers, models or caches.
"""

from __future__ import annotations

import codecs
import hashlib
import io
import logging
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO, Literal

from homer.errors import DocumentError

logger = logging.getLogger(__name__)

DocumentKind = Literal["pdf", "text"]

_BLOCK = 1 << 20  # bytes read at a time from text files
_PDF_MAGIC = b"%PDF-"
# Control bytes that never appear in text files (tab, newline, CR, FF, ESC excluded).
_BINARY_BYTES = bytes(range(0, 8)) + bytes(range(14, 27)) + bytes(range(28, 32))
_BINARY_SHARE = 0.10  # more than this share of control bytes in the first block: binary


@dataclass(frozen=True)
class Document:
    """A document's text and where it came from.

    Attributes:
        text: the full text (PDF pages separated by a blank line).
        source: a display name: the file name, or `"stdin"`.
        kind: `"pdf"` or `"text"`.
        sha256: hex SHA-256 of `text` encoded as UTF-8.
        page_map: for PDFs, the offset in `text` (in characters) where each page starts; empty
            for text.
    """

    text: str
    source: str
    kind: DocumentKind
    sha256: str
    page_map: list[int] = field(default_factory=list)

    @property
    def num_pages(self) -> int:
        return len(self.page_map)

    def page_of(self, char_offset: int) -> int | None:
        """1-based page holding `char_offset`, or None for text documents."""
        if not self.page_map:
            return None
        page = 0
        for i, start in enumerate(self.page_map):
            if start <= char_offset:
                page = i
            else:
                break
        return page + 1


def load_document(path_or_dash: str | Path, *, password: str | None = None) -> Document:
    """Read a PDF, a text/markdown file, or stdin (`"-"`) into a `Document`.

    PDFs are recognised by their `%PDF-` signature (so a PDF piped through stdin works too).

    Raises:
        DocumentError: missing, a directory, unreadable, empty, whitespace only, binary, a corrupt
            or encrypted PDF without the right password, or a PDF with no extractable text.
    """
    if str(path_or_dash) == "-":
        return _load_stdin(password)
    path = Path(path_or_dash).expanduser()
    name = str(path_or_dash)
    if not path.exists():
        raise DocumentError(f"{name}: no such file")
    if path.is_dir():
        raise DocumentError(f"{name}: is a directory, not a document file")
    if not path.is_file():
        raise DocumentError(f"{name}: not a regular file")
    try:
        with path.open("rb") as fh:
            head = fh.read(len(_PDF_MAGIC))
            fh.seek(0)
            if head == _PDF_MAGIC:
                return _load_pdf(fh, path.name, password)
            if path.suffix.lower() == ".pdf":
                raise DocumentError(f"{name}: has a .pdf name but is not a PDF (no %PDF- header)")
            return _load_text(fh, path.name)
    except PermissionError as exc:
        raise DocumentError(f"{name}: permission denied; check the file's permissions") from exc
    except IsADirectoryError as exc:
        raise DocumentError(f"{name}: is a directory, not a document file") from exc
    except OSError as exc:
        raise DocumentError(f"{name}: cannot be read ({exc.strerror or exc})") from exc


def _load_stdin(password: str | None) -> Document:
    stream = sys.stdin.buffer if hasattr(sys.stdin, "buffer") else None
    if stream is None:  # a text-only stdin (some test harnesses): encode what it gives
        data = sys.stdin.read().encode("utf-8")
        stream = io.BytesIO(data)
    if sys.stdin.isatty():
        logger.warning("reading the document from the terminal; end it with Ctrl-D")
    head = stream.peek(len(_PDF_MAGIC))[: len(_PDF_MAGIC)] if hasattr(stream, "peek") else b""
    if head == _PDF_MAGIC or not hasattr(stream, "peek"):
        data = stream.read()
        buffer = io.BytesIO(data)
        if data.startswith(_PDF_MAGIC):
            return _load_pdf(buffer, "stdin", password)
        return _load_text(buffer, "stdin")
    return _load_text(stream, "stdin")


def _load_text(fh: BinaryIO, source: str) -> Document:
    """Decode `fh` as UTF-8 in blocks, replacing undecodable bytes (with a warning)."""
    decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
    digest = hashlib.sha256()
    parts: list[str] = []
    replaced = 0
    first = True
    has_text = False
    while True:
        block = fh.read(_BLOCK)
        if first:
            first = False
            if block.startswith(codecs.BOM_UTF8):
                block = block[len(codecs.BOM_UTF8) :]
            elif block[:2] in (codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE):
                raise DocumentError(
                    f"{source}: is UTF-16 text; convert it to UTF-8 first "
                    "(for example: iconv -f UTF-16 -t UTF-8)"
                )
            if _looks_utf16(block):
                raise DocumentError(
                    f"{source}: looks like UTF-16 text without a byte-order mark; convert it to "
                    "UTF-8 first (for example: iconv -f UTF-16LE -t UTF-8)"
                )
            if _looks_binary(block):
                raise DocumentError(
                    f"{source}: looks like a binary file, not text; homer reads PDF, text and "
                    "markdown"
                )
        final = not block
        text = decoder.decode(block, final=final)
        if text:
            replaced += text.count("\ufffd")
            digest.update(text.encode("utf-8"))
            has_text = has_text or not text.isspace()
            parts.append(text)
        if final:
            break
    if not has_text:  # checked per block: `full.strip()` would copy the whole text once more
        raise DocumentError(f"{source}: is empty (no text to read)")
    full = "".join(parts)
    del parts
    if replaced:
        logger.warning(
            "%s: %d byte sequence(s) are not valid UTF-8 and were replaced with U+FFFD",
            source,
            replaced,
        )
    return Document(text=full, source=source, kind="text", sha256=digest.hexdigest())


def _looks_utf16(block: bytes) -> bool:
    """UTF-16 without a BOM: NUL in (nearly) every other byte, and only there."""
    sample = block[:8192]
    half = len(sample) // 2
    if half < 8:
        return False
    lanes = sample[0 : 2 * half : 2], sample[1 : 2 * half : 2]
    zeros = [lane.count(0) for lane in lanes]
    if max(zeros) <= 0.4 * half or min(zeros) >= 0.02 * half:
        return False
    # The other lane must read as text (printable ASCII, whitespace or non-ASCII code units).
    text = lanes[zeros.index(min(zeros))]
    controls = sum(text.count(bytes([b])) for b in _BINARY_BYTES)
    return controls < 0.05 * half


def _looks_binary(block: bytes) -> bool:
    sample = block[:8192]
    if not sample:
        return False
    if b"\x00" in sample:
        return True
    control = sum(sample.count(bytes([b])) for b in _BINARY_BYTES)
    return control / len(sample) > _BINARY_SHARE


def _load_pdf(fh: BinaryIO, source: str, password: str | None) -> Document:
    """Extract the text of every page; a page that cannot be decoded is skipped with a warning."""
    from pypdf import PdfReader
    from pypdf.errors import DependencyError, FileNotDecryptedError, PdfReadError, PdfStreamError

    try:
        reader = PdfReader(fh)
        if reader.is_encrypted:
            if password is None:
                # Many PDFs are "encrypted" with an empty user password: try that first.
                if not reader.decrypt(""):
                    raise DocumentError(
                        f"{source}: the PDF is encrypted; pass its password with --password"
                    )
            elif not reader.decrypt(password):
                raise DocumentError(
                    f"{source}: wrong password for the encrypted PDF; check --password"
                )
        pages = list(reader.pages)
    except DocumentError:
        raise
    except DependencyError as exc:
        raise DocumentError(
            f"{source}: this PDF's encryption needs the cryptography package: "
            "pip install cryptography"
        ) from exc
    except FileNotDecryptedError as exc:
        raise DocumentError(
            f"{source}: the PDF is encrypted; pass its password with --password"
        ) from exc
    except (PdfReadError, PdfStreamError, ValueError, KeyError, TypeError, EOFError) as exc:
        raise DocumentError(f"{source}: corrupt or truncated PDF ({_first_line(exc)})") from exc

    texts: list[str] = []
    page_map: list[int] = []
    offset = 0
    failed = 0
    for number, page in enumerate(pages, start=1):
        try:
            text = page.extract_text() or ""
        except DependencyError as exc:
            raise DocumentError(
                f"{source}: this PDF needs the cryptography package: pip install cryptography"
            ) from exc
        except Exception as exc:  # pypdf raises many kinds on broken fonts and streams
            failed += 1
            logger.warning("%s: page %d has no readable text (%s)", source, number, exc)
            text = ""
        text = text.strip("\n")
        if texts:
            offset += 2  # the blank line joining pages
        page_map.append(offset)
        texts.append(text)
        offset += len(text)
    full = "\n\n".join(texts)
    if not pages:
        raise DocumentError(f"{source}: the PDF has no pages")
    if not full.strip():
        raise DocumentError(
            f"{source}: no extractable text in {len(pages)} page(s) (a scanned or image-only "
            "PDF?); run OCR on it first, for example: ocrmypdf in.pdf out.pdf"
        )
    if failed:
        logger.warning("%s: %d of %d page(s) could not be read", source, failed, len(pages))
    digest = hashlib.sha256(full.encode("utf-8")).hexdigest()
    return Document(text=full, source=source, kind="pdf", sha256=digest, page_map=page_map)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
