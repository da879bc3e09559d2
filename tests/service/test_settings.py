"""Settings come from the environment, are validated, and every one is documented in the env example."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from service.settings import Settings

EXAMPLE = Path(__file__).resolve().parents[2] / "configs" / "service.env.example"


def test_environment_and_defaults(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("DENTALMIM_DATA_DIR", str(tmp_path))
    monkeypatch.setenv("DENTALMIM_BATCH_MAX_SIZE", "4")
    monkeypatch.delenv("DATABASE_URL", raising=False)
    settings = Settings()
    assert settings.batch_max_size == 4 and settings.database_url == f"sqlite:///{tmp_path.resolve()}/dentalmim.db"
    assert settings.deid_salt_file == tmp_path / ".deid_salt" and settings.link_key_file == tmp_path / ".link_key"
    monkeypatch.setenv("DATABASE_URL", "postgresql+psycopg://u:p@db/dentalmim")
    assert Settings().database_url == "postgresql+psycopg://u:p@db/dentalmim"
    monkeypatch.setenv("DENTALMIM_BATCH_MAX_SIZE", "0")
    with pytest.raises(ValidationError, match="batch_max_size"):
        Settings()


def test_every_setting_is_documented_in_the_env_example() -> None:
    text = EXAMPLE.read_text()
    names = ["DATABASE_URL" if n == "database_url" else f"DENTALMIM_{n.upper()}" for n in Settings.model_fields]
    assert [n for n in names if n not in text] == []
