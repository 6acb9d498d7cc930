"""vit_train.kernels.jit_cache: one build per cache under a flock, stale torch batons recovered.

Real everything: real C++ extensions compiled by gcc through torch.utils.cpp_extension (a one-function
``load_inline`` add, ~30 s on 2 cores, most of it parsing torch/extension.h), real processes, a real
SIGKILL mid-build. ColossalAI's own HybridAdam kernels need CUDA, so on this CPU machine the
colossalai path is exercised with a tiny extension built by colossalai's own ``_CppExtension``
machinery (its real build_jit, redirected and locked by ``use_kernel_cache``).
"""

from __future__ import annotations

import fcntl
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from vit_train.kernels import jit_cache
from tests.train_utils import REPO, child_env

# A child that builds the add_one extension with load_inline under the project's lock, recording when
# it held the lock; argv: cache_dir, result.json, lock-held marker file.
LOAD_INLINE_CHILD = textwrap.dedent(
    """
    import json, os, sys, time
    from pathlib import Path
    from vit_train.kernels.jit_cache import build_lock, clear_stale_baton, torch_extensions_dir

    cache, result, marker = Path(sys.argv[1]), Path(sys.argv[2]), Path(sys.argv[3])
    os.environ["TORCH_EXTENSIONS_DIR"] = str(torch_extensions_dir(cache))
    from torch.utils.cpp_extension import load_inline

    with build_lock(cache, timeout_s=120):
        acquired = time.time()
        marker.write_text(str(os.getpid()))
        cleared = clear_stale_baton(torch_extensions_dir(cache) / "add_one")
        module = load_inline(name="add_one", cpp_sources="int add(int a, int b) { return a + b; }",
                             functions=["add"], verbose=True)
        released = time.time()
    result.write_text(json.dumps({"acquired": acquired, "released": released, "sum": module.add(2, 3),
                                  "cleared": cleared, "file": module.__file__}))
    """
)


def _start(script: str, *args: Path, **kw: object) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, "-c", script, *map(str, args)], cwd=REPO, env=child_env(),
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, **kw)  # type: ignore[call-overload]


def _wait_for(cond, timeout: float, what: str) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(0.05)


def _ninja_commands(ext_dir: Path) -> list[str]:
    """Outputs ninja ran a command for, one entry per run (.ninja_log: start end mtime output hash)."""
    lines = (ext_dir / ".ninja_log").read_text().splitlines()
    return [line.split("\t")[3] for line in lines if not line.startswith("#")]


def _finish(proc: subprocess.Popen[str], timeout: float) -> str:
    out, _ = proc.communicate(timeout=timeout)
    assert proc.returncode == 0, out[-4000:]
    return out


@pytest.mark.timeout(150)
def test_two_processes_one_build(tmp_path: Path) -> None:
    """A builds while B, started once A holds the lock, waits; B then reuses A's build (no compile)."""
    cache = tmp_path / "cache"
    a = _start(LOAD_INLINE_CHILD, cache, tmp_path / "a.json", tmp_path / "a.held")
    try:
        _wait_for(lambda: (tmp_path / "a.held").exists(), 60, "A to hold the build lock")
        b = _start(LOAD_INLINE_CHILD, cache, tmp_path / "b.json", tmp_path / "b.held")
        try:
            out_a, out_b = _finish(a, 120), _finish(b, 120)
        finally:
            b.kill()
    finally:
        a.kill()
    ra, rb = (json.loads((tmp_path / f"{n}.json").read_text()) for n in "ab")
    assert ra["sum"] == rb["sum"] == 5
    assert "waiting for pid" in out_b and "waiting" not in out_a
    assert rb["acquired"] >= ra["released"], "B held the lock while A was building"
    ext_dir = jit_cache.torch_extensions_dir(cache) / "add_one"
    assert _ninja_commands(ext_dir) == ["main.o", "add_one.so"], "compiled more than once"
    assert "no work to do" in out_b and "[1/2] c++" in out_a and "c++" not in out_b
    assert not (ext_dir / jit_cache.BATON_FILE).exists()


