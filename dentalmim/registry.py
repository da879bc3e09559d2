"""Versioned model registry: every trained model gets a version with its file, config, data snapshot, lineage and
held-out metrics; one version is *current* (served), and promotions / rollbacks are recorded.

Files live content-addressed under ``DATA_DIR/models/ab/<sha256>.safetensors``: whatever is registered (a
fine-tuning ``.ckpt`` or a model bundle) is rewritten as a self-contained model bundle whose embedded metadata
carries the registry version (so every prediction names it), written to a temporary file, ``fsync``-ed and
renamed, so a half-written model file is never visible under its final name. The database rows
(:class:`~dentalmim.db.models.ModelVersion`, the ``registry_state`` pointer and the ``registry_events`` history)
are written in single transactions: the pointer and the version statuses always agree, and a promotion is a
compare-and-set on the pointer (``expected_current``), so two concurrent promotions cannot both win.

Rollback goes back to the version that was current before the current one (the history is replayed as a stack:
``promote v`` pushes, ``rollback`` pops). :func:`gate_decision` is the promotion gate: a candidate may replace the
current model when it is not worse on the held-out metric by more than a tolerance.
"""

from __future__ import annotations

import hashlib
import math
import os
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from sqlalchemy import func, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker

from dentalmim.db.models import ModelVersion, RegistryEvent, RegistryState, utcnow
from dentalmim.errors import DentalMimError

#: Sentinel of :meth:`ModelRegistry.promote`: promote whatever is current.
ANY = object()


class RegistryError(DentalMimError):
    """A registry operation that cannot be done (unknown version, nothing to roll back to, a race lost)."""


class VersionNotFoundError(RegistryError):
    """No model version with that name."""


@dataclass(frozen=True)
class VersionInfo:
    """The public facts of one registered model version."""

    version: str
    seq: int
    sha256: str
    path: str
    parent: str | None
    status: str
    config: dict[str, Any]
    data_snapshot: dict[str, Any] | None
    metrics: dict[str, Any] | None
    holdout_sha256: str | None
    gate: dict[str, Any] | None
    created_by: str
    created_at: str

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class GateDecision:
    """Outcome of the promotion gate on one metric."""

    accepted: bool
    metric: str
    tolerance: float
    candidate: float | None
    current: float | None
    reason: str

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def metric_value(metrics: dict[str, Any] | None, metric: str) -> float | None:
    """``metrics[metric]`` as a finite float, else None (missing, null or NaN)."""
    value = (metrics or {}).get(metric)
    if isinstance(value, dict):
        value = value.get("value")
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        return None
    return float(value)


def gate_decision(candidate: dict[str, Any] | None, current: dict[str, Any] | None, *, metric: str,
                  tolerance: float, has_current: bool = True) -> GateDecision:
    """Whether a candidate may become current: accepted iff ``candidate >= current - tolerance`` on ``metric``
    (higher is better), or when there is no current model at all.

    Args:
        candidate: the candidate's held-out metrics.
        current: the current model's metrics on the same held-out set.
        metric: the gate metric, e.g. ``froc_fom``.
        tolerance: how much worse than the current the candidate may be (>= 0).
        has_current: False when no model is current (the candidate is accepted).
    """
    if tolerance < 0:
        raise ValueError(f"tolerance should be >= 0, got {tolerance}.")
    cand, cur = metric_value(candidate, metric), metric_value(current, metric)
    if not has_current:
        return GateDecision(True, metric, tolerance, cand, cur, "no current model")
    if cand is None:
        return GateDecision(False, metric, tolerance, cand, cur, f"candidate has no {metric} on the held-out set")
    if cur is None:
        return GateDecision(True, metric, tolerance, cand, cur,
                            f"current model has no {metric} on the held-out set; candidate {metric}={cand:.4f}")
    if cand >= cur - tolerance:
        return GateDecision(True, metric, tolerance, cand, cur,
                            f"{metric} {cand:.4f} vs current {cur:.4f}: within tolerance {tolerance:g}")
    return GateDecision(False, metric, tolerance, cand, cur,
                        f"{metric} {cand:.4f} is worse than the current model's {cur:.4f} by {cur - cand:.4f}, "
                        f"more than the tolerance {tolerance:g}")


def _info(row: ModelVersion) -> VersionInfo:
    return VersionInfo(row.version, row.seq, row.sha256, row.path, row.parent, row.status, dict(row.config or {}),
                       row.data_snapshot, row.metrics, row.holdout_sha256, row.gate, row.created_by,
                       row.created_at.isoformat(timespec="seconds"))


def sha256_of(path: Path, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(chunk), b""):
            digest.update(block)
    return digest.hexdigest()


