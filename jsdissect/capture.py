"""Read capture files and decode link/IP/TCP headers into compact TCP segment records.

The hot path of jsdissect: unrelated traffic is rejected by libpcap's BPF (in C) and never
becomes a Python object. A pure-Python fallback (a small struct-based pcap/pcapng reader)
reads what libpcap cannot (records libpcap would cut to a wrong snaplen in a pcap header
among them, see _HeaderSnaplen), applies the same compiled filter and gives identical records.

Decoding works on offsets into one big buffer (a libpcap batch or a chunk of the file), so
a packet that is rejected costs no bytes object: one function per link type finds the IP
header, `_ipv4`/`_ipv6` find the TCP header, `_tcp` builds the Segment.
"""

from __future__ import annotations

import contextlib
import heapq
import operator
import os
import select
import socket
import stat
import struct
import sys
import tempfile
from collections.abc import Callable, Generator, Iterable, Iterator, Sequence
from dataclasses import dataclass, field, fields
from itertools import chain
from pathlib import Path
from typing import IO, Any, Final, Literal, NamedTuple

from jsdissect.compressed import Codec, Stream, codec_of_file
from jsdissect.errors import CaptureError, NoPacketYet

Engine = Literal["auto", "libpcap", "python"]

# TCP flag bits (RFC 9293 §3.1)
FIN, SYN, RST, PSH, ACK, URG = 0x01, 0x02, 0x04, 0x08, 0x10, 0x20


class Segment(NamedTuple):
    """One captured TCP segment. Compact (a tuple) because there can be millions."""

    ts: int  # capture time, integer microseconds since the Unix epoch (UTC); ns truncated
    src: str  # source IP, text form ("10.0.0.1", "2001:db8::1")
    sport: int
    dst: str
    dport: int
    seq: int
    ack: int
    flags: int  # TCP flag bits, see FIN/SYN/... above
    window: int
    payload: bytes  # TCP payload as captured (may be shorter than on the wire)
    missing: int  # payload bytes lost to the snaplen (0 when the packet is complete)
    tsval: int | None  # TCP timestamp option (RFC 7323), when present
    tsecr: int | None


@dataclass(slots=True)
class CaptureStats:
    """What reading saw besides the segments: counts and non-fatal problems."""

    files: int = 0
    packets: int = 0  # packets handed to Python (after BPF)
    segments: int = 0  # TCP segments yielded
    skipped: int = 0  # not TCP, unsupported link type, undecodable headers
    fragments: int = 0  # IP fragments (skipped)
    # cut by the snap length: in the TCP payload, or in the headers (then also skipped)
    truncated_packets: int = 0
    engine: str = ""  # "libpcap" or "python" (last file)
    warnings: list[str] = field(default_factory=list)  # e.g. "FILE: cut short after packet 12"
    # Packets skipped for their time stamp (also counted as skipped). Last: the fields
    # before them keep their positions.
    bad_times: int = 0  # beyond year 9999, which no table can show
    early_times: int = 0  # before 1970 (see MAX_TIME_US)
    encapsulated: int = 0  # in MPLS or PPPoE (also counted as skipped)
    # The snap length of a pcap file's header that libpcap cut records to, though the file
    # holds them longer (--engine libpcap, see _HeaderSnaplen); 0: none such.
    header_snaplen: int = 0

    def absorb(self, file: CaptureStats, name: str) -> None:
        """Add what reading one file saw (`name`: as warnings call it)."""
        self.packets += file.packets
        self.segments += file.segments
        self.skipped += file.skipped
        self.fragments += file.fragments
        self.truncated_packets += file.truncated_packets
        self.bad_times += file.bad_times
        self.early_times += file.early_times
        self.encapsulated += file.encapsulated
        self.engine = file.engine or self.engine
        self.warnings += file.warnings
        if file.truncated_packets:
            self.warnings.append(snaplen_warning(name, file.truncated_packets, file.header_snaplen))
        if file.fragments:
            self.warnings.append(fragments_warning(name, file.fragments))
        if file.bad_times:
            self.warnings.append(
                f"{name}: {file.bad_times} packet(s) with a time stamp beyond year 9999 skipped"
            )
        if file.early_times:
            self.warnings.append(
                f"{name}: {file.early_times} packet(s) with a time stamp before 1970 skipped"
            )
        if file.encapsulated:
            self.warnings.append(
                f"{name}: {file.encapsulated} packet(s) of an unsupported encapsulation"
                " (MPLS/PPPoE) skipped"
            )

    def __reduce__(self) -> tuple[type[CaptureStats], tuple[Any, ...]]:
        # Dask workers send it back (Extract). Compiled, it would pickle its state as a
        # dict; as Python, as a (None, slots) pair: neither reads the other's. Rebuilt
        # through __init__, a worker and its client need not both run compiled or not.
        return (CaptureStats, tuple(getattr(self, f.name) for f in fields(self)))


def snaplen_warning(name: str, count: int, header_snaplen: int = 0) -> str:
    """`header_snaplen`: the snap length of a pcap file's header that libpcap cut records to,
    though they are longer in the file (0: the capture cut them, the bytes are not there)."""
    if header_snaplen:
        return (
            f"{name}: {count} TCP segment(s) cut short by libpcap to the snap length in the"
            f" file header ({header_snaplen}), though the file holds more of them; the messages"
            " they carried are incomplete (--engine auto reads them whole)"
        )
    return (
        f"{name}: {count} TCP segment(s) cut short by the capture's snap length; the"
        " messages they carried are incomplete (capture with -s 0)"
    )


def fragments_warning(name: str, count: int) -> str:
    return (
        f"{name}: {count} IP fragment(s) skipped; TCP carried in fragments is not"
        " reassembled, so the messages in them are missing"
    )


# ---------------------------------------------------------------------------------------
# Layouts
# ---------------------------------------------------------------------------------------

# Link types (tcpdump.org/linktypes.html). 12 and 14 are the BSD DLT_RAW values that
# some writers put into files instead of LINKTYPE_RAW (101); libpcap reports 101 as 12.
LT_NULL, LT_ETHERNET, LT_RAW, LT_LOOP, LT_LINUX_SLL = 0, 1, 101, 108, 113
LT_RAW_BSD, LT_RAW_OPENBSD, LT_IPV4, LT_IPV6, LT_LINUX_SLL2 = 12, 14, 228, 229, 276

ETH_IPV4, ETH_IPV6 = 0x0800, 0x86DD
NO_MACS = bytes(12)  # an Ethernet header's addresses, for a frame rebuilt to be filtered
# Linux cooked v1/v2: where the protocol (an EtherType) is, and the header's length
SLL_PROTOCOL_AT = {LT_LINUX_SLL: 14, LT_LINUX_SLL2: 0}
SLL_HEADER_LEN = {LT_LINUX_SLL: 16, LT_LINUX_SLL2: 20}
VLAN_TPIDS = (0x8100, 0x88A8, 0x9100)  # 802.1Q, 802.1ad, old QinQ
# MPLS unicast and multicast, PPPoE session: IP inside that is not decoded, but counted
ENCAPSULATIONS = (0x8847, 0x8848, 0x8864)
AF_INET_BSD, AF_INET6_BSD = 2, (24, 28, 30)  # NetBSD/OpenBSD, FreeBSD, Darwin
IPPROTO_TCP = 6
IPV6_EXT_GENERIC = (0, 43, 60)  # hop-by-hop, routing, destination options: (len+1)*8 bytes
IPV6_FRAGMENT, IPV6_AH = 44, 51

# IPv4 (RFC 791 §3.1): version/IHL, total length, flags/fragment offset, protocol, addresses
IPV4_HDR = struct.Struct("!BxH2xHxB2x4s4s")
# IPv6 (RFC 8200 §3): version/class/flow, payload length, next header, addresses
IPV6_HDR = struct.Struct("!IHBx16s16s")
# TCP (RFC 9293 §3.1): ports, seq, ack, data offset, flags, window
TCP_HDR = struct.Struct("!HHIIBBH")
# Ethernet + IPv4 without options + TCP (the usual frame): EtherType, version/IHL, total
# length, flags/fragment offset, protocol, addresses, then TCP_HDR's fields
ETH_IPV4_TCP = struct.Struct("!12xHBxH2xHxB2x4s4sHHIIBBH")
ETH_IPV4_TCP_MIN = 14 + 20 + 20
U16_BE = struct.Struct("!H")
U32_PAIR_BE = struct.Struct("!II")
TCP_OPT_TS, TCP_OPT_TS_LEN = 8, 10  # RFC 7323 §3
NOP_NOP_TS = b"\x01\x01\x08\x0a"  # the usual layout of the timestamp option

# pcap file header and record header (draft-ietf-opsawg-pcap §4, §5)
PCAP_MAGICS = {  # magic → (byte order, nanosecond resolution, record header length)
    b"\xa1\xb2\xc3\xd4": (">", False, 16),
    b"\xd4\xc3\xb2\xa1": ("<", False, 16),
    b"\xa1\xb2\x3c\x4d": (">", True, 16),
    b"\x4d\x3c\xb2\xa1": ("<", True, 16),
    # Kuznetzov's "modified" pcap (old Red Hat tcpdump): 8 more bytes per record header
    b"\xa1\xb2\xcd\x34": (">", False, 24),
    b"\x34\xcd\xb2\xa1": ("<", False, 24),
}
PCAP_FILE_HDR_LEN = 24
LINKTYPE_MASK = 0x03FFFFFF  # the upper bits of the link type field carry FCS information
MAX_SNAPLEN = 262144  # libpcap's limit; a larger captured length means a corrupt record

# pcapng (draft-ietf-opsawg-pcapng §4): block types and the options we read
PCAPNG_MAGIC = b"\x0a\x0d\x0d\x0a"
BYTE_ORDER_MAGIC = 0x1A2B3C4D
BT_SHB, BT_IDB, BT_PB, BT_SPB, BT_EPB = 0x0A0D0D0A, 1, 2, 3, 6
OPT_END, IF_TSRESOL, IF_TSOFFSET = 0, 9, 14
PCAPNG_MIN_SHB_LEN = 28
# A packet or interface block longer means a corrupt length field, not a real block (other
# blocks longer than a chunk are read past, see _read_past).
MAX_BLOCK_LEN = 16 * 1024 * 1024

CHUNK = 1 << 20
LIBPCAP_BATCH = 1024
HOST_ORDER = "<" if sys.byteorder == "little" else ">"

# Decoder results that are not a Segment; _CUT: by the snaplen, _ENCAP: see ENCAPSULATIONS.
# A negative result, ~offset: an IP header at that offset whose length field is 0 (see
# _unsized_ip); the engine decodes it again knowing the frame's length on the wire.
_SKIP, _FRAG, _CUT, _ENCAP = 0, 1, 2, 3

# 9999-12-31T23:59:59.999999Z: what a time can print. Final: compiled, the hot loops compare
# with a constant, not a module global looked up per packet.
MAX_TIME_US: Final = 253_402_300_799_999_999
# Packets timed beyond it are skipped, and so are those before 1970 (a pcapng's negative
# if_tsoffset): they would print, but the pipeline takes -1 for "no packet yet" (the
# capture's end, a clock step back).
# pcapy-ng's batches pack a packet's seconds into 32 unsigned bits (next_batch: four native
# uint32 per packet, sec usec offset caplen), though libpcap's own are 64-bit and signed:
# only a time in 1970..2106 comes through whole. A pcap record's always does (32 unsigned
# bits in the file); a pcapng one's (64-bit ticks plus a signed if_tsoffset) may not.
BATCH_TIME_LIMIT_US = (1 << 32) * 1_000_000


