"""Every process an item started ends with it (services/core/lifeline.py, core.command), with real processes: what a
command leaves in its group when it exits, what it started in a session of its own when it times out, and a
role's commands when the runner that started the role is SIGKILLed; item directories of dead processes are swept;
the exec wrapper arms the parent-death signal."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
import uuid
from pathlib import Path

import pytest

from services.core import WorkItem, lifeline
from services.core.command import run_command

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="prctl and /proc: Linux")


def with_marker(marker: str) -> list[int]:
    found = []
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            try:
                if marker.encode() in (proc / "cmdline").read_bytes():
                    found.append(int(proc.name))
            except OSError:
                continue
    return found


def gone(marker: str, within_s: float = 15.0) -> bool:
    deadline = time.monotonic() + within_s
    while with_marker(marker):
        if time.monotonic() > deadline:
            for pid in with_marker(marker):
                os.kill(pid, signal.SIGKILL)
            return False
        time.sleep(0.05)
    return True


def sleeper(marker: str, **popen: str) -> str:
    args = ", ".join(f"{k}={v}" for k, v in popen.items())
    return (f"subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)', {marker!r}]"
            f"{', ' + args if args else ''})")


def test_what_a_command_leaves_in_its_group_ends_when_it_exits(tmp_path: Path) -> None:
    marker = f"bm-left-{uuid.uuid4().hex[:8]}"
    code = f"import subprocess, sys; {sleeper(marker)}; print('{{}}')"  # leaves its child running, pipes and all
    began = time.monotonic()
    outcome = run_command([sys.executable, "-c", code], WorkItem(id="a"), tmp_path / "a", timeout=20)
    assert outcome.ok, outcome.reason
    assert time.monotonic() - began < 10  # not held until the timeout by the child's copy of stdout
    assert gone(marker)


def test_a_timed_out_command_takes_what_left_its_group_with_it(tmp_path: Path) -> None:
    marker, started = f"bm-escaped-{uuid.uuid4().hex[:8]}", tmp_path / "started"
    code = (f"import subprocess, sys, time; {sleeper(marker, start_new_session='True')}; "
            f"open({str(started)!r}, 'w').close(); time.sleep(60)")
    outcome = run_command([sys.executable, "-c", code], WorkItem(id="a"), tmp_path / "a", timeout=3)
    assert not outcome.ok and "timed out" in outcome.reason
    assert started.exists(), "the escaped child was started before the timeout (else the test proves nothing)"
    assert gone(marker)


ROLE = textwrap.dedent('''
    import os, sys, threading
    from pathlib import Path
    from services.core import WorkItem, lifeline
    from services.core.command import run_command
    lifeline.guard()  # as cli.main does
    argv = [sys.executable, "-c", "import time; time.sleep(60)", os.environ["MARKER"]]
    for i in range(2):  # from pool threads, as the executors do
        threading.Thread(target=run_command, args=(argv, WorkItem(id=str(i)), Path(sys.argv[2]) / str(i)),
                         kwargs={"timeout": 60}, daemon=True).start()  # the marker is in no other argv
    threading.Event().wait()
''')


def test_a_role_dies_with_the_runner_and_takes_its_commands(tmp_path: Path) -> None:
    """A stand-in runner starts a role (BATCHMESH_PARENT_PID set, as the supervisor does) and is SIGKILLed: the
    role gets SIGHUP, kills its running commands' groups, removes its item files and exits 129."""
    marker = f"bm-orphan-{uuid.uuid4().hex[:8]}"
    (tmp_path / "t").mkdir()
    (tmp_path / "role.py").write_text(ROLE)
    runner = textwrap.dedent(f'''
        import os, subprocess, sys, time
        env = {{**os.environ, "BATCHMESH_PARENT_PID": str(os.getpid()), "TMPDIR": {str(tmp_path / "t")!r}}}
        role = subprocess.Popen([sys.executable, {str(tmp_path / "role.py")!r}, "-", {str(tmp_path)!r}],
                                env=env, cwd={str(ROOT)!r}, start_new_session=True)
        print(role.pid, flush=True)
        time.sleep(60)
    ''')
    proc = subprocess.Popen([sys.executable, "-c", runner], stdout=subprocess.PIPE, text=True,
                            env={**os.environ, "MARKER": marker})
    try:
        assert proc.stdout is not None
        role = int(proc.stdout.readline())
        deadline = time.monotonic() + 15
        while len(with_marker(marker)) < 2:
            assert time.monotonic() < deadline, "the role's commands did not start"
            time.sleep(0.05)
        assert list((tmp_path / "t").glob("batchmesh-items-*"))
        proc.kill()
        proc.wait()
        assert gone(marker)
        deadline = time.monotonic() + 15
        while lifeline.alive(role) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not lifeline.alive(role)
        assert not list((tmp_path / "t").glob("batchmesh-items-*"))
    finally:
        proc.kill()
        for pid in with_marker(marker):
            os.kill(pid, signal.SIGKILL)


def test_item_dirs_of_dead_processes_are_swept(tmp_path: Path) -> None:
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    stale = tmp_path / f"batchmesh-items-{int(dead.stdout)}-abc"
    mine = tmp_path / f"batchmesh-items-{os.getpid()}-def"
    stale.mkdir()
    (stale / "0.json").write_text("{}")
    mine.mkdir()
    assert lifeline.sweep_dirs(tmp_path, "batchmesh-items-") == [stale]
    assert mine.exists() and not stale.exists()


def test_the_exec_wrapper_arms_the_parent_death_signal() -> None:
    check = "from services.core import lifeline; print(lifeline.pdeathsig())"
    env = {**os.environ, lifeline.PARENT_ENV: str(os.getpid())}
    out = subprocess.run([sys.executable, lifeline.__file__, sys.executable, "-c", check], env=env,
                         cwd=ROOT, capture_output=True, text=True, check=True).stdout
    assert int(out) == signal.SIGHUP
    plain = subprocess.run([sys.executable, "-c", check], cwd=ROOT, capture_output=True, text=True, check=True)
    assert int(plain.stdout) == 0
