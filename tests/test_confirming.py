"""The confirmation stage: the best candidates re-trained on fresh seeds, the answer on the mean with its spread and
the candidates within the noise; its plan, its trials in MLflow, its resume."""

from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import mlflow
import pytest

import itra_tune
from itra_tune import cli, spaces, tracking
from itra_tune.search import confirming
from itra_tune.search.command import main

SPACE = spaces.Space(name="s", path=Path("s.yaml"), base={"seed": 0},
                     params=(spaces.Param("loss.lam", "float", 0.0, 1.0),), metric="val_ce", mode="min",
                     num_samples=8, confirm_share=0.25, confirm_candidates=2)


def _row(trial, lam, val_ce, status="completed", seed=None, **figures):
    row = {"trial": trial, "loss.lam": lam, "status": status, "val_ce": val_ce, "val_acc": 1 - val_ce,
           "test_acc": 1 - val_ce, "test_ce": val_ce, "best_epoch": 2, **figures}
    return row if seed is None else {**row, "seed": seed}


@pytest.mark.parametrize(("num_samples", "share", "trainings"), [(8, 0.25, 2), (16, 0.25, 4), (4, 0.25, 1),
                                                                  (3, 0.25, 0), (4, 0.5, 2), (3, 0.5, 1), (2, 0.5, 0),
                                                                  (8, 0, 0)])
def test_the_share_of_the_budget_leaves_two_trials_to_explore(num_samples, share, trainings):
    space = replace(SPACE, num_samples=num_samples, confirm_share=share)
    assert confirming.trainings(space) == trainings
    assert confirming.exploring(space, "single").num_samples == num_samples - trainings
    assert confirming.applies(space, "single") == (trainings > 0)
    assert not confirming.applies(space, "acc_ce") and not confirming.applies(replace(space, scheduler={"name": "pbt"}),
                                                                               "single")


def test_the_plan_confirms_distinct_completed_candidates_in_turn_and_is_kept(tmp_path):
    ranking = [_row("t_stopped", 0.3, 0.10, status="stopped early"), _row("t_a", 0.5, 0.20),
               _row("t_a_again", 0.5, 0.21), _row("t_b", 0.1, 0.30)]
    space = replace(SPACE, num_samples=12, confirm_share=0.34, base={"seed": 7})  # 4 trainings, 2 candidates
    p = confirming.plan(ranking, space, tmp_path)
    # the trial stopped early was judged on fewer epochs; the same configuration sampled twice is one candidate
    assert p["candidates"] == ["t_a", "t_b"]
    assert [(pt["candidate"], pt["seed"]) for pt in p["points"]] == [("t_a", 8), ("t_b", 9), ("t_a", 10), ("t_b", 11)]
    assert confirming.tune_points(p)[1] == {"loss.lam": 0.1, "seed": 9}
    # a resumed search keeps its plan, whatever the ranking says now
    assert confirming.plan(list(reversed(ranking)), space, tmp_path) == p


def test_the_answer_is_the_best_mean_with_its_spread_and_names_the_candidates_within_the_noise():
    space = replace(SPACE, num_samples=10, confirm_share=0.4)  # 4 trainings
    ranking = [_row("a", 0.5, 0.20), _row("b", 0.1, 0.21), _row("c", 0.9, 0.50)]
    p = {"candidates": ["a", "b"], "base_seed": 0,
         "points": [{"candidate": c, "seed": s, "params": {}} for c, s in (("a", 1), ("b", 2), ("a", 3), ("b", 4))]}
    # a was lucky on its first seed: on the mean b is better, by less than the seeds' spread
    confirmations = [_row("x1", 0.5, 0.30, seed=1), _row("x2", 0.1, 0.22, seed=2), _row("x3", 0.5, 0.28, seed=3),
                     _row("x4", 0.1, 0.23, seed=4)]
    ans = confirming.answer(space, ranking, p, confirmations)
    by = {c["trial"]: c for c in ans["candidates"]}
    assert ans["chosen"] == "b" and ans["seeds"] == 3 and ans["confirmed"]
    assert by["b"]["mean"]["val_ce"] == pytest.approx(0.22) and by["b"]["std"]["val_ce"] == pytest.approx(0.01)
    assert by["a"]["mean"]["val_ce"] == pytest.approx(0.26) and by["a"]["seeds"] == [0, 1, 3]
    # the seeds' spread pooled, sqrt((2 * 0.01^2 + 2 * 0.0529^2) / 4) = 0.038: the gap of the means, 0.04, is
    # beyond their combined standard error, 0.038 * sqrt(1/3 + 1/3) = 0.031; a is confirmed worse
    assert ans["tied"] == [] and ans["noise"] == pytest.approx(0.03807, rel=1e-3)
    lines = confirming.describe(ans, space)
    assert lines[0].startswith("answer: b, val_ce 0.2200 ± 0.0100") and "(mean ± std over 3 seeds)" in lines[0]
    assert "confirmed worse: a" in lines[1]
    # a nearer b: 0.01 apart, within 0.02 * sqrt(2/3) = 0.016; named with its values and figures
    confirmations[0], confirmations[2] = _row("x1", 0.5, 0.25, seed=1), _row("x3", 0.5, 0.24, seed=3)
    ans = confirming.answer(space, ranking, p, confirmations)
    assert ans["chosen"] == "b" and ans["tied"] == ["a"] and ans["noise"] == pytest.approx(0.02)
    lines = confirming.describe(ans, space)
    assert lines[1] == "  tied within the noise: a (loss.lam=0.5), val_ce 0.2300 ± 0.0265  val_acc 77.00% ± 2.65  " \
                       "test_acc 77.00% ± 2.65  test_ce 0.2300 ± 0.0265 over 3 seeds"
    assert confirming.metrics(ans)["answer_val_ce_mean"] == pytest.approx(0.22)
    assert confirming.metrics(ans)["answer_tied"] == 1 and confirming.metrics(ans)["answer_seeds"] == 3


