"""What every executor shares: the stage it runs (StageContext) and one small base class (`Executor`).

An executor decides how a work stage's items get run: by long-lived worker replicas (stream), by the manager
itself, one subprocess per item (process), or as rq jobs (rq). The manager starts one per work stage."""

from __future__ import annotations

import logging
import sys
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

from redis import Redis

from services.core import Settings
from services.core.health import RoleHealth
from services.core.reconnect import TRANSIENT, Reconnect, is_nogroup
from services.core.spec import Pipeline, WorkSpec

log = logging.getLogger(__name__)


def stage_settings(pipeline: Pipeline, stage: str, settings: Settings) -> Settings:
    """Settings for one stage: its own max_deliveries, else the spec's defaults where the spec sets them."""
    work, defaults = pipeline.stages[stage].body, pipeline.defaults
    update: dict[str, Any] = {"pipeline": pipeline.name}
    if work.max_deliveries is not None:
        update["max_deliveries"] = work.max_deliveries
    elif "max_deliveries" in defaults.model_fields_set:
        update["max_deliveries"] = defaults.max_deliveries
    if "visibility_timeout" in defaults.model_fields_set:
        update["visibility_timeout_ms"] = max(1, int(defaults.visibility_timeout * 1000))
    return settings.model_copy(update=update)


def rq_queue_name(pipeline: str, stage: str) -> str:
    return f"batchmesh-{pipeline}-{stage}"


@dataclass
class StageContext:
    client: Redis
    pipeline: Pipeline
    stage: str
    settings: Settings  # already tuned for this stage (see stage_settings)
    pipeline_path: Path | None = None  # needed by stages whose items run `services.workers.once`

    @property
    def work(self) -> WorkSpec:
        return self.pipeline.stages[self.stage].body

    @property
    def output(self) -> str | None:
        """The stream results go to (named after the stage), or None when the stage is a sink."""
        return self.stage if self.pipeline.readers(self.stage) else None

    @property
    def out_dir(self) -> Path:
        """Root of this stage's WORK_OUTPUT_DIRs (absolute: rq workers may run elsewhere)."""
        return (self.settings.out_dir / self.stage).resolve()

    def command(self) -> tuple[list[str], dict[str, str]]:
        """argv and extra env for one item: a single-command stage runs its command directly (nothing between the
        fork and the user's program); chains and in-process workers run the one-shot worker runtime."""
        work = self.work
        if work.command:
            return list(work.command), dict(work.env)
        if self.pipeline_path is None:
            raise ValueError(f"stage {self.stage!r} runs a worker chain or an in-process worker: its executor "
                             "needs the pipeline file (pipeline_path) to run services.workers.once")
        argv = [sys.executable, "-m", "services.workers.once", "--pipeline", str(self.pipeline_path.resolve()),
                "--stage", self.stage]
        return argv, dict(work.env)


class Executor:
    """Runs one work stage. Subclasses set `name` and override `run` (a loop that returns once `stopping` is set);
    `observe` gets the stage's status snapshot on every manager tick (for gauges)."""

    name: ClassVar[str] = ""

    def __init__(self, ctx: StageContext) -> None:
        self.ctx = ctx
        self.stopping = threading.Event()
        self._thread: threading.Thread | None = None
        self.error: BaseException | None = None

    @property
    def labels(self) -> dict[str, str]:
        return {"pipeline": self.ctx.pipeline.name, "stage": self.ctx.stage}

    def start(self) -> None:
        self._thread = threading.Thread(target=self._main, name=f"bm-{self.name}-{self.ctx.stage}", daemon=True)
        self._thread.start()
        log.info("executor started", extra={"event": "executor.start", "executor": self.name, **self.labels})

    def _main(self) -> None:
        """`run`, again after every Redis outage (or vanished group): what it held uncommitted is still pending
        and is reclaimed after the visibility timeout, so starting over loses and duplicates nothing."""
        health = RoleHealth(self.ctx.pipeline.name, "manager", self.ctx.stage).started()
        reconnect = Reconnect(self.ctx.client, health, self.stopping)
        try:
            while True:
                try:
                    self.run()
                    return
                except TRANSIENT as exc:
                    if not reconnect.recover(exc):
                        return
                except Exception as exc:
                    if not is_nogroup(exc):
                        raise
                    log.warning("consumer group vanished; starting over", extra={
                        "event": "stage.nogroup", "executor": self.name, **self.labels})
        except BaseException as exc:  # surfaced by `alive`, so the manager can exit instead of hanging
            self.error = exc
            log.exception("executor crashed", extra={"event": "executor.crash", "executor": self.name,
                                                     **self.labels})
        finally:
            health.stopped()

    def run(self) -> None:
        """The executor's loop; the default has nothing to run."""

    @property
    def alive(self) -> bool:
        return self.error is None

    def stop(self, timeout: float | None = None) -> None:
        self.stopping.set()
        if self._thread is not None:
            self._thread.join(timeout)
        log.info("executor stopped", extra={"event": "executor.stop", "executor": self.name, **self.labels})

    def observe(self, stage_status: dict[str, Any]) -> None:
        """Called with this stage's entry of `status()` on every manager tick."""
