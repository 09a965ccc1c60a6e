"""The Optuna study behind a search, stored where ``optuna-dashboard`` and ``optuna.load_study`` read it: by default
a SQLite file in the experiment's folder, or any database URL that every node of a cluster reaches. A new search
can start from a previous one (``warm_start``): the previous study's finished trials seed the sampler, and its best
configuration is the first one evaluated.

The sampler itself works on an in-memory study that Tune saves with its experiment state, so that a resumed search
(after Ctrl-C or a killed driver) continues from one consistent snapshot; every finished trial is copied into the
stored study as it ends (``record``), once, whatever restarts in between. Drivers that name one stored study share
it (distributed Optuna): before each suggestion a driver's sampler learns the trials the others finished
(``learn``)."""

from __future__ import annotations

import functools
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import optuna

from itra_tune import cli, spaces
from itra_tune.config import ConfigError

DB_FILE = "optuna.db"
OBJECTIVE_ATTR = "itra_tune.objective"  # the metric(s) and mode(s) a stored study ranks by
TRIAL_ATTR = "itra_tune.trial_id"  # on a stored trial: Tune's id of the trial it records
LEARNED_ATTR = "itra_tune.learned_from"  # on a sampler's trial: the stored trial (another driver's) it copies


def storage_url(url: str | None, experiment: Path) -> str:
    """The database of an experiment's study: ``url``, or a SQLite file in the experiment's folder."""
    return url or f"sqlite:///{experiment.resolve() / DB_FILE}"


def dashboard_command(url: str) -> str:
    """The command that browses the study: optuna-dashboard, installed first (it is not a dependency)."""
    return f"{cli.command('pip')} install optuna-dashboard && {cli.command('optuna-dashboard')} {url}"


def storage(url: str) -> optuna.storages.RDBStorage:
    """An RDB storage (SQLite, PostgreSQL, MySQL: whatever SQLAlchemy reaches); ConfigError when it cannot open.
    A server's pooled connections are checked before use, so a database restarted mid-search is simply reconnected
    to."""
    try:
        return optuna.storages.RDBStorage(url, engine_kwargs=None if url.startswith("sqlite") else
                                          {"pool_pre_ping": True})
    except Exception as e:  # a malformed URL, a missing driver, an unreachable server
        driver = isinstance(e, ModuleNotFoundError) or "No module named" in str(e)
        fix = "pip install 'itra_tune[postgres]' for PostgreSQL's drivers" if driver else \
            "check that its server answers, or give another database URL (postgresql://user@host:5432/db, " \
            "sqlite:///search.db)"
        raise ConfigError(f"--optuna-storage {url!r} cannot be opened ({type(e).__name__}: "
                          f"{str(e).splitlines()[0]}); {fix}") from None


def objective_of(metric: str | Sequence[str], mode: str | Sequence[str]) -> str:
    return json.dumps({"metric": metric, "mode": mode})


def create(url: str, name: str, metric: str | Sequence[str], mode: str | Sequence[str],
           previous: optuna.Study | None = None, params: Sequence[spaces.Param] = ()) -> optuna.Study:
    """The stored study of a search (created, or found when the search resumes); a new one warm-started from
    ``previous`` holds the trials it started from too, marked ``warm_start_from``."""
    directions = [("minimize" if m == "min" else "maximize") for m in ([mode] if isinstance(mode, str) else mode)]
    check_objective(url, name, metric, mode)
    study = optuna.create_study(storage=storage(url), study_name=name, directions=directions, load_if_exists=True)
    study.set_user_attr(OBJECTIVE_ATTR, objective_of(metric, mode))
    if previous is not None and not study.trials:
        dists = {p.key: p.distribution() for p in params}
        study.add_trials([_copy(t, dists, previous.study_name) for t in compatible(previous, params)])
    return study


def check_objective(url: str, name: str, metric: str | Sequence[str], mode: str | Sequence[str]) -> None:
    """ConfigError when the stored study ``name`` exists and ranks by another objective than this search's."""
    try:
        ranked = optuna.load_study(study_name=name, storage=storage(url)).user_attrs.get(OBJECTIVE_ATTR)
    except KeyError:  # no such study yet
        return
    if ranked is not None and json.loads(ranked) != json.loads(objective_of(metric, mode)):
        raise ConfigError(f"the Optuna study {name!r} in {url} ranks by {ranked}, this search by "
                          f"{objective_of(metric, mode)}: name another study (--optuna-study)")


