"""Compare jsdissect's task table with a capture's ground truth, and times with tshark.

The truth files come from the emulator and the crafted captures (schema in
captures/README.md). Times are checked against an independent oracle: tshark's frame
times of the packets that carry each event, found by their bytes.
"""

from __future__ import annotations

import json
import subprocess
from collections import defaultdict
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import Any

from conftest import require

# Truth fields compared as they are (DESIGN column = truth key).
COMPARED = (
    "process_id",
    "pid",
    "kind",
    "controller",
    "remote",
    "callback_port",
    "job",
    "task_id",
    "steps",
    "exit_code",
    "signal",
    "log_lines",
    "status",
    "error",
)


def load_truth(capture: Path) -> dict[str, Any]:
    name = capture.name.split(".")[0]
    return json.loads((capture.parent / f"{name}.truth.json").read_text())


def pair_rows(rows: list[dict], truth_tasks: list[dict]) -> list[tuple[dict, dict]]:
    """Truth task ↔ row: by process_id, else by controller and callback port in time order."""
    by_pid = {r["process_id"]: r for r in rows if r["process_id"] is not None}
    rest: dict[tuple, list[dict]] = defaultdict(list)
    for r in rows:
        if r["process_id"] is None:
            rest[(r["controller"], r["callback_port"])].append(r)
    pairs = []
    for t in truth_tasks:
        if t["process_id"] is not None:
            assert t["process_id"] in by_pid, f"no row for process_id {t['process_id']}"
            pairs.append((t, by_pid[t["process_id"]]))
        else:
            candidates = rest[(t["controller"], t["callback_port"])]
            assert candidates, f"no row for {t['controller']}:{t['callback_port']}"
            pairs.append((t, candidates.pop(0)))
    return pairs


def mismatches(truth_task: dict, row: dict) -> list[str]:
    out = []
    for key in COMPARED:
        if key in truth_task and truth_task[key] != row[key]:
            out.append(f"{key}: truth {truth_task[key]!r} != table {row[key]!r}")
    for column, value in (truth_task.get("times") or {}).items():
        if value != row[column]:
            out.append(f"{column}: truth {value!r} != table {row[column]!r}")
    wanted = truth_task.get("notes_contains")
    if wanted and wanted not in (row["notes"] or ""):
        out.append(f"notes {row['notes']!r} lack {wanted!r}")
    return out


# --- tshark oracle ------------------------------------------------------------------------


@dataclass(frozen=True)
class Packet:
    ts: int
    src: tuple[str, int]
    dst: tuple[str, int]
    flags: int
    payload: bytes


def tshark_packets(capture: Path) -> list[Packet]:
    tshark = require("tshark")
    fields = "frame.time_epoch ip.src ipv6.src tcp.srcport ip.dst ipv6.dst tcp.dstport"
    fields += " tcp.flags tcp.payload"
    cmd = [tshark, "-r", str(capture), "-Y", "tcp", "-T", "fields", "-E", "separator=|"]
    for f in fields.split():
        cmd += ["-e", f]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True, timeout=300).stdout
    packets = []
    for line in out.splitlines():
        t, s4, s6, sp, d4, d6, dp, flags, payload = line.split("|")
        packets.append(
            Packet(
                ts=int(Decimal(t) * 1_000_000),
                src=(s4 or s6, int(sp)),
                dst=(d4 or d6, int(dp)),
                flags=int(flags, 16),
                payload=bytes.fromhex(payload.replace(":", "")),
            )
        )
    return packets


def oracle_times(packets: list[Packet], cmd_client: tuple, remote: tuple, cb: tuple | None) -> dict:
    """The DESIGN "Exact times" of one task, read off in-order loopback packets."""
    times: dict[str, int | None] = {}
    c2r = [p for p in packets if p.src == cmd_client and p.dst == remote]
    r2c = [p for p in packets if p.src == remote and p.dst == cmd_client]
    times["cmd_syn"], times["cmd_established"] = _handshake(c2r, r2c)
    data = [p for p in c2r if p.payload.strip(b" ")]
    times["start_sent"] = _first(data, b"<remote_scheduler.start_remote_task")
    times["close_sent"] = _first(data, b"<remote_scheduler.remote_task.close")
    nuls = [p.ts for p in r2c for _ in range(p.payload.count(b"\x00"))]
    times["start_answered"] = nuls[0] if nuls else None
    times["close_answered"] = nuls[1] if len(nuls) > 1 and times["close_sent"] else None
    if cb is not None:
        t2c = [p for p in packets if p.src == cb[0] and p.dst == cb[1]]
        c2t = [p for p in packets if p.src == cb[1] and p.dst == cb[0]]
        times["callback_syn"], times["callback_established"] = _handshake(t2c, c2t)
        times["begin_sent"] = _first(c2t, b"\x00\x00\x00\x05begin")
        ends = [p.ts for p in t2c + c2t if p.flags & 0x05]
        times["callback_closed"] = min(ends) if ends else None
    return times


def _handshake(c2s: list[Packet], s2c: list[Packet]) -> tuple[int | None, int | None]:
    syns = [p.ts for p in c2s if p.flags & 0x02 and not p.flags & 0x10]
    synacks = [p.ts for p in s2c if p.flags & 0x12 == 0x12]
    if not syns or not synacks:
        return (syns[0] if syns else None), None
    after = [p.ts for p in c2s if p.ts >= synacks[0] and not p.flags & 0x02]
    return syns[0], after[0] if after else synacks[0]


def _first(packets: list[Packet], marker: bytes) -> int | None:
    return next((p.ts for p in packets if marker in p.payload), None)
