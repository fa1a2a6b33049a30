"""Resumable members: deflate through zlib's ctypes interface, stored members by a seek.

Owns inflating a deflate stream block by block, the windows and bit offsets kept at
block boundaries, reading a stored member from any byte, and proving the compressed
history unchanged. Knows nothing of CSV or SQL."""

from __future__ import annotations

import collections
import ctypes
import ctypes.util
import functools
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass, replace
from typing import Any, ClassVar

import blake3
from isal import isal_zlib

from incremental_bench.archive import Member, check_integrity, compressed_pieces, member_byte
from incremental_bench.config import (
    ACCESS_POINTS_KEPT,
    INFLATE_OUT_BYTES,
    POINT_TAIL_BYTES,
    READ_CHUNK_BYTES,
    WINDOW_BYTES,
    Z_BLOCK,
    Z_BUF_ERROR,
    Z_MEM_ERROR,
    Z_OK,
    Z_STREAM_END,
    CorruptArchive,
    InputError,
)


class ZStream(ctypes.Structure):
    """zlib's z_stream exactly as zlib.h declares it: a public, stable structure.

    inflateInit2_ is given sizeof(ZStream) and refuses a layout of another size.
    """

    _fields_: ClassVar = [
        ("next_in", ctypes.c_void_p),
        ("avail_in", ctypes.c_uint),
        ("total_in", ctypes.c_ulong),
        ("next_out", ctypes.c_void_p),
        ("avail_out", ctypes.c_uint),
        ("total_out", ctypes.c_ulong),
        ("msg", ctypes.c_char_p),
        ("state", ctypes.c_void_p),
        ("zalloc", ctypes.c_void_p),
        ("zfree", ctypes.c_void_p),
        ("opaque", ctypes.c_void_p),
        ("data_type", ctypes.c_int),
        ("adler", ctypes.c_ulong),
        ("reserved", ctypes.c_ulong),
    ]


@functools.cache
def libz() -> ctypes.CDLL:
    """The system zlib (the one Python's own zlib module is built on), with signatures."""
    try:
        lib = ctypes.CDLL("libz.so.1")  # Linux's name; no lookup needed
    except OSError:
        lib = ctypes.CDLL(ctypes.util.find_library("z") or "libz")
    stream = ctypes.POINTER(ZStream)
    lib.zlibVersion.restype = ctypes.c_char_p
    lib.inflateInit2_.argtypes = [stream, ctypes.c_int, ctypes.c_char_p, ctypes.c_int]
    lib.inflate.argtypes = [stream, ctypes.c_int]
    lib.inflatePrime.argtypes = [stream, ctypes.c_int, ctypes.c_int]
    lib.inflateSetDictionary.argtypes = [stream, ctypes.c_char_p, ctypes.c_uint]
    lib.inflateEnd.argtypes = [stream]
    return lib


class BlockInflater:
    """Raw inflate with zlib's own API, the zran way (zlib's examples/zran.c).

    inflate(Z_BLOCK) returns at every deflate block boundary and data_type says where
    it stands; inflatePrime and inflateSetDictionary restart at such a boundary.
    Neither ISA-L's nor Python's zlib bindings offer these, hence ctypes.
    """

    def __init__(self) -> None:
        self.lib = libz()
        self.strm = ZStream()
        self.ref = ctypes.byref(self.strm)
        version = self.lib.zlibVersion()
        if self.lib.inflateInit2_(self.ref, -15, version, ctypes.sizeof(ZStream)) != Z_OK:
            raise RuntimeError(f"zlib {version!r}: inflateInit2 failed")
        self.out = ctypes.create_string_buffer(INFLATE_OUT_BYTES)
        self.fed = b""  # zlib reads from this object's buffer: keep it alive

    def prime(self, bits: int, last_byte: int, window: bytes) -> None:
        """Start at a boundary: the next block's first bits, then the window before it."""
        if bits and self.lib.inflatePrime(self.ref, bits, last_byte >> (8 - bits)) != Z_OK:
            raise RuntimeError("zlib inflatePrime failed")
        if window and self.lib.inflateSetDictionary(self.ref, window, len(window)) != Z_OK:
            raise RuntimeError("zlib inflateSetDictionary failed")

    def feed(self, data: bytes) -> None:
        """Give zlib the next compressed bytes (at most READ_CHUNK_BYTES: 32-bit safe)."""
        self.fed = data
        self.strm.next_in = ctypes.cast(ctypes.c_char_p(data), ctypes.c_void_p)
        self.strm.avail_in = len(data)

    def inflate(self, flush: int = Z_BLOCK) -> tuple[int, bytes]:
        """One inflate call (by default stopping at a block boundary): zlib's return code
        and the text it produced."""
        self.strm.next_out = ctypes.addressof(self.out)
        self.strm.avail_out = INFLATE_OUT_BYTES
        code = self.lib.inflate(self.ref, flush)
        produced = INFLATE_OUT_BYTES - self.strm.avail_out
        return code, ctypes.string_at(self.out, produced)

    def close(self) -> None:
        self.lib.inflateEnd(self.ref)


