"""The Wireshark engine: the same analysis run by tshark with wireshark/jobscheduler.lua.

For a person who trusts Wireshark's dissection, or has a capture only Wireshark reads:
pyshark drives one two-pass tshark run with the plugin loaded, a display filter so only the
plugin's frames are parsed, and the plugin's task-table preference pointed at a temporary
file. Task rows come back with the same column names as `jsdissect tasks`, message rows as
`jsdissect messages` gives them (events built from the plugin's fields, described by the
same code); connection ids are Wireshark's `tcp.stream` numbers.
"""

from __future__ import annotations

import asyncio
import contextlib
import csv
import logging
import math
import os
import re
import shutil
import subprocess
import tempfile
from collections.abc import Iterable, Iterator, Sequence
from datetime import datetime, timezone
from decimal import Decimal
from pathlib import Path
from typing import Any, NamedTuple

from jsdissect.capture import (
    ACK,
    FIN,
    SYN,
    CaptureError,
    CapturePath,
    CaptureStats,
    Segment,
    Spooled,
    closing_reader,
    compression,
    cut_short,
    decompress,
    display_name,
    read_segments,
    snaplen_warning,
    spooled,
)
from jsdissect.pipeline import CALLBACK_RANGE, ClockSteps, Options, capture_filter
from jsdissect.protocol import DecodeError, Event
from jsdissect.protocol import command as cmd
from jsdissect.protocol import objserver as api
from jsdissect.report import DURATION, INTEGER, TASK_COLUMNS, TIME, describe
from jsdissect.tcp import Endpoint

PLUGIN_NAME = "jobscheduler.lua"
# Compressions every tshark reads (zstd and lz4 only when built with them); None: plain.
TSHARK_READS = (None, "gzip")
DISPLAY_FILTER = "jobscheduler || jobscheduler_api"
LAST_ERROR = "Last error line:"  # how pyshark quotes tshark's stderr in a crash report
# Wireshark's TCP preferences the plugin relies on, whatever the user's profile says: the
# plugin's messages span segments (reassembly; the sequence analysis, which out-of-order
# reassembly needs, is turned off only for captures it would lose bytes of: _order_prefs),
# the payload reaches it on the command ports before any heuristic, and captures taken on
# the sending host have checksums the NIC fills in later (checked, they stop reassembly).
TCP_PREFS = {
    "tcp.desegment_tcp_streams": "TRUE",
    "tcp.analyze_sequence_numbers": "TRUE",
    "tcp.check_checksum": "FALSE",
    "tcp.try_heuristic_first": "FALSE",
}
SEQ_SPACE = 1 << 32
MAX_HOLES = 64  # per TCP direction: more holes open at once is a lossy capture
# §3.6.1 the callback port a start command announces, as it looks in a segment
ANNOUNCED_PORT = re.compile(rb"""tcp_port\s*=\s*["']\s*(\d{1,5})\s*["']""")


class WiresharkError(CaptureError):
    """tshark or the plugin is missing, or tshark could not read the capture."""


def plugin_path() -> Path:
    """The plugin: $JSDISSECT_PLUGIN, this source tree's wireshark/, or the personal
    Wireshark plugins folder where the README says to install it."""
    candidates = [
        os.environ.get("JSDISSECT_PLUGIN"),
        Path(__file__).resolve().parent.parent / "wireshark" / PLUGIN_NAME,
        Path.home() / ".local" / "lib" / "wireshark" / "plugins" / PLUGIN_NAME,
    ]
    for candidate in candidates:
        if candidate and Path(candidate).is_file():
            return Path(candidate)
    raise WiresharkError(f"{PLUGIN_NAME} not found: set JSDISSECT_PLUGIN to its path")


def _tool(name: str) -> str:
    """A Wireshark command-line tool's path (tshark, editcap and mergecap come together)."""
    path = shutil.which(name)
    if path is None:
        raise WiresharkError(f"{name} is not installed (Debian: apt-get install tshark)")
    return path


Aliases = dict[str, str]  # a file made for tshark -> how messages name it


def _run_tool(args: list[str], aliases: Aliases) -> tuple[int, str]:
    """Run editcap or mergecap: its exit status and its complaint, in one line. A file name
    in it that is not UTF-8 comes back as Python gives such a name (surrogate escapes)."""
    done = subprocess.run(args, capture_output=True, text=True, errors="surrogateescape")
    status = f"exit status {done.returncode}" if done.returncode else ""  # ("": all well)
    complaint = " ".join(done.stderr.split()) or status
    return done.returncode, _renamed(complaint, aliases)


