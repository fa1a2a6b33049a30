"""Benchmark: incremental processing of cumulative daily feeds versus full reprocessing.

For one client and day N (the rules: docs/spec.md, sections 2 to 5):

1. bring the client's incremental state in SQLite to exactly days 1..N-1,
2. time the baseline (recompute everything from the day-N archive, full refresh)
   and the incremental pipeline (only the rows past the checkpoint, merged into
   ``processed_sales``), each run in a fresh process from a copy of that state,
3. check parity between the two answers (timed apart),
4. leave the database holding day N, write ``--json`` and render ``results.md``.

The file reads in the order data flows; a banner opens each section. ``main()`` at
the bottom calls ``run_benchmark``, which reads as the seven steps of a run.

Example::

    python main.py                                    # client_1, day 10, 5 repeats
    python main.py --client client_2 --day 4 --repeat 3
    python -m memory_profiler main.py                 # plus line-by-line memory tables
"""

from __future__ import annotations

import argparse
import builtins
import collections
import contextlib
import csv
import ctypes
import ctypes.util
import datetime as dt
import fcntl
import functools
import io
import json
import os
import platform
import queue
import re
import resource
import shutil
import signal
import sqlite3
import statistics
import struct
import subprocess
import sys
import tempfile
import threading
import time
import zipfile
import zlib
from collections.abc import Callable, Iterable, Iterator
from dataclasses import asdict, dataclass, field, replace
from itertools import chain
from pathlib import Path
from typing import Any, ClassVar

# Polars allocates through jemalloc, whose arenas (several per core by default) each keep
# pages freed by their threads for reuse. One arena shares them: the baseline's peak went
# from 219 to 162 MiB (8 MiB blocks), with no time difference above the noise.
# Set before Polars loads (and inherited by the measured workers); a user's own setting wins.
os.environ.setdefault("_RJEM_MALLOC_CONF", "narenas:1")

import blake3
import numpy as np
import polars as pl
from isal import isal_zlib

# === Configuration: every option, constant and exception =========================================


@dataclass(frozen=True)
class BenchConfig:
    """What one benchmark run measures; every field is a command-line option."""

    data_dir: Path = Path("data")
    db: Path = Path("poc_database.db")
    client: str = "client_1"
    day: int = 10
    repeat: int = 5
    report: Path = Path("results.md")
    json_path: Path | None = None
    sweep: bool = True  # also run both pipelines on every day 2..N-1 for the chart
    peers: bool = True  # also measure the peers (DuckDB, the by-date shortcut) on day N


COLUMNS = [
    "transaction_id",
    "transaction_date",
    "sku_id",
    "quantity_sold",
    "revenue_usd",
    "maturity_date",
    "zip_code_raw",
]
KEY = ["client_id", "transaction_date", "maturity_date", "sku_group", "local"]
UNKNOWN_ZIP = "00000"
UNKNOWN_SKU_GROUP = "UNKNOWN"
LOCAL_STATE = "CA"
MATURITY_DEFAULT_DAYS = 3  # imputed maturity_date = transaction_date + 3 days
ISO_DATE = r"^[0-9]{4}-[0-9]{2}-[0-9]{2}$"  # ASCII digits: \d would take any script's
READ_CHUNK_BYTES = 1 << 20  # compressed bytes read at once; text handed on at once
INFLATE_OUT_BYTES = 256 << 10  # text inflated per call at most
PREFETCH_CHUNKS = 4  # inflated chunks a read may run ahead of the parse (at most 4 MiB each)
WINDOW_BYTES = 32 << 10  # deflate back-references reach 32 KiB back
POINT_TAIL_BYTES = 8 << 20  # access points are kept only this close to the stream's end
ACCESS_POINTS_KEPT = 3  # block boundaries kept per client: appending a day rewrites the
# last one or two blocks of the stream, so the latest boundary may not survive it
# Text parsed at once, at least: a block is cut at the last record end once this much has
# gathered (ISA-L hands text over a few MiB at a time, so blocks run larger). It bounds
# memory: a block's text, its frame and the transformation's columns are what a whole
# read holds; larger blocks cost memory and gained no time (docs/design.md, Memory).
BLOCK_BYTES = 8 << 20
SUB_BLOCK_BYTES = 1 << 20  # a block that fails Polars' reader is retried in pieces this big
QUOTE, COMMA, CR, LF = b'",\r\n'  # the bytes the quote check looks at around each quote
HEADER_BYTES = 64 << 10  # text read for the header record
BOM = b"\xef\xbb\xbf"  # the UTF-8 byte-order mark Excel writes before a CSV
INSERT_ROWS = 1_000  # rows per INSERT statement of every write (write_pandas)
REJECT_LIMIT = 0.01  # more than 1% of a file's new rows rejected: stop, change nothing
MEMORY_SAMPLE_S = 0.005  # memory_profiler sampling interval (10 ms or less)
PAGE_BYTES = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096
STAGES = ("read", "verify", "parse", "transform", "write")  # of a pipeline call, in order
# A cost did not grow with history when its slope against the rows in the archive is
# under this share of the baseline's (a least-squares fit over every sweep day, so one
# noisy day moves it little).
FLAT_SHARE = 0.1
SCRATCH_PREFIX = ".bench-"  # + the database's name: a run's scratch folder beside it
Say = Callable[[str], None]  # where a run reports progress and findings, a line at a time
Z_NO_FLUSH, Z_OK, Z_STREAM_END, Z_MEM_ERROR, Z_BUF_ERROR, Z_BLOCK = 0, 0, 1, -4, -5, 5
FLOOR_TRIES = 3  # each floor is the median of this many timed calls, after a warm one
COUNTERS = [
    "zip_missing",
    "zip_international",
    "zip_repaired",
    "zip_unknown",
    "maturity_imputed",
    "maturity_clamped",
    "sku_unmatched",
    "rows_rejected",
]
# The parse stage's rows: where each record starts, its seven fields as text, and for a
# record that cannot be a row at all, why (then its raw text is kept for rejected_rows).
PARSED_SCHEMA = {
    "line_number": pl.Int64,
    **dict.fromkeys(COLUMNS, pl.String),
    "reason": pl.String,
    "raw_line": pl.String,
}
# processed_sales (docs/spec.md section 3): each column's SQLite type and its Polars type
# read back. Everything else about the table (its DDL, the parity reader) derives from this.
SALES_TABLE: dict[str, tuple[str, Any]] = {
    "client_id": ("TEXT", pl.String),
    "transaction_date": ("TEXT", pl.String),  # ISO YYYY-MM-DD
    "maturity_date": ("TEXT", pl.String),
    "sku_group": ("TEXT", pl.String),
    "local": ("INTEGER", pl.Int64),  # 0/1
    "total_quantity": ("INTEGER", pl.Int64),
    "total_revenue": ("REAL", pl.Float64),
    "order_count": ("INTEGER", pl.Int64),
    "avg_quantity_per_order": ("REAL", pl.Float64),
    "avg_order_value": ("REAL", pl.Float64),
    "days_to_maturity": ("INTEGER", pl.Int64),
    "revenue_share_of_day": ("REAL", pl.Float64),
    "revenue_rank": ("INTEGER", pl.Int64),
}
SALES_SCHEMA = {column: polars for column, (_, polars) in SALES_TABLE.items()}
SALES_COLUMNS = ", ".join(
    [
        *(f"{column} {sql} NOT NULL" for column, (sql, _) in SALES_TABLE.items()),
        f"PRIMARY KEY ({', '.join(KEY)})",
    ]
)
REJECTED_COLUMNS = """
    client_id TEXT NOT NULL,
    day INTEGER NOT NULL,
    line_number INTEGER NOT NULL,
    reason TEXT NOT NULL,
    raw_line TEXT,
    PRIMARY KEY (client_id, line_number)
"""
TABLES = {
    # The incremental pipeline's state: results, rejected rows, checkpoint.
    "processed_sales": SALES_COLUMNS,
    "rejected_rows": REJECTED_COLUMNS,
    "ingest_checkpoint": """
        client_id TEXT PRIMARY KEY,
        last_day INTEGER NOT NULL,
        bytes_processed INTEGER NOT NULL,
        lines_processed INTEGER NOT NULL,
        prefix_blake3 TEXT NOT NULL,
        last_transaction_date TEXT,
        updated_at TEXT NOT NULL,
        piece_ends TEXT,
        open_quote INTEGER
    """,
    # Where the next run can resume inflating the client's archive (AccessPoint).
    "ingest_access_points": """
        client_id TEXT NOT NULL,
        compressed_offset INTEGER NOT NULL,
        bits INTEGER NOT NULL,
        csv_offset INTEGER NOT NULL,
        crc32 INTEGER NOT NULL,
        window BLOB NOT NULL,
        compressed_blake3 TEXT NOT NULL,
        tail_blake3 TEXT NOT NULL,
        PRIMARY KEY (client_id, compressed_offset)
    """,
    # The baseline's full refresh: same schema, so both pipelines pay for a write.
    "processed_sales_full_refresh": SALES_COLUMNS,
    "rejected_rows_full_refresh": REJECTED_COLUMNS,
}
CLUSTERED_TABLES = ("processed_sales", "processed_sales_full_refresh")
STATE_TABLES = ("processed_sales", "rejected_rows", "ingest_checkpoint", "ingest_access_points")
FULL_REFRESH_TABLES = ("processed_sales_full_refresh", "rejected_rows_full_refresh")


class InputError(Exception):
    """Unusable input (missing or corrupt archive, bad header...): exit 2, nothing changed."""


class StaleDayError(InputError):
    """The incremental step was asked for a day older than its checkpoint."""


class CorruptArchive(InputError):
    """The member's compressed stream cannot be inflated, or its CRC-32 or size is wrong."""


class Restated(Exception):
    """The archive does not start with the bytes already processed."""


class WorkerError(Exception):
    """A measured run crashed in its own process (a bug, not bad input): exit 1."""


class BusyError(Exception):
    """Another main.py run holds the database: exit 1, nothing changed."""


class ConflictError(Exception):
    """Another writer advanced the same client's checkpoint meanwhile: exit 1, nothing written."""


# === Zip members: where a day's CSV lies in its archive, and inflating it whole ==================


def archive_path(data_dir: Path, client: str, day: int) -> Path:
    """Where day `day`'s archive of `client` lives."""
    return data_dir / client / f"transactions_day_{day}.zip"


@dataclass(frozen=True)
class Member:
    """Where a day archive's CSV member lies in its file (from the zip central directory)."""

    path: Path
    name: str
    data_start: int  # file offset of the compressed data
    compressed_size: int
    size: int  # of the CSV
    crc: int
    method: int  # zipfile.ZIP_DEFLATED, ZIP_STORED, ...


def locate_member(path: Path, day: int) -> Member:
    """Find the CSV member of a day archive, turning every failure into one clear line."""
    name = f"transactions_day_{day}.csv"
    try:
        with zipfile.ZipFile(path) as zf:
            names = zf.namelist()
            if name not in names:
                raise InputError(f"{path}: no member {name} (archive holds: {', '.join(names)})")
            info = zf.getinfo(name)
            if info.flag_bits & 0x1:
                raise InputError(f"{path}: cannot open {name} (it is encrypted)")
            with path.open("rb") as f:
                f.seek(info.header_offset)
                local = f.read(30)
        if len(local) < 30 or local[:4] != b"PK\x03\x04":
            raise InputError(f"{path}: corrupt or not a zip archive (bad local header of {name})")
        name_len, extra_len = struct.unpack("<HH", local[26:30])
    except FileNotFoundError:
        raise InputError(f"{path}: archive not found") from None
    except zipfile.BadZipFile as exc:
        raise InputError(f"{path}: corrupt or not a zip archive ({exc})") from None
    except OSError as exc:
        raise InputError(f"{path}: cannot read ({exc.strerror or exc})") from None
    return Member(
        path=path,
        name=name,
        data_start=info.header_offset + 30 + name_len + extra_len,
        compressed_size=info.compress_size,
        size=info.file_size,
        crc=info.CRC,
        method=info.compress_type,
    )


@contextlib.contextmanager
def open_member(member: Member) -> Iterator[Any]:
    """The CSV member as a zipfile stream (any compression method zipfile knows)."""
    path = member.path
    try:
        with zipfile.ZipFile(path) as zf, zf.open(member.name) as stream:
            yield stream
    except zipfile.BadZipFile as exc:
        raise CorruptArchive(f"{path}: corrupt archive, cannot inflate ({exc})") from None
    except (zlib.error, EOFError) as exc:
        raise CorruptArchive(f"{path}: corrupt archive, cannot inflate ({exc})") from None
    except (RuntimeError, NotImplementedError) as exc:  # unsupported method
        raise InputError(f"{path}: cannot open {member.name} ({exc})") from None
    except OSError as exc:
        raise InputError(f"{path}: cannot read ({exc.strerror or exc})") from None


def compressed_pieces(member: Member, start: int = 0, limit: int | None = None) -> Iterator[bytes]:
    """The member's compressed bytes from `start` (`limit` of them), in READ_CHUNK_BYTES pieces."""
    try:
        with member.path.open("rb") as f:
            f.seek(member.data_start + start)
            left = member.compressed_size - start
            if limit is not None:
                left = min(left, limit)
            while left > 0:
                piece = f.read(min(READ_CHUNK_BYTES, left))
                if not piece:
                    raise CorruptArchive(
                        f"{member.path}: corrupt archive, truncated ({left:,} bytes missing)"
                    )
                left -= len(piece)
                yield piece
    except OSError as exc:
        raise InputError(f"{member.path}: cannot read ({exc.strerror or exc})") from None


def member_byte(member: Member, offset: int) -> int:
    """One byte of the member's compressed data."""
    return next(compressed_pieces(member, offset, 1), b"\0")[0]


def check_integrity(member: Member, size: int, crc: int) -> None:
    """What zipfile checks at the end of a member: its size and CRC-32."""
    if size != member.size:
        raise CorruptArchive(
            f"{member.path}: corrupt archive, inflated {size:,} bytes where the zip directory"
            f" says {member.size:,}"
        )
    if crc != member.crc:
        raise CorruptArchive(f"{member.path}: CRC-32 mismatch, the archive is corrupt")


def inflate_all(member: Member) -> Iterator[bytes]:
    """The whole CSV, inflated with ISA-L (the fastest inflater measured here; README).

    Members stored with another method than deflate go through zipfile, which checks
    their CRC itself.
    """
    if member.method != zipfile.ZIP_DEFLATED:
        with open_member(member) as stream:
            while chunk := stream.read(READ_CHUNK_BYTES):
                yield chunk
        return
    inflater = isal_zlib.decompressobj(-15)
    size = crc = 0
    try:
        for piece in compressed_pieces(member):
            # Bounded output per call: a megabyte of zeros may inflate to a gigabyte.
            while piece and not inflater.eof:
                out = inflater.decompress(piece, INFLATE_OUT_BYTES * 16)
                piece = inflater.unconsumed_tail
                size += len(out)
                crc = isal_zlib.crc32(out, crc)
                yield out
            if inflater.eof:
                break  # bytes after the end of the stream: ignored, as zipfile does
        if not inflater.eof:  # the input is all in: take what the inflater still owes
            out = inflater.flush()
            size += len(out)
            crc = isal_zlib.crc32(out, crc)
            yield out
    except isal_zlib.error as exc:
        raise CorruptArchive(f"{member.path}: corrupt archive, cannot inflate ({exc})") from None
    if not inflater.eof:
        raise CorruptArchive(f"{member.path}: corrupt archive, the deflate stream is truncated")
    check_integrity(member, size, crc)


# === Resumable deflate: zlib through ctypes and access points (nothing of CSV or SQLite) =========


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

    BLAKE3 rather than SHA-256: the 26 MB of a day-10 archive hash in 6 ms against 15
    here, and it is as sound a proof: a changed history passes only through a collision
    of a cryptographic hash (a faster non-cryptographic one, such as xxh3, gives no such
    guarantee against a feed crafted or damaged to match).

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


class TrackedInflate:
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
        self.points: list[AccessPoint] | None = None

    def access_points(self) -> list[AccessPoint]:
        """The boundaries kept for the next run; only once the stream is inflated whole."""
        if self.points is None:
            raise RuntimeError(f"{self.member.path}: access points asked before the stream's end")
        return self.points

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


# === Line blocks and fingerprints: the CSV text in blocks of whole records =======================


@dataclass
class ReadPlan:
    """Where a read starts, what it must verify before trusting the rest, and how it hashes.

    The fingerprint of a client's processed CSV is a BLAKE3 chain over the pieces in
    which it was processed: d1 = blake3(piece 1), dk = blake3(d(k-1) + piece k). One
    piece read whole gives the plain BLAKE3 of the file, so a checkpoint stored
    without piece ends (one piece) verifies as one.
    """

    base: int = 0  # CSV offset of the first inflated byte
    skip: int = 0  # bytes already processed: verified, never yielded
    check_ends: list[int] = field(default_factory=list)  # piece ends in [base, skip]
    check_digest: str | None = None  # expected chain digest at skip (None: no check)
    prior_ends: list[int] = field(default_factory=list)  # the checkpoint's piece ends
    prior_digest: str | None = None  # the checkpoint's fingerprint
    hashing: bool = False  # compute the fingerprint (the incremental path)
    ends_line: bool = True  # whether the processed bytes end with a newline, when base == skip
    open_quote: bool = False  # whether they end inside a quoted field (a record still open)


class ChainHasher:
    """The fingerprint chain of ReadPlan, fed from CSV offset `pos` on."""

    def __init__(self, ends: list[int], pos: int) -> None:
        self.ends = collections.deque(e for e in ends if e > pos)
        self.pos = pos
        self.state = blake3.blake3()
        self.digest = blake3.blake3().hexdigest() if not self.ends else None

    def update(self, data: memoryview) -> None:
        while self.ends and self.pos + len(data) >= self.ends[0]:
            cut = self.ends.popleft() - self.pos
            self.state.update(data[:cut])
            self.pos += cut
            data = data[cut:]
            raw = self.state.digest()
            self.digest = raw.hex()
            self.state = blake3.blake3(raw)
        self.state.update(data)
        self.pos += len(data)


@dataclass(frozen=True)
class Header:
    """The feed's header record: its columns, and what it says of the file's dialect."""

    columns: tuple[str, ...]  # every column, in the file's order
    length: int  # bytes before the first data record (byte-order mark and line end included)
    lines: int  # lines the header spans (1, unless a quoted name holds a line end)
    bom: bool  # the file starts with a UTF-8 byte-order mark
    crlf: bool  # the header ends with CRLF
    quoted: bool  # the header's first field is quoted

    @property
    def extras(self) -> list[str]:
        """Columns the rules do not use: read past, never an error."""
        return [c for c in self.columns if c not in COLUMNS]

    def dialect(self) -> dict[str, Any]:
        """How the file is written, for the report."""
        return {
            "bom": self.bom,
            "line_end": "CRLF" if self.crlf else "LF",
            "header_quoted": self.quoted,
            "columns_in_order": list(self.columns[: len(COLUMNS)]) == COLUMNS,
            "extra_columns": self.extras,
        }


def read_header(path: Path, first: bytes) -> Header:
    """The header record from the first bytes of a CSV; one clear error if it is unusable."""
    bom = first.startswith(BOM)
    start = len(BOM) if bom else 0
    end = first.find(b"\n", start)
    while end >= 0 and quote_toggles(first, start, end) % 2:  # a newline inside quotes
        end = first.find(b"\n", end + 1)
    if end < 0:
        raise InputError(f"{path}: no header line (first {len(first):,} bytes hold no record end)")
    record = first[start:end]
    crlf = record.endswith(b"\r")
    text = record.removesuffix(b"\r").decode("utf-8", "replace")
    try:
        names = [n.strip() for n in next(csv.reader([text], strict=True))]
    except (csv.Error, StopIteration) as exc:
        raise InputError(f"{path}: the header is not a CSV record ({exc})") from None
    missing = [c for c in COLUMNS if c not in names]
    doubled = sorted({c for c in COLUMNS if names.count(c) > 1})
    if missing or doubled:
        problem = f"lacks column(s) {missing}" if missing else f"repeats column(s) {doubled}"
        raise InputError(f"{path}: the header {problem} (found: {', '.join(names)})")
    lines = record.count(b"\n") + 1
    return Header(tuple(names), end + 1, lines, bom, crlf, record.startswith(b'"'))


def member_header(member: Member) -> Header:
    """A day archive's header, from the first bytes of its CSV member."""
    with open_member(member) as stream:
        return read_header(member.path, stream.read(HEADER_BYTES))


def quote_toggles(data: bytes | bytearray, start: int, end: int) -> int:
    """Quotes in data[start:end]: each one opens or closes quoting, as for RFC 4180 readers.

    In a well-formed file quotes come in pairs around a field (a doubled quote inside
    one closes and reopens it), so a line end ends a record exactly when the quotes
    before it, from the record's start, are even. An odd quote (94"107) leaves the
    quoting open up to the next quote: the lines between belong to one record, which
    is then rejected as broken quoting.
    """
    return data.count(b'"', start, end)


