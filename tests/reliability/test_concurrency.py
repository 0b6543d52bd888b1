"""Two processes at once: two ingests of one document, and `ask` while `ingest` replaces a cache.

Both ingests finish with the same name and one of them computes: the other waits on the
document's lock, then reuses the result. Questions asked while a cache is being replaced get an
answer from the old cache or from the new one, never an error or a mix.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from homer.store import Store
from tests.conftest import MAX_CHUNK
from tests.reliability.conftest import story
from tests.reliability.harness import ForkServer, assert_store_consistent, invoke, store_entries


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def test_two_ingests_of_one_document(
    forkserver: ForkServer, tiny_model_dir: Path, engine_home: Path, tmp_path: Path
) -> None:
    doc = tmp_path / "same.txt"
    doc.write_text(story(7), encoding="utf-8")
    env = {"HOMER_HOME": str(engine_home), "HOMER_DEBUG": "1"}  # logs show who computed
    argv = ["ingest", str(doc), "--model", str(tiny_model_dir), "--max-chunk", MAX_CHUNK]
    # A slowed save keeps the first one inside the lock long enough for the second to queue.
    one = forkserver.start(argv, workdir=tmp_path, env=env, slow=0.3)
    two = forkserver.start(argv, workdir=tmp_path, env=env, slow=0.3)
    assert forkserver.wait(one) == 0, one.stderr
    assert forkserver.wait(two) == 0, two.stderr
    assert one.stdout == two.stdout and one.stdout.strip()
    assert Store().names() == [one.stdout.strip()]
    both = one.stderr + two.stderr
    assert both.count("compressing ") == 1, both  # homer.compression's log line
    assert both.count("waiting for another ingest of the same document") == 1, both
    assert_store_consistent()


def test_ask_while_ingest_replaces_the_cache(
    forkserver: ForkServer, book: Path, tiny_model_dir: Path, engine_home: Path, tmp_path: Path
) -> None:
    question = ["ask", "What is the passkey?", "--cache", "book", "--max-tokens", "4", "--json"]
    before = invoke(*question)
    assert before.exit_code == 0, before.output
    old_answer = json.loads(before.stdout)["answer"]

    doc = tmp_path / "new.txt"
    doc.write_text(story(42, words=220), encoding="utf-8")
    argv = ["ingest", str(doc), "--model", str(tiny_model_dir), "--max-chunk", MAX_CHUNK]
    writer = forkserver.start(
        [*argv, "--name", "book", "--force"],
        workdir=tmp_path,
        env={"HOMER_HOME": str(engine_home)},
        slow=0.6,  # a save of about three seconds: several questions land inside it
    )
    answers = []
    assert writer.wait_phase("save")
    while _alive(writer.pid) and "@@phase done" not in writer.stderr:
        result = invoke(*question)
        assert result.exit_code == 0, result.output
        payload = json.loads(result.stdout)
        answers.append((payload["answer"], payload["source"]))
    assert forkserver.wait(writer) == 0, writer.stderr
    after = json.loads(invoke(*question).stdout)
    assert after["source"] == "new.txt"
    assert len(answers) >= 2, "no question was asked while the cache was being replaced"
    for answer, source in answers:
        expected = old_answer if source == "book.txt" else after["answer"]
        assert (answer, source) == (expected, source)
    assert_store_consistent()
    assert [e for e in store_entries() if e.startswith((".tmp-", ".swap-"))] == []