# A product with a factor of 2**30 or more takes mypyc's slow path, and there a signal (the
# long multiplication checks for one) aborts the process: mypyc takes the failure for a lack
# of memory ("fatal: out of memory" on Ctrl-C, found in review). Such products of capture
# times are made by this call, which fails as an exception, as the interpreter's would.
_big_product: Callable[[int, int], int] = operator.mul
# The seconds a µs time is made of are split here: the low part's product stays small.
_LOW_SECOND_BITS: Final = 20
_LOW_SECONDS: Final = (1 << _LOW_SECOND_BITS) - 1


class _Seconds:
    """Whole seconds as µs, per packet, without a big product: the high bits of a capture's
    seconds change every 12 days, and their µs are kept."""

    __slots__ = ("_high", "_high_us")

    def __init__(self) -> None:
        self._high = 0
        self._high_us = 0

    def us(self, sec: int) -> int:
        high = sec >> _LOW_SECOND_BITS
        if high != self._high:
            self._high = high
            self._high_us = _big_product(high << _LOW_SECOND_BITS, 1_000_000)
        return self._high_us + (sec & _LOW_SECONDS) * 1_000_000


Decoder = Callable[[bytes, int, int, int], "Segment | int"]
PacketFilter = Callable[[bytes, int, int], bool]
_new_segment = tuple.__new__  # builds a Segment without NamedTuple's argument binding

# ---------------------------------------------------------------------------------------
# Header decoding: offsets into a buffer, `end` = end of the captured bytes of the packet
# ---------------------------------------------------------------------------------------

_addr_cache: dict[bytes, str] = {}
_ADDR_CACHE_MAX = 1 << 16


def _addr(raw: bytes) -> str:
    """Text form of a 4- or 16-byte address; cached because busy hosts repeat."""
    text = _addr_cache.get(raw)
    if text is None:
        if len(_addr_cache) >= _ADDR_CACHE_MAX:
            _addr_cache.clear()
        family = socket.AF_INET if len(raw) == 4 else socket.AF_INET6
        text = _addr_cache[raw] = socket.inet_ntop(family, raw)
    return text


def _tcp_timestamps(buf: bytes, pos: int, end: int) -> tuple[int | None, int | None]:
    """Find the timestamp option in TCP options buf[pos:end]; stop at anything malformed."""
    while pos < end:
        kind = buf[pos]
        if kind == 0:
            break
        if kind == 1:
            pos += 1
            continue
        if pos + 2 > end:
            break
        length = buf[pos + 1]
        if length < 2 or pos + length > end:
            break
        if kind == TCP_OPT_TS and length == TCP_OPT_TS_LEN:
            tsval, tsecr = U32_PAIR_BE.unpack_from(buf, pos + 2)
            return tsval, tsecr
        pos += length
    return None, None


def _tcp(
    buf: bytes, off: int, ip_end: int, cap_end: int, ts: int, src: str, dst: str
) -> Segment | int:
    """TCP header at `off`; the IP datagram ends at ip_end on the wire, cap_end as captured."""
    if off + 20 > cap_end:
        return _CUT if off + 20 <= ip_end else _SKIP
    return _tcp_segment(buf, off, ip_end, cap_end, ts, src, dst, *TCP_HDR.unpack_from(buf, off))


def _tcp_segment(
    buf: bytes,
    off: int,
    ip_end: int,
    cap_end: int,
    ts: int,
    src: str,
    dst: str,
    sport: int,
    dport: int,
    seq: int,
    ack: int,
    doff: int,
    flags: int,
    window: int,
) -> Segment | int:
    """The Segment of a TCP header at `off` whose fixed fields are already unpacked."""
    data = off + ((doff >> 4) << 2)
    if data < off + 20 or data > ip_end:
        return _SKIP
    tsval = tsecr = None
    if data > off + 20:
        opt_end = data if data < cap_end else cap_end
        if buf.startswith(NOP_NOP_TS, off + 20) and off + 32 <= opt_end:
            tsval, tsecr = U32_PAIR_BE.unpack_from(buf, off + 24)
        else:
            tsval, tsecr = _tcp_timestamps(buf, off + 20, opt_end)
    if cap_end > data:
        payload = buf[data:cap_end]
        missing = ip_end - cap_end
    else:
        payload = b""
        missing = ip_end - data
    return _new_segment(
        Segment,
        (ts, src, sport, dst, dport, seq, ack, flags, window, payload, missing, tsval, tsecr),
    )


def _ipv4(buf: bytes, off: int, end: int, ts: int, wire_end: int = -1) -> Segment | int:
    """`wire_end`: where the frame ended on the wire, for a total length of 0 (-1: not
    known yet, see _unsized_ip)."""
    if off + 20 > end:
        return _SKIP
    vihl, total, frag, proto, src, dst = IPV4_HDR.unpack_from(buf, off)
    if vihl >> 4 != 4:
        return _SKIP
    if frag & 0x3FFF:  # MF set or a fragment offset: not reassembled
        return _FRAG
    if proto != IPPROTO_TCP:
        return _SKIP
    hlen = (vihl & 0x0F) << 2
    if total == 0:  # segmentation offload: the length is left for the NIC to fill in
        if wire_end < 0:
            return ~off
        total = (wire_end if wire_end > end else end) - off
    if hlen < 20 or total < hlen:
        return _SKIP
    # The wire length comes from the IP header, never the frame: Ethernet pads short frames.
    ip_end = off + total
    return _tcp(
        buf,
        off + hlen,
        ip_end,
        ip_end if ip_end < end else end,
        ts,
        _addr_cache.get(src) or _addr(src),
        _addr_cache.get(dst) or _addr(dst),
    )


def _ipv6(buf: bytes, off: int, end: int, ts: int, wire_end: int = -1) -> Segment | int:
    """`wire_end`: as for _ipv4."""
    if off + 40 > end:
        return _SKIP
    vtf, plen, nxt, src, dst = IPV6_HDR.unpack_from(buf, off)
    if vtf >> 28 != 6:
        return _SKIP
    if plen:
        ip_end = off + 40 + plen
    elif wire_end < 0:  # a jumbogram or segmentation offload: as long as the frame
        return ~off
    else:
        ip_end = wire_end if wire_end > end else end
    cap_end = ip_end if ip_end < end else end
    pos = off + 40
    while nxt != IPPROTO_TCP:
        if pos + 8 > cap_end:
            return _SKIP
        if nxt in IPV6_EXT_GENERIC:
            nxt, pos = buf[pos], pos + ((buf[pos + 1] + 1) << 3)
        elif nxt == IPV6_FRAGMENT:
            # RFC 8200 §4.5; offset 0 and M=0 is an "atomic fragment", a whole packet.
            if U16_BE.unpack_from(buf, pos + 2)[0] & 0xFFF9:
                return _FRAG
            nxt, pos = buf[pos], pos + 8
        elif nxt == IPV6_AH:  # RFC 4302 §2.2: length in 4-byte units, minus 2
            nxt, pos = buf[pos], pos + ((buf[pos + 1] + 2) << 2)
        else:
            return _SKIP
    return _tcp(
        buf,
        pos,
        ip_end,
        cap_end,
        ts,
        _addr_cache.get(src) or _addr(src),
        _addr_cache.get(dst) or _addr(dst),
    )


def _unsized_ip(buf: bytes, off: int, end: int, ts: int, wire_end: int) -> Segment | int:
    """The IP packet at `off` whose length field is 0, its length what its frame had on
    the wire (`wire_end`: where the frame would end in buf). Segmentation offload leaves
    the length to the NIC; a capture on the sending host sees 0, and a snap length may
    have cut the packet: the length captured would hide that."""
    if buf[off] >> 4 == 4:
        return _ipv4(buf, off, end, ts, wire_end)
    return _ipv6(buf, off, end, ts, wire_end)


def _resized(buf: bytes, off: int, end: int, ts: int, wire_end: int) -> Segment | int:
    """_unsized_ip, for the engines."""
    try:
        return _unsized_ip(buf, off, end, ts, wire_end)
    except (struct.error, IndexError):  # as for any decoder
        return _SKIP


def _ethertype(buf: bytes, off: int, end: int, ts: int, etype: int) -> Segment | int:
    """Dispatch on an EtherType, stepping over any VLAN tags first."""
    while etype in VLAN_TPIDS:
        if off + 4 > end:
            return _SKIP
        etype = (buf[off + 2] << 8) | buf[off + 3]
        off += 4
    if etype == ETH_IPV4:
        return _ipv4(buf, off, end, ts)
    if etype == ETH_IPV6:
        return _ipv6(buf, off, end, ts)
    if etype in ENCAPSULATIONS:
        return _ENCAP
    return _SKIP


def _link_ethernet(buf: bytes, off: int, end: int, ts: int) -> Segment | int:
    if off + ETH_IPV4_TCP_MIN <= end:
        # The common frame (IPv4 without options, not a fragment, TCP) in one unpack.
        (etype, vihl, total, frag, proto, src, dst, sport, dport, seq, ack, doff, flags,
         window) = ETH_IPV4_TCP.unpack_from(buf, off)  # fmt: skip
        plain = etype == ETH_IPV4 and vihl == 0x45 and proto == IPPROTO_TCP
        # Fragments, and lengths below the headers' (0: segmentation offload), go the
        # general way.
        if plain and not frag & 0x3FFF and total >= 40:
            ip_end = off + 14 + total
            return _tcp_segment(
                buf,
                off + 34,
                ip_end,
                ip_end if ip_end < end else end,
                ts,
                _addr_cache.get(src) or _addr(src),
                _addr_cache.get(dst) or _addr(dst),
                sport, dport, seq, ack, doff, flags, window,
            )  # fmt: skip
    if off + 14 > end:
        return _SKIP
    etype = (buf[off + 12] << 8) | buf[off + 13]
    if etype == ETH_IPV4:
        return _ipv4(buf, off + 14, end, ts)
    return _ethertype(buf, off + 14, end, ts, etype)


def _link_sll(buf: bytes, off: int, end: int, ts: int) -> Segment | int:
    # Linux cooked v1: packet type, ARPHRD, address length, address[8], protocol
    if off + 16 > end:
        return _SKIP
    return _ethertype(buf, off + 16, end, ts, (buf[off + 14] << 8) | buf[off + 15])


def _link_sll2(buf: bytes, off: int, end: int, ts: int) -> Segment | int:
    # Linux cooked v2: protocol, reserved, ifindex, ARPHRD, packet type, addr len, addr[8]
    if off + 20 > end:
        return _SKIP
    return _ethertype(buf, off + 20, end, ts, (buf[off] << 8) | buf[off + 1])


def _link_null(buf: bytes, off: int, end: int, ts: int) -> Segment | int:
    """BSD NULL (AF_ value in the writer's byte order) and LOOP (network order)."""
    if off + 4 > end:
        return _SKIP
    family = buf[off] | buf[off + 1] << 8 | buf[off + 2] << 16 | buf[off + 3] << 24
    if family > 0xFFFF:  # the AF_ values are small: this one is big-endian
        family = buf[off + 3] | buf[off + 2] << 8 | buf[off + 1] << 16 | buf[off] << 24
    if family == AF_INET_BSD:
        return _ipv4(buf, off + 4, end, ts)
    if family in AF_INET6_BSD:
        return _ipv6(buf, off + 4, end, ts)
    return _SKIP


def _link_raw(buf: bytes, off: int, end: int, ts: int) -> Segment | int:
    if off >= end:
        return _SKIP
    version = buf[off] >> 4
    if version == 4:
        return _ipv4(buf, off, end, ts)
    if version == 6:
        return _ipv6(buf, off, end, ts)
    return _SKIP


def _unsupported_link(buf: bytes, off: int, end: int, ts: int) -> Segment | int:
    return _SKIP


