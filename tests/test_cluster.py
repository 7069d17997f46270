"""Reading on a Dask cluster (`--dask-scheduler`): the same analysis as a local read.

The cluster is real: a Dask scheduler and worker processes on this machine, reached over
TCP like a scheduler elsewhere would be.
"""

from __future__ import annotations

import contextlib
import gzip
import logging
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import require, require_root
from conversations import command_chain
from crafted_captures import Capture, start_answered_then_other_traffic

import jsdissect
from jsdissect import report
from jsdissect.pipeline import Analysis

distributed = pytest.importorskip("distributed")  # the `dask` extra; CI installs it

ROOT = Path(__file__).resolve().parent.parent
DEMO = ROOT / "captures" / "demo.pcap"


@pytest.fixture(scope="module")
def scheduler() -> Iterator[str]:
    """The address of a scheduler with two single-threaded worker processes."""
    cluster = distributed.LocalCluster(
        n_workers=2, threads_per_worker=1, processes=True, dashboard_address=":0"
    )
    with cluster:
        yield cluster.scheduler_address


@pytest.fixture(scope="module")
def ring(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    """demo.pcap as a ring buffer, given out of time order, with a gzipped file and one
    cut short inside its last packet (a warning that must name that file)."""
    editcap = require("editcap")
    folder = tmp_path_factory.mktemp("ring")
    subprocess.run([editcap, "-c", "150", str(DEMO), str(folder / "ring.pcap")], check=True)
    files = sorted(folder.glob("ring_*.pcap"))
    assert len(files) >= 4
    gzipped = files[1].with_suffix(".pcap.gz")
    gzipped.write_bytes(gzip.compress(files[1].read_bytes()))
    files[1].unlink()
    files[-1].write_bytes(files[-1].read_bytes()[:-30])
    return [files[2], gzipped, files[0], *files[3:]]


def same_analysis(here: Analysis, there: Analysis) -> None:
    assert [report.task_row(t) for t in there.task_records] == [
        report.task_row(t) for t in here.task_records
    ]
    assert [report.connection_row(ch) for ch in there.channels] == [
        report.connection_row(ch) for ch in here.channels
    ]
    assert report.message_rows(there.channels, there.task_records) == report.message_rows(
        here.channels, here.task_records
    )
    assert there.stats == here.stats


def test_ring_buffer_read_on_the_cluster_is_the_local_analysis(scheduler, ring) -> None:
    here = jsdissect.analyze(ring)
    there = jsdissect.analyze(ring, dask_scheduler=scheduler)
    same_analysis(here, there)
    assert len(here.task_records) == 10
    (warning,) = here.stats.warnings
    assert warning.startswith(f"{ring[-1]}: cut short")


def test_a_file_given_twice_is_read_once_on_the_cluster_too(scheduler, ring) -> None:
    # Found in review: each worker read its copy, every packet came twice.
    given = [*ring, ring[0]]
    here = jsdissect.analyze(given)
    there = jsdissect.analyze(given, dask_scheduler=scheduler)
    same_analysis(here, there)
    assert len(there.task_records) == 10
    assert f"{ring[0]}: given more than once: read once" in there.stats.warnings


def test_later_reads_for_announced_ports_run_on_the_cluster_too(scheduler, tmp_path) -> None:
    # Each command of the chain is seen only by a read that takes the port the one before
    # announced: three reads, each of them on the cluster.
    chain = command_chain(tmp_path / "chain.pcap", 3)
    here = jsdissect.analyze(chain, all_tcp=False)
    there = jsdissect.analyze(chain, dask_scheduler=scheduler)
    assert sum(ch.kind == "cmd" for ch in here.channels) == 3
    same_analysis(here, there)


def test_the_end_of_the_capture_is_read_on_the_cluster_too(scheduler, tmp_path) -> None:
    """The last file holds only other traffic: its end, read where it lies, closes the
    task's 60 s window (callback-missing), as in a local read."""
    start_answered_then_other_traffic(cap := Capture(), callback_syn=False, other="udp")
    whole = cap.write(tmp_path / "whole.pcap")
    editcap = require("editcap")
    subprocess.run([editcap, "-c", "5", str(whole), str(tmp_path / "ring.pcap")], check=True)
    files = sorted(tmp_path.glob("ring_*.pcap"))
    assert len(files) == 2  # the task's five packets, then the other traffic
    here = jsdissect.analyze(files)
    there = jsdissect.analyze(files, dask_scheduler=scheduler)
    same_analysis(here, there)
    assert [t.status for t in there.task_records] == ["callback-missing"]
    assert there.capture_end == here.capture_end == jsdissect.analyze(whole).capture_end


def cli(*args: str | Path, stdin: bytes | None = None) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(
        [sys.executable, "-m", "jsdissect", *map(str, args)],
        input=stdin,
        capture_output=True,
        timeout=300,
    )


def one_line(out: subprocess.CompletedProcess[bytes]) -> str:
    assert out.returncode == 2 and b"Traceback" not in out.stderr
    (line,) = out.stderr.decode().strip().splitlines()
    return line


def test_cli_tables_from_the_cluster_equal_the_local_ones(scheduler, ring) -> None:
    local = cli("tasks", *ring, "--csv", "-")
    assert local.returncode == 0, local.stderr
    for where in (scheduler, "local"):
        remote = cli("tasks", *ring, "--csv", "-", "--dask-scheduler", where)
        assert (remote.returncode, remote.stdout, remote.stderr) == (0, local.stdout, local.stderr)
    piped = cli("tasks", "-", "--csv", "-", "--dask-scheduler", scheduler, stdin=DEMO.read_bytes())
    assert piped.returncode == 0 and piped.stdout == cli("tasks", DEMO, "--csv", "-").stdout


def test_bad_file_read_by_a_worker_is_one_line_naming_it(scheduler, tmp_path) -> None:
    text = tmp_path / "notes.pcap"
    text.write_text("not a capture\n")
    line = one_line(cli("tasks", DEMO, text, "--dask-scheduler", scheduler))
    assert line == f"jsdissect: {text}: not a pcap or pcapng file (magic 0x6e6f7420)"


@contextlib.contextmanager
def _worker_without(folder: Path) -> Iterator[str]:
    """A scheduler whose one worker runs where `folder` is empty (a tmpfs over it, in a
    mount namespace of its own): a worker on a machine that does not share the files."""
    require_root()
    unshare = require("unshare")
    with distributed.LocalCluster(n_workers=0, dashboard_address=":0") as cluster:
        hide = f'mount -t tmpfs none {folder} && exec "$@"'
        worker = [sys.executable, "-m", "distributed.cli.dask_worker", cluster.scheduler_address]
        args = [unshare, "--mount", "--propagation", "private", "sh", "-c", hide, "sh"]
        proc = subprocess.Popen([*args, *worker, "--nthreads", "1", "--no-nanny"])
        try:
            with distributed.Client(cluster.scheduler_address) as client:
                client.wait_for_workers(1, timeout=120)
            yield cluster.scheduler_address
        finally:
            proc.terminate()
            proc.wait(timeout=60)


def test_a_file_the_worker_does_not_see_is_one_line_saying_so(tmp_path) -> None:
    capture = tmp_path / "here" / "demo.pcap"
    capture.parent.mkdir()
    capture.write_bytes(DEMO.read_bytes())
    with _worker_without(capture.parent) as address:
        line = one_line(cli("tasks", capture, "--dask-scheduler", address))
    assert line == f"jsdissect: {capture}: no such file (as a Dask worker sees it)"


def test_scheduler_that_does_not_answer_is_one_line_naming_it() -> None:
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        address = f"tcp://127.0.0.1:{s.getsockname()[1]}"
    line = one_line(cli("tasks", DEMO, "--dask-scheduler", address))
    assert line.startswith(f"jsdissect: Dask scheduler {address}: cannot connect")


@pytest.mark.parametrize("answer", [None, b"HTTP/1.1 400 Bad Request\r\n\r\n" * 4])
def test_a_port_that_is_no_scheduler_is_one_line_naming_it(answer: bytes | None) -> None:
    """Found in review: a port that accepts and says nothing (a scheduler's dashboard port,
    an easy mistake) hung for ever in Dask's handshake; one that answers other bytes gave
    an internal error (MemoryError, from a length read in them)."""
    import threading

    server = socket.create_server(("127.0.0.1", 0))
    address = f"tcp://127.0.0.1:{server.getsockname()[1]}"
    held: list[socket.socket] = []

    def serve() -> None:
        with contextlib.suppress(OSError):
            while True:
                conn, _ = server.accept()
                held.append(conn)  # kept open, silent
                if answer is not None:
                    conn.sendall(answer)

    threading.Thread(target=serve, daemon=True).start()
    try:
        line = one_line(cli("tasks", DEMO, "--dask-scheduler", address))
    finally:
        server.close()
        for conn in held:
            conn.close()
    assert line.startswith(f"jsdissect: Dask scheduler {address}: cannot connect (")
    if answer is None:
        assert line.endswith("(no Dask handshake within 10 s)")


def test_a_local_cluster_leaves_nothing_in_the_temporary_folder(tmp_path) -> None:
    """Found in review: Dask's scratch space (lock files) stayed in $TMPDIR after each run."""
    import os

    env = os.environ | {"TMPDIR": str(tmp_path)}
    run = subprocess.run(
        [sys.executable, "-m", "jsdissect", "tasks", str(DEMO), "-q", "--dask-scheduler", "local"],
        capture_output=True,
        env=env,
        timeout=300,
    )
    assert run.returncode == 0, run.stderr
    assert list(tmp_path.iterdir()) == []


def _dask_log_levels() -> dict[str, int]:
    import logging

    names = ("distributed", "distributed.worker", "distributed.comm.utils", "distributed.client")
    return {name: logging.getLogger(name).getEffectiveLevel() for name in names}


def test_a_local_clusters_workers_log_nothing_even_while_they_close() -> None:
    """Found in review: a Ctrl-C while a worker sent its result printed hundreds of MB of
    Dask's tracebacks, the result's repr among them (its handlers' level, set by
    silence_logs, is put back while the worker closes): its loggers are off instead."""
    import os

    from jsdissect import cluster

    before = os.environ.get("DASK_LOGGING")
    with cluster.dask_reader(cluster.LOCAL) as reader:
        levels = reader._client.run(_dask_log_levels)
    assert levels and all(
        level > logging.CRITICAL for worker in levels.values() for level in worker.values()
    ), levels
    assert os.environ.get("DASK_LOGGING") == before  # this process's environment as it was


def test_an_interrupted_read_silences_dask_in_this_process_too() -> None:
    from jsdissect import cluster

    loggers = [logging.getLogger(name) for name in ("distributed", "asyncio")]
    levels = [log.level for log in loggers]
    try:
        with pytest.raises(KeyboardInterrupt), cluster.dask_reader(cluster.LOCAL):
            raise KeyboardInterrupt
        assert all(log.level > logging.CRITICAL for log in loggers)
    finally:
        for log, level in zip(loggers, levels, strict=True):
            log.setLevel(level)


def test_without_dask_the_option_says_what_to_install() -> None:
    blocked = "import sys; sys.modules['distributed'] = None; from jsdissect.cli import main; "
    out = subprocess.run(
        [sys.executable, "-c", blocked + "main()", "tasks", str(DEMO), "--dask-scheduler", "local"],
        capture_output=True,
        timeout=300,
    )
    assert one_line(out) == "jsdissect: --dask-scheduler needs Dask: pip install 'jsdissect[dask]'"


def test_wireshark_engine_does_not_take_the_option() -> None:
    out = cli("tasks", DEMO, "--engine", "wireshark", "--dask-scheduler", "local")
    assert out.returncode == 2 and b"not tshark" in out.stderr
