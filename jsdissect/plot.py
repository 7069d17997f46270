"""The timeline picture: one bar per task, split into its phases, grouped by remote.

PNG/SVG through matplotlib; HTML through plotly, interactive, so a long capture can be
zoomed and scrolled. Up to MAX_OWN_ROWS tasks each get a labelled row of their own. Beyond
that, labels are unreadable and a row per task leaves each bar a fraction of a pixel high
(10,000 tasks), so the tasks of a remote share rows: each takes the first row free when it
starts, and the remote's rows are as many as its tasks at most ever ran at once.

A phase runs from one of the task's times to the next (PHASES); one whose end was not
captured lasts until the next time known, and keeps its name. A task not ended is drawn
until the capture's end (while it is `running`), or until the
controller gives up waiting for its callback, as the ports report holds its port; a phase
shorter than a pixel of the PNG/SVG axis is still drawn a pixel wide.
"""

from __future__ import annotations

import heapq
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, cast

from jsdissect.correlate import (
    CALLBACK_TIMEOUT_US,
    FAILED_STATUSES,
    TIME_COLUMNS,
    Task,
    callback_accepted,
)
from jsdissect.report import clock

if TYPE_CHECKING:
    import numpy as np
    import plotly.graph_objects as go
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure
    from numpy.typing import ArrayLike

# Phase boundaries in wire order; each phase ends at its boundary (DESIGN columns).
# The bar of a task split at its times, one after the other. Names apart from the task
# table's durations where the spans differ (connect_ms, startup_ms and close_ms overlap
# these; spawn and run are the same spans as spawn_ms and run_ms).
PHASES = (
    ("connecting", "cmd_syn", "start_sent"),
    ("spawn", "start_sent", "start_answered"),
    ("callback", "start_answered", "callback_established"),
    ("begin", "callback_established", "begin_answered"),
    ("run", "begin_answered", "release_answered"),
    ("closing", "release_answered", "close_answered"),
)
# Times within a phase (other than where it begins): the earliest known one starts the
# phase when its beginning was not captured (a capture begun mid-task).
INNER_TIMES = {
    "connecting": ("cmd_established",),
    "callback": ("callback_syn",),
    "begin": ("begin_sent",),
    "closing": ("close_sent", "close_answered"),
}
COLOURS = {
    "connecting": "#9e9e9e",
    "spawn": "#f9a825",
    "callback": "#ef6c00",
    "begin": "#1e88e5",
    "run": "#43a047",
    "closing": "#8e24aa",
}
# More tasks than this share rows (see the module docstring); as many rows stay labelled.
MAX_OWN_ROWS = 60
BAR_HEIGHT = 0.8  # of a row
MIN_BAR_US = 1_000  # a phase shorter than this is still drawn this wide (at least)
MIN_BAR_S = MIN_BAR_US / 1e6
FIGURE_WIDTH_IN, DPI = 12, 100
# The axes' share of the figure's width (row labels left, remotes right take the rest):
# an estimate on the low side, so that a bar MIN_BAR_PX wide by it is at least that wide.
AXES_SHARE = 0.8
MIN_BAR_PX = 1.0
X_MARGIN = 0.02  # of the span, right of the last bar


@dataclass(frozen=True, slots=True)
class Bar:
    row: int
    row_name: str  # the row's label: the task's own, or "row N" of its remote's shared rows
    label: str
    group: str  # remote scheduler
    failed: bool
    segments: tuple[tuple[str, int, int], ...]  # (phase, from µs, to µs), in time order

    @property
    def start(self) -> int:
        return self.segments[0][1]

    @property
    def end(self) -> int:
        return self.segments[-1][2]


def bars(
    tasks: Sequence[Task], capture_end: int | None = None, min_width_us: int = MIN_BAR_US
) -> list[Bar]:
    """One bar per task with a known time, ordered by remote, then start; rows as the
    module docstring says, for phases drawn at least `min_width_us` wide. `capture_end`:
    the capture's last packet (as for the ports report); by default the last packet of the
    tasks' own connections."""
    return _bars(_placed(tasks, capture_end), min_width_us)


Placed = Sequence[tuple[Task, tuple[tuple[str, int, int], ...]]]


