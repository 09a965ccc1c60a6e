"""Your own model and data: timm models, a factory of yours, text from a CSV file or a saved Hugging Face dataset,
images from a factory; in the engine, on the command line and in a search (the README's space and factory)."""

from __future__ import annotations

import csv
import json
import os
import random
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from readme import block as readme_block

import itra_tune
from itra_tune import config, engine, models
from itra_tune.config import ConfigError

ROOT = Path(__file__).resolve().parents[1]

FACTORY = '''
import torch
from torch import nn

def mlp(num_classes, input_shape):
    return nn.Sequential(nn.Flatten(), nn.Linear(int(torch.tensor(input_shape).prod()), 32), nn.ReLU(),
                         nn.Linear(32, num_classes))

def not_a_model(num_classes, input_shape):
    return "a string"

def no_linear(num_classes, input_shape):
    return nn.Sequential(nn.Flatten())

def mixture():
    from itra_tune.data import synthetic_mixture
    x, y = synthetic_mixture(600)
    x = (x - x.min()) / (x.max() - x.min())  # pixels in [0, 1]
    return torch.utils.data.TensorDataset(x[:480], y[:480]), torch.utils.data.TensorDataset(x[480:], y[480:])

def not_a_pair():
    return [1, 2, 3]

def widths(input_shape, num_classes, width=16):  # the parameters in another order, and one of the model's own
    return nn.Sequential(nn.Flatten(), nn.Linear(int(torch.tensor(input_shape).prod()), width), nn.ReLU(),
                         nn.Linear(width, num_classes))

def channels(num_classes, in_chans):  # timm's name for the input channels
    return nn.Sequential(nn.Conv2d(in_chans, 8, 3), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, num_classes))

def positional(n, shape):
    return nn.Linear(3, n)

def needs_depth(num_classes, depth):
    return nn.Sequential(*[nn.Linear(3, 3) for _ in range(depth)], nn.Linear(3, num_classes))

NOT_CALLABLE = 3
'''


@pytest.fixture
def factory(tmp_path, monkeypatch):
    """A user's module ``userfactories`` on the path, as a user's folder is when they search from it."""
    (tmp_path / "userfactories.py").write_text(FACTORY)
    monkeypatch.syspath_prepend(str(tmp_path))
    yield "userfactories"
    sys.modules.pop("userfactories", None)


# --- timm ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name,shape", [("timm:resnet18", (1, 28, 28)), ("timm:vit_tiny_patch16_224", (1, 32, 32)),
                                        ("timm/convnext_atto", (3, 32, 32))])
def test_a_timm_model_by_name_has_timms_pre_logits_features_and_its_own_head(name, shape):
    model = models.build(name, 10, shape).eval()
    net = model.body
    assert net.default_cfg["architecture"] == name[5:]  # timm:NAME and timm/NAME both name timm's model
    x = torch.rand(3, *shape)
    h = model.features(x)
    expected = net.forward_head(net.forward_features(model.preprocess(x)), pre_logits=True)
    assert h.shape == (3, model.feature_dim) and torch.allclose(h, expected)
    assert torch.allclose(model.head(h), model(x)) and model(x).shape == (3, 10)
    assert net.get_classifier().in_features == model.feature_dim and models.modality(name) == "image"


def test_an_unknown_timm_name_is_one_line_naming_how_to_list_them():
    with pytest.raises(ConfigError, match=r"unknown timm model 'resnet_nine' .*timm.list_models"):
        models.check_available("timm:resnet_nine")


def test_split_model_says_why_a_timm_model_without_classifier_cannot_train():
    import timm

    with pytest.raises(ValueError, match=r"no classifier \(created with num_classes=0\).*num_classes=<your classes>"):
        itra_tune.split_model(timm.create_model("resnet18", num_classes=0))


def test_the_readme_timm_example_gives_the_pre_logits_features():
    scope: dict = {}
    exec(readme_block("timm"), scope)
    model, h, logits = scope["model"], scope["h"], scope["logits"]
    assert h.shape == (8, 192) and logits.shape == (8, 10)
    x = torch.rand(8, 1, 28, 28)
    model.eval()
    _, h = scope["net"](x)
    assert torch.allclose(h, model.forward_head(model.forward_features(x), pre_logits=True))


# --- a factory of the user's ------------------------------------------------------------------------------


