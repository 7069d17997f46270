"""Fuzzing (issue 9): hostile and broken input never crashes jsdissect and never costs more
than the input is worth.

Each stage gets its own property tests, with the invariant that stage promises:
- capture: any file yields Segments or raises CaptureError (naming the file), and stops;
- tcp: any segment sequence tiles each direction's stream with data and gaps exactly once,
  in order, and the out-of-order buffer stays inside the module's limits;
- protocol.command / protocol.objserver: any bytes become events and DecodeErrors, never an
  exception, never an "internal error" (the decoders' safety net catching a bug); huge
  lengths and counts are refused from the bytes at hand (memory measured with tracemalloc,
  work counted in reader calls, never timed);
- jsdissect.analyze: nothing but CaptureError escapes, and the tables and writers built on
  its result work.

Bounded for CI: every property has a fixed example budget (deadline=None) and the module runs
in about a minute on two cores. `FUZZ_EXAMPLES=N` gives every property N examples for a long
local run. Timers here are hang guards only: a guard that fires is a hang, not a slow run.
Crashes found by fuzzing are kept below as named regression tests.
"""

from __future__ import annotations

import io
import itertools
import json
import os
import signal
import struct
import sys
import tracemalloc
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from unittest import mock

import jsencode as enc
import pytest
from conversations import T0, command_chain, conversation_packets, write_pcap
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from outputs import exercise

import jsdissect
from jsdissect import report, tcp
from jsdissect.capture import (
    ACK,
    DECODERS,
    FIN,
    MAX_BLOCK_LEN,
    MAX_SNAPLEN,
    PCAP_MAGICS,
    PSH,
    RST,
    SYN,
    URG,
    CaptureError,
    CaptureStats,
    Segment,
    read_segments,
)
from jsdissect.pipeline import Analysis
from jsdissect.protocol import DecodeError, Event
from jsdissect.protocol import command as cmd
from jsdissect.protocol import objserver as api
from jsdissect.tcp import CLIENT_TO_SERVER, SERVER_TO_CLIENT, STATES, Connection, Reassembler

CAPTURES = Path(__file__).resolve().parent.parent / "captures"
SMALL_PCAP = (CAPTURES / "one_shell.pcap").read_bytes()  # Ethernet, one shell task
SMALL_PCAPNG = (CAPTURES / "one_api.pcapng").read_bytes()  # dumpcap, one API task
HANG_GUARD_S = 60  # far beyond any real run of these inputs: only a hang reaches it


def fuzz(examples: int) -> Callable:
    """Hypothesis settings for a bounded CI run; FUZZ_EXAMPLES overrides the budget."""
    return settings(
        max_examples=int(os.environ.get("FUZZ_EXAMPLES", examples)),
        deadline=None,
        suppress_health_check=[
            HealthCheck.too_slow,
            HealthCheck.data_too_large,
            HealthCheck.filter_too_much,
        ],
    )


class Hang(BaseException):
    """Raised by the hang guard; a BaseException so no `except Exception` swallows it."""


@contextmanager
def hang_guard(seconds: float = HANG_GUARD_S) -> Iterator[None]:
    def fire(signum: int, frame: Any) -> None:
        raise Hang(f"no result after {seconds} s: a hang (or an unbounded loop)")

    previous = signal.signal(signal.SIGALRM, fire)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


@contextmanager
def peak_memory() -> Iterator[list[int]]:
    """tracemalloc peak (bytes) of the block, in result[0] afterwards."""
    result = [0]
    tracemalloc.start()
    try:
        yield result
    finally:
        result[0] = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()


U32 = st.integers(0, 2**32 - 1)
U16 = st.integers(0, 2**16 - 1)
I64 = st.integers(-(2**63), 2**63 - 1)
NEAR_2_31 = [2**31 - 1, 2**31, 2**31 + 1, 2**32 - 1, 2**31 - 16, 2**30, 0x7FFFFFF0]


def interesting_u32(around: int = 0) -> st.SearchStrategy[int]:
    """Lengths and counts a fuzzer should try: edges, near 2^31, near a true value."""
    near = [max(0, around + d) for d in (-4, -1, 1, 4)] if around else []
    return st.sampled_from([0, 1, 2, 3, 4, 12, 16, 0xFFFF, *NEAR_2_31, *near]) | U32


# =========================================================================================
# capture: files
# =========================================================================================


def pcap_packets(data: bytes) -> list[bytes]:
    """The packets of a little-endian µs pcap (the seed captures), by record headers."""
    out, pos = [], 24
    while pos + 16 <= len(data):
        caplen = struct.unpack_from("<I", data, pos + 8)[0]
        out.append(data[pos + 16 : pos + 16 + caplen])
        pos += 16 + caplen
    return out


def pcap_payload_ranges(data: bytes) -> list[tuple[int, int]]:
    """File offsets [a, b) of every TCP payload in an Ethernet/IPv4 pcap (the seed)."""
    out, pos = [], 24
    while pos + 16 <= len(data):
        caplen = struct.unpack_from("<I", data, pos + 8)[0]
        ip = pos + 16 + 14
        tcp_at = ip + (data[ip] & 0x0F) * 4
        start = tcp_at + (data[tcp_at + 12] >> 4) * 4
        end = pos + 16 + caplen
        if start < end:
            out.append((start, end))
        pos = end
    return out


PACKETS = pcap_packets(SMALL_PCAP)
PAYLOADS = pcap_payload_ranges(SMALL_PCAP)


@st.composite
def packet_bytes(draw: st.DrawFn) -> bytes:
    """A real Ethernet/IPv4/TCP packet, maybe cut or altered, or random bytes."""
    if draw(st.integers(0, 4)) == 0:
        return draw(st.binary(max_size=80))
    packet = bytearray(draw(st.sampled_from(PACKETS)))
    for _ in range(draw(st.integers(0, 3))):
        pos = draw(st.integers(0, len(packet) - 1))
        packet[pos] = draw(st.integers(0, 255))
    return bytes(packet[: draw(st.integers(0, len(packet)))])


@st.composite
def pcap_files(draw: st.DrawFn) -> bytes:
    """Classic pcap with mutated header fields and record headers."""
    magic = draw(st.sampled_from(sorted(PCAP_MAGICS)) | st.binary(min_size=4, max_size=4))
    order, _nano, rec_len = PCAP_MAGICS.get(magic, ("<", False, 16))
    snaplen = draw(st.sampled_from([0, 1, 54, 65535, MAX_SNAPLEN, MAX_SNAPLEN + 1]) | U32)
    fcs_bits = draw(st.sampled_from([0, 0x10000000, 0xF0000000, 0x04000000]))
    linktype = draw(st.sampled_from(sorted(DECODERS)) | U32) | fcs_bits
    version = draw(st.sampled_from([(2, 4), (0, 0), (0xFFFF, 0xFFFF)]))
    out = bytearray(magic + struct.pack(order + "HHiIII", *version, 0, 0, snaplen, linktype))
    for _ in range(draw(st.integers(0, 10))):
        packet = draw(packet_bytes())
        caplen = draw(st.just(len(packet)) | interesting_u32(len(packet)))
        wirelen = draw(st.just(len(packet)) | interesting_u32(len(packet)))
        sec = draw(st.just(1_772_442_900) | U32)
        frac = draw(st.integers(0, 999_999) | U32)
        out += struct.pack(order + "IIII", sec, frac, caplen, wirelen)
        out += draw(st.binary(min_size=rec_len - 16, max_size=rec_len - 16))
        out += packet
    out += draw(st.binary(max_size=20))  # trailing garbage, or nothing
    return bytes(out)


