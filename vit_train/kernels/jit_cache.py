"""Build ColossalAI's JIT kernels once into a shared cache, under a lock that cannot go stale.

HybridAdam (and Gemini, which needs it) loads two C++/CUDA extensions, ``cpu_adam`` and
``fused_optim``, that ColossalAI compiles on first use (40 s to minutes). Left alone, every job of a
grid compiles them at once into ``~/.cache/colossalai/torch_extensions/...`` (a path colossalai
0.5.0 hard-codes from ``$HOME``; ``TORCH_EXTENSIONS_DIR`` is not read, because colossalai passes its
own ``build_directory`` to ``torch.utils.cpp_extension.load``). Torch serialises builders of one
folder with a "baton": a file named ``lock`` created with O_EXCL and removed when the build ends.
A builder killed half-way (preemption, time limit, OOM) leaves that file behind, and every later
process waits on it forever.

This module:

* :func:`use_kernel_cache` points colossalai's JIT folder (and ``TORCH_EXTENSIONS_DIR``) into a
  cache folder, and makes every colossalai JIT build of the process run under :func:`build_lock`;
* :func:`build_lock` is an ``fcntl.flock`` on ``<cache>/build.lock``: the kernel drops it when its
  holder dies, so it never goes stale; one process builds, the others wait, then reuse the build;
* :func:`clear_stale_baton` removes torch's baton. It runs only while we hold the flock, and every
  builder of the cache builds only while holding it, so a baton seen then was left by a dead builder;
* :func:`prepare_kernels` builds or loads the named kernels (``python submit.py kernels --cache DIR``,
  whose command line lives in :mod:`hpc.kernels`).

Where to run the prepare step: the build must match the nodes that use it. ``cpu_adam`` is compiled
with ``-march=native`` and the CUDA kernels for the GPUs torch sees, so run it on a compute node of
the partition (``srun ... python submit.py kernels --cache DIR``), or let the first job of the grid
build (the others wait for it). The folder name includes the CPU's instruction-set flags, so nodes
of another CPU type build their own copy instead of crashing on an illegal instruction; set
``TORCH_CUDA_ARCH_LIST`` in the site profile so nodes with different GPUs agree on one build.
Jobs find the cache through ``$VIT_TRAIN_KERNEL_CACHE`` (see :func:`kernel_cache_from_env`).

The cache folder must be on a file system with working flock (NFSv4, Lustre mounted with ``flock``;
not ``localflock``, which locks per node only).
"""

from __future__ import annotations

import errno
import fcntl
import hashlib
import os
import platform
import socket
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

KERNEL_CACHE_ENV = "VIT_TRAIN_KERNEL_CACHE"
"""Environment variable naming the shared kernel cache folder in jobs."""
LOCK_FILE = "build.lock"
BATON_FILE = "lock"  # torch.utils.cpp_extension's FileBaton in each build folder

# Short name -> colossalai.kernel.kernel_loader class (it picks the extension for this machine).
KERNELS: dict[str, str] = {
    "cpu_adam": "CPUAdamLoader",
    "fused_optim": "FusedOptimizerLoader",
    "layernorm": "LayerNormLoader",
    "moe": "MoeLoader",
    "inference_ops": "InferenceOpsLoader",
    "scaled_masked_softmax": "ScaledMaskedSoftmaxLoader",
    "scaled_upper_triangle_masked_softmax": "ScaledUpperTriangleMaskedSoftmaxLoader",
}
DEFAULT_KERNELS = ("cpu_adam", "fused_optim")
"""What HybridAdam loads (CPUAdam.__init__ and HybridAdam.__init__ each load one)."""

T = TypeVar("T")
Log = Callable[[str], None]
_HELD: set[Path] = set()  # cache folders whose build lock this process holds (the lock is re-entrant)


def _log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


# ---------------------------------------------------------------------------- the lock
def _try_flock(fd: int, path: Path) -> bool:
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return True
    except BlockingIOError:
        return False
    except OSError as e:
        if e.errno in (errno.ENOSYS, errno.EOPNOTSUPP, errno.ENOLCK, errno.EINVAL):
            raise RuntimeError(
                f"{path}: the file system does not support flock, which the kernel cache needs so that a "
                "killed builder never blocks the others; put the cache on a local disk or a mount with flock"
            ) from e
        raise