def test_a_factory_model_trains_in_the_engine_and_is_split_at_its_head(factory, tiny_config):
    model = models.build(f"{factory}:mlp", 10, (1, 8, 8))
    assert isinstance(model, models.Wrapped) and model.feature_dim == 32
    x = torch.rand(4, 1, 8, 8)
    inner = model.body.model
    assert torch.allclose(model(x), inner(model.preprocess(x)))
    assert torch.allclose(model.head(model.features(x)), model(x))
    assert sorted(model.state_dict()) == sorted(["preprocess.mean", "preprocess.std"] +
                                                [f"body.model.{k}" for k in inner.state_dict()])  # weights once
    result = engine.fit(tiny_config(**{"model.name": f"{factory}:mlp"}))
    assert result.best["val_acc"] > 0.5  # chance is 0.1


def test_a_factory_dataset_of_images_trains_with_its_own_statistics(factory, tiny_config):
    result = engine.fit(tiny_config(**{"data.name": f"{factory}:mixture", "data.subset": None, "train.epochs": 5}))
    assert result.best["val_acc"] > 0.5  # chance is 0.1
    train = sys.modules[factory].mixture()[0].tensors[0]  # the model normalizes by the training split's statistics
    assert torch.allclose(result.model.preprocess.mean.flatten(), train.mean((0, 2, 3)), atol=1e-5)


@pytest.mark.parametrize("key,ref,message", [
    ("model.name", "nosuchpackage.models:build", r"no module named 'nosuchpackage.models'; run from the folder"),
    ("model.name", "userfactories:missing", r"module 'userfactories' has no 'missing'"),
    ("model.name", "userfactories:NOT_CALLABLE", r"NOT_CALLABLE is a int, not a callable"),
    ("data.name", "userfactories:nothing", r"data.name 'userfactories:nothing': module 'userfactories' has no"),
])
def test_a_factory_that_does_not_import_is_one_line_before_any_data_loads(factory, tiny_config, key, ref, message):
    cfg = tiny_config(**{key: ref})
    with pytest.raises(ConfigError, match=message):
        engine.check(cfg)
        engine.check_available(cfg)


@pytest.mark.parametrize("key,ref,message", [
    ("model.name", "userfactories:not_a_model", r"returned a str, not a torch nn.Module"),
    ("model.name", "userfactories:no_linear", r"found no linear layer in Sequential; pass head="),
    ("data.name", "userfactories:not_a_pair", r"returned a list; a dataset factory returns \(train, test\)"),
])
def test_a_factory_returning_the_wrong_thing_says_what_it_should_return(factory, tiny_config, key, ref, message):
    with pytest.raises(ConfigError, match=message):
        engine.fit(tiny_config(**{key: ref}))


def test_a_factory_is_called_by_keyword_with_what_its_signature_takes_and_the_options(factory, tiny_config):
    model = models.build(f"{factory}:widths", 10, (1, 8, 8), options={"width": 12})
    assert model.feature_dim == 12 and model(torch.rand(2, 1, 8, 8)).shape == (2, 10)  # input_shape, by name
    conv = models.build(f"{factory}:channels", 10, (3, 8, 8)).body.model[0]
    assert conv.in_channels == 3  # in_chans: the data's channels
    result = engine.fit(tiny_config(**{"model.name": f"{factory}:widths", "model.options.width": 24}))
    assert result.model.feature_dim == 24 and result.best["val_acc"] > 0.5  # chance is 0.1


@pytest.mark.parametrize("ref,options,message", [
    ("positional", None, r"called by keyword, factory\(num_classes=...\), but this one takes \(n, shape\); name "
                         r"its parameter num_classes"),
    ("widths", {"widht": 3}, r"model.options.widht: userfactories:widths takes no such argument \(did you mean "
                             r"'width'\?\); its parameters: input_shape, num_classes, width"),
    ("widths", {"num_classes": 3}, r"model.options.num_classes: itra_tune sets num_classes from the data"),
    ("needs_depth", None, r"its parameter 'depth' has no default .* --set model.options.depth=..."),
])
def test_a_factory_whose_signature_does_not_fit_is_one_line_before_ray_starts(factory, tiny_config, ref, options,
                                                                              message):
    cfg = tiny_config(**{"model.name": f"{factory}:{ref}", **({"model.options": options} if options else {})})
    with pytest.raises(ConfigError, match=message):
        engine.check_available(cfg)  # what the search checks before Ray starts


