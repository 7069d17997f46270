"""The emulator against the spec: its bytes decode to what it meant to send (issue 3).

Live tests capture real loopback traffic (root, tcpdump/dumpcap, nft); they skip without
those, and fail in CI. The committed captures are checked with tshark and their truth
files against the schema of the brief.
"""

from __future__ import annotations

import asyncio
import json
import re
import subprocess
from pathlib import Path
from typing import Any

import emulator
import jsencode as enc
import pytest
from capture_run import TOOLS, capture_scenario
from conftest import require, require_root
from emulator import Delays, Scenario, TaskSpec
from emulator.remote import RemoteScheduler
from emulator.replay import decode_segments, expected_intents, read_segments
from emulator.wire import (
    FrameBuffer,
    XmlEndFinder,
    answer_intent,
    command_intents,
    describe_api_stream,
)
from make_captures import CAPTURES, DEFAULT_OUT

STATUSES = {
    "start-failed", "callback-refused", "callback-unanswered", "callback-missing",
    "killed", "aborted", "partial", "completed", "running",
}  # fmt: skip
EVENTS = {
    "cmd_connected", "start_sent", "start_answered", "start_error", "callback_syn",
    "callback_refused", "callback_unanswered", "callback_accepted", "callback_timeout",
    "create_instance", "construct", "begin", "begin_answered", "spooler_open", "step", "end",
    "spooler_on_success", "spooler_on_error", "spooler_exit", "release", "release_answered",
    "crash", "callback_lost", "callback_closed", "close_sent", "close_kill_sent",
    "task_killed", "close_answered", "cmd_closed",
}  # fmt: skip

_QUICK = Delays(spawn=0.02, callback=0.02, step=0.12, close=0.01)

ROUNDTRIP = Scenario(
    name="roundtrip",
    description="Every message kind once: both kinds, both flavours, K, spaces, an E answer.",
    tasks=(
        TaskSpec(kind="shell", log_lines=2, delays=_QUICK),
        TaskSpec(steps=3, log_lines=2, delays=_QUICK),
        TaskSpec(flavour="scala", steps=2, log_lines=1, delays=_QUICK),
        TaskSpec(
            kind="shell",
            flavour="scala",
            exit_code=4,
            failure="keepalive_spaces",
            delays=Delays(step=0.5),
        ),
        TaskSpec(steps=2, api_error=True, delays=_QUICK),
    ),
    remotes=(("127.0.0.111", 4455),),
    controllers=("127.0.0.121",),
    task_keepalive=0.05,
    space_period=0.1,
)

FAILING = Scenario(
    name="failing",
    description="The failures whose status needs wire evidence.",
    tasks=(
        TaskSpec(failure="callback_dropped", controller=0),
        TaskSpec(kind="shell", failure="callback_refused", controller=0),
        TaskSpec(kind="shell", failure="start_error", controller=0),
        TaskSpec(steps=3, failure="kill", controller=0, delays=Delays(step=0.6)),
        TaskSpec(steps=3, failure="crash", controller=0, delays=Delays(step=0.2)),
        TaskSpec(kind="shell", controller=1),
        TaskSpec(failure="port_reuse", controller=1),
    ),
    remotes=(("127.0.0.112", 4455),),
    controllers=("127.0.0.122", "127.0.0.123"),
    callback_timeout=2.0,
)


def _live(scenario: Scenario, fmt: str = "pcap") -> None:
    """Live captures need root, the capture tool, and nft for dropped callbacks."""
    require_root()
    require(TOOLS[fmt])
    if scenario.needs_firewall():
        require("nft")


# --- the test-side decoder on the spec's examples ------------------------------------------


def test_end_finder_splits_keep_alive_spaces_from_the_close_command() -> None:
    stream = enc.start_remote_task(59999, "process") + b"  " + enc.remote_task_close("84217301")
    requests = XmlEndFinder().feed(stream)
    assert [command_intents(r) for r in requests] == [
        [("start", 59999, "process")],
        [("space",), ("space",), ("close", "84217301", False)],
    ]


def test_process_answer_decodes_with_pid_omitted() -> None:
    raw = enc.process_answer("2024-01-29T14:17:35.123Z", "84217301")
    assert raw.endswith(b"\x00")
    assert answer_intent(raw[:-1]) == ("process", "84217301", None)


