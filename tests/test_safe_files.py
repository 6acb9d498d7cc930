"""Files a run reads and writes are safe: no pickled code runs on resume, folders are private, no secret is written.

* A malicious pickle (its ``__reduce__`` runs a shell command that creates a marker file) planted as the
  optimizer shard, as the optimizer param-group file of a real checkpoint, and as a data-cache file. First
  a control proves the payload works (``torch.load(..., weights_only=False)`` in a child creates the
  marker); then a real resume through the CLI must refuse it and the marker must never appear. Planted
  without re-sealing the manifest it is skipped as corrupt (sha256); re-sealed, as an attacker who can
  write the folder would, ColossalAI's ``torch.load`` (weights_only=True, torch's default since 2.6)
  refuses it. The data cache is safetensors + JSON and is never unpickled.
* Run and grid folders are created 0o750 (no access for others).
* HF_TOKEN and WANDB_API_KEY planted in the environment of a training run and of ``submit.py submit
  --dry-run`` appear in no file under the run/grid folder and nowhere in the printed output.
Nothing is faked.
"""

from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tests import reliability_report
from tests.train_utils import REPO, base_args, child_env, run_cli
from vit_train.components import checkpoint

SECRETS = {"HF_TOKEN": "hf_secret_XXXX", "WANDB_API_KEY": "wandb_secret_YYYY"}


