"""protocol.objserver: the binary callback channel (PROTOCOL.md §5, §6, §12, §13).

Input is built with the independent test-side encoder (tests/jsencode.py) or copied as hex
from PROTOCOL.md §13. Direction 0 is the TCP client = the task server (it connects back to
the controller), direction 1 the controller.
"""

from __future__ import annotations

import bisect
import dataclasses
import itertools
import struct
import time
import tracemalloc
from typing import Any

import jsencode as enc
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from jsdissect.protocol import DecodeError, Event
from jsdissect.protocol.objserver import (
    CLSID_COM_LOG_PROXY,
    CLSID_NULL,
    CLSID_SPOOLER_PROXY,
    CLSID_TASK_PROXY,
    IID_IREMOTE_MODULE_INSTANCE_SERVER,
    MAX_MESSAGE_SIZE,
    VT_ARRAY,
    VT_BOOL,
    VT_BSTR,
    VT_DISPATCH,
    VT_EMPTY,
    VT_I4,
    VT_R8,
    VT_VARIANT,
    ApiError,
    BeginAnswered,
    Construct,
    Double,
    ExcepInfo,
    ExitCodePut,
    InvokeFailure,
    KeepAliveK,
    LifecycleCall,
    LogLine,
    ObjRef,
    ObjServerDecoder,
    ReleaseAnswered,
    Reply,
    Request,
    SafeArray,
    StepAnswered,
    Variant,
)

CONN = "Cobjsrv0001"
T2C = 0  # task server → controller (the task server is the TCP client)
C2T = 1

# --- §13 worked examples, hex copied from PROTOCOL.md ----------------------------------

EX2_CREATE = bytes.fromhex("""
00 00 00 3b 53 00 00 00 00 00 00 00 00 43 fe ee
47 a3 6c 1b 11 d8 81 03 00 04 76 ee 8a fb 00 00
00 00 00 00 00 00 00 00 00 00 00 00 00 00 01 fe
ee 47 a2 6c 1b 11 d8 81 03 00 04 76 ee 8a fb
""")
EX2_ANSWER = bytes.fromhex("""
00 00 00 5b 41 00 00 00 00 00 00 00 00 6b 8b 45
67 00 00 00 01 01 00 00 00 31 73 6f 73 3a 3a 73
63 68 65 64 75 6c 65 72 3a 3a 43 6f 6d 5f 72 65
6d 6f 74 65 5f 6d 6f 64 75 6c 65 5f 69 6e 73 74
61 6e 63 65 5f 73 65 72 76 65 72 00 00 00 00 00
00 00 00 00 00 00 00 00 00 00 00 00 00 00 00
""")
EX2_ANSWER_SCALA = (
    bytes.fromhex("00000044 41 00000000 00000000 2f5a1d7c 40000001 01 0000001a")
    + b"RemoteModuleInstanceServer"
    + bytes(16)
    + bytes(4)
)
EX3_BEGIN = bytes.fromhex("""
00 00 01 f3 4f 6b 8b 45 67 00 00 00 01 41 00 00
00 05 62 65 67 69 6e 00 00 00 02 00 00 00 00 00
00 20 0c 00 01 08 10 00 00 00 04 00 00 00 00 00
00 00 0c 00 00 00 08 00 00 00 07 73 70 6f 6f 6c
65 72 00 00 00 08 00 00 00 0b 73 70 6f 6f 6c 65
72 5f 6a 6f 62 00 00 00 08 00 00 00 0c 73 70 6f
6f 6c 65 72 5f 74 61 73 6b 00 00 00 08 00 00 00
0b 73 70 6f 6f 6c 65 72 5f 6c 6f 67 00 00 20 0c
00 01 08 10 00 00 00 04 00 00 00 00 00 00 00 0c
00 00 00 09 32 7b 23 c6 00 00 00 01 01 00 00 00
28 73 6f 73 3a 3a 73 63 68 65 64 75 6c 65 72 3a
3a 63 6f 6d 5f 6f 62 6a 65 63 74 73 3a 3a 43 6f
6d 5f 73 70 6f 6f 6c 65 72 fe ee 47 b3 6c 1b 11
d8 81 03 00 04 76 ee 8a fb 00 00 00 00 00 00 00
09 64 3c 98 69 00 00 00 02 01 00 00 00 24 73 6f
73 3a 3a 73 63 68 65 64 75 6c 65 72 3a 3a 63 6f
6d 5f 6f 62 6a 65 63 74 73 3a 3a 43 6f 6d 5f 6a
6f 62 00 00 00 00 00 00 00 00 00 00 00 00 00 00
00 00 00 00 00 00 00 00 00 09 66 33 48 73 00 00
00 03 01 00 00 00 25 73 6f 73 3a 3a 73 63 68 65
64 75 6c 65 72 3a 3a 63 6f 6d 5f 6f 62 6a 65 63
74 73 3a 3a 43 6f 6d 5f 74 61 73 6b fe ee 47 aa
6c 1b 11 d8 81 03 00 04 76 ee 8a fb 00 00 00 01
00 00 00 24 73 75 62 70 72 6f 63 65 73 73 5f 6f
77 6e 5f 70 72 6f 63 65 73 73 5f 67 72 6f 75 70
5f 64 65 66 61 75 6c 74 00 00 00 0b 00 00 00 00
09 74 b0 dc 51 00 00 00 04 01 00 00 00 24 73 6f
73 3a 3a 73 63 68 65 64 75 6c 65 72 3a 3a 63 6f
6d 5f 6f 62 6a 65 63 74 73 3a 3a 43 6f 6d 5f 6c
6f 67 fe ee 47 a6 6c 1b 11 d8 81 03 00 04 76 ee
8a fb 00 00 00 01 00 00 00 05 6c 65 76 65 6c 00
00 00 03 00 00 00 00
""")
EX3_ANSWER = bytes.fromhex("00 00 00 0a 41 00 00 00 00 00 00 00 0b 01")
EX4_STEP = bytes.fromhex("""
00 00 00 1a 4f 6b 8b 45 67 00 00 00 01 41 00 00
00 04 73 74 65 70 00 00 00 00 00 00 00 00
""")
EX4_ANSWER = bytes.fromhex("00 00 00 0a 41 00 00 00 00 00 00 00 0b 01")
EX5_GET_IDS = bytes.fromhex("""
00 00 00 28 4f 66 33 48 73 00 00 00 03 47 00 00
00 00 00 00 00 00 00 00 00 00 00 00 00 00 00 00
00 00 00 00 00 01 00 00 00 02 69 64
""")
EX5_DISPID = bytes.fromhex("00 00 00 09 41 00 00 00 00 00 00 00 0a")
EX5_INVOKE = bytes.fromhex("""
00 00 00 2e 4f 66 33 48 73 00 00 00 03 49 00 00
00 0a 00 00 00 00 00 00 00 00 00 00 00 00 00 00
00 00 00 00 00 00 00 00 00 02 00 00 00 00 00 00
00 00
""")
EX5_VALUE = bytes.fromhex("00 00 00 0d 41 00 00 00 00 00 00 00 03 00 00 00 7b")
EX6_LOG = bytes.fromhex("""
00 00 00 4c 4f 74 b0 dc 51 00 00 00 04 49 00 00
00 0e 00 00 00 00 00 00 00 00 00 00 00 00 00 00
00 00 00 00 00 00 00 00 00 01 00 00 00 02 00 00
00 00 00 00 00 08 00 00 00 0e 5b 73 74 64 6f 75
74 5d 20 68 65 6c 6c 6f 00 00 00 03 00 00 00 00
""")
EX6_ANSWER = bytes.fromhex("00 00 00 09 41 00 00 00 00 00 00 00 00")
EX6_LEVEL_PUT = enc.frame(
    bytes.fromhex("4f 74b0dc51 00000004 49 00000013")
    + bytes(16)
    + bytes.fromhex("00000000 00000004 00000001 00000001 fffffffd 00000003 00000002")
)
EX7_E = bytes.fromhex("""
00 00 00 55 45 00 00 00 08 6e 61 6d 65 3d 43 4f
4d 00 00 00 11 63 6f 64 65 3d 43 4f 4d 2d 38 30
30 32 30 30 30 39 00 00 00 2f 77 68 61 74 3d 43
4f 4d 2d 38 30 30 32 30 30 30 39 20 6a 61 76 61
2e 6c 61 6e 67 2e 52 75 6e 74 69 6d 65 45 78 63
65 70 74 69 6f 6e 3a 20 58
""")
EX7_INVOKE_FAILED = (
    bytes.fromhex("00 00 00 32 41 80 02 00 09 ff ff ff ff")
    + bytes.fromhex("00 00 00 00 | 00 00 00 00 | 00 00 00 11".replace("|", ""))
    + b"SCHEDULER-203 ..."
    + bytes.fromhex("00 00 00 00 00 00 00 00 80 02 00 09")
)
EX7_KEEP_ALIVE = bytes.fromhex("00 00 00 01 4b")
EX7_EMPTY_ANSWER = bytes.fromhex("00 00 00 01 41")
EX7_RELEASE = bytes.fromhex("00 00 00 0a 4f 6b 8b 45 67 00 00 00 01 52")

