"""The store: schema, checkpoint, access points and rows, in SQLite or PostgreSQL.

The only module that speaks SQL to the project's database: tables and their shapes,
transactions, the checkpoint and access points, writes through pandas' to_sql, and the
stored days read back. A --db path is an SQLite file, a postgresql:// URL a database on
a server (the server's own operations live in `pg`); the same statements serve both
where their SQL agrees, and the few that differ are chosen by the connection. Knows
nothing of archives or CSV."""

from __future__ import annotations

import contextlib
import datetime as dt
import io
import json
import re
import sqlite3
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from itertools import chain
from typing import Any

import pandas as pd
import polars as pl

from incremental_bench import pg
from incremental_bench.config import (
    CLUSTERED_TABLES,
    FULL_REFRESH_TABLES,
    INSERT_ROWS,
    KEY,
    SALES_SCHEMA,
    STATE_TABLES,
    TABLES,
)

# Re-exported: the store is where the rest of the package finds its database.
from incremental_bench.databases import (
    Connection as Connection,
)
from incremental_bench.databases import (
    Db as Db,
)
from incremental_bench.databases import (
    DbConnection as DbConnection,
)
from incremental_bench.databases import (
    as_db as as_db,
)
from incremental_bench.databases import (
    connect as connect,
)
from incremental_bench.databases import (
    copy_db as copy_db,
)
from incremental_bench.databases import (
    create_empty as create_empty,
)
from incremental_bench.databases import (
    database_errors_named as database_errors_named,
)
from incremental_bench.databases import (
    db_exists as db_exists,
)
from incremental_bench.databases import (
    describe as describe,
)
from incremental_bench.databases import (
    drop_db as drop_db,
)
from incremental_bench.databases import (
    engine_version as engine_version,
)
from incremental_bench.databases import (
    flush_pending as flush_pending,
)
from incremental_bench.databases import (
    free_bytes as free_bytes,
)
from incremental_bench.databases import (
    full_disk_named as full_disk_named,
)
from incremental_bench.databases import (
    move_db as move_db,
)
from incremental_bench.databases import (
    out_of_space as out_of_space,
)
from incremental_bench.databases import (
    scratch_db as scratch_db,
)
from incremental_bench.deflate import AccessPoint
from incremental_bench.pg import PgConnection
from incremental_bench.transform import PipelineArtifacts


@contextlib.contextmanager
def transaction(con: DbConnection) -> Iterator[DbConnection]:
    """BEGIN ... COMMIT, rolled back whole on any exception (SQLite: BEGIN IMMEDIATE,
    which takes the write lock at once)."""
    if isinstance(con, PgConnection):
        con.begin()
    else:
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


def table_shape(con: DbConnection, name: str) -> list[tuple]:
    """Column names, types, NOT NULL and key positions of a table, and whether its rows
    are stored in key order (WITHOUT ROWID): its comparable shape."""
    if isinstance(con, PgConnection):
        return pg_table_shape(con, name)
    columns = [(r[1], r[2], r[3], r[5]) for r in con.execute(f"PRAGMA table_info({name})")]
    sql = con.execute("SELECT sql FROM sqlite_master WHERE name = ?", (name,)).fetchone()
    # First, so that a table of the other kind never looks like one lacking columns.
    return [("WITHOUT ROWID", "", 0, 0), *columns] if sql and "WITHOUT ROWID" in sql[0] else columns


def table_ddl(name: str, postgres: bool = False, as_name: str = "", temp: bool = False) -> str:
    """CREATE TABLE of one of TABLES. In SQLite the sales tables store their rows in key
    order: one B-tree instead of a table and its key index, and the rows of a day
    together, which is what the merge reads back, deletes and rewrites. In PostgreSQL
    the types are its 64-bit integers and floats and its bytes (its INTEGER and REAL
    are 32-bit)."""
    columns = TABLES[name]
    clustered = " WITHOUT ROWID" if name in CLUSTERED_TABLES and not postgres else ""
    if postgres:
        for sqlite_type, pg_type in PG_TYPES.items():
            columns = re.sub(rf"\b{sqlite_type}\b", pg_type, columns)
    kind = "TEMP TABLE" if temp else "TABLE"
    return f"CREATE {kind} IF NOT EXISTS {as_name or name} ({columns}){clustered}"


PG_TYPES = {"INTEGER": "BIGINT", "REAL": "DOUBLE PRECISION", "BLOB": "BYTEA"}


