"""`homer chat`: a conversation with a document, at the terminal.

Each question is answered from the saved cache with the conversation so far re-fed after it
(the cache itself never changes). Answers stream to stdout; the prompt line has readline's line
editing and history. `/reset` forgets the conversation, `/exit` (or Ctrl-D) leaves, and Ctrl-C
stops the answer being written, not the session (a stopped answer is dropped from the
conversation, so the next question does not build on half a sentence).

Through a running `homer serve` when one answers (see `homer_cli.remote`), else in this process
with the model and cache loaded once for the session. Computes nothing itself.
"""

from __future__ import annotations

import contextlib
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, Protocol

import typer

from homer_cli.errors import say, user_errors
from homer_cli.terminal import write_answer

PROMPT = ">>> "
HELP = "/reset forgets the conversation, /exit or Ctrl-D leaves, Ctrl-C stops an answer"


class _Backend(Protocol):
    name: str
    source: str
    where: str

    def answer(
        self, question: str, history: list[tuple[str, str]], show: Callable[[str], None]
    ) -> str: ...


class _Local:
    """Answers in this process: the model and the cache loaded once."""

    def __init__(self, cache: str | None, sampling: Any, device: str | None, dtype: str | None):
        from homer.service import open_cache, pick_record
        from homer.store import Store
        from homer_cli.main import _load_model, _setup_runtime

        _setup_runtime()
        store = Store()
        record = pick_record(store, cache)
        self.loaded = _load_model(record.model_id, device, dtype, False, "decode")
        self.opened = open_cache(self.loaded, record.name, store=store)
        self.sampling = sampling
        self.name = record.name
        self.source = record.source
        self.where = "in this process"

    def answer(
        self, question: str, history: list[tuple[str, str]], show: Callable[[str], None]
    ) -> str:
        from homer.grounding import REREAD_DEFAULT, Grounding
        from homer.prompts import Turn
        from homer.service import ask
        from homer_cli.grounding import warn_ungrounded

        turns = [Turn(q, a) for q, a in history]
        stream = ask(
            self.loaded,
            self.opened.cache,
            question,
            self.sampling,
            turns,
            grounding=Grounding(reread=REREAD_DEFAULT),  # as `homer ask` and the server answer
            document=self.opened.document,
        )
        try:
            for piece in stream:
                show(piece)
        except KeyboardInterrupt:
            stream.cancel()
            raise
        if stream.evidence is not None and not stream.evidence.grounded:
            show("\n")
            warn_ungrounded(stream)
        return stream.text


class _Remote:
    """Answers through a running server, pinned to one cache for the whole session."""

    def __init__(self, server: Any, cache: str | None, sampling: Any) -> None:
        self.server = server
        self.sampling = sampling
        if server.same_store:
            from homer.service import pick_record
            from homer.store import Store

            record = pick_record(Store(), cache)
            self.name, self.source = record.name, record.source
        else:
            from homer_cli.remote import error_of

            path = f"/v1/models/homer/{cache}" if cache else "/v1/models/homer"
            response = server.request("GET", path)
            if response.status != 200:
                raise error_of(response)
            entry = json.loads(response.read())["homer"]
            self.name, self.source = entry["name"], entry["source"]
        self.where = f"through {server.url}"

    def answer(
        self, question: str, history: list[tuple[str, str]], show: Callable[[str], None]
    ) -> str:
        from homer_cli.remote import answer

        sampling = self.sampling
        reply = answer(
            self.server,
            question,
            cache=self.name,
            history=history,
            max_tokens=sampling.max_new_tokens,
            temperature=sampling.temperature,
            top_p=sampling.top_p,
            seed=sampling.seed,
            on_piece=show,
            stop_loops=sampling.stop_loops,
        )
        if reply.info.get("grounded") is False:
            from homer_cli.grounding import show_remote_grounding

            show("\n")
            show_remote_grounding(reply.info)
        return reply.text


def _history_file() -> Path:
    from homer import paths

    # Beside the converted models: the user's data folder, or $HOMER_HOME.
    return paths.models_dir().parent / "chat_history"


@contextlib.contextmanager
def _line_editing() -> Any:
    """readline for `input()`: editing keys and the history of earlier sessions."""
    try:
        import readline
    except ImportError:  # no readline on this platform: plain input still works
        yield
        return
    path = _history_file()
    with contextlib.suppress(OSError):
        readline.read_history_file(path)
    readline.set_history_length(1000)
    try:
        yield
    finally:
        with contextlib.suppress(OSError):
            path.parent.mkdir(parents=True, exist_ok=True)
            readline.write_history_file(path)


