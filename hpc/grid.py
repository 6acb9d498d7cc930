"""Grid files: a YAML hyper-parameter grid, and its pure expansion into resolved, hashed runs.

A grid is a function of its file (dora-style): :func:`expand` turns a :class:`GridSpec` into one
:class:`RunSpec` per point of ``grid`` (cartesian axes) x ``zip`` (groups of axes varied together),
each with a fully built :class:`~vit_train.config.RunConfig` whose validation has run, and with
``check_world`` run against the grid's Slurm resources, so a bad point fails before anything is queued.

Identity. A run's ``signature`` is sha256 (first 12 hex chars) of the canonical JSON of its resolved
config's semantic fields: ``RunConfig.flat()`` minus ``NON_SEMANTIC``. It names the run folder
``<output_root>/<name>/<label>-<signature>``, so re-expanding a grid finds the same folders and
re-submitting is idempotent. Decisions:

* The parallel layout (plugin, tp/pp, ZeRO stage, ...) IS part of the signature: a grid may sweep the
  layout, and two layouts are two runs even when they should train the same model.
* Operational fields (``NON_SEMANTIC``: output folder, workers, checkpoint cadence, log interval, ...)
  are not, so changing how a run is observed never turns a finished run into a new one. Two points
  that differ only there are duplicates and fail.
* The hash covers every semantic field, defaults included (not only what differs from the defaults),
  so changing a default in ``RunConfig`` gives new signatures instead of silently reusing old runs.
* Values are hashed after ``RunConfig`` has coerced them, so ``1e-4``, ``1.0e-4`` and ``0.0001`` (and
  key order) give the same signature.
* ``./`` and ``../`` paths in ``model.name``, ``data.dataset`` and ``data.cache_dir`` are resolved
  against the grid file's folder before hashing: the saved config is what ran, and a bare ``org/name``
  stays a hub id.
"""

from __future__ import annotations

import dataclasses
import hashlib
import itertools
import json
import math
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import yaml

from hpc.slurm_resources import SlurmResources
from vit_train.config import (
    IDENTIFYING_HPARAMS,
    NON_SEMANTIC,
    SECTIONS,
    ConfigError,
    RunConfig,
    apply_dotted,
    flatten,
    valid_dotted_keys,
)
from vit_train.config_tools import coerce, reject_unknown

GRID_KEYS = ("name", "output_root", "profile", "slurm", "base", "grid", "zip")
PATH_KEYS = ("model.name", "data.dataset", "data.cache_dir")
HPARAMS_KEY = "logging.hparams"
SIGNATURE_LEN = 12
# Short labels for run folder names; a key not listed uses its last component.
LABELS = {
    "optim.batch_size": "bs",
    "optim.lr": "lr",
    "optim.weight_decay": "wd",
    "optim.warmup_ratio": "warmup",
    "optim.epochs": "ep",
    "optim.max_steps": "steps",
    "optim.lr_scaling": "lrscale",
    "optim.optimizer": "",
    "parallel.plugin": "",
    "parallel.tp_size": "tp",
    "parallel.pp_size": "pp",
    "parallel.zero_stage": "zero",
    "parallel.num_microbatches": "mb",
    "parallel.microbatch_size": "mbs",
    "precision": "",
    "seed": "seed",
    "model.name": "",
    "data.max_train_samples": "ntrain",
}


class GridError(ConfigError):
    """A grid file or one of its runs is invalid; the message names the file, the run and the field."""


