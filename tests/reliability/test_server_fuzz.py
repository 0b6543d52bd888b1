"""Fuzzing `homer serve`: over 1,000 hostile requests against a real server process on loopback.

The server runs with an API key over a store holding the real cache `book`. Requests are drawn
(seeded) from families a hostile client would try: no or wrong API key, path traversal and odd
bytes in cache names, JSON of the wrong types and values (huge `max_tokens`, negative or NaN
temperatures, deep nesting), bodies that are not JSON, oversized or truncated, raw bytes that are
not HTTP, streams cancelled after their first chunk, hostile ingest paths and upload names,
unicode and control characters everywhere. A valid request comes every few hostile ones, and a
few connections stay open sending one header byte at a time (slowloris) the whole run.

Held: the process never dies; no response carries a traceback or a 5xx; every hostile request
gets a 4xx error object (or, for bytes that are not HTTP, a 400 or a closed connection); every
valid request gets the right answer (the same greedy answer as the first one); `book` is never
removed or changed; the server's resident memory at the end is within a bound of what it was
after warming up; and its stderr holds no traceback.
"""

from __future__ import annotations

import json
import random
import shutil
import socket
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest

from tests.server_process import ServerProcess

KEY = "fuzz-key-\u00e9"[:9]  # ASCII: a header value
AUTH = {"Authorization": f"Bearer {KEY}"}
HOSTILE = 1000
VALID_EVERY = 8
SLOW_CONNECTIONS = 12
QUESTION = "What is the passkey?"
RSS_GROWTH_MB = 150
#: Hostile requests sent before the RSS baseline is read.
WARMUP_HOSTILE = 200

#: Filled by the test (printed with -s).
COUNTS: Counter[str] = Counter()


def _rss_mb(pid: int) -> float:
    with open(f"/proc/{pid}/status") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


