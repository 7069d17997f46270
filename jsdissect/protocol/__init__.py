"""Protocol decoders (sans-I/O): bytes and capture times in, typed events out.

Every event carries its place in the stream: the connection id, the direction it was sent
in (tcp.CLIENT_TO_SERVER / SERVER_TO_CLIENT), the stream offset of its first byte, the time
of its first byte (`start`) and the time its last missing byte arrived (`end`, DESIGN
"Exact times"). Decoders never raise on bad input: they emit `DecodeError` and go on where
they can.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Event:
    conn: str
    direction: int
    offset: int
    start: int  # µs, first byte captured
    end: int  # µs, last missing byte captured


@dataclass(frozen=True, slots=True)
class DecodeError(Event):
    channel: str  # "cmd" or "api"
    reason: str
