"""The `homer` command: ingest a document once, ask about it many times.

A thin Typer + rich layer over the library: each command parses options, calls `homer.documents`,
`homer.models`, `homer.store` and the engine (`homer.compress`, `homer.generate`,
`homer.calibrate`), and prints. It computes nothing itself. Heavy modules (torch, transformers,
the engine) are imported inside the commands so `homer --help` is instant. Errors become one
line on stderr through `homer_cli.errors.user_errors`.

Output discipline: stdout carries only the result (a cache name, an answer, a table, JSON), so
commands compose in pipelines; progress and notices go to stderr, progress only on a terminal.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import sys
import time
import warnings
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, ClassVar

import typer

from homer_cli import ready_for_interrupts
from homer_cli.chat import chat as chat_command
from homer_cli.errors import AdviceFilter, debug_enabled, say, user_errors
from homer_cli.grounding import (
    REPORT_FIELDS,
    REREAD_DEFAULT,
    REREAD_TOKENS,
    CiteOpt,
    CiteTopOpt,
    RereadOpt,
    RereadTokensOpt,
    grounding_fields,
    grounding_from_flags,
    show_citations,
    show_remote_grounding,
    warn_ungrounded,
)
from homer_cli.limits import MaxBytesOpt, MaxDocTokensOpt, MaxPagesOpt, read_limits_env
from homer_cli.serve import serve as serve_command
from homer_cli.terminal import SafeFormatter, json_text, markup_safe, printable, write_answer

if TYPE_CHECKING:
    from homer.models import ConversionProgress
    from homer.precision import Phase
    from homer.service import LoadedModel
    from homer_cli.grounding import GroundingFlags

app = typer.Typer(
    name="homer",
    help=(
        "Read documents far longer than your LLM's context window. HOMER (hierarchical context "
        "merging, arXiv 2404.10308) compresses a document once into a fixed-size kv-cache saved "
        "on disk; questions reload it in a moment.\n\n"
        "Example:\n\n```\nhomer ingest book.pdf && homer ask 'Who is the narrator?'\n```"
    ),
    no_args_is_help=True,
    add_completion=True,  # --install-completion / --show-completion for bash, zsh, fish
    pretty_exceptions_enable=False,
    rich_markup_mode="markdown",
    context_settings={"help_option_names": ["-h", "--help"]},
)


def _print_version(value: bool) -> None:
    if value:
        from importlib.metadata import PackageNotFoundError, version

        try:
            installed = version("homer-llm")
        except PackageNotFoundError:  # running from a source tree that was never installed
            from homer import __version__ as installed
        typer.echo(f"homer {installed}")
        raise typer.Exit()


@app.callback()
def _root(
    version: Annotated[
        bool,
        typer.Option(
            "--version",
            callback=_print_version,
            is_eager=True,
            help="Print homer's version and exit.",
        ),
    ] = False,
) -> None:
    """Read documents far longer than your LLM's context window."""
    ready_for_interrupts()  # from here on, Ctrl-C is `homer: interrupted` via user_errors


# ----------------------------------------------------------------------------- shared options

ModelOpt = Annotated[
    str | None,
    typer.Option(
        "--model",
        "-m",
        help="Hub id, local folder, .gguf file or ollama:NAME[:TAG]; default: $HOMER_MODEL, "
        "else the embedded "
        "smollm2-135m-instruct.",
        show_default=False,
    ),
]
DeviceOpt = Annotated[
    str | None,
    typer.Option(
        help="cpu, cuda, cuda:N, or auto (spread over every GPU, for a model too big for one); "
        "default: cuda when available.",
        show_default=False,
    ),
]
DtypeOpt = Annotated[
    str | None,
    typer.Option(
        help="float32, float16 or bfloat16; default: on CPU bfloat16 to ingest and float32 to "
        "answer (faster each), on CUDA bf16 (fp16 without it).",
        show_default=False,
    ),
]
TrustOpt = Annotated[
    bool,
    typer.Option(
        "--trust-remote-code", help="Allow a Hub model's own Python code to run (off by default)."
    ),
]
CacheOpt = Annotated[
    str | None,
    typer.Option(
        "--cache",
        "-c",
        help="Cache name (see `homer list`); default: the most recent.",
        show_default=False,
    ),
]
CachesOpt = Annotated[
    list[str] | None,
    typer.Option(
        "--cache",
        "-c",
        help="Cache name (see `homer list`); default: the most recent. Give it several times to "
        "ask across documents (their caches are read one after another).",
        show_default=False,
    ),
]
AllOpt = Annotated[
    bool,
    typer.Option(
        "--all",
        help="Ask across the whole library: the caches most relevant to the question (BM25 over "
        "what each kept), as many as fit the model's window.",
    ),
]
MaxTokensOpt = Annotated[int, typer.Option("--max-tokens", "-n", help="Most tokens to generate.")]
TemperatureOpt = Annotated[
    float, typer.Option("--temperature", "-t", help="0 = greedy (deterministic).")
]
TopPOpt = Annotated[float, typer.Option("--top-p", help="Nucleus sampling when temperature > 0.")]
SeedOpt = Annotated[int | None, typer.Option(help="Random seed for sampling.", show_default=False)]
ServerOpt = Annotated[
    str | None,
    typer.Option(
        "--server",
        help="URL of a running `homer serve` to answer through (default: $HOMER_SERVER, else "
        "http://127.0.0.1:11480, used when it serves the same store); in-process when none "
        "answers.",
        show_default=False,
    ),
]
LocalOpt = Annotated[
    bool,
    typer.Option("--local", help="Answer in this process even when a server is running."),
]
JsonOpt = Annotated[
    bool,
    typer.Option(
        "--json",
        help="Print one JSON object (answer, finish_reason: stop, length or repetition, cache, "
        "model, token counts, timings in seconds).",
    ),
]
MaxChunkOpt = Annotated[
    int | None,
    typer.Option(
        "--max-chunk",
        help="Tokens per chunk; default: half the model's window. Lower it if memory runs out, "
        "or for a small model that does not read its whole window (Gemma-3-270m: 1024).",
        show_default=False,
    ),
]


