"""Persistence for the clinical service: SQLAlchemy 2 tables, engine/session helpers and Alembic migrations.

* :mod:`dentalmim.db.models`: ``api_keys``, ``scans``, ``predictions``, ``audit_events``; retraining (0002):
  ``dataset_scans``, ``model_versions``, ``registry_state``, ``registry_events``, ``jobs``, ``reports``.
* :mod:`dentalmim.db.engine`: :func:`make_engine` (SQLite in WAL mode as the embedded default, PostgreSQL or any
  SQLAlchemy URL via ``DATABASE_URL``) and :func:`session_factory`.
* :mod:`dentalmim.db.migrate`: :func:`upgrade` runs the packaged Alembic migrations (``dentalmim/db/migrations``)
  programmatically; the service calls it at start-up.
"""

from dentalmim.db.engine import (
                                 DEFAULT_DATA_DIR,
                                 database_url_from_env,
                                 default_database_url,
                                 make_engine,
                                 session_factory,
)
from dentalmim.db.migrate import current_revision, head_revision, upgrade
from dentalmim.db.models import (
                                 ApiKey,
                                 AuditEvent,
                                 Base,
                                 DatasetScan,
                                 Job,
                                 ModelVersion,
                                 Prediction,
                                 RegistryEvent,
                                 RegistryState,
                                 Report,
                                 Scan,
)

__all__ = ["DEFAULT_DATA_DIR", "ApiKey", "AuditEvent", "Base", "DatasetScan", "Job", "ModelVersion", "Prediction",
           "RegistryEvent", "RegistryState", "Report", "Scan", "current_revision",
           "database_url_from_env", "default_database_url", "head_revision", "make_engine", "session_factory", "upgrade"]
