"""Prometheus alerting rules for batchmesh (a rule file: `groups` of `rules`), tested by promtool in
tests/promtool/alerts_test.yml.

Sources of the rules:
- rule file format and `for` semantics: Prometheus docs, "Alerting rules" and "Unit testing for rules";
- "alert on symptoms, keep `for` short for hard failures and longer for slow ones": the Prometheus docs'
  "Alerting" best practices and the SRE book's "Monitoring Distributed Systems";
- a backlog "not draining" is a backlog whose least-squares slope over 10 minutes (`deriv`) is not negative, held
  for 10 more minutes: a stuck stage (flat) or one falling behind (growing) fires, a stage in steady state with
  noisy arrivals does not (its slope changes sign), nor one catching up (negative slope).
Per-stage gauges come from both the stage processes and the manager, so they are taken with `max by (pipeline,
stage)`; counters are summed over processes."""

from __future__ import annotations

from typing import Any

ROLE_JOBS = "source|manager|router|barrier|worker"  # Prometheus jobs are named by role (barrier: join/reduce)
BY_STAGE = "(pipeline, stage)"


def _alert(name: str, expr: str, duration: str, severity: str, summary: str, description: str) -> dict[str, Any]:
    rule: dict[str, Any] = {"alert": name, "expr": expr}
    if duration != "0m":
        rule["for"] = duration
    rule["labels"] = {"severity": severity}
    rule["annotations"] = {"summary": summary, "description": description}
    return rule


def rules() -> dict[str, Any]:
    """The rule file, as plain data (serialise with yaml.safe_dump)."""
    return {"groups": [{"name": "batchmesh", "rules": [
        _alert("BatchmeshDeadLetters",
               f"sum by {BY_STAGE} (increase(batchmesh_items_dead_lettered_total[5m])) > 0", "0m", "warning",
               "Stage {{ $labels.stage }} is dead-lettering items",
               # increase() extrapolates (1.136 for one item): a whole number; dlq list needs the spec's path
               '{{ $value | printf "%.0f" }} items of pipeline {{ $labels.pipeline }} went to the dead-letter stream '
               "of stage {{ $labels.stage }} in the last 5 minutes. See `batchmesh dlq list PIPELINE.yaml --stage "
               "{{ $labels.stage }}` (PIPELINE.yaml: the spec of pipeline {{ $labels.pipeline }})."),
        _alert("BatchmeshBacklogNotDraining",
               f"max by {BY_STAGE} (batchmesh_backlog_items) > 0 "
               f"and max by {BY_STAGE} (deriv(batchmesh_backlog_items[10m])) >= 0", "10m", "warning",
               "Backlog of stage {{ $labels.stage }} is not draining",
               "Stage {{ $labels.stage }} of pipeline {{ $labels.pipeline }} has {{ $value | humanize }} entries "
               "not acknowledged and its backlog has not shrunk for 20 minutes: it is stuck or too slow for its "
               "arrivals (add replicas, or look for a stuck consumer)."),
        _alert("BatchmeshStageWithoutConsumers",
               f"max by {BY_STAGE} (batchmesh_backlog_items) > 0 "
               f"and max by {BY_STAGE} (batchmesh_stage_consumers) == 0", "2m", "critical",
               "Stage {{ $labels.stage }} has a backlog and no consumer",
               "Stage {{ $labels.stage }} of pipeline {{ $labels.pipeline }} has {{ $value | humanize }} entries "
               "waiting and no consumer has been reading its input for 2 minutes."),
        _alert("BatchmeshRoleDown", f'up{{job=~"{ROLE_JOBS}"}} == 0', "1m", "critical",
               "Role {{ $labels.job }} at {{ $labels.instance }} is down",
               "Prometheus cannot scrape {{ $labels.job }} {{ $labels.stage }} at {{ $labels.instance }} "
               "for 1 minute: the process is down or its /metrics does not answer."),
        _alert("BatchmeshRedisDown", "min by (pipeline, role) (batchmesh_redis_up) == 0", "30s", "critical",
               "Redis is unreachable from {{ $labels.role }}",
               "The {{ $labels.role }} role of pipeline {{ $labels.pipeline }} has not reached Redis for 30 "
               "seconds: every stage behind it has stopped."),
        _alert("BatchmeshRedisHealthAbsent", "absent(batchmesh_redis_up)", "1m", "critical",
               "No batchmesh role reports Redis health",
               "No role exports batchmesh_redis_up for 1 minute: every role is down or not scraped."),
    ]}]}


def alert_names() -> list[str]:
    return [rule["alert"] for group in rules()["groups"] for rule in group["rules"]]
