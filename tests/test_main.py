"""main.py against docs/spec.md sections 2 to 5, on tiny feeds."""

from __future__ import annotations

import builtins
import contextlib
import datetime as dt
import fcntl
import io
import json
import os
import sqlite3
import subprocess
import sys
import threading
import time
import zipfile
from pathlib import Path

import blake3
import polars as pl
import psutil
import pytest
from conftest import (
    HAND_SKUS,
    HAND_ZIPS,
    HEADER,
    ROOT,
    TINY,
    assert_table_matches,
    fresh_db,
    generate,
    oracle_for,
    parsed,
    read_csv_bytes,
    replay,
    write_feed,
)

import main
from incremental_bench import (
    archive,
    blocks,
    clock,
    config,
    harness,
    parity,
    peers,
    pipelines,
    report,
    results,
    store,
    transform,
)

# --- the cleaning rules, one case each -------------------------------------------------------

LOOKUPS = transform.Lookups(
    zips=pl.DataFrame({"zip_code": list(HAND_ZIPS), "state": list(HAND_ZIPS.values())}),
    skus=pl.DataFrame({"sku_id": list(HAND_SKUS), "sku_group": list(HAND_SKUS.values())}),
)


def process(*rows: str) -> main.PipelineArtifacts:
    """process_transactions over hand-written CSV lines (no header)."""
    body = "".join(r + "\n" for r in rows).encode()
    return main.process_transactions(parsed(body), "c", LOOKUPS)


def one_row(row: str) -> tuple[dict, dict[str, int]]:
    """The single aggregated row of a one-line feed, and the counters that fired."""
    art = process(row)
    assert art.aggregated.height == 1, art.rejected
    fired = {k: v for k, v in art.counters.items() if v}
    return art.aggregated.row(0, named=True), fired


def row(
    zip_raw: str = "94107", maturity: str = "2025-11-01", sku: str = "SKU-1", tx: str = "2025-10-01"
) -> str:
    return f"1,{tx},{sku},2,10.50,{maturity},{zip_raw}"


@pytest.mark.parametrize("zip_raw", ["", "   ", "\t"])
def test_blank_zip_becomes_00000_and_counts_missing(zip_raw):
    got, fired = one_row(row(zip_raw=zip_raw))
    assert got["local"] is False
    assert fired == {"zip_missing": 1}


@pytest.mark.parametrize("zip_raw", ["94107-1234", "941071234", "94 107", "CA94107", "zip:94107"])
def test_noisy_zip_is_repaired_to_its_first_five_digits(zip_raw):
    got, fired = one_row(row(zip_raw=zip_raw))
    assert got["local"] is True  # 94107 is in California
    assert fired == {"zip_repaired": 1}


@pytest.mark.parametrize(
    "zip_raw", ["INTL", "SW1A 1AA", "M5V 3L9", "1234", "\u0669\u0664\u0661\u0660\u0667"]
)
def test_zip_without_five_digits_is_international(zip_raw):
    got, fired = one_row(row(zip_raw=zip_raw))
    assert got["local"] is False
    assert fired == {"zip_international": 1}


def test_clean_zip_counts_nothing_and_joins_its_state():
    got, fired = one_row(row(zip_raw="10001"))
    assert got["local"] is False and fired == {}
    got, fired = one_row(row(zip_raw="90210"))
    assert got["local"] is True and fired == {}


def test_zip_absent_from_the_list_is_kept_and_unknown():
    art = process(row(zip_raw="99999"))
    assert art.counters["zip_unknown"] == 1 and art.aggregated["local"].to_list() == [False]


@pytest.mark.parametrize("maturity", ["", "2025-02-30", "11/01/2025", "2025-1-5", "soon"])
def test_missing_or_invalid_maturity_is_transaction_date_plus_3(maturity):
    got, fired = one_row(row(maturity=maturity))
    assert str(got["maturity_date"]) == "2025-10-04"
    assert fired == {"maturity_imputed": 1}


def test_early_maturity_is_clamped_to_the_transaction_date():
    got, fired = one_row(row(maturity="2025-09-15"))
    assert str(got["maturity_date"]) == "2025-10-01"
    assert fired == {"maturity_clamped": 1}


def test_unknown_sku_goes_to_group_unknown():
    got, fired = one_row(row(sku="SKU-404"))
    assert got["sku_group"] == "UNKNOWN" and fired == {"sku_unmatched": 1}


