"""Small captures built packet by packet from `jsencode`: whole tasks of every kind
(shell, API with errors, start failed, callback refused, killed), heuristic pickup and
malformed traffic, each with what a decoder must find in it."""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path

import jsencode as js
from scapy.layers.inet import IP, TCP, UDP
from scapy.layers.l2 import Ether
from scapy.packet import Packet, Raw
from scapy.utils import wrpcap

T0 = 1_772_442_902_000_000  # 2026-03-02T09:15:02Z in µs
MS = 1_000
S = 1_000_000


class Capture:
    """One clock and the packets of every conversation, in capture order."""

    def __init__(self) -> None:
        self.now = T0
        self.packets: list[Packet] = []

    def advance(self, us: int) -> None:
        self.now += us

    def write(self, path: Path) -> Path:
        wrpcap(str(path), self.packets)
        return path


class Conv:
    """One TCP connection with both sides' sequence numbers; side 0 is the client."""

    def __init__(
        self, cap: Capture, client: tuple[str, int], server: tuple[str, int], isn: int
    ) -> None:
        self.cap = cap
        self.ends = (client, server)
        self.seq = [isn, isn + 100_000]
        self.payload_frames: list[int] = []

    def _packet(self, side: int, flags: str, payload: bytes = b"") -> None:
        (src, sport), (dst, dport) = self.ends[side], self.ends[1 - side]
        ack = self.seq[1 - side] if "A" in flags else 0
        pkt = (
            Ether()
            / IP(src=src, dst=dst)
            / TCP(sport=sport, dport=dport, flags=flags, seq=self.seq[side], ack=ack)
        )
        if payload:
            pkt = pkt / Raw(payload)
            self.payload_frames.append(len(self.cap.packets) + 1)
        pkt.time = Decimal(self.cap.now) / S
        self.cap.packets.append(pkt)
        self.cap.advance(100)

    def handshake(self) -> None:
        self._packet(0, "S")
        self.seq[0] += 1
        self._packet(1, "SA")
        self.seq[1] += 1
        self._packet(0, "A")

    def refused(self) -> None:
        """SYN answered by RST (nothing listens on the port)."""
        self._packet(0, "S")
        self.seq[0] += 1
        self._packet(1, "RA")

    def send(self, side: int, data: bytes, sizes: tuple[int, ...] = ()) -> None:
        """`data` in segments of `sizes` bytes (the rest in one more segment)."""
        pieces, pos = [], 0
        for size in sizes:
            pieces.append(data[pos : pos + size])
            pos += size
        if pos < len(data):
            pieces.append(data[pos:])
        for piece in pieces:
            self._packet(side, "PA", piece)
            self.seq[side] += len(piece)

    def lost(self, side: int, data: bytes) -> None:
        """`data` sent by `side` but not captured; the peer's ACK of it is."""
        self.seq[side] += len(data)
        self._packet(1 - side, "A")

    def resend(self, side: int, earlier: bytes, data: bytes = b"") -> None:
        """One segment that re-sends `earlier`, the last bytes `side` sent, and goes on
        with `data` (a retransmission that coalesces captured bytes with new ones)."""
        self.seq[side] -= len(earlier)
        self._packet(side, "PA", earlier + data)
        self.seq[side] += len(earlier) + len(data)

    def reordered(self, side: int, first: bytes, then: bytes) -> None:
        """`first` and `then` sent by `side` in two segments, the second captured first."""
        self.seq[side] += len(first)
        self._packet(side, "PA", then)
        self.seq[side] -= len(first)
        self._packet(side, "PA", first)
        self.seq[side] += len(first) + len(then)

    def fast_open(self, data: bytes) -> None:
        """The handshake with `data` on the SYN (TCP Fast Open), accepted with it."""
        self._packet(0, "S", data)
        self.seq[0] += 1 + len(data)
        self._packet(1, "SA")
        self.seq[1] += 1
        self._packet(0, "A")

    def close(self, first: int = 0) -> None:
        for side in (first, 1 - first):
            self._packet(side, "FA")
            self.seq[side] += 1
        self._packet(first, "A")


CONTROLLER_IP, REMOTE_IP = "127.0.0.21", "127.0.0.11"
C, T = 1, 0  # callback connection: the task server (client) connects to the controller
CLIENT, SERVER = 0, 1  # command connection: the controller is the client


