"""`kubernetes`: the book's manager on Kubernetes — one Job per work item, through the official `kubernetes` client.
Like `docker` (whose loop it shares, from `process`: read-ahead, batched commits, heartbeats of long items, at most
`work.concurrency` items — here Jobs — in flight), but every item runs as a Job in the cluster:

- **The Job** (kubernetes_job: name, labels, the item's ConfigMap at WORK_ITEM_FILE, backoffLimit = max_deliveries
  − 1, activeDeadlineSeconds, ttlSecondsAfterFinished, the restricted securityContext, emptyDirs for
  WORK_OUTPUT_DIR and /tmp, the multi-worker pod for a chain of commands). Created suspended; then the ConfigMap,
  owned by the Job (it needs the Job's uid); then the Job resumed.
- **Never twice.** The Job's name is a hash of the item's id and version: a restarted manager re-reading a pending
  entry gets 409 AlreadyExists on create and *adopts* the Job — watches it if it still runs, takes its outcome if
  it finished (resumes it, making the ConfigMap, if the crash came between the two). A Job left by an entry that is
  no longer pending (a retry of the item, a replay) is deleted and made again. At start, Jobs of this stage whose
  entry is no longer pending (a crash between commit and deletion) are deleted.
- **The outcome** (kubernetes_outcome) from the Job's status conditions, polled (read_namespaced_job) every
  `kubernetes.poll` seconds at most (a tenth of it first, half as long again each time: no busy loop, concurrency /
  poll requests a second at worst). `Complete`: the result is the **last line of the succeeded pod's log (its last
  container) that is a JSON object** — the worker contract's stdout (see kubernetes_outcome for the whole rule;
  $WORK_OUTPUT_DIR/result.json is not read: the emptyDir goes with the pod). `Failed`: Kubernetes already spent
  every delivery (backoffLimit), so the item goes straight to the dead-letter stream, the reason naming the failed
  container, its exit code (or OOM kill) and ending with its log tail; `DeadlineExceeded` (the Job's deadline) or a
  pod killed at its own deadline says "timeout". A Job that cannot be made or vanishes is a failed attempt:
  retried by the stream like any other.
- **Cleanup after the commit**: the Job is deleted (propagation Background: its pods and ConfigMap go with it)
  only once its outcome is committed; until then a crash leaves it for the next manager to adopt.
- On stop, items whose Job still runs are left pending with their Jobs (not failed): the next manager adopts them.

Tested against a recorded/fake API server (tests/unit/test_executor_kubernetes*.py), not a live cluster."""

from __future__ import annotations

import json
import logging
import os
import queue
import threading
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import urllib3
from redis.exceptions import RedisError

from services.core import Commit, Delivery, Keys
from services.core.command import STDERR_TAIL, Outcome
from services.core.spec_kubernetes import StageKubernetes

from .base import StageContext
from .kubernetes_job import PREFIX, JobBuilder, configmap, job_deadline, job_name, owned_by, selector
from .kubernetes_outcome import TRANSIENT_STATUS, JobOutcome, OutcomeReader
from .process import ProcessExecutor

log = logging.getLogger(__name__)

TIMEOUT = (5, 30)  # every API call: connect, read (seconds)
GRACE_S = 120  # the manager gives up on a Job this long after its activeDeadlineSeconds (a stuck controller)
NAMESPACE_FILE = "/var/run/secrets/kubernetes.io/serviceaccount/namespace"
DEFAULT_NAMESPACE = "batchmesh"  # services/core/k8s_objects.py NAMESPACE
CONNECTION_ERRORS = (OSError, urllib3.exceptions.HTTPError)  # urllib3's own (MaxRetryError ...) are no OSErrors


def _api_client(pool: int) -> Any:
    """From the in-cluster service account, else the kubeconfig; `pool` connections (one per Job in flight)."""
    from kubernetes import client, config

    try:
        if os.environ.get("KUBERNETES_SERVICE_HOST"):
            config.load_incluster_config()
        else:
            config.load_kube_config()
    except (config.ConfigException, OSError, TypeError, ValueError) as exc:
        raise RuntimeError(f"executor kubernetes finds no cluster (no in-cluster service account, no usable "
                           f"kubeconfig): {exc}") from None
    configuration = client.Configuration.get_default_copy()
    configuration.connection_pool_maxsize = pool
    return client.ApiClient(configuration)


