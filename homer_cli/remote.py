"""Talking to a running `homer serve`: finding it, and asking it through its OpenAI API.

`homer ask`, `homer summarize` and `homer chat` use a server when one answers at the configured
address (`--server URL`, else `$HOMER_SERVER`, else http://127.0.0.1:11480), and answer
in-process otherwise. Finding none costs one refused TCP connect on loopback (well under a
millisecond). A server found only at the default address is used only when it serves the same
store as this command (its /health says which), so a server started for another `HOMER_HOME` never
answers for this one; an address given explicitly is trusted. `--local` or `HOMER_SERVER=off`
never looks.

Standard library only (http.client, socket, json): importing this costs nothing, and the
command stays quick when it talks to a server instead of loading torch.
"""

from __future__ import annotations

import http.client
import json
import os
import socket
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from homer.errors import HomerError

SERVER_ENV = "HOMER_SERVER"
API_KEY_ENV = "HOMER_API_KEY"
DEFAULT_URL = "http://127.0.0.1:11480"
_OFF = ("off", "none", "no", "0", "false")
#: How long the quick check waits for a TCP connection (a refused one returns at once).
CONNECT_TIMEOUT_S = 0.2
HEALTH_TIMEOUT_S = 5.0


class RemoteError(HomerError):
    """The server refused a request or broke off; `code` is its error code (or None)."""

    def __init__(self, message: str, code: str | None = None) -> None:
        super().__init__(message)
        self.code = code


@dataclass(frozen=True)
class Server:
    """A reachable homer server.

    Attributes:
        url: its base URL (no trailing slash).
        api_key: sent as `Authorization: Bearer`, if any.
        same_store: it serves this command's store (so a cache name means the same cache).
    """

    url: str
    api_key: str | None
    same_store: bool

    def _connection(self, timeout: float | None) -> http.client.HTTPConnection:
        parts = urlsplit(self.url)
        cls = http.client.HTTPSConnection if parts.scheme == "https" else http.client.HTTPConnection
        return cls(parts.hostname or "127.0.0.1", parts.port, timeout=timeout)

    def _headers(self) -> dict[str, str]:
        headers = {"Content-Type": "application/json", "Accept": "application/json"}
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        return headers

    def request(
        self, method: str, path: str, body: Any = None, timeout: float | None = None
    ) -> http.client.HTTPResponse:
        """Send a request; the response is returned unread (status checked by the caller)."""
        connection = self._connection(timeout)
        prefix = urlsplit(self.url).path.rstrip("/")
        data = None if body is None else json.dumps(body).encode()
        try:
            connection.request(method, prefix + path, body=data, headers=self._headers())
            return connection.getresponse()
        except OSError as exc:
            raise RemoteError(f"lost the homer server at {self.url}: {exc}") from exc

    def chat(self, body: dict[str, Any]) -> Iterator[dict[str, Any]]:
        """POST a streaming chat completion; yield its chunks (raises `RemoteError`)."""
        response = self.request("POST", "/v1/chat/completions", {**body, "stream": True})
        if response.status != 200:
            raise error_of(response)
        try:
            for raw in response:
                line = raw.decode("utf-8").rstrip("\r\n")
                if not line.startswith("data: "):
                    continue
                data = line[len("data: ") :]
                if data == "[DONE]":
                    return
                event = json.loads(data)
                if "error" in event:
                    error = event["error"]
                    raise RemoteError(str(error.get("message")), error.get("code"))
                yield event
        except (OSError, http.client.HTTPException) as exc:
            raise RemoteError(f"lost the homer server at {self.url}: {exc}") from exc
        finally:
            response.close()
        raise RemoteError(f"the homer server at {self.url} ended the answer early")


def error_of(response: http.client.HTTPResponse) -> RemoteError:
    text = response.read().decode("utf-8", "replace")
    try:
        error = json.loads(text)["error"]
        return RemoteError(str(error["message"]), error.get("code"))
    except (ValueError, KeyError, TypeError):
        return RemoteError(f"the server answered HTTP {response.status}: {text[:200]}")


def configured_url(flag: str | None) -> tuple[str, bool] | None:
    """(URL, given explicitly) to look for a server at, or None when asked not to look."""
    if flag:
        return flag.rstrip("/"), True
    env = os.environ.get(SERVER_ENV)
    if env is not None:
        env = env.strip()
        if env.lower() in _OFF or not env:
            return None
        return env.rstrip("/"), True
    return DEFAULT_URL, False


def _listening(url: str) -> bool:
    parts = urlsplit(url)
    port = parts.port or (443 if parts.scheme == "https" else 80)
    try:
        with socket.create_connection((parts.hostname or "127.0.0.1", port), CONNECT_TIMEOUT_S):
            return True
    except OSError:
        return False


def find_server(flag: str | None = None, *, local: bool = False) -> Server | None:
    """The server to use, or None to answer in-process.

    Raises:
        RemoteError: a server given explicitly refuses our API key, or answers but is not homer.
    """
    if local:
        return None
    where = configured_url(flag)
    if where is None:
        return None
    url, explicit = where
    if not _listening(url):
        return None
    server = Server(url, os.environ.get(API_KEY_ENV) or None, same_store=False)
    try:
        response = server.request("GET", "/health", timeout=HEALTH_TIMEOUT_S)
        status, text = response.status, response.read()
    except RemoteError:
        return None
    if status == 401:
        if not explicit:
            return None
        raise RemoteError(f"the homer server at {url} needs an API key: set ${API_KEY_ENV}")
    try:
        health = json.loads(text)
        store = str(health["store"])
    except (ValueError, KeyError, TypeError):
        if explicit:
            raise RemoteError(f"{url} answered, but it is not a homer server") from None
        return None
    same = _same_store(store)
    if not same and not explicit:
        return None
    return Server(url, server.api_key, same_store=same)


def _same_store(path: str) -> bool:
    from pathlib import Path

    from homer import paths

    try:
        return Path(path).resolve() == paths.store_dir().resolve()
    except OSError:
        return False


@dataclass
class RemoteAnswer:
    """What the server said: the text, its `homer` block (cache, model, tokens, timings)."""

    text: str
    info: dict[str, Any]


def answer(
    server: Server,
    question: str,
    *,
    cache: str | None,
    history: list[tuple[str, str]] | None = None,
    max_tokens: int,
    temperature: float,
    top_p: float,
    seed: int | None,
    on_piece: Any = None,
    stop_loops: bool = True,
    cite: int = 0,
    reread: bool | None = None,
) -> RemoteAnswer:
    """Ask `server` `question` about `cache` (None: its most recent), streaming pieces to
    `on_piece`; earlier (question, answer) turns go first."""
    messages: list[dict[str, str]] = []
    for asked, said in history or []:
        messages += [{"role": "user", "content": asked}, {"role": "assistant", "content": said}]
    messages.append({"role": "user", "content": question})
    body: dict[str, Any] = {
        "model": f"homer/{cache}" if cache else "homer",
        "messages": messages,
        "max_tokens": max_tokens,
        "temperature": temperature,
        "top_p": top_p,
        "seed": seed,
    }
    if not stop_loops:
        body["stop_loops"] = False
    if cite:
        body["cite"] = cite
    if reread is not None:
        body["reread"] = reread
    pieces: list[str] = []
    info: dict[str, Any] = {}
    for event in server.chat(body):
        for choice in event.get("choices") or []:
            piece = (choice.get("delta") or {}).get("content")
            if piece:
                pieces.append(piece)
                if on_piece is not None:
                    on_piece(piece)
        if "homer" in event:
            info = event["homer"]
    return RemoteAnswer("".join(pieces), info)