def _show(piece: str) -> None:
    write_answer(piece)


def _session(backend: _Backend) -> None:
    history: list[tuple[str, str]] = []
    say(f"chatting about {backend.source} (cache {backend.name}) {backend.where}; {HELP}")
    prompt = PROMPT if sys.stdin.isatty() else ""  # piped questions: stdout holds answers only
    while True:
        try:
            line = input(prompt)
        except EOFError:
            sys.stdout.write("\n")
            return
        except KeyboardInterrupt:  # Ctrl-C at the prompt: a fresh line, as in a shell
            sys.stdout.write("\n")
            continue
        question = line.strip()
        if not question:
            continue
        if question in ("/exit", "/quit", "/bye"):
            return
        if question == "/reset":
            history.clear()
            say("conversation forgotten")
            continue
        if question.startswith("/"):
            say(f"unknown command {question.split()[0]}; {HELP}")
            continue
        try:
            answer = backend.answer(question, history, _show)
        except KeyboardInterrupt:
            sys.stdout.write("\n")
            sys.stdout.flush()
            say("(stopped; this answer is left out of the conversation)")
            continue
        except Exception as exc:
            if type(exc).__name__ not in ("ContextOverflowError", "RemoteError"):
                raise
            sys.stdout.write("\n")
            say(f"{exc}; /reset starts over" if "window" in str(exc) else str(exc))
            continue
        sys.stdout.write("\n")
        sys.stdout.flush()
        history.append((question, answer))


CacheOpt = Annotated[
    str | None,
    typer.Option(
        "--cache",
        "-c",
        help="Cache name (see `homer list`); default: the most recent.",
        show_default=False,
    ),
]


def chat(
    cache: CacheOpt = None,
    max_tokens: Annotated[
        int, typer.Option("--max-tokens", "-n", help="Most tokens per answer.")
    ] = 256,
    temperature: Annotated[
        float, typer.Option("--temperature", "-t", help="0 = greedy (deterministic).")
    ] = 0.0,
    top_p: Annotated[
        float, typer.Option("--top-p", help="Nucleus sampling when temperature > 0.")
    ] = 1.0,
    seed: Annotated[
        int | None, typer.Option(help="Random seed for sampling.", show_default=False)
    ] = None,
    allow_loops: Annotated[
        bool,
        typer.Option(
            "--allow-loops",
            help="Let an answer that repeats itself go on to --max-tokens (by default it stops).",
        ),
    ] = False,
    server: Annotated[
        str | None,
        typer.Option(
            "--server",
            help="URL of a running `homer serve` (default: $HOMER_SERVER, else "
            "http://127.0.0.1:11480 when it serves the same store).",
            show_default=False,
        ),
    ] = None,
    local: Annotated[
        bool, typer.Option("--local", help="Answer in this process even when a server runs.")
    ] = False,
    device: Annotated[
        str | None,
        typer.Option(help="cpu, cuda or cuda:N (in-process only).", show_default=False),
    ] = None,
    dtype: Annotated[
        str | None,
        typer.Option(help="float32, float16 or bfloat16 (in-process only).", show_default=False),
    ] = None,
) -> None:
    """Talk with a saved document: follow-up questions see the conversation so far.

    Answers stream as they are written. /reset forgets the conversation, /exit or Ctrl-D
    leaves, Ctrl-C stops the current answer (not the session). Uses a running `homer serve`
    when there is one, else loads the model once for the session.

    Example:

    ```
    homer chat -c book
    ```
    """
    with user_errors():
        from homer.service import Sampling
        from homer_cli.main import _check_sampling, _setup_logging

        _check_sampling(max_tokens, temperature, top_p)
        _setup_logging()
        sampling = Sampling(
            max_new_tokens=max_tokens,
            temperature=temperature,
            top_p=top_p,
            seed=seed,
            stop_loops=not allow_loops,
        )
        backend: _Backend
        found = None
        if not (device or dtype):
            from homer_cli.remote import find_server

            found = find_server(server, local=local)
        if found is not None:
            backend = _Remote(found, cache, sampling)
        else:
            backend = _Local(cache, sampling, device, dtype)
        if not sys.stdin.isatty():
            say("reading questions from stdin, one per line")
        with _line_editing():
            _session(backend)
