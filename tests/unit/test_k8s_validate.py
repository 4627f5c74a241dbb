"""Issue 9, part 4: every overlay under k8s/ builds with `kubectl kustomize`, and every object it yields is valid
offline: built-in kinds strictly against Kubernetes' schemas (kubernetes-validate), KEDA's kinds against its CRDs
made strict, KEDA trigger metadata against the keys KEDA documents; then a policy scan (checkov's Kubernetes
checks) whose every finding is fixed or listed with a reason in k8s/checkov-skips.yaml. Each validator is shown to
fail on a deliberately faulty manifest (the tests of the tests)."""

from __future__ import annotations

import copy
import json
import os
import shutil
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
import yaml
from k8s_checks import KEDA_SCHEMAS, errors, have_kubectl, kustomize, need

ROOT = Path(__file__).resolve().parents[2]
OVERLAYS = sorted(p for p in (ROOT / "k8s" / "overlays").iterdir() if p.is_dir())
SKIPS = ROOT / "k8s" / "checkov-skips.yaml"


def _tools() -> None:
    need("kubectl (with kustomize)", have_kubectl())
    need("kubernetes-validate (pip)", _importable("kubernetes_validate"))
    need("jsonschema (pip)", _importable("jsonschema"))
    need(f"the KEDA CRD schemas in {KEDA_SCHEMAS}", (KEDA_SCHEMAS / "keda.sh_scaledobjects.yaml").exists())


def _importable(module: str) -> bool:
    try:
        __import__(module)
    except ImportError:
        return False
    return True


@pytest.fixture(scope="module")
def built() -> dict[str, list[dict[str, Any]]]:
    _tools()
    with ThreadPoolExecutor(max_workers=4) as pool:  # kubectl kustomize: ~0.3 s each, in parallel
        return dict(zip([o.name for o in OVERLAYS], pool.map(kustomize, OVERLAYS), strict=True))


_seen: dict[str, list[str]] = {}


def _errors(doc: dict[str, Any]) -> list[str]:
    """errors(), once per distinct object: the overlays of a pipeline share most of theirs."""
    key = json.dumps(doc, sort_keys=True)
    if key not in _seen:
        _seen[key] = errors(doc)
    return _seen[key]


def test_there_is_a_keda_and_an_hpa_overlay_per_example() -> None:
    names = {p.name for p in OVERLAYS}
    for example in ("images", "wordcount", "thumbnailer", "signup"):
        assert {example, f"{example}-keda-prometheus", f"{example}-hpa"} <= names


@pytest.mark.parametrize("overlay", [p.name for p in OVERLAYS])
def test_every_object_is_valid(built: dict[str, list[dict[str, Any]]], overlay: str) -> None:
    found = [e for doc in built[overlay] for e in _errors(doc)]
    assert found == [], "\n".join(found)
    kinds = {doc["kind"] for doc in built[overlay]}
    scaler = {"hpa": "HorizontalPodAutoscaler", "scaledjob": "ScaledJob"}.get(overlay.rsplit("-", 1)[-1],
                                                                             "ScaledObject")
    if scaler != "ScaledJob" and not _streams(overlay):
        scaler = "Deployment"  # no long-lived worker stage (examples/jobs: a `kubernetes` stage): nothing to scale
    assert {"Deployment", "StatefulSet", "Service", "NetworkPolicy", "PodDisruptionBudget", "ConfigMap",
            scaler} <= kinds, overlay


def _streams(overlay: str) -> bool:
    """Whether the overlay's pipeline has a stream work stage (one a ScaledObject or an HPA scales)."""
    from services.core.spec import load_pipeline
    from services.render.k8s import COMMITTED

    name = next(n for n in sorted(COMMITTED, key=len, reverse=True) if overlay == n or overlay.startswith(f"{n}-"))
    return any(w.executor == "stream" for w in load_pipeline(ROOT / COMMITTED[name]).work_stages().values())


def test_a_scaledjob_overlay_for_every_pipeline_with_a_kubernetes_stage() -> None:
    from services.core.spec import load_pipeline
    from services.render.k8s import COMMITTED

    names = {p.name for p in OVERLAYS}
    with_jobs = {n for n, spec in COMMITTED.items()
                 if any(w.executor == "kubernetes" for w in load_pipeline(ROOT / spec).work_stages().values())}
    assert with_jobs, "no committed example has a kubernetes stage: the ScaledJob rendering is not exercised"
    assert {n for n in names if n.endswith("-scaledjob")} == {f"{n}-scaledjob" for n in with_jobs}