def test_lookups_of_odd_shape_keep_the_rules():
    # A listed sku without a group is unmatched, as an absent one; a group named UNKNOWN
    # shares the key of the unmatched rows; a listed code of another shape matches
    # nothing, and the state decides `local` whatever the code's position in the list.
    lookups = transform.Lookups(
        zips=pl.DataFrame({"zip_code": ["9410", "00501", "96162"], "state": ["CA", "NY", "CA"]}),
        skus=pl.DataFrame({"sku_id": ["S-A", "S-B", "S-C"], "sku_group": [None, "UNKNOWN", "G1"]}),
    )
    lines = [
        "1,2025-10-01,S-A,1,1.00,2025-11-01,9410",  # four digits: international, unknown
        "2,2025-10-01,S-B,2,2.00,2025-11-01,00501",
        "3,2025-10-01,S-C,3,3.00,2025-11-01,96162",
        "4,2025-10-01,S-Z,4,4.00,2025-11-01,00501",
        "5,2025-10-01,S-C,5,5.00,2025-11-01,09410",  # five digits, listed only as 9410
        "6,2025-10-01,S-C,6,6.00,2025-11-01,+9410",  # a sign is no digit: international
    ]
    art = main.process_transactions(parsed("".join(x + "\n" for x in lines).encode()), "c", lookups)
    got = {
        (r["sku_group"], r["local"]): (r["order_count"], r["total_quantity"])
        for r in art.aggregated.to_dicts()
    }
    assert got == {("UNKNOWN", False): (3, 7), ("G1", True): (1, 3), ("G1", False): (2, 11)}
    assert art.counters["sku_unmatched"] == 2 and art.counters["zip_international"] == 2
    assert art.counters["zip_unknown"] == 3  # 09410, and 00000 twice: not listed here


def test_dates_far_from_today_keep_their_key():
    # Rows group on the dates packed into one integer: the years 0001 to 9999, before
    # 1970 as after, and the longest maturities come back as they went in.
    got, _ = one_row(row(tx="1969-12-31", maturity="9999-12-31"))
    assert (str(got["transaction_date"]), str(got["maturity_date"])) == ("1969-12-31", "9999-12-31")
    got, _ = one_row(row(tx="0001-01-01", maturity="0001-01-01"))
    assert (str(got["transaction_date"]), str(got["maturity_date"])) == ("0001-01-01", "0001-01-01")
    table = transform.finalize(
        main.process_transactions(
            parsed(b"1,1969-12-31,SKU-1,2,1.00,,9\n"), "c", LOOKUPS
        ).aggregated
    )
    assert table.row(0, named=True)["maturity_date"] == "1970-01-03"


@pytest.mark.parametrize(
    ("bad", "reason"),
    [
        ("1,2025-13-01,SKU-1,2,10.50,2025-11-01,94107", "transaction_date"),
        ("1,yesterday,SKU-1,2,10.50,2025-11-01,94107", "transaction_date"),
        ("1,2025-10-01,SKU-1,two,10.50,2025-11-01,94107", "quantity_sold"),
        ("1,2025-10-01,SKU-1,2,ten,2025-11-01,94107", "revenue_usd"),
        ("1,2025-10-01,SKU-1,2,10.50,2025-11-01", "column count"),
        ("1,2025-10-01,SKU-1,2,10.50,2025-11-01,94107,extra", "column count"),
        ("", "empty line"),
    ],
)
def test_unparseable_row_is_rejected_alone_with_its_line(bad, reason):
    art = process(row(), bad, row(zip_raw="10001"))
    assert art.aggregated["order_count"].sum() == 2  # the good rows around it survive
    assert art.counters["rows_rejected"] == 1
    rejected = art.rejected.row(0, named=True)
    assert rejected["line_number"] == 3 and reason in rejected["reason"]
    assert rejected["raw_line"] == bad  # kept as it was, even when empty


# --- the aggregate against an independent oracle -----------------------------------------------


def test_full_recompute_matches_the_oracle(tiny_feed):
    table, counters, _rejected = oracle_for(tiny_feed, "client_2", 3)
    scan = blocks.scan_archive(tiny_feed / "client_2/transactions_day_3.zip", 3)
    lookups = transform.load_lookups(tiny_feed)
    art = transform.process_blocks(scan, 2, "client_2", lookups, clock.Stopwatch())
    final = transform.finalize(art.aggregated).with_columns(pl.col("local").cast(pl.Int64))
    assert_table_matches(final, table)
    assert art.counters == {c: counters.get(c, 0) for c in config.COUNTERS}
    assert min(counters[c] for c in ("zip_repaired", "maturity_clamped", "maturity_imputed")) > 0


HAND_ROWS = [
    row(),
    row(zip_raw="94107-0001"),
    "2,2025-10-01,SKU-2,3,99.99,,10001",
    "3,2025-10-02,SKU-3,1,5.00,2025-09-01,ZIP:90210",
    "4,2025-10-02,SKU-9,10,500.00,2026-06-01,SW1A 1AA",
    "5,2025-10-02,SKU-1,1,7.25,2025-11-01",  # wrong column count: rejected
    "6,2025-10-02,SKU-1,1,7.25,2025-11-01,94107",
]


def test_too_many_rejected_rows_stop_the_run_and_change_nothing(tmp_path):
    feed = write_feed(tmp_path / "data", [HAND_ROWS])  # 1 of 7 rows: over the 1% limit
    con = fresh_db(tmp_path / "db.sqlite")
    with pytest.raises(config.InputError, match="1 of 7 new rows cannot be parsed"):
        pipelines.incremental_step(con, feed, "client_1", 1)
    assert store.read_checkpoint(con, "client_1") is None
    assert con.execute("SELECT COUNT(*) FROM processed_sales").fetchone() == (0,)