def test_frames_split_across_segments_and_pair_lifo() -> None:
    log = enc.invoke(7, 14, enc.METHOD, [enc.V(enc.VT_I4, 0), enc.bstr("[stdout] hello")])
    c_side = enc.call(1, "step") + enc.answer_empty()
    t_side = enc.keep_alive() + log  # T's callbacks nested in the step
    c_frames, t_frames = FrameBuffer(), FrameBuffer()
    messages = [("C", p) for p in c_frames.feed(c_side[:20])]
    messages += [("C", p) for p in c_frames.feed(c_side[20:30])]
    messages += [("T", p) for p in t_frames.feed(t_side[:5])]
    messages += [("C", p) for p in c_frames.feed(c_side[30:])]
    messages += [("T", p) for p in t_frames.feed(t_side[5:])]
    messages.append(("C", FrameBuffer().feed(enc.answer_value(enc.V(enc.VT_EMPTY)))[0]))
    intents = [intent for _, intent in describe_api_stream(messages)]
    assert intents == [
        ("call", 1, "step", ()),
        ("keepalive",),
        ("answer_empty",),
        ("invoke", 7, 14, enc.METHOD, ((enc.VT_I4, 0), (enc.VT_BSTR, "[stdout] hello")), ()),
        ("answer", 0, (enc.VT_EMPTY, None)),
    ]


def _ask_remote(ip: str, command: bytes) -> bytes:
    """Sends one command to a lone remote scheduler and returns its answer (with NUL)."""
    scenario = Scenario("lone", "", (), remotes=((ip, 4455),))

    async def ask() -> bytes:
        remote = RemoteScheduler(ip, 4455, scenario, emulator.Recorder(scenario))
        await remote.start()
        try:
            reader, writer = await asyncio.open_connection(ip, 4455)
            writer.write(command)
            answer = await reader.readuntil(b"\x00")
            writer.close()
            return answer
        finally:
            await remote.stop()

    return asyncio.run(ask())


def test_remote_answers_unknown_command_with_scheduler_105() -> None:
    answer = _ask_remote("127.0.0.113", b"<show_state/>")
    assert answer.startswith(b'<?xml version="1.0" encoding="ISO-8859-1"?><spooler><answer time="')
    assert re.search(rb'time="\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z"', answer)
    assert answer_intent(answer[:-1])[:2] == ("error", "SCHEDULER-105")


@pytest.mark.parametrize(
    ("command", "code"),
    [
        (enc.remote_task_kill("12345"), "EMULATOR-1"),  # §9: a process_id it never started
        (enc.remote_task_close("12345"), "EMULATOR-1"),
        (enc.remote_task_kill("12345", "SIGKILL"), "EMULATOR-2"),  # §3.6.2: SIGTERM only
    ],
)
def test_remote_answers_kill_or_close_of_no_task_with_an_error(command: bytes, code: str) -> None:
    answer = _ask_remote("127.0.0.114", command)
    assert answer_intent(answer[:-1])[:2] == ("error", code)


# --- live: emulate, capture, decode ----------------------------------------------------------


@pytest.mark.needs_root
@pytest.mark.parametrize("fmt", ["pcap", "pcapng"])
def test_captured_bytes_decode_to_what_was_sent(tmp_path: Path, fmt: str) -> None:
    _live(ROUNDTRIP, fmt)
    path = tmp_path / f"roundtrip.{fmt}"
    recorder = capture_scenario(ROUNDTRIP, path, fmt)  # checks the bytes per flow too
    decoded = decode_segments(read_segments(path), {4455})
    expected = expected_intents(recorder)
    assert decoded.keys() >= expected.keys()
    for flow, intents in expected.items():
        assert decoded[flow] == intents, flow

    truth = recorder.truth()["tasks"]
    all_intents = [i for intents in decoded.values() for i in intents]
    starts = [i for i in all_intents if i[0] == "start"]
    assert sorted(s[1] for s in starts) == sorted(t["callback_port"] for t in truth)
    answered = {i[1] for i in all_intents if i[0] == "process"}
    closed = {i[1] for i in all_intents if i[0] == "close"}
    assert answered == closed == {t["process_id"] for t in truth}
    assert ("space",) in all_intents
    assert ("keepalive",) in all_intents
    assert _logged_lines(decoded) == sorted(line for t in truth for line in t["log"])
    assert [t["status"] for t in truth] == ["completed"] * 5
    assert truth[4]["error"].startswith("Z-JAVA-105 ")


