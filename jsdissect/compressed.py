"""Compressed capture files, known by their first bytes.

Wireshark reads gzip, zstd and lz4 files as they are; xz and bzip2 are what log rotation
often uses besides. Each is read piecewise (`read1`), so that what was decompressed before
a break in the stream is kept, and names the errors that mean the stream broke: the
readers then warn and go on with what came before, as they do for a capture cut short.
The libraries load on first use: a plain capture does not pay for their import.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import IO, NamedTuple, Protocol


class Stream(Protocol):
    def read1(self, size: int, /) -> bytes: ...

    def close(self) -> None: ...


class Codec(NamedTuple):
    name: str  # as messages name it
    magic: bytes
    # The decompressed stream of a file object (left open), and the exceptions that mean
    # the compressed data is broken.
    open: Callable[[IO[bytes]], tuple[Stream, tuple[type[Exception], ...]]]


def _gzip(raw: IO[bytes]) -> tuple[Stream, tuple[type[Exception], ...]]:
    import gzip
    import zlib

    # GzipFile.read(n) drops what it had decompressed when the stream turns out broken;
    # read1 returns it piecewise.
    return gzip.GzipFile(fileobj=raw, mode="rb"), (OSError, EOFError, zlib.error)


def _xz(raw: IO[bytes]) -> tuple[Stream, tuple[type[Exception], ...]]:
    import lzma

    return lzma.LZMAFile(raw), (OSError, EOFError, lzma.LZMAError)


def _bzip2(raw: IO[bytes]) -> tuple[Stream, tuple[type[Exception], ...]]:
    import bz2

    return bz2.BZ2File(raw), (OSError, EOFError, ValueError)


def _lz4(raw: IO[bytes]) -> tuple[Stream, tuple[type[Exception], ...]]:
    import lz4.frame

    # lz4 reports damaged data as a RuntimeError naming the library call.
    return lz4.frame.LZ4FrameFile(raw, "rb"), (OSError, EOFError, RuntimeError)


def _zstd(raw: IO[bytes]) -> tuple[Stream, tuple[type[Exception], ...]]:
    import zstandard

    return _ZstdFrames(raw), (EOFError, zstandard.ZstdError)


class _ZstdFrames:
    """A zstd file: frames one after another (pzstd, `cat a.zst b.zst`). zstandard's own
    stream reader ends a file cut inside a frame in silence; this one says so."""

    CHUNK = 1 << 20

    def __init__(self, raw: IO[bytes]) -> None:
        import zstandard

        self._raw = raw
        self._new = zstandard.ZstdDecompressor().decompressobj
        self._frame = self._new()
        self._started = False  # has the current frame had any input

    def read1(self, size: int = -1, /) -> bytes:
        """Some decompressed bytes (`size` is only a hint); b"" at the end."""
        while True:
            if self._frame.eof:
                rest = self._frame.unused_data
                self._frame, self._started = self._new(), False
                if rest:
                    self._started = True
                    if out := self._frame.decompress(rest):
                        return out
                    continue
            data = self._raw.read(self.CHUNK)
            if not data:
                if self._started and not self._frame.eof:
                    raise EOFError("compressed data ended inside a frame")
                return b""
            self._started = True
            if out := self._frame.decompress(data):
                return out

    def close(self) -> None:
        """The file stays open: its owner closes it."""


CODECS = (
    Codec("gzip", b"\x1f\x8b", _gzip),
    Codec("zstd", b"\x28\xb5\x2f\xfd", _zstd),
    Codec("lz4", b"\x04\x22\x4d\x18", _lz4),
    Codec("xz", b"\xfd7zXZ\x00", _xz),
    Codec("bzip2", b"BZh", _bzip2),
)
MAGIC_LEN = max(len(c.magic) for c in CODECS)


def codec_of(head: bytes) -> Codec | None:
    """The compression of a file that begins with `head`, or None."""
    return next((c for c in CODECS if head.startswith(c.magic)), None)
