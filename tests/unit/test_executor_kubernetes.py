"""The `kubernetes` executor (one Job per item) against a FAKE API server (test_executor_kubernetes_api.FakeCluster,
the real `kubernetes` client above it) and a real Redis: create, adopt on restart, completion with the result,
failure -> retry -> dead letter with the pod's log tail, timeout, at most `concurrency` Jobs in flight, cleanup
after the commit. Not against a live cluster: none can run here."""

from __future__ import annotations

import json
import re
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
import yaml
from test_executor_kubernetes_api import FakeCluster, Run, api_client

from services.core import Keys, Progress, Settings, StreamConsumer, list_dead_letters
from services.core.results import results
from services.core.spec import load_pipeline
from services.manager.diff import Dispatcher
from services.manager.executors import StageContext, executor_class, stage_settings
from services.manager.executors.kubernetes import KubernetesExecutor
from services.manager.executors.kubernetes_job import PREFIX, job_name
from services.manager.executors.kubernetes_outcome import parse_result

NS = "batchmesh"


def write_spec(path: Path, name: str, work: dict[str, Any]) -> Path:
    kube = {"image": "example.com/worker:1", "poll": 0.05, **work.pop("kubernetes", {})}
    spec = {"apiVersion": "batchmesh/v1", "kind": "Pipeline", "name": name,
            "source": {"type": "jsonl", "path": "items.jsonl"},
            "stages": {"w": {"work": {"input": "source", "executor": "kubernetes", "timeout": "30s",
                                      "kubernetes": kube, **work}}}}
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return path


def dispatch(client: redis.Redis, name: str, items: dict[str, dict[str, Any]]) -> None:
    keys = Keys(name)
    Dispatcher(client, keys, Progress(client, keys), batch="b").dispatch(
        [{"name": k, "version": "v1", **v} for k, v in items.items()])


def counts(client: redis.Redis, name: str) -> dict[str, int]:
    return Progress(client, Keys(name)).counts()


def wait_for(check: Callable[[], bool], timeout: float = 60.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} not met in {timeout:g}s")
        time.sleep(0.02)


def item_of(files: dict[str, str]) -> dict[str, Any]:
    """What the worker reads from WORK_ITEM_FILE (the fake kubelet mounts the ConfigMap)."""
    return json.loads(files["item.json"])


@pytest.fixture
def started() -> Iterator[list[KubernetesExecutor]]:
    executors: list[KubernetesExecutor] = []
    yield executors
    for executor in executors:
        executor.stop(10)


@pytest.fixture
def make(client: redis.Redis, settings: Settings, tmp_path: Path, pipeline_name: str,
         started: list[KubernetesExecutor]) -> Callable[..., KubernetesExecutor]:
    def build(cluster: FakeCluster, work: dict[str, Any] | None = None) -> KubernetesExecutor:
        path = tmp_path / "pipeline.yaml"
        if not path.exists() or work is not None:
            write_spec(path, pipeline_name, dict(work or {"command": ["python", "work.py"]}))
        pipeline = load_pipeline(path)
        ctx = StageContext(client, pipeline, "w", stage_settings(pipeline, "w", settings), path)
        executor = executor_class("kubernetes")(ctx, api_client=api_client(cluster))  # type: ignore[call-arg]
        assert isinstance(executor, KubernetesExecutor)
        started.append(executor)
        return executor
    return build


def echo(job: dict[str, Any], attempt: int, files: dict[str, str]) -> Run:
    item = item_of(files)
    return Run("ok", f"working on {item['id']}\n" + json.dumps({"id": item["id"], "n": item["data"]["n"]}))


# -- create, complete, clean up ------------------------------------------------------------------------------

