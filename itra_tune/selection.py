"""One notion of best: the epoch a run hands over and the trial a search selects.

Three rules (a configuration's ``select.rule``, a space's ``rule``):

- ``one_se`` (the default): the statistician's one-standard-error rule. Validation accuracies within one binomial
  standard error of the best one, sqrt(a (1 - a) / n) on the n validation examples, count as tied, and the lowest
  validation CE among them wins. One validation split cannot rank accuracies closer than that; CE ranks the tied
  ones as their test CE does (``docs/results/search-quality.md`` measures both rules).
- ``one_se_ce``: ``one_se``, guarded in CE: its pick, unless that pick's validation CE is beyond one standard error
  of the lowest validation CE (``val_ce_se``, the engine's, of the lowest epoch); then the lowest validation CE.
  Meant for CE that overfits while accuracy still creeps up (``one_se``'s window then holds only late epochs of
  higher CE); measured, it did not help there, since one split's CE standard error is wider than the differences
  that matter, so it is not the default (``docs/results/search-quality.md``). Rows without ``val_ce_se`` are
  judged as ``one_se`` judges them.
- ``metric``: the validation metric alone (``select.metric`` and ``select.mode``), ties to the lower validation
  CE. A user trainable's metric is selected this way, and so is any history without the validation count.

Ties left over go to the earlier epoch (or the earlier trial). Every consumer takes the rule from here: a trial's
kept checkpoint, the search's ranking, summary, confirmation and MLflow record (so ``best_config`` and
``load_best_model``), ``itra_tune.train`` (``best.pt``), ``--full-train``, the pipelines and the search-quality
benchmark.

The pick under ``one_se`` depends on the best accuracy a run ever reaches, so a training keeps, as it goes, the
weights of every epoch that may still be handed over (``contenders``): those in the tolerance window that no other
epoch beats on both accuracy and CE, usually one to three.

Without a validation split nothing can be selected: a run hands over the epoch its search selected
(``select.epoch``, which ``best_config`` carries), else its last epoch.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from typing import Any

from itra_tune.config import SelectConfig

TIE_METRIC = "val_ce"  # what breaks a tie of the selecting metric, and what ranks the tied ones under one_se
COUNT = "val_count"  # the validation examples behind an epoch's figures (the engine reports it with them)
CE_SE = "val_ce_se"  # the standard error of an epoch's validation CE (the engine reports it with them)
WINDOWED = ("one_se", "one_se_ce")  # the rules that judge accuracies within their standard error
NAMES = {"val_ce": "validation CE", "val_acc": "validation accuracy"}
_TIE_WEIGHT = 1e-9  # small enough never to reorder distinct values of a metric, large enough to order equal ones


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        return None
    return float(value)


def score(metrics: dict[str, Any], metric: str, mode: str) -> float:
    """How good an epoch is by ``metric`` alone, larger better: ``metric`` signed by ``mode``, ties to the lower
    validation CE. The order of the ``metric`` rule, and the number Tune ranks a trial's checkpoints by.

    An epoch without the metric (or with a NaN or infinite one) scores ``-inf``: it never wins.
    """
    value = _number(metrics.get(metric))
    if value is None:
        return -math.inf
    sign = 1.0 if mode == "max" else -1.0
    tie = _number(metrics.get(TIE_METRIC)) if metric != TIE_METRIC else None
    return sign * value - _TIE_WEIGHT * (tie or 0.0)


def tolerance(acc: float, count: float) -> float:
    """One binomial standard error of an accuracy ``acc`` measured on ``count`` examples."""
    return math.sqrt(max(acc * (1.0 - acc), 1e-12) / count)


def _judged(rows: Sequence[dict[str, Any]]) -> list[tuple[int, float, float]] | None:
    """(position, accuracy, CE) of the rows the one_se rule can judge; None when it cannot judge these rows (no
    row with both figures and the validation count): the metric rule decides then."""
    out = [(i, a, c) for i, r in enumerate(rows)
           if (a := _number(r.get("val_acc"))) is not None and (c := _number(r.get(TIE_METRIC))) is not None]
    if not out or not any(_number(r.get(COUNT)) for r in rows):
        return None
    return out


def _floor(rows: Sequence[dict[str, Any]], judged: list[tuple[int, float, float]]) -> float:
    """The lowest accuracy still tied with the best: the best less its standard error, never falling as the
    best rises (it could only at accuracies below one example in the split), so an epoch out of the window
    never comes back into it, and ``contenders`` can forget it."""
    floor, top = -math.inf, -math.inf
    for i, a, _ in judged:
        if a > top:
            top = a
            count = _number(rows[i].get(COUNT)) or max(_number(r.get(COUNT)) or 0.0 for r in rows)
            floor = max(floor, top - tolerance(top, count))
    return floor


def _one_se(rows: Sequence[dict[str, Any]], judged: list[tuple[int, float, float]]) -> int:
    floor = _floor(rows, judged)
    return min((c, i) for i, a, c in judged if a >= floor)[1]


def _lowest_ce(judged: list[tuple[int, float, float]]) -> int:
    return min((c, i) for i, _, c in judged)[1]


def _pick(rows: Sequence[dict[str, Any]], judged: list[tuple[int, float, float]], rule: str) -> int:
    """The position ``rule`` (one of ``WINDOWED``) picks among the judged rows."""
    chosen = _one_se(rows, judged)
    if rule == "one_se_ce":
        lowest = _lowest_ce(judged)
        se = _number(rows[lowest].get(CE_SE))
        if se is not None and rows[chosen][TIE_METRIC] > rows[lowest][TIE_METRIC] + se:
            return lowest
    return chosen


def best(rows: Iterable[dict[str, Any]], rule: SelectConfig) -> dict[str, Any] | None:
    """The row ``rule`` selects among ``rows`` (epochs of a run, or trials at their selected epochs); None when
    no row has the figures it selects by."""
    rows = list(rows)
    judged = _judged(rows) if rule.rule in WINDOWED else None
    if judged is not None:
        return rows[_pick(rows, judged, rule.rule)]
    top, top_score = None, -math.inf
    for row in rows:
        s = score(row, rule.metric, rule.mode)
        if s > top_score:
            top, top_score = row, s
    return top


def ranked(rows: Iterable[dict[str, Any]], rule: SelectConfig) -> list[dict[str, Any]]:
    """The rows that have the figures ``rule`` selects by, best first: what ``best`` selects, then what it
    selects among the rest, and so on (the first among equals stays first)."""
    rest = [r for r in rows if _number(r.get(rule.metric)) is not None]
    out = []
    while rest:
        top = best(rest, rule)
        if top is None:
            break
        out.append(top)
        rest = [r for r in rest if r is not top]
    return out


def contenders(history: Sequence[dict[str, Any]], rule: SelectConfig) -> list[int]:
    """The epochs of ``history`` that ``rule`` may still hand over, whatever epochs come after: the ones whose
    weights a training keeps. Under ``metric``, the best so far; under ``one_se``, the epochs in the tolerance
    window that no other epoch beats on both accuracy (as high or higher) and CE (lower, or equal and earlier):
    an epoch so beaten is never the lowest CE of any window that holds it; under ``one_se_ce``, those and the
    lowest CE so far. Without validation figures: none (the run hands over its last epoch, which it has)."""
    judged = _judged(history) if rule.rule in WINDOWED else None
    if judged is None:
        chosen = best(history, rule)
        return [int(chosen["epoch"])] if chosen is not None and rule.metric in chosen else []
    floor = _floor(history, judged)
    window = sorted(((a, i, c) for i, a, c in judged if a >= floor), key=lambda t: (-t[0], t[2], t[1]))
    out, lowest = [], (math.inf, math.inf)  # from the highest accuracy down: kept while its (CE, position) is the
    for _, i, c in window:                  # lowest yet
        if (c, i) < lowest:
            out.append(int(history[i]["epoch"]))
            lowest = (c, i)
    if rule.rule == "one_se_ce":
        out.append(int(history[_lowest_ce(judged)]["epoch"]))
    return sorted(set(out))


def handed_over(history: Sequence[dict[str, Any]], rule: SelectConfig) -> dict[str, Any]:
    """The epoch's row a run hands over: the one ``rule`` selects when it was validated; without a validation
    split the epoch ``rule.epoch`` (the search's selection), else the last. Empty history: ``{}``."""
    if not history:
        return {}
    chosen = best(history, rule)
    if chosen is not None:
        return chosen
    if rule.epoch is not None:
        return next((r for r in history if int(r["epoch"]) == rule.epoch), history[-1])
    return history[-1]


def describe(rule: SelectConfig, validated: bool) -> str:
    """How a run's epoch was chosen, for a person: ``by validation CE`` or ``the search's selected epoch``."""
    if validated and rule.rule == "one_se":
        return "the lowest validation CE within one standard error of the best validation accuracy"
    if validated and rule.rule == "one_se_ce":
        return ("the lowest validation CE within one standard error of the best validation accuracy, unless the "
                "lowest validation CE is lower by more than its standard error")
    if validated:
        return f"by {NAMES.get(rule.metric, rule.metric)}"
    return "the search's selected epoch: no validation split" if rule.epoch is not None else \
        "the last epoch: no validation split, and no epoch selected by a search"


def stop_epoch(rule: SelectConfig, epochs: int, validated: bool) -> int:
    """How many epochs a run trains: all of them, except without a validation split when the search selected an
    epoch: then up to it, on the schedule of all ``epochs`` (the epochs after it would be thrown away)."""
    return rule.epoch if rule.epoch is not None and not validated else epochs
