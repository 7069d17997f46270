"""The controller C: per task a callback port, the CMD connection, and the API dialog (§1, §6)."""

from __future__ import annotations

import asyncio
import contextlib
import random
import socket

import jsencode as enc
from jsencode import V

from . import netns
from .channel import Channel, ChannelClosed, Session, set_linger_zero
from .firewall import Firewall
from .objects import ControllerObjects
from .record import Recorder, TaskRecord
from .scenario import Scenario, TaskSpec
from .wire import Answer, answer_intent


def construct_params(spec: TaskSpec, job: str, task_id: int) -> list[str]:
    """§6.2 `key=value` parameters in the order C writes them (no monitors)."""
    name = job.rsplit("/", 1)[-1]
    if spec.kind == "shell":
        language, java_class = "shell", ""
        script = f'<source><source_part linenr="1">echo "{name}"; sleep 1</source_part></source>'
    else:
        language, java_class, script = "java", f"com.example.jobs.{name.title()}", "<source/>"
    return [
        f"language={language}",
        "com_class=",
        "filename=",
        f"java_class={java_class}",
        "java_options=",
        "java_class_path=",
        f"script={script}",
        f"job={job}",
        f"task_id={task_id}",
        f'environment=<environment><variable name="SCHEDULER_JOB_NAME" value="{name}"/>'
        "</environment>",
    ]


class CommandConnection:
    """C's side of one CMD connection: commands, answers, optional keep-alive spaces (§3.7)."""

    def __init__(self, channel: Channel, recorder: Recorder, rec: TaskRecord) -> None:
        self.channel, self.recorder, self.rec = channel, recorder, rec
        self._spaces: asyncio.Task[None] | None = None

    def start_spaces(self, period: float) -> None:
        self._spaces = asyncio.create_task(self._send_spaces(period))

    async def _send_spaces(self, period: float) -> None:
        while True:
            await asyncio.sleep(period)
            await self.channel.send(b" ", ("space",))

    async def stop_spaces(self) -> None:
        """Spaces only while no command is under way: stop before the next one."""
        if self._spaces is not None:
            self._spaces.cancel()
            with contextlib.suppress(asyncio.CancelledError, ChannelClosed):
                await self._spaces
            self._spaces = None

    async def close_task(self, kill: bool) -> None:
        """§3.6.3: close (optionally kill) and wait for the deferred answer."""
        await self.stop_spaces()
        pid = self.rec.process_id or ""
        if kill:
            self.rec.killed = True
        await self.channel.send(enc.remote_task_close(pid, kill), ("close", pid, kill))
        self.recorder.event(self.rec.key, "close_kill_sent" if kill else "close_sent")
        answer = answer_intent(await self.channel.read_answer())
        if answer[0] == "error":
            self.rec.add_error(answer[1], answer[2])
        self.rec.close_answered = True
        self.recorder.event(self.rec.key, "close_answered")


