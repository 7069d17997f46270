"""Reads a capture back (scapy) and decodes it with the test-side decoder.

Naive reassembly on purpose: the emulator's captures are clean loopback traffic, in
order and without loss, so concatenating each direction's payloads gives the stream.
"""

from __future__ import annotations

from collections.abc import Hashable, Iterable
from pathlib import Path

from .record import Flow, Recorder
from .wire import (
    FrameBuffer,
    Intent,
    XmlEndFinder,
    answer_intent,
    command_intents,
    describe_api_stream,
    split_answers,
)

Segment = tuple[Flow, bytes]


def read_segments(path: Path) -> list[Segment]:
    """TCP segments with payload, in capture order (pcap or pcapng)."""
    from scapy.layers.inet import IP, TCP
    from scapy.utils import PcapReader

    segments = []
    with PcapReader(str(path)) as reader:
        for packet in reader:
            if IP not in packet or TCP not in packet:
                continue
            payload = bytes(packet[TCP].payload)
            if payload:
                ip, tcp = packet[IP], packet[TCP]
                segments.append(((ip.src, tcp.sport, ip.dst, tcp.dport), payload))
    return segments


def stream_bytes(segments: Iterable[Segment]) -> dict[Flow, bytes]:
    streams: dict[Flow, bytearray] = {}
    for flow, payload in segments:
        streams.setdefault(flow, bytearray()).extend(payload)
    return {flow: bytes(data) for flow, data in streams.items()}


def missing_data(segments: Iterable[Segment], recorder: Recorder) -> list[str]:
    """Flows whose captured bytes differ from what the parties wrote (lost or extra data)."""
    captured = stream_bytes(segments)
    problems = []
    for flow, messages in recorder.sent_by_flow().items():
        sent = b"".join(m.raw for m in messages)
        got = captured.get(flow, b"")
        if got != sent:
            problems.append(f"{flow}: sent {len(sent)} bytes, captured {len(got)}")
    return problems


def decode_segments(segments: list[Segment], cmd_ports: set[int]) -> dict[Flow, list[Intent]]:
    """Every flow's messages as intents: CMD by end finder / NUL, API by frames + pairing."""
    intents: dict[Flow, list[Intent]] = {}
    finders: dict[Flow, XmlEndFinder] = {}
    answer_rest: dict[Flow, bytes] = {}
    frames: dict[Flow, FrameBuffer] = {}
    api: dict[frozenset[tuple[str, int]], list[tuple[Hashable, bytes]]] = {}
    for flow, payload in segments:
        out = intents.setdefault(flow, [])
        if flow[3] in cmd_ports:
            for request in finders.setdefault(flow, XmlEndFinder()).feed(payload):
                out.extend(command_intents(request))
        elif flow[1] in cmd_ports:
            answers, answer_rest[flow] = split_answers(answer_rest.get(flow, b"") + payload)
            out.extend(answer_intent(a) for a in answers)
        else:
            connection = frozenset({flow[:2], flow[2:]})
            for message in frames.setdefault(flow, FrameBuffer()).feed(payload):
                api.setdefault(connection, []).append((flow, message))
    for messages in api.values():
        for flow, intent in describe_api_stream(messages):
            intents[flow].append(intent)
    return intents


def expected_intents(recorder: Recorder) -> dict[Flow, list[Intent]]:
    return {flow: [m.intent for m in sent] for flow, sent in recorder.sent_by_flow().items()}
