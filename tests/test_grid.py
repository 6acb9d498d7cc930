"""Tests for hpc.grid: grid files are parsed and expanded for real (pure functions, no Slurm needed)."""

from __future__ import annotations

import re
import textwrap
from pathlib import Path

import pytest

from hpc.grid import GridError, expand, format_value, load_grid, parse_grid, run_signature
from hpc.slurm_resources import SlurmResources
from vit_train.config import ConfigError, RunConfig

REPO = Path(__file__).resolve().parents[1]

CPU_SLURM = """
slurm:
  nodes: 1
  gpus_per_node: 0
  tasks_per_node: 1
  time_min: 10
  signal_delay_s: 60
"""


def _grid(tmp_path: Path, body: str, slurm: str = CPU_SLURM, name: str = "g.yaml") -> Path:
    path = tmp_path / name
    path.write_text(f"name: test\nprofile: local\n{textwrap.dedent(slurm)}\n{textwrap.dedent(body)}")
    return path


def _runs(tmp_path: Path, body: str, **kw: str):  # type: ignore[no-untyped-def]
    return expand(load_grid(_grid(tmp_path, body, **kw)))


BASE_TINY = """
base:
  model: {name: tiny}
  data: {dataset: /data/beans}
"""


# ---------------------------------------------------------------------------- expansion
def test_cartesian_times_zip_count_and_order(tmp_path: Path) -> None:
    runs = _runs(
        tmp_path,
        """
        base:
          model: {name: tiny}
          parallel: {plugin: hybrid_parallel, num_microbatches: 2}
        grid:
          optim.batch_size: [8, 16]
          optim.lr: [1.0e-4, 2.0e-4]
        zip:
          - {parallel.tp_size: [1, 2], parallel.pp_size: [2, 1]}
        """,
        slurm=CPU_SLURM.replace("tasks_per_node: 1", "tasks_per_node: 2"),
    )
    assert len(runs) == 2 * 2 * 2
    layouts = {(r.config.parallel.tp_size, r.config.parallel.pp_size) for r in runs}
    assert layouts == {(1, 2), (2, 1)}  # zipped, never crossed: no (1, 1) or (2, 2)
    assert [r.index for r in runs] == list(range(8))
    assert runs[0].point == {"optim.batch_size": 8, "optim.lr": 1e-4, "parallel.tp_size": 1, "parallel.pp_size": 2}
    assert runs[1].point["parallel.tp_size"] == 2  # the last factor varies fastest
    assert len({r.signature for r in runs}) == 8  # the layout is part of the identity


def test_run_folder_names_and_resolved_output_dir(tmp_path: Path) -> None:
    runs = _runs(tmp_path, BASE_TINY + "grid:\n  optim.batch_size: [16]\n  optim.lr: [2.0e-4]\n")
    (run,) = runs
    assert re.fullmatch(r"bs16-lr2e-04-[0-9a-f]{12}", run.name)
    assert run.name.endswith(run.signature)
    assert run.run_dir == tmp_path / "runs" / "test" / run.name  # output_root defaults to runs/, next to the file
    assert run.config.output_dir == str(run.run_dir)
    assert run.signature == run_signature(run.config)  # the saved config re-hashes to its folder name


def test_expand_is_pure(tmp_path: Path) -> None:
    spec = load_grid(_grid(tmp_path, BASE_TINY + "grid:\n  optim.lr: [1.0e-4, 2.0e-4]\n"))
    assert expand(spec) == expand(spec)


def test_base_only_grid_is_one_run(tmp_path: Path) -> None:
    (run,) = _runs(tmp_path, BASE_TINY)
    assert run.point == {} and run.name == run.signature


# ---------------------------------------------------------------------------- signatures
def test_signature_stable_across_key_order_and_nesting(tmp_path: Path) -> None:
    a = _runs(tmp_path, """
        base:
          model: {name: tiny}
          optim: {epochs: 2, weight_decay: 0.5}
          seed: 1
        grid:
          optim.lr: [1.0e-4]
        """, name="a.yaml")
    b = _runs(tmp_path, """
        base:
          seed: 1
          optim.weight_decay: 0.5
          optim: {epochs: 2}
          model.name: tiny
        grid:
          optim: {lr: [1.0e-4]}
        """, name="b.yaml")
    assert [r.signature for r in a] == [r.signature for r in b]