def test_a_candidate_with_a_failed_seed_is_not_chosen_and_one_seed_says_why_there_is_no_spread():
    space = replace(SPACE, num_samples=8)
    ranking = [_row("a", 0.5, 0.20), _row("b", 0.1, 0.25)]
    p = {"candidates": ["a", "b"], "base_seed": 0,
         "points": [{"candidate": "a", "seed": 1, "params": {}}, {"candidate": "b", "seed": 2, "params": {}}]}
    failed = {"trial": "x1", "loss.lam": 0.5, "status": "failed: RuntimeError: out of memory", "seed": 1}
    ans = confirming.answer(space, ranking, p, [failed, _row("x2", 0.1, 0.26, seed=2)])
    assert ans["chosen"] == "b" and [c["failed_seeds"] for c in ans["candidates"]] == [[1], []]
    alone = confirming.answer(replace(space, confirm_share=0), ranking, None, [])
    assert alone["chosen"] == "a" and alone["seeds"] == 1 and not alone["confirmed"]
    assert confirming.describe(alone, space) == ["answer: a on one seed, no spread known (no confirmation: "
                                                 "confirm_share is 0)"]


def _epochs(trial_dir):
    """The epochs a trial has reported (its result.json), in order."""
    f = trial_dir / "result.json"
    lines = f.read_text().splitlines() if f.is_file() else []
    return [json.loads(line)["epoch"] for line in lines if line.strip()]


def _children(uri, parent):
    c = mlflow.MlflowClient(uri)
    exp = c.get_run(parent).info.experiment_id
    return c.search_runs([exp], f"tags.`mlflow.parentRunId` = '{parent}'")


