"""A catalog of invalid inputs, each refused before anything runs with a message naming the field and the fix.

Grid inputs go through the real preflight without its Slurm part (``hpc.preflight.check_file(...,
sbatch=False)``, no cluster needed; tests/test_submit_slurm.py covers the sbatch/sinfo checks) and the
folder tree around the grid must be byte-for-byte unchanged afterwards (no grid folder, no lock file).
Checkpoint inputs go through the real CLI. Then a hypothesis fuzz of the grid parser: whatever the
document, it may only raise ConfigError/GridError (a message for the user), never a traceback.

Faked: only the site-profile folder, for the "profile with an unknown key" case (``load_profile`` is
pointed at a temporary copy of the profiles, so the repository's profiles are never touched).
"""

from __future__ import annotations

import copy
import functools
import json
import math
import os
import tempfile
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from hpc import preflight, site_profile
from hpc.grid import GRID_KEYS, GridError, expand, load_grid, parse_grid
from hpc.preflight import PreflightError, check_file
from tests import reliability_report
from tests.train_utils import base_args, run_cli
from vit_train.components import checkpoint
from vit_train.config import ConfigError, valid_dotted_keys

BASE_GRID: dict[str, Any] = {
    "name": "bi",
    "output_root": "../runs",
    "profile": "local",
    "slurm": {"nodes": 1, "gpus_per_node": 0, "tasks_per_node": 1, "cpus_per_task": 1, "mem_gb": 1,
              "time_min": 10, "signal_delay_s": 60},
    "base": {"model": {"name": "tiny"}, "data": {"dataset": "../data/beans"}, "optim": {"batch_size": 8}},
    "grid": {"seed": [1, 2]},
}
HYBRID = {"plugin": "hybrid_parallel"}
# Slurm's default MaxArraySize (the dev cluster does not set it): array indexes 0..1000.
MAX_ARRAY_SIZE = 1001


def _merge(base: dict[str, Any], patch: dict[str, Any]) -> dict[str, Any]:
    out = copy.deepcopy(base)
    for k, v in patch.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def _par(**parallel: Any) -> dict[str, Any]:
    return {"base": {"parallel": parallel}}


def _slurm(**kw: Any) -> dict[str, Any]:
    return {"slurm": kw}


def _optim(**kw: Any) -> dict[str, Any]:
    return {"base": {"optim": kw}}


