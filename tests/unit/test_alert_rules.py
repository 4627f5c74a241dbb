"""The alert rules (services/render/alerts.py) pass `promtool check rules` and the unit tests in
tests/promtool/alerts_test.yml (`promtool test rules`), every alert there has a firing and a not-firing case,
and a rule changed to miss its case fails those tests (the tests can fail)."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from services.render.alerts import alert_names, rules

ROOT = Path(__file__).resolve().parents[2]
TESTS = ROOT / "tests" / "promtool" / "alerts_test.yml"


@pytest.fixture(scope="module")
def promtool() -> str:
    found = shutil.which("promtool")
    if not found:
        reason = "promtool not on PATH (Debian: apt-get install prometheus)"
        if os.environ.get("CI") == "true":
            pytest.fail(reason)
        pytest.skip(reason)
    return found


def _promtool_test(promtool: str, tmp: Path, rule_file: dict[str, Any]) -> subprocess.CompletedProcess[str]:
    """`promtool test rules` on the committed test cases, pointed at `rule_file` written to `tmp`."""
    (tmp / "alerts.yml").write_text(yaml.safe_dump(rule_file, sort_keys=False))
    cases = yaml.safe_load(TESTS.read_text())
    cases["rule_files"] = ["alerts.yml"]
    (tmp / "alerts_test.yml").write_text(yaml.safe_dump(cases, sort_keys=False))
    return subprocess.run([promtool, "test", "rules", "alerts_test.yml"], cwd=tmp, capture_output=True, text=True,
                          timeout=60)


def test_rules_are_valid(promtool: str, tmp_path: Path) -> None:
    path = tmp_path / "alerts.yml"
    path.write_text(yaml.safe_dump(rules(), sort_keys=False))
    checked = subprocess.run([promtool, "check", "rules", str(path)], capture_output=True, text=True, timeout=60)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert f"{len(alert_names())} rules found" in checked.stdout


def test_rules_pass_their_unit_tests(promtool: str, tmp_path: Path) -> None:
    result = _promtool_test(promtool, tmp_path, rules())
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_committed_test_file_runs_on_the_committed_rules(promtool: str) -> None:
    assert yaml.safe_load(TESTS.read_text())["rule_files"] == ["../../compose/prometheus/alerts.yml"]
    result = subprocess.run([promtool, "test", "rules", str(TESTS)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr


def test_every_alert_has_a_firing_and_a_quiet_case() -> None:
    cases = [case for group in yaml.safe_load(TESTS.read_text())["tests"] for case in group["alert_rule_test"]]
    names = set(alert_names())
    assert {case["alertname"] for case in cases} == names
    for name in names:
        expected = [case["exp_alerts"] for case in cases if case["alertname"] == name]
        assert any(expected) and not all(expected), f"{name}: needs a firing and a not-firing case"


def test_every_alert_has_severity_and_stage_aware_annotations() -> None:
    for group in rules()["groups"]:
        for rule in group["rules"]:
            assert rule["labels"]["severity"] in {"warning", "critical"}
            assert rule["annotations"]["summary"] and rule["annotations"]["description"]
            if "stage" in rule["expr"]:
                assert "{{ $labels.stage }}" in rule["annotations"]["description"], rule["alert"]


@pytest.mark.parametrize("alert, old, new", [
    ("BatchmeshDeadLetters", "> 0", "> 5"),
    ("BatchmeshBacklogNotDraining", ">= 0", "> 0"),
    ("BatchmeshStageWithoutConsumers", "== 0", "< 0"),
    ("BatchmeshRoleDown", 'job=~"source|manager|router|barrier|worker"', 'job=~".+"'),
    ("BatchmeshRedisDown", "min by", "max by"),
])
def test_a_wrong_rule_fails_its_unit_tests(promtool: str, tmp_path: Path, alert: str, old: str, new: str) -> None:
    broken = rules()
    rule = next(r for g in broken["groups"] for r in g["rules"] if r["alert"] == alert)
    assert old in rule["expr"]
    rule["expr"] = rule["expr"].replace(old, new)
    result = _promtool_test(promtool, tmp_path, broken)
    assert result.returncode != 0 and f"alertname: {alert}" in result.stdout + result.stderr
