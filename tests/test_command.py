"""protocol.command: the XML command channel (PROTOCOL.md §3), fed as the tcp layer would."""

from __future__ import annotations

import dataclasses
import itertools
import random
import tracemalloc

import jsencode as enc
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from jsdissect.protocol import DecodeError, Event
from jsdissect.protocol.command import (
    CLOSE,
    KILL,
    MAX_KEEPALIVE_RUN,
    MAX_MESSAGE,
    START,
    CommandDecoder,
    ErrorAnswer,
    HttpRequest,
    HttpResponse,
    KeepAlive,
    Ok,
    OtherAnswer,
    OtherCommand,
    ProcessAnswer,
    RemoteTaskClose,
    RemoteTaskKill,
    StartRemoteTask,
)

C, S = 0, 1  # tcp.CLIENT_TO_SERVER, tcp.SERVER_TO_CLIENT
T1 = "2024-01-29T14:17:35.123Z"
T2 = "2024-01-29T14:18:02.456Z"

# §13 Example 1, hex columns of the two dumps as printed in PROTOCOL.md.
EXAMPLE1_START_HEX = """
3c 3f 78 6d 6c 20 76 65 72 73 69 6f 6e 3d 22 31
2e 30 22 20 65 6e 63 6f 64 69 6e 67 3d 22 49 53
4f 2d 38 38 35 39 2d 31 22 3f 3e 3c 72 65 6d 6f
74 65 5f 73 63 68 65 64 75 6c 65 72 2e 73 74 61
72 74 5f 72 65 6d 6f 74 65 5f 74 61 73 6b 20 74
63 70 5f 70 6f 72 74 3d 22 35 39 39 39 39 22 20
6b 69 6e 64 3d 22 70 72 6f 63 65 73 73 22 2f 3e
"""
EXAMPLE1_ANSWER_HEX = """
3c 3f 78 6d 6c 20 76 65 72 73 69 6f 6e 3d 22 31
2e 30 22 20 65 6e 63 6f 64 69 6e 67 3d 22 49 53
4f 2d 38 38 35 39 2d 31 22 3f 3e 3c 73 70 6f 6f
6c 65 72 3e 3c 61 6e 73 77 65 72 20 74 69 6d 65
3d 22 32 30 32 34 2d 30 31 2d 32 39 54 31 34 3a
31 37 3a 33 35 2e 31 32 33 5a 22 3e 3c 70 72 6f
63 65 73 73 20 70 72 6f 63 65 73 73 5f 69 64 3d
22 38 34 32 31 37 33 30 31 22 2f 3e 3c 2f 61 6e
73 77 65 72 3e 3c 2f 73 70 6f 6f 6c 65 72 3e 00
"""
EXAMPLE1_START = bytes.fromhex(EXAMPLE1_START_HEX)
EXAMPLE1_ANSWER = bytes.fromhex(EXAMPLE1_ANSWER_HEX)
EXAMPLE1_CLOSE = b"<remote_scheduler.remote_task.close process_id='84217301'/>"
EXAMPLE1_OK = (
    b'<?xml version="1.0" encoding="ISO-8859-1"?><spooler><answer time="2024-01-29T14:18:02.456Z">'
    b"<ok/></answer></spooler>\x00"
)


class Wire:
    """Feeds a decoder like the tcp layer: consecutive offsets per direction."""

    def __init__(self, conn: str = "c1", **kw: bool) -> None:
        self.dec = CommandDecoder(conn, **kw)
        self.offset = [0, 0]
        self.events: list[Event] = []

    def send(self, direction: int, data: bytes, ts: int = 0) -> list[Event]:
        out = self.dec.feed(direction, self.offset[direction], data, ts)
        self.offset[direction] += len(data)
        self.events += out
        return out

    def gap(self, direction: int, size: int, ts: int = 0) -> list[Event]:
        out = self.dec.gap(direction, self.offset[direction], size, ts)
        self.offset[direction] += size
        self.events += out
        return out

    def close(self) -> list[Event]:
        out = self.dec.close()
        self.events += out
        return out

    def kinds(self) -> list[str]:
        return [type(e).__name__ for e in self.events]


def one(events: list[Event], cls: type) -> Event:
    assert len(events) == 1, events
    assert isinstance(events[0], cls), events
    return events[0]


def errors(events: list[Event]) -> list[DecodeError]:
    return [e for e in events if isinstance(e, DecodeError)]


def close_cmd(pid: str, extra: str = "") -> bytes:
    return f"<remote_scheduler.remote_task.close process_id='{pid}'{extra}/>".encode()


# --- §13 Example 1 --------------------------------------------------------------------------


def test_example1_bytes_match_the_encoder():
    assert len(EXAMPLE1_START) == 112 and len(EXAMPLE1_ANSWER) == 144
    assert enc.start_remote_task(59999, kind="process") == EXAMPLE1_START
    assert enc.process_answer(T1, "84217301") == EXAMPLE1_ANSWER
    assert enc.remote_task_close("84217301") == EXAMPLE1_CLOSE
    assert len(EXAMPLE1_CLOSE) == 59
    assert enc.ok_answer(T2) == EXAMPLE1_OK


def test_example1_decodes_to_exact_records():
    w = Wire()
    start = one(w.send(C, EXAMPLE1_START, 1_000), StartRemoteTask)
    assert start == StartRemoteTask("c1", C, 0, 1_000, 1_000, 59999, "process", None, None, None)
    answer = one(w.send(S, EXAMPLE1_ANSWER, 2_000), ProcessAnswer)
    assert answer == ProcessAnswer(
        "c1", S, 0, 2_000, 2_000, START, 0, T1, process_id="84217301", pid=None
    )
    close = one(w.send(C, EXAMPLE1_CLOSE, 3_000), RemoteTaskClose)
    assert close == RemoteTaskClose("c1", C, 112, 3_000, 3_000, "84217301", kill=False)
    ok = one(w.send(S, EXAMPLE1_OK, 4_000), Ok)
    assert ok == Ok("c1", S, 144, 4_000, 4_000, CLOSE, 112, T2)
    assert w.close() == []


# --- framing and times ------------------------------------------------------------------------


def test_keep_alive_spaces_before_close_are_one_event_with_the_time_of_each_piece():
    w = Wire()
    w.send(C, EXAMPLE1_START, 1)
    w.send(S, EXAMPLE1_ANSWER, 2)
    assert w.send(C, b" ", 30) == []
    assert w.send(C, b" ", 60) == []
    assert w.send(C, b"  ", 90) == []
    out = w.send(C, b" " + EXAMPLE1_CLOSE, 120)
    ka, close = out
    assert ka == KeepAlive("c1", C, 112, 30, 120, count=5, times=(30, 60, 90, 120))
    assert isinstance(close, RemoteTaskClose)
    assert (close.offset, close.start, close.end) == (117, 120, 120)
    ok = one(w.send(S, EXAMPLE1_OK, 130), Ok)
    assert (ok.command, ok.command_offset) == (CLOSE, 117)


def test_close_starts_at_the_piece_carrying_its_lt():
    w = Wire()
    assert w.send(C, b"   ", 5) == []
    assert w.send(C, b" ", 7) == []  # the run is still open
    out = w.send(C, EXAMPLE1_CLOSE[:1], 9) + w.send(C, EXAMPLE1_CLOSE[1:], 11)
    assert out[0] == KeepAlive("c1", C, 0, 5, 7, count=4, times=(5, 7))
    close = out[1]
    assert (close.offset, close.start, close.end) == (4, 9, 11)


