"""Test-side decoder for both channels, written from PROTOCOL.md (§3, §5) only.

The emulator receives with it and the tests decode captures with it. It is independent
of jsdissect on purpose, and it turns messages into *intents*: plain tuples that the
sending parties also log when they encode (see `plain`), so a test can compare what a
party meant to send with what the capture decodes to.
"""

from __future__ import annotations

import struct
import uuid
import xml.etree.ElementTree as ET
from collections.abc import Hashable
from dataclasses import dataclass
from typing import Any

from jsencode import VT_ARRAY, VT_BSTR, VT_UI1, ObjRef, V

Intent = tuple[Any, ...]

_I16 = struct.Struct(">h")
_I32 = struct.Struct(">i")
_U32 = struct.Struct(">I")
_U64 = struct.Struct(">Q")

# §5.4 fixed-size VARIANT values: vt -> (size, signed int reader or bool)
_FIXED_SIZE = {
    0x02: 2, 0x12: 2,  # VT_I2, VT_UI2
    0x03: 4, 0x13: 4, 0x16: 4, 0x17: 4, 0x0A: 4,  # VT_I4, VT_UI4, VT_INT, VT_UINT, VT_ERROR
    0x06: 8, 0x14: 8, 0x15: 8,  # VT_CY, VT_I8, VT_UI8
    0x10: 1, 0x11: 1,  # VT_I1, VT_UI1
}  # fmt: skip
_DOUBLE_VTS = (0x04, 0x05, 0x07)  # VT_R4, VT_R8, VT_DATE: double as text (§5.3)
_OBJREF_VTS = (0x09, 0x0D)  # VT_DISPATCH, VT_UNKNOWN
VT_BOOL = 0x0B


class WireError(ValueError):
    """Bytes that do not fit the spec's layouts."""


# --- §5.1 framing -----------------------------------------------------------------------


class FrameBuffer:
    """Collects a byte stream and hands out complete length-prefixed payloads."""

    def __init__(self) -> None:
        self._data = bytearray()

    def feed(self, data: bytes) -> list[bytes]:
        self._data += data
        payloads = []
        while len(self._data) >= 4:
            (length,) = _U32.unpack_from(self._data)
            if len(self._data) < 4 + length:
                break
            payloads.append(bytes(self._data[4 : 4 + length]))
            del self._data[: 4 + length]
        return payloads

    @property
    def pending(self) -> int:
        return len(self._data)


# --- §3 command channel -----------------------------------------------------------------


class XmlEndFinder:
    """§3.1: splits a client byte stream into requests like R's `Xml_end_finder`.

    NULs are skipped; `<?…>`/`<!…>` do not count; a self-closing tag at depth 0 or the end
    tag back to depth 0 completes a request; a request whose first byte is not `<` (e.g.
    keep-alive spaces, §3.7) also ends at the first newline outside a tag.
    """

    def __init__(self) -> None:
        self._buf = bytearray()
        self._reset()

    def _reset(self) -> None:
        self._depth = 0
        self._in_tag = False
        self._tag_kind = ""  # "start", "end" or "other"
        self._tag_len = 0
        self._prev = 0
        self._non_xml: bool | None = None

    def feed(self, data: bytes) -> list[bytes]:
        requests = []
        for byte in data:
            if byte == 0:
                continue
            self._buf.append(byte)
            if self._non_xml is None:
                self._non_xml = byte != ord("<")
            if self._step(byte):
                requests.append(bytes(self._buf))
                self._buf.clear()
                self._reset()
        return requests

    def _step(self, byte: int) -> bool:
        if not self._in_tag:
            if byte == ord("<"):
                self._in_tag, self._tag_kind, self._tag_len = True, "", 0
                return False
            return self._non_xml is True and byte == ord("\n")
        self._tag_len += 1
        if self._tag_len == 1:
            char = chr(byte)
            self._tag_kind = "end" if char == "/" else "start" if char.isalpha() else "other"
        if byte != ord(">"):
            self._prev = byte
            return False
        self._in_tag = False
        if self._tag_kind == "start":
            if self._prev == ord("/"):
                return self._depth == 0
            self._depth += 1
        elif self._tag_kind == "end":
            self._depth -= 1
            return self._depth == 0
        return False


def split_answers(data: bytes) -> tuple[list[bytes], bytes]:
    """§3.2: answers are NUL-terminated; returns (complete answers, rest)."""
    *answers, rest = data.split(b"\x00")
    return answers, rest


def command_intents(request: bytes) -> list[Intent]:
    """One client request (as split by XmlEndFinder) -> keep-alive spaces + the command."""
    text = request.decode("latin-1")
    stripped = text.lstrip(" ")
    intents: list[Intent] = [("space",)] * (len(text) - len(stripped))
    root = ET.fromstring(stripped.encode("latin-1"))
    if root.tag == "remote_scheduler.start_remote_task":
        intents.append(("start", int(root.get("tcp_port", "0")), root.get("kind")))
    elif root.tag == "remote_scheduler.remote_task.close":
        intents.append(("close", root.get("process_id"), root.get("kill") == "yes"))
    elif root.tag == "remote_scheduler.remote_task.kill":
        intents.append(("kill", root.get("process_id"), root.get("signal")))
    else:
        intents.append(("command", root.tag))
    return intents


