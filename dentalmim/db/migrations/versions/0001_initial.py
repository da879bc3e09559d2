"""Initial schema: api_keys, scans, predictions, audit_events.

Revision ID: 0001
Revises:
Create Date: 2025-11-24
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "api_keys",
        sa.Column("id", sa.String(32), primary_key=True),
        sa.Column("name", sa.String(100), nullable=False),
        sa.Column("role", sa.String(16), nullable=False),
        sa.Column("secret_hash", sa.String(255), nullable=False),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.Column("revoked_at", sa.DateTime(), nullable=True),
    )
    op.create_table(
        "scans",
        sa.Column("id", sa.String(40), primary_key=True),
        sa.Column("sha256", sa.String(64), nullable=False, unique=True),
        sa.Column("path", sa.String(255), nullable=False),
        sa.Column("size_bytes", sa.Integer(), nullable=False),
        sa.Column("patient_pseudonym", sa.String(32), nullable=False),
        sa.Column("study_uid", sa.String(64), nullable=False),
        sa.Column("sop_instance_uid", sa.String(64), nullable=False),
        sa.Column("modality", sa.String(16), nullable=False),
        sa.Column("rows", sa.Integer(), nullable=False),
        sa.Column("columns", sa.Integer(), nullable=False),
        sa.Column("pixel_spacing_mm", sa.JSON(), nullable=True),
        sa.Column("created_at", sa.DateTime(), nullable=False),
    )
    op.create_table(
        "predictions",
        sa.Column("id", sa.String(40), primary_key=True),
        sa.Column("scan_id", sa.String(40), sa.ForeignKey("scans.id"), nullable=False),
        sa.Column("owner_key_id", sa.String(32), sa.ForeignKey("api_keys.id"), nullable=False),
        sa.Column("model_version", sa.String(128), nullable=False),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.Column("result", sa.JSON(), nullable=False),
        sa.Column("link_token", sa.Text(), nullable=True),
    )
    op.create_index("ix_predictions_scan_id", "predictions", ["scan_id"])
    op.create_index("ix_predictions_owner_created", "predictions", ["owner_key_id", "created_at"])
    op.create_table(
        "audit_events",
        sa.Column("id", sa.Integer(), primary_key=True, autoincrement=True),
        sa.Column("at", sa.DateTime(), nullable=False),
        sa.Column("key_id", sa.String(32), nullable=False),
        sa.Column("role", sa.String(16), nullable=False),
        sa.Column("action", sa.String(32), nullable=False),
        sa.Column("prediction_id", sa.String(40), nullable=True),
        sa.Column("scan_id", sa.String(40), nullable=True),
        sa.Column("model_version", sa.String(128), nullable=True),
        sa.Column("status", sa.Integer(), nullable=False),
    )
    op.create_index("ix_audit_events_at", "audit_events", ["at"])
    op.create_index("ix_audit_events_key_id", "audit_events", ["key_id"])
    op.create_index("ix_audit_events_prediction_id", "audit_events", ["prediction_id"])


def downgrade() -> None:
    op.drop_table("audit_events")
    op.drop_table("predictions")
    op.drop_table("scans")
    op.drop_table("api_keys")
