r"""The word count's map: one text file in, its word counts out — `{"counts": {word: n}}` for the reduce to sum.

Words are `re.findall(r"[^\W_]+", text.lower())`: runs of Unicode letters and digits (no underscore)."""

from __future__ import annotations

import re
from collections import Counter
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlparse

from services.workers import worker

WORD = re.compile(r"[^\W_]+")


def words(text: str) -> list[str]:
    return WORD.findall(text.lower())


def local_path(data: dict[str, Any]) -> Path:
    """The file a directory source item names (its file:// uri)."""
    uri = urlparse(str(data.get("uri", "")))
    if uri.scheme != "file":
        raise ValueError(f"item has no file:// uri: {data.get('uri')!r}")
    return Path(unquote(uri.path))


@worker("count-words", writes=False)
def count_words(item: dict[str, Any], output_dir: Path) -> dict[str, Any]:
    text = local_path(item["data"]).read_text(encoding="utf-8", errors="replace")
    counts = Counter(words(text))
    return {"counts": dict(counts), "words": sum(counts.values())}
