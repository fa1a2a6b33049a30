"""Peers: what a data team would run instead, measured the same way.

The refresh an engineer writes first (Polars, all in memory), a full refresh in DuckDB
SQL, and the by-date shortcut; each answer is checked against the baseline's. Knows
nothing of timing or the report."""

from __future__ import annotations

import contextlib
import functools
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import polars as pl
from polars.testing import assert_frame_equal

from incremental_bench.archive import (
    Member,
    archive_path,
    inflate_all,
    locate_member,
    read_member_whole,
)
from incremental_bench.blocks import read_header, scan_archive
from incremental_bench.clock import Stopwatch
from incremental_bench.config import COLUMNS, HEADER_BYTES
from incremental_bench.parity import diff_summary
from incremental_bench.pg import is_url
from incremental_bench.pipelines import RunRecord, merge_days, run_record
from incremental_bench.store import (
    ClientState,
    connect,
    sales_rows,
)
from incremental_bench.transform import (
    check_rejections,
    finalize,
    iso,
    load_lookups,
    local_split,
    process_blocks,
    process_transactions,
    top_five,
)

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
        CASE WHEN z IS NULL OR regexp_full_match(z, '[\s\x0B\x{85}\p{Z}]*') THEN '00000'
             ELSE coalesce(nullif(regexp_extract(
                 upper(regexp_replace(z, '[\s\x0B\x{85}\p{Z}]', '', 'g')), '[0-9]{5}'), ''),
                 '00000') END AS zip,
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
    # Imported here, in the duckdb peer's own process only: its import is slow and pages
    # its library in, in every worker that would never run it (docs/design.md).
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


def run_duckdb_full_refresh(db: Path | str, data_dir: Path, client: str, day: int) -> RunRecord:
    """Peer: a full refresh in DuckDB SQL, written through the baseline's own write path."""
    clock = Stopwatch()
    duck = duckdb_session(data_dir)
    path = archive_path(data_dir, client, day)
    # On disk beside the database, not on a memory-backed tmpfs: its pages would be
    # memory that no resident-size figure shows. A server's database has no folder here:
    # the temporary folder, where the run's scratch folder is too (if that is a tmpfs,
    # the peer's memory figure misses the CSV's pages; docs/postgresql.md).
    folder = Path(tempfile.gettempdir()) if is_url(db) else Path(db).parent
    csv_path = folder / f".{Path(str(db)).name}.{client}.day{day}.csv"
    try:
        with clock.stage("read"):
            size = inflate_to_file(locate_member(path, day), csv_path)
        with clock.stage("transform"):
            params = {"csv": str(csv_path), "client": client}
            table = duck.execute(DUCKDB_FULL_REFRESH, params).df()  # pandas, as to_sql wants
    finally:
        csv_path.unlink(missing_ok=True)
    with clock.stage("write"), contextlib.closing(connect(db)) as con:
        ClientState(con, client).replace_full_refresh(table)
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


def run_by_date(db: Path | str, data_dir: Path, client: str, day: int) -> RunRecord:
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
        state = ClientState(con, client)
        cp = state.checkpoint()
        since = cp.last_transaction_date if cp else None
        with clock.stage("read"):
            blocks = scan_archive(path, day)
        after = pl.col("transaction_date") > since if since else None
        first = blocks.header.lines + 1
        artifacts = process_blocks(blocks, first, client, lookups, clock, keep=after)
        with clock.stage("write"), state.change():
            written = merge_days(state, artifacts.aggregated, clock)
    return run_record("by_date", clock, artifacts, blocks, written)


def run_polars_in_memory(db: Path | str, data_dir: Path, client: str, day: int) -> RunRecord:
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
    with clock.stage("write"), contextlib.closing(connect(db)) as con:
        ClientState(con, client).replace_full_refresh(table, artifacts, day)
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


@dataclass(frozen=True)
class Peer:
    """A way a data team would run instead, run and measured like the pipelines."""

    kind: str  # "full refresh" or "incremental"
    table: str  # where its answer is written, checked against the baseline's
    run: Callable[[Path, Path, str, int], RunRecord]  # the call, as a pipeline's


PEERS: dict[str, Peer] = {
    "polars_in_memory": Peer("full refresh", "processed_sales_full_refresh", run_polars_in_memory),
    "duckdb": Peer("full refresh", "processed_sales_full_refresh", run_duckdb_full_refresh),
    "by_date": Peer("incremental", "processed_sales", run_by_date),
}


def peer_parity(
    peer_db: Path | str, table: str, answer_db: Path | str, client: str
) -> dict[str, Any]:
    """A peer's answer against the baseline's: the same check as the pipelines' parity.

    On failure: rows lost (orders the baseline counted that the peer did not) and keys
    differing, beside the usual diff.
    """
    with contextlib.closing(connect(peer_db)) as peer:
        got = sales_rows(peer, table, client)
    with contextlib.closing(connect(answer_db)) as ans:
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