@pytest.mark.parametrize("spelling", ["1e-4", "1.0e-4", "0.0001", "1.0E-04", "'1e-4'"])
def test_signature_stable_across_float_spellings(tmp_path: Path, spelling: str) -> None:
    (ref,) = _runs(tmp_path, BASE_TINY + "grid:\n  optim.lr: [0.0001]\n", name="ref.yaml")
    (run,) = _runs(tmp_path, BASE_TINY + f"grid:\n  optim.lr: [{spelling}]\n")
    assert run.signature == ref.signature and run.name == ref.name
    assert run.config.optim.lr == 1e-4


def test_signature_differs_when_lr_differs(tmp_path: Path) -> None:
    a, b = _runs(tmp_path, BASE_TINY + "grid:\n  optim.lr: [1.0e-4, 1.1e-4]\n")
    assert a.signature != b.signature


def test_signature_ignores_non_semantic_fields(tmp_path: Path) -> None:
    (a,) = _runs(tmp_path, BASE_TINY + "grid:\n  optim.lr: [1.0e-4]\n", name="a.yaml")
    body = BASE_TINY + "  logging: {log_every_n_steps: 99}\n  checkpoint: {keep_last: 5}\ngrid:\n  optim.lr: [1.0e-4]\n"
    (b,) = _runs(tmp_path, body, name="b.yaml")
    assert b.config.logging.log_every_n_steps == 99
    assert a.signature == b.signature


def test_hparams_shown_are_the_axes_and_the_identifying_keys(tmp_path: Path) -> None:
    """logging.hparams (what TensorBoard's HParams view shows) is filled by the expansion, saved in the
    run's config, and changes no signature; base may replace the identifying keys, never the axes."""
    from vit_train.config import IDENTIFYING_HPARAMS

    body = BASE_TINY + "grid:\n  seed: [1, 2]\nzip:\n  - {optim.lr: [1.0e-4, 2.0e-4], optim.warmup_ratio: [0.1, 0.2]}\n"
    runs = _runs(tmp_path, body, name="a.yaml")
    shown = runs[0].config.logging.hparams
    assert shown == ("seed", "optim.lr", "optim.warmup_ratio", *[k for k in IDENTIFYING_HPARAMS if k != "optim.lr"])
    assert list(runs[0].config.hparam_values()) == list(shown) and "output_dir" not in shown
    assert runs[0].config.to_dict()["logging"]["hparams"] == list(shown)  # what run.json / config.json record
    assert [r.signature for r in runs] == [run_signature(r.config.with_overrides({"logging.hparams": []})) for r in runs]
    (own,) = _runs(tmp_path, BASE_TINY.replace("model: {name: tiny}", "model: {name: tiny}\n  logging: {hparams: [seed]}")
                   + "grid:\n  optim.lr: [1.0e-4]\n", name="b.yaml")
    assert own.config.logging.hparams == ("optim.lr", "seed")
    with pytest.raises(GridError, match=r"run 0 .*logging\.hparams=\['optim\.lr', 'optim\.lrr'\]: unknown key\(s\) \['optim\.lrr'\]"):
        _runs(tmp_path, BASE_TINY.replace("model: {name: tiny}", "model: {name: tiny}\n  logging: {hparams: [optim.lrr]}")
              + "grid:\n  optim.lr: [1.0e-4]\n", name="c.yaml")


def test_hparams_unknown_key_fails_at_construction() -> None:
    with pytest.raises(ConfigError) as err:
        RunConfig.from_dict({"logging": {"hparams": ["optim.lr", "data.image_colum"]}})
    msg = str(err.value)
    assert msg.startswith("logging.hparams=['optim.lr', 'data.image_colum']: unknown key(s) ['data.image_colum']")
    assert "data.image_column" in msg and "leave it empty" in msg
    assert RunConfig.from_dict({"logging": {"hparams": "optim.lr,seed"}}).logging.hparams == ("optim.lr", "seed")