RMIS_ID = 0x6B8B4567_00000001
RMIS_SCALA_ID = 0x2F5A1D7C_40000001
SPOOLER_ID = 0x327B23C6_00000001
JOB_ID = 0x643C9869_00000002
TASK_ID = 0x66334873_00000003
LOG_ID = 0x74B0DC51_00000004
VARSET_ID = 0x327B23C6_00000005
RMIS_TITLE = "sos::scheduler::Com_remote_module_instance_server"
NS = "sos::scheduler::com_objects::"
BEGIN_OBJECTS = enc.BeginObjects(SPOOLER_ID, JOB_ID, TASK_ID, LOG_ID)

LIFECYCLE = (
    LifecycleCall,
    Construct,
    BeginAnswered,
    StepAnswered,
    ReleaseAnswered,
    KeepAliveK,
    LogLine,
    ExitCodePut,
    ApiError,
)


class Wire:
    """Feeds whole messages (optionally cut into `piece`-byte pieces, the k-th piece at
    ts + k) and returns where each landed, for building the expected events."""

    def __init__(
        self, controller_direction: int | None = C2T, piece: int | None = None, **kw: Any
    ) -> None:
        self.decoder = ObjServerDecoder(CONN, controller_direction, **kw)
        self.next = [0, 0]
        self.piece = piece
        self.events: list[Event] = []

    def send(self, direction: int, data: bytes, ts: int) -> dict[str, Any]:
        offset = self.next[direction]
        size = self.piece or len(data)
        pieces = [data[i : i + size] for i in range(0, len(data), size)]
        for k, chunk in enumerate(pieces):
            self.events += self.decoder.feed(direction, offset + k * size, chunk, ts + k)
        self.next[direction] += len(data)
        return {
            "conn": CONN,
            "direction": direction,
            "offset": offset,
            "start": ts,
            "end": ts + len(pieces) - 1,
        }

    def c(self, data: bytes, ts: int = 0) -> dict[str, Any]:
        return self.send(C2T, data, ts)

    def t(self, data: bytes, ts: int = 0) -> dict[str, Any]:
        return self.send(T2C, data, ts)

    def of(self, *types: type) -> list[Event]:
        return [e for e in self.events if isinstance(e, types)]

    def errors(self) -> list[DecodeError]:
        return [e for e in self.events if isinstance(e, DecodeError)]


def one(events: list[Event], kind: type) -> Any:
    found = [e for e in events if isinstance(e, kind)]
    assert len(found) == 1, found
    return found[0]


def started_conversation(**kw: Any) -> Wire:
    """§13 Examples 2 and 3 up to the begin call (begin still open)."""
    w = Wire(**kw)
    w.c(EX2_CREATE, 1)
    w.t(EX2_ANSWER, 2)
    w.c(EX3_BEGIN, 3)
    return w


# --- §13 examples: decoder -------------------------------------------------------------


def test_example2_create_instance_and_cpp_answer() -> None:
    w = Wire(controller_direction=None)
    w.c(EX2_CREATE, 10)
    w.t(EX2_ANSWER, 20)
    request, reply = w.of(Request)[0], w.of(Reply)[0]
    assert request.sender == "C"
    assert request.command == "CreateInstance"
    assert request.args == (
        "feee47a3-6c1b-11d8-8103-000476ee8afb",
        IID_IREMOTE_MODULE_INSTANCE_SERVER,
    )
    assert request.offset == 0 and request.depth == 0
    assert reply.sender == "T" and reply.request == request and reply.hr == 0
    assert reply.result == ObjRef(RMIS_ID, True, RMIS_TITLE, CLSID_NULL, ())
    assert reply.result.name == "RMIS"
    assert str(reply.result) == "obj 6b8b4567.00000001 (RMIS)"
    assert not w.errors()


def test_example2_scala_answer() -> None:
    w = Wire()
    w.c(EX2_CREATE)
    w.t(EX2_ANSWER_SCALA)
    reply = one(w.events, Reply)
    assert reply.result == ObjRef(RMIS_SCALA_ID, True, "RemoteModuleInstanceServer", CLSID_NULL)
    assert len(EX2_ANSWER_SCALA) == 72 and not w.errors()


def test_example3_begin_names_pair_with_objects() -> None:
    w = started_conversation()
    begin = w.of(Request)[-1]
    assert begin.method == "begin" and begin.object_name == "RMIS"
    assert begin.object_id == RMIS_ID
    objects, names = begin.args  # parameter order: objects first, names last
    assert names == Variant(
        VT_ARRAY | VT_VARIANT,
        SafeArray(
            0x0810,
            VT_VARIANT,
            tuple(
                Variant(VT_BSTR, n)
                for n in ("spooler", "spooler_job", "spooler_task", "spooler_log")
            ),
        ),
    )
    refs = [v.value for v in objects.value.elements]
    assert [v.vt for v in objects.value.elements] == [VT_DISPATCH] * 4
    assert refs == [
        ObjRef(SPOOLER_ID, True, NS + "Com_spooler", CLSID_SPOOLER_PROXY),
        ObjRef(JOB_ID, True, NS + "Com_job", CLSID_NULL),
        ObjRef(
            TASK_ID,
            True,
            NS + "Com_task",
            CLSID_TASK_PROXY,
            (("subprocess_own_process_group_default", Variant(VT_BOOL, False)),),
        ),
        ObjRef(LOG_ID, True, NS + "Com_log", CLSID_COM_LOG_PROXY, (("level", Variant(VT_I4, 0)),)),
    ]
    assert [r.name for r in refs] == ["spooler", "spooler_job", "spooler_task", "spooler_log"]
    assert str(refs[3]) == "obj 74b0dc51.00000004 (spooler_log)"
    assert str(names) == '["spooler", "spooler_job", "spooler_task", "spooler_log"]'
    begin_where = {k: getattr(begin, k) for k in ("conn", "direction", "offset", "start", "end")}
    assert one(w.events, LifecycleCall) == LifecycleCall(**begin_where, name="begin")
    w.t(EX3_ANSWER, 9)
    answered = one(w.events, BeginAnswered)
    assert answered.started is True and answered.call_start == 3 and answered.start == 9
    assert not w.errors()


def test_example4_step() -> None:
    w = started_conversation()
    w.t(EX3_ANSWER)
    w.c(EX4_STEP, 40)
    w.t(EX4_ANSWER, 50)
    step = w.of(Request)[-1]
    assert (step.command, step.method, step.args, step.depth) == ("Call", "step", (), 0)
    answered = one(w.events, StepAnswered)
    assert (answered.number, answered.result, answered.call_start, answered.start) == (
        1,
        True,
        40,
        50,
    )


def test_example5_get_ids_of_names_then_invoke() -> None:
    w = started_conversation()
    w.t(EX5_GET_IDS)
    w.c(EX5_DISPID)
    w.t(EX5_INVOKE)
    w.c(EX5_VALUE)
    get_ids, invoke = w.of(Request)[-2:]
    assert (get_ids.command, get_ids.object_id, get_ids.object_name) == (
        "GetIDsOfNames",
        TASK_ID,
        "spooler_task",
    )
    assert get_ids.method == "id" and get_ids.args == ("id",) and get_ids.depth == 1
    dispids, value = w.of(Reply)[-2:]
    assert dispids.result == (10,) and dispids.hr == 0 and dispids.request == get_ids
    assert (invoke.command, invoke.dispid, invoke.flags, invoke.args) == ("Invoke", 10, 2, ())
    assert invoke.method == "id" and invoke.sender == "T"
    assert value.result == Variant(VT_I4, 123) and str(value.result) == "123"
    assert not w.errors()


def test_example6_log_invoke_reverses_arguments() -> None:
    w = started_conversation()
    at = w.t(EX6_LOG, 60)
    w.c(EX6_ANSWER)
    log = w.of(Request)[-1]
    assert (log.dispid, log.flags, log.method, log.object_name) == (14, 1, "log", "spooler_log")
    assert log.args == (Variant(VT_I4, 0), Variant(VT_BSTR, "[stdout] hello"))
    assert w.of(LogLine) == [LogLine(**at, method="log", level=0, text="[stdout] hello")]
    assert w.of(Reply)[-1].result == Variant(VT_EMPTY)
    w.t(EX6_LEVEL_PUT)
    put = w.of(Request)[-1]
    assert (put.dispid, put.flags, put.method) == (19, 4, "level")
    assert put.args == (Variant(VT_I4, 2),)  # the put's value is its last parameter
    assert put.named_args == ((-3, Variant(VT_I4, 2)),)
    assert len(w.of(LogLine)) == 1  # a level put is not a line


