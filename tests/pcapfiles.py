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
