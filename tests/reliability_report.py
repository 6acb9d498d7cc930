"""Figures of the reliability suites: tests append records, ``python -m tests.reliability_report`` renders them.

Tests call :func:`record` (a no-op unless ``RELIABILITY_SUMMARY`` names a file); each call appends one
JSON line, so several pytest processes can write to one summary. Kinds of record:

* ``injection``  a fault injected into a run (kill during a checkpoint write, USR2, preemption, ...):
  ``suite``, ``case``, ``seed``, ``detail``, ``survived`` (the run ended equal to an uninterrupted one).
* ``bad_input``  an invalid input: ``case``, ``rejected`` (refused before anything ran, with a message
  naming the field).
* ``safety``     a safe-files check (malicious pickle refused, secret not leaked, folder mode): ``case``, ``ok``.
* ``run``        a run of the Slurm suite: ``case``, ``lost`` (it never finished, or finished wrong).

Render: ``python -m tests.reliability_report SUMMARY.jsonl [--date 2026-11-24]`` prints the Markdown
section that RELIABILITY.md holds.
"""

from __future__ import annotations

import argparse
import fcntl
import json
import os
import sys
from collections import defaultdict
from pathlib import Path
from typing import Any

ENV = "RELIABILITY_SUMMARY"


def record(kind: str, **fields: Any) -> None:
    path = os.environ.get(ENV)
    if not path:
        return
    line = json.dumps({"kind": kind, **fields}, sort_keys=True, default=str) + "\n"
    with open(path, "a") as f:  # one write of one line under a lock: parallel sessions never interleave
        fcntl.flock(f, fcntl.LOCK_EX)
        f.write(line)
        f.flush()
        fcntl.flock(f, fcntl.LOCK_UN)


def read(path: Path) -> list[dict[str, Any]]:
    out = []
    for line in Path(path).read_text().splitlines():
        try:
            out.append(json.loads(line))
        except ValueError:
            continue
    return out


def render(records: list[dict[str, Any]], date: str) -> str:
    by_kind: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for r in records:
        by_kind[r["kind"]].append(r)
    inj, bad, safe, runs = by_kind["injection"], by_kind["bad_input"], by_kind["safety"], by_kind["run"]
    lines = [f"## Figures of the last run ({date})", "",
             "| what | tried | passed |", "|---|---:|---:|",
             f"| fault injections (run ended equal to an uninterrupted run) | {len(inj)} | {sum(bool(r.get('survived')) for r in inj)} |",
             f"| invalid inputs (rejected before anything ran, message names the field) | {len(bad)} | {sum(bool(r.get('rejected')) for r in bad)} |",
             f"| safe-files checks (no pickle executed, no secret written, private folders) | {len(safe)} | {sum(bool(r.get('ok')) for r in safe)} |",
             f"| Slurm-suite runs (must all finish) | {len(runs)} | {sum(not r.get('lost') for r in runs)} |",
             "", f"**Runs lost: {sum(bool(r.get('lost')) for r in runs) + sum(not r.get('survived') for r in inj)}**", ""]
    if inj:
        lines += ["### Injections", "", "| suite | case | seed | detail | survived |", "|---|---|---:|---|---|"]
        for r in inj:
            lines.append(f"| {r.get('suite', '')} | {r.get('case', '')} | {r.get('seed', '')} | {r.get('detail', '')} | "
                         f"{'yes' if r.get('survived') else '**NO**'} |")
        lines.append("")
    if bad:
        lines += ["### Invalid inputs", "", ", ".join(f"`{r['case']}`" + ("" if r.get("rejected") else " (**accepted!**)")
                                                      for r in bad), ""]
    if safe:
        lines += ["### Safe files", "", "| check | ok |", "|---|---|"]
        lines += [f"| {r['case']} | {'yes' if r.get('ok') else '**NO**'} |" for r in safe]
        lines.append("")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m tests.reliability_report", description=__doc__.splitlines()[0])
    p.add_argument("summary", type=Path, help="the JSON-lines file the tests wrote (RELIABILITY_SUMMARY)")
    p.add_argument("--date", default="2026-11-24")
    args = p.parse_args(argv)
    sys.stdout.write(render(read(args.summary), args.date))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
