"""Every plugin/layout trains the same as one process on the same global batch (real gloo groups).

Each layout runs the real CLI under torchrun on CPU; the per-step fp32 losses must equal a
single-process torch_ddp run to 1e-5, because the data order is a function of the step and the
global batch alone. ZeRO inside hybrid_parallel has no fp32 mode in ColossalAI, so zero_stage=1
is compared in bf16 against a single-process bf16 hybrid_parallel run, with a bf16 tolerance.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.train_utils import base_args, run_cli, train_losses

LAYOUTS = {
    "ddp": (2, {"parallel.plugin": "torch_ddp"}),
    "zero1": (2, {"parallel.plugin": "low_level_zero", "parallel.zero_stage": 1}),
    "zero2": (2, {"parallel.plugin": "low_level_zero", "parallel.zero_stage": 2}),
    "tp2": (2, {"parallel.plugin": "hybrid_parallel", "parallel.tp_size": 2}),
    "pp2": (2, {"parallel.plugin": "hybrid_parallel", "parallel.pp_size": 2, "parallel.num_microbatches": 2}),
    "tp2pp2": (4, {"parallel.plugin": "hybrid_parallel", "parallel.tp_size": 2, "parallel.pp_size": 2,
                   "parallel.num_microbatches": 2}),
}


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory, synthetic_dataset: Path, data_cache: Path) -> list[tuple[int, float]]:
    out = tmp_path_factory.mktemp("ref") / "run"
    run_cli(base_args(synthetic_dataset, data_cache, out))
    losses = train_losses(out)
    assert [s for s, _ in losses] == [1, 2, 3, 4]
    return losses


@pytest.mark.parametrize("name", list(LAYOUTS))
def test_layout_matches_single_process(name: str, reference, tmp_path: Path, synthetic_dataset: Path, data_cache: Path) -> None:
    nproc, over = LAYOUTS[name]
    out = tmp_path / name
    run_cli(base_args(synthetic_dataset, data_cache, out, **over), nproc=nproc)
    got = train_losses(out)
    assert [s for s, _ in got] == [s for s, _ in reference]
    for (step, a), (_, b) in zip(got, reference):
        assert abs(a - b) <= 1e-5, f"{name}: step {step} loss {a} vs single-process {b}"
    # the losses must actually move, or equality would prove nothing
    assert abs(reference[0][1] - reference[-1][1]) > 1e-3


def test_hybrid_zero1_dp2_matches_single_process_bf16(tmp_path: Path, synthetic_dataset: Path, data_cache: Path) -> None:
    hybrid = {"parallel.plugin": "hybrid_parallel", "precision": "bf16"}
    run_cli(base_args(synthetic_dataset, data_cache, tmp_path / "one", **hybrid))
    run_cli(base_args(synthetic_dataset, data_cache, tmp_path / "zero1", **hybrid, **{"parallel.zero_stage": 1}), nproc=2)
    ref, got = train_losses(tmp_path / "one"), train_losses(tmp_path / "zero1")
    assert len(ref) == len(got) == 4
    for (step, a), (_, b) in zip(got, ref):
        assert abs(a - b) <= 2e-2 * max(1.0, abs(b)), f"zero1 dp2 step {step}: {a} vs {b}"
