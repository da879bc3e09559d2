"""The PostgreSQL path (``DATABASE_URL=postgresql://...``) against a throwaway server: migrations, API keys, the CLI
and the clinical API through the real app.

The server comes from the local PostgreSQL binaries (``initdb``, ``pg_ctl``, ``postgres`` on PATH, in
``/usr/lib/postgresql/*/bin`` or in ``$DENTALMIM_PG_BINDIR``): a cluster is initialised in a temporary folder,
listens on a free localhost port (and a Unix socket in that folder), and is stopped and deleted after the session.
PostgreSQL refuses to run as root, so as root its processes run as the ``postgres`` system user (else ``nobody``).
Without the binaries the tests are skipped; ``make postgres`` installs them (Debian, as root).
"""

from __future__ import annotations

import itertools
import os
import pwd
import re
import shlex
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import quote

import pytest
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import Engine, func, inspect, select, text

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
from dentalmim.db.engine import with_default_driver
from dentalmim.db.migrate import alembic_config
from dentalmim.db.models import ApiKey, AuditEvent
from service.settings import get_settings
from tests.service.conftest import Running, dicom_bytes, upload
from tests.service.test_api import (
    test_keys_and_roles,
    test_reading_back_findings_is_owner_only_and_audited,
    test_scans_are_stored_deidentified_and_content_addressed,
    test_sr_carries_the_original_study_or_the_deidentified_one,
    test_upload_gives_findings_in_px_and_mm_with_pseudonymous_ids,
)

#: The API tests of test_api.py collected here once more, on PostgreSQL (the ``database_url`` fixture below).
API_TESTS_ON_POSTGRES = (test_upload_gives_findings_in_px_and_mm_with_pseudonymous_ids,
                         test_scans_are_stored_deidentified_and_content_addressed,
                         test_reading_back_findings_is_owner_only_and_audited,
                         test_sr_carries_the_original_study_or_the_deidentified_one, test_keys_and_roles)

PG_TOOLS = ("initdb", "pg_ctl", "postgres")
PG_BINDIR_ENV = "DENTALMIM_PG_BINDIR"
PG_USER = "dentalmim"
#: The '%' checks that passwords survive the way into Alembic's (interpolating) config.
PG_PASSWORD = "s3cret%pw"
#: Settings for a disposable server: small, no durability.
PG_OPTIONS = ("-c fsync=off -c synchronous_commit=off -c full_page_writes=off -c shared_buffers=16MB "
              "-c max_connections=60")


def _version_key(bindir: Path) -> tuple[int, ...]:
    return tuple(int(part) for part in re.findall(r"\d+", bindir.parent.name)) or (0,)


def find_pg_bindir() -> Path | None:
    """The folder holding ``initdb``, ``pg_ctl`` and ``postgres``: ``$DENTALMIM_PG_BINDIR``, PATH, or the newest
    ``/usr/lib/postgresql/<version>/bin`` (where Debian puts them, off PATH)."""
    candidates = [Path(os.environ[PG_BINDIR_ENV])] if os.environ.get(PG_BINDIR_ENV) else []
    on_path = shutil.which("initdb")
    if on_path:
        candidates.append(Path(on_path).resolve().parent)
    candidates += sorted(Path("/usr/lib/postgresql").glob("*/bin"), key=_version_key, reverse=True)
    for bindir in candidates:
        if all(os.access(bindir / tool, os.X_OK) for tool in PG_TOOLS):
            return bindir
    return None


def server_account() -> pwd.struct_passwd | None:
    """The unprivileged account the server runs as when we are root (None: run as ourselves)."""
    if os.geteuid() != 0:
        return None
    for name in ("postgres", "nobody"):
        try:
            return pwd.getpwnam(name)
        except KeyError:
            continue
    pytest.skip("running as root, and no 'postgres' or 'nobody' account to run PostgreSQL as")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass
