"""Text: the Zhang et al. CSV reader, the token cache, dynamic padding, the encoder families, and fine-tuning."""

from __future__ import annotations

import gzip
import random

import pytest
import torch
import torch.nn.functional as F

from itra_tune import cli, config, engine, losses, models
from itra_tune.config import ConfigError, DataConfig
from itra_tune.data import text
from itra_tune.production import main

TOPICS = [  # four classes, each with its own words, plus words shared by all
    "election minister parliament treaty embassy",
    "match goal season coach striker",
    "market shares profit merger investor",
    "software chip internet computer browser",
]
COMMON = "the a of today report says new after week"
VOCAB = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", ",", ".", *" ".join([*TOPICS, COMMON]).split()]


def tokenizer():
    from transformers import BertTokenizer

    return BertTokenizer(vocab={w: i for i, w in enumerate(VOCAB)})


def write_news(path, n, seed=0):
    """A Zhang et al. style CSV of ``n`` rows: class index, quoted title, quoted description."""
    rng = random.Random(seed)
    lines = []
    for _ in range(n):
        k = rng.randrange(4)
        words = TOPICS[k].split() * 2 + COMMON.split()
        title = " ".join(rng.sample(words, 3))
        body = " ".join(rng.sample(words, rng.randint(4, 12)))
        lines.append(f'"{k + 1}","{title}","{body}, {body}."')
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "wt") as f:
        f.write("\n".join(lines) + "\n")
    return path


@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory):
    """A one-layer BERT and its tokenizer saved as a local checkpoint folder, built in code."""
    from transformers import BertConfig, BertModel

    folder = tmp_path_factory.mktemp("tiny-bert")
    torch.manual_seed(0)
    # a wide initialisation: a random encoder this small then learns within a few epochs
    bert = BertConfig(vocab_size=len(VOCAB), hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                      intermediate_size=64, max_position_embeddings=64, initializer_range=0.2)
    BertModel(bert).save_pretrained(folder)
    tokenizer().save_pretrained(folder)
    return str(folder)


@pytest.fixture(scope="module")
def news_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("text-data")
    (root / "ag_news").mkdir()
    write_news(root / "ag_news" / "train.csv", 600, seed=0)
    write_news(root / "ag_news" / "test.csv.gz", 200, seed=1)
    return root


def test_csv_reader_handles_quoted_commas_newlines_quotes_and_gzip(tmp_path):
    rows = ('"3","Wall St., Bears","Short-sellers, ""the ultra-cynics"", are\nseeing green again."\n'
            '"1","Title only\\nwith a literal break"\n'
            '1,unquoted,"two, fields"\n')
    plain = tmp_path / "test.csv"
    plain.write_text(rows)
    zipped = tmp_path / "train.csv.gz"
    with gzip.open(zipped, "wt") as f:
        f.write(rows)
    for path in (plain, zipped):
        labels, texts = text.read_csv(path)
        assert labels == [2, 0, 0]
        assert texts[0] == 'Wall St., Bears Short-sellers, "the ultra-cynics", are\nseeing green again.'
        assert texts[1] == "Title only with a literal break"
        assert texts[2] == "unquoted two, fields"


@pytest.mark.parametrize(("content", "message"), [
    ('"World","no label"\n', "line 1: expected a class index in the first field"),
    ('"1","fine"\n"0","zero"\n', "line 2: expected a class index from 1"),
])
def test_csv_reader_names_the_bad_line(tmp_path, content, message):
    path = tmp_path / "train.csv"
    path.write_text(content)
    with pytest.raises(ConfigError, match=message):
        text.read_csv(path)


class CountingTokenizer:
    """A real tokenizer that counts how often it is asked to tokenize."""

    def __init__(self):
        self.inner, self.calls = tokenizer(), 0
        self.name_or_path = "tiny"

    def get_vocab(self):
        return self.inner.get_vocab()

    def __call__(self, *args, **kwargs):
        self.calls += 1
        return self.inner(*args, **kwargs)