def _renamed(text: str, aliases: Aliases) -> str:
    """Our copies named as the captures they came from."""
    for file, name in aliases.items():
        text = text.replace(file, name)
    return text


def _readable_part(path: CapturePath, copy: Path, warnings: list[str], aliases: Aliases) -> str:
    """The file itself, or a copy tshark can read: decompressed when tshark may not read its
    compression, and when it is cut short, of the packets before the cut only: tshark stops
    at a cut with an error, and whether pyshark passes that error on depends on timing. The
    other engines read up to the cut with a warning; so does this one."""
    cut = cut_short(path)  # of the file as given, so the warning names it
    name, source = display_name(path), os.fspath(path)
    if compression(path) not in TSHARK_READS:
        source = _decompressed_copy(path, copy.with_name(f"plain-{copy.name}"), aliases)
    if not cut:
        return _undamaged_part(name, source, copy, warnings, aliases)
    warnings.append(cut)
    aliases[str(copy)] = f"{name} (copied up to the cut)"
    status, complaint = _run_tool([_tool("editcap"), source, str(copy)], aliases)
    if status != 0 or not copy.is_file():  # editcap says 0 for a cut or corrupt input
        raise WiresharkError(
            f"{name}: cannot copy the part before the cut to {copy.parent.parent}: {complaint}"
        )
    return str(copy)


def _undamaged_part(
    name: str, source: str, copy: Path, warnings: list[str], aliases: Aliases
) -> str:
    """`source`, or the part of it before what Wireshark's readers take for damage where
    jsdissect's do not (a record longer than Wireshark allows, say): tshark stops there
    with an error pyshark passes on or not, depending on timing (found in review: the same
    run failed or lost the rest silently). editcap reads as tshark does, and copies up to
    the damage; the time it takes is small beside tshark's."""
    aliases.setdefault(source, name)
    status, complaint = _run_tool([_tool("editcap"), source, str(copy)], aliases)
    if status != 0 or not copy.is_file():
        raise WiresharkError(f"{name}: Wireshark's reader cannot read it: {complaint}")
    if not complaint:
        copy.unlink()
        return source
    detail = complaint.removeprefix("editcap: ")
    warnings.append(f"{name}: Wireshark's reader stops at what it takes for damage: {detail}")
    return str(copy)


def _decompressed_copy(path: CapturePath, plain: Path, aliases: Aliases) -> str:
    """`plain`, the capture decompressed, for a tshark that may not read its compression."""
    name = display_name(path)
    aliases[str(plain)] = f"{name} (decompressed)"
    try:
        decompress(path, plain)
    except OSError as exc:  # no room in $TMPDIR, say: the copy goes with its directory
        where = plain.parent.parent
        problem = exc.strerror or str(exc)
        raise WiresharkError(f"{name}: cannot decompress it to {where}: {problem}") from None
    return str(plain)


@contextlib.contextmanager
def _one_file(
    paths: Sequence[CapturePath], tmp: Path, warnings: list[str], aliases: Aliases
) -> Iterator[str]:
    """tshark reads one file: several (a ring buffer) are merged by time with mergecap."""
    # "-" and named pipes saved to files; all checked with the other engines' one-line
    # errors before tshark runs.
    with spooled(paths, warnings) as given:
        aliases.update((os.fspath(p), str(p)) for p in given if isinstance(p, Spooled))
        files = [
            _readable_part(p, tmp / f"part{i}.pcapng", warnings, aliases)
            for i, p in enumerate(given)
        ]
        yield files[0] if len(files) == 1 else _merge(files, tmp / "merged.pcapng", aliases)


def _merge(files: list[str], merged: Path, aliases: Aliases) -> str:
    aliases[str(merged)] = f"the merged copy in {merged.parent.parent}"
    status, complaint = _run_tool([_tool("mergecap"), "-w", str(merged), *files], aliases)
    if status != 0:
        raise WiresharkError(
            complaint if complaint.startswith("mergecap") else f"mergecap: {complaint}"
        )
    return str(merged)


class _Direction:
    """One TCP direction while scanning: byte offsets from its first sequence number."""

    __slots__ = ("acked", "base", "holes", "next")

    def __init__(self, base: int) -> None:
        self.base = base
        self.next = 0  # offset after the highest byte seen
        self.holes: list[tuple[int, int]] = []  # [start, end) not captured, below `next`
        self.acked = 0  # offset after the highest byte the other side acknowledged

    def offset(self, seq: int) -> int:
        """`seq` as the offset nearest `next` (a stream may wrap the sequence space)."""
        half = SEQ_SPACE // 2
        return self.next + (seq - self.base - self.next + half) % SEQ_SPACE - half

    def fill(self, start: int, end: int) -> bool:
        """Bytes [start, end) captured: whether they filled (part of) a hole."""
        kept = []
        for a, b in self.holes:
            if end <= a or b <= start:
                kept.append((a, b))
                continue
            kept += [h for h in ((a, start), (end, b)) if h[0] < h[1]]
        filled = kept != self.holes
        self.holes = kept
        return filled


