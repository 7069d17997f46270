"""The crafted captures of `pathological.py`, checked through tshark's eyes.

tshark is the oracle for the builder: it must read every file, its reassembled streams must be
the bytes the builder meant to send, and the truth's exact times must follow from the frames
tshark shows (its raw sequence numbers, lengths and timestamps), by the DESIGN "Exact times"
rules re-derived here independently of the library's own bookkeeping.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import Any

import pathological as patho
import pytest
from truth import COMPARED

# Building is pure Python and cheap; the packets are made only when a fixture writes them.
SCENARIOS = {make.__name__: make() for make in patho.SCENARIOS}
NAMES = list(SCENARIOS)
# Captures that miss bytes by design (gaps, snaplen, cut windows) have no full stream to follow.
WELL_FORMED = [name for name, s in SCENARIOS.items() if s.well_formed]
FIELDS = (
    "frame.number",
    "frame.time_epoch",
    "frame.len",
    "frame.cap_len",
    "tcp.stream",
    "ip.src",
    "ipv6.src",
    "tcp.srcport",
    "ip.dst",
    "ipv6.dst",
    "tcp.dstport",
    "tcp.flags.syn",
    "tcp.flags.ack",
    "tcp.flags.fin",
    "tcp.flags.reset",
    "tcp.seq_raw",
    "tcp.ack_raw",
    "tcp.len",
)


def tshark() -> str:
    """tshark's path; a test without it skips, except in CI (CI=true) where it fails."""
    path = shutil.which("tshark")
    if path:
        return path
    if os.environ.get("CI") == "true":
        pytest.fail("tshark is required in CI")
    pytest.skip("tshark is not installed")


CMD_COLUMNS = ("cmd_syn", "cmd_established", "start_sent", "start_answered")
CLOSE_COLUMNS = ("close_sent", "close_answered")
CALLBACK_COLUMNS = (
    "callback_syn",
    "callback_established",
    "begin_sent",
    "begin_answered",
    "release_answered",
    "callback_closed",
)


@dataclass
class Frame:
    time_us: int
    length: int
    cap_len: int
    stream: int
    src: tuple[str, int]
    dst: tuple[str, int]
    syn: bool
    ack: bool
    fin: bool
    rst: bool
    seq: int
    ack_no: int
    tcp_len: int

    @property
    def payload_captured(self) -> int:
        header = self.length - self.tcp_len
        return max(0, min(self.tcp_len, self.cap_len - header))


@dataclass
class Tshark:
    returncode: int
    stderr: str
    frames: list[Frame]
    follow: dict[int, dict[tuple[str, int], bytes]]  # stream → sender → bytes


def to_us(epoch: str) -> int:
    """tshark prints ns; the table truncates to µs (DESIGN "Exact times")."""
    return int(Decimal(epoch) * 1_000_000)


def parse_frames(text: str) -> list[Frame]:
    frames = []
    for line in text.splitlines():
        f = dict(zip(FIELDS, line.split("\t"), strict=True))
        flag = {k: f[f"tcp.flags.{k}"] in ("1", "True") for k in ("syn", "ack", "fin", "reset")}
        frames.append(
            Frame(
                time_us=to_us(f["frame.time_epoch"]),
                length=int(f["frame.len"]),
                cap_len=int(f["frame.cap_len"]),
                stream=int(f["tcp.stream"]),
                src=(f["ip.src"] or f["ipv6.src"], int(f["tcp.srcport"])),
                dst=(f["ip.dst"] or f["ipv6.dst"], int(f["tcp.dstport"])),
                syn=flag["syn"],
                ack=flag["ack"],
                fin=flag["fin"],
                rst=flag["reset"],
                seq=int(f["tcp.seq_raw"]),
                ack_no=int(f["tcp.ack_raw"]),
                tcp_len=int(f["tcp.len"]),
            )
        )
    return frames


def node(text: str) -> tuple[str, int]:
    host, port = text.rsplit(":", 1)
    return host.strip("[]"), int(port)


