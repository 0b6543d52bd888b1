"""`homer serve` as a real process on a loopback port, driven by the official `openai` client
and by raw HTTP (httpx), with a tiny random model; its answers must equal the library's.

One server process serves the whole module (started once: importing torch and loading the
model is most of the cost); a second one, with an API key, checks authentication and a clean
stop. Answers are greedy unless a test says otherwise, so they can be compared exactly.
"""

from __future__ import annotations

import json
import shutil
import signal
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
import torch

from homer.config import HomerConfig
from homer.grounding import REREAD_DEFAULT, Grounding
from homer.prompts import Turn
from homer.service import LoadedModel, ModelChoice, Sampling, ask, ingest, load_model, open_cache
from homer.store import Store
from tests.conftest import MAX_CHUNK
from tests.server_process import ServerProcess

DOCS = {
    "sea": "The captain sailed across the sea with his brother Tom and a crew of ten. " * 6,
    "keys": "The librarian kept the keys in a small box; the passkey was 71234. " * 6,
}
QUESTIONS = ["Who is the captain?", "What is the passkey?", "Where is the box?", "Who is Tom?"]
NEW = 6  # tokens per answer: enough to compare, few enough to stay fast
#: Caches of 96 tokens leave room in the tiny model's 256-token window for conversations.
BUDGET = 96
CONFIG = HomerConfig(max_chunk_len=int(MAX_CHUNK), target_len=BUDGET)


@dataclass
class Served:
    url: str
    home: Path
    loaded: LoadedModel
    process: ServerProcess

    @property
    def store(self) -> Store:
        return Store(self.home / "caches")

    def client(self, **kwargs: Any) -> openai.OpenAI:
        return openai.OpenAI(
            base_url=self.url + "/v1", api_key="unused", max_retries=0, timeout=60, **kwargs
        )


@pytest.fixture(scope="module")
def served(
    tiny_model_dir: Path, calibrated: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Served]:
    home = tmp_path_factory.mktemp("served-home")
    shutil.copytree(calibrated, home / "calibration")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as the server does (tests/server_process.py)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("HOMER_HOME", str(home))
        # Loaded to decode, as the server loads the models it answers with (homer.precision).
        loaded = load_model(ModelChoice(name=str(tiny_model_dir), phase="decode"))
        for name, text in DOCS.items():
            path = home / f"{name}.txt"
            path.write_text(text, encoding="utf-8")
            ingest(path, loaded, name=name, config=CONFIG)
    server = ServerProcess(home, "--keep-alive", "-1")
    try:
        yield Served(server.wait_ready(), home, loaded, server)
    finally:
        code = server.stop()
        torch.set_num_threads(threads)
    assert code == 0, server.stderr
    assert "Traceback" not in server.stderr, server.stderr


def local(
    served: Served, name: str, question: str, history: tuple[Turn, ...] = (), **sampling: Any
) -> tuple[str, Any]:
    """The library's answer in this process: the reference every server answer must equal."""
    opened = open_cache(served.loaded, name, store=served.store)
    stream = ask(
        served.loaded,
        opened.cache,
        question,
        Sampling(**{"max_new_tokens": NEW, **sampling}),
        history,
        grounding=Grounding(reread=REREAD_DEFAULT),  # what a request without homer's fields gets
        document=opened.document,
    )
    return "".join(stream), stream.stats


def user(text: str) -> dict[str, str]:
    return {"role": "user", "content": text}


# ----------------------------------------------------------------------------- openai client


def test_models_lists_saved_caches(served: Served) -> None:
    models = served.client().models.list()
    ids = sorted(m.id for m in models.data)
    assert ids == ["homer/keys", "homer/sea"]
    one = served.client().models.retrieve("homer/sea")
    extra = one.model_extra or {}
    assert extra["homer"]["source"] == "sea.txt"
    assert extra["homer"]["cache_tokens"] > 0


def test_answer_equals_the_library_answer(served: Served) -> None:
    expected, stats = local(served, "sea", QUESTIONS[0])
    reply = served.client().chat.completions.create(
        model="homer/sea", messages=[user(QUESTIONS[0])], max_tokens=NEW
    )
    choice = reply.choices[0]
    assert choice.message.content == expected
    assert choice.finish_reason == "length"
    assert reply.usage is not None
    assert reply.usage.completion_tokens == stats.new_tokens
    assert reply.usage.prompt_tokens == stats.prompt_tokens
    assert reply.model == "homer/sea"


