r"""The maps of the example's two MapReduces, one file in, its tallies out, for a reduce to sum:

- `count-words`: `{"counts": {word: n}, "words": total}`; words are `re.findall(r"[^\W_]+", text.lower())`,
  runs of Unicode letters and digits (no underscore);
- `parse-log`: an access log (combined format) -> requests per status code and per path (query dropped), bytes
  sent, and how many lines were malformed (counted, never a crash)."""

from __future__ import annotations

import os
import re
import time
from collections import Counter
from collections.abc import Iterable
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlparse

from batchmesh import worker

WORD = re.compile(r"[^\W_]+")
DELAY_S = float(os.environ.get("WORDCOUNT_DELAY_MS", "0")) / 1000  # a slower map, to watch (or kill) it mid-run


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
    if DELAY_S:
        time.sleep(DELAY_S)
    counts = Counter(words(text))
    return {"counts": dict(counts), "words": sum(counts.values())}


# 127.0.0.1 - frank [10/Oct/2000:13:55:36 -0700] "GET /a.gif HTTP/1.0" 200 2326 "referer" "agent"
LINE = re.compile(r'^\S+ \S+ \S+ \[[^\]]+\] "(?P<method>[A-Z]+) (?P<path>\S+) [^"]*" '
                  r'(?P<status>[0-9]{3}) (?P<bytes>[0-9]+|-)(?:\s|$)')


def parse(lines: Iterable[str]) -> dict[str, Any]:
    """Tally access-log lines; a line that is not combined/common format is counted as malformed (blank lines are
    not counted at all)."""
    status: Counter[str] = Counter()
    paths: Counter[str] = Counter()
    sent = malformed = 0
    for line in lines:
        match = LINE.match(line)
        if match is None:
            malformed += line.strip() != ""
            continue
        status[match["status"]] += 1
        paths[match["path"].split("?", 1)[0]] += 1
        sent += 0 if match["bytes"] == "-" else int(match["bytes"])
    return {"status": dict(status), "paths": dict(paths), "bytes": sent, "malformed": malformed}


@worker("parse-log", writes=False)
def parse_log(item: dict[str, Any], output_dir: Path) -> dict[str, Any]:
    text = local_path(item["data"]).read_text(encoding="utf-8", errors="replace")
    # Lines end at "\n" only (read_text has turned "\r\n" and "\r" into it): str.splitlines() would also split at
    # \f, \x1c-\x1e, \x85, \u2028 inside a line (a user agent, a path) and count its halves as two lines.
    return parse(text.split("\n"))
