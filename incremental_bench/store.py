"""The SQLite store: schema, checkpoint, access points and rows.

The only module that speaks SQL to the project's database: tables and their shapes,
transactions, the checkpoint and access points, writes through pandas' to_sql, and the
stored days read back. Knows nothing of archives or CSV."""

from __future__ import annotations

import contextlib
import datetime as dt
import errno
import io
import json
import os
import sqlite3
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from itertools import chain
from pathlib import Path
from typing import Any

import pandas as pd
import polars as pl

from incremental_bench.config import (
    CLUSTERED_TABLES,
    FULL_DISK_BYTES,
    FULL_REFRESH_TABLES,
    INSERT_ROWS,
    KEY,
    SALES_SCHEMA,
    STATE_TABLES,
    TABLES,
    DiskFull,
    InputError,
)
from incremental_bench.deflate import AccessPoint
from incremental_bench.transform import PipelineArtifacts


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


def out_of_space(exc: BaseException, folder: Path) -> str | None:
    """Why a failed write in `folder` found its disk full, or None when it failed otherwise.

    SQLite says so by its result code, the operating system by errno (a full disk or
    a used-up quota), DuckDB and Polars only in the message. SQLite also reports some
    writes that found no room (its shared memory, a backup's pages) as a plain I/O
    error: that one counts when the folder's disk has next to nothing left.
    """
    if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return os.strerror(exc.errno)
    if isinstance(exc, sqlite3.Error):
        code = getattr(exc, "sqlite_errorcode", 0) & 0xFF
        if code == sqlite3.SQLITE_FULL:
            return str(exc)
        if code == sqlite3.SQLITE_IOERR and free_bytes(folder) < FULL_DISK_BYTES:
            return f"{exc}, {free_bytes(folder):,} bytes free"
    if "No space left on device" in str(exc):
        return "No space left on device"
    return None


def free_bytes(folder: Path) -> int:
    """Bytes left for this user on the folder's disk (max when it cannot be asked)."""
    try:
        stat = os.statvfs(folder)
    except OSError:
        return 1 << 62
    return stat.f_bavail * stat.f_frsize


@contextlib.contextmanager
def full_disk_named(folder: Path) -> Iterator[None]:
    """A full disk met inside as one DiskFull naming the folder written to.

    The folder is the file's own when the error names one, else `folder` (SQLite's
    errors name no file: its files are the database's, and its scratch copies beside
    it). Used inside the scratch folder's block, so that the disk is judged before the
    scratch copies go and free their space.
    """
    try:
        yield
    except DiskFull:
        raise
    except Exception as exc:
        filename = getattr(exc, "filename", None)
        where = Path(filename).resolve().parent if isinstance(filename, str) else folder
        why = out_of_space(exc, where)
        if why is None:
            raise
        raise DiskFull(f"{where}: its disk is full ({why}); nothing was changed") from None


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
    if frame.height:
        write_pandas(con, table, pd.DataFrame({c: frame[c].to_numpy() for c in frame.columns}))


def write_pandas(con: Connection, table: str, frame: Any) -> None:
    """Append a pandas frame to a table: the one write path of every pipeline and peer.

    Rows go in multi-row INSERTs of up to INSERT_ROWS rows (fewer where SQLite takes
    fewer parameters per statement): SQLite runs one statement per thousand rows instead
    of one per row, faster than one INSERT a row (docs/design.md).
    """
    if len(frame):
        rows = insert_rows(con, len(frame.columns))
        frame.to_sql(table, con, if_exists="append", index=False, chunksize=rows, method=insert)


def insert(pd_table: Any, con: Any, columns: list[str], rows: Iterable[tuple]) -> int:
    """pandas' to_sql insert method: one chunk of rows in one multi-row INSERT, the same
    statement the write floors run (insert_statements)."""
    values = list(rows)
    sql, params = multi_insert(pd_table.name, columns, values)
    con.execute(sql, params)
    return len(values)


