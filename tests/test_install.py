"""hpc/install.py + hpc/install_rules.py: the installer never changes an installed torch or triton.

The first part tests the version and constraint choices as pure functions. The second part asks the
real package index (PyPI, as pip is configured here) through ``pip install --dry-run --report``, which
changes nothing: in a throwaway venv pretending the installed torch is 2.5.1 (pinned through the
installer's constraints, as for a real installed torch), and in this interpreter's own environment
with the torch actually installed here. The last tests show that a requirement no torch-compatible
set fits fails with a message naming the installed torch and the conflicting requirement, and that
nothing in the environment changed.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from hpc import install as inst
from hpc.install import Dist, Requirement, SpecifierSet, Version

REPO = Path(__file__).resolve().parents[1]

# pip 23.2.1's words for the conflict of accelerate 1.16.0 with an installed torch 2.5.1 (the
# machine-wide cap of this workplace, torch<=2.14.1, is merged into the constraint line)
PIP_CONFLICT = textwrap.dedent("""\
    INFO: pip is looking at multiple versions of accelerate to determine which version is compatible with other requirements. This could take a while.
    ERROR: Cannot install accelerate==1.16.0 because these package versions have conflicting dependencies.

    The conflict is caused by:
        accelerate 1.16.0 depends on torch>=2.6.0
        The user requested (constraint) torch<=2.14.1,==2.5.1

    To fix this you could try to:
    1. loosen the range of package versions you've specified
    2. remove package versions to allow pip attempt to solve the dependency conflict

    ERROR: ResolutionImpossible: for help visit https://pip.pypa.io/en/latest/topics/dependency-resolution/#dealing-with-dependency-conflicts
    """)


# --------------------------------------------------------------------------- pure functions


@pytest.mark.parametrize("torch_version, expected", [
    ("2.5.1", "accelerate>=0.21.0,<1.16.0"),
    ("2.5.1+cu124", "accelerate>=0.21.0,<1.16.0"),
    ("2.2.0", "accelerate>=0.21.0,<1.16.0"),
    ("2.6.0a0+ecf3bae40a", "accelerate>=0.21.0,<1.16.0"),  # an NGC container's pre-release is < 2.6.0
    ("2.6.0", "accelerate>=0.21.0"),
    ("2.13.0+cpu", "accelerate>=0.21.0"),
])
def test_accelerate_spec_accepts_the_torch(torch_version: str, expected: str) -> None:
    assert inst.accelerate_spec(torch_version) == expected


def test_peft_spec_is_colossalai_050s_range() -> None:
    spec = Requirement(inst.PEFT_SPEC).specifier
    assert "0.13.2" in spec and "0.7.1" in spec
    assert "0.14.0" not in spec and "0.21.2" not in spec


def test_constraints_pin_exactly_the_installed_versions() -> None:
    text = inst.constraints_text({"triton": "3.1.0", "torch": "2.5.1+cu124"})
    lines = [ln for ln in text.splitlines() if not ln.startswith("#")]
    assert lines == ["torch==2.5.1+cu124", "triton==3.1.0"]
    assert inst.constraints_text({}).splitlines()[1:] == []


def test_torch_spec_version() -> None:
    assert inst.torch_spec_version("torch==2.13.0") == "2.13.0"
    assert inst.torch_spec_version("torch==2.5.1+cu124") == "2.5.1+cu124"
    assert inst.torch_spec_version("torch>=2.5") is None
    assert inst.torch_spec_version("not a spec ===") is None


def test_spec_admits_local_builds() -> None:
    assert inst.spec_admits("torch==2.5.1", "2.5.1+cu124")
    assert not inst.spec_admits("torch==2.5.1", "2.13.0+cpu")
    assert not inst.spec_admits("torch==bad version", "2.5.1")


def test_install_requirements() -> None:
    reqs = inst.install_requirements("2.5.1", test=True, root=Path("/x/repo"))
    assert reqs == ["-e", "/x/repo[test]", inst.PEFT_SPEC, "accelerate>=0.21.0,<1.16.0"]
    assert inst.install_requirements("2.13.0+cpu", test=False, root=Path("/r"))[:2] == ["-e", "/r"]
    # a dry run with no torch installed resolves the torch that the real run would install
    assert inst.install_requirements(None, test=False, root=Path("/r"), torch_spec="torch==2.5.1")[-2:] == [
        "torch==2.5.1", "accelerate>=0.21.0,<1.16.0"]


def test_pyproject_pins_fit_torch_251_and_colossalai() -> None:
    """peft within ColossalAI 0.5.0's pin; the test extra's triton admits torch 2.5.1's triton 3.1.0."""
    _, reqs = inst.project_requirements(REPO, test=True)
    by_name = {inst.canonical(Requirement(r).name): Requirement(r) for r in reqs}
    assert by_name["peft"].specifier == SpecifierSet(">=0.7.1,<=0.13.2")
    assert by_name["transformers"].specifier == SpecifierSet("==4.51.3")
    assert "3.1.0" in by_name["triton"].specifier and "3.9.0" in by_name["triton"].specifier
    assert "torch" not in by_name and "colossalai" not in by_name  # installed by the installer's own steps


