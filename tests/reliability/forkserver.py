"""A fork server that runs the real `homer` CLI in fresh processes without paying imports each time.

Importing torch and transformers takes most of the ten seconds a `homer ingest` subprocess needs on
a small machine; the kill and concurrency trials need dozens of such processes. This script imports
everything once (without running a single tensor operation, so no thread pool exists yet) and then
forks one child per request. Each child is an ordinary process running `homer_cli.main.app` on its
own argv, environment, stdin, stdout and stderr files: the test can SIGINT or SIGKILL it like any
other.

Protocol, one JSON object per line on stdin, one answer per line on stdout:

    {"op": "run", "argv": [...], "env": {...}, "dir": "/tmp/x", "stdin": null, "slow": 0.0}
        -> {"pid": 1234}
    {"op": "wait", "pid": 1234}   -> {"status": 0}   (negative: killed by that signal)
    {"op": "run", "call": ["module", "function", [args]], "env": {...}, "dir": "/tmp/x"}
        -> {"pid": 1234}   (a child running `module.function(*args)` instead of the CLI)

A child writes `@@phase NAME` lines to its stderr when the CLI starts (`cli`), when `compress`
starts (`compress`), when `Store.save` starts (`save`) and when the command returns (`done`), so
a trial can aim its signal at a phase. `slow` > 0 sleeps that many seconds before each write,
fsync and rename of a save, so a random moment inside the save window is easy to hit. Nothing
else in the CLI is changed.

Run as `python -m tests.reliability.forkserver` from the repository root.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import time
from typing import Any


def _warm_imports() -> None:
    """Import what a CLI run imports, so children start with it all in memory."""
    import importlib

    import transformers

    for module in (
        "safetensors.torch",
        "torch",
        "transformers.models.llama.modeling_llama",
        "homer.calibration",
        "homer.compression",
        "homer.documents",
        "homer.fingerprint",
        "homer.generation",
        "homer.models",
        "homer.store",
        "homer_cli.main",
    ):
        importlib.import_module(module)
    from transformers import AutoModelForCausalLM, AutoTokenizer  # noqa: F401

    transformers.utils.logging.disable_progress_bar()


def _phase(name: str) -> None:
    os.write(2, f"@@phase {name}\n".encode())


def _instrument(slow: float) -> None:
    """Add phase markers (and, when `slow` > 0, pauses) around the save path of this child."""
    import homer.compression
    import homer.store
    import homer.store.format
    import homer.store.fs

    compress = homer.compression.compress

    def marked_compress(*args: Any, **kwargs: Any) -> Any:
        _phase("compress")
        return compress(*args, **kwargs)

    homer.compression.compress = marked_compress  # type: ignore[assignment]
    save = homer.store.Store.save

    def marked_save(self: Any, *args: Any, **kwargs: Any) -> Any:
        _phase("save")
        return save(self, *args, **kwargs)

    homer.store.Store.save = marked_save  # type: ignore[method-assign]
    if slow <= 0:
        return

    def paused(fn: Any) -> Any:
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            time.sleep(slow)
            return fn(*args, **kwargs)

        return wrapper

    for module, name in (
        (homer.store.format, "write_tensors"),
        (homer.store.fs, "write_durable"),
        (homer.store.fs, "fsync_dir"),
    ):
        setattr(module, name, paused(getattr(module, name)))
    os.replace = paused(os.replace)  # this child's renames (the store's included)


def _child(request: dict[str, Any]) -> None:
    """Body of a forked child: never returns."""
    code = 0
    try:
        folder = request["dir"]
        stdin = request.get("stdin") or os.devnull
        os.dup2(os.open(stdin, os.O_RDONLY), 0)
        os.dup2(os.open(f"{folder}/stdout", os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644), 1)
        os.dup2(os.open(f"{folder}/stderr", os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644), 2)
        os.environ.update(request.get("env", {}))
        # What a terminal user gets, even when the test runner ignores SIGINT (background jobs).
        signal.signal(signal.SIGINT, signal.default_int_handler)
        _instrument(float(request.get("slow", 0.0)))
        import homer_cli.main

        _phase("cli")
        try:
            if request.get("call"):  # a test's own worker, with everything already imported
                import importlib

                module, function, args = request["call"]
                getattr(importlib.import_module(module), function)(*args)
            else:
                homer_cli.main.app(request["argv"], prog_name="homer")
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
        _phase("done")
    except KeyboardInterrupt:
        code = 130
    except BaseException as exc:  # a harness failure: visible in the child's stderr
        os.write(2, f"forkserver child crashed: {type(exc).__name__}: {exc}\n".encode())
        code = 99
    finally:
        try:
            sys.stdout.flush()
            sys.stderr.flush()
        finally:
            os._exit(code)


def main() -> None:
    """Serve requests on stdin until it closes."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # only children are meant to be interrupted
    _warm_imports()
    out = sys.stdout
    out.write(json.dumps({"ready": os.getpid()}) + "\n")
    out.flush()
    for line in sys.stdin:
        request = json.loads(line)
        if request["op"] == "run":
            out.flush()
            pid = os.fork()
            if pid == 0:
                _child(request)
            answer: dict[str, Any] = {"pid": pid}
        elif request["op"] == "wait":
            _, status = os.waitpid(int(request["pid"]), 0)
            answer = {"status": os.waitstatus_to_exitcode(status)}
        else:
            answer = {"error": f"unknown op {request['op']!r}"}
        out.write(json.dumps(answer) + "\n")
        out.flush()


if __name__ == "__main__":
    main()
