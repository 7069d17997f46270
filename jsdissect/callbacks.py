"""Decode callback connections (PROTOCOL §5), in this process or in worker processes.

A callback connection's decoding depends on nothing but its own two byte streams: no other
connection reads its events while the capture is read. That makes it the one stage that
can run beside the reader without changing any result, and it is the most expensive one
(measured on 10,000 dense tasks: more than half of the time). `pipeline` hands each
callback connection's bytes to a `CallbackDecoding`, and collects every connection's
events when the capture is done:

- `InlineDecoding` decodes as the bytes come, in this process;
- `WorkerDecoding` sends the bytes in batches through a pipe to worker processes (a
  connection always to the same one), which decode them with an `InlineDecoding` each;
- `AutoDecoding` (the default) decodes in this process until callback traffic shows up in
  volume, then hands the connections that open from then on to workers.

All give the same events in the same order; only where the work runs differs.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import os
import pickle
import signal
import socket
import sys
import threading
import time
from collections.abc import Callable, Iterator
from multiprocessing.connection import Connection as Pipe
from typing import Any, Protocol, TypeVar

from jsdissect.correlate import TASK_EVENTS
from jsdissect.protocol import Event
from jsdissect.protocol import objserver as api

# What a connection's decoding leaves: its events, and its first request whose sender the
# decoder knew (the controller is the side that sends the controller's requests, §5.2).
Result = tuple[tuple[Event, ...], "api.Request | None"]

API_SIDES = (api.CONTROLLER, api.TASK_SERVER)

# Operations sent to a worker, as tuples: (code, key, …).
_OPEN, _DATA, _GAP, _CLOSE = range(4)
# A batch goes out after this many operations or payload bytes, whichever comes first:
# large enough that pickling and the pipe cost little per packet, small enough to keep
# both processes busy and the memory in flight bounded.
BATCH_OPS = 512
BATCH_BYTES = 1 << 20
# Results come back in chunks of whole connections (a Reply and its Request stay in one
# pickle, so they stay one object).
RESULT_CHUNK = 1024
MAX_WORKERS = 8
# AutoDecoding starts its workers after this many callback bytes: decoding them took about
# 0.15 s here, several times what starting a worker costs, and a capture that has shown
# that much callback traffic usually holds more.
AUTO_START_BYTES = 1 << 20
# stop() waits this long for the workers to end by themselves (one finishing the batch it
# is decoding) before it kills them.
STOP_WAIT = 5.0

T = TypeVar("T")


class WorkerLost(Exception):
    """A worker process died or its pipe broke; the results are incomplete."""


class Decoding(Protocol):
    """Where one connection's bytes go, by the key it was opened with."""

    def data(self, key: int, direction: int, offset: int, data: bytes, ts: int) -> None: ...

    def gap(self, key: int, direction: int, offset: int, size: int, ts: int) -> None: ...

    def close(self, key: int) -> None: ...


class CallbackDecoding(Protocol):
    """Connections are known by a key the caller gives at `open`, unique in one run (two
    connections can share a connection id: same 4-tuple, same first microsecond)."""

    def open(
        self, key: int, conn_id: str, controller: int | None, midstream: bool = False
    ) -> Decoding:
        """Start decoding a connection; its bytes go to the Decoding returned (per packet
        one call, not a chain of them). `midstream`: picked up without its handshake."""
        ...

    def results(self) -> dict[int, Result]:
        """Every connection's result by key; called once, after the last close."""
        ...

    def stop(self) -> None:
        """Release what it holds (processes); safe to call more than once."""
        ...


class _Connection:
    """One callback connection's decoder and what is kept of its events."""

    __slots__ = ("decoder", "events", "first_request", "keep_all")

    def __init__(
        self, conn_id: str, controller: int | None, keep_all: bool, midstream: bool
    ) -> None:
        self.decoder = api.ObjServerDecoder(
            conn_id, controller, label_objrefs=keep_all, midstream=midstream
        )
        self.events: list[Event] = []
        self.first_request: api.Request | None = None
        self.keep_all = keep_all

    def collect(self, events: list[Event]) -> None:
        if self.first_request is None:
            self.first_request = next(
                (e for e in events if isinstance(e, api.Request) and e.sender in API_SIDES),
                None,
            )
        if self.keep_all:
            self.events.extend(events)
        else:
            self.events += [e for e in events if isinstance(e, TASK_EVENTS)]

    def result(self) -> Result:
        self.collect(self.decoder.close())
        return tuple(self.events), self.first_request