DISTS = {
    "peft": Dist("0.13.2", ["torch>=1.13.0", "accelerate>=0.21.0", 'pytest; extra == "test"']),
    "accelerate": Dist("1.15.0", ["torch>=2.0.0", "numpy>=1.17"]),
    "torch": Dist("2.5.1", ['triton==3.1.0; platform_system == "Linux"', "filelock"]),
    "triton": Dist("3.1.0"),
    "filelock": Dist("3.16.1"),
    "numpy": Dist("2.1.0"),
    "colossalai": Dist("0.5.0", ["torch<=2.5.1,>=2.2.0", "ray", "diffusers==0.29.0"]),
}


def test_unmet_requirements_all_met() -> None:
    assert inst.unmet_requirements(["peft<=0.13.2", "accelerate<1.16.0", "colossalai==0.5.0"], DISTS) == []


def test_unmet_requirements_names_what_and_why() -> None:
    dists = dict(DISTS, peft=Dist("0.21.2", ["torch>=1.13.0", "accelerate>=0.21.0"]))
    assert inst.unmet_requirements(["peft>=0.7.1,<=0.13.2"], dists) == [
        "peft<=0.13.2,>=0.7.1 but peft 0.21.2 is installed"]
    dists = dict(DISTS, accelerate=Dist("1.16.0", ["torch>=2.6.0"]))
    unmet = inst.unmet_requirements(["peft"], dists)  # found through peft -> accelerate -> torch
    assert unmet == ["torch>=2.6.0 but torch 2.5.1 is installed (required by accelerate)"]
    assert inst.unmet_requirements(["einops"], DISTS) == ["einops not installed"]


def test_unmet_requirements_markers_and_extras() -> None:
    # peft's "pytest; extra == 'test'" only counts when peft[test] is asked for
    assert inst.unmet_requirements(["peft"], DISTS) == []
    assert inst.unmet_requirements(["peft[test]"], DISTS) == ["pytest not installed (required by peft)"]
    assert inst.unmet_requirements(['missing-pkg; python_version < "3.0"'], DISTS) == []


def test_colossalai_own_pins_are_not_checked() -> None:
    """colossalai is installed --no-deps on purpose: ray/diffusers absent is no reason to run pip."""
    assert inst.unmet_requirements(["colossalai==0.5.0"], DISTS) == []
    assert inst.unmet_requirements(["colossalai==0.5.0"], DISTS, skip=()) != []


def test_forbidden_and_reported_changes() -> None:
    report = {"install": [
        {"metadata": {"name": "torch", "version": "2.13.0"}},
        {"metadata": {"name": "peft", "version": "0.13.2"}},
        {"metadata": {"name": "Triton", "version": "3.1.0"}},
        {"metadata": {"name": "einops", "version": "0.8.2"}},
    ]}
    assert inst.forbidden_changes(report, {"torch": "2.5.1", "triton": "3.1.0"}) == ["torch 2.5.1 -> 2.13.0"]
    assert inst.report_changes(report, {"torch": "2.5.1", "peft": "0.21.2", "triton": "3.1.0"}) == [
        "torch 2.5.1 -> 2.13.0", "peft 0.21.2 -> 0.13.2", "Triton 3.1.0 (reinstalled)", "einops 0.8.2"]


