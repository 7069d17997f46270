"""Crafted JobScheduler remote-task captures for what a real TCP stack will not do on demand.

Each scenario models the two TCP connections of a remote task (PROTOCOL.md §1, §2) segment by
segment, with both sides' sequence numbers and one clock, so a capture can show reordering,
duplicates, one-byte segments, gaps, sequence wrap-around, truncation and the other edge cases
of issue 3, item 3. Every protocol byte comes from `jsencode` (written from the spec, not from
jsdissect's decoders).

The ground truth is derived from what the written capture actually contains, by the DESIGN.md
rules ("Exact times", "What fills a row", "Status"): a byte's time is the first captured packet
that carries it, a message counts only when all its bytes were captured, retransmitted copies
change nothing. Because the builder knows every byte's place in its stream, those times are
exact to the microsecond.

Run `python tests/pathological.py OUTDIR` to write every capture with its `*.truth.json`.
"""

from __future__ import annotations

import json
import random
import sys
import zlib
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from decimal import Decimal
from pathlib import Path
from typing import Any, Literal

import jsencode as js
from scapy.layers.inet import IP, TCP
from scapy.layers.inet6 import IPv6
from scapy.layers.l2 import CookedLinuxV2, Dot1AD, Dot1Q, Ether
from scapy.packet import Packet, Raw
from scapy.plist import PacketList
from scapy.utils import PcapNgWriter, PcapWriter

Side = Literal["client", "server"]
CLIENT: Side = "client"
SERVER: Side = "server"

US = 1
MS = 1_000 * US
S = 1_000 * MS

# 2026-03-02T09:15:00Z: every scenario starts here, so the files are byte-for-byte repeatable.
BASE_TIME_US = 1_772_442_900 * S

# DESIGN "Exact times": the columns the truth pins per task, in table order.
TIME_COLUMNS = (
    "cmd_syn",
    "cmd_established",
    "start_sent",
    "start_answered",
    "callback_syn",
    "callback_established",
    "begin_sent",
    "begin_answered",
    "release_answered",
    "callback_closed",
    "close_sent",
    "close_answered",
)

DELAYED_ACK_US = 40 * MS  # Linux delayed-ACK timer: a silent receiver ACKs after this
MSS = 1448
SEQ_MOD = 1 << 32


def other(side: Side) -> Side:
    return SERVER if side == CLIENT else CLIENT


