"""The core install and its extras: without Ray, Optuna, MLflow, matplotlib, scikit-learn and transformers the
README's loop and ``itra_tune.train`` run, and every part that needs one of them says which extra adds it."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from itra_tune import extras
from tests.test_dropin import readme_loop

ROOT = Path(__file__).resolve().parents[1]
SEARCH_LINE = 'pip install "itra_tune[search]"'

# The README's loop as a user runs it: their model, their data, made in code; prints held-out accuracy.
LOOP_SCRIPT = """\
import sys
import torch
from torch import nn
from torch.utils.data import TensorDataset
g = torch.Generator().manual_seed(0)
centers = torch.randn(4, 16, generator=g) * 3
y = torch.randint(0, 4, (640,), generator=g)
x = centers[y] + torch.randn(640, 16, generator=g)
train_set, num_classes, lam, epochs = TensorDataset(x[:512], y[:512]), 4, 0.5, 3
torch.manual_seed(0)
model = nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 4))
{loop}
accuracy = (model(x[512:]).argmax(1) == y[512:]).float().mean().item()
print("accuracy", accuracy)
print("loaded", sorted(m for m in {blocked!r} if sys.modules.get(m) is not None))
"""

TRAIN_SCRIPT = """\
import itra_tune
result = itra_tune.train(itra_tune.load_config({config!r}))
print("val_acc", result.best["val_acc"])
"""

# the parts of the API that need an extra, and the error each raises without it
API_SCRIPT = """\
import itra_tune
for name in ("best_config", "load_best_model", "ITRATrainer"):
    try:
        getattr(itra_tune, name)("demo") if name != "ITRATrainer" else itra_tune.ITRATrainer
    except ImportError as e:
        print(name, type(e).__name__, e)
import contextlib, io
from itra_tune import cli, production
for argv in {train_cases!r}:  # the training command line, as `python -m itra_tune.train` runs it
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        code = cli.run("python -m itra_tune.train", production.main, argv)
    print(f"train exit {{code}}, {{err.getvalue().count(chr(10))}} line: {{err.getvalue().strip()}}")
"""

CONFIG = """\
data: {name: synthetic, batch_size: 32, subset: 640}
model: {name: mlp}
loss: {name: itra_c, lam: 0.5}
train: {epochs: 2, compactness_samples: 64}
"""

# Makes this interpreter behave as one with the core install alone: the extras' modules cannot be imported.
# Makes an interpreter behave as one with the core install alone: the extras' modules are not there (an entry of
# None in sys.modules: importing one raises ModuleNotFoundError, importlib.util.find_spec answers None).
BLOCKER = f"import sys\nsys.modules.update(dict.fromkeys({sorted(extras.EXTRA)!r}))\n"


def core_script(tmp_path: Path) -> str:
    """The README's loop, ``itra_tune.train`` on the synthetic mixture, then the parts that need an extra: each
    prints what it raised (the training command line: its exit code and what it printed)."""
    (tmp_path / "run.yaml").write_text(CONFIG)
    config = str(tmp_path / "run.yaml")
    train_cases = [["--space", "demo", "--out", str(tmp_path / "t")],
                   ["--config", config, "--set", "model.name=minilm", "--set", "data.name=ag_news_test_folds"]]
    return "\n".join([LOOP_SCRIPT.format(loop=readme_loop(), blocked=sorted(extras.EXTRA)),
                      TRAIN_SCRIPT.format(config=config), API_SCRIPT.format(train_cases=train_cases)])


def test_without_the_extras_the_core_trains_and_each_missing_part_names_its_extra(tmp_path):
    (tmp_path / "block").mkdir()
    (tmp_path / "block" / "sitecustomize.py").write_text(BLOCKER)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path / "block"), str(ROOT)])}

    def run(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, *args], cwd=tmp_path, env=env, capture_output=True, text=True,
                              timeout=300)

    out = run("-c", core_script(tmp_path))
    assert out.returncode == 0, out.stderr[-2000:]
    assert float(out.stdout.split("accuracy")[1].split()[0]) > 0.8 and "loaded []" in out.stdout
    assert float(out.stdout.split("val_acc")[1].split()[0]) > 0.5
    for name, needs, extra in [("best_config", "mlflow", "search"), ("load_best_model", "mlflow", "search"),
                               ("ITRATrainer", "transformers", "text")]:
        assert (f'{name} MissingExtra itra_tune.{name} needs {needs}, which is not installed: '
                f'pip install "itra_tune[{extra}]"\n') in out.stdout, out.stdout

    # the training command line: one line, exit 2, nothing written
    assert (f"train exit 2, 1 line: python -m itra_tune.train: error: the digits dataset needs scikit-learn, which is "
            f"not installed: {SEARCH_LINE}\n") in out.stdout
    assert ("train exit 2, 1 line: python -m itra_tune.train: error: the text model 'minilm' needs transformers, "
            'which is not installed: pip install "itra_tune[text]"\n') in out.stdout, out.stdout
    search = run("-m", "itra_tune.search", "--space", "demo")
    assert search.returncode == 2 and search.stderr.strip() == \
        f"python -m itra_tune.search: error: the search needs ray[tune], which is not installed: {SEARCH_LINE}"
    assert not (tmp_path / "t").exists() and not (tmp_path / "runs").exists()
