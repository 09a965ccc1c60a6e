"""The best configuration and model of a space, read back from MLflow without Ray."""

from __future__ import annotations

import pytest
import torch
import yaml

import itra_tune
from itra_tune import config, models, tracking


def test_best_config_and_model_of_the_newest_search(tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    torch.manual_seed(0)
    model = models.build("mlp", 10, (1, 8, 8)).eval()
    x = torch.randn(3, 1, 8, 8)
    for lam in (0.2, 0.7):  # two searches of the space: the newer one wins
        cfg = config.override(config.Config(), {"model.name": "mlp", "loss.lam": lam})
        tracker = tracking.Tracker(uri, "space-a", run_name=f"search-{lam}")
        tracker.trial_started("t1", "trial_t1", cfg.flat())
        (tmp_path / "best_config.yaml").write_text(yaml.safe_dump(cfg.to_dict()))
        model_dir = tracking.save_model(model, x, tmp_path / f"model-{lam}")
        run = tracker.finish_trial("t1", "trial_t1", cfg.flat(), [], "completed", model_dir)
        tracker.finish(run, [tmp_path / "best_config.yaml"], {})
    assert itra_tune.best_config("space-a", tracking_uri=uri).loss.lam == 0.7
    assert torch.equal(itra_tune.load_best_model("space-a", tracking_uri=uri)(x), model(x))


def test_best_config_of_an_unknown_space(tmp_path):
    with pytest.raises(itra_tune.ConfigError, match="no MLflow experiment 'nothing-here'"):
        itra_tune.best_config("nothing-here", tracking_uri=f"sqlite:///{tmp_path / 'empty.db'}")
