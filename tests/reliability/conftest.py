"""Fixtures of the reliability suite: a fork server, a real cache built once, sample documents."""

from __future__ import annotations

import random
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import MAX_CHUNK
from tests.reliability.harness import ForkServer, invoke

_TEXT = "the captain sailed across a sea with his brother and a crew who read books of the library"
WORDS = _TEXT.split(" ")


def story(seed: int, words: int = 150) -> str:
    """A seeded random text of `words` words with a passkey in it."""
    rng = random.Random(seed)
    text = " ".join(rng.choice(WORDS) for _ in range(words))
    return f"{text[:300]} The passkey is {71234 + seed}. {text[300:]}"


@pytest.fixture
def document(tmp_path: Path) -> Path:
    """A small text document (a few hundred tokens for the tiny model)."""
    path = tmp_path / "story.txt"
    path.write_text(story(0), encoding="utf-8")
    return path


@pytest.fixture(scope="session")
def built_store(
    tiny_model_dir: Path, calibrated: Path, tmp_path_factory: pytest.TempPathFactory
) -> Path:
    """A store holding one real cache, `book`, built by `homer ingest` with the tiny model."""
    home = tmp_path_factory.mktemp("built-home")
    shutil.copytree(calibrated, home / "calibration")
    doc = home / "book.txt"
    doc.write_text(story(1), encoding="utf-8")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("HOMER_HOME", str(home))
        args = ["--model", str(tiny_model_dir), "--max-chunk", MAX_CHUNK, "--name", "book"]
        result = invoke("ingest", str(doc), *args)
        assert result.exit_code == 0, (result.output, result.exception)
    return home / "caches"


@pytest.fixture
def book(built_store: Path, engine_home: Path) -> Path:
    """This test's store holds a copy of the real cache `book`; returns its folder."""
    shutil.copytree(built_store, engine_home / "caches", ignore=shutil.ignore_patterns(".locks"))
    return engine_home / "caches" / "book"


@pytest.fixture(scope="session")
def forkserver() -> Iterator[ForkServer]:
    """One fork server for the session (imports torch and transformers once)."""
    server = ForkServer()
    yield server
    server.close()
