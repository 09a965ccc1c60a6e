"""What a search found: one row per trial, the best, the Pareto front, the summary, and its MLflow record.

Everything here reads Tune's ResultGrid after ``fit`` returns; nothing here drives Tune.
"""

from __future__ import annotations

import csv
import json
import math
import sys
import tempfile
from pathlib import Path
from typing import Any

import torch
import yaml

from itra_tune import config as config_mod
from itra_tune import data as data_mod
from itra_tune import engine, plots, spaces, tracking
from itra_tune.trainable import trial_config, trial_params


def trial_rows(results: Any, space: spaces.Space, epochs: int) -> list[dict[str, Any]]:
    """One row per trial: parameters, status, and the metrics of its best epoch by the space's metric."""
    rows = []
    for r in started(results):
        df = r.metrics_dataframe
        params = {k: v for k, v in r.config.items() if k != "base"}
        row: dict[str, Any] = {"trial": Path(r.path).name, **params}
        history = df.to_dict("records") if df is not None and len(df) else []
        history = [h for h in history if not _nan(h.get(space.metric))]
        if r.error is not None:
            row["status"] = "failed: " + str(r.error).strip().splitlines()[-1][:200]
        elif history and int(history[-1]["epoch"]) >= epochs:
            row["status"] = "completed"
        else:
            row["status"] = "stopped early"
        row["epochs"] = int(history[-1]["epoch"]) if history else 0
        if history:
            best = max(history, key=lambda h: rank_key(h, space))
            row.update({k: best[k] for k in engine.METRICS if k in best}, best_epoch=int(best["epoch"]))
        rows.append(row)
    return rows


def started(results: Any) -> list[Any]:
    """The trials that began. A search stopped by Ctrl-C can hold one Tune created but never ran: it has no
    configuration or results yet, and ``--resume`` starts it."""
    return [r for r in results if r.config is not None]


def _nan(v: Any) -> bool:
    return v is None or (isinstance(v, float) and math.isnan(v))


def best_row(rows: list[dict[str, Any]], space: spaces.Space) -> dict[str, Any] | None:
    """The best trial that did not fail (Tune's own get_best_result would accept errored ones)."""
    ok = [r for r in rows if not r["status"].startswith("failed") and space.metric in r]
    if not ok:
        return None
    return max(ok, key=lambda r: rank_key(r, space))


def rank_key(row: dict[str, Any], space: spaces.Space) -> tuple[float, float]:
    """Sort key, larger is better: the space's metric, ties broken by lower validation CE."""
    sign = 1 if space.mode == "max" else -1
    return sign * row[space.metric], -row.get("val_ce", 0.0)