def test_command_split_into_one_byte_pieces_keeps_exact_times():
    w = Wire()
    out: list[Event] = []
    for i, b in enumerate(EXAMPLE1_START):
        out += w.send(C, bytes([b]), 100 + i)
    start = one(out, StartRemoteTask)
    assert (start.offset, start.start, start.end) == (0, 100, 100 + 111)
    out = []
    for i, b in enumerate(EXAMPLE1_ANSWER):
        out += w.send(S, bytes([b]), 1000 + i)
    answer = one(out, ProcessAnswer)
    assert (answer.start, answer.end, answer.process_id) == (1000, 1000 + 143, "84217301")


def test_end_is_latest_piece_time_not_last_piece_time():
    w = Wire()
    out = w.send(C, EXAMPLE1_START[:50], 500) + w.send(C, EXAMPLE1_START[50:], 400)
    start = one(out, StartRemoteTask)
    assert (start.start, start.end) == (500, 500)


def test_nul_arriving_in_its_own_piece_ends_the_answer():
    w = Wire()
    w.send(C, EXAMPLE1_START, 1)
    assert w.send(S, EXAMPLE1_ANSWER[:-1], 10) == []
    answer = one(w.send(S, b"\x00", 25), ProcessAnswer)
    assert (answer.offset, answer.start, answer.end) == (0, 10, 25)
    assert one(w.send(C, EXAMPLE1_CLOSE, 30), RemoteTaskClose).process_id == "84217301"
    assert one(w.send(S, EXAMPLE1_OK, 40), Ok).offset == 144


def test_nuls_in_client_bytes_are_skipped():
    w = Wire()
    data = b"\x00\x00<remote_scheduler.remote_task.close\x00 process_id='7'/\x00>"
    close = one(w.send(C, data, 3), RemoteTaskClose)
    assert (close.offset, close.process_id) == (2, "7")


def test_lone_newlines_are_ignored():
    w = Wire()
    w.send(C, b"\r\n", 1)
    w.send(C, b"\n", 2)
    start = one(w.send(C, EXAMPLE1_START, 3), StartRemoteTask)
    assert start.offset == 3


def test_non_xml_line_command():
    w = Wire()
    cmd = one(w.send(C, b"show_state\n", 5), OtherCommand)
    assert (cmd.name, cmd.attrs, cmd.offset, cmd.end) == ("show_state", (), 0, 5)
    answer = one(w.send(S, enc.answer_doc(T1, "<state/>"), 6), OtherAnswer)
    assert (answer.name, answer.command) == ("state", "show_state")
    close = one(w.send(C, EXAMPLE1_CLOSE, 7), RemoteTaskClose)
    assert close.offset == 11


def test_non_xml_line_command_split_before_newline():
    w = Wire()
    assert w.send(C, b"show_state", 1) == []
    cmd = one(w.send(C, b"\r\n", 2), OtherCommand)
    assert (cmd.name, cmd.start, cmd.end) == ("show_state", 1, 2)


def test_self_closing_completes_at_depth_zero_nested_at_last_end_tag():
    w = Wire()
    assert w.send(C, b"<a><b/>", 1) == []
    a = one(w.send(C, b"</a>", 2), OtherCommand)
    assert (a.name, a.start, a.end) == ("a", 1, 2)
    b = one(w.send(C, b'<b x="1"/>', 3), OtherCommand)
    assert (b.name, b.attrs, b.offset) == ("b", (("x", "1"),), 11)


def test_prolog_comment_and_cdata_do_not_count():
    w = Wire()
    cmd = one(w.send(C, b"<!-- x --><show_state/>"), OtherCommand)
    assert (cmd.name, cmd.offset) == ("show_state", 0)
    cmd = one(w.send(C, b"<a><![CDATA[ 1 ]]></a>"), OtherCommand)
    assert cmd.name == "a"
    cmd = one(w.send(C, b'<?xml version="1.0"?>\n<a/>'), OtherCommand)
    assert cmd.name == "a"


def test_comment_ends_at_its_first_gt_like_r_end_finder():
    """§3.1: `<!--` is a `<!…>` tag ending at the first `>`; a `<b>` after it counts."""
    w = Wire()
    assert w.send(C, b"<a><!-- x > <b> --></a>") == []  # depth still 1 for R
    err = one(w.send(C, b"</z>"), DecodeError)
    assert (err.offset, err.channel) == (0, "cmd") and "well-formed" in err.reason


def test_stray_end_tag_at_depth_zero_completes():
    w = Wire()
    err = one(w.send(C, b"</x>", 4), DecodeError)
    assert (err.offset, err.start) == (0, 4)
    assert isinstance(one(w.send(C, EXAMPLE1_CLOSE), RemoteTaskClose), RemoteTaskClose)


def test_end_of_conversation_byte():
    w = Wire()
    w.send(C, EXAMPLE1_START)
    w.send(S, EXAMPLE1_ANSWER)
    assert w.send(C, b"\x04", 5) == []
    err = one(w.send(C, EXAMPLE1_CLOSE, 6), DecodeError)
    assert (err.offset, err.start) == (113, 6) and "0x04" in err.reason
    assert w.send(C, EXAMPLE1_CLOSE, 7) == []


def test_after_keep_alive_spaces_a_request_is_non_xml_like_for_r():
    """§3.7: R sees a request starting with a space as non-XML; it also ends at a newline."""
    w = Wire()
    out = w.send(C, b"  <a>\n<b/></a>", 1)
    kinds = [type(e).__name__ for e in out]
    assert kinds == ["KeepAlive", "DecodeError", "OtherCommand", "DecodeError"]
    assert (out[1].offset, out[2].offset, out[2].name, out[3].offset) == (2, 6, "b", 10)


def test_keep_alive_run_is_cut_into_bounded_events():
    w = Wire()
    out = w.send(C, b" " * (MAX_KEEPALIVE_RUN * 2 + 3), 1) + w.close()
    assert [e.count for e in out] == [MAX_KEEPALIVE_RUN, MAX_KEEPALIVE_RUN, 3]
    assert [e.offset for e in out] == [0, MAX_KEEPALIVE_RUN, 2 * MAX_KEEPALIVE_RUN]


def test_keep_alive_holds_a_time_per_piece_not_per_space():
    """Each space's own time made 16 MiB of spaces hold 641 MiB of events (compiled):
    a run keeps the time of each piece its spaces came in, once while it does not change
    (§3.7: C sends one space per period, so each keep-alive is its own piece anyway)."""
    w = Wire()
    piece = b" " * 65536
    out: list[Event] = []
    for i in range(16):
        out += w.send(C, piece, 1000 + i)
    out += w.close()
    assert sum(e.count for e in out) == 16 * 65536
    assert len(out) == 16 * 65536 // MAX_KEEPALIVE_RUN
    assert sum(len(e.times) for e in out) == len(out)  # each event within one piece
    assert [(e.start, e.end, e.times) for e in out[15:17]] == [
        (1000, 1000, (1000,)),
        (1001, 1001, (1001,)),
    ]
    odd = Wire()
    out = odd.send(C, b" " * 5000, 1) + odd.send(C, b" " * 5000, 1) + odd.send(C, b" " * 5000, 2)
    out += odd.close()
    assert [(e.count, e.times) for e in out] == [
        (MAX_KEEPALIVE_RUN, (1,)),
        (MAX_KEEPALIVE_RUN, (1,)),
        (MAX_KEEPALIVE_RUN, (1, 2)),
        (15000 - 3 * MAX_KEEPALIVE_RUN, (2,)),
    ]