@dataclass(frozen=True, kw_only=True)
class GridSpec:
    """A parsed grid file; pure data, expanded by :func:`expand`."""

    name: str
    """Grid folder name under output_root."""
    output_root: Path
    """Absolute folder holding grid folders."""
    profile: str
    """Site profile name (slurm_templates/profiles/<profile>.yaml)."""
    slurm: SlurmResources = field(default_factory=SlurmResources)
    """Per-run resources."""
    base: dict[str, Any] = field(default_factory=dict)
    """Fixed values, as dotted RunConfig keys."""
    grid: dict[str, tuple[Any, ...]] = field(default_factory=dict)
    """Cartesian axes: dotted key -> values, in file order (first axis varies slowest)."""
    zip: tuple[dict[str, tuple[Any, ...]], ...] = ()
    """Groups of axes varied together; each group is one more axis of the product."""
    base_dir: Path = Path(".")
    """Folder that ./ and ../ paths in run configs are relative to (the grid file's folder)."""
    source: str = "<grid>"
    """Where the grid came from, for error messages."""

    def __post_init__(self) -> None:
        where = self.source
        if not isinstance(self.name, str) or not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]*", self.name):
            raise GridError(f"{where}: name={self.name!r}: use letters, digits, '.', '_' or '-' (it names a folder)")
        if not isinstance(self.profile, str) or not self.profile:
            raise GridError(f"{where}: profile={self.profile!r}: name a site profile, e.g. 'local'")
        valid = valid_dotted_keys()
        _check_keys(where, "base", self.base, valid)
        seen: dict[str, str] = {}
        for section, axes in [("grid", self.grid)] + [(f"zip[{i}]", g) for i, g in enumerate(self.zip)]:
            _check_keys(where, section, axes, valid)
            if section != "grid" and not axes:
                raise GridError(f"{where}: {section} is empty; give it at least one axis or remove it")
            for key, values in axes.items():
                if key in seen:
                    raise GridError(f"{where}: {section}.{key} is also varied in {seen[key]}; vary it in one place")
                if key in self.base:
                    raise GridError(f"{where}: {section}.{key} is also set in base; keep it in one place")
                seen[key] = section
                if not values:
                    raise GridError(f"{where}: {section}.{key} has no values; give at least one or remove the axis")
            lengths = {k: len(v) for k, v in axes.items()}
            if section != "grid" and len(set(lengths.values())) > 1:
                raise GridError(f"{where}: {section}: zipped axes need equal lengths, got {lengths}")
        if "output_dir" in self.base or "output_dir" in seen:
            raise GridError(f"{where}: output_dir is set per run (<output_root>/<name>/<run>); set output_root instead")

    @property
    def grid_dir(self) -> Path:
        return self.output_root / self.name

    @property
    def axes(self) -> list[str]:
        """The dotted keys that vary, in label order."""
        return list(self.grid) + [k for group in self.zip for k in group]

    @property
    def num_runs(self) -> int:
        return math.prod(len(v) for v in self.grid.values()) * math.prod(len(next(iter(g.values()))) for g in self.zip)


@dataclass(frozen=True)
class RunSpec:
    """One resolved run of a grid."""

    index: int
    """Position in expansion order."""
    point: dict[str, Any]
    """The varying dotted keys and this run's (coerced) values."""
    config: RunConfig
    """Fully resolved config; output_dir is run_dir."""
    signature: str
    """Hash of the semantic fields (see module docstring)."""
    name: str
    """Readable, filesystem-safe folder name: label of the point + signature."""
    run_dir: Path
    """<grid_dir>/<name>."""


# ---------------------------------------------------------------------------- loading
def load_grid(path: str | os.PathLike[str]) -> GridSpec:
    """Read and check a grid file; YAML errors are reported as ``file:line:column``."""
    path = Path(path).absolute()
    try:
        text = path.read_text()
    except OSError as e:
        raise GridError(f"{path}: cannot read grid file ({e.strerror})") from None
    try:
        data = yaml.load(text, Loader=_StrictLoader)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        at = f"{path}:{mark.line + 1}:{mark.column + 1}" if mark is not None else str(path)
        problem = getattr(e, "problem", None) or str(e)
        raise GridError(f"{at}: invalid YAML: {problem}") from None
    return parse_grid(data, base_dir=path.parent, source=str(path), default_name=path.stem)


