"""A filter that drops every item says so at the end of the run (the `!data.secret` trap: JMESPath reads it as
`(!data).secret`, null for every item), after `validate`-style warnings at the start; names in the summary
tables are shown exactly (`star*[x].txt`: rich markup escaped)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from runs import ROOT

SPEC = """\
apiVersion: batchmesh/v1
name: dropped-all
source: {path: ./in}
defaults: {max_deliveries: 1}
stages:
  secret: {filter: {input: source, where: "!data.secret"}}
  fails: {work: {input: source, command: [python, -c, "import sys; sys.exit(3)"]}}
  kept: {work: {input: secret, worker: echo}}
"""


def test_a_filter_that_dropped_everything_is_reported(tmp_path: Path) -> None:
    data = tmp_path / "in"
    data.mkdir()
    for i in range(4):
        (data / f"star*[x]{i}.txt").write_text("x")
    spec = tmp_path / "pipeline.yaml"
    spec.write_text(SPEC)
    env = {**os.environ, "BATCHMESH_DATA_DIR": str(tmp_path / "st")}
    env.pop("REDIS_URL", None)
    done = subprocess.run([sys.executable, "-m", "services.cli", "run", str(spec), "--input", str(data), "--out",
                           str(tmp_path / "out"), "--quiet", "--timeout", "60"], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 1, done.stderr  # the failing stage's items were dead-lettered
    err = " ".join(done.stderr.split())  # rich wraps long lines
    assert "warning: stages.secret.filter.where: `!data.secret` is not a boolean on 4 of 4" in err
    assert "filter 'secret' dropped every item (4 of 4)" in err
    for i in range(4):
        assert f"star*[x]{i}.txt" in done.stderr  # the dead-letter table names them exactly