def last_record_end(data: bytes | bytearray, start: int = 0) -> int:
    """Just past the last line end in data[start:] that ends a record; 0 if none does.

    data[start] must begin a record. A newline ends one when the quotes since that
    record's start open and close evenly; inside a quoted field it is part of the field.
    """
    cut = data.rfind(b"\n", start)
    if cut < 0 or data.find(b'"', start, cut) < 0:
        return cut + 1
    inside = quote_toggles(data, start, cut) % 2
    while inside:
        before = data.rfind(b"\n", start, cut)
        if before < 0:
            return 0
        inside ^= quote_toggles(data, before, cut) % 2
        cut = before
    return cut + 1


def prefetched(chunks: Iterable[bytes], depth: int = PREFETCH_CHUNKS) -> Iterator[bytes]:
    """The chunks of `chunks`, produced on a thread up to `depth` chunks ahead of the caller.

    Both inflaters (ISA-L, and zlib through ctypes) release the GIL, so the next text
    inflates while Polars parses the block before it. An error in the producer is
    raised here, in the caller; when the caller stops early (or fails), the producer is
    stopped and joined before this generator closes, and `chunks` is closed with it.
    """
    handoff: queue.Queue[Any] = queue.Queue(depth)
    stop = threading.Event()
    done = object()

    def hand(item: Any) -> bool:
        """Put one item in the queue unless the caller has gone; whether it went."""
        while not stop.is_set():
            with contextlib.suppress(queue.Full):
                handoff.put(item, timeout=0.05)
                return True
        return False

    def produce() -> None:
        try:
            for chunk in chunks:
                if not hand(chunk):
                    return
            hand(done)
        except BaseException as exc:  # re-raised in the caller's thread
            hand(exc)

    thread = threading.Thread(target=produce, name="inflate", daemon=True)
    thread.start()
    try:
        while (item := handoff.get()) is not done:
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        stop.set()
        # Empty the queue, so a producer waiting to hand a chunk over sees the stop now.
        with contextlib.suppress(queue.Empty):
            while True:
                handoff.get_nowait()
        thread.join()
        if hasattr(chunks, "close"):  # a generator the producer left suspended
            chunks.close()


class LineBlocks:
    """The CSV text past `plan.skip` in blocks of whole records, and what reading it learned.

    Blocks hold complete records, at least BLOCK_BYTES each but the last (which may lack
    its final line end), so no pipeline holds more than a block of text and its frames,
    plus the PREFETCH_CHUNKS pieces inflated ahead; a line end inside a quoted field
    never cuts a block. From the CSV's start, the header
    (`header.length` bytes) is dropped. With `plan.check_digest`, Restated is raised
    before any block is handed on when the bytes from `plan.base` to `plan.skip` are
    not the ones processed before. Once every block has been taken: `size` (bytes of
    the whole CSV), `open_quote` (whether it ends inside a quoted field), `quoted`
    (whether the new text holds any quote) and, when `plan.hashing`, the new
    `fingerprint` and its piece `ends`; `inflated` counts the bytes taken from the
    inflater at any time (a read stopped early leaves uncounted what was inflated ahead).
    """

    def __init__(self, path: Path, chunks: Iterable[bytes], plan: ReadPlan, header: Header) -> None:
        self.path, self.chunks, self.plan, self.header = path, chunks, plan, header
        self.size = 0
        self.inflated = 0
        self.open_quote = plan.open_quote
        self.quoted = False
        self.fingerprint: str | None = None
        self.ends: list[int] = []
        self.checker = ChainHasher(plan.check_ends, plan.base) if plan.check_digest else None
        self.fresh = None
        if plan.hashing:
            prior = bytes.fromhex(plan.prior_digest) if plan.prior_digest else b""
            self.fresh = blake3.blake3(prior)
        self.verified = self.checker is None
        self.ends_line = plan.ends_line
        # Text before this offset is never handed on: what was processed, and the header.
        self.emit_from = max(plan.skip, header.length) if plan.base == 0 else plan.skip

    def __iter__(self) -> Iterator[bytes]:
        # Closed with this generator, so a read stopped early stops its inflating thread.
        with contextlib.closing(prefetched(self.chunks)) as chunks:
            yield from self._blocks(chunks)

    def _blocks(self, chunks: Iterator[bytes]) -> Iterator[bytes]:
        """Cut the text into blocks of whole records, checking and hashing it on the way."""
        parts: list[bytes] = []  # the text not handed on yet, as it came: joined once
        size = 0
        limit = BLOCK_BYTES  # doubled while no record ends (a quote left open), so the
        # text is joined and searched O(log n) times, not once per chunk
        # Blocks leave through this list, so that the generator keeps no reference to a
        # block while the pipeline works on it: one copy of the text in memory, not two.
        ready: list[bytes] = []
        pos = self.plan.base
        for chunk in chunks:
            part = self._new_part(chunk, pos)
            pos += len(chunk)
            self.inflated += len(chunk)
            del chunk
            if part:
                parts.append(part)
                size += len(part)
            if size >= limit:
                pending = self._verify(b"".join(parts))
                parts.clear()
                cut = last_record_end(pending)
                parts.append(pending[cut:])
                size = len(parts[0])
                limit = BLOCK_BYTES if cut else 2 * size
                if cut:
                    ready.append(pending[:cut] if cut < len(pending) else pending)
                    del pending
                    self.quoted = self.quoted or b'"' in ready[-1]
                    yield ready.pop()
        if pos < self.plan.skip:
            raise Restated(
                f"{self.path}: shorter than the {self.plan.skip:,} bytes already processed"
            )
        tail = self._verify(b"".join(parts))
        parts.clear()
        self._finish(pos, tail)
        if tail:
            ready.append(tail)
            del tail
            yield ready.pop()

    def _new_part(self, chunk: bytes, pos: int) -> bytes:
        """Hash a chunk at CSV offset `pos`; return its part past the processed bytes."""
        skip = self.plan.skip
        split = min(max(skip - pos, 0), len(chunk))  # already-processed bytes in this chunk
        keep_from = min(max(self.emit_from - pos, 0), len(chunk))
        with memoryview(chunk) as view:
            if self.checker is not None:
                self.checker.update(view[:split])
            if self.fresh is not None:
                self.fresh.update(view[split:])
        if split and pos + split == skip:
            self.ends_line = chunk[split - 1] == ord("\n")
        return chunk[keep_from:]

    def _verify(self, text: bytes) -> bytes:
        """Check the processed bytes once, before their continuation is used; the text to use."""
        if not self.verified:
            text = verify_resume(self.path, self.checker, self.plan, self.ends_line, text)
            self.verified = True
        return text

    def _finish(self, size: int, tail: bytes) -> None:
        """At the CSV's end: its size, its last record and its fingerprint."""
        plan = self.plan
        self.size = size
        if size > plan.skip:  # the tail starts a record: does it end inside quotes?
            self.quoted = self.quoted or b'"' in tail
            self.open_quote = self.quoted and bool(quote_toggles(tail, 0, len(tail)) % 2)
        if self.fresh is None:
            return
        if size > plan.skip or not plan.prior_digest:
            self.fingerprint, self.ends = self.fresh.hexdigest(), [*plan.prior_ends, size]
        else:  # nothing new: the fingerprint stays
            self.fingerprint, self.ends = plan.prior_digest, plan.prior_ends


def verify_resume(
    path: Path,
    checker: ChainHasher | None,
    plan: ReadPlan,
    ends_line: bool,
    tail: bytes,
) -> bytes:
    """Check the processed bytes before their continuation is used; the continuation to use.

    If the processed file ended inside its last line (no final newline), that line
    was processed whole: a newline now completes it and is dropped; anything else
    extended the line, which is a restatement. If it ended inside a quoted field, any
    continuation extends that record: a restatement too.
    """
    if checker is not None and checker.digest != plan.check_digest:
        raise Restated(f"{path}: the bytes already processed have changed")
    if plan.open_quote and tail:
        raise Restated(f"{path}: the last record processed (a quoted field left open) was extended")
    if not ends_line and tail:
        ending = re.match(rb"\r?\n", tail)
        if not ending:
            raise Restated(f"{path}: the last line processed was extended")
        return tail[ending.end() :]
    return tail


def scan_archive(path: Path, day: int) -> LineBlocks:
    """The whole CSV of a day archive in blocks of records, header dropped (the baseline's read)."""
    member = locate_member(path, day)
    return LineBlocks(path, inflate_all(member), ReadPlan(), member_header(member))


# === The shared transformation: parse, clean, count, aggregate (both pipelines) ==================


@dataclass(frozen=True)
class Lookups:
    """Static lookups, loaded once per process and shared by both pipelines."""

    zips: pl.DataFrame  # zip_code -> state (a key listed twice: its first row)
    skus: pl.DataFrame  # sku_id -> sku_group

    # Derived once, with the lookups (before any clock), for the transformation:
    zip_flags: pl.Series = field(init=False)  # see lookup_arrays
    groups: pl.Series = field(init=False)  # every sku_group, UNKNOWN_SKU_GROUP included
    sku_index: tuple[pl.Series, pl.Series] = field(init=False)  # sku_id, index in groups

    def __post_init__(self) -> None:
        for name, value in zip(
            ("zip_flags", "groups", "sku_index"), lookup_arrays(self.zips, self.skus), strict=True
        ):
            object.__setattr__(self, name, value)


def lookup_arrays(
    zips: pl.DataFrame, skus: pl.DataFrame
) -> tuple[pl.Series, pl.Series, tuple[pl.Series, pl.Series]]:
    """The lookups as the transformation uses them.

    `zip_flags`, indexed by a five-digit code read as a number: 1 if the code is
    listed, plus 2 if its state is LOCAL_STATE (a cleaned zip_code is always five
    ASCII digits, so one gather replaces a join on text; listed codes of another shape
    can match nothing). `groups`: every sku_group, UNKNOWN_SKU_GROUP included, rows
    group on an index into these. `sku_index`: each listed sku_id and the index of its
    group (null for a listed sku_id without a group: unmatched, as an absent one).
    """
    five = zips.filter(pl.col("zip_code").str.contains(r"^[0-9]{5}$"))
    flags = np.zeros(10**5, np.uint8)
    local = (five["state"] == LOCAL_STATE).fill_null(False).to_numpy()
    flags[five["zip_code"].cast(pl.UInt32).to_numpy()] = 1 + 2 * local
    groups = skus["sku_group"].drop_nulls().unique(maintain_order=True)
    if UNKNOWN_SKU_GROUP not in groups:
        groups = groups.append(pl.Series([UNKNOWN_SKU_GROUP]))
    index = pl.int_range(len(groups), eager=True, dtype=pl.UInt32)
    sku_index = skus["sku_group"].replace_strict(groups, index, default=None)
    return pl.Series("zip_flags", flags), groups, (skus["sku_id"], sku_index)


_LOOKUPS: dict[Path, Lookups] = {}


def load_lookups(data_dir: Path) -> Lookups:
    """Read (once per process) and validate the two static lookups."""
    if data_dir not in _LOOKUPS:
        static = data_dir / "static"
        zips = read_lookup(static / "us_zip_codes.csv", ["zip_code", "state"])
        skus = read_lookup(static / "sku_groups.csv", ["sku_id", "sku_group"])
        _LOOKUPS[data_dir] = Lookups(
            zips=zips.unique("zip_code", keep="first"),
            skus=skus.unique("sku_id", keep="first"),
        )
    return _LOOKUPS[data_dir]


def read_lookup(path: Path, columns: list[str]) -> pl.DataFrame:
    """One lookup CSV as strings, with the columns it must have."""
    try:
        frame = pl.read_csv(path, infer_schema=False)
    except FileNotFoundError:
        raise InputError(f"{path}: lookup file not found") from None
    except (pl.exceptions.PolarsError, OSError) as exc:
        raise InputError(f"{path}: cannot read lookup ({str(exc).splitlines()[0]})") from None
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        raise InputError(f"{path}: lookup lacks column(s) {missing}")
    return frame.select(columns)


@dataclass
class PipelineArtifacts:
    """What process_transactions returns to both pipelines."""

    aggregated: pl.DataFrame  # KEY + total_quantity, revenue_cents, order_count
    counters: dict[str, int]  # data-quality counters of docs/spec.md section 2
    latest_date: dt.date | None  # latest transaction_date among the rows processed
    rejected: pl.DataFrame  # line_number, reason, raw_line
    rows_read: int = 0  # records
    lines_read: int = 0  # lines they span (a quoted field may hold line ends)


def parse_block(
    block: bytes, first_line: int, header: Header, check_values: bool = True
) -> tuple[pl.DataFrame, int]:
    """Parse stage: the block's records as rows of raw fields, and the lines they span.

    Rows carry their line number (where the record starts), the seven fields as
    strings, a `reason` for records that cannot be rows at all and, for those, their
    raw text. Polars' CSV reader reads the block first; a block it cannot read, whose
    shape does not add up, or that holds a rejected record whose raw text the fields
    cannot give back, is cut into pieces of about SUB_BLOCK_BYTES, and the pieces that
    still fail are read record by record, so a bad record is rejected alone.
    `check_values=False` leaves the last check to the caller (block_artifacts), which
    learns of rejected values from the transformation anyway.
    """
    newlines = count_byte(block, LF)  # counted once: the lines spanned, and fast_parse's check
    lines = newlines + (1 if block and not block.endswith(b"\n") else 0)
    rows = fast_parse(block, first_line, header, newlines, check_values)
    if rows is None:
        parts = []
        for piece, line in pieces(block, first_line):
            part = fast_parse(piece, line, header)
            parts.append(part if part is not None else parse_records(piece, line, header))
        rows = pl.concat(parts) if parts else empty_rows()
    return rows, lines


def empty_rows() -> pl.DataFrame:
    """The parse stage's columns, without rows."""
    return pl.DataFrame(schema=PARSED_SCHEMA)


def raw_from_fields(data: bytes, header: Header) -> bool:
    """Whether a record's raw text can be rebuilt from its fields: only for unquoted
    records whose columns are the seven, in order."""
    return header.columns == tuple(COLUMNS) and b'"' not in data


def fast_parse(
    data: bytes,
    first_line: int,
    header: Header,
    newlines: int | None = None,
    check_values: bool = True,
) -> pl.DataFrame | None:
    """The records of `data` through Polars' CSV reader, or None where that is not exact.

    Polars pads a short record with empty fields and reads a blank line as a record
    of empties, so the shape is checked against the bytes: one line end per record
    (plus those inside fields) and one comma less than the columns per record (plus
    those inside fields). Any other trouble (broken quoting, a long record) makes the
    reader fail or the check differ. `newlines`: the line ends in `data`, if counted.
    """
    if not data:
        return empty_rows()
    quoted = b'"' in data
    if quoted and not quotes_well_placed(data):
        return None
    if b"\r" in data and lone_cr(data):
        return None  # a CR alone ends a line for Python's csv module, not for Polars
    names = [f"column_{i}" for i in range(len(header.columns))]
    frame = read_fields(data, names)
    if frame is None:
        return None
    records = frame.height
    ends = records - (0 if data.endswith(b"\n") else 1)
    if newlines is None:
        newlines = count_byte(data, LF)
    extra_lines = extra_commas = 0
    if quoted:  # line ends and commas inside quoted fields are not separators
        inner = [pl.col(n).str.count_matches(",", literal=True).sum() for n in names]
        extra_commas = sum(frame.select(inner).row(0))
        if newlines != ends:  # some field holds a line end: which record's lines are longer
            lines = (pl.col(n).str.count_matches("\n", literal=True) for n in names)
            frame = frame.with_columns(_lines=pl.sum_horizontal(lines))
            extra_lines = int(frame["_lines"].sum())
    if (
        newlines != ends + extra_lines
        or count_byte(data, COMMA) != records * (len(names) - 1) + extra_commas
    ):
        return None
    line = pl.int_range(pl.len(), dtype=pl.Int64) + first_line
    if extra_lines:  # a record starts below the lines its predecessors' fields span
        line += pl.col("_lines").cum_sum().shift(1, fill_value=0).cast(pl.Int64)
    rows = frame.select(
        line_number=line,
        **{c: pl.col(names[header.columns.index(c)]) for c in COLUMNS},
        reason=pl.lit(None, pl.String),
        raw_line=pl.lit(None, pl.String),
    )
    # A rejected row's raw text is rebuilt from its fields (raw_from_fields).
    if (
        check_values
        and (quoted or header.columns != tuple(COLUMNS))
        and rows.select(value_reason(typed_columns(rows)).is_not_null().any()).item()
    ):
        return None
    return rows


def read_fields(data: bytes, names: list[str]) -> pl.DataFrame | None:
    """Polars' reader on whole records, every field as text; None if it cannot read them.

    Strict UTF-8 first, as it is the faster read; text that is not valid UTF-8 is read
    again with U+FFFD in its place (the row is judged, not the file).
    """
    for encoding in ("utf8", "utf8-lossy"):
        with contextlib.suppress(pl.exceptions.PolarsError):
            return pl.read_csv(
                data,
                has_header=False,
                schema=dict.fromkeys(names, pl.String),
                encoding=encoding,
                empty_string_is_null=False,
                truncate_ragged_lines=False,
                raise_if_empty=False,
            )
    return None


# The quote check and the byte counts look at this much text at a time: their temporary
# arrays stay small enough for the processor's cache, whatever the block.
QUOTE_CHECK_BYTES = 1 << 20


def count_byte(data: bytes, byte: int) -> int:
    """How often `byte` occurs in `data`: numpy counts twice as fast as bytes.count here
    (97 MiB: 19 ms against 40). QUOTE_CHECK_BYTES at a time, so that its comparison
    never needs more than that much memory, whatever the block."""
    text = np.frombuffer(data, dtype=np.uint8)
    return sum(
        int(np.count_nonzero(text[start : start + QUOTE_CHECK_BYTES] == byte))
        for start in range(0, len(text), QUOTE_CHECK_BYTES)
    )


def quotes_well_placed(data: bytes) -> bool:
    """Whether every quote opens a field, closes one, or is doubled inside one.

    Polars reads `"941"07` or `"Bldg "B" 94107"` (text after a closing quote) without
    complaint, dropping quotes; Python's csv module, the exact path, rejects them. So
    a block goes to Polars only when its quotes are where RFC 4180 puts them, counted
    from the block's start (a record start): an opening quote (even count before it)
    follows a comma, a line end, another quote or the start; a closing one (odd) is
    followed by a comma, CR, LF, another quote or the end. Also false when the quotes
    are odd: a quoted field is left open.
    """
    text = np.frombuffer(data, dtype=np.uint8)
    last = len(text) - 1
    seen = 0
    for start in range(0, len(text), QUOTE_CHECK_BYTES):
        at = np.flatnonzero(text[start : start + QUOTE_CHECK_BYTES] == QUOTE) + start
        first = seen % 2  # whether this piece's first quote closes a field
        opening, closing = at[first::2], at[1 - first :: 2]
        seen += len(at)
        before = text[np.maximum(opening - 1, 0)]
        after = text[np.minimum(closing + 1, last)]
        starts = (before == COMMA) | (before == LF) | (before == QUOTE) | (opening == 0)
        ends = (after == COMMA) | (after == CR) | (after == LF) | (after == QUOTE)
        if not (starts.all() and (ends | (closing == last)).all()):
            return False
    return seen % 2 == 0


def lone_cr(data: bytes) -> bool:
    """Whether some CR in `data` is not followed by LF."""
    text = np.frombuffer(data, dtype=np.uint8)
    at = np.flatnonzero(text == CR)
    return bool(len(at)) and (at[-1] == len(text) - 1 or bool((text[at + 1] != LF).any()))


def pieces(block: bytes, first_line: int) -> Iterator[tuple[bytes, int]]:
    """The block in pieces of about SUB_BLOCK_BYTES that each hold whole records."""
    start, line = 0, first_line
    while start < len(block):
        size = SUB_BLOCK_BYTES
        end = len(block)
        while start + size < len(block):
            cut = last_record_end(block[start : start + size])
            if cut:
                end = start + cut
                break
            size *= 2  # one record longer than a piece: take a bigger one
        piece = block[start:end]
        yield piece, line
        line += piece.count(b"\n")
        start = end


def parse_records(data: bytes, first_line: int, header: Header) -> pl.DataFrame:
    """The records of `data` one by one (Python's csv module): the exact, slow path."""
    width = len(header.columns)
    where = [header.columns.index(c) for c in COLUMNS]
    out: dict[str, list] = {c: [] for c in PARSED_SCHEMA}
    line = first_line
    for record in split_records(data):
        text = record.removesuffix(b"\n").removesuffix(b"\r").decode("utf-8", "replace")
        fields, reason = record_fields(record, text, width)
        out["line_number"].append(line)
        for column, at in zip(COLUMNS, where, strict=True):
            out[column].append(fields[at] if fields else None)
        out["reason"].append(reason)
        out["raw_line"].append(text)  # kept for a rejected row, by values or by shape
        line += record.count(b"\n") + (0 if record.endswith(b"\n") else 1)
    return pl.DataFrame(out, schema=PARSED_SCHEMA)


