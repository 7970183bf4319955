"""Every label a dashboard panel or an alert rule selects or groups by is one its series
carry, and every outcome it selects is one the code counts: a renamed label or a misspelt
outcome would otherwise leave a panel empty, or an alert that can never fire."""

from __future__ import annotations

import re

import pytest

from engine import concurrency, metrics
from tests.deploy.test_monitoring import alert_rules, dashboard_queries, names_in_promql

# Labels Prometheus adds to every series it scrapes, and the histogram bucket's.
SCRAPE_LABELS = {"job", "instance"}
BUCKET_LABEL = "le"
# Labels whose values are a closed set the code names (the rest, such as a route or a
# workflow, are open).
CLOSED_VALUES: dict[tuple[str, str], set[str]] = {
    ("schedule_fires_total", "outcome"): set(metrics.SCHEDULE_OUTCOMES),
    ("webhook_deliveries_total", "outcome"): set(metrics.WEBHOOK_OUTCOMES),
    ("dlq_events_total", "event"): set(metrics.DLQ_EVENTS),
    ("steps_total", "status"): set(metrics.STEP_OUTCOMES),
    # A cancel is counted by the API (engine.runs), the rest by the workers.
    ("runs_total", "status"): {*metrics.RUN_OUTCOMES, "cancelled"},
    ("runs_waiting", "reason"): set(concurrency.REASONS),
}
HTTP_STATUS_LABELS = {("api_requests_total", "status"), ("api_errors_total", "status")}

_SELECTOR = re.compile(r"(?<![\w.$:])([A-Za-z_:][\w:]*)\s*\{([^}]*)\}")
_MATCHER = re.compile(r'(\w+)\s*(=~|!~|!=|=)\s*"((?:[^"\\]|\\.)*)"')
_GROUPING = re.compile(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\(([^)]*)\)")
_SUFFIXES = {"counter": ("_total",), "histogram": ("_bucket", "_sum", "_count")}


def declared_labels() -> dict[str, set[str]]:
    """Series name -> label names, for the metrics the code declares (engine.metrics,
    web.telemetry) and the live gauges."""
    from prometheus_client.metrics import MetricWrapperBase

    from web import telemetry

    labels: dict[str, set[str]] = {}
    for module in (metrics, telemetry):
        for metric in vars(module).values():
            if isinstance(metric, MetricWrapperBase):
                names = set(metric._labelnames)
                for suffix in _SUFFIXES.get(metric._type, ("",)):
                    extra = {BUCKET_LABEL} if suffix == "_bucket" else set()
                    labels[metric._name + suffix] = names | extra
    full = metrics.Readings(
        queue_depth={"steps": 0},
        queue_lag_seconds={"steps": 0.0},
        dlq_open=0,
        workers_online=0,
        schedule_lag_seconds=0.0,
        webhook_lag_seconds=0.0,
        delayed_run_lag_seconds=0.0,
        runs_waiting=dict.fromkeys(concurrency.REASONS, 0),
    )
    for family in metrics.LiveGauges(lambda: full).collect():
        labels[family.name] = {key for sample in family.samples for key in sample.labels}
    return labels


def used_queries() -> list[tuple[str, str]]:
    """(where, PromQL) of every dashboard query and alert rule."""
    queries = [(f"dashboard {uid}", expr) for uid, expr in dashboard_queries()]
    queries += [(f"alert {name}", rule["expr"]) for name, rule in alert_rules().items()]
    return queries


def label_problems(expr: str, declared: dict[str, set[str]]) -> list[str]:
    problems = []
    for name, body in _SELECTOR.findall(expr):
        known = declared.get(name, set()) | SCRAPE_LABELS
        for label, op, value in _MATCHER.findall(body):
            if label not in known:
                problems.append(f"{name} has no label {label!r}")
            elif (name, label) in CLOSED_VALUES and op in {"=", "=~"}:
                wanted = set(value.split("|")) if op == "=~" else {value}
                unknown = wanted - CLOSED_VALUES[name, label]
                if unknown:
                    problems.append(f"{name}{{{label}}} is never {sorted(unknown)}")
            elif (name, label) in HTTP_STATUS_LABELS and op == "=":
                if not re.fullmatch(r"[1-5]\d\d", value):
                    problems.append(f"{name}{{{label}}}: {value!r} is no HTTP status")
    # Grouping labels: carried by at least one series the expression reads.
    carried = set().union(*(declared.get(name, set()) for name in names_in_promql(expr)))
    for group in _GROUPING.findall(expr):
        for label in filter(None, (word.strip() for word in group.split(","))):
            if label not in carried | SCRAPE_LABELS:
                problems.append(f"no series here has the label {label!r} it groups by")
    return problems


def test_every_label_and_outcome_used_in_dashboards_and_rules_exists() -> None:
    declared = declared_labels()
    problems = [
        f"{where}: {problem}  ({expr})"
        for where, expr in used_queries()
        for problem in label_problems(expr, declared)
    ]
    assert not problems, "\n".join(problems)


@pytest.mark.parametrize(
    ("expr", "problem"),
    [
        ('sum(increase(webhook_deliveries_total{outcome=~"expired|refsued"}[1h]))', "refsued"),
        ('schedule_fires_total{result="refused"}', "no label 'result'"),
        ("sum by (outcome) (rate(runs_total[5m]))", "'outcome'"),
        ('api_requests_total{status="too_many"}', "no HTTP status"),
    ],
)
def test_a_misspelt_label_or_outcome_is_caught(expr: str, problem: str) -> None:
    [found] = label_problems(expr, declared_labels())
    assert problem in found


def test_the_labels_of_code_and_live_gauges_are_known() -> None:
    declared = declared_labels()
    assert declared["webhook_deliveries_total"] == {"outcome"}
    assert declared["api_request_latency_seconds_bucket"] == {"method", "endpoint", "status", "le"}
    assert declared["queue_lag_seconds"] == {"queue"}
    assert declared["schedule_lag_seconds"] == set()
    assert declared["webhook_lag_seconds"] == set()
    assert declared["delayed_run_lag_seconds"] == set()
    assert declared["runs_waiting"] == {"reason"}