def test_hand_feed_matches_the_oracle_and_keeps_rejected_rows(tmp_path):
    filler = [
        f"{i},2025-10-0{i % 3 + 1},SKU-{i % 4},{i % 10 + 1},{i}.{i % 100:02d},2025-12-01,{z}"
        for i, z in zip(range(10, 260), ["94107", "10001", "x", "90210 "] * 70, strict=False)
    ]
    day1, day2 = HAND_ROWS[:4] + filler[:70], HAND_ROWS[4:] + filler[70:]
    feed = write_feed(tmp_path / "data", [day1, day2])
    table, counters, rejected = oracle_for(feed, "client_1", 2)
    assert counters["rows_rejected"] == 1 and counters["sku_unmatched"] > 0
    con = fresh_db(tmp_path / "db.sqlite")
    pipelines.incremental_step(con, feed, "client_1", 1)
    record = pipelines.incremental_step(con, feed, "client_1", 2)
    assert record.counters["rows_rejected"] == 1
    assert_table_matches(parity.sales_rows(con, "processed_sales", "client_1"), table)
    stored = con.execute("SELECT day, line_number, raw_line FROM rejected_rows").fetchall()
    assert stored == [(2, rejected[0][0], rejected[0][1])]
    # Day 2's counters cover its new rows; the oracle's cover the whole archive.
    fresh = replay(feed, tmp_path / "fresh.db", range(2, 2))
    first = pipelines.incremental_step(fresh, feed, "client_1", 2)
    assert first.counters == {c: counters.get(c, 0) for c in config.COUNTERS}


def test_small_blocks_add_up_to_the_same_answer_and_line_numbers(tmp_path, monkeypatch):
    # Archives bigger than BLOCK_BYTES are processed block by block: shrink the block
    # so this 3-day feed spans many, with a rejected row among them.
    monkeypatch.setattr(blocks, "BLOCK_BYTES", 2_000)
    filler = [
        f"{i},2025-10-0{i % 3 + 1},SKU-{i % 4},{i % 9 + 1},{i}.25,2025-12-01,9{i:04d}"
        for i in range(600)
    ]
    days = [filler[:300], [*filler[300:450], "bad,row"], filler[450:]]
    feed = write_feed(tmp_path / "data", days)
    table, counters, rejected = oracle_for(feed, "client_1", 3)
    con = replay(feed, tmp_path / "db.sqlite", range(1, 4))
    assert_table_matches(parity.sales_rows(con, "processed_sales", "client_1"), table)
    assert con.execute("SELECT line_number FROM rejected_rows").fetchall() == [(rejected[0][0],)]
    scan = blocks.scan_archive(feed / "client_1/transactions_day_3.zip", 3)
    full = transform.process_blocks(
        scan, 2, "client_1", transform.load_lookups(feed), clock.Stopwatch()
    )
    assert full.counters == {c: counters.get(c, 0) for c in config.COUNTERS}
    assert full.rejected["line_number"].to_list() == [rejected[0][0]] == [452]
    assert store.read_checkpoint(con, "client_1").lines_processed == 602


@pytest.fixture
def new_inflate_threads():
    """The inflating threads started during the test and still alive, when asked."""
    before = set(threading.enumerate())
    return lambda: [t for t in set(threading.enumerate()) - before if t.name == "inflate"]


def test_prefetched_text_comes_in_order_and_a_producer_error_reaches_the_caller(
    new_inflate_threads,
):
    chunks = [bytes([i]) * (i + 1) for i in range(50)]
    assert list(blocks.prefetched(iter(chunks), depth=2)) == chunks

    def failing():
        yield b"a"
        raise config.CorruptArchive("x.zip: corrupt archive, cannot inflate")

    got = []
    with pytest.raises(config.CorruptArchive, match=r"x\.zip"):
        got.extend(blocks.prefetched(failing()))
    assert got == [b"a"] and not new_inflate_threads()


def test_a_read_stopped_early_stops_its_inflating_thread_and_closes_the_source(
    new_inflate_threads,
):
    closed = []

    def endless():
        try:
            while True:
                yield b"x" * 100
        finally:
            closed.append(True)

    reader = blocks.prefetched(endless(), depth=2)
    assert next(reader) == b"x" * 100
    reader.close()
    assert closed == [True] and not new_inflate_threads()


def test_an_error_after_the_read_leaves_no_inflating_thread_behind(
    tmp_path, monkeypatch, new_inflate_threads
):
    # The traceback is kept (as a test runner or a caller logging it would): the
    # thread must still be gone, so process_blocks has to close its read itself.
    # Small reads, so that the producer is still running, queue full, when the first
    # block fails.
    monkeypatch.setattr(blocks, "BLOCK_BYTES", 2_000)
    monkeypatch.setattr(archive, "READ_CHUNK_BYTES", 512)
    monkeypatch.setattr(archive, "INFLATE_OUT_BYTES", 64)
    rows = [f"{i},2025-10-01,SKU-1,1,1.00,2025-11-01,94107" for i in range(2_000)]
    feed = write_feed(tmp_path / "data", [rows])

    def broken(*args, **kwargs):
        raise RuntimeError("transform failed")

    monkeypatch.setattr(transform, "process_transactions", broken)
    scan = blocks.scan_archive(feed / "client_1/transactions_day_1.zip", 1)
    with pytest.raises(RuntimeError) as caught:
        transform.process_blocks(
            scan, 2, "client_1", transform.load_lookups(feed), clock.Stopwatch()
        )
    assert caught.traceback and not new_inflate_threads()


