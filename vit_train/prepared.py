"""The pre-processed splits as the loop reads them: memory-mapped safetensors, checked at open.

:mod:`vit_train.data` builds a cache folder once (see its docstring for the layout); this module
opens one (:func:`open_prepared`), tells a complete folder from a build in progress, and holds the
flock that lets exactly one process build. It imports no ``datasets``: the benchmark and a run
whose cache exists read splits without it.
"""

from __future__ import annotations

import errno
import json
import logging
import os
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import filelock
import numpy as np
import torch

from vit_train.config import ConfigError

logger = logging.getLogger("vit_train.data")

STORAGE_DTYPE = torch.float16
"""dtype of the stored pixel values (see vit_train.data for why float16 loses nothing)."""


class CorruptCacheError(ValueError):
    """A cache file that cannot be what the builder wrote (truncated, overwritten, unparsable)."""


def _mmap_safetensors(path: Path) -> dict[str, torch.Tensor]:
    """Memory-map a safetensors file copy-on-write: no read at open, pages shared by every process
    on the node through the page cache, and writable tensors (torch warns on read-only arrays) whose
    writes never reach the file. The header and the file size are checked (no hashing: that would
    read the whole split at every start); a mismatch raises :class:`CorruptCacheError`."""
    dtypes = {"F16": np.float16, "F32": np.float32, "I64": np.int64}
    try:
        size = path.stat().st_size
        with open(path, "rb") as f:
            (header_size,) = struct.unpack("<Q", f.read(8))
            if 8 + header_size > size:
                raise ValueError(f"header of {header_size} bytes in a file of {size}")
            header = json.loads(f.read(header_size))
        out, data_end = {}, 0
        for name, info in header.items():
            if name == "__metadata__":
                continue
            start, end = info["data_offsets"]
            dtype = np.dtype(dtypes[info["dtype"]])
            shape = tuple(info["shape"])
            if end - start != dtype.itemsize * int(np.prod(shape)):
                raise ValueError(f"{name}: offsets {start}..{end} do not hold {shape} {info['dtype']}")
            data_end = max(data_end, end)
            arr = np.memmap(path, dtype=dtype, mode="c", offset=8 + header_size + start, shape=shape)
            out[name] = torch.from_numpy(arr)
        if 8 + header_size + data_end != size:
            raise ValueError(f"{size} bytes, the header describes {8 + header_size + data_end}")
        if set(out) != {"pixel_values", "labels"}:
            raise ValueError(f"tensors {sorted(out)}, expected pixel_values and labels")
    except (OSError, ValueError, KeyError, TypeError, struct.error) as e:
        raise CorruptCacheError(f"{path}: {e}") from e
    return out


class TensorSplit(torch.utils.data.Dataset):
    """One pre-processed split: a contiguous [N, C, H, W] tensor and its labels, memory-mapped.

    ``__getitem__`` returns float32 pixel values for a plain DataLoader; a GPU loop should rather
    take :meth:`tensors` and index whole batches, moving them to the device as float16: ViTModel
    (and ColossalAI's pipeline forward) cast pixel_values to the patch-embedding weight dtype, so the
    cast happens on the device and the copy is half the size.
    Pickles as its file path, so spawned DataLoader workers re-map the file instead of copying it.
    """

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        tensors = _mmap_safetensors(self.path)
        self.pixel_values, self.labels = tensors["pixel_values"], tensors["labels"]

    def __len__(self) -> int:
        return self.labels.shape[0]

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        return {"pixel_values": self.pixel_values[index].float(), "labels": self.labels[index]}

    def tensors(self, dtype: torch.dtype | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """(pixel_values [N, C, H, W], labels [N] int64); dtype=None keeps the stored float16."""
        pv = self.pixel_values if dtype is None else self.pixel_values.to(dtype)
        return pv, self.labels

    def __getstate__(self) -> dict[str, Any]:
        return {"path": str(self.path)}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(Path(state["path"]))


@dataclass(frozen=True)
class PreparedData:
    train: TensorSplit
    """The training split (after max_train_samples)."""
    eval: TensorSplit
    """The evaluation split (after max_eval_samples), in dataset order."""
    class_names: list[str]
    """Label names by index, from the ClassLabel column: the model's id2label."""
    cache_path: Path
    """The cache folder read (see the module docstring for its layout)."""
    built: bool
    """True when this call built the cache; False when it read one (built earlier or by another process)."""


def default_file_mode() -> int:
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


def acquire_build_lock(path: Path, final: Path) -> filelock.BaseFileLock:
    # flock is dropped by the kernel when its holder dies, so a killed builder cannot block the rest
    # forever. filelock >= 4 would fall back to an existence-based lock (which a kill leaves behind)
    # on file systems without flock; refuse that and fail loudly instead (filelock < 4 does so itself).
    try:
        lock = filelock.FileLock(str(path), fallback_to_soft=False)
    except TypeError:
        lock = filelock.FileLock(str(path))
    try:
        try:
            lock.acquire(timeout=0)
        except filelock.Timeout:
            logger.info("waiting for another process to finish building %s", final)
            lock.acquire()
    except (NotImplementedError, OSError) as e:
        if isinstance(e, OSError) and e.errno != errno.ENOSYS:
            raise
        raise ConfigError(
            f"data.cache_dir={str(path.parent.parent)!r}: its file system does not support flock, which the cache "
            "needs so that a killed builder never blocks the others; use a local disk or a mount with flock enabled"
        ) from e
    return lock


def is_complete(folder: Path) -> bool:
    return (folder / "meta.json").is_file()  # written last, inside the temp folder, before the rename


def open_prepared(folder: Path, built: bool) -> PreparedData:
    try:
        meta = json.loads((folder / "meta.json").read_text())
        class_names, sizes = list(meta["class_names"]), meta["num_samples"]
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise CorruptCacheError(f"{folder / 'meta.json'}: {e}") from e
    train, evaluation = TensorSplit(folder / "train.safetensors"), TensorSplit(folder / "eval.safetensors")
    for role, split in (("train", train), ("eval", evaluation)):
        if len(split) != sizes.get(role) or split.pixel_values.shape[0] != len(split):
            raise CorruptCacheError(f"{split.path}: {len(split)} samples, meta.json records {sizes.get(role)}")
    return PreparedData(train=train, eval=evaluation, class_names=class_names, cache_path=folder, built=built)
