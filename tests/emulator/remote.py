"""The remote scheduler R: XML commands on its TCP port, task servers started per task (§3, §4)."""

from __future__ import annotations

import asyncio
import contextlib
import random
import socket
from dataclasses import dataclass
from datetime import datetime, timezone

import jsencode as enc

from . import netns
from .channel import Channel
from .record import Recorder
from .scenario import Scenario
from .taskserver import TaskServer
from .wire import XmlEndFinder, command_intents

START_ERROR = ("SCHEDULER-121", "Remote execution is not allowed: security level 'all' required")
# §9 (an unknown process_id, from get_task_process) and §3.6.2 (a signal other than
# SIGTERM) say these are errors but name no code: the codes are the emulator's own, so
# that nothing tested depends on them.
UNKNOWN_PROCESS = ("EMULATOR-1", "Unknown process_id")
UNKNOWN_SIGNAL = ("EMULATOR-2", "Only SIGTERM can be sent")


async def _send_error(channel: Channel, code: str, text: str) -> None:
    await channel.send(enc.error_answer(answer_time(), code, text), ("error", code, text))


def answer_time() -> str:
    """§3.4: UTC with milliseconds, `T` and `Z`."""
    now = datetime.now(timezone.utc)
    return now.strftime("%Y-%m-%dT%H:%M:%S.") + f"{now.microsecond // 1000:03d}Z"


@dataclass
class TaskProcess:
    key: int
    server: TaskServer
    runner: asyncio.Task[None]

    async def kill(self) -> None:
        """SIGKILL: the process ends at once; its SO_LINGER-0 socket resets the callback."""
        if not self.runner.done():
            self.runner.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self.runner

    async def wait(self) -> None:
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.shield(self.runner)


class RemoteScheduler:
    def __init__(self, ip: str, port: int, scenario: Scenario, recorder: Recorder) -> None:
        self.ip, self.port, self.scenario, self.recorder = ip, port, scenario, recorder
        rng = random.Random(f"{scenario.seed}:remote:{ip}:{port}")
        self._next_process_id = rng.randint(1, 1_000_000_000)  # §3.6.1
        self._next_pid = rng.randint(2_000, 40_000)
        self._pid_rng = rng
        self._server: asyncio.Server | None = None
        self._processes: dict[str, TaskProcess] = {}

    async def start(self) -> None:
        sock = netns.tcp_socket(self.ip)  # in the remote's namespace, if it has one
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as start_server does
        sock.bind((self.ip, self.port))
        self._server = await asyncio.start_server(self._connection, sock=sock)

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            # Python ≥ 3.12 also waits for open connections here; do not hang on a broken run.
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._server.wait_closed(), 5.0)
        for process in list(self._processes.values()):
            await process.kill()

    async def _connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """One CMD connection: one request at a time, answered before the next is read."""
        channel = Channel(reader, writer, "R", "cmd", self.recorder)
        finder = XmlEndFinder()
        started: list[str] = []
        try:
            while data := await reader.read(65536):
                for request in finder.feed(data):
                    await self._execute(channel, request, started)
        except OSError:
            pass
        finally:
            # §3.8: a lost CMD connection kills the task processes started on it.
            for process_id in started:
                process = self._processes.pop(process_id, None)
                if process is not None:
                    await process.kill()
            await channel.close()

    async def _execute(self, channel: Channel, request: bytes, started: list[str]) -> None:
        command = command_intents(request)[-1]
        if command[0] == "start":
            await self._start(channel, command[1], command[2], started)
        elif command[0] == "close":
            await self._close(channel, command[1], command[2])
        elif command[0] == "kill":
            process = self._processes.get(command[1])
            if command[2] != "SIGTERM":
                await _send_error(channel, *UNKNOWN_SIGNAL)
            elif process is None:
                await _send_error(channel, *UNKNOWN_PROCESS)
            else:
                await process.kill()  # SIGTERM: our task servers end at once
                await channel.send(enc.ok_answer(answer_time()), ("ok",))
        else:
            await _send_error(channel, "SCHEDULER-105", f"Unknown command: <{command[1]}>")

    async def _start(
        self, channel: Channel, tcp_port: int, kind: str | None, started: list[str]
    ) -> None:
        """§3.6.1, §4: start T (a thread for kind="process", else a process), answer."""
        controller_ip = channel.flow[2]
        key = self.recorder.key_for_callback(controller_ip, tcp_port)
        spec = self.scenario.tasks[key]
        await asyncio.sleep(spec.delays.spawn)
        if spec.failure == "start_error":
            await _send_error(channel, *START_ERROR)
            self.recorder.event(key, "start_error")
            return
        process_id = str(self._next_process_id)
        self._next_process_id += 1
        pid = None if kind == "process" else self._new_pid()
        server = TaskServer(
            spec,
            self.recorder.tasks[key],
            self.recorder,
            remote_ip=self.ip,
            controller=(controller_ip, tcp_port),
            keepalive=self.scenario.task_keepalive,
            # a dropped SYN keeps T trying a little longer than C waits
            connect_timeout=self.scenario.callback_timeout + 1.5,
            seed=f"{self.scenario.seed}:{key}:taskserver",
        )
        self._processes[process_id] = TaskProcess(key, server, asyncio.create_task(server.run()))
        started.append(process_id)
        raw = enc.process_answer(answer_time(), process_id, pid)
        await channel.send(raw, ("process", process_id, pid))
        self.recorder.event(key, "start_answered")

    def _new_pid(self) -> int:
        self._next_pid += self._pid_rng.randint(1, 9)
        return self._next_pid

    async def _close(self, channel: Channel, process_id: str, kill: bool) -> None:
        """§3.6.3: kill first if asked, wait for T's end, delete temp files, then answer."""
        process = self._processes.pop(process_id, None)
        if process is None:
            await _send_error(channel, *UNKNOWN_PROCESS)
            return
        if kill:
            await process.kill()
            self.recorder.event(process.key, "task_killed")
        await process.wait()
        await asyncio.sleep(self.scenario.tasks[process.key].delays.close)
        await channel.send(enc.ok_answer(answer_time()), ("ok",))
