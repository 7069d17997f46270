"""The controller's exported objects (§6.3, Appendix A) and how it answers callbacks on them."""

from __future__ import annotations

import random
from collections.abc import Iterator

import jsencode as enc
from jsencode import V

from .channel import Session
from .record import TaskRecord
from .wire import Request

# Appendix A (Unix C++ method tables), names lower-cased: servers match case-insensitively.
DISPIDS: dict[str, dict[str, int]] = {
    "spooler_log": {
        "info": 0, "debug9": 1, "debug8": 2, "debug7": 3, "debug6": 4, "debug5": 5,
        "debug4": 6, "debug3": 7, "debug2": 8, "debug1": 9, "debug": 10, "msg": 11,
        "warn": 12, "error": 13, "log": 14, "mail": 15, "level": 19, "filename": 20,
        "java_class_name": 24, "last_error_line": 25,
    },
    "spooler_task": {
        "error": 2, "job": 3, "params": 4, "result": 5, "repeat": 7, "end": 8, "id": 10,
        "delay_spooler_process": 11, "order": 13, "java_class_name": 14, "step_count": 23,
        "set_error_code_and_text": 26, "exit_code": 30, "params_xml": 35,
        "order_params_xml": 36,
    },
    "spooler_job": {"name": 6, "state_text": 8, "title": 9, "java_class_name": 12},
    "spooler": {"var": 0, "log": 1, "id": 2, "param": 3, "java_class_name": 18, "hostname": 21},
    "variable_set": {"value": 0, "set_var": 1, "count": 2, "java_class_name": 7, "xml": 6},
}  # fmt: skip
JAVA_CLASSES = {
    "spooler": "sos.spooler.Spooler",
    "spooler_job": "sos.spooler.Job",
    "spooler_task": "sos.spooler.Task",
    "spooler_log": "sos.spooler.Log",
    "variable_set": "sos.spooler.Variable_set",
}
JOB_PARAMS = {"mode": "nightly", "target": "/var/data/out"}
PARAMS_XML = (
    '<?xml version="1.0" encoding="ISO-8859-1"?><sos.spooler.variable_set count="2">'
    + "".join(f'<variable name="{k}" value="{v}"/>' for k, v in JOB_PARAMS.items())
    + "</sos.spooler.variable_set>"
)


def cpp_object_ids(rng: random.Random) -> Iterator[int]:
    """§5.3 C++ ids: random high 32 bits, per-session counter from 1 in the low 32 bits."""
    counter = 0
    while True:
        counter += 1
        yield (rng.getrandbits(32) << 32) | counter


class ControllerObjects:
    """C's object table of one callback session: the four `begin` objects and their children."""

    def __init__(self, session: Session, rec: TaskRecord, rng: random.Random) -> None:
        self.session, self.rec = session, rec
        self._ids = cpp_object_ids(rng)
        self.kinds: dict[int, str] = {}
        self._children: dict[tuple[int, str], int] = {}
        ids = [self._new("spooler"), self._new("spooler_job")]
        ids += [self._new("spooler_task"), self._new("spooler_log")]
        self.begin = enc.BeginObjects(*ids)

    def _new(self, kind: str) -> int:
        object_id = next(self._ids)
        self.kinds[object_id] = kind
        return object_id

    async def serve(self, request: Request) -> None:
        """Answers one callback of T (§5.2): K, R, G or I on an object C exported."""
        session = self.session
        if request.command == "K":
            await session.answer_empty()
        elif request.command == "R":
            self.kinds.pop(request.object_id, None)
            await session.answer_empty()
        elif request.command == "G":
            dispid = DISPIDS[self.kinds[request.object_id]].get(request.name.lower())
            if dispid is None:
                await session.answer_unknown_name()
            else:
                await session.answer_dispids(dispid)
        elif request.command == "I":
            await session.answer_value(self._invoke(request))
        else:
            await session.answer_error("", "Z-REMOTE-105", f"Z-REMOTE-105 {request.command}")

    def _invoke(self, request: Request) -> V:
        kind = self.kinds[request.object_id]
        names = {d: n for n, d in DISPIDS[kind].items()}
        name = names.get(request.dispid, "")
        if request.flags & enc.PROPERTYPUT or (kind == "spooler_log" and name != "level"):
            return V(enc.VT_EMPTY)
        if name == "java_class_name":
            return enc.bstr(JAVA_CLASSES[kind])
        if kind == "spooler_task":
            return self._task_property(request.object_id, name)
        if kind == "spooler_job" and name == "name":
            return enc.bstr((self.rec.job or "").rsplit("/", 1)[-1])
        if kind == "variable_set" and name == "value" and request.args:
            return enc.bstr(JOB_PARAMS.get(str(request.args[0].value), ""))
        if kind == "spooler_log" and name == "level":
            return V(enc.VT_I4, 0)
        return V(enc.VT_EMPTY)

    def _task_property(self, task_object: int, name: str) -> V:
        if name == "id":
            return V(enc.VT_I4, self.rec.task_id or 0)
        if name == "params_xml":
            return enc.bstr(PARAMS_XML)
        if name == "params":
            return V(enc.VT_DISPATCH, self._child(task_object, "variable_set"))
        return V(enc.VT_EMPTY)

    def _child(self, parent: int, kind: str) -> enc.ObjRef:
        """An object returned by a property: exported (is_new) the first time only."""
        known = self._children.get((parent, kind))
        if known is not None and known in self.kinds:
            return enc.ObjRef(known)
        object_id = self._new(kind)
        self._children[(parent, kind)] = object_id
        title = "sos::scheduler::com_objects::Com_" + kind
        return enc.ObjRef(object_id, True, title)
