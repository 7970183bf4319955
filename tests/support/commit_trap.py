"""A database that refuses to commit: for checking what a use case does when its caller's
commit fails, on the real database rather than a stand-in.

While `refusing_commits` is open, a trigger on `table` writes, for each row a statement
changes that matches `when` (SQL over NEW, the same on SQLite and PostgreSQL), a row whose
foreign key points nowhere. The key is DEFERRABLE INITIALLY DEFERRED, so the statement
succeeds and the database checks the key only at COMMIT, which it then refuses (SQLite
with foreign_keys on, as engine.db sets it; PostgreSQL likewise). Everything the
transaction wrote is rolled back with it."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from contextlib import contextmanager

from sqlalchemy import text

from tests.support.stack import Stack


@contextmanager
def refusing_commits(stack: Stack, table: str, when: str, event: str = "UPDATE") -> Iterator[None]:
    """Refuse the commit of any transaction whose `event` (UPDATE or INSERT) on `table`
    touches a row matching `when`, until the block ends."""
    name = f"commit_trap_{uuid.uuid4().hex[:8]}"
    insert = f"INSERT INTO {name} (ref) VALUES ('nowhere')"
    tables = [
        f"CREATE TABLE {name}_parent (id VARCHAR(20) PRIMARY KEY)",
        f"CREATE TABLE {name} (ref VARCHAR(20) REFERENCES {name}_parent (id)"
        " DEFERRABLE INITIALLY DEFERRED)",
    ]
    if stack.backend == "postgres":
        create = [
            *tables,
            f"CREATE FUNCTION {name}() RETURNS trigger LANGUAGE plpgsql AS "
            f"$$ BEGIN {insert}; RETURN NULL; END $$",
            f"CREATE TRIGGER {name} AFTER {event} ON {table} FOR EACH ROW WHEN ({when}) "
            f"EXECUTE FUNCTION {name}()",
        ]
        drop = [
            f"DROP TRIGGER {name} ON {table}",
            f"DROP FUNCTION {name}()",
            f"DROP TABLE {name}",
            f"DROP TABLE {name}_parent",
        ]
    else:
        create = [
            *tables,
            f"CREATE TRIGGER {name} AFTER {event} ON {table} FOR EACH ROW WHEN ({when}) "
            f"BEGIN {insert}; END",
        ]
        drop = [f"DROP TRIGGER {name}", f"DROP TABLE {name}", f"DROP TABLE {name}_parent"]
    with stack.db_engine.begin() as connection:
        for statement in create:
            connection.execute(text(statement))
    try:
        yield
    finally:
        with stack.db_engine.begin() as connection:
            for statement in drop:
                connection.execute(text(statement))