def test_summarize_changes_puts_version_changes_first() -> None:
    changes = [f"pkg{i} 1.0" for i in range(12)] + ["peft 0.21.2 -> 0.13.2", "accelerate 1.15.0"]
    line = inst.summarize_changes(changes, limit=4)
    assert line.startswith("peft 0.21.2 -> 0.13.2, accelerate 1.15.0, pkg0 1.0, pkg1 1.0 and 10 more")
    assert inst.summarize_changes([]) == "no other package to change"


def test_conflict_message_names_torch_and_the_requirement() -> None:
    msg = inst.conflict_message("2.5.1", {"torch": "2.5.1", "triton": "3.1.0"}, PIP_CONFLICT)
    assert "the installed torch 2.5.1 (with triton 3.1.0)" in msg
    assert "Cannot install accelerate==1.16.0" in msg
    assert "accelerate 1.16.0 depends on torch>=2.6.0" in msg
    assert "nothing was installed or changed" in msg
    assert "To fix this you could try" not in msg  # pip's generic advice is left in the log
    nomatch = "ERROR: Could not find a version that satisfies the requirement peft>=9 (from versions: 0.1.0)\n" \
              "ERROR: No matching distribution found for peft>=9\n"
    assert inst.conflict_lines(nomatch) == [
        "Could not find a version that satisfies the requirement peft>=9 (from versions: 0.1.0)",
        "No matching distribution found for peft>=9"]


def test_state_dir_is_per_environment(tmp_path: Path) -> None:
    a, b = inst.default_state_dir("/envs/a/venv"), inst.default_state_dir("/envs/b/venv")
    assert a != b and a.name.startswith("venv-") and b.name.startswith("venv-")
    assert a.parent == REPO / ".install"  # gitignored
    assert "/.install/" in (REPO / ".gitignore").read_text()


# --------------------------------------------------------------------------- against the real index


