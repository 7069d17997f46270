"""Tie command connections to their callback connections, one Task per remote task.

Modelled on how Zeek ties an FTP data connection to its control connection: every start
command creates an *expected connection* (controller IP, announced port, a time window),
and the earliest matching SYN not yet taken consumes it (PROTOCOL.md §7, DESIGN
"What fills a row" / "Matching" / "Status").
"""

from __future__ import annotations

import bisect
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field, fields

from jsdissect.protocol import DecodeError, Event
from jsdissect.protocol import command as cmd
from jsdissect.protocol import objserver as api
from jsdissect.tcp import Connection, Endpoint

CALLBACK_TIMEOUT_US = 60_000_000  # PROTOCOL §2: Z-REMOTE-118 after 60 s without accept
# The controller counts callback ports down from 59999 (PROTOCOL §2): nearly every callback
# goes to one of these (the capture filter reads them in one go; the ports report lists the
# failed connections to them that no captured start announced).
CALLBACK_RANGE = (59000, 59999)

# DESIGN "Status", in the order the rules are tried.
STATUSES = (
    "start-failed",
    "callback-refused",
    "callback-unanswered",
    "callback-missing",
    "killed",
    "aborted",
    "partial",
    "completed",
    "running",
)
FAILED_STATUSES = STATUSES[:6]  # the task did not end normally
# Statuses that say no callback connection ever came (DESIGN Status 1 and 4).
NO_CALLBACK_STATUSES = ("start-failed", "callback-missing")


@dataclass(frozen=True, slots=True)
class Channel:
    """A decoded connection: the TCP summary, what it carries and the events decoded."""

    conn: Connection
    kind: str  # "cmd", "api" or "" (no payload / not this protocol)
    events: tuple[Event, ...]
    controller: Endpoint | None = None  # api: the controller's side (the acceptor)
    remote: Endpoint | None = None  # api: the task server's side


@dataclass(slots=True)
class Task:
    """One row of the task table (DESIGN "The task table contract"); times in µs."""

    process_id: str | None = None
    pid: int | None = None
    job: str | None = None
    task_id: int | None = None
    kind: str | None = None
    controller: str | None = None
    remote: str | None = None
    cmd_conn: str | None = None
    callback_conn: str | None = None
    cmd_port: int | None = None
    callback_port: int | None = None
    callback_src_port: int | None = None
    cmd_syn: int | None = None
    cmd_established: int | None = None
    start_sent: int | None = None
    start_answered: int | None = None
    callback_syn: int | None = None
    callback_established: int | None = None
    begin_sent: int | None = None
    begin_answered: int | None = None
    release_answered: int | None = None
    callback_closed: int | None = None
    close_sent: int | None = None
    close_answered: int | None = None
    steps: int | None = None
    exit_code: int | None = None
    signal: int | None = None
    status: str = ""
    error: str | None = None
    log_lines: int | None = None
    notes: str = ""
    decode_errors: int = 0
    # Working state, not columns.
    killed: bool = False
    start_failed: bool = False
    expected_ip: str | None = None
    window_end: int | None = None
    # A callback picked up mid-stream had its SYN before it was first seen, and a live one
    # was accepted within 60 s: it may be first seen until the port's next owner (below).
    midstream_end: int | None = None
    cmd: Channel | None = None
    callback: Channel | None = None
    errors: list[tuple[int, str]] = field(default_factory=list)
    note_list: list[str] = field(default_factory=list)


# The events task rows are built from (and `jsdissect log` reads): what a run that keeps no
# messages keeps (pipeline.Options.messages).
TASK_EVENTS = (
    cmd.StartRemoteTask,
    cmd.RemoteTaskClose,
    cmd.RemoteTaskKill,
    cmd.Answer,
    api.Construct,
    api.LifecycleCall,
    api.BeginAnswered,
    api.ReleaseAnswered,
    api.StepAnswered,
    api.ExitCodePut,
    api.LogLine,
    api.ApiError,
    DecodeError,
)

TIME_COLUMNS = tuple(
    f.name
    for f in fields(Task)
    if f.name.endswith(("_syn", "_established", "_sent", "_answered", "_closed"))
)