def test_one_job_per_item_result_from_the_log_and_cleanup(client: redis.Redis, pipeline_name: str,
                                                         make: Callable[..., KubernetesExecutor]) -> None:
    cluster = FakeCluster(echo)
    executor = make(cluster)
    executor.start()
    dispatch(client, pipeline_name, {"a": {"n": 1}, "b/c d": {"n": 2}})
    wait_for(lambda: counts(client, pipeline_name)["done"] == 2, what="2 done")
    assert results(client, Keys(pipeline_name)) == {"a": {"id": "a", "n": 1}, "b/c d": {"id": "b/c d", "n": 2}}
    jobs = [d for d in cluster.sent if d["kind"] == "Job"]
    assert cluster.creates == {"jobs": 2, "configmaps": 2}
    names = {d["metadata"]["annotations"][f"{PREFIX}/item"]: d["metadata"]["name"] for d in jobs}
    assert set(names) == {"a", "b/c d"}
    for item_id, name in names.items():
        assert re.fullmatch(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?", name) and len(name) <= 63 and name.startswith("bm-w-")
        job = next(d for d in jobs if d["metadata"]["name"] == name)
        assert job["spec"]["suspend"] is True  # resumed once its ConfigMap exists
        assert (name, {"spec": {"suspend": False}}) in cluster.patches
        assert job["spec"]["backoffLimit"] == 2  # max_deliveries 3
        assert job["spec"]["template"]["spec"]["activeDeadlineSeconds"] == 30
        assert job["spec"]["activeDeadlineSeconds"] == 3 * (30 + 300) + 10 + 20
        assert job["spec"]["ttlSecondsAfterFinished"] == 86400
        pod = job["spec"]["template"]["spec"]
        assert pod["restartPolicy"] == "Never" and pod["automountServiceAccountToken"] is False
        (container,) = pod["containers"]
        assert container["command"] == ["python", "work.py"] and container["image"] == "example.com/worker:1"
        sc = container["securityContext"]
        assert sc["runAsNonRoot"] and sc["readOnlyRootFilesystem"] and not sc["allowPrivilegeEscalation"]
        assert sc["capabilities"] == {"drop": ["ALL"]} and sc["seccompProfile"] == {"type": "RuntimeDefault"}
        env = {e["name"]: e["value"] for e in container["env"]}
        assert env == {"WORK_ITEM_FILE": "/batchmesh/item/item.json", "WORK_OUTPUT_DIR": "/batchmesh/out"}
        mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
        assert mounts == {"/tmp": "tmp", "/batchmesh/item": "item", "/batchmesh/out": "out-0"}
        volumes = {v["name"]: v for v in pod["volumes"]}
        assert "emptyDir" in volumes["tmp"] and "emptyDir" in volumes["out-0"]
        assert volumes["item"]["configMap"]["name"] == name
        cm = next(d for d in cluster.sent if d["kind"] == "ConfigMap" and d["metadata"]["name"] == name)
        (owner,) = cm["metadata"]["ownerReferences"]
        assert owner["kind"] == "Job" and owner["name"] == name and owner["uid"].startswith("uid-")
        assert json.loads(cm["data"]["item.json"])["id"] == item_id
    # deleted after the commit, pods and ConfigMaps with them (Background propagation)
    wait_for(lambda: not cluster.store, what="every Job deleted")
    assert sorted(cluster.deleted) == sorted((n, "Background") for n in names.values())


def test_the_job_name_is_the_items_id_and_version() -> None:
    from services.core.item import WorkItem

    a = job_name("p", "w", WorkItem(id="x", version="1"))
    assert a == job_name("p", "w", WorkItem(id="x", version="1", attempts=2))  # every delivery of that version
    assert a != job_name("p", "w", WorkItem(id="x", version="2")) != job_name("q", "w", WorkItem(id="x", version="1"))
    long = job_name("p", "s" * 50, WorkItem(id="x" * 1000))
    assert len(long) <= 63 and long.startswith("bm-sss") and not long.endswith("-")


def test_the_result_rule() -> None:
    assert parse_result('starting\n{"a": 1}\nwarning: done\n') == {"a": 1}  # the last JSON object line
    assert parse_result('{"a": 1}\n{"b": 2}') == {"b": 2}
    assert parse_result("[1, 2]") == {"result": [1, 2]}
    assert parse_result("plain text") == {"stdout": "plain text"}
    assert parse_result("") == {}


# -- a restarted manager never doubles a Job -----------------------------------------------------------------

def test_a_restarted_manager_adopts_the_running_job(client: redis.Redis, pipeline_name: str,
                                                   make: Callable[..., KubernetesExecutor]) -> None:
    state = {"done": False}

    def script(job: dict[str, Any], attempt: int, files: dict[str, str]) -> Run:
        return echo(job, attempt, files) if state["done"] else Run("hang")

    cluster = FakeCluster(script)
    first = make(cluster)
    first.start()
    dispatch(client, pipeline_name, {"long": {"n": 7}})
    wait_for(lambda: any(p["status"]["phase"] == "Running" for p in cluster.pods()), what="a running pod")
    first.stop(10)  # the manager goes away while the Job runs: the entry stays pending, the Job stays
    assert counts(client, pipeline_name)["done"] == 0 and len(cluster.jobs()) == 1
    (name,) = [j["metadata"]["name"] for j in cluster.jobs()]
    # a crash between a Job's create and its ConfigMap: the entry read (pending), a suspended Job, no ConfigMap
    dispatch(client, pipeline_name, {"half": {"n": 8}})
    crashed = StreamConsumer(client, first.ctx.settings, stage="w", input_stream="source", consumer="crashed")
    (delivery,) = crashed.read(count=10)
    # a leftover whose entry is no longer pending (committed; the deletion was lost): swept at start
    ghost = first.builder.job("bm-w-ghost", _item("ghost"), "1-1")
    cluster.request("POST", f"http://x/apis/batch/v1/namespaces/{NS}/jobs", body=ghost, _request_timeout=5)
    half = job_name(pipeline_name, "w", _item("half"))
    cluster.request("POST", f"http://x/apis/batch/v1/namespaces/{NS}/jobs", _request_timeout=5,
                    body=first.builder.job(half, _item("half"), delivery.entry_id.decode()))

    stale = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": half, "ownerReferences": [
        {"apiVersion": "batch/v1", "kind": "Job", "name": half, "uid": "uid-of-an-older-job"}]}, "data": {}}
    cluster.request("POST", f"http://x/api/v1/namespaces/{NS}/configmaps", body=stale, _request_timeout=5)

    state["done"] = True
    second = make(cluster)  # a new manager over the same stream and cluster
    second.start()
    wait_for(lambda: counts(client, pipeline_name)["done"] == 2, what="2 done")
    second.stop(10)
    assert results(client, Keys(pipeline_name)) == {"long": {"id": "long", "n": 7}, "half": {"id": "half", "n": 8}}
    assert cluster.creates["jobs"] == 3  # long (by the first manager), ghost and half: the second made none
    assert cluster.calls.count(("POST", f"/apis/batch/v1/namespaces/{NS}/jobs")) == 5  # 2 of them refused: 409
    assert ("bm-w-ghost", "Background") in cluster.deleted
    pods = [d for d in cluster.sent if d["kind"] == "Pod"]
    assert pods == []  # the executor never makes pods; the Job controller does
    assert len(cluster.logs) == 2  # one pod each ran: long's (adopted while it ran) and half's
    # long's, the stale one, and half's: the second manager replaced the stale one (immutable: delete, create)
    assert cluster.creates["configmaps"] == 3 and (half, None) in cluster.deleted
    owners = [d["metadata"]["ownerReferences"][0]["uid"] for d in cluster.sent
              if d["kind"] == "ConfigMap" and d["metadata"]["name"] == half]
    assert owners[0] == "uid-of-an-older-job" and owners[-1].startswith("uid-") and owners[-1] != owners[0]
    assert name in [n for n, _ in cluster.deleted]


