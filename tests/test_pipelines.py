"""The incremental pipeline: line ends across days, restatements, a concurrent
writer, replays, reruns and the parity check."""

from __future__ import annotations

import zipfile

import blake3
import pytest
from conftest import (
    assert_table_matches,
    fresh_db,
    oracle_for,
    read_csv_bytes,
    replay,
    row,
    write_feed,
)

from incremental_bench import (
    config,
    parity,
    pipelines,
    store,
    transform,
)


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
    assert_table_matches(store.sales_rows(con, "processed_sales", "client_1"), table)
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
    assert_table_matches(store.sales_rows(con, "processed_sales", "client_1"), table)


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
    assert_table_matches(store.sales_rows(con, "processed_sales", "client_1"), table)


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
    assert_table_matches(store.sales_rows(replayed, "processed_sales", "client_1"), table)
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
    before = store.sales_rows(replayed, "processed_sales", "client_1")
    record = pipelines.incremental_step(replayed, tiny_feed, "client_1", 3)
    assert record.note == "no-op" and record.rows_processed == 0
    assert store.sales_rows(replayed, "processed_sales", "client_1").equals(before)
    with pytest.raises(config.StaleDayError, match="already holds day 3"):
        pipelines.incremental_step(replayed, tiny_feed, "client_1", 2)


def test_parity_check_catches_a_changed_value(replayed, tiny_feed):
    table = store.sales_rows(replayed, "processed_sales", "client_1")
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
