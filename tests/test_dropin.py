"""ITRA in a user's own loop: the README's loop as written, ITRALoss, SecondBatch and split_model."""

from __future__ import annotations

import warnings
from pathlib import Path

import pytest
import readme
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import TensorDataset

import itra_tune
from benchmarks.reference import class_conditional_mmd_loop
from itra_tune.config import ConfigError
from itra_tune.data.images import synthetic_mixture

README = Path(__file__).resolve().parents[1] / "README.md"


def readme_loop() -> str:
    """The loop of the guide's "Your loop" section, as written there (the README shows the same block)."""
    return readme.block("Your loop")


def test_the_readme_shows_the_guides_loop_as_written():
    assert readme.block("ITRA in your own training") == readme_loop()


def mixture(n: int, held: int = 0) -> tuple[TensorDataset, TensorDataset]:
    """n training and ``held`` held-out examples of one Gaussian mixture (64-d, 10 classes)."""
    x, y = synthetic_mixture(n + held)
    x = x.flatten(1)
    return TensorDataset(x[:n], y[:n]), TensorDataset(x[n:], y[n:])


def mlp(d: int, k: int) -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(d, 64), nn.ReLU(), nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, k))


def run_loop(code: str, lam: float, epochs: int, train_set: TensorDataset) -> nn.Module:
    model = mlp(train_set.tensors[0].shape[1], 10)
    torch.manual_seed(1)  # the DataLoader's shuffle
    exec(code, {"model": model, "train_set": train_set, "num_classes": 10, "lam": lam, "epochs": epochs})
    return model


def compactness(model: nn.Module, data: TensorDataset) -> float:
    """The engine's figure: same-class over all-pairs feature distance between two halves of held-out data."""
    x, y = data.tensors
    with torch.no_grad():
        _, h = itra_tune.split_model(model)(x)
    n = len(x) // 2
    d = torch.cdist(h[:n], h[n:2 * n])
    same = y[:n, None] == y[None, n:2 * n]
    return (d[same].mean() / d.mean()).item()


def test_the_readme_loop_at_lambda_0_trains_exactly_as_cross_entropy():
    code, data = readme_loop(), mixture(640)[0]
    ce_code = code.replace("loss_fn(logits[:n], y1, h[:n], h[n:], y2).total", "F.cross_entropy(logits[:n], y1)")
    assert ce_code != code, "the README's loss line moved; update this test"
    itra = run_loop(code, 0.0, 2, data)
    ce = run_loop("import torch.nn.functional as F\n" + ce_code, 0.0, 2, data)
    for a, b in zip(itra.parameters(), ce.parameters()):
        assert torch.equal(a, b)


def with_form(code: str, form: str) -> str:
    loss_line = "itra_tune.ITRALoss(num_classes, lam=lam)"
    assert loss_line in code, "the README's loss line moved; update this test"
    return code.replace(loss_line, f"itra_tune.ITRALoss(num_classes, lam=lam, form={form!r})")


def held_out_accuracy(model: nn.Module, data: TensorDataset) -> float:
    x, y = data.tensors
    with torch.no_grad():
        return (model(x).argmax(1) == y).float().mean().item()


def test_the_readme_loop_keeps_a_model_without_normalization_learning_where_the_papers_form_collapses_it():
    # the test's MLP has no normalization before its features: the paper's form collapses it at lambda 1
    train, held = mixture(2048, 1024)
    code = readme_loop()  # 2 epochs of 32 steps each
    ce = run_loop(code, 0.0, 2, train)
    base = held_out_accuracy(ce, held)
    for lam in (0.1, 0.5, 1.0):
        assert held_out_accuracy(run_loop(code, lam, 2, train), held) >= 0.85 * base, lam
    itra = run_loop(code, 1.0, 2, train)
    assert compactness(itra, held) < 0.97 * compactness(ce, held)  # measured 0.641 against 0.683
    with pytest.warns(RuntimeWarning, match=r"features collapsed: .* form='gated' \(the default\)"):
        paper = run_loop(with_form(code, "paper"), 1.0, 4, train)
    assert held_out_accuracy(paper, held) < 0.5 * base  # measured 12% against 96%


