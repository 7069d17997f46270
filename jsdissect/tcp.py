"""Reassemble TCP segments into connections: two ordered, timed byte streams each.

Streaming: in-order bytes are handed to a sink as soon as they are contiguous, each piece
with the capture time of the segment that first delivered it, and a finished connection
is handed on and forgotten, so memory follows open connections, not the capture size.
"""

from __future__ import annotations

import hashlib
import heapq
from bisect import bisect_left, bisect_right
from collections.abc import Callable, Iterable
from collections.abc import Set as AbstractSet
from dataclasses import dataclass
from typing import NamedTuple, Protocol

from jsdissect.capture import ACK, FIN, RST, SYN, Copies, Segment

# Directions within a connection.
CLIENT_TO_SERVER = 0
SERVER_TO_CLIENT = 1


class Endpoint(NamedTuple):
    ip: str
    port: int

    def __str__(self) -> str:
        return f"[{self.ip}]:{self.port}" if ":" in self.ip else f"{self.ip}:{self.port}"


@dataclass(frozen=True, slots=True)
class Connection:
    """Summary of one TCP connection, handed on when it ends (or when the capture ends)."""

    id: str  # stable id ("C" + 10 base32 chars from first time and 4-tuple), joins tables
    client: Endpoint  # the SYN sender; without a SYN, a guess (the higher port)
    server: Endpoint
    handshake_seen: bool  # False: picked up mid-stream, roles guessed
    first_ts: int  # its earliest packet, µs
    last_ts: int  # its latest packet, µs
    syn: int | None  # first SYN (retransmissions do not move it)
    syn_count: int  # SYNs sent by the client (>1: retransmitted)
    synack: int | None  # first SYN-ACK
    established: int | None  # client's first packet after the SYN-ACK (DESIGN "Exact times")
    refused: int | None  # RST answering a SYN
    client_fin: int | None
    server_fin: int | None
    rst: int | None  # first RST (either side)
    rst_by: int | None  # CLIENT_TO_SERVER / SERVER_TO_CLIENT
    closed: int | None  # first FIN or RST, either direction
    first_data: int | None  # first / last packet that brought never-seen stream bytes
    last_data: int | None
    bytes_c2s: int  # stream bytes captured, client to server
    bytes_s2c: int
    packets: int
    retransmissions: int  # segments carrying bytes already captured (first copy wins)
    gaps: int  # holes in either stream
    gap_bytes: int
    state: str  # see tcp.STATES


# Connection states, tcptrace/Zeek-like but readable.
STATES = {
    "syn-unanswered": "SYN seen, never answered",
    "synack-unacked": "SYN-ACK never acknowledged: the client went on sending SYNs",
    "refused": "SYN answered by RST",
    "open": "established, not closed when the capture ended",
    "closed": "closed with FIN",
    "reset": "ended by RST after it was established",
    "midstream": "picked up without handshake, not closed",
}
# States of a connection whose SYN's answer never reached its sender, and of one that
# failed to open at all.
UNANSWERED_STATES = ("syn-unanswered", "synack-unacked")
FAILED_STATES = ("refused", "syn-unanswered", "synack-unacked")


class StreamSink(Protocol):
    """Receives a connection's life as it happens."""

    def on_open(
        self, conn_id: str, client: Endpoint, server: Endpoint, ts: int, handshake: bool
    ) -> None: ...

    def on_data(self, conn_id: str, direction: int, offset: int, data: bytes, ts: int) -> None:
        """`data` starts at stream `offset` (0 = first byte after the SYN); `ts` is when
        these bytes were first captured. Pieces arrive in stream order, without overlap."""

    def on_gap(self, conn_id: str, direction: int, offset: int, size: int, ts: int) -> None:
        """Bytes [offset, offset+size) were never captured; later bytes keep their offsets."""

    def on_close(self, conn: Connection) -> None: ...


# Limits that keep memory bounded whatever the capture holds.
# Out-of-order bytes kept per direction; past either bound the oldest hole is declared a gap,
# so a one-sided capture (no ACKs to prove a loss) cannot buffer the whole stream.
MAX_BUFFER_BYTES = 4 << 20
MAX_BUFFER_PIECES = 4096
# Both FINs seen but the last ACK not captured: the connection is over after this long.
LINGER_US = 2_000_000
# ...unless bytes before a FIN are missing: their sender retransmits them, with a backoff
# that doubles each time (RFC 6298 §5.5), so they are waited for this long after both FINs.
HOLE_WAIT_US = 60_000_000
# A closed 4-tuple is remembered this long so that its stray retransmissions (FIN, ACK)
# do not open a phantom connection; MAX_RECENT caps the table on a very busy host.
RECENT_US = 60_000_000
MAX_RECENT = 65_536
# ...but data more than this far behind where its sender's sequence numbers ended (or,
# after a FIN, anywhere ahead of it) is of a new connection whose handshake was not
# captured (16 MiB: beyond the receive windows in use).
STRAGGLER_BAND = 1 << 24
# Open connections at most (a SYN flood on a watched port would otherwise grow without
# bound): past it, the least recently active tenth is handed on as it stands.
MAX_OPEN = 200_000

_SEQ_MOD = 1 << 32
_SEQ_HALF = 1 << 31