@dataclass
class Expected:
    """What the plugin must show for one task of a crafted capture."""

    process_id: str | None
    callback_port: int
    status: str
    exit_code: int | None = None
    steps: int | None = None
    log_lines: int | None = None
    kind: str | None = None
    error: str | None = None
    convs: list[Conv] = field(default_factory=list)


def answer_time(cap: Capture) -> str:
    seconds, millis = (cap.now - T0) // S + 2, (cap.now // MS) % 1000
    return f"2026-03-02T09:15:{seconds:02d}.{millis:03d}Z"


def rmis_id(n: int) -> int:
    return (0x6B8B4567 << 32) | n


def shell_task(cap: Capture, while_calling_back: Callable[[], None] = lambda: None) -> Expected:
    """PROTOCOL §1 for a C++ shell task: start split in two segments, begin in three, the
    step answer and a keep-alive in one segment, a keep-alive space sharing the close's
    segment, a log callback resolved through GetIDsOfNames. `while_calling_back` adds other
    packets once the callback connection is up."""
    pid = "84217301"
    cmd = Conv(cap, (CONTROLLER_IP, 40000), (REMOTE_IP, 4455), isn=1000)
    cb = Conv(cap, (REMOTE_IP, 45000), (CONTROLLER_IP, 59999), isn=7000)
    cmd.handshake()
    cmd.send(CLIENT, js.start_remote_task(59999, kind="process"), sizes=(50,))
    cap.advance(20 * MS)
    cmd.send(SERVER, js.process_answer(answer_time(cap), pid))
    cb.handshake()
    while_calling_back()
    rmis = rmis_id(1)
    objects = js.BeginObjects(*[(0x327B23C6 << 32) | k for k in range(1, 5)])
    cb.send(C, js.create_instance())
    title = "sos::scheduler::Com_remote_module_instance_server"
    cb.send(T, js.answer_create_instance(js.ObjRef(rmis, True, title)))
    params = ["language=shell", "job=/folder/job_a", "task_id=4711"]
    cb.send(C, js.call(rmis, "construct", js.construct_args(params)))
    cb.send(T, js.answer_value(js.V(js.VT_BOOL, True)))
    cb.send(C, js.call(rmis, "begin", objects.args()), sizes=(100, 100))
    cb.send(T, js.answer_value(js.V(js.VT_BOOL, True)))
    cb.send(C, js.call(rmis, "step"))
    cb.send(T, js.get_ids_of_names(objects.spooler_log, "log"))
    cb.send(C, js.answer_dispids(14))
    text = "[stdout] hello\n[stdout] wörld\n  "
    log = js.invoke(objects.spooler_log, 14, js.METHOD, [js.V(js.VT_I4, 0), js.bstr(text)])
    cb.send(T, log)
    cb.send(C, js.answer_value(js.V(js.VT_EMPTY)))
    result = js.process_result(3, success=False, state_text="hello")
    cb.send(T, js.answer_value(js.bstr(result)) + js.keep_alive())
    cb.send(C, js.answer_empty())
    cb.send(C, js.release(rmis))
    cb.send(T, js.release(objects.spooler_log))
    cb.send(C, js.answer_empty())
    cb.send(T, js.answer_empty())
    cb.close(first=C)
    cmd.send(CLIENT, b" ")
    cmd.send(CLIENT, b" " + js.remote_task_close(pid))
    cap.advance(300 * MS)
    cmd.send(SERVER, js.ok_answer(answer_time(cap)))
    cmd.close()
    return Expected(
        pid, 59999, "completed", exit_code=3, steps=1, log_lines=2, kind="shell", convs=[cmd, cb]
    )


