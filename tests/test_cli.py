"""The CLI as a person meets it: exit statuses, one-line errors, outputs, help."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import jsencode as enc
import pytest
from scapy.layers.inet import IP, TCP
from scapy.layers.l2 import Ether
from scapy.utils import wrpcap

from jsdissect import __version__

CMD_CLIENT, REMOTE = ("127.0.0.21", 40001), ("127.0.0.11", 4455)
T0 = 1_772_442_900.0


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "jsdissect", *args], capture_output=True, text=True, timeout=120
    )


def small_capture(path: Path) -> Path:
    """A command connection: handshake, start, answer, close, ok, FIN — four packets of data."""
    (cip, cport), (rip, rport) = CMD_CLIENT, REMOTE
    c2s = Ether() / IP(src=cip, dst=rip) / TCP(sport=cport, dport=rport)
    s2c = Ether() / IP(src=rip, dst=cip) / TCP(sport=rport, dport=cport)
    start = enc.start_remote_task(59999, kind="process")
    answer = enc.process_answer("2026-03-02T09:15:00.123Z", "84217301")
    close = enc.remote_task_close("84217301")
    ok = enc.ok_answer("2026-03-02T09:15:02.456Z")
    c, s = 1000, 5000
    packets = [
        c2s.copy() / b"",
        s2c.copy() / b"",
        c2s.copy() / b"",
        c2s.copy() / start,
        s2c.copy() / answer,
        c2s.copy() / close,
        s2c.copy() / ok,
        c2s.copy() / b"",
    ]
    flags = ["S", "SA", "A", "PA", "PA", "PA", "PA", "FA"]
    seqs = [
        (c, 0),
        (s, c + 1),
        (c + 1, s + 1),
        (c + 1, s + 1),
        (s + 1, c + 1 + len(start)),
        (c + 1 + len(start), s + 1 + len(answer)),
        (s + 1 + len(answer), c + 1 + len(start) + len(close)),
        (c + 1 + len(start) + len(close), s + 1 + len(answer) + len(ok)),
    ]
    for i, (pkt, flag, (seq, ack)) in enumerate(zip(packets, flags, seqs, strict=True)):
        pkt[TCP].flags, pkt[TCP].seq, pkt[TCP].ack = flag, seq, ack
        pkt.time = T0 + i * 0.01
    wrpcap(str(path), packets)
    return path


@pytest.fixture()
def capture(tmp_path: Path) -> Path:
    return small_capture(tmp_path / "small.pcap")


def test_version_and_help() -> None:
    assert run("--version").stdout.strip().endswith(__version__)
    for command in ("tasks", "connections", "messages"):
        out = run(command, "--help")
        assert out.returncode == 0 and "Examples:" in out.stdout


def _write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


@pytest.mark.parametrize(
    "make",
    [
        lambda p: p / "missing.pcap",
        lambda p: p,  # a directory
        lambda p: _write(p / "empty.pcap", b""),
        lambda p: _write(p / "notes.txt", b"hello\n" * 10),
    ],
    ids=["missing", "directory", "empty", "not-a-capture"],
)
def test_unusable_input_is_one_line_and_exit_2(tmp_path: Path, make) -> None:
    target = make(tmp_path)
    out = run("tasks", str(target))
    assert out.returncode == 2, out.stderr
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in out.stderr
    assert target.name in lines[0]


def test_truncated_capture_is_analyzed_with_a_warning(capture: Path, tmp_path: Path) -> None:
    cut = tmp_path / "cut.pcap"
    cut.write_bytes(capture.read_bytes()[:-5])
    out = run("connections", str(cut))
    assert out.returncode == 0, out.stderr
    assert "warning" in out.stderr and "cut.pcap" in out.stderr
    assert "127.0.0.21:40001" in out.stdout


def test_connections_lists_the_connection(capture: Path) -> None:
    out = run("connections", str(capture), "--json", "-")
    assert out.returncode == 0, out.stderr
    (conn,) = json.loads(out.stdout)
    assert conn["client"] == "127.0.0.21:40001" and conn["server"] == "127.0.0.11:4455"
    assert conn["channel"] == "cmd" and conn["state"] == "closed"
    assert conn["syn"] == "2026-03-02T09:15:00.000000Z"
    assert conn["bytes_c2s"] > 0 and conn["bytes_s2c"] > 0


def test_tasks_json_to_stdout_keeps_summary_on_stderr(capture: Path) -> None:
    out = run("tasks", str(capture), "--json", "-")
    assert out.returncode == 0, out.stderr
    (task,) = json.loads(out.stdout)
    assert task["process_id"] == "84217301" and task["callback_port"] == 59999
    assert task["kind"] == "shell" and task["status"] == "callback-missing"
    assert "1 task(s)" in out.stderr


def test_unknown_option_values_are_rejected(capture: Path) -> None:
    out = run("tasks", str(capture), "--status", "bogus")
    assert out.returncode == 2 and "bogus" in out.stderr
    out = run("tasks", str(capture), "--columns", "process_id,nonsense")
    assert out.returncode == 2 and "nonsense" in out.stderr


def test_unknown_process_id_says_so_and_exits_1(capture: Path) -> None:
    out = run("messages", str(capture), "--process-id", "999")
    assert out.returncode == 1 and "999" in out.stderr


def test_unwritable_output_is_a_clear_error(capture: Path, tmp_path: Path) -> None:
    out = run("tasks", str(capture), "--csv", str(tmp_path / "no" / "such" / "dir.csv"))
    assert out.returncode == 2 and "Traceback" not in out.stderr
    assert len(out.stderr.strip().splitlines()) == 1