def iso_ms(t_us: int) -> str:
    """The answer `time` attribute (§3.4): UTC with milliseconds."""
    dt = datetime.fromtimestamp(t_us // S, tz=timezone.utc)
    return dt.strftime("%Y-%m-%dT%H:%M:%S") + f".{(t_us % S) // MS:03d}Z"


# --- segments, clock, connections -----------------------------------------------------------


@dataclass
class Seg:
    """One TCP segment as the capture shows it (time in µs since the epoch)."""

    t: int
    conv: Conversation
    sender: Side
    flags: str
    seq: int
    ack: int
    payload: bytes = b""
    offset: int = 0  # stream offset of payload[0] (bytes after the SYN)


@dataclass
class SendPlan:
    """How one message goes on the wire: its segmentation and what the capture makes of it.

    `sizes` are segment lengths (the last one takes the rest); `one_byte` splits every byte;
    `order` is the emission order of the segments (indices); `duplicates` are re-sent after
    `retransmit_us` (retransmissions, same bytes); `lost` are sent but not captured.
    """

    sizes: tuple[int, ...] = ()
    one_byte: bool = False
    order: tuple[int, ...] = ()
    duplicates: tuple[int, ...] = ()
    lost: tuple[int, ...] = ()
    gap_us: int = 4 * US
    retransmit_us: int = 210 * MS

    def chunks(self, data: bytes) -> list[tuple[int, bytes]]:
        if self.one_byte:
            return [(i, data[i : i + 1]) for i in range(len(data))]
        sizes = list(self.sizes) or [MSS] * (len(data) // MSS + 1)
        out: list[tuple[int, bytes]] = []
        pos = 0
        for size in sizes:
            if pos >= len(data):
                break
            out.append((pos, data[pos : pos + size]))
            pos += size
        if pos < len(data):
            out.append((pos, data[pos:]))
        return out


class Capture:
    """The shared clock and every segment emitted, in emission (= capture) order."""

    def __init__(self, start_us: int = BASE_TIME_US) -> None:
        self.now = start_us
        self.segments: list[Seg] = []
        self.conversations: list[Conversation] = []

    def advance(self, us: int) -> None:
        self.now += us

    def emit(self, seg: Seg) -> None:
        self.segments.append(seg)


class Conversation:
    """One TCP connection with both sides' sequence state; `client` is the initiator."""

    def __init__(
        self,
        cap: Capture,
        name: str,
        client: tuple[str, int],
        server: tuple[str, int],
        client_isn: int,
        server_isn: int,
    ) -> None:
        self.cap = cap
        self.name = name
        self.addrs = {CLIENT: client, SERVER: server}
        self.isn = {CLIENT: client_isn, SERVER: server_isn}
        self.sent = {CLIENT: 0, SERVER: 0}
        self.fin = {CLIENT: False, SERVER: False}
        # Everything each side meant to send, lost segments included: the follow-stream oracle.
        self.stream = {CLIENT: bytearray(), SERVER: bytearray()}
        cap.conversations.append(self)

    def next_seq(self, side: Side) -> int:
        return (self.isn[side] + 1 + self.sent[side] + self.fin[side]) % SEQ_MOD

    def _seg(self, side: Side, flags: str, payload: bytes = b"", offset: int = 0) -> Seg:
        seq = (self.isn[side] + 1 + offset) % SEQ_MOD if payload else self.next_seq(side)
        # The peer received everything sent so far, captured or not.
        ack = self.next_seq(other(side)) if "A" in flags else 0
        return Seg(self.cap.now, self, side, flags, seq, ack, payload, offset)

    def handshake(
        self,
        syn_retransmits: Iterable[int] = (),
        answer: Literal["synack", "rst", "none"] = "synack",
        answer_us: int = 250 * US,
        ack_us: int = 40 * US,
        synack_lost: int = 0,
        ack_captured: bool = True,
    ) -> None:
        """SYN (plus retransmissions after the given delays), then SYN-ACK+ACK, RST or silence.

        `synack_lost`: SYN-ACKs that never reached the client, which therefore sends its SYN
        again 1 s later; `ack_captured=False`: the handshake's ACK is missing from the capture.
        """
        self.syn()
        for delay in syn_retransmits:
            self.cap.advance(delay)
            self.syn()
        if answer == "none":
            return
        self.cap.advance(answer_us)
        synack_ack = (self.isn[CLIENT] + 1) % SEQ_MOD
        if answer == "rst":
            self.cap.emit(Seg(self.cap.now, self, SERVER, "RA", 0, synack_ack))
            return
        for _ in range(synack_lost):
            self.cap.emit(Seg(self.cap.now, self, SERVER, "SA", self.isn[SERVER], synack_ack))
            self.cap.advance(1 * S)
            self.syn()
            self.cap.advance(answer_us)
        self.cap.emit(Seg(self.cap.now, self, SERVER, "SA", self.isn[SERVER], synack_ack))
        self.cap.advance(ack_us)
        if ack_captured:
            self.cap.emit(self._seg(CLIENT, "A"))

    def syn(self) -> None:
        """A SYN; every retransmission carries the same ISN."""
        self.cap.emit(Seg(self.cap.now, self, CLIENT, "S", self.isn[CLIENT], 0))

    def send(self, side: Side, data: bytes, plan: SendPlan | None = None) -> tuple[int, int]:
        """Send `data` from `side`; returns its stream offsets [start, end)."""
        plan = plan or SendPlan()
        start = self.sent[side]
        chunks = plan.chunks(data)
        order = plan.order or tuple(range(len(chunks)))
        segs: dict[int, Seg] = {}
        for n, index in enumerate(order):
            if n:
                self.cap.advance(plan.gap_us)
            rel, piece = chunks[index]
            flags = "PA" if index == len(chunks) - 1 else "A"
            seg = self._seg(side, flags, piece, start + rel)
            segs[index] = seg
            if index not in plan.lost:
                self.cap.emit(seg)
        self.stream[side] += data
        self.sent[side] += len(data)
        for index in plan.duplicates:
            self.cap.advance(plan.retransmit_us)
            copy = segs[index]
            self.cap.emit(
                Seg(
                    self.cap.now,
                    self,
                    side,
                    copy.flags,
                    copy.seq,
                    copy.ack,
                    copy.payload,
                    copy.offset,
                )
            )
        return start, start + len(data)

    def ack(self, side: Side) -> None:
        self.cap.emit(self._seg(side, "A"))

    def fin_(self, side: Side) -> None:
        self.cap.emit(self._seg(side, "FA"))
        self.fin[side] = True

    def rst(self, side: Side) -> None:
        self.cap.emit(self._seg(side, "RA"))


# --- the task: CMD connection + callback connection -----------------------------------------


@dataclass
class Message:
    """A protocol message at stream offsets [start, end) of one side, and what it tells."""

    label: str
    conv: Conversation
    side: Side
    start: int
    end: int
    effects: dict[str, Any] = field(default_factory=dict)


@dataclass
class TaskSpec:
    """One remote task as the scenario wants it (defaults: a plain C++ shell task)."""

    kind: Literal["shell", "api"] = "shell"
    flavour: Literal["cpp", "scala"] = "cpp"
    controller: str = "10.1.0.10"
    remote: str = "10.1.0.20"
    remote_port: int = 4455
    callback_src: str | None = None  # address translation: the callback comes from here
    callback_dst: str | None = None  # address translation: the callback goes to here
    callback_port: int = 59999
    cmd_port: int = 40112
    callback_src_port: int = 51234
    process_id: str = "84217301"
    pid: int | None = None
    job: str = "/folder/job_a"
    task_id: int = 4711
    steps: int = 3  # API jobs; shell jobs always have one step
    exit_code: int = 0
    signal: int | None = None
    stdout: tuple[str, ...] = ("hello from the remote host", "second line")
    big_log: str | None = None  # one extra long log call (label "log_big"), for gaps/snaplen
    cb_keepalive: bool = False  # a `K` keep-alive from T inside a step (§8)
    keepalive_spaces: int = 0  # CMD keep-alive spaces during the (then long) step (§3.7)
    space_with_close: bool = False  # the last space shares the close command's segment
    callback_mode: Literal["ok", "refused", "unanswered", "syn_only"] = "ok"
    callback_syn_retransmits: tuple[int, ...] = ()
    callback_synack_lost: int = 0
    cmd_syn_retransmits: tuple[int, ...] = ()
    cmd_handshake_ack_captured: bool = True
    callback_before_answer: bool = False
    plans: dict[str, SendPlan] = field(default_factory=dict)
    isns: tuple[int, int, int, int] | None = None  # cmd client/server, callback client/server


class Task:
    """Plays one task on a Capture: PROTOCOL.md §1 diagram, §3.6 and §6.1, in wire order."""

    def __init__(self, cap: Capture, spec: TaskSpec, rng: random.Random) -> None:
        self.cap = cap
        self.spec = spec
        self.messages: list[Message] = []
        isns = spec.isns or tuple(rng.getrandbits(32) for _ in range(4))
        self.cmd = Conversation(
            cap,
            f"cmd:{spec.process_id}",
            (spec.controller, spec.cmd_port),
            (spec.remote, spec.remote_port),
            isns[0],
            isns[1],
        )
        self.cb = Conversation(
            cap,
            f"callback:{spec.process_id}",
            (spec.callback_src or spec.remote, spec.callback_src_port),
            (spec.callback_dst or spec.controller, spec.callback_port),
            isns[2],
            isns[3],
        )
        self.rmis = (rng.getrandbits(31) << 32) | (0x40000001 if spec.flavour == "scala" else 1)
        self.objects = js.BeginObjects(*[(rng.getrandbits(31) << 32) | k for k in range(1, 5)])
        self.dispids: set[tuple[int, str]] = set()  # C++ T resolves each name once per proxy (§6.5)
        self.log_count = 0
        self.start_time = 0

    # -- plumbing

    def send(self, conv: Conversation, side: Side, data: bytes, label: str, **effects: Any) -> None:
        start, end = conv.send(side, data, self.spec.plans.get(label))
        self.messages.append(Message(label, conv, side, start, end, effects))

    def wait(self, conv: Conversation, receiver: Side, us: int) -> None:
        """Idle `us`; a receiver that stays silent that long ACKs after the delayed-ACK timer."""
        if us > DELAYED_ACK_US:
            self.cap.advance(DELAYED_ACK_US)
            conv.ack(receiver)
            us -= DELAYED_ACK_US
        self.cap.advance(us)

    def call(
        self,
        label: str,
        request: bytes,
        answer: bytes,
        work_us: int,
        nested: Callable[[], None] | None = None,
        answer_effects: dict[str, Any] | None = None,
        **effects: Any,
    ) -> None:
        """C calls T (callback conversation: C is the server side); T answers after work."""
        self.send(self.cb, SERVER, request, label, **effects)
        if nested:
            self.cap.advance(300 * US)
            nested()
        self.wait(self.cb, CLIENT, work_us)
        self.send(self.cb, CLIENT, answer, label + "_answer", **(answer_effects or {}))
        self.cap.advance(120 * US)

    def callback(self, label: str, request: bytes, answer: bytes, **effects: Any) -> None:
        """T calls back into C (nested inside a call of C, §6.5); C answers at once."""
        self.send(self.cb, CLIENT, request, label, **effects)
        self.cap.advance(90 * US)
        self.send(self.cb, SERVER, answer, label + "_answer")
        self.cap.advance(150 * US)

    def resolve(self, obj: int, name: str, dispid: int) -> None:
        """C++ T asks a DISPID once per object; Scala hard-codes the few it uses (§6.8)."""
        hard_coded = {"log", "Params_xml"}
        if self.spec.flavour == "scala" and name in hard_coded:
            return
        if (obj, name) in self.dispids:
            return
        self.dispids.add((obj, name))
        self.callback(f"getids_{name}", js.get_ids_of_names(obj, name), js.answer_dispids(dispid))

    def log(self, level: int, text: str, label: str | None = None) -> None:
        """spooler_log.log(level, text), DISPID 14 (§6.5): text goes first on the wire."""
        args = [js.V(js.VT_I4, level), js.bstr(text)]
        self.log_call("log", 14, args, level, text, label)

    def info(self, text: str) -> None:
        """spooler_log.info(text) from C++ job code: resolved by name, DISPID 0 (§6.5)."""
        self.log_call("info", 0, [js.bstr(text)], 0, text, None)

    def log_call(
        self, name: str, dispid: int, args: list[js.V], level: int, text: str, label: str | None
    ) -> None:
        log_obj = self.objects.spooler_log
        self.resolve(log_obj, name, dispid)
        lines = [(level, line) for line in text.split("\n") if line.strip()]
        self.log_count += 1
        request = js.invoke(log_obj, dispid, js.METHOD, args)
        answer = js.answer_value(js.V(js.VT_EMPTY))
        self.callback(label or f"log{self.log_count}", request, answer, log=lines)

    # -- the two connections

    def run(self) -> Task:
        spec = self.spec
        self.cmd.handshake(spec.cmd_syn_retransmits, ack_captured=spec.cmd_handshake_ack_captured)
        self.cap.advance(180 * US)
        kind = "process" if spec.kind == "shell" else None
        self.start_time = self.cap.now
        self.send(
            self.cmd,
            CLIENT,
            js.start_remote_task(spec.callback_port, kind),
            "start",
            kind=spec.kind,
        )
        # Early in a connection Linux ACKs at once (quick-ACK mode), not after 40 ms.
        self.cap.advance(30 * US)
        self.cmd.ack(SERVER)
        # A thread starts quickly; a task process (API jobs) takes a while (§3.6.1).
        spawn_us = 28 * MS if spec.kind == "shell" else 160 * MS
        if spec.callback_before_answer:
            self.cap.advance(spawn_us // 2)
            self.connect_callback()
            self.call("create_instance", js.create_instance(), self.create_answer(), 700 * US)
            self.cap.advance(spawn_us // 2)
            self.process_answer()
        else:
            self.cap.advance(spawn_us)
            self.process_answer()
            self.cap.advance(6 * MS if spec.kind == "shell" else 140 * MS)
            self.connect_callback()
        if spec.callback_mode == "syn_only":
            self.cap.advance(30 * S)
            self.send(self.cmd, CLIENT, b" ", "keepalive")
            return self
        if spec.callback_mode in ("refused", "unanswered"):
            self.failed_callback()
            return self
        if not spec.callback_before_answer:
            self.call("create_instance", js.create_instance(), self.create_answer(), 700 * US)
        self.session()
        self.close_callback()
        self.close_task(close_us=310 * MS)
        return self

    def process_answer(self) -> None:
        spec = self.spec
        pid = spec.pid if spec.kind == "api" else None
        answer = js.process_answer(iso_ms(self.cap.now), spec.process_id, pid)
        self.send(self.cmd, SERVER, answer, "start_answer", process_id=spec.process_id, pid=pid)
        self.cap.advance(30 * US)
        self.cmd.ack(CLIENT)

    def connect_callback(self) -> None:
        spec = self.spec
        answer = {"refused": "rst", "unanswered": "none", "syn_only": "none"}.get(
            spec.callback_mode, "synack"
        )
        retransmits = spec.callback_syn_retransmits
        if spec.callback_mode == "unanswered" and not retransmits:
            # Linux backoff; the sixth retransmission (+63 s) comes after C's 60 s timeout.
            retransmits = (1 * S, 2 * S, 4 * S, 8 * S, 16 * S)
        # Seen at the controller: the SYN-ACK leaves at once, T's ACK needs a round trip.
        self.cb.handshake(
            retransmits,
            answer,
            answer_us=60 * US,
            ack_us=310 * US,
            synack_lost=spec.callback_synack_lost,
        )
        self.cap.advance(90 * US)

    def failed_callback(self) -> None:
        """No callback: C gives up 60 s after the start (Z-REMOTE-118), still sends close (§9)."""
        first_syn = next(seg.t for seg in self.cap.segments if seg.conv is self.cb)
        self.cap.now = max(self.cap.now, self.start_time + 60 * S)
        if self.spec.callback_mode == "refused":
            self.close_task(close_us=150 * MS)  # T already failed: R answers at once
            return

        def last_syn() -> None:
            self.cap.now = max(self.cap.now, first_syn + 63 * S)
            self.cb.syn()

        # R answers once T ended, and T's connect gives up only ~127 s after its first SYN.
        self.close_task(close_us=first_syn + 127 * S - self.cap.now, during=last_syn)

    def create_answer(self) -> bytes:
        if self.spec.flavour == "scala":
            title = "RemoteModuleInstanceServer"
        else:
            title = "sos::scheduler::Com_remote_module_instance_server"
        return js.answer_create_instance(js.ObjRef(self.rmis, True, title))

    def session(self) -> None:
        spec = self.spec
        language = "shell" if spec.kind == "shell" else "java"
        params = [
            f"language={language}",
            "com_class=",
            "filename=",
            "java_class=" + ("" if spec.kind == "shell" else "com.example.JobA"),
            "java_options=",
            "java_class_path=",
            'script=<source><source_part linenr="1">echo hello</source_part></source>',
            f"job={spec.job}",
            f"task_id={spec.task_id}",
            "environment=<environment/>",
        ]
        construct_answer = js.V(js.VT_EMPTY) if spec.flavour == "scala" else js.V(js.VT_BOOL, True)
        self.call(
            "construct",
            js.call(self.rmis, "construct", js.construct_args(params)),
            js.answer_value(construct_answer),
            2 * MS,
            job=spec.job,
            task_id=spec.task_id,
        )
        self.call(
            "begin",
            js.call(self.rmis, "begin", self.objects.args()),
            js.answer_value(js.V(js.VT_BOOL, True)),
            45 * MS,
            nested=self.read_params if spec.kind == "shell" else None,
        )
        if spec.kind == "shell":
            self.shell_step()
        else:
            self.api_run()
        self.release()

    def read_params(self) -> None:
        """Shell tasks read spooler_task.Params_xml (DISPID 35) for the environment (§6.5)."""
        task_obj = self.objects.spooler_task
        self.resolve(task_obj, "Params_xml", 35)
        value = js.bstr('<?xml version="1.0" encoding="ISO-8859-1"?><sos.spooler.variable_set/>')
        self.callback("params_xml", js.invoke(task_obj, 35, js.PROPERTYGET), js.answer_value(value))

    def shell_step(self) -> None:
        spec = self.spec
        scala = spec.flavour == "scala"
        result = js.process_result(
            spec.exit_code,
            success=spec.exit_code == 0,
            signal=None if scala else spec.signal,
            state_text=(spec.stdout[0] if spec.stdout else "")[:100],
            scala=scala,
        )
        signal = None if scala else spec.signal
        self.call(
            "step",
            js.call(self.rmis, "step"),
            js.answer_value(js.bstr(result)),
            9 * MS,
            nested=self.step_work,
            answer_effects={"exit_code": spec.exit_code, "signal": signal},
            step=True,
        )

    def step_work(self) -> None:
        """What T does inside a step: keep-alives, forwarded stdout (first poll after 1 s)."""
        spec = self.spec
        # The step runs a while: T's delayed ACK of the call comes first (no retransmission).
        self.wait(self.cb, CLIENT, DELAYED_ACK_US + 1 * MS)
        for _ in range(spec.keepalive_spaces):
            self.cap.advance(30 * S)
            self.send(self.cmd, CLIENT, b" ", "keepalive")
            self.wait(self.cmd, SERVER, DELAYED_ACK_US + MS)
        if spec.cb_keepalive:
            self.cap.advance(400 * MS)
            self.callback("keep_alive", js.keep_alive(), js.answer_empty())
        self.cap.advance(1 * S)
        if spec.stdout:
            prefixed = "\n".join(f"[stdout] {line}" for line in spec.stdout)
            self.log(0, prefixed if spec.flavour == "cpp" else "\n".join(spec.stdout))
        if spec.big_log:
            self.log(0, spec.big_log, label="log_big")

    def api_run(self) -> None:
        spec = self.spec
        true, empty = js.V(js.VT_BOOL, True), js.V(js.VT_EMPTY)
        self.call(
            "call_open",
            js.call(self.rmis, "call", [js.bstr("spooler_open()Z")]),
            js.answer_value(true),
            3 * MS,
        )
        for n in range(1, spec.steps + 1):
            last = n == spec.steps

            def work(n: int = n, last: bool = last) -> None:
                if n == 2 and self.spec.cb_keepalive:
                    self.cap.advance(200 * MS)
                    self.callback("keep_alive", js.keep_alive(), js.answer_empty())
                line = f"step {n} of {self.spec.steps}"
                if self.spec.flavour == "cpp":
                    self.info(line)
                else:
                    self.log(0, line)  # Scala's spooler_log proxy always calls `log` (§6.5)
                if n == 2 and self.spec.big_log:
                    self.log(1, self.spec.big_log, label="log_big")
                if last:
                    self.put_exit_code()

            self.call(
                f"step{n}",
                js.call(self.rmis, "step"),
                js.answer_value(js.V(js.VT_BOOL, not last)),
                180 * MS,
                nested=work,
                step=True,
            )
        self.call("end", js.call(self.rmis, "end", [true]), js.answer_value(empty), 4 * MS)
        for method in ("spooler_on_success()V", "spooler_exit()V"):
            self.call(
                "call_" + method.split("(")[0],
                js.call(self.rmis, "call", [js.bstr(method)]),
                js.answer_value(empty),
                2 * MS,
            )

    def put_exit_code(self) -> None:
        """spooler_task.exit_code = n: PROPERTYPUT on DISPID 30 (§6.5, §6.7)."""
        task_obj = self.objects.spooler_task
        self.resolve(task_obj, "exit_code", 30)
        put = js.property_put(task_obj, 30, js.V(js.VT_I4, self.spec.exit_code))
        answer = js.answer_value(js.V(js.VT_EMPTY))
        self.callback("exit_code_put", put, answer, exit_code=self.spec.exit_code)

    def release(self) -> None:
        def nested_releases() -> None:
            # C++ T drops its proxies of C's objects inside C's final Release (§6.5).
            refs = self.objects.refs()
            for ref in reversed(refs):
                self.callback(f"release_{ref.id:x}", js.release(ref.id), js.answer_empty())

        cpp = self.spec.flavour == "cpp"
        self.call(
            "release",
            js.release(self.rmis),
            js.answer_empty(),
            1 * MS,
            nested=nested_releases if cpp else None,
        )

    def close_callback(self) -> None:
        """C++ T ends on EOF after C's shutdown; Scala T closes itself after the answer (§6.1)."""
        first, second = (CLIENT, SERVER) if self.spec.flavour == "scala" else (SERVER, CLIENT)
        self.cap.advance(200 * US)
        self.cb.fin_(first)
        self.cap.advance(900 * US)
        self.cb.fin_(second)
        self.cap.advance(280 * US)
        self.cb.ack(first)

    def close_task(self, close_us: int, during: Callable[[], None] | None = None) -> None:
        """remote_task.close, its deferred answer once T ended (§3.6.3), then C closes."""
        spec = self.spec
        self.cap.advance(2 * MS)
        answer_at = self.cap.now + close_us
        close = js.remote_task_close(spec.process_id)
        if spec.space_with_close:
            # A keep-alive space and the close leave in one segment; the close starts at `<`.
            start, end = self.cmd.send(CLIENT, b" " + close, spec.plans.get("close"))
            self.messages.append(
                Message("close", self.cmd, CLIENT, start + 1, end, {"process_id": spec.process_id})
            )
        else:
            self.send(self.cmd, CLIENT, close, "close", process_id=spec.process_id)
        self.cap.advance(DELAYED_ACK_US)
        self.cmd.ack(SERVER)
        if during:
            during()
        self.cap.now = max(self.cap.now + 1 * MS, answer_at)
        self.send(self.cmd, SERVER, js.ok_answer(iso_ms(self.cap.now)), "close_answer")
        self.cap.advance(300 * US)
        self.cmd.fin_(CLIENT)
        self.cap.advance(150 * US)
        self.cmd.fin_(SERVER)
        self.cap.advance(40 * US)
        self.cmd.ack(CLIENT)
        self.cap.advance(5 * MS)

    def message(self, label: str) -> Message:
        return next(m for m in self.messages if m.label == label)


# --- what the capture shows: byte times and the DESIGN rules --------------------------------


class View:
    """The captured segments (window and snaplen applied) and the byte-time rules on them."""

    def __init__(self, frames: list[tuple[Seg, int]]) -> None:
        self.frames = frames  # (segment, number of its payload bytes that were captured)
        self.first: dict[tuple[int, Side], dict[int, int]] = {}
        for seg, kept in frames:
            times = self.first.setdefault((id(seg.conv), seg.sender), {})
            for offset in range(seg.offset, seg.offset + kept):
                times.setdefault(offset, seg.t)  # the first copy wins

    def segs(self, conv: Conversation) -> list[Seg]:
        return [seg for seg, _ in self.frames if seg.conv is conv]

    def sent(self, msg: Message) -> int | None:
        return self.first.get((id(msg.conv), msg.side), {}).get(msg.start)

    def complete(self, msg: Message) -> int | None:
        """When the last missing byte arrived; None when some byte was never captured."""
        times = self.first.get((id(msg.conv), msg.side), {})
        got = [times.get(o) for o in range(msg.start, msg.end)]
        return None if None in got else max(got)  # type: ignore[type-var]

    def syn(self, conv: Conversation) -> int | None:
        return next((s.t for s in self.segs(conv) if s.flags == "S"), None)

    def syn_count(self, conv: Conversation) -> int:
        return sum(s.flags == "S" for s in self.segs(conv))

    def established(self, conv: Conversation) -> int | None:
        segs = self.segs(conv)
        synack = next((s for s in segs if s.flags == "SA"), None)
        if synack is None:
            return None
        after = segs[next(i for i, s in enumerate(segs) if s is synack) + 1 :]
        want = (synack.seq + 1) % SEQ_MOD
        hit = next((s for s in after if s.sender == CLIENT and s.ack == want), None)
        return hit.t if hit else synack.t

    def refused(self, conv: Conversation) -> bool:
        for s in self.segs(conv):
            if s.flags == "SA":
                return False
            if "R" in s.flags and s.sender == SERVER:
                return True
        return False

    def closed(self, conv: Conversation) -> int | None:
        return next((s.t for s in self.segs(conv) if "F" in s.flags or "R" in s.flags), None)

    def seen(self, conv: Conversation) -> bool:
        return any(s.conv is conv for s, _ in self.frames)


def host_port(ip: str, port: int) -> str:
    return f"[{ip}]:{port}" if ":" in ip else f"{ip}:{port}"


def task_rows(task: Task, view: View) -> list[dict[str, Any]]:
    """The table rows this task gives in the capture (DESIGN "What fills a row")."""
    start = next(m for m in task.messages if m.label == "start")
    if view.complete(start) is not None:
        return [row(task, view, use_cmd=True, use_cb=view.seen(task.cb))]
    # Start command not captured: a callback connection and a close seen from the middle
    # cannot be tied together (nothing on the wire links them), so each is its own row.
    rows = []
    if view.seen(task.cb):
        rows.append(row(task, view, use_cmd=False, use_cb=True))
    closes = [m for m in task.messages if m.label == "close" and view.complete(m) is not None]
    if closes:
        rows.append(row(task, view, use_cmd=True, use_cb=False))
    return rows


def row(task: Task, view: View, use_cmd: bool, use_cb: bool) -> dict[str, Any]:
    spec = task.spec
    cmd, cb = task.cmd, task.cb
    used = [m for m in task.messages if (m.conv is cmd and use_cmd) or (m.conv is cb and use_cb)]
    done = sorted(
        ((view.complete(m), i, m) for i, m in enumerate(used) if view.complete(m) is not None),
        key=lambda x: (x[0], x[1]),
    )
    facts: dict[str, Any] = {}
    log: list[list[Any]] = []
    steps = 0
    for _, _, m in done:
        steps += bool(m.effects.get("step"))
        log += [[level, text] for level, text in m.effects.get("log", [])]
        facts.update({k: v for k, v in m.effects.items() if k not in ("step", "log")})
    by_label = {m.label: m for m in used}

    def sent(label: str) -> int | None:
        return view.sent(by_label[label]) if label in by_label else None

    def answered(label: str) -> int | None:
        return view.complete(by_label[label]) if label in by_label else None

    start_seen = use_cmd and answered("start") is not None
    times = {
        "cmd_syn": view.syn(cmd) if use_cmd else None,
        "cmd_established": view.established(cmd) if use_cmd else None,
        "start_sent": sent("start"),
        "start_answered": answered("start_answer"),
        "callback_syn": view.syn(cb) if use_cb else None,
        "callback_established": view.established(cb) if use_cb else None,
        "begin_sent": sent("begin"),
        "begin_answered": answered("begin_answer"),
        "release_answered": answered("release_answer"),
        "callback_closed": view.closed(cb) if use_cb else None,
        "close_sent": sent("close"),
        "close_answered": answered("close_answer"),
    }
    cb_src = cb.addrs[CLIENT][0]
    cb_dst = cb.addrs[SERVER][0]
    translated = use_cb and start_seen and (cb_src != spec.remote or cb_dst != spec.controller)
    return {
        "process_id": facts.get("process_id"),
        "pid": facts.get("pid"),
        "kind": facts.get("kind") if start_seen else None,
        "flavour": spec.flavour,
        # DESIGN: a row without its command connection takes these from the callback's target.
        "controller": spec.controller if use_cmd else cb_dst,
        "remote": host_port(spec.remote, spec.remote_port) if use_cmd else None,
        "callback_port": spec.callback_port if start_seen or not use_cmd else None,
        "job": facts.get("job"),
        "task_id": facts.get("task_id"),
        "steps": steps if use_cb else None,
        "exit_code": facts.get("exit_code"),
        "signal": facts.get("signal"),
        "log_lines": len(log) if use_cb else None,
        "status": status(task, view, times, start_seen, use_cmd, use_cb),
        "error": None,
        "log": log,
        "times": times,
        "notes_contains": "address" if translated else None,
    }


def status(
    task: Task,
    view: View,
    times: dict[str, int | None],
    start_seen: bool,
    use_cmd: bool,
    use_cb: bool,
) -> str:
    """DESIGN "Status": the first rule that applies (no scenario starts with an error or kills)."""
    cb = task.cb
    if use_cb and view.refused(cb):
        return "callback-refused"
    synack_seen = any(s.flags == "SA" for s in view.segs(cb))
    if use_cb and view.syn_count(cb) > 1 and not synack_seen:
        return "callback-unanswered"
    cb_closed, released = times["callback_closed"], times["release_answered"]
    if cb_closed is not None and (released is None or cb_closed < released):
        return "aborted"
    cmd_closed = view.closed(task.cmd) if use_cmd else None
    answered = times["close_answered"]
    if cmd_closed is not None and (answered is None or cmd_closed < answered):
        return "aborted"
    if not start_seen:
        return "partial"
    if answered is not None:
        return "completed"
    return "running"


# --- link layers and files ------------------------------------------------------------------

Link = Literal["ether", "vlan", "qinq", "sll2"]
LINKTYPES = {"ether": 1, "vlan": 1, "qinq": 1, "sll2": 276}


def mac(ip: str) -> str:
    raw = zlib.crc32(ip.encode()).to_bytes(4, "big")
    return "02:00:" + ":".join(f"{b:02x}" for b in raw)


def ip_packet(seg: Seg, ident: int) -> Packet:
    (src, sport), (dst, dport) = seg.conv.addrs[seg.sender], seg.conv.addrs[other(seg.sender)]
    options = [("MSS", 1460), ("SAckOK", b""), ("WScale", 7)] if "S" in seg.flags else []
    tcp = TCP(
        sport=sport,
        dport=dport,
        seq=seg.seq,
        ack=seg.ack,
        flags=seg.flags,
        window=502 if "S" not in seg.flags else 64240,
        options=options,
    )
    ip: Packet = (
        IPv6(src=src, dst=dst, hlim=64)
        if ":" in src
        else IP(src=src, dst=dst, ttl=64, id=ident & 0xFFFF, flags="DF")
    )
    pkt = ip / tcp
    return pkt / Raw(seg.payload) if seg.payload else pkt


def frame(seg: Seg, link: Link, ident: int, local: set[str]) -> Packet:
    inner = ip_packet(seg, ident)
    src, dst = seg.conv.addrs[seg.sender][0], seg.conv.addrs[other(seg.sender)][0]
    if link == "sll2":
        proto = 0x86DD if ":" in src else 0x0800
        pkttype = 4 if src in local else 0  # PACKET_OUTGOING / PACKET_HOST, as on the controller
        addr = bytes.fromhex(mac(src).replace(":", "")) + b"\x00\x00"
        head = CookedLinuxV2(
            proto=proto, ifindex=2, lladdrtype=1, pkttype=pkttype, lladdrlen=6, src=addr
        )
        return head / inner
    eth = Ether(src=mac(src), dst=mac(dst))
    if link == "vlan":
        return eth / Dot1Q(vlan=120) / inner
    if link == "qinq":
        return eth / Dot1AD(vlan=300) / Dot1Q(vlan=120) / inner
    return eth / inner


@dataclass
class Scenario:
    """One crafted capture: the segments, how they are written, and which tasks they hold."""

    name: str
    description: str
    cap: Capture
    tasks: list[Task]
    link: Link = "ether"
    fmt: Literal["pcap", "pcapng"] = "pcap"
    snaplen: int | None = None
    nano: bool = False  # nanosecond pcap: stamps get a sub-µs part the truth truncates
    keep: tuple[int | None, int | None] = (None, None)  # capture window [from, to] in µs
    well_formed: bool = True  # every intended byte captured: tshark's follow must match

    @property
    def filename(self) -> str:
        return f"{self.name}.{self.fmt}"

    def captured(self) -> list[Seg]:
        lo, hi = self.keep
        return [
            s for s in self.cap.segments if (lo is None or s.t >= lo) and (hi is None or s.t <= hi)
        ]

    def packets(self) -> PacketList:
        """The capture as scapy packets with their exact timestamps (before any snaplen)."""
        local = {t.spec.controller for t in self.tasks} | {
            t.cb.addrs[SERVER][0] for t in self.tasks
        }
        out = []
        for n, seg in enumerate(self.captured(), start=1):
            pkt = frame(seg, self.link, n, local)
            pkt.time = Decimal(seg.t) / S
            out.append(pkt)
        return PacketList(out, name=self.name)

    def frames(self) -> list[tuple[Seg, bytes]]:
        return list(zip(self.captured(), map(bytes, self.packets()), strict=True))

    def view(self, frames: list[tuple[Seg, bytes]] | None = None) -> View:
        kept = []
        for seg, raw in self.frames() if frames is None else frames:
            caplen = min(len(raw), self.snaplen or len(raw))
            header = len(raw) - len(seg.payload)
            kept.append((seg, max(0, min(len(seg.payload), caplen - header))))
        return View(kept)

    def truth(self, frames: list[tuple[Seg, bytes]] | None = None) -> dict[str, Any]:
        view = self.view(frames)
        rows = [r for task in self.tasks for r in task_rows(task, view)]
        return {
            "scenario": self.name,
            "description": self.description,
            "tasks": rows,
            "events": events(rows),
        }

    def write(self, outdir: Path) -> tuple[Path, Path]:
        frames = self.frames()  # building the packets is the slow part: once per file
        path = outdir / self.filename
        write_frames(path, frames, self.link, self.fmt, self.snaplen, self.nano)
        truth = outdir / f"{self.name}.truth.json"
        truth.write_text(json.dumps(self.truth(frames), indent=1) + "\n")
        return path, truth


def task_key(r: dict[str, Any]) -> str:
    """process_id when the row has one, else the callback target it was seen on."""
    return r["process_id"] or f"callback:{r['controller']}:{r['callback_port']}"


def events(rows: list[dict[str, Any]]) -> list[list[str]]:
    """Every known time column of every row, in time order (ties: table column order)."""
    timed = [
        (t, TIME_COLUMNS.index(col), n, task_key(r), col)
        for n, r in enumerate(rows)
        for col, t in r["times"].items()
        if t is not None
    ]
    return [[key, col] for *_, key, col in sorted(timed)]


NANO_EXTRA = 417  # sub-microsecond part of every stamp in nanosecond files


def write_frames(
    path: Path,
    frames: list[tuple[Seg, bytes]],
    link: Link,
    fmt: str,
    snaplen: int | None,
    nano: bool,
) -> None:
    linktype = LINKTYPES[link]
    if fmt == "pcapng":
        writer: Any = PcapNgWriter(str(path))
        writer.linktype = linktype
    else:
        writer = PcapWriter(str(path), linktype=linktype, snaplen=snaplen or 262144, nano=nano)
    with writer:
        # write_packet() skips the file header that write() would add: write it first.
        writer.write_header(None)
        for seg, raw in frames:
            data = raw[:snaplen] if snaplen else raw
            if fmt == "pcapng":
                # Decimal keeps the µs exact: the writer multiplies by 10^6 and truncates.
                writer.write_packet(
                    data, sec=Decimal(seg.t) / S, caplen=len(data), wirelen=len(raw)
                )
                continue
            sec, frac = divmod(seg.t, S)
            usec = frac * 1000 + NANO_EXTRA if nano else frac
            writer.write_packet(data, sec=sec, usec=usec, caplen=len(data), wirelen=len(raw))


# --- the scenarios (each a perturbation knob) -----------------------------------------------

BIG_LOG = "\n".join(f"[stdout] line {n:04d} " + "x" * 48 for n in range(1, 41))


def build(
    name: str,
    description: str,
    specs: list[TaskSpec],
    seed: int,
    between_us: int = 1_500 * MS,
    **options: Any,
) -> Scenario:
    """Play the tasks one after the other on one clock and wrap them as a Scenario."""
    rng = random.Random(seed)
    cap = Capture()
    tasks = []
    for spec in specs:
        tasks.append(Task(cap, spec, rng).run())
        cap.advance(between_us)
    return Scenario(name, description, cap, tasks, **options)


def baseline_shell_cpp() -> Scenario:
    return build(
        "patho_baseline_shell_cpp",
        "Reference: one well-formed shell task, C++ task server, Ethernet pcap.",
        [TaskSpec(exit_code=3, stdout=("first", "second", "third"))],
        seed=1,
    )


def baseline_api_scala() -> Scenario:
    spec = TaskSpec(
        kind="api",
        flavour="scala",
        pid=31337,
        steps=3,
        exit_code=7,
        cb_keepalive=True,
        process_id="500012",
    )
    return build(
        "patho_baseline_api_scala",
        "Reference: one well-formed API task, Scala task server, K keep-alive, pcapng.",
        [spec],
        seed=2,
        fmt="pcapng",
    )


def out_of_order_and_duplicates() -> Scenario:
    plans = {
        "start": SendPlan(sizes=(40, 40), duplicates=(0,)),
        "start_answer": SendPlan(sizes=(60, 60), order=(0, 2, 1)),
        "begin": SendPlan(sizes=(200, 200), order=(1, 0, 2)),
        "begin_answer": SendPlan(sizes=(5, 5), order=(2, 1, 0), duplicates=(2,)),
        "release_answer": SendPlan(duplicates=(0,), retransmit_us=5 * MS),
        "close_answer": SendPlan(sizes=(50,), order=(1, 0), duplicates=(1,)),
    }
    return build(
        "patho_reorder_dup",
        "Out-of-order and duplicate segments on both connections. The process answer's middle "
        "segment comes last (start_answered is that middle segment); the begin call's first "
        "segment comes second (begin_sent is its time, not the earlier one); the begin answer's "
        "and the close answer's segments arrive last-first. The start command's first segment, "
        "the begin answer's tail, the release answer and the close answer's tail are "
        "retransmitted: copies change no time.",
        [TaskSpec(kind="api", pid=2211, steps=2, plans=plans, process_id="11020")],
        seed=3,
    )


def one_byte_segments() -> Scenario:
    plans = {
        "begin": SendPlan(one_byte=True, gap_us=2 * US),
        "start_answer": SendPlan(one_byte=True, gap_us=3 * US),
    }
    return build(
        "patho_one_byte_segments",
        "The begin frame (503 bytes) and the process answer each sent as one-byte segments.",
        [TaskSpec(plans=plans, process_id="77001")],
        seed=4,
    )


def gap_whole_frame() -> Scenario:
    spec = TaskSpec(
        kind="api", pid=4040, steps=3, process_id="30303", plans={"log2": SendPlan(lost=(0,))}
    )
    return build(
        "patho_gap_frame",
        "A lost segment on the callback channel: the whole log call of step 2 was not captured "
        "(its answer and the peer's ACKs were); its line is not counted.",
        [spec],
        seed=5,
        well_formed=False,
    )


def gap_mid_frame() -> Scenario:
    spec = TaskSpec(
        big_log=BIG_LOG,
        process_id="30304",
        plans={"log_big": SendPlan(sizes=(700, 700, 700), lost=(1,))},
    )
    return build(
        "patho_gap_midframe",
        "A lost segment inside a long log frame on the callback channel: the frame's header and "
        "tail were captured, its middle not; the frame's lines are not counted (incomplete "
        "message), decoding resumes at the next frame.",
        [spec],
        seed=6,
        well_formed=False,
    )


def sequence_wrap() -> Scenario:
    top = SEQ_MOD
    # ISNs a few bytes below 2^32: every direction wraps inside its first message.
    spec = TaskSpec(
        kind="api",
        pid=9911,
        steps=2,
        process_id="424242",
        isns=(top - 40, top - 60, top - 20, top - 30),
    )
    return build(
        "patho_seq_wrap",
        "Sequence numbers wrap around 2^32 in the first message of all four directions.",
        [spec],
        seed=7,
    )


def starts_before_callback() -> Scenario:
    scenario = build(
        "patho_starts_before_callback",
        "Capture starts after the start answer, before the callback SYN: the callback's row is "
        "partial (no start command), the command connection seen from the middle gives a "
        "second partial row with process_id from the close.",
        [TaskSpec(process_id="60601")],
        seed=8,
        well_formed=False,
    )
    task = scenario.tasks[0]
    scenario.keep = (first_time(scenario, task.cb), None)
    return scenario


def starts_mid_callback() -> Scenario:
    scenario = build(
        "patho_starts_mid_callback",
        "Capture starts right after the begin answer: both connections are seen from the "
        "middle (no SYN); the callback row is partial with job/task_id unknown, the close "
        "gives a second partial row.",
        [TaskSpec(stdout=(), exit_code=1, process_id="60602")],
        seed=9,
        well_formed=False,
    )
    task = scenario.tasks[0]
    begin_answer = task.message("begin_answer")
    scenario.keep = (last_time(scenario, begin_answer) + 1, None)
    return scenario


def ends_mid_task() -> Scenario:
    spec = TaskSpec(kind="api", pid=5150, steps=4, big_log=BIG_LOG, process_id="60603")
    scenario = build(
        "patho_ends_mid_task",
        "Capture ends inside step 2, after the first segment of a two-segment log frame: the "
        "task is running, the cut frame is not counted.",
        [spec],
        seed=10,
        well_formed=False,
    )
    first_piece = scenario.tasks[0].message("log_big")
    scenario.keep = (None, first_time_of(scenario, first_piece))
    return scenario


def ipv6() -> Scenario:
    spec = TaskSpec(
        flavour="scala",
        controller="2001:db8::10",
        remote="2001:db8::20",
        exit_code=0,
        process_id="700001",
    )
    return build(
        "patho_ipv6",
        "IPv6 addresses (Scala shell task), pcapng.",
        [spec],
        seed=11,
        fmt="pcapng",
    )


def vlan() -> Scenario:
    return build(
        "patho_vlan",
        "802.1Q VLAN-tagged Ethernet (VLAN 120), C++ API task.",
        [TaskSpec(kind="api", pid=888, steps=2, exit_code=0, process_id="700002")],
        seed=12,
        link="vlan",
    )


def qinq_nano() -> Scenario:
    return build(
        "patho_qinq_nano",
        "QinQ (802.1ad outer VLAN 300, 802.1Q inner VLAN 120) in a nanosecond pcap; every "
        "stamp has 417 ns past the microsecond, which the table truncates.",
        [TaskSpec(exit_code=0, process_id="700003")],
        seed=13,
        link="qinq",
        nano=True,
    )


def sll2() -> Scenario:
    return build(
        "patho_sll2",
        "Linux cooked capture v2 (SLL2, linktype 276), as `tcpdump -i any` writes it.",
        [TaskSpec(kind="api", pid=1201, steps=2, process_id="700004")],
        seed=14,
        link="sll2",
    )


def snaplen() -> Scenario:
    return build(
        "patho_snaplen",
        "Snaplen 1000: the two segments of one long log frame are truncated (caplen < len); "
        "that frame's lines are not counted, every other message fits.",
        [TaskSpec(big_log=BIG_LOG, process_id="700005")],
        seed=15,
        snaplen=1000,
        well_formed=False,
    )


def nat_source() -> Scenario:
    return build(
        "patho_nat_source",
        "Address translation on the remote's side: the callback comes from 192.0.2.20, not "
        "from the remote 10.1.0.20; it still goes to the controller's address and port. The "
        "shell step ended by signal 9 (exit_code 1, signal 9 in the process result).",
        [TaskSpec(callback_src="192.0.2.20", exit_code=1, signal=9, process_id="700006")],
        seed=16,
    )


def nat_destination() -> Scenario:
    return build(
        "patho_nat_destination",
        "Address translation on the controller's side: the command comes from 10.1.0.10, the "
        "callback from the remote goes to 10.1.0.11 (same port).",
        [TaskSpec(kind="api", pid=3003, steps=1, callback_dst="10.1.0.11", process_id="700007")],
        seed=17,
    )


def keepalive_spaces() -> Scenario:
    return build(
        "patho_keepalive_spaces",
        "CMD keep-alive: three single-space segments 30 s apart during the step, then one "
        "more space in the same segment as the close command (close_sent is that segment).",
        [TaskSpec(keepalive_spaces=3, space_with_close=True, process_id="700008")],
        seed=18,
    )


def callback_before_answer() -> Scenario:
    return build(
        "patho_callback_before_answer",
        "The callback connects, and CreateInstance is answered, before the process answer "
        "arrives on the command connection (§7.3).",
        [TaskSpec(kind="api", pid=4242, steps=1, callback_before_answer=True, process_id="700009")],
        seed=19,
    )


def callback_unanswered() -> Scenario:
    return build(
        "patho_callback_unanswered",
        "The callback SYN is retransmitted six times and never answered (firewall drop); the "
        "controller gives up after 60 s and closes the task.",
        [TaskSpec(callback_mode="unanswered", process_id="700010")],
        seed=20,
    )


def callback_refused() -> Scenario:
    return build(
        "patho_callback_refused",
        "The callback SYN is answered by RST; the controller gives up after 60 s and closes.",
        [TaskSpec(kind="api", pid=5005, callback_mode="refused", process_id="700011")],
        seed=21,
    )


def callback_syn_at_end() -> Scenario:
    return build(
        "patho_callback_syn_at_end",
        "One callback SYN, unanswered, and the capture ends 30 s later (a keep-alive space is "
        "the last packet): the task is still running.",
        [TaskSpec(callback_mode="syn_only", process_id="700012")],
        seed=22,
        between_us=0,
    )


def syn_retransmits() -> Scenario:
    spec = TaskSpec(
        cmd_syn_retransmits=(1 * S, 2 * S),
        cmd_handshake_ack_captured=False,
        callback_syn_retransmits=(1 * S,),
        callback_synack_lost=1,
        process_id="700013",
    )
    return build(
        "patho_syn_retransmits",
        "Handshake edge cases. The command SYN is retransmitted twice, and the handshake's ACK "
        "was not captured: cmd_established is the start command's packet. The callback SYN is "
        "retransmitted once, answered, sent again (its SYN-ACK was lost) and answered again: "
        "callback_syn is the first SYN, callback_established the ACK after both SYN-ACKs.",
        [spec],
        seed=23,
    )


def ends_after_synack() -> Scenario:
    scenario = build(
        "patho_ends_after_synack",
        "Capture ends at the callback's SYN-ACK (the client's ACK not captured): "
        "callback_established is the SYN-ACK's time; the task is running.",
        [TaskSpec(kind="api", pid=7117, steps=1, process_id="700014")],
        seed=25,
        well_formed=False,
    )
    callback = scenario.tasks[0].cb
    synack = next(s for s in scenario.cap.segments if s.conv is callback and s.flags == "SA")
    scenario.keep = (None, synack.t)
    return scenario


def callback_synack_not_captured() -> Scenario:
    scenario = build(
        "patho_callback_synack_not_captured",
        "The callback's SYN-ACK is missing from the capture (lost at the capture point), the "
        "task runs to its end: the callback was answered all the same (data flowed), so the "
        "task is completed, with callback_established empty.",
        [TaskSpec(process_id="700015")],
        seed=26,
    )
    callback = scenario.tasks[0].cb
    scenario.cap.segments = [
        s for s in scenario.cap.segments if not (s.conv is callback and s.flags == "SA")
    ]
    return scenario


def ends_before_callback() -> Scenario:
    scenario = build(
        "patho_ends_before_callback",
        "The capture ends after the start answer, before any packet of the callback: steps "
        "and log_lines are empty (their source was not captured), the task is running.",
        [TaskSpec(process_id="700016")],
        seed=27,
        well_formed=False,
    )
    callback = scenario.tasks[0].cb
    first = min(s.t for s in scenario.cap.segments if s.conv is callback)
    scenario.keep = (None, first - 1)
    return scenario


def port_reuse() -> Scenario:
    first = TaskSpec(process_id="800001", cmd_port=40120, callback_src_port=51300)
    second = TaskSpec(
        kind="api",
        pid=6006,
        steps=1,
        process_id="800002",
        cmd_port=40121,
        callback_src_port=51301,
        job="/folder/job_b",
        task_id=4712,
    )
    return build(
        "patho_port_reuse",
        "Two tasks in a row on the same callback port 59999; the second callback SYN comes "
        "under 3 s after the first callback closed.",
        [first, second],
        seed=24,
        between_us=1_100 * MS,
    )


SCENARIOS: tuple[Callable[[], Scenario], ...] = (
    baseline_shell_cpp,
    baseline_api_scala,
    out_of_order_and_duplicates,
    one_byte_segments,
    gap_whole_frame,
    gap_mid_frame,
    sequence_wrap,
    starts_before_callback,
    starts_mid_callback,
    ends_mid_task,
    ipv6,
    vlan,
    qinq_nano,
    sll2,
    snaplen,
    nat_source,
    nat_destination,
    keepalive_spaces,
    callback_before_answer,
    callback_unanswered,
    callback_refused,
    callback_syn_at_end,
    syn_retransmits,
    ends_after_synack,
    callback_synack_not_captured,
    ends_before_callback,
    port_reuse,
)


def first_time(scenario: Scenario, conv: Conversation) -> int:
    return next(s.t for s in scenario.cap.segments if s.conv is conv)


def msg_segs(scenario: Scenario, msg: Message) -> list[Seg]:
    return [
        s
        for s in scenario.cap.segments
        if s.conv is msg.conv
        and s.sender == msg.side
        and s.payload
        and s.offset < msg.end
        and s.offset + len(s.payload) > msg.start
    ]


def first_time_of(scenario: Scenario, msg: Message) -> int:
    return msg_segs(scenario, msg)[0].t


def last_time(scenario: Scenario, msg: Message) -> int:
    return msg_segs(scenario, msg)[-1].t


def build_all() -> list[Scenario]:
    return [make() for make in SCENARIOS]


def write_all(outdir: Path) -> list[Path]:
    """Write every pathological capture and its truth file; returns all paths written."""
    outdir.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    for scenario in build_all():
        written.extend(scenario.write(outdir))
    return written


if __name__ == "__main__":
    for path in write_all(Path(sys.argv[1] if len(sys.argv) > 1 else ".")):
        print(path)