def api_task_with_errors(cap: Capture) -> Expected:
    """A Scala-style API task: log by hard-coded DISPID (Appendix A), a failed Invoke
    (HRESULT + EXCEPINFO), the exit code put (DISPID 30) and an `E` answer to `end`."""
    pid = "500001"
    cmd = Conv(cap, (CONTROLLER_IP, 40001), (REMOTE_IP, 4455), isn=2000)
    cb = Conv(cap, (REMOTE_IP, 45001), (CONTROLLER_IP, 59998), isn=8000)
    cmd.handshake()
    cmd.send(CLIENT, js.start_remote_task(59998))
    cap.advance(150 * MS)
    cmd.send(SERVER, js.process_answer(answer_time(cap), pid, pid=4242))
    cb.handshake()
    rmis = (0x2F5A1D7C << 32) | 0x40000001
    objects = js.BeginObjects(*[(0x11BBA8D5 << 32) | k for k in range(1, 5)])
    cb.send(C, js.create_instance())
    cb.send(T, js.answer_create_instance(js.ObjRef(rmis, True, "RemoteModuleInstanceServer")))
    cb.send(C, js.call(rmis, "construct", js.construct_args(["language=java"], features=0x0880)))
    cb.send(T, js.answer_value(js.V(js.VT_EMPTY)))
    cb.send(C, js.call(rmis, "begin", objects.args()))
    cb.send(T, js.answer_value(js.V(js.VT_BOOL, True)))
    cb.send(C, js.call(rmis, "call", [js.bstr("spooler_open()Z")]))
    cb.send(T, js.answer_value(js.V(js.VT_BOOL, True)))
    cb.send(C, js.call(rmis, "step"))
    log = js.invoke(objects.spooler_log, 14, js.METHOD, [js.V(js.VT_I4, 1), js.bstr("step 1")])
    cb.send(T, log)
    cb.send(C, js.answer_value(js.V(js.VT_EMPTY)))
    cb.send(T, js.answer_value(js.V(js.VT_BOOL, True)))
    cb.send(C, js.call(rmis, "step"))
    failing = js.invoke(objects.spooler_task, 26, js.METHOD, [js.V(js.VT_I4, 1), js.bstr("x")])
    cb.send(T, failing)
    cb.send(C, js.answer_invoke_failed(0x80020009, "scheduler", "SCHEDULER-203 not allowed"))
    cb.send(T, js.property_put(objects.spooler_task, 30, js.V(js.VT_I4, 7)))
    cb.send(C, js.answer_value(js.V(js.VT_EMPTY)))
    cb.send(T, js.answer_value(js.V(js.VT_BOOL, False)))
    cb.send(C, js.call(rmis, "end", [js.V(js.VT_BOOL, True)]))
    what = "Z-JAVA-105 java.lang.RuntimeException: X"
    cb.send(T, js.answer_error("COM", "Z-JAVA-105", what))
    for method in ("spooler_on_error()V", "spooler_exit()V"):
        cb.send(C, js.call(rmis, "call", [js.bstr(method)]))
        cb.send(T, js.answer_value(js.V(js.VT_EMPTY)))
    cb.send(C, js.release(rmis))
    cb.send(T, js.answer_empty())
    cb.close(first=T)
    cmd.send(CLIENT, js.remote_task_close(pid))
    cap.advance(40 * MS)
    cmd.send(SERVER, js.ok_answer(answer_time(cap)))
    cmd.close()
    return Expected(
        pid,
        59998,
        "completed",
        exit_code=7,
        steps=2,
        log_lines=1,
        kind="api",
        error="COM-80020009 SCHEDULER-203 not allowed",
        convs=[cmd, cb],
    )


def start_failed(cap: Capture) -> Expected:
    cmd = Conv(cap, (CONTROLLER_IP, 40002), (REMOTE_IP, 4455), isn=3000)
    cmd.handshake()
    cmd.send(CLIENT, js.start_remote_task(59997, kind="process"))
    cmd.send(SERVER, js.error_answer(answer_time(cap), "SCHEDULER-717", "No licence <x>"))
    cmd.close()
    return Expected(
        None,
        59997,
        "start-failed",
        steps=0,
        log_lines=0,
        kind="shell",
        error="SCHEDULER-717 No licence <x>",
        convs=[cmd],
    )


def _start_answered(
    cap: Capture,
    pid: str,
    ports: tuple[int, int, int],
    isn: int,
    cmd_port: int = 4455,
    start: bytes | None = None,
) -> tuple[Conv, Conv]:
    """A task's command connection up to the start's answer, and its callback connection
    not opened yet; `ports`: the controller's client port, the task server's source port
    and the callback port."""
    client_port, source_port, callback_port = ports
    cmd = Conv(cap, (CONTROLLER_IP, client_port), (REMOTE_IP, cmd_port), isn=isn)
    cb = Conv(cap, (REMOTE_IP, source_port), (CONTROLLER_IP, callback_port), isn=isn + 5000)
    cmd.handshake()
    cmd.send(CLIENT, start or js.start_remote_task(callback_port, kind="process"))
    cmd.send(SERVER, js.process_answer(answer_time(cap), pid))
    return cmd, cb


