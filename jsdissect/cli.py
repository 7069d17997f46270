"""Command line: click commands that call the library and print; no analysis logic here."""

from __future__ import annotations

import dataclasses
import errno
import functools
import gc
import io
import os
import shutil
import signal
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from typing import TYPE_CHECKING, Any

import click

from jsdissect import __version__, native
from jsdissect.callbacks import AUTO_START_BYTES, MAX_WORKERS
from jsdissect.capture import CaptureError, display_name
from jsdissect.cluster import ClusterError
from jsdissect.correlate import STATUSES, Channel
from jsdissect.protocol import DecodeError

if TYPE_CHECKING:
    from jsdissect.pipeline import Analysis
    from jsdissect.report import Column

EXIT_BAD_INPUT = 2
MAX_NAMED = 10  # unknown names an error lists before it counts the rest
STDOUT_NAME = "standard output"


def _file_name(_ctx: click.Context, param: click.Parameter, value: str | None) -> str | None:
    """An output given as "" (`--json "$OUT"` with OUT unset) is refused, not ignored."""
    if value == "":
        raise click.BadParameter("an empty file name", param=param)
    return value


def _capture_names(
    _ctx: click.Context, param: click.Parameter, value: tuple[str, ...]
) -> tuple[str, ...]:
    """A capture given as "" (a variable left unset) is refused with a clear message."""
    if "" in value:
        raise click.BadParameter("an empty file name", param=param)
    return value


CAPTURES = click.argument(
    "captures", nargs=-1, required=True, metavar="CAPTURE...", callback=_capture_names
)


CSV_OPTION = click.option(
    "--csv",
    "csv_path",
    metavar="FILE",
    callback=_file_name,
    help="Write CSV to FILE ('-' = stdout).",
)
JSON_OPTION = click.option(
    "--json",
    "json_path",
    metavar="FILE",
    callback=_file_name,
    help="Write JSON to FILE ('-' = stdout).",
)


PARQUET_OPTION = click.option(
    "--parquet",
    "parquet_path",
    metavar="FILE",
    callback=_file_name,
    help="Write Parquet to FILE, typed as the DataFrames are (pip install 'jsdissect[parquet]').",
)
OUTPUT_OPTIONS = ("csv_path", "json_path", "parquet_path")


def _tables(func: Callable) -> Callable:
    """--csv, --json and --parquet, for the commands that write tables."""
    return CSV_OPTION(JSON_OPTION(PARQUET_OPTION(func)))


def _writes_tables(opts: dict[str, Any]) -> bool:
    return any(opts.get(name) for name in OUTPUT_OPTIONS)


def _common(func: Callable | None = None, *, wireshark: bool = False) -> Any:
    """Options every analysis command takes; `wireshark`: --engine offers it too."""
    if func is None:
        return functools.partial(_common, wireshark=wireshark)
    engines = ["auto", "libpcap", "python", *(["wireshark"] if wireshark else [])]
    options = [
        click.option(
            "--scheduler-port",
            "scheduler_ports",
            type=click.IntRange(1, 65535),
            multiple=True,
            metavar="PORT",
            help="Remote scheduler command port (repeatable; default 4444 and 4455).",
        ),
        click.option(
            "--no-heuristics",
            is_flag=True,
            help="Recognise the command channel only on --scheduler-port ports.",
        ),
        click.option(
            "--engine",
            type=click.Choice(engines),
            default="auto",
            show_default=True,
            help="Capture reader: libpcap (fast, BPF), python (a Python record reader;"
            " libpcap's compiled filter still picks the packets)"
            + (", or tshark running wireshark/jobscheduler.lua." if wireshark else ".")
            + " auto: libpcap when it can (a compressed capture from a copy decompressed to"
            " $TMPDIR), else python (no pcapy-ng, a file libpcap cannot open or filter, a"
            " compressed capture that cannot be decompressed to a temporary file; from the"
            " first record libpcap would cut to a pcap header's snaplen the record exceeds).",
        ),
        click.option(
            "--jobs",
            type=click.IntRange(0, MAX_WORKERS),
            metavar="N",
            help="Processes that decode callback connections beside the reader (0: none;"
            " default: one per spare CPU, started once a capture has shown"
            f" {AUTO_START_BYTES >> 20} MB of callback traffic). The results are the same.",
        ),
        click.option(
            "--dask-scheduler",
            metavar="ADDRESS",
            help="Read each capture file as one task on this Dask scheduler"
            " (tcp://host:8786), or 'local' for a cluster of this machine's cores. The"
            " workers must see the files under the paths given (pip install"
            " 'jsdissect[dask]').",
        ),
        click.option(
            "-q",
            "--quiet",
            is_flag=True,
            help="No progress, and no summary after a table (warnings about the input still show).",
        ),
    ]
    for option in reversed(options):
        func = option(func)
    return func


