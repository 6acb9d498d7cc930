"""hpc.tensorboard: the real TensorBoard over a real grid folder, read through its HTTP API and a real browser.

Nothing is faked: three real training runs (tiny model, synthetic beans-like data, 3 steps, three
learning rates: a grid's expansion, run by the training CLI from the expanded configs, as a job runs
them) write GRID/run-a, run-b, run-c; the command starts the real TensorBoard server on a
free localhost port; the test reads every run's scalars and the HParams of every run over HTTP, then
renders the HParams view in headless Chromium (a screenshot, and the rendered text read through the
DevTools protocol, since TensorBoard's Polymer components keep their content in shadow DOM, which
``--dump-dom`` does not print). The server and the browsers are killed at the end, always.
"""

from __future__ import annotations

import json
import math
import os
import queue
import select
import shutil
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from hpc.tensorboard import tunnel_command, tunnel_for_here
from tests.train_utils import REPO, child_env, free_port
from vit_train.config import IDENTIFYING_HPARAMS

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync",
                  "--window-size=1400,900"]
RUNS = {"run-a": 1e-3, "run-b": 2e-3, "run-c": 5e-3}


@pytest.fixture(scope="module")
def grid_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """GRID/run-{a,b,c}: the real training CLI, three learning rates, started together."""
    from vit_train.synthetic import make_beans_like

    from hpc.grid import expand, parse_grid

    tmp = tmp_path_factory.mktemp("tb")
    data = make_beans_like(tmp / "data", num_train=48, num_validation=12, image_size=32)
    grid = tmp / "GRID"
    base = {"model.name": "tiny", "data.dataset": str(data), "data.cache_dir": str(tmp / "cache"), "data.num_workers": 0,
            "optim.batch_size": 8, "optim.epochs": 1, "optim.max_steps": 3, "optim.max_grad_norm": 0,
            "logging.log_every_n_steps": 1, "checkpoint.export_hf": False}
    spec = parse_grid({"name": "GRID", "output_root": str(tmp), "profile": "local", "base": base,
                       "slurm": {"nodes": 1, "gpus_per_node": 0, "tasks_per_node": 1},
                       "grid": {"optim.lr": list(RUNS.values())}}, base_dir=tmp)
    procs = {}
    for name, run in zip(RUNS, expand(spec), strict=True):
        config = tmp / f"{name}.yaml"
        config.write_text(json.dumps({**run.config.to_dict(), "output_dir": str(grid / name)}))  # JSON is YAML
        procs[name] = subprocess.Popen([sys.executable, "-m", "vit_train", "--config", str(config)], cwd=REPO,
                                       env=child_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        for name, proc in procs.items():
            out, _ = proc.communicate(timeout=240)
            assert proc.returncode == 0, f"{name}:\n{out[-4000:]}"
    finally:
        for proc in procs.values():
            proc.kill()
    return grid


class _Lines:
    """A child's stdout line by line, with a timeout on each wait (a reader thread feeds a queue)."""

    def __init__(self, proc: subprocess.Popen[str]) -> None:
        self._queue: queue.Queue[str | None] = queue.Queue()
        self.seen: list[str] = []
        threading.Thread(target=self._pump, args=(proc,), daemon=True).start()

    def _pump(self, proc: subprocess.Popen[str]) -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            self._queue.put(line)
        self._queue.put(None)

    def wait_for(self, prefix: str, timeout: float) -> str:
        deadline = time.monotonic() + timeout
        while (left := deadline - time.monotonic()) > 0:
            try:
                line = self._queue.get(timeout=left)
            except queue.Empty:
                break
            if line is None:
                break
            self.seen.append(line)
            if line.startswith(prefix):
                return line.strip()
        raise AssertionError(f"no line starting with {prefix!r} within {timeout:.0f} s; output:\n{''.join(self.seen)}")


@pytest.fixture(scope="module")
def server(grid_folder: Path) -> Iterator[tuple[str, str]]:
    """``tensorboard GRID --port P`` through the command's own parser; yields (base URL, its stdout)."""
    port = free_port()
    code = ("import argparse, sys\nfrom hpc import tensorboard\np = argparse.ArgumentParser()\n"
            "tensorboard.add_parser(p.add_subparsers())\na = p.parse_args(sys.argv[1:])\nsys.exit(a.handler(a))")
    proc = subprocess.Popen([sys.executable, "-c", code, "tensorboard", str(grid_folder), "--port", str(port)],
                            cwd=REPO, env=child_env(USER="alice"), stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                            text=True)
    try:
        lines = _Lines(proc)
        first = lines.wait_for("TensorBoard on", 90)
        tunnel = lines.wait_for("from your machine:", 10)
        base = f"http://127.0.0.1:{port}"
        assert first.startswith(f"TensorBoard on http://127.0.0.1:{port}/ for {grid_folder}") and "3 run(s)" in first
        assert tunnel == f"from your machine: ssh -N -L {port}:localhost:{port} alice@{os.uname().nodename}"
        _poll(lambda: sorted(_get(base, "/data/runs")) == [f"{r}/tb" for r in RUNS], 60, "TensorBoard to load 3 runs")
        yield base, first
    finally:
        proc.kill()
        proc.communicate(timeout=30)


def _get(base: str, path: str) -> Any:
    with urllib.request.urlopen(base + path, timeout=30) as r:
        return json.loads(r.read())


def _post(base: str, path: str, body: dict[str, Any]) -> Any:
    # The hparams plugin parses the raw body as JSON: it must be sent as application/json (a form
    # post leaves request.data empty and the plugin answers 400).
    req = urllib.request.Request(base + path, data=json.dumps(body).encode(), method="POST",
                                 headers={"Content-Type": "application/json", "X-XSRF-Protected": "1"})
    with urllib.request.urlopen(req, timeout=30) as r:
        return json.loads(r.read())


def _poll(cond: Any, timeout: float, what: str, interval: float = 0.5) -> Any:
    deadline = time.monotonic() + timeout
    last_error: Exception | None = None
    while time.monotonic() < deadline:
        try:
            value = cond()
            if value:
                return value
        except Exception as e:  # noqa: BLE001  the server may not answer yet
            last_error = e
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what} (last error: {last_error})")


