"""KEDA `ScaledJob` for `kubernetes` work stages (`k8s/overlays/<pipeline>-scaledjob/`): KEDA, not the manager, makes
the Jobs. Plain dicts.

The manager's `kubernetes` executor (services/manager/executors/kubernetes.py) reads each entry of the stage's stream
and creates one Job per item, named from the item. In this overlay KEDA does the creating instead: a `ScaledJob`
with a `redis-streams` trigger on the stage's input stream and consumer group (the stage's name; the same
`TriggerAuthentication` as the ScaledObjects) creates Jobs while the group has lag; each Job's pod runs

    batchmesh worker --pipeline SPEC --stage STAGE --max-items 1 --idle-exit IDLE

which reads one entry (a reclaimed one first: a crashed pod's entry past the visibility timeout), runs the stage's
command on it and commits it exactly as the long-lived worker does (done, retried or dead-lettered), then exits 0;
a pod that finds nothing (another pod took the entry) exits 0 after IDLE seconds (the visibility timeout + 15 s,
so that a retried pod can still reclaim its predecessor's entry). So one Job per entry (`lagCount` "1" =
JOB_ITEMS); `scalingStrategy: accurate`, KEDA's choice when the queue length, like a group's lag, leaves out the
entries already taken (pending). `maxReplicaCount` is the stage's `replicas.max` (Jobs at a time); minReplicaCount
0: no Job without lag.

So that the manager runs none of the stage's items itself, the overlay replaces the spec's ConfigMap with a copy
whose such stages have `executor: stream` (`jobs_spec`): the manager then only reports on them, as it does for a
long-lived stream stage, and every role reads the same spec otherwise. Stages whose chain gives adapters images of
their own (`kubernetes.images`) need the manager's multi-container Job and get no ScaledJob.

The pod is the stage's worker pod (services/render/k8s.py: the same environment, spec mount, volumes and restricted
securityContext from services/core/k8s_objects.py) in the stage's `kubernetes.image` (which must carry batchmesh
here: the pod runs `batchmesh worker`), with the stage's `kubernetes.resources` and `user`."""

from __future__ import annotations

import copy
import json
import math
from pathlib import Path
from typing import Any

import yaml

from services.core import k8s_objects as obj
from services.core.keys import Keys
from services.core.spec import Pipeline, WorkSpec
from services.core.spec_yaml import read_yaml

from .k8s_scalers import POLLING_S, REDIS_ADDRESS, TRIGGER_AUTH

JOB_ITEMS = 1  # entries per Job: its pod's --max-items, the trigger's lagCount
SUCCESSFUL_HISTORY, FAILED_HISTORY = 5, 10  # finished Jobs KEDA keeps (for `kubectl logs`); older ones are deleted
IDLE_MARGIN_S = 15
# kustomize knows where a Deployment names a ConfigMap, not a ScaledJob: without this the spec's generated name
# (with its hash suffix) would not reach the Job pods' volume
NAME_REFERENCES = {"nameReference": [{"kind": "ConfigMap", "version": "v1", "fieldSpecs": [
    {"kind": "ScaledJob", "group": "keda.sh", "path": "spec/jobTargetRef/template/spec/volumes/configMap/name"}]}]}
START_S = 300  # a pod may wait this long to be scheduled and pull its image (the Job's deadline counts it)


def job_stages(pipeline: Pipeline) -> dict[str, WorkSpec]:
    """The stages a ScaledJob can run: executor `kubernetes`, one container (no per-adapter images)."""
    return {name: work for name, work in pipeline.work_stages().items()
            if work.executor == "kubernetes" and not (work.kubernetes and work.kubernetes.images)}


def idle_exit_s(pipeline: Pipeline) -> int:
    return math.ceil(pipeline.defaults.visibility_timeout) + IDLE_MARGIN_S


def job_args(spec: str, stage: str, pipeline: Pipeline) -> list[str]:
    """The Job pod's argv after `batchmesh` (services/cli.py: worker --max-items, --idle-exit)."""
    return ["worker", "--pipeline", spec, "--stage", stage, "--max-items", str(JOB_ITEMS),
            "--idle-exit", str(idle_exit_s(pipeline))]


def max_deliveries(pipeline: Pipeline, work: WorkSpec) -> int:
    return work.max_deliveries or pipeline.defaults.max_deliveries


