"""Records → tables: the task, connection and message DataFrames, and their writers.

Output formats follow DESIGN "The task table contract" exactly: times as
`2026-03-02T09:15:02.000400Z`, durations in ms rounded to 3 decimals, whole numbers as
integers, missing values empty in CSV and null in JSON. pandas' own writers differ on each
point, so cells are formatted here, once, for both CSV and JSON.
"""

from __future__ import annotations

import bisect
import csv
import errno
import heapq
import io
import itertools
import json
import math
import os
import statistics
import sys
import tempfile
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

from jsdissect.correlate import FAILED_STATUSES, TIME_COLUMNS, Channel, Task
from jsdissect.protocol import DecodeError, Event
from jsdissect.protocol import command as cmd
from jsdissect.protocol import objserver as api
from jsdissect.tcp import CLIENT_TO_SERVER, Connection

if TYPE_CHECKING:
    import pandas as pd

TIME, DURATION, INTEGER, TEXT = "time", "duration", "integer", "text"


@dataclass(frozen=True, slots=True)
class Column:
    name: str
    type: str


def _cols(spec: str, type_: str) -> list[Column]:
    return [Column(name, type_) for name in spec.split()]


# DESIGN "The task table contract": names and order are a contract.
TASK_COLUMNS: tuple[Column, ...] = (
    *_cols("process_id", TEXT),
    *_cols("pid", INTEGER),
    *_cols("job", TEXT),
    *_cols("task_id", INTEGER),
    *_cols("kind controller remote cmd_conn callback_conn", TEXT),
    *_cols("cmd_port callback_port callback_src_port", INTEGER),
    *_cols(
        "cmd_syn cmd_established start_sent start_answered callback_syn callback_established"
        " begin_sent begin_answered release_answered callback_closed close_sent close_answered",
        TIME,
    ),
    *_cols("connect_ms spawn_ms callback_delay_ms startup_ms run_ms close_ms total_ms", DURATION),
    *_cols("steps exit_code signal", INTEGER),
    *_cols("status error", TEXT),
    *_cols("log_lines", INTEGER),
    *_cols("notes", TEXT),
)

# duration column → (from, to), DESIGN "Exact times"
DURATIONS = {
    "connect_ms": ("cmd_syn", "cmd_established"),
    "spawn_ms": ("start_sent", "start_answered"),
    "callback_delay_ms": ("start_sent", "callback_syn"),
    "startup_ms": ("start_sent", "begin_answered"),
    "run_ms": ("begin_answered", "release_answered"),
    "close_ms": ("close_sent", "close_answered"),
}

CONNECTION_COLUMNS: tuple[Column, ...] = (
    *_cols("id client server channel state", TEXT),
    *_cols("first_packet syn established closed last_packet", TIME),
    *_cols("duration_ms", DURATION),
    *_cols("bytes_c2s bytes_s2c packets syn_count retransmissions gaps gap_bytes", INTEGER),
)

MESSAGE_COLUMNS: tuple[Column, ...] = (
    *_cols("time", TIME),
    *_cols("end", TIME),
    *_cols("conn channel direction sender type", TEXT),
    *_cols("offset", INTEGER),
    *_cols("process_id summary", TEXT),
    *_cols("reason", TEXT),  # DecodeError only: what could not be decoded there, and why
)


# --- task rows --------------------------------------------------------------------------


def _ms(a: int | None, b: int | None) -> float | None:
    return None if a is None or b is None else round((b - a) / 1000, 3)


def task_row(task: Task) -> dict[str, Any]:
    """One task as plain values (times in µs) keyed by column name."""
    row = {c.name: getattr(task, c.name, None) for c in TASK_COLUMNS}
    for name, (a, b) in DURATIONS.items():
        row[name] = _ms(row[a], row[b])
    row["total_ms"] = _total_ms(row)
    row["notes"] = row["notes"] or None
    return row


def _total_ms(row: dict[str, Any]) -> float | None:
    if row["cmd_syn"] is not None and row["close_answered"] is not None:
        return _ms(row["cmd_syn"], row["close_answered"])
    known = [row[c.name] for c in TASK_COLUMNS if c.type == TIME and row[c.name] is not None]
    return _ms(min(known), max(known)) if known else None


