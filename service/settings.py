"""Service settings, read from the environment (prefix ``DENTALMIM_``; the database also from ``DATABASE_URL``).

Every field is documented in ``configs/service.env.example``. :func:`get_settings` is the one place the
environment is read; tests build :class:`Settings` directly and pass it to ``create_app``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import AliasChoices, Field, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from dentalmim.data.dicom import DEFAULT_MAX_PIXELS
from dentalmim.db.engine import DEFAULT_DATA_DIR, default_database_url


class Settings(BaseSettings):
    """Validated service configuration (see ``configs/service.env.example``)."""

    model_config = SettingsConfigDict(env_prefix="DENTALMIM_", extra="ignore", populate_by_name=True)

    data_dir: Path = Field(DEFAULT_DATA_DIR, description="scans, SQLite database and secrets live here")
    database_url: str | None = Field(None, validation_alias=AliasChoices("DATABASE_URL", "DENTALMIM_DATABASE_URL",
                                                                           "database_url"),
                                     description="SQLAlchemy URL; default sqlite:///DATA_DIR/dentalmim.db")
    auto_migrate: bool = Field(True, description="run the Alembic migrations at start-up")

    model_path: Path | None = Field(None, description="model bundle .safetensors or fine-tuning .ckpt")
    device: Literal["auto", "cpu", "cuda"] = "auto"
    precision: Literal["auto", "fp32", "bf16", "fp16"] = "auto"
    tile_batch_size: int = Field(16, ge=1, le=1024, description="tiles per forward pass")
    warmup: bool = Field(True, description="run one dummy prediction before reporting ready")
    load_model_in_background: bool = Field(True, description="answer /healthz while the model loads")

    batch_max_size: int = Field(8, ge=1, le=256, description="images per micro-batch (1 = no batching)")
    batch_max_wait_ms: float = Field(10.0, ge=0.0, le=5000.0, description="wait for more images after the first")
    queue_max: int = Field(256, ge=1, le=100_000, description="queued images before uploads get 429")
    score_floor: float = Field(0.05, ge=0.0, le=1.0, description="lowest score kept as a candidate finding")

    max_upload_bytes: int = Field(64 << 20, ge=1024, description="largest request body")
    max_files_per_request: int = Field(8, ge=1, le=256)
    max_pixels: int = Field(DEFAULT_MAX_PIXELS, ge=1, description="largest Rows x Columns, checked before decoding")

    key_cache_seconds: float = Field(30.0, ge=0.0, description="trust a verified API key this long")
    public_docs: bool = Field(True, description="serve /docs and /openapi.json without a key")
    deid_salt_file: Path | None = Field(None, description="default DATA_DIR/.deid_salt (created once)")
    link_key_file: Path | None = Field(None, description="default DATA_DIR/.link_key (created once)")
    link_retention_hours: float = Field(168.0, ge=0.0, description="keep original identifiers this long (0: never)")

    host: str = "127.0.0.1"
    port: int = Field(8000, ge=1, le=65535)
    log_level: Literal["debug", "info", "warning", "error"] = "info"

    @model_validator(mode="after")
    def _fill_paths(self) -> Settings:
        if self.database_url is None:
            self.database_url = default_database_url(self.data_dir)
        if self.deid_salt_file is None:
            self.deid_salt_file = self.data_dir / ".deid_salt"
        if self.link_key_file is None:
            self.link_key_file = self.data_dir / ".link_key"
        return self


def get_settings() -> Settings:
    """Settings from the environment."""
    return Settings()
