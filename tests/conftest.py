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


# Tests that use the one local Slurm cluster (or start, stop or fill it) share it; under pytest-xdist
# (`make test` runs two workers) they all go to one worker, in order, so none sees another's jobs,
# while the tests that need no cluster run on the other worker.
# (test_local_executor runs with no Slurm on PATH and test_packing is pure: they stay out.)
_CLUSTER_MODULES = {"test_bad_inputs", "test_demo", "test_devcluster", "test_packing_slurm", "test_readme",
                    "test_reliability_slurm", "test_safe_files", "test_slurm_e2e", "test_submit_slurm"}


@pytest.hookimpl(tryfirst=True)  # before xdist's own hook, which reads the xdist_group markers
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        module = item.module.__name__.rsplit(".", 1)[-1] if getattr(item, "module", None) else ""
        if module in _CLUSTER_MODULES or "slurm_cluster" in getattr(item, "fixturenames", ()) \
                or item.get_closest_marker("slurm"):
            item.add_marker(pytest.mark.xdist_group("slurm_cluster"))
