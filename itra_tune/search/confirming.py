"""The confirmation stage: after exploring, re-train the best candidates on fresh seeds and choose on the mean.

One seed's validation figure cannot tell close configurations apart: on the search-quality benchmark's tasks the
seeds of one configuration spread as far as the top configurations lie apart (``docs/results/search-quality.md``).
So a share of the budget (``confirm_share`` of ``num_samples``) goes, as in SMAC's intensification, to the
``confirm_candidates`` best trials of the exploration: each is trained again on seeds it has not seen, one
candidate after another from the top, and the answer is the candidate whose selected epochs are best on average
(``itra_tune.selection``'s rule applied to the means). The answer states its certainty: every figure as mean and
standard deviation over the candidate's seeds, and the candidates within the noise of it (their means closer than
the combined standard error), among which production may choose on cost.

The plan (candidates and seeds) is saved beside Tune's state before the first confirmation starts
(``confirmation.json``), and the confirmation runs as its own Tune experiment in the search's folder
(``confirm/``): a resumed search restores it and trains no confirmation twice.
"""

from __future__ import annotations

import json
import math
import statistics
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

from itra_tune import checkpoint, selection, spaces, tracking
from itra_tune.config import UNRANKED

PLAN_FILE = "confirmation.json"
ANSWER_FILE = tracking.ANSWER_ARTIFACT  # the answer, beside the summary and on the MLflow parent run
TIED_TAG = "itra_tune.tied"  # on the parent run: the candidates within the noise of the chosen one
FOLDER = "confirm"  # the confirmation's Tune experiment, inside the search's folder
FIGURES = ("val_acc", "val_ce", "test_acc", "test_ce")
SEED_KEY = "seed"


def applies(space: spaces.Space, objective: str) -> bool:
    """Whether the search confirms: the engine's trials (whose ``seed`` it sets), one objective, not PBT (whose
    trials change configuration as they train), the seed not searched, and a share that buys one training."""
    return (space.trainable is None and objective == "single" and space.scheduler["name"] != "pbt"
            and all(p.key != SEED_KEY for p in space.params) and trainings(space) > 0)


def why_not(space: spaces.Space, objective: str) -> str:
    """Why a search does not confirm (``applies`` is False), for its answer."""
    if objective != "single":
        return "a Pareto search (--objective acc_ce) has no single answer to confirm"
    if space.trainable is not None:
        return "a user trainable sets its own seeds"
    if space.scheduler["name"] == "pbt":
        return "population based training changes its trials' configurations as they train"
    if any(p.key == SEED_KEY for p in space.params):
        return "the space searches the seed itself"
    if space.confirm_share == 0:
        return "confirm_share is 0"
    return (f"{space.num_samples} trials leave no confirmation at confirm_share {space.confirm_share:g} (it takes "
            f"a whole training and leaves two to explore)")


def trainings(space: spaces.Space) -> int:
    """The confirmation's trainings: ``confirm_share`` of ``num_samples``, rounded down, as long as two trials
    are left to explore."""
    t = math.floor(space.confirm_share * space.num_samples + 1e-9)
    return t if space.num_samples - t >= 2 else 0


def exploring(space: spaces.Space, objective: str) -> spaces.Space:
    """The space of the exploration: the budget less the confirmation's trainings."""
    return replace(space, num_samples=space.num_samples - trainings(space)) if applies(space, objective) else space


