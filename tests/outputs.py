"""Every table, writer and figure the CLI builds from an analysis, in-process, for the fuzzers."""

from __future__ import annotations

import io
import json

from jsdissect import plot, report
from jsdissect import ports as port_report
from jsdissect.pipeline import Analysis


def exercise(result: Analysis) -> None:
    """Everything the CLI builds from an analysis, without a subprocess."""
    assert isinstance(result.tasks, type(result.messages))  # DataFrames build
    assert len(result.connections) == len(result.channels)
    rows = [report.task_row(t) for t in result.task_records]
    out = io.StringIO()
    for writer in (report.write_csv, report.write_json):
        writer(rows, report.TASK_COLUMNS, out)
    report.to_text(rows, report.TASK_COLUMNS)
    report.summary_text(rows, 10)
    report.task_summary(rows, result.decode_errors)
    messages = report.message_rows(result.channels, result.task_records)
    report.write_json(messages, report.MESSAGE_COLUMNS, out)
    for row in messages:
        report.message_line(row)
    connections = [report.connection_row(ch) for ch in result.channels]
    report.write_csv(connections, report.CONNECTION_COLUMNS, out)
    report.to_text(connections, report.CONNECTION_COLUMNS)
    for task in result.task_records:
        report.task_log(task)
    rep = port_report.port_report(result.task_records, result.channels, (4444, 4455), 120_000_000)
    port_report.to_text(rep)
    json.dumps(port_report.to_json(rep))
    plot.bars(result.task_records)
