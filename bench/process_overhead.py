"""(b) The `process` executor's cost per item against a bare fork+exec of the same command.

Ours: n items of a stage whose command is `/bin/true`, concurrency 1, are dispatched first (not timed); the clock
runs from starting the manager's `ProcessExecutor` (base.StageContext, real settings, a sink stage) until the
pipeline's progress counts all n done. That includes everything the executor does per item: read-ahead,
the private WORK_ITEM_FILE, WORK_OUTPUT_DIR, stdout/stderr pipes, its own session, the result and the batched
commit. Baselines, in the same process: `subprocess.run(["/bin/true"])` n times (the ratio's denominator), and
`os.posix_spawn` + `waitpid` n times (the floor, for information)."""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

import redis

from services.core import Keys, Progress, Settings
from services.core.spec import Pipeline
from services.manager.diff import Dispatcher
from services.manager.executors import StageContext, executor_class, stage_settings

from .common import drop_pipeline, minimal_item, pages, pipeline_name, wait_done

COMMAND = ["/bin/true"]
MIN_ITEM_S = 0.0002  # no fork+exec is faster here: polls for the end get rarer the further away it is
STAGE = "work"


def measure_process_executor(url: str, n: int, command: list[str] = COMMAND) -> dict[str, Any]:
    """Seconds per item of `command` run by the process executor, concurrency 1."""
    name = pipeline_name("bproc")
    client = redis.Redis.from_url(url)
    keys = Keys(name)
    pipeline = Pipeline.model_validate({
        "apiVersion": "batchmesh/v1", "name": name, "source": {"type": "directory", "path": "."},
        "stages": {STAGE: {"work": {"input": "source", "command": command, "executor": "process",
                                    "concurrency": 1}}},
    })
    out = Path(tempfile.mkdtemp(prefix="bench-proc-"))
    settings = stage_settings(pipeline, STAGE, Settings(redis_url=url, pipeline=name, out_dir=out))
    executor = None
    try:
        client.xgroup_create(keys.stream("source"), STAGE, id="0", mkstream=True)  # as Manager.ensure_groups
        dispatcher = Dispatcher(client, keys, Progress(client, keys), batch="b")
        for page in pages(n, minimal_item):
            dispatcher.dispatch(page)
        executor = executor_class("process")(StageContext(client, pipeline, STAGE, settings))
        started = time.perf_counter()
        executor.start()
        wait_done(client, name, n, timeout=60 + n * 0.05, item_s=MIN_ITEM_S, alive=lambda: executor.alive)
        seconds = time.perf_counter() - started
    finally:
        if executor is not None:
            executor.stop(timeout=30)
        drop_pipeline(client, name)
        client.close()
        shutil.rmtree(out, ignore_errors=True)
    return {"per_item_s": seconds / n, "seconds": seconds, "n": n}


def measure_subprocess_run(n: int, command: list[str] = COMMAND) -> dict[str, Any]:
    """The baseline: the standard library's way to run a command, n times in a row."""
    started = time.perf_counter()
    for _ in range(n):
        subprocess.run(command, check=True)
    seconds = time.perf_counter() - started
    return {"per_item_s": seconds / n, "seconds": seconds, "n": n}


def measure_posix_spawn(n: int, command: list[str] = COMMAND) -> dict[str, Any]:
    """The floor: posix_spawn (vfork + exec in libc) and waitpid, no pipes, no Python-level bookkeeping."""
    env = dict(os.environ)
    started = time.perf_counter()
    for _ in range(n):
        pid = os.posix_spawn(command[0], command, env)
        _, status = os.waitpid(pid, 0)
        if os.waitstatus_to_exitcode(status) != 0:
            raise RuntimeError(f"{command} failed with status {status}")
    seconds = time.perf_counter() - started
    return {"per_item_s": seconds / n, "seconds": seconds, "n": n}
