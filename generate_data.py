"""Write realistic, cumulative daily client feeds for the incremental benchmark.

Layout and rules: docs/spec.md, section 1. In short, for every client
and day N, ``data/<client>/transactions_day_N.zip`` holds one CSV whose bytes
are day N-1's CSV followed by the new rows, plus two static lookups in
``data/static``.

Example::

    python generate_data.py                       # 2 clients x 10 days, 1M + 100k/day
    python generate_data.py --out /tmp/tiny --days 3 --base-rows 3000 --daily-rows 300

Design notes:
- Every row is generated vectorised (numpy + polars), in fixed-size chunks so
  that memory stays bounded at any scale, each chunk from its own seed derived
  from (seed, client, day, chunk): same options and seed, same bytes.
- Day N is built by *appending* to day N-1. The CSV is append-only by
  construction, and so is the deflate stream: one zlib compressor per client
  runs over the whole history, and each day's archive is that stream so far
  plus a flushed copy of the compressor. Day N's archive therefore copies
  day N-1's compressed bytes instead of compressing the history again.
- Archives are written under a temporary name and renamed into place, so an
  interrupted run never leaves a half-written file under a final name.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import functools
import multiprocessing
import os
import queue
import shutil
import signal
import struct
import sys
import time
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import polars as pl

# --- Configuration ---------------------------------------------------------------------


@dataclass(frozen=True)
class FeedConfig:
    """Every knob of the feed; each one is also a command-line option."""

    out: Path = Path("data")
    clients: int = 2
    days: int = 10
    base_rows: int = 1_000_000  # rows in the day-1 archive
    daily_rows: int = 100_000  # new rows appended on each later day
    seed: int = 42
    late_fraction: float = 0.02  # share of a day's new rows dated 1 to 3 days early: real
    # feeds carry late-arriving rows, and an incremental pipeline must not lose them
    start_date: dt.date = dt.date(2025, 10, 1)
    skus: int = 5_000
    dialect: str = "plain"  # how the CSV is written: a key of DIALECTS
    quiet: bool = False


HEADER = (
    "transaction_id,transaction_date,sku_id,quantity_sold,revenue_usd,maturity_date,zip_code_raw"
)
# How each dialect writes the CSV: Polars' quote style, the line end, a byte-order mark.
# plain: unquoted, LF. quoted: every field quoted, CRLF (many exporters). excel: Excel's
# "CSV UTF-8": BOM, CRLF, quotes only where a field needs them, and some zip_code_raw
# values that need them (a comma or a quote inside).
DIALECTS = {
    "plain": ("necessary", "\n", b""),
    "quoted": ("always", "\r\n", b""),
    "excel": ("necessary", "\r\n", b"\xef\xbb\xbf"),
}
EXCEL_EVERY = 50  # in excel, 2 rows in 50 (by transaction_id) carry a comma or a quote
HISTORY_DAYS = 30  # day-1 rows are spread over the 30 days ending on the start date
CHUNK_ROWS = 250_000  # rows generated at once; part of the seed derivation, keep fixed
ZLIB_LEVEL = 6  # zipfile's default level, so other readers see an ordinary archive
SKU_ZIPF_EXPONENT = 1.0  # weights 1/rank^s: about 82% of rows on the top 20% of SKUs
CA_SHARE = 0.35  # share of real ZIP codes drawn from California (about 6% of all codes)

# zip_code_raw noise: category -> share of rows (see docs/spec.md section 1).
ZIP_NOISE = {
    "clean": 0.72,  # 94107
    "plus4": 0.06,  # 94107-1234
    "nine_digits": 0.03,  # 941071234
    "spaced": 0.03,  # 94 107
    "prefixed": 0.04,  # CA94107, ZIP:94107
    "international": 0.04,  # INTL, SW1A 1AA, M5V 3L9
    "unknown_us": 0.04,  # 5 plausible digits that are not in us_zip_codes.csv
    "empty": 0.04,  # nothing, or only whitespace
}
ZIP_PREFIXES = ["CA", "ZIP:", "US-", "zip "]
# International values without any run of five digits, so cleaning maps them to 00000.
INTERNATIONAL_ZIPS = ["INTL", "SW1A 1AA", "M5V 3L9", "EC1A 1BB", "K1A 0B1", "D02 X285", "2000"]

# maturity_date noise: category -> share of rows.
MATURITY_NOISE = {"regular": 0.85, "early": 0.05, "late": 0.05, "empty": 0.05}
MATURITY_TERMS_DAYS = [30, 60, 90]

QUANTITY_WEIGHTS = [30, 20, 14, 10, 8, 6, 4, 3, 3, 2]  # quantity_sold 1..10, small orders common
REVENUE_CENTS_RANGE = (500, 50_000)  # revenue_usd 5.00..500.00

CATEGORIES = {
    "ELECTRONICS": 8,  # category -> number of sku_groups in it
    "HOME": 7,
    "APPAREL": 7,
    "GROCERY": 6,
    "TOYS": 5,
    "SPORTS": 5,
    "BEAUTY": 5,
    "BOOKS": 4,
}
HIGH_PRIORITY_SHARE = 0.15


class FeedError(Exception):
    """A problem the user can fix: bad option, unwritable folder."""


# --- Static lookups ----------------------------------------------------------------------


@functools.cache  # the same table every time; 1.5 s to build (matters to the tests)
def us_zip_table() -> pl.DataFrame:
    """Real US ZIP codes from the `zipcodes` package, plus the 00000 row for non-US values."""
    import zipcodes  # imported here: only the parent process needs it

    rows = zipcodes.list_all()
    real = pl.DataFrame(
        {
            "zip_code": [r["zip_code"] for r in rows],
            "city": [r["city"] for r in rows],
            "state": [r["state"] for r in rows],
            "zip_type": [r["zip_code_type"] for r in rows],
        }
    )
    real = real.unique("zip_code", keep="first").sort("zip_code")
    # 00000 stands for international and unknown codes (docs/spec.md section 2).
    unknown = pl.DataFrame(
        {"zip_code": ["00000"], "city": ["UNKNOWN"], "state": [""], "zip_type": ["NONE"]}
    )
    return pl.concat([unknown, real]).with_columns(is_us=pl.col("zip_code") != "00000")


def sku_table(cfg: FeedConfig) -> pl.DataFrame:
    """Deterministic SKU catalogue: every sku_id with its group, category and priority."""
    rng = np.random.default_rng(np.random.SeedSequence([cfg.seed, 0xC0DE]))
    groups = [f"{cat}-{i:02d}" for cat, n in CATEGORIES.items() for i in range(1, n + 1)]
    group_idx = rng.integers(0, len(groups), cfg.skus)
    return pl.DataFrame(
        {
            "sku_id": [sku_name(i) for i in range(1, cfg.skus + 1)],
            "sku_group": [groups[i] for i in group_idx],
            "category": [groups[i].rsplit("-", 1)[0] for i in group_idx],
            "is_high_priority": rng.random(cfg.skus) < HIGH_PRIORITY_SHARE,
        }
    )


def sku_name(number: int) -> str:
    """SKU identifiers as they appear in the feed: SKU-00001."""
    return f"SKU-{number:05d}"


@dataclass(frozen=True)
class Pools:
    """What row generation samples from, prepared once per run and shared by workers."""

    ca_zips: np.ndarray  # real California codes (STANDARD type)
    other_zips: np.ndarray  # real codes of every other state (STANDARD type)
    unknown_zips: np.ndarray  # 5-digit codes absent from us_zip_codes.csv
    sku_ids: np.ndarray  # SKU ids in popularity order (rank 1 first)
    sku_weights: np.ndarray  # Zipf weights aligned with sku_ids
    sku_price_cents: np.ndarray  # typical unit price of each SKU, aligned with sku_ids


def build_pools(cfg: FeedConfig, zips: pl.DataFrame) -> Pools:
    """Sampling pools: real ZIPs split by California, absent ZIPs, SKU popularity and price."""
    rng = np.random.default_rng(np.random.SeedSequence([cfg.seed, 0x5EED]))
    standard = zips.filter(pl.col("zip_type") == "STANDARD")
    ca = standard.filter(pl.col("state") == "CA")["zip_code"].to_numpy()
    other = standard.filter(pl.col("state") != "CA")["zip_code"].to_numpy()
    known = set(zips["zip_code"].to_list())
    unknown = np.array([f"{i:05d}" for i in range(1, 100_000) if f"{i:05d}" not in known])
    # Popularity is a random permutation of the catalogue: rank 1 is not SKU-00001.
    order = rng.permutation(cfg.skus) + 1
    weights = 1.0 / np.arange(1, cfg.skus + 1) ** SKU_ZIPF_EXPONENT
    prices = np.clip(rng.lognormal(np.log(2_500), 0.8, cfg.skus), 200, 12_000).round()
    return Pools(
        ca_zips=ca,
        other_zips=other,
        unknown_zips=unknown,
        sku_ids=np.array([sku_name(int(i)) for i in order]),
        sku_weights=weights / weights.sum(),
        sku_price_cents=prices.astype(np.int64),
    )


# --- Row generation ----------------------------------------------------------------------


def day_row_count(cfg: FeedConfig, day: int) -> int:
    """New rows in day `day`'s archive."""
    return cfg.base_rows if day == 1 else cfg.daily_rows


