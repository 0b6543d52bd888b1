"""The HTTP application: OpenAI-compatible chat completions over saved caches, and homer's own
endpoints to ingest, list, show and remove them.

    GET    /health                       liveness, the store, what is loaded
    GET    /v1/models                    saved caches as models (`homer/<name>`), with metadata
    GET    /v1/models/homer/<name>       one of them
    POST   /v1/chat/completions          answer from a cache (streaming SSE or not)
    GET    /v1/homer/caches              the store's caches (`homer list --json` rows)
    GET    /v1/homer/caches/<name>       one cache's metadata (`homer show`)
    DELETE /v1/homer/caches/<name>       remove it (`homer rm`)
    POST   /v1/homer/ingest              ingest a file on the server's machine ({"path": ...})
    POST   /v1/homer/ingest/upload       ingest the request body (?filename=...)

Every computation runs in a worker thread through `homer.warm.WarmPool` (one answer per model at a
time; ingest on its own model copy), so the event loop only moves bytes: a slow answer never
stalls `/health`, a listing or an answer on another model. A client that disconnects cancels its
answer before the next token. Failures are OpenAI-style error objects (`homer_server.errors`).
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import json
import logging
import re
import shutil
import tempfile
import threading
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route
from starlette.types import ASGIApp, Receive, Scope, Send

from homer.warm import WarmPool
from homer_server import schema
from homer_server.errors import ApiError, from_exception

logger = logging.getLogger("homer.server")

#: Largest JSON request body by default (a long conversation fits many times over).
DEFAULT_MAX_REQUEST_BYTES = 1 << 20
#: Largest uploaded document by default.
DEFAULT_MAX_UPLOAD_BYTES = 256 << 20

_FILENAME_RE = re.compile(r"[^A-Za-z0-9._ -]+")
_MAX_FILENAME = 200  # characters of an uploaded document's name kept (all ASCII by then)


@dataclass(frozen=True)
class ServerSettings:
    """What the application enforces.

    Attributes:
        api_key: when set, every request needs `Authorization: Bearer <api_key>`.
        max_request_bytes: largest JSON body.
        max_upload_bytes: largest uploaded document.
        allow_paths: `POST /v1/homer/ingest` may read files on the server's machine (with the
            server's permissions).
    """

    api_key: str | None = None
    max_request_bytes: int = DEFAULT_MAX_REQUEST_BYTES
    max_upload_bytes: int = DEFAULT_MAX_UPLOAD_BYTES
    allow_paths: bool = True


def _error_response(error: ApiError) -> JSONResponse:
    headers = {"WWW-Authenticate": "Bearer"} if error.status == 401 else None
    return JSONResponse(error.body(), status_code=error.status, headers=headers)


class ApiKeyMiddleware:
    """Refuses every HTTP request without `Authorization: Bearer <key>` (constant-time compare)."""

    def __init__(self, app: ASGIApp, key: str) -> None:
        self.app = app
        self.expected = f"Bearer {key}".encode()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            given = dict(scope["headers"]).get(b"authorization", b"")
            if not hmac.compare_digest(given, self.expected):
                error = ApiError(
                    401,
                    "missing or wrong API key: send Authorization: Bearer <key>",
                    type="authentication_error",
                    code="invalid_api_key",
                )
                await _error_response(error)(scope, receive, send)
                return
        await self.app(scope, receive, send)


# ----------------------------------------------------------------------------- request bodies


async def _read_body(request: Request, limit: int) -> bytes:
    """The body, refused with 413 past `limit` bytes (before reading it when the length says)."""
    declared = request.headers.get("content-length")
    too_large = ApiError(
        413, f"the request body is larger than {limit} bytes", code="request_too_large"
    )
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise too_large
    parts = []
    size = 0
    async for part in request.stream():
        size += len(part)
        if size > limit:
            raise too_large
        parts.append(part)
    return b"".join(parts)


async def _read_json(request: Request, limit: int) -> Any:
    data = await _read_body(request, limit)
    try:
        return json.loads(data)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ApiError(
            400, f"the request body is not valid JSON: {exc}", code="invalid_json"
        ) from None
    except RecursionError:  # `[[[[...` thousands deep: no request needs that
        raise ApiError(400, "the request body is nested too deeply", code="invalid_json") from None
    except ValueError as exc:  # an integer of more digits than Python converts
        raise ApiError(400, f"the request body holds {exc}", code="invalid_json") from None


async def _disconnected(request: Request) -> None:
    """Returns when the client goes away (call only once the body has been read)."""
    while True:
        message = await request.receive()
        if message["type"] == "http.disconnect":
            return


# ----------------------------------------------------------------------------- worker threads


class _Job:
    """Work in a daemon thread that reports `(kind, value)` events to the event loop.

    Daemon threads, not an executor: a stop must not wait for an ingest that runs for minutes
    (the store's writes are atomic, so an abandoned ingest leaves nothing half-written).
    """

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.events: asyncio.Queue[tuple[str, Any]] = asyncio.Queue()
        self._cancel = threading.Event()

    def emit(self, kind: str, value: Any = None) -> None:
        with contextlib.suppress(RuntimeError):  # the loop is closed: the server stopped
            self.loop.call_soon_threadsafe(self.events.put_nowait, (kind, value))

    def start(self, target: Callable[[], None], name: str) -> None:
        threading.Thread(target=target, name=name, daemon=True).start()

    @property
    def cancelled(self) -> bool:
        return self._cancel.is_set()

    def cancel(self) -> None:
        self._cancel.set()


class AnswerJob(_Job):
    """One chat completion: lease the model and cache, then stream the answer's pieces."""

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        pool: WarmPool,
        chat: schema.ChatRequest,
        tally: Callable[[str], None],
    ) -> None:
        super().__init__(loop)
        self.pool = pool
        self.chat = chat
        self.tally = tally
        self.stream: Any = None
        self.start(self._run, "homer-answer")

    def cancel(self) -> None:
        super().cancel()
        stream = self.stream
        if stream is not None:
            stream.cancel()

    def _run(self) -> None:
        from homer.grounding import REREAD_DEFAULT, Grounding
        from homer.prompts import Turn
        from homer.service import Sampling, ask

        chat = self.chat
        try:
            with self.pool.lease(chat.cache) as lease:
                if self.cancelled:
                    self.tally("cancelled")
                    self.emit("cancelled")
                    return
                sampling = Sampling(
                    max_new_tokens=chat.max_tokens,
                    temperature=chat.temperature,
                    top_p=chat.top_p,
                    seed=chat.seed,
                    stop=chat.stop,
                    stop_loops=chat.stop_loops,
                )
                history = [Turn(q, a) for q, a in chat.history]
                grounding = Grounding(
                    cite=chat.cite, reread=REREAD_DEFAULT if chat.reread is None else chat.reread
                )
                stream = ask(
                    lease.model,
                    lease.cache.cache,
                    chat.question,
                    sampling,
                    history,
                    grounding=grounding,
                    document=lease.cache.document,
                )
                self.stream = stream
                if self.cancelled:
                    stream.cancel()
                record = lease.cache.record
                self.emit("start", schema.model_id(record.name))
                for piece in stream:
                    self.emit("piece", piece)
                stats = stream.stats
                self.tally(stats.finish_reason)
                self.emit(
                    "end",
                    {
                        "cache": record.name,
                        "model": record.model_id,
                        "source": record.source,
                        "finish_reason": stats.finish_reason,
                        "tokens": {
                            "document": record.document_tokens,
                            "cache": record.cache_tokens,
                            "prompt": stats.prompt_tokens,
                            "answer": stats.new_tokens,
                        },
                        "timings": {
                            "queue_s": round(lease.waited_s, 4),
                            "model_load_s": round(lease.model_load_s, 4),
                            "cache_load_s": round(lease.cache_load_s, 4),
                            "time_to_first_token_s": round(stats.time_to_first_token_s, 4),
                            "generation_s": round(stats.total_s, 4),
                            "grounding_s": round(stream.grounding_seconds, 4),
                        },
                    }
                    | stream.report(),
                )
        except BaseException as exc:  # reported to the client; the thread ends cleanly
            self.tally("error")
            self.emit("error", exc)


