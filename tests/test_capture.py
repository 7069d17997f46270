"""capture: files, link types, IP/TCP headers → Segment records, both engines alike.

Packets are built with scapy; the pcap and pcapng containers are written by small
struct-based encoders (pcap in both byte orders and resolutions, from `pcapfiles`; pcapng with
several interfaces and sections, below; gzip), so every variant of the same packets can be
compared.
"""

from __future__ import annotations

import bz2
import contextlib
import copyreg
import gzip
import heapq
import io
import lzma
import os
import pickle
import random
import struct
import subprocess
import tracemalloc
import types
from collections.abc import Callable, Iterable
from pathlib import Path

import lz4.block
import lz4.frame
import pytest
import zstandard
from conftest import require
from hypothesis import given, settings
from hypothesis import strategies as st
from pcapfiles import Frame, pcap_file
from scapy.layers.inet import IP, TCP, UDP
from scapy.layers.inet6 import (
    IPv6,
    IPv6ExtHdrDestOpt,
    IPv6ExtHdrFragment,
    IPv6ExtHdrHopByHop,
    IPv6ExtHdrRouting,
)
from scapy.layers.ipsec import AH
from scapy.layers.l2 import CookedLinux, CookedLinuxV2, Dot1AD, Dot1Q, Ether
from scapy.packet import Packet, Padding

from jsdissect import capture
from jsdissect.capture import (
    ACK,
    CHUNK,
    DECODERS,
    MAX_TIME_US,
    PSH,
    SYN,
    CaptureError,
    CaptureStats,
    Segment,
    cut_short,
    read_segments,
)
from jsdissect.compressed import codec_of
from jsdissect.pipeline import READ_ALL, Options, capture_filter

ENGINES = ("libpcap", "python")


def lz4_legacy(data: bytes, block: int = 8 << 20) -> bytes:
    """`lz4 -l`: a magic, then each 8 MB block compressed alone after its size."""
    out = [b"\x02\x21\x4c\x18"]
    for i in range(0, len(data), block):
        packed = lz4.block.compress(data[i : i + block], store_size=False)
        out += [struct.pack("<I", len(packed)), packed]
    return b"".join(out)


# Each compressor, from its own library (jsdissect's readers must agree with them).
COMPRESSORS: dict[str, Callable[[bytes], bytes]] = {
    "gzip": gzip.compress,
    "zstd": zstandard.ZstdCompressor(write_checksum=True).compress,
    "lz4": lz4.frame.compress,
    "lz4-legacy": lz4_legacy,
    "xz": lzma.compress,
    "bzip2": bz2.compress,
}