@pytest.mark.slow
def test_a_search_confirms_its_best_and_hands_over_the_answer_with_its_certainty(ray_local, space_file, tmp_path,
                                                                                capsys, mlflow_server):
    space = space_file(name="confirmed", budget={"num_samples": 5, "max_concurrent": 2, "confirm_share": 0.4,
                                                 "confirm_candidates": 2})
    code = cli.run("python -m itra_tune.search", main, ["--space", str(space), "--storage-path", str(tmp_path / "st"),
                                                        "--name", "conf", "--tracking-uri", mlflow_server])
    out = capsys.readouterr().out
    assert code == 0, out
    exp = tmp_path / "st" / "conf"
    summary = json.loads((exp / "summary.json").read_text())
    assert summary["trials"] == summary["num_samples"] == 5 and summary["completed"] == 5
    ans = summary["answer"]
    plan = summary["confirmation"]["plan"]
    assert len(plan["points"]) == 2 and len(plan["candidates"]) == 2 and [pt["seed"] for pt in plan["points"]] == [1, 2]
    chosen = next(c for c in ans["candidates"] if c["trial"] == ans["chosen"])
    assert chosen["n"] == 2 and chosen["seeds"] in ([0, 1], [0, 2]) and summary["best"]["trial"] == ans["chosen"]
    assert summary["best_config"]["loss"]["lam"] == pytest.approx(chosen["params"]["loss.lam"])
    # the view counts one budget; the summary prints the answer as mean ± std and what it could not tell apart
    bars = [line.split() for line in out.splitlines() if re.match(r"\[[#-]{10}\] ", line)]
    assert [b[1] for b in bars] == ["1/5", "2/5", "3/5", "4/5", "5/5"], out
    clock = [int(m) * 60 + int(s) for m, s in (b[2].split(":") for b in bars)]
    assert clock == sorted(clock), out  # the clock counts on through the confirmation
    assert "then 2 confirming the best on fresh seeds" in out and "confirming conf: 2 trainings of the 2 best" in out
    assert ("seed 1, confirming " + plan["candidates"][0]) in out
    printed = [line for line in out.splitlines() if line.startswith("answer: ")]
    assert printed == confirming.describe(ans, spaces.load(space))[:1]
    assert " ± " in printed[0] and "(mean ± std over 2 seeds)" in printed[0]
    # MLflow: the confirmations are children of the search's parent, tagged with the trial each re-trains
    parent = summary["tracking"]["parent_run_id"]
    runs = _children(mlflow_server, parent)
    tagged = {r.data.tags[tracking.CONFIRMS_TAG]: r for r in runs if tracking.CONFIRMS_TAG in r.data.tags}
    assert len(runs) == 5 and sorted(tagged) == sorted(plan["candidates"])
    assert {r.data.params["seed"] for r in tagged.values()} == {"1", "2"}
    p = mlflow.MlflowClient(mlflow_server).get_run(parent)
    assert p.data.metrics["answer_val_ce_mean"] == pytest.approx(chosen["mean"]["val_ce"])
    assert p.data.metrics["answer_val_ce_std"] == pytest.approx(chosen["std"]["val_ce"])
    assert p.data.tags[confirming.TIED_TAG] == (",".join(ans["tied"]) or "none")
    # production: best_config is the chosen candidate, best_answer carries its figures over its seeds and the tied
    answer = itra_tune.best_answer("confirmed", tracking_uri=mlflow_server)
    assert answer.search == "conf" and answer.trial == ans["chosen"] and answer.seeds == 2 and answer.confirmed
    assert answer.mean["val_ce"] == pytest.approx(chosen["mean"]["val_ce"]) and answer.std["val_ce"] > 0
    assert [t["trial"] for t in answer.tied] == ans["tied"]
    assert answer.config.loss.lam == itra_tune.best_config("confirmed", tracking_uri=mlflow_server).loss.lam
    assert str(answer).startswith(f"conf: {ans['chosen']}, val_ce ")


@pytest.mark.slow
def test_a_search_interrupted_while_confirming_resumes_without_training_a_confirmation_twice(space_file, tmp_path):
    # the interrupt follows the search's own progress: the line of the first confirmation's end, while the second
    # trains its 3 epochs of 600 steps
    space = space_file(name="resumed", budget={"num_samples": 4, "max_concurrent": 1, "confirm_share": 0.5},
                       base={"data": {"name": "synthetic", "batch_size": 4}, "model": {"name": "mlp"},
                             "loss": {"name": "itra", "lam": 0.5}, "optim": {"lr": 0.01}, "train": {"epochs": 3,
                                                                              "compactness_samples": 64}})
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    args = [sys.executable, "-m", "itra_tune.search", "--space", str(space), "--storage-path", str(tmp_path / "st"),
            "--name", "r", "--tracking-uri", uri]
    exp = tmp_path / "st" / "r"
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    seen = []
    for line in proc.stdout:  # Tune buffers result.json; the driver's own view prints each trial's end at once
        seen.append(line)
        if re.match(r"\[[#-]{10}\] 3/4 .*confirming", line):
            proc.send_signal(signal.SIGINT)
            break
    out, err = proc.communicate(timeout=300)
    out = "".join(seen) + out
    assert proc.returncode == 130, out[-2000:] + err[-2000:]
    summary = json.loads((exp / "summary.json").read_text())
    assert summary["interrupted"] and summary["confirmation"]["planned"] == 2
    plan = json.loads((exp / confirming.PLAN_FILE).read_text())
    again = subprocess.run(args + ["--resume"], capture_output=True, text=True, timeout=600)
    assert again.returncode == 0, again.stdout[-2000:] + again.stderr[-2000:]
    assert "resuming the confirmation of r" in again.stdout
    summary = json.loads((exp / "summary.json").read_text())
    assert not summary["interrupted"] and summary["trials"] == 4 and summary["completed"] == 4
    assert json.loads((exp / confirming.PLAN_FILE).read_text()) == plan
    # each planned confirmation trained once: one trial folder each, every epoch reported once
    trials = sorted((exp / "confirm").glob("trial_*"))
    assert len(trials) == 2
    for d in trials:
        assert _epochs(d) == [1, 2, 3], d.name
    seeds = [json.loads((d / "params.json").read_text())["seed"] for d in trials]
    assert sorted(seeds) == [pt["seed"] for pt in plan["points"]]
    runs = _children(uri, summary["tracking"]["parent_run_id"])
    assert sorted(r.data.tags.get(tracking.CONFIRMS_TAG, "") for r in runs if tracking.CONFIRMS_TAG in r.data.tags) \
        == sorted(pt["candidate"] for pt in plan["points"])
    assert summary["answer"]["seeds"] == 2
