"""Items for the chaos pipeline: one JSON object a line, `{"name": "c0000001", "value": int, "kind": "a".."e"}`.

    python examples/chaos/generate.py OUT.jsonl --items 3000 [--seed 1]

Deterministic for a seed; an existing file with the same count is kept (a container restart must not rewrite
the input under a running batch)."""

from __future__ import annotations

import argparse
import json
import os
import random
from pathlib import Path

KINDS = "abcde"


def items(n: int, seed: int = 1) -> list[dict[str, object]]:
    rnd = random.Random(seed)
    return [{"name": f"c{i:07d}", "value": rnd.randrange(1_000_000), "kind": rnd.choice(KINDS)} for i in range(n)]


def write(path: Path, n: int, seed: int = 1) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with tmp.open("w") as f:
        for record in items(n, seed):
            f.write(json.dumps(record, separators=(",", ":")) + "\n")
    os.replace(tmp, path)  # the source never reads half a file
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path)
    parser.add_argument("--items", type=int, default=3000)
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    if args.items < 1:
        parser.error("--items must be at least 1")
    if args.out.is_file() and sum(1 for _ in args.out.open()) == args.items:
        print(f"{args.out}: {args.items} items already there")
        return
    write(args.out, args.items, args.seed)
    print(f"{args.out}: {args.items} items")


if __name__ == "__main__":
    main()