def pg_table_shape(con: PgConnection, name: str, temp: bool = False) -> list[tuple]:
    """Column names, types, NOT NULL and key positions of a PostgreSQL table."""
    schema = "pg_my_temp_schema()::regnamespace::text" if temp else "current_schema()"
    keys = dict(
        con.execute(
            "SELECT k.column_name, k.ordinal_position FROM information_schema.table_constraints c"
            " JOIN information_schema.key_column_usage k USING (constraint_schema, constraint_name)"
            f" WHERE c.table_schema = {schema} AND c.table_name = ?"
            " AND c.constraint_type = 'PRIMARY KEY'",
            (name,),
        ).fetchall()
    )
    columns = con.execute(
        "SELECT column_name, data_type, is_nullable FROM information_schema.columns"
        f" WHERE table_schema = {schema} AND table_name = ? ORDER BY ordinal_position",
        (name,),
    ).fetchall()
    return [(c, kind, int(null == "NO"), keys.get(c, 0)) for c, kind, null in columns]


def wanted_shapes(con: DbConnection) -> dict[str, list[tuple]]:
    """The shape of each of TABLES as this version creates it, in the connection's database
    engine: tables made aside (SQLite in memory, PostgreSQL as temporary tables)."""
    if isinstance(con, PgConnection):
        shapes = {}
        for name in TABLES:
            con.execute(table_ddl(name, postgres=True, as_name=f"wanted_{name}", temp=True))
            shapes[name] = pg_table_shape(con, f"wanted_{name}", temp=True)
            con.execute(f"DROP TABLE wanted_{name}")
        return shapes
    with contextlib.closing(sqlite3.connect(":memory:")) as reference:
        for name in TABLES:
            reference.execute(table_ddl(name))
        return {name: table_shape(reference, name) for name in TABLES}


def current_tables(db: Db, names: Iterable[str]) -> list[str]:
    """Those of `names` that `db` holds in this version's shape (the others would be
    set aside by ensure_schema: their rows are no state of this version)."""
    with contextlib.closing(connect(db)) as con:
        wanted = wanted_shapes(con)
        return [name for name in names if table_shape(con, name) == wanted[name]]


def ensure_schema(con: DbConnection, say: Callable[[str], None]) -> None:
    """Create missing tables; rename aside (never drop) any whose shape differs.

    A table that only lacks trailing nullable columns of this version (a checkpoint
    saved by an earlier one) gains them and keeps its rows. A renamed state table
    invalidates every checkpoint, so the checkpoints are cleared too and the next
    run rebuilds the clients from their archives.
    """
    shapes = wanted_shapes(con)
    postgres = isinstance(con, PgConnection)
    moved = []
    with transaction(con):
        for name in TABLES:
            current, wanted = table_shape(con, name), shapes[name]
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
            con.execute(table_ddl(name, postgres))
        if moved and "ingest_checkpoint" not in moved:
            con.execute("DELETE FROM ingest_checkpoint")


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


def read_checkpoint(con: DbConnection, client: str) -> Checkpoint | None:
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


CHECKPOINT_COLUMNS = (
    "last_day",
    "bytes_processed",
    "lines_processed",
    "prefix_blake3",
    "last_transaction_date",
    "updated_at",
    "piece_ends",
    "open_quote",
)
CHECKPOINT_UPSERT = "ON CONFLICT (client_id) DO UPDATE SET " + ", ".join(
    f"{c} = excluded.{c}" for c in CHECKPOINT_COLUMNS
)