@pytest.mark.timeout(150)
def test_builder_killed_mid_build_leaves_baton_that_is_recovered(tmp_path: Path) -> None:
    """SIGKILL the builder (and its ninja/c++ children) mid-compile: torch's baton stays and a plain
    torch load waits on it forever; under the project's lock the next build removes it and succeeds."""
    cache = tmp_path / "cache"
    ext_dir = jit_cache.torch_extensions_dir(cache) / "add_one"
    victim = _start(LOAD_INLINE_CHILD, cache, tmp_path / "v.json", tmp_path / "v.held", start_new_session=True)
    try:
        _wait_for(lambda: (ext_dir / jit_cache.BATON_FILE).exists() and (ext_dir / "build.ninja").exists(), 60,
                  "the builder to take torch's baton and start ninja")
        time.sleep(1.0)  # let the compiler run: the kill lands mid-compile (a full compile takes ~30 s)
    finally:
        os.killpg(victim.pid, signal.SIGKILL)
        victim.communicate(timeout=30)
    assert victim.returncode == -signal.SIGKILL and not (tmp_path / "v.json").exists()
    assert (ext_dir / jit_cache.BATON_FILE).exists(), "the killed build should leave torch's baton behind"
    with open(cache / jit_cache.LOCK_FILE) as f:  # ... but not our flock: the kernel dropped it
        fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)

    # Without the project's lock, torch waits on the dead builder's baton with no end.
    plain = textwrap.dedent(
        f"""
        import os
        os.environ["TORCH_EXTENSIONS_DIR"] = {str(jit_cache.torch_extensions_dir(cache))!r}
        from torch.utils.cpp_extension import load_inline
        print("loading", flush=True)
        load_inline(name="add_one", cpp_sources="int add(int a, int b) {{ return a + b; }}", functions=["add"])
        """
    )
    waiter = _start(plain)
    try:
        assert waiter.stdout is not None and waiter.stdout.readline().strip() == "loading"
        time.sleep(3.0)  # a no-op load takes well under a second; a build never starts (the baton is held)
        assert waiter.poll() is None and not (ext_dir / "add_one.so").exists()
    finally:
        waiter.kill()
        waiter.communicate(timeout=30)

    out = _finish(_start(LOAD_INLINE_CHILD, cache, tmp_path / "r.json", tmp_path / "r.held"), 120)
    result = json.loads((tmp_path / "r.json").read_text())
    assert result["sum"] == 5 and result["cleared"] is True
    assert "removing stale torch extension lock" in out
    assert not (ext_dir / jit_cache.BATON_FILE).exists()


def test_lock_rules(tmp_path: Path) -> None:
    """clear_stale_baton refuses to run without the lock; the lock is re-entrant; a wait can time out."""
    with pytest.raises(RuntimeError, match="must run inside build_lock"):
        jit_cache.clear_stale_baton(tmp_path / "ext")
    with jit_cache.build_lock(tmp_path) as root:
        with jit_cache.build_lock(tmp_path):  # re-entrant in one process
            assert jit_cache.clear_stale_baton(root / "ext") is False
        (root / "ext").mkdir()
        (root / "ext" / jit_cache.BATON_FILE).touch()
        assert jit_cache.clear_stale_baton(root / "ext") is True
        holder = (root / jit_cache.LOCK_FILE).read_text()
        assert f"pid {os.getpid()}" in holder

    hold = _start("import sys, time\nfrom vit_train.kernels.jit_cache import build_lock\n"
                  "with build_lock(sys.argv[1]):\n    print('held', flush=True)\n    time.sleep(60)\n", tmp_path)
    try:
        assert hold.stdout is not None and hold.stdout.readline().strip() == "held"
        messages: list[str] = []
        started = time.monotonic()
        with pytest.raises(TimeoutError, match=f"still held by pid {hold.pid}"), \
                jit_cache.build_lock(tmp_path, timeout_s=1.0, log=messages.append):
            pass
        assert time.monotonic() - started < 10
        assert messages and f"waiting for pid {hold.pid}" in messages[0]
    finally:
        hold.kill()
        hold.communicate(timeout=30)
    with jit_cache.build_lock(tmp_path, timeout_s=5):  # the dead holder released it
        pass


