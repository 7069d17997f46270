"""The answers people came for: ports report, timeline picture, task log, phase summary."""

from __future__ import annotations

import csv
import dataclasses
import io
import itertools
import json
import re
import subprocess
import sys
from collections import defaultdict
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from truth import load_truth

import jsdissect
from jsdissect import plot, ports, report
from jsdissect.correlate import Task, correlate
from jsdissect.pipeline import Analysis
from jsdissect.ports import USE_COLUMNS, port_report

ROOT = Path(__file__).resolve().parent.parent
CAPTURES = ROOT / "captures"
FAILED_CALLBACK = {"callback-unanswered", "callback-refused", "callback-missing"}


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "jsdissect", *args], capture_output=True, text=True, timeout=300
    )


def truth_peak(truth: dict) -> dict[str, int]:
    """Most callback ports held at once per controller (start sent → callback closed),
    replayed from the emulator's event order."""
    controller = {i: t["controller"] for i, t in enumerate(truth["tasks"])}
    current: dict[str, int] = defaultdict(int)
    peak: dict[str, int] = defaultdict(int)
    for key, event in truth["events"]:
        c = controller[int(key)]
        if event == "start_sent":
            current[c] += 1
            peak[c] = max(peak[c], current[c])
        elif event == "callback_closed":
            current[c] -= 1
    return dict(peak)


@pytest.mark.parametrize("name", ["parallel_50.pcap", "failures.pcap", "demo.pcap"])
def test_ports_report_matches_truth(name: str) -> None:
    truth = load_truth(CAPTURES / name)
    out = cli("ports", str(CAPTURES / name), "--json", "-")
    assert out.returncode == 0, out.stderr
    data = json.loads(out.stdout)
    used = defaultdict(set)
    for t in truth["tasks"]:
        if t["status"] != "start-failed":
            used[t["controller"]].add(t["callback_port"])
    seen = defaultdict(set)
    for p in data["ports"]:
        if p["status"] != "start-failed":
            seen[p["controller"]].add(p["port"])
    assert seen == used
    failed = sorted(t["process_id"] for t in truth["tasks"] if t["status"] in FAILED_CALLBACK)
    listed = sorted(f["process_id"] for f in data["failures"] if f["what"] in FAILED_CALLBACK)
    assert listed == failed
    for controller, used_ports in used.items():
        (rule,) = [r for r in data["rules"] if r["host"] == controller]
        low, high = map(int, rule["ports"].split("-"))
        assert high == 59999 and all(low <= p <= high for p in used_ports)
    if name == "parallel_50.pcap":  # every task there ends with callback_closed
        peaks = {c: v["tasks"] for c, v in data["peak"].items()}
        assert peaks == truth_peak(truth)


def test_ports_report_flags_reuse_within_time_wait() -> None:
    result = jsdissect.analyze([CAPTURES / "failures.pcap"])
    rep = port_report(result.task_records, result.channels, (4455,))
    assert any(r.controller == "127.0.0.22" and r.port == 59999 for r in rep.reuses)
    assert not port_report(result.task_records, result.channels, (4455,), time_wait_us=0).reuses


def test_log_prints_exactly_the_lines_the_task_sent() -> None:
    for name in ("one_api.pcapng", "scala_api.pcap", "demo.pcap"):
        truth = load_truth(CAPTURES / name)
        for task in truth["tasks"]:
            if task["process_id"] is None:
                continue
            out = cli("log", str(CAPTURES / name), "--process-id", task["process_id"])
            assert out.returncode == 0, out.stderr
            lines = [line.split("  ", 1)[1] for line in out.stdout.splitlines() if "Z  " in line]
            assert [(report.LOG_LEVELS[lv], text) for lv, text in task["log"]] == [
                (rest[:6].strip(), rest[8:]) for rest in lines
            ], (name, task["process_id"])


def test_log_csv_and_json_hold_every_line_every_task_sent(tmp_path: Path) -> None:
    """DESIGN: every command takes --csv FILE / --json FILE the same way."""
    for name in ("one_api.pcapng", "demo.pcap"):
        truth = load_truth(CAPTURES / name)
        sent = {
            t["process_id"]: [(report.LOG_LEVELS[lv], text) for lv, text in t["log"]]
            for t in truth["tasks"]
            if t["log"]
        }
        table = tmp_path / f"{name}.csv"
        out = cli("log", str(CAPTURES / name), "--all", "--json", "-", "--csv", str(table))
        assert out.returncode == 0, out.stderr
        rows = json.loads(out.stdout)
        got: dict[str, list[tuple[str, str]]] = {}
        for row in rows:
            got.setdefault(row["process_id"], []).append((row["level"], row["text"]))
        assert got == sent, name
        with table.open(newline="", encoding="utf-8") as f:
            assert list(csv.DictReader(f)) == [
                {k: "" if v is None else str(v) for k, v in row.items()} for row in rows
            ]


def test_log_of_an_unknown_task_says_so() -> None:
    out = cli("log", str(CAPTURES / "demo.pcap"), "--process-id", "no-such-task")
    assert out.returncode == 1 and "no-such-task" in out.stderr


def drawn_rectangles(ax) -> list[tuple[float, float, float]]:
    """(row, left s, right s) of every rectangle the timeline drew."""
    out = []
    for collection in ax.collections:
        for path in collection.get_paths():
            (x0, y0), (x1, y1) = path.vertices.min(axis=0), path.vertices.max(axis=0)
            out.append((round((y0 + y1) / 2), x0, x1))
    return out


def test_timeline_png_has_one_bar_per_task(tmp_path: Path) -> None:
    capture = CAPTURES / "parallel_50.pcap"
    target = tmp_path / "timeline.png"
    out = cli("timeline", str(capture), "-o", str(target))
    assert out.returncode == 0, out.stderr
    from matplotlib.image import imread

    height, width, _ = imread(str(target)).shape
    assert width == 1200 and height > 600
    tasks = jsdissect.analyze([capture]).task_records
    ax = plot.figure(tasks).axes[0]
    rows = {row for row, _, _ in drawn_rectangles(ax)}
    assert len(rows) == len(tasks) == 50
    assert [t.get_text() for t in ax.get_yticklabels()] == [b.label for b in plot.bars(tasks)]
    first = report.format_time(min(t.cmd_syn for t in tasks if t.cmd_syn))
    assert ax.get_xlabel().endswith(f"{first[:10]} {first[11:-1]} UTC")


def synthetic_task(remote: str, n: int, start: int, phases: list[int]) -> Task:
    """A task whose phase boundaries fall `phases` µs apart from `start` on."""
    names = ["cmd_syn", "start_sent", "start_answered", "callback_established"]
    names += ["begin_answered", "release_answered", "close_answered"]
    times = [start]
    for step in phases:
        times.append(times[-1] + step)
    return Task(process_id=f"{remote}-{n}", remote=remote, **dict(zip(names, times, strict=False)))


def drawn_end(bar: plot.Bar) -> int:
    """Where the bar's drawing ends: every phase at least 1 ms wide."""
    return max(start + max(stop - start, 1_000) for _, start, stop in bar.segments)


def most_at_once(spans: list[tuple[int, int]]) -> int:
    """The most closed intervals [start, end] that share a moment."""
    edges = sorted([(s, 0) for s, _ in spans] + [(e, 1) for _, e in spans])  # starts first
    now = most = 0
    for _, is_end in edges:
        now += -1 if is_end else 1
        most = max(most, now)
    return most


