"""The binary object-server channel (PROTOCOL.md §5, §6): task server → controller port.

Sans-I/O: `ObjServerDecoder.feed` takes in-order pieces of one direction's byte stream and
returns events. Per direction it cuts frames at the length prefixes (§5.1); each complete
frame becomes a `Request` or a `Reply` (paired LIFO, §5.2/§12), followed by the task
lifecycle markers it carries (§6.6) and by a `DecodeError` for every part that does not fit
the layouts. Nothing raises out of `feed`, `gap` or `close`.

Internally everything is keyed by tcp direction; the side labels "C"/"T" are only attached
to events. Which direction is the controller's: the sender of the first `S` CreateInstance;
before that `controller_direction`; without either, the first request that only one side
sends decides (`O`+`A` call by name comes from C; `O`+`G`/`I` and `K` come from T). Until
then `sender` is "?".
"""

from __future__ import annotations

import functools
import re
import struct
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from decimal import Decimal
from typing import Any

import defusedxml.ElementTree as SafeElementTree

from jsdissect.protocol import DecodeError, Event, record

CONTROLLER = "C"  # RPC client, the TCP acceptor (§0, §4)
TASK_SERVER = "T"  # RPC server, the TCP connector
UNKNOWN_SIDE = "?"  # neither CreateInstance nor controller_direction nor a telling request yet

# --- layouts and constants, named as in PROTOCOL.md ------------------------------------

LENGTH_PREFIX = struct.Struct(">I")  # §5.1 uint32 BE payload length
MAX_MESSAGE_SIZE = 1_048_576_000  # §5.1 C++ max_message_size (Z-REMOTE-115)
MESSAGE_SIZE_MAXIMUM = 100_000_000  # §5.1 Scala MessageTcpBridge; our default sanity bound

# §5.1 message classes
MSG_SESSION = 0x53  # S
MSG_OBJECT = 0x4F  # O
MSG_KEEP_ALIVE = 0x4B  # K
MSG_ANSWER = 0x41  # A
MSG_ERROR = 0x45  # E
MSG_NO_SESSION = 0x4E  # N: defined, never sent
REQUEST_CLASSES = frozenset((MSG_SESSION, MSG_OBJECT, MSG_KEEP_ALIVE))
ANSWER_CLASSES = frozenset((MSG_ANSWER, MSG_ERROR))

# §5.9 commands
CMD_CREATE_INSTANCE = 0x43  # C, after S
CMD_RELEASE = 0x52  # R
CMD_QUERY_INTERFACE = 0x51  # Q
CMD_GET_IDS_OF_NAMES = 0x47  # G
CMD_INVOKE = 0x49  # I
CMD_CALL = 0x41  # A, call by name
CREATE_INSTANCE = "CreateInstance"
RELEASE = "Release"
QUERY_INTERFACE = "QueryInterface"
GET_IDS_OF_NAMES = "GetIDsOfNames"
INVOKE = "Invoke"
CALL = "Call"
KEEP_ALIVE = "KeepAlive"
UNKNOWN_COMMAND = "Unknown"
OBJECT_COMMANDS = {
    CMD_RELEASE: RELEASE,
    CMD_QUERY_INTERFACE: QUERY_INTERFACE,
    CMD_GET_IDS_OF_NAMES: GET_IDS_OF_NAMES,
    CMD_INVOKE: INVOKE,
    CMD_CALL: CALL,
}

# §5.3 primitives
U8 = struct.Struct(">B")
I8 = struct.Struct(">b")
I16 = struct.Struct(">h")
U16 = struct.Struct(">H")
I32 = struct.Struct(">i")
U32 = struct.Struct(">I")
I64 = struct.Struct(">q")
U64 = struct.Struct(">Q")
GUID_SIZE = 16
STRING_MIN = 4  # int32 byte count
DOUBLE_HEAD = struct.Struct(">BB")  # 's' 0x73, text length; then the ASCII text
DOUBLE_MARK = 0x73
DOUBLE_TEXT = re.compile(
    r"[+-]?(?:(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?|nan|inf|infinity)", re.IGNORECASE
)

# §5.4 VARTYPEs
VT_EMPTY = 0x00
VT_NULL = 0x01
VT_I2 = 0x02
VT_I4 = 0x03
VT_R4 = 0x04
VT_R8 = 0x05
VT_CY = 0x06
VT_DATE = 0x07
VT_BSTR = 0x08
VT_DISPATCH = 0x09
VT_ERROR = 0x0A
VT_BOOL = 0x0B
VT_VARIANT = 0x0C
VT_UNKNOWN = 0x0D
VT_I1 = 0x10
VT_UI1 = 0x11
VT_UI2 = 0x12
VT_UI4 = 0x13
VT_I8 = 0x14
VT_UI8 = 0x15
VT_INT = 0x16
VT_UINT = 0x17
VT_ARRAY = 0x2000
VARIANT_MIN = 4  # int32 vt
BSTR_HEAD = struct.Struct(">Ii")  # §5.4 a VT_BSTR VARIANT: vt, then the string's byte count
FIXED_VALUES = {  # vt -> layout of its value
    VT_I1: I8,
    VT_UI1: U8,
    VT_I2: I16,
    VT_UI2: U16,
    VT_I4: I32,
    VT_UI4: U32,
    VT_INT: I32,
    VT_UINT: U32,
    VT_ERROR: I32,
    VT_CY: I64,
    VT_I8: I64,
    VT_UI8: U64,
}
INTEGER_VTS = frozenset(FIXED_VALUES) - {VT_ERROR, VT_CY}
DOUBLE_VTS = frozenset((VT_R4, VT_R8, VT_DATE))
OBJREF_VTS = frozenset((VT_DISPATCH, VT_UNKNOWN))
VT_NAMES = {
    VT_EMPTY: "VT_EMPTY",
    VT_NULL: "VT_NULL",
    VT_I2: "VT_I2",
    VT_I4: "VT_I4",
    VT_R4: "VT_R4",
    VT_R8: "VT_R8",
    VT_CY: "VT_CY",
    VT_DATE: "VT_DATE",
    VT_BSTR: "VT_BSTR",
    VT_DISPATCH: "VT_DISPATCH",
    VT_ERROR: "VT_ERROR",
    VT_BOOL: "VT_BOOL",
    VT_VARIANT: "VT_VARIANT",
    VT_UNKNOWN: "VT_UNKNOWN",
    VT_I1: "VT_I1",
    VT_UI1: "VT_UI1",
    VT_UI2: "VT_UI2",
    VT_UI4: "VT_UI4",
    VT_I8: "VT_I8",
    VT_UI8: "VT_UI8",
    VT_INT: "VT_INT",
    VT_UINT: "VT_UINT",
}

# §5.5 SAFEARRAY: cDims, fFeatures, element count, lower bound, element VARTYPE
SAFEARRAY_HEADER = struct.Struct(">hHiii")
ARRAY_ELEMENT_MIN = {VT_UI1: 1, VT_BSTR: STRING_MIN, VT_VARIANT: VARIANT_MIN}
MAX_NESTING = 64  # nested arrays / objref properties; deeper is an error, not a recursion

# §5.6 objref: int64 id, is_new; if new: title, CLSID, property count, properties
OBJREF_HEAD = struct.Struct(">QB")
PROPERTY_MIN = STRING_MIN + VARIANT_MIN

# §5.7 DISPPARAMS: cArgs, cNamedArgs
DISPPARAMS_HEAD = struct.Struct(">ii")
DISPID_PROPERTYPUT = -3

# §5.8 EXCEPINFO: wCode, wReserved … dwHelpContext, scode
EXCEPINFO_HEAD = struct.Struct(">hh")
EXCEPINFO_TAIL = struct.Struct(">ii")

# §5.9 request bodies
GET_IDS_HEAD = struct.Struct(">16si")  # IID, LCID; then name count and names
INVOKE_HEAD = struct.Struct(">i16sii")  # DISPID, IID, LCID, flags
DISPATCH_METHOD = 1
DISPATCH_PROPERTYGET = 2
DISPATCH_PROPERTYPUT = 4
DISPATCH_PROPERTYPUTREF = 8

# §5.12 CLSIDs
CLSID_REMOTE_MODULE_INSTANCE_SERVER = "feee47a3-6c1b-11d8-8103-000476ee8afb"
IID_IREMOTE_MODULE_INSTANCE_SERVER = "feee47a2-6c1b-11d8-8103-000476ee8afb"
CLSID_COM_LOG_PROXY = "feee47a6-6c1b-11d8-8103-000476ee8afb"
CLSID_TASK_PROXY = "feee47aa-6c1b-11d8-8103-000476ee8afb"
CLSID_SPOOLER_PROXY = "feee47b3-6c1b-11d8-8103-000476ee8afb"
CLSID_NULL = "00000000-0000-0000-0000-000000000000"

