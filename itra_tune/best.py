"""The best configuration and model of a search, for production code. Never imports Ray.

    cfg = itra_tune.best_config("cifar100")       # the winner of the newest full (not --smoke) search of that space
    cfg.select.epoch                               # the epoch the search selected (what --full-train hands over)
    model = itra_tune.load_best_model("cifar100")   # that epoch's checkpoint, as the trained module
    print(itra_tune.best_answer("cifar100"))        # its figures as mean ± std over its seeds, and the tied

``search="cifar100-20261201-120000"`` names a search instead (the experiment name its summary prints).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
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


@dataclass(frozen=True)
class Answer:
    """A search's answer with its certainty (``itra_tune.best_answer``).

    ``mean`` and ``std``: each figure of the chosen configuration (at each seed's selected epoch) over its
    ``seeds`` trainings (``std`` None on one seed); ``tied``: the candidates the search could not tell apart from
    it (their means within the combined standard error), each as ``{"trial", "params", "mean", "std", "n"}``,
    among which production may choose on cost; ``confirmed``: whether a confirmation stage re-trained it.
    """

    search: str
    config: Any  # best_config's
    metric: str
    mode: str
    trial: str
    seeds: int
    mean: dict[str, float]
    std: dict[str, float | None]
    tied: tuple[dict[str, Any], ...] = ()
    confirmed: bool = False

    def __str__(self) -> str:
        def figures(mean: dict[str, float], std: dict[str, float | None]) -> str:
            return ", ".join(f"{k} {v:.4g}" + (f" ± {std[k]:.2g}" if std.get(k) is not None else "")
                             for k, v in mean.items())
        lines = [f"{self.search}: {self.trial}, {figures(self.mean, self.std)} over {self.seeds} "
                 f"seed{'s' * (self.seeds != 1)}"]
        lines += [f"  tied: {t['trial']} {t['params']}, {figures(t['mean'], t['std'])} over {t['n']} seeds"
                  for t in self.tied]
        return "\n".join(lines)


def best_answer(space: str, tracking_uri: str | None = None, search: str | None = None,
                smoke: bool = False) -> Answer:
    """``best_config``'s configuration with its certainty: the chosen configuration's figures as mean and
    standard deviation over its seeds, and the candidates tied with it within the noise. The search as
    ``best_config`` finds it; one recorded before searches kept an answer gives its best trial on one seed."""
    extras.check("mlflow", what="itra_tune.best_answer")
    c, run = tracking.latest_search(space, tracking_uri, search, smoke)
    cfg = best_config(space, tracking_uri, run.info.run_name, smoke=True)
    try:
        raw = json.loads(tracking.download(c, run.info.run_id, tracking.ANSWER_ARTIFACT).read_text())
    except Exception:  # noqa: BLE001 - no answer kept: the parent's headline figures, one seed
        m = run.data.metrics
        figures = {k: m[f"best_{k}"] for k in tracking.HEADLINE_METRICS if f"best_{k}" in m}
        best_run = run.data.tags.get(tracking.BEST_TAG)
        trial = c.get_run(best_run).info.run_name if best_run else ""
        return Answer(run.info.run_name, cfg, run.data.params.get("metric", ""), run.data.params.get("mode", ""),
                      trial, 1, figures, dict.fromkeys(figures))
    by_name = {cand["trial"]: cand for cand in raw["candidates"]}
    best = by_name[raw["chosen"]]
    tied = tuple({k: by_name[t][k] for k in ("trial", "params", "mean", "std", "n")} for t in raw["tied"])
    return Answer(run.info.run_name, cfg, raw["metric"], raw["mode"], raw["chosen"], best["n"], best["mean"],
                  best["std"], tied, raw["confirmed"])


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
