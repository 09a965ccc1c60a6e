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
