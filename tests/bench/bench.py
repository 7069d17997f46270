"""jsdissect against its peers on generated captures: speed and memory (issue 8).

    python tests/bench/bench.py [--size smoke|full|big] [--rounds N] [--out DIR] [--json FILE]

Generates the captures (cached in --out), then runs every reader on the same files, all
readers once per round, side by side, and prints medians and the issue's targets as ratios
measured in this run (the machine is shared and noisy: only ratios of one run compare).

Readers: `tcpdump -r FILE -w /dev/null` (libpcap, the practical limit); tshark with
wireshark/jobscheduler.lua printing its task table (or, without the plugin, `-z conv,tcp`,
labelled so); `jsdissect tasks FILE --json OUT -q` (the real CLI, full task table, counted
afterwards); the same with `--jobs 0`, with `--engine python`, and uncompiled (the hot
modules run as Python: JSDISSECT_PURE=1), with either engine. Peak RSS is the largest
process's own maximum, as GNU time reports it (a forked child's own rusage would count the
forking Python's pages); "all processes" is the peak of the reader's processes together
(PSS, sampled from /proc), which the memory target is judged on; wall time is measured
around the process.

Before the rounds every file is read once (so no reader pays for the disk alone), and
jsdissect runs once on a tiny capture: an installed package has its bytecode compiled, so
PYTHONDONTWRITEBYTECODE is dropped for the readers and the bytecode cached under --out.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import stat
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import NamedTuple

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent
sys.path[:0] = [str(HERE), str(HERE.parent)]  # generate.py and jsencode, when run as a script

import generate  # noqa: E402

from jsdissect import native  # noqa: E402

PLUGIN = ROOT / "wireshark" / "jobscheduler.lua"

SIZES: dict[str, list[generate.Spec]] = {
    "smoke": [
        generate.Spec("mixed", packets=20_000, flows=100),
        generate.Spec("dense", tasks=200),
    ],
    "full": [
        generate.Spec("mixed", packets=1_000_000, flows=2_000),
        generate.Spec("dense", tasks=10_000),
    ],
}
# 5 GB of mixed traffic in 500 MB ring-buffer files, besides the full captures it is
# compared with (time linear in size).
SIZES["big"] = [
    *SIZES["full"],
    generate.Spec("big", packets=10_000_000, flows=20_000, ring_file_bytes=500_000_000),
]

# Issue 8 targets.
MAX_TCPDUMP_RATIO = 3.0
MIN_TSHARK_RATIO = 50.0
MIN_DENSE_TASKS_PER_S = 5_000.0
MIN_PYTHON_PACKETS_PER_S = 150_000.0
MAX_BIG_RSS_MB = 300.0
# "the 5 GB run takes ≤ 11× the 480 MB run": 5.6% over the size ratio, applied to the size
# ratio of the captures generated here.
BIG_TIME_SLACK = 11.0 / (5_000 / 480)


# --- readers ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Reader:
    name: str
    argv: Callable[[list[str], Path], list[str]]  # (capture files, output file) → command
    count: Callable[[Path], int | None]  # tasks in the output file
    multi_file: bool = True  # can read ring-buffer files in one run


def _jsdissect_cli() -> list[str]:
    script = Path(sys.executable).with_name("jsdissect")
    return [str(script)] if script.exists() else [sys.executable, "-m", "jsdissect"]


def _json_rows(path: Path) -> int | None:
    return len(json.loads(path.read_text()))


def _csv_rows(path: Path) -> int | None:
    lines = [line for line in path.read_text().splitlines() if line.strip()]
    return max(0, len(lines) - 1)


def _nothing(path: Path) -> int | None:
    return None


def _tcpdump(files: list[str], out: Path) -> list[str]:
    # As root, tcpdump drops to its own user and hands the output file to it: /dev/null
    # would end up owned by tcpdump. Staying root leaves the device as it was.
    stay = ["-Z", "root"] if os.geteuid() == 0 else []
    if len(files) == 1:
        return ["tcpdump", *stay, "-r", files[0], "-w", "/dev/null"]
    listing = out.with_suffix(".files")
    listing.write_text("\n".join(files) + "\n")
    return ["tcpdump", *stay, "-V", str(listing), "-w", "/dev/null"]  # tcpdump ≥ 4.9: list


def _tshark_plugin(files: list[str], out: Path) -> list[str]:
    return [
        "tshark", "-X", f"lua_script:{PLUGIN}", "-o", "jobscheduler.task_table:TRUE",
        "-q", "-r", files[0],
    ]  # fmt: skip


def _tshark_conv(files: list[str], out: Path) -> list[str]:
    return ["tshark", "-q", "-z", "conv,tcp", "-r", files[0]]


def _jsdissect(engine: str, *options: str) -> Callable[[list[str], Path], list[str]]:
    def argv(files: list[str], out: Path) -> list[str]:
        cli = [*_jsdissect_cli(), "tasks", *files, "--json", str(out), "-q"]
        return [*cli, "--engine", engine, *options]

    return argv


def _uncompiled(
    argv: Callable[[list[str], Path], list[str]],
) -> Callable[[list[str], Path], list[str]]:
    def with_env(files: list[str], out: Path) -> list[str]:
        return ["env", f"{native.PURE_ENV}=1", *argv(files, out)]

    return with_env


def _plugin_has_task_table() -> bool:
    return PLUGIN.exists() and "task_table" in PLUGIN.read_text(errors="replace")


def readers() -> list[Reader]:
    found = []
    if shutil.which("tcpdump"):
        found.append(Reader("tcpdump -r", _tcpdump, _nothing))
    if shutil.which("tshark"):
        if _plugin_has_task_table():
            found.append(Reader("tshark + plugin", _tshark_plugin, _csv_rows, multi_file=False))
        else:
            found.append(
                Reader("tshark conv,tcp (no plugin)", _tshark_conv, _nothing, multi_file=False)
            )
    found.append(Reader("jsdissect", _jsdissect("auto"), _json_rows))
    # The same in one process: what the decoding workers (default on spare CPUs) bring.
    found.append(Reader("jsdissect --jobs 0", _jsdissect("auto", "--jobs", "0"), _json_rows))
    found.append(Reader("jsdissect python", _jsdissect("python"), _json_rows))
    # The hot modules as Python, not compiled (jsdissect/native.py): what mypyc brings.
    found.append(Reader("jsdissect uncompiled", _uncompiled(_jsdissect("auto")), _json_rows))
    python = _uncompiled(_jsdissect("python"))
    found.append(Reader("jsdissect python uncompiled", python, _json_rows))
    return found


# --- running ----------------------------------------------------------------------------


@dataclass
class Result:
    capture: str
    reader: str
    walls: list[float] = field(default_factory=list)  # seconds, one per round
    # CPU seconds (user + system) of the reader and the processes it waited for (decoding
    # workers), one per round: less noisy than the wall time on a shared machine, and what
    # bounds the rate on a given number of cores.
    cpus: list[float] = field(default_factory=list)
    rss_kb: int | None = 0  # peak over the rounds (None: not measured, GNU time missing)
    # The peak over the rounds of the memory of all the reader's processes at once
    # (sampled): what a decoding worker adds, which the largest process alone hides.
    tree_kb: int = 0
    tasks_found: int | None = None  # the fewest over the rounds

    @property
    def wall(self) -> float:
        return statistics.median(self.walls)

    @property
    def cpu(self) -> float:
        return statistics.median(self.cpus)


class ReaderFailed(RuntimeError):
    pass


def reader_env(cache: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    env["PYTHONPYCACHEPREFIX"] = str(cache)
    return env


GNU_TIME = Path("/usr/bin/time")


class TreeMemory:
    """Samples the summed proportional set size (PSS) of a process and its descendants
    every SAMPLE_S, and keeps the peak. PSS shares a page among the processes mapping it,
    so forked workers are not charged again for the pages they share with the reader;
    sampling can miss a peak shorter than the interval."""

    # A sample of two processes takes about 2 ms of CPU (smaps_rollup walks their memory
    # maps): every 10 ms that was a fifth of a core taken from the reader on 2 cores.
    SAMPLE_S = 0.1

    def __init__(self, pid: int, skip_root: bool) -> None:
        self.pid, self.skip_root = pid, skip_root
        self.peak_kb = 0
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def __enter__(self) -> TreeMemory:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._done.set()
        self._thread.join()

    def _sample(self) -> None:
        while True:
            pids = _descendants(self.pid) if self.skip_root else [self.pid, *_descendants(self.pid)]
            self.peak_kb = max(self.peak_kb, sum(map(_pss_kb, pids)))
            if self._done.wait(self.SAMPLE_S):
                return


def _descendants(pid: int) -> list[int]:
    found, todo = [], [pid]
    while todo:
        parent = todo.pop()
        try:
            tasks = list(Path(f"/proc/{parent}/task").iterdir())
        except OSError:
            continue  # exited meanwhile
        for task in tasks:
            try:
                children = [int(c) for c in (task / "children").read_text().split()]
            except OSError:
                continue
            found += children
            todo += children
    return found


def _pss_kb(pid: int) -> int:
    try:
        for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
            if line.startswith("Pss:"):
                return int(line.split()[1])
    except (OSError, ValueError):
        pass  # exited meanwhile, or a kernel without smaps_rollup
    return 0


def run_once(
    argv: list[str], out: Path, env: dict[str, str] | None = None
) -> tuple[float, float, int | None, int]:
    """Run a reader; its wall time, CPU time, its own peak RSS (KB), and the peak memory
    (KB) of all its processes together (TreeMemory)."""
    err, rss_file = out.with_suffix(".stderr"), out.with_suffix(".rss")
    gnu_time = GNU_TIME.exists()
    timed = ["/usr/bin/time", "-f", "%M", "-o", str(rss_file), *argv] if gnu_time else argv
    with open(out.with_suffix(".stdout"), "wb") as stdout, open(err, "wb") as stderr:
        start = time.perf_counter()
        proc = subprocess.Popen(timed, stdout=stdout, stderr=stderr, env=env)
        with TreeMemory(proc.pid, skip_root=gnu_time) as tree:  # (not GNU time's own)
            _pid, status, usage = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - start
    # wait4 reports the child's usage with that of the descendants it waited for (GNU time
    # waits for the reader, the reader for its workers).
    cpu = usage.ru_utime + usage.ru_stime
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        tail = err.read_text(errors="replace")[-2000:]
        raise ReaderFailed(f"{' '.join(argv)} exited {proc.returncode}:\n{tail}")
    if gnu_time:
        rss = int(rss_file.read_text().split()[-1])
        # All processes together held at least what the largest one did (a reader done
        # before the first sample, or a peak between two).
        return wall, cpu, rss, max(tree.peak_kb, rss)
    # wait4's peak of a child forked from this process counts this process's pages before
    # the exec: no measure of the reader at all.
    return wall, cpu, None, tree.peak_kb


class Run(NamedTuple):
    wall: float  # seconds
    cpu: float  # seconds, the reader's and its waited-for workers'
    rss_kb: int | None  # the largest process's peak (GNU time)
    tree_kb: int  # the peak of all its processes together (TreeMemory)
    tasks: int | None  # tasks in its output (None: a reader without a task table)


def measure(capture: generate.Generated, reader: Reader, work: Path, env: dict[str, str]) -> Run:
    """One run of a reader on a capture."""
    out = work / f"{capture.spec.name}.{reader.name.replace(' ', '_')}.out"
    out.unlink(missing_ok=True)
    wall, cpu, rss, tree = run_once(reader.argv(capture.paths, out), out, env)
    # Readers that write to stdout (tshark) leave their table in .stdout.
    tasks = reader.count(out if out.exists() else out.with_suffix(".stdout"))
    return Run(wall, cpu, rss, tree, tasks)


def _read_through(capture: generate.Generated) -> None:
    """The capture's files read once: in the page cache for the reader that comes next."""
    for path in capture.paths:
        with open(path, "rb") as f:
            while f.read(1 << 24):
                pass


