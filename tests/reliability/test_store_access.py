"""Stores and disks that fight back: full disks as safetensors reports them, stores homer cannot
write to, planted symlinks, a HOMER_HOME that is a file, odd or unreadable caches, bad calibration
files (issue 24).

Where the system can be made to refuse for real it is: a small tmpfs mounted full or read-only
(needs root; skipped otherwise), and permission bits enforced by running the CLI as another user
(as `nobody` in a forked child when the tests run as root, who ignores permission bits).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import torch

from homer.cache import HomerCache
from homer.store import META_FILE, Store
from tests.conftest import MAX_CHUNK
from tests.reliability.harness import invoke, one_line_error, store_entries
from tests.test_store import make_cache
from tests.test_store import save as save_synthetic

FULL_DISK = "Error while serializing: I/O error: No space left on device (os error 28)"


def big_cache(seed: int = 0) -> HomerCache:
    """A cache of about 400 kB (more than the small tmpfs holds)."""
    small = make_cache(seed=seed)
    gen = torch.Generator().manual_seed(seed)
    shape = (1, 2, 4096, 16)
    return HomerCache(
        keys=[torch.randn(shape, generator=gen).to(torch.bfloat16) for _ in range(3)],
        values=[torch.randn(shape, generator=gen).to(torch.bfloat16) for _ in range(3)],
        token_ids=torch.arange(4096),
        positions=torch.arange(4096),
        last_logits=torch.randn(50, generator=gen),
        info=small.info,
    )


@contextlib.contextmanager
def tmpfs(where: Path, size: str) -> Iterator[Path]:
    """A fresh tmpfs of `size` mounted at `where` (skips the test where mounting is not allowed)."""
    where.mkdir(parents=True, exist_ok=True)
    if os.geteuid() != 0 or shutil.which("mount") is None:
        pytest.skip("mounting a tmpfs needs root")
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(where)], capture_output=True
    )
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.decode().strip()}")
    try:
        yield where
    finally:
        subprocess.run(["umount", "-l", str(where)], check=False)


def remount_read_only(where: Path) -> None:
    subprocess.run(["mount", "-o", "remount,ro", str(where)], check=True)


def fill(disk: Path) -> None:
    """Write to `disk` until it is full."""
    with contextlib.suppress(OSError), (disk / "filler").open("wb") as fh:
        while True:
            fh.write(b"\0" * 4096)
            fh.flush()


@pytest.fixture
def ready_cache(monkeypatch: pytest.MonkeyPatch) -> None:
    """`compress` returns a ready-made 400 kB cache at once (the store is what is under test)."""
    monkeypatch.setattr("homer.compression.compress", lambda *a, **k: big_cache())


def _raise_full_disk(*args: object, **kwargs: object) -> None:
    from safetensors import SafetensorError

    raise SafetensorError(FULL_DISK)


# ----------------------------------------------------------------------------- (a) full disks


def test_safetensors_full_disk_while_saving_is_one_line(
    ready_cache: None, monkeypatch: pytest.MonkeyPatch, document: Path, tiny_model_dir: Path
) -> None:
    """safetensors reports a full disk as a SafetensorError, not an OSError."""
    monkeypatch.setattr("safetensors.torch.save_file", _raise_full_disk)
    args = ["ingest", str(document), "--model", str(tiny_model_dir), "--name", "new"]
    one_line_error(invoke(*args), "no space left", "free some space")
    assert [e for e in store_entries() if e != ".locks"] == []


def test_safetensors_full_disk_while_calibrating_is_one_line(
    monkeypatch: pytest.MonkeyPatch, tiny_model_dir: Path, homer_home: Path
) -> None:
    monkeypatch.setattr("homer.calibration.save_file", _raise_full_disk)
    result = invoke("calibrate", "--model", str(tiny_model_dir), "--max-chunk", MAX_CHUNK)
    one_line_error(result, "no space left", "free some space")
    assert list((homer_home / "calibration").iterdir()) == []


def test_a_real_full_disk_while_saving(
    ready_cache: None,
    monkeypatch: pytest.MonkeyPatch,
    document: Path,
    tiny_model_dir: Path,
    tmp_path: Path,
) -> None:
    with tmpfs(tmp_path / "disk", "256k") as disk:
        monkeypatch.setenv("HOMER_HOME", str(disk / "home"))
        store = Store()
        save_synthetic(store, "old")
        args = ["ingest", str(document), "--model", str(tiny_model_dir), "--name", "new"]
        one_line_error(invoke(*args), "no space left", "free some space")
        assert store.names() == ["old"]
        assert [e for e in store_entries() if e != ".locks"] == ["old"]
        store.load("old")


def test_a_real_full_disk_while_calibrating(
    monkeypatch: pytest.MonkeyPatch, tiny_model_dir: Path, tmp_path: Path
) -> None:
    with tmpfs(tmp_path / "disk", "64k") as disk:
        home = disk / "home"
        (home / "calibration").mkdir(parents=True)
        monkeypatch.setenv("HOMER_HOME", str(home))
        fill(disk)
        result = invoke("calibrate", "--model", str(tiny_model_dir), "--max-chunk", MAX_CHUNK)
        one_line_error(result, "no space left", "free some space")
        assert list((home / "calibration").iterdir()) == []


# ----------------------------------------------------------------------------- (b) read-only


def _as_nobody(call: Callable[[], Any]) -> Any:
    """Run `call` in a forked child that has dropped root for `nobody`; return its result."""
    # The child may not read root's files (the interpreter lives under /root): run the call once
    # here on an empty store first, so everything it imports is imported before the fork.
    home = os.environ["HOMER_HOME"]
    with tempfile.TemporaryDirectory() as empty:
        os.environ["HOMER_HOME"] = empty
        try:
            call()
        finally:
            os.environ["HOMER_HOME"] = home
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        code = 0
        try:
            os.close(read)
            os.setgid(65534)
            os.setuid(65534)
            payload = json.dumps(call()).encode()
            os.write(write, payload)
        except BaseException as exc:
            os.write(write, json.dumps({"child error": repr(exc)}).encode())
            code = 1
        finally:
            os._exit(code)
    os.close(write)
    with os.fdopen(read, "rb") as fh:
        data = fh.read()
    os.waitpid(pid, 0)
    result = json.loads(data)
    assert not (isinstance(result, dict) and "child error" in result), result
    return result


def _cli(*args: str) -> dict[str, Any]:
    result = invoke(*args)
    return {
        "code": result.exit_code,
        "stdout": result.stdout,
        "stderr": result.stderr,
        "exception": repr(result.exception),
    }


@pytest.fixture
def foreign_home(monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A HOMER_HOME another user can read but not write (outside root's private temp dir)."""
    home = Path(tempfile.mkdtemp(prefix="homer-foreign-"))
    home.chmod(0o755)
    monkeypatch.setenv("HOMER_HOME", str(home))
    try:
        yield home
    finally:
        for path in (home, *home.rglob("*")):
            with contextlib.suppress(OSError):
                path.chmod(0o755 if path.is_dir() else 0o644)
        shutil.rmtree(home, ignore_errors=True)