class InlineDecoding:
    """Decode in this process. `keep_all` False keeps only the events task rows need."""

    def __init__(self, keep_all: bool) -> None:
        self.keep_all = keep_all
        self._open: dict[int, _Connection] = {}
        self._done: dict[int, Result] = {}
        self.bytes = 0  # callback bytes decoded here

    def open(
        self, key: int, conn_id: str, controller: int | None, midstream: bool = False
    ) -> InlineDecoding:
        self._open[key] = _Connection(conn_id, controller, self.keep_all, midstream)
        return self

    def data(self, key: int, direction: int, offset: int, data: bytes, ts: int) -> None:
        self.bytes += len(data)
        conn = self._open[key]
        conn.collect(conn.decoder.feed(direction, offset, data, ts))

    def gap(self, key: int, direction: int, offset: int, size: int, ts: int) -> None:
        conn = self._open[key]
        conn.collect(conn.decoder.gap(direction, offset, size, ts))

    def close(self, key: int) -> None:
        self._done[key] = self._open.pop(key).result()

    def results(self) -> dict[int, Result]:
        for key in list(self._open):  # not closed: the capture ended first
            self.close(key)
        return self.results_closed()

    def closed(self) -> int:
        """Connections closed whose results were not taken yet."""
        return len(self._done)

    def results_closed(self) -> dict[int, Result]:
        """The results of the connections closed so far, handed over once."""
        done, self._done = self._done, {}
        return done

    def stop(self) -> None:
        self._open.clear()

    def apply(self, ops: list[tuple]) -> None:
        """Run a batch of operations as WorkerDecoding sends them."""
        for op in ops:
            code = op[0]
            if code == _DATA:
                self.data(*op[1:])
            elif code == _OPEN:
                self.open(*op[1:])
            elif code == _GAP:
                self.gap(*op[1:])
            else:
                self.close(op[1])


def spare_cpus() -> int:
    """CPUs this process may use besides the one it runs on (at most MAX_WORKERS); none
    in a daemonic process (a multiprocessing pool's, a Dask task's), which may not start
    processes of its own."""
    if multiprocessing.current_process().daemon:
        return 0
    try:
        usable = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        usable = os.cpu_count() or 1
    return max(0, min(usable - 1, MAX_WORKERS))