def test_axis_over_non_semantic_field_is_a_duplicate(tmp_path: Path) -> None:
    with pytest.raises(GridError, match=r"non-semantic fields \['logging.log_every_n_steps'\]"):
        _runs(tmp_path, BASE_TINY + "grid:\n  logging.log_every_n_steps: [10, 20]\n")


def test_duplicate_value_fails_naming_both_runs(tmp_path: Path) -> None:
    with pytest.raises(GridError) as err:
        _runs(tmp_path, BASE_TINY + "grid:\n  optim.batch_size: [8, 16]\n  optim.lr: [1.0e-4, 0.0001]\n")
    msg = str(err.value)
    assert "g.yaml" in msg and "has the same signature" in msg and "run 1 " in msg and "as run 0 " in msg
    assert "optim.lr=" in msg and "remove the duplicate" in msg


# ---------------------------------------------------------------------------- errors
def test_unknown_top_level_key_lists_valid_keys(tmp_path: Path) -> None:
    with pytest.raises(GridError) as err:
        load_grid(_grid(tmp_path, "grdi:\n  optim.lr: [1]\n"))
    msg = str(err.value)
    assert "grdi" in msg and "did you mean grid" in msg and "name, output_root, profile, slurm, base, grid, zip" in msg


def test_unknown_axis_key_lists_valid_keys(tmp_path: Path) -> None:
    with pytest.raises(GridError) as err:
        load_grid(_grid(tmp_path, "grid:\n  optim.lrr: [1.0e-4]\n"))
    msg = str(err.value)
    assert "optim.lrr" in msg and "did you mean optim.lr" in msg and "optim.batch_size" in msg


def test_unknown_slurm_key_lists_valid_keys(tmp_path: Path) -> None:
    with pytest.raises(GridError) as err:
        load_grid(_grid(tmp_path, "", slurm="slurm:\n  gpus: 2\n"))
    assert "gpus" in str(err.value) and "gpus_per_node" in str(err.value) and "time_min" in str(err.value)


