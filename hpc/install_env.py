"""The installer's view of the environment: installed distributions (metadata only, nothing is
imported), the project's own requirements, where state and logs go, and pip runs with their output
sent to the log. :mod:`hpc.install` runs the steps.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.metadata as md
import json
import os
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from urllib.parse import unquote

from hpc.install_rules import PROJECT, ROOT, Dist, InstallError, canonical


def installed_dists(path: Sequence[str] | None = None) -> dict[str, Dist]:
    """Installed distributions of this interpreter by canonical name (the first on sys.path wins).

    The repository's own ``*.egg-info`` (found through the current directory) is not an install.
    """
    importlib.invalidate_caches()
    search = [p for p in (sys.path if path is None else path)
              if p and Path(p).resolve() != ROOT]
    out: dict[str, Dist] = {}
    for dist in md.distributions(path=search):
        name = dist.metadata["Name"]
        if not name or canonical(name) in out:
            continue
        out[canonical(name)] = Dist(dist.version, list(dist.requires or []))
    return out


def editable_source(path: Sequence[str] | None = None) -> str | None:
    """The folder the project is installed from, when installed editable (else None)."""
    search = [p for p in (sys.path if path is None else path) if p and Path(p).resolve() != ROOT]
    for dist in md.distributions(path=search):
        if canonical(dist.metadata["Name"] or "") != PROJECT:
            continue
        raw = dist.read_text("direct_url.json")
        if not raw:
            return None
        info = json.loads(raw)
        if not info.get("dir_info", {}).get("editable"):
            return None
        url = info.get("url", "")
        return unquote(url[len("file://"):]) if url.startswith("file://") else url
    return None


def project_requirements(root: Path, test: bool) -> tuple[str, list[str]]:
    """The project's version and requirements as pyproject.toml says now."""
    try:
        import tomllib
    except ImportError:  # Python 3.10
        from pip._vendor import tomli as tomllib  # type: ignore[no-redef]
    data = tomllib.loads((root / "pyproject.toml").read_text())
    project = data["project"]
    reqs = list(project.get("dependencies", []))
    if test:
        reqs += project.get("optional-dependencies", {}).get("test", [])
    return project["version"], reqs


def default_state_dir(prefix: str = sys.prefix) -> Path:
    tag = f"{Path(prefix).name}-{hashlib.sha1(prefix.encode()).hexdigest()[:8]}"
    repo_dir = ROOT / ".install"
    try:
        repo_dir.mkdir(exist_ok=True)
        if os.access(repo_dir, os.W_OK):
            return repo_dir / tag
    except OSError:
        pass
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return cache / "vit-slurm-toolkit" / "install" / tag


class Log:
    """The log file: every command and its full output; ``tail()`` gives this run's last lines."""

    def __init__(self, path: Path) -> None:
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        self._fh = path.open("a", encoding="utf-8")
        self._start = self._fh.tell()
        self.write(f"===== {time.strftime('%Y-%m-%d %H:%M:%S')} {sys.executable} -m hpc.install "
                   f"{' '.join(sys.argv[1:])}\n")

    def write(self, text: str) -> None:
        self._fh.write(text)
        self._fh.flush()

    def tail(self, n: int = 25) -> str:
        with self.path.open(encoding="utf-8", errors="replace") as fh:
            fh.seek(self._start)
            return "\n".join(fh.read().splitlines()[-n:])


def run_pip(python: str, args: Sequence[str], log: Log | None, cwd: Path = ROOT) -> tuple[int, str]:
    cmd = [python, "-m", "pip", *args]
    env = dict(os.environ, PIP_DISABLE_PIP_VERSION_CHECK="1", PIP_NO_INPUT="1", PIP_PROGRESS_BAR="off")
    if log:
        log.write(f"$ {' '.join(cmd)}\n")
    t0 = time.monotonic()
    proc = subprocess.run(cmd, check=False, cwd=cwd, env=env, stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, text=True)
    if log:
        log.write(proc.stdout)
        log.write(f"# exit {proc.returncode} after {time.monotonic() - t0:.1f} s\n")
    return proc.returncode, proc.stdout


def resolve(python: str, constraints: Path, requirements: Sequence[str], report: Path,
            log: Log | None = None, cwd: Path = ROOT) -> dict:
    """``pip install --dry-run --report`` under the constraints: what pip would install, changing
    nothing. Raises InstallError with pip's output when there is no resolution."""
    code, out = run_pip(python, ["install", "--dry-run", "--report", str(report), "-c", str(constraints),
                                 *requirements], log, cwd=cwd)
    if code != 0:
        raise InstallError(out)
    return json.loads(report.read_text())


