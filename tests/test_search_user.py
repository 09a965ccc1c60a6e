"""Searching a user's own training function: the platform's Optuna, scheduler, resume, MLflow and best_config
around code that is not the engine (it lives here, in a test module, not in the package)."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from mlflow import MlflowClient
from torch import nn

import itra_tune
from itra_tune import search, tracking
from itra_tune.config import ConfigError

ROOT = Path(__file__).resolve().parents[1]


def fit_mixture(config: dict, report) -> None:
    """A user's training function: an MLP on a Gaussian mixture, a checkpoint folder per epoch. Crashes once
    after its first epoch when ``crash_dir`` is set, to show that a retried trial resumes from its checkpoint."""
    from itra_tune.data.images import synthetic_mixture

    torch.manual_seed(config["seed"])
    x, y = synthetic_mixture(1200)
    x = x.flatten(1)
    model = nn.Sequential(nn.Linear(64, config["model"]["hidden"]), nn.ReLU(), nn.Linear(config["model"]["hidden"], 10))
    opt = torch.optim.SGD(model.parameters(), lr=config["optim"]["lr"])
    me = f"{config['optim']['lr']:.10g}-{config['model']['hidden']}"
    crash = Path(config["crash_dir"]) / me if config.get("crash_dir") else None
    if report.restored is not None:
        model.load_state_dict(torch.load(report.restored / "model.pt"))
        (crash.parent / f"resumed-{me}").write_text(str(report.epoch))
    for epoch in range(report.epoch, config["epochs"]):
        for i in range(0, 1000, 50):
            loss = nn.functional.cross_entropy(model(x[i:i + 50]), y[i:i + 50])
            opt.zero_grad()
            loss.backward()
            opt.step()
        with torch.no_grad():
            val_loss = nn.functional.cross_entropy(model(x[1000:]), y[1000:]).item()
            val_acc = (model(x[1000:]).argmax(1) == y[1000:]).float().mean().item()
        folder = Path(f"ckpt-{epoch}")
        folder.mkdir(exist_ok=True)
        torch.save(model.state_dict(), folder / "model.pt")
        report({"val_loss": val_loss, "val_acc": val_acc}, checkpoint=folder)
        if crash is not None and not crash.exists():
            crash.write_text("crashed")
            raise RuntimeError("a crash after the first epoch")


def ray_style(config: dict) -> None:
    """Ray's own convention, as its documentation writes it: ``fn(config)`` reports with ``ray.tune.report`` and
    resumes from ``ray.tune.get_checkpoint()``. It never stops by itself: ``budget.max_epochs`` must end it. It
    crashes once after its second report when ``crash_dir`` is set."""
    import tempfile

    from ray import tune

    from itra_tune.data.images import synthetic_mixture

    torch.manual_seed(config["seed"])
    x, y = synthetic_mixture(600)
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 10))
    opt = torch.optim.SGD(model.parameters(), lr=config["optim"]["lr"])
    start = 0
    checkpoint = tune.get_checkpoint()
    if checkpoint:
        with checkpoint.as_directory() as d:
            state = torch.load(Path(d) / "state.pt")
        model.load_state_dict(state["model"])
        start = state["step"]
    crash = Path(config["crash_dir"]) / f"{config['optim']['lr']:.10g}" if config.get("crash_dir") else None
    step = start
    while True:
        loss = nn.functional.cross_entropy(model(x[:500]), y[:500])
        opt.zero_grad()
        loss.backward()
        opt.step()
        step += 1
        with torch.no_grad():
            val_loss = nn.functional.cross_entropy(model(x[500:]), y[500:]).item()
        with tempfile.TemporaryDirectory() as d:
            torch.save({"model": model.state_dict(), "step": step}, Path(d) / "state.pt")
            tune.report({"val_loss": val_loss, "step": step}, checkpoint=tune.Checkpoint.from_directory(d))
        if crash is not None and step == 2 and not crash.exists():
            crash.write_text(str(start))
            raise RuntimeError("a crash after the second report")


def never_reports(config: dict, report) -> None:
    """A trainable that returns without a single report."""


def dies_at_once(config: dict, report) -> None:
    """A trainable whose process dies (SIGKILL: nothing can catch it) before its first report."""
    os.kill(os.getpid(), signal.SIGKILL)


def three_args(config: dict, report, extra) -> None:
    """Not a trainable: one argument too many."""


@pytest.fixture
def user_space(tmp_path):
    def make(**sections):
        raw = {
            "name": "user-mixture",
            "base": {"seed": 0, "epochs": 3, "model": {"hidden": 16}, "optim": {"lr": 0.1}, "crash_dir": None},
            "search": {"optim.lr": {"type": "float", "low": 0.01, "high": 1.0, "log": True},
                       "model.hidden": {"type": "categorical", "choices": [8, 32]}},
            "metric": "val_loss", "mode": "min",
            "budget": {"num_samples": 4, "max_concurrent": 2, "max_epochs": 3},
            "scheduler": {"name": "none"},
        }
        raw.update(sections)
        p = tmp_path / "user_space.yaml"
        p.write_text(yaml.safe_dump(raw))
        return p

    return make


def test_a_search_over_a_user_trainable_tracks_resumes_and_hands_over_its_best(ray_local, mlflow_server, user_space,
                                                                                tmp_path):
    crashes = tmp_path / "crashes"
    crashes.mkdir()
    [summary] = search.run(user_space(), trainable=fit_mixture, storage_path=str(tmp_path / "st"), name="u",
                           tracking_uri=mlflow_server, max_failures=1, overrides=(f"crash_dir={crashes}",))
    assert summary["trials"] == 4 and summary["completed"] == 4, summary
    # every trial crashed once after epoch 1 and resumed from that epoch's checkpoint
    assert sorted(p.read_text() for p in crashes.glob("resumed-*")) == ["1"] * 4
    best = summary["best"]
    assert set(best) >= {"val_loss", "val_acc", "best_epoch", "optim.lr", "model.hidden"}

    c = MlflowClient(mlflow_server)
    exp = c.get_experiment_by_name("user-mixture")
    runs = c.search_runs([exp.experiment_id])
    parent = next(r for r in runs if r.data.tags.get("itra_tune.role") == "search")
    children = [r for r in runs if r.data.tags.get(tracking.PARENT_TAG) == parent.info.run_id]
    assert len(children) == 4 and parent.data.params["trainable"] == "test_search_user:fit_mixture"
    for child in children:  # each epoch once, although every trial ran epoch 2 and 3 after a restart
        assert [m.step for m in c.get_metric_history(child.info.run_id, "val_loss")] == [1, 2, 3]
        assert {"optim.lr", "model.hidden", "epochs", "seed"} <= set(child.data.params)
    best_run = c.get_run(parent.data.tags[tracking.BEST_TAG])
    assert best_run.info.run_name == best["trial"]
    assert best_run.data.metrics["best_val_loss"] == pytest.approx(best["val_loss"])
    assert parent.data.metrics["best_val_loss"] == pytest.approx(min(
        ch.data.metrics["best_val_loss"] for ch in children))
    assert "checkpoint/model.pt" in {a.path for a in c.list_artifacts(best_run.info.run_id, "checkpoint")}
    assert "plots/learning_curves_top5.png" in {a.path for a in c.list_artifacts(parent.info.run_id, "plots")}

    cfg = itra_tune.best_config("user-mixture", tracking_uri=mlflow_server)
    assert cfg["optim"]["lr"] == pytest.approx(best["optim.lr"]) and cfg["model"]["hidden"] == best["model.hidden"]
    assert cfg["epochs"] == 3 and cfg == summary["best_config"]


@pytest.mark.slow
def test_a_ray_style_trainable_runs_unchanged_and_max_epochs_ends_it_under_no_scheduler(
        ray_local, mlflow_server, user_space, tmp_path):
    crashes = tmp_path / "crashes"
    crashes.mkdir()
    space = user_space(name="ray-style", budget={"num_samples": 2, "max_concurrent": 2, "max_epochs": 4})
    [summary] = search.run(space, trainable=ray_style, storage_path=str(tmp_path / "st"), name="r",
                           tracking_uri=mlflow_server, max_failures=1, overrides=(f"crash_dir={crashes}",))
    assert summary["trials"] == 2 and summary["completed"] == 2, summary
    # each trial crashed after its second report and continued from that report's checkpoint, to max_epochs
    assert sorted(p.read_text() for p in crashes.iterdir()) == ["0", "0"]
    c = MlflowClient(mlflow_server)
    exp = c.get_experiment_by_name("ray-style")
    children = [r for r in c.search_runs([exp.experiment_id]) if r.data.tags.get(tracking.PARENT_TAG)]
    assert len(children) == 2
    for child in children:  # four reports each, numbered by Tune's count, once each across the restart
        history = c.get_metric_history(child.info.run_id, "step")
        assert [(m.step, m.value) for m in history] == [(1, 1.0), (2, 2.0), (3, 3.0), (4, 4.0)]
    cfg = itra_tune.best_config("ray-style", tracking_uri=mlflow_server)
    assert cfg["optim"]["lr"] == pytest.approx(summary["best"]["optim.lr"])

    # a trainable that never reports ends its trials without a best, and the driver lives on to say so
    [empty] = search.run(user_space(name="silent"), trainable=never_reports, storage_path=str(tmp_path / "st"),
                         name="s", tracking_uri=mlflow_server, num_samples=1)
    assert empty["trials"] == 1 and empty["best"] is None


@pytest.mark.slow
def test_a_trial_whose_process_dies_before_its_first_report_is_failed_not_interrupted(ray_local, user_space, tmp_path):
    [summary] = search.run(user_space(name="dies"), trainable=dies_at_once, storage_path=str(tmp_path / "st"),
                           name="d", tracking_uri=f"sqlite:///{tmp_path / 'm.db'}", num_samples=1)
    assert (summary["trials"], summary["failed"], summary["interrupted"], summary["best"]) == (1, 1, False, None)
    assert summary["tracking"].get("error") is None


@pytest.mark.slow
def test_the_command_line_searches_a_trainable_by_its_import_path(user_space, tmp_path):
    # a fresh process run from the folder that holds the user's module, as a user would
    space = user_space(budget={"num_samples": 2, "max_concurrent": 2, "max_epochs": 2},
                       base={"seed": 0, "epochs": 2, "model": {"hidden": 8}, "optim": {"lr": 0.1}})
    code = subprocess.run([sys.executable, "-m", "itra_tune.search", "--space", str(space), "--trainable",
                           "test_search_user:fit_mixture", "--storage-path", str(tmp_path / "st"), "--name", "cli",
                           "--tracking-uri", f"sqlite:///{tmp_path / 'm.db'}"], cwd=Path(__file__).parent,
                          capture_output=True, text=True, timeout=300,
                          env={**__import__("os").environ, "PYTHONPATH": str(ROOT)})
    assert code.returncode == 0, code.stderr[-2000:]
    summary = json.loads((tmp_path / "st" / "cli" / "summary.json").read_text())
    assert summary["completed"] == 2 and "val_loss" in summary["best"]
    assert "best trial" in code.stdout and "val_loss" in code.stdout
    # the search's own view, without Ray's table or Ray's, Optuna's and MLflow's notices
    assert re.search(r"^\[#{10}\] 2/2 .* completed  val_loss ", code.stdout, re.M), code.stdout
    for chatter in ("== Status ==", "Token authentication", "A new study created", "INFO mlflow"):
        assert chatter not in code.stdout + code.stderr


@pytest.mark.parametrize("trainable, sections, message", [
    ("no_such_module:train", {}, "trainable 'no_such_module:train' cannot be imported"),
    ("not a reference", {}, "--trainable: expected package.module:function"),
    ("test_search_user:fit_mixture", {"budget": {"num_samples": 2}}, "budget.max_epochs is required"),
    ("test_search_user:three_args", {}, "takes 3 positional arguments; a trainable takes \\(config\\)"),
])
def test_bad_trainables_are_refused_before_ray_starts(user_space, trainable, sections, message, tmp_path):
    with pytest.raises(ConfigError, match=message):
        search.run(user_space(**sections), trainable=trainable, storage_path=str(tmp_path / "st"))


def test_a_space_file_can_name_its_trainable_and_bad_names_are_refused(user_space):
    from itra_tune import spaces

    sp = spaces.load(user_space(trainable="test_search_user:fit_mixture"))
    assert sp.trainable == "test_search_user:fit_mixture" and sp.max_epochs == 3 and sp.metric == "val_loss"
    with pytest.raises(ConfigError, match="not a key of base; searchable keys are"):
        spaces.load(user_space(trainable="m:f", search={"optim.momentum": {"type": "float", "low": 0, "high": 1}}))
    with pytest.raises(ConfigError, match="mode must be max or min"):
        spaces.load(user_space(trainable="m:f", mode=None))
    with pytest.raises(ConfigError, match="budget.max_epochs is for a space with a trainable"):
        spaces.load(user_space(base={}, search={}, metric="val_acc", budget={"max_epochs": 3}))
