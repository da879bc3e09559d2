"""The job queue in the database: enqueue, claim, heartbeat, progress, cancel, finish, and lost-worker recovery.

Claiming is an atomic ``UPDATE jobs SET state='running' ... WHERE id = :id AND state = 'queued'`` (the oldest queued
job is picked first, and a worker that loses the race simply tries the next one), which works the same on SQLite
and PostgreSQL, so several workers (one per GPU, on one or more machines sharing the database and the data folder)
never run the same job. A running job's worker renews ``heartbeat_at``; :func:`fail_stale` marks jobs whose
heartbeat is older than the lease as failed, with the reason, so a killed worker's job never stays "running".
Cancelling a queued job is immediate; a running job gets ``cancel_requested`` and its worker stops it.
"""

from __future__ import annotations

import datetime as dt
import secrets
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.orm import Session, sessionmaker

from dentalmim.db.models import Job, utcnow
from dentalmim.errors import DentalMimError

JOB_KINDS = ("retrain", "evaluate")
FINAL_STATES = ("succeeded", "failed", "cancelled")
#: Characters of log kept per job (the tail).
LOG_TAIL_CHARS = 8000


class JobNotFoundError(DentalMimError):
    """No job with that id."""


def enqueue(session: Session, kind: str, params: dict[str, Any], created_by: str) -> Job:
    """Adds a queued job (the caller commits)."""
    if kind not in JOB_KINDS:
        raise ValueError(f"kind should be one of {JOB_KINDS}, got {kind!r}.")
    job = Job(id=f"job_{secrets.token_hex(12)}", kind=kind, state="queued", params=params, created_by=created_by,
              created_at=utcnow(), attempts=0, cancel_requested=False, progress=0.0, stage="queued", log_tail="")
    session.add(job)
    session.flush()
    return job


def get(session: Session, job_id: str) -> Job:
    job = session.get(Job, job_id)
    if job is None:
        raise JobNotFoundError(f"no job {job_id!r}.")
    return job


def claim(sessions: sessionmaker[Session], worker_id: str, kinds: tuple[str, ...] = JOB_KINDS) -> Job | None:
    """Atomically takes the oldest queued job for ``worker_id`` (None when the queue is empty)."""
    with sessions() as session:
        candidates = list(session.scalars(select(Job.id).where(Job.state == "queued", Job.kind.in_(kinds))
                                          .order_by(Job.created_at, Job.id).limit(5)))
    for job_id in candidates:
        now = utcnow()
        with sessions.begin() as session:
            taken = session.execute(update(Job).where(Job.id == job_id, Job.state == "queued").values(
                state="running", worker_id=worker_id, started_at=now, heartbeat_at=now, attempts=Job.attempts + 1,
                stage="starting"))
        if taken.rowcount == 1:
            with sessions() as session:
                return session.get(Job, job_id)
    return None


def heartbeat(sessions: sessionmaker[Session], job_id: str, worker_id: str) -> bool:
    """Renews the lease; returns whether cancellation was requested (or the job is no longer ours)."""
    with sessions.begin() as session:
        session.execute(update(Job).where(Job.id == job_id, Job.worker_id == worker_id, Job.state == "running")
                        .values(heartbeat_at=utcnow()))
        job = session.get(Job, job_id)
        return job is None or job.cancel_requested or job.state != "running" or job.worker_id != worker_id


def report(sessions: sessionmaker[Session], job_id: str, *, progress: float | None = None, stage: str | None = None,
           metrics: dict[str, Any] | None = None, log: str | None = None) -> None:
    """Updates a running job's progress, stage, metrics so far and/or log tail (``log`` is appended)."""
    with sessions.begin() as session:
        job = session.get(Job, job_id)
        if job is None or job.state != "running":
            return
        if progress is not None:
            job.progress = float(min(max(progress, 0.0), 1.0))
        if stage is not None:
            job.stage = stage[:64]
        if metrics is not None:
            job.metrics = {**(job.metrics or {}), **metrics}
        if log:
            job.log_tail = (job.log_tail + log)[-LOG_TAIL_CHARS:]
        job.heartbeat_at = utcnow()


def finish(sessions: sessionmaker[Session], job_id: str, state: str, *, result: dict[str, Any] | None = None,
           error: str | None = None) -> bool:
    """Moves a running job to a final state (only if still running); returns whether it did."""
    if state not in FINAL_STATES:
        raise ValueError(f"state should be one of {FINAL_STATES}, got {state!r}.")
    values: dict[str, Any] = {"state": state, "finished_at": utcnow(), "stage": state}
    if result is not None:
        values["result"] = result
    if error is not None:
        values["error"] = error[:4000]
    if state == "succeeded":
        values["progress"] = 1.0
    with sessions.begin() as session:
        done = session.execute(update(Job).where(Job.id == job_id, Job.state == "running").values(**values))
    return done.rowcount == 1


def cancel(session: Session, job_id: str) -> Job:
    """Cancels a queued job at once, or asks the worker of a running job to stop it (the caller commits)."""
    job = get(session, job_id)
    if job.state == "queued":
        session.execute(update(Job).where(Job.id == job_id, Job.state == "queued").values(
            state="cancelled", finished_at=utcnow(), stage="cancelled", error="cancelled before it started"))
    elif job.state == "running":
        job.cancel_requested = True
    session.flush()
    session.refresh(job)
    return job


def fail_stale(sessions: sessionmaker[Session], lease_seconds: float) -> list[str]:
    """Fails running jobs whose worker stopped renewing the lease; returns their ids."""
    cutoff = utcnow() - dt.timedelta(seconds=lease_seconds)
    with sessions() as session:
        stale = list(session.scalars(select(Job).where(Job.state == "running", Job.heartbeat_at < cutoff)))
    failed = []
    for job in stale:
        seen = job.heartbeat_at.isoformat(timespec="seconds") if job.heartbeat_at else "never"
        reason = (f"worker {job.worker_id} lost: no heartbeat for more than {lease_seconds:g} s (last {seen}); "
                  f"the job was interrupted at stage {job.stage!r} and can be submitted again")
        with sessions.begin() as session:
            done = session.execute(update(Job).where(Job.id == job.id, Job.state == "running",
                                                     Job.heartbeat_at < cutoff)
                                   .values(state="failed", finished_at=utcnow(), error=reason, stage="failed"))
        if done.rowcount == 1:
            failed.append(job.id)
    return failed


def to_dict(job: Job) -> dict[str, Any]:
    """API view of a job."""
    def iso(value: dt.datetime | None) -> str | None:
        return value.isoformat(timespec="seconds") if value else None

    return {"job_id": job.id, "kind": job.kind, "state": job.state, "params": job.params, "stage": job.stage,
            "progress": round(float(job.progress or 0.0), 4), "metrics": job.metrics or {}, "result": job.result,
            "error": job.error, "log_tail": job.log_tail or "", "cancel_requested": bool(job.cancel_requested),
            "created_by": job.created_by, "created_at": iso(job.created_at), "started_at": iso(job.started_at),
            "finished_at": iso(job.finished_at), "heartbeat_at": iso(job.heartbeat_at), "worker_id": job.worker_id,
            "attempts": job.attempts}