def test_streaming_gives_the_same_answer_in_chunks(served: Served) -> None:
    expected, stats = local(served, "keys", QUESTIONS[1])
    stream = served.client().chat.completions.create(
        model="homer/keys",
        messages=[user(QUESTIONS[1])],
        max_tokens=NEW,
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == expected
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices]
    assert finishes[-1] == "length" and set(finishes[:-1]) == {None}
    assert chunks[-1].choices == [] and chunks[-1].usage is not None
    assert chunks[-1].usage.completion_tokens == stats.new_tokens


def test_follow_up_questions_continue_the_conversation(served: Served) -> None:
    first, _ = local(served, "sea", QUESTIONS[0])
    expected, _ = local(served, "sea", QUESTIONS[3], (Turn(QUESTIONS[0], first),))
    reply = served.client().chat.completions.create(
        model="homer/sea",
        messages=[
            {"role": "system", "content": "ignored: the cache's prompt is fixed"},
            user(QUESTIONS[0]),
            {"role": "assistant", "content": first},
            user(QUESTIONS[3]),
        ],
        max_tokens=NEW,
    )
    assert reply.choices[0].message.content == expected
    alone, _ = local(served, "sea", QUESTIONS[3])
    assert reply.usage is not None and reply.usage.prompt_tokens > len(alone) * 0


def test_stop_seed_and_sampling_options(served: Served) -> None:
    full, _ = local(served, "sea", QUESTIONS[2], max_new_tokens=12)
    stop = full[2:4]
    expected, _ = local(served, "sea", QUESTIONS[2], max_new_tokens=12, stop=(stop,))
    reply = served.client().chat.completions.create(
        model="homer/sea", messages=[user(QUESTIONS[2])], max_tokens=12, stop=[stop]
    )
    assert reply.choices[0].message.content == expected == full[: full.find(stop)]
    assert reply.choices[0].finish_reason == "stop"

    sampled, _ = local(served, "sea", QUESTIONS[2], temperature=0.9, top_p=0.9, seed=7)
    twice = [
        served.client()
        .chat.completions.create(
            model="homer/sea",
            messages=[user(QUESTIONS[2])],
            max_tokens=NEW,
            temperature=0.9,
            top_p=0.9,
            seed=7,
        )
        .choices[0]
        .message.content
        for _ in range(2)
    ]
    assert twice == [sampled, sampled]


def test_errors_reach_the_client_as_openai_errors(served: Served) -> None:
    client = served.client()
    with pytest.raises(openai.NotFoundError) as missing:
        client.chat.completions.create(model="homer/nope", messages=[user("Who?")])
    assert missing.value.code == "model_not_found"
    assert "no cache named 'nope'" in missing.value.message
    with pytest.raises(openai.BadRequestError) as overflow:
        client.chat.completions.create(model="homer/sea", messages=[user("why " * 400)])
    assert overflow.value.code == "context_length_exceeded"
    with pytest.raises(openai.BadRequestError) as wrong:
        client.chat.completions.create(
            model="homer/sea",
            messages=[user("Who?")],
            temperature="hot",  # type: ignore[arg-type]
        )
    assert wrong.value.param == "temperature"
    with pytest.raises(openai.BadRequestError) as unsafe:
        client.chat.completions.create(model="homer/../../etc", messages=[user("Who?")])
    assert unsafe.value.code == "invalid_cache_name"


def test_concurrent_clients_get_their_own_answers(served: Served) -> None:
    cases = [
        ("sea", QUESTIONS[0]),
        ("keys", QUESTIONS[1]),
        ("sea", QUESTIONS[2]),
        ("keys", QUESTIONS[3]),
    ]
    expected = [local(served, name, q)[0] for name, q in cases]
    got: dict[int, str] = {}
    errors: list[BaseException] = []

    def one(i: int) -> None:
        try:
            name, question = cases[i]
            stream = served.client().chat.completions.create(
                model=f"homer/{name}", messages=[user(question)], max_tokens=NEW, stream=True
            )
            got[i] = "".join(c.choices[0].delta.content or "" for c in stream if c.choices)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=one, args=(i,)) for i in range(len(cases))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors
    assert [got[i] for i in range(len(cases))] == expected


# ----------------------------------------------------------------------------- raw HTTP


def error_of(response: httpx.Response, status: int) -> dict[str, Any]:
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body["error"]) == {"message", "type", "param", "code"}
    assert "Traceback" not in response.text
    return body["error"]  # type: ignore[no-any-return]


