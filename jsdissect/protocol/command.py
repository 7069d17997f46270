"""The XML command channel (PROTOCOL.md §3): controller → remote scheduler port.

Client bytes are cut into commands by an incremental copy of R's XML end finder (§3.1), server
bytes into answers at each NUL (§3.2). A connection whose first byte is `A`–`Z` is HTTP (§3.3,
§3.9) and is framed by HTTP headers instead. Parsing is hardened (defusedxml, no DTD, a size
bound per message); bad input becomes a `DecodeError` event, never an exception.
"""

from __future__ import annotations

import codecs
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import NamedTuple, TypeVar
from urllib.parse import unquote
from xml.etree.ElementTree import Element, ParseError, TreeBuilder, XMLParser

from defusedxml import DefusedXmlException
from defusedxml.ElementTree import DefusedXMLParser

from jsdissect.protocol import DecodeError, Event, record
from jsdissect.tcp import CLIENT_TO_SERVER, SERVER_TO_CLIENT

# --- constants -----------------------------------------------------------------------------

CHANNEL = "cmd"
NUL, EOT, LF, CR, SPACE = 0x00, 0x04, 0x0A, 0x0D, 0x20  # §3.1, §3.2, §3.3, §3.7
LT, SLASH = 0x3C, 0x2F
DEFAULT_ENCODING = "iso-8859-1"  # §3.1, §3.2
START = "remote_scheduler.start_remote_task"  # §3.6.1
KILL = "remote_scheduler.remote_task.kill"  # §3.6.2
CLOSE = "remote_scheduler.remote_task.close"  # §3.6.3
KILL_TRUE = frozenset({"yes", "true", "1"})  # §3.6.3 kill='yes'
# R and C parse a command or answer from its bytes with the JVM's XML parser
# (`CppXmlUtils.loadXml`, §3.1, §3.2), which takes a UTF-8 byte order mark as the document's
# first bytes (no text: what follows is UTF-8 unless a prolog names another encoding), and
# refuses one anywhere else. R's end finder does not skip it: a request it begins is
# "non-XML" (§3.1).
UTF8_BOM = b"\xef\xbb\xbf"
# After a gap, a command is only trusted from one of these (§12 "Recognising the CMD
# channel"), a BOM before it being the document's own first bytes.
RESYNC_MARKERS = (
    b"<?xml",
    b"<remote_scheduler.",
    UTF8_BOM + b"<?xml",
    UTF8_BOM + b"<remote_scheduler.",
)
ANSWER_MARKER = b"<?xml"  # every answer starts with the declaration (§3.4, §3.6)
# Hardening, not protocol: bounds on what one message may make us hold.
MAX_MESSAGE = 1 << 20  # bytes of one command, answer or HTTP body
MAX_HTTP_HEAD = 64 << 10  # bytes of HTTP request/status line plus headers
MAX_HTTP_LINE = 1024  # a chunk-size or trailer line
MAX_KEEPALIVE_RUN = 4096  # spaces per KeepAlive event
MAX_HTTP_PENDING = 64  # HTTP requests waiting for their responses
# Commands waiting for their answers: more than one only when the capture lost an answer or
# has it later (§3.1: C sends a command after the previous answer), so a few suffice.
MAX_PENDING = 16
MAX_TREE_DEPTH = 3  # elements kept: <spooler><answer><process/> or <spooler><command><x/>

# Python codecs a prolog can name that are no character set: Python's own "Python Specific
# Encodings" (codecs docs), by codecs.lookup() name. The escape codecs interpret backslashes
# in the document (and warn about invalid ones on every message); punycode takes time
# quadratic in the length (a 1 MB answer: 53 s of CPU), and idna runs it on each `xn--` label.
# The engine writes ISO-8859-1 (§3.1, §3.2): such a document is read as that. (Bytes-to-bytes
# codecs such as base64 or zlib are no text encodings: bytes.decode() refuses them.)
NOT_CHARSETS = frozenset(
    {
        "idna",
        "mbcs",
        "oem",
        "palmos",
        "punycode",
        "raw-unicode-escape",
        "undefined",
        "unicode-escape",
    }
)
ENCODING_RE = re.compile(rb"""\s*<\?xml[^>]*?\bencoding\s*=\s*["']([A-Za-z0-9._:\-]+)["']""")
SPACE_RUN_RE = re.compile(rb" +")  # §3.7 keep-alive spaces
SKIP_TO_RE = re.compile(rb"[ <\xef]")  # resynchronising: a marker (or its BOM), or spaces
RESYNC_FIRST = frozenset((LT, UTF8_BOM[0]))
IDLE_RE = re.compile(rb"[\x00\s]+")  # between answers
NON_XML_END_RE = re.compile(rb"[<\n]")  # §3.1 non-XML request ends at a newline outside tags
HTTP_HEAD_END_RE = re.compile(rb"\r?\n\r?\n")
HTTP_REQUEST_RE = re.compile(rb"[A-Z][A-Za-z-]* \S+ HTTP/\d")  # §3.9
HTTP_STATUS_RE = re.compile(rb"HTTP/\d")
# A number the engine writes (a port, a pid, a length): ASCII digits only. Python's int()
# would take signs, underscores and any script's digits too.
DIGITS_RE = re.compile(r"[ \t\r\n]*([0-9]+)[ \t\r\n]*")


FOREIGN_WINDOW = 64  # first bytes looked at, as the plugin looks (its tvb:raw window)
BLANK = b" \t\r\n\x00"  # keep-alive spaces, NUL padding, XML whitespace


