"""A real Slurm cluster on this machine, for tests and `make demo`.

    python -m hpc.dev.cluster {install,start,stop,status} [--state-dir DIR]
        start [--nodes 2] [--cpus-per-node 4] [--mem-per-node 8000] [--gpus-per-node 2] [--timeout 90]

Ports mode: munged, mariadbd (unix socket only) + slurmdbd, slurmctld and one `slurmd -N nK` per node,
all on this host; nodes differ only by port, and have fake GPUs. Needs root (mknod, /etc/hosts,
daemons as root). Every daemon PID is recorded in the state dir (default /tmp/vit_slurm_dev, or
$VIT_DEVCLUSTER_DIR); `stop` kills exactly those. Python API: start(), stop(), is_running(), status().
Config text: hpc/devcluster_conf.py.
"""

from __future__ import annotations

import argparse
import fcntl
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from typing import NoReturn
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from functools import partial
from pathlib import Path

from hpc.dev import cluster_conf as conf
from hpc.dev.cluster_install import install, missing_packages  # noqa: F401  (used by main and tests)

# Clients (sbatch, sacct, submitit's calls to them) read /etc/slurm/slurm.conf unless SLURM_CONF is
# set, so the configs must live there, not in the state dir. slurmdbd.conf and gres.conf sit beside it.
SLURM_ETC = Path("/etc/slurm")
HOSTS_FILE = Path("/etc/hosts")
READY_STATES = {"idle", "mixed", "allocated", "completing"}  # responding nodes (no '*', down, drain)


@dataclass(frozen=True)
class ClusterInfo:
    state_dir: Path
    nodes: tuple[str, ...]
    partitions: tuple[str, ...]
    cpus_per_node: int
    mem_per_node: int  # MB
    gpus_per_node: int
    default_partition: str = "debug"


_state_dir = conf.state_dir
DEFAULT_STATE_DIR = conf.DEFAULT_STATE_DIR


# Without SLURM_* (e.g. SLURM_CONF, if run inside a job of another cluster): use our /etc/slurm.
_ENV = {k: v for k, v in os.environ.items() if not k.startswith("SLURM")}


def _run(cmd: list[str], timeout: float = 30, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cmd, capture_output=True, text=True, env=_ENV, timeout=timeout, check=check,
                          stdin=subprocess.DEVNULL)


def _ok(cmd: list[str], timeout: float = 10) -> bool:
    try:
        return _run(cmd, timeout=timeout, check=False).returncode == 0
    except subprocess.TimeoutExpired:  # e.g. sacctmgr retrying a slurmdbd that is not up yet
        return False


def _fail(what: str, log: Path) -> NoReturn:
    tail = log.read_text(errors="replace").splitlines()[-8:] if log.exists() else ["(no log)"]
    raise RuntimeError(f"dev cluster: {what}; see {log}:\n" + "\n".join(tail))


def _wait(pred: Callable[[], bool], deadline: float, what: str, log: Path) -> None:
    while not pred():
        if time.monotonic() > deadline:
            _fail(f"{what} not ready in time", log)
        time.sleep(0.1)


def _read_pid(path: Path) -> int | None:
    try:
        return int(path.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None


def _alive(pid: int, name: str | None = None) -> bool:
    """True if `pid` runs (and is the daemon `name`, e.g. slurmd-n1: guards against a recycled PID).
    All daemons fork away from us, so their zombies are reaped by PID 1, not here."""
    try:
        st, comm = Path(f"/proc/{pid}/stat").read_text(), Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:
        return False
    # A zombie counts as gone: PID 1 in these containers reaps orphans lazily (seconds later).
    return st.rsplit(")", 1)[1].split()[0] != "Z" and (name is None or comm == name.split("-")[0])


def recorded_pids(state_dir: str | Path | None = None) -> dict[str, int]:
    """{daemon name: pid} of the daemons we started, e.g. {'slurmd-n1': 123, 'munged': 45}."""
    pids = {f.stem: _read_pid(f) for f in sorted((_state_dir(state_dir) / "pids").glob("*.pid"))}
    return {name: pid for name, pid in pids.items() if pid}


@contextmanager
def _locked(sd: Path, timeout: float = 300) -> Iterator[None]:
    """Serialise start/stop between processes (e.g. pytest-xdist workers sharing one cluster)."""
    sd.mkdir(parents=True, exist_ok=True)
    sd.chmod(0o755)  # the mysql user must reach its log file below it
    with open(sd / "lock", "w") as fh:  # O_CLOEXEC (PEP 446): the daemons started below do not inherit it
        deadline = time.monotonic() + timeout
        while True:
            try:
                fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"dev cluster: {sd / 'lock'} held by another process for {timeout} s") from None
                time.sleep(0.2)
        yield


