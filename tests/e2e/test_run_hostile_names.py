"""Hostile item names and contents through a real `batchmesh run`: the directory source, a stream-executor stage
running a command, then a process-executor stage (a subprocess per item). Names hold shell metacharacters whose
expansion would create a canary file (`$(touch …)`, backticks, `;`, `|`, `&&`), quotes, spaces, a leading dash,
unicode, a 1,000-character nested path; contents hold the same. Symlinks lead out of the input root (a file and a
directory). Nothing may reach a shell (no canary appears), nothing is written outside the out dir and the run's
data dir, the symlinks are not served (logged, with the reason), the names over 1,024 characters and with a
newline are skipped and reported, and every other item finishes with its name intact."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from runs import ROOT

CANARY = "bm-canary-hostile"
WORKER = """\
import json, os, pathlib, sys
item = json.loads(pathlib.Path(os.environ["WORK_ITEM_FILE"]).read_text())
name = item["data"].get("name") or item["data"].get("seen")
out = pathlib.Path(os.environ["WORK_OUTPUT_DIR"])
(out / "copy.txt").write_text(name)
print(json.dumps({"seen": name, "argv": sys.argv[1:]}))
"""
SPEC = """\
apiVersion: batchmesh/v1
kind: Pipeline
name: hostile
source: {type: directory, path: ./in, glob: "**/*"}
stages:
  first:  {work: {input: source, command: [python, WORKER], executor: stream}}
  second: {work: {input: first, command: [python, WORKER, "--stage", "second"], executor: process}}
"""
HOSTILE = [
    f"$(touch {CANARY}-1).txt", f"`touch {CANARY}-2`.txt", f"a; touch {CANARY}-3", f"b | touch {CANARY}-4",
    f"c && touch {CANARY}-5", "quote's \"double\".txt", "-rf", "--help", "  spaced  ", "ünï cødé ☃.txt",
    "${HOME}", "*", "?", "~root", "%2e%2e%2fetc", "back\\slash.txt",
]


def long_nested(total: int) -> str:
    """A relative path of about `total` characters, in segments the filesystem accepts (<= 255 bytes each)."""
    parts, size = [], 0
    while size < total:
        parts.append(f"d{len(parts):02d}" + "x" * 196)
        size += 200
    return "/".join(parts)[:total].rstrip("/") + ".txt"


def files_under(path: Path) -> set[Path]:
    return {p for p in path.rglob("*")} if path.exists() else set()


@pytest.fixture
def hostile_root(tmp_path: Path) -> tuple[Path, list[str]]:
    root = tmp_path / "in"
    root.mkdir()
    served = [n for n in HOSTILE if "\\" not in n]  # a backslash name is refused (not a canonical name)
    for name in HOSTILE:
        (root / name).write_text(f"$(touch {CANARY}-content) `touch {CANARY}-content2`; rm -rf ~\n")
    ok_long = long_nested(1000)
    (root / ok_long).parent.mkdir(parents=True)
    (root / ok_long).write_text("long")
    served.append(ok_long)
    too_long = long_nested(3900)  # ~4 KB: with the root, just under PATH_MAX (4096)
    (root / too_long).parent.mkdir(parents=True)
    (root / too_long).write_text("too long")
    (root / "new\nline.txt").write_text("newline")
    secret = tmp_path / "secret.txt"
    secret.write_text("outside the root")
    (root / "escape.txt").symlink_to(secret)
    (root / "dotdot.txt").symlink_to("../secret.txt")
    (root / "etc").symlink_to("/etc")  # a symlinked directory is never descended
    (root / "dangling.txt").symlink_to(tmp_path / "nothing-here")
    return root, served


def test_hostile_names_never_reach_a_shell_nor_leave_the_root(tmp_path: Path, hostile_root: tuple[Path, list[str]]
                                                              ) -> None:
    root, served = hostile_root
    worker = tmp_path / "worker.py"
    worker.write_text(WORKER)
    spec = tmp_path / "pipeline.yaml"
    spec.write_text(SPEC.replace("WORKER", str(worker)))
    work = tmp_path / "cwd"  # the run's working directory: a canary of a relative `touch` would land here
    work.mkdir()
    before = files_under(tmp_path)
    env = {**os.environ, "BATCHMESH_DATA_DIR": str(tmp_path / "st"), "BATCHMESH_LOG_JSON": "true",
           "PYTHONPATH": str(ROOT)}
    env.pop("REDIS_URL", None)
    began = time.monotonic()
    run = subprocess.run([sys.executable, "-m", "services.cli", "run", str(spec), "--input", str(root),
                          "--out", str(tmp_path / "out"), "--quiet", "--timeout", "90"],
                         cwd=work, env=env, capture_output=True, text=True, timeout=150)
    assert time.monotonic() - began < 80, "the run waited for its timeout"
    assert "Traceback" not in run.stderr, run.stderr
    assert run.returncode == 1, run.stderr  # 1: the two unservable names were skipped (reported below)
    assert "3 source record(s) skipped" in run.stderr, run.stderr  # too long, a newline, a backslash

    # no shell ever ran: no canary anywhere
    for place in (tmp_path, ROOT, Path("/tmp"), Path.home()):
        assert not list(place.glob(f"{CANARY}*")), f"a canary fired in {place}"
    assert not list(tmp_path.rglob(f"{CANARY}*"))

    # nothing written outside the out dir and the run's own data dir
    new = files_under(tmp_path) - before
    stray = [p for p in new if not (p.is_relative_to(tmp_path / "out") or p.is_relative_to(tmp_path / "st"))]
    assert stray == []
    assert (tmp_path / "secret.txt").read_text() == "outside the root"

    # every servable name finished, exactly, through both stages; argv is the spec's, never item data
    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert sorted(manifest["results"]) == sorted(served)
    for name, result in manifest["results"].items():
        assert result["seen"] == name and result["argv"] == ["--stage", "second"], (name, result)
    outputs = [p for p in (tmp_path / "out").rglob("copy.txt")]
    assert sorted({p.read_text() for p in outputs}) == sorted(served)
    assert all(p.resolve().is_relative_to((tmp_path / "out").resolve()) for p in outputs)

    # the symlinks out of the root were not served, and the source said why
    logs = "\n".join(p.read_text(errors="replace") for p in (tmp_path / "st").rglob("*.log"))
    for link in ("escape.txt", "dotdot.txt", "dangling.txt"):
        assert link not in manifest["results"]
        assert any(link in line and "symlink" in line for line in logs.splitlines()), f"no log line for {link}"
    assert not any(name.startswith("etc/") for name in manifest["results"])


@settings(max_examples=300, deadline=None, derandomize=True)
@given(st.text(min_size=1, max_size=1024) | st.sampled_from(HOSTILE + ["..", ".", "../../etc/passwd", "/abs",
                                                                        "a/../../b", "\0", "x\0y", "\n"]))
def test_output_and_container_names_derived_from_any_id_stay_one_safe_component(item_id: str) -> None:
    """The rule behind the e2e run, for any id: an item's output directory (results, workers, process and docker
    executors) is one path component inside the out dir, and its container name is a docker-safe hash."""
    from services.core import Delivery, WorkItem
    from services.manager.executors.docker import container_name

    item = WorkItem(id=item_id)
    out = Path("/srv/out")
    assert "/" not in item.dirname and "\0" not in item.dirname and item.dirname not in ("", ".", "..")
    assert (out / item.dirname).resolve().parent == out
    name = container_name("p", "s", Delivery(b"1-0", item, 1, item.encode()[b"item"]))
    assert re.fullmatch(r"[a-zA-Z0-9][a-zA-Z0-9_.-]*", name)