def _fsync_dir(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class ModelRegistry:
    """Model versions in the service database, files under ``data_dir/models`` (see the module docstring).

    Args:
        sessions: session factory of the service database (migrated to revision 0002 or later).
        data_dir: the data folder.
    """

    def __init__(self, sessions: sessionmaker[Session], data_dir: str | Path) -> None:
        self._sessions = sessions
        self.data_dir = Path(data_dir)
        self.models_dir = self.data_dir / "models"

    # -- files ------------------------------------------------------------------------------------------------

    def file_path(self, info: VersionInfo) -> Path:
        """Absolute path of a version's model bundle."""
        return self.data_dir / info.path

    def verify(self, info: VersionInfo) -> bool:
        """True when the version's file exists and has its recorded sha256."""
        path = self.file_path(info)
        return path.is_file() and sha256_of(path) == info.sha256

    def _store_bundle(self, source: Path, version: str) -> tuple[str, str]:
        """Rewrites ``source`` as a bundle carrying ``version``; returns ``(sha256, relative path)``."""
        from dentalmim.inference.predictor import save_model_bundle

        self.models_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        tmp_dir = Path(tempfile.mkdtemp(prefix=".register-", dir=self.models_dir))
        try:
            tmp = save_model_bundle(Path(source), tmp_dir / "bundle.safetensors", {"version": version})
            tmp.with_suffix(".json").unlink(missing_ok=True)  # the metadata is embedded: one file, one hash
            with open(tmp, "rb+") as fh:
                os.fsync(fh.fileno())
            digest = sha256_of(tmp)
            relative = f"models/{digest[:2]}/{digest}.safetensors"
            target = self.data_dir / relative
            target.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
            os.replace(tmp, target)
            _fsync_dir(target.parent)
        finally:
            for leftover in tmp_dir.iterdir():
                leftover.unlink(missing_ok=True)
            tmp_dir.rmdir()
        return digest, relative

    # -- versions ---------------------------------------------------------------------------------------------

    def register(self, source: str | Path, *, version: str | None = None, config: dict[str, Any] | None = None,
                 data_snapshot: dict[str, Any] | None = None, parent: str | None = None,
                 metrics: dict[str, Any] | None = None, holdout_sha256: str | None = None,
                 created_by: str = "") -> VersionInfo:
        """Adds a model as a new ``candidate`` version.

        Args:
            source: a fine-tuning ``.ckpt`` or a model bundle ``.safetensors``.
            version: its name; default ``v<seq>`` (a name already taken raises :class:`RegistryError`).
            config: how it was trained (job parameters, resolved settings).
            data_snapshot: the training data (``{"dataset", "scan_ids", "sha256", ...}``).
            parent: the version it was fine-tuned from.
            metrics: its metrics on the held-out set (with ``holdout_sha256``), when already known.
            holdout_sha256: hash of the held-out set the metrics are on.
            created_by: who registered it (key id, ``worker:<id>``, ``cli``).
        """
        if version is not None and (not version or len(version) > 128 or "/" in version):
            raise RegistryError(f"version should be 1-128 characters without '/', got {version!r}.")
        for _attempt in range(5):
            with self._sessions() as session:
                seq = int(session.scalar(select(func.max(ModelVersion.seq))) or 0) + 1
                name = version or f"v{seq}"
                if session.get(ModelVersion, name) is not None:
                    raise RegistryError(f"model version {name!r} already exists.")
            digest, relative = self._store_bundle(Path(source), name)
            row = ModelVersion(version=name, seq=seq, sha256=digest, path=relative, parent=parent,
                               status="candidate", config=config or {}, data_snapshot=data_snapshot,
                               metrics=metrics, holdout_sha256=holdout_sha256, created_by=created_by,
                               created_at=utcnow())
            try:
                with self._sessions.begin() as session:
                    session.add(row)
                return _info(row)
            except IntegrityError:  # another process took this seq (or name) first: try the next one
                if version is not None:
                    raise RegistryError(f"model version {version!r} already exists.") from None
        raise RegistryError("could not allocate a model version number (too much contention).")

    def list(self) -> list[VersionInfo]:
        """Every version, newest first."""
        with self._sessions() as session:
            return [_info(r) for r in session.scalars(select(ModelVersion).order_by(ModelVersion.seq.desc()))]

    def get(self, version: str) -> VersionInfo:
        """One version; :class:`VersionNotFoundError` when unknown."""
        with self._sessions() as session:
            row = session.get(ModelVersion, version)
            if row is None:
                raise VersionNotFoundError(f"no model version {version!r}.")
            return _info(row)

    def current_version(self) -> str | None:
        """Name of the current version (None when nothing was promoted yet)."""
        with self._sessions() as session:
            state = session.get(RegistryState, 1)
            return state.current_version if state is not None else None

    def current(self) -> VersionInfo | None:
        """The current version, or None."""
        name = self.current_version()
        return self.get(name) if name is not None else None

    def set_metrics(self, version: str, metrics: dict[str, Any], holdout_sha256: str) -> None:
        """Records (caches) a version's metrics on the held-out set with hash ``holdout_sha256``."""
        with self._sessions.begin() as session:
            row = session.get(ModelVersion, version)
            if row is None:
                raise VersionNotFoundError(f"no model version {version!r}.")
            row.metrics, row.holdout_sha256 = metrics, holdout_sha256

    def set_gate(self, version: str, gate: dict[str, Any], *, rejected: bool) -> None:
        """Records the gate's decision on a candidate (``rejected`` marks it so; it can still be promoted)."""
        with self._sessions.begin() as session:
            row = session.get(ModelVersion, version)
            if row is None:
                raise VersionNotFoundError(f"no model version {version!r}.")
            row.gate = gate
            if rejected and row.status == "candidate":
                row.status = "rejected"

    # -- the current pointer ----------------------------------------------------------------------------------

    @staticmethod
    def _ensure_state(session: Session) -> None:
        if session.get(RegistryState, 1) is None:
            try:
                with session.begin_nested():
                    session.add(RegistryState(id=1, current_version=None, changed_at=utcnow()))
            except IntegrityError:
                pass

    def _move_pointer(self, session: Session, target: str, expected: str | None, action: str, actor: str,
                      reason: str) -> None:
        """Compare-and-set of the current pointer plus the status changes and the event, in ``session``'s
        transaction."""
        condition = (RegistryState.current_version.is_(None) if expected is None
                     else RegistryState.current_version == expected)
        moved = session.execute(update(RegistryState).where(RegistryState.id == 1, condition)
                                .values(current_version=target, changed_at=utcnow()))
        if moved.rowcount != 1:
            raise RegistryError("the current model changed meanwhile; retry.")
        if expected is not None and expected != target:
            session.get(ModelVersion, expected).status = "retired"
        session.get(ModelVersion, target).status = "current"
        session.add(RegistryEvent(at=utcnow(), action=action, version=target, from_version=expected, actor=actor,
                                  reason=reason[:2000]))

    def promote(self, version: str, *, actor: str = "", reason: str = "", expected_current: Any = ANY
                ) -> VersionInfo:
        """Makes ``version`` current (atomically; the previous current becomes ``retired``).

        Args:
            version: the version to serve.
            actor: who asked (key id, ``worker:<id>``, ``cli``).
            reason: why (e.g. the gate's decision).
            expected_current: promote only if this is still the current version (None: only if none is);
                default: whatever is current.

        Raises:
            VersionNotFoundError: unknown version.
            RegistryError: the current version is not ``expected_current`` any more.
        """
        with self._sessions.begin() as session:
            self._ensure_state(session)
            if session.get(ModelVersion, version) is None:
                raise VersionNotFoundError(f"no model version {version!r}.")
            current = session.get(RegistryState, 1).current_version
            if expected_current is not ANY and current != expected_current:
                raise RegistryError(f"the current model is {current!r}, not {expected_current!r} any more.")
            if current != version:
                self._move_pointer(session, version, current, "promote", actor, reason)
        return self.get(version)

    def history(self) -> list[dict[str, Any]]:
        """Promotions and rollbacks, oldest first."""
        with self._sessions() as session:
            return [{"at": e.at.isoformat(timespec="seconds"), "action": e.action, "version": e.version,
                     "from_version": e.from_version, "actor": e.actor, "reason": e.reason}
                    for e in session.scalars(select(RegistryEvent).order_by(RegistryEvent.id))]

    @staticmethod
    def _stack(session: Session) -> list[str]:
        stack: list[str] = []
        for event in session.scalars(select(RegistryEvent).order_by(RegistryEvent.id)):
            if event.action == "promote":
                stack.append(event.version)
            elif event.action == "rollback" and stack:
                stack.pop()
        return stack

    def rollback(self, *, actor: str = "", reason: str = "") -> VersionInfo:
        """Makes the previously current version current again; :class:`RegistryError` when there is none or its
        file is missing or altered."""
        with self._sessions.begin() as session:
            self._ensure_state(session)
            current = session.get(RegistryState, 1).current_version
            stack = self._stack(session)
            if len(stack) < 2 or stack[-1] != current:
                raise RegistryError("there is no previous model version to roll back to.")
            target = stack[-2]
            if not self.verify(_info(session.get(ModelVersion, target))):  # as promotion checks it
                raise RegistryError(f"cannot roll back to {target}: its model file is missing or altered.")
            self._move_pointer(session, target, current, "rollback", actor, reason or f"rollback from {current}")
            # _move_pointer records action "rollback" with version=target; the replayed stack pops `current`
        return self.get(target)
