"""The options that ground an answer in the document (`--cite`, `--reread`), and how the CLI
shows citations and "not in the document" on stderr. Computing them is `homer.grounding`'s job.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Annotated, Any

import typer

from homer_cli.errors import say
from homer_cli.terminal import printable

if TYPE_CHECKING:
    from homer.grounding import Citation, Grounding

CiteOpt = Annotated[
    bool,
    typer.Option(
        "--cite",
        help="After the answer, list on stderr the passages it rests on (page and lines, with a "
        "snippet; `citations` in --json).",
    ),
]
CiteTopOpt = Annotated[
    int, typer.Option("--cite-top", min=1, max=20, help="How many passages --cite lists.")
]
RereadOpt = Annotated[
    bool | None,
    typer.Option(
        "--reread/--no-reread",
        help="Re-read in full the passages the question points at before answering (from the "
        "text saved with the cache). Default: on for ask, off for summarize.",
        show_default=False,
    ),
]
RereadTokensOpt = Annotated[
    int,
    typer.Option(
        "--reread-tokens", min=16, help="Budget of re-read text, in tokens (cut to what fits)."
    ),
]

#: Kept here, not imported from `homer.grounding`, so `--help` loads no torch; a test checks
#: they agree.
REREAD_DEFAULT = True
REREAD_TOKENS = 1024

#: Characters of a passage shown after its place.
SNIPPET_CHARS = 160


@dataclass(frozen=True)
class GroundingFlags:
    """What the grounding flags asked for, kept light: the CLI names it before any model
    loads (`homer.grounding` imports torch), and `build` makes the library's policy."""

    cite: int
    reread: bool
    reread_tokens: int
    check: bool = True

    def build(self) -> Grounding:
        from homer.grounding import Grounding

        return Grounding(
            cite=self.cite,
            reread=self.reread,
            reread_tokens=self.reread_tokens,
            check=self.check,
        )


def grounding_from_flags(
    cite: bool,
    cite_top: int,
    reread: bool | None,
    reread_tokens: int,
    *,
    reread_default: bool,
    check: bool = True,
) -> GroundingFlags:
    return GroundingFlags(
        cite=cite_top if cite else 0,
        reread=reread_default if reread is None else reread,
        reread_tokens=reread_tokens,
        check=check,
    )


def snippet(text: str, limit: int = SNIPPET_CHARS) -> str:
    """`text` on one line, cut at a word near `limit` with an ellipsis."""
    flat = " ".join(text.split())
    if len(flat) <= limit:
        return flat
    cut = flat.rfind(" ", 0, limit)
    return flat[: cut if cut > limit // 2 else limit] + "…"


def show_citations(citations: list[Citation]) -> None:
    """`p. 12, lines 3-7: "…"` per citation on stderr."""
    if not citations:
        return
    say("sources:")
    for i, citation in enumerate(citations, start=1):
        say(f'  [{i}] {citation.where}: "{printable(snippet(citation.text))}"')


def grounding_fields(stream: Any, grounding: GroundingFlags | None) -> dict[str, Any]:
    """The `--json` fields of a grounded answer (none for a plain one; no `citations` unless
    asked for)."""
    if grounding is None or not hasattr(stream, "report"):
        return {}
    fields: dict[str, Any] = stream.report()
    if not grounding.cite:
        fields.pop("citations", None)
    return fields


#: What stderr says of an answer whose question no passage stands out for.
_UNGROUNDED = (
    "the document may not hold this answer: no passage stands out for the question's words "
    "(evidence {evidence}); check the passages it rests on (--cite)"
)

#: The fields of `GroundedStream.report()`, as a server's answer carries them.
REPORT_FIELDS = ("grounded", "evidence", "reread", "citations", "grounding_unavailable")


def show_remote_grounding(info: dict[str, Any]) -> None:
    """`warn_ungrounded` and `show_citations` for an answer a server gave (its `homer` fields)."""
    from homer.grounding import Citation

    if info.get("grounding_unavailable"):
        say(
            f"cannot cite or re-read: {info['grounding_unavailable']}; ingest the document "
            "again to upgrade it"
        )
    elif info.get("grounded") is False:
        say(_UNGROUNDED.format(evidence=info.get("evidence")))
    show_citations([Citation.from_dict(c) for c in info.get("citations") or []])


def warn_ungrounded(stream: Any) -> None:
    """Say on stderr when the question's best passage does not stand out, and when the cache
    cannot cite at all."""
    unavailable = getattr(stream, "unavailable", None)
    if unavailable:
        say(f"cannot cite or re-read: {unavailable}; ingest the document again to upgrade it")
        return
    evidence = getattr(stream, "evidence", None)
    if evidence is not None and not evidence.grounded:
        say(_UNGROUNDED.format(evidence=f"{evidence.strength:.2f}"))
