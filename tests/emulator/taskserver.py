"""The task server T: connects back to the controller and serves the RMIS calls (§4, §6).

Two flavours (§6.8): the C++ object server (`scheduler -O`) and the Scala task server of
the Universal Agent. They differ in object ids and titles, the `construct` answer, how
DISPIDs are found, the double text form, error answers and how the connection ends.
"""

from __future__ import annotations

import asyncio
import random
import socket
from collections.abc import Iterator
from dataclasses import dataclass, field

import jsencode as enc
from jsencode import ObjRef, V

from . import netns
from .channel import ChannelClosed, Session, set_linger_zero
from .objects import cpp_object_ids
from .record import Recorder, TaskRecord
from .scenario import TaskSpec
from .wire import Answer, Request, parse_request


def java_double_text(value: float) -> str:
    """Java's Double.toString: plain decimal in [1e-3, 1e7), else `d.dddE±n`."""
    if value == 0 or 1e-3 <= abs(value) < 1e7:
        return repr(float(value))
    mantissa, exponent = f"{value:.15e}".split("e")
    return f"{float(mantissa)!r}E{int(exponent)}"


def scala_object_ids(rng: random.Random) -> Iterator[int]:
    """§5.3 Scala ids: random high 32 bits, low 31 bits counting from 0x40000001."""
    counter = 0x40000000
    while True:
        counter += 1
        yield (rng.getrandbits(32) << 32) | counter


@dataclass(frozen=True)
class Flavour:
    name: str
    rmis_title: str
    construct_answer: V
    # DISPIDs the Scala server uses without asking (§6.8); C++ asks GetIDsOfNames for all
    hard_coded: dict[str, int] = field(default_factory=dict)
    releases_callers_objects: bool = False  # C++: nested `R` inside C's final Release
    closes_after_release: bool = False  # Scala: closes right after the Release answer

    def double_text(self, value: float) -> str:
        return enc.cpp_double(value) if self.name == "cpp" else java_double_text(value)

    def job_error(self, message: str) -> tuple[str, str, str]:
        """The `E` answer of a failing spooler_process (§5.11): name, code, what."""
        exception = f"java.lang.RuntimeException: {message}"
        if self.name == "cpp":
            return "", "Z-JAVA-105", f"Z-JAVA-105 Java exception {exception}"
        return "COM", "COM-80020009", f"COM-80020009 {exception}"


CPP = Flavour(
    name="cpp",
    rmis_title="sos::scheduler::Com_remote_module_instance_server",
    construct_answer=V(enc.VT_BOOL, True),
    releases_callers_objects=True,
)
SCALA = Flavour(
    name="scala",
    rmis_title="RemoteModuleInstanceServer",
    construct_answer=V(enc.VT_EMPTY),
    hard_coded={
        "log": 14,
        "level": 19,
        "set_error_code_and_text": 26,
        "params_xml": 35,
        "order_params_xml": 36,
    },
    closes_after_release=True,
)
FLAVOURS = {"cpp": CPP, "scala": SCALA}


class Crashed(Exception):
    """The task server reset its connection on purpose (failure `crash`)."""


