"""How a work stage's Deployment is scaled on Kubernetes: KEDA (`ScaledObject` with a `redis-streams` lag trigger,
a `TriggerAuthentication` for Redis' password) or, for clusters without KEDA, an HPA on the manager's
`batchmesh_stage_replicas_desired` through prometheus-adapter (its rule as a ConfigMap). Plain dicts."""

from __future__ import annotations

from typing import Any

from services.core.k8s_objects import (
    MONITORING_NAMESPACE,
    NAMESPACE,
    REDIS_SECRET,
    labels,
    meta,
    network_policy,
    selector,
)
from services.core.keys import Keys
from services.core.spec import Pipeline, WorkSpec

REDIS_ADDRESS = f"redis.{NAMESPACE}.svc:6379"  # as KEDA's operator (namespace keda) reaches it
KEDA_NAMESPACE = "keda"
TRIGGER_AUTH = "batchmesh-redis"
LAG_PER_REPLICA = 4  # entries of lag per item slot: the local runner's ceil(backlog / (concurrency × 4))
POLLING_S = 10
COOLDOWN_S = 300  # KEDA: quiet this long before an idle stage goes to 0 (min: 0)
SCALE_DOWN_WINDOW_S = 120  # KEDA's HPA and ours: stabilisation window before scaling down (no flapping)
DESIRED_METRIC = "batchmesh_stage_replicas_desired"
PROMETHEUS_URL = "http://prometheus.monitoring.svc:9090"  # the cluster's Prometheus: patch it in your overlay


def lag_count(work: WorkSpec) -> int:
    return work.concurrency * LAG_PER_REPLICA


def _behavior() -> dict[str, Any]:
    """Scale up at once (4 pods per 15 s), down one pod a minute after SCALE_DOWN_WINDOW_S of lower wishes."""
    return {"scaleDown": {"stabilizationWindowSeconds": SCALE_DOWN_WINDOW_S,
                          "policies": [{"type": "Pods", "value": 1, "periodSeconds": 60}]},
            "scaleUp": {"stabilizationWindowSeconds": 0,
                        "policies": [{"type": "Pods", "value": 4, "periodSeconds": 15}]}}


def _no_flapping() -> dict[str, Any]:
    return {"horizontalPodAutoscalerConfig": {"behavior": _behavior()}}


def trigger_authentication() -> dict[str, Any]:
    return {"apiVersion": "keda.sh/v1alpha1", "kind": "TriggerAuthentication",
            "metadata": meta(TRIGGER_AUTH, labels(TRIGGER_AUTH, None, "redis")),
            "spec": {"secretTargetRef": [{"parameter": "password", "name": REDIS_SECRET, "key": "password"}]}}


def redis_from_keda() -> dict[str, Any]:
    """KEDA's operator reads the streams' lag (XINFO GROUPS): let it reach Redis."""
    lab = labels("redis", None, "redis")
    keda = {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": KEDA_NAMESPACE}}}
    return network_policy("redis-from-keda", lab, selector(lab), [keda], [6379])


def scaled_object(pipeline: Pipeline, stage: str, work: WorkSpec, deployment: str,
                  lab: dict[str, str]) -> dict[str, Any]:
    """Replicas = ceil(lag / lagCount) within [replicas.min, replicas.max]; lag is XINFO GROUPS' (Redis 7+): entries
    of the stage's input stream not yet delivered to its consumer group (the stage's name). With `min: 0` the stage
    is at zero while its lag is 0 and wakes on the first entry (activationLagCount "0")."""
    metadata = {
        "address": REDIS_ADDRESS,
        "stream": Keys(pipeline.name).stream(work.input),
        "consumerGroup": stage,
        "lagCount": str(lag_count(work)),
        "activationLagCount": "0",
        "databaseIndex": "0",
        "enableTLS": "false",
    }
    return {
        "apiVersion": "keda.sh/v1alpha1", "kind": "ScaledObject", "metadata": meta(deployment, lab),
        "spec": {
            "scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": deployment},
            "minReplicaCount": work.replicas.min, "maxReplicaCount": work.replicas.max,
            "pollingInterval": POLLING_S, "cooldownPeriod": COOLDOWN_S, "advanced": _no_flapping(),
            "triggers": [{"type": "redis-streams", "name": "lag", "metadata": metadata,
                          "authenticationRef": {"name": TRIGGER_AUTH}}],
        },
    }