def split_records(data: bytes) -> Iterator[bytes]:
    """The records of `data` (which starts at one), each with its line end if it has one."""
    start = 0
    while start < len(data):
        end = data.find(b"\n", start)
        while end >= 0 and quote_toggles(data, start, end) % 2:
            end = data.find(b"\n", end + 1)
        stop = len(data) if end < 0 else end + 1
        yield data[start:stop]
        start = stop


def record_fields(record: bytes, text: str, width: int) -> tuple[list[str] | None, str | None]:
    """A record's fields, or why it has none that can be used (its rejection reason)."""
    if not text:
        return None, "empty line"
    if quote_toggles(record, 0, len(record)) % 2:
        return None, "broken quoting: a quoted field is never closed"
    try:
        rows = list(csv.reader(io.StringIO(text, newline=""), strict=True))
    except csv.Error as exc:
        return None, f"broken quoting: {exc}"
    if len(rows) != 1:
        return None, "broken quoting: one record reads as several"
    if len(rows[0]) != width:
        return None, f"wrong column count: {len(rows[0])} instead of {width}"
    return rows[0], None


def dates(rows: pl.DataFrame, column: str) -> pl.Expr:
    """`column`'s text as dates, null where it is not a real date written YYYY-MM-DD.

    Each distinct text is judged once (a day's rows hold a few hundred distinct dates),
    then mapped onto the rows: cheaper than a pattern and a parse on every row.
    """
    texts = rows[column].unique().drop_nulls()
    valid = pl.when(texts.str.contains(ISO_DATE)).then(texts.str.to_date("%Y-%m-%d", strict=False))
    return pl.col(column).replace_strict(
        texts, pl.select(valid).to_series(), default=None, return_dtype=pl.Date
    )


def typed_columns(rows: pl.DataFrame) -> dict[str, pl.Expr]:
    """The three values a row needs to be aggregated, typed (null where they do not parse)."""
    revenue = pl.col("revenue_usd").cast(pl.Float64, strict=False)
    revenue = pl.when(revenue.is_finite()).then(revenue)
    return {
        "tx_date": dates(rows, "transaction_date"),
        "quantity": pl.col("quantity_sold").cast(pl.Int64, strict=False),
        "revenue_cents": (revenue * 100).round().cast(pl.Int64),
    }


# Why a record's values cannot be aggregated, by the typed column that is null.
VALUE_REASONS = {
    "tx_date": "transaction_date is not a valid YYYY-MM-DD date",
    "quantity": "quantity_sold is not an integer",
    "revenue_cents": "revenue_usd is not a number",
}


def value_reason(typed: dict[str, pl.Expr]) -> pl.Expr:
    """Why a record's values cannot be aggregated (null when they can)."""
    return (
        pl.when(typed["tx_date"].is_null())
        .then(pl.lit(VALUE_REASONS["tx_date"]))
        .when(typed["quantity"].is_null())
        .then(pl.lit(VALUE_REASONS["quantity"]))
        .when(typed["revenue_cents"].is_null())
        .then(pl.lit(VALUE_REASONS["revenue_cents"]))
    )


def typed_rows(rows: pl.DataFrame) -> pl.DataFrame:
    """Typed columns, the parsed maturity_date and a rejection reason (null for rows that
    parse). Materialised once: the aggregate and the rejected rows both start here."""
    typed = {name: pl.col(name) for name in ("tx_date", "quantity", "revenue_cents")}
    return (
        rows.lazy()
        .with_columns(**typed_columns(rows), maturity_parsed=dates(rows, "maturity_date"))
        .with_columns(reason=pl.coalesce("reason", value_reason(typed)))
        .collect()
    )


def cleaned_zips(raw: pl.Series) -> tuple[pl.Series, dict[str, int]]:
    """The ZIP rules of docs/spec.md section 2: per row the five digits found, as a
    number (null: none, so 00000), and the three ZIP counters.

    Most raw values are exactly five ASCII digits already (a length and a cast tell):
    those need no pattern. Only the others are searched, gathered apart and put back.
    """
    raw = raw.fill_null("")  # absent: as empty
    number = raw.cast(pl.UInt32, strict=False)
    plain = (raw.str.len_bytes() == 5) & number.is_not_null() & ~raw.str.starts_with("+")
    at = (~plain).arg_true()
    # Whitespace dropped (runs at once: the same text), the first five digits are found
    # by their byte offset (a search, cheaper than a capture) and cut out as bytes.
    text = pl.col("raw").str.replace_all(r"\s+", "")
    blank = text == ""  # empty or only whitespace (Unicode's, as \s is)
    start = text.str.find(r"[0-9]{5}")
    five = text.cast(pl.Binary).bin.slice(start, 5).cast(pl.String).cast(pl.UInt32)
    other = (
        pl.LazyFrame({"raw": raw.gather(at)})
        .select(
            five=five,
            zip_missing=blank,
            zip_international=~blank & start.is_null(),
            # Never exactly the five digits it holds (those are the rows above): repaired.
            zip_repaired=start.is_not_null(),
        )
        .collect()
    )
    counts = {c: int(other[c].sum()) for c in ("zip_missing", "zip_international", "zip_repaired")}
    return number.scatter(at, other["five"]), counts


def cleaned_rows(valid: pl.LazyFrame, lookups: Lookups) -> pl.LazyFrame:
    """Apply the cleaning rules of docs/spec.md section 2, with one flag column per counter.

    `sku` is the index of the row's sku_group in `lookups.groups` (null: unmatched) and
    `zip_flags` the code's entry in `lookups.zip_flags`.
    """
    tx = pl.col("tx_date")
    parsed_m = pl.col("maturity_parsed")
    maturity = parsed_m.fill_null(tx + pl.duration(days=MATURITY_DEFAULT_DAYS))
    sku_ids, sku_index = lookups.sku_index
    flags = pl.col("zip_flags")
    return valid.with_columns(
        maturity_imputed=parsed_m.is_null(),
        maturity_clamped=maturity < tx,
        maturity=pl.max_horizontal(maturity, tx),
        zip_flags=pl.lit(lookups.zip_flags).gather(pl.col("zip_int").fill_null(0)),
        sku=pl.col("sku_id").replace_strict(
            sku_ids, sku_index, default=None, return_dtype=pl.UInt32
        ),
    ).with_columns(
        zip_unknown=(flags & 1) == 0,
        local=(flags & 2) != 0,
        sku_unmatched=pl.col("sku").is_null(),
    )


# Rows group on two integers instead of four columns (a date, a date, a text, a flag):
# the transaction date in days shifted left past the days to maturity (under 2**DAY_BITS
# for any date of years 0000-9999), and the sku_group's index doubled plus `local`.
DAY_BITS = 23