_Key = tuple[tuple[str, int], tuple[str, int]]


# RFC 4648 base32, lower case
_BASE32 = "abcdefghijklmnopqrstuvwxyz234567"


def connection_id(first_ts: int, client: Endpoint, server: Endpoint) -> str:
    """Stable id: depends only on the connection itself, not on the rest of the capture.
    "C" and the base32 text of the SHA-1's first 50 bits (as base64.b32encode writes them,
    lower case): worked out from an int, for base64's own is Python, and cost 5% of a
    dense run."""
    digest = hashlib.sha1(f"{first_ts}|{client}|{server}".encode()).digest()
    bits = int.from_bytes(digest[:7], "big") >> 6
    return "C" + "".join([_BASE32[(bits >> shift) & 31] for shift in range(45, -5, -5)])


class _Half:
    """One direction of a connection: sequence space, delivered point, out-of-order pieces.

    Invariants: pieces are disjoint, sorted by offset and all start beyond `next`; every
    offset below `next` was delivered or declared a gap exactly once.
    """

    __slots__ = (
        "ack_before_base",
        "base",
        "buffered",
        "bytes",
        "conn_id",
        "cut_to",
        "direction",
        "ends",
        "fin",
        "fin_acked",
        "first_new",
        "gap_bytes",
        "gaps",
        "known_end",
        "last_new",
        "next",
        "pieces",
        "retransmissions",
        "seen",
        "sent_end",
        "sink",
        "starts",
    )

    def __init__(self, sink: StreamSink, conn_id: str, direction: int) -> None:
        self.sink = sink
        self.conn_id = conn_id
        self.direction = direction
        self.base: int | None = None  # sequence number of stream offset 0
        self.ack_before_base: int | None = None  # the peer's latest ACK while base is unknown
        self.next = 0  # offsets below were delivered or declared missing
        self.starts: list[int] = []  # buffered pieces beyond `next`, in three lists so
        self.ends: list[int] = []  # that bisect works on the offsets directly
        self.pieces: list[tuple[bytes, int]] = []  # (data, ts first captured)
        self.buffered = 0
        self.known_end = 0  # highest offset known to exist: captured, cut by snaplen, ACKed
        self.sent_end = 0  # highest offset a captured segment reached (its bytes, cut or not)
        self.cut_to = 0  # the end of the latest segment the snaplen cut: what it cut never comes
        self.fin: int | None = None  # offset the FIN occupies
        self.fin_acked = False
        self.seen = False
        self.bytes = 0
        self.gaps = 0
        self.gap_bytes = 0
        self.retransmissions = 0
        self.first_new: int | None = None
        self.last_new: int | None = None

    def offset(self, seq: int) -> int:
        """64-bit stream offset of a 32-bit sequence number: the one nearest `next`."""
        assert self.base is not None
        delta = (seq - self.base - self.next) % _SEQ_MOD
        if delta >= _SEQ_HALF:
            delta -= _SEQ_MOD
        return self.next + delta

    def pick_up(self, seq: int, handshake_ack: bool) -> None:
        """Mid-stream: the first segment with data starts the stream, unless the peer has
        already acknowledged past it (a keep-alive probe, an old retransmission), in which
        case the acknowledged point does: nothing before it can ever be missing.
        `handshake_ack`: the peer's ACK is its handshake's (its SYN or SYN-ACK captured,
        this side's not), so it names this side's first byte exactly: a first segment seen
        after it is one reordered or a loss (found by fuzzing against tshark: the bytes
        before it, which came next, were dropped as retransmissions)."""
        if self.ack_before_base is not None:
            ahead = (self.ack_before_base - seq) % _SEQ_MOD
            behind = (seq - self.ack_before_base) % _SEQ_MOD
            if 0 < ahead < _SEQ_HALF or (handshake_ack and 0 < behind <= MAX_BUFFER_BYTES):
                seq = self.ack_before_base
        self.base = seq

    def add_data(self, off: int, data: bytes, ts: int) -> None:
        end = off + len(data)
        seen_before = off < self.next
        if end <= self.next:
            self.retransmissions += 1
            return
        if seen_before:
            data = data[self.next - off :]
            off = self.next
        if off == self.next and not self.starts:
            # The common case, in order with nothing buffered: _emit, inline.
            added = len(data)
            self.sink.on_data(self.conn_id, self.direction, off, data, ts)
            self.next = end
            self.bytes += added
        else:
            added = self._insert(off, end, data, ts)
            self._drain()
            self._bound(ts)
        if seen_before or added < len(data):
            self.retransmissions += 1
        if added:
            if self.first_new is None:
                self.first_new = ts
            self.last_new = ts

    def acked(self, ack_off: int, ts: int) -> None:
        """The peer received everything below `ack_off`. What the snaplen cut there, and
        a hole before bytes already captured, is a gap: the capture missed it. A hole
        with nothing captured after it yet may still come (files of several interfaces
        merged, an ACK recorded before the data it acknowledges): it is declared once
        later bytes wait behind it and are acknowledged, or at the end, as Wireshark does."""
        if self.fin is not None:
            if ack_off > self.fin:
                self.fin_acked = True
            ack_off = min(ack_off, self.fin)  # the FIN's sequence number is not a byte
        if ack_off > self.next:
            self.known_end = max(self.known_end, ack_off)
            waiting = bisect_left(self.starts, ack_off)  # pieces that begin below it
            lost_to = max(self.cut_to, self.ends[waiting - 1] if waiting else 0)
            if lost_to > self.next:
                self._fill_to(min(ack_off, lost_to), ts)

    def flush(self, ts: int, closed: bool) -> None:
        """The connection is over: deliver what is buffered, declare every hole left.
        `closed`: a FIN or an RST was captured."""
        end = max(self.known_end, self.ends[-1] if self.ends else 0)
        if self.fin is not None:
            end = self.fin  # the stream's last byte is just before the FIN
        elif closed and end == self.sent_end + 1:
            # Acknowledged one past the last byte sent, on a connection that ended: that is
            # the FIN's sequence number (its packet not captured), not a byte lost (found by
            # fuzzing against tshark: a phantom 1-byte gap ended a complete stream).
            end = self.sent_end
        self._fill_to(end, ts)

    def _insert(self, off: int, end: int, data: bytes, ts: int) -> int:
        """Buffer the parts of [off, end) not buffered yet (first copy wins); return their size."""
        starts, ends, pieces = self.starts, self.ends, self.pieces
        lo = bisect_right(ends, off)  # first piece that ends after `off`
        hi = lo
        new_starts: list[int] = []
        new_ends: list[int] = []
        new_pieces: list[tuple[bytes, int]] = []
        added = 0
        pos = off
        while hi < len(starts) and starts[hi] < end:
            if starts[hi] > pos:
                new_starts.append(pos)
                new_ends.append(starts[hi])
                new_pieces.append((data[pos - off : starts[hi] - off], ts))
                added += starts[hi] - pos
            new_starts.append(starts[hi])
            new_ends.append(ends[hi])
            new_pieces.append(pieces[hi])
            pos = ends[hi]
            hi += 1
        if pos < end:
            new_starts.append(pos)
            new_ends.append(end)
            new_pieces.append((data[pos - off :], ts))
            added += end - pos
        starts[lo:hi] = new_starts
        ends[lo:hi] = new_ends
        pieces[lo:hi] = new_pieces
        self.buffered += added
        return added

    def _drain(self) -> None:
        """Deliver the buffered pieces that have become contiguous."""
        starts = self.starts
        count = 0
        while count < len(starts) and starts[count] <= self.next:
            data, ts = self.pieces[count]
            self.buffered -= len(data)
            # A piece can start before `next` when the stream moved on past it (a gap was
            # declared, an odd SYN re-based it): only its new bytes are delivered.
            if self.ends[count] > self.next:
                self._emit(self.next, data[self.next - starts[count] :], ts)
            count += 1
        if count:
            del starts[:count], self.ends[:count], self.pieces[:count]

    def _bound(self, ts: int) -> None:
        while self.buffered > MAX_BUFFER_BYTES or len(self.starts) > MAX_BUFFER_PIECES:
            self._skip_to(self.starts[0], ts)
            self._drain()

    def _fill_to(self, limit: int, ts: int) -> None:
        while self.next < limit:
            if self.starts and self.starts[0] < limit:
                self._skip_to(self.starts[0], ts)
                self._drain()
            else:
                self._skip_to(limit, ts)

    def _skip_to(self, offset: int, ts: int) -> None:
        size = offset - self.next
        if size <= 0:
            return
        self.sink.on_gap(self.conn_id, self.direction, self.next, size, ts)
        self.gaps += 1
        self.gap_bytes += size
        self.next = offset

    def _emit(self, off: int, data: bytes, ts: int) -> None:
        self.sink.on_data(self.conn_id, self.direction, off, data, ts)
        self.next = off + len(data)
        self.bytes += len(data)


