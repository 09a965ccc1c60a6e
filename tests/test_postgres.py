"""A real database: PostgreSQL (the installed server, started by the test in a temporary folder on a free loopback
port) holding a search's Optuna study (``--optuna-storage postgresql://...``) and the backend store of the MLflow
server it tracks to, stopped while the trials train and until the search, at its end, waits for it: every trial
is in both, once."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import pytest
from conftest import free_port, start_mlflow_server, stop_mlflow_server

pytestmark = pytest.mark.slow
pytest.importorskip("psycopg2", reason="the postgres extra: pip install 'itra_tune[postgres]'")
pytest.importorskip("psycopg", reason="the postgres extra: pip install 'itra_tune[postgres]'")


class Postgres:
    """A PostgreSQL server of its own: ``initdb`` and ``pg_ctl`` (as user ``postgres`` when run as root, which
    they refuse to be) on a folder in /tmp, listening on 127.0.0.1 and a socket in that folder."""

    def __init__(self) -> None:
        self.folder = Path(tempfile.mkdtemp(prefix="pg", dir="/tmp"))
        self.data, self.port = self.folder / "data", free_port()
        if os.geteuid() == 0:
            shutil.chown(self.folder, "postgres", "postgres")
        self.run("initdb", "-A", "trust", "-U", "postgres", "-D", str(self.data))

    def run(self, *cmd: str) -> None:
        owner = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
        subprocess.run([*owner, *cmd], check=True, capture_output=True, timeout=120)

    def start(self) -> None:
        self.run("pg_ctl", "-D", str(self.data), "-l", str(self.folder / "log"), "-w", "-o",
                 f"-k {self.folder} -h 127.0.0.1 -p {self.port}", "start")

    def stop(self) -> None:
        self.run("pg_ctl", "-D", str(self.data), "-m", "fast", "-w", "stop")

    def database(self, name: str) -> str:
        self.run("createdb", "-h", "127.0.0.1", "-p", str(self.port), "-U", "postgres", name)
        return f"postgresql://postgres@127.0.0.1:{self.port}/{name}"


@pytest.fixture
def postgres():
    if not shutil.which("initdb") or not shutil.which("pg_ctl"):
        pytest.skip("PostgreSQL's initdb and pg_ctl are not installed")
    server = Postgres()
    server.start()
    yield server
    try:
        server.stop()
    except subprocess.CalledProcessError:
        pass  # already stopped
    shutil.rmtree(server.folder, ignore_errors=True)


def _results(experiment: Path) -> int:
    """Epochs reported so far, over every trial (Tune's result.json lines)."""
    return sum(len(f.read_text().splitlines()) for f in experiment.glob("trial_*/result.json"))


def _wait(ready, proc: subprocess.Popen, seconds: float = 300) -> None:
    deadline = time.time() + seconds
    while not ready():
        assert proc.poll() is None, "the search ended first"
        assert time.time() < deadline
        time.sleep(0.2)


def test_a_search_keeps_its_study_and_mlflow_in_postgresql_through_a_database_restart(postgres, space_file,
                                                                                      tmp_path):
    import optuna
    from mlflow import MlflowClient

    optuna_url, mlflow_url = postgres.database("optuna"), postgres.database("mlflow")
    port = free_port()
    server = start_mlflow_server(mlflow_url, str(tmp_path / "artifacts"), port)
    uri = f"http://127.0.0.1:{port}"
    space = space_file(name="pg", budget={"num_samples": 4, "max_concurrent": 2})
    cmd = [sys.executable, "-m", "itra_tune.search", "--space", str(space), "--name", "pg", "--storage-path",
           str(tmp_path / "st"), "--optuna-storage", optuna_url, "--tracking-uri", uri]
    lines: list[str] = []
    try:
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1)
        reader = threading.Thread(target=lambda: lines.extend(proc.stdout), daemon=True)
        reader.start()
        experiment = tmp_path / "st" / "pg"
        _wait(lambda: _results(experiment) >= 1, proc)  # a trial has reported: the database goes away
        postgres.stop()
        # the trials train on without it, MLflow's live writes fail; at its end the search waits for the study's
        _wait(lambda: any("waiting up to" in line for line in lines), proc)
        postgres.start()  # database, which comes back
        proc.wait(timeout=600)
        reader.join(timeout=60)
        out = "".join(lines)
        assert proc.returncode == 0, out[-3000:]
        assert "waiting up to 60s for the Optuna database (" in out  # the study's connection failed, and waited
        assert "not recorded" not in out and "not completed" not in out  # MLflow's client retries on its own
        study = optuna.load_study(study_name="pg", storage=optuna_url)
        keys = [t.user_attrs.get("itra_tune.trial_id") for t in study.trials]
        assert len(keys) == 4 and len(set(keys)) == 4 and all(t.state.name == "COMPLETE" for t in study.trials)
        client = MlflowClient(uri)
        experiment_id = client.get_experiment_by_name("pg").experiment_id
        children = client.search_runs([experiment_id], "tags.mlflow.parentRunId != ''")
        assert len(children) == 4
        for run in children:  # every epoch once
            assert [m.step for m in client.get_metric_history(run.info.run_id, "val_acc")] == [1, 2]
    finally:
        stop_mlflow_server(server)