def foreign_start(data: bytes) -> bool | None:
    """§3.3: R reads a first request beginning A-Z as HTTP and anything else as XML (or a
    plain command name): one that begins with a byte no XML document, command name or
    Ctrl-D begins with, after blanks and a UTF-8 BOM, is another protocol on the port (a
    TLS client, a scanner's probe), which R would refuse. None: only blanks so far."""
    head = data[:FOREIGN_WINDOW].lstrip(BLANK)
    if head.startswith(UTF8_BOM):
        head = head[len(UTF8_BOM) :].lstrip(BLANK)
    if not head:
        return None
    first = head[0]
    return not (first in (LT, EOT) or 0x41 <= first <= 0x5A or 0x61 <= first <= 0x7A)


def _past_bom(data: bytes) -> bytes:
    """`data` past a UTF-8 BOM it begins with; empty while it may still become one."""
    if data.startswith(UTF8_BOM):
        return data[len(UTF8_BOM) :]
    return b"" if UTF8_BOM.startswith(data) else data


# --- commands (client → server) ---------------------------------------------------------


@record
class StartRemoteTask(Event):  # §3.6.1
    tcp_port: int | None
    kind: str | None  # "process" or None
    java_options: str | None
    java_classpath: str | None
    ip_address: str | None  # older agents; accepted defensively (DESIGN "Matching")


@record
class RemoteTaskClose(Event):  # §3.6.3
    process_id: str | None
    kill: bool


@record
class RemoteTaskKill(Event):  # §3.6.2
    process_id: str | None
    signal: str | None


@record
class OtherCommand(Event):  # §3.5: any other command, kept generically
    name: str
    attrs: tuple[tuple[str, str], ...]


@record
class KeepAlive(Event):  # §3.7: run of 0x20 bytes before a command
    count: int
    # Capture time of each piece that brought spaces, once while it stays the same: each
    # space's own time when C sends them (one per period), and no time per space of a long
    # run in one piece (16 MiB of spaces held 641 MiB of times).
    times: tuple[int, ...]


@record
class HttpRequest(Event):  # §3.9
    request_line: str
    body_command: str | None  # element name of an XML body, if any


# --- answers (server → client) -------------------------------------------------------------


@record
class Answer(Event):  # §3.2/§3.4: one NUL-terminated answer document
    command: str | None  # element name of the command it answers (in-order pairing)
    command_offset: int | None  # stream offset of that command
    time: str | None  # the answer's `time` attribute as sent


@record
class ProcessAnswer(Answer):  # §3.6.1
    process_id: str | None
    pid: int | None


@record
class Ok(Answer):
    pass


@record
class ErrorAnswer(Answer):  # §3.4 <ERROR>
    code: str | None
    text: str | None
    attrs: tuple[tuple[str, str], ...]


@record
class OtherAnswer(Answer):
    name: str  # first element inside <answer>, or the root element
    attrs: tuple[tuple[str, str], ...]


@record
class HttpResponse(Answer):  # §3.9: one HTTP response (no NUL); `time` from an XML body
    status_line: str
    status: int | None


# --- XML parsing --------------------------------------------------------------------------


class Malformed(Exception):
    """A message that cannot be decoded; becomes a DecodeError with this reason."""


class Span(NamedTuple):
    """The Event fields every record of one message shares."""

    conn: str
    direction: int
    offset: int
    start: int
    end: int


class _ShallowTree:
    """Parser target keeping only the top MAX_TREE_DEPTH levels, so a deeply nested
    hostile document costs no memory beyond the parser's own."""

    def __init__(self) -> None:
        self._builder = TreeBuilder()
        self._depth = 0

    def start(self, tag: str, attrs: dict[str, str]) -> None:
        self._depth += 1
        if self._depth <= MAX_TREE_DEPTH:
            self._builder.start(tag, attrs)

    def end(self, tag: str) -> None:
        if self._depth <= MAX_TREE_DEPTH:
            self._builder.end(tag)
        self._depth -= 1

    def close(self) -> Element:
        return self._builder.close()


def _text_of(raw: bytes) -> str:
    """Decode with the encoding the document names, ISO-8859-1 when it names none or one
    that is unknown or does not decode it. A prolog names one; a UTF-8 BOM first is no
    text and names UTF-8, unless a prolog after it names another (as the JVM parser R and
    C use reads it, see UTF8_BOM)."""
    named: str | None = None
    if raw.startswith(UTF8_BOM):
        raw, named = raw[len(UTF8_BOM) :], "utf-8"
    m = ENCODING_RE.match(raw)
    if m:
        named = m.group(1).decode("ascii")
    if named is not None:
        try:
            codec = codecs.lookup(named)
            if codec.name not in NOT_CHARSETS:
                return raw.decode(codec.name)
        except (LookupError, UnicodeError, ValueError):
            pass
    return raw.decode(DEFAULT_ENCODING)


def parse_xml(raw: bytes) -> Element:
    """Hardened parse: no DTD, no entity declarations, no external references."""
    try:
        text = _text_of(raw)
        if text.startswith("\ufeff"):
            # a second BOM: expat, fed text, would take it for the first (the JVM does not)
            raise Malformed("not well-formed XML: a second byte order mark")
        parser: XMLParser | DefusedXMLParser
        if "<!" in text:
            parser = DefusedXMLParser(
                target=_ShallowTree(), forbid_dtd=True, forbid_entities=True, forbid_external=True
            )
        else:
            # Every construct defusedxml forbids is declared in a DTD, which starts with
            # "<!": without one, the C parser builds the same tree in half the time
            # (defusedxml extends the pure-Python parser to install its handlers).
            parser = XMLParser(target=_ShallowTree())
        parser.feed(text)
        return parser.close()
    except DefusedXmlException as e:
        raise Malformed(f"forbidden XML construct: {e}") from None
    except ParseError as e:
        raise Malformed(f"not well-formed XML: {e}") from None
    except (UnicodeError, ValueError) as e:  # e.g. a declared codec that yields surrogates
        raise Malformed(f"undecodable text: {e}") from None


def _name(tag: str) -> str:
    return tag.rpartition("}")[2]


def _attrs(el: Element) -> tuple[tuple[str, str], ...]:
    return tuple((_name(k), v) for k, v in el.attrib.items())