@contextmanager
def build_lock(cache_dir: str | os.PathLike[str], *, timeout_s: float | None = None,
               log: Log = _log) -> Iterator[Path]:
    """Hold ``<cache_dir>/build.lock`` exclusively (flock); re-entrant within one process.

    Waits for the current holder, polling, for at most ``timeout_s`` (None: as long as it takes;
    a holder that dies releases the lock at once, so "forever" only means "while a build runs").
    """
    root = Path(cache_dir).resolve()
    if root in _HELD:
        yield root
        return
    root.mkdir(parents=True, exist_ok=True)
    path = root / LOCK_FILE
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o664)
    try:
        if not _try_flock(fd, path):
            holder = path.read_text().strip() or "another process"
            log(f"kernels: waiting for {holder} to finish building in {root}")
            started = time.monotonic()
            while not _try_flock(fd, path):
                if timeout_s is not None and time.monotonic() - started > timeout_s:
                    raise TimeoutError(f"{path}: still held by {holder} after {timeout_s:.0f} s")
                time.sleep(0.2)
            log(f"kernels: lock acquired after {time.monotonic() - started:.1f} s")
        # Who holds it, for the message of the next waiter (informational only: the flock decides).
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"pid {os.getpid()} on {socket.gethostname()} since {time.strftime('%H:%M:%S')}\n".encode(), 0)
        _HELD.add(root)
        try:
            yield root
        finally:
            _HELD.discard(root)
    finally:
        os.close(fd)  # closing the descriptor releases the flock


def clear_stale_baton(ext_dir: str | os.PathLike[str], *, log: Log = _log) -> bool:
    """Remove torch's baton (``<ext_dir>/lock``) left by a dead builder; True if one was removed.

    Must be called inside :func:`build_lock` of a folder that contains ``ext_dir``: since every
    builder of that cache builds only while holding the flock, and we hold it, no live process is
    building there, so a baton present now is stale.
    """
    ext = Path(ext_dir).resolve()
    if not any(ext == held or held in ext.parents for held in _HELD):
        raise RuntimeError(
            f"clear_stale_baton({ext}) must run inside build_lock(<a folder containing it>): only then is it "
            "certain that no live process is building there"
        )
    baton = ext / BATON_FILE
    try:
        age = time.time() - baton.stat().st_mtime
    except FileNotFoundError:
        return False
    log(f"kernels: removing stale torch extension lock {baton}, left {age:.0f} s ago by a build that died "
        f"(nobody holds {LOCK_FILE}); the extension will be rebuilt")
    baton.unlink(missing_ok=True)
    return True


def locked_load(cache_dir: str | os.PathLike[str], ext_dir: str | os.PathLike[str], load: Callable[[], T], *,
                timeout_s: float | None = None, log: Log = _log) -> T:
    """``load()`` (a torch JIT build/load into ``ext_dir``) under the cache's lock, stale baton cleared first."""
    with build_lock(cache_dir, timeout_s=timeout_s, log=log):
        clear_stale_baton(ext_dir, log=log)
        return load()


# ---------------------------------------------------------------------------- colossalai
def _isa_tag() -> str:
    """8 hex digits of the CPU's instruction-set flags: a build with -march=native is only valid there."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith(("flags", "Features")):
                flags = " ".join(sorted(line.split(":", 1)[1].split()))
                return hashlib.sha256(flags.encode()).hexdigest()[:8]
    except OSError:
        pass
    return "unknown"


def colossalai_build_dir(cache_dir: str | os.PathLike[str]) -> Path:
    """Where colossalai's JIT kernels of this software stack and CPU type live inside the cache."""
    import colossalai
    import torch

    accel = f"cu{torch.version.cuda.replace('.', '')}" if torch.version.cuda else "cpu"
    stack = f"colossalai{colossalai.__version__}_torch{torch.__version__.split('+')[0]}_{accel}"
    py = f"py{sys.version_info.major}{sys.version_info.minor}"
    return Path(cache_dir).resolve() / "colossalai" / f"{stack}_{py}_{platform.machine()}_isa-{_isa_tag()}"


def torch_extensions_dir(cache_dir: str | os.PathLike[str]) -> Path:
    """TORCH_EXTENSIONS_DIR inside the cache, for plain torch JIT extensions (load / load_inline)."""
    return Path(cache_dir).resolve() / "torch_extensions"


