"""Read capture files on a Dask cluster (DESIGN "Scale": past one machine).

Each file is one Dask task that reads it where it lies, through libpcap and the same BPF
filter as a local read, and sends back only the segments that passed: a small share of a
busy host's capture. This process merges them into the one timeline that reassembly,
decoding and correlation take, as they take a local read, so the results are the same.

Opt-in (`--dask-scheduler ADDRESS`, or `local` for a cluster of this machine's cores):
Dask is an extra (`pip install 'jsdissect[dask]'`), imported only here. The workers must
see the capture files under the paths given (absolute paths are sent; a shared file
system past one machine), and run the same jsdissect. The segments of every file are held
here until the merge, so memory follows the filtered traffic, not the open connections.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import tempfile
import threading
from collections.abc import Iterator, Sequence
from typing import Any

from jsdissect.capture import (
    CaptureError,
    CapturePath,
    CaptureStats,
    Engine,
    Segment,
    Spooled,
    display_name,
    extract_file,
    merged_extracts,
    scan,
)

LOCAL = "local"
CONNECT_TIMEOUT_S = 10  # a scheduler that does not answer: a clear error, not a hang
# A log level above every level: no log line at all. A local cluster is jsdissect's own,
# and what goes wrong there comes back through `gather` and is told in one line; its logs
# while it is torn down by a Ctrl-C were hundreds of MB of tracebacks (a worker's result
# cut off mid-send).
SILENT = logging.CRITICAL + 1


class ClusterError(Exception):
    """Dask is missing or its scheduler cannot be reached; the message says which."""


class DaskReader:
    """`read_segments` for the pipeline, with each file read as one Dask task."""

    def __init__(self, client: Any) -> None:
        self._client = client

    def __call__(
        self,
        files: Sequence[CapturePath],
        /,
        *,
        bpf: str | None,
        engine: Engine,
        stats: CaptureStats,
    ) -> Iterator[Segment]:
        sent = _as_sent(files)
        futures = self._client.map(extract_file, sent, bpf=bpf, engine=engine, pure=False)
        return merged_extracts([str(f) for f in sent], self._gathered(futures, files), stats)

    def capture_end(self, files: Sequence[CapturePath], /) -> int | None:
        """The latest packet time of the files, each walked where it lies."""
        scans = self._gathered(self._client.map(scan, _as_sent(files), pure=False), files)
        return max((s.latest for s in scans if s.latest is not None), default=None)

    def _gathered(self, futures: list[Any], files: Sequence[CapturePath]) -> list[Any]:
        """The tasks' results. Every file was found readable here before it was sent: a
        worker that cannot read one says so as a worker (a stream was saved in this
        machine's temporary folder); workers that died (killed, out of memory) are the
        cluster's failure, told in one line."""
        from distributed import KilledWorker
        from distributed.comm import CommClosedError

        try:
            return list(self._client.gather(futures))
        except CaptureError as exc:
            where = " (as a Dask worker sees it"
            if any(isinstance(f, Spooled) for f in files):
                where += "; a stream is saved in this machine's temporary folder"
            raise CaptureError(f"{exc}{where})") from None
        except (KilledWorker, CommClosedError) as exc:
            raise ClusterError(f"Dask workers failed: {type(exc).__name__}: {exc}") from None


def _as_sent(files: Sequence[CapturePath]) -> list[Spooled]:
    """The name as given for messages, the absolute file for a worker elsewhere."""
    return [Spooled(display_name(f), os.path.abspath(f)) for f in files]


@contextlib.contextmanager
def _worker_logs_off() -> Iterator[None]:
    """The local cluster's worker processes started with Dask's loggers off. (Its own
    silence_logs sets the handlers' level only while a worker runs: while it closes, as
    after a Ctrl-C, they logged a cut-off result's repr, hundreds of MB.) A spawned
    worker reads Dask's configuration from the environment it starts with."""
    loggers = ("distributed", "distributed.client", "distributed.gc")
    before = os.environ.get(_DASK_LOGGING)
    os.environ[_DASK_LOGGING] = repr(dict.fromkeys(loggers, SILENT))
    try:
        yield
    finally:
        if before is None:
            del os.environ[_DASK_LOGGING]
        else:
            os.environ[_DASK_LOGGING] = before


_DASK_LOGGING = "DASK_LOGGING"  # Dask's "logging" setting, as an environment variable


@contextlib.contextmanager
def _interrupts_ignored() -> Iterator[None]:
    """SIGINT ignored while the local cluster's processes start, so that they ignore it
    too: a Ctrl-C at the terminal reaches the whole process group, and each worker would
    print its own traceback (found in review). This process's handler is put back."""
    if threading.current_thread() is not threading.main_thread():
        yield  # (signals can only be set from the main thread)
        return
    before = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, before)


