"""One TCP connection of a party: sending with a record of intent, receiving with wire.py."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import struct
from collections.abc import Awaitable, Callable

import jsencode as enc
from jsencode import ObjRef, V

from .record import Recorder, Sent
from .wire import Answer, Intent, Request, parse_answer, parse_request, plain


class ChannelClosed(Exception):
    """The peer closed or reset the connection."""


def set_linger_zero(sock: socket.socket) -> None:
    """SO_LINGER {on, 0}: close() sends RST (§2: the API sockets of both C++ sides)."""
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))


class Channel:
    def __init__(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        sender: str,
        kind: str,
        recorder: Recorder,
    ) -> None:
        self.reader, self.writer = reader, writer
        self.sender, self.kind, self.recorder = sender, kind, recorder
        local, peer = writer.get_extra_info("sockname"), writer.get_extra_info("peername")
        self.flow = (local[0], local[1], peer[0], peer[1])

    @property
    def socket(self) -> socket.socket:
        return self.writer.get_extra_info("socket")

    async def send(self, raw: bytes, intent: Intent) -> None:
        """Writes and records one message; only what reached the socket is recorded."""
        transport = self.writer.transport
        if transport.is_closing():
            raise ChannelClosed("connection already closed")
        # asyncio sends at once when its buffer is empty; a send() that fails (the peer
        # reset us meanwhile) closes the transport synchronously and drops the data.
        self.writer.write(raw)
        if transport.is_closing():
            raise ChannelClosed("connection lost while sending")
        self.recorder.sent.append(Sent(self.flow, self.kind, self.sender, raw, intent))
        try:
            await self.writer.drain()
        except OSError as exc:
            raise ChannelClosed(str(exc)) from exc

    async def read_frame(self) -> bytes:
        """§5.1: uint32 length + payload."""
        try:
            (length,) = struct.unpack(">I", await self.reader.readexactly(4))
            return await self.reader.readexactly(length)
        except (asyncio.IncompleteReadError, OSError) as exc:
            raise ChannelClosed(str(exc)) from exc

    async def read_answer(self) -> bytes:
        """§3.2: one XML document + NUL; returns it without the NUL."""
        try:
            return (await self.reader.readuntil(b"\x00"))[:-1]
        except (asyncio.IncompleteReadError, OSError) as exc:
            raise ChannelClosed(str(exc)) from exc

    def reset(self) -> None:
        """Abortive close: RST instead of FIN (a killed or crashed process)."""
        sock = self.socket
        if sock is not None and sock.fileno() >= 0:
            set_linger_zero(sock)
        self.writer.transport.abort()

    async def close(self) -> None:
        self.writer.close()
        with contextlib.suppress(OSError):  # already reset by the peer
            await self.writer.wait_closed()


Serve = Callable[[Request], Awaitable[None]]


class Session(Channel):
    """§5.2 half-duplex RPC: a request waits for its answer and serves callbacks meanwhile."""

    serve: Serve

    async def request(self, raw: bytes, intent: Intent, command: str) -> Answer:
        await self.send(raw, intent)
        while True:
            payload = await self.read_frame()
            if payload[:1] in (b"A", b"E"):
                return parse_answer(payload, command)
            await self.serve(parse_request(payload))

    # --- requests (§5.9) ------------------------------------------------------------------

    async def create_instance(self) -> Answer:
        return await self.request(enc.create_instance(), ("create_instance", enc.CLSID_RMIS), "C")

    async def call(self, object_id: int, method: str, args: list[V] | None = None) -> Answer:
        args = args or []
        intent = ("call", object_id, method, tuple(plain(a) for a in args))
        return await self.request(enc.call(object_id, method, args), intent, "A")

    async def get_ids_of_names(self, object_id: int, name: str) -> Answer:
        intent = ("getids", object_id, name)
        return await self.request(enc.get_ids_of_names(object_id, name), intent, "G")

    async def invoke(
        self, object_id: int, dispid: int, flags: int, args: list[V] | None = None
    ) -> Answer:
        args = args or []
        intent = ("invoke", object_id, dispid, flags, tuple(plain(a) for a in args), ())
        return await self.request(enc.invoke(object_id, dispid, flags, args), intent, "I")

    async def put(self, object_id: int, dispid: int, value: V) -> Answer:
        named = ((enc.DISPID_PROPERTYPUT, plain(value)),)
        intent = ("invoke", object_id, dispid, enc.PROPERTYPUT, (), named)
        return await self.request(enc.property_put(object_id, dispid, value), intent, "I")

    async def release(self, object_id: int) -> Answer:
        return await self.request(enc.release(object_id), ("release", object_id), "R")

    async def keep_alive(self) -> Answer:
        return await self.request(enc.keep_alive(), ("keepalive",), "K")

    # --- answers (§5.10, §5.11) -----------------------------------------------------------

    async def answer_create(self, ref: ObjRef) -> None:
        await self.send(enc.answer_create_instance(ref), ("answer_create", 0, ref.id))

    async def answer_value(self, value: V) -> None:
        await self.send(enc.answer_value(value), ("answer", 0, plain(value)))

    async def answer_dispids(self, *dispids: int) -> None:
        await self.send(enc.answer_dispids(*dispids), ("answer_dispids", 0, dispids))

    async def answer_unknown_name(self) -> None:
        hr = 0x80020006  # DISP_E_UNKNOWNNAME, no DISPIDs
        await self.send(enc.answer_dispids(hr=hr), ("answer_dispids", hr - (1 << 32), ()))

    async def answer_empty(self) -> None:
        await self.send(enc.answer_empty(), ("answer_empty",))

    async def answer_error(self, name: str, code: str, what: str) -> None:
        await self.send(enc.answer_error(name, code, what), ("error", code))
