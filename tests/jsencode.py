"""Test-side encoder for both JobScheduler channels, written from PROTOCOL.md's tables.

Independent of jsdissect's decoders on purpose: tests check the decoders against these
bytes, and the emulator sends them over real sockets. Nothing here imports jsdissect.
"""

from __future__ import annotations

import struct
import uuid
from dataclasses import dataclass, field
from typing import Any

# --- §5.12 constants -------------------------------------------------------------------

CLSID_RMIS = "feee47a3-6c1b-11d8-8103-000476ee8afb"
IID_RMIS = "feee47a2-6c1b-11d8-8103-000476ee8afb"
CLSID_COM_LOG_PROXY = "feee47a6-6c1b-11d8-8103-000476ee8afb"
CLSID_TASK_PROXY = "feee47aa-6c1b-11d8-8103-000476ee8afb"
CLSID_SPOOLER_PROXY = "feee47b3-6c1b-11d8-8103-000476ee8afb"
NULL_GUID = "00000000-0000-0000-0000-000000000000"

# §5.4 VARTYPEs
VT_EMPTY, VT_NULL, VT_I2, VT_I4, VT_R4, VT_R8, VT_CY, VT_DATE = 0, 1, 2, 3, 4, 5, 6, 7
VT_BSTR, VT_DISPATCH, VT_ERROR, VT_BOOL, VT_UNKNOWN = 8, 9, 10, 11, 13
VT_VARIANT = 0x0C
VT_I1, VT_UI1, VT_UI2, VT_UI4, VT_I8, VT_UI8, VT_INT, VT_UINT = (
    0x10,
    0x11,
    0x12,
    0x13,
    0x14,
    0x15,
    0x16,
    0x17,
)
VT_ARRAY = 0x2000

# §5.9 Invoke flags
METHOD, PROPERTYGET, PROPERTYPUT = 1, 2, 4
DISPID_PROPERTYPUT = -3


def i16(v: int) -> bytes:
    return struct.pack(">h", v)


def i32(v: int) -> bytes:
    """int32 BE; values ≥ 2^31 (HRESULTs such as 0x80020009) are written as their bits."""
    return struct.pack(">I", v & 0xFFFFFFFF)


def i64(v: int) -> bytes:
    return struct.pack(">Q", v & 0xFFFFFFFFFFFFFFFF)


def string(s: str | bytes) -> bytes:
    """§5.3 string/BSTR: int32 byte count + ISO-8859-1 bytes."""
    raw = s if isinstance(s, bytes) else s.encode("latin-1")
    return i32(len(raw)) + raw


def guid(text: str) -> bytes:
    """§5.3 GUID: Data1..Data4 big-endian = the canonical text's hex digits in order."""
    return uuid.UUID(text).bytes


def double_text(text: str) -> bytes:
    """§5.3 double: 's', length byte, ASCII text (C++ '%.16e' or Java Double.toString)."""
    raw = text.encode("ascii")
    return b"s" + bytes([len(raw)]) + raw


def cpp_double(v: float) -> str:
    return f"{v:.16e}"


# --- values ---------------------------------------------------------------------------


@dataclass(frozen=True)
class ObjRef:
    """§5.6; `is_new` objects carry title, CLSID and properties."""

    id: int
    is_new: bool = False
    title: str = ""
    clsid: str = NULL_GUID
    properties: tuple[tuple[str, V], ...] = ()


@dataclass(frozen=True)
class V:
    """A VARIANT: `vt` plus a Python value (for doubles: the exact text to send)."""

    vt: int
    value: Any = None
    features: int = 0x0810  # SAFEARRAY fFeatures (§5.5), only for arrays


def objref(ref: ObjRef | None) -> bytes:
    if ref is None or ref.id == 0:
        return i64(0) + b"\x00"
    if not ref.is_new:
        return i64(ref.id) + b"\x00"
    out = i64(ref.id) + b"\x01" + string(ref.title) + guid(ref.clsid) + i32(len(ref.properties))
    for name, value in ref.properties:
        out += string(name) + variant(value)
    return out


_FIXED = {
    VT_I2: i16,
    VT_UI2: i16,
    VT_I4: i32,
    VT_UI4: i32,
    VT_INT: i32,
    VT_UINT: i32,
    VT_ERROR: i32,
    VT_CY: i64,
    VT_I8: i64,
    VT_UI8: i64,
    VT_I1: lambda v: bytes([v & 0xFF]),
    VT_UI1: lambda v: bytes([v & 0xFF]),
    VT_BOOL: lambda v: b"\x01" if v else b"\x00",
}