def test_a_database_away_at_the_end_is_one_line_and_resume_records_the_study(postgres, space_file, tmp_path):
    import optuna

    url = postgres.database("optuna")
    space = space_file(name="away", budget={"num_samples": 2, "max_concurrent": 2})
    cmd = [sys.executable, "-m", "itra_tune.search", "--space", str(space), "--name", "away", "--storage-path",
           str(tmp_path / "st"), "--optuna-storage", url, "--tracking-uri", f"sqlite:///{tmp_path / 'mlflow.db'}"]
    env = {**os.environ, "ITRA_TUNE_DB_WAIT": "4"}  # how long the search waits at its end (default 60 s)
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    _wait(lambda: _results(tmp_path / "st" / "away") >= 1, proc)
    postgres.stop()  # and it stays away past the search's end
    out = proc.communicate(timeout=600)[0]
    assert proc.returncode == 0, out[-3000:]  # the search's own results are safe
    (line,) = [x for x in out.splitlines() if x.startswith("Optuna: not recorded")]
    assert "records the study once the database answers" in line
    resume = next(x for x in out.splitlines() if x.startswith("resume:")).removeprefix("resume:")
    assert "--resume" in resume and url in resume
    postgres.start()
    again = subprocess.run(cmd + ["--resume"], capture_output=True, text=True, timeout=600)
    assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-3000:]
    trials = optuna.load_study(study_name="away", storage=url).trials
    assert len(trials) == 2 and len({t.user_attrs["itra_tune.trial_id"] for t in trials}) == 2


def test_two_drivers_sharing_one_study_sample_from_each_others_trials_and_record_each_once(postgres, space_file,
                                                                                          tmp_path):
    import csv

    import optuna

    url = postgres.database("optuna")
    space = space_file(name="both", budget={"num_samples": 3, "max_concurrent": 1})

    def driver(name: str) -> subprocess.Popen:
        return subprocess.Popen(
            [sys.executable, "-m", "itra_tune.search", "--space", str(space), "--name", name, "--storage-path",
             str(tmp_path / "st"), "--optuna-storage", url, "--optuna-study", "shared", "--seed", name[-1],
             "--tracking-uri", f"sqlite:///{tmp_path / name}.db"],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)

    # one storage, one pool, for every poll: a storage per poll leaves its connections open until collected, and
    # the polls of a slow first trial took every one the server allows (FATAL: sorry, too many clients already)
    storage = optuna.storages.RDBStorage(url)

    def finished() -> int:
        try:
            return len(optuna.load_study(study_name="shared", storage=storage).get_trials(
                states=(optuna.trial.TrialState.COMPLETE,)))
        except KeyError:  # not created yet
            return 0

    first = driver("a1")
    _wait(lambda: finished() >= 1, first)  # the second driver starts once the study holds a finished trial
    second = driver("b2")
    outs = {name: proc.communicate(timeout=600) for name, proc in (("a1", first), ("b2", second))}
    for name, proc in (("a1", first), ("b2", second)):
        assert proc.returncode == 0, outs[name][0][-2000:] + outs[name][1][-2000:]
    assert "the sampler learned" in outs["b2"][1] and "in the Optuna study 'shared'" in outs["b2"][1]
    # one study: every trial of both drivers once, none other
    keys = [t.user_attrs["itra_tune.trial_id"] for t in optuna.load_study(study_name="shared", storage=storage).trials]
    ids = {row["trial"].removeprefix("trial_") for name in ("a1", "b2")
           for row in csv.DictReader((tmp_path / "st" / name / "trials.csv").open())}
    assert len(keys) == 6 and set(keys) == ids
