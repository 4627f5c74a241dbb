"""One bad record must not stop the batch: a file whose name is not UTF-8 (Latin-1 `café.txt`) and one whose name
holds a newline, among 20 ordinary files. `batchmesh run` processes the 20, reports the 2 it skipped in its summary
and in manifest.json, and exits 1 (items not processed) — well before its --timeout."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

from runs import ROOT

SPEC = """\
apiVersion: batchmesh/v1
kind: Pipeline
name: skipped
source: {type: directory, path: ./in}
stages:
  echo: {work: {input: source, worker: echo}}
"""


def test_unservable_names_are_skipped_reported_and_the_rest_flows(tmp_path: Path) -> None:
    data = tmp_path / "in"
    data.mkdir()
    for i in range(20):
        (data / f"f{i:02d}.txt").write_text(f"file {i}\n")
    with open(os.fsencode(data) + b"/caf\xe9.txt", "wb") as f:  # Latin-1 bytes: not a UTF-8 name
        f.write(b"latin-1\n")
    (data / "two\nlines.txt").write_text("newline\n")
    spec = tmp_path / "pipeline.yaml"
    spec.write_text(SPEC)
    env = {**os.environ, "BATCHMESH_DATA_DIR": str(tmp_path / "st")}
    env.pop("REDIS_URL", None)
    began = time.monotonic()
    run = subprocess.run([sys.executable, "-m", "services.cli", "run", str(spec), "--input", str(data),
                          "--out", str(tmp_path / "out"), "--quiet", "--timeout", "60"],
                         cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert time.monotonic() - began < 50, "the run waited for its timeout"
    assert run.returncode == 1, run.stderr
    assert "Traceback" not in run.stderr
    assert "2 source record(s) skipped" in run.stderr
    assert "caf\\xe9.txt" in run.stderr and "two\\nlines.txt" in run.stderr  # named exactly, escaped
    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert sorted(manifest["results"]) == [f"f{i:02d}.txt" for i in range(20)]
    skipped = manifest["source_skipped"]
    assert skipped["count"] == 2
    assert {(r["record"], r["reason"]) for r in skipped["records"]} == {
        ("caf\\xe9.txt", "bad-name"), ("two\\nlines.txt", "bad-name")}
