"""The objects the `kubernetes` executor sends, as plain dicts (pure functions: no API calls here): one Job per item
and the ConfigMap holding its item document. Hardened like every pod `batchmesh render k8s` emits: the
securityContext and default resources come from services/core/k8s_objects.py (a dependency-free module of dicts,
shared so a Job pod and a rendered Deployment can never drift apart).

**Names.** `job_name`: `bm-<stage>-<16 hex>`, the hex a SHA-256 of (pipeline, stage, item id, item version): the same
for every delivery of one item version (a restarted manager finds the Job it made: AlreadyExists means adopt), a
new one for a new version. At most 63 characters (the Job controller puts it in the pods' `job-name` label), a
DNS-1123 label. The item id itself goes in the annotation `batchmesh.io/item`, with its version and stream entry.
Labels: services/core/k8s_objects.labels (role `job`) + `batchmesh.io/executor: kubernetes`; the pods have no
`app.kubernetes.io/part-of: batchmesh` (the mesh's Redis NetworkPolicy admits those; a Job runs the user's code).

**The item.** In a ConfigMap of the Job's name (key `item.json`, plus `pipeline.yaml` when the pod runs
`services.workers.once`), mounted read-only at /batchmesh/item: WORK_ITEM_FILE = /batchmesh/item/item.json. A
ConfigMap, not the env: the worker contract is a *file* (the same bytes as every other executor writes), an item
may be larger than an environment variable comfortably holds (the ConfigMap allows ~1 MiB), and item data stays out
of the Job's spec (`kubectl describe job` lists env). Immutable: the kubelets watch none of them (with a
ConfigMap per item that is load the API server is spared). Its ownerReference is the Job, so the garbage collector
deletes it with the Job; that is why the Job is created suspended, then the ConfigMap (it needs the Job's uid), then
the Job resumed (see the executor).

**Attempts and time.** `backoffLimit` = max_deliveries − 1: Kubernetes itself retries a failed pod (its own
exponential backoff: 10 s, 20 s, 40 s … capped at 6 min), the Job fails only when every delivery is used up. Each
pod gets the stage's `timeout` (× the chain's length) as its `activeDeadlineSeconds` (one attempt, counted from
the pod's start on its node); the Job's `activeDeadlineSeconds` bounds the whole: max_deliveries × (timeout +
start_timeout) + the backoffs (`job_deadline`); past it the Job fails with reason DeadlineExceeded.
`podFailurePolicy` ignores pods killed by a disruption (a node drain, preemption): they use up no attempt.
`ttlSecondsAfterFinished` is a safety net; the manager deletes each Job once its outcome is committed.

**The multi-worker pod** (`chain:` of commands, the book's multi-worker pattern): one pod whose adapters run in
order, each in its own container (its own image when `kubernetes.images` names one), all but the last as init
containers (they run one after another, each only once the previous one exited 0). How adapter i finds adapter
i−1's output:
- every adapter writes into its own emptyDir, mounted at /batchmesh/out/<i>-<name> in its container and, read-only
  at the same path, in every later container, so file paths in a result stay valid down the chain;
- between adapters i−1 and i a small init container (`handoff_image`, running
  services.manager.executors.kubernetes_handoff) reads adapter i−1's $WORK_OUTPUT_DIR/result.json and writes adapter
  i's item document to the shared `handoff` emptyDir (/batchmesh/handoff/<i>.json) with `data` = that result,
  exactly as services/workers/chain.py passes an item along; adapter i's WORK_ITEM_FILE names that file. So an
  adapter before the last writes its result to $WORK_OUTPUT_DIR/result.json: an init container's stdout only
  reaches the pod's log, never the next container.
The last adapter's result is read from its log (see the executor). A chain with in-process workers (`worker:`) runs
whole in one container of `image` (`python -m services.workers.once`, the pipeline file from the ConfigMap at the
path the manager reads it from), which must carry batchmesh and every adapter."""

from __future__ import annotations

