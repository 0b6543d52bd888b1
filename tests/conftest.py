"""Shared fixtures: every test gets its own HOMER_HOME; one tiny random model, calibrated once."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from typer.testing import CliRunner

import homer
from tests.tiny import make_tiny_model_dir


@pytest.fixture(autouse=True)
def homer_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Point HOMER_HOME at a fresh temp dir so no test touches the user's store (or server)."""
    home = tmp_path / "homer-home"
    monkeypatch.setenv("HOMER_HOME", str(home))
    monkeypatch.delenv("HOMER_MODEL", raising=False)
    monkeypatch.delenv("HOMER_DEBUG", raising=False)
    # A `homer serve` left running on this machine must not answer the tests' `homer ask`.
    monkeypatch.setenv("HOMER_SERVER", "off")
    monkeypatch.delenv("HOMER_API_KEY", raising=False)
    return home


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny random Llama (GQA) and its tokenizer saved with `save_pretrained`."""
    return make_tiny_model_dir(tmp_path_factory.mktemp("tiny-llama"), arch="llama")


@pytest.fixture(scope="module")
def model(tiny_model_dir: Path) -> homer.LoadedModel:
    """The tiny model loaded through the library's use-case, once per test module."""
    return homer.load_model(homer.ModelChoice(name=str(tiny_model_dir), device="cpu"))


#: `--max-chunk` every CLI test uses with the tiny model (its window is 256).
MAX_CHUNK = "200"


@pytest.fixture(scope="session")
def calibrated(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Calibrate the tiny model once through `homer calibrate`; tests copy the result."""
    from homer_cli.main import app

    home = tmp_path_factory.mktemp("calibrated-home")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("HOMER_HOME", str(home))
        args = ["calibrate", "--model", str(tiny_model_dir), "--max-chunk", MAX_CHUNK]
        result = CliRunner().invoke(app, args)
        assert result.exit_code == 0, (result.output, result.exception)
        assert Path(result.stdout.strip()).is_file()
    return home / "calibration"


@pytest.fixture
def engine_home(calibrated: Path, homer_home: Path) -> Path:
    """This test's HOMER_HOME, with the tiny model's calibration already in place."""
    shutil.copytree(calibrated, homer_home / "calibration")
    return homer_home
