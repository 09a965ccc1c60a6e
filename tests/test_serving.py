"""The model handed to production, tried as a user would: raw [0, 1] pixels into MLflow's own loader, the
export, the standalone program, and `mlflow models serve`, each classifying the digits' test split with the
accuracy the search or the retrain reported."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import mlflow
import numpy as np
import pytest
import torch
from conftest import free_port

import itra_tune
from itra_tune import export, search, tracking
from itra_tune.config import DataConfig
from itra_tune.data import build

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def digits_test():
    """The digits' test split as a user holds it: pixels in [0, 1] (raw value / 16), (N, 1, 8, 8), and labels."""
    data = build(DataConfig(name="digits"), torch.device("cpu"), seed=0, paired=False)
    xs, ys = zip(*data.test)
    return torch.cat(xs).numpy(), torch.cat(ys).numpy()


def _accuracy(predicted, labels) -> float:
    return float((np.asarray(predicted) == labels).mean())


def test_the_best_logged_model_classifies_raw_pixels_as_the_search_reported(ray_local, tmp_path, digits_test):
    x, y = digits_test
    assert 0.0 <= x.min() and x.max() <= 1.0
    (summary,) = search.run("demo", smoke=True, storage_path=str(tmp_path / "st"), name="served")
    uri = summary["tracking"]["uri"]
    mlflow.set_tracking_uri(uri)
    exp = mlflow.get_experiment_by_name("demo")
    (logged,) = mlflow.search_logged_models(
        experiment_ids=[exp.experiment_id], output_format="list",
        filter_string=f"source_run_id = '{summary['tracking']['best_run_id']}'")
    pyfunc = mlflow.pyfunc.load_model(f"models:/{logged.model_id}")
    out = pyfunc.predict(x)
    assert set(out) == {"logits", "probabilities", "class", "label"}
    assert list(out["label"]) == [str(c) for c in out["class"]]  # the digits' classes are named "0" to "9"
    np.testing.assert_allclose(out["probabilities"].sum(1), 1.0, rtol=1e-5)
    assert abs(_accuracy(out["class"], y) - summary["best"]["test_acc"]) <= 0.005
    assert abs(_accuracy(out["logits"].argmax(1), y) - summary["best"]["test_acc"]) <= 0.005
    model = itra_tune.load_best_model("demo", smoke=True)  # a --smoke search is taken only when asked
    assert abs(_accuracy(model(torch.from_numpy(x)).argmax(1), y) - summary["best"]["test_acc"]) <= 0.005


def _load_pipeline():
    spec = importlib.util.spec_from_file_location("search_then_retrain", ROOT / "pipelines" / "search_then_retrain.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def production(ray_local, tmp_path_factory):
    """The production pipeline on the demo space: search (smoke), retrain over 2 seeds, register, export."""
    out = tmp_path_factory.mktemp("prod")
    code = _load_pipeline().main(["--space", "demo", "--smoke", "--seeds", "2", "--storage-path",
                                  str(out / "st"), "--out", str(out / "run")])
    assert code == 0
    return out / "run"


def test_export_and_program_classify_raw_pixels_as_the_retrain_reported(production, digits_test):
    x, y = digits_test
    meta = export.json_meta(production / "export")
    reported = meta["metrics"]["test_acc"]
    model = itra_tune.load_exported(production / "export")
    with torch.no_grad():
        assert abs(_accuracy(model(torch.from_numpy(x)).argmax(1), y) - reported) <= 0.005
        program = torch.export.load(str(production / "export" / meta["standalone"])).module()
        assert abs(_accuracy(program(torch.from_numpy(x)).argmax(1), y) - reported) <= 0.005


def test_the_registered_model_loads_in_a_fresh_process_with_the_export_s_predictions(production, digits_test):
    x, _ = digits_test
    script = ("import sys, numpy, mlflow\n"
              "out = mlflow.pyfunc.load_model('models:/itra-demo/1').predict(numpy.load(sys.argv[1]))\n"
              "numpy.save(sys.argv[2], out['logits'])\n")
    np.save(production / "x.npy", x)
    subprocess.run([sys.executable, "-c", script, str(production / "x.npy"), str(production / "y.npy")],
                   check=True, env={**os.environ, "MLFLOW_TRACKING_URI": tracking.resolve_uri()})
    with torch.no_grad():
        expected = itra_tune.load_exported(production / "export")(torch.from_numpy(x)).numpy()
    np.testing.assert_array_equal(np.load(production / "y.npy"), expected)


@pytest.mark.slow
def test_mlflow_models_serve_answers_raw_pixels_with_the_right_classes(production, digits_test, tmp_path):
    x, y = digits_test
    port = free_port()
    env = {**os.environ, "MLFLOW_TRACKING_URI": tracking.resolve_uri(),
           "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}  # as the README says
    server = subprocess.Popen([str(Path(sys.executable).parent / "mlflow"), "models", "serve", "-m",
                               "models:/itra-demo/1", "--env-manager", "local", "--host", "127.0.0.1", "--port",
                               str(port)], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                              start_new_session=True)
    try:
        deadline = time.time() + 120
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/ping", timeout=2):
                    break
            except OSError:
                assert server.poll() is None, server.stderr.read().decode()[-2000:]
                assert time.time() < deadline, "mlflow models serve did not answer /ping within 120 s"
                time.sleep(1)
        body = json.dumps({"inputs": x.tolist()}).encode()
        request = urllib.request.Request(f"http://127.0.0.1:{port}/invocations", data=body,
                                         headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=60) as r:
            predictions = json.loads(r.read())["predictions"]
        reported = export.json_meta(production / "export")["metrics"]["test_acc"]
        assert abs(_accuracy(predictions["class"], y) - reported) <= 0.005
        assert predictions["label"] == [str(c) for c in predictions["class"]]  # the classes' names, "0" to "9"
    finally:
        os.killpg(server.pid, 15)
        server.wait(timeout=60)