def test_itra_loss_at_lambda_0_is_cross_entropy_in_value_and_gradient():
    torch.manual_seed(0)
    for pairing in ("independent", "detached", "memory"):
        logits = torch.randn(16, 4, requires_grad=True)
        h = torch.randn(32, 8, requires_grad=True)
        y = torch.randint(0, 4, (32,))
        loss_fn = itra_tune.ITRALoss(4, lam=0.0, pairing=pairing)
        parts = loss_fn(logits, y[:16], h[:16]) if pairing == "memory" else \
            loss_fn(logits, y[:16], h[:16], h[16:], y[16:])
        ce = F.cross_entropy(logits, y[:16])
        assert torch.equal(parts.total, ce)
        g_itra = torch.autograd.grad(parts.total, [logits, h], allow_unused=True)
        g_ce = torch.autograd.grad(ce, [logits])
        assert torch.equal(g_itra[0], g_ce[0]) and (g_itra[1] is None or not g_itra[1].any())


def test_itra_loss_is_the_papers_class_conditional_mmd():
    torch.manual_seed(0)
    h1, h2 = torch.randn(24, 6), torch.randn(24, 6)
    y1, y2 = torch.randint(0, 3, (24,)), torch.randint(0, 3, (24,))
    parts = itra_tune.ITRALoss(3, lam=0.7, form="paper")(torch.randn(24, 3), y1, h1, h2, y2)
    want = class_conditional_mmd_loop(h1, y1, h2, y2, 3, "median")
    assert torch.allclose(parts.match, want, atol=1e-5)
    assert torch.allclose(parts.total, parts.ce + 0.7 * parts.match)


def test_detached_pairing_sends_no_gradient_through_the_second_batch():
    h1, h2 = torch.randn(16, 8, requires_grad=True), torch.randn(16, 8, requires_grad=True)
    y = torch.randint(0, 2, (16,))
    parts = itra_tune.ITRALoss(2, lam=1.0, pairing="detached", form="paper")(torch.randn(16, 2), y, h1, h2, y)
    parts.total.backward()
    assert h2.grad is None and h1.grad.abs().sum() > 0


def test_memory_pairing_matches_against_past_batches_and_resumes_from_its_state():
    torch.manual_seed(0)
    loss_fn = itra_tune.ITRALoss(3, lam=0.5, pairing="memory", memory_batches=2)
    batches = [(torch.randn(8, 4), torch.randint(0, 3, (8,))) for _ in range(4)]
    matches = [loss_fn(torch.randn(8, 3), y, h).match for h, y in batches[:3]]
    assert matches[0] == 0 and matches[1] > 0  # the first call has nothing to match
    h_mem, y_mem = loss_fn.memory.contents()
    assert torch.equal(h_mem.sort(0).values, torch.cat([batches[1][0], batches[2][0]]).sort(0).values)
    resumed = itra_tune.ITRALoss(3, lam=0.5, pairing="memory", memory_batches=2)
    resumed.load_state_dict(loss_fn.state_dict())
    h, y = batches[3]
    assert torch.equal(resumed(torch.zeros(8, 3), y, h).match, loss_fn(torch.zeros(8, 3), y, h).match)


def test_itra_loss_refuses_bad_arguments_with_the_fix():
    with pytest.raises(ConfigError, match="cannot be negative"):
        itra_tune.ITRALoss(10, lam=-0.1)
    with pytest.raises(ConfigError, match="pairing must be one of independent, detached, memory"):
        itra_tune.ITRALoss(10, lam=0.1, pairing="split")
    with pytest.raises(ValueError, match="needs the second mini-batch"):
        itra_tune.ITRALoss(10, lam=0.1)(torch.randn(4, 10), torch.zeros(4, dtype=torch.long), torch.randn(4, 3))


