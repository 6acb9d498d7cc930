"""The login-node side: run state, site profiles, the dry run, and the preflight.

Pure parts (classify, sacct parsing, run folders, profiles, the rendered sbatch script) run anywhere.
Preflight tests are marked ``slurm``: they call the real sinfo / sbatch --test-only / squeue of the
local dev cluster (tests/conftest.py starts it once per session). Nothing is faked.
"""

from __future__ import annotations

import copy
import json
import os
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from hpc import runstate, site_profile, slurm_query, submission
from hpc.cli import main as cli_main
from hpc.preflight import PreflightError, parse_slurm_minutes
from hpc.runstate import classify
from hpc.slurm_query import SlurmJobState

REPO = Path(__file__).resolve().parents[1]
GOLDEN = REPO / "tests" / "golden" / "dry_run_cpu_tiny.sbatch"


# ---------------------------------------------------------------------------- runstate.classify
@pytest.mark.parametrize(
    "facts, phase",
    [
        (dict(finished=True, submitted=True, slurm_state="FAILED", progress_state="completed"), "finished"),
        (dict(finished=True, submitted=False, slurm_state=None, progress_state=None), "finished"),
        (dict(finished=False, submitted=False, slurm_state=None, progress_state=None), "not_submitted"),
        (dict(finished=False, submitted=True, slurm_state="RUNNING", progress_state="running"), "running"),
        (dict(finished=False, submitted=True, slurm_state="COMPLETING", progress_state="running"), "running"),
        (dict(finished=False, submitted=True, slurm_state="PENDING", progress_state=None), "pending"),
        # a requeued run waits in the queue with a checkpoint: in flight, not "preempted"
        (dict(finished=False, submitted=True, slurm_state="PENDING", progress_state="preempted"), "pending"),
        (dict(finished=False, submitted=True, slurm_state="REQUEUED", progress_state="preempted"), "pending"),
        (dict(finished=False, submitted=True, slurm_state="PREEMPTED", progress_state="running"), "preempted"),
        (dict(finished=False, submitted=True, slurm_state="CANCELLED", progress_state="preempted"), "cancelled"),
        (dict(finished=False, submitted=True, slurm_state="FAILED", progress_state="running"), "failed"),
        (dict(finished=False, submitted=True, slurm_state="OUT_OF_MEMORY", progress_state=None), "failed"),
        (dict(finished=False, submitted=True, slurm_state="TIMEOUT", progress_state="running"), "failed"),
        # stopped at a signal with a checkpoint but not requeued (max_requeues reached): resumable
        (dict(finished=False, submitted=True, slurm_state="FAILED", progress_state="preempted"), "preempted"),
        (dict(finished=False, submitted=True, slurm_state="TIMEOUT", progress_state="preempted"), "preempted"),
        (dict(finished=False, submitted=True, slurm_state="COMPLETED", progress_state="running"), "failed"),
        # no record anywhere: just submitted (accounting lag) or lost
        (dict(finished=False, submitted=True, slurm_state=None, progress_state=None, seconds_since_submit=3), "pending"),
        (dict(finished=False, submitted=True, slurm_state=None, progress_state=None, seconds_since_submit=9999), "failed"),
        (dict(finished=False, submitted=True, slurm_state=None, progress_state="preempted"), "preempted"),
    ],
)
def test_classify(facts: dict[str, Any], phase: str) -> None:
    assert classify(**facts) == phase
    assert phase in runstate.PHASES