class ApiDriver:
    """C's RPC client on the callback connection: the call sequence of §6.1."""

    def __init__(
        self, session: Session, rec: TaskRecord, spec: TaskSpec, recorder: Recorder, seed: str
    ) -> None:
        self.session, self.rec, self.spec, self.recorder = session, rec, spec, recorder
        self.objects = ControllerObjects(session, rec, random.Random(seed))
        session.serve = self.objects.serve
        # a kill (failure "kill") comes while the second step runs, after some log lines
        self.kill_point = asyncio.Event()
        self._kill_step = 1 if spec.kind == "shell" else min(2, spec.steps)

    def _event(self, name: str) -> None:
        self.recorder.event(self.rec.key, name)

    def _ok(self, answer: Answer) -> bool:
        """Records the first wire error (DESIGN "What fills a row")."""
        if answer.error is not None:
            self.rec.add_error(answer.error[1], answer.error[2])
            return False
        if answer.hr < 0:
            self.rec.add_error(f"COM-{answer.hr & 0xFFFFFFFF:08X}", answer.failure)
            return False
        return True

    async def run(self, job: str, task_id: int) -> None:
        session = self.session
        self._event("create_instance")
        answer = await session.create_instance()
        if not self._ok(answer) or answer.objref is None:
            return
        rmis = answer.objref.id
        self.rec.job, self.rec.task_id = job, task_id
        self._event("construct")
        args = enc.construct_args(construct_params(self.spec, job, task_id))
        self._ok(await session.call(rmis, "construct", args))
        self._event("begin")
        answer = await session.call(rmis, "begin", self.objects.begin.args())
        self._event("begin_answered")
        started = self._ok(answer) and answer.value is not None and answer.value.value is True
        if self.spec.kind == "api":
            await self._api_job(rmis, started)
        elif started:
            await self._step(rmis)
        self._event("release")
        await session.release(rmis)
        self._event("release_answered")

    async def _step(self, rmis: int) -> Answer:
        self.rec.steps += 1
        self._event("step")
        if self.rec.steps == self._kill_step:
            self.kill_point.set()
        return await self.session.call(rmis, "step")

    async def _api_job(self, rmis: int, started: bool) -> None:
        """§6.1 rows 3–8: open, steps until false, end, on_success/on_error, exit."""
        success = started
        if started:
            self._event("spooler_open")
            answer = await self.session.call(rmis, "call", [enc.bstr("spooler_open()Z")])
            success = self._ok(answer) and answer.value is not None and answer.value.value is True
        more = success
        while more:
            answer = await self._step(rmis)
            success = self._ok(answer)
            more = success and answer.value is not None and answer.value.value is True
        self._event("end")
        self._ok(await self.session.call(rmis, "end", [V(enc.VT_BOOL, success)]))
        for method in ("spooler_on_success" if success else "spooler_on_error", "spooler_exit"):
            self._event(method)
            self._ok(await self.session.call(rmis, "call", [enc.bstr(f"{method}()V")]))


