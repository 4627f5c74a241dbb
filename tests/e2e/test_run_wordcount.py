"""The MapReduce word count end to end (`batchmesh run`, every role a process): the reduce's result equals
`collections.Counter` over the same tokenisation exactly — also with a map worker SIGKILLed mid-run — and the
running aggregate is in the result file before the map ends. The log-processing variant equals a plain Python
computation over the same logs."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import yaml
from runs import ROOT, kill_worker_mid_batch, start_run

EXAMPLE = ROOT / "examples" / "wordcount"


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


def test_word_count_equals_counter_with_a_map_worker_killed_mid_run(tmp_path: Path) -> None:
    texts = generate("generate.py", tmp_path / "texts", files=320)
    run = start_run(tmp_path, fast_reclaim(tmp_path, "pipeline.yaml"), texts, {"WORDCOUNT_DELAY_MS": "15"})
    result = tmp_path / "out" / "wordcount.json"
    killed = kill_worker_mid_batch(run, tmp_path, "wordcount", "map-0", "files.0")
    running = None
    while run.poll() is None and running is None:  # the running aggregate, before the map is through
        if result.exists() and not (snapshot := json.loads(result.read_text()))["final"]:
            running = snapshot
        time.sleep(0.05)
    _, stderr = run.communicate(timeout=300)
    assert run.returncode == 0, stderr[-3000:]
    assert killed, "the map worker finished before it could be killed mid-batch"
    assert running is not None and 0 < running["done"] < 320 and running["aggregate"]["words"]

    expected = Counter()
    for path in texts.rglob("*.txt"):
        expected.update(re.findall(r"[^\W_]+", path.read_text(encoding="utf-8").lower()))
    final = json.loads(result.read_text())
    assert final["final"] is True and final["items"] == 320 and final["failed"] == []
    assert final["aggregate"]["words"] == dict(expected)  # exact: nothing lost, nothing folded twice
    assert final["aggregate"]["files"] == 320 and final["aggregate"]["tokens"] == sum(expected.values())
    assert final["top"]["words"] == [[w, n] for w, n in sorted(expected.items(), key=lambda kv: (-kv[1], kv[0]))[:20]]
    printed = subprocess.run([sys.executable, str(EXAMPLE / "top.py"), str(result)], capture_output=True, text=True,
                             check=True).stdout
    assert f"1. {final['top']['words'][0][0]}" in printed


def test_log_report_equals_a_plain_computation(tmp_path: Path) -> None:
    logs = generate("generate_logs.py", tmp_path / "logs", files=30)
    run = start_run(tmp_path, EXAMPLE / "logs.yaml", logs)
    _, stderr = run.communicate(timeout=300)
    assert run.returncode == 0, stderr[-3000:]
    line = re.compile(r'^\S+ \S+ \S+ \[[^\]]+\] "[A-Z]+ (\S+) [^"]*" (\d{3}) (\d+|-)')
    status, paths, sent, malformed = Counter(), Counter(), 0, 0
    for path in logs.glob("*.log"):
        for text in path.read_text(encoding="utf-8").splitlines():
            if m := line.match(text):
                status[m[2]] += 1
                paths[m[1].split("?")[0]] += 1
                sent += int(m[3]) if m[3] != "-" else 0
            elif text.strip():
                malformed += 1
    report = json.loads((tmp_path / "out" / "logreport.json").read_text())["aggregate"]
    assert report == {"status": dict(sorted(status.items())), "paths": dict(sorted(paths.items())), "bytes": sent,
                      "malformed": malformed, "files": 30}
    assert malformed > 0 and status["404"] > 0