def warm_up(captures: list[generate.Generated], found: list[Reader], out: Path, env: dict) -> None:
    """Page cache and bytecode, so that the first reader measured pays for neither."""
    for capture in captures:
        _read_through(capture)
    tiny = generate.generate(generate.Spec("warmup", tasks=3), out / "warmup")
    for reader in found:
        if reader.name.startswith("jsdissect"):
            measure(tiny, reader, out / "warmup", env)


def run_all(
    captures: list[generate.Generated], found: list[Reader], rounds: int, work: Path, env: dict
) -> list[Result]:
    """Every reader on every capture, round after round: a round runs every reader on
    every capture, so noise on the machine (its speed changes by the minute here) spreads
    over all of them alike, and ratios across captures (big against mixed) compare runs
    made close together."""
    results: dict[tuple[str, str], Result] = {}
    for n in range(rounds):
        for capture in captures:
            usable = [r for r in found if r.multi_file or len(capture.paths) == 1]
            # Each round starts with another reader, and every run finds the capture read
            # just before: here cached pages of an idle file drop away within minutes, and
            # the first reader after a pause paid for it (the same reader always, before).
            k = n % len(usable) if usable else 0
            for reader in usable[k:] + usable[:k]:
                _read_through(capture)
                run = measure(capture, reader, work, env)
                key = (capture.spec.name, reader.name)
                result = results.setdefault(key, Result(capture.spec.name, reader.name))
                result.walls.append(run.wall)
                result.cpus.append(run.cpu)
                if run.rss_kb is None or result.rss_kb is None:
                    result.rss_kb = None
                else:
                    result.rss_kb = max(result.rss_kb, run.rss_kb)
                result.tree_kb = max(result.tree_kb, run.tree_kb)
                if run.tasks is not None:  # a round that found fewer tasks is not hidden
                    fewest = result.tasks_found
                    result.tasks_found = run.tasks if fewest is None else min(fewest, run.tasks)
    return list(results.values())