def _placed(tasks: Sequence[Task], capture_end: int | None) -> Placed:
    """The tasks with a known time and their segments, by remote, then start."""
    if capture_end is None:
        capture_end = _last_seen(tasks)
    placed = [(task, _segments(task, capture_end)) for task in tasks]
    placed = [(task, segs) for task, segs in placed if segs]
    placed.sort(key=lambda ts: (ts[0].remote or "", ts[1][0][1]))
    return placed


def _bars(placed: Placed, min_width_us: int) -> list[Bar]:
    shared = len(placed) > MAX_OWN_ROWS
    rows = _shared_rows(placed, min_width_us) if shared else _own_rows(placed)
    return [
        Bar(
            row,
            name,
            task.process_id or task.callback_conn or task.cmd_conn or "?",
            task.remote or "(unknown remote)",
            task.status in FAILED_STATUSES,
            segments,
        )
        for (task, segments), (row, name) in zip(placed, rows, strict=True)
    ]


def _last_seen(tasks: Sequence[Task]) -> int | None:
    """The latest packet of the tasks' connections, or time of theirs: the capture's end
    as far as the tasks tell (the capture may go on after it)."""
    times = [getattr(t, name) for t in tasks for name in TIME_COLUMNS]
    times += [ch.conn.last_ts for t in tasks for ch in (t.cmd, t.callback) if ch is not None]
    return max((x for x in times if x is not None), default=None)


def _own_rows(placed: Placed) -> list[tuple[int, str]]:
    return [
        (row, task.process_id or task.callback_conn or task.cmd_conn or "?")
        for row, (task, _) in enumerate(placed)
    ]


def _shared_rows(placed: Placed, min_width_us: int) -> list[tuple[int, str]]:
    """Per remote, in order of start: the lowest row whose last bar, as drawn, ended before
    this one starts (interval partitioning: as many rows as tasks at most overlapped)."""
    out: list[tuple[int, str]] = []
    first_row = 0  # of the current remote
    remote: str | None = None
    busy: list[tuple[int, int]] = []  # heap: (end µs, row within the remote)
    free: list[int] = []  # heap of rows within the remote
    rows_used = 0
    for task, segments in placed:
        if task.remote != remote:
            remote, first_row = task.remote, first_row + rows_used
            busy, free, rows_used = [], [], 0
        start = segments[0][1]
        while busy and busy[0][0] < start:
            heapq.heappush(free, heapq.heappop(busy)[1])
        if free:
            row = heapq.heappop(free)
        else:
            row, rows_used = rows_used, rows_used + 1
        heapq.heappush(busy, (_drawn_end(segments, min_width_us), row))
        out.append((first_row + row, f"row {row + 1}"))
    return out


def _drawn_end(segments: tuple[tuple[str, int, int], ...], min_width_us: int) -> int:
    """Where a bar's drawing ends (µs): its phases are drawn at least min_width_us wide."""
    return max(start + max(stop - start, min_width_us) for _, start, stop in segments)


def _segments(task: Task, capture_end: int | None) -> tuple[tuple[str, int, int], ...]:
    """Consecutive phases, each named for the phase it is. When a boundary is missing, the
    span up to the next known one is named for the phase it began in: a callback that never
    came is time spent waiting in "callback", whatever ended it. A phase whose beginning was
    not captured begins at its earliest known time. The last phase begun and not ended is
    drawn until `_open_end`; a task with one lone time (a refused SYN) gets a sliver."""
    out: list[tuple[str, int, int]] = []
    start: int | None = None
    label: str | None = None
    for phase, begin, end in PHASES:
        if start is None:
            start = getattr(task, begin)
        if start is None:  # its beginning not captured: its earliest time known, if any
            inner = [getattr(task, name) for name in INNER_TIMES.get(phase, ())]
            start = min((t for t in inner if t is not None), default=None)
        if start is not None and label is None:
            label = phase
        stop = getattr(task, end)
        if start is not None and stop is not None and stop >= start:
            out.append((cast("str", label), start, stop))
            start, label = stop, None
    if start is not None and label is not None:
        stop = max(start, _open_end(task, label, capture_end))
        if stop > start or not out:
            out.append((label, start, stop))
    return tuple(out)


