"""The local supervisor's restart rule (services/runner/supervisor.py), with real processes: a crashing role is
restarted after a backoff that grows, is never given up while its stage keeps committing (a worker dying on
poison items), and is given up after `give_up_after` crashes in a row with nothing committed in between (a role
that cannot start: bad config), with a line naming its exit code and last log line; a role SIGKILLed from outside
never is."""

from __future__ import annotations

import sys
import time
from pathlib import Path

import pytest

from services.runner.supervisor import Supervisor, progress_of

pytestmark = pytest.mark.one_backend

CRASH = [sys.executable, "-c", "import sys; print('cannot start: missing setting X', flush=True); sys.exit(5)"]


def _watch(sup: Supervisor, progress: object, seconds: float, give_up_after: int = 4,
           starts_enough: int = 0) -> tuple[list[str], list[float]]:
    """Call restart_dead like the runner does (every 50 ms) for `seconds`, until a role is given up (or, with
    `starts_enough`, the role has been started that many times); returns the roles given up and the (re)start
    times."""
    starts, seen, gave_up = [time.monotonic()], sup.roles["w"].process, []
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline and not gave_up and not (starts_enough and len(starts) >= starts_enough):
        current = progress() if callable(progress) else progress
        gave_up = sup.restart_dead(current, give_up_after=give_up_after)
        if sup.roles["w"].process is not seen:
            seen = sup.roles["w"].process
            starts.append(time.monotonic())
        time.sleep(0.05)
    return gave_up, starts


def test_a_role_crashing_at_start_is_given_up_after_n_crashes_without_progress(tmp_path: Path) -> None:
    sup = Supervisor({}, tmp_path / "logs")
    sup.start_argv("w", CRASH, labels={"role": "worker", "stage": "w"})
    try:
        gave_up, starts = _watch(sup, {"w": 7, "": 7}, 30)
        assert gave_up == ["w"], "crashing with no progress must end in giving up, not a loop"
        assert len(starts) == 4, f"{len(starts)} starts: given up at the 4th crash in a row"
        waits = [b - a for a, b in zip(starts, starts[1:], strict=False)]
        assert waits[-1] > waits[0], f"the restart backoff grows: {waits}"
        line = sup.describe_given_up(gave_up)
        assert "exited with code 5, 4 times in a row" in line and "missing setting X" in line, line
    finally:
        sup.stop_all(grace_s=1)


def test_a_role_crashing_while_its_stage_commits_is_never_given_up(tmp_path: Path) -> None:
    sup = Supervisor({}, tmp_path / "logs")
    sup.start_argv("w", CRASH, labels={"role": "worker", "stage": "w"})
    committed = iter(range(1_000_000))
    try:
        # until 4 starts (3 crashes past give_up_after=2), however slowly a loaded machine starts Python
        gave_up, starts = _watch(sup, lambda: {"w": next(committed), "": 0}, 60, give_up_after=2, starts_enough=4)
        assert gave_up == [], "a stage that commits between crashes (poison items) is restarted, not given up"
        assert len(starts) >= 4, starts
        gave_up, _ = _watch(sup, {"w": -1, "": 0}, 30, give_up_after=2)
        assert gave_up == ["w"], "once nothing is committed any more it is given up"
    finally:
        sup.stop_all(grace_s=1)


def test_unknown_progress_never_counts_towards_giving_up(tmp_path: Path) -> None:
    sup = Supervisor({}, tmp_path / "logs")
    sup.start_argv("w", CRASH, labels={"role": "worker", "stage": "w"})
    try:
        # Redis unreachable: nothing to judge by (watched until 3 starts: 2 crashes, as many as give_up_after)
        gave_up, starts = _watch(sup, None, 60, give_up_after=2, starts_enough=3)
        assert gave_up == [] and len(starts) >= 3, starts
    finally:
        sup.stop_all(grace_s=1)


def test_a_role_sigkilled_from_outside_is_never_given_up(tmp_path: Path) -> None:
    """Killed (SIGKILL) every time before it commits anything (the handed chaos case's five kills of a starting
    router): not a role that cannot start, so it keeps coming back with its backoff."""
    sup = Supervisor({}, tmp_path / "logs")
    sup.start_argv("w", [sys.executable, "-c", "import os, signal; os.kill(os.getpid(), signal.SIGKILL)"],
                   labels={"role": "worker", "stage": "w"})
    try:
        gave_up, starts = _watch(sup, {"w": 7, "": 7}, 60, give_up_after=2, starts_enough=4)
        assert gave_up == [] and len(starts) >= 4, starts
        assert sup.roles["w"].last_code == -9
    finally:
        sup.stop_all(grace_s=1)


def test_progress_of_a_status_snapshot() -> None:
    snap = {"stages": {"a": {"out": 2, "failed": 1, "dead": 1}, "r": {"out": 3, "filtered": 4}},
            "counts": {"done": 5, "dead": 1}}
    assert progress_of(snap) == {"a": 4, "r": 7, "": 17}


def test_the_runner_gives_up_only_above_every_stage_s_max_deliveries() -> None:
    from services.core.spec import Pipeline
    from services.runner.run import give_up_after

    def pipeline(stage_cap: int | None) -> Pipeline:
        work = {"input": "source", "command": ["true"], **({"max_deliveries": stage_cap} if stage_cap else {})}
        return Pipeline.model_validate({"apiVersion": "batchmesh/v1", "name": "g", "source": {"path": "."},
                                        "stages": {"w": {"work": work}}})

    assert give_up_after(pipeline(None)) == 5, "max(5, 3 + 2)"
    assert give_up_after(pipeline(10)) == 12, "a poison item may crash its worker 10 times before its dead letter"
