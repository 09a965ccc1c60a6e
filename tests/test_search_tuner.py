"""The Ray and Optuna side of a search, unit by unit: no Ray is started here."""

from __future__ import annotations

import optuna
import pytest

from itra_tune import spaces
from itra_tune.config import ConfigError
from itra_tune.search import Options, prepare
from itra_tune.search.tuner import (
    DefineByRun,
    KeepInRange,
    build_scheduler,
    build_searcher,
    fit_resources,
    load_settings,
    mutations,
    objectives,
    save_settings,
)


def test_asha_grace_as_a_share_of_the_epochs_follows_the_epochs(space_file):
    space = spaces.load(space_file(scheduler={"name": "asha", "grace_fraction": 0.33, "reduction_factor": 3}))
    for epochs, first_rung in ((30, 10), (60, 20), (6, 2), (2, 1)):
        rungs = [m for m, _ in build_scheduler(space, epochs=epochs)._brackets[0]._rungs]
        assert min(rungs) == first_rung and all(m <= epochs for m in rungs)


def test_scheduler_choices_map_to_tune_schedulers(space_file):
    from ray.tune.schedulers import ASHAScheduler, FIFOScheduler, HyperBandScheduler, MedianStoppingRule

    expected = {"asha": ASHAScheduler, "hyperband": HyperBandScheduler, "median": MedianStoppingRule,
                "none": FIFOScheduler}
    for name, cls in expected.items():
        space = spaces.load(space_file(scheduler={"name": name, "grace_period": 1}))
        scheduler = build_scheduler(space, epochs=4)
        assert type(scheduler) is cls
        if name != "none":
            assert scheduler.metric == "val_ce" and scheduler._mode == "min"  # the default rule


def test_population_based_training_mutates_loss_and_optimizer_keys_within_their_ranges(space_file):
    from ray.tune.schedulers import PopulationBasedTraining
    from ray.tune.search import BasicVariantGenerator

    space = spaces.load(space_file(scheduler={"name": "pbt"}, search={
        "loss.lam": {"type": "float", "low": 0.1, "high": 1.0, "log": True},
        "optim.momentum": {"type": "float", "low": 0.5, "high": 0.99},
        "data.batch_size": {"type": "categorical", "choices": [32, 64]}}))
    assert type(build_scheduler(space, epochs=4)) is PopulationBasedTraining
    assert type(build_searcher(space, "single", seed=0)) is BasicVariantGenerator  # PBT takes no searcher
    assert set(mutations(space)) == {"loss.lam", "optim.momentum"}  # the batch size stays as the trial began
    clipped = KeepInRange(space.params)({"loss.lam": 1.2, "optim.momentum": 0.4, "data.batch_size": 64})
    assert clipped == {"loss.lam": 1.0, "optim.momentum": 0.5, "data.batch_size": 64}
    nothing = spaces.load(space_file(scheduler={"name": "pbt"}, search={
        "data.batch_size": {"type": "categorical", "choices": [32, 64]}}))
    with pytest.raises(ConfigError, match="scheduler pbt mutates searched keys of loss or optim"):
        build_scheduler(nothing, epochs=4)


def test_workers_per_trial_fit_the_cluster_per_worker(space_file, capsys):
    space = spaces.load(space_file(resources={"cpus_per_trial": 2, "workers_per_trial": 4}))
    assert fit_resources(space, {"CPU": 4.0}).cpus_per_trial == 1.0
    assert "per worker (4 workers)" in capsys.readouterr().err
    with pytest.raises(ConfigError, match="resources.workers_per_trial must be at least 1"):
        spaces.load(space_file(resources={"workers_per_trial": 0}))


def test_trials_asking_for_resources_the_cluster_lacks_are_fitted_to_it(space_file, capsys):
    space = spaces.load(space_file(resources={"cpus_per_trial": 4, "gpus_per_trial": 0.5}))
    fitted = fit_resources(space, {"CPU": 2.0})
    assert (fitted.cpus_per_trial, fitted.gpus_per_trial) == (2.0, 0)
    assert "no GPU" in capsys.readouterr().err
    on_gpus = fit_resources(space, {"CPU": 16.0, "GPU": 1.0})
    assert (on_gpus.cpus_per_trial, on_gpus.gpus_per_trial) == (4, 0.5)


def test_define_by_run_samples_every_parameter_within_its_distribution(space_file):
    space = spaces.load(space_file(search={
        "loss.lam": {"type": "float", "low": 0.1, "high": 1.0, "log": True},
        "data.batch_size": {"type": "categorical", "choices": [16, 32]},
        "train.epochs": {"type": "int", "low": 1, "high": 3},
    }))
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    study.optimize(lambda t: DefineByRun(space.params)(t) or 0.0, n_trials=20)
    for t in study.trials:
        assert 0.1 <= t.params["loss.lam"] <= 1.0 and t.params["data.batch_size"] in (16, 32)
        assert t.params["train.epochs"] in (1, 2, 3)
        # the distributions Optuna recorded are the ones the plots rebuild the study with
        assert t.distributions == {p.key: p.distribution() for p in space.params}


