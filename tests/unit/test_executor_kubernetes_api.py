"""A FAKE Kubernetes API server for the `kubernetes` executor's unit tests — no live cluster is involved.

It sits where the official client's HTTP layer is (`ApiClient.rest_client.request`), so the executor's calls go
through the real `kubernetes` client: BatchV1Api / CoreV1Api check every method's name and argument types
(pydantic `validate_call`), serialise the bodies (`sanitize_for_serialization`), deserialise the replies into
V1Job / V1Pod / V1ConfigMap models and raise `ApiException` for a non-2xx status (409 AlreadyExists, 404
NotFound …) exactly as against a real server. Behind that: an in-memory store of Jobs, ConfigMaps and pods, the
garbage collector (a Job deleted with propagation Background takes its owned pods and ConfigMaps), and a scripted
Job controller + kubelet (`script(job, attempt, files) -> Run`): a resumed Job whose ConfigMap exists gets one pod
per attempt, each pod ends as its Run says, and the Job's status follows the controller's rules (backoffLimit ->
Failed/BackoffLimitExceeded, activeDeadlineSeconds -> Failed/DeadlineExceeded, success -> Complete).

Every object created or replaced (POST/PUT body) is recorded in `sent`, for the strict schema check; merge
patches in `patches`. This module also
tests the fake itself against the client (the test of the test)."""

from __future__ import annotations

import copy
import itertools
import json
import threading
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any
from urllib.parse import parse_qs, urlparse

import pytest
from kubernetes import client
from kubernetes.client.exceptions import ApiException
from pydantic import ValidationError

ROUTES = {"jobs": "/apis/batch/v1/namespaces/", "configmaps": "/api/v1/namespaces/", "pods": "/api/v1/namespaces/"}
KIND = {"jobs": ("Job", "batch/v1"), "configmaps": ("ConfigMap", "v1"), "pods": ("Pod", "v1")}


@dataclass
class Run:
    """How one pod of a Job ends: ok (exit 0, `log` on the last container), fail (`exit_code` in container
    `container` — an index into init containers + containers, default the last — with `log`), oom, hang (stays
    Running), pod-deadline (killed at the pod's activeDeadlineSeconds), job-deadline (the Job's deadline passes)."""

    kind: str = "ok"
    log: str = ""
    exit_code: int = 1
    container: int = -1


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


class Response:
    """What kubernetes.client.rest.RESTClientObject.request returns (RESTResponse's surface)."""

    def __init__(self, status: int, body: Any, content_type: str = "application/json") -> None:
        self.status = status
        self.reason = {200: "OK", 201: "Created", 404: "Not Found", 409: "Conflict", 422: "Unprocessable Entity",
                       415: "Unsupported Media Type"}.get(status, "Error")
        self.data = body if isinstance(body, bytes) else json.dumps(body).encode()
        self.headers = {"content-type": content_type}

    def read(self) -> bytes:
        return self.data

    def getheaders(self) -> dict[str, str]:
        return self.headers

    def getheader(self, name: str, default: str | None = None) -> str | None:
        return self.headers.get(name, default)


def _status(code: int, reason: str, message: str) -> Response:
    return Response(code, {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
                           "message": message, "reason": reason, "code": code})


