"""Engine and session helpers: SQLite (WAL) by default, any SQLAlchemy URL (PostgreSQL) otherwise."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, create_engine, event
from sqlalchemy.orm import Session, sessionmaker

#: Data folder used when none is configured (scans, SQLite database, secrets).
DEFAULT_DATA_DIR = Path("dentalmim_data")
#: Seconds SQLite waits for a competing writer before failing.
SQLITE_BUSY_TIMEOUT_S = 30


def default_database_url(data_dir: str | Path) -> str:
    """The embedded default: ``sqlite:///DATA_DIR/dentalmim.db`` (absolute path)."""
    return f"sqlite:///{Path(data_dir).resolve() / 'dentalmim.db'}"


def database_url_from_env(environ: dict[str, str] | None = None) -> str:
    """The database the service uses, from the same variables as its settings: ``DATABASE_URL`` (or
    ``DENTALMIM_DATABASE_URL``), else SQLite in ``DENTALMIM_DATA_DIR`` (default ``./dentalmim_data``)."""
    env = os.environ if environ is None else environ
    url = env.get("DATABASE_URL") or env.get("DENTALMIM_DATABASE_URL")
    return url or default_database_url(env.get("DENTALMIM_DATA_DIR") or DEFAULT_DATA_DIR)


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_S * 1000}")
    cursor.close()


def with_default_driver(url: str) -> str:
    """``postgresql://`` and ``postgres://`` URLs name no driver (SQLAlchemy would pick psycopg2): use psycopg 3."""
    for scheme in ("postgresql://", "postgres://"):
        if url.startswith(scheme):
            return "postgresql+psycopg://" + url[len(scheme):]
    return url


def make_engine(url: str) -> Engine:
    """Creates an engine; SQLite files get WAL journaling, foreign keys and a busy timeout.

    Args:
        url: SQLAlchemy URL, e.g. ``sqlite:////srv/dentalmim/dentalmim.db`` or
            ``postgresql://user:pass@host/dentalmim`` (psycopg 3 unless the URL names another driver).
    """
    if url.startswith("sqlite"):
        database = url.split("///", 1)[1] if "///" in url else ""
        if database and database != ":memory:":
            Path(database).parent.mkdir(parents=True, exist_ok=True)
        engine = create_engine(url, connect_args={"check_same_thread": False, "timeout": SQLITE_BUSY_TIMEOUT_S})
        event.listen(engine, "connect", _sqlite_pragmas)
        return engine
    return create_engine(with_default_driver(url), pool_pre_ping=True)


def session_factory(engine: Engine) -> sessionmaker[Session]:
    """Sessions that keep loaded attributes after commit (results are returned after the transaction)."""
    return sessionmaker(engine, expire_on_commit=False)
