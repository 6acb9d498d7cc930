"""Image-classification data: load a source, find its columns, pre-process once into a shared cache.

Decoding and resizing JPEGs every epoch would cost more than the forward pass of a small ViT, and N
ranks (or N grid jobs) doing it each would multiply the cost. So :func:`prepare` resizes and
normalises each split once, with the model's own image processor, into a cache folder keyed by
everything that determines its content. Later calls memory-map the result: ranks on one node share
the page cache, and the training loop can index whole batches out of one contiguous tensor.

Cache layout (root = ``data.cache_dir``, else ``$VIT_TRAIN_CACHE``, else ``~/.cache/vit_train``)::

    <root>/prepared/<dataset-slug>-<key>/      complete caches only (renamed into place last)
        train.safetensors   pixel_values float16 [N, C, H, W], labels int64 [N]
        eval.safetensors    the same for the evaluation split
        meta.json           class names, columns, sizes, the key's material, build time
    <root>/prepared/<dataset-slug>-<key>.lock  flock: the one builder holds it, the others wait
    <root>/prepared/.tmp-<dataset-slug>-<key>-<pid>-<rand>/   a build in progress

A complete folder that was damaged later (a file cut short or overwritten) fails the structural
check at open (header, sizes, sample counts against meta.json) and is rebuilt under the lock.

float16 storage: the PIL resize path yields 8-bit pixels, so each channel holds at most 256 levels
spaced 2/255 (mean/std 0.5) or about 1/255/std apart; float16's rounding error (at most 2^-11
relative, under 1e-3 for |x| < 4) is ~8x below half that spacing, so distinct levels stay distinct
and the stored values are the processor's up to that rounding. It halves disk, page cache and
host-to-device traffic; the tests check both claims on real processor output.

No torch.distributed here: ranks coordinate through a file lock (flock, released by the kernel when
its holder dies, so a killed builder never blocks the others).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import shutil
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import datasets
import numpy as np
import torch
from safetensors.torch import save_file

from vit_train.config import ConfigError, DataConfig
from vit_train.prepared import (
    STORAGE_DTYPE,
    CorruptCacheError,
    PreparedData,
    acquire_build_lock,
    default_file_mode,
    is_complete,
    open_prepared,
)

logger = logging.getLogger(__name__)

CACHE_FORMAT = 1  # bump when the layout or the processing code changes: old caches are then ignored
_PARALLEL_MIN_SAMPLES = 1000  # below this, starting map() workers costs more than it saves
_COPY_BATCH = 256
# Processor fields that name classes rather than change pixels.
_PROCESSOR_IGNORED_KEYS = {"processor_class", "_processor_class"}


# ---------------------------------------------------------------------------------------- loading
def load_source(cfg: DataConfig) -> datasets.DatasetDict:
    """A save_to_disk folder, an image folder (``split/class/image``) or a hub dataset id."""
    path = Path(cfg.dataset).expanduser()
    if path.is_dir():
        if (path / "dataset_dict.json").is_file():
            return datasets.load_from_disk(str(path))
        if (path / "state.json").is_file():  # a single saved Dataset: it has no split names of its own
            return datasets.DatasetDict({"train": datasets.load_from_disk(str(path))})
        return datasets.load_dataset("imagefolder", data_dir=str(path))
    if cfg.dataset.startswith(("/", "./", "../", "~")) or path.exists():
        raise ConfigError(f"data.dataset={cfg.dataset!r}: no such folder; give an existing folder or a hub dataset id")
    source = datasets.load_dataset(cfg.dataset, revision=cfg.revision)
    if not isinstance(source, datasets.DatasetDict):
        raise ConfigError(f"data.dataset={cfg.dataset!r}: expected a dataset with named splits, got {type(source).__name__}")
    return source


def _pick_split(source: datasets.DatasetDict, name: str, field_name: str, dataset: str) -> datasets.Dataset:
    if name not in source:
        raise ConfigError(f"{field_name}={name!r}: {dataset} has no such split; use one of {', '.join(source)}")
    if len(source[name]) == 0:
        raise ConfigError(f"{field_name}={name!r}: split {name!r} of {dataset} is empty; use another split")
    return source[name]


@dataclass(frozen=True)
class ColumnInfo:
    image_column: str
    label_column: str
    class_names: list[str]


def _type_name(feature: Any) -> str:
    return feature.dtype if isinstance(feature, datasets.Value) else type(feature).__name__


def _describe(features: datasets.Features) -> str:
    return ", ".join(f"{name} ({_type_name(f)})" for name, f in features.items())


def detect_columns(ds: datasets.Dataset | datasets.DatasetDict, cfg: DataConfig) -> ColumnInfo:
    """The Image-typed and ClassLabel-typed columns, unless named in the config."""
    if isinstance(ds, datasets.DatasetDict):
        ds = ds["train"] if "train" in ds else next(iter(ds.values()))
    features = ds.features
    found = _describe(features)

    def pick(configured: str | None, kind: type, field_name: str) -> str:
        if configured is not None:
            if configured not in features:
                raise ConfigError(f"{field_name}={configured!r}: no such column; columns are {found}")
            return configured
        matches = [name for name, f in features.items() if isinstance(f, kind)]
        if len(matches) != 1:
            what = "no" if not matches else f"{len(matches)} ({', '.join(matches)})"
            raise ConfigError(
                f"{field_name}=None: cannot decide, {what} columns of type {kind.__name__}; columns are {found}; "
                f"set {field_name} to one of {', '.join(features)}"
            )
        return matches[0]

    image_column = pick(cfg.image_column, datasets.Image, "data.image_column")
    label_column = pick(cfg.label_column, datasets.ClassLabel, "data.label_column")
    if not isinstance(features[image_column], datasets.Image):
        raise ConfigError(
            f"data.image_column={image_column!r}: is {_type_name(features[image_column])}, not Image; columns are {found}"
        )
    label = features[label_column]
    if not isinstance(label, datasets.ClassLabel):
        raise ConfigError(
            f"data.label_column={label_column!r}: is {_type_name(label)}, not ClassLabel, "
            "so the class names are unknown; cast it with Dataset.cast_column(name, ClassLabel(names=[...])) "
            "or Dataset.class_encode_column"
        )
    return ColumnInfo(image_column, label_column, list(label.names))


# ---------------------------------------------------------------------------------------- cache key
def cache_root(cfg: DataConfig) -> Path:
    root = cfg.cache_dir or os.environ.get("VIT_TRAIN_CACHE") or "~/.cache/vit_train"
    return Path(root).expanduser() / "prepared"


def processor_settings(processor: Any) -> dict[str, Any]:
    """What in a processor changes the pixels: its serialised settings, class name included (the fast
    and slow processors resize differently), without the fields that only name a wrapper class."""
    return {k: v for k, v in sorted(processor.to_dict().items()) if k not in _PROCESSOR_IGNORED_KEYS}


def _folder_identity(path: Path) -> str:
    # Content identity of an image folder without reading every image: relative path, size and mtime
    # of each file (what make and datasets' own data-file hashing use). Editing or adding an image
    # gives a new key, and so does copying the folder without its times (a rebuild, never a stale hit).
    h = hashlib.sha256()
    for f in sorted(p for p in path.rglob("*") if p.is_file()):
        st = f.stat()
        h.update(f"{f.relative_to(path).as_posix()}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    return h.hexdigest()


def _source_identity(cfg: DataConfig, splits: dict[str, datasets.Dataset]) -> dict[str, Any]:
    path = Path(cfg.dataset).expanduser()
    if path.is_dir() and not (path / "dataset_dict.json").is_file() and not (path / "state.json").is_file():
        return {"kind": "imagefolder", "files": _folder_identity(path)}
    # save_to_disk keeps the fingerprint in state.json; a hub dataset's derives from its resolved
    # data files (repo commit), so a new revision gives a new fingerprint.
    return {"kind": "datasets", "fingerprints": {role: ds._fingerprint for role, ds in splits.items()}}


def _slug(dataset: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", Path(dataset.rstrip("/")).name or "dataset")[:40]


# ---------------------------------------------------------------------------------------- building
def _process_batch(batch: dict[str, list], processor: Any, image_column: str, label_column: str) -> dict[str, Any]:
    # Images may be grey or RGBA (PNG folders often are); the model wants 3 channels.
    images = [im if im.mode == "RGB" else im.convert("RGB") for im in batch[image_column]]
    pixel_values = processor(images=images, return_tensors="np")["pixel_values"]
    return {"pixel_values": pixel_values.astype(np.float16), "labels": batch[label_column]}


def _build_split(ds: datasets.Dataset, cols: ColumnInfo, processor: Any, out_file: Path, key: str) -> None:
    probe = _process_batch(ds[:1], processor, cols.image_column, cols.label_column)["pixel_values"]
    features = datasets.Features(
        {"pixel_values": datasets.Array3D(shape=probe.shape[1:], dtype="float16"), "labels": datasets.Value("int64")}
    )
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    num_proc = min(8, cpus) if len(ds) >= _PARALLEL_MIN_SAMPLES and cpus > 1 else None
    processed = ds.map(
        _process_batch,
        batched=True,
        batch_size=64,
        fn_kwargs={"processor": processor, "image_column": cols.image_column, "label_column": cols.label_column},
        remove_columns=ds.column_names,
        features=features,
        num_proc=num_proc,
        # Arrow scratch goes into our temp folder (deleted with it), never into datasets' shared cache.
        cache_file_name=str(out_file.with_suffix(".arrow")),
        load_from_cache_file=False,
        new_fingerprint=f"{key}-{out_file.stem}",  # hashing a processor object is slow and unstable
        desc=f"pre-processing {out_file.stem}",
    )
    # Copy into one contiguous array batch by batch: peak memory = the result plus one batch.
    pixel_values = np.empty((len(processed), *probe.shape[1:]), dtype=np.float16)
    labels = np.empty(len(processed), dtype=np.int64)
    numpy_view = processed.with_format("numpy")
    for start in range(0, len(processed), _COPY_BATCH):
        chunk = numpy_view[start : start + _COPY_BATCH]
        pixel_values[start : start + len(chunk["labels"])] = chunk["pixel_values"]
        labels[start : start + len(chunk["labels"])] = chunk["labels"]
    save_file({"pixel_values": torch.from_numpy(pixel_values), "labels": torch.from_numpy(labels)}, str(out_file))
    os.chmod(out_file, default_file_mode())  # safetensors writes 0600; a shared cache must be readable by its group
    del processed, numpy_view
    for scratch in out_file.parent.glob("*.arrow"):
        scratch.unlink()


def prepare(cfg: DataConfig, processor: Any) -> PreparedData:
    """Pre-processed train and eval splits, from the cache when present, else built once (by exactly
    one of the processes asking at the same time; the others wait for it and then read)."""
    source = load_source(cfg)
    splits = {
        "train": _pick_split(source, cfg.train_split, "data.train_split", cfg.dataset),
        "eval": _pick_split(source, cfg.eval_split, "data.eval_split", cfg.dataset),
    }
    cols = detect_columns(splits["train"], cfg)
    material = {
        "format": CACHE_FORMAT,
        "source": _source_identity(cfg, splits),
        "splits": {"train": cfg.train_split, "eval": cfg.eval_split},
        "columns": {"image": cols.image_column, "label": cols.label_column},
        "max_samples": {"train": cfg.max_train_samples, "eval": cfg.max_eval_samples},
        "processor": processor_settings(processor),
        "storage_dtype": str(STORAGE_DTYPE),
    }
    key = hashlib.sha256(json.dumps(material, sort_keys=True, default=str).encode()).hexdigest()[:16]
    root = cache_root(cfg)
    final = root / f"{_slug(cfg.dataset)}-{key}"
    if is_complete(final):
        try:
            return open_prepared(final, built=False)
        except CorruptCacheError as e:
            logger.warning("pre-processed cache is damaged, rebuilding it: %s", e)
    root.mkdir(parents=True, exist_ok=True)
    lock = acquire_build_lock(root / f"{final.name}.lock", final)
    try:
        if is_complete(final):  # completed (or rebuilt) by another process while we waited
            try:
                return open_prepared(final, built=False)
            except CorruptCacheError:
                pass  # still the damaged one: we hold the lock, _build removes it
        _build(final, splits, cols, processor, cfg, material, key)
        return open_prepared(final, built=True)
    finally:
        lock.release()


def _build(
    final: Path,
    splits: dict[str, datasets.Dataset],
    cols: ColumnInfo,
    processor: Any,
    cfg: DataConfig,
    material: dict[str, Any],
    key: str,
) -> None:
    # We hold the lock, so any temp folder of this key, or a final folder without meta.json, was left
    # by a builder that died (or by hand): remove it.
    for stale in [*final.parent.glob(f".tmp-{final.name}-*"), *([final] if final.exists() else [])]:
        shutil.rmtree(stale, ignore_errors=True)
    tmp = final.parent / f".tmp-{final.name}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    tmp.mkdir()
    started = time.time()
    logger.info("pre-processing %s (%s) into %s", cfg.dataset, ", ".join(f"{r}={s.split}" for r, s in splits.items()), final)
    limits = {"train": cfg.max_train_samples, "eval": cfg.max_eval_samples}
    sizes = {}
    for role, ds in splits.items():
        if limits[role] is not None:
            ds = ds.select(range(min(limits[role], len(ds))))
        _build_split(ds, cols, processor, tmp / f"{role}.safetensors", key)
        sizes[role] = len(ds)
    meta = {
        "key": key,
        "dataset": cfg.dataset,
        "class_names": cols.class_names,
        "image_column": cols.image_column,
        "label_column": cols.label_column,
        "num_samples": sizes,
        "created_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "build_seconds": round(time.time() - started, 3),
        "key_material": material,
    }
    (tmp / "meta.json").write_text(json.dumps(meta, indent=2, default=str))
    os.rename(tmp, final)  # atomic on one file system: readers see nothing or a complete folder
