"""The best configuration and model of a search, for production code. Never imports Ray.

    cfg = itra_tune.best_config("cifar100")       # the winner of the newest full (not --smoke) search of that space
    cfg.select.epoch                               # the epoch the search selected (what --full-train hands over)
    model = itra_tune.load_best_model("cifar100")   # that epoch's checkpoint, as the trained module

``search="cifar100-20261201-120000"`` names a search instead (the experiment name its summary prints).
"""

from __future__ import annotations

from typing import Any

from itra_tune import config as config_mod
from itra_tune import extras, tracking


def best_config(space: str, tracking_uri: str | None = None, search: str | None = None,
                smoke: bool = False) -> Any:
    """The best trial's configuration from a finished search of ``space`` in MLflow.

    Args:
        space: the space's name (its MLflow experiment).
        tracking_uri: where the search tracked; default ``$MLFLOW_TRACKING_URI`` or ./mlflow.db.
        search: the search's name (``--name``, or the ``<space>-<time>`` its summary prints); default the newest.
        smoke: let the newest search be a ``--smoke`` one (by default those are skipped).

    Returns:
        The engine's ``Config``, selecting by the search's rule (``select.metric``, ``select.mode``) and carrying
        the epoch the search selected (``select.epoch``): ``itra_tune.train`` of it selects the same epoch, and
        with ``full_train=True`` trains to that epoch and hands it over. For a search of a user's own trainable,
        the plain configuration (a dict) it was called with.

    Raises:
        ConfigError: no such experiment or search (the message names the searches there are), or no server.
    """
    extras.check("mlflow", what="itra_tune.best_config")
    c, run = tracking.latest_search(space, tracking_uri, search, smoke)
    path = tracking.download(c, run.info.run_id, "best_config.yaml")
    if run.data.params.get("trainable", config_mod.ENGINE) != config_mod.ENGINE:
        return config_mod.read_yaml(path)
    return config_mod.load(path)


def chosen_search(space: str, tracking_uri: str | None = None, search: str | None = None,
                  smoke: bool = False) -> tuple[str, bool]:
    """The name of the search ``best_config`` takes the winner of, and whether it was a ``--smoke`` one."""
    extras.check("mlflow", what="itra_tune.best_config")
    _, run = tracking.latest_search(space, tracking_uri, search, smoke)
    return run.info.run_name, tracking.is_smoke(run)


def load_best_model(space: str, tracking_uri: str | None = None, search: str | None = None,
                    smoke: bool = False) -> Any:
    """The best trial's checkpoint of its selected epoch as a torch module with ``features`` and ``head``, in eval
    mode; the search as ``best_config`` finds it.

    Image models take float32 pixels in [0, 1], (B, C, H, W), and normalize them themselves; text models take
    int64 token ids padded with -1. ``model(x)`` returns logits.
    """
    extras.check("mlflow", what="itra_tune.load_best_model")
    c, run = tracking.latest_search(space, tracking_uri, search, smoke)
    return tracking.load_model(tracking.resolve_uri(tracking_uri), tracking.best_model_id(c, run))
