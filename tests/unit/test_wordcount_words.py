"""The word count's map, called directly: the tokeniser (`[^\\W_]+` over the lowercased text), the `count-words`
worker on a file item, the corpus generator (deterministic, the promised variety) and the top-20 printer."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from collections import Counter
from functools import partial
from pathlib import Path

import pytest
from example_modules import load_example

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "wordcount"


load = partial(load_example, "wordcount")


workers, generator = load("workers"), load("generate")


@pytest.mark.parametrize(("text", "expected"), [
    ("Hello, hello WORLD!", ["hello", "hello", "world"]),
    ("snake_case_name __init__ _private", ["snake", "case", "name", "init", "private"]),
    ("well-known e-mail don't it's", ["well", "known", "e", "mail", "don", "t", "it", "s"]),
    ("x86_64 v2 3.14 2026", ["x86", "64", "v2", "3", "14", "2026"]),
    ("Straße STRASSE Café NAÏVE", ["straße", "strasse", "café", "naïve"]),
    ("ΛΌΓΟΣ Ελληνικά данные", ["λόγος", "ελληνικά", "данные"]),  # the final sigma lowercases to ς
    ("東京の数据、データ。", ["東京の数据", "データ"]),  # CJK has no spaces: a run of letters is one word
    ("\ufeff... --- !!! _ __\r\n", []),
    ("", []),
])
def test_words(text: str, expected: list[str]) -> None:
    assert workers.words(text) == expected == re.findall(r"[^\W_]+", text.lower())


def test_count_words_on_a_file_item(tmp_path: Path) -> None:
    path = tmp_path / "sub dir" / "naïve 50%.txt"
    path.parent.mkdir()
    path.write_text("The the THE snake_case café\r\n", encoding="utf-8")
    item = {"data": {"uri": path.as_uri()}}
    assert workers.count_words(item, tmp_path) == {"counts": {"the": 3, "snake": 1, "case": 1, "café": 1}, "words": 6}
    path.write_bytes(b"caf\xe9 ok")  # not UTF-8: replaced, never a crash
    assert workers.count_words(item, tmp_path) == {"counts": {"caf": 1, "ok": 1}, "words": 2}


def test_an_item_without_a_file_uri_fails() -> None:
    with pytest.raises(ValueError, match="file://"):
        workers.count_words({"data": {"uri": "http://example.test/a.txt"}}, Path("."))


def test_the_corpus_is_deterministic_and_varied(tmp_path: Path) -> None:
    first = generator.generate(tmp_path / "a", 300, seed=5)
    again = generator.generate(tmp_path / "b", 300, seed=5)
    other = generator.generate(tmp_path / "c", 300, seed=6)
    assert [p.relative_to(tmp_path / "a") for p in first] == [p.relative_to(tmp_path / "b") for p in again]
    assert all(p.read_bytes() == q.read_bytes() for p, q in zip(first, again, strict=True))
    assert any(p.read_bytes() != q.read_bytes() for p, q in zip(first, other, strict=True))

    counts = Counter(w for p in first for w in workers.words(p.read_text(encoding="utf-8")))
    assert len({p.parent for p in first}) >= 3  # files in subdirectories
    assert sum(p.stat().st_size == 0 for p in first) >= 3  # a few empty files
    assert any(b"\r\n" in p.read_bytes() for p in first)
    assert {"straße", "café", "λόγος", "東京", "2026", "snake", "case"} <= counts.keys()
    assert not any("_" in w or w != w.lower() for w in counts)
    ranked = [n for _, n in counts.most_common()]
    assert ranked[0] > 10 * ranked[50] and sum(n == 1 for n in ranked) > 100  # Zipf-like: a head and a long tail


def test_top_prints_the_top_words_and_writes_plain_counts(tmp_path: Path) -> None:
    counts = {"b": 5, "a": 5, "東京": 7, "c": 1}
    result = tmp_path / "wordcount.json"
    result.write_text(json.dumps({"final": True, "failed_count": 0, "aggregate": {"words": counts, "files": 2}}))
    out = subprocess.run([sys.executable, str(EXAMPLE / "top.py"), str(result), "--n", "3"], capture_output=True,
                         text=True, check=True).stdout
    assert [line.split()[1] for line in out.splitlines() if re.match(r"\s*\d+\. ", line)] == ["東京", "a", "b"]
    plain = json.loads((tmp_path / "words.json").read_text(encoding="utf-8"))
    assert list(plain.items()) == [("東京", 7), ("a", 5), ("b", 5), ("c", 1)]


def test_top_leaves_plain_counts_alone_while_the_batch_runs(tmp_path: Path) -> None:
    result = tmp_path / "wordcount.json"
    result.write_text(json.dumps({"final": False, "aggregate": {"words": 0}}))  # nothing folded yet
    out = subprocess.run([sys.executable, str(EXAMPLE / "top.py"), str(result)], capture_output=True, text=True,
                         check=True).stdout
    assert "running" in out and not (tmp_path / "words.json").exists()
    bad = subprocess.run([sys.executable, str(EXAMPLE / "top.py"), str(tmp_path / "missing.json")],
                         capture_output=True, text=True)
    assert bad.returncode == 1 and "not a word count result" in bad.stderr
