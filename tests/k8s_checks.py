"""Offline validation of Kubernetes manifests (issue 9, part 4), shared by the k8s tests (and, next, the objects the
`kubernetes` executor sends):

- built-in kinds: `kubernetes-validate --strict` against Kubernetes `K8S_VERSION`'s schemas (unknown fields and
  wrong types fail; a kind without a schema fails too, never a warning);
- KEDA kinds: the CRDs' openAPIV3Schema from ../shared/schemas/keda-v2.20.2/, made strict as kubeconform does
  (`additionalProperties: false` where `properties` is given and no `x-kubernetes-preserve-unknown-fields`;
  `x-kubernetes-int-or-string` = integer or string; `nullable` admits null), with jsonschema;
- KEDA trigger metadata: every key one KEDA documents for the trigger type (`TRIGGER_KEYS`), every value a string
  (the CRD's schema checks the strings too);
- a ScaledJob's `jobTargetRef` also as the batch/v1 Job KEDA makes from it, with `kubernetes-validate --strict`."""

from __future__ import annotations

import copy
import os
import shutil
import subprocess
from functools import cache
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
KEDA_SCHEMAS = ROOT / ".." / "shared" / "schemas" / "keda-v2.20.2"
K8S_VERSION = "1.30.0"
KEDA_KINDS = {"ScaledObject": "scaledobjects", "ScaledJob": "scaledjobs",
              "TriggerAuthentication": "triggerauthentications",
              "ClusterTriggerAuthentication": "clustertriggerauthentications"}
# keda.sh/docs/2.x/scalers/redis-streams and .../prometheus: the keys each trigger's metadata may hold
TRIGGER_KEYS = {
    "redis-streams": {"address", "addressFromEnv", "host", "hostFromEnv", "port", "portFromEnv", "usernameFromEnv",
                      "passwordFromEnv", "stream", "consumerGroup", "pendingEntriesCount", "streamLength", "lagCount",
                      "activationLagCount", "activationValue", "databaseIndex", "enableTLS", "unsafeSsl"},
    "prometheus": {"serverAddress", "query", "queryParameters", "threshold", "activationThreshold", "namespace",
                   "customHeaders", "ignoreNullValues", "unsafeSsl", "timeout", "authModes"},
}
REQUIRED_TRIGGER_KEYS = {"redis-streams": {"stream"}, "prometheus": {"serverAddress", "query", "threshold"}}


def need(what: str, available: bool) -> None:
    """A missing tool or schema: a failure with CI=true, else a skip with the reason."""
    if available:
        return
    if os.environ.get("CI") == "true":
        pytest.fail(f"{what} is missing (CI must have it)")
    pytest.skip(f"{what} is missing")


def strict(schema: Any) -> Any:
    """A CRD's structural schema as a strict JSON Schema (kubeconform's openapi2jsonschema rules)."""
    if isinstance(schema, list):
        return [strict(item) for item in schema]
    if not isinstance(schema, dict):
        return schema
    out = {key: strict(value) for key, value in schema.items()}
    if out.pop("x-kubernetes-int-or-string", False):
        out.pop("type", None)
        out.pop("format", None)
        out["type"] = ["integer", "string"]
    if out.pop("nullable", False):
        kind = out.get("type")
        if isinstance(kind, str):
            out["type"] = [kind, "null"]
        elif isinstance(kind, list) and "null" not in kind:
            out["type"] = [*kind, "null"]
        if "enum" in out:
            out["enum"] = [*out["enum"], None]
    preserve = out.pop("x-kubernetes-preserve-unknown-fields", False)
    if "properties" in out and not preserve and "additionalProperties" not in out:
        out["additionalProperties"] = False
    return out