_PATCHED: dict[str, Any] = {}


def use_kernel_cache(cache_dir: str | os.PathLike[str], *, log: Log = _log) -> Path:
    """Send this process's colossalai JIT builds into the cache, each under :func:`build_lock`.

    Patches colossalai 0.5.0 in this process only (idempotent): its folder function
    ``_Extension.get_jit_extension_folder_path`` (it has no setting; it derives the folder from
    $HOME), and ``build_jit`` of its C++ and CUDA extension classes, wrapped to take the lock and
    clear a stale baton first. Call it once at job start: HybridAdam's own kernel loads then build
    or load in the cache. Returns the build folder.
    """
    from colossalai.kernel.extensions.base_extension import _Extension
    from colossalai.kernel.extensions.cpp_extension import _CppExtension
    from colossalai.kernel.extensions.cuda_extension import _CudaExtension

    cache = Path(cache_dir).resolve()
    build_dir = colossalai_build_dir(cache)
    os.environ["TORCH_EXTENSIONS_DIR"] = str(torch_extensions_dir(cache))
    if _PATCHED.get("cache") == cache:
        return build_dir
    _Extension.get_jit_extension_folder_path = staticmethod(lambda: str(build_dir))  # type: ignore[method-assign]
    for cls in (_CppExtension, _CudaExtension):
        original = _PATCHED.setdefault(f"{cls.__name__}.build_jit", cls.__dict__["build_jit"])

        def build_jit(self: Any, _original: Callable[[Any], Any] = original) -> Any:
            build_dir.mkdir(parents=True, exist_ok=True)
            return locked_load(cache, build_dir, lambda: _original(self), log=log)

        cls.build_jit = build_jit  # type: ignore[method-assign]
    _PATCHED["cache"] = cache
    return build_dir


def kernel_cache_from_env(env: dict[str, str] | None = None) -> Path | None:
    """The kernel cache named by $VIT_TRAIN_KERNEL_CACHE, or None."""
    value = (os.environ if env is None else env).get(KERNEL_CACHE_ENV)
    return Path(value).expanduser() if value else None


@dataclass(frozen=True)
class KernelStatus:
    name: str
    """Short name (a key of KERNELS)."""
    extension: str | None
    """The colossalai extension chosen for this machine, e.g. cpu_adam_x86; None if none fits."""
    state: str
    """built (compiled now) | cached (found built) | prebuilt (installed with colossalai) | unavailable."""
    seconds: float
    """Time to build or load."""
    detail: str
    """The module file, or why the kernel is unavailable."""


def prepare_kernels(cache_dir: str | os.PathLike[str], names: Sequence[str] = DEFAULT_KERNELS, *,
                    timeout_s: float | None = None, log: Log = _log) -> list[KernelStatus]:
    """Build (first caller) or load (the others) each named kernel in the shared cache."""
    unknown = [n for n in names if n not in KERNELS]
    if unknown:
        raise ValueError(f"unknown kernel(s) {unknown}; valid: {', '.join(KERNELS)}")
    build_dir = use_kernel_cache(cache_dir, log=log)
    from colossalai.kernel import kernel_loader

    results = []
    with build_lock(cache_dir, timeout_s=timeout_s, log=log):
        for name in names:
            classes = getattr(kernel_loader, KERNELS[name]).REGISTRY
            usable = [ext for ext in (cls() for cls in classes) if ext.is_available()]
            if not usable:
                why = f"none of {', '.join(c.__name__ for c in classes)} can run on this machine (no CUDA device?)"
                results.append(KernelStatus(name, None, "unavailable", 0.0, why))
                continue
            ext = max(usable, key=lambda e: e.priority)
            try:
                ext.assert_compatible()
            except AssertionError as e:
                results.append(KernelStatus(name, ext.name, "unavailable", 0.0, str(e)))
                continue
            existed = (build_dir / f"{ext.name}.so").exists()
            started = time.monotonic()
            module = ext.load()
            where = str(getattr(module, "__file__", "") or "")
            state = "cached" if existed else "built"
            if not where.startswith(str(build_dir)):
                state = "prebuilt"
            results.append(KernelStatus(name, ext.name, state, time.monotonic() - started, where))
    return results
