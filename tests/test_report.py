"""Tests for hpc.report: golden outputs for fixed rows, and reading real run folders written here."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from hpc.grid import expand, load_grid
from hpc.report import (
    ResultRow,
    build_table,
    collect_grid_rows,
    collect_rows,
    format_csv,
    format_json,
    format_markdown,
    format_rows,
    format_text,
    sort_rows,
)

REPO = Path(__file__).resolve().parents[1]

# Deliberately out of order: the formatter sorts by batch size, then learning rate.
ROWS = [
    ResultRow("bs16-lr2e-04-bbbbbbbbbbbb", 16, 2e-4, 0.2718, 0.1995, 0.9774),
    ResultRow("bs8-lr5e-04-cccccccccccc", 8, 5e-4, 0.3141, 0.2561, 0.9624),
    ResultRow("bs8-lr1e-04-aaaaaaaaaaaa", 8, 1e-4, 0.4472, 0.3012, 0.9549),
]

GOLDEN_MARKDOWN = """\
| batch size | learning rate | average loss | accuracy |
| ---: | ---: | ---: | ---: |
| 8 | 1e-04 | 0.4472 | 0.9549 |
| 8 | 5e-04 | 0.3141 | 0.9624 |
| 16 | 2e-04 | 0.2718 | **0.9774** |
"""

GOLDEN_CSV = """\
name,batch_size,lr,avg_train_loss,eval_loss,accuracy,state
bs8-lr1e-04-aaaaaaaaaaaa,8,0.0001,0.4472,0.3012,0.9549,done
bs8-lr5e-04-cccccccccccc,8,0.0005,0.3141,0.2561,0.9624,done
bs16-lr2e-04-bbbbbbbbbbbb,16,0.0002,0.2718,0.1995,0.9774,done
"""


def test_markdown_golden() -> None:
    assert format_markdown(ROWS) == GOLDEN_MARKDOWN


def test_csv_golden() -> None:
    assert format_csv(ROWS) == GOLDEN_CSV


def test_json_round_trips_all_fields_sorted() -> None:
    data = json.loads(format_json(ROWS))
    assert [d["name"] for d in data] == [r.name for r in sort_rows(ROWS)]
    assert data[0] == {
        "name": "bs8-lr1e-04-aaaaaaaaaaaa", "batch_size": 8, "lr": 1e-4, "avg_train_loss": 0.4472,
        "eval_loss": 0.3012, "accuracy": 0.9549, "state": "done",
    }


def test_text_table_has_reference_columns_and_best_caption() -> None:
    text = format_text(ROWS)
    lines = text.splitlines()
    header = next(line for line in lines if "batch size" in line)
    for column in ("batch size", "learning rate", "average loss", "accuracy"):
        assert column in header
    assert "state" not in header  # only shown when some run is not done
    assert [line for line in lines if "0.9774" in line and "2e-04" in line]
    assert "best accuracy (bold): 0.9774, bs 16, lr 2e-04" in " ".join(text.split())
    assert "\x1b[" not in text  # plain text unless asked for ANSI


def test_text_bold_via_rich_markup() -> None:
    table = build_table(ROWS)
    accuracy = table.columns[3]
    assert list(accuracy.cells) == ["0.9549", "0.9624", "[bold]0.9774[/bold]"]
    assert "\x1b[1m0.9774" in format_text(ROWS, ansi=True)


def test_ties_are_all_bold_and_unknown_values_sort_last() -> None:
    rows = [
        ResultRow("c", None, None, None, None, None, "missing"),
        ResultRow("b", 32, 1e-4, 0.3, 0.2, 0.98),
        ResultRow("a", 8, 1e-4, 0.2, 0.1, 0.98),
    ]
    assert format_markdown(rows) == (
        "| batch size | learning rate | average loss | accuracy | state |\n"
        "| ---: | ---: | ---: | ---: | --- |\n"
        "| 8 | 1e-04 | 0.2000 | **0.9800** | done |\n"
        "| 32 | 1e-04 | 0.3000 | **0.9800** | done |\n"
        "| - | - | - | - | missing |\n"
    )


def test_no_finished_run_means_nothing_bold() -> None:
    rows = [ResultRow("a", 8, 1e-4, None, None, None, "missing")]
    assert "**" not in format_markdown(rows)
    assert "best accuracy" not in format_text(rows)


def test_format_rows_dispatch_and_unknown_format() -> None:
    assert format_rows(ROWS, "markdown") == GOLDEN_MARKDOWN
    assert format_rows(ROWS, "csv") == GOLDEN_CSV
    with pytest.raises(ValueError, match="format='html': use one of text, markdown, csv, json"):
        format_rows(ROWS, "html")


def test_bad_state_is_rejected() -> None:
    with pytest.raises(ValueError, match="state='finished'"):
        ResultRow("a", 8, 1e-4, 0.1, 0.1, 0.9, "finished")


# ---------------------------------------------------------------------------- run folders
def _run_dir(root: Path, name: str, config: dict | None, result: dict | str | None) -> Path:
    d = root / name
    d.mkdir()
    if config is not None:
        (d / "config.json").write_text(json.dumps(config))
    if isinstance(result, dict):
        (d / "result.json").write_text(json.dumps(result))
    elif isinstance(result, str):
        (d / "result.json").write_text(result)
    return d


def test_collect_rows_from_run_folders(tmp_path: Path) -> None:
    result = {"avg_train_loss": 0.25, "eval_loss": 0.2, "eval_accuracy": 0.97, "epochs": 5, "steps": 160}
    dirs = [
        _run_dir(tmp_path, "done", {"optim": {"batch_size": 16, "lr": 2e-4}}, result),
        _run_dir(tmp_path, "queued", {"optim": {"batch_size": 8, "lr": 1e-4}}, None),
        _run_dir(tmp_path, "torn", {"optim": {"batch_size": 32, "lr": 1e-4}}, "{not json"),
        _run_dir(tmp_path, "empty", None, None),
    ]
    rows = {r.name: r for r in collect_rows(dirs)}
    assert rows["done"] == ResultRow("done", 16, 2e-4, 0.25, 0.2, 0.97, "done")
    assert rows["queued"] == ResultRow("queued", 8, 1e-4, None, None, None, "missing")
    assert rows["torn"].state == "invalid" and rows["torn"].batch_size == 32
    assert rows["empty"] == ResultRow("empty", None, None, None, None, None, "missing")
    assert [r.name for r in collect_rows(dirs)] == ["queued", "done", "torn", "empty"]


def test_collect_grid_rows_fills_unstarted_runs_from_the_grid() -> None:
    runs = expand(load_grid(REPO / "grids" / "cpu_tiny.yaml"))
    rows = collect_grid_rows(runs)
    assert len(rows) == 9 and all(r.state == "missing" or r.state == "done" for r in rows)
    assert [(r.batch_size, r.lr) for r in rows][:3] == [(8, 1e-3), (8, 2e-3), (8, 5e-3)]