# --- reporting --------------------------------------------------------------------------


@dataclass
class Target:
    name: str
    value: float | None
    goal: str
    met: bool | None


def machine() -> dict[str, str]:
    cpu = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        cpu = platform.processor()
    return {
        "nproc": str(os.cpu_count()),
        "cpu": cpu,
        "python": platform.python_version(),
        "tcpdump": _version(["tcpdump", "--version"]),
        "tshark": _version(["tshark", "--version"]),
        "jsdissect": "compiled" if native.status().compiled else native.status().reason,
    }


def _version(argv: list[str]) -> str:
    if not shutil.which(argv[0]):
        return "not installed"
    out = subprocess.run(argv, capture_output=True, text=True, check=False)
    return (out.stdout or out.stderr).splitlines()[0].strip() if (out.stdout or out.stderr) else ""


def _find(results: list[Result], capture: str, reader: str) -> Result | None:
    return next((r for r in results if r.capture == capture and r.reader == reader), None)


def targets(results: list[Result], captures: dict[str, generate.Generated]) -> list[Target]:
    """The issue's targets; a reader that did not find every task meets none: a fast run
    that is wrong proves nothing."""

    def every(r: Result | None) -> bool:
        return r is not None and r.tasks_found == captures[r.capture].tasks

    out = []
    js = _find(results, "mixed", "jsdissect")
    tcpdump = _find(results, "mixed", "tcpdump -r")
    tshark = next((r for r in results if r.capture == "mixed" and "tshark" in r.reader), None)
    if js and tcpdump:
        ratio = js.wall / tcpdump.wall
        met = ratio <= MAX_TCPDUMP_RATIO and every(js)
        out.append(Target("mixed: jsdissect / tcpdump -r", ratio, "≤ 3×, all found", met))
    if js and tshark:
        ratio = tshark.wall / js.wall
        plugin = tshark.reader == "tshark + plugin"
        met = ratio >= MIN_TSHARK_RATIO and every(js) and every(tshark)
        out.append(
            Target(f"mixed: {tshark.reader} / jsdissect", ratio, "≥ 50×, all found", met)
            if plugin
            else Target(f"mixed: {tshark.reader} / jsdissect", ratio, "≥ 50×", None)
        )
    dense = _find(results, "dense", "jsdissect")
    if dense:
        rate = (dense.tasks_found or 0) / dense.wall  # only the tasks it found count
        met = rate >= MIN_DENSE_TASKS_PER_S and every(dense)
        out.append(Target("dense: jsdissect tasks/s", rate, "≥ 5,000, all found", met))
    # jsdissect's own reader (--engine python: Python reads the records, libpcap's compiled
    # filter still picks them), judged where nothing is compiled either.
    python = _find(results, "mixed", "jsdissect python uncompiled")
    if python:
        rate = captures["mixed"].packets / python.wall
        met = rate >= MIN_PYTHON_PACKETS_PER_S and every(python)
        goal = "≥ 150,000, all found"
        out.append(Target("mixed: python engine, uncompiled, packets/s", rate, goal, met))
    big = _find(results, "big", "jsdissect")
    if big:
        # All its processes at once: a decoding worker's memory counts too.
        peak = big.tree_kb / 1024
        met = (peak < MAX_BIG_RSS_MB and every(big)) if peak else None  # 0: no /proc
        goal = "< 300, all found"
        out.append(Target("big: jsdissect peak memory MB, all processes", peak, goal, met))
        if js:
            ratio = big.wall / js.wall
            size = captures["big"].bytes / captures["mixed"].bytes
            limit = BIG_TIME_SLACK * size
            goal = f"≤ {limit:.1f}× ({size:.1f}× the bytes, as 11× is for 5 GB / 480 MB)"
            met = ratio <= limit and every(big) and every(js)
            out.append(Target("big: wall / mixed wall", ratio, goal, met))
    return out