def first_transaction_id(cfg: FeedConfig, day: int) -> int:
    """transaction_id of the first new row of `day`; ids run 1, 2, ... within a client."""
    return 1 if day == 1 else 1 + cfg.base_rows + (day - 2) * cfg.daily_rows


def day_dates(cfg: FeedConfig, client: int, day: int) -> np.ndarray:
    """transaction_date (days since epoch) of every new row of `day`, in file order."""
    rng = np.random.default_rng(np.random.SeedSequence([cfg.seed, client, day, 0xDA7E]))
    start = (cfg.start_date - dt.date(1970, 1, 1)).days
    n = day_row_count(cfg, day)
    if day == 1:
        # Spread over the 30 days ending on the start date with a mild weekly rhythm,
        # in date order, as an export of the history would be.
        offsets = np.arange(-HISTORY_DAYS + 1, 1)
        weights = 1.0 + 0.15 * np.sin(2 * np.pi * (start + offsets) / 7)
        counts = rng.multinomial(n, weights / weights.sum())
        return np.repeat(start + offsets, counts).astype(np.int32)
    dates = np.full(n, start + day - 1, dtype=np.int32)
    late = rng.random(n) < cfg.late_fraction
    dates[late] -= rng.integers(1, 4, int(late.sum()), dtype=np.int32)  # 1 to 3 days early
    return dates


