"""Small captures on which the Lua plugin once read differently from the default engine
(found in review): non-ASCII text, character references, the prolog's encoding, numbers
in unusual forms, exit codes put as VARIANTs of every integer type, double texts that are
no number, a CRLF before a command, NULs and non-ASCII names in callback strings,
argument lists that break, closes on a command connection of several tasks,
retransmissions that re-send captured bytes with new ones, a close captured before the
keep-alive space sent before it, a start never answered, a start on the SYN, and
callback frames whose length prefix is split with the next frame's head behind it, a
callback connection that ends inside a frame, closes with kill attributes, and a start
command too long to hold, XML declarations expat refuses, callback frames whose length
prefix is corrupt, documents that begin with a UTF-8 byte order mark, and many short
tasks (for counting the plugin's work). Each builder adds whole tasks to a `Capture`."""

from __future__ import annotations

import struct

import jsencode as js
from crafted_captures import (
    CLIENT,
    CONTROLLER_IP,
    REMOTE_IP,
    SERVER,
    C,
    Capture,
    Conv,
    S,
    T,
    answer_time,
    released_and_closed,
    rmis_id,
)
from jsencode import V
from pcapfiles import pcap_file


def _rmis_created(cb: Conv, rmis: int) -> None:
    """The callback connection opened, and its RMIS object created (§5.5)."""
    cb.handshake()
    _instance_created(cb, rmis)


def _instance_created(cb: Conv, rmis: int, title: str = "x") -> None:
    """On an open callback connection, the RMIS object created (§5.5)."""
    cb.send(C, js.create_instance())
    cb.send(T, js.answer_create_instance(js.ObjRef(rmis, True, title)))


def _begin_objects(n: int, names: tuple[str, ...] | None = None) -> js.BeginObjects:
    """Task `n`'s spooler, spooler_job, spooler_task and spooler_log objects (§6.3)."""
    ids = [(0x327B23C6 << 32) | (n * 16 + k) for k in range(1, 5)]
    return js.BeginObjects(*ids) if names is None else js.BeginObjects(*ids, names=names)


def _started(cap: Capture, n: int, pid: str, answer_lost: bool = False) -> tuple[Conv, Conv]:
    """A shell task `n` started and answered (`pid`; `answer_lost`: the capture lost the
    answer, the controller's ACK of it shows it was sent), its callback connected."""
    cmd = Conv(cap, (CONTROLLER_IP, 42000 + n), (REMOTE_IP, 4455), isn=1_000_000 * n)
    cb = Conv(cap, (REMOTE_IP, 47000 + n), (CONTROLLER_IP, 58000 + n), isn=1_000_000 * n + 5000)
    cmd.handshake()
    cmd.send(CLIENT, js.start_remote_task(58000 + n, kind="process"))
    answer = js.process_answer(answer_time(cap), pid)
    (cmd.lost if answer_lost else cmd.send)(SERVER, answer)
    cb.handshake()
    return cmd, cb


def _finished(cap: Capture, cmd: Conv, cb: Conv, rmis: int, pid: str) -> None:
    released_and_closed(cap, cmd, cb, rmis, pid)
    cap.advance(S)


def shell_task(
    cap: Capture,
    n: int,
    result: str | None = None,
    params: tuple[str, ...] = ("language=shell", "job=/j", "task_id=1"),
    puts: tuple[V, ...] = (),
    calls: tuple[V, ...] = (),
    answer: bytes | None = None,
) -> str:
    """A whole shell task: construct(`params`), begin, then `calls` (a call with one
    argument answered with it), a step whose Invoke puts each of `puts` as
    spooler_task.exit_code, answered by `result` (a <process.result>) or true; `answer`
    replaces the answer to construct. Returns its process id."""
    pid = f"2000{n:02d}"
    cmd, cb = _started(cap, n, pid)
    rmis = rmis_id(n)
    objs = _begin_objects(n)
    _instance_created(cb, rmis)
    cb.send(C, js.call(rmis, "construct", js.construct_args(list(params))))
    cb.send(T, answer or js.answer_value(V(js.VT_BOOL, True)))
    cb.send(C, js.call(rmis, "begin", objs.args()))
    cb.send(T, js.answer_value(V(js.VT_BOOL, True)))
    for i, v in enumerate(calls):
        cb.send(C, js.call(rmis, f"m{i}", [v]))
        cb.send(T, js.answer_value(v))
    cb.send(C, js.call(rmis, "step"))
    for v in puts:
        cb.send(T, js.property_put(objs.spooler_task, 30, v))
        cb.send(C, js.answer_value(V(js.VT_EMPTY)))
    cb.send(T, js.answer_value(js.bstr(result) if result is not None else V(js.VT_BOOL, True)))
    _finished(cap, cmd, cb, rmis, pid)
    return pid