def _rate(value: float) -> str:
    return f"{value:,.0f}"


def table(results: list[Result], captures: dict[str, generate.Generated]) -> str:
    head = (
        "| capture | reader | wall s (median) | CPU s | packets/s | MB/s | tasks/s "
        "| CPU ms/task | peak RSS MB | all processes MB | tasks found |"
    )
    lines = [head, "|---|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|"]
    for r in results:
        cap = captures[r.capture]
        found = "" if r.tasks_found is None else f"{r.tasks_found:,} / {cap.tasks:,}"
        # Only a reader that builds the task table has a task rate.
        rate = "" if r.tasks_found is None else _rate(r.tasks_found / r.wall)
        per_task = "" if not r.tasks_found else f"{1000 * r.cpu / r.tasks_found:.3f}"
        rss = "n/a" if r.rss_kb is None else f"{r.rss_kb / 1024:,.0f}"
        tree = f"{r.tree_kb / 1024:,.0f}" if r.tree_kb else "n/a"
        lines.append(
            f"| {r.capture} | {r.reader} | {r.wall:.3f} | {r.cpu:.2f} "
            f"| {_rate(cap.packets / r.wall)} | {cap.bytes / 1e6 / r.wall:,.1f} | {rate} "
            f"| {per_task} | {rss} | {tree} | {found} |"
        )
    return "\n".join(lines)