def connection_row(ch: Channel) -> dict[str, Any]:
    c: Connection = ch.conn
    client, server, bytes_c2s, bytes_s2c = c.client, c.server, c.bytes_c2s, c.bytes_s2c
    if not c.handshake_seen and ch.kind == "api" and ch.controller == c.client:
        # Picked up mid-stream, tcp guessed the higher port the client's; the callback's
        # messages tell that the controller accepted it (§2): its port is high too, counted
        # down from 59999 inside Linux's ephemeral range (found in review).
        client, server, bytes_c2s, bytes_s2c = server, client, bytes_s2c, bytes_c2s
    return {
        "id": c.id,
        "client": str(client),
        "server": str(server),
        "channel": ch.kind or None,
        "state": c.state,
        "first_packet": c.first_ts,
        "syn": c.syn,
        "established": c.established,
        "closed": c.closed,
        "last_packet": c.last_ts,
        "duration_ms": _ms(c.first_ts, c.last_ts),
        "bytes_c2s": bytes_c2s,
        "bytes_s2c": bytes_s2c,
        "packets": c.packets,
        "syn_count": c.syn_count,
        "retransmissions": c.retransmissions,
        "gaps": c.gaps,
        "gap_bytes": c.gap_bytes,
    }


# --- DataFrames ------------------------------------------------------------------------------


def frame(rows: Iterable[dict[str, Any]], columns: Sequence[Column]) -> pd.DataFrame:
    """Typed DataFrame: UTC Timestamps (µs), nullable Int64, float ms, strings."""
    # Imported here: pandas takes ~0.3 s to import, and the CLI's writers never need it.
    import pandas as pd

    rows = list(rows)
    data = {}
    for col in columns:
        values = [r.get(col.name) for r in rows]
        if col.type == TIME:
            data[col.name] = pd.to_datetime(
                pd.array(values, dtype="Int64"), unit="us", utc=True
            ).as_unit("us")
        elif col.type == INTEGER:
            # The wire may announce any number (pid="99999999999999999999"); Int64 cannot
            # hold one beyond 64 bits, so the frame shows it missing. CSV/JSON keep it.
            data[col.name] = pd.array([_int64_or_none(v) for v in values], dtype="Int64")
        elif col.type == DURATION:
            data[col.name] = pd.array(
                [math.nan if v is None else v for v in values], dtype="float64"
            )
        else:
            data[col.name] = pd.array(values, dtype="string")
    return pd.DataFrame(data, columns=[c.name for c in columns])


INT64_MIN, INT64_MAX = -(1 << 63), (1 << 63) - 1


def _int64_or_none(value: int | None) -> int | None:
    return value if value is not None and INT64_MIN <= value <= INT64_MAX else None


def tasks_frame(tasks: Sequence[Task]) -> pd.DataFrame:
    return frame((task_row(t) for t in tasks), TASK_COLUMNS)


def connections_frame(channels: Sequence[Channel]) -> pd.DataFrame:
    ordered = sorted(channels, key=lambda ch: (ch.conn.first_ts, ch.conn.id))
    return frame((connection_row(ch) for ch in ordered), CONNECTION_COLUMNS)


def messages_frame(channels: Sequence[Channel], tasks: Sequence[Task]) -> pd.DataFrame:
    return frame(MessageRows(channels, tasks), MESSAGE_COLUMNS)


def message_rows(channels: Sequence[Channel], tasks: Sequence[Task]) -> list[dict[str, Any]]:
    """One row per decoded message of every channel, in time order."""
    return list(MessageRows(channels, tasks))


class MessageRows:
    """The rows of `messages` in time order, made as they are read, again at each reading.

    A capture holds many more messages than tasks, and a row (its summary above all) takes
    several times the memory of the event it describes: made one at a time, the rows cost
    no memory beyond the decoded events. `process_id` keeps one task's connections,
    `errors_only` the decode errors; both choose before a row is made."""

    def __init__(
        self,
        channels: Sequence[Channel],
        tasks: Sequence[Task],
        process_id: str | None = None,
        errors_only: bool = False,
    ) -> None:
        self._tasks_on = _tasks_on(tasks)
        self._channels = [
            ch
            for ch in channels
            if process_id is None
            or any(p == process_id for _, p in self._tasks_on.get(ch.conn.id, ()))
        ]
        self._process_id = process_id
        self._errors_only = errors_only

    def __iter__(self) -> Iterator[dict[str, Any]]:
        # Each channel's rows in order, merged: the order of one stable sort of them all.
        return heapq.merge(*map(self._channel_rows, self._channels), key=_message_order)

    def times(self) -> Iterator[int]:
        """Every row's time, without making the rows."""
        return (ev.start for ch in self._channels for ev in self._events(ch))

    def _events(self, ch: Channel) -> Iterator[Event]:
        wanted = DecodeError if self._errors_only else Event
        return (
            ev
            for ev in ch.events
            if isinstance(ev, wanted) and not isinstance(ev, LIFECYCLE_MARKERS)
        )

    def _channel_rows(self, ch: Channel) -> Iterator[dict[str, Any]]:
        tasks = self._tasks_on.get(ch.conn.id, [])
        events = sorted(self._events(ch), key=lambda ev: (ev.start, ev.offset))
        rows = (message_row(ch, ev, _task_at(tasks, ev.start)) for ev in events)
        if self._process_id is None or len(tasks) < 2:
            return rows
        return (row for row in rows if row["process_id"] == self._process_id)


