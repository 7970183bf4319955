"""PostgreSQL's client tools as backup and restore run them (engine.backup): the pg_dump and
pg_restore built for the server's major version, given the URL as libpq reads it, with the
password in the environment (out of `ps`) and a lock timeout."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

from sqlalchemy import text
from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import SQLAlchemyError

from engine.config import Settings
from engine.db import make_engine, normalise_url
from engine.errors import DatabaseOperationError

# pg_restore gives up instead of waiting forever behind a session that holds a lock.
PG_LOCK_TIMEOUT = "-c lock_timeout=30000"


def run_tool(settings: Settings, tool: str, args: list[str], *, connect: bool = True) -> str:
    """Run `tool` with `args`, given the database to connect to unless not `connect`, and
    return what it wrote to stdout; a failure is a DatabaseOperationError carrying the end
    of what the tool wrote to stderr."""
    url = make_url(normalise_url(settings.database_url))
    command = [pg_tool(settings, tool), *args]
    # The tools inherit this process's environment; only the password and the lock
    # timeout are added, so the password stays out of `ps`.
    env = dict(os.environ)
    if connect:
        command += ["--dbname", libpq_uri(url)]
        if url.password is not None:
            env["PGPASSWORD"] = str(url.password)
        env["PGOPTIONS"] = f"{env.get('PGOPTIONS', '')} {PG_LOCK_TIMEOUT}".strip()
    try:
        result = subprocess.run(command, env=env, capture_output=True, text=True, check=False)
    except OSError as exc:
        raise DatabaseOperationError(f"{tool} could not run: {exc}") from exc
    if result.returncode != 0:
        raise DatabaseOperationError(f"{tool} failed: {result.stderr.strip()[-2000:]}")
    return result.stdout


def libpq_uri(url: URL) -> str:
    """The URL as libpq reads it, without the driver name and the password."""
    return url.set(drivername="postgresql", password=None).render_as_string(hide_password=False)


def server_major_version(settings: Settings) -> int:
    db_engine = make_engine(settings)
    try:
        with db_engine.connect() as connection:
            return int(connection.execute(text("SHOW server_version_num")).scalar_one()) // 10000
    except SQLAlchemyError as exc:
        raise DatabaseOperationError(f"cannot reach the database: {first_line(exc)}") from exc
    finally:
        db_engine.dispose()


def pg_tool(settings: Settings, name: str) -> str:
    """`name` (pg_dump, pg_restore) built for the server's major version when installed
    (Debian keeps each version under /usr/lib/postgresql/<major>/bin), else from PATH."""
    major = server_major_version(settings)
    versioned = Path(f"/usr/lib/postgresql/{major}/bin/{name}")
    if versioned.is_file():
        return str(versioned)
    found = shutil.which(name)
    if found is None:
        raise DatabaseOperationError(
            f"{name} not found: install the PostgreSQL {major} client "
            f"(apt-get install postgresql-client-{major})"
        )
    return found


def first_line(error: Exception) -> str:
    orig = getattr(error, "orig", None) or error
    return (str(orig).strip().splitlines() or [type(orig).__name__])[0][:300]
