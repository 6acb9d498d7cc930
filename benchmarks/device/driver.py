"""Steps of one device call (not project code). Started by benchmarks/device/run.sh after
provision.sh; see benchmarks/README.md.

    run.sh [--dry-run] [--out DIR] [--budget S] STEP [ARGS...] [-- STEP [ARGS...]]...

A step is TYPE or TYPE:NAME; its files go to OUT/NAME/ (NAME defaults to TYPE, then TYPE-2, ...),
its output to OUT/NAME/log.txt. Steps are separated by a lone ``--`` (so their own arguments
cannot contain one). OUT defaults to $OUT (the device tool's folder). OUT/run.json records the
date, the exact command, the device, the versions, and each step's commands, exit codes and times.

Types:
  bench [ARGS]      python3 -m vit_train.bench ARGS --out OUT/NAME
  cli [OPTS] [--dotted.flag V ...]
                    timed fine-tunes (benchmarks/device/timed_cli.py) of `python3 -m vit_train` on the
                    synthetic reference set (1,034 train / 133 validation images at 224 px);
                    OPTS: --plugin P (gemini also sets --optim.optimizer hybrid_adam) --batch-size N
                    --epochs N --lr X --model M --repeat N --timeout S --fresh-cache; other flags go
                    to the CLI unchanged (later ones win). Writes OUT/NAME/cli.jsonl.
  grid [OPTS]       the reference grid's points (grids/beans_seed.yaml: gemini + HybridAdam, 5 epochs,
                    batch 8/16/32 x lr 1e-4/2e-4/5e-4, weight decay 0.5, warm-up 0.3, seed 42) on the
                    synthetic set with the vit_b16 preset, each a timed CLI run, one after another or
                    with --concurrent all at once; --batch-sizes a,b --lrs x,y, and the cli OPTS.
                    Writes OUT/NAME/grid.jsonl and the wall time in run.json.
  kernels [OPTS]    TORCH_CUDA_ARCH_LIST=9.0 python3 submit.py kernels --cache DIR (DIR: --cache, default
                    /tmp/vt-kernels; --arch A; other options to submit.py). Later steps get
                    VIT_TRAIN_KERNEL_CACHE=DIR; the built *.so are also copied into colossalai/_C (where
                    bench workers, which do not read that variable, import prebuilt kernels first);
                    --save copies them to OUT/NAME/ too, to carry as .kernels/ next time.
  script PATH [ARGS]
                    python3 PATH ARGS (bash for *.sh), from the repository root, with STEP_OUT=OUT/NAME;
                    for check and exploration scripts (e.g. benchmarks/device/explore.py).

--dry-run prints the commands and the run.json it would write, and runs nothing. --budget S starts no
step after S seconds (counted from run.sh's start, provisioning included) and gives each command at most the time left (the device tool allows 600 s a
command). Where OUT would hold more than 8 files at the end (what the device tool brings back), the
step folders are packed into OUT/steps.tar.gz, leaving run.json and setup.log beside it.
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tarfile
import time
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
HERE = Path(__file__).resolve().parent
TYPES = ("bench", "cli", "grid", "kernels", "script")
NAME_RE = re.compile(r"^[A-Za-z0-9._-]+$")
MAX_FILES_BACK = 8  # the device tool brings back at most 8 files from $OUT

DATA_DIR = "/tmp/vt-data/beans224"
DATA_CMD = ["python3", "-m", "vit_train.synthetic", DATA_DIR, "--num-train", "1034", "--num-validation", "133",
            "--image-size", "224"]
DATA_CACHE = "/tmp/vtcache"
CLI_BASE = {"--model.name": "vit_b16", "--data.dataset": DATA_DIR, "--data.cache_dir": DATA_CACHE,
            "--optim.epochs": "5", "--optim.batch_size": "32", "--precision": "bf16"}
GRID_BASE = {"--parallel.plugin": "gemini", "--optim.optimizer": "hybrid_adam", "--optim.weight_decay": "0.5",
             "--optim.warmup_ratio": "0.3", "--seed": "42"}
GRID_BATCH_SIZES, GRID_LRS = "8,16,32", "1e-4,2e-4,5e-4"


class UsageError(Exception):
    pass


@dataclass
class Command:
    argv: list[str]
    env: dict[str, str] = field(default_factory=dict)  # added to the environment
    timeout: float | None = None
    group: int = 0  # commands of one group > 0 with concurrent=True start together
    concurrent: bool = False
    note: str = ""

    def shell(self) -> str:
        env = " ".join(f"{k}={shlex.quote(v)}" for k, v in self.env.items())
        cmd = shlex.join(self.argv)
        t = f"timeout {self.timeout:g} " if self.timeout else ""
        return (env + " " if env else "") + t + cmd + (f"   # {self.note}" if self.note else "")


@dataclass
class Step:
    type: str
    name: str
    args: list[str]
    commands: list[Command] = field(default_factory=list)
    internal: list[str] = field(default_factory=list)  # work the driver does itself (described)
    exports: dict[str, str] = field(default_factory=dict)  # environment for the steps after it
    kernel_install: dict | None = None
    grid_parts: list[Path] = field(default_factory=list)


# ------------------------------------------------------------------------------------------ parsing
def parse(argv: list[str]) -> tuple[dict, list[Step]]:
    opts = {"dry_run": False, "out": os.environ.get("OUT"), "budget": 0.0, "validate": False}
    i = 0
    while i < len(argv) and argv[i].startswith("-") and argv[i] != "--":
        a = argv[i]
        if a == "--dry-run":
            opts["dry_run"] = True
        elif a == "--validate":
            opts["validate"] = True
        elif a == "--no-provision":
            pass  # run.sh's option
        elif a in ("--out", "--budget"):
            if i + 1 >= len(argv):
                raise UsageError(f"{a} needs a value")
            opts[a[2:]] = argv[i + 1] if a == "--out" else float(argv[i + 1])
            i += 1
        elif a in ("-h", "--help"):
            print(__doc__)
            sys.exit(0)
        else:
            raise UsageError(f"unknown driver option {a} (driver options come before the first step)")
        i += 1
    groups: list[list[str]] = [[]]
    for a in argv[i:]:
        if a == "--":
            groups.append([])
        else:
            groups[-1].append(a)
    groups = [g for g in groups if g]
    if not groups:
        raise UsageError("no step given; types: " + ", ".join(TYPES))
    if opts["out"] is None:
        if not opts["dry_run"]:
            raise UsageError("no output folder: $OUT is unset; give --out DIR")
        opts["out"] = "/tmp/out"
    out = Path(opts["out"])
    steps, used = [], set()
    for g in groups:
        head, args = g[0], g[1:]
        typ, _, name = head.partition(":")
        if typ not in TYPES:
            raise UsageError(f"unknown step {head!r}; types: {', '.join(TYPES)}")
        if not name:
            name, k = typ, 2
            while name in used:
                name, k = f"{typ}-{k}", k + 1
        if not NAME_RE.match(name) or name in used or name in ("run.json", "setup.log", "steps.tar.gz"):
            raise UsageError(f"step name {name!r}: letters, digits, '.', '_', '-' only, and each name once")
        used.add(name)
        step = Step(typ, name, args)
        BUILDERS[typ](step, out / name)
        steps.append(step)
    return opts, steps


def _take(args: list[str], flag: str, default: str | None = None, has_value: bool = True) -> str | None:
    """Remove ``flag [value]`` (or ``flag=value``) from args; return its value (last one wins)."""
    val, i = default, 0
    while i < len(args):
        a = args[i]
        if a == flag:
            if not has_value:
                val = "1"
                del args[i]
                continue
            if i + 1 >= len(args):
                raise UsageError(f"{flag} needs a value")
            val = args[i + 1]
            del args[i:i + 2]
            continue
        if has_value and a.startswith(flag + "="):
            val = a.split("=", 1)[1]
            del args[i]
            continue
        i += 1
    return val


def build_bench(step: Step, d: Path) -> None:
    if any(a == "--out" or a.startswith("--out=") for a in step.args):
        raise UsageError(f"{step.name}: the driver sets --out ({d})")
    step.commands.append(Command(["python3", "-m", "vit_train.bench", *step.args, "--out", str(d)]))


def _cli_flags(args: list[str], base: dict[str, str]) -> tuple[list[str], dict]:
    """The cli/grid options: returns (CLI flags, driver settings); the rest of args go to the CLI."""
    a = list(args)
    s = {"repeat": int(_take(a, "--repeat", "1")), "timeout": float(_take(a, "--timeout", "300")),
         "fresh_cache": _take(a, "--fresh-cache", None, has_value=False) is not None,
         "concurrent": _take(a, "--concurrent", None, has_value=False) is not None,
         "batch_sizes": _take(a, "--batch-sizes", None), "lrs": _take(a, "--lrs", None)}
    flags = dict(base)
    plugin = _take(a, "--plugin")
    if plugin:
        flags["--parallel.plugin"] = plugin
        if plugin == "gemini":
            flags.setdefault("--optim.optimizer", "hybrid_adam")
    for opt, key in (("--batch-size", "--optim.batch_size"), ("--epochs", "--optim.epochs"),
                     ("--lr", "--optim.lr"), ("--model", "--model.name")):
        v = _take(a, opt)
        if v is not None:
            flags[key] = v
    for x in a:
        if x.startswith("--output_dir"):
            raise UsageError("the driver sets --output_dir")
    out = [t for kv in flags.items() for t in kv] + a  # the rest after the defaults: argparse keeps the last
    return out, s


def _timed(summary: Path, run_dir: str, flags: list[str], timeout: float, note: str = "") -> Command:
    return Command(["python3", str(HERE.relative_to(ROOT) / "timed_cli.py"), str(summary), run_dir,
                    "--timeout", f"{timeout:g}", "--", *flags], note=note)


def _data_commands(step: Step, fresh: bool) -> None:
    if fresh:
        step.commands.append(Command(["rm", "-rf", DATA_CACHE], note="cold data cache"))
    step.commands.append(Command(["bash", "-c", f"test -d {DATA_DIR} || {shlex.join(DATA_CMD)}"],
                                 note="synthetic reference set, once per machine"))


def build_cli(step: Step, d: Path) -> None:
    flags, s = _cli_flags(step.args, CLI_BASE)
    _data_commands(step, s["fresh_cache"])
    for r in range(s["repeat"]):
        run_dir = f"/tmp/vt-runs/{step.name}-{r + 1}"
        step.commands.append(Command(["rm", "-rf", run_dir], note="the CLI resumes from an existing output_dir"))
        step.commands.append(_timed(d / "cli.jsonl", run_dir, flags, s["timeout"]))


def build_grid(step: Step, d: Path) -> None:
    base = {k: v for k, v in {**CLI_BASE, **GRID_BASE}.items() if k != "--optim.batch_size"}
    flags, s = _cli_flags(step.args, base)
    _data_commands(step, s["fresh_cache"])
    bss = (s["batch_sizes"] or GRID_BATCH_SIZES).split(",")
    lrs = (s["lrs"] or GRID_LRS).split(",")
    step.commands.append(Command(["rm", "-rf", f"/tmp/vt-runs/{step.name}", f"/tmp/vt-runs/{step.name}-parts"]))
    for bs in bss:
        for lr in lrs:
            tag = f"bs{bs}-lr{lr}"
            part = Path(f"/tmp/vt-runs/{step.name}-parts/{tag}.jsonl")
            step.grid_parts.append(part)
            c = _timed(part, f"/tmp/vt-runs/{step.name}/{tag}",
                       flags + ["--optim.batch_size", bs, "--optim.lr", lr], s["timeout"], note=tag)
            c.group, c.concurrent = 1, s["concurrent"]
            step.commands.append(c)
    step.internal.append(f"merge the points' records into {d / 'grid.jsonl'}; wall time of the points in run.json")


def build_kernels(step: Step, d: Path) -> None:
    a = list(step.args)
    cache = _take(a, "--cache", "/tmp/vt-kernels")
    arch = _take(a, "--arch", "9.0")
    save = _take(a, "--save", None, has_value=False) is not None
    step.commands.append(Command(["python3", "submit.py", "kernels", "--cache", cache, *a],
                                 env={"TORCH_CUDA_ARCH_LIST": arch}))
    step.exports = {"VIT_TRAIN_KERNEL_CACHE": cache, "TORCH_CUDA_ARCH_LIST": arch}
    step.kernel_install = {"cache": cache, "save": str(d) if save else None}
    step.internal.append(f"copy the *.so built under {cache}/colossalai into colossalai/_C"
                         + (f" and into {d}" if save else ""))


def build_script(step: Step, d: Path) -> None:
    if not step.args:
        raise UsageError(f"{step.name}: script needs a file")
    path, rest = step.args[0], step.args[1:]
    p = (ROOT / path).resolve()
    if ROOT not in p.parents or not p.is_file():
        raise UsageError(f"{step.name}: {path} is not a file of this repository")
    interp = "bash" if p.suffix == ".sh" else "python3"
    step.commands.append(Command([interp, str(p.relative_to(ROOT)), *rest], env={"STEP_OUT": str(d)}))


BUILDERS = {"bench": build_bench, "cli": build_cli, "grid": build_grid, "kernels": build_kernels,
            "script": build_script}


# ------------------------------------------------------------------------------------------ record
def _q(cmd: list[str]) -> str | None:
    try:
        p = subprocess.run(cmd, capture_output=True, text=True, timeout=60, cwd=ROOT)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return p.stdout.strip() if p.returncode == 0 else None


VERSIONS_PY = """
import importlib.metadata as md, json, platform, sys
def v(n):
    try:
        return md.version(n)
    except md.PackageNotFoundError:
        return None