# -- the tests of the tests: each validator fails on a deliberate fault ----------------------------------------


def _first(built: dict[str, list[dict[str, Any]]], kind: str) -> dict[str, Any]:
    return copy.deepcopy(next(d for d in built["wordcount"] if d["kind"] == kind))


def test_a_wrong_type_fails(built: dict[str, list[dict[str, Any]]]) -> None:
    dep = _first(built, "Deployment")
    dep["spec"]["replicas"] = "two"
    assert any("replicas" in e for e in errors(dep)), errors(dep)
    scaled = _first(built, "ScaledObject")
    scaled["spec"]["pollingInterval"] = "10"
    assert any("pollingInterval" in e for e in errors(scaled)), errors(scaled)


def test_an_unknown_field_fails(built: dict[str, list[dict[str, Any]]]) -> None:
    dep = _first(built, "Deployment")
    dep["spec"]["template"]["spec"]["containers"][0]["imagePullPolcy"] = "Always"
    assert errors(dep), "kubernetes-validate --strict let an unknown field through"
    scaled = _first(built, "ScaledObject")
    scaled["spec"]["minReplicas"] = 0  # an HPA's name for minReplicaCount
    assert any("minReplicas" in e for e in errors(scaled)), errors(scaled)
    auth = _first(built, "TriggerAuthentication")
    auth["spec"]["secretTargetRef"][0]["secret"] = "x"  # noqa: S105 (an unknown field, not a password)
    assert errors(auth)


def test_an_unknown_kind_fails() -> None:
    _tools()
    assert errors({"apiVersion": "example.com/v1", "kind": "Widget", "metadata": {"name": "w"}, "spec": {}})
    assert errors({"apiVersion": "keda.sh/v1alpha1", "kind": "ScaledWidget", "metadata": {"name": "w"}})


def test_a_number_as_keda_metadata_fails(built: dict[str, list[dict[str, Any]]]) -> None:
    scaled = _first(built, "ScaledObject")
    scaled["spec"]["triggers"][0]["metadata"]["lagCount"] = 10
    found = errors(scaled)
    assert any("lagCount" in e and "string" in e for e in found), found


def test_an_undocumented_trigger_key_fails(built: dict[str, list[dict[str, Any]]]) -> None:
    scaled = _first(built, "ScaledObject")
    scaled["spec"]["triggers"][0]["metadata"]["lagcount"] = "8"
    assert any("lagcount" in e for e in errors(scaled))
    prometheus = {"type": "prometheus", "metadata": {"serverAddress": "http://prometheus.monitoring:9090",
                                                     "query": "max(batchmesh_stage_replicas_desired)",
                                                     "threshold": "1", "activationThreshold": "0"}}
    scaled["spec"]["triggers"] = [prometheus]
    assert errors(scaled) == []
    prometheus["metadata"]["treshold"] = "1"
    assert any("treshold" in e for e in errors(scaled))


def _scaled_job(built: dict[str, list[dict[str, Any]]]) -> dict[str, Any]:
    return copy.deepcopy(next(d for d in built["jobs-scaledjob"] if d["kind"] == "ScaledJob"))


def test_a_faulty_scaled_job_fails(built: dict[str, list[dict[str, Any]]]) -> None:
    assert errors(_scaled_job(built)) == []
    unknown = _scaled_job(built)
    unknown["spec"]["maxReplicas"] = 10  # an HPA's name for maxReplicaCount
    assert any("maxReplicas" in e for e in errors(unknown)), errors(unknown)
    number = _scaled_job(built)
    number["spec"]["triggers"][0]["metadata"]["lagCount"] = 1
    assert any("lagCount" in e and "string" in e for e in errors(number)), errors(number)
    undocumented = _scaled_job(built)
    undocumented["spec"]["triggers"][0]["metadata"]["consumergroup"] = "checksum"
    assert any("consumergroup" in e for e in errors(undocumented)), errors(undocumented)
    wrong = _scaled_job(built)
    wrong["spec"]["scalingStrategy"]["strategy"] = "fastest"  # not one of KEDA's strategies
    assert any("strategy" in e for e in errors(wrong)), errors(wrong)
    pod = _scaled_job(built)
    pod["spec"]["jobTargetRef"]["template"]["spec"]["containers"][0]["imagePullPolcy"] = "Always"
    assert any("jobTargetRef" in e for e in errors(pod)), errors(pod)  # the Job's pod, checked as the API would
    restart = _scaled_job(built)
    restart["spec"]["jobTargetRef"]["backoffLimit"] = "2"
    assert errors(restart)