def correlate(channels: Iterable[Channel], capture_end: int | None) -> list[Task]:
    """All tasks of the capture, ordered by their first known time."""
    channels = list(channels)
    tasks = [t for ch in channels if ch.kind == "cmd" for t in _tasks_of_command(ch)]
    _set_windows(tasks)
    unmatched = _match_callbacks(tasks, channels)
    partial = [_partial_from_callback(ch) for ch in unmatched if ch.kind == "api"]
    _note_late_callbacks(tasks, partial)
    tasks += partial
    for task in tasks:
        if task.callback is not None:
            _fill_from_callback(task, task.callback)
        _finish(task, capture_end)
    return sorted(tasks, key=_sort_key)


# --- command channel ----------------------------------------------------------------------


def _tasks_of_command(ch: Channel) -> list[Task]:
    """Tasks announced on one command connection (1.x sends one per connection, §3.8)."""
    tasks = _CommandTasks()
    by_offset: dict[int, Task] = {}
    for ev in ch.events:
        if isinstance(ev, cmd.StartRemoteTask):
            task = tasks.add(_new_task(ch))
            task.start_sent = ev.start
            task.callback_port = ev.tcp_port
            task.kind = "shell" if ev.kind == "process" else "api"
            task.expected_ip = ev.ip_address or ch.conn.client.ip
            by_offset[ev.offset] = task
        elif isinstance(ev, (cmd.RemoteTaskClose, cmd.RemoteTaskKill)):
            # DESIGN "Cases at the edges": a close or kill of a task whose start was not
            # captured gives a partial row.
            task = tasks.for_process(ev.process_id) or tasks.add(_new_task(ch))
            task.process_id = task.process_id or ev.process_id
            tasks.learned(task)
            if isinstance(ev, cmd.RemoteTaskClose) and task.close_sent is None:
                task.close_sent = ev.start
            by_offset[ev.offset] = task  # its answer may carry the task's error
            task.killed |= isinstance(ev, cmd.RemoteTaskKill) or ev.kill
        elif isinstance(ev, cmd.Answer):
            command = ev.command
            offset = ev.command_offset
            answered = by_offset.get(offset) if offset is not None else None
            if answered is None and isinstance(ev, cmd.ProcessAnswer):
                # Only a start is answered with a <process> (§3.6.1): the capture began
                # between the start and its answer. A partial row, with what it tells.
                answered, command = tasks.add(_new_task(ch)), cmd.START
            if answered is not None:
                _apply_answer(answered, ev, command)
                tasks.learned(answered)
        elif isinstance(ev, DecodeError):
            for task in tasks.all[-1:]:
                task.decode_errors += 1
    return tasks.all


def _new_task(ch: Channel) -> Task:
    conn = ch.conn
    return Task(
        controller=conn.client.ip,
        remote=str(conn.server),
        cmd_conn=conn.id,
        cmd_port=conn.client.port,
        cmd_syn=conn.syn,
        cmd_established=conn.established,
        cmd=ch,
    )


class _CommandTasks:
    """The tasks of one command connection in order, found by process id without a scan:
    a connection may carry any number of closes (§3.8), hostile ones with unknown ids each
    adding a task (found in review: a scan per close made it quadratic)."""

    __slots__ = ("_anonymous", "_by_id", "_place", "all")

    def __init__(self) -> None:
        self.all: list[Task] = []
        self._place: dict[int, int] = {}  # id(task) → its place in `all`
        self._by_id: dict[str, Task] = {}  # the latest task with each process id
        # Tasks whose id is unknown because no start answer was captured, oldest first;
        # one that learns either is dropped when it comes to the top (never to return).
        self._anonymous: list[Task] = []

    def add(self, task: Task) -> Task:
        self._place[id(task)] = len(self.all)
        self.all.append(task)
        self._anonymous.append(task)
        return task

    def learned(self, task: Task) -> None:
        """`task` may have a process id now."""
        if task.process_id is not None:
            latest = self._by_id.get(task.process_id)
            if latest is None or self._place[id(latest)] < self._place[id(task)]:
                self._by_id[task.process_id] = task

    def for_process(self, process_id: str | None) -> Task | None:
        """The task a close or kill of `process_id` ends: the latest with that process id;
        else the latest whose id is unknown because its start answer was not captured. A
        task whose start failed, or that has another id, is not it (found in review: the
        close of the first task went to a second one that had failed)."""
        if process_id is None:
            return self.all[-1] if self.all else None
        task = self._by_id.get(process_id)
        if task is not None and task.process_id != process_id:  # a start answer renamed it
            task = next((t for t in reversed(self.all) if t.process_id == process_id), None)
        if task is not None:
            return task
        anonymous = self._anonymous
        while anonymous and not _anonymous(anonymous[-1]):
            anonymous.pop()
        return anonymous[-1] if anonymous else None