# ----------------------------------------------------------------------------- helpers


def _setup_logging() -> None:
    """homer's own warnings as one `homer: ` line each on stderr (all levels with HOMER_DEBUG)."""
    handler = logging.StreamHandler()  # resolves sys.stderr now (CliRunner swaps it)
    handler.setFormatter(SafeFormatter("homer: %(message)s"))  # names shown, never obeyed
    handler.addFilter(AdviceFilter())  # a skipped cache's warning says how to fix it
    root = logging.getLogger("homer")
    root.handlers[:] = [handler]
    root.setLevel(logging.DEBUG if debug_enabled() else logging.WARNING)
    root.propagate = False


def _setup_runtime() -> None:
    """Quiet the libraries: our own warnings as one line each, nothing from transformers' bars."""
    _setup_logging()
    if not debug_enabled():
        warnings.filterwarnings("ignore")
    import transformers

    transformers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()


def _check_at_least(option: str, value: float | None, least: float) -> None:
    """One-line error for an out-of-range number (Typer's own range errors draw a usage box)."""
    if value is not None and value < least:
        raise typer.BadParameter(f"{option} must be at least {least}, got {value}")


def _check_sampling(max_tokens: int, temperature: float, top_p: float) -> None:
    _check_at_least("--max-tokens", max_tokens, 1)
    _check_at_least("--temperature", temperature, 0)
    if not 0 < top_p <= 1:
        raise typer.BadParameter(f"--top-p must be in (0, 1], got {top_p}")


def _stderr_is_tty() -> bool:
    try:
        return sys.stderr.isatty()
    except (AttributeError, ValueError):
        return False


def _notice(message: str) -> None:
    """A notice for a person at a terminal; silent when stderr is not a terminal."""
    if _stderr_is_tty():
        say(message)


def _read_stdin_text(what: str) -> str:
    if sys.stdin.isatty():
        say(f"reading the {what} from the terminal; end it with Ctrl-D")
    return sys.stdin.read()


def _load_model(
    name: str | None,
    device: str | None,
    dtype: str | None,
    trust_remote_code: bool,
    phase: Phase | None = None,
) -> LoadedModel:
    """The model, loaded for `phase` (its dtype, unless --dtype names one: `homer.precision`)."""
    from homer.models import conversion_pending, resolve_model_name
    from homer.service import ModelChoice, load_model

    choice = ModelChoice(
        name=name, device=device, dtype=dtype, trust_remote_code=trust_remote_code, phase=phase
    )
    if _stderr_is_tty():
        from rich.console import Console

        resolved = resolve_model_name(name)
        if conversion_pending(resolved):
            with _ConversionBar(markup_safe(resolved)) as bar:
                return load_model(choice, progress=bar.update)
        console = Console(stderr=True)
        with console.status(f"loading {markup_safe(resolved)}…"):
            return load_model(choice)
    return load_model(choice)


class _ConversionBar:
    """A GGUF file's first use on stderr: a bar over the bytes hashed (naming the file by its
    content), then one over the conversion's three steps (read, tokenizer, write)."""

    #: What runs after each reported stage ends (the steps report when they are done).
    _NEXT: ClassVar[dict[str, str]] = {
        "hash": "dequantizing the weights",
        "read": "reading the tokenizer",
        "tokenizer": "writing safetensors",
        "write": "done",
    }

    def __init__(self, what: str) -> None:
        from rich.console import Console
        from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

        self.what = what
        self.progress = Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            TextColumn("{task.percentage:>3.0f}%"),
            TimeElapsedColumn(),
            console=Console(stderr=True),
            transient=True,
        )
        self.task = self.progress.add_task(f"converting {what} (once)", total=None)

    def __enter__(self) -> _ConversionBar:
        self.progress.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.progress.stop()

    def update(self, event: ConversionProgress) -> None:
        if event.stage == "hash" and event.done < event.total:
            label, done, total = "hashing the file", event.done, event.total
        else:
            # Hashing over, or a conversion step ended: count the three steps.
            label, done, total = self._NEXT.get(event.stage, event.stage), event.done, 3
            if event.stage == "hash":
                done = 0
        self.progress.update(
            self.task,
            description=f"converting {self.what} (once): {label}",
            completed=done,
            total=total,
        )