def test_second_batch_is_endless_reshuffled_and_resumes_exactly():
    data = TensorDataset(torch.arange(10).float(), torch.arange(10))
    second = itra_tune.SecondBatch(data, batch_size=4, seed=3)
    seen = [next(second)[1] for _ in range(5)]  # 2 batches per pass (drop_last): 2.5 passes
    assert all(len(b) == 4 for b in seen)
    assert len(set(torch.cat(seen[:2]).tolist())) == 8  # a pass holds no repeat
    assert not torch.equal(torch.cat(seen[:2]), torch.cat(seen[2:4]))  # each pass is a new permutation
    again = itra_tune.SecondBatch(data, batch_size=4, seed=3)
    assert all(torch.equal(next(again)[1], b) for b in seen)  # the same seed, the same stream
    state = second.state_dict()
    rest = [next(second)[1] for _ in range(3)]
    resumed = itra_tune.SecondBatch(data, batch_size=4, seed=0)
    resumed.load_state_dict(state)
    assert all(torch.equal(next(resumed)[1], b) for b in rest)
    with pytest.raises(ValueError, match="no batch of 16"):
        itra_tune.SecondBatch(data, batch_size=16)


def test_split_model_returns_the_heads_input_for_common_classifiers():
    import torchvision

    resnet = torchvision.models.resnet18(num_classes=7).eval()
    x = torch.rand(2, 3, 32, 32)
    out, h = itra_tune.split_model(resnet)(x)
    assert h.shape == (2, 512) and torch.allclose(resnet.fc(h), out)
    vgg = torchvision.models.mobilenet_v2(num_classes=5).eval()
    out, h = itra_tune.split_model(vgg)(x)
    assert h.shape == (2, 1280) and torch.allclose(vgg.classifier[-1](h), out)
    plain = mlp(4, 3)
    net = itra_tune.split_model(plain)
    out, h = net(torch.rand(5, 4))
    assert h.shape == (5, 32) and torch.allclose(plain[-1](h), out)
    net.remove()
    assert not plain[-1]._forward_pre_hooks
    with pytest.raises(ValueError, match="found no linear layer"):
        itra_tune.split_model(nn.Sequential(nn.ReLU()))


class WithAux(nn.Module):
    """A classifier, then an auxiliary layer defined after it that reads the raw input: the last linear layer is not
    the head."""

    def __init__(self, twice: bool = False) -> None:
        super().__init__()
        self.body, self.classify, self.aux, self.twice = nn.Linear(4, 8), nn.Linear(8, 3), nn.Linear(4, 2), twice

    def forward(self, x):
        self.aux_out = self.aux(x)
        if self.twice:
            self.aux(x)
        return self.classify(torch.relu(self.body(x)))


class BareHead(nn.Module):
    """A head applied as a bare parameter: no layer makes the logits."""

    def __init__(self) -> None:
        super().__init__()
        self.body, self.w = nn.Linear(4, 8), nn.Parameter(torch.randn(3, 8))

    def forward(self, x):
        return torch.relu(self.body(x)) @ self.w.t()


def test_split_model_checks_the_head_it_found_and_says_which_layer_it_guessed():
    x = torch.rand(5, 4)
    with pytest.raises(RuntimeError, match=r"the model's outputs are not what aux \(Linear 4 -> 2\) returns.*pass "
                                           r"head="):
        itra_tune.split_model(WithAux())(x)
    with pytest.raises(RuntimeError, match=r"the head aux \(Linear 4 -> 2\) ran 2 times in one forward pass"):
        itra_tune.split_model(WithAux(twice=True))(x)
    with pytest.raises(RuntimeError, match=r"not what body \(Linear 4 -> 8\) returns"):
        itra_tune.split_model(BareHead())(x)
    model = WithAux()  # named, the head is taken as given
    out, h = itra_tune.split_model(model, head=model.classify)(x)
    assert h.shape == (5, 8) and torch.allclose(model.classify(h), out)
    plain = mlp(4, 3)  # a guess that checks out: a warning names the layer, once
    net = itra_tune.split_model(plain)
    with pytest.warns(UserWarning, match=r"took 4 \(Linear 32 -> 3\), the model's last linear layer, for the head"):
        net(x)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        net(x)  # checked once
        import torchvision

        itra_tune.split_model(torchvision.models.resnet18(num_classes=3).eval())(torch.rand(1, 3, 32, 32))  # fc