def generate_chunk(
    cfg: FeedConfig, pools: Pools, client: int, day: int, chunk: int, dates: np.ndarray
) -> pl.DataFrame:
    """The CSV columns of one chunk of new rows, vectorised; deterministic per chunk."""
    rng = np.random.default_rng(np.random.SeedSequence([cfg.seed, client, day, chunk]))
    n = len(dates)
    first_id = first_transaction_id(cfg, day) + chunk * CHUNK_ROWS

    sku_rank = rng.choice(len(pools.sku_ids), n, p=pools.sku_weights)  # Pareto long tail
    quantity = rng.choice(10, n, p=np.array(QUANTITY_WEIGHTS) / sum(QUANTITY_WEIGHTS)) + 1
    revenue_cents = np.clip(
        (pools.sku_price_cents[sku_rank] * quantity * rng.uniform(0.85, 1.15, n)).round(),
        *REVENUE_CENTS_RANGE,
    ).astype(np.int64)

    # maturity_date: regular term, early (1-30 days before), late (180-365 after), empty.
    m_kind = rng.choice(len(MATURITY_NOISE), n, p=list(MATURITY_NOISE.values()))
    m_offset = np.select(
        [m_kind == 0, m_kind == 1, m_kind == 2],
        [
            rng.choice(MATURITY_TERMS_DAYS, n),
            -rng.integers(1, 31, n),
            rng.integers(180, 366, n),
        ],
        0,
    )

    # zip_code_raw: a real code (biased to California) dressed in one kind of noise.
    z_kind = rng.choice(len(ZIP_NOISE), n, p=list(ZIP_NOISE.values()))
    real_zip = np.where(
        rng.random(n) < CA_SHARE,
        rng.choice(pools.ca_zips, n),
        rng.choice(pools.other_zips, n),
    )
    frame = pl.DataFrame(
        {
            "transaction_id": np.arange(first_id, first_id + n, dtype=np.int64),
            "date_days": dates,
            "sku_id": pools.sku_ids[sku_rank],
            "quantity_sold": quantity.astype(np.int64),
            "cents": revenue_cents,
            "m_kind": m_kind.astype(np.int8),
            "m_offset": m_offset.astype(np.int32),
            "z_kind": z_kind.astype(np.int8),
            "zip": real_zip,
            "plus4": rng.integers(0, 10_000, n),
            "split_at": rng.integers(1, 5, n),
            "prefix": rng.choice(ZIP_PREFIXES, n),
            "intl": rng.choice(INTERNATIONAL_ZIPS, n),
            "unknown_zip": rng.choice(pools.unknown_zips, n),
            "blank": rng.choice(["", " ", "   "], n, p=[0.8, 0.1, 0.1]),
        }
    )
    return frame.lazy().select(*csv_columns()).collect()