# -- policy: checkov's Kubernetes checks, once over every overlay's output -------------------------------------


def _checkov() -> str | None:
    found = shutil.which("checkov") or str(Path(sys.executable).with_name("checkov"))
    return found if Path(found).exists() else None


FAULTY = """apiVersion: apps/v1
kind: Deployment
metadata: {name: faulty, namespace: batchmesh}
spec:
  selector: {matchLabels: {app: faulty}}
  template:
    metadata: {labels: {app: faulty}}
    spec:
      containers:
      - name: app
        image: batchmesh:0.1.0
        securityContext: {privileged: true}
"""


@pytest.fixture(scope="module")
def checkov_report(built: dict[str, list[dict[str, Any]]], tmp_path_factory: pytest.TempPathFactory
                   ) -> dict[str, list[dict[str, Any]]]:
    """checkov (~10-30 s: it is slow to start) over every overlay's kustomize output plus one faulty manifest."""
    binary = _checkov()
    need("checkov (pip)", binary is not None)
    scan = tmp_path_factory.mktemp("checkov")
    seen: set[str] = set()
    for name, objects in built.items():  # each distinct object once: the overlays share most of theirs
        unique = [o for o in objects if (key := json.dumps(o, sort_keys=True)) not in seen and not seen.add(key)]
        (scan / f"{name}.yaml").write_text(yaml.safe_dump_all(unique, sort_keys=False))
    (scan / "faulty").mkdir()
    (scan / "faulty" / "faulty.yaml").write_text(FAULTY)
    env = os.environ | {"BC_SKIP_MAPPING": "TRUE", "CKV_SKIP_PACKAGE_UPDATE_CHECK": "true"}
    done = subprocess.run([str(binary), "-d", str(scan), "--framework", "kubernetes", "--quiet", "--compact",
                           "-o", "json", "--skip-download"], capture_output=True, text=True, env=env, timeout=240)
    assert done.stdout.strip(), f"checkov wrote nothing: {done.stderr[-2000:]}"
    reports = json.loads(done.stdout)
    reports = reports if isinstance(reports, list) else [reports]
    failed: dict[str, list[dict[str, Any]]] = {}
    for report in reports:
        for check in report["results"]["failed_checks"]:
            failed.setdefault(Path(check["file_path"]).name, []).append(check)
    return failed


def test_every_checkov_finding_is_fixed_or_justified(checkov_report: dict[str, list[dict[str, Any]]]) -> None:
    skips = yaml.safe_load(SKIPS.read_text())["skips"]
    assert all(s.get("reason", "").strip() and s.get("id") and s.get("kinds") for s in skips), \
        "every skip needs an id, the kinds it applies to and a reason"
    allowed = {(s["id"], kind) for s in skips for kind in s["kinds"]}
    used = set()
    unjustified = []
    for name, checks in checkov_report.items():
        if name == "faulty.yaml":
            continue
        for check in checks:
            key = (check["check_id"], check["resource"].split(".")[0])
            if key in allowed:
                used.add(key)
            else:
                unjustified.append(f"{name}: {check['check_id']} {check['check_name']} on {check['resource']}")
    assert unjustified == [], "fix these or justify them in k8s/checkov-skips.yaml:\n" + "\n".join(unjustified)
    assert allowed - used == set(), "skips no finding needs any more: remove them from k8s/checkov-skips.yaml"


def test_checkov_catches_a_faulty_manifest(checkov_report: dict[str, list[dict[str, Any]]]) -> None:
    found = {check["check_id"] for check in checkov_report.get("faulty.yaml", [])}
    # privileged, no resource limits, no probes, root allowed, no read-only root filesystem
    assert {"CKV_K8S_16", "CKV_K8S_11", "CKV_K8S_8", "CKV_K8S_22"} <= found, found


def test_strict_follows_kubeconforms_rules() -> None:
    from k8s_checks import strict

    schema = strict({"type": "object", "properties": {
        "port": {"x-kubernetes-int-or-string": True},
        "name": {"type": "string", "nullable": True},
        "free": {"type": "object", "properties": {"a": {"type": "string"}},
                 "x-kubernetes-preserve-unknown-fields": True},
        "map": {"type": "object", "additionalProperties": {"type": "string"}}}})
    assert schema["additionalProperties"] is False
    assert schema["properties"]["port"] == {"type": ["integer", "string"]}
    assert schema["properties"]["name"]["type"] == ["string", "null"]
    assert "additionalProperties" not in schema["properties"]["free"]
    assert schema["properties"]["map"]["additionalProperties"] == {"type": "string"}