def _attr(el: Element, name: str) -> str | None:
    for key, value in el.attrib.items():
        if _name(key) == name:
            return value
    return None


def _int(text: str | None) -> int | None:
    """A number written in ASCII digits, else None: none of the numbers read here (ports,
    pids, HTTP lengths and status codes) is ever negative."""
    m = DIGITS_RE.fullmatch(text) if text is not None else None
    try:
        return int(m.group(1)) if m else None
    except ValueError:  # beyond Python's limit on the digits of a str → int conversion
        return None


def _child(el: Element, name: str) -> Element | None:
    return next((c for c in el if _name(c.tag) == name), None)


def command_root(raw: bytes) -> Element:
    """§3.1: leading spaces stripped; a request without any `<` is `<request/>`. A UTF-8
    BOM may begin a document (UTF8_BOM); before a plain command name R wraps it into the
    name (`<\xef\xbb\xbfshow_state/>`), which its parser refuses."""
    text = raw.replace(b"\x00", b"").strip()
    if text.removeprefix(UTF8_BOM).lstrip().startswith(b"<"):
        return parse_xml(text)
    if b"<" in text or text.startswith(UTF8_BOM):
        raise Malformed("request neither XML nor a plain command name")
    return parse_xml(b"<" + text + b"/>")


def command_elements(root: Element) -> list[Element]:
    """§3.4: `<spooler><command>…` and `<commands>…` wrap the real commands."""
    name = _name(root.tag)
    holder = _child(root, "command") if name == "spooler" else root
    if name in ("spooler", "commands") and holder is not None and len(holder):
        return list(holder)
    return [root]


def command_event(el: Element, span: Span) -> Event:
    name = _name(el.tag)
    base = span._asdict()
    if name == START:
        return StartRemoteTask(
            **base,
            # as announced, even outside the TCP range: a corrupt start shows what it said
            tcp_port=_int(_attr(el, "tcp_port")),
            kind=_attr(el, "kind"),
            java_options=_attr(el, "java_options"),
            java_classpath=_attr(el, "java_classpath"),
            ip_address=_attr(el, "ip_address"),
        )
    if name == CLOSE:
        kill = (_attr(el, "kill") or "").strip().lower() in KILL_TRUE
        return RemoteTaskClose(**base, process_id=_attr(el, "process_id"), kill=kill)
    if name == KILL:
        return RemoteTaskKill(
            **base, process_id=_attr(el, "process_id"), signal=_attr(el, "signal")
        )
    return OtherCommand(**base, name=name, attrs=_attrs(el))


def decode_command(raw: bytes, span: Span) -> tuple[str, list[Event]]:
    """The name of the (first) command and one event per command element."""
    elements = command_elements(command_root(raw))
    return _name(elements[0].tag), [command_event(el, span) for el in elements]


def answer_event(
    root: Element, span: Span, command: str | None, command_offset: int | None
) -> Answer:
    """§3.4: <spooler><answer time>RESULT</answer></spooler>; an ERROR child wins."""
    answer = root if _name(root.tag) == "answer" else _child(root, "answer")
    base = dict(
        span._asdict(),
        command=command,
        command_offset=command_offset,
        time=_attr(answer, "time") if answer is not None else None,
    )
    holder = answer if answer is not None else root
    error = _child(holder, "ERROR")
    if error is None and answer is None:
        error = next(root.iter("ERROR"), None)
    if error is not None:
        return ErrorAnswer(
            **base, code=_attr(error, "code"), text=_attr(error, "text"), attrs=_attrs(error)
        )
    if answer is None:
        return OtherAnswer(**base, name=_name(root.tag), attrs=_attrs(root))
    if not len(answer):
        return OtherAnswer(**base, name="answer", attrs=_attrs(answer))
    first = answer[0]
    name = _name(first.tag)
    if name == "process":
        return ProcessAnswer(
            **base, process_id=_attr(first, "process_id"), pid=_int(_attr(first, "pid"))
        )
    if name == "ok":
        return Ok(**base)
    return OtherAnswer(**base, name=name, attrs=_attrs(first))


# --- framing helpers ------------------------------------------------------------------------


class _Message:
    """Bytes of one message as they arrive: place, times, and a bounded buffer."""

    __slots__ = ("chunks", "end", "limit", "offset", "size", "start")

    def __init__(self, offset: int, ts: int, limit: int = MAX_MESSAGE) -> None:
        self.offset = offset
        self.start = ts
        self.end = ts
        self.size = 0
        self.limit = limit
        self.chunks: list[bytes] | None = []  # None once beyond `limit`

    def add(self, data: bytes, a: int, b: int, ts: int) -> None:
        if b <= a:
            return
        self.end = max(self.end, ts)
        self.size += b - a
        if self.chunks is not None:
            if self.size > self.limit:
                self.chunks = None  # keep counting, stop holding
            else:
                self.chunks.append(data[a:b])

    @property
    def oversize(self) -> bool:
        return self.chunks is None

    def payload(self) -> bytes:
        return b"".join(self.chunks or ())

    def span(self, conn: str, direction: int) -> Span:
        return Span(conn, direction, self.offset, self.start, self.end)


