"""Database connections and schema upgrades (Alembic, applied by the commands that need them)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from sqlalchemy import create_engine, event, text
from sqlalchemy.engine import Engine
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker

MIGRATIONS_DIR = Path(__file__).resolve().parent.parent / "migrations"


class DatabaseError(RuntimeError):
    """The catalogue database cannot be reached or upgraded; the message says which and why."""


def normalise_database_url(url: str) -> str:
    """Heroku-style and plain `postgresql://` URLs use the installed psycopg (v3) driver."""
    for prefix in ("postgres://", "postgresql://"):
        if url.startswith(prefix):
            return "postgresql+psycopg://" + url.removeprefix(prefix)
    return url


def make_engine(url: str) -> Engine:
    """An engine for `url`; SQLite gets foreign keys on and its parent folder created."""
    if url.startswith("sqlite:///") and url != "sqlite:///:memory:":
        Path(url.removeprefix("sqlite:///")).expanduser().parent.mkdir(parents=True, exist_ok=True)
    engine = create_engine(normalise_database_url(url), pool_pre_ping=True)
    if engine.dialect.name == "sqlite":
        event.listen(engine, "connect", _sqlite_pragmas)
    return engine


def _sqlite_pragmas(connection, _record) -> None:
    cursor = connection.cursor()
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute("PRAGMA journal_mode=WAL")  # readers (the app) never block the indexer's writes
    cursor.close()


def check_connection(engine: Engine) -> None:
    try:
        with engine.connect() as connection:
            connection.execute(text("SELECT 1"))
    except SQLAlchemyError as error:
        reason = " ".join(str(getattr(error, "orig", None) or error).split())  # drivers add newlines and tabs
        raise DatabaseError(f"cannot reach the database {engine.url.render_as_string(hide_password=True)}: "
                            f"{reason}") from error


def upgrade_database(url: str, revision: str = "head") -> None:
    """Apply the Alembic migrations up to `revision` (idempotent)."""
    from alembic import command
    from alembic.config import Config

    check_connection(make_engine(url))
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    config.set_main_option("sqlalchemy.url", normalise_database_url(url).replace("%", "%%"))
    command.upgrade(config, revision)


def session_factory(url: str, upgrade: bool = True) -> sessionmaker[Session]:
    """A session maker for `url`, after bringing the schema up to date when `upgrade`."""
    if upgrade:
        upgrade_database(url)
    return sessionmaker(make_engine(url), expire_on_commit=False)


@contextmanager
def transaction(sessions: sessionmaker[Session]) -> Iterator[Session]:
    """A session committed on success and rolled back on any error."""
    with sessions() as session, session.begin():
        yield session
