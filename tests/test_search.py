"""``python -m itra_tune.search`` (``search.run`` behind its command line) on a real local Ray: end to end,
failures, bad input, resume, clusters."""

from __future__ import annotations

import csv
import json
import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from itra_tune import cli, spaces
from itra_tune.search.command import main, parser

PROG = "python -m itra_tune.search"


def _search(args):
    return cli.run(PROG, main, [str(a) for a in args])


def _trials(path: Path) -> list[dict]:
    with open(path / "trials.csv") as f:
        return list(csv.DictReader(f))


def _progress(trial_dir: Path) -> list[dict]:
    lines = (trial_dir / "result.json").read_text().splitlines() if (trial_dir / "result.json").exists() else []
    return [json.loads(line) for line in lines if line.strip()]


def test_four_trial_search_end_to_end(ray_local, space_file, tmp_path, capsys):
    space = space_file()
    code = _search(["--space", space, "--storage-path", tmp_path / "st", "--name", "e2e", "--seed", "3"])
    out = capsys.readouterr().out
    assert code == 0
    exp = tmp_path / "st" / "e2e"
    summary = json.loads((exp / "summary.json").read_text())
    assert summary["trials"] == 4 and summary["completed"] == 4 and summary["failed"] == 0
    # a space that names no metric selects as a configuration does: the trial whose best epoch has the lowest
    # validation CE
    per_trial = {}
    for d in exp.glob("trial_*"):
        rows = _progress(d)
        assert [r["epoch"] for r in rows] == [1, 2]
        per_trial[d.name] = min((r["val_ce"], r["epoch"]) for r in rows)
    assert len(per_trial) == 4
    best_name = min(per_trial, key=per_trial.get)
    assert summary["best"]["trial"] == best_name and summary["metric"] == "val_ce"
    assert summary["best"]["val_ce"] == pytest.approx(per_trial[best_name][0])
    assert summary["best"]["best_epoch"] == per_trial[best_name][1] == summary["best_config"]["select"]["epoch"]
    assert (exp / "best_config.yaml").read_text().count("lam:") == 1
    assert "4 completed, 0 stopped early, 0 failed" in out and "best trial " + best_name in out
    # the live view: a line as each trial ends, the best so far marked, and no table of Ray's
    ended = [line for line in out.splitlines() if re.match(r"\[[#-]{10}\] [1-4]/4 ", line)]
    assert [line.split()[1] for line in ended] == ["1/4", "2/4", "3/4", "4/4"]
    assert all(" completed  val_ce " in line and " val_acc " in line and " lam=" in line for line in ended), ended
    assert ended[0].endswith("<- best so far") and "== Status ==" not in out
    lams = {float(r["loss.lam"]) for r in _trials(exp)}
    assert len(lams) == 4 and all(0.1 <= v <= 1.0 for v in lams)

    # the Optuna study is stored in the experiment's folder, where optuna.load_study and optuna-dashboard read it
    import optuna

    url = f"sqlite:///{exp / 'optuna.db'}"
    dashboard = f"{cli.command('pip')} install optuna-dashboard && {cli.command('optuna-dashboard')} {url}"
    assert summary["optuna"] == {"storage": url, "study": "e2e", "dashboard": dashboard}
    assert f"  browse: {dashboard}\n" in out
    study = optuna.load_study(study_name="e2e", storage=url)
    done = study.get_trials(states=(optuna.trial.TrialState.COMPLETE,))
    assert sorted(t.params["loss.lam"] for t in done) == sorted(lams)

    # a new search starts from it: its trials seed the sampler, its best configuration runs first (and --verbose
    # shows Ray's table instead of the live view)
    assert _search(["--space", space, "--storage-path", tmp_path / "st", "--name", "again", "--warm-start", "e2e",
                    "--num-samples", "2", "--seed", "4", "--verbose"]) == 0
    again = optuna.load_study(study_name="again", storage=f"sqlite:///{tmp_path / 'st' / 'again' / 'optuna.db'}")
    copied = [t for t in again.trials if t.user_attrs.get("warm_start_from") == "e2e"]
    assert sorted(t.params["loss.lam"] for t in copied) == sorted(lams)
    new = [t for t in again.trials if t not in copied]
    assert len(new) == 2 and any(t.params == study.best_trial.params for t in new)  # the best, evaluated again
    out = capsys.readouterr().out
    assert "started from 4 trials of 'e2e'" in out
    assert "== Status ==" in out and not re.search(r"^\[[#-]{10}\] ", out, re.M)


