"""The Optuna study behind a search, stored where ``optuna-dashboard`` and ``optuna.load_study`` read it: by default
a SQLite file in the experiment's folder, or any database URL that every node of a cluster reaches. A new search
can start from a previous one (``warm_start``): the previous study's finished trials seed the sampler, and its best
configuration is the first one evaluated."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import optuna

from itra_tune import spaces
from itra_tune.config import ConfigError

DB_FILE = "optuna.db"
OBJECTIVE_ATTR = "itra_tune.objective"  # the metric(s) and mode(s) a stored study ranks by


def storage_url(url: str | None, experiment: Path) -> str:
    """The database of an experiment's study: ``url``, or a SQLite file in the experiment's folder."""
    return url or f"sqlite:///{experiment.resolve() / DB_FILE}"


def dashboard_command(url: str) -> str:
    return f"optuna-dashboard {url}"


def storage(url: str) -> optuna.storages.RDBStorage:
    """An RDB storage (SQLite, PostgreSQL, MySQL: whatever SQLAlchemy reaches); ConfigError when it cannot open."""
    try:
        return optuna.storages.RDBStorage(url)
    except Exception as e:  # a malformed URL, a missing driver, an unreachable server
        raise ConfigError(f"--optuna-storage {url!r} cannot be opened ({type(e).__name__}: "
                          f"{str(e).splitlines()[0]}); give a database URL like sqlite:///search.db") from None


def objective_of(metric: str | Sequence[str], mode: str | Sequence[str]) -> str:
    return json.dumps({"metric": metric, "mode": mode})


def create(url: str, name: str, metric: str | Sequence[str], mode: str | Sequence[str],
           previous: optuna.Study | None = None, params: Sequence[spaces.Param] = ()) -> int:
    """Create the study of a new search (or find the existing one, resumed), seeded from ``previous`` when given.

    Returns:
        How many of ``previous``'s trials it was seeded with.
    """
    directions = [("minimize" if m == "min" else "maximize") for m in ([mode] if isinstance(mode, str) else mode)]
    study = optuna.create_study(storage=storage(url), study_name=name, directions=directions, load_if_exists=True)
    study.set_user_attr(OBJECTIVE_ATTR, objective_of(metric, mode))
    return seed(study, previous, params) if previous is not None and not study.trials else 0


def load_previous(url: str, name: str, metric: str | Sequence[str], mode: str | Sequence[str]) -> optuna.Study:
    """A finished search's study for ``warm_start``; ConfigError unless it exists and ranks by the same objective."""
    try:
        study = optuna.load_study(study_name=name, storage=storage(url))
    except KeyError:
        raise ConfigError(f"--warm-start: no Optuna study {name!r} in {url}; name an earlier search of this space "
                          f"(its --name), stored there") from None
    stored = study.user_attrs.get(OBJECTIVE_ATTR)
    if stored is not None and json.loads(stored) != json.loads(objective_of(metric, mode)):
        raise ConfigError(f"--warm-start: study {name!r} ranked by {stored}, this search by "
                          f"{objective_of(metric, mode)}; warm-start from a search with the same metric")
    return study


def seed(study: optuna.Study, previous: optuna.Study, params: Sequence[spaces.Param]) -> int:
    """Copy ``previous``'s finished trials whose values lie in this search's space, and queue its best one first.

    Returns:
        How many trials were copied.
    """
    dists = {p.key: p.distribution() for p in params}
    done = [t for t in previous.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
            if set(t.params) == set(dists) and all(_representable(dists[k], v) for k, v in t.params.items())]
    study.add_trials([optuna.trial.create_trial(params=t.params, distributions=dists, values=t.values,
                                                user_attrs={"warm_start_from": previous.study_name})
                      for t in done])
    if done and len(study.directions) == 1:
        best = max(done, key=lambda t: t.values[0] * (1 if study.direction.name == "MAXIMIZE" else -1))
        study.enqueue_trial(best.params, user_attrs={"warm_start_best_of": previous.study_name})
    return len(done)


def _representable(dist: Any, value: Any) -> bool:
    """Whether ``value`` is a point of ``dist`` (a categorical value among its choices, a number in range)."""
    try:
        return bool(dist._contains(dist.to_internal_repr(value)))
    except (ValueError, TypeError):
        return False