def _set_hosts(names: tuple[str, ...]) -> None:
    """Node names must resolve (scontrol show hostnames -> MASTER_ADDR); stop() removes the line."""
    if (new := conf.hosts_text(old := HOSTS_FILE.read_text(), names)) != old:
        # Rewrite in place: /etc/hosts is often a bind mount in containers, and renaming over it fails.
        with HOSTS_FILE.open("r+") as fh:
            fh.write(new)
            fh.truncate()


def _wait_nodes(nodes: tuple[str, ...], states: set[str], deadline: float, log: Path) -> None:
    def ready() -> bool:  # sinfo -N lists a node once per partition, in the same state
        rows = [ln.split() for ln in _run(["sinfo", "-h", "-N", "-o", "%N %T"], check=False).stdout.splitlines()]
        return all(dict(r[:2] for r in rows if len(r) == 2).get(n) in states for n in nodes)

    _wait(ready, deadline, f"nodes {nodes} {states}", log)


def _launch(lay: conf.Layout, name: str, cmd: list[str], pid_file: Path, deadline: float, log: Path,
            probe: Callable[[], bool] = lambda: True) -> None:
    """Run a daemon that forks into the background; once it wrote its PID and `probe` passes, record
    the PID. Fails at once if the daemon dies. Output goes to a file, never a pipe: a daemon keeping
    an inherited pipe open would make subprocess wait for EOF forever."""
    pid_file.unlink(missing_ok=True)  # one left by a killed daemon would look like ours died
    with open(lay.log_dir / f"{name}.out", "ab") as out:
        rc = subprocess.run(cmd, stdin=subprocess.DEVNULL, stdout=out, stderr=out, env=_ENV, timeout=30).returncode

    def up() -> bool:  # Slurm daemons may die (fatal: ...) before writing their pid file
        fatal = log.parent == lay.log_dir and log.exists() and "fatal:" in log.read_text(errors="replace")
        if rc != 0 or fatal or ((pid := _read_pid(pid_file)) is not None and not _alive(pid, name)):
            _fail(f"{name} exited (rc {rc})", log)
        return pid is not None and probe()

    _wait(up, deadline, name, log)
    (lay.state_dir / "pids" / f"{name}.pid").write_text(f"{_read_pid(pid_file)}\n")


def _start_munge_and_mariadb(lay: conf.Layout, deadline: float) -> None:
    conf.prepare_munge()
    log = conf.prepare_mariadb(lay)
    for name, probe, cmd, pid_file, name_log in (
            ("munged", partial(_ok, ["sh", "-c", "munge -n | unmunge"]), conf.munged_cmd(), conf.MUNGE_PID,
             Path("/var/log/munge/munged.log")),
            ("mariadbd", partial(_ok, ["mariadb-admin", f"--socket={conf.MYSQL_SOCKET}", "ping"]),
             conf.mariadbd_cmd(log), conf.MYSQL_PID, log)):
        if probe():  # all ours were stopped before a fresh start: this one is foreign; reuse it, never stop it
            print(f"devcluster: {name}: reusing the one already running (not ours; stop leaves it alone)")
        else:
            _launch(lay, name, cmd, pid_file, deadline, name_log, probe)