def _logged_lines(decoded: dict[Any, list[tuple[Any, ...]]]) -> list[list[Any]]:
    """(level, line) of every spooler_log `log` (DISPID 14) and `info` (0) call decoded."""
    intents = [i for flow_intents in decoded.values() for i in flow_intents]
    log_ids = set()
    for intent in intents:
        if intent[0] == "call" and intent[2] == "begin":
            (_, objects), (_, names) = intent[3]  # parameter order: objects, names (§6.1)
            pairs = zip(names, objects, strict=True)
            by_name = {name: object_id for (_, name), (_, object_id) in pairs}
            log_ids.add(by_name["spooler_log"])
    lines = []
    for intent in intents:
        if intent[0] != "invoke" or intent[1] not in log_ids or intent[2] not in (0, 14):
            continue
        args = [value for _, value in intent[4]]
        level, text = args if intent[2] == 14 else (0, args[0])
        lines += [[level, line] for line in text.split("\n") if line.strip()]
    return sorted(lines)


@pytest.mark.needs_root
def test_failures_leave_their_evidence_on_the_wire(tmp_path: Path) -> None:
    _live(FAILING)
    path = tmp_path / "failing.pcap"
    recorder = capture_scenario(FAILING, path, "pcap")
    truth = recorder.truth()["tasks"]
    assert [t["status"] for t in truth] == [
        "callback-unanswered", "callback-refused", "start-failed", "killed", "aborted",
        "completed", "completed",
    ]  # fmt: skip
    assert truth[2]["error"].startswith("SCHEDULER-121 ")
    assert truth[6]["callback_port"] == truth[5]["callback_port"]  # port_reuse

    from scapy.layers.inet import IP, TCP
    from scapy.utils import rdpcap

    packets = [(p[IP], p[TCP]) for p in rdpcap(str(path)) if TCP in p]

    def to_callback(key: int, flags: str) -> list[Any]:
        end = (truth[key]["controller"], truth[key]["callback_port"])
        return [p for p in packets if (p[0].dst, p[1].dport) == end and p[1].flags == flags]

    def from_callback(key: int, flags: str) -> list[Any]:
        end = (truth[key]["controller"], truth[key]["callback_port"])
        return [p for p in packets if (p[0].src, p[1].sport) == end and flags in str(p[1].flags)]

    assert len(to_callback(0, "S")) >= 2 and not from_callback(0, "SA")  # retransmitted SYN
    assert from_callback(1, "R")  # refused
    decoded = decode_segments(read_segments(path), {4455})
    closes = [i for intents in decoded.values() for i in intents if i[0] == "close"]
    assert ("close", truth[3]["process_id"], True) in closes