def answer_intent(answer: bytes) -> Intent:
    """One NUL-stripped CMD answer (§3.4) -> ("process", id, pid) / ("ok",) / ("error", …)."""
    answer_element = ET.fromstring(answer).find("answer")
    if answer_element is None:
        raise WireError("CMD answer without <answer>")
    error = answer_element.find("ERROR")
    if error is not None:
        return ("error", error.get("code"), error.get("text"))
    process = answer_element.find("process")
    if process is not None:
        pid = process.get("pid")
        return ("process", process.get("process_id"), int(pid) if pid else None)
    if answer_element.find("ok") is not None:
        return ("ok",)
    return ("answer", [child.tag for child in answer_element])


# --- §5.3–§5.8 values -------------------------------------------------------------------


class Reader:
    """Cursor over one payload."""

    def __init__(self, data: bytes, pos: int = 0) -> None:
        self.data = data
        self.pos = pos

    def take(self, n: int) -> bytes:
        if self.pos + n > len(self.data):
            raise WireError(f"message too short: need {n} bytes at {self.pos}")
        out = self.data[self.pos : self.pos + n]
        self.pos += n
        return out

    def byte(self) -> int:
        return self.take(1)[0]

    def i16(self) -> int:
        return _I16.unpack(self.take(2))[0]

    def i32(self) -> int:
        return _I32.unpack(self.take(4))[0]

    def u32(self) -> int:
        return _U32.unpack(self.take(4))[0]

    def u64(self) -> int:
        return _U64.unpack(self.take(8))[0]

    def string(self) -> str:
        return self.take(self.i32()).decode("latin-1")

    def guid(self) -> str:
        return str(uuid.UUID(bytes=self.take(16)))

    def at_end(self) -> bool:
        return self.pos == len(self.data)


def read_objref(r: Reader) -> ObjRef | None:
    """§5.6."""
    object_id = r.u64()
    is_new = r.byte() != 0
    if not is_new:
        return ObjRef(object_id) if object_id else None
    title, clsid = r.string(), r.guid()
    properties = tuple((r.string(), read_variant(r)) for _ in range(r.i32()))
    return ObjRef(object_id, True, title, clsid, properties)


def read_variant(r: Reader) -> V:
    """§5.4: int32 vt + value; doubles keep their exact text."""
    vt = r.u32()
    if vt & VT_ARRAY:
        return _read_safearray(r, vt)
    if vt in (0, 1):
        return V(vt)
    if vt == VT_BOOL:
        return V(vt, r.byte() != 0)
    if vt in _FIXED_SIZE:
        size = _FIXED_SIZE[vt]
        return V(vt, int.from_bytes(r.take(size), "big", signed=vt not in (0x11, 0x13)))
    if vt in _DOUBLE_VTS:
        if r.byte() != ord("s"):
            raise WireError("double without 's' marker")
        return V(vt, r.take(r.byte()).decode("ascii"))
    if vt == VT_BSTR:
        return V(vt, r.string())
    if vt in _OBJREF_VTS:
        return V(vt, read_objref(r))
    raise WireError(f"vt {vt:#x} not transmittable")


def _read_safearray(r: Reader, vt: int) -> V:
    """§5.5."""
    dims, features, count, _lbound, elem_vt = r.i16(), r.i16() & 0xFFFF, r.i32(), r.i32(), r.i32()
    if dims != 1:
        raise WireError(f"SAFEARRAY with {dims} dimensions")
    if elem_vt == VT_UI1:
        return V(vt, r.take(count), features)
    if elem_vt == VT_BSTR:
        return V(vt, [r.string() for _ in range(count)], features)
    return V(vt, [read_variant(r) for _ in range(count)], features)


def read_dispparams(r: Reader) -> tuple[list[V], list[tuple[int, V]]]:
    """§5.7 -> (positional args in parameter order, [(named dispid, value)])."""
    count, named_count = r.i32(), r.i32()
    named_ids = [r.i32() for _ in range(named_count)]
    values = [read_variant(r) for _ in range(count)]
    named = list(zip(named_ids, values[:named_count], strict=True))
    return list(reversed(values[named_count:])), named


def plain(value: V | ObjRef | None) -> Any:
    """A comparable form of a VARIANT: (vt, value), objrefs as their id, arrays recursive."""
    if value is None:
        return None
    if isinstance(value, ObjRef):
        return value.id
    if isinstance(value.value, list):
        return (value.vt, tuple(plain(e) if isinstance(e, V) else e for e in value.value))
    if isinstance(value.value, ObjRef):
        return (value.vt, value.value.id)
    return (value.vt, value.value)