def multi_insert(table: str, columns: list[str], values: list[tuple]) -> tuple[str, list]:
    """One INSERT of `values` into `table`'s `columns`, and its parameters, flattened."""
    row = f"({', '.join('?' * len(columns))})"
    names = ", ".join(columns)
    return f"INSERT INTO {table} ({names}) VALUES {', '.join([row] * len(values))}", [
        *chain.from_iterable(values)
    ]


def insert_statements(
    con: sqlite3.Connection, table: str, columns: list[str], values: list[tuple]
) -> list[tuple[str, list]]:
    """Rows as the multi-row INSERTs of every write, parameters built: a write floor's
    input, prepared before its clock, the statements the pipelines' write runs."""
    per = insert_rows(con, len(columns))
    return [multi_insert(table, columns, values[i : i + per]) for i in range(0, len(values), per)]


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
    crosses into Python instead of a tuple per row.
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
            if out_of_space(exc, dst.parent):
                raise
            raise InputError(f"{src}: cannot read as an SQLite database ({exc})") from None
        d.execute("PRAGMA journal_mode=WAL")  # as the real database, set outside any timing


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


def stored_rows(con: sqlite3.Connection, client: str, days: list[str]) -> list[tuple]:
    """Every column of the client's processed_sales rows of `days`, as stored."""
    return con.execute(
        f"SELECT * FROM processed_sales WHERE {DAYS_WHERE}", (client, json.dumps(days))
    ).fetchall()


def run_statements(con: sqlite3.Connection, statements: list[tuple[str, list]]) -> None:
    """Statements with their parameters, built beforehand (insert_statements), in order."""
    for sql, params in statements:
        con.execute(sql, params)


class ClientState:
    """One client's state in the project's database, as the pipelines and peers see it.

    The store's narrow interface: what a pipeline reads of the database or changes in
    it goes through these methods, so that another database is another implementation
    of them. Changes happen inside `change()`, one transaction that commits whole or
    not at all.
    """

    def __init__(self, con: Connection, client: str) -> None:
        self.con, self.client = con, client

    def checkpoint(self) -> Checkpoint | None:
        """Where the client's incremental state stands (None: nothing processed)."""
        return read_checkpoint(self.con, self.client)

    def access_points(self) -> list[AccessPoint]:
        """Where the next run may resume inflating the client's archive."""
        return read_access_points(self.con, self.client)

    @contextlib.contextmanager
    def change(self) -> Iterator[None]:
        """One transaction for every change made inside it."""
        with transaction(self.con):
            yield

    def clear(self) -> None:
        """Forget the client's incremental state: its rows, rejected rows, checkpoint."""
        delete_client(self.con, self.client, STATE_TABLES)

    def stored_days(self, days: list[str]) -> pl.DataFrame:
        """The additive columns of the stored rows of `days`, in integer cents."""
        return existing_days(self.con, self.client, days)

    def replace_days(self, days: list[str], table: pl.DataFrame) -> None:
        """The client's rows of `days` replaced by `table`."""
        replace_days(self.con, self.client, days, table)

    def add_rejected(self, artifacts: PipelineArtifacts, day: int) -> None:
        """The rows a run of `day` rejected, kept with their reasons."""
        write_frame(self.con, "rejected_rows", rejected_frame(artifacts, self.client, day))

    def advance(self, cp: Checkpoint, points: list[AccessPoint]) -> None:
        """The next checkpoint and the access points found on the way to it."""
        write_checkpoint(self.con, self.client, cp)
        write_access_points(self.con, self.client, points)

    def replace_full_refresh(
        self, table: Any, artifacts: PipelineArtifacts | None = None, day: int = 0
    ) -> None:
        """A full refresh's answer in place of the last one, in one transaction: `table`
        (Polars, or pandas from a peer that makes it so) and the rows it rejected."""
        with self.change():
            delete_client(self.con, self.client, FULL_REFRESH_TABLES)
            if isinstance(table, pl.DataFrame):
                write_frame(self.con, "processed_sales_full_refresh", table)
            else:
                write_pandas(self.con, "processed_sales_full_refresh", table)
            if artifacts is not None:
                rejected = rejected_frame(artifacts, self.client, day)
                write_frame(self.con, "rejected_rows_full_refresh", rejected)