class TcpOrder(NamedTuple):
    """What a capture's TCP segments need of Wireshark's preferences (see tcp_order)."""

    reordered: bool  # bytes of a direction came after later bytes, or again with new ones
    lossy: bool  # bytes of a direction never captured while later bytes were
    # bytes first captured after the other side had acknowledged them: captured out of
    # the order they were sent in across the two directions (a tap's two directions
    # merged, capture queues with jitter)
    acked_early: bool = False
    resent: bool = False  # bytes of a direction captured again (a retransmission, a copy)


def tcp_order(
    capture: str,
    stats: CaptureStats | None = None,
    bpf: str = "tcp",
    steps: ClockSteps | None = None,
    announced: set[int] | None = None,
) -> TcpOrder:
    """Whether bytes of some TCP direction of the capture came after later bytes, or again
    with new ones (a retransmission that re-sends captured bytes and goes on past them);
    whether bytes of one were never captured while later bytes were (a lost segment, a
    packet cut by the snaplen); and whether bytes came after their acknowledgement.
    `steps`, when given, counts the clock steps of the same segments (read once for both);
    `announced`, when given, gets the callback ports that start commands in them announce.

    Wireshark reassembles reordered segments only with tcp.reassemble_out_of_order, and
    takes the new bytes of such a retransmission only with it too (without it, the whole
    segment is a retransmission its subdissector never gets); with it a direction stops at
    a hole that is never filled: every later byte waits for the missing one
    (wireshark/README.md). So the preference is for captures that need it and can bear
    it. Its sequence analysis takes bytes that come after their acknowledgement for a
    spurious retransmission, and keeps them from the subdissector too: only without the
    analysis (and so without out-of-order reassembly, which needs it) are they decoded."""
    segments = read_segments([capture], bpf=bpf, stats=stats)
    with closing_reader(segments):
        return _scan_directions(segments, steps, announced)


def _scan_directions(
    segments: Iterator[Segment], steps: ClockSteps | None, announced: set[int] | None
) -> TcpOrder:
    flows: dict[tuple[str, int, str, int], _Direction] = {}
    reordered = lossy = decided = acked_early = resent = False
    for n, seg in enumerate(segments):
        if steps is not None:
            steps.see(n, seg.ts)
        if decided:  # too many holes to follow: lossy
            if steps is None:
                break
            continue  # only the clock is still watched
        if announced is not None and b"tcp_port" in seg.payload:
            announced.update(int(port) for port in ANNOUNCED_PORT.findall(seg.payload))
        key = (seg.src, seg.sport, seg.dst, seg.dport)
        seq = seg.seq
        if seg.flags & SYN:
            seq = (seq + 1) % SEQ_SPACE  # its data (TCP Fast Open) follows it
            old = flows.get(key)
            if old is None or old.base != seq:
                lossy = lossy or bool(old and old.holes)  # a new connection on the 4-tuple
                flows[key] = _Direction(seq)
        if seg.flags & ACK:
            _acknowledge(flows.get((seg.dst, seg.dport, seg.src, seg.sport)), seg.ack)
        # A FIN takes a sequence number: bytes captured after it (their first copy lost,
        # then retransmitted) are out of order too.
        size = len(seg.payload) + seg.missing + (1 if seg.flags & FIN else 0)
        if size == 0:
            continue
        d = flows.get(key)
        if d is None:  # picked up mid-stream
            d = flows[key] = _Direction(seq)
        start = d.offset(seq)
        if start < 0:
            continue  # before the first byte seen
        captured = start + len(seg.payload)
        new = start >= d.next or d.fill(start, captured) or captured > d.next
        if start < d.next and new:
            reordered = True
        if new and seg.payload and captured <= d.acked:
            acked_early = True
        resent = resent or (not new and bool(seg.payload))
        if start > d.next:
            d.holes.append((d.next, start))
        if seg.missing and start + size > max(captured, d.next):
            d.holes.append((max(captured, d.next), start + size))
        d.next = max(d.next, start + size)
        if len(d.holes) > MAX_HOLES:
            lossy = decided = True
            flows.clear()  # memory: the holes are not needed any more
    lossy = lossy or any(d.holes for d in flows.values())
    return TcpOrder(reordered, lossy, acked_early, resent)


