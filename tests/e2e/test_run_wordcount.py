"""The MapReduce word count end to end (`batchmesh run`, every role a process, its own embedded Redis): the reduce's
result equals `collections.Counter` over the same tokenisation exactly, on a corpus of 320 files — also with a map
worker SIGKILLed while it holds items, and with the running aggregate ("final": false) in the result file before
the map is through. The log-processing variant equals a plain Python computation over the same logs."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

import yaml
from runs import ROOT, kill_worker_mid_batch, start_run

EXAMPLE = ROOT / "examples" / "wordcount"
FILES = 320


def generate(script: str, target: Path, files: int) -> Path:
    subprocess.run([sys.executable, str(EXAMPLE / script), str(target), "--files", str(files), "--seed", "3"],
                   check=True, capture_output=True)
    return target


def fast_reclaim(tmp: Path, name: str) -> Path:
    spec = yaml.safe_load((EXAMPLE / name).read_text())
    spec["defaults"] = {"visibility_timeout": "1s", "max_deliveries": 5}  # a killed worker's items come back soon
    path = tmp / name
    path.write_text(yaml.safe_dump(spec))
    return path


def counted(texts: Path) -> Counter[str]:
    expected: Counter[str] = Counter()
    for path in texts.rglob("*.txt"):
        expected.update(re.findall(r"[^\W_]+", path.read_text(encoding="utf-8").lower()))
    return expected


def ranked(counts: Counter[str]) -> list[list[Any]]:
    return [[w, n] for w, n in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))]


def assert_exact(result: Path, expected: Counter[str]) -> dict[str, Any]:
    final = json.loads(result.read_text())
    assert final["final"] is True and final["items"] == FILES and final["done"] == FILES and final["failed"] == []
    assert final["aggregate"]["words"] == dict(expected)  # exact: nothing lost, nothing folded twice
    assert final["aggregate"]["files"] == FILES and final["aggregate"]["tokens"] == expected.total()
    assert final["top"]["words"] == ranked(expected)[:20]
    return final


def test_word_count_equals_counter(tmp_path: Path) -> None:
    texts = generate("generate.py", tmp_path / "texts", files=FILES)
    assert len(list(texts.rglob("*.txt"))) == FILES and [p for p in texts.rglob("*.txt") if p.stat().st_size == 0]
    run = start_run(tmp_path, EXAMPLE / "pipeline.yaml", texts)
    _, stderr = run.communicate(timeout=300)
    assert run.returncode == 0, stderr[-3000:]
    expected = counted(texts)
    assert len(expected) > 1000 and {"straße", "λόγος", "東京", "snake", "case", "2026"} <= expected.keys()
    result = tmp_path / "out" / "wordcount.json"
    assert_exact(result, expected)

    printed = subprocess.run([sys.executable, str(EXAMPLE / "top.py"), str(result)], capture_output=True, text=True,
                             check=True).stdout
    lines = [line.split() for line in printed.splitlines() if re.match(r"\s*\d+\. ", line)]
    assert [[word, int(n)] for _, word, n in lines] == ranked(expected)[:20]
    plain = json.loads((tmp_path / "out" / "words.json").read_text())
    assert plain == dict(expected) and list(plain.items())[:20] == [tuple(x) for x in ranked(expected)[:20]]


def test_word_count_exact_with_a_map_worker_killed_mid_run(tmp_path: Path) -> None:
    texts = generate("generate.py", tmp_path / "texts", files=FILES)
    run = start_run(tmp_path, fast_reclaim(tmp_path, "pipeline.yaml"), texts, {"WORDCOUNT_DELAY_MS": "15"})
    result = tmp_path / "out" / "wordcount.json"
    killed = kill_worker_mid_batch(run, tmp_path, "wordcount", "map-0", "files.0")
    final_at_kill = result.exists() and json.loads(result.read_text())["final"]
    running = None
    while run.poll() is None and running is None:  # the running aggregate, before the map is through
        if result.exists() and not (snapshot := json.loads(result.read_text()))["final"]:
            running = snapshot
        time.sleep(0.05)
    _, stderr = run.communicate(timeout=300)
    assert run.returncode == 0, stderr[-3000:]
    assert killed and not final_at_kill, "the map worker finished before it could be killed mid-batch"
    assert "role.restart" in stderr and "worker-map-0" in stderr  # the runner saw it die and started another

    expected = counted(texts)
    assert_exact(result, expected)
    assert running is not None, "no running aggregate was written before the batch completed"
    assert 0 < running["done"] < FILES and running["items"] is None
    partial = running["aggregate"]["words"]
    assert partial and all(n <= expected[w] for w, n in partial.items())  # a part of the final count, no more
    assert running["aggregate"]["tokens"] == sum(partial.values()) < expected.total()


def digits(text: str) -> bool:
    return text.isascii() and text.isdigit()


def log_reference(logs: Path) -> dict[str, Any]:
    """The report computed plainly, splitting at the quotes rather than with the worker's regular expression."""
    status: Counter[str] = Counter()
    paths: Counter[str] = Counter()
    sent = malformed = 0
    for path in logs.glob("*.log"):
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
                elif line.strip():
                    malformed += 1
    return {"status": dict(status), "paths": dict(paths), "bytes": sent, "malformed": malformed}


def test_log_report_equals_a_plain_computation(tmp_path: Path) -> None:
    logs = generate("generate_logs.py", tmp_path / "logs", files=30)
    run = start_run(tmp_path, EXAMPLE / "logs.yaml", logs)
    _, stderr = run.communicate(timeout=300)
    assert run.returncode == 0, stderr[-3000:]
    expected = log_reference(logs)
    report = json.loads((tmp_path / "out" / "logreport.json").read_text())
    assert report["final"] is True and report["aggregate"] == {**expected, "files": 30}
    assert report["top"]["paths"] == ranked(Counter(expected["paths"]))[:10]
    assert expected["malformed"] >= 10 and expected["status"]["404"] > 0 and "/search" in expected["paths"]