def variant(v: V) -> bytes:
    """§5.4: int32 vt + value."""
    head = i32(v.vt)
    if v.vt & VT_ARRAY:
        return head + safearray(v.vt & ~VT_ARRAY, v.value, v.features)
    if v.vt in (VT_EMPTY, VT_NULL):
        return head
    if v.vt in _FIXED:
        return head + _FIXED[v.vt](v.value)
    if v.vt in (VT_R4, VT_R8, VT_DATE):
        return head + double_text(v.value if isinstance(v.value, str) else cpp_double(v.value))
    if v.vt == VT_BSTR:
        return head + string(v.value)
    if v.vt in (VT_DISPATCH, VT_UNKNOWN):
        return head + objref(v.value)
    raise ValueError(f"vt {v.vt:#x} not transmittable")


def safearray(elem_vt: int, elements: list[Any] | bytes, features: int) -> bytes:
    """§5.5: cDims=1, fFeatures, count, lbound 0, element vt, elements."""
    n = len(elements)
    out = i16(1) + i16(features) + i32(n) + i32(0) + i32(elem_vt)
    if elem_vt == VT_UI1:
        return out + bytes(elements)
    if elem_vt == VT_BSTR:
        return out + b"".join(string(s) for s in elements)
    return out + b"".join(variant(e) for e in elements)


def bstr(s: str) -> V:
    return V(VT_BSTR, s)


def dispparams(args: list[V], named: list[tuple[int, V]] = ()) -> bytes:
    """§5.7: named values first (in DISPID-list order), then positional args reversed."""
    out = i32(len(args) + len(named)) + i32(len(named))
    out += b"".join(i32(d) for d, _ in named)
    out += b"".join(variant(v) for _, v in named)
    out += b"".join(variant(v) for v in reversed(args))
    return out


# --- §5.1 frames, §5.9 requests, §5.10/§5.11 answers -----------------------------------


def frame(payload: bytes) -> bytes:
    return struct.pack(">I", len(payload)) + payload


def create_instance(clsid: str = CLSID_RMIS, iids: tuple[str, ...] = (IID_RMIS,)) -> bytes:
    body = b"S" + i64(0) + b"C" + guid(clsid) + objref(None) + i32(0) + i32(len(iids))
    return frame(body + b"".join(guid(i) for i in iids))


def obj_request(object_id: int, command: bytes, body: bytes = b"") -> bytes:
    return frame(b"O" + i64(object_id) + command + body)


def call(object_id: int, method: str, args: list[V] = ()) -> bytes:
    """Call by name `A`: name, then DISPPARAMS with 0 named args, last argument first."""
    return obj_request(object_id, b"A", string(method) + dispparams(list(args)))


def get_ids_of_names(object_id: int, name: str, lcid: int = 0) -> bytes:
    return obj_request(object_id, b"G", guid(NULL_GUID) + i32(lcid) + i32(1) + string(name))


def invoke(
    object_id: int,
    dispid: int,
    flags: int,
    args: list[V] = (),
    named: list[tuple[int, V]] = (),
    lcid: int = 0,
) -> bytes:
    head = i32(dispid) + guid(NULL_GUID) + i32(lcid) + i32(flags)
    return obj_request(object_id, b"I", head + dispparams(list(args), list(named)))


def property_put(object_id: int, dispid: int, value: V) -> bytes:
    return invoke(object_id, dispid, PROPERTYPUT, named=[(DISPID_PROPERTYPUT, value)])


def release(object_id: int) -> bytes:
    return obj_request(object_id, b"R")


def keep_alive() -> bytes:
    return frame(b"K")


def answer_empty() -> bytes:
    """Answer to Release and to a keep-alive: exactly the byte `A`."""
    return frame(b"A")


def answer_create_instance(ref: ObjRef, hr: int = 0, hr_i: int = 0) -> bytes:
    return frame(b"A" + i32(hr) + i32(hr_i) + objref(ref))


def answer_value(value: V, hr: int = 0) -> bytes:
    """Invoke / call-by-name success: hr then VARIANT."""
    return frame(b"A" + i32(hr) + variant(value))


def answer_dispids(*dispids: int, hr: int = 0) -> bytes:
    return frame(b"A" + i32(hr) + b"".join(i32(d) for d in dispids))


def answer_invoke_failed(hr: int, source: str, description: str, arg_err: int = -1) -> bytes:
    """C++ Invoke failure: A, failed hr, argErr, EXCEPINFO (§5.8, §5.10)."""
    excepinfo = (
        i16(0) + i16(0) + string(source) + string(description) + string("") + i32(0) + i32(hr)
    )
    return frame(b"A" + i32(hr) + i32(arg_err) + excepinfo)


def answer_error(name: str, code: str, what: str) -> bytes:
    """§5.11 `E` answer: three key=value strings."""
    return frame(b"E" + string(f"name={name}") + string(f"code={code}") + string(f"what={what}"))


# --- §6: the objects of begin -----------------------------------------------------------