class _Stopped(KeyboardInterrupt):
    """SIGTERM or SIGHUP (`kill`, a closed terminal or ssh session): unwound like Ctrl-C,
    so temporary files (a saved stdin, a decompressed copy) are removed on the way out."""

    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum = signum


def _stop_on(signum: int, _frame: object) -> None:
    raise _Stopped(signum)


def _out(text: str, nl: bool = True, err: bool = False) -> None:
    """Print a result (to stderr when `err`). With standard output closed (`>&-`), Python
    has no sys.stdout and click would print nothing; and a write error should name where it
    went wrong: both are errors naming standard output."""
    if not err and sys.stdout is None:
        raise OSError(errno.EBADF, "closed", STDOUT_NAME)
    try:
        click.echo(text, nl=nl, err=err)
    except BrokenPipeError:
        raise  # `| head`: handled by _guarded
    except OSError as exc:
        exc.filename = exc.filename or ("standard error" if err else STDOUT_NAME)
        raise


def _guarded(func: Callable) -> Callable:
    """Turn expected failures into one line on stderr and an exit status, never a traceback."""

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        for name in ("SIGTERM", "SIGHUP"):
            if hasattr(signal, name):  # SIGHUP is not on Windows
                signal.signal(getattr(signal, name), _stop_on)
        try:
            return func(*args, **kwargs)
        except click.ClickException:
            raise  # usage errors: click prints them with exit status 2
        except KeyboardInterrupt as exc:  # the shell's convention, 128 + signal, quietly
            sys.exit(128 + getattr(exc, "signum", signal.SIGINT))
        except BrokenPipeError:  # `jsdissect tasks X | head`: stop quietly, like cat would
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
            sys.exit(141)
        except (CaptureError, ClusterError) as exc:
            _fail(str(exc), EXIT_BAD_INPUT)
        except OSError as exc:
            name = exc.filename or ""
            _fail(f"{name}: {exc.strerror or exc}" if name else str(exc), EXIT_BAD_INPUT)
        except Exception as exc:  # a bug: still one line, the traceback only on request
            if os.environ.get("JSDISSECT_DEBUG"):
                raise
            _fail(f"internal error: {type(exc).__name__}: {exc} (JSDISSECT_DEBUG=1 for details)", 3)

    return wrapper


PICTURE_SUFFIXES = (".png", ".svg", ".html")  # what `timeline` can draw
MAX_TIME_WAIT_S = 86_400.0  # TIME_WAIT lasts minutes; a day is past any real setting


def _finite(value: float, hint: str) -> float:
    if value != value:  # NaN compares unequal to itself, and passes every range check
        raise click.BadParameter("not a number", param_hint=hint)
    return value


def _names(captures: Sequence[str]) -> str:
    return ", ".join(map(display_name, captures))


def _fail(message: str, status: int) -> None:
    click.echo(f"jsdissect: {_one_line(message)}", err=True)
    sys.exit(status)


def _one_line(message: str) -> str:
    """An error or a warning on one line: a file name (a newline in it, say) or another
    text of the input in it shown escaped, as text from the wire is (report.printable)."""
    from jsdissect.report import printable

    return printable(message)


def _version_message() -> str:
    """The version, and whether the hot modules run compiled: what a slow run asks first."""
    state = native.status()
    core = "compiled (mypyc)" if state.compiled else f"Python ({state.reason})"
    return f"%(prog)s, version %(version)s\ncore: {core}"


