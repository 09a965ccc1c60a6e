"""Kill a search and resume it, again and again: does any finished work get lost?

    python -m benchmarks.chaos [--kills 20] [--seed 0] [--trials 6] [--epochs 8] [--out DIR]

One seeded search (synthetic data, the engine's MLP, no early stopping, so that every trial must reach its last
epoch) is started, its driver SIGKILLed (with its whole process group) at ``--kills`` moments drawn from its
progress, each followed by ``--resume``, and the last resume runs to the end (if the search ends sooner, fewer
kills are made). A second search with ``--max-failures 1`` has one trial's worker process killed mid-trial. What is
checked, from the search's own files and its MLflow record: every resume started and ran; every trial
finished; each trial's MLflow history holds every epoch exactly once; no trial was lost (a trial row and a
finished MLflow run per sampled trial). Prints one line:
``N/N kills resumed, T/T trials finished, E duplicated or missing epochs, L lost trials``.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import yaml


def space(folder: Path, trials: int, epochs: int) -> Path:
    raw = {"name": "chaos",
           "base": {"data": {"name": "synthetic", "batch_size": 32, "subset": 1280}, "model": {"name": "mlp"},
                    "loss": {"name": "itra_c", "lam": 0.5}, "train": {"epochs": epochs, "compactness_samples": 64}},
           "search": {"loss.lam": {"type": "float", "low": 0.1, "high": 1.0}},
           "budget": {"num_samples": trials, "max_concurrent": 2}, "scheduler": {"name": "none"}}
    path = folder / "chaos.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def command(sp: Path, folder: Path, name: str, *extra: str) -> list[str]:
    return [sys.executable, "-m", "itra_tune.search", "--space", str(sp), "--storage-path", str(folder / "st"),
            "--name", name, "--tracking-uri", f"sqlite:///{folder / 'mlflow.db'}", "--seed", "0", *extra]


def start(cmd: list[str], log: Path) -> subprocess.Popen:
    return subprocess.Popen(cmd, stdout=log.open("a"), stderr=subprocess.STDOUT, start_new_session=True)


def progress(trial_dir: Path) -> list[dict[str, Any]]:
    f = trial_dir / "result.json"
    return [json.loads(line) for line in f.read_text().splitlines() if line.strip()] if f.exists() else []


def reported(exp: Path) -> int:
    """Epoch results the search's trials have written so far (a resumed epoch counts again)."""
    return sum(len(progress(d)) for d in exp.glob("trial_*"))


