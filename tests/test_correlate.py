"""Matching rules of DESIGN "What fills a row" on hand-built connections and events."""

from __future__ import annotations

from dataclasses import replace

from channels import C_IP, R_IP, S, callback, command

from jsdissect.correlate import Channel, correlate
from jsdissect.protocol import command as cmd
from jsdissect.tcp import Endpoint


def test_each_start_takes_the_earliest_free_syn_in_its_window() -> None:
    chans = [
        command("A", 40001, 1 * S, 59999, "1"),
        command("B", 40002, 2 * S, 59998, "2"),
        callback("cbB", Endpoint(R_IP, 50002), Endpoint(C_IP, 59998), 2 * S + 300),
        callback("cbA", Endpoint(R_IP, 50001), Endpoint(C_IP, 59999), 1 * S + 300),
    ]
    tasks = {t.process_id: t for t in correlate(chans, 20 * S)}
    assert tasks["1"].callback_conn == "cbA" and tasks["2"].callback_conn == "cbB"
    assert not tasks["1"].notes


def test_a_reused_port_belongs_to_the_later_start() -> None:
    chans = [
        command("A", 40001, 1 * S, 59999, "1"),  # its callback never came
        command("B", 40002, 5 * S, 59999, "2"),
        callback("cb", Endpoint(R_IP, 50002), Endpoint(C_IP, 59999), 5 * S + 300),
    ]
    tasks = {t.process_id: t for t in correlate(chans, 100 * S)}
    assert tasks["2"].callback_conn == "cb" and tasks["1"].callback_conn is None
    assert tasks["1"].status == "callback-missing"


def test_ambiguous_candidates_are_resolved_by_time_then_port_and_reported() -> None:
    chans = [
        command("A", 40001, 1 * S, 59999, "1"),
        callback("cb2", Endpoint(R_IP, 50009), Endpoint(C_IP, 59999), 1 * S + 300),
        callback("cb1", Endpoint(R_IP, 50001), Endpoint(C_IP, 59999), 1 * S + 300),
    ]
    (task, partial) = correlate(chans, 20 * S)
    assert task.callback_conn == "cb1"
    assert "2 candidate callbacks" in task.notes and "cb2" in task.notes
    assert partial.status == "partial" and partial.callback_conn == "cb2"


def test_a_syn_outside_the_window_is_not_taken() -> None:
    chans = [
        command("A", 40001, 1 * S, 59999, "1"),
        callback("late", Endpoint(R_IP, 50001), Endpoint(C_IP, 59999), 62 * S),
    ]
    tasks = correlate(chans, 200 * S)
    by_pid = {t.process_id: t for t in tasks}
    assert by_pid["1"].callback_conn is None and by_pid["1"].status == "callback-missing"
    assert any(t.callback_conn == "late" and t.status == "partial" for t in tasks)


def test_translated_addresses_are_matched_and_said() -> None:
    nat_controller = "192.0.2.10"
    chans = [
        command("A", 40001, 1 * S, 59999, "1"),
        callback("cb", Endpoint(R_IP, 50001), Endpoint(nat_controller, 59999), 1 * S + 300),
    ]
    (task,) = correlate(chans, 20 * S)
    assert task.callback_conn == "cb" and "address translation" in task.notes


def test_an_unanswered_syn_seen_once_near_the_end_is_running() -> None:
    base = callback("cb", Endpoint(R_IP, 50001), Endpoint(C_IP, 59999), 1 * S + 300)
    silent = replace(base.conn, synack=None, established=None, bytes_c2s=0, bytes_s2c=0)
    chans = [command("A", 40001, 1 * S, 59999, "1"), Channel(silent, "", ())]
    (task,) = correlate(chans, 3 * S)
    assert task.status == "running"
    (task,) = correlate([chans[0], Channel(replace(silent, syn_count=3), "", ())], 3 * S)
    assert task.status == "callback-unanswered"


def test_an_error_answering_kill_is_the_tasks_error() -> None:
    ch = command("A", 40001, 1 * S, 59999, "1")
    at = dict(conn="A", direction=0, offset=500, start=5 * S, end=5 * S)
    kill = cmd.RemoteTaskKill(**at, process_id="1", signal="SIGTERM")
    answer = cmd.ErrorAnswer(
        conn="A",
        direction=1,
        offset=500,
        start=6 * S,
        end=6 * S,
        command="remote_scheduler.remote_task.kill",
        command_offset=500,
        time=None,
        code="Z-REMOTE-999",
        text="no such process",
        attrs=(),
    )
    cb = callback("cb", Endpoint(R_IP, 50001), Endpoint(C_IP, 59999), 1 * S + 300)
    chans = [Channel(ch.conn, "cmd", (*ch.events, kill, answer)), cb]
    (task,) = correlate(chans, 100 * S)
    assert task.status == "killed" and task.error == "Z-REMOTE-999 no such process"


def test_an_unanswered_start_is_running_not_callback_missing() -> None:
    ch = command("A", 40001, 1 * S, 59999, "1")
    unanswered = Channel(ch.conn, "cmd", ch.events[:1])
    (task,) = correlate([unanswered], 70 * S)
    assert task.status == "running"


