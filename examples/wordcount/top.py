"""Print the top words of a word count (the reduce's file) and write them as plain `{word: count}` JSON.

    python examples/wordcount/top.py out/wordcount/wordcount.json [--n 20] [--words out/wordcount/words.json]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("result", type=Path)
    parser.add_argument("--n", type=int, default=20)
    parser.add_argument("--words", type=Path, help="also write {word: count} here")
    args = parser.parse_args()
    result = json.loads(args.result.read_text())
    words = result["aggregate"]["words"] or {}
    ranked = sorted(words.items(), key=lambda kv: (-kv[1], kv[0]))
    state = "final" if result.get("final") else "running (the batch is not complete yet)"
    print(f"{len(words)} distinct words, {sum(words.values())} in all, {result['aggregate'].get('files', '?')} "
          f"files; {state}")
    for rank, (word, count) in enumerate(ranked[:args.n], 1):
        print(f"{rank:3d}. {word:<20} {count}")
    if args.words:
        args.words.write_text(json.dumps(dict(ranked), ensure_ascii=False, indent=0))


if __name__ == "__main__":
    main()