def test_options_reach_timm_and_a_model_that_takes_none_says_so(tiny_config):
    vit = models.build("timm:vit_tiny_patch16_224", 10, (3, 32, 32), options={"patch_size": 4, "depth": 1})
    assert vit.body.patch_embed.patch_size == (4, 4) and len(vit.body.blocks) == 1
    assert vit(torch.rand(2, 3, 32, 32)).shape == (2, 10)
    with pytest.raises(ConfigError, match=r"model.options for 'timm:resnet18': .*unexpected keyword argument 'bogus'"):
        models.build("timm:resnet18", 10, (3, 32, 32), options={"bogus": 1})
    with pytest.raises(ConfigError, match=r"model.options: 'mlp' takes no options; they reach timm:NAME, "
                                          r"torchvision:NAME and factories"):
        engine.check_available(tiny_config(**{"model.name": "mlp", "model.options.width": 3}))
    with pytest.raises(ConfigError, match=r"unknown key 'model.patch_size'.*go under model.options"):
        tiny_config(**{"model.patch_size": 4})


def test_a_torchvision_model_by_name_is_built_by_keyword_with_random_weights():
    import torchvision

    model = models.build("torchvision:resnet18", 10, (1, 32, 32)).eval()  # a gray image into an ImageNet network
    net = model.body.model[1]
    assert isinstance(net, torchvision.models.ResNet) and net.fc.out_features == 10 and model.feature_dim == 512
    reference = torchvision.models.resnet18(num_classes=10)  # the same architecture at its own random init
    assert sorted(net.state_dict()) == sorted(reference.state_dict())
    x = torch.rand(2, 1, 32, 32)
    h = model.features(x)
    assert h.shape == (2, 512) and torch.allclose(model.head(h), model(x), atol=1e-6)
    assert torch.allclose(model(x), net(model.preprocess(x).expand(-1, 3, -1, -1)), atol=1e-6)
    assert models.modality("torchvision:resnet18") == "image"
    # the package.module:callable form is called by keyword too: resnet18(num_classes=10), not resnet18(10, ...)
    assert models.build("torchvision.models:resnet18", 10, (3, 32, 32)).body.model.fc.out_features == 10
    with pytest.raises(ConfigError, match=r"unknown torchvision model 'resnet81' .*did you mean 'resnet18'"):
        models.check_available("torchvision:resnet81")
    with pytest.raises(ConfigError, match=r"read 3 channels .* not 2"):
        models.build("torchvision:resnet18", 10, (2, 32, 32))


def test_an_unknown_name_lists_the_outside_forms_too():
    with pytest.raises(ConfigError, match=r"timm:NAME .*torchvision:NAME .*package.module:callable"):
        models.check_name("resnet_nine")
    with pytest.raises(ConfigError, match=r"package.module:callable for images of your own"):
        itra_tune.data.source("my_images")


# --- text of the user's: CSV and saved Hugging Face datasets -------------------------------------------------


def topic_rows(n: int = 240) -> list[dict[str, str]]:
    """Headlines of three topics, each told by its words: a text task MiniLM learns in one epoch."""
    rng = random.Random(0)
    words = {"sport": "goal match team score", "tech": "chip code cloud phone", "food": "bread soup spice cake"}
    rows = []
    for _ in range(n):
        topic = rng.choice(sorted(words))
        rows.append({"headline": " ".join(rng.choices(words[topic].split(), k=5)), "body": "news", "topic": topic})
    return rows


def write_csv(path: Path, rows: list[dict[str, str]]) -> None:
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)


def text_config(tmp_path: Path, **data) -> config.Config:
    return config.from_dict({
        "data": {"text_column": "headline,body", "label_column": "topic", "batch_size": 16, "max_length": 16,
                 "cache_dir": str(tmp_path / "tokens"), **data},
        "model": {"name": "minilm", "pretrained": True}, "loss": {"name": "itra_c", "lam": 0.5},
        "optim": {"name": "adamw", "lr": 1e-4, "schedule": "none"}, "train": {"epochs": 1, "compactness_samples": 16}})