def test_lifecycle_names_count_whatever_their_case() -> None:
    from jsdissect.protocol import objserver as api

    at = dict(conn="cb", direction=1, offset=0, start=2 * S, end=2 * S)
    cb = callback("cb", Endpoint(R_IP, 50001), Endpoint(C_IP, 59999), 1 * S + 300)
    events = (api.LifecycleCall(**at, name="Begin"), api.LifecycleCall(**at, name="Step"))
    chans = [command("A", 40001, 1 * S, 59999, "1"), replace(cb, events=events)]
    (task,) = correlate(chans, 20 * S)
    assert task.begin_sent == 2 * S and task.steps == 1


def test_an_exit_code_put_after_a_signal_is_the_task_s_exit_with_no_signal() -> None:
    """DESIGN: exit_code and signal come from the step result or an exit_code put, the last
    one seen wins; a put after a result with a signal is the task's exit, not beside it.
    (Found comparing the engines: the plugin did so, the default engine kept the signal.)"""
    from jsdissect.protocol import objserver as api

    cb = callback("cb", Endpoint(R_IP, 50001), Endpoint(C_IP, 59999), 1 * S + 300)
    at = ("cb", 0, 0)
    killed = api.StepAnswered(*at, 2 * S, 2 * S, 1, 2 * S, False, 1, 9, None)
    put = api.ExitCodePut(*at, 3 * S, 3 * S, 5)
    chans = [command("A", 40001, 1 * S, 59999, "1"), replace(cb, events=(killed, put))]
    (task,) = correlate(chans, 20 * S)
    assert (task.exit_code, task.signal) == (5, None)
    chans[1] = replace(cb, events=(put, killed))
    (task,) = correlate(chans, 20 * S)
    assert (task.exit_code, task.signal) == (1, 9)


def _close(cid: str, offset: int, at: int, process_id: str) -> cmd.RemoteTaskClose:
    where = dict(conn=cid, direction=0, offset=offset, start=at, end=at)
    return cmd.RemoteTaskClose(**where, process_id=process_id, kill=False)


def test_a_start_answer_whose_start_was_not_captured_fills_a_partial_row() -> None:
    # The capture began between the start and its answer: the <process> answer tells
    # itself apart (§3.6.1), and its process id and pid are in the capture (found in review).
    ch = command("A", 40001, 1 * S, 59999, "77")
    lone = replace(ch.events[1], command=None, command_offset=None, pid=4242)
    running = Channel(ch.conn, "cmd", (lone,))
    (task,) = correlate([running], 3 * S)
    assert (task.process_id, task.pid, task.start_answered) == ("77", 4242, lone.end)
    assert (task.start_sent, task.status) == (None, "partial")
    closed = Channel(ch.conn, "cmd", (lone, _close("A", 500, 2 * S, "77")))
    (task,) = correlate([closed], 3 * S)
    assert (task.pid, task.close_sent) == (4242, 2 * S)


def test_closes_of_unknown_processes_each_give_a_row_and_keep_no_backlog() -> None:
    # Hostile or long-lived: every close of an id nobody started is a partial row of its
    # own; finding the task of the next close must not walk all rows made so far (it did:
    # quadratic in the closes of one connection, found in review).
    from jsdissect.correlate import _CommandTasks, _new_task

    ch = command("A", 40001, 1 * S, 59999, "1")
    closes = [_close("A", 500 + i, 2 * S + i, f"x{i}") for i in range(200)]
    tasks = correlate([Channel(ch.conn, "cmd", (*ch.events, *closes))], 3 * S)
    assert sorted(t.process_id for t in tasks) == sorted(["1", *(f"x{i}" for i in range(200))])
    found = _CommandTasks()
    for i in range(200):
        assert found.for_process(f"x{i}") is None
        task = found.add(_new_task(ch))
        task.process_id = f"x{i}"
        found.learned(task)
        assert len(found._anonymous) <= 1  # the rows that learned an id leave the stack


def test_a_close_goes_to_the_latest_task_with_its_id_else_the_latest_unanswered() -> None:
    from jsdissect.correlate import _CommandTasks, _new_task

    ch = command("A", 40001, 1 * S, 59999, "1")
    found = _CommandTasks()
    first, failed, second, waiting = (found.add(_new_task(ch)) for _ in range(4))
    first.process_id = second.process_id = "7"
    failed.start_answered, failed.start_failed = 5, True
    for task in (first, second):
        found.learned(task)
    assert found.for_process("7") is second
    assert found.for_process("8") is waiting
    waiting.start_answered = 9
    assert found.for_process("8") is None  # neither the failed one nor an answered one


def test_a_crowded_window_names_a_few_candidates_not_all() -> None:
    # A port scan in a task's window: its note must not list thousands of connections
    # (found in review: output grew with tasks × SYNs).
    from jsdissect.correlate import NOTED_CANDIDATES

    syns = [
        callback(f"cb{i:02}", Endpoint(R_IP, 50000 + i), Endpoint(C_IP, 59999), 1 * S + 300 + i)
        for i in range(20)
    ]
    task, *partial = correlate([command("A", 40001, 1 * S, 59999, "1"), *syns], 20 * S)
    assert task.callback_conn == "cb00" and len(partial) == 19
    listed = ", ".join(f"cb{i:02}" for i in range(1, NOTED_CANDIDATES + 1))
    crowded = f"over {NOTED_CANDIDATES + 1} candidate callbacks (also {listed}, …)"
    assert task.notes == f"earliest of {crowded}"
    few = correlate([command("A", 40001, 1 * S, 59999, "1"), *syns[:3]], 20 * S)
    assert few[0].notes == "earliest of 3 candidate callbacks (also cb01, cb02)"