def _tasks_on(tasks: Sequence[Task]) -> dict[str, list[tuple[int, str]]]:
    """By connection id, the process_id of each task on it from the time its first
    command was sent, in time order: a command connection may carry several tasks one
    after another (§3.8; 1.x controllers open one a task)."""
    on: dict[str, list[tuple[int, str]]] = {}
    for t in tasks:
        if t.process_id is None:
            continue
        since = t.start_sent if t.start_sent is not None else t.close_sent
        for conn in (t.cmd_conn, t.callback_conn):
            if conn is not None:
                on.setdefault(conn, []).append((since if since is not None else 0, t.process_id))
    for spans in on.values():
        spans.sort()
    return on


def _task_at(tasks: list[tuple[int, str]], when: int) -> str | None:
    """The process_id of the last task begun by `when` (the first one before it)."""
    if not tasks:
        return None
    return tasks[max(0, bisect.bisect_right(tasks, (when, "\uffff")) - 1)][1]


def _message_order(row: dict[str, Any]) -> tuple[int, str, int]:
    return row["time"], row["conn"], row["offset"]


# Derived from the Request/Reply they share a frame with: not messages of their own.
LIFECYCLE_MARKERS = (
    api.Construct,
    api.LifecycleCall,
    api.BeginAnswered,
    api.StepAnswered,
    api.ReleaseAnswered,
    api.KeepAliveK,
    api.LogLine,
    api.ExitCodePut,
    api.ApiError,
)


def message_row(ch: Channel, ev: Event, process_id: str | None) -> dict[str, Any]:
    conn = ch.conn
    src, dst = (
        (conn.client, conn.server)
        if ev.direction == CLIENT_TO_SERVER
        else (conn.server, conn.client)
    )
    return {
        "time": ev.start,
        "end": ev.end,
        "conn": conn.id,
        "channel": ch.kind,
        "direction": f"{src} → {dst}",
        "sender": getattr(ev, "sender", None) or _cmd_sender(ev),
        "type": type(ev).__name__,
        "offset": ev.offset,
        "process_id": process_id,
        "summary": describe(ev),
        "reason": ev.reason if isinstance(ev, DecodeError) else None,
    }


def _cmd_sender(ev: Event) -> str | None:
    if isinstance(ev, cmd.Answer):
        return "R"
    if isinstance(ev, (cmd.StartRemoteTask, cmd.RemoteTaskClose, cmd.RemoteTaskKill)):
        return "C"
    return None


# --- readable one-line summaries (the `messages` command) ------------------------------------


