"""The installer's rules as pure functions: which versions fit an installed torch, what a pip
report would change, and how a conflict is worded. No I/O; :mod:`hpc.install` runs the steps.

Standard library plus the ``packaging`` library that pip vendors, so it runs before anything is installed.
"""


from __future__ import annotations

import re
import sys
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

try:  # pip vendors packaging; a standalone packaging is used when present
    from packaging.markers import Marker
    from packaging.requirements import InvalidRequirement, Requirement
    from packaging.specifiers import SpecifierSet
    from packaging.version import InvalidVersion, Version
except ImportError:  # pragma: no cover - depends on the environment
    try:
        from pip._vendor.packaging.markers import Marker  # type: ignore[no-redef]
        from pip._vendor.packaging.requirements import InvalidRequirement, Requirement  # type: ignore[no-redef]
        from pip._vendor.packaging.specifiers import SpecifierSet  # type: ignore[no-redef]  # noqa: F401
        from pip._vendor.packaging.version import InvalidVersion, Version  # type: ignore[no-redef]
    except ImportError:
        sys.exit(f"[install] FAILED: {sys.executable} has no pip; add it with `{sys.executable} -m ensurepip`")

ROOT = Path(__file__).resolve().parents[1]  # the repository
PROJECT = "vit-slurm-toolkit"
DEFAULT_TORCH_SPEC = "torch==2.13.0"  # the CPU wheel on the dev/CI machines
COLOSSALAI_VERSION = "0.5.0"
# ColossalAI 0.5.0 declares peft>=0.7.1,<=0.13.2; newer peft also pulls an accelerate that needs torch>=2.6.
PEFT_SPEC = "peft>=0.7.1,<=0.13.2"
ACCELERATE_MIN = "0.21.0"  # peft 0.13.2's floor
# (first accelerate release that needs it, the torch it needs), from each release's Requires-Dist
# on PyPI: accelerate 1.0-1.15 need torch>=1.10 or >=2.0, accelerate 1.16.0 needs torch>=2.6.0.
ACCELERATE_TORCH_FLOORS: tuple[tuple[str, str], ...] = (("1.16.0", "2.6.0"),)
# distributions pinned like torch: the Triton builds that torch wheels depend on
PINNED_WITH_TORCH = ("triton", "pytorch-triton", "pytorch-triton-rocm", "pytorch-triton-xpu")
# tests/test_fused_mlp.py runs the Triton kernel in Triton's CPU interpreter, which needs this
TRITON_INTERPRETER_MIN = "3.2"

PREFIX = "[install]"


class InstallError(RuntimeError):
    """A step failed; the message says what, and whether anything was changed."""


# --------------------------------------------------------------------------- pure functions


def canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def accelerate_spec(torch_version: str) -> str:
    """The accelerate range that accepts ``torch_version`` (peft needs accelerate)."""
    torch_v = Version(torch_version)
    upper = None
    for first_release, torch_floor in sorted(ACCELERATE_TORCH_FLOORS, key=lambda p: Version(p[0])):
        if torch_v < Version(torch_floor):
            upper = first_release
            break
    return f"accelerate>={ACCELERATE_MIN}" + (f",<{upper}" if upper else "")


def constraints_text(pinned: Mapping[str, str]) -> str:
    """The constraints file: one ``name==version`` line per installed torch/triton distribution."""
    lines = ["# written by python -m hpc.install: the installed torch and triton, never changed"]
    lines += [f"{name}=={version}" for name, version in sorted(pinned.items())]
    return "\n".join(lines) + "\n"


def project_target(root: Path, test: bool) -> str:
    return f"{root}[test]" if test else str(root)


def install_requirements(torch_version: str | None, test: bool, root: Path = ROOT,
                         torch_spec: str = DEFAULT_TORCH_SPEC) -> list[str]:
    """pip arguments that install the project and the torch-dependent picks."""
    args = ["-e", project_target(root, test), PEFT_SPEC]
    if torch_version is None:
        args.append(torch_spec)  # only in a dry run without torch: the torch the real run would install
        torch_version = torch_spec_version(torch_spec)
    if torch_version is not None:
        args.append(accelerate_spec(torch_version))
    return args


def torch_spec_version(spec: str) -> str | None:
    """The version an ``==`` torch spec names (``torch==2.13.0`` -> ``2.13.0``), else None."""
    try:
        req = Requirement(spec)
    except InvalidRequirement:
        return None
    pins = [s.version for s in req.specifier if s.operator in ("==", "===") and "*" not in s.version]
    return pins[0] if pins else None


def spec_admits(spec: str, version: str) -> bool:
    """Whether a requirement like ``torch==2.5.1`` admits an installed ``2.5.1+cu124``."""
    try:
        return Requirement(spec).specifier.contains(Version(version), prereleases=True)
    except (InvalidRequirement, InvalidVersion):
        return False


@dataclass
class Dist:
    version: str
    requires: list[str] = field(default_factory=list)