def write_checkpoint(con: DbConnection, client: str, cp: Checkpoint) -> None:
    """Store a client's checkpoint (inside the caller's transaction)."""
    con.execute(
        f"INSERT INTO ingest_checkpoint VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?) {CHECKPOINT_UPSERT}",
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


def read_access_points(con: DbConnection, client: str) -> list[AccessPoint]:
    """The access points stored with a client's checkpoint, in stream order."""
    rows = con.execute(
        'SELECT compressed_offset, bits, csv_offset, crc32, "window", compressed_blake3,'
        " tail_blake3 FROM ingest_access_points WHERE client_id = ? ORDER BY compressed_offset",
        (client,),
    ).fetchall()
    return [AccessPoint(*row) for row in rows]


def write_access_points(con: DbConnection, client: str, points: list[AccessPoint]) -> None:
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


def write_frame(con: DbConnection, table: str, frame: pl.DataFrame) -> None:
    """Append a Polars frame to a table with pandas' to_sql (write_pandas)."""
    if frame.height:
        write_pandas(con, table, pd.DataFrame({c: frame[c].to_numpy() for c in frame.columns}))


def write_pandas(con: DbConnection, table: str, frame: Any) -> None:
    """Append a pandas frame to a table: the one write path of every pipeline and peer.

    SQLite: rows go in multi-row INSERTs of up to INSERT_ROWS rows (fewer where SQLite
    takes fewer parameters per statement): one statement per thousand rows instead of
    one per row, faster than one INSERT a row (docs/design.md). PostgreSQL: through
    COPY (`pg.copy_insert`), which pandas documents for it, faster than multi-row
    INSERTs there (docs/postgresql.md); PG_WRITE holds the method, so that a
    measurement can put the INSERTs in its place.
    """
    if not len(frame):
        return
    if isinstance(con, PgConnection):  # COPY, through the SQLAlchemy connection pandas takes
        frame.to_sql(table, con.sa, if_exists="append", index=False, method=PG_WRITE[0])
        return
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
    con: DbConnection, table: str, columns: list[str], values: list[tuple]
) -> list[tuple[str, list]]:
    """Rows as the writes of every pipeline, parameters built: a write floor's input,
    prepared before its clock. SQLite: the multi-row INSERTs the pipelines' write runs;
    PostgreSQL: one COPY of the rows, its rows as the parameters (run_statements)."""
    if isinstance(con, PgConnection):
        return [(f"COPY {table} ({', '.join(columns)}) FROM STDIN", values)]
    per = insert_rows(con, len(columns))
    return [multi_insert(table, columns, values[i : i + per]) for i in range(0, len(values), per)]


