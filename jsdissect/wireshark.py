"""The Wireshark engine: the same analysis run by tshark with wireshark/jobscheduler.lua.

For a person who trusts Wireshark's dissection, or has a capture only Wireshark reads:
pyshark drives one two-pass tshark run with the plugin loaded, a display filter so only the
plugin's frames are parsed, and the plugin's task-table preference pointed at a temporary
file. Task rows come back with the same column names as `jsdissect tasks`; connection ids
are Wireshark's `tcp.stream` numbers.
"""

from __future__ import annotations

import asyncio
import contextlib
import csv
import logging
import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterable, Iterator, Sequence
from decimal import Decimal
from pathlib import Path
from typing import Any, NamedTuple

from jsdissect.capture import (
    SYN,
    CaptureError,
    CapturePath,
    Spooled,
    cut_short,
    display_name,
    read_segments,
    spooled,
)
from jsdissect.report import DURATION, INTEGER, TASK_COLUMNS, TIME

PLUGIN_NAME = "jobscheduler.lua"
DISPLAY_FILTER = "jobscheduler || jobscheduler_api"
LAST_ERROR = "Last error line:"  # how pyshark quotes tshark's stderr in a crash report
# Wireshark's TCP preferences the plugin relies on, whatever the user's profile says: the
# plugin's messages span segments (reassembly, which needs the sequence analysis), the
# payload reaches it on the command ports before any heuristic, and captures taken on the
# sending host have checksums the NIC fills in later (checked, they stop reassembly).
TCP_PREFS = {
    "tcp.desegment_tcp_streams": "TRUE",
    "tcp.analyze_sequence_numbers": "TRUE",
    "tcp.check_checksum": "FALSE",
    "tcp.try_heuristic_first": "FALSE",
}
SEQ_SPACE = 1 << 32
MAX_HOLES = 64  # per TCP direction: more holes open at once is a lossy capture


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
    """Run editcap or mergecap: its exit status and its complaint, in one line."""
    done = subprocess.run(args, capture_output=True, text=True)
    complaint = " ".join(done.stderr.split()) or f"exit status {done.returncode}"
    return done.returncode, _renamed(complaint, aliases)


def _renamed(text: str, aliases: Aliases) -> str:
    """Our copies named as the captures they came from."""
    for file, name in aliases.items():
        text = text.replace(file, name)
    return text


def _readable_part(path: CapturePath, copy: Path, warnings: list[str], aliases: Aliases) -> str:
    """The file itself, or when it is cut short, a copy of the packets before the cut:
    tshark stops at a cut with an error, and whether pyshark passes that error on depends
    on timing. The other engines read up to the cut with a warning; so does this one."""
    cut = cut_short(path)
    if not cut:
        return os.fspath(path)
    warnings.append(cut)
    name = display_name(path)
    aliases[str(copy)] = f"{name} (copied up to the cut)"
    status, complaint = _run_tool([_tool("editcap"), os.fspath(path), str(copy)], aliases)
    if status != 0 or not copy.is_file():  # editcap says 0 for a cut or corrupt input
        raise WiresharkError(
            f"{name}: cannot copy the part before the cut to {copy.parent.parent}: {complaint}"
        )
    return str(copy)


@contextlib.contextmanager
def _one_file(
    paths: Sequence[CapturePath], tmp: Path, warnings: list[str], aliases: Aliases
) -> Iterator[str]:
    """tshark reads one file: several (a ring buffer) are merged by time with mergecap."""
    # "-" and named pipes saved to files; all checked with the other engines' one-line
    # errors before tshark runs.
    with spooled(paths) as given:
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

    __slots__ = ("base", "holes", "next")

    def __init__(self, base: int) -> None:
        self.base = base
        self.next = 0  # offset after the highest byte seen
        self.holes: list[tuple[int, int]] = []  # [start, end) not captured, below `next`

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


