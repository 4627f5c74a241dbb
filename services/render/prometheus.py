"""Prometheus scrape configuration for a pipeline deployed by compose (`compose/prometheus/<pipeline>.yml`).

One job per role kind (`source`, `manager`, `router`, `worker`; the Grafana dashboards and alert rules select
on these job names), every target labelled `pipeline`, `stage` and `role`. Work stages run replicated, so their
services are discovered by DNS (`dns_sd_configs`, type A): Docker's embedded DNS answers a service name with every
replica's address, and each replica becomes its own target; the stage label comes from the queried name."""

from __future__ import annotations

from typing import Any

from services.core.spec import Pipeline

from .roles import MANAGER_PORT, METRICS_PORT, SOURCE_PORT, roles

SCRAPE_INTERVAL = "5s"
ALERTS_PATH = "/etc/prometheus/alerts.yml"


def _static(target: str, pipeline: Pipeline, role: str, stage: str = "") -> dict[str, Any]:
    return {"targets": [target], "labels": {"pipeline": pipeline.name, "stage": stage, "role": role}}


def scrape_config(pipeline: Pipeline) -> dict[str, Any]:
    mesh = roles(pipeline, "-", source_url="-", redis_url="-")
    routers = [r for r in mesh if r.kind == "router"]
    workers = [r for r in mesh if r.kind == "worker"]
    barriers = set(pipeline.barrier_stages())
    jobs: list[dict[str, Any]] = [
        {"job_name": "source", "static_configs": [_static(f"source:{SOURCE_PORT}", pipeline, "source")]},
        {"job_name": "manager", "static_configs": [_static(f"manager:{MANAGER_PORT}", pipeline, "manager")]},
    ]
    if routers:
        jobs.append({"job_name": "router", "static_configs": [
            _static(f"{r.name}:{METRICS_PORT}", pipeline, "barrier" if r.stage in barriers else "router",
                    r.stage or "")
            for r in routers]})
    if workers:
        jobs.append({
            "job_name": "worker",
            "dns_sd_configs": [{"names": [r.name for r in workers], "type": "A", "port": METRICS_PORT,
                                "refresh_interval": "10s"}],
            "relabel_configs": [
                {"source_labels": ["__meta_dns_name"], "regex": "worker-(.+)", "target_label": "stage",
                 "replacement": "$1"},
                {"target_label": "pipeline", "replacement": pipeline.name},
                {"target_label": "role", "replacement": "worker"},
            ],
        })
    return {
        "global": {"scrape_interval": SCRAPE_INTERVAL, "evaluation_interval": SCRAPE_INTERVAL},
        "rule_files": [ALERTS_PATH],
        "scrape_configs": jobs,
    }
