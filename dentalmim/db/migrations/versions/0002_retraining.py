"""Retraining: dataset_scans, model_versions, registry_state, registry_events, jobs, reports.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-24
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "dataset_scans",
        sa.Column("id", sa.Integer(), primary_key=True, autoincrement=True),
        sa.Column("dataset", sa.String(64), nullable=False),
        sa.Column("scan_id", sa.String(40), sa.ForeignKey("scans.id"), nullable=False),
        sa.Column("label_kind", sa.String(8), nullable=False),
        sa.Column("labels", sa.JSON(), nullable=True),
        sa.Column("uploaded_by", sa.String(32), nullable=False),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.Column("updated_at", sa.DateTime(), nullable=False),
        sa.UniqueConstraint("dataset", "scan_id", name="uq_dataset_scans_dataset_scan"),
    )
    op.create_index("ix_dataset_scans_dataset", "dataset_scans", ["dataset"])
    op.create_table(
        "model_versions",
        sa.Column("version", sa.String(128), primary_key=True),
        sa.Column("seq", sa.Integer(), nullable=False, unique=True),
        sa.Column("sha256", sa.String(64), nullable=False),
        sa.Column("path", sa.String(255), nullable=False),
        sa.Column("parent", sa.String(128), nullable=True),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("config", sa.JSON(), nullable=False),
        sa.Column("data_snapshot", sa.JSON(), nullable=True),
        sa.Column("metrics", sa.JSON(), nullable=True),
        sa.Column("holdout_sha256", sa.String(64), nullable=True),
        sa.Column("gate", sa.JSON(), nullable=True),
        sa.Column("created_by", sa.String(64), nullable=False),
        sa.Column("created_at", sa.DateTime(), nullable=False),
    )
    op.create_table(
        "registry_state",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("current_version", sa.String(128), sa.ForeignKey("model_versions.version"), nullable=True),
        sa.Column("changed_at", sa.DateTime(), nullable=False),
    )
    op.create_table(
        "registry_events",
        sa.Column("id", sa.Integer(), primary_key=True, autoincrement=True),
        sa.Column("at", sa.DateTime(), nullable=False),
        sa.Column("action", sa.String(16), nullable=False),
        sa.Column("version", sa.String(128), nullable=True),
        sa.Column("from_version", sa.String(128), nullable=True),
        sa.Column("actor", sa.String(64), nullable=False),
        sa.Column("reason", sa.Text(), nullable=False),
    )
    op.create_table(
        "jobs",
        sa.Column("id", sa.String(40), primary_key=True),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("params", sa.JSON(), nullable=False),
        sa.Column("created_by", sa.String(32), nullable=False),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.Column("started_at", sa.DateTime(), nullable=True),
        sa.Column("finished_at", sa.DateTime(), nullable=True),
        sa.Column("heartbeat_at", sa.DateTime(), nullable=True),
        sa.Column("worker_id", sa.String(128), nullable=True),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("cancel_requested", sa.Boolean(), nullable=False),
        sa.Column("progress", sa.Float(), nullable=False),
        sa.Column("stage", sa.String(64), nullable=False),
        sa.Column("metrics", sa.JSON(), nullable=True),
        sa.Column("log_tail", sa.Text(), nullable=False),
        sa.Column("result", sa.JSON(), nullable=True),
        sa.Column("error", sa.Text(), nullable=True),
    )
    op.create_index("ix_jobs_state_created", "jobs", ["state", "created_at"])
    op.create_table(
        "reports",
        sa.Column("id", sa.String(40), primary_key=True),
        sa.Column("job_id", sa.String(40), nullable=True),
        sa.Column("model_version", sa.String(128), nullable=False),
        sa.Column("dataset", sa.String(64), nullable=False),
        sa.Column("dataset_sha256", sa.String(64), nullable=False),
        sa.Column("path", sa.String(255), nullable=False),
        sa.Column("metrics", sa.JSON(), nullable=False),
        sa.Column("created_at", sa.DateTime(), nullable=False),
    )
    op.create_index("ix_reports_job_id", "reports", ["job_id"])


def downgrade() -> None:
    op.drop_table("reports")
    op.drop_table("jobs")
    op.drop_table("registry_events")
    op.drop_table("registry_state")
    op.drop_table("model_versions")
    op.drop_table("dataset_scans")