# Object classes: the §6.3 begin names, plus the RMIS and two Appendix A classes.
RMIS = "RMIS"
SPOOLER = "spooler"
SPOOLER_JOB = "spooler_job"
SPOOLER_TASK = "spooler_task"
SPOOLER_LOG = "spooler_log"
VARIABLE_SET = "Variable_set"
ORDER = "Order"
PROXY_CLASSES = {  # §5.6 specialised proxies
    CLSID_COM_LOG_PROXY: SPOOLER_LOG,
    CLSID_TASK_PROXY: SPOOLER_TASK,
    CLSID_SPOOLER_PROXY: SPOOLER,
}
TITLE_CLASSES = {  # last resort: C++ class names in objref titles (§5.6, debugging only)
    "Com_spooler": SPOOLER,
    "Com_job": SPOOLER_JOB,
    "Com_task": SPOOLER_TASK,
    "Com_log": SPOOLER_LOG,
    "Com_variable_set": VARIABLE_SET,
    "Com_order": ORDER,
}


def _dispids(table: str) -> dict[int, str]:
    words = table.split()
    return {int(dispid): name for dispid, name in zip(words[::2], words[1::2], strict=True)}


# Appendix A (Unix C++ method tables); names learned from GetIDsOfNames answers win.
CLASS_DISPIDS = {
    SPOOLER_LOG: _dispids("""
        0 info 1 debug9 2 debug8 3 debug7 4 debug6 5 debug5 6 debug4 7 debug3 8 debug2
        9 debug1 10 debug 11 msg 12 warn 13 error 14 log 15 mail 16 mail_on_error
        17 mail_on_success 18 mail_on_process 19 level 20 filename 21 collect_within
        22 collect_max 23 mail_it 24 java_class_name 25 last_error_line 26 last
        27 mail_on_warning 28 Start_new_file 29 Log_file 30 New_filename"""),
    SPOOLER_TASK: _dispids("""
        2 error 3 job 4 params 5 result 6 wait_until_terminated 7 repeat 8 end
        9 history_field 10 id 11 delay_spooler_process 13 order 14 java_class_name
        15 changed_directories 16 add_pid 17 remove_pid 18 stderr_text 19 stdout_text
        20 Create_subprocess 21 Add_subprocess 22 Priority_class 23 Step_count
        24 Stderr_path 25 Stdout_path 26 Set_error_code_and_text 27 Web_service
        28 Web_service_or_null 29 Priority 30 Exit_code 31 Trigger_files 32 Try_hold_lock
        33 Try_hold_lock_non_exclusive 34 Call_me_again_when_locks_available 35 Params_xml
        36 Order_params_xml 37 Web_service_access_token 38 agent_url"""),
    SPOOLER_JOB: _dispids("""
        1 start_when_directory_changed 2 clear_when_directory_changed 3 start
        5 include_path 6 name 7 wake 8 state_text 9 title 10 delay_after_error
        11 order_queue 12 java_class_name 13 delay_order_after_setback
        14 max_order_setbacks 15 clear_delay_after_error 16 Remove 17 Execute_command
        19 Process_class 20 Folder_path 21 Configuration_directory 22 Setback_max
        23 Script_code"""),
    SPOOLER: _dispids("""
        0 var 1 log 2 id 3 param 4 script 5 job 6 create_variable_set 7 include_path
        8 log_dir 9 let_run_terminate_and_restart 10 variables 12 db_name
        13 create_job_chain 14 add_job_chain 15 job_chain 16 create_order 17 is_service
        18 java_class_name 19 directory 20 job_chain_exists 21 hostname
        22 abort_immediately 23 abort_immediately_and_restart 29 Ini_path 30 Execute_xml
        31 Tcp_port 32 Udp_port 33 Create_xslt_stylesheet 34 Terminate
        35 Terminate_and_restart 37 Locks 38 Process_classes 39 Supervisor_client
        40 Configuration_directory 41 Schedule 42 Uri"""),
    VARIABLE_SET: _dispids("""
        0 value 1 set_var 2 count 3 dom 4 Clone 5 merge 6 xml 7 java_class_name 8 var
        9 Names 10 Substitute"""),
    ORDER: _dispids("""
        1 id 2 title 3 priority 4 job_chain 5 job_chain_node 7 state 8 state_text 9 error
        10 payload 11 payload_is_type 12 java_class_name 13 setback 14 at 15 Run_time
        16 remove_from_job_chain 17 String_next_start_time 18 Xml 19 Web_service
        20 Web_service_or_null 21 Web_service_operation 22 Web_service_operation_or_null
        23 Xml_payload 24 Params 25 Suspended 26 Log 27 End_state 28 Setback_count
        29 Ignore_max_orders 30 History_id 31 Last_error"""),
    RMIS: _dispids("""
        1 Construct 2 Add_obj 3 Name_exists 4 Call 5 Begin 6 End 7 Step
        8 Wait_for_subprocesses"""),
}

# §6.5 / DESIGN "log_lines": spooler_log methods that write a line, with their level
# (−9…−1 debug9…debug1, 0 info, 1 warn, 2 error; `log` takes it as 1st parameter;
# `msg` has no level of its own in the spec).
LOG_DISPID = 14
LINE_METHODS: dict[str, int | None] = {
    "info": 0,
    **{f"debug{n}": -n for n in range(1, 10)},
    "debug": -1,
    "msg": None,
    "warn": 1,
    "error": 2,
    "log": None,
}
EXIT_CODE = "exit_code"  # §6.5 spooler_task.exit_code put (DISPID 30)
LINE_WHITESPACE = " \t\r\n\f\v"

# §6.1 call-by-name methods of the RMIS that mark the lifecycle
LC_CONSTRUCT = "construct"
LC_BEGIN = "begin"
LC_STEP = "step"
LC_CALL = "call"
LC_RELEASE = "release"
PROCESS_RESULT = "process.result"  # §6.4
PROCESS_RESULT_CACHED_CHARS = 512  # shorter step answers are parsed once per text
# A text that is a <process.result> document (§6.4), told without parsing: an answer whose
# request was not captured is a step's when it is one (XML whitespace only, as the plugin).
PROCESS_RESULT_HEAD = re.compile(
    r"[ \t\r\n]*(?:<\?xml[^>]*\?>[ \t\r\n]*)?<process\.result[ \t\r\n/>]"
)

MAX_PENDING = 1000  # open requests per connection; deeper nesting is not a conversation


# --- values (§5.3–§5.8) -----------------------------------------------------------------


def _quote(text: str) -> str:
    out = []
    for ch in text:
        code = ord(ch)
        if ch in '"\\':
            out.append("\\" + ch)
        elif ch == "\n":
            out.append("\\n")
        elif ch == "\r":
            out.append("\\r")
        elif ch == "\t":
            out.append("\\t")
        elif code < 0x20 or 0x7F <= code < 0xA0:
            out.append(f"\\x{code:02x}")
        else:
            out.append(ch)
    return '"' + "".join(out) + '"'


def _short_title(title: str | None) -> str | None:
    return title.rsplit("::", 1)[-1].strip() if title else None


def object_id_text(object_id: int) -> str:
    """§5.3 debug form high.low (lower-case hex)."""
    return f"{object_id >> 32:08x}.{object_id & 0xFFFFFFFF:08x}"


@record
class Double:  # §5.3 double-as-text; equal when the text is equal
    text: str
    value: float = field(compare=False)

    def __str__(self) -> str:
        return self.text


@record
class ObjRef:  # §5.6; id 0 is the null pointer
    id: int
    is_new: bool
    title: str | None = None  # only when is_new
    clsid: str | None = None
    properties: tuple[tuple[str, Variant], ...] = ()
    name: str | None = field(default=None, compare=False)  # filled by the decoder when known

    def __str__(self) -> str:
        if not self.id:
            return "null"
        label = self.name or _short_title(self.title)
        return f"obj {object_id_text(self.id)}" + (f" ({label})" if label else "")


@record
class SafeArray:  # §5.5, one dimension
    features: int
    elem_vt: int
    elements: tuple[Any, ...] | bytes  # Variants, strs (VT_BSTR) or bytes (VT_UI1)
    lbound: int = 0

    def __str__(self) -> str:
        if isinstance(self.elements, bytes):
            return f"bytes {self.elements.hex()}"
        items = (_quote(e) if isinstance(e, str) else str(e) for e in self.elements)
        return "[" + ", ".join(items) + "]"


@record
class Variant:  # §5.4
    vt: int
    value: Any = None

    def __str__(self) -> str:
        value = self.value
        if self.vt & VT_ARRAY or self.vt in OBJREF_VTS or self.vt in DOUBLE_VTS:
            return str(value)
        if self.vt == VT_EMPTY:
            return "empty"
        if self.vt == VT_NULL:
            return "null"
        if self.vt == VT_BSTR:
            return _quote(value)
        if self.vt == VT_BOOL:
            return "true" if value else "false"
        if self.vt == VT_ERROR:
            return f"error 0x{value & 0xFFFFFFFF:08X}"
        if self.vt == VT_CY:
            return str(Decimal(value).scaleb(-4))
        return str(value)


@record
class ExcepInfo:  # §5.8
    code: int
    reserved: int
    source: str
    description: str
    help_file: str
    help_context: int
    scode: int

    def __str__(self) -> str:
        return f"{self.description or self.source} (scode 0x{self.scode & 0xFFFFFFFF:08X})"


@record
class InvokeFailure:  # §5.10 Invoke answer with failed hr: argErr + EXCEPINFO
    arg_err: int
    excepinfo: ExcepInfo

    def __str__(self) -> str:
        return f"failed: {self.excepinfo}"


