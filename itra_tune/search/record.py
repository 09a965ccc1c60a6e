"""The MLflow record of a finished search: back-filled epochs, statuses, each trial's best model, the
pictures and the best configuration. It gathers what to record from Tune's results; ``tracking`` writes it."""

from __future__ import annotations

import concurrent.futures
import sys
import tempfile
from pathlib import Path
from typing import Any

import torch
from ray import tune

from itra_tune import checkpoint, engine, export, models, plots, spaces, tracking
from itra_tune import config as config_mod
from itra_tune import data as data_mod
from itra_tune.search import confirming
from itra_tune.search.results import is_nan, ranked, row_metrics, started, trial_rows
from itra_tune.search.trainable import PLACEMENT, SELECTION, STATE_FILE, epoch_of, trial_config, trial_params


def record(results: Any, summary: dict[str, Any], space: spaces.Space, cfg: config_mod.Config | None, uri: str,
           parent: str, path: Path, register: bool, log_models: int | None = 3, epochs: int = 0,
           confirmation: Any = None) -> dict[str, Any]:
    """Complete the search in MLflow: back-fill, headline metrics, statuses, the best trials' models, pictures,
    the best configuration, and the answer (``summary["answer"]``: its figures as the parent's ``answer_*``
    metrics, ``answer.json``).

    Args:
        confirmation: the confirmation's ResultGrid (``search.confirming``), whose trials become child runs of the
            same parent, tagged ``itra_tune.confirms`` with the trial each re-trains.
        cfg: the engine's base configuration; None for a user trainable, whose best trials' selected checkpoint
            folders are logged as files (``checkpoint/``) instead of models.
        log_models: how many of the best trials get their best checkpoint logged as a LoggedModel (None: all).
        epochs: what a completed trial reaches (default the configuration's ``train.epochs``).

    Returns:
        What happened, for the summary; a tracking server that is still away is reported, not raised.
    """
    out: dict[str, Any] = {"uri": uri, "experiment": space.name, "parent_run_id": parent}
    away = tracking.problem(uri)
    if away is not None:  # said at once, not after minutes of MLflow's retries
        out["error"] = f"the MLflow server does not answer ({away})"
        return out
    with concurrent.futures.ThreadPoolExecutor(1) as background:
        return _record(results, summary, space, cfg, uri, parent, path, register, log_models, epochs, out, background,
                       confirmation)