class EndFinder:
    """§3.1 `Xml_end_finder` as a state machine that resumes where the last piece ended."""

    OUT = 0
    AFTER_LT = 1
    START_TAG = 2
    END_TAG = 3
    SPECIAL = 4

    def __init__(self, non_xml: bool) -> None:
        self.non_xml = non_xml
        self.state = self.OUT
        self.depth = 0
        self.slash = False  # last non-NUL byte inside a start tag was `/`

    def scan(self, data: bytes, pos: int) -> int | None:
        """Index just after the byte that completes the request, or None."""
        n = len(data)
        while pos < n:
            if self.state == self.OUT:
                j = self._next_mark(data, pos)
                if j < 0:
                    return None
                if data[j] == LF:  # only searched for in a non-XML request
                    return j + 1
                self.state, pos = self.AFTER_LT, j + 1
            elif self.state == self.AFTER_LT:
                pos = self._after_lt(data, pos)
            else:
                j = data.find(b">", pos)
                self._track_slash(data, pos, n if j < 0 else j)
                if j < 0:
                    return None
                tag, self.state = self.state, self.OUT
                if self._closes(tag):
                    return j + 1
                pos = j + 1
        return None

    def _next_mark(self, data: bytes, pos: int) -> int:
        """Next `<` (or, in a non-XML request, `\n`) outside a tag; -1 if none."""
        if not self.non_xml:
            return data.find(b"<", pos)
        m = NON_XML_END_RE.search(data, pos)
        return m.start() if m else -1

    def _after_lt(self, data: bytes, pos: int) -> int:
        b = data[pos]
        if b == NUL:
            return pos + 1
        if b == SLASH:
            self.state = self.END_TAG
            return pos + 1
        if (0x41 <= b <= 0x5A) or (0x61 <= b <= 0x7A):
            self.state, self.slash = self.START_TAG, False
            return pos + 1
        self.state = self.SPECIAL  # `<?…>`, `<!…>`: do not count; this byte may be the `>`
        return pos

    def _track_slash(self, data: bytes, a: int, b: int) -> None:
        if self.state != self.START_TAG:
            return
        k = b - 1
        while k >= a and data[k] == NUL:
            k -= 1
        if k >= a:
            self.slash = data[k] == SLASH

    def _closes(self, tag: int) -> bool:
        if tag == self.START_TAG:
            if self.slash:
                return self.depth == 0
            self.depth += 1
        elif tag == self.END_TAG:
            # An end tag at depth 0 also completes (the defensive choice: never swallow
            # the rest of the stream after a stray end tag).
            self.depth = max(self.depth - 1, 0)
            return self.depth == 0
        return False


class _KeepAliveRun:
    """§3.7: spaces between commands, with the times of the pieces they came in."""

    def __init__(self) -> None:
        self.offset = 0
        self.times: list[int] = []
        self.count = 0

    def add(self, offset: int, ts: int, count: int) -> None:
        if not self.count:
            self.offset = offset
        if not self.times or self.times[-1] != ts:
            self.times.append(ts)
        self.count += count

    def take(self, conn: str) -> KeepAlive | None:
        if not self.count:
            return None
        times = tuple(self.times)
        event = KeepAlive(
            conn, CLIENT_TO_SERVER, self.offset, times[0], max(times), self.count, times
        )
        self.times, self.count = [], 0
        return event


# --- HTTP (§3.9) ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class HttpMessage:
    """A framed HTTP message; `body` is None when it exceeded MAX_MESSAGE."""

    span: Span
    start_line: str
    headers: dict[str, str]
    body: bytes | None


def http_framing(headers: dict[str, str], default: str) -> str:
    """How the body ends: "chunked", "length" (Content-Length), or `default`."""
    if "chunked" in headers.get("transfer-encoding", "").lower():
        return "chunked"
    return "length" if "content-length" in headers else default


