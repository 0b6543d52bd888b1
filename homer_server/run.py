"""Running the application: bind, refuse unsafe addresses, serve until SIGINT/SIGTERM, exit 0.

The socket is bound here rather than by uvicorn so that `--port 0` (an ephemeral port) can be
reported before the first request, and so that a busy port fails with one clear message. The
keep-alive reaper is an asyncio task that asks the pool, every few seconds, to unload what has
been idle for longer than the keep-alive.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import ipaddress
import logging
import signal
import socket
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from homer.errors import HomerError
from homer.warm import WarmPool
from homer_server.app import ServerSettings, create_app

logger = logging.getLogger("homer.server")

#: homer's port when none is given (ollama uses 11434, llama-server 8080).
DEFAULT_PORT = 11480
DEFAULT_HOST = "127.0.0.1"
#: Seconds a stop waits for answers in flight (they are cancelled first, so this is a bound).
GRACEFUL_SHUTDOWN_S = 5


class ServeError(HomerError):
    """The server cannot start: an unsafe address without a key, or the port is taken."""


def is_loopback(host: str) -> bool:
    """Whether every address `host` names is a loopback address (127.0.0.0/8, ::1)."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        pass
    try:
        infos = socket.getaddrinfo(host, None)
    except OSError:
        return False
    return bool(infos) and all(ipaddress.ip_address(i[4][0]).is_loopback for i in infos)


def bind(host: str, port: int) -> socket.socket:
    """A listening TCP socket on `host:port` (`port` 0: any free port).

    Raises:
        ServeError: the address cannot be bound (taken, not this machine's), named with the fix.
    """
    try:
        family, kind, proto, _, address = socket.getaddrinfo(
            host.strip("[]"), port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )[0]
    except OSError as exc:
        raise ServeError(f"cannot resolve the host {host!r}: {exc.strerror or exc}") from exc
    sock = socket.socket(family, kind, proto)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind(address)
        sock.listen(128)
    except OSError as exc:
        sock.close()
        if exc.errno == errno.EADDRINUSE:
            raise ServeError(
                f"port {port} on {host} is already in use (another homer serve?); "
                "choose another with --port"
            ) from exc
        raise ServeError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from exc
    return sock


def url_of(sock: socket.socket) -> str:
    host, port = sock.getsockname()[:2]
    shown = f"[{host}]" if ":" in host else host
    return f"http://{shown}:{port}"


@dataclass(frozen=True)
class Listen:
    host: str = DEFAULT_HOST
    port: int = DEFAULT_PORT


def check_safe(host: str, api_key: str | None) -> None:
    """Refuse a non-loopback address without an API key (anyone on the network could use it).

    Raises:
        ServeError: naming the address and the fix.
    """
    if not api_key and not is_loopback(host):
        raise ServeError(
            f"refusing to listen on {host} without an API key: anyone who can reach it could "
            "read your documents; set --api-key (or HOMER_API_KEY), or listen on 127.0.0.1"
        )


def _make_server(app: object, on_stop: Callable[[], None]) -> object:
    import uvicorn

    class _Server(uvicorn.Server):
        async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
            on_stop()  # answers in flight end at their next token, not at the grace timeout
            await super().shutdown(sockets)

        @contextlib.contextmanager
        def capture_signals(self) -> Iterator[None]:
            # uvicorn re-raises the signal after a graceful stop, so the process would die by
            # it (exit 130 / 143); a clean stop asked for by the user exits 0 instead.
            handled = (signal.SIGINT, signal.SIGTERM)
            previous = {sig: signal.signal(sig, self.handle_exit) for sig in handled}
            try:
                yield
            finally:
                for sig, handler in previous.items():
                    signal.signal(sig, handler)

    config = uvicorn.Config(
        app,  # type: ignore[arg-type]
        log_level="warning",
        access_log=False,
        lifespan="on",
        timeout_graceful_shutdown=GRACEFUL_SHUTDOWN_S,
        ws="none",
    )
    return _Server(config)


async def _reap_forever(pool: WarmPool) -> None:
    keep = pool.settings.keep_alive_s
    if keep is None:
        return
    interval = min(max(keep / 4, 0.5), 10.0)
    while True:
        await asyncio.sleep(interval)
        for what in await asyncio.to_thread(pool.reap):
            logger.info("unloaded %s (idle)", what)


def serve(
    pool: WarmPool,
    settings: ServerSettings,
    listen: Listen,
    *,
    on_ready: Callable[[str], None] | None = None,
) -> None:
    """Serve until SIGINT or SIGTERM, then return (answers in flight are cancelled).

    Raises:
        ServeError: an unsafe address without a key, or the address cannot be bound.
    """
    check_safe(listen.host, settings.api_key)
    sock = bind(listen.host, listen.port)
    app = create_app(pool, settings)
    server = _make_server(app, app.state.api.cancel_all)

    async def main() -> None:
        reaper = asyncio.create_task(_reap_forever(pool))
        if on_ready is not None:
            on_ready(url_of(sock))
        try:
            await server.serve(sockets=[sock])  # type: ignore[attr-defined]
        finally:
            reaper.cancel()

    try:
        asyncio.run(main())
    finally:
        sock.close()
