"""The dtype per phase: on the CPU bfloat16 to compress, float32 to decode, caches compatible."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

import homer
from homer.precision import CPU_POLICY, DEVICE_DEFAULT, dtype_for, policy_for
from homer.store import Store
from homer.warm import PoolSettings
from homer_cli.main import app
from tests.conftest import MAX_CHUNK


def test_policy_per_phase_and_device() -> None:
    assert dtype_for("compress", "cpu", None) == "bfloat16"
    assert dtype_for("decode", "cpu", None) == "float32"
    assert dtype_for("decode", "cpu", "auto") == "float32"
    assert dtype_for(None, "cpu", None) is None  # a model used for both: the device's default
    assert dtype_for("decode", "cpu", "bfloat16") == "bfloat16"  # --dtype wins everywhere
    assert policy_for("cpu") is CPU_POLICY
    for gpu in ("cuda", "cuda:1", "auto"):  # on a GPU nothing changes
        assert policy_for(gpu) is DEVICE_DEFAULT
        assert DEVICE_DEFAULT.dtype("compress") is None and DEVICE_DEFAULT.dtype("decode") is None


def test_models_load_in_their_phase_dtype(tiny_model_dir: Path) -> None:
    choice = homer.ModelChoice(name=str(tiny_model_dir), device="cpu")
    assert homer.load_model(choice).dtype == torch.bfloat16
    for phase, dtype in (("compress", torch.bfloat16), ("decode", torch.float32)):
        loaded = homer.load_model(homer.ModelChoice(str(tiny_model_dir), "cpu", phase=phase))
        assert loaded.dtype == dtype
    pinned = homer.ModelChoice(str(tiny_model_dir), "cpu", "float32", phase="compress")
    assert homer.load_model(pinned).dtype == torch.float32
    assert PoolSettings(device="cpu").choice("m", "decode").phase == "decode"


def test_cli_ingests_in_bfloat16_and_answers_in_float32(
    tiny_model_dir: Path, engine_home: Path
) -> None:
    runner = CliRunner()
    text = "The key is 4711. " + "Words and more words about nothing much. " * 40
    ingest = ["ingest", "-", "--model", str(tiny_model_dir), "--max-chunk", MAX_CHUNK]
    result = runner.invoke(app, ingest, input=text)
    assert result.exit_code == 0, (result.output, result.exception)
    name = result.stdout.strip()
    record = Store().record(name)
    assert record.meta["dtype"] == "bfloat16"  # saved as built: old and new caches read alike
    # Asking converts the bfloat16 cache to float32 once, exactly, and answers as --dtype
    # float32 does.
    decode = homer.load_model(homer.ModelChoice(str(tiny_model_dir), "cpu", phase="decode"))
    opened = homer.open_cache(decode, name)
    assert opened.cache.dtype == torch.float32
    saved = Store().load(name)[0]
    assert torch.equal(saved.keys[0].float(), opened.cache.keys[0])
    ask = ["ask", "What is the key?", "-c", name, "--max-tokens", "4"]
    default = runner.invoke(app, ask)
    pinned = runner.invoke(app, [*ask, "--dtype", "float32"])
    assert default.exit_code == 0, (default.output, default.exception)
    assert default.stdout == pinned.stdout


@pytest.mark.parametrize("phase", ["compress", "decode"])
def test_phase_is_a_typed_field(phase: str) -> None:
    assert homer.ModelChoice(phase=phase).phase == phase  # type: ignore[arg-type]
