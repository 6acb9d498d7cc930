"""Checkpoints that are complete or absent.

Layout of a run folder::

    checkpoints/step-000120/        a complete checkpoint
        model/                      booster.save_model(shard=True, safetensors): full HF key names
        optimizer/                  booster.save_optimizer(shard=True): full (unsharded) state
        rng/rank-00000.safetensors  each rank's RNG streams (tensors only, no pickle)
        trainer_state.json          epoch, step, sampler position, scheduler, config, versions
        COMPLETE.json               written last: manifest of every file with size and sha256
    checkpoints/.tmp-step-000140/   a save in progress (or killed): never resumed from

All ranks write into the temporary folder (TP/PP/ZeRO shards come from several ranks), meet at a
barrier, then rank 0 writes the manifest, renames the folder and deletes old ones past keep_last.
Because model and optimizer are saved with full key names, a checkpoint loads under any plugin or
layout; what differs is only the RNG, restored when the world size matches.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
import shutil
import time
from pathlib import Path
from typing import Any

import torch

from vit_train.distributed.process_group import barrier, broadcast_object
from vit_train.components.fsutil import atomic_write_text, fsync_dir, make_private_dir

log = logging.getLogger(__name__)

STEP_RE = re.compile(r"^step-(\d{6,})$")
MARKER = "COMPLETE.json"


class CheckpointError(RuntimeError):
    """A checkpoint cannot be used for this run; the message says why and what to do."""


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            h.update(block)
    return h.hexdigest()


def _manifest(folder: Path) -> dict[str, dict[str, Any]]:
    files = sorted(p for p in folder.rglob("*") if p.is_file() and p.name != MARKER)
    return {str(p.relative_to(folder)): {"size": p.stat().st_size, "sha256": _sha256(p)} for p in files}


def verify(folder: Path) -> str | None:
    """None if the checkpoint is complete and intact; otherwise the reason it is not."""
    marker = folder / MARKER
    if not marker.is_file():
        return "no COMPLETE.json marker (the save did not finish)"
    try:
        manifest = json.loads(marker.read_text())["files"]
    except (json.JSONDecodeError, KeyError, TypeError) as e:
        return f"unreadable marker: {e}"
    for rel, meta in manifest.items():
        p = folder / rel
        if not p.is_file():
            return f"missing file {rel}"
        if p.stat().st_size != meta["size"]:
            return f"{rel} has {p.stat().st_size} bytes, manifest says {meta['size']} (truncated?)"
        if _sha256(p) != meta["sha256"]:
            return f"{rel} content differs from its manifest checksum (corrupted)"
    return None


def list_checkpoints(ckpt_root: Path) -> list[tuple[int, Path]]:
    if not ckpt_root.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in ckpt_root.iterdir() if (m := STEP_RE.match(p.name)) and p.is_dir()]
    return sorted(found)


def newest_complete(ckpt_root: Path) -> Path | None:
    """The newest checkpoint that verifies; corrupt newer ones are reported and skipped."""
    for step, path in reversed(list_checkpoints(ckpt_root)):
        problem = verify(path)
        if problem is None:
            return path
        log.warning("skipping checkpoint %s: %s; trying an older one", path, problem)
    return None


def _save_rng(path: Path) -> None:
    import random

    import numpy as np
    from safetensors.torch import save_file

    py_version, py_state, py_gauss = random.getstate()
    np_kind, np_keys, np_pos, np_has_gauss, np_gauss = np.random.get_state()
    tensors = {
        "torch_cpu": torch.get_rng_state(),
        "python": torch.tensor(py_state, dtype=torch.int64),
        "numpy_keys": torch.from_numpy(np_keys.astype("int64")),
    }
    if torch.cuda.is_available():
        tensors["torch_cuda"] = torch.cuda.get_rng_state()
    meta = {"python_version": str(py_version), "python_gauss": json.dumps(py_gauss), "numpy_pos": str(np_pos),
            "numpy_has_gauss": str(np_has_gauss), "numpy_gauss": repr(float(np_gauss)), "numpy_kind": np_kind}
    save_file(tensors, str(path), metadata=meta)


def _load_rng(path: Path) -> None:
    import random

    import numpy as np
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata()
        t = {k: f.get_tensor(k) for k in f.keys()}
    torch.set_rng_state(t["torch_cpu"])
    if "torch_cuda" in t and torch.cuda.is_available():
        torch.cuda.set_rng_state(t["torch_cuda"])
    random.setstate((int(meta["python_version"]), tuple(t["python"].tolist()), json.loads(meta["python_gauss"])))
    np.random.set_state((meta["numpy_kind"], t["numpy_keys"].numpy().astype("uint32"), int(meta["numpy_pos"]),
                         int(meta["numpy_has_gauss"]), float(meta["numpy_gauss"])))


class CheckpointManager:
    """Save and restore collective checkpoints of one run folder."""

    def __init__(self, run_dir: Path, keep_last: int, rank: int, world_size: int, faults: Any = None) -> None:
        self.root = run_dir / "checkpoints"
        self.keep_last = keep_last
        self.rank = rank
        self.world_size = world_size
        self._fault = faults.in_checkpoint if faults is not None else (lambda point: None)

    def latest(self) -> Path | None:
        """Agreed on by all ranks: rank 0 verifies and broadcasts its choice."""
        choice = newest_complete(self.root) if self.rank == 0 else None
        return broadcast_object(choice, src=0)  # type: ignore[return-value]

    def save(self, step: int, booster: Any, model: Any, optimizer: Any, state: dict[str, Any]) -> Path:
        """Collective: every rank must call it at the same step."""
        final = self.root / f"step-{step:06d}"
        tmp = self.root / f".tmp-step-{step:06d}"
        t0 = time.perf_counter()
        if self.rank == 0:
            make_private_dir(self.root)
            if tmp.exists():  # left by a killed attempt at the same step
                shutil.rmtree(tmp)
            make_private_dir(tmp / "rng")
        barrier()
        booster.save_model(model, str(tmp / "model"), shard=True, use_safetensors=True)
        self._fault("after_model")
        booster.save_optimizer(optimizer, str(tmp / "optimizer"), shard=True)
        self._fault("after_optimizer")
        _save_rng(tmp / "rng" / f"rank-{self.rank:05d}.safetensors")
        barrier()
        if self.rank == 0:
            state = {**state, "world_size": self.world_size, "saved_at": time.time()}
            self._fault("before_state")
            atomic_write_text(tmp / "trainer_state.json", json.dumps(state, indent=1))
            self._fault("before_marker")
            atomic_write_text(tmp / MARKER, json.dumps({"step": step, "files": _manifest(tmp)}, indent=1))
            self._fault("before_rename")
            if final.exists():  # an earlier, superseded save of the same step
                shutil.rmtree(final)
            tmp.rename(final)
            fsync_dir(self.root)
            self._prune()
        barrier()
        log.info("checkpoint step %d saved in %.1fs", step, time.perf_counter() - t0)
        return final

    def _prune(self) -> None:
        complete = [p for _, p in list_checkpoints(self.root) if (p / MARKER).is_file()]
        for old in complete[: -self.keep_last]:
            shutil.rmtree(old, ignore_errors=True)

    def load(self, path: Path, booster: Any, model: Any, optimizer: Any, expect: dict[str, Any]) -> dict[str, Any]:
        """Collective restore; checks the checkpoint belongs to this model before touching weights."""
        state = json.loads((path / "trainer_state.json").read_text())
        check_compatible(state, expect, path)
        booster.load_model(model, str(path / "model"))
        booster.load_optimizer(optimizer, str(path / "optimizer"))
        steps_on_param_device(getattr(optimizer, "optim", optimizer))
        rng = path / "rng" / f"rank-{self.rank:05d}.safetensors"
        if state.get("world_size") == self.world_size and rng.is_file():
            _load_rng(rng)
        else:
            log.info("world size changed (%s -> %d): RNG streams start fresh from the seed",
                     state.get("world_size"), self.world_size)
        barrier()
        return state


def steps_on_param_device(optim: Any) -> None:
    """Put a fused/capturable torch optimizer's ``step`` counters on their parameters' device, as
    torch's own ``load_state_dict`` does: ColossalAI's loaders leave them where they were read (the
    CPU), and the fused CUDA kernels read the counter through a device pointer (a CUDA graph would
    also never run a CPU increment). Other optimizers (HybridAdam) are left as they are."""
    for group in getattr(optim, "param_groups", []):
        if not (group.get("fused") or group.get("capturable")):
            continue
        for p in group["params"]:
            step = optim.state.get(p, {}).get("step")
            if isinstance(step, torch.Tensor) and step.device != p.device:
                optim.state[p]["step"] = step.to(device=p.device, dtype=torch.float32)


def check_compatible(state: dict[str, Any], expect: dict[str, Any], path: Path) -> None:
    """Refuse a checkpoint from another model/label set or an incompatible transformers release."""
    saved = state.get("identity", {})
    for key in ("model", "class_names", "num_hidden_layers", "hidden_size"):
        if key in expect and saved.get(key) != expect[key]:
            raise CheckpointError(
                f"checkpoint {path} was saved for {key}={saved.get(key)!r} but this run has {key}={expect[key]!r}; "
                "point output_dir at a new folder or delete that run's checkpoints/ to start over"
            )
    ours = expect.get("transformers_major")
    theirs = state.get("versions", {}).get("transformers", "")
    if ours is not None and theirs and theirs.split(".")[0] != str(ours):
        raise CheckpointError(
            f"checkpoint {path} was written with transformers {theirs}; ViT key names differ across major "
            f"versions, so it cannot load under transformers {ours}.x: install transformers=={theirs}"
        )
