"""Long documents of an exact token length, made from the public-domain prose shipped in this repo.

The source is the 1911 Encyclopaedia Britannica article on Shakespeare (public domain) in two
copies the repository already holds: `examples/shakespeare-britannica-1911.txt` and
`homer/data/calibration.txt` ('#' comment lines dropped). They are concatenated and repeated until
the wanted number of tokens is reached; an optional fact sentence goes in at a chosen depth, on a
sentence boundary. The memory and speed benchmarks only need real prose of a known length; nothing
here is meant for quality claims.
"""

from __future__ import annotations

from typing import Any

from benchmarks.common import ROOT

SOURCES = (
    ROOT / "examples" / "shakespeare-britannica-1911.txt",
    ROOT / "homer" / "data" / "calibration.txt",
)


def prose() -> str:
    """The source prose, once (about 40k tokens with SmolLM2's tokenizer)."""
    parts = []
    for path in SOURCES:
        lines = path.read_text(encoding="utf-8").splitlines()
        parts.append("\n".join(line for line in lines if not line.startswith("#")).strip())
    return "\n\n".join(parts)


def document_ids(tokenizer: Any, tokens: int) -> list[int]:
    """Exactly `tokens` token ids of prose (the source repeated as often as needed)."""
    once = list(tokenizer(prose() + "\n\n", add_special_tokens=False)["input_ids"])
    ids: list[int] = []
    while len(ids) < tokens:
        ids += once
    return ids[:tokens]


def document(tokenizer: Any, tokens: int, fact: str | None = None, depth: float = 0.5) -> str:
    """About `tokens` tokens of prose as text, with `fact` after the sentence at `depth`.

    Decoding a prefix of token ids and encoding it again can differ by a token or two at the
    cut; callers that need the exact count should measure it on the returned text.
    """
    text = str(tokenizer.decode(document_ids(tokenizer, tokens)))
    if fact is None:
        return text
    at = text.find(". ", int(len(text) * depth))
    at = len(text) // 2 if at < 0 else at + 2
    return text[:at] + fact.strip() + " " + text[at:]