def _metrics(run_dir: Path, kind: str) -> list[dict[str, Any]]:
    return [r for r in map(json.loads, (run_dir / "metrics.jsonl").read_text().splitlines()) if r["kind"] == kind]


def test_every_run_scalars_over_http(server: tuple[str, str], grid_folder: Path) -> None:
    base, _ = server
    tags = _get(base, "/data/plugin/scalars/tags")
    assert sorted(tags) == [f"{r}/tb" for r in RUNS]
    for run in RUNS:
        assert {"train/loss", "train/lr", "eval/loss", "eval/accuracy", "hparam/accuracy"} <= set(tags[f"{run}/tb"])
        loss = _get(base, f"/data/plugin/scalars/scalars?run={run}/tb&tag=train/loss")
        expected = [(r["step"], r["loss"]) for r in _metrics(grid_folder / run, "train")]
        assert [(step, value) for _, step, value in loss] == pytest.approx(expected, rel=1e-6)
        assert [s for s, _ in expected] == [1, 2, 3]
        acc = _get(base, f"/data/plugin/scalars/scalars?run={run}/tb&tag=eval/accuracy")
        assert acc[-1][2] == pytest.approx(_metrics(grid_folder / run, "eval")[-1]["accuracy"], rel=1e-6)


def test_hparams_of_every_run_over_http(server: tuple[str, str], grid_folder: Path) -> None:
    base, _ = server
    experiment = _post(base, "/data/plugin/hparams/experiment", {"experimentName": ""})
    names = {h["name"] for h in experiment["hparamInfos"]}
    # What the grid varies and what identifies a run; not paths, columns or operational fields.
    assert names == {"optim.lr", *IDENTIFYING_HPARAMS}, names
    assert not names & {"output_dir", "data.dataset", "data.image_column", "data.eval_split", "data.cache_dir"}
    saved = json.loads((grid_folder / "run-a" / "config.json").read_text())["logging"]["hparams"]
    assert set(saved) == names  # the saved config says what was shown
    assert {m["name"]["tag"] for m in experiment["metricInfos"]} >= {"hparam/accuracy", "hparam/eval_loss"}
    groups = _post(base, "/data/plugin/hparams/session_groups", {
        "experimentName": "",
        "allowedStatuses": ["STATUS_UNKNOWN", "STATUS_SUCCESS", "STATUS_FAILURE", "STATUS_RUNNING"],
        "colParams": [{"hparam": "optim.lr"}, {"metric": {"group": "", "tag": "hparam/accuracy"}}],
        "startIndex": 0, "sliceSize": 100,
    })
    assert groups["totalSize"] == 3
    by_run = {g["name"]: g for g in groups["sessionGroups"]}
    assert sorted(by_run) == [f"{r}/tb" for r in RUNS]
    for run, lr in RUNS.items():
        group = by_run[f"{run}/tb"]
        assert math.isclose(group["hparams"]["optim.lr"], lr)
        accuracy = json.loads((grid_folder / run / "result.json").read_text())["eval_accuracy"]
        values = {m["name"]["tag"]: m["value"] for m in group["metricValues"]}
        assert values["hparam/accuracy"] == pytest.approx(accuracy, rel=1e-6)


