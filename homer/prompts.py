"""The text around the document: prefix, suffix, and the continuation that asks a question.

With a chat template, the document sits inside one user turn: the prefix opens the turn with an
instruction, the (query-agnostic) suffix closes the document without closing the turn, and a later
question continues the same turn and opens the assistant's reply. A follow-up question closes the
assistant's answer and opens a new user turn, as the template writes a conversation. Without a
chat template the same shape is built from plain text. Nothing here runs a model.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

INSTRUCTION = "Read the document below carefully; you will be asked about it.\n\nDocument:\n"
GENERIC_SUFFIX = "\n\n(End of document.)"
FOCUS_SUFFIX = "\n\n(End of document.) Keep in mind the question: {question}"
QUESTION = "\n\nAnswer using the document. Question: {question}"
SUMMARY_QUESTION = "Summarize the document in a few sentences."

#: Plain-text fallback (no chat template): what follows an answer before the next question.
PLAIN_TURN_NEXT = "\nQuestion: "

_SENTINEL = "\u2063HOMER_SENTINEL\u2063"
# Three more, for rendering a whole conversation (question, answer, follow-up).
_ANSWER_SENTINEL = "\u2063HOMER_ANSWER\u2063"
_NEXT_SENTINEL = "\u2063HOMER_NEXT\u2063"


@dataclass(frozen=True)
class Turn:
    """One finished exchange of a conversation: a question and the answer it got."""

    question: str
    answer: str


@dataclass(frozen=True)
class PromptTemplate:
    """How a document and a question become text for one tokenizer.

    Attributes:
        turn_open: text before the user's message (chat template head, system prompt, BOS text).
        turn_close: text after the user's message up to where the assistant answers.
        add_bos: prepend the tokenizer's BOS id (when the template text does not carry it).
        turn_next: text after an assistant's answer up to the next user message (closes the
            answer, opens a user turn).
    """

    turn_open: str
    turn_close: str
    add_bos: bool
    turn_next: str = PLAIN_TURN_NEXT

    @classmethod
    def for_tokenizer(cls, tokenizer: Any) -> PromptTemplate:
        """The tokenizer's chat template split around the user message, or a plain fallback."""
        bos = getattr(tokenizer, "bos_token", None)
        if getattr(tokenizer, "chat_template", None):
            rendered = tokenizer.apply_chat_template(
                [{"role": "user", "content": _SENTINEL}],
                tokenize=False,
                add_generation_prompt=True,
            )
            if isinstance(rendered, str) and rendered.count(_SENTINEL) == 1:
                head, tail = rendered.split(_SENTINEL)
                turn_next = _turn_next(tokenizer)
                return cls(
                    turn_open=head,
                    turn_close=tail,
                    add_bos=False,
                    turn_next=turn_next if turn_next is not None else PLAIN_TURN_NEXT,
                )
        adds_bos = bool(bos) and _adds_bos(tokenizer)
        return cls(turn_open="", turn_close="\nAnswer:", add_bos=adds_bos)

    def prefix(self) -> str:
        return self.turn_open + INSTRUCTION

    def suffix(self, focus: str | None = None) -> str:
        return GENERIC_SUFFIX if focus is None else FOCUS_SUFFIX.format(question=focus.strip())

    def continuation(self, question: str) -> str:
        """Text fed after the cache: the question, closing the user turn, opening the answer."""
        return QUESTION.format(question=question.strip()) + self.turn_close

    def follow_up(self, question: str) -> str:
        """Text fed after an answer to ask one more question and open the next answer."""
        return self.turn_next + question.strip() + self.turn_close

    def conversation(self, history: Sequence[Turn], question: str) -> str:
        """Text fed after the cache for `question` asked after the finished turns `history`.

        With no history this is `continuation(question)`. Earlier answers are fed as the text
        they were (stripped, as chat templates store them), so a follow-up sees them as the
        model's own words.
        """
        if not history:
            return self.continuation(question)
        text = self.continuation(history[0].question)
        for turn, following in zip(history, [*history[1:], None], strict=True):
            text += turn.answer.strip()
            text += self.follow_up(following.question if following else question)
        return text