def test_log_with_its_text_alone_counts_the_text() -> None:
    """DESIGN "log_lines": every string passed to a line method. Found in review: `log`
    given only its text (no level) took the text for the level, and counted nothing; the
    plugin counted it."""
    w = started_conversation()
    log_id = struct.unpack(">Q", EX6_LOG[5:13])[0]
    at = w.t(enc.invoke(log_id, 14, enc.METHOD, [enc.bstr("only text")]), 60)
    assert w.of(LogLine) == [LogLine(**at, method="log", level=None, text="only text")]


@pytest.mark.parametrize(
    ("dispid", "args", "lines"),
    [
        (0, ["a", "b"], ["a", "b"]),  # info("a", "b")
        (0, [1, "z"], ["z"]),  # info(1, "z"): the string is a line, the number is none
        (14, ["x", "y"], ["x", "y"]),  # log("x", "y")
        (14, [0, "p", "q"], ["p", "q"]),  # log(0, "p", "q")
    ],
)
def test_every_string_passed_to_a_line_method_is_counted(
    dispid: int, args: list[int | str], lines: list[str]
) -> None:
    """DESIGN "log_lines": every string passed to a spooler_log line method. Found in
    review: the plugin counted every string argument, this decoder only the one it took
    for the text, so odd calls gave the engines different counts."""
    w = started_conversation()
    log_id = struct.unpack(">Q", EX6_LOG[5:13])[0]
    values = [enc.bstr(a) if isinstance(a, str) else enc.V(enc.VT_I4, a) for a in args]
    w.t(enc.invoke(log_id, dispid, enc.METHOD, values), 60)
    assert [line.text for line in w.of(LogLine)] == lines


def test_example7_scala_error_answer() -> None:
    w = Wire()
    w.c(EX2_CREATE)
    w.t(EX2_ANSWER_SCALA)
    w.c(enc.call(RMIS_SCALA_ID, "step"))
    at = w.t(EX7_E, 70)
    reply = w.of(Reply)[-1]
    assert len(EX7_E) == 89
    assert (reply.error_name, reply.error_code, reply.error_what) == (
        "COM",
        "COM-80020009",
        "COM-80020009 java.lang.RuntimeException: X",
    )
    assert reply.hr is None and reply.request.method == "step"
    assert w.of(ApiError) == [
        ApiError(
            **at,
            code="COM-80020009",
            text="COM-80020009 java.lang.RuntimeException: X",
            method="step",
        )
    ]
    step = one(w.events, StepAnswered)
    assert (step.number, step.result, step.exit_code) == (1, None, None)


def test_example7_failed_invoke_keep_alive_and_release() -> None:
    w = started_conversation()
    w.t(enc.invoke(TASK_ID, 26, enc.METHOD, [enc.bstr("E"), enc.bstr("x")]))
    at = w.c(EX7_INVOKE_FAILED, 80)
    failed = w.of(Reply)[-1]
    assert failed.hr == -0x7FFDFFF7  # 0x80020009 as int32
    assert failed.result == InvokeFailure(
        -1, ExcepInfo(0, 0, "", "SCHEDULER-203 ...", "", 0, -0x7FFDFFF7)
    )
    assert w.of(ApiError) == [
        ApiError(
            **at, code="COM-80020009", text="SCHEDULER-203 ...", method="Set_error_code_and_text"
        )
    ]
    w.t(EX3_ANSWER)
    at_k = w.t(EX7_KEEP_ALIVE, 90)  # not inside a call of C: still decoded (C++ T timing, §14.7)
    w.c(EX7_EMPTY_ANSWER)
    assert w.of(KeepAliveK) == [KeepAliveK(**at_k)]
    assert w.of(Request)[-1].command == "KeepAlive" and w.of(Reply)[-1].result is None
    at_r = w.c(EX7_RELEASE, 100)
    at_a = w.t(EX7_EMPTY_ANSWER, 110)
    assert w.of(Request)[-1].command == "Release" and w.of(Request)[-1].object_name == "RMIS"
    assert w.of(ReleaseAnswered) == [
        ReleaseAnswered(**at_a, object_id=RMIS_ID, call_start=at_r["start"])
    ]
    assert not w.errors()


# --- §13 examples: the test-side encoder writes the same bytes -------------------------


def test_encoder_reproduces_examples() -> None:
    assert enc.create_instance() == EX2_CREATE
    assert enc.answer_create_instance(enc.ObjRef(RMIS_ID, True, RMIS_TITLE)) == EX2_ANSWER
    scala_rmis = enc.ObjRef(RMIS_SCALA_ID, True, "RemoteModuleInstanceServer")
    assert enc.answer_create_instance(scala_rmis) == EX2_ANSWER_SCALA
    assert enc.call(RMIS_ID, "begin", BEGIN_OBJECTS.args()) == EX3_BEGIN
    assert enc.answer_value(enc.V(enc.VT_BOOL, True)) == EX3_ANSWER
    assert enc.call(RMIS_ID, "step") == EX4_STEP
    assert enc.get_ids_of_names(TASK_ID, "id") == EX5_GET_IDS
    assert enc.answer_dispids(10) == EX5_DISPID
    assert enc.invoke(TASK_ID, 10, enc.PROPERTYGET) == EX5_INVOKE
    assert enc.answer_value(enc.V(enc.VT_I4, 123)) == EX5_VALUE
    log_args = [enc.V(enc.VT_I4, 0), enc.bstr("[stdout] hello")]
    assert enc.invoke(LOG_ID, 14, enc.METHOD, log_args) == EX6_LOG
    assert enc.answer_value(enc.V(enc.VT_EMPTY)) == EX6_ANSWER
    assert enc.property_put(LOG_ID, 19, enc.V(enc.VT_I4, 2)) == EX6_LEVEL_PUT
    what = "COM-80020009 java.lang.RuntimeException: X"
    assert enc.answer_error("COM", "COM-80020009", what) == EX7_E
    assert enc.answer_invoke_failed(0x80020009, "", "SCHEDULER-203 ...") == EX7_INVOKE_FAILED
    assert enc.keep_alive() == EX7_KEEP_ALIVE
    assert enc.answer_empty() == EX7_EMPTY_ANSWER
    assert enc.release(RMIS_ID) == EX7_RELEASE


# --- whole conversations ---------------------------------------------------------------

CONSTRUCT_PARAMS = [
    "language=java",
    "com_class=",
    "filename=",
    "java_class=com.example.JobA",
    "java_options=",
    "java_class_path=",
    'script=<source><source_part linenr="1">x=1\ny=2</source_part></source>',
    "job=/folder/job_a",
    "task_id=42",
    "environment=<environment/>",
]