# --- records ----------------------------------------------------------------------------------


def test_error_answer_fields():
    w = Wire()
    w.send(C, EXAMPLE1_START)
    text = 'Security level <all> & "licence" needed'
    err = one(w.send(S, enc.error_answer(T1, "SCHEDULER-121", text)), ErrorAnswer)
    assert (err.code, err.text, err.time, err.command) == ("SCHEDULER-121", text, T1, START)
    assert dict(err.attrs) == {
        "time": "2024-01-29T14:17:35Z",
        "class": "Xc",
        "code": "SCHEDULER-121",
        "text": text,
    }


def test_error_wins_over_other_content():
    w = Wire()
    doc = enc.answer_doc(T1, '<process process_id="1"/><ERROR code="X-1" text="bad"/>')
    err = one(w.send(S, doc), ErrorAnswer)
    assert (err.code, err.text, err.command) == ("X-1", "bad", None)


@pytest.mark.parametrize(
    "result",
    [
        '<process pid="4711" process_id="84217301"/>',
        '<process process_id="84217301" pid="4711"/>',
        "<process process_id='84217301'\n   pid = '4711' />",
    ],
)
def test_process_answer_attributes_by_name(result: str):
    w = Wire()
    answer = one(w.send(S, enc.answer_doc(T1, result)), ProcessAnswer)
    assert (answer.process_id, answer.pid, answer.time) == ("84217301", 4711, T1)


def test_process_answer_from_encoder_with_and_without_pid():
    w = Wire()
    with_pid = one(w.send(S, enc.process_answer(T1, "99", pid=12345)), ProcessAnswer)
    assert (with_pid.process_id, with_pid.pid) == ("99", 12345)
    without = one(w.send(S, enc.process_answer(T1, "100")), ProcessAnswer)
    assert (without.process_id, without.pid) == ("100", None)


def test_answer_prolog_with_standalone_is_tolerated():
    w = Wire()
    doc = (
        b'<?xml version="1.0" encoding="ISO-8859-1" standalone="no"?>'
        b'<spooler><answer time="t"><ok/></answer></spooler>\x00'
    )
    assert one(w.send(S, doc), Ok).time == "t"


def test_answer_without_pending_command_pairs_with_none():
    w = Wire()
    ok = one(w.send(S, enc.ok_answer(T2)), Ok)
    assert (ok.command, ok.command_offset) == (None, None)


def test_start_with_kind_java_options_and_classpath_escaped():
    w = Wire()
    opts = '-Dname="a<b>" -Xmx1g & more'
    cp = "/opt/a b/x.jar:/é/y.jar"
    data = enc.start_remote_task(4711, kind="process", java_options=opts, java_classpath=cp)
    assert b"&quot;" in data and b"&lt;" in data
    start = one(w.send(C, data), StartRemoteTask)
    assert start == StartRemoteTask("c1", C, 0, 0, 0, 4711, "process", opts, cp, None)


def test_start_with_ip_address_and_any_attribute_order():
    w = Wire()
    data = b'<remote_scheduler.start_remote_task ip_address="10.0.0.5" tcp_port="59998"/>'
    start = one(w.send(C, data), StartRemoteTask)
    assert (start.tcp_port, start.ip_address, start.kind) == (59998, "10.0.0.5", None)


@pytest.mark.parametrize(
    ("value", "port"),
    [
        ("59999", 59999),
        (" 59999 ", 59999),
        ("1", 1),
        ("65535", 65535),
        ("059999", 59999),
        ("59_999", None),  # Python's int() took these four
        ("+59999", None),
        ("&#x665;&#x669;&#x669;&#x669;&#x669;", None),  # Arabic-Indic digits
        ("\u0665\u0669\u0669\u0669\u0669", None),
        ("-1", None),
        ("70000", 70000),  # outside the TCP range: shown as announced (a corrupt start)
        ("5 9999", None),
        ("0x10", None),
        ("", None),
    ],
)
def test_tcp_port_is_ascii_digits(value: str, port: int | None):
    data = f'{enc.PROLOG}<remote_scheduler.start_remote_task tcp_port="{value}"/>'
    raw = data.encode("utf-8").replace(b"ISO-8859-1", b"UTF-8")
    assert one(Wire().send(C, raw), StartRemoteTask).tcp_port == port


@pytest.mark.parametrize(
    ("value", "pid"),
    [
        ("4711", 4711),
        (" 4711 ", 4711),
        ("4_711", None),
        ("+4711", None),
        ("-4711", None),  # an OS process id is never negative
        ("&#x664;&#x667;&#x661;&#x661;", None),  # Arabic-Indic digits
        ("4711.0", None),
    ],
)
def test_pid_is_ascii_digits(value: str, pid: int | None):
    doc = enc.answer_doc(T1, f'<process pid="{value}" process_id="84217301"/>')
    answer = one(Wire().send(S, doc), ProcessAnswer)
    assert (answer.pid, answer.process_id) == (pid, "84217301")


@pytest.mark.parametrize("length", ["+13", "1_3", "-13", "\u0661\u0663"])
def test_http_content_length_is_ascii_digits(length: str):
    req = f"POST / HTTP/1.1\r\nContent-Length: {length}\r\n\r\n<show_state/>"
    err = one(Wire().send(C, req.encode("utf-8")), DecodeError)
    assert err.reason == "bad Content-Length"


@pytest.mark.parametrize(
    ("extra", "kill"),
    [
        ("", False),
        (" kill='yes'", True),
        (" kill='true'", True),
        (" kill='1'", True),
        (' kill="YES"', True),
        (" kill='no'", False),
        (" kill='0'", False),
    ],
)
def test_close_kill_variants(extra: str, kill: bool):
    close = one(Wire().send(C, close_cmd("55", extra)), RemoteTaskClose)
    assert (close.process_id, close.kill) == ("55", kill)


def test_close_kill_from_encoder_and_kill_command():
    w = Wire()
    assert one(w.send(C, enc.remote_task_close("5", kill=True)), RemoteTaskClose).kill
    kill = one(w.send(C, enc.remote_task_kill("5")), RemoteTaskKill)
    assert (kill.process_id, kill.signal) == ("5", "SIGTERM")
    # Answers come in the order of the commands (§3.1: one command at a time; two waiting
    # means an answer the capture has later, or lost): the first answers the close.
    assert one(w.send(S, enc.ok_answer(T2)), Ok).command == CLOSE
    assert one(w.send(S, enc.ok_answer(T2)), Ok).command == KILL


def test_wrapped_commands_decode_as_the_inner_command():
    w = Wire()
    data = (
        b"<spooler><command><remote_scheduler.remote_task.kill process_id='9' signal='SIGTERM'/>"
        b"</command></spooler>"
    )
    kill = one(w.send(C, data), RemoteTaskKill)
    assert (kill.process_id, kill.offset) == ("9", 0)
    assert one(w.send(S, enc.ok_answer(T1)), Ok).command == KILL
    out = w.send(C, b'<commands><show_state/><show_job job="/a"/></commands>')
    assert [(e.name, e.attrs) for e in out] == [("show_state", ()), ("show_job", (("job", "/a"),))]
    assert one(w.send(S, enc.ok_answer(T1)), Ok).command == "show_state"


def test_unknown_command_is_other_command():
    w = Wire()
    cmd = one(w.send(C, b'<start_job job="/f/j" at="now"/>'), OtherCommand)
    assert (cmd.name, cmd.attrs) == ("start_job", (("job", "/f/j"), ("at", "now")))