def test_the_pairing_of_s2_is_searched_like_any_other_key(ray_local, space_file, tmp_path):
    space = space_file(name="pairings", search={
        "data.pairing": {"type": "categorical", "choices": ["independent", "detached", "memory"]},
        "loss.lam": {"type": "float", "low": 0.1, "high": 1.0}},
        budget={"num_samples": 4, "max_concurrent": 2})
    assert _search(["--space", space, "--storage-path", tmp_path / "st", "--name", "p", "--seed", "1"]) == 0
    rows = _trials(tmp_path / "st" / "p")
    assert [r["status"] for r in rows] == ["completed"] * 4
    assert len({r["data.pairing"] for r in rows}) >= 2 and all(float(r["match_loss"]) > 0 for r in rows)


@pytest.mark.slow
def test_trials_of_two_data_parallel_workers_track_and_log_their_model(ray_local, tmp_path):
    from mlflow import MlflowClient

    from itra_tune import search, tracking

    uri = f"sqlite:///{tmp_path / 'm.db'}"
    # seed 4 samples batch 32 (64 rows a step over the two workers): two smoke epochs are enough to learn
    [summary] = search.run("demo", smoke=True, workers_per_trial=2, num_samples=2, max_concurrent=1, seed=4,
                           storage_path=str(tmp_path / "st"), name="w", tracking_uri=uri, scheduler="none")
    assert summary["completed"] == 2 and summary["best"]["val_acc"] > 0.5
    assert summary["best_config"]["train"]["workers_per_trial"] == 2
    c = MlflowClient(uri)
    runs = c.search_runs([c.get_experiment_by_name("demo").experiment_id])
    parent = next(r for r in runs if r.data.tags.get("itra_tune.role") == "search")
    children = [r for r in runs if r.data.tags.get(tracking.PARENT_TAG) == parent.info.run_id]
    assert parent.data.params["workers_per_trial"] == "2"
    assert len(children) == 2 and all(r.data.params["train.workers_per_trial"] == "2" for r in children)
    # rank 0's checkpoints live in each trial's Ray Train run; the best one became the trial's MLflow model
    assert len(list((tmp_path / "st" / "w").glob("trial_*-workers/checkpoint_*"))) >= 2
    assert summary["tracking"]["best_model_id"]


@pytest.mark.slow
def test_a_data_parallel_trial_resumes_from_its_workers_checkpoint(space_file, tmp_path):
    space = space_file(budget={"num_samples": 1, "max_concurrent": 1}, scheduler={"name": "none"},
                       resources={"cpus_per_trial": 1, "workers_per_trial": 2},
                       base={"data": {"name": "synthetic", "batch_size": 32, "subset": 1280},
                             "model": {"name": "mlp"}, "loss": {"name": "itra_c"},
                             "train": {"epochs": 4, "compactness_samples": 64}})
    base = [sys.executable, "-m", "itra_tune.search", "--space", str(space), "--storage-path", str(tmp_path / "st"),
            "--name", "w", "--tracking-uri", f"sqlite:///{tmp_path / 'mlflow.db'}"]
    exp = tmp_path / "st" / "w"
    proc = _start_and_wait(base, exp, epochs_done=1)
    deadline = time.time() + 120  # the workers' run has recorded a checkpoint it can restore
    while not list(exp.glob("trial_*-workers/checkpoint_manager_snapshot.json")) and time.time() < deadline:
        time.sleep(0.5)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    [trial] = [d for d in exp.glob("trial_*") if not d.name.endswith("-workers")]
    before = {r["epoch"]: r["epoch_time"] for r in _progress(trial)}
    resumed = subprocess.run(base + ["--resume"], capture_output=True, text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-3000:]
    # Tune restarts the trial (its checkpoints are the Train run's) with a fresh result file; the workers go on
    # from their latest checkpoint and first report again the epochs it holds, as they were (same epoch times)
    after = {r["epoch"]: r["epoch_time"] for r in _progress(trial)}
    assert sorted(after) == [1, 2, 3, 4], after
    kept = [e for e in before if e in after and after[e] == before[e]]
    assert kept and kept[0] == 1, f"the workers ran from scratch again: {before} then {after}"
    assert json.loads((exp / "summary.json").read_text())["completed"] == 1


