"""``python submit.py prefetch GRID --cache DIR``: fetch what a grid's jobs would download, once.

Compute nodes often have no internet, and a grid of N jobs each downloading (and pre-processing)
the same model and dataset wastes N-1 downloads anyway. On the login node, for every distinct model
and dataset of the grid's runs, this:

1. downloads hub models (weights, config, image processor) with ``snapshot_download`` at the run's
   ``model.revision``, and hub datasets with ``datasets.load_dataset`` at ``data.revision``, into
   DIR as ``HF_HOME``;
2. pre-processes each (dataset, model processor) pair of the grid into vit_train's tensor cache
   (:func:`vit_train.data.prepare`), under the run's ``data.cache_dir``, else DIR;
3. verifies, in a fresh process with ``HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 HF_HOME=DIR``, that
   every model and processor loads with ``from_pretrained`` and every dataset loads and hits its
   pre-processed cache: what a job will do, without the network;

and prints a summary. Steps 1-2 and 3 each run in a child process whose environment names DIR from
the start (huggingface_hub and datasets read their cache paths at import).

Layout of DIR::

    hub/         Hugging Face hub cache: models--org--name/{blobs,refs,snapshots/<commit>}
    datasets/    datasets' Arrow cache of hub datasets
    prepared/    vit_train's pre-processed tensors (runs without data.cache_dir; VIT_TRAIN_CACHE=DIR)

Local sources (a ``save_to_disk`` or image folder, a ``save_pretrained`` model folder) are verified
and pre-processed where they are, not copied: they already sit on disk the nodes read (grid paths
are absolute), a copy would double a large dataset's footprint, and an image folder's cache key
includes its files' mtimes, so a copy would be a second identity of the same data.

Jobs then need ``HF_HOME=DIR HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 VIT_TRAIN_CACHE=DIR`` (see
:func:`job_env`); :func:`check_offline_ready` is the cheap check preflight runs before queueing.

Offline, ``datasets`` ignores the requested revision and loads the newest cached version of a hub
dataset, so a grid may name one revision per hub dataset (two are refused here).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hpc.grid import RunSpec, expand, load_grid
from vit_train.config import ConfigError, DataConfig, ModelConfig
from vit_train.model_shapes import PRESETS

REPO_ROOT = Path(__file__).resolve().parents[1]
# What from_pretrained needs of a ViT repo: config, processor config, safetensors weights (sharded or not).
MODEL_PATTERNS = ["*.json", "*.safetensors", "*.txt"]
FALLBACK_WEIGHT_PATTERNS = ["pytorch_model*.bin"]  # older repos without safetensors
WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin", "pytorch_model.bin.index.json")
_COMMIT = re.compile(r"[0-9a-f]{40}")


def _is_local(name: str) -> bool:
    # The rule of vit_train.data.load_source: an existing folder, or anything written as a path.
    return Path(name).expanduser().is_dir() or name.startswith(("/", "./", "../", "~"))


@dataclass(frozen=True)
class Source:
    kind: str
    """model | dataset."""
    name: str
    """Hub id or local folder."""
    revision: str | None
    """Pinned hub revision; None = the default branch."""

    @property
    def is_local(self) -> bool:
        return _is_local(self.name)

    def __str__(self) -> str:
        return self.name if self.is_local else f"{self.name}@{self.revision or 'main'}"


@dataclass(frozen=True)
class Plan:
    models: tuple[Source, ...]
    """Distinct non-preset models of the grid."""
    datasets: tuple[Source, ...]
    """Distinct datasets of the grid."""
    prepares: tuple[tuple[dict[str, Any], dict[str, Any]], ...]
    """Distinct (DataConfig, ModelConfig) pairs to pre-process, as dicts, data.cache_dir resolved."""

    def to_json(self) -> str:
        return json.dumps({"models": [dataclasses.asdict(s) for s in self.models],
                           "datasets": [dataclasses.asdict(s) for s in self.datasets],
                           "prepares": [list(p) for p in self.prepares]})

    @classmethod
    def from_json(cls, text: str) -> Plan:
        d = json.loads(text)
        return cls(tuple(Source(**s) for s in d["models"]), tuple(Source(**s) for s in d["datasets"]),
                   tuple((p[0], p[1]) for p in d["prepares"]))


def make_plan(runs: Sequence[RunSpec], cache_dir: str | os.PathLike[str], *, strict: bool = True) -> Plan:
    """What the grid's runs need, each thing once; strict: refuse :func:`revision_conflicts`."""
    models: dict[Source, None] = {}
    data: dict[Source, None] = {}
    prepares: dict[str, tuple[dict[str, Any], dict[str, Any]]] = {}
    for run in runs:
        m, d = run.config.model, run.config.data
        if m.name not in PRESETS:
            models[Source("model", m.name, m.revision)] = None
        data[Source("dataset", d.dataset, d.revision)] = None
        data_dict = dataclasses.asdict(dataclasses.replace(d, cache_dir=d.cache_dir or str(Path(cache_dir).resolve())))
        model_dict = dataclasses.asdict(m)
        key = json.dumps([{k: v for k, v in data_dict.items() if k != "num_workers"}, model_dict], sort_keys=True)
        prepares.setdefault(key, (data_dict, model_dict))
    plan = Plan(tuple(models), tuple(data), tuple(prepares.values()))
    conflicts = revision_conflicts(plan)
    if conflicts and strict:
        raise ConfigError(conflicts[0])
    return plan


