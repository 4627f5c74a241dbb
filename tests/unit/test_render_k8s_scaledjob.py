"""`batchmesh render k8s`, the ScaledJob flavour (services/render/k8s_scaledjob.py): for a `kubernetes` work stage,
overlays/<pipeline>-scaledjob has KEDA make one Job per entry of the stage's stream, each pod a bounded
`batchmesh worker --max-items 1`, and the spec's ConfigMap replaced by a copy in which the manager runs none of the
stage's items. The schema checks of these objects are in test_k8s_validate.py."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml
from k8s_checks import have_kubectl, kustomize, need

from services.core import Keys, k8s_objects
from services.core.spec import load_pipeline
from services.render import k8s, k8s_scaledjob, k8s_scalers
from services.render.roles import role_env

ROOT = Path(__file__).resolve().parents[2]
SPEC = ROOT / "examples" / "jobs" / "jobs.yaml"
OVERLAY = "overlays/jobs-scaledjob"
RENDERED = k8s.rendered_files(ROOT)


def docs(rel: str) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(RENDERED[rel]) if d]


def scaled_job() -> dict[str, Any]:
    [job] = [d for d in docs(f"{OVERLAY}/scaledjob.yaml") if d["kind"] == "ScaledJob"]
    return job


def test_one_job_per_entry_of_the_stages_stream_on_its_group() -> None:
    pipeline = load_pipeline(SPEC)
    work = pipeline.work_stages()["checksum"]
    job = scaled_job()
    spec = job["spec"]
    [trigger] = spec["triggers"]
    assert trigger["type"] == "redis-streams" and trigger["metadata"] == {
        "address": k8s_scalers.REDIS_ADDRESS, "stream": Keys("jobs").stream(work.input), "consumerGroup": "checksum",
        "lagCount": str(k8s_scaledjob.JOB_ITEMS), "activationLagCount": "0", "databaseIndex": "0",
        "enableTLS": "false"}
    # the same TriggerAuthentication as the ScaledObjects, in the same overlay
    assert trigger["authenticationRef"] == {"name": k8s_scalers.TRIGGER_AUTH}
    assert k8s_scalers.trigger_authentication() in docs(f"{OVERLAY}/scaledjob.yaml")
    assert spec["maxReplicaCount"] == work.replicas.max == 10 and spec["minReplicaCount"] == 0
    assert spec["pollingInterval"] == k8s_scalers.POLLING_S
    assert spec["scalingStrategy"] == {"strategy": "accurate"}  # lag leaves out entries taken: KEDA's advice
    assert spec["successfulJobsHistoryLimit"] >= 1 and spec["failedJobsHistoryLimit"] >= 1
    assert spec["jobTargetRef"]["backoffLimit"] == pipeline.defaults.max_deliveries - 1


def test_the_pod_is_a_bounded_worker_hardened_like_every_pod() -> None:
    pipeline = load_pipeline(SPEC)
    pod = scaled_job()["spec"]["jobTargetRef"]["template"]["spec"]
    [container] = pod["containers"]
    assert container["args"] == ["worker", "--pipeline", "examples/jobs/jobs.yaml", "--stage", "checksum",
                                 "--max-items", "1", "--idle-exit",
                                 str(int(pipeline.defaults.visibility_timeout) + k8s_scaledjob.IDLE_MARGIN_S)]
    assert container["image"] == pipeline.work_stages()["checksum"].kubernetes.image
    assert container["securityContext"] == k8s_objects.container_security()
    assert pod["securityContext"] == k8s_objects.pod_security() and pod["automountServiceAccountToken"] is False
    assert pod["restartPolicy"] == "Never" and "livenessProbe" not in container and "ports" not in container
    env = {e["name"]: e.get("value", e.get("valueFrom")) for e in container["env"]}
    assert role_env(pipeline, k8s.REDIS_URL, k8s.OUT_DIR).items() <= env.items()  # every role's (roles.py)
    assert env[k8s_objects.REDIS_PASSWORD_ENV] == {"secretKeyRef": {"name": k8s_objects.REDIS_SECRET,
                                                                    "key": "password"}}
    assert {m["mountPath"] for m in container["volumeMounts"]} >= {"/tmp", "/app/examples/jobs/jobs.yaml",
                                                                  "/data/out"}


def test_the_overlays_spec_leaves_the_stage_to_keda(tmp_path: Path) -> None:
    copy = tmp_path / "jobs.yaml"
    copy.write_text(RENDERED[f"{OVERLAY}/pipeline.yaml"])
    original, jobs = load_pipeline(SPEC), load_pipeline(copy)
    stage = jobs.work_stages()["checksum"]
    assert stage.executor == "stream" and stage.kubernetes is None  # the manager runs none of its items
    assert original.work_stages()["checksum"].executor == "kubernetes"
    keep = {"executor", "kubernetes"}
    assert stage.model_dump(exclude=keep) == original.work_stages()["checksum"].model_dump(exclude=keep)
    assert jobs.model_dump(exclude={"stages"}) == original.model_dump(exclude={"stages"})


def test_kustomize_gives_the_job_pods_the_replaced_spec() -> None:
    need("kubectl (with kustomize)", have_kubectl())
    objects = kustomize(ROOT / "k8s" / OVERLAY)
    [config] = [d for d in objects if d["kind"] == "ConfigMap" and d["metadata"]["name"].startswith("jobs-spec")]
    assert "executor: stream" in config["data"][k8s.SPEC_KEY]
    [job] = [d for d in objects if d["kind"] == "ScaledJob"]
    volumes = {v["name"]: v for v in job["spec"]["jobTargetRef"]["template"]["spec"]["volumes"]}
    assert volumes["spec"]["configMap"]["name"] == config["metadata"]["name"]  # the hash-suffixed name
    for dep in (d for d in objects if d["kind"] == "Deployment"):
        names = [v["configMap"]["name"] for v in dep["spec"]["template"]["spec"]["volumes"] if "configMap" in v]
        assert names == [config["metadata"]["name"]]  # the manager reads the same copy
    [manager] = [d for d in objects if d["kind"] == "Deployment" and d["metadata"]["name"] == "jobs-manager"]
    pod = manager["spec"]["template"]["spec"]
    assert pod["automountServiceAccountToken"] is False and pod["serviceAccountName"] == "batchmesh"  # no API calls
    [plain] = [d for d in kustomize(ROOT / "k8s" / "overlays" / "jobs") if d["kind"] == "Deployment"
               and d["metadata"]["name"] == "jobs-manager"]
    assert plain["spec"]["template"]["spec"]["automountServiceAccountToken"] is True  # there it makes the Jobs


def test_only_pipelines_with_a_kubernetes_stage_get_the_overlay(tmp_path: Path) -> None:
    assert not any(rel.startswith("overlays/wordcount-scaledjob") for rel in RENDERED)
    spec = tmp_path / "chain.yaml"
    spec.write_text(SPEC.read_text().replace(
        "      command: [python, examples/autoscale/item.py]\n",
        "      chain: [{command: [a]}, {command: [b]}]\n").replace(
        'kubernetes: {image: "batchmesh:0.1.0"}', 'kubernetes: {image: "batchmesh:0.1.0", images: {0: "x:1"}}'))
    pipeline = load_pipeline(spec)
    assert k8s_scaledjob.job_stages(pipeline) == {}  # per-adapter images: the manager's multi-container Job only
    files = k8s.pipeline_files(pipeline, "pipeline/chain.yaml", spec)
    assert not any("-scaledjob/" in rel for rel in files)


@pytest.mark.parametrize("visibility", ["30s", "2m"])
def test_idle_exit_outlasts_the_visibility_timeout(tmp_path: Path, visibility: str) -> None:
    spec = tmp_path / "jobs.yaml"
    spec.write_text(SPEC.read_text().replace("stages:\n", f"defaults: {{visibility_timeout: {visibility}}}\nstages:\n"))
    pipeline = load_pipeline(spec)
    args = k8s_scaledjob.job_args("jobs.yaml", "checksum", pipeline)
    assert float(args[args.index("--idle-exit") + 1]) > pipeline.defaults.visibility_timeout