def _open_end(task: Task, phase: str, capture_end: int | None) -> int:
    """Where a phase begun and never ended is drawn to (µs): to the capture's end while the
    task runs (the task table's `running`, or a task picked up mid-stream whose callback
    connection is open at the end); while it waits for its callback, until the controller
    gives up (60 s after the start, or the close sent), within the capture, as the ports
    report holds its port; else to the task's last known time."""
    known = [getattr(task, name) for name in TIME_COLUMNS]
    last = max((t for t in known if t is not None), default=0)
    end = max(last, capture_end) if capture_end is not None else last
    cb = task.callback.conn if task.callback is not None else None
    accepted = cb is not None and callback_accepted(cb)
    if task.status == "running":
        return end
    if task.status == "partial" and accepted and task.callback_closed is None:
        return end
    if phase == "callback" and not accepted and not task.start_failed:
        first = task.start_sent if task.start_sent is not None else task.callback_syn
        waits = [first + CALLBACK_TIMEOUT_US if first is not None else None, task.close_sent]
        gives_up = min((t for t in waits if t is not None), default=last)
        return max(last, min(gives_up, end))
    return last


def figure(tasks: Sequence[Task], capture_end: int | None = None) -> Figure:
    """A matplotlib figure (Agg), sized for the number of rows. Each phase is one
    collection of rectangles, so the figure's size and drawing time follow the number of
    tasks in arrays, not in artists (a patch per bar took a minute for 10,000 tasks).
    Every phase is drawn at least about a pixel wide (`min_width_us`): over days, a
    millisecond is far below one, and the bars had vanished."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.collections import PolyCollection
    from matplotlib.figure import Figure

    placed = _placed(tasks, capture_end)
    origin = min((segs[0][1] for _, segs in placed), default=0)
    last = max((stop for _, segs in placed for _, _, stop in segs), default=origin)
    min_width = min_width_us(last - origin)
    rows = _bars(placed, min_width)
    row_count = max((b.row for b in rows), default=-1) + 1
    size = (FIGURE_WIDTH_IN, min(2 + 0.22 * row_count, 60))
    fig = Figure(figsize=size, dpi=DPI, layout="constrained")
    ax = fig.subplots()
    for phase, colour in COLOURS.items():
        spans = [(b.row, s[1], s[2]) for b in rows for s in b.segments if s[0] == phase]
        # An (n, 4, 2) array is a sequence of polygons to PolyCollection (its fast path),
        # but numpy's ndarray is no typing.Sequence, which matplotlib's stub asks for.
        rectangles = cast("Sequence[ArrayLike]", _rectangles(spans, origin, min_width))
        ax.add_collection(
            PolyCollection(rectangles, facecolors=colour, edgecolors="none", label=phase)
        )
    failed = [b for b in rows if b.failed]
    ax.plot(
        [(b.end - origin) / 1e6 for b in failed],
        [b.row for b in failed],
        linestyle="none",
        marker="x",
        color="#c62828",
        markersize=6,
    )
    ax.autoscale_view()
    # From the first task event (nothing is earlier) to the last bar: the span the
    # minimum width was computed for.
    right = max((_drawn_end(b.segments, min_width) for b in rows), default=origin)
    ax.set_xlim(0, max((right - origin) / 1e6 * (1 + X_MARGIN), MIN_BAR_S))
    _label_rows(ax, rows)
    ax.invert_yaxis()
    first = f", {clock(origin)} UTC" if rows else ""
    ax.set_xlabel(f"seconds since the first task event{first}")
    # Below the axes, where it hides no bar.
    fig.legend(loc="outside lower center", fontsize="small", ncols=len(COLOURS), frameon=False)
    ax.set_title(_title(len(rows), row_count) + "; x = failed or killed")
    return fig


def min_width_us(span_us: int) -> int:
    """The narrowest a phase is drawn on the PNG/SVG axis of a `span_us` long timeline:
    MIN_BAR_PX pixels of the axes (whose width AXES_SHARE estimates low), with the margin
    right of the last bar; never below MIN_BAR_US."""
    axes_px = FIGURE_WIDTH_IN * DPI * AXES_SHARE
    return max(MIN_BAR_US, math.ceil(span_us * (1 + X_MARGIN) * MIN_BAR_PX / axes_px))


def _title(tasks: int, rows: int) -> str:
    if tasks <= MAX_OWN_ROWS:
        return f"{tasks} remote task(s)"
    return f"{tasks} remote tasks in {rows} rows (a task takes its remote's first free row)"


def _rectangles(
    spans: Sequence[tuple[int, int, int]], origin: int, min_width_us: int
) -> np.ndarray:
    """(row, from µs, to µs) → an (n, 4, 2) array of rectangle corners in (s, row), each at
    least `min_width_us` wide."""
    import numpy as np

    a = np.array(spans, dtype=np.int64).reshape(-1, 3)
    x0 = (a[:, 1] - origin) / 1e6
    x1 = (a[:, 1] + np.maximum(a[:, 2] - a[:, 1], min_width_us) - origin) / 1e6
    y0 = a[:, 0] - BAR_HEIGHT / 2
    y1 = y0 + BAR_HEIGHT
    return np.stack(
        [np.column_stack(corner) for corner in ((x0, y0), (x0, y1), (x1, y1), (x1, y0))], axis=1
    )


def _label_rows(ax: Axes, rows: Sequence[Bar]) -> None:
    # Labels come from the wire (process ids, remotes): drawn as text, never as matplotlib
    # mathtext, which `$…$` in one would start (and fail on, found in review).
    if len(rows) <= MAX_OWN_ROWS:
        labels = [b.row_name for b in rows]
        ax.set_yticks([b.row for b in rows], labels, fontsize="small", parse_math=False)
    else:  # the rows are shared: label the groups instead
        ax.set_yticks([])
    groups: dict[str, tuple[int, int]] = {}
    for b in rows:
        low, high = groups.get(b.group, (b.row, b.row))
        groups[b.group] = (min(low, b.row), max(high, b.row))
    for group, (low, high) in groups.items():
        ax.axhline(low - 0.5, color="#cccccc", linewidth=0.5)
        ax.annotate(
            group,
            xy=(1.0, (low + high) / 2),
            xycoords=("axes fraction", "data"),
            xytext=(4, 0),
            textcoords="offset points",
            fontsize="small",
            va="center",
            parse_math=False,
        )


def html(tasks: Sequence[Task], capture_end: int | None = None) -> str:
    """An interactive plotly page: zoom, pan, hover for every phase's times."""
    return html_figure(tasks, capture_end).to_html(include_plotlyjs=True, full_html=True)