@dataclass
class BeginObjects:
    """The four objects C exports in `begin` (§6.3), C++ titles and proxies (§5.6)."""

    spooler: int
    spooler_job: int
    spooler_task: int
    spooler_log: int
    log_level: int = 0
    features: int = 0x0810
    names: tuple[str, ...] = field(
        default=("spooler", "spooler_job", "spooler_task", "spooler_log")
    )

    def refs(self) -> list[ObjRef]:
        ns = "sos::scheduler::com_objects::"
        return [
            ObjRef(self.spooler, True, ns + "Com_spooler", CLSID_SPOOLER_PROXY),
            ObjRef(self.spooler_job, True, ns + "Com_job"),
            ObjRef(
                self.spooler_task,
                True,
                ns + "Com_task",
                CLSID_TASK_PROXY,
                (("subprocess_own_process_group_default", V(VT_BOOL, False)),),
            ),
            ObjRef(
                self.spooler_log,
                True,
                ns + "Com_log",
                CLSID_COM_LOG_PROXY,
                (("level", V(VT_I4, self.log_level)),),
            ),
        ]

    def args(self) -> list[V]:
        """begin(objects, names): parameter order; the wire sends names first (§6.1)."""
        f = self.features
        objects = V(VT_ARRAY | VT_VARIANT, [V(VT_DISPATCH, r) for r in self.refs()], f)
        names = V(VT_ARRAY | VT_VARIANT, [bstr(n) for n in self.names], f)
        return [objects, names]


def construct_args(params: list[str], slots: int = 20, features: int = 0x0810) -> list[V]:
    """construct(1 arg): VT_ARRAY|VT_VARIANT of `key=value` BSTRs, VT_EMPTY-padded (§6.2)."""
    elements = [bstr(p) for p in params] + [V(VT_EMPTY)] * max(0, slots - len(params))
    return [V(VT_ARRAY | VT_VARIANT, elements, features)]


def process_result(
    exit_code: int,
    success: bool = True,
    signal: int | None = None,
    state_text: str | None = None,
    scala: bool = False,
) -> str:
    """§6.4 step result of shell jobs (C++ with prolog; Scala without, always state_text)."""
    flag = "true" if success else "false"
    if scala:
        return (
            f'<process.result spooler_process_result="{flag}" exit_code="{exit_code}"'
            f' state_text="{xml_escape(state_text or "")}"/>'
        )
    out = (
        '<?xml version="1.0" encoding="ISO-8859-1"?>'
        f'<process.result spooler_process_result="{flag}" exit_code="{exit_code}"'
    )
    if signal is not None:
        out += f' signal="{signal}"'
    if state_text:
        out += f' state_text="{xml_escape(state_text)}"'
    return out + "/>"


# --- §3 command channel -----------------------------------------------------------------

PROLOG = '<?xml version="1.0" encoding="ISO-8859-1"?>'


def xml_escape(s: str) -> str:
    return s.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;").replace('"', "&quot;")


def start_remote_task(
    tcp_port: int,
    kind: str | None = None,
    java_options: str | None = None,
    java_classpath: str | None = None,
) -> bytes:
    """§3.6.1: prolog + self-closing element, attributes in this order, no terminator."""
    out = f'{PROLOG}<remote_scheduler.start_remote_task tcp_port="{tcp_port}"'
    if kind:
        out += f' kind="{kind}"'
    if java_options:
        out += f' java_options="{xml_escape(java_options)}"'
    if java_classpath:
        out += f' java_classpath="{xml_escape(java_classpath)}"'
    return (out + "/>").encode("latin-1")


def remote_task_close(process_id: str, kill: bool = False) -> bytes:
    """§3.6.3, single quotes, no prolog."""
    extra = " kill='yes'" if kill else ""
    return f"<remote_scheduler.remote_task.close process_id='{process_id}'{extra}/>".encode()


def remote_task_kill(process_id: str, signal: str = "SIGTERM") -> bytes:
    """§3.6.2."""
    return (
        f"<remote_scheduler.remote_task.kill process_id='{process_id}' signal='{signal}'/>"
    ).encode()


def answer_doc(time: str, result: str) -> bytes:
    """§3.4: prolog, <spooler><answer time>RESULT</answer></spooler>, one NUL."""
    doc = f'{PROLOG}<spooler><answer time="{time}">{result}</answer></spooler>'
    return doc.encode("latin-1") + b"\x00"


def process_answer(time: str, process_id: str, pid: int | None = None) -> bytes:
    """§3.6.1 answer; attributes in DOM (alphabetical) order, `pid` omitted when 0."""
    pid_attr = f'pid="{pid}" ' if pid else ""
    return answer_doc(time, f'<process {pid_attr}process_id="{process_id}"/>')


def ok_answer(time: str) -> bytes:
    return answer_doc(time, "<ok/>")


def error_answer(time: str, code: str, text: str) -> bytes:
    err_time = time[:19] + "Z"
    return answer_doc(
        time,
        f'<ERROR time="{err_time}" class="Xc" code="{xml_escape(code)}"'
        f' text="{xml_escape(text)}"/>',
    )