def _copy(trial: Any, dists: dict[str, Any], source: str) -> Any:
    return optuna.trial.create_trial(params=trial.params, distributions=dists, values=trial.values,
                                     user_attrs={"warm_start_from": source})


def record(study: optuna.Study, key: str, params: dict[str, Any], dists: dict[str, Any],
           values: Sequence[float] | None) -> bool:
    """Copy a finished trial into the stored study, once per ``key`` (Tune's trial id); ``values`` None: it
    failed. Returns whether it was new."""
    if any(t.user_attrs.get(TRIAL_ATTR) == key for t in study.get_trials(deepcopy=False)):
        return False
    ok = values is not None and all(v == v for v in values)  # a NaN is a failure too
    study.add_trial(optuna.trial.create_trial(
        params=params, distributions=dists, values=list(values) if ok else None, user_attrs={TRIAL_ATTR: key},
        state=optuna.trial.TrialState.COMPLETE if ok else optuna.trial.TrialState.FAIL))
    return True


@functools.cache
def stored(url: str, name: str) -> optuna.Study:
    """The stored study ``name``, opened once per driver (its pooled connections reconnect after a restart)."""
    return optuna.load_study(study_name=name, storage=storage(url))


def learn(sampler: optuna.Study, shared: optuna.Study, own: set[str], params: Sequence[spaces.Param]) -> list[str]:
    """Copy into ``sampler`` (a driver's in-memory study) the trials of the stored study ``shared`` that other
    drivers finished: not among ``own`` (this driver's Tune trial ids), not learned before (the sampler's copies
    say so, and are restored with it), and points of this search's space. Returns their keys."""
    dists = {p.key: p.distribution() for p in params}
    known = own | {t.user_attrs.get(LEARNED_ATTR) for t in sampler.get_trials(deepcopy=False)} | {None}
    new = [(t.user_attrs[TRIAL_ATTR], t) for t in compatible(shared, params)
           if t.user_attrs.get(TRIAL_ATTR) not in known]
    sampler.add_trials([optuna.trial.create_trial(params=t.params, distributions=dists, values=t.values,
                                                  user_attrs={LEARNED_ATTR: key}) for key, t in new])
    return [key for key, _ in new]


def learned(sampler: optuna.Study) -> int:
    """How many trials of other drivers ``sampler`` has learned."""
    return sum(LEARNED_ATTR in t.user_attrs for t in sampler.get_trials(deepcopy=False))


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


def compatible(previous: optuna.Study, params: Sequence[spaces.Param]) -> list[Any]:
    """``previous``'s finished trials whose values are all points of this search's space."""
    dists = {p.key: p.distribution() for p in params}
    return [t for t in previous.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
            if set(t.params) == set(dists) and all(_representable(dists[k], v) for k, v in t.params.items())]


def seed(study: optuna.Study, previous: optuna.Study, params: Sequence[spaces.Param]) -> int:
    """Copy ``previous``'s finished trials that fit this search's space into ``study`` (the sampler's), and queue
    the best of them first.

    Returns:
        How many trials were copied.
    """
    dists = {p.key: p.distribution() for p in params}
    done = compatible(previous, params)
    study.add_trials([_copy(t, dists, previous.study_name) for t in done])
    if done and len(study.directions) == 1:
        sign = 1 if study.direction == optuna.study.StudyDirection.MAXIMIZE else -1
        best = max(done, key=lambda t: sign * t.values[0])
        study.enqueue_trial(best.params, user_attrs={"warm_start_best_of": previous.study_name})
    return len(done)


def _representable(dist: Any, value: Any) -> bool:
    """Whether ``value`` is a point of ``dist`` (a categorical value among its choices, a number in range)."""
    try:
        return bool(dist._contains(dist.to_internal_repr(value)))
    except (ValueError, TypeError):
        return False