# case id -> (patch of BASE_GRID, or raw YAML text; substrings the message must contain)
CATALOG: dict[str, tuple[dict[str, Any] | str, list[str]]] = {
    # YAML itself
    "yaml_syntax": ("name: bi\nprofile: local\nbase: [unclosed\n", ["invalid YAML", "bi.yaml:4:1"]),
    "yaml_duplicate_key": ("profile: local\nbase: {}\nprofile: other\n", ["duplicate key 'profile'"]),
    "yaml_python_tag": ("profile: local\nname: !!python/object/apply:os.getcwd []\n", ["invalid YAML"]),
    "not_a_mapping": ("- profile\n- local\n", ["must be a mapping with keys name, output_root, profile"]),
    # wrong types
    "slurm_nodes_string": (_slurm(nodes="two"), ["slurm.nodes='two'", "expected an integer"]),
    "slurm_nodes_bool": (_slurm(nodes=True), ["slurm.nodes=True", "expected an integer"]),
    "lr_string": (_optim(lr="fast"), ["optim.lr='fast'", "expected float"]),
    "grid_is_a_list": ({"grid": ["optim.lr", 1]}, ["grid must map dotted keys to lists", "optim.lr: [1.0e-4"]),
    "axis_not_a_list": ({"grid": {"optim.lr": 0.1}}, ["grid.optim.lr=0.1", "an axis needs a list", "put a fixed value under base"]),
    "zip_not_a_list": ({"zip": {"optim.lr": [1]}}, ["zip must be a list of mappings"]),
    "base_section_scalar": ({"base": {"optim": 3}}, ["base.optim=3", "must be a mapping of optim fields"]),
    "name_with_space": ({"name": "my grid"}, ["name='my grid'", "letters, digits"]),
    # unknown keys, at each level
    "unknown_top_key": ({"grids": {"optim.lr": [1]}}, ["unknown key(s) ['grids']", "did you mean grid"]),
    "unknown_slurm_key": (_slurm(gpus=1), ["slurm: unknown key(s) ['gpus']", "gpus_per_node"]),
    "unknown_base_section": ({"base": {"optimizer": {"lr": 1.0}}}, ["base: unknown key(s) ['optimizer.lr']", "valid keys"]),
    "unknown_base_field": (_optim(lrr=1.0), ["['optim.lrr']", "did you mean optim.lr"]),
    "unknown_grid_axis": ({"grid": {"optim.learning_rate": [1.0]}}, ["grid: unknown key(s) ['optim.learning_rate']", "valid keys"]),
    "unknown_zip_axis": ({"zip": [{"parallel.tp": [1, 2]}]}, ["zip[0]: unknown key(s) ['parallel.tp']", "parallel.tp_size"]),
    # layouts
    "unknown_plugin": (_par(plugin="fsdp"), ["parallel.plugin='fsdp'", "use one of torch_ddp, low_level_zero"]),
    "tp_not_dividing_heads": ({**_par(**HYBRID, tp_size=3), **_slurm(tasks_per_node=3)},
                              ["parallel.tp_size=3", "num_attention_heads=4", "use one of 1, 2, 4"]),
    "pp_over_layers": ({**_par(**HYBRID, pp_size=5, num_microbatches=1), **_slurm(tasks_per_node=5)},
                       ["parallel.pp_size=5", "use at most 4"]),
    "world_not_divisible_by_tp_pp": (_par(**HYBRID, tp_size=2), ["world_size=1", "tp_size*pp_size=2", "use a multiple"]),
    "zero2_with_pp": ({"base": {"parallel": {**HYBRID, "pp_size": 2, "zero_stage": 2, "num_microbatches": 2},
                                "precision": "bf16"}}, ["parallel.zero_stage=2", "use zero_stage 0 or 1"]),
    "gemini_fp32": (_par(plugin="gemini"), ["precision='fp32'", "set precision: bf16"]),
    "gemini_on_cpu": ({"base": {"parallel": {"plugin": "gemini"}, "precision": "bf16", "optim": {"optimizer": "hybrid_adam"}}},
                      ["parallel.plugin='gemini'", "gemini needs CUDA GPUs", "low_level_zero or hybrid_parallel"]),
    "fp16_on_cpu": ({"base": {"precision": "fp16"}}, ["precision='fp16'", "use fp32 or bf16 on CPU"]),
    "batch_vs_microbatches": ({**_par(**HYBRID, pp_size=2, num_microbatches=3), **_slurm(tasks_per_node=2)},
                              ["optim.batch_size=8", "divisible by parallel.num_microbatches=3"]),
    "batch_vs_dp": (_slurm(tasks_per_node=3), ["optim.batch_size=8", "data-parallel size 3"]),
    # sources and output
    "missing_local_dataset": ({"base": {"data": {"dataset": "../no_such_data"}}},
                              ["data.dataset", "no_such_data does not exist", "fix the path"]),
    "missing_local_model": ({"base": {"model": {"name": "../no_such_model"}}}, ["model.name", "no_such_model does not exist"]),
    "model_folder_without_config": ({"base": {"model": {"name": "../data/beans"}}}, ["model.name", "has no config.json"]),
    "hub_model_not_cached_offline": ({"base": {"model": {"name": "someorg/vit-not-cached"}}},
                                     ["model.name", "not in the local cache", "huggingface-cli download someorg/vit-not-cached"]),
    "output_root_inside_a_file": ({"output_root": "../afile/runs"}, ["output_root", "is a file, not a folder", "set output_root"]),
    "output_dir_in_base": ({"base": {"output_dir": "/tmp/x"}}, ["output_dir is set per run", "set output_root instead"]),
    # grid shape
    "empty_file": ("", ["bi.yaml: the grid file is empty", "give at least a profile and a base"]),
    "comments_only_file": ("# grid to come\n", ["the grid file is empty", "grids/cpu_tiny.yaml"]),
    "empty_axis": ({"grid": {"optim.lr": []}}, ["grid.optim.lr has no values", "give at least one"]),
    "zip_length_mismatch": ({"zip": [{"optim.lr": [1.0e-3, 2.0e-3], "optim.weight_decay": [0.1]}]},
                            ["zip[0]: zipped axes need equal lengths", "'optim.lr': 2, 'optim.weight_decay': 1"]),
    "duplicate_points": ({"grid": {"optim.lr": [1.0e-3, 0.001]}}, ["same signature", "remove the duplicate value"]),
    "axis_also_in_base": ({"base": {"seed": 3}}, ["grid.seed is also set in base", "keep it in one place"]),
    # values
    "negative_lr": ({"grid": {"optim.lr": [-1.0e-3]}}, ["optim.lr=-0.001", "positive finite learning rate"]),
    "nan_lr": (_optim(lr=float("nan")), ["optim.lr=nan", "positive finite"]),
    "warmup_ratio_1": (_optim(warmup_ratio=1.0), ["optim.warmup_ratio=1.0", "use a fraction in [0, 1)"]),
    "signal_after_time_limit": (_slurm(time_min=1, signal_delay_s=60), ["slurm.signal_delay_s=60", "shorter than time_min=1"]),
    "cpu_without_tasks_per_node": (_slurm(tasks_per_node=None), ["slurm.tasks_per_node=None", "set the CPU tasks per node"]),
    # site profiles
    "unknown_profile": ({"profile": "nosuchsite"}, ["profile='nosuchsite'", "available:", "local"]),
    "profile_unknown_key": ({"profile": "badkey"}, ["badkey.yaml: unknown key(s) ['modules']", "valid keys: description, setup, sbatch, env"]),
}
# Expected to be refused, but the preflight has no such check yet (see RELIABILITY.md, "Open gaps").
NOT_CHECKED_YET: dict[str, str] = {}
CATALOG["array_over_max_array_size"] = ({"grid": {"seed": list(range(MAX_ARRAY_SIZE + 1))}, "base": {}},
                                        ["MaxArraySize", "split the grid"])


