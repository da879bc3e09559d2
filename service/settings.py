"""Service settings, read from the environment (prefix ``DENTALMIM_``; the database also from ``DATABASE_URL``).

Every field is documented in ``configs/service.env.example``. :func:`get_settings` is the one place the
environment is read; tests build :class:`Settings` directly and pass it to ``create_app``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import AliasChoices, Field, field_validator, model_validator
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
    torch_threads: int = Field(0, ge=0, le=1024, description="CPU threads per forward pass (0: every usable core "
                                                           "but one, at least 1)")
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

    holdout_dataset: str = Field("holdout", min_length=1, max_length=64, pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$",
                                 description="dataset the promotion gate evaluates on; never used for training")
    gate_metric: str = Field("froc_fom", description="held-out metric of the promotion gate (higher is better)")
    gate_tolerance: float = Field(0.01, ge=0.0, description="a candidate may be this much worse than the current")
    model_poll_seconds: float = Field(5.0, ge=0.0, description="check the registry for a new current model (0: off)")
    max_files_per_intake: int = Field(64, ge=1, le=4096, description="files per POST /v1/datasets/{name}/scans")
    worker_id: str | None = Field(None, max_length=100, description="default <hostname>:<pid>")
    worker_poll_seconds: float = Field(2.0, gt=0.0, description="worker: wait between queue checks")
    worker_heartbeat_seconds: float = Field(5.0, gt=0.0, description="worker: renew a running job's lease")
    worker_lease_seconds: float = Field(120.0, gt=0.0, description="a job without heartbeat this long has failed")
    retrain_config: Path | None = Field(None, description="fine-tuning YAML; default configs/finetune/"
                                                          "caries_vit_tiny.yaml")
    retrain_overrides: list[str] = Field(default_factory=list, description="extra finetune CLI arguments (JSON)")
    retrain_steps: int = Field(300, ge=1, description="default fine-tuning steps of a retrain job")
    retrain_max_steps: int = Field(100_000, ge=1, description="largest steps a retrain job may ask for")
    pretrain_config: Path | None = Field(None, description="MAE YAML; default configs/pretrain/mae_vit_tiny.yaml")
    pretrain_overrides: list[str] = Field(default_factory=list, description="extra pretrain CLI arguments (JSON)")
    eval_bootstrap: int = Field(1000, ge=0, description="bootstrap resamples of evaluation reports")

    host: str = "127.0.0.1"
    port: int = Field(8000, ge=1, le=65535)
    log_level: Literal["debug", "info", "warning", "error"] = "info"

    @field_validator("retrain_config", "pretrain_config")
    @classmethod
    def _existing_file(cls, value: Path | None) -> Path | None:
        if value is not None and not value.is_file():
            raise ValueError(f"should be an existing YAML file, got {value}")  # checked at start, not per job
        return value

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