def revision_conflicts(plan: Plan) -> list[str]:
    """Hub datasets named at two revisions: offline, datasets loads the newest cached version
    whatever the revision asked, so the runs could silently train on the wrong one."""
    revisions: dict[str, set[str | None]] = {}
    for src in plan.datasets:
        if not src.is_local:
            revisions.setdefault(src.name, set()).add(src.revision)
    return [f"data.revision: the grid uses {name} at {sorted(str(r) for r in revs)}; offline, datasets loads the "
            "newest cached version whatever the revision, so use one revision per grid (or one cache folder each)"
            for name, revs in revisions.items() if len(revs) > 1]


# ---------------------------------------------------------------------------- environments
def job_env(cache_dir: str | os.PathLike[str]) -> dict[str, str]:
    """The variables a job needs to run offline from the cache folder (for the site profile's env)."""
    cache = str(Path(cache_dir).resolve())
    return {"HF_HOME": cache, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "VIT_TRAIN_CACHE": cache}


def _child_env(cache_dir: Path, offline: bool) -> dict[str, str]:
    env = dict(os.environ)
    # Explicit cache paths would win over HF_HOME; the cache folder must be the only one in play.
    for var in ("HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE", "HF_DATASETS_CACHE", "TRANSFORMERS_CACHE"):
        env.pop(var, None)
    # HF_HOME also holds the login token; keep the user's, so that gated models still download.
    home = Path(os.environ.get("HF_HOME") or Path.home() / ".cache" / "huggingface")
    token = Path(os.environ.get("HF_TOKEN_PATH") or home / "token")
    if token.is_file() and "HF_TOKEN" not in env:
        env["HF_TOKEN_PATH"] = str(token)
    env.update(job_env(cache_dir) if offline else {"HF_HOME": str(cache_dir), "VIT_TRAIN_CACHE": str(cache_dir)})
    if offline:
        env["TRANSFORMERS_OFFLINE"] = "1"
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO_ROOT), env.get("PYTHONPATH")) if p)
    return env


def _run_child(step: str, plan: Plan, cache_dir: Path, offline: bool, timeout_s: float | None) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="prefetch-") as tmp:
        plan_file, result_file = Path(tmp) / "plan.json", Path(tmp) / "result.json"
        plan_file.write_text(plan.to_json())
        proc = subprocess.run([sys.executable, "-m", "hpc.prefetch", step, str(plan_file), str(result_file)],
                              env=_child_env(cache_dir, offline), cwd=REPO_ROOT, timeout=timeout_s, check=False)
        if not result_file.is_file():
            raise RuntimeError(f"prefetch {step} step exited {proc.returncode} without a result (see its output above)")
        return json.loads(result_file.read_text())


