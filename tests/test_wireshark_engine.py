"""`--engine wireshark`: the same table from tshark running the plugin, driven by pyshark."""

from __future__ import annotations

import bz2
import json
import lzma
import os
import random
import re
import subprocess
import sys
from collections.abc import Iterable
from decimal import Decimal
from itertools import pairwise
from pathlib import Path

import jsencode as js
import parity_captures
import pytest
from conftest import require
from crafted_captures import Capture
from jsencode import V
from pcapfiles import pcap_file
from scapy.layers.inet import IP, TCP
from scapy.layers.l2 import Ether
from scapy.packet import Raw
from scapy.utils import rdpcap, wrpcap
from zstandard import ZstdCompressor

import jsdissect
from jsdissect import report, wireshark

ROOT = Path(__file__).resolve().parent.parent
KEYS = ("process_id", "callback_port", "status", "exit_code", "steps", "log_lines", "kind")
CONN_IDS = ("cmd_conn", "callback_conn")  # Wireshark's tcp.stream numbers, not jsdissect's ids


def test_engine_table_equals_jsdissect_on_the_samples() -> None:
    require("tshark")
    for name in ("demo.pcap", "failures.pcap", "one_api.pcapng"):
        capture = ROOT / "captures" / name
        ours = [report.task_row(t) for t in jsdissect.analyze([capture]).task_records]
        theirs, messages, _warnings = wireshark.analyze([capture])
        assert _rows(theirs) == _rows(ours), name
        starts = [m for m in messages if m["summary"].startswith("<remote_scheduler.start")]
        assert len(starts) == sum(r["start_sent"] is not None for r in ours)


def test_engine_joins_ring_buffer_files(tmp_path: Path) -> None:
    require("tshark")
    editcap = require("editcap")
    capture = ROOT / "captures" / "demo.pcap"
    subprocess.run([editcap, "-c", "200", str(capture), str(tmp_path / "ring.pcap")], check=True)
    parts = sorted(tmp_path.glob("ring*.pcap"))
    assert len(parts) > 1
    whole = wireshark.analyze([capture]).tasks
    split = wireshark.analyze(parts).tasks
    assert [r["process_id"] for r in split] == [r["process_id"] for r in whole]