def test_parse_slurm_rows_expands_pending_array_ranges() -> None:
    text = "12_0|COMPLETED|0:0|None|00:00:20\n12_1|CANCELLED by 0|0:15|None|00:00:03\n" \
           "12_[2-4,7%2]|PENDING|0:0|JobArrayTaskLimit|00:00:00\n12.batch|COMPLETED|0:0||00:00:20\n"
    rows = slurm_query._parse_rows(text, ("job_id", "state", "exit_code", "reason", "elapsed"))
    assert sorted(rows) == ["12_0", "12_1", "12_2", "12_3", "12_4", "12_7"]
    assert rows["12_1"].state == "CANCELLED" and rows["12_1"].exit_code == "0:15"
    assert rows["12_7"] == SlurmJobState("12_7", "PENDING", "0:0", "JobArrayTaskLimit", "00:00:00")
    # an array cancelled while wholly pending keeps only its bare id in sacct
    whole = slurm_query._parse_rows("13|CANCELLED by 0|0:0|None|00:00:00\n", ("job_id", "state", "exit_code", "reason", "elapsed"))
    assert slurm_query.lookup(whole, "13_1") == SlurmJobState("13", "CANCELLED", "0:0", "None", "00:00:00")


def test_parse_slurm_minutes() -> None:
    assert [parse_slurm_minutes(t) for t in ("infinite", "30:00", "2:00:00", "1-00:00:00", "1-12", "45")] == \
        [None, 30, 120, 1440, 2160, 45]