def test_cpp_api_task_conversation() -> None:
    """§6.1 API job against a C++ task server, every message cut into 5-byte pieces."""
    w = Wire(piece=5)
    e = enc
    w.c(e.create_instance(), 100)
    w.t(e.answer_create_instance(e.ObjRef(RMIS_ID, True, RMIS_TITLE)), 200)
    construct = w.c(e.call(RMIS_ID, "construct", e.construct_args(CONSTRUCT_PARAMS)), 300)
    w.t(e.answer_value(e.V(e.VT_BOOL, True)), 400)
    begin = w.c(e.call(RMIS_ID, "begin", BEGIN_OBJECTS.args()), 500)
    w.t(e.get_ids_of_names(TASK_ID, "id"), 510)
    w.c(e.answer_dispids(10), 520)
    w.t(e.invoke(TASK_ID, 10, e.PROPERTYGET), 530)
    w.c(e.answer_value(e.V(e.VT_I4, 4711)), 540)
    text = "[stdout] line one\n\n   \t\n[stdout] line two"
    log1 = w.t(e.invoke(LOG_ID, 14, e.METHOD, [e.V(e.VT_I4, 0), e.bstr(text)]), 550)
    w.c(e.answer_value(e.V(e.VT_EMPTY)), 560)
    w.t(e.get_ids_of_names(LOG_ID, "info"), 570)
    w.c(e.answer_dispids(0), 580)
    info = w.t(e.invoke(LOG_ID, 0, e.METHOD, [e.bstr("spooler_init done")]), 590)
    w.c(e.answer_value(e.V(e.VT_EMPTY)), 600)
    begun = w.t(e.answer_value(e.V(e.VT_BOOL, True)), 700)
    opened = w.c(e.call(RMIS_ID, "call", [e.bstr("spooler_open()Z")]), 800)
    w.t(e.answer_value(e.V(e.VT_BOOL, True)), 810)
    step1 = w.c(e.call(RMIS_ID, "step"), 900)
    keep = w.t(e.keep_alive(), 950)
    w.c(e.answer_empty(), 960)
    w.t(e.invoke(TASK_ID, 4, e.PROPERTYGET), 970)
    varset = e.ObjRef(VARSET_ID, True, NS + "Com_variable_set")
    w.c(e.answer_value(e.V(e.VT_DISPATCH, varset)), 980)
    w.t(e.invoke(VARSET_ID, 0, e.PROPERTYGET, [e.bstr("x")]), 985)
    w.c(e.answer_value(e.bstr("1")), 990)
    step1_done = w.t(e.answer_value(e.V(e.VT_BOOL, True)), 1000)
    step2 = w.c(e.call(RMIS_ID, "step"), 1100)
    step2_done = w.t(e.answer_value(e.V(e.VT_BOOL, False)), 1200)
    end = w.c(e.call(RMIS_ID, "end", [e.V(e.VT_BOOL, True)]), 1300)
    w.t(e.get_ids_of_names(TASK_ID, "exit_code"), 1310)
    w.c(e.answer_dispids(30), 1320)
    exit_put = w.t(e.property_put(TASK_ID, 30, e.V(e.VT_I4, 7)), 1330)
    w.c(e.answer_value(e.V(e.VT_EMPTY)), 1340)
    w.t(e.answer_value(e.V(e.VT_EMPTY)), 1400)
    success = w.c(e.call(RMIS_ID, "call", [e.bstr("?spooler_on_success()V")]), 1500)
    w.t(e.answer_value(e.V(e.VT_EMPTY)), 1510)
    exit_ = w.c(e.call(RMIS_ID, "call", [e.bstr("spooler_exit()V")]), 1600)
    w.t(e.answer_value(e.V(e.VT_EMPTY)), 1610)
    release = w.c(e.release(RMIS_ID), 1700)
    flush = w.t(e.invoke(LOG_ID, 14, e.METHOD, [e.V(e.VT_I4, 1), e.bstr("final flush\n")]), 1710)
    w.c(e.answer_value(e.V(e.VT_EMPTY)), 1715)
    w.t(e.release(VARSET_ID), 1720)
    w.c(e.answer_empty(), 1730)
    w.t(e.release(LOG_ID), 1740)
    w.c(e.answer_empty(), 1750)
    released = w.t(e.answer_empty(), 1800)
    w.events += w.decoder.close()

    assert not w.errors()
    assert w.of(*LIFECYCLE) == [
        LifecycleCall(**construct, name="construct"),
        Construct(
            **construct,
            params=tuple(tuple(p.split("=", 1)) for p in CONSTRUCT_PARAMS),
            job="/folder/job_a",
            task_id=42,
            language="java",
        ),
        LifecycleCall(**begin, name="begin"),
        LogLine(**log1, method="log", level=0, text="[stdout] line one"),
        LogLine(**log1, method="log", level=0, text="[stdout] line two"),
        LogLine(**info, method="info", level=0, text="spooler_init done"),
        BeginAnswered(**begun, started=True, call_start=begin["start"]),
        LifecycleCall(**opened, name="spooler_open"),
        LifecycleCall(**step1, name="step"),
        KeepAliveK(**keep),
        StepAnswered(
            **step1_done,
            number=1,
            call_start=step1["start"],
            result=True,
            exit_code=None,
            signal=None,
            state_text=None,
        ),
        LifecycleCall(**step2, name="step"),
        StepAnswered(
            **step2_done,
            number=2,
            call_start=step2["start"],
            result=False,
            exit_code=None,
            signal=None,
            state_text=None,
        ),
        LifecycleCall(**end, name="end"),
        ExitCodePut(**exit_put, exit_code=7),
        LifecycleCall(**success, name="spooler_on_success"),
        LifecycleCall(**exit_, name="spooler_exit"),
        LogLine(**flush, method="log", level=1, text="final flush"),
        ReleaseAnswered(**released, object_id=RMIS_ID, call_start=release["start"]),
    ]
    # the 5-byte pieces: a frame starts at its first piece and ends at its last one
    assert construct["end"] > construct["start"] and begun["end"] == begun["start"] + 2

    requests = w.of(Request)
    by_method = {(r.object_name, r.method): r for r in requests}
    assert by_method["Variable_set", "value"].args == (Variant(VT_BSTR, "x"),)
    assert by_method["spooler_task", "params"].depth == 1
    assert by_method["spooler_task", "exit_code"].depth == 1
    nested_releases = [r for r in requests if r.command == "Release" and r.sender == "T"]
    assert [(r.object_name, r.depth) for r in nested_releases] == [
        ("Variable_set", 1),
        ("spooler_log", 1),
    ]
    params_answer = next(r for r in w.of(Reply) if r.request.method == "params")
    assert str(params_answer.result) == "obj 327b23c6.00000005 (Variable_set)"
    assert all(r.request is not None for r in w.of(Reply))


def scala_shell_conversation() -> list[tuple[int, bytes]]:
    """§6.8: Universal Agent task server running a shell job (§6.1: 0, 1, 2, 4, 9)."""
    e = enc
    params = ["language=shell", "script=<source/>", "job=/folder/job_a", "task_id=42"]
    scala_array = e.V(
        e.VT_ARRAY | e.VT_VARIANT, [e.V(e.VT_R8, "1.0"), e.bstr("a"), e.V(e.VT_I8, 2**40)], 0x0880
    )
    result = e.process_result(3, success=False, state_text="hello wörld", scala=True)
    return [
        (C2T, e.create_instance()),
        (
            T2C,
            e.answer_create_instance(e.ObjRef(RMIS_SCALA_ID, True, "RemoteModuleInstanceServer")),
        ),
        (C2T, e.call(RMIS_SCALA_ID, "construct", e.construct_args(params))),
        (T2C, e.answer_value(e.V(e.VT_EMPTY))),
        (C2T, e.call(RMIS_SCALA_ID, "begin", BEGIN_OBJECTS.args())),
        (T2C, e.property_put(LOG_ID, 19, e.V(e.VT_I4, 0))),
        (C2T, e.answer_value(e.V(e.VT_EMPTY))),
        (T2C, e.invoke(TASK_ID, 35, e.PROPERTYGET)),
        (C2T, e.answer_value(e.bstr("<sos.spooler.variable_set/>"))),
        (T2C, e.invoke(JOB_ID, 10, e.METHOD, [scala_array])),
        (C2T, e.answer_value(e.V(e.VT_EMPTY))),
        (T2C, e.answer_value(e.V(e.VT_BOOL, True))),
        (C2T, e.call(RMIS_SCALA_ID, "step")),
        (T2C, e.keep_alive()),
        (C2T, e.answer_empty()),
        (
            T2C,
            e.invoke(
                LOG_ID, 14, e.METHOD, [e.V(e.VT_I4, 0), e.bstr("[stdout] hello\n[stdout] wörld\n")]
            ),
        ),
        (C2T, e.answer_value(e.V(e.VT_EMPTY))),
        (T2C, e.property_put(TASK_ID, 36, e.bstr("<sos.spooler.variable_set/>"))),
        (C2T, e.answer_value(e.V(e.VT_EMPTY))),
        (T2C, e.answer_value(e.bstr(result))),
        (T2C, e.keep_alive()),  # a late K right behind the answer, in the same direction
        (C2T, e.answer_empty()),
        (C2T, e.get_ids_of_names(RMIS_SCALA_ID, "step")),
        (T2C, e.answer_error("COM", "COM-80020009", "COM-80020009 java.lang.RuntimeException: X")),
        (C2T, e.release(RMIS_SCALA_ID)),
        (T2C, e.answer_empty()),
    ]


def test_scala_shell_task_conversation() -> None:
    w = Wire()
    at = [
        w.send(direction, data, 1000 * i)
        for i, (direction, data) in enumerate(scala_shell_conversation())
    ]
    assert not w.errors()
    assert w.of(*LIFECYCLE) == [
        LifecycleCall(**at[2], name="construct"),
        Construct(
            **at[2],
            params=(
                ("language", "shell"),
                ("script", "<source/>"),
                ("job", "/folder/job_a"),
                ("task_id", "42"),
            ),
            job="/folder/job_a",
            task_id=42,
            language="shell",
        ),
        LifecycleCall(**at[4], name="begin"),
        BeginAnswered(**at[11], started=True, call_start=at[4]["start"]),
        LifecycleCall(**at[12], name="step"),
        KeepAliveK(**at[13]),
        LogLine(**at[15], method="log", level=0, text="[stdout] hello"),
        LogLine(**at[15], method="log", level=0, text="[stdout] wörld"),
        StepAnswered(
            **at[19],
            number=1,
            call_start=at[12]["start"],
            result=False,
            exit_code=3,
            signal=None,
            state_text="hello wörld",
        ),
        KeepAliveK(**at[20]),
        ApiError(
            **at[23],
            code="COM-80020009",
            text="COM-80020009 java.lang.RuntimeException: X",
            method="step",
        ),
        ReleaseAnswered(**at[25], object_id=RMIS_SCALA_ID, call_start=at[24]["start"]),
    ]
    construct_reply = w.of(Reply)[1]
    assert construct_reply.result == Variant(VT_EMPTY)
    array_call = next(r for r in w.of(Request) if r.object_name == "spooler_job")
    (array,) = array_call.args
    assert array.value.features == 0x0880
    assert array.value.elements[0] == Variant(VT_R8, Double("1.0", 1.0))
    assert array.value.elements[0].value.value == 1.0
    assert str(array) == '[1.0, "a", 1099511627776]'
    assert [r.method for r in w.of(Request) if r.object_name == "spooler_task"] == [
        "Params_xml",
        "Order_params_xml",
    ]


