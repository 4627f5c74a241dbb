"""Reading a finished Job's outcome for the `kubernetes` executor (see kubernetes.py): its result from the succeeded
pod's log, or the dead-letter reason from the failed pod's status and log tail. The rules:

- the result is the **last line of the last container's log that is a JSON object** (the worker contract's stdout;
  the log interleaves stderr, so a worker logging JSON objects to stderr after its result would be misread); no
  such line: the whole log as JSON (a non-object value becomes {"result": value}), else {"stdout": its tail}, as
  core.command.read_result treats stdout; an empty log is {}. $WORK_OUTPUT_DIR/result.json is not read: the
  emptyDir goes with the pod;
- a failure names the Job's reason (BackoffLimitExceeded: how many attempts; DeadlineExceeded: "timeout" and the
  deadline), the last failed pod's failing container (the first with a non-zero exit, init containers first) and
  its exit code or OOM kill, or "timeout" for a pod killed at its own activeDeadlineSeconds, and ends with that
  container's log tail (LOG_LINES lines, at most STDERR_TAIL characters).

Pods are found by the `batch.kubernetes.io/job-name` label (`job-name` on clusters before 1.27) and kept only when
owned by the Job's uid (never a same-named earlier Job's)."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from services.core.command import STDERR_TAIL, Outcome

from .kubernetes_job import JobBuilder

TRANSIENT_STATUS = {429, 500, 502, 503, 504}
LOG_LINES = 200  # of a pod's log: fetched for the result (the last JSON object line) and for a failure's reason


@dataclass(frozen=True)
class JobOutcome(Outcome):
    final: bool = False  # every delivery is used up (the Job's own retries): dead-letter, do not retry
    abandoned: bool = False  # the manager stops while the Job runs: leave the entry pending, the Job to adopt


def parse_result(text: str) -> dict[str, Any]:
    """The result in a pod's log: the last line that is a JSON object; else the whole log as JSON (a non-object
    value becomes {"result": value}); else {"stdout": its tail}; an empty log is {}."""
    for line in reversed(text.splitlines()):
        line = line.strip()
        if line.startswith("{"):
            try:
                value = json.loads(line)
            except ValueError:
                continue
            if isinstance(value, dict):
                return value
    if not text.strip():
        return {}
    try:
        value = json.loads(text)
    except ValueError:
        return {"stdout": text.strip()[-STDERR_TAIL:]}
    return value if isinstance(value, dict) else {"result": value}


class OutcomeReader:
    """Reads outcomes through a CoreV1Api. `limits`: (max_deliveries, the Job's deadline in s, start_timeout in s),
    for the reasons' wording."""

    def __init__(self, core: Any, namespace: str, builder: JobBuilder, timeout: Any,
                 limits: tuple[int, int, float]) -> None:
        from kubernetes.client.exceptions import ApiException

        self.core, self.namespace, self.builder, self.timeout = core, namespace, builder, timeout
        self.max_deliveries, self.deadline_s, self.start_timeout = limits
        self.ApiException = ApiException

    def _pods(self, name: str, uid: str) -> list[Any]:
        """The Job's pods, oldest first."""
        found: list[Any] = []
        for label in ("batch.kubernetes.io/job-name", "job-name"):
            pods = self._call(self.core.list_namespaced_pod, self.namespace, label_selector=f"{label}={name}").items
            found = [p for p in pods if any(ref.uid == uid for ref in p.metadata.owner_references or [])]
            if found:
                break
        return sorted(found, key=lambda p: p.metadata.creation_timestamp or datetime.min.replace(tzinfo=UTC))

    def _call(self, method: Any, *args: Any, **kwargs: Any) -> Any:
        """`method`, again (up to 3 times in all, 0.5 then 1 s apart) on a 429/5xx or a broken connection."""
        import urllib3

        for attempt in range(3):
            try:
                return method(*args, **kwargs, _request_timeout=self.timeout)
            except (self.ApiException, OSError, urllib3.exceptions.HTTPError) as exc:
                status = getattr(exc, "status", None)
                if attempt == 2 or (isinstance(exc, self.ApiException) and status not in TRANSIENT_STATUS):
                    raise
                time.sleep(0.5 * 2**attempt)
        raise AssertionError("unreachable")

    def _log(self, pod: str, container: str, *, required: bool = False) -> str:
        """The container's last LOG_LINES lines. `required` (the result): an unreadable log raises (the attempt
        fails and is retried), else it is described instead."""
        try:
            return str(self._call(self.core.read_namespaced_pod_log, pod, self.namespace, container=container,
                                  tail_lines=LOG_LINES) or "")
        except self.ApiException as exc:
            if required:
                raise
            return f"(no log: {exc.status} {exc.reason})"

    def result(self, name: str, job: Any) -> Outcome:
        succeeded = [p for p in self._pods(name, job.metadata.uid) if p.status and p.status.phase == "Succeeded"]
        if not succeeded:
            return JobOutcome(False, reason=f"Job {name} completed but its pod is gone: its result (the pod's log) "
                                            "cannot be read")
        return JobOutcome(True, result=parse_result(self._log(succeeded[-1].metadata.name,
                                                              self.builder.main_container, required=True)))

    def failure(self, name: str, job: Any, cond: Any) -> str:
        failed = [p for p in self._pods(name, job.metadata.uid) if p.status and p.status.phase == "Failed"]
        attempts = job.status.failed or len(failed)
        what, tail = "", ""
        if failed:
            what, tail = self._pod_failure(failed[-1])
        if cond.reason == "DeadlineExceeded":
            head = (f"timeout: Job {name} ran past its activeDeadlineSeconds ({self.deadline_s}s: "
                    f"{self.max_deliveries} attempt(s) of {self.builder.attempt_s}s plus "
                    f"{self.start_timeout:g}s each to start, and the backoffs)")
        elif cond.reason == "BackoffLimitExceeded":
            head = f"failed {attempts} of {self.max_deliveries} attempts (Job {name}, BackoffLimitExceeded)"
        else:
            head = f"Job {name} failed ({cond.reason}: {cond.message or ''})"
        return "; ".join(x for x in (head, what) if x) + (f": {tail}" if tail else "")

    def _pod_failure(self, pod: Any) -> tuple[str, str]:
        """What ended one failed pod, and the log tail of its failing container."""
        status = pod.status
        if status.reason == "DeadlineExceeded":
            what = f"the last attempt: timeout after {self.builder.attempt_s}s (the pod's activeDeadlineSeconds)"
        else:
            what = ""
        statuses = [*(status.init_container_statuses or []), *(status.container_statuses or [])]
        for st in statuses:
            term = (st.state.terminated if st.state else None) or (st.last_state.terminated if st.last_state
                                                                  else None)
            if term is None or not term.exit_code:
                continue
            if term.reason == "OOMKilled":
                limit = ((self.builder.resources().get("limits") or {}).get("memory")) or "?"
                what = what or f"OOM killed in container {st.name} (memory limit {limit})"
            else:
                what = what or f"exit code {term.exit_code} in container {st.name}"
            return what, self._log(pod.metadata.name, st.name).strip()[-STDERR_TAIL:]
        return what or f"pod {pod.metadata.name} failed ({status.reason or 'no reason'})", ""
