"""Grounded answers: passages and their scores, re-reading, citations, "not in the document",
the cache format that makes them possible, and how the CLI and the server show them."""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

import homer
from homer import HomerConfig
from homer.calibration import calibration_text
from homer.evidence import (
    Passage,
    passage_scores,
    split_passages,
    strength,
    token_evidence,
    top_passages,
    within_budget,
)
from homer.grounding import Citation, DocumentView, GroundedStream, Grounding
from homer.service import Sampling
from homer.store import META_FILE, TEXT_FILE, Store
from homer_cli.main import app
from tests.conftest import MAX_CHUNK
from tests.pdfs import make_pdf

CONFIG = HomerConfig(max_chunk_len=int(MAX_CHUNK))
#: A cache of 64 tokens leaves room in the tiny model's 256-token window to re-read passages.
SMALL = HomerConfig(max_chunk_len=int(MAX_CHUNK), target_len=64)
QUESTION = "Who sailed across the sea?"
runner = CliRunner()


# ----------------------------------------------------------------------------- pure pieces


def test_passages_cover_the_text_and_end_at_sentences() -> None:
    text = " ".join(f"Sentence number {i} ends here." for i in range(200))
    bounds = split_passages(text, 100)
    assert bounds[0][0] == 0 and bounds[-1][1] == len(text)
    assert all(a[1] == b[0] for a, b in itertools.pairwise(bounds))
    assert all(text[end - 1] == " " for _, end in bounds[:-1])  # after a sentence's space
    assert all(100 <= end - start <= 200 for start, end in bounds[:-1])
    # Text without spaces is still cut, at the hard limit.
    solid = "x" * 1000
    assert split_passages(solid, 100)[0] == (0, 300)


def test_evidence_is_the_question_s_share_of_attention_to_the_document() -> None:
    # 2 layers, 1 head, 1 query, 4 tokens: token 0 is the prompt (an attention sink).
    attentions = [torch.tensor([[[0.7, 0.2, 0.1, 0.0]]]), torch.tensor([[[0.9, 0.0, 0.1, 0.0]]])]
    document = torch.tensor([False, True, True, True])
    evidence = token_evidence(attentions, document)
    assert evidence.tolist() == pytest.approx([0.0, 1 / 3, 2 / 3, 0.0])
    spans = torch.tensor([[-1, -1], [0, 5], [12, 15], [30, 31]])
    scores = passage_scores(evidence, spans, [(0, 10), (10, 20), (20, 40)])
    assert scores.tolist() == pytest.approx([1 / 3, 2 / 3, 0.0])
    best = top_passages(scores, [(0, 10), (10, 20), (20, 40)], 2)
    assert [(p.start, p.end) for p in best] == [(10, 20), (0, 10)]


def test_strength_says_how_far_the_best_passage_stands_out() -> None:
    assert strength(torch.tensor([0.25, 0.25, 0.25, 0.25])) == pytest.approx(1.0)
    assert strength(torch.tensor([0.7, 0.1, 0.1, 0.1])) == pytest.approx(7.0)
    assert strength(torch.tensor([1.0])) == 0.0


def test_within_budget_takes_the_best_that_fit_in_document_order() -> None:
    passages = [Passage(50, 60, 0.5), Passage(0, 10, 0.3), Passage(20, 30, 0.2)]
    assert within_budget(passages, [5, 9, 4], 10) == [Passage(20, 30, 0.2), Passage(50, 60, 0.5)]
    assert within_budget(passages, [50, 50, 50], 10) == []


def test_a_citation_names_its_page_and_lines() -> None:
    text = "first line\nsecond line\n\nthird page starts here\nand goes on"
    view = DocumentView(text, page_map=(0, 24))
    cited = view.citation(Passage(11, 40, 0.5))
    assert (cited.page, cited.lines) == (1, (2, 4))
    assert cited.where == "p. 1, lines 2-4"
    assert Citation.from_dict(cited.to_dict()) == Citation(**{**cited.__dict__, "score": 0.5})
    plain = DocumentView(text).citation(Passage(24, 30, 0.1))
    assert plain.where == "line 4" and plain.page is None


# ----------------------------------------------------------------------------- the library


@pytest.fixture
def book(tmp_path: Path) -> Path:
    path = tmp_path / "book.txt"
    path.write_text(calibration_text()[:6000], encoding="utf-8")
    return path


def test_a_saved_cache_keeps_its_spans_and_text(
    model: homer.LoadedModel, book: Path, engine_home: Path
) -> None:
    done = homer.ingest(book, model, config=CONFIG)
    meta = json.loads((done.record.path / META_FILE).read_text())
    assert meta["format_version"] == 2 and meta["spans"] is True
    assert meta["text"]["chars"] == len(book.read_text(encoding="utf-8"))
    opened = homer.open_cache(model, done.name)
    assert opened.citable and opened.text == book.read_text(encoding="utf-8")
    assert opened.cache.spans is not None and opened.cache.spans.shape == (opened.cache.length, 2)
    # A second name shares the text too.
    Store().copy(done.name, "again")
    assert homer.open_cache(model, "again").text == opened.text