def as_reader(*args: str) -> dict[str, Any]:
    """`homer ARGS` by a user who may read the store but not write to it."""
    if os.geteuid() == 0:
        return _as_nobody(lambda: _cli(*args))
    return _cli(*args)


def _make_unwritable(root: Path) -> None:
    if os.geteuid() != 0:
        root.chmod(0o555)
        (root / ".locks").chmod(0o555)


def test_a_store_that_cannot_be_written_is_read_without_locks(foreign_home: Path) -> None:
    store = Store()
    save_synthetic(store, "alpha")
    save_synthetic(store, "beta", key="b" * 32)
    # Lock files of one name exist, the other's do not: neither can be opened for writing.
    (store.root / ".locks" / "name-beta.lock").unlink(missing_ok=True)
    _make_unwritable(store.root)
    listed = as_reader("list", "--json")
    assert listed["code"] == 0, listed
    assert [r["name"] for r in json.loads(listed["stdout"])] == ["alpha", "beta"]
    assert listed["stderr"].count("\n") == 1 and "read-only" in listed["stderr"], listed
    shown = as_reader("show", "beta")
    assert shown["code"] == 0 and json.loads(shown["stdout"])["name"] == "beta", shown
    removed = as_reader("rm", "beta")
    assert removed["code"] == 1 and "could not" in removed["stderr"], removed
    assert store.names() == ["alpha", "beta"]