def test_a_csv_folder_and_the_same_rows_saved_by_datasets_train_alike(tmp_path):
    import datasets

    rows = topic_rows()
    (tmp_path / "csv").mkdir()
    write_csv(tmp_path / "csv" / "train.csv", rows[:200])
    write_csv(tmp_path / "csv" / "test.csv", rows[200:])
    datasets.DatasetDict({"train": datasets.Dataset.from_list(rows[:200]),
                          "test": datasets.Dataset.from_list(rows[200:])}).save_to_disk(str(tmp_path / "saved"))
    from_csv = engine.fit(text_config(tmp_path, name="csv", path=str(tmp_path / "csv")))
    from_disk = engine.fit(text_config(tmp_path, name="hf_disk", path=str(tmp_path / "saved")))
    assert from_csv.model.num_classes == 3  # the classes read from the data: food, sport, tech
    assert from_csv.best["val_acc"] > 0.8  # measured 1.0; chance 0.33
    for a, b in zip(from_csv.history, from_disk.history, strict=True):  # the same tokens, the same training
        a.pop("epoch_time"), b.pop("epoch_time")
        assert a == pytest.approx(b, rel=1e-5)


def test_one_csv_file_is_cut_into_training_and_test_rows(tmp_path):
    from itra_tune import data

    write_csv(tmp_path / "all.csv", topic_rows())
    cfg = text_config(tmp_path, name="csv", path=str(tmp_path / "all.csv"))
    d = data.build(cfg.data, torch.device("cpu"), seed=0, model_name="minilm")
    assert d.num_classes == 3 and d.num_train == 240 - 48 - 19  # a 20% test fold, then 10% of the rest held out


def test_classes_are_read_from_the_labels_integers_from_0_kept_as_they_are():
    from itra_tune.data.own import class_index, labels_of

    assert class_index(labels_of(["0", "2", "1", "2"]), "f") == {0: 0, 1: 1, 2: 2}
    assert class_index(labels_of(["1", "3", "3"]), "f") == {1: 0, 3: 1}  # Zhang's 1-based stars, numbered
    assert class_index(labels_of(["tech", "food", "sport"]), "f") == {"food": 0, "sport": 1, "tech": 2}
    with pytest.raises(ConfigError, match="one class only"):
        class_index(["a", "a"], "f")


@pytest.mark.parametrize("data,message", [
    ({"path": "missing.csv"}, r"data.path '.*missing.csv': expected a CSV file, or a folder holding train.csv"),
    ({"label_column": "stars"}, r"no column 'stars' \(data.label_column\); its columns are headline, body, topic"),
    ({"text_column": "title"}, r"no column 'title' \(data.text_column\)"),
    ({"path": None}, r"data.name 'csv' reads your own files: set data.path"),
])
def test_bad_own_text_is_one_line_naming_the_key(tmp_path, data, message):
    write_csv(tmp_path / "all.csv", topic_rows(20))
    cfg = text_config(tmp_path, name="csv", path=str(tmp_path / "all.csv"))
    cfg = config.override(cfg, {f"data.{k}": str(tmp_path / v) if k == "path" and v else v for k, v in data.items()})
    with pytest.raises(ConfigError, match=message):
        engine.check_available(cfg)


def test_an_empty_or_header_only_csv_and_a_text_factory_without_tokenizer_each_say_what_to_fix(tmp_path, factory):
    (tmp_path / "empty.csv").write_text("")
    cfg = text_config(tmp_path, name="csv", path=str(tmp_path / "empty.csv"))
    with pytest.raises(ConfigError, match=r"empty.csv: empty, not even a header row; a CSV file starts with a header "
                                          r"naming its columns \(topic and headline,body here"):
        engine.check_available(cfg)
    (tmp_path / "header.csv").write_text("headline,body,topic\n")
    cfg = text_config(tmp_path, name="csv", path=str(tmp_path / "header.csv"))
    with pytest.raises(ConfigError, match=r"header.csv': no examples, only its column names"):
        engine.fit(cfg)
    write_csv(tmp_path / "all.csv", topic_rows(20))
    cfg = config.override(text_config(tmp_path, name="csv", path=str(tmp_path / "all.csv")),
                          {"model.name": f"{factory}:mlp", "model.pretrained": False})
    with pytest.raises(ConfigError, match=r"data.tokenizer: model.name 'userfactories:mlp' is a factory of yours, "
                                          r"which brings no tokenizer; set data.tokenizer"):
        engine.check(cfg)


def test_a_test_label_the_training_split_lacks_is_named(tmp_path):
    rows = topic_rows(60)
    (tmp_path / "csv").mkdir()
    write_csv(tmp_path / "csv" / "train.csv", [r for r in rows if r["topic"] != "tech"])
    write_csv(tmp_path / "csv" / "test.csv", rows)
    with pytest.raises(ConfigError, match=r"the test split has label 'tech', which the training split lacks"):
        engine.fit(text_config(tmp_path, name="csv", path=str(tmp_path / "csv")))