def describe(ev: Event) -> str:
    """A readable summary of one event, as a person reading a trace wants it."""
    if isinstance(ev, cmd.StartRemoteTask):
        attrs = _attrs(
            tcp_port=ev.tcp_port,
            kind=ev.kind,
            java_options=ev.java_options,
            java_classpath=ev.java_classpath,
            ip_address=ev.ip_address,
        )
        return f"<remote_scheduler.start_remote_task {attrs}>"
    if isinstance(ev, cmd.RemoteTaskClose):
        kill = " kill=yes" if ev.kill else ""
        return f"<remote_scheduler.remote_task.close process_id={ev.process_id}{kill}>"
    if isinstance(ev, cmd.RemoteTaskKill):
        return f"<remote_scheduler.remote_task.kill process_id={ev.process_id} signal={ev.signal}>"
    if isinstance(ev, cmd.KeepAlive):
        return f"keep-alive: {ev.count} space(s)"
    if isinstance(ev, cmd.ErrorAnswer):
        return f"answer ERROR {ev.code} {ev.text or ''}".rstrip()
    if isinstance(ev, cmd.ProcessAnswer):
        return f"answer <process {_attrs(process_id=ev.process_id, pid=ev.pid)}>"
    if isinstance(ev, cmd.Ok):
        return "answer <ok/>"
    if isinstance(ev, cmd.OtherAnswer):
        return f"answer <{ev.name} {_attrs(**dict(ev.attrs))}>".replace(" >", ">")
    if isinstance(ev, cmd.OtherCommand):
        return f"<{ev.name} {_attrs(**dict(ev.attrs))}>".replace(" >", ">")
    if isinstance(ev, api.Request):
        return _describe_request(ev)
    if isinstance(ev, api.Reply):
        return _describe_reply(ev)
    if isinstance(ev, DecodeError):
        return f"decode error ({ev.channel}): {ev.reason}"
    fields = {k: getattr(ev, k) for k in getattr(ev, "__dataclass_fields__", {})}
    for common in ("conn", "direction", "offset", "start", "end"):
        fields.pop(common, None)
    return f"{type(ev).__name__}({_attrs(**fields)})"


def _attrs(**values: Any) -> str:
    return " ".join(f"{k}={v}" for k, v in values.items() if v not in (None, "", ()))


def _describe_request(ev: api.Request) -> str:
    target = ev.object_name or (f"{ev.object_id:016x}" if ev.object_id else "")
    if ev.command in ("CreateInstance", "KeepAlive"):
        return ev.command
    if ev.command == "Release":
        return f"release {target}"
    name = ev.method or (f"dispid {ev.dispid}" if ev.dispid is not None else ev.command)
    args = ", ".join(_value(a) for a in ev.args)
    verb = "call" if ev.command == "Call" else ev.command.lower()
    return f"{verb} {target}.{name}({args})"


def _describe_reply(ev: api.Reply) -> str:
    req = ev.request
    what = (req.method or req.command) if req is not None else "?"
    if ev.error_code is not None or ev.error_what is not None:
        return f"→ {what}: E {ev.error_code or ''} {ev.error_what or ''}".rstrip()
    if ev.hr is not None and ev.hr & 0x80000000:
        return f"→ {what}: failed hr {ev.hr & 0xFFFFFFFF:08X}"
    return f"→ {what}: {_value(ev.result)}"


def _value(value: Any) -> str:
    if value is None:
        return "empty"
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_value(v) for v in value) + "]"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        text = json.dumps(value, ensure_ascii=False)
        return text if len(text) <= MAX_VALUE else text[: MAX_VALUE - 2] + '…"'
    return str(value)


MAX_VALUE = 120  # a construct script or a Params_xml document would drown the trace


# --- cell formatting and writers ---------------------------------------------------------


_stamps: dict[int, str] = {}  # whole second → its text: a task's times share seconds
_STAMPS_MAX = 1 << 16


def format_time(us: int) -> str:
    secs, frac = divmod(us, 1_000_000)
    stamp = _stamps.get(secs)
    if stamp is None:
        if len(_stamps) >= _STAMPS_MAX:
            _stamps.clear()
        stamp = datetime.fromtimestamp(secs, tz=timezone.utc).strftime("%Y-%m-%dT%H:%M:%S")
        _stamps[secs] = stamp
    return f"{stamp}.{frac:06d}Z"


