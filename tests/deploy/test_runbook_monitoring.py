"""OPERATIONS.md § 7 lists every alert the rules define (with what to do) and every metric
the platform exposes, so that an operator paged by a new alert, or reading a new series,
finds it in the runbook."""

from __future__ import annotations

import re
from pathlib import Path

from tests.deploy.test_monitoring import alert_rules
from tests.deploy.test_monitoring_labels import declared_labels

RUNBOOK = Path(__file__).resolve().parents[2] / "OPERATIONS.md"


def monitoring_section() -> str:
    text = RUNBOOK.read_text()
    return text.split("## 7. Monitoring and alerting", 1)[1].split("\n## ", 1)[0]


def test_the_runbook_alert_table_has_every_alert_with_a_first_response() -> None:
    rows = {
        match[1]: match[3]
        for match in re.finditer(
            r"^\| `(\w+)` \| ([^|]+) \| (.+) \|$", monitoring_section(), re.MULTILINE
        )
    }
    missing = set(alert_rules()) - set(rows)
    assert not missing, f"OPERATIONS.md § 7 has no row for {sorted(missing)}"
    assert all(rows[name].strip() for name in alert_rules())


def test_the_runbook_metric_table_names_every_exposed_metric() -> None:
    section = monitoring_section()
    # One name per metric, as the table writes it: a histogram without its suffixes.
    metrics = {re.sub(r"_(bucket|sum|count)$", "", name) for name in declared_labels()}
    missing = {name for name in metrics if f"`{name}" not in section}
    assert not missing, f"OPERATIONS.md § 7 does not list {sorted(missing)}"