class IngestJob(_Job):
    """One ingest through the pool, reporting the engine's progress events."""

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        work: Callable[[Callable[[Any], None]], Any],
        cleanup: Callable[[], None] | None = None,
    ) -> None:
        super().__init__(loop)
        self.work = work
        self.cleanup = cleanup
        self.start(self._run, "homer-ingest")

    def _progress(self, event: Any) -> None:
        self.emit(
            "progress",
            {"stage": event.stage, "done": event.done, "total": event.total, "level": event.level},
        )

    def _run(self) -> None:
        try:
            done = self.work(self._progress)
            self.emit("done", done)
        except BaseException as exc:
            self.emit("error", exc)
        finally:
            if self.cleanup is not None:
                self.cleanup()


# ----------------------------------------------------------------------------- shapes


def _created_epoch(created: str) -> int:
    try:
        return int(datetime.fromisoformat(created).timestamp())
    except ValueError:
        return 0


def _row(record: Any) -> dict[str, Any]:
    """A cache as `homer list --json` shows it."""
    return {
        "name": record.name,
        "source": record.source,
        "model": record.model_id,
        "document_tokens": record.document_tokens,
        "cache_tokens": record.cache_tokens,
        "size_bytes": record.size_bytes,
        "created": record.created,
    }


def _model_entry(record: Any) -> dict[str, Any]:
    return {
        "id": schema.model_id(record.name),
        "object": "model",
        "created": _created_epoch(record.created),
        "owned_by": "homer",
        "homer": _row(record),
    }