def test_cpp_shell_step_result_with_prolog_and_signal() -> None:
    w = started_conversation()
    w.t(EX3_ANSWER)
    w.c(EX4_STEP)
    xml = enc.process_result(0, success=True, signal=9, state_text='first "line" <x>')
    assert xml.startswith("<?xml")
    w.t(enc.answer_value(enc.bstr(xml)))
    step = one(w.events, StepAnswered)
    assert (step.result, step.exit_code, step.signal, step.state_text) == (
        True,
        0,
        9,
        'first "line" <x>',
    )
    assert not w.errors()


def test_malformed_process_result_is_an_error_but_the_step_still_counts() -> None:
    w = started_conversation()
    w.t(EX3_ANSWER)
    w.c(EX4_STEP)
    at = w.t(enc.answer_value(enc.bstr('<process.result exit_code="0"')))
    step = one(w.events, StepAnswered)
    assert (step.number, step.result, step.exit_code, step.signal, step.state_text) == (
        1,
        None,
        None,
        None,
        None,
    )
    (error,) = w.errors()
    assert error.offset == at["offset"] and "process.result" in error.reason


def test_mid_stream_pickup_infers_sides_and_rmis() -> None:
    """No CreateInstance, no controller_direction: call by name is sent by C (§5.2)."""
    w = Wire(controller_direction=None)
    w.t(EX7_EMPTY_ANSWER)  # the answer to something before the capture
    w.c(EX4_STEP)
    w.t(EX5_GET_IDS)
    w.c(EX5_DISPID)
    w.t(EX6_LOG)  # spooler_log known by its log(level, text) signature (§6.5)
    w.c(EX6_ANSWER)
    w.t(EX4_ANSWER)
    assert [e.reason for e in w.errors()] == ["answer with no open request"]
    assert [r.sender for r in w.of(Reply)] == ["?", "C", "C", "T"]
    assert w.of(Request)[0].object_name == "RMIS"
    assert [e.name for e in w.of(LifecycleCall)] == ["step"]
    assert [e.text for e in w.of(LogLine)] == ["[stdout] hello"]
    assert one(w.events, StepAnswered).result is True


def test_mid_stream_pickup_during_the_last_step_still_ends_with_the_rmis_release() -> None:
    """Picked up during a shell task's only step: no call to the RMIS is left to name it,
    but the controller's Release names it (C releases nothing else, §5.2), and its answer
    is the normal end (DESIGN Status 6). The task server's own Releases name nothing."""
    w = Wire(controller_direction=None)
    w.t(EX6_LOG)  # T calls spooler_log: T is the task server
    w.c(EX6_ANSWER)
    w.t(enc.release(0x327B23C6_00000009))  # C++ T releasing a proxy of C's object
    w.c(enc.answer_empty())
    w.t(EX7_EMPTY_ANSWER)  # the step's answer, its call not captured
    w.c(EX7_RELEASE)
    answer = w.t(EX7_EMPTY_ANSWER)
    (released,) = w.of(ReleaseAnswered)
    assert (released.object_id, released.start) == (RMIS_ID, answer["start"])
    assert [r.object_name for r in w.of(Request) if r.command == "Release"] == [None, "RMIS"]


def test_keep_alive_first_means_the_sender_is_the_task_server() -> None:
    w = Wire(controller_direction=None)
    w.send(C2T, EX7_KEEP_ALIVE, 1)  # directions swapped: the decoder must not care
    w.send(T2C, EX7_EMPTY_ANSWER, 2)
    assert [(e.sender, e.command) for e in w.of(Request)] == [("T", "KeepAlive")]
    assert w.of(Reply)[0].sender == "C"


def test_create_instance_sender_overrides_controller_direction() -> None:
    w = Wire(controller_direction=T2C)
    w.c(EX2_CREATE)
    w.t(EX2_ANSWER)
    assert [e.sender for e in w.events] == ["C", "T"]


def test_call_by_name_on_log_counts_lines_and_exit_code_by_learned_name() -> None:
    w = started_conversation()
    w.t(enc.call(LOG_ID, "warn", [enc.bstr("careful\nreally")]))
    w.c(EX6_ANSWER)
    assert [(e.method, e.level, e.text) for e in w.of(LogLine)] == [
        ("warn", 1, "careful"),
        ("warn", 1, "really"),
    ]
    # a Windows build with other DISPIDs: the GetIDsOfNames answer wins over Appendix A
    w.t(enc.get_ids_of_names(TASK_ID, "exit_code"))
    w.c(enc.answer_dispids(77))
    w.t(enc.property_put(TASK_ID, 77, enc.V(enc.VT_I4, 3)))
    assert [e.exit_code for e in w.of(ExitCodePut)] == [3]
    assert w.of(Request)[-1].method == "exit_code"


# --- hypothesis: values, nesting, segmentation ------------------------------------------

LATIN1 = st.text(alphabet=st.characters(min_codepoint=0, max_codepoint=255), max_size=20)
CLSIDS = st.sampled_from(
    [enc.NULL_GUID, enc.CLSID_COM_LOG_PROXY, "0123abcd-4567-89ef-0123-456789abcdef"]
)
DOUBLE_TEXTS = st.one_of(
    st.floats(allow_nan=False, allow_infinity=False).map(enc.cpp_double),
    st.floats(allow_nan=False, allow_infinity=False).map(repr),
    st.sampled_from(["1.0", "1.23456789012E7", "-0.0", "1.0000000000000000e+000"]),
)
SCALARS = st.one_of(
    st.sampled_from([enc.V(enc.VT_EMPTY), enc.V(enc.VT_NULL)]),
    st.integers(-(2**15), 2**15 - 1).map(lambda v: enc.V(enc.VT_I2, v)),
    # jsencode.i16 packs signed: VT_UI2 above 0x7FFF goes in as its int16 bits
    st.integers(-(2**15), 2**15 - 1).map(lambda v: enc.V(enc.VT_UI2, v)),
    st.integers(-(2**31), 2**31 - 1).flatmap(
        lambda v: st.sampled_from([enc.V(vt, v) for vt in (enc.VT_I4, enc.VT_INT, enc.VT_ERROR)])
    ),
    st.integers(0, 2**32 - 1).flatmap(
        lambda v: st.sampled_from([enc.V(enc.VT_UI4, v), enc.V(enc.VT_UINT, v)])
    ),
    st.integers(-(2**63), 2**63 - 1).flatmap(
        lambda v: st.sampled_from([enc.V(enc.VT_I8, v), enc.V(enc.VT_CY, v)])
    ),
    st.integers(0, 2**64 - 1).map(lambda v: enc.V(enc.VT_UI8, v)),
    st.integers(-128, 127).map(lambda v: enc.V(enc.VT_I1, v)),
    st.integers(0, 255).map(lambda v: enc.V(enc.VT_UI1, v)),
    st.booleans().map(lambda v: enc.V(enc.VT_BOOL, v)),
    st.tuples(st.sampled_from([enc.VT_R4, enc.VT_R8, enc.VT_DATE]), DOUBLE_TEXTS).map(
        lambda t: enc.V(*t)
    ),
    LATIN1.map(enc.bstr),
    st.builds(
        lambda vt, oid: enc.V(vt, enc.ObjRef(oid)),
        st.sampled_from([enc.VT_DISPATCH, enc.VT_UNKNOWN]),
        st.integers(0, 2**64 - 1),
    ),
)


def _compound(children: st.SearchStrategy[enc.V]) -> st.SearchStrategy[enc.V]:
    features = st.sampled_from([0x0810, 0x0880, 0x0110, 0x0090, 0x2810])
    return st.one_of(
        st.builds(
            lambda items, f: enc.V(enc.VT_ARRAY | enc.VT_VARIANT, items, f),
            st.lists(children, max_size=4),
            features,
        ),
        st.builds(
            lambda items, f: enc.V(enc.VT_ARRAY | enc.VT_BSTR, items, f),
            st.lists(LATIN1, max_size=4),
            features,
        ),
        st.builds(
            lambda items, f: enc.V(enc.VT_ARRAY | enc.VT_UI1, items, f),
            st.binary(max_size=8),
            features,
        ),
        st.builds(
            lambda vt, oid, title, clsid, props: enc.V(
                vt, enc.ObjRef(oid, True, title, clsid, props)
            ),
            st.sampled_from([enc.VT_DISPATCH, enc.VT_UNKNOWN]),
            st.integers(1, 2**64 - 1),
            LATIN1,
            CLSIDS,
            st.lists(st.tuples(LATIN1, children), max_size=3).map(tuple),
        ),
    )


VARIANTS = st.recursive(SCALARS, _compound, max_leaves=12)