def _item(item_id: str) -> Any:
    from services.core.item import WorkItem

    return WorkItem(id=item_id, data={"n": 8}, version="v1", batch="b")


# -- failure, retry, dead letter, timeout ----------------------------------------------------------------------

TRACE = "Traceback (most recent call last):\n  File \"work.py\", line 3\nValueError: cannot frobnicate"


def test_failures_retry_in_the_job_then_dead_letter_with_the_log_tail(
        client: redis.Redis, pipeline_name: str, make: Callable[..., KubernetesExecutor]) -> None:
    def script(job: dict[str, Any], attempt: int, files: dict[str, str]) -> Run:
        kind = item_of(files)["data"]["kind"]
        if kind == "flaky":
            return Run("fail", "transient glitch") if attempt == 1 else echo(job, attempt, files)
        if kind == "oom":
            return Run("oom", "allocating")
        return Run("fail", TRACE, exit_code=3)

    cluster = FakeCluster(script)
    executor = make(cluster)
    executor.start()
    dispatch(client, pipeline_name, {"flaky": {"kind": "flaky", "n": 1}, "poison": {"kind": "poison"},
                                     "hog": {"kind": "oom"}})
    wait_for(lambda: counts(client, pipeline_name)["done"] == 1 and counts(client, pipeline_name)["dead"] == 2,
             what="1 done, 2 dead")
    assert results(client, Keys(pipeline_name)) == {"flaky": {"id": "flaky", "n": 1}}
    letters = {d.item_id: d for d in list_dead_letters(client, Keys(pipeline_name), "w")}
    poison = letters["poison"].reason
    assert poison.startswith("failed 3 of 3 attempts (Job bm-w-"), poison
    assert "BackoffLimitExceeded" in poison and "exit code 3 in container a0-main" in poison
    assert poison.endswith("ValueError: cannot frobnicate")  # the failed pod's log tail
    assert "OOM killed in container a0-main (memory limit 1Gi)" in letters["hog"].reason
    assert len(cluster.pods()) == 0  # deleted with their Jobs
    assert cluster.creates["jobs"] == 3  # Kubernetes retried inside each Job: no second Job for an item