class _Conn:
    """A connection being reassembled: both halves plus the handshake/teardown times."""

    __slots__ = (
        "client",
        "client_fin",
        "closed",
        "established",
        "first_ts",
        "halves",
        "handshake_seen",
        "id",
        "key",
        "last_ts",
        "lingering",
        "packets",
        "previous",
        "refused",
        "rst",
        "rst_by",
        "serial",
        "server",
        "server_fin",
        "syn",
        "syn_after_synack",
        "syn_count",
        "syn_data",
        "syn_seq",
        "synack",
        "synack_ack",
        "synack_seq",
    )

    def __init__(
        self,
        key: _Key,
        serial: int,
        client: Endpoint,
        server: Endpoint,
        handshake_seen: bool,
        ts: int,
        sink: StreamSink,
        previous: tuple[_SideEnd, _SideEnd] | None = None,
    ) -> None:
        self.key = key
        # Where the connection before this one on the 4-tuple ended, to tell its stragglers.
        self.previous = previous
        self.serial = serial  # tells this connection from a later one on the same 4-tuple
        self.client = client
        self.server = server
        self.handshake_seen = handshake_seen
        self.first_ts = ts
        self.last_ts = ts
        self.id = connection_id(ts, client, server)
        self.halves = (
            _Half(sink, self.id, CLIENT_TO_SERVER),
            _Half(sink, self.id, SERVER_TO_CLIENT),
        )
        self.syn: int | None = None
        self.syn_seq: int | None = None  # the client's SYN, to recognise its retransmissions
        self.syn_data = 0  # bytes it carried (TCP Fast Open): its answer may acknowledge them
        self.syn_count = 0
        self.synack: int | None = None
        # The first SYN-ACK's own sequence number (the server's ISN) and the one it
        # acknowledged (the client's first byte), to tell another connection's SYN-ACK.
        self.synack_seq: int | None = None
        self.synack_ack: int | None = None
        # The client sent a SYN after the SYN-ACK: the answer had not reached it (yet).
        self.syn_after_synack = False
        self.established: int | None = None
        self.refused: int | None = None
        self.client_fin: int | None = None
        self.server_fin: int | None = None
        self.rst: int | None = None
        self.rst_by: int | None = None
        self.closed: int | None = None
        self.packets = 0
        self.lingering: int | None = None  # since when: both FINs, the last ACK not seen

    def add(self, seg: Segment, d: int) -> None:
        # The hot path of reassembly: one call per captured segment.
        ts, _src, _sport, _dst, _dport, seq, ack, flags, _win, payload, missing, _tv, _te = seg
        half, peer = self.halves[d], self.halves[1 - d]
        # _Half.offset is inline below (twice a packet): the 32-bit sequence number taken
        # as the 64-bit stream offset nearest `next`.
        first_from_side = not half.seen
        half.seen = True
        self.packets += 1
        # The earliest and the latest time, whatever the order: several capture queues
        # interleave a few µs out of order (the id stays on the first packet captured).
        if ts > self.last_ts:
            self.last_ts = ts
        elif ts < self.first_ts:
            self.first_ts = ts
        if flags & SYN:
            self._syn(seg, d, half)
        elif half.base is None and (payload or missing or flags & FIN):
            # Picked up mid-stream. Pure ACKs do not place the stream: a keep-alive probe
            # carries the sequence number before the next byte.
            peer_handshake = self.syn if d == SERVER_TO_CLIENT else self.synack
            half.pick_up(seq, peer_handshake is not None)
        if flags & ACK:
            # Before this packet's own data: what it acknowledges was received before it was
            # sent, so a hole it reveals in the peer's stream comes first in time too.
            if peer.base is None:
                peer.ack_before_base = ack
            else:
                ack_off = (ack - peer.base - peer.next) % _SEQ_MOD
                ack_off += peer.next - (_SEQ_MOD if ack_off >= _SEQ_HALF else 0)
                if self.established is None and d == CLIENT_TO_SERVER:
                    self._ack(d, peer, ack_off, ts)
                elif ack_off > peer.next or peer.fin is not None:  # else nothing to learn
                    peer.acked(ack_off, ts)
        if flags & RST:
            self._rst(d, ts, first_from_side)  # an RST's payload is diagnostic text, not data
        elif half.base is not None and (payload or missing or flags & (SYN | FIN)):
            # A SYN occupies one sequence number before the first byte (Fast Open data).
            off = (seq - half.base - half.next) % _SEQ_MOD
            off += half.next - (_SEQ_MOD if off >= _SEQ_HALF else 0) + (1 if flags & SYN else 0)
            end = off + len(payload) + missing
            if end > off and end > half.known_end:
                half.known_end = end
            if end > half.sent_end:
                half.sent_end = end
            if payload:
                half.add_data(off, payload, ts)
            if missing and end > half.cut_to:
                half.cut_to = end  # on the wire, cut from the capture: never coming again
            if flags & FIN:
                self._fin(d, half, end, ts)

    def _syn(self, seg: Segment, d: int, half: _Half) -> None:
        if seg.flags & ACK:
            if d == SERVER_TO_CLIENT and self.synack is None:
                self.synack = seg.ts
                self.synack_seq, self.synack_ack = seg.seq, seg.ack
        elif d == CLIENT_TO_SERVER:
            self.syn_count += 1
            if self.synack is not None:
                self.syn_after_synack = True
            if self.syn is None:
                self.syn = seg.ts
                self.syn_seq = seg.seq
                self.syn_data = len(seg.payload) + seg.missing
        if half.base is None:
            half.base = seg.seq + 1

    def _ack(self, d: int, peer: _Half, ack_off: int, ts: int) -> None:
        # Offset 0 of the server's stream is the SYN-ACK's sequence number + 1.
        acks_synack = self.synack is not None and ack_off >= 0
        if d == CLIENT_TO_SERVER and acks_synack and self.established is None:
            self.established = ts
        peer.acked(ack_off, ts)

    def _fin(self, d: int, half: _Half, offset: int, ts: int) -> None:
        if half.fin is None:
            half.fin = offset
        if d == CLIENT_TO_SERVER and self.client_fin is None:
            self.client_fin = ts
        elif d == SERVER_TO_CLIENT and self.server_fin is None:
            self.server_fin = ts
        if self.closed is None:
            self.closed = ts

    def _rst(self, d: int, ts: int, first_from_side: bool) -> None:
        if self.rst is None:
            self.rst = ts
            self.rst_by = d
        if self.closed is None:
            self.closed = ts
        # The server's only answer to the SYN is a reset: nothing listens on the port.
        answering_syn = self.syn is not None and self.synack is None and first_from_side
        # Or a SYN the client still sends because no SYN-ACK reached it: the controller
        # stopped listening meanwhile (it gave up after 60 s), and the port answers RST.
        if (
            d == SERVER_TO_CLIENT
            and (answering_syn or self.synack_unacked)
            and self.refused is None
        ):
            self.refused = ts

    def is_retransmitted_syn(self, seg: Segment) -> bool:
        return self.syn_seq == seg.seq and self.client == (seg.src, seg.sport)

    def reused_by(self, seg: Segment) -> bool:
        """Is this SYN (not a retransmission of ours) the start of a new connection? A live
        TCP takes no SYN on an open connection: one with another initial sequence number
        means its sender's old connection ended, even if the capture did not see how."""
        if self.is_retransmitted_syn(seg):
            return False
        if self.closed is not None or not self.handshake_seen or self.unanswered:
            return True
        return not self._client_isn_is(seg)

    def taken_over_by(self, seg: Segment) -> bool:
        """Is this packet (not a pure SYN) of a later connection on the 4-tuple, whose SYN
        the capture lost while this one looks live (its end not captured either)? Only on
        evidence that TCP rules out for this one (a wrong split is worse than a merge):
        a SYN-ACK that answers another SYN than this connection's, from another initial
        sequence number than its server's; or, after nothing but SYNs, data its client
        could not send, or a server could not acknowledge, after them (far from the SYN's
        sequence number, which the client's first byte follows). Wireshark splits only at
        a captured SYN; on a SYN-ACK it re-bases the server's side within the same stream
        (found by fuzzing against tshark: the new connection's bytes were taken as the old
        one's, a gigabyte away, so gaps, decode errors and one connection too few)."""
        flags = seg.flags
        if flags & RST:
            return False  # a reset starts nothing
        if flags & SYN:
            return bool(flags & ACK) and self._answers_another_syn(seg)
        if not self.unanswered or not (seg.payload or seg.missing):
            return False
        client = self.halves[CLIENT_TO_SERVER]  # placed by the SYN: its first byte follows
        if (seg.src, seg.sport) == self.client:
            return not _may_be_from(client, seg.seq)
        return bool(flags & ACK) and not _may_be_from(client, seg.ack)

    def _answers_another_syn(self, seg: Segment) -> bool:
        """A SYN-ACK that acknowledges another SYN than this connection's client sent, from
        another initial sequence number than its server's. Where the handshake was captured
        the numbers are exact: this connection's SYN-ACK again (lost, or the SYN sent again)
        repeats both; one with the same acknowledgement but another sequence number (SYN
        cookies, a duplicated SYN answered twice) is no new connection. Where they are not
        known, a side's SYN-ACK number lies at or before the first byte captured of it
        (the SYN-ACK comes first): one ahead of it, or far behind, is another connection's;
        picked up mid-stream, that must hold of both sides."""
        if self.previous is not None and _repeats_handshake(self.previous, seg):
            return False  # the previous connection's handshake again, not a new one
        from_server = self.server == (seg.src, seg.sport)
        if from_server and self.synack_ack is not None:
            return seg.ack != self.synack_ack and seg.seq != self.synack_seq
        d = SERVER_TO_CLIENT if from_server else CLIENT_TO_SERVER
        sender, receiver = self.halves[d], self.halves[1 - d]
        isn_after = (seg.seq + 1) % _SEQ_MOD
        if from_server and self.syn_seq is not None:
            # Its SYN captured, not its SYN-ACK: that acknowledges the SYN, and at most
            # the bytes the SYN carried (TCP Fast Open); one short of it is taken for this
            # connection's too (as a keep-alive's number before a stream is), not another's.
            if (seg.ack - self.syn_seq) % _SEQ_MOD <= self.syn_data + 1:
                return False
            return not _has_place(sender) or _began_elsewhere(sender, isn_after)
        return _began_elsewhere(receiver, seg.ack) and _began_elsewhere(sender, isn_after)

    def _client_isn_is(self, seg: Segment) -> bool:
        """The SYN carries the client's initial sequence number as this connection knows it
        (from the SYN, or from what the SYN-ACK acknowledged when the SYN was missed)."""
        if (seg.src, seg.sport) != self.client:
            return False
        client = self.halves[CLIENT_TO_SERVER]
        first_byte = client.base if client.base is not None else client.ack_before_base
        return first_byte is not None and (seg.seq + 1 - first_byte) % _SEQ_MOD == 0

    @property
    def unanswered(self) -> bool:
        return self.syn is not None and self.packets == self.syn_count  # nothing but SYNs

    @property
    def synack_unacked(self) -> bool:
        """SYN-ACKs went out, but the client went on sending SYNs and nothing else: none of
        them reached it (a firewall dropping the return path), the handshake never ended."""
        if not self.syn_after_synack or self.established is not None:
            return False
        return self.client_fin is None and all(h.known_end == 0 for h in self.halves)

    @property
    def over(self) -> bool:
        client, server = self.halves
        return self.rst is not None or (client.fin_acked and server.fin_acked)

    @property
    def both_fins(self) -> bool:
        return self.halves[0].fin is not None and self.halves[1].fin is not None

    def ends(self) -> tuple[_SideEnd, _SideEnd]:
        """Where each side's sequence numbers began and ended, once the streams are
        flushed; a side that sent nothing is placed by what its peer acknowledged."""
        client, server = self.halves
        return _side_end(self.client, client), _side_end(self.server, server)

    def is_of_previous(self, seg: Segment) -> bool:
        """A straggler of the connection before this one on the 4-tuple (its FIN or ACK
        again) that this one cannot take: before its first byte, far beyond its data, or
        acknowledging what its peer never sent. Taken, it would set a FIN, or a gap of a
        gigabyte, where none is."""
        assert self.previous is not None
        if seg.ts > self.first_ts + RECENT_US:  # as long as a closed 4-tuple is remembered
            self.previous = None
            return False
        d = CLIENT_TO_SERVER if self.client == (seg.src, seg.sport) else SERVER_TO_CLIENT
        old = _side_of(self.previous, seg)
        if old is None or old.end is None or seg.flags & SYN or self._answers_our_syn(seg):
            return False  # nothing to tell the old one's by, or plainly this one's
        if not _may_be_a_straggler(self.previous, seg):
            return False
        half, peer = self.halves[d], self.halves[1 - d]
        if not _may_be_from(half, seg.seq):
            return True
        if seg.flags & ACK and peer.base is not None:
            acked = peer.offset(seg.ack)  # a straggler's refers to the old peer's bytes
            return acked < 0 or acked > peer.known_end + STRAGGLER_BAND
        return False

    def _answers_our_syn(self, seg: Segment) -> bool:
        """A reset answering this connection's SYN: a refusal, whatever its sequence."""
        syn = self.syn_seq
        return bool(seg.flags & RST) and syn is not None and seg.ack == (syn + 1) % _SEQ_MOD

    def ended_before(self, seg: Segment) -> bool:
        """Is this packet (not a reset) of a later connection on the same 4-tuple?"""
        return not seg.flags & RST and not _may_be_a_straggler(self.ends(), seg)

    @property
    def missing_before_fin(self) -> bool:
        """A side closed with bytes still missing before its FIN, lost on the way (not cut
        by the capture's snaplen): a retransmission is due."""
        return any(h.fin is not None and h.next < h.fin and h.cut_to < h.fin for h in self.halves)

    def state(self) -> str:
        if self.refused is not None:
            return "refused"
        if self.unanswered:
            return "syn-unanswered"
        if self.synack_unacked:
            return "synack-unacked"
        if self.rst is not None:
            return "reset"
        if self.closed is not None:
            return "closed"
        return "open" if self.handshake_seen else "midstream"

    def finish(self) -> Connection:
        """Flush both streams and summarise."""
        for half in self.halves:
            half.flush(self.last_ts, self.closed is not None)
        client, server = self.halves
        news = [t for h in self.halves for t in (h.first_new, h.last_new) if t is not None]
        established = self.established
        if established is None:
            established = self.synack  # DESIGN "Exact times": no client packet captured
        return Connection(
            id=self.id,
            client=self.client,
            server=self.server,
            handshake_seen=self.handshake_seen,
            first_ts=self.first_ts,
            last_ts=self.last_ts,
            syn=self.syn,
            syn_count=self.syn_count,
            synack=self.synack,
            established=established,
            refused=self.refused,
            client_fin=self.client_fin,
            server_fin=self.server_fin,
            rst=self.rst,
            rst_by=self.rst_by,
            closed=self.closed,
            first_data=min(news) if news else None,
            last_data=max(news) if news else None,
            bytes_c2s=client.bytes,
            bytes_s2c=server.bytes,
            packets=self.packets,
            retransmissions=client.retransmissions + server.retransmissions,
            gaps=client.gaps + server.gaps,
            gap_bytes=client.gap_bytes + server.gap_bytes,
            state=self.state(),
        )


