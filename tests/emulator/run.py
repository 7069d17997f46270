"""Runs a scenario: remotes listening, controllers driving tasks, firewall rules cleaned up."""

from __future__ import annotations

import asyncio

from . import netns
from .controller import Controller
from .firewall import Firewall
from .record import Recorder
from .remote import RemoteScheduler
from .scenario import Scenario

PORT_REUSE_GAP = 0.2  # seconds between a task's end and its port_reuse successor's start


def _predecessor(scenario: Scenario, key: int) -> int | None:
    """The previous task (in list order) of the same controller."""
    controller = scenario.controller_of(key)
    earlier = [k for k in range(key) if scenario.controller_of(k) == controller]
    return earlier[-1] if earlier else None


async def run_scenario_async(scenario: Scenario) -> Recorder:
    recorder = Recorder(scenario)
    firewall = None
    if scenario.needs_firewall():
        firewall = Firewall({ip: scenario.namespace_of(ip) for ip in scenario.controllers})
    remotes = [RemoteScheduler(ip, port, scenario, recorder) for ip, port in scenario.remotes]
    controllers = {ip: Controller(ip, scenario, recorder, firewall) for ip in scenario.controllers}
    slots = asyncio.Semaphore(scenario.parallelism)
    ended = [asyncio.Event() for _ in scenario.tasks]

    async def one_task(key: int) -> None:
        spec = scenario.tasks[key]
        try:
            predecessor = _predecessor(scenario, key) if spec.failure == "port_reuse" else None
            if predecessor is not None:
                await ended[predecessor].wait()
            await asyncio.sleep(spec.start_at)
            async with slots:
                await controllers[scenario.controller_of(key)].run_task(recorder.tasks[key], spec)
        finally:
            ended[key].set()

    try:
        if firewall is not None:
            await firewall.setup()
        for remote in remotes:
            await remote.start()
        runners = [asyncio.create_task(one_task(key)) for key in range(len(scenario.tasks))]
        try:
            await asyncio.gather(*runners)
        finally:
            for runner in runners:
                runner.cancel()
            await asyncio.gather(*runners, return_exceptions=True)
    finally:
        for remote in remotes:
            await remote.stop()
        if firewall is not None:
            await firewall.teardown()
    return recorder


def run_scenario(scenario: Scenario, timeout: float = 300.0) -> Recorder:
    """Runs the scenario; `timeout` stops a broken run instead of letting it hang."""
    with netns.hosting(scenario.namespaces):
        return asyncio.run(asyncio.wait_for(run_scenario_async(scenario), timeout))
