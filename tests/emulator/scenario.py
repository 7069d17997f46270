"""Scenario knobs of the emulator and the presets behind the committed captures."""

from __future__ import annotations

import random
from dataclasses import dataclass, field, replace
from typing import Literal

Kind = Literal["shell", "api"]
Flavour = Literal["cpp", "scala"]
Failure = Literal[
    "callback_dropped",  # an nft rule drops the callback SYNs: retransmitted, never answered
    "callback_refused",  # the announced port is bound but not listening: SYN answered by RST
    "callback_missing",  # the task server never connects back
    "start_error",  # the remote answers start_remote_task with <ERROR>
    "kill",  # close kill='yes' while a step runs
    "crash",  # the task server resets the callback connection in its first step
    "port_reuse",  # starts when the previous task of its controller ended: same port again
    "keepalive_spaces",  # the controller sends 0x20 keep-alives on the CMD channel (§3.7)
]
FIREWALLED: tuple[Failure, ...] = ("callback_dropped",)


@dataclass(frozen=True)
class Delays:
    """Seconds per phase."""

    spawn: float = 0.02  # remote: before the <process> answer
    callback: float = 0.02  # task server: before connecting back
    step: float = 0.05  # task server: duration of each step
    close: float = 0.01  # remote: before the deferred close answer (temp-file deletion)


@dataclass(frozen=True)
class TaskSpec:
    kind: Kind = "api"
    flavour: Flavour = "cpp"
    steps: int = 2  # API jobs; a shell job always has exactly one step
    log_lines: int = 2  # stdout lines per step
    exit_code: int = 0
    signal: int | None = None  # shell jobs of the C++ flavour only (§6.4)
    api_error: bool = False  # the last step throws: `E` answer, end(false), on_error
    failure: Failure | None = None
    controller: int | None = None  # index into Scenario.controllers; None = round robin
    remote: int | None = None  # index into Scenario.remotes; None = round robin
    start_at: float = (
        0.0  # seconds after the scenario start (for port_reuse: after the predecessor)
    )
    delays: Delays = field(default_factory=Delays)


@dataclass(frozen=True)
class Scenario:
    name: str
    description: str
    tasks: tuple[TaskSpec, ...]
    parallelism: int = 10
    remotes: tuple[tuple[str, int], ...] = (("127.0.0.11", 4455),)
    controllers: tuple[str, ...] = ("127.0.0.21",)
    top_port: int = 59999
    callback_timeout: float = 60.0  # controller gives up waiting for the callback (Z-REMOTE-118)
    task_keepalive: float | None = None  # task server's `K` period (R's scheduler.agent.keep_alive)
    space_period: float = 0.2  # controller's CMD keep-alive period for keepalive_spaces tasks
    seed: int = 1
    job_folder: str = "/folder"
    # (address, `ip netns` name): the parties of these addresses run in those network
    # namespaces (see netns); the others, and every address by default, on this host
    namespaces: tuple[tuple[str, str], ...] = ()

    def controller_of(self, key: int) -> str:
        index = self.tasks[key].controller
        return self.controllers[key % len(self.controllers) if index is None else index]

    def remote_of(self, key: int) -> tuple[str, int]:
        index = self.tasks[key].remote
        return self.remotes[key % len(self.remotes) if index is None else index]

    def addresses(self) -> list[str]:
        return sorted({ip for ip, _ in self.remotes} | set(self.controllers))

    def namespace_of(self, address: str) -> str | None:
        return dict(self.namespaces).get(address)

    def needs_firewall(self) -> bool:
        return any(t.failure in FIREWALLED for t in self.tasks)


# --- presets ------------------------------------------------------------------------------

_FAST = Delays(spawn=0.03, callback=0.03, step=0.08, close=0.02)

ONE_SHELL = Scenario(
    name="one_shell",
    description="One shell job (kind=process) on a C++ task server: the smallest complete task.",
    tasks=(TaskSpec(kind="shell", log_lines=3, delays=_FAST),),
)

ONE_API = Scenario(
    name="one_api",
    description=(
        "One API job on a C++ task server: spooler_open, four steps with three log lines each"
        " (the last step's lines flushed inside the Release), `K` keep-alives while steps run,"
        " end, on_success, exit, exit_code put."
    ),
    tasks=(TaskSpec(steps=4, log_lines=3, delays=Delays(0.05, 0.05, 0.35, 0.02)),),
    task_keepalive=0.15,
)

SCALA_API = Scenario(
    name="scala_api",
    description=(
        "Scala (Universal Agent) task servers: one API job with three steps and one shell job;"
        " Scala object ids and titles, VT_EMPTY construct answer, hard-coded DISPIDs, Java"
        " double text, the task server closes right after the Release answer."
    ),
    tasks=(
        TaskSpec(flavour="scala", steps=3, log_lines=2, delays=_FAST),
        TaskSpec(kind="shell", flavour="scala", exit_code=3, log_lines=2, delays=_FAST),
    ),
    task_keepalive=0.05,
)


def _parallel_tasks(count: int, seed: int) -> tuple[TaskSpec, ...]:
    rng = random.Random(seed)
    tasks = []
    for _ in range(count):
        kind: Kind = rng.choice(("shell", "api", "api"))
        flavour: Flavour = "scala" if rng.random() < 0.2 else "cpp"
        delays = Delays(
            spawn=round(rng.uniform(0.02, 0.3), 3),
            callback=round(rng.uniform(0.02, 0.2), 3),
            step=round(rng.uniform(0.05, 0.3), 3),
            close=round(rng.uniform(0.01, 0.1), 3),
        )
        tasks.append(
            TaskSpec(
                kind=kind,
                flavour=flavour,
                steps=rng.randint(1, 4),
                log_lines=rng.randint(0, 3),
                exit_code=rng.choice((0, 0, 0, 1)) if kind == "shell" else 0,
                start_at=round(rng.uniform(0.0, 0.5), 3),
                delays=delays,
            )
        )
    return tuple(tasks)


