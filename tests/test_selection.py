"""The one selection rule: which epoch a run hands over, which trial a search selects."""

from __future__ import annotations

import math

import numpy as np
import pytest

from itra_tune import selection
from itra_tune.config import ConfigError, SelectConfig, from_dict

VAL_CE = SelectConfig(rule="metric", metric="val_ce", mode="min")
VAL_ACC = SelectConfig(rule="metric", metric="val_acc", mode="max")
ONE_SE = SelectConfig()  # the default
ONE_SE_CE = SelectConfig(rule="one_se_ce")


def _rows(*figures, count=None):
    extra = {} if count is None else {"val_count": count}
    return [{"epoch": e, "val_acc": acc, "val_ce": ce, "test_acc": 0.5, **extra}
            for e, (acc, ce) in enumerate(figures, 1)]


def test_one_se_takes_the_lowest_ce_among_accuracies_within_one_standard_error_of_the_best():
    # 400 examples at a best of 0.90: sqrt(0.9 * 0.1 / 400) = 0.015, so 0.886 is tied with 0.90 and 0.88 is not
    assert selection.tolerance(0.9, 400) == pytest.approx(0.015)
    rows = _rows((0.880, 0.20), (0.886, 0.30), (0.900, 0.40), (0.890, 0.35), count=400)
    assert selection.best(rows, ONE_SE)["epoch"] == 2
    assert selection.best(rows, VAL_ACC)["epoch"] == 3 and selection.best(rows, VAL_CE)["epoch"] == 1
    # more examples, a narrower window: 0.886 is no longer within 0.9 * 0.1 / 4000's standard error (0.0047)
    assert selection.best(_rows((0.880, 0.20), (0.886, 0.30), (0.900, 0.40), count=4000), ONE_SE)["epoch"] == 3
    # equal CE in the window: the earlier epoch
    assert selection.best(_rows((0.90, 0.3), (0.895, 0.3), count=400), ONE_SE)["epoch"] == 1


def test_one_se_ce_keeps_one_se_unless_the_lowest_ce_is_lower_by_more_than_its_standard_error():
    # CE overfits while accuracy still creeps up: one_se's window (0.885 and up on 400 examples) holds only the
    # late epochs, whose CE is 0.25 above the lowest
    rows = _rows((0.850, 0.30), (0.880, 0.35), (0.890, 0.55), (0.900, 0.60), count=400)
    assert selection.best(rows, ONE_SE)["epoch"] == 3
    for row in rows:
        row["val_ce_se"] = 0.05
    assert selection.best(rows, ONE_SE_CE)["epoch"] == 1  # 0.55 > 0.30 + 0.05: the lowest CE
    rows[0]["val_ce_se"] = 0.3
    assert selection.best(rows, ONE_SE_CE)["epoch"] == 3  # 0.55 <= 0.30 + 0.3: the split cannot tell them apart
    assert selection.contenders(rows, ONE_SE_CE) == [1, 3, 4]  # one_se's contenders, and the lowest CE
    for row in rows:
        del row["val_ce_se"]  # a history without the standard error (an older run's): judged as one_se
    assert selection.best(rows, ONE_SE_CE) is selection.best(rows, ONE_SE)
    assert "unless the lowest validation CE" in selection.describe(ONE_SE_CE, validated=True)
    assert from_dict({"select": {"rule": "one_se_ce"}}).select.rule == "one_se_ce"


def test_one_se_without_the_validation_count_is_the_metric_rule():
    rows = _rows((0.880, 0.20), (0.886, 0.30), (0.900, 0.40))  # a user trainable's reports, say
    assert selection.best(rows, ONE_SE) is selection.best(rows, VAL_CE)
    assert selection.contenders(rows, ONE_SE) == [1]


def test_one_se_ranks_trials_by_taking_its_pick_then_its_pick_of_the_rest():
    trials = [{"trial": t, "val_acc": a, "val_ce": c, "val_count": 400}
              for t, a, c in (("a", 0.90, 0.40), ("b", 0.89, 0.30), ("c", 0.80, 0.10), ("d", 0.895, 0.35))]
    assert [t["trial"] for t in selection.ranked(trials, ONE_SE)] == ["b", "d", "a", "c"]


def _curve(rng, epochs):
    acc = np.clip(0.6 + np.cumsum(rng.normal(0.01, 0.02, epochs)), 0.0, 1.0)
    ce = np.abs(1.0 - np.cumsum(rng.normal(0.02, 0.05, epochs)))
    rows = _rows(*zip(acc.round(3).tolist(), ce.round(3).tolist()), count=int(rng.choice([50, 400, 6000])))
    for row, se in zip(rows, rng.uniform(0.0, 0.1, epochs).round(3)):
        row["val_ce_se"] = float(se)
    return rows