def csv_columns() -> list[pl.Expr]:
    """Expressions that turn a generated chunk into the feed's CSV columns."""
    kinds = {name: i for i, name in enumerate(ZIP_NOISE)}
    zip_ = pl.col("zip")
    plus4 = pl.col("plus4").cast(pl.String).str.zfill(4)
    zip_raw = (
        pl.when(pl.col("z_kind") == kinds["plus4"])
        .then(zip_ + "-" + plus4)
        .when(pl.col("z_kind") == kinds["nine_digits"])
        .then(zip_ + plus4)
        .when(pl.col("z_kind") == kinds["spaced"])
        .then(zip_.str.head(pl.col("split_at")) + " " + zip_.str.tail(5 - pl.col("split_at")))
        .when(pl.col("z_kind") == kinds["prefixed"])
        .then(pl.col("prefix") + zip_)
        .when(pl.col("z_kind") == kinds["international"])
        .then(pl.col("intl"))
        .when(pl.col("z_kind") == kinds["unknown_us"])
        .then(pl.col("unknown_zip"))
        .when(pl.col("z_kind") == kinds["empty"])
        .then(pl.when(pl.col("blank") != "").then(pl.col("blank")))  # "" -> null: an empty field
        .otherwise(zip_)
    )
    tx_date = pl.col("date_days").cast(pl.Date)
    maturity = (
        pl.when(pl.col("m_kind") != list(MATURITY_NOISE).index("empty"))
        .then((pl.col("date_days") + pl.col("m_offset")).cast(pl.Date).dt.to_string("%Y-%m-%d"))
        .otherwise(pl.lit(None, pl.String))
    )
    cents = pl.col("cents")
    revenue = pl.format("{}.{}", cents // 100, (cents % 100).cast(pl.String).str.zfill(2))
    return [
        pl.col("transaction_id"),
        tx_date.alias("transaction_date"),
        pl.col("sku_id"),
        pl.col("quantity_sold"),
        revenue.alias("revenue_usd"),
        maturity.alias("maturity_date"),
        zip_raw.alias("zip_code_raw"),
    ]


def day_csv_chunks(cfg: FeedConfig, pools: Pools, client: int, day: int) -> Iterator[bytes]:
    """The CSV bytes that day `day` appends to the feed (with the header on day 1)."""
    quote_style, line_end, bom = DIALECTS[cfg.dialect]
    if day == 1:
        names = HEADER.split(",")
        if quote_style == "always":
            names = [f'"{name}"' for name in names]
        yield bom + (",".join(names) + line_end).encode()
    dates = day_dates(cfg, client, day)
    for chunk, start in enumerate(range(0, len(dates), CHUNK_ROWS)):
        frame = generate_chunk(cfg, pools, client, day, chunk, dates[start : start + CHUNK_ROWS])
        if cfg.dialect == "excel":
            frame = frame.with_columns(excel_zip())
        # Empty strings are written unquoted (""), so "empty" and "only whitespace" both
        # reach the CSV as the generator meant them.
        text = frame.write_csv(
            include_header=False, quote_style=quote_style, line_terminator=line_end
        )
        yield text.encode()


def excel_zip() -> pl.Expr:
    """zip_code_raw as people type it into a spreadsheet: some with a comma or a quote.

    Chosen by transaction_id, not by the random generator, so every dialect draws the
    same rows and the plain feed stays byte for byte what it was.
    """
    raw, tid = pl.col("zip_code_raw"), pl.col("transaction_id")
    clean = raw.str.contains(r"^[0-9]{5}$").fill_null(False)
    return (
        pl.when(clean & (tid % EXCEL_EVERY == 7))
        .then(raw + ", Apt " + (tid % 97 + 1).cast(pl.String))  # 94107, Apt 4
        .when(clean & (tid % EXCEL_EVERY == 23))
        .then(pl.lit('Bldg "B" ') + raw)  # Bldg "B" 94107
        .otherwise(raw)
        .alias("zip_code_raw")
    )


# --- Zip writing -------------------------------------------------------------------------

ZIP64_LIMIT = 0xFFFFFFFF  # sizes at or over this need the zip64 extensions
ZIP64_MARKER = 0xFFFFFFFF  # what a 32-bit field holds when the zip64 record has the value


@dataclass
class DeflateState:
    """One client's running deflate stream over its whole, growing CSV."""

    compressor: zlib._Compress
    crc: int = 0
    uncompressed: int = 0
    compressed: int = 0  # compressor output so far, before any flush


def dos_datetime(day: dt.date) -> tuple[int, int]:
    """MS-DOS (time, date) fields for midnight of `day`: fixed, so archives are reproducible."""
    return 0, (max(day.year - 1980, 0) << 9) | (day.month << 5) | day.day


def local_header(name: bytes, crc: int, csize: int, usize: int, day: dt.date) -> bytes:
    """Zip local file header for one deflated member, with zip64 sizes when needed."""
    big = csize >= ZIP64_LIMIT or usize >= ZIP64_LIMIT
    extra = struct.pack("<HHQQ", 0x0001, 16, usize, csize) if big else b""
    time_, date_ = dos_datetime(day)
    return (
        struct.pack(
            "<IHHHHHIIIHH",
            0x04034B50,
            45 if big else 20,  # version needed to extract
            0,  # flags
            8,  # deflate
            time_,
            date_,
            crc,
            ZIP64_MARKER if big else csize,
            ZIP64_MARKER if big else usize,
            len(name),
            len(extra),
        )
        + name
        + extra
    )


def central_directory(
    name: bytes, crc: int, csize: int, usize: int, day: dt.date, cd_offset: int
) -> bytes:
    """Central directory and end records for a single member stored at offset 0."""
    big = csize >= ZIP64_LIMIT or usize >= ZIP64_LIMIT
    extra = struct.pack("<HHQQ", 0x0001, 16, usize, csize) if big else b""
    time_, date_ = dos_datetime(day)
    entry = (
        struct.pack(
            "<IHHHHHHIIIHHHHHII",
            0x02014B50,
            (3 << 8) | (45 if big else 20),  # made by: Unix
            45 if big else 20,
            0,
            8,
            time_,
            date_,
            crc,
            ZIP64_MARKER if big else csize,
            ZIP64_MARKER if big else usize,
            len(name),
            len(extra),
            0,  # comment length
            0,  # disk number
            0,  # internal attributes
            0o100644 << 16,  # external attributes: a regular file, rw-r--r--
            0,  # local header offset
        )
        + name
        + extra
    )
    cd_size = len(entry)
    tail = b""
    if big or cd_offset >= ZIP64_LIMIT:
        zip64_eocd_offset = cd_offset + cd_size
        tail += struct.pack("<IQHHIIQQQQ", 0x06064B50, 44, 45, 45, 0, 0, 1, 1, cd_size, cd_offset)
        tail += struct.pack("<IIQI", 0x07064B50, 0, zip64_eocd_offset, 1)
        cd_offset = ZIP64_MARKER
    tail += struct.pack("<IHHHHIIH", 0x06054B50, 0, 0, 1, 1, cd_size, cd_offset, 0)
    return entry + tail


def write_day_archive(
    path: Path,
    member: str,
    state: DeflateState,
    new_bytes: Iterator[bytes],
    previous: tuple[Path, int] | None,
    stamp: dt.date,
) -> tuple[Path, int]:
    """Write one day's archive atomically; return (path, offset of its deflate data).

    The compressed history is copied from the previous day's archive (`previous`:
    its path and data offset), then the new rows are compressed onto it, and a copy
    of the compressor is flushed so the running stream stays open for tomorrow.
    """
    name = member.encode()
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "wb") as out:
            # Sizes are unknown until the end: reserve the header, rewrite it at the end.
            # Reserve the zip64 form only if the archive could need it.
            header_len = len(local_header(name, 0, 0, 0, stamp))
            out.write(b"\0" * header_len)
            if previous is not None:
                prev_path, prev_offset = previous
                with open(prev_path, "rb") as src:
                    src.seek(prev_offset)
                    copy_exactly(src, out, state.compressed)
            for data in new_bytes:
                state.crc = zlib.crc32(data, state.crc)
                state.uncompressed += len(data)
                produced = state.compressor.compress(data)
                state.compressed += len(produced)
                out.write(produced)
            out.write(state.compressor.copy().flush())
            csize = out.tell() - header_len
            header = local_header(name, state.crc, csize, state.uncompressed, stamp)
            if len(header) != header_len:
                # Crossed the 4 GiB line: the zip64 header is longer, shift the data.
                out.flush()
                return rewrite_with_header(tmp, path, header, header_len, name, state, stamp)
            out.write(
                central_directory(name, state.crc, csize, state.uncompressed, stamp, out.tell())
            )
            out.seek(0)
            out.write(header)
        os.replace(tmp, path)
        return path, header_len
    finally:
        tmp.unlink(missing_ok=True)