def expected(v: enc.V) -> Variant:
    """What the decoder must make of the encoder's VARIANT."""
    if v.vt & enc.VT_ARRAY:
        elem_vt = v.vt & ~enc.VT_ARRAY
        if elem_vt == enc.VT_UI1:
            elements: Any = bytes(v.value)
        elif elem_vt == enc.VT_BSTR:
            elements = tuple(v.value)
        else:
            elements = tuple(expected(e) for e in v.value)
        return Variant(v.vt, SafeArray(v.features, elem_vt, elements))
    if v.vt in (enc.VT_R4, enc.VT_R8, enc.VT_DATE):
        return Variant(v.vt, Double(v.value, float(v.value)))
    if v.vt in (enc.VT_DISPATCH, enc.VT_UNKNOWN):
        ref = v.value
        if not ref.is_new or ref.id == 0:
            return Variant(v.vt, ObjRef(ref.id, False))
        props = tuple((n, expected(p)) for n, p in ref.properties)
        return Variant(v.vt, ObjRef(ref.id, True, ref.title, ref.clsid, props))
    if v.vt == enc.VT_UI2:
        return Variant(v.vt, v.value & 0xFFFF)
    return Variant(v.vt, v.value)


def doubles_of(value: Any) -> list[Double]:
    if isinstance(value, Variant):
        return doubles_of(value.value)
    if isinstance(value, Double):
        return [value]
    if isinstance(value, SafeArray) and not isinstance(value.elements, bytes):
        return [d for e in value.elements for d in doubles_of(e)]
    if isinstance(value, ObjRef):
        return [d for _, p in value.properties for d in doubles_of(p)]
    return []


@settings(max_examples=150, deadline=None)
@given(st.lists(VARIANTS, max_size=3), VARIANTS)
def test_variant_trees_round_trip(args: list[enc.V], result: enc.V) -> None:
    w = started_conversation()
    w.t(enc.invoke(SPOOLER_ID, 5, enc.METHOD, args))
    w.c(enc.answer_value(result))
    request, reply = w.of(Request)[-1], w.of(Reply)[-1]
    assert not w.errors()
    assert request.args == tuple(expected(a) for a in args)
    assert reply.result == expected(result)
    for d in doubles_of(request.args) + doubles_of(reply.result):
        assert d.value == float(d.text)
    str(request.args), str(reply.result)  # every value has a readable form


@st.composite
def call_trees(draw: st.DrawFn, depth: int = 0) -> list[Any]:
    """[kind, children]: a request and the requests nested inside it (callbacks)."""
    n = draw(st.integers(0, 3 if depth < 4 else 0))
    return [
        draw(st.sampled_from(["call", "invoke", "keep"])),
        [draw(call_trees(depth + 1)) for _ in range(n)],
    ]


@settings(max_examples=100, deadline=None)
@given(st.lists(call_trees(), min_size=1, max_size=3))
def test_random_callback_nesting_pairs_lifo(trees: list[Any]) -> None:
    """C's calls (depth 0) with callbacks nested arbitrarily in both directions (§5.2)."""
    w = started_conversation()
    w.t(EX3_ANSWER)
    counter = iter(range(1, 10**6))

    def emit(tree: list[Any], sender: int, depth: int) -> None:
        kind, children = tree
        tag = next(counter)
        if sender == C2T:  # C calls the RMIS; T calls back into C's objects
            w.c(enc.call(RMIS_ID, "name_exists", [enc.V(enc.VT_I4, tag)]))
        elif kind == "keep" and not children:
            w.t(enc.keep_alive())
        else:
            w.t(enc.invoke(TASK_ID, 10, enc.METHOD, [enc.V(enc.VT_I4, tag)]))
        request = w.of(Request)[-1]
        assert request.depth == depth
        for child in children:
            emit(child, 1 - sender, depth + 1)
        answer = (
            enc.answer_empty()
            if request.command == "KeepAlive"
            else enc.answer_value(enc.V(enc.VT_I4, tag))
        )
        w.send(1 - sender, answer, 0)
        reply = w.of(Reply)[-1]
        assert reply.request is request
        assert reply.result is None or reply.result == Variant(VT_I4, tag)

    for tree in trees:
        emit(tree, C2T, 0)
    assert not w.errors()
    assert not w.decoder._pending


def cpp_api_conversation() -> list[tuple[int, bytes]]:
    e = enc
    return [
        (C2T, EX2_CREATE),
        (T2C, EX2_ANSWER),
        (C2T, e.call(RMIS_ID, "construct", e.construct_args(CONSTRUCT_PARAMS))),
        (T2C, e.answer_value(e.V(e.VT_BOOL, True))),
        (C2T, EX3_BEGIN),
        (T2C, EX5_GET_IDS),
        (C2T, EX5_DISPID),
        (T2C, EX5_INVOKE),
        (C2T, EX5_VALUE),
        (T2C, EX6_LOG),
        (C2T, EX6_ANSWER),
        (T2C, EX3_ANSWER),
        (C2T, EX4_STEP),
        (T2C, EX7_KEEP_ALIVE),
        (C2T, EX7_EMPTY_ANSWER),
        (T2C, e.property_put(TASK_ID, 30, e.V(e.VT_I4, 1))),
        (C2T, EX6_ANSWER),
        (T2C, e.invoke(TASK_ID, 26, e.METHOD, [e.bstr("E"), e.bstr("x")])),
        (C2T, EX7_INVOKE_FAILED),
        (T2C, EX4_ANSWER),
        (C2T, EX7_RELEASE),
        (T2C, e.release(LOG_ID)),
        (C2T, EX7_EMPTY_ANSWER),
        (T2C, EX7_EMPTY_ANSWER),
    ]


def retimed(event: Any, piece_ts: Any, last: dict[int, int]) -> Any:
    """The event as it must come out when the frame starting at global byte `event.start`
    (baseline ts = that position) was fed in pieces whose ts is their global position."""
    changes: dict[str, Any] = {"start": piece_ts(event.start), "end": piece_ts(last[event.start])}
    if hasattr(event, "call_start"):
        changes["call_start"] = piece_ts(event.call_start)
    if isinstance(event, Reply) and event.request is not None:
        changes["request"] = retimed(event.request, piece_ts, last)
    return dataclasses.replace(event, **changes)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.sampled_from(["cpp", "scala"]), st.data())
def test_any_segmentation_gives_the_same_events(which: str, data: st.DataObject) -> None:
    messages = cpp_api_conversation() if which == "cpp" else scala_shell_conversation()
    # Baseline: one piece per frame, ts = the frame's global position in the conversation.
    baseline = Wire()
    last: dict[int, int] = {}
    position = 0
    for direction, frame in messages:
        baseline.send(direction, frame, position)
        last[position] = position + len(frame) - 1
        position += len(frame)
    # Consecutive frames of one direction form one chunk that may be cut anywhere
    # (coalesced or split segments); chunks keep the conversation's order.
    chunks: list[tuple[int, bytearray, int]] = []
    position = 0
    for direction, frame in messages:
        if chunks and chunks[-1][0] == direction:
            chunks[-1][1].extend(frame)
        else:
            chunks.append((direction, bytearray(frame), position))
        position += len(frame)
    segmented = Wire()
    starts: list[int] = []
    for direction, chunk, chunk_start in chunks:
        cuts = sorted(
            data.draw(st.sets(st.integers(1, len(chunk) - 1), max_size=6)) if len(chunk) > 1 else []
        )
        bounds = [0, *cuts, len(chunk)]
        for a, b in itertools.pairwise(bounds):
            starts.append(chunk_start + a)
            offset = segmented.next[direction]
            segmented.events += segmented.decoder.feed(
                direction, offset, bytes(chunk[a:b]), chunk_start + a
            )
            segmented.next[direction] += b - a

    def piece_ts(g: int) -> int:
        return starts[bisect.bisect_right(starts, g) - 1]

    assert segmented.events == [retimed(e, piece_ts, last) for e in baseline.events]
    assert len(baseline.of(*LIFECYCLE)) >= 8


@settings(max_examples=200, deadline=None)
@given(st.data())
def test_garbage_and_mutations_never_raise(data: st.DataObject) -> None:
    stream = b"".join(frame for _, frame in cpp_api_conversation())
    if data.draw(st.booleans()):
        blob = bytearray(stream)
        for _ in range(data.draw(st.integers(1, 8))):
            blob[data.draw(st.integers(0, len(blob) - 1))] = data.draw(st.integers(0, 255))
        blob = bytes(blob)
    else:
        blob = data.draw(st.binary(max_size=300))
    decoder = ObjServerDecoder(CONN, data.draw(st.sampled_from([None, 0, 1])))
    offsets = [0, 0]
    pos = 0
    events: list[Event] = []
    while pos < len(blob):
        size = data.draw(st.integers(1, 64))
        direction = data.draw(st.integers(0, 1))
        events += decoder.feed(direction, offsets[direction], blob[pos : pos + size], pos)
        offsets[direction] += len(blob[pos : pos + size])
        pos += size
        if data.draw(st.integers(0, 20)) == 0:
            gap = data.draw(st.integers(0, 100))
            events += decoder.gap(direction, offsets[direction], gap, pos)
            offsets[direction] += gap
    events += decoder.close()
    assert all(isinstance(e, Event) for e in events)
    assert not [e for e in events if isinstance(e, DecodeError) and "internal" in e.reason]
    for e in events:
        str(getattr(e, "args", "")), str(getattr(e, "result", ""))


