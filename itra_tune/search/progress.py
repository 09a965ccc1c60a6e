"""The search's live view on the terminal, in place of Ray Tune's status table.

A line for each trial that ends (how, after how many epochs, its best epoch's figures, its parameters) with the
budget done so far, the best trial so far whenever it changes, and while trials train a status line at most
every minute. What Ray, Optuna and MLflow would print besides (token and study notices, database set-up,
signature checks, Ray's own resume hint) is kept quiet for the search; ``--verbose`` shows it all, with Ray's
table instead of this view.
"""

from __future__ import annotations

import contextlib
import logging
import math
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from ray import tune

from itra_tune import selection, spaces
from itra_tune.config import UNRANKED
from itra_tune.search.trainable import epoch_of

# the loggers a search quiets, and the level each keeps: Ray's warnings include its own resume hint after Ctrl-C
# (the summary prints ours) and a notice of token authentication, which the search turns on itself
QUIET = {"ray": logging.ERROR, "optuna": logging.WARNING, "mlflow": logging.WARNING, "alembic": logging.WARNING}
STATUS_EVERY_S = 60.0


class ReportedHere(logging.Filter):
    """Drops what Tune logs as errors that the view and the summary report themselves: a failed trial's traceback
    (its line says the error; the traceback stays in the trial's error.txt) and the list of trials that did not
    complete."""

    PREFIXES = ("Trial task failed for trial", "Trials did not complete")

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith(self.PREFIXES)


REPORTED_BY = ("ray.tune.execution.tune_controller", "ray.tune.tune")  # the loggers of those two messages


@contextlib.contextmanager
def quiet_libraries() -> Iterator[None]:
    """Ray, Optuna and MLflow print warnings and errors only, and Tune not the errors the view reports, for the
    length of the block; the program's own levels come back after it."""
    before = {name: logging.getLogger(name).level for name in QUIET}
    for name, level in QUIET.items():
        logger = logging.getLogger(name)
        logger.setLevel(max(level, logger.level))
    reported = ReportedHere()
    for name in REPORTED_BY:
        logging.getLogger(name).addFilter(reported)
    try:
        yield
    finally:
        for name, level in before.items():
            logging.getLogger(name).setLevel(level)
        for name in REPORTED_BY:
            logging.getLogger(name).removeFilter(reported)


def header(space: spaces.Space, epochs: int, name: str, resume: bool, objective: str = "single",
           confirming: int = 0) -> str:
    """The search's first line: what runs, for how long, ranked how (``acc_ce``: on both objectives);
    ``confirming``: the trainings of the confirmation that follows (``space`` is the exploration's)."""
    ranked = "val_acc (max) and val_ce (min), a Pareto front" if objective == "acc_ce" else \
        f"{space.metric} ({space.mode})"
    then = f" then {confirming} confirming the best on fresh seeds," if confirming else ""
    return (f"{'resuming' if resume else 'searching'} {name}: {space.num_samples} trials,{then} "
            f"{space.max_concurrent} at a "
            f"time, up to {epochs} epochs each, ranked on {ranked}, scheduler {space.scheduler['name']}; Ctrl-C stops "
            f"and keeps what finished")


def clock(seconds: float) -> str:
    """``m:ss``, or ``h:mm:ss`` from an hour."""
    m, s = divmod(int(seconds), 60)
    h, m = divmod(m, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m}:{s:02d}"


def figure(name: str, value: Any) -> str:
    """A metric as the summary shows it: accuracies in percent, the rest to 4 significant digits."""
    if not isinstance(value, (int, float)):
        return f"{name} {value}"
    return f"{name} {100 * value:.2f}%" if name.endswith("acc") else f"{name} {value:.4g}"