def _anonymous(task: Task) -> bool:
    return task.process_id is None and task.start_answered is None


def _apply_answer(task: Task, ev: cmd.Answer, command: str | None) -> None:
    """`ev` answers `command` (its own, or the one its content tells)."""
    if isinstance(ev, cmd.ErrorAnswer):
        task.errors.append((ev.end, _error_text(ev.code, ev.text)))
    if command == cmd.START:
        task.start_answered = ev.end
        task.start_failed = isinstance(ev, cmd.ErrorAnswer)
        if isinstance(ev, cmd.ProcessAnswer):
            task.process_id, task.pid = ev.process_id, ev.pid
    elif command == cmd.CLOSE:
        task.close_answered = ev.end


def _error_text(code: str | None, text: str | None) -> str:
    return " ".join(part for part in (code, text) if part)


# --- matching callbacks -------------------------------------------------------------------


def _set_windows(tasks: list[Task]) -> None:
    """A callback for a start at t must come in [t, t + 60 s], before the command connection
    ends, and before a later start announces the same controller port (port reuse, §7.2)."""
    by_target: dict[tuple[str | None, int | None], list[tuple[int, Task]]] = defaultdict(list)
    for task in tasks:
        if task.start_sent is not None and not task.start_failed:
            by_target[(task.expected_ip, task.callback_port)].append((task.start_sent, task))
    for same_port in by_target.values():
        same_port.sort(key=lambda e: e[0])
        for (sent, task), later in zip(same_port, [*same_port[1:], None], strict=True):
            assert task.cmd is not None  # a start is only ever seen on a command connection
            ends = [c for c in (task.cmd.conn.closed,) if c is not None]
            ends += [later[0]] if later is not None else []
            task.midstream_end = min(ends, default=END_OF_TIME)
            task.window_end = min(sent + CALLBACK_TIMEOUT_US, task.midstream_end)


def _candidate_time(ch: Channel) -> int:
    return ch.conn.syn if ch.conn.syn is not None else ch.conn.first_ts


def _callback_target(ch: Channel) -> Endpoint:
    return ch.controller if ch.controller is not None else ch.conn.server


def _match_callbacks(tasks: list[Task], channels: list[Channel]) -> list[Channel]:
    """Greedy in start order: each task takes the earliest free SYN in its window; a task
    with none at its controller IP takes one to its port from its remote's IP (NAT)."""
    candidates = [
        ch
        for ch in channels
        if (ch.kind == "api" and not _nothing_seen(ch)) or (ch.kind == "" and _no_data(ch))
    ]
    # Callbacks whose SYN was captured, and (few) those picked up mid-stream, by port and
    # the address a task looks for: the controller's (exact), or the remote's (address
    # translation). A task then looks only at its own (found in review: by port alone,
    # each task of many controllers walked the callbacks of them all).
    exact: _Candidates = defaultdict(list)
    translated: _Candidates = defaultdict(list)
    for i, ch in enumerate(candidates):
        entry = (_candidate_time(ch), _source(ch).port, i, ch)
        port, with_syn = _callback_target(ch).port, ch.conn.syn is not None
        exact[(port, _callback_target(ch).ip, with_syn)].append(entry)
        translated[(port, _source(ch).ip, with_syn)].append(entry)
    for entries in (*exact.values(), *translated.values()):
        entries.sort(key=lambda e: e[:3])  # nearest in time, then port order (DESIGN)
    taken: set[int] = set()
    waiting = sorted(
        (t for t in tasks if t.window_end is not None), key=lambda t: (t.start_sent, t.cmd_port)
    )
    for index, is_exact in ((exact, True), (translated, False)):
        for task in waiting:
            if task.callback is None and task.callback_port is not None:
                port = task.callback_port
                ip = task.expected_ip if is_exact else _remote_ip(task)
                by_syn, picked_up = index.get((port, ip, True)), index.get((port, ip, False))
                _take(task, by_syn or [], picked_up or [], taken, is_exact)
    return [ch for i, ch in enumerate(candidates) if i not in taken and ch.kind == "api"]