def plan(ranking: list[dict[str, Any]], space: spaces.Space, path: Path) -> dict[str, Any]:
    """The confirmation's plan, saved in ``path`` (or read back from it: a resumed search keeps its plan).

    ``ranking``: the exploration's ranked trials (``results.ranked``), best first. The candidates are its
    ``confirm_candidates`` best that completed (trials ASHA stopped early only when none did); the trainings go to
    them in turn from the top, each on a seed no trial had.
    """
    saved = path / PLAN_FILE
    if saved.is_file():
        return json.loads(saved.read_text())
    total = trainings(space)
    # a trial stopped early was judged on fewer epochs than its confirmations would train: the completed go first
    full = [r for r in ranking if r["status"] == "completed"] or ranking
    keys = [p.key for p in space.params]
    distinct: dict[tuple[str, ...], dict[str, Any]] = {}  # a configuration sampled twice is one candidate
    for r in full:
        distinct.setdefault(tuple(repr(r.get(k)) for k in keys), r)
    candidates = list(distinct.values())[:min(space.confirm_candidates, total)]
    base_seed = int(space.base.get(SEED_KEY, 0))
    points = []
    for i in range(total if candidates else 0):
        c = candidates[i % len(candidates)]
        points.append({"candidate": c["trial"], SEED_KEY: base_seed + 1 + i,
                       "params": {p.key: c[p.key] for p in space.params if p.key in c}})
    out = {"candidates": [c["trial"] for c in candidates], "base_seed": base_seed, "points": points}
    checkpoint.write_text(saved, json.dumps(out, indent=2, default=str))
    return out


def tune_points(p: dict[str, Any]) -> list[dict[str, Any]]:
    """The plan's trainings as Tune configurations (besides ``base``): the candidate's values and its new seed."""
    return [{**pt["params"], SEED_KEY: pt[SEED_KEY]} for pt in p["points"]]


def confirms(p: dict[str, Any]) -> dict[str, str]:
    """Seed (as text) -> the exploring trial each training confirms."""
    return {str(pt[SEED_KEY]): pt["candidate"] for pt in p["points"]}


def space_of(space: spaces.Space, p: dict[str, Any]) -> spaces.Space:
    """The confirmation's own experiment: the plan's trainings, no early stopping (each runs to the end)."""
    return replace(space, num_samples=len(p["points"]), scheduler={"name": "none"})


def run(space: spaces.Space, ranking: list[dict[str, Any]], epochs: int, path: Path, uri: str, parent: str, *,
        seed: int, max_failures: int, resume: bool, verbose: bool,
        explored: int = 0, elapsed: float = 0.0) -> tuple[dict[str, Any], Any, list[dict[str, Any]]]:
    """Run (or resume) the confirmation of the search in ``path``: its plan, its ResultGrid, its trials' rows.

    ``ranking``: the exploration's ranked trials; ``uri`` and ``parent``: the MLflow parent its trials become
    children of, each tagged with the trial it re-trains (``tracking.CONFIRMS_TAG``); ``explored``: the trials
    the exploration ran and ``elapsed`` its seconds (the live view counts on from there).
    """
    from itra_tune.search import progress, results, tuner

    p = plan(ranking, space, path)
    if not p["points"]:
        return p, None, []
    conf = space_of(space, p)
    view = None if verbose else progress.Progress(conf, epochs, total=explored + len(p["points"]),
                                                   done_before=explored, confirms=confirms(p), elapsed=elapsed)
    if view is not None:
        print(header(p, path.name, resume), flush=True)
    grid = tuner.run_experiment(conf, epochs, FOLDER, path, tuner.TrackingCallback(uri, space.name, parent,
                                                                                   confirms=confirms(p)),
                                objective="single", seed=seed, max_failures=max_failures,
                                resume=resume and (path / FOLDER).is_dir(), points=tune_points(p), progress=view)
    return p, grid, results.trial_rows(grid, conf, epochs)