@click.group(
    context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100},
    epilog="Run 'jsdissect COMMAND --help' for the options and examples of a command.",
)
@click.version_option(__version__, prog_name="jsdissect", message=_version_message())
def main() -> None:
    """Analyze JobScheduler 1.x remote-execution traffic in pcap/pcapng captures.

    Decodes the XML command channel (controller → remote scheduler) and the binary
    callback channel (task process → controller), ties them together per task, and
    reports where the time went and what failed.
    """
    for stream in (sys.stdout, sys.stderr):
        # Text for people in a locale that cannot encode "→" or a name from the wire:
        # shown escaped rather than failing (data on stdout is UTF-8: report.write_output).
        if isinstance(stream, io.TextIOWrapper):
            stream.reconfigure(errors="backslashreplace")


class _Progress:
    """Segment counter on stderr, shown only on a terminal and after the first second."""

    def __init__(self, quiet: bool) -> None:
        self.enabled = not quiet and sys.stderr is not None and sys.stderr.isatty()
        self.started = time.monotonic()
        self.shown = False

    def __call__(self, segments: int) -> None:
        if self.enabled and time.monotonic() - self.started > 1:
            click.echo(f"\rreading… {segments:,} segments", err=True, nl=False)
            self.shown = True

    def done(self) -> None:
        if self.shown:
            click.echo("\r" + " " * 40 + "\r", err=True, nl=False)


def _check_output(path: str | None, captures: Sequence[str]) -> None:
    """Refuse an output file that cannot be written before the analysis, not after it."""
    from jsdissect.report import OutputError, check_output

    if path:
        try:
            check_output(path, captures)
        except OutputError as exc:
            _fail(str(exc), EXIT_BAD_INPUT)


def _check_outputs(captures: Sequence[str], opts: dict[str, Any]) -> None:
    csv_path, json_path = opts.get("csv_path"), opts.get("json_path")
    parquet_path = opts.get("parquet_path")
    if [csv_path, json_path, parquet_path].count("-") > 1:
        raise click.UsageError("only one of --csv, --json and --parquet can write to stdout")
    if parquet_path == "-" and sys.stdout is not None and sys.stdout.isatty():
        raise click.UsageError("Parquet is binary: not written to a terminal (give a file)")
    # The same file under two names (a symbolic link) is the same file.
    files = [os.path.realpath(p) for p in (csv_path, json_path, parquet_path) if p and p != "-"]
    if len(set(files)) < len(files):
        raise click.UsageError("two of --csv, --json and --parquet name the same file")
    if parquet_path:
        _check_parquet()
    for path in (csv_path, json_path, parquet_path):
        _check_output(path, captures)


def _check_parquet() -> None:
    """Fail before the analysis, not after it, when Parquet cannot be written."""
    try:
        import pyarrow.parquet  # noqa: F401
    except ImportError:
        _fail("--parquet needs pyarrow: pip install 'jsdissect[parquet]'", EXIT_BAD_INPUT)


def _analyze(
    captures: Sequence[str],
    opts: dict[str, Any],
    messages: bool = False,
    connections: bool = False,
    **extra: Any,
) -> Analysis:
    """Run the analysis; only `messages` keeps every decoded message, only `connections`
    every connection (memory, DESIGN Scale)."""
    from jsdissect.pipeline import DEFAULT_SCHEDULER_PORTS, analyze

    # A short run that makes no reference cycles: the cyclic collector would only walk the
    # results again and again while they are written (analyze() pauses it for itself).
    gc.disable()

    _check_outputs(captures, opts)
    progress = _Progress(opts["quiet"])
    result = analyze(
        captures,
        scheduler_ports=opts["scheduler_ports"] or DEFAULT_SCHEDULER_PORTS,
        engine=opts["engine"],
        heuristics=not opts["no_heuristics"],
        progress=progress,
        messages=messages,
        connections=connections or messages,
        workers=opts["jobs"],
        dask_scheduler=opts["dask_scheduler"],
        **extra,
    )
    progress.done()
    _warn(result.stats.warnings)
    return result


def _warn(warnings: Sequence[str]) -> None:
    """Printed with -q too: what was lost from the input is neither progress nor summary."""
    for warning in warnings:
        click.echo(f"jsdissect: warning: {_one_line(warning)}", err=True)