def cell(value: Any, type_: str) -> Any:
    """A value as it goes out in CSV/JSON; None stays None (empty/null)."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return None
    if type_ == TIME:
        return format_time(int(value))
    if type_ == INTEGER:
        return int(value)
    if type_ == DURATION:
        return round(float(value), 3)
    return str(value)


def export_rows(rows: Iterable[dict[str, Any]], columns: Sequence[Column]) -> Iterator[dict]:
    specs = [(c.name, c.type) for c in columns]
    for row in rows:
        # cell() only for values that are there: most of a row's missing values skip it.
        yield {
            name: None if (value := row.get(name)) is None else cell(value, type_)
            for name, type_ in specs
        }


def write_csv(rows: Iterable[dict[str, Any]], columns: Sequence[Column], out: IO[str]) -> None:
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow([c.name for c in columns])
    for row in export_rows(rows, columns):
        cells = ["" if v is None else v for v in row.values()]
        if any(isinstance(v, str) and "\r" in v for v in cells):
            out.write(_crlf_quoted(cells))
        else:
            writer.writerow(cells)


def _crlf_quoted(cells: list[Any]) -> str:
    """A row with a field holding a CR, that field quoted (RFC 4180): csv quotes only the
    characters of its line terminator, and a lone CR unquoted split the row in two for
    every reader. Written with CRLF as the terminator, then ended with LF as the others."""
    line = io.StringIO()
    csv.writer(line, lineterminator="\r\n").writerow(cells)
    return line.getvalue()[:-2] + "\n"


# json's C encoder runs only without `indent`; with these separators its output for a flat
# row is that of indent=1 but for the braces' own lines (added in write_json).
_ROW_ENCODE = json.JSONEncoder(ensure_ascii=False, separators=(",\n  ", ": ")).encode


def write_json(rows: Iterable[dict[str, Any]], columns: Sequence[Column], out: IO[str]) -> None:
    """The same text as json.dump(rows, indent=1, ensure_ascii=False), several times faster."""
    separator = "[\n "
    for row in export_rows(rows, columns):  # one row at a time: rows may be made as they go
        out.write(separator + "{\n  " + _ROW_ENCODE(row)[1:-1] + "\n }")
        separator = ",\n "
    out.write("[]\n" if separator == "[\n " else "\n]\n")


PARQUET_GROUP_ROWS = 65_536  # rows per row group: the rows in memory at once while writing


def write_parquet(
    rows: Iterable[dict[str, Any]], columns: Sequence[Column], out: IO[bytes]
) -> None:
    """Parquet with the DataFrame's types (UTC timestamps in µs, nullable int64, float ms,
    strings), one row group at a time as the rows come."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    schema = pa.Schema.from_pandas(frame([], columns), preserve_index=False)
    with pq.ParquetWriter(out, schema) as writer:
        rows = iter(rows)
        while group := list(itertools.islice(rows, PARQUET_GROUP_ROWS)):
            table = pa.Table.from_pandas(frame(group, columns), schema, preserve_index=False)
            writer.write_table(table)


class OutputError(Exception):
    """An output path that must not or cannot be written; the message names it."""


def check_output(path: str, inputs: Sequence[str] = ()) -> None:
    """Raise OutputError when `path` cannot take an output, before the analysis runs: a
    directory, one of the input captures, a place where no file can be made."""
    if path == "-":
        return
    if os.path.isdir(path):
        raise OutputError(f"{path}: is a directory, not a file to write")
    if any(_same_file(path, capture) for capture in inputs):
        raise OutputError(f"{path}: is one of the input captures; not overwritten")
    if _written_in_place(path):
        return
    folder = os.path.dirname(os.path.realpath(path))
    if not os.path.isdir(folder):
        raise OutputError(f"{path}: no such directory to write into")
    try:  # the one sure test (permissions, read-only file systems, quotas): make a file
        fd, probe = tempfile.mkstemp(prefix=".jsdissect-probe.", dir=folder)
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        raise OutputError(f"{path}: cannot write there ({exc.strerror or exc})") from None


def _same_file(path: str, capture: str) -> bool:
    """Is `path` the input `capture`? For "-", the file behind stdin (`- < x.pcap`)."""
    try:
        stdin = os.fstat(0) if capture == "-" else None
        return os.path.samestat(os.stat(path), stdin or os.stat(capture))
    except OSError:
        return False


def _written_in_place(path: str) -> bool:
    """A device or a FIFO (/dev/null, a named pipe): a rename over it would replace it."""
    return os.path.exists(path) and not os.path.isfile(path) and not os.path.isdir(path)


def write_output(path: str, render: Callable[[Any], object], binary: bool = False) -> None:
    """Write `render(stream)` to `path` ('-' = stdout), a text stream (UTF-8) unless
    `binary`. A file is written through a temporary file and a rename, so a failure never
    leaves a half-written file behind; through a symbolic link, the file it points to is
    replaced and the link kept. A device or a FIFO (/dev/null, a named pipe) is written in
    place: a rename would replace it."""
    if path == "-":
        if sys.stdout is None:
            raise OSError(errno.EBADF, "standard output is closed", "-")
        try:
            _write_stdout(render, binary)
        except BrokenPipeError:
            raise  # `| head`: the reader had enough, no error
        except OSError as exc:  # a full disk behind a redirect: say where (found in review)
            exc.filename = exc.filename or "standard output"
            raise
        return
    if _written_in_place(path):
        try:
            with _opened(path, binary) as out:
                render(out)
        except OSError as exc:
            exc.filename = path  # a full device fails at the last flush, without a name
            raise
        return
    target = Path(os.path.realpath(path))
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", dir=target.parent)
    except OSError as exc:
        exc.filename = path  # the file the person asked for, not our temporary one
        raise
    try:
        os.fchmod(fd, new_file_mode())  # mkstemp's 0600 would outlive the rename
        with _opened(fd, binary) as out:
            render(out)
        os.replace(tmp, target)
    except BaseException as exc:
        Path(tmp).unlink(missing_ok=True)
        if isinstance(exc, OSError):
            exc.filename, exc.filename2 = path, None
        raise