@settings(max_examples=60, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.sampled_from(["10.0.0.1:4444", "10.0.0.2:4455", "10.0.0.3:4444"]),
            st.integers(0, 5_000_000),
            st.lists(st.integers(0, 400_000) | st.integers(0, 1_500), min_size=1, max_size=6),
        ),
        min_size=plot.MAX_OWN_ROWS + 1,
        max_size=250,
    )
)
def test_many_tasks_share_rows_as_few_as_ever_overlap(specs) -> None:
    tasks = [synthetic_task(r, n, start, p) for n, (r, start, p) in enumerate(specs)]
    drawn = plot.bars(tasks)
    assert sorted(b.label for b in drawn) == sorted(t.process_id for t in tasks)
    by_row: dict[int, list[plot.Bar]] = defaultdict(list)
    for b in drawn:
        by_row[b.row].append(b)
    for row, members in by_row.items():
        assert len({b.group for b in members}) == 1, f"row {row} mixes remotes"
        members.sort(key=lambda b: b.start)
        for before, after in itertools.pairwise(members):
            assert drawn_end(before) < after.start, f"row {row}: two bars over each other"
    for remote in {t.remote for t in tasks}:
        spans = [(b.start, drawn_end(b)) for b in drawn if b.group == remote]
        rows = {b.row for b in drawn if b.group == remote}
        assert len(rows) == most_at_once(spans)
    assert sorted(by_row) == list(range(len(by_row)))  # no empty row in between


def test_timeline_draws_a_collection_per_phase_whatever_the_task_count() -> None:
    """Its cost follows the tasks in arrays, not in artists: 10,000 tasks drew a patch each
    (and took a minute); the figure's artists must not grow with the tasks."""
    import numpy as np

    tasks = [
        synthetic_task(f"10.0.0.{n % 3}:4444", n, n * 37_000, [1_000, 9_000, 2_000, 50_000])
        for n in range(3_000)
    ]
    tasks[5] = dataclasses.replace(tasks[5], status="callback-missing")
    ax = plot.figure(tasks).axes[0]
    assert len(ax.collections) == len(plot.COLOURS) and not ax.patches
    assert len(ax.lines) == 1 + 3  # the failure marks, and a rule above each remote
    drawn = drawn_rectangles(ax)
    assert len(drawn) == sum(len(b.segments) for b in plot.bars(tasks))
    (marks,) = [line for line in ax.lines if line.get_marker() == "x"]
    assert len(marks.get_xdata()) == 1
    origin = min(t.cmd_syn for t in tasks)
    assert np.isclose(marks.get_xdata()[0], (tasks[5].begin_answered - origin) / 1e6)


def test_timeline_labels_from_the_wire_are_drawn_as_text(tmp_path: Path) -> None:
    """A process id or remote with `$…$` started matplotlib's mathtext, which failed on
    `\\frac{1}` (and would have set `$a$` in italics). Found in review."""
    task = dataclasses.replace(
        synthetic_task("$a$:4444", 0, 0, [500, 500, 500]), process_id="$\\frac{1}$"
    )
    figure = plot.figure([task])
    figure.savefig(tmp_path / "t.png")
    figure.savefig(tmp_path / "t.svg")
    ax = figure.axes[0]
    assert [t.get_text() for t in ax.get_yticklabels()] == ["$\\frac{1}$"]
    assert "$a$:4444" in [t.get_text() for t in ax.texts]


def test_an_empty_timeline_names_no_first_event() -> None:
    ax = plot.figure([]).axes[0]
    assert ax.get_xlabel() == "seconds since the first task event"


def test_timeline_html_lists_rows_in_order() -> None:
    # The later a task starts, the earlier its number: the order is the bars', not the input's.
    tasks = [synthetic_task("10.0.0.9:4444", n, (10 - n) * 1_000, [500]) for n in range(10)]
    tasks[0] = synthetic_task("10.0.0.9:4444", 0, 0, [0, 0, 500])  # no bar in "connecting"
    order = [b.row_name for b in plot.bars(tasks)]
    assert order == ["10.0.0.9:4444-0", *(f"10.0.0.9:4444-{n}" for n in range(9, 0, -1))]
    layout = plot.html_figure(tasks).layout
    assert list(layout.yaxis.categoryarray) == [f"10.0.0.9:4444 {name}" for name in order]


def test_timeline_html_and_bad_extension(tmp_path: Path) -> None:
    page = tmp_path / "t.html"
    assert cli("timeline", str(CAPTURES / "demo.pcap"), "-o", str(page)).returncode == 0
    assert "plotly" in page.read_text()[:200_000].lower()
    bad = cli("timeline", str(CAPTURES / "demo.pcap"), "-o", str(tmp_path / "t.jpg"))
    assert bad.returncode == 2 and not (tmp_path / "t.jpg").exists()


def test_timeline_pictures_go_through_links_and_into_named_pipes(tmp_path: Path) -> None:
    """Found in review: .png and .svg replaced a symbolic link, or a named pipe, with a
    file of their own; they are written as every other output is."""
    import os
    import threading

    target = tmp_path / "real.svg"
    link = tmp_path / "link.svg"
    link.symlink_to(target)
    assert cli("timeline", str(CAPTURES / "demo.pcap"), "-o", str(link)).returncode == 0
    assert link.is_symlink() and target.read_text().lstrip().startswith("<?xml")
    pipe = tmp_path / "pipe.png"
    os.mkfifo(pipe)
    got: list[bytes] = []
    reader = threading.Thread(target=lambda: got.append(pipe.read_bytes()))
    reader.start()
    out = cli("timeline", str(CAPTURES / "demo.pcap"), "-o", str(pipe))
    reader.join(timeout=60)
    assert out.returncode == 0, out.stderr
    assert got and got[0].startswith(b"\x89PNG") and pipe.is_fifo()


# --- the timeline at the edges of a capture, and over days (a review's findings) ----------


def test_a_task_not_ended_is_drawn_until_the_capture_ends(tmp_path: Path) -> None:
    """Found in review: a task not ended was drawn up to its last phase boundary only (a
    task mid-step all through the capture showed as an 84 ms sliver; the wait for a callback
    not at all). Cut at 40 s: 3001 is mid-step, 3002 completed, 3003's callback is
    unanswered (the controller waits 60 s), 3004's callback has its one SYN (`running`)."""
    from pathological import BASE_TIME_US, S

    specs = [
        (0, _task("3001", 1, keepalive_spaces=3, callback_port=59999)),
        (20 * S, _task("3002", 2, callback_port=59998)),
        (30 * S, _task("3003", 3, callback_port=59997, callback_mode="unanswered")),
        (35 * S, _task("3004", 4, callback_port=59996, callback_mode="syn_only")),
    ]
    cut = _played(tmp_path, "timeline_cut", specs, keep=(None, BASE_TIME_US + 40 * S))
    result = jsdissect.analyze([cut])
    tasks = {t.process_id: t for t in result.task_records}
    end = result.capture_end
    assert end is not None and tasks["3001"].status == "running"
    drawn = plot.bars(result.task_records)  # the end of the tasks' own connections: `end`
    by_id = {b.label: b for b in drawn}
    assert by_id["3001"].segments[-1] == ("run", tasks["3001"].begin_answered, end)
    for pid in ("3003", "3004"):  # waiting for the callback until the end
        assert by_id[pid].segments[-1] == ("callback", tasks[pid].start_answered, end)
    assert by_id["3002"].end == tasks["3002"].close_answered  # ended: as it was
    assert plot.bars(result.task_records, end) == drawn
    # The picture draws them so: the run phase's rectangles reach the capture's end.
    ax = plot.figure(result.task_records, end).axes[0]
    origin = min(t.cmd_syn for t in tasks.values())
    rights = [x1 for _, _, x1 in drawn_rectangles(ax)]
    assert max(rights) == pytest.approx((end - origin) / 1e6)
    (run,) = [d for d in plot.html_figure(result.task_records, end).data if d.name == "run"]
    drawn_to = max(b + x for b, x in zip(run.base, run.x, strict=True))
    assert drawn_to == pytest.approx(end / 1000, abs=0.001)  # ms since the epoch