def _unsupported_warning(path: str, linktype: int) -> str:
    return f"{path}: link type {linktype} not supported, its packets skipped"


DECODERS: dict[int, Decoder] = {
    LT_NULL: _link_null,
    LT_ETHERNET: _link_ethernet,
    LT_RAW_BSD: _link_raw,
    LT_RAW_OPENBSD: _link_raw,
    LT_RAW: _link_raw,
    LT_LOOP: _link_null,
    LT_LINUX_SLL: _link_sll,
    LT_IPV4: _ipv4,
    LT_IPV6: _ipv6,
    LT_LINUX_SLL2: _link_sll2,
}


# ---------------------------------------------------------------------------------------
# BPF
# ---------------------------------------------------------------------------------------


def _pcapy() -> Any:
    """The pcapy module, or None when it is not installed."""
    try:
        import pcapy
    except ImportError:
        return None
    return pcapy


def _filter_for_linktype(bpf: str, linktype: int) -> str:
    """The user's filter, widened on Ethernet to frames with one or two VLAN tags, and on
    Linux cooked captures to every tagged frame (see `_tags_filtered`); on both, to the
    frames of an encapsulation not decoded, to count them (ENCAPSULATIONS).

    libpcap's `vlan` keyword shifts the offsets of everything compiled after it, so the
    tagged alternatives are nested (not listed side by side) to test each depth once.
    """
    if linktype in SLL_PROTOCOL_AT:
        at = SLL_PROTOCOL_AT[linktype]
        passed = (*VLAN_TPIDS, *ENCAPSULATIONS)
        return " or ".join([f"({bpf})", *(f"link[{at}:2] = {proto:#06x}" for proto in passed)])
    if linktype != LT_ETHERNET:
        return bpf
    bpf = " or ".join([f"({bpf})", *(f"ether proto {proto:#06x}" for proto in ENCAPSULATIONS)])
    return f"{bpf} or (vlan and ({bpf} or (vlan and ({bpf}))))"


def _decoder(linktype: int, bpf: str | None) -> Decoder | None:
    """The decoder of a link type (None: not supported) under a filter."""
    decoder = DECODERS.get(linktype)
    if decoder is not None and bpf and linktype in SLL_PROTOCOL_AT:
        return _tags_filtered(decoder, linktype, bpf)
    return decoder


def _tags_filtered(decoder: Decoder, linktype: int, bpf: str) -> Decoder:
    """A Linux cooked capture's decoder that applies the filter to the VLAN-tagged frames.

    libpcap's `vlan` keyword does not work on cooked captures, so its filter passes them
    all (`_filter_for_linktype`); here each is tested as the Ethernet frame of the same tags
    and packet would be, with the filter as compiled for Ethernet: the same segments as
    from the untagged frames, in both engines."""
    pcapy = _pcapy()
    try:
        program = pcapy.compile(LT_ETHERNET, 65535, _filter_for_linktype(bpf, LT_ETHERNET), 1, 0)
        run = program.filter
    except pcapy.PcapError:  # (it compiled for Ethernet in _check_filter) rejects all
        run = _rejects_frame
    at, body = SLL_PROTOCOL_AT[linktype], SLL_HEADER_LEN[linktype]

    def decode(buf: bytes, off: int, end: int, ts: int) -> Segment | int:
        if off + body <= end and (buf[off + at] << 8 | buf[off + at + 1]) in VLAN_TPIDS:
            frame = NO_MACS + buf[off + at : off + at + 2] + buf[off + body : end]
            if not run(frame):
                return _SKIP
        return decoder(buf, off, end, ts)

    return decode


def _rejects_frame(frame: bytes) -> int:
    return 0


def _rejects_all(exc: Exception) -> bool:
    """libpcap refuses to compile a filter that cannot match on a link type (`ip6` on
    LINKTYPE_IPV4): for us that is a file without matching packets, not an error."""
    return "rejects all packets" in str(exc)


def _check_filter(bpf: str) -> None:
    """Reject a filter that does not compile at all, before any file is read."""
    pcapy = _pcapy()
    if pcapy is None:
        raise CaptureError("a BPF filter needs pcapy-ng, which is not installed")
    try:
        pcapy.compile(LT_ETHERNET, 65535, bpf, 1, 0)
    except pcapy.PcapError as exc:
        if _rejects_all(exc):
            return
        raise CaptureError(f"invalid BPF filter {bpf!r}: {exc}") from None


def _bpf_dlt(linktype: int) -> int:
    """The DLT that libpcap compiles for a file's link type (raw IP has several numbers)."""
    if linktype in (LT_RAW, LT_RAW_BSD, LT_RAW_OPENBSD):
        return LT_RAW_BSD  # DLT_RAW on every platform except OpenBSD
    return linktype


def _family_as_compiled(family_order: str, program_order: str) -> Callable[[bytes], bytes]:
    """Rewrite a NULL/LOOP header into what a filter compiled without a file expects.

    Reading a file, libpcap tests the AF_ value in the file's byte order and accepts all
    three BSD AF_INET6 values; compiled without a file (pcapy.compile, as the python engine
    must) it tests the host's byte order and only the host's AF_INET6.
    """
    read = struct.Struct(family_order + "I").unpack_from
    write = struct.Struct(program_order + "I").pack
    host_inet6 = socket.AF_INET6

    def rewrite(pkt: bytes) -> bytes:
        family = read(pkt)[0] if len(pkt) >= 4 else 0
        if family in AF_INET6_BSD:
            family = host_inet6
        elif family == host_inet6:
            family = 0xFFFFFFFF  # not an IPv6 value in a file
        return write(family) + pkt[4:]

    return rewrite


def _unsupported_filter(bpf: str, linktype: int, file_order: str, path: str) -> PacketFilter:
    """The filter of a link type without a decoder: its packets are skipped anyway, and
    counted as libpcap hands them over. libpcap cannot compile a filter for many such types
    (USB, NFLOG, 802.11): then, as for the libpcap engine, none is handed over."""
    try:
        return _python_filter(bpf, linktype, file_order, path)
    except CaptureError:
        return _reject_all


def _reject_all(buf: bytes, off: int, end: int) -> bool:
    return False


def _python_filter(bpf: str, linktype: int, file_order: str, path: str) -> PacketFilter:
    """A filter that rejects exactly the packets libpcap's BPF would reject for this file."""
    pcapy = _pcapy()
    if pcapy is None:
        raise CaptureError(f"{path}: a BPF filter needs pcapy-ng, which is not installed")
    try:
        program = pcapy.compile(
            _bpf_dlt(linktype), 65535, _filter_for_linktype(bpf, linktype), 1, 0
        )
    except pcapy.PcapError as exc:
        if _rejects_all(exc):
            return _reject_all
        # The filter is jsdissect's own and long: its text would bury the reason.
        raise CaptureError(f"{path}: link type {linktype} cannot be filtered ({exc})") from None
    run = program.filter
    if linktype in (LT_NULL, LT_LOOP):
        rewrite = (
            _family_as_compiled(file_order, HOST_ORDER)
            if linktype == LT_NULL
            else _family_as_compiled(">", ">")
        )
        return lambda buf, off, end: run(rewrite(buf[off:end])) != 0
    return lambda buf, off, end: run(buf[off:end]) != 0


# ---------------------------------------------------------------------------------------
# Opening files
# ---------------------------------------------------------------------------------------


# Descriptors one file being read may hold (the file, a decompressed copy of a compressed one),
# and what the rest of a run needs besides.
FDS_PER_FILE = 2
FDS_SPARE = 64


class _FileInfo(NamedTuple):
    path: str  # as the user gave it, for messages
    fmt: str  # "pcap" or "pcapng"
    codec: Codec | None  # how the file is compressed, if it is
    source: str  # the file to read: `path`, a copy of a pipe, or a decompressed copy


def _os_problem(exc: OSError) -> str:
    if isinstance(exc, FileNotFoundError):
        return "no such file"
    if isinstance(exc, IsADirectoryError):
        return "is a directory, not a capture file"
    if isinstance(exc, PermissionError):
        return "permission denied"
    return exc.strerror or str(exc)


def _open_raw(source: str, name: str) -> IO[bytes]:
    """Open the file to read; errors say `name`, the capture as the person gave it."""
    try:
        mode = os.stat(source).st_mode
        if not stat.S_ISREG(mode) and not stat.S_ISDIR(mode):
            # A pipe not spooled (see `spooled`), or a device: the bytes read to identify
            # it would be gone for the read that follows.
            raise CaptureError(
                f"{name}: not a regular file (a pipe or a device); a capture is read more"
                " than once, so save it to a file first"
            )
        return open(source, "rb")
    except OSError as exc:
        raise CaptureError(f"{name}: {_os_problem(exc)}") from None


# ---------------------------------------------------------------------------------------
# Captures from a pipe: saved to a temporary file first
# ---------------------------------------------------------------------------------------

STDIN = "-"  # the capture argument that means standard input, as in tcpdump -r -
STDIN_NAME = "<stdin>"  # its name in messages
SPOOL_CHUNK = 1 << 20


class Spooled:
    """A capture that came through a pipe, saved in a temporary file: os.fspath() is the
    file to read, str() the name the person gave, for messages; `problem` says why the
    stream ended early, if it did (what came before is kept)."""

    __slots__ = ("file", "name", "problem")

    def __init__(self, name: str, file: str, problem: str = "") -> None:
        self.name = name
        self.file = file
        self.problem = problem

    def __fspath__(self) -> str:
        return self.file

    def __str__(self) -> str:
        return self.name

    def __repr__(self) -> str:
        return f"Spooled({self.name!r}, {self.file!r})"

    def __reduce__(self) -> tuple[type[Spooled], tuple[str, str, str]]:
        # Sent to Dask workers; a compiled class (jsdissect.native) pickles only this way.
        return (Spooled, (self.name, self.file, self.problem))


CapturePath = str | os.PathLike[str]


def display_name(path: CapturePath) -> str:
    """How messages name a capture the person gave: '-' is <stdin>."""
    if isinstance(path, Spooled):
        return path.name
    return STDIN_NAME if os.fspath(path) == STDIN else str(Path(path))


def _pipe_identity(path: CapturePath) -> tuple[int, int] | None:
    """(device, inode) of stdin or a named pipe, which is read through a copy; None for
    anything else (files, and devices, which `_open_raw` refuses)."""
    if isinstance(path, Spooled):
        return None
    try:
        st = os.fstat(0) if os.fspath(path) == STDIN else os.stat(path)
    except OSError:
        if os.fspath(path) == STDIN:
            raise CaptureError(f"{STDIN_NAME}: is closed") from None
        return None  # _identify names the problem
    if os.fspath(path) == STDIN:
        _check_stdin(st.st_mode)
    elif not stat.S_ISFIFO(st.st_mode):
        return None
    return st.st_dev, st.st_ino


def _check_stdin(mode: int) -> None:
    if os.isatty(0):
        raise CaptureError(
            f"{STDIN_NAME}: is a terminal, not a capture (pipe one in: tcpdump -w - ... |"
            " jsdissect tasks -)"
        )
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        raise CaptureError(f"{STDIN_NAME}: a device, not a capture")