def _wireshark(captures: Sequence[str], opts: dict[str, Any]) -> tuple[list[dict], list[dict]]:
    """Task and message rows from tshark running the plugin (`--engine wireshark`)."""
    from jsdissect import wireshark

    if opts["dask_scheduler"]:
        raise click.UsageError("--dask-scheduler reads with jsdissect's own engines, not tshark")
    _check_outputs(captures, opts)
    ports = opts["scheduler_ports"] or (4444, 4455)
    result = wireshark.analyze(captures, ports, heuristics=not opts["no_heuristics"])
    _warn(result.warnings)
    return result.tasks, result.messages


def _emit(
    rows: Iterable[dict],
    columns: Sequence[Column],
    opts: dict[str, Any],
    shown: Sequence[str],
    chosen_by_user: bool = False,
    fit_order: Sequence[str] = (),
) -> bool:
    """Write --csv/--json outputs; print the table unless one of them went to stdout.
    Returns True when stdout carries data (summaries then go to stderr)."""
    from jsdissect import report

    outputs = [(opts["csv_path"], report.write_csv), (opts["json_path"], report.write_json)]
    to_stdout = False
    for path, writer in outputs:
        if path:
            report.write_output(path, functools.partial(writer, rows, columns))
            to_stdout |= path == "-"
    if opts.get("parquet_path"):  # (not every command writes Parquet)
        render = functools.partial(report.write_parquet, rows, columns)
        report.write_output(opts["parquet_path"], render, binary=True)
        to_stdout |= opts["parquet_path"] == "-"
    if not to_stdout and not _writes_tables(opts):
        by_name = {c.name: c for c in columns}
        chosen = [by_name[name] for name in shown if name in by_name]
        # columns asked for by name are shown whole (found in review: `--columns error`
        # still cut the error text); on a terminal, the default ones fit its width (found
        # in review: 190 characters on an 80-column terminal)
        fit = None
        if fit_order and not chosen_by_user and sys.stdout is not None and sys.stdout.isatty():
            fit = (shutil.get_terminal_size().columns, fit_order)
        _out(report.to_text(list(rows), chosen, whole=chosen_by_user, fit=fit), nl=False)
    return to_stdout


# --- connections ------------------------------------------------------------------------


CONNECTION_SHOWN = [
    "id",
    "client",
    "server",
    "channel",
    "state",
    "first_packet",
    "duration_ms",
    "bytes_c2s",
    "bytes_s2c",
    "retransmissions",
    "gaps",
]


@main.command(
    epilog="""Examples:

\b
  jsdissect connections captures/demo.pcap
  jsdissect connections day-*.pcapng --csv conns.csv
"""
)
@CAPTURES
@_common
@_tables
@_guarded
def connections(captures: tuple[str, ...], **opts: Any) -> None:
    """List every TCP connection: endpoints, times, bytes each way, state, retransmissions
    and gaps, and which JobScheduler channel it carries."""
    from jsdissect import report

    result = _analyze(captures, opts, connections=True, all_tcp=True)
    rows = [report.connection_row(ch) for ch in sorted(result.channels, key=_by_start)]
    _emit(rows, report.CONNECTION_COLUMNS, opts, CONNECTION_SHOWN)


def _by_start(ch: Channel) -> tuple[int, str]:
    return (ch.conn.first_ts, ch.conn.id)


# --- tasks ------------------------------------------------------------------------------


TASK_SHOWN = [
    "process_id",
    "kind",
    "remote",
    "callback_port",
    "start_sent",
    "spawn_ms",
    "callback_delay_ms",
    "startup_ms",
    "run_ms",
    "close_ms",
    "total_ms",
    "steps",
    "exit_code",
    "signal",
    "log_lines",
    "status",
    "error",
]
# Left out first when the default columns do not fit a terminal: what the others derive
# from or say again, then the phases in the order a slow start looks at them last.
TASK_FIT_ORDER = [
    "signal",
    "kind",
    "log_lines",
    "steps",
    "spawn_ms",
    "close_ms",
    "callback_delay_ms",
    "exit_code",
    "run_ms",
    "callback_port",
    "total_ms",
]