def test_declared_encoding_is_used_and_unknown_falls_back_to_latin1():
    w = Wire()
    utf8 = '<?xml version="1.0" encoding="UTF-8"?><x v="é€"/>'.encode()
    assert one(w.send(C, utf8), OtherCommand).attrs == (("v", "é€"),)
    bogus = b'<?xml version="1.0" encoding="x-no-such"?><x v="\xe9"/>'
    assert one(w.send(C, bogus), OtherCommand).attrs == (("v", "é"),)
    bare = b'<x v="\xe9\xff"/>'
    assert one(w.send(C, bare), OtherCommand).attrs == (("v", "éÿ"),)


@pytest.mark.parametrize("codec", ["ISO-8859-1", "latin1", "UTF-8", "US-ASCII", "cp1252", "UTF-7"])
def test_prolog_naming_a_character_set_is_decoded_with_it(codec: str):
    from jsdissect.protocol.command import _text_of

    doc = f'<?xml version="1.0" encoding="{codec}"?><x v="a+b-c"/>'
    assert _text_of(doc.encode(codec)) == doc


def test_prolog_naming_punycode_or_idna_is_read_as_latin_1():
    """Python's punycode decoder takes time quadratic in the length (a 1 MB answer: 53 s of
    CPU), and idna runs it on each `xn--` label: they name no character set (the engine
    writes ISO-8859-1, §3.1/§3.2), so the document is read as ISO-8859-1."""
    from jsdissect.protocol.command import _text_of

    doc = '<?xml version="1.0" encoding="punycode"?><spooler><answer time="é一"><ok/></answer>'
    raw = (doc + "</spooler>").encode("punycode")
    assert raw.decode("punycode").startswith(doc)  # what the prolog's codec would read
    assert raw.endswith(b"</spooler>-33h43762p")
    assert _text_of(raw) == raw.decode("iso-8859-1")
    err = one(Wire().send(S, raw + b"\x00"), DecodeError)  # its tail is junk after the root
    assert "not well-formed" in err.reason
    idna = b'<?xml version="1.0" encoding="idna"?><x v="a.xn--caf-dma.b"/>'
    assert 'v="a.café.b"' in idna.decode("idna")
    assert _text_of(idna) == idna.decode("iso-8859-1")
    assert one(Wire().send(C, idna), OtherCommand).attrs == (("v", "a.xn--caf-dma.b"),)


# --- a UTF-8 byte order mark (§3.1, §3.2) -----------------------------------------------------

# R and C parse commands and answers with the JVM's XML parser, which takes a BOM as a
# document's first bytes (checked with OpenJDK 17: what follows is UTF-8, unless a prolog
# names another encoding) and refuses one anywhere else.
BOM = b"\xef\xbb\xbf"


@pytest.mark.parametrize("doc", [EXAMPLE1_START, EXAMPLE1_START[43:]], ids=["prolog", "bare"])
def test_a_bom_begins_a_command_and_its_first_piece_is_when_it_was_sent(doc: bytes):
    """The BOM is the document's first bytes, not a keep-alive: the command begins at it
    (DESIGN "Exact times": sent with the piece carrying its first byte)."""
    assert doc.startswith((b"<?xml", b"<remote_scheduler."))
    w = Wire()
    assert w.send(C, BOM, 5) == []
    start = one(w.send(C, doc, 9), StartRemoteTask)
    assert (start.offset, start.start, start.end) == (0, 5, 9)
    assert (start.tcp_port, start.kind) == (59999, "process")
    answer = one(w.send(S, EXAMPLE1_ANSWER, 12), ProcessAnswer)
    assert (answer.command, answer.command_offset) == (START, 0)


def test_a_bom_after_keep_alive_spaces_begins_the_close():
    w = Wire()
    w.send(C, EXAMPLE1_START, 1)
    w.send(S, EXAMPLE1_ANSWER, 2)
    assert w.send(C, b" ", 30) == []
    ka, close = w.send(C, b"  " + BOM + EXAMPLE1_CLOSE, 60)
    assert ka == KeepAlive("c1", C, 112, 30, 60, count=3, times=(30, 60))
    assert isinstance(close, RemoteTaskClose)
    assert (close.offset, close.start, close.process_id) == (115, 60, "84217301")
    ok = one(w.send(S, EXAMPLE1_OK, 70), Ok)
    assert (ok.command, ok.command_offset) == (CLOSE, 115)


def test_a_bom_begins_an_answer():
    """C reads answers with the same parser (`fetch_received_dom_document`)."""
    w = Wire()
    w.send(C, EXAMPLE1_START, 1)
    answer = one(w.send(S, BOM + EXAMPLE1_ANSWER, 2), ProcessAnswer)
    assert (answer.offset, answer.process_id, answer.time) == (0, "84217301", T1)
    w.send(C, EXAMPLE1_CLOSE, 3)
    padded = b"\x00" + BOM + EXAMPLE1_OK[:2]  # NUL padding between answers is skipped
    ok = one(w.send(S, padded, 4) + w.send(S, EXAMPLE1_OK[2:], 5), Ok)
    assert (ok.offset, ok.start, ok.end, ok.command) == (148, 4, 5, CLOSE)


@pytest.mark.parametrize(
    ("doc", "value"),
    [
        (BOM + '<x v="é€"/>'.encode(), "é€"),  # UTF-8, as the BOM says
        (BOM + b'<?xml version="1.0" encoding="ISO-8859-1"?><x v="\xe9"/>', "é"),
        (BOM + '<?xml version="1.0" encoding="UTF-8"?><x v="é"/>'.encode(), "é"),
        (BOM + b'<x v="\xe9"/>', "é"),  # no UTF-8: read as ISO-8859-1, as without a BOM
    ],
)
def test_a_bom_names_utf_8_unless_a_prolog_names_another(doc: bytes, value: str):
    assert one(Wire().send(C, doc), OtherCommand).attrs == (("v", value),)
    answer = doc.replace(b"<x ", b"<spooler><answer><x ").replace(b"/>", b"/></answer></spooler>")
    assert one(Wire().send(S, answer + b"\x00"), OtherAnswer).attrs == (("v", value),)


def test_blanks_between_a_bom_and_the_root_element_are_taken():
    assert one(Wire().send(C, BOM + b" \t <x/>"), OtherCommand).name == "x"
    # R's end finder takes a request beginning with a BOM for non-XML: a newline ends it
    err, x = Wire().send(C, BOM + b"\n<x/>")
    assert isinstance(err, DecodeError) and isinstance(x, OtherCommand)
    assert (err.offset, x.offset, x.name) == (0, 4, "x")


@pytest.mark.parametrize(
    "doc",
    [
        BOM + BOM + b"<x/>",
        BOM + b" " + EXAMPLE1_START,  # the prolog no longer the document's start
        EXAMPLE1_START[:43] + BOM + EXAMPLE1_START[43:],
        BOM + b"show_state",  # R wraps the BOM into the name: <\xef\xbb\xbfshow_state/>
    ],
    ids=["two", "before blanks and a prolog", "after the prolog", "before a plain name"],
)
def test_a_bom_anywhere_else_is_refused_as_r_refuses_it(doc: bytes):
    w = Wire()
    (err,) = errors(w.send(C, doc + b"\n"))
    assert err.offset == 0
    if doc.startswith(BOM + BOM):
        answer = BOM + BOM + EXAMPLE1_OK
        assert "second byte order mark" in one(w.send(S, answer), DecodeError).reason