@contextlib.contextmanager
def spooled(paths: Iterable[CapturePath], warnings: list[str]) -> Iterator[list[CapturePath]]:
    """The paths, with "-" (stdin) and named pipes (`<(zcat x.pcap.gz)`) saved to temporary
    files for the time of the block: the analysis reads a capture more than once (a second
    pass for ports learned late), and a pipe can be read only once. Every path handed on
    is checked to be a capture: the files first, so a typo fails before a long stream is
    waited for, then each copy. A file given twice is handed on once, and a stream that
    broke off is kept up to the break: both with a warning in `warnings`."""
    paths = list(paths)
    pipes = [_pipe_identity(p) for p in paths]
    seen: set[tuple[int, int]] = set()
    files: dict[int, _FileInfo] = {}  # by the path's place in `paths`
    without_packets: dict[int, str] = {}  # files with no packet yet, and why
    for i, (path, pipe) in enumerate(zip(paths, pipes, strict=True)):
        if pipe is None:
            try:
                files[i] = _identify(path)
            except NoPacketYet as exc:
                without_packets[i] = str(exc)
        elif pipe in seen:  # `- -`, `f f`, `- /dev/stdin`: the second would read nothing
            name = display_name(path)
            raise CaptureError(f"{name}: given more than once; a pipe can be read only once")
        else:
            seen.add(pipe)
    if without_packets and not files and not seen:  # nothing else to read: the file's fault
        raise CaptureError(next(iter(without_packets.values())))
    # The newest file of a ring buffer being written (tcpdump -C/-G) is empty, or cut in its
    # header, until tcpdump's buffer is flushed: the other files are still read (found in
    # review: one such file failed the whole run).
    warnings += [f"{why}: no packet in it yet, skipped" for why in without_packets.values()]
    once = {id(info) for info in _distinct(list(files.values()), warnings)}
    made: list[str] = []
    try:
        out: list[CapturePath] = []
        for i, (path, pipe) in enumerate(zip(paths, pipes, strict=True)):
            if pipe is not None:
                path = _spool(path, made)
                _identify(path)  # every path handed on is a capture, checked once
                if path.problem:
                    warnings.append(path.problem)
            elif i in without_packets or id(files[i]) not in once:
                continue
            out.append(path)
        yield out
    finally:
        for file in made:
            with contextlib.suppress(OSError):
                os.unlink(file)


def _spool(path: CapturePath, made: list[str]) -> Spooled:
    """Copy a pipe to a new temporary file (listed in `made` at once, for the clean-up)."""
    name = display_name(path)
    try:
        fd, file = tempfile.mkstemp(prefix="jsdissect-spool-", suffix=".capture")
    except OSError as exc:
        raise CaptureError(f"{name}: {_no_copy(exc)}") from None
    made.append(file)
    try:
        with os.fdopen(fd, "wb") as out, _open_pipe(path, name) as source:
            problem = _copy(source, out, name, file)
    except OSError as exc:  # writing, or the last flush: _copy keeps the read errors
        raise CaptureError(f"{name}: {_no_copy(exc)}") from None
    return Spooled(name, file, problem)


def _open_pipe(path: CapturePath, name: str) -> IO[bytes]:
    """Unbuffered: a read returns what the pipe holds, and None when a non-blocking one
    holds nothing yet."""
    if os.fspath(path) == STDIN:
        return os.fdopen(0, "rb", buffering=0, closefd=False)
    try:
        return open(path, "rb", buffering=0)
    except OSError as exc:
        raise CaptureError(f"{name}: {_os_problem(exc)}") from None


def _copy(source: IO[bytes], out: IO[bytes], name: str, file: str) -> str:
    """Copy to the end of the stream into `out`, the file `file`. A read error ends it
    early: returned, for a warning (what came before is kept); a write error is raised, and
    so is a CaptureError as soon as the first bytes show it is not a capture."""
    size = 0
    check_at = PCAPNG_MIN_SHB_LEN  # the size of the copy at which to look at it (next)
    while True:
        try:
            chunk = source.read(SPOOL_CHUNK)
        except OSError as exc:
            return f"{name}: the stream broke off ({_os_problem(exc)}); reading what came before"
        if chunk is None:  # a non-blocking descriptor with nothing yet: wait for more
            select.select([source], [], [])
            continue
        if not chunk:
            return ""
        out.write(chunk)
        size += len(chunk)
        if 0 < check_at <= size:
            out.flush()
            check_at = _check_spooled(name, file, size)


# A compressed stream's first decompressed bytes may need a whole block (bzip2: 900 KB, lz4's
# legacy format: 8 MB compressed): looked for at sizes doubling up to this, then left to
# the check of the whole copy.
SPOOL_CHECK_LIMIT = 64 * SPOOL_CHUNK


def _check_spooled(name: str, file: str, size: int) -> int:
    """Look at the first `size` bytes of a pipe's copy: a CaptureError if they are not a
    capture's beginning (text: `tcpdump` without `-w -`), not to copy a stream of GBs for
    nothing; the size at which to look again when they do not tell yet, 0 when they did."""
    with open(file, "rb") as f:
        head = f.read(PCAPNG_MIN_SHB_LEN)
        codec = codec_of_file(f, head)
    if codec is None:
        _capture_format(name, head, None)
        return 0
    reader = _ChunkReader(_FileInfo(name, "", codec, file))
    try:
        data = reader.read_at_least(4)  # its end is likely cut: a problem, and what came before
    finally:
        reader.close()
    if len(data) >= 4:
        _capture_format(name, data, codec)
        return 0
    return size * 2 if size < SPOOL_CHECK_LIMIT else 0


def _no_copy(exc: OSError) -> str:
    return f"cannot save it to a temporary file in {tempfile.gettempdir()} ({_os_problem(exc)})"


def _identify(given: CapturePath) -> _FileInfo:
    """Check that a file is a pcap/pcapng capture (maybe compressed) by its header."""
    path, source = str(given), os.fspath(given)
    with _open_raw(source, path) as f:
        try:
            head = f.read(PCAPNG_MIN_SHB_LEN)
        except OSError as exc:
            raise CaptureError(f"{path}: {_os_problem(exc)}") from None
        if not head:
            raise NoPacketYet(f"{path}: empty file")
        codec = codec_of_file(f, head)
    if codec:
        reader = _ChunkReader(_FileInfo(path, "", codec, source))
        try:
            head = reader.read_at_least(PCAPNG_MIN_SHB_LEN)
        finally:
            reader.close()
        if reader.problem and len(head) < PCAPNG_MIN_SHB_LEN:
            raise CaptureError(f"{path}: unreadable {codec.name} data ({reader.cause})")
        if not head:
            raise NoPacketYet(f"{path}: empty {codec.name} file")
    fmt = _capture_format(path, head, codec)
    need = PCAP_FILE_HDR_LEN if fmt == "pcap" else PCAPNG_MIN_SHB_LEN
    if len(head) < need:
        raise NoPacketYet(f"{path}: cut short in the {fmt} file header")
    if fmt == "pcapng" and _section_order(head, 0) is None:
        raise CaptureError(f"{path}: bad pcapng section header (byte-order magic)")
    return _FileInfo(path, fmt, codec, source)


def _capture_format(path: str, head: bytes, codec: Codec | None) -> str:
    """The format ("pcap" or "pcapng") by the magic that begins `head`, decompressed; a
    CaptureError if it is neither."""
    magic = head[:4]
    if magic in PCAP_MAGICS:
        return "pcap"
    if magic == PCAPNG_MAGIC:
        return "pcapng"
    if len(magic) < 4 and any(m.startswith(magic) for m in (*PCAP_MAGICS, PCAPNG_MAGIC)):
        raise NoPacketYet(f"{path}: cut short in the file header")
    what = f"{codec.name}-compressed file is not" if codec else "not"
    number = int.from_bytes(magic.ljust(4, b"\0"), "big")
    raise CaptureError(f"{path}: {what} a pcap or pcapng file (magic 0x{number:08x})")


class _ChunkReader:
    """Reads a plain or compressed file in big chunks; a broken compressed stream ends it
    early, keeping what came before."""

    def __init__(self, info: _FileInfo) -> None:
        self.codec = info.codec
        self._raw = _open_raw(info.source, info.path)
        self._stream: Stream | None = None
        self._read: Callable[[int], bytes] = self._raw.read
        self._errors: tuple[type[Exception], ...] = (OSError,)
        if info.codec:
            self._stream, self._errors = info.codec.open(self._raw)
            self._read = self._stream.read1
        self.problem = ""  # why the data ended early, if it did
        self.cause = ""  # the error that ended it

    def read(self, size: int = CHUNK) -> bytes:
        if self.problem:
            return b""
        try:
            return self._read(size)
        except self._errors as exc:
            self.cause = str(exc) or type(exc).__name__
            broken = f"{self.codec.name} data broken: " if self.codec else ""
            self.problem = broken + self.cause
            return b""

    def read_at_least(self, size: int, chunk: int = CHUNK) -> bytes:
        data = self.read(chunk)
        while len(data) < size and (more := self.read(chunk)):
            data += more
        return data

    def close(self) -> None:
        if self._stream:
            self._stream.close()  # leaves the file object it was given open
        self._raw.close()


def _decompress_to_temp(info: _FileInfo, warnings: list[str]) -> str:
    """Decompress to a temporary file for libpcap (it reads no compressed file), streaming."""
    fd, tmp = tempfile.mkstemp(prefix="jsdissect-", suffix="." + info.fmt)
    try:
        with os.fdopen(fd, "wb") as out:
            problem = _write_decompressed(info, out)
    except BaseException:
        os.unlink(tmp)
        raise
    if problem:
        warnings.append(f"{info.path}: {problem}; reading what came before")
    return tmp


def _write_decompressed(info: _FileInfo, out: IO[bytes]) -> str:
    """Copy the decompressed capture into `out`; why it ended early, if it did."""
    reader = _ChunkReader(info)
    try:
        while chunk := reader.read():
            out.write(chunk)
    finally:
        reader.close()
    return reader.problem


def compression(path: CapturePath) -> str | None:
    """How a capture file is compressed ("gzip", "zstd", "lz4", "xz", "bzip2"), or None."""
    codec = _identify(path).codec
    return codec.name if codec else None


def decompress(path: CapturePath, out: Path) -> None:
    """Write a compressed capture's data to `out`, up to any break in the stream (where
    `cut_short` says it ends)."""
    with open(out, "wb") as f:
        _write_decompressed(_identify(path), f)


# ---------------------------------------------------------------------------------------
# Pure-Python readers: batches of records (ts, start, end, decoder, filter) in a buffer
# ---------------------------------------------------------------------------------------

# (ts, start, end, length on the wire, decoder, filter)
Record = tuple[int, int, int, int, Decoder, "PacketFilter | None"]
Batch = tuple[bytes, list[Record]]


def _bytes(count: int) -> str:
    return "1 byte" if count == 1 else f"{count} bytes"


class _Corrupt(Exception):
    """A record or block that cannot be read: the readable part of the file ends there."""


class _Reading:
    """One file being read in Python: its source, how many packets, how it ended."""

    def __init__(self, info: _FileInfo, bpf: str | None, warnings: list[str]) -> None:
        self.info = info
        self.bpf = bpf
        self.warnings = warnings
        self.source = _ChunkReader(info)
        self.packets = 0  # records read from the file (before any filter)
        self.cut = ""  # the warning, when the readable data ends before the file does
        self._links: dict[tuple[int, str], tuple[Decoder, PacketFilter | None]] = {}

    def link(self, linktype: int, order: str) -> tuple[Decoder, PacketFilter | None]:
        """Decoder and filter for a link type in a file (section) of byte order `order`."""
        key = (linktype, order)
        if key not in self._links:
            decoder = _decoder(linktype, self.bpf)
            filt = None
            if decoder is None:
                decoder = _unsupported_link
                self.warnings.append(_unsupported_warning(self.info.path, linktype))
                if self.bpf:
                    filt = _unsupported_filter(self.bpf, linktype, order, self.info.path)
            elif self.bpf:
                filt = _python_filter(self.bpf, linktype, order, self.info.path)
            self._links[key] = (decoder, filt)
        return self._links[key]

    def refill(self, buf: bytes, pos: int, corrupt: str) -> bytes:
        """The unread rest of buf plus the next chunk; b"" at the end of the readable data,
        with a warning if that end is not a clean end of file."""
        chunk = b"" if corrupt else self.source.read()
        if chunk:
            return buf[pos:] + chunk
        reason = corrupt or (
            f"{_bytes(len(buf) - pos)} of an incomplete record at the end" if pos < len(buf) else ""
        )
        if self.source.problem:
            reason = f"{reason}; {self.source.problem}" if reason else self.source.problem
        if reason:
            self.cut = f"{self.info.path}: cut short after packet {self.packets} ({reason})"
            self.warnings.append(self.cut)
        return b""


