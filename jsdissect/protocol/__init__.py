"""Protocol decoders (sans-I/O): bytes and capture times in, typed events out.

Every event carries its place in the stream: the connection id, the direction it was sent
in (tcp.CLIENT_TO_SERVER / SERVER_TO_CLIENT), the stream offset of its first byte, the time
of its first byte (`start`) and the time its last missing byte arrived (`end`, DESIGN
"Exact times"). Decoders never raise on bad input: they emit `DecodeError` and go on where
they can.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any


@dataclass(frozen=True, slots=True)
class Event:
    conn: str
    direction: int
    offset: int
    start: int  # µs, first byte captured
    end: int  # µs, last missing byte captured

    def __reduce__(self) -> tuple[type, tuple[Any, ...]]:
        # Events cross process boundaries (callbacks.WorkerDecoding) by the thousand: built
        # again through __init__ they unpickle several times faster than through the
        # dataclass's generic __setstate__, which looks up the fields for every object.
        cls = type(self)
        names = _FIELD_NAMES.get(cls)
        if names is None:
            names = _FIELD_NAMES[cls] = tuple(f.name for f in fields(cls))
        return cls, tuple(getattr(self, name) for name in names)


_FIELD_NAMES: dict[type, tuple[str, ...]] = {}


@dataclass(frozen=True, slots=True)
class DecodeError(Event):
    channel: str  # "cmd" or "api"
    reason: str
