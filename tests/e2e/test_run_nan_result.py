"""A worker result holding NaN / Infinity (handed case "NaN result", issue 11): the next stage's WORK_ITEM_FILE
and `manifest.json` are strict JSON (a Node.js-style strict parser reads them), the values arrive as the strings
"NaN" / "Infinity" / "-Infinity" (core.strict_json's rule), nothing is dead-lettered for it; and a JSONL source
record holding NaN follows the same rule (a string, not null)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from runs import ROOT

STATS = """\
import json, os
item = json.load(open(os.environ["WORK_ITEM_FILE"]))
print(json.dumps({"name": item["name"], "mean": float("nan"), "ratio": float("inf"),
                  "low": [1, float("-inf")], "src": item["data"].get("x", "file")}))
"""
CHECK = """\
import json, os
raw = open(os.environ["WORK_ITEM_FILE"]).read()
def strict(c): raise ValueError(c)
doc = json.loads(raw, parse_constant=strict)  # what JSON.parse accepts: no NaN/Infinity tokens
print(json.dumps({"seen": doc["data"]}))
"""
SPEC = """\
apiVersion: batchmesh/v1
kind: Pipeline
name: nanresult
source: {{type: {type}, path: {path}}}
defaults: {{max_deliveries: 1}}
stages:
  stats: {{work: {{input: source, command: [{py}, {stats}]}}}}
  sink:  {{work: {{input: stats, command: [{py}, {check}]}}}}
"""


def _strict(raw: str) -> dict:
    def refuse(token: str) -> None:
        raise ValueError(f"bare {token} in a file batchmesh wrote")
    return json.loads(raw, parse_constant=refuse)


def _run(tmp: Path, source_type: str, source: Path) -> subprocess.CompletedProcess[str]:
    (tmp / "stats.py").write_text(STATS)
    (tmp / "check.py").write_text(CHECK)
    spec = tmp / "p.yaml"
    spec.write_text(SPEC.format(type=source_type, path=source, py=sys.executable, stats=tmp / "stats.py",
                                check=tmp / "check.py"))
    env = {**os.environ, "BATCHMESH_DATA_DIR": str(tmp / "st")}
    env.pop("REDIS_URL", None)
    return subprocess.run([sys.executable, "-m", "services.cli", "run", str(spec), "--input", str(source),
                           "--out", str(tmp / "out"), "--quiet", "--timeout", "90"], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=150)


def test_nan_result_reaches_the_next_stage_and_the_manifest_as_strict_json(tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.mkdir()
    for i in range(3):
        (data / f"s{i}").write_text("x")
    done = _run(tmp_path, "directory", data)
    assert done.returncode == 0, done.stderr[-3000:]
    manifest = _strict((tmp_path / "out" / "manifest.json").read_text())
    assert manifest["dead_letters"] == []
    assert sorted(manifest["results"]) == ["s0", "s1", "s2"]
    for result in manifest["results"].values():  # what the sink read from its WORK_ITEM_FILE, strictly parsed
        seen = result["seen"]
        assert (seen["mean"], seen["ratio"], seen["low"]) == ("NaN", "Infinity", [1, "-Infinity"])


def test_a_jsonl_record_holding_nan_follows_the_same_rule(tmp_path: Path) -> None:
    source = tmp_path / "items.jsonl"
    source.write_text('{"name": "a", "x": NaN}\n{"name": "b", "x": -Infinity}\n{"name": "c", "x": 1e400}\n')
    done = _run(tmp_path, "jsonl", source)
    assert done.returncode == 0, done.stderr[-3000:]
    manifest = _strict((tmp_path / "out" / "manifest.json").read_text())
    assert manifest["dead_letters"] == []
    assert {k: v["seen"]["src"] for k, v in manifest["results"].items()} == {
        "a": "NaN", "b": "-Infinity", "c": "Infinity"}