@pytest.fixture(scope="module")
def venv(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A throwaway venv with pip and nothing else: nothing installed to keep, only constraints.
    Its pip is brought up to date: current pip resolves this project in about half the time of the
    pip that ``venv`` bundles (the test of this environment itself uses the pip installed here)."""
    path = tmp_path_factory.mktemp("venv") / "v"
    subprocess.run([sys.executable, "-m", "venv", str(path)], check=True, timeout=120)
    python = path / "bin" / "python"
    subprocess.run([str(python), "-m", "pip", "install", "-q", "--upgrade", "pip"], check=True, timeout=120,
                   capture_output=True)
    return python


def _site_listing(python: Path) -> list[str]:
    site = subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                          capture_output=True, text=True, check=True).stdout.strip()
    return sorted(os.listdir(site))


@pytest.mark.timeout(180)
def test_resolution_keeps_a_preinstalled_torch_251(venv: Path, tmp_path: Path) -> None:
    """What the installer resolves for an installed torch 2.5.1 (the newest ColossalAI 0.5.0 declares),
    asking the real index: torch stays 2.5.1, triton stays 3.1.0, peft <= 0.13.2, accelerate < 1.16."""
    constraints = tmp_path / "constraints.txt"
    constraints.write_text(inst.constraints_text({"torch": "2.5.1", "triton": "3.1.0"}))
    reqs = inst.install_requirements("2.5.1", test=True, root=REPO)
    before = _site_listing(venv)
    report = inst.resolve(str(venv), constraints, reqs, tmp_path / "report.json")
    got = inst.report_versions(report)
    assert got["torch"] == "2.5.1"
    assert got["triton"] == "3.1.0"
    assert Version(got["peft"]) <= Version("0.13.2")
    assert Version(got["accelerate"]) < Version("1.16.0")
    assert got["transformers"] == "4.51.3"
    assert inst.forbidden_changes(report, {"torch": "2.5.1", "triton": "3.1.0"}) == []
    assert _site_listing(venv) == before  # a dry run


@pytest.mark.timeout(180)
def test_resolution_keeps_the_torch_installed_here(tmp_path: Path) -> None:
    """The installer's resolution step in this interpreter's own environment, with the torch actually
    installed here: the report installs no torch or triton at another version. A dry run: the
    environment is not changed."""
    dists = inst.installed_dists()
    pinned = {n: dists[n].version for n in ("torch", *inst.PINNED_WITH_TORCH) if n in dists}
    assert "torch" in pinned
    constraints = tmp_path / "constraints.txt"
    constraints.write_text(inst.constraints_text(pinned))
    reqs = inst.install_requirements(pinned["torch"], test=True, root=REPO)
    report = inst.resolve(sys.executable, constraints, reqs, tmp_path / "report.json")
    assert inst.forbidden_changes(report, pinned) == []
    got = inst.report_versions(report)
    for name, version in pinned.items():
        assert got.get(name, version) == version, (name, got.get(name))
    peft = got.get("peft") or dists["peft"].version
    assert Version(peft) <= Version("0.13.2")
    after = inst.installed_dists()
    assert {n: after[n].version for n in pinned} == pinned


@pytest.mark.timeout(120)
def test_resolve_conflict_names_the_installed_torch(venv: Path, tmp_path: Path) -> None:
    """An impossible pin against an installed torch 2.5.1 (accelerate 1.16 needs torch >= 2.6)."""
    constraints = tmp_path / "constraints.txt"
    constraints.write_text(inst.constraints_text({"torch": "2.5.1"}))
    with pytest.raises(inst.InstallError) as err:
        inst.resolve(str(venv), constraints, ["accelerate>=1.16"], tmp_path / "report.json")
    msg = inst.conflict_message("2.5.1", {"torch": "2.5.1"}, str(err.value))
    assert "no set of packages fits the installed torch 2.5.1" in msg
    assert "accelerate 1.16" in msg and "depends on torch>=2.6" in msg
    assert "==2.5.1" in msg  # pip's line for the constraint on the installed torch
    assert "nothing was installed or changed" in msg


def _fake_dist(site: Path, name: str, version: str) -> Path:
    """A dist-info folder with metadata only: what the installer reads for an installed package."""
    info = site / f"{name}-{version}.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n")
    (info / "INSTALLER").write_text("pip\n")
    (info / "RECORD").write_text("")
    return info


@pytest.mark.timeout(180)
def test_cli_conflict_fails_loudly_and_changes_nothing(venv: Path, tmp_path: Path) -> None:
    """The whole command, in an environment whose installed torch (1.12.0, here only its metadata)
    no peft that ColossalAI 0.5.0 accepts can use (peft 0.7.1-0.13.2 need torch >= 1.13)."""
    site = Path(subprocess.run([str(venv), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                               capture_output=True, text=True, check=True).stdout.strip())
    fakes = [_fake_dist(site, "torch", "1.12.0"), _fake_dist(site, "colossalai", "0.5.0")]
    try:
        before = _site_listing(venv)
        log = tmp_path / "install.log"
        proc = subprocess.run([str(venv), "-m", "hpc.install", "--log", str(log), "--state-dir", str(tmp_path)],
                              check=False, cwd=REPO, capture_output=True, text=True, timeout=170)
        assert proc.returncode == 1, proc.stdout + proc.stderr
        assert "[install] torch 1.12.0 kept" in proc.stdout
        assert "[install] colossalai 0.5.0 kept" in proc.stdout
        err = proc.stderr
        assert "FAILED: no set of packages fits the installed torch 1.12.0" in err
        assert "depends on torch>=1.13" in err and "peft" in err
        assert "==1.12.0" in err
        assert "nothing was installed or changed" in err
        assert f"last lines of {log}" in err
        assert "--dry-run" in log.read_text()
        assert (tmp_path / "constraints.txt").read_text().splitlines()[1:] == ["torch==1.12.0"]
        assert _site_listing(venv) == before
        version = subprocess.run([str(venv), "-c", "import importlib.metadata as m; print(m.version('torch'))"],
                                 capture_output=True, text=True, check=True).stdout.strip()
        assert version == "1.12.0"
    finally:  # the venv is shared with the resolution tests
        for info in fakes:
            shutil.rmtree(info)
