"""The shared transformation against docs/spec.md sections 2 and 3: the cleaning
rules one case each, and the aggregate against an independent oracle."""

from __future__ import annotations

import polars as pl
import pytest
from conftest import (
    HAND_SKUS,
    HAND_ZIPS,
    assert_table_matches,
    fresh_db,
    oracle_for,
    parsed,
    replay,
    row,
    write_feed,
)

import main
from incremental_bench import (
    blocks,
    clock,
    config,
    pipelines,
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
        ("  \t ", "blank line: whitespace only"),
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


def test_hand_feed_matches_the_oracle_and_keeps_rejected_rows(any_db, tmp_path):
    filler = [
        f"{i},2025-10-0{i % 3 + 1},SKU-{i % 4},{i % 10 + 1},{i}.{i % 100:02d},2025-12-01,{z}"
        for i, z in zip(range(10, 260), ["94107", "10001", "x", "90210 "] * 70, strict=False)
    ]
    day1, day2 = HAND_ROWS[:4] + filler[:70], HAND_ROWS[4:] + filler[70:]
    feed = write_feed(tmp_path / "data", [day1, day2])
    table, counters, rejected = oracle_for(feed, "client_1", 2)
    assert counters["rows_rejected"] == 1 and counters["sku_unmatched"] > 0
    con = any_db
    pipelines.incremental_step(con, feed, "client_1", 1)
    record = pipelines.incremental_step(con, feed, "client_1", 2)
    assert record.counters["rows_rejected"] == 1
    assert_table_matches(store.sales_rows(con, "processed_sales", "client_1"), table)
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
    assert_table_matches(store.sales_rows(con, "processed_sales", "client_1"), table)
    assert con.execute("SELECT line_number FROM rejected_rows").fetchall() == [(rejected[0][0],)]
    scan = blocks.scan_archive(feed / "client_1/transactions_day_3.zip", 3)
    full = transform.process_blocks(
        scan, 2, "client_1", transform.load_lookups(feed), clock.Stopwatch()
    )
    assert full.counters == {c: counters.get(c, 0) for c in config.COUNTERS}
    assert full.rejected["line_number"].to_list() == [rejected[0][0]] == [452]
    assert store.read_checkpoint(con, "client_1").lines_processed == 602


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