def hresult_text(hr: int) -> str:
    return f"COM-{hr & 0xFFFFFFFF:08X}"


# --- events -----------------------------------------------------------------------------


@record
class Request(Event):  # §5.9
    sender: str  # CONTROLLER or TASK_SERVER (UNKNOWN_SIDE until known)
    # "CreateInstance", "Release", "QueryInterface", "GetIDsOfNames", "Invoke", "Call",
    # "KeepAlive" (or "Unknown" for an unreadable command byte)
    command: str
    object_id: int | None
    object_name: str | None  # "RMIS", "spooler_log", … when known (§6.3, §12)
    method: str | None  # Call name, GetIDsOfNames name, or Invoke name resolved from its DISPID
    dispid: int | None
    flags: int | None  # Invoke flags (§5.9)
    # decoded values in parameter order (wire order reversed back, §5.7); a property put's
    # value (named DISPID_PROPERTYPUT) comes last, as the put's last parameter in COM
    args: tuple[Any, ...]
    depth: int  # callback nesting level: 0 for the controller's own calls
    named_args: tuple[tuple[int, Any], ...] = ()  # §5.7 all named (DISPID, value) pairs


@record
class Reply(Event):  # §5.10/§5.11
    sender: str
    request: Request | None  # paired through the per-connection stack (§5.2, §12)
    hr: int | None
    result: Any  # VARIANT value, DISPIDs, objref…
    error_name: str | None  # `E` answer strings (§5.11)
    error_code: str | None
    error_what: str | None


# --- lifecycle markers (§6.6), emitted besides the Request/Reply they come from -----------


@record
class Construct(Event):  # §6.2
    params: tuple[tuple[str, str], ...]
    job: str | None
    task_id: int | None
    language: str | None


@record
class BeginAnswered(Event):  # §6.1 #2: start confirmation
    started: bool | None
    call_start: int  # when the begin call's first byte was captured


@record
class StepAnswered(Event):  # §6.1 #4, §6.4
    number: int  # 1-based count of step calls on this connection (0: the call not captured)
    call_start: int | None  # None: the call was not captured, only its answer
    result: bool | None  # spooler_process() result (API) or spooler_process_result (shell)
    exit_code: int | None  # shell <process.result>
    signal: int | None
    state_text: str | None


@record
class LifecycleCall(Event):  # construct/begin/step/end/call(...) sent by the controller
    name: str  # "construct", "begin", "step", "end", "spooler_open", "spooler_exit", …


@record
class ReleaseAnswered(Event):  # §6.1 #9: answer to Release of the RMIS
    object_id: int
    call_start: int


@record
class KeepAliveK(Event):  # §8: `K` request
    pass


@record
class LogLine(Event):  # §6.5: one counted line (DESIGN "log_lines")
    method: str  # "log", "info", "warn", …
    level: int | None
    text: str


@record
class ExitCodePut(Event):  # §6.5: spooler_task.exit_code put (DISPID 30)
    exit_code: int


@record
class ApiError(Event):  # `E` answer or failed HRESULT (§5.10, §5.11)
    code: str  # "Z-JAVA-105", "COM-80020009", …
    text: str
    method: str | None  # the request it answers


# --- payload reader ---------------------------------------------------------------------


class _Malformed(Exception):
    """Bytes that do not fit the layout; becomes a DecodeError of the frame."""


def _guid_text(raw: bytes) -> str:
    h = raw.hex()
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


class _Reader:
    """Cursor over one payload. Every length and count is checked against the bytes that
    are left before anything is read or looped over."""

    __slots__ = ("buf", "objrefs", "pos")

    def __init__(self, buf: bytes, pos: int = 0) -> None:
        self.buf = buf
        self.pos = pos
        self.objrefs = 0  # objrefs read: values without any need no walk for them

    @property
    def remaining(self) -> int:
        return len(self.buf) - self.pos

    def need(self, size: int, what: str) -> None:
        if size > self.remaining:
            raise _Malformed(
                f"truncated {what} at payload byte {self.pos}"
                f" ({size} bytes needed, {self.remaining} left)"
            )

    def fixed(self, layout: struct.Struct, what: str) -> Any:
        pos = self.pos
        end = pos + layout.size
        if end > len(self.buf):  # the check of `need`, inline: this is the hottest read
            self.need(layout.size, what)
        values = layout.unpack_from(self.buf, pos)
        self.pos = end
        return values[0] if len(values) == 1 else values

    def raw(self, size: int, what: str) -> bytes:
        pos = self.pos
        end = pos + size
        if end > len(self.buf):
            self.need(size, what)
        self.pos = end
        return self.buf[pos:end]

    def count(self, element_min: int, what: str) -> int:
        """int32 count of elements each at least `element_min` bytes long."""
        at = self.pos
        n = self.fixed(I32, what)
        # (compared by division: a product of a count up to 2**31 would take mypyc's slow
        # path, where a Ctrl-C aborts the process; see capture._big_product)
        if n < 0 or n > self.remaining // element_min:
            raise _Malformed(
                f"{what} {n} at payload byte {at} does not fit the {self.remaining} bytes left"
            )
        return n

    def string(self, what: str = "string") -> str:
        at = self.pos
        if at + STRING_MIN > len(self.buf):  # the message is only formatted when needed
            self.need(STRING_MIN, f"{what} length")
        size = I32.unpack_from(self.buf, at)[0]
        self.pos = at + STRING_MIN
        if size < 0:
            raise _Malformed(f"{what} at payload byte {at} has negative length {size}")
        return self.raw(size, what).decode("latin-1")

    def guid(self, what: str) -> str:
        return _guid_text(self.raw(GUID_SIZE, what))

    def double(self) -> Double:
        at = self.pos
        mark, size = self.fixed(DOUBLE_HEAD, "double header")
        if mark != DOUBLE_MARK:
            raise _Malformed(f"double at payload byte {at} starts with 0x{mark:02X}, not 's'")
        text = self.raw(size, "double text").decode("latin-1")
        if not DOUBLE_TEXT.fullmatch(text):
            raise _Malformed(f"double text {text!r} at payload byte {at} is not a number")
        return Double(text, float(text))

    def end(self, what: str) -> None:
        if self.remaining:
            raise _Malformed(f"{self.remaining} bytes after the {what} at payload byte {self.pos}")

    def strings(self, n: int, what: str) -> list[str]:
        """n strings; a well-formed one is read inline, anything else by `string`."""
        buf, size, out = self.buf, len(self.buf), []
        for _ in range(n):
            at = self.pos
            if at + STRING_MIN <= size:
                end = at + STRING_MIN + I32.unpack_from(buf, at)[0]
                if at + STRING_MIN <= end <= size:
                    out.append(buf[at + STRING_MIN : end].decode("latin-1"))
                    self.pos = end
                    continue
            out.append(self.string(what))
        return out

    def variants(self, n: int, depth: int) -> list[Variant]:
        """n VARIANTs. Strings, the most frequent values by far (construct parameters,
        log lines), are read inline; anything else, and every error, by `variant`."""
        buf, size, out = self.buf, len(self.buf), []
        inline = depth <= MAX_NESTING  # deeper: `variant` reports the nesting
        for _ in range(n):
            at = self.pos
            if inline and at + BSTR_HEAD.size <= size:
                vt, length = BSTR_HEAD.unpack_from(buf, at)
                end = at + BSTR_HEAD.size + length
                if vt == VT_BSTR and at + BSTR_HEAD.size <= end <= size:
                    out.append(Variant(VT_BSTR, buf[at + BSTR_HEAD.size : end].decode("latin-1")))
                    self.pos = end
                    continue
            out.append(self.variant(depth))
        return out

    # §5.4
    def variant(self, depth: int = 0) -> Variant:
        if depth > MAX_NESTING:
            raise _Malformed(f"values nested deeper than {MAX_NESTING} at payload byte {self.pos}")
        at = self.pos
        if at + VARIANT_MIN > len(self.buf):
            self.need(VARIANT_MIN, "VARIANT type")
        vt = U32.unpack_from(self.buf, at)[0]
        self.pos = at + VARIANT_MIN
        if vt & VT_ARRAY:
            return Variant(vt, self.safearray(vt & ~VT_ARRAY, at, depth))
        if vt in (VT_EMPTY, VT_NULL):
            return Variant(vt)
        if vt == VT_BSTR:  # the most frequent value, ahead of the other checks
            return Variant(vt, self.string("VT_BSTR value"))
        name = VT_NAMES.get(vt)
        layout = FIXED_VALUES.get(vt)
        if layout is not None:
            if self.pos + layout.size > len(self.buf):  # the message only when needed
                self.need(layout.size, f"{name} value")
            return Variant(vt, self.fixed(layout, ""))
        if vt == VT_BOOL:
            return Variant(vt, self.fixed(U8, "VT_BOOL value") != 0)
        if vt in DOUBLE_VTS:
            return Variant(vt, self.double())
        if vt == VT_BSTR:
            return Variant(vt, self.string("VT_BSTR value"))
        if vt in OBJREF_VTS:
            return Variant(vt, self.objref(depth + 1))
        raise _Malformed(f"VARIANT type 0x{vt:04X} at payload byte {at} is not transmittable")

    # §5.5
    def safearray(self, tag: int, at: int, depth: int) -> SafeArray:
        if tag not in ARRAY_ELEMENT_MIN:
            raise _Malformed(f"array type VT_ARRAY|0x{tag:04X} at payload byte {at} not supported")
        dims, features, n, lbound, elem_vt = self.fixed(SAFEARRAY_HEADER, "SAFEARRAY header")
        if dims != 1:
            raise _Malformed(f"SAFEARRAY at payload byte {at} has {dims} dimensions, not 1")
        if elem_vt != tag:
            raise _Malformed(
                f"SAFEARRAY at payload byte {at}: element type 0x{elem_vt:04X}"
                f" differs from the tag's 0x{tag:04X}"
            )
        if n < 0 or n > self.remaining // ARRAY_ELEMENT_MIN[tag]:  # (as in `count`)
            raise _Malformed(
                f"SAFEARRAY at payload byte {at} claims {n} elements; {self.remaining} bytes left"
            )
        elements: tuple[Any, ...] | bytes
        if tag == VT_UI1:
            elements = self.raw(n, "VT_UI1 elements")
        elif tag == VT_BSTR:
            elements = tuple(self.strings(n, "array element"))
        else:
            elements = tuple(self.variants(n, depth + 1))
        return SafeArray(features, elem_vt, elements, lbound)

    # §5.6
    def objref(self, depth: int = 0) -> ObjRef:
        object_id, is_new = self.fixed(OBJREF_HEAD, "objref")
        self.objrefs += 1
        if not is_new:
            return ObjRef(object_id, False)
        title = self.string("objref title")
        clsid = self.guid("objref CLSID")
        n = self.count(PROPERTY_MIN, "objref property count")
        props = tuple((self.string("property name"), self.variant(depth + 1)) for _ in range(n))
        return ObjRef(object_id, True, title, clsid, props)

    # §5.7
    def dispparams(self) -> tuple[tuple[Any, ...], tuple[tuple[int, Any], ...]]:
        at = self.pos
        n_args, n_named = self.fixed(DISPPARAMS_HEAD, "DISPPARAMS")
        if not 0 <= n_named <= n_args or n_named + n_args > self.remaining // 4:  # (`count`)
            raise _Malformed(
                f"DISPPARAMS at payload byte {at}: {n_args} args, {n_named} named"
                f" do not fit the {self.remaining} bytes left"
            )
        if not n_named:  # the usual call: no list, zip or generator for the named ones
            values = self.variants(n_args, 0)
            values.reverse()
            return tuple(values), ()
        dispids = [self.fixed(I32, "named DISPID") for _ in range(n_named)]
        values = self.variants(n_args, 0)
        named = tuple(zip(dispids, values[:n_named], strict=True))
        put = tuple(value for dispid, value in named if dispid == DISPID_PROPERTYPUT)
        return (*reversed(values[n_named:]), *put), named

    # §5.8
    def excepinfo(self) -> ExcepInfo:
        code, reserved = self.fixed(EXCEPINFO_HEAD, "EXCEPINFO")
        source = self.string("EXCEPINFO source")
        description = self.string("EXCEPINFO description")
        help_file = self.string("EXCEPINFO help file")
        help_context, scode = self.fixed(EXCEPINFO_TAIL, "EXCEPINFO")
        return ExcepInfo(code, reserved, source, description, help_file, help_context, scode)


