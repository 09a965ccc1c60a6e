"""``python -m itra_tune.train``: a run's files, exit codes, and one-line errors with nothing written."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import yaml

import itra_tune
from itra_tune import checkpoint, cli, config, selection
from itra_tune.config import SelectConfig
from itra_tune.production import main


def _write(tmp_path, **sections):
    base = {"data": {"name": "synthetic", "batch_size": 64, "subset": 320}, "model": {"name": "mlp"},
            "loss": {"name": "itra_c", "lam": 0.5}, "train": {"epochs": 2, "compactness_samples": 64}}
    for k, v in sections.items():
        base.setdefault(k, {}).update(v)
    p = tmp_path / "run.yaml"
    p.write_text(yaml.safe_dump(base))
    return p


def test_cli_run_writes_config_metrics_and_best_checkpoint(tmp_path, capsys):
    out = tmp_path / "out"
    assert main(["--config", str(_write(tmp_path)), "--set", "loss.lam=0.8", "--out", str(out), "--quiet"]) == 0
    printed = capsys.readouterr().out
    assert "epoch   2/2" in printed and "handed over epoch" in printed
    assert "(the lowest validation CE within one standard error of the best validation accuracy)" in printed
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [1, 2]
    saved = yaml.safe_load((out / "config.yaml").read_text())
    assert saved["loss"]["lam"] == 0.8
    assert "code_version" in (out / "config.yaml").read_text().splitlines()[0]
    best = checkpoint.load(out / "best.pt")
    assert best["metrics"]["epoch"] == selection.best(rows, SelectConfig())["epoch"]  # the configuration's rule
    assert set(best["model"]) == set(checkpoint.load(out / "last.pt")["model"])


def test_a_run_whose_gate_never_opened_says_it_trained_as_plain_ce(tmp_path, capsys):
    # a rate too small to leave chance: the gated form applies lambda 0 throughout, and the run says so
    still = tmp_path / "still"
    assert main(["--config", str(_write(tmp_path, optim={"lr": 1e-7})), "--out", str(still), "--quiet"]) == 0
    rows = [json.loads(line) for line in (still / "metrics.jsonl").read_text().splitlines()]
    assert [r["lam_applied"] for r in rows] == [0.0, 0.0]
    assert "note: lambda 0.5 was applied as 0 in every epoch" in capsys.readouterr().out
    # a run that learns lets the matching loss in: lambda applied between 0 and the configured 0.5, and no note
    learns = tmp_path / "learns"
    assert main(["--config", str(_write(tmp_path, optim={"lr": 0.05})), "--out", str(learns), "--quiet"]) == 0
    rows = [json.loads(line) for line in (learns / "metrics.jsonl").read_text().splitlines()]
    assert 0 < rows[-1]["lam_applied"] <= 0.5 and "note:" not in capsys.readouterr().out


def test_resume_from_last_checkpoint(tmp_path):
    out = tmp_path / "out"
    assert main(["--config", str(_write(tmp_path)), "--out", str(out), "--quiet"]) == 0
    more = tmp_path / "more"
    code = main(["--config", str(_write(tmp_path)), "--set", "train.epochs=3", "--out", str(more),
                 "--resume", str(out / "last.pt"), "--quiet"])
    assert code == 0
    rows = [json.loads(line) for line in (more / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [3]


def test_library_call_is_the_same_engine(tiny_config, tmp_path):
    result = itra_tune.train(tiny_config(), out_dir=tmp_path / "lib")
    assert len(result.history) == 2 and (tmp_path / "lib" / "best.pt").is_file()


@pytest.mark.parametrize(("override", "message"), [
    ("data.name=mnist3d", "unknown dataset 'mnist3d'"),
    ("model.name=resnet9", "unknown model 'resnet9'"),
    ("loss.name=focal", "unknown loss 'focal'"),
    ("loss.lam=-0.5", "loss.lam cannot be negative"),
    ("data.batch_size=0", "data.batch_size must be a positive integer"),
    ("loss.bandwidth=silverman", "unknown bandwidth scheme 'silverman'"),
    ("data.name=cifar10", "dataset 'cifar10' not found"),
])
def test_bad_input_is_one_line_exit_2_and_writes_nothing(tmp_path, capsys, monkeypatch, override, message):
    monkeypatch.setenv("ITRA_TUNE_DATA", str(tmp_path / "no-data"))
    out = tmp_path / "out"
    code = cli.run("python -m itra_tune.train", main,
                   ["--config", str(_write(tmp_path)), "--set", override, "--out", str(out)])
    err = capsys.readouterr().err
    assert code == 2
    assert message in err and err.count("\n") == 1 and "Traceback" not in err
    assert not out.exists()


def test_real_process_exit_codes(tmp_path):
    cmd = [sys.executable, "-m", "itra_tune.train", "--config", str(_write(tmp_path)), "--set", "loss.lam=-1"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        "python -m itra_tune.train: error: " + str(tmp_path / "run.yaml") + ": loss.lam cannot be negative but got -1.0"
    ]
    proc = subprocess.run([sys.executable, "-m", "itra_tune.train", "--config", str(tmp_path / "none.yaml")],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and "no such file" in proc.stderr and proc.stderr.count("\n") == 1
    proc = subprocess.run([sys.executable, "-m", "itra_tune.train", "--bogus"], capture_output=True, text=True)
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1


def test_diverging_run_exits_1(tmp_path, capsys):
    p = _write(tmp_path, optim={"lr": 1e12, "momentum": 0.0})
    code = cli.run("python -m itra_tune.train", main, ["--config", str(p), "--out", str(tmp_path / "o"), "--quiet"])
    assert code == 1 and "training loss became" in capsys.readouterr().err


def test_over_seeds_reports_mean_and_std_of_the_handed_over_epoch(tiny_config, tmp_path):
    import statistics

    res = itra_tune.train.over_seeds(tiny_config(seed=5), 3, out_dir=tmp_path / "s", full_train=True)
    assert res["seeds"] == [5, 6, 7]
    finals = [r.best["test_acc"] for r in res["results"]]
    assert [r.best for r in res["results"]] == [r.history[-1] for r in res["results"]]  # no select.epoch: the last
    assert len(set(finals)) > 1  # the seeds really differ
    assert res["test_acc"] == pytest.approx((statistics.fmean(finals), statistics.stdev(finals)))
    saved = yaml.safe_load((tmp_path / "s" / "seed_6" / "config.yaml").read_text())
    assert saved["seed"] == 6 and saved["data"]["val_fraction"] == 0.0
    # with no validation split, best.pt is the last epoch: nothing is selected on the test split, and the test
    # split is not reported a second time under the name val
    assert checkpoint.load(tmp_path / "s" / "seed_6" / "best.pt")["metrics"]["epoch"] == 2
    assert all("val_acc" not in row and "val_ce" not in row for r in res["results"] for row in r.history)
    assert repr(res["results"][0]).startswith("FitResult(Classifier, 2 epochs, best={")
    assert "\n" not in repr(res)  # printing the result shows figures, not model dumps


def test_full_train_command_line_prints_the_test_split_once(tiny_config, tmp_path, capsys):
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump(tiny_config().to_dict()))
    assert main(["--config", str(path), "--full-train", "--out", str(tmp_path / "o"), "--quiet"]) == 0
    out = capsys.readouterr().out
    assert "val_acc" not in out and "val_ce" not in out and out.count("test_acc") == 3  # 2 epochs, then the end
    assert "handed over epoch 2 (the last epoch: no validation split, and no epoch selected by a search)" in out


@pytest.mark.parametrize(("args", "message"), [
    (["--config", "x.yaml", "--best"], "--best needs --space"),
    (["--space", "demo", "--seeds", "0"], "--seeds must be at least 1"),
])
def test_bad_production_flags(capsys, args, message):
    assert cli.run("python -m itra_tune.train", main, args) == 2
    assert message in capsys.readouterr().err


def test_full_train_stops_at_the_searchs_selected_epoch_of_the_same_schedule(tiny_config, tmp_path, capsys):
    cfg = tiny_config(**{"train.epochs": 3})
    whole = itra_tune.train(cfg, full_train=True)
    handed = itra_tune.train(config.override(cfg, {"select.epoch": 2}), out_dir=tmp_path / "o", full_train=True)
    assert [r["epoch"] for r in handed.history] == [1, 2] and handed.best["epoch"] == 2
    # epochs 1 and 2 of the 3-epoch schedule, exactly: the rate at epoch 2 is not the end of a 2-epoch cosine
    strip = lambda row: {k: v for k, v in row.items() if k != "epoch_time"}
    assert [strip(r) for r in handed.history] == [strip(r) for r in whole.history[:2]]
    assert checkpoint.load(tmp_path / "o" / "best.pt")["metrics"]["epoch"] == 2
    path = tmp_path / "best.yaml"
    path.write_text(yaml.safe_dump(config.override(cfg, {"select.epoch": 2}).to_dict()))
    assert main(["--config", str(path), "--full-train", "--out", str(tmp_path / "cli"), "--quiet"]) == 0
    out = capsys.readouterr().out
    assert "2 of 3 epochs (the search's selected epoch)" in out
    assert "handed over epoch 2 (the search's selected epoch: no validation split)" in out


def test_retraining_selects_by_the_configurations_rule(tiny_config):
    by_ce, by_acc = (itra_tune.train(tiny_config(**{"train.epochs": 4, "select.metric": m, "select.mode": d}))
                     for m, d in (("val_ce", "min"), ("val_acc", "max")))
    strip = lambda h: [{k: v for k, v in row.items() if k != "epoch_time"} for row in h]
    assert strip(by_ce.history) == strip(by_acc.history)  # the rule changes the choice, not the training
    assert by_ce.best["val_ce"] == min(r["val_ce"] for r in by_ce.history)
    assert by_acc.best["val_acc"] == max(r["val_acc"] for r in by_acc.history)