def html_figure(tasks: Sequence[Task], capture_end: int | None = None) -> go.Figure:
    import plotly.graph_objects as go

    rows = bars(tasks, capture_end)
    names = {b.row: f"{b.group} {b.row_name}" for b in rows}
    fig = go.Figure()
    for phase, colour in COLOURS.items():
        ys, xs, bases, texts = [], [], [], []
        for b in rows:
            for name, start, stop in b.segments:
                if name == phase:
                    ys.append(names[b.row])
                    bases.append(start / 1000)
                    xs.append(max((stop - start) / 1000, 0.001))
                    texts.append(f"{b.label} {phase} {(stop - start) / 1000:.3f} ms")
        fig.add_bar(
            y=ys,
            x=xs,
            base=bases,
            orientation="h",
            name=phase,
            marker_color=colour,
            hovertext=texts,
        )
    fig.update_layout(
        barmode="overlay",
        height=max(400, 18 * len(names) + 150),
        xaxis={"type": "date", "title": "time (UTC)"},
        # Rows in their order, whichever phase first names them.
        yaxis={
            "autorange": "reversed",
            "categoryorder": "array",
            "categoryarray": [names[row] for row in sorted(names)],
        },
        title=_title(len(rows), len(names)),
    )
    return fig


def write(tasks: Sequence[Task], path: str, capture_end: int | None = None) -> None:
    """Write the timeline to PNG, SVG or HTML (by extension) through a temporary file.
    `capture_end`: the capture's last packet (Analysis.capture_end), which a task still
    running is drawn until; by default the last packet of the tasks' connections."""
    from jsdissect.report import write_output

    suffix = Path(path).suffix.lower()
    if suffix == ".html":
        page = html(tasks, capture_end)
        write_output(path, lambda out: out.write(page))
        return
    if suffix not in (".png", ".svg"):
        raise ValueError(f"{path}: use a .png, .svg or .html file name")
    fig = figure(tasks, capture_end)
    # As every output: through a symbolic link, into a named pipe (found in review: a
    # rename of our own replaced both).
    write_output(path, lambda out: fig.savefig(out, format=suffix[1:]), binary=True)