def pareto_front(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Trials not dominated on (validation accuracy up, validation CE down)."""
    ok = [r for r in rows if not r["status"].startswith("failed") and "val_acc" in r]

    def dominates(a: dict[str, Any], b: dict[str, Any]) -> bool:
        return (a["val_acc"] >= b["val_acc"] and a["val_ce"] <= b["val_ce"]
                and (a["val_acc"] > b["val_acc"] or a["val_ce"] < b["val_ce"]))

    return sorted((r for r in ok if not any(dominates(o, r) for o in ok)), key=lambda r: -r["val_acc"])


def summarize(results: Any, space: spaces.Space, cfg: config_mod.Config, path: Path, wall: float,
              objective: str) -> dict[str, Any]:
    rows = trial_rows(results, space, cfg.train.epochs)
    best = best_row(rows, space)
    counts = {s: sum(r["status"].startswith(s) for r in rows) for s in ("completed", "stopped early", "failed")}
    summary: dict[str, Any] = {"space": space.name, "metric": space.metric, "mode": space.mode,
                               "experiment_path": str(path), "wall_time_s": round(wall, 1), "trials": len(rows),
                               **counts, "best": best}
    if best is not None:
        best_cfg = trial_config({"base": space.base, **{p.key: best[p.key] for p in space.params if p.key in best}})
        summary["best_config"] = best_cfg.to_dict()
        (path / "best_config.yaml").write_text(yaml.safe_dump(best_cfg.to_dict(), sort_keys=False))
    if objective == "acc_ce":
        summary["pareto_front"] = pareto_front(rows)
    _write_csv(rows, path / "trials.csv")
    (path / "summary.json").write_text(json.dumps(summary, indent=2, default=str))
    return summary


def _write_csv(rows: list[dict[str, Any]], path: Path) -> None:
    keys = list(dict.fromkeys(k for r in rows for k in r))
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=keys)
        w.writeheader()
        w.writerows(rows)


def print_summary(s: dict[str, Any], space: spaces.Space, name: str, resume_cmd: str) -> None:
    print(f"\n== {s['space']}: {s['trials']} trials in {s['wall_time_s']:.0f}s: {s['completed']} completed, "
          f"{s['stopped early']} stopped early, {s['failed']} failed")
    b = s.get("best")
    if b is None:
        print("no trial finished an epoch; see the errors in " + s["experiment_path"])
    else:
        params = ", ".join(f"{p.key}={_fmt(b.get(p.key))}" for p in space.params)
        print(f"best trial {b['trial']} ({params}) at epoch {b['best_epoch']}: val_acc {100 * b['val_acc']:.2f}%  "
              f"val_ce {b['val_ce']:.4f}  test_acc {100 * b['test_acc']:.2f}%  test_ce {b['test_ce']:.4f}")
    for r in s.get("pareto_front", []):
        print(f"  pareto: {r['trial']}  val_acc {100 * r['val_acc']:.2f}%  val_ce {r['val_ce']:.4f}")
    print(f"results: {s['experiment_path']} (summary.json, trials.csv, best_config.yaml)")
    t = s.get("tracking", {})
    if t.get("error"):
        print(f"MLflow: not completed ({t['error']}); the results above are safe, and the resume command "
              f"below back-fills MLflow once {t['uri']} answers")
    elif t:
        backfill = f", {t['failed_live_writes']} live writes back-filled" if t.get("failed_live_writes") else ""
        reg = f", registered as {t['registered']}" if t.get("registered") else ""
        print(f"MLflow:  experiment {t['experiment']!r}, parent run {t['parent_run_id']} at {t['uri']}{backfill}{reg}"
              f"\n         browse with `mlflow ui --backend-store-uri {t['uri']}`")
    print(f"resume:  {resume_cmd}")


def _fmt(v: Any) -> str:
    return f"{v:.4g}" if isinstance(v, float) else str(v)


def record(results: Any, summary: dict[str, Any], space: spaces.Space, cfg: config_mod.Config, uri: str,
           parent: str, path: Path, register: bool, interrupted: bool) -> dict[str, Any]:
    """Complete the search in MLflow: back-fill, statuses, best models, pictures, the best configuration.

    Returns what happened, for the summary; a tracking server that is still away is reported, not raised.
    """
    out: dict[str, Any] = {"uri": uri, "experiment": space.name, "parent_run_id": parent}
    try:
        tracker = tracking.Tracker(uri, space.name, parent)
        rows = {r["trial"]: r for r in trial_rows(results, space, cfg.train.epochs)}
        histories, best_run, best_model = {}, None, None
        data = data_mod.build(cfg.data, torch.device("cpu"), cfg.seed, paired=False, model_name=cfg.model.name)
        example = data.sample("test", 2)[0], data.num_classes, data.input_shape
        for res in started(results):
            name = Path(res.path).name
            row = rows[name]
            history = _history(res)
            histories[name] = history
            model_dir = None
            ckpt = res.get_best_checkpoint(space.metric, space.mode) if history else None
            with tempfile.TemporaryDirectory() as tmp:
                if ckpt is not None and not row["status"].startswith("failed"):
                    model_dir, model = _export_model(ckpt, res.config, example, Path(tmp) / "model")
                    if summary.get("best") and summary["best"]["trial"] == name:
                        best_model = model
                run_id = tracker.finish_trial(name.removeprefix("trial_"), name, trial_params(res.config), history,
                                              row["status"], model_dir)
            if summary.get("best") and summary["best"]["trial"] == name:
                best_run = run_id
        out["orphaned_runs_dropped"] = tracker.drop_orphans({Path(r.path).name.removeprefix("trial_")
                                                             for r in results})
        files = [f for f in (path / "trials.csv", path / "best_config.yaml") if f.exists()]
        figures = _figures(list(rows.values()), histories, space)
        if best_model is not None:
            x, y = data.sample("test", 1000)
            with torch.no_grad():
                h = best_model.eval().features(x).numpy()
            figures["plots/tsne_best_test_features.png"] = plots.tsne(
                h, y.numpy(), f"t-SNE of test features, best trial ({cfg.loss.name})")
        try:
            tracker.finish(best_run, files, figures, interrupted)
        finally:
            plots.close(figures.values())
        summary["best_history"] = histories.get(summary["best"]["trial"]) if summary.get("best") else None
        out.update(best_run_id=best_run, failed_live_writes=tracker.failures)
        if register and best_run is not None:
            out["registered"] = tracking.register(tracker.c, best_run, f"itra-{space.name}")
    except Exception as e:  # noqa: BLE001 - the trials are safe on disk; say how to finish the record later
        out["error"] = f"{type(e).__name__}: {str(e).strip().splitlines()[0] if str(e).strip() else ''}"
    return out


def _history(result: Any) -> list[dict[str, Any]]:
    df = result.metrics_dataframe
    return [] if df is None or not len(df) else [h for h in df.to_dict("records") if not _nan(h.get("val_acc"))]


def _export_model(ckpt: Any, tune_config: dict[str, Any], example: Any, out: Path) -> tuple[Path, Any]:
    """The trial's best checkpoint as an MLflow model folder, and the loaded model."""
    from itra_tune import checkpoint, models
    from itra_tune.trainable import STATE_FILE

    x, num_classes, input_shape = example
    cfg = trial_config(tune_config)
    model = models.build(cfg.model.name, num_classes, input_shape)
    with ckpt.as_directory() as d:
        model.load_state_dict(checkpoint.load(Path(d) / STATE_FILE)["model"])
    return tracking.save_model(model, x, out), model


def _figures(rows: list[dict[str, Any]], histories: dict[str, list[dict[str, Any]]],
             space: spaces.Space) -> dict[str, Any]:
    ranked = sorted((r for r in rows if space.metric in r and not r["status"].startswith("failed")),
                    key=lambda r: rank_key(r, space), reverse=True)
    top = {r["trial"]: histories[r["trial"]] for r in ranked[:5] if histories.get(r["trial"])}
    log_axes = frozenset(p.key for p in space.params if p.log)
    figs = {"plots/params_vs_metric.png": plots.params_vs_metric(rows, [p.key for p in space.params], space.metric,
                                                                 log_axes)}
    if top:
        figs["plots/learning_curves_top5.png"] = plots.learning_curves(top)
        best = ranked[0]["trial"]
        figs["plots/compactness_best.png"] = plots.compactness_curves({best: top[best]})
    figs.update(plots.optuna_figures(rows, list(space.params), space.metric, space.mode))
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


def print_comparison(summaries: list[dict[str, Any]]) -> None:
    print("\n== methods side by side (best trial of each, same budget)")
    print(f"{'method':<24}{'val_acc':>9}{'val_ce':>9}{'test_acc':>10}{'test_ce':>9}  knobs")
    for s in summaries:
        b = s.get("best") or {}
        knobs = {k: _fmt(v) for k, v in b.items() if k.startswith("loss.")}
        print(f"{s['space']:<24}{100 * b.get('val_acc', float('nan')):>8.2f}%{b.get('val_ce', float('nan')):>9.4f}"
              f"{100 * b.get('test_acc', float('nan')):>9.2f}%{b.get('test_ce', float('nan')):>9.4f}  {knobs}")