def error_answer_task(
    cap: Capture, n: int, text: str, encoding: str | None = None, sent_as: str | None = None
) -> None:
    """A start answered by <ERROR text=`text`> (`text` as written in the document: its
    references stay); the document in ISO-8859-1 with the usual prolog, or with a prolog
    that declares `encoding`, in that encoding (or in `sent_as`)."""
    cmd = Conv(cap, (CONTROLLER_IP, 43000 + n), (REMOTE_IP, 4455), isn=2000 + 10_000 * n)
    cmd.handshake()
    cmd.send(CLIENT, js.start_remote_task(57000 + n, kind="process"))
    error = f'<ERROR time="2026-03-02T09:15:02Z" class="Xc" code="SCHEDULER-717" text="{text}"/>'
    if encoding is None:
        cmd.send(SERVER, js.answer_doc(answer_time(cap), error))
    else:
        doc = (
            f'<?xml version="1.0" encoding="{encoding}"?>'
            f'<spooler><answer time="{answer_time(cap)}">{error}</answer></spooler>'
        )
        codec = sent_as or ("utf-8" if "8" in encoding else "latin-1")
        cmd.send(SERVER, doc.encode(codec) + b"\0")
    cmd.close()
    cap.advance(S)


def utf8_start_task(cap: Capture, n: int) -> None:
    """A start in UTF-8 with non-ASCII options, answered in UTF-8 (both declared so)."""
    pid = f"7000{n:02d}"
    cmd = Conv(cap, (CONTROLLER_IP, 41000 + n), (REMOTE_IP, 4455), isn=600_000 + n)
    cmd.handshake()
    start = (
        '<?xml version="1.0" encoding="UTF-8"?><remote_scheduler.start_remote_task'
        ' tcp_port="59006" java_options="-Dx=\u00e9\u20ac" java_classpath="/o\u00ff"/>'
    )
    cmd.send(CLIENT, start.encode("utf-8"))
    answer = (
        '<?xml version="1.0" encoding="utf8"?><spooler><answer time="'
        + answer_time(cap)
        + f'"><process pid="12" process_id="{pid}"/></answer></spooler>'
    )
    cmd.send(SERVER, answer.encode("utf-8") + b"\0")
    cmd.send(CLIENT, js.remote_task_close(pid))
    cmd.send(SERVER, js.ok_answer(answer_time(cap)))
    cmd.close()
    cap.advance(S)


def e_answer_task(cap: Capture, n: int, what: str) -> None:
    """A task whose first call is answered by an `E` answer (§5.11) whose `what` is
    `what` (ISO-8859-1 on the wire)."""
    pid = f"3000{n:02d}"
    cmd, cb = _started(cap, n, pid)
    rmis = rmis_id(n)
    cb.send(C, js.create_instance())
    cb.send(T, js.answer_create_instance(js.ObjRef(rmis, True, "x")))
    cb.send(C, js.call(rmis, "construct", js.construct_args(["language=shell", "job=/j"])))
    cb.send(T, js.answer_error("COM", "COM-80020009", what))
    _finished(cap, cmd, cb, rmis, pid)


def crlf_before_a_command(cap: Capture) -> None:
    """A close sent after a CRLF, then keep-alive spaces (§3.7)."""
    pid = "400003"
    cmd = Conv(cap, (CONTROLLER_IP, 44003), (REMOTE_IP, 4455), isn=40_000)
    cmd.handshake()
    cmd.send(CLIENT, js.start_remote_task(56003, kind="process"))
    cmd.send(SERVER, js.process_answer(answer_time(cap), pid, pid=3))
    cmd.send(CLIENT, b"\r\n" + js.remote_task_close(pid, kill=True))
    cmd.send(SERVER, js.ok_answer(answer_time(cap)))
    cmd.send(CLIENT, b"   ")
    cmd.close()
    cap.advance(70 * S)


