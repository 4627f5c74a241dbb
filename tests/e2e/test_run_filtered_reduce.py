"""A filter before a reduce, end to end (`batchmesh run` of examples/wordcount/errors.yaml, every role a process,
its own embedded Redis): the report over the access logs with more than four HTTP 500s equals a plain Python
computation over those logs; the other logs are counted as skipped, and the run completes (the reduce fired)."""

from __future__ import annotations

import json
import subprocess
import sys
from collections import Counter
from pathlib import Path
from typing import Any

from runs import ROOT, start_run

EXAMPLE = ROOT / "examples" / "wordcount"
FILES = 40


def digits(text: str) -> bool:
    return text.isascii() and text.isdigit()


def tally(path: Path) -> dict[str, Any]:
    """One log tallied plainly, splitting at the quotes rather than with the worker's regular expression."""
    status: Counter[str] = Counter()
    paths: Counter[str] = Counter()
    sent = 0
    with path.open(encoding="utf-8") as lines:  # universal newlines: a line ends at \n, \r\n or \r only
        for line in lines:
            parts = line.rstrip("\n").split('"')
            request = parts[1].split(" ") if len(parts) >= 3 else []
            tail = parts[2].split() if len(parts) >= 3 else []
            if (len(request) == 3 and request[0].isalpha() and len(tail) >= 2 and len(tail[0]) == 3
                    and digits(tail[0]) and (tail[1] == "-" or digits(tail[1]))):
                status[tail[0]] += 1
                paths[request[1].partition("?")[0]] += 1
                sent += 0 if tail[1] == "-" else int(tail[1])
    return {"status": status, "paths": paths, "bytes": sent}


def test_error_report_over_the_filtered_logs_equals_a_plain_computation(tmp_path: Path) -> None:
    logs = tmp_path / "logs"
    subprocess.run([sys.executable, str(EXAMPLE / "generate_logs.py"), str(logs), "--files", str(FILES),
                    "--seed", "5"], check=True, capture_output=True)
    tallies = [tally(p) for p in sorted(logs.glob("*.log"))]
    kept = [t for t in tallies if t["status"]["500"] > 4]
    assert 0 < len(kept) < FILES, "the filter must keep some logs and drop others"
    status: Counter[str] = Counter()
    paths: Counter[str] = Counter()
    for t in kept:
        status.update(t["status"])
        paths.update(t["paths"])

    run = start_run(tmp_path, EXAMPLE / "errors.yaml", logs)
    _, stderr = run.communicate(timeout=300)
    assert run.returncode == 0, stderr[-3000:]
    report = json.loads((tmp_path / "out" / "errors.json").read_text())
    assert report["final"] is True and report["failed"] == []
    assert report["items"] == FILES and report["done"] == len(kept) and report["skipped"] == FILES - len(kept)
    assert report["aggregate"] == {"status": dict(sorted(status.items())), "paths": dict(sorted(paths.items())),
                                   "bytes": sum(t["bytes"] for t in kept), "files": len(kept)}
    assert report["top"]["paths"] == [[p, n] for p, n in sorted(paths.items(), key=lambda kv: (-kv[1], kv[0]))][:10]