def parse_follow(text: str) -> dict[int, dict[tuple[str, int], bytes]]:
    """`-z follow,tcp,raw`: data lines of node 0 start in column 0, node 1's with a tab."""
    out: dict[int, dict[tuple[str, int], bytes]] = {}
    for block in text.split("=" * 67):
        lines = block.strip("\n").splitlines()
        if not lines or not lines[0].startswith("Follow:"):
            continue
        stream = int(lines[1].rsplit(" ", 1)[1])
        nodes = [node(line.split(": ", 1)[1]) for line in lines[2:4]]
        data = {nodes[0]: bytearray(), nodes[1]: bytearray()}
        for line in lines[4:]:
            sender = nodes[1] if line.startswith("\t") else nodes[0]
            data[sender] += bytes.fromhex(line.strip())
        out[stream] = {k: bytes(v) for k, v in data.items()}
    return out


def run_tshark(path: Path, streams: int) -> Tshark:
    """One tshark run per file (its start-up dominates): the frame fields, then the
    reassembled streams 0…streams-1 (tshark numbers TCP conversations in order of appearance)."""
    fields = [arg for name in FIELDS for arg in ("-e", name)]
    follow = [arg for n in range(streams) for arg in ("-z", f"follow,tcp,raw,{n}")]
    command = [tshark(), "-n", "-r", str(path), "-T", "fields", "-E", "separator=/t"]
    run = subprocess.run(
        [*command, *fields, *follow],
        capture_output=True,
        text=True,
        check=False,
    )
    listing, _, followed = run.stdout.partition("\n" + "=" * 67)
    # tshark warns about running as root on every start; that is not a reading problem.
    stderr = "\n".join(
        line
        for line in run.stderr.splitlines()
        if line.strip() and not line.startswith("Running as user")
    )
    frames = parse_frames(listing.strip("\n")) if run.returncode == 0 else []
    return Tshark(run.returncode, stderr, frames, parse_follow("=" * 67 + followed))


@dataclass
class Built:
    scenario: patho.Scenario
    truth: dict[str, Any]
    tshark: Tshark


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Built]:
    tshark()
    outdir = tmp_path_factory.mktemp("patho")
    paths = {name: s.write(outdir) for name, s in SCENARIOS.items()}
    runs = [(paths[name][0], len(list(conversations(s)))) for name, s in SCENARIOS.items()]
    with ThreadPoolExecutor(max_workers=4) as pool:
        views = dict(zip(paths, pool.map(lambda run: run_tshark(*run), runs), strict=True))
    return {
        name: Built(s, json.loads(paths[name][1].read_text()), views[name])
        for name, s in SCENARIOS.items()
    }


# --- tshark reads them, and its streams are the builder's ----------------------------------


@pytest.mark.parametrize("name", NAMES)
def test_tshark_reads_capture_without_error(built: dict[str, Built], name: str) -> None:
    view = built[name].tshark
    assert view.returncode == 0, view.stderr
    assert view.stderr == ""
    assert view.frames, "no TCP frames"


def conversations(scenario: patho.Scenario) -> Iterator[patho.Conversation]:
    captured = {id(s.conv) for s in scenario.captured()}
    yield from (c for c in scenario.cap.conversations if id(c) in captured)


def stream_of(view: Tshark, conv: patho.Conversation) -> int | None:
    ends = {conv.addrs[patho.CLIENT], conv.addrs[patho.SERVER]}
    return next((f.stream for f in view.frames if {f.src, f.dst} == ends), None)


@pytest.mark.parametrize("name", WELL_FORMED)
def test_follow_streams_equal_intended_bytes(built: dict[str, Built], name: str) -> None:
    b = built[name]
    for conv in conversations(b.scenario):
        stream = stream_of(b.tshark, conv)
        assert stream is not None, conv.name
        followed = b.tshark.follow.get(stream, {})
        for side in (patho.CLIENT, patho.SERVER):
            got = followed.get(conv.addrs[side], b"")
            assert got == bytes(conv.stream[side]), f"{conv.name} {side}"