def rewrite_with_header(
    tmp: Path,
    path: Path,
    header: bytes,
    old_header_len: int,
    name: bytes,
    state: DeflateState,
    stamp: dt.date,
) -> tuple[Path, int]:
    """Rare path for members of 4 GiB or more: copy the data behind a longer header."""
    shifted = tmp.with_name(tmp.name + "64")
    try:
        with open(tmp, "rb") as src, open(shifted, "wb") as out:
            out.write(header)
            src.seek(old_header_len)
            shutil.copyfileobj(src, out, 1 << 22)
            csize = out.tell() - len(header)
            out.write(
                central_directory(name, state.crc, csize, state.uncompressed, stamp, out.tell())
            )
        os.replace(shifted, path)
        return path, len(header)
    finally:
        shifted.unlink(missing_ok=True)


def copy_exactly(src, dst, length: int) -> None:  # noqa: ANN001 (binary file objects)
    """Copy `length` bytes from src to dst, or raise if src ends early."""
    while length:
        block = src.read(min(length, 1 << 22))
        if not block:
            raise OSError(f"{src.name}: ended {length} bytes early while copying history")
        dst.write(block)
        length -= len(block)


def write_csv_atomically(frame: pl.DataFrame, path: Path) -> None:
    """Write a small CSV under a temporary name and rename it into place."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        frame.write_csv(tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


# --- One client, all days (runs in a worker process) -------------------------------------

_progress: multiprocessing.Queue | None = None


def _init_worker(progress: multiprocessing.Queue | None) -> None:
    """Worker set-up: progress channel, and SIGTERM unwinds so temporary files are removed."""
    global _progress
    _progress = progress
    signal.signal(signal.SIGTERM, _raise_interrupt)
    signal.signal(signal.SIGINT, _raise_interrupt)


_interrupted = False


def _raise_interrupt(signum: int, frame: object) -> None:
    """Turn a termination signal into an exception, so `finally` clean-up runs.

    Only the first signal counts: Ctrl-C reaches a worker first, then the parent's
    terminate() sends SIGTERM, and that second signal must not cut the clean-up short.
    """
    global _interrupted
    if not _interrupted:
        _interrupted = True
        raise KeyboardInterrupt(f"signal {signum}")


def write_client(cfg: FeedConfig, pools: Pools, client: int) -> tuple[int, int]:
    """Write every day's archive of one client; return (bytes written, rows on the last day)."""
    folder = cfg.out / client_name(client)
    state = DeflateState(zlib.compressobj(ZLIB_LEVEL, zlib.DEFLATED, -15))
    previous: tuple[Path, int] | None = None
    written = rows = 0
    try:
        for day in range(1, cfg.days + 1):
            path = folder / f"transactions_day_{day}.zip"
            stamp = cfg.start_date + dt.timedelta(days=day - 1)
            previous = write_day_archive(
                path,
                f"transactions_day_{day}.csv",
                state,
                day_csv_chunks(cfg, pools, client, day),
                previous,
                stamp,
            )
            written += path.stat().st_size
            rows += day_row_count(cfg, day)
            if _progress is not None:
                _progress.put(client)
    except KeyboardInterrupt:
        # The temporary archive is gone by now (write_day_archive's `finally`). Leave
        # without a traceback: the parent reports the interruption in one line.
        os._exit(130)
    return written, rows