def _human_bytes(size: float) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if size < 1024 or unit == "GB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{size:.1f} GB"


class _ProgressBars:
    """A rich progress display over the engine's `ProgressEvent`s (stderr, terminals only)."""

    _LABELS: ClassVar[dict[str, str]] = {
        "calibrate": "calibrating the model (once per model and chunk size)",
        "leaf": "compressing",
        "merge": "compressing",
    }

    def __init__(self) -> None:
        from rich.console import Console
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeElapsedColumn,
            TimeRemainingColumn,
        )

        self.progress = Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            TextColumn("left"),
            TimeRemainingColumn(),
            console=Console(stderr=True),
            transient=True,
        )
        self.tasks: dict[str, Any] = {}

    def __enter__(self) -> _ProgressBars:
        self.progress.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.progress.stop()

    def __call__(self, event: Any) -> None:
        need = getattr(event, "calibration", None)
        if need is not None:  # said once, above the bar, before the wait it explains
            self.progress.console.print(_calibrating(need), markup=False, highlight=False)
        label = self._LABELS.get(event.stage, event.stage)
        if label not in self.tasks:
            self.tasks[label] = self.progress.add_task(label, total=event.total)
        self.progress.update(self.tasks[label], completed=event.done, total=event.total)


def _calibrating(need: Any) -> str:
    """Why the model is calibrated now, in flags (`homer.calibration.CalibrationNeeded`)."""
    line = f"calibrating for --max-chunk {need.max_chunk_len} ({need.reason}"
    if need.measured_chunk_lens:
        line += "; measured so far for --max-chunk " + ", ".join(
            str(n) for n in need.measured_chunk_lens
        )
    return line + ")"


# ----------------------------------------------------------------------------- commands


@app.command()
def ingest(
    context: typer.Context,
    paths: Annotated[
        list[str],
        typer.Argument(
            help="A PDF, text or markdown file, - to read stdin, or several files, folders "
            "and globs (one cache per document).",
            show_default=False,
        ),
    ],
    model: ModelOpt = None,
    name: Annotated[
        str | None,
        typer.Option(
            "--name",
            help="Name for the cache; default: the file's stem + a short hash.",
            show_default=False,
        ),
    ] = None,
    focus: Annotated[
        str | None,
        typer.Option(
            help="A question to keep in mind while compressing (query-aware mode).",
            show_default=False,
        ),
    ] = None,
    budget: Annotated[
        int | None,
        typer.Option(
            "--budget",
            help="Tokens kept per layer in the cache; default: --max-chunk.",
            show_default=False,
        ),
    ] = None,
    max_chunk: MaxChunkOpt = None,
    device: DeviceOpt = None,
    dtype: DtypeOpt = None,
    force: Annotated[
        bool, typer.Option("--force", help="Recompute even if this document is already saved.")
    ] = False,
    password: Annotated[
        str | None, typer.Option(help="Password of an encrypted PDF.", show_default=False)
    ] = None,
    trust_remote_code: TrustOpt = False,
    as_json: Annotated[
        bool, typer.Option("--json", help="With several documents: print the results as JSON.")
    ] = False,
    max_bytes: MaxBytesOpt = None,
    max_pages: MaxPagesOpt = None,
    max_doc_tokens: MaxDocTokensOpt = None,
) -> None:
    """Compress a document into a saved cache and print the cache's name.

    Only the name goes to stdout, so `name=$(homer ingest book.pdf)` works. Ingesting the same
    document with the same model and settings again reuses the saved cache.

    Given several files, folders (searched for .pdf, .txt, .md, ... files) or globs, it saves
    one cache per document, reuses those already saved (so re-running finishes an interrupted
    batch), reports a failing document and goes on, prints a table of the results (`--json`:
    a JSON array) and exits 1 if any failed. Under `accelerate launch` each process takes its
    share of the documents on its own device.

    Examples:

    ```
    homer ingest book.pdf --name book
    cat notes.md | homer ingest - --budget 1024
    homer ingest papers/ contracts/*.pdf
    accelerate launch --num_processes 2 -m homer_cli ingest library/
    ```
    """
    several = len(paths) != 1 or (paths[0] != "-" and Path(paths[0]).is_dir())
    with user_errors():
        read_limits = read_limits_env(context, max_bytes, max_pages, max_doc_tokens)
    if several:
        with user_errors(hint_max_chunk=max_chunk, max_chunk_option=True):
            for option, value in (("--name", name), ("--focus", focus), ("--password", password)):
                if value is not None:
                    raise typer.BadParameter(f"{option} takes one document, not several")
            if "-" in paths:
                raise typer.BadParameter("- (stdin) cannot be one of several documents")
            _ingest_library(
                paths,
                model=model,
                device=device,
                dtype=dtype,
                trust_remote_code=trust_remote_code,
                budget=budget,
                max_chunk=max_chunk,
                force=force,
                as_json=as_json,
            )
        return
    path = paths[0]
    with user_errors(hint_max_chunk=max_chunk, max_chunk_option=True):
        from homer.config import HomerConfig
        from homer.store import validate_name

        if name is not None:
            validate_name(name)
        _check_at_least("--max-chunk", max_chunk, 8)
        _check_at_least("--budget", budget, 8)
        config = HomerConfig(max_chunk_len=max_chunk, target_len=budget)
        if focus is not None and not focus.strip():
            raise typer.BadParameter("--focus is empty")
        _setup_runtime()
        from homer.documents import load_document

        document = load_document(path, password=password, limits=read_limits())
        loaded = _load_model(model, device, dtype, trust_remote_code, "compress")

        from homer.service import CacheExistsError
        from homer.service import ingest as ingest_document

        bars = _ProgressBars() if _stderr_is_tty() else contextlib.nullcontext(None)
        try:
            with bars as progress:
                done = ingest_document(
                    document,
                    loaded,
                    name=name,
                    config=config,
                    focus=focus,
                    force=force,
                    progress=progress,
                    on_wait=_waiting_for_ingest,
                )
        except CacheExistsError as exc:
            raise typer.BadParameter(
                f"a cache named {exc.name!r} already exists (from {exc.source!r}); "
                "choose another --name, or pass --force to replace it",
                param_hint="--name",
            ) from None
        if done.reused:
            _notice(
                f"reusing the saved cache {done.name!r} (same document, model and settings; "
                "--force recomputes)"
            )
        if not done.reused:
            _notice(_ingest_summary(done.record, done.seconds))
        typer.echo(done.name)