@pytest.mark.slow
def test_population_based_training_exploits_and_mutates_lambda_mid_trial(ray_local, space_file, tmp_path):
    from itra_tune import search

    space = space_file(name="pbt", search={
        "loss.lam": {"type": "float", "low": 0.05, "high": 2.0, "log": True},
        "optim.lr": {"type": "float", "low": 0.01, "high": 0.2, "log": True},
        "data.batch_size": {"type": "categorical", "choices": [32, 64]}},
        # synchronous: each interval ranks the whole population, so a busy machine cannot leave one trial
        # finished before the others report (and nobody exploited)
        budget={"num_samples": 4, "max_concurrent": 4},
        scheduler={"name": "pbt", "perturbation_interval": 2, "synch": True},
        base={"data": {"name": "synthetic", "batch_size": 32, "subset": 640}, "model": {"name": "mlp"},
              "loss": {"name": "itra_c", "lam": 0.5}, "optim": {"lr": 0.05},
              "train": {"epochs": 4, "compactness_samples": 64}})
    [summary] = search.run(space, storage_path=str(tmp_path / "st"), name="pbt", cpus_per_trial=0.5)
    assert summary["completed"] == 4
    exploits = [json.loads(line) for f in (tmp_path / "st" / "pbt").rglob("pbt_global.txt")
                for line in f.read_text().splitlines()]
    assert exploits, "no trial was exploited"
    # a trial that took over another's checkpoint trains on with mutated lambda: its reported lambda changes
    histories = [json.loads(line) for f in (tmp_path / "st" / "pbt").glob("trial_*/result.json")
                 for line in f.read_text().splitlines()]
    lams_by_trial: dict[str, list[float]] = {}
    for h in histories:
        lams_by_trial.setdefault(h["trial_id"], []).append(h["lam"])
    assert any(len(set(lams)) > 1 for lams in lams_by_trial.values()), lams_by_trial
    for lams in lams_by_trial.values():
        assert all(0.05 <= v <= 2.0 for v in lams)


def test_diverging_trial_is_failed_never_best(ray_local, space_file, tmp_path, capsys):
    space = space_file(search={"optim.lr": {"type": "categorical", "choices": [0.05, 1.0e12]}},
                       base={"data": {"name": "synthetic", "batch_size": 32, "subset": 320}, "model": {"name": "mlp"},
                             "loss": {"name": "itra_c"}, "optim": {"momentum": 0.0},
                             "train": {"epochs": 2, "compactness_samples": 64}})
    code = _search(["--space", space, "--storage-path", tmp_path / "st", "--name", "nan", "--seed", "0"])
    assert code == 0
    rows = _trials(tmp_path / "st" / "nan")
    failed = [r for r in rows if r["status"].startswith("failed")]
    assert failed and all(float(r["optim.lr"]) == 1.0e12 for r in failed)
    assert all("training loss became" in r["status"] for r in failed)
    summary = json.loads((tmp_path / "st" / "nan" / "summary.json").read_text())
    assert summary["failed"] == len(failed) and summary["best"]["optim.lr"] == 0.05


@pytest.mark.slow
def test_pareto_objective_and_method_comparison(ray_local, space_file, tmp_path, capsys):
    space = space_file(budget={"num_samples": 2, "max_concurrent": 2})
    code = _search(["--space", space, "--storage-path", tmp_path / "st", "--name", "cmp", "--methods", "ce,itra_c",
                    "--objective", "acc_ce", "--equal-compute"])
    out = capsys.readouterr().out
    assert code == 0
    assert "methods side by side" in out and "tiny-ce" in out and "tiny-itra_c" in out
    # equal compute: each method's trials in inverse proportion to its measured step cost, the cheapest gets 2
    allotted = {m: (float(r), int(n)) for m, r, n in
                re.findall(r"^equal compute: (\S+) [\d.]+ ms a step \(([\d.]+)x\), (\d+) trials$", out, re.M)}
    assert sorted(allotted) == ["ce", "itra_c"] and min(r for r, _ in allotted.values()) == 1.0
    assert all(n == max(1, round(2 / r)) for r, n in allotted.values())
    assert "budget: equal compute" in out
    for m in ("ce", "itra_c"):
        s = json.loads((tmp_path / "st" / f"cmp-{m}" / "summary.json").read_text())
        assert s["trials"] == allotted[m][1] and s["pareto_front"] and s["budget"] == "equal compute"
        assert s["best_config"]["loss"]["name"] == m
    from mlflow import MlflowClient

    t = s["tracking"]  # itra_c's: its best trial's compactness against the best CE trial's
    plots = {a.path for a in MlflowClient(t["uri"]).list_artifacts(t["parent_run_id"], "plots")}
    assert "plots/compactness_vs_ce.png" in plots


