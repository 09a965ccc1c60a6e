"""What a search found: one row per trial, the best, the Pareto front, the summary and its files.

Everything here reads Tune's ResultGrid after ``fit`` returns; nothing here drives Tune or writes to MLflow
(``itra_tune.search.record`` does).
"""

from __future__ import annotations

import csv
import io
import math
from pathlib import Path
from typing import Any

import yaml

from itra_tune import checkpoint, cli, engine, selection, spaces
from itra_tune.config import UNRANKED
from itra_tune.search import confirming
from itra_tune.search.trainable import PLACEMENT, epoch_of, reported, trial_config, user_config


def trial_rows(results: Any, space: spaces.Space, epochs: int) -> list[dict[str, Any]]:
    """One row per trial: parameters, status, and the metrics of its selected epoch (``itra_tune.selection``)."""
    rows = []
    running = interrupted_trials(results)
    for r in started(results):
        df = r.metrics_dataframe
        params = {k: v for k, v in (r.config or {}).items() if k != "base"}
        row: dict[str, Any] = {"trial": Path(r.path).name, **params}
        history = df.to_dict("records") if df is not None and len(df) else []
        history = [h for h in history if not is_nan(h.get(space.metric))]
        if r.error is not None:
            last = str(r.error).strip().splitlines()[-1]
            # a collapse (engine.Collapsed) is recorded as itself, with its numbers; any other error as a failure
            row["status"] = last.partition("Collapsed: ")[2][:200] if "Collapsed: " in last else \
                "failed: " + last[:200]
        elif history and epoch_of(history[-1]) >= epochs:
            row["status"] = "completed"
        elif Path(r.path).name in running:
            row["status"] = "interrupted"  # Ctrl-C: it was training; --resume continues it
        else:
            row["status"] = "stopped early"
        row["epochs"] = epoch_of(history[-1]) if history else 0
        if history:  # where it trained (trainable.PLACEMENT): node, the GPU ids Ray gave it, the torch device
            row.update({k: history[-1][k] for k in PLACEMENT if isinstance(history[-1].get(k), str)})
        best = selection.best(history, space.select)
        if best is not None:
            row.update({k: best[k] for k in metric_names(best, space)}, best_epoch=epoch_of(best))
            for k in (selection.COUNT, selection.CE_SE):  # the rule's standard errors, to rank the trials by it
                if k in best:
                    row[k] = best[k]
        rows.append(row)
    return rows


def interrupted_trials(results: Any) -> set[str]:
    """The trials Tune's saved state holds as still to run (only a Ctrl-C leaves any; in the returned results
    Tune shows them terminated, in its saved state they are pending, and ``--resume`` continues them)."""
    from ray.tune import ExperimentAnalysis

    try:
        trials = ExperimentAnalysis(results.experiment_path).trials
    except Exception:  # noqa: BLE001 - no saved state to read: nothing is known to be unfinished
        return set()
    return {Path(t.path).name for t in trials if t.path and t.status in ("RUNNING", "PAUSED", "PENDING")}


def metric_names(result: dict[str, Any], space: spaces.Space) -> list[str]:
    """The metrics of a reported epoch: the engine's, or every number a user trainable reported."""
    return list(reported(result)) if space.trainable else [k for k in engine.METRICS if k in result]


def row_metrics(row: dict[str, Any], space: spaces.Space) -> list[str]:
    """The metrics in a trial's row (``trial_rows``), without its parameters and epoch counts."""
    skip = {p.key for p in space.params} | {"epochs", "best_epoch"}
    return [k for k in metric_names(row, space) if k not in skip]


def started(results: Any) -> list[Any]:
    """The trials that began. A search stopped by Ctrl-C can hold one Tune created but never ran: it has no
    configuration or results yet, and ``--resume`` starts it. A trial whose process died before its first report
    has no configuration in its results either, but its error: it began, and failed."""
    return [r for r in results if r.config is not None or r.error is not None]


def is_nan(v: Any) -> bool:
    return v is None or (isinstance(v, float) and math.isnan(v))


def best_row(rows: list[dict[str, Any]], space: spaces.Space) -> dict[str, Any] | None:
    """The best trial that did not fail (Tune's own get_best_result would accept errored ones)."""
    ranking = ranked(rows, space)
    return ranking[0] if ranking else None


