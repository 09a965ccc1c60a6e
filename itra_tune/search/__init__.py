"""Search a space with Ray Tune: ``itra_tune.search.run("cifar100", ...)``, or ``python -m itra_tune.search``.

Optuna (TPE, seeded) samples the space's parameters, a scheduler (ASHA by default) stops weak trials early,
and a concurrency limit bounds the trials in flight. Each trial is ``engine.fit`` behind
``trainable.train_trial``, or a user's own training function (``trainable=``) behind ``trainable.user_trial``.
Each search ends with a summary: the best configuration, its validation and test metrics, how many trials
completed, stopped early or failed, the wall time, and where the results are.

A search runs in phases, each in its own module: planning (``planning``: the options applied to the space,
every check before Ray starts), exploring (one Tune experiment, here), confirming (``confirming``: the best
candidates re-trained on fresh seeds, the answer with its certainty), recording (``record``: MLflow) and the
summary (``results``).

This package is the only part of itra_tune that imports Ray.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import json
import os
import sys
import time
from collections.abc import Callable
from dataclasses import fields
from pathlib import Path
from typing import Any

from itra_tune import checkpoint, extras, spaces, tracking
from itra_tune import config as config_mod
from itra_tune.config import ConfigError
from itra_tune.search.planning import (
    METHOD_KNOBS,
    OBJECTIVES,
    Options,
    check_methods,
    check_warm_start,
    code_folders,
    equal_compute,
    method_slug,
    method_space,
    parse_method,
    prepare,
    record_threads,
    resume_command,
    search_params,
    study_name,
)

DEFAULT_STORAGE = Path("runs") / "search"
# Ray 2.60 binds a local cluster's servers to the loopback address only when this is set before ray is first
# imported (it is read once, at import); a node joining another cluster refuses it, so never with an address.
LOOPBACK_ONLY = {"RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0"}
# MLflow configures its loggers when first imported: a search shows its warnings only, unless --verbose
QUIET_MLFLOW = {"MLFLOW_LOGGING_LEVEL": "WARNING"}


def run(space: str | Path = "demo", **options: Any) -> list[dict[str, Any]]:
    """Search ``space`` (a name from ``search_spaces/`` or a YAML path); one summary per searched method.

    Args:
        space: the space to search.
        options: the fields of ``Options``.

    Returns:
        A summary per experiment: ``best`` (the best trial's row: parameters, status, metrics of its selected
        epoch), ``best_config`` (as plain data), counts of trials by status, ``experiment_path``, ``tracking``
        (the MLflow record) and ``interrupted`` (Ctrl-C: the rest is not run; resume with ``resume_command``).

    Raises:
        ConfigError: bad input, before Ray starts or anything is written (MissingExtra, a ConfigError, without
            ``itra_tune[search]``).
    """
    return _run(space, options)


def _run(space: str | Path, options: dict[str, Any], ending: bool = False) -> list[dict[str, Any]]:
    """``run``; ``ending``: the process ends with the search (the command line), so a local Ray is shut down
    while the record is written rather than at exit."""
    unknown = sorted(set(options) - {f.name for f in fields(Options)})
    if unknown:
        raise TypeError(f"search.run() got an unexpected option {unknown[0]!r}")
    extras.check(*extras.SEARCH, what="the search")  # without importing Ray: LOOPBACK_ONLY comes first
    opts = Options(**options)
    if not opts.address:
        for key, value in LOOPBACK_ONLY.items():
            os.environ.setdefault(key, value)
    if opts.log_models is not None and opts.log_models < 1:
        raise ConfigError(f"--log-models must be at least 1 (or all) but got {opts.log_models}")
    if opts.objective not in OBJECTIVES:
        raise ConfigError(f"objective must be one of {', '.join(OBJECTIVES)} but got {opts.objective!r}")
    if not opts.verbose:
        for key, value in QUIET_MLFLOW.items():
            os.environ.setdefault(key, value)
    prepared, cfg = prepare(space, opts)
    if opts.objective == "acc_ce" and prepared.scheduler["name"] == "pbt":
        raise ConfigError("--objective acc_ce ranks on two metrics; population based training (pbt) needs one")
    storage = Path(opts.storage_path or DEFAULT_STORAGE).expanduser().resolve()
    uri = tracking.resolve_uri(opts.tracking_uri)
    tracking.check_reachable(uri)
    _warn_if_ephemeral(storage, uri)
    plan = [(method_space(prepared, m), m) for m in opts.methods] or [(prepared, None)]
    code_folders(plan)  # every factory a trial may draw imports, before anything is written
    if opts.equal_compute and not opts.resume:
        plan = equal_compute(plan)
    for sp, _ in plan:
        if sp.scheduler["name"] == "pbt" and not any(p.key.startswith(spaces.MUTABLE) for p in sp.params):
            raise ConfigError(f"{sp.name}: scheduler pbt mutates searched keys of loss or optim, and the space "
                              f"searches none; search loss.lam or optim.lr, or choose another scheduler")
    if opts.resume and not opts.name:
        raise ConfigError("--resume needs --name, the experiment to continue (see the last search's summary)")
    stem = opts.name or f"{prepared.name}-{time.strftime('%Y%m%d-%H%M%S')}"
    names = [f"{stem}-{method_slug(m)}" if m else stem for _, m in plan]
    saved: dict[str, tuple[str, str]] = {}  # name -> (objective, parent run id), for a resumed search
    if opts.optuna_storage is not None:
        from itra_tune.search import study

        study.storage(opts.optuna_storage)  # answers, or one line before Ray starts
        if opts.optuna_study is not None and not opts.resume:  # a shared study ranks as this search does
            for (sp, method), n in zip(plan, names):
                metric, mode = (["val_acc", "val_ce"], ["max", "min"]) if opts.objective == "acc_ce" else \
                    (sp.metric, sp.mode)
                study.check_objective(opts.optuna_storage, study_name(opts, n, method), metric, mode)
    warm = check_warm_start(plan, storage, opts)
    for i, n in enumerate(names):
        exists = (storage / n).is_dir()
        if opts.resume and not exists:
            raise ConfigError(f"--resume: no experiment {n!r} in {storage}; check --name and --storage-path")
        if not opts.resume and exists:
            raise ConfigError(f"experiment {n!r} already exists in {storage}; add --resume or choose another --name")
        if opts.resume:  # the search as started, whatever the options say now
            from itra_tune.search.tuner import load_settings

            sp, objective, parent = load_settings(storage / n)
            plan[i], saved[n] = (sp, plan[i][1]), (objective, parent)
    return _run_plan(plan, names, saved, storage, uri, opts, resume_command(space, stem, opts), warm, ending)


def _run_plan(plan: list[tuple[spaces.Space, str | None]], names: list[str], saved: dict[str, tuple[str, str]],
              storage: Path, uri: str, opts: Options, resume_cmd: str, warm: list[Any],
              ending: bool = False) -> list[dict[str, Any]]:
    # MLflow's import, a new store's creation and what the record imports (seconds) overlap Ray's import and
    # start; whatever needs one of them waits for it
    with concurrent.futures.ThreadPoolExecutor(1) as background:
        background.submit(_warm, uri)
        import ray

        from itra_tune.search import progress, tuner

        with contextlib.nullcontext() if opts.verbose else progress.quiet_libraries():
            started = tuner.init_ray(opts.address, code_folders(plan))
            # a process that ends with the search shuts its local Ray down while the record is written
            after_tune = (lambda: background.submit(ray.shutdown)) if ending and started else None
            return _run_searches(plan, names, saved, storage, uri, opts, resume_cmd, warm, ray.cluster_resources(),
                                 after_tune)


def _warm(uri: str) -> None:
    from itra_tune import plots

    with contextlib.suppress(Exception):  # the tracker's own call says what is wrong
        tracking.warm(uri)
    with contextlib.suppress(Exception):
        plots.warm()


def _run_searches(plan: list[tuple[spaces.Space, str | None]], names: list[str], saved: dict[str, tuple[str, str]],
                  storage: Path, uri: str, opts: Options, resume_cmd: str, warm: list[Any],
                  available: dict[str, float],
                  after_tune: Callable[[], concurrent.futures.Future] | None = None) -> list[dict[str, Any]]:
    """Each experiment of ``plan`` in turn; ``after_tune``: called when the last one's trials are done, returns
    a future this waits for before its Tune objects are dropped."""
    from itra_tune.search import confirming, progress, record, results, study, trainable, tuner

    summaries, shutting_down = [], None
    for i, ((sp, method), name, previous) in enumerate(zip(plan, names, warm)):
        user_fn = trainable.resolve_trainable(opts.trainable or sp.trainable) if sp.trainable else None
        sp = tuner.fit_resources(sp, available)
        if user_fn is None:
            sp = record_threads(sp)
        sp_cfg = None if user_fn else config_mod.from_dict(sp.base, str(sp.path))
        epochs = sp.max_epochs if sp_cfg is None else sp_cfg.train.epochs
        objective, parent = saved.get(name, (opts.objective, ""))
        if not parent:
            tracker = tracking.Tracker(uri, sp.name, run_name=name, params=search_params(sp, opts, objective),
                                       artifacts=[sp.path], tags={tracking.SMOKE_TAG: str(opts.smoke).lower()})
            parent = tracker.parent
            tracker.log_artifact(tuner.save_settings(sp, objective, storage / name, parent))
        stored = None
        if sp.scheduler["name"] != "pbt":  # population based training samples without Optuna
            url = study.storage_url(opts.optuna_storage, storage / name)
            shared = study_name(opts, name, method)
            study.create(url, shared, *tuner.objectives(sp, objective), previous, sp.params)
            stored = tuner.StudyRecord(sp, objective, url, shared)
        explore = confirming.exploring(sp, objective)  # the budget less the confirmation's trainings
        view = None if opts.verbose else progress.Progress(explore, epochs, total=sp.num_samples)
        if view is not None:
            print(progress.header(explore, epochs, name, opts.resume, objective,
                                  sp.num_samples - explore.num_samples), flush=True)
        # the wall time counts every run of the search: a resumed one goes on from where the last run's ended
        before = _earlier_runs(storage / name) if opts.resume else {"wall_time_s": 0.0, "runs": 0}
        t0 = time.perf_counter() - before["wall_time_s"]
        grid = tuner.run_experiment(explore, epochs, name, storage,
                                    tuner.TrackingCallback(uri, sp.name, parent, user=user_fn is not None),
                                    objective=objective, seed=opts.seed, max_failures=opts.retries,
                                    resume=opts.resume, user_fn=user_fn, study=stored, previous=previous,
                                    progress=view)
        summary = results.summarize(grid, explore, epochs, storage / name, time.perf_counter() - t0, objective)
        # Ctrl-C: Tune saved its state and returned, with trials not started or not finished
        summary["interrupted"] = summary["trials"] < explore.num_samples or summary["interrupted_trials"] > 0
        summary["num_samples"] = sp.num_samples  # the confirmation's trials included
        confirmation = None
        if explore is not sp and not summary["interrupted"]:
            confirmation = confirming.after_exploring(summary, grid, sp, epochs, storage / name, uri, parent, t0,
                                                      seed=opts.seed, max_failures=opts.retries,
                                                      resume=opts.resume, verbose=opts.verbose)
        elif objective == "single" and summary["best"] is not None:  # the answer on its one seed, and why
            summary["answer"] = confirming.answer(sp, results.ranked(results.trial_rows(grid, sp, epochs), sp), None,
                                                  [])
            summary["answer"]["unconfirmed"] = confirming.why_not(sp, objective) if explore is sp else \
                "the exploration was interrupted; --resume finishes it, then confirms"
            confirming.save_answer(summary["answer"], storage / name)
        if after_tune is not None and i == len(plan) - 1:
            shutting_down = after_tune()
        if stored is not None:
            unrecorded = stored.record_all(grid, float(os.environ.get("ITRA_TUNE_DB_WAIT", 60)))
            summary["optuna"] = {"storage": stored.url, "study": stored.name,
                                 "dashboard": study.dashboard_command(stored.url),
                                 **({"error": unrecorded} if unrecorded else {})}
            if previous is not None:
                summary["optuna"]["warm_start"] = {"from": previous.study_name,
                                                   "trials": len(study.compatible(previous, sp.params))}
        summary["budget"] = "equal compute" if opts.equal_compute else "equal trials"
        summary["resume_command"], summary["runs"] = resume_cmd, before["runs"] + 1
        summary["tracking"] = record.record(grid, summary, sp, sp_cfg, uri, parent, storage / name,
                                            opts.register and not summary["interrupted"], opts.log_models, epochs,
                                            confirmation)
        checkpoint.write_text(storage / name / "summary.json", json.dumps(summary, indent=2, default=str))
        results.print_summary(summary, sp)
        summaries.append(summary)
        if summary["interrupted"]:
            break
    if len(summaries) > 1 and not summaries[-1]["interrupted"]:
        record.compare_compactness(summaries)
        results.print_comparison(summaries)
    if shutting_down is not None:  # Tune's objects die with this frame: never while Ray is half shut down
        shutting_down.result()
    return summaries


RAY_JOB_FOLDER = "/runtime_resources/working_dir_files/"  # where `ray job submit --working-dir` unpacks a folder


def _warn_if_ephemeral(storage: Path, uri: str) -> None:
    """Under ``ray job submit --working-dir``, the search runs in Ray's temporary copy of that folder: results or
    an MLflow store left in it are deleted with the job's session. Say so, once, before anything is written."""
    here = str(Path.cwd().resolve())
    if RAY_JOB_FOLDER not in here + "/":
        return
    inside = [what for what, path in (("--storage-path", str(storage)), ("--tracking-uri", uri))
              if here in path or (what == "--tracking-uri" and path.startswith("file:"))]
    if inside:
        print(f"note: this search runs in Ray's temporary copy of its working folder ({here}), which goes with the "
              f"job's session; give {' and '.join(inside)} a place that stays (a shared file system, a tracking "
              f"server)", file=sys.stderr)


def _earlier_runs(path: Path) -> dict[str, float]:
    """The wall time of a resumed search's earlier runs and how many there were, from the summary the last one
    wrote (none after a ``kill -9``: its time is lost, the count starts again)."""
    try:
        s = json.loads((path / "summary.json").read_text())
        return {"wall_time_s": float(s["wall_time_s"]), "runs": int(s.get("runs", 1))}
    except (OSError, ValueError, KeyError, TypeError):
        return {"wall_time_s": 0.0, "runs": 0}


__all__ = ["DEFAULT_STORAGE", "METHOD_KNOBS", "Options", "check_methods", "method_slug", "method_space", "parse_method",
           "prepare", "run"]
