"""Every packet captured more than once, as `tcpdump -i any` takes it on a host whose
traffic crosses a VLAN sub-interface, a bond or a bridge (once per interface, microseconds
apart): the tables of the same traffic captured once, the first copy's time counting
(DESIGN "Exact times"), in both engines. Crafted captures run anywhere; the live test
builds two hosts in network namespaces and needs root.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import require, require_root
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
from jsdissect.capture import COPY_WINDOW_US, Engine

LINKTYPES = {"sll": LINKTYPE_LINUX_SLL, "sll2": LINKTYPE_LINUX_SLL2}
TIME_COLUMNS = [c.name for c in report.TASK_COLUMNS if c.type == report.TIME]
DURATION_COLUMNS = [c.name for c in report.TASK_COLUMNS if c.type == report.DURATION]
CONNECTION_IDS = ("cmd_conn", "callback_conn")  # made from a connection's first time

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


# --- for real: two hosts in network namespaces, tcpdump -i any on one ------------------------

CONTROLLER, REMOTE = "10.218.0.1", "10.218.0.2"


@contextlib.contextmanager
def bridged_hosts() -> Iterator[tuple[str, str, str]]:
    """Two network namespaces joined by a veth pair: the controller's host has its address
    on a bridge whose port is its end of the pair (a server with its interface bridged, for
    virtual machines say: each packet crosses the bridge and the port); the remote's host
    has its address on the other end. Yields (controller's namespace, remote's, the
    bridge's port)."""
    tag = f"jsd{os.getpid() % 100_000}"
    here, there, port, peer, bridge = (tag + s for s in ("c", "r", "p", "q", "br"))

    def ip(*args: str) -> None:
        subprocess.run(["ip", *args], check=True, capture_output=True)

    try:
        ip("netns", "add", here)
        ip("netns", "add", there)
        ip("link", "add", port, "netns", here, "type", "veth", "peer", peer, "netns", there)
        ip("-n", here, "link", "add", bridge, "type", "bridge", "forward_delay", "0")
        ip("-n", here, "link", "set", port, "master", bridge)
        for ns, links in ((here, ("lo", port, bridge)), (there, ("lo", peer))):
            for link in links:
                ip("-n", ns, "link", "set", link, "up")
        ip("-n", here, "addr", "add", f"{CONTROLLER}/24", "dev", bridge)
        ip("-n", there, "addr", "add", f"{REMOTE}/24", "dev", peer)
        _wait_forwarding(here, port)
        yield here, there, port
    finally:
        for ns in (here, there):
            subprocess.run(["ip", "netns", "del", ns], capture_output=True)


def _wait_forwarding(ns: str, port: str) -> None:
    deadline = time.monotonic() + 10
    while (
        "state forwarding"
        not in subprocess.run(
            ["ip", "-n", ns, "-d", "link", "show", "dev", port], capture_output=True, text=True
        ).stdout
    ):
        if time.monotonic() > deadline:
            raise RuntimeError(f"bridge port {port} not forwarding")
        time.sleep(0.05)


def _without_ids(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The rows in the order of their command connections' ports, which both captures
    agree on (not of their times, which two tasks started together may not)."""
    rows = sorted(rows, key=lambda row: (row["cmd_port"] or 0, row["callback_port"] or 0))
    return [{k: v for k, v in row.items() if k not in CONNECTION_IDS} for row in rows]


def _assert_same_rows(got: list[dict[str, Any]], want: list[dict[str, Any]]) -> None:
    """Rows of the same traffic taken by two captures at once: equal but for the times,
    which each capture stamps itself (microseconds apart), and so the connection ids."""
    assert len(got) == len(want)
    for mine, theirs in zip(_without_ids(got), _without_ids(want), strict=True):
        for column in TIME_COLUMNS:
            a, b = mine.pop(column), theirs.pop(column)
            assert (a is None) == (b is None) and abs((a or 0) - (b or 0)) < 1_000, column
        for column in DURATION_COLUMNS:
            a, b = mine.pop(column), theirs.pop(column)
            assert (a is None) == (b is None) and abs((a or 0) - (b or 0)) < 2, column
        assert mine == theirs


def _counts(connections: list[dict[str, Any]]) -> dict[tuple[str, str], tuple[Any, ...]]:
    columns = ("state", "bytes_c2s", "bytes_s2c", "packets", "syn_count", "retransmissions")
    return {(c["client"], c["server"]): tuple(c[k] for k in columns) for c in connections}


def _cut(capture: Path, at_us: int, out: Path) -> Path:
    """The capture up to `at_us` (editcap reads the time as local time: UTC here)."""
    seconds, micros = divmod(at_us, 1_000_000)
    stop = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(seconds)) + f".{micros:06d}"
    env = {**os.environ, "TZ": "UTC"}
    subprocess.run([require("editcap"), "-B", stop, str(capture), str(out)], check=True, env=env)
    return out


def test_tcpdump_any_across_a_bridge_gives_the_tables_of_one_interface(tmp_path: Path) -> None:
    """A real run: the controller's host captures with `-i any` (Linux cooked v1 and v2, pcap
    and pcapng) and, at the same time, on its bridge's port alone. Each packet is in the
    `-i any` captures twice (the bridge's and the port's copy); the tables are the port's,
    and exactly those of the same capture with its copies removed by editcap (which keeps
    each packet's first copy). Cut half a second after a callback SYN that a firewall
    drops, that SYN, captured twice, is still one SYN that may be answered: `running`."""
    require_root()
    for tool in ("ip", "tcpdump", "dumpcap", "nft", "editcap"):
        require(tool)
    import capture_run
    from capture_run import Tap
    from emulator import Delays, Scenario, TaskSpec, run_scenario

    quick = Delays(spawn=0.02, callback=0.02, step=0.05, close=0.01)
    with bridged_hosts() as (here, there, port):
        scenario = Scenario(
            name="copies",
            description="Tasks between two hosts; the controller's traffic crosses a bridge.",
            tasks=(
                TaskSpec(kind="shell", log_lines=2, delays=quick),
                TaskSpec(steps=2, log_lines=2, delays=quick),
                TaskSpec(kind="shell", failure="callback_refused"),
                TaskSpec(steps=3, failure="crash", delays=Delays(step=0.1)),
                # alone on the wire once the others ended: the cut falls in a quiet second
                TaskSpec(failure="callback_dropped", start_at=2.5),
            ),
            remotes=((REMOTE, 4455),),
            controllers=(CONTROLLER,),
            callback_timeout=2.0,
            namespaces=((CONTROLLER, here), (REMOTE, there)),
        )
        bpf = capture_run.capture_filter(scenario)
        taps = {  # file -> (format, tap, the link header's length: editcap ignores it)
            "port.pcap": ("pcap", Tap(port, here), 0),
            "any_sll.pcap": ("pcap", Tap("any", here, "LINUX_SLL"), 16),
            "any_sll2.pcap": ("pcap", Tap("any", here, "LINUX_SLL2"), 20),
            "any_sll.pcapng": ("pcapng", Tap("any", here, "LINUX_SLL"), 16),
            "any_sll2.pcapng": ("pcapng", Tap("any", here, "LINUX_SLL2"), 20),
        }
        with contextlib.ExitStack() as stack:
            for name, (fmt, tap, _) in taps.items():
                stack.enter_context(capture_run.capturing(tmp_path / name, fmt, bpf, tap=tap))
            run_scenario(scenario)

    single = tmp_path / "port.pcap"
    tasks, connections = tables(single)
    assert "callback-unanswered" in {row["status"] for row in tasks}
    (dropped,) = [row for row in tasks if row["status"] == "callback-unanswered"]
    cut_at = dropped["callback_syn"] + 500_000
    cut_single = tables(_cut(single, cut_at, tmp_path / "cut_port.pcap"))[0]
    assert [r["status"] for r in cut_single if r["process_id"] == dropped["process_id"]] == [
        "running"
    ]
    packets = jsdissect.analyze([single]).stats.packets
    window = f"{COPY_WINDOW_US / 1e6:.6f}"
    for name, (_, _, link_header) in taps.items():
        if name == "port.pcap":
            continue
        capture = tmp_path / name
        assert jsdissect.analyze([capture]).stats.packets >= 2 * packets, name
        got_tasks, got_connections = tables(capture)
        _assert_same_rows(got_tasks, tasks)
        assert _counts(got_connections) == _counts(connections), name
        deduplicated = tmp_path / f"editcap_{name}"
        ignore = ["-I", str(link_header)]
        subprocess.run(
            [require("editcap"), "-w", window, *ignore, str(capture), str(deduplicated)],
            check=True,
            capture_output=True,
        )
        assert (got_tasks, got_connections) == tables(deduplicated), name
        cut = tables(_cut(capture, cut_at, tmp_path / f"cut_{name}"))[0]
        _assert_same_rows(cut, cut_single)

    require("tshark")
    theirs = wireshark.analyze([single]).tasks
    _assert_same_rows(wireshark.analyze([tmp_path / "any_sll.pcap"]).tasks, theirs)
    cut_theirs = wireshark.analyze([tmp_path / "cut_port.pcap"]).tasks
    _assert_same_rows(wireshark.analyze([tmp_path / "cut_any_sll2.pcapng"]).tasks, cut_theirs)