def _tree(root: Path) -> dict[str, tuple[int, int, int]]:
    """Every path under root with its mode, size and mtime: any write shows."""
    out = {}
    for p in sorted(root.rglob("*")):
        s = p.lstat()
        out[str(p.relative_to(root))] = (s.st_mode, s.st_size, s.st_mtime_ns)
    return out


@pytest.fixture
def grid_root(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    (tmp_path / "data" / "beans").mkdir(parents=True)
    (tmp_path / "afile").write_text("a regular file where the output folder should be\n")
    (tmp_path / "grids").mkdir()
    # An empty HF cache, never created (only read), and offline: hub ids must be cached.
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf_home_empty"))
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    profiles = tmp_path / "profiles"
    profiles.mkdir()
    for p in site_profile.PROFILE_DIR.glob("*.yaml"):
        (profiles / p.name).write_text(p.read_text())
    (profiles / "badkey.yaml").write_text("description: a profile with a typo\nmodules: [cuda]\n")
    monkeypatch.setattr(preflight, "load_profile", functools.partial(site_profile.load_profile, profile_dir=profiles))
    return tmp_path


@pytest.mark.parametrize("case", list(CATALOG))
def test_invalid_grid_is_refused_before_anything_is_written(case: str, grid_root: Path) -> None:
    if case in NOT_CHECKED_YET:
        pytest.xfail(NOT_CHECKED_YET[case])  # runs nothing more; flips when the check lands (see below)
    patch, expected = CATALOG[case]
    text = patch if isinstance(patch, str) else yaml.safe_dump(_merge(BASE_GRID, patch), sort_keys=False)
    grid = grid_root / "grids" / "bi.yaml"
    grid.write_text(text)
    before = _tree(grid_root)
    rejected = False
    try:
        with pytest.raises(PreflightError) as err:
            check_file(grid, sbatch=False, offline=True, out=lambda line: None)
        message = str(err.value)
        print(f"[{case}] {message}")
        for fragment in expected:
            assert fragment in message, f"{case}: {fragment!r} not in:\n{message}"
        assert "nothing was submitted" in message
        assert _tree(grid_root) == before, "the preflight wrote something"
        assert not (grid_root / "runs").exists()
        rejected = True
    finally:
        reliability_report.record("bad_input", case=case, rejected=rejected)


def test_grid_larger_than_max_array_size_is_refused(grid_root: Path) -> None:
    """1002 runs cannot be one array under the default MaxArraySize=1001; sbatch would refuse it only at submit."""
    patch, expected = CATALOG["array_over_max_array_size"]
    grid = grid_root / "grids" / "bi.yaml"
    grid.write_text(yaml.safe_dump(_merge(BASE_GRID, patch), sort_keys=False))
    with pytest.raises(PreflightError) as err:
        check_file(grid, sbatch=False, offline=True, out=lambda line: None)
    assert all(f in str(err.value) for f in expected)


# ---------------------------------------------------------------------------- checkpoints at training time
@pytest.fixture(scope="module")
def finished_run(tmp_path_factory: pytest.TempPathFactory, synthetic_dataset: Path, data_cache: Path) -> Path:
    out = tmp_path_factory.mktemp("bad_ckpt") / "run"
    run_cli(base_args(synthetic_dataset, data_cache, out, **{"optim.max_steps": 2}))
    return out


def _rewrite_state(ckpt: Path, edit: Any) -> None:
    """Edit trainer_state.json and re-seal the manifest, as a checkpoint of that kind would really look."""
    state = json.loads((ckpt / "trainer_state.json").read_text())
    edit(state)
    (ckpt / "trainer_state.json").write_text(json.dumps(state))
    (ckpt / checkpoint.MARKER).write_text(json.dumps({"step": 2, "files": checkpoint._manifest(ckpt)}))
    assert checkpoint.verify(ckpt) is None


def test_checkpoint_of_another_model_is_refused(finished_run: Path) -> None:
    ckpt = checkpoint.newest_complete(finished_run / "checkpoints")
    assert ckpt is not None
    state = json.loads((ckpt / "trainer_state.json").read_text())
    expect = {**state["identity"], "model": "vit_b16", "hidden_size": 768}
    with pytest.raises(checkpoint.CheckpointError) as err:
        checkpoint.check_compatible(state, expect, ckpt)
    assert "was saved for model='tiny' but this run has model='vit_b16'" in str(err.value)
    assert "point output_dir at a new folder" in str(err.value)
    expect = {**state["identity"], "class_names": ["cat", "dog"]}
    with pytest.raises(checkpoint.CheckpointError, match="class_names="):
        checkpoint.check_compatible(state, expect, ckpt)
    reliability_report.record("bad_input", case="checkpoint_of_another_model", rejected=True)


def test_checkpoint_of_another_transformers_major_is_refused(finished_run: Path, synthetic_dataset: Path,
                                                            data_cache: Path, tmp_path: Path) -> None:
    import shutil

    run = tmp_path / "run"
    shutil.copytree(finished_run, run)
    (run / "result.json").unlink()
    ckpt = checkpoint.newest_complete(run / "checkpoints")
    assert ckpt is not None
    _rewrite_state(ckpt, lambda s: s["versions"].__setitem__("transformers", "3.5.1"))
    proc = run_cli(base_args(synthetic_dataset, data_cache, run, **{"optim.max_steps": 4}), check=False)
    rejected = proc.returncode != 0 and "written with transformers 3.5.1" in proc.stderr \
        and "install transformers==3.5.1" in proc.stderr and "CheckpointError" in proc.stderr
    reliability_report.record("bad_input", case="checkpoint_of_another_transformers_major", rejected=rejected)
    assert rejected, proc.stderr[-3000:]
    assert not (run / "result.json").exists()


# ---------------------------------------------------------------------------- fuzz of the grid parser
# Known bugs the fuzz finds (tests below are xfail(strict) until fixed): tolerated here so the fuzz keeps
# looking for new ones. Remove an entry when its fix lands (its xfail test then fails, as a reminder).
def _known_bug(e: BaseException) -> str | None:
    return None  # no known bug left; add one here (with an xfail(strict) test) if the fuzz finds one


KEYS = st.sampled_from([*GRID_KEYS, *valid_dotted_keys(), "model", "optim", "parallel", "slurm", "nodes",
                        "gpus_per_node", "tasks_per_node", "time_min", "signal_delay_s", "lr", "x", ""])
SCALARS = st.one_of(st.none(), st.booleans(), st.integers(-3, 2**40), st.floats(allow_nan=True, allow_infinity=True),
                    st.sampled_from(["local", "tiny", "torch_ddp", "hybrid_parallel", "gemini", "fp16", "bf16", "~",
                                     "~nosuchuser_zz", "../x", "./", "", "a b", "1e-3", "[1, 2]"]),
                    st.text(max_size=12))
DOCS = st.recursive(SCALARS, lambda inner: st.one_of(st.lists(inner, max_size=4),
                                                     st.dictionaries(KEYS, inner, max_size=5)), max_leaves=25)
# Documents shaped like grids, so the fuzz reaches expand() and not only the first type check.
GRIDLIKE = st.fixed_dictionaries(
    {"profile": st.one_of(st.just("local"), SCALARS)},
    optional={"name": st.one_of(st.just("g"), SCALARS), "output_root": st.one_of(st.just("runs"), SCALARS),
              "slurm": st.one_of(st.dictionaries(KEYS, SCALARS, max_size=4), SCALARS),
              "base": st.dictionaries(KEYS, DOCS, max_size=4),
              "grid": st.dictionaries(KEYS, st.one_of(st.lists(SCALARS, max_size=3), SCALARS), max_size=3),
              "zip": st.lists(st.dictionaries(KEYS, st.lists(SCALARS, max_size=3), max_size=2), max_size=2)})
FUZZ = settings(max_examples=200, deadline=None, derandomize=True, database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])