@main.command(
    epilog="""Examples:

\b
  jsdissect tasks captures/demo.pcap
  jsdissect tasks ring-*.pcapng --status callback-unanswered
  jsdissect tasks capture.pcap --csv tasks.csv --json -
  jsdissect tasks capture.pcap --columns process_id,status,startup_ms,run_ms
  ssh host cat /var/tmp/capture.pcap | jsdissect tasks -

Columns of --csv/--json/--parquet, in order (any of them for --columns); times are
UTC, durations ms:

\b
  process_id pid job task_id kind controller remote cmd_conn callback_conn
  cmd_port callback_port callback_src_port
  cmd_syn cmd_established start_sent start_answered
  callback_syn callback_established begin_sent begin_answered
  release_answered callback_closed close_sent close_answered
  connect_ms         cmd_syn → cmd_established
  spawn_ms           start_sent → start_answered
  callback_delay_ms  start_sent → callback_syn
  startup_ms         start_sent → begin_answered
  run_ms             begin_answered → release_answered
  close_ms           close_sent → close_answered
  total_ms           cmd_syn → close_answered (else earliest → latest known)
  steps exit_code signal status error log_lines notes
"""
)
@CAPTURES
@_common(wireshark=True)
@_tables
@click.option(
    "--columns",
    metavar="A,B,…",
    help="Columns to print (listed below; default: a readable subset; CSV/JSON have all).",
)
@click.option(
    "--status",
    "statuses",
    multiple=True,
    type=click.Choice(STATUSES),
    help="Keep only tasks with this status (repeatable).",
)
@_guarded
def tasks(
    captures: tuple[str, ...], columns: str | None, statuses: tuple[str, ...], **opts: Any
) -> None:
    """One row per remote task: both connections, the time of every phase, status, exit
    code, errors and log lines (the columns are listed below)."""
    from jsdissect import report

    shown = TASK_SHOWN
    if columns is not None:
        shown = [c.strip() for c in columns.split(",") if c.strip()]
        if not shown:
            raise click.BadParameter("no column names given", param_hint="--columns")
        unknown = sorted(set(shown) - {c.name for c in report.TASK_COLUMNS})
        if unknown:
            known = ", ".join(c.name for c in report.TASK_COLUMNS)
            named = ", ".join(unknown[:MAX_NAMED])  # one readable line, whatever was given
            if len(unknown) > MAX_NAMED:
                named += f" and {len(unknown) - MAX_NAMED} more"
            raise click.BadParameter(
                f"unknown column(s): {named} (known: {known})", param_hint="--columns"
            )
        shown = list(dict.fromkeys(shown))  # a column named twice is shown once
    result: Analysis | None = None  # the default engine's; tshark's gives `found` messages
    found: list[dict[str, Any]] = []
    if opts["engine"] == "wireshark":
        rows, found = _wireshark(captures, opts)
        explained = True  # by tshark's warnings, or the lack of them: no hint of ours
    else:
        result = _analyze(captures, opts)
        rows = [report.task_row(t) for t in result.task_records]
        explained = bool(rows or result.stats.warnings)  # e.g. a snap length of 40
    if statuses:
        rows = [r for r in rows if r["status"] in statuses]
    to_stdout = _emit(
        rows,
        report.TASK_COLUMNS,
        opts,
        shown,
        chosen_by_user=columns is not None,
        fit_order=TASK_FIT_ORDER,
    )
    if not opts["quiet"]:
        below_table = "" if _writes_tables(opts) else "\n"  # a blank line after the table only
        _out(below_table + report.summary_text(rows), err=to_stdout, nl=False)
        # counted for the summary only: it looks at every event of every connection
        if result is None:
            decode_errors = sum(r["type"] == DecodeError.__name__ for r in found)
        else:
            decode_errors = result.decode_errors
        _out(report.task_summary(rows, decode_errors), err=to_stdout)
        if not explained:
            _out(_nothing_found(opts), err=to_stdout)


def _nothing_found(opts: dict[str, Any]) -> str:
    """Where jsdissect looked, for a capture in which it found no task."""
    from jsdissect.pipeline import DEFAULT_SCHEDULER_PORTS

    ports = ", ".join(map(str, opts["scheduler_ports"] or DEFAULT_SCHEDULER_PORTS))
    where = f"command port(s) {ports}"
    if not opts["no_heuristics"]:
        where += ", and any port by the protocol's first bytes"
    return f"No JobScheduler task found (looked at {where}); another port: --scheduler-port PORT."


# --- messages ---------------------------------------------------------------------------