@dataclass
class Block:
    btype: int
    body: bytes


def ng_options(order: str, options: list[tuple[int, bytes, int | None]]) -> bytes:
    """pcapng options; a length override makes the option claim more (or less) than it has."""
    out = b""
    for code, value, length in options:
        claimed = len(value) if length is None else length
        out += struct.pack(order + "HH", code, claimed) + value + b"\0" * (-len(value) % 4)
    return out


@st.composite
def ng_option_list(draw: st.DrawFn, order: str) -> bytes:
    options = []
    for _ in range(draw(st.integers(0, 3))):
        code = draw(st.sampled_from([0, 1, 2, 9, 14]) | U16)
        if code == 9:  # if_tsresol
            value = bytes([draw(st.sampled_from([0, 3, 6, 9, 0x80, 0x94, 0x7F, 0xFF]))])
        elif code == 14:  # if_tsoffset
            value = struct.pack(order + "q", draw(st.sampled_from([0, -1, 2**40]) | I64))
        else:
            value = draw(st.binary(max_size=12))
        length = draw(st.none() | st.sampled_from([0, 1, 7, 0xFFFF]))
        options.append((code, value, length))
    return ng_options(order, options)


@st.composite
def ng_blocks(draw: st.DrawFn, order: str) -> list[Block]:
    blocks = []
    for _ in range(draw(st.integers(0, 10))):
        kind = draw(st.sampled_from(["idb", "epb", "epb", "epb", "spb", "pb", "shb", "other"]))
        if kind == "idb":
            linktype = draw(st.sampled_from(sorted(DECODERS)) | U16)
            snaplen = draw(st.sampled_from([0, 64, MAX_SNAPLEN + 1]) | U32)
            body = struct.pack(order + "HHI", linktype, 0, snaplen)
            blocks.append(Block(1, body + draw(ng_option_list(order))))
        elif kind in ("epb", "pb"):
            packet = draw(packet_bytes())
            ifid = draw(st.sampled_from([0, 1, 2, 0xFFFF, 2**32 - 1]))
            hi = draw(st.just(0x00064C2E) | U32)
            lo = draw(U32)
            caplen = draw(st.just(len(packet)) | interesting_u32(len(packet)))
            wirelen = draw(st.just(len(packet)) | U32)
            if kind == "epb":
                head = struct.pack(order + "IIIII", ifid, hi, lo, caplen, wirelen)
                btype = 6
            else:
                head = struct.pack(order + "HHIIII", ifid & 0xFFFF, 0, hi, lo, caplen, wirelen)
                btype = 2
            tail = packet + b"\0" * (-len(packet) % 4) + draw(ng_option_list(order))
            blocks.append(Block(btype, head + tail))
        elif kind == "spb":
            packet = draw(packet_bytes())
            wirelen = draw(st.just(len(packet)) | interesting_u32(len(packet)))
            blocks.append(Block(3, struct.pack(order + "I", wirelen) + packet))
        elif kind == "shb":
            blocks.append(Block(0x0A0D0D0A, shb_body(draw(st.sampled_from("<>")))))
        else:
            blocks.append(Block(draw(U32), draw(st.binary(max_size=24))))
    return blocks


def shb_body(order: str) -> bytes:
    return struct.pack(order + "IHHq", 0x1A2B3C4D, 1, 0, -1)


def ng_block(order: str, block: Block, total: int | None = None, trailer: int | None = None):
    body = block.body + b"\0" * (-len(block.body) % 4)
    length = 12 + len(body)
    head = struct.pack(order + "II", block.btype, length if total is None else total)
    return head + body + struct.pack(order + "I", length if trailer is None else trailer)


@st.composite
def pcapng_files(draw: st.DrawFn) -> bytes:
    """pcapng from blocks with mutated types, lengths, interface ids, link types, options."""
    order = draw(st.sampled_from("<>"))
    out = bytearray(ng_block(order, Block(0x0A0D0D0A, shb_body(order))))
    first_idb = Block(1, struct.pack(order + "HHI", 1, 0, 0))
    for block in [first_idb, *draw(ng_blocks(order))]:
        total = trailer = None
        if draw(st.integers(0, 5)) == 0:  # a corrupt length field
            total = draw(st.sampled_from([0, 4, 8, 12, 13, MAX_BLOCK_LEN + 4, 2**32 - 4]) | U32)
        if draw(st.integers(0, 8)) == 0:
            trailer = draw(U32)
        out += ng_block(order, block, total, trailer)
    return bytes(out[: draw(st.integers(0, len(out)))] if draw(st.booleans()) else out)


@st.composite
def mutated(draw: st.DrawFn, seed: bytes) -> bytes:
    """A real capture with bit flips, overwritten words, cuts, duplications and insertions."""
    data = bytearray(seed)
    for _ in range(draw(st.integers(1, 6))):
        op = draw(st.sampled_from(["flip", "byte", "word", "cut", "dup", "insert"]))
        pos = draw(st.integers(0, max(len(data) - 1, 0)))
        if not data:
            break
        if op == "flip":
            data[pos] ^= 1 << draw(st.integers(0, 7))
        elif op == "byte":
            data[pos] = draw(st.integers(0, 255))
        elif op == "word":
            word = draw(interesting_u32()).to_bytes(4, draw(st.sampled_from(["little", "big"])))
            data[pos : pos + 4] = word
        elif op == "cut":
            del data[pos:]
        elif op == "dup":
            size = draw(st.integers(1, 200))
            data[pos:pos] = data[pos : pos + size]
        else:
            data[pos:pos] = draw(st.binary(min_size=1, max_size=16))
    return bytes(data)


