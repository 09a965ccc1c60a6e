"""MLflow tracking of searches (a real `mlflow server` on 127.0.0.1, and the SQLite default), and the
best-config API that production code uses."""

from __future__ import annotations

import csv
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import mlflow
import pytest
import torch
import yaml
from conftest import free_port, start_mlflow_server, stop_mlflow_server  # noqa: I001
from mlflow import MlflowClient

import itra_tune
from itra_tune import cli, config, tracking
from itra_tune.search.command import main

PROG = "python -m itra_tune.search"


def _runs(c: MlflowClient, experiment: str):
    exp = c.get_experiment_by_name(experiment)
    runs = c.search_runs([exp.experiment_id])
    parents = [r for r in runs if tracking.PARENT_TAG not in r.data.tags]
    children = [r for r in runs if tracking.PARENT_TAG in r.data.tags]
    return parents, children


def _trials_csv(path):
    with open(path / "trials.csv") as f:
        return list(csv.DictReader(f))


def test_search_tracks_to_a_server_and_best_config_round_trips(ray_local, mlflow_server, space_file, tmp_path,
                                                                capsys):
    space = space_file(name="tracked")
    code = cli.run(PROG, main, ["--space", str(space), "--storage-path", str(tmp_path / "st"), "--name", "t",
                                "--tracking-uri", mlflow_server, "--register", "--seed", "2"])
    assert code == 0
    assert "parent run" in capsys.readouterr().out
    summary = json.loads((tmp_path / "st" / "t" / "summary.json").read_text())
    c = MlflowClient(mlflow_server)
    parents, children = _runs(c, "tracked")
    assert len(parents) == 1 and len(children) == 4
    parent = parents[0]
    assert parent.info.status == "FINISHED" and parent.info.run_id == summary["tracking"]["parent_run_id"]
    assert parent.data.params["num_samples"] == "4"
    assert set(parent.data.params["searched"].split(",")) == {"loss.lam", "loss.bandwidth"}
    artifacts = {a.path for a in c.list_artifacts(parent.info.run_id)}
    assert {"best_config.yaml", "trials.csv", "tracked.yaml", "search_settings.json", "plots"} <= artifacts
    assert {a.path for a in c.list_artifacts(parent.info.run_id, "plots")} == {
        "plots/params_vs_metric.png", "plots/learning_curves_top5.png", "plots/compactness_best.png",
        "plots/parallel_coordinates.png", "plots/param_importances.png", "plots/tsne_best_test_features.png"}
    for child in children:
        assert child.data.tags[tracking.PARENT_TAG] == parent.info.run_id
        assert child.info.status == "FINISHED" and child.data.tags[tracking.STATUS_TAG] == "completed"
        assert float(child.data.params["loss.lam"]) == pytest.approx(float(child.data.params["loss.lam"]))
        for metric in tracking.EPOCH_METRICS:
            assert [m.step for m in c.get_metric_history(child.info.run_id, metric)] == [1, 2]
        # one number per trial: its headline metrics are its selected epoch's, as in trials.csv
        row = next(r for r in _trials_csv(tmp_path / "st" / "t") if r["trial"] == child.info.run_name)
        assert child.data.metrics["best_epoch"] == float(row["best_epoch"])
        assert child.data.params["select.epoch"] == row["best_epoch"]  # the epoch its best configuration carries
        assert child.data.metrics["best_test_acc"] == pytest.approx(float(row["test_acc"]))
    best_run = parent.data.tags[tracking.BEST_TAG]
    assert c.get_run(best_run).info.run_name == summary["best"]["trial"]
    ranks = {child.info.run_name: child.data.metrics[tracking.RANK] for child in children}  # the view's order
    assert sorted(ranks.values()) == [1, 2, 3, 4] and ranks[summary["best"]["trial"]] == 1
    # the link the summary prints opens the trials in that order, each trial's status a column beside its figures
    key = summary["tracking"]["ui"].split("viewStateShareKey=")[1].split("&")[0]
    view = json.loads(c.get_experiment_by_name("tracked").tags[tracking.SHARED_VIEW_TAG + key])
    assert view["orderByKey"] == f"metrics.`{tracking.RANK}`" and view["orderByAsc"]
    assert f"tags.`{tracking.STATUS_TAG}`" in view["selectedColumns"]
    assert parent.data.metrics["best_val_acc"] == pytest.approx(summary["best"]["val_acc"])
    assert parent.data.metrics["best_test_acc"] == pytest.approx(summary["best"]["test_acc"])
    # the best 3 trials' checkpoints are LoggedModels of their runs, at their selected epoch
    exp = c.get_experiment_by_name("tracked")
    assert exp.tags["mlflow.experimentKind"] == "custom_model_development"
    mlflow.set_tracking_uri(mlflow_server)
    logged = mlflow.search_logged_models(experiment_ids=[exp.experiment_id], output_format="list")
    assert len(logged) == 3 and {m.source_run_id for m in logged} <= {r.info.run_id for r in children}
    best_model = next(m for m in logged if m.source_run_id == best_run)
    assert parent.data.tags[tracking.BEST_MODEL_TAG] == best_model.model_id
    assert summary["tracking"]["best_model_id"] == best_model.model_id
    assert [v.version for v in c.search_model_versions("name = 'itra-tracked'")] == ["1"]
    version = c.get_model_version("itra-tracked", "1")
    assert best_model.model_id in (version.model_id, version.source.removeprefix("models:/"))

    cfg = itra_tune.best_config("tracked", tracking_uri=mlflow_server)
    assert cfg.written() == summary["best_config"]  # as written: without the loss keys itra_c does not read
    assert "eps" not in summary["best_config"]["loss"] and cfg.loss.eps == config.LossConfig().eps
    model = itra_tune.load_best_model("tracked", tracking_uri=mlflow_server)
    x = torch.randn(3, 1, 8, 8)
    assert model.features(x).shape == (3, 128) and model(x).shape == (3, 10)

    # the promise: the best configuration, trained outside the search with torch's default threads, gives the
    # metrics the trial logged, exactly (the configuration carries the trial's thread count)
    assert cfg.train.threads == 1 and (torch.get_num_threads() >= 2 or os.cpu_count() == 1)
    result = itra_tune.train(cfg)
    for metric in ("val_acc", "val_ce", "test_ce"):
        history = sorted(c.get_metric_history(best_run, metric), key=lambda m: m.step)
        assert [r[metric] for r in result.history] == [m.value for m in history], metric
    # production: the winner over seeds on the full training set, from the command line
    from itra_tune.production import main as train_main

    out = tmp_path / "prod"
    assert train_main(["--space", "tracked", "--best", "--tracking-uri", mlflow_server, "--full-train",
                       "--seeds", "2", "--out", str(out), "--quiet"]) == 0
    printed = capsys.readouterr().out
    assert "over 2 seeds: test_acc" in printed and "±" in printed
    for seed in (cfg.seed, cfg.seed + 1):
        saved = yaml.safe_load((out / f"seed_{seed}" / "config.yaml").read_text())
        assert saved["loss"]["lam"] == cfg.loss.lam and saved["data"]["val_fraction"] == 0.0
    if summary["best"]["best_epoch"] == 2:  # the logged model is the last epoch's: same predictions
        with torch.no_grad():
            torch.testing.assert_close(model(x), result.model.cpu().eval()(x))