def _write_stdout(render: Callable[[Any], object], binary: bool) -> None:
    """Data on stdout is the bytes a file would get: UTF-8 with the writer's own line ends,
    whatever the locale's encoding (cp1252 on a Windows redirect, latin-1 somewhere)."""
    stdout = sys.stdout
    buffer = getattr(stdout, "buffer", None)
    if buffer is None:  # a text-only stream put in its place (an embedding program)
        render(stdout)
        stdout.flush()
        return
    stdout.flush()  # what was printed before comes first
    if binary:
        render(buffer)
        buffer.flush()
        return
    stream = io.TextIOWrapper(buffer, encoding="utf-8", newline="")
    try:
        render(stream)
        stream.flush()
    finally:
        stream.detach()  # stdout's buffer stays open


def _opened(file: str | int, binary: bool) -> IO[Any]:
    if binary:
        return open(file, "wb")
    return open(file, "w", encoding="utf-8", newline="")


def new_file_mode() -> int:
    """The mode open() gives a new file: 0666 less the umask."""
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


def to_text(
    rows: Sequence[dict[str, Any]],
    columns: Sequence[Column],
    whole: bool = False,
    fit: tuple[int, Sequence[str]] | None = None,
) -> str:
    """A plain aligned table for the terminal: numbers right-aligned, blanks for missing;
    times of day, with their dates when the table spans more than one (UTC) day. Texts
    are cut at MAX_CELL characters unless `whole` (columns the person chose). `fit`: a
    terminal's width and the columns to leave out, in that order, until lines fit it (a
    last line then names them)."""
    times = [c.name for c in columns if c.type == TIME]
    dated = spans_days(r.get(name) for r in rows for name in times)
    limit = None if whole else MAX_CELL
    cells = [[_display(r.get(c.name), c.type, dated, limit) for c in columns] for r in rows]
    widths = [max([len(c.name)] + [len(row[i]) for row in cells]) for i, c in enumerate(columns)]
    left_out = _left_out(columns, widths, fit) if fit else []
    if left_out:
        kept = [i for i, c in enumerate(columns) if c.name not in left_out]
        columns = [columns[i] for i in kept]
        widths = [widths[i] for i in kept]
        cells = [[row[i] for i in kept] for row in cells]
    right = [c.type in (INTEGER, DURATION) for c in columns]

    def line(values: Sequence[str]) -> str:
        layout = zip(values, widths, right, strict=True)
        parts = [v.rjust(w) if r else v.ljust(w) for v, w, r in layout]
        return "  ".join(parts).rstrip()

    out = io.StringIO()
    out.write(line([c.name for c in columns]) + "\n")
    for row in cells:
        out.write(line(row) + "\n")
    if left_out:
        out.write(
            f"({len(left_out)} column(s) left out to fit the terminal: "
            f"{', '.join(left_out)}; --columns chooses, --csv/--json have all)\n"
        )
    return out.getvalue()


def _left_out(
    columns: Sequence[Column], widths: Sequence[int], fit: tuple[int, Sequence[str]]
) -> list[str]:
    """The columns `fit` leaves out, in its order, until a line fits the width. The last
    column counts by its name only: a long text there (an error) may run on, as the Info
    column of tshark's lines does, rather than cost the columns before it."""
    width, order = fit
    present = {c.name: w for c, w in zip(columns, widths, strict=True)}
    total = sum(widths[:-1]) + len(columns[-1].name) + 2 * (len(widths) - 1)
    left_out: list[str] = []
    for name in order:
        if total <= width:
            break
        if name in present:
            total -= present[name] + 2
            left_out.append(name)
    return left_out