def _process_share() -> tuple[Any, tuple[int, int]]:
    """Under `accelerate launch`, accelerate's state and this process's (index, count); else
    (None, (0, 1)). The store's locks are all the coordination the processes need."""
    import os

    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return None, (0, 1)
    import torch
    from accelerate import PartialState

    # Without a GPU accelerate's state is "multi-CPU" (gloo) only when asked for the CPU.
    state = PartialState(cpu=not torch.cuda.is_available())
    return state, (state.process_index, state.num_processes)


class _LibraryBars:
    """Two bars on stderr (terminals only): documents done, and the current document's tree."""

    def __init__(self, total: int) -> None:
        self.bars = _ProgressBars()
        self.documents = self.bars.progress.add_task("documents", total=total)

    def __enter__(self) -> _LibraryBars:
        self.bars.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        self.bars.__exit__(*exc)

    def start(self, position: int, total: int, path: Path) -> None:
        label = f"documents ({markup_safe(path.name)})"
        self.bars.progress.update(self.documents, description=label)
        for task in self.bars.tasks.values():
            self.bars.progress.reset(task)

    def done(self, outcome: Any) -> None:
        self.bars.progress.advance(self.documents)


def _ingest_library(
    paths: list[str],
    *,
    model: str | None,
    device: str | None,
    dtype: str | None,
    trust_remote_code: bool,
    budget: int | None,
    max_chunk: int | None,
    force: bool,
    as_json: bool,
) -> None:
    """`homer ingest` of several documents: one cache each, this process's share of them."""
    from homer.config import HomerConfig
    from homer.library import find_documents, ingest_many

    _check_at_least("--max-chunk", max_chunk, 8)
    _check_at_least("--budget", budget, 8)
    config = HomerConfig(max_chunk_len=max_chunk, target_len=budget)
    documents = find_documents(paths)
    _setup_runtime()
    state, share = _process_share()
    if state is not None and device is None:
        device = str(state.device)
    loaded = _load_model(model, device, dtype, trust_remote_code, "compress")
    bars: Any = _LibraryBars(len(documents[share[0] :: share[1]])) if _stderr_is_tty() else None
    with bars if bars is not None else contextlib.nullcontext():
        outcomes = ingest_many(
            documents,
            loaded,
            config=config,
            force=force,
            shard=share,
            on_start=bars.start if bars else None,
            on_done=bars.done if bars else None,
            progress=bars.bars if bars else None,
        )
    rows = [o.to_dict() for o in outcomes]
    if state is not None:
        from accelerate.utils import gather_object

        rows = gather_object(rows)
        # Both ranks end the process group themselves once the results are gathered, rather
        # than leave it to interpreter shutdown while the other rank may already be gone.
        state.destroy_process_group()
        if not state.is_main_process:
            failed = sum(row["status"] == "failed" for row in rows)
            raise typer.Exit(1 if failed else 0)
    _print_library_results(rows, as_json)