def test_default_store_is_sqlite_in_the_working_folder(ray_local, space_file, tmp_path, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI")
    monkeypatch.chdir(tmp_path)
    space = space_file(name="local", budget={"num_samples": 2, "max_concurrent": 2})
    assert cli.run(PROG, main, ["--space", str(space), "--name", "d"]) == 0
    assert (tmp_path / "mlflow.db").is_file() and (tmp_path / "runs" / "search" / "d").is_dir()
    parents, children = _runs(MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}"), "local")
    assert len(parents) == 1 and len(children) == 2
    assert itra_tune.best_config("local").loss.name == "itra_c"  # the same default, read back


def test_a_trial_whose_gate_never_opened_is_tagged_as_trained_as_plain_ce(ray_local, space_file, tmp_path):
    # a rate too small to leave chance: the gated form applies lambda 0 in every epoch of every trial
    space = space_file(name="still", budget={"num_samples": 2, "max_concurrent": 2, "confirm_share": 0},
                       base={"data": {"name": "synthetic", "batch_size": 32, "subset": 320}, "model": {"name": "mlp"},
                             "loss": {"name": "itra_c", "lam": 0.5}, "optim": {"lr": 1e-7},
                             "train": {"epochs": 2, "compactness_samples": 64}})
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    assert cli.run(PROG, main, ["--space", str(space), "--storage-path", str(tmp_path / "st"), "--name", "s",
                                "--tracking-uri", uri]) == 0
    c = MlflowClient(uri)
    _, children = _runs(c, "still")
    assert len(children) == 2
    for child in children:
        assert [m.value for m in c.get_metric_history(child.info.run_id, "lam_applied")] == [0.0, 0.0]
        assert "trained as plain CE" in child.data.tags[tracking.UNMATCHED_TAG]


@pytest.mark.slow
def test_two_searches_starting_together_create_the_default_store_once(tmp_path):
    """Two processes opening a new SQLite store at once: both get it (MLflow's first-use migration is locked)."""
    script = ("import sys, time\n"
              "from itra_tune import tracking\n"
              "time.sleep(max(0.0, float(sys.argv[2]) - time.time()))  # start together\n"
              "c = tracking.client(sys.argv[1])\n"
              "tracking.experiment_id(c, 'race')\n"
              "print('ok')\n")
    for attempt in range(2):
        uri = f"sqlite:///{tmp_path / f'race{attempt}' / 'mlflow.db'}"
        (tmp_path / f"race{attempt}").mkdir()
        start = str(time.time() + 3)
        procs = [subprocess.Popen([sys.executable, "-c", script, uri, start], stdout=subprocess.PIPE,
                                  stderr=subprocess.PIPE, text=True) for _ in range(2)]
        outs = [p.communicate(timeout=120) for p in procs]
        assert [p.returncode for p in procs] == [0, 0], [err[-1500:] for _, err in outs]
        assert len(MlflowClient(uri).search_experiments(filter_string="name = 'race'")) == 1


def test_unreachable_tracking_server_is_bad_input(tmp_path, capsys):
    code = cli.run(PROG, main, ["--space", "demo", "--tracking-uri", f"http://127.0.0.1:{free_port()}",
                                "--storage-path", str(tmp_path / "st")])
    err = capsys.readouterr().err
    assert code == 2 and "the MLflow server does not answer" in err and err.count("\n") == 1
    assert not (tmp_path / "st").exists()


def test_a_live_write_while_the_server_is_away_is_left_to_the_back_fill(mlflow_server):
    """A live write first asks the server's /health (a second at most): one that does not answer is skipped at
    once, where MLflow's own retries would hold up every trial for minutes."""
    t = tracking.Tracker(mlflow_server, "away", run_name="search")
    t.trial_started("t1", "trial_t1", {"loss.lam": 0.5})
    t.epoch("t1", {"epoch": 1, "val_acc": 0.5, "val_ce": 1.0})
    t.uri = f"http://127.0.0.1:{free_port()}"  # the server went away (the client still knows the old one)
    t.epoch("t1", {"epoch": 2, "val_acc": 0.6, "val_ce": 0.9})
    assert t.failures == 1
    assert [m.step for m in t.c.get_metric_history(t._children["t1"], "val_acc")] == [1]  # 2 is the back-fill's


@pytest.mark.slow
def test_tracking_server_outage_mid_search_is_back_filled(space_file, tmp_path):
    """The server goes away once a trial has reported and stays away to the end: training goes on, the summary says
    MLflow is not complete, and its resume command back-fills every epoch once the server answers again. Each step
    waits for the search's own progress (an epoch reported, the driver's exit), never for a wall-clock window."""
    db, art, port = str(tmp_path / "srv.db"), str(tmp_path / "art"), free_port()
    uri = f"http://127.0.0.1:{port}"
    server = start_mlflow_server(db, art, port)
    space = space_file(name="outage", budget={"num_samples": 3, "max_concurrent": 2},
                       base={"data": {"name": "synthetic", "batch_size": 32, "subset": 1280}, "model": {"name": "mlp"},
                             "loss": {"name": "itra_c"}, "train": {"epochs": 8, "compactness_samples": 64}})
    exp = tmp_path / "st" / "o"
    cmd = [sys.executable, "-m", "itra_tune.search", "--space", str(space), "--storage-path", str(tmp_path / "st"),
           "--name", "o", "--tracking-uri", uri]
    search = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        _wait_for(lambda: any((d / "result.json").exists() for d in exp.glob("trial_*")), "a trial's first epoch")
        stop_mlflow_server(server)  # the server goes away while trials train
        out, _ = search.communicate(timeout=600)
    finally:
        if search.poll() is None:
            search.kill()
    assert search.returncode == 0, out[-3000:]
    assert "MLflow: not completed" in out and f"back-fills MLflow once {uri} answers" in out, out[-3000:]
    assert json.loads((exp / "summary.json").read_text())["completed"] == 3  # no finished work lost
    server = start_mlflow_server(db, art, port)
    try:
        resumed = subprocess.run(cmd + ["--resume"], capture_output=True, text=True, timeout=600)
        assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-3000:]
        c = MlflowClient(uri)
        parents, children = _runs(c, "outage")
        assert len(parents) == 1 and len(children) == 3
        for child in children:
            steps = [m.step for m in c.get_metric_history(child.info.run_id, "val_acc")]
            assert steps == list(range(1, 9)), steps  # every epoch once: live or back-filled, never both
            assert child.info.status == "FINISHED"
    finally:
        stop_mlflow_server(server)