class _SideEnd(NamedTuple):
    sender: Endpoint
    isn: int | None  # the sequence number of its SYN (None: not known)
    end: int | None  # the sequence number after its last byte: its FIN's, if it sent one
    fin: bool


def _may_be_from(half: _Half, seq: int) -> bool:
    """Can a segment at `seq` be of this side: from a keep-alive just before its stream up
    to a window past what it has (or past where its peer's ACKs placed it)?"""
    if half.base is not None:
        offset = half.offset(seq)
        return -1 <= offset <= half.known_end + STRAGGLER_BAND
    if half.ack_before_base is not None:
        ahead = (seq - half.ack_before_base) % _SEQ_MOD
        return ahead <= STRAGGLER_BAND or ahead == _SEQ_MOD - 1
    return False  # nothing of this side yet: taken for the old connection's, as it looks


def _has_place(half: _Half) -> bool:
    """Is anything known of where this side's sequence numbers lie?"""
    return half.base is not None or half.ack_before_base is not None


def _began_elsewhere(half: _Half, first: int) -> bool:
    """This side's place is known, and its stream cannot have begun at `first`: that lies
    ahead of the first byte captured of it (of the peer's ACKs, if it sent none), or
    further behind than a window."""
    known = half.base if half.base is not None else half.ack_before_base
    return known is not None and (known - first) % _SEQ_MOD > STRAGGLER_BAND