# A real colossalai _CppExtension (its own build_jit and load), built through use_kernel_cache.
COLOSSALAI_CHILD = textwrap.dedent(
    """
    import json, sys
    from pathlib import Path
    from colossalai.kernel.extensions.cpp_extension import _CppExtension
    from vit_train.kernels.jit_cache import colossalai_build_dir, use_kernel_cache

    cache, source = Path(sys.argv[1]), Path(sys.argv[2])

    class AddOne(_CppExtension):
        def __init__(self):
            super().__init__(name="vt_add_one")
        def is_available(self):
            return True
        def assert_compatible(self):
            pass
        def sources_files(self):
            return [str(source)]
        def include_dirs(self):
            return []
        def cxx_flags(self):
            return ["-O0"]

    build_dir = use_kernel_cache(cache)
    assert build_dir == colossalai_build_dir(cache)
    module = AddOne().load()
    print(json.dumps({"sum": module.add(2, 3), "file": module.__file__, "build_dir": str(build_dir)}))
    """
)


@pytest.mark.timeout(150)
def test_colossalai_extension_builds_into_cache_under_lock(tmp_path: Path) -> None:
    """colossalai's JIT path builds into the cache (not ~/.cache), clears a dead builder's baton
    first, and a second process loads the build without compiling."""
    cache = tmp_path / "cache"
    source = tmp_path / "add_one.cpp"
    source.write_text("#include <pybind11/pybind11.h>\nint add(int a, int b) { return a + b; }\n"
                      "PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) { m.def(\"add\", &add); }\n")
    build_dir = Path(subprocess.run(
        [sys.executable, "-c", "import sys; from vit_train.kernels.jit_cache import colossalai_build_dir as d; print(d(sys.argv[1]))",
         str(cache)], cwd=REPO, env=child_env(), capture_output=True, text=True, timeout=120, check=True).stdout.strip())
    build_dir.mkdir(parents=True)
    # What a killed builder leaves (the SIGKILL test above shows a real one does exactly this).
    (build_dir / jit_cache.BATON_FILE).touch()

    first = subprocess.run([sys.executable, "-c", COLOSSALAI_CHILD, str(cache), str(source)], cwd=REPO,
                           env=child_env(), capture_output=True, text=True, timeout=120, check=False)
    assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-3000:]
    result = json.loads(first.stdout.strip().splitlines()[-1])
    assert result["sum"] == 5 and result["file"].startswith(str(build_dir))
    assert "removing stale torch extension lock" in first.stderr
    assert "Compiling the JIT vt_add_one kernel" in first.stdout

    second = subprocess.run([sys.executable, "-c", COLOSSALAI_CHILD, str(cache), str(source)], cwd=REPO,
                            env=child_env(), capture_output=True, text=True, timeout=120, check=False)
    assert second.returncode == 0, second.stderr[-3000:]
    assert "Loading the JIT-built vt_add_one kernel" in second.stdout
    assert _ninja_commands(build_dir) == ["add_one.o", "vt_add_one.so"], "compiled more than once"


def test_prepare_kernels_on_a_machine_without_cuda(tmp_path: Path) -> None:
    """HybridAdam's kernels need CUDA; without it the prepare step says so instead of failing obscurely."""
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA: the kernels would really be built")
    proc = subprocess.run(
        [sys.executable, "-c", ("import argparse, sys\nfrom hpc import kernels\np = argparse.ArgumentParser()\n"
                                "kernels.add_parser(p.add_subparsers())\na = p.parse_args(sys.argv[1:])\nsys.exit(a.handler(a))"),
         "kernels", "--cache", str(tmp_path)], cwd=REPO, env=child_env(), capture_output=True, text=True, timeout=120, check=False)
    assert proc.returncode == 1, proc.stderr[-3000:]
    assert "cpu_adam" in proc.stdout and "fused_optim" in proc.stdout and "unavailable" in proc.stdout
    with pytest.raises(ValueError, match="valid: cpu_adam, fused_optim"):
        jit_cache.prepare_kernels(tmp_path, ["cpu_adamw"])
