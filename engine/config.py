"""The one settings object. Nothing else in the project reads os.environ."""

from __future__ import annotations

import os
import secrets
from collections.abc import Mapping
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

from engine.errors import ConfigError

PROJECT_ROOT = Path(__file__).resolve().parent.parent
_TRUE, _FALSE = ("1", "true", "yes", "on"), ("0", "false", "no", "off")


def _csv(value: str | None) -> tuple[str, ...]:
    return tuple(part.strip() for part in (value or "").split(",") if part.strip())


# Fields whose URL may carry a password: a Settings' repr shows them without it.
_URL_FIELDS = ("database_url", "redis_url", "rate_limit_storage_url")


def without_password(url: str) -> str:
    """`url` with the password of its user info, if any, replaced by `***`."""
    try:
        parts = urlsplit(url)
        hidden = parts.password is not None
    except ValueError:
        return url
    if not hidden:
        return url
    userinfo, _, host = parts.netloc.rpartition("@")
    user = userinfo.partition(":")[0]
    return urlunsplit(parts._replace(netloc=f"{user}:***@{host}"))


def _load_or_create_secret(path: Path) -> str:
    """Read a generated secret, creating it (mode 0600) on first use; safe under races."""
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return path.read_text().strip()
    with os.fdopen(fd, "w") as handle:
        handle.write(secrets.token_hex(32))
    return path.read_text().strip()