def _print_library_results(rows: list[dict[str, Any]], as_json: bool) -> None:
    """The batch's results on stdout (a table, or JSON), and exit 1 if any document failed."""
    if as_json:
        typer.echo(json.dumps(rows, ensure_ascii=False))
    else:
        from rich.console import Console
        from rich.table import Table

        table = Table(box=None, header_style="bold")
        for column in ("document", "status", "name", "doc tokens", "cache tokens", "seconds"):
            justify = "right" if column in ("doc tokens", "cache tokens", "seconds") else "left"
            table.add_column(column, justify=justify)  # type: ignore[arg-type]
        for row in rows:
            table.add_row(
                _plain(str(row["path"])),
                str(row["status"]),
                _plain(str(row["name"] or "")),
                f"{row['document_tokens']:,}" if row["document_tokens"] else "",
                f"{row['cache_tokens']:,}" if row["cache_tokens"] else "",
                f"{row['seconds']:.1f}",
            )
        width = None if sys.stdout.isatty() else 200
        Console(file=sys.stdout, width=width, markup=False, highlight=False).print(table)
    failed = [row for row in rows if row["status"] == "failed"]
    for row in failed:
        say(f"{_plain(str(row['path']))}: {_plain(str(row['error']))}")
    if failed:
        say(f"{len(failed)} of {len(rows)} documents failed; the others are saved")
        raise typer.Exit(1)


_plain = printable  # `text` with control characters shown as escapes (homer_cli.terminal)


def _ingest_summary(record: Any, seconds: float) -> str:
    """One line for a person: what was saved, how much it shrank, how long it took."""
    pages = record.meta.get("document", {}).get("page_map") or []
    where = f", {len(pages)} pages" if pages else ""
    return (
        f"saved {record.name}: {record.document_tokens:,} document tokens{where} kept as "
        f"{record.cache_tokens:,} cache tokens in {seconds:.0f} s"
    )


def _until_first(pieces: Iterable[str], message: str = "reading the cache…") -> Iterator[str]:
    """`pieces`, with a spinner on stderr until the first one arrives (terminals only)."""
    if not _stderr_is_tty():
        yield from pieces
        return
    from rich.console import Console

    status = Console(stderr=True).status(message)
    status.start()
    try:
        for piece in pieces:
            status.stop()
            yield piece
    finally:
        status.stop()


def _waiting_for_ingest() -> None:
    """Another process holds this document's ingest lock: say so (and log it for HOMER_DEBUG)."""
    message = "waiting for another ingest of the same document…"
    logging.getLogger("homer.cli").info(message)
    _notice(message)


def _answer(
    question: str,
    *,
    cache_names: list[str],
    model: str | None,
    device: str | None,
    dtype: str | None,
    trust_remote_code: bool,
    max_tokens: int,
    temperature: float,
    top_p: float,
    seed: int | None,
    as_json: bool,
    server_url: str | None = None,
    local: bool = False,
    across: bool = False,
    grounding: GroundingFlags | None = None,
) -> None:
    """Shared body of `ask` and `summarize`: through a running server when one answers (and no
    option says how to load a model here), else in this process. Several `cache_names` are
    joined into one cache; `across` picks the caches most relevant to the question. With
    `grounding`, a single cache's answer re-reads, cites and says when it is not grounded."""
    _check_sampling(max_tokens, temperature, top_p)
    one_cache = len(cache_names) <= 1 and not across
    if one_cache and not (model or device or dtype or trust_remote_code):
        from homer_cli.remote import find_server

        server = find_server(server_url, local=local)
        if server is not None:
            _answer_remote(
                server,
                question,
                cache_name=cache_names[0] if cache_names else None,
                max_tokens=max_tokens,
                temperature=temperature,
                top_p=top_p,
                seed=seed,
                as_json=as_json,
                grounding=grounding,
            )
            return
    _setup_runtime()
    from homer.service import Sampling, ask, open_cache, pick_record
    from homer.store import Store

    sampling = Sampling(max_new_tokens=max_tokens, temperature=temperature, top_p=top_p, seed=seed)
    started = time.perf_counter()
    store = Store()
    names = list(dict.fromkeys(cache_names))
    record = pick_record(store, names[0] if names else None)
    if not names and not across:
        _notice(f"answering from {record.name}")
    model_name = model or record.model_id
    loaded = _load_model(model_name, device, dtype, trust_remote_code, "decode")
    model_loaded = time.perf_counter()
    if across:
        from homer.library import choose_caches

        choice = choose_caches(store, question, loaded)
        # The most relevant is read last, nearest the question (docs/RESULTS.md, the library).
        names = list(reversed(choice.names))
        _notice(
            f"answering from {', '.join(choice.names)} (most relevant first, of "
            f"{len(choice.scores)})"
        )
    document = None
    if len(names) > 1:
        from homer.library import open_joined

        # Citations name each document; a cache saved without its text (format 1) makes the
        # whole join uncitable, reported as for one such cache.
        # --all re-reads and cites the document the router ranked first: the others' passages
        # brought in facts of the same shape that misled the model (docs/RESULTS.md, library).
        search = [names[-1]] if across else None
        joined = open_joined(loaded, names, store=store, search=search)
        cache, records, document = joined.cache, joined.records, joined.document
    else:
        opened = open_cache(loaded, names[0] if names else record.name, store=store)
        cache, records, document = opened.cache, [opened.record], opened.document
    cache_loaded = time.perf_counter()
    policy = None if grounding is None else grounding.build()
    stream = ask(loaded, cache, question, sampling, grounding=policy, document=document)
    if as_json:
        answer = "".join(stream)
    else:
        answer = ""
        for piece in _until_first(stream):
            answer += piece
            write_answer(piece)
        sys.stdout.write("\n")
        sys.stdout.flush()
        if grounding is not None:
            warn_ungrounded(stream)
            show_citations(getattr(stream, "citations", []))
    finished = time.perf_counter()
    if as_json:
        stats = stream.stats
        payload = {
            "answer": answer.strip(),
            "finish_reason": stats.finish_reason,
            "cache": "+".join(r.name for r in records),
            "caches": [r.name for r in records],
            "model": model_name,
            "source": " + ".join(r.source for r in records),
            "tokens": {
                "document": sum(r.document_tokens for r in records),
                "cache": cache.length,
                "prompt": stats.prompt_tokens,
                "answer": stats.new_tokens,
            },
            "timings": {
                "model_load_s": round(model_loaded - started, 4),
                "cache_load_s": round(cache_loaded - model_loaded, 4),
                "time_to_first_token_s": round(stats.time_to_first_token_s, 4),
                "generation_s": round(stats.total_s, 4),
                "grounding_s": round(getattr(stream, "grounding_seconds", 0.0), 4),
                "total_s": round(finished - started, 4),
            },
        } | grounding_fields(stream, grounding)
        typer.echo(json.dumps(payload, ensure_ascii=False))