@cache
def keda_validator(kind: str, version: str) -> Any:
    import jsonschema

    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)  # libyaml: the ScaledJob CRD is 1 MB (3 s in Python)
    crd = yaml.load((KEDA_SCHEMAS / f"keda.sh_{KEDA_KINDS[kind]}.yaml").read_text(), Loader=loader)  # noqa: S506
    for served in crd["spec"]["versions"]:
        if served["name"] == version:
            schema = strict(copy.deepcopy(served["schema"]["openAPIV3Schema"]))
            schema["properties"]["apiVersion"] = {"const": f"keda.sh/{version}"}
            schema["properties"]["kind"] = {"const": kind}
            schema["required"] = sorted({*schema.get("required", []), "apiVersion", "kind", "metadata", "spec"})
            jsonschema.Draft7Validator.check_schema(schema)
            return jsonschema.Draft7Validator(schema)
    raise KeyError(f"{kind}: no served version {version} in the KEDA CRD")


def trigger_errors(doc: dict[str, Any]) -> list[str]:
    errors = []
    for i, trigger in enumerate(doc.get("spec", {}).get("triggers", [])):
        kind, metadata = trigger.get("type"), trigger.get("metadata", {})
        if kind not in TRIGGER_KEYS:
            errors.append(f"triggers[{i}]: trigger type {kind!r} has no documented key list here")
            continue
        for key, value in metadata.items():
            if key not in TRIGGER_KEYS[kind]:
                errors.append(f"triggers[{i}].metadata.{key}: not a key KEDA documents for {kind}")
            if not isinstance(value, str):
                errors.append(f"triggers[{i}].metadata.{key}: {value!r} is not a string")
        missing = REQUIRED_TRIGGER_KEYS[kind] - set(metadata)
        if missing:
            errors.append(f"triggers[{i}]: {kind} needs {sorted(missing)}")
        if kind == "redis-streams" and "lagCount" in metadata and "activationLagCount" not in metadata:
            errors.append(f"triggers[{i}]: lagCount without activationLagCount")
    return errors


def errors(doc: dict[str, Any]) -> list[str]:
    """Every problem with one object (empty: valid)."""
    import kubernetes_validate

    kind, api = doc.get("kind"), str(doc.get("apiVersion", ""))
    where = f"{kind}/{doc.get('metadata', {}).get('name')}"
    if api.startswith("keda.sh/"):
        if kind not in KEDA_KINDS:
            return [f"{where}: unknown KEDA kind"]
        out = [f"{where}: {'/'.join(map(str, e.absolute_path))}: {e.message}"
               for e in keda_validator(kind, api.split("/", 1)[1]).iter_errors(doc)]
        if kind == "ScaledJob" and isinstance(doc.get("spec", {}).get("jobTargetRef"), dict):
            out += [f"{where}: jobTargetRef: {e}" for e in errors(job_of(doc))]  # the Job KEDA makes, as the API would
        return out + [f"{where}: {e}" for e in trigger_errors(doc)]
    try:
        kubernetes_validate.validate(doc, K8S_VERSION, strict=True)
    except kubernetes_validate.SchemaNotFoundError as exc:
        return [f"{where}: no schema for this kind in Kubernetes {K8S_VERSION} (unknown kind): {exc}"]
    except kubernetes_validate.ValidationError as exc:
        return [f"{where}: {'/'.join(map(str, exc.path))}: {exc.message}"]
    return []


def job_of(scaled_job: dict[str, Any]) -> dict[str, Any]:
    """The batch/v1 Job a ScaledJob's jobTargetRef makes (its spec is a JobSpec): checked by kubernetes-validate
    --strict like every built-in kind, on top of the CRD's own (looser) copy of the pod schema."""
    meta = scaled_job.get("metadata", {})
    return {"apiVersion": "batch/v1", "kind": "Job", "metadata": {"name": meta.get("name", "job")},
            "spec": scaled_job["spec"]["jobTargetRef"]}


def kustomize(directory: Path) -> list[dict[str, Any]]:
    done = subprocess.run(["kubectl", "kustomize", str(directory)], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, f"kubectl kustomize {directory} failed: {done.stderr}"
    return [doc for doc in yaml.safe_load_all(done.stdout) if doc]


def have_kubectl() -> bool:
    return shutil.which("kubectl") is not None