@dataclass(frozen=True)
class Settings:
    env: str = "development"
    database_url: str = ""
    redis_url: str = "redis://localhost:6379/0"
    redis_key_prefix: str = ""
    jwt_secret: str = field(default="", repr=False)
    jwt_previous_secrets: tuple[str, ...] = field(default=(), repr=False)
    jwt_issuer: str = "ai-business-engine"
    # The longest lifetime a token is minted with (POST /admin/tokens, `engine token mint`).
    token_max_ttl_s: float = 30 * 86400.0
    allowed_origins: tuple[str, ...] = ()
    var_dir: Path = PROJECT_ROOT / "var"
    log_dir: Path | None = None
    log_level: str = "INFO"
    # prometheus_client's multiprocess directory (PROMETHEUS_MULTIPROC_DIR): forked
    # processes (gunicorn workers, Celery prefork children) count into files there.
    metrics_dir: Path | None = None
    workflows_dir: Path = PROJECT_ROOT / "workflows"
    # Extra modules that register actions (besides the `engine.actions` entry points).
    action_modules: tuple[str, ...] = ()
    worker_health_port: int = 8080
    worker_health_host: str = "0.0.0.0"
    # gunicorn (web/gunicorn_conf.py): the public listener, its processes and their threads.
    api_bind: str = "0.0.0.0"
    api_port: int = 8000
    web_concurrency: int = 2
    # The API's /metrics: a listener of its own, for Prometheus only (never published). On
    # loopback unless told otherwise: a container reached by a Prometheus beside it binds
    # every interface of its own network (docker-compose.yml sets 0.0.0.0).
    api_metrics_host: str = "127.0.0.1"
    api_metrics_port: int = 9101
    flower_url: str = "http://localhost:5555"
    max_body_bytes: int = 1_048_576
    page_limit_default: int = 50
    page_limit_max: int = 200
    # Steps: time limits and retries (a workflow or step may set its own).
    step_timeout_s: float = 300.0
    step_timeout_max_s: float = 3600.0
    retry_max_attempts: int = 3
    retry_backoff_s: float = 1.0
    retry_max_backoff_s: float = 300.0
    # A message whose worker died this many times goes to the dead-letter queue.
    max_deliveries: int = 3
    # A step that releases exactly one step on the inline queue runs it in the same task
    # (no message); at most this many in a row, then the next one is sent.
    inline_chain_max: int = 100
    # Recovery: the broker must not redeliver a message while a worker still runs it.
    broker_visibility_timeout_s: float = 7200.0
    # How long a command to the broker may wait for Redis (a publish, a queue reading): a
    # Redis that hangs (paused, or gone without closing the connection) fails the command
    # instead of holding an API thread or a worker forever; the reconciler sends later.
    broker_socket_timeout_s: float = 10.0
    reconcile_interval_s: float = 15.0
    # Schedules: how often beat checks for due ones, and how many one tick fires at most.
    schedule_tick_s: float = 10.0
    schedule_batch: int = 100
    # One backfill submits at most this many runs (engine.schedules.backfill).
    schedule_backfill_max: int = 1000
    # Delayed runs (engine.delayed): how far ahead a submission's not_before may be, and how
    # often beat sends the plan messages of the delayed runs that are due.
    run_delay_max_s: float = 30 * 86400.0
    run_delay_tick_s: float = 1.0
    dispatch_grace_s: float = 30.0
    lease_grace_s: float = 30.0
    bulk_replay_rate: float = 100.0
    # One bulk replay call acts on at most this many dead letters.
    bulk_replay_max: int = 10_000
    # Runs cancelled per transaction when a workflow's live runs are cancelled at once
    # (engine.cancels): each batch's runs are stopped as soon as it commits.
    bulk_cancel_batch: int = 200
    # PostgreSQL's synchronous_commit for the workers' own transactions (claims, outcomes,
    # planning, reconciling). "off": a commit returns before its WAL reaches disk, and a
    # database crash can undo the last fraction of a second of step bookkeeping, which
    # the platform redoes (the step runs again, as after a worker crash). Submissions,
    # replays and every dead letter commit durably whatever this says (engine.db.durable).
    worker_synchronous_commit: str = "off"
    # SQLite: how long a statement waits for another writer's lock before "database is
    # locked". A worker recording an outcome tries again after that (workers.recording).
    sqlite_busy_timeout_s: float = 30.0
    # The http.request action: the hosts it may reach (exact names and *.domain suffixes;
    # empty: any), whether it may reach private, loopback, link-local or reserved
    # addresses, its default timeout, and the largest response body it keeps.
    http_allowed_hosts: tuple[str, ...] = ()
    http_allow_private_addresses: bool = False
    http_timeout_s: float = 30.0
    http_max_response_bytes: int = 1_048_576
    # GET /runs/{id}/events: how often a stream reads its run again, the heartbeat sent
    # while nothing changes, and the longest a stream stays open (the client reconnects).
    # Each open stream holds one of an API process's WEB_THREADS threads: a process opens at
    # most events_max_streams of them (default: half its threads), so the others are left
    # to ordinary requests.
    events_poll_interval_s: float = 0.5
    events_heartbeat_s: float = 15.0
    events_max_duration_s: float = 300.0
    web_threads: int = 4
    events_max_streams: int = 2
    # Named secrets (`{{ secrets.name }}` in a step's `with`): one file per secret in this
    # directory, its name the secret's, its contents the value (one final newline dropped),
    # as Docker and Kubernetes mount them (/run/secrets). Only a worker reads them, when a
    # step that names one renders its inputs; this object holds the directory, never a value.
    secrets_dir: Path = PROJECT_ROOT / "var" / "secrets"
    # Retention (engine.retention): finished runs, with their steps and resolved dead
    # letters, are deleted this many days after they finished; audit events after
    # audit_retention_days. 0 keeps them forever (the default: nothing is deleted unless
    # an operator chose how long to keep it). Deleted retention_batch_size runs at a time.
    run_retention_days: float = 0.0
    audit_retention_days: float = 0.0
    retention_batch_size: int = 500
    # Per-caller rate limits (the token's sub), in the `limits` library's notation
    # ("50/second;1000/minute"); empty (the default): no limit. Writes are POST and
    # DELETE, reads GET. Each tier costs one Redis round trip per request. The counters live
    # in RATE_LIMIT_STORAGE_URL (empty: REDIS_URL, shared by every API process);
    # memory:// counts in each process alone.
    rate_limit_writes: str = ""
    rate_limit_reads: str = ""
    rate_limit_storage_url: str = ""
    # Webhooks (engine.webhooks): the secret that signs each delivery (and, during a
    # rotation, the previous ones, which sign it too, after it), the timeout of one
    # attempt, how long a delivery is retried (exponential backoff with jitter from
    # webhook_backoff_s up to webhook_max_backoff_s) before it is marked failed, how often
    # beat looks for due deliveries, and how many one look records and sends.
    webhook_secret: str = field(default="", repr=False)
    webhook_previous_secrets: tuple[str, ...] = field(default=(), repr=False)
    webhook_timeout_s: float = 10.0
    webhook_max_age_hours: float = 72.0
    webhook_backoff_s: float = 30.0
    webhook_max_backoff_s: float = 3600.0
    webhook_interval_s: float = 5.0
    webhook_batch_size: int = 50

    def __repr__(self) -> str:
        """Every field but the JWT and webhook secrets, and the URLs without their passwords."""
        shown = []
        for item in fields(self):
            if item.repr:
                value = getattr(self, item.name)
                if item.name in _URL_FIELDS:
                    value = without_password(value)
                shown.append(f"{item.name}={value!r}")
        return f"{type(self).__name__}({', '.join(shown)})"

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Settings:
        """Build settings from the environment (or a given mapping) and check them."""
        env = os.environ if environ is None else environ
        var_dir = Path(env.get("ENGINE_VAR_DIR", str(PROJECT_ROOT / "var"))).resolve()
        mode = env.get("ENGINE_ENV", "development")
        secret = env.get("JWT_SECRET", "")
        if not secret:
            if mode == "production":
                raise ConfigError("JWT_SECRET must be set when ENGINE_ENV=production")
            secret = _load_or_create_secret(var_dir / "jwt_secret")
        webhook_secret = env.get("WEBHOOK_SECRET", "")
        if not webhook_secret:
            if mode == "production":
                raise ConfigError("WEBHOOK_SECRET must be set when ENGINE_ENV=production")
            webhook_secret = _load_or_create_secret(var_dir / "webhook_secret")

        def number(name: str, default: float) -> float:
            raw = env.get(name)
            if raw is None or raw == "":
                return default
            try:
                return float(raw)
            except ValueError as exc:
                raise ConfigError(f"{name} must be a number, got {raw!r}") from exc

        def flag(name: str, default: bool) -> bool:
            raw = env.get(name, "").strip().lower()
            if not raw:
                return default
            if raw in _TRUE or raw in _FALSE:
                return raw in _TRUE
            raise ConfigError(f"{name} must be true or false, got {raw!r}")

        web_threads = int(number("WEB_THREADS", cls.web_threads))
        settings = cls(
            env=mode,
            database_url=env.get("DATABASE_URL", f"sqlite:///{var_dir / 'engine.db'}"),
            redis_url=env.get("REDIS_URL", cls.redis_url),
            redis_key_prefix=env.get("REDIS_KEY_PREFIX", ""),
            jwt_secret=secret,
            jwt_previous_secrets=_csv(env.get("JWT_PREVIOUS_SECRETS")),
            jwt_issuer=env.get("JWT_ISSUER", cls.jwt_issuer),
            token_max_ttl_s=number("TOKEN_MAX_TTL_S", cls.token_max_ttl_s),
            allowed_origins=_csv(env.get("ALLOWED_ORIGINS")),
            var_dir=var_dir,
            log_dir=Path(env["LOG_DIR"]).resolve() if env.get("LOG_DIR") else None,
            log_level=env.get("LOG_LEVEL", cls.log_level).upper(),
            metrics_dir=(
                Path(env["PROMETHEUS_MULTIPROC_DIR"]).resolve()
                if env.get("PROMETHEUS_MULTIPROC_DIR")
                else None
            ),
            workflows_dir=Path(env.get("WORKFLOWS_DIR", str(PROJECT_ROOT / "workflows"))),
            action_modules=_csv(env.get("ENGINE_ACTION_MODULES")),
            worker_health_port=int(number("WORKER_HEALTH_PORT", 8080)),
            worker_health_host=env.get("WORKER_HEALTH_HOST", cls.worker_health_host),
            api_bind=env.get("API_BIND", cls.api_bind),
            api_port=int(number("API_PORT", cls.api_port)),
            web_concurrency=int(number("WEB_CONCURRENCY", cls.web_concurrency)),
            api_metrics_host=env.get("API_METRICS_HOST", cls.api_metrics_host),
            api_metrics_port=int(number("API_METRICS_PORT", cls.api_metrics_port)),
            flower_url=env.get("FLOWER_URL", cls.flower_url).rstrip("/"),
            max_body_bytes=int(number("MAX_BODY_BYTES", cls.max_body_bytes)),
            step_timeout_s=number("STEP_TIMEOUT_S", cls.step_timeout_s),
            step_timeout_max_s=number("STEP_TIMEOUT_MAX_S", cls.step_timeout_max_s),
            retry_max_attempts=int(number("RETRY_MAX_ATTEMPTS", cls.retry_max_attempts)),
            retry_backoff_s=number("RETRY_BACKOFF_S", cls.retry_backoff_s),
            retry_max_backoff_s=number("RETRY_MAX_BACKOFF_S", cls.retry_max_backoff_s),
            max_deliveries=int(number("MAX_DELIVERIES", cls.max_deliveries)),
            inline_chain_max=int(number("INLINE_CHAIN_MAX", cls.inline_chain_max)),
            broker_visibility_timeout_s=number(
                "BROKER_VISIBILITY_TIMEOUT_S", cls.broker_visibility_timeout_s
            ),
            broker_socket_timeout_s=number("BROKER_SOCKET_TIMEOUT_S", cls.broker_socket_timeout_s),
            reconcile_interval_s=number("RECONCILE_INTERVAL_S", cls.reconcile_interval_s),
            schedule_tick_s=number("SCHEDULE_TICK_S", cls.schedule_tick_s),
            schedule_batch=int(number("SCHEDULE_BATCH", cls.schedule_batch)),
            schedule_backfill_max=int(number("SCHEDULE_BACKFILL_MAX", cls.schedule_backfill_max)),
            run_delay_max_s=number("RUN_DELAY_MAX_S", cls.run_delay_max_s),
            run_delay_tick_s=number("RUN_DELAY_TICK_S", cls.run_delay_tick_s),
            dispatch_grace_s=number("DISPATCH_GRACE_S", cls.dispatch_grace_s),
            lease_grace_s=number("LEASE_GRACE_S", cls.lease_grace_s),
            sqlite_busy_timeout_s=number("SQLITE_BUSY_TIMEOUT_S", cls.sqlite_busy_timeout_s),
            bulk_replay_rate=number("BULK_REPLAY_RATE", cls.bulk_replay_rate),
            bulk_replay_max=int(number("BULK_REPLAY_MAX", cls.bulk_replay_max)),
            bulk_cancel_batch=int(number("BULK_CANCEL_BATCH", cls.bulk_cancel_batch)),
            worker_synchronous_commit=env.get(
                "WORKER_SYNCHRONOUS_COMMIT", cls.worker_synchronous_commit
            ).lower(),
            http_allowed_hosts=tuple(h.lower() for h in _csv(env.get("HTTP_ALLOWED_HOSTS"))),
            http_allow_private_addresses=flag("HTTP_ALLOW_PRIVATE_ADDRESSES", False),
            http_timeout_s=number("HTTP_TIMEOUT_S", cls.http_timeout_s),
            http_max_response_bytes=int(
                number("HTTP_MAX_RESPONSE_BYTES", cls.http_max_response_bytes)
            ),
            events_poll_interval_s=number("EVENTS_POLL_INTERVAL_S", cls.events_poll_interval_s),
            events_heartbeat_s=number("EVENTS_HEARTBEAT_S", cls.events_heartbeat_s),
            events_max_duration_s=number("EVENTS_MAX_DURATION_S", cls.events_max_duration_s),
            web_threads=web_threads,
            events_max_streams=int(number("EVENTS_MAX_STREAMS", web_threads // 2)),
            secrets_dir=Path(env.get("SECRETS_DIR") or var_dir / "secrets").resolve(),
            run_retention_days=number("RUN_RETENTION_DAYS", cls.run_retention_days),
            audit_retention_days=number("AUDIT_RETENTION_DAYS", cls.audit_retention_days),
            retention_batch_size=int(number("RETENTION_BATCH_SIZE", cls.retention_batch_size)),
            rate_limit_writes=env.get("RATE_LIMIT_WRITES", cls.rate_limit_writes).strip(),
            rate_limit_reads=env.get("RATE_LIMIT_READS", cls.rate_limit_reads).strip(),
            rate_limit_storage_url=env.get("RATE_LIMIT_STORAGE_URL", "").strip(),
            webhook_secret=webhook_secret,
            webhook_previous_secrets=_csv(env.get("WEBHOOK_PREVIOUS_SECRETS")),
            webhook_timeout_s=number("WEBHOOK_TIMEOUT_S", cls.webhook_timeout_s),
            webhook_max_age_hours=number("WEBHOOK_MAX_AGE_HOURS", cls.webhook_max_age_hours),
            webhook_backoff_s=number("WEBHOOK_BACKOFF_S", cls.webhook_backoff_s),
            webhook_max_backoff_s=number("WEBHOOK_MAX_BACKOFF_S", cls.webhook_max_backoff_s),
            webhook_interval_s=number("WEBHOOK_INTERVAL_S", cls.webhook_interval_s),
            webhook_batch_size=int(number("WEBHOOK_BATCH_SIZE", cls.webhook_batch_size)),
        )
        settings.check()
        return settings

    def check(self) -> None:
        """Refuse a configuration that cannot work, naming every setting involved."""
        from engine.config_checks import problems  # it reads this module's Settings

        found = problems(self)
        if found:
            raise ConfigError("invalid configuration: " + "; ".join(found))

    def longest_message_hold_s(self) -> float:
        """How long a worker may hold one message unacknowledged: a retry's countdown, then
        the longest step up to its hard limit, and the lease grace on top."""
        return (
            self.retry_max_backoff_s
            + self.step_hard_limit(self.step_timeout_max_s)
            + self.lease_grace_s
        )

    @staticmethod
    def step_hard_limit(soft_limit_s: float) -> float:
        """The hard limit that kills a worker child: the soft limit plus a margin to clean up."""
        return soft_limit_s + max(1.0, min(30.0, soft_limit_s * 0.1))

    @property
    def retention_on(self) -> bool:
        """Whether beat prunes periodically (RUN_ or AUDIT_RETENTION_DAYS set)."""
        return self.run_retention_days > 0 or self.audit_retention_days > 0

    @property
    def rate_limit_storage(self) -> str:
        """Where the rate limits count: RATE_LIMIT_STORAGE_URL, else REDIS_URL."""
        return self.rate_limit_storage_url or self.redis_url

    @property
    def rate_limited(self) -> bool:
        return bool(self.rate_limit_writes or self.rate_limit_reads)

    @property
    def is_sqlite(self) -> bool:
        return self.database_url.startswith("sqlite")

    def with_changes(self, **changes: object) -> Settings:
        """A copy with some fields replaced (tests and the CLI use it)."""
        updated = replace(self, **changes)  # type: ignore[arg-type]
        updated.check()
        return updated