def test_bad_yaml_reports_file_and_line(tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text("name: bad\nprofile: local\ngrid:\n  optim.lr: [1.0e-4, 2.0e-4\n  optim.batch_size: [8]\n")
    with pytest.raises(GridError) as err:
        load_grid(path)
    assert re.search(rf"{re.escape(str(path))}:5:\d+: invalid YAML", str(err.value)), str(err.value)


def test_duplicate_yaml_key_reports_line(tmp_path: Path) -> None:
    path = tmp_path / "dup.yaml"
    path.write_text("name: dup\nprofile: local\ngrid:\n  optim.lr: [1.0e-4]\n  optim.lr: [2.0e-4]\n")
    with pytest.raises(GridError, match=rf"{re.escape(str(path))}:5:3: invalid YAML: duplicate key 'optim.lr'"):
        load_grid(path)


def test_empty_axis_fails(tmp_path: Path) -> None:
    with pytest.raises(GridError, match=r"grid.optim.lr has no values"):
        load_grid(_grid(tmp_path, BASE_TINY + "grid:\n  optim.lr: []\n"))


def test_scalar_axis_fails(tmp_path: Path) -> None:
    with pytest.raises(GridError, match=r"grid.optim.lr=0.001: an axis needs a list"):
        load_grid(_grid(tmp_path, "grid:\n  optim.lr: 1.0e-3\n"))


def test_zip_lengths_must_match(tmp_path: Path) -> None:
    with pytest.raises(GridError, match=r"zip\[0\]: zipped axes need equal lengths"):
        load_grid(_grid(tmp_path, "zip:\n  - {parallel.tp_size: [1, 2], parallel.pp_size: [1]}\n"))


@pytest.mark.parametrize(
    "body, words",
    [
        ("base: {optim.lr: 1.0e-4}\ngrid:\n  optim.lr: [1.0e-4]\n", ["optim.lr", "base"]),
        ("grid:\n  optim.lr: [1.0e-4]\nzip:\n  - {optim.lr: [1.0e-4]}\n", ["optim.lr", "zip[0]"]),
        ("base: {output_dir: /tmp/x}\n", ["output_dir", "output_root"]),
    ],
)
def test_a_key_is_set_in_one_place(tmp_path: Path, body: str, words: list[str]) -> None:
    with pytest.raises(GridError) as err:
        load_grid(_grid(tmp_path, body))
    assert all(w in str(err.value) for w in words), str(err.value)


def test_missing_profile_fails(tmp_path: Path) -> None:
    path = tmp_path / "p.yaml"
    path.write_text("name: p\n")
    with pytest.raises(GridError, match="profile is missing"):
        load_grid(path)


def test_invalid_run_is_reported_with_its_grid_point(tmp_path: Path) -> None:
    body = """
    base:
      model: {name: tiny}
      parallel: {plugin: hybrid_parallel}
      optim: {batch_size: 24}
    grid:
      optim.lr: [1.0e-4]
      parallel.tp_size: [1, 3]
    """
    with pytest.raises(GridError) as err:
        _runs(tmp_path, body, slurm=CPU_SLURM.replace("tasks_per_node: 1", "tasks_per_node: 3"))
    msg = str(err.value)
    assert "g.yaml" in msg and "parallel.tp_size=3" in msg and "num_attention_heads=4" in msg
    assert isinstance(err.value, ConfigError)


def test_world_size_is_checked_at_expansion(tmp_path: Path) -> None:
    body = BASE_TINY + "grid:\n  optim.batch_size: [8, 9]\n"
    with pytest.raises(GridError, match=r"optim.batch_size=9.*data-parallel size 2"):
        _runs(tmp_path, body, slurm=CPU_SLURM.replace("tasks_per_node: 1", "tasks_per_node: 2"))


def test_bad_value_type_names_field(tmp_path: Path) -> None:
    with pytest.raises(GridError, match=r"optim.batch_size='big': expected int"):
        _runs(tmp_path, BASE_TINY + "grid:\n  optim.batch_size: [big]\n")


# ---------------------------------------------------------------------------- names and paths
def test_names_are_filesystem_safe(tmp_path: Path) -> None:
    runs = _runs(tmp_path, """
        base: {data: {dataset: /data/beans}}
        grid:
          model.name: [tiny, "google/vit-base-patch16-224"]
          optim.betas: [[0.9, 0.999], [0.9, 0.95]]
          optim.weight_decay: [0.0, 0.05]
          optim.lr: [3.0e-5]
        """)
    for r in runs:
        assert re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]*", r.name), r.name
    assert any(r.name.startswith("vit-base-patch16-224-betas0.9_0.999-wd0.0-lr3e-05-") for r in runs)


@pytest.mark.parametrize(
    "value, text",
    [(1e-4, "1e-04"), (2.5e-4, "2.5e-04"), (0.001, "1e-03"), (0.5, "0.5"), (0.05, "0.05"), (0.0, "0.0"),
     (1e6, "1e06"), (16, "16"), (True, "true"), (None, "none"), ("gemini", "gemini")],
)
def test_format_value(value: object, text: str) -> None:
    assert format_value(value) == text


def test_relative_paths_resolve_against_the_grid_file(tmp_path: Path) -> None:
    sub = tmp_path / "grids"
    sub.mkdir()
    path = sub / "rel.yaml"
    path.write_text(
        "name: rel\nprofile: local\noutput_root: ../out\n" + CPU_SLURM
        + "base:\n  model: {name: tiny}\n  data: {dataset: ../data/beans, cache_dir: ./cache}\n"
    )
    spec = load_grid(path)
    (run,) = expand(spec)
    assert spec.grid_dir == tmp_path / "out" / "rel"
    assert run.config.data.dataset == str(tmp_path / "data" / "beans")
    assert run.config.data.cache_dir == str(sub / "cache")


def test_hub_ids_are_not_paths(tmp_path: Path) -> None:
    (run,) = _runs(tmp_path, "base: {model: {name: tiny}, data: {dataset: AI-Lab-Makerere/beans}}\n")
    assert run.config.data.dataset == "AI-Lab-Makerere/beans"


