"""Install the project's Python packages without ever changing an installed torch or triton.

``python -m hpc.install [--test] [--torch-spec SPEC] [--log FILE] [--dry-run]`` (``make install-python``
runs it with ``--test``):

1. reads the installed torch and triton versions with importlib.metadata (torch is never imported);
   when no torch is installed it installs ``--torch-spec`` (default ``torch==2.13.0``);
2. writes a pip constraints file pinning ``torch==<installed>`` and ``triton==<installed>``, so no
   later pip step can upgrade, downgrade or reinstall either;
3. picks the peft and accelerate ranges that fit that torch and ColossalAI 0.5.0 (peft <= 0.13.2,
   ColossalAI's own pin; accelerate < 1.16 below torch 2.6, since accelerate 1.16 needs torch >= 2.6);
4. installs ``colossalai==0.5.0`` with ``--no-deps --no-build-isolation`` when it is absent (its own
   pins, torch<=2.5.1 and heavy extras, would replace the user's torch);
5. resolves the project (``-e .`` or ``-e .[test]``) under the constraints with
   ``pip install --dry-run --report``; a conflict stops here, naming the installed torch and the
   requirement that does not fit it, with nothing changed; then installs it.

One line per step goes to stdout; every pip command and its output go to a log file whose path is
printed (default ``.install/<environment>/install.log`` in the repository, or under
``$XDG_CACHE_HOME`` when the repository is not writable). A second run when everything fits reads
installed metadata only and runs no pip at all.

Standard library only, plus the ``packaging`` library that pip vendors (version and marker logic),
so it runs before anything is installed.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from hpc.install_env import (  # noqa: F401  (tests use them through this module)
    Log,
    default_state_dir,
    editable_source,
    installed_dists,
    project_requirements,
    resolve,
    run_pip,
)
from hpc.install_rules import (  # noqa: F401  (the names tests and the steps use)
    ACCELERATE_MIN,
    COLOSSALAI_VERSION,
    DEFAULT_TORCH_SPEC,
    PEFT_SPEC,
    PINNED_WITH_TORCH,
    PREFIX,
    PROJECT,
    ROOT,
    TRITON_INTERPRETER_MIN,
    Dist,
    InstallError,
    KEY_PACKAGES,
    Requirement,
    SpecifierSet,
    Version,
    accelerate_spec,
    canonical,
    conflict_lines,
    conflict_message,
    constraints_text,
    forbidden_changes,
    install_requirements,
    project_target,
    report_changes,
    report_versions,
    spec_admits,
    summarize_changes,
    torch_spec_version,
    unmet_requirements,
)

# --------------------------------------------------------------------------- the steps


def say(text: str) -> None:
    print(f"{PREFIX} {text}", flush=True)


@dataclass
class Installer:
    test: bool
    torch_spec: str
    state_dir: Path
    log: Log
    dry_run: bool = False
    python: str = sys.executable
    root: Path = ROOT
    echo: Callable[[str], None] = say

    @property
    def constraints(self) -> Path:
        return self.state_dir / "constraints.txt"

    def pip(self, args: Sequence[str], what: str) -> str:
        code, out = run_pip(self.python, args, self.log, cwd=self.root)
        if code != 0:
            raise InstallError(f"{what} failed (pip exit {code})")
        return out

    def step_torch(self) -> str | None:
        dists = installed_dists()
        torch = dists.get("torch")
        if torch is not None:
            note = ""
            if self.torch_spec != DEFAULT_TORCH_SPEC and not spec_admits(self.torch_spec, torch.version):
                note = f" (--torch-spec {self.torch_spec} is only used when no torch is installed)"
            self.echo(f"torch {torch.version} kept{note}")
            return torch.version
        if self.dry_run:
            self.echo(f"torch not installed: would install {self.torch_spec}")
            return None
        t0 = time.monotonic()
        self.pip(["install", self.torch_spec], f"installing {self.torch_spec}")
        version = installed_dists().get("torch")
        if version is None:
            raise InstallError(f"pip installed {self.torch_spec} but no torch is found afterwards")
        self.echo(f"torch {version.version} installed ({self.torch_spec}, {time.monotonic() - t0:.0f} s)")
        return version.version

    def pinned(self) -> dict[str, str]:
        dists = installed_dists()
        return {name: dists[name].version for name in ("torch", *PINNED_WITH_TORCH) if name in dists}

    def step_constraints(self, pinned: Mapping[str, str]) -> None:
        for name in PINNED_WITH_TORCH:
            if name in pinned:
                note = ""
                if (self.test and name == "triton"
                        and Version(pinned[name]) < Version(TRITON_INTERPRETER_MIN)):
                    note = (f" (the Triton-interpreter test in tests/test_fused_mlp.py needs triton>="
                            f"{TRITON_INTERPRETER_MIN}; it will fail with this one)")
                self.echo(f"{name} {pinned[name]} kept{note}")
        text = constraints_text(pinned)  # our own state file: written in a dry run too (pip reads it)
        self.state_dir.mkdir(parents=True, exist_ok=True)
        if not self.constraints.exists() or self.constraints.read_text() != text:
            self.constraints.write_text(text)
        pins = ", ".join(f"{n}=={v}" for n, v in sorted(pinned.items())) or "nothing installed to pin"
        self.echo(f"constraints {self._rel(self.constraints)}: {pins}")

    def step_build_tools(self) -> None:
        # colossalai is an sdist built with --no-build-isolation: its setup.py needs setuptools
        # (and wheel for setuptools < 70.1) in this environment.
        dists = installed_dists()
        need = []
        if "setuptools" not in dists:
            need.append("setuptools")
        elif Version(dists["setuptools"].version) < Version("70.1") and "wheel" not in dists:
            need.append("wheel")
        if not need:
            return
        if self.dry_run:
            self.echo(f"would install {', '.join(need)} (to build colossalai)")
            return
        self.pip(["install", "-c", str(self.constraints), *need], f"installing {' '.join(need)}")
        self.echo(f"{', '.join(need)} installed (to build colossalai)")

    def step_colossalai(self) -> None:
        have = installed_dists().get("colossalai")
        if have is not None and have.version == COLOSSALAI_VERSION:
            self.echo(f"colossalai {have.version} kept")
            return
        what = "absent" if have is None else f"{have.version} installed"
        if self.dry_run:
            self.echo(f"colossalai {what}: would install colossalai=={COLOSSALAI_VERSION} --no-deps")
            return
        self.step_build_tools()
        t0 = time.monotonic()
        self.pip(["install", "--no-deps", "--no-build-isolation", "-c", str(self.constraints),
                  f"colossalai=={COLOSSALAI_VERSION}"], f"installing colossalai=={COLOSSALAI_VERSION}")
        self.echo(f"colossalai {COLOSSALAI_VERSION} installed ({what} before; --no-deps, "
                  f"{time.monotonic() - t0:.0f} s)")

    def project_unmet(self, torch_version: str | None) -> list[str]:
        """Why the project is not installed as asked (empty: nothing to do). Metadata only."""
        version, reqs = project_requirements(self.root, self.test)
        dists = installed_dists()
        problems = []
        have = dists.get(PROJECT)
        source = editable_source()
        if have is None:
            problems.append(f"{PROJECT} not installed")
        elif have.version != version:
            problems.append(f"{PROJECT} {have.version} installed, pyproject.toml says {version}")
        elif source is None or Path(source).resolve() != self.root.resolve():
            problems.append(f"{PROJECT} not installed editable from {self.root}")
        roots = [*reqs, PEFT_SPEC]
        if torch_version is not None:
            roots.append(accelerate_spec(torch_version))
        problems += unmet_requirements(roots, dists)
        return list(dict.fromkeys(problems))

    def step_project(self, torch_version: str | None, pinned: Mapping[str, str]) -> None:
        extra = "[test]" if self.test else ""
        problems = self.project_unmet(torch_version) if torch_version is not None else ["no torch yet"]
        if not problems:
            self.echo(f"{PROJECT}{extra} and its requirements already fit torch {torch_version}; "
                      "nothing to install")
            return
        self.log.write("to install because:\n" + "".join(f"  {p}\n" for p in problems))
        reqs = install_requirements(torch_version, self.test, self.root, self.torch_spec)
        t0 = time.monotonic()
        report_path = self.state_dir / "resolution.json"
        try:
            report = resolve(self.python, self.constraints, reqs, report_path, self.log, cwd=self.root)
        except InstallError as exc:
            raise InstallError(conflict_message(torch_version, pinned, str(exc))) from None
        bad = forbidden_changes(report, pinned)
        if bad:  # cannot happen under the constraints; checked so that it never goes unnoticed
            raise InstallError(f"pip would change {', '.join(bad)}; nothing was installed or changed")
        installed = {n: d.version for n, d in installed_dists().items()}
        changes = [c for c in report_changes(report, installed) if not c.startswith(PROJECT)]
        self.log.write("the resolution installs:\n" + "".join(f"  {c}\n" for c in changes))
        self.echo(f"resolved {PROJECT}{extra} under the constraints in {time.monotonic() - t0:.0f} s: "
                  + summarize_changes(changes))
        if self.dry_run:
            self.echo(f"dry run: nothing installed (pip report: {self._rel(report_path)})")
            return
        t0 = time.monotonic()
        self.pip(["install", "-c", str(self.constraints), *reqs], f"installing {PROJECT}{extra}")
        self.echo(f"{PROJECT}{extra} installed ({time.monotonic() - t0:.0f} s)")

    def step_verify(self, pinned: Mapping[str, str], torch_version: str | None) -> None:
        after = self.pinned()
        changed = [f"{n} {v} -> {after.get(n, 'removed')}" for n, v in pinned.items() if after.get(n) != v]
        if changed:
            raise InstallError(f"torch/triton changed during the install: {', '.join(changed)}")
        if self.dry_run or torch_version is None:
            return
        left = self.project_unmet(torch_version)
        if left:  # pip was content; this check reads metadata its own way. Say so, do not fail.
            self.echo("warning: pip finished but this check still finds unmet (the next run will call "
                      "pip again): " + "; ".join(left))

    def run(self) -> None:
        t0 = time.monotonic()
        self.echo(f"python {sys.version.split()[0]} at {sys.prefix}; log: {self.log.path}")
        torch_version = self.step_torch()
        pinned = self.pinned()
        self.step_constraints(pinned)
        target = torch_version or torch_spec_version(self.torch_spec)
        if target is not None:
            self.echo(f"picked {PEFT_SPEC} (ColossalAI {COLOSSALAI_VERSION}) and {accelerate_spec(target)}"
                      f" (torch {target})")
        self.step_colossalai()
        self.step_project(torch_version, pinned)
        self.step_verify(pinned, torch_version)
        dists = installed_dists()
        versions = ", ".join(f"{n} {dists[n].version}" for n in ("torch", "colossalai", "transformers", "peft",
                                                                  "accelerate") if n in dists)
        self.echo(f"{'dry run done' if self.dry_run else 'done'} in {time.monotonic() - t0:.1f} s: {versions}")

    def _rel(self, path: Path) -> str:
        try:
            return str(path.relative_to(Path.cwd()))
        except ValueError:
            return str(path)


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m hpc.install", description=__doc__.split("\n\n")[0])
    ap.add_argument("--test", action="store_true", help="also install the test extra (pytest, hypothesis, triton...)")
    ap.add_argument("--torch-spec", default=os.environ.get("TORCH_SPEC") or DEFAULT_TORCH_SPEC,
                    help="the torch to install when none is installed (default %(default)s); "
                         "an installed torch is always kept")
    ap.add_argument("--log", type=Path, default=None, help="log file (default .install/<env>/install.log)")
    ap.add_argument("--dry-run", action="store_true", help="resolve and print what would change; change nothing")
    ap.add_argument("--state-dir", type=Path, default=None,
                    help="where the constraints file and pip's report go (default .install/<env>/)")
    args = ap.parse_args(argv)
    state_dir = (args.state_dir or default_state_dir()).resolve()
    log = Log((args.log or state_dir / "install.log").resolve())
    inst = Installer(test=args.test, torch_spec=args.torch_spec, state_dir=state_dir, log=log,
                     dry_run=args.dry_run)
    try:
        inst.run()
    except InstallError as exc:
        print(f"{PREFIX} FAILED: {exc}", file=sys.stderr)
        print(f"{PREFIX} last lines of {log.path}:", file=sys.stderr)
        print("\n".join("    " + line for line in log.tail().splitlines()), file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
