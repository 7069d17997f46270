"""Compressed capture files, known by their first bytes.

Wireshark reads gzip, zstd and lz4 files as they are; xz and bzip2 are what log rotation
often uses besides. Each is read piecewise (`read1`), so that what was decompressed before
a break in the stream is kept, and names the errors that mean the stream broke: the
readers then warn and go on with what came before, as they do for a capture cut short.
The libraries load on first use: a plain capture does not pay for their import.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import IO, TYPE_CHECKING, NamedTuple, Protocol

if TYPE_CHECKING:
    from zstandard import ZstdDecompressionObj


class Stream(Protocol):
    def read1(self, size: int, /) -> bytes: ...

    def close(self) -> None: ...


class Codec(NamedTuple):
    name: str  # as messages name it
    magics: tuple[bytes, ...]  # how a file of it begins
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

    # Stream padding, null bytes, may stand between and after xz streams (xz(1) reads on).
    streams = _Streams(raw, lambda: lzma.LZMADecompressor(lzma.FORMAT_XZ), padding=b"\0")
    return streams, (OSError, EOFError, lzma.LZMAError)


def _bzip2(raw: IO[bytes]) -> tuple[Stream, tuple[type[Exception], ...]]:
    import bz2

    return _Streams(raw, bz2.BZ2Decompressor), (OSError, EOFError, ValueError)


class _Decompressor(Protocol):
    """lzma.LZMADecompressor, bz2.BZ2Decompressor: one stream, output as asked."""

    @property
    def eof(self) -> bool: ...

    @property
    def needs_input(self) -> bool: ...

    @property
    def unused_data(self) -> bytes: ...

    def decompress(self, data: bytes, max_length: int = -1, /) -> bytes: ...


class _Streams:
    """An xz or bzip2 file: streams one after another (pbzip2 writes one a block, and
    `cat` several). lzma.LZMAFile and bz2.BZ2File take whatever does not begin a stream
    right for the end of the data, in silence: a damaged later stream, and xz's stream
    padding. Here padding is passed over, and anything else is broken data."""

    CHUNK = 1 << 20

    def __init__(
        self, raw: IO[bytes], new: Callable[[], _Decompressor], padding: bytes = b""
    ) -> None:
        self._raw = raw
        self._new = new
        self._padding = padding
        self._stream = new()
        self._pending = b""  # read from `raw`, for the next stream

    def read1(self, size: int = -1, /) -> bytes:
        """Some decompressed bytes, at most `size`; b"" at the end."""
        size = size if size > 0 else self.CHUNK
        while True:
            if self._stream.eof and not self._next_stream():
                return b""
            data = b""
            if self._stream.needs_input:
                data, self._pending = self._pending or self._raw.read(self.CHUNK), b""
                if not data:
                    raise EOFError("compressed data ended before the end of a stream")
            if out := self._stream.decompress(data, size):
                return out

    def _next_stream(self) -> bool:
        """Past any padding after a stream: whether more data follows."""
        rest = (self._stream.unused_data + self._pending).lstrip(self._padding)
        while not rest:
            rest = self._raw.read(self.CHUNK)
            if not rest:
                return False
            rest = rest.lstrip(self._padding)
        self._stream, self._pending = self._new(), rest
        return True

    def close(self) -> None:
        """The file stays open: its owner closes it."""


def _lz4(raw: IO[bytes]) -> tuple[Stream, tuple[type[Exception], ...]]:
    import lz4.frame

    # lz4 reports damaged data as a RuntimeError naming the library call.
    return lz4.frame.LZ4FrameFile(raw, "rb"), (OSError, EOFError, RuntimeError)


def _lz4_legacy(raw: IO[bytes]) -> tuple[Stream, tuple[type[Exception], ...]]:
    import lz4.block

    errors = (OSError, EOFError, lz4.block.LZ4BlockError)
    return _Lz4Legacy(raw, lz4.block.LZ4BlockError), errors


LZ4_LEGACY_MAGIC = b"\x02\x21\x4c\x18"
LZ4_LEGACY_BLOCK = 8 << 20  # what every block but the last decompresses to
LZ4_LEGACY_BOUND = LZ4_LEGACY_BLOCK + LZ4_LEGACY_BLOCK // 255 + 16  # LZ4_compressBound


class _Lz4Legacy:
    """lz4's legacy format (`lz4 -l`, the Linux kernel's): a magic, then blocks of 8 MB
    compressed each alone, each after its size, up to the end of the file; a magic where a
    size would be begins another frame (`cat a.lz4 b.lz4`). lz4(1) reads it; Wireshark
    does not, so the wireshark engine is given a decompressed copy."""

    def __init__(self, raw: IO[bytes], error: type[Exception]) -> None:
        import lz4.block

        self._raw = raw
        self._decompress = lz4.block.decompress
        self._error = error

    def read1(self, size: int = -1, /) -> bytes:
        """The next block decompressed (`size` is only a hint); b"" at the end."""
        while header := self._raw.read(4):
            if header == LZ4_LEGACY_MAGIC:  # this frame's, or the next one's
                continue
            if len(header) < 4:
                raise EOFError("compressed data ended inside a block size")
            length = int.from_bytes(header, "little")
            if length > LZ4_LEGACY_BOUND:  # no block is so long: the data is damaged
                raise self._error(f"a block of {length} bytes, longer than any can be")
            block = self._raw.read(length)
            if len(block) < length:
                raise EOFError("compressed data ended inside a block")
            if out := self._decompress(block, uncompressed_size=LZ4_LEGACY_BLOCK):
                return bytes(out)
        return b""

    def close(self) -> None:
        """The file stays open: its owner closes it."""


def _zstd(raw: IO[bytes]) -> tuple[Stream, tuple[type[Exception], ...]]:
    import zstandard

    return _ZstdFrames(raw), (OSError, EOFError, zstandard.ZstdError)


ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"
# Skippable frames, 0x184D2A50 to 0x184D2A5F: metadata a decompressor passes over. pzstd
# begins its files with one (the size of the frame that follows). lz4's frame format has
# the same ones (lz4 frame format, "Skippable frames"): the frame after them tells which.
ZSTD_SKIPPABLE = tuple((0x184D2A50 + n).to_bytes(4, "little") for n in range(16))
SKIPPABLE_HEADER = 8  # magic, then the content's size (u32 little-endian)
MAX_SKIPPABLE_FRAMES = 64  # looked past to find the first real frame; more is not a capture
ZSTD_BLOCK_MAX = 128 << 10  # what one block decompresses to at most (RFC 8878 §3.1.1.2.4)
ZSTD_RLE_BLOCK = 1  # a block type: one byte, repeated Block_Size times


class _ZstdFrames:
    """A zstd file: frames one after another (pzstd, `cat a.zst b.zst`), with skippable
    frames among them. Walked block by block and fed to zstandard a few blocks at a time:
    zstandard decompresses at once all it is given (a frame of 32 KB can hold 1 GB of
    zeros), and its stream reader ends a file cut inside a frame in silence; a piece here
    is at most `CHUNK`, and a cut is an error."""

    CHUNK = 1 << 20
    BLOCKS_PER_PIECE = CHUNK // ZSTD_BLOCK_MAX

    def __init__(self, raw: IO[bytes]) -> None:
        import zstandard

        self._raw = raw
        self._new = zstandard.ZstdDecompressor().decompressobj
        self._error = zstandard.ZstdError
        self._buffer = b""  # read from `raw`, not yet taken from `_pos` on
        self._pos = 0
        self._pieces = self._decompressed()

    def read1(self, size: int = -1, /) -> bytes:
        """Some decompressed bytes (`size` is only a hint); b"" at the end."""
        return next(self._pieces, b"")

    def close(self) -> None:
        """The file stays open: its owner closes it."""

    def _decompressed(self) -> Iterator[bytes]:
        while magic := self._take(4, at_frame_start=True):
            if magic in ZSTD_SKIPPABLE:
                self._skip(int.from_bytes(self._take(4), "little"))
            elif magic == ZSTD_MAGIC:
                yield from self._frame(magic)
            else:
                number = int.from_bytes(magic, "little")
                raise self._error(f"not a zstd frame (magic 0x{number:08x})")

    def _frame(self, magic: bytes) -> Iterator[bytes]:
        frame = self._new()
        descriptor = self._take(1)
        frame.decompress(magic + descriptor + self._take(_zstd_header_rest(descriptor[0])))
        blocks: list[bytes] = []
        last = False
        while not last:
            try:
                block, last = self._block()
            except EOFError:  # cut: what the whole blocks before make is kept
                yield from _decompressed_blocks(frame, blocks)
                raise
            blocks.append(block)
            if last or len(blocks) == self.BLOCKS_PER_PIECE:
                yield from _decompressed_blocks(frame, blocks)
                blocks = []
        if descriptor[0] & 0x04:  # Content_Checksum_flag: zstandard checks it
            frame.decompress(self._take(4))

    def _block(self) -> tuple[bytes, bool]:
        """The next block of a frame, whole, and whether it is the frame's last."""
        header = self._take(3)
        value = int.from_bytes(header, "little")
        kind, size = value >> 1 & 3, value >> 3
        return header + self._take(1 if kind == ZSTD_RLE_BLOCK else size), bool(value & 1)

    def _take(self, size: int, at_frame_start: bool = False) -> bytes:
        """The next `size` bytes of the file; b"" at its end between frames."""
        while len(self._buffer) - self._pos < size:
            data = self._raw.read(self.CHUNK)
            if not data:
                if at_frame_start and self._pos == len(self._buffer):
                    return b""
                raise EOFError("compressed data ended inside a frame")
            self._buffer = self._buffer[self._pos :] + data
            self._pos = 0
        self._pos += size
        return self._buffer[self._pos - size : self._pos]

    def _skip(self, size: int) -> None:
        """Pass over `size` bytes (a skippable frame's content), a chunk at a time."""
        for _ in range(size // self.CHUNK):
            self._take(self.CHUNK)
        self._take(size % self.CHUNK)


def _decompressed_blocks(frame: ZstdDecompressionObj, blocks: list[bytes]) -> Iterator[bytes]:
    if out := frame.decompress(b"".join(blocks)):  # b"" would mean the end to a reader
        yield out


def _zstd_header_rest(descriptor: int) -> int:
    """The length of a frame header after its descriptor byte (RFC 8878 §3.1.1.1)."""
    single_segment = descriptor >> 5 & 1
    content_size = (single_segment, 2, 4, 8)[descriptor >> 6]
    dictionary_id = (0, 1, 2, 4)[descriptor & 3]
    return (not single_segment) + dictionary_id + content_size


CODECS = (
    Codec("gzip", (b"\x1f\x8b",), _gzip),
    Codec("zstd", (ZSTD_MAGIC, *ZSTD_SKIPPABLE), _zstd),
    Codec("lz4", (b"\x04\x22\x4d\x18",), _lz4),
    Codec("lz4-legacy", (LZ4_LEGACY_MAGIC,), _lz4_legacy),
    Codec("xz", (b"\xfd7zXZ\x00",), _xz),
    Codec("bzip2", (b"BZh",), _bzip2),
)


def codec_of(head: bytes) -> Codec | None:
    """The compression of a file that begins with `head`, or None."""
    return next((c for c in CODECS if head.startswith(c.magics)), None)


def codec_of_file(f: IO[bytes], head: bytes) -> Codec | None:
    """The compression of the open file `f` whose first bytes are `head`: as codec_of, but
    a file that begins with skippable frames is lz4 when the first other frame is lz4's."""
    found = codec_of(head)
    if found is None or found.name != "zstd" or not head.startswith(ZSTD_SKIPPABLE):
        return found
    try:
        first = _past_skippable_frames(f)
    except OSError:  # unseekable or unreadable: the zstd reader will say what is wrong
        return found
    lz4 = next(c for c in CODECS if c.name == "lz4")
    return lz4 if first.startswith(lz4.magics) else found


def _past_skippable_frames(f: IO[bytes]) -> bytes:
    """The magic of the first frame of `f` that is not a skippable frame (b"" if none)."""
    position = 0
    for _ in range(MAX_SKIPPABLE_FRAMES):
        f.seek(position)
        header = f.read(SKIPPABLE_HEADER)
        if header[:4] not in ZSTD_SKIPPABLE or len(header) < SKIPPABLE_HEADER:
            return header[:4]
        position += SKIPPABLE_HEADER + int.from_bytes(header[4:], "little")
    return b""
