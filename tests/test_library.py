"""A library of documents: finding them, ingesting many, ranking and joining caches."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

import homer
from homer import HomerConfig, compress
from homer.adapter import output_cache
from homer.calibration import calibration_text
from homer.joining import JoinTooLongError, join_caches
from homer.library import (
    NoDocumentsError,
    choose_caches,
    find_documents,
    ingest_many,
    open_joined,
    shard_of,
)
from homer.routing import bm25_scores, rank
from tests.conftest import MAX_CHUNK

TEXT = calibration_text()
CONFIG = HomerConfig(max_chunk_len=int(MAX_CHUNK), target_len=64)


# ----------------------------------------------------------------------------- routing


def test_bm25_ranks_the_document_that_shares_the_rare_words() -> None:
    docs = [
        "the ship sailed and the crew sang about the sea",
        "the lighthouse keeper Orlan Venner counted 48213 ships",
        "the the the sea sea sea",
    ]
    assert rank("Which number did Orlan Venner count?", docs)[0] == 1
    scores = bm25_scores("lighthouse", docs)
    assert scores[1] > 0 and scores[0] == scores[2] == 0
    assert bm25_scores("anything", []) == []


# ----------------------------------------------------------------------------- finding documents


def test_find_documents_searches_folders_keeps_order_and_skips_the_rest(tmp_path: Path) -> None:
    shelf = tmp_path / "shelf"
    (shelf / "sub").mkdir(parents=True)
    (shelf / ".hidden").mkdir()
    for name in ("b.txt", "a.md", "sub/c.pdf", "notes.bin", ".hidden/d.txt", ".e.txt"):
        (shelf / name).write_text("x")
    alone = tmp_path / "data.weird"
    alone.write_text("y")
    found = find_documents([shelf, alone, shelf / "b.txt", str(shelf / "*.md")])
    assert found == [shelf / "a.md", shelf / "b.txt", shelf / "sub/c.pdf", alone]
    with pytest.raises(NoDocumentsError, match="nope"):
        find_documents([tmp_path / "nope"])
    (tmp_path / "empty").mkdir()
    with pytest.raises(NoDocumentsError, match="no documents"):
        find_documents([tmp_path / "empty"])


def test_shards_split_a_library_between_processes_exactly_once() -> None:
    items = [Path(str(i)) for i in range(7)]
    shares = [shard_of(items, i, 3) for i in range(3)]
    assert sorted(p for share in shares for p in share) == sorted(items)
    assert [len(s) for s in shares] == [3, 2, 2]
    with pytest.raises(ValueError):
        shard_of(items, 3, 3)


# ----------------------------------------------------------------------------- joining caches


@pytest.fixture(scope="module")
def tiny(tiny_model_dir: Path) -> tuple[Any, Any]:
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32)
    return model.eval(), AutoTokenizer.from_pretrained(tiny_model_dir)


def test_a_joined_cache_reads_each_document_as_if_it_came_later(tiny: tuple[Any, Any]) -> None:
    """The second cache's part of a join is what the model caches for that document's tokens
    read alone at the later positions: keys turned exactly, values unchanged."""
    model, tokenizer = tiny
    config = HomerConfig(max_chunk_len=256)
    first = compress(model, tokenizer, TEXT[:60], config)
    second = compress(model, tokenizer, TEXT[1000:1050], config)
    assert first.info.num_chunks == second.info.num_chunks == 1  # plain prefills, no pruning
    joined = join_caches(model, [first, second], room=16)
    assert joined.length == first.length + second.length
    assert joined.positions.tolist() == list(range(joined.length))
    assert torch.equal(joined.token_ids, torch.cat([first.token_ids, second.token_ids]))

    ids = second.token_ids.unsqueeze(0)
    later = torch.arange(first.length, joined.length).unsqueeze(0)
    with torch.inference_mode():
        out = model(input_ids=ids, position_ids=later, use_cache=True)
    plain = output_cache(out)
    for layer, (k, v) in enumerate(zip(joined.keys, joined.values, strict=True)):
        plain_k, plain_v = plain.layers[layer].keys, plain.layers[layer].values
        torch.testing.assert_close(k[:, :, first.length :], plain_k, atol=1e-4, rtol=1e-4)
        torch.testing.assert_close(v[:, :, first.length :], plain_v, atol=1e-4, rtol=1e-4)
        assert torch.equal(k[:, :, : first.length], first.keys[layer])


def test_joining_refuses_caches_that_leave_no_room(tiny: tuple[Any, Any]) -> None:
    model, tokenizer = tiny
    cache = compress(model, tokenizer, TEXT[:3000], HomerConfig(max_chunk_len=128))
    with pytest.raises(JoinTooLongError, match="leave no room") as refused:
        join_caches(model, [cache, cache], room=64)  # 2 x 128 + 64 > the 256-token window
    assert refused.value.lengths == [128, 128] and refused.value.window == 256
    assert join_caches(model, [cache]) is cache
    assert join_caches(model, [cache, cache], room=0).length == 256


# ----------------------------------------------------------------------------- many documents


def test_a_batch_saves_each_document_once_reports_failures_and_resumes(
    model: homer.LoadedModel, tmp_path: Path, engine_home: Path
) -> None:
    shelf = tmp_path / "shelf"
    shelf.mkdir()
    (shelf / "one.txt").write_text(TEXT[:1500])
    (shelf / "two.md").write_text(TEXT[2000:3500])
    (shelf / "empty.txt").write_text("   \n")
    (shelf / "same-as-one.txt").write_text(TEXT[:1500])
    paths = find_documents([shelf])
    first = ingest_many(paths[:2], model, config=CONFIG)  # an interrupted run
    assert [o.status for o in first] == ["failed", "saved"]
    assert "empty" in (first[0].error or "")
    done = ingest_many(paths, model, config=CONFIG)
    status = {o.path.name: o.status for o in done}
    assert status == {
        "empty.txt": "failed",
        "one.txt": "reused",
        "same-as-one.txt": "reused",  # the same content: the same cache
        "two.md": "saved",
    }
    names = {o.path.name: o.name for o in done}
    assert names["one.txt"] == names["same-as-one.txt"]
    assert len(homer.Store().names()) == 2

    # Two documents joined answer from one cache; the router ranks by kept text.
    both = open_joined(model, [names["one.txt"], names["two.md"]], room=64)
    joined, records, view = both.cache, both.records, both.document
    assert [r.name for r in records] == [names["one.txt"], names["two.md"]]
    assert joined.length == sum(r.cache_tokens for r in records)
    # The joined cache's spans point into both texts, each kept token at its own words.
    assert view is not None and joined.spans is not None
    assert [p.name for p in view.parts] == [r.name for r in records]
    for (start, end), token in zip(joined.spans.tolist(), joined.token_ids.tolist(), strict=True):
        if start >= 0:
            piece = str(model.tokenizer.decode([token])).strip()
            assert piece in view.text[start:end] or not piece
    assert view.text[view.offsets[1] :] == TEXT[2000:3500]
    words = TEXT[2000:3500].split()
    question = f"What about {words[len(words) // 2]} {words[len(words) // 2 + 1]}?"
    choice = choose_caches(homer.Store(), question, model, limit=1, room=64)
    assert len(choice.names) == 1 and set(choice.scores) == set(names.values()) - {None}


def test_a_question_across_documents_cites_each_passage_in_its_own_document(
    model: homer.LoadedModel, tmp_path: Path, engine_home: Path
) -> None:
    from homer.grounding import Citation, Grounding, reread_text

    (tmp_path / "harbour.txt").write_text(TEXT[:1500])
    (tmp_path / "mill.txt").write_text(
        "The miller Orlan Venner kept 48213 sacks.\n\n" + TEXT[3000:4200]
    )
    names = [
        homer.ingest(tmp_path / f, model, config=CONFIG).name for f in ("harbour.txt", "mill.txt")
    ]
    both = open_joined(model, names, room=64)
    assert both.document is not None
    with pytest.raises(ValueError, match="search names caches not joined: nowhere"):
        open_joined(model, names, room=64, search=["nowhere"])
    stream = homer.ask(
        model,
        both.cache,
        "How many sacks did Orlan Venner keep?",
        homer.Sampling(max_new_tokens=4),
        grounding=Grounding(cite=3, reread=True, reread_tokens=64, method="lexical"),
        document=both.document,
    )
    "".join(stream)
    assert stream.citations and {c.source for c in stream.citations} <= set(names)
    best = stream.citations[0]
    assert best.source == names[1] and "Orlan Venner" in best.text  # ranked by its words
    assert best.start == 0 and best.lines[0] == 1  # counted within its own document
    assert best.where.startswith(f"{names[1]}, line")
    assert best.to_dict()["document"] == names[1]
    assert Citation.from_dict(best.to_dict()).source == names[1]
    # Re-read passages are labelled by their document (a budget the tiny window cannot give).
    assert stream.evidence is not None
    harbour = next(p for p in stream.evidence.passages if p.start < both.document.offsets[1])
    text = reread_text(model.tokenizer, both.document, [stream.evidence.passages[0], harbour], 2000)
    assert f"[{names[1]}, line" in text and f"[{names[0]}, line" in text


def test_joined_views_keep_passages_inside_their_documents() -> None:
    from homer.evidence import Passage
    from homer.grounding import DocumentView

    first = DocumentView("alpha one.\nalpha two.\n" * 40, name="a")
    second = DocumentView("beta one.\nbeta two.\n" * 40, name="b")
    view = DocumentView.joined([first, second])
    assert view.offsets == [0, len(first.text) + 2]
    bounds = view.passages(100)
    for start, end in bounds:
        inside = [i for i, at in enumerate(view.offsets) if at <= start]
        part = inside[-1]
        assert end <= view.offsets[part] + len(view.parts[part].text)
    assert view.passages(100) == bounds and bounds[0][0] == 0
    only_b = DocumentView.joined([first, second], searched=[1]).passages(100)
    assert only_b == [b for b in bounds if b[0] >= view.offsets[1]]  # a's passages left out
    with pytest.raises(ValueError, match="outside"):
        DocumentView.joined([first, second], searched=[2])
    citation = view.citation(Passage(view.offsets[1] + 10, view.offsets[1] + 19, 0.5))
    assert (citation.source, citation.start, citation.lines) == ("b", 10, (2, 2))
    assert citation.text == "beta two."


# ----------------------------------------------------------------------------- the command line


def test_cli_ingests_a_folder_then_asks_across_documents(
    tiny_model_dir: Path, tmp_path: Path, engine_home: Path
) -> None:
    import json

    from typer.testing import CliRunner

    from homer_cli.main import app

    shelf = tmp_path / "shelf"
    shelf.mkdir()
    (shelf / "harbour.txt").write_text(TEXT[:1500])
    (shelf / "mill.txt").write_text(TEXT[3000:4500])
    (shelf / "broken.pdf").write_text("not a pdf")
    runner = CliRunner()
    model = str(tiny_model_dir)
    common = ["--model", model, "--max-chunk", MAX_CHUNK, "--budget", "64"]
    result = runner.invoke(app, ["ingest", str(shelf), *common, "--json"])
    assert result.exit_code == 1, result.output  # one document failed, the others are saved
    rows = json.loads(result.stdout)
    assert [(Path(r["path"]).name, r["status"]) for r in rows] == [
        ("broken.pdf", "failed"),
        ("harbour.txt", "saved"),
        ("mill.txt", "saved"),
    ]
    assert "1 of 3 documents failed" in result.stderr
    names = [r["name"] for r in rows if r["name"]]

    again = runner.invoke(
        app, ["ingest", str(shelf / "harbour.txt"), str(shelf / "mill.txt"), *common]
    )
    assert again.exit_code == 0, again.output
    assert again.stdout.count("reused") == 2

    both = runner.invoke(
        app, ["ask", "Who?", "-c", names[0], "-c", names[1], "-n", "3", "--json", "--local"]
    )
    assert both.exit_code == 0, both.output
    payload = json.loads(both.stdout)
    assert payload["caches"] == names and payload["tokens"]["cache"] == 128

    chosen = runner.invoke(app, ["ask", "Who?", "--all", "-n", "3", "--json", "--local"])
    assert chosen.exit_code == 0, chosen.output
    assert set(json.loads(chosen.stdout)["caches"]) <= set(names)

    # Citations across documents name theirs; --all cites the router's first choice only.
    cited = runner.invoke(
        app, ["ask", "Who?", "-c", names[0], "-c", names[1], "-n", "3", "--json", "--cite"]
    )
    assert cited.exit_code == 0, cited.output
    documents = {c["document"] for c in json.loads(cited.stdout)["citations"]}
    assert documents and documents <= set(names)
    picked = runner.invoke(app, ["ask", "Who?", "--all", "-n", "3", "--json", "--cite"])
    assert picked.exit_code == 0, picked.output
    reply = json.loads(picked.stdout)
    assert len(reply["caches"]) == 2  # both fit the window; the first choice is read last
    assert {c["document"] for c in reply["citations"]} == {reply["caches"][-1]}

    bad = runner.invoke(app, ["ingest", str(shelf), "--name", "x", *common])
    assert bad.exit_code == 1 and "--name takes one document" in bad.stderr


def _free_port() -> int:
    """A TCP port nothing listens on now (the OS picks it)."""
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def test_two_processes_under_accelerate_launch_split_a_library_and_resume_after_a_kill(
    tiny_model_dir: Path, tmp_path: Path, engine_home: Path
) -> None:
    import os
    import signal
    import subprocess
    import sys
    import time

    shelf = tmp_path / "shelf"
    shelf.mkdir()
    for i in range(6):
        (shelf / f"doc{i}.txt").write_text(TEXT[i * 1800 : i * 1800 + 1500])
    command = [
        sys.executable,
        "-m",
        "accelerate.commands.launch",
        "--multi_gpu",  # several processes through torchrun; on a CPU-only machine, CPU ones
        "--num_processes",
        "2",
        "--num_machines",
        "1",
        "--mixed_precision",
        "no",
        "--dynamo_backend",
        "no",
        "--main_process_port",
        str(29500 + os.getpid() % 1000),
        "-m",
        "homer_cli",
        "ingest",
        str(shelf),
        "--model",
        str(tiny_model_dir),
        "--max-chunk",
        MAX_CHUNK,
        "--json",
    ]
    env = {**os.environ, "HOMER_HOME": str(engine_home)}
    store = homer.Store()

    # Killed as soon as the first cache is saved: nothing half-written, the rest still to do.
    proc = subprocess.Popen(
        command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True
    )
    deadline = time.monotonic() + 120
    while not store.names() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    saved_before = set(store.names())
    assert 1 <= len(saved_before) < 6

    # A fresh rendezvous port: the killed launch's may still be held, and a second torchrun
    # that cannot bind it aborts.
    port = command.index("--main_process_port") + 1
    command[port] = str(_free_port())
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    # A failure shows the ranks' own errors (first) and torchrun's summary (last).
    assert done.returncode == 0, done.stderr[:2000] + " … " + done.stderr[-2000:]
    rows = json.loads(done.stdout.strip().splitlines()[-1])  # the main process prints them all
    assert sorted(Path(r["path"]).name for r in rows) == [f"doc{i}.txt" for i in range(6)]
    assert {r["name"] for r in rows if r["status"] == "reused"} >= saved_before
    assert len(store.names()) == 6  # every document saved exactly once
    for name in store.names():
        store.record(name)  # and every one reads back