def callback_syns(
    cap: Capture, pid: str, ports: tuple[int, int, int], isn: int, resent_after: tuple[int, ...]
) -> None:
    """A start answered, then its callback SYN, sent again after each of `resent_after` (µs)
    and never answered: what a firewall that drops it shows (DESIGN Status 3), or, sent
    once at the end of the capture, a SYN that may still be answered ("Cases at the edges")."""
    _, cb = _start_answered(cap, pid, ports, isn)
    cb._packet(T, "S")  # the task server is the callback's client
    for delay in resent_after:
        cap.advance(delay)
        cb._packet(T, "S")


def refused_callback(cap: Capture) -> Expected:
    pid = "500003"
    cmd, cb = _start_answered(cap, pid, (40003, 45003, 59996), isn=4000)
    cb.refused()
    cap.advance(61 * S)
    cmd.send(CLIENT, js.remote_task_close(pid))
    cmd.send(SERVER, js.ok_answer(answer_time(cap)))
    cmd.close()
    return Expected(
        pid, 59996, "callback-refused", steps=0, log_lines=0, kind="shell", convs=[cmd, cb]
    )


def killed_task(cap: Capture) -> Expected:
    pid = "500004"
    cmd = Conv(cap, (CONTROLLER_IP, 40004), (REMOTE_IP, 4455), isn=5000)
    cb = Conv(cap, (REMOTE_IP, 45004), (CONTROLLER_IP, 59995), isn=9500)
    cmd.handshake()
    cmd.send(CLIENT, js.start_remote_task(59995, kind="process"))
    cmd.send(SERVER, js.process_answer(answer_time(cap), pid))
    cb.handshake()
    cb.send(C, js.create_instance())
    cb.send(T, js.answer_create_instance(js.ObjRef(rmis_id(2), True, "x")))
    cmd.send(CLIENT, js.remote_task_kill(pid))
    cmd.send(SERVER, js.ok_answer(answer_time(cap)))
    cmd.send(CLIENT, js.remote_task_close(pid, kill=True))
    cb.close(first=T)
    cmd.send(SERVER, js.ok_answer(answer_time(cap)))
    cmd.close()
    return Expected(pid, 59995, "killed", steps=0, log_lines=0, kind="shell", convs=[cmd, cb])


def heuristic_pickup(cap: Capture) -> list[Expected]:
    """No start command for this callback (capture began later): found by its first
    CreateInstance; a command channel on a port outside the preference, found by its
    first bytes."""
    cb = Conv(cap, (REMOTE_IP, 45010), (CONTROLLER_IP, 59990), isn=11000)
    cb.handshake()
    cb.send(C, js.create_instance())
    cb.send(T, js.answer_create_instance(js.ObjRef(rmis_id(3), True, "x")))
    cb.send(C, js.call(rmis_id(3), "step"))
    cb.send(T, js.answer_value(js.bstr(js.process_result(0, state_text="ok"))))
    cb.send(C, js.release(rmis_id(3)))
    cb.send(T, js.answer_empty())
    cb.close(first=C)
    pid = "600001"
    cmd = Conv(cap, (CONTROLLER_IP, 40010), (REMOTE_IP, 4500), isn=12000)
    cmd.handshake()
    cmd.send(CLIENT, js.start_remote_task(59989))
    cmd.send(SERVER, js.process_answer(answer_time(cap), pid, pid=777))
    cap.advance(61 * S)
    cmd.send(CLIENT, js.remote_task_close(pid))
    cmd.send(SERVER, js.ok_answer(answer_time(cap)))
    cmd.close()
    return [
        Expected(None, 59990, "partial", exit_code=0, steps=1, log_lines=0, convs=[cb]),
        Expected(pid, 59989, "callback-missing", steps=0, log_lines=0, kind="api", convs=[cmd]),
    ]