def test_a_bom_before_a_marker_is_where_a_command_resumes_after_a_gap():
    w = Wire()
    w.send(C, EXAMPLE1_START[:40], 1)
    w.gap(C, 72, 2)
    w.send(S, EXAMPLE1_ANSWER[:10], 3)
    w.gap(S, len(EXAMPLE1_ANSWER) - 10, 4)
    w.send(C, b"x" + BOM[:1], 5)  # a BOM's first byte, and then one: no marker yet
    close = one(w.send(C, BOM[1:] + BOM + EXAMPLE1_CLOSE, 6), RemoteTaskClose)
    assert (close.offset, close.start) == (116, 6)  # at the second BOM
    ok = one(w.send(S, BOM[:1], 7) + w.send(S, BOM[1:] + EXAMPLE1_OK, 8), Ok)
    assert (ok.offset, ok.start, ok.command, ok.command_offset) == (144, 7, CLOSE, 116)


def test_a_command_resumed_at_a_bom_is_non_xml_for_r_s_end_finder():
    """§3.1: a request whose first byte is not `<` ends at a newline outside a tag too."""
    w = Wire(midstream=True)
    out = w.send(C, b"d/>" + BOM + b'<?xml version="1.0"?>\n' + EXAMPLE1_CLOSE, 1)
    err, close = out
    assert isinstance(err, DecodeError) and isinstance(close, RemoteTaskClose)
    assert (err.offset, close.offset) == (3, 28)


# --- HTTP (§3.9) ------------------------------------------------------------------------------


def http_response(body: bytes, chunked: bool = False) -> bytes:
    head = b"HTTP/1.1 200 OK\r\nContent-Type: text/xml; charset=ISO-8859-1\r\n"
    if chunked:
        mid = len(body) // 2
        parts = [body[:mid], body[mid:]]
        chunks = b"".join(b"%x\r\n%s\r\n" % (len(p), p) for p in parts)
        return head + b"Transfer-Encoding: chunked\r\n\r\n" + chunks + b"0\r\n\r\n"
    return head + b"Content-Length: %d\r\n\r\n" % len(body) + body


def test_http_post_with_xml_body():
    w = Wire()
    body = b"<show_state/>"
    req = b"POST / HTTP/1.1\r\nHost: r\r\nContent-Length: %d\r\n\r\n" % len(body)
    out = w.send(C, req[:10], 1) + w.send(C, req[10:] + body[:3], 2) + w.send(C, body[3:], 3)
    http, cmd = out
    assert http == HttpRequest("c1", C, 0, 1, 3, "POST / HTTP/1.1", "show_state")
    assert isinstance(cmd, OtherCommand) and cmd.name == "show_state"
    answer = (
        b'<?xml version="1.0"?>\n<spooler>\n  <answer time="t">\n    <ok/>\n  </answer>\n</spooler>'
    )
    resp, ok = w.send(S, http_response(answer), 4)
    assert isinstance(resp, HttpResponse)
    assert (resp.status, resp.status_line, resp.command, resp.time) == (
        200,
        "HTTP/1.1 200 OK",
        "show_state",
        "t",
    )
    assert isinstance(ok, Ok) and ok.command_offset == 0
    assert errors(w.events + w.close()) == []


def test_http_get_with_url_encoded_command_and_chunked_answer():
    w = Wire()
    http, cmd = w.send(C, b"GET /%3Cshow_state%20what%3D%22all%22%2F%3E HTTP/1.1\r\n\r\n", 1)
    assert isinstance(http, HttpRequest) and http.body_command == "show_state"
    assert cmd.attrs == (("what", "all"),)
    body = b'<spooler><answer time="t"><state/></answer></spooler>'
    resp, state = w.send(S, http_response(body, chunked=True), 2)
    assert isinstance(resp, HttpResponse) and resp.command == "show_state"
    assert isinstance(state, OtherAnswer) and state.name == "state"
    http = one(w.send(C, b"GET /index.html HTTP/1.1\r\n\r\n", 3), HttpRequest)
    assert http.body_command is None
    resp = one(w.send(S, b"HTTP/1.1 200 OK\r\n\r\n<html>", 4) + w.close(), HttpResponse)
    assert (resp.command, resp.status) == (None, 200)


def test_http_remote_execution_command_is_decoded_too():
    w = Wire()
    body = enc.start_remote_task(59990)
    req = b"POST /x HTTP/1.0\r\nContent-Length: %d\r\n\r\n" % len(body) + body
    http, start = w.send(C, req)
    assert http.body_command == START and start.tcp_port == 59990


def test_http_gap_resyncs_at_the_next_message():
    w = Wire()
    w.send(C, b"POST / HTTP/1.1\r\nContent-Length: 100\r\n\r\n<sh", 1)
    err = one(w.gap(C, 50, 2), DecodeError)
    assert (err.offset, err.start) == (0, 1) and "gap" in err.reason
    assert w.send(C, b"ow_state/>" + b" " * 37, 3) == []
    http = one(w.send(C, b"GET /%3Cshow_state/%3E HTTP/1.1\r\n\r\n", 4)[:1], HttpRequest)
    assert http.offset == 43 + 50 + 47


def test_plain_protocol_is_not_http_and_http_is_not_plain():
    w = Wire()
    w.send(C, b"\r\n")
    assert w.kinds() == []
    assert isinstance(one(w.send(C, b"show_state\n"), OtherCommand), OtherCommand)
    assert isinstance(one(w.send(C, b"POST / HTTP/1.1\n"), DecodeError), DecodeError)
    h = Wire()
    assert h.send(C, b"G") == []
    h.send(C, b"ET /<show_state/> HTTP/1.1\r\n\r\n")
    assert h.kinds() == ["HttpRequest", "OtherCommand"]
    assert h.events[0].request_line == "GET /<show_state/> HTTP/1.1"


# --- gaps, resync, end of connection ---------------------------------------------------------


def test_client_gap_inside_command_then_resync_at_marker():
    w = Wire()
    w.send(C, EXAMPLE1_START[:40], 1)
    err = one(w.gap(C, 30, 2), DecodeError)
    assert (err.conn, err.direction, err.offset, err.start, err.end) == ("c1", C, 0, 1, 1)
    assert "gap inside a command" in err.reason
    assert w.send(C, EXAMPLE1_START[70:] + b"<x/> <y/>  ", 3) == []  # not trusted after a gap
    close = one(w.send(C, EXAMPLE1_CLOSE, 4), RemoteTaskClose)
    assert close.process_id == "84217301"


def test_partial_command_still_pairs_with_its_answer_by_offset():
    w = Wire()
    w.send(C, EXAMPLE1_START[:40], 1)
    w.gap(C, 72, 2)
    answer = one(w.send(S, EXAMPLE1_ANSWER, 3), ProcessAnswer)
    assert (answer.command, answer.command_offset) == (None, 0)


def test_client_resyncs_after_an_answer():
    w = Wire()
    w.send(C, EXAMPLE1_START[:40], 1)
    w.gap(C, 10, 2)
    w.send(C, EXAMPLE1_START[50:], 3)
    w.send(S, EXAMPLE1_ANSWER, 4)
    cmd = one(w.send(C, b"<show_state/>", 5), OtherCommand)
    assert cmd.offset == 112


