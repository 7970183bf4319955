"""The four packages type-check (mypy, configured in pyproject.toml), as `make lint` checks
them: a change that breaks a signature fails here, not in production."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_engine_web_workers_and_cli_type_check() -> None:
    checked = subprocess.run(
        [sys.executable, "-m", "mypy", "--cache-dir", str(ROOT / ".mypy_cache")],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert checked.returncode == 0, checked.stdout[-5000:] + checked.stderr[-2000:]