def captures_table(captures: dict[str, generate.Generated]) -> str:
    lines = [
        "| capture | files | packets | MB | JobScheduler packets | on the filter's ports | tasks |",
        "|---|--:|--:|--:|--:|--:|--:|",
    ]
    for name, cap in captures.items():
        lines.append(
            f"| {name} | {len(cap.paths)} | {cap.packets:,} | {cap.bytes / 1e6:,.0f} "
            f"| {cap.js_packets:,} | {cap.filter_packets:,} | {cap.tasks:,} |"
        )
    return "\n".join(lines)


def targets_table(found: list[Target]) -> str:
    lines = ["| target | measured | goal | met |", "|---|--:|---|---|"]
    for t in found:
        met = {True: "yes", False: "**no**", None: "n/a"}[t.met]
        value = "" if t.value is None else (f"{t.value:,.1f}" if t.value < 100 else _rate(t.value))
        lines.append(f"| {t.name} | {value} | {t.goal} | {met} |")
    return "\n".join(lines)


def report(
    results: list[Result], captures: dict[str, generate.Generated], rounds: int, judged: bool
) -> tuple[str, dict]:
    """The tables, and the targets: printed only when `judged` (a smoke run is all
    start-up), always worked out (in the JSON, so that a smoke run exercises them)."""
    info = machine()
    found = targets(results, captures)
    verdict = targets_table(found) if judged else "Targets are judged at --size full or big."
    text = "\n\n".join(
        [
            f"Machine: {info['nproc']} cores, {info['cpu']}, Python {info['python']}; "
            f"{info['tcpdump']}; {info['tshark']}; jsdissect {info['jsdissect']}; "
            f"medians of {rounds} round(s).",
            captures_table(captures),
            table(results, captures),
            verdict,
        ]
    )
    data = {
        "machine": info,
        "rounds": rounds,
        "captures": {name: asdict(cap) for name, cap in captures.items()},
        "results": [asdict(r) | {"wall": r.wall, "cpu": r.cpu} for r in results],
        "targets": [asdict(t) for t in found],
        "judged": judged,
    }
    return text + "\n", data