def test_a_damaged_text_file_is_named(
    model: homer.LoadedModel, book: Path, engine_home: Path
) -> None:
    done = homer.ingest(book, model, config=CONFIG)
    path = done.record.path / TEXT_FILE
    data = bytearray(path.read_bytes())
    data[-5] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(homer.CacheError, match=r"document\.txt\.gz.*checksum"):
        homer.open_cache(model, done.name)


def test_grounding_reads_the_passages_and_cites_without_changing_the_cache(
    model: homer.LoadedModel, book: Path, engine_home: Path
) -> None:
    done = homer.ingest(book, model, config=SMALL)
    opened = homer.open_cache(model, done.name)
    keys = [k.clone() for k in opened.cache.keys]
    sampling = Sampling(max_new_tokens=8)
    plain = homer.ask(model, opened.cache, QUESTION, sampling)
    plain_text = "".join(plain)

    # Nothing asked of the grounding: the very same answer, from the very same prompt.
    quiet = homer.ask(
        model,
        opened.cache,
        QUESTION,
        sampling,
        grounding=Grounding(check=False),
        document=opened.document,
    )
    assert "".join(quiet) == plain_text and quiet.evidence is None and quiet.citations == []

    stream = homer.ask(
        model,
        opened.cache,
        QUESTION,
        sampling,
        grounding=Grounding(cite=2, reread=True, reread_tokens=90, passage_chars=80),
        document=opened.document,
    )
    "".join(stream)
    assert stream.reread.startswith("\n\nPassages of the document")
    assert stream.stats.prompt_tokens > plain.stats.prompt_tokens  # the passages were fed
    assert stream.evidence is not None and stream.grounded in (True, False)
    assert len(stream.citations) == 2
    text = book.read_text(encoding="utf-8")
    for cited in stream.citations:
        assert cited.text and cited.text in text and cited.page is None
        assert text[cited.start : cited.end].strip() == cited.text
    report = stream.report()
    assert set(report) == {"grounded", "evidence", "reread", "citations"} and report["reread"]
    assert all(torch.equal(a, b) for a, b in zip(keys, opened.cache.keys, strict=True))


def test_a_cache_without_sources_answers_and_says_it_cannot_cite(
    model: homer.LoadedModel, book: Path, engine_home: Path
) -> None:
    done = homer.ingest(book, model, config=CONFIG)
    opened = homer.open_cache(model, done.name)
    stream = GroundedStream(
        model.model,
        model.tokenizer,
        opened.cache,
        QUESTION,
        Grounding(cite=3, reread=True),
        None,
        generation={"max_new_tokens": 6},
    )
    answer = "".join(stream)
    assert answer == "".join(homer.ask(model, opened.cache, QUESTION, Sampling(max_new_tokens=6)))
    assert stream.unavailable and stream.citations == [] and stream.grounded is None


def test_ingest_upgrades_a_cache_saved_before_sources_were_kept(
    model: homer.LoadedModel, book: Path, engine_home: Path
) -> None:
    done = homer.ingest(book, model, config=CONFIG, name="old")
    folder = done.record.path
    meta = json.loads((folder / META_FILE).read_text())
    # What format 1 wrote: no spans, no text, version 1 (the tensors are the same).
    meta.pop("spans"), meta.pop("text")
    meta["format_version"] = 1
    (folder / TEXT_FILE).unlink()
    (folder / META_FILE).write_text(json.dumps(meta))
    old = homer.open_cache(model, "old")
    assert not old.citable and old.document is None and old.cache.spans is None
    again = homer.ingest(book, model, config=CONFIG, name="old")
    assert not again.reused and again.record.metadata.citable
    assert homer.open_cache(model, "old").citable


# ----------------------------------------------------------------------------- the CLI


def test_ask_cite_json_lists_passages_with_lines(
    tiny_model_dir: Path, book: Path, engine_home: Path
) -> None:
    model = str(tiny_model_dir)
    ingested = runner.invoke(
        app, ["ingest", str(book), "--model", model, "--max-chunk", MAX_CHUNK, "--budget", "64"]
    )
    assert ingested.exit_code == 0, ingested.output
    result = runner.invoke(
        app, ["ask", QUESTION, "--cite", "--cite-top", "2", "--json", "-n", "6", "--local"]
    )
    assert result.exit_code == 0, result.output
    payload = json.loads(result.stdout)
    assert isinstance(payload["grounded"], bool) and payload["evidence"] >= 0
    assert payload["reread"] is True
    assert len(payload["citations"]) == 2
    for cited in payload["citations"]:
        assert set(cited) == {"page", "lines", "start", "end", "score", "text"}
        assert cited["page"] is None and cited["lines"][0] >= 1
    plain = runner.invoke(app, ["ask", QUESTION, "--no-reread", "--json", "-n", "6", "--local"])
    payload = json.loads(plain.stdout)
    assert payload["reread"] is False and "citations" not in payload


