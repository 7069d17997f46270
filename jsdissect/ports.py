"""The firewall and port report: which ports the tasks used, what failed, what to open.

Answers DESIGN "Who uses it and why": the controller listens on a new port per task,
counting down from 59999 (PROTOCOL §2), so the range a firewall must open grows with the
number of parallel remote tasks, and a closed port lingers in TIME_WAIT for about two
minutes before the same 4-tuple can be used again.
"""

from __future__ import annotations

import bisect
import ipaddress
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass

from jsdissect.correlate import (
    CALLBACK_RANGE,
    CALLBACK_TIMEOUT_US,
    Channel,
    Task,
    callback_accepted,
)
from jsdissect.report import INTEGER, TEXT, TIME, Column, format_time, printable
from jsdissect.tcp import FAILED_STATES, UNANSWERED_STATES, Connection

TOP_PORT = 59999  # PROTOCOL §2: Used_ports::bind_free_port counts down from here
TIME_WAIT_US = 120_000_000  # DESIGN "Ports report": < 120 s apart may still be in TIME_WAIT
GIVE_UP_US = CALLBACK_TIMEOUT_US  # a lone SYN younger than this at the end may be answered
FAILED_CALLBACK = ("callback-unanswered", "callback-refused", "callback-missing")
COMMAND_FAILURES = {  # what a failed connection to a scheduler port says about its path
    "cmd-unanswered": "dropped (SYN unanswered: a firewall)",
    "cmd-refused": "refused (RST: a firewall rejecting, or no scheduler listening)",
}
TIME_FIELDS = ("first", "last", "syn", "closed", "at")  # µs values written as ISO times


@dataclass(frozen=True, slots=True)
class PortUse:
    controller: str
    port: int
    process_id: str | None
    remote: str | None
    first: int | None  # the start command (else the callback SYN): the port is held
    last: int | None  # callback closed, else when the controller gave up
    status: str
    syn: int | None  # callback SYN
    closed: int | None  # close of an accepted callback connection (TIME_WAIT may follow)
    source: str | None  # where the callback came from (behind NAT: not the remote)


# `ports --csv`: one row per port use, PortUse's fields in order (times as in the task table).
USE_COLUMNS = tuple(
    Column(name, TIME if name in TIME_FIELDS else INTEGER if name == "port" else TEXT)
    for name in PortUse.__dataclass_fields__
)


@dataclass(frozen=True, slots=True)
class Reuse:
    controller: str
    port: int
    previous_process_id: str | None
    process_id: str | None
    gap_ms: float  # previous callback connection closed → next start (else next SYN)


@dataclass(frozen=True, slots=True)
class Failure:
    what: str  # "callback-unanswered", "cmd-refused", …
    source: str  # who connected
    target: str  # where to
    at: int | None
    process_id: str | None


@dataclass(frozen=True, slots=True)
class Rule:
    host: str  # where the rule goes (a controller, or a remote scheduler)
    ports: str  # "59990-59999" or "4455"
    sources: tuple[str, ...]  # hosts seen in the part they need the rule for
    reason: str
    # Hosts whose connections to the port failed and that sent no command in the capture:
    # controllers kept out by the firewall, or scanners; the capture cannot tell which.
    unconfirmed: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class PortReport:
    uses: tuple[PortUse, ...]
    port_range: dict[str, tuple[int, int]]  # controller → (lowest, highest) port used
    peak: dict[str, tuple[int, int | None]]  # controller → (tasks in parallel, when)
    reuses: tuple[Reuse, ...]
    failures: tuple[Failure, ...]
    rules: tuple[Rule, ...]
    # Failed connections to the callback range between hosts seen in no JobScheduler
    # traffic: an ephemeral port of other traffic as likely as a callback; counted only.
    unattributed: int = 0


