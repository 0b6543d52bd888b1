"""`homer serve`: keep models warm behind an OpenAI-compatible HTTP API (homer_server).

Parses options, refuses unsafe ones, and hands over to `homer_server.run.serve`; it computes
nothing. Logs (where it listens, what it loads and unloads) go to stderr; the process runs in the
foreground until Ctrl-C or SIGTERM and then exits 0.
"""

from __future__ import annotations

import contextlib
import logging
from typing import Annotated

import typer

from homer_cli.errors import debug_enabled, say, user_errors

#: The environment variable holding the API key (the server's and the clients').
API_KEY_ENV = "HOMER_API_KEY"


def serve(
    host: Annotated[
        str,
        typer.Option(
            help="Address to listen on. Anything but loopback needs --api-key.",
        ),
    ] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port; 0 picks a free one.")] = 11480,
    keep_alive: Annotated[
        str,
        typer.Option(
            "--keep-alive",
            help="How long an idle model and its caches stay loaded: a duration (5m, 30s, 1h), "
            "0 to unload after each request, -1 to never unload.",
        ),
    ] = "5m",
    max_caches: Annotated[
        int, typer.Option("--max-caches", help="Most caches held loaded at once (LRU).")
    ] = 8,
    max_cache_memory: Annotated[
        str | None,
        typer.Option(
            "--max-cache-memory",
            help="Most memory for loaded caches, e.g. 2GB (default: only --max-caches bounds).",
            show_default=False,
        ),
    ] = None,
    model: Annotated[
        str | None,
        typer.Option(
            "--model",
            "-m",
            help="Load this model at start (default: each model is loaded on first use).",
            show_default=False,
        ),
    ] = None,
    api_key: Annotated[
        str | None,
        typer.Option(
            "--api-key",
            envvar=API_KEY_ENV,
            help=f"Require 'Authorization: Bearer KEY' on every request (env {API_KEY_ENV}).",
            show_default=False,
        ),
    ] = None,
    max_upload: Annotated[
        str, typer.Option("--max-upload", help="Largest uploaded document.")
    ] = "256MB",
    allow_paths: Annotated[
        bool,
        typer.Option(
            "--allow-paths/--no-allow-paths",
            help="Let clients ingest files on this machine by path (read with the server's "
            "permissions); uploads are always allowed.",
        ),
    ] = True,
    device: Annotated[
        str | None,
        typer.Option(help="cpu, cuda or cuda:N; default: cuda when available.", show_default=False),
    ] = None,
    dtype: Annotated[
        str | None,
        typer.Option(
            help="float32, float16 or bfloat16; default: the device's.", show_default=False
        ),
    ] = None,
    trust_remote_code: Annotated[
        bool,
        typer.Option(
            "--trust-remote-code",
            help="Allow a Hub model's own Python code to run (off by default).",
        ),
    ] = False,
) -> None:
    """Serve saved caches over an OpenAI-compatible API, keeping the model warm.

    Each saved cache is a model named `homer/NAME` (`homer` alone: the most recent). Follow-up
    questions reuse the loaded model and cache, so they answer in a moment. `homer ask` and
    `homer chat` use a server running at $HOMER_SERVER (default http://127.0.0.1:11480) by
    themselves. Stop it with Ctrl-C.

    Examples:

    ```
    homer serve --keep-alive 30m
    curl -s localhost:11480/v1/chat/completions -d '{"model": "homer/book",
      "messages": [{"role": "user", "content": "Who is the narrator?"}]}'
    HOMER_API_KEY=secret homer serve --host 0.0.0.0
    ```
    """
    with user_errors():
        from homer.warm import PoolSettings, parse_bytes, parse_keep_alive

        try:
            keep = parse_keep_alive(keep_alive)
        except ValueError as exc:
            raise typer.BadParameter(str(exc), param_hint="--keep-alive") from None
        if max_caches < 1:
            raise typer.BadParameter(f"--max-caches must be at least 1, got {max_caches}")
        if not 0 <= port <= 65535:
            raise typer.BadParameter(f"--port must be in 0..65535, got {port}")
        try:
            cache_bytes = parse_bytes(max_cache_memory) if max_cache_memory else None
            upload_bytes = parse_bytes(max_upload)
        except ValueError as exc:
            raise typer.BadParameter(str(exc)) from None

        from homer_server.run import Listen, check_safe

        check_safe(host, api_key)  # before loading anything
        from homer_cli.main import _setup_runtime

        _setup_runtime()
        if not debug_enabled():
            # Loads and unloads are what a person watching the server wants to see.
            logging.getLogger("homer").setLevel(logging.INFO)

        from homer.warm import WarmPool
        from homer_server.app import ServerSettings
        from homer_server.run import serve as run_server

        pool = WarmPool(
            PoolSettings(
                keep_alive_s=keep,
                max_caches=max_caches,
                max_cache_bytes=cache_bytes,
                device=device,
                dtype=dtype,
                trust_remote_code=trust_remote_code,
            )
        )
        if model is not None:
            say(f"loading {model}…")
            pool.preload(model)
        settings = ServerSettings(
            api_key=api_key, max_upload_bytes=upload_bytes, allow_paths=allow_paths
        )
        shown_keep = "never unloads" if keep is None else f"keep-alive {keep_alive}"

        def ready(url: str) -> None:
            auth = "; API key required" if api_key else ""
            say(
                f"listening on {url} ({shown_keep}, at most {max_caches} caches{auth}); "
                "Ctrl-C stops"
            )

        # A second Ctrl-C during the graceful stop ends it at once; still a clean exit.
        with contextlib.suppress(KeyboardInterrupt):
            run_server(pool, settings, Listen(host, port), on_ready=ready)
        say("stopped")