def test_token_cache_is_reused_and_invalidated_by_max_length(tmp_path):
    path = write_news(tmp_path / "train.csv", 50)
    tok, cache = CountingTokenizer(), tmp_path / "cache"
    first, hit = text.tokenized(path, tok, 16, cache)
    assert not hit and tok.calls == 1 and len(list(cache.iterdir())) == 1
    again, hit = text.tokenized(path, tok, 16, cache)
    assert hit and tok.calls == 1
    assert torch.equal(again.ids, first.ids) and torch.equal(again.offsets, first.offsets)
    longer, hit = text.tokenized(path, tok, 32, cache)
    assert not hit and tok.calls == 2 and len(list(cache.iterdir())) == 2
    assert longer.ids.numel() > first.ids.numel()  # fewer rows truncated
    assert int((first.offsets[1:] - first.offsets[:-1]).max()) == 16


def test_batches_are_padded_to_their_own_longest_row(tmp_path):
    tokens = text.tokenize(["the match", "the market shares profit today", "a"], [0, 2, 1], tokenizer(), 8)
    texts = text.Texts(tokens, torch.arange(3), 8)
    x, y = texts.batch(torch.tensor([0, 2]))
    assert x.shape == (2, 4) and y.tolist() == [0, 1]  # [CLS] the match [SEP] / [CLS] a [SEP] PAD
    assert x[1, 3] == text.PAD and (x[0] != text.PAD).all()
    x_all, _ = texts.batch(torch.tensor([0, 1, 2]))
    assert x_all.shape == (3, 7)
    joined = text.pad_cat(x, x_all)
    assert joined.shape == (5, 7) and (joined[:2, 4:] == text.PAD).all()


def _encoders():
    from transformers import BertConfig, BertModel, DistilBertConfig, DistilBertModel, XLNetConfig, XLNetModel

    return {
        "bert": (lambda: BertModel(BertConfig(vocab_size=40, hidden_size=16, num_hidden_layers=1,
                                              num_attention_heads=2, intermediate_size=32)), "pooler"),
        "distilbert": (lambda: DistilBertModel(DistilBertConfig(vocab_size=40, dim=16, n_layers=1, n_heads=2,
                                                                hidden_dim=32)), "first"),
        "xlnet": (lambda: XLNetModel(XLNetConfig(vocab_size=40, d_model=16, n_layer=1, n_head=2, d_inner=32)),
                  "last"),
    }


@pytest.mark.parametrize("family", ["bert", "distilbert", "xlnet"])
def test_encoder_families_give_features_logits_and_lambda_zero_is_ce(family):
    make, pooling = _encoders()[family]
    torch.manual_seed(0)
    model = models.text_classifier(make(), num_classes=4).eval()
    assert model.pooling == pooling
    x = torch.randint(5, 40, (6, 9))
    x[3:, 6:] = text.PAD  # right padding on half the batch
    h = model.features(x)
    logits = model.head(h)
    assert h.shape == (6, 16) and logits.shape == (6, 4)
    # padding is masked: a row's features do not change with how much padding follows it
    assert torch.allclose(model.features(x[3:, :6]), h[3:], atol=1e-5)
    y = torch.randint(0, 4, (6,))
    itra = losses.build(config.LossConfig(name="itra_c", lam=0.0), 4, 16)
    parts = itra(logits[:3], y[:3], h[:3], h[3:], y[3:])
    assert torch.allclose(parts.total, F.cross_entropy(logits[:3], y[:3]))


def _text_config(checkpoint, root, tmp_path, **overrides):
    raw = {
        "data": {"name": "ag_news", "root": str(root), "batch_size": 32, "max_length": 24, "eval_batch_size": 64,
                 "cache_dir": str(tmp_path / "tokens")},
        "model": {"name": checkpoint, "pretrained": True},
        "loss": {"name": "itra_c", "lam": 0.3},
        "optim": {"name": "adamw", "lr": 1e-2, "weight_decay": 0.01, "schedule": "linear", "warmup_fraction": 0.1},
        "train": {"epochs": 3, "compactness_samples": 32},
        "device": "cpu",
    }
    return config.override(config.from_dict(raw), overrides)


