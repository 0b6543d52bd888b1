"""Would the loop rule cut a right answer? The rule replayed on every saved benchmark answer.

`homer.repetition.loop_start` stops an answer once it is looping. This replays it, offline, on
the answers the needles and passkey benchmarks saved (`benchmarks/results/needles*.json`,
`passkey*.json`, archived runs included with `--archive`): each answer is tokenized with the
embedded model's tokenizer, the rule is applied token by token as generation would, and the
answer is cut where it would have stopped. It counts the answers cut, and among the answers
that were right, how many are still right after the cut (the key still stated in full).

    python -m benchmarks.loop_stop
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from benchmarks.common import load_tokenizer
from benchmarks.needles import answered
from benchmarks.report import ARCHIVE, RESULTS, markdown_table, read_result, show, write_result
from homer.repetition import loop_start


def stopped(tokenizer: Any, answer: str) -> str:
    """`answer` as it reads once generation stops at the rule's first loop."""
    ids = tokenizer(answer, add_special_tokens=False)["input_ids"]
    for end in range(1, len(ids) + 1):
        start = loop_start(ids[:end])
        if start is not None:
            return str(tokenizer.decode(ids[:end]))
    return answer


def replay(tokenizer: Any, names: list[str]) -> dict[str, Any]:
    counts: dict[str, dict[str, int]] = {}
    examples: list[dict[str, str]] = []
    for name in names:
        family = "passkey" if name.startswith("passkey") else "needles"
        tally = counts.setdefault(family, {"answers": 0, "cut": 0, "right": 0, "right_kept": 0})
        for record in read_result(name).get("records", []):
            answer, key = record.get("answer"), record.get("key")
            if not isinstance(answer, str) or key is None:
                continue
            key = str(key)
            cut = stopped(tokenizer, answer)
            was_right = answered(key, answer) if family == "needles" else key in answer
            still = answered(key, cut) if family == "needles" else key in cut
            tally["answers"] += 1
            tally["cut"] += cut != answer
            tally["right"] += was_right
            tally["right_kept"] += was_right and still
            if cut != answer and len(examples) < 12:
                examples.append({"result": name, "answer": answer, "stopped": cut})
    return {"counts": counts, "examples": examples}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--archive", action="store_true", help="also replay archived runs")
    parser.add_argument("--name", default="loop_stop")
    args = parser.parse_args()
    folders: list[Path] = [RESULTS, ARCHIVE] if args.archive else [RESULTS]
    names = sorted(
        {
            path.stem
            for folder in folders
            for pattern in ("needles*.json", "passkey*.json")
            for path in folder.glob(pattern)
        }
    )
    result = replay(load_tokenizer(), names)
    write_result(args.name, {"results": names, **result})
    rows = [
        [family, c["answers"], c["cut"], c["right"], c["right_kept"]]
        for family, c in result["counts"].items()
    ]
    headers = ["benchmark", "answers", "cut by the rule", "right", "right after the cut"]
    show(markdown_table(headers, rows))


if __name__ == "__main__":
    main()