def test_split_model_finds_a_hugging_face_classifiers_features():
    from transformers import BertConfig, BertForSequenceClassification

    torch.manual_seed(0)
    cfg = BertConfig(vocab_size=50, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                     intermediate_size=32, num_labels=3)
    model = BertForSequenceClassification(cfg).eval()
    ids = torch.randint(0, 50, (2, 6))
    out, h = itra_tune.split_model(model)(input_ids=ids)
    pooled = model.bert(input_ids=ids).pooler_output
    assert torch.allclose(h, pooled) and torch.allclose(model.classifier(h), out.logits)


def tiny_bert_trainer(tmp_path, trainer_cls, steps=4, save_steps=None, **kwargs):
    """A Trainer (or ITRATrainer) over a tiny BERT built in code, without dropout, on a learnable token task."""
    from transformers import BertConfig, BertForSequenceClassification, TrainingArguments

    torch.manual_seed(0)
    cfg = BertConfig(vocab_size=40, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                     intermediate_size=32, num_labels=3, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    model = BertForSequenceClassification(cfg)
    g = torch.Generator().manual_seed(0)
    labels = torch.randint(0, 3, (64,), generator=g)
    ids = torch.randint(3, 40, (64, 8), generator=g)
    ids[:, 1] = labels  # the label is a token of the text
    rows = [{"input_ids": i, "attention_mask": torch.ones(8, dtype=torch.long), "labels": int(y)}
            for i, y in zip(ids, labels)]
    args = TrainingArguments(output_dir=str(tmp_path / trainer_cls.__name__), max_steps=steps, logging_steps=1,
                             per_device_train_batch_size=8, learning_rate=1e-3, use_cpu=True, report_to="none",
                             save_strategy="steps" if save_steps else "no", save_steps=save_steps or 500, seed=0,
                             disable_tqdm=True)
    return trainer_cls(model=model, args=args, train_dataset=rows, **kwargs)


def test_itra_trainer_at_lambda_0_is_the_trainers_cross_entropy(tmp_path):
    from transformers import Trainer

    plain = tiny_bert_trainer(tmp_path, Trainer)
    plain.train()
    itra = tiny_bert_trainer(tmp_path, itra_tune.ITRATrainer, lam=0.0)
    itra.train()
    ce = [h["loss"] for h in plain.state.log_history if "loss" in h]
    ours = [h["loss"] for h in itra.state.log_history if "loss" in h]
    assert len(ce) == 4 and ours == pytest.approx(ce, rel=1e-5)
    for a, b in zip(plain.model.parameters(), itra.model.parameters()):
        assert torch.allclose(a, b, atol=1e-6)


@pytest.mark.parametrize("pairing", ["independent", "memory"])
def test_itra_trainer_logs_its_matching_loss(tmp_path, pairing):
    trainer = tiny_bert_trainer(tmp_path, itra_tune.ITRATrainer, lam=0.5, pairing=pairing)
    trainer.train()
    logged = [h for h in trainer.state.log_history if "loss" in h]
    assert len(logged) == 4 and all("match_loss" in h for h in logged)
    assert all(h["match_loss"] > 0 for h in logged[1:])  # the memory holds nothing to match at the first step
    assert logged[0]["loss"] > 0


@pytest.mark.parametrize("pairing", ["independent", "memory"])
def test_itra_trainer_resumed_mid_epoch_continues_exactly(tmp_path, pairing):
    # 8 steps of 8 rows (64 rows: one epoch); a checkpoint at step 4, mid-epoch, holds S2's position and the memory
    whole = tiny_bert_trainer(tmp_path / "whole", itra_tune.ITRATrainer, steps=8, save_steps=4, lam=0.5,
                              pairing=pairing)
    whole.train()
    resumed = tiny_bert_trainer(tmp_path / "resumed", itra_tune.ITRATrainer, steps=8, lam=0.5, pairing=pairing)
    resumed.train(resume_from_checkpoint=str(tmp_path / "whole" / "ITRATrainer" / "checkpoint-4"))

    def losses(t):
        return [(h["step"], h["loss"], h["match_loss"]) for h in t.state.log_history if "loss" in h]

    # the resumed history is the checkpoint's (steps 1-4) and its own (5-8)
    assert [s for s, _, _ in losses(resumed)] == [1, 2, 3, 4, 5, 6, 7, 8]
    assert losses(resumed) == losses(whole)  # equal, not close: the same batches, S2 and memory


TRAINER_SEARCH = """
import json, sys, torch
import ray
from ray import tune
from pathlib import Path
from transformers import BertForSequenceClassification
import itra_tune
from test_dropin import tiny_bert_trainer

ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
out = Path(sys.argv[1])
trainer = tiny_bert_trainer(out, itra_tune.ITRATrainer, lam=0.1)
trainer.eval_dataset = trainer.train_dataset
config = trainer.model.config

def model_init(trial=None):
    torch.manual_seed(0)
    return BertForSequenceClassification(config)

trainer.model_init = model_init
best = trainer.hyperparameter_search(
    direction="minimize", backend="ray", n_trials=1, storage_path=str(out / "ray"),
    # form too: a 4-step run never leaves chance, where the default form holds lambda back entirely
    hp_space=lambda _: {"lam": tune.grid_search([0.0, 2.0]), "pairing": "memory", "form": "guarded"},
    compute_objective=lambda metrics: metrics["eval_loss"])
df = best.run_summary.dataframe()
print(json.dumps({"by_lam": [[float(l), float(e)] for l, e in zip(df["config/lam"], df["eval_loss"])],
                  "pairing": best.hyperparameters["pairing"]}))
"""


@pytest.mark.slow
def test_the_trainers_own_ray_search_sets_lambda_and_pairing(tmp_path):
    # a fresh process: transformers 5.24 cannot pickle a Trainer for Ray once another Trainer ran in the process
    import json
    import os
    import subprocess
    import sys

    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(README.parent), str(Path(__file__).parent)])}
    run = subprocess.run([sys.executable, "-c", TRAINER_SEARCH, str(tmp_path)], capture_output=True, text=True,
                         timeout=300, env=env)
    assert run.returncode == 0, run.stderr[-3000:]
    found = json.loads(run.stdout.strip().splitlines()[-1])
    by_lam = dict(found["by_lam"])
    assert set(by_lam) == {0.0, 2.0} and by_lam[0.0] != by_lam[2.0]  # lambda reached the loss
    assert found["pairing"] == "memory"