def test_parse_grid_without_a_file() -> None:
    spec = parse_grid(
        {"name": "mem", "profile": "local", "slurm": {"gpus_per_node": 0, "tasks_per_node": 1},
         "base": {"model": {"name": "tiny"}}, "grid": {"seed": [1, 2, 3]}},
        base_dir=Path("/tmp/grids"),
    )
    runs = expand(spec)
    assert spec.grid_dir == Path("/tmp/grids/runs/mem") and spec.num_runs == 3 == len(runs)
    assert [r.name.split("-")[0] for r in runs] == ["seed1", "seed2", "seed3"]


# ---------------------------------------------------------------------------- Slurm resources
def test_slurm_resources_defaults_and_world_size() -> None:
    r = SlurmResources(nodes=2, gpus_per_node=4)
    assert r.tasks_per_node == 4 and r.world_size == 8 and r.device_type == "cuda"
    cpu = SlurmResources(gpus_per_node=0, tasks_per_node=3)
    assert cpu.world_size == 3 and cpu.device_type == "cpu"


@pytest.mark.parametrize(
    "kwargs, words",
    [
        (dict(nodes=0), ["slurm.nodes=0", "1 or more"]),
        (dict(time_min=0), ["slurm.time_min=0"]),
        (dict(gpus_per_node=0), ["slurm.tasks_per_node=None", "gpus_per_node: 0"]),
        (dict(gpus_per_node=4, tasks_per_node=2), ["slurm.tasks_per_node=2", "gpus_per_node=4"]),
        (dict(time_min=2, signal_delay_s=120), ["slurm.signal_delay_s=120", "time_min=2"]),
        (dict(nodes=1.5), ["slurm.nodes=1.5", "integer"]),
        (dict(nodes=True), ["slurm.nodes=True", "integer"]),
        (dict(partition=""), ["slurm.partition=''"]),
        (dict(max_requeues=-1), ["slurm.max_requeues=-1"]),
    ],
)
def test_slurm_resources_validation(kwargs: dict, words: list[str]) -> None:
    with pytest.raises(ConfigError) as err:
        SlurmResources(**kwargs)
    assert all(w in str(err.value) for w in words), str(err.value)


# ---------------------------------------------------------------------------- shipped grids
@pytest.mark.parametrize("grid_file", ["beans_seed.yaml", "cpu_tiny.yaml"])
def test_shipped_grids_load_and_expand(grid_file: str) -> None:
    spec = load_grid(REPO / "grids" / grid_file)
    runs = expand(spec)
    assert len(runs) == 9 == spec.num_runs
    assert {r.config.optim.batch_size for r in runs} == {8, 16, 32}
    assert len({r.config.optim.lr for r in runs}) == 3
    assert len({r.run_dir for r in runs}) == 9
    assert all(r.run_dir.parent == spec.grid_dir == REPO / "runs" / spec.name for r in runs)
    assert all(isinstance(r.config, RunConfig) and r.config.output_dir == str(r.run_dir) for r in runs)


def test_beans_seed_matches_the_reference() -> None:
    spec = load_grid(REPO / "grids" / "beans_seed.yaml")
    c = expand(spec)[0].config
    assert (spec.profile, spec.slurm.world_size, spec.slurm.device_type) == ("example_site", 1, "cuda")
    assert (c.model.name, c.data.dataset) == ("google/vit-base-patch16-224", "AI-Lab-Makerere/beans")
    assert (c.parallel.plugin, c.optim.optimizer, c.precision) == ("gemini", "hybrid_adam", "bf16")
    assert (c.optim.epochs, c.optim.weight_decay, c.optim.warmup_ratio) == (5, 0.5, 0.3)
    assert sorted({r.config.optim.lr for r in expand(spec)}) == [1e-4, 2e-4, 5e-4]


def test_cpu_tiny_runs_on_cpu() -> None:
    spec = load_grid(REPO / "grids" / "cpu_tiny.yaml")
    c = expand(spec)[0].config
    assert (spec.profile, spec.slurm.device_type, spec.slurm.world_size) == ("local", "cpu", 1)
    assert (c.model.name, c.parallel.plugin, c.precision) == ("tiny", "torch_ddp", "fp32")
    assert c.data.dataset == str(REPO / "demo_runs" / "data" / "beans_synthetic_v2")