class HttpStream:
    """One direction of an HTTP connection: a head, then a Content-Length, chunked or
    until-close body. After a gap it resumes at a piece that begins a new message."""

    HEAD = 0
    BODY = 1
    CHUNK_LINE = 2
    CHUNK_DATA = 3
    CHUNK_END = 4
    TRAILER = 5
    UNTIL_CLOSE = 6
    LOST = 7

    def __init__(
        self, conn: str, direction: int, framing: Callable[[str, dict[str, str]], str]
    ) -> None:
        self.conn = conn
        self.direction = direction
        self.framing = framing  # (start line, headers) → "none"/"length"/"chunked"/"close"
        self.state = self.HEAD
        self.msg: _Message | None = None  # place and times of the whole message
        self.body = _Message(0, 0)  # its body, bounded
        self.head = bytearray()
        self.line = bytearray()
        self.remaining = 0
        self.start_line = ""
        self.headers: dict[str, str] = {}

    def feed(self, offset: int, data: bytes, ts: int) -> list[HttpMessage | DecodeError]:
        out: list[HttpMessage | DecodeError] = []
        if self.state == self.LOST:
            pattern = HTTP_REQUEST_RE if self.direction == CLIENT_TO_SERVER else HTTP_STATUS_RE
            if not pattern.match(data):
                return out
            self.state = self.HEAD
        pos = 0
        while pos < len(data) and self.state != self.LOST:
            if self.state == self.HEAD:
                pos = self._head(offset, data, pos, ts, out)
            elif self.state in (self.BODY, self.CHUNK_DATA, self.UNTIL_CLOSE):
                pos = self._body(data, pos, ts, out)
            else:
                pos = self._line(data, pos, ts, out)
        return out

    def gap(self) -> DecodeError | None:
        error = self._partial("gap inside an HTTP message")
        self.state = self.LOST
        return error

    def close(self) -> HttpMessage | DecodeError | None:
        if self.state == self.UNTIL_CLOSE and self.msg is not None:
            return self._finish()
        return self._partial("connection ended inside an HTTP message")

    def lose(self) -> None:
        self._partial("")
        self.state = self.LOST

    def _head(self, offset: int, data: bytes, pos: int, ts: int, out: list) -> int:
        if self.msg is None:
            while pos < len(data) and data[pos] in (CR, LF):
                pos += 1  # blank lines between messages are tolerated
            if pos == len(data):
                return pos
            self.msg = _Message(offset + pos, ts, limit=0)
        before = len(self.head)
        self.head += data[pos:]
        m = HTTP_HEAD_END_RE.search(self.head, max(before - 3, 0))
        if m is None:
            self.msg.add(data, pos, len(data), ts)
            if len(self.head) > MAX_HTTP_HEAD:
                self._lose(f"HTTP head longer than {MAX_HTTP_HEAD} bytes", out)
            return len(data)
        stop = pos + m.end() - before
        self.msg.add(data, pos, stop, ts)
        self._parse_head(bytes(self.head[: m.start()]), out)
        self.head.clear()
        if self.state == self.BODY and self.remaining == 0:
            out.append(self._finish())
        return stop

    def _parse_head(self, head: bytes, out: list) -> None:
        lines = head.decode("latin-1").replace("\r", "").split("\n")
        self.start_line = lines[0]
        self.headers = {}
        for line in lines[1:]:
            key, sep, value = line.partition(":")
            if sep:
                self.headers[key.strip().lower()] = value.strip()
        framing = self.framing(self.start_line, self.headers)
        self.remaining = 0
        self.state = self.BODY
        if framing == "chunked":
            self.state = self.CHUNK_LINE
        elif framing == "close":
            self.state = self.UNTIL_CLOSE
        elif framing == "length":
            length = _int(self.headers["content-length"])
            if length is None or length < 0:
                self._lose("bad Content-Length", out)
            else:
                self.remaining = length

    def _body(self, data: bytes, pos: int, ts: int, out: list) -> int:
        assert self.msg is not None
        stop = len(data)
        if self.state != self.UNTIL_CLOSE:
            stop = min(stop, pos + self.remaining)
            self.remaining -= stop - pos
        self.msg.add(data, pos, stop, ts)
        self.body.add(data, pos, stop, ts)
        if self.remaining == 0 and self.state == self.BODY:
            out.append(self._finish())
        elif self.remaining == 0 and self.state == self.CHUNK_DATA:
            self.state = self.CHUNK_END
        return stop

    def _line(self, data: bytes, pos: int, ts: int, out: list) -> int:
        """A chunk-size line, the CRLF after a chunk, or a trailer line."""
        assert self.msg is not None
        j = data.find(b"\n", pos)
        stop = len(data) if j < 0 else j + 1
        self.msg.add(data, pos, stop, ts)
        self.line += data[pos:stop]
        if len(self.line) > MAX_HTTP_LINE:
            self._lose("HTTP chunk or trailer line too long", out)
            return stop
        if j < 0:
            return stop
        line = bytes(self.line).strip()
        self.line.clear()
        if self.state == self.CHUNK_END:
            self.state = self.CHUNK_LINE
        elif self.state == self.TRAILER:
            if not line:
                out.append(self._finish())
        else:
            self._chunk_size(line, out)
        return stop

    def _chunk_size(self, line: bytes, out: list) -> None:
        try:
            size = int(line.split(b";")[0], 16)
        except ValueError:
            size = -1
        if size < 0:
            self._lose("bad HTTP chunk size", out)
        elif size == 0:
            self.state = self.TRAILER
        else:
            self.state, self.remaining = self.CHUNK_DATA, size

    def _partial(self, reason: str) -> DecodeError | None:
        msg, self.msg = self.msg, None
        self.head.clear()
        self.line.clear()
        self.body = _Message(0, 0)
        self.state = self.HEAD
        if msg is None:
            return None
        return DecodeError(*msg.span(self.conn, self.direction), channel=CHANNEL, reason=reason)

    def _lose(self, reason: str, out: list) -> None:
        error = self._partial(reason)
        if error is not None:
            out.append(error)
        self.state = self.LOST

    def _finish(self) -> HttpMessage:
        assert self.msg is not None
        body = None if self.body.oversize else self.body.payload()
        span = self.msg.span(self.conn, self.direction)
        message = HttpMessage(span, self.start_line, self.headers, body)
        self.msg, self.body, self.state = None, _Message(0, 0), self.HEAD
        return message


def http_status(status_line: str) -> int | None:
    parts = status_line.split(" ", 2)
    return _int(parts[1]) if len(parts) > 1 else None


def http_command(m: HttpMessage) -> bytes | None:
    """The command an HTTP request carries: its body (POST), or a GET path `/<show_…/>`."""
    method, _, rest = m.start_line.partition(" ")
    if method == "GET":
        path = unquote(rest.rpartition(" ")[0] or rest, encoding="latin-1")
        return path[1:].encode("latin-1") if path.startswith("/<") else None
    return m.body if m.body is None or m.body.strip() else None


def http_answer(m: HttpMessage, command: str | None, command_offset: int | None) -> Answer | None:
    """The `<spooler><answer>` document in a response body, if that is what it holds."""
    body = (m.body or b"").strip()
    if not body.startswith(b"<"):
        return None
    try:
        root = parse_xml(body)
    except Malformed:
        return None  # static files, logs: not an answer, not an error
    if _name(root.tag) not in ("spooler", "answer"):
        return None
    return answer_event(root, m.span, command, command_offset)


# --- the decoder ----------------------------------------------------------------------------

# Client-side modes.
FIRST, IDLE, COMMAND, PROBE, SKIP, ENDED, HTTP = range(7)
# Server-side modes (plain protocol).
S_IDLE, S_ANSWER, S_DROP = range(3)


