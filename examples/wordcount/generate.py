"""A corpus for the word count: many text files, a Zipf-like vocabulary, mixed case and punctuation, Unicode
letters, digits, snake_case (split at the underscore), a few subdirectories and a few empty files.

    python examples/wordcount/generate.py data/texts --files 300 --seed 1
"""

from __future__ import annotations

import argparse
import random
from pathlib import Path

VOCABULARY = (
    "the of and to in a is that for it as was with be by on not he this are or his from at which but have an they "
    "you were her she there been one all we their has would when if so no what up out who them some could more "
    "batch queue worker stream redis shard merge join reduce copier filter splitter video image plate colour "
    "straße café naïve façade über résumé smörgåsbord ελληνικά λόγος данные поток 東京 数据 2026 42 v2 x86_64 "
    "snake_case_name user_id http_status"
).split()
PUNCTUATION = [",", ".", ";", ":", "!", "?", " -", "—", "…", "'s", '"', "(", ")"]


def sentence(rng: random.Random, weights: list[float]) -> str:
    words = rng.choices(VOCABULARY, weights=weights, k=rng.randint(4, 18))
    out = []
    for word in words:
        style = rng.random()
        word = word.upper() if style < 0.05 else word.capitalize() if style < 0.2 else word
        out.append(word + (rng.choice(PUNCTUATION) if rng.random() < 0.15 else ""))
    return " ".join(out) + rng.choice([".", "!", "?", "\n"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("dir", type=Path)
    parser.add_argument("--files", type=int, default=300)
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    rng = random.Random(args.seed)
    weights = [1 / (rank + 1) for rank in range(len(VOCABULARY))]  # Zipf: the r-th word ~ 1/r
    rng.shuffle(weights)
    for i in range(args.files):
        sub = args.dir / (f"part-{i % 4}" if i % 3 == 0 else "")
        sub.mkdir(parents=True, exist_ok=True)
        lines = [] if i % 97 == 5 else [sentence(rng, weights) for _ in range(rng.randint(5, 60))]
        (sub / f"doc-{i:04d}.txt").write_text(" ".join(lines), encoding="utf-8")
    print(f"{args.files} files in {args.dir}")


if __name__ == "__main__":
    main()