def prometheus_scaled_object(pipeline: Pipeline, stage: str, work: WorkSpec, deployment: str,
                             lab: dict[str, str]) -> dict[str, Any]:
    """KEDA on the manager's decision instead of the raw lag: a Prometheus trigger on
    batchmesh_stage_replicas_desired{pipeline, stage} (AverageValue, threshold 1: replicas = the decision), active
    while the decision is above 0 (so `min: 0` still scales to zero). Needs no Redis access from KEDA."""
    query = f'max({DESIRED_METRIC}{{pipeline="{pipeline.name}",stage="{stage}"}})'
    metadata = {"serverAddress": PROMETHEUS_URL, "query": query, "threshold": "1", "activationThreshold": "0",
                "ignoreNullValues": "true"}
    return {
        "apiVersion": "keda.sh/v1alpha1", "kind": "ScaledObject", "metadata": meta(deployment, lab),
        "spec": {
            "scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": deployment},
            "minReplicaCount": work.replicas.min, "maxReplicaCount": work.replicas.max,
            "pollingInterval": POLLING_S, "cooldownPeriod": COOLDOWN_S, "advanced": _no_flapping(),
            "triggers": [{"type": "prometheus", "name": "decision", "metricType": "AverageValue",
                          "metadata": metadata}],
        },
    }


def hpa(pipeline: Pipeline, stage: str, work: WorkSpec, deployment: str, lab: dict[str, str]) -> dict[str, Any]:
    """An HPA following the manager's decision: External metric batchmesh_stage_replicas_desired{pipeline, stage},
    target AverageValue 1, so replicas = the decision (clamped to [max(min, 1), max]; an HPA cannot reach 0)."""
    return {
        "apiVersion": "autoscaling/v2", "kind": "HorizontalPodAutoscaler", "metadata": meta(deployment, lab),
        "spec": {
            "scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": deployment},
            "minReplicas": max(work.replicas.min, 1), "maxReplicas": work.replicas.max,
            "metrics": [{"type": "External", "external": {
                "metric": {"name": DESIRED_METRIC,
                           "selector": {"matchLabels": {"pipeline": pipeline.name, "stage": stage}}},
                "target": {"type": "AverageValue", "averageValue": "1"}}}],
            "behavior": _behavior(),
        },
    }


def adapter_rules() -> dict[str, Any]:
    """prometheus-adapter's external rule for the decision metric (the adapter adds the HPA's namespace to the
    query: the series carry `namespace` from the usual pod-annotation scrape job's relabelling)."""
    return {"externalRules": [{
        "seriesQuery": f'{DESIRED_METRIC}{{namespace!="",pipeline!="",stage!=""}}',
        "resources": {"overrides": {"namespace": {"resource": "namespace"}}},
        "name": {"matches": f"^{DESIRED_METRIC}$", "as": DESIRED_METRIC},
        "metricsQuery": "max(<<.Series>>{<<.LabelMatchers>>}) by (pipeline, stage)",
    }]}


def scrape_policy(pipeline: str) -> dict[str, Any]:
    """The cluster's Prometheus (namespace `monitoring`) scrapes the routers', barriers', workers' and manager's
    /metrics; nothing else reaches them. The source is left out: only the manager reaches it."""
    lab = labels(f"{pipeline}-scrape", pipeline, "mesh")
    prom = {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": MONITORING_NAMESPACE}}}
    policy = network_policy(f"{pipeline}-scrape", lab, {}, [prom], [9400, 8081])
    policy["spec"]["podSelector"] = {"matchLabels": {"batchmesh.io/pipeline": pipeline},
                                     "matchExpressions": [{"key": "batchmesh.io/role", "operator": "NotIn",
                                                           "values": ["source"]}]}
    return policy