class FakeCluster:
    """The fake API server (see the module docstring). `script` decides each pod's fate."""

    def __init__(self, script: Callable[[dict[str, Any], int, dict[str, str]], Run] | None = None) -> None:
        self.script = script or (lambda job, attempt, files: Run("ok", '{"ok": true}'))
        self.store: dict[tuple[str, str, str], dict[str, Any]] = {}
        self.logs: dict[tuple[str, str], str] = {}
        self.sent: list[dict[str, Any]] = []  # every object created or replaced (the strict check validates these)
        self.patches: list[tuple[str, dict[str, Any]]] = []  # (name, merge patch)
        self.calls: list[tuple[str, str]] = []  # (method, path)
        self.deleted: list[tuple[str, str | None]] = []  # (job, propagationPolicy)
        self.creates = {"jobs": 0, "configmaps": 0}  # successful creates
        self.faults: list[tuple[str, str, int]] = []  # (method, path suffix, status): the next match fails so
        self.lock = threading.RLock()
        self._uids = itertools.count(1)

    # -- the client's HTTP layer -----------------------------------------------------------------------------

    def request(self, method: str, url: str, headers: dict[str, str] | None = None, body: Any = None,
                post_params: Any = None, _request_timeout: Any = None) -> Response:
        assert _request_timeout is not None, f"{method} {url}: an API call without a timeout could hang forever"
        parts = urlparse(url)
        query = {k: v[0] for k, v in parse_qs(parts.query).items()}
        with self.lock:
            self.calls.append((method, parts.path))
            for fault in self.faults:
                if fault[0] == method and parts.path.endswith(fault[1]):
                    self.faults.remove(fault)
                    return _status(fault[2], "ServiceUnavailable", "the API server is restarting")
            return self._route(method, parts.path, query, body, headers or {})

    def close(self) -> None:
        pass

    def _route(self, method: str, path: str, query: dict[str, str], body: Any, headers: dict[str, str]) -> Response:
        segments = path.strip("/").split("/")
        # /apis/batch/v1/namespaces/NS/jobs[/NAME] or /api/v1/namespaces/NS/{configmaps,pods}[/NAME[/log]]
        at = segments.index("namespaces")
        ns, kind, rest = segments[at + 1], segments[at + 2], segments[at + 3:]
        assert path.startswith(ROUTES[kind]), path
        if not rest:
            if method == "POST":
                return self._create(kind, ns, body)
            if method == "GET":
                return self._list(kind, ns, query.get("labelSelector", ""))
        name = rest[0]
        key = (kind, ns, name)
        if len(rest) == 2 and rest[1] == "log" and method == "GET":
            if key not in self.store:
                return _status(404, "NotFound", f'pods "{name}" not found')
            text = self.logs.get((name, query.get("container", "")), "")
            if "tailLines" in query:
                text = "\n".join(text.splitlines()[-int(query["tailLines"]):])
            return Response(200, text.encode(), "text/plain")
        if key not in self.store:
            return _status(404, "NotFound", f'{kind} "{name}" not found')
        if method == "GET":
            if kind == "jobs":
                self._advance(self.store[key])
            return Response(200, self.store[key])
        if method == "PATCH":
            assert headers.get("Content-Type") == "application/merge-patch+json", headers
            _merge(self.store[key], body)
            self.patches.append((name, copy.deepcopy(body)))
            return Response(200, self.store[key])
        if method == "PUT":
            obj = copy.deepcopy(body)
            obj["metadata"] |= {k: self.store[key]["metadata"][k] for k in ("uid", "creationTimestamp", "namespace")}
            self.store[key] = obj
            self.sent.append(copy.deepcopy(body))
            return Response(200, obj)
        if method == "DELETE":
            self.deleted.append((name, query.get("propagationPolicy")))
            self._delete(key)
            return Response(200, {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success"})
        raise AssertionError(f"the fake has no {method} {path}")

    def _create(self, kind: str, ns: str, body: dict[str, Any]) -> Response:
        name = body["metadata"]["name"]
        want = KIND[kind]
        assert (body.get("kind"), body.get("apiVersion")) == want, body
        if (kind, ns, name) in self.store:
            return _status(409, "AlreadyExists", f'{kind}.{want[1]} "{name}" already exists')
        self.sent.append(copy.deepcopy(body))
        obj = copy.deepcopy(body)
        obj["metadata"] |= {"namespace": ns, "uid": f"uid-{next(self._uids)}", "creationTimestamp": _now()}
        if kind == "jobs":
            obj["status"] = {}
        self.store[(kind, ns, name)] = obj
        self.creates[kind] = self.creates.get(kind, 0) + 1
        return Response(201, obj)

    def _list(self, kind: str, ns: str, selector: str) -> Response:
        wanted = dict(term.split("=", 1) for term in selector.split(",") if term)
        items = []
        for (k, n, _), obj in self.store.items():
            if k == kind and n == ns and wanted.items() <= (obj["metadata"].get("labels") or {}).items():
                if kind == "jobs":
                    self._advance(obj)
                items.append(obj)
        kind_name, api = KIND[kind]
        return Response(200, {"kind": f"{kind_name}List", "apiVersion": api, "metadata": {}, "items": items})

    def _delete(self, key: tuple[str, str, str]) -> None:
        """Delete an object and, like the garbage collector, everything it owns."""
        uid = self.store.pop(key)["metadata"]["uid"]
        for other, obj in list(self.store.items()):
            if any(ref.get("uid") == uid for ref in obj["metadata"].get("ownerReferences", [])):
                self._delete(other)

    # -- the Job controller and the kubelet ------------------------------------------------------------------

    def jobs(self) -> list[dict[str, Any]]:
        return [o for (k, _, _), o in self.store.items() if k == "jobs"]

    def pods(self, job: str | None = None) -> list[dict[str, Any]]:
        return [o for (k, _, _), o in self.store.items() if k == "pods"
                and (job is None or o["metadata"]["labels"].get("batch.kubernetes.io/job-name") == job)]

    def _advance(self, job: dict[str, Any]) -> None:
        spec, status = job["spec"], job.setdefault("status", {})
        if spec.get("suspend") or any(c["status"] == "True" for c in status.get("conditions", [])):
            return
        ns, name, uid = job["metadata"]["namespace"], job["metadata"]["name"], job["metadata"]["uid"]
        files = self.store.get(("configmaps", ns, name), {}).get("data")
        if files is None:
            return  # the kubelet cannot mount the item: the pod waits in ContainerCreating
        status.setdefault("startTime", _now())
        running = [p for p in self.pods(name) if p["status"]["phase"] == "Running"]
        attempt = int(status.get("failed", 0)) + 1
        run = self.script(job, attempt, dict(files))
        pod = running[0] if running else self._pod(job, ns, name, uid, attempt)
        status["active"] = 1
        if run.kind == "hang":
            return
        status.pop("active", None)
        template = spec["template"]["spec"]
        containers = [*template.get("initContainers", []), *template["containers"]]
        if run.kind == "ok":
            pod["status"] = {"phase": "Succeeded", **self._statuses(template, len(containers), 0, "Completed")}
            self.logs[(pod["metadata"]["name"], containers[-1]["name"])] = run.log
            status["succeeded"] = 1
            self._condition(status, "Complete", None, "")
            return
        where = run.container % len(containers)
        code, reason = (137, "OOMKilled") if run.kind == "oom" else (run.exit_code, "Error")
        if run.kind in ("pod-deadline", "job-deadline"):
            code, reason = 137, "Error"
        pod["status"] = {"phase": "Failed", **self._statuses(template, where + 1, code, reason)}
        if run.kind == "pod-deadline":
            pod["status"]["reason"] = "DeadlineExceeded"
        self.logs[(pod["metadata"]["name"], containers[where]["name"])] = run.log
        status["failed"] = int(status.get("failed", 0)) + 1
        if run.kind == "job-deadline":
            self._condition(status, "Failed", "DeadlineExceeded", "Job was active longer than specified deadline")
        elif status["failed"] > int(spec.get("backoffLimit", 6)):
            self._condition(status, "Failed", "BackoffLimitExceeded", "Job has reached the specified backoff limit")

    def _pod(self, job: dict[str, Any], ns: str, name: str, uid: str, attempt: int) -> dict[str, Any]:
        template = job["spec"]["template"]
        labels = dict(template["metadata"].get("labels", {})) | {
            "batch.kubernetes.io/job-name": name, "job-name": name, "batch.kubernetes.io/controller-uid": uid,
            "controller-uid": uid}
        pod_name = f"{name}-{attempt:05d}"
        pod = {"apiVersion": "v1", "kind": "Pod",
               "metadata": {"name": pod_name, "namespace": ns, "uid": f"uid-{next(self._uids)}", "labels": labels,
                            "creationTimestamp": _now(),
                            "ownerReferences": [{"apiVersion": "batch/v1", "kind": "Job", "name": name, "uid": uid,
                                                 "controller": True, "blockOwnerDeletion": True}]},
               "spec": copy.deepcopy(template["spec"]), "status": {"phase": "Running"}}
        self.store[("pods", ns, pod_name)] = pod
        return pod

    @staticmethod
    def _statuses(template: dict[str, Any], upto: int, code: int, reason: str) -> dict[str, Any]:
        """Container statuses: every container before `upto` exited 0, the one at upto-1 with `code`."""
        init, main = template.get("initContainers", []), template["containers"]
        out: dict[str, list[dict[str, Any]]] = {"initContainerStatuses": [], "containerStatuses": []}
        for i, c in enumerate([*init, *main]):
            if i >= upto:
                state: dict[str, Any] = {"waiting": {"reason": "PodInitializing"}}
            else:
                last = i == upto - 1
                state = {"terminated": {"exitCode": code if last else 0, "reason": reason if last else "Completed"}}
            out["initContainerStatuses" if i < len(init) else "containerStatuses"].append(
                {"name": c["name"], "image": c["image"], "imageID": "", "ready": False, "restartCount": 0,
                 "state": state})
        return {k: v for k, v in out.items() if v}

    @staticmethod
    def _condition(status: dict[str, Any], kind: str, reason: str | None, message: str) -> None:
        cond = {"type": kind, "status": "True", "lastTransitionTime": _now(), "message": message}
        if reason:
            cond["reason"] = reason
        status.setdefault("conditions", []).append(cond)


def _merge(target: dict[str, Any], patch: dict[str, Any]) -> None:
    """RFC 7386 JSON merge patch."""
    for key, value in patch.items():
        if value is None:
            target.pop(key, None)
        elif isinstance(value, dict) and isinstance(target.get(key), dict):
            _merge(target[key], value)
        else:
            target[key] = copy.deepcopy(value)


def api_client(cluster: FakeCluster) -> client.ApiClient:
    """A real ApiClient whose HTTP layer is the fake."""
    api = client.ApiClient(client.Configuration(host="http://fake-apiserver.invalid"))
    api.rest_client = cluster
    return api


# -- the fake behaves as the client expects a server to (tests of the test) --------------------------------------

JOB = {"apiVersion": "batch/v1", "kind": "Job", "metadata": {"name": "j"},
       "spec": {"backoffLimit": 1, "template": {"metadata": {"labels": {"a": "b"}}, "spec": {
           "restartPolicy": "Never", "containers": [{"name": "c", "image": "i"}]}}}}
CM = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "j"}, "data": {"item.json": "{}"}}


