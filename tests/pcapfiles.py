"""Classic pcap files (draft-ietf-opsawg-pcap) written with struct from raw frames, for tests."""

from __future__ import annotations

import struct
from collections.abc import Iterable
from pathlib import Path

Frame = tuple[int, bytes, int]  # (ts in ns, captured bytes, length on the wire)


def pcap_file(
    linktype: int, frames: Iterable[Frame], *, nano=False, order="<", snaplen=65535
) -> bytes:
    magic = 0xA1B23C4D if nano else 0xA1B2C3D4
    out = [struct.pack(order + "IHHiIII", magic, 2, 4, 0, 0, snaplen, linktype)]
    for ts_ns, data, wirelen in frames:
        sec, frac = divmod(ts_ns, 10**9)
        frac = frac if nano else frac // 1000
        out.append(struct.pack(order + "IIII", sec, frac, len(data), wirelen) + data)
    return b"".join(out)


def move_port(src: Path, dst: Path, old: int, new: int) -> None:
    """Copy a capture with TCP port `old` (either side) renumbered `new`, checksums redone."""
    from scapy.layers.inet import TCP
    from scapy.utils import rdpcap, wrpcap

    packets = rdpcap(str(src))
    for pkt in packets:
        if TCP in pkt:
            for field in ("sport", "dport"):
                if getattr(pkt[TCP], field) == old:
                    setattr(pkt[TCP], field, new)
            del pkt[TCP].chksum
    wrpcap(str(dst), packets)


# --- captures of several interfaces at once (tcpdump -i any) ------------------------------

LINKTYPE_LINUX_SLL, LINKTYPE_LINUX_SLL2 = 113, 276
ARPHRD_ETHER, PACKET_OUTGOING = 1, 4
TPID_8021Q = b"\x81\x00"


def cooked(linktype: int, ethernet: bytes, ifindex: int, vlan: int | None = None) -> bytes:
    """An Ethernet frame as `-i any` records it on interface `ifindex`: its MAC header
    turned into a Linux cooked header (v1, or v2 with the interface index), and with a VLAN
    tag when it is `vlan`'s parent interface's copy (libpcap puts back the tag the kernel
    took off, behind the cooked header)."""
    source, etype, body = ethernet[6:12], ethernet[12:14], ethernet[14:]
    if vlan is not None:
        body, etype = struct.pack("!H", vlan) + etype + body, TPID_8021Q
    address = source + bytes(2)
    if linktype == LINKTYPE_LINUX_SLL:
        return struct.pack("!HHH", PACKET_OUTGOING, ARPHRD_ETHER, 6) + address + etype + body
    fixed = struct.pack("!2sHIHBB", etype, 0, ifindex, ARPHRD_ETHER, PACKET_OUTGOING, 6)
    return fixed + address + body


def every_frame_twice(
    frames: Iterable[Frame], linktype: int, delay_ns: int, vlan: int | None = None
) -> list[Frame]:
    """What `tcpdump -i any` records of `frames` on a host whose traffic crosses two
    interfaces (a VLAN sub-interface and its parent, a bridge and its port): each frame
    on the first (ifindex 2), then on the second (ifindex 3, tagged `vlan`) `delay_ns`
    later, in time order, so a delay longer than the frames are apart puts other frames
    between two copies (the parent's queue held them back)."""
    records = []
    for n, (ts, data, wirelen) in enumerate(frames):
        for copy, (at, ifindex, tag) in enumerate(((ts, 2, None), (ts + delay_ns, 3, vlan))):
            record = cooked(linktype, data, ifindex, tag)
            records.append((at, copy, n, (at, record, len(record) + wirelen - len(data))))
    return [frame for *_, frame in sorted(records)]