_Candidates = defaultdict[tuple[int, "str | None", bool], list[tuple[int, int, int, "Channel"]]]
# A task's note names this many other candidate callbacks at most (a port scan in its
# window would fill it with thousands).
NOTED_CANDIDATES = 5


def _remote_ip(task: Task) -> str:
    return (task.remote or "").rsplit(":", 1)[0].strip("[]")


def _nothing_seen(ch: Channel) -> bool:
    """A callback channel by its endpoint alone (one a start announced) with no SYN, no
    SYN-ACK and no byte captured: a lone RST or FIN tells no callback, and makes no row (as
    the plugin takes it; found in review: an RST-only connection made a `partial` row). A
    SYN-ACK tells the controller accepted one."""
    conn = ch.conn
    return conn.syn is None and conn.synack is None and conn.bytes_c2s == conn.bytes_s2c == 0


def _no_data(ch: Channel) -> bool:
    return ch.conn.bytes_c2s == 0 and ch.conn.bytes_s2c == 0 and ch.conn.syn is not None


def _take(
    task: Task,
    entries: list[tuple[int, int, int, Channel]],
    midstream: list[tuple[int, int, int, Channel]],
    taken: set[int],
    exact: bool,
) -> None:
    """The earliest free callback in the task's window: by its SYN, else (none captured)
    one picked up mid-stream before the port's next owner."""
    # A task waits with a window only when its start was seen, on a command connection:
    # when the start was sent and to which remote are known.
    start, end, remote = task.start_sent, task.window_end, task.remote
    assert start is not None and end is not None and remote is not None
    assert task.midstream_end is not None
    eligible = _eligible(task, entries, start, end, taken, exact)
    if not eligible:
        eligible = _eligible(task, midstream, start, task.midstream_end, taken, exact)
    if not eligible:
        return
    i, ch = eligible[0]
    taken.add(i)
    task.callback = ch
    if len(eligible) > 1:
        task.note_list.append(_candidates_note([c for _, c in eligible]))
    if not exact:
        target = _callback_target(ch)
        task.note_list.append(
            f"callback to {target} instead of {task.expected_ip}: address translation"
        )


def _eligible(
    task: Task,
    entries: list[tuple[int, int, int, Channel]],
    start: int,
    end: int,
    taken: set[int],
    exact: bool,
) -> list[tuple[int, Channel]]:
    """The first free entries in [start, end] for the task (the taken one and the noted ones,
    and one more that tells there are more than those)."""
    remote_ip = _remote_ip(task)
    lo = bisect.bisect_left(entries, (start,))
    eligible: list[tuple[int, Channel]] = []
    for k in range(lo, len(entries)):  # (not entries[lo:]: a copy per task is quadratic)
        when, _port, i, ch = entries[k]
        if when > end or len(eligible) > NOTED_CANDIDATES + 1:
            break
        if i in taken:
            continue
        target = _callback_target(ch)
        if (exact and target.ip == task.expected_ip) or (not exact and _source(ch).ip == remote_ip):
            eligible.append((i, ch))
    return eligible


def _candidates_note(eligible: list[Channel]) -> str:
    """The note of a task that had several candidates: the first was taken."""
    others = [ch.conn.id for ch in eligible[1 : NOTED_CANDIDATES + 1]]
    if len(eligible) > NOTED_CANDIDATES + 1:
        listed = ", ".join(others)
        return f"earliest of over {NOTED_CANDIDATES + 1} candidate callbacks (also {listed}, …)"
    return f"earliest of {len(eligible)} candidate callbacks (also {', '.join(others)})"


# --- callback channel ---------------------------------------------------------------------


def _partial_from_callback(ch: Channel) -> Task:
    target = _callback_target(ch)
    return Task(controller=target.ip, callback_port=target.port, callback=ch)