class Payload:
    """Unpickling this runs ``touch <marker>``: what a poisoned checkpoint would do."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):  # type: ignore[no-untyped-def]
        return (os.system, (f"touch {self.marker}",))


def plant(path: Path, marker: Path) -> None:
    torch.save(Payload(marker), path)


def plant_raw(path: Path, marker: Path) -> None:
    """A bare pickle (torch.save would pick another format for a .safetensors name)."""
    import pickle

    path.write_bytes(pickle.dumps(Payload(marker)))


def _prove_payload_works(path: Path, marker: Path, raw: bool = False) -> None:
    code = (f"import pickle; pickle.load(open({str(path)!r}, 'rb'))" if raw else
            f"import torch; torch.load({str(path)!r}, weights_only=False)")
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120, capture_output=True)
    assert marker.exists(), "control: the payload did not run, so the test below would prove nothing"
    marker.unlink()


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory: pytest.TempPathFactory, synthetic_dataset: Path, data_cache: Path) -> Path:
    out = tmp_path_factory.mktemp("safe") / "run"
    run_cli(base_args(synthetic_dataset, data_cache, out, **{"optim.max_steps": 2}))
    return out


def test_no_weights_only_override_in_the_environment() -> None:
    """torch honours TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD=1 by unpickling anything: it must not be set."""
    assert os.environ.get("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", "0") in ("0", "")
    import inspect

    assert inspect.signature(torch.load).parameters["weights_only"].default is None  # None -> True since torch 2.6
    import colossalai.checkpoint_io.utils as cio

    src = inspect.getsource(cio)
    assert "weights_only=False" not in src, "ColossalAI now unpickles checkpoints with weights_only=False"


@pytest.mark.parametrize("target", ["optimizer/pytorch_optim-00001.bin", "optimizer/pytorch_optim_group.bin"],
                         ids=["optimizer_shard", "param_groups"])
@pytest.mark.parametrize("reseal", [False, True], ids=["manifest_untouched", "manifest_resealed"])
def test_malicious_pickle_in_checkpoint_never_runs(target: str, reseal: bool, finished_run: Path, tmp_path: Path,
                                                   synthetic_dataset: Path, data_cache: Path) -> None:
    run = tmp_path / "run"
    shutil.copytree(finished_run, run)
    (run / "result.json").unlink()
    ckpt = checkpoint.newest_complete(run / "checkpoints")
    assert ckpt is not None and (ckpt / target).is_file(), sorted(p.name for p in (ckpt / "optimizer").iterdir())
    marker = tmp_path / "PWNED"
    plant(ckpt / target, marker)
    _prove_payload_works(ckpt / target, marker)
    if reseal:
        (ckpt / checkpoint.MARKER).write_text(json.dumps({"step": 2, "files": checkpoint._manifest(ckpt)}))
        assert checkpoint.verify(ckpt) is None
    proc = run_cli(base_args(synthetic_dataset, data_cache, run, **{"optim.max_steps": 4}), check=False)
    ok = not marker.exists()
    try:
        assert ok, "the pickled payload ran during resume"
        if reseal:  # the manifest matches: torch.load itself must refuse
            assert proc.returncode != 0 and "Weights only load failed" in proc.stderr, proc.stderr[-3000:]
        else:  # the sha256 no longer matches: skipped as corrupt, the run starts over without it
            assert f"skipping checkpoint {ckpt}: {target} content differs" in proc.stderr or \
                   f"skipping checkpoint {ckpt}: {target} has" in proc.stderr, proc.stderr[-3000:]
    except AssertionError:
        ok = False
        raise
    finally:
        reliability_report.record("safety", case=f"malicious pickle as {target} ({'resealed' if reseal else 'untouched'} manifest)",
                                  ok=ok)


def test_malicious_pickle_in_data_cache_never_runs(tmp_path: Path, synthetic_dataset: Path, data_cache: Path,
                                                   finished_run: Path) -> None:
    cache = tmp_path / "cache"
    shutil.copytree(data_cache, cache)
    splits = sorted(cache.glob("prepared/*/train.safetensors"))
    assert splits, "the module fixture built no cache"
    marker = tmp_path / "PWNED"
    for split in splits:
        plant_raw(split, marker)
    _prove_payload_works(splits[0], marker, raw=True)
    proc = run_cli(base_args(synthetic_dataset, cache, tmp_path / "run", **{"optim.max_steps": 1}), check=False)
    ok = not marker.exists()
    reliability_report.record("safety", case="malicious pickle as data-cache train.safetensors", ok=ok)
    assert ok, proc.stderr[-3000:]
    source = (REPO / "vit_train" / "data.py").read_text()
    assert "torch.load" not in source and "pickle" not in source


def _other_bits(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode) & 0o007


def test_run_and_grid_folders_are_private(finished_run: Path, tmp_path: Path) -> None:
    from hpc import runstate, submission

    problems = [f"{p} is {oct(stat.S_IMODE(p.stat().st_mode))}" for p in
                [finished_run, finished_run / "checkpoints", *[p for _, p in checkpoint.list_checkpoints(finished_run / "checkpoints")]]
                if _other_bits(p)]
    # What `submit` creates before sbatch: the grid folder (grid_lock) and each run folder (run.json).
    grid_dir = tmp_path / "runs" / "g"
    with submission.grid_lock(grid_dir, out=lambda _: None):
        runstate.write_run_record(grid_dir / "run-abc", runstate.RunRecord("abc", "run-abc", "g", {}, {}))
    problems += [f"{p} is {oct(stat.S_IMODE(p.stat().st_mode))}" for p in (grid_dir, grid_dir / "run-abc") if _other_bits(p)]
    reliability_report.record("safety", case="run, checkpoint and grid folders have no access for others", ok=not problems)
    assert not problems, problems


def _files_containing(root: Path, needles: list[str]) -> list[str]:
    hits = []
    for p in root.rglob("*"):
        if p.is_file() and not p.is_symlink():
            data = p.read_bytes()
            hits += [f"{p}: {n}" for n in needles if n.encode() in data]
    return hits


def test_secrets_in_the_environment_are_never_written(tmp_path: Path, synthetic_dataset: Path, data_cache: Path) -> None:
    needles = list(SECRETS.values())
    run = tmp_path / "run"
    train = run_cli(base_args(synthetic_dataset, data_cache, run, **{"optim.max_steps": 2, "checkpoint.export_hf": True}),
                    env=child_env(**SECRETS))
    leaks = _files_containing(run, needles) + [f"training output: {n}" for n in needles if n in train.stdout + train.stderr]

    (tmp_path / "grids").mkdir()
    grid = tmp_path / "grids" / "g.yaml"
    grid.write_text(json.dumps({"name": "g", "output_root": "../runs", "profile": "local",
                                "slurm": {"gpus_per_node": 0, "tasks_per_node": 1, "cpus_per_task": 1, "mem_gb": 1},
                                "base": {"model": {"name": "tiny"}, "data": {"dataset": str(synthetic_dataset)}},
                                "grid": {"optim.lr": [1e-3, 2e-3]}}))
    dry = subprocess.run([sys.executable, str(REPO / "submit.py"), "submit", str(grid), "--dry-run", "--no-preflight-sbatch"],
                         cwd=REPO, env=child_env(**SECRETS), capture_output=True, text=True, timeout=120, check=False)
    assert dry.returncode == 0, dry.stderr[-3000:]
    assert "#SBATCH" in dry.stdout
    leaks += [f"dry-run output: {n}" for n in needles if n in dry.stdout + dry.stderr]
    leaks += _files_containing(tmp_path / "grids", needles)
    assert not (tmp_path / "runs").exists()  # a dry run writes nothing
    reliability_report.record("safety", case="HF_TOKEN / WANDB_API_KEY not in run folder, logs, dry-run sbatch", ok=not leaks)
    assert not leaks, leaks
