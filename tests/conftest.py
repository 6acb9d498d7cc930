"""Shared fixtures: a synthetic beans-like dataset made once per test session (the hub is
unreachable here, so tests train on data the project generates itself)."""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def synthetic_dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from vit_train.synthetic import make_beans_like

    out = tmp_path_factory.mktemp("data") / "beans_synthetic"
    return make_beans_like(out, num_train=96, num_validation=30, num_test=12, image_size=32, seed=0)


@pytest.fixture(scope="session")
def data_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("cache")


@pytest.fixture(scope="session")
def slurm_cluster():  # type: ignore[no-untyped-def]
    """The local real Slurm cluster (hpc.dev.cluster: nodes n1, n2; partitions debug, urgent), started
    once per session for tests marked ``slurm`` and stopped at the end if this session started it."""
    import os

    from hpc.dev import cluster as devcluster

    if os.geteuid() != 0 or devcluster.missing_packages():
        pytest.fail("needs root and the Slurm packages: run `make install` (python -m hpc.dev.cluster install) as root")
    was_running = devcluster.is_running()
    info = devcluster.start()
    yield info
    if not was_running:
        devcluster.stop()