def _wait_for(ready, what: str, seconds: float = 600) -> None:
    """Poll ``ready()`` until it holds; the deadline is a hang's guard, far beyond any machine's pace."""
    deadline = time.time() + seconds
    while not ready():
        if time.time() > deadline:
            pytest.fail(f"the search made no progress: no {what} in {seconds:.0f} s")
        time.sleep(0.2)


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("chromium") is None, reason="needs Debian's chromium (.ci/run installs it)")
def test_mlflow_ui_shows_the_searchs_trials_ranked_with_their_figures(ray_local, mlflow_server, space_file, tmp_path,
                                                                     capsys):
    from playwright.sync_api import sync_playwright

    space = space_file(name="ui", budget={"num_samples": 3, "max_concurrent": 2})
    assert cli.run(PROG, main, ["--space", str(space), "--storage-path", str(tmp_path / "st"), "--name", "ui-search",
                                "--tracking-uri", mlflow_server]) == 0
    out = capsys.readouterr().out.split()
    link = out[out.index("open:") + 1]
    best_link = out[out.index("best:") + 1]
    c = MlflowClient(mlflow_server)
    _, children = _runs(c, "ui")
    ranked = sorted(children, key=lambda r: r.data.metrics["rank"])  # the search's order, the answer first
    assert [r.data.metrics["rank"] for r in ranked] == [1, 2, 3]
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=shutil.which("chromium"),
                                    args=["--no-sandbox", "--disable-gpu", "--disable-background-networking"])
        page = browser.new_page(viewport={"width": 2600, "height": 1000})  # every column in view (ag-grid)
        page.goto(link)  # the link the search printed: its trials, ranked, with their figures, in model training
        run_link = lambda name: page.locator("a[href*='/runs/']").get_by_text(name, exact=True)  # noqa: E731
        run_link(ranked[0].info.run_name).wait_for(timeout=60_000)
        headers = page.locator("[role=columnheader]").all_inner_texts()
        assert {"rank", "best_val_ce", "best_val_acc", "best_epoch", "loss.lam", "Models"} <= set(headers), headers
        assert page.get_by_text("ui-search", exact=True).count() == 0  # the trials alone, not folded under it
        names = [n for n in page.locator("a[href*='/runs/']").all_inner_texts() if n.startswith("trial_")]
        assert names == [r.info.run_name for r in ranked]  # best first, by the search's rule
        assert page.get_by_text("Sort: rank").count() == 1
        assert page.get_by_text("Model training").count() >= 1 and page.get_by_text("Judges").count() == 0
        # each trial's row links its LoggedModel, named after the trial
        page.locator("a[href*='/models/m-']").get_by_text(ranked[0].info.run_name, exact=True).wait_for(timeout=30_000)
        page.screenshot(path=str(tmp_path / "mlflow_ui.png"))
        # the best trial's page, from the summary's link, stays in the model-training view (no GenAI navigation)
        page.goto(best_link)
        page.get_by_text("best_val_ce").first.wait_for(timeout=60_000)
        best = next(r for r in children if r.info.run_id in best_link)
        assert best.info.run_id == ranked[0].info.run_id and page.get_by_text(best.info.run_name).count() >= 1
        assert page.get_by_text("Judges").count() == 0 and page.get_by_text("Evaluation runs").count() == 0
        browser.close()
    assert (tmp_path / "mlflow_ui.png").stat().st_size > 10_000