def test_crlf_line_ends_give_the_answer_of_lf_line_ends():
    rows = [row(), row(zip_raw=""), row(maturity=""), "1,2025-10-02,SKU-2,3,4.00", row()]
    lf = "".join(r + "\n" for r in rows).encode()
    crlf = "".join(r + "\r\n" for r in rows).encode()
    a, b = parsed(lf), parsed(crlf)
    assert a.equals(b)  # no field keeps a "\r", not even the empty last ones
    art = main.process_transactions(b, "c", LOOKUPS)
    assert art.rejected["raw_line"].to_list() == ["1,2025-10-02,SKU-2,3,4.00"]
    assert art.counters["zip_missing"] == 1 and art.counters["maturity_imputed"] == 1
    assert art.rejected["line_number"].to_list() == [5]


def test_zero_revenue_day_has_share_zero_not_nan():
    art = process("1,2025-10-05,SKU-1,1,0.00,2025-11-01,94107")
    table = transform.finalize(art.aggregated)
    assert table["revenue_share_of_day"].to_list() == [0.0]


def test_invalid_utf8_and_nul_bytes_are_judged_per_row():
    body = b"1,2025-10-01,SKU-1,2,10.50,2025-11-01,94\xff107\n2,2025-10-01,SKU-1,1,1.00,,9\x0041\n"
    art = main.process_transactions(parsed(body), "c", LOOKUPS)
    assert art.aggregated["order_count"].sum() == 2 and art.counters["rows_rejected"] == 0
    assert art.counters["zip_international"] == 2  # the damage splits the five digits


def test_day_without_final_newline_then_completed_keeps_parity(tmp_path):
    # Day 1 ends inside its last line; day 2 starts with the newline that ends it.
    rows = [row(), "2,2025-10-01,SKU-2,3,99.99,,10001"] + [
        row(zip_raw=str(10000 + i)) for i in range(200)
    ]
    feed = write_feed(tmp_path / "data", [rows[:100], rows[100:]])
    for day, cut in ((1, True), (2, False)):
        path = feed / "client_1" / f"transactions_day_{day}.zip"
        text = read_csv_bytes(path)
        with zipfile.ZipFile(path, "w") as zf:
            zf.writestr(path.stem + ".csv", text[:-1] if cut else text)
    con = replay(feed, tmp_path / "db.sqlite", range(1, 3))
    table, counters, _ = oracle_for(feed, "client_1", 2)
    assert counters["rows_rejected"] == 0
    assert_table_matches(parity.sales_rows(con, "processed_sales", "client_1"), table)
    assert store.read_checkpoint(con, "client_1").lines_processed == 203


def test_extended_last_line_is_a_restatement_and_rebuilds(tmp_path):
    rows = [row(zip_raw=str(10000 + i)) for i in range(300)]
    feed = write_feed(tmp_path / "data", [rows[:150], rows[150:]])
    day1 = feed / "client_1" / "transactions_day_1.zip"
    text = read_csv_bytes(day1)
    with zipfile.ZipFile(day1, "w") as zf:
        zf.writestr("transactions_day_1.csv", text[:-3])  # ends "...,101"; day 2 goes on "49"
    con = fresh_db(tmp_path / "db.sqlite")
    pipelines.incremental_step(con, feed, "client_1", 1)
    record = pipelines.incremental_step(con, feed, "client_1", 2)
    assert "restatement detected in client_1 day 2" in record.note
    table, _, _ = oracle_for(feed, "client_1", 2)
    assert_table_matches(parity.sales_rows(con, "processed_sales", "client_1"), table)


def test_a_concurrent_writer_is_detected_and_nothing_is_counted_twice(
    tmp_path, tiny_feed, monkeypatch
):
    con = replay(tiny_feed, tmp_path / "db.sqlite", range(1, 2))
    real_process = transform.process_blocks

    def process_while_another_run_commits(*args, **kwargs):
        monkeypatch.setattr(pipelines, "process_blocks", real_process)
        other = store.connect(tmp_path / "db.sqlite")
        pipelines.incremental_step(other, tiny_feed, "client_1", 2)
        other.close()
        return real_process(*args, **kwargs)

    monkeypatch.setattr(pipelines, "process_blocks", process_while_another_run_commits)
    with pytest.raises(config.ConflictError, match="another run moved the checkpoint"):
        pipelines.incremental_step(con, tiny_feed, "client_1", 2)
    table, _, _ = oracle_for(tiny_feed, "client_1", 2)
    assert_table_matches(parity.sales_rows(con, "processed_sales", "client_1"), table)


# --- the incremental path: replay, parity, reruns -------------------------------------------------


@pytest.fixture
def replayed(tiny_feed, tmp_path):
    """A database holding client_1's incremental state after days 1, 2 and 3."""
    con = fresh_db(tmp_path / "db.sqlite")
    for day in (1, 2, 3):
        pipelines.incremental_step(con, tiny_feed, "client_1", day)
    yield con
    con.close()