class WorkerDecoding:
    """Decode in `workers` processes; this process only batches and sends the bytes."""

    def __init__(self, workers: int, keep_all: bool, start_method: str | None = None) -> None:
        if not 1 <= workers <= MAX_WORKERS:
            raise ValueError(f"workers must be 1 to {MAX_WORKERS}, not {workers}")
        # Linux: fork, the worker starts at once with everything imported. Elsewhere spawn,
        # Python's own default there (macOS system libraries do not survive a fork).
        if start_method is None:
            start_method = "fork" if sys.platform == "linux" else "spawn"
        context = multiprocessing.get_context(start_method)
        # A forked child flushes its copy of these buffers when it ends: text already
        # written but not yet flushed would come out twice.
        sys.stdout.flush()
        sys.stderr.flush()
        self._pipes: list[Pipe] = []
        self._procs: list[multiprocessing.process.BaseProcess] = []
        self._receivers: list[_Receiver] = []
        try:
            for _ in range(workers):
                self._start_worker(context, keep_all, forked=start_method == "fork")
        except BaseException as exc:
            self.stop()
            # No process or no pipe to be had; or this process is a daemon, which
            # multiprocessing refuses children with an AssertionError.
            if isinstance(exc, (OSError, AssertionError)):
                raise WorkerLost(f"could not start a decoding worker process ({exc!r})") from None
            raise
        self._batches: list[list[tuple]] = [[] for _ in range(workers)]
        self._batch_bytes = [0] * workers

    def _start_worker(self, context: Any, keep_all: bool, forked: bool) -> None:
        ours, theirs = context.Pipe()
        self._pipes.append(ours)
        # A forked child gets a copy of every descriptor, among them this process's ends of
        # the pipes: closed first thing in the child, or a worker would never see its input
        # end when this process closes its end or dies. A spawned child gets only its own.
        inherited = tuple(self._pipes) if forked else ()
        proc = context.Process(target=_worker_main, args=(theirs, keep_all, inherited))
        proc.daemon = True
        self._procs.append(proc)
        with _stop_signals_blocked():  # the child sets its handlers before one is delivered
            proc.start()
        theirs.close()
        self._receivers.append(_Receiver(ours))

    # A connection always goes to the same worker: the one its key names, so the keys the
    # pipeline numbers connections by take turns.
    def open(
        self, key: int, conn_id: str, controller: int | None, midstream: bool = False
    ) -> WorkerDecoding:
        self._add(key, (_OPEN, key, conn_id, controller, midstream), 0)
        return self

    def data(self, key: int, direction: int, offset: int, data: bytes, ts: int) -> None:
        self._add(key, (_DATA, key, direction, offset, data, ts), len(data))

    def gap(self, key: int, direction: int, offset: int, size: int, ts: int) -> None:
        self._add(key, (_GAP, key, direction, offset, size, ts), 0)

    def close(self, key: int) -> None:
        self._add(key, (_CLOSE, key), 0)

    def results(self) -> dict[int, Result]:
        for index in range(len(self._pipes)):
            self._send(index)
            self._call(self._pipes[index].send_bytes, b"")  # the end of the operations
        done: dict[int, Result] = {}
        for receiver in self._receivers:
            done.update(receiver.wait())
        self.stop()
        return done

    def stop(self) -> None:
        """Close the pipes: each worker sees the end of its input and ends; one still busy
        after STOP_WAIT seconds is killed. Also when interrupted while waiting."""
        pipes, procs = self._pipes, [p for p in self._procs if p.pid is not None]
        receivers = self._receivers
        self._pipes, self._procs, self._receivers = [], [], []
        for receiver in receivers:
            receiver.end()  # wakes its thread (still reading when stopped early)
        for pipe in pipes:
            pipe.close()
        try:
            deadline = time.monotonic() + STOP_WAIT
            for proc in procs:
                proc.join(timeout=max(0.0, deadline - time.monotonic()))
        finally:
            for proc in procs:
                if proc.is_alive():
                    proc.kill()
                proc.join()

    def _add(self, key: int, op: tuple, size: int) -> None:
        index = key % len(self._pipes)
        batch = self._batches[index]
        batch.append(op)
        self._batch_bytes[index] += size
        if len(batch) >= BATCH_OPS or self._batch_bytes[index] >= BATCH_BYTES:
            self._send(index)

    def _send(self, index: int) -> None:
        if self._batches[index]:
            payload = pickle.dumps(self._batches[index], pickle.HIGHEST_PROTOCOL)
            self._call(self._pipes[index].send_bytes, payload)
        self._batches[index] = []
        self._batch_bytes[index] = 0

    @staticmethod
    def _call(fn: Callable[..., T], *args: Any) -> T:
        try:
            return fn(*args)
        except (OSError, EOFError) as exc:  # BrokenPipeError, a worker killed, …
            raise WorkerLost(f"a decoding worker process was lost ({exc!r})") from None


class _Receiver:
    """Takes a worker's results as they come (the worker sends them as connections close,
    so that they are held in one process, not two), on a thread of its own: a worker
    blocked sending results while this process is blocked sending it bytes would wait
    for ever."""

    def __init__(self, pipe: Pipe) -> None:
        self._pipe = pipe
        self._done: dict[int, Result] = {}
        self._lost: BaseException | None = None
        self._thread = threading.Thread(target=self._receive, daemon=True)
        self._thread.start()

    def _receive(self) -> None:
        try:
            while payload := self._pipe.recv_bytes():
                self._done.update(pickle.loads(payload))
        except (OSError, EOFError) as exc:  # the worker died, or stop() ended the pipe
            self._lost = exc

    def wait(self) -> dict[int, Result]:
        """Every result, once the worker sent its last one."""
        self._thread.join()
        if self._lost is not None:
            raise WorkerLost(f"a decoding worker process was lost ({self._lost!r})")
        return self._done

    def end(self) -> None:
        """Stop reading: shut the socket down (closing the descriptor under a thread that
        reads it would not wake it), and wait for the thread."""
        with contextlib.suppress(OSError):  # (a closed pipe; not a socket off Linux)
            sock = socket.socket(fileno=os.dup(self._pipe.fileno()))
            with sock:
                sock.shutdown(socket.SHUT_RDWR)
        self._thread.join(STOP_WAIT)  # (a daemon thread: it cannot keep the process alive)