class Controller:
    """One controller address; its tasks share the callback port register (§2)."""

    def __init__(
        self, ip: str, scenario: Scenario, recorder: Recorder, firewall: Firewall | None
    ) -> None:
        self.ip, self.scenario, self.recorder, self.firewall = ip, scenario, recorder, firewall
        self._ports: dict[int, int] = {}  # callback port → the task (key) registered on it

    def _release(self, port: int, key: int) -> None:
        """§2: a port is free again when its callback connection closes, or when its task
        ends without one: released once, and only by the task it was registered for (a
        later task may hold it by then)."""
        if self._ports.get(port) == key:
            del self._ports[port]

    def _bind_free_port(self, key: int) -> tuple[socket.socket, int]:
        """§2 bind_free_port: from the top downwards, skipping our live tasks' ports."""
        for port in range(self.scenario.top_port, 1024, -1):
            if port in self._ports:
                continue
            sock = netns.tcp_socket(self.ip)
            # SO_REUSEADDR lets a port come back while its last connection is in TIME_WAIT.
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            set_linger_zero(sock)
            try:
                sock.bind((self.ip, port))
            except OSError:
                sock.close()
                continue
            sock.setblocking(False)
            self._ports[port] = key
            return sock, port
        raise RuntimeError(f"{self.ip}: no free callback port")

    async def run_task(self, rec: TaskRecord, spec: TaskSpec) -> None:
        listen_sock, port = self._bind_free_port(rec.key)
        rec.callback_port = port
        firewall = self.firewall if spec.failure == "callback_dropped" else None
        try:
            if spec.failure != "callback_refused":
                listen_sock.listen(1)  # backlog 1 (§2)
            if firewall is not None:
                await firewall.drop_syns(self.ip, port)
            self.recorder.announce_callback(self.ip, port, rec.key)
            channel = await self._connect(rec)
            try:
                await self._run(CommandConnection(channel, self.recorder, rec), listen_sock, spec)
            finally:
                await channel.close()
                self.recorder.event(rec.key, "cmd_closed")
        finally:
            listen_sock.close()
            if firewall is not None:
                await firewall.allow(self.ip, port)
            self._release(port, rec.key)

    async def _connect(self, rec: TaskRecord) -> Channel:
        ip, port = self.scenario.remote_of(rec.key)
        sock = netns.tcp_socket(self.ip)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)  # §2
        sock.bind((self.ip, 0))  # the remote must see this controller's address
        sock.setblocking(False)
        await asyncio.get_running_loop().sock_connect(sock, (ip, port))
        reader, writer = await asyncio.open_connection(sock=sock)
        self.recorder.event(rec.key, "cmd_connected")
        return Channel(reader, writer, "C", "cmd", self.recorder)

    async def _run(
        self, cmd: CommandConnection, listen_sock: socket.socket, spec: TaskSpec
    ) -> None:
        rec = cmd.rec
        port = rec.callback_port or 0
        kind = "process" if spec.kind == "shell" else None
        await cmd.channel.send(enc.start_remote_task(port, kind), ("start", port, kind))
        self.recorder.event(rec.key, "start_sent")
        answer = answer_intent(await cmd.channel.read_answer())
        if answer[0] == "error":
            rec.start_failed = True
            rec.add_error(answer[1], answer[2])
            return
        rec.process_id, rec.pid = answer[1], answer[2]
        session = await self._accept(listen_sock, rec, spec)
        if session is None:
            await cmd.close_task(kill=False)
            return
        if spec.failure == "keepalive_spaces":
            cmd.start_spaces(self.scenario.space_period)
        seed = f"{self.scenario.seed}:{rec.key}:controller"
        driver = ApiDriver(session, rec, spec, self.recorder, seed)
        killer = None
        if spec.failure == "kill":
            killer = asyncio.create_task(self._kill_in_step(cmd, driver, spec))
        try:
            await driver.run(f"{self.scenario.job_folder}/job_{rec.key + 1}", rec.key + 1)
        except ChannelClosed:
            rec.aborted = not rec.killed
            self.recorder.event(rec.key, "callback_lost")
        finally:
            await self._close_callback(session)
            self._release(port, rec.key)
            self.recorder.event(rec.key, "callback_closed")
        if killer is not None:
            if not rec.killed:
                killer.cancel()  # the task ended before the kill point
            with contextlib.suppress(asyncio.CancelledError):
                await killer
        if not rec.killed:
            await cmd.close_task(kill=False)

    async def _kill_in_step(
        self, cmd: CommandConnection, driver: ApiDriver, spec: TaskSpec
    ) -> None:
        """An operator kill while a step runs: close kill='yes' (§3.6.3)."""
        await driver.kill_point.wait()
        await asyncio.sleep(spec.delays.step / 3)
        await cmd.close_task(kill=True)

    async def _accept(
        self, listen_sock: socket.socket, rec: TaskRecord, spec: TaskSpec
    ) -> Session | None:
        """Waits for the callback (Z-REMOTE-118 after the timeout, §2)."""
        timeout = self.scenario.callback_timeout
        loop = asyncio.get_running_loop()
        try:
            if spec.failure == "callback_refused":
                await asyncio.sleep(timeout)  # nobody listens on the port; C waits all the same
                raise asyncio.TimeoutError
            conn, _ = await asyncio.wait_for(loop.sock_accept(listen_sock), timeout)
        except asyncio.TimeoutError:
            self.recorder.event(rec.key, "callback_timeout")
            return None
        finally:
            listen_sock.close()  # after the first accept the listen socket is closed (§2)
        reader, writer = await asyncio.open_connection(sock=conn)
        self.recorder.event(rec.key, "callback_accepted")
        return Session(reader, writer, "C", "api", self.recorder)

    async def _close_callback(self, session: Session) -> None:
        """§6.1 step 10: shutdown(SHUT_WR), then close once the task server has gone."""
        with contextlib.suppress(OSError, RuntimeError):
            session.writer.write_eof()
        with contextlib.suppress(asyncio.TimeoutError, OSError):
            await asyncio.wait_for(session.reader.read(), 1.0)
        await session.close()
