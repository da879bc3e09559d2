"""Programmatic Alembic migrations (the scripts are packaged in ``dentalmim/db/migrations``).

``upgrade(engine)`` brings a database to the newest schema; the service runs it at start-up and the ``dentalmim
keys`` commands before touching the keys table. To add a revision during development, write an ``alembic.ini``
with ``script_location = dentalmim/db/migrations`` and ``sqlalchemy.url = sqlite:///dev.db``, then run
``alembic upgrade head`` and ``alembic revision --autogenerate -m "..."``; review the generated script.
"""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Engine

MIGRATIONS_DIR = Path(__file__).resolve().parent / "migrations"


def alembic_config(engine: Engine | None = None) -> Config:
    """An Alembic config pointing at the packaged scripts (and at ``engine``'s URL when given)."""
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    if engine is not None:
        config.set_main_option("sqlalchemy.url", engine.url.render_as_string(hide_password=False).replace("%",
                                                                                                           "%%"))
    return config


def upgrade(engine: Engine, revision: str = "head") -> None:
    """Migrates the database of ``engine`` to ``revision`` (default: the newest)."""
    config = alembic_config(engine)
    with engine.begin() as connection:
        config.attributes["connection"] = connection
        command.upgrade(config, revision)


def current_revision(engine: Engine) -> str | None:
    """The database's current revision (None for an empty database)."""
    with engine.connect() as connection:
        return MigrationContext.configure(connection).get_current_revision()


def head_revision() -> str | None:
    """The newest revision of the packaged scripts."""
    return ScriptDirectory.from_config(alembic_config()).get_current_head()