# --- the truth's exact times, re-derived from tshark's frames -------------------------------


def conv_frames(view: Tshark, conv: patho.Conversation) -> list[Frame]:
    ends = {conv.addrs[patho.CLIENT], conv.addrs[patho.SERVER]}
    return [f for f in view.frames if {f.src, f.dst} == ends]


def first_syn(frames: list[Frame]) -> int | None:
    return next((f.time_us for f in frames if f.syn and not f.ack), None)


def established(frames: list[Frame], client: tuple[str, int]) -> int | None:
    for i, f in enumerate(frames):
        if f.syn and f.ack:
            want = (f.seq + 1) % (1 << 32)
            later = (g for g in frames[i + 1 :] if g.src == client and g.ack and g.ack_no == want)
            return next((g.time_us for g in later), f.time_us)
    return None


def first_close(frames: list[Frame]) -> int | None:
    return next((f.time_us for f in frames if f.fin or f.rst), None)


def byte_times(frames: list[Frame], conv: patho.Conversation, side: str) -> dict[int, int]:
    """Stream offset → time of the first frame that captured that byte."""
    sender, isn = conv.addrs[side], conv.isn[side]
    times: dict[int, int] = {}
    for f in frames:
        if f.src != sender or f.syn:
            continue
        start = (f.seq - isn - 1) % (1 << 32)
        for offset in range(start, start + f.payload_captured):
            times.setdefault(offset, f.time_us)
    return times


def message_times(
    frames: list[Frame], task: patho.Task, label: str
) -> tuple[int | None, int | None]:
    """(time of the first byte, time the last missing byte arrived) of a labelled message."""
    msg = task.message(label) if any(m.label == label for m in task.messages) else None
    if msg is None:
        return None, None
    times = byte_times(frames, msg.conv, msg.side)
    got = [times.get(o) for o in range(msg.start, msg.end)]
    complete = None if None in got else max(t for t in got if t is not None)
    return times.get(msg.start), complete


def tshark_times(view: Tshark, task: patho.Task) -> dict[str, int | None]:
    cmd, cb = conv_frames(view, task.cmd), conv_frames(view, task.cb)
    start_sent, _ = message_times(cmd, task, "start")
    _, start_answered = message_times(cmd, task, "start_answer")
    close_sent, _ = message_times(cmd, task, "close")
    _, close_answered = message_times(cmd, task, "close_answer")
    begin_sent, _ = message_times(cb, task, "begin")
    _, begin_answered = message_times(cb, task, "begin_answer")
    _, release_answered = message_times(cb, task, "release_answer")
    return {
        "cmd_syn": first_syn(cmd),
        "cmd_established": established(cmd, task.cmd.addrs[patho.CLIENT]),
        "start_sent": start_sent,
        "start_answered": start_answered,
        "callback_syn": first_syn(cb),
        "callback_established": established(cb, task.cb.addrs[patho.CLIENT]),
        "begin_sent": begin_sent,
        "begin_answered": begin_answered,
        "release_answered": release_answered,
        "callback_closed": first_close(cb),
        "close_sent": close_sent,
        "close_answered": close_answered,
    }


def expected_rows(view: Tshark, task: patho.Task) -> list[dict[str, int | None]]:
    """The time columns of the rows a task gives; without its start command the callback and
    the close are separate partial rows (see the truth's description)."""
    times = tshark_times(view, task)
    if times["start_answered"] is not None or times["start_sent"] is not None:
        return [times]
    rows = []
    if conv_frames(view, task.cb):
        rows.append({k: v if k in CALLBACK_COLUMNS else None for k, v in times.items()})
    if times["close_sent"] is not None:
        keep = CMD_COLUMNS + CLOSE_COLUMNS
        rows.append({k: v if k in keep else None for k, v in times.items()})
    return rows