@pytest.mark.parametrize(("args", "message"), [
    (["--space", "nosuchspace"], "unknown space 'nosuchspace'"),
    (["--space", "demo", "--set", "loss.lam=-1"], "loss.lam cannot be negative"),
    (["--space", "demo", "--num-samples", "0"], "--num-samples must be at least 1 but got 0"),
    (["--space", "demo", "--confirm-share", "1"], "--confirm-share must be below 1"),
    (["--space", "demo", "--confirm-share", "-0.1"], "--confirm-share must be at least 0 but got -0.1"),
    (["--space", "demo", "--confirm-candidates", "0"], "--confirm-candidates must be at least 1 but got 0"),
    (["--space", "demo", "--methods", "ce,focal"], "unknown method 'focal'"),
    (["--space", "demo", "--methods", "ce,itra_c,itra_c:independent"],
     "'itra_c' and 'itra_c:independent' are the same search on demo (its S2 pairing is independent); name each "
     "pairing compared, e.g. itra_c:independent,itra_c:memory"),
    (["--space", "demo", "--methods", "ce,itra_c,ce"], "'ce' and 'ce' are the same search on demo"),
    (["--space", "demo", "--resume"], "--resume needs --name"),
    (["--space", "demo", "--set", "data.name=cifar10", "--set", "data.root=/nonexistent"],
     "dataset 'cifar10' not found"),
    (["--space", "demo", "--scheduler", "bohb"], "'bohb' is not a scheduler; choose from asha, median"),
    (["--space", "demo", "--scheduler", "ashaa"], "'ashaa' is not a scheduler (did you mean 'asha'?)"),
    (["--space", "cifar1000"], "unknown space 'cifar1000' (did you mean 'cifar100'?)"),
    (["--space", "demo", "--set", "loss.lamda=0.1"], "unknown key 'loss.lamda' (did you mean 'lam'?)"),
    (["--space", "demo", "--warm-start", "nosuch"], "--warm-start: no search 'nosuch'"),
    (["--space", "demo", "--warm-start", "a", "--name", "b", "--resume"], "--warm-start starts a new search"),
    (["--space", "demo", "--equal-compute"], "--equal-compute shares one budget among the searches of --methods"),
    (["--space", "demo", "--optuna-storage", "nosuchdb://x"], "--optuna-storage 'nosuchdb://x' cannot be opened"),
])
def test_bad_input_exits_2_with_one_line_before_ray(tmp_path, capsys, args, message):
    code = _search([*args, "--storage-path", tmp_path / "st"])
    err = capsys.readouterr().err
    assert code == 2 and message in err and err.count("\n") == 1
    assert not (tmp_path / "st").exists()


def test_bad_input_names_its_cause_once(tmp_path, capsys, space_file):
    assert _search(["--space", "demo", "--set", "loss.lam=-1", "--storage-path", tmp_path / "st"]) == 2
    err = capsys.readouterr().err
    assert "--set loss.lam=-1: loss.lam cannot be negative" in err and "demo.yaml" not in err
    space = space_file(name="negative", search={"loss.lam": {"type": "float", "low": -1.0, "high": 0.5}})
    assert _search(["--space", space, "--storage-path", tmp_path / "st"]) == 2
    err = capsys.readouterr().err
    assert err.count(str(space)) == 1 and "search.loss.lam: value -1.0 is invalid here: loss.lam cannot" in err


def test_help_shows_examples_every_space_and_help_on_every_option(capsys):
    assert _search(["--help"]) == 0
    out = capsys.readouterr().out
    assert "examples:" in out and "--set loss.lam=0.1 --set optim.lr=0.05" in out and "--name mine --resume" in out
    assert "python -m itra_tune.train --space demo --best" in out
    listed = " ".join(out.split("spaces: ", 1)[1].split())
    assert all(name in listed for name in spaces.names())
    options = [a for a in parser()._actions if a.option_strings and a.dest != "help"]
    assert [a.dest for a in options if not a.help] == []


