"""The benchmark at smoke size, so it cannot rot, and the scaling claims by counting work.

No wall-clock assertions (the CI machine is shared and noisy): the speed targets are the
benchmark's output (`python tests/bench/bench.py --size full`), not tests. What can be
counted is tested: how many packets reach Python, and how much memory a run holds.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import tracemalloc
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent / "bench"))

import generate

from jsdissect.pipeline import analyze

BENCH = Path(__file__).resolve().parent / "bench" / "bench.py"
SMOKE = {spec.name: spec for spec in (
    generate.Spec("mixed", packets=20_000, flows=100),
    generate.Spec("dense", tasks=200),
)}  # fmt: skip


@pytest.fixture(scope="module")
def smoke_run(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """One smoke run of the benchmark script, all readers, one round."""
    out = tmp_path_factory.mktemp("bench")
    result = out / "result.json"
    argv = [sys.executable, str(BENCH), "--size", "smoke", "--rounds", "1", "--out", str(out)]
    run = subprocess.run(
        [*argv, "--json", str(result)], capture_output=True, text=True, timeout=300
    )
    assert run.returncode == 0, run.stderr[-3000:]
    assert "| mixed | jsdissect |" in run.stdout
    return json.loads(result.read_text()) | {"out": out}


def test_smoke_specs_are_the_benchmarks() -> None:
    from bench import SIZES

    assert {s.name: s for s in SIZES["smoke"]} == SMOKE


@pytest.mark.parametrize("capture", ["mixed", "dense"])
def test_jsdissect_finds_every_generated_task(smoke_run: dict, capture: str) -> None:
    generated = smoke_run["captures"][capture]
    assert generated["tasks"] > 0
    readers = ("jsdissect", "jsdissect --jobs 0", "jsdissect python", "jsdissect uncompiled")
    for reader in (*readers, "jsdissect python uncompiled"):
        (row,) = [
            r for r in smoke_run["results"] if r["capture"] == capture and r["reader"] == reader
        ]
        assert row["tasks_found"] == generated["tasks"], reader
        # CPU time of the reader (and of any worker it waited for): a Python start-up alone
        # takes tens of milliseconds, so zero would mean the usage was not read.
        assert row["cpu"] > 0.01 and len(row["cpus"]) == len(row["walls"]), reader


def test_the_peers_ran_and_the_targets_are_worked_out(smoke_run: dict) -> None:
    """Found in review: a smoke run passed whatever became of tcpdump, tshark or the
    target logic. Both peers read both captures; tshark's table holds every task; every
    target is worked out (not judged: a smoke run is all start-up)."""
    rows = {(r["capture"], r["reader"]): r for r in smoke_run["results"]}
    for capture in ("mixed", "dense"):
        assert rows[capture, "tcpdump -r"]["rss_kb"] > 0
        tshark = rows[capture, "tshark + plugin"]
        assert tshark["tasks_found"] == smoke_run["captures"][capture]["tasks"]
    names = [t["name"] for t in smoke_run["targets"]]
    assert names == [
        "mixed: jsdissect / tcpdump -r",
        "mixed: tshark + plugin / jsdissect",
        "dense: jsdissect tasks/s",
        "mixed: python engine, uncompiled, packets/s",
    ]
    assert all(r["tree_kb"] > 0 for r in smoke_run["results"])  # every reader sampled
    assert smoke_run["judged"] is False
    assert all(t["value"] > 0 for t in smoke_run["targets"])


def _judged(found: dict[str, int | None]) -> dict[str, tuple[float | None, bool | None]]:
    """The targets of made-up results: every reader 1 s but jsdissect on mixed 2 s, with
    the tasks each found; (value, met) by target name."""
    from bench import Result, targets

    captures = {
        name: generate.Generated(generate.Spec(name), [name], 1_000_000, 480 << 20, 100, 1000, 1000)
        for name in ("mixed", "dense", "big")
    }
    readers = {
        ("mixed", "tcpdump -r"): None,
        ("mixed", "tshark + plugin"): found["tshark"],
        ("mixed", "jsdissect"): found["mixed"],
        ("mixed", "jsdissect python uncompiled"): found["python"],
        ("dense", "jsdissect"): found["dense"],
        ("big", "jsdissect"): found["big"],
    }
    results = []
    for (capture, reader), tasks in readers.items():
        wall = 2.0 if (capture, reader) == ("mixed", "jsdissect") else 1.0
        results.append(Result(capture, reader, [wall], [wall], 1, 1024, tasks))
    return {t.name.split(" (")[0]: (t.value, t.met) for t in targets(results, captures)}


def test_a_target_is_met_only_by_a_run_that_found_every_task() -> None:
    """Found in review: only dense checked the tasks found; a mixed or big run that found
    none met its speed targets. And the ratios are the issue's way round."""
    every = _judged(dict(tshark=100, mixed=100, python=100, dense=100, big=100))
    assert every["mixed: jsdissect / tcpdump -r"] == (2.0, True)  # jsdissect's / tcpdump's
    assert every["mixed: tshark + plugin / jsdissect"] == (0.5, False)  # tshark's / ours
    assert every["mixed: python engine, uncompiled, packets/s"] == (1_000_000, True)
    assert every["big: wall / mixed wall"] == (0.5, True)
    tcpdump, python = "mixed: jsdissect / tcpdump -r", "mixed: python engine, uncompiled, packets/s"
    memory, linear = "big: jsdissect peak memory MB, all processes", "big: wall / mixed wall"
    assert every[memory][1] is True
    fails = {"mixed": (tcpdump, linear), "python": (python,), "big": (memory, linear)}
    for missed, failed in fails.items():
        found = dict(tshark=100, mixed=100, python=100, dense=100, big=100) | {missed: 99}
        judged = _judged(found)
        for name in (tcpdump, python, memory, linear):
            assert judged[name][1] is (name not in failed), (missed, name)