# --- malformed input -------------------------------------------------------------------


def assert_error(error: Event, offset: int, *words: str) -> None:
    assert isinstance(error, DecodeError)
    assert error.conn == CONN and error.channel == "api" and error.offset == offset
    for word in words:
        assert word in error.reason, error.reason


def test_frame_length_near_2_31_stops_that_direction_only() -> None:
    w = Wire()
    w.c(EX2_CREATE)
    at = w.t(struct.pack(">I", 0x7FFFFFF0) + b"A" * 100, 5)
    (error,) = w.errors()
    assert_error(error, at["offset"], "frame length 2147483632", "exceeds")
    w.t(EX2_ANSWER)  # that direction's framing is gone: nothing more from it
    assert len(w.events) == 2
    w.c(EX3_BEGIN)  # the other direction still decodes
    assert w.of(Request)[-1].method == "begin"
    other = Wire()  # and so does any other connection
    other.c(EX2_CREATE)
    other.t(EX2_ANSWER)
    assert not other.errors() and len(other.of(Reply)) == 1


def test_frame_length_zero_is_an_error() -> None:
    w = Wire()
    w.c(bytes(4) + EX2_CREATE)
    assert_error(w.errors()[0], 0, "frame length 0")


def test_unknown_message_class_then_next_frame_decodes() -> None:
    w = Wire()
    w.c(EX2_CREATE)
    at = w.t(enc.frame(b"X123"))
    w.t(EX2_ANSWER)
    (error,) = w.errors()
    assert_error(error, at["offset"], "unknown message class 0x58")
    assert w.of(Reply)[0].result.id == RMIS_ID


def test_message_class_n_is_an_error() -> None:
    w = Wire()
    w.t(enc.frame(b"N"))
    assert_error(w.errors()[0], 0, "'N'")


def test_truncated_variant_keeps_the_request_and_its_pairing() -> None:
    w = started_conversation()
    head = b"O" + struct.pack(">Q", LOG_ID) + b"I" + struct.pack(">i", 14) + bytes(16)
    body = (
        struct.pack(">iiii", 0, 1, 2, 0)
        + struct.pack(">i", VT_BSTR)
        + struct.pack(">i", 10)
        + b"abc"
    )
    at = w.t(enc.frame(head + body))
    w.c(EX6_ANSWER)
    w.t(EX3_ANSWER)
    (error,) = w.errors()
    assert_error(error, at["offset"], "truncated", "VT_BSTR value")
    broken = w.of(Request)[-1]
    assert (broken.command, broken.object_name, broken.dispid, broken.args) == (
        "Invoke",
        "spooler_log",
        14,
        (),
    )
    assert w.of(Reply)[-2].request is broken  # the answer still pairs with it
    assert one(w.events, BeginAnswered).started is True
    assert not w.of(LogLine)


def test_safearray_claiming_2_31_elements_fails_at_once() -> None:
    w = started_conversation()
    array = struct.pack(
        ">IhHiii", VT_ARRAY | VT_VARIANT, 1, 0x0810, 2**31 - 1, 0, VT_VARIANT
    ) + bytes(10)
    t0 = time.perf_counter()
    at = w.t(
        enc.obj_request(
            TASK_ID,
            b"I",
            struct.pack(">i", 5) + bytes(16) + struct.pack(">iiii", 0, 1, 1, 0) + array,
        )
    )
    assert time.perf_counter() - t0 < 0.5
    assert_error(w.errors()[0], at["offset"], "claims 2147483647 elements")


def test_thousand_deep_nested_arrays_fail_cleanly() -> None:
    w = started_conversation()
    level = struct.pack(">IhHiii", VT_ARRAY | VT_VARIANT, 1, 0x0810, 1, 0, VT_VARIANT)
    value = level * 1000 + struct.pack(">I", VT_EMPTY)
    at = w.t(enc.frame(b"A" + bytes(4) + value))  # also answers begin (an A to a call)
    (error,) = w.errors()
    assert_error(error, at["offset"], "nested deeper than 64")
    assert one(w.events, BeginAnswered).started is None
    w.c(EX4_STEP)
    w.t(EX4_ANSWER)
    assert one(w.events, StepAnswered).result is True


def test_answer_without_open_request_then_conversation_decodes() -> None:
    w = Wire()
    at = w.t(EX4_ANSWER)
    w.c(EX2_CREATE)
    w.t(EX2_ANSWER)
    (error,) = w.errors()
    assert_error(error, at["offset"], "answer with no open request")
    assert w.of(Reply)[0].request is None
    assert w.of(Reply)[1].result.name == "RMIS"


def test_answer_without_request_shows_what_its_bytes_tell() -> None:
    """§5.10: the layout depends on the request. Without it (not captured), a VARIANT that
    fills the body is the answer to a call or an Invoke; a failed HRESULT is an Invoke's,
    with argErr and EXCEPINFO; DISPIDs stay undecoded. Each is still flagged unpaired."""
    w = Wire(controller_direction=None)
    w.t(enc.answer_value(enc.V(VT_BOOL, True)))
    w.c(enc.answer_dispids(30))  # DISPID 30 reads as VARIANT type 30 (VT_LPSTR)
    w.c(enc.answer_invoke_failed(0x80020009, "src", "it failed"))
    w.t(EX7_EMPTY_ANSWER)
    replies = w.of(Reply)
    assert [(r.request, r.hr) for r in replies] == [
        (None, 0),
        (None, 0),
        (None, -0x7FFDFFF7),
        (None, None),  # the answer to a Release or a keep-alive: nothing after `A`
    ]
    assert replies[0].result == Variant(VT_BOOL, True)
    assert replies[1].result is None
    failure = replies[2].result
    assert isinstance(failure, InvokeFailure) and failure.excepinfo.description == "it failed"
    assert [e.code for e in w.of(ApiError)] == ["COM-80020009"]
    assert [e.reason for e in w.errors()] == ["answer with no open request"] * 4


def test_object_returned_by_an_answer_without_request_is_named_by_its_class() -> None:
    """§12: an objref with is_new=1 is an export of its sender whatever it answers: the
    task picked up after `spooler_task.params` still calls a Variable_set."""
    ref = enc.ObjRef(0x1234_00000005, True, "sos::scheduler::com_objects::Com_variable_set")
    w = Wire(controller_direction=None)
    w.c(enc.answer_value(enc.V(VT_DISPATCH, ref)))
    w.t(enc.get_ids_of_names(ref.id, "value"))
    assert w.of(Reply)[0].result.value.name == "Variable_set"
    assert w.of(Request)[0].object_name == "Variable_set"


def test_answer_from_the_wrong_side() -> None:
    w = Wire()
    w.c(EX2_CREATE)
    at = w.c(EX2_ANSWER)  # only C's own request is open: what it answers was not captured
    assert_error(w.errors()[0], at["offset"], "answer with no open request")
    w.t(EX2_ANSWER)  # the open CreateInstance is still there
    assert w.of(Reply)[-1].request.command == "CreateInstance"


def test_an_answer_pairs_past_a_request_its_sender_sent_meanwhile() -> None:
    """§5.2: an answer answers the most recent open request of the *other* side. A K sent
    just after the step's answer (one segment, §5.1) reaches the controller after it sent
    its next call: it answers the K while it waits, and the Release is answered after."""
    w = started_conversation()
    w.t(EX3_ANSWER)
    w.c(EX4_STEP)
    w.t(EX4_ANSWER + EX7_KEEP_ALIVE)
    w.c(EX7_RELEASE)
    w.c(EX7_EMPTY_ANSWER)
    at = w.t(EX7_EMPTY_ANSWER)
    assert not w.errors()
    replies = [(r.sender, r.request.command) for r in w.of(Reply)[-2:]]
    assert replies == [("C", "KeepAlive"), ("T", "Release")]
    assert one(w.events, ReleaseAnswered).start == at["start"]
    w.t(EX7_KEEP_ALIVE)
    assert w.of(Request)[-1].depth == 0  # nothing left open


def test_a_lost_callback_answer_leaves_the_step_answer_paired() -> None:
    """The controller's answer to a log call is not captured: the task server's answer to
    the step still pairs with the step (the most recent request of the other side), and
    its result reaches the row."""
    w = started_conversation()
    w.t(EX3_ANSWER)
    w.c(EX4_STEP)
    w.t(EX6_LOG)
    w.events += w.decoder.gap(C2T, w.next[C2T], len(EX6_ANSWER), 5)
    w.next[C2T] += len(EX6_ANSWER)
    w.t(EX4_ANSWER)
    assert one(w.events, StepAnswered).result is True
    assert [e.reason for e in w.errors()] == [
        f"gap of {len(EX6_ANSWER)} bytes at stream offset {w.next[C2T] - len(EX6_ANSWER)}:"
        " frames lost"
    ]