def odd_strings_task(cap: Capture, n: int, text: str) -> None:
    """A shell task with `text` (a NUL, say) in every §5.3 string that reaches a message or
    the task table: the job, the RMIS's title, a begin name, a name resolved through
    GetIDsOfNames and the value got with it, a log line, a method called by name and its
    argument, and the code and text of the `E` answer to that call."""
    pid = f"5000{n:02d}"
    cmd, cb = _started(cap, n, pid)
    rmis = rmis_id(n)
    names = ("spooler", "spooler_job", "spooler_task", f"log{text}")
    objs = _begin_objects(n, names)
    _instance_created(cb, rmis, f"title{text}")
    params = ["language=shell", f"job=/j{text}", "task_id=1"]
    cb.send(C, js.call(rmis, "construct", js.construct_args(params)))
    cb.send(T, js.answer_value(V(js.VT_BOOL, True)))
    cb.send(C, js.call(rmis, "begin", objs.args()))
    cb.send(T, js.get_ids_of_names(objs.spooler_task, f"get{text}"))
    cb.send(C, js.answer_dispids(99))
    cb.send(T, js.invoke(objs.spooler_task, 99, js.PROPERTYGET))
    cb.send(C, js.answer_value(js.bstr(f"value{text}")))
    cb.send(T, js.invoke(objs.spooler_log, 14, js.METHOD, [V(js.VT_I4, 0), js.bstr(f"line{text}")]))
    cb.send(C, js.answer_value(V(js.VT_EMPTY)))
    cb.send(T, js.answer_value(V(js.VT_BOOL, True)))
    cb.send(C, js.call(rmis, f"call{text}", [js.bstr(f"argument{text}")]))
    cb.send(T, js.answer_error("COM", f"COM-{text}", f"what{text}"))
    _finished(cap, cmd, cb, rmis, pid)


def broken_arguments_task(cap: Capture, n: int) -> None:
    """A task whose calls' argument lists (§5.7) break: at a second argument of a type
    that is not transmittable, inside a string, inside an object reference's properties,
    or with arguments announced and not sent; and one with bytes after whole arguments."""
    pid = f"6000{n:02d}"
    cmd, cb = _started(cap, n, pid)
    rmis = rmis_id(n)
    cb.send(C, js.create_instance())
    cb.send(T, js.answer_create_instance(js.ObjRef(rmis, True, "x")))
    one = js.variant(V(js.VT_I4, 1))
    ref = js.i32(js.VT_DISPATCH) + js.i64(5) + b"\1" + js.string("t") + bytes(16) + js.i32(9)
    bodies = [
        js.i32(2) + js.i32(0) + js.i32(0x0E) + one,  # wire order: the second argument first
        js.i32(2) + js.i32(0) + one + js.i32(js.VT_BSTR) + js.i32(40) + b"cut",
        js.i32(2) + js.i32(0) + one + ref,
        js.i32(3) + js.i32(0) + one + one + one[:2],
        js.i32(1) + js.i32(0) + one + b"!",
    ]
    for i, body in enumerate(bodies):
        cb.send(C, js.obj_request(rmis, b"A", js.string(f"m{i}") + body))
        cb.send(T, js.answer_value(V(js.VT_EMPTY)))
    _finished(cap, cmd, cb, rmis, pid)


def two_tasks_on_one_connection(cap: Capture, second: str) -> None:
    """Tasks 300001 and 300002 started on one command connection (§3.8); the second's start
    answer is an error (`second` "failed") or not captured ("lost"); then task 300001 ends
    and is closed, and (lost) so is 300002."""
    cmd = Conv(cap, (CONTROLLER_IP, 42100), (REMOTE_IP, 4455), isn=7_000_000)
    cmd.handshake()
    convs = []
    for n in (1, 2):
        pid = f"30000{n}"
        cmd.send(CLIENT, js.start_remote_task(58100 + n, kind="process"))
        if n == 1:
            cmd.send(SERVER, js.process_answer(answer_time(cap), pid))
        elif second == "failed":
            cmd.send(SERVER, js.error_answer(answer_time(cap), "SCHEDULER-717", "no licence"))
            break
        else:
            cmd.lost(SERVER, js.process_answer(answer_time(cap), pid))
        cb = Conv(cap, (REMOTE_IP, 47100 + n), (CONTROLLER_IP, 58100 + n), isn=7_000_000 + n)
        _rmis_created(cb, rmis_id(n))
        convs.append((cb, n, pid))
    for cb, n, pid in convs:
        released_and_closed(cap, cmd, cb, rmis_id(n), pid, last=False)
    cmd.close()