def test_a_reader_name_the_bench_does_not_have_is_refused() -> None:
    # Found in review: a typo printed an empty table and judged it.
    from bench import main

    with pytest.raises(SystemExit, match="no reader jsdisect here"):
        main(["--size", "smoke", "--readers", "tcpdump -r,jsdisect"])


@pytest.mark.parametrize("files", [1, 3])
def test_the_tcpdump_peer_copies_every_packet(smoke_run: dict, tmp_path: Path, files: int) -> None:
    """Found in review: nothing checked tcpdump's work (a `-c 10` passed). Its command as
    the bench runs it, writing to a file instead of /dev/null, copies every packet, of
    one file and of a ring buffer's list."""
    from bench import _tcpdump
    from scapy.utils import RawPcapReader

    generated = smoke_run["captures"]["mixed"]
    (path,) = generated["paths"]
    parts = [path] * files  # (tcpdump -V reads a list, the same file thrice will do)
    argv = _tcpdump(parts, tmp_path / "copy.out")
    copy = tmp_path / "copy.pcap"
    argv[argv.index("/dev/null")] = str(copy)
    subprocess.run(argv, check=True, capture_output=True, timeout=300)
    assert sum(1 for _ in RawPcapReader(str(copy))) == files * generated["packets"]


def test_the_memory_of_all_processes_counts_every_worker() -> None:
    """A reader and the worker it forks each fill 40 MB of their own: the largest process
    holds 40, all processes together 80 (what GNU time's peak alone would hide)."""
    from bench import run_once

    held = (
        "import os, time; pid = os.fork(); b = bytearray(40 << 20); "
        "b[::4096] = b'x' * len(b[::4096]); time.sleep(0.5); pid and os.waitpid(pid, 0)"
    )
    out = Path(tempfile.mkdtemp()) / "memory.out"
    _wall, _cpu, rss_kb, tree_kb = run_once([sys.executable, "-c", held], out)
    assert rss_kb is None or 40 << 10 < rss_kb < 70 << 10
    assert tree_kb > 85 << 10  # 2 × 40 MB of their own, and the interpreter's


@pytest.mark.parametrize("capture", ["mixed", "dense"])
def test_every_generated_task_completed_but_one_cut_short(smoke_run: dict, capture: str) -> None:
    generated = generate.generate(SMOKE[capture], smoke_run["out"])  # cached by the run
    result = analyze(generated.paths, messages=False)
    assert len(result.task_records) == generated.tasks
    statuses = [t.status for t in result.task_records]
    # mixed ends as a capture of a busy host does: in the middle of its last task
    assert (
        statuses
        == ["completed"] * (generated.tasks - generated.running) + ["running"] * generated.running
    )
    assert generated.running == (capture == "mixed")
    done = result.task_records[: len(statuses) - generated.running]
    assert all(t.steps and t.log_lines and t.job for t in done)
    assert result.decode_errors == 0
    with pytest.raises(ValueError):  # messages=False: the Request/Reply events are gone
        _ = result.messages


@pytest.mark.parametrize("engine", ["auto", "python"])
def test_only_packets_on_jobscheduler_ports_reach_python(tmp_path: Path, engine: str) -> None:
    """BPF (libpcap's, or the same program run by the python engine) passes exactly the
    packets on the command ports and the callback range: the tasks', and the few unrelated
    flows whose ephemeral ports fall in the range; the rest never becomes a Python object."""
    generated = generate.generate(SMOKE["mixed"], tmp_path)
    result = analyze(generated.paths, engine=engine, messages=False)
    assert result.stats.engine == ("python" if engine == "python" else "libpcap")
    assert 0 < generated.js_packets < generated.filter_packets < generated.packets / 20
    assert result.stats.packets == generated.filter_packets


def _memory(paths: list[str]) -> tuple[int, int, int]:
    """(tasks, bytes the result holds, bytes beyond that at the peak) of one analysis."""
    analyze(paths, messages=False)  # imports and caches settle first
    tracemalloc.start()
    try:
        result = analyze(paths, messages=False)
        held, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    return len(result.task_records), held, peak - held


def test_memory_follows_open_connections_not_capture_size(tmp_path: Path) -> None:
    """Tasks one after the other: four times the tasks, the same few open connections. The
    working memory stays flat; what grows is the result, a small record per task."""
    sizes = []
    for tasks in (100, 400):
        spec = generate.Spec(f"sequential{tasks}", tasks=tasks, task_interval=400_000)
        sizes.append(_memory(generate.generate(spec, tmp_path).paths))
    (small_tasks, _small_held, small_work), (big_tasks, big_held, big_work) = sizes
    assert (small_tasks, big_tasks) == (100, 400)
    assert big_work < 2 * small_work, sizes
    assert big_held / big_tasks < 16_384, sizes  # bytes per task row and its connections


def test_the_capture_filter_stays_a_short_program_for_every_packet_to_run() -> None:
    """Every packet of a busy host runs the BPF program in C: its length is the per-packet
    cost that stays when nothing reaches Python. `ip6 protochain 6` (for TCP behind IPv6
    extension headers) once made it 2,299 instructions, past what libpcap's optimizer
    handles, and big took 78% longer; counted here, not timed."""
    import pcapy

    from jsdissect.capture import LT_ETHERNET, _filter_for_linktype
    from jsdissect.pipeline import Options, capture_filter

    bpf = _filter_for_linktype(capture_filter(Options()), LT_ETHERNET)
    assert len(pcapy.compile(LT_ETHERNET, 65535, bpf, 1, 0).get_bpf()) < 400
