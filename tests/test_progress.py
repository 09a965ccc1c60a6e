"""The search's live view (``itra_tune.search.progress``): what it prints as trials report, end and fail."""

from __future__ import annotations

import logging
from types import SimpleNamespace

from itra_tune import spaces
from itra_tune.search import progress
from itra_tune.search.trainable import SELECTION
from itra_tune.selection import score as selection_score


def trial(tid: str, lam: float, status: str = "RUNNING", error: str | None = None, tmp=None) -> SimpleNamespace:
    error_file = None
    if error is not None:
        error_file = tmp / f"{tid}-error.txt"
        error_file.write_text(f"Traceback (most recent call last):\n  ...\n{error}\n")
    return SimpleNamespace(trial_id=tid, status=status, last_result={},
                           config={"base": {}, "loss.lam": lam, "data.batch_size": 64}, error_file=error_file)


def result(t: SimpleNamespace, epoch: int, val_ce: float, val_acc: float) -> dict:
    r = {"epoch": epoch, "val_ce": val_ce, "val_acc": val_acc, "training_iteration": epoch}
    r[SELECTION] = selection_score(r, "val_ce", "min")
    t.last_result = r
    return r


def test_a_line_per_ended_trial_the_best_so_far_and_a_status_line_while_training(capsys, tmp_path):
    space = spaces.load("demo")
    view = progress.Progress(space, epochs=6, every=3600)
    view.setup()
    a, b, c = trial("a", 0.03), trial("b", 0.3), trial("c", 3.0, error="itra_tune.engine.Collapsed: collapsed: "
                                                                     "spread 2% of its peak", tmp=tmp_path)
    for epoch, (ce_a, ce_b) in enumerate([(0.5, 0.4), (0.2, 0.3)], start=1):
        view.on_trial_result(0, [a, b], a, result(a, epoch, ce_a, 0.9))
        view.on_trial_result(0, [a, b], b, result(b, epoch, ce_b, 0.8))
    view.on_trial_result(0, [a, b, c], c, result(c, 1, 0.01, 0.1))
    assert capsys.readouterr().out == ""  # nothing ended, and not a minute since the last line
    view.on_trial_complete(0, [a, b], b)  # stopped at its second epoch of six
    view.on_trial_error(0, [a, c], c)  # its one epoch had the lowest CE: a failed trial never ranks
    a.last_result["epoch"] = 6
    view.on_trial_complete(0, [a], a)
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 3 and [line.split()[:2] for line in lines] == [
        ["[#---------]", "1/8"], ["[##--------]", "2/8"], ["[####------]", "3/8"]]
    assert "trial_b stopped at epoch 2  val_ce 0.3  val_acc 80.00% (epoch 2)  lam=0.3  batch_size=64" in lines[0]
    assert lines[0].endswith("<- best so far")
    assert "trial_c collapsed: spread 2% of its peak" in lines[1] and "best so far" not in lines[1]
    assert "trial_a completed  val_ce 0.2  val_acc 90.00% (epoch 2)" in lines[2] and lines[2].endswith("best so far")

    view.every = 0  # a status line at the next result: what runs, at which epoch, and the best so far
    d = trial("d", 1.0)
    view.on_trial_result(0, [d], d, result(d, 3, 0.4, 0.85))
    (status,) = capsys.readouterr().out.splitlines()
    assert status.endswith("running: trial_d epoch 3/6; best so far trial_a")

    resumed = progress.Progress(space, epochs=6)  # a resumed search counts on from Tune's saved state
    resumed.set_state(view.get_state())
    resumed.setup()
    resumed.on_trial_complete(0, [d], d)
    assert capsys.readouterr().out.split()[1] == "4/8"


def test_the_libraries_are_quiet_for_the_search_and_as_they_were_after():
    ray_logger = logging.getLogger("ray")
    ray_logger.setLevel(logging.INFO)
    with progress.quiet_libraries():
        assert ray_logger.level == logging.ERROR and logging.getLogger("optuna").level >= logging.WARNING
    assert ray_logger.level == logging.INFO


def test_tune_errors_the_view_reports_itself_are_dropped_and_others_kept(caplog):
    controller = logging.getLogger("ray.tune.execution.tune_controller")
    with progress.quiet_libraries(), caplog.at_level(logging.ERROR):
        controller.error("Trial task failed for trial trial_x", exc_info=RuntimeError("boom"))
        logging.getLogger("ray.tune.tune").error("Trials did not complete: %s", ["trial_x"])
        controller.error("Could not re-use actor for trial trial_y: gone")
    assert [r.getMessage() for r in caplog.records] == ["Could not re-use actor for trial trial_y: gone"]
    controller.error("Trial task failed for trial trial_z")  # the filter ends with the search
    assert caplog.records[-1].getMessage() == "Trial task failed for trial trial_z"


def test_the_header_names_what_the_search_ranks_on():
    space = spaces.load("demo")
    assert "ranked on val_ce (min), scheduler asha" in progress.header(space, 6, "d", resume=False)
    both = progress.header(space, 6, "d", resume=False, objective="acc_ce")
    assert "ranked on val_acc (max) and val_ce (min), a Pareto front, scheduler asha" in both