def compressed_in_pieces(codec: str, data: bytes, pieces: int = 4) -> bytes:
    """`data` compressed as several members/frames/streams one after another, as pigz,
    pzstd or `cat a.gz b.gz` write them: a cut in the last one leaves the others whole."""
    size = -(-len(data) // pieces)
    return b"".join(COMPRESSORS[codec](data[i : i + size]) for i in range(0, len(data), size))


T0_NS = 1_767_225_600_123_456_789  # 2026-01-01T00:00:00.123456789Z
STEP_NS = 1_000_250_333  # 1.000250333 s: every timestamp has a sub-µs part

# ---------------------------------------------------------------------------------------
# Encoders: pcapng (draft-ietf-opsawg-pcapng); pcap is in pcapfiles
# ---------------------------------------------------------------------------------------


def ng_block(order: str, btype: int, body: bytes) -> bytes:
    body += b"\0" * (-len(body) % 4)
    total = len(body) + 12
    return struct.pack(order + "II", btype, total) + body + struct.pack(order + "I", total)


def ng_shb(order: str) -> bytes:
    return ng_block(order, 0x0A0D0D0A, struct.pack(order + "IHHq", 0x1A2B3C4D, 1, 0, -1))


def ng_idb(order: str, linktype: int, *, tsresol=None, tsoffset=0, snaplen=0) -> bytes:
    opts = b""
    if tsresol is not None:
        opts += struct.pack(order + "HHB3x", 9, 1, tsresol)
    if tsoffset:
        opts += struct.pack(order + "HHq", 14, 8, tsoffset)
    if opts:
        opts += struct.pack(order + "HH", 0, 0)
    return ng_block(order, 1, struct.pack(order + "HHI", linktype, 0, snaplen) + opts)


def ng_epb(order: str, ifid: int, ticks: int, data: bytes, wirelen: int) -> bytes:
    head = struct.pack(order + "IIIII", ifid, ticks >> 32, ticks & 0xFFFFFFFF, len(data), wirelen)
    return ng_block(order, 6, head + data)


def ng_spb(order: str, data: bytes, wirelen: int) -> bytes:
    return ng_block(order, 3, struct.pack(order + "I", wirelen) + data)


def block_starts(data: bytes) -> list[int]:
    """Offsets of the blocks of a little-endian pcapng file."""
    starts, pos = [], 0
    while pos < len(data):
        starts.append(pos)
        pos += struct.unpack_from("<I", data, pos + 4)[0]
    return starts


def ticks(ts_ns: int, tsresol: int | None, tsoffset: int = 0) -> int:
    """ts_ns in an interface's units. A binary resolution gets the first tick at or after
    the truncated µs, which floors back to that µs when ticks are finer than 1 µs."""
    ns = ts_ns - tsoffset * 10**9
    tsresol = 6 if tsresol is None else tsresol
    if tsresol & 0x80:
        return -(-(ns // 1000) * 2 ** (tsresol & 0x7F) // 10**6)
    return ns * 10**tsresol // 10**9


# ---------------------------------------------------------------------------------------
# The packets, each with the Segment it must give (ts filled in from its place)
# ---------------------------------------------------------------------------------------

A4, B4 = "10.1.0.10", "10.1.0.20"
A6, B6 = "2001:db8::10", "2001:db8::20"
TS_OPTS = [("NOP", None), ("NOP", None), ("Timestamp", (123456789, 987654321))]
SYN_OPTS = [
    ("MSS", 1460),
    ("SAckOK", b""),
    ("Timestamp", (4000000000, 0)),
    ("NOP", None),
    ("WScale", 7),
]
START = b'<?xml version="1.0"?><remote_scheduler.start_remote_task tcp_port="59999"/>'


def seg(src, sport, dst, dport, seq, ack, flags, window=8192, payload=b"", tsval=None, tsecr=None):
    return Segment(0, src, sport, dst, dport, seq, ack, flags, window, payload, 0, tsval, tsecr)


def tcp_cases() -> list[tuple[Packet, Segment]]:
    """IP packets (scapy) and the Segment each must decode to."""
    ext_headers = (
        IPv6ExtHdrHopByHop()
        / IPv6ExtHdrDestOpt()
        / IPv6ExtHdrRouting(addresses=[])
        / IPv6ExtHdrFragment(offset=0, m=0)  # an "atomic fragment": a whole packet
    )
    return [
        (
            IP(src=A4, dst=B4)
            / TCP(sport=40001, dport=4455, seq=1000, flags="S", window=64240, options=SYN_OPTS),
            seg(A4, 40001, B4, 4455, 1000, 0, SYN, 64240, tsval=4000000000, tsecr=0),
        ),
        (
            IP(src=B4, dst=A4) / TCP(sport=4455, dport=40001, seq=5000, ack=1001, flags="SA"),
            seg(B4, 4455, A4, 40001, 5000, 1001, SYN | ACK),
        ),
        (
            IP(src=A4, dst=B4)
            / TCP(
                sport=40001, dport=4455, seq=1001, ack=5001, flags="PA", window=502, options=TS_OPTS
            )
            / START,
            seg(A4, 40001, B4, 4455, 1001, 5001, PSH | ACK, 502, START, 123456789, 987654321),
        ),
        (
            IP(src=A4, dst=B4, options=b"\x94\x04\x00\x00")  # router alert: IHL 6
            / TCP(sport=40001, dport=4455, seq=1077, ack=5001, flags="A")
            / b"x",
            seg(A4, 40001, B4, 4455, 1077, 5001, ACK, payload=b"x"),
        ),
        (
            IPv6(src=A6, dst=B6)
            / TCP(sport=40002, dport=4455, seq=2**32 - 1, ack=7, flags="PA")
            / b"\0\0\0;S",
            seg(A6, 40002, B6, 4455, 2**32 - 1, 7, PSH | ACK, payload=b"\0\0\0;S"),
        ),
        (
            IPv6(src=B6, dst=A6)
            / ext_headers
            / TCP(sport=4455, dport=40002, seq=9, ack=3, flags="A")
            / b"ext",
            seg(B6, 4455, A6, 40002, 9, 3, ACK, payload=b"ext"),
        ),
        (
            IPv6(src=B6, dst=A6)
            / AH(nh=6, payloadlen=4, spi=1, icv=b"\0" * 12)
            / TCP(sport=4455, dport=40002, seq=12, ack=3, flags="A")
            / b"ah",
            seg(B6, 4455, A6, 40002, 12, 3, ACK, payload=b"ah"),
        ),
        (
            IP(src=B4, dst=A4) / TCP(sport=59999, dport=50123, seq=77, ack=88, flags="A"),
            seg(B4, 59999, A4, 50123, 77, 88, ACK),
        ),
    ]


def not_segments() -> list[tuple[Packet, str]]:
    """IP packets that must not give a segment, and the counter they land in."""
    tcp = TCP(sport=1, dport=4455) / (b"z" * 40)
    return [
        (IP(src=A4, dst=B4, flags="MF", proto=6) / tcp, "fragments"),
        (IP(src=A4, dst=B4, frag=100, proto=6) / tcp, "fragments"),
        (IPv6(src=A6, dst=B6) / IPv6ExtHdrFragment(offset=0, m=1, nh=6) / tcp, "fragments"),
        (IPv6(src=A6, dst=B6) / IPv6ExtHdrFragment(offset=8, m=0, nh=6) / tcp, "fragments"),
        (IP(src=A4, dst=B4) / UDP(sport=53, dport=53) / b"dns", "skipped"),
        (IPv6(src=A6, dst=B6, nh=50) / (b"\0" * 24), "skipped"),  # ESP: encrypted
    ]


def expected(cases: list[tuple[Packet, Segment]]) -> list[Segment]:
    return [s._replace(ts=(T0_NS + i * STEP_NS) // 1000) for i, (_p, s) in enumerate(cases)]


def read(path: Path | list[Path], **kw) -> list[Segment]:
    return list(read_segments(path if isinstance(path, list) else [path], **kw))


@pytest.fixture(scope="module")
def cases() -> list[tuple[Packet, Segment]]:
    return tcp_cases()


@pytest.fixture(scope="module")
def ips(cases) -> list[Packet]:
    return [p for p, _ in cases]


# ---------------------------------------------------------------------------------------
# Link layers
# ---------------------------------------------------------------------------------------

MACS = {"src": "02:00:00:00:00:01", "dst": "02:00:00:00:00:02"}
SLL_ADDR = b"\2\0\0\0\0\1\0\0"


def bsd_family(ip: Packet, inet6: int) -> int:
    return inet6 if ip.version == 6 else 2


LINKS: dict[str, tuple[int, Callable[[Packet], bytes]]] = {  # name → (link type, framing)
    "ethernet": (1, lambda ip: bytes(Ether(**MACS) / ip)),
    "dot1q": (1, lambda ip: bytes(Ether(**MACS) / Dot1Q(vlan=10) / ip)),
    "qinq": (1, lambda ip: bytes(Ether(**MACS) / Dot1AD(vlan=100) / Dot1Q(vlan=10) / ip)),
    "qinq9100": (1, lambda ip: bytes(Ether(type=0x9100, **MACS) / Dot1Q(vlan=7) / Dot1Q() / ip)),
    "sll": (113, lambda ip: bytes(CookedLinux(lladdrtype=1, lladdrlen=6, src=SLL_ADDR) / ip)),
    "sll2": (276, lambda ip: bytes(CookedLinuxV2(ifindex=3, lladdrlen=6, src=SLL_ADDR) / ip)),
    # `tcpdump -i any` on a VLAN trunk: libpcap puts the tag back in front of the packet
    "sll_dot1q": (
        113,
        lambda ip: bytes(
            CookedLinux(lladdrtype=1, lladdrlen=6, src=SLL_ADDR) / Dot1Q(vlan=10) / ip
        ),
    ),
    "sll2_qinq": (
        276,
        lambda ip: bytes(
            CookedLinuxV2(proto=0x88A8, ifindex=3, lladdrlen=6, src=SLL_ADDR)
            / Dot1AD(vlan=100)
            / Dot1Q(vlan=10)
            / ip
        ),
    ),
    "null": (0, lambda ip: struct.pack("<I", bsd_family(ip, 30)) + bytes(ip)),  # Darwin
    "null_be": (0, lambda ip: struct.pack(">I", bsd_family(ip, 24)) + bytes(ip)),  # NetBSD
    "loop": (108, lambda ip: struct.pack(">I", bsd_family(ip, 28)) + bytes(ip)),  # FreeBSD
    "raw": (101, bytes),
    "raw12": (12, bytes),
    "raw14": (14, bytes),
}


def link_frames(name: str, ips: Iterable[Packet]) -> list[Frame]:
    frame = LINKS[name][1]
    return [(T0_NS + i * STEP_NS, frame(p), len(frame(p))) for i, p in enumerate(ips)]


# ---------------------------------------------------------------------------------------
# Exact records
# ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("engine", ENGINES)
def test_ethernet_pcap_gives_exact_segments(tmp_path, cases, ips, engine):
    path = tmp_path / "eth.pcap"
    path.write_bytes(pcap_file(1, link_frames("ethernet", ips)))
    stats = CaptureStats()
    got = read(path, engine=engine, stats=stats)
    assert got == expected(cases)
    assert got[0].ts == 1_767_225_600_123_456  # ns truncated, never rounded
    assert got[1].ts == 1_767_225_601_123_707  # .123456789 + 1.000250333 = .123707122
    assert (got[0].tsval, got[0].tsecr) == (4000000000, 0)  # among MSS, SACK, WS
    assert (got[2].tsval, got[2].tsecr) == (123456789, 987654321)  # NOP NOP TS
    assert (stats.files, stats.packets, stats.segments, stats.skipped) == (1, 8, 8, 0)
    assert (stats.engine, stats.warnings) == (engine, [])


@pytest.mark.parametrize("engine", ENGINES)
def test_not_tcp_and_fragments_are_counted_not_yielded(tmp_path, engine):
    others = not_segments()
    path = tmp_path / "other.pcap"
    path.write_bytes(pcap_file(1, link_frames("ethernet", [p for p, _ in others])))
    stats = CaptureStats()
    assert read(path, engine=engine, stats=stats) == []
    assert (stats.packets, stats.fragments, stats.skipped, stats.segments) == (6, 4, 2, 0)
    # Found in review: fragmented TCP was skipped in silence.
    assert stats.warnings == [
        f"{path}: 4 IP fragment(s) skipped; TCP carried in fragments"
        + (" is not reassembled, so the messages in them are missing")
    ]


@pytest.mark.parametrize("engine", ENGINES)
def test_malformed_headers_are_skipped(tmp_path, engine):
    good = bytes(IP(src=A4, dst=B4) / TCP(sport=1, dport=2, options=TS_OPTS) / b"data")
    tcp_off = 20 + 12  # TCP's data offset byte

    def at(pos: int, new: bytes) -> bytes:
        return good[:pos] + new + good[pos + len(new) :]

    broken = [
        good[:30],  # captured 30 bytes: the TCP header is incomplete
        at(0, b"\x44"),  # IHL 4
        at(0, b"\x75"),  # IP version 7
        at(2, struct.pack("!H", 10)),  # total length shorter than the header
        at(tcp_off, b"\x40"),  # TCP data offset 4
        at(tcp_off, b"\xf0"),  # TCP header longer than the packet
        b"",
    ]
    tolerated = [
        at(40, b"\x08\x00"),  # timestamp option of length 0
        at(40, b"\x08\x30"),  # an option running past the header
    ]
    path = tmp_path / "broken.pcap"
    path.write_bytes(pcap_file(101, [(T0_NS, b, len(b)) for b in broken + tolerated]))
    stats = CaptureStats()
    got = read(path, engine=engine, stats=stats)
    # Malformed options cost only the timestamp, not the segment.
    assert [(s.payload, s.tsval) for s in got] == [(b"data", None)] * len(tolerated)
    assert stats.skipped == len(broken)


@given(linktype=st.sampled_from(sorted(DECODERS)), data=st.binary(max_size=120))
@settings(max_examples=300, deadline=None)
def test_decoders_never_raise_on_arbitrary_bytes(linktype, data):
    result = DECODERS[linktype](data, 0, len(data), 0)
    assert type(result) is Segment or result in (0, 1)


@given(data=st.binary(min_size=34, max_size=80), cut=st.integers(0, 80))
@settings(max_examples=300, deadline=None)
def test_tcp_behind_ethernet_survives_any_header_bytes(data, cut):
    frame = bytes(Ether(**MACS))[:12] + b"\x08\x00\x45" + data
    DECODERS[1](frame, 0, min(cut, len(frame)), 0)


@given(st.lists(st.integers(-(1 << 40), 1 << 40) | st.integers(0, (1 << 32) - 1), max_size=30))
@settings(max_examples=300, deadline=None)
def test_seconds_make_exact_microseconds_in_any_order(seconds: list[int]) -> None:
    # The readers keep the µs of the seconds' high bits from packet to packet (_Seconds):
    # a time going back (a clock step, merged files) or far ahead must still be exact.
    convert = capture._Seconds()
    assert [convert.us(sec) for sec in seconds] == [sec * 1_000_000 for sec in seconds]


@pytest.mark.parametrize("engine", ENGINES)
def test_snaplen_cut_counts_missing_bytes(tmp_path, engine):
    syn = Ether(**MACS) / IP(src=A4, dst=B4) / TCP(sport=1, dport=2, flags="S", options=SYN_OPTS)
    data = Ether(**MACS) / IP(src=A4, dst=B4) / TCP(sport=1, dport=2, flags="A") / (b"p" * 100)
    frames = [(T0_NS, bytes(p)[:64], len(p)) for p in (syn, data)]
    path = tmp_path / "snap.pcap"
    path.write_bytes(pcap_file(1, frames, snaplen=64))
    stats = CaptureStats()
    got = read(path, engine=engine, stats=stats)
    # The SYN keeps its flags though its options were cut; the data lost 90 of 100 bytes.
    assert [(s.flags, s.payload, s.missing, s.tsval) for s in got] == [
        (SYN, b"", 0, None),
        (ACK, b"p" * 10, 90, None),
    ]
    assert stats.truncated_packets == 1


@pytest.mark.parametrize("engine", [*ENGINES, "auto"])
def test_record_longer_than_the_file_snaplen_is_read_whole_but_by_libpcap(tmp_path, engine):
    """Found in review: a writer put a snaplen below its records' lengths in the file
    header. The bytes are in the file, and Wireshark reads them; libpcap cuts the records to
    the header's snaplen, and then says so, without blaming the capture."""
    frame = bytes(Ether(**MACS) / IP(src=A4, dst=B4) / TCP(sport=1, dport=2) / (b"p" * 100))
    path = tmp_path / "long.pcap"
    path.write_bytes(pcap_file(1, [(T0_NS, frame, len(frame))], snaplen=64))
    stats = CaptureStats()
    [got] = read(path, engine=engine, stats=stats)
    if engine != "libpcap":
        assert (got.payload, got.missing, stats.warnings) == (b"p" * 100, 0, [])
        return
    assert (got.payload, got.missing) == (b"p" * 10, 90)
    assert stats.warnings == [
        f"{path}: 1 TCP segment(s) cut short by libpcap to the snap length in the file header"
        " (64), though the file holds more of them; the messages they carried are incomplete"
        " (--engine auto reads them whole)"
    ]


def long_and_short_frames(count: int, first_long: int = 0) -> list[Frame]:
    """`count` frames: a UDP datagram every seventh, from `first_long` on every third with
    100 bytes of TCP payload (154 bytes), the others with 2 bytes (56 bytes)."""
    frames = []
    for i in range(count):
        if i % 7 == 6:
            packet = IP(src=A4, dst=B4) / UDP(sport=1, dport=2) / b"u"
        else:
            long = i >= first_long and i % 3 == 2
            payload = bytes([0x41 + i % 26]) * (100 if long else 2)
            packet = IP(src=A4, dst=B4) / TCP(sport=1, dport=2, seq=i, flags="A") / payload
        frame = bytes(Ether(**MACS) / packet)
        frames.append((T0_NS + i * STEP_NS, frame, len(frame)))
    return frames


@pytest.mark.parametrize("bpf", [None, "tcp"])
@pytest.mark.parametrize("first_long", [2, 1501])
def test_auto_reads_on_in_python_from_the_first_record_libpcap_cut_to_the_header(
    tmp_path, bpf, first_long
):
    """libpcap reads until it hands over a packet cut at exactly the header's snaplen that
    the file holds longer (in its first batch, or in a later one): from there the python
    engine reads, nothing read twice, nothing left out."""
    frames = long_and_short_frames(first_long + 30, first_long)
    whole = tmp_path / "whole.pcap"
    whole.write_bytes(pcap_file(1, frames, snaplen=0))
    wrong = tmp_path / "wrong.pcap"
    wrong.write_bytes(pcap_file(1, frames, snaplen=64))
    want = read(whole, engine="libpcap", bpf=bpf)
    assert sum(len(s.payload) == 100 for s in want) >= 8
    stats = CaptureStats()
    assert read(wrong, engine="auto", bpf=bpf, stats=stats) == want
    assert (stats.engine, stats.truncated_packets, stats.warnings) == ("python", 0, [])


def test_reading_on_in_python_counts_the_packets_libpcap_filtered_as_it_did(tmp_path):
    """libpcap runs the filter on a record as it cut it. The packets it delivered before it
    handed the file over are counted again in Python, filtered as cut too: a record whose
    whole bytes pass the filter and its cut ones do not (a filter looking past the header's
    snaplen) was not delivered, and must not take the place of one that was."""
    bpf = "tcp[13] & 8 != 0 or tcp[60:1] = 0x71"  # PSH, or a byte at 74 in the frame
    ip = Ether(**MACS) / IP(src=A4, dst=B4)
    frames = [
        ip / TCP(sport=1, dport=2, seq=0, flags="A") / (b"q" * 100),  # passes whole, not cut
        ip / TCP(sport=1, dport=2, seq=100, flags="PA") / b"ok",  # whole (56 bytes)
        ip / TCP(sport=1, dport=2, seq=102, flags="PA") / (b"p" * 100),  # libpcap cuts it
    ]
    path = tmp_path / "wrong.pcap"
    path.write_bytes(
        pcap_file(1, [(T0_NS + i, bytes(f), len(f)) for i, f in enumerate(frames)], snaplen=64)
    )
    got = read(path, engine="auto", bpf=bpf)
    assert [(s.seq, s.payload, s.missing) for s in got] == [(100, b"ok", 0), (102, b"p" * 100, 0)]


def test_a_capture_cut_by_its_snap_length_stays_with_libpcap(tmp_path):
    """The records are as long as the header's snaplen, no longer: the bytes beyond it are
    not in the file, so libpcap lost nothing and reads the file to its end."""
    frames = [(ts, data[:64], wirelen) for ts, data, wirelen in long_and_short_frames(40)]
    cut = sum(wirelen > 64 for _ts, _data, wirelen in frames)
    path = tmp_path / "s64.pcap"
    path.write_bytes(pcap_file(1, frames, snaplen=64))
    stats = CaptureStats()
    assert read(path, engine="auto", stats=stats) == read(path, engine="python")
    assert (stats.engine, stats.truncated_packets) == ("libpcap", cut)
    assert stats.warnings == [capture.snaplen_warning(str(path), cut)]


@pytest.mark.parametrize("name", ["demo.pcap", "parallel_50.pcap"])
def test_a_shipped_capture_under_a_wrong_header_snaplen_reads_as_the_original(tmp_path, name):
    original = Path(__file__).resolve().parent.parent / "captures" / name
    data = original.read_bytes()
    wrong = tmp_path / name
    wrong.write_bytes(data[:16] + struct.pack("<I", 96) + data[20:])
    bpf = capture_filter(Options())
    assert read(wrong, engine="auto", bpf=bpf) == read(original, engine="auto", bpf=bpf)


@pytest.mark.parametrize("engine", ENGINES)
def test_ethernet_padding_is_not_payload(tmp_path, engine):
    frame = Ether(**MACS) / IP(src=A4, dst=B4) / TCP(sport=1, dport=2, flags="A") / b"ab"
    padded = bytes(frame / Padding(b"\0" * 4))  # 56 + 4: a minimum-size Ethernet frame
    path = tmp_path / "pad.pcap"
    path.write_bytes(pcap_file(1, [(T0_NS, padded, len(padded))]))
    [got] = read(path, engine=engine)
    assert (got.payload, got.missing) == (b"ab", 0)


@pytest.mark.parametrize("engine", ENGINES)
def test_ipv4_total_length_zero_from_segmentation_offload(tmp_path, engine):
    frame = bytearray(bytes(Ether(**MACS) / IP(src=A4, dst=B4) / TCP() / (b"t" * 3000)))
    frame[16:18] = b"\0\0"  # the NIC fills it in; the capture saw 0
    path = tmp_path / "tso.pcap"
    path.write_bytes(pcap_file(1, [(T0_NS, bytes(frame), len(frame))]))
    [got] = read(path, engine=engine)
    assert (len(got.payload), got.missing) == (3000, 0)


@pytest.mark.parametrize("bpf", [None, "tcp"])
@pytest.mark.parametrize("engine", [*ENGINES, "auto"])
def test_ip_length_zero_cut_by_the_snap_length_takes_the_length_on_the_wire(tmp_path, engine, bpf):
    """Segmentation offload leaves the IP length 0; a snap length then cut the packet, and
    the length captured would hide that: the record's length on the wire tells."""

    def offloaded(ip: Packet, at: slice, payload: int) -> bytes:
        frame = bytearray(bytes(Ether(**MACS) / ip / TCP(sport=1, dport=2) / (b"t" * payload)))
        frame[at] = b"\0\0"  # IPv4 total length, IPv6 payload length
        return bytes(frame)

    v4, v6 = slice(16, 18), slice(18, 20)
    udp = bytes(Ether(**MACS) / IP(src=A4, dst=B4) / UDP() / (b"u" * 300))
    frames = [
        offloaded(IP(src=A4, dst=B4), v4, 100),  # whole
        udp,
        offloaded(IP(src=A4, dst=B4), v4, 3000),
        offloaded(IPv6(src=A6, dst=B6), v6, 5000),
        offloaded(IP(src=A4, dst=B4), v4, 40),  # whole, with the 3000 before it cut
    ]
    cut = [(T0_NS + i * STEP_NS, f[:200], len(f)) for i, f in enumerate(frames)]
    pcap, pcapng = tmp_path / "tso.pcap", tmp_path / "tso.pcapng"
    pcap.write_bytes(pcap_file(1, cut, snaplen=200))
    pcapng.write_bytes(
        b"".join(
            [ng_shb("<"), ng_idb("<", 1, snaplen=200)]
            + [ng_epb("<", 0, ticks(ts, None), d, n) for ts, d, n in cut]
        )
    )
    for path in (pcap, pcapng):
        stats = CaptureStats()
        got = read(path, engine=engine, bpf=bpf, stats=stats)
        assert [(len(s.payload), s.missing) for s in got] == [
            (100, 0),
            (200 - 54, 3000 - (200 - 54)),
            (200 - 74, 5000 - (200 - 74)),
            (40, 0),
        ], path
        assert stats.truncated_packets == 2


@pytest.mark.parametrize("engine", ENGINES)
def test_unsupported_link_type_is_skipped_with_a_warning(tmp_path, ips, engine):
    path = tmp_path / "wifi.pcap"
    path.write_bytes(pcap_file(105, link_frames("raw", ips)))  # 802.11
    stats = CaptureStats()
    assert read(path, engine=engine, stats=stats) == []
    assert stats.skipped == len(ips)
    assert stats.warnings == [f"{path}: link type 105 not supported, its packets skipped"]


@pytest.mark.parametrize("bpf", [None, "tcp", "tcp port 4455"])
@pytest.mark.parametrize("engine", [*ENGINES, "auto"])
def test_mpls_and_pppoe_are_counted_and_warned_about_once_per_file(tmp_path, ips, engine, bpf):
    """Their TCP is not decoded; the person learns it was there, whatever the filter."""
    mpls = struct.pack(">I", (100 << 12) | (1 << 8) | 64)  # label 100, bottom of stack

    def pppoe(ip: bytes) -> bytes:
        return struct.pack(">BBHH", 0x11, 0, 1, len(ip) + 2) + b"\0\x21" + ip  # PPP: IPv4

    eth = link_frames("ethernet", ips[:2])  # two IPv4 segments, decoded
    frames = [
        *eth,
        *[(ts, d[:12] + b"\x88\x47" + mpls + d[14:], n + 4) for ts, d, n in eth],
        *[(ts, d[:12] + b"\x88\x64" + pppoe(d[14:]), n + 8) for ts, d, n in eth],
        *[(ts, d[:12] + b"\x81\0\0\x0a\x88\x48" + mpls + d[14:], n + 8) for ts, d, n in eth],
    ]
    sll = CookedLinux(lladdrtype=1, lladdrlen=6, src=SLL_ADDR, proto=0x8847)
    files = {
        tmp_path / "eth.pcap": pcap_file(1, frames),
        tmp_path / "sll.pcap": pcap_file(113, [(T0_NS, bytes(sll / mpls / ips[0]), 99)]),
    }
    for path, data in files.items():
        path.write_bytes(data)
    stats = CaptureStats()
    got = read(list(files), engine=engine, bpf=bpf, stats=stats)
    assert [s.seq for s in got] == [1000, 5000]
    assert sorted(stats.warnings) == [
        f"{tmp_path / 'eth.pcap'}: 6 packet(s) of an unsupported encapsulation (MPLS/PPPoE)"
        " skipped",
        f"{tmp_path / 'sll.pcap'}: 1 packet(s) of an unsupported encapsulation (MPLS/PPPoE)"
        " skipped",
    ]
    assert (stats.encapsulated, stats.skipped) == (7, 7)


# Link types libpcap compiles no filter for: USB, NFLOG, USER0, 802.11 (`protochain`).
UNFILTERABLE = (249, 239, 147, 105)


@pytest.mark.parametrize("linktype", UNFILTERABLE)
@pytest.mark.parametrize("engine", [*ENGINES, "auto"])
def test_unsupported_link_type_that_libpcap_cannot_filter_is_skipped(
    tmp_path, ips, engine, linktype
):
    path = tmp_path / "usb.pcap"
    path.write_bytes(pcap_file(linktype, link_frames("raw", ips)))
    stats = CaptureStats()
    assert read(path, engine=engine, bpf="tcp", stats=stats) == []
    assert stats.warnings == [f"{path}: link type {linktype} not supported, its packets skipped"]


@pytest.mark.parametrize("linktype", UNFILTERABLE)
@pytest.mark.parametrize("engine", ["python", "auto"])
def test_pcapng_interface_that_libpcap_cannot_filter_leaves_the_others_read(
    tmp_path, ips, engine, linktype
):
    eth = link_frames("ethernet", ips)
    blocks = [ng_shb("<"), ng_idb("<", 1), ng_idb("<", linktype)]
    blocks.append(ng_epb("<", 1, ticks(eth[0][0], None), b"\0" * 40, 40))
    blocks += [ng_epb("<", 0, ticks(ts, None), data, n) for ts, data, n in eth]
    path = tmp_path / "mixed.pcapng"
    path.write_bytes(b"".join(blocks))
    plain = tmp_path / "eth.pcap"
    plain.write_bytes(pcap_file(1, eth))
    for bpf in (None, "tcp"):
        stats = CaptureStats()
        assert read(path, engine=engine, bpf=bpf, stats=stats) == read(plain, bpf=bpf), bpf
        warning = f"{path}: link type {linktype} not supported, its packets skipped"
        assert stats.warnings == [warning]


# ---------------------------------------------------------------------------------------
# The same packets in every container and link type give the same records
# ---------------------------------------------------------------------------------------


def pcapng_two_ifaces(order: str, frames: list[Frame], linktype: int = 1) -> bytes:
    """Even packets on a ns interface, odd ones on a 2^-30 s interface with a time offset."""
    resol, offset = (9, 0x80 | 30), (0, 1_700_000_000)
    out = [
        ng_shb(order),
        ng_idb(order, linktype, tsresol=resol[0]),
        ng_idb(order, linktype, tsresol=resol[1], tsoffset=offset[1]),
    ]
    for i, (ts, data, wirelen) in enumerate(frames):
        out.append(ng_epb(order, i % 2, ticks(ts, resol[i % 2], offset[i % 2]), data, wirelen))
    return b"".join(out)


def pcapng_sections(frames: list[Frame], linktype: int = 1, second: str = ">") -> bytes:
    """Two sections: little-endian in µs, then one in byte order `second` whose packets
    are on its second interface, in units of 100 ns."""
    half = len(frames) // 2
    out = [ng_shb("<"), ng_idb("<", linktype)]
    out += [ng_epb("<", 0, ticks(ts, None), d, w) for ts, d, w in frames[:half]]
    # libpcap 1.9 rejects an interface with another snaplen than the first; see below.
    out += [ng_shb(second), ng_idb(second, linktype, snaplen=65535 if second == ">" else 0)]
    out += [ng_idb(second, linktype, tsresol=7)]
    out += [ng_epb(second, 1, ticks(ts, 7), d, w) for ts, d, w in frames[half:]]
    return b"".join(out)


CONTAINERS: dict[str, Callable[[int, list[Frame]], bytes]] = {
    "pcap_us_le": lambda lt, f: pcap_file(lt, f),
    "pcap_us_be": lambda lt, f: pcap_file(lt, f, order=">"),
    "pcap_ns_le": lambda lt, f: pcap_file(lt, f, nano=True),
    "pcap_ns_be": lambda lt, f: pcap_file(lt, f, nano=True, order=">"),
    "pcapng_le": lambda lt, f: pcapng_two_ifaces("<", f, lt),
    "pcapng_be": lambda lt, f: pcapng_two_ifaces(">", f, lt),
    "pcapng_sections": lambda lt, f: pcapng_sections(f, lt),
    "pcapng_sections_le": lambda lt, f: pcapng_sections(f, lt, "<"),
}

# Where libpcap 1.9 stops (a warning) and auto reads on in Python: a pcapng interface it
# takes for another link type (LINKTYPE_RAW is DLT 12 for the first, 101 for the next),
# a section in the other byte order.
LIBPCAP_LIMITS = [
    ("-raw", "different from the type of the first interface"),
    ("pcapng_sections-", "pcapng block size"),
]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory, ips) -> dict[str, Path]:
    """Every container × link type, and every compression, holding the same packets."""
    root = tmp_path_factory.mktemp("corpus")
    files = {}

    def add(name: str, data: bytes) -> None:
        files[name] = root / name
        files[name].write_bytes(data)

    for cname, container in CONTAINERS.items():
        for lname, (linktype, _) in LINKS.items():
            if lname != "null_be" or cname.endswith("be"):  # NULL: in the writer's order
                add(f"{cname}-{lname}", container(linktype, link_frames(lname, ips)))
        for codec, compress in COMPRESSORS.items():
            add(f"{cname}-{codec}", compress(container(1, link_frames("ethernet", ips))))
    for linktype, version in ((228, 4), (229, 6)):
        only = [p for p in ips if p.version == version]
        add(f"lt{linktype}", pcap_file(linktype, link_frames("raw", only)))
    return files


def test_every_container_and_link_type_gives_the_same_segments(corpus, cases):
    want = expected(cases)
    for name, path in corpus.items():
        if not name.startswith("lt"):
            assert read(path, engine="python") == want, name


@pytest.mark.parametrize("engine", ENGINES)
def test_ipv4_and_ipv6_link_types(corpus, cases, engine):
    want = [s[1:] for s in expected(cases)]  # (the packets sit elsewhere in time)
    v4 = [s for s, (p, _) in zip(want, cases, strict=True) if p.version == 4]
    v6 = [s for s, (p, _) in zip(want, cases, strict=True) if p.version == 6]
    assert [s[1:] for s in read(corpus["lt228"], engine=engine)] == v4
    assert [s[1:] for s in read(corpus["lt229"], engine=engine)] == v6


@pytest.mark.parametrize("bpf", [None, "tcp port 4455", "tcp[13] & 2 != 0", "ip6", "port 59999"])
def test_engines_agree_on_every_file(corpus, bpf):
    for name, path in corpus.items():
        python = read(path, engine="python", bpf=bpf)
        assert read(path, engine="auto", bpf=bpf) == python, name
        if bpf is None:
            assert len(python) == 8 or name.startswith("lt"), name
        if bpf and name.endswith("raw14"):
            # libpcap on Linux has no DLT 14 to compile for; auto took the python engine.
            with pytest.raises(CaptureError, match="libpcap cannot filter link type 14"):
                read(path, engine="libpcap", bpf=bpf)
            continue
        stats = CaptureStats()
        libpcap = read(path, engine="libpcap", bpf=bpf, stats=stats)
        if stats.warnings:
            assert any(k in name and m in stats.warnings[0] for k, m in LIBPCAP_LIMITS), name
            assert libpcap == python[: len(libpcap)]
        else:
            assert libpcap == python, name


@pytest.mark.parametrize("bpf", ["tcp port 4455", "tcp port 59999 or ip6"])
def test_filter_reaches_into_vlan_and_qinq(corpus, bpf):
    untagged = read(corpus["pcap_us_le-ethernet"], engine="python", bpf=bpf)
    assert len(untagged) >= 3  # (BPF's `tcp` does not look past IPv6 extension headers)
    assert {":" in s.src for s in untagged} == {True, False}  # IPv4 and IPv6
    for link in ("dot1q", "qinq", "qinq9100", "sll", "sll_dot1q", "sll2_qinq"):
        for engine in [*ENGINES, "auto"]:
            for container in ("pcap_us_le", "pcapng_le"):
                got = read(corpus[f"{container}-{link}"], engine=engine, bpf=bpf)
                assert got == untagged, (link, engine, container)


def test_filtered_packets_never_reach_python(corpus):
    stats = CaptureStats()
    got = read(corpus["pcap_us_le-qinq"], engine="libpcap", bpf="port 59999", stats=stats)
    assert [s.sport for s in got] == [59999]
    assert (stats.packets, stats.engine) == (1, "libpcap")


def test_auto_takes_python_only_where_libpcap_cannot(corpus):
    stats = CaptureStats()
    read(corpus["pcap_ns_be-sll2"], bpf="tcp", stats=stats)
    assert stats.engine == "libpcap"
    read(corpus["pcap_ns_be-raw14"], bpf="tcp", stats=stats)
    assert stats.engine == "python"


def test_filter_that_cannot_match_the_link_type_gives_nothing(corpus):
    for engine in (*ENGINES, "auto"):
        assert read(corpus["lt228"], engine=engine, bpf="ip6") == []


# ---------------------------------------------------------------------------------------
# Container details
# ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("engine", ENGINES)
def test_pcapng_resolutions_and_offset(tmp_path, engine):
    """Each interface its own if_tsresol and if_tsoffset; the time is floored to the µs."""
    frame = bytes(Ether(**MACS) / IP(src=A4, dst=B4) / TCP(sport=1, dport=2))
    sec = 1_767_225_600
    interfaces = [  # (if_tsresol, ticks per second, fraction in ticks, µs expected)
        (None, 10**6, 999_999, 999_999),
        (3, 10**3, 999, 999_000),
        (9, 10**9, 999_999_999, 999_999),
        (0x80 | 20, 2**20, 2**20 - 1, 999_999),  # 999999.046 µs
        (0x80 | 30, 2**30, 2**30 - 1, 999_999),
        (0x80 | 10, 2**10, 2**10 - 1, 999_023),  # 999023.4375 µs
    ]
    blocks = [ng_shb("<")]
    blocks += [
        ng_idb("<", 1, tsresol=r, tsoffset=i * 10**6) for i, (r, *_) in enumerate(interfaces)
    ]
    for i, (_r, per_s, frac, _us) in enumerate(interfaces):
        ticks = (sec - i * 10**6) * per_s + frac
        blocks.append(ng_epb("<", i, ticks, frame, len(frame)))
    path = tmp_path / "resol.pcapng"
    path.write_bytes(b"".join(blocks))
    got = [s.ts for s in read(path, engine=engine)]
    assert got == [sec * 10**6 + us for *_, us in interfaces]


def test_pcapng_interfaces_of_different_link_types(tmp_path, cases, ips):
    """libpcap 1.9 rejects an interface whose link type differs from the first one's;
    auto reads on in Python from the packet where libpcap stopped."""
    eth, raw = link_frames("ethernet", ips), link_frames("raw", ips)
    blocks = [ng_shb("<"), ng_idb("<", 1, tsresol=9)]
    blocks += [ng_epb("<", 0, ticks(ts, 9), data, n) for ts, data, n in eth[:3]]
    blocks.append(ng_idb("<", 101))
    for i in range(3, len(ips)):
        ts, data, n = raw[i] if i % 2 else eth[i]
        blocks.append(ng_epb("<", i % 2, ticks(ts, None if i % 2 else 9), data, n))
    path = tmp_path / "mixed.pcapng"
    path.write_bytes(b"".join(blocks))
    want = expected(cases)
    assert read(path, engine="python") == want
    stats = CaptureStats()
    assert read(path, engine="auto", stats=stats) == want
    assert (stats.engine, stats.warnings) == ("python", [])
    stats = CaptureStats()
    assert read(path, engine="libpcap", stats=stats) == want[:3]
    assert "different from the type of the first interface" in stats.warnings[0]
    filtered = read(path, engine="python", bpf="tcp port 4455")
    assert read(path, engine="auto", bpf="tcp port 4455") == filtered
    assert 0 < len(filtered) < len(want)


@pytest.mark.parametrize("engine", ENGINES)
def test_pcapng_simple_packet_blocks(tmp_path, engine):
    frame = bytes(Ether(**MACS) / IP(src=A4, dst=B4) / TCP(sport=1, dport=2) / (b"s" * 50))
    data = [ng_shb("<"), ng_idb("<", 1, snaplen=64, tsoffset=7), ng_spb("<", frame, len(frame))]
    path = tmp_path / "spb.pcapng"
    path.write_bytes(b"".join(data))
    [got] = read(path, engine=engine)
    # An SPB has no time stamp (libpcap says 0, plus the offset) and is cut to the snaplen.
    assert (got.ts, got.payload, got.missing) == (7_000_000, b"s" * 10, 40)


@pytest.mark.parametrize("engine", ENGINES)
def test_modified_pcap_format(tmp_path, ips, engine):
    out = [struct.pack("<IHHiIII", 0xA1B2CD34, 2, 4, 0, 0, 65535, 1)]
    for ts, data, wirelen in link_frames("ethernet", ips):
        sec, usec = divmod(ts // 1000, 10**6)
        out.append(struct.pack("<IIIIIHBx", sec, usec, len(data), wirelen, 2, 0x800, 0) + data)
    path = tmp_path / "modified.pcap"
    path.write_bytes(b"".join(out))
    assert read(path, engine=engine) == read_ethernet_reference(tmp_path, ips)


def read_ethernet_reference(tmp_path: Path, ips: list[Packet]) -> list[Segment]:
    path = tmp_path / "reference.pcap"
    path.write_bytes(pcap_file(1, link_frames("ethernet", ips)))
    return read(path, engine="python")


# ---------------------------------------------------------------------------------------
# Several files
# ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("engine", ENGINES)
def test_files_merge_into_one_timeline(tmp_path, cases, ips, engine):
    frames = link_frames("ethernet", ips)
    a, b = tmp_path / "a.pcap", tmp_path / "b.pcapng.gz"
    a.write_bytes(pcap_file(1, frames[0::2]))
    b.write_bytes(gzip.compress(pcapng_two_ifaces("<", frames[1::2])))
    stats = CaptureStats()
    assert read([b, a], engine=engine, stats=stats) == expected(cases)
    assert stats.files == 2
    # Equal timestamps: file order, then packet order.
    same = [(T0_NS, data, n) for _, data, n in frames[:2]]
    c, d = tmp_path / "c.pcap", tmp_path / "d.pcap"
    c.write_bytes(pcap_file(1, same))
    d.write_bytes(pcap_file(1, same[::-1]))
    assert [s.seq for s in read([d, c], engine=engine)] == [5000, 1000, 1000, 5000]


@pytest.mark.parametrize("engine", [*ENGINES, "auto"])
def test_the_same_file_given_twice_is_read_once_with_a_warning(tmp_path, cases, ips, engine):
    """By a symlink, a hard link, the same name twice (overlapping globs): else every
    packet came twice, taken for a retransmission."""
    path = tmp_path / "a.pcap"
    path.write_bytes(pcap_file(1, link_frames("ethernet", ips)))
    other = tmp_path / "b.pcap"
    other.write_bytes(pcap_file(1, link_frames("ethernet", ips[:1])))
    (tmp_path / "link.pcap").symlink_to(path)
    os.link(path, tmp_path / "hard.pcap")
    given = [path, other, tmp_path / "link.pcap", path, tmp_path / "hard.pcap"]
    stats = CaptureStats()
    got = read(given, engine=engine, stats=stats)
    assert got == read([path, other], engine=engine)
    assert stats.files == 2
    assert stats.warnings == [
        f"{path} and {tmp_path / 'link.pcap'} are the same file: read once",
        f"{path}: given more than once: read once",
        f"{path} and {tmp_path / 'hard.pcap'} are the same file: read once",
    ]


def open_descriptors() -> int:
    return len(os.listdir("/proc/self/fd"))


@pytest.mark.skipif(not os.path.isdir("/proc/self/fd"), reason="needs /proc/self/fd")
@pytest.mark.parametrize("engine", [*ENGINES, "auto"])
def test_a_ring_buffer_of_many_files_is_read_a_file_or_two_at_a_time(tmp_path, ips, engine):
    """Memory follows the files that overlap in time, not the number of files."""
    frames = link_frames("ethernet", ips)
    paths = []
    for i in range(40):  # one after another in time, as tcpdump -C/-G writes them
        data = pcap_file(1, [(ts + i * 10 * STEP_NS, d, n) for ts, d, n in frames])
        path = tmp_path / f"ring{i:02d}.pcap"
        if i % 10 == 7:  # libpcap reads a decompressed copy
            path, data = path.with_suffix(".pcap.gz"), gzip.compress(data)
        path.write_bytes(data)
        paths.append(path)
    before = open_descriptors()
    most = 0
    segments = 0
    for _ in read_segments(paths[::-1], engine=engine, bpf="tcp"):
        most = max(most, open_descriptors() - before)
        segments += 1
    assert segments > 30 * 3
    assert most <= 2


@pytest.mark.parametrize("engine", [*ENGINES, "auto"])
def test_merging_files_opened_late_gives_the_order_of_a_merge_of_all(tmp_path, ips, engine):
    """Files overlapping in time, equal times across files and within one, a file whose
    first packet is no segment, an empty one: the order of (time, file, packet)."""
    rng = random.Random(7)
    tcp_frames = link_frames("ethernet", ips)
    udp = bytes(Ether(**MACS) / IP(src=A4, dst=B4) / UDP(sport=53, dport=53) / b"dns")
    paths = []
    for i in range(12):
        times = sorted(T0_NS + rng.randrange(20) * STEP_NS for _ in range(rng.randrange(6)))
        frames = [(ts, *rng.choice(tcp_frames)[1:]) for ts in times]
        if i % 4 == 1:  # the first packet is not TCP
            frames.insert(0, (T0_NS + rng.randrange(20) * STEP_NS, udp, len(udp)))
            frames.sort(key=lambda f: f[0])
        path = tmp_path / f"f{i}.{'pcapng' if i % 3 else 'pcap'}"
        if i % 3:
            blocks = [ng_shb("<"), ng_idb("<", 1, tsresol=9)]
            blocks += [ng_epb("<", 0, ticks(ts, 9), d, n) for ts, d, n in frames]
            path.write_bytes(b"".join(blocks))
        else:
            path.write_bytes(pcap_file(1, frames))
        paths.append(path)
    alone = [read(p, engine=engine) for p in paths]
    keyed = [[(s.ts, i, n, s) for n, s in enumerate(segs)] for i, segs in enumerate(alone)]
    want = [s for *_, s in heapq.merge(*keyed)]
    assert len(want) > 20
    assert read(paths, engine=engine) == want


def test_gzip_copy_for_libpcap_is_removed_even_when_reading_stops_early(tmp_path, ips, monkeypatch):
    monkeypatch.setattr("tempfile.tempdir", str(tmp_path / "tmp"))
    os.mkdir(tmp_path / "tmp")
    path = tmp_path / "a.pcap.gz"
    path.write_bytes(gzip.compress(pcap_file(1, link_frames("ethernet", ips))))
    segments = read_segments([path], engine="libpcap")
    next(segments)
    assert len(os.listdir(tmp_path / "tmp")) == 1
    segments.close()
    assert os.listdir(tmp_path / "tmp") == []


# ---------------------------------------------------------------------------------------
# Files that cannot be read, files cut short
# ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("compress", [None, gzip.compress])
def test_a_file_name_that_is_not_utf8_is_read_by_auto_and_refused_by_libpcap(
    tmp_path, ips, compress
):
    """Found in review: pcapy-ng passes a name to libpcap as UTF-8 only, and a capture named
    in Latin-1 (copied from an old host: okü.pcap) failed with an internal error."""
    data = pcap_file(1, link_frames("ethernet", ips))
    plain = tmp_path / "ok.pcap"
    plain.write_bytes(data)
    odd = tmp_path / os.fsdecode(b"ok\xfc.pcap")
    odd.write_bytes(compress(data) if compress else data)
    stats = CaptureStats()
    assert read(odd, engine="auto", stats=stats) == read(plain, engine="libpcap")
    assert stats.warnings == []
    if compress:  # libpcap reads a decompressed copy, whose name is ours
        return
    with pytest.raises(CaptureError) as err:
        read(odd, engine="libpcap")
    assert str(err.value) == (
        f"{odd}: libpcap cannot open it: its name is not UTF-8, which pcapy-ng needs"
        " (--engine python reads it)"
    )


@pytest.mark.parametrize("engine", [*ENGINES, "auto"])
def test_unreadable_files_raise_capture_error_naming_the_file(tmp_path, engine):
    def make(name: str, data: bytes) -> Path:
        (tmp_path / name).write_bytes(data)
        return tmp_path / name

    problems = {
        make("capture.pcap", b'<?xml version="1.0"?><spooler/>'): (
            "not a pcap or pcapng file (magic 0x3c3f786d)"
        ),
        make("empty.pcap", b""): "empty file",
        make("short.pcap", pcap_file(1, [])[:10]): "cut short in the pcap file header",
        make("short.pcapng", ng_shb("<")[:20]): "cut short in the pcapng file header",
        make("text.gz", gzip.compress(b"hello world")): "gzip-compressed file is not a pcap",
        make("bad.gz", b"\x1f\x8b\x08garbage"): "unreadable gzip data",
        make("text.xz", lzma.compress(b"hello world")): "xz-compressed file is not a pcap",
        make("bad.zst", b"\x28\xb5\x2f\xfdgarbage"): "unreadable zstd data",
        make("bad.lz4", b"\x04\x22\x4d\x18garbage"): "unreadable lz4 data",
        make("bad.lz4l", b"\x02\x21\x4c\x18garbage"): "unreadable lz4-legacy data",
        make("bad.bz2", b"BZh9garbage"): "unreadable bzip2 data",
        tmp_path / "missing.pcap": "no such file",
        tmp_path: "is a directory",
    }
    for path, problem in problems.items():
        with pytest.raises(CaptureError) as err:
            read(path, engine=engine)
        message = str(err.value)
        assert message.startswith(f"{path}: ") and problem in message, message
        assert "\n" not in message


def test_invalid_filter_raises_capture_error(corpus):
    with pytest.raises(CaptureError, match="invalid BPF filter 'tcp prot 1'"):
        read(corpus["pcap_us_le-ethernet"], bpf="tcp prot 1")


CUT_FORMATS: dict[str, Callable[[list[Frame]], bytes]] = {
    "pcap": lambda f: pcap_file(1, f),
    "pcap_ns_be": lambda f: pcap_file(1, f, nano=True, order=">"),
    "pcapng": lambda f: pcapng_two_ifaces("<", f),
}


@pytest.mark.parametrize("fmt", sorted(CUT_FORMATS))
@pytest.mark.parametrize("engine", [*ENGINES, "auto"])
@pytest.mark.parametrize("codec", [None, *COMPRESSORS])
def test_file_cut_short_gives_the_complete_packets_and_a_warning(
    tmp_path, cases, ips, fmt, engine, codec
):
    data = CUT_FORMATS[fmt](link_frames("ethernet", ips))[:-30]  # inside the last packet
    path = tmp_path / f"cut.{fmt}"
    path.write_bytes(COMPRESSORS[codec](data) if codec else data)
    stats = CaptureStats()
    assert read(path, engine=engine, stats=stats) == expected(cases)[:-1]
    [warning] = stats.warnings
    assert warning.startswith(f"{path}: cut short after packet 7 ("), warning


@pytest.mark.parametrize("fmt", sorted(CUT_FORMATS))
@pytest.mark.parametrize("codec", [None, *COMPRESSORS])
def test_cut_short_names_the_cut_as_the_readers_do(tmp_path, ips, fmt, codec):
    whole = CUT_FORMATS[fmt](link_frames("ethernet", ips))
    pack = COMPRESSORS[codec] if codec else bytes
    path = tmp_path / f"f.{fmt}"
    path.write_bytes(pack(whole))
    assert cut_short(path) == ""
    path.write_bytes(pack(whole[:-30]))
    stats = CaptureStats()
    read(path, engine="python", stats=stats)
    assert cut_short(path) == stats.warnings[0]
    assert cut_short(path).startswith(f"{path}: cut short after packet 7 (")


def test_a_cut_of_one_byte_is_said_in_the_singular(tmp_path, ips):
    path = tmp_path / "one.pcap"
    path.write_bytes(CUT_FORMATS["pcap"](link_frames("ethernet", ips)) + b"\0")
    assert cut_short(path).endswith("(1 byte of an incomplete record at the end)")


@pytest.mark.parametrize("engine", [*ENGINES, "auto"])
def test_corrupt_block_length_keeps_the_blocks_before(tmp_path, cases, ips, engine):
    data = pcapng_two_ifaces("<", link_frames("ethernet", ips))
    sixth = block_starts(data)[3 + 5]  # SHB, 2 IDBs, 5 packets
    path = tmp_path / "corrupt.pcapng"
    path.write_bytes(data[: sixth + 4] + struct.pack("<I", 13) + data[sixth + 8 :])
    stats = CaptureStats()
    assert read(path, engine=engine, stats=stats) == expected(cases)[:5]
    [warning] = stats.warnings
    assert warning.startswith(f"{path}: cut short after packet 5 ("), warning


def pcapng_with_a_big_block(frames: list[Frame], size: int) -> tuple[bytes, int]:
    """The frames with a custom block of `size` bytes of content (longer than any packet
    block: a Name Resolution or Decryption Secrets block may be) after the first half;
    and the offset of that block."""
    half = len(frames) // 2
    head = [ng_shb("<"), ng_idb("<", 1)] + [
        ng_epb("<", 0, ticks(t, None), d, n) for t, d, n in frames[:half]
    ]
    big = ng_block("<", 0x40000BAD, struct.pack("<I", 32473) + b"x" * size)
    tail = [ng_epb("<", 0, ticks(t, None), d, n) for t, d, n in frames[half:]]
    return b"".join([*head, big, *tail]), len(b"".join(head))


@pytest.mark.parametrize("engine", ["python", "auto"])
def test_a_block_longer_than_any_packet_block_is_read_past(tmp_path, cases, ips, engine):
    """libpcap stops at a block over 16 MB; the python engine reads past it, keeping at
    most a chunk of it at a time (auto reads on with it from where libpcap stopped)."""
    data, _at = pcapng_with_a_big_block(link_frames("ethernet", ips), 20 << 20)
    path = tmp_path / "big.pcapng"
    path.write_bytes(data)
    del data
    stats = CaptureStats()
    tracemalloc.start()
    try:
        got = read(path, engine=engine, stats=stats)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert (got, stats.warnings) == (expected(cases), [])
    assert peak < 8 * CHUNK  # (the block is 20)


def test_a_big_block_cut_short_or_with_lengths_that_disagree_ends_the_data(tmp_path, cases, ips):
    data, at = pcapng_with_a_big_block(link_frames("ethernet", ips), 3 * CHUNK)
    length = struct.unpack_from("<I", data, at + 4)[0]
    cut, bad = tmp_path / "cut.pcapng", tmp_path / "bad.pcapng"
    cut.write_bytes(data[: at + 2 * CHUNK])
    end = at + length  # its last 4 bytes repeat its length
    bad.write_bytes(data[: end - 4] + struct.pack("<I", length + 4) + data[end:])
    half = len(ips) // 2
    problems = {
        cut: f"a block of {length} bytes cut short at byte {at}",
        bad: f"block lengths disagree at byte {at}",
    }
    for path, problem in problems.items():
        stats = CaptureStats()
        assert read(path, engine="python", stats=stats) == expected(cases)[:half]
        assert stats.warnings == [f"{path}: cut short after packet {half} ({problem})"]


@pytest.mark.parametrize("engine", [*ENGINES, "auto"])
@pytest.mark.parametrize("codec", COMPRESSORS)
def test_broken_compressed_stream_keeps_what_came_before(tmp_path, cases, ips, engine, codec):
    data = pcapng_two_ifaces("<", link_frames("ethernet", ips))
    path = tmp_path / "broken.pcapng.z"
    path.write_bytes(compressed_in_pieces(codec, data)[:-20])
    stats = CaptureStats()
    got = read(path, engine=engine, stats=stats)
    assert got and got == expected(cases)[: len(got)]
    assert any(f"{codec} data broken" in w for w in stats.warnings), stats.warnings


@pytest.mark.parametrize("codec", COMPRESSORS)
def test_compressed_in_several_pieces_reads_as_one_file(tmp_path, cases, ips, codec):
    data = pcap_file(1, link_frames("ethernet", ips))
    path = tmp_path / "pieces.pcap.z"
    path.write_bytes(compressed_in_pieces(codec, data))
    stats = CaptureStats()
    assert read(path, engine="python", stats=stats) == expected(cases)
    assert stats.warnings == []


@pytest.mark.parametrize("engine", [*ENGINES, "auto"])
def test_xz_streams_with_stream_padding_read_as_one_file(tmp_path, cases, ips, engine):
    """xz allows null bytes, four at a time, between and after streams (xz(1) reads on);
    lzma.LZMAFile takes them for the end of the data."""
    data = pcap_file(1, link_frames("ethernet", ips))
    half = len(data) // 2
    path = tmp_path / "padded.pcap.xz"
    path.write_bytes(lzma.compress(data[:half]) + bytes(8) + lzma.compress(data[half:]) + bytes(4))
    stats = CaptureStats()
    assert read(path, engine=engine, stats=stats) == expected(cases)
    assert stats.warnings == []


def test_xz_followed_by_garbage_warns_as_gzip_does(tmp_path, cases, ips):
    path = tmp_path / "garbage.pcap.xz"
    path.write_bytes(lzma.compress(pcap_file(1, link_frames("ethernet", ips))) + b"garbage!")
    stats = CaptureStats()
    assert read(path, engine="python", stats=stats) == expected(cases)
    [warning] = stats.warnings
    assert "xz data broken" in warning, warning


@pytest.mark.parametrize("engine", [*ENGINES, "auto"])
@pytest.mark.parametrize("codec", ["xz", "bzip2"])
def test_damage_in_a_later_stream_is_a_broken_stream(tmp_path, cases, ips, engine, codec):
    """pbzip2 files, and joined ones, hold many streams: lzma/bz2's file readers take a later
    one that does not begin right for the end of the data, and said nothing."""
    data = pcap_file(1, link_frames("ethernet", ips))
    first = COMPRESSORS[codec](data[: len(data) // 2])
    second = bytearray(COMPRESSORS[codec](data[len(data) // 2 :]))
    second[6] ^= 0xFF  # xz: the stream flags; bzip2: the block magic
    path = tmp_path / "damaged.pcap.z"
    path.write_bytes(first + second)
    stats = CaptureStats()
    got = read(path, engine=engine, stats=stats)
    assert got and got == expected(cases)[: len(got)]
    assert any(f"{codec} data broken" in w for w in stats.warnings), stats.warnings


class FailingFile(io.BytesIO):
    """A file whose reads (of 64 bytes at most) fail after the first: a disk or NFS
    error, say."""

    def __init__(self, data: bytes) -> None:
        super().__init__(data)
        self.reads = 0

    def read(self, size: int | None = -1, /) -> bytes:
        self.reads += 1
        if self.reads > 1:
            raise OSError(5, "Input/output error")
        return super().read(64 if size is None or size < 0 else min(size, 64))


@pytest.mark.parametrize("codec", COMPRESSORS)
def test_a_read_error_inside_compressed_data_is_a_broken_stream(ips, codec):
    """Each codec names the errors that end its data with a warning: a read error must be
    one of them, as it is for a plain file."""
    data = COMPRESSORS[codec](pcap_file(1, link_frames("ethernet", ips)))
    found = codec_of(data)
    assert found is not None
    stream, errors = found.open(FailingFile(data))
    with pytest.raises(errors):
        while stream.read1(CHUNK):
            pass


def skippable_zstd_frame(number: int, content: bytes) -> bytes:
    """A frame zstd passes over (magic 0x184D2A50 + number): pzstd writes one before each
    frame it compresses, with that frame's size."""
    return struct.pack("<II", 0x184D2A50 + number, len(content)) + content


@pytest.mark.parametrize("engine", [*ENGINES, "auto"])
def test_zstd_with_skippable_frames_reads_as_one_file(tmp_path, cases, ips, engine):
    data = pcap_file(1, link_frames("ethernet", ips))
    compress = COMPRESSORS["zstd"]
    half = len(data) // 2
    path = tmp_path / "pzstd.pcap.zst"
    path.write_bytes(
        skippable_zstd_frame(0, b"\x10\x00\x00\x00")  # pzstd's first bytes
        + compress(data[:half])
        + skippable_zstd_frame(15, b"")
        + compress(data[half:])
        + skippable_zstd_frame(7, b"metadata")
    )
    stats = CaptureStats()
    assert read(path, engine=engine, stats=stats) == expected(cases)
    assert stats.warnings == []


@pytest.mark.parametrize("engine", [*ENGINES, "auto"])
def test_lz4_that_begins_with_skippable_frames_is_lz4(tmp_path, cases, ips, engine):
    """lz4's frame format has zstd's skippable frames: the frame after them decides (the
    file was taken for zstd and refused: "not a zstd frame (magic 0x184d2204)")."""
    path = tmp_path / "tagged.pcap.lz4"
    path.write_bytes(
        skippable_zstd_frame(0, b"tag")
        + skippable_zstd_frame(3, b"")
        + COMPRESSORS["lz4"](pcap_file(1, link_frames("ethernet", ips)))
    )
    stats = CaptureStats()
    assert read(path, engine=engine, stats=stats) == expected(cases)
    assert stats.warnings == []


def test_skippable_frames_alone_are_no_lz4(tmp_path):
    path = tmp_path / "empty.zst"
    path.write_bytes(skippable_zstd_frame(0, b"x" * 100) + skippable_zstd_frame(1, b""))
    with pytest.raises(CaptureError, match="empty zstd file"):
        read(path)


def test_zstd_zeros_decompress_piece_by_piece():
    """A few KB of zstd can hold a GB of zeros: the reader must hand it on in pieces, as
    the other decompressors do, not all at once."""
    size = 64 << 20
    compressor = zstandard.ZstdCompressor(write_checksum=True).compressobj(size)
    zeros = bytes(1 << 20)
    packed = b"".join(compressor.compress(zeros) for _ in range(size >> 20))
    packed += compressor.flush()
    assert len(packed) < 10_000
    codec = codec_of(packed)
    assert codec is not None and codec.name == "zstd"
    stream, _ = codec.open(io.BytesIO(packed))
    pieces = list(iter(lambda: len(stream.read1(CHUNK)), 0))
    assert sum(pieces) == size
    assert max(pieces) <= CHUNK


def test_zstd_cut_in_a_frame_keeps_the_whole_blocks_before():
    data = b"".join(struct.pack("<Q", i * 2654435761 % 2**64) for i in range(1 << 17))
    packed = COMPRESSORS["zstd"](data)[:-20]  # one frame of 8 blocks, cut in the last
    stream, errors = codec_of(packed).open(io.BytesIO(packed))
    got = b""
    with pytest.raises(errors):
        while piece := stream.read1(CHUNK):
            got += piece
    assert data.startswith(got) and len(got) >= len(data) - (128 << 10)


@pytest.mark.parametrize("engine", ENGINES)
def test_damaged_files_never_raise_anything_but_capture_error(tmp_path, ips, engine):
    pcapng = pcapng_two_ifaces("<", link_frames("sll", ips))
    pcap = pcap_file(0, link_frames("null", ips))
    path = tmp_path / "damaged"
    for blob in (pcapng, pcap):
        for i in range(24, len(blob), 29):
            damaged = bytearray(blob)
            damaged[i] ^= 0xFF
            damaged[i // 2] ^= 0x5A
            path.write_bytes(bytes(damaged))
            with contextlib.suppress(CaptureError):
                read(path, engine=engine)


# ---------------------------------------------------------------------------------------
# Times outside 1970..2106: 64-bit pcapng time stamps, a signed if_tsoffset
# ---------------------------------------------------------------------------------------

Y2200_S = 7_258_118_400  # 2200-01-01T00:00:00Z
Y2500_S = 16_725_225_600  # 2500-01-01T00:00:00Z (in ns still within 64 bits)
# Per packet of `cases`: (interface, time in µs). Interfaces: µs; ns; µs counted from 2200.
FAR_TIMES = [
    (0, (2**32 - 1) * 10**6 + 999_999),  # 2106-02-07T06:28:15.999999Z: 32-bit seconds' last
    (0, 2**32 * 10**6),  # a µs later
    (1, Y2200_S * 10**6 + 123_456),
    (2, Y2200_S * 10**6 + 5),
    (0, MAX_TIME_US),  # 9999-12-31T23:59:59.999999Z, the last time a table can show
    (1, Y2500_S * 10**6 + 1),
    (0, 123_456_789_012_345_678),  # in year 5882
    (0, MAX_TIME_US + 1),  # skipped, with a warning
]
NOT_TCP_TO_BPF = (5, 6)  # BPF's `tcp` does not look past IPv6 extension headers


def pcapng_far(frames: list[Frame]) -> bytes:
    blocks = [ng_shb("<"), ng_idb("<", 1), ng_idb("<", 1, tsresol=9)]
    blocks.append(ng_idb("<", 1, tsoffset=Y2200_S))
    for (iface, us), (_ts, data, wirelen) in zip(FAR_TIMES, frames, strict=True):
        count = (us, us * 1000 + 999, us - Y2200_S * 10**6)[iface]  # (the 999 ns: truncated)
        blocks.append(ng_epb("<", iface, count, data, wirelen))
    return b"".join(blocks)


@pytest.mark.parametrize("bpf", [None, "tcp"])
@pytest.mark.parametrize("engine", [*ENGINES, "auto"])
def test_pcapng_times_past_2106_are_exact(tmp_path, cases, ips, engine, bpf):
    """pcapy-ng's batches carry seconds in 32 bits: libpcap's 2200 came out as 2106 or
    before. Beyond year 9999 a packet is still skipped, with its warning."""
    path = tmp_path / "far.pcapng"
    path.write_bytes(pcapng_far(link_frames("ethernet", ips)))
    want = [s._replace(ts=us) for s, (_i, us) in zip(expected(cases), FAR_TIMES, strict=True)]
    if bpf:
        want = [s for i, s in enumerate(want) if i not in NOT_TCP_TO_BPF]
    stats = CaptureStats()
    assert read(path, engine=engine, bpf=bpf, stats=stats) == want[:-1]
    assert (stats.bad_times, stats.skipped) == (1, 1)
    assert (stats.packets, stats.engine) == (
        len(want),
        "python" if engine == "python" else "libpcap",
    )
    assert stats.warnings == [f"{path}: 1 packet(s) with a time stamp beyond year 9999 skipped"]


@pytest.mark.parametrize("engine", [*ENGINES, "auto"])
def test_pcapng_times_before_1970_are_skipped_with_their_warning(tmp_path, cases, ips, engine):
    """A negative if_tsoffset: a time before 1970 (which libpcap's batches wrapped to 2106)
    is skipped, as the pipeline takes -1 for "no time yet". The times after are exact: on
    the µs interface from 1969-12-31T23:58:20Z, and 2026 on the ns one 10^9 s back."""
    blocks = [
        ng_shb("<"),
        ng_idb("<", 1, tsoffset=-100),
        ng_idb("<", 1, tsresol=9, tsoffset=-(10**9)),
    ]
    frames = link_frames("ethernet", ips)
    for i, (ts, data, wirelen) in enumerate(frames):
        if i < 5:  # -100 s, -70 s, ..., 20 s
            blocks.append(ng_epb("<", 0, i * 30 * 10**6 + 7, data, wirelen))
        else:
            blocks.append(ng_epb("<", 1, ts + 10**18, data, wirelen))
    path = tmp_path / "neg.pcapng"
    path.write_bytes(b"".join(blocks))
    want = expected(cases)
    want[4] = want[4]._replace(ts=20 * 10**6 + 7)
    stats = CaptureStats()
    assert read(path, engine=engine, stats=stats) == want[4:]
    assert (stats.early_times, stats.bad_times, stats.skipped, stats.packets) == (4, 0, 4, 8)
    assert stats.warnings == [f"{path}: 4 packet(s) with a time stamp before 1970 skipped"]


@pytest.mark.parametrize("engine", [*ENGINES, "auto"])
def test_pcap_seconds_past_2038_stay_unsigned_when_libpcap_reads_one_at_a_time(
    tmp_path, cases, ips, engine
):
    """A pcap record's seconds are 32 unsigned bits; libpcap 1.9 reads them as signed, which
    its batches hide but a packet read alone (after a batch failed: the file is cut short)
    does not: 2038..2106 came out as 1901..1969."""
    later = (2**32 - 8 - T0_NS // 10**9) * 10**9  # all past 2038, the last in 2106
    frames = [(ts + later, data, wirelen) for ts, data, wirelen in link_frames("ethernet", ips)]
    path = tmp_path / "y2106.pcap"
    path.write_bytes(pcap_file(1, frames)[:-30])  # cut inside the last packet
    want = [s._replace(ts=s.ts + later // 1000) for s in expected(cases)]
    assert want[0].ts > 2**31 * 10**6
    stats = CaptureStats()
    assert read(path, engine=engine, stats=stats) == want[:-1]
    [warning] = stats.warnings
    assert warning.startswith(f"{path}: cut short after packet 7 ("), warning


# ---------------------------------------------------------------------------------------
# An outside oracle
# ---------------------------------------------------------------------------------------


def tshark_fields(path: Path, *fields: str) -> list[list[str]]:
    """tshark's values of `fields`, a row per packet."""
    out = subprocess.run(
        [require("tshark"), "-r", str(path), "-T", "fields", *(f"-e{f}" for f in fields)],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    return [line.split("\t") for line in out.splitlines()]


def epoch_us(epoch: str) -> int:
    """tshark's frame.time_epoch in µs, truncated as the readers truncate."""
    sec, _, frac = epoch.partition(".")
    return int(sec) * 10**6 + int(frac.ljust(9, "0")[:6])


def test_tshark_sees_the_same_times_sequence_numbers_and_lengths(corpus):
    path = corpus["pcapng_le-ethernet"]
    theirs = [
        (epoch_us(epoch), int(seq), int(length))
        for epoch, seq, length in tshark_fields(path, "frame.time_epoch", "tcp.seq_raw", "tcp.len")
    ]
    ours = [(s.ts, s.seq, len(s.payload) + s.missing) for s in read(path)]
    assert len(ours) == 8
    assert ours == theirs


@pytest.mark.parametrize("engine", ENGINES)
def test_tshark_sees_the_same_times_past_2106(tmp_path, ips, engine):
    path = tmp_path / "far.pcapng"
    path.write_bytes(pcapng_far(link_frames("ethernet", ips)))
    theirs = [epoch_us(epoch) for (epoch,) in tshark_fields(path, "frame.time_epoch")]
    assert len(theirs) == len(FAR_TIMES)
    assert [s.ts for s in read(path, engine=engine)] == theirs[:-1]  # the last: past 9999


def test_a_snap_length_inside_the_tcp_header_is_reported_per_file(tmp_path: Path) -> None:
    """tcpdump -s 68 on IPv6 (or -s 40 on IPv4) cuts the TCP header: such packets cannot be
    decoded, and must not vanish in silence. Each file is named for its own cuts only."""
    demo = Path(__file__).resolve().parent.parent / "captures" / "demo.pcap"
    cut = tmp_path / "s40.pcap"
    subprocess.run([require("editcap"), "-s", "40", str(demo), str(cut)], check=True)
    for engine in ("libpcap", "python"):
        stats = CaptureStats()
        assert list(read_segments([cut, demo], engine=engine, stats=stats)) == list(
            read_segments([demo], engine=engine)
        )
        (warning,) = stats.warnings
        assert warning.startswith(f"{cut}: {stats.truncated_packets} TCP segment(s) cut short")
        assert stats.truncated_packets == stats.skipped > 600


@pytest.mark.parametrize("bpf", [capture_filter(Options()), READ_ALL])
@pytest.mark.parametrize("engine", ["python", "auto"])
def test_jobscheduler_filters_pass_tcp_behind_ipv6_extension_headers(corpus, engine, bpf):
    """Every case is on a JobScheduler port; libpcap's `tcp` and `port` stop at IPv6's first
    Next Header, so the pipeline's filters must let TCP behind extension headers through."""
    for name, path in corpus.items():
        if name.endswith("-null") and "_le-" not in name:
            continue  # a NULL header in the byte order the file is not: libpcap rejects it
        by_tcp = read(path, engine=engine, bpf="tcp")
        unfiltered = read(path, engine="python")
        assert len(by_tcp) < len(unfiltered) or name == "lt228", name  # (IPv4 only)
        assert read(path, engine=engine, bpf=bpf) == unfiltered, name


def test_a_capture_error_crosses_a_process_boundary_as_itself(tmp_path) -> None:
    """A Dask worker sends it back pickled through tblib, which reads the exception's
    __dict__. Found by the cluster tests: compiled, it had none, and the client got an
    internal error instead of the one-line message."""
    pickling_support = pytest.importorskip("tblib.pickling_support")  # Dask's
    with pytest.raises(CaptureError) as raised:
        read_segments([tmp_path / "missing.pcap"])
    sent = io.BytesIO()
    pickler = pickle.Pickler(sent)
    pickler.dispatch_table = copyreg.dispatch_table | {  # as `distributed` installs tblib
        CaptureError: pickling_support.pickle_exception,
        types.TracebackType: pickling_support.pickle_traceback,
    }
    pickler.dump(raised.value)
    again = pickle.loads(sent.getvalue())
    assert type(again) is CaptureError and str(again) == str(raised.value)


# --- the same packet captured more than once (tcpdump -i any: once per interface) --------


T0_US = T0_NS // 1000
WINDOW = capture.COPY_WINDOW_US


def _packet(n: int, ts: int) -> Segment:
    """Packet n of a conversation: each of its own (sequence, acknowledgment, payload)."""
    return Segment(
        ts, "10.0.0.1", 40000, "10.0.0.2", 4455, n, n, ACK | PSH, 500, b"%d" % n, 0, n, 7
    )


@settings(max_examples=200, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.integers(0, 2 * WINDOW),  # time since the packet before
            st.lists(  # its copies: how much later in the file, and their time from its own
                st.tuples(st.integers(0, 5), st.integers(-WINDOW, WINDOW)), max_size=3
            ),
        ),
        max_size=30,
    )
)
def test_copies_within_the_window_are_dropped_in_any_order(
    plan: list[tuple[int, list[tuple[int, int]]]],
) -> None:
    """Copies come later in the file, timed up to COPY_WINDOW_US before or after their
    packet (capture queues interleave, a physical interface's queue holds them back), and
    other packets may come between: each packet is left once, as captured first."""
    packets, ts = [], T0_US
    placed: list[tuple[int, int, Segment]] = []  # (file position, order, segment)
    for n, (gap, copies) in enumerate(plan):
        ts += gap
        packet = _packet(n, ts)
        packets.append(packet)
        placed.append((n, 0, packet))
        for k, (later, shift) in enumerate(copies, 1):
            placed.append((n + later, k, packet._replace(ts=ts + shift)))
    in_file = [segment for *_, segment in sorted(placed, key=lambda p: p[:2])]
    assert list(capture.without_copies(in_file)) == packets


@pytest.mark.parametrize("field", Segment._fields[1:])
def test_a_segment_that_differs_in_any_field_is_no_copy(field: str) -> None:
    """Another TCP timestamp, window, acknowledgment…: another packet (a retransmission
    sent soon after, a window update), whatever the time."""
    first = _packet(1, T0_US)
    value = getattr(first, field)
    changed = value + value[:1] if isinstance(value, (str, bytes)) else value + 1
    other = first._replace(ts=T0_US + 1, **{field: changed})
    assert list(capture.without_copies([first, other])) == [first, other]


@pytest.mark.parametrize("field", [f for f in Segment._fields if f != "ts"])
def test_a_packet_that_differs_in_one_field_hides_no_copy_of_the_one_before(field: str) -> None:
    """Found in review: a window update (or a resend with a new TCP timestamp) took the
    place of the packet before it, and the copy of that one, stored later in the file
    (one interface's packets behind the other's), was counted as a retransmission."""
    first = _packet(1, T0_US)
    value = getattr(first, field)
    changed = value + value[:1] if isinstance(value, (str, bytes)) else value + 1
    other = first._replace(ts=T0_US + 1, **{field: changed})
    copies = [first._replace(ts=T0_US + 3), other._replace(ts=T0_US + 4)]
    assert list(capture.without_copies([first, other, *copies])) == [first, other]


def test_the_same_segment_given_twice_is_one_packet() -> None:
    first = _packet(1, T0_US)
    assert list(capture.without_copies([first, first])) == [first]


def test_memory_stays_two_generations_after_a_packet_timed_far_ahead() -> None:
    """Found in review: after one packet timed an hour ahead (or a clock step back) every
    later packet was remembered, as no later time was a generation past it."""
    copies = capture.Copies()
    copies.copy(_packet(0, T0_US + 3600 * 1_000_000))
    most = 0
    for n in range(1, 20_000):  # 2 s of packets, 100 µs apart
        assert not copies.copy(_packet(n, T0_US + n * 100))
        most = max(most, copies.remembered)
    assert most <= 2 * capture.COPY_MEMORY_US // 100 + 2


def test_the_same_packet_again_after_the_window_is_a_retransmission() -> None:
    first = _packet(1, T0_US)
    copy, resent = first._replace(ts=T0_US + WINDOW), first._replace(ts=T0_US + WINDOW + 1)
    assert list(capture.without_copies([first, copy, resent])) == [first, resent]


def test_copies_a_file_holds_behind_later_packets_are_found() -> None:
    """A file of several interfaces can hold one interface's packets behind the other's
    (dumpcap writes each interface's in batches): a copy captured at its packet's time but
    stored after COPY_MEMORY_US of later packets is still a copy."""
    later = [_packet(n, T0_US + n * 1000) for n in range(2, capture.COPY_MEMORY_US // 1000)]
    first = _packet(1, T0_US)
    assert list(capture.without_copies([first, *later, first._replace(ts=T0_US + 3)])) == [
        first,
        *later,
    ]
