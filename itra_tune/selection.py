"""One notion of best: the epoch a run hands over and the trial a search selects.

The rule is a validation metric and its mode (a space's ``metric`` and ``mode``, a configuration's ``select``),
ties going to the lower validation CE, then to the earlier epoch (or the earlier trial). Every consumer takes it
from here: a trial's kept checkpoint (Tune ranks checkpoints by ``score``), the search's ranking, summary and
MLflow record (so ``best_config`` and ``load_best_model``), ``itra_tune.train`` (``best.pt``), ``--full-train``,
the pipelines and the search-quality benchmark.

Without a validation split nothing can be selected: a run hands over the epoch its search selected
(``select.epoch``, which ``best_config`` carries), else its last epoch.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from typing import Any

from itra_tune.config import SelectConfig

TIE_METRIC = "val_ce"  # what breaks a tie of the selecting metric
NAMES = {"val_ce": "validation CE", "val_acc": "validation accuracy"}
_TIE_WEIGHT = 1e-9  # small enough never to reorder distinct values of a metric, large enough to order equal ones


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        return None
    return float(value)


def score(metrics: dict[str, Any], metric: str, mode: str) -> float:
    """How good an epoch is, larger better: ``metric`` signed by ``mode``, ties to the lower validation CE.

    One number per epoch, so that the epoch a search selects and the checkpoint Tune keeps for it are the same.
    An epoch without the metric (or with a NaN or infinite one) scores ``-inf``: it never wins.
    """
    value = _number(metrics.get(metric))
    if value is None:
        return -math.inf
    sign = 1.0 if mode == "max" else -1.0
    tie = _number(metrics.get(TIE_METRIC)) if metric != TIE_METRIC else None
    return sign * value - _TIE_WEIGHT * (tie or 0.0)


def best(rows: Iterable[dict[str, Any]], metric: str, mode: str) -> dict[str, Any] | None:
    """The best of ``rows`` (epochs of a run, or trials) by ``score``, the first among equals; None when no row
    has the metric."""
    top, top_score = None, -math.inf
    for row in rows:
        s = score(row, metric, mode)
        if s > top_score:
            top, top_score = row, s
    return top


def ranked(rows: Iterable[dict[str, Any]], metric: str, mode: str) -> list[dict[str, Any]]:
    """The rows that have the metric, best first (a stable sort: the first among equals stays first)."""
    scored = [r for r in rows if _number(r.get(metric)) is not None]
    return sorted(scored, key=lambda r: score(r, metric, mode), reverse=True)


def handed_over(history: Sequence[dict[str, Any]], rule: SelectConfig) -> dict[str, Any]:
    """The epoch's row a run hands over: the best by ``rule`` when it was validated; without a validation split
    the epoch ``rule.epoch`` (the search's selection), else the last. Empty history: ``{}``."""
    if not history:
        return {}
    chosen = best(history, rule.metric, rule.mode)
    if chosen is not None:
        return chosen
    if rule.epoch is not None:
        return next((r for r in history if int(r["epoch"]) == rule.epoch), history[-1])
    return history[-1]


def describe(rule: SelectConfig, validated: bool) -> str:
    """How a run's epoch was chosen, for a person: ``by validation CE`` or ``the search's selected epoch``."""
    if validated:
        return f"by {NAMES.get(rule.metric, rule.metric)}"
    return "the search's selected epoch: no validation split" if rule.epoch is not None else \
        "the last epoch: no validation split, and no epoch selected by a search"


def stop_epoch(rule: SelectConfig, epochs: int, validated: bool) -> int:
    """How many epochs a run trains: all of them, except without a validation split when the search selected an
    epoch: then up to it, on the schedule of all ``epochs`` (the epochs after it would be thrown away)."""
    return rule.epoch if rule.epoch is not None and not validated else epochs
