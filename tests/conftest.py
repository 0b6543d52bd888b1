"""Shared fixtures: every test gets its own HOMER_HOME; one tiny random model per session."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.tiny import make_tiny_model_dir


@pytest.fixture(autouse=True)
def homer_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Point HOMER_HOME at a fresh temp dir so no test touches the user's store."""
    home = tmp_path / "homer-home"
    monkeypatch.setenv("HOMER_HOME", str(home))
    monkeypatch.delenv("HOMER_MODEL", raising=False)
    monkeypatch.delenv("HOMER_DEBUG", raising=False)
    return home


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny random Llama (GQA) and its tokenizer saved with `save_pretrained`."""
    return make_tiny_model_dir(tmp_path_factory.mktemp("tiny-llama"), arch="llama")
