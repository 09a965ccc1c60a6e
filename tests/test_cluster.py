"""How a Ray user launches a search on a cluster: ``ray job submit`` to a head started by the test, and the
cluster launcher's YAML and the KubeRay RayJob manifest of docs/cluster, checked against Ray's schema and the
search's own command line."""

from __future__ import annotations

import json
import os
import re
import shlex
import signal
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
import yaml
from conftest import free_port

from itra_tune.search import command

ROOT = Path(__file__).resolve().parents[1]
CLUSTER = ROOT / "docs" / "cluster"


def _search_flags(cmd: str) -> object:
    """The flags of a ``python -m itra_tune.search ...`` command, parsed by the search's own parser."""
    words = shlex.split(cmd)
    assert words[:3] == ["python", "-m", "itra_tune.search"], cmd
    return command.parser().parse_args(words[3:])


def test_the_cluster_launcher_yaml_is_valid_for_ray_and_submits_a_valid_search():
    import jsonschema
    import ray.autoscaler

    text = (CLUSTER / "aws-gpu.yaml").read_text()
    config = yaml.safe_load(text)
    schema = json.loads((Path(ray.autoscaler.__file__).parent / "ray-schema.json").read_text())
    jsonschema.validate(config, schema)  # what `ray up` checks first
    assert config["available_node_types"]["gpu_worker"]["resources"]["GPU"] == 1
    assert any("itra_tune[search" in c and "cluster" in c for c in config["setup_commands"])
    header = " ".join(line.lstrip("# ").rstrip("\\ ") for line in text.splitlines() if line.startswith("#"))
    submitted = re.search(r"-- (python -m itra_tune\.search .*?--tracking-uri \S+)", header).group(1)
    args = _search_flags(submitted)
    assert args.gpus_per_trial == 0.5 and args.storage_path.startswith("/shared/")


def test_the_rayjob_manifest_runs_a_valid_search_on_gpu_workers_with_shared_storage():
    job = yaml.safe_load((CLUSTER / "rayjob.yaml").read_text())
    assert (job["apiVersion"], job["kind"]) == ("ray.io/v1", "RayJob")
    args = _search_flags(job["spec"]["entrypoint"])
    spec = job["spec"]["rayClusterSpec"]
    workers = spec["workerGroupSpecs"][0]
    assert workers["rayStartParams"]["num-gpus"] == "1"
    assert workers["template"]["spec"]["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] == "1"
    for pod in (spec["headGroupSpec"]["template"]["spec"], workers["template"]["spec"]):
        mounts = {m["mountPath"] for c in pod["containers"] for m in c["volumeMounts"]}
        assert any(args.storage_path.startswith(m + "/") for m in mounts)  # every pod sees the search's storage
    assert spec["rayVersion"] == __import__("ray").__version__


@pytest.mark.slow
@pytest.mark.xdist_group("ray_head")
def test_ray_job_submit_runs_a_search_on_the_cluster(space_file, cluster_env, tmp_path):
    """`ray job submit --working-dir . -- python -m itra_tune.search ...` against a head with its dashboard."""
    port, dashboard, agent, client = free_port(), free_port(), free_port(), free_port()
    temp = Path(tempfile.mkdtemp(prefix="rj", dir="/tmp"))  # Ray's unix sockets need a short path
    ray_bin = str(Path(sys.executable).parent / "ray")
    env = {**cluster_env, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}
    env.pop("MLFLOW_TRACKING_URI", None)  # MLflow's default store: the job's folder
    head = subprocess.Popen([ray_bin, "start", "--head", "--block", "--node-ip-address=127.0.0.1", f"--port={port}",
                             "--num-cpus=2", "--dashboard-host=127.0.0.1", f"--dashboard-port={dashboard}",
                             # the job runs through the head's dashboard agent, whose HTTP port defaults to 52365:
                             # a local Ray of another test may hold that one (then: "No available agent to submit job")
                             f"--dashboard-agent-listen-port={agent}", f"--ray-client-server-port={client}",
                             f"--temp-dir={temp}"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
    try:
        deadline = time.time() + 120
        while True:  # the job server answers once the dashboard is up
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{dashboard}/api/version", timeout=2):
                    break
            except urllib.error.HTTPError:  # it answers (without the cluster's token: 401)
                break
            except OSError:
                assert head.poll() is None and time.time() < deadline, "the head's dashboard did not come up"
                time.sleep(1)
        space = space_file(name="jobbed", budget={"num_samples": 2, "max_concurrent": 2})
        job = subprocess.run([ray_bin, "job", "submit", "--address", f"http://127.0.0.1:{dashboard}",
                              "--working-dir", str(ROOT), "--", "python", "-m", "itra_tune.search", "--space",
                              str(space), "--storage-path", str(tmp_path / "st"), "--name", "jobbed"],
                             capture_output=True, text=True, timeout=600, env=env, cwd=ROOT)
        out = job.stdout + job.stderr
        assert job.returncode == 0 and "succeeded" in out, out[-3000:]
    finally:
        head.send_signal(signal.SIGTERM)
        head.wait(timeout=90)
        subprocess.run(["rm", "-rf", str(temp)], check=False)
    summary = json.loads((tmp_path / "st" / "jobbed" / "summary.json").read_text())
    assert summary["trials"] == 2 and summary["completed"] == 2
    # the MLflow store was left to its default, in Ray's temporary copy of the folder: the search says so
    assert "note: this search runs in Ray's temporary copy of its working folder" in out
    assert "give --tracking-uri a place that stays" in out