def insert_rows(con: DbConnection, columns: int) -> int:
    """Rows per multi-row INSERT: INSERT_ROWS, or fewer where the database takes fewer
    parameters per statement (999 before SQLite 3.32; 65,535 in PostgreSQL)."""
    if isinstance(con, PgConnection):
        limit = 65_535
    else:
        limit = con.getlimit(sqlite3.SQLITE_LIMIT_VARIABLE_NUMBER)
    return max(1, min(INSERT_ROWS, limit // columns))


def pg_insert(pd_table: Any, sa_con: Any, columns: list[str], rows: Iterable[tuple]) -> int:
    """pandas' to_sql insert method for PostgreSQL as multi-row INSERTs (INSERT_ROWS
    rows a statement): what COPY is measured against."""
    values = list(rows)
    for start in range(0, len(values), INSERT_ROWS):
        sql, params = multi_insert(pd_table.name, columns, values[start : start + INSERT_ROWS])
        sa_con.exec_driver_sql(pg.placeholders(sql), tuple(params))
    return len(values)


# How PostgreSQL writes go (write_pandas): COPY; a measurement may swap in pg_insert.
PG_WRITE: list[Callable[..., int]] = [pg.copy_insert]


def days_where(con: DbConnection, client: str, days: list[str]) -> tuple[str, tuple]:
    """The condition on a client's rows of some days in processed_sales, and its
    parameters: the days as one JSON text in SQLite, one array in PostgreSQL."""
    if isinstance(con, PgConnection):
        return "client_id = ? AND transaction_date = ANY(?)", (client, days)
    where = "client_id = ? AND transaction_date IN (SELECT value FROM json_each(?))"
    return where, (client, json.dumps(days))


def delete_days(con: DbConnection, client: str, days: list[str]) -> None:
    """Delete a client's rows of `days` from processed_sales (inside the caller's transaction)."""
    where, params = days_where(con, client, days)
    con.execute(f"DELETE FROM processed_sales WHERE {where}", params)


def replace_days(con: DbConnection, client: str, days: list[str], table: pl.DataFrame) -> None:
    """Replace a client's rows of `days` in processed_sales (inside the caller's transaction)."""
    delete_days(con, client, days)
    write_frame(con, "processed_sales", table)


def rejected_frame(artifacts: PipelineArtifacts, client: str, day: int) -> pl.DataFrame:
    """Rejected rows in the shape of the rejected_rows table."""
    return artifacts.rejected.select(
        pl.lit(client).alias("client_id"), pl.lit(day).alias("day"), pl.all()
    )


def delete_client(con: DbConnection, client: str, tables: Iterable[str]) -> None:
    """Delete a client's rows from `tables` (inside the caller's transaction)."""
    for table in tables:
        con.execute(f"DELETE FROM {table} WHERE client_id = ?", (client,))


# The additive columns of processed_sales as the merge reads them back: name -> SQL.
STORED_ADDITIVE = {
    **{column: column for column in KEY},
    "total_quantity": "total_quantity",
    # Stored in dollars: ROUND before the cast, as a float total times 100 may fall just
    # short of its cents (0.29 * 100 is 28.999...).
    "revenue_cents": "CAST(ROUND(total_revenue * 100) AS BIGINT)",
    "order_count": "order_count",
}


# The stored days as one JSON object of columns: SQLite's functions, PostgreSQL's.
STORED_DAYS_SQL = (
    "SELECT json_object("
    + ", ".join(f"'{n}', json_group_array({sql})" for n, sql in STORED_ADDITIVE.items())
    + ") FROM processed_sales WHERE "
)
PG_STORED_DAYS_SQL = (
    "SELECT json_build_object("
    + ", ".join(f"'{n}', coalesce(json_agg({sql}), '[]')" for n, sql in STORED_ADDITIVE.items())
    + ")::text FROM processed_sales WHERE "
)
STORED_DAYS_SCHEMA = {c: pl.List(SALES_SCHEMA.get(c, pl.Int64)) for c in STORED_ADDITIVE}


def existing_days(con: DbConnection, client: str, days: list[str]) -> pl.DataFrame:
    """Additive columns of the stored rows of `days`, back in integer cents.

    The database hands them over as one JSON object of columns, which Polars reads: one
    value crosses into Python instead of a tuple per row.
    Days whose rows make a text longer than SQLite allows are read half at a time.
    """
    where, params = days_where(con, client, days)
    sql = PG_STORED_DAYS_SQL if isinstance(con, PgConnection) else STORED_DAYS_SQL
    try:
        (text,) = con.execute(sql + where, params).fetchone()
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


def copy_client_rows(src: Db, con: DbConnection, client: str, tables: Iterable[str]) -> None:
    """Replace a client's rows of `tables` in `con` by those of database `src`, atomically.

    SQLite attaches `src`; PostgreSQL streams the rows from it through COPY."""
    if isinstance(con, PgConnection):
        with transaction(con):
            # The client's lock, as every change of its rows takes (ClientState.change).
            con.execute("SELECT pg_advisory_xact_lock(?, ?)", pg.client_lock(client))
            delete_client(con, client, tables)
            for table in tables:
                pg.copy_rows(str(src), con, table, "client_id = ?", (client,))
        return
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


def sales_rows(con: DbConnection, table: str, client: str) -> pl.DataFrame:
    """A client's rows of a sales table, sorted by key, with the table's dtypes.

    Sorted by Polars, byte order: a server's text collation may order otherwise."""
    cursor = con.execute(
        f"SELECT {', '.join(SALES_SCHEMA)} FROM {table} WHERE client_id = ?", (client,)
    )
    frame = pl.DataFrame(cursor.fetchall(), schema=SALES_SCHEMA, orient="row", strict=False)
    return frame.sort(KEY)


def rejected_rows(con: DbConnection, table: str, client: str) -> pl.DataFrame:
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


def stored_rows(con: DbConnection, client: str, days: list[str]) -> list[tuple]:
    """Every column of the client's processed_sales rows of `days`, as stored."""
    where, params = days_where(con, client, days)
    return con.execute(f"SELECT * FROM processed_sales WHERE {where}", params).fetchall()


def run_statements(con: DbConnection, statements: list[tuple[str, list]]) -> None:
    """Statements with their parameters, built beforehand (insert_statements), in order;
    a COPY's parameters are its rows."""
    for sql, params in statements:
        if isinstance(con, PgConnection) and sql.startswith("COPY "):
            with con.raw().cursor() as cur, cur.copy(sql) as copy:
                for row in params:
                    copy.write_row(row)
        else:
            con.execute(sql, params)


class ClientState:
    """One client's state in the project's database, as the pipelines and peers see it.

    The store's narrow interface: what a pipeline reads of the database or changes in
    it goes through these methods, so that another database is another implementation
    of them. Changes happen inside `change()`, one transaction that commits whole or
    not at all.
    """

    def __init__(self, con: DbConnection, client: str) -> None:
        self.con, self.client = con, client

    def checkpoint(self) -> Checkpoint | None:
        """Where the client's incremental state stands (None: nothing processed)."""
        return read_checkpoint(self.con, self.client)

    def access_points(self) -> list[AccessPoint]:
        """Where the next run may resume inflating the client's archive."""
        return read_access_points(self.con, self.client)

    @contextlib.contextmanager
    def change(self) -> Iterator[None]:
        """One transaction for every change made inside it.

        SQLite's BEGIN IMMEDIATE takes the write lock at once; in PostgreSQL a lock of
        the client's, held to the commit, keeps two writers of one client apart (each
        then sees the checkpoint the other committed)."""
        with transaction(self.con):
            if isinstance(self.con, PgConnection):
                self.con.execute("SELECT pg_advisory_xact_lock(?, ?)", pg.client_lock(self.client))
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