def test_server_gap_inside_answer_drops_to_nul():
    w = Wire()
    w.send(C, EXAMPLE1_START)
    w.send(S, EXAMPLE1_ANSWER[:20], 5)
    err = one(w.gap(S, 20, 6), DecodeError)
    assert (err.direction, err.offset, err.start) == (S, 0, 5)
    assert w.send(S, EXAMPLE1_ANSWER[40:], 7) == []
    w.send(C, EXAMPLE1_CLOSE)
    ok = one(w.send(S, EXAMPLE1_OK, 8), Ok)
    assert (ok.offset, ok.command) == (144, CLOSE)


def test_server_gap_that_took_the_answers_nul_keeps_the_next_answer():
    """A snaplen cut or a lost last segment takes an answer's end with its NUL: the next
    answer, captured whole, is still the next command's (it was dropped up to its own NUL)."""
    w = Wire()
    w.send(C, EXAMPLE1_START)
    w.send(S, EXAMPLE1_ANSWER[:20], 5)
    err = one(w.gap(S, len(EXAMPLE1_ANSWER) - 20, 6), DecodeError)
    assert (err.direction, err.offset, err.start) == (S, 0, 5)
    w.send(C, EXAMPLE1_CLOSE)
    out = w.send(S, EXAMPLE1_OK[:3], 7) + w.send(S, EXAMPLE1_OK[3:], 8)
    ok = one(out, Ok)
    assert (ok.offset, ok.start, ok.end, ok.command) == (144, 7, 8, CLOSE)


def test_rest_of_an_answer_after_two_gaps_is_reported_once():
    w = Wire()
    w.send(C, EXAMPLE1_START)
    w.send(S, EXAMPLE1_ANSWER[:20], 5)
    one(w.gap(S, 10, 6), DecodeError)
    assert w.send(S, EXAMPLE1_ANSWER[30:40], 7) == []
    assert w.gap(S, 5, 8) == []
    assert w.send(S, EXAMPLE1_ANSWER[45:], 9) == []  # its rest, up to its NUL
    w.send(C, EXAMPLE1_CLOSE)
    assert one(w.send(S, EXAMPLE1_OK, 10), Ok).command == CLOSE


def test_an_answer_lost_whole_does_not_leave_its_command_waiting_for_the_next_one():
    """R sends nothing but answers (no keep-alive, §3.7): a gap in its stream while a
    command waits is that command's answer. With the next command lost too (loss in both
    directions), the next answer is to a command not captured: paired with the start, it
    gave the start an answer time 300 ms late and no close answer at all."""
    w = Wire()
    w.send(C, EXAMPLE1_START, 1)
    assert w.gap(S, len(EXAMPLE1_ANSWER), 2) == []  # the TCP layer counts the loss
    w.gap(C, len(EXAMPLE1_CLOSE), 3)
    ok = one(w.send(S, EXAMPLE1_OK, 300), Ok)
    assert (ok.command, ok.command_offset) == (None, None)


def test_an_answer_lost_after_an_earlier_loss_is_still_reported():
    """The rest of a lost answer can come only before the client's next command (§3.1):
    after it, bytes that do not begin an answer are a new answer whose start was lost."""
    w = Wire()
    w.send(C, EXAMPLE1_START)
    w.send(S, EXAMPLE1_ANSWER[:20], 5)
    one(w.gap(S, len(EXAMPLE1_ANSWER) - 20, 6), DecodeError)  # its end, NUL and all
    w.send(C, EXAMPLE1_CLOSE)
    assert w.gap(S, 10, 7) == []  # the close's answer loses its start…
    err = one(w.send(S, EXAMPLE1_OK[10:], 8), DecodeError)  # …and that is said
    assert (err.offset, err.start) == (len(EXAMPLE1_ANSWER) + 10, 8)
    assert "start was lost" in err.reason


def test_server_gap_at_answer_boundary_keeps_next_answer():
    w = Wire()
    w.send(C, EXAMPLE1_START)
    w.gap(S, len(EXAMPLE1_ANSWER))  # the whole start answer was not captured
    w.send(C, EXAMPLE1_CLOSE)
    out = w.send(S, EXAMPLE1_OK[:3], 1) + w.send(S, EXAMPLE1_OK[3:], 2)
    ok = one(out, Ok)
    assert (ok.offset, ok.start, ok.end, ok.command) == (144, 1, 2, CLOSE)


def test_a_start_answer_lost_in_a_gap_declared_after_the_close_leaves_the_close_its_answer():
    """Found in review: the gap is declared only when later bytes are acknowledged, after
    the close was sent; it took the close's place and the close's answer was lost. Answers
    pair with commands in order (§3.1), and a gap takes the oldest waiting one's."""
    w = Wire()
    w.send(C, EXAMPLE1_START)
    w.send(C, EXAMPLE1_CLOSE)
    w.gap(S, len(EXAMPLE1_ANSWER))
    assert one(w.send(S, EXAMPLE1_OK), Ok).command == CLOSE


def test_an_answer_to_a_command_whose_rest_was_lost_is_that_command_s():
    """Found in review: the start's last segment lost, R's answer to it came before the gap
    was declared (when the close was acknowledged); the start then waited a second time,
    and took the close's answer. R answers only whole commands: the answer is the start's."""
    w = Wire()
    start = enc.start_remote_task(59999, kind="process")
    w.send(C, start[:50])
    w.send(S, enc.process_answer(T1, "5"))
    w.gap(C, len(start) - 50)
    w.send(C, enc.remote_task_close("5"))
    assert one(w.send(S, enc.ok_answer(T2)), Ok).command == CLOSE


def test_a_command_ends_the_rest_of_a_lost_answer_whatever_its_nul():
    """Found in review: the start's answer lost its beginning and (in a second gap) its NUL
    with the beginning of the kill's answer; the kill's rest was taken for the start's, the
    kill kept waiting and took the close's answer. The client sends a command only after the
    whole answer before it (§3.1): what R sends after a command begins is no lost rest."""
    w = Wire()
    answer, kill_ok = enc.process_answer(T1, "5"), enc.ok_answer(T1)
    w.send(C, enc.start_remote_task(59999, kind="process"))
    w.gap(S, 10)
    w.send(S, answer[10:-5])
    w.send(C, enc.remote_task_kill("5"))
    w.gap(S, 5 + 10)
    w.send(S, kill_ok[10:])
    w.send(C, enc.remote_task_close("5"))
    assert one(w.send(S, enc.ok_answer(T2)), Ok).command == CLOSE


def test_midstream_connection_waits_for_boundaries():
    w = Wire(midstream=True)
    assert w.send(C, b"ask_id='1'/>", 1) == []
    err = one(w.send(S, b'="1"/></answer></spooler>\x00', 2), DecodeError)
    assert "gap" in err.reason
    assert isinstance(one(w.send(C, b"<show_state/>", 3), OtherCommand), OtherCommand)
    assert isinstance(one(w.send(S, enc.ok_answer(T1), 4), Ok), Ok)


def test_midstream_keep_alive_spaces_before_a_command_are_kept():
    """§3.7: spaces a connection picked up mid-stream begins with are the keep-alive prefix
    of the command that follows them (as the plugin shows them); spaces after other bytes
    skipped may be inside a document that was not captured, and are no keep-alive."""
    w = Wire(midstream=True)
    w.send(C, b"  ", 1)
    w.send(C, b" ", 2)
    close = enc.remote_task_close("42")
    out = w.send(C, close, 3)
    ka = out[0]
    assert isinstance(ka, KeepAlive)
    assert (ka.offset, ka.count, ka.start, ka.end) == (0, 3, 1, 2)
    assert [type(e).__name__ for e in out] == ["KeepAlive", "RemoteTaskClose"]
    lost = Wire(midstream=True)
    lost.send(C, b"tail of a lost   document", 1)
    lost.send(C, b" x", 2)
    assert [type(e).__name__ for e in lost.send(C, close, 3)] == ["RemoteTaskClose"]