def _parse_and_expand(data: Any) -> None:
    try:
        spec = parse_grid(data, base_dir=Path("/nonexistent/grids"), source="<fuzz>", default_name="g")
        expand(spec)
    except ConfigError:
        pass  # GridError is a ConfigError: a message for the user
    except Exception as e:
        if _known_bug(e) is None:
            raise


@FUZZ
@given(st.one_of(GRIDLIKE, DOCS))
def test_fuzz_parse_grid_raises_only_config_errors(data: Any) -> None:
    _parse_and_expand(data)


def _splice(args: tuple[str, int, str]) -> str:
    text, at, junk = args
    at = at % (len(text) + 1)
    return text[:at] + junk + text[at:]


NASTY_YAML = st.sampled_from([
    "profile: local\nname: !!python/object/apply:os.system ['touch /tmp/pwned']\n",
    "a: &x [*x]\n", "? [1, 2]\n: 3\n", "profile: local\nbase: !!binary aGVsbG8=\n", "\t\x00\x1b",
    "profile: local\nbase: {optim: {lr: .nan}}\n", "profile: local\ngrid: {optim.lr: [.inf]}\n",
    "[" * 200 + "]" * 200, "profile: local\n<<: {name: g}\n", "%YAML 1.1\n---\nprofile: local\n...\n---\nx: 1\n",
])
YAML_TEXT = st.one_of(st.text(max_size=200), GRIDLIKE.map(lambda d: yaml.safe_dump(d, allow_unicode=True)),
                      st.tuples(GRIDLIKE.map(yaml.safe_dump), st.integers(0, 10**6), st.text(max_size=6)).map(_splice),
                      NASTY_YAML)