@dataclass
class AccessPoint:
    """A deflate block boundary from which inflating can start again (zlib's zran method).

    Checked before use: the compressed bits before it must hash to `compressed_blake3`
    (then inflating them gives the same text, and the boundary is one), and the text
    from it to the end of what was processed must hash to `tail_blake3`.
    """

    compressed_offset: int  # first byte after the boundary, in the member's compressed data
    bits: int  # high bits of the byte before it that belong to the next block (0 to 7)
    offset: int  # where the boundary falls in the CSV
    crc32: int  # CRC-32 of the CSV before it, so a resumed read still checks the member's
    window: bytes  # the last 32 KiB of CSV before it (deflate back-references reach that far)
    compressed_blake3: str = ""
    tail_blake3: str = ""


class CompressedPrefix:
    """BLAKE3 of a member's compressed bits up to given block boundaries.

    BLAKE3 rather than SHA-256: faster here (docs/measurement.md), and as sound a
    proof: a changed history passes only through a collision of a cryptographic hash
    (a faster non-cryptographic one, such as xxh3, gives no such guarantee against a
    feed crafted or damaged to match).

    Keeps a hash state at every point asked, so that points can be asked in any order
    and no byte is hashed twice when they are asked in order.
    """

    def __init__(self, member: Member) -> None:
        self.member = member
        self.states: list[tuple[int, Any]] = [(0, blake3.blake3())]

    def state_at(self, end: int) -> Any:
        """A copy of the hash state over the compressed bytes before `end`."""
        state, complete = self._advance(end)
        if not complete:
            raise CorruptArchive(f"{self.member.path}: truncated before byte {end:,}")
        return state.copy()

    def _advance(self, end: int) -> tuple[Any, bool]:
        pos, state = max((s for s in self.states if s[0] <= end), key=lambda s: s[0])
        state = state.copy()
        try:
            with self.member.path.open("rb") as f:
                f.seek(self.member.data_start + pos)
                while pos < end and (piece := f.read(min(READ_CHUNK_BYTES, end - pos))):
                    state.update(piece)
                    pos += len(piece)
        except OSError as exc:
            raise InputError(f"{self.member.path}: cannot read ({exc.strerror or exc})") from None
        self.states.append((pos, state))
        return state, pos == end

    def digest_at(self, compressed_offset: int, bits: int) -> str | None:
        """Digest of the bits before a boundary; None when the member is shorter."""
        whole = compressed_offset - 1 if bits else compressed_offset
        if compressed_offset > self.member.compressed_size or whole < 0:
            return None
        state, complete = self._advance(whole)
        if not complete:
            return None
        state = state.copy()
        if bits:  # only the low 8 - bits bits of the last byte precede the boundary
            state.update(bytes([member_byte(self.member, whole) & (0xFF >> bits)]))
        return state.hexdigest()


class TrackedRead:
    """A read of a member that leaves access points for the next run, once read whole."""

    member: Member
    points: list[AccessPoint] | None = None

    def access_points(self) -> list[AccessPoint]:
        """The points kept for the next run; only once the member has been read whole."""
        if self.points is None:
            raise RuntimeError(f"{self.member.path}: access points asked before the end")
        return self.points