def parse_grid(data: Any, *, base_dir: Path, source: str = "<grid>", default_name: str | None = None) -> GridSpec:
    """Build a GridSpec from an already-parsed YAML document (pure apart from ``~`` in output_root)."""
    if data is None or data == {}:  # an empty file, or only comments
        raise GridError(f"{source}: the grid file is empty; give at least a profile and a base, e.g. profile: local "
                        "and base: {model: {name: tiny}, data: {dataset: ...}} (see grids/cpu_tiny.yaml)")
    if not isinstance(data, Mapping):
        raise GridError(f"{source}: the grid file must be a mapping with keys {', '.join(GRID_KEYS)}")
    try:
        reject_unknown("grid file", data, GRID_KEYS)
    except ConfigError as e:
        raise GridError(f"{source}: {e}") from None
    if "profile" not in data:
        raise GridError(
            f"{source}: profile is missing; name a site profile (slurm_templates/profiles/<name>.yaml), e.g. local"
        )
    output_root = data.get("output_root", "runs")
    if not isinstance(output_root, str) or not output_root:
        raise GridError(f"{source}: output_root={output_root!r}: give a folder (relative to the grid file's folder)")
    try:
        slurm = SlurmResources.from_dict(data.get("slurm"))
    except ConfigError as e:
        raise GridError(f"{source}: {e}") from None
    base = data.get("base") or {}
    if not isinstance(base, Mapping):
        raise GridError(f"{source}: base={base!r}: must be a mapping of RunConfig values (nested or dotted keys)")
    for section, value in base.items():
        if section in SECTIONS and not isinstance(value, (Mapping, type(None))):
            raise GridError(f"{source}: base.{section}={value!r}: must be a mapping of {section} fields")
    zips = data.get("zip") or []
    if not isinstance(zips, list) or not all(isinstance(g, Mapping) for g in zips):
        raise GridError(
            f"{source}: zip must be a list of mappings, e.g. - {{parallel.tp_size: [1, 2], parallel.pp_size: [2, 1]}}"
        )
    try:
        root = Path(output_root).expanduser()
    except RuntimeError:  # "~someone" whose home directory does not exist here
        raise GridError(f"{source}: output_root={output_root!r}: no such user's home directory; give an absolute path "
                        "or one relative to the grid file") from None
    return GridSpec(
        name=data.get("name", default_name),
        output_root=Path(os.path.normpath(base_dir / root)),
        profile=data["profile"],
        slurm=slurm,
        base=_flatten_base(base),
        grid=_axes(source, "grid", data.get("grid") or {}),
        zip=tuple(_axes(source, f"zip[{i}]", g) for i, g in enumerate(zips)),
        base_dir=base_dir,
        source=source,
    )


def _flatten_base(base: Mapping[str, Any]) -> dict[str, Any]:
    # `logging:` left empty in YAML is None: treat it as "no overrides in this section".
    return flatten({k: v for k, v in base.items() if not (k in SECTIONS and v is None)})


def _axes(source: str, section: str, axes: Any) -> dict[str, tuple[Any, ...]]:
    if not isinstance(axes, Mapping):
        raise GridError(f"{source}: {section} must map dotted keys to lists, e.g. optim.lr: [1.0e-4, 2.0e-4]")
    out: dict[str, tuple[Any, ...]] = {}
    for key, values in flatten(axes).items():
        if not isinstance(values, list):
            raise GridError(
                f"{source}: {section}.{key}={values!r}: an axis needs a list of values; put a fixed value under base"
            )
        out[key] = tuple(values)
    return out


# ---------------------------------------------------------------------------- expansion
def expand(spec: GridSpec) -> list[RunSpec]:
    """All runs of the grid, in order; fails on an invalid point or on two points with one signature."""
    runs: list[RunSpec] = []
    by_signature: dict[str, tuple[RunSpec, str]] = {}
    for index, raw in enumerate(_points(spec)):
        where = f"run {index} {_point_text(raw)}"
        try:
            nested = _resolve_paths(apply_dotted(apply_dotted({}, spec.base), raw), spec.base_dir)
            if HPARAMS_KEY not in raw:
                nested.setdefault("logging", {})["hparams"] = shown_hparams(spec)
            config = RunConfig.from_dict(nested)
            config.check_world(spec.slurm.world_size, spec.slurm.device_type)
        except ConfigError as e:
            raise GridError(f"{spec.source}: {where}: {e}") from None
        flat = config.flat()
        point = {k: flat[k] for k in raw}
        signature = run_signature(config)
        if signature in by_signature:
            other, other_where = by_signature[signature]
            differ = sorted(k for k in raw if other.point[k] != point[k])
            why = (
                f"they differ only in non-semantic fields {differ}" if differ
                else "they resolve to the same values (an axis lists a value twice?)"
            )
            raise GridError(
                f"{spec.source}: {where} has the same signature {signature} as {other_where}: {why}; "
                "remove the duplicate value"
            )
        name = run_name(point, signature)
        run_dir = spec.grid_dir / name
        config = dataclasses.replace(config, output_dir=str(run_dir))
        run = RunSpec(index=index, point=point, config=config, signature=signature, name=name, run_dir=run_dir)
        by_signature[signature] = (run, where)
        runs.append(run)
    return runs