def ranked(rows: list[dict[str, Any]], space: spaces.Space) -> list[dict[str, Any]]:
    """The trials that rank (not failed or collapsed, with a selected epoch), best first by the space's rule:
    each at its selected epoch, ``itra_tune.selection``'s order (the score Tune ranks a trial's checkpoints by,
    so the selected epoch's checkpoint is the one kept)."""
    return selection.ranked([r for r in rows if not r["status"].startswith(UNRANKED)], space.select)


def pareto_front(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Trials not dominated on (validation accuracy up, validation CE down)."""
    ok = [r for r in rows if not r["status"].startswith(UNRANKED) and "val_acc" in r]

    def dominates(a: dict[str, Any], b: dict[str, Any]) -> bool:
        return (a["val_acc"] >= b["val_acc"] and a["val_ce"] <= b["val_ce"]
                and (a["val_acc"] > b["val_acc"] or a["val_ce"] < b["val_ce"]))

    return sorted((r for r in ok if not any(dominates(o, r) for o in ok)), key=lambda r: -r["val_acc"])


def summarize(results: Any, space: spaces.Space, epochs: int, path: Path, wall: float,
              objective: str) -> dict[str, Any]:
    """The search's summary (the caller adds its MLflow record and writes summary.json); writes trials.csv and
    best_config.yaml beside Tune's state. ``epochs``: what a completed trial reaches."""
    rows = trial_rows(results, space, epochs)
    best = best_row(rows, space)
    counts = {s: sum(r["status"].startswith(s) for r in rows)
              for s in ("completed", "stopped early", "failed", "collapsed")}
    # Ctrl-C also cuts trials that were training but had not reported yet: they have a folder and no row
    unreported = {n for n in interrupted_trials(results) if (path / n).is_dir()} - {r["trial"] for r in rows}
    counts["interrupted_trials"] = sum(r["status"] == "interrupted" for r in rows) + len(unreported)
    # trials Ray gave GPUs that CUDA could not open there (logical GPUs, no driver): they trained on the CPU
    counts["gpus_unopened"] = sum(bool(r.get("gpu_ids")) and r.get("device") == "cpu" for r in rows)
    summary: dict[str, Any] = {"space": space.name, "metric": space.metric, "mode": space.mode,
                               "experiment_path": str(path), "wall_time_s": round(wall, 1), "trials": len(rows),
                               "num_samples": space.num_samples, **counts, "best": best}
    if best is not None:
        write_best(summary, best, space, path)
    if objective == "acc_ce":
        summary["pareto_front"] = pareto_front(rows)
    _write_csv(rows, path / "trials.csv")
    return summary


def write_best(summary: dict[str, Any], best: dict[str, Any], space: spaces.Space, path: Path) -> None:
    """Make ``best`` (a trial's row) the summary's best trial and its configuration ``best_config`` (and
    best_config.yaml): the space's base with the trial's values, and, for the engine, its selected epoch, which
    --full-train hands over with no validation left to select."""
    tune_config = {"base": space.base, **{p.key: best[p.key] for p in space.params if p.key in best}}
    best_cfg = user_config(tune_config) if space.trainable else \
        trial_config({**tune_config, "select.epoch": best["best_epoch"]}).written()
    summary["best"], summary["best_config"] = best, best_cfg
    checkpoint.write_text(path / "best_config.yaml", yaml.safe_dump(best_cfg, sort_keys=False))


def _write_csv(rows: list[dict[str, Any]], path: Path) -> None:
    keys = list(dict.fromkeys(k for r in rows for k in r))
    out = io.StringIO(newline="")
    w = csv.DictWriter(out, fieldnames=keys)
    w.writeheader()
    w.writerows(rows)
    checkpoint.write_text(path, out.getvalue())


# what a search writes beside Tune's state
RESULT_FILES = ("summary.json", "trials.csv", "best_config.yaml", confirming.ANSWER_FILE)


def print_summary(s: dict[str, Any], space: spaces.Space) -> None:
    runs = f" over {s['runs']} runs" if s.get("runs", 1) > 1 else ""  # --resume: the time of them all
    print(f"\n== {s['space']}: {s['trials']} trials in {s['wall_time_s']:.0f}s{runs}: {s['completed']} completed, "
          f"{s['stopped early']} stopped early, {s['failed']} failed"
          + (f", {s['interrupted_trials']} interrupted" if s.get("interrupted_trials") else "")
          + (f", {s['collapsed']} collapsed" if s.get("collapsed") else ""))
    if s.get("gpus_unopened"):
        print(f"note: {s['gpus_unopened']} trials were given GPUs by Ray that CUDA could not open on their node (a "
              f"cluster declaring logical GPUs, or no driver); they trained on the CPU (--set device=cuda makes "
              f"this an error)")
    b = s.get("best")
    if b is None and s.get("interrupted"):
        print("interrupted before any trial finished an epoch; nothing failed")
    elif b is None:
        print("no trial finished an epoch; see the errors in " + s["experiment_path"])
    else:
        params = ", ".join(f"{p.key}={_fmt(b.get(p.key))}" for p in space.params)
        if space.trainable:
            figures = "  ".join(f"{k} {_fmt(b[k])}" for k in row_metrics(b, space))
        else:
            figures = (f"val_acc {100 * b['val_acc']:.2f}%  val_ce {b['val_ce']:.4f}  test_acc "
                       f"{100 * b['test_acc']:.2f}%  test_ce {b['test_ce']:.4f}")
        print(f"best trial {b['trial']} ({params}) at epoch {b['best_epoch']}: {figures}")
        for line in confirming.describe(s.get("answer") or {}, space):
            print(line)
    for r in s.get("pareto_front", []):
        print(f"  pareto: {r['trial']}  val_acc {100 * r['val_acc']:.2f}%  val_ce {r['val_ce']:.4f}")
    written = [f for f in RESULT_FILES if (Path(s["experiment_path"]) / f).is_file()]  # an interrupted search
    print(f"results: {s['experiment_path']} ({', '.join(written)}"  # before any epoch has no best_config.yaml
          + ("; a failed trial's traceback in trial_<id>/error.txt" if s.get("failed") else "") + ")")
    t = s.get("tracking", {})
    if t.get("error"):
        print(f"MLflow: not completed ({t['error']}); the results above are safe, and the resume command "
              f"below back-fills MLflow once {t['uri']} answers")
    elif t:
        backfill = f", {t['failed_live_writes']} live writes back-filled" if t.get("failed_live_writes") else ""
        reg = f", registered as {t['registered']}" if t.get("registered") else ""
        print(f"MLflow:  experiment {t['experiment']!r}, parent run {t['parent_run_id']} at {t['uri']}{backfill}{reg}")
        if not t["uri"].startswith("http"):
            print(f"  browse: {cli.command('mlflow')} ui --backend-store-uri {t['uri']}")
        print(f"  open:   {t['ui']}")
        if t.get("best_run_ui"):
            print(f"  best:   {t['best_run_ui']}")
    o = s.get("optuna")
    if o:
        warm = o.get("warm_start")
        print(f"Optuna:  study {o['study']!r} in {o['storage']}"
              + (f", started from {warm['trials']} trials of {warm['from']!r}" if warm else ""))
        print(f"  browse: {o['dashboard']}")
        if o.get("error"):
            print(f"Optuna: not recorded ({o['error']}); the results above are safe, and the resume command below "
                  f"records the study once the database answers")
    # the resume back-fills MLflow and the study; an interrupted search says how to continue it on its last line
    if (t.get("error") or (o or {}).get("error")) and not s.get("interrupted"):
        print(f"resume:  {s['resume_command']}")


def _fmt(v: Any) -> str:
    return f"{v:.4g}" if isinstance(v, float) else str(v)


def print_comparison(summaries: list[dict[str, Any]]) -> None:
    budget = summaries[0].get("budget", "equal trials")
    print(f"\n== methods side by side (best trial of each; budget: {budget}: "
          + ", ".join(f"{s['space']} {s['trials']} trials" for s in summaries) + ")")
    print(f"{'method':<24}{'val_acc':>9}{'val_ce':>9}{'test_acc':>10}{'test_ce':>9}  knobs")
    for s in summaries:
        b = s.get("best") or {}
        knobs = {k: _fmt(v) for k, v in b.items() if k.startswith("loss.")}
        print(f"{s['space']:<24}{100 * b.get('val_acc', float('nan')):>8.2f}%{b.get('val_ce', float('nan')):>9.4f}"
              f"{100 * b.get('test_acc', float('nan')):>9.2f}%{b.get('test_ce', float('nan')):>9.4f}  {knobs}")
