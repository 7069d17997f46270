"""Every packet captured more than once, as `tcpdump -i any` takes it on a host whose
traffic crosses a VLAN sub-interface, a bond or a bridge (once per interface, microseconds
apart): the tables of the same traffic captured once, the first copy's time counting
(DESIGN "Exact times"), in both engines.
"""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

import pytest
from conftest import require
from crafted_captures import (
    Capture,
    S,
    api_task_with_errors,
    callback_syns,
    killed_task,
    refused_callback,
    shell_task,
)
from pcapfiles import LINKTYPE_LINUX_SLL, LINKTYPE_LINUX_SLL2, every_frame_twice, pcap_file

import jsdissect
from jsdissect import report, wireshark
from jsdissect.capture import Engine

LINKTYPES = {"sll": LINKTYPE_LINUX_SLL, "sll2": LINKTYPE_LINUX_SLL2}

DROPPED, AT_THE_END = "500011", "500012"  # the process ids of crafted_tasks' last two


def crafted_tasks() -> Capture:
    """Tasks of every end (completed, with errors, refused, killed), then a callback SYN
    sent three times and never answered (`callback-unanswered`), and last a start whose
    callback SYN the capture ends with (`running`: it may still be answered)."""
    cap = Capture()
    for make in (shell_task, api_task_with_errors, refused_callback, killed_task):
        make(cap)
        cap.advance(2 * S)
    callback_syns(cap, DROPPED, (40011, 45011, 59989), 21000, resent_after=(1 * S, 2 * S))
    cap.advance(2 * S)
    callback_syns(cap, AT_THE_END, (40012, 45012, 59988), 22000, resent_after=())
    return cap


def captured_twice(
    cap: Capture, path: Path, linktype: int, delay_us: int, vlan: int | None
) -> Path:
    frames = [(int(p.time * 10**9), bytes(p), len(p)) for p in cap.packets]
    path.write_bytes(
        pcap_file(linktype, every_frame_twice(frames, linktype, delay_us * 1000, vlan))
    )
    return path


def tables(
    path: Path, engine: Engine = "auto"
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    result = jsdissect.analyze([path], engine=engine)
    tasks = [report.task_row(t) for t in result.task_records]
    return tasks, [report.connection_row(ch) for ch in result.channels]


@pytest.mark.parametrize("vlan", [None, 100], ids=["bridge", "vlan"])
@pytest.mark.parametrize("delay_us", [3, 250], ids=["adjacent", "queued"])
@pytest.mark.parametrize("linktype", list(LINKTYPES.values()), ids=list(LINKTYPES))
@pytest.mark.parametrize("engine", ["libpcap", "python"])
def test_every_packet_twice_gives_the_tables_of_every_packet_once(
    tmp_path: Path, engine: Engine, linktype: int, delay_us: int, vlan: int | None
) -> None:
    """`queued`: the second copies come 250 µs late, after the next packets' first copies
    (the physical interface's queue held them back); `vlan`: they carry the tag."""
    cap = crafted_tasks()
    once = cap.write(tmp_path / "once.pcap")
    twice = captured_twice(cap, tmp_path / "twice.pcap", linktype, delay_us, vlan)
    tasks, connections = tables(twice, engine)
    assert (tasks, connections) == tables(once, engine)
    statuses = {row["process_id"]: row["status"] for row in tasks}
    assert (statuses[DROPPED], statuses[AT_THE_END]) == ("callback-unanswered", "running")
    syns = {row["server"]: row["syn_count"] for row in connections if row["state"] != "closed"}
    assert syns["127.0.0.21:59989"] == 3


@pytest.mark.parametrize(
    ("linktype", "delay_us", "vlan"),
    [(LINKTYPE_LINUX_SLL, 3, None), (LINKTYPE_LINUX_SLL2, 250, 100)],
    ids=["sll-adjacent-bridge", "sll2-queued-vlan"],
)
def test_the_plugin_takes_every_packet_twice_as_once(
    tmp_path: Path, linktype: int, delay_us: int, vlan: int | None
) -> None:
    """Wireshark marks each second copy as a retransmission; the plugin counts a SYN
    copied within COPY_WINDOW_US once, as the default engine does."""
    tshark = require("tshark")
    cap = crafted_tasks()
    once = cap.write(tmp_path / "once.pcap")
    twice = captured_twice(cap, tmp_path / "twice.pcap", linktype, delay_us, vlan)
    tasks = wireshark.analyze([twice]).tasks
    assert tasks == wireshark.analyze([once]).tasks
    statuses = {row["process_id"]: row["status"] for row in tasks}
    assert (statuses[DROPPED], statuses[AT_THE_END]) == ("callback-unanswered", "running")
    plugin = wireshark.plugin_path()
    args = [tshark, "-n", "-2", "-X", f"lua_script:{plugin}", "-r", str(twice), "-T", "fields"]
    args += ["-e", "_ws.expert.message", "-E", "occurrence=a", "-E", "aggregator=|"]
    out = subprocess.run(args, capture_output=True, text=True, check=True).stdout
    experts = {m for line in out.splitlines() for m in line.split("|")}
    assert "Callback SYN to port 59989 sent 3 time(s), never answered" in experts
