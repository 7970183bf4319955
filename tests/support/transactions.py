"""What the database driver itself says, under SQLAlchemy: whether a transaction is open."""

from __future__ import annotations

from sqlalchemy import Connection
from sqlalchemy.orm import Session


def in_transaction(db_or_session: Session | Connection) -> bool:
    """Whether the driver's connection under a session or connection is in a transaction."""
    connection = db_or_session.connection() if isinstance(db_or_session, Session) else db_or_session
    driver = connection.connection.dbapi_connection
    if connection.dialect.name == "sqlite":
        return bool(driver.in_transaction)
    return driver.info.transaction_status != driver.info.transaction_status.IDLE