class _DevTools:
    """Headless Chromium driven over the DevTools protocol on pipes (--remote-debugging-pipe: requests
    on fd 3, replies on fd 4, NUL-terminated JSON), so no websocket library is needed."""

    def __init__(self, profile: Path) -> None:
        to_chrome_r, self._to_chrome = os.pipe()
        self._from_chrome, from_chrome_w = os.pipe()
        shell = f'exec "$0" "$@" 3<&{to_chrome_r} 4>&{from_chrome_w} {to_chrome_r}<&- {from_chrome_w}>&-'
        self.proc = subprocess.Popen(
            ["bash", "-c", shell, CHROMIUM, *CHROMIUM_FLAGS, "--remote-debugging-pipe", f"--user-data-dir={profile}",
             "about:blank"], pass_fds=(to_chrome_r, from_chrome_w), stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL)
        os.close(to_chrome_r)
        os.close(from_chrome_w)
        self._buf, self._next_id = b"", 0

    def call(self, method: str, params: dict[str, Any] | None = None, session: str | None = None,
             timeout: float = 30) -> dict[str, Any]:
        self._next_id += 1
        msg: dict[str, Any] = {"id": self._next_id, "method": method, "params": params or {}}
        if session:
            msg["sessionId"] = session
        os.write(self._to_chrome, json.dumps(msg).encode() + b"\0")
        deadline = time.monotonic() + timeout
        while True:
            while b"\0" in self._buf:
                raw, self._buf = self._buf.split(b"\0", 1)
                reply = json.loads(raw)
                if reply.get("id") == self._next_id:
                    if "error" in reply:
                        raise RuntimeError(f"{method}: {reply['error']}")
                    return reply["result"]
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([self._from_chrome], [], [], left)[0]:
                raise TimeoutError(f"{method}: no reply in {timeout:.0f} s")
            chunk = os.read(self._from_chrome, 1 << 20)
            if not chunk:
                raise RuntimeError("chromium closed the DevTools pipe")
            self._buf += chunk

    def close(self) -> None:
        self.proc.kill()
        self.proc.wait(timeout=30)
        os.close(self._to_chrome)
        os.close(self._from_chrome)


# Every text node of the page, shadow roots included (TensorBoard's hparams table lives in them).
DEEP_TEXT = """(() => {
  const out = [];
  const walk = (n) => {
    if (n.nodeType === Node.TEXT_NODE) out.push(n.nodeValue.trim());
    if (n.shadowRoot) walk(n.shadowRoot);
    for (const c of n.childNodes) walk(c);
  };
  walk(document.body);
  return out.filter(Boolean).join("\\n");
})()"""


def test_hparams_view_renders_every_run(server: tuple[str, str], grid_folder: Path, tmp_path: Path) -> None:
    import numpy as np
    from PIL import Image

    base, _ = server
    # The text the browser renders, once the HParams table has loaded its rows.
    browser = _DevTools(tmp_path / "profile-dom")
    try:
        target = browser.call("Target.createTarget", {"url": f"{base}/#hparams"})["targetId"]
        session = browser.call("Target.attachToTarget", {"targetId": target, "flatten": True})["sessionId"]

        def rendered() -> str:
            text = browser.call("Runtime.evaluate", {"expression": DEEP_TEXT, "returnByValue": True}, session)
            value = text["result"].get("value", "")
            return value if all(f"{r}/tb" in value for r in RUNS) else ""

        text = _poll(rendered, 60, "the HParams table to list the three runs")
    finally:
        browser.close()
    lines = text.splitlines()
    for run in RUNS:
        assert f"{run}/tb" in lines
    assert "optim.lr" in lines and "Trial ID" in lines  # the hparam list and the table's header
    assert {"optim.batch_size", "parallel.plugin", "precision"} <= set(lines)  # what identifies a run
    for hidden in ("output_dir", "data.image_column", "data.dataset", "data.eval_split"):
        assert hidden not in lines, hidden
    assert str(grid_folder.parent / "data") not in text  # no data.dataset cells
    assert "torch_ddp" in lines and lines.count("tiny") >= 3  # parallel.plugin and model.name, one cell per run

    # The screenshot a person would see (kept under the test's tmp folder for inspection).
    shot = tmp_path / "hparams.png"
    subprocess.run([CHROMIUM, *CHROMIUM_FLAGS, f"--user-data-dir={tmp_path / 'profile-shot'}",
                    "--virtual-time-budget=15000", f"--screenshot={shot}", f"{base}/#hparams"],
                   capture_output=True, timeout=90, check=True)
    pixels = np.asarray(Image.open(shot).convert("RGB"), dtype=np.float32)
    assert pixels.shape == (900, 1400, 3)
    assert pixels.std() > 20, "blank screenshot"
    dark = (pixels.mean(axis=2) < 100).mean()  # text is dark on a light page: a rendered table has some
    assert 0.002 < dark < 0.5, dark
    if os.environ.get("VIT_TEST_KEEP_SCREENSHOT"):
        shutil.copy(shot, os.environ["VIT_TEST_KEEP_SCREENSHOT"])


def test_tunnel_commands() -> None:
    assert tunnel_command(6006, user="alice", host="login1") == "ssh -N -L 6006:localhost:6006 alice@login1"
    env = {"USER": "bob", "SLURM_JOB_ID": "7", "SLURM_SUBMIT_HOST": "login2"}
    here = os.uname().nodename
    assert tunnel_for_here(6007, env) == f"ssh -N -J bob@login2 -L 6007:localhost:6007 bob@{here}"
    assert tunnel_for_here(6008, {"USER": "bob"}) == f"ssh -N -L 6008:localhost:6008 bob@{here}"
