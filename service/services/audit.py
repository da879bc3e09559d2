"""The audit trail: who (key id, role) did what (action) to which prediction/scan, with which model, when."""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.orm import Session

from dentalmim.auth import Principal
from dentalmim.db.models import AuditEvent, utcnow


def record(session: Session, principal: Principal, action: str, status: int, *, prediction_id: str | None = None,
           scan_id: str | None = None, model_version: str | None = None) -> None:
    """Adds one audit row (the caller commits, in the same transaction as the action when there is one)."""
    session.add(AuditEvent(at=utcnow(), key_id=principal.key_id, role=principal.role, action=action,
                           prediction_id=prediction_id, scan_id=scan_id, model_version=model_version,
                           status=status))


def recent(session: Session, limit: int = 100, key_id: str | None = None) -> list[AuditEvent]:
    """The newest events first."""
    query = select(AuditEvent).order_by(AuditEvent.id.desc()).limit(limit)
    if key_id is not None:
        query = query.where(AuditEvent.key_id == key_id)
    return list(session.scalars(query))