class AutoDecoding:
    """Decode in this process until the callback bytes seen pass `start_after`, then start
    `workers` processes for the connections that open from then on.

    Most captures hold a few tasks among much other traffic: they never pay for a process.
    A capture of many tasks passes the mark within its first few hundred tasks."""

    def __init__(self, workers: int, keep_all: bool, start_after: int | None = None) -> None:
        self.max_workers = workers
        self.keep_all = keep_all
        self.start_after = AUTO_START_BYTES if start_after is None else start_after
        self._here = InlineDecoding(keep_all)
        self._workers: WorkerDecoding | None = None

    @property
    def started(self) -> bool:
        return self._workers is not None

    def open(
        self, key: int, conn_id: str, controller: int | None, midstream: bool = False
    ) -> Decoding:
        seen = self._here.bytes
        if self._workers is None and self.max_workers and seen >= self.start_after:
            try:
                self._workers = WorkerDecoding(self.max_workers, self.keep_all)
            except WorkerLost:
                self.max_workers = 0  # no process to be had (a limit on processes): go on here
        if self._workers is None:
            return self._here.open(key, conn_id, controller, midstream)
        return self._workers.open(key, conn_id, controller, midstream)

    def results(self) -> dict[int, Result]:
        done = self._here.results()
        if self._workers is not None:
            done |= self._workers.results()
        return done

    def stop(self) -> None:
        self._here.stop()
        if self._workers is not None:
            self._workers.stop()


# Signals the CLI turns into an unwinding exception: a worker leaves them to the main
# process (SIGINT) or dies of them at once (SIGTERM, SIGHUP).
STOP_SIGNALS = {getattr(signal, n) for n in ("SIGINT", "SIGTERM", "SIGHUP") if hasattr(signal, n)}


@contextlib.contextmanager
def _stop_signals_blocked() -> Iterator[None]:
    """SIGINT (and SIGTERM, SIGHUP) held back in this process (and in a child started
    meanwhile, which inherits the mask); one that came in the meantime is delivered when
    this ends."""
    if not hasattr(signal, "pthread_sigmask"):  # Windows: no signal masks
        yield
        return
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)


def _worker_main(pipe: Pipe, keep_all: bool, inherited: tuple[Pipe, ...] = ()) -> None:
    """A worker: apply batches until the empty one, then send the results back in chunks.
    `inherited`: the main process's pipe ends a fork copied into this process."""
    for end in inherited:
        end.close()
    # Ctrl-C is for the main process, which stops the workers; a worker's own traceback
    # would only clutter the terminal. (The signals are blocked until here: see
    # _stop_signals_blocked.)
    for signum in STOP_SIGNALS:
        signal.signal(signum, signal.SIG_IGN if signum == signal.SIGINT else signal.SIG_DFL)
    if hasattr(signal, "pthread_sigmask"):
        signal.pthread_sigmask(signal.SIG_UNBLOCK, STOP_SIGNALS)
    decoding = InlineDecoding(keep_all)
    try:
        while payload := pipe.recv_bytes():
            decoding.apply(pickle.loads(payload))
            if decoding.closed() >= RESULT_CHUNK:  # sent on: memory in one process only
                pipe.send_bytes(pickle.dumps(decoding.results_closed(), pickle.HIGHEST_PROTOCOL))
        results = list(decoding.results().items())
        for start in range(0, len(results), RESULT_CHUNK):
            chunk = dict(results[start : start + RESULT_CHUNK])
            pipe.send_bytes(pickle.dumps(chunk, pickle.HIGHEST_PROTOCOL))
        pipe.send_bytes(b"")
    except Exception:
        # The main process is gone or gave up (OSError, EOFError), or a bug: either way
        # this worker ends without a traceback. The main process sees its pipe close and
        # decodes again by itself, where a bug is reported the way every error is.
        pass
    finally:
        pipe.close()
