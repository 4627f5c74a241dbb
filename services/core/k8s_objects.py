"""Builders of the plain Kubernetes objects `batchmesh render k8s` emits (dicts; YAML only in services/render/k8s.py).

Every pod is hardened the same way (the Pod Security Standards' `restricted` profile): non-root (uid 10001, the
images' user), read-only root filesystem with an emptyDir on /tmp, no privilege escalation, every capability
dropped, `RuntimeDefault` seccomp, no service-account token. Labels: `app.kubernetes.io/name` (the object's own
name, also the selector), `app.kubernetes.io/instance` (the pipeline), `app.kubernetes.io/part-of: batchmesh`,
`batchmesh.io/pipeline`, `batchmesh.io/role` (source, manager, router, barrier, worker, rq, redis) and
`batchmesh.io/stage`."""

from __future__ import annotations

from typing import Any

NAMESPACE = "batchmesh"
PART_OF = {"app.kubernetes.io/part-of": "batchmesh"}
SERVICE_ACCOUNT = "batchmesh"
REDIS_SECRET = "batchmesh-redis"  # noqa: S105 (a Secret's name) key `password`: created by the user, never committed
REDIS_PASSWORD_ENV = "BATCHMESH_REDIS_PASSWORD"  # noqa: S105 (an env var's name)
UID = 10001  # services/Dockerfile's user
MONITORING_NAMESPACE = "monitoring"  # where the cluster's Prometheus runs (the scrape NetworkPolicy admits it)

# requests / limits per role family
RESOURCES = {
    "light": {"requests": {"cpu": "50m", "memory": "128Mi"}, "limits": {"cpu": "500m", "memory": "256Mi"}},
    "worker": {"requests": {"cpu": "250m", "memory": "256Mi"}, "limits": {"cpu": "1", "memory": "1Gi"}},
    "redis": {"requests": {"cpu": "100m", "memory": "256Mi"}, "limits": {"cpu": "1", "memory": "1Gi"}},
}


def meta(name: str, labels: dict[str, str], annotations: dict[str, str] | None = None) -> dict[str, Any]:
    out: dict[str, Any] = {"name": name, "labels": dict(labels)}
    if annotations:
        out["annotations"] = dict(annotations)
    return out


def labels(name: str, pipeline: str | None, role: str, stage: str | None = None) -> dict[str, str]:
    out = {"app.kubernetes.io/name": name}
    if pipeline:
        out["app.kubernetes.io/instance"] = pipeline
    out |= PART_OF
    if pipeline:
        out["batchmesh.io/pipeline"] = pipeline
    out["batchmesh.io/role"] = role
    if stage:
        out["batchmesh.io/stage"] = stage
    return out


def selector(lab: dict[str, str]) -> dict[str, str]:
    return {k: lab[k] for k in ("app.kubernetes.io/name", "app.kubernetes.io/part-of")}


def container_security() -> dict[str, Any]:
    return {"runAsNonRoot": True, "runAsUser": UID, "runAsGroup": UID, "readOnlyRootFilesystem": True,
            "allowPrivilegeEscalation": False, "privileged": False, "capabilities": {"drop": ["ALL"]},
            "seccompProfile": {"type": "RuntimeDefault"}}


def pod_security() -> dict[str, Any]:
    return {"runAsNonRoot": True, "runAsUser": UID, "runAsGroup": UID, "fsGroup": UID,
            "seccompProfile": {"type": "RuntimeDefault"}}


def http_probes(port: int) -> dict[str, Any]:
    get = {"path": "/healthz", "port": port}
    return {
        "readinessProbe": {"httpGet": dict(get), "periodSeconds": 5, "timeoutSeconds": 5, "failureThreshold": 3},
        "livenessProbe": {"httpGet": dict(get), "initialDelaySeconds": 30, "periodSeconds": 10,
                          "timeoutSeconds": 8, "failureThreshold": 3},
    }


def scrape_annotations(port: int) -> dict[str, str]:
    return {"prometheus.io/scrape": "true", "prometheus.io/port": str(port), "prometheus.io/path": "/metrics"}


def pod_spec(containers: list[dict[str, Any]], volumes: list[dict[str, Any]], *,
             grace: int = 30) -> dict[str, Any]:
    return {"serviceAccountName": SERVICE_ACCOUNT, "automountServiceAccountToken": False,
            "enableServiceLinks": False, "securityContext": pod_security(), "terminationGracePeriodSeconds": grace,
            "containers": containers, "volumes": [{"name": "tmp", "emptyDir": {"sizeLimit": "256Mi"}}, *volumes]}