MAX_CELL = 48  # long error texts would push every row off the screen; CSV/JSON keep all

# Text from the wire on a terminal: control characters (C0, DEL, C1) would move the cursor,
# recolour the screen or set the window title, and line breaks split a row; bidirectional
# overrides reorder what is shown. They are shown escaped, as tshark does; CSV/JSON keep
# the text as it was.
_NAMED_ESCAPES = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}
_UNPRINTABLE = [*range(0x20), *range(0x7F, 0xA0)]
_REORDERING = [0x2028, 0x2029, *range(0x202A, 0x202F), *range(0x2066, 0x206A)]
_ESCAPES = str.maketrans(
    {chr(c): _NAMED_ESCAPES.get(chr(c), f"\\x{c:02x}") for c in _UNPRINTABLE}
    | {chr(c): f"\\u{c:04x}" for c in _REORDERING}
)


def printable(text: str) -> str:
    """`text` safe to show on a terminal: one line, no control sequences (see _ESCAPES)."""
    return text.translate(_ESCAPES)


def spans_days(times: Iterable[int | None]) -> bool:
    """Do these times (µs, None for missing) fall on more than one UTC day?"""
    days = {t // DAY_US for t in times if t is not None}
    return len(days) > 1


DAY_US = 86_400_000_000


def clock(us: int, dated: bool = True) -> str:
    """A time (µs) as the terminal shows it: the time of day, after its date if asked."""
    return _clock(format_time(us), dated)


def _clock(text: str, dated: bool) -> str:
    """A CSV/JSON time as the terminal shows it: the time of day, after its date if asked."""
    return f"{text[:10]} {text[11:-1]}" if dated else text[11:-1]


def _display(value: Any, type_: str, dated: bool = False, limit: int | None = MAX_CELL) -> str:
    value = cell(value, type_)
    if value is None:
        return ""
    if type_ == TIME:
        return _clock(value, dated)
    if type_ == DURATION:
        return f"{value:.3f}"
    text = printable(str(value))
    return text if limit is None or len(text) <= limit else text[: limit - 1] + "…"


def message_line(row: dict[str, Any], dated: bool = False) -> str:
    """The terminal form of one message row (`dated`: rows span more than one day)."""
    when = clock(row["time"], dated)
    line = f"{row['conn']}  {row['channel']:<3}  {row['direction']}  {row['summary']}"
    return f"{when}  {printable(line)}"


ERROR_SHOWN = ("time", "conn", "channel", "direction", "offset")


def error_table(rows: Sequence[dict[str, Any]]) -> str:
    """`messages --errors` for the terminal: where each decode error is (connection,
    direction, stream offset) and its reason, which is never cut short like other cells."""
    columns = [c for c in MESSAGE_COLUMNS if c.name in ERROR_SHOWN]
    lines = to_text(rows, columns).splitlines()
    reasons = ["reason", *(printable(r["reason"]) for r in rows)]
    return "".join(f"{line}  {reason}\n" for line, reason in zip(lines, reasons, strict=True))


def _percentile(values: Sequence[float], q: float) -> float:
    """Nearest rank: a value that occurred (for fewer than 20 values, p95 is the maximum)."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, math.ceil(q * len(ordered)) - 1))]


def _median(values: Sequence[float]) -> float:
    """The middle value; for an even count the mean of the two middle ones (rounded to the
    microsecond, as every duration is)."""
    return round(statistics.median(values), 3)


def task_summary(rows: Sequence[dict[str, Any]], decode_errors: int = 0) -> str:
    """The summary line under the task table."""
    by_status = Counter(r["status"] for r in rows)
    failed = sum(n for status, n in by_status.items() if status in FAILED_STATUSES)
    # The others by name, so that the counts add up (found in review: "2 task(s): 0
    # completed, 0 failed" for two tasks running at the capture's end).
    others = [(s, n) for s, n in by_status.items() if s != "completed" and s not in FAILED_STATUSES]
    line = f"{len(rows)} task(s): {by_status['completed']} completed, {failed} failed"
    parts = [line + "".join(f", {n} {status}" for status, n in others)]
    for column in ("startup_ms", "run_ms"):
        values = [r[column] for r in rows if r[column] is not None]
        if values:
            median, p95 = _median(values), _percentile(values, 0.95)
            parts.append(f"{column} median {median:.3f} p95 {p95:.3f}")
    if decode_errors:
        parts.append(f"{decode_errors} decode error(s): see 'jsdissect messages --errors'")
    return "; ".join(parts)


PHASE_COLUMNS = (*DURATIONS, "total_ms")
DISTRIBUTION_COLUMNS: tuple[Column, ...] = (
    *_cols("remote phase", TEXT),
    *_cols("count", INTEGER),
    *_cols("median_ms p95_ms max_ms", DURATION),
)


def phase_distribution(rows: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per remote scheduler and phase: count, median, p95 and max of the durations."""
    by_remote: dict[str, list[dict[str, Any]]] = {}
    for row in rows:
        by_remote.setdefault(row["remote"] or "(unknown)", []).append(row)
    out = []
    for remote in sorted(by_remote):
        for phase in PHASE_COLUMNS:
            values = sorted(r[phase] for r in by_remote[remote] if r[phase] is not None)
            if not values:
                continue
            out.append(
                {
                    "remote": remote,
                    "phase": phase.removesuffix("_ms"),
                    "count": len(values),
                    "median_ms": _median(values),
                    "p95_ms": _percentile(values, 0.95),
                    "max_ms": values[-1],
                }
            )
    return out


def summary_text(rows: Sequence[dict[str, Any]], slowest: int = 0) -> str:
    """The per-phase distribution table, and optionally the slowest tasks."""
    text = "Phases per remote scheduler (ms):\n" + to_text(
        phase_distribution(rows), DISTRIBUTION_COLUMNS
    )
    timed = [r for r in rows if r["total_ms"] is not None]
    if slowest and timed:
        timed.sort(key=lambda r: r["total_ms"], reverse=True)
        shown = [c for c in TASK_COLUMNS if c.name in _SLOWEST_SHOWN]
        text += f"\nSlowest {min(slowest, len(timed))} task(s):\n" + to_text(timed[:slowest], shown)
    return text


_SLOWEST_SHOWN = {"process_id", "remote", "status", *PHASE_COLUMNS} - {"connect_ms"}


LOG_LEVELS = {-9: "debug9", -8: "debug8", -7: "debug7", -6: "debug6", -5: "debug5"}
LOG_LEVELS |= {-4: "debug4", -3: "debug3", -2: "debug2", -1: "debug1"}
LOG_LEVELS |= {0: "info", 1: "warn", 2: "error"}  # PROTOCOL §6.5


def task_heading(task: Task) -> str:
    """The line above each task's log when several are printed (printable); its first
    time tells apart tasks of one process id (a long capture repeats them)."""
    name = task.process_id or task.callback_conn or "?"
    times = [t for t in (getattr(task, column) for column in TIME_COLUMNS) if t is not None]
    since = f", from {format_time(min(times))}" if times else ""
    return printable(f"== task {name} ({task.job or 'job unknown'}, {task.status}{since}) ==")


# `log --csv/--json`: one row per line a task forwarded (its exit code and status are
# task table columns).
LOG_COLUMNS: tuple[Column, ...] = (
    *_cols("process_id callback_conn", TEXT),
    *_cols("time", TIME),
    *_cols("level text", TEXT),
)


def _log_lines(task: Task) -> Iterator[api.LogLine]:
    events = task.callback.events if task.callback is not None else ()
    return (ev for ev in events if isinstance(ev, api.LogLine))


def _level(line: api.LogLine) -> str:
    return LOG_LEVELS.get(line.level, line.method) if line.level is not None else line.method


def log_rows(tasks: Iterable[Task]) -> list[dict[str, Any]]:
    """The rows of LOG_COLUMNS: the tasks' log lines, as forwarded."""
    return [
        {
            "process_id": task.process_id,
            "callback_conn": task.callback_conn,
            "time": line.start,
            "level": _level(line),
            "text": line.text,
        }
        for task in tasks
        for line in _log_lines(task)
    ]


def task_log(task: Task) -> list[str]:
    """The lines a task forwarded over spooler_log, then its exit code and error, for a
    terminal (printable)."""
    lines = [
        f"{format_time(ev.start)}  {_level(ev):<6}  {printable(ev.text)}" for ev in _log_lines(task)
    ]
    if task.exit_code is not None:
        signal = f" signal {task.signal}" if task.signal is not None else ""
        lines.append(f"exit code {task.exit_code}{signal}")
    if task.error:
        lines.append(f"error {printable(task.error)}")
    lines.append(f"status {task.status}")
    return lines