def test_replaying_days_equals_the_oracle_of_the_last_archive(replayed, tiny_feed):
    table, _counters, _rejected = oracle_for(tiny_feed, "client_1", 3)
    assert_table_matches(parity.sales_rows(replayed, "processed_sales", "client_1"), table)
    cp = store.read_checkpoint(replayed, "client_1")
    csv = read_csv_bytes(tiny_feed / "client_1/transactions_day_3.zip")
    assert cp.last_day == 3 and cp.bytes_processed == len(csv)
    # The fingerprint chains the pieces each day added: d1 = blake3(day 1),
    # dk = blake3(d(k-1) + the bytes day k added).
    ends = [
        len(read_csv_bytes(tiny_feed / f"client_1/transactions_day_{d}.zip")) for d in (1, 2, 3)
    ]
    assert cp.ends == ends
    digest = b""
    for start, end in zip([0, *ends], ends, strict=False):
        digest = blake3.blake3(digest + csv[start:end]).digest()
    assert cp.prefix_blake3 == digest.hex()
    assert cp.lines_processed == csv.count(b"\n") == 3601


def test_step_on_the_checkpoint_day_is_a_no_op_and_older_day_refused(replayed, tiny_feed):
    before = parity.sales_rows(replayed, "processed_sales", "client_1")
    record = pipelines.incremental_step(replayed, tiny_feed, "client_1", 3)
    assert record.note == "no-op" and record.rows_processed == 0
    assert parity.sales_rows(replayed, "processed_sales", "client_1").equals(before)
    with pytest.raises(config.StaleDayError, match="already holds day 3"):
        pipelines.incremental_step(replayed, tiny_feed, "client_1", 2)


def test_parity_check_catches_a_changed_value(replayed, tiny_feed):
    table = parity.sales_rows(replayed, "processed_sales", "client_1")
    with store.transaction(replayed):
        store.write_frame(replayed, "processed_sales_full_refresh", table)
    assert parity.check_parity(replayed, "client_1")["ok"]
    first, last = table.row(0, named=True), table.row(-1, named=True)
    where = " AND ".join(f"{k} = :{k}" for k in config.KEY)
    replayed.execute(
        f"UPDATE processed_sales SET total_revenue = total_revenue + 0.01 WHERE {where}",
        {k: first[k] for k in config.KEY},
    )
    replayed.execute(f"DELETE FROM processed_sales WHERE {where}", {k: last[k] for k in config.KEY})
    result = parity.check_parity(replayed, "client_1")
    assert not result["ok"]
    assert parity.check_parity(replayed, "nobody")["ok"]  # two empty sides are equal
    assert result["diff"]["rows_only_full_refresh"] == 1
    assert result["diff"]["columns_differing"]["total_revenue"] == 1
    assert len(result["diff"]["sample"]) == 2


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


# --- the command line, end to end ---------------------------------------------------------------