def test_existing_experiment_needs_resume(tmp_path, capsys):
    (tmp_path / "st" / "taken").mkdir(parents=True)
    assert _search(["--space", "demo", "--storage-path", tmp_path / "st", "--name", "taken"]) == 2
    assert "already exists" in capsys.readouterr().err


def test_a_shared_study_ranked_by_another_objective_is_one_line_before_anything_is_written(tmp_path, capsys):
    from itra_tune.search import study

    url = f"sqlite:///{tmp_path / 'optuna.db'}"
    study.create(url, "shared", "val_acc", "max")  # another driver's search, ranked on accuracy
    capsys.readouterr()
    code = _search(["--space", "demo", "--storage-path", tmp_path / "st", "--optuna-storage", url,
                    "--optuna-study", "shared", "--tracking-uri", f"sqlite:///{tmp_path / 'm.db'}"])
    assert code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "the Optuna study 'shared'" in err[0] and "name another study (--optuna-study)" in err[0]
    assert not (tmp_path / "st").exists()


def test_unreachable_cluster_address_is_bad_input(tmp_path):
    env = {**os.environ, "RAY_gcs_rpc_server_connect_timeout_s": "3"}
    proc = subprocess.run([sys.executable, "-m", "itra_tune.search", "--space", "demo", "--address", "127.0.0.1:1",
                           "--storage-path", str(tmp_path / "st")], capture_output=True, text=True, timeout=300,
                          env=env)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "cannot join the Ray cluster" in proc.stderr.strip().splitlines()[-1]


def _start_and_wait(cmd: list[str], exp: Path, epochs_done: int = 3) -> subprocess.Popen:
    """Start a search driver and return once some trial has reported epochs and a snapshot exists."""
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    deadline = time.time() + 240
    while time.time() < deadline:
        done = [d for d in exp.glob("trial_*") if len(_progress(d)) >= epochs_done]
        if done and list(exp.glob("experiment_state-*.json")):
            return proc
        time.sleep(0.5)
    os.killpg(proc.pid, signal.SIGKILL)
    pytest.fail("the search made no progress before the deadline")


def _long_space(space_file, subset=1280):
    return space_file(budget={"num_samples": 4, "max_concurrent": 2},
                      base={"data": {"name": "synthetic", "batch_size": 32, "subset": subset}, "model": {"name": "mlp"},
                            "loss": {"name": "itra_c"}, "train": {"epochs": 6, "compactness_samples": 64}})


