"""The SQLite store: read-backs, SQLite's limits, older tables set aside."""

from __future__ import annotations

import datetime as dt
import sqlite3

import polars as pl
from conftest import (
    fresh_db,
)

from incremental_bench import (
    config,
    store,
)

# --- the database --------------------------------------------------------------------------------


def test_stored_days_read_back_exactly_whatever_their_text(tmp_path):
    # The merge reads stored rows back through JSON: any text a sku_group may hold must
    # survive it, and dollars stored as floats must give back their exact cents.
    groups = ['say "hi"', "a,b", "line\nend", "back\\slash", "Zürich ✓", "tab\tx", "", "null"]
    con = fresh_db(tmp_path / "db.sqlite")
    stored = []
    for i, group in enumerate(groups):
        cents = 29 + 100 * i  # 0.29, 1.29, ...: times 100 as floats, just short of cents
        stored.append(("c", f"2025-10-0{1 + i % 2}", "2025-11-01", group, i % 2, i, cents, i + 1))
    con.executemany(
        "INSERT INTO processed_sales VALUES (?, ?, ?, ?, ?, ?, ?, ?, 0, 0, 0, 0, 1)",
        [(*r[:6], r[6] / 100, r[7]) for r in stored],
    )
    con.execute(
        "INSERT INTO processed_sales VALUES ('c', '2025-10-03', '2025-11-01', 'x',"
        " 0, 1, 1.0, 1, 0, 0, 0, 0, 1)"
    )  # another day: not read
    got = store.existing_days(con, "c", ["2025-10-01", "2025-10-02"])
    assert got.columns == [*config.KEY, "total_quantity", "revenue_cents", "order_count"]
    want = {
        (c, dt.date.fromisoformat(d), dt.date.fromisoformat(m), g, bool(loc), q, cents, n)
        for c, d, m, g, loc, q, cents, n in stored
    }
    assert set(got.rows()) == want and got.height == len(stored)
    assert store.existing_days(con, "c", ["2025-09-30"]).height == 0
    assert store.existing_days(con, "c", []).schema == got.schema


def test_writes_and_read_backs_fit_a_smaller_sqlite(tmp_path):
    # An SQLite built with lower limits (999 parameters a statement before 3.32, shorter
    # strings) gets smaller INSERTs and the stored days read back in parts.
    con = fresh_db(tmp_path / "db.sqlite")
    con.setlimit(sqlite3.SQLITE_LIMIT_VARIABLE_NUMBER, 100)
    assert store.insert_rows(con, 13) == 7
    rows = [
        ("c", f"2025-10-{1 + i % 9:02d}", "2025-11-01", f"G{i}", 0, 1, 1.5, 1) for i in range(60)
    ]
    frame = pl.DataFrame(
        [(*r, 1.0, 1.5, 0, 0.1, 1) for r in rows], schema=config.SALES_SCHEMA, orient="row"
    )
    with store.transaction(con):
        store.write_frame(con, "processed_sales", frame)
    assert con.execute("SELECT count(*) FROM processed_sales").fetchone() == (60,)
    days = [f"2025-10-{d:02d}" for d in range(1, 10)]
    whole = store.existing_days(con, "c", days)
    con.setlimit(sqlite3.SQLITE_LIMIT_LENGTH, 1_000)  # about one day's rows as JSON
    parts = store.existing_days(con, "c", days)
    assert parts.height == whole.height == 60
    assert parts.sort(config.KEY).equals(whole.sort(config.KEY))


def test_legacy_table_is_renamed_aside_not_dropped(tmp_path, capsys):
    path = tmp_path / "db.sqlite"
    legacy = sqlite3.connect(path)
    legacy.execute("CREATE TABLE processed_sales (client_id TEXT, revenue REAL)")
    legacy.execute("INSERT INTO processed_sales VALUES ('old', 1.5)")
    legacy.commit()
    legacy.close()
    con = store.connect(path)
    store.ensure_schema(con, print)
    names = [r[0] for r in con.execute("SELECT name FROM sqlite_master WHERE type = 'table'")]
    aside = [n for n in names if n.startswith("processed_sales_legacy_")]
    assert len(aside) == 1
    assert con.execute(f"SELECT * FROM {aside[0]}").fetchall() == [("old", 1.5)]
    assert store.table_shape(con, "processed_sales")[:2] == [
        ("WITHOUT ROWID", "", 0, 0),
        ("client_id", "TEXT", 1, 1),
    ]
    assert "renamed to processed_sales_legacy_" in capsys.readouterr().out
    store.ensure_schema(con, print)  # a second look finds nothing to move
    assert "renamed" not in capsys.readouterr().out


def test_sales_tables_keep_rows_in_key_order_and_older_ones_are_set_aside(tmp_path, capsys):
    # The sales tables are WITHOUT ROWID (rows stored in key order, one B-tree). A table
    # of the same columns stored the other way is renamed aside, never dropped, and
    # the checkpoints are cleared so that the next run rebuilds the state.
    path = tmp_path / "db.sqlite"
    old = sqlite3.connect(path)
    old.execute(f"CREATE TABLE processed_sales ({config.SALES_COLUMNS})")  # a rowid table
    old.execute(f"CREATE TABLE ingest_checkpoint ({config.TABLES['ingest_checkpoint']})")
    old.execute(
        "INSERT INTO ingest_checkpoint (client_id, last_day, bytes_processed,"
        " lines_processed, prefix_blake3, updated_at) VALUES ('c', 1, 1, 1, 'x', 'now')"
    )
    old.commit()
    old.close()
    con = fresh_db(path)
    sql = dict(con.execute("SELECT name, sql FROM sqlite_master WHERE type = 'table'").fetchall())
    assert sql["processed_sales"].endswith("WITHOUT ROWID")
    assert sql["processed_sales_full_refresh"].endswith("WITHOUT ROWID")
    assert "WITHOUT ROWID" not in sql["ingest_checkpoint"]
    assert any(n.startswith("processed_sales_legacy_") for n in sql)
    assert store.read_checkpoint(con, "c") is None
    assert "processed_sales had another schema: renamed to" in capsys.readouterr().out
