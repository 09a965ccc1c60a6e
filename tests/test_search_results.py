"""Reading a search's results: rows, statuses, the best trial, the Pareto front."""

from __future__ import annotations

import pandas as pd
from ray.tune import Result

from itra_tune import spaces
from itra_tune.search import results


def _result(path, params, epochs, error=None):
    history = [{"epoch": e, "val_acc": acc, "val_ce": ce, "test_acc": acc, "test_ce": ce, "match_loss": 0.1,
                "compactness": 0.5, "train_ce": ce} for e, (acc, ce) in enumerate(epochs, 1)]
    metrics = {**history[-1], "config": {"base": {}, **params}} if history else {"config": {"base": {}, **params}}
    return Result(metrics=metrics, checkpoint=None, error=error, path=str(path),
                  metrics_dataframe=pd.DataFrame(history) if history else None)


def test_rows_statuses_best_and_pareto(space_file, tmp_path):
    space = spaces.load(space_file())
    grid = [
        _result(tmp_path / "trial_a", {"loss.lam": 0.2}, [(0.5, 1.0), (0.8, 0.6)]),  # completed
        _result(tmp_path / "trial_b", {"loss.lam": 0.9}, [(0.8, 0.5)]),  # stopped early, ties a on acc
        _result(tmp_path / "trial_c", {"loss.lam": 2.0}, [(0.9, 0.4)], error=RuntimeError("loss became nan")),
        # the engine's Collapsed, as Ray hands it back: a traceback whose last line names the error
        _result(tmp_path / "trial_e", {"loss.lam": 4.0}, [(0.95, 0.3)], error=RuntimeError(
            "Traceback (most recent call last):\n  ...\nitra_tune.engine.Collapsed: collapsed: feature spread 0 is "
            "0.0% of its peak 3.98 while CE 2.302 stays at chance (ln K = 2.303) after 20 steps")),
        # Ctrl-C can leave a trial Tune created but never started: no configuration, no results
        Result(metrics=None, checkpoint=None, error=None, path=str(tmp_path / "trial_d")),
        # a trial whose reused process had died before it reported: no configuration, but an error
        Result(metrics={"trial_id": "f"}, checkpoint=None, path=str(tmp_path / "trial_f"),
               error=RuntimeError("ray.exceptions.ActorDiedError: The actor died unexpectedly")),
    ]
    rows = results.trial_rows(grid, space, epochs=2)
    assert [r["trial"] for r in rows] == ["trial_a", "trial_b", "trial_c", "trial_e", "trial_f"]
    assert [r["status"][:13] for r in rows] == ["completed", "stopped early", "failed: loss ", "collapsed: fe",
                                                "failed: ray.e"]
    assert rows[3]["status"].endswith("after 20 steps")
    best = results.best_row(rows, space)
    assert best["trial"] == "trial_b"  # equal val_acc with a, lower val_ce; c failed and e collapsed: never best
    assert [r["trial"] for r in results.pareto_front(rows)] == ["trial_b"]


def test_the_summary_lists_only_the_result_files_that_exist(space_file, tmp_path, capsys):
    space = spaces.load(space_file())
    summary = results.summarize([], space, 2, tmp_path, 1.0, "single")  # interrupted before any epoch
    summary["interrupted"] = True
    (tmp_path / "summary.json").write_text("{}")
    results.print_summary(summary, space)
    line = next(x for x in capsys.readouterr().out.splitlines() if x.startswith("results: "))
    assert line == f"results: {tmp_path} (summary.json, trials.csv)"  # no best_config.yaml: no trial had an epoch
