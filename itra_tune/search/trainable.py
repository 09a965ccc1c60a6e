"""The Ray adapter: the only caller of Tune's report and checkpoint API.

A trial's Tune config is ``{"base": <plain configuration>, "<dotted.key>": value, ...}``: the space's base
configuration and the values the searcher sampled. The trial reports every epoch with a checkpoint and,
on retry or resume, continues from its latest checkpoint rather than from scratch.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

from ray import tune

from itra_tune import checkpoint, engine
from itra_tune import config as config_mod

STATE_FILE = "state.pt"


def trial_config(tune_config: dict[str, Any]) -> config_mod.Config:
    """The typed configuration of a trial: its base with the sampled dotted values applied."""
    params = {k: v for k, v in tune_config.items() if k != "base"}
    return config_mod.override(config_mod.from_dict(tune_config["base"], "trial"), params, "trial")


def trial_params(tune_config: dict[str, Any]) -> dict[str, Any]:
    """A trial's whole configuration as dotted keys, as MLflow records it."""
    return trial_config(tune_config).flat()


def train_trial(tune_config: dict[str, Any]) -> None:
    """Tune function trainable: ``engine.fit`` with a report and checkpoint after every epoch.

    A diverging trial raises ``engine.Diverged``: Tune records it as an errored trial with that reason,
    the searcher marks the sample as failed, and the other trials go on.
    """
    cfg = trial_config(tune_config)
    resume = None
    ckpt = tune.get_checkpoint()
    if ckpt is not None:
        with ckpt.as_directory() as d:
            resume = checkpoint.load(Path(d) / STATE_FILE)

    def report(metrics: dict[str, float], state: dict[str, Any]) -> None:
        with tempfile.TemporaryDirectory() as d:
            checkpoint.save(state, Path(d) / STATE_FILE)
            tune.report(metrics, checkpoint=tune.Checkpoint.from_directory(d))

    engine.fit(cfg, report=report, resume=resume)