def tcp_order(capture: str) -> tuple[bool, bool]:
    """(reordered, lossy): whether bytes of some TCP direction of the capture came after
    later bytes, and whether bytes of one were never captured while later bytes were (a
    lost segment, a packet cut by the snaplen).

    Wireshark reassembles reordered segments only with tcp.reassemble_out_of_order, and
    with it a direction stops at a hole that is never filled: every later byte waits for
    the missing one (wireshark/README.md). So the preference is for captures that need
    it and can bear it."""
    flows: dict[tuple[str, int, str, int], _Direction] = {}
    reordered = lossy = False
    for seg in read_segments([capture], bpf="tcp"):
        key = (seg.src, seg.sport, seg.dst, seg.dport)
        if seg.flags & SYN:
            old = flows.get(key)
            if old is None or old.base != (seg.seq + 1) % SEQ_SPACE:
                lossy = lossy or bool(old and old.holes)  # a new connection on the 4-tuple
                flows[key] = _Direction((seg.seq + 1) % SEQ_SPACE)
            continue
        size = len(seg.payload) + seg.missing
        if size == 0:
            continue
        d = flows.get(key)
        if d is None:  # picked up mid-stream
            d = flows[key] = _Direction(seg.seq)
        start = d.offset(seg.seq)
        if start < 0:
            continue  # before the first byte seen
        captured = start + len(seg.payload)
        if start < d.next and d.fill(start, captured):
            reordered = True
        if start > d.next:
            d.holes.append((d.next, start))
        if seg.missing and start + size > max(captured, d.next):
            d.holes.append((max(captured, d.next), start + size))
        d.next = max(d.next, start + size)
        if len(d.holes) > MAX_HOLES:
            return reordered, True
    return reordered, lossy or any(d.holes for d in flows.values())


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
        reordered, lossy = tcp_order(capture)
        if reordered and lossy:
            warnings.append(
                f"{names}: segments out of order and bytes not captured: Wireshark "
                "reassembles only one of these, so out-of-order segments are not "
                "reassembled (the default engine does both)"
            )
        prefs = {
            **TCP_PREFS,
            "tcp.reassemble_out_of_order": "TRUE" if reordered and not lossy else "FALSE",
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
            messages = [row for packet in cap for row in _message_rows(packet)]
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
    """The plugin's CSV back into task rows (times in µs, as `report.task_row` gives)."""
    types = {c.name: c.type for c in TASK_COLUMNS}
    with path.open(newline="", encoding="utf-8") as f:
        return [
            {name: _value(row.get(name, ""), types[name]) for name in types}
            for row in csv.DictReader(f)
        ]


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
    from datetime import datetime, timezone

    stamp, frac = text.rstrip("Z").split(".")
    secs = datetime.strptime(stamp, "%Y-%m-%dT%H:%M:%S").replace(tzinfo=timezone.utc)
    return int(secs.timestamp()) * 1_000_000 + int(frac.ljust(6, "0")[:6])


def _message_rows(packet: Any) -> Iterator[dict[str, Any]]:
    ts = int(Decimal(packet.sniff_timestamp) * 1_000_000)
    stream = packet.tcp.stream
    for layer in packet.layers:
        if layer.layer_name not in ("jobscheduler", "jobscheduler_api"):
            continue
        channel = "cmd" if layer.layer_name == "jobscheduler" else "api"
        kind, summary = _cmd_summary(layer) if channel == "cmd" else _api_summary(layer)
        yield {
            "time": ts,
            "conn": f"tcp.stream {stream}",
            "channel": channel,
            "direction": f"{packet.tcp.srcport} → {packet.tcp.dstport}",
            "type": kind,
            "process_id": _field(layer, "process_id"),
            "summary": summary,
        }


def _field(layer: Any, name: str) -> str | None:
    value = layer.get_field(name) if name in layer.field_names else None
    if isinstance(value, list):
        value = value[0]
    return None if value is None else str(value)


def _char(layer: Any, name: str) -> str:
    """A one-byte code field (message class, command) as its letter (PROTOCOL §5.1, §5.9)."""
    value = _field(layer, name)
    return chr(int(value, 0)) if value else ""


def _cmd_summary(layer: Any) -> tuple[str, str]:
    name = _field(layer, "command")
    pairs = [f"{k}={_field(layer, k)}" for k in ("tcp_port", "kind", "process_id", "pid")]
    attrs = " ".join(a for a in pairs if not a.endswith("=None"))
    if name:
        return "command", f"<{name} {attrs}>".replace(" >", ">")
    code = _field(layer, "error.code")
    result = f"ERROR {code}" if code else _field(layer, "result") or ""
    return "answer", f"answer {result} {attrs}".rstrip()


def _api_summary(layer: Any) -> tuple[str, str]:
    cls, command = _char(layer, "class"), _char(layer, "command")
    target = ".".join(p for p in (_field(layer, "object_name"), _field(layer, "method")) if p)
    if cls in ("A", "E"):
        hresult = _field(layer, "hresult.name") or _field(layer, "error.code") or ""
        return "answer", f"→ {target} {cls} {hresult}".rstrip()
    return "request", f"{cls}{command} {target}".rstrip()
