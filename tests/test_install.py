"""The package as users get it: a built wheel installed on its own, with and without extras, and imports that stay
light."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests import test_extras

ROOT = Path(__file__).resolve().parents[1]


def test_production_side_imports_neither_ray_nor_transformers():
    code = ("import sys, itra_tune.engine, itra_tune.best, itra_tune.export, itra_tune.production\n"
            "print(sorted(m for m in ('ray', 'transformers', 'optuna') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def _fresh_environment(tmp_path: Path) -> tuple[Path, Path]:
    """A wheel of this checkout, and a new virtual environment that holds nothing yet."""
    wheels = tmp_path / "wheels"
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--no-build-isolation",
                    "--wheel-dir", str(wheels), str(ROOT)], check=True, capture_output=True)
    env_dir = tmp_path / "env"
    subprocess.run([getattr(sys, "_base_executable", sys.executable), "-m", "venv", "--without-pip", str(env_dir)],
                   check=True)
    return env_dir / "bin" / "python", next(wheels.glob("itra_tune-*.whl"))


@pytest.mark.slow
def test_the_wheel_installs_without_extras_runs_the_readme_loop_and_with_search_searches(tmp_path):
    # uv resolves the wheel's own metadata as pip does, and installs torch from its cache in seconds, not minutes
    uv = pytest.importorskip("uv").find_uv_bin()
    python, wheel = _fresh_environment(tmp_path)
    empty = tmp_path / "somewhere"
    empty.mkdir()
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "ITRA_TUNE_SPACES")}
    env["MLFLOW_TRACKING_URI"] = f"sqlite:///{tmp_path / 'mlflow.db'}"

    def run(*args: str, program: str = str(python)) -> subprocess.CompletedProcess:
        out = subprocess.run([program, *args], cwd=empty, env=env, capture_output=True, text=True, timeout=900)
        assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-2000:]
        return out

    def install(spec: str) -> None:
        t0 = time.perf_counter()
        run("pip", "install", "--quiet", "--python", str(python), spec, program=uv)
        print(f"{spec}: {time.perf_counter() - t0:.0f} s")

    def installed() -> set[str]:
        listing = run("pip", "list", "--python", str(python), "--format=freeze", program=uv).stdout
        return {line.split("==")[0].lower().replace("_", "-") for line in listing.splitlines()}

    install(str(wheel))
    assert {"torch", "torchvision", "numpy", "pyyaml", "itra-tune"} <= installed()
    assert not installed() & {"ray", "mlflow", "optuna", "transformers", "accelerate", "scikit-learn", "matplotlib"}
    where = run("-c", "import itra_tune; print(itra_tune.__file__)").stdout.strip()
    assert not Path(where).is_relative_to(ROOT), "the test must exercise the wheel, not the checkout"
    out = run("-c", test_extras.core_script(empty)).stdout  # the README's loop and itra_tune.train, as users run them
    assert float(out.split("accuracy")[1].split()[0]) > 0.8 and "loaded []" in out
    assert float(out.split("val_acc")[1].split()[0]) > 0.5 and 'pip install "itra_tune[search]"' in out

    install(f"{wheel}[search]")
    now = installed()
    assert {"ray", "mlflow", "optuna", "scikit-learn", "matplotlib"} <= now and "transformers" not in now
    count = run("-c", "import itra_tune.spaces as s; print(len(s.names()))").stdout
    assert int(count) == len(list((ROOT / "search_spaces").glob("*.yaml")))
    run("-m", "itra_tune.search", "--space", "demo", "--smoke", "--storage-path", str(empty / "runs"))
    best = run("-c", "import itra_tune; cfg = itra_tune.best_config('demo', smoke=True)  # a --smoke search\n"
                     "print(cfg.data.name, cfg.loss.name, cfg.select.epoch)")
    assert best.stdout.split()[-3:-1] == ["digits", "itra_c"] and int(best.stdout.split()[-1]) in (1, 2)


def test_no_product_file_names_the_development_layout():
    product = [*(ROOT / "itra_tune").rglob("*.py"), *(ROOT / "search_spaces").glob("*.yaml"), ROOT / "Makefile",
               ROOT / "pyproject.toml"]
    named = [str(p.relative_to(ROOT)) for p in product if any(s in p.read_text() for s in ("../shared", "shared/data"))]
    assert named == []


def test_a_folder_named_itra_tune_that_shadows_the_package_is_one_line(tmp_path):
    # a clone named itra_tune in the working folder: Python imports the folder as an empty namespace package and
    # the modules from the (editable) install
    (tmp_path / "itra_tune").mkdir()
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    probe = subprocess.run([sys.executable, "-c", "import itra_tune; print(itra_tune.__file__)"], cwd=tmp_path,
                           env=env, capture_output=True, text=True)
    if probe.stdout.strip() != "None":
        pytest.skip("the installed package is found before the folder (a non-editable install): nothing shadows it")
    line = f"itra_tune resolves to the folder {tmp_path / 'itra_tune'}, not to the installed package"
    command = subprocess.run([sys.executable, "-m", "itra_tune.search", "--help"], cwd=tmp_path, env=env,
                             capture_output=True, text=True)
    assert command.returncode == 2 and command.stdout == ""
    assert command.stderr.count("\n") == 1 and line in command.stderr
    library = subprocess.run([sys.executable, "-c", "from itra_tune import search"], cwd=tmp_path, env=env,
                             capture_output=True, text=True)
    assert library.stderr.strip().splitlines()[-1] == f"ImportError: {line} ({ROOT / 'itra_tune'}): run from " \
                                                        "another folder, or rename that folder"