# --- value walking ----------------------------------------------------------------------


def _refs(value: Any, out: list[ObjRef]) -> list[ObjRef]:
    """Every objref in a value, depth first in order (a plain recursion: nested generators
    cost a frame switch per level for every value)."""
    if isinstance(value, Variant):
        _refs(value.value, out)
    elif isinstance(value, ObjRef):
        out.append(value)
        for _, prop in value.properties:
            _refs(prop, out)
    elif isinstance(value, SafeArray):
        if not isinstance(value.elements, bytes):
            for element in value.elements:
                _refs(element, out)
    elif isinstance(value, tuple):
        for element in value:
            _refs(element, out)
    return out


def _map_refs(value: Any, fn: Callable[[ObjRef], ObjRef]) -> Any:
    """The value with fn applied to every objref; unchanged parts are kept, not copied."""
    if isinstance(value, Variant):
        inner = _map_refs(value.value, fn)
        return value if inner is value.value else Variant(value.vt, inner)
    if isinstance(value, ObjRef):
        mapped = tuple(_map_refs(prop, fn) for _, prop in value.properties)
        if _same(mapped, tuple(prop for _, prop in value.properties)):
            return fn(value)
        names = (name for name, _ in value.properties)
        return fn(replace(value, properties=tuple(zip(names, mapped, strict=True))))
    if isinstance(value, SafeArray) and not isinstance(value.elements, bytes):
        elements = tuple(_map_refs(e, fn) for e in value.elements)
        return value if _same(elements, value.elements) else replace(value, elements=elements)
    if isinstance(value, tuple):
        mapped = tuple(_map_refs(e, fn) for e in value)
        return value if _same(mapped, value) else mapped
    return value


def _same(new: tuple[Any, ...], old: tuple[Any, ...]) -> bool:
    """Element by element the same objects."""
    return all(a is b for a, b in zip(new, old, strict=True))


def _text(value: Any) -> str | None:
    """A string argument: VT_BSTR variant or a BSTR array element."""
    if isinstance(value, str):
        return value
    if isinstance(value, Variant) and value.vt == VT_BSTR:
        return value.value
    return None


def _integer(value: Any) -> int | None:
    if isinstance(value, Variant) and value.vt in INTEGER_VTS:
        return value.value
    return None


def _array_elements(value: Any) -> tuple[Any, ...]:
    if isinstance(value, Variant) and isinstance(value.value, SafeArray):
        elements = value.value.elements
        return () if isinstance(elements, bytes) else elements
    return ()


# --- per-connection state ---------------------------------------------------------------


# conn, direction, offset, start, end: the fields every Event starts with
_Where = tuple[str, int, int, int, int]


@dataclass(slots=True)
class _Frame:
    offset: int  # stream offset of the length prefix
    start: int  # ts of the piece with the first length byte
    end: int  # max ts over the pieces that contributed bytes


@dataclass(slots=True)
class _Stream:
    """Framing state of one direction (§5.1)."""

    expected: int | None = None  # next stream offset
    dead: bool = False
    resync: bool = False  # after a gap between frames: the next piece must start a frame
    # Picked up mid-stream, no frame head found yet: pieces that begin none are skipped
    pickup: bool = False
    skipped: tuple[int, int, int] | None = None  # (offset, bytes, ts) skipped so far
    held: list[tuple[int, bytes, int]] = field(default_factory=list)  # (offset, data, ts)
    head: bytearray = field(default_factory=bytearray)
    frame: _Frame | None = None
    length: int | None = None
    pieces: list[bytes] = field(default_factory=list)  # joined only when complete
    have: int = 0
    missing: int = 0  # payload bytes lost in gaps; pieces then hold only the prefix
    oversize: bool = False  # longer than the decoder's bound: read past, pieces not kept

    def reset(self) -> None:
        self.head.clear()
        self.frame = None
        self.length = None
        self.pieces = []
        self.have = 0
        self.missing = 0
        self.oversize = False


def _frame_head(data: bytes, final: bool, bound: int = MAX_MESSAGE_SIZE) -> bool | None:
    """§12 mid-stream heuristic: a sane length (up to `bound`), a known class, for `O` a
    known command. None: too few bytes to tell yet; `final`: no more will come, judge by
    what is there (an `O` cut before its command byte passes on its length and class)."""
    if len(data) < LENGTH_PREFIX.size + 1:
        return False if final else None
    length = LENGTH_PREFIX.unpack_from(data)[0]
    if not 0 < length <= bound or data[4] not in REQUEST_CLASSES | ANSWER_CLASSES:
        return False
    if data[4] != MSG_OBJECT:
        return True
    if len(data) < _OBJECT_COMMAND_AT + 1:
        return True if final else None
    return data[_OBJECT_COMMAND_AT] in OBJECT_COMMANDS


_OBJECT_COMMAND_AT = 13  # §5.9: length (4), class `O`, object id (8), then the command


@dataclass(slots=True)
class _Obj:
    """An exported object (§5.6, §12): keyed by (exporting direction, id)."""

    title: str | None = None
    clsid: str | None = None
    name: str | None = None  # begin name (§6.3) or "RMIS"
    cls: str | None = None  # key of CLASS_DISPIDS
    learned: dict[int, str] = field(default_factory=dict)  # GetIDsOfNames answers

    def label(self) -> str | None:
        return self.name or self.cls

    def dispid_name(self, dispid: int | None) -> str | None:
        if dispid is None:
            return None
        return self.learned.get(dispid) or CLASS_DISPIDS.get(self.cls or "", {}).get(dispid)