# --- committed captures -----------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(CAPTURES))
def test_tshark_reads_committed_capture(name: str) -> None:
    require("tshark")
    path = DEFAULT_OUT / name
    assert path.exists(), f"{path} missing: run python tests/make_captures.py"
    result = subprocess.run(
        ["tshark", "-r", str(path), "-q", "-z", "conv,tcp"],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "cut short" not in result.stderr


TASK_FIELDS: dict[str, tuple[type, ...]] = {
    "process_id": (str, type(None)),
    "pid": (int, type(None)),
    "kind": (str,),
    "flavour": (str,),
    "controller": (str,),
    "remote": (str,),
    "callback_port": (int,),
    "job": (str, type(None)),
    "task_id": (int, type(None)),
    "steps": (int,),
    "exit_code": (int, type(None)),
    "signal": (int, type(None)),
    "log_lines": (int,),
    "status": (str,),
    "error": (str, type(None)),
    "log": (list,),
}


def validate_truth(truth: dict[str, Any]) -> None:
    """The truth file schema of the brief, plus internal consistency."""
    assert set(truth) == {"scenario", "description", "tasks", "events"}
    assert isinstance(truth["scenario"], str) and isinstance(truth["description"], str)
    for task in truth["tasks"]:
        assert list(task) == list(TASK_FIELDS)
        for key, types in TASK_FIELDS.items():
            assert isinstance(task[key], types) and not isinstance(task[key], bool), key
        assert task["kind"] in ("shell", "api") and task["flavour"] in ("cpp", "scala")
        assert task["status"] in STATUSES
        assert re.fullmatch(r"127\.\d+\.\d+\.\d+", task["controller"])
        assert re.fullmatch(r"127\.\d+\.\d+\.\d+:\d+", task["remote"])
        assert 1024 < task["callback_port"] <= 59999
        assert task["log_lines"] == len(task["log"])
        for level, text in task["log"]:
            assert isinstance(level, int) and isinstance(text, str) and text.strip()
        if task["kind"] == "shell":
            assert task["pid"] is None
        if task["error"] is not None:
            assert re.fullmatch(r"[A-Z][A-Z-]*-[0-9A-F]+ .+", task["error"])
    keys = range(len(truth["tasks"]))
    for key, name in truth["events"]:
        assert key in keys and name in EVENTS


@pytest.mark.parametrize("name", sorted(CAPTURES))
def test_committed_truth_follows_the_schema(name: str) -> None:
    path = DEFAULT_OUT / name
    truth_path = path.with_suffix(".truth.json")
    truth = json.loads(truth_path.read_text(encoding="utf-8"))
    validate_truth(truth)
    assert truth["scenario"] == CAPTURES[name].name
    assert len(truth["tasks"]) == len(CAPTURES[name].tasks)


def ports_announced_while_held(truth: dict[str, Any]) -> list[tuple[int, int]]:
    """(holder, task) pairs where a task announced a callback port its controller had
    registered for another task still live. §2: a port is held from its bind (before the
    command connection) until the callback connection closes, or until the task ends
    without one; bind_free_port skips the held ones (§7.2: unique among live tasks)."""
    tasks, events = truth["tasks"], [tuple(e) for e in truth["events"]]
    accepted = {key for key, name in events if name == "callback_closed"}
    held: dict[tuple[str, int], int] = {}  # (controller, port) → holding task
    found = []
    for key, name in events:
        place = (tasks[key]["controller"], tasks[key]["callback_port"])
        if name == "cmd_connected":
            if place in held:
                found.append((held[place], key))
            held[place] = key
        released = "callback_closed" if key in accepted else "cmd_closed"
        if name == released and held.get(place) == key:
            del held[place]
    return found


@pytest.mark.parametrize("name", sorted(CAPTURES))
def test_committed_captures_never_give_a_held_port_to_another_task(name: str) -> None:
    truth = json.loads((DEFAULT_OUT / name).with_suffix(".truth.json").read_text())
    assert ports_announced_while_held(truth) == []


PORT_COMES_BACK = Scenario(
    name="port_comes_back",
    description="A's port is free once its callback closes, although its command channel"
    " lingers; B takes it, and C, starting while B runs, must not.",
    tasks=(
        TaskSpec(kind="shell", delays=Delays(spawn=0.02, callback=0.02, step=0.05, close=0.6)),
        TaskSpec(steps=3, start_at=0.3, delays=Delays(spawn=0.02, callback=0.02, step=0.4)),
        TaskSpec(kind="shell", start_at=1.0, delays=Delays(step=0.05)),
    ),
    remotes=(("127.0.0.151", 4455),),
    controllers=("127.0.0.152",),
)


def test_a_callback_port_goes_to_one_live_task_at_a_time() -> None:
    truth = emulator.run_scenario(PORT_COMES_BACK, timeout=60).truth()
    assert [t["callback_port"] for t in truth["tasks"]] == [59999, 59999, 59998]
    assert ports_announced_while_held(truth) == []


def test_twenty_preset_is_ready_for_the_task_table_check() -> None:
    assert len(emulator.TWENTY.tasks) == 20
    failures = {t.failure for t in emulator.TWENTY.tasks} - {None}
    assert "callback_dropped" not in failures  # no nftables needed in that test
