"""`--engine wireshark`: the same table from tshark running the plugin, driven by pyshark."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from conftest import require

import jsdissect
from jsdissect import report, wireshark

ROOT = Path(__file__).resolve().parent.parent
KEYS = ("process_id", "callback_port", "status", "exit_code", "steps", "log_lines", "kind")


def test_engine_table_equals_jsdissect_on_the_samples() -> None:
    require("tshark")
    for name in ("demo.pcap", "failures.pcap", "one_api.pcapng"):
        capture = ROOT / "captures" / name
        ours = [report.task_row(t) for t in jsdissect.analyze([capture]).task_records]
        theirs, messages = wireshark.analyze([capture])
        assert sorted(tuple(str(r[k]) for k in KEYS) for r in theirs) == sorted(
            tuple(str(r[k]) for k in KEYS) for r in ours
        ), name
        starts = [m for m in messages if m["summary"].startswith("<remote_scheduler.start")]
        assert len(starts) == sum(r["start_sent"] is not None for r in ours)


def test_engine_joins_ring_buffer_files(tmp_path: Path) -> None:
    require("tshark")
    editcap = require("editcap")
    capture = ROOT / "captures" / "demo.pcap"
    subprocess.run([editcap, "-c", "200", str(capture), str(tmp_path / "ring.pcap")], check=True)
    parts = sorted(tmp_path.glob("ring*.pcap"))
    assert len(parts) > 1
    whole, _ = wireshark.analyze([capture])
    split, _ = wireshark.analyze(parts)
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
    whole = ROOT / "captures" / "demo.pcap"
    cut = tmp_path / "cut.pcap"
    cut.write_bytes(whole.read_bytes()[:3000])  # mid-packet: mergecap refuses it
    out = _engine_cli(whole, cut)
    assert out.returncode == 2, out.stderr
    (line,) = out.stderr.strip().splitlines()
    assert line.startswith("jsdissect: mergecap") and "cut.pcap" in line and "['" not in line
