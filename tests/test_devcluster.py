"""The local dev Slurm cluster (hpc.dev.cluster), driven with the real sbatch / srun / sacct."""

from __future__ import annotations

import os
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from hpc.dev import cluster as devcluster
from hpc.dev import cluster_install

pytestmark = pytest.mark.slurm


@pytest.fixture(autouse=True)
def _needs_root_and_packages() -> None:
    """Not a skip: `make test` installs the packages and CI runs as root, so a miss is a failure."""
    if os.geteuid() != 0 or devcluster.missing_packages():
        pytest.fail("needs root and the Slurm packages: run `make install` (python -m hpc.dev.cluster install) as root")

JOB_TIMEOUT = 60.0  # s; a tiny job takes 1-2 s here
SLEEP_MARK = "297.5"  # `sleep 297.5`: a job process we can find in /proc by its command line


def _sh(*cmd: str, timeout: float = 30) -> str:
    return subprocess.run(cmd, capture_output=True, text=True, check=True, timeout=timeout).stdout


def _sbatch(*args: str) -> str:
    return _sh("sbatch", "--parsable", *args).strip().split(";")[0]


def _wait_state(job_id: str, want: str = "COMPLETED", timeout: float = JOB_TIMEOUT) -> None:
    """Poll sacct (what submitit reads) until the job reaches `want`; fail early on another end state."""
    deadline, state = time.monotonic() + timeout, ""
    while time.monotonic() < deadline:
        lines = _sh("sacct", "-n", "-P", "-X", "-j", job_id, "-o", "State").split()
        state = lines[0] if lines else ""
        if state == want:
            return
        if state not in ("", "PENDING", "RUNNING", "COMPLETING", "REQUEUED"):
            break
        time.sleep(0.3)
    pytest.fail(f"job {job_id}: sacct state {state!r}, wanted {want} (within {timeout} s)")


def _running(pid: int, comm: str) -> bool:
    try:
        st = Path(f"/proc/{pid}/stat").read_text()
        return st.rsplit(")", 1)[1].split()[0] != "Z" and Path(f"/proc/{pid}/comm").read_text().strip() == comm
    except OSError:
        return False


def _sleepers() -> list[int]:
    found = []
    for p in Path("/proc").glob("[0-9]*"):
        try:
            argv = (p / "cmdline").read_bytes().split(b"\0")
            if len(argv) > 1 and argv[0].endswith(b"sleep") and argv[1] == SLEEP_MARK.encode():
                found.append(int(p.name))
        except OSError:
            continue
    return found


@pytest.fixture(scope="module")
def cluster() -> Iterator[devcluster.ClusterInfo]:
    was_running = devcluster.is_running()
    info = devcluster.start()
    yield info
    devcluster.stop()  # no-op if test_stop_leaves_nothing already stopped it
    if was_running:  # a session-wide cluster was up before this module: give it back, same size
        devcluster.start(nodes=len(info.nodes), cpus_per_node=info.cpus_per_node,
                         mem_per_node=info.mem_per_node, gpus_per_node=info.gpus_per_node)


def test_start_is_idempotent_and_cheap(cluster: devcluster.ClusterInfo) -> None:
    pids = devcluster.recorded_pids()
    t0 = time.monotonic()
    again = devcluster.start()
    assert time.monotonic() - t0 < 5
    assert again == cluster and devcluster.recorded_pids() == pids and devcluster.is_running()
    assert cluster.nodes == ("n1", "n2") and cluster.partitions == ("debug", "urgent")
    rows = sorted(line.split() for line in _sh("sinfo", "-h", "-N", "-p", "debug", "-o", "%N %T %c %G").splitlines())
    assert [(r[0], r[2], r[3]) for r in rows] == [(n, str(cluster.cpus_per_node), f"gpu:{cluster.gpus_per_node}")
                                                  for n in cluster.nodes]
    # idle on a fresh cluster; a session-wide one may still be busy with an earlier test's job
    assert all(r[1] in devcluster.READY_STATES for r in rows), rows


def test_sbatch_wrap_completes(cluster: devcluster.ClusterInfo, tmp_path: Path) -> None:
    out = tmp_path / "out.txt"
    job = _sbatch("-o", str(out), "--wrap", "echo hello from $SLURMD_NODENAME")
    _wait_state(job)
    assert out.read_text().strip() in ("hello from n1", "hello from n2")


def test_two_node_srun(cluster: devcluster.ClusterInfo, tmp_path: Path) -> None:
    out = tmp_path / "out.txt"
    job = _sbatch("-N2", "--ntasks-per-node=1", "-o", str(out), "--wrap",
                  'srun sh -c \'echo "$SLURM_PROCID $SLURMD_NODENAME $SLURM_JOB_NODELIST"\'')
    _wait_state(job)
    assert sorted(out.read_text().splitlines()) == ["0 n1 n[1-2]", "1 n2 n[1-2]"]
    # an interactive srun too: slurmstepd must reach back to the srun on this host
    lines = _sh("srun", "-N2", "--ntasks-per-node=1", "printenv", "SLURMD_NODENAME", timeout=JOB_TIMEOUT)
    assert sorted(lines.split()) == ["n1", "n2"]
    # node names resolve (MASTER_ADDR = first of `scontrol show hostnames`)
    assert _sh("getent", "hosts", "n2").split()[0] == "127.0.0.1"


