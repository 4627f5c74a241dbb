"""Print the top words of a word count (the reduce's file) and, once the batch is final, write the count as plain
`{word: count}` JSON next to it (words.json).

    python examples/wordcount/top.py out/wordcount/wordcount.json [--n 20] [--words PATH | --no-words]

The reduce's file keeps its envelope (batch, items, done, failed, "final", aggregate, top): "final": false is how
a reader tells a running aggregate from the result, and "failed" lists items dead-lettered on the way. The plain
mapping the issue asks for is `aggregate.words`; words.json is that mapping alone, most frequent first.
"""

from __future__ import annotations

import argparse
import json
import sys
import unicodedata
from pathlib import Path
from typing import Any


def ranked(counts: dict[str, int]) -> list[tuple[str, int]]:
    """Most frequent first; ties by word, as the reduce's own top-k orders them."""
    return sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))


def columns(word: str) -> int:
    """Terminal columns: CJK letters are two wide."""
    return sum(2 if unicodedata.east_asian_width(ch) in "WF" else 1 for ch in word)


def load(path: Path) -> dict[str, Any]:
    try:
        result = json.loads(path.read_text(encoding="utf-8"))
        result["aggregate"]["words"]  # noqa: B018 - the shape check
    except (OSError, ValueError, KeyError, TypeError) as exc:
        sys.exit(f"{path}: not a word count result ({exc})")
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("result", type=Path)
    parser.add_argument("--n", type=int, default=20)
    parser.add_argument("--words", type=Path, help="where to write {word: count} (default: words.json beside RESULT)")
    parser.add_argument("--no-words", action="store_true", help="only print")
    args = parser.parse_args()
    result = load(args.result)
    words = result["aggregate"]["words"] or {}  # 0 when nothing was counted yet
    order = ranked(words)
    final = bool(result.get("final"))
    state = "final" if final else "running: the batch is not complete yet"
    failed = result.get("failed_count", 0)
    print(f"{len(words)} distinct words, {sum(words.values())} in all, {result['aggregate'].get('files', '?')} files; "
          f"{state}" + (f"; {failed} file(s) dead-lettered" if failed else ""))
    width = max((columns(word) for word, _ in order[:args.n]), default=0)
    for rank, (word, count) in enumerate(order[:args.n], 1):
        print(f"{rank:3d}. {word}{' ' * (width - columns(word))}  {count}")
    if final and not args.no_words:
        target = args.words or args.result.with_name("words.json")
        target.write_text(json.dumps(dict(order), ensure_ascii=False, indent=0) + "\n", encoding="utf-8")
        print(f"{{word: count}} written to {target}")
    elif args.words:
        print(f"{args.words} not written: the count is not final yet", file=sys.stderr)


if __name__ == "__main__":
    main()