def _probe(address: str) -> None:
    """Reach the scheduler and complete Dask's handshake within CONNECT_TIMEOUT_S. Dask's
    own timeout covers the connection, not the handshake: a port that accepts and says
    nothing (the dashboard's, an easy mistake) would hang the client for ever."""
    from distributed.comm import connect

    async def reach() -> None:
        comm = await connect(address, timeout=CONNECT_TIMEOUT_S)
        await comm.close()

    asyncio.run(asyncio.wait_for(reach(), CONNECT_TIMEOUT_S))


def _connect_error(scheduler: str, exc: BaseException) -> ClusterError:
    if isinstance(exc, TimeoutError):
        reason = f"no Dask handshake within {CONNECT_TIMEOUT_S} s"
    elif str(exc):
        reason = f"{type(exc).__name__}: {str(exc).splitlines()[0][:200]}"
    else:
        reason = type(exc).__name__
    return ClusterError(f"Dask scheduler {scheduler}: cannot connect ({reason})")


@contextlib.contextmanager
def dask_reader(scheduler: str) -> Iterator[DaskReader]:
    """A reader on the scheduler at `scheduler` ("local": a new cluster of this machine),
    for the time of the block."""
    try:
        import dask
        from dask.distributed import Client, LocalCluster
    except ImportError:
        raise ClusterError("--dask-scheduler needs Dask: pip install 'jsdissect[dask]'") from None
    with contextlib.ExitStack() as stack:
        if scheduler == LOCAL:
            # Decoding holds the GIL: one process per core. The dashboard's HTTP server on a
            # free port, not 8787 with a warning when that is taken; only errors logged.
            # Its scratch space (lock files) in a folder of ours, removed afterwards.
            scratch = stack.enter_context(tempfile.TemporaryDirectory(prefix="jsdissect-"))
            stack.enter_context(dask.config.set({"temporary-directory": scratch}))
            # inherited: Ctrl-C stops jsdissect, which stops them
            with _interrupts_ignored(), _worker_logs_off():
                local = LocalCluster(
                    threads_per_worker=1,
                    processes=True,
                    dashboard_address=":0",
                    silence_logs=SILENT,
                    local_directory=scratch,
                )
            cluster = stack.enter_context(local)
            address = cluster.scheduler_address
        else:
            address = scheduler
        try:
            if scheduler != LOCAL:
                _probe(address)
            client = stack.enter_context(Client(address, timeout=f"{CONNECT_TIMEOUT_S}s"))
        except Exception as exc:  # anything: what answered is no Dask scheduler we can use
            raise _connect_error(scheduler, exc) from None
        with _quiet_when_interrupted():
            yield DaskReader(client)


@contextlib.contextmanager
def _quiet_when_interrupted() -> Iterator[None]:
    """Dask's client and asyncio log, in this process, the tasks a Ctrl-C cut off ("Task
    exception was never retrieved") while the cluster is torn down: quiet then."""
    try:
        yield
    except KeyboardInterrupt:
        for name in ("distributed", "asyncio"):
            logging.getLogger(name).setLevel(SILENT)
        raise
