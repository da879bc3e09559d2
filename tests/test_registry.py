"""dentalmim.registry: content-addressed versions, the current pointer (promote, compare-and-set, rollback) and the
promotion gate; dentalmim.jobs: the database queue (atomic claims, leases, cancellation)."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest

from dentalmim import jobs
from dentalmim.db import make_engine, session_factory, upgrade
from dentalmim.db.models import Job
from dentalmim.inference.predictor import load_model
from dentalmim.registry import (
    ModelRegistry,
    RegistryError,
    VersionNotFoundError,
    gate_decision,
)
from tests.service.conftest import save_tiny_bundle
from tests.service.test_postgres import postgres  # noqa: F401 - the throwaway PostgreSQL server fixture


@pytest.fixture(params=["sqlite", "postgresql"])
def sessions(request: pytest.FixtureRequest, tmp_path: Path):
    """A migrated database: SQLite, and PostgreSQL when its binaries are there (else that case is skipped)."""
    if request.param == "sqlite":
        engine = make_engine(f"sqlite:///{tmp_path / 'r.db'}")
    else:
        engine = make_engine(request.getfixturevalue("postgres").create_database())
    upgrade(engine)
    yield session_factory(engine)
    engine.dispose()


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_tiny_bundle(tmp_path_factory.mktemp("m") / "tiny.safetensors")


def test_register_stores_a_content_addressed_bundle_carrying_the_version(sessions, model, tmp_path) -> None:
    registry = ModelRegistry(sessions, tmp_path / "data")
    first = registry.register(model, config={"lr": 1}, data_snapshot={"n": 3, "sha256": "ab"}, created_by="t")
    second = registry.register(model, parent=first.version)
    assert (first.version, second.version) == ("v1", "v2") and second.parent == "v1"
    path = registry.file_path(first)
    assert first.path == f"models/{first.sha256[:2]}/{first.sha256}.safetensors" and path.is_file()
    assert registry.verify(first) and not list(path.parent.glob("*.json"))  # one self-contained file
    assert load_model(path)[1]["version"] == "v1"
    assert registry.get("v1").config == {"lr": 1} and registry.get("v1").data_snapshot["n"] == 3
    assert [v.version for v in registry.list()] == ["v2", "v1"] and registry.current() is None
    named = registry.register(model, version="tiny-test-1")
    assert named.seq == 3 and load_model(registry.file_path(named))[1]["version"] == "tiny-test-1"
    with pytest.raises(RegistryError, match="already exists"):
        registry.register(model, version="tiny-test-1")
    path.write_bytes(path.read_bytes()[:-10])  # a damaged file is detected
    assert not registry.verify(first)
    assert not list((tmp_path / "data" / "models").glob(".register-*"))  # no temporary leftovers


def test_rollback_refuses_a_version_whose_file_is_gone(sessions, model, tmp_path) -> None:
    registry = ModelRegistry(sessions, tmp_path)
    first, _ = registry.register(model), registry.register(model)
    registry.promote("v1")
    registry.promote("v2")
    registry.file_path(first).unlink()  # e.g. a cleaned-up disk
    with pytest.raises(RegistryError, match="cannot roll back to v1: its model file is missing"):
        registry.rollback()
    assert registry.current_version() == "v2"


def test_promote_and_rollback_keep_pointer_statuses_and_history_consistent(sessions, model, tmp_path) -> None:
    registry = ModelRegistry(sessions, tmp_path)
    for _ in range(3):
        registry.register(model)
    registry.promote("v1", actor="a")
    registry.promote("v2", actor="a", reason="better")
    registry.promote("v3", actor="a", expected_current="v2")
    assert registry.current_version() == "v3"
    assert {v.version: v.status for v in registry.list()} == {"v1": "retired", "v2": "retired", "v3": "current"}
    with pytest.raises(RegistryError, match="not 'v1'"):
        registry.promote("v1", expected_current="v1")
    with pytest.raises(VersionNotFoundError):
        registry.promote("v9")
    assert registry.rollback(actor="b").version == "v2"
    assert registry.rollback(actor="b").version == "v1"
    with pytest.raises(RegistryError, match="no previous"):
        registry.rollback()
    assert registry.current_version() == "v1"
    statuses = [v.status for v in registry.list()]
    assert statuses.count("current") == 1
    assert [e["action"] for e in registry.history()] == ["promote"] * 3 + ["rollback"] * 2


def test_concurrent_promotions_with_the_same_expectation_let_exactly_one_win(sessions, model, tmp_path) -> None:
    registry = ModelRegistry(sessions, tmp_path)
    for _ in range(5):
        registry.register(model)
    registry.promote("v1")
    outcomes: list[str] = []

    def attempt(version: str) -> None:
        try:
            registry.promote(version, expected_current="v1")
            outcomes.append(version)
        except RegistryError:
            outcomes.append("lost")

    threads = [threading.Thread(target=attempt, args=(f"v{i}",)) for i in range(2, 6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    winners = [o for o in outcomes if o != "lost"]
    assert len(winners) == 1 and registry.current_version() == winners[0]
    assert [v.status for v in registry.list()].count("current") == 1


def test_gate_accepts_within_tolerance_and_refuses_a_worse_candidate() -> None:
    ok = gate_decision({"froc_fom": 0.70}, {"froc_fom": 0.71}, metric="froc_fom", tolerance=0.02)
    assert ok.accepted and "within tolerance" in ok.reason
    worse = gate_decision({"froc_fom": 0.60}, {"froc_fom": 0.71}, metric="froc_fom", tolerance=0.02)
    assert not worse.accepted and "worse than the current model's 0.7100 by 0.1100" in worse.reason
    assert gate_decision({"froc_fom": 0.9}, None, metric="froc_fom", tolerance=0, has_current=False).accepted
    undefined = gate_decision({"froc_fom": float("nan")}, {"froc_fom": 0.1}, metric="froc_fom", tolerance=0.5)
    assert not undefined.accepted and "no froc_fom" in undefined.reason
    assert gate_decision({"auroc": 0.5}, {"auroc": None}, metric="auroc", tolerance=0).accepted
    with pytest.raises(ValueError, match="tolerance"):
        gate_decision({}, {}, metric="auroc", tolerance=-1)


def test_queue_claims_each_job_once_across_racing_workers(sessions) -> None:
    with sessions() as session:
        ids = [jobs.enqueue(session, "evaluate", {"i": i}, "k").id for i in range(6)]
        session.commit()
    claimed: list[str] = []
    lock = threading.Lock()

    def work(name: str) -> None:
        while (job := jobs.claim(sessions, name)) is not None:
            with lock:
                claimed.append(job.id)

    threads = [threading.Thread(target=work, args=(f"w{i}",)) for i in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(claimed) == sorted(ids)  # every job exactly once


def test_stale_running_jobs_fail_with_a_reason_and_cancellation(sessions) -> None:
    with sessions() as session:
        job_id = jobs.enqueue(session, "retrain", {}, "k").id
        queued_id = jobs.enqueue(session, "retrain", {}, "k").id
        session.commit()
    assert jobs.claim(sessions, "dead-worker").id == job_id
    assert jobs.fail_stale(sessions, lease_seconds=60) == []  # lease still valid
    time.sleep(0.3)
    assert jobs.fail_stale(sessions, lease_seconds=0.1) == [job_id]
    with sessions() as session:
        job = session.get(Job, job_id)
        assert job.state == "failed" and "dead-worker lost" in job.error and "no heartbeat" in job.error
        assert jobs.cancel(session, queued_id).state == "cancelled"
        session.commit()
    assert not jobs.finish(sessions, job_id, "succeeded")  # a failed job stays failed
    with sessions() as session:
        running = jobs.enqueue(session, "evaluate", {}, "k").id
        session.commit()
    jobs.claim(sessions, "w")
    assert jobs.heartbeat(sessions, running, "w") is False
    with sessions() as session:
        assert jobs.cancel(session, running).cancel_requested
        session.commit()
    assert jobs.heartbeat(sessions, running, "w") is True  # the worker sees the request


def test_cli_models_list_promote_rollback(tmp_path: Path, model: Path, monkeypatch: pytest.MonkeyPatch,
                                          capsys: pytest.CaptureFixture[str]) -> None:
    from dentalmim.cli import main

    data = tmp_path / "data"
    monkeypatch.setenv("DENTALMIM_DATA_DIR", str(data))
    monkeypatch.delenv("DATABASE_URL", raising=False)
    engine = make_engine(f"sqlite:///{data.resolve() / 'dentalmim.db'}")
    upgrade(engine)
    registry = ModelRegistry(session_factory(engine), data)
    registry.register(model)
    registry.register(model, parent="v1")
    assert main(["models", "promote", "v1"]) == 0 and main(["models", "promote", "v2", "--reason", "ok"]) == 0
    capsys.readouterr()
    assert main(["models", "list"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("* v2") and "parent=v1" in lines[0] and lines[1].startswith("  v1")
    assert main(["models", "rollback"]) == 0 and "current: v1" in capsys.readouterr().out
    assert registry.current_version() == "v1" and registry.history()[1]["reason"] == "ok"
    assert main(["models", "promote", "v7"]) == 2 and "no model version 'v7'" in capsys.readouterr().err
    assert main(["models", "rollback"]) == 2
    engine.dispose()


def test_finetune_module_can_start_from_a_trained_detector(model: Path) -> None:
    from dentalmim.errors import ConfigError
    from dentalmim.training.finetune import FinetuneModule

    detector, meta = load_model(model)
    module = FinetuneModule(init_detector=str(model), preset="nano", img_size=64, tile_size=64)
    assert module.detector.config == detector.config and module.detector.training
    state = module.detector.state_dict()
    assert all(torch_equal(state[k], v) for k, v in detector.state_dict().items())
    assert module.operating_point["score_threshold"] == meta["score_threshold"] == 0.078
    assert module.class_names == ["caries"]
    with pytest.raises(ConfigError, match="model.init_detector should have 2 classes"):
        FinetuneModule(init_detector=str(model), num_classes=2)
    with pytest.raises(ConfigError, match="model.init_detector should be an existing model bundle"):
        FinetuneModule(init_detector="/nonexistent.safetensors")


def torch_equal(a, b) -> bool:
    import torch

    return bool(torch.equal(a, b))
