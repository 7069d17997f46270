"""Callback decoding in worker processes gives what decoding in one process gives."""

from __future__ import annotations

import os
import pickle
import subprocess
import sys
import time
from pathlib import Path

import pathological as patho
import pytest

import jsdissect
from jsdissect import callbacks, pipeline
from jsdissect.protocol import objserver as api

ROOT = Path(__file__).resolve().parent.parent
SAMPLES = sorted(p for p in (ROOT / "captures").glob("*") if p.suffix in (".pcap", ".pcapng"))
# Crafted captures whose callback channels are odd: reordered, gapped, cut, mid-stream.
ODD = (
    "out_of_order_and_duplicates",
    "gap_mid_frame",
    "gap_whole_frame",
    "starts_mid_callback",
    "ends_mid_task",
    "sequence_wrap",
    "snaplen",
)


@pytest.fixture(scope="module")
def odd_captures(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    outdir = tmp_path_factory.mktemp("odd")
    makers = {make.__name__: make for make in patho.SCENARIOS}
    return [makers[name]().write(outdir)[0] for name in ODD if name in makers]


def same_analysis(capture: Path, messages: bool, workers: int) -> None:
    alone = jsdissect.analyze([capture], messages=messages, workers=0)
    beside = jsdissect.analyze([capture], messages=messages, workers=workers)
    assert beside.channels == alone.channels
    assert beside.task_records == alone.task_records
    assert beside.stats.warnings == alone.stats.warnings


@pytest.mark.parametrize("capture", SAMPLES, ids=lambda p: p.name)
@pytest.mark.parametrize("messages", [False, True], ids=["tasks", "messages"])
def test_workers_give_the_same_channels_and_tasks(capture: Path, messages: bool) -> None:
    same_analysis(capture, messages, workers=2)


def test_workers_on_odd_callback_channels(odd_captures: list[Path]) -> None:
    assert len(odd_captures) == len(ODD), "pathological scenarios were renamed: update ODD"
    for capture in odd_captures:
        same_analysis(capture, messages=True, workers=1)


def test_the_worker_really_decodes() -> None:
    """Not the inline path in disguise: with the worker dead from the start, analyze falls
    back and says so (see the next test); with it alive there is no such warning and the
    callback channels still carry their events."""
    result = jsdissect.analyze([ROOT / "captures" / "one_api.pcapng"], workers=1)
    api_channels = [ch for ch in result.channels if ch.kind == "api"]
    assert api_channels and all(ch.events for ch in api_channels)
    assert not any("worker" in w for w in result.stats.warnings)


def test_a_lost_worker_means_decoding_again_in_one_process(monkeypatch) -> None:
    capture = ROOT / "captures" / "failures.pcap"
    monkeypatch.setattr(callbacks, "_worker_main", lambda pipe, keep_all: os._exit(3))
    result = jsdissect.analyze([capture], workers=1)
    expected = jsdissect.analyze([capture], workers=0)
    assert result.task_records == expected.task_records
    assert any("decoding worker process was lost" in w for w in result.stats.warnings)


def test_a_bug_in_a_worker_prints_no_traceback(monkeypatch, capfd) -> None:
    def broken(self, ops):
        raise RuntimeError("a bug")

    monkeypatch.setattr(callbacks.InlineDecoding, "apply", broken)  # only workers apply
    capture = ROOT / "captures" / "one_shell.pcap"
    result = jsdissect.analyze([capture], workers=1)
    assert result.task_records == jsdissect.analyze([capture], workers=0).task_records
    assert any("decoding worker process was lost" in w for w in result.stats.warnings)
    assert "Traceback" not in capfd.readouterr().err


def test_spawned_workers_decode_the_same(monkeypatch) -> None:
    """spawn is how workers start off Linux (macOS, Windows): a fresh interpreter that
    imports the module and gets its batches by pickle, like a forked one."""

    def spawned(workers: int | None, keep_all: bool) -> callbacks.WorkerDecoding:
        return callbacks.WorkerDecoding(1, keep_all, start_method="spawn")

    capture = ROOT / "captures" / "scala_api.pcap"
    alone = jsdissect.analyze([capture], workers=0)
    monkeypatch.setattr(pipeline, "_callback_decoding", spawned)
    result = jsdissect.analyze([capture])
    assert not result.stats.warnings
    assert result.channels == alone.channels
    assert result.task_records == alone.task_records


def test_worker_decoding_raises_worker_lost_when_killed() -> None:
    decoding = callbacks.WorkerDecoding(1, keep_all=True)
    decoding.open(0, "C1", None)
    decoding._procs[0].kill()  # as the kernel's OOM killer would
    decoding._procs[0].join()
    with pytest.raises(callbacks.WorkerLost):
        decoding.results()
    decoding.stop()


def test_a_worker_sends_results_back_as_its_connections_close() -> None:
    """Found in review: a worker held every result until the end, so at the peak both
    processes held them all (dense `messages`: 513 MB over both against 290 MB in one).
    Results of closed connections now come back while bytes still go out."""
    decoding = callbacks.WorkerDecoding(1, keep_all=True)
    try:
        for key in range(callbacks.RESULT_CHUNK):
            decoding.open(key, f"C{key}", None)
            decoding.close(key)
        decoding._send(0)
        decoding.open(10**6, "still-open", None)
        decoding._send(0)  # the worker sends what closed once it took this batch in
        receiver = decoding._receivers[0]
        deadline = time.monotonic() + 60  # a bound on waiting, not on speed
        while len(receiver._done) < callbacks.RESULT_CHUNK and time.monotonic() < deadline:
            time.sleep(0.01)
        assert sorted(receiver._done) == list(range(callbacks.RESULT_CHUNK))
        assert set(decoding.results()) == {*range(callbacks.RESULT_CHUNK), 10**6}
    finally:
        decoding.stop()


@pytest.mark.parametrize("start_method", ["fork", "spawn"])
def test_workers_end_by_themselves_when_their_input_ends(start_method: str) -> None:
    """A run that stops early (an unreadable file, Ctrl-C) closes the pipes without asking
    for results: every worker must see the end of its input and exit, not wait to be
    killed. A forked worker once kept a copy of the main process's ends of the pipes, so
    it never saw that end."""
    decoding = callbacks.WorkerDecoding(2, keep_all=True, start_method=start_method)
    decoding.open(0, "C1", None)
    decoding.open(1, "C2", None)
    decoding._send(0)
    procs = list(decoding._procs)
    decoding.stop()
    assert [p.exitcode for p in procs] == [0, 0]  # killed by stop(): -9


WORKERS_ORPHANED = """
import os, signal, sys
from jsdissect import callbacks
decoding = callbacks.WorkerDecoding(2, keep_all=True)
print(" ".join(str(p.pid) for p in decoding._procs), flush=True)
os.kill(os.getpid(), signal.SIGKILL)  # no clean-up: as the OOM killer or kill -9 would
"""


def _running(pid: int) -> bool:
    """Alive and not a zombie (an orphan's zombie waits for whoever reaps it)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z"


def test_workers_end_when_the_main_process_dies() -> None:
    run = subprocess.run(
        [sys.executable, "-c", WORKERS_ORPHANED], capture_output=True, text=True, timeout=120
    )
    assert run.returncode == -9, run.stderr
    pids = [int(pid) for pid in run.stdout.split()]
    assert len(pids) == 2
    # A liveness bound, not a speed one: the workers see end-of-file at once and exit; the
    # defect this guards against left them waiting forever.
    deadline = time.monotonic() + 60
    while any(map(_running, pids)) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not any(map(_running, pids)), "orphaned decoding workers still running"


@pytest.mark.parametrize("workers", [0, 1, 2])
def test_connections_sharing_an_id_stay_apart(workers: int) -> None:
    """Two connections can share an id (same 4-tuple and first microsecond, one after the
    other): their results are kept by the pipeline's key, not by the id."""
    if workers:
        decoding = callbacks.WorkerDecoding(workers, keep_all=True)
    else:
        decoding = callbacks.InlineDecoding(keep_all=True)
    try:
        decoding.open(0, "Csame", None)
        decoding.data(0, 0, 0, b"\0\0\0\0not a frame", 1)
        decoding.close(0)
        decoding.open(1, "Csame", None)
        decoding.close(1)
        results = decoding.results()
    finally:
        decoding.stop()
    assert set(results) == {0, 1}
    (error,) = results[0][0]
    assert "frame length 0" in error.reason
    assert results[1] == ((), None)


def test_events_survive_pickling_as_themselves() -> None:
    result = jsdissect.analyze([ROOT / "captures" / "scala_api.pcap"], workers=0)
    events = [ev for ch in result.channels for ev in ch.events]
    kinds = {type(ev) for ev in events}
    assert {api.Request, api.Reply, api.StepAnswered, api.LogLine} <= kinds
    copies = pickle.loads(pickle.dumps(events, pickle.HIGHEST_PROTOCOL))
    assert copies == events
    assert [type(c) for c in copies] == [type(e) for e in events]


class CountedWorkers(callbacks.WorkerDecoding):
    started = 0

    def __init__(self, workers: int, keep_all: bool) -> None:
        type(self).started += 1
        super().__init__(workers, keep_all)


def test_auto_starts_workers_only_after_enough_callback_traffic(monkeypatch) -> None:
    monkeypatch.setattr(callbacks, "WorkerDecoding", CountedWorkers)
    capture = ROOT / "captures" / "parallel_50.pcap"
    alone = jsdissect.analyze([capture], workers=0)

    def analyze_with_mark(start_after: int | None) -> tuple[pipeline.Analysis, bool]:
        made: list[callbacks.AutoDecoding] = []

        def auto(workers: int | None, keep_all: bool) -> callbacks.AutoDecoding:
            made.append(callbacks.AutoDecoding(1, keep_all, start_after))
            return made[-1]

        monkeypatch.setattr(pipeline, "_callback_decoding", auto)
        result = jsdissect.analyze([capture])
        return result, any(d.started for d in made)

    # The default mark is never reached by 50 tasks: no process.
    result, started = analyze_with_mark(None)
    assert result.task_records == alone.task_records
    assert not started and CountedWorkers.started == 0

    # A low mark: the first connections are decoded here, the later ones by the worker.
    result, started = analyze_with_mark(20_000)
    assert started and CountedWorkers.started >= 1
    assert result.task_records == alone.task_records
    assert result.channels == alone.channels


def test_auto_goes_on_alone_when_no_process_can_start(monkeypatch) -> None:
    def no_process(*args: object) -> None:
        raise callbacks.WorkerLost("could not start a decoding worker process (EAGAIN)")

    monkeypatch.setattr(callbacks, "WorkerDecoding", no_process)
    decoding = callbacks.AutoDecoding(2, keep_all=True, start_after=0)
    connection = decoding.open(0, "C1", None)
    connection.data(0, 0, 0, b"\0\0\0\0", 1)
    connection.close(0)
    (error,) = decoding.results()[0][0]
    assert not decoding.started and "frame length 0" in error.reason


def test_spare_cpus() -> None:
    assert 0 <= callbacks.spare_cpus() <= callbacks.MAX_WORKERS
    assert callbacks.spare_cpus() == min(len(os.sched_getaffinity(0)) - 1, callbacks.MAX_WORKERS)


def test_worker_count_is_checked() -> None:
    with pytest.raises(ValueError):
        callbacks.WorkerDecoding(0, keep_all=False)


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "jsdissect", *args], capture_output=True, text=True, timeout=120
    )