def _answer_remote(
    server: Any,
    question: str,
    *,
    cache_name: str | None,
    max_tokens: int,
    temperature: float,
    top_p: float,
    seed: int | None,
    as_json: bool,
    grounding: GroundingFlags | None = None,
) -> None:
    """`_answer` through a running server: the same stdout, JSON fields and errors."""
    _setup_logging()
    from homer.service import StoreEmptyError, pick_record
    from homer.store import Store
    from homer_cli.remote import RemoteError, answer

    started = time.perf_counter()
    if server.same_store:  # name the cache here, so a missing one fails as it does in-process
        cache_name = pick_record(Store(), cache_name).name

    def show(piece: str) -> None:
        write_answer(piece)

    try:
        reply = answer(
            server,
            question,
            cache=cache_name,
            max_tokens=max_tokens,
            temperature=temperature,
            top_p=top_p,
            seed=seed,
            on_piece=None if as_json else show,
            cite=grounding.cite if grounding else 0,
            reread=grounding.reread if grounding else False,
        )
    except RemoteError as exc:
        if exc.code == "store_empty":
            raise StoreEmptyError from None
        raise
    info = reply.info
    if not as_json:
        sys.stdout.write("\n")
        sys.stdout.flush()
        if grounding is not None:
            show_remote_grounding(info)
        return
    timings = info.get("timings", {})
    payload = {
        "answer": reply.text.strip(),
        "finish_reason": info.get("finish_reason"),
        "cache": info.get("cache"),
        "caches": [info.get("cache")],
        "model": info.get("model"),
        "source": info.get("source"),
        "tokens": info.get("tokens"),
        "timings": {
            "model_load_s": timings.get("model_load_s"),
            "cache_load_s": timings.get("cache_load_s"),
            "time_to_first_token_s": timings.get("time_to_first_token_s"),
            "generation_s": timings.get("generation_s"),
            "grounding_s": timings.get("grounding_s"),
            "total_s": round(time.perf_counter() - started, 4),
        },
    }
    if grounding is not None:
        payload |= {k: info[k] for k in REPORT_FIELDS if k in info}
        if not grounding.cite:
            payload.pop("citations", None)
    typer.echo(json.dumps(payload, ensure_ascii=False))


