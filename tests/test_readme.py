"""Every command the README shows is a real command of this project with valid arguments.

The flows themselves run in other tests (test_demo, test_slurm_e2e, test_prefetch, test_kernels,
test_tensorboard, test_cli_train); here each README line is parsed by the project's own parsers, so
a renamed flag or subcommand breaks this test instead of a user's first try. Lines that install
third-party software on a cluster (pip, python -m venv) cannot run here and are only listed.
"""

from __future__ import annotations

import re
import shlex
import subprocess

import pytest

from tests.train_utils import REPO

README = (REPO / "README.md").read_text()
CLUSTER_ONLY = ("pip ", "python -m venv")


def _commands() -> list[str]:
    cmds = []
    for block in re.findall(r"```bash\n(.*?)```", README, flags=re.S):
        for line in block.splitlines():
            line = line.split("  #")[0].strip()
            if line and not line.startswith("#"):
                cmds.append(line)
    for cell in re.findall(r"^\| `([^`]+)` \|", README, flags=re.M):
        cmds.append(cell.replace("\\|", "|"))
    return cmds


ALL = _commands()
CLUSTER_LINES = [c for c in ALL if c.startswith(CLUSTER_ONLY) or c.startswith("source ")]
COMMANDS = [c for c in ALL if c not in CLUSTER_LINES]


def _expand_choices(words: list[str]) -> list[str]:
    """`--format text|markdown` and `[--dry-run]` in the table: take the first choice, drop brackets."""
    out = []
    for w in words:
        w = w.strip("[]")
        out.append(w.split("|")[0])
    return out


def test_readme_lists_the_two_quick_start_commands() -> None:
    assert "make demo" in COMMANDS and "make test" in COMMANDS
    makefile = (REPO / "Makefile").read_text()
    assert re.search(r"^demo:", makefile, re.M) and re.search(r"^test:", makefile, re.M)


def test_only_the_cluster_install_lines_are_left_out() -> None:
    """The cluster install recipe (venv, CUDA torch, colossalai --no-deps, the project) is not run
    here; make sure nothing else escapes the parsing test below."""
    assert len(CLUSTER_LINES) == 4, CLUSTER_LINES
    assert any("colossalai==0.5.0" in c and "--no-deps" in c for c in CLUSTER_LINES)


@pytest.mark.parametrize("cmd", COMMANDS)
def test_readme_command_parses(cmd: str) -> None:
    from hpc.cli import build_parser as submit_parser
    from vit_train.cli import build_parser as train_parser, config_from_args

    words = _expand_choices(shlex.split(cmd))
    if words[0] == "make":
        assert re.search(rf"^{words[1]}:", (REPO / "Makefile").read_text(), re.M)
    elif words[:2] == ["python", "submit.py"]:
        submit_parser().parse_args(words[2:])
    elif "vit_train" in words and words[0] in ("python", "torchrun", "srun"):
        rest = words[words.index("vit_train") + 1:]
        if rest == ["--help"]:
            with pytest.raises(SystemExit) as e:
                train_parser().parse_args(rest)
            assert e.value.code == 0
            return
        args = train_parser().parse_args(rest)
        if args.config is None:
            config_from_args(args)  # values are validated too
    elif words[:3] == ["python", "-m", "hpc.dev.cluster"]:
        from hpc.dev import cluster as devcluster

        assert set(words[3].split("|")) <= {"start", "stop", "status", "install"}
        assert callable(devcluster.start)
    elif words[0] == "sbatch":
        script = REPO / words[1]
        assert script.is_file()
        subprocess.run(["bash", "-n", str(script)], check=True)
    else:
        pytest.fail(f"README command not covered by this test: {cmd}")
