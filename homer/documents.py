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

What is read is bounded (`ReadLimits`: bytes, PDF pages, estimated tokens), each checked as early
as it can be: a file's size before reading it, stdin block by block as it arrives, a PDF's page
count before any page is extracted, the token estimate before any model work. Exceeding one is a
`DocumentTooLargeError` naming the limit. The defaults can be raised through `HOMER_MAX_BYTES`,
`HOMER_MAX_PAGES` and `HOMER_MAX_TOKENS` (0: no limit), or by passing `ReadLimits`.

This module knows nothing about tokenizers, models or caches.
"""

from __future__ import annotations

import codecs
import errno
import hashlib
import io
import logging
import os
import re
import sys
from bisect import bisect_right
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO, Literal

from homer.errors import DocumentError, DocumentTooLargeError

logger = logging.getLogger(__name__)

DocumentKind = Literal["pdf", "text"]

_BLOCK = 1 << 20  # bytes read at a time from text files
_PDF_MAGIC = b"%PDF-"
# Control bytes that never appear in text files (tab, newline, CR, FF, ESC excluded).
_BINARY_BYTES = bytes(range(0, 8)) + bytes(range(14, 27)) + bytes(range(28, 32))
_BINARY_SHARE = 0.10  # more than this share of control bytes in the first block: binary

#: Default reading limits. 64 MiB of text is about 16 million tokens, which a fast tokenizer needs
#: some 10 GB to hold (docs/RELIABILITY.md); 4 million tokens is already a long library shelf.
DEFAULT_MAX_BYTES = 64 * 1024 * 1024
DEFAULT_MAX_PAGES = 10_000
DEFAULT_MAX_TOKENS = 4_000_000
#: The environment variables that set `ReadLimits.from_env`.
LIMIT_ENV = {
    "max_bytes": "HOMER_MAX_BYTES",
    "max_pages": "HOMER_MAX_PAGES",
    "max_tokens": "HOMER_MAX_TOKENS",
}
# Pre-tokens of a byte-level BPE (a word, or one punctuation mark): each is at least one token.
_PRE_TOKEN = re.compile(r"\w+|[^\w\s]")


@dataclass(frozen=True)
class ReadLimits:
    """How much of a document is read at most; 0 means no limit.

    Attributes:
        max_bytes: bytes of the file or of stdin (a PDF's file size included).
        max_pages: pages of a PDF, checked before any page is extracted.
        max_tokens: tokens, estimated from the text before any model work (`estimate_tokens`).
    """

    max_bytes: int = DEFAULT_MAX_BYTES
    max_pages: int = DEFAULT_MAX_PAGES
    max_tokens: int = DEFAULT_MAX_TOKENS

    def __post_init__(self) -> None:
        for name in LIMIT_ENV:
            value = getattr(self, name)
            if not isinstance(value, int) or value < 0:
                raise ValueError(f"{name} must be an integer >= 0 (0: no limit), got {value!r}")

    @classmethod
    def from_env(cls, **given: int | None) -> ReadLimits:
        """The limits `given` (None: not given), else `HOMER_MAX_BYTES` / `HOMER_MAX_PAGES` /
        `HOMER_MAX_TOKENS`, else the defaults.

        Raises:
            ValueError: a variable is set to something other than a whole number >= 0.
        """
        values: dict[str, int] = {}
        for name, variable in LIMIT_ENV.items():
            value = given.get(name)
            if value is None and os.environ.get(variable, "").strip():
                text = os.environ[variable].strip().replace("_", "")
                if not text.isdigit():
                    raise ValueError(f"{variable} must be a whole number >= 0, got {text!r}")
                value = int(text)
            if value is not None:
                values[name] = value
        return cls(**values)


def estimate_tokens(text: str) -> int:
    """A fast lower bound of `text`'s token count for a byte-level BPE tokenizer: its words
    and punctuation marks (each is at least one token), counted 1 MiB at a time."""
    count = 0
    for start in range(0, len(text), _BLOCK):
        # A word cut at a block edge counts twice: off by at most one per MiB.
        count += len(_PRE_TOKEN.findall(text, start, start + _BLOCK))
    return count


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
        return locate(char_offset, self.page_map) if self.page_map else None


def line_starts(text: str) -> list[int]:
    """Character offset where each line of `text` starts (line 1 at index 0)."""
    return [0, *(match.end() for match in re.finditer("\n", text))]


def locate(offset: int, starts: Sequence[int]) -> int:
    """1-based number of the line (or page) holding character `offset`, given where each
    starts (ascending, the first at 0)."""
    return max(bisect_right(starts, offset), 1)


def load_document(
    path_or_dash: str | Path, *, password: str | None = None, limits: ReadLimits | None = None
) -> Document:
    """Read a PDF, a text/markdown file, or stdin (`"-"`) into a `Document`.

    PDFs are recognised by their `%PDF-` signature (so a PDF piped through stdin works too).

    Args:
        limits: how much is read at most; None: `ReadLimits.from_env()`.

    Raises:
        DocumentTooLargeError: over one of `limits`.
        DocumentError: missing, a directory, unreadable, empty, whitespace only, binary, a corrupt
            or encrypted PDF without the right password, or a PDF with no extractable text.
    """
    limits = limits if limits is not None else ReadLimits.from_env()
    try:
        document = _load(path_or_dash, password, limits)
    except MemoryError:  # limits raised (or 0) past what this machine holds
        source = "stdin" if str(path_or_dash) == "-" else Path(path_or_dash).name
        raise DocumentError(
            f"{source}: too large to hold in this machine's memory; split it, or keep the "
            "reading limits (ReadLimits) below what the memory holds"
        ) from None
    if limits.max_tokens:
        tokens = estimate_tokens(document.text)
        if tokens > limits.max_tokens:
            raise DocumentTooLargeError(
                document.source, "tokens", limits.max_tokens, f"at least {tokens:,} tokens"
            )
    return document


def _load(path_or_dash: str | Path, password: str | None, limits: ReadLimits) -> Document:
    if str(path_or_dash) == "-":
        return _load_stdin(password, limits)
    path = Path(path_or_dash).expanduser()
    name = str(path_or_dash)
    try:
        path.stat()
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise DocumentError(f"{name}: a loop of symbolic links; point it at a file") from exc
        if path.is_symlink():
            missing = f"{name}: no such file (a symbolic link to a missing file)"
            raise DocumentError(missing) from exc
    if not path.exists():
        raise DocumentError(f"{name}: no such file")
    if path.is_dir():
        raise DocumentError(f"{name}: is a directory, not a document file")
    if not path.is_file():
        raise DocumentError(f"{name}: not a regular file")
    try:
        with path.open("rb") as fh:
            size = os.fstat(fh.fileno()).st_size
            if limits.max_bytes and size > limits.max_bytes:
                raise DocumentTooLargeError(path.name, "bytes", limits.max_bytes, f"{size:,} bytes")
            head = fh.read(len(_PDF_MAGIC))
            fh.seek(0)
            if head == _PDF_MAGIC:
                return _load_pdf(fh, path.name, password, limits)
            if path.suffix.lower() == ".pdf":
                raise DocumentError(f"{name}: has a .pdf name but is not a PDF (no %PDF- header)")
            return _load_text(fh, path.name, limits)
    except PermissionError as exc:
        raise DocumentError(f"{name}: permission denied; check the file's permissions") from exc
    except IsADirectoryError as exc:
        raise DocumentError(f"{name}: is a directory, not a document file") from exc
    except OSError as exc:
        raise DocumentError(f"{name}: cannot be read ({exc.strerror or exc})") from exc


def _load_stdin(password: str | None, limits: ReadLimits) -> Document:
    stream = sys.stdin.buffer if hasattr(sys.stdin, "buffer") else None
    if stream is None:  # a text-only stdin (some test harnesses): encode what it gives
        data = sys.stdin.read().encode("utf-8")
        stream = io.BytesIO(data)
    if sys.stdin.isatty():
        logger.warning("reading the document from the terminal; end it with Ctrl-D")
    head = stream.peek(len(_PDF_MAGIC))[: len(_PDF_MAGIC)] if hasattr(stream, "peek") else b""
    if head == _PDF_MAGIC or not hasattr(stream, "peek"):
        buffer = io.BytesIO(_read_bounded(stream, "stdin", limits))
        if buffer.getvalue().startswith(_PDF_MAGIC):
            return _load_pdf(buffer, "stdin", password, limits)
        return _load_text(buffer, "stdin", limits)
    return _load_text(stream, "stdin", limits)


def _read_bounded(stream: BinaryIO, source: str, limits: ReadLimits) -> bytes:
    """All of `stream`, read a block at a time, refused as soon as it passes `max_bytes`."""
    parts: list[bytes] = []
    total = 0
    while block := stream.read(_BLOCK):
        total += len(block)
        if limits.max_bytes and total > limits.max_bytes:
            raise DocumentTooLargeError(
                source, "bytes", limits.max_bytes, f"more than {limits.max_bytes:,} bytes"
            )
        parts.append(block)
    return b"".join(parts)


def _load_text(fh: BinaryIO, source: str, limits: ReadLimits) -> Document:
    """Decode `fh` as UTF-8 in blocks, replacing undecodable bytes (with a warning)."""
    decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
    digest = hashlib.sha256()
    parts: list[str] = []
    replaced = 0
    first = True
    has_text = False
    total = 0
    while True:
        block = fh.read(_BLOCK)
        total += len(block)
        if limits.max_bytes and total > limits.max_bytes:  # stdin has no size to check first
            raise DocumentTooLargeError(
                source, "bytes", limits.max_bytes, f"more than {limits.max_bytes:,} bytes"
            )
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
        if b"\x00" in block:  # past the sample `_looks_binary` saw; text never holds NUL
            raise DocumentError(
                f"{source}: holds NUL bytes (at byte {total - len(block) + block.index(0):,}), "
                "so it is a binary file, not text; homer reads PDF, text and markdown"
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


def _load_pdf(fh: BinaryIO, source: str, password: str | None, limits: ReadLimits) -> Document:
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
        # The page count the PDF claims is read without extracting anything; a page tree that
        # holds more pages than it claims is cut at the limit when flattened.
        claimed = len(reader.pages)
        if limits.max_pages and claimed > limits.max_pages:
            raise DocumentTooLargeError(source, "pages", limits.max_pages, f"{claimed:,} pages")
        pages = list(reader.pages)
        if limits.max_pages and len(pages) > limits.max_pages:
            raise DocumentTooLargeError(source, "pages", limits.max_pages, f"{len(pages):,} pages")
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