def test_ask_cite_names_pdf_pages(tiny_model_dir: Path, tmp_path: Path, engine_home: Path) -> None:
    text = calibration_text()
    pdf = tmp_path / "book.pdf"
    pdf.write_bytes(make_pdf([text[:1500], text[1500:3000], text[3000:4500]]))
    model = str(tiny_model_dir)
    ingested = runner.invoke(app, ["ingest", str(pdf), "--model", model, "--max-chunk", MAX_CHUNK])
    assert ingested.exit_code == 0, ingested.output
    result = runner.invoke(
        app, ["ask", QUESTION, "--cite", "--cite-top", "3", "-n", "4", "--local"]
    )
    assert result.exit_code == 0, result.output
    assert "sources:" in result.stderr and "[1] p. " in result.stderr
    payload = json.loads(
        runner.invoke(app, ["ask", QUESTION, "--cite", "--json", "-n", "4", "--local"]).stdout
    )
    assert all(c["page"] in (1, 2, 3) for c in payload["citations"])


def test_the_cli_defaults_agree_with_the_library() -> None:
    from homer import grounding
    from homer_cli import grounding as flags

    assert (flags.REREAD_DEFAULT, flags.REREAD_TOKENS) == (
        grounding.REREAD_DEFAULT,
        grounding.REREAD_TOKENS,
    )


def test_a_format1_cache_still_answers_through_the_cli(
    tiny_model_dir: Path, book: Path, engine_home: Path
) -> None:
    model = str(tiny_model_dir)
    runner.invoke(
        app, ["ingest", str(book), "--model", model, "--max-chunk", MAX_CHUNK, "--name", "b"]
    )
    folder = Store().record("b").path
    meta = json.loads((folder / META_FILE).read_text())
    meta.pop("spans"), meta.pop("text")
    meta["format_version"] = 1
    (folder / META_FILE).write_text(json.dumps(meta))
    (folder / TEXT_FILE).unlink()
    result = runner.invoke(
        app, ["ask", QUESTION, "-c", "b", "--cite", "--json", "-n", "4", "--local"]
    )
    assert result.exit_code == 0, result.output
    payload = json.loads(result.stdout)
    assert payload["answer"] is not None and payload["citations"] == []
    assert "saved before homer could cite" in payload["grounding_unavailable"]


# ----------------------------------------------------------------------------- what was kept


def test_kept_regions_and_kept_text() -> None:
    from homer.kept import kept_regions, kept_text

    text = "aaaa bbbb cccc dddd"
    spans = torch.tensor([[-1, -1], [0, 4], [4, 5], [10, 14], [-1, -1]])
    assert kept_text(spans, text) == "aaaa  … cccc"
    pages = kept_regions(spans, len(text), (0, 10), document_tokens=8)
    assert [(r.label, r.kept_chars) for r in pages] == [("p. 1", 5), ("p. 2", 4)]
    assert pages[1].share == pytest.approx(4 / 9)
    stretches = kept_regions(spans, len(text), (), document_tokens=8)
    assert len(stretches) == 1 and stretches[0].label == "tokens 0k-1k"


def test_show_kept_text_and_plot(tiny_model_dir: Path, tmp_path: Path, engine_home: Path) -> None:
    text = calibration_text()
    pdf = tmp_path / "book.pdf"
    pdf.write_bytes(make_pdf([text[:1500], text[1500:3000], text[3000:4500]]))
    model = str(tiny_model_dir)
    ingested = runner.invoke(
        app, ["ingest", str(pdf), "--model", model, "--max-chunk", MAX_CHUNK, "--name", "b"]
    )
    assert ingested.exit_code == 0, ingested.output
    shown = runner.invoke(app, ["show", "b", "--kept"])
    assert shown.exit_code == 0, shown.output
    lines = shown.stdout.splitlines()
    assert [line.split()[:2] for line in lines[:3]] == [["p.", "1"], ["p.", "2"], ["p.", "3"]]
    assert lines[-1].startswith("all") and "█" in shown.stdout
    kept = runner.invoke(app, ["show", "b", "--text"])
    assert kept.exit_code == 0 and " … " in kept.stdout
    words = [w for w in kept.stdout.replace("…", " ").split() if w.isalpha()]
    assert words and all(w in text for w in words[:50])
    image = tmp_path / "kept.png"
    drawn = runner.invoke(app, ["show", "b", "--plot", str(image)])
    assert drawn.exit_code == 0, drawn.output
    assert image.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_nothing_to_reread_gives_no_text() -> None:
    from homer.grounding import reread_text
    from tests.tiny import make_tiny_tokenizer

    assert reread_text(make_tiny_tokenizer(), DocumentView("some text."), [], 100) == ""