def after_exploring(summary: dict[str, Any], grid: Any, space: spaces.Space, epochs: int, path: Path, uri: str,
                    parent: str, t0: float, *, seed: int, max_failures: int, resume: bool, verbose: bool) -> Any:
    """The confirmation stage after a finished exploration (its ResultGrid ``grid``, its ``summary``): the
    confirmation's trials counted in the summary, the answer (``summary["answer"]``, answer.json) and the chosen
    candidate as the summary's best; ``t0``: when the search started (``time.perf_counter``). Returns the
    confirmation's ResultGrid (None when it had nothing to confirm)."""
    from itra_tune.search import results

    ranking = results.ranked(results.trial_rows(grid, exploring(space, "single"), epochs), space)
    p, conf_grid, rows = run(space, ranking, epochs, path, uri, parent, seed=seed, max_failures=max_failures,
                             resume=resume, verbose=verbose, explored=summary["trials"],
                             elapsed=time.perf_counter() - t0)
    for status in ("completed", "stopped early", "failed", "collapsed"):
        summary[status] += sum(r["status"].startswith(status) for r in rows)
    cut = sum(r["status"] == "interrupted" for r in rows)
    summary["interrupted_trials"] += cut
    summary["trials"] += len(rows)
    summary["num_samples"] = space.num_samples
    summary["wall_time_s"] = round(time.perf_counter() - t0, 1)
    summary["interrupted"] = len(rows) < len(p["points"]) or cut > 0
    summary["confirmation"] = {"plan": p, "trainings": len(rows), "planned": len(p["points"])}
    summary["answer"] = answer(space, ranking, p, rows)
    if summary["answer"]:
        chosen = next(r for r in ranking if r["trial"] == summary["answer"]["chosen"])
        results.write_best(summary, chosen, space, path)
    save_answer(summary["answer"], path)
    return conf_grid


def header(p: dict[str, Any], name: str, resume: bool) -> str:
    """The confirmation's first line: how many trainings of which candidates."""
    n = len(p["points"])
    return (f"\n{'resuming the confirmation of' if resume else 'confirming'} {name}: {n} training{'s' * (n != 1)} "
            f"of the {len(p['candidates'])} best ({', '.join(p['candidates'])}) on fresh seeds; the answer is the "
            f"best mean over each one's seeds")


def answer(space: spaces.Space, ranking: list[dict[str, Any]], p: dict[str, Any] | None,
           confirmations: list[dict[str, Any]]) -> dict[str, Any]:
    """The search's answer: per candidate its seeds' selected epochs, mean and standard deviation of each figure;
    the chosen one (the best mean by the space's rule, among candidates none of whose seeds failed) and the
    candidates it cannot be told apart from.

    ``ranking``: the exploration's ranked trials; ``p``: the plan (None: no confirmation, the answer is the best
    trial on its one seed); ``confirmations``: the confirmation's trial rows (``results.trial_rows``).
    """
    if not ranking:
        return {}
    names = p["candidates"] if p and p["candidates"] else [ranking[0]["trial"]]
    by_name = {r["trial"]: r for r in ranking}
    of_seed = confirms(p) if p else {}
    seeds: dict[str, list[tuple[int, dict[str, Any]]]] = {n: [(int(space.base.get(SEED_KEY, 0)), by_name[n])]
                                                         for n in names}
    for row in confirmations:
        name = of_seed.get(str(row.get(SEED_KEY)))
        if name in seeds and row["status"] != "interrupted":
            seeds[name].append((int(row[SEED_KEY]), row))
    candidates = [_candidate(n, seeds[n], space) for n in names if n in by_name]
    sound = [c for c in candidates if not c["failed_seeds"]] or candidates
    chosen = selection.best([{**c["mean"], selection.COUNT: c["val_count"], "trial": c["trial"]} for c in sound],
                            space.select)["trial"]
    pooled = _pooled_std([c for c in candidates if not c["failed_seeds"]], space.metric)
    best = next(c for c in candidates if c["trial"] == chosen)
    tied = []
    for c in candidates:
        if c is best or c["failed_seeds"] or pooled is None:
            continue
        gap = abs(c["mean"][space.metric] - best["mean"][space.metric])
        if gap <= pooled * math.sqrt(1 / c["n"] + 1 / best["n"]):
            tied.append(c["trial"])
    return {"metric": space.metric, "mode": space.mode, "chosen": chosen, "seeds": best["n"],
            "confirmed": p is not None and bool(p["points"]), "noise": pooled, "tied": tied,
            "candidates": candidates, "unconfirmed": None if p else why_not(space, "single")}


def save_answer(ans: dict[str, Any], path: Path) -> None:
    """Write ``answer.json`` in the search's folder (atomically), or remove a stale one when there is none."""
    out = path / ANSWER_FILE
    if not ans:
        out.unlink(missing_ok=True)
        return
    checkpoint.write_text(out, json.dumps(ans, indent=2, default=str))