# ---------------------------------------------------------------------------- child steps
def _folder_bytes(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def _fetch_model(src: Source) -> dict[str, Any]:
    if src.is_local:
        path = Path(src.name).expanduser()
        if not (path / "config.json").is_file():
            raise FileNotFoundError(f"{path}: no config.json; give a save_pretrained folder")
        return {"where": "local folder", "path": str(path)}
    from huggingface_hub import snapshot_download

    path = Path(snapshot_download(src.name, revision=src.revision, allow_patterns=MODEL_PATTERNS))
    if not any((path / f).is_file() for f in WEIGHT_FILES):
        path = Path(snapshot_download(src.name, revision=src.revision, allow_patterns=FALLBACK_WEIGHT_PATTERNS))
    return {"where": "hub", "path": str(path), "commit": path.name, "bytes": _folder_bytes(path)}


def _fetch_dataset(src: Source) -> dict[str, Any]:
    from vit_train.data import load_source

    # load_source is what the job calls: load_from_disk / imagefolder / load_dataset(id, revision).
    source = load_source(DataConfig(dataset=src.name, revision=src.revision))
    where = "local folder" if src.is_local else "hub"
    return {"where": where, "splits": {name: len(split) for name, split in source.items()}}


def _prepare(data: dict[str, Any], model: dict[str, Any]) -> dict[str, Any]:
    from vit_train.data import prepare
    from vit_train.model import build_image_processor

    started = time.monotonic()
    prepared = prepare(DataConfig(**data), build_image_processor(ModelConfig(**model)))
    return {"path": str(prepared.cache_path), "built": prepared.built, "seconds": round(time.monotonic() - started, 2),
            "num_train": len(prepared.train), "num_eval": len(prepared.eval)}


def _load_model_offline(src: Source) -> dict[str, Any]:
    from transformers import ViTForImageClassification

    from vit_train.model import build_image_processor

    build_image_processor(ModelConfig(name=src.name, revision=src.revision))
    model = ViTForImageClassification.from_pretrained(src.name, revision=src.revision)
    return {"parameters": sum(p.numel() for p in model.parameters())}


def _attempt(fn: Any, *args: Any) -> dict[str, Any]:
    try:
        return {"ok": True, **fn(*args)}
    except Exception as e:  # noqa: BLE001  every item is tried; the summary lists every failure at once
        return {"ok": False, "error": f"{type(e).__name__}: {e}"}


def _child_main(argv: Sequence[str]) -> int:
    step, plan_file, result_file = argv
    plan = Plan.from_json(Path(plan_file).read_text())
    if step == "fetch":
        result = {"models": [_attempt(_fetch_model, s) for s in plan.models],
                  "datasets": [_attempt(_fetch_dataset, s) for s in plan.datasets],
                  "prepares": [_attempt(_prepare, d, m) for d, m in plan.prepares]}
    elif step == "verify":
        result = {"models": [_attempt(_load_model_offline, s) for s in plan.models],
                  "datasets": [_attempt(_fetch_dataset, s) for s in plan.datasets],
                  "prepares": [_attempt(_prepare, d, m) for d, m in plan.prepares]}
    else:
        raise SystemExit(f"unknown step {step!r}; use fetch or verify")
    Path(result_file).write_text(json.dumps(result))
    return 0


# ---------------------------------------------------------------------------- the command
def prefetch(grid: str | os.PathLike[str], cache_dir: str | os.PathLike[str], *, timeout_s: float | None = None,
             out: Any = print) -> bool:
    """Fetch, pre-process and verify offline everything the grid needs; print a summary; True if all is ready."""
    cache = Path(cache_dir).expanduser().resolve()
    cache.mkdir(parents=True, exist_ok=True)
    spec = load_grid(grid)
    plan = make_plan(expand(spec), cache)
    out(f"prefetch {spec.source}: {len(plan.models)} model(s), {len(plan.datasets)} dataset(s), "
        f"{len(plan.prepares)} pre-processing(s) into {cache}")
    fetched = _run_child("fetch", plan, cache, offline=False, timeout_s=timeout_s)
    verified = _run_child("verify", plan, cache, offline=True, timeout_s=timeout_s)
    rows = [(f"{src.kind:<9}{src!s:<44}", got, check) for src, got, check in
            zip(plan.models + plan.datasets, fetched["models"] + fetched["datasets"], verified["models"] + verified["datasets"])]
    rows += [(f"{'prepared':<9}{Path(data['dataset']).name + ' x ' + Path(model['name']).name:<44}", got, check)
             for (data, model), got, check in zip(plan.prepares, fetched["prepares"], verified["prepares"])]
    for label, got, check in rows:
        out(f"  {label} {_describe_fetch(got):<56} offline: {_describe_check(check)}")
    for src, got in zip(plan.models, fetched["models"]):
        if got.get("commit") and not (src.revision and _COMMIT.fullmatch(src.revision)):
            out(f"note: {src.name} revision {src.revision or 'main'} resolved to {got['commit']}; pin "
                f"model.revision: {got['commit']} so that later runs (and prefetches) use the same files")
    ok = all(got["ok"] and check["ok"] for _, got, check in rows)
    env = " ".join(f"{k}={v}" for k, v in job_env(cache).items())
    out(f"{'ready' if ok else 'NOT ready'}: jobs run offline with {env}")
    return ok


def _describe_fetch(got: dict[str, Any]) -> str:
    if not got["ok"]:
        return f"FAILED: {got['error']}"
    if "built" in got:  # a pre-processing
        return (f"{'built' if got['built'] else 'cached'} {Path(got['path']).name} "
                f"(train {got['num_train']}, eval {got['num_eval']}, {got['seconds']} s)")
    parts = [got["where"]]
    if "commit" in got:
        parts.append(f"commit {got['commit'][:12]}, {got['bytes'] / 2**20:.1f} MiB")
    if "splits" in got:
        parts.append(", ".join(f"{name} {n}" for name, n in got["splits"].items()))
    return ", ".join(parts)


def _describe_check(check: dict[str, Any]) -> str:
    if not check["ok"]:
        return f"FAILED: {check['error']}"
    return "ok (re-built offline: its cache key differed)" if check.get("built") else "ok"


def check_offline_ready(runs: Sequence[RunSpec], cache_dir: str | os.PathLike[str], *, grid: str = "GRID") -> list[str]:
    """Problems that would make the runs fail offline with HF_HOME=cache_dir; [] when ready.

    Cheap (file lookups, no model or dataset load): each hub model needs config.json,
    preprocessor_config.json and weights in ``<cache>/hub`` at its revision; each hub dataset an
    Arrow cache in ``<cache>/datasets``; each local source its folder. The pre-processed tensors are
    not required (a job builds them if absent).
    """
    cache = Path(cache_dir).expanduser().resolve()
    fix = f"run `python submit.py prefetch {grid} --cache {cache}` on the login node"
    plan = make_plan(runs, cache, strict=False)
    problems = revision_conflicts(plan)
    for src in plan.models + plan.datasets:
        path = Path(src.name).expanduser()
        if src.is_local:
            if not path.is_dir():
                problems.append(f"{src.kind} {src.name}: no such folder")
            elif src.kind == "model" and not (path / "config.json").is_file():
                problems.append(f"model {src.name}: no config.json in the folder; give a save_pretrained folder")
        elif src.kind == "model":
            missing = _missing_model_files(src, cache / "hub")
            if missing:
                problems.append(f"model {src} is not in the cache {cache / 'hub'} ({', '.join(missing)} missing); {fix}")
        elif not _datasets_cached(src.name, cache / "datasets"):
            problems.append(f"dataset {src} is not in the cache {cache / 'datasets'}; {fix}")
    return problems


def _missing_model_files(src: Source, hub_cache: Path) -> list[str]:
    from huggingface_hub import try_to_load_from_cache

    def cached(filename: str) -> bool:  # a str is a path; None or a sentinel means not cached
        return isinstance(try_to_load_from_cache(src.name, filename, cache_dir=hub_cache, revision=src.revision), str)

    missing = [f for f in ("config.json", "preprocessor_config.json") if not cached(f)]
    return missing if any(cached(f) for f in WEIGHT_FILES) else [*missing, "weights"]


def _datasets_cached(name: str, datasets_cache: Path) -> bool:
    # Where datasets' offline loader (CachedDatasetModuleFactory) looks: <ns>___<snake_name>/<config>/<version>/<hash>/.
    from datasets.naming import camelcase_to_snakecase

    parts = name.split("/")
    parts[-1] = camelcase_to_snakecase(parts[-1])
    root = datasets_cache / "___".join(parts)
    return any(p.is_dir() and (p / "dataset_info.json").is_file() for p in root.glob("*/*/*"))


# ---------------------------------------------------------------------------- CLI
def add_parser(subparsers: Any) -> None:
    """Register ``prefetch``: download, pre-process and verify offline what a grid needs."""
    p = subparsers.add_parser(
        "prefetch",
        help="download the grid's models and datasets into a shared cache, pre-process them, verify offline",
        description=__doc__.split("\n\n")[0],
    )
    p.add_argument("grid", metavar="GRID", type=Path, help="grid YAML file")
    p.add_argument("--cache", type=Path, required=True, metavar="DIR",
                   help="shared cache folder (becomes HF_HOME and VIT_TRAIN_CACHE of the jobs)")
    p.add_argument("--timeout", type=float, default=None, metavar="S",
                   help="give up a step (download+pre-process, or verification) after S seconds")
    p.set_defaults(handler=cmd_prefetch)


def cmd_prefetch(args: argparse.Namespace) -> int:
    try:
        return 0 if prefetch(args.grid, args.cache, timeout_s=args.timeout) else 1
    except ConfigError as e:  # GridError included: the message names the file and the field
        print(f"error: {e}", file=sys.stderr)
        return 2
    except (RuntimeError, OSError, subprocess.TimeoutExpired) as e:
        print(f"error: prefetch: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(_child_main(sys.argv[1:]))
