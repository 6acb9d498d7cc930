"""vit_train.startup: training processes do not import scikit-learn through transformers.

This machine has no scikit-learn, so the test installs a stand-in package (an importable
``sklearn`` with the names transformers imports, and ``scikit-learn`` distribution metadata) on
PYTHONPATH of child interpreters. Without the trim, loading transformers' ViT imports it (so the
check can fail); with it, it does not; ``VIT_TRAIN_KEEP_SKLEARN=1`` restores transformers' behaviour.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PROBE = "from transformers import ViTForImageClassification; import sys; print('SKLEARN', 'sklearn' in sys.modules)"


@pytest.fixture(scope="module")
def fake_sklearn(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("site")
    (root / "sklearn" / "metrics").mkdir(parents=True)
    (root / "sklearn" / "__init__.py").write_text(
        '"""Stand-in for the test: not scikit-learn."""\nimport os, pathlib\n'
        'if os.environ.get("SKLEARN_MARKER"):\n    pathlib.Path(os.environ["SKLEARN_MARKER"]).touch()\n')
    (root / "sklearn" / "metrics" / "__init__.py").write_text(
        "def roc_curve(*a, **k):\n    raise NotImplementedError\n\nf1_score = matthews_corrcoef = roc_curve\n")
    meta = root / "scikit_learn-1.5.0.dist-info"
    meta.mkdir()
    (meta / "METADATA").write_text("Metadata-Version: 2.1\nName: scikit-learn\nVersion: 1.5.0\n")
    return root


def _sklearn_imported(site: Path, code: str, **env: str) -> bool:
    full_env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(site), str(REPO)]), **env}
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=full_env, capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    line = next(ln for ln in proc.stdout.splitlines() if ln.startswith("SKLEARN "))
    return line.split()[1] == "True"


def test_transformers_imports_sklearn_without_the_trim(fake_sklearn: Path) -> None:
    assert _sklearn_imported(fake_sklearn, PROBE)


def test_training_entry_point_skips_it(fake_sklearn: Path) -> None:
    trimmed = "from vit_train.startup import skip_unused_imports; assert skip_unused_imports() == ['sklearn']; "
    assert not _sklearn_imported(fake_sklearn, trimmed + PROBE)
    assert _sklearn_imported(fake_sklearn, trimmed.replace("['sklearn']", "[]") + PROBE, VIT_TRAIN_KEEP_SKLEARN="1")


def test_training_run_never_imports_it(fake_sklearn: Path, tmp_path: Path, synthetic_dataset: Path,
                                        data_cache: Path) -> None:
    """A real `python -m vit_train` run (the path of every Slurm job too: hpc.job calls vit_train.cli.run)."""
    from tests.train_utils import base_args, child_env, run_cli

    marker = tmp_path / "sklearn-imported"
    env = child_env(SKLEARN_MARKER=str(marker))
    env["PYTHONPATH"] = os.pathsep.join([str(fake_sklearn), env["PYTHONPATH"]])
    subprocess.run([sys.executable, "-c", "import sklearn.metrics"], env=env, check=True, timeout=60)
    assert marker.is_file()  # the stand-in reports its import
    marker.unlink()
    run_cli(base_args(synthetic_dataset, data_cache, tmp_path / "run", **{"optim.max_steps": 1}), env=env)
    assert (tmp_path / "run" / "result.json").is_file()
    assert not marker.exists()