def test_bad_requests_get_error_objects_and_the_server_goes_on(served: Served) -> None:
    chat = served.url + "/v1/chat/completions"
    with httpx.Client(timeout=30) as http:
        assert error_of(http.post(chat, content=b"{not json"), 400)["code"] == "invalid_json"
        assert error_of(http.post(chat, json=[1, 2]), 400)["code"] == "invalid_body"
        assert error_of(http.post(chat, json={"model": "homer/sea"}), 400)["param"] == "messages"
        bad_max = {"model": "homer/sea", "messages": [user("Who?")], "max_tokens": "ten"}
        assert error_of(http.post(chat, json=bad_max), 400)["param"] == "max_tokens"
        bad_stop = {"model": "homer/sea", "messages": [user("Who?")], "stop": ["a"] * 5}
        assert error_of(http.post(chat, json=bad_stop), 400)["param"] == "stop"
        ends_wrong = {
            "model": "homer/sea",
            "messages": [user("Who?"), {"role": "assistant", "content": "x"}],
        }
        assert error_of(http.post(chat, json=ends_wrong), 400)["param"] == "messages"
        two = {"model": "homer/sea", "messages": [user("Who?")], "n": 2}
        assert error_of(http.post(chat, json=two), 400)["param"] == "n"
        huge = b'{"model": "homer/sea", "messages": [], "pad": "' + b"x" * (2 << 20) + b'"}'
        assert error_of(http.post(chat, content=huge), 413)["code"] == "request_too_large"
        assert error_of(http.get(served.url + "/v1/nowhere"), 404)["code"] == "not_found"
        assert error_of(http.get(chat), 405)["code"] == "method_not_allowed"
        shown = http.get(served.url + "/v1/homer/caches/..%2Fetc")
        assert shown.status_code in (400, 404)
        health = http.get(served.url + "/health").json()
        assert health["status"] == "ok"
        assert health["store"] == str(served.store.root)


def test_a_client_that_leaves_stops_its_answer(served: Served) -> None:
    body = {"model": "homer/sea", "messages": [user("Tell me everything.")], "stream": True}
    with httpx.Client(timeout=30) as http:
        before = http.get(served.url + "/health").json()["answers"]["cancelled"]
        with http.stream("POST", served.url + "/v1/chat/completions", json=body) as response:
            assert response.status_code == 200
            next(response.iter_lines())  # the first chunk arrived: the answer is under way
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            if http.get(served.url + "/health").json()["answers"]["cancelled"] > before:
                break
            time.sleep(0.05)
        else:
            pytest.fail("the answer went on after its client left")


def test_citations_and_grounding_reach_an_openai_client(served: Served) -> None:
    """homer's own request fields (`cite`, `reread`) and its answer fields, through the
    official client's `extra_body` and the response's extra fields."""
    reply = served.client().chat.completions.create(
        model="homer/sea",
        messages=[user(QUESTIONS[0])],
        max_tokens=NEW,
        extra_body={"cite": 2, "reread": False},
    )
    extra = reply.model_extra or {}
    found = extra["homer"]
    assert found["reread"] is False and isinstance(found["grounded"], bool)
    assert 1 <= len(found["citations"]) <= 2  # a short document holds few passages
    text = DOCS["sea"]
    for cited in found["citations"]:
        assert text[cited["start"] : cited["end"]].strip() == cited["text"]
    bad = httpx.post(
        served.url + "/v1/chat/completions",
        json={"model": "homer/sea", "messages": [user("hi")], "cite": "three"},
        timeout=30,
    )
    assert error_of(bad, 400)["param"] == "cite"


def test_homer_endpoints_ingest_list_show_rm(served: Served, tmp_path: Path) -> None:
    text = "A lighthouse keeper counted ships every night; the brightest was the Albatross. " * 8
    path = tmp_path / "light.txt"
    path.write_text(text, encoding="utf-8")
    base = served.url + "/v1/homer"
    with httpx.Client(timeout=120) as http:
        events = []
        body = {
            "path": str(path),
            "model": served.loaded.id,
            "name": "light",
            "max_chunk": int(MAX_CHUNK),
            "budget": BUDGET,
            "stream": True,
        }
        with http.stream("POST", base + "/ingest", json=body) as response:
            assert response.status_code == 200
            for line in response.iter_lines():
                if line.startswith("data: ") and line != "data: [DONE]":
                    events.append(json.loads(line[6:]))
        assert events[-1]["type"] == "done", events
        assert events[-1]["name"] == "light" and not events[-1]["reused"]
        assert any(e["type"] == "progress" for e in events)

        upload = http.post(
            base + "/ingest/upload",
            params={
                "filename": "../../copy.txt",
                "model": served.loaded.id,
                "name": "copy",
                "max_chunk": MAX_CHUNK,
                "budget": str(BUDGET),
            },
            content=text.replace("Albatross", "Petrel").encode(),
        )
        assert upload.status_code == 200, upload.text
        assert upload.json()["cache"]["source"] == "copy.txt"

        names = sorted(row["name"] for row in http.get(base + "/caches").json())
        assert names == ["copy", "keys", "light", "sea"]
        shown = http.get(base + "/caches/light").json()
        assert shown["document"]["source"] == "light.txt"
        reply = served.client().chat.completions.create(
            model="homer/light", messages=[user("Which ship?")], max_tokens=3
        )
        assert reply.choices[0].finish_reason == "length"

        missing = {"path": str(tmp_path / "absent.txt")}
        assert (
            error_of(http.post(base + "/ingest", json=missing), 400)["code"] == "invalid_document"
        )
        for name in ("light", "copy"):
            assert http.delete(f"{base}/caches/{name}").json() == {"name": name, "deleted": True}
        assert error_of(http.delete(base + "/caches/light"), 404)["code"] == "model_not_found"


