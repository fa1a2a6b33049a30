"""Line blocks: the CSV text in blocks of whole records, its header and fingerprints.

Owns cutting the inflated text at record ends, the header record, and the hashes that
prove the processed text unchanged. Knows nothing of fields' values or of the database."""

from __future__ import annotations

import collections
import contextlib
import csv
import queue
import re
import threading
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import blake3

from incremental_bench.archive import Member, inflate_all, locate_member, open_member
from incremental_bench.config import (
    BLOCK_BYTES,
    BOM,
    COLUMNS,
    HEADER_BYTES,
    PREFETCH_CHUNKS,
    InputError,
    Restated,
)


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