def _note_late_callbacks(tasks: list[Task], partial: list[Task]) -> None:
    """A callback SYN past a task's window (a slow start: the controller gave up, Z-REMOTE-
    118) stays a row of its own (DESIGN Matching), but both rows say so, so that the task's
    `callback-missing` reads as "too late", not as "never came"."""
    waiting: dict[tuple[str | None, int | None], list[tuple[int, Task]]] = defaultdict(list)
    for task in tasks:
        if task.callback is None and task.start_sent is not None and not task.start_failed:
            waiting[(task.expected_ip, task.callback_port)].append((task.start_sent, task))
    for starts in waiting.values():
        starts.sort(key=lambda e: e[0])
    for row in partial:
        syn = row.callback.conn.syn if row.callback is not None else None
        starts = waiting.get((row.controller, row.callback_port), [])
        before = bisect.bisect_left(starts, (syn,)) if syn is not None else 0
        if not before:
            continue
        sent, task = starts[before - 1]
        assert syn is not None and row.callback is not None and task.window_end is not None
        if syn <= task.window_end:
            continue  # in the window, yet not taken: another task's, or not this one's
        late = f"{(syn - sent) / 1e6:.3f} s after the start"
        task.note_list.append(f"callback {row.callback.conn.id} came {late}: too late")
        row.note_list.append(f"too late for task {task.process_id or task.cmd_conn} ({late})")


def _source(ch: Channel) -> Endpoint:
    return ch.remote if ch.remote is not None else ch.conn.client


def _fill_from_callback(task: Task, ch: Channel) -> None:
    conn = ch.conn
    source = _source(ch)
    task.callback_conn = conn.id
    task.callback_src_port = source.port
    task.callback_syn = conn.syn
    task.callback_established = conn.established
    task.callback_closed = conn.closed
    if task.remote is not None and source.ip != task.remote.rsplit(":", 1)[0].strip("[]"):
        task.note_list.append(f"callback from {source.ip}, not the remote's address")
    # The callback connection is where steps and log lines are said: captured, its counts
    # are known, zero when nothing was said.
    steps = log_lines = 0
    for ev in ch.events:
        if isinstance(ev, api.LogLine):
            log_lines += 1
        elif isinstance(ev, api.LifecycleCall) and ev.name.lower() == "step":
            steps += 1  # servers match method names case-insensitively (§6.8)
        else:
            _apply_api_event(task, ev)
    task.steps, task.log_lines = steps, log_lines


def _apply_api_event(task: Task, ev: Event) -> None:
    if isinstance(ev, api.Construct):
        task.job, task.task_id = ev.job, ev.task_id
    elif isinstance(ev, api.LifecycleCall):
        # Servers match method names case-insensitively (§6.8).
        if ev.name.lower() == "begin" and task.begin_sent is None:
            task.begin_sent = ev.start
    elif isinstance(ev, api.BeginAnswered):
        task.begin_answered = task.begin_answered or ev.end
    elif isinstance(ev, api.ReleaseAnswered):
        task.release_answered = task.release_answered or ev.end
    elif isinstance(ev, api.StepAnswered) and ev.exit_code is not None:
        task.exit_code, task.signal = ev.exit_code, ev.signal
    elif isinstance(ev, api.ExitCodePut):  # the last one seen wins, signal and all (DESIGN)
        task.exit_code, task.signal = ev.exit_code, None
    elif isinstance(ev, api.ApiError):
        task.errors.append((ev.end, _error_text(ev.code, ev.text)))
    elif isinstance(ev, DecodeError):
        task.decode_errors += 1


# --- status -------------------------------------------------------------------------------


def _finish(task: Task, capture_end: int | None) -> None:
    if task.errors:
        task.error = min(task.errors, key=lambda e: e[0])[1]
    task.status = _status(task, capture_end)
    if task.callback is None and task.status in NO_CALLBACK_STATUSES:
        # No callback connection ever came: nothing was counted, and that is known. A task
        # whose callback may merely lie outside the capture keeps its counts empty.
        task.steps = task.log_lines = 0
    task.notes = "; ".join(task.note_list)


def _status(task: Task, capture_end: int | None) -> str:
    """DESIGN "Status": the first rule that applies."""
    cb = task.callback.conn if task.callback is not None else None
    sent = task.start_sent  # None: the start was not captured
    if task.start_failed:
        return "start-failed"
    if cb is not None and cb.refused is not None:
        return "callback-refused"
    if cb is not None and _unanswered(cb, capture_end):
        return "callback-unanswered"
    if sent is not None and cb is None and _callback_overdue(task, sent, capture_end):
        return "callback-missing"
    if task.killed:
        return "killed"
    if _aborted(task, cb):
        return "aborted"
    if sent is None:
        return "partial"
    if task.close_answered is not None:
        return "completed"
    return "running"