class TrackedInflate(TrackedRead):
    """Inflate a member with zlib from its start or from an access point, noting boundaries.

    Iterating gives the CSV from `start.offset` (or 0) in pieces of about
    READ_CHUNK_BYTES. Once the stream has been inflated to its end, `access_points()`
    gives the last ACCESS_POINTS_KEPT block boundaries (counting `start`), complete with
    their hashes, for the next run. The compressed bytes are hashed as they are fed
    (`prefix`, if given, already holds the hash up to the start), so no byte is read
    twice. Offsets are Python integers and zlib is fed at most a read at a time, so
    members past 4 GiB never meet zlib's 32-bit avail_in and avail_out.
    """

    def __init__(
        self,
        member: Member,
        start: AccessPoint | None = None,
        prefix: CompressedPrefix | None = None,
    ) -> None:
        self.member, self.start, self.prefix = member, start, prefix
        self.pos = self.offset = self.crc = 0  # compressed offset, CSV offset, CRC-32 so far
        self.window = bytearray()  # the latest text, at least WINDOW_BYTES of it
        # The start is a boundary too, and the only one when a day adds less than a block:
        # kept as a candidate, tomorrow can resume here again.
        self.recent: collections.deque[AccessPoint] = collections.deque()
        self.history: collections.deque[bytes] = collections.deque()  # text since recent[0]
        self.history_bytes = 0
        self.out: list[bytes] = []
        self.out_len = 0
        # Where the bits before each candidate lie: (hash state before a fed piece, its
        # offset, the piece) for the piece holding them and the one before it. The digest
        # itself is taken at the end, for the few candidates kept.
        self.fed: list[tuple[Any, int, bytes]] = []
        self.anchors: dict[int, tuple[tuple[Any, int, bytes], ...]] = {}
        self.hasher: Any = None
        self.exhausted = False

    def __iter__(self) -> Iterator[bytes]:
        member, start = self.member, self.start
        if member.method != zipfile.ZIP_DEFLATED:
            raise CorruptArchive(f"{member.path}: not deflate-compressed, no access points")
        last_byte = 0
        if start is not None:
            if not 0 <= start.bits <= 7 or start.compressed_offset < 1:
                raise CorruptArchive(f"{member.path}: access point out of range, cannot resume")
            if start.bits:
                last_byte = member_byte(member, start.compressed_offset - 1)
            self.pos, self.offset, self.crc = start.compressed_offset, start.offset, start.crc32
            self.window += start.window
            self.recent.append(replace(start))
        base_in = self.pos
        pieces = compressed_pieces(member, self.pos)
        self.hasher = (self.prefix or CompressedPrefix(member)).state_at(self.pos)
        inflater = BlockInflater()
        try:
            if start is not None:
                inflater.prime(start.bits, last_byte, start.window)
            while True:
                if inflater.strm.avail_in == 0 and not self.exhausted:
                    self._feed(inflater, next(pieces, None))
                code, text = inflater.inflate()
                self._check(code, inflater)
                if text:
                    self._took(text)
                if code == Z_STREAM_END:
                    break
                self._note_boundary(inflater, base_in)
                if self.out_len >= READ_CHUNK_BYTES:
                    yield self._handed_on()
        finally:
            inflater.close()
            pieces.close()
        if self.out:
            yield self._handed_on()
        check_integrity(member, self.offset, self.crc)
        self.points = self._finished_points()

    def _feed(self, inflater: BlockInflater, piece: bytes | None) -> None:
        """The next compressed piece to zlib, hashed on the way."""
        self.exhausted = piece is None
        inflater.feed(piece or b"")
        if piece:
            self.fed = [*self.fed[-1:], (self.hasher.copy(), self.pos, piece)]
            self.hasher.update(piece)
            self.pos += len(piece)

    def _check(self, code: int, inflater: BlockInflater) -> None:
        """zlib's return code as our exceptions."""
        if code == Z_MEM_ERROR:
            raise MemoryError("zlib could not allocate its inflate state")
        if code not in (Z_OK, Z_STREAM_END):
            # Out of input and no progress (Z_BUF_ERROR): the stream stops short.
            reason = (inflater.strm.msg or b"zlib error %d" % code).decode(errors="replace")
            detail = (
                "the deflate stream is truncated"
                if code == Z_BUF_ERROR and self.exhausted
                else f"cannot inflate ({reason})"
            )
            raise CorruptArchive(f"{self.member.path}: corrupt archive, {detail}")

    def _took(self, text: bytes) -> None:
        """Account for inflated text: offset, CRC, window, and the text behind candidates."""
        self.out.append(text)
        self.out_len += len(text)
        self.offset += len(text)
        self.crc = isal_zlib.crc32(text, self.crc)
        self.window += text
        if len(self.window) > 2 * WINDOW_BYTES:
            del self.window[:-WINDOW_BYTES]
        if self.recent:
            self.history.append(text)
            self.history_bytes += len(text)

    def _note_boundary(self, inflater: BlockInflater, base_in: int) -> None:
        """Keep a block boundary zlib stopped at as a candidate point; forget old ones."""
        state = inflater.strm.data_type
        # A boundary, not inside the last block, and not at the same text offset as the
        # previous one (a sync flush's empty block): it would only crowd that one out.
        fresh = not self.recent or self.recent[-1].offset != self.offset
        if state & 128 and not state & 64 and fresh:
            if not self.recent:
                self.history.clear()
                self.history_bytes = 0
            point = AccessPoint(
                base_in + inflater.strm.total_in,
                state & 7,
                self.offset,
                self.crc,
                bytes(self.window[-WINDOW_BYTES:]),
            )
            self.recent.append(point)
            self.anchors[point.compressed_offset] = tuple(self.fed)
        # Keep the text behind the candidates short: the last few boundaries, within
        # POINT_TAIL_BYTES of text (a stream of huge blocks keeps none).
        while self.recent and (
            len(self.recent) > ACCESS_POINTS_KEPT or self.history_bytes > POINT_TAIL_BYTES
        ):
            self.anchors.pop(self.recent.popleft().compressed_offset, None)
            drop_to = self.recent[0].offset if self.recent else self.offset
            while (
                self.history and self.offset - self.history_bytes + len(self.history[0]) <= drop_to
            ):
                self.history_bytes -= len(self.history.popleft())

    def _handed_on(self) -> bytes:
        """The text inflated since the last hand-over, as one piece."""
        text = b"".join(self.out)
        self.out, self.out_len = [], 0
        return text

    def _finished_points(self) -> list[AccessPoint]:
        """The candidates kept, each with the hashes a later run checks it by."""
        text_start = self.offset - self.history_bytes
        for point in self.recent:
            tail = blake3.blake3()
            at = text_start
            for text in self.history:
                if at + len(text) > point.offset:
                    tail.update(memoryview(text)[max(point.offset - at, 0) :])
                at += len(text)
            point.tail_blake3 = tail.hexdigest()
            if point.compressed_offset in self.anchors:
                anchor = self.anchors[point.compressed_offset]
                point.compressed_blake3 = anchored_digest(point, anchor)
        return list(self.recent)


