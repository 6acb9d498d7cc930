"""The results table of a grid, in the reference's layout: batch size, learning rate, average loss,
accuracy, with the best accuracy in bold.

Formatting is pure (rows in, text out) so it is tested with fixed rows; :func:`collect_rows` is the
only part that reads run folders. Text and markdown show the reference's four columns (plus a state
column only when some run has not finished); csv and json carry every field at full precision for
machines. Rows are sorted by batch size, then learning rate, so a 3x3 grid reads like the reference.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

from rich.console import Console
from rich.table import Table

from hpc.grid import RunSpec, format_value

FORMATS = ("text", "markdown", "csv", "json")
STATES = ("done", "missing", "invalid")
RESULT_FILE = "result.json"
CONFIG_FILE = "config.json"


@dataclass(frozen=True)
class ResultRow:
    """One run's outcome, as shown in the table."""

    name: str
    """Run folder name."""
    batch_size: int | None
    """Global batch size (None when the run's config is unknown)."""
    lr: float | None
    """Learning rate of the run's config."""
    avg_train_loss: float | None
    """Mean training loss over the run (the reference's "average loss")."""
    eval_loss: float | None
    """Loss on the eval split after the last epoch."""
    accuracy: float | None
    """Accuracy on the eval split after the last epoch."""
    state: str = "done"
    """done | missing (no result.json yet) | invalid (result.json unreadable)."""

    def __post_init__(self) -> None:
        if self.state not in STATES:
            raise ValueError(f"state={self.state!r}: use one of {', '.join(STATES)}")


# ---------------------------------------------------------------------------- pure formatting
def sort_rows(rows: Iterable[ResultRow]) -> list[ResultRow]:
    """By batch size, then learning rate (unknown values last), then name."""
    return sorted(
        rows,
        key=lambda r: (r.batch_size is None, r.batch_size or 0, r.lr is None, r.lr or 0.0, r.name),
    )


def _fmt(value: float | None, digits: int = 4) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def _fmt_lr(lr: float | None) -> str:
    return "-" if lr is None else format_value(float(lr))


def _best(ordered: Sequence[ResultRow]) -> list[int]:
    """Indices of the rows whose accuracy, as printed, equals the best (ties are all bold)."""
    shown = [None if r.accuracy is None else _fmt(r.accuracy) for r in ordered]
    scored = [r.accuracy for r in ordered if r.accuracy is not None]
    if not scored:
        return []
    top = _fmt(max(scored))
    return [i for i, text in enumerate(shown) if text == top]


def _cells(rows: Sequence[ResultRow], bold: tuple[str, str]) -> tuple[list[str], list[list[str]]]:
    """Header and cells of the reference layout; bold = (open, close) markers of the target format."""
    ordered = sort_rows(rows)
    best = _best(ordered)
    with_state = any(r.state != "done" for r in ordered)
    header = ["batch size", "learning rate", "average loss", "accuracy"] + (["state"] if with_state else [])
    body = []
    for i, r in enumerate(ordered):
        acc = _fmt(r.accuracy)
        if i in best:
            acc = f"{bold[0]}{acc}{bold[1]}"
        line = ["-" if r.batch_size is None else str(r.batch_size), _fmt_lr(r.lr), _fmt(r.avg_train_loss), acc]
        body.append(line + ([r.state] if with_state else []))
    return header, body


def _caption(rows: Sequence[ResultRow]) -> str | None:
    ordered = sort_rows(rows)
    best = _best(ordered)
    if not best:
        return None
    b = ordered[best[0]]
    bs = "-" if b.batch_size is None else b.batch_size
    return f"best accuracy (bold): {_fmt(b.accuracy)}, bs {bs}, lr {_fmt_lr(b.lr)}"


def build_table(rows: Sequence[ResultRow], title: str | None = None) -> Table:
    """A rich Table for printing to a terminal; the best accuracy is bold via rich markup."""
    header, body = _cells(rows, ("[bold]", "[/bold]"))
    table = Table(title=title, caption=_caption(rows))
    for name in header:
        table.add_column(name, justify="left" if name == "state" else "right")
    for line in body:
        table.add_row(*line)
    return table


def format_text(rows: Sequence[ResultRow], *, title: str | None = None, ansi: bool = False, width: int = 100) -> str:
    """The rich table as a string; plain text unless ansi (then bold shows as an escape code)."""
    buf = io.StringIO()
    console = Console(
        file=buf, width=width, force_terminal=ansi, color_system="standard" if ansi else None, highlight=False
    )
    console.print(build_table(rows, title=title))
    return buf.getvalue()


def format_markdown(rows: Sequence[ResultRow]) -> str:
    header, body = _cells(rows, ("**", "**"))
    align = ["---" if h == "state" else "---:" for h in header]
    lines = [header, align] + body
    return "".join("| " + " | ".join(line) + " |\n" for line in lines)


_FIELDS = [f.name for f in dataclasses.fields(ResultRow)]


def format_csv(rows: Sequence[ResultRow]) -> str:
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(_FIELDS)
    for r in sort_rows(rows):
        writer.writerow(["" if v is None else repr(v) if isinstance(v, float) else v for v in dataclasses.astuple(r)])
    return buf.getvalue()


def format_json(rows: Sequence[ResultRow]) -> str:
    return json.dumps([dataclasses.asdict(r) for r in sort_rows(rows)], indent=2) + "\n"


def format_rows(rows: Sequence[ResultRow], fmt: str = "text") -> str:
    """Render rows in one of FORMATS."""
    formatters = {"text": format_text, "markdown": format_markdown, "csv": format_csv, "json": format_json}
    if fmt not in formatters:
        raise ValueError(f"format={fmt!r}: use one of {', '.join(FORMATS)}")
    return formatters[fmt](rows)


# ---------------------------------------------------------------------------- reading run folders
def read_row(run_dir: str | Path, config: Mapping[str, Any] | None = None) -> ResultRow:
    """One run's row from ``<run_dir>/result.json`` and ``<run_dir>/config.json``.

    ``config`` (a RunConfig dict) is the fallback when the run has not written config.json yet, so a
    queued run still shows its batch size and learning rate.
    """
    run_dir = Path(run_dir)
    saved = _read_json(run_dir / CONFIG_FILE)
    if isinstance(saved, Mapping):
        config = saved
    optim = (config or {}).get("optim") or {}
    batch_size, lr = optim.get("batch_size"), optim.get("lr")
    result_path = run_dir / RESULT_FILE
    result = _read_json(result_path)
    if not result_path.exists():
        state, result = "missing", {}
    elif not isinstance(result, Mapping):
        state, result = "invalid", {}
    else:
        state = "done"
    return ResultRow(
        name=run_dir.name,
        batch_size=batch_size,
        lr=lr,
        avg_train_loss=result.get("avg_train_loss"),
        eval_loss=result.get("eval_loss"),
        accuracy=result.get("eval_accuracy"),
        state=state,
    )


def collect_rows(run_dirs: Iterable[str | Path]) -> list[ResultRow]:
    """Rows for run folders; a folder without result.json gives a row with state "missing"."""
    return sort_rows(read_row(d) for d in run_dirs)


def collect_grid_rows(runs: Iterable[RunSpec]) -> list[ResultRow]:
    """Rows for the runs of an expanded grid, including runs that have not started yet."""
    return sort_rows(read_row(r.run_dir, r.config.to_dict()) for r in runs)


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None