def start_answered_then_other_traffic(cap: Capture, callback_syn: bool, other: str) -> None:
    """A start answered, perhaps one callback SYN never answered, then two minutes of
    nothing but `other` traffic ("tcp" or "udp"): the end of the capture, which a filter for
    this protocol does not see, decides `callback-missing` (or `callback-unanswered`)."""
    cmd = Conv(cap, (CONTROLLER_IP, 40000), (REMOTE_IP, 4455), isn=1000)
    cmd.handshake()
    cmd.send(CLIENT, js.start_remote_task(59999))
    cmd.send(SERVER, js.process_answer(answer_time(cap), "111"))
    if callback_syn:
        cap.advance(1 * S)
        Conv(cap, (REMOTE_IP, 45000), (CONTROLLER_IP, 59999), isn=7000)._packet(CLIENT, "S")
    other_traffic(cap, other)


def other_traffic(cap: Capture, other: str) -> None:
    """Two minutes of nothing but unrelated `other` traffic ("tcp" or "udp"), a packet
    every 40 s: what a capture filter for this protocol never passes."""
    for _ in range(3):
        cap.advance(40 * S)
        if other == "tcp":
            web = Conv(cap, ("10.9.9.9", 51000), ("10.9.9.8", 80), isn=5)
            web.send(CLIENT, b"GET / HTTP/1.1")
        else:
            packet = Ether() / IP(src="10.9.9.9", dst="10.9.9.8") / UDP(sport=5353, dport=53)
            packet.time = Decimal(cap.now) / S
            cap.packets.append(packet)


def answer_overtaken_by_fin(conv: Conv, side: int, answer: bytes, delay: int) -> int:
    """`side` sends its last answer and closes at once; the answer's segment is lost on its
    way, so its FIN is captured first and the answer, retransmitted, `delay` µs later. The
    other side closes after it. Returns the retransmission's time."""
    conv.send(side, answer)
    lost = conv.cap.packets.pop()
    conv._packet(side, "FA")
    conv.seq[side] += 1
    conv.cap.advance(delay)
    lost.time = Decimal(conv.cap.now) / S
    conv.cap.packets.append(lost)
    answered = conv.cap.now
    conv.cap.advance(100)
    conv._packet(1 - side, "FA")
    conv.seq[1 - side] += 1
    conv._packet(side, "A")
    return answered


def ends_overtaken(cap: Capture, late: str) -> int:
    """A task whose Release answer (`late` "release") or close answer ("close") is captured
    after the FIN that follows it (see answer_overtaken_by_fin): a normal end all the same.
    Returns when the late answer was captured."""
    pid = "700005"
    cmd, cb = _start_answered(cap, pid, (40000, 45000, 59999), isn=1000)
    cb.handshake()
    rmis = rmis_id(1)
    cb.send(C, js.create_instance())
    cb.send(T, js.answer_create_instance(js.ObjRef(rmis, True, "RemoteModuleInstanceServer")))
    cb.send(C, js.call(rmis, "step"))
    cb.send(T, js.answer_value(js.V(js.VT_BOOL, False)))
    cb.send(C, js.release(rmis))
    if late == "release":
        answered = answer_overtaken_by_fin(cb, T, js.answer_empty(), 200 * MS)
    else:
        cb.send(T, js.answer_empty())
        cb.close(first=T)
    cmd.send(CLIENT, js.remote_task_close(pid))
    if late == "close":
        return answer_overtaken_by_fin(cmd, SERVER, js.ok_answer(answer_time(cap)), 200 * MS)
    cmd.send(SERVER, js.ok_answer(answer_time(cap)))
    cmd.close()
    return answered


def picked_up_in_the_last_step(cap: Capture) -> int:
    """A shell task's callback picked up during its only step (no handshake, no call to the
    RMIS left): a log line, the step's answer, then the Release of the RMIS, answered, and
    the controller's FIN. Returns the time of the Release answer: a normal end, `partial`."""
    cb = Conv(cap, (REMOTE_IP, 45000), (CONTROLLER_IP, 59999), isn=7000)
    log = js.invoke(
        (0x327B23C6 << 32) | 3, 14, js.METHOD, [js.V(js.VT_I4, 0), js.bstr("[stdout] busy")]
    )
    cb.send(T, log)
    cb.send(C, js.answer_value(js.V(js.VT_EMPTY)))
    cb.send(T, js.answer_value(js.bstr(js.process_result(0, success=True))))
    cb.send(C, js.release(rmis_id(1)))
    answered = cap.now
    cb.send(T, js.answer_empty())
    cb.close(first=C)
    return answered