def lost_start_answer_task(cap: Capture) -> None:
    """Task 300003, whose start answer the capture lost (the controller's ACK of it shows
    it was sent), and which otherwise runs and ends normally."""
    cmd, cb = _started(cap, 200, "300003", answer_lost=True)
    cb.send(C, js.create_instance())
    cb.send(T, js.answer_create_instance(js.ObjRef(rmis_id(3), True, "x")))
    released_and_closed(cap, cmd, cb, rmis_id(3), "300003")


def _resent(conv: Conv, side: int, data: bytes) -> None:
    """`data` captured as its first 4 bytes (a callback frame's length, §5.1), those again,
    then one segment that re-sends the last two of them with the rest (retransmissions
    that coalesce captured bytes)."""
    conv.send(side, data[:4])
    conv.resend(side, data[:4])
    conv.resend(side, data[2:4], data[4:])


def resending_task(cap: Capture, n: int, message: str) -> None:
    """A shell task whose `message` ("start", "begin answer" or "release answer") reaches
    the capture in retransmitted segments that re-send captured bytes with new ones."""
    pid = f"8000{n:02d}"
    cmd = Conv(cap, (CONTROLLER_IP, 42000 + n), (REMOTE_IP, 4455), isn=1_000_000 * n)
    cb = Conv(cap, (REMOTE_IP, 47000 + n), (CONTROLLER_IP, 58000 + n), isn=1_000_000 * n + 5000)

    def send(conv: Conv, side: int, data: bytes, name: str) -> None:
        if name == message:
            _resent(conv, side, data)
        else:
            conv.send(side, data)

    cmd.handshake()
    send(cmd, CLIENT, js.start_remote_task(58000 + n, kind="process"), "start")
    cmd.send(SERVER, js.process_answer(answer_time(cap), pid))
    cb.handshake()
    rmis = rmis_id(n)
    objs = _begin_objects(n)
    _instance_created(cb, rmis)
    cb.send(C, js.call(rmis, "construct", js.construct_args(["language=shell", "job=/j"])))
    cb.send(T, js.answer_value(V(js.VT_BOOL, True)))
    cb.send(C, js.call(rmis, "begin", objs.args()))
    send(cb, T, js.answer_value(V(js.VT_BOOL, True)), "begin answer")
    cb.send(C, js.call(rmis, "step"))
    cb.send(T, js.answer_value(V(js.VT_BOOL, True)))
    cb.send(C, js.release(rmis))
    send(cb, T, js.answer_empty(), "release answer")
    cb.close(first=C)
    cmd.send(CLIENT, js.remote_task_close(pid))
    cmd.send(SERVER, js.ok_answer(answer_time(cap)))
    cmd.close()
    cap.advance(S)


def close_before_its_keep_alive_task(cap: Capture, n: int) -> int:
    """A task whose close is captured before the segment of the keep-alive space sent just
    before it (§3.7; that segment retransmitted, say). Returns the close's capture time."""
    pid = f"8100{n:02d}"
    cmd, cb = _started(cap, n, pid)
    rmis = rmis_id(n)
    cb.send(C, js.create_instance())
    cb.send(T, js.answer_create_instance(js.ObjRef(rmis, True, "x")))
    cb.send(C, js.release(rmis))
    cb.send(T, js.answer_empty())
    cb.close(first=C)
    close_sent = cap.now
    cmd.reordered(CLIENT, b" ", js.remote_task_close(pid))
    cmd.send(SERVER, js.ok_answer(answer_time(cap)))
    cmd.close()
    cap.advance(S)
    return close_sent


def unanswered_start(cap: Capture, n: int) -> None:
    """A start never answered, no callback, the capture ending 70 s later (another
    connection's packet) with the command connection still open."""
    cmd = Conv(cap, (CONTROLLER_IP, 42000 + n), (REMOTE_IP, 4455), isn=1_000_000 * n)
    cmd.handshake()
    cmd.send(CLIENT, js.start_remote_task(58000 + n, kind="process"))
    cap.advance(70 * S)
    Conv(cap, ("10.9.9.9", 33333), ("10.9.9.8", 80), isn=5)._packet(0, "A")


