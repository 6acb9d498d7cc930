"""hpc.prefetch: fetch a grid's sources into one cache, pre-process them, verify offline, then train offline.

The hub cannot be reached from this machine. Local sources (a save_to_disk dataset, a save_pretrained
model folder) need no network and run for real. For a hub model, the only thing faked is the network
download: the test writes the model into the cache folder in huggingface_hub's own cache layout
(models--org--name/{blobs,refs/main,snapshots/<commit>}), which is what snapshot_download leaves
there, and runs prefetch with HF_HUB_OFFLINE=1 so that snapshot_download resolves from it. Everything
after that (revision resolution, from_pretrained offline, pre-processing, training) is real.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from hpc.grid import expand, parse_grid
from hpc.prefetch import check_offline_ready, job_env, make_plan
from tests.train_utils import REPO, child_env
from vit_train.config import ConfigError

FAKE_COMMIT = "0123456789abcdef0123456789abcdef01234567"
SLURM = {"nodes": 1, "gpus_per_node": 0, "tasks_per_node": 1, "cpus_per_task": 1, "mem_gb": 2, "time_min": 10}


def _grid(tmp: Path, base: dict[str, Any], grid: dict[str, list[Any]] | None = None) -> Path:
    path = tmp / "grid.yaml"
    path.write_text(yaml.safe_dump({
        "name": "prefetch_test", "output_root": str(tmp / "runs"), "profile": "local", "slurm": SLURM,
        "base": {"data": {"num_workers": 0, "max_train_samples": 32, "max_eval_samples": 12},
                 "optim": {"batch_size": 8, "max_steps": 2, "epochs": 1},
                 "checkpoint": {"export_hf": False}, **base},
        "grid": grid or {"optim.lr": [1.0e-3, 2.0e-3]},
    }))
    return path


def _prefetch(grid: Path, cache: Path, **env: str) -> subprocess.CompletedProcess[str]:
    code = ("import argparse, sys\nfrom hpc import prefetch\np = argparse.ArgumentParser()\n"
            "prefetch.add_parser(p.add_subparsers())\na = p.parse_args(sys.argv[1:])\nsys.exit(a.handler(a))")
    return subprocess.run([sys.executable, "-c", code, "prefetch", str(grid), "--cache", str(cache)], cwd=REPO,
                          env=child_env(**env), capture_output=True, text=True, timeout=300, check=False)


def _train_offline(run_config: dict[str, Any], cache: Path, out: Path) -> subprocess.CompletedProcess[str]:
    """One real training run as a job would start it: offline, every HF cache pointing into the cache folder."""
    config = out.parent / f"{out.name}.yaml"
    config.write_text(yaml.safe_dump({**run_config, "output_dir": str(out)}))
    env = {k: v for k, v in child_env(**job_env(cache)).items() if k not in ("HF_HUB_CACHE", "HF_DATASETS_CACHE")}
    return subprocess.run([sys.executable, "-m", "vit_train", "--config", str(config), "--data.cache_dir", str(cache)],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=300, check=False)


def _prepared(cache: Path) -> dict[str, int]:
    return {p.name: (p / "meta.json").stat().st_mtime_ns for p in (cache / "prepared").iterdir() if p.is_dir()}


def test_local_sources_prefetched_then_training_runs_offline(tmp_path: Path, synthetic_dataset: Path) -> None:
    import torch

    from vit_train.model import save_local_model

    torch.manual_seed(0)
    model_dir = save_local_model("tiny", tmp_path / "pretrained_tiny", num_labels=5)
    grid = _grid(tmp_path, {"model": {"name": str(model_dir)}, "data": {
        "dataset": str(synthetic_dataset), "num_workers": 0, "max_train_samples": 32, "max_eval_samples": 12}})
    cache = tmp_path / "cache"

    proc = _prefetch(grid, cache)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "ready: jobs run offline with HF_HOME=" in proc.stdout and "FAILED" not in proc.stdout
    # One model, one dataset, and the two learning rates share one pre-processed cache.
    assert "1 model(s), 1 dataset(s), 1 pre-processing(s)" in proc.stdout
    assert "local folder" in proc.stdout and "built" in proc.stdout
    before = _prepared(cache)
    assert len(before) == 1

    runs = expand(parse_grid(yaml.safe_load(grid.read_text()), base_dir=tmp_path))
    assert check_offline_ready(runs, cache) == []
    done = _train_offline(runs[0].config.to_dict(), cache, tmp_path / "offline_run")
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "run completed at step 2" in done.stdout
    assert _prepared(cache) == before, "the job re-built the pre-processed cache instead of reading it"


def _fake_hub_model(hub: Path, repo_id: str, files: Path, commit: str) -> Path:
    """What snapshot_download leaves in the hub cache: content-addressed blobs, a snapshot folder of
    links named by the commit, and refs/main holding that commit."""
    repo = hub / f"models--{repo_id.replace('/', '--')}"
    snapshot = repo / "snapshots" / commit
    (repo / "blobs").mkdir(parents=True)
    snapshot.mkdir(parents=True)
    for f in sorted(files.iterdir()):
        data = f.read_bytes()
        blob = repo / "blobs" / hashlib.sha256(data).hexdigest()
        blob.write_bytes(data)
        (snapshot / f.name).symlink_to(os.path.relpath(blob, snapshot))
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    return snapshot


def test_hub_model_from_cache_resolves_revision_and_trains_offline(tmp_path: Path, synthetic_dataset: Path) -> None:
    import torch

    from vit_train.model import save_local_model

    torch.manual_seed(0)
    cache = tmp_path / "cache"
    _fake_hub_model(cache / "hub", "vit-test/tiny-vit", save_local_model("tiny", tmp_path / "files"), FAKE_COMMIT)
    grid = _grid(tmp_path, {"model": {"name": "vit-test/tiny-vit"}, "data": {
        "dataset": str(synthetic_dataset), "num_workers": 0, "max_train_samples": 32, "max_eval_samples": 12}})
    runs = expand(parse_grid(yaml.safe_load(grid.read_text()), base_dir=tmp_path))
    assert check_offline_ready(runs, cache) == []

    proc = _prefetch(grid, cache, HF_HUB_OFFLINE="1")  # no network here: snapshot_download reads the cache
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert f"hub, commit {FAKE_COMMIT[:12]}" in proc.stdout
    assert f"vit-test/tiny-vit revision main resolved to {FAKE_COMMIT}; pin model.revision" in proc.stdout

    before = _prepared(cache)
    done = _train_offline(runs[1].config.to_dict(), cache, tmp_path / "offline_hub_run")
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "run completed at step 2" in done.stdout
    assert _prepared(cache) == before


def test_check_offline_ready_flags_what_is_missing(tmp_path: Path, synthetic_dataset: Path) -> None:
    import torch

    from vit_train.model import save_local_model

    torch.manual_seed(0)
    cache = tmp_path / "cache"
    _fake_hub_model(cache / "hub", "vit-test/tiny-vit", save_local_model("tiny", tmp_path / "files"), FAKE_COMMIT)

    def runs(base: dict[str, Any], grid: dict[str, list[Any]] | None = None) -> list[Any]:
        path = _grid(tmp_path, {"data": {"dataset": str(synthetic_dataset)}, **base}, grid)
        return expand(parse_grid(yaml.safe_load(path.read_text()), base_dir=tmp_path))

    assert check_offline_ready(runs({"model": {"name": "vit-test/tiny-vit", "revision": FAKE_COMMIT}}), cache) == []
    problems = check_offline_ready(runs({}, {"model.name": ["vit-test/tiny-vit", "vit-test/absent"]}), cache,
                                   grid="grids/g.yaml")
    assert len(problems) == 1
    assert "model vit-test/absent@main is not in the cache" in problems[0]
    assert f"run `python submit.py prefetch grids/g.yaml --cache {cache.resolve()}`" in problems[0]
    problems = check_offline_ready(runs({"model": {"name": "vit-test/tiny-vit", "revision": "v2"}}), cache)
    assert len(problems) == 1 and "vit-test/tiny-vit@v2" in problems[0]
    problems = check_offline_ready(runs({"model": {"name": "tiny"}, "data": {"dataset": "vit-test/beans"}}), cache)
    assert len(problems) == 1 and problems[0].startswith("dataset vit-test/beans@main is not in the cache")
    problems = check_offline_ready(runs({"model": {"name": "tiny"}, "data": {"dataset": str(tmp_path / "gone")}}), cache)
    assert problems == [f"dataset {tmp_path / 'gone'}: no such folder"]


def test_two_revisions_of_one_hub_dataset_refused(tmp_path: Path) -> None:
    path = _grid(tmp_path, {"model": {"name": "tiny"}, "data": {"dataset": "vit-test/beans"}},
                 {"data.revision": ["v1", "v2"]})
    runs = expand(parse_grid(yaml.safe_load(path.read_text()), base_dir=tmp_path))
    with pytest.raises(ConfigError, match="one revision per grid"):
        make_plan(runs, tmp_path / "cache")
    problems = check_offline_ready(runs, tmp_path / "cache")  # a problem in the list, not an exception
    assert "one revision per grid" in problems[0] and len(problems) == 3  # + vit-test/beans at v1 and v2 missing