def _acknowledge(direction: _Direction | None, ack: int) -> None:
    """The other side acknowledged `direction`'s bytes up to sequence number `ack`."""
    if direction is not None:
        direction.acked = max(direction.acked, direction.offset(ack))


def _order_prefs(order: TcpOrder, names: str, warnings: list[str]) -> dict[str, str]:
    """Wireshark's TCP preferences for a capture's segment order (see tcp_order), and the
    warnings when it cannot decode all of them."""
    out_of_order = order.reordered and not order.lossy
    if order.reordered and order.lossy:
        warnings.append(
            f"{names}: segments out of order (or re-sending captured bytes with new "
            "ones) and bytes not captured: Wireshark reassembles only one of these, so "
            "out-of-order segments are not reassembled (the default engine does both)"
        )
    # Without the analysis a segment captured after its acknowledgement is decoded, but
    # so are bytes captured again (a retransmission: decoded twice), and out-of-order
    # reassembly needs it: it is turned off only for a capture that has neither.
    analysis = not order.acked_early or out_of_order or order.resent
    if order.acked_early and analysis:
        other = "segments out of order" if out_of_order else "bytes sent again"
        warnings.append(
            f"{names}: {other}, and segments captured after the other side had "
            "acknowledged them: Wireshark decodes only one of these, so the latter are "
            "taken for spurious retransmissions and not decoded (the default engine does both)"
        )
    return {
        "tcp.reassemble_out_of_order": "TRUE" if out_of_order else "FALSE",
        "tcp.analyze_sequence_numbers": "TRUE" if analysis else "FALSE",
    }


class Result(NamedTuple):
    tasks: list[dict[str, Any]]  # task rows, as report.task_row gives them
    messages: list[dict[str, Any]]  # one row per message the plugin decoded
    warnings: list[str]  # e.g. "FILE: cut short after packet 12 (...)"


def analyze(
    paths: Iterable[CapturePath],
    scheduler_ports: Sequence[int] = (4444, 4455),
    heuristics: bool = True,
) -> Result:
    """Task and message rows from one tshark run with the plugin. `heuristics=False`: the
    plugin's heuristic detection off (the command channel only on `scheduler_ports`, a
    callback connection only on a port a captured start command announced)."""
    import pyshark

    tshark, plugin = _tool("tshark"), plugin_path()
    paths = list(paths)
    names = ", ".join(map(display_name, paths))  # errors name the user's files, not copies
    warnings: list[str] = []
    aliases: Aliases = {}
    with (
        tempfile.TemporaryDirectory(prefix="jsdissect-") as tmp,
        _one_file(paths, Path(tmp), warnings, aliases) as capture,
        _quiet_asyncio(),
    ):
        table = Path(tmp) / "tasks.csv"
        read = CaptureStats()
        # Judged on what the default engine reads (JobScheduler's ports and first bytes):
        # a hole in unrelated traffic must not take reassembly from a reordered channel.
        options = Options(tuple(scheduler_ports), heuristics=heuristics)
        steps = ClockSteps()
        announced: set[int] = set()
        bpf = capture_filter(options, set())
        order = tcp_order(capture, read, bpf, steps, announced)
        lo, hi = CALLBACK_RANGE
        outside = {p for p in announced if 0 < p <= 0xFFFF and not lo <= p <= hi}
        outside -= set(scheduler_ports)
        if outside and not order.lossy:
            # callbacks on ports that read did not take: judged with them, as the default
            # engine reads them in a second pass
            order = tcp_order(capture, bpf=capture_filter(options, outside))
        if steps.count:
            warnings.append(steps.warning([names]))
        if read.truncated_packets:
            warnings.append(snaplen_warning(names, read.truncated_packets))
        prefs = {
            **TCP_PREFS,
            **_order_prefs(order, names, warnings),
            "jobscheduler.task_table_file": str(table),
            "jobscheduler.ports": ",".join(map(str, scheduler_ports)),
            "jobscheduler.heuristic": "TRUE" if heuristics else "FALSE",
        }
        # A loop of our own: pyshark would take the thread's current one, which a caller's
        # asyncio.run() may have closed and unset.
        loop = asyncio.new_event_loop()
        cap = pyshark.FileCapture(
            str(capture),
            eventloop=loop,
            keep_packets=False,
            use_json=True,
            display_filter=DISPLAY_FILTER,
            tshark_path=tshark,
            override_prefs=prefs,
            custom_parameters=["-2", "-X", f"lua_script:{plugin}"],
        )
        try:
            messages = _joined_keep_alives(row for packet in cap for row in _message_rows(packet))
        except Exception as exc:  # pyshark reports tshark's failures as various errors
            problem = _renamed(_one_line(exc), aliases)
            raise WiresharkError(f"{names}: tshark failed: {problem}") from exc
        finally:
            # tshark sometimes exits 255 after its last packet while pyshark closes the pipe
            # behind the JSON it has read in full; the task table file says whether the run
            # really completed (checked below).
            with contextlib.suppress(pyshark.capture.capture.TSharkCrashException):
                cap.close()
            # pyshark's __del__ closes again, on the loop closed here: once is enough.
            cap.close = _closed
            loop.close()
        if not table.is_file():
            raise WiresharkError(f"{names}: the plugin wrote no task table")
        try:
            tasks = read_task_table(table)
        except (ValueError, csv.Error) as exc:  # cut short (a full disk, say) or mangled
            problem = f"the plugin's task table is unreadable ({exc})"
            raise WiresharkError(f"{names}: {problem}") from None
        return Result(tasks, messages, warnings)