def port_report(
    tasks: Sequence[Task],
    channels: Sequence[Channel],
    scheduler_ports: Sequence[int],
    time_wait_us: int = TIME_WAIT_US,
    capture_end: int | None = None,
    capture_start: int | None = None,
) -> PortReport:
    """`capture_end`: the last packet's time (by default the last the channels saw); a
    task still running then holds its port until then at least. `capture_start`: the
    first (by default the first the channels saw): a task seen running from the start
    holds its port since then."""
    if capture_end is None:
        capture_end = max((ch.conn.last_ts for ch in channels), default=None)
    if capture_start is None:
        capture_start = min((ch.conn.first_ts for ch in channels), default=None)
    uses = tuple(
        _use(t, t.controller, t.callback_port, capture_start, capture_end)
        for t in tasks
        if t.callback_port is not None and t.controller
    )
    by_controller: dict[str, list[PortUse]] = defaultdict(list)
    for use in uses:
        by_controller[use.controller].append(use)
    ranges = {
        c: (min(u.port for u in us), max(u.port for u in us)) for c, us in by_controller.items()
    }
    peaks = {c: _peak(us) for c, us in by_controller.items()}
    failures = _callback_failures(tasks) + _command_failures(channels, scheduler_ports, capture_end)
    unmatched = _unmatched_callback_failures(tasks, channels, capture_end)
    controllers, remotes = _hosts(tasks, channels)
    attributed = [f for f in unmatched if _attributed(f, controllers, remotes)]
    failures += attributed
    rules = _controller_rules(uses, ranges, peaks) + _remote_rules(tasks, failures)
    return PortReport(
        uses=uses,
        port_range=ranges,
        peak=peaks,
        reuses=tuple(_reuses(uses, time_wait_us)),
        failures=tuple(sorted(failures, key=lambda f: (f.at or 0, f.target))),
        rules=tuple(rules),
        unattributed=len(unmatched) - len(attributed),
    )


def _use(
    task: Task, controller: str, port: int, capture_start: int | None, capture_end: int | None
) -> PortUse:
    """The span the controller holds the port (PROTOCOL §2): bound before the start is
    sent; released when the accepted callback connection closes, else when the controller
    stops waiting for one (it gives up 60 s after the start, or closes the task first). A
    port held when the capture begins or ends counts as held from or until then."""
    cb = task.callback.conn if task.callback is not None else None
    accepted = cb is not None and callback_accepted(cb)
    first = task.start_sent if task.start_sent is not None else task.callback_syn
    if first is None and cb is not None:  # picked up mid-stream: held before the capture
        first = capture_start if capture_start is not None else cb.first_ts
    last: int | None
    if task.start_failed:
        last = task.start_answered
    elif accepted:
        last = task.callback_closed if task.callback_closed is not None else capture_end
    else:
        waits = [first + GIVE_UP_US if first is not None else None, task.close_sent]
        last = min((t for t in waits if t is not None), default=None)
        if last is not None and capture_end is not None and first is not None:
            last = max(first, min(last, capture_end))
    return PortUse(
        controller=controller,
        port=port,
        process_id=task.process_id,
        remote=task.remote,
        first=first,
        last=last,
        status=task.status,
        syn=task.callback_syn,
        closed=task.callback_closed if accepted else None,
        source=_callback_source(task),
    )


def host_port(ip: str, port: int | str) -> str:
    """`ip:port`, with an IPv6 address in brackets."""
    return f"[{ip}]:{port}" if ":" in ip else f"{ip}:{port}"


def _callback_source(task: Task) -> str | None:
    if task.callback is not None:
        ch = task.callback
        return (ch.remote or ch.conn.client).ip
    return _address(task.remote) if task.remote else None


def _peak(uses: Sequence[PortUse]) -> tuple[int, int | None]:
    """Most tasks holding a callback port at once (sweep over start/end events)."""
    events = []
    for use in uses:
        if use.first is not None:
            events.append((use.first, 1))
            events.append(((use.last if use.last is not None else use.first) + 1, -1))
    best, when, current = 0, None, 0
    for at, delta in sorted(events):
        current += delta
        if current > best:
            best, when = current, at
    return best, when


def _reuses(uses: Sequence[PortUse], time_wait_us: int) -> list[Reuse]:
    """A port taken again while the previous callback connection on it may still be in
    TIME_WAIT: only a connection that was established and closed leaves one."""
    by_port: dict[tuple[str, int], list[tuple[int, PortUse]]] = defaultdict(list)
    for use in uses:
        if use.first is not None:
            by_port[(use.controller, use.port)].append((use.first, use))
    found = []
    for (controller, port), same in sorted(by_port.items()):
        same.sort(key=lambda e: e[0])
        # Against the connection closed last before the port was bound again, whichever
        # use it was: not the use just before (a refused or unanswered one leaves the
        # earlier TIME_WAIT running), nor the one started last (a shorter one started
        # later may have closed first).
        closes: list[tuple[int, int]] = []  # (when a connection closed, its use's place)
        for i, (first, use) in enumerate(same):
            again = first  # bound again before the start is sent: TIME_WAIT would fail that
            k = bisect.bisect_right(closes, (again, len(same)))
            if k:
                closed, j = closes[k - 1]
                if again - closed < time_wait_us:
                    gap = round((again - closed) / 1000, 3)
                    before = same[j][1].process_id
                    found.append(Reuse(controller, port, before, use.process_id, gap))
            if use.closed is not None:
                bisect.insort(closes, (use.closed, i))
    return found