def test_api_key_and_a_clean_stop(served: Served) -> None:
    server = ServerProcess(served.home, env={"HOMER_API_KEY": "s3cret"})
    try:
        url = server.wait_ready()
        assert "API key required" in server.stderr
        with httpx.Client(timeout=30) as http:
            assert error_of(http.get(url + "/health"), 401)["code"] == "invalid_api_key"
            wrong = {"Authorization": "Bearer nope"}
            assert error_of(http.get(url + "/v1/models", headers=wrong), 401)["type"] == (
                "authentication_error"
            )
            right = {"Authorization": "Bearer s3cret"}
            assert http.get(url + "/health", headers=right).json()["status"] == "ok"
        client = openai.OpenAI(base_url=url + "/v1", api_key="s3cret", max_retries=0)
        assert len(client.models.list().data) == 2
    finally:
        code = server.stop(signal.SIGINT)
    assert code == 0, server.stderr
    assert server.stderr.rstrip().endswith("homer: stopped"), server.stderr


def test_non_loopback_without_a_key_is_refused(served: Served) -> None:
    server = ServerProcess(served.home, "--host", "0.0.0.0")
    assert server.wait() == 1
    assert server.stderr.startswith("homer: refusing to listen on 0.0.0.0 without an API key")
    assert server.stderr.count("\n") == 1


# ----------------------------------------------------------------------------- the CLI


def cli(*args: str) -> Any:
    from typer.testing import CliRunner

    from homer_cli.main import app

    return CliRunner().invoke(app, list(args))


def answers_served(served: Served) -> int:
    return sum(httpx.get(served.url + "/health", timeout=10).json()["answers"].values())