def test_a_read_only_mount_is_listed_and_answered(
    built_store: Path, calibrated: Path, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    with tmpfs(tmp_path / "disk", "4m") as disk:
        home = disk / "home"
        shutil.copytree(built_store, home / "caches")
        shutil.copytree(calibrated, home / "calibration")
        monkeypatch.setenv("HOMER_HOME", str(home))
        remount_read_only(disk)
        listed = invoke("list", "--json")
        assert listed.exit_code == 0, listed.output
        assert [r["name"] for r in json.loads(listed.stdout)] == ["book"]
        assert listed.stderr.count("\n") == 1 and "read-only" in listed.stderr
        answer = invoke("ask", "Who?", "--max-tokens", "2", "--json")
        assert answer.exit_code == 0, answer.output
        assert json.loads(answer.stdout)["cache"] == "book"
        one_line_error(invoke("rm", "book"), "could not remove 'book'", "Read-only file system")


# ----------------------------------------------------------------------------- (c) symlinks


def test_a_symlink_planted_in_the_locks_is_never_followed(tmp_path: Path) -> None:
    store = Store()
    save_synthetic(store, "doc")
    outside = tmp_path / "outside"
    outside.mkdir()
    lock = store.root / ".locks" / "name-doc.lock"
    lock.unlink()
    lock.symlink_to(outside / "planted")  # dangling: following it would create the file
    listed = invoke("list", "--json")
    assert listed.exit_code == 0, listed.output
    assert [r["name"] for r in json.loads(listed.stdout)] == ["doc"]
    assert not (outside / "planted").exists()
    one_line_error(invoke("rm", "doc"), "symbolic link", str(lock))
    assert not (outside / "planted").exists()
    assert store.names() == ["doc"]


def test_a_locks_folder_that_is_a_symlink_is_refused(tmp_path: Path) -> None:
    store = Store()
    save_synthetic(store, "doc")
    outside = tmp_path / "outside"
    outside.mkdir()
    shutil.rmtree(store.root / ".locks")
    (store.root / ".locks").symlink_to(outside)
    listed = invoke("list", "--json")
    assert listed.exit_code == 0, listed.output
    assert [r["name"] for r in json.loads(listed.stdout)] == ["doc"]
    assert list(outside.iterdir()) == []


# ----------------------------------------------------------------------------- (d) HOMER_HOME


@pytest.mark.parametrize("where", ["home", "caches"])
def test_a_homer_home_that_is_a_file_is_a_clear_error(
    homer_home: Path, monkeypatch: pytest.MonkeyPatch, where: str
) -> None:
    blocker = homer_home if where == "home" else homer_home / "caches"
    blocker.parent.mkdir(parents=True, exist_ok=True)
    blocker.write_text("not a folder")
    for args in (["list"], ["list", "--json"], ["show"], ["ask", "Who?"], ["rm", "x"]):
        one_line_error(invoke(*args), str(blocker), "not a folder", "HOMER_HOME")
    assert blocker.read_text() == "not a folder"


# ----------------------------------------------------------------------------- (e) calibration


def _calibration_file(home: Path) -> Path:
    (path,) = [p for p in (home / "calibration").iterdir() if not p.name.startswith(".")]
    return path


def _calibrate(tiny_model_dir: Path) -> Any:
    from homer.calibration import calibrate
    from homer.config import HomerConfig
    from homer.models import load_model

    model, tokenizer = load_model(str(tiny_model_dir))
    return calibrate(model, tokenizer, HomerConfig(max_chunk_len=int(MAX_CHUNK)))


@pytest.mark.parametrize("damage", ["nan", "inf", "flipped", "short"])
def test_a_bad_calibration_file_is_measured_again(
    engine_home: Path, tiny_model_dir: Path, damage: str, caplog: pytest.LogCaptureFixture
) -> None:
    from safetensors import safe_open
    from safetensors.torch import load_file, save_file

    path = _calibration_file(engine_home)
    good = load_file(str(path))["bias"].clone()  # not a view of the file damaged below
    with safe_open(str(path), "pt") as fh:
        metadata = fh.metadata()
    bias = good.clone()
    if damage in ("nan", "inf"):
        bias[1, 3] = float(damage)
        save_file({"bias": bias}, str(path), metadata=metadata)
    elif damage == "short":
        save_file({"bias": bias[:, :-1].contiguous()}, str(path), metadata=metadata)
    else:  # one bit of one value, the file otherwise intact
        data = bytearray(path.read_bytes())
        data[-7] ^= 0x01
        path.write_bytes(bytes(data))
    result = _calibrate(tiny_model_dir)
    assert torch.isfinite(result.bias).all() and torch.equal(result.bias, good)
    assert torch.equal(load_file(str(path))["bias"], good)  # the file is replaced
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert len(warnings) == 1 and str(path) in warnings[0], warnings


def test_calibration_temp_files_are_swept(engine_home: Path, tiny_model_dir: Path) -> None:
    folder = engine_home / "calibration"
    dead = folder / ".tmp-999999999-abc.safetensors"
    dead.write_bytes(b"half a bias")
    old_style = folder / ".tmp-q8x7e2ab.safetensors"  # homer 0.1.0's name: no pid in it
    old_style.write_bytes(b"half a bias")
    os.utime(old_style, (0, 0))
    mine = folder / f".tmp-{os.getpid()}-live.safetensors"
    mine.write_bytes(b"being written")
    _calibrate(tiny_model_dir)
    assert not dead.exists() and not old_style.exists()
    assert mine.exists()


# ----------------------------------------------------------------------------- (f) odd caches


def test_deeply_nested_metadata_is_skipped_with_one_warning() -> None:
    store = Store()
    save_synthetic(store, "good")
    deep = save_synthetic(store, "deep", key="d" * 32)
    (deep.path / META_FILE).write_text("[" * 100_000 + "]" * 100_000)
    nested = save_synthetic(store, "nested", key="n" * 32)
    meta = json.loads((nested.path / META_FILE).read_text())
    value: Any = 1
    for _ in range(200):
        value = {"x": value}
    meta["settings"] = value
    (nested.path / META_FILE).write_text(json.dumps(meta))
    listed = invoke("list", "--json")
    assert listed.exit_code == 0, listed.output
    assert [r["name"] for r in json.loads(listed.stdout)] == ["good"]
    lines = listed.stderr.splitlines()
    assert len(lines) == 2, lines
    assert str(deep.path / META_FILE) in lines[0] and "homer rm deep" in lines[0]
    assert str(nested.path / META_FILE) in lines[1] and "nested" in lines[1]


def test_an_unreadable_cache_folder_is_skipped_with_one_warning(foreign_home: Path) -> None:
    store = Store()
    save_synthetic(store, "good")
    locked = save_synthetic(store, "locked", key="l" * 32)
    locked.path.chmod(0o000)
    listed = as_reader("list", "--json")
    assert listed["code"] == 0, listed
    assert [r["name"] for r in json.loads(listed["stdout"])] == ["good"]
    warnings = [line for line in listed["stderr"].splitlines() if "read-only" not in line]
    assert len(warnings) == 1 and str(locked.path) in warnings[0], listed
    assert "permission" in warnings[0].lower()
    shown = as_reader("show", "locked")
    assert shown["code"] == 1 and str(locked.path) in shown["stderr"], shown
    assert shown["stderr"].count("\n") == 1 or "read-only" in shown["stderr"], shown