def client_name(client: int) -> str:
    """Folder name of a client: client_1, client_2, ..."""
    return f"client_{client}"


# --- Orchestration -----------------------------------------------------------------------


def prepare_output(cfg: FeedConfig) -> None:
    """Create the folders and prove they are writable, before any real work."""
    folders = [cfg.out / "static"] + [cfg.out / client_name(c) for c in range(1, cfg.clients + 1)]
    for folder in folders:
        try:
            folder.mkdir(parents=True, exist_ok=True)
            probe = folder / f".write-probe.{os.getpid()}"
            probe.write_bytes(b"")
            probe.unlink()
        except OSError as exc:
            raise FeedError(f"--out {cfg.out}: cannot write {folder} ({exc.strerror})") from exc
        # Leftovers of a run killed with SIGKILL (the only way to skip our clean-up).
        for stale in folder.glob(".*.tmp*"):
            stale.unlink(missing_ok=True)


def remove_stale_days(cfg: FeedConfig) -> list[Path]:
    """Delete archives of days past --days left by an earlier, longer run; return them."""
    removed = []
    for c in range(1, cfg.clients + 1):
        for path in (cfg.out / client_name(c)).glob("transactions_day_*.zip"):
            day = path.stem.rsplit("_", 1)[-1]
            if day.isdigit() and int(day) > cfg.days:
                path.unlink()
                removed.append(path)
    return removed


