"""Protocol decoders (sans-I/O): bytes and capture times in, typed events out.

Every event carries its place in the stream: the connection id, the direction it was sent
in (tcp.CLIENT_TO_SERVER / SERVER_TO_CLIENT), the stream offset of its first byte, the time
of its first byte (`start`) and the time its last missing byte arrived (`end`, DESIGN
"Exact times"). Decoders never raise on bad input: they emit `DecodeError` and go on where
they can.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import TYPE_CHECKING, Any, TypeVar

_T = TypeVar("_T")

if TYPE_CHECKING:
    from typing_extensions import dataclass_transform

    @dataclass_transform(frozen_default=True)
    def record(cls: type[_T]) -> type[_T]:
        """An immutable record: a frozen dataclass as far as mypy is concerned."""

else:
    # Events and the values in them are built by the hundred thousand, and a frozen
    # dataclass's __init__ sets every field through object.__setattr__: 3.0 µs for a
    # Request, 0.8 µs as a plain slots dataclass (measured, CPython 3.11). So at run time
    # they are plain slots dataclasses, hashable like frozen ones, and mypy, which sees
    # them frozen, keeps every assignment to a field out of the code.
    record = dataclass(slots=True, unsafe_hash=True)


@record
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


@record
class DecodeError(Event):
    channel: str  # "cmd" or "api"
    reason: str
