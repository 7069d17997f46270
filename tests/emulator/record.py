"""What the emulator did: per-task facts, the order of events, every message sent.

The truth file is derived from these records. Each fact is recorded by the party that
caused it on the wire (the sender of a message, the side whose SYN was dropped or
refused), so the statuses follow DESIGN.md's rules for what actually happened.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .scenario import Flavour, Kind, Scenario
from .wire import Intent

Flow = tuple[str, int, str, int]  # src ip, src port, dst ip, dst port


@dataclass
class TaskRecord:
    key: int
    kind: Kind
    flavour: Flavour
    controller: str
    remote: str
    callback_port: int | None = None
    process_id: str | None = None
    pid: int | None = None
    job: str | None = None
    task_id: int | None = None
    steps: int = 0
    exit_code: int | None = None
    signal: int | None = None
    error: str | None = None
    log: list[tuple[int, str]] = field(default_factory=list)
    # what happened on the wire, for the status rules (DESIGN.md "Status")
    start_failed: bool = False
    callback_attempted: bool = False
    callback_refused: bool = False
    callback_unanswered: bool = False
    killed: bool = False
    aborted: bool = False
    close_answered: bool = False

    def add_error(self, code: str, text: str) -> None:
        """DESIGN "What fills a row": `CODE text`, the earliest error wins."""
        if self.error is None:
            self.error = f"{code} {text}"

    def add_log(self, level: int, text: str) -> None:
        """One `spooler_log` string: lines split at `\\n`, blank lines not counted."""
        self.log.extend((level, line) for line in text.split("\n") if line.strip())

    def status(self) -> str:
        """DESIGN.md "Status": the first rule that applies."""
        rules = (
            (self.start_failed, "start-failed"),
            (self.callback_refused, "callback-refused"),
            (self.callback_unanswered, "callback-unanswered"),
            (self.process_id is not None and not self.callback_attempted, "callback-missing"),
            (self.killed, "killed"),
            (self.aborted, "aborted"),
            (self.close_answered, "completed"),
        )
        return next((status for applies, status in rules if applies), "running")

    def truth(self) -> dict[str, Any]:
        return {
            "process_id": self.process_id,
            "pid": self.pid,
            "kind": self.kind,
            "flavour": self.flavour,
            "controller": self.controller,
            "remote": self.remote,
            "callback_port": self.callback_port,
            "job": self.job,
            "task_id": self.task_id,
            "steps": self.steps,
            "exit_code": self.exit_code,
            "signal": self.signal,
            "log_lines": len(self.log),
            "status": self.status(),
            "error": self.error,
            "log": [[level, text] for level, text in self.log],
        }


@dataclass(frozen=True, slots=True)
class Sent:
    """One message as its sender meant it: raw bytes plus the intent the decoder should find."""

    flow: Flow
    channel: str  # "cmd" or "api"
    sender: str  # "C", "R" or "T"
    raw: bytes
    intent: Intent


class Recorder:
    def __init__(self, scenario: Scenario) -> None:
        self.scenario = scenario
        self.tasks = [
            TaskRecord(
                key=key,
                kind=spec.kind,
                flavour=spec.flavour,
                controller=scenario.controller_of(key),
                remote="{}:{}".format(*scenario.remote_of(key)),
            )
            for key, spec in enumerate(scenario.tasks)
        ]
        self.events: list[tuple[int, str]] = []
        self.sent: list[Sent] = []
        self._by_callback: dict[tuple[str, int], int] = {}

    def event(self, key: int, name: str) -> None:
        self.events.append((key, name))

    def announce_callback(self, controller: str, port: int, key: int) -> None:
        """Lets the remote find the scenario's TaskSpec for a start command (the job's code)."""
        self._by_callback[(controller, port)] = key

    def key_for_callback(self, controller: str, port: int) -> int:
        return self._by_callback[(controller, port)]

    def truth(self) -> dict[str, Any]:
        return {
            "scenario": self.scenario.name,
            "description": self.scenario.description,
            "tasks": [t.truth() for t in self.tasks],
            "events": [[key, name] for key, name in self.events],
        }

    def write_truth(self, path: Path) -> None:
        path.write_text(format_truth(self.truth()), encoding="utf-8")

    def sent_by_flow(self) -> dict[Flow, list[Sent]]:
        flows: dict[Flow, list[Sent]] = {}
        for message in self.sent:
            flows.setdefault(message.flow, []).append(message)
        return flows


def format_truth(truth: dict[str, Any]) -> str:
    """JSON with one line per task field, log line and event: readable and diff-friendly."""

    def dump(value: Any) -> str:
        return json.dumps(value, ensure_ascii=False)

    def task_text(task: dict[str, Any]) -> str:
        fields = [f'   "{k}": {dump(v)}' for k, v in task.items() if k != "log"]
        log = ",\n".join(f"    {dump(line)}" for line in task["log"])
        fields.append(f'   "log": [\n{log}\n   ]' if log else '   "log": []')
        return "  {\n" + ",\n".join(fields) + "\n  }"

    tasks = ",\n".join(task_text(t) for t in truth["tasks"])
    events = ",\n".join(f"  {dump(e)}" for e in truth["events"])
    return (
        "{\n"
        f' "scenario": {dump(truth["scenario"])},\n'
        f' "description": {dump(truth["description"])},\n'
        f' "tasks": [\n{tasks}\n ],\n'
        f' "events": [\n{events}\n ]\n'
        "}\n"
    )