@contextlib.contextmanager
def _quiet_asyncio() -> Iterator[None]:
    """asyncio's child watcher warns about tshark's exit ("Unknown child process pid")
    when pyshark closes it: noise on a run that worked, so only its errors are shown."""
    log = logging.getLogger("asyncio")
    level = log.level
    log.setLevel(max(level, logging.ERROR))
    try:
        yield
    except KeyboardInterrupt:
        # pyshark's reading task ends with the EOFError of the interrupted pipe, which
        # asyncio logs as a traceback when the task is collected: Ctrl-C stays quiet.
        log.setLevel(logging.CRITICAL)
        raise
    except BaseException:
        log.setLevel(level)
        raise
    log.setLevel(level)


def _one_line(exc: Exception) -> str:
    """pyshark's crash report in one line: tshark's own last complaint when it has one."""
    lines = str(exc).strip().splitlines() or [type(exc).__name__]
    last = next((ln for ln in lines if ln.startswith(LAST_ERROR)), None)
    return last[len(LAST_ERROR) :].strip() if last else lines[0]


def _closed() -> None:
    """Stands in for a FileCapture's close() once it has been closed."""


def read_task_table(path: Path) -> list[dict[str, Any]]:
    """The plugin's CSV back into task rows (times in µs, as `report.task_row` gives).
    ValueError when it lacks even its header line: the plugin failed before writing it."""
    types = {c.name: c.type for c in TASK_COLUMNS}
    with path.open(newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        if reader.fieldnames is None:
            raise ValueError("no header line: the plugin failed (run tshark to see its error)")
        return [{name: _value(row.get(name, ""), types[name]) for name in types} for row in reader]


def _value(text: str, type_: str) -> Any:
    if text == "":
        return None
    if type_ == TIME:
        return _iso_to_us(text)
    if type_ == INTEGER:
        return int(text)
    if type_ == DURATION:
        return float(text)
    return text


def _iso_to_us(text: str) -> int:
    stamp, frac = text.rstrip("Z").split(".")
    secs = datetime.strptime(stamp, "%Y-%m-%dT%H:%M:%S").replace(tzinfo=timezone.utc)
    return int(secs.timestamp()) * 1_000_000 + int(frac.ljust(6, "0")[:6])


def _message_rows(packet: Any) -> Iterator[dict[str, Any]]:
    """The rows of `jsdissect messages` for the plugin's messages in one frame: the same
    columns, types and summaries as the default engine (report.describe on events built
    from the plugin's fields). Segment markers and padding are no messages."""
    end = int(Decimal(packet.sniff_timestamp) * 1_000_000)
    ip = packet.ip if hasattr(packet, "ip") else packet.ipv6
    src = Endpoint(str(ip.src), int(packet.tcp.srcport))
    dst = Endpoint(str(ip.dst), int(packet.tcp.dstport))
    for layer in packet.layers:
        if layer.layer_name not in ("jobscheduler", "jobscheduler_api"):
            continue
        for item in (layer, *layer.duplicate_layers):
            fields = item._all_fields  # the JSON tree; pyshark's flattening loses nesting
            channel = "cmd" if layer.layer_name == "jobscheduler" else "api"
            if channel == "api":
                fields = _with_nuls(fields)
            made = _cmd_event(fields) if channel == "cmd" else _api_event(fields)
            events = [made] if made is not None else []
            if channel == "api":
                events += [(error, None) for error in _api_errors(fields)]
            began = _first(fields, f"{layer.layer_name}.first_byte_time")
            # a frame not completely captured is shown where it began: its last byte's time
            done = _first(fields, f"{layer.layer_name}.last_byte_time")
            for ev, sender in events:
                yield {
                    "time": _abs_time_us(began) if began else end,
                    "end": _abs_time_us(done) if done else end,
                    "conn": f"tcp.stream {packet.tcp.stream}",
                    "channel": channel,
                    "direction": f"{src} → {dst}",
                    "sender": sender,
                    "type": type(ev).__name__,
                    "offset": None,  # a stream offset is not among the plugin's fields
                    "process_id": _first(fields, "jobscheduler.process_id"),
                    "summary": describe(ev),
                    "reason": ev.reason if isinstance(ev, DecodeError) else None,
                }


def _joined_keep_alives(rows: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    """Keep-alive spaces up to the next command as one message, as the command decoder
    gives them (§3.7: they are a prefix of that command); the plugin shows each segment's.
    In time order, as the default engine lists messages."""
    out: list[dict[str, Any]] = []
    last: dict[tuple[str, str], dict[str, Any]] = {}  # (conn, direction) -> its last row
    for row in rows:
        key = (row["conn"], row["direction"])
        before = last.get(key)
        if row["type"] == "KeepAlive" and before is not None and before["type"] == "KeepAlive":
            count = _spaces(before) + _spaces(row)
            before.update(end=row["end"], summary=describe(_keep_alive(count)))
            continue
        last[key] = row
        out.append(row)
    out.sort(key=lambda r: r["time"])
    return out


def _spaces(row: dict[str, Any]) -> int:
    return int(row["summary"].split()[1])


def _keep_alive(count: int) -> cmd.KeepAlive:
    return cmd.KeepAlive(**NO_SPAN, count=count, times=())


Fields = dict[str, Any]  # one message's part of tshark's JSON tree (repeated keys: lists)
NO_SPAN: dict[str, Any] = {
    "conn": "",
    "direction": 0,
    "offset": 0,
    "start": 0,
    "end": 0,
}  # describe() reads none
# the command an answer answers: describe() reads none of it
UNPAIRED: dict[str, Any] = {"command": None, "command_offset": None, "time": None}
MONTH_NAMES = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")
MONTHS = {name: number for number, name in enumerate(MONTH_NAMES, 1)}


def _all(fields: Fields, name: str) -> list[Any]:
    value = fields.get(name)
    return [] if value is None else value if isinstance(value, list) else [value]


def _first(fields: Fields, name: str) -> Any:
    values = _all(fields, name)
    return values[0] if values else None


def _number(fields: Fields, name: str) -> int | None:
    value = _first(fields, name)
    return None if value is None else int(value, 0)


def _abs_time_us(text: str) -> int:
    """tshark's absolute time in UTC ("Nov 25, 2026 13:36:53.316858000 UTC", English month
    names whatever the locale) in µs."""
    month, day, year, clock, _utc = text.replace(",", "").split()
    stamp, _, frac = clock.partition(".")
    h, m, sec = map(int, stamp.split(":"))
    moment = datetime(int(year), MONTHS[month], int(day), h, m, sec, tzinfo=timezone.utc)
    return int(moment.timestamp()) * 1_000_000 + int(frac.ljust(6, "0")[:6])


def _cmd_event(f: Fields) -> tuple[Event, str | None] | None:
    """A command-channel message as the command decoder's event (PROTOCOL §3)."""
    message = _first(f, "jobscheduler.message")
    if message == "3":
        spaces = int(_first(f, "jobscheduler.keepalive.spaces") or 0)
        return _keep_alive(spaces), None
    if message == "1":
        return _command(f), "C"
    if message != "2":
        return None  # a segment of a message, padding
    result = _first(f, "jobscheduler.answer.result")
    if result is None:  # not completely captured
        reason = "answer not completely captured"
        return DecodeError(**NO_SPAN, channel="cmd", reason=reason), None
    if result == "ERROR":
        code, text = _first(f, "jobscheduler.error.code"), _first(f, "jobscheduler.error.text")
        return cmd.ErrorAnswer(**NO_SPAN, **UNPAIRED, code=code, text=text, attrs=()), "R"
    if result == "process":
        # the answer's own process_id (the task's, added to other messages, is not in it)
        pid = _number(f, "jobscheduler.pid")
        process_id = _first(f, "jobscheduler.process_id")
        return cmd.ProcessAnswer(**NO_SPAN, **UNPAIRED, process_id=process_id, pid=pid), "R"
    if result == "ok":
        return cmd.Ok(**NO_SPAN, **UNPAIRED), "R"
    return cmd.OtherAnswer(**NO_SPAN, **UNPAIRED, name=result, attrs=_attrs(f)), "R"


def _attrs(f: Fields) -> tuple[tuple[str, str], ...]:
    return tuple(tuple(a.split("=", 1)) for a in _all(f, "jobscheduler.attribute") if "=" in a)


def _command(f: Fields) -> Event:
    name = _first(f, "jobscheduler.command") or ""
    if name == cmd.START:
        return cmd.StartRemoteTask(
            **NO_SPAN,
            tcp_port=_number(f, "jobscheduler.tcp_port"),
            kind=_first(f, "jobscheduler.kind"),
            java_options=_first(f, "jobscheduler.java_options"),
            java_classpath=_first(f, "jobscheduler.java_classpath"),
            ip_address=_first(f, "jobscheduler.ip_address"),
        )
    if name == cmd.CLOSE:
        kill = _first(f, "jobscheduler.kill") == "1"
        return cmd.RemoteTaskClose(
            **NO_SPAN, process_id=_first(f, "jobscheduler.process_id"), kill=kill
        )
    if name == cmd.KILL:
        return cmd.RemoteTaskKill(
            **NO_SPAN,
            process_id=_first(f, "jobscheduler.process_id"),
            signal=_first(f, "jobscheduler.signal"),
        )
    return cmd.OtherCommand(**NO_SPAN, name=name, attrs=_attrs(f))


API = "jobscheduler_api."
API_EXPERT = API + "expert."
API_COMMANDS = {  # §5.9, and the plugin's names on answers
    0x43: "CreateInstance",
    0x52: "Release",
    0x51: "QueryInterface",
    0x47: "GetIDsOfNames",
    0x49: "Invoke",
    0x41: "Call",
}
API_SENDERS = {"1": api.CONTROLLER, "2": api.TASK_SERVER}
NUL_SIGN = "\u2400"  # how the plugin shows a NUL in a string (Wireshark's end at one)


# The plugin's expert infos that are decode errors of the default engine: the reason is
# the expert's message, but for an answer without a request, worded as jsdissect words it.
API_ERROR_EXPERTS = {
    f"{API_EXPERT}unpaired": "answer with no open request",
    f"{API_EXPERT}malformed": None,
    f"{API_EXPERT}length": None,
    f"{API_EXPERT}no_session": None,
}


def _with_nuls(value: Any) -> Any:
    """The plugin's callback-channel fields with each ␀ a NUL again. Wireshark's strings
    end at a NUL, so the plugin shows one as ␀ (U+2400), which no §5.3 string (ISO-8859-1)
    can hold otherwise."""
    if isinstance(value, str):
        return value.replace(NUL_SIGN, "\0")
    if isinstance(value, dict):
        return {k: _with_nuls(v) if k.startswith(API) else v for k, v in value.items()}
    if isinstance(value, list):
        return [_with_nuls(v) for v in value]
    return value


def _api_errors(f: Fields) -> Iterator[DecodeError]:
    """A callback frame's decode errors, from the plugin's expert infos on it, or on the
    argument that broke its DISPPARAMS (§5.7)."""
    arguments = [a for a in _all(f, API + "argument") if isinstance(a, dict)]
    experts = [e for where in (f, *arguments) for e in _all(where, "_ws.expert")]
    for expert in experts:
        if not isinstance(expert, dict):
            continue
        for name, reason in API_ERROR_EXPERTS.items():
            if name in expert:
                text = reason or str(expert.get("_ws.expert.message", ""))
                yield DecodeError(**NO_SPAN, channel="api", reason=text)


def _api_event(f: Fields) -> tuple[Event, str] | None:
    """A callback-channel message as the object-server decoder's event (PROTOCOL §5)."""
    cls = _number(f, API + "class")
    if cls is None:
        return None  # a segment of a frame
    sender = API_SENDERS.get(_first(f, API + "sender") or "", api.UNKNOWN_SIDE)
    if cls in (0x53, 0x4F, 0x4B):
        return _api_request(f, cls, sender), sender
    method = _first(f, API + "method")
    request = _stand_in(method)
    code, what = _first(f, API + "error.code"), _first(f, API + "error.what")
    dispids = [int(d) for d in _all(f, API + "dispid")]
    refs = _all(f, API + "objref")
    if dispids:
        result: Any = dispids
    elif refs:
        result = _objref(refs[0])
    else:
        variants = _all(f, API + "variant")
        result = _variant(variants[0]) if variants else None
    reply = api.Reply(
        **NO_SPAN,
        sender=sender,
        request=request,
        hr=_number(f, API + "hresult"),
        result=result,
        error_name=_first(f, API + "error.name"),
        error_code=code,
        error_what=what,
    )
    return reply, sender


def _stand_in(method: str | None) -> api.Request | None:
    """The request a reply answers, as far as describe() needs it (its method's name)."""
    if method is None:
        return None
    command = "KeepAlive" if method == "keep-alive" else method
    return api.Request(
        **NO_SPAN,
        sender=api.UNKNOWN_SIDE,
        command=command,
        object_id=None,
        object_name=None,
        method=None if command in ("KeepAlive", "Release", "CreateInstance") else method,
        dispid=None,
        flags=None,
        args=(),
        depth=0,
    )


def _api_request(f: Fields, cls: int, sender: str) -> api.Request:
    if cls == 0x53:
        command = "CreateInstance"
    elif cls == 0x4B:
        command = "KeepAlive"
    else:
        command = API_COMMANDS.get(_number(f, API + "command") or -1, "Unknown")
    method = _first(f, API + "method")
    named: tuple[tuple[int, Any], ...] = ()
    if command == "GetIDsOfNames":
        args: tuple[Any, ...] = (method,) if method else ()
    elif command == "QueryInterface":  # §5.9: the interface asked for
        args = tuple(_all(f, API + "iid"))[:1]
    else:
        args, named = _dispparams(f)
    return api.Request(
        **NO_SPAN,
        sender=sender,
        command=command,
        object_id=_number(f, API + "object_id"),
        object_name=_first(f, API + "object_name"),
        method=method,
        dispid=_number(f, API + "dispid"),
        flags=_number(f, API + "flags"),
        args=args,
        depth=_number(f, API + "depth") or 0,
        named_args=named,
    )


def _dispparams(f: Fields) -> tuple[tuple[Any, ...], tuple[tuple[int, Any], ...]]:
    """§5.7 as the decoder gives it: the named values first on the wire (a property put's
    value last among the arguments, as in COM), then the positional ones, last first; and
    none when the list was not read in full (arguments not reached, or the plugin's
    expert on the one that broke it): the call's arguments are unknown then."""
    arguments = _all(f, API + "argument")
    broken = any(not isinstance(a, dict) or "_ws.expert" in a for a in arguments)
    if broken or len(arguments) != (_number(f, API + "args") or 0):
        return (), ()
    values = [_variant(a.get(API + "variant", {})) for a in arguments]
    dispids = [int(d, 0) for d in _all(f, API + "named_dispid")]
    named = tuple(zip(dispids, values, strict=False))
    put = tuple(value for dispid, value in named if dispid == api.DISPID_PROPERTYPUT)
    return (*reversed(values[len(named) :]), *put), named


def _objref(f: Fields) -> api.ObjRef:
    return api.ObjRef(
        id=_number(f, API + "objref.id") or 0,
        is_new=_first(f, API + "objref.is_new") == "1",
        title=_first(f, API + "objref.title"),
        name=_first(f, API + "objref.name"),
    )


def _variant(f: Fields) -> api.Variant:
    """One VARIANT of the plugin's tree as the decoder's Variant (§5.4, §5.5)."""
    vt = _number(f, API + "vt") or 0
    if vt & api.VT_ARRAY:
        a = _first(f, API + "array") or {}
        elem_vt = _number(a, API + "array.vt") or vt & ~api.VT_ARRAY
        elements: tuple[Any, ...] | bytes
        if elem_vt == api.VT_UI1:
            elements = bytes.fromhex((_first(a, API + "array.bytes") or "").replace(":", ""))
        elif elem_vt == api.VT_BSTR:
            elements = tuple(_all(a, API + "value.string"))
        else:
            elements = tuple(_variant(v) for v in _all(a, API + "variant"))
        features = _number(a, API + "array.features") or 0
        lbound = _number(a, API + "array.lbound") or 0
        return api.Variant(vt, api.SafeArray(features, elem_vt, elements, lbound))
    refs = _all(f, API + "objref")
    if refs:
        return api.Variant(vt, _objref(refs[0]))
    for name in ("value.string", "value.bool", "value.real_text", "value.int", "value.uint"):
        value = _first(f, API + name)
        if value is not None:
            break
    for name in ("value.int64", "value.uint64", "value.error"):
        value = _first(f, API + name) if value is None else value
    if value is None:
        return api.Variant(vt)
    if vt == api.VT_BSTR:
        return api.Variant(vt, value)
    if vt == api.VT_BOOL:
        return api.Variant(vt, value == "1")
    if vt in api.DOUBLE_VTS:
        real = _first(f, API + "value.real")
        return api.Variant(vt, api.Double(value, float(real) if real else math.nan))
    return api.Variant(vt, int(value, 0))