@pytest.mark.slow
def test_resume_after_the_driver_is_killed(space_file, tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    base = [sys.executable, "-m", "itra_tune.search", "--space", str(_long_space(space_file)),
            "--storage-path", str(tmp_path / "st"), "--name", "killed", "--seed", "1", "--tracking-uri", uri]
    exp = tmp_path / "st" / "killed"
    # the first run narrows the space's budget; the resume names neither setting and must keep both
    proc = _start_and_wait(base + ["--num-samples", "3", "--set", "train.epochs=5"], exp)
    deadline = time.time() + 60  # the driver keeps a whole copy of Tune's snapshot once a second
    while not list(exp.glob(".experiment_state-*.json.whole")) and time.time() < deadline:
        time.sleep(0.2)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    before = {d.name: [r["epoch"] for r in _progress(d)] for d in exp.glob("trial_*")}
    # the kill landed while Ray was writing its snapshot (in place, not atomically): the file is cut short
    [state] = exp.glob("experiment_state-*.json")
    state.write_text(state.read_text()[:100])

    resumed = subprocess.run(base + ["--resume"], capture_output=True, text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-3000:]
    assert f"{state.name} was cut short when the driver stopped: its previous version put back" in resumed.stderr
    summary = json.loads((exp / "summary.json").read_text())
    statuses = {row["trial"]: row["status"] for row in _trials(exp)}
    assert summary["trials"] == 3 and summary["completed"] == 3, (statuses, resumed.stdout[-3000:])
    assert summary["best_config"]["train"]["epochs"] == 5
    for row in _trials(exp):
        epochs = [r["epoch"] for r in _progress(exp / row["trial"])]
        assert epochs.count(1) == 1, f"{row['trial']} ran from scratch twice: {epochs}"
        assert epochs[: len(before.get(row["trial"], []))] == before.get(row["trial"], [])
        assert max(epochs) == 5
    # MLflow: one parent, one finished child run per trial, every epoch logged once
    from mlflow import MlflowClient

    c = MlflowClient(uri)
    runs = c.search_runs([c.get_experiment_by_name("tiny").experiment_id])
    parents = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    children = [r for r in runs if "mlflow.parentRunId" in r.data.tags]
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"
    assert sorted(r.info.run_name for r in children) == sorted(r["trial"] for r in _trials(exp))
    for child in children:
        assert child.info.status == "FINISHED"
        assert [m.step for m in c.get_metric_history(child.info.run_id, "val_acc")] == [1, 2, 3, 4, 5]


@pytest.mark.slow
def test_a_resume_whose_snapshot_names_a_pruned_checkpoint_continues_from_the_newest_that_exists(space_file,
                                                                                               tmp_path):
    from ray.tune.execution.experiment_state import _find_newest_experiment_checkpoint
    from ray.tune.utils.serialization import _loads_with_cloudpickle

    cmd = [sys.executable, "-m", "itra_tune.search", "--space", str(_long_space(space_file)), "--storage-path",
           str(tmp_path / "st"), "--name", "pruned", "--tracking-uri", f"sqlite:///{tmp_path / 'mlflow.db'}"]
    exp = tmp_path / "st" / "pruned"
    proc = _start_and_wait(cmd, exp)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    # what Tune's pruning can do between two snapshots: the checkpoint the last one names as newest is gone
    state = json.loads(Path(_find_newest_experiment_checkpoint(str(exp))).read_text())
    pruned = []
    for entry in state["trial_data"]:
        latest = _loads_with_cloudpickle(entry[1])["checkpoint_manager"]._latest_checkpoint_result
        if latest is not None and Path(latest.checkpoint.path).exists():
            shutil.rmtree(latest.checkpoint.path)
            pruned.append(Path(latest.checkpoint.path).parent.name)
    assert pruned
    resumed = subprocess.run(cmd + ["--resume"], capture_output=True, text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-3000:]
    assert "their newest checkpoint had been pruned" in resumed.stderr and pruned[0] in resumed.stderr
    summary = json.loads((exp / "summary.json").read_text())
    assert summary["trials"] == 4 and summary["completed"] == 4, [r["status"] for r in _trials(exp)]


@pytest.mark.slow
def test_ctrl_c_reports_the_interrupted_search_and_resume_finishes_it(space_file, tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    # epochs of 160 steps: the trials are still training when the interrupt lands (at 40 a pair could finish first)
    cmd = [sys.executable, "-m", "itra_tune.search", "--space", str(_long_space(space_file, subset=5120)),
           "--storage-path", str(tmp_path / "st"), "--name", "intr", "--tracking-uri", uri]
    proc = _start_and_wait(cmd, tmp_path / "st" / "intr", epochs_done=1)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=240)
    assert proc.returncode == 130, err[-3000:]
    assert "Tuner.restore" not in err and err.count("--resume") == 1  # one resume hint: ours
    # the trials training at the interrupt are recorded as interrupted, not as stopped early
    statuses = [r["status"] for r in _trials(tmp_path / "st" / "intr")]
    assert "interrupted" in statuses and "stopped early" not in statuses, statuses
    # the trials that ended and those cut while training, counted apart
    first = json.loads((tmp_path / "st" / "intr" / "summary.json").read_text())
    ended = first["completed"] + first["failed"] + first["stopped early"]
    assert first["interrupted_trials"] >= 1 and first["runs"] == 1
    assert (f"interrupted with {ended} of 4 trials ended and {first['interrupted_trials']} cut while training; "
            "continue with: ") in err, err[-2000:]
    resume = err.split("continue with: ")[1].split()
    assert Path(resume[0]).exists() and resume[1:4] == ["-m", "itra_tune.search", "--space"]  # works when pasted
    assert "--name intr --resume" in err
    resumed = subprocess.run(cmd + ["--resume"], capture_output=True, text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-3000:]
    summary = json.loads((tmp_path / "st" / "intr" / "summary.json").read_text())
    assert summary["trials"] == 4 and summary["runs"] == 2
    assert summary["wall_time_s"] > first["wall_time_s"]  # both runs' time, not the last one's
    assert f"4 trials in {summary['wall_time_s']:.0f}s over 2 runs: " in resumed.stdout
    assert not any(line.startswith("resume:") for line in resumed.stdout.splitlines())  # nothing left to resume
    # each of the best 3 trials' model logged once, though both runs of the search recorded them
    import mlflow

    mlflow.set_tracking_uri(uri)
    models = mlflow.search_logged_models(experiment_ids=[mlflow.get_experiment_by_name("tiny").experiment_id],
                                         output_format="list")
    runs = [m.source_run_id for m in models]
    assert len(runs) == 3 and len(set(runs)) == 3, runs


@pytest.mark.slow
def test_ctrl_c_before_any_epoch_is_an_interruption_not_a_failure(space_file, tmp_path):
    # an epoch of minutes: the interrupt lands while both trials train their first
    space = space_file(budget={"num_samples": 4, "max_concurrent": 2},
                       base={"data": {"name": "synthetic", "batch_size": 2, "subset": 60000}, "model": {"name": "mlp"},
                             "loss": {"name": "itra_c"}, "train": {"epochs": 2, "compactness_samples": 64}})
    exp = tmp_path / "st" / "early"
    proc = subprocess.Popen([sys.executable, "-m", "itra_tune.search", "--space", str(space), "--storage-path",
                             str(tmp_path / "st"), "--name", "early", "--tracking-uri",
                             f"sqlite:///{tmp_path / 'mlflow.db'}"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, start_new_session=True)
    deadline = time.time() + 240
    while len(list(exp.glob("trial_*"))) < 2 and time.time() < deadline:
        time.sleep(0.5)
    time.sleep(3)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=240)
    assert not any(_progress(d) for d in exp.glob("trial_*")), "an epoch ended before the interrupt"
    assert proc.returncode == 130, err[-3000:]
    assert "interrupted before any trial finished an epoch; nothing failed" in out and "see the errors" not in out
    assert "interrupted before any trial finished an epoch; continue with: " in err and "--name early --resume" in err
    summary = json.loads((exp / "summary.json").read_text())
    assert summary["interrupted"] and summary["interrupted_trials"] == 2 and summary["failed"] == 0


@pytest.mark.slow
def test_the_demo_prints_its_own_compact_view_and_commands_that_work_when_pasted(tmp_path):
    env = {**os.environ, "MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path / 'mlflow.db'}"}
    env.pop("RAY_AUTH_MODE", None)  # as a user's shell has it
    demo = subprocess.run([sys.executable, "-m", "itra_tune.search", "--space", "demo"], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=600)
    assert demo.returncode == 0, demo.stdout[-3000:] + demo.stderr[-3000:]
    lines = (demo.stdout + demo.stderr).splitlines()
    assert len(lines) <= 30, lines  # 8 trials: a header, a line per trial, the summary
    for chatter in ("== Status ==", "Result logdir", "/tmp/ray", "Token authentication", "A new study created",
                    "INFO mlflow", "Validating input example"):
        assert chatter not in demo.stdout + demo.stderr
    assert sum(bool(re.match(r"\[[#-]{10}\] [1-8]/8 ", line)) for line in lines) == 8
    counts = re.search(r"== demo: 8 trials in \d+s: (\d+) completed, (\d+) stopped early, 0 failed", demo.stdout)
    assert counts, demo.stdout[-2000:]
    pasted = [shlex.split(line.split(":", 1)[1]) for line in lines if re.match(r"^ *(browse|resume): ", line)]
    # the summary's commands, pasted, are programs where the lines say; a finished search has nothing to resume
    mlflow_ui, dashboard = pasted
    assert Path(tmp_path, mlflow_ui[0]).is_file() and mlflow_ui[1:3] == ["ui", "--backend-store-uri"]
    assert Path(tmp_path, dashboard[0]).is_file() and dashboard[1:3] == ["install", "optuna-dashboard"]
    # MLflow marks each trial as the summary counts it: the trials ASHA stopped are not shown as completed
    from mlflow import MlflowClient

    from itra_tune import tracking

    c = MlflowClient(env["MLFLOW_TRACKING_URI"])
    runs = c.search_runs([c.get_experiment_by_name("demo").experiment_id])
    statuses = [r.data.tags.get(tracking.STATUS_TAG) for r in runs if tracking.PARENT_TAG in r.data.tags]
    assert (statuses.count("completed"), statuses.count("stopped early")) == tuple(map(int, counts.groups()))


@pytest.mark.slow
def test_address_joins_a_head_started_by_the_test(space_file, cluster_env, tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    temp = Path(tempfile.mkdtemp(prefix="rh", dir="/tmp"))  # Ray's unix sockets need a short path
    env = cluster_env
    ray_bin = Path(sys.executable).parent / "ray"
    head = subprocess.Popen([str(ray_bin), "start", "--head", "--block", "--node-ip-address=127.0.0.1",
                             f"--port={port}", "--num-cpus=2", "--include-dashboard=false", f"--temp-dir={temp}"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
    try:
        deadline = time.time() + 90
        while time.time() < deadline:  # the head answers on its port once it is up
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                time.sleep(0.5)
        space = space_file(budget={"num_samples": 2, "max_concurrent": 2})
        proc = subprocess.run([sys.executable, "-m", "itra_tune.search", "--space", str(space), "--address",
                               f"127.0.0.1:{port}", "--storage-path", str(tmp_path / "st"), "--name", "remote"],
                              capture_output=True, text=True, timeout=600, env=env)
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
        pids = {r["pid"] for d in (tmp_path / "st" / "remote").glob("trial_*") for r in _progress(d)}
        logs = " ".join(p.name for p in temp.glob("session_*/logs/worker-*"))
        assert pids and all(f"-{pid}." in logs for pid in pids)  # the trials ran in the head's own workers
    finally:
        head.send_signal(signal.SIGTERM)
        head.wait(timeout=90)
        shutil.rmtree(temp, ignore_errors=True)


@pytest.mark.slow
def test_a_local_search_cluster_listens_on_loopback_alone_and_keeps_its_token_private(tmp_path):
    """Every listener of a local search's Ray (GCS, raylet, workers, agents) is on 127.0.0.0/8, the token file is
    0600, and a client joins with the token and not without it."""
    script = (
        "import ipaddress, os, subprocess, sys\n"
        "from itra_tune import search\n"
        "os.environ.update(search.LOOPBACK_ONLY)  # what search.run does before Ray is imported\n"
        "import psutil, ray\n"
        "from itra_tune.search.tuner import init_ray\n"
        "init_ray(None)\n"
        "ray.get(ray.remote(lambda: 1).remote())  # a worker is up\n"
        "mine = {p.pid for p in psutil.Process().children(recursive=True)} | {os.getpid()}\n"
        "ss = subprocess.run(['ss', '-ltnpH'], capture_output=True, text=True).stdout.splitlines()\n"
        "ours = [l for l in ss if any(f'pid={p},' in l for p in mine)]\n"
        "print('listeners', len(ours))\n"
        "def loopback(a):\n"
        "    ip = ipaddress.ip_address(a.rsplit(':', 1)[0].strip('[]'))\n"
        "    return (getattr(ip, 'ipv4_mapped', None) or ip).is_loopback\n"
        "print('outside', [l.split()[3] for l in ours if not loopback(l.split()[3])])\n"
        "token = os.path.expanduser('~/.ray/auth_token')\n"
        "print('mode', oct(os.stat(token).st_mode & 0o777))\n"
        "gcs = ray.get_runtime_context().gcs_address\n"
        "env = {k: v for k, v in os.environ.items() if not k.startswith('RAY_AUTH')}\n"
        "join = \"import ray; ray.init(address='%s'); print('joined')\" % gcs\n"
        "for mode in ({'RAY_AUTH_MODE': 'disabled'}, {'RAY_AUTH_MODE': 'token', 'RAY_AUTH_TOKEN': 'guess'},\n"
        "             {'RAY_AUTH_MODE': 'token', 'RAY_AUTH_TOKEN': open(token).read().strip()}):\n"
        "    p = subprocess.run([sys.executable, '-c', join], env={**env, **mode}, capture_output=True, text=True,\n"
        "                       timeout=180)\n"
        "    print(mode.get('RAY_AUTH_TOKEN', 'none')[:5], 'joined' in p.stdout)\n"
        "ray.shutdown()\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_AUTH")}
    env["HOME"] = str(tmp_path)  # a token file of its own, made by the search
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=600, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = dict(line.split(" ", 1) for line in proc.stdout.splitlines() if " " in line)
    assert int(out["listeners"]) >= 4 and out["outside"] == "[]", proc.stdout
    assert out["mode"] == "0o600"
    lines = proc.stdout.splitlines()[-3:]
    assert lines[0] == "none False" and lines[1] == "guess False" and lines[2].endswith(" True"), proc.stdout
