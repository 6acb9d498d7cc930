"""Tests for vit_train.distributed.slurm_env with plain dicts: the reader is pure, so no Slurm is needed.

The variable sets below mirror what srun exports for a task (names and formats as in Slurm 22.05,
the version of the project's local cluster); the real-cluster path is covered by the Slurm tests.
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import pytest

from vit_train.distributed.slurm_env import (
    ClusterEnv,
    SlurmEnvError,
    expand_hostlist,
    master_port_for,
    read_slurm_env,
    torch_env,
)


def _task(**extra: str) -> dict[str, str]:
    """Rank 3 of a 2-node x 2-task srun step."""
    env = {
        "SLURM_JOB_ID": "4242",
        "SLURM_PROCID": "3",
        "SLURM_NTASKS": "4",
        "SLURM_LOCALID": "1",
        "SLURM_NODEID": "1",
        "SLURM_JOB_NUM_NODES": "2",
        "SLURM_JOB_NODELIST": "gpu[07-08]",
        "SLURM_TASKS_PER_NODE": "2(x2)",
        "CUDA_VISIBLE_DEVICES": "0,1",
    }
    env.update(extra)
    return env


@pytest.mark.parametrize(
    "hostlist, hosts",
    [
        ("node1", ["node1"]),
        ("n[1-2]", ["n1", "n2"]),
        ("gpu[01-04,07],cpu3", ["gpu01", "gpu02", "gpu03", "gpu04", "gpu07", "cpu3"]),
        ("a-b[1,3-4]-x", ["a-b1-x", "a-b3-x", "a-b4-x"]),
        ("n[08-11]", ["n08", "n09", "n10", "n11"]),
        ("n[098-101]", ["n098", "n099", "n100", "n101"]),
        ("n[8-10]", ["n8", "n9", "n10"]),
        ("r[1-2]n[1-2]", ["r1n1", "r1n2", "r2n1", "r2n2"]),
        ("n[5]", ["n5"]),
        ("a,b c", ["a", "b", "c"]),
        ("host.example.org,n-1", ["host.example.org", "n-1"]),
    ],
)
def test_expand_hostlist(hostlist: str, hosts: list[str]) -> None:
    assert expand_hostlist(hostlist) == hosts


@pytest.mark.parametrize("bad", ["n[1-2", "n1-2]", "n[[1]]", "n[2-1]", "n[a-b]", "n[]", ""])
def test_expand_hostlist_rejects_bad_syntax(bad: str) -> None:
    with pytest.raises(ValueError):
        expand_hostlist(bad)


def test_not_under_slurm_returns_none() -> None:
    assert read_slurm_env({}) is None
    assert read_slurm_env({"SLURM_JOB_ID": "7"}) is None  # a shell inside salloc is not a task
    assert read_slurm_env({"SLURM_PROCID": "0"}) is None
    assert read_slurm_env({"HOME": "/root", "PATH": "/bin"}) is None


def test_multi_node_task() -> None:
    c = read_slurm_env(_task())
    assert c == ClusterEnv(
        rank=3, world_size=4, local_rank=1, local_world_size=2, node_rank=1, num_nodes=2, job_id=4242,
        array_job_id=None, array_task_id=None, hosts=("gpu07", "gpu08"), master_addr="gpu07",
        master_port=master_port_for(4242), restart_count=0, visible_gpus=("0", "1"),
    )
    assert c.display_id == "4242" and not c.is_array


def test_torch_env() -> None:
    c = read_slurm_env(_task())
    assert c is not None
    assert torch_env(c) == {
        "RANK": "3",
        "WORLD_SIZE": "4",
        "LOCAL_RANK": "1",
        "LOCAL_WORLD_SIZE": "2",
        "MASTER_ADDR": "gpu07",
        "MASTER_PORT": str(master_port_for(4242)),
    }


def test_array_task_uses_its_own_job_id_for_the_port() -> None:
    a = read_slurm_env(_task(SLURM_JOB_ID="101", SLURM_ARRAY_JOB_ID="100", SLURM_ARRAY_TASK_ID="0"))
    b = read_slurm_env(_task(SLURM_JOB_ID="102", SLURM_ARRAY_JOB_ID="100", SLURM_ARRAY_TASK_ID="1"))
    assert a is not None and b is not None
    assert (a.array_job_id, a.array_task_id, a.display_id) == (100, 0, "100_0")
    assert b.display_id == "100_1" and b.is_array
    assert a.master_port != b.master_port


def test_master_port_range_and_determinism() -> None:
    ports = {master_port_for(j) for j in range(1, 50_000)}
    assert min(ports) >= 20000 and max(ports) < 32768  # below Linux's ephemeral port range
    assert master_port_for(123) == master_port_for(123)


def test_step_variables_win_over_job_variables() -> None:
    env = _task(
        SLURM_STEP_NODELIST="gpu08", SLURM_STEP_NUM_NODES="1", SLURM_STEP_TASKS_PER_NODE="4",
        SLURM_NODEID="0", SLURM_LOCALID="3",
    )
    c = read_slurm_env(env)
    assert c is not None
    assert (c.master_addr, c.num_nodes, c.local_world_size, c.hosts) == ("gpu08", 1, 4, ("gpu08",))


def test_uneven_tasks_per_node() -> None:
    env = _task(SLURM_NTASKS="7", SLURM_PROCID="6", SLURM_NODEID="2", SLURM_LOCALID="0",
                SLURM_JOB_NUM_NODES="3", SLURM_JOB_NODELIST="n[1-3]", SLURM_TASKS_PER_NODE="3(x2),1")
    c = read_slurm_env(env)
    assert c is not None and c.local_world_size == 1 and c.master_addr == "n1"


def test_restart_count_and_defaults() -> None:
    c = read_slurm_env({"SLURM_JOB_ID": "9", "SLURM_PROCID": "0", "SLURM_RESTART_COUNT": "2"})
    assert c is not None
    assert (c.rank, c.world_size, c.local_rank, c.local_world_size, c.num_nodes) == (0, 1, 0, 1, 1)
    assert c.restart_count == 2 and c.master_addr == "127.0.0.1" and c.visible_gpus == ()


@pytest.mark.parametrize(
    "extra, gpus",
    [
        ({}, ("0", "1")),
        ({"CUDA_VISIBLE_DEVICES": ""}, ()),
        ({"CUDA_VISIBLE_DEVICES": "NoDevFiles"}, ()),
        ({"CUDA_VISIBLE_DEVICES": "2"}, ("2",)),
    ],
)
def test_visible_gpus(extra: dict[str, str], gpus: tuple[str, ...]) -> None:
    c = read_slurm_env(_task(**extra))
    assert c is not None and c.visible_gpus == gpus


def test_visible_gpus_from_slurm_when_cuda_variable_absent() -> None:
    env = _task(SLURM_JOB_GPUS="0,1,2,3")
    del env["CUDA_VISIBLE_DEVICES"]
    c = read_slurm_env(env)
    assert c is not None and c.visible_gpus == ("0", "1", "2", "3")


@pytest.mark.parametrize(
    "extra, words",
    [
        ({"SLURM_PROCID": "x"}, ["SLURM_PROCID", "'x'", "integer"]),
        ({"SLURM_PROCID": "4"}, ["SLURM_PROCID", "4"]),
        ({"SLURM_JOB_NODELIST": "gpu[07-08"}, ["SLURM_JOB_NODELIST", "gpu[07-08"]),
        ({"SLURM_TASKS_PER_NODE": "2(y2)"}, ["SLURM_TASKS_PER_NODE", "2(y2)"]),
    ],
)
def test_bad_variables_name_the_variable(extra: dict[str, str], words: list[str]) -> None:
    with pytest.raises(SlurmEnvError) as err:
        read_slurm_env(_task(**extra))
    assert all(w in str(err.value) for w in words), str(err.value)


def test_multi_task_without_nodelist_fails() -> None:
    env = _task()
    del env["SLURM_JOB_NODELIST"]
    with pytest.raises(SlurmEnvError, match="SLURM_JOB_NODELIST"):
        read_slurm_env(env)


def test_module_imports_no_torch() -> None:
    """House rule 6: the Slurm reader is importable on a login node without torch."""
    source = Path(sys.modules["vit_train.distributed.slurm_env"].__file__).read_text()  # type: ignore[arg-type]
    imported = {
        (n.module or "") if isinstance(n, ast.ImportFrom) else a.name
        for n in ast.walk(ast.parse(source)) if isinstance(n, (ast.Import, ast.ImportFrom))
        for a in n.names
    }
    assert not {m for m in imported if m.split(".")[0] in ("torch", "subprocess", "colossalai")}
