"""`engine db backup|restore|check|analyze|vacuum` on SQLite and PostgreSQL: a backup brings
the data back, a restore waits for the workers to stop (or --force), a check tells a good
database from an un-migrated or broken one, a vacuum gives back deleted rows' space."""

from __future__ import annotations

import shutil
import sqlite3
import stat
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import jwt
import pytest
from click.testing import Result
from sqlalchemy import delete, insert, select, text, update

from engine import delayed, migrations, runs
from engine.auth import Caller
from engine.models import RevokedToken, Run, Workflow, utcnow
from tests.conftest import spec
from tests.support import services
from tests.support.cli import failed, ok, run_engine
from tests.support.stack import JWT_SECRET, Stack


@pytest.fixture(scope="module")
def platform(backend: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """A database of its own (tests here restore over it), workers started on demand."""
    if backend == "postgres" and shutil.which("pg_dump") is None:
        services.unavailable("pg_dump (apt-get install postgresql-client)")
    stack = Stack(backend, tmp_path_factory.mktemp(f"backup-{backend}"))
    yield stack
    stack.close()


def workflow_names(stack: Stack) -> set[str]:
    with stack.sessions() as session:
        return set(session.scalars(select(Workflow.name)))


def test_a_restored_backup_brings_back_the_data_it_was_taken_with(
    platform: Stack, unique: str, tmp_path: Path
) -> None:
    platform.register(spec(f"{unique}_kept", [{"id": "a", "action": "noop"}]))
    default = Path(ok(engine_cli(platform, "db", "backup")).strip())
    assert default.parent == platform.settings.var_dir / "backups" and default.is_file()
    assert default.suffix == (".db" if platform.backend == "sqlite" else ".dump")
    chosen = tmp_path / "chosen" / "copy.bak"
    assert ok(engine_cli(platform, "db", "backup", str(chosen))).strip() == str(chosen)

    platform.register(spec(f"{unique}_later", [{"id": "a", "action": "noop"}]))
    with platform.sessions.begin() as session:
        session.execute(text("DELETE FROM workflows WHERE name = :n"), {"n": f"{unique}_kept"})
    assert f"{unique}_kept" not in workflow_names(platform)

    out = ok(engine_cli(platform, "db", "restore", str(chosen)))
    assert "restored" in out and "current database saved to" in out
    names = workflow_names(platform)
    assert f"{unique}_kept" in names and f"{unique}_later" not in names
    # The API's open connections keep working on the restored database.
    response = platform.client().get(
        f"/workflows/{unique}_kept", headers=platform.headers(scopes="workflows.read")
    )
    assert response.status_code == 200, response.get_json()
    ok(engine_cli(platform, "db", "check"))


def test_a_restore_is_refused_while_a_worker_answers_and_goes_ahead_with_force(
    platform: Stack, unique: str, tmp_path: Path
) -> None:
    backup = tmp_path / "before.bak"
    ok(engine_cli(platform, "db", "backup", str(backup)))
    platform.register(spec(f"{unique}_after", [{"id": "a", "action": "noop"}]))
    worker = platform.start_worker(concurrency=1)
    try:
        out = failed(engine_cli(platform, "db", "restore", str(backup)))
        assert "workers are online" in out and worker.name.split("@")[0] in out
        assert f"{unique}_after" in workflow_names(platform)

        ok(engine_cli(platform, "db", "restore", "--force", "--no-safety-copy", str(backup)))
        assert f"{unique}_after" not in workflow_names(platform)
    finally:
        worker.stop()


def test_a_file_that_is_not_a_backup_is_refused_and_nothing_changes(
    platform: Stack, unique: str, tmp_path: Path
) -> None:
    platform.register(spec(unique, [{"id": "a", "action": "noop"}]))
    bogus = tmp_path / "bogus.bak"
    bogus.write_text("not a backup\n")
    failed(engine_cli(platform, "db", "restore", "--force", str(bogus)))
    # A missing file is a usage error, found before the current database is copied aside.
    copies = set((platform.settings.var_dir / "backups").glob("pre-restore-*"))
    missing = engine_cli(platform, "db", "restore", "--force", str(tmp_path / "missing.bak"))
    assert missing.exit_code == 2 and "does not exist" in missing.output, missing.output
    assert set((platform.settings.var_dir / "backups").glob("pre-restore-*")) == copies
    assert unique in workflow_names(platform)


def test_a_backup_never_overwrites_a_file_unless_forced_and_never_the_live_database(
    platform: Stack, unique: str, tmp_path: Path
) -> None:
    existing = tmp_path / "existing.bak"
    existing.write_text("keep me\n")
    assert "already exists" in failed(engine_cli(platform, "db", "backup", str(existing)))
    assert existing.read_text() == "keep me\n"
    assert ok(engine_cli(platform, "db", "backup", "--force", str(existing))).strip() == str(
        existing
    )
    assert existing.read_bytes() != b"keep me\n"
    # Its owner's alone, whatever the file it replaced allowed.
    assert stat.S_IMODE(existing.stat().st_mode) == 0o600
    if platform.backend == "sqlite":
        platform.register(spec(unique, [{"id": "a", "action": "noop"}]))
        live = Path(platform.database_url.removeprefix("sqlite:///"))
        for forced in ((), ("--force",)):
            out = failed(engine_cli(platform, "db", "backup", *forced, str(live)))
            assert "live database" in out
        assert unique in workflow_names(platform)
        ok(engine_cli(platform, "db", "check"))


def test_a_file_that_is_not_a_backup_is_refused_before_the_safety_copy(
    platform: Stack, tmp_path: Path
) -> None:
    bogus = tmp_path / "notabackup.db"
    bogus.write_text("not a backup\n")
    backups = platform.settings.var_dir / "backups"
    copies = set(backups.glob("pre-restore-*"))
    out = failed(engine_cli(platform, "db", "restore", "--force", str(bogus)))
    assert "not" in out and str(bogus) in out
    assert set(backups.glob("pre-restore-*")) == copies


def test_check_passes_on_a_migrated_database_and_fails_on_an_unmigrated_one(
    platform: Stack, tmp_path: Path
) -> None:
    out = ok(engine_cli(platform, "db", "check"))
    assert "FAIL" not in out and "revision" in out and "tables" in out
    if platform.backend == "sqlite":
        assert "integrity" in out and "foreign_keys" in out
        empty = tmp_path / "empty.db"
        sqlite3.connect(empty).close()
        url = f"sqlite:///{empty}"
    else:
        url = services.create_postgres_database()
    try:
        out = failed(engine_cli(platform, "db", "check", DATABASE_URL=url))
        assert "FAIL  revision" in out and "engine db upgrade" in out
        assert "FAIL  tables" in out and "database check failed" in out
    finally:
        if platform.backend == "postgres":
            services.drop_postgres_database(url)
    missing = f"sqlite:///{tmp_path / 'nowhere.db'}"
    assert "no database file" in failed(engine_cli(platform, "db", "check", DATABASE_URL=missing))
    assert not (tmp_path / "nowhere.db").exists()


def test_check_reports_rows_that_break_a_foreign_key_in_sqlite(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'engine.db'}"
    migrations.upgrade(url)
    env = {"DATABASE_URL": url, "ENGINE_VAR_DIR": str(tmp_path), "JWT_SECRET": JWT_SECRET}
    ok(run_engine(env, "db", "check"))
    connection = sqlite3.connect(tmp_path / "engine.db")  # foreign keys are off here
    connection.execute(
        "INSERT INTO steps (run_id, step_id, position, action, queue, depends_on,"
        " pending_deps, status, attempts, max_attempts, timeout_s) VALUES"
        " ('no-such-run', 's', 0, 'noop', 'steps', '[]', 0, 'pending', 0, 1, 1.0)"
    )
    connection.commit()
    connection.close()
    out = failed(run_engine(env, "db", "check"))
    assert "FAIL  foreign_keys" in out and "steps row" in out


def test_analyze_refreshes_the_planner_statistics(platform: Stack) -> None:
    assert "analyzed" in ok(engine_cli(platform, "db", "analyze"))
    with platform.db_engine.connect() as connection:
        if platform.backend == "sqlite":
            assert connection.execute(text("SELECT count(*) FROM sqlite_stat1")).scalar()
        else:
            analyzed = connection.execute(
                text("SELECT last_analyze FROM pg_stat_user_tables WHERE relname = 'workflows'")
            ).scalar()
            assert analyzed is not None


def test_vacuum_gives_back_the_space_of_deleted_rows(platform: Stack) -> None:
    """After a large delete (a prune), SQLite's file shrinks only by a VACUUM, which holds
    the write lock: refused while workers answer, unless forced. PostgreSQL vacuums while
    the platform runs."""
    rows = [
        {
            "id": str(uuid.uuid4()),
            "workflow": "vacuumed",
            "version": 1,
            "params": {"padding": "x" * 2000},
            "status": "succeeded",
            "priority": 0,
            "created_by": "vacuum@example.com",
        }
        for _ in range(3000)
    ]
    with platform.sessions.begin() as session:
        session.execute(insert(Run), rows)
    with platform.sessions.begin() as session:
        session.execute(delete(Run).where(Run.workflow == "vacuumed"))
    if platform.backend == "sqlite":
        worker = platform.start_worker(concurrency=1)
        try:
            refused = failed(engine_cli(platform, "db", "vacuum"))
        finally:
            worker.stop()
        assert "workers are online" in refused and "--force" in refused
        path = Path(platform.settings.database_url.removeprefix("sqlite:///"))
        before = path.stat().st_size
        out = ok(engine_cli(platform, "db", "vacuum", "--force"))
        assert "vacuumed" in out and " MiB -> " in out
        # 3,000 rows of 2 KB were deleted: the file gives back at least 4 MB of them.
        assert path.stat().st_size < before - 4 * 2**20, (before, path.stat().st_size)
        assert not path.with_name(path.name + "-wal").exists() or (
            path.with_name(path.name + "-wal").stat().st_size == 0
        )
        assert "ok    integrity" in ok(engine_cli(platform, "db", "check"))
    else:
        assert "vacuumed" in ok(engine_cli(platform, "db", "vacuum"))
        with platform.db_engine.connect() as connection:
            vacuumed = connection.execute(
                text("SELECT last_vacuum FROM pg_stat_user_tables WHERE relname = 'runs'")
            ).scalar()
        assert vacuumed is not None


def engine_cli(stack: Stack, *args: str, **env: str) -> Result:
    """Run `engine ARGS` with the stack's environment (its database, Redis prefix, secret)."""
    return run_engine({**stack.env, **env}, *args)


def test_tokens_revoked_since_a_backup_stay_revoked_when_it_is_restored(
    platform: Stack, tmp_path: Path
) -> None:
    # A restore must not let a leaked token back in: the revocations of the database it
    # replaces are carried over.
    leaked, kept_out = platform.token("leaked@example.com"), platform.token("old@example.com")
    ok(engine_cli(platform, "token", "revoke", jti_of(kept_out)))
    backup = tmp_path / "before.bak"
    ok(engine_cli(platform, "db", "backup", str(backup)))
    ok(engine_cli(platform, "token", "revoke", jti_of(leaked)))

    out = ok(engine_cli(platform, "db", "restore", "--no-safety-copy", str(backup)))
    assert "1 token revocation(s) made since that backup kept" in out
    with platform.sessions() as session:
        revoked = set(session.scalars(select(RevokedToken.jti)))
    assert {jti_of(leaked), jti_of(kept_out)} <= revoked
    refused = engine_cli(platform, "token", "inspect", leaked)
    assert refused.exit_code == 1 and "revoked" in refused.output, refused.output


def test_a_revocation_of_a_token_expired_since_is_carried_over_too(
    platform: Stack, tmp_path: Path
) -> None:
    # A schedule in the backup may act with a token revoked, and expired, since it was
    # taken: the revocation must still be there to stop it.
    backup = tmp_path / "before-expiry.bak"
    ok(engine_cli(platform, "db", "backup", str(backup)))
    jti = f"expired-{uuid.uuid4().hex}"
    with platform.sessions.begin() as session:
        session.add(
            RevokedToken(
                jti=jti,
                revoked_by="ops@example.com",
                expires_at=utcnow() - timedelta(minutes=5),
            )
        )
    out = ok(engine_cli(platform, "db", "restore", "--no-safety-copy", "--force", str(backup)))
    assert "token revocation(s) made since that backup kept" in out
    with platform.sessions() as session:
        assert jti in set(session.scalars(select(RevokedToken.jti)))


def test_a_runs_fire_time_comes_back_with_a_restored_backup(
    platform: Stack, unique: str, tmp_path: Path
) -> None:
    platform.register(spec(unique, [{"id": "a", "action": "noop"}]))
    fire_time = datetime(2026, 3, 29, 1, 30, tzinfo=UTC)
    with platform.sessions.begin() as session:
        request = runs.SubmitRun(unique, {}, idempotency_key=unique, scheduled_for=fire_time)
        run_id = runs.submit(session, platform.settings, request, Caller("me", ()))[0].id
    backup = tmp_path / "scheduled.bak"
    ok(engine_cli(platform, "db", "backup", str(backup)))
    with platform.sessions.begin() as session:
        session.execute(update(Run).where(Run.id == run_id).values(scheduled_for=None))
    ok(engine_cli(platform, "db", "restore", "--no-safety-copy", "--force", str(backup)))
    with platform.sessions() as session:
        assert session.get(Run, run_id).scheduled_for == fire_time  # type: ignore[union-attr]


def test_a_database_that_is_not_the_platforms_is_refused_before_anything_is_touched(
    platform: Stack, unique: str, tmp_path: Path
) -> None:
    if platform.backend != "sqlite":
        pytest.skip("a SQLite file of another application; PostgreSQL's dumps are checked alike")
    other = tmp_path / "other.db"
    connection = sqlite3.connect(other)
    connection.execute("CREATE TABLE t (x)")
    connection.commit()
    connection.close()
    platform.register(spec(unique, [{"id": "a", "action": "noop"}]))
    copies = set((platform.settings.var_dir / "backups").glob("pre-restore-*"))
    out = failed(engine_cli(platform, "db", "restore", "--force", str(other)))
    assert "not one of this platform's" in out
    assert set((platform.settings.var_dir / "backups").glob("pre-restore-*")) == copies
    assert unique in workflow_names(platform)


def jti_of(token: str) -> str:
    return str(jwt.decode(token, options={"verify_signature": False})["jti"])


def test_a_delayed_run_comes_back_from_a_backup_still_waiting_for_its_time(
    platform: Stack, unique: str, tmp_path: Path
) -> None:
    platform.register(spec(unique, [{"id": "a", "action": "noop"}]))
    at = (utcnow() + timedelta(hours=3)).replace(microsecond=0)
    response = platform.client().post(
        "/runs",
        json={"workflow": unique, "not_before": at.isoformat()},
        headers=platform.headers(),
    )
    assert response.status_code == 202, response.get_json()
    run_id = response.get_json()["id"]
    backup = tmp_path / "delayed.bak"
    ok(engine_cli(platform, "db", "backup", str(backup)))
    with platform.sessions.begin() as session:
        session.execute(delete(Run).where(Run.id == run_id))

    ok(engine_cli(platform, "db", "restore", "--no-safety-copy", str(backup)))
    with platform.sessions() as session:
        run = session.get(Run, run_id)
        assert run is not None
        assert (run.status, run.not_before, run.dispatched_at) == ("queued", at, at)
        # Still found waiting, and due at its time (the tick's lookup, its index restored).
        assert delayed.waiting(session) == 1
        assert delayed.lag_seconds(session, at + timedelta(seconds=5)) == 5.0
