"""The task-table contract of DESIGN.md: column order, exact cell formats, dtypes, round trips."""

from __future__ import annotations

import contextlib
import io
import json

import pandas as pd

from jsdissect import report
from jsdissect.correlate import Task

# 2026-03-02T09:15:02.000400Z in µs
T0 = 1_772_442_902_000_400

DESIGN_COLUMNS = [
    "process_id",
    "pid",
    "job",
    "task_id",
    "kind",
    "controller",
    "remote",
    "cmd_conn",
    "callback_conn",
    "cmd_port",
    "callback_port",
    "callback_src_port",
    "cmd_syn",
    "cmd_established",
    "start_sent",
    "start_answered",
    "callback_syn",
    "callback_established",
    "begin_sent",
    "begin_answered",
    "release_answered",
    "callback_closed",
    "close_sent",
    "close_answered",
    "connect_ms",
    "spawn_ms",
    "callback_delay_ms",
    "startup_ms",
    "run_ms",
    "close_ms",
    "total_ms",
    "steps",
    "exit_code",
    "signal",
    "status",
    "error",
    "log_lines",
    "notes",
]


def full_task() -> Task:
    return Task(
        process_id="84217301",
        pid=4711,
        job="/folder/job_a",
        task_id=42,
        kind="api",
        controller="10.1.0.10",
        remote="10.1.0.20:4455",
        cmd_conn="Cabc",
        callback_conn="Cdef",
        cmd_port=40001,
        callback_port=59999,
        callback_src_port=45000,
        cmd_syn=T0,
        cmd_established=T0 + 150,
        start_sent=T0 + 300,
        start_answered=T0 + 20_300,
        callback_syn=T0 + 15_000,
        callback_established=T0 + 15_100,
        begin_sent=T0 + 16_000,
        begin_answered=T0 + 116_001,
        release_answered=T0 + 2_116_001,
        callback_closed=T0 + 2_116_500,
        close_sent=T0 + 2_117_000,
        close_answered=T0 + 2_317_000,
        steps=3,
        exit_code=0,
        status="completed",
        log_lines=5,
    )


def sparse_task() -> Task:
    return Task(controller="10.1.0.10", callback_port=59998, callback_syn=T0, status="partial")


def test_columns_are_the_design_contract_in_order() -> None:
    assert [c.name for c in report.TASK_COLUMNS] == DESIGN_COLUMNS
    assert list(report.tasks_frame([full_task()]).columns) == DESIGN_COLUMNS


def test_time_format_has_six_fraction_digits_and_z() -> None:
    assert report.format_time(T0) == "2026-03-02T09:15:02.000400Z"
    assert report.format_time(T0 - 400) == "2026-03-02T09:15:02.000000Z"


def test_durations_are_differences_of_the_named_columns_in_ms() -> None:
    row = report.task_row(full_task())
    assert row["connect_ms"] == 0.15
    assert row["spawn_ms"] == 20.0
    assert row["callback_delay_ms"] == 14.7
    assert row["startup_ms"] == 115.701
    assert row["run_ms"] == 2000.0
    assert row["close_ms"] == 200.0
    assert row["total_ms"] == 2317.0  # cmd_syn → close_answered


def test_total_falls_back_to_earliest_and_latest_known_time() -> None:
    task = Task(start_sent=T0, callback_syn=T0 + 1_000, begin_answered=T0 + 5_500)
    assert report.task_row(task)["total_ms"] == 5.5
    assert report.task_row(Task())["total_ms"] is None


def test_csv_cells_follow_the_contract_and_missing_is_empty() -> None:
    out = io.StringIO()
    rows = [report.task_row(full_task()), report.task_row(sparse_task())]
    report.write_csv(rows, report.TASK_COLUMNS, out)
    lines = out.getvalue().splitlines()
    assert lines[0] == ",".join(DESIGN_COLUMNS)
    first = dict(zip(DESIGN_COLUMNS, lines[1].split(","), strict=True))
    assert first["pid"] == "4711"
    assert first["cmd_syn"] == "2026-03-02T09:15:02.000400Z"
    assert first["startup_ms"] == "115.701"
    assert first["signal"] == ""
    assert first["notes"] == ""
    second = dict(zip(DESIGN_COLUMNS, lines[2].split(","), strict=True))
    assert second["process_id"] == "" and second["pid"] == "" and second["spawn_ms"] == ""


def test_json_is_records_with_nulls_and_integers() -> None:
    out = io.StringIO()
    report.write_json(
        [report.task_row(full_task()), report.task_row(sparse_task())], report.TASK_COLUMNS, out
    )
    data = json.loads(out.getvalue())
    assert list(data[0]) == DESIGN_COLUMNS
    assert data[0]["pid"] == 4711 and isinstance(data[0]["pid"], int)
    assert data[0]["process_id"] == "84217301"
    assert data[0]["release_answered"] == "2026-03-02T09:15:04.116401Z"
    assert data[1]["pid"] is None and data[1]["exit_code"] is None and data[1]["notes"] is None