def test_fake_gpus_visible(cluster: devcluster.ClusterInfo, tmp_path: Path) -> None:
    out = tmp_path / "out.txt"
    job = _sbatch("--gpus-per-node=1", "-o", str(out), "--wrap",
                  'echo "JOB_GPUS=$SLURM_JOB_GPUS"; srun sh -c \'echo "CUDA_VISIBLE_DEVICES=$CUDA_VISIBLE_DEVICES"\'')
    _wait_state(job)
    env = dict(line.split("=", 1) for line in out.read_text().splitlines() if "=" in line)
    assert env.get("JOB_GPUS") in ("0", "1"), out.read_text()
    assert env.get("CUDA_VISIBLE_DEVICES") == "0", out.read_text()  # renumbered from 0 inside the job
    assert "gres/gpu=1" in _sh("sacct", "-n", "-P", "-X", "-j", job, "-o", "AllocTRES")


def test_stop_leaves_nothing(cluster: devcluster.ClusterInfo, tmp_path: Path) -> None:
    pids = devcluster.recorded_pids()
    assert {"slurmctld", "slurmdbd", "slurmd-n1", "slurmd-n2"} <= set(pids)
    # a job still running at stop time: stop must cancel it and leave no slurmstepd / job process
    job = _sbatch("-N2", "-o", str(tmp_path / "out.txt"), "--wrap", f"srun sleep {SLEEP_MARK}")
    _wait_state(job, "RUNNING")
    deadline = time.monotonic() + 10
    while len(_sleepers()) < 2 and time.monotonic() < deadline:
        time.sleep(0.1)
    assert len(_sleepers()) == 2 and devcluster.our_stepds()

    t0 = time.monotonic()
    devcluster.stop()
    took = time.monotonic() - t0
    assert not devcluster.is_running()
    alive = {name: pid for name, pid in pids.items() if _running(pid, name.split("-")[0])}
    assert not alive, f"still running after stop: {alive}"
    assert not devcluster.our_stepds() and not _sleepers()
    assert devcluster.recorded_pids() == {}
    assert "# vit-devcluster" not in Path("/etc/hosts").read_text()
    assert took < 30, took
    devcluster.stop()  # stopping a stopped cluster is fine


def _fake_apt(tmp_path: Path, rc: int) -> Path:
    """An `apt-get` first on PATH that prints apt/dpkg-style progress and exits ``rc``: the Debian
    packages are installed here already, so the one thing faked is the apt command line."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    script = bin_dir / "apt-get"
    fail = 'echo "E: Unable to locate package slurmctld"' if rc else "true"
    script.write_text(f'#!/bin/sh\nfor i in $(seq 1 200); do echo "Unpacking libfoo$i (1.0) ..."; done\n{fail}\nexit {rc}\n')
    script.chmod(0o755)
    return bin_dir


@pytest.mark.parametrize("rc", [0, 100])
def test_install_prints_one_line_and_logs_apt(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                              capsys: pytest.CaptureFixture[str], rc: int) -> None:
    missing = iter([["slurmctld"], []])
    monkeypatch.setattr(cluster_install, "missing_packages", lambda: next(missing))
    monkeypatch.setenv("PATH", f"{_fake_apt(tmp_path, rc)}:{os.environ['PATH']}")
    log = tmp_path / "state" / "log" / "install.log"
    if rc == 0:
        cluster_install.install(tmp_path / "state")
    else:
        with pytest.raises(RuntimeError) as e:
            cluster_install.install(tmp_path / "state")
        assert "`apt-get update -q` exited 100" in str(e.value) and str(log) in str(e.value)
        assert "E: Unable to locate package slurmctld" in str(e.value) and "libfoo1 " not in str(e.value)
    out = capsys.readouterr().out
    assert len(out.splitlines()) == 1 and "Unpacking" not in out, out
    assert f"(log {log})" in out and out.rstrip().endswith("failed" if rc else " s")
    assert "Unpacking libfoo200 (1.0)" in log.read_text()


def test_install_without_apt_get_says_what_to_install(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A non-Debian machine (no apt-get on PATH): a one-line message naming the packages, no traceback."""
    monkeypatch.setattr(cluster_install.os, "geteuid", lambda: 0)  # past the root check, as CI's root
    monkeypatch.setattr(cluster_install, "missing_packages", lambda: ["slurmctld"])
    monkeypatch.setenv("PATH", str(tmp_path))  # an empty folder: no apt-get
    with pytest.raises(SystemExit) as e:
        cluster_install.install(tmp_path / "state")
    assert "no apt-get on PATH" in str(e.value) and "slurmctld" in str(e.value)
    assert not (tmp_path / "state").exists()  # nothing written