# --- §5.9–§5.11 messages ----------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Request:
    """A decoded `S`, `O` or `K` request; `command` is `C`, `R`, `Q`, `G`, `I`, `A` or `K`."""

    command: str
    object_id: int = 0
    name: str = ""  # G: the name; A: the method name
    dispid: int = 0
    flags: int = 0
    args: tuple[V, ...] = ()  # parameter order (wire order reversed, §5.7)
    named: tuple[tuple[int, V], ...] = ()
    clsid: str = ""

    def intent(self) -> Intent:
        if self.command == "C":
            return ("create_instance", self.clsid)
        if self.command == "K":
            return ("keepalive",)
        if self.command == "R":
            return ("release", self.object_id)
        if self.command == "G":
            return ("getids", self.object_id, self.name)
        args = tuple(plain(a) for a in self.args)
        if self.command == "A":
            return ("call", self.object_id, self.name, args)
        if self.command == "I":
            named = tuple((d, plain(v)) for d, v in self.named)
            return ("invoke", self.object_id, self.dispid, self.flags, args, named)
        return ("query", self.object_id)


def parse_request(payload: bytes) -> Request:
    r = Reader(payload, 1)
    cls = payload[:1]
    if cls == b"K":
        return Request("K")
    if cls == b"S":
        r.take(8)  # session id, always 0
        if r.byte() != ord("C"):
            raise WireError("unknown session command")
        clsid = r.guid()
        read_objref(r)  # outer, always null
        r.i32()  # context
        iids = [r.guid() for _ in range(r.i32())]
        return Request("C", clsid=clsid, name=",".join(iids))
    if cls != b"O":
        raise WireError(f"not a request: {cls!r}")
    object_id, command = r.u64(), chr(r.byte())
    if command == "G":
        r.take(16 + 4)  # IID_NULL, LCID
        if r.i32() != 1:
            raise WireError("GetIDsOfNames with more than one name")
        return Request("G", object_id, name=r.string())
    if command == "I":
        dispid = r.i32()
        r.take(16 + 4)
        flags = r.i32()
        args, named = read_dispparams(r)
        return Request(
            "I", object_id, dispid=dispid, flags=flags, args=tuple(args), named=tuple(named)
        )
    if command == "A":
        name = r.string()
        args, _ = read_dispparams(r)
        return Request("A", object_id, name=name, args=tuple(args))
    return Request(command, object_id)


@dataclass(frozen=True, slots=True)
class Answer:
    """A decoded `A`/`E` answer, interpreted by the command of the request it answers."""

    hr: int = 0
    value: V | None = None  # call/Invoke result
    objref: ObjRef | None = None  # CreateInstance result
    dispids: tuple[int, ...] = ()
    error: tuple[str, str, str] | None = None  # E: (name, code, what)
    failure: str = ""  # failed Invoke: EXCEPINFO description

    def intent(self, command: str) -> Intent:
        if self.error is not None:
            return ("error", self.error[1])
        if command in ("R", "K"):
            return ("answer_empty",)
        if command == "C":
            return ("answer_create", self.hr, plain(self.objref))
        if command == "G":
            return ("answer_dispids", self.hr, self.dispids)
        if self.hr < 0:
            return ("answer_failed", self.hr, self.failure)
        return ("answer", self.hr, plain(self.value))


def parse_answer(payload: bytes, command: str) -> Answer:
    """§5.10/§5.11; `command` is the answered request's command."""
    r = Reader(payload, 1)
    if payload[:1] == b"E":
        fields = {}
        while not r.at_end():
            key, _, value = r.string().partition("=")
            fields[key] = value
        return Answer(
            error=(fields.get("name", ""), fields.get("code", ""), fields.get("what", ""))
        )
    if payload[:1] != b"A":
        raise WireError(f"not an answer: {payload[:1]!r}")
    if command in ("R", "K"):
        return Answer()
    hr = r.i32()
    if command == "C":
        r.i32()  # hr of the one requested IID
        return Answer(hr, objref=read_objref(r) if hr >= 0 else None)
    if command == "G":
        return Answer(hr, dispids=tuple(r.i32() for _ in range((len(payload) - 5) // 4)))
    if hr < 0:
        r.i32()  # argErr
        r.take(4)  # wCode, wReserved
        r.string()
        return Answer(hr, failure=r.string())
    return Answer(hr, value=read_variant(r))


def describe_api_stream(
    messages: list[tuple[Hashable, bytes]],
) -> list[tuple[Hashable, Intent]]:
    """Payloads of one API connection in order (sender, payload) -> (sender, intent).

    Answers pair with the most recent unanswered request of the other side (§5.2).
    """
    pending: list[str] = []
    out = []
    for sender, payload in messages:
        if payload[:1] in (b"A", b"E"):
            out.append((sender, parse_answer(payload, pending[-1]).intent(pending.pop())))
        else:
            request = parse_request(payload)
            pending.append(request.command)
            out.append((sender, request.intent()))
    return out