@pytest.fixture(scope="session")
def benchmark_run(tmp_path_factory):
    """One real `main.py` run on a tiny feed, day 3, two repeats, made once per session.

    Under pytest-xdist the first worker to get here runs it and the other waits for it
    (a lock in the folder the workers share), so the tests that read it can run anywhere.
    """
    base = tmp_path_factory.getbasetemp()
    shared = base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base
    out = shared / "benchmark_run"
    args = ["--data-dir", str(out / "data"), "--db", str(out / "db.sqlite"), "--day", "3"]
    args += ["--repeat", "2", "--report", str(out / "results.md"), "--json", str(out / "r.json")]
    with open(shared / "benchmark_run.lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not (out / "printed.txt").exists():
            generate(out / "data", *TINY)
            printed = io.StringIO()
            with contextlib.redirect_stdout(printed):
                assert main.main(args) == 0
            (out / "printed.txt").write_text(printed.getvalue())
    return out, args, (out / "printed.txt").read_text()


def test_json_carries_the_spec_keys_and_every_try(benchmark_run):
    out, _, printed = benchmark_run
    results = json.loads((out / "r.json").read_text())
    for pipeline in ("baseline", "incremental"):
        wall = results[pipeline]["wall_s"]
        assert len(wall["runs"]) == 2 and wall["min"] <= wall["median"] <= wall["max"]
        assert results[pipeline]["peak_mib"] > 0
        # Private data memory is part of the peak; with the library code it makes it up.
        figures = results[pipeline]
        assert 0 < figures["data_mib"] <= figures["peak_mib"] + 1
        assert figures["data_mib"] + figures["file_rss_delta_mib"] >= 0.8 * figures["peak_mib"]
    assert results["parity"]["ok"] is True
    cond = results["conditions"]
    assert (cond["client"], cond["day"], cond["rows_total"], cond["rows_new"]) == (
        "client_1",
        3,
        3600,
        300,
    )
    assert results["incremental"]["rows_processed"] == 300
    for pipeline in ("baseline", "incremental"):  # the stages cover the timed call
        stages = results[pipeline]["stages_s"]
        assert set(stages) == set(config.STAGES)
        assert 0 < sum(stages.values()) <= results[pipeline]["wall_s"]["max"] * 1.001
    assert "incremental 0." in printed and "x faster" in printed


def test_line_tables_only_under_memory_profiler(tmp_path, monkeypatch):
    # Without memory_profiler's `profile` in builtins, nothing is traced or run again.
    monkeypatch.setattr(harness, "copy_db", lambda *a: pytest.fail("profiled without profiler"))
    monkeypatch.delattr(builtins, "profile", raising=False)
    cfg = config.BenchConfig(data_dir=tmp_path, client="c", day=2)
    harness.profile_lines(cfg, tmp_path / "state.db", tmp_path)
    # With it, each pipeline is traced for exactly one call, incremental_step inside.
    traced, calls = [], []

    def profile(fn):
        traced.append(fn.__name__)
        return lambda *args: calls.append((fn.__name__, args[2:]))

    monkeypatch.setattr(builtins, "profile", profile, raising=False)
    monkeypatch.setattr(harness, "copy_db", lambda src, dst: None)
    harness.profile_lines(cfg, tmp_path / "state.db", tmp_path)
    assert traced == ["incremental_step", "run_baseline_benchmark", "run_optimized_benchmark"]
    assert calls == [("run_baseline_benchmark", ("c", 2)), ("run_optimized_benchmark", ("c", 2))]


@pytest.mark.parametrize("space", ["\u00a0", "\u2003", "\u3000", "\u0085", "\x0b"])
def test_the_duckdb_peer_drops_every_unicode_whitespace_as_the_rules_say(space, tmp_path):
    # RE2's \s is ASCII whitespace only; the rules drop any Unicode whitespace.
    rows = [f"{i},2025-10-01,SKU-1,1,1.00,2025-11-01,94{space}107" for i in range(1, 40)]
    rows += [f"{i},2025-10-01,SKU-2,1,1.00,2025-11-01,{space}" for i in range(40, 60)]
    feed = write_feed(tmp_path / "data", [rows])
    tables = {}
    for name, run in (
        ("baseline", pipelines.run_baseline_benchmark),
        ("duckdb", peers.run_duckdb_full_refresh),
    ):
        db = tmp_path / f"{name}.db"
        fresh_db(db).close()
        run(db, feed, "client_1", 1)
        with contextlib.closing(store.connect(db)) as con:
            tables[name] = parity.sales_rows(con, "processed_sales_full_refresh", "client_1")
    table, _, _ = oracle_for(feed, "client_1", 1)
    assert_table_matches(tables["baseline"], table)
    assert_table_matches(tables["duckdb"], table)


def test_peers_are_measured_alike_and_checked_against_the_baseline(benchmark_run):
    out, _, _ = benchmark_run
    tiny_feed = out / "data"
    results = json.loads((out / "r.json").read_text())
    peers = results["peers"]
    assert set(peers) == {"polars_in_memory", "duckdb", "by_date"}
    kinds = {"polars_in_memory": "full refresh", "duckdb": "full refresh", "by_date": "incremental"}
    for name, kind in kinds.items():
        assert peers[name]["kind"] == kind and len(peers[name]["wall_s"]["runs"]) == 2
        assert peers[name]["peak_mib"] > 0 and peers[name]["data_mib"] > 0
    assert peers["duckdb"]["parity_ok"] is True  # the same rules, another engine
    assert peers["polars_in_memory"]["parity_ok"] is True  # the same rules, read at once
    # The tiny feed has 2% late rows: the by-date shortcut loses exactly the day's rows
    # dated on or before the last processed date.
    text = read_csv_bytes(tiny_feed / "client_1/transactions_day_3.zip").decode()
    day2 = read_csv_bytes(tiny_feed / "client_1/transactions_day_2.zip").decode()
    late = [r for r in text[len(day2) :].splitlines() if r.split(",")[1] <= "2025-10-02"]
    assert len(late) > 0
    assert peers["by_date"]["parity_ok"] is False
    assert peers["by_date"]["parity"]["diff"]["rows_lost"] == len(late)
    best = results["against_the_best"]
    assert best["fastest"] in best["full_refreshes"] and "by_date" not in best["full_refreshes"]
    full = {n: results.get(n) or peers[n] for n in ("baseline", "polars_in_memory", "duckdb")}
    fastest = min(full, key=lambda n: full[n]["wall_s"]["median"])
    inc = results["incremental"]["wall_s"]
    assert best["fastest"] == fastest
    assert best["speedup"] == pytest.approx(full[fastest]["wall_s"]["median"] / inc["median"])
    # The spread: each repeat's full refresh over the incremental run beside it.
    paired = [f / i for f, i in zip(full[fastest]["wall_s"]["runs"], inc["runs"], strict=True)]
    assert best["speedup_paired"]["runs"] == pytest.approx(paired)
    assert best["speedup_paired"]["min"] == pytest.approx(min(paired))
    assert (
        f"{min(paired):.1f}x to {max(paired):.1f}x over 2 side-by-side runs"
        in (out / "results.md").read_text()
    )
    report = (out / "results.md").read_text()
    assert f"FAILED: {len(late):,} rows lost" in report and "## Against the peers" in report


def test_summary_statistics_on_known_lists():
    assert results.summarize([3.0, 1.0, 2.0]) == {
        "median": 2.0,
        "min": 1.0,
        "max": 3.0,
        "runs": [3.0, 1.0, 2.0],
    }
    assert results.summarize([4.0, 1.0, 2.0, 10.0])["median"] == 3.0
    assert results.summarize([0.5]) == {"median": 0.5, "min": 0.5, "max": 0.5, "runs": [0.5]}


def test_report_renders_from_the_saved_json_alone(benchmark_run):
    out, _, _ = benchmark_run
    results = json.loads((out / "r.json").read_text())

    # Nothing but the record feeds the renderer (tests/test_layers.py: the report
    # imports no engine, no database, no clock and no file system).
    assert report.render_report(results) == (out / "results.md").read_text()


def test_a_failed_sweep_day_fails_the_run_and_the_report_says_where(benchmark_run):
    good = {"ok": True, "rows": 10}
    bad = {"ok": False, "error": "values differ", "diff": {"sample": []}}
    sweep = [{"day": 2, "parity": good}, {"day": 3, "parity": bad}, {"day": 4, "parity": bad}]
    verdict = parity.overall_parity(good, sweep, 5)
    assert not verdict["ok"] and verdict["error"] == "sweep day(s) 3, 4: values differ"
    assert verdict["day"] == 3  # the record describes the failing sweep day, and says so
    assert parity.overall_parity(good, sweep[:1], 5) == {**good, "day": 5}
    out, _, _ = benchmark_run
    results = json.loads((out / "r.json").read_text())
    results["correctness"]["parity_sweep_days"] = {"2": False}
    assert "FAILED on days ['2']" in report.render_report(results)


def test_chart_is_a_png_with_the_sweep_numbers_under_it(benchmark_run):
    out, _, _ = benchmark_run
    png = (out / "results.png").read_bytes()
    assert png.startswith(b"\x89PNG\r\n\x1a\n") and len(png) > 10_000
    report = (out / "results.md").read_text()
    assert "![time and peak memory against rows in the archive](results.png)" in report
    results = json.loads((out / "r.json").read_text())
    assert [p["day"] for p in results["sweep"]] == [2, 3]
    assert [p["rows_total"] for p in results["sweep"]] == [3300, 3600]
    assert [p["rows_new"] for p in results["sweep"]] == [300, 300]
    assert "| 2 | 3,300 | 300 |" in report


def test_database_holds_day_n_and_report_is_ascii(benchmark_run):
    out, _, _ = benchmark_run
    tiny_feed = out / "data"
    con = sqlite3.connect(out / "db.sqlite")
    assert con.execute("SELECT last_day FROM ingest_checkpoint").fetchall() == [(3,)]
    table, _, _ = oracle_for(tiny_feed, "client_1", 3)
    assert_table_matches(parity.sales_rows(con, "processed_sales", "client_1"), table)
    report = (out / "results.md").read_text(encoding="utf-8")
    assert report.isascii(), [c for c in report if not c.isascii()][:5]
    for section in ("## Conditions", "## Parity", "## Top 5 SKU groups", "## California-local"):
        assert section in report
    assert list(out.glob(".bench-*")) == []  # scratch copies are gone


def test_earlier_day_under_memory_profiler_replays_and_prints_one_table_each(
    benchmark_run, tmp_path
):
    # Running again for an earlier day just works; under `python -m memory_profiler`
    # each pipeline function shows one line table, of the measured call only.
    out, args, _ = benchmark_run
    db = tmp_path / "db.sqlite"  # a copy: the other tests read the run's day-3 database
    store.copy_db(out / "db.sqlite", db)
    earlier = [*args[:2], "--db", str(db), "--day", "2", "--repeat", "1", "--no-peers"]
    earlier += ["--report", str(tmp_path / "r2.md")]
    proc = subprocess.run(
        [sys.executable, "-m", "memory_profiler", str(ROOT / "main.py"), *earlier],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    assert "replayed days 1..1 (stored state was day 3, not 1)" in proc.stdout
    for function in ("run_baseline_benchmark", "run_optimized_benchmark", "incremental_step"):
        header = next(line for line in proc.stdout.splitlines() if f"def {function}(" in line)
        assert header.split()[5] == "1", header  # line, MiB, MiB, occurrences
    assert proc.stdout.count("Line #") == 3
    con = sqlite3.connect(db)
    assert con.execute("SELECT last_day FROM ingest_checkpoint").fetchall() == [(2,)]


def test_help_exits_0_and_names_the_options(capsys):
    with pytest.raises(SystemExit) as exit_:
        main.main(["--help"])
    assert exit_.value.code == 0
    text = capsys.readouterr().out
    for option in ("--data-dir", "--db", "--client", "--day", "--repeat", "--report", "--json"):
        assert option in text


# --- bad input: one line, exit 2, database untouched ----------------------------------------------


def break_member_name(path: Path) -> None:
    data = read_csv_bytes(path)
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("other.csv", data)


def break_header(path: Path) -> None:
    text = read_csv_bytes(path).decode().replace(HEADER, HEADER.replace(",revenue_usd", ""), 1)
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr(path.stem + ".csv", text)


def corrupt_bytes(path: Path) -> None:
    raw = bytearray(path.read_bytes())
    for i in range(200, 600):
        raw[i] ^= 0x5A
    path.write_bytes(bytes(raw))


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        (
            lambda d: (d / "client_1/transactions_day_2.zip").unlink(),
            "transactions_day_2.zip: archive not found",
        ),
        (
            lambda d: (d / "client_1/transactions_day_2.zip").write_bytes(b"not a zip"),
            "transactions_day_2.zip: corrupt or not a zip",
        ),
        (
            lambda d: corrupt_bytes(d / "client_1/transactions_day_2.zip"),
            "transactions_day_2.zip: corrupt",
        ),
        (
            lambda d: break_member_name(d / "client_1/transactions_day_2.zip"),
            "no member transactions_day_2.csv",
        ),
        (
            lambda d: break_header(d / "client_1/transactions_day_2.zip"),
            "lacks column(s) ['revenue_usd']",
        ),
        (lambda d: (d / "static/sku_groups.csv").unlink(), "sku_groups.csv: lookup file not found"),
    ],
)
def test_bad_input_exits_2_with_one_line_and_leaves_the_db_untouched(
    damage, message, tiny_feed, tmp_path, capsys
):
    import shutil

    data = tmp_path / "data"
    shutil.copytree(tiny_feed, data)
    db = tmp_path / "db.sqlite"
    con = fresh_db(db)  # a database with rows of its own, which must survive
    with store.transaction(con):
        con.execute(
            "INSERT INTO processed_sales VALUES"
            " ('other', '2025-10-01', '2025-10-04', 'G', 0, 1, 2.5, 1, 1.0, 2.5, 3, 1.0, 1)"
        )
    con.close()
    before = db.read_bytes()
    damage(data)
    capsys.readouterr()
    code = main.main(["--data-dir", str(data), "--db", str(db), "--day", "3", "--repeat", "1"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1
    assert err[0].startswith("main.py: error: ") and message in err[0]
    assert db.read_bytes() == before


def test_db_that_is_not_sqlite_exits_2_and_is_kept(tiny_feed, tmp_path, capsys):
    db = tmp_path / "notes.txt"
    db.write_text("my notes, not a database\n" * 100)
    code = main.main(["--data-dir", str(tiny_feed), "--db", str(db), "--day", "2"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "notes.txt: cannot read as an SQLite database" in err[0]
    assert db.read_text() == "my notes, not a database\n" * 100


def test_report_in_a_missing_folder_exits_2_before_any_work(tiny_feed, tmp_path, capsys):
    args = ["--data-dir", str(tiny_feed), "--db", str(tmp_path / "db"), "--day", "2"]
    code = main.main([*args, "--report", str(tmp_path / "no" / "results.md")])
    assert code == 2 and "the folder for --report does not exist" in capsys.readouterr().err
    assert not (tmp_path / "db").exists()


def test_missing_data_folder_exits_2(tmp_path, capsys):
    code = main.main(["--data-dir", str(tmp_path / "nope"), "--db", str(tmp_path / "db")])
    err = capsys.readouterr().err.strip()
    assert code == 2 and "data folder not found" in err and "nope" in err
    assert not (tmp_path / "db").exists()


@pytest.mark.parametrize("client", ["../data/client_1", "client_1/", "/tmp/client_1", "..", ""])
def test_client_must_be_a_plain_folder_name(client, tiny_feed, tmp_path, capsys):
    args = ["--data-dir", str(tiny_feed), "--db", str(tmp_path / "db"), "--client", client]
    code = main.main([*args, "--day", "2"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "not a client folder name" in err[0], err
    assert not (tmp_path / "db").exists()


def alive(process) -> bool:
    try:
        return process.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def workers_of(pid: int) -> list:
    found = []
    for child in psutil.Process(pid).children():
        with contextlib.suppress(psutil.NoSuchProcess):
            if "incremental_bench.worker_entry" in child.cmdline():
                found.append(child)
    return found


def test_a_killed_run_leaves_no_worker_and_the_next_run_removes_its_scratch(medium_feed, tmp_path):
    db = tmp_path / "db.sqlite"
    args = ["--data-dir", str(medium_feed), "--db", str(db), "--no-sweep"]
    args += ["--report", str(tmp_path / "results.md")]
    driver = subprocess.Popen(
        [sys.executable, str(ROOT / "main.py"), *args, "--day", "4", "--repeat", "50"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        # Stop a worker past its start-up (it has asked the kernel to kill it with its
        # driver by then): stopped, it can only end by that signal.
        workers, seen, deadline = [], {}, time.monotonic() + 60
        while not workers and time.monotonic() < deadline and driver.poll() is None:
            for worker in workers_of(driver.pid):
                # Ages by our own clock: psutil's create_time can be off by a second.
                if time.monotonic() - seen.setdefault(worker.pid, time.monotonic()) > 0.5:
                    with contextlib.suppress(psutil.NoSuchProcess):
                        worker.suspend()
                        workers.append(worker)
            time.sleep(0.02)
        assert workers, "no worker process started"
    finally:
        driver.kill()  # SIGKILL: the driver cannot clean up after itself
        driver.wait()
    gone_by = time.monotonic() + 1.0
    while any(alive(w) for w in workers) and time.monotonic() < gone_by:
        time.sleep(0.01)
    assert not any(alive(w) for w in workers), "a worker outlived its driver by over 1 s"
    leftovers = list(tmp_path.glob(".bench-db.sqlite-*"))
    assert len(leftovers) == 1 and leftovers[0].is_dir()
    # The next run on the same database (the stale pid in its lock file is no obstacle)
    # removes the leftover, says so, and leaves no scratch of its own.
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        assert main.main([*args, "--day", "2", "--repeat", "1", "--no-peers"]) == 0
    assert f"removed {leftovers[0]}, the scratch folder of a run that did not finish" in (
        printed.getvalue()
    )
    assert list(tmp_path.glob(".bench-*")) == []


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
