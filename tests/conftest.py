from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
# The tests' local Ray listens on the loopback address alone, as a local search's does (read when ray is imported)
os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
# Ray starts its workers at niceness 15 (its worker_niceness): beside any process at the default priority (the
# other pytest-xdist worker's own training, a busy CI machine) a trial gets a few percent of a core (measured:
# epochs 43x slower beside two CPU-bound processes). The tests' trials run at the priority of the tests' own code.
os.environ.setdefault("RAY_worker_niceness", "0")
# Torch's threads sleep while they wait (OpenMP's passive policy), in the tests and in every process they start (the
# variable is inherited): several torch processes share the machine's cores (a search's trials, pytest-xdist's two
# workers, a busy CI machine), where threads that spin waiting on a thread that is not running starve the rest.
# Measured on 2 cores, tests/test_engine.py: quiet 14.3 s spinning, 17.5 s sleeping; beside two CPU-bound processes
# 52.8 s spinning, 31.1 s sleeping (one thread: 19.7 s and 34.3 s).
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
# Real datasets (Fashion-MNIST, the AG News test split) reach the tests the way they reach users: through
# $ITRA_TUNE_DATA. CI sets it; a checkout with the project's shared data beside it finds it there.
_BESIDE = Path(__file__).resolve().parents[2] / "shared" / "data"
if "ITRA_TUNE_DATA" not in os.environ and _BESIDE.is_dir():
    os.environ["ITRA_TUNE_DATA"] = str(_BESIDE)


def pytest_collection_modifyitems(config, items):
    """Every test that reads the real data carries the ``real_data`` marker: CI runs those again where the data is
    (``make test-slow``), after the default suite ran in a fresh clone without it. Tests that start a Ray head run
    one after another under pytest-xdist."""
    for item in items:
        if "real_data" in getattr(item, "fixturenames", ()):
            item.add_marker("real_data")
        if "cluster_env" in getattr(item, "fixturenames", ()):
            # a `ray start --head` takes ports of fixed defaults (its client server's): one such test at a time,
            # whatever else runs beside it (pytest -n 2 --dist loadgroup)
            item.add_marker(pytest.mark.xdist_group("ray_head"))


@pytest.fixture
def real_data():
    """The folder of real datasets (``$ITRA_TUNE_DATA``); ``real_data("fashion_mnist")`` skips when absent."""

    def need(folder: str) -> Path:
        root = Path(os.environ.get("ITRA_TUNE_DATA", "/nonexistent"))
        if not (root / folder).is_dir():
            pytest.skip(f"{folder} is not in $ITRA_TUNE_DATA ({root})")
        return root

    return need


@pytest.fixture
def tiny_config():
    """A configuration that trains in about a second on the synthetic mixture."""
    from itra_tune import config

    def make(**overrides):
        raw = {
            "data": {"name": "synthetic", "batch_size": 32, "subset": 640},
            "model": {"name": "mlp"},
            "loss": {"name": "itra_c", "lam": 0.5},
            "optim": {"lr": 0.05},
            "train": {"epochs": 2, "compactness_samples": 64},
        }
        return config.override(config.from_dict(raw), overrides)

    return make


@pytest.fixture(scope="session")
def ray_local(tmp_path_factory):
    """A real local Ray with two CPUs, shared by the search tests of one session."""
    import ray

    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False,
             _temp_dir=str(tmp_path_factory.mktemp("ray")))
    yield
    ray.shutdown()


@pytest.fixture
def cluster_env():
    """The environment of a head, its nodes and its clients started by a test: a cluster (not loopback-only, which
    a joining node refuses) that requires a token, as a real one should."""
    import secrets

    env = {k: v for k, v in os.environ.items() if k != "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"}
    return {**env, "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": secrets.token_hex(32)}


@pytest.fixture
def space_file(tmp_path):
    """Write a small search space over the synthetic data; keyword arguments replace top-level sections."""
    import yaml

    def make(name="tiny", **sections):
        raw = {
            "base": {"data": {"name": "synthetic", "batch_size": 32, "subset": 640},
                     "model": {"name": "mlp"}, "loss": {"name": "itra_c", "lam": 0.5},
                     "optim": {"lr": 0.05}, "train": {"epochs": 2, "compactness_samples": 64}},
            "search": {"loss.lam": {"type": "float", "low": 0.1, "high": 1.0},
                       "loss.bandwidth": {"type": "categorical", "choices": ["median", "multiscale"]}},
            # no confirmation stage unless a test asks for one: its trials are counted apart (test_confirming.py)
            "budget": {"num_samples": 4, "max_concurrent": 2, "confirm_share": 0},
            "scheduler": {"name": "none"},
        }
        if "budget" in sections:
            sections["budget"] = {"confirm_share": 0, **sections["budget"]}
        raw.update(sections)
        p = tmp_path / f"{name}.yaml"
        p.write_text(yaml.safe_dump(raw))
        return p

    return make


@pytest.fixture(scope="session", autouse=True)
def _isolated_tracking(tmp_path_factory):
    """Searches in tests track to a throw-away SQLite store, never to ./mlflow.db of the checkout."""
    uri = f"sqlite:///{tmp_path_factory.mktemp('mlflow') / 'mlflow.db'}"
    old = os.environ.get("MLFLOW_TRACKING_URI")
    os.environ["MLFLOW_TRACKING_URI"] = uri
    yield uri
    if old is None:
        os.environ.pop("MLFLOW_TRACKING_URI", None)
    else:
        os.environ["MLFLOW_TRACKING_URI"] = old


def start_mlflow_server(db: str, artifacts: str, port: int):
    """A real `mlflow server` on 127.0.0.1; returns the process once /health answers. ``db``: a SQLite file, or
    a database URL (``postgresql://...``) for its backend store."""
    import subprocess
    import sys
    import time
    import urllib.request
    from pathlib import Path

    env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
    env.pop("MLFLOW_TRACKING_URI", None)
    mlflow_bin = Path(sys.executable).parent / "mlflow"
    proc = subprocess.Popen([str(mlflow_bin), "server", "--backend-store-uri", db if "://" in db else f"sqlite:///{db}",
                             "--artifacts-destination", artifacts, "--host", "127.0.0.1", "--port", str(port),
                             "--workers", "1"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env,
                            start_new_session=True)
    deadline = time.time() + 90
    while time.time() < deadline:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2) as r:
                if r.status == 200:
                    return proc
        except OSError:
            time.sleep(0.5)
    proc.kill()
    raise RuntimeError("mlflow server did not answer /health within 90 s")


def stop_mlflow_server(proc) -> None:
    import signal

    os.killpg(proc.pid, signal.SIGTERM)
    proc.wait(timeout=60)


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def mlflow_server(tmp_path_factory):
    """A real MLflow tracking server on 127.0.0.1 for the session; yields its URI."""
    d = tmp_path_factory.mktemp("mlflow_server")
    port = free_port()
    proc = start_mlflow_server(str(d / "mlflow.db"), str(d / "artifacts"), port)
    yield f"http://127.0.0.1:{port}"
    stop_mlflow_server(proc)
