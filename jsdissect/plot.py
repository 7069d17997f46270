"""The timeline picture: one bar per task, split into its phases, grouped by remote.

PNG/SVG through matplotlib; HTML through plotly, interactive, so a long capture can be
zoomed and scrolled. Up to MAX_OWN_ROWS tasks each get a labelled row of their own. Beyond
that, labels are unreadable and a row per task leaves each bar a fraction of a pixel high
(10,000 tasks), so the tasks of a remote share rows: each takes the first row free when it
starts, and the remote's rows are as many as its tasks at most ever ran at once.
"""

from __future__ import annotations

import heapq
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, cast

from jsdissect.correlate import FAILED_STATUSES, Task
from jsdissect.report import clock

if TYPE_CHECKING:
    import numpy as np
    import plotly.graph_objects as go
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure
    from numpy.typing import ArrayLike

# Phase boundaries in wire order; each phase ends at its boundary (DESIGN columns).
PHASES = (
    ("connect", "cmd_syn", "start_sent"),
    ("spawn", "start_sent", "start_answered"),
    ("callback", "start_answered", "callback_established"),
    ("startup", "callback_established", "begin_answered"),
    ("run", "begin_answered", "release_answered"),
    ("close", "release_answered", "close_answered"),
)
COLOURS = {
    "connect": "#9e9e9e",
    "spawn": "#f9a825",
    "callback": "#ef6c00",
    "startup": "#1e88e5",
    "run": "#43a047",
    "close": "#8e24aa",
}
# More tasks than this share rows (see the module docstring); as many rows stay labelled.
MAX_OWN_ROWS = 60
BAR_HEIGHT = 0.8  # of a row
MIN_BAR_US = 1_000  # a phase shorter than this is still drawn this wide
MIN_BAR_S = MIN_BAR_US / 1e6


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


def bars(tasks: Sequence[Task]) -> list[Bar]:
    """One bar per task with a known time, ordered by remote, then start; rows as the
    module docstring says."""
    placed = [(task, _segments(task)) for task in tasks]
    placed = [(task, segs) for task, segs in placed if segs]
    placed.sort(key=lambda ts: (ts[0].remote or "", ts[1][0][1]))
    rows = _own_rows if len(placed) <= MAX_OWN_ROWS else _shared_rows
    return [
        Bar(
            row,
            name,
            task.process_id or task.callback_conn or task.cmd_conn or "?",
            task.remote or "(unknown remote)",
            task.status in FAILED_STATUSES,
            segments,
        )
        for (task, segments), (row, name) in zip(placed, rows(placed), strict=True)
    ]


Placed = Sequence[tuple[Task, tuple[tuple[str, int, int], ...]]]


def _own_rows(placed: Placed) -> list[tuple[int, str]]:
    return [
        (row, task.process_id or task.callback_conn or task.cmd_conn or "?")
        for row, (task, _) in enumerate(placed)
    ]


def _shared_rows(placed: Placed) -> list[tuple[int, str]]:
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
        heapq.heappush(busy, (_drawn_end(segments), row))
        out.append((first_row + row, f"row {row + 1}"))
    return out


def _drawn_end(segments: tuple[tuple[str, int, int], ...]) -> int:
    """Where a bar's drawing ends (µs): its phases are drawn at least MIN_BAR_S wide."""
    return max(start + max(stop - start, MIN_BAR_US) for _, start, stop in segments)


def _segments(task: Task) -> tuple[tuple[str, int, int], ...]:
    """Consecutive phases. When a boundary is missing, the span up to the next known one is
    named for the phase it began in: a callback that never came is time spent waiting in
    "callback", whatever ended it. A task with one lone time (a refused SYN) gets a sliver
    there; one with no time at all, nothing."""
    out: list[tuple[str, int, int]] = []
    start: int | None = None
    label: str | None = None
    for phase, begin, end in PHASES:
        if start is None:
            start = getattr(task, begin)
        label = label or phase
        stop = getattr(task, end)
        if start is not None and stop is not None and stop >= start:
            out.append((label, start, stop))
            start, label = stop, None
    if not out:
        known = [t for t in (getattr(task, n) for n in _TIME_NAMES) if t is not None]
        if known:
            out.append(("connect", min(known), min(known)))
    return tuple(out)


_TIME_NAMES = tuple({name for _, a, b in PHASES for name in (a, b)} | {"callback_syn"})


def figure(tasks: Sequence[Task]) -> Figure:
    """A matplotlib figure (Agg), sized for the number of rows. Each phase is one
    collection of rectangles, so the figure's size and drawing time follow the number of
    tasks in arrays, not in artists (a patch per bar took a minute for 10,000 tasks)."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.collections import PolyCollection
    from matplotlib.figure import Figure

    rows = bars(tasks)
    origin = min((b.start for b in rows), default=0)
    row_count = max((b.row for b in rows), default=-1) + 1
    fig = Figure(figsize=(12, min(2 + 0.22 * row_count, 60)), dpi=100, layout="constrained")
    ax = fig.subplots()
    for phase, colour in COLOURS.items():
        spans = [(b.row, s[1], s[2]) for b in rows for s in b.segments if s[0] == phase]
        # An (n, 4, 2) array is a sequence of polygons to PolyCollection (its fast path),
        # but numpy's ndarray is no typing.Sequence, which matplotlib's stub asks for.
        rectangles = cast("Sequence[ArrayLike]", _rectangles(spans, origin))
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
    ax.set_xlim(left=0)  # the first task event; nothing is earlier
    _label_rows(ax, rows)
    ax.invert_yaxis()
    first = f", {clock(origin)} UTC" if rows else ""
    ax.set_xlabel(f"seconds since the first task event{first}")
    # Below the axes, where it hides no bar.
    fig.legend(loc="outside lower center", fontsize="small", ncols=len(COLOURS), frameon=False)
    ax.set_title(_title(len(rows), row_count) + "; x = failed or killed")
    return fig


def _title(tasks: int, rows: int) -> str:
    if tasks <= MAX_OWN_ROWS:
        return f"{tasks} remote task(s)"
    return f"{tasks} remote tasks in {rows} rows (a task takes its remote's first free row)"


def _rectangles(spans: Sequence[tuple[int, int, int]], origin: int) -> np.ndarray:
    """(row, from µs, to µs) → an (n, 4, 2) array of rectangle corners in (s, row)."""
    import numpy as np

    a = np.array(spans, dtype=np.int64).reshape(-1, 3)
    x0 = (a[:, 1] - origin) / 1e6
    x1 = x0 + np.maximum((a[:, 2] - a[:, 1]) / 1e6, MIN_BAR_S)
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


def html(tasks: Sequence[Task]) -> str:
    """An interactive plotly page: zoom, pan, hover for every phase's times."""
    return html_figure(tasks).to_html(include_plotlyjs=True, full_html=True)


def html_figure(tasks: Sequence[Task]) -> go.Figure:
    import plotly.graph_objects as go

    rows = bars(tasks)
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


def write(tasks: Sequence[Task], path: str) -> None:
    """Write the timeline to PNG, SVG or HTML (by extension) through a temporary file."""
    from jsdissect.report import write_output

    suffix = Path(path).suffix.lower()
    if suffix == ".html":
        page = html(tasks)
        write_output(path, lambda out: out.write(page))
        return
    if suffix not in (".png", ".svg"):
        raise ValueError(f"{path}: use a .png, .svg or .html file name")
    fig = figure(tasks)
    # As every output: through a symbolic link, into a named pipe (found in review: a
    # rename of our own replaced both).
    write_output(path, lambda out: fig.savefig(out, format=suffix[1:]), binary=True)