def _record(results: Any, summary: dict[str, Any], space: spaces.Space, cfg: config_mod.Config | None, uri: str,
            parent: str, path: Path, register: bool, log_models: int | None, epochs: int, out: dict[str, Any],
            background: concurrent.futures.Executor, confirmation: Any = None) -> dict[str, Any]:
    try:
        rows = {r["trial"]: r for r in trial_rows(results, space, epochs or cfg.train.epochs)}
        if cfg is None:
            names = tuple(dict.fromkeys(k for r in rows.values() for k in row_metrics(r, space)))
            tracker = tracking.Tracker(uri, space.name, parent, epoch_metrics=None, headline_metrics=names)
        else:
            tracker = tracking.Tracker(uri, space.name, parent)
        view = tracker.share_view(space.metric, [p.key for p in space.params])
        out["ui"] = tracking.ui_link(uri, tracker.exp_id, view)
        ranking = ranked(list(rows.values()), space)
        # an interrupted search is unfinished: its models are logged once, when --resume finishes it
        best_name = summary["best"]["trial"] if summary.get("best") else None
        order = list(dict.fromkeys(([best_name] if best_name else []) + [r["trial"] for r in ranking]))
        rank = {name: i + 1 for i, name in enumerate(order)}  # the answer first (a confirmed one, on its mean)
        with_model = set() if summary.get("interrupted") else \
            {r["trial"] for r in (ranking if log_models is None else ranking[:log_models])} | {best_name}
        data = None if cfg is None else \
            data_mod.build(cfg.data, torch.device("cpu"), cfg.seed, paired=False, model_name=cfg.model.name)
        trials = {Path(r.path).name: r for r in started(results)}
        best_model = _checkpoint_model(trials[best_name], rows[best_name], data) \
            if data is not None and best_name in trials else None
        if best_model is not None:  # its t-SNE map is computed while the trials are recorded
            x_best, y_best = data.sample("test", 1000)
            with torch.no_grad():
                h_best = best_model.eval().features(x_best).numpy()
            tsne_xy = background.submit(plots.tsne_map, h_best)
        histories, best_run = {}, None
        for name, res in trials.items():
            row = rows[name]
            histories[name] = _history(res, space.metric)
            model = best_model if name == best_name else None
            with tempfile.TemporaryDirectory() as tmp:
                if data is not None and name in with_model and model is None:
                    model = _checkpoint_model(res, row, data)
                files = _model_files(model, trial_config(res.config), data, row, Path(tmp)) \
                    if model is not None and name in with_model else None
                run_id = tracker.finish_trial(name.removeprefix("trial_"), name,
                                              trial_params(res.config, user=cfg is None) if res.config else {},
                                              histories[name],
                                              row["status"], row if space.metric in row else None, files)
            if name in rank:
                tracking.log_metrics(tracker.c, run_id, {tracking.RANK: rank[name]})
            if cfg is not None and row.get("best_epoch") and row["status"] != "interrupted":
                # the epoch this trial hands over, as its best configuration carries it (select.epoch)
                tracking.log_param_once(tracker.c, run_id, "select.epoch", int(row["best_epoch"]))
            note = engine.unmatched(histories[name], trial_config(res.config).loss.lam) \
                if cfg is not None and res.config else None
            if note:  # a trial that trained as plain CE, whatever its lambda says
                tracker.set_run_tag(run_id, tracking.UNMATCHED_TAG, note)
            tracker.set_run_tags(run_id, {tracking.PLACEMENT_TAG.format(k): row[k] for k in PLACEMENT if k in row})
            if data is None and name in with_model:
                _log_checkpoint_files(tracker, run_id, res, row)
            if name == best_name:
                best_run = run_id
        confirmed = _record_confirmation(tracker, confirmation, summary, space, epochs or cfg.train.epochs,
                                         user=cfg is None)
        out["orphaned_runs_dropped"] = tracker.drop_orphans({Path(r.path).name.removeprefix("trial_")
                                                             for r in results} | confirmed)
        out["models_logged"] = len(tracker.model_ids)
        files = [f for f in (path / "trials.csv", path / "best_config.yaml", path / confirming.ANSWER_FILE)
                 if f.exists()]
        answer = summary.get("answer") or {}
        tracking.log_metrics(tracker.c, tracker.parent, confirming.metrics(answer))
        if answer:
            tracker.set_parent_tag(confirming.TIED_TAG, ",".join(answer["tied"]) or "none")
        figures = _figures(list(rows.values()), histories, space, engine=cfg is not None)
        if best_model is not None:
            figures["plots/tsne_best_test_features.png"] = plots.tsne(
                h_best, y_best.numpy(), f"t-SNE of test features, best trial ({cfg.loss.name})", tsne_xy.result())
        try:
            tracker.finish(best_run, files, figures, summary["interrupted"], summary.get("best"))
        finally:
            plots.close(figures.values())
        summary["best_history"] = histories.get(best_name) if best_name else None
        out.update(best_run_id=best_run, best_model_id=tracker.model_ids.get(best_run),
                   failed_live_writes=tracker.failures)
        if best_run is not None:
            out["best_run_ui"] = tracking.ui_link(uri, tracker.exp_id, run_id=best_run)
        if register and best_run in tracker.model_ids:
            out["registered"] = tracking.register(uri, tracker.model_ids[best_run], f"itra-{space.name}")
    except Exception as e:  # noqa: BLE001 - the trials are safe on disk; say how to finish the record later
        out["error"] = f"{type(e).__name__}: {str(e).strip().splitlines()[0] if str(e).strip() else ''}"
    return out


def _record_confirmation(tracker: tracking.Tracker, results: Any, summary: dict[str, Any], space: spaces.Space,
                         epochs: int, user: bool) -> set[str]:
    """The confirmation's trials as child runs of the search (back-filled, statused, tagged with the trial each
    re-trains); returns their trial ids."""
    if results is None:
        return set()
    from itra_tune.search.tuner import confirmation_tags

    rows = {r["trial"]: r for r in trial_rows(results, space, epochs)}
    of_seed = confirming.confirms(summary["confirmation"]["plan"])
    ids = set()
    for res in started(results):
        name = Path(res.path).name
        tid = name.removeprefix("trial_")
        row = rows[name]
        tracker.finish_trial(tid, name, trial_params(res.config, user=user) if res.config else {},
                             _history(res, space.metric), row["status"], row if space.metric in row else None,
                             tags=confirmation_tags(res.config or {}, of_seed))
        ids.add(tid)
    return ids | {Path(r.path).name.removeprefix("trial_") for r in results}


def _history(result: Any, metric: str) -> list[dict[str, Any]]:
    df = result.metrics_dataframe
    rows = [] if df is None or not len(df) else df.to_dict("records")
    return [{**h, "epoch": epoch_of(h)} for h in rows if not is_nan(h.get(metric))]


def _selected_checkpoint(result: Any, row: dict[str, Any]) -> Any:
    """The trial's checkpoint of its selected epoch (else its best by the selection score), or None.

    A trial of several workers keeps its checkpoints in its Ray Train run; its results name them
    (``checkpoint_path``)."""
    kept = [(c, m) for c, m in (result.best_checkpoints or []) if epoch_of(m) == row.get("best_epoch")]
    if kept:
        return kept[0][0]
    if result.best_checkpoints:
        return result.get_best_checkpoint(SELECTION, "max")
    df = result.metrics_dataframe
    rows = [] if df is None or "checkpoint_path" not in df else df.to_dict("records")
    paths = [r["checkpoint_path"] for r in rows if epoch_of(r) == row.get("best_epoch")
             and isinstance(r.get("checkpoint_path"), str) and Path(r["checkpoint_path"]).is_dir()]
    return tune.Checkpoint(paths[-1]) if paths else None