def process_transactions(rows: pl.DataFrame, client: str, lookups: Lookups) -> PipelineArtifacts:
    """The one transformation both pipelines run: type, clean, count and aggregate.

    The typed rows are materialised once (the aggregate and the rejected rows both read
    them); the cleaning and the aggregate are one lazy query, whose counters are sums
    in the aggregate's own group_by (then summed over its groups), so the cleaned rows
    are passed over once.
    """
    typed = typed_rows(rows)
    bad = typed["reason"].is_not_null()
    rejected = typed.filter(bad).select(
        "line_number",
        "reason",
        raw_line=pl.coalesce("raw_line", pl.concat_str(COLUMNS, separator=","), pl.lit("")),
    )
    valid = typed.filter(~bad) if rejected.height else typed
    zip_int, zip_counts = cleaned_zips(valid["zip_code_raw"])
    clean = cleaned_rows(valid.lazy().with_columns(zip_int=zip_int), lookups)
    flags = [c for c in COUNTERS if c not in ("rows_rejected", *zip_counts)]
    tx = pl.col("tx_date")
    group = pl.col("sku").fill_null(lookups.groups.index_of(UNKNOWN_SKU_GROUP))
    counted = (
        clean.group_by(
            day_key=tx.cast(pl.Int64) * 2**DAY_BITS + (pl.col("maturity") - tx).dt.total_days(),
            group_key=group.cast(pl.UInt64) * 2 + pl.col("local").cast(pl.UInt64),
        )
        .agg(
            total_quantity=pl.col("quantity").sum(),
            revenue_cents=pl.col("revenue_cents").sum(),
            order_count=pl.len().cast(pl.Int64),
            **{c: pl.col(c).sum() for c in flags},
        )
        .collect()
    )
    totals = counted.select(pl.col(flags).sum())
    stats = {c: int(totals[c][0]) for c in flags} | zip_counts
    stats["rows_rejected"] = rejected.height
    day = (pl.col("day_key") // 2**DAY_BITS).cast(pl.Int32).cast(pl.Date)
    agg = counted.select(
        client_id=pl.lit(client, pl.String),
        transaction_date=day,
        maturity_date=day + pl.duration(days=pl.col("day_key") % 2**DAY_BITS),
        sku_group=pl.lit(lookups.groups).gather(pl.col("group_key") // 2),
        local=pl.col("group_key") % 2 == 1,
        total_quantity="total_quantity",
        revenue_cents="revenue_cents",
        order_count="order_count",
    )
    return PipelineArtifacts(
        aggregated=agg,
        counters={c: stats[c] for c in COUNTERS},
        latest_date=agg["transaction_date"].max(),
        rejected=rejected,
        rows_read=valid.height + rejected.height,
    )


def process_blocks(
    blocks: LineBlocks,
    first_line: int,
    client: str,
    lookups: Lookups,
    clock: Stopwatch,
    keep: pl.Expr | None = None,
) -> PipelineArtifacts:
    """Parse and transform block after block, then add the partial results up.

    Every output column is a sum (or a max), so blocks combine exactly; the stage
    clocks accumulate over the blocks. `keep`, if given, selects the parsed rows to
    process (a peer's shortcut; the pipelines process every row they read).
    """
    task = (client, lookups)
    parts = []
    # Closed on any error too: its read's inflating thread stops now, not whenever the
    # traceback that holds this frame goes.
    with contextlib.closing(iter(blocks)) as texts:
        while True:
            with clock.stage("read"):
                block = next(texts, None)
            if block is None:
                break
            handed = [block]
            del block  # block_artifacts holds the only reference, and lets go once it can
            parts.append(block_artifacts(handed, first_line, blocks.header, clock, keep, task))
            first_line += parts[-1].lines_read
    with clock.stage("transform"):
        if not parts:  # nothing new: an empty result with the right columns
            return process_transactions(empty_rows(), client, lookups)
        return parts[0] if len(parts) == 1 else combine(parts)


def block_artifacts(
    handed: list[bytes],
    first_line: int,
    header: Header,
    clock: Stopwatch,
    keep: pl.Expr | None,
    task: tuple[str, Lookups],
) -> PipelineArtifacts:
    """One block (alone in `handed`) parsed and transformed (`task`: the client and the
    lookups).

    The values are judged by the transformation, not again by the parse; where a
    record is rejected for them and its raw text cannot be rebuilt from its fields
    (raw_from_fields), the block is parsed again exactly, its raw text kept for
    rejected_rows.
    """
    block = handed.pop()
    exact = raw_from_fields(block, header)
    for check_values in (False, True):
        with clock.stage("parse"):
            rows, lines = parse_block(block, first_line, header, check_values)
            if exact:
                block = b""  # the text is in `rows` now, and no second parse needs it
            if keep is not None:
                rows = rows.filter(keep)
        with clock.stage("transform"):
            part = process_transactions(rows, *task)
        del rows
        values = part.rejected["reason"].is_in(list(VALUE_REASONS.values()))
        if exact or check_values or not values.any():
            break
    part.lines_read = lines
    return part


def sum_additive(frame: pl.DataFrame) -> pl.DataFrame:
    """Add up the additive columns of rows that share a key."""
    return frame.group_by(KEY).agg(
        pl.col("total_quantity").sum(), pl.col("revenue_cents").sum(), pl.col("order_count").sum()
    )


def combine(parts: list[PipelineArtifacts]) -> PipelineArtifacts:
    """One PipelineArtifacts from those of consecutive blocks."""
    aggregated = sum_additive(pl.concat([p.aggregated for p in parts]))
    latest = max((p.latest_date for p in parts if p.latest_date), default=None)
    return PipelineArtifacts(
        aggregated=aggregated,
        counters={c: sum(p.counters[c] for p in parts) for c in COUNTERS},
        latest_date=latest,
        rejected=pl.concat([p.rejected for p in parts]),
        rows_read=sum(p.rows_read for p in parts),
        lines_read=sum(p.lines_read for p in parts),
    )


def check_rejections(path: Path, artifacts: PipelineArtifacts, which: str) -> None:
    """Stop (changing nothing) when more than 1% of the rows read cannot be parsed.

    `which` names them for the message: the baseline reads "rows", the incremental
    pipeline "new rows".
    """
    rejected, read = artifacts.counters["rows_rejected"], artifacts.rows_read
    if read and rejected / read > REJECT_LIMIT:
        sample = artifacts.rejected.row(0, named=True)
        raise InputError(
            f"{path}: {rejected:,} of {read:,} {which} cannot be parsed "
            f"(over {REJECT_LIMIT:.0%}); first: line {sample['line_number']}, {sample['reason']}"
        )


def iso(day: dt.date | None) -> str | None:
    """A date as YYYY-MM-DD text, None stays None."""
    return day.isoformat() if day else None


def top_five(aggregated: pl.DataFrame, day: dt.date | None) -> pl.DataFrame:
    """Top 5 sku_groups by revenue on `day` (ties broken by name, for a stable order)."""
    if day is None:
        return pl.DataFrame()
    cents = pl.col("revenue_cents")
    return (
        aggregated.filter(pl.col("transaction_date") == day)
        .group_by("sku_group")
        .agg(cents.sum(), orders=pl.col("order_count").sum())
        .sort(["revenue_cents", "sku_group"], descending=[True, False])
        .head(5)
        .select("sku_group", revenue=cents / 100, orders="orders")
    )


def local_split(aggregated: pl.DataFrame, day: dt.date | None) -> pl.DataFrame:
    """Orders, revenue and average order value of local (CA) and other customers on `day`."""
    if day is None:
        return pl.DataFrame()
    cents, orders = pl.col("revenue_cents"), pl.col("orders")
    return (
        aggregated.filter(pl.col("transaction_date") == day)
        .group_by("local")
        .agg(orders=pl.col("order_count").sum(), revenue_cents=cents.sum())
        .sort("local", descending=True)
        .select("local", "orders", revenue=cents / 100, avg_order_value=cents / (orders * 100))
    )


def finalize(aggregated: pl.DataFrame) -> pl.DataFrame:
    """From the additive columns to the table of docs/spec.md section 3.

    Revenue stays in integer cents until here: totals, shares and rank ties are then
    identical whatever order the rows were added in.
    """
    cents = pl.col("revenue_cents")
    day = ["client_id", "transaction_date"]
    return (
        aggregated.lazy()
        .select(
            *KEY,
            "total_quantity",
            total_revenue=cents / 100,
            order_count="order_count",
            avg_quantity_per_order=pl.col("total_quantity") / pl.col("order_count"),
            avg_order_value=cents / (pl.col("order_count") * 100),
            days_to_maturity=(pl.col("maturity_date") - pl.col("transaction_date")).dt.total_days(),
            # A day whose revenue sums to zero has no shares to give: 0, not NaN.
            revenue_share_of_day=pl.when(cents.sum().over(day) != 0)
            .then(cents / cents.sum().over(day))
            .otherwise(0.0),
            revenue_rank=cents.rank("dense", descending=True).over(day).cast(pl.Int64),
        )
        .with_columns(
            pl.col("transaction_date").dt.to_string("%Y-%m-%d"),
            pl.col("maturity_date").dt.to_string("%Y-%m-%d"),
            pl.col("local").cast(pl.Int64),
        )
        .sort(KEY)
        .collect()
    )


# === The SQLite store: schema, checkpoint, access points, rows ===================================


class Connection(sqlite3.Connection):
    """sqlite3 connection whose commit() waits while one of our transactions is open.

    pandas' to_sql commits after every call; holding that commit back lets the
    delete, the insert, the rejected rows and the checkpoint commit together.
    """

    hold_commit = False

    def commit(self) -> None:
        """Commit, unless a `transaction()` block will do it."""
        if not self.hold_commit:
            super().commit()


def connect(path: Path) -> Connection:
    """Open a database in WAL mode, waiting up to 30 s for another writer."""
    con = sqlite3.connect(path, factory=Connection, isolation_level=None, timeout=30)
    con.execute("PRAGMA journal_mode=WAL")
    con.execute("PRAGMA synchronous=NORMAL")
    return con  # type: ignore[return-value]


@contextlib.contextmanager
def transaction(con: Connection) -> Iterator[Connection]:
    """BEGIN IMMEDIATE ... COMMIT, rolled back whole on any exception."""
    con.execute("BEGIN IMMEDIATE")
    con.hold_commit = True
    try:
        yield con
    except BaseException:
        con.hold_commit = False
        if con.in_transaction:
            con.rollback()
        raise
    con.hold_commit = False
    con.commit()


def table_shape(con: sqlite3.Connection, name: str) -> list[tuple]:
    """Column names, types, NOT NULL and key positions of a table, and whether its rows
    are stored in key order (WITHOUT ROWID): its comparable shape."""
    columns = [(r[1], r[2], r[3], r[5]) for r in con.execute(f"PRAGMA table_info({name})")]
    sql = con.execute("SELECT sql FROM sqlite_master WHERE name = ?", (name,)).fetchone()
    # First, so that a table of the other kind never looks like one lacking columns.
    return [("WITHOUT ROWID", "", 0, 0), *columns] if sql and "WITHOUT ROWID" in sql[0] else columns


def table_ddl(name: str) -> str:
    """CREATE TABLE of one of TABLES. The sales tables store their rows in key order:
    one B-tree instead of a table and its key index, and the rows of a day together,
    which is what the merge reads back, deletes and rewrites."""
    clustered = " WITHOUT ROWID" if name in CLUSTERED_TABLES else ""
    return f"CREATE TABLE IF NOT EXISTS {name} ({TABLES[name]}){clustered}"


def ensure_schema(con: Connection, say: Callable[[str], None]) -> None:
    """Create missing tables; rename aside (never drop) any whose shape differs.

    A table that only lacks trailing nullable columns of this version (a checkpoint
    saved by an earlier one) gains them and keeps its rows. A renamed state table
    invalidates every checkpoint, so the checkpoints are cleared too and the next
    run rebuilds the clients from their archives.
    """
    reference = sqlite3.connect(":memory:")
    moved = []
    with transaction(con):
        for name in TABLES:
            reference.execute(table_ddl(name))
            current, wanted = table_shape(con, name), table_shape(reference, name)
            added = wanted[len(current) :]
            nullable = all(not notnull and not key for _, _, notnull, key in added)
            if current and wanted[: len(current)] == current and added and nullable:
                for column, kind, _, _ in added:
                    con.execute(f"ALTER TABLE {name} ADD COLUMN {column} {kind}")
                say(f"table {name} gained column(s) {', '.join(c[0] for c in added)}")
                current = wanted
            if current and current != wanted:
                stamp = dt.datetime.now().strftime("%Y%m%d%H%M%S")
                aside = f"{name}_legacy_{stamp}"
                con.execute(f"ALTER TABLE {name} RENAME TO {aside}")
                say(f"table {name} had another schema: renamed to {aside}, created anew")
                moved.append(name)
            con.execute(table_ddl(name))
        if moved and "ingest_checkpoint" not in moved:
            con.execute("DELETE FROM ingest_checkpoint")
    reference.close()


@dataclass
class Checkpoint:
    """How far the incremental state of one client goes."""

    last_day: int
    bytes_processed: int
    lines_processed: int
    prefix_blake3: str  # fingerprint: BLAKE3 chain over the pieces (ReadPlan)
    last_transaction_date: str | None
    ends: list[int]  # where the pieces processed by each run end
    open_quote: bool = False  # the processed text ends inside a quoted field


def read_checkpoint(con: sqlite3.Connection, client: str) -> Checkpoint | None:
    """The client's checkpoint, or None before its first run."""
    row = con.execute(
        "SELECT last_day, bytes_processed, lines_processed, prefix_blake3, last_transaction_date,"
        " piece_ends, open_quote FROM ingest_checkpoint WHERE client_id = ?",
        (client,),
    ).fetchone()
    if not row:
        return None
    # A checkpoint stored without piece ends read its prefix in one piece: plain BLAKE3.
    ends = json.loads(row[5]) if row[5] else [row[1]]
    return Checkpoint(*row[:5], ends, bool(row[6]))


def write_checkpoint(con: Connection, client: str, cp: Checkpoint) -> None:
    """Store a client's checkpoint (inside the caller's transaction)."""
    con.execute(
        "INSERT OR REPLACE INTO ingest_checkpoint VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
        (
            client,
            cp.last_day,
            cp.bytes_processed,
            cp.lines_processed,
            cp.prefix_blake3,
            cp.last_transaction_date,
            dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
            json.dumps(cp.ends),
            int(cp.open_quote),
        ),
    )


def read_access_points(con: sqlite3.Connection, client: str) -> list[AccessPoint]:
    """The access points stored with a client's checkpoint, in stream order."""
    rows = con.execute(
        "SELECT compressed_offset, bits, csv_offset, crc32, window, compressed_blake3,"
        " tail_blake3 FROM ingest_access_points WHERE client_id = ? ORDER BY compressed_offset",
        (client,),
    ).fetchall()
    return [AccessPoint(*row) for row in rows]


def write_access_points(con: Connection, client: str, points: list[AccessPoint]) -> None:
    """Replace a client's access points (inside the caller's transaction)."""
    con.execute("DELETE FROM ingest_access_points WHERE client_id = ?", (client,))
    con.executemany(
        "INSERT INTO ingest_access_points VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
        [
            (
                client,
                p.compressed_offset,
                p.bits,
                p.offset,
                p.crc32,
                p.window,
                p.compressed_blake3,
                p.tail_blake3,
            )
            for p in points
            if p.compressed_blake3
        ],
    )


def write_frame(con: Connection, table: str, frame: pl.DataFrame) -> None:
    """Append a Polars frame to a table with pandas' to_sql (write_pandas)."""
    import pandas as pd  # only the write needs it

    if frame.height:
        write_pandas(con, table, pd.DataFrame({c: frame[c].to_numpy() for c in frame.columns}))


def write_pandas(con: Connection, table: str, frame: Any) -> None:
    """Append a pandas frame to a table: the one write path of every pipeline and peer.

    Rows go in multi-row INSERTs of up to INSERT_ROWS rows (fewer where SQLite takes
    fewer parameters per statement): SQLite runs one statement per thousand rows instead
    of one per row. Measured here: 94,384 rows in 191 ms against 275 with one INSERT a
    row (executemany), 17,175 in 37 against 51; 500 or 2,500 rows a statement were no
    faster.
    """
    if len(frame):
        rows = insert_rows(con, len(frame.columns))
        frame.to_sql(table, con, if_exists="append", index=False, chunksize=rows, method="multi")


def insert_rows(con: sqlite3.Connection, columns: int) -> int:
    """Rows per multi-row INSERT: INSERT_ROWS, or fewer where this SQLite takes fewer
    parameters per statement (999 before SQLite 3.32)."""
    return max(1, min(INSERT_ROWS, con.getlimit(sqlite3.SQLITE_LIMIT_VARIABLE_NUMBER) // columns))


# A client's rows of some days in processed_sales; parameters: client, the days as JSON.
DAYS_WHERE = "client_id = ? AND transaction_date IN (SELECT value FROM json_each(?))"


def delete_days(con: sqlite3.Connection, client: str, days: list[str]) -> None:
    """Delete a client's rows of `days` from processed_sales (inside the caller's transaction)."""
    con.execute(f"DELETE FROM processed_sales WHERE {DAYS_WHERE}", (client, json.dumps(days)))


def replace_days(con: Connection, client: str, days: list[str], table: pl.DataFrame) -> None:
    """Replace a client's rows of `days` in processed_sales (inside the caller's transaction)."""
    delete_days(con, client, days)
    write_frame(con, "processed_sales", table)


def rejected_frame(artifacts: PipelineArtifacts, client: str, day: int) -> pl.DataFrame:
    """Rejected rows in the shape of the rejected_rows table."""
    return artifacts.rejected.select(
        pl.lit(client).alias("client_id"), pl.lit(day).alias("day"), pl.all()
    )


def delete_client(
    con: Connection, client: str, tables: Iterable[str], schema: str = "main"
) -> None:
    """Delete a client's rows from `tables` (inside the caller's transaction)."""
    for table in tables:
        con.execute(f"DELETE FROM {schema}.{table} WHERE client_id = ?", (client,))


# The additive columns of processed_sales as the merge reads them back: name -> SQL.
STORED_ADDITIVE = {
    **{column: column for column in KEY},
    "total_quantity": "total_quantity",
    # Stored in dollars: ROUND before the cast, as a float total times 100 may fall just
    # short of its cents (0.29 * 100 is 28.999...).
    "revenue_cents": "CAST(ROUND(total_revenue * 100) AS INTEGER)",
    "order_count": "order_count",
}


STORED_DAYS_SQL = (
    "SELECT json_object("
    + ", ".join(f"'{n}', json_group_array({sql})" for n, sql in STORED_ADDITIVE.items())
    + f") FROM processed_sales WHERE {DAYS_WHERE}"
)
STORED_DAYS_SCHEMA = {c: pl.List(SALES_SCHEMA.get(c, pl.Int64)) for c in STORED_ADDITIVE}


def existing_days(con: sqlite3.Connection, client: str, days: list[str]) -> pl.DataFrame:
    """Additive columns of the stored rows of `days`, back in integer cents.

    SQLite hands them over as one JSON object of columns, which Polars reads: one value
    crosses into Python instead of a tuple per row (17,175 rows: 22 ms against 36).
    Days whose rows make a text longer than SQLite allows are read half at a time.
    """
    try:
        (text,) = con.execute(STORED_DAYS_SQL, (client, json.dumps(days))).fetchone()
    except sqlite3.DataError:  # "string or blob too big"
        if len(days) < 2:
            raise
        half = len(days) // 2
        return pl.concat(
            [existing_days(con, client, days[:half]), existing_days(con, client, days[half:])]
        )
    return (
        pl.read_json(io.StringIO(text), schema=STORED_DAYS_SCHEMA)
        .explode(pl.all(), empty_as_null=False)
        .with_columns(
            pl.col("transaction_date").str.to_date(),
            pl.col("maturity_date").str.to_date(),
            pl.col("local").cast(pl.Boolean),  # as the transformation's aggregate has it
        )
    )


def copy_client_rows(src: Path, con: Connection, client: str, tables: Iterable[str]) -> None:
    """Replace a client's rows of `tables` in `con` by those of database `src`, atomically."""
    con.execute("ATTACH DATABASE ? AS src", (str(src),))
    try:
        with transaction(con):
            delete_client(con, client, tables)
            for table in tables:
                con.execute(
                    f"INSERT INTO main.{table} SELECT * FROM src.{table} WHERE client_id = ?",
                    (client,),
                )
    finally:
        con.execute("DETACH DATABASE src")


def copy_db(src: Path, dst: Path) -> None:
    """Copy a database with SQLite's backup API (consistent even in WAL mode)."""
    with (
        contextlib.closing(sqlite3.connect(src)) as s,
        contextlib.closing(sqlite3.connect(dst)) as d,
    ):
        try:
            s.backup(d)
        except sqlite3.DatabaseError as exc:
            raise InputError(f"{src}: cannot read as an SQLite database ({exc})") from None
        d.execute("PRAGMA journal_mode=WAL")  # as the real database, set outside any timing


# === The two pipelines ===========================================================================


@dataclass
class RunRecord:
    """What one pipeline run did and how long each stage took."""

    pipeline: str
    stages_s: dict[str, float]
    counters: dict[str, int]
    rows_processed: int
    rows_written: int
    bytes_inflated: int
    archive_bytes: int
    latest_date: str | None
    note: str = ""  # restatements and fallbacks, in words
    read_mode: str = ""  # incremental: how it read the archive (resumed, read whole, rebuilt)
    top_five: list[dict] = field(default_factory=list)  # of the rows processed (PipelineArtifacts)
    local_split: list[dict] = field(default_factory=list)
    dialect: dict[str, Any] = field(default_factory=dict)  # how the CSV is written (Header)


def run_record(
    pipeline: str,
    clock: Stopwatch,
    artifacts: PipelineArtifacts,
    blocks: LineBlocks,
    rows_written: int,
    **more: Any,
) -> RunRecord:
    """What a run that read `blocks` and computed `artifacts` did; `more` overrides."""
    with clock.stage("transform"):  # the day's summary is part of the run's answer
        top = top_five(artifacts.aggregated, artifacts.latest_date).to_dicts()
        split = local_split(artifacts.aggregated, artifacts.latest_date).to_dicts()
    fields = {
        "pipeline": pipeline,
        "stages_s": clock.stages_s,
        "counters": artifacts.counters,
        "rows_processed": artifacts.rows_read,
        "rows_written": rows_written,
        "bytes_inflated": blocks.inflated,
        "archive_bytes": blocks.size,
        "latest_date": iso(artifacts.latest_date),
        "top_five": top,
        "local_split": split,
        "dialect": {**blocks.header.dialect(), "quoted_fields": blocks.quoted},
    }
    return RunRecord(**{**fields, **more})


def run_baseline_benchmark(db: Path, data_dir: Path, client: str, day: int) -> RunRecord:
    """Baseline: recompute the client from the whole day-N archive; full refresh write."""
    clock = Stopwatch()
    lookups = load_lookups(data_dir)
    path = archive_path(data_dir, client, day)
    with clock.stage("read"):
        blocks = scan_archive(path, day)
    artifacts = process_blocks(blocks, blocks.header.lines + 1, client, lookups, clock)
    with clock.stage("transform"):
        check_rejections(path, artifacts, "rows")
        table = finalize(artifacts.aggregated)
    with clock.stage("write"), contextlib.closing(connect(db)) as con, transaction(con):
        delete_client(con, client, FULL_REFRESH_TABLES)
        write_frame(con, "processed_sales_full_refresh", table)
        write_frame(con, "rejected_rows_full_refresh", rejected_frame(artifacts, client, day))
    return run_record("baseline", clock, artifacts, blocks, table.height)


def run_optimized_benchmark(db: Path, data_dir: Path, client: str, day: int) -> RunRecord:
    """Incremental: process only the rows past the checkpoint and merge them in."""
    with contextlib.closing(connect(db)) as con:
        return incremental_step(con, data_dir, client, day)


def incremental_step(con: Connection, data_dir: Path, client: str, day: int) -> RunRecord:
    """Bring `client` from its checkpoint to `day` in one transaction.

    No-op on the day the checkpoint holds; refuses an older day. If the archive does
    not start with the bytes already processed (history restated), the client is
    rebuilt from the full archive, in the same transaction.
    """
    clock = Stopwatch()
    lookups = load_lookups(data_dir)
    path = archive_path(data_dir, client, day)
    cp = read_checkpoint(con, client)
    if cp and day == cp.last_day:
        return RunRecord("incremental", {}, {}, 0, 0, 0, 0, cp.last_transaction_date, "no-op")
    if cp and day < cp.last_day:
        raise StaleDayError(
            f"{path}: checkpoint of {client} already holds day {cp.last_day}; "
            f"refusing to go back to day {day}"
        )
    with clock.stage("read"):
        member = locate_member(path, day)
        header = member_header(member)
    new = read_new_rows(con, member, header, cp, client, day, lookups, clock)
    artifacts = new.artifacts
    with clock.stage("transform"):
        check_rejections(path, artifacts, "new rows")
    kept = None if new.rebuilt else cp  # the state the new rows add to
    latest = max(
        [d for d in (kept and kept.last_transaction_date, iso(artifacts.latest_date)) if d],
        default=None,
    )
    after = Checkpoint(
        last_day=day,
        bytes_processed=new.blocks.size,
        lines_processed=(kept.lines_processed if kept else header.lines) + artifacts.lines_read,
        prefix_blake3=new.blocks.fingerprint or "",
        last_transaction_date=latest,
        ends=new.blocks.ends,
        open_quote=new.blocks.open_quote,
    )
    with clock.stage("write"):
        rows_written = merge_new_rows(con, client, cp, after, new, clock)
    return run_record(
        "incremental",
        clock,
        artifacts,
        new.blocks,
        rows_written,
        bytes_inflated=new.inflated,  # over every attempt
        latest_date=latest,  # of the whole state, not only of the new rows
        note="; ".join(new.notes),
        read_mode=new.read_mode,
    )


def merge_new_rows(
    con: Connection,
    client: str,
    started_from: Checkpoint | None,
    after: Checkpoint,
    new: NewRows,
    clock: Stopwatch,
) -> int:
    """Merge the new rows into the stored days they touch, in one transaction; rows written.

    Also stores the rejected rows, the next checkpoint and the next access points. A
    rebuilt client's rows are all replaced.
    """
    with transaction(con):
        if read_checkpoint(con, client) != started_from:
            raise ConflictError(
                f"{client}: another run moved the checkpoint while day {after.last_day} was"
                " being processed; nothing written, run again"
            )
        if new.rebuilt or started_from is None:
            delete_client(con, client, STATE_TABLES)
        written = merge_days(con, client, new.artifacts.aggregated, clock)
        write_frame(con, "rejected_rows", rejected_frame(new.artifacts, client, after.last_day))
        write_checkpoint(con, client, after)
        write_access_points(con, client, new.points)
    return written


def merge_days(con: Connection, client: str, aggregated: pl.DataFrame, clock: Stopwatch) -> int:
    """Add new aggregates to the stored rows of the days they touch (inside the caller's
    transaction): additive columns summed, derived ones recomputed; rows written.

    The stored rows are read inside the transaction, so no other writer can change
    them between the read and the write.
    """
    touched = sorted({str(d) for d in aggregated["transaction_date"].unique()})
    with clock.stage("transform"):
        merged = pl.concat([existing_days(con, client, touched), aggregated])
        table = finalize(sum_additive(merged))
    replace_days(con, client, touched, table)
    return table.height


# How the incremental path reads a day archive: resume where it can, else read whole.


def choose_access_point(
    member: Member, cp: Checkpoint, points: list[AccessPoint]
) -> tuple[AccessPoint | None, CompressedPrefix, str]:
    """The latest stored access point that this archive still has, or why there is none.

    A point is usable when the compressed bits before it hash as they did: deflate
    decodes the same bits to the same text, so the text before it is the one processed.
    """
    prefix = CompressedPrefix(member)
    if not points:
        return None, prefix, "no access point stored (checkpoint without one, or not deflate)"
    if member.method != zipfile.ZIP_DEFLATED:
        return None, prefix, "the CSV member is not deflate-compressed"
    best = None
    for point in points:  # in stream order: the prefix hash moves forward only
        if point.offset > cp.bytes_processed:
            continue
        if prefix.digest_at(point.compressed_offset, point.bits) == point.compressed_blake3:
            best = point
    if best is None:
        return (
            None,
            prefix,
            "the compressed bytes before every stored access point differ"
            " (another compressor or level, or history restated)",
        )
    return best, prefix, ""


def verified_plan(cp: Checkpoint, point: AccessPoint | None, hashing: bool) -> ReadPlan:
    """A read past the checkpoint that first proves the processed text unchanged.

    From an access point: the text between it and the old end must hash as stored
    with the point. From the start: the whole processed text must give the
    checkpoint's fingerprint.
    """
    plan = ReadPlan(
        skip=cp.bytes_processed,
        check_ends=cp.ends,
        check_digest=cp.prefix_blake3,
        prior_ends=cp.ends,
        prior_digest=cp.prefix_blake3,
        hashing=hashing,
        open_quote=cp.open_quote,
    )
    if point is None:
        return plan
    return replace(
        plan,
        base=point.offset,
        check_ends=[cp.bytes_processed],
        check_digest=point.tail_blake3,
        ends_line=point.window.endswith(b"\n"),
    )


def incremental_inflate(
    member: Member, start: AccessPoint | None = None, prefix: CompressedPrefix | None = None
) -> TrackedInflate | Iterator[bytes]:
    """The incremental path's inflater: zlib noting boundaries when deflate, else zipfile's."""
    if member.method == zipfile.ZIP_DEFLATED:
        return TrackedInflate(member, start, prefix)
    return inflate_all(member)


@dataclass
class NewRows:
    """What the incremental path read from a day archive, and how it read it."""

    artifacts: PipelineArtifacts
    blocks: LineBlocks  # the read that succeeded: the CSV's size and fingerprint
    points: list[AccessPoint]  # block boundaries for the next run to resume from
    inflated: int  # bytes inflated, over every attempt
    read_mode: str = ""  # resumed, read whole (why), rebuilt
    notes: list[str] = field(default_factory=list)  # every fallback and restatement

    @property
    def rebuilt(self) -> bool:
        """History was restated: the client is rebuilt from the whole archive."""
        return self.read_mode.startswith("rebuilt")


def read_new_rows(
    con: sqlite3.Connection,
    member: Member,
    header: Header,
    cp: Checkpoint | None,
    client: str,
    day: int,
    lookups: Lookups,
    clock: Stopwatch,
) -> NewRows:
    """Process the rows past the checkpoint, inflating as little of the archive as is safe.

    In order: resume from the latest access point whose compressed prefix the archive
    still has (inflate only the tail); else inflate it whole and verify the processed
    bytes against the fingerprint; if those changed (history restated), rebuild the
    client from the whole archive. Every fallback is noted, none is silent.
    """
    notes: list[str] = []
    inflated = 0

    def attempt(plan: ReadPlan, mode: str, **start: Any) -> NewRows:
        nonlocal inflated
        chunks = incremental_inflate(member, **start)
        blocks = LineBlocks(member.path, chunks, plan, header)
        first_line = cp.lines_processed + 1 if cp and plan.skip else header.lines + 1
        try:
            artifacts = process_blocks(blocks, first_line, client, lookups, clock)
        finally:
            inflated += blocks.inflated
        points = chunks.access_points() if isinstance(chunks, TrackedInflate) else []
        return NewRows(artifacts, blocks, points, inflated, mode, notes)

    if cp is None:
        return attempt(ReadPlan(hashing=True), "read whole: first run")
    with clock.stage("verify"):  # hashing the compressed history to prove it unchanged
        point, prefix, why = choose_access_point(member, cp, read_access_points(con, client))
    try:
        if point is not None:
            try:
                plan = verified_plan(cp, point, hashing=True)
                mode = f"resumed at CSV byte {point.offset:,}"
                return attempt(plan, mode, start=point, prefix=prefix)
            except CorruptArchive as exc:
                # The tail does not inflate from the point: read whole, which either
                # works or fails with the archive's own error.
                why = f"resuming from the access point failed ({exc})"
        notes.append(f"{member.path}: read whole: {why}")
        return attempt(verified_plan(cp, None, hashing=True), f"read whole: {why}")
    except Restated as exc:
        notes.append(
            f"restatement detected in {client} day {day} ({exc}): rebuilt from the full archive"
        )
    # History restated: every row of the archive, from the start.
    return attempt(ReadPlan(hashing=True), "rebuilt: history restated")


def populate_historical_data(
    db: Path, data_dir: Path, client: str, day: int, say: Say
) -> dict[str, Any]:
    """Bring the client's incremental state in `db` to exactly days 1..day-1.

    A stored state is reused only when its checkpoint is day-1 and its fingerprint
    matches that day's archive; a state behind it is carried forward (each step checks
    its own prefix); anything else is cleared and replayed from day 1.
    """
    target = day - 1
    clock = Stopwatch()
    notes = []
    with clock.stage("warm-up"), contextlib.closing(connect(db)) as con:
        first, how = starting_day(con, data_dir, client, target)
        for d in progress(range(first, target + 1), f"{client}: replaying days"):
            record = incremental_step(con, data_dir, client, d)
            if record.note:
                notes.append(record.note)
                say(record.note)
    say(f"state of {client} at day {target}: {how}")
    return {
        "target_day": target,
        "days_replayed": list(range(first, target + 1)),
        "how": how,
        "notes": notes,
        "seconds": clock.stages_s["warm-up"],
    }


def starting_day(con: Connection, data_dir: Path, client: str, target: int) -> tuple[int, str]:
    """The first day to replay to reach `target`, and how the stored state was used.

    Clears the client's state when it cannot be used.
    """
    cp = read_checkpoint(con, client)
    if cp and cp.last_day == target and state_matches_archive(con, cp, data_dir, client):
        return target + 1, f"reused the stored state of day {target} (fingerprint verified)"
    if cp and cp.last_day < target:
        return cp.last_day + 1, f"carried the stored state forward from day {cp.last_day}"
    with transaction(con):
        delete_client(con, client, STATE_TABLES)
    how = f"replayed days 1..{target}" if target else "nothing to replay: day 1 starts empty"
    if cp:
        how += f" (stored state was day {cp.last_day}, not {target})"
    return 1, how


def state_matches_archive(
    con: sqlite3.Connection, cp: Checkpoint, data_dir: Path, client: str
) -> bool:
    """True when the checkpoint describes its day's whole archive, byte for byte.

    Through an access point when one still fits (hash the compressed prefix, inflate
    the short tail); else by inflating the archive and checking the fingerprint.
    """
    path = archive_path(data_dir, client, cp.last_day)
    member = locate_member(path, cp.last_day)
    if member.size != cp.bytes_processed:
        return False

    def matches(chunks: Iterable[bytes], point: AccessPoint | None) -> bool:
        try:
            plan = verified_plan(cp, point, False)
            for _ in LineBlocks(path, chunks, plan, member_header(member)):
                return False  # longer than what was processed
        except Restated:
            return False
        return True

    point, prefix, _ = choose_access_point(member, cp, read_access_points(con, client))
    if point is not None:
        with contextlib.suppress(CorruptArchive):  # then check the fingerprint instead
            return matches(TrackedInflate(member, point, prefix), point)
    return matches(inflate_all(member), None)


# === Peers: what a data team would run instead, measured the same way ============================

# DuckDB: the rules of docs/spec.md section 2 in SQL over the CSV, the table of section 3 in
# the same statement. Every field is read as text (so a bad value rejects its row instead of
# failing the read), with DuckDB's sniffer on: it reads the dialect and estimates the rows,
# which its planner needs to build the joins' hash tables on the small side.
DUCKDB_FULL_REFRESH = r"""
WITH typed AS (
    SELECT
        CASE WHEN regexp_full_match(transaction_date, '[0-9]{4}-[0-9]{2}-[0-9]{2}')
             THEN TRY_CAST(transaction_date AS DATE) END AS tx,
        TRY_CAST(quantity_sold AS BIGINT) AS qty,
        CASE WHEN isfinite(TRY_CAST(revenue_usd AS DOUBLE))
             THEN CAST(round(TRY_CAST(revenue_usd AS DOUBLE) * 100) AS BIGINT) END AS cents,
        sku_id, maturity_date, zip_code_raw AS z
    FROM read_csv($csv, header = true, all_varchar = true)
), clean AS (
    SELECT tx, qty, cents, sku_id,
        CASE WHEN z IS NULL OR regexp_full_match(z, '\s*') THEN '00000'
             ELSE coalesce(nullif(regexp_extract(
                 upper(regexp_replace(z, '\s', '', 'g')), '[0-9]{5}'), ''), '00000') END AS zip,
        CASE WHEN regexp_full_match(maturity_date, '[0-9]{4}-[0-9]{2}-[0-9]{2}')
             THEN TRY_CAST(maturity_date AS DATE) END AS m
    FROM typed
    WHERE tx IS NOT NULL AND qty IS NOT NULL AND cents IS NOT NULL
), grouped AS (
    SELECT tx, greatest(coalesce(m, tx + 3), tx) AS maturity,
        coalesce(s.sku_group, 'UNKNOWN') AS sku_group,
        coalesce(zips.state = 'CA', false) AS local,
        sum(qty) AS total_quantity, sum(cents) AS cents, count(*) AS order_count
    FROM clean
    LEFT JOIN skus AS s USING (sku_id)
    LEFT JOIN zips ON zips.zip_code = clean.zip
    GROUP BY ALL
)
SELECT $client AS client_id,
    strftime(tx, '%Y-%m-%d') AS transaction_date,
    strftime(maturity, '%Y-%m-%d') AS maturity_date,
    sku_group, CAST(local AS BIGINT) AS local,
    CAST(total_quantity AS BIGINT) AS total_quantity, cents / 100 AS total_revenue,
    order_count, total_quantity / order_count AS avg_quantity_per_order,
    cents / (order_count * 100) AS avg_order_value,
    datediff('day', tx, maturity) AS days_to_maturity,
    CASE WHEN sum(cents) OVER day != 0 THEN cents / sum(cents) OVER day ELSE 0.0 END
        AS revenue_share_of_day,
    dense_rank() OVER (PARTITION BY tx ORDER BY cents DESC) AS revenue_rank
FROM grouped
WINDOW day AS (PARTITION BY tx)
ORDER BY transaction_date, maturity_date, sku_group, local
"""


def inflate_to_file(member: Member, path: Path) -> int:
    """The member's CSV written to `path` (a peer that reads files needs one); its size."""
    size = 0
    with path.open("wb") as out:
        for chunk in inflate_all(member):
            out.write(chunk)
            size += len(chunk)
    return size


@functools.cache
def duckdb_session(data_dir: Path) -> Any:
    """An in-memory DuckDB with the two lookups loaded (once per process, before the clock,
    as the pipelines' lookups are); a key listed twice keeps its first row."""
    import duckdb

    duck = duckdb.connect()
    static = data_dir / "static"
    for table, key, value, name in (
        ("zips", "zip_code", "state", "us_zip_codes.csv"),
        ("skus", "sku_id", "sku_group", "sku_groups.csv"),
    ):
        duck.execute(
            f"CREATE TABLE {table} AS SELECT {key}, arg_min({value}, n) AS {value} FROM ("
            f" SELECT {key}, {value}, row_number() OVER () AS n"
            f" FROM read_csv($path, header = true, all_varchar = true)) GROUP BY {key}",
            {"path": str(static / name)},
        )
    return duck


def run_duckdb_full_refresh(db: Path, data_dir: Path, client: str, day: int) -> RunRecord:
    """Peer: a full refresh in DuckDB SQL, written through the baseline's own write path."""
    clock = Stopwatch()
    duck = duckdb_session(data_dir)
    path = archive_path(data_dir, client, day)
    # On disk beside the database, never a memory-backed tmpfs: its pages would be
    # memory that no resident-size figure shows.
    csv_path = db.with_name(f".{db.name}.day{day}.csv")
    try:
        with clock.stage("read"):
            size = inflate_to_file(locate_member(path, day), csv_path)
        with clock.stage("transform"):
            params = {"csv": str(csv_path), "client": client}
            table = duck.execute(DUCKDB_FULL_REFRESH, params).df()  # pandas, as to_sql wants
    finally:
        csv_path.unlink(missing_ok=True)
    with clock.stage("write"), contextlib.closing(connect(db)) as con, transaction(con):
        delete_client(con, client, FULL_REFRESH_TABLES)
        write_pandas(con, "processed_sales_full_refresh", table)
    return RunRecord(
        pipeline="duckdb",
        stages_s=clock.stages_s,
        counters={},
        rows_processed=int(table["order_count"].sum()),
        rows_written=len(table),
        bytes_inflated=size,
        archive_bytes=size,
        latest_date=table["transaction_date"].max() if len(table) else None,
    )


def run_by_date(db: Path, data_dir: Path, client: str, day: int) -> RunRecord:
    """Peer: the common shortcut: new rows are those dated after the last processed date.

    From the same day N-1 state as the incremental pipeline, it reads the day-N archive,
    keeps the rows dated after the checkpoint's last transaction date, and merges them
    into the days they touch exactly as the incremental pipeline does. Rows that arrive
    late (dated on or before that date) are lost: the report shows how many.
    """
    clock = Stopwatch()
    lookups = load_lookups(data_dir)
    path = archive_path(data_dir, client, day)
    with contextlib.closing(connect(db)) as con:
        cp = read_checkpoint(con, client)
        since = cp.last_transaction_date if cp else None
        with clock.stage("read"):
            blocks = scan_archive(path, day)
        after = pl.col("transaction_date") > since if since else None
        first = blocks.header.lines + 1
        artifacts = process_blocks(blocks, first, client, lookups, clock, keep=after)
        with clock.stage("write"), transaction(con):
            written = merge_days(con, client, artifacts.aggregated, clock)
    return run_record("by_date", clock, artifacts, blocks, written)


def read_member_whole(member: Member) -> bytes:
    """The member's whole CSV in one call: ISA-L over the compressed bytes read at once."""
    if member.method != zipfile.ZIP_DEFLATED:
        with open_member(member) as stream:
            return stream.read()
    try:
        text = isal_zlib.decompress(b"".join(compressed_pieces(member)), -15)
    except isal_zlib.error as exc:
        raise CorruptArchive(f"{member.path}: corrupt archive, cannot inflate ({exc})") from None
    check_integrity(member, len(text), isal_zlib.crc32(text))
    return text


def run_polars_in_memory(db: Path, data_dir: Path, client: str, day: int) -> RunRecord:
    """Peer: the full refresh an engineer writes first: the whole CSV in memory, one
    read_csv, the shared transformation on every row at once, the baseline's write.

    No blocks and no checks of the reader's shape: fast where every record is plain,
    and judged by its parity where not.
    """
    clock = Stopwatch()
    lookups = load_lookups(data_dir)
    path = archive_path(data_dir, client, day)
    with clock.stage("read"):
        member = locate_member(path, day)
        text = read_member_whole(member)
    with clock.stage("parse"):
        header = read_header(path, text[:HEADER_BYTES])  # its names trimmed, as the rules say
        frame = pl.read_csv(
            text,
            new_columns=list(header.columns),
            columns=[header.columns.index(c) for c in COLUMNS],
            infer_schema=False,
            encoding="utf8-lossy",
            empty_string_is_null=False,
            truncate_ragged_lines=True,  # a long record is cut, and shows in the parity
        )
        size = len(text)
        del text
        first = header.lines + 1  # records are taken to be one line each
        rows = frame.select(
            (pl.int_range(pl.len(), dtype=pl.Int64) + first).alias("line_number"),
            *COLUMNS,
            reason=pl.lit(None, pl.String),
            raw_line=pl.lit(None, pl.String),
        )
        del frame
    with clock.stage("transform"):
        artifacts = process_transactions(rows, client, lookups)
        del rows
        check_rejections(path, artifacts, "rows")
        table = finalize(artifacts.aggregated)
    with clock.stage("write"), contextlib.closing(connect(db)) as con, transaction(con):
        delete_client(con, client, FULL_REFRESH_TABLES)
        write_frame(con, "processed_sales_full_refresh", table)
        write_frame(con, "rejected_rows_full_refresh", rejected_frame(artifacts, client, day))
    with clock.stage("transform"):  # the day's summary, as every run's record has it
        top = top_five(artifacts.aggregated, artifacts.latest_date).to_dicts()
        split = local_split(artifacts.aggregated, artifacts.latest_date).to_dicts()
    return RunRecord(
        pipeline="polars_in_memory",
        stages_s=clock.stages_s,
        counters=artifacts.counters,
        rows_processed=artifacts.rows_read,
        rows_written=table.height,
        bytes_inflated=size,
        archive_bytes=size,
        latest_date=iso(artifacts.latest_date),
        top_five=top,
        local_split=split,
    )


# name -> (kind, where its answer is written, the call); run and measured like the pipelines.
PEERS: dict[str, tuple[str, str, Callable[[Path, Path, str, int], RunRecord]]] = {
    "polars_in_memory": ("full refresh", "processed_sales_full_refresh", run_polars_in_memory),
    "duckdb": ("full refresh", "processed_sales_full_refresh", run_duckdb_full_refresh),
    "by_date": ("incremental", "processed_sales", run_by_date),
}


def peer_parity(peer_db: Path, table: str, answer_db: Path, client: str) -> dict[str, Any]:
    """A peer's answer against the baseline's: the same check as the pipelines' parity.

    On failure: rows lost (orders the baseline counted that the peer did not) and keys
    differing, beside the usual diff.
    """
    from polars.testing import assert_frame_equal

    with contextlib.closing(sqlite3.connect(peer_db)) as peer:
        got = sales_rows(peer, table, client)
    with contextlib.closing(sqlite3.connect(answer_db)) as ans:
        want = sales_rows(ans, "processed_sales_full_refresh", client)
    try:
        assert_frame_equal(got, want, check_exact=False, rel_tol=1e-9, abs_tol=0.0)
    except AssertionError as exc:
        diff = diff_summary(got, want)
        diff["rows_lost"] = int(want["order_count"].sum() - got["order_count"].sum())
        diff["keys_differing"] = (
            diff["rows_only_incremental"] + diff["rows_only_full_refresh"] + diff["rows_differing"]
        )
        return {"ok": False, "error": str(exc).splitlines()[0], "diff": diff}
    return {"ok": True, "rows": want.height}


# === Parity: the incremental state against the full refresh ======================================


def sales_rows(con: sqlite3.Connection, table: str, client: str) -> pl.DataFrame:
    """A client's rows of a sales table, sorted by key, with the table's dtypes."""
    cursor = con.execute(
        f"SELECT {', '.join(SALES_SCHEMA)} FROM {table} WHERE client_id = ? ORDER BY 1, 2, 3, 4, 5",
        (client,),
    )
    return pl.DataFrame(cursor.fetchall(), schema=SALES_SCHEMA, orient="row", strict=False)


def rejected_rows(con: sqlite3.Connection, table: str, client: str) -> pl.DataFrame:
    """A client's rejected rows (without the day, which differs by design), sorted."""
    cursor = con.execute(
        f"SELECT line_number, reason, raw_line FROM {table} WHERE client_id = ? ORDER BY 1",
        (client,),
    )
    return pl.DataFrame(
        cursor.fetchall(),
        schema={"line_number": pl.Int64, "reason": pl.String, "raw_line": pl.String},
        orient="row",
    )


def check_parity(con: sqlite3.Connection, client: str) -> dict[str, Any]:
    """Compare the incremental state with the full refresh (docs/spec.md section 4).

    Keys and integer columns must be equal, float columns equal within 1e-9 relative.
    Returns a record with ok=False and a readable diff instead of raising, so the
    report can show it.
    """
    from polars.testing import assert_frame_equal

    inc = sales_rows(con, "processed_sales", client)
    full = sales_rows(con, "processed_sales_full_refresh", client)
    inc_rejected = rejected_rows(con, "rejected_rows", client)
    full_rejected = rejected_rows(con, "rejected_rows_full_refresh", client)
    record: dict[str, Any] = {"ok": True, "rows": full.height, "rows_incremental": inc.height}
    try:
        assert_frame_equal(inc, full, check_exact=False, rel_tol=1e-9, abs_tol=0.0)
        assert_frame_equal(inc_rejected, full_rejected)
    except AssertionError as exc:
        diff = diff_summary(inc, full)
        columns = list(full_rejected.columns)
        diff["rejected_only_incremental"] = inc_rejected.join(
            full_rejected, on=columns, how="anti", nulls_equal=True
        ).height
        diff["rejected_only_full_refresh"] = full_rejected.join(
            inc_rejected, on=columns, how="anti", nulls_equal=True
        ).height
        record.update(ok=False, error=str(exc).splitlines()[0], diff=diff)
    return record


def overall_parity(day_n: dict[str, Any], sweep: list[dict[str, Any]]) -> dict[str, Any]:
    """Parity of the run: day N's record, failed if any sweep day failed too."""
    failed = [p for p in sweep if not p["parity"]["ok"]]
    if day_n["ok"] and failed:
        first = failed[0]["parity"]
        days = ", ".join(str(p["day"]) for p in failed)
        return {**first, "ok": False, "error": f"sweep day(s) {days}: {first['error']}"}
    return day_n


def diff_summary(inc: pl.DataFrame, full: pl.DataFrame) -> dict[str, Any]:
    """Rows on one side only, columns that differ (and in how many rows), five sample rows."""
    only_inc = inc.join(full, on=KEY, how="anti")
    only_full = full.join(inc, on=KEY, how="anti")
    both = inc.join(full, on=KEY, how="inner", suffix="_full")
    differs = {
        c: (pl.col(c) - pl.col(f"{c}_full")).abs() > 1e-9 * pl.col(f"{c}_full").abs()
        for c in inc.columns
        if c not in KEY
    }
    counts = both.select([e.sum().alias(c) for c, e in differs.items()]).row(0, named=True)
    columns = {c: n for c, n in counts.items() if n}
    mismatched = both.filter(pl.any_horizontal([differs[c] for c in columns] or [pl.lit(False)]))
    samples: list[str] = []
    for label, frame in (
        ("only in incremental", only_inc.select(KEY)),
        ("only in full refresh", only_full.select(KEY)),
        ("values differ", mismatched.select(*KEY, *[x for c in columns for x in (c, f"{c}_full")])),
    ):
        samples += [f"{label}: {row}" for row in frame.head(5 - len(samples)).rows()]
    return {
        "rows_only_incremental": only_inc.height,
        "rows_only_full_refresh": only_full.height,
        "columns_differing": columns,
        "rows_differing": mismatched.height,
        "sample": samples,
    }


# === The harness: fresh processes, timing, memory, progress ======================================


class Stopwatch:
    """Wall time by stage (time.perf_counter), the one clock of every figure here.

    Stages nest exclusively: while an inner stage runs, the outer one is paused, so
    the stages of a call add up to its time and nothing is counted twice.
    """

    def __init__(self) -> None:
        self.stages_s: dict[str, float] = {}
        self._open: list[str] = []
        self._since = time.perf_counter()

    @contextlib.contextmanager
    def stage(self, name: str) -> Iterator[None]:
        """Charge the wall time of the block to `name` (added up over repeated blocks)."""
        self._charge()
        self._open.append(name)
        try:
            yield
        finally:
            self._charge()
            self._open.pop()

    def _charge(self) -> None:
        now = time.perf_counter()
        if self._open:
            name = self._open[-1]
            self.stages_s[name] = self.stages_s.get(name, 0.0) + now - self._since
        self._since = now


def progress(items: range, label: str, unit: str = "day") -> Iterator[int]:
    """A tqdm bar on a terminal (off elsewhere, and for fewer than two items)."""
    if len(items) < 2:
        return iter(items)
    from tqdm import tqdm

    return iter(tqdm(items, desc=label, unit=unit, disable=None, leave=False))


def proc_status_mib(field_name: str) -> float | None:
    """A memory field of /proc/self/status (VmHWM, RssFile...) in MiB; None where absent."""
    with contextlib.suppress(OSError):
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(f"{field_name}:"):
                return int(line.split()[1]) / 1024
    return None


def rss_mib() -> float:
    """Resident size of this process now, in MiB (psutil, memory_profiler's own backend)."""
    import psutil

    return psutil.Process().memory_info().rss / 2**20


def anon_rss_mib() -> float:
    """This process's private, anonymous resident memory now (resident - shared), in MiB.

    /proc/self/statm is one cheap read; the shared part is the file-backed pages
    (library code) and shared memory, so what remains is the data the process made.
    """
    try:
        fields = Path("/proc/self/statm").read_text().split()
    except OSError:
        return 0.0
    return (int(fields[1]) - int(fields[2])) * PAGE_BYTES / 2**20


class AnonPeak:
    """The peak of anon_rss_mib() during a block, sampled every MEMORY_SAMPLE_S on a thread."""

    def __init__(self) -> None:
        self.peak_mib = anon_rss_mib()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def _sample(self) -> None:
        while not self._stop.wait(MEMORY_SAMPLE_S):
            self.peak_mib = max(self.peak_mib, anon_rss_mib())

    def __enter__(self) -> AnonPeak:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.peak_mib = max(self.peak_mib, anon_rss_mib())


def peak_rss_mib() -> float:
    """The kernel's high-water mark of this process's resident size, in MiB.

    VmHWM where /proc has it: unlike getrusage's ru_maxrss, it is not inherited from
    the parent across fork and exec (ru_maxrss reported the benchmark driver's own
    size, about 370 MiB, for a 195 MiB worker).
    """
    hwm = proc_status_mib("VmHWM")
    if hwm is not None:
        return hwm
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


@dataclass(frozen=True)
class RunSpec:
    """One measured pipeline call, as the driver hands it to a fresh worker process."""

    pipeline: str  # a key of PIPELINES or PEERS
    db: str  # the worker's own copy of the day N-1 state
    data_dir: str
    client: str
    day: int
    mode: str  # "time": wall time only; "memory": memory_profiler samples the call too
    out: str  # where the worker writes its RunResult (JSON)
    driver_pid: int  # the worker dies with this process


@dataclass(frozen=True)
class RunResult:
    """What a worker measured around one pipeline call."""

    record: RunRecord
    wall_s: float
    rss_before_mib: float
    file_rss_delta_mib: float  # library code paged in by the call (RssFile after - before)
    hwm_rss_mib: float  # the kernel's high-water mark of the worker's resident size
    peak_rss_mib: float | None = None  # sampled by memory_profiler ("memory" mode only)
    anon_before_mib: float = 0.0  # private, anonymous resident memory before the call
    anon_peak_mib: float | None = None  # its sampled peak during the call ("memory" mode)

    @property
    def peak_mib(self) -> float:
        """The call's own peak: sampled peak minus the resident size just before it."""
        return (self.peak_rss_mib or 0.0) - self.rss_before_mib

    @property
    def data_mib(self) -> float:
        """The same peak counting only private, anonymous memory (no library code)."""
        return (self.anon_peak_mib or 0.0) - self.anon_before_mib

    @classmethod
    def from_json(cls, text: str) -> RunResult:
        """A result as a worker wrote it."""
        data = json.loads(text)
        return cls(**{**data, "record": RunRecord(**data["record"])})


PIPELINES: dict[str, Callable[[Path, Path, str, int], RunRecord]] = {
    "baseline": run_baseline_benchmark,
    "incremental": run_optimized_benchmark,
}


def die_with_driver(driver_pid: int) -> None:
    """Have the kernel kill this worker when the driver dies, even by SIGKILL.

    PR_SET_PDEATHSIG is set in the worker itself (a preexec_fn would run in the
    driver's forked child while Polars' threads exist); a driver already gone before
    it took effect is caught by the parent check.
    """
    pr_set_pdeathsig = 1
    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(pr_set_pdeathsig, signal.SIGKILL, 0, 0, 0)
    if os.getppid() != driver_pid:
        os._exit(1)


def worker(spec: RunSpec) -> RunResult:
    """Run one pipeline call in this (fresh) process and measure it.

    mode "time": wall time around the call. mode "memory": memory_profiler samples the
    resident size every 5 ms during the call (its wall time is kept too, for the
    sweep; the main figures time only "time" runs). Imports and lookups are loaded
    before either measurement starts, for both pipelines alike.
    """
    import gc

    import pandas  # noqa: F401 (imported now so that its import is not measured)
    from memory_profiler import memory_usage

    fn = PIPELINES[spec.pipeline] if spec.pipeline in PIPELINES else PEERS[spec.pipeline][2]
    if spec.pipeline == "duckdb":
        duckdb_session(Path(spec.data_dir))  # its lookups, like the pipelines', before the clock
    args = (Path(spec.db), Path(spec.data_dir), spec.client, spec.day)
    load_lookups(args[1])
    gc.collect()
    before, file_before = rss_mib(), proc_status_mib("RssFile") or 0.0
    anon_before = anon_rss_mib()
    clock = Stopwatch()

    def call() -> RunRecord:
        with clock.stage("call"):
            return fn(*args)

    peak = anon = None
    if spec.mode == "memory":
        with AnonPeak() as anon:
            peak, record = memory_usage(
                (call, ()), interval=MEMORY_SAMPLE_S, max_usage=True, retval=True
            )
    else:
        record = call()
    return RunResult(
        record=record,
        wall_s=clock.stages_s["call"],
        rss_before_mib=before,
        # Code pages stay mapped once touched: after minus before is what the call paged in.
        file_rss_delta_mib=(proc_status_mib("RssFile") or 0.0) - file_before,
        hwm_rss_mib=peak_rss_mib(),
        peak_rss_mib=peak,
        anon_before_mib=anon_before,
        anon_peak_mib=anon.peak_mib if anon else None,
    )


def run_in_fresh_process(
    pipeline: str, state: Path, cfg: BenchConfig, day: int, mode: str, scratch: Path
) -> RunResult:
    """One pipeline call in a new interpreter, on its own copy of `state` (then removed)."""
    db = scratch / f"run-{pipeline}.db"
    copy_db(state, db)
    # Flush what earlier runs and this copy left for the disk to write, so that a run's
    # own commit does not wait behind them (measured: the incremental write after a
    # baseline run, 0.077 s without this, 0.054 s with it).
    os.sync()
    out = scratch / f"result-{pipeline}.json"
    spec = RunSpec(
        pipeline, str(db), str(cfg.data_dir), cfg.client, day, mode, str(out), os.getpid()
    )
    cmd = [sys.executable, str(Path(__file__).resolve()), "--worker", json.dumps(asdict(spec))]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode == 2:
        raise InputError(proc.stderr.strip().splitlines()[-1].removeprefix("main.py: error: "))
    if proc.returncode != 0:
        tail = (proc.stderr.strip().splitlines() or [f"exit code {proc.returncode}"])[-1]
        raise WorkerError(f"{pipeline} run failed in its process: {tail}")
    return RunResult.from_json(out.read_text())


@dataclass
class Measurement:
    """The main measurement: each pipeline's warm-up and timed repeats, and its output."""

    warmups: dict[str, RunResult]
    runs: dict[str, list[RunResult]]
    final: Path  # the last repeat's database, holding both answers for the parity check


def measure(cfg: BenchConfig, state: Path, scratch: Path) -> Measurement:
    """Warm up, then time every repeat of both pipelines, each from its own copy of `state`.

    Repeats alternate baseline, incremental and the peers, so that drift of a shared,
    noisy machine hits all alike. Each peer's last answer stays in run-<peer>.db.
    """
    names = [*PIPELINES, *(PEERS if cfg.peers else ())]
    warmups = {p: run_in_fresh_process(p, state, cfg, cfg.day, "memory", scratch) for p in names}
    runs: dict[str, list[RunResult]] = {p: [] for p in names}
    for _ in progress(range(cfg.repeat), "timed repeats", unit="repeat"):
        for pipeline in names:
            runs[pipeline].append(
                run_in_fresh_process(pipeline, state, cfg, cfg.day, "time", scratch)
            )
    # The last incremental state, with the last baseline's answer beside it.
    final = scratch / "final.db"
    os.replace(scratch / "run-incremental.db", final)
    with contextlib.closing(connect(final)) as con:
        copy_client_rows(scratch / "run-baseline.db", con, cfg.client, FULL_REFRESH_TABLES)
    return Measurement(warmups, runs, final)


def median_time(run: Callable[[], object], undo: Callable[[], object] = lambda: None) -> float:
    """Median wall time of FLOOR_TRIES calls of `run`, after one untimed call (so warm).

    `undo`, called after each call outside the clock, puts back what `run` changed. The
    disk's pending writes are flushed before each call, as before each pipeline run.
    """
    times = []
    for attempt in range(FLOOR_TRIES + 1):
        os.sync()
        clock = Stopwatch()
        with clock.stage("run"):
            run()
        undo()
        if attempt:
            times.append(clock.stages_s["run"])
    return statistics.median(times)


def measure_inflaters(cfg: BenchConfig) -> dict[str, Any]:
    """Inflate the whole day-N member with each inflater used here (median_time).

    Outside the pipelines' timings; it tells the reader how much the choice of
    inflater weighs.
    """
    member = locate_member(archive_path(cfg.data_dir, cfg.client, cfg.day), cfg.day)
    if member.method != zipfile.ZIP_DEFLATED:
        return {}  # zipfile reads other methods: no inflater to compare
    readers: dict[str, Callable[[], Iterable[bytes]]] = {
        "ISA-L (isal)": lambda: inflate_all(member),
        "zlib (Z_BLOCK, ctypes)": lambda: TrackedInflate(member),
    }
    seconds = {
        name: median_time(lambda read=read: collections.deque(read(), maxlen=0))
        for name, read in readers.items()
    }
    return {"bytes": member.size, "compressed_bytes": member.compressed_size, "seconds": seconds}


def inflate_tail(point: AccessPoint, last_byte: int, tail: bytes) -> Iterator[bytes]:
    """The text of a deflate stream from an access point, zlib alone: no hashing, no CRC,
    no boundaries noted (the inflate floor). `last_byte`: the byte before the point."""
    inflater = BlockInflater()
    code = Z_OK
    try:
        inflater.prime(point.bits, last_byte, point.window)
        for start in range(0, len(tail), READ_CHUNK_BYTES):
            inflater.feed(tail[start : start + READ_CHUNK_BYTES])
            # Until zlib wants more input (all taken, room left) or the stream ends.
            while code == Z_OK and (inflater.strm.avail_in or not inflater.strm.avail_out):
                code, text = inflater.inflate(Z_NO_FLUSH)
                yield text
            if code == Z_BUF_ERROR:
                code = Z_OK  # nothing was pending: zlib wants the next piece
            if code != Z_OK:
                break
    finally:
        inflater.close()
    if code != Z_STREAM_END:
        raise CorruptArchive(f"the tail past an access point does not inflate (zlib {code})")


def insert_statements(
    con: sqlite3.Connection, table: str, values: list[tuple]
) -> list[tuple[str, list]]:
    """Rows as the multi-row INSERTs of every write, parameters built (a write floor's
    input, prepared before its clock)."""
    per = insert_rows(con, len(values[0]) if values else 1)
    row = f"({', '.join('?' * (len(values[0]) if values else 1))})"
    chunks = [values[i : i + per] for i in range(0, len(values), per)]
    return [
        (f"INSERT INTO {table} VALUES {', '.join([row] * len(c))}", [*chain(*c)]) for c in chunks
    ]


def measure_full_floors(cfg: BenchConfig, state: Path, scratch: Path) -> dict[str, float]:
    """What each stage of the day-N full refresh costs at least here, done alone.

    Each stage's work on the whole archive in one call, its input ready before the clock
    (median_time, warm, outside the pipelines' timings): read: ISA-L inflating the whole
    member from its compressed bytes in memory; parse: Polars' CSV reader on the whole
    text, every field as text, no checks; transform: the shared transformation on every
    row at once and the table's derived columns; write: SQLite alone replacing the
    client's full-refresh rows with the same rows in the same multi-row INSERTs,
    parameters built beforehand, and committing (no pandas, no conversions).
    """
    member = locate_member(archive_path(cfg.data_dir, cfg.client, cfg.day), cfg.day)
    if member.method != zipfile.ZIP_DEFLATED:
        return {}
    lookups = load_lookups(cfg.data_dir)
    compressed = b"".join(compressed_pieces(member))
    text = isal_zlib.decompress(compressed, -15)
    header = read_header(member.path, text[:HEADER_BYTES])
    body = text[header.length :]
    names = {f"column_{i}": pl.String for i in range(len(header.columns))}
    rows = parse_block(body, header.lines + 1, header)[0]
    del text

    def transform() -> pl.DataFrame:
        return finalize(process_transactions(rows, cfg.client, lookups).aggregated)

    values = transform().rows()
    db = scratch / "floors-full.db"
    copy_db(state, db)
    with contextlib.closing(connect(db)) as con:
        inserts = insert_statements(con, "processed_sales_full_refresh", values)

        def clear() -> None:
            """As each baseline run starts: no full-refresh rows of the client."""
            with transaction(con):
                delete_client(con, cfg.client, ("processed_sales_full_refresh",))

        def write() -> None:
            with transaction(con):
                delete_client(con, cfg.client, ("processed_sales_full_refresh",))
                for sql, params in inserts:
                    con.execute(sql, params)

        clear()
        floors = {
            "read": median_time(lambda: isal_zlib.decompress(compressed, -15)),
            "parse": median_time(
                lambda: pl.read_csv(body, has_header=False, schema=names, raise_if_empty=False)
            ),
            "transform": median_time(transform),
            "write": median_time(write, undo=clear),
        }
    db.unlink(missing_ok=True)
    return floors


def measure_floors(cfg: BenchConfig, state: Path, scratch: Path) -> dict[str, float]:
    """What each stage of day N's incremental step costs at least here, done alone.

    From the day N-1 state, with the access point the step resumes from, each stage's
    work without what our code adds to it (median_time, warm, outside the pipelines'
    timings): read: zlib inflating the tail alone; verify: BLAKE3 over the compressed
    history already in memory; parse: Polars' CSV reader on the new text alone (no
    checks, no line numbers); transform: the new rows' transformation without the merge
    into the stored days; write: SQLite alone deleting the touched days, inserting the
    merged rows in the same multi-row INSERTs with their parameters prebuilt, storing
    the checkpoint and the access points, and committing (no pandas, no conversions).
    Empty when the step would not resume from an access point.
    """
    db = scratch / "floors.db"
    copy_db(state, db)
    member = locate_member(archive_path(cfg.data_dir, cfg.client, cfg.day), cfg.day)
    header, lookups = member_header(member), load_lookups(cfg.data_dir)
    with contextlib.closing(connect(db)) as con:
        cp = read_checkpoint(con, cfg.client)
        point = None
        if cp is not None:
            point, _, _ = choose_access_point(member, cp, read_access_points(con, cfg.client))
        if cp is None or point is None:
            return {}
        history = b"".join(compressed_pieces(member, 0, point.compressed_offset))
        tail = b"".join(compressed_pieces(member, point.compressed_offset))
        last_byte = history[-1] if point.bits else 0
        text = b"".join(inflate_tail(point, last_byte, tail))[cp.bytes_processed - point.offset :]
        names = {f"column_{i}": pl.String for i in range(len(header.columns))}
        rows = parse_block(text, cp.lines_processed + 1, header)[0]
        new = process_transactions(rows, cfg.client, lookups)
        touched = sorted({str(d) for d in new.aggregated["transaction_date"].unique()})
        stored = existing_days(con, cfg.client, touched)
        merged = finalize(sum_additive(pl.concat([stored, new.aggregated]))).rows()
        before = con.execute(
            f"SELECT * FROM processed_sales WHERE {DAYS_WHERE}", (cfg.client, json.dumps(touched))
        ).fetchall()
        points = read_access_points(con, cfg.client)

        def statements(values: list[tuple]) -> list[tuple[str, list]]:
            return insert_statements(con, "processed_sales", values)

        def write(inserts: list[tuple[str, list]]) -> None:
            """The step's writes: the touched days, a checkpoint and the access points."""
            with transaction(con):
                delete_days(con, cfg.client, touched)
                for sql, params in inserts:
                    con.execute(sql, params)
                write_checkpoint(con, cfg.client, cp)
                write_access_points(con, cfg.client, points)

        new_rows, old_rows = statements(merged), statements(before)

        return {
            "read": median_time(
                lambda: collections.deque(inflate_tail(point, last_byte, tail), maxlen=0)
            ),
            "verify": median_time(lambda: blake3.blake3(history).digest()),
            "parse": median_time(
                lambda: pl.read_csv(text, has_header=False, schema=names, raise_if_empty=False)
            ),
            "transform": median_time(lambda: process_transactions(rows, cfg.client, lookups)),
            "write": median_time(lambda: write(new_rows), undo=lambda: write(old_rows)),
        }


def run_sweep(cfg: BenchConfig, scratch: Path) -> list[dict[str, Any]]:
    """Both pipelines on every day 2..N-1: one run each, time and memory sampled together.

    Each day starts from the state the incremental run of the day before left (the
    sweep's own, from day 1), so every day is measured from exactly the day before,
    and the two answers of every day are checked for parity. Day N is the main
    measurement's warm-up.
    """
    if not cfg.sweep or cfg.day <= 2:
        return []
    state = scratch / "sweep-state.db"
    with contextlib.closing(connect(state)) as con:
        ensure_schema(con, say=lambda line: None)
        incremental_step(con, cfg.data_dir, cfg.client, 1)
    days = []
    for day in progress(range(2, cfg.day), "sweep: days"):
        runs = {p: run_in_fresh_process(p, state, cfg, day, "memory", scratch) for p in PIPELINES}
        with contextlib.closing(connect(scratch / "run-incremental.db")) as con:
            copy_client_rows(scratch / "run-baseline.db", con, cfg.client, FULL_REFRESH_TABLES)
            parity = check_parity(con, cfg.client)
            with transaction(con):  # tomorrow's baseline starts client-free again
                delete_client(con, cfg.client, FULL_REFRESH_TABLES)
        os.replace(scratch / "run-incremental.db", state)
        days.append({"day": day, "runs": runs, "parity": parity})
    return days


def profile_lines(cfg: BenchConfig, state: Path, scratch: Path) -> None:
    """Under `python -m memory_profiler main.py`: one line-by-line table per pipeline.

    memory_profiler installs `profile` in builtins. Registering incremental_step's code
    lets its lines show inside the one traced call of run_optimized_benchmark; the
    warm-up replays ran before, untraced.
    """
    line_profiler = getattr(builtins, "profile", None)
    if line_profiler is None:
        return
    line_profiler(incremental_step)
    for pipeline, fn in PIPELINES.items():
        db = scratch / f"profile-{pipeline}.db"
        copy_db(state, db)
        line_profiler(fn)(db, cfg.data_dir, cfg.client, cfg.day)


# === The results record: every figure of the report, computed once ===============================


def summarize(values: list[float]) -> dict[str, Any]:
    """Median, min and max of the measured tries, and every try."""
    return {
        "median": statistics.median(values),
        "min": min(values),
        "max": max(values),
        "runs": values,
    }


def run_figures(run: RunResult) -> dict[str, Any]:
    """One sampled run of a pipeline (a sweep day, or day N's warm-up)."""
    return {
        "wall_s": run.wall_s,
        "peak_mib": run.peak_mib,
        "data_mib": run.data_mib,
        "rows_processed": run.record.rows_processed,
        "bytes_inflated": run.record.bytes_inflated,
        "read_mode": run.record.read_mode,
        "notes": [run.record.note] if run.record.note else [],
    }


def pipeline_figures(warm: RunResult, runs: list[RunResult]) -> dict[str, Any]:
    """A pipeline's figures: time from the timed repeats, memory from the warm-up."""
    every = [warm, *runs]
    last = runs[-1].record
    modes = [r.record.read_mode for r in every]
    return {
        "wall_s": summarize([r.wall_s for r in runs]),
        "peak_mib": warm.peak_mib,
        "data_mib": warm.data_mib,
        "peak_rss_mib": warm.peak_rss_mib,
        "rss_before_mib": warm.rss_before_mib,
        "warmup_wall_s": warm.wall_s,  # untimed in the figures above; the sweep's day N
        "hwm_delta_mib": summarize([r.hwm_rss_mib - r.rss_before_mib for r in every]),
        "file_rss_delta_mib": warm.file_rss_delta_mib,
        "stages_s": {
            stage: statistics.median(r.record.stages_s.get(stage, 0.0) for r in runs)
            for stage in STAGES
        },
        # The part of each timed call outside every stage (opening and closing the
        # database, reading the checkpoint), median over the runs.
        "unstaged_s": statistics.median(r.wall_s - sum(r.record.stages_s.values()) for r in runs),
        "counters": last.counters,
        "rows_processed": last.rows_processed,
        "rows_written": last.rows_written,
        "bytes_inflated": last.bytes_inflated,
        "archive_bytes": last.archive_bytes,
        "latest_date": last.latest_date,
        "notes": sorted({r.record.note for r in every if r.record.note}),
        "read_modes": modes,
        "resumed_runs": sum(m.startswith("resumed") for m in modes),
        "top_five": last.top_five,
        "local_split": last.local_split,
        "dialect": last.dialect,
    }


def sweep_points(sweep: list[dict[str, Any]], m: Measurement, day: int) -> list[dict]:
    """The chart's rows: the sweep's days plus day N.

    Day N's point is the main measurement's warm-up: like every sweep point, one run
    with memory sampled, so the curve is measured one way throughout.
    """
    points = [*sweep, {"day": day, "runs": m.warmups}] if sweep else []
    rows = []
    for point in points:
        base, inc = (run_figures(point["runs"][p]) for p in PIPELINES)
        rows.append(
            {
                "day": point["day"],
                "baseline": base,
                "incremental": inc,
                "rows_total": base["rows_processed"],
                "rows_new": inc["rows_processed"],
                "speedup": base["wall_s"] / inc["wall_s"],
                "memory_ratio": base["peak_mib"] / max(inc["peak_mib"], 0.1),
            }
        )
    return rows


def growth(points: list[dict]) -> dict[str, Any] | None:
    """How each pipeline's cost moved over the sweep: first and last day, range and slope."""
    rows = [p["rows_total"] / 1e6 for p in points]
    if len(points) < 2 or len(set(rows)) < 2:
        return None
    out: dict[str, Any] = {"first_day": points[0]["day"], "last_day": points[-1]["day"]}
    for pipeline in PIPELINES:
        for figure in ("wall_s", "peak_mib"):
            values = [p[pipeline][figure] for p in points]
            out[f"{pipeline}_{figure}"] = {
                "first": values[0],
                "last": values[-1],
                "min": min(values),
                "max": max(values),
                "last_over_first": values[-1] / max(values[0], 1e-9),
                # least-squares slope: this figure's unit per million rows of history
                "per_million_rows": statistics.linear_regression(rows, values).slope,
            }
    inc, base = out["incremental_wall_s"], out["baseline_wall_s"]
    out["incremental_flat"] = inc["per_million_rows"] < FLAT_SHARE * base["per_million_rows"]
    return out


def environment() -> dict[str, Any]:
    """Machine and software the figures were measured on."""
    import memory_profiler
    import pandas
    import psutil

    cpu = platform.processor()
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    return {
        "python": platform.python_version(),
        "polars": pl.__version__,
        "pandas": pandas.__version__,
        "sqlite": sqlite3.sqlite_version,
        "memory_profiler": memory_profiler.__version__,
        "os": platform.platform(),
        "cpu_model": cpu,
        "cpu_count": os.cpu_count(),
        "memory_gib": round(psutil.virtual_memory().total / 2**30, 1),
        "command": " ".join(["python", *sys.argv]),
    }


def unique_notes(warmup: dict[str, Any], sweep: list[dict], figures: dict[str, Any]) -> list[str]:
    """Every restatement and fallback the run met, each once, in the order met."""
    notes = [
        *warmup["notes"],
        *[n for p in sweep for n in run_figures(p["runs"]["incremental"])["notes"]],
        *figures["incremental"]["notes"],
    ]
    return list(dict.fromkeys(notes))


def peer_figures(m: Measurement, checks: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """Each peer's figures, measured as the pipelines' are, with its kind and its parity."""
    return {
        name: {
            **pipeline_figures(m.warmups[name], m.runs[name]),
            "kind": PEERS[name][0],
            "parity_ok": check["ok"],
            "parity": check,
        }
        for name, check in checks.items()
    }


def paired_ratios(full: dict[str, Any], inc: dict[str, Any]) -> dict[str, Any]:
    """Each timed run of a full refresh over the incremental run of the same repeat (the
    repeats alternate, so each pair ran side by side): the headline's spread."""
    pairs = zip(full["wall_s"]["runs"], inc["wall_s"]["runs"], strict=True)
    return summarize([f / i for f, i in pairs])


def against_the_best(figures: dict[str, Any], peers: dict[str, Any]) -> dict[str, Any]:
    """The incremental run against the fastest and the leanest correct full refresh."""
    inc = figures["incremental"]
    full = {"baseline": figures["baseline"]} | {
        n: p for n, p in peers.items() if p["kind"] == "full refresh" and p["parity_ok"]
    }
    fastest = min(full, key=lambda n: full[n]["wall_s"]["median"])
    leanest = min(full, key=lambda n: full[n]["peak_mib"])
    memory_ratio = full[leanest]["peak_mib"] / max(inc["peak_mib"], 0.1)
    return {
        "full_refreshes": list(full),
        "fastest": fastest,
        "speedup": full[fastest]["wall_s"]["median"] / inc["wall_s"]["median"],
        "speedup_paired": paired_ratios(full[fastest], inc),
        "leanest": leanest,
        "memory_ratio": memory_ratio,
        # For the sentence: "N x less" when the incremental run is leaner, "N x more" if not.
        "memory_words": (memory_ratio, "less") if memory_ratio >= 1 else (1 / memory_ratio, "more"),
    }


def floor_figures(floors: dict[str, float], inc: dict[str, Any]) -> dict[str, Any]:
    """Each stage's median of a pipeline beside its floor (measure_floors,
    measure_full_floors), and their sums."""
    if not floors:
        return {}
    stages = {stage: {"ours": inc["stages_s"][stage], "floor": s} for stage, s in floors.items()}
    total = {k: sum(figures[k] for figures in stages.values()) for k in ("ours", "floor")}
    return {
        "stages": stages,
        "total": total,
        "wall_s": inc["wall_s"]["median"],
        "unstaged_s": inc["unstaged_s"],
        "tries": FLOOR_TRIES,
    }


def build_results(
    cfg: BenchConfig,
    m: Measurement,
    warmup: dict[str, Any],
    sweep: list[dict[str, Any]],
    parity: dict[str, Any],
    peer_checks: dict[str, dict[str, Any]],
    inflaters: dict[str, Any],
    floors: dict[str, float],
    full_floors: dict[str, float],
) -> dict[str, Any]:
    """The results record (the --json): every figure results.md shows, computed here."""
    figures = {p: pipeline_figures(m.warmups[p], m.runs[p]) for p in PIPELINES}
    peers = peer_figures(m, peer_checks)
    base, inc = figures["baseline"], figures["incremental"]
    notes = unique_notes(warmup, sweep, figures)
    points = sweep_points(sweep, m, cfg.day)
    code_free = (base["peak_mib"] - base["file_rss_delta_mib"]) / max(
        inc["peak_mib"] - inc["file_rss_delta_mib"], 0.1
    )
    if inflaters:
        mib = inflaters["bytes"] / 2**20
        inflaters["mib_per_s"] = {k: mib / s for k, s in inflaters["seconds"].items()}
    return {
        **figures,
        "peers": peers,
        "against_the_best": against_the_best(figures, peers),
        "parity": parity,
        "ratios": {
            "speedup": base["wall_s"]["median"] / inc["wall_s"]["median"],
            "speedup_paired": paired_ratios(base, inc),
            "memory_ratio": base["peak_mib"] / max(inc["peak_mib"], 0.1),
            "memory_ratio_without_library_code": code_free,
        },
        "conditions": {
            "client": cfg.client,
            "day": cfg.day,
            "previous_day": cfg.day - 1,
            "rows_total": base["rows_processed"],
            "rows_new": inc["rows_processed"],
            "archive_bytes": base["archive_bytes"],
            "benchmark_date": base["latest_date"],
            "repeat": cfg.repeat,
            "sweep": cfg.sweep,
            "peers": cfg.peers,
            "dialect": base["dialect"],  # of the day-N archive, as the baseline read it whole
            "run_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        },
        "warmup": warmup,
        "correctness": {
            "state": warmup["how"],
            "parity_day_n": parity["ok"],
            "parity_sweep_days": {str(p["day"]): p["parity"]["ok"] for p in sweep},
            "rows_rejected_archive": base["counters"]["rows_rejected"],
            "rows_rejected_new": inc["counters"]["rows_rejected"],
            "restatements": [n for n in notes if "restatement" in n],
            "fallbacks": [n for n in notes if "restatement" not in n],
        },
        "inflaters": inflaters,
        "floors": floor_figures(floors, inc),
        "floors_full_refresh": floor_figures(full_floors, base),
        "sweep": points,
        "growth": growth(points),
        "chart": cfg.report.with_suffix(".png").name if points else None,
        "summary": {
            "date": base["latest_date"],
            "top_five": base["top_five"],
            "local_split": base["local_split"],
        },
        "environment": environment(),
    }


# === The report: results.md and its chart, formatted from the record alone =======================


def fmt_s(seconds: float) -> str:
    """Seconds for a table cell."""
    return f"{seconds:.3f}"


def fmt_mib(size: int) -> str:
    """Bytes as MiB for a table cell."""
    return f"{size / 2**20:,.1f}"


def fmt_dialect(dialect: dict[str, Any]) -> str:
    """How the CSV was written, in words."""
    extras = dialect["extra_columns"]
    return ", ".join(
        [
            "byte-order mark" if dialect["bom"] else "no byte-order mark",
            f"{dialect['line_end']} line ends",
            "quoted fields" if dialect["quoted_fields"] else "no quoted fields",
            "columns in order" if dialect["columns_in_order"] else "columns reordered",
            f"extra columns ignored: {', '.join(extras)}" if extras else "no extra columns",
        ]
    )


def render_chart(results: dict[str, Any], path: Path) -> None:
    """The PNG next to results.md: time and peak memory against rows in the archive."""
    import matplotlib

    matplotlib.use("Agg")  # no display needed
    import matplotlib.pyplot as plt

    points = results["sweep"]
    rows = [p["rows_total"] / 1e6 for p in points]
    fig, (ax_time, ax_mem) = plt.subplots(1, 2, figsize=(11, 4.2))
    for pipeline, style in (("baseline", "o-"), ("incremental", "s-")):
        ax_time.plot(rows, [p[pipeline]["wall_s"] for p in points], style, label=pipeline)
        ax_mem.plot(rows, [p[pipeline]["peak_mib"] for p in points], style, label=pipeline)
    for ax, label in ((ax_time, "wall time (s)"), (ax_mem, "peak memory (MiB)")):
        ax.set_xlabel("rows in the archive (millions)")
        ax.set_ylabel(label)
        ax.set_ylim(bottom=0)
        ax.grid(alpha=0.3)
        ax.legend()
    cond = results["conditions"]
    fig.suptitle(f"{cond['client']}: one day's step, days 2 to {cond['day']}")
    fig.tight_layout()
    tmp = path.with_name(f".{path.name}.tmp")
    fig.savefig(tmp, format="png", dpi=100)
    plt.close(fig)
    os.replace(tmp, path)


def fmt_spread(paired: dict[str, Any]) -> str:
    """The spread of a speed-up over the runs paired repeat by repeat."""
    runs = len(paired["runs"])
    if runs < 2:
        return "one timed run"
    return (
        f"{paired['min']:.1f}x to {paired['max']:.1f}x over {runs} side-by-side runs,"
        f" median {paired['median']:.1f}x"
    )


def render_headline(results: dict[str, Any]) -> list[str]:
    """The title and the one-sentence answer."""
    cond, ratios = results["conditions"], results["ratios"]
    return [
        "# Incremental versus full reprocessing: benchmark results",
        "",
        f"Client `{cond['client']}`, step from day {cond['previous_day']} to day {cond['day']}: "
        f"the incremental pipeline was **{ratios['speedup']:.1f}x faster**"
        f" ({fmt_spread(ratios['speedup_paired'])}) "
        f"and used **{ratios['memory_ratio']:.1f}x less peak memory** than full "
        f"reprocessing; parity **{'held' if results['parity']['ok'] else 'FAILED'}**.",
        "",
        *render_best(results),
    ]


def render_best(results: dict[str, Any]) -> list[str]:
    """The headline against the best full refresh of the run, whoever it was."""
    best = results["against_the_best"]
    if not results["peers"]:
        return []
    return [
        f"Against the fastest correct full refresh of this run ({best['fastest']}), the"
        f" incremental pipeline was **{best['speedup']:.1f}x faster**"
        f" ({fmt_spread(best['speedup_paired'])}); against the leanest"
        f" ({best['leanest']}), it used **{best['memory_words'][0]:.1f}x"
        f" {best['memory_words'][1]} peak memory**"
        f" (full refreshes with parity: {', '.join(best['full_refreshes'])}).",
        "",
    ]


def render_conditions(results: dict[str, Any]) -> list[str]:
    """What was measured, on what."""
    cond, env = results["conditions"], results["environment"]
    return [
        "## Conditions",
        "",
        "| item | value |",
        "| --- | --- |",
        f"| client, day | {cond['client']}, day {cond['day']} |",
        f"| benchmark date (latest transaction date) | {cond['benchmark_date']} |",
        f"| rows in the day-{cond['day']} archive | {cond['rows_total']:,} |",
        f"| new rows since day {cond['previous_day']} | {cond['rows_new']:,} |",
        f"| archive CSV size | {fmt_mib(cond['archive_bytes'])} MiB |",
        f"| CSV dialect read | {fmt_dialect(cond['dialect'])} |",
        f"| repeats (after one untimed warm-up) | {cond['repeat']} |",
        f"| run at | {cond['run_at']} |",
        f"| command | `{env['command']}` |",
        f"| CPU | {env['cpu_model']}, {env['cpu_count']} cores, {env['memory_gib']} GiB |",
        f"| OS | {env['os']} |",
        f"| Python / Polars / pandas | {env['python']} / {env['polars']} / {env['pandas']} |",
        f"| SQLite / memory_profiler | {env['sqlite']} / {env['memory_profiler']} |",
        "",
    ]


def render_time_memory(results: dict[str, Any]) -> list[str]:
    """Every timed run and the memory figures, with how memory is measured."""
    out = [
        "## Time and memory",
        "",
        "| pipeline | wall s, median | min | max | every run (s) | peak memory MiB |"
        " of it: data MiB | process RSS before -> peak MiB | kernel high-water check MiB |"
        " of the peak: library code paged in MiB |",
        "| --- | ---: | ---: | ---: | --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    for name, fig in (
        ("baseline (full refresh)", results["baseline"]),
        ("incremental", results["incremental"]),
    ):
        w = fig["wall_s"]
        out.append(
            f"| {name} | {fmt_s(w['median'])} | {fmt_s(w['min'])} | {fmt_s(w['max'])} | "
            f"{', '.join(fmt_s(r) for r in w['runs'])} | {fig['peak_mib']:,.1f} | "
            f"{fig['data_mib']:,.1f} | "
            f"{fig['rss_before_mib']:,.0f} -> {fig['peak_rss_mib']:,.0f} | "
            f"{fig['hwm_delta_mib']['median']:,.1f} | {fig['file_rss_delta_mib']:,.1f} |"
        )
    return [
        *out,
        "",
        "Peak memory is the pipeline's own: peak resident size during the call minus the"
        " resident size just before it, sampled every 5 ms by memory_profiler in a fresh"
        " process. The check column is the kernel's own high-water mark (VmHWM) of each run's"
        " process minus the same starting size, median over all runs: it cannot miss a"
        " short peak, so agreement with the sampled figure says the sampling did not either."
        " The last column is the part of the peak that is file-backed (RssFile after the call"
        " minus before): pages of Polars', pandas' and SQLite's shared libraries that the"
        " call touched for the first time in its process. Both pipelines pay it once; it is"
        " clean, shared memory, counted here because the measure is the resident size. The"
        " data column is the same peak counting only the process's private, anonymous memory"
        " (resident minus shared pages of /proc/self/statm, sampled every 5 ms on a thread"
        " during the same call): what the pipeline itself made.",
        "",
    ]


def fmt_parity(peer: dict[str, Any]) -> str:
    """A peer's parity, with what it lost when it failed."""
    if peer["parity_ok"]:
        return "held"
    diff = peer["parity"]["diff"]
    return f"FAILED: {diff['rows_lost']:,} rows lost, {diff['keys_differing']:,} keys differ"


def render_peers(results: dict[str, Any]) -> list[str]:
    """Every way of doing the day measured in the run, side by side."""
    if not results["peers"]:
        why = "--no-peers" if not results["conditions"]["peers"] else "none"
        return ["## Against the peers", "", f"Not measured in this run ({why}).", ""]
    rows = {
        "baseline": {**results["baseline"], "kind": "full refresh", "parity_ok": True},
        "incremental": {**results["incremental"], "kind": "incremental", "parity_ok": True},
        **results["peers"],
    }
    out = [
        "## Against the peers",
        "",
        "What a data team would run instead, measured in the same run by the same protocol"
        " (a fresh process per run, one warm-up that also measures memory, the repeats"
        " alternating with the two pipelines), each answer checked against the baseline's.",
        "",
        "| way | kind | wall s, median | min | max | peak MiB | data MiB | read | hash of history |"
        " parse | transform | write | parity with the baseline |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- |",
    ]
    for name, fig in rows.items():
        w, st = fig["wall_s"], fig["stages_s"]
        out.append(
            f"| {name} | {fig['kind']} | {fmt_s(w['median'])} | {fmt_s(w['min'])} |"
            f" {fmt_s(w['max'])} | {fig['peak_mib']:,.1f} | {fig['data_mib']:,.1f} |"
            f" {fmt_s(st['read'])} | {fmt_s(st['verify'])} | {fmt_s(st['parse'])} |"
            f" {fmt_s(st['transform'])} | {fmt_s(st['write'])} |"
            f" {'held' if name in PIPELINES else fmt_parity(fig)} |"
        )
    return [
        *out,
        "",
        "- polars_in_memory: the full refresh an engineer writes first: the whole member"
        " inflated in one call, one read_csv of every record, the shared transformation on"
        " every row at once and the baseline's own write. It holds the whole text and every"
        " row in memory at once, and checks nothing of the reader's shape (a record the"
        " reader misreads shows in its parity).",
        "- duckdb: the same rules in one DuckDB SQL statement over the CSV, which it reads"
        " itself (inflated to a file beside the database inside the timed call), every"
        " field as text with its sniffer on; the table goes through the baseline's own"
        " write path, so only the engine differs. DuckDB fuses parsing into its query:"
        " its parse time is inside transform.",
        "- by_date: from the same day N-1 state as the incremental pipeline, it reads the"
        " whole archive, keeps the rows dated after the last processed date and merges"
        " them like the incremental pipeline. Rows that arrive late, dated on or before"
        " that date, are lost: that is what its parity shows. The incremental pipeline"
        " checkpoints by byte offset in the cumulative file instead, so no row is missed"
        " whatever its date.",
        "",
    ]


def render_stages(results: dict[str, Any]) -> list[str]:
    """Where the time goes, stage by stage."""
    out = [
        "## Where the time goes (medians, seconds)",
        "",
        "| pipeline | read | hash of history | parse | transform | write | rows processed |"
        " rows written | bytes inflated / in archive |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- |",
    ]
    for name in PIPELINES:
        fig = results[name]
        st = fig["stages_s"]
        out.append(
            f"| {name} | {fmt_s(st['read'])} | {fmt_s(st['verify'])} | {fmt_s(st['parse'])} |"
            f" {fmt_s(st['transform'])} | {fmt_s(st['write'])} | {fig['rows_processed']:,} |"
            f" {fig['rows_written']:,} |"
            f" {fmt_mib(fig['bytes_inflated'])} / {fmt_mib(fig['archive_bytes'])} MiB |"
        )
    return [*out, "", STAGE_WORDS, "", *render_reads(results), "", *render_floors(results)]


STAGE_WORDS = (
    "The stages of a run do not overlap. read: opening the archive, waiting for its inflated"
    " text (the inflating runs on a thread, ahead of the parse) and cutting it into blocks of"
    " whole records (the incremental run also hashes the new text for its fingerprint);"
    " hash of history: proving the compressed bytes before the access point unchanged;"
    " parse: lines into fields; transform: cleaning, counting and aggregating (for the"
    " incremental run, also the merge into the stored days it touches); write: the"
    " transaction that stores the result."
)
STAGE_LABELS = {"verify": "hash of history"}  # report names of stages that differ from keys


# What each stage's floor is (measure_floors), for the report.
FLOOR_WHAT = {
    "read": "zlib inflating the same tail from the same access point, alone: no CRC, no"
    " hashing, no boundaries noted, no blocks cut",
    "verify": "BLAKE3 over the compressed bytes before the point, already in memory",
    "parse": "Polars' CSV reader on the new text alone, in one call, every field as text: no"
    " checks, no line numbers",
    "transform": "the new rows' transformation alone, without the merge (reading back the"
    " days they touch, adding up, deriving the table's columns)",
    "write": "SQLite alone: delete the touched days, insert the same rows in the same"
    " multi-row INSERTs with their parameters built beforehand, store the checkpoint and"
    " the access points, commit",
}


FULL_FLOOR_WHAT = {
    "read": "ISA-L inflating the whole member in one call, its compressed bytes in memory",
    "parse": "Polars' CSV reader on the whole text in one call, every field as text: no"
    " checks, no line numbers",
    "transform": "the shared transformation on every row at once, and the table's derived columns",
    "write": "SQLite alone: insert the same rows in the same multi-row INSERTs with their"
    " parameters built beforehand, commit",
}


def render_floors(results: dict[str, Any]) -> list[str]:
    """The incremental step's stages beside their floors, then the full refresh's."""
    floors = results["floors"]
    if not floors:
        return render_full_floors(results)
    return [
        "### The incremental step against its floor",
        "",
        "Each stage of the day-N incremental step (median of the timed runs) beside the"
        " least its work costs here: the same work done alone, from the same day N-1 state"
        f" and access point, warm, median of {floors['tries']}, outside the pipelines'"
        " timings. The gap is what the step adds to the bare work: its checks and"
        " bookkeeping, the merge into the stored days, pandas on the write path, and the"
        " first use of each library in a fresh process (the floors run warm).",
        "",
        *floor_rows(
            floors,
            FLOOR_WHAT,
            "step",
            "opening and closing the database (SQLite folds its write-ahead log into the"
            " file when the last connection closes) and reading the checkpoint",
        ),
        "",
        *render_full_floors(results),
    ]


def render_full_floors(results: dict[str, Any]) -> list[str]:
    """The full refresh's stages beside their floors."""
    floors = results["floors_full_refresh"]
    if not floors:
        return []
    return [
        "### The full refresh against its floor",
        "",
        "Each stage of the baseline (median of the timed runs) beside the least its work"
        " costs here: the same work on the whole day-N archive in one call, its input ready"
        f" beforehand, warm, median of {floors['tries']}, outside the pipelines' timings."
        " The floors hold the whole text and every row at once; the baseline holds a block"
        " at a time, which is what bounds its memory.",
        "",
        *floor_rows(floors, FULL_FLOOR_WHAT, "refresh", "the call itself"),
        "",
    ]


def floor_rows(floors: dict[str, Any], what: dict[str, str], run: str, outside: str) -> list[str]:
    """A floors table: one row per stage, then their sums; `outside`: what lies outside
    every stage of a run."""
    stages = floors["stages"]
    return [
        "| stage | ours s | floor s | the floor is |",
        "| --- | ---: | ---: | --- |",
        *[
            f"| {STAGE_LABELS.get(stage, stage)} | {fmt_s(f['ours'])} | {fmt_s(f['floor'])} |"
            f" {what[stage]} |"
            for stage, f in stages.items()
        ],
        f"| all {len(stages)} | {fmt_s(floors['total']['ours'])} |"
        f" {fmt_s(floors['total']['floor'])} | of a whole {run} of {fmt_s(floors['wall_s'])} s,"
        f" of which {fmt_s(floors['unstaged_s'])} s lie outside every stage: {outside} |",
    ]


def render_reads(results: dict[str, Any]) -> list[str]:
    """How the incremental runs read the archive, and what each inflater costs."""
    inc, cond = results["incremental"], results["conditions"]
    out = [
        f"The incremental run resumed inside the archive in {inc['resumed_runs']} of its"
        f" {len(inc['read_modes'])} runs (warm-up included): it read the access point saved by"
        f" day {cond['previous_day']}'s run, hashed the compressed history before it to prove"
        f" it unchanged ({fmt_s(inc['stages_s']['verify'])} s), then inflated only"
        f" {fmt_mib(inc['bytes_inflated'])} of the archive's {fmt_mib(inc['archive_bytes'])}"
        " MiB, and parsed, transformed and wrote only the new rows and the days they touch.",
    ]
    others = sorted({m for m in inc["read_modes"] if not m.startswith("resumed")})
    if others:
        out[0] += " Other runs: " + "; ".join(others) + "."
    inflaters = results["inflaters"]
    if not inflaters:
        return out
    used = {
        "ISA-L (isal)": "every whole read of the baseline",
        "zlib (Z_BLOCK, ctypes)": "the incremental run's reads (it needs block boundaries)",
    }
    out += [
        "",
        f"Inflaters, on the whole day-{cond['day']} member ({fmt_mib(inflaters['bytes'])} MiB"
        " of CSV, median of 3, outside the pipelines' timings):",
        "",
        "| inflater | used for | seconds | MiB/s |",
        "| --- | --- | ---: | ---: |",
        *[
            f"| {name} | {used.get(name, '')} | {fmt_s(sec)} |"
            f" {inflaters['mib_per_s'][name]:,.0f} |"
            for name, sec in inflaters["seconds"].items()
        ],
        "",
        "The baseline gets the fastest inflater measured here. The incremental run"
        " inflates with zlib, the only one that reports deflate block boundaries and can"
        " be primed at one, so the slower inflater counts against it, on its small tail.",
    ]
    return out


def render_sweep(results: dict[str, Any]) -> list[str]:
    """The 'how cost grows' section: the chart and its numbers."""
    if not results["sweep"]:
        why = "no earlier day to sweep" if results["conditions"]["sweep"] else "--no-sweep"
        return ["## How cost grows", "", f"Not measured in this run ({why}).", ""]
    out = [
        "## How cost grows",
        "",
        "Each day's step from the day before, for every day: the baseline's cost follows"
        " the rows in the archive, the incremental one's the new rows (it inflates only the"
        " tail past its access point; hashing the compressed history, timed above, is all"
        " that still grows with the archive). Every day is one run per pipeline, time"
        " and memory sampled in the same run (for day N, the warm-up run of the main"
        " measurement), so these single figures are noisier than the medians above.",
        "",
        f"![time and peak memory against rows in the archive]({results['chart']})",
        "",
        "| day | rows in archive | new rows | baseline s | incremental s | speed-up |"
        " baseline MiB | incremental MiB | memory ratio | incremental inflated MiB |",
        "| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for p in results["sweep"]:
        base, inc = p["baseline"], p["incremental"]
        out.append(
            f"| {p['day']} | {p['rows_total']:,} | {p['rows_new']:,} | {fmt_s(base['wall_s'])} | "
            f"{fmt_s(inc['wall_s'])} | {p['speedup']:.1f}x | {base['peak_mib']:,.1f} | "
            f"{inc['peak_mib']:,.1f} | {p['memory_ratio']:.1f}x |"
            f" {fmt_mib(inc['bytes_inflated'])} |"
        )
    return [*out, ""]


def render_counters(results: dict[str, Any]) -> list[str]:
    """The data-quality counters of both pipelines."""
    base, inc = results["baseline"]["counters"], results["incremental"]["counters"]
    return [
        "## Data quality counters",
        "",
        "| counter | baseline (whole archive) | incremental (new rows) |",
        "| --- | ---: | ---: |",
        *[f"| {c} | {base[c]:,} | {inc[c]:,} |" for c in COUNTERS],
        "",
    ]


def render_parity(results: dict[str, Any]) -> list[str]:
    """The parity verdict, with the diff when it failed."""
    parity, client = results["parity"], results["conditions"]["client"]
    if parity["ok"]:
        return [
            "## Parity",
            "",
            f"Passed: the {parity['rows']:,} rows of `processed_sales` for {client} equal"
            " the full refresh (same keys, integer columns equal, float columns within 1e-9"
            f" relative), and so do the rejected rows. Checked in {parity['seconds']:.3f} s,"
            " outside every timing.",
            "",
        ]
    diff = parity["diff"]
    return [
        "## Parity",
        "",
        f"**FAILED**: {parity['error']}",
        "",
        f"- rows only in the incremental state: {diff['rows_only_incremental']:,}",
        f"- rows only in the full refresh: {diff['rows_only_full_refresh']:,}",
        f"- columns that differ (rows): {diff['columns_differing']}",
        *[f"- `{line}`" for line in diff["sample"]],
        "",
    ]


def render_correctness(results: dict[str, Any]) -> list[str]:
    """The 'Correctness' section: which checks ran in this run, and what they found."""
    c, cond = results["correctness"], results["conditions"]
    sweep_days = c["parity_sweep_days"]
    failed = [d for d, ok in sweep_days.items() if not ok]
    lines = [
        "## Correctness",
        "",
        f"- State at day {cond['previous_day']}: {c['state']}"
        f" ({results['warmup']['seconds']:.1f} s, untimed).",
        f"- Parity on day {cond['day']}: {'held' if c['parity_day_n'] else 'FAILED'}.",
    ]
    if sweep_days:
        days = list(sweep_days)
        lines.append(
            f"- Parity on each sweep day ({days[0]} to {days[-1]}, incremental state against"
            f" a full recompute of that day's archive): "
            + ("held on every day." if not failed else f"FAILED on days {failed}.")
        )
    elif cond["sweep"]:
        lines.append("- Parity on earlier days: no earlier day to sweep.")
    else:
        lines.append("- Parity on earlier days: not checked in this run (--no-sweep).")
    return [
        *lines,
        f"- Rows rejected (kept in `rejected_rows` with line and reason): "
        f"{c['rows_rejected_archive']:,} in the day-{cond['day']} archive,"
        f" {c['rows_rejected_new']:,} of them among its new rows.",
        "- Restatements detected (client rebuilt from the full archive): "
        + ("; ".join(c["restatements"]) if c["restatements"] else "none."),
        "- Fallbacks from an access point to a whole read (every replay, sweep and"
        " measured run): " + ("; ".join(c["fallbacks"]) if c["fallbacks"] else "none."),
        "",
    ]


def render_summary(results: dict[str, Any]) -> list[str]:
    """The day's leaderboard and local split, as the baseline's run computed them."""
    summary = results["summary"]
    return [
        f"## Top 5 SKU groups by revenue on {summary['date']}",
        "",
        "| rank | sku_group | revenue USD | orders |",
        "| ---: | --- | ---: | ---: |",
        *[
            f"| {i} | {r['sku_group']} | {r['revenue']:,.2f} | {r['orders']:,} |"
            for i, r in enumerate(summary["top_five"], 1)
        ],
        "",
        f"## California-local versus non-local on {summary['date']}",
        "",
        "| customers | orders | revenue USD | average order value USD |",
        "| --- | ---: | ---: | ---: |",
        *[
            f"| {'local (CA)' if r['local'] else 'non-local'} | {r['orders']:,} | "
            f"{r['revenue']:,.2f} | {r['avg_order_value']:,.2f} |"
            for r in summary["local_split"]
        ],
        "",
    ]


def render_conclusion(results: dict[str, Any]) -> list[str]:
    """The measured ratios, and what the sweep says about history."""
    ratios, inc, grew = results["ratios"], results["incremental"], results["growth"]
    lines = [
        "## Conclusion",
        "",
        f"- Speed: {ratios['speedup']:.2f}x (baseline median / incremental median).",
        f"- Memory: {ratios['memory_ratio']:.2f}x (baseline peak / incremental peak)."
        f" Leaving out the library code each run pages in (the last column of the memory"
        f" table, {inc['file_rss_delta_mib']:.0f} MiB of the incremental run's"
        f" {inc['peak_mib']:.0f}), the ratio would be"
        f" {ratios['memory_ratio_without_library_code']:.2f}x.",
    ]
    if grew:
        b, i = grew["baseline_wall_s"], grew["incremental_wall_s"]
        bm, im = grew["baseline_peak_mib"], grew["incremental_peak_mib"]
        verdict = (
            "its cost did not grow with history"
            if grew["incremental_flat"]
            else "its time grew with history too"
        )
        lines.append(
            f"- History: from day {grew['first_day']} to day {grew['last_day']} the baseline"
            f" went from {fmt_s(b['first'])} s and {bm['first']:,.0f} MiB to"
            f" {fmt_s(b['last'])} s and {bm['last']:,.0f} MiB (a fit over every day:"
            f" {b['per_million_rows']:+.3f} s per million rows of history); the incremental"
            f" run stayed between {fmt_s(i['min'])} and {fmt_s(i['max'])} s and between"
            f" {im['min']:,.0f} and {im['max']:,.0f} MiB ({i['per_million_rows']:+.3f} s per"
            f" million rows): {verdict}."
        )
    lines.append(f"- Parity: {'held' if results['parity']['ok'] else 'FAILED'}.")
    return [*lines, ""]


def render_method() -> list[str]:
    """How both pipelines work and how they are measured."""
    return [
        "## Methodology",
        "",
        "- Both pipelines use the same code for everything but what they read and how they"
        " write: `process_transactions` (Polars, lazy) parses, cleans"
        " (docs/spec.md section 2), counts and aggregates; `finalize` derives the table's"
        " columns from integer-cent sums.",
        "- Baseline: inflate the whole day-N archive, process every row, replace the"
        " client's rows of `processed_sales_full_refresh` in one transaction.",
        "- Incremental: resume inflating at a deflate block boundary saved by the day"
        " before (zlib's zran method: compressed offset and bit, the 32 KiB window),"
        " once the compressed bytes before it hash as they did (BLAKE3) and the text from"
        " it to yesterday's end hashes as processed; process only the rows past the"
        " checkpoint, then in one transaction delete and re-insert the days they touch"
        " (additive columns summed, derived ones recomputed), advance the checkpoint and"
        " store the next access points. If no point fits, it inflates the whole archive"
        " and checks the processed bytes against the checkpoint's fingerprint instead;"
        " if those changed, it rebuilds the client. Both are reported above.",
        "- Before timing, the client's incremental state is brought to day N-1 by"
        " replaying the archives through the incremental path (or a verified stored state"
        " is reused). Every run, timed or not, starts from its own copy of that state and"
        " runs in a fresh Python process, started once the disk's pending writes are flushed;"
        " the static lookups and imports are loaded before the clock starts. One untimed"
        " warm-up run per pipeline (which also measures memory), then the repeats,"
        " alternating the two pipelines.",
        "- `wall_s` spans the call from opening the archive to the committed write;"
        " parity is checked afterwards, on the last repeat's output, and never timed with"
        " a pipeline.",
        "",
    ]


def render_report(results: dict[str, Any]) -> str:
    """results.md, formatted from the results record alone (no figure is computed here)."""
    sections = [
        render_headline(results),
        render_conditions(results),
        render_time_memory(results),
        render_peers(results),
        render_stages(results),
        render_sweep(results),
        render_counters(results),
        render_parity(results),
        render_correctness(results),
        render_summary(results),
        render_conclusion(results),
        render_method(),
    ]
    return "\n".join(line for section in sections for line in section)


# === Command line ================================================================================


def check_inputs(cfg: BenchConfig) -> Header:
    """Fail fast, before any database change, on a missing or unusable input.

    Returns the day-N archive's header.
    """
    if not cfg.data_dir.is_dir():
        raise InputError(f"{cfg.data_dir}: data folder not found (run generate_data.py first)")
    if cfg.client in ("", ".", "..") or Path(cfg.client).name != cfg.client:
        raise InputError(
            f"--client {cfg.client!r}: not a client folder name (give a folder of"
            f" {cfg.data_dir} by its name, such as client_1)"
        )
    load_lookups(cfg.data_dir)
    folder = cfg.data_dir / cfg.client
    if not folder.is_dir():
        found = sorted(p.name for p in cfg.data_dir.glob("client_*"))
        raise InputError(f"{folder}: no such client folder (found: {', '.join(found) or 'none'})")
    headers = [
        member_header(locate_member(archive_path(cfg.data_dir, cfg.client, d), d))
        for d in range(1, cfg.day + 1)
    ]
    for option, path in (("--db", cfg.db), ("--report", cfg.report), ("--json", cfg.json_path)):
        if path is not None and not path.resolve().parent.is_dir():
            raise InputError(f"{path}: the folder for {option} does not exist")
    return headers[-1]


@contextlib.contextmanager
def exclusive_run(db: Path) -> Iterator[None]:
    """Hold `<db>.lock` for the whole run; a second run on the same database stops at once.

    SQLite's own locks (WAL, 30 s busy timeout, checkpoint re-checked inside each
    transaction) already keep a table from being corrupted or double-counted; this lock
    makes a second benchmark say so plainly instead of racing the first to the end. A
    stale pid left in the file by a killed run is no obstacle: the kernel released its lock.
    """
    lock_path = db.resolve().with_name(db.resolve().name + ".lock")  # same file via any link
    try:
        lock = open(lock_path, "a+")  # noqa: SIM115 (closed below, after the run)
    except OSError as exc:
        raise InputError(f"{lock_path}: cannot open the lock file ({exc.strerror})") from None
    with lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            lock.seek(0)
            holder = lock.read().strip() or "unknown"
            raise BusyError(
                f"{db}: another main.py run is using this database ({holder}); "
                "wait for it to finish"
            ) from None
        lock.seek(0)
        lock.truncate()
        lock.write(f"pid {os.getpid()}, started {dt.datetime.now():%Y-%m-%d %H:%M:%S}")
        lock.flush()
        yield


@contextlib.contextmanager
def scratch_folder(db: Path, say: Say) -> Iterator[Path]:
    """A temporary folder beside the database for the run's copies, removed after it.

    Called with the database's lock held: any scratch folder of the same database
    still there belongs to a run that was killed (its lock is gone), so it is removed.
    """
    home = db.resolve().parent
    prefix = f"{SCRATCH_PREFIX}{db.resolve().name}-"
    for leftover in sorted(home.glob(f"{prefix}*")):
        if leftover.is_dir():
            shutil.rmtree(leftover, ignore_errors=True)
            say(f"removed {leftover}, the scratch folder of a run that did not finish")
    with tempfile.TemporaryDirectory(prefix=prefix, dir=home) as tmp:
        yield Path(tmp)


def scratch_state(cfg: BenchConfig, scratch: Path) -> Path:
    """A copy of the database to work on, its schema current, the baseline's table empty.

    The real database changes only at the very end, and then only for this client, so
    bad input found late leaves it untouched.
    """
    state = scratch / "state.db"
    if cfg.db.exists():
        copy_db(cfg.db, state)
    with contextlib.closing(connect(state)) as con:
        ensure_schema(con, say=lambda line: None)  # said when the real one is migrated
        with transaction(con):  # every baseline run then writes into a client-free table
            delete_client(con, cfg.client, FULL_REFRESH_TABLES)
    return state


def final_parity(final: Path, client: str, sweep: list[dict[str, Any]]) -> dict[str, Any]:
    """Parity of the last repeat's two answers, failed if any sweep day failed (timed apart)."""
    clock = Stopwatch()
    with clock.stage("parity"), contextlib.closing(connect(final)) as con:
        parity = overall_parity(check_parity(con, client), sweep)
    return {**parity, "seconds": clock.stages_s["parity"]}


def save_day_n(cfg: BenchConfig, final: Path, parity: dict[str, Any], say: Say) -> None:
    """The client's rows of every table replaced by the day-N state, in one transaction.

    On a parity failure the real database is left as it was and the failing state is
    kept beside it instead.
    """
    target = cfg.db
    if not parity["ok"]:
        target = cfg.db.with_name(cfg.db.name + ".parity-failed")
        parity["kept"] = str(target)
    with contextlib.closing(connect(target)) as con:
        ensure_schema(con, say)
        copy_client_rows(final, con, cfg.client, TABLES)


def run_benchmark(cfg: BenchConfig, say: Say) -> dict[str, Any]:
    """One benchmark run, in the seven steps of the README; returns the results record."""
    header = check_inputs(cfg)  # 1. inputs first
    if header.extras:
        path = archive_path(cfg.data_dir, cfg.client, cfg.day)
        say(f"{path}: extra column(s) ignored: {', '.join(header.extras)}")
    with exclusive_run(cfg.db), scratch_folder(cfg.db, say) as scratch:
        state = scratch_state(cfg, scratch)  # 2. a scratch copy
        warmup = populate_historical_data(state, cfg.data_dir, cfg.client, cfg.day, say)  # 3.
        say(f"timing {cfg.repeat} repeat(s) of each pipeline, each in a fresh process")
        measured = measure(cfg, state, scratch)  # 4. timing
        inflaters = measure_inflaters(cfg)
        floors = measure_floors(cfg, state, scratch)
        full_floors = measure_full_floors(cfg, state, scratch)
        if cfg.sweep and cfg.day > 2:
            say(f"sweep: both pipelines on days 2..{cfg.day - 1}, one sampled run each")
        sweep = run_sweep(cfg, scratch)  # 5. sweep
        profile_lines(cfg, state, scratch)
        parity = final_parity(measured.final, cfg.client, sweep)  # 6. parity
        peers = {
            name: peer_parity(
                scratch / f"run-{name}.db", PEERS[name][1], measured.final, cfg.client
            )
            for name in measured.runs
            if name in PEERS
        }
        save_day_n(cfg, measured.final, parity, say)  # 7. results
    return build_results(
        cfg, measured, warmup, sweep, parity, peers, inflaters, floors, full_floors
    )


def write_text_atomically(path: Path, text: str) -> None:
    """Write a file under a temporary name and rename it into place."""
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def write_outputs(cfg: BenchConfig, results: dict[str, Any]) -> None:
    """The --json record, then the chart and results.md rendered from it."""
    if cfg.json_path:
        write_text_atomically(cfg.json_path, json.dumps(results, indent=2, default=str) + "\n")
    if results["chart"]:
        render_chart(results, cfg.report.with_name(results["chart"]))
    write_text_atomically(cfg.report, render_report(results))


def positive_int(text: str) -> int:
    """argparse type: an integer of at least 1."""
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """Command-line options (docs/spec.md section 5) over the BenchConfig defaults."""
    d = BenchConfig()
    p = argparse.ArgumentParser(
        prog="main.py",
        description="Benchmark incremental processing against full reprocessing of a "
        "cumulative daily feed, check parity, and write results.md.",
        epilog="example: python main.py --client client_2 --day 4 --repeat 3 --json results.json",
    )
    p.add_argument(
        "--data-dir",
        type=Path,
        default=d.data_dir,
        help=f"feeds written by generate_data.py (default: {d.data_dir})",
    )
    p.add_argument("--db", type=Path, default=d.db, help=f"SQLite database (default: {d.db})")
    p.add_argument(
        "--client", default=d.client, help=f"client folder to benchmark (default: {d.client})"
    )
    p.add_argument(
        "--day",
        type=positive_int,
        default=d.day,
        help=f"benchmark the step from day N-1 to day N (default: {d.day})",
    )
    p.add_argument(
        "--repeat",
        type=positive_int,
        default=d.repeat,
        help=f"timed runs of each pipeline after one warm-up (default: {d.repeat})",
    )
    p.add_argument(
        "--report", type=Path, default=d.report, help=f"Markdown report (default: {d.report})"
    )
    p.add_argument(
        "--json",
        type=Path,
        default=None,
        dest="json_path",
        help="also write the machine-readable results here, e.g. results.json",
    )
    p.add_argument(
        "--sweep",
        action=argparse.BooleanOptionalAction,
        default=d.sweep,
        help="also run both pipelines once on every day 2..N-1 and chart how cost grows "
        "(default: on; --no-sweep skips it)",
    )
    p.add_argument(
        "--peers",
        action=argparse.BooleanOptionalAction,
        default=d.peers,
        help="also measure what a data team would run instead, on day N: a full refresh in"
        " DuckDB and the by-date shortcut (default: on; --no-peers skips them)",
    )
    p.add_argument("--worker", help=argparse.SUPPRESS)  # internal: one measured run
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark; 0 on parity, 1 on a parity failure, 2 on unusable input."""
    args = parse_args(argv)
    try:
        if args.worker:
            spec = RunSpec(**json.loads(args.worker))
            die_with_driver(spec.driver_pid)
            Path(spec.out).write_text(json.dumps(asdict(worker(spec))))
            return 0
        cfg = BenchConfig(
            args.data_dir,
            args.db,
            args.client,
            args.day,
            args.repeat,
            args.report,
            args.json_path,
            args.sweep,
            args.peers,
        )
        results = run_benchmark(cfg, say=lambda line: print(line, flush=True))
    except InputError as exc:
        print(f"main.py: error: {exc}", file=sys.stderr)
        return 2
    except (BusyError, ConflictError, WorkerError) as exc:
        print(f"main.py: error: {exc}", file=sys.stderr)
        return 1
    write_outputs(cfg, results)
    base, inc, ratios = results["baseline"], results["incremental"], results["ratios"]
    print(
        f"baseline {base['wall_s']['median']:.3f} s, {base['peak_mib']:.0f} MiB; "
        f"incremental {inc['wall_s']['median']:.3f} s, {inc['peak_mib']:.0f} MiB: "
        f"{ratios['speedup']:.1f}x faster, {ratios['memory_ratio']:.1f}x less memory; "
        f"report: {cfg.report}"
    )
    if not results["parity"]["ok"]:
        diff = results["parity"]["diff"]
        print(f"parity diff: {json.dumps(diff, indent=2, default=str)}")
        print(
            f"main.py: parity FAILED for {cfg.client} day {cfg.day}: {results['parity']['error']}"
            f" (database left unchanged; failing state kept in {results['parity']['kept']})",
            file=sys.stderr,
        )
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