def picked_up_at_the_step_answer(cap: Capture) -> tuple[int, int]:
    """A shell task's callback picked up between its step call and the answer (found in
    review: the first file of a ring buffer). The capture holds the step's answer, then the
    controller's Release of the RMIS before any request told the sides, the task's nested
    log flush (which tells them) and releases of the controller's objects, then the Release
    answer and the FIN. Returns (time of the Release answer, exit code): `partial`, a normal
    end, the exit code from the <process.result> whose call was not captured."""
    cb = Conv(cap, (REMOTE_IP, 45010), (CONTROLLER_IP, 59998), isn=7500)
    spooler_log = (0x327B23C6 << 32) | 4
    cb.send(T, js.answer_value(js.bstr(js.process_result(3, success=True))))
    cb.send(C, js.release(rmis_id(2)))
    cb.send(T, js.get_ids_of_names(spooler_log, "log"))
    cb.send(C, js.answer_dispids(14))
    cb.send(T, js.invoke(spooler_log, 14, js.METHOD, [js.V(js.VT_I4, 0), js.bstr("[stdout] x")]))
    cb.send(C, js.answer_value(js.V(js.VT_EMPTY)))
    for k in (1, 2, 3, 4):  # the proxies of the begin objects (§6.5)
        cb.send(T, js.release((0x327B23C6 << 32) | k))
        cb.send(C, js.answer_empty())
    answered = cap.now
    cb.send(T, js.answer_empty())
    cb.close(first=C)
    return answered, 3


def answers_past_requests_sent_meanwhile(cap: Capture, lose_log_answer: bool) -> None:
    """A shell task whose step answer shares a segment with a K (§5.1): the controller
    sends its Release before it answers the K, so each answer pairs with the most recent
    request of the other side, not with the top of the stack (§5.2). `lose_log_answer`:
    the controller's answer to the log call during the step is not captured."""
    pid = "84217302"
    cmd, cb = _start_answered(cap, pid, (40030, 45030, 59970), isn=15000)
    cb.handshake()
    rmis = rmis_id(3)
    objects = js.BeginObjects(*[(0x327B23C6 << 32) | k for k in range(1, 5)])
    cb.send(C, js.create_instance())
    cb.send(T, js.answer_create_instance(js.ObjRef(rmis, True, "x")))
    cb.send(C, js.call(rmis, "begin", objects.args()))
    cb.send(T, js.answer_value(js.V(js.VT_BOOL, True)))
    cb.send(C, js.call(rmis, "step"))
    log = [js.V(js.VT_I4, 0), js.bstr("[stdout] working")]
    cb.send(T, js.invoke(objects.spooler_log, 14, js.METHOD, log))
    cb.send(C, js.answer_value(js.V(js.VT_EMPTY)))
    if lose_log_answer:
        cap.packets.pop()  # its sequence numbers stay used: a gap
    result = js.process_result(3, success=False, signal=9)
    cb.send(T, js.answer_value(js.bstr(result)) + js.keep_alive())
    cb.send(C, js.release(rmis))
    cb.send(C, js.answer_empty())  # to the K, which it read while waiting
    cb.send(T, js.answer_empty())  # to the Release
    cb.close(first=C)
    cmd.send(CLIENT, js.remote_task_close(pid))
    cmd.send(SERVER, js.ok_answer(answer_time(cap)))
    cmd.close()


def numbered_task(
    cap: Capture, n: int, cmd_port: int = 4455, start: bytes | None = None
) -> dict[str, int]:
    """A short complete shell task on ports of its own (`n`), its command channel to
    `cmd_port`, its start as given (default: to 59999); where its command SYN, callback
    SYN and first callback frame are in `cap.packets`, to drop them."""
    pid = f"9{n:05d}"
    marks = {"cmd_syn": len(cap.packets)}
    ports = (40000 + n, 45000 + n, 59999)
    cmd, cb = _start_answered(cap, pid, ports, 1000 + n * 100_000, cmd_port, start)
    marks["cb_syn"] = len(cap.packets)
    cb.handshake()
    rmis = rmis_id(n)
    marks["cb_first"] = len(cap.packets)
    cb.send(C, js.create_instance())
    cb.send(T, js.answer_create_instance(js.ObjRef(rmis, True, "x")))
    cb.send(C, js.call(rmis, "step"))
    cb.send(T, js.answer_value(js.bstr(js.process_result(0, success=True))))
    released_and_closed(cap, cmd, cb, rmis, pid)
    return marks