class Progress(tune.Callback):
    """Tune callback printing the live view. Plain data only: it pickles into Tune's experiment state, and a
    resumed search goes on counting from where the killed one stopped."""

    def __init__(self, space: spaces.Space, epochs: int, every: float = STATUS_EVERY_S, total: int | None = None,
                 done_before: int = 0, confirms: dict[str, str] | None = None, elapsed: float = 0.0) -> None:
        """``total``: the budget the bar counts (default the space's trials), ``done_before`` of it spent before
        this experiment, ``elapsed`` the seconds the search ran before it (the clock counts on); ``confirms``: a
        confirmation's trials, seed (as text) -> the trial each re-trains."""
        self.metric, self.mode, self.epochs, self.every = space.metric, space.mode, epochs, every
        self.total, self.done_before, self.confirms = total or space.num_samples, done_before, confirms or {}
        # the engine's accuracy and CE side by side (whichever ranks first); a user trainable's metric alone
        self.shown = [self.metric] + ([m for m in ("val_ce", "val_acc") if m != self.metric][:1]
                                      if not space.trainable else [])
        short = [p.key.rsplit(".", 1)[-1] for p in space.params]
        self.params = {p.key: (s if short.count(s) == 1 else p.key) for p, s in zip(space.params, short)}
        self.rule = space.select
        self.keys = list(dict.fromkeys([*self.shown, "val_acc", "val_ce", selection.COUNT,  # what the rule reads
                                         selection.CE_SE]))
        self.ended: dict[str, str] = {}  # trial id -> how it ended
        self.runs: dict[str, list[dict[str, Any]]] = {}  # trial id -> its epochs' figures
        self.ranking: dict[str, dict[str, Any]] = {}  # trial name -> its selected epoch, for the ended that rank
        self.best: str | None = None  # the best ended trial, by the rule
        self._t0 = self._last = 0.0
        self._elapsed = elapsed

    def setup(self, **info: Any) -> None:
        self._last = time.monotonic()
        # a view restored from the snapshot of a search started before views kept their elapsed time has none
        self._t0 = self._last - getattr(self, "_elapsed", 0.0)

    def get_state(self) -> dict[str, Any]:  # saved with Tune's snapshots: a resumed search counts on
        return {"ended": self.ended, "runs": self.runs, "ranking": self.ranking, "best": self.best}

    def set_state(self, state: dict[str, Any]) -> None:
        # a snapshot of a search started before the view kept every epoch: its counts go on, its figures do not
        self.ended, self.runs = state["ended"], state.get("runs", {})
        self.ranking, self.best = state.get("ranking", {}), (state.get("best") if "runs" in state else None)

    def on_trial_result(self, iteration: int, trials: list, trial: Any, result: dict, **info: Any) -> None:
        row = {k: result[k] for k in self.keys if isinstance(result.get(k), (int, float))}
        if self.metric in row and math.isfinite(row[self.metric]):
            e = epoch_of(result)  # a retried trial reports its epochs again from its checkpoint
            rows = [r for r in self.runs.get(trial.trial_id, []) if r["epoch"] < e]
            self.runs[trial.trial_id] = [*rows, {**row, "epoch": e}]
        if time.monotonic() - self._last >= self.every:
            self.status(trials)

    def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        epoch = epoch_of(trial.last_result or {})
        self.end(trial, "completed" if epoch >= self.epochs else f"stopped at epoch {epoch}")

    def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self.runs.pop(trial.trial_id, None)  # a failed or collapsed trial never ranks
        self.end(trial, error_line(trial))

    def end(self, trial: Any, how: str) -> None:
        self.ended.pop(trial.trial_id, None)  # a retried trial (--max-failures) ends once more
        self.ended[trial.trial_id] = how
        name, top = f"trial_{trial.trial_id}", selection.best(self.runs.get(trial.trial_id, []), self.rule)
        line = f"{self.counter()}  {clock(self.elapsed)}  {name} {how}"
        if top:
            line += "  " + "  ".join(figure(m, top[m]) for m in self.shown if m in top) + f" (epoch {top['epoch']})"
        line += "".join(f"  {short}={_value(trial.config[key])}" for key, short in self.params.items()
                        if key in (trial.config or {}))
        confirmed = self.confirms.get(str((trial.config or {}).get("seed")))
        if confirmed:  # the best of the confirmation alone would say nothing: the answer is on the means
            line += f"  seed {trial.config['seed']}, confirming {confirmed}"
        elif top and not how.startswith(UNRANKED):
            self.ranking[name] = {**top, "trial": name}
            best = selection.best(self.ranking.values(), self.rule)["trial"]
            if best == name and best != self.best:
                line += "  <- best so far"
            self.best = best
        self.say(line)

    def status(self, trials: list) -> None:
        running = [f"trial_{t.trial_id} epoch {epoch_of(t.last_result or {})}/{self.epochs}"
                   for t in trials if t.status == "RUNNING"]
        self.say(f"{'':{len(self.counter())}}  {clock(self.elapsed)}  running: {', '.join(running) or 'none'}"
                 + (f"; best so far {self.best}" if self.best else ""))

    def counter(self) -> str:
        """The budget done, as a bar and a count: ``[###-------] 3/8``."""
        done = self.done_before + len(self.ended)
        filled = round(10 * min(done, self.total) / max(self.total, 1))
        return f"[{'#' * filled}{'-' * (10 - filled)}] {done:>{len(str(self.total))}}/{self.total}"

    @property
    def elapsed(self) -> float:
        return time.monotonic() - self._t0

    def say(self, line: str) -> None:
        self._last = time.monotonic()
        print(line, flush=True)


def error_line(trial: Any) -> str:
    """How an errored trial ended, in one line: its collapse with the numbers, else ``failed: <the error>``."""
    text = ""
    with contextlib.suppress(OSError, TypeError):
        text = Path(trial.error_file).read_text()
    lines = [ln.strip() for ln in text.strip().splitlines() if ln.strip()]
    last = lines[-1] if lines else "see its error.txt"
    if "Collapsed: " in last:
        return last.partition("Collapsed: ")[2][:160]
    return "failed: " + last[:160]


def _value(v: Any) -> str:
    return f"{v:.3g}" if isinstance(v, float) else str(v)