def job_container(worker: dict[str, Any], work: WorkSpec) -> dict[str, Any]:
    """The stage's worker container (services/render/k8s.py `_Mesh.container`) as a Job's: the stage's image,
    resources and user; no ports or probes (nothing serves or scrapes a pod that lives for one item)."""
    out = {k: copy.deepcopy(v) for k, v in worker.items() if k not in ("ports", "readinessProbe", "livenessProbe")}
    spec = work.kubernetes
    if spec is None:
        return out
    out["image"], out["imagePullPolicy"] = spec.image, spec.image_pull_policy
    if spec.resources:
        out["resources"] = copy.deepcopy(spec.resources)
    out["securityContext"] |= {"runAsUser": spec.user, "runAsGroup": spec.user}
    return out


def scaled_job(pipeline: Pipeline, stage: str, work: WorkSpec, container: dict[str, Any],
               volumes: list[dict[str, Any]], lab: dict[str, str]) -> dict[str, Any]:
    """One Job per entry of the stage's input stream not yet delivered to its group, at most replicas.max at a
    time (KEDA's redis-streams trigger: lag = XINFO GROUPS' lag, Redis 7)."""
    spec = work.kubernetes
    pod = obj.pod_spec([container], volumes, grace=max(30, int(work.timeout) + 15))
    pod["restartPolicy"] = "Never"  # a failed pod is the Job's retry (backoffLimit), never an in-place restart
    if spec is not None:
        pod["securityContext"] |= {"runAsUser": spec.user, "runAsGroup": spec.user, "fsGroup": spec.user}
        if spec.service_account:
            pod["serviceAccountName"] = spec.service_account
    deliveries = max_deliveries(pipeline, work)
    per_pod = int(work.timeout) * JOB_ITEMS + idle_exit_s(pipeline) + START_S
    metadata = {
        "address": REDIS_ADDRESS,
        "stream": Keys(pipeline.name).stream(work.input),
        "consumerGroup": stage,
        "lagCount": str(JOB_ITEMS),
        "activationLagCount": "0",
        "databaseIndex": "0",
        "enableTLS": "false",
    }
    return {
        "apiVersion": "keda.sh/v1alpha1", "kind": "ScaledJob", "metadata": obj.meta(lab["app.kubernetes.io/name"], lab),
        "spec": {
            "jobTargetRef": {
                "parallelism": 1, "completions": 1,
                "backoffLimit": deliveries - 1,  # as the kubernetes executor's Jobs; the stream caps deliveries too
                "activeDeadlineSeconds": deliveries * per_pod,
                "template": {"metadata": {"labels": dict(lab)}, "spec": pod},
            },
            "pollingInterval": POLLING_S,
            "minReplicaCount": 0,
            "maxReplicaCount": work.replicas.max,
            "successfulJobsHistoryLimit": SUCCESSFUL_HISTORY,
            "failedJobsHistoryLimit": FAILED_HISTORY,
            "scalingStrategy": {"strategy": "accurate"},
            "triggers": [{"type": "redis-streams", "name": "lag", "metadata": metadata,
                          "authenticationRef": {"name": TRIGGER_AUTH}}],
        },
    }


def manager_patches(pipeline: Pipeline) -> list[dict[str, Any]]:
    """kustomize patches of the overlay: when KEDA makes every `kubernetes` stage's Jobs, the manager talks to no
    API server any more: back to the mesh's ServiceAccount, no token mounted (least privilege)."""
    every = [n for n, w in pipeline.work_stages().items() if w.executor == "kubernetes"]
    if not every or set(every) != set(job_stages(pipeline)):
        return []
    ops = [{"op": "add", "path": "/spec/template/spec/serviceAccountName", "value": obj.SERVICE_ACCOUNT},
           {"op": "add", "path": "/spec/template/spec/automountServiceAccountToken", "value": False}]
    return [{"target": {"kind": "Deployment", "name": f"{pipeline.name}-manager"},
             "patch": json.dumps(ops)}]  # a JSON 6902 patch (JSON is YAML)


def jobs_spec(spec_path: Path, stages: list[str]) -> str:
    """The spec with `stages` switched to `executor: stream` (their `kubernetes:` section dropped): what the
    overlay's ConfigMap holds, so the manager leaves their items to KEDA's Jobs. Validated before it is returned."""
    raw = read_yaml(spec_path)
    for name in stages:
        body = raw["stages"][name]["work"]
        body["executor"] = "stream"
        body.pop("kubernetes", None)
    Pipeline.model_validate(raw)
    note = (f"# {spec_path.name} for the ScaledJob overlay: stage(s) {', '.join(stages)} run as KEDA's Jobs\n"
            "# (`batchmesh worker --max-items 1`), so here their executor is `stream`: the manager runs none of\n"
            "# their items itself. Generated by batchmesh render k8s from the spec; do not edit.\n")
    return note + yaml.safe_dump(raw, sort_keys=False, default_flow_style=False, width=120)
