"""The timeline picture: one bar per task, split into its phases, grouped by remote.

PNG/SVG through matplotlib (one barh container per phase, one rectangle per task and
phase); HTML through plotly,
interactive, so a long capture can be zoomed and scrolled.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from jsdissect.correlate import FAILED_STATUSES, Task

if TYPE_CHECKING:
    from matplotlib.figure import Figure

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


@dataclass(frozen=True, slots=True)
class Bar:
    row: int
    label: str
    group: str  # remote scheduler
    failed: bool
    segments: tuple[tuple[str, int, int], ...]  # (phase, from µs, to µs)


def bars(tasks: Sequence[Task]) -> list[Bar]:
    """One bar per task with a known time, ordered by remote, then start."""
    placed = [t for t in tasks if _times(t)]
    placed.sort(key=lambda t: (t.remote or "", min(_times(t))))
    out = []
    for row, task in enumerate(placed):
        label = task.process_id or task.callback_conn or task.cmd_conn or "?"
        segments = _segments(task)
        if not segments:  # a lone time (e.g. a refused SYN): a sliver, still one bar
            at = min(_times(task))
            segments = (("connect", at, at),)
        failed = task.status in FAILED_STATUSES
        out.append(Bar(row, label, task.remote or "(unknown remote)", failed, segments))
    return out


def _times(task: Task) -> list[int]:
    names = {name for _, a, b in PHASES for name in (a, b)} | {"callback_syn"}
    return [getattr(task, n) for n in names if getattr(task, n) is not None]


def _segments(task: Task) -> tuple[tuple[str, int, int], ...]:
    """Consecutive phases. When a boundary is missing, the span up to the next known one is
    named for the phase it began in: a callback that never came is time spent waiting in
    "callback", whatever ended it."""
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
    return tuple(out)


def figure(tasks: Sequence[Task]) -> Figure:
    """A matplotlib figure (Agg), sized for the number of tasks."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.figure import Figure

    rows = bars(tasks)
    origin = min((s[1] for b in rows for s in b.segments), default=0)
    height = min(2 + 0.22 * len(rows), 60)
    fig = Figure(figsize=(12, height), dpi=100)
    ax = fig.subplots()
    for phase, colour in COLOURS.items():
        spans = [(b.row, s[1], s[2]) for b in rows for s in b.segments if s[0] == phase]
        ax.barh(
            [row for row, _, _ in spans],
            [max((stop - start) / 1e6, 1e-3) for _, start, stop in spans],
            left=[(start - origin) / 1e6 for _, start, _ in spans],
            height=0.8,
            color=colour,
            label=phase,
        )
    for b in rows:
        if b.failed:
            end = (max(s[2] for s in b.segments) - origin) / 1e6
            ax.plot([end], [b.row], marker="x", color="#c62828", markersize=6)
    _label_rows(ax, rows)
    ax.invert_yaxis()
    ax.set_xlabel("seconds since the first task event")
    ax.legend(loc="upper right", fontsize="small", ncols=3)
    ax.set_title(f"{len(rows)} remote task(s); x = failed or killed")
    fig.tight_layout()
    return fig


def _label_rows(ax, rows: Sequence[Bar]) -> None:
    if len(rows) <= 60:
        ax.set_yticks([b.row for b in rows], [b.label for b in rows], fontsize="small")
    else:  # thousands of labels are unreadable: label the groups instead
        ax.set_yticks([])
    groups: dict[str, list[int]] = {}
    for b in rows:
        groups.setdefault(b.group, []).append(b.row)
    for group, members in groups.items():
        ax.axhline(min(members) - 0.5, color="#cccccc", linewidth=0.5)
        ax.annotate(
            group,
            xy=(1.0, (min(members) + max(members)) / 2),
            xycoords=("axes fraction", "data"),
            xytext=(4, 0),
            textcoords="offset points",
            fontsize="small",
            va="center",
        )


def html(tasks: Sequence[Task]) -> str:
    """An interactive plotly page: zoom, pan, hover for every phase's times."""
    import plotly.graph_objects as go

    rows = bars(tasks)
    fig = go.Figure()
    for phase, colour in COLOURS.items():
        ys, xs, bases, texts = [], [], [], []
        for b in rows:
            for name, start, stop in b.segments:
                if name == phase:
                    ys.append(f"{b.group} {b.label}")
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
        height=max(400, 18 * len(rows) + 150),
        xaxis={"type": "date", "title": "time (UTC)"},
        yaxis={"autorange": "reversed"},
        title=f"{len(rows)} remote task(s)",
    )
    return fig.to_html(include_plotlyjs=True, full_html=True)


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
    target = Path(path)
    tmp = target.with_name(f".{target.name}.tmp{suffix}")
    try:
        fig.savefig(tmp, format=suffix[1:])
        tmp.replace(target)
    except OSError as exc:
        exc.filename, exc.filename2 = path, None  # name the file asked for, not the temporary
        raise
    finally:
        tmp.unlink(missing_ok=True)