# --- SecondBatch under data parallelism, over Hugging Face datasets ---------------------------------------------


def _first_s2(rank: int, world: int, port: int, out: str) -> None:
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    try:
        x = torch.arange(64).float()
        second = itra_tune.SecondBatch(TensorDataset(x, x.long()), batch_size=8, seed=3)  # no rank given
        Path(out, f"{rank}.txt").write_text(" ".join(str(int(v)) for v in next(second)[1]))
    finally:
        dist.destroy_process_group()


def test_second_batch_under_a_process_group_draws_a_stream_of_its_own_on_every_rank(tmp_path):
    import torch.multiprocessing as mp
    from conftest import free_port

    mp.spawn(_first_s2, args=(2, free_port(), str(tmp_path)), nprocs=2)
    drawn = [(tmp_path / f"{r}.txt").read_text() for r in (0, 1)]
    x = torch.arange(64).float()
    alone = [" ".join(str(int(v)) for v in next(itra_tune.SecondBatch(TensorDataset(x, x.long()), 8, seed=3,
                                                                         rank=r))[1]) for r in (0, 1)]
    assert drawn[0] != drawn[1] and drawn == alone  # each rank its own stream, the same on every run


def test_second_batch_resumes_on_another_rank_with_that_ranks_stream():
    data = TensorDataset(torch.arange(40).float(), torch.arange(40))
    rank0 = itra_tune.SecondBatch(data, 4, seed=5, rank=0)
    [next(rank0) for _ in range(3)]
    rank1 = itra_tune.SecondBatch(data, 4, seed=5, rank=1)
    rank1.load_state_dict(rank0.state_dict())  # Lightning saves rank 0's state; every rank loads it
    straight = itra_tune.SecondBatch(data, 4, seed=5, rank=1)
    [next(straight) for _ in range(3)]
    assert torch.equal(next(rank1)[1], next(straight)[1])


