"""The log-processing map, called directly: the combined-format line parser (what counts, what is malformed, never
a crash), the `parse-log` worker on a file item, the log generator, and both example pipelines validating."""

from __future__ import annotations

import subprocess
import sys
from functools import partial
from pathlib import Path

import pytest
from example_modules import load_example

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "wordcount"


load = partial(load_example, "wordcount")


workers, generator = load("workers"), load("generate_logs")

GOOD = '203.0.113.9 - frank [10/Oct/2000:13:55:36 -0700] "GET /a.gif?x=1 HTTP/1.0" 200 2326 "http://r.test/" "Mozilla"'


def parsed(*lines: str) -> dict:
    return workers.parse(list(lines))


def test_a_combined_line() -> None:
    assert parsed(GOOD) == {"status": {"200": 1}, "paths": {"/a.gif": 1}, "bytes": 2326, "malformed": 0}


@pytest.mark.parametrize("line", [
    '10.0.0.1 - - [01/Nov/2026:00:00:00 +0000] "HEAD / HTTP/1.1" 304 - "-" "-"',  # nothing sent
    '10.0.0.1 - - [01/Nov/2026:00:00:00 +0000] "GET / HTTP/2.0" 304 0',  # common format: no referer, no agent
])
def test_lines_that_count(line: str) -> None:
    assert parsed(line) == {"status": {"304": 1}, "paths": {"/": 1}, "bytes": 0, "malformed": 0}


@pytest.mark.parametrize("line", [
    "garbage line without structure",
    '10.0.0.1 - - [bad date] "GET',  # cut short
    GOOD[:60],
    '10.1.2.3 - - [01/Nov/2026:00:00:01 +0000] "-" 400 0 "-" "-"',  # a request nginx could not parse
    '10.1.2.3 - - [01/Nov/2026:00:00:02 +0000] "GET / HTTP/1.1" 2OO 512 "-" "-"',  # letters in the status
    '10.1.2.3 - - [01/Nov/2026:00:00:02 +0000] "GET / HTTP/1.1" 200 12kB "-" "-"',
    '10.1.2.3 - - [01/Nov/2026:00:00:02 +0000] "GET / HTTP/1.1" ٢٠٠ 5 "-" "-"',  # non-ASCII digits
    "\x00\x01\x02 binary noise",
])
def test_malformed_lines_are_counted_not_raised(line: str) -> None:
    assert parsed(line) == {"status": {}, "paths": {}, "bytes": 0, "malformed": 1}


def test_blank_lines_are_neither() -> None:
    assert parsed("", "   ", GOOD) == {"status": {"200": 1}, "paths": {"/a.gif": 1}, "bytes": 2326, "malformed": 0}


def test_parse_log_splits_lines_at_newlines_only(tmp_path: Path) -> None:
    log = tmp_path / "access.log"
    odd = GOOD.replace("Mozilla", "Moz\x85illa\u2028\x0c")  # characters str.splitlines() would split at
    log.write_bytes(f"{GOOD}\r\n{odd}\nnoise\n\n".encode() + b"\xff\xfe not utf-8\n")
    report = workers.parse_log({"data": {"uri": log.as_uri()}}, tmp_path)
    assert report == {"status": {"200": 2}, "paths": {"/a.gif": 2}, "bytes": 4652, "malformed": 2}


def test_the_logs_are_deterministic_with_some_malformed_lines(tmp_path: Path) -> None:
    first = generator.generate(tmp_path / "a", 20, seed=2)
    again = generator.generate(tmp_path / "b", 20, seed=2)
    assert [p.read_bytes() for p in first] == [p.read_bytes() for p in again]
    reports = [workers.parse(p.read_text(encoding="utf-8").split("\n")) for p in first]
    assert sum(r["malformed"] for r in reports) >= 5
    assert all(sum(r["status"].values()) == sum(r["paths"].values()) >= 50 for r in reports)
    statuses = {code for r in reports for code in r["status"]}
    assert {"200", "304", "404", "500"} <= statuses and not any("?" in p for r in reports for p in r["paths"])


@pytest.mark.parametrize("name", ["pipeline.yaml", "logs.yaml"])
def test_the_example_pipelines_validate(name: str) -> None:
    done = subprocess.run([sys.executable, "-m", "services.cli", "validate", str(EXAMPLE / name)],
                          cwd=EXAMPLE.parents[1], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