def test_csv_and_json_round_trip_into_pandas_with_the_right_dtypes(tmp_path) -> None:
    rows = [report.task_row(full_task()), report.task_row(sparse_task())]
    csv_path, json_path = tmp_path / "t.csv", tmp_path / "t.json"
    report.write_output(str(csv_path), lambda o: report.write_csv(rows, report.TASK_COLUMNS, o))
    report.write_output(str(json_path), lambda o: report.write_json(rows, report.TASK_COLUMNS, o))
    times = [c.name for c in report.TASK_COLUMNS if c.type == report.TIME]
    ints = [c.name for c in report.TASK_COLUMNS if c.type == report.INTEGER]
    from_csv = pd.read_csv(
        csv_path, dtype={c: "Int64" for c in ints} | {"process_id": "string"}, parse_dates=times
    )
    from_json = pd.read_json(json_path, orient="records", dtype={c: "Int64" for c in ints})
    frame = report.tasks_frame([full_task(), sparse_task()])
    assert str(frame["cmd_syn"].dtype) == "datetime64[us, UTC]"
    assert str(frame["pid"].dtype) == "Int64"
    assert frame["process_id"].dtype == "string"
    for loaded in (from_csv, from_json):
        assert pd.Timestamp(loaded["cmd_syn"][0]) == frame["cmd_syn"][0]
        assert loaded["pid"][0] == 4711 and pd.isna(loaded["pid"][1])
        assert loaded["startup_ms"][0] == frame["startup_ms"][0]
        assert pd.isna(loaded["startup_ms"][1])


def test_write_output_leaves_nothing_half_written(tmp_path) -> None:
    target = tmp_path / "out.csv"
    target.write_text("old")

    def failing(out) -> None:
        out.write("partial")
        raise RuntimeError("disk full")

    with contextlib.suppress(RuntimeError):
        report.write_output(str(target), failing)
    assert target.read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.csv"]


def test_terminal_table_right_aligns_numbers_and_blanks_missing() -> None:
    cols = [c for c in report.TASK_COLUMNS if c.name in ("process_id", "startup_ms", "status")]
    text = report.to_text([report.task_row(full_task()), report.task_row(sparse_task())], cols)
    header, first, second = text.splitlines()
    assert header.split() == ["process_id", "startup_ms", "status"]
    assert first.split() == ["84217301", "115.701", "completed"]
    assert second.split() == ["partial"]
    assert first.index("115.701") + len("115.701") == header.index("startup_ms") + len("startup_ms")


HOSTILE = "/f/\x1b[31mRED\x1b[0m\r\nnext\x07\u202etxt"  # colour, a line break, BEL, RTL override


def test_text_from_the_wire_is_escaped_on_the_terminal_and_kept_in_csv_and_json() -> None:
    """Found in review: a job name or error text could recolour the screen, set the window
    title or split a row; tshark shows such characters escaped, and so do we."""
    row = report.task_row(full_task()) | {"job": HOSTILE, "error": "E\n\x1b]0;title\x07"}
    cols = [c for c in report.TASK_COLUMNS if c.name in ("process_id", "job", "error")]
    text = report.to_text([row], cols)
    assert text.count("\n") == 2 and not any(c in text for c in "\x1b\x07\r\u202e")
    assert "/f/\\x1b[31mRED\\x1b[0m\\r\\nnext\\x07\\u202etxt" in text
    csv_text = io.StringIO()
    report.write_csv([row], cols, csv_text)
    assert HOSTILE in csv_text.getvalue()  # (quoted by the csv module, not escaped)
    json_text = io.StringIO()
    report.write_json([row], cols, json_text)
    assert json.loads(json_text.getvalue())[0]["job"] == HOSTILE


def test_task_log_and_message_lines_are_escaped_too() -> None:
    task = full_task()
    task.error = "E\r\x1b[2J"
    assert report.task_log(task)[-2] == "error E\\r\\x1b[2J"
    task.job = HOSTILE
    assert "\x1b" not in report.task_heading(task) and "\\r\\n" in report.task_heading(task)
    row = {"time": 0, "conn": "C1", "channel": "api", "direction": "a → b", "summary": HOSTILE}
    line = report.message_line(row)
    assert line.isprintable() and line.endswith("\\x07\\u202etxt") and "a → b" in line


def test_json_text_is_that_of_json_dump_with_indent_1() -> None:
    """write_json builds the text from the C encoder's rows (speed); it must stay exactly
    json.dump(..., indent=1, ensure_ascii=False): quotes, newlines, non-ASCII, floats."""
    awkward = full_task()
    awkward.error = 'Z-REMOTE-118 "quoted",\nsecond line é\t\\'
    awkward.notes = "callback to 10.0.0.1:59999 instead of 10.0.0.2: address translation"
    rows = [report.task_row(t) for t in (full_task(), awkward, Task(process_id="1"))]
    for chosen in (rows, rows[:1], []):
        out = io.StringIO()
        report.write_json(chosen, report.TASK_COLUMNS, out)
        cells = list(report.export_rows(chosen, report.TASK_COLUMNS))
        assert out.getvalue() == json.dumps(cells, ensure_ascii=False, indent=1) + "\n"