@pytest.mark.parametrize("name", NAMES)
def test_truth_times_match_tshark(built: dict[str, Built], name: str) -> None:
    b = built[name]
    expected = [r for task in b.scenario.tasks for r in expected_rows(b.tshark, task)]
    assert [row["times"] for row in b.truth["tasks"]] == expected


# --- the truth files themselves -------------------------------------------------------------

ROW_KEYS = {
    *COMPARED,
    "flavour",
    "log",
    "times",
    "notes_contains",
}


@pytest.mark.parametrize("name", NAMES)
def test_truth_file_schema(built: dict[str, Built], name: str) -> None:
    truth = built[name].truth
    assert truth["scenario"] == built[name].scenario.name
    assert truth["description"]
    for row in truth["tasks"]:
        assert set(row) == ROW_KEYS
        assert set(row["times"]) == set(patho.TIME_COLUMNS)
        assert row["log_lines"] in (None, len(row["log"]))
    by_key = {patho.task_key(row): row for row in truth["tasks"]}
    stamps = [by_key[key]["times"][col] for key, col in truth["events"]]
    assert stamps == sorted(stamps)
    known = sum(t is not None for row in truth["tasks"] for t in row["times"].values())
    assert len(stamps) == known


def test_expected_rows_of_the_edge_cases(built: dict[str, Built]) -> None:
    """Spot checks of DESIGN rules the scenarios exist for."""

    def rows(name: str) -> list[dict[str, Any]]:
        return built[name].truth["tasks"]

    statuses = {name: [r["status"] for r in rows(name)] for name in NAMES}
    assert statuses["callback_refused"] == ["callback-refused"]
    assert statuses["callback_unanswered"] == ["callback-unanswered"]
    assert statuses["callback_syn_at_end"] == ["running"]
    assert statuses["ends_mid_task"] == ["running"]
    assert statuses["starts_mid_callback"] == ["partial", "partial"]
    assert statuses["port_reuse"] == ["completed", "completed"]
    partial_cb, partial_close = rows("starts_before_callback")
    assert partial_cb["process_id"] is None and partial_cb["remote"] is None
    assert partial_cb["controller"] == "10.1.0.10" and partial_cb["callback_port"] == 59999
    assert partial_close["process_id"] == "60601"
    assert [r["notes_contains"] for r in rows("nat_source") + rows("nat_destination")] == [
        "address",
        "address",
    ]
    assert rows("gap_whole_frame")[0]["log_lines"] == 2  # one of three step lines was lost
    assert rows("snaplen")[0]["log_lines"] == 2  # the truncated frame's lines do not count
    assert rows("ipv6")[0]["remote"] == "[2001:db8::20]:4455"


def test_builds_are_deterministic() -> None:
    one, two = patho.sequence_wrap(), patho.sequence_wrap()
    assert [bytes(p) for p in one.packets()] == [bytes(p) for p in two.packets()]
    assert one.truth() == two.truth()


def test_analyze_leaves_its_results_out_of_the_youngest_generation() -> None:
    """analyze() pauses the cyclic collector (its objects make no cycles); resumed with
    everything it made in the youngest generation, the first collection walked all of it
    (0.27 s after 10,000 tasks). Counted in objects, not timed."""
    import gc

    import jsdissect

    demo = Path(__file__).resolve().parent.parent / "captures" / "demo.pcap"
    assert gc.isenabled()
    gc.collect()  # the test's own start: no full collection due meanwhile
    result = jsdissect.analyze([demo])
    # (without the move, the first collection right after the return moved them one up)
    young = len(gc.get_objects(generation=0)) + len(gc.get_objects(generation=1))
    made = sum(len(ch.events) for ch in result.channels)
    assert gc.isenabled() and made > 300 and young < 300
    # A caller's frozen objects (kept shared before a fork) stay frozen (found in review:
    # the move thawed them all).
    gc.freeze()
    try:
        frozen = gc.get_freeze_count()
        jsdissect.analyze([demo])
        assert gc.get_freeze_count() >= frozen - 100
    finally:
        gc.unfreeze()
