"""The worker command contract: item in a private WORK_ITEM_FILE, result from stdout JSON or result.json, exit code
decides, a timeout kills the whole process group, and item data never meets a shell."""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

from services.core import WorkItem
from services.core.command import run_command


def worker(tmp_path: Path, body: str) -> list[str]:
    script = tmp_path / "worker.py"
    script.write_text("import json, os, subprocess, sys, time\n" + body)
    return [sys.executable, str(script)]


def run(tmp_path: Path, body: str, item: WorkItem | None = None, timeout: float = 30):
    return run_command(worker(tmp_path, body), item or WorkItem(id="a", data={"n": 1}), tmp_path / "out",
                       timeout=timeout)


def test_result_from_stdout_json(tmp_path: Path) -> None:
    outcome = run(tmp_path, "item = json.load(open(os.environ['WORK_ITEM_FILE']))\n"
                            "print(json.dumps({'double': item['data']['n'] * 2, 'id': item['id']}))\n")
    assert outcome.ok and outcome.result == {"double": 2, "id": "a"}


def test_result_json_wins_over_stdout(tmp_path: Path) -> None:
    outcome = run(tmp_path, "print('progress: 50%')\n"
                            "out = os.path.join(os.environ['WORK_OUTPUT_DIR'], 'result.json')\n"
                            "open(out, 'w').write('{\"f\": 1}')\n")
    assert outcome.ok and outcome.result == {"f": 1}


def test_non_json_stdout_is_kept_as_text(tmp_path: Path) -> None:
    outcome = run(tmp_path, "print('hello world')\n")
    assert outcome.ok and outcome.result == {"stdout": "hello world"}


def test_a_stale_result_json_of_an_earlier_attempt_does_not_count(tmp_path: Path) -> None:
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "result.json").write_text('{"stale": true}')
    assert run(tmp_path, "print('{\"fresh\": true}')\n").result == {"fresh": True}


def test_a_non_zero_exit_fails_with_the_stderr_tail(tmp_path: Path) -> None:
    outcome = run(tmp_path, "sys.stderr.write('x' * 5000 + 'the real error')\nsys.exit(3)\n")
    assert not outcome.ok
    assert outcome.reason.startswith("exit code 3: ") and outcome.reason.endswith("the real error")
    assert len(outcome.reason) < 2100, "only the tail"


def test_a_missing_program_fails_cleanly(tmp_path: Path) -> None:
    outcome = run_command([str(tmp_path / "nope")], WorkItem(id="a"), tmp_path / "out", timeout=5)
    assert not outcome.ok and "cannot start" in outcome.reason


def _gone(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return True
    return state in ("Z", "X")  # a zombie is dead, waiting for its (new) parent to reap it


def test_a_timeout_kills_the_whole_process_group(tmp_path: Path) -> None:
    pids = tmp_path / "pids"
    started = time.monotonic()
    outcome = run(tmp_path, f"g = subprocess.Popen(['sleep', '60'])\n"
                            f"open({str(pids)!r}, 'w').write(f'{{os.getpid()}} {{g.pid}}')\n"
                            "time.sleep(60)\n", timeout=3)  # time to start and write the pids, even when loaded
    assert not outcome.ok and "timed out" in outcome.reason
    assert time.monotonic() - started < 10
    child, grandchild = map(int, pids.read_text().split())
    deadline = time.monotonic() + 5
    while not (_gone(child) and _gone(grandchild)) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert _gone(child) and _gone(grandchild)


def test_item_data_never_meets_a_shell(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    nasty = {"a": f"$(touch {marker})", "b": f"; touch {marker}; rm -rf {tmp_path}/out", "c": f"`touch {marker}`",
             "d": f"' && touch {marker} && '"}
    item = WorkItem(id=f"x; touch {marker}", data=nasty)
    outcome = run(tmp_path, "print(open(os.environ['WORK_ITEM_FILE']).read())\n", item=item)
    assert outcome.ok and outcome.result is not None
    assert outcome.result["data"] == nasty and outcome.result["id"] == item.id
    assert not marker.exists()


def test_the_item_file_is_private_and_removed_after(tmp_path: Path) -> None:
    outcome = run(tmp_path, "p = os.environ['WORK_ITEM_FILE']\n"
                            "print(json.dumps({'path': p, 'file': os.stat(p).st_mode & 0o777,"
                            " 'dir': os.stat(os.path.dirname(p)).st_mode & 0o777}))\n")
    assert outcome.ok and outcome.result is not None
    assert outcome.result["file"] & 0o077 == 0 or outcome.result["dir"] & 0o077 == 0, "nobody else can read it"
    assert not os.path.exists(outcome.result["path"])


def test_the_worker_gets_its_output_dir_and_env(tmp_path: Path) -> None:
    argv = worker(tmp_path, "print(json.dumps({'out': os.environ['WORK_OUTPUT_DIR'], 'x': os.environ['X']}))\n")
    outcome = run_command(argv, WorkItem(id="a"), tmp_path / "out", timeout=30, env={"X": "1"})
    assert outcome.result == {"out": str(tmp_path / "out"), "x": "1"}
    assert json.loads(json.dumps(outcome.result))  # plain JSON