@main.command(
    epilog="""Examples:

\b
  jsdissect messages captures/demo.pcap
  jsdissect messages captures/demo.pcap --process-id 985860244
  jsdissect messages capture.pcap --errors
  jsdissect messages capture.pcap --json - | jq .
"""
)
@CAPTURES
@_common(wireshark=True)
@_tables
@click.option("--process-id", help="Only the messages of this task (both connections).")
@click.option("--errors", "errors_only", is_flag=True, help="Only decode errors.")
@_guarded
def messages(
    captures: tuple[str, ...], process_id: str | None, errors_only: bool, **opts: Any
) -> None:
    """One line per decoded message in time order: time, connection, channel, direction
    and a readable summary."""
    from jsdissect import report

    if opts["engine"] == "wireshark":
        task_rows, found = _wireshark(captures, opts)
        _check_task(process_id, {r["process_id"] for r in task_rows}, captures)
        rows: Iterable[dict[str, Any]] = [
            r
            for r in found
            if (process_id is None or r["process_id"] == process_id)
            and (not errors_only or r["type"] == DecodeError.__name__)
        ]
        times: Iterable[int] = [r["time"] for r in rows]
    else:
        result = _analyze(captures, opts, messages=True)
        _check_task(process_id, {t.process_id for t in result.task_records}, captures)
        decoded = report.MessageRows(result.channels, result.task_records, process_id, errors_only)
        rows, times = decoded, decoded.times()
    if _writes_tables(opts):
        _emit(rows, report.MESSAGE_COLUMNS, opts, ())
        return
    if errors_only:
        _out(report.error_table(list(rows)), nl=False)
        return
    dated = report.spans_days(times)
    for row in rows:
        _out(report.message_line(row, dated))


def _check_task(process_id: str | None, known: set[str | None], captures: Sequence[str]) -> None:
    if process_id is not None and process_id not in known:
        _fail(f"no task with process_id {process_id} in {_names(captures)}", 1)


# --- summary, ports, timeline, log -------------------------------------------------------


@main.command(
    epilog="""Examples:

\b
  jsdissect summary captures/demo.pcap
  jsdissect summary day-*.pcapng --slowest 20 --csv phases.csv
"""
)
@CAPTURES
@_common
@_tables
@click.option(
    "--slowest",
    default=10,
    show_default=True,
    type=click.IntRange(0),
    help="How many slowest tasks to list.",
)
@_guarded
def summary(captures: tuple[str, ...], slowest: int, **opts: Any) -> None:
    """Per-phase duration distribution (count, median, p95, max) per remote scheduler, and
    the slowest tasks."""
    from jsdissect import report

    result = _analyze(captures, opts)
    rows = [report.task_row(t) for t in result.task_records]
    to_stdout = False
    if _writes_tables(opts):  # the distribution; the slowest tasks still show, as with `tasks`
        to_stdout = _emit(report.phase_distribution(rows), report.DISTRIBUTION_COLUMNS, opts, ())
        if opts["quiet"]:
            return
    _out(report.summary_text(rows, slowest), nl=False, err=to_stdout)
    if not opts["quiet"]:  # the line under every table, which -q leaves out (found in review)
        _out(report.task_summary(rows, result.decode_errors), err=to_stdout)
    if not (rows or result.stats.warnings):  # as `tasks` says (found in review)
        _out(_nothing_found(opts), err=to_stdout)


