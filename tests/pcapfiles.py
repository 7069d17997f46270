"""Classic pcap files (draft-ietf-opsawg-pcap) written with struct from raw frames, for tests."""

from __future__ import annotations

import struct
from collections.abc import Iterable

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