def test_fine_tuning_a_local_checkpoint_with_itra_c_learns(tiny_checkpoint, news_root, tmp_path):
    cfg = _text_config(tiny_checkpoint, news_root, tmp_path)
    result = engine.fit(cfg)
    assert [r["epoch"] for r in result.history] == [1, 2, 3]
    assert result.history[-1]["match_loss"] > 0
    assert result.best["val_acc"] > 0.8 and result.history[-1]["test_acc"] > 0.8  # chance is 0.25
    # linear warm-up then decay: later epochs start below the peak
    assert 1e-2 > result.history[1]["lr"] > result.history[2]["lr"] > 0


def test_linear_schedule_warms_up_then_decays_to_zero():
    from test_engine import schedule_factors

    values = schedule_factors(config.OptimConfig(schedule="linear", warmup_fraction=0.2), epochs=2, steps_per_epoch=5)
    assert values[0] < values[1] < values[2] == pytest.approx(1.0)
    assert values[0] == pytest.approx(1 / 3) and values[5] == pytest.approx(5 / 8)
    assert values[2] > values[5] > values[9] > 0.0 and values[10] == 0.0


def test_text_dataset_with_an_image_model_is_refused(news_root, tmp_path):
    with pytest.raises(ConfigError, match="needs a text model"):
        engine.check(_text_config("resnet18", news_root, tmp_path))


@pytest.mark.parametrize(("override", "message"), [
    ("model.name=bert-base-uncased", "model 'bert-base-uncased' not found: .* `hf download bert-base-uncased"),
    ("data.name=yelp_full", "dataset 'yelp_full' not found: expected train.csv and test.csv"),
])
def test_missing_model_or_dataset_is_one_line_and_exit_2(tiny_checkpoint, news_root, tmp_path, capsys,
                                                         override, message):
    import re

    import yaml

    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump(_text_config(tiny_checkpoint, news_root, tmp_path).to_dict()))
    out = tmp_path / "out"
    argv = ["--config", str(path), "--set", override, "--out", str(out), "--quiet"]
    assert cli.run("python -m itra_tune.train", main, argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and re.search(message, err[0]), err
    assert not out.exists()


def test_ag_news_test_folds_split_the_7600_rows(tmp_path, real_data):
    root = real_data("ag_news")
    cfg = DataConfig(name="ag_news_test_folds", root=str(root), max_length=32, cache_dir=str(tmp_path))
    train, test = text.load_split("ag_news_test_folds", cfg, root, tokenizer())
    assert len(train) == 6080 and len(test) == 1520
    assert not set(train.rows.tolist()) & set(test.rows.tolist())
    assert torch.bincount(test.y, minlength=4).min() > 300  # every class in the test fold


@pytest.mark.slow
def test_minilm_fine_tuned_on_ag_news_with_itra_c_beats_chance(tmp_path, real_data):
    real_data("ag_news")  # found through $ITRA_TUNE_DATA, as a user's would be
    raw = {
        "data": {"name": "ag_news_test_folds", "batch_size": 16, "subset": 480,
                 "max_length": 32, "eval_batch_size": 128, "cache_dir": str(tmp_path)},
        "model": {"name": "minilm", "pretrained": True},
        "loss": {"name": "itra_c", "lam": 0.1},
        "optim": {"name": "adamw", "lr": 1e-4, "weight_decay": 0.01, "schedule": "linear", "warmup_fraction": 0.1},
        "train": {"epochs": 1, "compactness_samples": 64},
        "device": "cpu",
    }
    result = engine.fit(config.from_dict(raw))
    assert result.history[0]["test_acc"] > 0.6, result.history  # four balanced classes: chance is 0.25; measured 0.85