def _write(path: Path, obj: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(obj if isinstance(obj, str) else json.dumps(obj))


def _record(name: str = "bs8-lr1e-03-abc") -> runstate.RunRecord:
    config = {"optim": {"batch_size": 8, "lr": 1e-3},
              "parallel": {"plugin": "hybrid_parallel", "tp_size": 2, "pp_size": 1, "zero_stage": 1},
              "precision": "bf16"}
    return runstate.RunRecord("abc", name, "g", {"optim.batch_size": 8}, config)


def test_run_json_and_attempts_round_trip(tmp_path: Path) -> None:
    run_dir = tmp_path / "g" / "bs8-lr1e-03-abc"
    rec = runstate.add_submission(run_dir, _record(), "12_3", "submit", at=100.0)
    rec = runstate.add_submission(run_dir, rec, "15_0", "resume", at=200.0)
    again = runstate.read_run_record(run_dir)
    assert again == rec and again.last_job_id == "15_0"
    assert [s.reason for s in again.submissions] == ["submit", "resume"]
    assert not [p for p in run_dir.iterdir() if p.name.endswith(".tmp")]  # atomic: no temp file left
    with pytest.raises(ValueError, match="reason"):
        runstate.add_submission(run_dir, rec, "16", "retry")
    env = {"SLURM_JOB_ID": "40", "SLURM_ARRAY_JOB_ID": "15", "SLURM_ARRAY_TASK_ID": "0",
           "SLURM_RESTART_COUNT": "2", "SLURMD_NODENAME": "n2"}
    runstate.record_attempt(run_dir, env)
    runstate.record_attempt(run_dir, {**env, "SLURM_RESTART_COUNT": "3"})
    attempts = runstate.read_attempts(run_dir)
    assert [(a["job_id"], a["restart_count"], a["host"]) for a in attempts] == [("15_0", 2, "n2"), ("15_0", 3, "n2")]


def test_run_state_of_a_running_and_a_failed_run(tmp_path: Path) -> None:
    grid_dir = tmp_path / "g"
    run_dir = grid_dir / "bs8-lr1e-03-abc"
    runstate.add_submission(run_dir, _record(), "12_3", "submit", at=time.time() - 600)
    for _ in range(3):
        runstate.record_attempt(run_dir, {"SLURM_JOB_ID": "12"})
    _write(run_dir / "progress.json", {"state": "running", "step": 40, "epoch": 1.25, "total_steps": 96, "loss": 0.61})
    _write(run_dir / "metrics.jsonl", '{"kind": "eval", "step": 32, "accuracy": 0.5}\n{"kind": "train", "step": 40}\n')
    st = runstate.run_state(run_dir, {"12_3": SlurmJobState("12_3", "RUNNING")})
    assert (st.phase, st.job_id, st.slurm_state, st.restarts, st.step, st.total_steps) == ("running", "12_3", "RUNNING", 2, 40, 96)
    assert (st.batch_size, st.lr, st.layout, st.metric, st.failure) == (8, 1e-3, "hybrid_parallel tp2 zero1 bf16", "acc 0.5000", "")

    _write(grid_dir / ".submitit" / "12_3" / "12_3_0_log.err",
           "Traceback (most recent call last):\n  File x\nValueError: optim.batch_size=64 is larger than the 48 samples\n"
           "srun: error: n1: task 0: Exited with exit code 1\n")
    st = runstate.run_state(run_dir, {"12_3": SlurmJobState("12_3", "FAILED", "1:0", "NonZeroExitCode")})
    assert st.phase == "failed"
    assert st.failure == "FAILED exit 1:0; NonZeroExitCode; ValueError: optim.batch_size=64 is larger than the 48 samples"

    # the same job id now names another job (a re-created cluster restarts ids at 1): not ours
    st = runstate.run_state(run_dir, {"12_3": SlurmJobState("12_3", "RUNNING", name="other_grid")})
    assert (st.phase, st.slurm_state) == ("failed", None) and "id reused" in st.failure
    st = runstate.run_state(run_dir, {"12_3": SlurmJobState("12_3", "RUNNING", name="g")})
    assert st.phase == "running"
    # a pending job that may never start says why
    st = runstate.run_state(run_dir, {"12_3": SlurmJobState("12_3", "PENDING", reason="PartitionTimeLimit")})
    assert (st.phase, st.failure) == ("pending", "waiting: PartitionTimeLimit")
    assert runstate.run_state(run_dir, {"12_3": SlurmJobState("12_3", "PENDING", reason="Priority")}).failure == ""

    _write(run_dir / "result.json", {"status": "completed", "steps": 96, "epochs": 3.0, "eval_accuracy": 0.75})
    st = runstate.run_state(run_dir, {"12_3": SlurmJobState("12_3", "COMPLETED", "0:0")})
    assert (st.phase, st.step, st.metric, st.failure) == ("finished", 96, "acc 0.7500", "")


def test_last_error_line_prefers_the_error(tmp_path: Path) -> None:
    log = tmp_path / "x.err"
    log.write_text("info\nRuntimeError: boom\nsubmitit INFO (2025) - Exiting\nsrun: error: n1: task 0: Exited\n")
    assert runstate.last_error_line(log) == "RuntimeError: boom"
    log.write_text("info\nslurmstepd: error: *** JOB 12 ON n1 CANCELLED AT 2025 DUE TO TIME LIMIT ***\nsrun: error: x\n")
    assert runstate.last_error_line(log) == "slurmstepd: error: *** JOB 12 ON n1 CANCELLED AT 2025 DUE TO TIME LIMIT ***"
    log.write_text("just info\n")
    assert runstate.last_error_line(log) == "just info"
    assert runstate.last_error_line(tmp_path / "missing.err") is None


def test_slurm_states_without_slurm_commands(monkeypatch: pytest.MonkeyPatch) -> None:
    """No sacct/squeue on PATH (e.g. a laptop): empty answers, no exception."""
    monkeypatch.setenv("PATH", "/nonexistent")
    assert slurm_query.sacct_states(["12_3"]) == {} and slurm_query.squeue_states(["12"]) == {}
    assert slurm_query.slurm_states(["12_3"]) == {}


# ---------------------------------------------------------------------------- site profiles
def test_shipped_profiles_load() -> None:
    assert {"local", "example_site"} <= set(site_profile.available_profiles())
    local = site_profile.load_profile("local")
    assert local.env["OMP_NUM_THREADS"] == "1" and local.env["PYTHONPATH"].startswith(str(REPO))
    assert 'export PYTHONPATH="' + str(REPO) + '${PYTHONPATH:+:$PYTHONPATH}"' in local.setup_lines()
    site = site_profile.load_profile("example_site")
    assert site.sbatch["partition"] == "gpu" and site.env["HF_HUB_OFFLINE"] == "1"
    assert any(line.startswith("module load cuda") for line in site.setup)
    assert "partition" not in site.extra_sbatch()  # a default the grid may override, not an extra option


def _profile(tmp_path: Path, text: str) -> Path:
    (tmp_path / "site.yaml").write_text(textwrap.dedent(text))
    return tmp_path


def test_profile_errors_name_the_key_and_the_valid_ones(tmp_path: Path) -> None:
    with pytest.raises(site_profile.ProfileError, match=r"unknown key\(s\) \['modules'\]; valid keys: description, setup, sbatch, env"):
        site_profile.load_profile("site", _profile(tmp_path, "description: x\nmodules: [cuda]\n"))
    with pytest.raises(site_profile.ProfileError, match=r"\['time'\] are set per grid"):
        site_profile.load_profile("site", _profile(tmp_path, "description: x\nsbatch: {time: 10}\n"))
    with pytest.raises(site_profile.ProfileError, match="setup must be a list"):
        site_profile.load_profile("site", _profile(tmp_path, "description: x\nsetup: module load cuda\n"))
    with pytest.raises(site_profile.ProfileError, match="env must map variable names"):
        site_profile.load_profile("site", _profile(tmp_path, "description: x\nenv: {1BAD: x}\n"))
    with pytest.raises(site_profile.ProfileError, match="available: site"):
        site_profile.load_profile("nosuch", tmp_path)


def test_grid_resources_override_profile_defaults(tmp_path: Path) -> None:
    from hpc.grid import parse_grid

    prof = site_profile.load_profile("site", _profile(tmp_path, """
        description: x
        sbatch: {partition: gpu, account: proj, mail_type: FAIL, exclusive: true, reservation: false}
        env: {HF_HOME: '/shared/$USER/hf "x"'}
        """))
    spec = parse_grid({"profile": "site", "slurm": {"partition": "long", "nodes": 2, "gpus_per_node": 4,
                                                     "time_min": 90}}, base_dir=tmp_path, default_name="g")
    params = site_profile.executor_parameters(spec, prof)
    assert params["partition"] == "long" and params["account"] == "proj"
    assert (params["nodes"], params["ntasks_per_node"], params["gpus_per_node"], params["time"]) == (2, 4, 4, 90)
    assert params["additional_parameters"] == {"requeue": True, "mail-type": "FAIL", "exclusive": True}
    assert params["setup"] == ['export HF_HOME="/shared/$USER/hf \\"x\\""']


# ---------------------------------------------------------------------------- dry run
def _normalise(text: str, root: Path) -> str:
    return text.replace(str(root), "<ROOT>").replace(str(REPO), "<REPO>").replace(sys.executable, "<PYTHON>")


def _cpu_tiny_copy(root: Path) -> Path:
    (root / "grids").mkdir()
    (root / "demo_runs" / "data" / "beans_synthetic_v2").mkdir(parents=True)
    grid = root / "grids" / "cpu_tiny.yaml"
    grid.write_text((REPO / "grids" / "cpu_tiny.yaml").read_text())
    return grid


def _tree(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*")}


def test_dry_run_matches_golden_and_writes_nothing(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    grid = _cpu_tiny_copy(tmp_path)
    before = _tree(tmp_path)
    lines: list[str] = []
    outcome = submission.submit(grid, dry_run=True, preflight_sbatch=False, out=lines.append)
    assert _tree(tmp_path) == before  # not even the grid folder
    assert len(outcome.decisions) == 9 and all(d.submit for d in outcome.decisions)
    text = "\n".join(lines)
    for d in outcome.decisions:  # each resolved run: name, signature, point
        assert d.run.name in text and d.run.signature in text and repr(d.run.point) in text
    script = _normalise(outcome.sbatch or "", tmp_path)
    if os.environ.get("UPDATE_GOLDEN"):
        GOLDEN.parent.mkdir(exist_ok=True)
        GOLDEN.write_text(script)
    assert script == GOLDEN.read_text(), "rerun with UPDATE_GOLDEN=1 if the change is intended"
    # the CLI prints the same
    assert cli_main(["submit", str(grid), "--dry-run", "--no-preflight-sbatch"]) == 0
    assert _normalise(capsys.readouterr().out, tmp_path).rstrip().endswith(script.rstrip())


# ---------------------------------------------------------------------------- preflight catalog
BASE_GRID: dict[str, Any] = {
    "name": "pf",
    "output_root": "../runs",
    "profile": "local",
    "slurm": {"nodes": 1, "gpus_per_node": 0, "tasks_per_node": 1, "cpus_per_task": 1, "mem_gb": 1,
              "time_min": 10, "signal_delay_s": 60},
    "base": {"model": {"name": "tiny"}, "data": {"dataset": "../data/beans"}},
    "grid": {"optim.lr": [1.0e-3, 2.0e-3]},
}
HYBRID = {"plugin": "hybrid_parallel"}


def _merge(base: dict[str, Any], patch: dict[str, Any]) -> dict[str, Any]:
    out = copy.deepcopy(base)
    for k, v in patch.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = _merge(out[k], v)
        else:
            out[k] = v
    return out


def _base(**parallel: Any) -> dict[str, Any]:
    return {"base": {"parallel": parallel}}


def _slurm(**kw: Any) -> dict[str, Any]:
    return {"slurm": kw}


# case -> (patch of BASE_GRID, or raw YAML text; substrings the error must contain)
CATALOG: dict[str, tuple[dict[str, Any] | str, list[str]]] = {
    "bad_yaml": ("name: pf\nprofile: local\nbase: [unclosed\n", ["invalid YAML", "pf.yaml:"]),
    "unknown_grid_key": ({"grids": {"optim.lr": [1]}}, ["unknown key(s) ['grids']", "did you mean grid"]),
    "unknown_slurm_key": (_slurm(gpus=1), ["slurm: unknown key(s) ['gpus']", "gpus_per_node"]),
    "unknown_profile": ({"profile": "nosuchsite"}, ["profile='nosuchsite'", "available: example_site, local"]),
    "empty_axis": ({"grid": {"optim.lr": []}}, ["grid.optim.lr has no values"]),
    "unknown_plugin": (_base(plugin="fsdp"), ["parallel.plugin='fsdp'", "torch_ddp, low_level_zero"]),
    "tp_not_dividing_heads": ({**_base(**HYBRID, tp_size=3), **_slurm(tasks_per_node=3)},
                              ["parallel.tp_size=3", "num_attention_heads=4", "use one of 1, 2, 4"]),
    "pp_over_layers": ({**_base(**HYBRID, pp_size=5, num_microbatches=1), **_slurm(tasks_per_node=5)},
                       ["parallel.pp_size=5", "4 layers"]),
    "world_not_divisible": (_base(**HYBRID, tp_size=2), ["world_size=1", "tp_size*pp_size=2"]),
    "zero2_with_pp": ({**_base(**HYBRID, pp_size=2, zero_stage=2, num_microbatches=2), "base": {
        "parallel": {**HYBRID, "pp_size": 2, "zero_stage": 2, "num_microbatches": 2}, "precision": "bf16"}},
        ["ZeRO-2 cannot be combined with pp_size > 1"]),
    "gemini_fp32": (_base(plugin="gemini"), ["gemini trains in fp16 or bf16"]),
    "gemini_on_cpu": ({"base": {"parallel": {"plugin": "gemini"}, "precision": "bf16",
                                "optim": {"optimizer": "hybrid_adam"}}}, ["gemini needs CUDA GPUs"]),
    "fp16_on_cpu": ({"base": {"precision": "fp16"}}, ["fp16 needs a CUDA GPU"]),
    "batch_vs_microbatches": ({**_base(**HYBRID, pp_size=2, num_microbatches=3), **_slurm(tasks_per_node=2),
                               "grid": {"optim.batch_size": [8]}}, ["optim.batch_size=8", "num_microbatches=3"]),
    "duplicate_points": ({"grid": {"optim.lr": [1.0e-3, 0.001]}}, ["same signature"]),
    "missing_dataset": ({"base": {"data": {"dataset": "../no_such_data"}}},
                        ["all 2 runs: data.dataset", "no_such_data does not exist"]),
    "missing_model": ({"base": {"model": {"name": "../no_such_model"}}},
                      ["model.name", "no_such_model does not exist"]),
    "model_folder_without_config": ({"base": {"model": {"name": "../data/beans"}}}, ["has no config.json"]),
    "hub_model_not_cached": ({"base": {"model": {"name": "someorg/vit-not-cached"}}},
                             ["not in the local cache", "huggingface-cli download someorg/vit-not-cached"]),
    "output_root_under_a_file": ({"output_root": "../afile/runs"}, ["output_root", "is a file, not a folder"]),
    "output_root_unwritable": ({"output_root": "/proc/vit_runs"}, ["output_root", "cannot write in /proc"]),
    "no_such_partition": (_slurm(partition="nosuch"), ["slurm.partition", "'nosuch' does not exist", "debug, urgent"]),
    "time_over_partition_limit": (_slurm(partition="short_pf", time_min=10),
                                  ["slurm.time_min", "MaxTime of 5 min"]),
    "too_many_nodes": (_slurm(nodes=3), ["slurm.nodes", "partition debug has 2"]),
    "too_many_gpus": (_slurm(gpus_per_node=4, tasks_per_node=None),
                      ["sbatch --test-only", "Requested node configuration is not available"]),
    "too_much_memory": (_slurm(mem_gb=100), ["sbatch --test-only", "slurm.nodes/gpus_per_node/cpus_per_task/mem_gb"]),
}


@pytest.fixture
def short_partition(slurm_cluster: Any) -> Iterator[str]:
    """A partition with MaxTime=5, made for one test and removed after it (scontrol, as root)."""
    subprocess.run(["scontrol", "create", "PartitionName=short_pf", "Nodes=n[1-2]", "MaxTime=5", "State=UP"], check=True)
    yield "short_pf"
    subprocess.run(["scontrol", "delete", "PartitionName=short_pf"], check=True)


def _squeue() -> str:
    return subprocess.run(["squeue", "-h", "-o", "%i %j"], capture_output=True, text=True, check=True).stdout


@pytest.mark.slurm
@pytest.mark.parametrize("case", list(CATALOG))
def test_preflight_rejects_invalid_grid(case: str, slurm_cluster: Any, tmp_path: Path, request: pytest.FixtureRequest,
                                        monkeypatch: pytest.MonkeyPatch) -> None:
    if case == "time_over_partition_limit":
        request.getfixturevalue("short_partition")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf_home"))  # an empty cache (never created: only read)
    (tmp_path / "data" / "beans").mkdir(parents=True)
    (tmp_path / "afile").write_text("a file where a folder should be")
    (tmp_path / "grids").mkdir()
    patch, expected = CATALOG[case]
    text = patch if isinstance(patch, str) else yaml.safe_dump(_merge(BASE_GRID, patch), sort_keys=False)
    grid = tmp_path / "grids" / "pf.yaml"
    grid.write_text(text)
    before, queue = _tree(tmp_path), _squeue()

    with pytest.raises(PreflightError) as err:
        submission.submit(grid, out=lambda line: None)
    message = str(err.value)
    for fragment in expected:
        assert fragment in message, f"{case}: {fragment!r} not in:\n{message}"
    assert "nothing was submitted" in message
    assert _tree(tmp_path) == before, "preflight must not write anything"
    assert _squeue() == queue  # nothing queued (sbatch --test-only queues nothing)
    # the CLI reports it on stderr with exit code 2
    assert cli_main(["submit", str(grid)]) == 2


@pytest.mark.slurm
def test_preflight_lists_every_bad_point(slurm_cluster: Any, tmp_path: Path) -> None:
    """Two bad points and a bad dataset: all three are reported, each naming its grid point."""
    (tmp_path / "grids").mkdir()
    grid = tmp_path / "grids" / "pf.yaml"
    doc = _merge(BASE_GRID, {"base": {"parallel": HYBRID, "data": {"dataset": "../missing"}},
                             "slurm": {"tasks_per_node": 2}})
    doc["grid"] = {"parallel.tp_size": [1, 3, 2, 5]}
    grid.write_text(yaml.safe_dump(doc, sort_keys=False))
    with pytest.raises(PreflightError) as err:
        submission.submit(grid, out=lambda line: None)
    found = [str(f) for f in err.value.failures]
    assert len(found) == 3, found
    assert found[0].startswith("run 1 {parallel.tp_size=3}") and "parallel.tp_size=3" in found[0]
    assert found[1].startswith("run 3 {parallel.tp_size=5}") and "parallel.tp_size=5" in found[1]
    assert found[2].startswith("run 0 {parallel.tp_size=1}; run 2 {parallel.tp_size=2}: data.dataset:"), found[2]
    assert not (tmp_path / "runs").exists()


@pytest.mark.slurm
def test_dry_run_prints_runs_and_script_then_every_problem(slurm_cluster: Any, tmp_path: Path,
                                                          capsys: pytest.CaptureFixture[str],
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    """A grid that is not ready yet (its dataset not fetched, a partition the cluster lacks: the real
    sinfo and sbatch --test-only) still shows every resolved run and the sbatch script it would submit;
    then every problem, and the exit code says it would not submit."""
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf_home"))
    (tmp_path / "grids").mkdir()
    grid = tmp_path / "grids" / "pf.yaml"
    doc = _merge(BASE_GRID, {"base": {"data": {"dataset": "../not_fetched_yet"}}, "slurm": {"partition": "nosuch"}})
    grid.write_text(yaml.safe_dump(doc, sort_keys=False))
    before, queue = _tree(tmp_path), _squeue()
    lines: list[str] = []
    with pytest.raises(PreflightError) as err:
        submission.submit(grid, dry_run=True, out=lines.append)
    text = "\n".join(lines)
    assert text.count("    signature ") == 2 and "point {'optim.lr': 0.001}" in text and "point {'optim.lr': 0.002}" in text
    assert "#!/bin/bash" in text and "#SBATCH --partition=nosuch" in text and "#SBATCH --array=0-1" in text
    assert "once the 2 preflight problem(s) after the script are fixed" in text
    assert [(f.where, f.field) for f in err.value.failures] == [("all 2 runs", "data.dataset"), ("grid", "slurm.partition")]
    assert _tree(tmp_path) == before and _squeue() == queue

    # The CLI, as a user runs it: runs and script first, then the problems, exit code 2.
    proc = subprocess.run([sys.executable, str(REPO / "submit.py"), "submit", str(grid), "--dry-run"], cwd=REPO,
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=120, check=False)
    out = proc.stdout
    assert proc.returncode == 2, out
    assert out.index("signature ") < out.index("#!/bin/bash") < out.index("error: preflight of"), out
    assert "not_fetched_yet does not exist" in out and "partition 'nosuch' does not exist" in out
    # A ready grid: the same print, exit code 0.
    (tmp_path / "not_fetched_yet").mkdir()
    grid.write_text(yaml.safe_dump(_merge(doc, {"slurm": {"partition": "debug"}}), sort_keys=False))
    assert cli_main(["submit", str(grid), "--dry-run"]) == 0
    assert "#SBATCH --partition=debug" in capsys.readouterr().out


def test_dry_run_of_an_empty_grid_file_says_it_is_empty(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    grid = tmp_path / "empty.yaml"
    grid.write_text("")
    assert cli_main(["submit", str(grid), "--dry-run"]) == 2
    err = capsys.readouterr().err
    assert "empty.yaml: the grid file is empty" in err and "profile is missing" not in err, err


def test_help_of_every_command(capsys: pytest.CaptureFixture[str]) -> None:
    for args in ([], ["submit"], ["status"], ["resume"], ["cancel"], ["report"]):
        with pytest.raises(SystemExit) as e:
            cli_main([*args, "--help"])
        assert e.value.code == 0
    out = capsys.readouterr().out
    for word in ("--dry-run", "--force", "--no-preflight-sbatch", "--watch", "--timeout", "--failed", "markdown"):
        assert word in out
    proc = subprocess.run([sys.executable, str(REPO / "submit.py"), "--help"], capture_output=True, text=True, timeout=60,
                          check=False)
    assert proc.returncode == 0 and "submit" in proc.stdout and "report" in proc.stdout