# --- main -------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", choices=sorted(SIZES), default="full")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--out", type=Path, help="where captures are cached (default: /tmp)")
    parser.add_argument("--json", type=Path, help="also write the results as JSON here")
    parser.add_argument("--readers", help="comma-separated subset of the readers (by name)")
    args = parser.parse_args(argv)
    if not stat.S_ISCHR(os.stat(os.devnull).st_mode):
        # tcpdump -w /dev/null would write the whole capture to disk and look slow.
        sys.exit(f"bench: {os.devnull} is not a device on this machine; restore it first")
    out = args.out or Path(tempfile.gettempdir()) / f"jsdissect-bench-{args.size}"
    found = readers()
    if args.readers:
        wanted = {name.strip() for name in args.readers.split(",")}
        unknown = wanted - {r.name for r in found}
        if unknown:  # (a typo printed an empty table, and judged it)
            known = ", ".join(r.name for r in found)
            sys.exit(f"bench: no reader {', '.join(sorted(unknown))} here (readers: {known})")
        found = [r for r in found if r.name in wanted]
    captures = {}
    for spec in SIZES[args.size]:
        start = time.perf_counter()
        captures[spec.name] = generate.generate(spec, out)
        print(f"{spec.name}: {out} ({time.perf_counter() - start:.1f} s)", file=sys.stderr)
    env = reader_env(out / "pycache")
    warm_up(list(captures.values()), found, out, env)
    with tempfile.TemporaryDirectory(prefix="jsdissect-bench-") as work:
        results = run_all(list(captures.values()), found, args.rounds, Path(work), env)
    text, data = report(results, captures, args.rounds, judged=args.size != "smoke")
    print(text)
    if args.json:
        args.json.write_text(json.dumps(data, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