@app.command()
def ask(
    question: Annotated[str, typer.Argument(help="The question, or - to read it from stdin.")],
    cache: CachesOpt = None,
    across: AllOpt = False,
    max_tokens: MaxTokensOpt = 128,
    temperature: TemperatureOpt = 0.0,
    top_p: TopPOpt = 1.0,
    seed: SeedOpt = None,
    as_json: JsonOpt = False,
    model: ModelOpt = None,
    device: DeviceOpt = None,
    dtype: DtypeOpt = None,
    trust_remote_code: TrustOpt = False,
    server: ServerOpt = None,
    local: LocalOpt = False,
    cite: CiteOpt = False,
    cite_top: CiteTopOpt = 3,
    reread: RereadOpt = None,
    reread_tokens: RereadTokensOpt = REREAD_TOKENS,
) -> None:
    """Answer a question from a saved cache, streaming the answer to stdout.

    The question's attention over the cache points at the passages that matter; they are
    re-read in full from the text saved with the cache before answering (--no-reread to answer
    from the cache alone). --cite lists the passages the answer rests on. When no passage stands
    out, stderr says the document may not hold the answer (`grounded: false` in --json).

    The model is the one the cache was built with (override with --model; a different model is
    refused). When `homer serve` is running, the question goes to it and the answer starts in
    a moment (the model and cache stay loaded there); otherwise it is answered in this process.

    Examples:

    ```
    homer ask "Who is the narrator's brother?" --cache book
    echo "Who betrays the captain?" | homer ask - --json
    homer ask -c contract -c annex "Which clause sets the notice period?"
    homer ask --all "Which paper reports the largest speed-up?"
    homer ask --cite "When was the treaty signed?"
    ```
    """
    with user_errors():
        if question == "-":
            question = _read_stdin_text("question")
        if not question.strip():
            raise typer.BadParameter("the question is empty", param_hint="QUESTION")
        if across and cache:
            raise typer.BadParameter("--all chooses the caches itself; drop --cache, or --all")
        _answer(
            question.strip(),
            cache_names=cache or [],
            across=across,
            model=model,
            device=device,
            dtype=dtype,
            trust_remote_code=trust_remote_code,
            max_tokens=max_tokens,
            temperature=temperature,
            top_p=top_p,
            seed=seed,
            as_json=as_json,
            server_url=server,
            local=local,
            grounding=grounding_from_flags(
                cite, cite_top, reread, reread_tokens, reread_default=REREAD_DEFAULT
            ),
        )


@app.command()
def summarize(
    cache: CacheOpt = None,
    max_tokens: MaxTokensOpt = 256,
    temperature: TemperatureOpt = 0.0,
    top_p: TopPOpt = 1.0,
    seed: SeedOpt = None,
    as_json: JsonOpt = False,
    model: ModelOpt = None,
    device: DeviceOpt = None,
    dtype: DtypeOpt = None,
    trust_remote_code: TrustOpt = False,
    server: ServerOpt = None,
    local: LocalOpt = False,
    cite: CiteOpt = False,
    cite_top: CiteTopOpt = 3,
    reread: RereadOpt = None,
    reread_tokens: RereadTokensOpt = REREAD_TOKENS,
) -> None:
    """Summarize a saved document, streaming the summary to stdout.

    A summary answers from the cache alone unless --reread is given (re-reading has not been
    measured to help a summary); --cite lists the passages it rests on.

    Example:

    ```
    homer summarize --cache book --max-tokens 200 --cite
    ```
    """
    with user_errors():
        from homer.prompts import SUMMARY_QUESTION

        _answer(
            SUMMARY_QUESTION,
            cache_names=[cache] if cache else [],
            model=model,
            device=device,
            dtype=dtype,
            trust_remote_code=trust_remote_code,
            max_tokens=max_tokens,
            temperature=temperature,
            top_p=top_p,
            seed=seed,
            as_json=as_json,
            server_url=server,
            local=local,
            grounding=grounding_from_flags(
                cite, cite_top, reread, reread_tokens, reread_default=False, check=False
            ),
        )


@app.command("list")
def list_caches(
    as_json: Annotated[bool, typer.Option("--json", help="Print a JSON array instead.")] = False,
) -> None:
    """List the saved caches, oldest first.

    Examples:

    ```
    homer list
    homer list --json | jq -r '.[].name'
    ```
    """
    with user_errors():
        _setup_logging()
        from homer.store import Store

        records = Store().records()
        if as_json:
            rows = [
                {
                    "name": r.name,
                    "source": r.source,
                    "model": r.model_id,
                    "document_tokens": r.document_tokens,
                    "cache_tokens": r.cache_tokens,
                    "size_bytes": r.size_bytes,
                    "created": r.created,
                }
                for r in records
            ]
            typer.echo(json_text(rows))
            return
        if not records:
            say("no saved caches yet; run `homer ingest FILE` first")
            return
        from rich.console import Console
        from rich.table import Table

        table = Table(box=None, header_style="bold")
        for column in ("name", "source", "model", "doc tokens", "cache tokens", "size", "created"):
            justify = "right" if column in ("doc tokens", "cache tokens", "size") else "left"
            table.add_column(column, justify=justify)  # type: ignore[arg-type]
        for r in records:
            table.add_row(
                printable(r.name),
                printable(r.source),
                printable(_short_model(r.model_id)),
                f"{r.document_tokens:,}",
                f"{r.cache_tokens:,}",
                _human_bytes(r.size_bytes),
                r.created.replace("T", " ").removesuffix("+00:00"),
            )
        width = None if sys.stdout.isatty() else 160
        Console(file=sys.stdout, width=width, markup=False, highlight=False).print(table)


def _short_model(model_id: str) -> str:
    path = Path(model_id)
    return path.name if path.is_absolute() else model_id