def _callback_failures(tasks: Sequence[Task]) -> list[Failure]:
    """Where the callback connection really went (behind address translation not the
    remote and the controller), else where the start command said it would."""
    out = []
    for t in tasks:
        if t.status in FAILED_CALLBACK:
            source = _callback_source(t) or "?"
            if t.callback is not None:
                server = t.callback.conn.server
                target = host_port(server.ip, server.port)
            else:
                port = "?" if t.callback_port is None else t.callback_port  # none usable announced
                target = host_port(t.controller or "?", port)
            at = t.callback_syn if t.callback_syn is not None else t.start_sent
            out.append(Failure(t.status, source, target, at, t.process_id))
    return out


def _command_failures(
    channels: Sequence[Channel], scheduler_ports: Sequence[int], capture_end: int | None
) -> list[Failure]:
    """Refused or unanswered connections to a remote scheduler's port: the configured
    ones and those where a command channel was found by its content (§12)."""
    ports = set(scheduler_ports) | {ch.conn.server.port for ch in channels if ch.kind == "cmd"}
    return [
        _failure("cmd", ch.conn)
        for ch in channels
        if ch.conn.server.port in ports and _failed(ch.conn, capture_end)
    ]


def _unmatched_callback_failures(
    tasks: Sequence[Task], channels: Sequence[Channel], capture_end: int | None
) -> list[Failure]:
    """Refused or unanswered connections to the callback range (PROTOCOL §2) that no task
    took: their start not captured (a ring buffer's first file, a snaplen that cut it), or
    none was sent (a scan). Found in review: a firewall dropping callbacks showed nowhere
    when the starts fell before the capture."""
    taken = {t.callback.conn for t in tasks if t.callback is not None}
    lo, hi = CALLBACK_RANGE
    return [
        _failure("callback", ch.conn)
        for ch in channels
        if ch.conn not in taken
        and ch.kind != "cmd"
        and lo <= ch.conn.server.port <= hi
        and _failed(ch.conn, capture_end)
    ]


def _hosts(tasks: Sequence[Task], channels: Sequence[Channel]) -> tuple[set[str], set[str]]:
    """The controllers and the remotes (task processes' hosts) the capture shows."""
    controllers = {t.controller for t in tasks if t.controller}
    remotes = {_address(t.remote) for t in tasks if t.remote}
    for ch in channels:
        if ch.kind == "api" and ch.controller is not None and ch.remote is not None:
            controllers.add(ch.controller.ip)
            remotes.add(ch.remote.ip)
    return controllers, remotes


def _attributed(failure: Failure, controllers: set[str], remotes: set[str]) -> bool:
    """A failed connection to the callback range is a callback's when it went to a
    controller or came from a remote: the range lies inside Linux's ephemeral ports, and
    other traffic between other hosts lands there too (found in review)."""
    return _address(failure.target) in controllers or failure.source in remotes


def _address(endpoint: str) -> str:
    """The address of an "address:port" ("[v6]:port") as host_port writes it."""
    return endpoint.rsplit(":", 1)[0].strip("[]")


def _failed(conn: Connection, capture_end: int | None) -> bool:
    """Refused, or unanswered: a single SYN the capture ended less than 60 s after may
    still be answered, as for callbacks."""
    if conn.state not in FAILED_STATES or conn.syn is None:
        return False
    return conn.state not in UNANSWERED_STATES or not _may_be_answered(conn, capture_end)


def _failure(channel: str, conn: Connection) -> Failure:
    """A failed connection of no task; `channel` "cmd" or "callback"."""
    what = f"{channel}-refused" if conn.state == "refused" else f"{channel}-unanswered"
    server = host_port(conn.server.ip, conn.server.port)
    return Failure(what, conn.client.ip, server, conn.syn, None)


def _may_be_answered(conn: Connection, capture_end: int | None) -> bool:
    """One SYN, and the capture ended before a connect would have given up."""
    if conn.syn_count > 1 or conn.syn is None:
        return False
    return capture_end is None or capture_end - conn.syn < GIVE_UP_US


