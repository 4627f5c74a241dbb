"""`batchmesh render k8s` for a pipeline with a `kubernetes`-executor stage: the manager's ServiceAccount (its token
mounted), a Role with exactly the verbs the executor uses — checked against every call it made to the FAKE API
server in a run — its RoleBinding, the manager's egress NetworkPolicy (DNS, Redis, the source, the API server) and
a deny-all NetworkPolicy for the Job pods; every object strictly valid after `kubectl kustomize`. A pipeline
without such a stage renders none of it."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest
import redis
import yaml
from k8s_checks import errors, have_kubectl, kustomize, need
from test_executor_kubernetes import counts, dispatch, echo, wait_for, write_spec
from test_executor_kubernetes_api import FakeCluster, api_client

from services.core import Settings
from services.core.spec import load_pipeline
from services.manager.executors import StageContext, stage_settings
from services.manager.executors.kubernetes import KubernetesExecutor
from services.render import k8s, k8s_rbac

SPEC = {"apiVersion": "batchmesh/v1", "kind": "Pipeline", "name": "kjobs",
        "source": {"type": "directory", "path": "./data", "glob": "*.txt"},
        "stages": {"sum": {"work": {"input": "source", "command": ["python", "sum.py"], "executor": "kubernetes",
                                    "kubernetes": {"image": "example.com/worker:1"}}},
                   "net": {"work": {"input": "sum", "command": ["fetch"], "executor": "kubernetes",
                                    "kubernetes": {"image": "example.com/worker:1", "network": True}}}}}
VERBS = {"POST": "create", "PUT": "update", "PATCH": "patch", "DELETE": "delete"}


def _render(tmp_path: Path, spec: dict[str, Any]) -> Path:
    (tmp_path / "p").mkdir(exist_ok=True)
    path = tmp_path / "p" / "pipeline.yaml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    k8s.render_dir(path, tmp_path / "k8s")
    return tmp_path / "k8s"


def _mesh(out: Path, name: str) -> dict[tuple[str, str], dict[str, Any]]:
    docs = [d for d in yaml.safe_load_all((out / "pipelines" / name / "mesh.yaml").read_text()) if d]
    return {(d["kind"], d["metadata"]["name"]): d for d in docs}


def test_the_manager_gets_an_account_a_role_and_its_network(tmp_path: Path) -> None:
    mesh = _mesh(_render(tmp_path, SPEC), "kjobs")
    role = mesh[("Role", "kjobs-manager")]
    assert role["rules"] == k8s_rbac.role_rules()
    assert not any("*" in r["verbs"] or "*" in r["resources"] for r in role["rules"])
    binding = mesh[("RoleBinding", "kjobs-manager")]
    assert binding["roleRef"]["name"] == "kjobs-manager"
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": "kjobs-manager", "namespace": "batchmesh"}]
    assert ("ServiceAccount", "kjobs-manager") in mesh
    manager = mesh[("Deployment", "kjobs-manager")]["spec"]["template"]["spec"]
    assert manager["serviceAccountName"] == "kjobs-manager" and manager["automountServiceAccountToken"] is True
    source = mesh[("Deployment", "kjobs-source")]["spec"]["template"]["spec"]
    assert source["automountServiceAccountToken"] is False  # only the manager talks to the API server
    egress = mesh[("NetworkPolicy", "kjobs-manager-egress")]["spec"]
    assert egress["policyTypes"] == ["Egress"]
    ports = [{(p["protocol"], p["port"]) for p in rule["ports"]} for rule in egress["egress"]]
    assert {("TCP", 443), ("TCP", 6443)} in ports and {("UDP", 53), ("TCP", 53)} in ports
    assert {("TCP", 6379)} in ports and {("TCP", 8080)} in ports and {} not in egress["egress"]
    jobs = mesh[("NetworkPolicy", "kjobs-sum-jobs")]["spec"]
    assert jobs["policyTypes"] == ["Ingress", "Egress"] and "ingress" not in jobs and "egress" not in jobs
    assert jobs["podSelector"]["matchLabels"] == {"batchmesh.io/pipeline": "kjobs", "batchmesh.io/stage": "sum",
                                                  "batchmesh.io/role": "job", "batchmesh.io/executor": "kubernetes"}
    assert ("NetworkPolicy", "kjobs-net-jobs") not in mesh  # network: true


def test_every_object_is_strictly_valid_after_kustomize(tmp_path: Path) -> None:
    need("kubectl (with kustomize)", have_kubectl())
    out = _render(tmp_path, SPEC)
    docs = kustomize(out / "overlays" / "kjobs")
    assert {"Role", "RoleBinding", "ServiceAccount"} <= {d["kind"] for d in docs}
    found = [e for d in docs for e in errors(d)]
    assert found == [], found


def test_the_role_covers_every_call_the_executor_makes(client: redis.Redis, settings: Settings, tmp_path: Path,
                                                      pipeline_name: str) -> None:
    path = write_spec(tmp_path / "w.yaml", pipeline_name, {"command": ["python", "work.py"]})
    pipeline = load_pipeline(path)
    cluster = FakeCluster(echo)
    ctx = StageContext(client, pipeline, "w", stage_settings(pipeline, "w", settings), path)
    executor = KubernetesExecutor(ctx, api_client=api_client(cluster))
    executor.start()
    dispatch(client, pipeline_name, {"a": {"n": 1}})
    wait_for(lambda: counts(client, pipeline_name)["done"] == 1 and not cluster.store, what="done and deleted")
    executor.stop(10)
    allowed = {(r["apiGroups"][0], res, verb) for r in k8s_rbac.role_rules() for res in r["resources"]
               for verb in r["verbs"]}
    used = set()
    for method, url in cluster.calls:
        parts = url.strip("/").split("/")
        group = "batch" if parts[0] == "apis" else ""
        rest = parts[parts.index("namespaces") + 2:]
        resource = "/".join([rest[0], *rest[2:]])  # jobs, configmaps, pods, pods/log
        verb = VERBS.get(method) or ("get" if len(rest) > 1 else "list")
        used.add((group, resource, verb))
    assert used <= allowed, f"the Role lacks {used - allowed}"
    assert {("batch", "jobs", "create"), ("", "pods/log", "get"), ("batch", "jobs", "delete")} <= used
    # the verbs the run did not need are the ones a restart needs: adopt (get), replace a stale ConfigMap
    assert allowed - used <= {("batch", "jobs", "get"), ("", "configmaps", "get"), ("", "configmaps", "delete")}


def test_without_a_kubernetes_stage_nothing_changes(tmp_path: Path) -> None:
    spec = copy.deepcopy(SPEC)
    for stage in spec["stages"].values():
        stage["work"].pop("kubernetes")
        stage["work"]["executor"] = "stream"
    mesh = _mesh(_render(tmp_path, spec), "kjobs")
    assert not [key for key in mesh if key[0] in ("Role", "RoleBinding", "ServiceAccount")]
    assert ("NetworkPolicy", "kjobs-manager-egress") not in mesh
    assert mesh[("Deployment", "kjobs-manager")]["spec"]["template"]["spec"]["automountServiceAccountToken"] is False


def test_process_stages_keep_the_managers_egress_open_and_other_namespaces_are_refused(tmp_path: Path) -> None:
    spec = copy.deepcopy(SPEC)
    spec["stages"]["net"]["work"] = {"input": "sum", "command": ["fetch"], "executor": "process"}
    mesh = _mesh(_render(tmp_path, spec), "kjobs")
    assert {} in mesh[("NetworkPolicy", "kjobs-manager-egress")]["spec"]["egress"]
    spec["stages"]["sum"]["work"]["kubernetes"]["namespace"] = "elsewhere"
    with pytest.raises(ValueError, match="kubernetes.namespace 'elsewhere'"):
        _render(tmp_path, spec)