@dataclass(slots=True)
class _Parsed:
    """What could be read of a request, kept when the rest is malformed."""

    command: str = UNKNOWN_COMMAND
    object_id: int | None = None
    method: str | None = None
    dispid: int | None = None
    flags: int | None = None
    args: tuple[Any, ...] = ()
    named: tuple[tuple[int, Any], ...] = ()
    names: tuple[str, ...] | None = None  # GetIDsOfNames: one DISPID per name in the answer
    n_iids: int | None = None  # CreateInstance: one interface per IID in the answer
    complete: bool = False


@dataclass(slots=True)
class _Answer:
    hr: int | None = None
    result: Any = None
    strings: list[str] = field(default_factory=list)  # `E`


@dataclass(slots=True)
class _Pending:
    direction: int
    request: Request
    parsed: _Parsed
    target: _Obj | None
    lifecycle: str | None  # LC_BEGIN, LC_STEP, LC_RELEASE: answers that mark the lifecycle
    step: int = 0


def _parse_request(r: _Reader, cls: int, p: _Parsed) -> None:
    if cls == MSG_KEEP_ALIVE:
        p.command = KEEP_ALIVE
        r.end("keep-alive")
        return
    if cls == MSG_SESSION:
        _parse_create_instance(r, p)
        return
    p.object_id = r.fixed(U64, "object id")
    command = r.fixed(U8, "object command")
    p.command = OBJECT_COMMANDS.get(command, UNKNOWN_COMMAND)
    if p.command == UNKNOWN_COMMAND:
        raise _Malformed(f"unknown object command 0x{command:02X}")
    if p.command == QUERY_INTERFACE:
        p.args = (r.guid("IID"),)
    elif p.command == GET_IDS_OF_NAMES:
        r.fixed(GET_IDS_HEAD, "GetIDsOfNames header")
        p.names = tuple(r.string("name") for _ in range(r.count(STRING_MIN, "name count")))
        p.args = p.names
        p.method = p.names[0] if p.names else None
    elif p.command == INVOKE:
        p.dispid, _iid, _lcid, p.flags = r.fixed(INVOKE_HEAD, "Invoke header")
        p.args, p.named = r.dispparams()
    elif p.command == CALL:
        p.method = r.string("method name")
        p.args, p.named = r.dispparams()
    r.end(p.command)


def _parse_create_instance(r: _Reader, p: _Parsed) -> None:
    r.fixed(U64, "session id")
    command = r.fixed(U8, "session command")
    if command != CMD_CREATE_INSTANCE:
        raise _Malformed(f"unknown session command 0x{command:02X}")
    p.command = CREATE_INSTANCE
    clsid = r.guid("CLSID")
    r.objref()  # outer, always null
    r.fixed(I32, "context")
    p.n_iids = r.count(GUID_SIZE, "IID count")
    p.args = (clsid, *(r.guid("IID") for _ in range(p.n_iids)))
    r.end(CREATE_INSTANCE)


def _parse_answer(r: _Reader, p: _Parsed, a: _Answer) -> None:
    """§5.10: the layout after `A` depends on the request's command."""
    if p.command in (RELEASE, KEEP_ALIVE):
        r.end(f"answer to {p.command}")
        return
    if p.command == UNKNOWN_COMMAND:
        raise _Malformed("answer to a request whose layout is unknown")
    a.hr = r.fixed(I32, "HRESULT")
    if p.command == CREATE_INSTANCE and a.hr >= 0:
        # One (hr_i, objref) per IID; with the request unreadable: until the end.
        refs: list[ObjRef] = []
        while r.remaining if p.n_iids is None else len(refs) < p.n_iids:
            r.fixed(I32, "interface HRESULT")
            refs.append(r.objref())
        a.result = refs[0] if refs else None  # the RMIS; C++ repeats it for further IIDs
    elif p.command == QUERY_INTERFACE and a.hr >= 0:
        a.result = r.objref()
    elif p.command == GET_IDS_OF_NAMES and a.hr >= 0:
        n = len(p.names) if p.names is not None else r.remaining // 4
        r.need(4 * n, "DISPIDs")
        a.result = tuple(r.fixed(I32, "DISPID") for _ in range(n))
    elif p.command == INVOKE:
        if a.hr >= 0:
            a.result = r.variant()
        else:
            arg_err = r.fixed(I32, "argErr")
            a.result = InvokeFailure(arg_err, r.excepinfo())
    elif p.command == CALL:
        a.result = r.variant()
    r.end(f"answer to {p.command}")


def _parse_unpaired_answer(r: _Reader, a: _Answer) -> None:
    """§5.10 without the request that tells the layout (not captured): what the bytes show
    for sure. Nothing after `A` answers a Release or a keep-alive; else the HRESULT, then a
    failed Invoke's argErr and EXCEPINFO, or a VARIANT that fills the rest exactly (the
    answer to a call by name or an Invoke: what each side answers most, §5.2). Anything
    else stays undecoded, as it may be DISPIDs or objrefs."""
    if not r.remaining:
        return
    a.hr = r.fixed(I32, "HRESULT")
    if not r.remaining:
        return
    if a.hr < 0:
        arg_err = r.fixed(I32, "argErr")
        a.result = InvokeFailure(arg_err, r.excepinfo())
        r.end("answer")
        return
    refs = r.objrefs
    try:
        result = r.variant()
        r.end("answer")
    except _Malformed:
        r.pos, r.objrefs = len(r.buf), refs  # not a VARIANT: the body stays undecoded
        return
    a.result = result


def _parse_error_strings(r: _Reader, a: _Answer) -> None:
    """§5.11: strings until the payload ends."""
    while r.remaining:
        a.strings.append(r.string("error string"))


_NO_FIELDS: dict[str, str] = {}  # an `A` answer's: read only


def _error_fields(strings: list[str]) -> dict[str, str]:
    fields: dict[str, str] = {}
    for s in strings:
        key, sep, value = s.partition("=")
        if sep and key in ("name", "code", "what"):
            fields[key] = value
    return fields


def _process_result(text: str) -> tuple[tuple[Any, ...], tuple[str, ...]]:
    """§6.4: (result, exit_code, signal, state_text) and the problems found. Steps mostly
    answer the same few short texts and an XML parser costs 12 µs, so short ones are
    cached (long ones are not, so the cache stays small whatever a capture holds)."""
    if len(text) <= PROCESS_RESULT_CACHED_CHARS:
        return _cached_process_result(text)
    return _parse_process_result(text)


def _is_process_result(value: Any) -> bool:
    return (
        isinstance(value, Variant)
        and value.vt == VT_BSTR
        and PROCESS_RESULT_HEAD.match(value.value) is not None
    )


def _parse_process_result(text: str) -> tuple[tuple[Any, ...], tuple[str, ...]]:
    try:
        root = SafeElementTree.fromstring(text)
    except Exception as exc:  # ParseError, defusedxml's forbidden constructs
        return (None, None, None, None), (f"malformed <process.result>: {exc}",)
    if root.tag != PROCESS_RESULT:
        return (None, None, None, None), (f"step answer is <{root.tag}>, not <process.result>",)
    problems: list[str] = []

    def number(key: str) -> int | None:
        raw = root.get(key)
        if raw is None:
            return None
        value = _whole_number(raw)
        if value is None:
            problems.append(f"<process.result> {key}={raw!r} is not a number")
        return value

    flag = (root.get("spooler_process_result") or "").strip().lower()
    result = {"true": True, "1": True, "false": False, "0": False}.get(flag)
    fields = (result, number("exit_code"), number("signal"), root.get("state_text"))
    return fields, tuple(problems)


_cached_process_result = functools.lru_cache(maxsize=256)(_parse_process_result)


WHOLE_NUMBER_RE = re.compile(r"[ \t\r\n]*[+-]?[0-9]+[ \t\r\n]*")


def _whole_number(text: str) -> int | None:
    """A decimal integer in ASCII digits (a sign allowed, spaces around), None when it is
    not one or longer than Python converts (4300 digits: int() raises ValueError beyond
    that, and no number here is that long). int() alone would take underscores and any
    script's digits."""
    if not WHOLE_NUMBER_RE.fullmatch(text):
        return None
    try:
        return int(text)
    except ValueError:
        return None


def _construct_event(where: _Where, args: tuple[Any, ...]) -> Construct:
    """§6.2: every `key=value` string of the array, split at the first '='."""
    params = []
    for element in _array_elements(args[0]) if args else ():
        text = _text(element)
        if text is not None:
            key, _, value = text.partition("=")
            params.append((key, value))
    values: dict[str, str] = {}
    for key, value in params:
        values.setdefault(key, value)
    task_id = values.get("task_id", "")
    return Construct(
        *where,
        params=tuple(params),
        job=values.get("job"),
        task_id=_whole_number(task_id),
        language=values.get("language"),
    )


def _lifecycle_name(method: str, args: tuple[Any, ...]) -> str:
    """`call("?spooler_on_success()V")` → "spooler_on_success"; others as sent."""
    if method.lower() != LC_CALL:
        return method
    target = _text(args[0]) if args else None
    if not target:
        return method
    return target.lstrip("?").split("(", 1)[0] or method


# --- the decoder ------------------------------------------------------------------------


