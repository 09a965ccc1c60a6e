"""GPU placement as Ray schedules it, checked without a GPU: a two-node cluster declaring logical GPUs
(``ray start --num-gpus 2`` on each node), searches asking for half a GPU a trial and for data-parallel trials of
one GPU a worker. Each trial records the node and GPU ids Ray gave it and the device it trained on (its MLflow
tags); CUDA cannot open a logical GPU, so each trial says so and trains on the CPU, or fails with one line when
the configuration asks for CUDA."""

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
from collections import Counter
from pathlib import Path

import pytest
from conftest import free_port
from mlflow import MlflowClient

pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("ray_head")]
GPUS_PER_NODE = 2


@pytest.fixture(scope="module")
def gpu_cluster():
    """A head and a second node on this machine, each with 2 CPUs and 2 logical GPUs; yields (address, env)."""
    import secrets

    env = {k: v for k, v in os.environ.items() if k != "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"}
    env.update(RAY_AUTH_MODE="token", RAY_AUTH_TOKEN=secrets.token_hex(32))
    port = free_port()
    temp = Path(tempfile.mkdtemp(prefix="rg", dir="/tmp"))  # Ray's unix sockets need a short path
    ray_bin = str(Path(sys.executable).parent / "ray")
    common = ["--block", "--node-ip-address=127.0.0.1", "--num-cpus=2", f"--num-gpus={GPUS_PER_NODE}"]
    nodes = [subprocess.Popen([ray_bin, "start", "--head", f"--port={port}", f"--temp-dir={temp}",
                               "--include-dashboard=false", *common], stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL, env=env)]
    try:
        address = f"127.0.0.1:{port}"
        _wait(lambda: _gpus(ray_bin, address, env) >= GPUS_PER_NODE)
        nodes.append(subprocess.Popen([ray_bin, "start", f"--address={address}", *common],
                                      stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env))
        _wait(lambda: _gpus(ray_bin, address, env) == 2 * GPUS_PER_NODE)  # the second node has joined
        yield address, env
    finally:
        for n in reversed(nodes):
            n.send_signal(signal.SIGTERM)
            n.wait(timeout=90)
        shutil.rmtree(temp, ignore_errors=True)


def _gpus(ray_bin: str, address: str, env: dict) -> float:
    """The GPUs the cluster declares, as ``ray status`` counts them (0 until it answers)."""
    out = subprocess.run([ray_bin, "status", f"--address={address}"], capture_output=True, text=True, env=env,
                         timeout=60).stdout
    totals = [line.split("/")[1].split()[0] for line in out.splitlines() if line.strip().endswith(" GPU")]
    return float(totals[0]) if totals else 0.0


def _wait(ready, seconds: float = 120) -> None:
    deadline = time.time() + seconds
    while not ready():
        assert time.time() < deadline, "the Ray cluster did not come up"
        time.sleep(1)


def _search(gpu_cluster, space, tmp_path, name, *flags):
    address, env = gpu_cluster
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    proc = subprocess.run([sys.executable, "-m", "itra_tune.search", "--space", str(space), "--address", address,
                           "--storage-path", str(tmp_path / "st"), "--name", name, "--tracking-uri", uri, *flags],
                          capture_output=True, text=True, timeout=600, env=env, cwd=tmp_path)
    rows = list(csv.DictReader((tmp_path / "st" / name / "trials.csv").open())) \
        if (tmp_path / "st" / name / "trials.csv").is_file() else []
    return proc, rows, uri


def _spans(experiment: Path) -> dict[str, tuple[float, float]]:
    """When each trial held its device: from its start on the node to its last report (its own clock)."""
    out = {}
    for f in experiment.glob("trial_*/result.json"):
        rows = [json.loads(line) for line in f.read_text().splitlines() if line.strip()]
        out[f.parent.name] = (rows[-1]["started"], rows[-1]["started"] + rows[-1]["time_total_s"])
    return out


def _most_at_once(spans: list[tuple[float, float]]) -> int:
    """The most spans that cover one moment."""
    return max((sum(a <= t < b for a, b in spans) for t, _ in spans), default=0)


def test_half_a_gpu_a_trial_packs_two_trials_on_each_gpu_and_each_says_where_it_trained(
        gpu_cluster, space_file, tmp_path):
    space = space_file(name="packed", budget={"num_samples": 4, "max_concurrent": 4})
    proc, rows, uri = _search(gpu_cluster, space, tmp_path, "packed", "--gpus-per-trial", "0.5",
                              "--cpus-per-trial", "0.5")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert len(rows) == 4 and all(r["status"] == "completed" for r in rows)
    slots = Counter((r["node"], r["gpu_ids"]) for r in rows)
    assert all(len(ids.split(",")) == 1 and 0 <= int(ids) < GPUS_PER_NODE for _, ids in slots)
    # packing, from when each trial held its GPU: never more than two trials of half a GPU on one GPU at once
    # (which GPU Ray picks for a trial is its scheduler's choice: on this machine it put two on each GPU 0)
    spans = _spans(tmp_path / "st" / "packed")
    on = {slot: [spans[r["trial"]] for r in rows if (r["node"], r["gpu_ids"]) == slot] for slot in slots}
    assert 1 <= max(_most_at_once(s) for s in on.values()) <= 2
    assert {r["device"] for r in rows} == {"cpu"}  # a logical GPU does not open: each trial trained on the CPU
    assert "note: 4 trials were given GPUs by Ray that CUDA could not open on their node" in proc.stdout
    client = MlflowClient(uri)
    runs = client.search_runs([client.get_experiment_by_name("packed").experiment_id],
                              "tags.mlflow.parentRunId != ''")
    tags = Counter((r.data.tags["itra_tune.node"], r.data.tags["itra_tune.gpu_ids"]) for r in runs)
    assert tags == slots and {r.data.tags["itra_tune.device"] for r in runs} == {"cpu"}


def test_a_data_parallel_trial_has_its_workers_on_separate_gpus(gpu_cluster, space_file, tmp_path):
    space = space_file(name="workers", budget={"num_samples": 1, "max_concurrent": 1},
                       base={"data": {"name": "synthetic", "batch_size": 32, "subset": 640}, "model": {"name": "mlp"},
                             "loss": {"name": "itra_c", "lam": 0.5}, "optim": {"lr": 0.05},
                             "train": {"epochs": 1, "compactness_samples": 64}})
    proc, rows, _ = _search(gpu_cluster, space, tmp_path, "workers", "--workers-per-trial", "2",
                            "--gpus-per-trial", "1", "--cpus-per-trial", "0.5")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    (row,) = rows
    assert row["status"] == "completed" and row["device"] == "cpu"
    ids = row["gpu_ids"].split(",")
    assert len(ids) == 2 and all(0 <= int(i) < GPUS_PER_NODE for i in ids)  # one GPU for each of the two workers


def test_a_trial_asking_for_cuda_on_a_gpu_it_cannot_open_fails_with_one_line(gpu_cluster, space_file, tmp_path):
    space = space_file(name="strict", budget={"num_samples": 1, "max_concurrent": 1})
    proc, rows, _ = _search(gpu_cluster, space, tmp_path, "strict", "--gpus-per-trial", "0.5",
                            "--cpus-per-trial", "0.5", "--set", "device=cuda")
    (row,) = rows
    assert row["status"].startswith("failed: ") and "device 'cuda' asked for but no CUDA GPU is visible" in \
        row["status"]
    assert proc.returncode != 0