def test_an_api_error_is_a_failed_attempt_retried_by_the_stream(
        client: redis.Redis, pipeline_name: str, make: Callable[..., KubernetesExecutor],
        monkeypatch: pytest.MonkeyPatch) -> None:
    cluster = FakeCluster(echo)
    real = cluster._create
    refused = []

    def flaky_create(kind: str, ns: str, body: dict[str, Any]) -> Any:
        if kind == "jobs" and not refused:
            refused.append(body["metadata"]["name"])
            from test_executor_kubernetes_api import _status

            return _status(500, "InternalError", "etcdserver: request timed out")
        return real(kind, ns, body)

    cluster._create = flaky_create  # type: ignore[method-assign]
    reasons: list[str] = []
    real_commit = KubernetesExecutor.commit

    def commit(self: KubernetesExecutor, batch: Any) -> None:
        reasons.extend(reason for _, reason in batch.retries)
        real_commit(self, batch)

    monkeypatch.setattr(KubernetesExecutor, "commit", commit)
    executor = make(cluster)
    executor.start()
    dispatch(client, pipeline_name, {"a": {"n": 1}})
    wait_for(lambda: counts(client, pipeline_name)["done"] == 1, what="done after a retry")
    assert refused and results(client, Keys(pipeline_name)) == {"a": {"id": "a", "n": 1}}
    assert client.hgetall(Keys(pipeline_name).stage_stats("w")) == {b"out": b"1", b"failed": b"1"}
    assert reasons == [f"Kubernetes API 500 Error for Job {refused[0]}: etcdserver: request timed out"]


def test_a_flaky_api_server_costs_no_attempt(client: redis.Redis, pipeline_name: str,
                                             make: Callable[..., KubernetesExecutor]) -> None:
    cluster = FakeCluster(echo)
    executor = make(cluster)
    name = job_name(pipeline_name, "w", _item("a"))
    cluster.faults = [("GET", f"/jobs/{name}", 503), ("GET", f"/jobs/{name}", 500), ("GET", "/log", 503),
                      ("GET", "/pods", 502)]
    executor.start()
    dispatch(client, pipeline_name, {"a": {"n": 1}})
    wait_for(lambda: counts(client, pipeline_name)["done"] == 1, what="done")
    assert cluster.faults == [] and results(client, Keys(pipeline_name)) == {"a": {"id": "a", "n": 1}}
    assert client.hgetall(Keys(pipeline_name).stage_stats("w")) == {b"out": b"1"}  # no failed attempt
    assert cluster.creates["jobs"] == 1


