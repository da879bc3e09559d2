"""SQLAlchemy 2 tables of the clinical service.

No table holds a patient identifier in clear: scans are referred to by a pseudonymous id derived from the hash of
the *de-identified* file, patients by the salted pseudonym of :mod:`dentalmim.data.deid`, and the original
identifiers an SR needs to be filed with its study are kept only encrypted (``predictions.link_token``, see
``service.services.links``) and dropped after a retention period.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from sqlalchemy import (
    JSON,
    Boolean,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
    TypeDecorator,
    UniqueConstraint,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column


def utcnow() -> dt.datetime:
    """Timezone-aware current UTC time."""
    return dt.datetime.now(dt.UTC)


class UTCDateTime(TypeDecorator):
    """Timestamps stored as naive UTC (SQLite has no time zones) and returned timezone-aware (UTC)."""

    impl = DateTime
    cache_ok = True

    def process_bind_param(self, value: dt.datetime | None, dialect: Any) -> dt.datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError(f"timestamps should be timezone-aware, got {value!r}.")
        return value.astimezone(dt.UTC).replace(tzinfo=None)

    def process_result_value(self, value: dt.datetime | None, dialect: Any) -> dt.datetime | None:
        return None if value is None else value.replace(tzinfo=dt.UTC)


class Base(DeclarativeBase):
    """Declarative base; ``Base.metadata`` is the migrations' target."""


class ApiKey(Base):
    """An API key: public id, role and the argon2 hash of the whole key (the key itself is never stored)."""

    __tablename__ = "api_keys"

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    name: Mapped[str] = mapped_column(String(100), default="")
    role: Mapped[str] = mapped_column(String(16))
    secret_hash: Mapped[str] = mapped_column(String(255))
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime(), default=utcnow)
    revoked_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime(), nullable=True)


class Scan(Base):
    """A de-identified radiograph stored content-addressed under ``DATA_DIR/<path>``."""

    __tablename__ = "scans"

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    sha256: Mapped[str] = mapped_column(String(64), unique=True)
    path: Mapped[str] = mapped_column(String(255))
    size_bytes: Mapped[int] = mapped_column(Integer)
    patient_pseudonym: Mapped[str] = mapped_column(String(32))
    study_uid: Mapped[str] = mapped_column(String(64))
    sop_instance_uid: Mapped[str] = mapped_column(String(64))
    modality: Mapped[str] = mapped_column(String(16), default="")
    rows: Mapped[int] = mapped_column(Integer)
    columns: Mapped[int] = mapped_column(Integer)
    pixel_spacing_mm: Mapped[list[float] | None] = mapped_column(JSON, nullable=True)
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime(), default=utcnow)


class Prediction(Base):
    """Findings of one model on one scan, owned by the key that asked for them."""

    __tablename__ = "predictions"
    __table_args__ = (Index("ix_predictions_owner_created", "owner_key_id", "created_at"),)

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    scan_id: Mapped[str] = mapped_column(ForeignKey("scans.id"), index=True)
    owner_key_id: Mapped[str] = mapped_column(ForeignKey("api_keys.id"))
    model_version: Mapped[str] = mapped_column(String(128))
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime(), default=utcnow)
    result: Mapped[dict[str, Any]] = mapped_column(JSON)
    link_token: Mapped[str | None] = mapped_column(Text, nullable=True)


class AuditEvent(Base):
    """Who asked for what: key id and role, action, pseudonymous ids, model version, HTTP status, time."""

    __tablename__ = "audit_events"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    at: Mapped[dt.datetime] = mapped_column(UTCDateTime(), default=utcnow, index=True)
    key_id: Mapped[str] = mapped_column(String(32), index=True)
    role: Mapped[str] = mapped_column(String(16))
    action: Mapped[str] = mapped_column(String(32))
    prediction_id: Mapped[str | None] = mapped_column(String(40), nullable=True, index=True)
    scan_id: Mapped[str | None] = mapped_column(String(40), nullable=True)
    model_version: Mapped[str | None] = mapped_column(String(128), nullable=True)
    status: Mapped[int] = mapped_column(Integer)