def _turn_next(tokenizer: Any) -> str | None:
    """What the chat template writes between an assistant's answer and the next user message,
    or None when the template does not render a conversation as answer + text + question."""
    try:
        rendered = tokenizer.apply_chat_template(
            [
                {"role": "user", "content": _SENTINEL},
                {"role": "assistant", "content": _ANSWER_SENTINEL},
                {"role": "user", "content": _NEXT_SENTINEL},
            ],
            tokenize=False,
            add_generation_prompt=True,
        )
    except Exception:  # a template that refuses multi-turn (raise_exception) or breaks on it
        return None
    if not isinstance(rendered, str):
        return None
    if any(rendered.count(s) != 1 for s in (_SENTINEL, _ANSWER_SENTINEL, _NEXT_SENTINEL)):
        return None
    between = rendered.split(_ANSWER_SENTINEL, 1)[1].split(_NEXT_SENTINEL, 1)[0]
    return between


def _adds_bos(tokenizer: Any) -> bool:
    ids = tokenizer("a", add_special_tokens=True)["input_ids"]
    return bool(ids) and ids[0] == tokenizer.bos_token_id


def encode(tokenizer: Any, text: str) -> list[int]:
    """Token ids of `text` with no special tokens added (special-token text is still parsed)."""
    return list(tokenizer(text, add_special_tokens=False, verbose=False)["input_ids"])


#: Characters tokenized per call for long documents: bounds the tokenizer's working memory
#: (about 170 bytes per character of text in one call) without changing short documents.
DOCUMENT_PIECE_CHARS = 200_000


def _piece_end(text: str, start: int, limit: int) -> int:
    """Where to cut after `start`: just past a paragraph break, else a line break, else a space,
    so the next piece starts a word as the tokenizer would have seen it."""
    end = start + limit
    if end >= len(text):
        return len(text)
    for sep in ("\n\n", "\n", " "):
        cut = text.rfind(sep, start + limit // 2, end)
        if cut != -1:
            return cut + len(sep) if sep != " " else cut
    return end


def encode_document(
    tokenizer: Any, text: str, piece_chars: int = DOCUMENT_PIECE_CHARS
) -> torch.Tensor:
    """`(C,)` int64 ids of a document of any size, tokenized in bounded pieces.

    Pieces end at paragraph, line or word boundaries, so the ids match one-call tokenization
    (exactly so for documents shorter than `piece_chars`).
    """
    return encode_document_spans(tokenizer, text, piece_chars, offsets=False)[0]


def encode_document_spans(
    tokenizer: Any,
    text: str,
    piece_chars: int = DOCUMENT_PIECE_CHARS,
    *,
    offsets: bool = True,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """`encode_document`'s `(C,)` ids, and each token's `[start, end)` character span in `text`
    as `(C, 2)` int64, or None where the tokenizer cannot say (a slow, Python tokenizer)."""
    pieces: list[torch.Tensor] = []
    spans: list[torch.Tensor] | None = [] if offsets else None
    start = 0
    while start < len(text):
        end = _piece_end(text, start, piece_chars)
        encoded = _encode_piece(tokenizer, text[start:end], spans is not None)
        pieces.append(torch.tensor(encoded["input_ids"], dtype=torch.long))
        mapping = encoded.get("offset_mapping") if spans is not None else None
        if spans is not None and mapping is not None:
            spans.append(torch.tensor(mapping, dtype=torch.long).reshape(-1, 2) + start)
        else:
            spans = None
        start = end
    ids = torch.cat(pieces) if pieces else torch.zeros(0, dtype=torch.long)
    if spans is None:
        return ids, None
    return ids, torch.cat(spans) if spans else torch.zeros(0, 2, dtype=torch.long)


def _encode_piece(tokenizer: Any, piece: str, with_offsets: bool) -> Any:
    if with_offsets:
        try:
            return tokenizer(
                piece, add_special_tokens=False, verbose=False, return_offsets_mapping=True
            )
        except (NotImplementedError, ValueError, TypeError):  # no offsets from this tokenizer
            pass
    return tokenizer(piece, add_special_tokens=False, verbose=False)