def test_the_timeline_command_draws_a_running_task_to_the_capture_s_last_packet(
    tmp_path: Path,
) -> None:
    """The CLI passes the capture's end as `ports` takes it: past the filter's last packet
    (an unrelated one, 5 s later, in a second file), not the tasks' own last packet."""
    from pathological import BASE_TIME_US, S
    from pcapfiles import pcap_file
    from scapy.layers.inet import IP, TCP
    from scapy.layers.l2 import Ether

    task = _task("3001", 1, keepalive_spaces=3, callback_port=59999)
    cut = _played(tmp_path, "running", [(0, task)], keep=(None, BASE_TIME_US + 40 * S))
    last = BASE_TIME_US + 45 * S
    other = bytes(Ether() / IP(src="10.9.0.1", dst="10.9.0.2") / TCP(sport=1234, dport=80))
    later = tmp_path / "later.pcap"
    later.write_bytes(pcap_file(1, [(last * 1000, other, len(other))]))
    page = tmp_path / "t.html"
    out = cli("timeline", str(cut), str(later), "-o", str(page), "-q")
    assert out.returncode == 0, out.stderr
    text = page.read_text()
    at = text.index('"name":"run"')
    start = text.rindex('{"base":', 0, at)
    run = json.loads(text[start : text.index('"type":"bar"}', at) + len('"type":"bar"}')])
    (base,), (width,) = run["base"], run["x"]
    assert base + width == pytest.approx(last / 1000, abs=0.001)  # ms since the epoch