class TaskServer:
    def __init__(
        self,
        spec: TaskSpec,
        rec: TaskRecord,
        recorder: Recorder,
        remote_ip: str,
        controller: tuple[str, int],
        keepalive: float | None,
        connect_timeout: float,
        seed: str,
    ) -> None:
        self.spec, self.rec, self.recorder = spec, rec, recorder
        self.remote_ip, self.controller = remote_ip, controller
        self.keepalive, self.connect_timeout = keepalive, connect_timeout
        self.flavour = FLAVOURS[spec.flavour]
        rng = random.Random(seed)
        self._ids = cpp_object_ids(rng) if self.flavour.name == "cpp" else scala_object_ids(rng)
        self.session: Session | None = None
        self._sock: socket.socket | None = None  # while connecting
        self.rmis = 0
        self.objects: dict[str, int] = {}  # begin names -> C's object ids
        self.params_object: int | None = None
        self._dispids: dict[tuple[int, str], int] = {}
        self.job = ""
        self.step_no = 0
        self.deferred_lines: list[str] = []
        self.released = False

    def _event(self, name: str) -> None:
        self.recorder.event(self.rec.key, name)

    # --- lifetime -------------------------------------------------------------------------

    async def run(self) -> None:
        try:
            await asyncio.sleep(self.spec.delays.callback)
            if self.spec.failure == "callback_missing":
                return  # the process died before connecting back
            self.session = await self._connect()
            if self.session is not None:
                await self._serve()
                await self.session.close()
        except (Crashed, ChannelClosed, asyncio.CancelledError) as exc:
            # crashed, killed or cut off: the process ends and the kernel resets its socket
            if self.session is not None:
                self.session.reset()
            elif self._sock is not None:
                self._sock.close()
            if isinstance(exc, asyncio.CancelledError):
                raise

    async def _connect(self) -> Session | None:
        """§4: connect to (peer IP of the CMD connection, tcp_port) from R's host."""
        sock = self._sock = netns.tcp_socket(self.remote_ip)
        if self.flavour.name == "cpp":
            set_linger_zero(sock)  # §2
        sock.bind((self.remote_ip, 0))
        sock.setblocking(False)
        self.rec.callback_attempted = True
        self._event("callback_syn")
        loop = asyncio.get_running_loop()
        try:
            await asyncio.wait_for(loop.sock_connect(sock, self.controller), self.connect_timeout)
        except ConnectionRefusedError:
            sock.close()
            self.rec.callback_refused = True
            self._event("callback_refused")
            return None
        except asyncio.TimeoutError:
            sock.close()
            self.rec.callback_unanswered = True
            self._event("callback_unanswered")
            return None
        reader, writer = await asyncio.open_connection(sock=sock)
        session = Session(reader, writer, "T", "api", self.recorder)
        session.serve = self._execute
        return session

    async def _serve(self) -> None:
        """Session::server_loop: serve C's requests until EOF (Scala: until RMIS released)."""
        assert self.session is not None
        while not (self.released and self.flavour.closes_after_release):
            try:
                payload = await self.session.read_frame()
            except ChannelClosed:
                return
            await self._execute(parse_request(payload))

    # --- requests from C ------------------------------------------------------------------

    async def _execute(self, request: Request) -> None:
        session = self.session
        assert session is not None
        if request.command == "C":
            self.rmis = next(self._ids)
            await session.answer_create(ObjRef(self.rmis, True, self.flavour.rmis_title))
        elif request.command == "A":
            await self._call(request.name.lower(), list(request.args))
        elif request.command == "R" and request.object_id == self.rmis:
            await self._release()
        elif request.command == "R":
            await session.answer_empty()
        else:
            await session.answer_error("COM", "COM-80020003", "COM-80020003 not supported")

    async def _call(self, method: str, args: list[V]) -> None:
        session = self.session
        assert session is not None
        if method == "construct":
            self._construct(args[0])
            await session.answer_value(self.flavour.construct_answer)
        elif method == "begin":
            await self._begin(args[0], args[1])
            await session.answer_value(V(enc.VT_BOOL, True))
        elif method == "step":
            await self._step()
        elif method == "end":
            if args[0].value:
                await self._put_exit_code(self.spec.exit_code)
            await session.answer_value(V(enc.VT_EMPTY))
        elif method == "call":
            await session.answer_value(await self._call_job_method(str(args[0].value)))
        else:
            await session.answer_error("COM", "COM-80020003", f"COM-80020003 {method}")

    def _construct(self, parameters: V) -> None:
        """§6.2: the array of `key=value` strings."""
        for element in parameters.value:
            key, _, value = str(element.value or "").partition("=")
            if key == "job":
                self.job = value
            elif key == "task_id":
                self.rec.task_id = int(value)

    async def _begin(self, objects: V, names: V) -> None:
        """§6.3: learn C's four objects, then what a job does at start (task id, params)."""
        for name, ref in zip(names.value, objects.value, strict=True):
            self.objects[str(name.value)] = ref.value.id
        await self._get("spooler_task", "id")
        if self.spec.kind == "shell":
            await self._get("spooler_task", "Params_xml")  # environment of the shell (§6.5)

    async def _call_job_method(self, signature: str) -> V:
        if self.spec.kind == "shell":
            return V(enc.VT_BOOL, True)  # Scala answers `call` of shell tasks with true (§6.8)
        if signature == "spooler_open()Z":
            await self._open()
            return V(enc.VT_BOOL, True)
        if signature == "spooler_on_error()V":
            await self._put_exit_code(1)
        return V(enc.VT_EMPTY)

    async def _open(self) -> None:
        """A Java job's spooler_open: reads a parameter, logs, sets a delay (a double)."""
        answer = await self._get("spooler_task", "params")
        params = answer.value.value if answer.value is not None else None
        if isinstance(params, ObjRef):
            self.params_object = params.id
            if self.flavour.name == "scala":
                await self._invoke(params.id, "java_class_name", enc.PROPERTYGET)
            await self._invoke(params.id, "value", enc.PROPERTYGET, [enc.bstr("mode")])
        await self._info(f"{self._job_name()}: spooler_open, mode=nightly")
        delay = V(enc.VT_R8, self.flavour.double_text(0.1))
        await self._put("spooler_task", "delay_spooler_process", delay)

    async def _step(self) -> None:
        session = self.session
        assert session is not None
        self.step_no += 1
        last = self.spec.kind == "shell" or self.step_no >= self.spec.steps
        lines = [self._stdout_line(i) for i in range(self.spec.log_lines)]
        await self._work(self.spec.delays.step / 2)
        if self.flavour.name == "cpp":
            # The C++ forwarder polls during the step; the last output misses the last poll
            # and goes out with the final flush inside C's Release (§6.5).
            if last:
                self.deferred_lines += lines
            else:
                await self._log(lines)
        if self.spec.failure == "crash":
            self._event("crash")
            raise Crashed  # run() resets the connection
        await self._work(self.spec.delays.step / 2)
        if self.flavour.name == "scala":
            await self._log(lines)  # the Scala well flushes at the end of each step
        if self.spec.kind == "shell":
            await session.answer_value(enc.bstr(self._process_result(lines)))
        elif self.spec.api_error and last:
            message = f"step {self.step_no} failed"
            await self._log([f"[stderr] java.lang.RuntimeException: {message}"], level=2)
            await session.answer_error(*self.flavour.job_error(message))
        else:
            await session.answer_value(V(enc.VT_BOOL, not last))

    def _process_result(self, lines: list[str]) -> str:
        """§6.4; state_text is the first stdout line."""
        spec, scala = self.spec, self.flavour.name == "scala"
        signal = None if scala else spec.signal
        self.rec.exit_code, self.rec.signal = spec.exit_code, signal
        first = lines[0].removeprefix("[stdout] ")[:100] if lines else ""
        success = spec.exit_code == 0 and signal is None
        return enc.process_result(spec.exit_code, success, signal, first or None, scala)

    async def _release(self) -> None:
        """C's Release of RMIS: C++ flushes its log and releases C's objects inside it."""
        session = self.session
        assert session is not None
        if self.deferred_lines:
            await self._log(self.deferred_lines)
            self.deferred_lines = []
        if self.flavour.releases_callers_objects:
            held = [self.params_object, *self.objects.values()]
            for object_id in held:
                if object_id is not None:
                    await session.release(object_id)
        self.released = True
        await session.answer_empty()

    # --- callbacks to C -------------------------------------------------------------------

    async def _work(self, seconds: float) -> None:
        """The job runs; `K` keep-alives go out while it is busy (§8)."""
        session = self.session
        assert session is not None
        period = self.keepalive
        while period and seconds > period:
            await asyncio.sleep(period)
            seconds -= period
            await session.keep_alive()
        await asyncio.sleep(seconds)

    async def _dispid(self, object_id: int, name: str) -> int:
        """Hard-coded (Scala), cached, or asked with GetIDsOfNames once per object (§6.5)."""
        hard_coded = self.flavour.hard_coded.get(name.lower())
        if hard_coded is not None:
            return hard_coded
        key = (object_id, name.lower())
        if key not in self._dispids:
            session = self.session
            assert session is not None
            answer = await session.get_ids_of_names(object_id, name)
            self._dispids[key] = answer.dispids[0]
        return self._dispids[key]

    async def _invoke(
        self, object_id: int, name: str, flags: int, args: list[V] | None = None
    ) -> Answer:
        session = self.session
        assert session is not None
        dispid = await self._dispid(object_id, name)
        return await session.invoke(object_id, dispid, flags, args)

    async def _get(self, object_name: str, name: str) -> Answer:
        return await self._invoke(self.objects[object_name], name, enc.PROPERTYGET)

    async def _put(self, object_name: str, name: str, value: V) -> None:
        session = self.session
        assert session is not None
        object_id = self.objects[object_name]
        await session.put(object_id, await self._dispid(object_id, name), value)

    async def _put_exit_code(self, exit_code: int) -> None:
        """§6.7: API jobs report their exit code with spooler_task.exit_code (DISPID 30)."""
        self.rec.exit_code = exit_code
        await self._put("spooler_task", "exit_code", V(enc.VT_I4, exit_code))

    async def _log(self, lines: list[str], level: int = 0) -> None:
        """spooler_log.log(level, text): one Invoke, lines joined by `\\n` (§6.5)."""
        if not lines:
            return
        text = "\n".join(lines)
        log = self.objects["spooler_log"]
        dispid = await self._dispid(log, "log")
        self.rec.add_log(level, text)  # the bytes leave before the first suspension
        await self.session.invoke(log, dispid, enc.METHOD, [V(enc.VT_I4, level), enc.bstr(text)])

    async def _info(self, text: str) -> None:
        """spooler_log.info(text): DISPID 0 in C++; Scala's proxy sends log(0, text)."""
        if self.flavour.name == "scala":
            await self._log([text])
            return
        log = self.objects["spooler_log"]
        dispid = await self._dispid(log, "info")
        self.rec.add_log(0, text)
        await self.session.invoke(log, dispid, enc.METHOD, [enc.bstr(text)])

    def _job_name(self) -> str:
        return self.job.rsplit("/", 1)[-1]

    def _stdout_line(self, index: int) -> str:
        where = f"step {self.step_no}" if self.spec.kind == "api" else "output"
        return f"[stdout] {self._job_name()} {where} line {index + 1}"