def fast_open_task(cap: Capture, n: int) -> None:
    """A whole shell task whose start command rides on the SYN (TCP Fast Open)."""
    pid = f"8200{n:02d}"
    cmd = Conv(cap, (CONTROLLER_IP, 42000 + n), (REMOTE_IP, 4455), isn=1_000_000 * n)
    cb = Conv(cap, (REMOTE_IP, 47000 + n), (CONTROLLER_IP, 58000 + n), isn=1_000_000 * n + 5000)
    cmd.fast_open(js.start_remote_task(58000 + n, kind="process"))
    cmd.send(SERVER, js.process_answer(answer_time(cap), pid))
    _rmis_created(cb, rmis_id(n))
    _finished(cap, cmd, cb, rmis_id(n), pid)


def split_prefix_task(cap: Capture, n: int) -> None:
    """A shell task whose step brings two log calls: the first one's length prefix split
    after 2 bytes, its rest sent with the first 10 bytes of the second, whose rest follows
    alone; their answers likewise (the second's prefix split after 3 bytes, its rest sent
    with the first 6 bytes of the first's answer). Wireshark reassembles the first of each
    pair up to the end of that middle segment in the first pass, and only up to the second's
    head in later ones."""
    pid = f"8300{n:02d}"
    cmd, cb = _started(cap, n, pid)
    rmis = rmis_id(n)
    objs = _begin_objects(n)
    _instance_created(cb, rmis)
    cb.send(C, js.call(rmis, "begin", objs.args()))
    cb.send(T, js.answer_value(V(js.VT_BOOL, True)))
    cb.send(C, js.call(rmis, "step"))
    first = js.invoke(objs.spooler_log, 14, js.METHOD, [V(js.VT_I4, 0), js.bstr("hello")])
    second = js.invoke(objs.spooler_log, 14, js.METHOD, [V(js.VT_I4, 0), js.bstr("second")])
    cb.send(T, first + second[:10], sizes=(2,))
    cb.send(T, second[10:])
    to_first, to_second = js.answer_value(V(js.VT_EMPTY)), js.answer_value(V(js.VT_I4, 7))
    cb.send(C, to_second + to_first[:6], sizes=(3,))
    cb.send(C, to_first[6:])
    cb.send(T, js.answer_value(js.bstr('<process.result exit_code="4"/>')))
    _finished(cap, cmd, cb, rmis, pid)


def close_kill_task(cap: Capture, n: int, kill: str | None) -> str:
    """A task whose callback ended, closed with `kill` as the close's kill attribute (none
    when None). Returns its process id."""
    pid = f"8400{n:02d}"
    cmd, cb = _started(cap, n, pid)
    cb.send(C, js.create_instance())
    cb.send(T, js.answer_create_instance(js.ObjRef(rmis_id(n), True, "x")))
    cb.send(C, js.release(rmis_id(n)))
    cb.send(T, js.answer_empty())
    cb.close(first=C)
    extra = "" if kill is None else f" kill='{kill}'"
    cmd.send(CLIENT, f"<remote_scheduler.remote_task.close process_id='{pid}'{extra}/>".encode())
    cmd.send(SERVER, js.ok_answer(answer_time(cap)))
    cmd.close()
    cap.advance(S)
    return pid


def ended_inside_a_frame_task(cap: Capture, n: int, how: str) -> None:
    """A task whose step answer never ends: it announces 50,000,000 bytes and 101 follow,
    then the task server's FIN (`how` "fin"), the controller's RST ("rst"), or the end of
    the capture ("capture"; only 2 bytes of the answer's length prefix, after a whole
    answer in their segment)."""
    pid = f"8500{n:02d}"
    cmd, cb = _started(cap, n, pid)
    rmis = rmis_id(n)
    cb.send(C, js.create_instance())
    cb.send(T, js.answer_create_instance(js.ObjRef(rmis, True, "x")))
    cb.send(C, js.call(rmis, "step"))
    if how == "capture":
        cb.send(T, js.answer_value(V(js.VT_BOOL, True)))
        cb.send(C, js.call(rmis, "step"))
        cb.send(T, js.answer_value(V(js.VT_BOOL, True)) + js.i32(50)[:2])
        return
    cb.send(T, js.i32(50_000_000) + b"A" + b"x" * 100)
    if how == "fin":
        cb.close(first=T)
    else:
        cb._packet(C, "RA")
    cmd.send(CLIENT, js.remote_task_close(pid))
    cmd.send(SERVER, js.ok_answer(answer_time(cap)))
    cmd.close()
    cap.advance(S)