PARALLEL_50 = Scenario(
    name="parallel_50",
    description=(
        "50 tasks at once across three remotes (127.0.0.11/12/13:4455) and two controllers"
        " (127.0.0.21/22); each controller counts its callback ports down from 59999."
    ),
    tasks=_parallel_tasks(50, seed=50),
    parallelism=50,
    remotes=(("127.0.0.11", 4455), ("127.0.0.12", 4455), ("127.0.0.13", 4455)),
    controllers=("127.0.0.21", "127.0.0.22"),
    task_keepalive=0.1,
    seed=50,
)

FAILURES = Scenario(
    name="failures",
    description=(
        "One task per failure: callback dropped by a firewall (SYN retransmitted), callback"
        " refused (RST), callback never attempted, start error, killed (close kill='yes'),"
        " task-server crash (RST mid-step), keep-alive spaces on the CMD channel, and a pair"
        " of sequential tasks on their own controller reusing callback port 59999."
    ),
    tasks=(
        TaskSpec(failure="callback_dropped", controller=0),
        TaskSpec(kind="shell", failure="callback_refused", controller=0),
        TaskSpec(failure="callback_missing", controller=0),
        TaskSpec(kind="shell", failure="start_error", controller=0),
        TaskSpec(steps=3, failure="kill", controller=0, delays=Delays(step=1.0)),
        TaskSpec(steps=3, failure="crash", controller=0, delays=Delays(step=0.3)),
        TaskSpec(kind="shell", failure="keepalive_spaces", controller=0, delays=Delays(step=1.2)),
        TaskSpec(kind="shell", controller=1),
        TaskSpec(failure="port_reuse", controller=1, start_at=0.5),
    ),
    controllers=("127.0.0.21", "127.0.0.22"),
    callback_timeout=4.0,
    task_keepalive=0.4,
    seed=7,
)

DEMO = Scenario(
    name="demo",
    description=(
        "A readable mix of ten tasks started over two seconds: shell and API jobs on C++ and"
        " Scala task servers, a failing shell job, an API job whose step throws, a refused"
        " callback and a killed task."
    ),
    tasks=(
        TaskSpec(kind="shell", log_lines=2, delays=Delays(0.1, 0.05, 0.4, 0.05)),
        TaskSpec(steps=3, log_lines=2, start_at=0.2, delays=Delays(0.15, 0.1, 0.3, 0.05)),
        TaskSpec(kind="shell", exit_code=1, log_lines=1, start_at=0.4),
        TaskSpec(flavour="scala", steps=2, start_at=0.6, delays=Delays(0.2, 0.1, 0.3, 0.05)),
        TaskSpec(steps=2, api_error=True, start_at=0.8, delays=Delays(step=0.2)),
        TaskSpec(kind="shell", failure="callback_refused", start_at=1.0),
        TaskSpec(kind="shell", signal=9, exit_code=0, start_at=1.2, delays=Delays(step=0.5)),
        TaskSpec(steps=4, failure="kill", start_at=1.4, delays=Delays(step=0.8)),
        TaskSpec(kind="shell", flavour="scala", log_lines=3, start_at=1.6),
        TaskSpec(steps=5, log_lines=1, start_at=1.8, delays=Delays(0.05, 0.05, 0.15, 0.3)),
    ),
    remotes=(("127.0.0.11", 4455), ("127.0.0.12", 4455)),
    controllers=("127.0.0.21",),
    callback_timeout=3.0,
    task_keepalive=0.25,
    seed=3,
)


def _twenty_tasks() -> tuple[TaskSpec, ...]:
    tasks = list(_parallel_tasks(20, seed=20))
    failures: dict[int, Failure] = {
        3: "start_error",
        7: "kill",
        11: "crash",
        14: "callback_refused",
        17: "keepalive_spaces",
        19: "port_reuse",
    }
    for key, failure in failures.items():
        spec = tasks[key]
        steps = max(spec.steps, 3) if failure in ("kill", "crash") else spec.steps
        step = 0.8 if failure in ("kill", "keepalive_spaces") else spec.delays.step
        tasks[key] = replace(
            spec, failure=failure, steps=steps, delays=replace(spec.delays, step=step)
        )
    return tuple(tasks)


TWENTY = Scenario(
    name="twenty",
    description=(
        "20 tasks, eight at a time, two remotes and two controllers: mixed kinds and flavours"
        " plus a start error, a kill, a crash, a refused callback, keep-alive spaces and a"
        " reused callback port (for checking jsdissect's task table against the truth)."
    ),
    tasks=_twenty_tasks(),
    parallelism=8,
    remotes=(("127.0.0.11", 4455), ("127.0.0.12", 4455)),
    controllers=("127.0.0.21", "127.0.0.22"),
    callback_timeout=3.0,
    task_keepalive=0.1,
    seed=20,
)

PRESETS: dict[str, Scenario] = {
    s.name: s for s in (ONE_SHELL, ONE_API, SCALA_API, PARALLEL_50, FAILURES, DEMO, TWENTY)
}