def _fresh_start(lay: conf.Layout, deadline: float) -> None:
    sd, logs = lay.state_dir, lay.log_dir
    # Fresh slurmctld state every time: no jobs or node states from an earlier run leak in. The
    # previous run's logs move to log.prev, so the error tails we print are this run's.
    for d in (sd / "ctld", sd / "spool", lay.run_dir, sd / "pids", sd / "log.prev"):
        shutil.rmtree(d, ignore_errors=True)
    if logs.exists():
        logs.rename(sd / "log.prev")
    for d in (sd / "ctld", lay.run_dir, sd / "pids", logs, SLURM_ETC):
        d.mkdir(parents=True, exist_ok=True)
    _set_hosts(lay.node_names)
    conf.write_configs(lay, SLURM_ETC)
    _start_munge_and_mariadb(lay, deadline)
    # slurmctld's job ids restart at 1 with fresh state: drop the old accounting too, or sacct would
    # mix this run's job 1 with an earlier run's job 1.
    _run(["mariadb", f"--socket={conf.MYSQL_SOCKET}", "-e", "DROP DATABASE IF EXISTS slurm_acct_db"])
    _launch(lay, "slurmdbd", ["/usr/sbin/slurmdbd"], lay.run_dir / "slurmdbd.pid", deadline, logs / "slurmdbd.log",
            lambda: _ok(["sacctmgr", "-n", "-P", "list", "cluster"]))
    _run(["sacctmgr", "-i", "add", "cluster", conf.CLUSTER_NAME])
    _launch(lay, "slurmctld", ["/usr/sbin/slurmctld", "-i", "-c"], lay.run_dir / "slurmctld.pid", deadline,
            logs / "slurmctld.log", lambda: "UP" in _run(["scontrol", "ping"], check=False).stdout)
    for node in lay.node_names:
        (sd / "spool" / f"slurmd-{node}").mkdir(parents=True)
        _launch(lay, f"slurmd-{node}", ["/usr/sbin/slurmd", "-N", node], lay.run_dir / f"slurmd-{node}.pid",
                deadline, logs / f"slurmd-{node}.log")
    _wait_nodes(lay.node_names, {"idle"}, deadline, logs / "slurmctld.log")


def _load_info(sd: Path) -> tuple[ClusterInfo, list[str]]:
    raw = json.loads((sd / "cluster.json").read_text())
    daemons = raw.pop("daemons")
    raw.update(state_dir=Path(raw["state_dir"]), nodes=tuple(raw["nodes"]), partitions=tuple(raw["partitions"]))
    return ClusterInfo(**raw), daemons


def is_running(state_dir: str | Path | None = None) -> bool:
    """Cheap: the cluster was started and every daemon we started is still alive."""
    sd = _state_dir(state_dir)
    try:
        _, daemons = _load_info(sd)
    except (OSError, ValueError, KeyError, TypeError):
        return False
    pids = recorded_pids(sd)
    return all(n in pids and _alive(pids[n], n) for n in daemons)


