"""Emulator of JobScheduler 1.x remote execution over real TCP sockets (issue 3).

Three parties as asyncio coroutines: controllers (`controller`), remote schedulers
(`remote`) and task servers (`taskserver`). Every message is encoded with tests/jsencode.py
and received with the test-side decoder in `wire`; nothing here imports jsdissect.
"""

from __future__ import annotations

from .record import Recorder, Sent, TaskRecord
from .run import run_scenario, run_scenario_async
from .scenario import (
    DEMO,
    FAILURES,
    ONE_API,
    ONE_SHELL,
    PARALLEL_50,
    PRESETS,
    SCALA_API,
    TWENTY,
    Delays,
    Scenario,
    TaskSpec,
)

__all__ = [
    "DEMO",
    "FAILURES",
    "ONE_API",
    "ONE_SHELL",
    "PARALLEL_50",
    "PRESETS",
    "SCALA_API",
    "TWENTY",
    "Delays",
    "Recorder",
    "Scenario",
    "Sent",
    "TaskRecord",
    "TaskSpec",
    "run_scenario",
    "run_scenario_async",
]