def kill_cycle(cmd: list[str], exp: Path, kills: int, total: int, rng: random.Random,
               log: Path) -> tuple[int, int, int]:
    """Start, SIGKILL at a random moment, resume, until ``kills`` kills are made, then resume to the end.

    The moment is drawn in the search's own progress, not in seconds: a number of epoch results still to come
    (an equal share of what is left for each kill still to make), then up to a second more, so that kills land
    inside epochs as well as between them. A search killed before it has saved its first state
    (``experiment_state-*.json``) has nothing to resume, and neither a busy machine nor a fast one may decide
    whether a kill lands before the search ends.

    Returns:
        The kills made, the resumes that ran (until the next kill, or to the end with exit 0), and the exit code
        of the run that ended by itself.
    """
    made = resumed = 0
    while True:
        proc = start(cmd + (["--resume"] if made else []), log)
        while not list(exp.glob("experiment_state-*.json")) and proc.poll() is None:
            time.sleep(0.1)
        done = reported(exp)
        share = max(1, (total - done - 1) // (kills - made + 1))
        target = done + rng.randint(1, share) if made < kills else float("inf")
        while reported(exp) < target and proc.poll() is None:
            time.sleep(0.1)
        time.sleep(rng.uniform(0.0, 1.0))
        if proc.poll() is not None:  # it ran to its end (or failed) before a kill
            resumed += made > 0 and proc.returncode == 0
            return made, resumed, proc.returncode
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        resumed += made > 0  # alive at the kill: it had resumed
        made += 1
        print(f"  kill {made}/{kills} after {reported(exp)} epoch results", flush=True)


def mlflow_epochs(uri: str, experiment: str) -> dict[str, list[int]]:
    """Each finished child run's val_acc steps, by trial name."""
    from mlflow import MlflowClient

    c = MlflowClient(uri)
    exp = c.get_experiment_by_name(experiment)
    runs = c.search_runs([exp.experiment_id]) if exp else []
    return {r.info.run_name: sorted(m.step for m in c.get_metric_history(r.info.run_id, "val_acc"))
            for r in runs if "mlflow.parentRunId" in r.data.tags and r.info.status == "FINISHED"}


def check(folder: Path, name: str, trials: int, epochs: int) -> tuple[int, int, int]:
    """(trials finished, duplicated or missing epochs, lost trials) of one experiment."""
    exp = folder / "st" / name
    with open(exp / "trials.csv") as f:
        rows = list(csv.DictReader(f))
    finished = sum(r["status"] == "completed" for r in rows)
    steps = mlflow_epochs(f"sqlite:///{folder / 'mlflow.db'}", "chaos")
    wrong = sum(abs(steps.get(r["trial"], []).count(e) - 1) for r in rows for e in range(1, epochs + 1))
    lost = trials - len({r["trial"] for r in rows} & set(steps))
    return finished, wrong, lost


def kill_a_worker(cmd: list[str], exp: Path, log: Path, epochs: int) -> tuple[int, bool]:
    """Kill the worker process of a trial in mid-training (2 epochs reported, 2 or more to go); the search's exit
    code, and whether a worker was killed (a search that ran past every trial's middle unseen is a failed check,
    not a pass). A finished trial's process is not chosen: Tune reuses it for the next trial, whose end would be
    lost."""
    proc = start(cmd, log)
    deadline = time.time() + 300
    killed = False
    while time.time() < deadline and proc.poll() is None:
        latest = [rows[-1] for rows in map(progress, exp.glob("trial_*")) if rows]
        mid = [r for r in latest if 2 <= r["epoch"] <= epochs - 2]
        if mid:
            os.kill(mid[0]["pid"], signal.SIGKILL)
            print(f"  killed worker {mid[0]['pid']} of trial {mid[0]['trial_id']}", flush=True)
            killed = True
            break
        time.sleep(0.2)
    return proc.wait(timeout=600), killed


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.chaos", description=__doc__.splitlines()[0])
    p.add_argument("--kills", type=int, default=20)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--trials", type=int, default=6)
    p.add_argument("--epochs", type=int, default=8)
    p.add_argument("--out", type=Path, help="keep the searches here (default: a temporary folder)")
    args = p.parse_args(argv)
    folder = args.out or Path(tempfile.mkdtemp(prefix="chaos-"))
    folder.mkdir(parents=True, exist_ok=True)
    log = folder / "searches.log"
    sp = space(folder, args.trials, args.epochs)
    rng = random.Random(args.seed)
    t0 = time.perf_counter()
    cmd = command(sp, folder, "killed")
    made, resumed, final = kill_cycle(cmd, folder / "st" / "killed", args.kills, args.trials * args.epochs, rng,
                                      log)
    finished, wrong, lost = check(folder, "killed", args.trials, args.epochs)
    print(f"{resumed}/{made} kills resumed, {finished}/{args.trials} trials finished, {wrong} duplicated or "
          f"missing epochs, {lost} lost trials (final run exit {final}; "
          f"{(time.perf_counter() - t0) / 60:.1f} min)", flush=True)
    code, killed = kill_a_worker(command(sp, folder, "worker", "--max-failures", "1"), folder / "st" / "worker",
                                 log, args.epochs)
    w_finished, w_wrong, w_lost = check(folder, "worker", args.trials, args.epochs)
    print(f"worker {'killed' if killed else 'NOT killed (no trial was seen in its middle epochs)'}: exit {code}, "
          f"{w_finished}/{args.trials} trials finished, {w_wrong} duplicated or missing epochs, {w_lost} lost "
          f"trials; logs in {log}", flush=True)
    ok = resumed == made and finished == args.trials and not wrong and not lost and final == 0
    return 0 if ok and killed and code == 0 and w_finished == args.trials and not w_wrong and not w_lost else 1


if __name__ == "__main__":
    raise SystemExit(main())