def test_trailing_bytes_and_unknown_object_command() -> None:
    w = started_conversation()
    at1 = w.t(enc.frame(EX5_GET_IDS[4:] + b"xx"))
    w.c(EX5_DISPID)
    at2 = w.t(enc.obj_request(TASK_ID, b"Z"))
    w.c(enc.answer_error("COM", "COM-80020003", "COM-80020003 no such member"))
    e1, e2 = w.errors()
    assert_error(e1, at1["offset"], "2 bytes after the GetIDsOfNames")
    assert_error(e2, at2["offset"], "unknown object command 0x5A")
    assert w.of(Reply)[-1].request.command == "Unknown"
    assert w.of(ApiError)[-1].code == "COM-80020003"


def test_huge_frame_length_allocates_nothing() -> None:
    """A 1 GB length (over the C++ maximum) is rejected; a frame of 10^9 bytes allowed by
    a raised bound accumulates only what arrived."""
    for max_frame, length in ((10**8, 2**30), (MAX_MESSAGE_SIZE, 10**9)):
        decoder = ObjServerDecoder(CONN, C2T, max_frame=max_frame)
        tracemalloc.start()
        events = decoder.feed(T2C, 0, struct.pack(">I", length) + b"A" + bytes(1023), 1)
        for k in range(1, 10):
            events += decoder.feed(T2C, 1028 + (k - 1) * 1024, bytes(1024), k)
        _, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
        assert peak < 2_000_000
        events += decoder.close()
        (error,) = [e for e in events if isinstance(e, DecodeError)]
        assert (
            "exceeds" in error.reason if length == 2**30 else "ended inside a frame" in error.reason
        )


def test_gap_inside_a_frame_loses_only_that_frame() -> None:
    w = started_conversation()
    decoder = w.decoder
    frame = EX6_LOG
    offset = w.next[T2C]
    events = decoder.feed(T2C, offset, frame[:20], 50)
    events += decoder.gap(T2C, offset + 20, 30, 51)
    events += decoder.feed(T2C, offset + 50, frame[50:], 52)
    w.next[T2C] += len(frame)
    w.events += events
    (error,) = w.errors()
    assert_error(error, offset, "30 bytes", "gap")
    assert (error.start, error.end) == (50, 52)
    damaged = w.of(Request)[-1]  # 16 payload bytes: class, object id, command
    assert (damaged.command, damaged.object_name, damaged.args) == ("Invoke", "spooler_log", ())
    assert not w.of(LogLine)
    w.c(EX6_ANSWER)  # pairs with the damaged request
    w.t(EX3_ANSWER)
    assert one(w.events, BeginAnswered).started is True


def test_gap_between_frames_resumes_at_the_next_frame_header() -> None:
    w = started_conversation()
    offset = w.next[T2C]
    events = w.decoder.gap(T2C, offset, 7, 60)
    events += w.decoder.feed(T2C, offset + 7, EX3_ANSWER, 61)
    assert_error(events[0], offset, "gap of 7 bytes", "frames lost")
    assert [type(e) for e in events[1:2]] == [Reply]


def test_gap_not_followed_by_a_frame_header_stops_the_direction() -> None:
    w = started_conversation()
    offset = w.next[T2C]
    events = w.decoder.gap(T2C, offset, 7, 60)
    events += w.decoder.feed(T2C, offset + 7, EX3_ANSWER[5:], 61)
    assert_error(events[-1], offset + 7, "no frame header after the gap", "framing lost")
    assert w.decoder.feed(T2C, offset + 7 + len(EX3_ANSWER) - 5, EX3_ANSWER, 62) == []
    # an offset jump inside a frame's length prefix: where the next frame starts is lost
    w2 = Wire()
    events = w2.decoder.feed(C2T, 0, EX2_CREATE[:3], 1) + w2.decoder.feed(C2T, 100, b"\0" * 8, 2)
    assert_error(next(e for e in events if isinstance(e, DecodeError)), 0, "framing lost")


@pytest.mark.parametrize("cut", [1, 4, 5, 12, 13])
def test_the_frame_after_a_gap_is_taken_wherever_the_segments_break(cut: int) -> None:
    """§5.1: a decoder must not rely on segment boundaries. Found in review: the check
    after a gap looked at the first piece only, and one shorter than a frame's head (5
    bytes, 14 for an `O` request) stopped the direction."""
    w = started_conversation()
    offset = w.next[T2C]
    events = w.decoder.gap(T2C, offset, 7, 60)
    events += w.decoder.feed(T2C, offset + 7, EX3_ANSWER[:cut], 61)
    events += w.decoder.feed(T2C, offset + 7 + cut, EX3_ANSWER[cut:], 62)
    assert_error(events[0], offset, "gap of 7 bytes", "frames lost")
    (reply,) = [e for e in events if isinstance(e, Reply)]
    assert (reply.offset, reply.start, reply.end) == (offset + 7, 61, 62)
    assert one(events, BeginAnswered).started is True


def test_a_gap_from_inside_a_frame_past_its_end_loses_only_the_frames_it_covers() -> None:
    """The frame's length says where the next frame starts: a gap over its tail and whole
    frames after it resumes like a gap between frames. Found in review: it stopped the
    direction for good."""
    w = started_conversation()
    offset = w.next[T2C]
    keep_alive = bytes.fromhex("000000014b")
    events = w.decoder.feed(T2C, offset, keep_alive[:4], 60)  # its length, not its class
    events += w.decoder.gap(T2C, offset + 4, 1 + len(keep_alive), 61)  # and one more
    events += w.decoder.feed(T2C, offset + 10, EX3_ANSWER, 62)
    assert_error(events[0], offset, "1 bytes of the frame were not captured")
    assert_error(events[1], offset + 5, "gap of 5 bytes", "frames lost")
    assert [type(e) for e in events[2:3]] == [Reply]
    assert one(events, BeginAnswered).started is True


def test_a_frame_over_the_decoders_bound_is_read_past_and_framing_goes_on() -> None:
    """§5.1: C++ peers accept frames up to 1 GB; the decoder's bound (100 MB by default)
    only keeps it from holding one. Found in review: one over it stopped the direction."""
    bound = max(map(len, (EX2_CREATE, EX2_ANSWER, EX3_BEGIN, EX3_ANSWER)))
    w = started_conversation(max_frame=bound)
    offset = w.next[T2C]
    big = struct.pack(">I", bound + 1) + b"A" + bytes(bound)
    events = w.decoder.feed(T2C, offset, big[:50], 60)
    events += w.decoder.feed(T2C, offset + 50, big[50:] + EX3_ANSWER, 61)
    reason = f"frame of {bound + 1} bytes over the limit {bound}"
    assert_error(events[0], offset, reason, "not decoded")
    assert one(events, BeginAnswered).started is True


def test_close_inside_a_frame() -> None:
    w = Wire()
    at = w.c(EX2_CREATE[:30], 7)
    errors = w.decoder.close()
    assert_error(errors[0], at["offset"], "ended inside a frame (30 of 63 bytes)")
    assert w.decoder.close() == [] and w.decoder.feed(0, 0, b"x", 1) == []


def test_bad_direction_is_reported_not_raised() -> None:
    (error,) = ObjServerDecoder(CONN).feed(2, 0, b"abc", 1)
    assert "direction 2" in error.reason


# --- readable values -------------------------------------------------------------------


def test_value_text_forms() -> None:
    assert str(Variant(VT_BSTR, 'say "hi"\n')) == '"say \\"hi\\"\\n"'
    assert str(Variant(VT_BOOL, True)) == "true"
    assert str(Variant(VT_I4, 123)) == "123"
    assert str(Variant(VT_EMPTY)) == "empty"
    assert str(Variant(enc.VT_CY, 123456)) == "12.3456"
    assert str(Variant(enc.VT_ERROR, -0x7FFDFFFC)) == "error 0x80020004"
    assert str(Variant(VT_R8, Double("1.0000000000000000e+00", 1.0))) == "1.0000000000000000e+00"
    ref = ObjRef(RMIS_ID, False, name="spooler_log")
    assert str(Variant(VT_DISPATCH, ref)) == "obj 6b8b4567.00000001 (spooler_log)"
    assert str(ObjRef(0, False)) == "null"
    elements = (Variant(VT_BSTR, "a"), Variant(VT_BSTR, "b"))
    assert (
        str(Variant(VT_ARRAY | VT_VARIANT, SafeArray(0x0810, VT_VARIANT, elements))) == '["a", "b"]'
    )
    assert str(SafeArray(0x0090, enc.VT_UI1, b"\x01\xff")) == "bytes 01ff"
