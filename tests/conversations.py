"""Scapy TCP conversations carrying JobScheduler messages from jsencode, written as pcap files."""

from __future__ import annotations

from pathlib import Path

import jsencode as enc

T0 = 1_772_442_900_000_000  # 2026-03-02T09:15:00Z in µs


def conversation_packets(
    client: tuple[str, int], server: tuple[str, int], messages: list[tuple[int, bytes]], t: float
) -> list:
    """Scapy packets of one TCP connection: handshake, then each (direction, bytes) message
    in its own segment with the right sequence numbers, 1 ms apart from time t (seconds)."""
    from scapy.layers.inet import IP, TCP
    from scapy.layers.l2 import Ether

    ends = (client, server)
    seq = [100, 500]
    steps = [(0, "S", b""), (1, "SA", b""), (0, "A", b"")]
    steps += [(d, "PA", data) for d, data in messages]
    packets = []
    for n, (d, flags, data) in enumerate(steps):
        (sip, sport), (dip, dport) = ends[d], ends[1 - d]
        pkt = Ether() / IP(src=sip, dst=dip) / TCP(sport=sport, dport=dport)
        pkt = pkt / data if data else pkt
        ack = 0 if flags == "S" else seq[1 - d]
        pkt[TCP].flags, pkt[TCP].seq, pkt[TCP].ack = flags, seq[d], ack
        pkt.time = t + n * 0.001
        packets.append(pkt)
        seq[d] += len(data) + (1 if "S" in flags else 0)
    return packets


def write_pcap(path: Path, packets: list) -> Path:
    from scapy.utils import wrpcap

    wrpcap(str(path), packets)
    return path


def command_chain(path: Path, links: int) -> Path:
    """Command connections each announcing the next one's port: connection i (to port
    1000+i, 4444 for the first) starts with a space, so only a read of its port sees it,
    and announces tcp_port 1000+i+1."""
    packets = []
    for i in range(links):
        client, server = (f"10.9.0.{i + 1}", 40000 + i), (f"10.8.0.{i + 1}", 1000 + i)
        if i == 0:
            server = (server[0], 4444)
        start = b" " + enc.start_remote_task(1001 + i, kind="process")
        packets += conversation_packets(client, server, [(0, start)], T0 / 1e6 + i)
    return write_pcap(path, packets)
