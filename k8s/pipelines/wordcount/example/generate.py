"""A corpus for the word count: many text files, a Zipf-like vocabulary (a few very common words, a long tail of
rare ones), mixed case and punctuation, Unicode letters (é, ß, Greek, Cyrillic, CJK), digits, snake_case (split at
the underscore), hyphenated words, files in subdirectories, some with CRLF line ends or a BOM, and a few files with
no words at all. Deterministic: the same seed writes the same files. No network.

    python examples/wordcount/generate.py data/texts --files 300 --seed 1
"""

from __future__ import annotations

import argparse
import itertools
import random
from pathlib import Path

COMMON = (
    "the of and to in a is that for it as was with be by on not he this are or his from at which but have an they "
    "you were her she there been one all we their has would when if so no what up out who them some could more "
    "batch queue worker stream redis shard merge join reduce copier filter splitter video image plate colour "
    "straße café naïve façade über résumé smörgåsbord ελληνικά λόγος данные поток 東京 数据 データ 2026 42 v2 x86_64 "
    "snake_case_name user_id http_status well-known e-mail don't it's 3.14 __init__ _private"
).split()
SYLLABLES = ("ka lo mi ne ru sa ti vo ze ba de fi gu ha jo ku li ma no pe qua ri so tu "
             "é ö ü ß ñ ç ø å λα μη ση τα ду ка ми").split()
PUNCTUATION = [",", ".", ";", ":", "!", "?", " -", " —", "…", "'s", '"', ")", "/", "#", "%"]
OPENERS = ["", "", "", "", "(", '"', "«", "#"]


def vocabulary(rng: random.Random, tail: int) -> tuple[list[str], list[float]]:
    """The common words in a shuffled order, then `tail` made-up rare words; the r-th word weighs 1/r (Zipf)."""
    words = COMMON[:]
    rng.shuffle(words)
    seen = set(words)
    while len(words) < len(COMMON) + tail:
        word = "".join(rng.choices(SYLLABLES, k=rng.randint(2, 4)))
        if word not in seen:
            seen.add(word)
            words.append(word)
    return words, list(itertools.accumulate(1 / rank for rank in range(1, len(words) + 1)))


def styled(rng: random.Random, word: str) -> str:
    style = rng.random()
    if style < 0.2:
        word = word.upper() if style < 0.04 else word.title() if style < 0.06 else word.capitalize()
    if rng.random() < 0.05:
        word = rng.choice(OPENERS) + word
    return word + (rng.choice(PUNCTUATION) if rng.random() < 0.15 else "")


def sentence(rng: random.Random, words: list[str], cumulative: list[float]) -> str:
    picked = rng.choices(words, cum_weights=cumulative, k=rng.randint(3, 18))
    if rng.random() < 0.1:  # an identifier, a number with a unit, a year range
        picked.insert(rng.randrange(len(picked) + 1), rng.choice(["max_retry_count", "12kB", "1999–2026", "ID_42a"]))
    return " ".join(styled(rng, word) for word in picked) + rng.choice([".", ".", "!", "?", "\n", "\n\n"])


def text(rng: random.Random, words: list[str], cumulative: list[float]) -> str:
    kind = rng.random()
    if kind < 0.012:
        return ""  # an empty file
    if kind < 0.02:
        return rng.choice(["\n\n", "... --- !!!\n", "_ __ ___\n", "\ufeff\n"])  # no words at all
    body = " ".join(sentence(rng, words, cumulative) for _ in range(rng.randint(3, 60)))
    if kind < 0.1:
        body = body.replace("\n", "\r\n")
    elif kind < 0.13:
        body = "\ufeff" + body
    return body


def path_for(rng: random.Random, root: Path, i: int) -> Path:
    sub = rng.choice(["", "", "", "part-1", "part-2", "part-2/deep", "archive/2025/q4"])
    return root / sub / f"doc-{i:04d}.txt"


def generate(root: Path, files: int, seed: int, tail: int = 8000) -> list[Path]:
    rng = random.Random(seed)
    words, cumulative = vocabulary(rng, tail)
    paths = []
    for i in range(files):
        path = path_for(rng, root, i)
        path.parent.mkdir(parents=True, exist_ok=True)
        content = text(rng, words, cumulative) if i % 100 != 7 else ""  # at least one empty file per hundred
        path.write_bytes(content.encode("utf-8"))  # bytes: "\r\n" stays as written
        paths.append(path)
    return paths


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("dir", type=Path)
    parser.add_argument("--files", type=int, default=300)
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    paths = generate(args.dir, args.files, args.seed)
    print(f"{len(paths)} files in {args.dir}")


if __name__ == "__main__":
    main()
