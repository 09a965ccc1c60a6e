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
SELECTION = "selection_score"  # reported with every epoch; Tune keeps the checkpoints it ranks highest


def selection_score(metrics: dict[str, Any], metric: str, mode: str) -> float:
    """How good an epoch is, larger better: the space's metric, ties broken by the lower validation CE.

    One number, so that the epoch a search selects and the checkpoint Tune keeps for it are the same.
    """
    sign = 1.0 if mode == "max" else -1.0
    return sign * float(metrics[metric]) - 1e-9 * float(metrics.get("val_ce", 0.0))


def trial_config(tune_config: dict[str, Any]) -> config_mod.Config:
    """The typed configuration of a trial: its base with the sampled dotted values applied."""
    params = {k: v for k, v in tune_config.items() if k != "base"}
    return config_mod.override(config_mod.from_dict(tune_config["base"], "trial"), params, "trial")


def trial_params(tune_config: dict[str, Any]) -> dict[str, Any]:
    """A trial's whole configuration as dotted keys, as MLflow records it."""
    return trial_config(tune_config).flat()


def train_trial(tune_config: dict[str, Any], metric: str = "val_acc", mode: str = "max") -> None:
    """Tune function trainable: ``engine.fit`` with a report and checkpoint after every epoch.

    Each report carries ``selection_score`` (the space's ``metric`` and ``mode``). A diverging trial raises
    ``engine.Diverged``: Tune records it as an errored trial with that reason, the searcher marks the sample
    as failed, and the other trials go on.
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
            tune.report({**metrics, SELECTION: selection_score(metrics, metric, mode)},
                        checkpoint=tune.Checkpoint.from_directory(d))

    engine.fit(cfg, report=report, resume=resume)