class PgServer:
    """A throwaway PostgreSQL cluster in ``root`` (``root/data``, log ``root/server.log``)."""

    bindir: Path
    root: Path
    account: pwd.struct_passwd | None
    port: int = 0
    _names: Iterator[int] = field(default_factory=itertools.count)

    @property
    def data(self) -> Path:
        return self.root / "data"

    def run(self, tool: str, *args: str) -> subprocess.CompletedProcess:
        """Runs a PostgreSQL tool (as :attr:`account`), without PG* variables of the caller."""
        env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
        as_account = {} if self.account is None else {"user": self.account.pw_uid, "group": self.account.pw_gid,
                                                       "extra_groups": []}
        return subprocess.run([str(self.bindir / tool), *args], cwd=self.root, env=env, capture_output=True,
                              text=True, timeout=60, check=False, **as_account)

    def give(self, path: Path) -> None:
        if self.account is not None:
            os.chown(path, self.account.pw_uid, self.account.pw_gid)

    def log_tail(self) -> str:
        log = self.root / "server.log"
        return log.read_text(errors="replace")[-2000:] if log.exists() else "(no server log)"

    def init(self) -> None:
        password_file = self.root / "password"
        password_file.write_text(PG_PASSWORD + "\n")
        self.give(password_file)
        # md5 over TCP also accepts SCRAM-stored passwords, whatever the server version's default
        result = self.run("initdb", "-D", str(self.data), "-U", PG_USER, f"--pwfile={password_file}",
                          "--auth-local=trust", "--auth-host=md5", "--encoding=UTF8", "--locale=C", "--no-sync")
        password_file.unlink()
        if result.returncode != 0:
            pytest.fail(f"initdb failed ({result.returncode}):\n{result.stdout}\n{result.stderr}")

    def start(self, attempts: int = 3) -> None:
        """Starts on a free localhost port (another one if that port was taken meanwhile)."""
        for _ in range(attempts):
            self.port = free_port()
            options = f"-c listen_addresses=127.0.0.1 -p {self.port} -k {shlex.quote(str(self.root))} {PG_OPTIONS}"
            result = self.run("pg_ctl", "-D", str(self.data), "-l", str(self.root / "server.log"), "-o", options,
                              "-w", "-t", "30", "start")
            if result.returncode == 0:
                return
        pytest.fail(f"PostgreSQL did not start: {result.stdout}\n{result.stderr}\n{self.log_tail()}")

    def stop(self) -> None:
        """Stops the server (fast, else immediate) and deletes the cluster."""
        try:
            if (self.data / "postmaster.pid").exists() and self.run(
                    "pg_ctl", "-D", str(self.data), "-m", "fast", "-w", "-t", "20", "stop").returncode != 0:
                self.run("pg_ctl", "-D", str(self.data), "-m", "immediate", "-w", "stop")
        finally:
            shutil.rmtree(self.root, ignore_errors=True)

    def url(self, database: str) -> str:
        """A plain ``postgresql://`` URL (no driver named), as an operator would set ``DATABASE_URL``."""
        return f"postgresql://{PG_USER}:{quote(PG_PASSWORD, safe='')}@127.0.0.1:{self.port}/{database}"

    def create_database(self) -> str:
        """A new empty database; returns its URL."""
        import psycopg

        name = f"dentalmim_{next(self._names)}"
        with psycopg.connect(host="127.0.0.1", port=self.port, user=PG_USER, password=PG_PASSWORD, dbname="postgres",
                             autocommit=True) as connection:
            connection.execute(f'CREATE DATABASE "{name}"')
        return self.url(name)


@pytest.fixture(scope="session")
def postgres() -> Iterator[PgServer]:
    """A running throwaway server for the session, skipped without the binaries or the driver."""
    pytest.importorskip("psycopg", reason="the PostgreSQL driver (psycopg, in the dev extras) is not installed")
    bindir = find_pg_bindir()
    if bindir is None:
        pytest.skip("PostgreSQL server binaries (initdb, pg_ctl, postgres) not found on PATH, in "
                    f"/usr/lib/postgresql/*/bin or ${PG_BINDIR_ENV}; `make postgres` installs them (Debian, as root)")
    account = server_account()
    shared_tmp = "/tmp" if account is not None and Path("/tmp").is_dir() else None  # $TMPDIR may be root's only
    server = PgServer(bindir, Path(tempfile.mkdtemp(prefix="dentalmim-pg-", dir=shared_tmp)), account)
    try:
        server.give(server.root)
        server.init()
        server.start()
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="module")
def database_url(postgres: PgServer) -> str:
    """Overrides conftest's: this module's ``running`` app (and the test_api tests above) use PostgreSQL."""
    return postgres.create_database()


@pytest.fixture
def engine(postgres: PgServer) -> Iterator[Engine]:
    """An engine on a fresh empty database."""
    engine = make_engine(postgres.create_database())
    yield engine
    engine.dispose()


