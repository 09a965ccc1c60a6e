"""A trial's configuration: the space's base with the sampled dotted values applied."""

from __future__ import annotations

import pytest

from itra_tune import config
from itra_tune.config import ConfigError
from itra_tune.search.trainable import trial_config, trial_params


def test_sampled_values_override_the_base():
    base = config.Config().to_dict()
    cfg = trial_config({"base": base, "loss.lam": 0.9, "data.batch_size": 64, "loss.bandwidth": "mean"})
    assert (cfg.loss.lam, cfg.data.batch_size, cfg.loss.bandwidth) == (0.9, 64, "mean")
    flat = trial_params({"base": base, "loss.lam": 0.9})
    assert flat["loss.lam"] == 0.9 and flat["model.name"] == config.Config().model.name


def test_an_invalid_sample_is_a_config_error():
    with pytest.raises(ConfigError, match="loss.lam cannot be negative"):
        trial_config({"base": config.Config().to_dict(), "loss.lam": -0.5})


def test_a_trial_handed_a_finished_checkpoint_reports_its_last_epoch_and_trains_nothing(tiny_config, tmp_path,
                                                                                       monkeypatch):
    # population based training can hand a lagging trial a finished trial's last checkpoint; Tune's session is
    # replaced by its two calls here, which cannot be driven into that race on purpose
    import torch
    from ray import tune

    from itra_tune import checkpoint, engine
    from itra_tune.search import trainable

    cfg = tiny_config()
    saved = {}
    engine.fit(cfg, report=lambda m, state: saved.update(
        torch.utils._pytree.tree_map(lambda t: t.clone() if torch.is_tensor(t) else t, state)))
    checkpoint.save(saved, tmp_path / trainable.STATE_FILE)
    reports = []
    monkeypatch.setattr(tune, "get_checkpoint", lambda: tune.Checkpoint.from_directory(str(tmp_path)))
    monkeypatch.setattr(trainable.tune, "report", lambda metrics, checkpoint=None: reports.append(metrics))
    monkeypatch.setattr(engine, "fit", lambda *a, **k: pytest.fail("a finished checkpoint has nothing to train"))
    trainable.train_trial({"base": cfg.to_dict()}, metric="val_ce", mode="min")
    assert [r["epoch"] for r in reports] == [cfg.train.epochs]
    assert reports[0]["val_ce"] == saved["history"][-1]["val_ce"]