import hashlib
import math
import re
from typing import Any

from services.core import k8s_objects as hardening
from services.core.command import item_document
from services.core.item import WorkItem
from services.core.spec import WorkSpec
from services.core.spec_kubernetes import StageKubernetes

PREFIX = "batchmesh.io"
EXECUTOR_LABEL = f"{PREFIX}/executor"
ITEM_DIR = "/batchmesh/item"
ITEM_KEY, SPEC_KEY = "item.json", "pipeline.yaml"
ITEM_FILE = f"{ITEM_DIR}/{ITEM_KEY}"
OUT_ROOT, HANDOFF_DIR = "/batchmesh/out", "/batchmesh/handoff"
MAX_CONFIGMAP = 1024 * 1024 - 4096  # the API server's limit on a ConfigMap's data (1 MiB), less room for metadata
BACKOFF_S, BACKOFF_MAX_S = 10, 360  # the Job controller's pod backoff: 10 s doubling, capped at 6 min
HANDOFF = "services.manager.executors.kubernetes_handoff"
DISRUPTION = {"action": "Ignore", "onPodConditions": [{"type": "DisruptionTarget", "status": "True"}]}


def job_name(pipeline: str, stage: str, item: WorkItem) -> str:
    digest = hashlib.sha256("\0".join([pipeline, stage, item.id, item.version or ""]).encode()).hexdigest()[:16]
    prefix = re.sub(r"[^a-z0-9-]", "-", stage.lower())[: 63 - len("bm--") - len(digest)].strip("-")
    return f"bm-{prefix}-{digest}" if prefix else f"bm-{digest}"


def job_labels(pipeline: str, stage: str) -> dict[str, str]:
    """The Jobs' and their pods' labels (k8s_objects.labels, role `job`) + `batchmesh.io/executor: kubernetes`, which
    tells them from the Jobs a KEDA ScaledJob makes for the same stage (services/render/k8s_scaledjob.py)."""
    return hardening.labels(f"{pipeline}-{stage}-job", pipeline, "job", stage) | {EXECUTOR_LABEL: "kubernetes"}


def selector(pipeline: str, stage: str) -> str:
    """The label selector of every Job (and pod) this stage's executor made."""
    return f"{PREFIX}/pipeline={pipeline},{PREFIX}/stage={stage},{PREFIX}/role=job,{EXECUTOR_LABEL}=kubernetes"


def job_deadline(timeout: float, max_deliveries: int, start_timeout: float) -> int:
    """The Job's activeDeadlineSeconds: every attempt's timeout and start allowance plus the pod backoffs between."""
    backoffs = sum(min(BACKOFF_S * 2**k, BACKOFF_MAX_S) for k in range(max_deliveries - 1))
    return int(max_deliveries * (math.ceil(timeout) + math.ceil(start_timeout)) + backoffs)


def configmap(name: str, item: WorkItem, lab: dict[str, str], spec_text: str | None) -> dict[str, Any]:
    """The item's ConfigMap, without its ownerReference (the executor adds the Job's uid). Raises ValueError when
    the item document is over the ConfigMap limit."""
    data = {ITEM_KEY: item_document(item).decode()}
    if spec_text is not None:
        data[SPEC_KEY] = spec_text
    size = sum(len(v.encode()) for v in data.values())
    if size > MAX_CONFIGMAP:
        raise ValueError(f"the item document is {size} bytes, over what a ConfigMap holds ({MAX_CONFIGMAP}): pass "
                         "large data by reference (a uri) instead")
    return {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": name, "labels": dict(lab)},
            "immutable": True, "data": data}


def owned_by(doc: dict[str, Any], job_name_: str, uid: str) -> dict[str, Any]:
    """`doc` with the Job as its owner (deleted with it; no blockOwnerDeletion: that needs more RBAC)."""
    doc["metadata"]["ownerReferences"] = [{"apiVersion": "batch/v1", "kind": "Job", "name": job_name_, "uid": uid}]
    return doc