def generate(cfg: FeedConfig, echo: Callable[[str], None]) -> dict[str, int]:
    """Write the whole feed; return totals for the summary line."""
    prepare_output(cfg)
    # One process per client, at most one per core. Spawned, not forked: forking a
    # process that already runs Polars' thread pool can deadlock. Started first so
    # that their imports overlap with loading the ZIP list here.
    ctx = multiprocessing.get_context("spawn")
    progress = ctx.Queue()
    pool = ctx.Pool(min(cfg.clients, os.cpu_count() or 1), _init_worker, (progress,))
    bars = progress_bars(cfg)
    try:
        zips = us_zip_table()
        static = cfg.out / "static"
        write_csv_atomically(
            zips.select("zip_code", "city", "state", "is_us"), static / "us_zip_codes.csv"
        )
        write_csv_atomically(sku_table(cfg), static / "sku_groups.csv")
        pools = build_pools(cfg, zips)
        jobs = [pool.apply_async(write_client, (cfg, pools, c)) for c in range(1, cfg.clients + 1)]
        while not all(job.ready() for job in jobs):
            drain_progress(progress, bars, timeout=0.2)
        results = [job.get() for job in jobs]  # re-raises a worker's exception here
        drain_progress(progress, bars, timeout=0)
        pool.close()
    except BaseException:
        pool.terminate()  # SIGTERM: each worker removes its temporary archive
        raise
    finally:
        pool.join()
        for bar in bars.values():
            bar.close()
    removed = remove_stale_days(cfg)
    if removed:
        echo(
            f"removed {len(removed)} archive(s) of days past --days {cfg.days} from an earlier run"
        )
    return {
        "bytes": sum(r[0] for r in results),
        "rows_last_day": results[0][1],
    }


def progress_bars(cfg: FeedConfig) -> dict:
    """One tqdm bar per client counting days; none with --quiet or off a terminal."""
    if cfg.quiet:
        return {}
    from tqdm import tqdm

    return {
        c: tqdm(total=cfg.days, desc=client_name(c), unit="day", position=c - 1, disable=None)
        for c in range(1, cfg.clients + 1)
    }


def drain_progress(progress: multiprocessing.Queue, bars: dict, timeout: float) -> None:
    """Move finished-day messages from the workers onto the bars."""
    with contextlib.suppress(queue.Empty):
        client = progress.get(timeout=timeout) if timeout else progress.get_nowait()
        while True:
            if client in bars:
                bars[client].update(1)
            client = progress.get_nowait()


# --- Command line ------------------------------------------------------------------------


def positive_int(text: str) -> int:
    """argparse type: an integer of at least 1."""
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def non_negative_int(text: str) -> int:
    """argparse type: an integer of at least 0."""
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be 0 or more, got {value}")
    return value


def late_fraction(text: str) -> float:
    """argparse type: a fraction in [0, 1)."""
    value = float(text)
    if not 0 <= value < 1:
        raise argparse.ArgumentTypeError(f"must be in [0, 1), got {value}")
    return value


def iso_date(text: str) -> dt.date:
    """argparse type: a YYYY-MM-DD date."""
    try:
        return dt.date.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a YYYY-MM-DD date, got {text!r}") from None


