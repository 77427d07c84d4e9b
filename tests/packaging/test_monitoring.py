"""Prometheus rules and the Grafana dashboard under conf/: judged by promtool and by a real /metrics."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

from . import tool

ROOT = Path(__file__).resolve().parent.parent.parent
RULES = ROOT / "conf" / "prometheus" / "ttsha.rules.yml"
RULES_TEST = Path(__file__).with_name("data") / "ttsha.rules.test.yml"
DASHBOARD = ROOT / "conf" / "grafana" / "ttsha-dashboard.json"
#: Series the rules read from other exporters (Prometheus itself, node_exporter).
FOREIGN = {"up", "node_systemd_unit_state"}


def test_promtool_accepts_the_rules():
    promtool = tool("promtool", "prometheus")
    proc = subprocess.run([promtool, "check", "rules", str(RULES)], capture_output=True, text=True, check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_alerts_fire_on_the_series_that_should_raise_them(tmp_path):
    promtool = tool("promtool", "prometheus")
    shutil.copy(RULES, tmp_path / RULES.name)
    shutil.copy(RULES_TEST, tmp_path / RULES_TEST.name)
    proc = subprocess.run([promtool, "test", "rules", RULES_TEST.name], capture_output=True, text=True,
                          cwd=tmp_path, check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def _metric_names(expr: str) -> set[str]:
    names = set(re.findall(r"\b([a-z_][a-z0-9_]*)\s*(?:\{|\[|\)|$|\s*[=!<>])", expr))
    return {n for n in names if n.startswith(("ttsha_", "up", "node_"))}


def dashboard_exprs() -> list[str]:
    data = json.loads(DASHBOARD.read_text(encoding="utf-8"))
    return [t["expr"] for p in data["panels"] for t in p["targets"]]


def rule_exprs() -> list[str]:
    return [line.split("expr:", 1)[1].strip() for line in RULES.read_text().splitlines() if "expr:" in line]


def test_dashboard_is_grafana_json_with_a_datasource_variable():
    data = json.loads(DASHBOARD.read_text(encoding="utf-8"))
    assert data["uid"] and data["panels"]
    assert {v["name"] for v in data["templating"]["list"]} >= {"datasource", "instance"}
    ids = [p["id"] for p in data["panels"]]
    assert len(ids) == len(set(ids))
    for panel in data["panels"]:
        assert panel["datasource"]["uid"] == "${datasource}" and panel["targets"], panel["title"]


def referenced_metrics() -> set[str]:
    """ttsha series named by the rules and the dashboard (histogram and counter suffixes as exposed)."""
    names = set()
    for expr in rule_exprs() + dashboard_exprs():
        names |= _metric_names(expr)
    return names - FOREIGN