# Later than any capture: every 60 s window has closed.
END_OF_TIME = 1 << 62


def end_decides(
    tasks: Iterable[Task], channels: Iterable[Channel], capture_end: int, ports: bool = False
) -> bool:
    """Whether a status could change if the capture went on after `capture_end` (a 60 s
    window still open there). `ports`: or a ports report's row, where a task still
    `running` holds its port until the end, and a lone SYN may yet be answered."""
    tasks = list(tasks)
    if any(t.status != _status(t, END_OF_TIME) for t in tasks):
        return True
    if not ports:
        return False
    return any(t.status == "running" for t in tasks) or any(
        ch.conn.state == "syn-unanswered"
        and ch.conn.syn_count == 1
        and ch.conn.syn is not None
        and _may_still_come(ch.conn.syn, capture_end)
        for ch in channels
    )


def _unanswered(cb: Connection, capture_end: int | None) -> bool:
    """DESIGN Status 3: the callback SYN was retransmitted, or 60 s passed, with no sign of
    an answer. A SYN-ACK the capture lost is no missing answer: data in either direction,
    or a FIN from the controller, means the connection was accepted. A single SYN the
    capture ended less than 60 s after may still be answered ("Cases at the edges"): the
    later rules decide, which without a kill, a reset or the close answered is `running`."""
    if cb.syn is None or callback_accepted(cb):
        return False
    return cb.syn_count > 1 or not _may_still_come(cb.syn, capture_end)


def callback_accepted(cb: Connection) -> bool:
    """The controller accepted the callback connection: a SYN-ACK, or (one the capture
    lost, or a handshake it never saw) data in either direction or a FIN. Not a SYN-ACK
    the task server went on sending SYNs after: it never got one (Status 3, "never
    answered", read from the side that waits for the answer)."""
    if cb.refused is not None or cb.state == "synack-unacked":
        return False
    fin = cb.client_fin is not None or cb.server_fin is not None
    return cb.synack is not None or bool(cb.bytes_c2s or cb.bytes_s2c) or fin


def _may_still_come(since: int, capture_end: int | None) -> bool:
    return capture_end is None or capture_end < since + CALLBACK_TIMEOUT_US


def _callback_overdue(task: Task, sent: int, capture_end: int | None) -> bool:
    """DESIGN Status 4: the start (sent at `sent`) was answered and 60 s passed without a
    SYN, or the command connection ended without one."""
    cmd_closed = task.cmd is not None and task.cmd.conn.closed is not None
    answered = task.start_answered is not None
    return cmd_closed or (answered and not _may_still_come(sent, capture_end))


def _aborted(task: Task, cb: Connection | None) -> bool:
    """A connection ended before the answer that ends it normally (DESIGN Status 6): the
    task server answers the Release, the remote scheduler the close."""
    task_server = task.callback.remote if task.callback is not None else None
    cmd_conn = task.cmd.conn if task.cmd is not None else None
    remote_scheduler = cmd_conn.server if cmd_conn is not None else None
    return _ended_before(cb, task.release_answered, task_server) or _ended_before(
        cmd_conn, task.close_answered, remote_scheduler
    )


def _ended_before(
    conn: Connection | None, normal_end: int | None, answerer: Endpoint | None
) -> bool:
    if conn is None or conn.closed is None:
        return False
    if normal_end is None or conn.closed >= normal_end:
        return normal_end is None
    # A FIN from the side that sent the answer follows the answer in its stream: captured
    # first, the answer was retransmitted, and the end was normal (found in review).
    return not _closed_by_fin_of(conn, answerer)


def _closed_by_fin_of(conn: Connection, side: Endpoint | None) -> bool:
    """The connection's first close was a FIN from `side` (not an RST)."""
    if side == conn.client:
        fin = conn.client_fin
    elif side == conn.server:
        fin = conn.server_fin
    else:
        return False
    return fin is not None and fin == conn.closed and (conn.rst is None or conn.rst > fin)


def _sort_key(task: Task) -> tuple[int, str]:
    known = [getattr(task, c) for c in TIME_COLUMNS if getattr(task, c) is not None]
    first = min(known) if known else 0
    return (first, task.cmd_conn or task.callback_conn or "")