def _sse(payload: Any) -> str:
    return f"data: {json.dumps(payload, ensure_ascii=False)}\n\n"


# ----------------------------------------------------------------------------- the application


class HomerApi:
    """The routes, over one pool and one set of settings."""

    def __init__(self, pool: WarmPool, settings: ServerSettings) -> None:
        self.pool = pool
        self.settings = settings
        self.jobs: set[_Job] = set()
        self.started = time.time()
        # Answers by how they ended (stop, length, cancelled, error), for /health.
        self.answers: Counter[str] = Counter()
        self._answers_lock = threading.Lock()

    def _tally(self, how: str) -> None:
        with self._answers_lock:
            self.answers[how] += 1

    # ------------------------------------------------------------- info

    async def health(self, request: Request) -> Response:
        loaded = await asyncio.to_thread(self.pool.loaded)
        return JSONResponse(
            {
                "status": "ok",
                "version": _version(),
                "store": str(self.pool.store.root),
                "loaded": loaded,
                "keep_alive_s": self.pool.settings.keep_alive_s,
                "answers": {k: self.answers[k] for k in ("stop", "length", "cancelled", "error")},
                "in_flight": len(self.jobs),
                "uptime_s": round(time.time() - self.started, 1),
            }
        )

    async def models(self, request: Request) -> Response:
        records = await asyncio.to_thread(self.pool.store.records)
        return JSONResponse({"object": "list", "data": [_model_entry(r) for r in records]})

    async def model(self, request: Request) -> Response:
        name = schema.cache_of(request.path_params["model"])
        record = await asyncio.to_thread(self.pool.record, name)
        return JSONResponse(_model_entry(record))

    async def caches(self, request: Request) -> Response:
        records = await asyncio.to_thread(self.pool.store.records)
        return JSONResponse([_row(r) for r in records])

    async def show(self, request: Request) -> Response:
        name = _name_param(request.path_params["name"])
        record = await asyncio.to_thread(self.pool.record, name)
        meta = dict(record.meta)
        meta["path"] = str(record.path)
        meta["size_bytes"] = record.size_bytes
        return JSONResponse(meta)

    async def remove(self, request: Request) -> Response:
        name = _name_param(request.path_params["name"])
        await asyncio.to_thread(self.pool.store.remove, name)
        self.pool.forget(name)
        return JSONResponse({"name": name, "deleted": True})

    # ------------------------------------------------------------- answers

    async def chat_completions(self, request: Request) -> Response:
        chat = schema.parse_chat(await _read_json(request, self.settings.max_request_bytes))
        job = AnswerJob(asyncio.get_running_loop(), self.pool, chat, self._tally)
        self.jobs.add(job)
        handed_over = False
        try:
            first = await self._next(job, request)
            if first is None:  # the client left while its request waited
                return Response(status_code=499)
            kind, value = first
            if kind == "error":
                raise from_exception(value)
            if kind == "cancelled":
                raise ApiError(503, "the server is stopping", type="server_error", code="stopping")
            model = value
            if chat.stream:
                handed_over = True
                return StreamingResponse(
                    self._stream(job, chat, model),
                    media_type="text/event-stream",
                    headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
                )
            return await self._whole(job, request, model)
        finally:
            if not handed_over:
                job.cancel()
                self.jobs.discard(job)

    async def _next(self, job: _Job, request: Request) -> tuple[str, Any] | None:
        """The job's next event, or None if the client disconnected first (the job is then
        cancelled)."""
        getter = asyncio.ensure_future(job.events.get())
        watcher = asyncio.ensure_future(_disconnected(request))
        try:
            done, _ = await asyncio.wait({getter, watcher}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            watcher.cancel()
        if getter in done:
            return getter.result()
        getter.cancel()
        job.cancel()
        return None

    async def _whole(self, job: AnswerJob, request: Request, model: str) -> Response:
        pieces: list[str] = []
        while True:
            event = await self._next(job, request)
            if event is None:
                return Response(status_code=499)
            kind, value = event
            if kind == "piece":
                pieces.append(value)
            elif kind == "error":
                raise from_exception(value)
            elif kind == "end":
                tokens = value["tokens"]
                return JSONResponse(
                    schema.completion(
                        schema.completion_id(),
                        model,
                        "".join(pieces),
                        value["finish_reason"],
                        schema.usage(tokens["prompt"], tokens["answer"]),
                        value,
                    )
                )

    async def _stream(
        self, job: AnswerJob, chat: schema.ChatRequest, model: str
    ) -> AsyncIterator[str]:
        ident = schema.completion_id()
        try:
            yield _sse(schema.chunk(ident, model, {"role": "assistant", "content": ""}))
            while True:
                kind, value = await job.events.get()
                if kind == "piece":
                    yield _sse(schema.chunk(ident, model, {"content": value}))
                elif kind == "error":
                    yield _sse(from_exception(value).body())
                    break
                elif kind == "end":
                    tokens = value["tokens"]
                    counts = schema.usage(tokens["prompt"], tokens["answer"])
                    yield _sse(schema.chunk(ident, model, {}, value["finish_reason"], extra=value))
                    if chat.include_usage:
                        yield _sse(
                            schema.chunk(ident, model, {}, usage_counts=counts, choices=False)
                        )
                    break
            yield "data: [DONE]\n\n"
        finally:
            # Reached on a client disconnect too (the response task is cancelled mid-await).
            job.cancel()
            self.jobs.discard(job)

    # ------------------------------------------------------------- ingest

    def _ingest_options(self, given: dict[str, Any]) -> tuple[str | None, dict[str, Any], bool]:
        """(model, service.ingest keyword options, stream) from a request's fields."""
        from homer.config import HomerConfig
        from homer.store import validate_name

        def text(key: str) -> str | None:
            value = given.get(key)
            if value is not None and not isinstance(value, str):
                raise ApiError(400, f"{key} must be a string", param=key, code="invalid_type")
            return value

        def number(key: str) -> int | None:
            value = given.get(key)
            if isinstance(value, str) and value.isdigit():
                value = int(value)
            if value is not None and (isinstance(value, bool) or not isinstance(value, int)):
                raise ApiError(400, f"{key} must be an integer", param=key, code="invalid_type")
            return value

        def flag(key: str) -> bool:
            value = given.get(key, False)
            if isinstance(value, str) and value.lower() in ("true", "1", "false", "0", ""):
                value = value.lower() in ("true", "1")
            if not isinstance(value, bool):
                raise ApiError(400, f"{key} must be true or false", param=key, code="invalid_type")
            return value

        name = text("name")
        if name is not None:
            try:
                validate_name(name)
            except Exception as exc:
                raise ApiError(400, str(exc), param="name", code="invalid_cache_name") from None
        focus = text("focus")
        if focus is not None and not focus.strip():
            raise ApiError(400, "focus is empty", param="focus", code="invalid_value")
        try:
            config = HomerConfig(max_chunk_len=number("max_chunk"), target_len=number("budget"))
        except ValueError as exc:
            raise ApiError(400, str(exc), code="invalid_value") from None
        options = {"name": name, "focus": focus, "force": flag("force"), "config": config}
        return text("model"), options, flag("stream")

    async def ingest(self, request: Request) -> Response:
        body = await _read_json(request, self.settings.max_request_bytes)
        if not isinstance(body, dict):
            raise ApiError(400, "the request body must be a JSON object", code="invalid_body")
        path = body.get("path")
        if not isinstance(path, str) or not path:
            raise ApiError(
                400, "path must be a file path on the server", param="path", code="invalid_type"
            )
        if not self.settings.allow_paths:
            raise ApiError(
                403,
                "this server does not read files from its own disk; upload the document to "
                "/v1/homer/ingest/upload instead",
                param="path",
                code="paths_disabled",
            )
        model, options, stream = self._ingest_options(body)
        return await self._run_ingest(request, path, model, options, stream)

    async def upload(self, request: Request) -> Response:
        filename = request.query_params.get("filename", "")
        safe = _FILENAME_RE.sub("-", Path(filename).name).strip(" .-")
        if len(safe) > _MAX_FILENAME:  # the system refuses names past 255 bytes
            suffix = Path(safe).suffix[:16]
            safe = safe[: _MAX_FILENAME - len(suffix)] + suffix
        if not safe:
            raise ApiError(
                400,
                "give the document's file name as ?filename=NAME",
                param="filename",
                code="invalid_value",
            )
        model, options, stream = self._ingest_options(dict(request.query_params))
        data = await _read_body(request, self.settings.max_upload_bytes)
        folder = Path(tempfile.mkdtemp(prefix="homer-upload-"))
        path = folder / safe
        try:
            path.write_bytes(data)
        except BaseException:
            shutil.rmtree(folder, ignore_errors=True)  # a full /tmp leaves nothing behind
            raise
        return await self._run_ingest(
            request,
            str(path),
            model,
            options,
            stream,
            cleanup=lambda: shutil.rmtree(folder, ignore_errors=True),
        )

    async def _run_ingest(
        self,
        request: Request,
        path: str,
        model: str | None,
        options: dict[str, Any],
        stream: bool,
        cleanup: Callable[[], None] | None = None,
    ) -> Response:
        def work(progress: Callable[[Any], None]) -> Any:
            return self.pool.ingest(path, model, progress=progress, **options)

        job = IngestJob(asyncio.get_running_loop(), work, cleanup)
        self.jobs.add(job)
        if stream:
            return StreamingResponse(self._ingest_events(job), media_type="text/event-stream")
        try:
            while True:
                kind, value = await job.events.get()
                if kind == "done":
                    return JSONResponse(_ingested(value))
                if kind == "error":
                    raise from_exception(value)
        finally:
            self.jobs.discard(job)

    async def _ingest_events(self, job: IngestJob) -> AsyncIterator[str]:
        try:
            while True:
                kind, value = await job.events.get()
                if kind == "progress":
                    yield _sse({"type": "progress", **value})
                elif kind == "done":
                    yield _sse({"type": "done", **_ingested(value)})
                    break
                elif kind == "error":
                    yield _sse({"type": "error", **from_exception(value).body()})
                    break
            yield "data: [DONE]\n\n"
        finally:
            self.jobs.discard(job)

    def cancel_all(self) -> None:
        """Stop every answer in flight (at shutdown); ingests finish or are abandoned."""
        for job in list(self.jobs):
            job.cancel()


def _name_param(name: str) -> str:
    from homer.store import validate_name

    try:
        return validate_name(name)
    except Exception as exc:
        raise ApiError(400, str(exc), param="name", code="invalid_cache_name") from None


def _guarded(handler: Callable[[Request], Any]) -> Callable[[Request], Any]:
    """`handler` with every exception turned into an error response (never a traceback)."""

    async def guarded(request: Request) -> Response:
        try:
            return await handler(request)  # type: ignore[no-any-return]
        except Exception as exc:
            return _error_response(from_exception(exc))

    return guarded


def _ingested(done: Any) -> dict[str, Any]:
    return {
        "name": done.name,
        "reused": done.reused,
        "seconds": round(done.seconds, 3),
        "cache": _row(done.record),
    }


def _version() -> str:
    from homer import __version__

    return __version__


async def _http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    codes = {404: "not_found", 405: "method_not_allowed"}
    message = {
        404: f"no such endpoint: {request.url.path}",
        405: f"{request.method} is not allowed on {request.url.path}",
    }
    error = ApiError(
        exc.status_code,
        message.get(exc.status_code, str(exc.detail)),
        code=codes.get(exc.status_code),
    )
    return _error_response(error)


def create_app(pool: WarmPool, settings: ServerSettings | None = None) -> Starlette:
    """The ASGI application serving `pool` (see the module docstring for the routes)."""
    settings = settings or ServerSettings()
    api = HomerApi(pool, settings)
    routes = [
        ("/health", api.health, "GET"),
        ("/v1/models", api.models, "GET"),
        ("/v1/models/{model:path}", api.model, "GET"),
        ("/v1/chat/completions", api.chat_completions, "POST"),
        ("/v1/homer/caches", api.caches, "GET"),
        ("/v1/homer/caches/{name}", api.show, "GET"),
        ("/v1/homer/caches/{name}", api.remove, "DELETE"),
        ("/v1/homer/ingest", api.ingest, "POST"),
        ("/v1/homer/ingest/upload", api.upload, "POST"),
    ]

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        yield
        api.cancel_all()

    app = Starlette(
        routes=[Route(path, _guarded(f), methods=[m]) for path, f, m in routes],
        exception_handlers={HTTPException: _http_error},
        lifespan=lifespan,
    )
    app.state.api = api
    if settings.api_key:
        app.add_middleware(ApiKeyMiddleware, key=settings.api_key)
    return app
