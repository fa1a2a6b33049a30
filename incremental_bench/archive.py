"""Zip members: where a day's CSV lies in its archive, and inflating it whole.

Owns locating the member, reading its compressed bytes and the whole inflate (ISA-L).
Knows nothing of CSV records or of the database."""

from __future__ import annotations

import contextlib
import struct
import zipfile
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from isal import isal_zlib

from incremental_bench.config import INFLATE_OUT_BYTES, READ_CHUNK_BYTES, CorruptArchive, InputError


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


# Compression methods zipfile reads (by their zip method number), and the names of some
# it does not, for the error.
READABLE_METHODS = {
    zipfile.ZIP_STORED: "stored",
    zipfile.ZIP_DEFLATED: "deflate",
    zipfile.ZIP_BZIP2: "bzip2",
    zipfile.ZIP_LZMA: "LZMA",
}
# The methods whose members resume inside (the rest are read whole every day).
RESUMABLE_METHODS = (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED)
UNREADABLE_METHODS = {9: "Deflate64", 10: "PKWARE implode", 93: "Zstandard", 95: "XZ", 98: "PPMd"}


def csv_member(path: Path, day: int, names: list[str]) -> str:
    """The day's CSV among an archive's members: `transactions_day_N.csv` where it is
    there; else the one `.csv` member that is not a folder's or macOS's metadata
    (`__MACOSX/`, `._` files). None or several: one line naming the archive and them."""
    name = f"transactions_day_{day}.csv"
    if name in names:
        return name
    candidates = [
        n
        for n in names
        if n.lower().endswith(".csv")
        and not n.startswith("__MACOSX/")
        and not n.rsplit("/", 1)[-1].startswith("._")
    ]
    if len(candidates) == 1:
        return candidates[0]
    found = "none" if not candidates else f"{len(candidates)}: {', '.join(candidates)}"
    raise InputError(
        f"{path}: no single CSV member for day {day} (.csv members found: {found};"
        f" archive holds: {', '.join(names) or 'nothing'})"
    )


def locate_member(path: Path, day: int) -> Member:
    """Find the CSV member of a day archive, turning every failure into one clear line."""
    try:
        with zipfile.ZipFile(path) as zf:
            name = csv_member(path, day, zf.namelist())
            info = zf.getinfo(name)
            if info.flag_bits & 0x1:
                raise InputError(f"{path}: cannot open {name} (it is encrypted)")
            if info.compress_type not in READABLE_METHODS:
                method = UNREADABLE_METHODS.get(info.compress_type, f"method {info.compress_type}")
                raise InputError(
                    f"{path}: {name} is compressed with {method}, which cannot be read here"
                    " (stored, deflate, bzip2 and LZMA can)"
                )
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