def start(*, nodes: int | None = None, cpus_per_node: int | None = None, mem_per_node: int | None = None,
          gpus_per_node: int | None = None, state_dir: str | Path | None = None,
          timeout: float = 90.0) -> ClusterInfo:
    """Start the cluster, or return at once if it runs already (then None options accept any value).
    Options left None get conf.DEFAULTS on a fresh start."""
    sd = _state_dir(state_dir)
    asked = {k: v for k, v in {"nodes": nodes, "cpus_per_node": cpus_per_node, "mem_per_node": mem_per_node,
                               "gpus_per_node": gpus_per_node}.items() if v is not None}
    if any(v < (0 if k == "gpus_per_node" else 1) for k, v in asked.items()):
        raise ValueError(f"dev cluster: bad sizes {asked}")
    deadline, prev = time.monotonic() + timeout, {}
    with _locked(sd):
        if is_running(sd):
            info, _ = _load_info(sd)
            prev = {k: len(info.nodes) if k == "nodes" else int(getattr(info, k)) for k in conf.DEFAULTS}
            if differ := {k: v for k, v in asked.items() if prev[k] != v}:
                raise RuntimeError(f"dev cluster runs already, with other settings than {differ}: stop it first")
            try:
                _wait_nodes(info.nodes, READY_STATES, min(deadline, time.monotonic() + 15), sd / "log/slurmctld.log")
                print(f"devcluster: already running: nodes {','.join(info.nodes)} ({sd})")
                return info
            except RuntimeError as exc:  # e.g. a node drained after a failed kill: a fresh start repairs it
                print(f"devcluster: running, but restarting it: {exc}")
        if os.geteuid() != 0:
            raise RuntimeError("dev cluster: start needs root (mknod, /etc/hosts, /etc/slurm, daemons as root)")
        if missing_packages():
            raise RuntimeError(f"dev cluster: missing {missing_packages()}: run `python -m hpc.dev.cluster install`")
        if recorded_pids(sd):
            _stop_locked(sd)  # leftovers of a crashed or half-started run
        lay = conf.Layout(sd, socket.gethostname().split(".")[0], **{**conf.DEFAULTS, **prev, **asked})
        try:
            _fresh_start(lay, deadline)
        except BaseException:
            _stop_locked(sd)  # leave no half-started daemons behind; the logs stay for debugging
            raise
        info = ClusterInfo(sd, lay.node_names, conf.PARTITIONS, lay.cpus_per_node, lay.mem_per_node,
                           lay.gpus_per_node)
        (sd / "cluster.json").write_text(json.dumps({**asdict(info), "state_dir": str(sd),
                                                     "daemons": sorted(recorded_pids(sd))}, indent=1))
        print(f"devcluster: ready: nodes {lay.nodelist} x {lay.cpus_per_node} CPUs, {lay.gpus_per_node} GPUs ({sd})")
        return info


def our_stepds(state_dir: str | Path | None = None) -> set[int]:
    """slurmstepd processes of our cluster, with all their descendants (the job's processes).
    A step outlives its slurmd, so stop() must find them itself. Not by environment (slurmstepd's
    setproctitle overwrites /proc/PID/environ) but by the slurmd log file they inherit as an open fd."""
    root, ppid, found = str(_state_dir(state_dir)) + "/", {}, set()
    for p in Path("/proc").glob("[0-9]*"):
        try:
            ppid[int(p.name)] = int((p / "stat").read_text().rsplit(")", 1)[1].split()[1])
            if (p / "comm").read_text().strip() == "slurmstepd" and any(
                    os.readlink(fd).startswith(root) for fd in (p / "fd").iterdir()):
                found.add(int(p.name))
        except (OSError, ValueError, IndexError):
            continue
    while new := {pid for pid, parent in ppid.items() if parent in found and pid not in found}:
        found |= new
    return found


def _kill(pids: set[int], timeout: float, sigs: tuple[int, ...] = (signal.SIGTERM, signal.SIGKILL)) -> None:
    """Send each signal in turn to what is still alive, waiting up to `timeout` s after each."""
    for sig in sigs:
        for pid in (pids := {p for p in pids if _alive(p)}):
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass
        deadline = time.monotonic() + timeout
        while any(_alive(p) for p in pids) and time.monotonic() < deadline:
            time.sleep(0.1)


def _terminate(sd: Path, names: list[str], timeout: float = 15) -> None:
    """Stop the recorded daemons `names` together: TERM, wait, then KILL."""
    _kill({p for n, p in recorded_pids(sd).items() if n in names and _alive(p, n)}, timeout)
    for name in names:
        (sd / "pids" / f"{name}.pid").unlink(missing_ok=True)


