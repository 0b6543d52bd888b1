"""Calibration is reused wherever that is exact, and says why when it must be measured again."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer
from typer.testing import CliRunner

from homer import HomerConfig, compress
from homer.calibration import CHUNK_SIZE_REASON, CalibrationNeeded, calibrate, calibration_text
from homer.tree import ProgressEvent
from homer_cli.main import _calibrating, app
from tests.tiny import make_tiny_model_dir


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_tiny_model_dir(tmp_path_factory.mktemp("tiny-calibration"), num_layers=3)


def load(path: Path, dtype: torch.dtype = torch.float32) -> tuple[Any, Any]:
    model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype).eval()
    return model, AutoTokenizer.from_pretrained(path)


def measure(model: Any, tokenizer: Any, config: HomerConfig, **kw: Any) -> list[CalibrationNeeded]:
    """The `CalibrationNeeded` notices one `calibrate` call sends (none: a saved bias was used)."""
    needs: list[CalibrationNeeded] = []
    calibrate(model, tokenizer, config, samples=2, on_measure=needs.append, **kw)
    return needs


def test_first_calibration_says_so_and_later_ones_reuse_it(model_dir: Path) -> None:
    model, tokenizer = load(model_dir)
    (first,) = measure(model, tokenizer, HomerConfig(max_chunk_len=200))
    assert first == CalibrationNeeded(200, 2, "the first calibration of this model", ())
    # What the bias does not depend on reuses it: the budget, and the dtype of the same weights.
    assert measure(model, tokenizer, HomerConfig(max_chunk_len=200, target_len=100)) == []
    bf16, _ = load(model_dir, torch.bfloat16)
    assert measure(bf16, tokenizer, HomerConfig(max_chunk_len=200)) == []
    (forced,) = measure(model, tokenizer, HomerConfig(max_chunk_len=200), force=True)
    assert forced.reason == "measuring again as asked"


def test_another_chunk_size_is_measured_and_says_why(model_dir: Path) -> None:
    model, tokenizer = load(model_dir)
    measure(model, tokenizer, HomerConfig(max_chunk_len=200))
    (need,) = measure(model, tokenizer, HomerConfig(max_chunk_len=160))
    assert need == CalibrationNeeded(160, 2, CHUNK_SIZE_REASON, (200,))
    (need,) = measure(model, tokenizer, HomerConfig(max_chunk_len=180))
    assert need.measured_chunk_lens == (160, 200)
    assert measure(model, tokenizer, HomerConfig(max_chunk_len=160)) == []


def test_a_smaller_chunk_bias_is_not_a_prefix_of_a_larger_one(model_dir: Path) -> None:
    """Why reuse across chunk sizes would not be exact: the shared distances differ too."""
    model, tokenizer = load(model_dir)
    small = calibrate(model, tokenizer, HomerConfig(max_chunk_len=160), samples=2).bias
    large = calibrate(model, tokenizer, HomerConfig(max_chunk_len=200), samples=2).bias
    assert small.shape == (3, 160) and large.shape == (3, 200)
    assert not torch.allclose(small, large[:, :160], atol=1e-3)


def test_compress_sends_the_reason_before_the_first_sample(model_dir: Path) -> None:
    model, tokenizer = load(model_dir)
    events: list[ProgressEvent] = []
    config = HomerConfig(max_chunk_len=160, target_len=100)
    compress(model, tokenizer, calibration_text()[:500], config, progress=events.append)
    calibrating = [e for e in events if e.stage == "calibrate"]
    assert calibrating[0].done == 0 and calibrating[0].calibration is not None
    assert calibrating[0].calibration.max_chunk_len == 160
    assert all(e.calibration is None for e in calibrating[1:])
    assert [e.done for e in calibrating[1:]] == list(range(1, calibrating[0].total + 1))
    events.clear()
    compress(model, tokenizer, calibration_text()[:500], config, progress=events.append)
    assert not [e for e in events if e.stage == "calibrate"]  # the saved bias, silently


def test_cli_line_speaks_in_flags() -> None:
    need = CalibrationNeeded(2048, 8, CHUNK_SIZE_REASON, (4096,))
    assert _calibrating(need) == (
        f"calibrating for --max-chunk 2048 ({CHUNK_SIZE_REASON}; measured so far for "
        "--max-chunk 4096)"
    )
    first = CalibrationNeeded(4096, 8, "the first calibration of this model", ())
    assert _calibrating(first) == (
        "calibrating for --max-chunk 4096 (the first calibration of this model)"
    )


def test_cli_says_why_on_a_terminal(model_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("homer_cli.main._stderr_is_tty", lambda: True)
    runner = CliRunner()
    args = ["calibrate", "--model", str(model_dir), "--max-chunk"]

    def said(size: str) -> str:
        result = runner.invoke(app, [*args, size])
        assert result.exit_code == 0, (result.output, result.exception)
        return " ".join(result.stderr.split())  # rich wraps lines at the terminal's width

    assert "calibrating for --max-chunk 200 (the first calibration of this model)" in said("200")
    again = said("160")
    assert "calibrating for --max-chunk 160 (calibration depends on the chunk size" in again
    assert "measured so far for --max-chunk 200)" in again
    assert "calibrating for" not in said("160")