def test_shared_rows_count_a_task_running_until_the_end(tmp_path: Path) -> None:
    """Found in review: 6001 runs all through the capture beside 69 short tasks, four at
    most at once (as the ports report says); drawn as ended early, it gave its row away to
    later tasks and the picture showed three rows."""
    from pathological import BASE_TIME_US, S

    specs = [(0, _task("6001", 1, keepalive_spaces=3, callback_port=59999))]
    specs += [
        (1 * S + i * S // 2, _task(str(6100 + i), 10 + i, callback_port=59998 - i % 5))
        for i in range(69)
    ]
    cut = _played(tmp_path, "timeline_rows", specs, keep=(None, BASE_TIME_US + 40 * S))
    result = jsdissect.analyze([cut])
    assert len(result.task_records) == 70 > plot.MAX_OWN_ROWS
    drawn = plot.bars(result.task_records)
    (long,) = [b for b in drawn if b.label == "6001"]
    assert long.end == result.capture_end
    assert [b.label for b in drawn if b.row == long.row] == ["6001"]
    (peak,) = port_report(result.task_records, result.channels, (4455,)).peak.values()
    assert len({b.row for b in drawn}) == peak[0] == 4
    assert plot.bars(result.task_records, result.capture_end) == drawn


def test_a_timeline_phase_named_as_a_duration_spans_the_same_times() -> None:
    """Found in review: the picture's `startup`, `connect` and `close` were other spans than
    the task table's startup_ms, connect_ms and close_ms (the hover said startup 1.5 ms
    where the table said 153 ms). A phase may share a duration's name only with its span."""
    shared = [
        (name, begin, end) for name, begin, end in plot.PHASES if f"{name}_ms" in report.DURATIONS
    ]
    assert [name for name, _, _ in shared] == ["spawn", "run"]
    for name, begin, end in shared:
        assert report.DURATIONS[f"{name}_ms"] == (begin, end)


def test_a_capture_begun_mid_task_names_each_span_for_its_phase(tmp_path: Path) -> None:
    """Found in review: a span before which no time was captured was named `connect`
    (grey), whatever phase it was. Begun at 30 ms, the capture has the task's callback from
    its SYN on, and of its command connection the close."""
    from pathological import BASE_TIME_US, MS

    late = _played(
        tmp_path, "timeline_late", [(0, _task("7001", 1))], keep=(BASE_TIME_US + 30 * MS, None)
    )
    tasks = jsdissect.analyze([late]).task_records
    phases = {b.label: [s[0] for s in b.segments] for b in plot.bars(tasks)}
    (callback,) = [t for t in tasks if t.process_id is None]
    assert phases[callback.callback_conn] == ["callback", "begin", "run", "closing"]
    assert phases["7001"] == ["closing"]  # the close sent, and answered
    # Without the command connection's SYN, the first span is the spawn.
    spawned = synthetic_task("10.0.0.1:4444", 0, 0, [500, 500, 500])
    spawned = dataclasses.replace(spawned, cmd_syn=None)
    (bar,) = plot.bars([spawned])
    assert [s[0] for s in bar.segments] == ["spawn", "callback"]
    assert bar.start == spawned.start_sent


def test_a_timeline_over_days_draws_every_phase_at_least_a_pixel_wide() -> None:
    """Found in review: over 3.5 days a 1 ms minimum is far below a pixel, and the PNG
    showed almost no bar. Each phase is drawn at least a pixel of the axes wide."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    day = 86_400_000_000
    tasks = [
        synthetic_task(
            f"10.0.0.{n % 2}:4444",
            n,
            day // 2 + n * 150_000_000,
            [500, 30_000, 2_000, 50_000, 900_000, 300_000],
        )
        for n in range(2_000)
    ]
    figure = plot.figure(tasks)
    FigureCanvasAgg(figure).draw()  # lays the axes out: their width in pixels is known
    ax = figure.axes[0]
    span = max(t.close_answered for t in tasks) - min(t.cmd_syn for t in tasks)
    assert span > 3 * day
    x_left, x_right = ax.get_xlim()
    axes_px = ax.get_window_extent().width
    pixel_s = (x_right - x_left) / axes_px
    widths = [x1 - x0 for _, x0, x1 in drawn_rectangles(ax)]
    assert len(widths) == 6 * len(tasks)
    assert min(widths) >= pixel_s
    assert min(widths) >= plot.min_width_us(span) / 1e6 * (1 - 1e-9)  # (float rounding)
    assert min(widths) < 3 * pixel_s  # about a pixel, not more


def test_summary_distribution_per_remote() -> None:
    rows = [report.task_row(t) for t in jsdissect.analyze([CAPTURES / "demo.pcap"]).task_records]
    dist = {(d["remote"], d["phase"]): d for d in report.phase_distribution(rows)}
    for remote in {r["remote"] for r in rows}:
        runs = sorted(r["run_ms"] for r in rows if r["remote"] == remote and r["run_ms"])
        d = dist[(remote, "run")]
        assert (d["count"], d["max_ms"]) == (len(runs), runs[-1])
        middle = len(runs) // 2  # the median of an even count is the mean of the middle two
        median = runs[middle] if len(runs) % 2 else (runs[middle - 1] + runs[middle]) / 2
        assert d["median_ms"] == pytest.approx(median, abs=0.0005)
    out = cli("summary", str(CAPTURES / "demo.pcap"))
    assert out.returncode == 0 and "Slowest" in out.stdout and "p95_ms" in out.stdout


def test_time_wait_reuse_needs_a_closed_callback_and_rules_name_the_real_source() -> None:
    from channels import C_IP, R_IP, S, callback, command

    from jsdissect.correlate import correlate
    from jsdissect.tcp import Endpoint

    nat_source = "192.168.9.9"
    cb = callback("cb", Endpoint(nat_source, 50002), Endpoint(C_IP, 59999), 8 * S)
    cb = type(cb)(
        type(cb.conn)(
            **{**{f: getattr(cb.conn, f) for f in cb.conn.__dataclass_fields__}, "closed": 9 * S}
        ),
        cb.kind,
        cb.events,
        cb.controller,
        cb.remote,
    )
    chans = [
        command("A", 40001, 1 * S, 59999, "1"),  # its callback never came
        command("B", 40002, 7 * S, 59999, "2"),
        cb,
    ]
    tasks = correlate(chans, 200 * S)
    rep = port_report(tasks, chans, (4455,))
    assert rep.reuses == ()  # task 1 never had a connection on the port: no TIME_WAIT
    (rule,) = [r for r in rep.rules if r.host == C_IP]
    assert set(rule.sources) == {nat_source, R_IP}


def test_rules_name_apart_the_hosts_that_only_failed_to_connect() -> None:
    """A remote's rule is for the controllers: hosts whose connections to its port failed
    and that sent no command anywhere may be scanners, so they are named apart, and every
    list is in numeric address order. Found in review (six refused SYNs, six "controllers",
    10.0.0.10 before 10.0.0.5)."""
    from channels import R_IP, S, command, conn

    from jsdissect.correlate import Channel
    from jsdissect.tcp import Endpoint

    def refused(i: int, source: str) -> Channel:
        attempt = conn(f"X{i}", Endpoint(source, 41000 + i), Endpoint(R_IP, 4455), 5 * S + i)
        attempt = type(attempt)(
            **{
                **{f: getattr(attempt, f) for f in attempt.__dataclass_fields__},
                **dict(synack=None, established=None, refused=5 * S + i + 50, rst_by=1),
                **dict(rst=5 * S + i + 50, closed=5 * S + i + 50, state="refused", packets=2),
            }
        )
        return Channel(attempt, "cmd", ())

    scanners = ["10.0.0.10", "10.0.0.9", "192.168.1.2", "10.0.0.100"]
    chans = [command("A", 40001, 1 * S, 59999, "1")]
    chans += [refused(i, ip) for i, ip in enumerate(scanners)]
    rep = port_report(correlate(chans, 200 * S), chans, (4455,))
    (rule,) = [r for r in rep.rules if r.host == R_IP]
    assert rule.sources == ("10.1.0.10",)  # the controller of task 1
    assert rule.unconfirmed == ("10.0.0.9", "10.0.0.10", "10.0.0.100", "192.168.1.2")
    text = ports.to_text(rep)
    assert "from 10.1.0.10\n" in text and "also from 10.0.0.9, 10.0.0.10," in text
    assert json.loads(json.dumps(ports.to_json(rep)))["rules"][-1]["unconfirmed"] == list(
        rule.unconfirmed
    )
    only_failed = port_report([], chans[1:], (4455,))
    (rule,) = only_failed.rules
    assert (rule.sources, len(rule.unconfirmed)) == ((), 4)
    assert "from the controllers among 10.0.0.9," in ports.to_text(only_failed)


def test_failed_callbacks_of_no_captured_start_are_listed() -> None:
    """A refused or dropped connection to the callback range (PROTOCOL §2) that no task took
    is listed as such (its start fell before the capture, or a snaplen cut it); one a task
    took is listed once, with its task, and a lone SYN the capture ended just after may
    still be answered. Found in review: they showed only in `connections`."""
    from channels import C_IP, R_IP, S, command, conn

    from jsdissect.correlate import Channel
    from jsdissect.tcp import Endpoint

    def failed(cid: str, port: int, syn: int, state: str, syns: int = 1) -> Channel:
        attempt = conn(cid, Endpoint(R_IP, 50000 + port % 100), Endpoint(C_IP, port), syn)
        fields = {f: getattr(attempt, f) for f in attempt.__dataclass_fields__}
        fields.update(synack=None, established=None, state=state, syn_count=syns)
        if state == "refused":
            fields.update(refused=syn + 50, rst=syn + 50, rst_by=1, closed=syn + 50)
        return Channel(type(attempt)(**fields), "", ())

    chans = [
        command("A", 40001, 1 * S, 59999, "1"),
        failed("own", 59999, 2 * S, "refused"),  # task 1's callback
        failed("early", 59990, 3 * S, "refused"),
        failed("dropped", 59980, 4 * S, "syn-unanswered", syns=3),
        failed("outside", 40000, 5 * S, "refused"),  # not the callback range
        failed("late", 59970, 199 * S, "syn-unanswered"),  # may still be answered
        Channel(  # other traffic between other hosts: counted, not listed (found in review)
            conn(
                "other",
                Endpoint("10.9.9.9", 51000),
                Endpoint("10.9.9.8", 59500),
                6 * S,
                synack=None,
                established=None,
                state="refused",
                refused=6 * S + 50,
                rst=6 * S + 50,
                rst_by=1,
                closed=6 * S + 50,
            ),
            "",
            (),
        ),
    ]
    rep = port_report(correlate(chans, 200 * S), chans, (4455,), capture_end=200 * S)
    assert [(f.what, f.target, f.process_id) for f in rep.failures] == [
        ("callback-refused", f"{C_IP}:59999", "1"),
        ("callback-refused", f"{C_IP}:59990", None),
        ("callback-unanswered", f"{C_IP}:59980", None),
    ]
    text = ports.to_text(rep)
    assert f"{C_IP}:59990 (no start captured)" in text and f"{C_IP}:59999 task 1" in text
    assert rep.unattributed == 1 and "10.9.9.8" not in text
    assert "(and 1 refused or unanswered connection(s) to ports 59000-59999" in text


def test_a_callback_picked_up_mid_stream_is_listed_from_the_task_to_the_controller(
    tmp_path: Path,
) -> None:
    """Without the SYN, tcp takes the higher port for the client's; a callback's controller
    port is high too (counted down from 59999), so `connections` named the controller the
    client. Its messages tell the sides: the row follows them, bytes and all."""
    from crafted_captures import CONTROLLER_IP, REMOTE_IP, Capture, picked_up_in_the_last_step

    picked_up_in_the_last_step(cap := Capture())  # 45000 → 59999, no handshake
    result = jsdissect.analyze([cap.write(tmp_path / "mid.pcap")])
    (channel,) = result.channels
    assert str(channel.conn.client) == f"{CONTROLLER_IP}:59999"  # tcp's guess
    row = report.connection_row(channel)
    assert (row["client"], row["server"]) == (f"{REMOTE_IP}:45000", f"{CONTROLLER_IP}:59999")
    assert (row["bytes_c2s"], row["bytes_s2c"]) == (channel.conn.bytes_s2c, channel.conn.bytes_c2s)
    assert row["bytes_c2s"] > row["bytes_s2c"]  # the task sent the log line and the step answer


def test_a_time_of_zero_is_shown_as_a_time_in_the_ports_report() -> None:
    """1970-01-01T00:00:00Z is a time like any other (a capture rebased to 0 by editcap),
    not a missing one. Found in review."""
    from channels import S, command

    from jsdissect import ports

    chans = [command("A", 40001, 0, 59999, "1")]  # its callback never came
    rep = port_report(correlate(chans, 200 * S), chans, (4455,))
    epoch = "1970-01-01T00:00:00.000000Z"
    assert [p["at"] for p in ports.to_json(rep)["peak"].values()] == [epoch]
    assert [f["at"] for f in ports.to_json(rep)["failures"]] == [epoch]
    text = ports.to_text(rep)
    assert f"peak 1 in parallel at {epoch}" in text and f"  {epoch}  callback-missing" in text


def test_a_missing_callback_to_an_unannounced_port_names_the_port_unknown() -> None:
    from channels import C_IP, S, command

    from jsdissect.correlate import correlate

    # start_remote_task without a usable tcp_port (absent, or not a number): the decoder
    # gives None, and the task's callback never comes.
    chans = [command("A", 40001, 1 * S, None, "1")]
    tasks = correlate(chans, 200 * S)
    (failure,) = port_report(tasks, chans, (4455,)).failures
    assert (failure.what, failure.target) == ("callback-missing", f"{C_IP}:?")


def test_distribution_median_of_an_even_count_is_the_mean_of_the_middle_two() -> None:
    base = dict.fromkeys((c.name for c in report.TASK_COLUMNS), None)
    rows = [base | {"remote": "r:4455", "run_ms": ms} for ms in (10.0, 1.0, 3.0, 2.0)]
    (run,) = [d for d in report.phase_distribution(rows) if d["phase"] == "run"]
    assert (run["count"], run["median_ms"], run["max_ms"]) == (4, 2.5, 10.0)
    assert run["p95_ms"] == 10.0  # nearest rank: under 20 values it is the maximum
    assert "run_ms median 2.500" in report.task_summary(
        [r | {"status": "completed", "startup_ms": None} for r in rows]
    )


def test_an_empty_ports_report_says_none_under_each_heading(tmp_path: Path) -> None:
    # Found in review: a capture without tasks printed headings with nothing under them.
    empty = tmp_path / "empty.pcap"
    empty.write_bytes((CAPTURES / "demo.pcap").read_bytes()[:24])  # the file header alone
    out = cli("ports", str(empty), "-q")
    assert out.returncode == 0, out.stderr
    headings = [line for line in out.stdout.splitlines() if line and not line[0].isspace()]
    assert len(headings) == 4 and all(line.endswith(": none") for line in headings)
    summary = cli("summary", str(empty))
    assert summary.stdout.splitlines()[-1].startswith("No JobScheduler task found (looked at")


README_TABLES = {  # README's column tables: the text before each, and the columns it lists
    "The columns, in order:\n\n|": report.TASK_COLUMNS,
    "`connections`: one row": report.CONNECTION_COLUMNS,
    "`messages`: one row": report.MESSAGE_COLUMNS,
    "`ports --csv`: one row": USE_COLUMNS,
    "`log --csv`/`--json`: one row": report.LOG_COLUMNS,
    "`summary --csv`/`--json`/`--parquet`:": report.DISTRIBUTION_COLUMNS,
}


@pytest.mark.parametrize("heading", README_TABLES)
def test_readme_lists_each_table_s_columns_in_order(heading: str) -> None:
    # Found in review: two tables listed their columns out of the order the files have.
    readme = (CAPTURES.parent / "README.md").read_text(encoding="utf-8")
    after = readme[readme.index(heading) :]
    rows = after[after.index("| column |") :].split("\n\n", 1)[0].splitlines()[2:]
    listed = [name for row in rows for name in re.findall(r"`([a-z_0-9]+)`", row.split("|")[1])]
    assert listed == [c.name for c in README_TABLES[heading]]


def test_the_summary_line_counts_every_status() -> None:
    # Found in review: two tasks running at the end read "2 task(s): 0 completed, 0 failed".
    base = dict.fromkeys((c.name for c in report.TASK_COLUMNS), None)
    statuses = ["running", "completed", "killed", "partial", "running", "start-failed"]
    line = report.task_summary([base | {"status": s} for s in statuses])
    assert line == "6 task(s): 1 completed, 2 failed, 2 running, 1 partial"


# --- crafted tasks in parallel (a review's findings on the ports report) -------------------


def _played(
    tmp_path: Path, name: str, specs_at: list, keep=(None, None), fmt="pcap", attempts=()
) -> Path:
    """Tasks each played on its own clock from its offset (µs), merged into one capture;
    `attempts`: (offset, client port, server port, mode, SYN retransmission delays) of
    bare connection attempts from the controller to the remote."""
    import random

    import pathological as patho

    rng = random.Random(7)
    merged, tasks = patho.Capture(), []
    for offset, spec in specs_at:
        cap = patho.Capture(patho.BASE_TIME_US + offset)
        tasks.append(patho.Task(cap, spec, rng).run())
        merged.segments += cap.segments
        merged.conversations += cap.conversations
    for offset, cport, sport, mode, retransmits in attempts:
        cap = patho.Capture(patho.BASE_TIME_US + offset)
        conv = patho.Conversation(
            cap, f"try{cport}", ("10.1.0.10", cport), ("10.1.0.20", sport), cport, sport
        )
        conv.handshake(retransmits, mode)
        merged.segments += cap.segments
    merged.segments.sort(key=lambda s: s.t)
    scenario = patho.Scenario(name, name, merged, tasks, keep=keep, well_formed=False, fmt=fmt)
    path = tmp_path / scenario.filename
    patho.write_frames(
        path, scenario.frames(), scenario.link, scenario.fmt, scenario.snaplen, scenario.nano
    )
    return path


def _ports(path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return cli("ports", str(path), "-q", *args)


def test_ports_csv_has_a_row_per_port_use_as_the_json_lists_them(tmp_path: Path) -> None:
    """DESIGN: every command takes --csv FILE / --json FILE the same way."""
    table = tmp_path / "ports.csv"
    out = _ports(CAPTURES / "demo.pcap", "--csv", str(table), "--json", "-")
    assert out.returncode == 0, out.stderr
    listed = json.loads(out.stdout)["ports"]
    with table.open(newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    truth = load_truth(CAPTURES / "demo.pcap")["tasks"]
    assert {(r["process_id"], int(r["port"])) for r in rows} == {
        (t["process_id"], t["callback_port"]) for t in truth
    }
    assert rows == [{k: "" if v is None else str(v) for k, v in use.items()} for use in listed]
    both = _ports(CAPTURES / "demo.pcap", "--csv", "-", "--json", "-")
    assert both.returncode == 2 and "only one of" in both.stderr


def test_ports_report_goes_where_other_commands_put_their_summary(tmp_path: Path) -> None:
    """Found in review: with `--csv -` the report (failed connections, firewall rules) was
    lost, and with a file and -q it still showed. As `summary` does: to stderr when the
    data goes to stdout, to stdout otherwise, and -q leaves it out when data was written."""
    report_text = cli("ports", str(CAPTURES / "demo.pcap")).stdout
    assert "Firewall rules" in report_text
    piped = cli("ports", str(CAPTURES / "demo.pcap"), "--csv", "-")
    assert piped.stdout.startswith("controller,port,") and piped.stderr == report_text
    written = cli("ports", str(CAPTURES / "demo.pcap"), "--csv", str(tmp_path / "p.csv"))
    assert written.stdout == report_text
    quiet = cli("ports", str(CAPTURES / "demo.pcap"), "--csv", str(tmp_path / "q.csv"), "-q")
    assert (quiet.stdout, quiet.stderr) == ("", "")


def _task(process_id: str, n: int, **spec: object):
    """The n-th task of a crafted capture: its own command and callback source ports."""
    import pathological as patho

    return patho.TaskSpec(
        process_id=process_id, cmd_port=40000 + n, callback_src_port=51000 + n, **spec
    )


def test_a_task_running_at_the_end_of_the_capture_still_holds_its_port(tmp_path: Path) -> None:
    from pathological import BASE_TIME_US, S

    long_task = _task("1001", 1, keepalive_spaces=3, callback_port=59999)
    second = _task("1002", 2, callback_port=59998)
    cut = _played(
        tmp_path, "peak_cut", [(0, long_task), (20 * S, second)], keep=(None, BASE_TIME_US + 40 * S)
    )
    data = json.loads(_ports(cut, "--json", "-").stdout)
    (peak,) = data["peak"].values()
    assert peak["tasks"] == 2  # 1001 is mid-step when the capture ends, 1002 runs beside it


def test_time_wait_is_measured_from_the_latest_closed_use_of_the_port(tmp_path: Path) -> None:
    from pathological import S

    specs = [
        (0, _task("3001", 1)),
        (3 * S, _task("3002", 2, callback_mode="refused")),
        (65 * S, _task("3003", 3)),
    ]
    data = json.loads(_ports(_played(tmp_path, "tw_chain", specs), "--json", "-").stdout)
    pairs = {(r["previous_process_id"], r["process_id"]) for r in data["time_wait_reuse"]}
    assert ("3001", "3003") in pairs  # the refused 3002 in between left 3001's TIME_WAIT
    (use,) = [u for u in data["ports"] if u["process_id"] == "3001"]
    assert use["syn"].endswith("Z") and use["closed"].endswith("Z")  # ISO, like the rest


def test_ipv6_and_translated_addresses_in_the_ports_report(tmp_path: Path) -> None:
    from pathological import S

    v6 = {"controller": "2001:db8::10", "remote": "2001:db8::20"}
    specs = [(0, _task("4001", 1, **v6)), (3 * S, _task("4002", 2, callback_mode="refused", **v6))]
    text = _ports(_played(tmp_path, "v6", specs, fmt="pcapng")).stdout
    assert "[2001:db8::10]:59999: 1 time(s), closest after" in text
    assert "2001:db8::20 → [2001:db8::10]:59999 task 4002" in text
    refused = {"callback_mode": "refused"}
    specs = [
        (0, _task("5001", 1, callback_src="192.0.2.20", **refused)),
        (3 * S, _task("5002", 2, callback_port=59998, callback_dst="10.1.0.11", **refused)),
    ]
    nat = _played(tmp_path, "nat_refused", specs)
    failures = {
        f["process_id"]: f for f in json.loads(_ports(nat, "--json", "-").stdout)["failures"]
    }
    assert (failures["5001"]["source"], failures["5001"]["target"]) == (
        "192.0.2.20",
        "10.1.0.10:59999",
    )
    assert failures["5002"]["target"] == "10.1.0.11:59998"


def test_failed_command_connections_on_every_scheduler_port_seen(tmp_path: Path) -> None:
    # 4446 is no --scheduler-port, but a command channel was found there by its content:
    # failed connections to it are listed too. A lone SYN just before the capture ends may
    # still be answered: not a failure (as for callbacks).
    import pathological as patho

    task = _task("6001", 1, remote_port=4446)
    path = _played(
        tmp_path,
        "cmd_fail",
        [(0, task)],
        attempts=[
            (5 * patho.S, 40010, 4446, "rst", ()),
            (6 * patho.S, 40011, 4446, "none", (1 * patho.S, 2 * patho.S)),
            (10 * patho.S, 40012, 4455, "rst", ()),
            (10 * patho.S + 500, 40013, 4455, "none", ()),
        ],
    )
    data = json.loads(_ports(path, "--json", "-").stdout)
    assert [(f["what"], f["target"]) for f in data["failures"]] == [
        ("cmd-refused", "10.1.0.20:4446"),
        ("cmd-unanswered", "10.1.0.20:4446"),
        ("cmd-refused", "10.1.0.20:4455"),
    ]
    # No task reached 4455: the failed connections alone ask for its rule.
    rules = {(r["host"], r["ports"]): r for r in data["rules"]}
    assert rules["10.1.0.20", "4455"]["sources"] == ["10.1.0.10"]
    assert "refused" in rules["10.1.0.20", "4455"]["reason"]
    assert "dropped" in rules["10.1.0.20", "4446"]["reason"]


def test_a_command_connection_whose_synacks_never_arrive_is_dropped(tmp_path: Path) -> None:
    # SYN-ACKs went out but the controller went on sending SYNs: the return path drops.
    from crafted_captures import CONTROLLER_IP, REMOTE_IP, Capture, Conv, S

    cap = Capture()
    conv = Conv(cap, (CONTROLLER_IP, 40020), (REMOTE_IP, 4455), isn=100)
    for _ in range(3):
        conv._packet(0, "S")
        conv._packet(1, "SA")
        cap.advance(S)
    data = json.loads(_ports(cap.write(tmp_path / "synacks.pcap"), "--json", "-").stdout)
    assert [(f["what"], f["target"]) for f in data["failures"]] == [
        ("cmd-unanswered", f"{REMOTE_IP}:4455")
    ]


def test_terminal_times_carry_their_date_when_the_rows_span_days() -> None:
    rows = [report.task_row(t) for t in jsdissect.analyze(CAPTURES / "demo.pcap").task_records]
    first = rows[0]["start_sent"]
    day = datetime.fromtimestamp(first // 1_000_000, tz=timezone.utc)
    clock = f"{day:%H:%M:%S}.{first % 1_000_000:06d}"  # as the table shows times of a day
    one_day = report.to_text(rows, report.TASK_COLUMNS)
    assert clock in one_day and f"{day:%Y}-" not in one_day
    next_day = [
        {k: v + 86_400_000_000 if k in ("start_sent", "cmd_syn") and v else v for k, v in r.items()}
        for r in rows[:1]
    ]
    two_days = report.to_text(rows + next_day, report.TASK_COLUMNS)
    assert two_days.count(f"{day:%Y-%m-%d} {clock}") == 1
    assert two_days.count(f"{day + timedelta(days=1):%Y-%m-%d} {clock}") == 1
    line = report.message_line(
        {
            **next_day[0],
            "time": next_day[0]["start_sent"],
            "conn": "C",
            "channel": "cmd",
            "direction": "a → b",
            "summary": "s",
        },
        True,
    )
    assert line.startswith(f"{day + timedelta(days=1):%Y-%m-%d} {clock}  C  cmd")


def test_ports_text_counts_reuses_per_port_and_lists_the_most_reused_first() -> None:
    from jsdissect import ports

    many = ports.MAX_REUSE_LINES + 5
    reuses = [
        ports.Reuse("10.0.0.1", 59000 + p, str(n), str(n + 1), 100.0 + n)
        for p in range(many)
        for n in range(1 + (p == 7) * 2)  # port 59007 three times, the others once
    ]
    text = ports.to_text(ports.PortReport((), {}, {}, tuple(reuses), (), ()))
    lines = text.split("Ports reused within TIME_WAIT: ")[1].split("\n\n")[0].splitlines()
    assert lines[0] == f"{len(reuses)} time(s) on {many} port(s)"
    assert lines[1] == "  10.0.0.1:59007: 3 time(s), closest after 100.000 ms (task 0 → 1)"
    assert len(lines) == 1 + ports.MAX_REUSE_LINES + 1
    assert lines[-1] == "  … 5 more port(s): --json lists every reuse"


# --- messages: rows made as they are read -------------------------------------------------


@pytest.fixture(scope="module")
def parallel_messages() -> Analysis:
    """Fifty tasks at once: the messages of many connections interleave in time."""
    return jsdissect.analyze(CAPTURES / "parallel_50.pcap", messages=True)


def every_message_row(result: Analysis) -> list[dict]:
    """The rows the slow way: all of them made, then one stable sort."""
    process_of = {
        conn: t.process_id
        for t in result.task_records
        for conn in (t.cmd_conn, t.callback_conn)
        if conn is not None and t.process_id is not None
    }
    rows = [
        report.message_row(ch, ev, process_of.get(ch.conn.id))
        for ch in result.channels
        for ev in ch.events
        if not isinstance(ev, report.LIFECYCLE_MARKERS)
    ]
    return sorted(rows, key=lambda r: (r["time"], r["conn"], r["offset"]))


def test_message_rows_are_those_of_one_sort_of_every_message(parallel_messages) -> None:
    expected = every_message_row(parallel_messages)
    rows = report.MessageRows(parallel_messages.channels, parallel_messages.task_records)
    assert list(rows) == expected
    assert list(rows) == expected  # read again: the same rows
    assert sorted(rows.times()) == [r["time"] for r in expected]
    assert len({r["conn"] for r in expected}) > 50  # many connections merged


def test_message_rows_are_in_time_order_whatever_order_they_were_decoded_in(
    parallel_messages,
) -> None:
    """A long message finishes after a short one the other way that began later: its
    connection's events are then not in time order."""
    shuffled = [
        dataclasses.replace(ch, events=tuple(reversed(ch.events)))
        for ch in parallel_messages.channels
    ]
    rows = report.MessageRows(shuffled, parallel_messages.task_records)
    assert list(rows) == every_message_row(parallel_messages)


def test_message_rows_of_one_task_are_its_rows_of_all(parallel_messages) -> None:
    expected = every_message_row(parallel_messages)
    process_id = expected[len(expected) // 2]["process_id"]
    rows = report.MessageRows(
        parallel_messages.channels, parallel_messages.task_records, process_id
    )
    assert list(rows) == [r for r in expected if r["process_id"] == process_id]
    assert {r["channel"] for r in rows} == {"cmd", "api"}


def test_message_rows_are_made_only_as_they_are_read(parallel_messages, monkeypatch) -> None:
    """Memory: a row is made when it is next to come, not all of them before the first."""
    described = []
    monkeypatch.setattr(report, "describe", lambda ev: described.append(ev) or "")
    rows = iter(report.MessageRows(parallel_messages.channels, parallel_messages.task_records))
    next(rows)
    # one row waiting per connection with messages, to choose the earliest
    assert 1 <= len(described) <= len(parallel_messages.channels)
    total = 1 + sum(1 for _ in rows)
    assert len(described) == total > 10 * len(parallel_messages.channels)


def _peak_of(path: Path) -> int:
    (peak,) = json.loads(_ports(path, "--json", "-").stdout)["peak"].values()
    return peak["tasks"]


def test_a_port_whose_callback_failed_stays_held_until_the_controller_gives_up(
    tmp_path: Path,
) -> None:
    """PROTOCOL §2: the controller keeps the port until it gives up, 60 s after the start.
    A second task started meanwhile takes the next port: two held at once, also when the
    capture ends before the 60 s."""
    from pathological import BASE_TIME_US, S

    for mode in ("refused", "unanswered"):
        specs = [
            (0, _task("1001", 1, callback_mode=mode)),
            (10 * S, _task("1002", 2, callback_port=59998, keepalive_spaces=3)),
        ]
        cut = _played(tmp_path, f"failed_{mode}", specs, keep=(None, BASE_TIME_US + 30 * S))
        assert _peak_of(cut) == 2, mode


def test_callbacks_picked_up_mid_stream_hold_their_ports_and_leave_time_wait(
    tmp_path: Path,
) -> None:
    """Tasks already running when the capture began hold their ports (peak), and one whose
    callback closed leaves its port in TIME_WAIT for the next task that takes it."""
    from pathological import BASE_TIME_US, S

    specs = [
        (0, _task("2001", 1, keepalive_spaces=3)),
        (100_000, _task("2002", 2, callback_port=59998, keepalive_spaces=3)),
        (100 * S, _task("2003", 3)),  # 2001's callback closed at about 91 s
    ]
    late = _played(tmp_path, "late", specs, keep=(BASE_TIME_US + 2 * S, None))
    data = json.loads(_ports(late, "--json", "-").stdout)
    assert {u["status"] for u in data["ports"] if u["port"] == 59998} == {"partial"}
    (peak,) = data["peak"].values()
    assert peak["tasks"] == 2
    (reuse,) = data["time_wait_reuse"]
    assert (reuse["port"], reuse["process_id"]) == (59999, "2003")


def _one_task(cap, n: int, port: int, callback_delay: int = 0, close_answered: bool = True) -> int:
    """A shell task on its own ports whose callback the controller closes (FIN, then the
    task server's RST); returns when that close began."""
    import jsencode as js
    from crafted_captures import (
        CLIENT,
        CONTROLLER_IP,
        REMOTE_IP,
        SERVER,
        C,
        Conv,
        T,
        answer_time,
        rmis_id,
    )

    cmd = Conv(cap, (CONTROLLER_IP, 40000 + n), (REMOTE_IP, 4455), isn=1000 * n)
    cb = Conv(cap, (REMOTE_IP, 45000 + n), (CONTROLLER_IP, port), isn=1000 * n + 500)
    cmd.handshake()
    cmd.send(CLIENT, js.start_remote_task(port, kind="process"))
    cmd.send(SERVER, js.process_answer(answer_time(cap), str(n)))
    cap.advance(callback_delay)
    cb.handshake()
    cb.send(C, js.create_instance())
    cb.send(T, js.answer_create_instance(js.ObjRef(rmis_id(n), True, "x")))
    cb.send(C, js.release(rmis_id(n)))
    cb.send(T, js.answer_empty())
    closed = cap.now
    cb.close(first=C)
    cmd.send(CLIENT, js.remote_task_close(str(n)))
    if close_answered:
        cmd.send(SERVER, js.ok_answer(answer_time(cap)))
    return closed


def test_a_closed_callback_frees_its_port_before_the_close_is_answered(tmp_path: Path) -> None:
    """The port is free once the callback connection closed (the next task takes it), even
    while its task is still `running` for want of the close's answer: one held at a time."""
    from crafted_captures import Capture, S

    _one_task(cap := Capture(), 1, 59999, close_answered=False)
    cap.advance(5 * S)
    _one_task(cap, 2, 59999)
    path = cap.write(tmp_path / "freed.pcap")
    assert [t.status for t in jsdissect.analyze(path).task_records] == ["running", "completed"]
    assert _peak_of(path) == 1


def test_time_wait_counts_until_the_port_is_bound_again_not_until_the_callback(
    tmp_path: Path,
) -> None:
    """The controller binds the port again before it sends the start: 119 s after the
    previous close is within TIME_WAIT, though the slow callback comes 3 s later."""
    from crafted_captures import Capture, S

    closed = _one_task(cap := Capture(), 1, 59999)
    cap.now = closed + 119 * S
    _one_task(cap, 2, 59999, callback_delay=3 * S)
    data = json.loads(_ports(cap.write(tmp_path / "rebound.pcap"), "--json", "-").stdout)
    (reuse,) = data["time_wait_reuse"]
    assert (reuse["previous_process_id"], reuse["process_id"]) == ("1", "2")
    assert 119_000 <= reuse["gap_ms"] < 119_100


def test_messages_of_two_tasks_on_one_command_connection_name_each_its_own(
    tmp_path: Path,
) -> None:
    """§3.8: the remote accepts several tasks on one command connection, one after another
    (1.x controllers open one a task). Found in review: every message of the connection
    was labelled with its last task, and --process-id lost the first one's."""
    import jsencode as js
    from crafted_captures import (
        CLIENT,
        CONTROLLER_IP,
        MS,
        REMOTE_IP,
        SERVER,
        Capture,
        Conv,
        answer_time,
    )

    cap = Capture()
    cmd = Conv(cap, (CONTROLLER_IP, 40000), (REMOTE_IP, 4455), isn=1000)
    cmd.handshake()
    for pid, port in (("700002", 59002), ("700003", 59003)):
        cmd.send(CLIENT, js.start_remote_task(port, kind="process"))
        cap.advance(5 * MS)
        cmd.send(SERVER, js.process_answer(answer_time(cap), pid))
        cap.advance(100 * MS)
        cmd.send(CLIENT, js.remote_task_close(pid))
        cmd.send(SERVER, js.ok_answer(answer_time(cap)))
        cap.advance(100 * MS)
    cmd.close()
    capture = cap.write(tmp_path / "two.pcap")
    result = jsdissect.analyze([capture])
    rows = report.message_rows(result.channels, result.task_records)
    assert [r["process_id"] for r in rows] == ["700002"] * 4 + ["700003"] * 4
    only = list(report.MessageRows(result.channels, result.task_records, "700002"))
    assert [r["summary"] for r in only] == [r["summary"] for r in rows[:4]]


def test_time_wait_reuse_is_against_the_connection_closed_last(tmp_path: Path) -> None:
    """Found in review: measured from the use started last that had closed (here a short
    1002), not from the connection closed last (the long 1001, closed 38.8 s before)."""
    from pathological import S

    specs = [
        (0, _task("1001", 1, keepalive_spaces=2)),  # about 61 s long
        (1 * S, _task("1002", 2)),  # short, closed long before 1001
        (100 * S, _task("1003", 3)),
    ]
    data = json.loads(_ports(_played(tmp_path, "tw_last", specs), "--json", "-").stdout)
    (reuse,) = [r for r in data["time_wait_reuse"] if r["process_id"] == "1003"]
    assert reuse["previous_process_id"] == "1001" and 38_000 < reuse["gap_ms"] < 40_000


def test_time_wait_given_in_seconds_is_rounded_to_the_microsecond(tmp_path: Path) -> None:
    """Found in review: int(1.001 * 1e6) is 1,000,999, so a reuse 1,000,999 µs after the
    close was not within --time-wait 1.001."""
    from crafted_captures import Capture, S

    def gap_after(pause: int) -> tuple[int, Path]:
        closed = _one_task(cap := Capture(), 1, 59999)
        cap.now = closed + pause
        _one_task(cap, 2, 59999)
        path = cap.write(tmp_path / f"tw{pause}.pcap")
        (reuse,) = json.loads(_ports(path, "--json", "-").stdout)["time_wait_reuse"]
        return round(reuse["gap_ms"] * 1000), path

    gap, _ = gap_after(2 * S)
    offset = gap - 2 * S  # from the pause to the port bound again
    gap, path = gap_after(1_000_999 - offset)
    assert gap == 1_000_999
    reuses = json.loads(_ports(path, "--time-wait", "1.001", "--json", "-").stdout)
    assert len(reuses["time_wait_reuse"]) == 1


def test_csv_quotes_a_field_holding_a_carriage_return() -> None:
    """Found in review: csv quotes the characters of its line terminator only, so a log
    line's lone CR went out bare and every reader split the row in two (RFC 4180)."""
    columns = [report.Column("a", report.TEXT), report.Column("b", report.TEXT)]
    out = io.StringIO()
    rows = [{"a": "progress 50%\r100%", "b": "x"}, {"a": "tail\r", "b": "y"}, {"a": "z", "b": 1}]
    report.write_csv(rows, columns, out)
    text = out.getvalue()
    assert text.endswith("z,1\n") and "\r\n" not in text
    assert list(csv.reader(io.StringIO(text, newline=""))) == [
        ["a", "b"],
        ["progress 50%\r100%", "x"],
        ["tail\r", "y"],
        ["z", "1"],
    ]


def test_ports_text_shows_a_process_id_with_control_characters_escaped() -> None:
    """Found in review: a process_id is wire text (legal XML can hold a newline and a CSI):
    `ports` printed it raw, forging a line; the tasks table escapes it."""
    from jsdissect import ports

    pid = "9001\nFAKE LINE\x9b2J"
    failure = ports.Failure("callback-refused", "10.1.0.20", "10.1.0.10:59999", 0, pid)
    reuse = ports.Reuse("10.1.0.10", 59999, pid, "9002", 1.0)
    text = ports.to_text(ports.PortReport((), {}, {}, (reuse,), (failure,), ()))
    assert "FAKE LINE" in text
    assert not any(line.startswith("FAKE") for line in text.splitlines())
    assert "\x9b" not in text and report.printable(pid) in text


def test_health_checks_leave_no_connection_behind_for_the_task_commands(tmp_path: Path) -> None:
    # A monitor connecting to the scheduler port every second (connect, close) makes 86,400
    # connections a day: the task commands keep none of them (found in review: 0.8 KB
    # each, kept to the end), and their rows and ports report come out the same.
    from crafted_captures import CONTROLLER_IP, REMOTE_IP, Conv, S, callback_synacks_lost

    from jsdissect import ports

    cap = callback_synacks_lost(final_rst=True)
    cap.now = int(cap.packets[0].time * S) - 300 * S  # the checks begin before the task
    for n in range(300):
        probe = Conv(cap, ("10.9.0.1", 30000 + n), (REMOTE_IP, 4455), isn=10_000 + n)
        probe.handshake()
        probe.close()
        cap.advance(S)
    cap.packets.sort(key=lambda p: p.time)
    path = cap.write(tmp_path / "checks.pcap")
    every = jsdissect.analyze([path])
    kept = jsdissect.analyze([path], connections=False)
    assert len(every.channels) == 300 + 2 and len(kept.channels) == 2
    assert kept.capture_start == every.capture_start == min(c.conn.first_ts for c in every.channels)
    rows = [report.task_row(t) for t in every.task_records]
    assert [report.task_row(t) for t in kept.task_records] == rows
    tasks = every.task_records
    full = ports.port_report(tasks, every.channels, (4455,), capture_end=every.capture_end)
    lean = ports.port_report(
        tasks,
        kept.channels,
        (4455,),
        capture_end=kept.capture_end,
        capture_start=kept.capture_start,
    )
    assert lean == full and [f.what for f in lean.failures] == ["callback-refused"]
    assert CONTROLLER_IP in {u.controller for u in lean.uses}


def test_a_run_of_failed_connections_is_one_line_of_text(tmp_path: Path) -> None:
    # A port scan or a SYN flood on the scheduler port: one line says how many, from how
    # many sources, from when until when; --json lists each (the text had a line each).
    from crafted_captures import REMOTE_IP, Capture, Conv, S

    cap = Capture()
    for n in range(40):
        conv = Conv(cap, (f"10.9.0.{1 + n % 4}", 30000 + n), (REMOTE_IP, 4455), isn=100 + n)
        conv._packet(0, "S")
        conv.seq[0] += 1
        conv._packet(1, "RA")
        cap.advance(S // 10)
    path = cap.write(tmp_path / "scan.pcap")
    text = _ports(path).stdout
    failed = text.split("Failed connections:\n")[1].split("\n\n")[0].splitlines()
    first, last = cap.packets[0].time, cap.packets[-1].time
    assert len(failed) == 1 and failed[0].split()[1:6] == [
        "cmd-refused",
        "4",
        "sources",
        "→",
        f"{REMOTE_IP}:4455",
    ]
    assert failed[0].endswith(f"×40 until {report.format_time(int(last * S) - 100)}")
    assert failed[0].split()[0] == report.format_time(int(first * S))
    assert len(json.loads(_ports(path, "--json", "-").stdout)["failures"]) == 40
