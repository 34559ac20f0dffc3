"""Prometheus rules and configuration (promtool) and the Grafana dashboard's shape.

Which metrics they name, and that a running daemon serves them, is ``test_metric_names.py``.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess

import pytest

from tests.deploy.rules import ALERTS, Rule, rules

PROMETHEUS = ALERTS.parent
DASHBOARD = ALERTS.parents[1] / "grafana" / "dashboard.json"
DATASOURCE = {"type": "prometheus", "uid": "${DS_PROMETHEUS}"}


def promtool(*args: str) -> str:
    tool = shutil.which("promtool")
    assert tool, "promtool is missing: .ci/run installs it (apt-get install prometheus)"
    proc = subprocess.run([tool, *args], cwd=PROMETHEUS, capture_output=True, text=True, timeout=60)
    output = proc.stdout + proc.stderr
    print(output)
    assert proc.returncode == 0, output
    return output


def test_promtool_checks_the_rules_and_reads_as_many_as_the_tests_do() -> None:
    output = promtool("check", "rules", "alerts.yml")
    found = re.search(r"SUCCESS: (\d+) rules found", output)
    assert found, output
    assert int(found.group(1)) == len(rules()) >= 10


def test_promtool_checks_the_example_configuration_with_the_rules() -> None:
    output = promtool("check", "config", "prometheus.yml")
    assert "SUCCESS: 1 rule files found" in output
    assert "job_name: batch-orchestrator" in (PROMETHEUS / "prometheus.yml").read_text()


def test_alerts_fire_while_the_problem_lasts_and_resolve_after() -> None:
    # tick late, target paused, daemon down, API error rate: firing, then resolved
    tested = re.findall(r"alertname: (\w+)", (PROMETHEUS / "alerts.test.yml").read_text())
    assert {"OrchestratorTickLate", "OrchestratorTargetPaused"} <= set(tested)
    assert "SUCCESS" in promtool("test", "rules", "alerts.test.yml")


@pytest.mark.parametrize("rule", rules(), ids=lambda r: r.alert)
def test_each_alert_has_a_duration_a_severity_and_a_runbook_hint(rule: Rule) -> None:
    text = rule.text
    assert re.search(r"^\s+for: \d+[smh]$", text, re.M), "a for: duration"
    assert re.search(r"^\s+severity: (critical|warning)$", text, re.M)
    assert re.search(r"^\s+summary: ", text, re.M)
    description = text.split("description:", 1)[1]
    # what to run: a command of ours, or systemd's
    assert re.search(r"`(orchestrator|systemctl|journalctl|curl|psql) [^`]+`", description)


def test_the_dashboard_is_importable_and_every_query_uses_the_datasource_variable() -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    assert dashboard["__inputs"][0]["name"] == "DS_PROMETHEUS"
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert variables["DS_PROMETHEUS"]["type"] == "datasource"
    assert variables["DS_PROMETHEUS"]["query"] == "prometheus"
    panels = dashboard["panels"]
    assert len({p["id"] for p in panels}) == len(panels)
    queries = [p for p in panels if p["type"] != "row"]
    assert len(queries) >= 20
    cells: set[tuple[int, int]] = set()
    for panel in panels:
        if panel["type"] != "row":
            assert panel["datasource"] == DATASOURCE, panel["title"]
            assert panel["targets"], panel["title"]
            for target in panel["targets"]:
                assert target["datasource"] == DATASOURCE and target["expr"], panel["title"]
        box = panel["gridPos"]
        assert box["x"] + box["w"] <= 24
        mine = {(x, y) for x in range(box["x"], box["x"] + box["w"])
                for y in range(box["y"], box["y"] + box["h"])}  # fmt: skip
        assert not mine & cells, f"{panel['title']} overlaps another panel"
        cells |= mine
    # what the issue asks to see at a glance
    titles = " | ".join(p["title"].lower() for p in panels)
    for wanted in ("jobs by status", "batches by state", "oldest pending", "api calls by status",
                   "latency p95", "step duration", "tokens", "cost", "paused", "stuck",
                   "lease takeovers", "memory", "cpu"):  # fmt: skip
        assert wanted in titles, wanted
