"""Class names: read from the data (the paper's datasets, a CSV's string labels, a saved ``ClassLabel``, a
factory's ``classes``), carried through the trial's checkpoint, the export and the MLflow model, and answered by
the served model beside the class number."""

from __future__ import annotations

import sys

import mlflow
import numpy as np
import pytest
import torch
from test_own import text_config, topic_rows, write_csv

import itra_tune
from itra_tune import data, engine, export, tracking
from itra_tune.config import ConfigError

FACTORY = '''
import torch
from itra_tune.data import synthetic_mixture

class Named(torch.utils.data.TensorDataset):
    classes = ["ant", "bee", "cat", "dog", "eel", "fox", "gnu", "hen", "ibis", "jay"]

def named():
    x, y = synthetic_mixture(600)
    x = (x - x.min()) / (x.max() - x.min())  # pixels in [0, 1]
    return Named(x[:480], y[:480]), Named(x[480:], y[480:])

class Short(Named):
    classes = ["ant", "bee"]

def short():
    train, test = named()
    return Short(*train.tensors), Short(*test.tensors)
'''
NAMES = ("ant", "bee", "cat", "dog", "eel", "fox", "gnu", "hen", "ibis", "jay")


@pytest.fixture
def named(tmp_path, monkeypatch):
    (tmp_path / "namedfactory.py").write_text(FACTORY)
    monkeypatch.syspath_prepend(str(tmp_path))
    yield "namedfactory"
    sys.modules.pop("namedfactory", None)


def test_the_papers_datasets_name_their_classes():
    assert data.build(itra_tune.config.DataConfig(name="digits"), torch.device("cpu"), 0).labels == tuple("0123456789")
    assert data.SOURCES["fmnist"].labels[0] == "T-shirt/top" and len(data.SOURCES["fmnist"].labels) == 10
    assert data.SOURCES["ag_news"].labels == ("World", "Sports", "Business", "Sci/Tech")
    for name, src in data.SOURCES.items():  # every fixed list names as many classes as the dataset has
        if src.labels is not None and src.num_classes is not None:
            assert len(src.labels) == src.num_classes, name
    assert data.build(itra_tune.config.DataConfig(name="synthetic"), torch.device("cpu"), 0).labels is None


def test_a_csvs_string_labels_and_a_saved_classlabel_keep_their_names(tmp_path):
    import datasets

    rows = topic_rows()
    write_csv(tmp_path / "all.csv", rows)
    cfg = text_config(tmp_path, name="csv", path=str(tmp_path / "all.csv"))
    for _ in range(2):  # tokenized, then read back from the cache
        d = data.build(cfg.data, torch.device("cpu"), seed=0, model_name="minilm")
        assert d.labels == ("food", "sport", "tech")  # numbered in sorted order, named by class number

    order = ["tech", "food", "sport"]  # a ClassLabel's own order, not sorted: its numbers are kept
    features = datasets.Features({"headline": datasets.Value("string"), "body": datasets.Value("string"),
                                  "topic": datasets.ClassLabel(names=order)})
    encoded = [{**r, "topic": order.index(r["topic"])} for r in rows]
    datasets.Dataset.from_list(encoded, features=features).save_to_disk(str(tmp_path / "saved"))
    d = data.build(text_config(tmp_path, name="hf_disk", path=str(tmp_path / "saved")).data, torch.device("cpu"),
                   seed=0, model_name="minilm")
    assert d.labels == ("tech", "food", "sport")

    write_csv(tmp_path / "stars.csv", [{**r, "topic": str(1 + 2 * sorted(set(order)).index(r["topic"]))}
                                       for r in rows])  # 1, 3, 5: integers with gaps are numbered and named
    d = data.build(text_config(tmp_path, name="csv", path=str(tmp_path / "stars.csv")).data, torch.device("cpu"),
                   seed=0, model_name="minilm")
    assert d.labels == ("1", "3", "5")


def test_a_factorys_class_names_reach_the_checkpoint_the_export_and_the_served_mlflow_model(
        named, tiny_config, tmp_path, mlflow_server):
    saved = []
    result = engine.fit(tiny_config(**{"data.name": f"{named}:named", "data.subset": None, "train.epochs": 3}),
                        report=lambda row, state: saved.append(state["labels"]))
    assert saved == [list(NAMES)] * 3 and result.model.labels == NAMES
    x = torch.rand(64, 1, 8, 8)
    out = export.save(result.model, tiny_config(), tmp_path / "export", x, standalone=False)
    assert export.json_meta(out)["labels"] == list(NAMES)
    back = itra_tune.load_exported(out)
    assert back.labels == NAMES
    answered = export.predictions(back, x)
    assert list(answered["label"]) == [NAMES[c] for c in answered["class"]]
    assert len(set(answered["label"])) > 1  # not one name for every input

    run = mlflow.MlflowClient(mlflow_server).create_run(
        mlflow.MlflowClient(mlflow_server).create_experiment("labels")).info.run_id
    model_id = tracking.log_model(mlflow_server, run, tracking.ModelFiles(out, x.numpy(), answered, 3))
    mlflow.set_tracking_uri(mlflow_server)
    pyfunc = mlflow.pyfunc.load_model(f"models:/{model_id}")
    served = pyfunc.predict(x.numpy())
    assert list(served["label"]) == list(answered["label"])
    assert "label" in [o.name for o in pyfunc.metadata.get_output_schema().inputs]


def test_class_names_that_do_not_fit_the_classes_are_one_line(named):
    cfg = itra_tune.config.DataConfig(name=f"{named}:short")
    with pytest.raises(ConfigError, match=r"2 class names for 10 classes \(labels 0 to 9\); name every class"):
        data.build(cfg, torch.device("cpu"), 0)


def test_unnamed_classes_answer_numbers_only(tiny_config, tmp_path):
    result = engine.fit(tiny_config(**{"train.epochs": 1}))
    assert result.model.labels is None
    out = export.save(result.model, tiny_config(), tmp_path / "export", torch.rand(4, 1, 8, 8), standalone=False)
    assert export.json_meta(out)["labels"] is None and itra_tune.load_exported(out).labels is None
    assert set(export.predictions(result.model, torch.rand(4, 1, 8, 8))) == {"logits", "probabilities", "class"}
    assert np.isclose(export.predictions(result.model, torch.rand(4, 1, 8, 8))["probabilities"].sum(1), 1).all()