def unmet_requirements(roots: Iterable[str], dists: Mapping[str, Dist],
                       skip: Iterable[str] = ("colossalai",)) -> list[str]:
    """Requirements (and their requirements, recursively) that the installed ``dists`` do not meet.

    ``dists`` maps canonical names to installed distributions. Packages in ``skip`` are not descended
    into (ColossalAI is installed with --no-deps: its own pins are unmet by design).
    """
    unmet: list[str] = []
    seen: set[tuple[str, frozenset[str]]] = set()
    skipped = {canonical(s) for s in skip}
    stack: list[tuple[str, str | None]] = [(r, None) for r in roots]
    while stack:
        text, parent = stack.pop()
        try:
            req = Requirement(text)
        except InvalidRequirement:
            unmet.append(f"{text} (unparsable, from {parent})")
            continue
        if req.marker is not None and not _marker_holds(req.marker, parent_extras=_parent_extras(parent)):
            continue
        name = canonical(req.name)
        where = f" (required by {parent.split('|')[0]})" if parent else ""
        shown = req.name + (f"[{','.join(sorted(req.extras))}]" if req.extras else "") + str(req.specifier)
        dist = dists.get(name)
        if dist is None:
            unmet.append(f"{shown} not installed{where}")
            continue
        try:
            ok = req.specifier.contains(Version(dist.version), prereleases=True)
        except InvalidVersion:
            ok = False
        if not ok:
            unmet.append(f"{shown} but {req.name} {dist.version} is installed{where}")
            continue
        key = (name, frozenset(canonical(e) for e in req.extras))
        if key in seen or name in skipped:
            continue
        seen.add(key)
        tag = f"{name}|{','.join(sorted(key[1]))}"
        stack.extend((sub, tag) for sub in dist.requires)
    return unmet


def _parent_extras(parent: str | None) -> list[str]:
    if not parent or "|" not in parent:
        return []
    extras = parent.split("|", 1)[1]
    return [e for e in extras.split(",") if e]


def _marker_holds(marker: Marker, parent_extras: Sequence[str]) -> bool:
    # A requirement without an extra marker holds whatever extras are asked; one with
    # ``extra == "x"`` holds only when x was asked of its parent.
    if not parent_extras:
        return bool(marker.evaluate({"extra": ""}))
    return any(marker.evaluate({"extra": e}) for e in parent_extras)


def forbidden_changes(report: Mapping, pinned: Mapping[str, str]) -> list[str]:
    """Entries of a pip ``--report`` that would install a pinned distribution at another version."""
    bad = []
    for item in report.get("install", []):
        meta = item.get("metadata", {})
        name = canonical(meta.get("name", ""))
        if name in pinned and meta.get("version") != pinned[name]:
            bad.append(f"{name} {pinned[name]} -> {meta.get('version')}")
    return bad


def report_changes(report: Mapping, installed: Mapping[str, str]) -> list[str]:
    """``name old -> new`` / ``name new`` for each distribution a pip report installs."""
    out = []
    for item in report.get("install", []):
        meta = item.get("metadata", {})
        name, version = meta.get("name", "?"), meta.get("version", "?")
        old = installed.get(canonical(name))
        if old is None:
            out.append(f"{name} {version}")
        elif old != version:
            out.append(f"{name} {old} -> {version}")
        else:
            out.append(f"{name} {version} (reinstalled)")
    return out


KEY_PACKAGES = ("peft", "accelerate", "transformers", "datasets", "huggingface-hub", "triton", "torch")


def summarize_changes(changes: Sequence[str], limit: int = 8) -> str:
    """One line: every upgrade/downgrade and the key packages first, then a count of the rest."""
    def rank(change: str) -> tuple[int, int]:
        name = canonical(change.split()[0])
        key = KEY_PACKAGES.index(name) if name in KEY_PACKAGES else len(KEY_PACKAGES)
        return (0 if "->" in change else 1, key)
    ordered = sorted(changes, key=rank)
    shown = [c for c in ordered if "->" in c] or []
    shown += [c for c in ordered if "->" not in c][:max(0, limit - len(shown))]
    rest = len(changes) - len(shown)
    if not changes:
        return "no other package to change"
    return ", ".join(shown) + (f" and {rest} more (listed in the log)" if rest else "")


def report_versions(report: Mapping) -> dict[str, str]:
    return {canonical(i["metadata"]["name"]): i["metadata"]["version"] for i in report.get("install", [])}


_CONFLICT_LINE = re.compile(r"^(ERROR: Cannot install .*|ERROR: Could not find a version that satisfies .*|"
                            r"ERROR: No matching distribution found for .*)$")


def conflict_lines(pip_output: str) -> list[str]:
    """The lines of pip's output that say what conflicts (empty when it is no resolution error)."""
    lines = pip_output.splitlines()
    out: list[str] = []
    for i, line in enumerate(lines):
        if _CONFLICT_LINE.match(line.strip()):
            out.append(line.strip()[len("ERROR: "):])
        if line.strip() == "The conflict is caused by:":
            for follow in lines[i + 1:]:
                if not follow.startswith("    ") or not follow.strip():
                    break
                out.append("  " + follow.strip())
    return out


def conflict_message(torch_version: str | None, pinned: Mapping[str, str], pip_output: str) -> str:
    found = conflict_lines(pip_output)
    torch_text = f"the installed torch {torch_version}" if torch_version else "torch"
    others = ", ".join(f"{n} {v}" for n, v in sorted(pinned.items()) if n != "torch")
    head = (f"no set of packages fits {torch_text}" + (f" (with {others})" if others else "")
            + " and the project's requirements:")
    body = found or ["  (pip gave no conflict detail; see the log)"]
    tail = ("nothing was installed or changed; torch and triton are never upgraded or replaced: pick "
            "a requirement version that accepts this torch, or install another torch yourself")
    return "\n".join([head, *body, tail])