def _stop_locked(sd: Path) -> None:
    pids = recorded_pids(sd)
    (sd / "cluster.json").unlink(missing_ok=True)
    if "slurmctld" in pids and _alive(pids["slurmctld"], "slurmctld"):
        # Cancel first, so each slurmd still kills its steps' processes the normal way.
        if jobs := _run(["squeue", "-h", "-o", "%A"], check=False).stdout.split():
            _run(["scancel", *jobs], check=False)
            deadline = time.monotonic() + 30  # KillWait=5: completing jobs take a few seconds
            while _run(["squeue", "-h"], check=False).stdout.strip() and time.monotonic() < deadline:
                time.sleep(0.2)
    _terminate(sd, [n for n in pids if n.startswith("slurmd-")] + ["slurmctld"])
    if leftover := our_stepds(sd):
        print(f"devcluster: killing leftover slurmstepd/job processes {sorted(leftover)}")
        _kill(leftover, 10, (signal.SIGKILL,))
    _terminate(sd, ["slurmdbd"])  # after slurmctld, which sends it the last job records
    _terminate(sd, ["mariadbd", "munged"], timeout=30)  # mariadbd flushes InnoDB on TERM
    if os.geteuid() == 0:
        _set_hosts(())
    # PID 1 here reaps orphaned zombies only every second or so: wait (bounded) until `ps` shows none.
    deadline = time.monotonic() + 5
    while any(Path(f"/proc/{p}").exists() for p in pids.values()) and time.monotonic() < deadline:
        time.sleep(0.1)


def stop(*, state_dir: str | Path | None = None) -> None:
    """Cancel all jobs and stop every daemon we started. Harmless when nothing runs."""
    sd = _state_dir(state_dir)
    if sd.exists():
        with _locked(sd):
            _stop_locked(sd)
    print("devcluster: stopped")


def status(state_dir: str | Path | None = None) -> str:
    """Each recorded daemon up/DOWN, and sinfo while slurmctld is up."""
    sd = _state_dir(state_dir)
    pids = recorded_pids(sd)
    lines = [f"state dir {sd}: {'running' if is_running(sd) else 'not running'}"]
    lines += [f"  {n:<12} pid {p:<8} {'up' if _alive(p, n) else 'DOWN'}" for n, p in pids.items()]
    if "slurmctld" in pids and _alive(pids["slurmctld"], "slurmctld"):
        lines.append(_run(["sinfo", "-N", "-o", "%N %P %T %c %m %G"], check=False).stdout.rstrip())
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--state-dir", help=f"default $VIT_DEVCLUSTER_DIR or {DEFAULT_STATE_DIR}")
    parser = argparse.ArgumentParser(prog="python -m hpc.dev.cluster", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="cmd", required=True)
    sub.add_parser("install", parents=[common], help="apt-get install the daemons if missing")
    p = sub.add_parser("start", parents=[common], help="start the cluster (no-op if it runs)")
    sub.add_parser("stop", parents=[common], help="cancel all jobs, stop our daemons")
    sub.add_parser("status", parents=[common], help="daemons and sinfo; exit status 3 if not running")
    for opt, what in (("nodes", ""), ("cpus-per-node", ""), ("mem-per-node", "MB, "), ("gpus-per-node", "fake, ")):
        p.add_argument(f"--{opt}", type=int, help=f"{what}default {conf.DEFAULTS[opt.replace('-', '_')]}")
    p.add_argument("--timeout", type=float, default=90.0, help="seconds, default 90")
    args, t0 = parser.parse_args(argv), time.monotonic()
    try:
        if args.cmd == "install":
            install(args.state_dir)
        elif args.cmd == "start":
            start(**{k: getattr(args, k) for k in conf.DEFAULTS}, state_dir=args.state_dir, timeout=args.timeout)
        elif args.cmd == "stop":
            stop(state_dir=args.state_dir)
    except (RuntimeError, ValueError, subprocess.SubprocessError) as exc:
        print(f"devcluster {args.cmd}: error: {exc}", file=sys.stderr)
        return 1
    if args.cmd in ("start", "stop"):
        print(f"devcluster {args.cmd}: {time.monotonic() - t0:.1f} s")
    if args.cmd in ("start", "status"):
        print(status(args.state_dir))
    return 3 if args.cmd == "status" and not is_running(args.state_dir) else 0


if __name__ == "__main__":
    sys.exit(main())
