"""The Prometheus config, alert rules and Grafana dashboards in deploy/ are valid, chart
what operators expect, and use only metric names the platform really exposes."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
PROMETHEUS_DIR = ROOT / "deploy" / "prometheus"
GRAFANA_DIR = ROOT / "deploy" / "grafana"
DASHBOARD_DIR = GRAFANA_DIR / "dashboards"

DASHBOARDS = {
    "api-slo": "api-slo.json",
    "orchestrator": "orchestrator.json",
    "manager-health": "manager-health.json",
}
REQUIRED_ALERTS = {
    "HighErrorRate",
    "QueueLagHigh",
    "DeadLettersGrowing",
    "NoWorkersOnline",
    "ReadinessFailing",
    "WebhookDeliveriesFailing",
    "ScheduleFiresRefused",
    "SchedulesNotFiring",
}


# --- promtool -----------------------------------------------------------------------


def find_promtool() -> str | None:
    # Debian's `prometheus` package puts it in /usr/bin, which a trimmed PATH may miss.
    return shutil.which("promtool") or next(
        (
            str(path)
            for path in (Path("/usr/bin/promtool"), Path("/usr/local/bin/promtool"))
            if path.is_file()
        ),
        None,
    )


@pytest.fixture(scope="module")
def promtool() -> str:
    path = find_promtool()
    if path is None:
        message = "promtool not found: install it with `apt-get install -y prometheus`"
        if os.environ.get("CI") == "true":
            pytest.fail(message)
        pytest.skip(message)
    return path


def run_promtool(promtool: str, *args: str | Path) -> None:
    result = subprocess.run(
        [promtool, *map(str, args)], capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_prometheus_config_is_valid(promtool):
    run_promtool(promtool, "check", "config", PROMETHEUS_DIR / "prometheus.yml")


def test_alert_rules_are_valid(promtool):
    run_promtool(promtool, "check", "rules", PROMETHEUS_DIR / "alerts.yml")


def test_alert_rules_pass_their_unit_tests(promtool):
    run_promtool(promtool, "test", "rules", PROMETHEUS_DIR / "alerts.test.yml")


def test_every_dashboard_query_is_valid_promql(promtool, tmp_path):
    # promtool has no "check query"; a recording rule per query gets the same parser.
    rules = [
        {"record": f"dashboard:{uid.replace('-', '_')}:query_{number}", "expr": expr}
        for number, (uid, expr) in enumerate(dashboard_queries(grafana_variables="5m"))
    ]
    path = tmp_path / "dashboard-queries.yml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboards", "rules": rules}]}))
    run_promtool(promtool, "check", "rules", path)


# --- Prometheus config and rules ----------------------------------------------------


def load_yaml(path: Path) -> Any:
    return yaml.safe_load(path.read_text())


def alert_rules() -> dict[str, dict[str, Any]]:
    rules = load_yaml(PROMETHEUS_DIR / "alerts.yml")
    return {
        rule["alert"]: rule
        for group in rules["groups"]
        for rule in group["rules"]
        if "alert" in rule
    }


def test_prometheus_scrapes_the_api_and_every_worker_and_loads_the_alerts():
    config = load_yaml(PROMETHEUS_DIR / "prometheus.yml")
    assert config["rule_files"] == ["alerts.yml"]
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}

    assert jobs["api"].get("metrics_path", "/metrics") == "/metrics"
    # The API's private metrics listener (API_METRICS_PORT), not its public :8000.
    assert jobs["api"]["static_configs"][0]["targets"] == ["api:9101"]

    workers = jobs["workers"]
    assert workers.get("metrics_path", "/metrics") == "/metrics"
    targets = [t for c in workers.get("static_configs", []) for t in c["targets"]]
    discovered = [
        f"{name}:{c['port']}" for c in workers.get("dns_sd_configs", []) for name in c["names"]
    ]
    assert "worker:8080" in targets + discovered


def test_the_runbook_alerts_are_defined_with_severity_and_summary():
    rules = alert_rules()
    assert REQUIRED_ALERTS <= set(rules)
    for name, rule in rules.items():
        assert rule["labels"]["severity"] in {"info", "warning", "critical"}, name
        assert rule["annotations"]["summary"], name
    assert rules["HighErrorRate"]["expr"] == "rate(api_errors_total[5m]) > 0.05"
    assert rules["HighErrorRate"]["for"] == "2m"
    assert rules["HighErrorRate"]["labels"]["severity"] == "warning"
    assert "max by (queue) (queue_lag_seconds) > 60" in rules["QueueLagHigh"]["expr"]
    assert rules["QueueLagHigh"]["for"] == "5m"
    assert rules["NoWorkersOnline"]["for"] == "1m"
    assert rules["NoWorkersOnline"]["labels"]["severity"] == "critical"


@pytest.mark.parametrize("alert", sorted(alert_rules()))
def test_alert_unit_tests_show_the_alert_firing_and_staying_quiet(alert):
    checks = [
        check
        for test in load_yaml(PROMETHEUS_DIR / "alerts.test.yml")["tests"]
        for check in test.get("alert_rule_test", [])
        if check["alertname"] == alert
    ]
    assert any(check.get("exp_alerts") for check in checks), f"{alert} never fires"
    assert any(not check.get("exp_alerts") for check in checks), f"{alert} never quiet"


# --- Grafana ------------------------------------------------------------------------


def load_dashboard(uid: str) -> dict[str, Any]:
    return json.loads((DASHBOARD_DIR / DASHBOARDS[uid]).read_text())


def panels(dashboard: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """Every panel, including those folded inside rows."""
    for panel in dashboard.get("panels", []):
        yield panel
        yield from panel.get("panels", [])


def dashboard_queries(grafana_variables: str | None = None) -> Iterator[tuple[str, str]]:
    """(dashboard uid, PromQL) for every query; optionally with `$__…` variables filled."""
    for uid in DASHBOARDS:
        for panel in panels(load_dashboard(uid)):
            for target in panel.get("targets", []):
                expr = target["expr"]
                if grafana_variables is not None:
                    expr = re.sub(r"\$__\w+", grafana_variables, expr)
                yield uid, expr


def test_grafana_reads_prometheus_and_the_dashboard_folder():
    provisioning = GRAFANA_DIR / "provisioning"
    sources = load_yaml(provisioning / "datasources" / "prometheus.yml")["datasources"]
    prometheus = next(source for source in sources if source["type"] == "prometheus")
    assert prometheus["uid"] == "prometheus"
    assert prometheus["url"] == "http://prometheus:9090"

    providers = load_yaml(provisioning / "dashboards" / "dashboards.yml")["providers"]
    assert [p["options"]["path"] for p in providers] == ["/var/lib/grafana/dashboards"]
    assert all(p["type"] == "file" for p in providers)


@pytest.mark.parametrize("uid", DASHBOARDS)
def test_every_dashboard_has_its_uid_and_queries_prometheus_in_every_panel(uid):
    dashboard = load_dashboard(uid)
    assert dashboard["uid"] == uid
    assert dashboard["title"]
    assert dashboard["schemaVersion"] >= 36
    ids = [panel["id"] for panel in panels(dashboard)]
    assert len(ids) == len(set(ids)), "panel ids must be unique"
    charted = [panel for panel in panels(dashboard) if panel["type"] != "row"]
    assert charted
    for panel in charted:
        assert panel["type"] in {"timeseries", "stat"}, panel["title"]
        assert panel["targets"], f"{panel['title']}: no query"
        for target in panel["targets"]:
            assert target.get("expr", "").strip(), f"{panel['title']}: empty expr"
            datasource = target.get("datasource") or panel.get("datasource")
            assert datasource["uid"] == "prometheus", panel["title"]


def test_dashboards_chart_what_operators_look_for():
    def exprs(uid: str) -> str:
        return "\n".join(expr for owner, expr in dashboard_queries() if owner == uid)

    api = exprs("api-slo")
    for quantile in ("0.5", "0.95", "0.99"):
        assert re.search(
            rf"histogram_quantile\({quantile}, sum by \(le, endpoint\) "
            r"\(rate\(api_request_latency_seconds_bucket",
            api,
        ), quantile
    assert "sum by (endpoint) (rate(api_requests_total" in api
    assert "api_errors_total" in api
    # Rate-limited callers: a client error, charted (no alert) from the request counts.
    assert 'api_requests_total{status="429"}' in api

    expected = {
        "orchestrator": {
            "runs_total",
            "steps_total",
            "step_duration_seconds_bucket",
            "queue_depth",
            "queue_lag_seconds",
            "dlq_open",
            "dlq_events_total",
            "task_retries_total",
            "workers_online",
            "schedule_fires_total",
            "schedule_fires_skipped_total",
            "schedule_lag_seconds",
            "webhook_deliveries_total",
            "webhook_lag_seconds",
            "delayed_run_lag_seconds",
            "runs_waiting",
            "runs_pruned_total",
        },
        "manager-health": {
            "manager_planning_duration_seconds_bucket",
            "manager_planning_duration_seconds_count",
            "queue_depth",
            "queue_lag_seconds",
            "workers_online",
        },
    }
    for uid, names in expected.items():
        used = set().union(
            *(names_in_promql(expr) for owner, expr in dashboard_queries() if owner == uid)
        )
        assert names <= used, f"{uid} misses {names - used}"
    manager = exprs("manager-health")
    assert 'queue_depth{queue="manager"}' in manager
    assert 'queue_lag_seconds{queue="manager"}' in manager


# --- metric names: used versus exposed ----------------------------------------------

# Series Prometheus makes itself, not exposed by our processes.
BUILTIN_SERIES = {"up"}
# Words that look like names in PromQL but are not series. Functions and aggregations need
# no list: they are always followed by "(".
PROMQL_KEYWORDS = {
    "and", "or", "unless", "by", "without", "on", "ignoring", "group_left", "group_right",
    "bool", "offset", "atan2", "inf", "nan",
}  # fmt: skip

_STRINGS = re.compile(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'|`[^`]*`')
_LABEL_MATCHERS = re.compile(r"\{[^}]*\}")
_RANGES = re.compile(r"\[[^\]]*\]")
_GROUPING = re.compile(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)")
# A name not glued to a digit, dot or `$` (so not `5m`, `1e3`, `$__rate_interval`).
_NAME = re.compile(r"(?<![\w.$:])([A-Za-z_:][\w:]*)(\s*\()?")


def names_in_promql(expr: str) -> set[str]:
    """Metric names an expression reads, exactly as exposed (`x_bucket`, `x_total`)."""
    text = _STRINGS.sub(" ", expr)
    text = _LABEL_MATCHERS.sub(" ", text)
    text = _RANGES.sub(" ", text)
    text = _GROUPING.sub(" ", text)
    return {
        match.group(1)
        for match in _NAME.finditer(text)
        if not match.group(2)  # a function or aggregation call
        and match.group(1).lower() not in PROMQL_KEYWORDS
        and match.group(1) not in BUILTIN_SERIES
    }


def metric_names_used() -> set[str]:
    """Every metric name read by a dashboard panel or an alert rule."""
    exprs = [expr for _, expr in dashboard_queries()]
    exprs += [rule["expr"] for rule in alert_rules().values()]
    return set().union(*(names_in_promql(expr) for expr in exprs))


def test_metric_names_are_read_from_promql_without_functions_labels_or_keywords():
    expr = (
        'histogram_quantile(0.95, sum by (le, endpoint) (rate(x_seconds_bucket{job="api",'
        ' endpoint=~"/runs|by"}[$__rate_interval]))) / ignoring(job) group_left(endpoint)'
        " max without (instance) (y_total offset 5m) > bool 1e3"
        " or absent(up{job='api'}) and on() vector(1) unless z"
    )
    assert names_in_promql(expr) == {"x_seconds_bucket", "y_total", "z"}


# ---- what the processes really serve ------------------------------------------------
# The API's /metrics (its metrics listener, for an app in this process) and a worker health
# server's /metrics (the same server a worker starts, here in this process on a free port),
# on a fresh SQLite stack.


@pytest.fixture(scope="module")
def served_metrics(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, str]]:
    """(API exposition text, worker health server exposition text)."""
    import urllib.request

    from tests.support.metrics import read_api_metrics
    from tests.support.stack import Stack
    from workers.health import HealthServer

    stack = Stack("sqlite", tmp_path_factory.mktemp("monitoring"))
    server = HealthServer(stack.settings)
    try:
        client = stack.client()
        # One request first, so the request metrics have samples too.
        assert client.get("/health").status_code == 200
        api_text = read_api_metrics(stack.app)
        port = server.start()
        assert port is not None
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as answer:
            worker_text = answer.read().decode()
        yield api_text, worker_text
    finally:
        server.stop()
        stack.close()


def exposed_metric_names(served_metrics: tuple[str, str]) -> set[str]:
    api_text, worker_text = served_metrics
    return exposition_names(api_text) | exposition_names(worker_text)


# -------------------------------------------------------------------------------------

# The series each metric type is exposed as. A labelled metric with no children yet has
# no samples in the text, so the names come from its declared type.
_SERIES_SUFFIXES = {
    "counter": ("_total",),
    "histogram": ("_bucket", "_sum", "_count"),
    "gaugehistogram": ("_bucket", "_gsum", "_gcount"),
    "summary": ("", "_sum", "_count"),
    "info": ("_info",),
}


def exposition_names(text: str) -> set[str]:
    """Every series name in Prometheus exposition text."""
    from prometheus_client.parser import text_string_to_metric_families

    names: set[str] = set()
    for family in text_string_to_metric_families(text):
        names.update(family.name + suffix for suffix in _SERIES_SUFFIXES.get(family.type, ("",)))
        names.update(sample.name for sample in family.samples)
    return names


def test_every_metric_used_in_dashboards_and_rules_is_exposed(served_metrics):
    missing = metric_names_used() - exposed_metric_names(served_metrics)
    assert not missing, f"charted or alerted on, but never exposed: {sorted(missing)}"