def _side_end(sender: Endpoint, half: _Half) -> _SideEnd:
    if half.base is None:
        return _SideEnd(sender, None, half.ack_before_base, False)
    end = half.fin if half.fin is not None else half.next
    isn = (half.base - 1) % _SEQ_MOD
    return _SideEnd(sender, isn, (half.base + end) % _SEQ_MOD, half.fin is not None)


class _Closed(NamedTuple):
    serial: int
    syn_client: Endpoint
    syn_seq: int | None
    ends: tuple[_SideEnd, _SideEnd]
    evicted: bool  # handed on at MAX_OPEN while it was live, not ended by its hosts


def _may_be_a_straggler(ends: tuple[_SideEnd, _SideEnd], seg: Segment) -> bool:
    """Could this packet still belong to the connection that ended at `ends`: its SYN or
    SYN-ACK again, or at or behind where its sender's stream ended (a FIN again, a late
    ACK, a retransmission), or a little ahead of it when that side sent no FIN? A sender's
    next connection starts ahead of the old end (Linux, from TIME_WAIT: 65,537 on) or
    anywhere at all (a random initial sequence number)."""
    side = _side_of(ends, seg)
    if side is None or side.end is None:
        return True  # nothing to tell by
    if seg.flags & SYN and side.isn is not None:
        return seg.seq == side.isn  # its handshake again; another SYN is another's
    ahead = (seg.seq - side.end) % _SEQ_MOD
    if ahead <= 1:  # the FIN again (0), or an ACK sent after it (1)
        return True
    if ahead < _SEQ_HALF:  # nothing follows a FIN
        return not side.fin and ahead <= STRAGGLER_BAND
    return _SEQ_MOD - ahead <= STRAGGLER_BAND