def deployment(name: str, lab: dict[str, str], pod: dict[str, Any], *, replicas: int | None,
               annotations: dict[str, str] | None = None) -> dict[str, Any]:
    """`replicas` None: left to the autoscaler (KEDA or the HPA owns the field; `kubectl apply` never resets it)."""
    spec: dict[str, Any] = {}
    if replicas is not None:
        spec["replicas"] = replicas
    template: dict[str, Any] = {"labels": dict(lab)} | ({"annotations": dict(annotations)} if annotations else {})
    spec |= {"revisionHistoryLimit": 3, "selector": {"matchLabels": selector(lab)},
             "strategy": {"type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": 0, "maxSurge": 1}},
             "template": {"metadata": template, "spec": pod}}
    return {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": meta(name, lab), "spec": spec}


def service(name: str, lab: dict[str, str], ports: dict[str, int], *, headless: bool = False,
            select: dict[str, str] | None = None) -> dict[str, Any]:
    spec: dict[str, Any] = {"type": "ClusterIP"}
    if headless:
        spec["clusterIP"] = "None"
    spec |= {"selector": select or selector(lab),
             "ports": [{"name": pname, "port": port, "targetPort": port, "protocol": "TCP"}
                       for pname, port in ports.items()]}
    return {"apiVersion": "v1", "kind": "Service", "metadata": meta(name, lab), "spec": spec}


def pdb(name: str, lab: dict[str, str]) -> dict[str, Any]:
    return {"apiVersion": "policy/v1", "kind": "PodDisruptionBudget", "metadata": meta(name, lab),
            "spec": {"minAvailable": 1, "selector": {"matchLabels": selector(lab)}}}


def network_policy(name: str, lab: dict[str, str], pods: dict[str, str], sources: list[dict[str, Any]],
                   ports: list[int]) -> dict[str, Any]:
    """Ingress to `pods` only from `sources` (NetworkPolicyPeer dicts) on `ports`; egress is not restricted."""
    return {"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy", "metadata": meta(name, lab),
            "spec": {"podSelector": {"matchLabels": dict(pods)}, "policyTypes": ["Ingress"],
                     "ingress": [{"from": sources, "ports": [{"protocol": "TCP", "port": p} for p in ports]}]}}


def namespace() -> dict[str, Any]:
    # the pods meet the `restricted` Pod Security Standard: enforce it
    lab = PART_OF | {"pod-security.kubernetes.io/enforce": "restricted",
                     "pod-security.kubernetes.io/enforce-version": "latest"}
    return {"apiVersion": "v1", "kind": "Namespace", "metadata": meta(NAMESPACE, lab)}


def service_account() -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "ServiceAccount",
            "metadata": meta(SERVICE_ACCOUNT, labels(SERVICE_ACCOUNT, None, "mesh")),
            "automountServiceAccountToken": False}


REDIS_ARGS = ["redis-server", "--dir", "/data", "--appendonly", "yes", "--appendfsync", "always",
              "--requirepass", "$(REDIS_PASSWORD)"]


def redis() -> list[dict[str, Any]]:
    """Redis 7 as a one-replica StatefulSet: AOF (fsync always, as compose) on a PVC, the password from the
    `batchmesh-redis` Secret (`--requirepass`; redis-cli reads REDISCLI_AUTH), reachable only by the mesh's pods
    (and, in the KEDA overlays, KEDA's operator)."""
    lab = labels("redis", None, "redis")
    secret = {"secretKeyRef": {"name": REDIS_SECRET, "key": "password"}}
    container = {
        "name": "redis", "image": "redis:7", "imagePullPolicy": "IfNotPresent", "args": list(REDIS_ARGS),
        "env": [{"name": "REDIS_PASSWORD", "valueFrom": secret}, {"name": "REDISCLI_AUTH", "valueFrom": secret}],
        "ports": [{"name": "redis", "containerPort": 6379, "protocol": "TCP"}],
        "readinessProbe": {"exec": {"command": ["sh", "-c", "redis-cli ping | grep -q PONG"]},
                           "periodSeconds": 5, "timeoutSeconds": 3},
        "livenessProbe": {"tcpSocket": {"port": 6379}, "initialDelaySeconds": 15, "periodSeconds": 10},
        "resources": RESOURCES["redis"], "securityContext": container_security(),
        "volumeMounts": [{"name": "data", "mountPath": "/data"}, {"name": "tmp", "mountPath": "/tmp"}],
    }
    pod = pod_spec([container], [], grace=30)
    statefulset = {
        "apiVersion": "apps/v1", "kind": "StatefulSet", "metadata": meta("redis", lab),
        "spec": {"serviceName": "redis", "replicas": 1, "selector": {"matchLabels": selector(lab)},
                 "template": {"metadata": {"labels": lab}, "spec": pod},
                 "volumeClaimTemplates": [{
                     "metadata": {"name": "data", "labels": lab},
                     "spec": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "2Gi"}}}}]},
    }
    mesh = {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": NAMESPACE}},
            "podSelector": {"matchLabels": dict(PART_OF)}}
    return [statefulset, service("redis", lab, {"redis": 6379}),
            network_policy("redis", lab, selector(lab), [mesh], [6379]), pdb("redis", lab)]