# --- the README's space and factory, searched ----------------------------------------------------------------


def write_readme_search(folder: Path) -> Path:
    (folder / "mymodels.py").write_text(readme_block("Your model and data in a search", "python"))
    space = folder / "my_models.yaml"
    space.write_text(readme_block("Your model and data in a search", "yaml"))
    return space


@pytest.mark.slow
def test_the_readme_space_searches_a_factory_and_a_timm_model_from_the_users_folder(tmp_path, mlflow_server):
    # a fresh process run from the folder holding the user's factory, as a user runs it; nothing else of theirs
    space = write_readme_search(tmp_path)
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "MLFLOW_TRACKING_URI")}
    run = subprocess.run([sys.executable, "-m", "itra_tune.search", "--space", space.name, "--smoke",
                          "--set", "train.epochs=1", "--tracking-uri", mlflow_server, "--name", "own"],
                         cwd=tmp_path, capture_output=True, text=True, timeout=600, env=env)
    assert run.returncode == 0, run.stderr[-3000:]
    summary = json.loads((tmp_path / "runs" / "search" / "own" / "summary.json").read_text())
    assert summary["completed"] == 2 and summary["failed"] == 0
    import mlflow

    client = mlflow.MlflowClient(mlflow_server)
    exp = client.get_experiment_by_name("my_models")
    trials = [r for r in client.search_runs([exp.experiment_id]) if "mlflow.parentRunId" in r.data.tags]
    assert len(trials) == 2 and all(r.data.metrics["best_val_ce"] > 0 for r in trials)
    assert {r.data.params["model.name"] for r in trials} <= {"mymodels:build", "timm:resnet18"}


@pytest.mark.slow
@pytest.mark.parametrize("model", [{"name": "torchvision:resnet18"},
                                   {"name": "timm:vit_tiny_patch16_224", "options": {"patch_size": 4, "depth": 1}}])
def test_a_space_file_searches_a_torchvision_resnet_and_a_timm_vit_of_patch_4(tmp_path, model):
    # image models by name, with their own arguments (model.options), from a space file on the command line
    import yaml

    space = tmp_path / "named.yaml"
    space.write_text(yaml.safe_dump({
        "base": {"data": {"name": "synthetic", "batch_size": 32, "subset": 320}, "model": model,
                 "loss": {"name": "itra_c", "lam": 0.5}, "train": {"epochs": 1, "compactness_samples": 32}},
        "search": {"loss.lam": {"type": "float", "low": 0.1, "high": 1.0}},
        "budget": {"num_samples": 2, "max_concurrent": 2, "confirm_share": 0}, "scheduler": {"name": "none"}}))
    run = subprocess.run([sys.executable, "-m", "itra_tune.search", "--space", str(space), "--storage-path",
                          str(tmp_path / "st"), "--name", "named", "--tracking-uri", f"sqlite:///{tmp_path / 'm.db'}"],
                         capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    summary = json.loads((tmp_path / "st" / "named" / "summary.json").read_text())
    assert summary["completed"] == 2 and summary["failed"] == 0, summary
    assert summary["best_config"]["model"] == {"pretrained": False, "options": {}, **model}


def test_a_space_naming_a_factory_that_does_not_import_is_refused_before_anything_is_written(tmp_path):
    space = write_readme_search(tmp_path)
    space.write_text(space.read_text().replace('"timm:resnet18"', '"mymodels:resnet"'))
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    run = subprocess.run([sys.executable, "-m", "itra_tune.search", "--space", space.name, "--smoke"],
                         cwd=tmp_path, capture_output=True, text=True, timeout=300, env=env)
    assert run.returncode == 2
    assert run.stderr.strip() == ("python -m itra_tune.search: error: model.name 'mymodels:resnet': module "
                                  "'mymodels' has no 'resnet'")
    assert not (tmp_path / "runs").exists() and not (tmp_path / "mlflow.db").exists()


def test_the_search_puts_the_factorys_folder_on_the_trial_workers_path(factory, tmp_path):
    from itra_tune import spaces
    from itra_tune.search import code_folders

    space = write_readme_search(tmp_path)
    sys.modules.pop("mymodels", None)
    sp = spaces.load(space)
    try:
        sys.path.insert(0, str(tmp_path))
        assert code_folders([(sp, None)]) == (str(tmp_path.resolve()),)
    finally:
        sys.path.remove(str(tmp_path))
        sys.modules.pop("mymodels", None)
