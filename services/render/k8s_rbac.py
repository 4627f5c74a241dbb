"""What the manager of a pipeline with `kubernetes`-executor stages needs on Kubernetes, and the fences around the
Jobs it makes (plain dicts; nothing here for a pipeline without such a stage, so its rendering is unchanged):

- a ServiceAccount `<pipeline>-manager` whose token the manager pod mounts (every other pod mounts none);
- a Role with the least the executor calls (services/manager/executors/kubernetes.py): Jobs create / get / list /
  patch (resume a suspended Job) / delete, ConfigMaps create / get / delete (an immutable one an older Job left), pods
  list (to find a Job's pods), pods/log get (the result and the failure's reason) — bound by a RoleBinding;
- a NetworkPolicy for the manager's egress: DNS, Redis, the source, and the API server on TCP 443 and 6443 (the
  `kubernetes` Service's port and the port its endpoints usually listen on, as the CNI sees traffic after the
  Service's DNAT). The API server's address is the cluster's own, so the rule names ports only: narrow it with an
  ipBlock in an overlay. A pipeline that also has `process` stages runs their commands in the manager pod, whose
  needs nobody knows: its manager's egress stays open (one allow-all rule, stated as such);
- per stage with `kubernetes.network: false` (the default, as the docker executor's `network: none`), a
  NetworkPolicy denying the stage's Job pods all ingress and egress (the executor's pods only, labelled
  `batchmesh.io/executor: kubernetes`: a KEDA ScaledJob's pods for the same stage talk to Redis).

Jobs go to the mesh's namespace (`batchmesh`): a stage naming another `kubernetes.namespace` is refused here (its
Role and RoleBinding would have to live there, and the overlays' kustomize `namespace:` rewrites every object's)."""

from __future__ import annotations

from typing import Any

from services.core.k8s_objects import NAMESPACE, labels, meta, selector
from services.core.spec import Pipeline, WorkSpec

API_SERVER_PORTS = (443, 6443)
EXECUTOR_LABEL = "batchmesh.io/executor"  # on the kubernetes executor's Jobs and pods (executors/kubernetes_job.py)


def kubernetes_stages(pipeline: Pipeline) -> dict[str, WorkSpec]:
    return {name: work for name, work in pipeline.work_stages().items() if work.executor == "kubernetes"}


def account(pipeline: Pipeline) -> str:
    return f"{pipeline.name}-manager"


def check(pipeline: Pipeline) -> None:
    """Raises ValueError for what cannot be rendered (see the module's docstring)."""
    for stage, work in kubernetes_stages(pipeline).items():
        namespace = work.kubernetes.namespace if work.kubernetes else None
        if namespace not in (None, NAMESPACE):
            raise ValueError(f"stage {stage}: kubernetes.namespace {namespace!r}: batchmesh render k8s puts the Jobs "
                             f"in the mesh's namespace {NAMESPACE!r} (leave namespace out, or write the Role and "
                             "RoleBinding for that namespace yourself)")


def manager_pod(pipeline: Pipeline, pod: dict[str, Any]) -> None:
    """The manager's pod spec, changed in place when it runs Jobs: its own ServiceAccount, with its token."""
    if kubernetes_stages(pipeline):
        pod["serviceAccountName"] = account(pipeline)
        pod["automountServiceAccountToken"] = True


def role_rules() -> list[dict[str, Any]]:
    return [
        {"apiGroups": ["batch"], "resources": ["jobs"], "verbs": ["create", "get", "list", "patch", "delete"]},
        {"apiGroups": [""], "resources": ["configmaps"], "verbs": ["create", "get", "delete"]},
        {"apiGroups": [""], "resources": ["pods"], "verbs": ["list"]},
        {"apiGroups": [""], "resources": ["pods/log"], "verbs": ["get"]},
    ]


def objects(pipeline: Pipeline, manager_labels: dict[str, str], source_labels: dict[str, str], source_port: int
            ) -> list[dict[str, Any]]:
    """Every object above, for k8s/pipelines/<name>/mesh.yaml; [] without a kubernetes stage."""
    stages = kubernetes_stages(pipeline)
    if not stages:
        return []
    name, n = account(pipeline), pipeline.name
    lab = labels(name, n, "manager")
    out: list[dict[str, Any]] = [
        {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": meta(name, lab)},
        {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "Role", "metadata": meta(name, lab),
         "rules": role_rules()},
        {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding", "metadata": meta(name, lab),
         "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": name},
         "subjects": [{"kind": "ServiceAccount", "name": name, "namespace": NAMESPACE}]},
    ]
    redis = {"podSelector": {"matchLabels": selector(labels("redis", None, "redis"))}}
    egress: list[dict[str, Any]] = [
        {"ports": [{"protocol": "UDP", "port": 53}, {"protocol": "TCP", "port": 53}]},
        {"to": [redis], "ports": [{"protocol": "TCP", "port": 6379}]},
        {"to": [{"podSelector": {"matchLabels": selector(source_labels)}}],
         "ports": [{"protocol": "TCP", "port": source_port}]},
        {"ports": [{"protocol": "TCP", "port": port} for port in API_SERVER_PORTS]},
    ]
    if any(work.executor == "process" for work in pipeline.work_stages().values()):
        egress.append({})  # process stages' commands run in the manager pod: their egress is unknown, left open
    out.append({"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
                "metadata": meta(f"{n}-manager-egress", manager_labels),
                "spec": {"podSelector": {"matchLabels": selector(manager_labels)}, "policyTypes": ["Egress"],
                         "egress": egress}})
    for stage, work in stages.items():
        if work.kubernetes is not None and not work.kubernetes.network:
            jobs = labels(f"{n}-{stage}-job", n, "job", stage) | {EXECUTOR_LABEL: "kubernetes"}
            pods = {k: jobs[k] for k in ("batchmesh.io/pipeline", "batchmesh.io/stage", "batchmesh.io/role",
                                         EXECUTOR_LABEL)}  # not the Jobs of a KEDA ScaledJob: they need Redis
            out.append({"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
                        "metadata": meta(f"{n}-{stage}-jobs", jobs),
                        "spec": {"podSelector": {"matchLabels": pods}, "policyTypes": ["Ingress", "Egress"]}})
    return out