def oversize_start_task(cap: Capture, n: int, size: int) -> str:
    """A task whose start command carries a java_classpath of `size` bytes (many jars), in
    1460-byte segments, answered; its callback, release and close follow. Returns its
    process id."""
    pid = f"8600{n:02d}"
    cmd = Conv(cap, (CONTROLLER_IP, 42000 + n), (REMOTE_IP, 4455), isn=1_000_000 * n)
    cb = Conv(cap, (REMOTE_IP, 47000 + n), (CONTROLLER_IP, 58000 + n), isn=1_000_000 * n + 5000)
    cmd.handshake()
    classpath = ("/opt/lib/x.jar:" * (size // 15 + 1))[:size]
    start = js.start_remote_task(58000 + n, kind="process", java_classpath=classpath)
    cmd.send(CLIENT, start, sizes=(1460,) * (len(start) // 1460))
    cmd.send(SERVER, js.process_answer(answer_time(cap), pid))
    _rmis_created(cb, rmis_id(n))
    _finished(cap, cmd, cb, rmis_id(n), pid)
    return pid


def many_tasks(count: int) -> bytes:
    """A pcap of `count` short shell tasks 2 ms apart (start, answer, callback with
    CreateInstance and Release, close), each on its own connections, callback ports cycling
    over 1000: one task built, then copied with its ports and process id changed (bytes of
    the same length; checksums are not checked)."""
    cap = Capture()
    cmd = Conv(cap, (CONTROLLER_IP, 20000), (REMOTE_IP, 4455), isn=1000)
    cb = Conv(cap, (REMOTE_IP, 30000), (CONTROLLER_IP, 59999), isn=9000)
    cmd.handshake()
    cmd.send(CLIENT, js.start_remote_task(59999, kind="process"))
    cmd.send(SERVER, js.process_answer(answer_time(cap), "100000"))
    _rmis_created(cb, rmis_id(1))
    _finished(cap, cmd, cb, rmis_id(1), "100000")
    template = [(int(p.time * 10**9), bytes(p)) for p in cap.packets]
    frames = []
    for i in range(count):
        port = 59999 - i % 1000
        ports = {20000: 20000 + i, 30000: 30000 + i, 59999: port}
        for ns, raw in template:
            data = bytearray(raw)
            for at in (34, 36):  # the TCP ports (Ethernet, IPv4 without options)
                (old,) = struct.unpack_from(">H", data, at)
                struct.pack_into(">H", data, at, ports.get(old, old))
            data = bytes(data).replace(b'tcp_port="59999"', b'tcp_port="%d"' % port)
            data = data.replace(b"100000", b"%d" % (100000 + i))
            frames.append((ns + i * 2_000_000, data, len(data)))
    return pcap_file(1, frames)


def bad_declaration_task(cap: Capture, n: int, where: str) -> str:
    """A whole shell task whose start command (`where` "start": its encoding name does not
    begin with a letter) or close answer ("close answer": `v.rsion`) has an XML declaration
    expat refuses. Returns its process id."""
    pid = f"8700{n:02d}"
    cmd = Conv(cap, (CONTROLLER_IP, 42000 + n), (REMOTE_IP, 4455), isn=1_000_000 * n)
    cb = Conv(cap, (REMOTE_IP, 47000 + n), (CONTROLLER_IP, 58000 + n), isn=1_000_000 * n + 5000)
    cmd.handshake()
    start = js.start_remote_task(58000 + n, kind="process")
    if where == "start":
        start = start.replace(b'encoding="ISO-8859-1"', b'encoding="9SO-8859-1"', 1)
    cmd.send(CLIENT, start)
    cmd.send(SERVER, js.process_answer(answer_time(cap), pid))
    _rmis_created(cb, rmis_id(n))
    cb.send(C, js.release(rmis_id(n)))
    cb.send(T, js.answer_empty())
    cb.close(first=C)
    cmd.send(CLIENT, js.remote_task_close(pid))
    answer = js.ok_answer(answer_time(cap))
    if where == "close answer":
        answer = answer.replace(b"<?xml version=", b"<?xml v.rsion=", 1)
    cmd.send(SERVER, answer)
    cmd.close()
    cap.advance(S)
    return pid


def corrupt_length_task(cap: Capture, n: int, which: str) -> str:
    """A whole shell task with one corrupt byte in a callback frame's length prefix, no
    byte lost: the step answer's first byte 0x12 (`which` "over the bound": more than
    64 MiB) or 0x7f ("past any peer": more than 1000 MiB), or the step call's last length
    byte raised by 0x80 ("too long": 128 bytes more than sent, and the task server answers
    it). Returns its process id."""
    pid = f"8800{n:02d}"
    cmd, cb = _started(cap, n, pid)
    rmis = rmis_id(n)
    cb.send(C, js.create_instance())
    cb.send(T, js.answer_create_instance(js.ObjRef(rmis, True, "x")))
    step = js.call(rmis, "step")
    if which == "too long":
        step = step[:3] + bytes([step[3] + 0x80]) + step[4:]
    cb.send(C, step)
    answer = js.answer_value(js.bstr('<process.result exit_code="3"/>'))
    if which != "too long":
        answer = bytes([0x12 if which == "over the bound" else 0x7F]) + answer[1:]
    cb.send(T, answer)
    cb.send(C, js.release(rmis))
    cb.send(T, js.answer_empty())
    cb.close(first=C)
    cmd.send(CLIENT, js.remote_task_close(pid))
    cmd.send(SERVER, js.ok_answer(answer_time(cap)))
    cmd.close()
    cap.advance(S)
    return pid


BOM = b"\xef\xbb\xbf"  # UTF-8 byte order mark


def bom_task(cap: Capture, n: int, how: str) -> tuple[int, int]:
    """A whole shell task whose every document begins with a UTF-8 byte order mark, which
    the JVM parser R and C read them with takes there (§3.1, §3.2): the start, its mark in
    a segment of its own, with a non-ASCII `java_options` and (`how` "prolog") its
    ISO-8859-1 prolog, or (else) none, so UTF-8; the answers; the close, after keep-alive
    spaces in its segment. "misplaced": the close has two marks and its answer a blank
    between the mark and the prolog, which the parser refuses. "lost": the capture lost the
    end of the start's answer (its NUL too) and every client byte after it, so the close's
    answer is where the reading of answers resumes. Returns the capture times of the
    start's mark and of the close's segment."""
    pid = f"8900{n:02d}"
    cmd = Conv(cap, (CONTROLLER_IP, 42000 + n), (REMOTE_IP, 4455), isn=1_000_000 * n)
    cb = Conv(cap, (REMOTE_IP, 47000 + n), (CONTROLLER_IP, 58000 + n), isn=1_000_000 * n + 5000)
    cmd.handshake()
    start_sent = cap.now
    cmd.send(CLIENT, BOM)
    cap.advance(5_000)
    start = js.start_remote_task(58000 + n, kind="process", java_options="-Dx=\xe9")
    if how != "prolog":
        start = start.removeprefix(js.PROLOG.encode()).decode("latin-1").encode("utf-8")
    cmd.send(CLIENT, start)
    answer = BOM + js.process_answer(answer_time(cap), pid)
    if how == "lost":
        cmd.send(SERVER, answer[:20])
        cmd.lost(SERVER, answer[20:])
    else:
        cmd.send(SERVER, answer)
    _rmis_created(cb, rmis_id(n))
    cb.send(C, js.release(rmis_id(n)))
    cb.send(T, js.answer_empty())
    cb.close(first=C)
    send = cmd.lost if how == "lost" else cmd.send
    send(CLIENT, b" ")
    close_sent = cap.now
    marks, blank = (BOM + BOM, b" ") if how == "misplaced" else (BOM, b"")
    send(CLIENT, b"  " + marks + js.remote_task_close(pid))
    cmd.send(SERVER, BOM + blank + js.ok_answer(answer_time(cap)))
    cmd.close()
    cap.advance(S)
    return start_sent, close_sent