def test_plain_postgresql_urls_get_psycopg_and_reach_the_server(engine: Engine) -> None:
    assert engine.dialect.name == "postgresql" and engine.url.drivername == "postgresql+psycopg"
    assert engine.url.password == PG_PASSWORD
    with engine.connect() as connection:
        assert connection.execute(text("select version()")).scalar().startswith("PostgreSQL")
    assert with_default_driver("postgres://u:p@db:5432/x") == "postgresql+psycopg://u:p@db:5432/x"
    assert with_default_driver("postgresql+psycopg2://u@db/x") == "postgresql+psycopg2://u@db/x"
    assert with_default_driver("sqlite:///x.db") == "sqlite:///x.db"


def test_migrations_build_exactly_the_models_schema_and_downgrade(engine: Engine) -> None:
    assert current_revision(engine) is None
    upgrade(engine)
    upgrade(engine)  # idempotent
    assert current_revision(engine) == head_revision()
    with engine.connect() as connection:
        assert compare_metadata(MigrationContext.configure(connection), Base.metadata) == []
    assert set(inspect(engine).get_table_names()) == {*Base.metadata.tables, "alembic_version"}
    config = alembic_config(engine)
    with engine.begin() as connection:
        config.attributes["connection"] = connection
        command.downgrade(config, "base")
    inspector = inspect(engine)
    assert inspector.get_table_names() == ["alembic_version"] and current_revision(engine) is None
    upgrade(engine)  # and back up again
    assert current_revision(engine) == head_revision()


def test_keys_are_stored_hashed_and_verified_by_role(engine: Engine) -> None:
    upgrade(engine)
    sessions = session_factory(engine)
    with sessions() as session:
        info, plain = auth.create_key(session, "trainer", "ci")
        session.commit()
    with sessions() as session:
        row = session.get(ApiKey, info.key_id)
        assert plain not in row.secret_hash and row.secret_hash.startswith("$argon2id$")
        assert row.created_at.utcoffset().total_seconds() == 0 and row.revoked_at is None
    verifier = auth.KeyVerifier(sessions, cache_seconds=60)
    assert verifier.verify(plain) == auth.Principal(info.key_id, "trainer")
    assert verifier.verify(plain[:-1] + ("A" if plain[-1] != "A" else "B")) is None
    with sessions() as session:
        auth.revoke_key(session, info.key_id)
        session.commit()
    verifier.forget(info.key_id)
    assert verifier.verify(plain) is None
    with sessions() as session:
        assert session.get(ApiKey, info.key_id).revoked_at is not None


def test_cli_keys_and_settings_follow_database_url(postgres: PgServer, monkeypatch, capsys) -> None:
    url = postgres.create_database()
    monkeypatch.setenv("DATABASE_URL", url)
    assert get_settings().database_url == url
    assert main(["keys", "create", "--role", "clinician", "--name", "dr pg"]) == 0
    key = capsys.readouterr().out.strip().splitlines()[-1]
    engine = make_engine(url)
    try:
        verifier = auth.KeyVerifier(session_factory(engine))
        principal = verifier.verify(key)
        assert principal is not None and principal.role == "clinician"
        assert main(["keys", "list"]) == 0
        listed = capsys.readouterr().out
        assert principal.key_id in listed and "active" in listed and key not in listed
        assert main(["keys", "revoke", principal.key_id]) == 0
        assert auth.KeyVerifier(session_factory(engine)).verify(key) is None
        assert main(["keys", "revoke", "unknown"]) == 2
    finally:
        engine.dispose()


def test_the_app_keeps_its_records_in_postgresql(running: Running, database_url: str) -> None:
    services = running.app.state.services
    assert services.engine.dialect.name == "postgresql" and services.engine.url.database == database_url.rsplit("/")[-1]
    assert not (running.settings.data_dir / "dentalmim.db").exists()
    response = upload(running.client, running.keys.clinician, dicom_bytes(seed=11))
    assert response.status_code == 201, response.text
    (pred,) = response.json()["predictions"]
    headers = running.keys.header("clinician2")
    assert running.client.get(pred["links"]["self"], headers=headers).status_code == 404
    assert running.client.get(pred["links"]["self"], headers={"X-API-Key": "dmk_nope"}).status_code == 401
    assert upload(running.client, running.keys.trainer, dicom_bytes()).status_code == 403
    engine = make_engine(database_url)  # a connection of our own, not the app's
    try:
        with engine.connect() as connection:
            rows = connection.execute(select(AuditEvent.action, AuditEvent.status)
                                      .where(AuditEvent.prediction_id == pred["prediction_id"])
                                      .order_by(AuditEvent.id)).all()
            assert [tuple(r) for r in rows] == [("predict", 201), ("read_findings", 404)]
            assert connection.execute(select(func.count()).select_from(AuditEvent)).scalar() >= 2
    finally:
        engine.dispose()
