"""The best configuration and model of a search, for production code. Never imports Ray.

    cfg = itra_tune.best_config("cifar100")       # the winner of the newest search of that space
    model = itra_tune.load_best_model("cifar100")   # its best checkpoint, as the trained module
"""

from __future__ import annotations

from typing import Any

from itra_tune import config as config_mod
from itra_tune import extras, tracking


def best_config(space: str, tracking_uri: str | None = None) -> Any:
    """The best trial's configuration from the newest finished search of ``space`` in MLflow.

    Args:
        space: the space's name (its MLflow experiment).
        tracking_uri: where the search tracked; default ``$MLFLOW_TRACKING_URI`` or ./mlflow.db.

    Returns:
        The engine's ``Config``; for a search of a user's own trainable, the plain configuration (a dict) it
        was called with.
    """
    extras.check("mlflow", what="itra_tune.best_config")
    c, run = tracking.latest_search(space, tracking_uri)
    path = tracking.download(c, run.info.run_id, "best_config.yaml")
    if run.data.params.get("trainable", config_mod.ENGINE) != config_mod.ENGINE:
        return config_mod.read_yaml(path)
    return config_mod.load(path)


def load_best_model(space: str, tracking_uri: str | None = None) -> Any:
    """The best trial's best checkpoint as a torch module with ``features`` and ``head``, in eval mode.

    Image models take float32 pixels in [0, 1], (B, C, H, W), and normalize them themselves; text models take
    int64 token ids padded with -1. ``model(x)`` returns logits.
    """
    extras.check("mlflow", what="itra_tune.load_best_model")
    c, run = tracking.latest_search(space, tracking_uri)
    return tracking.load_model(tracking.resolve_uri(tracking_uri), tracking.best_model_id(c, run))
