"""Parity: the incremental state against the full refresh (docs/spec.md section 4).

Owns comparing both tables, read back through the store, with the stated tolerance,
and describing a difference. Knows nothing of how either table was made."""

from __future__ import annotations

import sqlite3
from typing import Any

import polars as pl
from polars.testing import assert_frame_equal

from incremental_bench.config import KEY
from incremental_bench.store import rejected_rows, sales_rows


def check_parity(con: sqlite3.Connection, client: str) -> dict[str, Any]:
    """Compare the incremental state with the full refresh (docs/spec.md section 4).

    Keys and integer columns must be equal, float columns equal within 1e-9 relative.
    Returns a record with ok=False and a readable diff instead of raising, so the
    report can show it.
    """
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


def overall_parity(day_n: dict[str, Any], sweep: list[dict[str, Any]], day: int) -> dict[str, Any]:
    """Parity of the run: day N's record, failed if any sweep day failed too. `day` names
    the day the record describes: day N, or the first sweep day that failed when day N
    held (its rows and diff are then that day's)."""
    failed = [p for p in sweep if not p["parity"]["ok"]]
    if day_n["ok"] and failed:
        first = failed[0]["parity"]
        days = ", ".join(str(p["day"]) for p in failed)
        error = f"sweep day(s) {days}: {first['error']}"
        return {**first, "ok": False, "error": error, "day": failed[0]["day"]}
    return {**day_n, "day": day}


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