def _repeats_handshake(ends: tuple[_SideEnd, _SideEnd], seg: Segment) -> bool:
    """Is this SYN-ACK the one of the connection that ended at `ends`, sent again?"""
    first, second = ends
    side, other = (first, second) if first.sender == (seg.src, seg.sport) else (second, first)
    if side.sender != (seg.src, seg.sport) or side.isn is None or other.isn is None:
        return False
    return seg.seq == side.isn and seg.ack == (other.isn + 1) % _SEQ_MOD


def _side_of(ends: tuple[_SideEnd, _SideEnd], seg: Segment) -> _SideEnd | None:
    """The side of a closed connection that sent `seg`."""
    return next((side for side in ends if side.sender == (seg.src, seg.sport)), None)


def _may_reopen(entry: _Closed, seg: Segment, pure_syn: bool) -> bool:
    """Only a new SYN, or data (or a SYN-ACK) that cannot be of the closed connection,
    reopens a recently closed 4-tuple; anything else is a straggler."""
    if pure_syn:
        return not (entry.syn_seq == seg.seq and entry.syn_client == (seg.src, seg.sport))
    if seg.flags & RST or not (seg.payload or seg.flags & SYN):
        return False  # nothing to start a connection with: a reset, an ACK
    # Data of a connection handed on while it was live goes on where it left off: picked
    # up again (mid-stream), not dropped as a straggler of an end that never came.
    return entry.evicted or not _may_be_a_straggler(entry.ends, seg)