r = {"python": platform.python_version()}
r.update({n: v(n) for n in ("torch", "colossalai", "transformers", "datasets", "safetensors", "triton",
                            "peft", "tokenizers", "huggingface_hub", "pyarrow", "numpy")})
try:
    import torch
    r["cuda"] = torch.version.cuda
    r["cudnn"] = torch.backends.cudnn.version()
except Exception as e:
    r["cuda"] = repr(e)
print(json.dumps(r))
"""


def environment() -> dict:
    gpus = _q(["nvidia-smi", "--query-gpu=name,driver_version,memory.total,clocks.max.sm", "--format=csv,noheader"])
    v = _q([sys.executable, "-c", VERSIONS_PY])
    return {
        "device": {"gpus": gpus.splitlines() if gpus else None, "cpu_count": os.cpu_count(),
                   "hostname": socket.gethostname()},
        "versions": json.loads(v) if v else None,
        "git": {"commit": _q(["git", "rev-parse", "HEAD"]), "status": (_q(["git", "status", "--porcelain"]) or "")[:4000]},
        "env": {k: os.environ.get(k) for k in ("PYTHONPATH", "NCCL_NVLS_ENABLE", "TORCH_SYMM_MEM_DISABLE_MULTICAST",
                                                "NVSHMEM_DISABLE_NVLS", "TORCH_CUDA_ARCH_LIST",
                                                "VIT_TRAIN_KERNEL_CACHE", "PREBUILT_KERNELS")},
    }


def record(argv: list[str], steps: list[Step], env: dict | None, results: dict) -> dict:
    return {
        "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "command": "bash benchmarks/device/run.sh " + shlex.join(argv),
        **(env or {}),
        "steps": [{"name": s.name, "type": s.type, "args": s.args,
                   "commands": [c.shell() for c in s.commands], "driver": s.internal,
                   **results.get(s.name, {})} for s in steps],
    }


# ------------------------------------------------------------------------------------------ running
def _run_one(c: Command, env: dict, log) -> subprocess.Popen:
    log.write(f"\n$ {c.shell()}\n")
    log.flush()
    return subprocess.Popen(c.argv, cwd=ROOT, env={**env, **c.env}, stdout=log, stderr=subprocess.STDOUT,
                            start_new_session=True)


def _wait(p: subprocess.Popen, c: Command, deadline: float | None) -> int | str:
    limit = c.timeout
    if deadline is not None:
        left = max(1.0, deadline - time.time())
        limit = left if limit is None else min(limit, left)
    try:
        return p.wait(timeout=limit)
    except subprocess.TimeoutExpired:
        os.killpg(p.pid, signal.SIGKILL)
        p.wait()
        return "killed: driver budget" if deadline is not None and time.time() >= deadline - 1 else "killed: timeout"


def run_step(step: Step, out: Path, env: dict, deadline: float | None) -> dict:
    d = out / step.name
    d.mkdir(parents=True, exist_ok=True)
    res: dict = {"exit_codes": [], "seconds": None}
    t0 = time.time()
    with open(d / "log.txt", "a") as log:
        i = 0
        while i < len(step.commands):
            c = step.commands[i]
            if c.concurrent and c.group:
                batch = [x for x in step.commands[i:] if x.group == c.group]
                tb = time.time()
                procs = [(_run_one(x, env, log), x) for x in batch]
                res["exit_codes"] += [_wait(p, x, deadline) for p, x in procs]
                res.setdefault("group_wall_s", {})[str(c.group)] = round(time.time() - tb, 2)
                i += len(batch)
                continue
            tb = time.time()
            res["exit_codes"].append(_wait(_run_one(c, env, log), c, deadline))
            if c.group:
                res.setdefault("group_wall_s", {})[str(c.group)] = round(
                    res.get("group_wall_s", {}).get(str(c.group), 0) + time.time() - tb, 2)
            i += 1
    if step.grid_parts:
        with open(d / "grid.jsonl", "w") as f:
            for part in step.grid_parts:
                if part.is_file():
                    f.write(part.read_text())
    if step.kernel_install:
        res["kernels_installed"] = install_kernels(**step.kernel_install)
    res["seconds"] = round(time.time() - t0, 2)
    return res


def install_kernels(cache: str, save: str | None) -> list[str]:
    import importlib.util

    spec = importlib.util.find_spec("colossalai")
    if spec is None or not spec.origin:
        return []
    dest = Path(spec.origin).parent / "_C"
    dest.mkdir(exist_ok=True)
    done = []
    for so in sorted(Path(cache).glob("colossalai/**/*.so")):
        shutil.copy2(so, dest / so.name)
        if save:
            shutil.copy2(so, Path(save) / so.name)
        done.append(str(so))
    return done


def summary_lines(step: Step, out: Path) -> list[str]:
    log = out / step.name / "log.txt"
    text = log.read_text(errors="replace").splitlines() if log.is_file() else []
    if step.type == "bench":
        keep = [l for l in text if re.match(r"^\[bench\] [^ ]+: ", l)]
    elif step.type in ("cli", "grid"):
        keep = [l for l in text if l.startswith("{")]
    else:
        keep = []
    return [l[:300] for l in (keep or text[-12:])]


def pack(out: Path, steps: list[Step]) -> str | None:
    files = [p for p in out.rglob("*") if p.is_file()]
    if len(files) <= MAX_FILES_BACK:
        return None
    with tarfile.open(out / "steps.tar.gz", "w:gz") as t:
        for s in steps:
            if (out / s.name).exists():
                t.add(out / s.name, arcname=s.name)
    for s in steps:
        shutil.rmtree(out / s.name, ignore_errors=True)
    return f"{len(files)} files: step folders packed into steps.tar.gz"


def main(argv: list[str]) -> int:
    try:
        opts, steps = parse(argv)
    except (UsageError, ValueError) as e:
        print(f"run.sh: {e}", file=sys.stderr)
        return 2
    out = Path(opts["out"])
    if opts["validate"]:  # run.sh asks before it provisions
        print("dry" if opts["dry_run"] else f"run {out}")
        return 0
    if opts["dry_run"]:
        env_exports: dict[str, str] = {}
        for s in steps:
            print(f"== {s.type}:{s.name} -> {out / s.name}/ (log.txt)")
            for c in s.commands:
                extra = {**env_exports, **c.env}
                print("   " + Command(c.argv, extra, c.timeout, note=("[together] " if c.concurrent else "") + c.note).shell())
            for w in s.internal:
                print("   (driver) " + w)
            env_exports.update(s.exports)
        print(f"== {out}/run.json:")
        print(json.dumps(record(argv, steps, None, {}), indent=1))
        return 0
    out.mkdir(parents=True, exist_ok=True)
    t0 = float(os.environ.get("VT_T0") or time.time())  # run.sh's start: the budget includes provisioning
    deadline = t0 + opts["budget"] if opts["budget"] else None
    env = dict(os.environ)
    info = environment()
    results: dict = {}
    (out / "run.json").write_text(json.dumps(record(argv, steps, info, results), indent=1))
    worst = 0
    for s in steps:
        if deadline is not None and time.time() >= deadline:
            results[s.name] = {"skipped": "driver budget spent"}
            print(f"== {s.name}: skipped (budget)", flush=True)
            continue
        print(f"== {s.name} ({s.type})", flush=True)
        results[s.name] = run_step(s, out, env, deadline)
        env.update(s.exports)
        codes = results[s.name]["exit_codes"]
        if any(c != 0 for c in codes):
            worst = 1
        print(f"   exit {codes} in {results[s.name]['seconds']} s", flush=True)
        for line in summary_lines(s, out):
            print("   " + line, flush=True)
        (out / "run.json").write_text(json.dumps(record(argv, steps, info, results), indent=1))
    packed = pack(out, steps)
    rec = record(argv, steps, info, results)
    if packed:
        rec["packed"] = packed
        print("== " + packed)
    (out / "run.json").write_text(json.dumps(rec, indent=1))
    return worst


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
