"""The hand-off from a search to production: one notion of best (``itra_tune.selection``) from the trial's kept
checkpoint to ``best_config``, ``itra_tune.train``, ``--full-train`` and ``load_best_model``, on a real local Ray and
a real MLflow store."""

from __future__ import annotations

import pytest
import torch

import itra_tune
from itra_tune import checkpoint, models, search
from itra_tune import data as data_mod


@pytest.mark.slow
def test_production_gets_what_the_search_selected(ray_local, tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    common = {"storage_path": str(tmp_path / "st"), "tracking_uri": uri, "scheduler": "none"}
    (full,) = search.run("demo", name="demo-full", num_samples=2, overrides=("train.epochs=4",), **common)
    best = full["best"]
    cfg = itra_tune.best_config("demo", tracking_uri=uri)
    assert cfg.select.metric == "val_ce" and cfg.select.epoch == best["best_epoch"]

    # retrained as it is, it selects the search's epoch and reproduces the search's figures to the bit
    again = itra_tune.train(cfg, out_dir=tmp_path / "again")
    assert again.best["epoch"] == best["best_epoch"]
    for key in ("val_acc", "val_ce", "test_acc", "test_ce"):
        assert again.best[key] == best[key], key
    kept = checkpoint.load(tmp_path / "again" / "best.pt")
    assert kept["metrics"]["epoch"] == best["best_epoch"]

    # the search's logged model is that epoch's checkpoint: the same weights the retraining kept
    model = itra_tune.load_best_model("demo", tracking_uri=uri)
    data = data_mod.build(cfg.data, torch.device("cpu"), cfg.seed, paired=False, model_name=cfg.model.name)
    retrained = models.build(cfg.model.name, data.num_classes, data.input_shape, normalization=data.normalization)
    retrained.load_state_dict(kept["model"])
    x = data.sample("test", 16)[0]
    with torch.no_grad():
        torch.testing.assert_close(model(x), retrained.eval()(x))

    # with the validation split folded in, it trains to the selected epoch of the same schedule and hands it over
    folded = itra_tune.train(cfg, full_train=True)
    assert len(folded.history) == best["best_epoch"] == folded.best["epoch"]

    # a later --smoke search does not replace the full search's winner; it is there when asked for
    (smoke,) = search.run("demo", name="demo-smoke", smoke=True, **common)
    assert itra_tune.best_config("demo", tracking_uri=uri) == cfg
    assert itra_tune.best_config("demo", tracking_uri=uri, smoke=True).train.epochs == 2
    assert itra_tune.best_config("demo", tracking_uri=uri, search="demo-smoke").train.epochs == 2
    assert itra_tune.best_config("demo", tracking_uri=uri, search="demo-full") == cfg
    with pytest.raises(itra_tune.ConfigError, match=r"no finished search 'demo-nope'.*demo-smoke \(smoke\), "
                                                    r"demo-full"):
        itra_tune.best_config("demo", tracking_uri=uri, search="demo-nope")