_YAML_DIR = Path(tempfile.mkdtemp(prefix="fuzz_grid_"))


@FUZZ
@given(YAML_TEXT)
def test_fuzz_load_grid_raises_only_config_errors(text: str) -> None:
    path = _YAML_DIR / "fuzz.yaml"
    path.write_text(text, encoding="utf-8", errors="surrogatepass")
    try:
        spec = load_grid(path)
        expand(spec)
    except ConfigError:
        pass
    except Exception as e:
        if _known_bug(e) is None:
            raise
    assert not Path("/tmp/pwned").exists()


@pytest.mark.parametrize("key", ["optim.eps", "optim.max_grad_norm"])
def test_non_finite_float_fields_are_config_errors(key: str) -> None:
    with pytest.raises(ConfigError, match=key):
        expand(parse_grid({"profile": "local", "base": {key: math.inf}}, base_dir=Path("/tmp"), default_name="g"))


def test_output_root_of_unknown_user_is_a_grid_error() -> None:
    with pytest.raises(GridError, match="output_root"):
        parse_grid({"profile": "local", "output_root": "~nosuchuser_zz/runs"}, base_dir=Path("/tmp"), default_name="g")


def test_known_bug_list_is_exact() -> None:
    """Guard for _known_bug: an unrelated exception is never excused."""
    assert _known_bug(ValueError("boom")) is None and _known_bug(KeyError("x")) is None
    assert os.environ.get("HYPOTHESIS_PROFILE") in (None, "", "ci", "default")