def shown_hparams(spec: GridSpec) -> list[str]:
    """``logging.hparams`` of the grid's runs: its axes, then base's ``logging.hparams`` or the keys that
    identify a run, so TensorBoard's HParams view compares what the grid varies and the saved config
    says what was shown. Non-semantic: it changes no signature."""
    given = spec.base.get(HPARAMS_KEY)
    keys = coerce(HPARAMS_KEY, "tuple[str, ...]", given) if given is not None else IDENTIFYING_HPARAMS
    return list(dict.fromkeys([*spec.axes, *keys]))


def _points(spec: GridSpec) -> list[dict[str, Any]]:
    """Grid axes crossed with zip groups; each factor is a list of partial points."""
    factors: list[list[dict[str, Any]]] = [[{key: v} for v in values] for key, values in spec.grid.items()]
    for group in spec.zip:
        keys = list(group)
        factors.append([dict(zip(keys, vals, strict=True)) for vals in zip(*group.values(), strict=True)])
    return [{k: v for part in combo for k, v in part.items()} for combo in itertools.product(*factors)]


def _resolve_paths(nested: dict[str, Any], base_dir: Path) -> dict[str, Any]:
    for key in PATH_KEYS:
        section, leaf = key.split(".")
        value = nested.get(section, {}).get(leaf)
        if isinstance(value, str) and (value in (".", "..") or value.startswith(("./", "../"))):
            nested[section][leaf] = os.path.normpath(base_dir / value)
    return nested


def run_signature(config: RunConfig) -> str:
    """sha256 (first 12 hex chars) of the canonical JSON of the config's semantic fields."""
    semantic = {k: v for k, v in config.flat().items() if k not in NON_SEMANTIC}
    canonical = json.dumps(semantic, sort_keys=True, separators=(",", ":"), allow_nan=False)
    return hashlib.sha256(canonical.encode()).hexdigest()[:SIGNATURE_LEN]


def run_name(point: Mapping[str, Any], signature: str, max_label: int = 96) -> str:
    """``bs16-lr2e-04-<signature>``: a readable label of the point, then the signature."""
    leaves = [k.split(".")[-1] for k in point]
    parts = []
    for key, value in point.items():
        label = LABELS.get(key, key.split(".")[-1])
        if label and key not in LABELS and leaves.count(label) > 1:
            label = key.replace(".", "_")  # data.revision vs model.revision
        if key in PATH_KEYS and isinstance(value, str):
            value = value.rstrip("/").rsplit("/", 1)[-1]  # hub id or folder: its last part reads best
        parts.append(f"{label}{format_value(value)}")
    text = re.sub(r"[^A-Za-z0-9._-]+", "_", "-".join(parts))[:max_label].strip("-._")
    return f"{text}-{signature}" if text else signature


def format_value(value: Any) -> str:
    """Short, stable text for a value: 2e-04, 0.5, 16, gemini, 0.9_0.99."""
    if isinstance(value, bool) or value is None:
        return str(value).lower()
    if isinstance(value, float):
        if value == 0 or 1e-2 <= abs(value) < 1e4:
            return repr(value)
        for digits in range(17):
            text = f"{value:.{digits}e}"
            if float(text) == value:
                return text.replace("e+", "e")
    if isinstance(value, (list, tuple)):
        return "_".join(format_value(v) for v in value)
    return str(value)


def _point_text(point: Mapping[str, Any]) -> str:
    return "{" + ", ".join(f"{k}={v!r}" for k, v in point.items()) + "}" if point else "{} (base only)"


# ---------------------------------------------------------------------------- checks and YAML
def _check_keys(where: str, section: str, d: Mapping[str, Any], valid: list[str]) -> None:
    try:
        reject_unknown(section, d, valid)
    except ConfigError as e:
        raise GridError(f"{where}: {e}") from None


class _StrictLoader(yaml.SafeLoader):
    """SafeLoader that rejects duplicate keys (plain PyYAML silently keeps the last one)."""


def _construct_mapping(loader: _StrictLoader, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
    loader.flatten_mapping(node)
    seen: set[Any] = set()
    for key_node, _ in node.value:
        key = loader.construct_object(key_node, deep=deep)
        if not isinstance(key, (str, int, float, bool)):
            continue  # unhashable keys are rejected by construct_mapping itself
        if key in seen:
            raise yaml.constructor.ConstructorError(
                "while reading a mapping", node.start_mark, f"duplicate key {key!r}", key_node.start_mark
            )
        seen.add(key)
    return yaml.SafeLoader.construct_mapping(loader, node, deep=deep)


_StrictLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping)