def _safe(name: str) -> str:
    return re.sub(r"[^a-z0-9-]", "-", name.lower()).strip("-")[:40].strip("-") or "adapter"


def _env(values: dict[str, str], item_file: str, out_dir: str) -> list[dict[str, str]]:
    env = [{"name": k, "value": v} for k, v in values.items() if k not in ("WORK_ITEM_FILE", "WORK_OUTPUT_DIR")]
    return [*env, {"name": "WORK_ITEM_FILE", "value": item_file}, {"name": "WORK_OUTPUT_DIR", "value": out_dir}]


class JobBuilder:
    """The Job of one stage's items: everything but the item is fixed at start (`argv` when the stage runs one
    command or `once`; else the chain's adapters)."""

    def __init__(self, pipeline: str, stage: str, work: WorkSpec, spec: StageKubernetes, *, max_deliveries: int,
                 once_argv: list[str] | None, spec_path: str | None) -> None:
        self.pipeline, self.stage, self.work, self.spec = pipeline, stage, work, spec
        self.max_deliveries = max_deliveries
        self.labels = job_labels(pipeline, stage)
        self.spec_path = spec_path  # the pipeline file's path in the pod (once only)
        # one attempt: the stage's timeout per adapter, as every adapter of a local chain has it
        self.attempt_s = math.ceil(work.timeout) * len(work.adapters)
        commands = [ref for ref in work.adapters if ref.command is not None]
        if work.command:
            self.steps = [("main", list(work.command), dict(work.env))]
        elif once_argv is not None and len(commands) != len(work.adapters):
            self.steps = [("once", list(once_argv), dict(work.env))]
        else:  # a chain of commands: the multi-worker pod
            from services.workers.adapters import command_name  # the chain's own names (its output dirs too)

            self.steps = [(_safe(f"{i}-{command_name(ref.command)}"), list(ref.command), {**work.env, **ref.env})
                          for i, ref in enumerate(work.adapters) if ref.command]

    @property
    def needs_spec(self) -> bool:
        return self.steps[0][0] == "once"

    @property
    def main_container(self) -> str:
        return f"a{len(self.steps) - 1}-{self.steps[-1][0]}"[:63]

    def resources(self) -> dict[str, Any]:
        return self.spec.resources if self.spec.resources is not None else hardening.RESOURCES["worker"]

    def security(self) -> dict[str, Any]:
        uid = self.spec.user
        return hardening.container_security() | {"runAsUser": uid, "runAsGroup": uid}

    def _container(self, name: str, image: str, argv: list[str], env: list[dict[str, str]],
                   mounts: list[dict[str, Any]]) -> dict[str, Any]:
        return {"name": name[:63], "image": image, "imagePullPolicy": self.spec.image_pull_policy,
                "command": argv, "env": env, "resources": self.resources(), "securityContext": self.security(),
                "volumeMounts": [{"name": "tmp", "mountPath": "/tmp"}, *mounts]}

    def containers(self) -> tuple[list[dict[str, Any]], list[dict[str, Any]], list[dict[str, Any]]]:
        """(init containers, containers, volumes) of the pod."""
        size = {"sizeLimit": self.spec.output}
        item_mount = {"name": "item", "mountPath": ITEM_DIR, "readOnly": True}
        if len(self.steps) == 1:
            name, argv, env = self.steps[0]
            mounts = [item_mount, {"name": "out-0", "mountPath": OUT_ROOT}]
            if self.needs_spec and self.spec_path:
                mounts.append({"name": "item", "mountPath": self.spec_path, "subPath": SPEC_KEY, "readOnly": True})
            main = self._container(self.main_container, self.spec.image, argv, _env(env, ITEM_FILE, OUT_ROOT), mounts)
            return [], [main], [{"name": "out-0", "emptyDir": dict(size)}]
        outs = [f"{OUT_ROOT}/{i}-{name}" for i, (name, _, _) in enumerate(self.steps)]
        volumes = [{"name": f"out-{i}", "emptyDir": dict(size)} for i in range(len(self.steps))]
        volumes.append({"name": "handoff", "emptyDir": {"sizeLimit": "16Mi"}})
        ordered: list[dict[str, Any]] = []
        for i, (name, argv, env) in enumerate(self.steps):
            item_file = ITEM_FILE if i == 0 else f"{HANDOFF_DIR}/{i}.json"
            earlier = [{"name": f"out-{j}", "mountPath": outs[j], "readOnly": True} for j in range(i)]
            if i > 0:  # the handoff: adapter i-1's result.json -> adapter i's item document
                prev_item = ITEM_FILE if i == 1 else f"{HANDOFF_DIR}/{i - 1}.json"
                step = ["python", "-m", HANDOFF, "--item", prev_item, "--result", f"{outs[i - 1]}/result.json",
                        "--next", item_file, "--adapter", f"chain[{i - 1}] {self.steps[i - 1][0]}"]
                ordered.append(self._container(f"handoff-{i}", self.spec.handoff_image, step, [],
                                               [item_mount, *earlier, {"name": "handoff", "mountPath": HANDOFF_DIR}]))
            mounts = [item_mount, *earlier, {"name": f"out-{i}", "mountPath": outs[i]}]
            if i > 0:
                mounts.append({"name": "handoff", "mountPath": HANDOFF_DIR, "readOnly": True})
            image = self.spec.images.get(i, self.spec.image)
            ordered.append(self._container(f"a{i}-{name}", image, argv, _env(env, item_file, outs[i]), mounts))
        return ordered[:-1], ordered[-1:], volumes

    def job(self, name: str, item: WorkItem, entry: str, *, suspend: bool = True) -> dict[str, Any]:
        spec = self.spec
        init, main, volumes = self.containers()
        items = [{"key": ITEM_KEY, "path": ITEM_KEY}] + ([{"key": SPEC_KEY, "path": SPEC_KEY}]
                                                         if self.needs_spec else [])
        volumes = [{"name": "tmp", "emptyDir": {"sizeLimit": spec.tmp}},
                   {"name": "item", "configMap": {"name": name, "items": items}}, *volumes]
        pod: dict[str, Any] = {"restartPolicy": "Never", "automountServiceAccountToken": False,
                               "enableServiceLinks": False, "terminationGracePeriodSeconds": 10,
                               "activeDeadlineSeconds": self.attempt_s,
                               "securityContext": hardening.pod_security() | {
                                   "runAsUser": spec.user, "runAsGroup": spec.user, "fsGroup": spec.user}}
        if spec.service_account:
            pod["serviceAccountName"] = spec.service_account
        if init:
            pod["initContainers"] = init
        pod |= {"containers": main, "volumes": volumes}
        # not part-of batchmesh: the mesh's Redis NetworkPolicy admits those pods, and a Job runs the user's code
        pod_labels = {k: v for k, v in self.labels.items() if k != "app.kubernetes.io/part-of"}
        annotations = {f"{PREFIX}/item": item.id, f"{PREFIX}/version": item.version or "",
                       f"{PREFIX}/entry": entry, f"{PREFIX}/attempts": str(item.attempts)}
        return {
            "apiVersion": "batch/v1", "kind": "Job",
            "metadata": {"name": name, "labels": dict(self.labels), "annotations": annotations},
            "spec": {
                "suspend": suspend, "completions": 1, "parallelism": 1,
                "backoffLimit": self.max_deliveries - 1,
                "activeDeadlineSeconds": job_deadline(self.attempt_s, self.max_deliveries, spec.start_timeout),
                "ttlSecondsAfterFinished": int(spec.ttl_after_finished),
                "podFailurePolicy": {"rules": [dict(DISRUPTION)]},
                "template": {"metadata": {"labels": pod_labels, "annotations": {f"{PREFIX}/item": item.id}},
                             "spec": pod},
            },
        }