def _controller_rules(
    uses: Sequence[PortUse],
    ranges: dict[str, tuple[int, int]],
    peaks: dict[str, tuple[int, int | None]],
) -> list[Rule]:
    rules = []
    for controller, (low, _high) in sorted(ranges.items()):
        peak = peaks[controller][0]
        size = max(peak * 2, peak + 10)  # headroom: ports linger in TIME_WAIT, load varies
        bottom = min(TOP_PORT - size + 1, low)
        remotes = sorted_hosts({u.source for u in uses if u.controller == controller and u.source})
        reason = (
            f"peak of {peak} remote task(s) in parallel; each holds its own port, counted down "
            f"from {TOP_PORT}, and a freed port may be taken again at once; range sized "
            f"2x the peak (at least +10) and widened to cover every port seen (lowest {low})"
        )
        rules.append(Rule(controller, f"{bottom}-{TOP_PORT}", tuple(remotes), reason))
    return rules


def _remote_rules(tasks: Sequence[Task], failures: Sequence[Failure]) -> list[Rule]:
    """The scheduler port of every remote, from the controllers that sent it commands and
    from those whose connection to it failed (those most of all need the rule). A host
    that sent no command anywhere in the capture may be a scanner as well as a controller
    kept out: it is named apart (found in review: six refused SYNs made six controllers)."""
    controllers = {t.controller for t in tasks if t.controller and t.remote}
    sources: dict[str, set[str]] = defaultdict(set)
    for t in tasks:
        if t.remote and t.controller:
            sources[t.remote].add(t.controller)
    blocked: dict[str, set[str]] = defaultdict(set)
    for f in failures:
        if f.what in COMMAND_FAILURES:
            sources[f.target].add(f.source)
            blocked[f.target].add(COMMAND_FAILURES[f.what])
    rules = []
    for remote, hosts in sorted(sources.items(), key=lambda item: _host_key(item[0])):
        host, port = remote.rsplit(":", 1)
        reason = "the controllers send start_remote_task/close on the remote's scheduler port"
        if blocked[remote]:
            reason += "; connections to it were " + " and ".join(sorted(blocked[remote]))
        confirmed = sorted_hosts(hosts & controllers)
        unconfirmed = sorted_hosts(hosts - controllers)
        rules.append(Rule(host.strip("[]"), port, confirmed, reason, unconfirmed))
    return rules


def sorted_hosts(hosts: Iterable[str]) -> tuple[str, ...]:
    """Addresses in numeric order (10.0.0.5 before 10.0.0.10), IPv4 before IPv6."""
    return tuple(sorted(hosts, key=_host_key))


