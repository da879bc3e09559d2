"""Migrations, API keys (argon2-hashed, roles, revocation) and the `dentalmim keys` command."""

from __future__ import annotations

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext

from dentalmim import auth
from dentalmim.cli import main
from dentalmim.db import (
    Base,
    current_revision,
    head_revision,
    make_engine,
    session_factory,
    upgrade,
)
from dentalmim.db.models import ApiKey


def test_migrations_build_exactly_the_models_schema_in_wal_mode(tmp_path) -> None:
    engine = make_engine(f"sqlite:///{tmp_path / 'db' / 'x.db'}")
    assert current_revision(engine) is None
    upgrade(engine)
    upgrade(engine)  # idempotent
    assert current_revision(engine) == head_revision() == "0002"
    with engine.connect() as connection:
        assert compare_metadata(MigrationContext.configure(connection), Base.metadata) == []
        assert connection.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"


def test_keys_are_stored_hashed_and_verified_by_role(tmp_path) -> None:
    engine = make_engine(f"sqlite:///{tmp_path / 'k.db'}")
    upgrade(engine)
    sessions = session_factory(engine)
    with sessions() as session:
        info, plain = auth.create_key(session, "trainer", "ci")
        session.commit()
        row = session.get(ApiKey, info.key_id)
        assert plain not in row.secret_hash and row.secret_hash.startswith("$argon2id$")
    verifier = auth.KeyVerifier(sessions, cache_seconds=60)
    assert verifier.verify(plain) == auth.Principal(info.key_id, "trainer")
    assert verifier.verify(plain[:-1] + ("A" if plain[-1] != "A" else "B")) is None
    assert verifier.verify(None) is None and verifier.verify("dmk_zz") is None
    with sessions() as session:
        auth.revoke_key(session, info.key_id)
        session.commit()
    assert verifier.verify(plain) is not None  # cached for cache_seconds
    verifier.forget(info.key_id)
    assert verifier.verify(plain) is None


def test_cli_keys_create_prints_the_key_alone_on_the_last_line(tmp_path, capsys, monkeypatch) -> None:
    url = f"sqlite:///{tmp_path / 'cli.db'}"
    monkeypatch.setenv("DATABASE_URL", url)
    assert main(["keys", "create", "--role", "clinician", "--name", "dr x"]) == 0
    key = capsys.readouterr().out.strip().splitlines()[-1]
    assert key.startswith("dmk_") and " " not in key
    sessions = session_factory(make_engine(url))
    principal = auth.KeyVerifier(sessions).verify(key)
    assert principal is not None and principal.role == "clinician"
    assert main(["keys", "list"]) == 0
    listed = capsys.readouterr().out
    assert principal.key_id in listed and "active" in listed and key not in listed
    assert main(["keys", "revoke", principal.key_id]) == 0
    assert auth.KeyVerifier(sessions).verify(key) is None
    assert main(["keys", "revoke", "unknown"]) == 2
    with pytest.raises(SystemExit) as exit_info:  # argparse refuses unknown roles
        main(["keys", "create", "--role", "root"])
    assert exit_info.value.code == 2