class ObjServerDecoder:
    """One per callback connection. `controller_direction` is the tcp direction the
    controller sends in (normally SERVER_TO_CLIENT: the controller accepted); None lets the
    decoder infer it from the first CreateInstance (or the first telling request).
    `max_frame` is the sanity bound on frame lengths (never above MAX_MESSAGE_SIZE).
    `label_objrefs` False leaves the objrefs in Request args and Reply results without the
    names of the objects they point to: only a message listing shows those. `midstream`:
    the connection was picked up without its handshake, so each direction may begin inside
    a frame: it is decoded from the first piece that begins with a frame head (§12)."""

    def __init__(
        self,
        conn: str,
        controller_direction: int | None = None,
        *,
        max_frame: int = MESSAGE_SIZE_MAXIMUM,
        label_objrefs: bool = True,
        midstream: bool = False,
    ) -> None:
        self.conn = conn
        self.max_frame = min(max_frame, MAX_MESSAGE_SIZE)
        self.label_objrefs = label_objrefs
        self._controller = controller_direction
        self._created = False  # an `S` was seen: its sender is the controller
        self._streams = (
            _Stream(resync=midstream, pickup=midstream),
            _Stream(resync=midstream, pickup=midstream),
        )
        self._pending: list[_Pending] = []
        self._objects: dict[tuple[int, int], _Obj] = {}
        self._rmis: tuple[int, int] | None = None
        self._steps = 0
        self._closed = False

    # -- public entry points: never raise --

    def feed(self, direction: int, offset: int, data: bytes, ts: int) -> list[Event]:
        """`data` = stream bytes from `offset` on, first captured at `ts` (µs)."""
        out: list[Event] = []
        if self._valid(direction, offset, ts, out) and data:
            try:
                self._feed(direction, offset, data, ts, out)
            except Exception as exc:  # a decoder reports, it never raises
                self._crashed(direction, offset, ts, exc, out)
        return out

    def gap(self, direction: int, offset: int, size: int, ts: int) -> list[Event]:
        """Bytes [offset, offset+size) were never captured."""
        out: list[Event] = []
        if self._valid(direction, offset, ts, out):
            try:
                self._gap(direction, offset, size, ts, out)
            except Exception as exc:  # a decoder reports, it never raises
                self._crashed(direction, offset, ts, exc, out)
        return out

    def close(self) -> list[Event]:
        """End of the connection: an unfinished frame becomes a DecodeError."""
        out: list[Event] = []
        if self._closed:
            return out
        self._closed = True
        for direction, st in enumerate(self._streams):
            if st.held:  # after a gap, too few bytes to tell by more: told by what is there
                self._judge_held(direction, st, True, out)
            if st.skipped is not None:  # picked up mid-stream, and no frame head came
                offset, size, ts = st.skipped
                reason = f"picked up mid-stream: {size} bytes and no frame head in them"
                out.append(self._error(direction, _Frame(offset, ts, ts), reason))
            if st.dead or st.frame is None:
                continue
            have = len(st.head) if st.length is None else LENGTH_PREFIX.size + st.have
            want = "?" if st.length is None else LENGTH_PREFIX.size + st.length
            reason = f"connection ended inside a frame ({have} of {want} bytes)"
            out.append(self._error(direction, st.frame, reason))
            st.reset()
        return out

    # -- framing (§5.1) --

    def _valid(self, direction: int, offset: int, ts: int, out: list[Event]) -> bool:
        if direction in (0, 1):
            return not self._closed
        where = _Frame(offset, ts, ts)
        out.append(self._error(0, where, f"direction {direction!r} is neither 0 nor 1"))
        return False

    def _crashed(self, d: int, offset: int, ts: int, exc: Exception, out: list[Event]) -> None:
        st = self._streams[d]
        self._die(d, st, st.frame or _Frame(offset, ts, ts), f"internal error: {exc!r}", out)

    def _feed(self, d: int, offset: int, data: bytes, ts: int, out: list[Event]) -> None:
        st = self._streams[d]
        if st.expected is None:
            st.expected = offset
        if offset > st.expected:
            self._gap(d, st.expected, offset - st.expected, ts, out)
        elif offset < st.expected:  # overlap: those bytes were fed already
            data = data[st.expected - offset :]
            offset = st.expected
        if st.dead:
            return
        if not data:  # all of it fed already
            return
        data = bytes(data)
        st.expected = offset + len(data)
        if st.resync:
            # Held until its first bytes tell whether a frame starts there: a segment
            # boundary may fall anywhere in a frame's head (§5.1).
            st.held.append((offset, data, ts))
            self._judge_held(d, st, False, out)
            return
        self._frame(d, st, data, offset, ts, out)

    def _judge_held(self, d: int, st: _Stream, final: bool, out: list[Event]) -> None:
        """After a gap between frames, or picked up mid-stream: frame the held pieces once
        their head looks like a frame's. After a gap framing is lost when it does not;
        picked up, the first piece is skipped and the next judged. `final`: no more bytes
        follow them (a gap, the end), so judge by what is there."""
        # Picked up mid-stream, a frame head must be one this decoder reads: log text
        # ("    Error: …") passes as a length under C++'s 1 GB and a class (found in review)
        bound = self.max_frame if st.pickup else MAX_MESSAGE_SIZE
        verdict = _frame_head(b"".join(piece for _, piece, _ in st.held), final, bound)
        while st.pickup and verdict is False and st.held:
            self._skip_piece(st)
            verdict = _frame_head(b"".join(piece for _, piece, _ in st.held), final, bound)
        if verdict is None or not st.held:
            return
        if st.pickup:
            self._picked_up(d, st, out)
        held, st.held, st.resync = st.held, [], False
        if not verdict:
            offset, _, ts = held[0]
            reason = "no frame header after the gap: framing lost"
            self._die(d, st, _Frame(offset, ts, ts), reason, out)
            return
        for offset, data, ts in held:
            self._frame(d, st, data, offset, ts, out)

    @staticmethod
    def _skip_piece(st: _Stream) -> None:
        """Picked up mid-stream: the first piece held begins no frame (the tail of one whose
        head was not captured), so it is read past (§12; the plugin skips it too)."""
        offset, piece, ts = st.held.pop(0)
        first_offset, size, first_ts = st.skipped or (offset, 0, ts)
        st.skipped = (first_offset, size + len(piece), first_ts)

    def _picked_up(self, d: int, st: _Stream, out: list[Event]) -> None:
        """The first frame head of a direction picked up mid-stream: what came before it
        is told once, as one decode error."""
        st.pickup = False
        if st.skipped is not None:
            offset, size, ts = st.skipped
            reason = f"picked up mid-stream: {size} bytes before the first frame head skipped"
            out.append(self._error(d, _Frame(offset, ts, ts), reason))
            st.skipped = None

    def _frame(
        self, d: int, st: _Stream, data: bytes, offset: int, ts: int, out: list[Event]
    ) -> None:
        """Split a piece of the stream into frames, decoding each as it completes."""
        pos, size = 0, len(data)
        while pos < size and not st.dead:
            if st.frame is None and pos + LENGTH_PREFIX.size <= size:
                pos = self._whole_frame(d, data, pos, offset, ts, out)
                if pos >= 0:
                    continue
                pos = -pos - 1
            pos = self._consume(d, st, data, pos, offset, ts, out)

    def _whole_frame(
        self, d: int, data: bytes, pos: int, offset: int, ts: int, out: list[Event]
    ) -> int:
        """The usual case, a whole frame from `pos` on in this piece: decoded without
        buffering; returns where the next frame starts, or -pos-1 to let _consume (and its
        checks of the length) take it."""
        length = LENGTH_PREFIX.unpack_from(data, pos)[0]
        end = pos + LENGTH_PREFIX.size + length
        if not 0 < length <= self.max_frame or end > len(data):
            return -pos - 1
        self._complete(
            d, data[pos + LENGTH_PREFIX.size : end], _Frame(offset + pos, ts, ts), 0, out
        )
        return end

    def _consume(
        self, d: int, st: _Stream, data: bytes, pos: int, offset: int, ts: int, out: list[Event]
    ) -> int:
        if st.frame is None:
            st.frame = _Frame(offset + pos, ts, ts)
        st.frame.end = max(st.frame.end, ts)
        if st.length is None:
            take = min(LENGTH_PREFIX.size - len(st.head), len(data) - pos)
            st.head += data[pos : pos + take]
            if len(st.head) == LENGTH_PREFIX.size:
                self._check_length(d, st, out)
            return pos + take
        take = min(st.length - st.have, len(data) - pos)
        if not st.missing and not st.oversize:
            st.pieces.append(data[pos : pos + take])
        st.have += take
        if st.have == st.length:
            self._finish_frame(d, st, out)
        return pos + take

    def _check_length(self, d: int, st: _Stream, out: list[Event]) -> None:
        length = LENGTH_PREFIX.unpack(st.head)[0]
        if length == 0:
            reason = "frame length 0: a payload holds at least its message class"
            self._die(d, st, st.frame, reason, out)
        elif length > MAX_MESSAGE_SIZE:  # more than any peer accepts: no frame length
            reason = f"frame length {length} exceeds {MAX_MESSAGE_SIZE}: framing lost"
            self._die(d, st, st.frame, reason, out)
        else:
            # Above our bound (not above C++'s): read past, not held; framing goes on.
            st.oversize = length > self.max_frame
            st.length = length

    def _gap(self, d: int, offset: int, size: int, ts: int, out: list[Event]) -> None:
        st = self._streams[d]
        if st.dead or size <= 0:
            return
        if st.expected is None:
            st.expected = offset
        if offset < st.expected:
            size -= st.expected - offset
            if size <= 0:
                return
        elif offset > st.expected:
            size += offset - st.expected
        offset = st.expected
        st.expected = offset + size
        if st.held:  # bytes between two gaps, too few to tell by more: told by what is there
            self._judge_held(d, st, True, out)
            if st.dead:
                return
        if st.length is not None:
            # The frame's length is known, so the next frame starts right after it: only
            # this frame is lost, and, when the gap runs on past it, whole frames after it.
            lost_here = min(size, st.length - st.have)
            st.missing += lost_here
            st.have += lost_here
            if st.have == st.length:
                self._finish_frame(d, st, out)
            offset += lost_here
            size -= lost_here
            if not size:
                return
        if st.frame is None:
            # Between frames: senders write a frame in one send, so the bytes after a lost
            # run of whole frames usually begin a frame; checked when they arrive (§12).
            reason = f"gap of {size} bytes at stream offset {offset}: frames lost"
            out.append(self._error(d, _Frame(offset, ts, ts), reason))
            st.resync = True
            return
        reason = f"gap of {size} bytes at stream offset {offset}: framing lost"
        self._die(d, st, st.frame, reason, out)

    def _die(
        self, d: int, st: _Stream, frame: _Frame | None, reason: str, out: list[Event]
    ) -> None:
        """Framing lost: this direction is not decoded any more."""
        assert frame is not None
        out.append(self._error(d, frame, reason))
        st.reset()
        st.dead = True

    def _finish_frame(self, d: int, st: _Stream, out: list[Event]) -> None:
        payload = b"".join(st.pieces)
        frame, missing, oversize, length = st.frame, st.missing, st.oversize, st.length
        st.reset()
        assert frame is not None
        if oversize:
            reason = f"frame of {length} bytes over the limit {self.max_frame}: not decoded"
            out.append(self._error(d, frame, reason))
            return
        self._complete(d, payload, frame, missing, out)

    def _complete(
        self, d: int, payload: bytes, frame: _Frame, missing: int, out: list[Event]
    ) -> None:
        """A frame's payload is all there (or `missing` bytes of it were lost in a gap)."""
        errors: list[str] = []
        try:
            events = self._message(d, payload, frame, errors)
        except Exception as exc:  # a decoder reports, it never raises
            events = []
            errors.append(f"internal error: {exc!r}")
        if missing:
            errors = [f"{missing} bytes of the frame were not captured (gap)"]
        out.extend(events)
        if errors:  # rare: no generator for every frame
            out.extend(self._error(d, frame, reason) for reason in errors)

    # -- messages (§5.9–§5.11) --

    def _message(self, d: int, payload: bytes, frame: _Frame, errors: list[str]) -> list[Event]:
        if not payload:
            errors.append("no payload")
            return []
        cls = payload[0]
        if cls in REQUEST_CLASSES:
            return self._request(d, payload, frame, errors)
        if cls in ANSWER_CLASSES:
            return self._answer(d, payload, frame, errors)
        if cls == MSG_NO_SESSION:
            errors.append("message class 'N' (no session/object) is never sent")
        else:
            errors.append(f"unknown message class 0x{cls:02X}")
        return []

    def _request(self, d: int, payload: bytes, frame: _Frame, errors: list[str]) -> list[Event]:
        p = _Parsed()
        r = _Reader(payload, 1)
        try:
            _parse_request(r, payload[0], p)
            p.complete = True
        except _Malformed as exc:
            errors.append(str(exc))
        self._infer_controller(d, payload[0], p.command)
        target = self._target(d, p)
        if r.objrefs:
            for value in (p.args, p.named):
                self._record(d, value)
        rmis_call = self._rmis_call(d, p, target)
        rmis_release = self._rmis_release(d, p, target)
        if rmis_call and p.complete and (p.method or "").lower() == LC_BEGIN:
            self._name_begin_objects(d, p.args)
        method = target.dispid_name(p.dispid) if p.command == INVOKE and target else p.method
        # Fields by position, in their order (one Request per request frame: keywords would
        # cost a dict to build and take apart again, measured 1.6% of a dense run with Reply).
        request = Request(
            *self._where(d, frame),
            self._side(d),  # sender
            p.command,  # command
            p.object_id,  # object_id
            target.label() if target else None,  # object_name
            method,  # method
            p.dispid,  # dispid
            p.flags,  # flags
            self._named(d, p.args) if r.objrefs else p.args,  # args
            len(self._pending),  # depth
            self._named(d, p.named) if r.objrefs else p.named,  # named_args
        )
        pending = _Pending(d, request, p, target, None)
        events: list[Event] = [request]
        if rmis_call:
            events += self._rmis_call_events(pending, frame)
        elif rmis_release:
            pending.lifecycle = LC_RELEASE
        elif p.command == KEEP_ALIVE:
            events.append(KeepAliveK(*self._where(d, frame)))
        elif p.complete and target is not None and target.cls == SPOOLER_LOG:
            events += self._log_lines(request, target, frame)
        elif p.complete and target is not None and target.cls == SPOOLER_TASK:
            events += self._exit_code_put(request, target, frame)
        self._push(pending, errors)
        return events

    def _answer(self, d: int, payload: bytes, frame: _Frame, errors: list[str]) -> list[Event]:
        pending = self._pop(d, errors)
        a = _Answer()
        r = _Reader(payload, 1)
        try:
            if payload[0] == MSG_ERROR:
                _parse_error_strings(r, a)
            elif pending is not None:
                _parse_answer(r, pending.parsed, a)
            else:
                _parse_unpaired_answer(r, a)
        except _Malformed as exc:
            errors.append(str(exc))
        if pending is not None:
            self._learn(d, pending, a, r.objrefs > 0)
            if pending.lifecycle is None and pending.request.sender == UNKNOWN_SIDE:
                self._told_late(pending)
        elif r.objrefs:  # a new export is one whatever it answers (§12)
            self._record(d, a.result)
        fields = _error_fields(a.strings) if a.strings else _NO_FIELDS
        reply = Reply(  # fields by position, as the Request's
            *self._where(d, frame),
            self._side(d),  # sender
            pending.request if pending else None,  # request
            a.hr,  # hr
            self._named(d, a.result) if r.objrefs else a.result,  # result
            fields.get("name"),  # error_name
            fields.get("code"),  # error_code
            fields.get("what"),  # error_what
        )
        events: list[Event] = [reply]
        if pending is not None and pending.lifecycle:
            events += self._answered_events(pending, reply, errors)
        elif pending is None and _is_process_result(a.result):
            events += self._unpaired_step(reply, errors)
        if payload[0] == MSG_ERROR or (a.hr is not None and a.hr < 0):
            events.append(self._api_error(reply))
        return events

    # -- pairing (§5.2, §12) --

    def _push(self, pending: _Pending, errors: list[str]) -> None:
        if len(self._pending) >= MAX_PENDING:
            dropped = self._pending.pop(0).request
            errors.append(
                f"more than {MAX_PENDING} open requests; forgot the oldest"
                f" ({dropped.command} at offset {dropped.offset})"
            )
        self._pending.append(pending)

    def _pop(self, d: int, errors: list[str]) -> _Pending | None:
        """§5.2: an answer answers the most recent unanswered request the other side sent.
        Requests of its own sender above that one stay open: one sent while the other
        side's request was on its way (a K sent just after an answer, then the controller's
        next call, §5.1) is still answered; one whose answer the capture lost never is."""
        pending = self._pending
        for i in range(len(pending) - 1, -1, -1):
            if pending[i].direction != d:
                return pending.pop(i)
        errors.append("answer with no open request")
        return None

    def _infer_controller(self, d: int, cls: int, command: str) -> None:
        if cls == MSG_SESSION and not self._created:
            self._created = True
            self._controller = d
        elif self._controller is not None:
            return
        elif command == CALL:
            self._controller = d
        elif command in (GET_IDS_OF_NAMES, INVOKE) or cls == MSG_KEEP_ALIVE:
            self._controller = 1 - d

    def _side(self, d: int) -> str:
        if self._controller is None:
            return UNKNOWN_SIDE
        return CONTROLLER if d == self._controller else TASK_SERVER

    def _where(self, d: int, frame: _Frame) -> _Where:
        """The Event fields, in their order: events are built with `*where` (a dict of them
        given as keywords cost half a microsecond more an event)."""
        return (self.conn, d, frame.offset, frame.start, frame.end)

    def _error(self, d: int, frame: _Frame, reason: str) -> DecodeError:
        return DecodeError(*self._where(d, frame), channel="api", reason=reason)

    # -- objects (§5.6, §6.3, §12) --

    def _target(self, d: int, p: _Parsed) -> _Obj | None:
        """The object addressed by `O <id>`: exported by the receiver."""
        if p.object_id is None:
            return None
        key = (1 - d, p.object_id)
        obj = self._objects.get(key)
        if obj is None:
            obj = self._objects[key] = _Obj()
        if obj.cls is None and _looks_like_log_call(p):
            obj.cls = SPOOLER_LOG  # picked up mid-stream: begin not seen
        return obj

    def _lookup(self, d: int, object_id: int) -> _Obj | None:
        """An objref sent by direction d: its own export, or (is_new=0) the receiver's."""
        return self._objects.get((d, object_id)) or self._objects.get((1 - d, object_id))

    def _record(self, d: int, value: Any) -> None:
        for ref in _refs(value, []):
            if ref.is_new and ref.id:
                obj = self._objects.setdefault((d, ref.id), _Obj())
                obj.title, obj.clsid = ref.title, ref.clsid
                obj.cls = _class_of(ref) or obj.cls

    def _named(self, d: int, value: Any) -> Any:
        """The value with every known objref labelled (for readable messages)."""
        if not self.label_objrefs or not _refs(value, []):
            return value

        def label(ref: ObjRef) -> ObjRef:
            obj = self._lookup(d, ref.id) if ref.id else None
            name = obj.label() if obj else None
            return replace(ref, name=name) if name else ref

        return _map_refs(value, label)

    def _name_begin_objects(self, d: int, args: tuple[Any, ...]) -> None:
        """§6.3: begin(objects, names) — parameter order; the names went first on the wire."""
        if len(args) < 2:
            return
        for name_value, obj_value in zip(
            _array_elements(args[1]), _array_elements(args[0]), strict=False
        ):
            name = _text(name_value)
            ref = obj_value.value if isinstance(obj_value, Variant) else None
            if name and isinstance(ref, ObjRef) and ref.id:
                obj = self._lookup(d, ref.id)
                if obj is not None:
                    obj.name = name
                    obj.cls = name if name in CLASS_DISPIDS else obj.cls

    def _learn(self, d: int, pending: _Pending, a: _Answer, objrefs: bool) -> None:
        if objrefs:
            self._record(d, a.result)
        p = pending.parsed
        if p.command == CREATE_INSTANCE and isinstance(a.result, ObjRef) and a.result.id:
            self._rmis = (d, a.result.id)
            rmis = self._objects.setdefault(self._rmis, _Obj())
            rmis.name, rmis.cls = RMIS, RMIS
        elif p.command == GET_IDS_OF_NAMES and isinstance(a.result, tuple) and pending.target:
            # the answering side exports the object, so its DISPIDs are the ones named
            pending.target.learned.update(zip(a.result, p.names or (), strict=False))

    # -- lifecycle markers (§6.6) --

    def _rmis_call(self, d: int, p: _Parsed, target: _Obj | None) -> bool:
        """A call by name from the controller to the RMIS (§6.1)."""
        if p.command != CALL or self._side(d) != CONTROLLER or target is None:
            return False
        if self._rmis is None:  # CreateInstance not captured: C only calls the RMIS by name
            self._rmis = (1 - d, p.object_id or 0)
            target.name, target.cls = target.name or RMIS, RMIS
        return self._rmis == (1 - d, p.object_id)

    def _rmis_release(self, d: int, p: _Parsed, target: _Obj | None) -> bool:
        """The Release of the RMIS (§6.1 #9): the only object the controller releases (§5.2),
        so its Release names the RMIS when the capture began after the last call to it."""
        if p.command != RELEASE or self._side(d) != CONTROLLER:
            return False
        if self._rmis is None and target is not None:
            self._rmis = (1 - d, p.object_id or 0)
            target.name, target.cls = target.name or RMIS, RMIS
        return self._rmis == (1 - d, p.object_id)

    def _rmis_call_events(self, pending: _Pending, frame: _Frame) -> list[Event]:
        request, p = pending.request, pending.parsed
        if not p.method:
            return []
        where = self._where(request.direction, frame)
        events: list[Event] = [LifecycleCall(*where, name=_lifecycle_name(p.method, p.args))]
        method = p.method.lower()
        if method == LC_CONSTRUCT and p.complete:
            events.append(_construct_event(where, request.args))
        elif method == LC_BEGIN:
            pending.lifecycle = LC_BEGIN
        elif method == LC_STEP:
            self._steps += 1
            pending.lifecycle, pending.step = LC_STEP, self._steps
        return events

    def _answered_events(self, pending: _Pending, reply: Reply, errors: list[str]) -> list[Event]:
        where = self._where(reply.direction, _Frame(reply.offset, reply.start, reply.end))
        call_start = pending.request.start
        result = reply.result
        if pending.lifecycle == LC_BEGIN:
            started = result.value if isinstance(result, Variant) and result.vt == VT_BOOL else None
            return [BeginAnswered(*where, started=started, call_start=call_start)]
        if pending.lifecycle == LC_RELEASE:
            object_id = pending.request.object_id or 0
            return [ReleaseAnswered(*where, object_id=object_id, call_start=call_start)]
        fields: tuple[Any, ...] = (None, None, None, None)
        if isinstance(result, Variant) and result.vt == VT_BOOL:
            fields = (result.value, None, None, None)
        elif isinstance(result, Variant) and result.vt == VT_BSTR:
            fields, problems = _process_result(result.value)
            errors += problems
        result_flag, exit_code, signal, state_text = fields
        return [
            StepAnswered(
                *where,
                number=pending.step,
                call_start=call_start,
                result=result_flag,
                exit_code=exit_code,
                signal=signal,
                state_text=state_text,
            )
        ]

    def _told_late(self, pending: _Pending) -> None:
        """A request sent before the sides were known (picked up mid-stream: a Release
        first), answered once a later request told them: a Release the controller sent is
        the RMIS's (§5.2), so its answer ends the task as with the sides known."""
        if self._rmis_release(pending.direction, pending.parsed, pending.target):
            pending.lifecycle = LC_RELEASE

    def _unpaired_step(self, reply: Reply, errors: list[str]) -> list[Event]:
        """An answer whose call was not captured (the capture began in between) that is a
        <process.result>: only a shell job's step answers with one (§6.4)."""
        where = self._where(reply.direction, _Frame(reply.offset, reply.start, reply.end))
        fields, problems = _process_result(reply.result.value)
        errors += problems
        result_flag, exit_code, signal, state_text = fields
        return [
            StepAnswered(
                *where,
                number=0,
                call_start=None,
                result=result_flag,
                exit_code=exit_code,
                signal=signal,
                state_text=state_text,
            )
        ]

    def _api_error(self, reply: Reply) -> ApiError:
        where = self._where(reply.direction, _Frame(reply.offset, reply.start, reply.end))
        method = reply.request.method if reply.request else None
        if reply.hr is None:  # `E`
            return ApiError(
                *where, code=reply.error_code or "", text=reply.error_what or "", method=method
            )
        text = ""
        if isinstance(reply.result, InvokeFailure):
            info = reply.result.excepinfo
            text = info.description or info.source
        return ApiError(*where, code=hresult_text(reply.hr), text=text, method=method)

    def _log_lines(self, request: Request, target: _Obj, frame: _Frame) -> list[Event]:
        """DESIGN "log_lines": every string given to a spooler_log line method."""
        if target.cls != SPOOLER_LOG or not request.method:
            return []
        if request.command == INVOKE and not (request.flags or 0) & DISPATCH_METHOD:
            return []
        method = request.method.lower()
        if method not in LINE_METHODS or request.command not in (INVOKE, CALL):
            return []
        level: int | None = LINE_METHODS[method]
        args = request.args
        if method == "log" and args and _text(args[0]) is None:  # log(level, text)
            level, args = _integer(args[0]), args[1:]
        elif method == "log":  # its text alone: a string passed is a line all the same
            level = None
        # Every string passed (DESIGN): the engine's calls pass one; others, odd or hostile,
        # are counted as the words say rather than by a guess at which one is the text.
        texts = [text for text in map(_text, args) if text is not None]
        where = self._where(request.direction, frame)
        return [
            LogLine(*where, method=method, level=level, text=line)
            for text in texts
            for line in text.split("\n")
            if line.strip(LINE_WHITESPACE)
        ]

    def _exit_code_put(self, request: Request, target: _Obj, frame: _Frame) -> list[Event]:
        if target.cls != SPOOLER_TASK or request.command != INVOKE:
            return []
        if not (request.flags or 0) & (DISPATCH_PROPERTYPUT | DISPATCH_PROPERTYPUTREF):
            return []
        if (request.method or "").lower() != EXIT_CODE:
            return []
        exit_code = _integer(request.args[-1]) if request.args else None
        if exit_code is None:
            return []
        return [ExitCodePut(*self._where(request.direction, frame), exit_code=exit_code)]


def _class_of(ref: ObjRef) -> str | None:
    """Object class by CLSID (§5.6), else by the title's C++ class name."""
    return PROXY_CLASSES.get(ref.clsid or "") or TITLE_CLASSES.get(_short_title(ref.title) or "")


def _looks_like_log_call(p: _Parsed) -> bool:
    """§6.5 log forwarding: Invoke DISPID 14, METHOD, (VT_I4 level, VT_BSTR text)."""
    return (
        p.command == INVOKE
        and p.dispid == LOG_DISPID
        and bool((p.flags or 0) & DISPATCH_METHOD)
        and len(p.args) == 2
        and _integer(p.args[0]) is not None
        and _text(p.args[1]) is not None
    )
