"""Alembic environment: the URL comes from the engine settings or the caller's config."""

from __future__ import annotations

from alembic import context

from engine.config import Settings
from engine.db import make_engine
from engine.models import Base

config = context.config
url = config.get_main_option("sqlalchemy.url") or Settings.from_env().database_url


def run_migrations_offline() -> None:
    context.configure(
        url=url,
        target_metadata=Base.metadata,
        literal_binds=True,
        render_as_batch=url.startswith("sqlite"),
    )
    with context.begin_transaction():
        context.run_migrations()


def run_migrations_online() -> None:
    db_engine = make_engine(url)
    with db_engine.connect() as connection:
        if connection.dialect.name == "sqlite":
            # SQLite alters a table by copying it and dropping the old one; with foreign keys
            # enforced, that drop would cascade into the child rows. The pragma only takes
            # effect outside a transaction, so it goes to the driver connection directly.
            connection.connection.driver_connection.execute("PRAGMA foreign_keys=OFF")
        context.configure(
            connection=connection,
            target_metadata=Base.metadata,
            render_as_batch=connection.dialect.name == "sqlite",
        )
        with context.begin_transaction():
            context.run_migrations()
    db_engine.dispose()


if context.is_offline_mode():
    run_migrations_offline()
else:
    run_migrations_online()