def parse_args(argv: list[str] | None) -> FeedConfig:
    """Command-line options over the FeedConfig defaults."""
    d = FeedConfig()
    p = argparse.ArgumentParser(
        prog="generate_data.py",
        description="Write cumulative daily transaction feeds (zipped CSV) and lookups.",
        epilog="example: python generate_data.py --out /tmp/tiny --days 3 "
        "--base-rows 3000 --daily-rows 300 --seed 7",
    )
    p.add_argument("--out", type=Path, default=d.out, help=f"output folder (default: {d.out})")
    p.add_argument(
        "--clients",
        type=positive_int,
        default=d.clients,
        help=f"number of clients (default: {d.clients})",
    )
    p.add_argument(
        "--days", type=positive_int, default=d.days, help=f"archives per client (default: {d.days})"
    )
    p.add_argument(
        "--base-rows",
        type=positive_int,
        default=d.base_rows,
        help=f"rows on day 1 (default: {d.base_rows:,})",
    )
    p.add_argument(
        "--daily-rows",
        type=positive_int,
        default=d.daily_rows,
        help=f"new rows each later day (default: {d.daily_rows:,})",
    )
    p.add_argument(
        "--seed",
        type=non_negative_int,
        default=d.seed,
        help=f"random seed; same seed, same bytes (default: {d.seed})",
    )
    p.add_argument(
        "--late-fraction",
        type=late_fraction,
        default=d.late_fraction,
        help="share of each later day's rows dated 1-3 days early, in [0, 1)"
        f" (default: {d.late_fraction})",
    )
    p.add_argument(
        "--start-date",
        type=iso_date,
        default=d.start_date,
        help=f"transaction date of day 1 (default: {d.start_date})",
    )
    p.add_argument(
        "--skus",
        type=positive_int,
        default=d.skus,
        help=f"SKUs in the catalogue (default: {d.skus:,})",
    )
    p.add_argument(
        "--dialect",
        choices=list(DIALECTS),
        default=d.dialect,
        help="plain: unquoted, LF; quoted: every field quoted, CRLF; excel: byte-order mark,"
        f" CRLF, quotes only where needed (default: {d.dialect})",
    )
    p.add_argument("--quiet", action="store_true", help="print nothing but errors")
    a = p.parse_args(argv)
    return FeedConfig(
        out=a.out,
        clients=a.clients,
        days=a.days,
        base_rows=a.base_rows,
        daily_rows=a.daily_rows,
        seed=a.seed,
        late_fraction=a.late_fraction,
        start_date=a.start_date,
        skus=a.skus,
        dialect=a.dialect,
        quiet=a.quiet,
    )


def main(argv: list[str] | None = None) -> int:
    """Generate the feed; 0 on success, 2 on a bad option or output folder, 1 otherwise."""
    cfg = parse_args(argv)  # argparse itself exits 2 with one line on a bad option

    def echo(line: str) -> None:
        if not cfg.quiet:
            print(line, flush=True)

    echo(
        f"generating {cfg.clients} client(s) x {cfg.days} day(s): {cfg.base_rows:,} rows on day 1, "
        f"{cfg.daily_rows:,} a day after, seed {cfg.seed}, late fraction {cfg.late_fraction},"
        f" {cfg.dialect} CSV"
        f" -> {cfg.out}/"
    )
    started = time.perf_counter()
    try:
        totals = generate(cfg, echo)
    except FeedError as exc:
        print(f"generate_data.py: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(
            "generate_data.py: interrupted; finished archives kept, none half-written",
            file=sys.stderr,
        )
        return 130
    except OSError as exc:
        print(
            f"generate_data.py: error: {exc.filename or cfg.out}: {exc.strerror or exc}",
            file=sys.stderr,
        )
        return 1
    echo(
        f"wrote {cfg.clients * cfg.days} archives ({totals['bytes'] / 2**20:,.1f} MiB)"
        f" and 2 lookups "
        f"to {cfg.out}/ in {time.perf_counter() - started:.1f} s; "
        f"{totals['rows_last_day']:,} rows per client on day {cfg.days}"
    )
    return 0


if __name__ == "__main__":
    # SIGTERM (kill) takes the same clean path as Ctrl-C.
    signal.signal(signal.SIGTERM, _raise_interrupt)
    raise SystemExit(main())
