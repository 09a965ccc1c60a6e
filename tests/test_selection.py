"""The one selection rule: which epoch a run hands over, which trial a search selects."""

from __future__ import annotations

import math

import pytest

from itra_tune import selection
from itra_tune.config import ConfigError, SelectConfig, from_dict


def _rows(*figures):
    return [{"epoch": e, "val_acc": acc, "val_ce": ce, "test_acc": 0.5} for e, (acc, ce) in enumerate(figures, 1)]


def test_the_metric_decides_and_its_mode_says_which_way():
    rows = _rows((0.80, 0.60), (0.90, 0.50), (0.85, 0.40))
    assert selection.best(rows, "val_ce", "min")["epoch"] == 3
    assert selection.best(rows, "val_acc", "max")["epoch"] == 2


def test_ties_go_to_the_lower_validation_ce_then_to_the_earlier_epoch():
    rows = _rows((0.90, 0.50), (0.90, 0.45), (0.90, 0.45), (0.70, 0.30))
    assert selection.best(rows, "val_acc", "max")["epoch"] == 2
    assert selection.best(_rows((0.9, 0.4), (0.8, 0.4)), "val_ce", "min")["epoch"] == 1
    # the tie-break never reorders distinct accuracies: one image of 10,000 outweighs any CE
    assert selection.best(_rows((0.9000, 9.0), (0.9001, 90.0)), "val_acc", "max")["epoch"] == 2


def test_epochs_without_a_finite_metric_never_win():
    rows = [{"epoch": 1, "val_ce": math.nan}, {"epoch": 2, "val_ce": math.inf}, {"epoch": 3, "val_ce": 2.0},
            {"epoch": 4}]
    assert selection.best(rows, "val_ce", "min")["epoch"] == 3
    assert selection.score(rows[0], "val_ce", "min") == -math.inf
    assert selection.best([{"epoch": 1}], "val_ce", "min") is None
    assert [r["epoch"] for r in selection.ranked(rows, "val_ce", "min")] == [3]


def test_ranked_is_best_first_and_stable_among_equals():
    trials = [{"trial": "a", "val_ce": 0.5}, {"trial": "b", "val_ce": 0.3}, {"trial": "c", "val_ce": 0.5}]
    assert [t["trial"] for t in selection.ranked(trials, "val_ce", "min")] == ["b", "a", "c"]


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
    ({"epoch": 7}, r"select.epoch must be null or an epoch from 1 to train.epochs \(6\) but got 7"),
])
def test_a_bad_rule_is_one_line_naming_the_key(select, message):
    with pytest.raises(ConfigError, match=message):
        from_dict({"train": {"epochs": 6}, "select": select}, "run.yaml")