class CommandDecoder:
    """One per command connection. `feed` bytes of either direction; events come out.

    `midstream=True` (connection picked up without its beginning) makes both sides wait for
    a boundary they can trust, as after a gap.

    Resynchronisation: after a gap in the client stream, bytes are skipped until a command
    marker (`<?xml` or `<remote_scheduler.`, §12) or until the server completes an answer
    (one command at a time, §3.1: the next client byte then starts a command). After a gap
    in the server stream the bytes up to the next NUL are dropped, unless they begin with
    `<?xml` (every answer does, §3.4), i.e. unless the gap ended at an answer boundary: a
    gap that took an answer's end with its NUL must not take the next answer too.
    """

    def __init__(self, conn: str, midstream: bool = False) -> None:
        self.conn = conn
        self._out: list[Event] = []
        self._closed = False
        self._client = SKIP if midstream else FIRST
        self._cmd: _Message | None = None
        self._finder = EndFinder(non_xml=False)
        self._probe = bytearray()
        self._spaces = _KeepAliveRun()
        self._after_spaces = False  # R then sees a non-XML request (§3.7)
        # Picked up mid-stream, and only spaces skipped so far: they are keep-alives (§3.7)
        # if a command follows; after other bytes or a gap, a lost document's.
        self._leading_spaces = midstream
        self._end_reported = False
        self._server = S_IDLE
        self._verify = midstream  # the next answer must start with ANSWER_MARKER
        self._in_lost_answer = False  # bytes up to the next NUL may end a reported answer
        self._answer: _Message | None = None
        self._cmd_answered = False  # the command arriving was answered (its rest lost)
        # (command name, offset) of the commands whose answers have not come yet, oldest
        # first: an answer answers the oldest (§3.1, one command at a time). Lists, not
        # deques: a deque takes 0.4 KB at once, and every SYN to a scheduler port (a scan,
        # a flood) makes a decoder (found in review).
        self._pending: list[tuple[str | None, int]] = []
        self._http_pending: list[tuple[str | None, int, str]] = []
        self._http: dict[int, HttpStream] = {}

    # -- public --

    def feed(self, direction: int, offset: int, data: bytes, ts: int) -> list[Event]:
        if self._closed or not data:
            return []
        try:
            if self._client == HTTP or (direction == CLIENT_TO_SERVER and self._becomes_http(data)):
                self._feed_http(direction, offset, data, ts)
            elif direction == CLIENT_TO_SERVER:
                self._feed_client(offset, data, ts)
            else:
                self._feed_server(offset, data, ts)
        except Exception as e:  # safety net: one odd connection must not end an analysis
            self._error(direction, offset, ts, ts, f"internal decoder error: {e!r}")
            self._desync(direction)
        return self._take()

    def gap(self, direction: int, offset: int, size: int, ts: int) -> list[Event]:
        if self._closed:
            return []
        where = f"({size} bytes missing at offset {offset})"
        if self._client == HTTP:
            self._emit(self._http[direction].gap())
        elif direction == CLIENT_TO_SERVER:
            self._client_gap(where)
        else:
            self._server_gap(where)
        return self._take()

    def close(self) -> list[Event]:
        """End of connection: an unfinished command/answer becomes a DecodeError."""
        if self._closed:
            return []
        self._closed = True
        if self._client == HTTP:
            self._emit(self._http[CLIENT_TO_SERVER].close())
            self._emit(self._http[SERVER_TO_CLIENT].close())
            return self._take()
        self._flush_spaces()
        if self._cmd is not None and self._client == COMMAND:
            self._error_at(self._cmd, CLIENT_TO_SERVER, "connection ended inside a command")
        if self._answer is not None:
            self._error_at(self._answer, SERVER_TO_CLIENT, "connection ended inside an answer")
        return self._take()

    # -- events --

    def _take(self) -> list[Event]:
        out, self._out = self._out, []
        return out

    def _error(self, direction: int, offset: int, start: int, end: int, reason: str) -> None:
        self._out.append(
            DecodeError(self.conn, direction, offset, start, end, channel=CHANNEL, reason=reason)
        )

    def _error_at(self, msg: _Message, direction: int, reason: str) -> None:
        self._error(direction, msg.offset, msg.start, msg.end, reason)

    def _desync(self, direction: int) -> None:
        if self._client == HTTP:
            self._http[direction].lose()
        elif direction == CLIENT_TO_SERVER:
            self._cmd = None
            self._client = ENDED if self._client == ENDED else SKIP
            self._drop_leading_spaces()
        else:
            self._answer = None
            self._server = S_DROP

    # -- client: commands (§3.1, §3.3, §3.7) --

    def _feed_client(self, offset: int, data: bytes, ts: int) -> None:
        pos = 0
        while pos < len(data):
            mode = self._client
            if mode in (FIRST, IDLE):
                pos = self._idle(offset, data, pos, ts)
            elif mode == COMMAND:
                pos = self._command(data, pos, ts)
            elif mode == PROBE:
                pos = self._probe_step(data, pos, ts)
            elif mode == SKIP:
                pos = self._skip(offset, data, pos, ts)
            else:
                self._after_end(offset + pos, ts)
                return

    def _idle(self, offset: int, data: bytes, pos: int, ts: int) -> int:
        b = data[pos]
        if b in (CR, LF):  # §3.3 a lone newline is ignored (and ends R's request of spaces)
            self._flush_spaces()
            self._after_spaces = False
            return pos + 1
        self._client = IDLE  # the first byte is not `A`–`Z`: not HTTP (§3.3)
        if b == SPACE:
            run = SPACE_RUN_RE.match(data, pos)
            assert run is not None  # data[pos] is a space: the run holds at least that one
            end = run.end()
            self._add_spaces(offset + pos, ts, end - pos)
            return end
        if b == NUL:  # §3.1 skipped
            return pos + 1
        self._flush_spaces()
        if b == EOT:  # §3.3 Ctrl-D: R closes the connection
            self._client = ENDED
            return pos + 1
        self._start_command(offset + pos, ts, non_xml=b != LT or self._after_spaces)
        self._after_spaces = False
        return pos

    def _start_command(self, offset: int, ts: int, non_xml: bool) -> None:
        self._cmd = _Message(offset, ts)
        self._finder = EndFinder(non_xml=non_xml)
        self._client = COMMAND
        self._command_begins()

    def _command_begins(self) -> None:
        # The client sends a command only after the whole answer before it (§3.1): what the
        # server sends from now on is no lost answer's rest, even if its NUL was not seen.
        self._in_lost_answer = False
        self._cmd_answered = False
        if self._server == S_DROP:
            self._server = S_IDLE
            self._verify = True

    def _add_spaces(self, offset: int, ts: int, count: int) -> None:
        self._after_spaces = True
        while count:
            take = min(count, MAX_KEEPALIVE_RUN - self._spaces.count)
            self._spaces.add(offset, ts, take)
            offset, count = offset + take, count - take
            if self._spaces.count >= MAX_KEEPALIVE_RUN:
                self._flush_spaces()

    def _flush_spaces(self) -> None:
        event = self._spaces.take(self.conn)
        if event is not None:
            self._out.append(event)

    def _command(self, data: bytes, pos: int, ts: int) -> int:
        assert self._cmd is not None
        end = self._finder.scan(data, pos)
        stop = len(data) if end is None else end
        self._cmd.add(data, pos, stop, ts)
        if end is not None:
            self._finish_command()
        return stop

    def _finish_command(self) -> None:
        msg, self._cmd = self._cmd, None
        assert msg is not None
        self._client = IDLE
        name = None
        if msg.oversize:
            reason = f"command larger than {MAX_MESSAGE} bytes ({msg.size} bytes)"
            self._error_at(msg, CLIENT_TO_SERVER, reason)
        else:
            try:
                span = msg.span(self.conn, CLIENT_TO_SERVER)
                name, events = decode_command(msg.payload(), span)
                self._out += events
            except Malformed as e:
                self._error_at(msg, CLIENT_TO_SERVER, str(e))
        _wait(self._pending, (name, msg.offset), MAX_PENDING)

    def _skip(self, offset: int, data: bytes, pos: int, ts: int) -> int:
        if data[pos] == SPACE:
            run = SPACE_RUN_RE.match(data, pos)
            assert run is not None  # data[pos] is a space: the run holds at least that one
            if self._leading_spaces:
                self._add_spaces(offset + pos, ts, run.end() - pos)
                self._after_spaces = False  # no §3.7 non-XML request: not seen from its start
            return run.end()
        if data[pos] not in RESYNC_FIRST:
            self._drop_leading_spaces()
            found = SKIP_TO_RE.search(data, pos)
            return len(data) if found is None else found.start()
        self._cmd = _Message(offset + pos, ts)
        self._probe = bytearray()
        self._client = PROBE
        return pos

    def _probe_step(self, data: bytes, pos: int, ts: int) -> int:
        """After a gap: does the `<` (or BOM) just found begin one of RESYNC_MARKERS?"""
        assert self._cmd is not None
        self._probe.append(data[pos])
        probe = bytes(self._probe)
        if not any(m.startswith(probe) for m in RESYNC_MARKERS):
            self._cmd = None
            self._client = SKIP
            self._drop_leading_spaces()
            return pos  # this byte may itself be a `<` or a BOM's first
        self._cmd.add(data, pos, pos + 1, ts)
        if probe in RESYNC_MARKERS:
            self._flush_spaces()
            self._finder = EndFinder(non_xml=probe[0] != LT)  # §3.1, as in _idle
            self._finder.scan(probe, 0)
            self._client = COMMAND
            self._command_begins()
        return pos + 1

    def _drop_leading_spaces(self) -> None:
        """What was skipped is no keep-alive run: the spaces before it were a lost
        document's too."""
        self._leading_spaces = False
        self._spaces = _KeepAliveRun()

    def _after_end(self, offset: int, ts: int) -> None:
        if not self._end_reported:
            self._end_reported = True
            reason = "data after the end of the conversation (0x04)"
            self._error(CLIENT_TO_SERVER, offset, ts, ts, reason)

    def _client_gap(self, where: str) -> None:
        if self._client == COMMAND and self._cmd is not None:
            self._error_at(self._cmd, CLIENT_TO_SERVER, f"gap inside a command {where}")
            if not self._cmd_answered:  # R got it whole, and will answer it
                _wait(self._pending, (None, self._cmd.offset), MAX_PENDING)
        self._flush_spaces()
        self._leading_spaces = False
        self._cmd = None
        self._after_spaces = False
        if self._client != ENDED:
            self._client = SKIP

    # -- server: answers (§3.2) --

    def _feed_server(self, offset: int, data: bytes, ts: int) -> None:
        pos = 0
        while pos < len(data):
            if self._server == S_IDLE:
                pos = self._server_idle(offset, data, pos, ts)
            elif self._server == S_ANSWER:
                pos = self._answer_step(data, pos, ts)
            else:
                j = data.find(b"\x00", pos)
                if j < 0:
                    return
                self._server = S_IDLE
                self._answer_boundary()
                pos = j + 1

    def _server_idle(self, offset: int, data: bytes, pos: int, ts: int) -> int:
        if not self._verify:
            m = IDLE_RE.match(data, pos)
            if m:
                return m.end()
        self._answer = _Message(offset + pos, ts)
        self._server = S_ANSWER
        return pos

    def _answer_step(self, data: bytes, pos: int, ts: int) -> int:
        msg = self._answer
        assert msg is not None
        j = data.find(b"\x00", pos)
        stop = len(data) if j < 0 else j + 1
        msg.add(data, pos, stop, ts)
        if self._verify and not self._verified(msg, complete=j >= 0):
            return stop
        if j >= 0:
            self._finish_answer(msg)
        return stop

    def _verified(self, msg: _Message, complete: bool) -> bool:
        """After a gap: keep the answer only if it begins like one (else drop to the NUL)."""
        head = _past_bom(msg.payload()[: len(UTF8_BOM) + len(ANSWER_MARKER)])
        head = head[: len(ANSWER_MARKER)]
        if head == ANSWER_MARKER:
            self._verify = self._in_lost_answer = False
            return True
        if ANSWER_MARKER.startswith(head) and not complete:
            return False  # undecided: wait for more bytes
        self._verify = False
        if not self._in_lost_answer:  # else the rest of an answer already reported
            reason = "answer whose start was lost in a gap, dropped up to its NUL"
            self._error_at(msg, SERVER_TO_CLIENT, reason)
        # (the gap before it took the start of the oldest command's answer: its command is
        # no longer waiting, see _server_gap)
        self._in_lost_answer = False
        self._answer = None
        self._server = S_DROP
        if complete:
            self._server = S_IDLE
            self._answer_boundary()
        return False

    def _finish_answer(self, msg: _Message) -> None:
        self._answer = None
        self._server = S_IDLE
        command, command_offset = self._pending.pop(0) if self._pending else (None, None)
        if command_offset is None and self._client == COMMAND and self._cmd is not None:
            # R answers whole commands only: the one still arriving lost its rest (§3.1)
            command_offset, self._cmd_answered = self._cmd.offset, True
        if msg.oversize:
            reason = f"answer larger than {MAX_MESSAGE} bytes ({msg.size} bytes)"
            self._error_at(msg, SERVER_TO_CLIENT, reason)
        else:
            try:
                root = parse_xml(msg.payload()[:-1])
                span = msg.span(self.conn, SERVER_TO_CLIENT)
                self._out.append(answer_event(root, span, command, command_offset))
            except Malformed as e:
                self._error_at(msg, SERVER_TO_CLIENT, str(e))
        self._answer_boundary()

    def _answer_boundary(self) -> None:
        """The client sends its next command only after an answer (§3.1): resync there."""
        if self._client == SKIP:
            self._client = IDLE

    def _server_gap(self, where: str) -> None:
        if self._server == S_ANSWER and self._answer is not None:
            self._error_at(self._answer, SERVER_TO_CLIENT, f"gap inside an answer {where}")
            self._answer = None
            self._answered_in_gap()
            self._in_lost_answer = True
        elif self._server == S_DROP:
            self._in_lost_answer = True
        else:
            # R sends nothing but answers (§3.7): what is missing is the oldest waiting
            # command's answer, or its start (its rest is reported when it comes). Left
            # waiting, the command would take the answer to the next one.
            self._answered_in_gap()
        # The gap may have taken an answer's NUL too (a snaplen cut, a lost last segment):
        # what follows is the next answer if it begins like one, else the rest of the lost.
        self._server = S_IDLE
        self._verify = True

    def _answered_in_gap(self) -> None:
        """The oldest waiting command's answer was lost in a gap. (Found in review: with one
        command waiting, a start whose answer the capture lost was replaced by the close
        sent after it, and the gap, declared only when the close's answer came, took the
        close's place: the task lost its close answer too.)"""
        if self._pending:
            del self._pending[0]

    # -- HTTP (§3.3, §3.9) --

    def _becomes_http(self, data: bytes) -> bool:
        """§3.3: the first request of a connection starting with `A`–`Z` makes it HTTP."""
        if self._client != FIRST:
            return False
        first = data.lstrip(b"\r\n")[:1]
        if not first or not b"A" <= first <= b"Z":
            return False
        self._client = HTTP
        self._http = {
            CLIENT_TO_SERVER: HttpStream(self.conn, CLIENT_TO_SERVER, self._request_framing),
            SERVER_TO_CLIENT: HttpStream(self.conn, SERVER_TO_CLIENT, self._response_framing),
        }
        return True

    def _request_framing(self, start_line: str, headers: dict[str, str]) -> str:
        return http_framing(headers, "none")

    def _response_framing(self, start_line: str, headers: dict[str, str]) -> str:
        status = http_status(start_line)
        method = self._http_pending[0][2] if self._http_pending else ""
        if method == "HEAD" or status in (204, 304) or (status is not None and status < 200):
            return "none"
        return http_framing(headers, "close")

    def _feed_http(self, direction: int, offset: int, data: bytes, ts: int) -> None:
        for item in self._http[direction].feed(offset, data, ts):
            self._emit(item)

    def _emit(self, item: HttpMessage | DecodeError | None) -> None:
        if isinstance(item, DecodeError):
            self._out.append(item)
        elif item is not None and item.span.direction == CLIENT_TO_SERVER:
            self._http_request(item)
        elif item is not None:
            self._http_response(item)

    def _http_request(self, m: HttpMessage) -> None:
        """HttpRequest, then the events of the command it carries."""
        raw = http_command(m)
        name: str | None = None
        events: list[Event] = []
        if raw is None and m.body is None:
            reason = f"HTTP body larger than {MAX_MESSAGE} bytes"
            events = [DecodeError(*m.span, channel=CHANNEL, reason=reason)]
        elif raw:
            try:
                name, events = decode_command(raw, m.span)
            except Malformed as e:
                events = [DecodeError(*m.span, channel=CHANNEL, reason=str(e))]
        self._out.append(HttpRequest(*m.span, request_line=m.start_line, body_command=name))
        self._out += events
        method = m.start_line.partition(" ")[0]
        _wait(self._http_pending, (name, m.span.offset, method), MAX_HTTP_PENDING)

    def _http_response(self, m: HttpMessage) -> None:
        """HttpResponse, then the answer in its body if it holds one."""
        status = http_status(m.start_line)
        entry = None
        if self._http_pending:
            interim = status is not None and status < 200
            entry = self._http_pending[0] if interim else self._http_pending.pop(0)
        command, command_offset = (entry[0], entry[1]) if entry else (None, None)
        answer = http_answer(m, command, command_offset)
        time = answer.time if answer is not None else None
        self._out.append(
            HttpResponse(
                *m.span,
                command=command,
                command_offset=command_offset,
                time=time,
                status_line=m.start_line,
                status=status,
            )
        )
        if answer is not None:
            self._out.append(answer)


_Waiting = TypeVar("_Waiting")


def _wait(waiting: list[_Waiting], item: _Waiting, most: int) -> None:
    """Queue `item`; past `most` waiting, the oldest is dropped (hostile input)."""
    waiting.append(item)
    if len(waiting) > most:
        del waiting[0]