def _log_checkpoint_files(tracker: tracking.Tracker, run_id: str, result: Any, row: dict[str, Any]) -> None:
    """A user trainable's selected checkpoint folder, as the files of its run (``checkpoint/``)."""
    ckpt = _selected_checkpoint(result, row)
    if ckpt is not None:
        with ckpt.as_directory() as d:
            tracker.log_folder(run_id, Path(d), "checkpoint")


def _checkpoints(result: Any) -> list[Any]:
    """A trial's checkpoints, newest first: its latest (which keeps the weights of every epoch the rule may hand
    over, ``engine.keep_contenders``), then the best by score Tune kept, then a Train run's (``checkpoint_path``)."""
    out = [result.checkpoint] if result.checkpoint is not None else []
    out += [c for c, _ in sorted(result.best_checkpoints or [], key=lambda cm: -epoch_of(cm[1]))]
    df = result.metrics_dataframe
    rows = [] if df is None or "checkpoint_path" not in df else df.to_dict("records")
    out += [tune.Checkpoint(r["checkpoint_path"]) for r in reversed(rows)
            if isinstance(r.get("checkpoint_path"), str) and Path(r["checkpoint_path"]).is_dir()]
    return out


def _checkpoint_model(result: Any, row: dict[str, Any], data: data_mod.Data) -> models.Classifier | None:
    """The trial's weights of its selected epoch as its classifier, or None when no checkpoint holds them."""
    epoch = row.get("best_epoch")
    for ckpt in _checkpoints(result):
        with ckpt.as_directory() as d:
            file = Path(d) / STATE_FILE
            weights = engine.weights_at(checkpoint.load(file), int(epoch)) if file.is_file() and epoch else None
        if weights is not None:
            cfg = trial_config(result.config)
            model = models.build(cfg.model.name, data.num_classes, data.input_shape, options=cfg.model.options)
            model.load_state_dict(weights)
            model.labels = data.labels
            return model.eval()
    return None


def _model_files(model: models.Classifier, cfg: config_mod.Config, data: data_mod.Data, row: dict[str, Any],
                 tmp: Path) -> tracking.ModelFiles:
    """What MLflow needs to log the model: its export (no TorchScript: a LoggedModel needs none), example inputs
    as they come (pixels in [0, 1]) and the outputs the model gives them."""
    x = data.sample("test", 4)[0]
    metrics = {k: row[k] for k in tracking.HEADLINE_METRICS if k in row}
    folder = export.save(model, cfg, tmp / "export", x, metrics=metrics, standalone=False)
    return tracking.ModelFiles(folder, x.numpy(), export.predictions(model, x), int(row.get("best_epoch", 0)))


def _figures(rows: list[dict[str, Any]], histories: dict[str, list[dict[str, Any]]],
             space: spaces.Space, engine: bool = True) -> dict[str, Any]:
    ranking = ranked(rows, space)
    top = {r["trial"]: histories[r["trial"]] for r in ranking[:5] if histories.get(r["trial"])}
    log_axes = frozenset(p.key for p in space.params if p.log)
    figs = {"plots/params_vs_metric.png": plots.params_vs_metric(rows, [p.key for p in space.params], space.metric,
                                                                 log_axes)}
    if top and engine:
        figs["plots/learning_curves_top5.png"] = plots.learning_curves(top)
        best = ranking[0]["trial"]
        figs["plots/compactness_best.png"] = plots.compactness_curves({best: top[best]})
    elif top:
        figs["plots/learning_curves_top5.png"] = plots.seed_curves(
            f"{space.metric} per epoch, the 5 best trials", {name: [rows] for name, rows in top.items()}, space.metric)
    figs.update(plots.optuna_figures(rows, list(space.params), space.metric, space.mode))
    if space.scheduler["name"] == "pbt":  # the schedules population based training found, trial by trial
        for key in ("lam", "lr"):
            runs = {name: [h] for name, h in histories.items() if h and key in h[0]}
            if runs:
                figs[f"plots/pbt_{key}_per_epoch.png"] = plots.seed_curves(f"{key} per epoch, every trial (PBT)",
                                                                           runs, key)
    return figs


def compare_compactness(summaries: list[dict[str, Any]]) -> None:
    """In a method comparison with ce: each method's best trial against the best CE trial (Figure 1, left)."""
    ce = next((s for s in summaries if s["space"].endswith("-ce") and s.get("best_history")), None)
    if ce is None:
        return
    for s in summaries:
        t = s.get("tracking", {})
        if s is ce or not s.get("best_history") or t.get("error"):
            continue
        fig = plots.compactness_curves({f"{s['space']} (best)": s["best_history"],
                                        f"{ce['space']} (best)": ce["best_history"]})
        try:
            tracking.log_figure(t["uri"], t["parent_run_id"], fig, "plots/compactness_vs_ce.png")
        except Exception as e:  # noqa: BLE001 - a picture is not worth failing a finished search
            print(f"MLflow: could not log the compactness comparison ({type(e).__name__})", file=sys.stderr)
        finally:
            plots.close([fig])


