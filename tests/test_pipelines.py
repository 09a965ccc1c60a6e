"""pipelines/: search then retrain the winner on the whole training set."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import yaml

from itra_tune import checkpoint

ROOT = Path(__file__).resolve().parents[1]


def _load(name: str):
    spec = importlib.util.spec_from_file_location(name, ROOT / "pipelines" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_search_then_retrain_with_smoke_settings(ray_local, space_file, tmp_path, capsys):
    space = space_file(smoke={"num_samples": 2, "train.epochs": 1})
    out = tmp_path / "prod"
    code = _load("search_then_retrain").main(["--space", str(space), "--smoke", "--storage-path",
                                              str(tmp_path / "st"), "--out", str(out)])
    assert code == 0
    (exp,) = (tmp_path / "st").iterdir()
    summary = json.loads((exp / "summary.json").read_text())
    assert summary["trials"] == 2  # --smoke: the space's smoke budget
    assert summary["best_config"]["train"]["epochs"] == 1
    retrained = yaml.safe_load((out / "config.yaml").read_text())
    assert retrained["data"]["val_fraction"] == 0.0  # the validation split folded back into training
    assert retrained["loss"]["lam"] == summary["best"]["loss.lam"]
    assert checkpoint.load(out / "best.pt")["config"]["loss"]["lam"] == summary["best"]["loss.lam"]
    assert "retrained on the full training set: test_acc" in capsys.readouterr().out
