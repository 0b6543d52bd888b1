"""Real-world PDFs: every sample PDF that ships in pypdf's source distribution.

The corpus (about 70 files: forms, scans, LaTeX, LibreOffice, AutoCAD, eight kinds of encryption)
is fetched at test time with `pip download` of the installed pypdf version's sdist and kept in
pytest's cache folder; nothing third-party is committed. Without network access the test skips
and says why.

Each file must come out as text, or as a one-line `DocumentError` that names it and belongs to a
known kind (needs a password, needs the cryptography package, has no extractable text, corrupt).
"""

from __future__ import annotations

import importlib.metadata
import subprocess
import sys
import tarfile
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from pathlib import Path

import pytest

#: The user password of pypdf's encryption samples (from its tests/test_encryption.py).
SAMPLE_PASSWORD = "asdfzxcv"
KNOWN_REFUSALS = ("--password", "cryptography", "no extractable text", "corrupt")


@pytest.fixture(scope="session")
def pypdf_corpus(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The `resources/` folder of the installed pypdf's sdist, downloaded once per machine."""
    version = importlib.metadata.version("pypdf")
    if getattr(request.config, "cache", None) is not None:
        cache = Path(request.config.cache.mkdir(f"pypdf-sdist-{version}"))
    else:  # pytest -p no:cacheprovider: download for this session only
        cache = tmp_path_factory.mktemp("pypdf-sdist")
    archives = list(cache.glob("pypdf-*.tar.gz"))
    if not archives:
        command = [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps"]
        command += ["--no-binary", ":all:", f"pypdf=={version}", "-d", str(cache)]
        try:
            done = subprocess.run(command, capture_output=True, text=True, timeout=120)
        except subprocess.TimeoutExpired:
            pytest.skip("pip download of pypdf's sdist timed out (no network?)")
        archives = list(cache.glob("pypdf-*.tar.gz"))
        if done.returncode != 0 or not archives:
            reason = (done.stderr.strip().splitlines() or ["no archive"])[-1]
            pytest.skip(f"cannot fetch pypdf=={version} sdist for its sample PDFs: {reason}")
    target = tmp_path_factory.mktemp("pypdf-corpus")
    with tarfile.open(archives[0]) as tar:
        members = [m for m in tar.getmembers() if "/resources/" in m.name and m.isfile()]
        tar.extractall(target, members=members, filter="data")
    (folder,) = target.glob("pypdf-*/resources")
    return folder


def _read(path: str, password: str | None) -> tuple[str, str, str]:
    """(path, "ok"|"refused"|"bug", detail) for one file; runs in a worker process."""
    import logging

    from homer.documents import load_document
    from homer.errors import DocumentError

    logging.disable(logging.WARNING)
    try:
        doc = load_document(path, password=password)
    except DocumentError as exc:
        return path, "refused", str(exc)
    except Exception as exc:  # the very thing this test hunts for
        return path, "bug", f"{type(exc).__name__}: {exc}"
    return path, ("ok" if doc.text.strip() else "bug"), f"{doc.num_pages} pages"


def test_every_sample_pdf_reads_or_is_refused_in_one_line(pypdf_corpus: Path) -> None:
    # Largest first, so the slowest file (a 137-page scan, about ten seconds) starts at once.
    files = sorted(pypdf_corpus.rglob("*.pdf"), key=lambda p: (-p.stat().st_size, p.name))
    assert len(files) >= 50, f"only {len(files)} sample PDFs in {pypdf_corpus}"
    jobs = [(str(p), None) for p in files]
    jobs += [(str(p), SAMPLE_PASSWORD) for p in files if "user-password" in p.name]
    with ProcessPoolExecutor(max_workers=2, mp_context=get_context("spawn")) as pool:
        results = list(pool.map(_read, *zip(*jobs, strict=True)))
    bugs = [r for r in results if r[1] == "bug"]
    assert bugs == []
    for path, status, detail in results:
        if status == "refused":
            assert Path(path).name in detail and "\n" not in detail, detail
            assert any(kind in detail for kind in KNOWN_REFUSALS), detail
    read = [r for r in results if r[1] == "ok"]
    assert len(read) >= 40, f"only {len(read)} of {len(results)} sample PDFs gave text"
    by_name = {(Path(p).name, i >= len(files)): (s, d) for i, (p, s, d) in enumerate(results)}
    # Classic (RC4) user-password files: refused without the password, read with it.
    for name in ("r2-user-password.pdf", "r3-user-password.pdf", "r4-user-password.pdf"):
        assert "--password" in by_name[(name, False)][1]
        assert by_name[(name, True)][0] == "ok"
    # Empty user password: read with no --password at all.
    assert by_name[("r2-empty-password.pdf", False)][0] == "ok"