@main.command(
    epilog="""Examples:

\b
  jsdissect ports captures/demo.pcap
  jsdissect ports day-*.pcapng --json ports.json
  jsdissect ports capture.pcap --time-wait 60
"""
)
@CAPTURES
@_common
@CSV_OPTION
@JSON_OPTION
@click.option(
    "--time-wait",
    default=120.0,
    show_default=True,
    type=click.FloatRange(0, MAX_TIME_WAIT_S),  # NaN passes a range: see _finite
    callback=lambda _ctx, _param, value: _finite(value, "--time-wait"),
    help="Seconds a closed port may linger in TIME_WAIT.",
)
@_guarded
def ports(captures: tuple[str, ...], time_wait: float, **opts: Any) -> None:
    """Callback ports used, the peak of parallel tasks, ports reused within TIME_WAIT,
    failed callbacks and command connections, and the firewall rules to write. --json
    writes all of it; --csv one row per port use (a task's callback port, from when it
    was held to when it was free again)."""
    import json

    from jsdissect import ports as port_report
    from jsdissect.report import write_csv, write_output

    result = _analyze(captures, opts, ports_end=True)
    scheduler_ports = opts["scheduler_ports"] or (4444, 4455)
    rep = port_report.port_report(
        result.task_records,
        result.channels,
        scheduler_ports,
        round(time_wait * 1e6),  # (int() took 1.001 s for 1,000,999 µs)
        capture_end=result.capture_end,
        capture_start=result.capture_start,
    )
    if opts["csv_path"]:
        uses = [dataclasses.asdict(u) for u in rep.uses]
        render = functools.partial(write_csv, uses, port_report.USE_COLUMNS)
        write_output(opts["csv_path"], render)
    if opts["json_path"]:
        data = port_report.to_json(rep)
        write_output(opts["json_path"], lambda out: json.dump(data, out, indent=1))
    # The report is this command's summary: to stderr when the data goes to stdout, and
    # left out by -q when the data went somewhere (as `summary` does; found in review).
    if _writes_tables(opts) and opts["quiet"]:
        return
    _out(port_report.to_text(rep), nl=False, err="-" in (opts["csv_path"], opts["json_path"]))


@main.command(
    epilog="""Examples:

\b
  jsdissect timeline captures/demo.pcap -o tasks.png
  jsdissect timeline day-*.pcapng -o tasks.html
"""
)
@CAPTURES
@_common
@click.option(
    "-o",
    "--output",
    required=True,
    metavar="FILE",
    callback=_file_name,
    help="Picture to write: .png or .svg (matplotlib), .html (interactive, plotly).",
)
@_guarded
def timeline(captures: tuple[str, ...], output: str, **opts: Any) -> None:
    """One bar per task over time, split into its phases, failed tasks marked, grouped by
    remote scheduler: connecting (cmd_syn → start_sent), spawn (→ start_answered), callback
    (→ callback_established), begin (→ begin_answered), run (→ release_answered), closing
    (→ close_answered); a phase whose end was not captured lasts until the next time known.
    Beyond 60 tasks a remote's tasks share rows (each takes the first free one): the rows
    then show how many ran at once."""
    from pathlib import Path

    from jsdissect import plot

    names_a_folder = output.endswith(("/", os.sep))  # "t.html/" is no file to write
    if names_a_folder or Path(output).suffix.lower() not in PICTURE_SUFFIXES:
        raise click.BadParameter("use a .png, .svg or .html file name", param_hint="--output")
    _check_output(output, captures)
    # A task still running is drawn until the capture's end, as `ports` holds its port.
    result = _analyze(captures, opts, ports_end=True)
    plot.write(result.task_records, output, capture_end=result.capture_end)
    if not opts["quiet"]:
        click.echo(f"{output}: {len(result.task_records)} task(s)", err=True)


@main.command(
    epilog="""Examples:

\b
  jsdissect log captures/demo.pcap --process-id 985860244
  jsdissect log captures/demo.pcap --all
"""
)
@CAPTURES
@_common
@CSV_OPTION
@JSON_OPTION
@click.option("--process-id", help="The task whose log to print.")
@click.option("--all", "all_tasks", is_flag=True, help="Every task, with a header per task.")
@_guarded
def log(captures: tuple[str, ...], process_id: str | None, all_tasks: bool, **opts: Any) -> None:
    """The log lines a task forwarded over spooler_log (with times and levels), its exit
    code and errors. --csv/--json write one row per log line (process_id, callback_conn,
    time, level, text) instead."""
    from jsdissect import report

    if bool(process_id) == all_tasks:
        raise click.UsageError("give either --process-id ID or --all")
    result = _analyze(captures, opts)
    chosen = [t for t in result.task_records if all_tasks or t.process_id == process_id]
    if not chosen:
        which = "no task" if all_tasks else f"no task with process_id {process_id}"
        _fail(f"{which} in {_names(captures)}", 1)
    if _writes_tables(opts):
        _emit(report.log_rows(chosen), report.LOG_COLUMNS, opts, ())
        return
    for task in chosen:
        if len(chosen) > 1:  # (a process id repeats in a long capture: found in review)
            _out(report.task_heading(task))
        for line in report.task_log(task):
            _out(line)