@pytest.fixture(scope="module")
def scratch(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("fuzz")


def read_or_capture_error(path: Path, engine: str) -> list[Segment] | None:
    """All segments of `path`, or None when it raised CaptureError (which must name it)."""
    stats = CaptureStats()
    try:
        with hang_guard():
            segments = list(read_segments([path], engine=engine, stats=stats))
    except CaptureError as exc:
        assert str(path) in str(exc), f"CaptureError does not name the file: {exc}"
        return None
    size = path.stat().st_size
    # Every packet costs at least a 16-byte record header (pcap) or block (pcapng).
    assert len(segments) <= size // 16, "more segments than the file can hold"
    for seg in segments:
        assert type(seg) is Segment
        assert 0 <= seg.sport <= 0xFFFF and 0 <= seg.dport <= 0xFFFF
        assert 0 <= seg.seq < 2**32 and 0 <= seg.ack < 2**32
        assert len(seg.payload) <= MAX_SNAPLEN and seg.missing >= 0
    return segments


def write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


@pytest.mark.parametrize("engine", ["python", "auto"])
@fuzz(150)
@given(data=pcap_files())
def test_reader_on_mutated_pcap_headers_and_records(scratch: Path, engine: str, data: bytes):
    read_or_capture_error(write(scratch / "f.pcap", data), engine)


@pytest.mark.parametrize("engine", ["python", "auto"])
@fuzz(150)
@given(data=pcapng_files())
def test_reader_on_mutated_pcapng_blocks(scratch: Path, engine: str, data: bytes):
    read_or_capture_error(write(scratch / "f.pcapng", data), engine)


@pytest.mark.parametrize("engine", ["python", "auto"])
@pytest.mark.parametrize("seed", ["pcap", "pcapng"])
@fuzz(75)
@given(st.data())
def test_reader_on_bit_flips_of_a_real_capture(scratch: Path, engine: str, seed: str, data):
    original = SMALL_PCAP if seed == "pcap" else SMALL_PCAPNG
    read_or_capture_error(write(scratch / f"m.{seed}", data.draw(mutated(original))), engine)


# =========================================================================================
# tcp: random segment sequences
# =========================================================================================

HOSTS = [("10.0.0.1", 40000), ("10.0.0.2", 4444), ("10.0.0.1", 40001), ("2001:db8::1", 59999)]
FLAG_SETS = [SYN, SYN | ACK, ACK, PSH | ACK, FIN | ACK, RST, RST | ACK, FIN, 0, URG | ACK]
ISN = (1000, 2**32 - 40)  # the second wraps around within a few segments


@st.composite
def segment_sequences(draw: st.DrawFn) -> list[Segment]:
    """Segments between a few endpoints: random flags, sequence numbers near each side's
    stream (overlaps, holes, reordering, wrap-around) or anywhere, times mostly forward."""
    segments = []
    ts = T0
    for _ in range(draw(st.integers(1, 40))):
        a, b = draw(st.permutations(HOSTS))[:2]
        side = HOSTS.index(a) % 2
        flags = draw(st.sampled_from(FLAG_SETS) | st.integers(0, 0xFF))
        seq = draw(st.integers(-8, 120).map(lambda d, s=side: (ISN[s] + d) % 2**32) | U32)
        ack = draw(st.integers(-8, 120).map(lambda d, s=side: (ISN[1 - s] + d) % 2**32) | U32)
        payload = draw(st.binary(max_size=40))
        missing = draw(st.sampled_from([0, 0, 0, 1, 100]) | st.integers(0, 2**31))
        ts += draw(st.integers(-1000, 3_000_000))
        segments.append(Segment(ts, *a, *b, seq, ack, flags, 1024, payload, missing, None, None))
    return segments


class TilingSink:
    """Checks the StreamSink contract as it is called."""

    def __init__(self) -> None:
        self.open: set[str] = set()
        self.next: dict[tuple[str, int], int] = {}
        self.data: Counter[tuple[str, int]] = Counter()
        self.gaps: Counter[str] = Counter()
        self.opened = self.closed = 0

    def on_open(self, conn_id: str, client, server, ts: int, handshake: bool) -> None:
        assert conn_id not in self.open, "two open connections with one id"
        self.open.add(conn_id)
        self.next[conn_id, 0] = self.next[conn_id, 1] = 0
        self.data[conn_id, 0] = self.data[conn_id, 1] = self.gaps[conn_id] = 0
        self.opened += 1

    def on_data(self, conn_id: str, direction: int, offset: int, data: bytes, ts: int) -> None:
        assert conn_id in self.open and data
        assert offset == self.next[conn_id, direction], "data not where the stream stands"
        self.next[conn_id, direction] += len(data)
        self.data[conn_id, direction] += len(data)

    def on_gap(self, conn_id: str, direction: int, offset: int, size: int, ts: int) -> None:
        assert conn_id in self.open and size > 0
        assert offset == self.next[conn_id, direction], "gap not where the stream stands"
        self.next[conn_id, direction] += size
        self.gaps[conn_id] += size

    def on_close(self, conn: Connection) -> None:
        assert conn.id in self.open
        self.open.discard(conn.id)
        self.closed += 1
        assert conn.bytes_c2s == self.data[conn.id, CLIENT_TO_SERVER]
        assert conn.bytes_s2c == self.data[conn.id, SERVER_TO_CLIENT]
        assert conn.gap_bytes == self.gaps[conn.id] and conn.state in STATES


SMALL_LIMITS = {"MAX_BUFFER_BYTES": 64, "MAX_BUFFER_PIECES": 3, "MAX_RECENT": 2}


@fuzz(400)
@given(segments=segment_sequences())
def test_reassembler_tiles_every_stream_and_stays_bounded(segments: list[Segment]):
    """Small limits (patched) so that the bounding paths run on small inputs."""
    sink = TilingSink()
    keys = set()
    with mock.patch.multiple(tcp, **SMALL_LIMITS), hang_guard():
        r = Reassembler(sink)
        for seg in segments:
            r.add(seg)
            keys.add(frozenset(((seg.src, seg.sport), (seg.dst, seg.dport))))
            assert r.open_connections <= len(keys)
            assert r.recently_closed <= SMALL_LIMITS["MAX_RECENT"]
            for conn in r._conns.values():
                for half in conn.halves:
                    assert half.buffered == sum(len(p) for p, _ in half.pieces)
                    assert half.buffered <= SMALL_LIMITS["MAX_BUFFER_BYTES"]
                    assert len(half.starts) <= SMALL_LIMITS["MAX_BUFFER_PIECES"]
        r.finish()
    assert not sink.open and sink.opened == sink.closed and r.open_connections == 0


@fuzz(100)
@given(segments=segment_sequences())
def test_reassembler_with_real_limits_never_raises(segments: list[Segment]):
    sink = TilingSink()
    r = Reassembler(sink)
    for seg in segments:
        r.add(seg)
    r.finish()
    assert not sink.open


# =========================================================================================
# protocol.command: random and hostile XML
# =========================================================================================

CONN = "Cfuzz"


def feed_all(
    decoder: cmd.CommandDecoder | api.ObjServerDecoder,
    pieces: list[tuple[int, bytes | int]],
) -> list[Event]:
    """Feed (direction, bytes) pieces in order, an int piece being a gap of that size; close."""
    events: list[Event] = []
    offsets = [0, 0]
    ts = T0
    with hang_guard():
        for direction, piece in pieces:
            ts += 1000
            if isinstance(piece, int):
                events += decoder.gap(direction, offsets[direction], piece, ts)
                offsets[direction] += piece
            else:
                events += decoder.feed(direction, offsets[direction], piece, ts)
                offsets[direction] += len(piece)
        events += decoder.close()
    check_events(events, "cmd" if isinstance(decoder, cmd.CommandDecoder) else "api", offsets)
    return events


def check_events(events: list[Event], channel: str, offsets: list[int]) -> None:
    for ev in events:
        assert isinstance(ev, Event) and ev.conn == CONN
        assert ev.direction in (0, 1) and 0 <= ev.offset <= offsets[ev.direction]
        assert ev.start <= ev.end
        if isinstance(ev, DecodeError):
            assert ev.channel == channel and ev.reason
            # The decoders' safety nets turn a bug into this reason: fuzzing wants the bug.
            assert "internal" not in ev.reason, ev.reason


TAGS = [
    cmd.START,
    cmd.CLOSE,
    cmd.KILL,
    "spooler",
    "command",
    "commands",
    "answer",
    "process",
    "ok",
    "ERROR",
    "x:a",
    "show_state",
]
ATTRS = ["tcp_port", "kind", "process_id", "pid", "kill", "signal", "code", "text", "time"]
ENCODINGS = ["ISO-8859-1", "UTF-8", "utf-16", "utf-32", "utf-7", "idna", "punycode"]
ENCODINGS += ["rot13", "zlib", "cp500", "hz", "bogus", "unicode_escape", "raw_unicode_escape"]
ATTR_VALUES = st.sampled_from(
    [
        *("59999", "99999", "-1", "1e9", "99999999999999999999999", "process", "yes", "&amp;"),
        *("&#0;", "&#x110000;", "&undefined;", "\u0100\ud800", "'\"", "9" * 5000),
    ]
) | st.text(max_size=12)


def xml_element(depth: int = 0) -> st.SearchStrategy[str]:
    children = st.lists(xml_element(depth + 1), max_size=2) if depth < 3 else st.just([])
    return st.builds(
        lambda tag, attrs, kids, text, empty: (
            f"<{tag}"
            + "".join(f' {k}="{v}"' for k, v in attrs)
            + ("/>" if empty and not kids else ">" + text + "".join(kids) + f"</{tag}>")
        ),
        st.sampled_from(TAGS),
        st.lists(
            st.tuples(st.sampled_from([*ATTRS, "xmlns:x", "x:kind"]), ATTR_VALUES), max_size=3
        ),
        children,
        st.sampled_from(["", "text", "<![CDATA[<x>]]>", "<!-- c -->", "<?pi x?>", "&lt;", "]]>"]),
        st.booleans(),
    )


@st.composite
def xml_documents(draw: st.DrawFn) -> bytes:
    prolog = draw(
        st.sampled_from(["", '<?xml version="1.0"?>'])
        | st.sampled_from(ENCODINGS).map(lambda e: f'<?xml version="1.0" encoding="{e}"?>')
    )
    noise = draw(st.sampled_from(["", " ", "\0", "\n", "<!DOCTYPE x>", "<", ">", "</x>"]))
    text = prolog + noise + draw(xml_element())
    codec = draw(st.sampled_from(["latin-1", "utf-8", "utf-16"]))
    return text.encode(codec, "replace" if codec == "latin-1" else "surrogatepass")


def split(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({c % (len(data) + 1) for c in cuts} | {0, len(data)})
    return [data[a:b] for a, b in itertools.pairwise(points) if b > a]


@fuzz(300)
@given(
    st.lists(
        st.tuples(st.sampled_from([0, 1]), st.binary(max_size=64) | st.integers(1, 2**40)),
        max_size=20,
    ),
    st.booleans(),
)
def test_command_decoder_on_random_bytes_and_gaps(pieces, midstream: bool):
    feed_all(cmd.CommandDecoder(CONN, midstream=midstream), pieces)


@pytest.mark.filterwarnings("error")  # a warning inside the decoder is a bug too
@fuzz(300)
@given(
    st.lists(st.tuples(st.sampled_from([0, 1]), xml_documents(), st.sampled_from(["", " ", "\0"]))),
    st.lists(st.integers(0, 10_000), max_size=8),
    st.booleans(),
)
def test_command_decoder_on_random_xml_documents(docs, cuts, http: bool):
    """Commands and NUL-terminated answers (or HTTP messages) cut into random pieces."""
    streams = [bytearray(), bytearray()]
    for direction, doc, sep in docs:
        if http:
            line = b"POST /x HTTP/1.1" if direction == 0 else b"HTTP/1.1 200 OK"
            streams[direction] += line + b"\r\nContent-Length: %d\r\n\r\n" % len(doc) + doc
        else:
            streams[direction] += sep.encode() + doc + (b"\0" if direction == 1 else b"")
    pieces = [(d, p) for d in (0, 1) for p in split(bytes(streams[d]), cuts)]
    pieces.sort(key=lambda dp: dp[0] == 1)  # commands first, as on the wire
    feed_all(cmd.CommandDecoder(CONN), pieces)


def billion_laughs() -> bytes:
    """Ten levels of entities, each ten of the one below: 10^9 'lol's if expanded."""
    entities = [b'<!ENTITY lol0 "lol">']
    entities += [b'<!ENTITY lol%d "%s">' % (i, b"&lol%d;" % (i - 1) * 10) for i in range(1, 10)]
    doc = b'<?xml version="1.0"?><!DOCTYPE lolz [' + b"".join(entities) + b"]>"
    return doc + b'<remote_scheduler.start_remote_task tcp_port="&lol9;"/>'


HOSTILE_XML = {
    "billion-laughs": billion_laughs(),
    "external-entity": b'<?xml version="1.0"?><!DOCTYPE x [<!ENTITY e SYSTEM "file:///etc/passwd">]>'
    b'<remote_scheduler.start_remote_task tcp_port="&e;"/>',
    "external-dtd": b'<?xml version="1.0"?><!DOCTYPE x SYSTEM "http://127.0.0.1:1/x.dtd">'
    b"<remote_scheduler.start_remote_task/>",
    "parameter-entity": b'<?xml version="1.0"?><!DOCTYPE x [<!ENTITY % p SYSTEM "file:///etc/">'
    b"%p;]><remote_scheduler.start_remote_task/>",
    "quadratic-blowup": b'<?xml version="1.0"?><!DOCTYPE x [<!ENTITY a "'
    + b"a" * 50_000
    + b'">]><remote_scheduler.start_remote_task kind="'
    + b"&a;" * 10_000
    + b'"/>',
}


@pytest.mark.parametrize("name", sorted(HOSTILE_XML))
@pytest.mark.parametrize("direction", [CLIENT_TO_SERVER, SERVER_TO_CLIENT])
def test_hostile_xml_is_a_decode_error(name: str, direction: int):
    doc = HOSTILE_XML[name] + (b"\0" if direction == SERVER_TO_CLIENT else b"")
    with peak_memory() as peak:
        events = feed_all(cmd.CommandDecoder(CONN), [(direction, doc)])
    assert [type(e) for e in events] == [DecodeError], events
    assert "forbidden" in events[0].reason or "larger than" in events[0].reason
    assert peak[0] < 16 * len(doc) + (4 << 20)  # no expansion happened


def test_xml_nested_a_hundred_thousand_deep_costs_no_recursion():
    depth = 100_000
    doc = b"<remote_scheduler.start_remote_task>" + b"<a>" * depth + b"</a>" * depth
    doc += b"</remote_scheduler.start_remote_task>"
    (ev,) = feed_all(cmd.CommandDecoder(CONN), [(CLIENT_TO_SERVER, doc)])
    assert isinstance(ev, cmd.StartRemoteTask)


def stream_of(head: bytes, filler: bytes, total: int, tail: bytes) -> Iterator[bytes]:
    """head + `total` bytes of filler in 64 KB pieces + tail, without holding it all."""
    yield head
    chunk = filler * (65536 // len(filler))
    sent = 0
    while sent < total:
        piece = chunk[: total - sent]
        sent += len(piece)
        yield piece
    yield tail


HUNDRED_MB = 100 << 20
STREAMED = {
    "attribute": (0, b'<remote_scheduler.start_remote_task kind="', b"x", b'"/>', "command larger"),
    "answer": (1, b'<?xml version="1.0"?><spooler><answer x="', b"y", b'"/></spooler>\0', "answer"),
    "http-body": (
        0,
        b"POST / HTTP/1.1\r\nContent-Length: %d\r\n\r\n" % HUNDRED_MB,
        b"<",
        b"",
        "HTTP",
    ),
    "http-head": (0, b"GET / HTTP/1.1\r\nX: ", b"h", b"\r\n\r\n", "HTTP head"),
}


@pytest.mark.parametrize("name", sorted(STREAMED))
def test_hundred_megabytes_streamed_are_counted_not_held(name: str):
    direction, head, filler, tail, reason = STREAMED[name]
    decoder = cmd.CommandDecoder(CONN)
    events: list[Event] = []
    offset = 0
    with peak_memory() as peak, hang_guard():
        for piece in stream_of(head, filler, HUNDRED_MB, tail):
            events += decoder.feed(direction, offset, piece, T0)
            offset += len(piece)
        events += decoder.close()
    errors = [e for e in events if isinstance(e, DecodeError)]
    assert errors and reason in errors[0].reason, events[:3]
    assert peak[0] < 8 << 20  # MAX_MESSAGE (1 MB) held at most, plus the pieces


@pytest.mark.filterwarnings("error")
def test_prolog_naming_an_escape_codec_is_read_as_latin_1():
    """Found by the XML fuzzer: encoding="unicode_escape" made Python interpret backslashes
    in the document (and warn about each invalid one). It names no character set."""
    doc = b'<?xml version="1.0" encoding="unicode_escape"?>'
    doc += b'<remote_scheduler.start_remote_task tcp_port="59999" java_options="-D\\x41"/>'
    (ev,) = feed_all(cmd.CommandDecoder(CONN), [(CLIENT_TO_SERVER, doc)])
    assert isinstance(ev, cmd.StartRemoteTask) and ev.java_options == "-D\\x41"  # not "-DA"


def test_keep_alive_spaces_come_in_bounded_events():
    events = feed_all(cmd.CommandDecoder(CONN), [(0, b" " * 100_000), (0, b"<a/>")])
    spaces = [e for e in events if isinstance(e, cmd.KeepAlive)]
    assert sum(e.count for e in spaces) == 100_000
    assert max(e.count for e in spaces) <= cmd.MAX_KEEPALIVE_RUN


# =========================================================================================
# protocol.objserver: frames, values, counts, nesting
# =========================================================================================

VT_ARRAY = api.VT_ARRAY
RMIS_ID = 0x0000000100000001


def frame(payload: bytes, length: int | None = None) -> bytes:
    return struct.pack(">I", len(payload) if length is None else length) + payload


@contextmanager
def counted_reads() -> Iterator[Counter[str]]:
    """Count the reader's primitive reads: the work a frame costs, whatever the clock says."""
    counts: Counter[str] = Counter()
    fixed, raw = api._Reader.fixed, api._Reader.raw
    strings, variants = api._Reader.strings, api._Reader.variants

    def counting_fixed(self, layout, what):
        counts["reads"] += 1
        return fixed(self, layout, what)

    def counting_raw(self, size, what):
        counts["reads"] += 1
        return raw(self, size, what)

    # Runs of strings and VARIANTs read their usual elements inline: one read an element.
    def counting_strings(self, n, what):
        counts["reads"] += n
        return strings(self, n, what)

    def counting_variants(self, n, depth):
        counts["reads"] += n
        return variants(self, n, depth)

    with (
        mock.patch.object(api._Reader, "fixed", counting_fixed),
        mock.patch.object(api._Reader, "raw", counting_raw),
        mock.patch.object(api._Reader, "strings", counting_strings),
        mock.patch.object(api._Reader, "variants", counting_variants),
    ):
        yield counts


def read_bound(payload_bytes: int, frames: int) -> int:
    """Each successful read consumes a byte or follows one that did; one failure per frame
    part (request or answer)."""
    return 2 * payload_bytes + 4 * frames


def rmis_handshake() -> list[tuple[int, bytes]]:
    """CreateInstance from the controller (server→client) and its answer: RMIS known."""
    rmis = enc.ObjRef(
        RMIS_ID, is_new=True, title="Remote_module_instance_server", clsid=enc.CLSID_RMIS
    )
    return [
        (SERVER_TO_CLIENT, enc.create_instance()),
        (CLIENT_TO_SERVER, enc.answer_create_instance(rmis)),
    ]


LATIN1_TEXT = st.text(st.characters(max_codepoint=0xFF), max_size=6)


def vt(value: int) -> bytes:
    return struct.pack(">I", value)


def signed(value: int) -> int:
    """An int32 field's value for any u32 or negative number (the same 32 bits)."""
    value &= 0xFFFFFFFF
    return value - 2**32 if value >= 2**31 else value


def safearray_head(tag: int, count: int, dims: int = 1, features: int = 0) -> bytes:
    return vt(VT_ARRAY | tag) + struct.pack(">hHiii", dims, features, signed(count), 0, tag)


@st.composite
def variant_bytes(draw: st.DrawFn, depth: int = 0) -> bytes:
    """A VARIANT as bytes: valid layouts with hostile lengths and counts, or junk."""
    kind = draw(st.integers(0, 9 if depth < 3 else 2))
    if kind == 0:
        tag = draw(st.sampled_from([0, 1, 2, 3, 0x0B, 0x10, 0x14, 0x15]) | U32)
        return vt(tag) + draw(st.binary(max_size=9))
    if kind == 1:  # BSTR with a length that may lie
        text = draw(st.binary(max_size=12))
        length = draw(st.just(len(text)) | interesting_u32(len(text)))
        return vt(api.VT_BSTR) + struct.pack(">I", length) + text
    if kind == 2:  # double as text
        text = draw(st.sampled_from([b"1.5", b"nan", b"1e999", b"x", b""]) | st.binary(max_size=6))
        return vt(api.VT_R8) + bytes([draw(st.sampled_from([0x73, 0]))]) + bytes([len(text)]) + text
    if kind in (3, 4, 5):  # objref, maybe new, with properties
        object_id = draw(st.sampled_from([0, 1, 2**63, 2**64 - 1]))
        body = struct.pack(">QB", object_id, draw(st.sampled_from([0, 1, 2])))
        if body[-1]:
            body += enc.string(draw(st.sampled_from(["Com_log", "Com_task", "x"])))
            body += enc.guid(draw(st.sampled_from([enc.CLSID_RMIS, api.CLSID_COM_LOG_PROXY])))
            props = draw(st.lists(variant_bytes(depth + 1), max_size=2 if depth < 3 else 0))
            count = draw(st.just(len(props)) | interesting_u32())
            body += struct.pack(">I", count)
            body += b"".join(enc.string("p") + p for p in props)
        return vt(draw(st.sampled_from([api.VT_DISPATCH, api.VT_UNKNOWN]))) + body
    # SAFEARRAY of UI1, BSTR or VARIANT, with a count that may lie
    tag = draw(st.sampled_from([api.VT_UI1, api.VT_BSTR, api.VT_VARIANT, api.VT_I4]))
    if tag == api.VT_VARIANT:
        elements = draw(st.lists(variant_bytes(depth + 1), max_size=3))
    elif tag == api.VT_BSTR:
        elements = [enc.string(s) for s in draw(st.lists(LATIN1_TEXT, max_size=3))]
    else:
        elements = [bytes([b]) for b in draw(st.binary(max_size=6))]
    count = draw(st.just(len(elements)) | interesting_u32())
    dims = draw(st.sampled_from([1, 1, 1, 0, 2, -1]))
    return safearray_head(tag, count, dims) + b"".join(elements)


@st.composite
def request_payloads(draw: st.DrawFn) -> bytes:
    """Requests of every command with hostile counts, or answers, or junk classes."""
    object_id = struct.pack(">Q", draw(st.sampled_from([0x0000000100000001, 0, 2**64 - 1])))
    kind = draw(st.sampled_from(["call", "invoke", "ids", "create", "answer", "error", "junk"]))
    args = draw(st.lists(variant_bytes(), max_size=3))
    n_args = draw(st.just(len(args)) | interesting_u32())
    n_named = draw(st.sampled_from([0, 1, n_args]) | interesting_u32())
    dispparams = struct.pack(">II", n_args & 0xFFFFFFFF, n_named & 0xFFFFFFFF)
    dispparams += b"".join(struct.pack(">i", -3) for _ in range(min(n_named, 2))) + b"".join(args)
    if kind == "call":
        method = draw(st.sampled_from(["construct", "begin", "step", "call", "end", "release"]))
        return b"O" + object_id + b"A" + enc.string(method) + dispparams
    if kind == "invoke":
        head = struct.pack(
            ">i16sii",
            draw(st.sampled_from([14, 30, 0, -3])),
            bytes(16),
            0,
            draw(st.sampled_from([1, 2, 4, 8, 0xFFFF])),
        )
        return b"O" + object_id + b"I" + head + dispparams
    if kind == "ids":
        names = draw(st.lists(LATIN1_TEXT, max_size=3))
        count = draw(st.just(len(names)) | interesting_u32())
        return (
            b"O"
            + object_id
            + b"G"
            + bytes(16)
            + bytes(4)
            + struct.pack(">I", count)
            + b"".join(enc.string(n) for n in names)
        )
    if kind == "create":
        iids = draw(st.integers(0, 3))
        count = draw(st.just(iids) | interesting_u32())
        return (
            b"S"
            + bytes(8)
            + b"C"
            + enc.guid(enc.CLSID_RMIS)
            + bytes(9)
            + bytes(4)
            + struct.pack(">I", count)
            + enc.guid(enc.IID_RMIS) * iids
        )
    if kind == "answer":
        return b"A" + struct.pack(">i", draw(st.sampled_from([0, -2147352567]))) + b"".join(args)
    if kind == "error":
        return b"E" + b"".join(enc.string(s) for s in ("name=x", "code=Z-1", "what=boom"))
    return bytes([draw(st.integers(0, 255))]) + draw(st.binary(max_size=30))


HOSTILE_NUMBERS = [
    "1",
    "-1",
    "",
    " 7 ",
    "0x10",
    "9" * 5000,
    "1e3",
    "\xb2",
    "99999999999999999999",
]


@st.composite
def lifecycle_frames(draw: st.DrawFn) -> list[tuple[int, bytes]]:
    """construct with hostile parameters, then step answered with a hostile
    <process.result>: the texts the decoder parses beyond the value layouts."""
    number = st.sampled_from(HOSTILE_NUMBERS)
    params = [f"job={draw(LATIN1_TEXT)}", f"task_id={draw(number)}", draw(LATIN1_TEXT)]
    result = draw(
        st.sampled_from(
            [
                f'<process.result exit_code="{draw(number)}" signal="{draw(number)}"'
                f' spooler_process_result="{draw(LATIN1_TEXT)}"/>',
                "<process.result",
                "<x/>",
                '<!DOCTYPE x [<!ENTITY e SYSTEM "file:///etc/passwd">]><process.result/>',
            ]
        )
        | xml_documents().map(lambda b: b.decode("latin-1"))
    )
    construct = enc.call(RMIS_ID, "construct", enc.construct_args(params))
    step = enc.call(RMIS_ID, "step")
    answer = enc.answer_value(
        enc.V(enc.VT_BSTR, result.encode("latin-1", "replace").decode("latin-1"))
    )
    answered = enc.answer_value(enc.V(enc.VT_EMPTY))
    return [
        (SERVER_TO_CLIENT, construct),
        (CLIENT_TO_SERVER, answered),
        (SERVER_TO_CLIENT, step),
        (CLIENT_TO_SERVER, answer),
    ]


@st.composite
def objserver_streams(draw: st.DrawFn) -> list[tuple[int, bytes | int]]:
    """Frames in both directions (lengths true or hostile), cut into pieces, with gaps."""
    pieces: list[tuple[int, bytes | int]] = []
    if draw(st.booleans()):
        pieces += rmis_handshake() + draw(lifecycle_frames())
    for _ in range(draw(st.integers(1, 8))):
        direction = draw(st.sampled_from([0, 1]))
        payload = draw(request_payloads())
        length = draw(st.none() | interesting_u32(len(payload)))
        data = frame(payload, length)
        for piece in split(data, draw(st.lists(st.integers(0, 200), max_size=3))):
            pieces.append((direction, piece))
        if draw(st.integers(0, 10)) == 0:
            pieces.append((direction, draw(st.sampled_from([1, 4, 100, 2**31]))))
    return pieces


@fuzz(400)
@given(objserver_streams(), st.sampled_from([None, 0, 1]))
def test_objserver_decoder_on_random_frames(pieces, controller):
    """No exception, no internal error, and work bounded by the bytes fed."""
    fed = sum(len(p) for _, p in pieces if isinstance(p, bytes))
    with counted_reads() as counts:
        feed_all(api.ObjServerDecoder(CONN, controller), pieces)
    assert counts["reads"] <= read_bound(fed, fed // 4 + 2)


@fuzz(200)
@given(st.lists(st.tuples(st.sampled_from([0, 1]), st.binary(max_size=64)), max_size=20))
def test_objserver_decoder_on_random_bytes(pieces):
    feed_all(api.ObjServerDecoder(CONN), pieces)


def call_frame(*args: bytes, method: str = "call") -> bytes:
    params = struct.pack(">ii", len(args), 0) + b"".join(reversed(args))
    return enc.frame(
        b"O" + struct.pack(">Q", 0x0000000100000001) + b"A" + enc.string(method) + params
    )


def decode_call(*args: bytes) -> tuple[list[Event], int]:
    """Events and reader work of one call after the handshake."""
    pieces = [*rmis_handshake(), (SERVER_TO_CLIENT, call_frame(*args))]
    with counted_reads() as counts:
        events = feed_all(api.ObjServerDecoder(CONN), pieces)
    return events, counts["reads"]


def errors_of(events: list[Event]) -> list[str]:
    return [e.reason for e in events if isinstance(e, DecodeError)]


@pytest.mark.parametrize("tag", [api.VT_UI1, api.VT_BSTR, api.VT_VARIANT])
@pytest.mark.parametrize("count", [2**31 - 1, -(2**31), -1, 2**30])
def test_safearray_claiming_two_billion_elements_is_refused_without_looping(tag, count):
    events, reads = decode_call(safearray_head(tag, count) + b"\0" * 8)
    (reason,) = errors_of(events)
    assert "claims" in reason
    assert reads < 60  # the handshake and one call: the count was never looped over


@pytest.mark.parametrize("length", [2**31 - 1, 2**31, 2**32 - 1, 2**31 - 16])
def test_string_length_near_2_31_is_refused_from_the_bytes_at_hand(length: int):
    with peak_memory() as peak:
        events, reads = decode_call(vt(api.VT_BSTR) + struct.pack(">I", length) + b"abc")
    (reason,) = errors_of(events)
    assert "truncated" in reason or "negative" in reason
    assert peak[0] < 1 << 20 and reads < 60


@pytest.mark.parametrize(
    ("what", "body"),
    [
        (
            "objref properties",
            vt(api.VT_DISPATCH)
            + struct.pack(">QB", 5, 1)
            + enc.string("t")
            + bytes(16)
            + struct.pack(">I", 2**31 - 1),
        ),
        ("dispparams", None),
        ("names", None),
        ("iids", None),
    ],
)
def test_other_counts_near_2_31_are_refused(what: str, body: bytes | None):
    rmis_id = struct.pack(">Q", 0x0000000100000001)
    if what == "objref properties":
        frame_bytes = call_frame(body)
    elif what == "dispparams":
        frame_bytes = enc.frame(
            b"O" + rmis_id + b"A" + enc.string("x") + struct.pack(">ii", 2**31 - 1, 2**31 - 1)
        )
    elif what == "names":
        frame_bytes = enc.frame(b"O" + rmis_id + b"G" + bytes(20) + struct.pack(">i", 2**31 - 1))
    else:
        frame_bytes = enc.frame(
            b"S" + bytes(8) + b"C" + bytes(16) + bytes(9) + bytes(4) + struct.pack(">i", 2**31 - 1)
        )
    with counted_reads() as counts:
        events = feed_all(api.ObjServerDecoder(CONN), [*rmis_handshake(), (1, frame_bytes)])
    (reason,) = errors_of(events)
    assert "does not fit" in reason or "do not fit" in reason
    assert counts["reads"] < 60


@pytest.mark.parametrize("length", [api.MAX_MESSAGE_SIZE + 1, 2**31 - 1, 2**31, 2**32 - 1])
def test_frame_length_beyond_what_any_peer_accepts_allocates_nothing(length: int):
    with peak_memory() as peak:
        events = feed_all(api.ObjServerDecoder(CONN), [(0, frame(b"O" + bytes(20), length))])
    (reason,) = errors_of(events)
    assert "framing lost" in reason and peak[0] < 1 << 20


@pytest.mark.parametrize("length", [api.MESSAGE_SIZE_MAXIMUM + 1, api.MAX_MESSAGE_SIZE])
def test_frame_length_beyond_our_bound_is_read_past_holding_nothing(length: int):
    """C++ peers accept frames up to 1 GB (§5.1): one over our 100 MB bound is read past,
    not held, and framing goes on after it."""
    with peak_memory() as peak:
        events = feed_all(
            api.ObjServerDecoder(CONN),
            [(0, frame(b"O" + bytes(1000), length)), (0, bytes(1 << 18))],
        )
    (reason,) = errors_of(events)
    assert "connection ended inside a frame" in reason and peak[0] < 1 << 20


def test_frame_claiming_a_hundred_megabytes_holds_only_what_arrived():
    with peak_memory() as peak:
        events = feed_all(
            api.ObjServerDecoder(CONN), [(0, frame(b"O" + bytes(1000), api.MESSAGE_SIZE_MAXIMUM))]
        )
    (reason,) = errors_of(events)
    assert "connection ended inside a frame" in reason and peak[0] < 1 << 20


def nested_arrays(depth: int) -> bytes:
    """VT_ARRAY|VT_VARIANT of one element, `depth` times, around a VT_I4."""
    return safearray_head(api.VT_VARIANT, 1) * depth + vt(api.VT_I4) + bytes(4)


def nested_objrefs(depth: int) -> bytes:
    """An objref whose one property is an objref whose …, `depth` deep."""
    head = vt(api.VT_DISPATCH) + struct.pack(">QB", 7, 1) + enc.string("t") + bytes(16)
    return (head + struct.pack(">I", 1) + enc.string("p")) * depth + vt(api.VT_EMPTY)


@pytest.mark.parametrize("nest", [nested_arrays, nested_objrefs])
def test_nesting_ten_thousand_deep_is_an_error_not_a_recursion(nest):
    events, reads = decode_call(nest(10_000))
    (reason,) = errors_of(events)
    assert f"nested deeper than {api.MAX_NESTING}" in reason
    assert reads < 60 + 6 * api.MAX_NESTING


@pytest.mark.parametrize(
    ("nest", "levels"),
    # an objref level is two value levels (the objref, then its property's VARIANT)
    [(nested_arrays, api.MAX_NESTING), (nested_objrefs, api.MAX_NESTING // 2)],
)
def test_nesting_at_the_limit_decodes_under_a_low_recursion_limit(nest, levels: int):
    """The deepest nesting allowed decodes, and labelling/walking it (recursive) fits a
    stack much smaller than Python's default, whatever calls the decoder."""
    limit = sys.getrecursionlimit()
    sys.setrecursionlimit(600)
    try:
        events, _ = decode_call(nest(levels))
    finally:
        sys.setrecursionlimit(limit)
    assert not errors_of(events)


def test_thousands_of_open_requests_are_bounded():
    request = enc.keep_alive()
    events = feed_all(api.ObjServerDecoder(CONN), [(0, request * 3000)])
    forgot = [r for r in errors_of(events) if "open requests" in r]
    assert len(forgot) == 3000 - api.MAX_PENDING


# =========================================================================================
# jsdissect.analyze: nothing but CaptureError escapes, and its tables work
# =========================================================================================


def analyze_or_capture_error(paths: list[Path], engine: str) -> Analysis | None:
    try:
        with hang_guard():
            result = jsdissect.analyze(paths, engine=engine)
            exercise(result)
    except CaptureError:
        return None
    return result


@st.composite
def payload_mutations(draw: st.DrawFn) -> bytes:
    """The seed pcap with bytes changed only inside TCP payloads: headers stay valid, so the
    hostile bytes reach the decoders with their framing intact."""
    data = bytearray(SMALL_PCAP)
    for _ in range(draw(st.integers(1, 8))):
        a, b = draw(st.sampled_from(PAYLOADS))
        pos = draw(st.integers(a, b - 1))
        value = draw(
            st.binary(min_size=1, max_size=4)
            | interesting_u32().map(lambda v: v.to_bytes(4, "big"))
        )
        data[pos : pos + len(value)] = value[: b - pos]
    return bytes(data)


@fuzz(60)
@given(data=st.data())
@pytest.mark.parametrize("engine", ["python", "auto"])
def test_analyze_on_mutated_captures_raises_nothing_but_capture_error(scratch, engine, data):
    seed = data.draw(st.sampled_from(["pcap", "pcapng", "payload"]))
    if seed == "payload":
        content = data.draw(payload_mutations())
    else:
        content = data.draw(mutated(SMALL_PCAP if seed == "pcap" else SMALL_PCAPNG))
    path = write(scratch / f"a.{'pcapng' if seed == 'pcapng' else 'pcap'}", content)
    paths = [path, CAPTURES / "one_shell.pcap"] if data.draw(st.booleans()) else [path]
    analyze_or_capture_error(paths, engine)


@fuzz(60)
@given(data=st.one_of(pcap_files(), pcapng_files()))
def test_analyze_on_synthetic_files_raises_nothing_but_capture_error(scratch, data):
    analyze_or_capture_error([write(scratch / "s.cap", data)], "python")


# --- regressions found by fuzzing -------------------------------------------------------------


def with_tcp_port(value: bytes) -> bytes:
    """The seed capture with the start command's tcp_port replaced (same length)."""
    assert SMALL_PCAP.count(b'tcp_port="59999"') == 1 and len(value) == 5
    return SMALL_PCAP.replace(b'tcp_port="59999"', b'tcp_port="' + value + b'"')


@pytest.mark.parametrize("port", [b"99999", b"-9999", b"70000"])
def test_announced_port_outside_the_tcp_range_is_not_a_capture_error(tmp_path, port):
    """Found by fuzzing: the extra read for a callback port outside the usual range put the
    port into the BPF filter as announced; `port 99999` does not compile, so a valid capture
    failed with 'invalid BPF filter'. Only a real TCP port gets its own read now."""
    result = jsdissect.analyze([write(tmp_path / "p.pcap", with_tcp_port(port))])
    (task, _partial) = result.task_records
    announced = int(port) if port.isdigit() else None  # a sign makes it no number (§3.6.1)
    assert task.callback_port == announced and task.status == "callback-missing"
    exercise(result)


def test_chain_of_announced_ports_costs_a_bounded_number_of_reads(tmp_path):
    """Found by review of the extra reads: each read could reveal a command channel on a
    port announced by the one before, so a crafted chain of N connections cost N reads of
    the whole capture. Three reads cover every real case (the base read; command channels
    found by their first bytes; the callbacks they announce)."""
    from jsdissect import pipeline

    reads = []
    real_run = pipeline._run

    def counting_run(*args: Any, **kwargs: Any) -> Analysis:
        reads.append(args[3].copy())  # (files, names, opts, extra_ports, ...)
        return real_run(*args, **kwargs)

    path = command_chain(tmp_path / "chain.pcap", 8)
    with mock.patch.object(pipeline, "_run", counting_run):
        result = jsdissect.analyze([path])
    assert len(reads) <= 3, reads
    assert any("not read" in w for w in result.stats.warnings), result.stats.warnings


def test_numbers_beyond_64_bits_on_the_wire_keep_the_tables_working(tmp_path):
    """Found by the analyze fuzzer: a pid (or tcp_port, task_id, exit code) beyond 64 bits
    made the `tasks` DataFrame raise OverflowError building its Int64 columns. The frame
    shows such a number as missing; CSV/JSON keep it exactly as sent."""
    huge = 10**20
    start = enc.start_remote_task(huge, kind="process")
    answer = enc.process_answer("2026-03-02T09:15:00.123Z", "84217301", pid=huge)
    messages = [(0, start), (1, answer)]
    path = write_pcap(
        tmp_path / "huge.pcap",
        conversation_packets(("10.0.0.1", 40000), ("10.0.0.2", 4444), messages, T0 / 1e6),
    )
    result = jsdissect.analyze([path])
    (task,) = result.task_records
    assert task.pid == huge and task.callback_port == huge
    frame = result.tasks
    assert frame["pid"].isna().all() and frame["callback_port"].isna().all()
    assert frame["process_id"].tolist() == ["84217301"]
    out = io.StringIO()
    report.write_json([report.task_row(task)], report.TASK_COLUMNS, out)
    (row,) = json.loads(out.getvalue())
    assert row["pid"] == huge and row["callback_port"] == huge
    exercise(result)


def pcapng_with_one_packet(ts_high: int) -> bytes:
    """SHB, Ethernet IDB (µs), one EPB with the seed's first packet (a SYN) at ts_high<<32."""
    o = "<"
    packet = PACKETS[0]
    out = ng_block(o, Block(0x0A0D0D0A, shb_body(o))) + ng_block(
        o, Block(1, struct.pack(o + "HHI", 1, 0, 0))
    )
    epb = struct.pack(o + "IIIII", 0, ts_high, 0, len(packet), len(packet)) + packet
    return out + ng_block(o, Block(6, epb))


def test_pcapng_time_stamp_beyond_year_9999_is_not_an_internal_error(tmp_path):
    """Found by the analyze fuzzer: one flipped bit (30) in an EPB's high time stamp word
    of a 2026 capture gives year 148164, which no table can show. The reader skips such a
    packet with a warning instead of handing it on."""
    path = write(tmp_path / "year148164.pcapng", pcapng_with_one_packet(0x40064C2E))
    result = jsdissect.analyze([path], engine="python")
    exercise(result)
    assert (result.stats.skipped, result.stats.bad_times) == (1, 1)
    assert any("year 9999" in w and "year148164" in w for w in result.stats.warnings)


def test_libpcap_time_stamp_beyond_year_9999_is_skipped_too():
    """Found by the analyze fuzzer again: libpcap read one packet at a time (after a block
    it rejects) hands on 64-bit seconds, and a mutated pcapng time resolution made a task
    start in year 58870, which the CSV writer refused. Skipped as the python engine does."""
    from jsdissect.capture import MAX_TIME_US, _libpcap_segments, _link_ethernet

    packet = PACKETS[0]
    late = MAX_TIME_US // 1_000_000 + 1
    stats = CaptureStats()
    batches = [(packet, [(late, 0, 0, len(packet)), (1_795_613_814, 5, 0, len(packet))])]
    segments = [
        s for batch in _libpcap_segments(_link_ethernet, batches, stats, [0]) for s in batch
    ]
    assert [s.ts for s in segments] == [1_795_613_814_000_005]
    assert (stats.bad_times, stats.skipped, stats.packets) == (1, 1, 2)


def test_construct_with_a_five_thousand_digit_task_id_keeps_the_call():
    """Found by review for the fuzzer: int() refuses more than 4300 digits with ValueError,
    which the frame's safety net turned into 'internal error', dropping the construct
    Request and its lifecycle events. The task id is now just unknown."""
    args = enc.construct_args(["job=/folder/job_a", "task_id=" + "9" * 5000])
    frame_bytes = enc.call(RMIS_ID, "construct", args)
    events = feed_all(api.ObjServerDecoder(CONN), [*rmis_handshake(), (1, frame_bytes)])
    (construct,) = [e for e in events if isinstance(e, api.Construct)]
    assert construct.job == "/folder/job_a" and construct.task_id is None
    assert not errors_of(events)
