import sys

from dentalmim.training.cli_args import isolated_argv, relaunchable_argv


def test_isolated_argv_hides_outer_arguments_and_restores_them(monkeypatch) -> None:
    monkeypatch.setattr(sys, "argv", ["dentalmim", "demo", "--out", "x"])
    with isolated_argv(["fit", "--config", "c.yaml"]):
        assert sys.argv == ["dentalmim"]
    assert sys.argv == ["dentalmim", "demo", "--out", "x"]


def test_isolated_argv_without_args_keeps_sys_argv(monkeypatch) -> None:
    monkeypatch.setattr(sys, "argv", ["dentalmim", "pretrain", "fit"])
    with isolated_argv(None):
        assert sys.argv == ["dentalmim", "pretrain", "fit"]


def test_relaunchable_argv_is_the_standalone_command_of_the_run(monkeypatch) -> None:
    """Lightning's DDP launcher re-runs ``sys.argv`` for the other ranks: from inside ``dentalmim run`` they must run
    ``dentalmim pretrain <args>``, not the whole pipeline again."""
    monkeypatch.setattr(sys, "argv", ["/venv/bin/dentalmim", "run", "--unlabeled", "u", "--out", "o"])
    with relaunchable_argv("pretrain", ["fit", "--config", "c.yaml"]):
        assert sys.argv == ["/venv/bin/dentalmim", "pretrain", "fit", "--config", "c.yaml"]
        with isolated_argv(["fit", "--config", "c.yaml"]):  # what the CLI class shows LightningCLI while parsing
            assert sys.argv == ["/venv/bin/dentalmim"]
        assert sys.argv[1] == "pretrain"
    assert sys.argv == ["/venv/bin/dentalmim", "run", "--unlabeled", "u", "--out", "o"]