def test_searcher_is_seeded_optuna_behind_a_concurrency_limit(space_file):
    from ray.tune.search import ConcurrencyLimiter

    space = spaces.load(space_file())
    searcher = build_searcher(space, "single", seed=3)
    assert isinstance(searcher, ConcurrencyLimiter) and searcher.max_concurrent == 2
    assert objectives(space, "acc_ce") == (["val_acc", "val_ce"], ["max", "min"])


def test_a_shared_studys_sampler_learns_what_other_drivers_finished_once_before_it_suggests(space_file, tmp_path,
                                                                                            capsys):
    from itra_tune.search import study as study_mod

    space = spaces.load(space_file())
    url = f"sqlite:///{tmp_path / 'shared.db'}"
    stored = study_mod.create(url, "shared", "val_ce", "min")
    dists = {p.key: p.distribution() for p in space.params}
    for key, lam in (("other_00000", 0.2), ("other_00001", 0.3)):  # another driver's finished trials
        study_mod.record(stored, key, {"loss.lam": lam, "loss.bandwidth": "median"}, dists, [0.5 + lam])
    study_mod.record(stored, "other_00002", {"loss.lam": 0.4, "loss.bandwidth": "median"}, dists, None)  # failed
    searcher = build_searcher(space, "single", seed=3, shared=(url, "shared"))
    assert searcher.max_concurrent == 2
    config = searcher.suggest("mine_00000")
    sampler = searcher.searcher._ot_study
    learned = [t for t in sampler.trials if study_mod.LEARNED_ATTR in t.user_attrs]
    assert sorted(t.user_attrs[study_mod.LEARNED_ATTR] for t in learned) == ["other_00000", "other_00001"]
    assert sorted(t.params["loss.lam"] for t in learned) == [0.2, 0.3] and 0.1 <= config["loss.lam"] <= 1.0
    err = capsys.readouterr().err
    assert "learned 2 trial(s) other drivers finished in the Optuna study 'shared' (2 in all)" in err
    # this driver's own trial, once recorded, is not learned back; another driver's new one is, once
    searcher.on_trial_complete("mine_00000", {"val_ce": 0.9, **config})
    study_mod.record(stored, "mine_00000", {k: config[k] for k in dists}, dists, [0.9])
    study_mod.record(stored, "other_00003", {"loss.lam": 0.5, "loss.bandwidth": "multiscale"}, dists, [0.6])
    searcher.suggest("mine_00001")
    searcher.suggest("mine_00002")
    keys = [t.user_attrs.get(study_mod.LEARNED_ATTR) for t in sampler.trials]
    assert sorted(k for k in keys if k) == ["other_00000", "other_00001", "other_00003"]
    # a study ranked by another objective is refused with the fix
    with pytest.raises(ConfigError, match="ranks by .* name another study"):
        study_mod.create(url, "shared", "val_acc", "max")


def test_settings_round_trip_restores_the_prepared_space(space_file, tmp_path):
    space, _ = prepare(space_file(), Options(num_samples=3, overrides=("loss.lam=0.9",)))
    save_settings(space, "acc_ce", tmp_path / "exp", "run123")
    again, objective, parent = load_settings(tmp_path / "exp")
    assert again == space and objective == "acc_ce" and parent == "run123"
    assert again.num_samples == 3 and again.base["loss"]["lam"] == 0.9
    with pytest.raises(ConfigError, match="not made by itra_tune.search"):
        load_settings(tmp_path / "elsewhere")


@pytest.mark.parametrize("options, message", [
    (Options(num_samples=0), "--num-samples must be at least 1 but got 0"),
    (Options(cpus_per_trial=0), "--cpus-per-trial must be above 0"),
    (Options(gpus_per_trial=-1), "--gpus-per-trial must be at least 0"),
    (Options(scheduler="bohb"), "scheduler must be one of"),
    (Options(overrides=("loss.lam=-1",)), "loss.lam cannot be negative"),
])
def test_prepare_refuses_bad_options_with_one_line(space_file, options, message):
    with pytest.raises(ConfigError, match=message) as e:
        prepare(space_file(), options)
    assert "\n" not in str(e.value)


def test_a_method_names_its_loss_and_optionally_its_pairing(space_file):
    from itra_tune.search import method_slug, method_space, parse_method

    assert parse_method("itra_c:detached") == ("itra_c", "detached") and parse_method("ce") == ("ce", None)
    space = spaces.load(space_file(search={
        "loss.lam": {"type": "float", "low": 0.1, "high": 1.0},
        "data.pairing": {"type": "categorical", "choices": ["independent", "memory"]}}))
    memory = method_space(space, "itra_c:memory")
    assert memory.base["data"]["pairing"] == "memory" and [p.key for p in memory.params] == ["loss.lam"]
    assert memory.name.endswith("-itra_c-memory") and method_slug("itra_c:memory") == "itra_c-memory"
    for bad in ("ce:memory", "itra_c:sideways", "focal"):
        with pytest.raises(ConfigError, match="--methods"):
            parse_method(bad)


def test_pbt_over_a_space_with_nothing_to_mutate_is_refused_before_ray(space_file, tmp_path):
    from itra_tune import search

    space = space_file(search={"data.batch_size": {"type": "categorical", "choices": [32, 64]}})
    with pytest.raises(ConfigError, match="scheduler pbt mutates searched keys"):
        search.run(space, scheduler="pbt", storage_path=str(tmp_path / "st"))
    assert not (tmp_path / "st").exists()