def test_the_fake_speaks_the_clients_language() -> None:
    cluster = FakeCluster(lambda job, attempt, files: Run("fail", "boom") if attempt == 1 else Run("ok", '{"n": 1}'))
    batch, core = client.BatchV1Api(api_client(cluster)), client.CoreV1Api(api_client(cluster))
    job = batch.create_namespaced_job("ns", JOB, _request_timeout=(5, 30))
    assert isinstance(job, client.V1Job) and job.metadata.uid
    with pytest.raises(ApiException) as conflict:
        batch.create_namespaced_job("ns", JOB, _request_timeout=(5, 30))
    assert conflict.value.status == 409
    with pytest.raises(ApiException) as missing:
        batch.read_namespaced_job("nope", "ns", _request_timeout=5)
    assert missing.value.status == 404
    assert _condition_of(batch.read_namespaced_job("j", "ns", _request_timeout=5)) is None  # no ConfigMap: waits
    owned = copy.deepcopy(CM)
    owned["metadata"]["ownerReferences"] = [{"apiVersion": "batch/v1", "kind": "Job", "name": "j",
                                             "uid": job.metadata.uid}]
    core.create_namespaced_config_map("ns", owned, _request_timeout=5)
    first = batch.read_namespaced_job("j", "ns", _request_timeout=5)
    assert first.status.failed == 1 and _condition_of(first) is None  # retried: backoffLimit 1
    done = batch.read_namespaced_job("j", "ns", _request_timeout=5)
    assert _condition_of(done) == "Complete"
    pods = core.list_namespaced_pod("ns", label_selector="batch.kubernetes.io/job-name=j", _request_timeout=5).items
    assert [p.status.phase for p in pods] == ["Failed", "Succeeded"]
    assert core.read_namespaced_pod_log(pods[0].metadata.name, "ns", container="c", tail_lines=5,
                                        _request_timeout=5) == "boom"
    with pytest.raises(ValidationError, match="Unexpected keyword"):
        batch.read_namespaced_job("j", "ns", tail_lines=3)  # not an argument of this method: the client refuses
    batch.delete_namespaced_job("j", "ns", propagation_policy="Background", _request_timeout=5)
    assert cluster.store == {}  # the Job, its pods and its ConfigMap (owned by it) are gone
    with pytest.raises(AssertionError, match="timeout"):
        batch.list_namespaced_job("ns")  # the fake insists on a timeout for every call


def _condition_of(job: client.V1Job) -> str | None:
    return next((c.type for c in job.status.conditions or [] if c.status == "True"), None) if job.status else None
