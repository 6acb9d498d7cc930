"""Install the dev cluster's Debian packages (Slurm, munge, MariaDB) when a binary is missing.

apt's and dpkg's progress goes to a log file; the terminal gets one line (``make install-slurm``).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from pathlib import Path

from hpc.dev import cluster_conf as conf


def missing_packages() -> list[str]:  # /usr/sbin is often not on a non-root PATH
    return sorted({pkg for binary, pkg in conf.BINARIES.items()
                   if not (shutil.which(binary) or shutil.which(binary, path="/usr/sbin:/usr/bin:/sbin:/bin"))})


def install(state_dir: str | Path | None = None) -> None:
    """apt-get install the Debian packages if any binary is missing (needs root then).

    apt's and dpkg's progress goes to <state dir>/log/install.log; the terminal gets one line, or on
    a failure the command that failed and the log's tail (a RuntimeError)."""
    if not (missing := missing_packages()):
        print("devcluster install: slurm, munge and mariadb are installed")
        return
    if os.geteuid() != 0:
        raise SystemExit(f"devcluster install: needs root to install the Debian packages {' '.join(missing)}; "
                         f"run as root: apt-get install --no-install-recommends {' '.join(conf.PACKAGES)}")
    if shutil.which("apt-get") is None:  # not Debian/Ubuntu: say what to install instead of a traceback
        raise SystemExit(f"devcluster install: no apt-get on PATH; the dev cluster uses Debian's packages "
                         f"({' '.join(conf.PACKAGES)}): install their equivalents (Slurm 22+ with slurmdbd, munge, "
                         f"MariaDB) with this system's package manager, or run on Debian/Ubuntu")
    log = conf.state_dir(state_dir) / "log" / "install.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    t0 = time.monotonic()
    print(f"devcluster install: apt-get install {' '.join(conf.PACKAGES)} (log {log}) ...", end="", flush=True)
    with open(log, "w") as fh:
        for cmd in (["apt-get", "update", "-q"], ["apt-get", "install", "-y", "-q", "--no-install-recommends", *conf.PACKAGES]):
            fh.write(f"$ {' '.join(cmd)}\n")
            fh.flush()
            rc = subprocess.run(cmd, env=env, stdin=subprocess.DEVNULL, stdout=fh, stderr=subprocess.STDOUT).returncode
            if rc != 0:
                print(" failed", flush=True)
                tail = log.read_text(errors="replace").splitlines()[-20:]
                raise RuntimeError(f"`{' '.join(cmd)}` exited {rc}; last lines of {log}:\n" + "\n".join(tail))
    if still := missing_packages():
        print(" failed", flush=True)
        raise RuntimeError(f"still missing {still} after apt-get install; see {log}")
    print(f" done in {time.monotonic() - t0:.0f} s", flush=True)
