"""The best configuration and model of a space, read back from MLflow without Ray."""

from __future__ import annotations

import pytest
import torch
import yaml

import itra_tune
from itra_tune import config, export, models, tracking


def _model_files(model, cfg, x, folder):
    with torch.no_grad():
        logits = model(x)
    outputs = {"logits": logits.numpy(), "probabilities": logits.softmax(1).numpy(), "class": logits.argmax(1).numpy()}
    return tracking.ModelFiles(export.save(model, cfg, folder, x, standalone=False), x.numpy(), outputs, step=1)


def test_best_config_and_model_of_the_newest_search(tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    torch.manual_seed(0)
    model = models.build("mlp", 10, (1, 8, 8), normalization=((0.3,), (0.4,))).eval()
    x = torch.rand(3, 1, 8, 8)  # pixels in [0, 1]: the model normalizes them itself
    for lam in (0.2, 0.7):  # two searches of the space: the newer one wins
        cfg = config.override(config.Config(), {"model.name": "mlp", "loss.lam": lam})
        tracker = tracking.Tracker(uri, "space-a", run_name=f"search-{lam}")
        tracker.trial_started("t1", "trial_t1", cfg.flat())
        (tmp_path / "best_config.yaml").write_text(yaml.safe_dump(cfg.to_dict()))
        files = _model_files(model, cfg, x, tmp_path / f"export-{lam}")
        row = {"val_acc": lam, "val_ce": 1.0, "test_acc": lam, "test_ce": 1.0, "best_epoch": 1}
        run = tracker.finish_trial("t1", "trial_t1", cfg.flat(), [], "completed", row, files)
        tracker.finish(run, [tmp_path / "best_config.yaml"], {}, best=row)
    assert itra_tune.best_config("space-a", tracking_uri=uri).loss.lam == 0.7
    loaded = itra_tune.load_best_model("space-a", tracking_uri=uri)
    assert torch.equal(loaded(x), model(x))
    assert torch.equal(loaded.preprocess.mean, model.preprocess.mean)  # the normalization travels with the weights
    c = tracking.client(uri)
    parent = c.search_runs([c.get_experiment_by_name("space-a").experiment_id], "tags.`itra_tune.role` = 'search'",
                           order_by=["attributes.start_time DESC"])[0]
    assert parent.data.metrics["best_val_acc"] == 0.7 and parent.data.metrics["best_epoch"] == 1


def test_best_config_of_an_unknown_space(tmp_path):
    with pytest.raises(itra_tune.ConfigError, match="no MLflow experiment 'nothing-here'"):
        itra_tune.best_config("nothing-here", tracking_uri=f"sqlite:///{tmp_path / 'empty.db'}")


def test_registering_a_model_prints_nothing_of_mlflows_own(tmp_path, capfd):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    model = models.build("mlp", 10, (1, 8, 8)).eval()
    cfg = config.override(config.Config(), {"model.name": "mlp"})
    tracker = tracking.Tracker(uri, "space-r", run_name="search")
    tracker.trial_started("t1", "trial_t1", {})
    files = _model_files(model, cfg, torch.rand(2, 1, 8, 8), tmp_path / "export")
    run = tracker.finish_trial("t1", "trial_t1", {}, [], "completed", None, files)
    capfd.readouterr()
    assert [tracking.register(uri, tracker.model_ids[run], "itra-r") for _ in range(2)] == ["itra-r/1", "itra-r/2"]
    assert "registered" not in capfd.readouterr().err.lower()  # the caller's summary line says it


def _search(tmp_path, uri, space, name, lam, smoke):
    """A finished search of ``space`` in MLflow whose one trial is the winner, without running one."""
    cfg = config.override(config.Config(), {"model.name": "mlp", "loss.lam": lam})
    tracker = tracking.Tracker(uri, space, run_name=name, tags={tracking.SMOKE_TAG: str(smoke).lower()})
    tracker.trial_started("t1", "trial_t1", cfg.flat())
    (tmp_path / "best_config.yaml").write_text(yaml.safe_dump(cfg.to_dict()))
    files = _model_files(models.build("mlp", 10, (1, 8, 8)).eval(), cfg, torch.rand(2, 1, 8, 8), tmp_path / name)
    row = {"val_acc": 0.5, "val_ce": 1.0, "test_acc": 0.5, "test_ce": 1.0, "best_epoch": 1}
    tracker.finish(tracker.finish_trial("t1", "trial_t1", cfg.flat(), [], "completed", row, files),
                   [tmp_path / "best_config.yaml"], {}, best=row)


def test_the_command_line_takes_a_smoke_search_when_told_and_says_so(tmp_path, capsys):
    from itra_tune import production

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    _search(tmp_path, uri, "space-q", "quick-1", 0.7, smoke=True)

    def best(*flags: str) -> float:
        args = production.parser().parse_args(["--space", "space-q", "--best", "--tracking-uri", uri, *flags])
        return production.config_from_args(args)[0].loss.lam

    with pytest.raises(itra_tune.ConfigError, match=r"all --smoke ones \(quick-1 \(smoke\)\): smoke=True, or "
                                                    r"itra_tune.train --smoke, takes the newest"):
        best()
    capsys.readouterr()
    assert best("--smoke") == 0.7
    assert "the best configuration of the search quick-1: a --smoke search" in capsys.readouterr().out
    _search(tmp_path, uri, "space-q", "full-1", 0.2, smoke=False)
    assert best() == 0.2 and capsys.readouterr().out.strip() == "the best configuration of the search full-1"
    assert best("--search", "quick-1") == 0.7 and "a --smoke search" in capsys.readouterr().out
    with pytest.raises(itra_tune.ConfigError, match=r"its searches: full-1, quick-1 \(smoke\)"):
        best("--search", "nosuch")


def test_the_answer_of_a_search_that_kept_none_is_its_best_trial_on_one_seed(tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    _search(tmp_path, uri, "space-old", "older", 0.3, smoke=False)  # recorded as searches were before answers
    answer = itra_tune.best_answer("space-old", tracking_uri=uri)
    assert answer.search == "older" and answer.trial == "trial_t1" and answer.seeds == 1 and not answer.confirmed
    assert answer.mean == {"val_acc": 0.5, "val_ce": 1.0, "test_acc": 0.5, "test_ce": 1.0}
    assert set(answer.std.values()) == {None} and answer.tied == () and answer.config.loss.lam == 0.3
    assert str(answer) == "older: trial_t1, val_acc 0.5, val_ce 1, test_acc 0.5, test_ce 1 over 1 seed"