def _pcap_batches(r: _Reading) -> Iterator[Batch]:
    buf = r.source.read_at_least(PCAP_FILE_HDR_LEN)
    if len(buf) < PCAP_FILE_HDR_LEN:  # it was long enough when _identify looked
        raise CaptureError(f"{r.info.path}: cut short in the pcap file header")
    order, nano, rec_len = PCAP_MAGICS[buf[:4]]
    network = struct.unpack_from(order + "I", buf, 20)[0]
    decoder, filt = r.link(network & LINKTYPE_MASK, order)
    # A record longer than the header's snaplen is kept whole, as Wireshark keeps it: the
    # bytes are in the file (a writer put a wrong snaplen there); libpcap cuts it, see
    # _HeaderSnaplen.
    rec_hdr = struct.Struct(order + "IIII").unpack_from
    seconds = _Seconds()
    pos, offset = PCAP_FILE_HDR_LEN, 0  # offset: where buf starts in the file
    while buf:
        records: list[Record] = []
        size, corrupt = len(buf), ""
        while pos + rec_len <= size:
            sec, frac, caplen, wirelen = rec_hdr(buf, pos)
            if caplen > MAX_SNAPLEN:
                corrupt = f"corrupt record at byte {offset + pos}: captured length {caplen}"
                break
            start = pos + rec_len
            if start + caplen > size:
                break
            ts = seconds.us(sec) + (frac // 1000 if nano else frac)
            records.append((ts, start, start + caplen, wirelen, decoder, filt))
            pos = start + caplen
        r.packets += len(records)
        if records:
            yield buf, records
        offset += pos
        buf, pos = r.refill(buf, pos, corrupt), 0


class _Interface(NamedTuple):
    decoder: Decoder
    filt: PacketFilter | None
    mul: int  # µs = ticks * mul // div + offset_us
    div: int
    offset_us: int
    snaplen: int


class _Section:
    """One pcapng section: its byte order and its interfaces."""

    def __init__(self, order: str) -> None:
        self.order = order
        self.u32 = struct.Struct(order + "I").unpack_from
        self.idb = struct.Struct(order + "H2xI").unpack_from
        self.epb = struct.Struct(order + "IIIII").unpack_from
        self.pb = struct.Struct(order + "HHIIII").unpack_from
        self.opt = struct.Struct(order + "HH").unpack_from
        self.i64 = struct.Struct(order + "q").unpack_from
        # a block's type and length, and an EPB's interface and time stamp's high word
        self.head = struct.Struct(order + "IIII").unpack_from
        self.interfaces: list[_Interface] = []

    def add_interface(self, r: _Reading, buf: bytes, start: int, end: int) -> None:
        if start + 8 > end:
            raise _Corrupt("interface description block too short")
        linktype, snaplen = self.idb(buf, start)
        resol, offset_s = 1_000_000, 0
        pos = start + 8
        while pos + 4 <= end:
            code, length = self.opt(buf, pos)
            if code == OPT_END or pos + 4 + length > end:
                break
            if code == IF_TSRESOL and length >= 1:
                value = buf[pos + 4]  # high bit set: a power of 2, else of 10
                resol = 1 << (value & 0x7F) if value & 0x80 else 10 ** (value & 0x7F)
            elif code == IF_TSOFFSET and length >= 8:
                offset_s = self.i64(buf, pos + 4)[0]
            pos += 4 + ((length + 3) & ~3)
        mul, div = (1, resol // 1_000_000) if resol % 1_000_000 == 0 else (1_000_000, resol)
        decoder, filt = r.link(linktype, self.order)
        snaplen = snaplen if 0 < snaplen <= MAX_SNAPLEN else MAX_SNAPLEN
        offset_us = _big_product(offset_s, 1_000_000)
        self.interfaces.append(_Interface(decoder, filt, mul, div, offset_us, snaplen))

    def packet(self, btype: int, buf: bytes, start: int, end: int) -> Record:
        """The record of a packet block's body buf[start:end]."""
        if btype == BT_SPB:
            return self._simple_packet(buf, start, end)
        if start + 20 > end:
            raise _Corrupt("packet block too short")
        if btype == BT_EPB:
            ifid, hi, lo, caplen, wirelen = self.epb(buf, start)
        else:
            ifid, _drops, hi, lo, caplen, wirelen = self.pb(buf, start)
        if ifid >= len(self.interfaces):
            raise _Corrupt(f"packet of undefined interface {ifid}")
        data = start + 20
        if data + caplen > end:
            raise _Corrupt(f"captured length {caplen} beyond its block")
        iface = self.interfaces[ifid]
        ticks = (hi << 32) | lo
        if iface.mul != 1:  # not a whole number of ticks per µs (2**-n s, ms, s)
            ticks = _big_product(ticks, iface.mul)
        # (a floor division fails as an exception in compiled code too)
        ts = (ticks if iface.div == 1 else ticks // iface.div) + iface.offset_us
        return ts, data, data + caplen, wirelen, iface.decoder, iface.filt

    def _simple_packet(self, buf: bytes, start: int, end: int) -> Record:
        # An SPB belongs to interface 0 and has no time stamp: like libpcap, report time 0
        # (plus the interface's offset); its captured length is min(wire length, snaplen).
        if start + 4 > end or not self.interfaces:
            raise _Corrupt("simple packet block without an interface")
        iface = self.interfaces[0]
        wirelen = self.u32(buf, start)[0]
        caplen = min(wirelen, iface.snaplen)
        if start + 4 + caplen > end:
            raise _Corrupt(f"captured length {caplen} beyond its block")
        return iface.offset_us, start + 4, start + 4 + caplen, wirelen, iface.decoder, iface.filt


def _section_order(buf: bytes, pos: int) -> str | None:
    """Byte order of a Section Header Block from its byte-order magic, None if invalid."""
    magic = buf[pos + 8 : pos + 12]
    if magic == BYTE_ORDER_MAGIC.to_bytes(4, "big"):
        return ">"
    if magic == BYTE_ORDER_MAGIC.to_bytes(4, "little"):
        return "<"
    return None


def _block_length(section: _Section, buf: bytes, pos: int) -> int:
    """Length of the block at pos; 0 when it is not all in buf yet."""
    total = section.u32(buf, pos + 4)[0]
    if total < 12 or total % 4 or total > MAX_BLOCK_LEN:
        raise _Corrupt(f"corrupt block length {total}")
    if pos + total > len(buf):
        return 0
    if section.u32(buf, pos + total - 4)[0] != total:
        raise _Corrupt("block lengths disagree")
    return total


def _pcapng_batches(r: _Reading) -> Iterator[Batch]:
    buf = r.source.read_at_least(PCAPNG_MIN_SHB_LEN)
    if len(buf) < PCAPNG_MIN_SHB_LEN:  # it was long enough when _identify looked
        raise CaptureError(f"{r.info.path}: cut short in the pcapng file header")
    section = _Section(_section_order(buf, 0) or ">")
    packet_blocks = (BT_EPB, BT_SPB, BT_PB)
    read_blocks = (BT_EPB, BT_SPB, BT_PB, BT_IDB, BT_SHB)
    pos, offset = 0, 0  # offset: where buf starts in the file
    while buf:
        records: list[Record] = []
        size, corrupt, passing = len(buf), "", 0
        try:
            while pos + 12 <= size:
                btype = section.u32(buf, pos)[0]
                if btype == BT_SHB:  # the same in both byte orders
                    order = _section_order(buf, pos)
                    if order is None:
                        raise _Corrupt("bad section header")
                    section = _Section(order)
                elif btype not in read_blocks and pos + section.u32(buf, pos + 4)[0] > size:
                    passing = _passed_length(section, buf, pos)
                    if passing:
                        break
                total = _block_length(section, buf, pos)
                if not total:
                    break
                if btype in packet_blocks:
                    records.append(section.packet(btype, buf, pos + 8, pos + total - 4))
                elif btype == BT_IDB:
                    section.add_interface(r, buf, pos + 8, pos + total - 4)
                pos += total
        except _Corrupt as exc:
            corrupt = f"{exc} at byte {offset + pos}"
        r.packets += len(records)
        if records:
            yield buf, records
        offset += pos
        if passing:
            buf, tail = _read_past(r, buf, pos, passing)
            pos = 0
            if len(tail) < 4:
                corrupt = f"a block of {passing} bytes cut short at byte {offset}"
            elif section.u32(tail)[0] != passing:
                corrupt = f"block lengths disagree at byte {offset}"
            else:
                offset += passing
                if buf:
                    continue  # read what follows it
        buf, pos = r.refill(buf, pos, corrupt), 0


def _passed_length(section: _Section, buf: bytes, pos: int) -> int:
    """The length of the block at buf[pos], not one of a packet or an interface and not all
    in buf yet, when it is too long to hold (the readers read past it); else 0."""
    total = section.u32(buf, pos + 4)[0]
    return total if total > CHUNK and not total % 4 else 0


def _read_past(r: _Reading, buf: bytes, pos: int, length: int) -> tuple[bytes, bytes]:
    """Read past the block of `length` bytes at buf[pos], a chunk at a time (a Name
    Resolution or Decryption Secrets block, a custom one, may be longer than a packet
    block can be): what follows it, and its last 4 bytes (fewer: the data ended first)."""
    end = pos + length  # in buf, then in each chunk read
    tail = b""
    while end > len(buf):
        end -= len(buf)
        tail = (tail + buf[-4:])[-4:]
        buf = r.source.read()
        if not buf:
            return b"", b""
    return buf[end:], (tail + buf[:end])[-4:]


def _batch_times_whole(info: _FileInfo) -> bool:
    """Whether libpcap's batches carry every packet time of the file whole (see
    BATCH_TIME_LIMIT_US). A pcapng whose interfaces (those before its first packet) have
    no if_tsoffset cannot go before 1970, and goes past 2106 only with a time stamp no
    capture tool writes (a corrupt one): it is read in batches. With an offset, its block
    headers are walked to know, which adds a fifth to reading it (500,000 packets); walking
    every pcapng would add that to the mixed capture's read (issue 8), and reading it one
    packet at a time 70%."""
    if info.fmt == "pcap":
        return True
    r = _Reading(info, None, [])
    try:
        return _pcapng_times_within(r, 0, BATCH_TIME_LIMIT_US, plain_is_whole=True)
    finally:
        r.source.close()


def _pcapng_times_within(r: _Reading, low: int, high: int, plain_is_whole: bool) -> bool:
    """Whether every packet's time (µs) is in [low, high), as far as the data can be read.
    An EPB is judged by its header alone: its time stamp against its interface's range,
    mostly by the high word alone. `plain_is_whole`: True at the first packet when no
    interface so far has an if_tsoffset (see _batch_times_whole)."""
    buf = r.source.read_at_least(PCAPNG_MIN_SHB_LEN)
    section = _Section(_section_order(buf, 0) or ">")
    head = section.head
    # Per interface of the section: [first, stop) ticks, and the high words strictly
    # between which a time stamp is surely in that range.
    ranges: list[tuple[int, int]] = []
    surely: list[tuple[int, int]] = []
    pos = 0
    try:
        while buf:
            size = len(buf)
            while pos + 20 <= size:
                btype, total, ifid, high_ticks = head(buf, pos)
                if btype == BT_SHB:
                    order = _section_order(buf, pos)
                    if order is None:
                        raise _Corrupt("bad section header")
                    section, ranges, surely = _Section(order), [], []
                    head = section.head
                    total = section.u32(buf, pos + 4)[0]
                if not 12 <= total <= MAX_BLOCK_LEN:
                    raise _Corrupt("corrupt block length")
                if pos + total > size:
                    break
                if plain_is_whole and btype in (BT_EPB, BT_PB, BT_SPB):
                    return True  # (no offset: else the flag was cleared below)
                if btype == BT_EPB:
                    above, below = surely[ifid]
                    if not above < high_ticks < below:
                        first, stop = ranges[ifid]
                        ticks = high_ticks << 32 | section.u32(buf, pos + 16)[0]
                        if not first <= ticks < stop:
                            return False
                elif btype == BT_IDB:
                    section.add_interface(r, buf, pos + 8, pos + total - 4)
                    plain_is_whole &= section.interfaces[-1].offset_us == 0
                    first, stop = _ticks_within(section.interfaces[-1], low, high)
                    ranges.append((first, stop))
                    surely.append((first >> 32, (stop - 1) >> 32))
                elif btype in (BT_PB, BT_SPB):
                    ts = section.packet(btype, buf, pos + 8, pos + total - 4)[0]
                    if not low <= ts < high:
                        return False
                pos += total
            buf, pos = r.refill(buf, pos, ""), 0
    except (_Corrupt, IndexError):  # IndexError: an EPB of an undefined interface
        return True  # corrupt: the readers end here too, and so does the walk
    return True


def _ticks_within(iface: _Interface, low: int, high: int) -> tuple[int, int]:
    """[first, stop): the time stamps, in the interface's ticks, of the times in [low, high)
    µs. A time is ticks * mul // div + offset_us (`_Section.packet`), solved for ticks."""
    first = -(_big_product(iface.offset_us - low, iface.div) // iface.mul)
    stop = -(_big_product(iface.offset_us - high, iface.div) // iface.mul)
    return first, stop


class FileScan(NamedTuple):
    """What the record headers of a capture file tell, no packet decoded."""

    latest: int | None  # the latest time stamp of any packet, whatever a filter passes
    cut: str  # why the readable data ends before the file does (the readers' warning), or ""


def scan(path: CapturePath) -> FileScan:
    """Walk every record header of a capture: for the end of a capture whose packets a BPF
    filter mostly kept from Python (DESIGN Status: "the capture ended first"), and for a
    reader that cannot stop at a cut by itself (tshark)."""
    info = _identify(path)
    r = _Reading(info, None, [])
    latest = -1  # and so no time before 1970, as the readers skip them
    try:
        for _buf, records in _pcap_batches(r) if info.fmt == "pcap" else _pcapng_batches(r):
            for record in records:
                ts = record[0]
                if latest < ts <= MAX_TIME_US:  # a corrupt time is skipped, as the readers do
                    latest = ts
    finally:
        r.source.close()
    return FileScan(latest if latest >= 0 else None, r.cut)


def cut_short(path: CapturePath) -> str:
    """Why a capture's readable data ends before the file does (cut mid-packet, a corrupt
    record, a broken compressed stream) as the warning the readers give, or "" for a whole file."""
    return scan(path).cut


def capture_end(paths: Sequence[CapturePath]) -> int | None:
    """The latest packet time of all the files (None: no packet at all)."""
    return max((t for t in (scan(p).latest for p in paths) if t is not None), default=None)


# ---------------------------------------------------------------------------------------
# Packets to segments, both engines; counting what is not a segment
# ---------------------------------------------------------------------------------------


class _Counts:
    """Counters of one file, added to CaptureStats after every batch."""

    __slots__ = (
        "bad_times",
        "early_times",
        "encapsulated",
        "fragments",
        "packets",
        "segments",
        "skipped",
        "truncated",
    )

    def __init__(self) -> None:
        self.packets = self.segments = self.skipped = self.fragments = self.truncated = 0
        self.encapsulated = 0
        self.bad_times = self.early_times = 0  # whole file: added to CaptureStats at its end

    def bad_time(self, ts: int) -> None:
        """Count a packet skipped for its time (outside 0..MAX_TIME_US)."""
        self.skipped += 1
        if ts < 0:
            self.early_times += 1
        else:
            self.bad_times += 1

    def not_segment(self, result: int) -> None:
        """Count a decoder's result other than a Segment."""
        if result == _FRAG:
            self.fragments += 1
        else:
            self.skipped += 1
            self.truncated += result == _CUT
            self.encapsulated += result == _ENCAP

    def add(self, packets: int, segments: int, truncated: int) -> None:
        self.packets += packets
        self.segments += segments
        self.truncated += truncated

    def flush(self, stats: CaptureStats) -> None:
        stats.packets += self.packets
        stats.segments += self.segments
        stats.skipped += self.skipped
        stats.fragments += self.fragments
        stats.truncated_packets += self.truncated
        stats.encapsulated += self.encapsulated
        self.packets = self.segments = self.skipped = self.fragments = self.truncated = 0
        self.encapsulated = 0


def _python_segments(
    info: _FileInfo, bpf: str | None, stats: CaptureStats, skip: int = 0, cut: int = 0
) -> SegmentBatches:
    """All segments of one file read in Python, a batch per block read; the first `skip`
    filtered packets dropped (they were delivered by libpcap before it stopped, filtered as
    cut to `cut` bytes, see _read_past_filtered)."""
    stats.engine = "python"
    r = _Reading(info, bpf, stats.warnings)
    counts = _Counts()
    try:
        batches = _pcap_batches(r) if info.fmt == "pcap" else _pcapng_batches(r)
        if skip:
            batches = _read_past_filtered(batches, skip, cut)
        for buf, records in batches:
            segments: list[Segment] = []
            for ts, start, end, wirelen, decoder, filt in records:
                if filt is not None and not filt(buf, start, end):
                    continue
                counts.packets += 1
                if not 0 <= ts <= MAX_TIME_US:  # see MAX_TIME_US: skip, don't crash later
                    counts.bad_time(ts)
                    continue
                try:
                    result = decoder(buf, start, end, ts)
                except (struct.error, IndexError):  # a gap in the bounds checks: skip it
                    result = _SKIP
                if type(result) is not Segment:
                    if isinstance(result, int) and result < 0:
                        result = _resized(buf, ~result, end, ts, start + wirelen)
                    if isinstance(result, int):
                        counts.not_segment(result)
                        continue
                counts.segments += 1
                counts.truncated += result[10] > 0  # missing
                segments.append(result)
            counts.flush(stats)
            yield segments
    finally:
        counts.flush(stats)
        r.source.close()
        stats.bad_times += counts.bad_times
        stats.early_times += counts.early_times


def _read_past_filtered(batches: Iterator[Batch], skip: int, cut: int) -> Iterator[Batch]:
    """The records after the first `skip` that pass the filter. `cut`: the length libpcap
    cut records to (a pcap file header's snaplen, 0: none), and so the bytes its filter
    saw: a filter looking past them rejects there what it passes on the whole record, and
    the count must be libpcap's."""
    for buf, records in batches:
        for i, (_ts, start, end, _wirelen, _decoder, filt) in enumerate(records):
            if cut and end - start > cut:
                end = start + cut
            if filt is None or filt(buf, start, end):
                skip -= 1
                if not skip:
                    yield buf, records[i + 1 :]
                    yield from batches
                    return


LibpcapBatches = Iterator[tuple[bytes, Iterable[tuple[int, ...]]]]
# Segments go up the chain of generators below (file, engine, libpcap reader) a batch at a
# time, and read_segments hands them out one by one: every generator they pass costs about
# as much per item as decoding an Ethernet header (measured: 1% of a dense run).
SegmentBatches = Generator[list[Segment], None, None]


def _libpcap_segments(
    decoder: Decoder,
    batches: LibpcapBatches,
    stats: CaptureStats,
    delivered: list[int],
    wire: _WireLengths | None = None,
    snap: _HeaderSnaplen | None = None,
) -> SegmentBatches:
    """Decode libpcap's packets, a list of segments per batch; delivered[0] counts the
    packets handed over. `wire`: their lengths on the wire, when one is needed (None: take
    the captured length). `snap`: the file header's snaplen libpcap cuts records to; the
    reading stops before a packet it cut that the file holds longer when the python engine
    is to read on from there (snap.handed_over)."""
    counts = _Counts()
    # Per-packet counting in local variables (the hot loop), added up once per batch.
    packets = truncated = 0
    seconds = _Seconds()
    # The captured length at which a packet cut short is looked into (-1: never); only
    # packets cut short get there, and only the first of them is looked into.
    cut_at = snap.at if snap is not None else -1
    stop = False
    try:
        for buf, meta in batches:
            segments: list[Segment] = []
            for sec, usec, start, caplen in meta:
                packets += 1
                ts = seconds.us(sec) + usec
                if not 0 <= ts <= MAX_TIME_US:  # skipped as the python engine does
                    counts.bad_time(ts)
                    continue
                try:
                    result = decoder(buf, start, start + caplen, ts)
                except (struct.error, IndexError):  # a gap in the bounds checks: skip it
                    result = _SKIP
                if type(result) is not Segment:
                    if isinstance(result, int) and result < 0:
                        wirelen = wire.length(delivered[0] + packets - 1) if wire else caplen
                        result = _resized(buf, ~result, start + caplen, ts, start + wirelen)
                    if isinstance(result, int):
                        if result == _CUT and caplen == cut_at:
                            cut_at = -1
                            if snap is not None and snap.hands_over():
                                packets -= 1  # read again by the python engine
                                stop = True
                                break
                        counts.not_segment(result)
                        continue
                if result[10]:  # missing
                    if caplen == cut_at:
                        cut_at = -1
                        if snap is not None and snap.hands_over():
                            packets -= 1
                            stop = True
                            break
                    truncated += 1
                segments.append(result)
            counts.add(packets, len(segments), truncated)
            delivered[0] += packets
            packets = truncated = 0
            counts.flush(stats)
            yield segments
            if stop:
                return
    finally:
        counts.add(packets, 0, truncated)
        delivered[0] += packets
        counts.flush(stats)
        stats.bad_times += counts.bad_times
        stats.early_times += counts.early_times


class _WireLengths:
    """The lengths on the wire of the packets of a file that libpcap hands over (under a
    filter): its batches leave them out (see next_batch), and only an IP packet without a
    length needs one (_unsized_ip). A second reader of the file, opened at the first need,
    kept in step: reading past packets in C costs about what libpcap's read of them did."""

    def __init__(self, source: str, bpf: str | None) -> None:
        self._source = source
        self._bpf = bpf
        self._reader: Any = None
        self._next = 0  # the index of the packet the reader gives next

    def length(self, index: int) -> int:
        """The length on the wire of the packet `index` (from 0) libpcap hands over; the
        indexes asked for only grow."""
        if self._reader is None:
            self._reader, _dlt = _libpcap_open(self._source, self._bpf)
        _libpcap_skip(self._reader, index - self._next)
        hdr, _data = self._reader.next()
        self._next = index + 1
        return -1 if hdr is None else int(hdr.getlen())  # -1: the captured length, then

    def close(self) -> None:
        if self._reader is not None:
            self._reader.close()


class _HeaderSnaplen:
    """The snap length in a pcap file's header, to which libpcap cuts every record. A
    writer may have put there less than its records hold (found in review: whole records of
    up to 569 bytes under a snaplen of 96): libpcap would lose bytes that are in the file.
    Looked into at the first packet libpcap hands over cut short at exactly that length, by
    walking the file's record headers once: no cost to a file whose packets are whole."""

    __slots__ = ("at", "hand_over", "info", "lost", "snaplen")

    def __init__(self, info: _FileInfo, hand_over: bool) -> None:
        self.info = info
        self.snaplen = _cutting_snaplen(info)  # 0: libpcap cuts no record of this file
        self.at = self.snaplen or -1  # the captured length to look into (-1: never again)
        self.hand_over = hand_over  # whether the python engine then reads on (engine auto)
        self.lost = False  # whether libpcap cut records the file holds longer

    def hands_over(self) -> bool:
        """At a packet libpcap cut to the snaplen: whether the python engine is to read on
        from it. Asked once."""
        self.at = -1
        self.lost = _has_record_longer(self.info, self.snaplen)
        return self.handed_over

    @property
    def handed_over(self) -> bool:
        return self.lost and self.hand_over


def _cutting_snaplen(info: _FileInfo) -> int:
    """The snaplen in a plain pcap file's header when libpcap cuts records to it; 0 when it
    cuts none (a pcapng file, whose longer records libpcap refuses with an error, or a
    snaplen of 0 or of libpcap's limit, taken for the limit)."""
    if info.fmt != "pcap":
        return 0
    try:
        with open(info.source, "rb") as f:
            head = f.read(PCAP_FILE_HDR_LEN)
        snaplen = struct.unpack_from(PCAP_MAGICS[head[:4]][0] + "I", head, 16)[0]
    except (OSError, KeyError, struct.error):  # changed since libpcap opened it
        return 0
    return snaplen if 0 < snaplen < MAX_SNAPLEN else 0


def _has_record_longer(info: _FileInfo, snaplen: int) -> bool:
    """Whether a pcap file holds a record longer than `snaplen`, its record headers read as
    the python engine reads them, up to the first; or up to the first record the capture
    itself cut at `snaplen` (a snap length that was true: a `-s 96` capture of a whole day
    is not walked again to its end)."""
    r = _Reading(info, None, [])
    try:
        for _buf, records in _pcap_batches(r):
            for _ts, start, end, wirelen, _decoder, _filt in records:
                if end - start > snaplen:
                    return True
                if end - start == snaplen < wirelen:
                    return False
    finally:
        r.source.close()
    return False


class _LibpcapUnusable(Exception):
    """libpcap cannot open or filter this file; the python engine may."""


def _libpcap_open(path: str, bpf: str | None) -> tuple[Any, int]:
    """A pcapy reader with the filter set (None: the filter matches nothing on this file's
    link type), and the file's link type (a DLT)."""
    pcapy = _pcapy()
    if pcapy is None:
        raise _LibpcapUnusable("pcapy-ng is not installed")
    try:
        reader = pcapy.open_offline(path)
    except pcapy.PcapError as exc:
        raise _LibpcapUnusable(f"libpcap cannot open it: {exc}") from None
    except UnicodeEncodeError:  # pcapy-ng passes a name on as UTF-8 only
        raise _LibpcapUnusable(
            "libpcap cannot open it: its name is not UTF-8, which pcapy-ng needs"
            " (--engine python reads it)"
        ) from None
    dlt = reader.datalink()
    if bpf:
        try:
            reader.setfilter(_filter_for_linktype(bpf, dlt))
        except pcapy.PcapError as exc:
            reader.close()
            # A link type without a decoder is skipped whole anyway (see _unsupported_filter).
            if _rejects_all(exc) or dlt not in DECODERS:
                return None, dlt
            raise _LibpcapUnusable(f"libpcap cannot filter link type {dlt}: {exc}") from None
    return reader, dlt


def _libpcap_batches(reader: Any, fmt: str) -> LibpcapBatches:
    """Batches (buffer, [(sec, usec, offset, caplen)]) from libpcap; sec in 32 bits (see
    BATCH_TIME_LIMIT_US). `fmt`: the file's, "pcap" or "pcapng".

    next_batch (pcapy-ng ≥ 2) crosses into Python once per batch, not once per packet;
    it was measured faster than next() and loop()/dispatch() callbacks.
    """
    if not hasattr(reader, "next_batch"):
        yield from _libpcap_singles(reader, fmt)
        return
    while True:
        buf, meta = reader.next_batch(LIBPCAP_BATCH)
        if not meta:
            return
        yield buf, struct.iter_unpack("=IIII", meta)


def _libpcap_singles(reader: Any, fmt: str) -> LibpcapBatches:
    """One packet per batch: after a batch failed, to get the good packets before the fault,
    and for a pcapng file whose times the batches cannot carry (`_batch_times_whole`)."""
    # libpcap 1.9 takes a pcap record's seconds, unsigned 32 bits, for signed: 2038..2106
    # would come out as 1901..1969. A pcapng file's come whole (64 bits, signed).
    seconds = 0xFFFFFFFF if fmt == "pcap" else -1
    while True:
        hdr, data = reader.next()
        if hdr is None:
            return
        sec, usec = hdr.getts()
        yield data, ((sec & seconds, usec, 0, len(data)),)


def _libpcap_skip(reader: Any, count: int) -> None:
    """Read past `count` packets (that pass the filter) without decoding them."""
    while count > 0:
        if hasattr(reader, "next_batch"):
            _buf, meta = reader.next_batch(min(count, LIBPCAP_BATCH))
            count -= len(meta) // 16
        else:
            hdr, _data = reader.next()
            count -= 1
            meta = hdr is not None
        if not meta:
            return


def _libpcap_read(
    reader: Any,
    decoder: Decoder,
    batches: LibpcapBatches,
    stats: CaptureStats,
    delivered: list[int],
    wire: _WireLengths,
    snap: _HeaderSnaplen,
) -> Generator[list[Segment], None, str]:
    """Segments of the batches of an open reader, which it closes; returns libpcap's error,
    if any."""
    pcapy = _pcapy()
    with contextlib.closing(reader):
        try:
            yield from _libpcap_segments(decoder, batches, stats, delivered, wire, snap)
        except pcapy.PcapError as exc:
            return str(exc)
    return ""


def _libpcap_file(
    info: _FileInfo, bpf: str | None, engine: Engine, stats: CaptureStats
) -> SegmentBatches:
    try:
        reader, dlt = _libpcap_open(info.source, bpf)
    except _LibpcapUnusable as exc:
        if engine == "libpcap":
            raise CaptureError(f"{info.path}: {exc}") from None
        yield from _python_segments(info, bpf, stats)
        return
    stats.engine = "libpcap"
    decoder = _decoder(dlt, bpf)
    if decoder is None:
        decoder = _unsupported_link
        stats.warnings.append(_unsupported_warning(info.path, dlt))
    if reader is None:
        return
    wire = _WireLengths(info.source, bpf)
    snap = _HeaderSnaplen(info, hand_over=engine == "auto")
    try:
        delivered = [0]
        if _batch_times_whole(info):
            batches = _libpcap_batches(reader, info.fmt)
        else:
            batches = _libpcap_singles(reader, info.fmt)
        problem = yield from _libpcap_read(reader, decoder, batches, stats, delivered, wire, snap)
        if problem and not snap.handed_over:
            # A batch failed part-way (a file cut short, a block libpcap rejects), losing
            # the good packets before the fault in that batch: read them again one at a time.
            reader, _dlt = _libpcap_open(info.source, bpf)
            _libpcap_skip(reader, delivered[0])
            singles = _libpcap_singles(reader, info.fmt)
            yield from _libpcap_read(reader, decoder, singles, stats, delivered, wire, snap)
    finally:
        wire.close()
    if snap.handed_over or (problem and engine == "auto" and "truncated" not in problem):
        # Records libpcap cut that the file holds longer, or not the end of the data but
        # something libpcap 1.9 rejects (pcapng interfaces of different link types, say):
        # Python reads on from where libpcap stopped.
        yield from _python_segments(info, bpf, stats, skip=delivered[0], cut=snap.snaplen)
        return
    if snap.lost:  # --engine libpcap: its cut is said to be its own (snaplen_warning)
        stats.header_snaplen = snap.snaplen
    if not problem:
        return
    where = f"{delivered[0]} packets passed the filter" if bpf else f"packet {delivered[0]}"
    stats.warnings.append(f"{info.path}: cut short after {where} (libpcap: {problem})")


def _file_segments(
    info: _FileInfo, bpf: str | None, engine: Engine, stats: CaptureStats
) -> SegmentBatches:
    """Segments of one file; its counts and warnings join `stats` when it is done, so a
    warning about them names this file, not every file of the timeline."""
    own = CaptureStats()
    try:
        yield from _engine_segments(info, bpf, engine, own)
    finally:
        stats.absorb(own, info.path)


def _engine_segments(
    info: _FileInfo, bpf: str | None, engine: Engine, stats: CaptureStats
) -> SegmentBatches:
    """Segments of one file with the chosen engine, falling back to Python under "auto"."""
    if engine == "python":
        yield from _python_segments(info, bpf, stats)
        return
    if not info.codec:
        yield from _libpcap_file(info, bpf, engine, stats)
        return
    try:
        tmp = _decompress_to_temp(info, stats.warnings)
    except OSError as exc:  # no room for the copy, say
        if engine == "libpcap":
            raise CaptureError(f"{info.path}: cannot decompress for libpcap: {exc}") from None
        yield from _python_segments(info, bpf, stats)
        return
    try:
        yield from _libpcap_file(info._replace(codec=None, source=tmp), bpf, engine, stats)
    finally:
        os.unlink(tmp)


def read_segments(
    paths: Sequence[CapturePath] | CapturePath,
    *,
    bpf: str | None = None,
    engine: Engine = "auto",
    stats: CaptureStats | None = None,
) -> Iterator[Segment]:
    """Yield the TCP segments of all files, merged into one timeline by timestamp.

    `bpf` is a libpcap filter expression applied before any Python work; the python engine
    applies the same compiled filter so both engines yield identical segments.
    Raises CaptureError (naming the file) for a file that is not a readable capture; a file
    cut short is read up to its last complete packet with a warning in `stats`.
    """
    if engine not in ("auto", "libpcap", "python"):
        raise ValueError(f"unknown engine {engine!r}")
    if isinstance(paths, (str, os.PathLike)):
        paths = [paths]
    stats = stats if stats is not None else CaptureStats()
    if bpf:
        _check_filter(bpf)
    # Check every file up front, so a bad one fails before any work is done.
    infos = _distinct([_identify(p) for p in paths], stats.warnings)
    stats.files += len(infos)
    if len(infos) == 1:
        return _OneByOne(_file_segments(infos[0], bpf, engine, stats))
    return _merged(infos, bpf, engine, stats)


# How far apart two copies of one packet can be captured. `tcpdump -i any` on a host whose
# traffic crosses a VLAN sub-interface, a bond or a bridge takes each packet on every
# interface it passes (so do a capture of several interfaces in one file and a mirror port
# of both directions), each copy stamped when it reached that interface: microseconds
# apart, more when the physical interface's queue holds it back. A resend by TCP comes
# later: its timers wait 200 ms at the least (Linux's minimum RTO; a SYN's first, 1 s),
# and a fast retransmission, which can come sooner, carries another TCP timestamp a
# millisecond on.
COPY_WINDOW_US: Final = 100_000
# How long what was seen is kept for that, as the capture's time goes on: a file of several
# interfaces can hold one interface's packets behind another's (dumpcap writes each
# interface's in batches: 0.24 s behind, seen), and copies come in either order there.
COPY_MEMORY_US: Final = 500_000


class Copies:
    """Tells a packet captured again: a segment equal in every field to one captured less
    than COPY_WINDOW_US before or after it is that packet again, not a retransmission, and
    its first copy is the packet (DESIGN "Exact times": the first copy wins). Ask about
    each segment, in capture order.

    What was seen is kept in two generations, each begun COPY_MEMORY_US after (or before)
    the one before: memory follows the traffic of two such spans at most."""

    # Segments are found again by a number made of a few of their fields (a small int, no
    # object per packet; one that two packets share keeps the later), and compared whole
    # only then: a key of all their fields, a tuple hashed with the payload, cost 10% of
    # a dense capture's main process. A packet new to the recent generation costs one dict
    # operation, and a look into the older one only while a copy of its packets can come
    # (dict operations, not the comparisons, are what this costs).

    __slots__ = ("_latest", "_older", "_older_until", "_recent", "_since")

    def __init__(self) -> None:
        self._recent: dict[int, _Seen] = {}
        self._older: dict[int, _Seen] = {}
        self._since = -1  # when the recent generation began
        self._latest = -1  # the latest time in the recent generation
        self._older_until = -1  # and in the older one

    @property
    def remembered(self) -> int:
        """Packets held to be compared with: two generations' at most."""
        return len(self._recent) + len(self._older)

    def copy(self, seg: Segment) -> bool:
        """Whether `seg` is a packet seen before (else it is remembered)."""
        ts, _src, sport, _dst, dport, seq, ack, flags, win, payload, _m, tsval, _te = seg
        # A new generation COPY_MEMORY_US on, or back: after a clock step back (or one
        # packet timed far ahead) the recent one would else take every packet.
        if not -COPY_MEMORY_US <= ts - self._since <= COPY_MEMORY_US:
            self._older, self._recent, self._since = self._recent, {}, ts
            self._older_until, self._latest = self._latest, ts
        elif ts > self._latest:
            self._latest = ts
        # (under 2**62: no object made for it) With the fields a window update or a resend
        # with a new TCP timestamp changes: packets that share a number are kept together
        # (_Seen), as the copy of the earlier may come later, but seldom.
        key = (seq << 20) ^ ack ^ (len(payload) << 36) ^ (flags << 52)
        key ^= (sport << 3) ^ (dport << 17) ^ (win << 4) ^ ((tsval or 0) << 9)
        recent = self._recent
        size = len(recent)
        first = recent.setdefault(key, seg)
        if len(recent) > size:  # new to this generation
            # a copy of the older generation's packets comes within COPY_WINDOW_US of them
            older = ts <= self._older_until + COPY_WINDOW_US
            if not older or not _copy_in(self._older.get(key), seg):
                return False
            del recent[key]
            return True
        if _copy_in(first, seg) or _copy_in(self._older.get(key), seg):
            return True
        recent[key] = _with(first, seg)  # a resend, or another packet of the same number
        return False


# The packets remembered under one number: one, or (seldom) the last few that shared it.
_Seen = Segment | list[Segment]
SAME_NUMBER_KEPT = 8


def _copy_in(seen: _Seen | None, seg: Segment) -> bool:
    """Whether `seg` is a packet of `seen` captured again."""
    if seen is None:
        return False
    if isinstance(seen, list):
        return any(_copy_of(first, seg) for first in seen)
    return _copy_of(seen, seg)


def _copy_of(first: Segment, seg: Segment) -> bool:
    """Whether `seg` is `first` captured again: the same in all but its time, and close."""
    return -COPY_WINDOW_US <= seg[0] - first[0] <= COPY_WINDOW_US and first[1:] == seg[1:]


def _with(seen: _Seen, seg: Segment) -> list[Segment]:
    kept = seen if isinstance(seen, list) else [seen]
    kept.append(seg)
    if len(kept) > SAME_NUMBER_KEPT:
        del kept[0]
    return kept


def without_copies(segments: Iterable[Segment]) -> Iterator[Segment]:
    """The segments with each packet once (see Copies)."""
    copies = Copies()
    for seg in segments:
        if not copies.copy(seg):
            yield seg


def closing_reader(segments: Iterator[Segment]) -> contextlib.AbstractContextManager[Any]:
    """`with closing_reader(segments):` closes the files of a read and removes its
    temporary copies however the loop ends (a break, Ctrl-C). Dropping the iterator is not
    enough: a generator compiled by mypyc runs no `finally` when it is only dropped (found
    in review: each interrupted read of a compressed capture left its copy in $TMPDIR)."""
    if callable(getattr(segments, "close", None)):
        return contextlib.closing(segments)
    return contextlib.nullcontext()


def _distinct(infos: list[_FileInfo], warnings: list[str]) -> list[_FileInfo]:
    """The files, each once: one given twice (by a symlink, overlapping globs) would give
    every packet twice, taken for retransmissions. (A pipe given twice is refused before.)"""
    seen: dict[tuple[int, int], str] = {}
    distinct: list[_FileInfo] = []
    for info in infos:
        try:
            st = os.stat(info.source)
        except OSError:  # gone since it was identified: reading it says so
            distinct.append(info)
            continue
        first = seen.get((st.st_dev, st.st_ino))
        if first is None:
            seen[st.st_dev, st.st_ino] = info.path
            distinct.append(info)
        elif first == info.path:
            warnings.append(f"{first}: given more than once: read once")
        else:
            warnings.append(f"{first} and {info.path} are the same file: read once")
    return distinct


class _OneByOne(Iterator[Segment]):
    """The segments of batches one by one, through itertools.chain: in C, where a generator
    would cost another 0.3% of a dense run. close() ends the reading (closes the file,
    removes a temporary copy), as closing a generator would."""

    def __init__(self, batches: SegmentBatches) -> None:
        self._batches = batches
        self._segments = chain.from_iterable(batches)

    def __iter__(self) -> Iterator[Segment]:
        return self._segments

    def __next__(self) -> Segment:
        return next(self._segments)

    def close(self) -> None:
        self._batches.close()


def _merged(
    infos: list[_FileInfo], bpf: str | None, engine: Engine, stats: CaptureStats
) -> Generator[Segment, None, None]:
    """The segments of all files in the order of (ts, file index, packet index), which is
    unique: the merge is stable and deterministic, as heapq.merge of them all would be.

    A file is opened only when the merge reaches the time of its first packet, and closed
    at its end: memory follows the files that overlap in time, not the number of files (a
    ring buffer of thousands). Until then its first segment cannot be due, in a file written
    in time order: none comes before its first packet."""
    # Files that overlap in time are open at once: all of them, at worst (see FDS_PER_FILE).
    _allow_open_files(FDS_PER_FILE * len(infos) + FDS_SPARE)
    # (first time, index) of the files not opened yet, the next one to open last.
    waiting = sorted(((_first_time(info), i) for i, info in enumerate(infos)), reverse=True)
    # Per open file: [ts, index, packet number, segment, next segment, the file's reading]
    heap: list[list[Any]] = []
    due, due_index = waiting[-1] if waiting else (MAX_TIME_US + 1, 0)
    try:
        while heap or waiting:
            if heap:
                top = heap[0]
                ts = top[0]
                if ts < due or (ts == due and top[1] < due_index):
                    yield top[3]
                    try:
                        seg = top[4]()
                    except StopIteration:
                        heapq.heappop(heap)
                        continue
                    top[0] = seg[0]
                    top[2] += 1
                    top[3] = seg
                    heapq.heapreplace(heap, top)
                    continue
            _first, i = waiting.pop()
            due, due_index = waiting[-1] if waiting else (MAX_TIME_US + 1, 0)
            reading = _OneByOne(_file_segments(infos[i], bpf, engine, stats))
            segments = iter(reading).__next__
            try:
                seg = segments()
            except StopIteration:
                continue
            heapq.heappush(heap, [seg[0], i, 0, seg, segments, reading])
    finally:
        for entry in heap:  # the files not at their end yet
            entry[5].close()


FIRST_TIME_READ = 1 << 16  # what is read of a file for its first packet's time, at a time
FIRST_TIME_SPAN = 4 * CHUNK  # how far into a pcapng it is looked for, past other blocks


def _first_time(info: _FileInfo) -> int:
    """The time (µs) of a file's first packet record, or -1 (before any packet) when it is
    not within the first few blocks or not a time the readers keep."""
    r = _Reading(info, None, [])
    try:
        ts = _pcap_first_time(r) if info.fmt == "pcap" else _pcapng_first_time(r)
    except (_Corrupt, struct.error, IndexError):
        return -1
    finally:
        r.source.close()
    return ts if 0 <= ts <= MAX_TIME_US else -1


def _pcap_first_time(r: _Reading) -> int:
    buf = r.source.read_at_least(PCAP_FILE_HDR_LEN + 24, FIRST_TIME_READ)
    order, nano, rec_len = PCAP_MAGICS[buf[:4]]
    if len(buf) < PCAP_FILE_HDR_LEN + rec_len:
        return -1
    sec, frac = struct.unpack_from(order + "II", buf, PCAP_FILE_HDR_LEN)
    return _big_product(sec, 1_000_000) + (frac // 1000 if nano else frac)


def _pcapng_first_time(r: _Reading) -> int:
    buf = r.source.read_at_least(PCAPNG_MIN_SHB_LEN, FIRST_TIME_READ)
    section = _Section(_section_order(buf, 0) or ">")
    pos = 0
    while len(buf) <= FIRST_TIME_SPAN:
        while pos + 12 <= len(buf):
            btype = section.u32(buf, pos)[0]
            if btype == BT_SHB:
                order = _section_order(buf, pos)
                if order is None:
                    return -1
                section = _Section(order)
            total = _block_length(section, buf, pos)
            if not total:
                break
            if btype in (BT_EPB, BT_PB, BT_SPB):
                return section.packet(btype, buf, pos + 8, pos + total - 4)[0]
            if btype == BT_IDB:
                section.add_interface(r, buf, pos + 8, pos + total - 4)
            pos += total
        more = r.source.read(FIRST_TIME_READ)
        if not more:
            break
        buf += more
    return -1


def _allow_open_files(needed: int) -> None:
    """Raise this process's soft limit on open files towards `needed`, as far as the hard
    limit allows (beyond it, opening fails with a one-line 'Too many open files')."""
    try:
        import resource
    except ImportError:  # not on Unix
        return
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY or needed <= soft:
        return
    wanted = needed if hard == resource.RLIM_INFINITY else min(needed, hard)
    with contextlib.suppress(ValueError, OSError):
        resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))


class Extract(NamedTuple):
    """One file's segments, read where the file is (a Dask worker), and what reading saw."""

    segments: list[Segment]
    stats: CaptureStats


def extract_file(path: CapturePath, bpf: str | None, engine: Engine) -> Extract:
    """Read one capture file whole: the unit of work `cluster` sends to Dask workers."""
    if bpf:
        _check_filter(bpf)
    stats = CaptureStats()
    segments = list(chain.from_iterable(_engine_segments(_identify(path), bpf, engine, stats)))
    return Extract(segments, stats)


def merged_extracts(
    names: Sequence[str], extracts: Sequence[Extract], stats: CaptureStats
) -> Iterator[Segment]:
    """The timeline of files read elsewhere: the segments `read_segments` gives of them,
    with each file's counts and warnings added to `stats` under its name."""
    stats.files += len(extracts)
    for name, extract in zip(names, extracts, strict=True):
        stats.absorb(extract.stats, name)
    keyed = [_keyed(i, iter(e.segments)) for i, e in enumerate(extracts)]
    return (seg for _ts, _i, _n, seg in heapq.merge(*keyed))


def _keyed(index: int, segments: Iterator[Segment]) -> Iterator[tuple[int, int, int, Segment]]:
    for n, seg in enumerate(segments):
        yield seg[0], index, n, seg
