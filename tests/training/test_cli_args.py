import sys

from dentalmim.training.cli_args import isolated_argv


def test_isolated_argv_hides_outer_arguments_and_restores_them(monkeypatch) -> None:
    monkeypatch.setattr(sys, "argv", ["dentalmim", "demo", "--out", "x"])
    with isolated_argv(["fit", "--config", "c.yaml"]):
        assert sys.argv == ["dentalmim"]
    assert sys.argv == ["dentalmim", "demo", "--out", "x"]


def test_isolated_argv_without_args_keeps_sys_argv(monkeypatch) -> None:
    monkeypatch.setattr(sys, "argv", ["dentalmim", "pretrain", "fit"])
    with isolated_argv(None):
        assert sys.argv == ["dentalmim", "pretrain", "fit"]