@pytest.mark.slow
def test_trials_on_a_second_node_log_to_the_tracking_server(mlflow_server, space_file, cluster_env, tmp_path):
    port = free_port()
    temp = Path(tempfile.mkdtemp(prefix="rh", dir="/tmp"))  # Ray's unix sockets need a short path
    env = cluster_env
    ray_bin = str(Path(sys.executable).parent / "ray")
    common = ["--block", "--node-ip-address=127.0.0.1", "--include-dashboard=false"]
    # the head offers no CPU: every trial has to run on the second node
    head = subprocess.Popen([ray_bin, "start", "--head", f"--port={port}", "--num-cpus=0", f"--temp-dir={temp}",
                             *common], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
    nodes = [head]
    try:
        _wait_port(port)
        nodes.append(subprocess.Popen([ray_bin, "start", f"--address=127.0.0.1:{port}", "--num-cpus=2",
                                       "--node-ip-address=127.0.0.1", "--block"],
                                      stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env))
        space = space_file(name="cluster", budget={"num_samples": 2, "max_concurrent": 2})
        cwd = tmp_path / "driver"
        cwd.mkdir()
        proc = subprocess.run([sys.executable, "-m", "itra_tune.search", "--space", str(space), "--address",
                               f"127.0.0.1:{port}", "--storage-path", str(tmp_path / "st"), "--name", "two-nodes",
                               "--tracking-uri", mlflow_server], capture_output=True, text=True, timeout=600,
                              env=env, cwd=cwd)
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    finally:
        for n in reversed(nodes):
            n.send_signal(signal.SIGTERM)
            n.wait(timeout=90)
        shutil.rmtree(temp, ignore_errors=True)
    assert list(cwd.iterdir()) == []  # no mlflow.db or mlruns/ beside the driver
    c = MlflowClient(mlflow_server)
    _, children = _runs(c, "cluster")
    assert len(children) == 2
    for child in children:
        assert [m.step for m in c.get_metric_history(child.info.run_id, "val_acc")] == [1, 2]
    mlflow.set_tracking_uri(mlflow_server)
    logged = mlflow.search_logged_models(experiment_ids=[c.get_experiment_by_name("cluster").experiment_id],
                                         output_format="list")
    assert sorted(m.source_run_id for m in logged) == sorted(r.info.run_id for r in children)


def _wait_port(port: int, seconds: float = 90) -> None:
    import socket

    deadline = time.time() + seconds
    while time.time() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.5)
    raise RuntimeError(f"nothing listens on 127.0.0.1:{port}")