def _namespace(spec: StageKubernetes) -> str:
    if spec.namespace:
        return spec.namespace
    try:
        return Path(NAMESPACE_FILE).read_text().strip() or DEFAULT_NAMESPACE
    except OSError:
        return DEFAULT_NAMESPACE


def _api_message(exc: Any) -> str:
    """The `message` of the API server's Status reply (its body), not the headers ApiException's str() adds."""
    try:
        return str(json.loads(exc.body or "{}").get("message") or "")[:STDERR_TAIL]
    except (TypeError, ValueError, AttributeError):
        return str(exc.body or "")[:STDERR_TAIL]


def _terminal(job: Any) -> Any:
    for cond in (job.status.conditions if job.status else None) or []:
        if cond.type in ("Complete", "Failed") and cond.status == "True":
            return cond
    return None


class KubernetesExecutor(ProcessExecutor):
    name = "kubernetes"

    def __init__(self, ctx: StageContext, *, api_client: Any = None) -> None:
        from kubernetes import client
        from kubernetes.client.exceptions import ApiException

        spec = ctx.work.kubernetes
        if spec is None:
            raise ValueError(f"stage {ctx.stage!r}: executor kubernetes needs a kubernetes section (its image)")
        self.spec: StageKubernetes = spec
        super().__init__(ctx)  # calls self.command()
        self.ApiException = ApiException
        self.api = api_client if api_client is not None else _api_client(self.slots + 4)
        self.batch, self.core = client.BatchV1Api(self.api), client.CoreV1Api(self.api)
        self.namespace = _namespace(spec)
        self.max_deliveries = ctx.settings.max_deliveries
        self.builder = JobBuilder(ctx.pipeline.name, ctx.stage, ctx.work, spec, max_deliveries=self.max_deliveries,
                                  once_argv=self.argv if self.once else None, spec_path=self.spec_path)
        self.spec_text = ctx.pipeline_path.read_text() if self.builder.needs_spec and ctx.pipeline_path else None
        self.selector = selector(ctx.pipeline.name, ctx.stage)
        self.deadline_s = job_deadline(self.builder.attempt_s, self.max_deliveries, spec.start_timeout)
        self.reader = OutcomeReader(self.core, self.namespace, self.builder, TIMEOUT,
                                    (self.max_deliveries, self.deadline_s, spec.start_timeout))
        self.settled: dict[bytes, str] = {}  # entry -> its finished Job, deleted once the outcome is committed
        self.settled_lock = threading.Lock()
        try:  # fail at start, with the reason, when the cluster or the manager's RBAC is not there
            self.batch.list_namespaced_job(self.namespace, label_selector=self.selector, limit=1,
                                           _request_timeout=TIMEOUT)
        except ApiException as exc:
            raise RuntimeError(f"stage {ctx.stage!r}: executor kubernetes cannot list Jobs in namespace "
                               f"{self.namespace!r} ({exc.status} {exc.reason}): the manager's service account "
                               "needs the Role `batchmesh render k8s` emits (jobs, configmaps, pods, pods/log)"
                               ) from exc
        except CONNECTION_ERRORS as exc:
            raise RuntimeError(f"stage {ctx.stage!r}: executor kubernetes cannot reach the API server at "
                               f"{self.api.configuration.host}: {exc}") from exc

    # -- the stage's command --------------------------------------------------------------------------------

    def command(self) -> tuple[list[str], dict[str, str]]:
        work, ctx = self.ctx.work, self.ctx
        self.once = not work.command and any(ref.command is None for ref in work.adapters)
        self.spec_path = str(ctx.pipeline_path.resolve()) if ctx.pipeline_path else None
        if work.command or not self.once:
            return list(work.command or []), dict(work.env)
        if self.spec_path is None:
            raise ValueError(f"stage {ctx.stage!r} runs in-process workers: the kubernetes executor needs the "
                             "pipeline file (pipeline_path) to run services.workers.once in the Job's image")
        return ["python", "-m", "services.workers.once", "--pipeline", self.spec_path, "--stage", ctx.stage], \
            dict(work.env)

    # -- the loop -------------------------------------------------------------------------------------------

    def run(self) -> None:
        self.removals: queue.SimpleQueue[str | None] = queue.SimpleQueue()
        remover = threading.Thread(target=self._remove_loop, name=f"bm-k8s-rm-{self.ctx.stage}", daemon=True)
        remover.start()
        try:
            self.sweep()
            super().run()
        finally:  # what could not be committed (Redis gone) keeps its Job: the next run adopts it
            self.removals.put(None)
            remover.join()

    def stop(self, timeout: float | None = None) -> None:
        super().stop(timeout)
        if self._thread is None or not self._thread.is_alive():
            self.api.close()

    def _settle(self, commit: Commit, held: dict[bytes, Delivery], done: tuple[Delivery, Outcome, float]) -> None:
        delivery, outcome, seconds = done
        if isinstance(outcome, JobOutcome) and outcome.abandoned:
            held.pop(delivery.entry_id, None)  # stays pending: reclaimed and adopted by the next manager
            return
        if isinstance(outcome, JobOutcome) and outcome.final and not outcome.ok:
            held.pop(delivery.entry_id, None)
            self.processing.observe(seconds)
            commit.dead_letter(delivery, outcome.reason)
            return
        super()._settle(commit, held, done)

    def commit(self, commit: Commit) -> None:
        """Commit, then delete the committed items' Jobs (see the module's docstring)."""
        super().commit(commit)
        entries = [*commit.acks, *(d.entry_id for d, _ in commit.retries), *(d.entry_id for d, _ in commit.dead)]
        with self.settled_lock:
            names = [self.settled.pop(e) for e in entries if e in self.settled]
        for name in names:
            self.removals.put(name)

    def _remove_loop(self) -> None:
        while (name := self.removals.get()) is not None:
            self._delete(name)

    def _delete(self, name: str) -> None:
        try:
            self.batch.delete_namespaced_job(name, self.namespace, propagation_policy="Background",
                                             _request_timeout=TIMEOUT)
        except self.ApiException as exc:
            if exc.status != 404:  # the sweep at the next start deletes it
                log.warning("cannot delete a Job", extra={"event": "k8s.delete_failed", "job": name,
                                                         "reason": f"{exc.status} {exc.reason}", **self.labels})
        except Exception as exc:  # a lost connection: the same
            log.warning("cannot delete a Job", extra={"event": "k8s.delete_failed", "job": name,
                                                     "reason": str(exc)[:300], **self.labels})

    # -- one item -------------------------------------------------------------------------------------------

    def execute(self, delivery: Delivery) -> Outcome:
        item = delivery.item
        assert item is not None
        name = job_name(self.ctx.pipeline.name, self.ctx.stage, item)
        try:
            job = self._create_or_adopt(name, delivery)
            outcome = self._wait(name, job)
        except ValueError as exc:  # the item does not fit a ConfigMap: no attempt can ever succeed
            return JobOutcome(False, reason=str(exc), final=True)
        except self.ApiException as exc:  # a failed attempt (retried by the stream), its reason on one line
            return JobOutcome(False, reason=f"Kubernetes API {exc.status} {exc.reason} for Job {name}: "
                                            f"{_api_message(exc)}")
        except CONNECTION_ERRORS as exc:
            return JobOutcome(False, reason=f"Kubernetes API unreachable for Job {name}: {type(exc).__name__}: "
                                            f"{str(exc)[:STDERR_TAIL]}")
        if not (isinstance(outcome, JobOutcome) and outcome.abandoned):
            with self.settled_lock:
                self.settled[delivery.entry_id] = name
        return outcome

    def _create_or_adopt(self, name: str, delivery: Delivery) -> Any:
        item, entry = delivery.item, delivery.entry_id.decode()
        assert item is not None
        body = self.builder.job(name, item, entry)
        for _ in range(20):
            try:
                job = self.batch.create_namespaced_job(self.namespace, body, _request_timeout=TIMEOUT)
                log.info("job created", extra={"event": "k8s.create", "job": name, "item": item.id, **self.labels})
                break
            except self.ApiException as exc:
                if exc.status != 409:
                    raise
            job = self.batch.read_namespaced_job(name, self.namespace, _request_timeout=TIMEOUT)
            if job.metadata.deletion_timestamp is not None:  # going away: make it anew once it is gone
                time.sleep(0.5)
                continue
            owner = (job.metadata.annotations or {}).get(f"{PREFIX}/entry", "")
            if owner != entry and _terminal(job) is not None and not self._pending(owner):
                log.info("deleting the finished Job of an earlier delivery", extra={
                    "event": "k8s.stale", "job": name, "entry": owner, **self.labels})
                self._delete(name)
                time.sleep(0.2)
                continue
            log.info("adopting the Job of an earlier delivery", extra={"event": "k8s.adopt", "job": name,
                                                                        "item": item.id, **self.labels})
            break
        else:
            raise RuntimeError(f"Job {name} is still being deleted; the item is retried")
        if job.spec.suspend:  # ours, before its ConfigMap was made (or a crash came between the two)
            self._ensure_configmap(name, job.metadata.uid, delivery)
            job = self.batch.patch_namespaced_job(name, self.namespace, {"spec": {"suspend": False}},
                                                  _content_type="application/merge-patch+json",
                                                  _request_timeout=TIMEOUT)
        return job

    def _ensure_configmap(self, name: str, uid: str, delivery: Delivery) -> None:
        assert delivery.item is not None
        body = owned_by(configmap(name, delivery.item, self.builder.labels, self.spec_text), name, uid)
        try:
            self.core.create_namespaced_config_map(self.namespace, body, _request_timeout=TIMEOUT)
        except self.ApiException as exc:
            if exc.status != 409:
                raise
            found = self.core.read_namespaced_config_map(name, self.namespace, _request_timeout=TIMEOUT)
            if [ref.uid for ref in found.metadata.owner_references or []] != [uid]:  # an older Job's, not yet GC'd
                self.core.delete_namespaced_config_map(name, self.namespace, _request_timeout=TIMEOUT)  # immutable
                self.core.create_namespaced_config_map(self.namespace, body, _request_timeout=TIMEOUT)

    def _pending(self, entry: str) -> bool:
        if not entry:
            return False
        stream = Keys(self.ctx.pipeline.name).stream(self.ctx.work.input)
        try:
            return bool(self.ctx.client.xpending_range(stream, self.ctx.stage, min=entry, max=entry, count=1))
        except RedisError:
            return True  # cannot tell: keep it (adopt)

    def _wait(self, name: str, job: Any) -> Outcome:
        created = job.metadata.creation_timestamp
        age = (datetime.now(UTC) - created).total_seconds() if isinstance(created, datetime) else 0.0
        give_up = time.monotonic() + self.deadline_s + GRACE_S - max(age, 0.0)
        interval = self.spec.poll / 10
        while (cond := _terminal(job)) is None:
            if self.stopping.wait(interval):
                return JobOutcome(False, reason="manager stopping", abandoned=True)
            interval = min(interval * 1.5, self.spec.poll)
            try:
                job = self.batch.read_namespaced_job(name, self.namespace, _request_timeout=TIMEOUT)
            except self.ApiException as exc:
                if exc.status == 404:
                    return JobOutcome(False, reason=f"Job {name} was deleted before it finished")
                if exc.status not in TRANSIENT_STATUS:
                    raise
            except CONNECTION_ERRORS as exc:  # the API server restarts, a connection breaks: read again
                log.warning("cannot read a Job", extra={"event": "k8s.read_failed", "job": name,
                                                       "reason": str(exc)[:300], **self.labels})
            if time.monotonic() > give_up:
                self._delete(name)
                return JobOutcome(False, reason=f"timeout: Job {name} has no outcome {GRACE_S}s after its "
                                                f"activeDeadlineSeconds ({self.deadline_s}s); deleted")
        if cond.type == "Complete":
            return self.reader.result(name, job)
        return JobOutcome(False, reason=self.reader.failure(name, job, cond), final=True)

    # -- leftovers ------------------------------------------------------------------------------------------

    def sweep(self) -> None:
        """Delete this stage's Jobs whose stream entry is no longer pending: their outcome was committed and only
        the deletion was lost to a crash. Pending ones stay, to be adopted."""
        jobs = self.batch.list_namespaced_job(self.namespace, label_selector=self.selector,
                                              _request_timeout=TIMEOUT).items
        for job in jobs:
            entry = (job.metadata.annotations or {}).get(f"{PREFIX}/entry", "")
            if entry and not self._pending(entry):
                log.info("deleting a leftover Job", extra={"event": "k8s.leftover", "job": job.metadata.name,
                                                            **self.labels})
                self._delete(job.metadata.name)
