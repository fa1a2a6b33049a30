"""Configuration: every option, constant and exception of the benchmark.

Owns the names the other modules share (the columns, the key, the tables, block and
chunk sizes, the counters) and the exceptions that carry a user's error. Knows nothing
of how data is read, transformed or stored."""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import polars as pl


@dataclass(frozen=True)
class BenchConfig:
    """What one benchmark run measures; every field is a command-line option."""

    data_dir: Path = Path("data")
    db: Path | str = Path("poc_database.db")  # an SQLite file, or a postgresql:// URL
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
PIPELINE_NAMES = ("baseline", "incremental")  # the two pipelines, as the record names them
# A cost did not grow with history when its slope against the rows in the archive is
# under this share of the baseline's (a least-squares fit over every sweep day, so one
# noisy day moves it little).
FLAT_SHARE = 0.1
FULL_DISK_BYTES = 1 << 20  # an SQLite I/O error with less than this free is a full disk
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
SALES_COLUMN_NAMES = list(SALES_TABLE)
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
        "window" BLOB NOT NULL,  -- quoted: a reserved word in PostgreSQL
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


class DiskFull(InputError):
    """A write found no space left on its folder's disk: exit 2, nothing changed."""


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