def test_close_inside_command_and_answer():
    w = Wire()
    w.send(C, EXAMPLE1_START)
    w.send(S, EXAMPLE1_ANSWER[:30], 9)
    w.send(C, b"  ", 10)
    ka = one(w.send(C, EXAMPLE1_CLOSE[:20], 11), KeepAlive)
    assert (ka.offset, ka.count) == (112, 2)
    cmd_err, ans_err = w.close()
    assert (cmd_err.offset, cmd_err.reason) == (114, "connection ended inside a command")
    assert (ans_err.offset, ans_err.direction, ans_err.start) == (0, S, 9)
    assert w.close() == []


# --- properties --------------------------------------------------------------------------------

Conversation = list[tuple[int, bytes]]

CONVERSATION: Conversation = [
    (C, EXAMPLE1_START),
    (S, EXAMPLE1_ANSWER),
    (C, b"   " + EXAMPLE1_CLOSE),
    (S, EXAMPLE1_OK),
    (C, b"<commands><show_state/></commands>"),
    (S, enc.error_answer(T1, "SCHEDULER-105", "unknown")),
]
HTTP_BODY = b'<spooler><answer time="t"><ok/></answer></spooler>'
HTTP_CHUNKED = (
    b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
    + b"a\r\n%s\r\n" % HTTP_BODY[:10]
    + b"%x\r\n%s\r\n" % (len(HTTP_BODY) - 10, HTTP_BODY[10:])
    + b"0\r\nX-T: 1\r\n\r\n"
)
HTTP_CONVERSATION: Conversation = [
    (C, b"POST / HTTP/1.1\r\nContent-Length: 13\r\n\r\n<show_state/>"),
    (S, b"HTTP/1.1 100 Continue\r\n\r\n"),
    (S, HTTP_CHUNKED),
    (C, b"HEAD /x HTTP/1.1\r\n\r\n"),
    (S, b"HTTP/1.1 200 OK\r\nContent-Length: 999\r\n\r\n"),
    (C, b"GET /%3Cshow_state/%3E HTTP/1.1\r\n\r\n"),
    (S, b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % len(HTTP_BODY) + HTTP_BODY),
]


def feed_segmented(
    conv: Conversation, cuts: list[list[int]]
) -> tuple[list[Event], list[list[int]]]:
    """Feed `conv` with message i cut at cuts[i]; ts = global piece index.
    Returns the events and, per message, the piece index of every byte."""
    dec = CommandDecoder("p")
    offsets, events, piece, byte_ts = [0, 0], [], 0, []
    for (direction, data), msg_cuts in zip(conv, cuts, strict=True):
        bounds = [0, *sorted(set(c for c in msg_cuts if 0 < c < len(data))), len(data)]
        stamps = []
        for a, b in itertools.pairwise(bounds):
            events += dec.feed(direction, offsets[direction] + a, data[a:b], piece)
            stamps += [piece] * (b - a)
            piece += 1
        offsets[direction] += len(data)
        byte_ts.append(stamps)
    return events + dec.close(), byte_ts


def expected_times(conv: Conversation, event: Event, byte_ts: list[list[int]]) -> tuple:
    """start/end (and KeepAlive times) from the byte → piece map; every message in `conv`
    ends with the last byte of its event."""
    base = 0
    for (direction, data), stamps in zip(conv, byte_ts, strict=True):
        if direction != event.direction:
            continue
        if base <= event.offset < base + len(data):
            i = event.offset - base
            if isinstance(event, KeepAlive):
                times = tuple(t for t, _ in itertools.groupby(stamps[i : i + event.count]))
                return (times[0], max(times), times)
            return (stamps[i], max(stamps[i:]))
        base += len(data)
    raise AssertionError(event)


def strip_times(e: Event) -> tuple:
    kept = [f.name for f in dataclasses.fields(e) if f.name not in ("start", "end", "times")]
    return (type(e).__name__, *(getattr(e, k) for k in kept))


def message_cuts(conv: Conversation):
    return st.tuples(*[st.lists(st.integers(1, len(d) - 1), max_size=8) for _, d in conv]).map(list)


def check_segmentation(conv: Conversation, cuts: list[list[int]], kinds: list[str]) -> None:
    whole, _ = feed_segmented(conv, [[] for _ in conv])
    events, byte_ts = feed_segmented(conv, cuts)
    assert [type(e).__name__ for e in events] == kinds
    assert [strip_times(e) for e in events] == [strip_times(e) for e in whole]
    for e in events:
        got = (e.start, e.end, e.times) if isinstance(e, KeepAlive) else (e.start, e.end)
        assert got == expected_times(conv, e, byte_ts)


PLAIN_KINDS = [
    "StartRemoteTask",
    "ProcessAnswer",
    "KeepAlive",
    "RemoteTaskClose",
    "Ok",
    "OtherCommand",
    "ErrorAnswer",
]
HTTP_KINDS = [
    "HttpRequest",
    "OtherCommand",
    "HttpResponse",  # 100 Continue
    "HttpResponse",
    "Ok",
    "HttpRequest",
    "HttpResponse",
    "HttpRequest",
    "OtherCommand",
    "HttpResponse",
    "Ok",
]


@settings(max_examples=150, deadline=None)
@given(message_cuts(CONVERSATION))
def test_any_segmentation_gives_the_same_events(cuts: list[list[int]]):
    check_segmentation(CONVERSATION, cuts, PLAIN_KINDS)


@settings(max_examples=100, deadline=None)
@given(message_cuts(HTTP_CONVERSATION))
def test_any_segmentation_of_http_gives_the_same_events(cuts: list[list[int]]):
    check_segmentation(HTTP_CONVERSATION, cuts, HTTP_KINDS)


@pytest.mark.parametrize("conv", [CONVERSATION, HTTP_CONVERSATION], ids=["plain", "http"])
def test_one_byte_pieces_everywhere(conv: Conversation):
    kinds = PLAIN_KINDS if conv is CONVERSATION else HTTP_KINDS
    check_segmentation(conv, [list(range(1, len(d))) for _, d in conv], kinds)


LATIN1_XML = st.text(
    alphabet=st.sampled_from(["\t", "\n", "\r", *map(chr, range(0x20, 0x100))]), max_size=60
)


def escape_all(value: str) -> str:
    """Attribute escaping that survives attribute-value normalisation (XML 1.0 §3.3.3)."""
    value = enc.xml_escape(value)
    return value.replace("\t", "&#9;").replace("\n", "&#10;").replace("\r", "&#13;")


@settings(max_examples=150, deadline=None)
@given(LATIN1_XML, LATIN1_XML)
def test_latin1_attribute_values_round_trip(options: str, classpath: str):
    data = (
        f'{enc.PROLOG}<remote_scheduler.start_remote_task tcp_port="1" '
        f'java_options="{escape_all(options)}" java_classpath="{escape_all(classpath)}"/>'
    ).encode("latin-1")
    start = one(CommandDecoder("r").feed(C, 0, data, 0), StartRemoteTask)
    assert (start.java_options, start.java_classpath) == (options, classpath)
    plain = options.translate({9: None, 10: None, 13: None})
    if plain:
        encoded = enc.start_remote_task(1, java_options=plain)
        assert one(CommandDecoder("r").feed(C, 0, encoded, 0), StartRemoteTask).java_options == (
            plain
        )


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.sampled_from([C, S]), st.binary(max_size=40)), max_size=20))
def test_random_bytes_never_raise(pieces: list[tuple[int, bytes]]):
    w = Wire("fz")
    for i, (direction, data) in enumerate(pieces):
        if i % 7 == 6:
            w.gap(direction, 5, i)
        w.send(direction, data, i)
    w.close()
    for e in w.events:
        assert isinstance(e, Event) and e.conn == "fz"
        if isinstance(e, DecodeError):
            assert e.channel == "cmd" and e.reason
            assert not e.reason.startswith("internal")