def test_timeouts_are_dead_lettered_naming_the_timeout(
        client: redis.Redis, pipeline_name: str, make: Callable[..., KubernetesExecutor]) -> None:
    def script(job: dict[str, Any], attempt: int, files: dict[str, str]) -> Run:
        return Run(item_of(files)["data"]["kind"], "still sleeping")

    cluster = FakeCluster(script)
    executor = make(cluster, {"command": ["sleep", "1000"], "timeout": "5s", "max_deliveries": 2})
    executor.start()
    dispatch(client, pipeline_name, {"job": {"kind": "job-deadline"}, "pod": {"kind": "pod-deadline"}})
    wait_for(lambda: counts(client, pipeline_name)["dead"] == 2, what="2 dead")
    letters = {d.item_id: d.reason for d in list_dead_letters(client, Keys(pipeline_name), "w")}
    assert letters["job"].startswith("timeout: Job bm-w-"), letters["job"]
    assert "activeDeadlineSeconds (620s" in letters["job"] and letters["job"].endswith("still sleeping")
    assert letters["pod"].startswith("failed 2 of 2 attempts"), letters["pod"]
    assert "timeout after 5s (the pod's activeDeadlineSeconds)" in letters["pod"]


# -- concurrency and polling -----------------------------------------------------------------------------------

def test_at_most_concurrency_jobs_and_bounded_polling(client: redis.Redis, pipeline_name: str,
                                                     make: Callable[..., KubernetesExecutor]) -> None:
    state = {"go": False}
    most = [0]

    def script(job: dict[str, Any], attempt: int, files: dict[str, str]) -> Run:
        running = [j for j in cluster.jobs() if not j["status"].get("conditions")]  # finished ones await deletion
        most[0] = max(most[0], len(running))
        return echo(job, attempt, files) if state["go"] else Run("hang")

    cluster = FakeCluster(script)
    executor = make(cluster, {"command": ["python", "work.py"], "concurrency": 2, "kubernetes": {"poll": 0.2}})
    executor.start()
    dispatch(client, pipeline_name, {f"i{k}": {"n": k} for k in range(5)})
    wait_for(lambda: len(cluster.jobs()) == 2, what="2 Jobs")
    before, began = len(cluster.calls), time.monotonic()

    def reads() -> list[Any]:
        return [c for c in cluster.calls[before:] if c[0] == "GET" and "/jobs/" in c[1]]

    wait_for(lambda: len(reads()) >= 2, what="the Jobs polled")  # event-based: a loaded machine polls late
    time.sleep(max(0.0, 1.0 - (time.monotonic() - began)))  # at least a second of polling to count
    seen, elapsed = reads(), time.monotonic() - began
    assert len(cluster.jobs()) == 2  # the other 3 wait for a slot
    # polled, never more often than ~every 0.1-0.2 s per Job (12 a second each) over the time it ran
    assert len(seen) <= 2 * 12 * elapsed, (len(seen), elapsed)
    state["go"] = True
    wait_for(lambda: counts(client, pipeline_name)["done"] == 5, what="5 done")
    assert most[0] <= 2


# -- start-up errors name the cause ----------------------------------------------------------------------------

def test_no_cluster_or_no_rbac_is_a_clear_error_at_start(client: redis.Redis, settings: Settings, tmp_path: Path,
                                                         pipeline_name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    path = write_spec(tmp_path / "p.yaml", pipeline_name, {"command": ["python", "work.py"]})
    pipeline = load_pipeline(path)
    ctx = StageContext(client, pipeline, "w", stage_settings(pipeline, "w", settings), path)
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    monkeypatch.setenv("KUBECONFIG", str(tmp_path / "no-such-kubeconfig"))
    with pytest.raises(RuntimeError, match="finds no cluster"):
        KubernetesExecutor(ctx)
    cluster = FakeCluster(echo)
    cluster.faults = [("GET", f"/namespaces/{NS}/jobs", 403)]
    with pytest.raises(RuntimeError, match="cannot list Jobs in namespace 'batchmesh' \\(403 .*needs the Role"):
        KubernetesExecutor(ctx, api_client=api_client(cluster))