PROGRESS_SEGMENTS = 4096  # Reassembler.add_all reports its progress this often


class Reassembler:
    """Feed segments in capture order with `add`; call `finish` at the end of the capture."""

    def __init__(self, sink: StreamSink, server_ports: AbstractSet[int] = frozenset()) -> None:
        """`server_ports`: ports known to listen (a scheduler's command port): without its
        handshake, a connection with one of them at one end has its server there."""
        self.sink = sink
        self.server_ports = server_ports
        self._conns: dict[_Key, _Conn] = {}
        self._recent: dict[_Key, _Closed] = {}  # recently closed 4-tuples
        self._recent_expiry: list[tuple[int, int, _Key]] = []  # heap: (expiry, serial, key)
        self._linger: list[tuple[int, int, _Key]] = []  # heap: (deadline, serial, key)
        self._serial = 0

    @property
    def open_connections(self) -> int:
        return len(self._conns)

    @property
    def recently_closed(self) -> int:
        return len(self._recent)

    def add(self, seg: Segment) -> None:
        ts, src, sport, dst, dport, _seq, _ack, flags = seg[:8]
        linger, expiry = self._linger, self._recent_expiry
        if (linger and linger[0][0] <= ts) or (expiry and expiry[0][0] <= ts):
            self._advance(ts)
        a, b = (src, sport), (dst, dport)
        key = (a, b) if a <= b else (b, a)
        conn = self._conns.get(key)
        pure_syn = flags & (SYN | ACK) == SYN
        if conn is not None and conn.lingering is not None and conn.ended_before(seg):
            # Both FINs were sent: what cannot be of this connection is a later one's (its
            # handshake lost) when it starts one, and nobody's otherwise.
            if not (seg.payload or flags & SYN):
                return
            self._close(conn, ts)
            conn = None
        elif conn is not None and pure_syn and conn.reused_by(seg):
            self._close(conn, ts)
            conn = None
        elif conn is not None and conn.previous is not None and conn.is_of_previous(seg):
            return
        elif (
            conn is not None
            and (flags & SYN or conn.packets == conn.syn_count)  # (cheap: rarely true)
            and conn.taken_over_by(seg)
        ):
            # Its end was not captured, nor the next one's SYN: the next one opens here,
            # and what the old one sends later stays out of it as its stragglers.
            self._close(conn, ts)
            ended = self._recent.pop(key, None)
            conn = self._open(key, seg, None if ended is None else ended.ends)
        if conn is None:
            entry = self._recent.get(key)
            if entry is not None:
                if not _may_reopen(entry, seg, pure_syn):
                    return
                del self._recent[key]
            # (an evicted connection had no end: nothing of it is a straggler to tell apart)
            previous = entry.ends if entry is not None and not entry.evicted else None
            conn = self._open(key, seg, previous)
        conn.add(seg, CLIENT_TO_SERVER if a == conn.client else SERVER_TO_CLIENT)
        if conn.closed is None:  # no FIN or RST yet: neither over nor lingering
            return
        if conn.over:
            self._close(conn)
        elif conn.both_fins and conn.lingering is None:
            conn.lingering = ts
            heapq.heappush(self._linger, (ts + LINGER_US, conn.serial, key))

    def add_all(
        self,
        segments: Iterable[Segment],
        behind: Callable[[int, int, int], None],
        behind_us: int,
        progress: Callable[[int], None] | None = None,
        copies: Copies | None = None,
    ) -> int:
        """`add` each segment, in order, and return the latest time among them (-1: none).
        `behind(n, ts, latest)` is told of the n-th segment when it is timed more than
        `behind_us` before the latest time before it (a clock step); `progress(n)`, every
        PROGRESS_SEGMENTS segments; `copies`, when given, takes out the packets captured
        again (capture.Copies; they are not counted either). (A loop of its own,
        compiled: the pipeline's, run as Python, cost 4% of a dense capture.)"""
        latest = -1
        n = -1
        for seg in segments:
            if copies is not None and copies.copy(seg):
                continue
            n += 1
            self.add(seg)
            ts = seg.ts
            if ts >= latest:
                latest = ts
            elif latest - ts > behind_us:
                behind(n, ts, latest)
            if progress is not None and n % PROGRESS_SEGMENTS == 0:
                progress(n)
        return latest

    def finish(self) -> None:
        for conn in list(self._conns.values()):
            self._close(conn)
        self._recent.clear()
        self._recent_expiry.clear()
        self._linger.clear()

    def _advance(self, now: int) -> None:
        """Capture time moved on: end lingering connections, forget old closed 4-tuples."""
        while self._linger and self._linger[0][0] <= now:
            _, serial, key = heapq.heappop(self._linger)
            conn = self._conns.get(key)
            if conn is None or conn.serial != serial:
                continue
            since = now if conn.lingering is None else conn.lingering  # set when pushed
            if conn.missing_before_fin and now - since < HOLE_WAIT_US:
                heapq.heappush(self._linger, (now + LINGER_US, serial, key))
            else:
                self._close(conn, now)
        while self._recent_expiry and self._recent_expiry[0][0] <= now:
            self._forget_oldest()

    def _forget_oldest(self) -> None:
        _, serial, key = heapq.heappop(self._recent_expiry)
        entry = self._recent.get(key)
        if entry is not None and entry.serial == serial:
            del self._recent[key]

    def _open(self, key: _Key, seg: Segment, previous: tuple[_SideEnd, _SideEnd] | None) -> _Conn:
        src, dst = Endpoint(seg.src, seg.sport), Endpoint(seg.dst, seg.dport)
        handshake = bool(seg.flags & SYN)
        if handshake:
            client, server = (dst, src) if seg.flags & ACK else (src, dst)
        elif (src.port in self.server_ports) != (dst.port in self.server_ports):
            client, server = (dst, src) if src.port in self.server_ports else (src, dst)
        else:
            # No handshake: the client's port is usually the ephemeral (higher) one.
            client, server = (src, dst) if src.port >= dst.port else (dst, src)
        if len(self._conns) >= MAX_OPEN:
            self._evict_idle()
        self._serial += 1
        conn = _Conn(key, self._serial, client, server, handshake, seg.ts, self.sink, previous)
        self._conns[key] = conn
        self.sink.on_open(conn.id, client, server, seg.ts, handshake)
        return conn

    def _evict_idle(self) -> None:
        """Hand on the least recently active tenth: a sort per MAX_OPEN/10 new connections
        keeps the cost per connection logarithmic."""
        idle = sorted(self._conns.values(), key=lambda c: (c.last_ts, c.serial))
        for conn in idle[: max(1, MAX_OPEN // 10)]:
            self._close(conn, evicted=True)

    def _close(self, conn: _Conn, now: int | None = None, evicted: bool = False) -> None:
        """Hand the connection on; its 4-tuple is remembered for RECENT_US from `now`
        (capture time when the close was decided, after its last packet)."""
        del self._conns[conn.key]
        self.sink.on_close(conn.finish())
        ends = conn.ends()
        self._recent[conn.key] = _Closed(conn.serial, conn.client, conn.syn_seq, ends, evicted)
        since = conn.last_ts if now is None else max(now, conn.last_ts)
        heapq.heappush(self._recent_expiry, (since + RECENT_US, conn.serial, conn.key))
        while len(self._recent) > MAX_RECENT:
            self._forget_oldest()
