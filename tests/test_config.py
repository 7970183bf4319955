"""Recovery settings: read from the environment, checked at start-up, handed to Celery."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

import celeryconfig
from engine.config import Settings
from engine.errors import ConfigError
from tests.support.services import Worker


def environment(tmp_path: Path, **values: str) -> dict[str, str]:
    return {
        "JWT_SECRET": "s" * 40,
        "WEBHOOK_SECRET": "w" * 40,
        "ENGINE_VAR_DIR": str(tmp_path),
        **values,
    }


def test_recovery_settings_are_read_from_the_environment(tmp_path: Path) -> None:
    settings = Settings.from_env(
        environment(
            tmp_path,
            MAX_DELIVERIES="2",
            RECONCILE_INTERVAL_S="1",
            DISPATCH_GRACE_S="2.5",
            LEASE_GRACE_S="4",
            BROKER_VISIBILITY_TIMEOUT_S="9000",
        )
    )
    assert settings.max_deliveries == 2
    assert settings.reconcile_interval_s == 1
    assert settings.dispatch_grace_s == 2.5
    assert settings.lease_grace_s == 4
    assert settings.broker_visibility_timeout_s == 9000


def test_a_visibility_timeout_not_above_the_longest_step_is_refused_naming_both_settings(
    tmp_path: Path,
) -> None:
    with pytest.raises(ConfigError) as refused:
        Settings.from_env(
            environment(
                tmp_path,
                BROKER_VISIBILITY_TIMEOUT_S="10",
                STEP_TIMEOUT_MAX_S="60",
                STEP_TIMEOUT_S="30",
            )
        )
    message = str(refused.value)
    assert "BROKER_VISIBILITY_TIMEOUT_S (10)" in message
    assert "STEP_TIMEOUT_MAX_S (60)" in message


def test_the_visibility_timeout_must_cover_a_retry_countdown_and_the_longest_step(
    tmp_path: Path,
) -> None:
    base = environment(
        tmp_path,
        STEP_TIMEOUT_S="30",
        STEP_TIMEOUT_MAX_S="60",
        RETRY_MAX_BACKOFF_S="100",
        LEASE_GRACE_S="10",
    )
    # A worker may hold a retry for 100 s, then run it up to its hard limit (66 s), + 10.
    longest = 100 + 66 + 10
    assert Settings.from_env(base).with_changes(broker_visibility_timeout_s=longest + 1)
    with pytest.raises(ConfigError, match="RETRY_MAX_BACKOFF_S"):
        Settings.from_env({**base, "BROKER_VISIBILITY_TIMEOUT_S": str(longest)})


def test_every_problem_of_a_configuration_is_named_at_once(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as refused:
        Settings.from_env(
            environment(
                tmp_path,
                STEP_TIMEOUT_S="120",
                STEP_TIMEOUT_MAX_S="60",
                BROKER_VISIBILITY_TIMEOUT_S="10",
                MAX_DELIVERIES="0",
                DISPATCH_GRACE_S="0",
            )
        )
    message = str(refused.value)
    for name in (
        "STEP_TIMEOUT_S (120)",
        "BROKER_VISIBILITY_TIMEOUT_S",
        "MAX_DELIVERIES",
        "DISPATCH_GRACE_S",
    ):
        assert name in message


def test_the_worker_refuses_to_start_with_a_visibility_timeout_below_the_longest_step(
    tmp_path: Path,
) -> None:
    env = {
        **os.environ,
        **environment(
            tmp_path,
            BROKER_VISIBILITY_TIMEOUT_S="10",
            STEP_TIMEOUT_MAX_S="60",
            STEP_TIMEOUT_S="30",
            DATABASE_URL=f"sqlite:///{tmp_path / 'engine.db'}",
            # Nothing listens here: the worker must stop before it tries the broker.
            REDIS_URL="redis://127.0.0.1:1/0",
        ),
    }
    output = refused_start(env, tmp_path)
    assert "ConfigError" in output
    assert "BROKER_VISIBILITY_TIMEOUT_S (10)" in output
    assert "STEP_TIMEOUT_MAX_S (60)" in output


def refused_start(env: dict[str, str], tmp_path: Path) -> str:
    """What a worker that refused to start with `env` wrote before it exited."""
    worker = Worker(env, tmp_path / "worker.log")
    try:
        with pytest.raises(AssertionError, match="worker exited"):
            worker.start()
        assert worker.process is not None and worker.process.returncode != 0
        return (tmp_path / "worker.log").read_text()
    finally:
        worker.stop()


def test_the_worker_refuses_to_start_with_an_action_module_that_cannot_be_imported(
    tmp_path: Path,
) -> None:
    (tmp_path / "broken_actions.py").write_text("import no_such_dependency\n")
    env = {
        **os.environ,
        **environment(
            tmp_path,
            ENGINE_ACTION_MODULES="tests.support.actions,broken_actions",
            DATABASE_URL=f"sqlite:///{tmp_path / 'engine.db'}",
            REDIS_URL="redis://127.0.0.1:1/0",
            PYTHONPATH=str(tmp_path),
        ),
    }
    assert (
        "ConfigError: ENGINE_ACTION_MODULES names 'broken_actions', which cannot be "
        "imported: ModuleNotFoundError: No module named 'no_such_dependency'"
    ) in refused_start(env, tmp_path)


def test_celery_gets_the_visibility_timeout_late_acks_and_the_reconciler_schedule(
    tmp_path: Path,
) -> None:
    settings = Settings.from_env(
        environment(tmp_path, BROKER_VISIBILITY_TIMEOUT_S="9000", RECONCILE_INTERVAL_S="7")
    )
    config = celeryconfig.build(settings)
    assert config["broker_transport_options"]["visibility_timeout"] == 9000
    assert config["task_acks_late"] and config["task_reject_on_worker_lost"]
    # A hard time limit is recorded and retried by the engine: its message is acknowledged.
    assert config["task_acks_on_failure_or_timeout"]
    assert config["worker_cancel_long_running_tasks_on_connection_loss"] is False
    assert config["worker_prefetch_multiplier"] == 1
    reconcile = config["beat_schedule"]["reconcile"]
    assert (reconcile["task"], reconcile["schedule"]) == ("manager.reconcile", 7)


def test_the_repr_of_settings_shows_no_secret_and_no_password(tmp_path: Path) -> None:
    settings = Settings.from_env(
        environment(
            tmp_path,
            JWT_SECRET="jwt-current-" + "c" * 30,
            JWT_PREVIOUS_SECRETS="jwt-previous-" + "p" * 30,
            WEBHOOK_SECRET="hook-current-" + "c" * 30,
            WEBHOOK_PREVIOUS_SECRETS=" hook-previous-" + "p" * 30 + ", hook-older-" + "o" * 30,
            DATABASE_URL="postgresql+psycopg://engine:pg-pass%40word@db:5432/engine",
            REDIS_URL="redis://default:redis-pass-word@cache:6379/0",
        )
    )
    shown = repr(settings)
    for secret in ("jwt-current-", "jwt-previous-", "hook-", "pg-pass", "redis-pass-word"):
        assert secret not in shown
    assert settings.webhook_previous_secrets == (
        "hook-previous-" + "p" * 30,
        "hook-older-" + "o" * 30,
    )
    assert "postgresql+psycopg://engine:***@db:5432/engine" in shown
    assert "redis://default:***@cache:6379/0" in shown
    # The settings themselves keep what they were given.
    assert settings.database_url.endswith("engine:pg-pass%40word@db:5432/engine")
    plain = Settings.from_env(environment(tmp_path, REDIS_URL="redis://localhost:6379/0"))
    assert "redis_url='redis://localhost:6379/0'" in repr(plain)


def test_production_refuses_a_weak_previous_secret_as_it_refuses_a_weak_current_one(
    tmp_path: Path,
) -> None:
    # A previous secret verifies tokens like the current one: a short one was accepted.
    strong = "p" * 40
    production = {"ENGINE_ENV": "production", "JWT_PREVIOUS_SECRETS": f"{strong},short-one"}
    with pytest.raises(ConfigError) as refused:
        Settings.from_env(environment(tmp_path, **production))
    assert "JWT_PREVIOUS_SECRETS" in str(refused.value) and "short-one" not in str(refused.value)
    assert Settings.from_env(
        environment(tmp_path, **{**production, "JWT_PREVIOUS_SECRETS": strong})
    )
    development = {"JWT_PREVIOUS_SECRETS": "short-one"}
    assert Settings.from_env(environment(tmp_path, **development)).jwt_previous_secrets


def test_production_refuses_a_weak_previous_webhook_secret_naming_the_setting(
    tmp_path: Path,
) -> None:
    # A previous secret signs every delivery too: a receiver still accepting it would take
    # a delivery forged with it.
    strong = "p" * 40
    production = {"ENGINE_ENV": "production", "WEBHOOK_PREVIOUS_SECRETS": f"{strong},short-one"}
    with pytest.raises(ConfigError) as refused:
        Settings.from_env(environment(tmp_path, **production))
    assert "WEBHOOK_PREVIOUS_SECRETS" in str(refused.value)
    assert "short-one" not in str(refused.value)
    accepted = environment(tmp_path, **{**production, "WEBHOOK_PREVIOUS_SECRETS": strong})
    assert Settings.from_env(accepted).webhook_previous_secrets == (strong,)
    development = {"WEBHOOK_PREVIOUS_SECRETS": "short-one"}
    assert Settings.from_env(environment(tmp_path, **development)).webhook_previous_secrets


def test_the_http_action_settings_are_read_and_checked(tmp_path: Path) -> None:
    default = Settings.from_env(environment(tmp_path))
    assert default.http_allowed_hosts == () and not default.http_allow_private_addresses
    settings = Settings.from_env(
        environment(
            tmp_path,
            HTTP_ALLOWED_HOSTS="API.example.com, *.partner.io",
            HTTP_ALLOW_PRIVATE_ADDRESSES="true",
            HTTP_TIMEOUT_S="5",
            HTTP_MAX_RESPONSE_BYTES="2048",
        )
    )
    assert settings.http_allowed_hosts == ("api.example.com", "*.partner.io")
    assert settings.http_allow_private_addresses
    assert (settings.http_timeout_s, settings.http_max_response_bytes) == (5, 2048)
    with pytest.raises(ConfigError) as refused:
        Settings.from_env(
            environment(
                tmp_path, HTTP_ALLOWED_HOSTS="https://api.example.com,*", HTTP_TIMEOUT_S="0"
            )
        )
    message = str(refused.value)
    assert "HTTP_ALLOWED_HOSTS" in message and "'https://api.example.com', '*'" in message
    assert "HTTP_TIMEOUT_S" in message
    with pytest.raises(ConfigError, match="HTTP_ALLOW_PRIVATE_ADDRESSES must be true or false"):
        Settings.from_env(environment(tmp_path, HTTP_ALLOW_PRIVATE_ADDRESSES="maybe"))


def test_event_stream_settings_take_half_the_threads_by_default_and_never_all(
    tmp_path: Path,
) -> None:
    default = Settings.from_env(environment(tmp_path))
    assert (default.web_threads, default.events_max_streams) == (4, 2)
    assert default.events_poll_interval_s == 0.5
    wide = Settings.from_env(
        environment(
            tmp_path,
            WEB_THREADS="16",
            EVENTS_POLL_INTERVAL_S="0.25",
            EVENTS_HEARTBEAT_S="5",
            EVENTS_MAX_DURATION_S="60",
        )
    )
    assert wide.events_max_streams == 8
    assert (wide.events_poll_interval_s, wide.events_heartbeat_s) == (0.25, 5)
    assert wide.events_max_duration_s == 60
    assert Settings.from_env(environment(tmp_path, EVENTS_MAX_STREAMS="0")).events_max_streams == 0
    with pytest.raises(ConfigError, match=r"EVENTS_MAX_STREAMS \(4\).*WEB_THREADS \(4\)"):
        Settings.from_env(environment(tmp_path, EVENTS_MAX_STREAMS="4"))
    with pytest.raises(ConfigError, match="EVENTS_POLL_INTERVAL_S"):
        Settings.from_env(environment(tmp_path, EVENTS_POLL_INTERVAL_S="0"))


def test_workers_read_named_secrets_from_secrets_dir_and_settings_hold_no_value(
    tmp_path: Path,
) -> None:
    default = Settings.from_env(environment(tmp_path))
    assert default.secrets_dir == tmp_path.resolve() / "secrets"
    mounted = tmp_path / "run-secrets"
    mounted.mkdir()
    (mounted / "crm_token").write_text("tok-5f4e3d2c1b\n")
    settings = Settings.from_env(environment(tmp_path, SECRETS_DIR=str(mounted)))
    assert settings.secrets_dir == mounted.resolve()
    assert "tok-5f4e3d2c1b" not in repr(settings)
    assert "tok-5f4e3d2c1b" not in repr(vars(settings))


def test_the_api_metrics_listener_has_a_port_of_its_own(tmp_path: Path) -> None:
    default = Settings.from_env(environment(tmp_path))
    # Loopback unless told: a host's every interface would publish it.
    assert (default.api_metrics_host, default.api_metrics_port) == ("127.0.0.1", 9101)
    moved = Settings.from_env(
        environment(tmp_path, API_METRICS_HOST="0.0.0.0", API_METRICS_PORT="9200")
    )
    assert (moved.api_metrics_host, moved.api_metrics_port) == ("0.0.0.0", 9200)
    with pytest.raises(ConfigError, match=r"API_METRICS_PORT \(8000\).*API_PORT \(8000\)"):
        Settings.from_env(environment(tmp_path, API_METRICS_PORT="8000"))
    with pytest.raises(ConfigError, match=r"API_METRICS_PORT \(0\)"):
        Settings.from_env(environment(tmp_path, API_METRICS_PORT="0"))


def test_gunicorn_takes_its_settings_from_the_engines_and_refuses_what_the_api_would(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import runpy

    conf = str(Path(__file__).resolve().parents[1] / "web" / "gunicorn_conf.py")
    for name, value in environment(tmp_path, WEB_THREADS="6", WEB_CONCURRENCY="3").items():
        monkeypatch.setenv(name, value)
    for name in ("API_BIND", "API_PORT", "EVENTS_MAX_STREAMS"):
        monkeypatch.delenv(name, raising=False)
    gunicorn = runpy.run_path(conf)
    assert (gunicorn["bind"], gunicorn["workers"], gunicorn["threads"]) == ("0.0.0.0:8000", 3, 6)
    # A stream cap that leaves no thread to ordinary requests stops gunicorn at its start,
    # not each worker as it boots.
    monkeypatch.setenv("EVENTS_MAX_STREAMS", "6")
    with pytest.raises(ConfigError, match=r"EVENTS_MAX_STREAMS \(6\).*WEB_THREADS \(6\)"):
        runpy.run_path(conf)


def test_the_schedule_tick_and_batch_are_read_from_the_environment_and_checked(
    tmp_path: Path,
) -> None:
    settings = Settings.from_env(environment(tmp_path, SCHEDULE_TICK_S="3", SCHEDULE_BATCH="20"))
    assert (settings.schedule_tick_s, settings.schedule_batch) == (3, 20)
    assert celeryconfig.build(settings)["beat_schedule"]["schedules"]["schedule"] == 3
    with pytest.raises(ConfigError, match="SCHEDULE_TICK_S"):
        Settings.from_env(environment(tmp_path, SCHEDULE_TICK_S="0"))
    with pytest.raises(ConfigError, match="SCHEDULE_BATCH"):
        Settings.from_env(environment(tmp_path, SCHEDULE_BATCH="0"))


def test_the_backfill_cap_is_read_from_the_environment_and_bounded(tmp_path: Path) -> None:
    assert Settings.from_env(environment(tmp_path)).schedule_backfill_max == 1000
    settings = Settings.from_env(environment(tmp_path, SCHEDULE_BACKFILL_MAX="20"))
    assert settings.schedule_backfill_max == 20
    for value in ("0", "10001"):
        with pytest.raises(
            ConfigError, match=f"SCHEDULE_BACKFILL_MAX must be from 1 to 10000, got {value}"
        ):
            Settings.from_env(environment(tmp_path, SCHEDULE_BACKFILL_MAX=value))


def test_the_run_delay_bound_and_tick_are_read_from_the_environment_and_checked(
    tmp_path: Path,
) -> None:
    default = Settings.from_env(environment(tmp_path))
    assert (default.run_delay_max_s, default.run_delay_tick_s) == (30 * 86400, 1)
    settings = Settings.from_env(
        environment(tmp_path, RUN_DELAY_MAX_S="3600", RUN_DELAY_TICK_S="0.5")
    )
    assert (settings.run_delay_max_s, settings.run_delay_tick_s) == (3600, 0.5)
    assert celeryconfig.build(settings)["beat_schedule"]["delayed_runs"]["schedule"] == 0.5
    for name, value in (
        ("RUN_DELAY_TICK_S", "0"),
        ("RUN_DELAY_MAX_S", "0"),
        ("RUN_DELAY_MAX_S", "nan"),
        # Beyond a year and a day: a start that far off belongs in a schedule.
        ("RUN_DELAY_MAX_S", str(367 * 86400)),
    ):
        with pytest.raises(ConfigError, match="RUN_DELAY_TICK_S must be > 0 and RUN_DELAY_MAX_S"):
            Settings.from_env(environment(tmp_path, **{name: value}))
    assert Settings.from_env(environment(tmp_path, RUN_DELAY_MAX_S=str(366 * 86400)))