def anchored_digest(point: AccessPoint, pieces: tuple[tuple[Any, int, bytes], ...]) -> str:
    """CompressedPrefix.digest_at, from the hash state of a piece read on the way."""
    whole = point.compressed_offset - 1 if point.bits else point.compressed_offset
    state, at, piece = next(p for p in reversed(pieces) if p[1] <= whole)
    state = state.copy()
    state.update(piece[: whole - at])
    if point.bits:  # only the low 8 - bits bits of the last byte precede the boundary
        state.update(bytes([piece[whole - at] & (0xFF >> point.bits)]))
    return state.hexdigest()


class TrackedStored(TrackedRead):
    """A stored member read from its start or from an access point: its text is its bytes.

    The same interface as TrackedInflate. Any byte of a stored member is a point (a seek:
    no window or bits needed to go on), so the one point kept is the member's end, where
    the next day's new text starts. The bytes are hashed as they are read, from the hash
    state `prefix` holds at the start, so a resumed read hashes each byte once.
    """

    def __init__(
        self,
        member: Member,
        start: AccessPoint | None = None,
        prefix: CompressedPrefix | None = None,
    ) -> None:
        self.member, self.start, self.prefix = member, start, prefix

    def __iter__(self) -> Iterator[bytes]:
        member, start = self.member, self.start
        if member.method != zipfile.ZIP_STORED:
            raise CorruptArchive(f"{member.path}: not a stored member, cannot seek into it")
        pos = crc = 0
        window = b""
        if start is not None:
            if start.bits or start.compressed_offset != start.offset:
                raise CorruptArchive(f"{member.path}: access point out of range, cannot resume")
            pos, crc, window = start.offset, start.crc32, start.window
        hasher = (self.prefix or CompressedPrefix(member)).state_at(pos)
        for piece in compressed_pieces(member, pos):
            hasher.update(piece)
            crc = isal_zlib.crc32(piece, crc)
            pos += len(piece)
            window = (window + piece)[-WINDOW_BYTES:]
            yield piece
        check_integrity(member, pos, crc)
        end = AccessPoint(pos, 0, pos, crc, window, hasher.hexdigest(), blake3.blake3().hexdigest())
        self.points = [end]