def released_and_closed(
    cap: Capture, cmd: Conv, cb: Conv, rmis: int, pid: str, last: bool = True
) -> None:
    """The end of a task: the RMIS released, the callback closed by the controller, the
    close command answered, and (`last`: no other task on it) the command connection
    closed."""
    cb.send(C, js.release(rmis))
    cb.send(T, js.answer_empty())
    cb.close(first=C)
    cmd.send(CLIENT, js.remote_task_close(pid))
    cmd.send(SERVER, js.ok_answer(answer_time(cap)))
    if last:
        cmd.close()


def callback_refused_after(late: int) -> Capture:
    """Task 700004 started and answered; its callback refused `late` µs later (the
    controller gone after 60 s: Z-REMOTE-118), then the task closed."""
    cmd, cb = _start_answered(cap := Capture(), "700004", (40000, 45000, 59999), isn=1000)
    cap.advance(late)
    cb.refused()
    cmd.send(CLIENT, js.remote_task_close("700004"))
    cmd.send(SERVER, js.ok_answer(answer_time(cap)))
    cmd.close()
    return cap


def start_answer_only(closed: bool) -> Capture:
    """The capture begins between task 700006's start and its answer (pid 4242); `closed`:
    then the task is closed, else it is still running at the end."""
    cap = Capture()
    cmd = Conv(cap, (CONTROLLER_IP, 40000), (REMOTE_IP, 4455), isn=3000)
    cmd.seq[0] += 1 + len(js.start_remote_task(59999))  # the handshake and the start: before
    cmd.seq[1] += 1
    cmd.send(SERVER, js.process_answer(answer_time(cap), "700006", pid=4242))
    cap.advance(2 * S)
    if closed:
        cmd.send(CLIENT, js.remote_task_close("700006"))
        cmd.send(SERVER, js.ok_answer(answer_time(cap)))
        cmd.close()
    cap.advance(S)
    return cap


def callback_synacks_lost(final_rst: bool) -> Capture:
    """Task 700005 started and answered; its callback's SYN-ACKs never reach the task server
    (a firewall drops the return path; captured on the controller): SYN and SYN-ACK six
    times over 31 s. The controller gives up at 60 s (Z-REMOTE-118) and closes the task;
    `final_rst`: the task server's SYN at 63 s then meets the closed port."""
    cmd, cb = _start_answered(cap := Capture(), "700005", (40000, 45000, 59999), isn=2000)
    start = cap.now
    for after_s in (0, 1, 3, 7, 15, 31):
        cap.now = start + after_s * S
        cb._packet(0, "S")
        cb._packet(1, "SA")
    cap.now = start + 60 * S
    cmd.send(CLIENT, js.remote_task_close("700005"))
    cmd.send(SERVER, js.ok_answer(answer_time(cap)))
    cmd.close()
    if final_rst:
        cap.now = start + 63 * S
        cb._packet(0, "S")
        cb.seq[0] += 1
        cb._packet(1, "RA")
    cap.advance(S)
    return cap


def callbacks_on_one_4tuple(first: str) -> Capture:
    """Tasks 900001 and 900002, whose callback connections take the same 4-tuple (task
    server port 45001 to callback port 59999 again), the second's SYN not captured. The
    first's end was not captured either (`first` "live"), or its SYNs were never answered
    ("unanswered": the controller gave up after 60 s; then the second's whole handshake is
    not captured). Initial sequence numbers as Linux picks them (RFC 6528: a keyed hash of
    the 4-tuple plus a clock of 64 ns ticks), so the second's lie ahead of the first's."""
    cap = Capture()
    for n in (1, 2):
        pid = f"90000{n}"
        cmd, _ = _start_answered(cap, pid, (40000 + n, 45001, 59999), isn=1000 + n * 100_000)
        isn = (cap.now - T0) * 1000 // 64 % (1 << 32)  # the clock's 64 ns ticks
        cb = Conv(cap, (REMOTE_IP, 45001), (CONTROLLER_IP, 59999), isn)
        if n == 1 and first == "unanswered":
            start = cap.now
            for after_s in (0, 1, 3):
                cap.now = start + after_s * S
                cb._packet(T, "S")
            cap.now = start + 60 * S
        else:
            if n == 1:
                cb.handshake()
            else:
                cb.seq[T] += 1  # its SYN not captured
                if first == "live":
                    cb._packet(C, "SA")
                cb.seq[C] += 1
                if first == "live":
                    cb._packet(T, "A")
            rmis = rmis_id(n)
            cb.send(C, js.create_instance())
            cb.send(T, js.answer_create_instance(js.ObjRef(rmis, True, "x")))
            cb.send(C, js.call(rmis, "step"))
            cb.send(T, js.answer_value(js.bstr(js.process_result(n, success=True))))
            cb.send(C, js.release(rmis))
            cb.send(T, js.answer_empty())
            if n == 2:
                cb.close(first=C)  # the first one's end: not captured
        cmd.send(CLIENT, js.remote_task_close(pid))
        cmd.send(SERVER, js.ok_answer(answer_time(cap)))
        cmd.close()
        cap.advance(2 * S)
    return cap