def test_cli_ask_through_the_server_is_the_in_process_ask(
    served: Served, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HOMER_HOME", str(served.home))
    monkeypatch.setenv("HOMER_SERVER", served.url)
    question = ["ask", "-c", "sea", "-n", str(NEW), QUESTIONS[0]]
    before = answers_served(served)
    remote = cli(*question)
    assert answers_served(served) == before + 1  # it went through the server
    here = cli(*question, "--local")
    assert answers_served(served) == before + 1
    assert remote.exit_code == here.exit_code == 0, (remote.output, here.output)
    assert remote.stdout == here.stdout == local(served, "sea", QUESTIONS[0])[0] + "\n"

    remote_json = json.loads(cli(*question, "--json").stdout)
    here_json = json.loads(cli(*question, "--json", "--local").stdout)
    assert remote_json.keys() == here_json.keys()
    assert remote_json["timings"].keys() == here_json["timings"].keys()
    for key in ("answer", "cache", "model", "source", "tokens"):
        assert remote_json[key] == here_json[key], key
    assert remote_json["timings"]["model_load_s"] == 0  # warm

    summary = ["summarize", "-n", "4", "-c", "keys"]
    assert cli(*summary).stdout == cli(*summary, "--local").stdout


def test_cli_errors_through_the_server_are_the_in_process_errors(
    served: Served, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HOMER_HOME", str(served.home))
    monkeypatch.setenv("HOMER_SERVER", served.url)
    for args in (["-c", "nope", "Who?"], ["-c", "sea", "why " * 400]):
        remote, here = cli("ask", *args), cli("ask", *args, "--local")
        assert (remote.exit_code, remote.stderr) == (here.exit_code, here.stderr)
        assert remote.exit_code == 1 and remote.stderr.startswith("homer: ")
        assert remote.stderr.count("\n") == 1


def test_cli_without_a_server_answers_in_process_quickly(
    served: Served, monkeypatch: pytest.MonkeyPatch
) -> None:
    import socket

    from homer_cli.remote import find_server

    with socket.socket() as probe:  # a port nobody listens on
        probe.bind(("127.0.0.1", 0))
        free = probe.getsockname()[1]
    started = time.perf_counter()
    assert find_server(f"http://127.0.0.1:{free}") is None
    assert time.perf_counter() - started < 0.1
    monkeypatch.setenv("HOMER_HOME", str(served.home))
    monkeypatch.setenv("HOMER_SERVER", f"http://127.0.0.1:{free}")
    result = cli("ask", "-c", "sea", "-n", str(NEW), QUESTIONS[0])
    assert result.exit_code == 0 and result.stdout == local(served, "sea", QUESTIONS[0])[0] + "\n"
    found = find_server(served.url)
    assert found is not None and found.same_store
    monkeypatch.setenv("HOMER_HOME", str(served.home / "elsewhere"))
    found = find_server(served.url)
    assert found is not None and not found.same_store  # named explicitly: trusted anyway


# ----------------------------------------------------------------------------- homer chat


def spawn_chat(served: Served, *args: str, server: str = "off") -> Any:
    import os
    import sys

    import pexpect

    env = {
        **os.environ,
        "HOMER_HOME": str(served.home),
        "HOMER_SERVER": server,
        "OMP_NUM_THREADS": "1",
        "TERM": "dumb",
    }
    child = pexpect.spawn(
        sys.executable,
        ["-m", "homer_cli", "chat", *args],
        env=env,
        encoding="utf-8",
        timeout=60,
        dimensions=(24, 500),
    )
    return child


def say_and_hear(child: Any, line: str) -> str:
    """Type a line at the chat prompt; the answer printed before the next prompt."""
    child.sendline(line)
    child.expect_exact(">>> ")
    echoed, _, answer = child.before.partition("\r\n")  # the terminal echoes the typed line
    assert echoed.endswith(line)
    text: str = answer.removesuffix("\r\n").replace("\r\n", "\n")
    # A note that no passage stands out follows the answer on its own line (stderr).
    answer_text, note, _ = text.partition("\nhomer: the document may not hold this answer")
    return answer_text if note else text


def test_chat_in_process_follows_up_resets_and_exits(served: Served) -> None:
    child = spawn_chat(served, "-c", "sea", "-n", str(NEW))
    try:
        child.expect_exact("(cache sea) in this process")
        child.expect_exact(">>> ")
        first = say_and_hear(child, QUESTIONS[0])
        assert first == local(served, "sea", QUESTIONS[0])[0]
        follow_up = say_and_hear(child, QUESTIONS[3])
        assert follow_up == local(served, "sea", QUESTIONS[3], (Turn(QUESTIONS[0], first),))[0]
        child.sendline("/reset")
        child.expect_exact("conversation forgotten")
        child.expect_exact(">>> ")
        assert say_and_hear(child, QUESTIONS[3]) == local(served, "sea", QUESTIONS[3])[0]
        child.sendline("/exit")
        child.expect(pexpect_eof())
    finally:
        child.close()
    assert child.exitstatus == 0


def test_chat_through_the_server_and_ctrl_c_stops_only_the_answer(served: Served) -> None:
    # --allow-loops: the tiny random model's answer is a loop, which would otherwise end at
    # once; this answer must still be running when Ctrl-C comes.
    child = spawn_chat(served, "-c", "keys", "-n", "1000", "--allow-loops", server=served.url)
    try:
        child.expect_exact(f"(cache keys) through {served.url}")
        child.expect_exact(">>> ")
        cancelled = httpx.get(served.url + "/health").json()["answers"]["cancelled"]
        child.sendline("Tell me everything about the keys.")
        time.sleep(0.1)
        child.sendintr()
        # The tiny model's answer ends at its 256-token window: on a fast machine it can be
        # over before Ctrl-C arrives, and then there is nothing to stop.
        if child.expect_exact(["(stopped", ">>> "]) == 1:
            pytest.skip("the answer ended before Ctrl-C reached it")
        child.expect_exact(">>> ")
        deadline = time.monotonic() + 10
        while httpx.get(served.url + "/health").json()["answers"]["cancelled"] == cancelled:
            assert time.monotonic() < deadline, "the server went on answering"
            time.sleep(0.05)
        child.sendintr()  # at the prompt: a fresh line, the session goes on
        child.expect_exact(">>> ")
        expected = local(served, "keys", QUESTIONS[1], max_new_tokens=1000, stop_loops=False)[0]
        assert say_and_hear(child, QUESTIONS[1]) == expected.replace("\r\n", "\n")
        child.sendeof()
        child.expect(pexpect_eof())
    finally:
        child.close()
    assert child.exitstatus == 0


def pexpect_eof() -> Any:
    import pexpect

    return pexpect.EOF
