"""A node lost mid-search, the common fault of preemptible cloud GPUs: the second node of a two-node cluster is
killed (SIGKILL to its raylet and workers) while its trials train. The search goes on; with ``--max-failures``
the lost trials continue from their last checkpoint on the surviving node, and MLflow, Optuna and the summary
count each trial once."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
from conftest import free_port
from mlflow import MlflowClient

pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("ray_head")]
EPOCHS = 6


def _reports(experiment: Path) -> dict[str, list[dict]]:
    """Each trial's reports so far (Tune's result.json), in order."""
    out = {}
    for f in experiment.glob("trial_*/result.json"):
        lines = [line for line in f.read_text().splitlines() if line.strip()]
        try:
            out[f.parent.name] = [json.loads(line) for line in lines]
        except ValueError:  # a line being written
            pass
    return out


def _kill_node(node: subprocess.Popen) -> None:
    """SIGKILL a node started by ``ray start --block``: the command, its raylet and every process under them."""
    import psutil

    procs = [psutil.Process(node.pid), *psutil.Process(node.pid).children(recursive=True)]
    for p in procs:
        try:
            p.send_signal(signal.SIGKILL)
        except psutil.NoSuchProcess:
            pass
    node.wait(timeout=60)


def test_a_node_killed_mid_search_loses_no_trial_and_counts_each_once(space_file, cluster_env, tmp_path):
    port = free_port()
    temp = Path(tempfile.mkdtemp(prefix="rl", dir="/tmp"))  # Ray's unix sockets need a short path
    ray_bin = str(Path(sys.executable).parent / "ray")
    # the head declares a node dead after 6 missed health checks a second apart (Ray's default waits longer); a
    # busy machine answering late only delays that, while the trials wait for the node's end, not a time window
    env = {**cluster_env, "RAY_health_check_period_ms": "1000", "RAY_health_check_timeout_ms": "2000",
           "RAY_health_check_failure_threshold": "6"}
    common = ["--block", "--node-ip-address=127.0.0.1"]
    head = subprocess.Popen([ray_bin, "start", "--head", f"--port={port}", "--num-cpus=1", f"--temp-dir={temp}",
                             "--include-dashboard=false", *common], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, env=env)
    second = None
    try:
        deadline = time.time() + 90
        while subprocess.run([ray_bin, "status", f"--address=127.0.0.1:{port}"], capture_output=True,
                             env=env).returncode != 0:
            assert time.time() < deadline
            time.sleep(1)
        second = subprocess.Popen([ray_bin, "start", f"--address=127.0.0.1:{port}", "--num-cpus=2", *common],
                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
        while "3.0 CPU" not in subprocess.run([ray_bin, "status", f"--address=127.0.0.1:{port}"],
                                              capture_output=True, text=True, env=env).stdout:
            assert time.time() < deadline, "the second node did not join"
            time.sleep(1)
        space = space_file(name="lost", budget={"num_samples": 3, "max_concurrent": 3},
                           base={"data": {"name": "synthetic", "batch_size": 32, "subset": 1280},
                                 "model": {"name": "mlp"}, "loss": {"name": "itra_c", "lam": 0.5},
                                 "optim": {"lr": 0.05}, "train": {"epochs": EPOCHS, "compactness_samples": 64}})
        uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
        proc = subprocess.Popen([sys.executable, "-m", "itra_tune.search", "--space", str(space), "--address",
                                 f"127.0.0.1:{port}", "--storage-path", str(tmp_path / "st"), "--name", "lost",
                                 "--tracking-uri", uri, "--cpus-per-trial", "1"],  # retries: 2, on a cluster
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
        experiment = tmp_path / "st" / "lost"
        (gcs,) = temp.glob("session_2*/gcs_server_port_*")  # named after the head's node id
        head_node = gcs.name.removeprefix("gcs_server_port_")
        deadline = time.time() + 300
        while True:  # a trial on the second node has reported an epoch and has more to train
            reports = _reports(experiment)
            lost = [t for t, rows in reports.items() if rows and rows[-1]["node"] != head_node
                    and rows[-1]["epoch"] < EPOCHS]
            if lost:
                break
            assert proc.poll() is None and time.time() < deadline, "no trial trained on the second node"
            time.sleep(0.1)
        _kill_node(second)  # the node dies with its trials
        out = proc.communicate(timeout=600)[0]
        assert proc.returncode == 0, out[-3000:]
    finally:
        if second is not None and second.poll() is None:
            _kill_node(second)
        head.send_signal(signal.SIGTERM)
        head.wait(timeout=90)
        subprocess.run(["rm", "-rf", str(temp)], check=False)
    summary = json.loads((experiment / "summary.json").read_text())
    assert summary["trials"] == 3 and summary["completed"] == 3, out[-3000:]
    final = _reports(experiment)
    for trial in lost:  # resumed on the surviving node from its last checkpoint: no epoch trained twice is lost
        rows = final[trial]
        assert rows[-1]["epoch"] == EPOCHS and rows[-1]["node"] == head_node
    import optuna

    stored = optuna.load_study(study_name="lost", storage=f"sqlite:///{experiment / 'optuna.db'}").trials
    assert len({t.user_attrs["itra_tune.trial_id"] for t in stored}) == len(stored) == 3
    client = MlflowClient(uri)
    runs = client.search_runs([client.get_experiment_by_name("lost").experiment_id], "tags.mlflow.parentRunId != ''")
    assert len(runs) == 3
    for run in runs:
        steps = [m.step for m in client.get_metric_history(run.info.run_id, "val_acc")]
        assert steps == list(range(1, EPOCHS + 1))  # each epoch once, the lost ones' included
    redone = sum(len(final[t]) - len({r["epoch"] for r in final[t]}) for t in lost)
    print(f"lost trials {len(lost)}, epochs reported again after the retry: {redone}")