def malformed_traffic(cap: Capture) -> None:
    """Bytes that break every layout: the plugin must mark them, never fail (no Lua error)."""
    rng = random.Random(6)
    cmd = Conv(cap, (CONTROLLER_IP, 40020), (REMOTE_IP, 4455), isn=13000)
    cmd.handshake()
    cmd.send(CLIENT, js.start_remote_task(59980))
    cmd.send(SERVER, b"garbage\0<spooler><answer><ERROR/></answer></spooler>\0\0\0")
    cmd.send(CLIENT, b"show_state\n<a><b></a></b>" + bytes(rng.randrange(256) for _ in range(300)))
    cmd.send(SERVER, b"<?xml?><spooler><answer time='x'>" + b"<" * 50 + b"\0")
    cb = Conv(cap, (REMOTE_IP, 45020), (CONTROLLER_IP, 59980), isn=14000)
    cb.handshake()
    cb.send(C, js.create_instance())
    rmis = rmis_id(9)
    cb.send(T, js.answer_create_instance(js.ObjRef(rmis, True, "x")))
    deep = js.V(js.VT_I4, 1)
    for _ in range(24):
        deep = js.V(js.VT_ARRAY | js.VT_VARIANT, [deep])
    frames = [
        js.obj_request(rmis, b"Z", b"\1\2\3"),
        js.obj_request(rmis, b"I", js.i32(14)),
        js.obj_request(rmis, b"A", js.string("step") + js.i32(1) + js.i32(0) + js.i32(0x0E)),
        js.obj_request(
            rmis,
            b"A",
            js.string("x")
            + js.i32(1)
            + js.i32(0)
            + js.i32(0x200C)
            + js.i16(1)
            + js.i16(0x810)
            + js.i32(0x7FFFFFFF)
            + js.i32(0)
            + js.i32(12),
        ),
        js.call(rmis, "deep", [deep]),
        js.obj_request(
            rmis,
            b"A",
            js.string("o")
            + js.i32(1)
            + js.i32(0)
            + js.i32(9)
            + js.i64(5)
            + b"\1"
            + js.string("t")
            + bytes(16)
            + js.i32(1000),
        ),
        js.obj_request(
            rmis, b"A", js.string("d") + js.i32(1) + js.i32(0) + js.i32(5) + b"s\x05abcde"
        ),
        js.frame(b"N"),
        js.frame(b"K\0\0"),
        js.frame(b"A" + js.i32(0) + js.i32(0) + b"extra"),
        js.frame(b"E" + js.string("no equals sign") + js.i32(99) + b"ab"),
        js.frame(b"O" + bytes(8) + b"R"),
        js.frame(b"S" + bytes(5)),
    ]
    for data in frames:
        cb.send(C, data)
        cb.send(T, js.answer_empty())
    for _ in range(40):
        body = bytes([rng.choice(b"SOKAEN")]) + bytes(
            rng.randrange(256) for _ in range(rng.randrange(60))
        )
        cb.send(rng.choice((C, T)), js.frame(body), sizes=(rng.randrange(1, 9),))
    cb.send(T, js.i32(0) + b"A")
    cb.send(C, js.i32(0x7FFFFFFF) + b"A")
    cb.send(T, b"\x00\x00\x00\x10Q")
    cb.close()
    cmd.close()