# --- hostile input -----------------------------------------------------------------------------

BILLION_LAUGHS = (
    b'<?xml version="1.0"?><!DOCTYPE lolz [<!ENTITY lol0 "lol">'
    + b"".join(b'<!ENTITY lol%d "%s">' % (i, b"&lol%d;" % (i - 1) * 10) for i in range(1, 10))
    + b"]><lolz>&lol9;</lolz>"
)
XXE = (
    b'<?xml version="1.0"?><!DOCTYPE x [<!ENTITY xxe SYSTEM "file:///etc/passwd">]>'
    b'<remote_scheduler.start_remote_task tcp_port="1" java_options="&xxe;"/>'
)


@pytest.mark.parametrize("doc", [BILLION_LAUGHS, XXE], ids=["billion-laughs", "xxe"])
def test_entity_attacks_are_decode_errors(doc: bytes):
    w = Wire("h1")
    err = one(w.send(C, doc, 7), DecodeError)
    assert (err.conn, err.offset, err.start) == ("h1", 0, 7)
    assert "forbidden" in err.reason
    w.send(S, enc.ok_answer(T1))
    err = one(w.send(S, doc + b"\x00", 8), DecodeError)
    assert (err.direction, err.offset) == (S, len(enc.ok_answer(T1)))
    assert "forbidden" in err.reason
    assert isinstance(one(w.send(C, EXAMPLE1_CLOSE), RemoteTaskClose), RemoteTaskClose)


def test_any_doctype_is_refused():
    err = one(Wire().send(C, b'<!DOCTYPE a SYSTEM "a.dtd"><a/>'), DecodeError)
    assert "forbidden" in err.reason


# Pieces of documents: declarations with and without encodings, names with prefixes,
# entity and character references (good and bad), processing instructions, text, nesting
# beyond what is kept, characters that break well-formedness, and constructs with "<!"
# (parse_xml gives documents without "<!" to the C parser, the others to defusedxml).
_XML_PIECES = st.sampled_from(
    [
        '<?xml version="1.0"?>',
        '<?xml version="1.0" encoding="ISO-8859-1"?>',
        '<?xml version="1.0" encoding="UTF-16"?>',
        "<spooler>",
        "</spooler>",
        "<answer time='1'>",
        "</answer>",
        '<a:b xmlns:a="urn:x" a:c="1"/>',
        '<x y="1" y="2"/>',
        "<process pid='&#49;&#x32;' text='&lt;&amp;&gt;&quot;&apos;'/>",
        "&undefined;",
        "&#0;",
        "&#xD800;",
        "<?pi data?>",
        "text ",
        "\xe9\u20ac",
        "<",
        ">",
        "&",
        "'",
        "<a b=c/>",
        "\x00",
        "]]>",
        "<!-- note -->",
        "<![CDATA[<x>]]>",
        '<!DOCTYPE spooler [<!ENTITY e "x">]>',
        "&e;",
    ]
)


def _defused_parse(text: str) -> str:
    """The hardened parse parse_xml used for every document before the C parser took
    those without "<!": the tree it keeps (same target), or the error's text."""
    import xml.etree.ElementTree as ET

    from defusedxml import DefusedXmlException
    from defusedxml.ElementTree import DefusedXMLParser

    from jsdissect.protocol.command import _ShallowTree

    parser = DefusedXMLParser(
        target=_ShallowTree(), forbid_dtd=True, forbid_entities=True, forbid_external=True
    )
    try:
        parser.feed(text)
        return ET.tostring(parser.close(), encoding="unicode")
    except DefusedXmlException as e:
        return f"forbidden XML construct: {e}"
    except ET.ParseError as e:
        return f"not well-formed XML: {e}"


@settings(max_examples=400, deadline=None)
@given(st.lists(_XML_PIECES, max_size=8))
def test_xml_parses_as_the_hardened_parser_parses_it(pieces: list[str]):
    import xml.etree.ElementTree as ET

    from jsdissect.protocol.command import Malformed, _text_of, parse_xml

    raw = "".join(pieces).encode("latin-1", "replace")
    try:
        text = _text_of(raw)  # the declared encoding's text: what both parsers are given
    except (UnicodeError, ValueError):
        return
    try:
        got = ET.tostring(parse_xml(raw), encoding="unicode")
    except Malformed as e:
        got = str(e)
    assert got == _defused_parse(text)


def test_xml_with_a_dtd_is_still_refused_and_without_one_still_parsed():
    from jsdissect.protocol.command import Malformed, parse_xml

    with pytest.raises(Malformed, match="forbidden"):
        parse_xml(b'<?xml version="1.0" encoding="UTF-7"?>+ADwAIQ-DOCTYPE x+AD4-<x/>')
    root = parse_xml(b"<spooler><answer time='t'><process pid='7'/></answer></spooler>")
    assert root[0][0].get("pid") == "7"


def test_huge_attribute_value_keeps_memory_bounded():
    w = Wire("big")
    piece = b"x" * (1 << 20)
    head = b'<remote_scheduler.start_remote_task tcp_port="1" java_options="'
    tracemalloc.start()
    try:
        assert w.send(C, head, 1) == []
        for i in range(100):
            assert w.send(C, piece, 2 + i) == []
        out = w.send(C, b'"/>', 200)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 8 * (1 << 20)
    err = one(out, DecodeError)
    assert (err.conn, err.offset, err.start, err.end) == ("big", 0, 1, 200)
    assert f"larger than {MAX_MESSAGE}" in err.reason
    assert isinstance(one(w.send(C, EXAMPLE1_CLOSE), RemoteTaskClose), RemoteTaskClose)


def test_huge_answer_is_an_error_and_the_next_answer_decodes():
    w = Wire()
    w.send(C, EXAMPLE1_START)
    w.send(S, b"<?xml" + b"y" * (3 * MAX_MESSAGE), 1)
    err = one(w.send(S, b"\x00", 2), DecodeError)
    assert "larger than" in err.reason and (err.start, err.end) == (1, 2)
    w.send(C, EXAMPLE1_CLOSE)
    assert one(w.send(S, EXAMPLE1_OK), Ok).command == CLOSE


def test_deeply_nested_document_decodes_without_building_it():
    w = Wire()
    doc = b"<a>" * 100_000 + b"</a>" * 100_000
    assert one(w.send(C, doc), OtherCommand).name == "a"


def test_garbage_bytes_become_decode_errors():
    rng = random.Random(7)
    w = Wire("g")
    w.send(C, b"\x01\x02\xfe garbage\n", 1)
    w.send(C, b"<<<>>>" + bytes(rng.randrange(256) for _ in range(300)) + b"<z/>", 2)
    w.send(S, bytes(rng.randrange(1, 256) for _ in range(100)) + b"\x00", 3)
    w.close()
    errs = errors(w.events)
    assert errs and all(e.conn == "g" and e.reason for e in errs)
    assert errs[0].offset == 0 and errs[0].start == 1
    assert any(e.direction == S for e in errs)