@app.command()
def show(
    name: Annotated[
        str | None,
        typer.Argument(help="Cache name; default: the most recent.", show_default=False),
    ] = None,
    kept: Annotated[
        bool,
        typer.Option(
            "--kept",
            help="Print the evidence map: the share of the text kept per page (per "
            "1k-token stretch for text), with a bar each.",
        ),
    ] = False,
    kept_text: Annotated[
        bool,
        typer.Option("--text", help="Print the kept text, with ' … ' where text was dropped."),
    ] = False,
    plot: Annotated[
        Path | None,
        typer.Option(
            "--plot",
            help="Draw the evidence map to this image file (PNG, SVG or PDF).",
            show_default=False,
        ),
    ] = None,
) -> None:
    """Print all the metadata of a saved cache as JSON, or what it kept of its document.

    Examples:

    ```
    homer show book
    homer show book --kept
    homer show book --text | less
    homer show book --plot book-kept.png
    ```
    """
    with user_errors():
        _setup_logging()
        from homer.service import pick_record
        from homer.store import Store

        store = Store()
        record = pick_record(store, name)
        if kept or kept_text or plot is not None:
            _show_kept(store, record, kept=kept, text=kept_text, plot=plot)
            return
        meta = dict(record.meta)
        meta["path"] = str(record.path)
        meta["size_bytes"] = record.size_bytes
        typer.echo(json_text(meta, indent=2))


def _show_kept(store: Any, record: Any, *, kept: bool, text: bool, plot: Path | None) -> None:
    """`homer show --kept / --text / --plot` for `record`."""
    from homer.errors import CacheError
    from homer.kept import kept_regions
    from homer.kept import kept_text as kept_text_of
    from homer_cli.kept import plot_map, print_map

    spans = store.read_spans(record.name)
    document = store.read_text(record.name)
    if spans is None or document is None:
        raise CacheError(
            f"cache {record.name} was saved before homer kept sources, so it cannot show what "
            "it kept; ingest the document again to upgrade it"
        )
    if text:
        typer.echo(printable(kept_text_of(spans, document), keep_lines=True))
    meta = record.metadata
    regions = kept_regions(spans, len(document), meta.document.page_map, meta.tokens.document)
    if kept:
        covered = sum(r.kept_chars for r in regions)
        print_map(regions, covered / max(1, len(document)))
    if plot is not None:
        plot_map(regions, f"{printable(record.source)}: kept per part", plot)
        _notice(f"drew {plot}")


@app.command()
def rm(
    names: Annotated[list[str], typer.Argument(help="Cache name(s) to delete.")],
) -> None:
    """Delete saved caches: every existing name given; exits 1 if any was missing.

    Examples:

    ```
    homer rm book
    homer rm $(homer list --json | jq -r '.[].name')
    ```
    """
    with user_errors():
        _setup_logging()
        from homer.store import CacheNotFoundError, Store

        store = Store()
        missing = []
        for name in dict.fromkeys(names):  # each name once, in the order given
            try:
                store.remove(name)
            except CacheNotFoundError:
                missing.append(name)
                continue
            _notice(f"removed {name}")
        if missing:
            listed = ", ".join(repr(name) for name in missing)
            raise CacheNotFoundError(
                f"no cache named {listed}; the others given were removed (see `homer list`)",
                store.names(),
            )


@app.command()
def calibrate(
    model: ModelOpt = None,
    max_chunk: MaxChunkOpt = None,
    force: Annotated[bool, typer.Option("--force", help="Measure again even if saved.")] = False,
    device: DeviceOpt = None,
    dtype: DtypeOpt = None,
    trust_remote_code: TrustOpt = False,
) -> None:
    """Measure and save a model's calibration bias (ingest does this on first use).

    Prints the path of the saved calibration file.

    Example:

    ```
    homer calibrate --model Qwen/Qwen2.5-1.5B-Instruct --device cuda
    ```
    """
    with user_errors(hint_max_chunk=max_chunk, max_chunk_option=True):
        from homer.config import HomerConfig

        _check_at_least("--max-chunk", max_chunk, 8)
        config = HomerConfig(max_chunk_len=max_chunk)
        _setup_runtime()
        loaded = _load_model(model, device, dtype, trust_remote_code, "compress")
        loaded_model, tokenizer = loaded.model, loaded.tokenizer
        from homer import calibrate as run_calibration
        from homer.paths import calibration_dir

        if _stderr_is_tty():
            with _ProgressBars() as bars:

                def on_sample(done: int, total: int) -> None:
                    bars(_Event("calibrate", done, total))

                def on_measure(need: Any) -> None:
                    bars(_Event("calibrate", 0, need.samples, calibration=need))

                result = run_calibration(
                    loaded_model,
                    tokenizer,
                    config,
                    force=force,
                    on_sample=on_sample,
                    on_measure=on_measure,
                )
        else:
            result = run_calibration(loaded_model, tokenizer, config, force=force)
        typer.echo(str(calibration_dir() / f"{result.key}.safetensors"))


app.command("serve")(serve_command)
app.command("chat")(chat_command)


app.command("serve")(serve_command)


@dataclasses.dataclass(frozen=True)
class _Event:
    stage: str
    done: int
    total: int
    calibration: Any = None


def main() -> None:  # pragma: no cover - console entry point alternative
    app()


if __name__ == "__main__":  # pragma: no cover
    main()