@pytest.fixture(scope="module")
def server(built_store: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    home = tmp_path_factory.mktemp("fuzz-home")
    shutil.copytree(built_store, home / "caches", ignore=shutil.ignore_patterns(".locks"))
    shutil.copytree(built_store.parent / "calibration", home / "calibration")
    process = ServerProcess(home, "--keep-alive", "-1", env={"HOMER_API_KEY": KEY})
    try:
        process.wait_ready()
        yield process, home
    finally:
        code = process.stop()
    assert code == 0, process.stderr[-3000:]


def _body(response: httpx.Response) -> str:
    return response.content.decode("utf-8", errors="replace")


def _assert_clean(response: httpx.Response, what: str) -> None:
    text = _body(response)
    assert "Traceback" not in text and 'File "' not in text, (what, text[:500])
    assert response.status_code < 500, (what, response.status_code, text[:500])


def _assert_refused(response: httpx.Response, what: str) -> None:
    _assert_clean(response, what)
    assert 400 <= response.status_code < 500, (what, response.status_code, _body(response)[:300])
    error = response.json()["error"]
    assert isinstance(error["message"], str) and "\n" not in error["message"], (what, error)


class Fuzzer:
    """Draws hostile requests (seeded) and checks what comes back."""

    def __init__(self, url: str, rng: random.Random) -> None:
        self.url = url
        parts = urlsplit(url)
        self.host, self.port = parts.hostname or "127.0.0.1", parts.port or 80
        self.rng = rng
        self.http = httpx.Client(timeout=60, headers=AUTH)
        self.bare = httpx.Client(timeout=60)
        self.reference: str | None = None

    # ------------------------------------------------------------------ valid requests

    def chat_body(self, **extra: Any) -> dict[str, Any]:
        body = {"model": "homer/book", "messages": [{"role": "user", "content": QUESTION}]}
        return {**body, "max_tokens": 4, "temperature": 0, **extra}

    def valid(self) -> None:
        kind = self.rng.choice(["health", "list", "show", "chat", "stream"])
        COUNTS[f"valid {kind}"] += 1
        if kind == "health":
            response = self.http.get(self.url + "/health")
            assert response.status_code == 200 and response.json()["status"] == "ok"
        elif kind == "list":
            response = self.http.get(self.url + "/v1/homer/caches")
            assert response.status_code == 200, _body(response)
            assert "book" in [row["name"] for row in response.json()], _body(response)
        elif kind == "show":
            response = self.http.get(self.url + "/v1/homer/caches/book")
            assert response.status_code == 200 and response.json()["name"] == "book"
        elif kind == "chat":
            response = self.http.post(self.url + "/v1/chat/completions", json=self.chat_body())
            assert response.status_code == 200, _body(response)
            self._same_answer(response.json()["choices"][0]["message"]["content"])
        else:
            answer = ""
            body = self.chat_body(stream=True)
            with self.http.stream("POST", self.url + "/v1/chat/completions", json=body) as resp:
                assert resp.status_code == 200
                for line in resp.iter_lines():
                    if line.startswith("data: ") and line != "data: [DONE]":
                        delta = json.loads(line[6:])["choices"][0].get("delta", {})
                        answer += delta.get("content") or ""
            self._same_answer(answer)

    def _same_answer(self, answer: str) -> None:
        if self.reference is None:
            self.reference = answer
        assert answer == self.reference, (answer, self.reference)

    # ------------------------------------------------------------------ hostile requests

    def hostile(self) -> None:
        family = self.rng.choice(
            [
                self.no_key,
                self.traversal,
                self.wrong_types,
                self.bad_json,
                self.oversized,
                self.raw_bytes,
                self.truncated,
                self.cancelled_stream,
                self.hostile_ingest,
            ]
        )
        COUNTS[family.__name__] += 1
        family()

    def no_key(self) -> None:
        path = self.rng.choice(
            ["/health", "/v1/models", "/v1/homer/caches", "/v1/homer/caches/book"]
        )
        headers = self.rng.choice(
            [{}, {"Authorization": "Bearer wrong"}, {"Authorization": KEY}, {"Authorization": ""}]
        )
        method = self.rng.choice(["GET", "DELETE", "POST"])
        response = self.bare.request(method, self.url + path, headers=headers)
        assert response.status_code == 401, (path, headers, response.status_code)
        _assert_refused(response, "no key")

    def traversal(self) -> None:
        name = self.rng.choice(
            [
                "..",
                "..%2F..%2Fetc%2Fpasswd",
                "%2e%2e%2f%2e%2e",
                "book%00",
                "book%2F..%2Fbook",
                "a" * 400,
                "%1b%5b2J%1b%5d0%3bpwn%07",
                "%C3%BC",
                "%FF%FE",
                ".locks",
                ".tmp-1-x",
                "~root",
                "book.",
                "-rf",
            ]
        )
        method = self.rng.choice(["GET", "DELETE"])
        prefix = self.rng.choice(["/v1/homer/caches/", "/v1/models/homer/", "/v1/models/"])
        response = self.http.request(method, self.url + prefix + name)
        _assert_clean(response, f"traversal {method} {prefix}{name}")
        if response.request.url.raw_path.decode() != prefix + name:
            return  # the client resolved `..` itself: another endpoint was asked, legitimately
        assert response.status_code in (400, 404, 405), (name, response.status_code)

    def wrong_types(self) -> None:
        field, values = self.rng.choice(
            [
                (
                    "model",
                    [
                        123,
                        None,
                        ["homer/book"],
                        {"a": 1},
                        "homer/../../etc",
                        "homer/\x1b[2J",
                        "homer/" + "a" * 5000,
                        "",
                        "homer/",
                        "gpt-4",
                    ],
                ),
                (
                    "messages",
                    [
                        "hi",
                        [],
                        [1],
                        [{"role": "user"}],
                        [{"role": "user", "content": 7}],
                        [{"role": "system", "content": "x"}],
                        [{"role": "bot", "content": "x"}],
                        [{"role": "user", "content": [{"type": "image_url"}]}],
                        None,
                        {},
                    ],
                ),
                ("max_tokens", [-1, 0, 10**12, 1.5, "10", True, 10**30, [], {"n": 1}]),
                ("temperature", [-1, -1e-9, "nan", "0", 1e308, [], -1e308, True]),
                ("top_p", [0, 2, -1, "1", 1e-400, None, [0.5]]),
                ("stream", ["yes", 1, [], {"a": 1}]),
                ("stop", [123, [1], ["x"] * 50, {"a": "b"}, [""], "\x00"]),
                ("seed", ["x", 2**70, -(2**70), 1.5, []]),
                ("n", [0, 2, -5, "1"]),
                ("cite", ["yes", 5, [], None]),
                ("reread", ["yes", -1, 10**12, []]),
            ]
        )
        body = self.chat_body(**{field: self.rng.choice(values)})
        response = self.http.post(self.url + "/v1/chat/completions", json=body)
        _assert_clean(response, f"wrong type {field}={body.get(field)!r}")
        if response.status_code != 200:  # a few odd values are valid (seed "x" is not)
            _assert_refused(response, f"{field}={body.get(field)!r}")

    def bad_json(self) -> None:
        depth = self.rng.choice([1000, 100_000])
        content = self.rng.choice(
            [
                b"",
                b"null",
                b"1e999999",
                b"{",
                b'{"model": "homer/book", "max_tokens": NaN, "messages": []}',
                b'{"model": "homer/book", "temperature": -Infinity}',
                b"\xff\xfe\x00{",
                b'{"a": "\xc3"}',
                b"[" * depth + b"]" * depth,
                b'{"a":' * depth + b"1" + b"}" * depth,
                b'"' + b"\\u0000" * 1000 + b'"',
                json.dumps(self.chat_body()).encode()[:-7],
            ]
        )
        headers = self.rng.choice([{}, {"Content-Type": "text/plain"}, {"Content-Type": "\x7f"}])
        response = self.http.post(
            self.url + "/v1/chat/completions", content=content, headers=headers
        )
        _assert_refused(response, f"bad json {content[:40]!r}")

    def oversized(self) -> None:
        if self.rng.random() < 0.5:
            content = b'{"model": "homer/book", "pad": "' + b"x" * (2 << 20) + b'"}'
            response = self.http.post(self.url + "/v1/chat/completions", content=content)
        else:  # a message as long as the limit allows: too long for the window
            words = "the sea " * 60_000
            body = self.chat_body(messages=[{"role": "user", "content": words}])
            response = self.http.post(self.url + "/v1/chat/completions", json=body)
        _assert_refused(response, "oversized")

    def _raw(self, data: bytes, *, shut: bool = True) -> bytes:
        with socket.create_connection((self.host, self.port), timeout=10) as sock:
            try:
                sock.sendall(data)
                if shut:
                    sock.shutdown(socket.SHUT_WR)
            except OSError:  # the server answered and closed before taking it all: fine
                pass
            chunks = []
            try:
                while chunk := sock.recv(65536):
                    chunks.append(chunk)
            except (TimeoutError, ConnectionResetError):
                pass
            return b"".join(chunks)

    def raw_bytes(self) -> None:
        data = self.rng.choice(
            [
                b"GARBAGE\r\n\r\n",
                b"GET / HTTP/9.9\r\n\r\n",
                b"GET /health HTTP/1.1\r\nHost x\r\n\r\n",
                b"GET /health HTTP/1.1\r\nHost: x\r\nX: " + b"a" * 200_000 + b"\r\n\r\n",
                b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + bytes(range(256)),
                b"GET /\x00\x1b[2J HTTP/1.1\r\nHost: x\r\n\r\n",
                b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n"
                b"Authorization: Bearer " + KEY.encode() + b"\r\n\r\nzz\r\nabc\r\n",
                b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Length: -5\r\n\r\n",
                b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n"
                b"Content-Length: 9\r\n\r\nhello",
                bytes(self.rng.randrange(256) for _ in range(300)),
            ]
        )
        reply = self._raw(data)
        assert b"Traceback" not in reply, reply[:500]
        if reply:
            status = reply.split(b"\r\n", 1)[0]
            assert status.startswith(b"HTTP/1.1 4"), (data[:60], reply[:300])

    def truncated(self) -> None:
        body = json.dumps(self.chat_body()).encode()
        head = (
            b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer "
            + KEY.encode()
            + b"\r\nContent-Type: application/json\r\nContent-Length: "
            + str(len(body) + 100).encode()
            + b"\r\n\r\n"
        )
        reply = self._raw(head + body[: self.rng.randrange(len(body))])
        assert b"Traceback" not in reply, reply[:500]
        assert not reply or not reply.startswith(b"HTTP/1.1 5"), reply[:300]

    def cancelled_stream(self) -> None:
        body = self.chat_body(stream=True, max_tokens=200)
        with self.http.stream("POST", self.url + "/v1/chat/completions", json=body) as response:
            assert response.status_code == 200
            next(response.iter_lines())  # the first chunk, then the client leaves

    def hostile_ingest(self) -> None:
        if self.rng.random() < 0.5:
            path = self.rng.choice(
                [
                    123,
                    None,
                    "",
                    "/dev/zero",
                    "/dev/urandom",
                    "/proc/self/mem",
                    "/",
                    "../" * 40,
                    "/nonexistent\x00x",
                    "\x1b]0;pwn\x07",
                    ["a"],
                    "/etc",
                ]
            )
            body: dict[str, Any] = {"path": path}
            if self.rng.random() < 0.3:
                body["name"] = self.rng.choice(["../x", "..", "a/b", "\x00", 5, "x" * 300])
            response = self.http.post(self.url + "/v1/homer/ingest", json=body)
        else:
            filename = self.rng.choice(
                ["../../../etc/passwd", "\x1b[2J.txt", "a\x00b.txt", "..", "x" * 5000, "%2e%2e"]
            )
            content = self.rng.choice([b"", b"\x00\x01\x02" * 100, b"\xff\xfe" + b"\x00a" * 50])
            response = self.http.post(
                self.url + "/v1/homer/ingest/upload", params={"filename": filename}, content=content
            )
        _assert_refused(response, "hostile ingest")


def _slowloris(host: str, port: int, stop: threading.Event) -> Callable[[], int]:
    """Connections that send one header byte every half second until `stop`."""
    sockets: list[socket.socket] = []
    request = b"GET /health HTTP/1.1\r\nHost: x\r\nX-Slow: " + b"s" * 10_000
    for _ in range(SLOW_CONNECTIONS):
        sock = socket.create_connection((host, port), timeout=5)
        sockets.append(sock)

    def drip() -> None:
        position = 0
        while not stop.wait(0.5) and position < len(request):
            for sock in list(sockets):
                try:
                    sock.send(request[position : position + 1])
                except OSError:
                    sockets.remove(sock)
            position += 1
        for sock in sockets:
            sock.close()

    thread = threading.Thread(target=drip, daemon=True)
    thread.start()

    def alive() -> int:
        stop.set()
        thread.join(10)
        return len(sockets)

    return alive


def test_server_fuzz(server: Any) -> None:
    process, home = server
    url = process.wait_ready()
    fuzzer = Fuzzer(url, random.Random(24))
    for _ in range(3):  # warm up: the model and the cache loaded, the reference answer set
        fuzzer.valid()
    stop = threading.Event()
    slow_open = _slowloris(fuzzer.host, fuzzer.port, stop)
    # Warm up on hostile requests too: the allocator's per-thread arenas and the server's
    # buffers grow once under concurrent requests (more under a loaded machine); a leak grows
    # with every request after that, which is what the RSS check below measures.
    for _ in range(WARMUP_HOSTILE):
        fuzzer.hostile()
    COUNTS.clear()
    before = _rss_mb(process.process.pid)
    book = (home / "caches" / "book" / "meta.json").read_bytes()
    started = time.monotonic()
    try:
        for number in range(HOSTILE):
            fuzzer.hostile()
            if number % VALID_EVERY == 0:
                fuzzer.valid()
            assert process.process.poll() is None, process.stderr[-3000:]
    finally:
        slow_open()
    fuzzer.valid()
    after = _rss_mb(process.process.pid)
    hostile = sum(n for k, n in COUNTS.items() if not k.startswith("valid"))
    valid = sum(n for k, n in COUNTS.items() if k.startswith("valid"))
    print(
        f"\nserver fuzz: {hostile} hostile and {valid + 1} valid requests in "
        f"{time.monotonic() - started:.0f} s, RSS {before:.0f} -> {after:.0f} MB; {dict(COUNTS)}"
    )
    assert hostile >= 1000
    assert after - before < RSS_GROWTH_MB, (before, after)
    assert (home / "caches" / "book" / "meta.json").read_bytes() == book
    assert "Traceback" not in process.stderr, process.stderr[-3000:]
