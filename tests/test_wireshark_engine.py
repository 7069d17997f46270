"""`--engine wireshark`: the same table from tshark running the plugin, driven by pyshark."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from conftest import require
from pcapfiles import pcap_file

import jsdissect
from jsdissect import report, wireshark

ROOT = Path(__file__).resolve().parent.parent
KEYS = ("process_id", "callback_port", "status", "exit_code", "steps", "log_lines", "kind")


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


def test_engine_reports_a_mergecap_failure_in_one_plain_line(tmp_path: Path) -> None:
    require("tshark")
    odd = tmp_path / "odd.pcap"
    # A whole pcap file of a link type Wireshark does not know: mergecap refuses it.
    odd.write_bytes(pcap_file(9999, [(10**9, b"abcd", 4)]))
    out = _engine_cli(ROOT / "captures" / "demo.pcap", odd)
    assert out.returncode == 2, out.stderr
    (line,) = out.stderr.strip().splitlines()
    assert line.startswith("jsdissect: mergecap") and "odd.pcap" in line and "9999" in line


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
