"""pipelines/: reproduce a table of the paper; search, retrain over seeds, register and export."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _load(name: str):
    spec = importlib.util.spec_from_file_location(name, ROOT / "pipelines" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.slow
def test_reproduce_reports_every_method_over_seeds_under_one_parent_run(ray_local, space_file, tmp_path):
    from mlflow import MlflowClient

    from itra_tune import tracking

    space = space_file(name="row", search={"data.batch_size": {"type": "categorical", "choices": [32, 64]},
                                           "loss.lam": {"type": "float", "low": 0.1, "high": 1.0}})
    out, uri = tmp_path / "report", tracking.resolve_uri()
    code = _load("reproduce").main(["--space", str(space), "--seeds", "2", "--num-samples", "2", "--epochs", "1",
                                    "--methods", "ce,center,itra_c,itra_c:memory",
                                    "--storage-path", str(tmp_path / "st"), "--out", str(out)])
    assert code == 0
    report = (out / "report.md").read_text()
    rows = [line for line in report.splitlines() if line.startswith("| ") and "±" in line][1:]  # after the header
    assert [r.split("|")[1].strip() for r in rows] == ["ce", "center", "itra_c", "itra_c:memory"]
    assert "2 seeds" in report and "Protocol: **reduced**: epochs 1" in report
    assert "Command: `python pipelines/reproduce.py --space" in report
    assert "--storage-path" not in report  # the machine's paths are not the recipe's
    # each method against CE under the same selection, in words
    verdicts = [line for line in report.splitlines() if line.startswith("- ") and "against CE" in line]
    assert [v.split()[1] for v in verdicts] == ["center", "itra_c", "itra_c:memory"]
    assert all(any(w in v for w in ("within the noise", "better", "worse")) for v in verdicts)
    whole = json.loads((out / "report.json").read_text())  # what it ran with, for tests/test_results.py
    assert (whole["loss_form"], whole["selection_rule"]) == ("gated", "one_se") and whole["code_version"]
    assert "loss form `gated`, selection rule `one_se`" in report
    data = whole["rows"]["row"]
    for method, r in data.items():
        accs = [s["acc"] for s in r["per_seed"]]
        assert len(accs) == 2
        assert abs(r["acc"][0] - sum(accs) / 2) < 1e-9 and r["acc"][1] >= 0
        loss, _, pairing = method.partition(":")
        assert r["config"]["loss"]["name"] == loss and r["config"]["train"]["epochs"] == 1
        assert r["config"]["data"]["pairing"] == (pairing or "independent")
        assert 0 < r["compactness"][0] < 2 and r["seconds_per_epoch"] > 0
    assert {p.name for p in out.glob("*.png")} == {"row_methods.png", "row_test_ce.png", "row_compactness.png"}
    assert not list(out.rglob("*.pt"))  # checkpoints stay with the searches, not in the report

    c = MlflowClient(uri)
    exp = c.get_experiment_by_name("reproduce-row")
    parent = [r for r in c.search_runs([exp.experiment_id]) if "mlflow.parentRunId" not in r.data.tags]
    assert len(parent) == 1
    children = c.search_runs([exp.experiment_id], f"tags.`mlflow.parentRunId` = '{parent[0].info.run_id}'")
    assert len(children) == 4 * 2  # a run per method and seed
    assert all(ch.data.metrics["test_acc"] > 0 for ch in children)
    artifacts = {a.path for a in c.list_artifacts(parent[0].info.run_id)}
    assert {"report.md", "report.json", "row_methods.png", "row_test_ce.png"} <= artifacts
    assert all(c.get_run(parent[0].info.run_id).data.tags.get(f"search.row.{m}")
               for m in ("ce", "center", "itra_c", "itra_c-memory"))


def test_reproduce_refuses_two_methods_that_run_one_search_before_anything_runs(tmp_path, capsys):
    """ag_news_minilm draws S2 from a memory: its itra_c beside itra_c:memory would be two identical rows."""
    from itra_tune import cli

    module = _load("reproduce")
    argv = ["--space", "ag_news_minilm", "--methods", "ce,itra_c,itra_c:memory", "--out", str(tmp_path / "out"),
            "--tracking-uri", f"sqlite:///{tmp_path / 'mlflow.db'}"]
    assert cli.run("python pipelines/reproduce.py", module.main, argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "'itra_c' and 'itra_c:memory' are the same search on ag_news_minilm (its S2 pairing " \
        "is memory)" in err[0]
    assert not (tmp_path / "out").exists() and not (tmp_path / "mlflow.db").exists()


def test_reproduce_refuses_an_unknown_row_before_anything_runs(tmp_path, capsys):
    from itra_tune import cli

    module = _load("reproduce")
    argv = ["--table", "1", "--rows", "mnist", "--out", str(tmp_path / "out")]
    assert cli.run("python pipelines/reproduce.py", module.main, argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "'mnist' is not a row of Table 1; choose from kmnist, fmnist" in err[0]
    assert not (tmp_path / "out").exists()


def test_every_published_report_is_listed_with_the_command_that_regenerates_it_here(capsys):
    module = _load("reproduce")
    assert module.main(["--list"]) == 0
    out = capsys.readouterr().out
    for name, report in module.published().items():
        assert f"{name}  (" in out
        again = module.recipe(name, report["command"])
        assert again[-2:] == ["--out", f"docs/results/{name}"] or again[-1].endswith(f"docs/results/{name}")
        assert module.parser().parse_args(again).out  # a command the script takes as it stands
    # what names the machine it ran on is dropped: MLflow, storage and the data's root come from the user's
    again = module.recipe("t1", "python pipelines/reproduce.py --table 1 --rows fmnist --set model.name=mlp "
                                "--set data.root=/data --tracking-uri sqlite:////tmp/m.db --storage-path=/tmp/st "
                                "--out /tmp/x --seeds 3")
    assert again[:-1] == ["--table", "1", "--rows", "fmnist", "--set", "model.name=mlp", "--seeds", "3", "--out"]


def test_only_runs_the_reports_recorded_command_and_names_one_it_does_not_know(tmp_path, capsys, monkeypatch):
    from itra_tune import cli

    module = _load("reproduce")
    (tmp_path / "old").mkdir()
    # the recorded command is checked as if typed: its unknown row stops it before anything runs
    (tmp_path / "old" / "report.json").write_text(json.dumps(
        {"command": "python pipelines/reproduce.py --table 1 --rows mnist --out elsewhere"}))
    monkeypatch.setattr(module, "RESULTS", tmp_path)
    assert cli.run("python pipelines/reproduce.py", module.main, ["--only", "old"]) == 2
    out, err = capsys.readouterr()
    assert "regenerating old: python pipelines/reproduce.py --table 1 --rows mnist --out " in out
    assert "'mnist' is not a row of Table 1" in err
    assert cli.run("python pipelines/reproduce.py", module.main, ["--only", "new"]) == 2
    assert "--only: no published report 'new'; choose from old" in capsys.readouterr().err


def test_the_guide_names_the_folder_the_pipeline_exports_to():
    module = _load("search_then_retrain")
    guide = (ROOT / "docs" / "guide" / "production.md").read_text()
    assert f"`{module.DEFAULT_OUT}/export`" in guide and module.DEFAULT_OUT in module.parser().format_help()
    name = "demo-20261201-120000"
    assert module.DEFAULT_OUT.replace("<space>-<time>", name) == f"runs/prod/{name}"