def tokenized(n: int = 40):
    datasets = pytest.importorskip("datasets")
    rows = [{"input_ids": list(range(1, 2 + i % 7)), "attention_mask": [1] * (1 + i % 7), "label": i % 3}
            for i in range(n)]
    return datasets.Dataset.from_list(rows)


def test_second_batch_over_a_tokenized_dataset_gives_padded_dict_batches_that_join_with_s1():
    train = tokenized()
    collate = itra_tune.pad_collate(pad_id=0)
    second = itra_tune.SecondBatch(train, batch_size=8, seed=1, collate_fn=collate)
    s2 = next(second)
    assert set(s2) == {"input_ids", "attention_mask", "label"} and s2["label"].shape == (8,)
    width = s2["input_ids"].shape[1]
    assert width == int(s2["attention_mask"].sum(1).max())  # padded to the batch's longest
    assert ((s2["input_ids"] == 0) == (s2["attention_mask"] == 0)).all()
    s1 = collate([train[i] for i in range(4)])  # lengths 1-4
    both = itra_tune.join_batches(s1, s2, pad_id=0)
    assert both["input_ids"].shape == (12, max(width, 4)) and torch.equal(both["label"][4:], s2["label"])
    assert torch.equal(both["input_ids"][:4, :4], s1["input_ids"]) and not both["attention_mask"][:4, 4:].any()


def test_second_batch_says_so_when_a_column_still_holds_text():
    datasets = pytest.importorskip("datasets")
    raw = datasets.Dataset.from_list([{"text": f"row {i}", "label": i % 2} for i in range(16)])
    with pytest.raises(ValueError, match=r"column 'text' holds strings; tokenize it first"):
        next(itra_tune.SecondBatch(raw, batch_size=4))
    # the README's padding collate says the same where it meets the strings first
    with pytest.raises(ValueError, match=r"pad_collate: the dataset's column 'text' holds strings; tokenize it first"):
        next(itra_tune.SecondBatch(raw, batch_size=4, collate_fn=itra_tune.pad_collate(0)))


@pytest.mark.slow
def test_the_readme_hugging_face_datasets_loop_fine_tunes_minilm(monkeypatch):
    datasets = pytest.importorskip("datasets")
    from readme import block
    from test_own import topic_rows
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from itra_tune import hf

    path = hf.checkpoint_path("minilm")
    tokenizer = AutoTokenizer.from_pretrained(path)
    torch.manual_seed(0)
    model = AutoModelForSequenceClassification.from_pretrained(path, num_labels=3)
    topics = ["food", "sport", "tech"]
    rows = [{"text": r["headline"], "label": topics.index(r["topic"])} for r in topic_rows(160)]
    scope = {"dataset": datasets.Dataset.from_list(rows), "tokenizer": tokenizer, "model": model,
             "num_classes": 3, "lam": 0.5}
    exec(block("Hugging Face datasets"), scope)
    assert scope["both"]["input_ids"].shape[0] == 32  # S1 and S2 in one forward
    model.eval()
    enc = tokenizer([r["text"] for r in rows], padding=True, return_tensors="pt")
    with torch.no_grad():
        acc = (model(**enc).logits.argmax(1) == torch.tensor([r["label"] for r in rows])).float().mean().item()
    assert acc > 0.8  # measured 1.0 after one epoch; chance 0.33