def test_the_epoch_handed_over_at_the_end_was_a_contender_at_every_epoch_since_it_was_trained():
    # what lets a training keep only the contenders' weights: the pick never needs an epoch it let go
    rng = np.random.default_rng(0)
    for _ in range(300):
        history = _curve(rng, int(rng.integers(1, 30)))
        for rule in (ONE_SE, ONE_SE_CE, VAL_CE, VAL_ACC):
            for end in range(1, len(history) + 1):
                pick = selection.best(history[:end], rule)["epoch"]
                for t in range(pick, end + 1):
                    assert pick in selection.contenders(history[:t], rule), (rule, history[:end], t)


def test_contenders_are_the_window_less_what_another_epoch_beats_on_both_figures():
    rows = _rows((0.880, 0.20), (0.886, 0.30), (0.900, 0.40), (0.890, 0.35), (0.900, 0.50), count=400)
    # 1 is out of the window (below 0.885); 5 is beaten by 3 (as accurate, lower CE); 2, 3, 4 each may still win
    assert selection.contenders(rows, ONE_SE) == [2, 3, 4]
    assert selection.contenders(rows, VAL_CE) == [1] and selection.contenders(rows, VAL_ACC) == [3]
    assert selection.contenders([{"epoch": 1, "train_ce": 0.3}], SelectConfig()) == []  # no validation split


def test_the_metric_decides_and_its_mode_says_which_way():
    rows = _rows((0.80, 0.60), (0.90, 0.50), (0.85, 0.40))
    assert selection.best(rows, VAL_CE)["epoch"] == 3
    assert selection.best(rows, VAL_ACC)["epoch"] == 2


def test_ties_go_to_the_lower_validation_ce_then_to_the_earlier_epoch():
    rows = _rows((0.90, 0.50), (0.90, 0.45), (0.90, 0.45), (0.70, 0.30))
    assert selection.best(rows, VAL_ACC)["epoch"] == 2
    assert selection.best(_rows((0.9, 0.4), (0.8, 0.4)), VAL_CE)["epoch"] == 1
    # the tie-break never reorders distinct accuracies: one image of 10,000 outweighs any CE
    assert selection.best(_rows((0.9000, 9.0), (0.9001, 90.0)), VAL_ACC)["epoch"] == 2


def test_epochs_without_a_finite_metric_never_win():
    rows = [{"epoch": 1, "val_ce": math.nan}, {"epoch": 2, "val_ce": math.inf}, {"epoch": 3, "val_ce": 2.0},
            {"epoch": 4}]
    assert selection.best(rows, VAL_CE)["epoch"] == 3
    assert selection.score(rows[0], "val_ce", "min") == -math.inf
    assert selection.best([{"epoch": 1}], VAL_CE) is None
    assert [r["epoch"] for r in selection.ranked(rows, VAL_CE)] == [3]


def test_ranked_is_best_first_and_stable_among_equals():
    trials = [{"trial": "a", "val_ce": 0.5}, {"trial": "b", "val_ce": 0.3}, {"trial": "c", "val_ce": 0.5}]
    assert [t["trial"] for t in selection.ranked(trials, VAL_CE)] == ["b", "a", "c"]


def test_without_validation_the_run_hands_over_the_searchs_epoch_or_its_last():
    rows = [{"epoch": e, "test_acc": 0.1 * e} for e in (1, 2, 3)]  # the test split is never selected on
    assert selection.handed_over(rows, SelectConfig())["epoch"] == 3
    assert selection.handed_over(rows, SelectConfig(epoch=2))["epoch"] == 2
    assert selection.handed_over(_rows((0.5, 0.9), (0.6, 0.8)), SelectConfig(epoch=1))["epoch"] == 2  # validated
    assert selection.handed_over([], SelectConfig()) == {}


def test_training_stops_at_the_selected_epoch_only_without_validation():
    assert selection.stop_epoch(SelectConfig(epoch=4), 6, validated=False) == 4
    assert selection.stop_epoch(SelectConfig(epoch=4), 6, validated=True) == 6
    assert selection.stop_epoch(SelectConfig(), 6, validated=False) == 6


@pytest.mark.parametrize(("select", "message"), [
    ({"metric": "test_acc"}, "select.metric 'test_acc' cannot select; choose one of val_ce, val_acc"),
    ({"mode": "up"}, "select.mode must be min or max"),
    ({"rule": "best"}, "select.rule unknown rule 'best'; choose one of one_se, one_se_ce, metric"),
    ({"epoch": 7}, r"select.epoch must be null or an epoch from 1 to train.epochs \(6\) but got 7"),
])
def test_a_bad_rule_is_one_line_naming_the_key(select, message):
    with pytest.raises(ConfigError, match=message):
        from_dict({"train": {"epochs": 6}, "select": select}, "run.yaml")
