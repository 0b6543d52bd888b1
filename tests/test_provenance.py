"""Where kept tokens came from (`homer.provenance`), and the spans `compress` records."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

import homer
from homer import HomerConfig, compress
from homer.calibration import calibration_text
from homer.documents import line_starts, locate
from homer.prompts import encode_document_spans
from homer.provenance import char_spans, kept_sources
from homer.words import token_kinds, word_ids
from tests.conftest import MAX_CHUNK

CONFIG = HomerConfig(max_chunk_len=int(MAX_CHUNK))


def test_kept_sources_match_inside_words_and_skip_the_prompt() -> None:
    doc_ids = torch.tensor([5, 6, 7, 5, 6, 8, 9])
    doc_words = torch.tensor([0, 0, 1, 2, 2, 3, 4])
    # prompt, then tokens 1 (word 0), 4 (word 2, the second 6), 6 (word 4), then prompt again
    kept_ids = torch.tensor([1, 6, 6, 9, 2])
    kept_words = torch.tensor([-1, 0, 2, 4, -1])
    sources = kept_sources(kept_ids, kept_words, doc_ids, doc_words)
    assert sources.tolist() == [-1, 1, 4, 6, -1]
    offsets = torch.tensor([[0, 1], [1, 2], [2, 3], [3, 4], [4, 5], [5, 6], [6, 7]])
    assert char_spans(sources, offsets).tolist() == [[-1, -1], [1, 2], [4, 5], [6, 7], [-1, -1]]


def test_kept_sources_refuse_a_word_the_document_lacks() -> None:
    with pytest.raises(ValueError, match="word id 3"):
        kept_sources(torch.tensor([1]), torch.tensor([3]), torch.tensor([1]), torch.tensor([0]))


def test_lines_and_pages_are_located_by_their_starts() -> None:
    text = "one\ntwo\n\nfour"
    starts = line_starts(text)
    assert starts == [0, 4, 8, 9]
    assert [locate(i, starts) for i in (0, 3, 4, 8, 9, 12)] == [1, 1, 2, 3, 4, 4]


def test_compress_records_the_span_of_every_kept_token(
    tiny_model_dir: Path, engine_home: Path
) -> None:
    model = homer.load_model(homer.ModelChoice(name=str(tiny_model_dir), device="cpu"))
    text = calibration_text()[:6000]
    cache = compress(model.model, model.tokenizer, text, CONFIG)
    assert cache.spans is not None and cache.spans.shape == (cache.length, 2)
    document = cache.spans[:, 0] >= 0
    # The instruction around the document has no span; everything between does.
    assert not bool(document[: cache.info.prefix_tokens].any())
    assert not bool(document[cache.length - cache.info.suffix_tokens :].any())
    assert int(document.sum()) == cache.length - cache.info.prefix_tokens - cache.info.suffix_tokens
    starts = cache.spans[document, 0]
    # Document order (the byte tokens of one character share its span, hence >=).
    assert bool((starts[1:] >= starts[:-1]).all()), "kept tokens keep document order"
    # Each kept token's span holds exactly that token's text (bytes of a character aside).
    ids, offsets = encode_document_spans(model.tokenizer, text)
    assert offsets is not None
    kept = cache.token_ids[document].tolist()
    for token, (start, end) in zip(kept, cache.spans[document].tolist(), strict=True):
        piece = model.tokenizer.decode([token])
        assert piece == text[start:end] or "\ufffd" in piece
    words = word_ids(ids, token_kinds(model.tokenizer))
    assert words.shape == ids.shape