def test_cli_jobs_gives_the_same_csv() -> None:
    capture = str(ROOT / "captures" / "parallel_50.pcap")
    alone = cli("tasks", "-q", "--jobs", "0", capture, "--csv", "-")
    beside = cli("tasks", "-q", "--jobs", "2", capture, "--csv", "-")
    assert alone.returncode == beside.returncode == 0, alone.stderr + beside.stderr
    assert beside.stdout == alone.stdout
    assert alone.stdout.count("\n") == 51  # header + 50 tasks


def test_cli_jobs_out_of_range_is_a_usage_error() -> None:
    out = cli("tasks", "--jobs", str(callbacks.MAX_WORKERS + 1), "x.pcap")
    assert out.returncode == 2
    assert "--jobs" in out.stderr and "Traceback" not in out.stderr


def _analyzed_in_a_pool_worker(workers: int | None) -> tuple[int, list[str], int]:
    result = jsdissect.analyze(ROOT / "captures" / "demo.pcap", workers=workers)
    return len(result.task_records), result.stats.warnings, callbacks.spare_cpus()


@pytest.mark.parametrize("workers", [None, 1])
def test_analyze_in_a_daemonic_process_decodes_in_that_process(workers: int | None) -> None:
    """Found in review: in a multiprocessing pool's worker (or a Dask task) a capture with
    enough callback traffic to start a decoding worker failed with "daemonic processes are
    not allowed to have children". Asked for none, it starts none; asked for one, it
    decodes in its own process, and says why."""
    import multiprocessing

    tasks = len(jsdissect.analyze(ROOT / "captures" / "demo.pcap", workers=0).task_records)
    with multiprocessing.get_context("fork").Pool(1) as pool:
        found, warnings, spare = pool.apply(_analyzed_in_a_pool_worker, (workers,))
    assert found == tasks and spare == 0  # (AutoDecoding starts one per spare CPU)
    if workers is None:
        assert warnings == []
    else:
        (warning,) = warnings
        assert "could not start a decoding worker process" in warning
        assert warning.endswith("decoded again in one process")