def _candidate(name: str, seeds: list[tuple[int, dict[str, Any]]], space: spaces.Space) -> dict[str, Any]:
    ok = [(s, r) for s, r in seeds if not r["status"].startswith(UNRANKED) and space.metric in r]
    figures = [f for f in dict.fromkeys((space.metric, *FIGURES)) if all(f in r for _, r in ok)] if ok else []
    first = seeds[0][1]
    return {"trial": name, "params": {p.key: first[p.key] for p in space.params if p.key in first},
            "seeds": [s for s, _ in ok], "trials": [r["trial"] for _, r in ok],
            "epochs": [r.get("best_epoch") for _, r in ok], "n": len(ok),
            "val_count": next((r[selection.COUNT] for _, r in ok if selection.COUNT in r), None),
            "failed_seeds": [s for s, r in seeds if (s, r) not in ok],
            "mean": {f: statistics.fmean(r[f] for _, r in ok) for f in figures},
            "std": {f: statistics.stdev(r[f] for _, r in ok) if len(ok) > 1 else None for f in figures}}


def _pooled_std(candidates: list[dict[str, Any]], metric: str) -> float | None:
    """The seeds' standard deviation of ``metric``, pooled over the candidates with two seeds or more."""
    dof = sum(c["n"] - 1 for c in candidates if c["n"] > 1)
    if not dof:
        return None
    return math.sqrt(sum((c["n"] - 1) * c["std"][metric] ** 2 for c in candidates if c["n"] > 1) / dof)


def describe(ans: dict[str, Any], space: spaces.Space) -> list[str]:
    """The answer for a person: the chosen figure as mean ± standard deviation over its seeds, and the tied."""
    if not ans:
        return []
    by_name = {c["trial"]: c for c in ans["candidates"]}
    best = by_name[ans["chosen"]]
    if best["n"] < 2:
        why = f"no confirmation: {ans['unconfirmed']}" if ans.get("unconfirmed") else \
            "its confirmations did not finish"
        return [f"answer: {ans['chosen']} on one seed, no spread known ({why})"]
    lines = [f"answer: {ans['chosen']}, {_figures(best)} (mean ± std over {best['n']} seeds)"]
    for name in ans["tied"]:
        c = by_name[name]
        values = ", ".join(f"{k}={_value(v)}" for k, v in c["params"].items())
        lines.append(f"  tied within the noise: {name} ({values}), {_figures(c)} over {c['n']} seeds")
    if not ans["tied"]:
        others = [c["trial"] for c in ans["candidates"] if c is not best]
        lines.append(f"  no other candidate within the noise (confirmed worse: {', '.join(others)})" if others
                     else "  no other candidate was confirmed")
    return lines


def _figures(c: dict[str, Any]) -> str:
    out = []
    for f in c["mean"]:
        scale, unit, digits = (100, "%", 2) if f.endswith("acc") else (1, "", 4)
        sd = c["std"][f]
        out.append(f"{f} {scale * c['mean'][f]:.{digits}f}{unit}" + (f" ± {scale * sd:.{digits}f}" if sd is not None
                                                                       else ""))
    return "  ".join(out)


def _value(v: Any) -> str:
    return f"{v:.4g}" if isinstance(v, float) else str(v)


def metrics(ans: dict[str, Any]) -> dict[str, float]:
    """The answer as the MLflow parent's metrics: ``answer_<figure>_mean`` and ``_std`` and ``answer_seeds``."""
    if not ans:
        return {}
    best = next(c for c in ans["candidates"] if c["trial"] == ans["chosen"])
    out: dict[str, float] = {"answer_seeds": float(best["n"]), "answer_tied": float(len(ans["tied"]))}
    for f, v in best["mean"].items():
        out[f"answer_{f}_mean"] = v
        if best["std"][f] is not None:
            out[f"answer_{f}_std"] = best["std"][f]
    return out