class DatasetScan(Base):
    """A stored scan's membership of a named dataset, with its labels (None = unlabeled, for pretraining).

    ``labels``: ``{"boxes": [{"bbox": [x, y, w, h], "category": str, "attributes": {...}}], "caries": bool | None}``;
    ``label_kind``: ``boxes``, ``image`` (image-level caries / no caries only) or ``none``.
    """

    __tablename__ = "dataset_scans"
    __table_args__ = (UniqueConstraint("dataset", "scan_id", name="uq_dataset_scans_dataset_scan"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    dataset: Mapped[str] = mapped_column(String(64), index=True)
    scan_id: Mapped[str] = mapped_column(ForeignKey("scans.id"))
    label_kind: Mapped[str] = mapped_column(String(8))
    labels: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)
    uploaded_by: Mapped[str] = mapped_column(String(32))
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime(), default=utcnow)
    updated_at: Mapped[dt.datetime] = mapped_column(UTCDateTime(), default=utcnow)


class ModelVersion(Base):
    """A registered model: file (content-addressed under ``DATA_DIR/models``), config, data snapshot, lineage and
    held-out metrics. ``status``: ``candidate``, ``current``, ``retired`` (was current) or ``rejected`` (gate)."""

    __tablename__ = "model_versions"

    version: Mapped[str] = mapped_column(String(128), primary_key=True)
    seq: Mapped[int] = mapped_column(Integer, unique=True)
    sha256: Mapped[str] = mapped_column(String(64))
    path: Mapped[str] = mapped_column(String(255))
    parent: Mapped[str | None] = mapped_column(String(128), nullable=True)
    status: Mapped[str] = mapped_column(String(16), default="candidate")
    config: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    data_snapshot: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)
    metrics: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)
    holdout_sha256: Mapped[str | None] = mapped_column(String(64), nullable=True)
    gate: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)
    created_by: Mapped[str] = mapped_column(String(64), default="")
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime(), default=utcnow)


class RegistryState(Base):
    """The one row (``id = 1``) holding the current model version; changed only with a :class:`RegistryEvent`."""

    __tablename__ = "registry_state"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    current_version: Mapped[str | None] = mapped_column(ForeignKey("model_versions.version"), nullable=True)
    changed_at: Mapped[dt.datetime] = mapped_column(UTCDateTime(), default=utcnow)


class RegistryEvent(Base):
    """History of the current pointer: ``promote`` or ``rollback``, from which version to which, who, why."""

    __tablename__ = "registry_events"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    at: Mapped[dt.datetime] = mapped_column(UTCDateTime(), default=utcnow)
    action: Mapped[str] = mapped_column(String(16))
    version: Mapped[str | None] = mapped_column(String(128), nullable=True)
    from_version: Mapped[str | None] = mapped_column(String(128), nullable=True)
    actor: Mapped[str] = mapped_column(String(64), default="")
    reason: Mapped[str] = mapped_column(Text, default="")


class Job(Base):
    """A background job (``retrain`` or ``evaluate``) in the database queue, run by ``dentalmim worker``.

    ``state``: ``queued`` -> ``running`` -> ``succeeded`` / ``failed`` / ``cancelled``. A running job's worker
    renews ``heartbeat_at``; a job whose heartbeat is older than the lease is failed by the next worker.
    """

    __tablename__ = "jobs"
    __table_args__ = (Index("ix_jobs_state_created", "state", "created_at"),)

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    kind: Mapped[str] = mapped_column(String(16))
    state: Mapped[str] = mapped_column(String(16), default="queued")
    params: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    created_by: Mapped[str] = mapped_column(String(32))
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime(), default=utcnow)
    started_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    finished_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    heartbeat_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    worker_id: Mapped[str | None] = mapped_column(String(128), nullable=True)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    cancel_requested: Mapped[bool] = mapped_column(Boolean, default=False)
    progress: Mapped[float] = mapped_column(Float, default=0.0)
    stage: Mapped[str] = mapped_column(String(64), default="")
    metrics: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)
    log_tail: Mapped[str] = mapped_column(Text, default="")
    result: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)
    error: Mapped[str | None] = mapped_column(Text, nullable=True)


class Report(Base):
    """An evaluation report (``DATA_DIR/<path>/report.html``, ``report.pdf``, ``metrics.json``)."""

    __tablename__ = "reports"

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    job_id: Mapped[str | None] = mapped_column(String(40), nullable=True, index=True)
    model_version: Mapped[str] = mapped_column(String(128))
    dataset: Mapped[str] = mapped_column(String(64))
    dataset_sha256: Mapped[str] = mapped_column(String(64))
    path: Mapped[str] = mapped_column(String(255))
    metrics: Mapped[dict[str, Any]] = mapped_column(JSON)
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime(), default=utcnow)
