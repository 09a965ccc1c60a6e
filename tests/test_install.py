"""The package as users get it: a built wheel installed on its own, and imports that stay light."""

from __future__ import annotations

import os
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def test_production_side_imports_neither_ray_nor_transformers():
    code = ("import sys, itra_tune.engine, itra_tune.best, itra_tune.export, itra_tune.production\n"
            "print(sorted(m for m in ('ray', 'transformers', 'optuna') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def _installed_python(tmp_path: Path) -> tuple[Path, Path]:
    """A fresh environment holding a wheel of this checkout and nothing of its source tree.

    Its dependencies (torch, Ray, ...) come from the test's own environment through a .pth line; the
    checkout's editable install is not among them (a .pth file is read only in a site directory).
    """
    wheels = tmp_path / "wheels"
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--no-build-isolation",
                    "--wheel-dir", str(wheels), str(ROOT)], check=True, capture_output=True)
    env_dir = tmp_path / "env"
    subprocess.run([getattr(sys, "_base_executable", sys.executable), "-m", "venv", "--without-pip", str(env_dir)],
                   check=True)
    python = env_dir / "bin" / "python"
    site = Path(subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                               capture_output=True, text=True, check=True).stdout.strip())
    (site / "dependencies.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    wheel = next(wheels.glob("itra_tune-*.whl"))
    subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--target", str(site), str(wheel)],
                   check=True, capture_output=True)
    return python, site


@pytest.mark.slow
def test_a_wheel_installed_elsewhere_finds_its_spaces_searches_and_answers_best_config(tmp_path):
    python, site = _installed_python(tmp_path)
    empty = tmp_path / "somewhere"
    empty.mkdir()
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "ITRA_TUNE_SPACES")}
    env["MLFLOW_TRACKING_URI"] = f"sqlite:///{tmp_path / 'mlflow.db'}"

    def run(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([str(python), *args], cwd=empty, env=env, capture_output=True, text=True, timeout=600)

    where = run("-c", "import itra_tune, itra_tune.spaces as s; print(itra_tune.__file__); print(len(s.names()))")
    file, count = where.stdout.split()
    assert Path(file).is_relative_to(site), "the test must exercise the wheel, not the checkout"
    assert int(count) == len(list((ROOT / "search_spaces").glob("*.yaml")))

    search = run("-m", "itra_tune.search", "--space", "demo", "--smoke", "--storage-path", str(empty / "runs"))
    assert search.returncode == 0, search.stdout[-2000:] + search.stderr[-2000:]
    best = run("-c", "import itra_tune; cfg = itra_tune.best_config('demo'); print(cfg.data.name, cfg.loss.name)")
    assert best.returncode == 0, best.stderr[-2000:]
    assert best.stdout.split()[-2:] == ["digits", "itra_c"]


def test_no_product_file_names_the_development_layout():
    product = [*(ROOT / "itra_tune").rglob("*.py"), *(ROOT / "search_spaces").glob("*.yaml"), ROOT / "Makefile",
               ROOT / "pyproject.toml"]
    named = [str(p.relative_to(ROOT)) for p in product if any(s in p.read_text() for s in ("../shared", "shared/data"))]
    assert named == []