def test_cli_tasks_engine_wireshark() -> None:
    require("tshark")
    capture = ROOT / "captures" / "demo.pcap"
    out = subprocess.run(
        [sys.executable, "-m", "jsdissect", "tasks", str(capture), "--engine", "wireshark"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.returncode == 0, out.stderr
    ids = [r.process_id for r in jsdissect.analyze([capture]).task_records]
    assert all(pid in out.stdout for pid in ids)


def test_missing_plugin_is_a_clear_error(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("JSDISSECT_PLUGIN", str(tmp_path / "nope.lua"))
    monkeypatch.setattr(wireshark, "__file__", str(tmp_path / "x" / "wireshark.py"))
    monkeypatch.setenv("HOME", str(tmp_path))
    with pytest.raises(wireshark.WiresharkError, match=r"jobscheduler\.lua not found"):
        wireshark.plugin_path()


def _engine_cli(*paths: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "jsdissect", "tasks", *map(str, paths), "--engine", "wireshark"],
        capture_output=True,
        text=True,
        timeout=300,
    )


@pytest.mark.parametrize("content", [b"", b"not a capture\n"], ids=["empty", "text"])
def test_engine_checks_inputs_like_the_other_engines(tmp_path: Path, content: bytes) -> None:
    require("tshark")
    bad = tmp_path / "bad.pcap"
    bad.write_bytes(content)
    out = _engine_cli(bad)
    assert out.returncode == 2 and "Traceback" not in out.stderr
    (line,) = out.stderr.strip().splitlines()
    assert line.startswith("jsdissect: ") and "bad.pcap" in line


def test_engine_reports_a_file_wireshark_cannot_read_in_one_plain_line(tmp_path: Path) -> None:
    require("tshark")
    odd = tmp_path / "odd.pcap"
    # A whole pcap file of a link type Wireshark does not know: its reader refuses it (as
    # editcap, before any merge; mergecap did once).
    odd.write_bytes(pcap_file(9999, [(10**9, b"abcd", 4)]))
    out = _engine_cli(ROOT / "captures" / "demo.pcap", odd)
    assert out.returncode == 2, out.stderr
    (line,) = out.stderr.strip().splitlines()
    assert line.startswith(f"jsdissect: {odd}: Wireshark's reader cannot read it: ")
    assert "9999" in line


def test_engine_reads_a_file_given_twice_once_like_the_other_engines(tmp_path: Path) -> None:
    # Found in review: mergecap merged the file with itself, every packet twice.
    require("tshark")
    capture = ROOT / "captures" / "demo.pcap"
    (tmp_path / "link.pcap").symlink_to(capture)
    given = [capture, tmp_path / "link.pcap"]
    ours = jsdissect.analyze(given, engine="python")
    (expected,) = ours.stats.warnings
    assert expected == f"{capture} and {tmp_path / 'link.pcap'} are the same file: read once"
    result = wireshark.analyze(given)
    assert result.warnings == [expected]
    assert _full_rows(result.tasks) == _full_rows(wireshark.analyze([capture]).tasks)


@pytest.mark.parametrize("port", [b"+5999", b"0x100", b"5.9e4", b"59999"])
def test_engine_reads_an_announced_port_as_the_default_engine_does(
    tmp_path: Path, port: bytes
) -> None:
    # Lua's tonumber takes signs, hex and exponents; a number is ASCII digits (§3.6.1).
    require("tshark")
    shell = (ROOT / "captures" / "one_shell.pcap").read_bytes()
    assert shell.count(b'tcp_port="59999"') == 1
    capture = tmp_path / "port.pcap"
    capture.write_bytes(shell.replace(b'tcp_port="59999"', b'tcp_port="' + port + b'"'))
    ours = [report.task_row(t) for t in jsdissect.analyze([capture]).task_records]
    theirs = wireshark.analyze([capture]).tasks
    # a port that is no number: the task waits for nothing, its callback is a row of its own
    assert [r["callback_port"] for r in ours] == ([59999] if port.isdigit() else [None, 59999])
    assert _full_rows(theirs) == _full_rows(ours)


def _rows(rows: list[dict]) -> list[tuple[str, ...]]:
    return sorted(tuple(str(r[k]) for k in KEYS) for r in rows)


@pytest.mark.parametrize("alone", [True, False], ids=["one file", "with another"])
def test_engine_reads_a_cut_capture_up_to_the_cut_with_a_warning(
    tmp_path: Path, alone: bool
) -> None:
    # tshark stops at a cut with an error that pyshark passed on or not, by timing; and
    # mergecap refused a cut file. Now, as with the other engines: the packets before it.
    require("tshark")
    cut = tmp_path / "cut.pcap"
    cut.write_bytes((ROOT / "captures" / "demo.pcap").read_bytes()[:-30])
    paths = [cut] if alone else [cut, ROOT / "captures" / "one_api.pcapng"]
    ours = jsdissect.analyze(paths, engine="python")  # its words for the cut: the same
    (expected,) = ours.stats.warnings
    assert "cut short" in expected
    result = wireshark.analyze(paths)
    assert result.warnings == [expected]
    assert _rows(result.tasks) == _rows(report.task_row(t) for t in ours.task_records)
    out = _engine_cli(*paths)
    assert out.returncode == 0, out.stderr
    assert out.stderr.splitlines()[0] == f"jsdissect: warning: {expected}"


def test_engine_reads_stdin(tmp_path: Path) -> None:
    require("tshark")
    capture = ROOT / "captures" / "demo.pcap"
    args = [sys.executable, "-m", "jsdissect", "tasks", "--engine", "wireshark", "--csv", "-"]
    fed = subprocess.run([*args, "-"], input=capture.read_bytes(), capture_output=True, timeout=300)
    assert fed.returncode == 0, fed.stderr
    direct = subprocess.run([*args, str(capture)], capture_output=True, timeout=300)
    assert fed.stdout == direct.stdout and len(fed.stdout.splitlines()) == 1 + 10


def _reordered(source: Path, target: Path) -> Path:
    """Every data segment of `source` as three, written first, third, second, 1 µs apart."""
    packets = []
    for pkt in rdpcap(str(source)):
        data = bytes(pkt[TCP].payload) if TCP in pkt else b""
        if len(data) < 3:
            packets.append(pkt)
            continue
        cuts = [0, len(data) // 3, 2 * len(data) // 3, len(data)]
        pieces = []
        for a, b in pairwise(cuts):
            piece = pkt.copy()
            piece[TCP].remove_payload()
            piece[TCP].seq = (pkt[TCP].seq + a) % (1 << 32)
            piece = piece / Raw(data[a:b])
            del piece[IP].len, piece[IP].chksum, piece[TCP].chksum
            pieces.append(piece.__class__(bytes(piece)))
        for delay, piece in enumerate((pieces[0], pieces[2], pieces[1])):
            piece.time = pkt.time + Decimal(delay) / 1_000_000
            packets.append(piece)
    wrpcap(str(target), packets)
    return target


def _full_rows(rows: Iterable[dict]) -> list[tuple]:
    return sorted(tuple((k, str(v)) for k, v in r.items() if k not in CONN_IDS) for r in rows)


def test_engine_reassembles_reordered_segments(tmp_path: Path) -> None:
    """Wireshark drops reordered segments from reassembly unless told otherwise: the
    engine turns tcp.reassemble_out_of_order on for a capture that needs it, and gives
    the default engine's rows (times included: a message is complete when its last
    missing byte arrived, the middle segment here)."""
    require("tshark")
    capture = _reordered(ROOT / "captures" / "demo.pcap", tmp_path / "reordered.pcap")
    assert wireshark.tcp_order(str(capture))[:3] == (True, False, False)
    ours = [report.task_row(t) for t in jsdissect.analyze([capture]).task_records]
    result = wireshark.analyze([capture])
    assert len(result.tasks) == 10 and result.warnings == []
    assert _full_rows(result.tasks) == _full_rows(ours)


def _step_call_captured_after_its_acknowledgement(path: Path) -> Path:
    """A shell task whose step call is captured after the task's GetIDsOfNames, sent while
    the step ran, which acknowledges it: the two directions captured out of the order they
    were sent in (a tap's two directions merged, capture queues with jitter)."""
    from crafted_captures import shell_task

    shell_task(cap := Capture())
    packets = cap.packets
    (step,) = [i for i, p in enumerate(packets) if b"step" in bytes(p[TCP].payload)]
    asked = step + 1  # the task's next segment: its GetIDsOfNames
    assert b"log" in bytes(packets[asked][TCP].payload)
    assert packets[asked][TCP].ack > packets[step][TCP].seq  # it acknowledges the call
    packets[step], packets[asked] = packets[asked], packets[step]
    packets[step].time, packets[asked].time = packets[asked].time, packets[step].time
    return cap.write(path)


def test_engine_decodes_bytes_captured_after_their_acknowledgement(tmp_path: Path) -> None:
    """Wireshark's sequence analysis takes bytes captured after the other side
    acknowledged them for a spurious retransmission and keeps them from the plugin: the
    step call was lost (steps 0, an answer without a request). The engine turns the
    analysis off for such a capture, and gives the default engine's rows and messages."""
    require("tshark")
    capture = _step_call_captured_after_its_acknowledgement(tmp_path / "acked_early.pcap")
    assert wireshark.tcp_order(str(capture)) == (False, False, True, False)
    assert wireshark.tcp_order(str(ROOT / "captures" / "demo.pcap")).acked_early is False
    result = jsdissect.analyze([capture])
    ours = [report.task_row(t) for t in result.task_records]
    assert [(r["status"], r["steps"], r["exit_code"]) for r in ours] == [("completed", 1, 3)]
    theirs = wireshark.analyze([capture])
    assert theirs.warnings == [] and _full_rows(theirs.tasks) == _full_rows(ours)
    messages = report.message_rows(result.channels, result.task_records)
    assert not any(r["type"] == "DecodeError" for r in messages)
    assert _comparable_messages(theirs.messages) == _comparable_messages(messages)


def test_engine_keeps_the_analysis_for_bytes_sent_again(tmp_path: Path) -> None:
    """Without the sequence analysis Wireshark hands bytes captured again to the plugin
    again (found in review: a step call resent once was two steps). A capture with such
    bytes keeps the analysis, and says what it does not decode."""
    require("tshark")
    early = _step_call_captured_after_its_acknowledgement(tmp_path / "acked_early.pcap")
    packets = rdpcap(str(early))
    (step,) = [i for i, p in enumerate(packets) if b"step" in bytes(p[TCP].payload)]
    resent = packets[step].copy()  # TCP sends it again, with another window
    resent[TCP].window, resent.time = 1234, packets[step].time + Decimal("0.00005")
    del resent[TCP].chksum
    packets.insert(step + 1, resent)
    again = tmp_path / "resent.pcap"
    wrpcap(str(again), packets)
    assert wireshark.tcp_order(str(again)) == (False, False, True, True)
    ours = [report.task_row(t) for t in jsdissect.analyze([again]).task_records]
    assert [r["steps"] for r in ours] == [1]
    theirs = wireshark.analyze([again])
    assert [r["steps"] for r in theirs.tasks] == [0]  # lost, as said; not counted twice
    (order,) = [w for w in theirs.warnings if "acknowledged" in w]
    assert "bytes sent again" in order and "resent.pcap" in order


def test_engine_warns_when_reordered_and_acknowledged_before_captured(tmp_path: Path) -> None:
    """Out-of-order reassembly needs the sequence analysis, which drops bytes captured
    after their acknowledgement: a capture with both keeps the reassembly, and says what
    is not decoded."""
    require("tshark")
    early = _step_call_captured_after_its_acknowledgement(tmp_path / "acked_early.pcap")
    reordered = _reordered(ROOT / "captures" / "demo.pcap", tmp_path / "reordered.pcap")
    both = tmp_path / "both.pcapng"
    subprocess.run([require("mergecap"), "-w", str(both), str(early), str(reordered)], check=True)
    assert wireshark.tcp_order(str(both))[:3] == (True, False, True)
    (order,) = [w for w in wireshark.analyze([both]).warnings if "acknowledged" in w]
    assert "both.pcapng" in order and "spurious retransmissions" in order


def test_engine_keeps_lossy_captures_out_of_out_of_order_reassembly(tmp_path: Path) -> None:
    """With tcp.reassemble_out_of_order a direction stops at a hole never filled, so a
    capture cut by the snaplen keeps Wireshark's default: the close answers after the cut
    start answers are still decoded."""
    require("tshark")
    cut = tmp_path / "demo_s200.pcap"
    editcap = require("editcap")
    subprocess.run(
        [editcap, "-s", "200", str(ROOT / "captures" / "demo.pcap"), str(cut)], check=True
    )
    assert wireshark.tcp_order(str(cut))[:3] == (False, True, False)
    tasks = wireshark.analyze([cut]).tasks
    assert len(tasks) == 10
    assert all(r["close_answered"] is not None and r["start_answered"] is None for r in tasks)


def test_engine_warns_when_reordered_and_lossy(tmp_path: Path) -> None:
    require("tshark")
    editcap = require("editcap")
    reordered = _reordered(ROOT / "captures" / "demo.pcap", tmp_path / "reordered.pcap")
    both = tmp_path / "both.pcap"
    subprocess.run([editcap, "-s", "120", str(reordered), str(both)], check=True)
    assert wireshark.tcp_order(str(both))[:3] == (True, True, False)
    warnings = wireshark.analyze([both]).warnings  # cut at 120 bytes: that is said too
    (order,) = [w for w in warnings if "out of order" in w]
    assert "both.pcap" in order
    assert len(warnings) == 2 and any("snap length" in w for w in warnings)


def test_engine_ignores_tcp_preferences_of_the_users_profile(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """A profile that checks checksums (wrong in captures taken on the sending host, the
    NIC fills them in later) or turns reassembly off would stop the plugin's messages that
    span segments: the engine sets the TCP preferences it relies on."""
    require("tshark")
    from crafted_captures import Capture, shell_task

    cap = Capture()
    shell_task(cap)  # the start command in two segments, begin in three
    for pkt in cap.packets:
        pkt[TCP].chksum = 0x1234
    capture = cap.write(tmp_path / "offloaded.pcap")
    ours = [report.task_row(t) for t in jsdissect.analyze([capture]).task_records]
    profile = tmp_path / "home" / ".config" / "wireshark"
    profile.mkdir(parents=True)
    (profile / "preferences").write_text(
        "tcp.check_checksum: TRUE\ntcp.desegment_tcp_streams: FALSE\n"
        "tcp.analyze_sequence_numbers: FALSE\ntcp.try_heuristic_first: TRUE\n"
    )
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.delenv("XDG_CONFIG_HOME", raising=False)
    assert _full_rows(wireshark.analyze([capture]).tasks) == _full_rows(ours)


def _cli_json(*args: str) -> list[dict]:
    out = subprocess.run(
        [sys.executable, "-m", "jsdissect", *args, "--json", "-", "-q"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)


def test_cli_errors_engine_wireshark(tmp_path: Path) -> None:
    """`messages --engine wireshark --errors`: the decode errors among the plugin's
    messages, nothing else, as JSON and as the terminal's error table (reason last)."""
    require("tshark")
    from crafted_captures import Capture, malformed_traffic

    cap = Capture()
    malformed_traffic(cap)
    capture = str(cap.write(tmp_path / "malformed.pcap"))
    every = _cli_json("messages", capture, "--engine", "wireshark")
    errors = _cli_json("messages", capture, "--engine", "wireshark", "--errors")
    assert errors == [r for r in every if r["type"] == "DecodeError"]
    assert {r["channel"] for r in errors} == {"cmd", "api"}
    assert all(r["reason"] for r in errors)
    args = ["messages", capture, "--engine", "wireshark", "--errors"]
    text = subprocess.run(
        [sys.executable, "-m", "jsdissect", *args],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert text.returncode == 0, text.stderr
    header, *lines = text.stdout.splitlines()
    assert header.split() == ["time", "conn", "channel", "direction", "offset", "reason"]
    assert [line.endswith(r["reason"]) for line, r in zip(lines, errors, strict=True)] == [
        True
    ] * len(errors)


def test_cli_no_heuristics_reaches_the_plugin(tmp_path: Path) -> None:
    """--no-heuristics: a command channel on a port that is not a --scheduler-port is not
    decoded, with --engine wireshark as with the default engine."""
    require("tshark")
    from pcapfiles import move_port

    moved = tmp_path / "moved.pcap"
    move_port(ROOT / "captures" / "one_shell.pcap", moved, 4455, 6123)
    engine = ("--engine", "wireshark")
    for extra in ((), engine):
        assert [r["process_id"] for r in _cli_json("tasks", str(moved), *extra)] == ["500452909"]
        blind = ("tasks", str(moved), "--no-heuristics", *extra)
        assert all(r["process_id"] is None for r in _cli_json(*blind))
        messages = _cli_json("messages", str(moved), "--no-heuristics", *extra)
        assert not any(m["channel"] == "cmd" for m in messages)
        told = ("tasks", str(moved), "--no-heuristics", "--scheduler-port", "6123", *extra)
        assert [r["process_id"] for r in _cli_json(*told)] == ["500452909"]


def _comparable_messages(rows: list[dict]) -> list[tuple]:
    # connection ids differ by design; the plugin has no stream offsets (README)
    return [tuple((k, str(v)) for k, v in r.items() if k not in ("conn", "offset")) for r in rows]


SHIPPED = sorted(p.name for p in (ROOT / "captures").glob("*.pcap*"))


@pytest.mark.parametrize("name", [*SHIPPED, "crafted tasks"])
def test_engine_messages_read_like_the_default_engines(tmp_path: Path, name: str) -> None:
    """`messages --engine wireshark`: the same rows as the default engine (types, senders,
    addresses, first-byte and completion times, summaries), but for connection ids and
    stream offsets, on every shipped capture. Summaries name objects alike: by their begin
    name, else by class (`invoke Variable_set.value("mode")`, not after the call that
    returned the object). The crafted capture has messages over several segments, several
    in one segment, keep-alive spaces over two segments, errors, a kill and a refused
    callback."""
    require("tshark")
    if name in SHIPPED:
        capture = ROOT / "captures" / name
    else:
        from crafted_captures import (
            Capture,
            api_task_with_errors,
            killed_task,
            refused_callback,
            shell_task,
            start_failed,
        )

        cap = Capture()
        for make in (shell_task, api_task_with_errors, start_failed, refused_callback, killed_task):
            make(cap)
            cap.advance(2_000_000)
        capture = cap.write(tmp_path / "crafted.pcap")
    result = jsdissect.analyze([capture])
    ours = report.message_rows(result.channels, result.task_records)
    theirs = wireshark.analyze([capture]).messages
    assert _comparable_messages(theirs) == _comparable_messages(ours)
    assert all(r["offset"] is None for r in theirs)


def test_engine_warns_about_a_clock_step_like_the_other_engines(tmp_path: Path) -> None:
    later = tmp_path / "later.pcap"
    stepped = tmp_path / "stepped.pcap"
    demo = str(ROOT / "captures" / "demo.pcap")
    subprocess.run([require("editcap"), "-t", "3600", demo, str(later)], check=True)
    subprocess.run([require("mergecap"), "-a", "-w", str(stepped), str(later), demo], check=True)
    ours = jsdissect.analyze(stepped).stats.warnings
    assert len(ours) == 1 and "capture time went back" in ours[0]
    assert wireshark.analyze([stepped]).warnings == ours


def test_engine_warns_about_a_snap_length_like_the_other_engines(tmp_path: Path) -> None:
    cut = tmp_path / "s200.pcap"
    demo = ROOT / "captures" / "demo.pcap"
    subprocess.run([require("editcap"), "-s", "200", str(demo), str(cut)], check=True)
    ours = jsdissect.analyze(cut).stats.warnings
    assert wireshark.analyze([cut]).warnings == ours and len(ours) == 1


def test_holes_in_unrelated_traffic_leave_reordered_channels_reassembled(tmp_path: Path) -> None:
    """Found in review: a hole in any connection of the file, or the data of a Fast Open
    SYN, turned out-of-order reassembly off for the JobScheduler channels too."""
    require("tshark")
    reordered = _reordered(ROOT / "captures" / "demo.pcap", tmp_path / "reordered.pcap")
    web = IP(src="10.9.9.1", dst="10.9.9.2") / TCP(sport=50000, dport=8080, flags="PA")
    start = float(rdpcap(str(reordered))[0].time)
    other = [
        web.copy() / Raw(b"x" * 100),  # the first of three, the second never captured
        web.copy() / Raw(b"z" * 100),
    ]
    other[1][TCP].seq = 200
    tfo = IP(src="10.9.9.3", dst="10.9.9.4") / TCP(sport=50001, dport=8081, flags="S", seq=99)
    other.append(tfo / Raw(b"hello"))  # Fast Open: data on the SYN, nothing lost
    for n, pkt in enumerate(other):
        pkt.time = start + n / 1000
    unrelated = tmp_path / "other.pcap"
    wrpcap(str(unrelated), [Ether(bytes(Ether() / p)) for p in other])
    merged = tmp_path / "merged.pcap"
    subprocess.run(
        [require("mergecap"), "-w", str(merged), str(reordered), str(unrelated)], check=True
    )
    assert wireshark.tcp_order(str(merged))[:3] == (True, True, False)  # every TCP connection
    result = wireshark.analyze([merged])
    ours = [report.task_row(t) for t in jsdissect.analyze([merged]).task_records]
    assert result.warnings == [] and _full_rows(result.tasks) == _full_rows(ours)


PROLOG = '<?xml version="1.0" encoding="ISO-8859-1"?>'
ODD_ANSWERS = {  # a start answer's inside: its process element, and markup around it
    "comment": "<!-- it's > ok -->{p}",
    "cdata": "{p}<x><![CDATA[a>b</c> it's]]></x>",
    "pi": "<?pi don't?>{p}",
    "trailing comment": "{p}</answer></spooler><!-- end --><spooler><answer>",
}


@pytest.mark.parametrize("name", sorted(ODD_ANSWERS))
def test_plugin_takes_whole_answers_with_comments_cdata_and_pis(tmp_path: Path, name: str) -> None:
    """Found in review: quotes in a comment, CDATA or processing instruction, or a comment
    after the root, made the plugin take a whole answer for one not completely captured."""
    require("tshark")
    import jsencode as js
    from crafted_captures import CLIENT, CONTROLLER_IP, MS, REMOTE_IP, SERVER, Capture, Conv

    cap = Capture()
    cmd = Conv(cap, (CONTROLLER_IP, 40000), (REMOTE_IP, 4455), isn=1000)
    cmd.handshake()
    cmd.send(CLIENT, js.start_remote_task(59999, kind="process"))
    cap.advance(20 * MS)
    inner = ODD_ANSWERS[name].format(p='<process process_id="84217301"/>')
    body = f'{PROLOG}<spooler><answer time="2026-03-02T09:15:02.020Z">{inner}</answer></spooler>'
    if name == "trailing comment":  # the comment after the root element, not inside it
        body = body.replace("<spooler><answer></answer></spooler>", "")
    cmd.send(SERVER, body.encode("latin-1") + b"\0", sizes=(30, 40))
    cap.advance(300 * MS)
    cmd.send(CLIENT, js.remote_task_close("84217301"))
    cmd.send(SERVER, js.ok_answer("2026-03-02T09:15:02.400Z"))
    cmd.close()
    capture = cap.write(tmp_path / "odd.pcap")
    (ours,) = jsdissect.analyze(capture).task_records
    (theirs,) = wireshark.analyze([capture]).tasks
    assert ours.start_answered is not None
    assert theirs["start_answered"] == ours.start_answered


COMPRESSORS = {"xz": lzma.compress, "bzip2": bz2.compress, "zstd": ZstdCompressor().compress}


@pytest.mark.parametrize("codec", sorted(COMPRESSORS))
def test_engine_reads_what_the_other_engines_decompress(tmp_path: Path, codec: str) -> None:
    """tshark reads no xz or bzip2 (and zstd only when built with it): decompressed first,
    whole or cut in the last packet, it gives the table and warning of the others."""
    require("tshark")
    compress = COMPRESSORS[codec]
    whole = tmp_path / f"demo.pcap.{codec}"
    whole.write_bytes(compress((ROOT / "captures" / "demo.pcap").read_bytes()))
    cut = tmp_path / f"cut.pcap.{codec}"
    cut.write_bytes(compress((ROOT / "captures" / "demo.pcap").read_bytes()[:-30]))
    for path in (whole, cut):
        ours = jsdissect.analyze([path], engine="python")
        result = wireshark.analyze([path])
        assert result.warnings == ours.stats.warnings
        assert _rows(result.tasks) == _rows(report.task_row(t) for t in ours.task_records)
    assert len(result.tasks) == 10 and "cut short" in result.warnings[0]
    assert set(tmp_path.iterdir()) == {whole, cut}  # no copy left behind


def test_engine_takes_log_calls_of_a_task_picked_up_after_begin_like_the_default(
    tmp_path: Path,
) -> None:
    """A capture that begins mid-task has no begin names: an object called with the §6.5
    log forwarding shape (Invoke DISPID 14, level and text) is the spooler_log in both
    engines, so the calls read `invoke spooler_log.log(…)` alike."""
    require("tshark")
    packets = rdpcap(str(ROOT / "captures" / "one_api.pcapng"))
    first = next(
        i for i, p in enumerate(packets) if Raw in p and b"job_1 step 2 line 1" in p[Raw].load
    )
    capture = tmp_path / "mid_task.pcap"
    wrpcap(str(capture), packets[first:])
    result = jsdissect.analyze([capture])
    ours = report.message_rows(result.channels, result.task_records)
    engine = wireshark.analyze([capture])
    theirs = engine.messages

    def requests(rows: list[dict]) -> list[tuple]:
        return _comparable_messages([r for r in rows if r["type"] == "Request"])

    assert requests(theirs) == requests(ours)
    logs = [r for r in ours if r["summary"].startswith("invoke spooler_log.log(0, ")]
    assert len(logs) == 3
    # the first log call, in the frame where the plugin picked the connection up, counts
    # for the task too (it made the task only after that frame's effects, so had 6)
    rows = [report.task_row(t) for t in result.task_records]
    assert [r["log_lines"] for r in engine.tasks if r["callback_conn"]] == [9]
    assert _full_rows(engine.tasks) == _full_rows(rows)


CUT_CAPTURES = ("demo.pcap", "failures.pcap", "one_api.pcapng")
CUTS_PER_END = 8  # per capture and end: each cut is one tshark run of about a second
# Cuts found by cutting at every packet, where the sample does not reach. failures.pcap
# from packet 38: the start of the task whose callback goes to 127.0.0.22 is not captured,
# that of 346241150 (callback to 127.0.0.21, unanswered, 43 µs after the other) is.
EXTRA_CUTS = {"failures.pcap": [38]}


def _cut_points(name: str, packets: list) -> list[int]:
    """A seeded sample of the packets that carry payload: where a capture cut there begins
    (or ends) in the middle of a message dialog, a task, a connection. And the first `E`
    answer: a callback picked up at an answer to a call not captured (§5.11); the first
    SYN-ACK: a connection whose SYN was not captured."""
    carrying = [i for i, p in enumerate(packets) if TCP in p and len(p[TCP].payload) > 0]
    errors = [i for i in carrying if bytes(packets[i][TCP].payload)[4:5] == b"E"]
    synacks = [i for i, p in enumerate(packets) if TCP in p and p[TCP].flags == "SA"]
    sample = random.Random(1).sample(carrying[1:], CUTS_PER_END)
    return sorted({*sample, *errors[:1], *synacks[:1], *EXTRA_CUTS.get(name, [])})


@pytest.mark.parametrize("name", CUT_CAPTURES)
def test_engines_agree_on_captures_cut_at_the_start_or_the_end(tmp_path: Path, name: str) -> None:
    """DESIGN "What fills a row": steps, log_lines, exit_code (and every other column) count
    what was captured, in both engines: a capture that begins or ends in the middle of a
    task gives the same table, but for the connection ids (Wireshark's stream numbers).
    And the same messages: answers whose requests were not captured (decoded as far as
    their bytes tell, and flagged), keep-alives before the first whole command, objects
    named as known when each message was sent."""
    require("tshark")
    editcap = require("editcap")
    capture = ROOT / "captures" / name
    packets = rdpcap(str(capture))
    ours, theirs = {}, {}
    for at in _cut_points(name, packets):
        for end, kept in (("start", f"{at + 1}-{len(packets)}"), ("end", f"1-{at}")):
            cut = tmp_path / f"{end}{at}.pcap"
            subprocess.run([editcap, "-r", str(capture), str(cut), kept], check=True)
            result = jsdissect.analyze([cut])
            messages = report.message_rows(result.channels, result.task_records)
            ours[cut.name] = (
                _full_rows(report.task_row(t) for t in result.task_records),
                _comparable_messages(messages),
            )
            engine = wireshark.analyze([cut])
            theirs[cut.name] = (_full_rows(engine.tasks), _comparable_messages(engine.messages))
    assert theirs == ours


@pytest.mark.parametrize("scenario", ["gap_mid_frame", "snaplen"])
def test_engines_end_a_frame_not_completely_captured_at_its_last_captured_byte(
    tmp_path: Path, scenario: str
) -> None:
    """DESIGN "Exact times": a message is complete when its last missing byte arrived, the
    latest over its bytes of the time each was first captured. A log frame whose middle
    was lost, or whose segments the snaplen cut, ends with the last of its bytes that were
    captured (after the loss; the rest of the cut segment), not with its first segment: the
    plugin said the first segment's time (…125610 against …125622 and …125614)."""
    require("tshark")
    import pathological as patho

    made = getattr(patho, scenario)()
    frames = made.frames()
    capture, _truth = made.write(tmp_path)
    (task,) = made.tasks
    msg = task.message("log_big")
    view = made.view(frames)
    times = view.first[(id(msg.conv), msg.side)]
    captured = [times[o] for o in range(msg.start, msg.end) if o in times]
    assert 0 < len(captured) < msg.end - msg.start  # a frame not completely captured
    began = view.sent(msg)
    assert began is not None and max(captured) > began

    def big_log(rows: list[dict]) -> list[tuple[int, int]]:
        requests = [r for r in rows if r["type"] == "Request"]
        return [(r["time"], r["end"]) for r in requests if r["time"] == began]

    result = jsdissect.analyze([capture])
    assert big_log(report.message_rows(result.channels, result.task_records)) == [
        (began, max(captured))
    ]
    assert big_log(wireshark.analyze([capture]).messages) == [(began, max(captured))]


CANDIDATE_NOTE = re.compile(r"earliest of 2 candidate callbacks \(also (\S+)\)")


def test_engines_name_the_other_candidate_callback(tmp_path: Path) -> None:
    """DESIGN "Matching": a task with more than one callback to choose from takes the
    earliest and says which others it had. A stray SYN to the announced port, from another
    host, while the real callback runs: both engines name it (each by its own connection
    id), and agree on every other column."""
    require("tshark")
    from crafted_captures import CONTROLLER_IP, Capture, Conv, shell_task

    cap = Capture()
    stray = Conv(cap, ("127.0.0.99", 46000), (CONTROLLER_IP, 59999), isn=5000)
    shell_task(cap, while_calling_back=lambda: stray._packet(0, "S"))
    capture = cap.write(tmp_path / "stray_syn.pcap")
    result = jsdissect.analyze([capture])
    (ours,) = [report.task_row(t) for t in result.task_records if t.process_id]
    (theirs,) = [r for r in wireshark.analyze([capture]).tasks if r["process_id"]]
    (our_other,) = CANDIDATE_NOTE.fullmatch(ours["notes"]).groups()
    (their_other,) = CANDIDATE_NOTE.fullmatch(theirs["notes"]).groups()
    (stray_channel,) = [ch for ch in result.channels if ch.conn.client.port == 46000]
    assert our_other == stray_channel.conn.id
    assert their_other == "2"  # tcp.stream: the command connection, the callback, the stray
    assert _full_rows([ours | {"notes": ""}]) == _full_rows([theirs | {"notes": ""}])


@pytest.mark.parametrize("strays", [3, 9])
def test_engines_name_at_most_five_other_candidates(tmp_path: Path, strays: int) -> None:
    """A port scan in a task's window: both engines name five other candidates at most
    (found in review: every one was listed, output growing as tasks × SYNs)."""
    require("tshark")
    from crafted_captures import CONTROLLER_IP, Capture, Conv, shell_task

    cap = Capture()
    scan = [
        Conv(cap, ("127.0.0.99", 46000 + n), (CONTROLLER_IP, 59999), isn=5000)
        for n in range(strays)
    ]

    def scanned() -> None:
        for conv in scan:
            conv._packet(0, "S")

    shell_task(cap, while_calling_back=scanned)
    capture = cap.write(tmp_path / "scan.pcap")
    result = jsdissect.analyze([capture])
    (ours,) = [report.task_row(t) for t in result.task_records if t.process_id]
    (theirs,) = [r for r in wireshark.analyze([capture]).tasks if r["process_id"]]
    count = "over 6" if strays > 5 else f"{strays + 1}"
    shape = re.compile(rf"earliest of {count} candidate callbacks \(also ((?:\S+, )*\S+)\)")
    named = [shape.fullmatch(row["notes"].replace(", …", "")) for row in (ours, theirs)]
    assert all(named) and [len(m.group(1).split(", ")) for m in named] == [min(strays, 5)] * 2
    assert ours["notes"].endswith(", …)") == theirs["notes"].endswith(", …)") == (strays > 5)
    assert _full_rows([ours | {"notes": ""}]) == _full_rows([theirs | {"notes": ""}])


def _late_callback_named(rows: list[dict]) -> list[dict]:
    """The rows, with the id of the callback that has a row of its own (the engines' ids
    differ) as a name in every row's notes."""
    named = [r | {"notes": r["notes"] or ""} for r in rows]
    for late in (r for r in rows if r["process_id"] is None):
        word = re.compile(rf"\b{re.escape(str(late['callback_conn']))}\b")
        named = [r | {"notes": word.sub("<callback>", r["notes"])} for r in named]
    return named


@pytest.mark.parametrize("late_s", [59, 61])
def test_engines_tell_a_callback_past_its_window_as_too_late_on_both_rows(
    tmp_path: Path, late_s: int
) -> None:
    """DESIGN "Matching": a slow remote's callback SYN after its task's window (the
    controller gave up, Z-REMOTE-118, its listener gone: RST) is a row of its own, and both
    rows say how late it came, in both engines (each naming the callback by its own
    connection id). In the window it is the task's own refused callback, one row. The
    plugin told neither row, and gave the refused callback no row."""
    require("tshark")
    from crafted_captures import S, callback_refused_after

    capture = callback_refused_after(late_s * S).write(tmp_path / "late.pcap")
    ours = _late_callback_named(
        [report.task_row(t) for t in jsdissect.analyze([capture]).task_records]
    )
    theirs = _late_callback_named(wireshark.analyze([capture]).tasks)
    assert len(ours) == (1 if late_s < 60 else 2)
    if late_s > 60:
        assert sorted(r["notes"] for r in ours) == [
            "callback <callback> came 61.000 s after the start: too late",
            "too late for task 700004 (61.000 s after the start)",
        ]
    assert _full_rows(theirs) == _full_rows(ours)


@pytest.mark.parametrize(
    ("final_rst", "status"), [(False, "callback-unanswered"), (True, "callback-refused")]
)
def test_engines_tell_callback_synacks_that_never_reached_the_task_server(
    tmp_path: Path, final_rst: bool, status: str
) -> None:
    """A firewall drops the callback's SYN-ACKs: the task server goes on sending SYNs, the
    handshake never ends, and the controller gives up (Z-REMOTE-118). Found in review: the
    SYN-ACKs counted as an accepted callback, so the row read `completed`, or `aborted`
    when the task server's last SYN met the closed port (an RST answering a SYN)."""
    require("tshark")
    from crafted_captures import callback_synacks_lost

    capture = callback_synacks_lost(final_rst).write(tmp_path / "synacks_lost.pcap")
    (ours,) = [report.task_row(t) for t in jsdissect.analyze([capture]).task_records]
    assert ours["status"] == status
    assert ours["callback_established"] is not None and ours["begin_sent"] is None
    (theirs,) = wireshark.analyze([capture]).tasks
    assert _full_rows([theirs]) == _full_rows([ours])


@pytest.mark.parametrize("first", ["live", "unanswered"])
def test_engines_split_a_callback_4tuple_taken_again_without_its_syn(
    tmp_path: Path, first: str
) -> None:
    """A second callback connection on the 4-tuple of the first, its SYN not captured and
    the first's end neither: its SYN-ACK answers another SYN, or (the first's SYNs never
    answered, its own handshake not captured) its data cannot follow those SYNs. Found by
    fuzzing jsdissect against tshark: it was taken for the first connection's, so the
    second task had no callback and the first took its messages. Wireshark keeps both in
    one stream; with these sequence numbers (ahead of the first's, as Linux picks them) it
    hands the second's bytes on, and the plugin tells the connections apart as jsdissect."""
    require("tshark")
    from crafted_captures import callbacks_on_one_4tuple

    capture = callbacks_on_one_4tuple(first).write(tmp_path / "reused.pcap")
    ours = [report.task_row(t) for t in jsdissect.analyze([capture]).task_records]
    first_row = ("completed", 1) if first == "live" else ("callback-unanswered", None)
    assert [(r["process_id"], r["status"], r["exit_code"]) for r in ours] == [
        ("900001", *first_row),
        ("900002", "completed", 2),
    ]
    assert ours[0]["callback_closed"] is None and ours[1]["callback_closed"] is not None
    assert ours[0]["callback_conn"] != ours[1]["callback_conn"]
    theirs = wireshark.analyze([capture]).tasks
    assert _full_rows(theirs) == _full_rows(ours)


@pytest.mark.parametrize("closed", [False, True])
def test_engines_keep_a_start_answer_whose_start_was_not_captured(
    tmp_path: Path, closed: bool
) -> None:
    """The capture began between a start and its answer: the <process> answer is a start's
    (§3.6.1), and its process id and pid are in the capture. Found in review: both engines
    dropped it (no row at all for a task still running)."""
    require("tshark")
    from crafted_captures import start_answer_only

    capture = start_answer_only(closed).write(tmp_path / "answer_only.pcap")
    (ours,) = [report.task_row(t) for t in jsdissect.analyze([capture]).task_records]
    assert (ours["process_id"], ours["pid"], ours["status"]) == ("700006", 4242, "partial")
    assert ours["start_answered"] is not None and ours["start_sent"] is None
    assert (ours["close_answered"] is not None) == closed
    (theirs,) = wireshark.analyze([capture]).tasks
    assert _full_rows([theirs]) == _full_rows([ours])


def test_engines_leave_a_lost_answer_unpaired_when_the_next_command_is_lost_too(
    tmp_path: Path,
) -> None:
    """Loss in both directions on the command channel: the start's answer and the close are
    not captured, the close's answer is. R sends nothing but answers (§3.7), so the lost
    bytes were the start's answer: the close's answer is no answer to the start (that gave
    the start an answer time 300 ms late)."""
    require("tshark")
    import jsencode as js
    from crafted_captures import CLIENT, MS, REMOTE_IP, SERVER, Capture, Conv, answer_time

    cap = Capture()
    cmd = Conv(cap, ("127.0.0.21", 40000), (REMOTE_IP, 4455), isn=1000)
    cmd.handshake()
    cmd.send(CLIENT, js.start_remote_task(59999, kind="process"))
    cap.advance(20 * MS)
    cmd.seq[SERVER] += len(js.process_answer(answer_time(cap), "84217301"))  # not captured
    cmd.seq[CLIENT] += len(js.remote_task_close("84217301"))  # not captured
    cap.advance(300 * MS)
    cmd.send(SERVER, js.ok_answer(answer_time(cap)))
    cmd.close()
    capture = cap.write(tmp_path / "lost_both_ways.pcap")
    (ours,) = [report.task_row(t) for t in jsdissect.analyze([capture]).task_records]
    assert ours["start_answered"] is None and ours["close_answered"] is None
    assert _full_rows(wireshark.analyze([capture]).tasks) == _full_rows([ours])


def test_engines_pair_answers_past_requests_their_sender_sent_meanwhile(tmp_path: Path) -> None:
    """§5.2 in both engines: an answer pairs with the most recent request of the other
    side, past a request its own sender sent meanwhile (a K crossing the controller's next
    call), or whose answer the capture lost; the step's result reaches both rows."""
    require("tshark")
    from crafted_captures import Capture, answers_past_requests_sent_meanwhile

    for lose in (False, True):
        answers_past_requests_sent_meanwhile(cap := Capture(), lose_log_answer=lose)
        capture = cap.write(tmp_path / f"crossing_{lose}.pcap")
        result = jsdissect.analyze([capture])
        (row,) = [report.task_row(t) for t in result.task_records]
        assert (row["status"], row["exit_code"], row["signal"]) == ("completed", 3, 9)
        assert row["release_answered"] is not None
        theirs = wireshark.analyze([capture])
        assert _full_rows(theirs.tasks) == _full_rows([row])
        ours = report.message_rows(result.channels, result.task_records)
        if not lose:  # (gaps are worded by each engine its own way)
            assert not any(r["type"] == "DecodeError" for r in ours)
            assert _comparable_messages(theirs.messages) == _comparable_messages(ours)


def test_engine_survives_numbers_past_2_53_and_counts_its_decode_errors(tmp_path: Path) -> None:
    """Found in review: a pid of 20 digits stopped the plugin writing its task table (a Lua
    error), and the engine took the empty file for a capture without tasks. The pid is
    written as sent; a table without its header is the plugin's failure, said so; and
    `tasks` counts the plugin's decode errors in its summary line."""
    require("tshark")
    import jsencode as js
    from crafted_captures import (
        CONTROLLER_IP,
        REMOTE_IP,
        Capture,
        Conv,
        answer_time,
        malformed_traffic,
    )

    cmd = Conv(cap := Capture(), (CONTROLLER_IP, 40000), (REMOTE_IP, 4455), isn=1000)
    cmd.handshake()
    cmd.send(0, js.start_remote_task(59999))
    cmd.send(1, js.process_answer(answer_time(cap), "111", pid=99999999999999999999))
    big = cap.write(tmp_path / "bigpid.pcap")
    (theirs,) = wireshark.analyze([big]).tasks
    assert (
        theirs["pid"]
        == 99999999999999999999
        == report.task_row(jsdissect.analyze([big]).task_records[0])["pid"]
    )
    empty = tmp_path / "table.csv"
    empty.write_text("")
    with pytest.raises(ValueError, match="no header line"):
        wireshark.read_task_table(empty)
    malformed_traffic(bad := Capture())
    capture = str(bad.write(tmp_path / "malformed.pcap"))
    out = subprocess.run(
        [sys.executable, "-m", "jsdissect", "tasks", capture, "--engine", "wireshark"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    errors = sum(r["type"] == "DecodeError" for r in wireshark.analyze([capture]).messages)
    assert errors and out.stdout.rstrip().endswith(
        f"{errors} decode error(s): see 'jsdissect messages --errors'"
    )


def test_engines_normalise_whitespace_in_attribute_values_alike(tmp_path: Path) -> None:
    """Found in review: XML 1.0 §3.3.3 makes each literal TAB, CR or LF in an attribute
    value a space (§2.11 first makes a CRLF, or a lone CR, one LF), while a character
    reference (&#10;) keeps the character it names. The default engine (expat) does so;
    the plugin kept the raw newline of an <ERROR text> in the task table's `error`."""
    require("tshark")
    import jsencode as js
    from crafted_captures import CLIENT, CONTROLLER_IP, REMOTE_IP, SERVER, Capture, Conv

    cap = Capture()
    cmd = Conv(cap, (CONTROLLER_IP, 40000), (REMOTE_IP, 4455), isn=1000)
    cmd.handshake()
    cmd.send(CLIENT, js.start_remote_task(59999, kind="process"))
    text = "a\nb\r\nc\rd\r\re\tf&#10;g&#13;&#10;h&#9;i\r&#10;j"
    error = f'<ERROR class="Xc" code="SCHEDULER-\n717" text="{text}"/>'
    cmd.send(SERVER, js.answer_doc("2026-03-02T09:15:02.020Z", error))
    cmd.close()
    capture = cap.write(tmp_path / "newlines.pcap")
    (ours,) = [report.task_row(t) for t in jsdissect.analyze([capture]).task_records]
    (theirs,) = wireshark.analyze([capture]).tasks
    assert ours["error"] == "SCHEDULER- 717 a b c d  e f\ng\r\nh\ti \nj"
    assert theirs["error"] == ours["error"]
    assert _full_rows([theirs]) == _full_rows([ours])


def _both_engines(capture: Path) -> tuple[list[dict], list[dict], list[dict], list[dict]]:
    """(default tasks, plugin tasks, default messages, plugin messages)."""
    result = jsdissect.analyze([capture])
    ours = [report.task_row(t) for t in result.task_records]
    theirs = wireshark.analyze([capture])
    return (
        ours,
        theirs.tasks,
        report.message_rows(result.channels, result.task_records),
        (theirs.messages),
    )


NON_ASCII_SOURCES = {  # where text with bytes >= 0x80 reaches the task table
    "construct job": lambda cap: parity_captures.shell_task(
        cap, 1, params=("language=shell", "job=/f\xf6lder/j\xf6b", "task_id=1")
    ),
    "E answer what": lambda cap: parity_captures.e_answer_task(cap, 2, "caf\xe9 kaputt"),
    "ERROR text": lambda cap: parity_captures.error_answer_task(cap, 3, "Gr\xfc\xdfe"),
    "ERROR text reference": lambda cap: parity_captures.error_answer_task(cap, 4, "caf&#233;"),
    # declared UTF-8 but not UTF-8: read as ISO-8859-1, as the default engine falls back
    "ERROR text not the UTF-8 declared": lambda cap: parity_captures.error_answer_task(
        cap, 5, "caf\xe9", encoding="UTF-8", sent_as="latin-1"
    ),
}


@pytest.mark.parametrize("source", NON_ASCII_SOURCES)
def test_engines_write_non_ascii_text_to_the_task_table_alike(tmp_path: Path, source: str) -> None:
    """Found in review: the plugin wrote ISO-8859-1 bytes (a job, an `E` answer's `what`,
    an <ERROR text>, `&#233;`) into its task table, which the engine reads as UTF-8: the
    whole capture failed ("the plugin's task table is unreadable")."""
    require("tshark")
    cap = Capture()
    NON_ASCII_SOURCES[source](cap)
    ours, theirs, _, _ = _both_engines(cap.write(tmp_path / "latin1.pcap"))
    assert _full_rows(theirs) == _full_rows(ours)
    assert any(ch > "\x7f" for row in ours for ch in str(row["job"]) + str(row["error"]))


def test_engines_take_character_references_past_255_alike(tmp_path: Path) -> None:
    """Found in review: the plugin left `&#8364;` and `&#x20AC;` as they were (it made
    only references below 256 characters)."""
    require("tshark")
    cap = Capture()
    parity_captures.error_answer_task(cap, 1, "price &#8364;5 &#x20AC; &#x1F600; &#65;")
    ours, theirs, our_messages, their_messages = _both_engines(cap.write(tmp_path / "refs.pcap"))
    assert [r["error"] for r in ours] == ["SCHEDULER-717 price €5 € \U0001f600 A"]
    assert _full_rows(theirs) == _full_rows(ours)
    assert _comparable_messages(their_messages) == _comparable_messages(our_messages)


def test_engines_read_a_document_declared_utf_8_alike(tmp_path: Path) -> None:
    """Found in review: the plugin read a command or answer its prolog declares UTF-8
    (`UTF-8`, `utf8`) as ISO-8859-1 (`GrÃ¼Ãe`)."""
    require("tshark")
    cap = Capture()
    parity_captures.error_answer_task(cap, 1, "Gr\u00fc\u00dfe \u20ac", encoding="UTF-8")
    parity_captures.error_answer_task(cap, 2, "Gr\u00fc\u00dfe &#8364;", encoding="utf8")
    parity_captures.utf8_start_task(cap, 3)
    capture = cap.write(tmp_path / "utf8.pcap")
    ours, theirs, our_messages, their_messages = _both_engines(capture)
    assert [r["error"] for r in ours if r["error"]] == ["SCHEDULER-717 Grüße €"] * 2
    assert any("-Dx=é€" in r["summary"] for r in our_messages)
    assert _full_rows(theirs) == _full_rows(ours)
    assert _comparable_messages(their_messages) == _comparable_messages(our_messages)


def _result(attrs: str) -> str:
    return f'<?xml version="1.0" encoding="ISO-8859-1"?><process.result {attrs}/>'


NUMBERS = [  # (step result, task_id): numbers, and forms Lua's tonumber or int() took
    (_result('exit_code="0x10"'), "1"),
    (_result('exit_code="1e2" signal="9.0"'), "1"),
    (_result('exit_code="3" signal="0x9"'), "1"),
    (_result('exit_code=" +7 " signal="-9"'), "1e2"),
    (_result('exit_code="1_0" signal="1__0"'), "0x10"),
    (_result('exit_code="&#51;" signal="&#x39;&#160;"'), " -5 "),
    (_result('exit_code="99999999999999999999"'), "+0042"),
    (_result('exit_code="9.0"'), "9.0"),
    (_result('exit_code="_1"'), "1_0"),
]


def test_engines_read_exit_codes_signals_and_task_ids_alike(tmp_path: Path) -> None:
    """Found in review: the plugin read a step result's exit_code and signal, and the
    construct's task_id, with Lua's tonumber ("0x10", "1e2" and "9.0" became numbers).
    Both take a decimal in ASCII digits, a sign allowed, ASCII spaces around, and nothing
    else."""
    require("tshark")
    cap = Capture()
    for n, (result, task_id) in enumerate(NUMBERS, 1):
        params = ("language=shell", "job=/j", f"task_id={task_id}")
        parity_captures.shell_task(cap, n, result=result, params=params)
    ours, theirs, _, _ = _both_engines(cap.write(tmp_path / "numbers.pcap"))
    assert [(r["exit_code"], r["signal"], r["task_id"]) for r in ours] == [
        (None, None, 1),
        (None, None, 1),
        (3, None, 1),
        (7, -9, None),
        (None, None, None),  # no underscores
        (3, None, -5),  # a no-break space is no space around a number
        (99999999999999999999, None, 42),
        (None, None, None),
        (None, None, None),
    ]
    assert _full_rows(theirs) == _full_rows(ours)


PUTS = [  # spooler_task.exit_code put as each VARIANT type (§5.4, §6.5)
    V(js.VT_I1, -3),
    V(js.VT_UI1, 200),
    V(js.VT_I2, -300),
    V(js.VT_UI2, -1),  # (sent as 0xFFFF)
    V(js.VT_I4, 4),
    V(js.VT_UI4, 0xFFFFFFFF),
    V(js.VT_INT, 6),
    V(js.VT_UINT, 7),
    V(js.VT_I8, 7),
    V(js.VT_I8, -(2**63)),
    V(js.VT_UI8, 2**64 - 1),
    V(js.VT_ERROR, 0x80020004),
    V(js.VT_CY, 15000),
    V(js.VT_R8, "3.5"),
    V(js.VT_BOOL, True),
]


def test_engines_take_the_same_exit_code_puts(tmp_path: Path) -> None:
    """Found in review: the plugin took an exit code put as a VT_ERROR (and VT_CY) but
    not as a VT_I8 or VT_UI8; the default engine takes exactly the integer types."""
    require("tshark")
    cap = Capture()
    for n, value in enumerate(PUTS, 1):
        parity_captures.shell_task(cap, n, puts=(V(js.VT_I4, 1), value))
    ours, theirs, _, _ = _both_engines(cap.write(tmp_path / "puts.pcap"))
    assert [r["exit_code"] for r in ours] == [
        -3,
        200,
        -300,
        65535,
        4,
        0xFFFFFFFF,
        6,
        7,
        7,
        -(2**63),
        2**64 - 1,
        1,
        1,
        1,
        1,
    ]
    assert _full_rows(theirs) == _full_rows(ours)


def test_engines_report_a_double_text_that_is_no_number_alike(tmp_path: Path) -> None:
    """Found in review: the plugin took any double text (§5.4); the default engine reports
    one that is not a decimal number (Python's float() syntax) as a decode error."""
    require("tshark")
    texts = ["", " 1.5", "0x10", "1_0", "1.5.", "e5", "1'5", "1.5e+000", "-.5", "+Infinity"]
    cap = Capture()
    parity_captures.shell_task(cap, 1, calls=tuple(V(js.VT_R8, t) for t in texts))
    _, _, ours, theirs = _both_engines(cap.write(tmp_path / "doubles.pcap"))

    def errors(rows: list[dict]) -> list[tuple]:
        return _comparable_messages([r for r in rows if r["type"] == "DecodeError"])

    assert len(errors(ours)) == 2 * 7
    assert errors(theirs) == errors(ours)
    assert len(theirs) == len(ours)


def test_engines_take_a_crlf_before_a_command_for_no_keep_alive(tmp_path: Path) -> None:
    """Found in review: the plugin showed a CRLF before a command as a keep-alive of no
    spaces; only spaces are keep-alives (§3.7)."""
    require("tshark")
    cap = Capture()
    parity_captures.crlf_before_a_command(cap)
    ours, theirs, our_messages, their_messages = _both_engines(cap.write(tmp_path / "crlf.pcap"))
    assert [r["type"] for r in our_messages].count("KeepAlive") == 1
    assert _comparable_messages(their_messages) == _comparable_messages(our_messages)
    assert _full_rows(theirs) == _full_rows(ours)


def test_engines_keep_a_nul_in_callback_strings_alike(tmp_path: Path) -> None:
    """Found in review: Wireshark's string fields end at a NUL, so the plugin's fields cut
    a §5.3 string there (`job=/j` for `job=/j\\0x`), and a name not in ASCII (a method,
    a begin name) reached tshark's JSON as ISO-8859-1, which stopped the whole run. The
    plugin shows a NUL as ␀ (no ISO-8859-1 string holds U+2400), the engine turns it
    back; tasks and messages read as the default engine's."""
    require("tshark")
    cap = Capture()
    parity_captures.odd_strings_task(cap, 1, "\0")
    parity_captures.odd_strings_task(cap, 2, "\xe9\0\xfc")
    ours, theirs, our_messages, their_messages = _both_engines(cap.write(tmp_path / "nul.pcap"))
    assert [r["job"] for r in ours] == ["/j\0", "/j\xe9\0\xfc"]
    assert [r["error"] for r in ours] == ["COM-\0 what\0", "COM-\xe9\0\xfc what\xe9\0\xfc"]
    summaries = [r["summary"] for r in our_messages]
    assert 'call RMIS.call\0("argument\\x00")' in summaries
    assert 'invoke log\0.log(0, "line\\x00")' in summaries
    assert _full_rows(theirs) == _full_rows(ours)
    assert _comparable_messages(their_messages) == _comparable_messages(our_messages)


STEP_RESULTS = [  # (a shell step's answer, the exit code the default engine takes)
    ('<process.result exit_code="3"', None),
    ('<process.result exit_code="3"><x></process.result>', None),
    ('<process.result exit_code="3" exit_code="4"/>', None),
    ('<process.result exit_code="3" state_text="a < b"/>', None),
    ('<process.result exit_code="3" state_text="R&D"/>', None),
    ('<process.result exit_code="3" state_text="&nbsp;"/>', None),
    ('<process.result exit_code="3" state_text="\x1b[0m"/>', None),
    (PROLOG + '<process.result exit_code="3"/>\n[stdout] done', None),
    ("\n" + PROLOG + '<process.result exit_code="3"/>', None),
    ('<p:process.result exit_code="3"/>', None),
    ('<process.result xmlns="urn:x" exit_code="3"/>', None),
    ('<x><process.result exit_code="3"/></x>', None),
    ("exit_code=3", None),
    ('<!-- c --><process.result exit_code="4"><![CDATA[<&>]]><?pi x?></process.result>', 4),
    ("<process.result\r\n  exit_code = '5' state_text='&lt;&#233;&#x20AC;'/>\r\n", 5),
    ('<process.result xmlns:p="urn:x" p:exit_code="7" exit_code="6"/>', 6),
]


def test_engines_take_exit_codes_only_from_step_results_their_xml_parser_takes(
    tmp_path: Path,
) -> None:
    """Found in review: the plugin took an exit code from any text with a
    <process.result> element in it, well-formed or not, at the root or not; the default
    engine parses the step result as XML (ElementTree over expat, namespaces on) and gives
    none for a document it refuses, but a decode error. Both now read them alike, and
    say the same: expat's message, line and column."""
    require("tshark")
    cap = Capture()
    for n, (result, _code) in enumerate(STEP_RESULTS, 1):
        parity_captures.shell_task(cap, n, result=result)
    ours, theirs, our_messages, their_messages = _both_engines(cap.write(tmp_path / "xml.pcap"))
    assert [r["exit_code"] for r in ours] == [code for _result, code in STEP_RESULTS]
    errors = [r["reason"] for r in our_messages if r["type"] == "DecodeError"]
    assert len(errors) == sum(code is None for _result, code in STEP_RESULTS)
    assert "malformed <process.result>: mismatched tag: line 1, column 35" in errors
    assert "step answer is <{urn:x}process.result>, not <process.result>" in errors
    assert _full_rows(theirs) == _full_rows(ours)
    assert _comparable_messages(their_messages) == _comparable_messages(our_messages)


def test_engines_take_the_last_of_repeated_keys_of_an_e_answer(tmp_path: Path) -> None:
    """§5.11: an `E` answer's strings in any order; the C++ controller keeps the last of
    each key (Simple_operation::async_check_error_), and so does the default engine. The
    plugin's task table did too, but its fields held every one, and the engine read the
    first: the message said `E C1 W1`."""
    require("tshark")
    strings = ("name=N1", "code=C1", "what=W1", "other=x", "code=C2", "what=W2", "name=N2")
    answer = js.frame(b"E" + b"".join(js.string(s) for s in strings))
    cap = Capture()
    parity_captures.shell_task(cap, 1, answer=answer)
    ours, theirs, our_messages, their_messages = _both_engines(cap.write(tmp_path / "e.pcap"))
    assert [r["error"] for r in ours] == ["C2 W2"]
    assert "→ construct: E C2 W2" in [r["summary"] for r in our_messages]
    assert _full_rows(theirs) == _full_rows(ours)
    assert _comparable_messages(their_messages) == _comparable_messages(our_messages)


def test_engines_show_no_arguments_of_a_call_whose_argument_list_breaks(
    tmp_path: Path,
) -> None:
    """Found in review: a call whose DISPPARAMS (§5.7) break in an argument read
    `call RMIS.m0(1, None)` in the wireshark engine (the argument as far as the plugin
    read it), and a string cut short stopped the whole run; the default engine gives such
    a call no arguments, the list being unknown. The plugin puts its expert on the
    argument that breaks the list; bytes after whole arguments leave them."""
    require("tshark")
    cap = Capture()
    parity_captures.broken_arguments_task(cap, 1)
    _, _, ours, theirs = _both_engines(cap.write(tmp_path / "arguments.pcap"))

    def calls(rows: list[dict]) -> list[str]:
        return [r["summary"] for r in rows if r["summary"].startswith("call RMIS.m")]

    assert calls(ours) == [*(f"call RMIS.m{i}()" for i in range(4)), "call RMIS.m4(1)"]
    assert calls(theirs) == calls(ours)
    assert [r["type"] for r in theirs] == [r["type"] for r in ours]


@pytest.mark.parametrize("second", ["failed", "lost"])
def test_engines_give_a_close_to_the_task_of_its_process_id(tmp_path: Path, second: str) -> None:
    """Found in review: on a command connection of two tasks (§3.8), the close of the first
    went to the second when the second's start had failed (or its answer was not
    captured), which has no process id; the first was left `aborted`. A close goes to the
    task of its process id, else to one whose id the capture did not show."""
    require("tshark")
    cap = Capture()
    parity_captures.two_tasks_on_one_connection(cap, second)
    ours, theirs, _, _ = _both_engines(cap.write(tmp_path / "two.pcap"))
    first = next(r for r in ours if r["process_id"] == "300001")
    assert first["close_sent"] is not None and first["close_answered"] is not None
    other = [r for r in ours if r is not first]
    if second == "failed":
        assert [(r["status"], r["close_sent"]) for r in other] == [("start-failed", None)]
    else:  # its close names its id: it is the task whose start answer was lost
        assert [(r["process_id"], r["callback_port"]) for r in other] == [("300002", 58102)]
        assert other[0]["close_answered"] is not None
    assert _full_rows(theirs) == _full_rows(ours)


def test_engines_keep_the_close_answer_of_a_task_whose_start_answer_was_lost(
    tmp_path: Path,
) -> None:
    """Found in review: the start's answer lost, the gap was declared only when the close's
    answer came, and taken for the close's: the task lost its close answer and read
    `aborted`. Answers pair with commands in order (§3.1); only start_answered is empty."""
    require("tshark")
    cap = Capture()
    parity_captures.lost_start_answer_task(cap)
    ours, theirs, _, _ = _both_engines(cap.write(tmp_path / "lost.pcap"))
    (task,) = ours
    assert task["start_answered"] is None and task["close_answered"] is not None
    assert (task["process_id"], task["status"]) == ("300003", "completed")
    assert _full_rows(theirs) == _full_rows(ours)


@pytest.mark.parametrize("message", ["start", "begin answer", "release answer"])
def test_engines_take_the_new_bytes_of_retransmissions_that_resend_captured_ones(
    tmp_path: Path, message: str
) -> None:
    """Found in review: a segment that re-sends captured bytes and goes on past them (a
    coalesced retransmission) is one Wireshark hands no subdissector unless it reassembles
    out of order: the start was lost (its task `partial`), the begin answer or the Release
    answer never complete (the task `aborted`). The engine turns that reassembly on for such
    a capture too, judged with the callback connection although its port (58001) is not
    among those its first read takes; a message is complete with the segment that brought
    its last new byte (DESIGN "Exact times": the first copy of each byte counts)."""
    require("tshark")
    cap = Capture()
    parity_captures.resending_task(cap, 1, message)
    capture = cap.write(tmp_path / "resent.pcap")
    assert wireshark.tcp_order(str(capture))[:3] == (True, False, False)
    ours, theirs, _, _ = _both_engines(capture)
    assert [(r["status"], r["steps"]) for r in ours] == [("completed", 1)]
    assert _full_rows(theirs) == _full_rows(ours)


def test_engines_time_a_close_captured_before_the_keep_alive_space_sent_before_it(
    tmp_path: Path,
) -> None:
    """Found in review: reassembled out of order, the close reached the plugin behind the
    space, in the space's later frame, and close_sent was that frame's time. DESIGN "Exact
    times": a message is sent with the first packet that carries its first byte, the
    close's `<` (keep-alive spaces are no part of it)."""
    require("tshark")
    cap = Capture()
    close_sent = parity_captures.close_before_its_keep_alive_task(cap, 1)
    ours, theirs, _, _ = _both_engines(cap.write(tmp_path / "late_space.pcap"))
    assert [(r["close_sent"], r["status"]) for r in ours] == [(close_sent, "completed")]
    assert _full_rows(theirs) == _full_rows(ours)


def test_engines_leave_a_start_never_answered_running(tmp_path: Path) -> None:
    """Found in review: the plugin said `callback-missing` for a start never answered once
    60 s had passed. DESIGN Status 4 needs the start answered (or the command connection
    ended without a callback): with the connection still open, the task is `running`."""
    require("tshark")
    cap = Capture()
    parity_captures.unanswered_start(cap, 1)
    ours, theirs, _, _ = _both_engines(cap.write(tmp_path / "unanswered.pcap"))
    assert [(r["status"], r["start_answered"]) for r in ours] == [("running", None)]
    assert _full_rows(theirs) == _full_rows(ours)


def test_engines_read_a_start_carried_on_the_syn(tmp_path: Path) -> None:
    """Found in review: a start command on the SYN (TCP Fast Open) reached the plugin before
    its TCP tracking saw the SYN, which then took the SYN for a new connection on the same
    ports: the task lost its handshake, answer and close (`running`), and those made a
    `partial` row of their own. DESIGN "Exact times": start_sent is the SYN's time."""
    require("tshark")
    cap = Capture()
    parity_captures.fast_open_task(cap, 1)
    ours, theirs, _, _ = _both_engines(cap.write(tmp_path / "fast_open.pcap"))
    assert [(r["status"], r["start_sent"] == r["cmd_syn"]) for r in ours] == [("completed", True)]
    assert _full_rows(theirs) == _full_rows(ours)


def _plugin_fields(capture: Path, display_filter: str, *fields: str) -> list[list[str]]:
    """`tshark -2` with the plugin the engine uses: the fields of the frames `display_filter`
    selects, one list per frame (values of one field joined by commas)."""
    tshark = require("tshark")
    args = [tshark, "-n", "-2", "-X", f"lua_script:{wireshark.plugin_path()}", "-r", str(capture)]
    args += ["-Y", display_filter, "-T", "fields", "-E", "occurrence=a"]
    for field in fields:
        args += ["-e", field]
    out = subprocess.run(args, capture_output=True, text=True, check=True, timeout=300)
    assert "lua" not in out.stderr.lower(), out.stderr
    return [line.split("\t") for line in out.stdout.splitlines()]


def test_engines_keep_a_frame_whose_reassembly_ends_inside_the_next_frames_segment(
    tmp_path: Path,
) -> None:
    """Found in review: a callback frame whose length prefix was split, completed by a
    segment that also began the next frame, was looked up in the second pass under another
    key (the first pass reassembled the whole segment, later ones only up to the next
    frame): its tree lost its answer link, depth and log lines, its first-byte time, and
    its answer was said to be unpaired (`answer ?: 7`)."""
    require("tshark")
    cap = Capture()
    parity_captures.split_prefix_task(cap, 1)
    capture = cap.write(tmp_path / "split_prefix.pcap")
    ours, theirs, our_messages, their_messages = _both_engines(capture)
    assert _comparable_messages(their_messages) == _comparable_messages(our_messages)
    assert _full_rows(theirs) == _full_rows(ours)
    assert [r["log_lines"] for r in ours] == [2]
    logs = _plugin_fields(
        capture,
        "jobscheduler_api.log.lines",
        "jobscheduler_api.log.lines",
        "jobscheduler_api.depth",
        "jobscheduler_api.response_in",
    )
    assert [row[:2] for row in logs] == [["1", "1"], ["1", "2"]]
    assert all(row[2] for row in logs)
    answers = _plugin_fields(
        capture, "jobscheduler_api.request_in", "_ws.expert.message", "_ws.col.Info"
    )
    assert not any("without a pending request" in row[0] for row in answers)


def test_engines_truncate_nanosecond_times_alike(tmp_path: Path) -> None:
    """Found in review: in a nanosecond capture, a frame less than a microsecond after one
    in the last nanoseconds of the microsecond before took that frame's exact time (the
    plugin mapped the time it kept, which both share, to one exact time): start_sent,
    callback and close times 1 µs early. DESIGN "Exact times": nanoseconds truncated."""
    require("tshark")
    cap = Capture()
    parity_captures.shell_task(cap, 1, result='<process.result exit_code="3"/>')
    base = 1_772_442_902 * 10**9
    frames = []
    for i, pkt in enumerate(cap.packets):  # in pairs: +999 ns, then 50 ns into the next µs
        pair, second = divmod(i, 2)
        ns = base + (20 * pair + second) * 1000 + (50 if second else 999)
        frames.append((ns, bytes(pkt), len(bytes(pkt))))
    capture = tmp_path / "nano.pcap"
    capture.write_bytes(pcap_file(1, frames, nano=True))
    ours, theirs, our_messages, their_messages = _both_engines(capture)
    (row,) = ours
    assert row["start_sent"] % 20 == 1  # the second of its pair
    assert _full_rows(theirs) == _full_rows(ours)
    assert _comparable_messages(their_messages) == _comparable_messages(our_messages)


@pytest.mark.parametrize("chain", ["destination options", "four headers"])
def test_engines_read_ipv6_with_extension_headers_alike(tmp_path: Path, chain: str) -> None:
    """Found in review: the plugin's TCP tracking read no payload length past an IPv6
    extension header, took the server's answers for ones after bytes not captured, and
    dropped the close from its queue: the close answers were unpaired ("Answer without a
    command") and the tasks `aborted`."""
    require("tshark")
    from crafted_captures import api_task_with_errors, shell_task
    from scapy.layers.inet6 import (
        IPv6,
        IPv6ExtHdrDestOpt,
        IPv6ExtHdrFragment,
        IPv6ExtHdrHopByHop,
        IPv6ExtHdrRouting,
    )

    cap = Capture()
    shell_task(cap)
    cap.advance(2_000_000)
    api_task_with_errors(cap)
    v6 = {"127.0.0.21": "2001:db8::21", "127.0.0.11": "2001:db8::11"}
    packets = []
    for pkt in cap.packets:
        tcp = pkt[TCP].copy()
        del tcp.chksum
        ip6 = IPv6(src=v6[pkt[IP].src], dst=v6[pkt[IP].dst])
        ether = Ether(src="02:00:00:00:00:01", dst="02:00:00:00:00:02")  # no ND lookup
        if chain == "destination options":
            new = ether / ip6 / IPv6ExtHdrDestOpt() / tcp
        else:
            headers = IPv6ExtHdrHopByHop() / IPv6ExtHdrRouting() / IPv6ExtHdrFragment(id=1)
            new = ether / ip6 / headers / IPv6ExtHdrDestOpt() / tcp
        new = new.__class__(bytes(new))
        new.time = pkt.time
        packets.append(new)
    capture = tmp_path / "ipv6ext.pcap"
    wrpcap(str(capture), packets)
    ours, theirs, our_messages, their_messages = _both_engines(capture)
    assert [r["status"] for r in ours] == ["completed", "completed"]
    assert _full_rows(theirs) == _full_rows(ours)
    assert _comparable_messages(their_messages) == _comparable_messages(our_messages)


def test_engines_read_the_kill_of_a_close_alike_and_the_filter_finds_only_kills(
    tmp_path: Path,
) -> None:
    """Found in review: `jobscheduler.kill` was on every close (False), so that
    `-Y jobscheduler.kill` matched every close; and the plugin did not take `kill=' yes '`
    (blanks around it), which the default engine takes."""
    require("tshark")
    cap = Capture()
    kills = {1: None, 2: "no", 3: "yes", 4: " yes ", 5: "TRUE"}
    pids = {n: parity_captures.close_kill_task(cap, n, kill) for n, kill in kills.items()}
    capture = cap.write(tmp_path / "kills.pcap")
    ours, theirs, _, _ = _both_engines(capture)
    status = {r["process_id"]: r["status"] for r in ours}
    assert [status[pids[n]] for n in kills] == ["completed", "completed", *["killed"] * 3]
    assert _full_rows(theirs) == _full_rows(ours)
    found = _plugin_fields(capture, "jobscheduler.kill", "jobscheduler.process_id")
    assert sorted(row[0] for row in found) == sorted(pids[n] for n in (3, 4, 5))


@pytest.mark.parametrize("how", ["fin", "rst", "capture"])
def test_engines_tell_a_callback_frame_the_connection_ended_inside(
    tmp_path: Path, how: str
) -> None:
    """Found in review: a callback frame still unfinished when its connection ended (a FIN
    from its sender, an RST) or the capture did had no expert and no message: the plugin
    gave up on a frame only when the peer spoke or its direction went on. The default
    engine's decode error: "connection ended inside a frame (105 of 50000004 bytes)"."""
    require("tshark")
    cap = Capture()
    parity_captures.ended_inside_a_frame_task(cap, 1, how)
    capture = cap.write(tmp_path / "ended.pcap")
    ours, theirs, our_messages, their_messages = _both_engines(capture)
    reason = "(2 of ? bytes)" if how == "capture" else "(105 of 50000004 bytes)"
    errors = [r["reason"] for r in our_messages if r["type"] == "DecodeError"]
    assert errors == [f"connection ended inside a frame {reason}"]
    assert _comparable_messages(their_messages) == _comparable_messages(our_messages)
    assert _full_rows(theirs) == _full_rows(ours)
    experts = _plugin_fields(capture, "jobscheduler_api.expert.malformed", "_ws.expert.message")
    assert [row[0] for row in experts] == errors


@pytest.mark.parametrize("size", [800_000, 1_200_000])
def test_engines_follow_a_start_command_too_long_to_hold_to_its_end(
    tmp_path: Path, size: int
) -> None:
    """Found in review: a command past 1 MiB was given up on where it passed that bound, and
    its rest, up to and with the close after it, read as one new command: the close was
    taken in the middle of the class path, the start's answer paired with nothing, the
    close's answer was lost and the task `aborted`. As jsdissect's command decoder: the
    command is followed to its end (a decode error, no start), and the next one read; its
    <process> answer tells a start was answered."""
    require("tshark")
    cap = Capture()
    pid = parity_captures.oversize_start_task(cap, 1, size)
    capture = cap.write(tmp_path / "long_start.pcap")
    ours, theirs, _, _ = _both_engines(capture)
    (our_task,) = [r for r in ours if r["process_id"] == pid]
    (their_task,) = [r for r in theirs if r["process_id"] == pid]
    assert our_task["close_answered"] is not None and our_task["start_answered"] is not None
    assert (our_task["start_sent"] is None) == (size > 1 << 20)
    assert _full_rows([their_task]) == _full_rows([our_task])
    # Past 1 MiB the start is not decoded, and its callback port (outside the range) not
    # announced: the default engine reads again for the callback its CreateInstance showed
    # (the filter had passed that packet alone: its handshake and times were missing).
    assert _full_rows(theirs) == _full_rows(ours)


COUNT_INSTRUCTIONS = """
local count = 0
debug.sethook(function() count = count + 1 end, "", 1000)
dofile(os.getenv("JS_PLUGIN"))
local listener = Listener.new("frame", nil)
function listener.draw() io.stderr:write("instructions/1000: " .. count .. "\\n") end
"""


def test_plugin_work_grows_linearly_with_the_number_of_tasks(tmp_path: Path) -> None:
    """Found in review: every start and every callback SYN scanned every task seen so far,
    and the task table's candidate notes every callback for every task: time grew with the
    square of the number of tasks. The Lua VM instructions the plugin executes (counted,
    not timed: the same on every run) for 4 times the tasks are about 4 times as many
    (they were 5.4 times as many at these sizes)."""
    tshark = require("tshark")
    script = tmp_path / "count.lua"
    script.write_text(COUNT_INSTRUCTIONS)
    env = {**os.environ, "JS_PLUGIN": str(wireshark.plugin_path())}
    counts = []
    for tasks in (250, 1000):
        capture = tmp_path / f"many{tasks}.pcap"
        capture.write_bytes(parity_captures.many_tasks(tasks))
        table = tmp_path / f"many{tasks}.csv"
        args = [tshark, "-n", "-2", "-q", "-X", f"lua_script:{script}", "-r", str(capture)]
        args += ["-o", f"jobscheduler.task_table_file:{table}"]
        out = subprocess.run(args, capture_output=True, text=True, env=env, timeout=600)
        (line,) = [x for x in out.stderr.splitlines() if x.startswith("instructions/1000: ")]
        counts.append(int(line.split()[-1]))
        rows = table.read_text().splitlines()[1:]
        assert len(rows) == tasks and all(",completed," in row for row in rows)
    assert counts[1] / counts[0] < 4.4, counts


@pytest.mark.parametrize("where", ["start", "close answer"])
def test_engines_refuse_an_xml_declaration_expat_refuses(tmp_path: Path, where: str) -> None:
    """Found in review: expat (the default engine's parser of commands and answers) refuses
    an XML declaration that is not well-formed, the plugin took the document: a start whose
    encoding name begins with a digit started the task (`completed`, not `partial`), a
    close answer with `<?xml v.rsion=` answered the close (`completed`, not `aborted`)."""
    require("tshark")
    cap = Capture()
    pid = parity_captures.bad_declaration_task(cap, 1, where)
    ours, theirs, _, _ = _both_engines(cap.write(tmp_path / "declaration.pcap"))
    statuses = sorted(r["status"] for r in ours)
    assert statuses == (["partial", "partial"] if where == "start" else ["aborted"])
    # the task of the command connection (with the start refused, its callback is a row of
    # its own, which the default engine now decodes only in part: not compared here)
    assert _full_rows(r for r in theirs if r["process_id"] == pid) == _full_rows(
        r for r in ours if r["process_id"] == pid
    )
    assert len(theirs) == len(ours)


@pytest.mark.parametrize("which", ["over the bound", "past any peer", "too long"])
def test_engines_read_on_after_a_corrupt_callback_length_alike(tmp_path: Path, which: str) -> None:
    """Found in review (one byte flipped, no byte lost): a length past the plugin's bound
    was taken for no frame start, the next segment decoded (the Release answer: `completed`),
    where the default engine reads past the frame (up to 1000 MiB) or stops decoding the
    direction (`aborted`); a length too long but within the bound made the plugin give the
    frame up as not completely captured once the peer answered, and count its step (steps
    1, exit code 3), where the default engine waits for its bytes (steps 0, the Release
    read into the frame: `aborted`). The plugin tells that no byte was lost by the
    answering segment's ACK, when the first pass has a tree (the engine's run)."""
    require("tshark")
    cap = Capture()
    parity_captures.corrupt_length_task(cap, 1, which)
    ours, theirs, _, _ = _both_engines(cap.write(tmp_path / "corrupt.pcap"))
    # (too long: the step's answer, its call not complete, is a <process.result> all the
    # same: its exit code counts, §6.4)
    assert [(r["status"], r["steps"], r["exit_code"]) for r in ours] == [
        ("aborted", 0, 3) if which == "too long" else ("aborted", 1, None)
    ]
    assert _full_rows(theirs) == _full_rows(ours)


def _picked_up(cap: Capture, callback_port: int = 59999):
    """A callback connection from the remote to the controller, its handshake before the
    capture (the next bytes of each side follow its SYN's)."""
    from crafted_captures import CONTROLLER_IP, REMOTE_IP, Conv

    cb = Conv(cap, (REMOTE_IP, 45000), (CONTROLLER_IP, callback_port), isn=7000)
    cb.seq[0] += 1
    cb.seq[1] += 1
    return cb


def _last_step_and_release(cb, rmis: int) -> None:
    """A shell task's step (exit code 3), the Release of its RMIS, the controller's FIN."""
    from crafted_captures import C, T

    cb.send(C, js.call(rmis, "step"))
    cb.send(T, js.answer_value(js.bstr('<process.result exit_code="3"/>')))
    cb.send(C, js.release(rmis))
    cb.send(T, js.answer_empty())
    cb.close(first=C)


@pytest.mark.parametrize("side", ["controller", "task server", "log text"])
def test_engines_pick_up_a_direction_that_begins_inside_a_frame_alike(
    tmp_path: Path, side: str
) -> None:
    """Found by differential fuzzing: a callback picked up mid-stream whose direction begins
    with the tail of a frame (a CreateInstance, a log Invoke, its first segment before the
    capture). The default engine read the tail's bytes as a length and lost the direction
    (steps 0, `aborted`); §12 starts a pickup at a frame head, as the plugin does: the
    pieces before the first are skipped (one decode error says how many bytes)."""
    require("tshark")
    from crafted_captures import C, T, rmis_id

    cb = _picked_up(cap := Capture())
    rmis = rmis_id(1)
    if side == "controller":
        cb.send(C, js.create_instance(), sizes=(2,))
        skipped = len(js.create_instance()) - 2
        cb.send(T, js.answer_create_instance(js.ObjRef(rmis, True, "x")))
    else:
        # (log text: a tail that begins "    Error": four spaces read as a length under
        # C++'s 1 GB, "E" as a class; found in review: the direction waited for 538 MB)
        text = "x" if side == "task server" else "[stderr] failed\n    Error: disk full\n"
        log = js.invoke((0x327B23C6 << 32) | 4, 14, js.METHOD, [js.V(js.VT_I4, 0), js.bstr(text)])
        cut = 20 if side == "task server" else log.find(b"    Error")
        cb.send(T, log, sizes=(cut,))
        skipped = len(log) - cut
        cb.send(C, js.answer_value(js.V(js.VT_EMPTY)))
    cap.packets.pop(0)  # the capture begins after the first segment
    _last_step_and_release(cb, rmis)
    ours, theirs, messages, _ = _both_engines(cap.write(tmp_path / "midframe.pcap"))
    assert [(r["status"], r["steps"], r["exit_code"], r["callback_port"]) for r in ours] == [
        ("partial", 1, 3, 59999)
    ]
    assert ours[0]["release_answered"] is not None
    assert _full_rows(theirs) == _full_rows(ours)
    (error,) = [m for m in messages if (m["reason"] or "").startswith("picked up")]
    assert (
        error["reason"]
        == f"picked up mid-stream: {skipped} bytes before the first frame head skipped"
    )


@pytest.mark.parametrize("accepted", [False, True])
def test_engines_make_no_row_of_a_lone_rst_on_an_announced_port(
    tmp_path: Path, accepted: bool
) -> None:
    """Found by differential fuzzing: a refused callback whose SYN was not captured leaves
    the controller's RST alone on the announced endpoint. Nothing tells a callback was
    there: the task is `callback-missing` and the RST makes no row (the default engine made
    a `partial` one, its roles reversed). But a SYN-ACK tells the controller accepted one
    (found in review): then the callback is the task's, reset before the Release answer."""
    require("tshark")
    from crafted_captures import CLIENT, SERVER, S, _start_answered, answer_time

    cap = Capture()
    cmd, cb = _start_answered(cap, "700001", (40000, 45000, 59999), isn=1000)
    if accepted:
        cb.handshake()
        del cap.packets[-3]  # the SYN was not captured
        cb._packet(0, "RA")  # the task process resets it
    else:
        cb.refused()
        del cap.packets[-2]  # the SYN was not captured
    cap.advance(61 * S)
    cmd.send(CLIENT, js.remote_task_close("700001"))
    cmd.send(SERVER, js.ok_answer(answer_time(cap)))
    cmd.close()
    ours, theirs, _, _ = _both_engines(cap.write(tmp_path / "lone_rst.pcap"))
    status = "aborted" if accepted else "callback-missing"
    assert [(r["process_id"], r["status"]) for r in ours] == [("700001", status)]
    assert _full_rows(theirs) == _full_rows(ours)


@pytest.mark.parametrize("callback_port", [59999, 40999])
def test_engines_pick_up_a_first_frame_that_spans_segments_alike(
    tmp_path: Path, callback_port: int
) -> None:
    """Found by differential fuzzing: a callback picked up mid-stream (no handshake, no
    start) whose first frame, the construct call, came in two segments. The plugin's
    heuristic wanted a whole request in one segment and lost the construct (job, task_id
    empty); on the callback range the default engine reads (§2), a frame head is enough for
    both, as its §12 test takes it. Elsewhere the default engine's filter does not read
    such a connection, and the plugin still wants a whole request (a later one here): other
    protocols stay untouched."""
    require("tshark")
    from crafted_captures import C, T, rmis_id

    cb = _picked_up(cap := Capture(), callback_port)
    rmis = rmis_id(1)
    params = ["language=shell", "job=/folder/a", "task_id=42"]
    cb.send(C, js.call(rmis, "construct", js.construct_args(params)), sizes=(35, 1))
    cb.send(T, js.answer_value(js.V(js.VT_BOOL, True)))
    _last_step_and_release(cb, rmis)
    ours, theirs, _, _ = _both_engines(cap.write(tmp_path / "split_first.pcap"))
    if callback_port == 40999:
        assert ours == [] and [(r["job"], r["steps"]) for r in theirs] == [(None, 1)]
        return
    assert [(r["job"], r["task_id"], r["steps"], r["exit_code"]) for r in ours] == [
        ("/folder/a", 42, 1, 3)
    ]
    assert _full_rows(theirs) == _full_rows(ours)


def test_engines_leave_another_protocol_on_a_scheduler_port_undecoded(tmp_path: Path) -> None:
    """Found in review: a TLS client or a scanner's binary probe on 4444/4455 was decoded as
    the command channel, a flood of decode errors (and "not completely captured" in the
    plugin, where nothing was lost). R reads a first byte that is not '<', a letter, Ctrl-D
    or a line end as no request (§3.3): such a connection is another protocol, decoded by
    neither engine; a task beside it is as before."""
    require("tshark")
    from crafted_captures import CLIENT, CONTROLLER_IP, REMOTE_IP, SERVER, Conv, shell_task

    cap = Capture()
    for n, hello in enumerate([b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03", b"\x00 \x80\xff"]):
        probe = Conv(cap, (CONTROLLER_IP, 41000 + n), (REMOTE_IP, 4455), isn=500 + n)
        probe.handshake()
        probe.send(CLIENT, hello + bytes(range(200)))
        probe.send(SERVER, b"\x15\x03\x03\x00\x02\x02\x28" + bytes(range(100, 0, -1)))
        probe.close()
    expected = shell_task(cap)
    capture = cap.write(tmp_path / "foreign.pcap")
    result = jsdissect.analyze([capture])
    assert [t.process_id for t in result.task_records] == [expected.process_id]
    kinds = {ch.conn.client.port: ch.kind for ch in result.channels}
    assert (kinds[41000], kinds[41001]) == ("", "")
    assert result.decode_errors == 0
    ours, theirs, _, plugin_messages = _both_engines(capture)
    assert _full_rows(theirs) == _full_rows(ours)
    probes = [
        m for m in plugin_messages if ":41000 " in m["direction"] or ":41001 " in m["direction"]
    ]
    assert probes == []


@pytest.mark.parametrize("blank", [b"\t", b"\r\n  \x00", b"\xef\xbb\xbf"])
def test_blanks_before_a_command_are_no_other_protocol(blank: bytes) -> None:
    """Found in review: §3.3 reads every first byte but A-Z as XML, so XML whitespace, NUL
    padding and a UTF-8 BOM before a command keep it the command channel (R would parse
    it); only a byte no XML document, command name or Ctrl-D begins with is another
    protocol. Looked at in the first 64 bytes, as the plugin looks."""
    from jsdissect.protocol import command as cmd

    assert cmd.foreign_start(blank + b"<remote_scheduler.start_remote_task/>") is False
    assert cmd.foreign_start(blank + b"show_state") is False
    assert cmd.foreign_start(blank + b"\x16\x03\x01") is True
    assert cmd.foreign_start(blank + b" \t\x00") is None
    assert cmd.foreign_start(b" " * 64 + b"\x16") is None  # past the window: not told


BOM_CASES = {  # parity_captures.bom_task: status, whether the close is read, cmd messages
    "prolog": ("completed", True, ("ProcessAnswer", "KeepAlive", "RemoteTaskClose", "Ok")),
    "bare": ("completed", True, ("ProcessAnswer", "KeepAlive", "RemoteTaskClose", "Ok")),
    "misplaced": ("aborted", False, ("ProcessAnswer", "KeepAlive", "DecodeError", "DecodeError")),
    "lost": ("aborted", False, ("DecodeError", "Ok")),
}


@pytest.mark.parametrize("how", BOM_CASES)
def test_engines_read_documents_that_begin_with_a_bom_as_r_and_c_do(
    tmp_path: Path, how: str
) -> None:
    """The plugin read a start or close that begins with a UTF-8 BOM (a bare one's
    non-ASCII options as ISO-8859-1), the default engine neither; neither read an answer
    that does. R and C parse every document with the JVM's XML parser, which takes a BOM as
    its first bytes: UTF-8 after it unless a prolog says otherwise, after keep-alive spaces
    too (R strips them first, §3.7), but not two, nor blanks before the prolog; after bytes
    the capture lost, answers are read again from a BOM before `<?xml` too. The BOM is the
    document's first byte, no keep-alive: the start is sent with the BOM's segment (DESIGN
    "Exact times"), and the keep-alive counts only the spaces."""
    require("tshark")
    cap = Capture()
    start_sent, close_sent = parity_captures.bom_task(cap, 1, how)
    cap_file = cap.write(tmp_path / "bom.pcap")
    ours, theirs, our_messages, their_messages = _both_engines(cap_file)
    status, close_read, types = BOM_CASES[how]
    (row,) = ours
    assert (row["status"], row["start_sent"], row["close_sent"]) == (
        status,
        start_sent,
        close_sent if close_read else None,
    )
    assert _full_rows(theirs) == _full_rows(ours)
    summaries = [r["summary"] for r in our_messages]
    assert [r["type"] for r in our_messages if r["channel"] == "cmd"] == ["StartRemoteTask", *types]
    assert summaries[0].endswith(" java_options=-Dx=é>")
    assert ("keep-alive: 3 space(s)" in summaries) == (how != "lost")

    def decoded(rows: list[dict]) -> list[tuple]:  # the plugin's decode errors differ (README)
        return _comparable_messages([r for r in rows if r["type"] != "DecodeError"])

    assert decoded(their_messages) == decoded(our_messages)
    if "DecodeError" not in types:
        assert _comparable_messages(their_messages) == _comparable_messages(our_messages)
    if how == "prolog":  # the plugin's document field shows text: no BOM
        documents = _plugin_fields(cap_file, "jobscheduler.document", "jobscheduler.document")
        assert [d[:5] for (d,) in documents] == ["<?xml", "<?xml", "<remo", "<?xml"]


def test_engines_refuse_a_command_with_bytes_before_its_first_lt(tmp_path: Path) -> None:
    """Found with the BOM: the plugin read a command from its first `<` whatever came
    before it (`xy<…close/>` closed the task); R's parser, and expat, refuse the document
    ("Content is not allowed in prolog"), so the close is no close: a decode error."""
    require("tshark")
    from crafted_captures import CLIENT, CONTROLLER_IP, REMOTE_IP, SERVER, Conv, answer_time

    cap = Capture()
    cmd = Conv(cap, (CONTROLLER_IP, 42001), (REMOTE_IP, 4455), isn=1000)
    cmd.handshake()
    cmd.send(CLIENT, js.start_remote_task(58001, kind="process"))
    cmd.send(SERVER, js.process_answer(answer_time(cap), "5"))
    cmd.send(CLIENT, b"xy" + js.remote_task_close("5"))
    cmd.send(SERVER, js.ok_answer(answer_time(cap)))
    cmd.close()
    ours, theirs, our_messages, _ = _both_engines(cap.write(tmp_path / "junk.pcap"))
    assert [(r["process_id"], r["close_sent"]) for r in ours] == [("5", None)]
    assert "DecodeError" in [r["type"] for r in our_messages]
    assert _full_rows(theirs) == _full_rows(ours)


def test_an_answer_with_a_lost_segment_is_one_warning_and_one_message(tmp_path: Path) -> None:
    """Found in review: an answer in 7-byte segments, one of them lost, made one error
    expert for the answer and one more per segment after the loss (16), each a decode
    error in the plugin's message list. Bytes the capture lost are no malformed data:
    warnings, on the answer and on its first rest after the loss (TCP may never show the
    segment an answer began in); the default engine has one decode error."""
    require("tshark")
    from crafted_captures import CLIENT, CONTROLLER_IP, REMOTE_IP, SERVER, Conv, answer_time

    cap = Capture()
    cmd = Conv(cap, (CONTROLLER_IP, 40000), (REMOTE_IP, 4455), isn=1000)
    cmd.handshake()
    cmd.send(CLIENT, js.start_remote_task(59999, kind="process"))
    answer = js.process_answer(answer_time(cap), "700001")
    cmd.send(SERVER, answer, sizes=(7,) * (len(answer) // 7))
    del cap.packets[-len(answer) // 7 + 2]  # the third segment of the answer
    cmd.close()
    capture = cap.write(tmp_path / "lost_segment.pcap")
    experts = _plugin_fields(capture, "jobscheduler", "_ws.expert.severity", "_ws.expert.message")
    ours = [
        pair
        for sevs, msgs in experts
        for pair in zip(sevs.split(","), msgs.split(","), strict=True)
        if "completely" in pair[1]
    ]
    assert ours == [  # PI_WARN
        (str(0x600000), "Answer not completely captured"),
        (str(0x600000), "Rest of an answer not completely captured (not paired with a command)"),
    ]
    _, _, messages, plugin_messages = _both_engines(capture)
    errors = [m for m in messages if m["type"] == "DecodeError"]
    plugin_errors = [m for m in plugin_messages if m["type"] == "DecodeError"]
    assert (len(errors), len(plugin_errors)) == (1, 2)