def _host_key(host: str) -> tuple[int, int, str]:
    """`host` an address, or "address:port" ("[v6]:port"): numeric order, text last."""
    address = host
    if host.startswith("["):
        address = host[1:].split("]", 1)[0]
    elif host.count(":") == 1:
        address = host.split(":", 1)[0]
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return (2, 0, host)
    return (ip.version // 6, int(ip), host)


def to_json(rep: PortReport) -> dict:
    def times(d: dict) -> dict:
        return {
            k: (format_time(v) if k in TIME_FIELDS and v is not None else v) for k, v in d.items()
        }

    return {
        "ports": [times(asdict(u)) for u in rep.uses],
        "range": {c: {"low": lo, "high": hi} for c, (lo, hi) in rep.port_range.items()},
        "peak": {
            c: {"tasks": n, "at": format_time(at) if at is not None else None}
            for c, (n, at) in rep.peak.items()
        },
        "time_wait_reuse": [asdict(r) for r in rep.reuses],
        "failures": [times(asdict(f)) for f in rep.failures],
        "rules": [asdict(r) for r in rep.rules],
        "unattributed_failures": rep.unattributed,
    }


def to_text(rep: PortReport) -> str:
    # Each heading says "none" when nothing is under it (found in review: empty headings).
    used_any = " none" if not rep.port_range else ""
    lines = [f"Callback ports (controller listens, remote connects):{used_any}"]
    for controller, (low, high) in sorted(rep.port_range.items()):
        n, at = rep.peak[controller]
        used = sorted({u.port for u in rep.uses if u.controller == controller}, reverse=True)
        when = f" at {format_time(at)}" if at is not None else ""
        lines.append(
            f"  {controller}: {len(used)} port(s) {low}-{high}, peak {n} in parallel{when}"
        )
        lines.append("    " + _wrap(", ".join(map(str, used))))
    lines.append("")
    lines += _reuse_lines(rep.reuses)
    lines.append("")
    lines.append("Failed connections:" + ("" if rep.failures else " none"))
    lines += _failure_lines(rep.failures)
    if rep.unattributed:
        lines.append(
            f"  (and {rep.unattributed} refused or unanswered connection(s) to ports"
            f" {CALLBACK_RANGE[0]}-{CALLBACK_RANGE[1]} between hosts seen in no JobScheduler"
            " traffic: other traffic's ephemeral ports, or callbacks of starts not captured)"
        )
    if any(f.what in ("callback-unanswered", "callback-refused") for f in rep.failures):
        lines.append(
            "  (callback SYN unanswered: a firewall drops it; refused: nothing listens or a"
            " firewall rejects it — the task fails after 60 s with Z-REMOTE-118)"
        )
    lines.append("")
    lines.append("Firewall rules to allow:" + ("" if rep.rules else " none"))
    for rule in rep.rules:
        lines += _rule_lines(rule)
    return "\n".join(lines) + "\n"


MAX_REUSE_LINES = 20  # ports listed by `ports`; --json lists every reuse
# Failures of no task to one target in a row, from this many on, are one line of text (a
# scan or a SYN flood would fill the screen); --json lists every one.
MIN_FAILURE_RUN = 3


def _rule_lines(rule: Rule) -> list[str]:
    others = ", ".join(rule.unconfirmed)
    if rule.sources or not rule.unconfirmed:
        sources = ", ".join(rule.sources) or "any"
        lines = [f"  on {rule.host}: incoming TCP {rule.ports} from {sources}"]
    else:
        lines = [f"  on {rule.host}: incoming TCP {rule.ports} from the controllers among {others}"]
    lines.append(f"      because {rule.reason}")
    if rule.unconfirmed:
        also = f"also from {others} if controllers: " if rule.sources else ""
        lines.append(
            f"      ({also}their connections failed and they sent no command in this capture:"
            " controllers kept out, or scanners)"
        )
    return lines


def _failure_lines(failures: Sequence[Failure]) -> list[str]:
    lines = []
    start = 0
    while start < len(failures):
        first = failures[start]
        end = start + 1
        while end < len(failures) and _same_run(first, failures[end]):
            end += 1
        if end - start < MIN_FAILURE_RUN:
            end = start + 1
        when = format_time(first.at) if first.at is not None else "?"
        if end - start == 1:
            task = f" task {printable(first.process_id)}" if first.process_id else ""  # as sent
            if not first.process_id and first.what in FAILED_CALLBACK:
                task = " (no start captured)"
            lines.append(f"  {when}  {first.what:<20} {first.source} → {first.target}{task}")
        else:
            run = failures[start:end]
            sources = {f.source for f in run}
            source = first.source if len(sources) == 1 else f"{len(sources)} sources"
            last = run[-1].at
            until = f" until {format_time(last)}" if last is not None else ""
            lines.append(f"  {when}  {first.what:<20} {source} → {first.target} ×{len(run)}{until}")
        start = end
    return lines


def _same_run(first: Failure, other: Failure) -> bool:
    """Another failure of no task like the first, to the same target."""
    same = (other.what, other.target) == (first.what, first.target)
    return same and first.process_id is None and other.process_id is None


def _reuse_lines(reuses: Sequence[Reuse]) -> list[str]:
    """Per port: how often it was reused within TIME_WAIT and the closest reuse; the ports
    reused most first (a controller counting down from 59999 reuses the same few ports
    all day, so one line per reuse would run to thousands)."""
    if not reuses:
        return ["Ports reused within TIME_WAIT: none"]
    by_port: dict[tuple[str, int], list[Reuse]] = {}
    for r in reuses:
        by_port.setdefault((r.controller, r.port), []).append(r)
    lines = [f"Ports reused within TIME_WAIT: {len(reuses)} time(s) on {len(by_port)} port(s)"]
    ranked = sorted(by_port.items(), key=lambda kv: (-len(kv[1]), kv[0]))
    for (controller, port), found in ranked[:MAX_REUSE_LINES]:
        r = min(found, key=lambda r: r.gap_ms)
        before, after = (printable(pid or "?") for pid in (r.previous_process_id, r.process_id))
        lines.append(
            f"  {host_port(controller, port)}: {len(found)} time(s), closest after"
            f" {r.gap_ms:.3f} ms (task {before} → {after})"
        )
    if len(ranked) > MAX_REUSE_LINES:
        lines.append(f"  … {len(ranked) - MAX_REUSE_LINES} more port(s): --json lists every reuse")
    return lines


def _wrap(text: str, width: int = 90) -> str:
    out, line = [], ""
    for word in text.split(" "):
        if line and len(line) + len(word) > width:
            out.append(line.rstrip())
            line = ""
        line += word + " "
    out.append(line.rstrip())
    return "\n    ".join(out)
