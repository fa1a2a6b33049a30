"""Feeds as clients' tools write them: any RFC 4180 CSV (docs/spec.md section 1)."""

from __future__ import annotations

import contextlib
import io
import shutil
import zipfile
from pathlib import Path

import polars as pl
import pytest
from conftest import (
    HEADER,
    assert_table_matches,
    fresh_db,
    generate,
    oracle_for,
    read_csv_bytes,
    replay,
    state,
    write_feed,
)

import main
from incremental_bench import (
    archive,
    blocks,
    clock,
    config,
    parse,
    peers,
    pipelines,
    store,
    transform,
)


@pytest.fixture(scope="module", params=["plain", "quoted", "excel"])
def dialect_feed(request, tmp_path_factory):
    """1 client, 4 days, 3,000 + 400 rows, 20% late rows, in each dialect."""
    return generate(
        tmp_path_factory.mktemp(request.param) / "data",
        *["--clients", "1", "--days", "4", "--base-rows", "3000", "--daily-rows", "400"],
        *["--late-fraction", "0.2", "--seed", "13", "--dialect", request.param],
    )


def write_days(data_dir: Path, texts: list[bytes]) -> Path:
    """A cumulative feed from the whole CSV bytes of each day (lookups of the hand feed)."""
    write_feed(data_dir, [[]])  # the static lookups, and a day 1 rewritten below
    for day, text in enumerate(texts, start=1):
        zipped = archive.archive_path(data_dir, "client_1", day)
        with zipfile.ZipFile(zipped, "w", zipfile.ZIP_DEFLATED) as zf:
            zf.writestr(zipped.stem + ".csv", text)
    return data_dir


def full_recompute(feed: Path, day: int) -> main.PipelineArtifacts:
    scan = blocks.scan_archive(archive.archive_path(feed, "client_1", day), day)
    lookups = transform.load_lookups(feed)
    return transform.process_blocks(
        scan, scan.header.lines + 1, "client_1", lookups, clock.Stopwatch()
    )


def rejected(con: store.Connection) -> list[tuple]:
    rows = con.execute("SELECT line_number, reason, raw_line FROM rejected_rows ORDER BY 1")
    return rows.fetchall()


def test_every_dialect_keeps_parity_with_the_oracle_on_every_day(dialect_feed, tmp_path):
    con = fresh_db(tmp_path / "db.sqlite")
    for day in range(1, 5):
        record = pipelines.incremental_step(con, dialect_feed, "client_1", day)
        if day > 1:  # resumed inside the archive, whatever the dialect
            assert record.read_mode.startswith("resumed"), record.read_mode
        table, counters, _ = oracle_for(dialect_feed, "client_1", day)
        assert_table_matches(state(con), table)
    full = full_recompute(dialect_feed, 4)
    assert full.counters == {c: counters.get(c, 0) for c in config.COUNTERS}
    assert full.counters["rows_rejected"] == 0 and full.rows_read == 4200
    # A rerun is a no-op, an older day is refused, in every dialect.
    assert pipelines.incremental_step(con, dialect_feed, "client_1", 4).note == "no-op"
    with pytest.raises(config.StaleDayError):
        pipelines.incremental_step(con, dialect_feed, "client_1", 3)


def test_the_dialects_are_what_they_say(dialect_feed):
    text = read_csv_bytes(archive.archive_path(dialect_feed, "client_1", 2))
    name = dialect_feed.parent.name.rstrip("0123456789")
    first = text.split(b"\n", 2)[1]
    assert text.startswith(config.BOM) == (name == "excel")
    assert text.count(b"\r\n") == (0 if name == "plain" else text.count(b"\n"))
    assert first.startswith(b'"1",') == (name == "quoted")
    if name == "excel":  # some values need their quotes: a comma or a quote inside
        assert b'"' in text and b", Apt " in text and b'""B""' in text
    # Cumulative and append-only, in every dialect.
    assert text.startswith(read_csv_bytes(archive.archive_path(dialect_feed, "client_1", 1)))


def test_a_restated_day_in_a_quoted_feed_is_rebuilt(dialect_feed, tmp_path):
    feed = tmp_path / "data"
    shutil.copytree(dialect_feed, feed)
    con = fresh_db(tmp_path / "db.sqlite")
    pipelines.incremental_step(con, feed, "client_1", 1)
    day2 = archive.archive_path(feed, "client_1", 2)
    text = bytearray(read_csv_bytes(day2))
    at = text.index(b"\n", 5000) + 1  # a row of day 1 gets another transaction_id
    at += text[at] == ord('"')
    text[at] = ord("7") if text[at] != ord("7") else ord("8")
    with zipfile.ZipFile(day2, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr(day2.stem + ".csv", bytes(text))
    record = pipelines.incremental_step(con, feed, "client_1", 2)
    assert "restatement detected in client_1 day 2" in record.note
    table, _, _ = oracle_for(feed, "client_1", 2)
    assert_table_matches(state(con), table)


GOOD = "{i},2025-10-0{d},SKU-{s},{q},{i}.25,2025-12-01,9410{z}"


def good_rows(start: int, n: int) -> list[str]:
    return [
        GOOD.format(i=i, d=i % 3 + 1, s=i % 3 + 1, q=i % 9 + 1, z=i % 10)
        for i in range(start, start + n)
    ]


def test_broken_quoting_is_rejected_record_by_record(tmp_path):
    head = HEADER + "\n"
    day1 = head + "\n".join(good_rows(1, 150)) + "\n"
    bad = [
        '151,2025-10-01,SKU-1,2,3.50,2025-12-01,94"107',  # an odd quote opens quoting...
        '152,2025-10-01,SKU-1,2,3.50,2025-12-01,94107"',  # ...up to the next: one record
        "153,2025-10-01,SKU-1,2,3.50,2025-12-01,94107,extra",  # eight fields
        '154,2025-10-01,SKU-1,2,3.50,2025-12-01,94"1"07',  # even quotes mid-field: literal
    ]
    day2 = day1 + "\n".join(bad + good_rows(155, 300)) + "\n"
    feed = write_days(tmp_path / "data", [day1.encode(), day2.encode()])
    con = replay(feed, tmp_path / "db.sqlite", [1, 2])
    table, counters, oracle_rejected = oracle_for(feed, "client_1", 2)
    assert_table_matches(state(con), table)
    assert counters["zip_international"] >= 1  # 94"1"07 holds no five digits in a row
    assert [(n, raw) for n, _, raw in rejected(con)] == oracle_rejected
    assert [(n, r, raw) for n, r, raw in rejected(con)] == [
        (152, "broken quoting: one record reads as several", "\n".join(bad[:2])),
        (154, "wrong column count: 8 instead of 7", bad[2]),
    ]
    full = full_recompute(feed, 2)
    assert full.rejected["line_number"].to_list() == [152, 154]


@pytest.mark.parametrize("form", ["quoted", "reordered"])
def test_a_value_rejected_record_keeps_its_exact_raw_text(form, tmp_path):
    # The raw text of a quoted or reordered record cannot be rebuilt from its fields:
    # a record rejected for its values has it taken from the block, from its first line
    # to the next record's (quoted fields may hold line ends, before it and inside it).
    def written(line: str) -> str:
        fields = line.split(",")
        if form == "reordered":
            return ",".join(fields[::-1])
        return ",".join(f'"{f}"' for f in fields)

    bad = [
        "151,2025-13-01,SKU-1,2,3.50,2025-12-01,94107",  # no such month
        "152,2025-10-01,SKU-1,two,3.50,2025-12-01,94107",
    ]
    good = good_rows(1, 150) + good_rows(153, 2000)
    if form == "quoted":  # line ends inside quoted fields, before a bad record and in one
        good[100] = good[100].replace(",9410", ",94\n10")
        bad.append("2153,2025-10-01,SKU-1,x,3.50,2025-12-01,94\n107")
    head = ",".join(HEADER.split(",")[::-1]) if form == "reordered" else written(HEADER)
    lines = [head, *map(written, good[:150] + bad[:2] + good[150:] + bad[2:])]
    feed = write_days(tmp_path / "data", ["\r\n".join(lines).encode() + b"\r\n"])
    con = replay(feed, tmp_path / "db.sqlite", [1])
    table, _, oracle_rejected = oracle_for(feed, "client_1", 1)
    assert_table_matches(state(con), table)
    assert [(n, raw) for n, _, raw in rejected(con)] == oracle_rejected
    assert [raw for _, _, raw in rejected(con)] == [written(b) for b in bad]
    full = full_recompute(feed, 1)
    assert full.rejected["raw_line"].to_list() == [written(b) for b in bad]


def test_csv_ends_a_day_of_a_line_end_alone_and_trailing_blank_lines(tmp_path):
    # Day 1 ends right after its last field; day 2 adds only the line end (nothing
    # new); day 3 adds rows and ends with a blank line; day 4 adds rows after it.
    head = HEADER + "\n"
    day1 = head + "\n".join(good_rows(1, 300))
    day2 = day1 + "\n"
    day3 = day2 + "\n".join(good_rows(301, 100)) + "\n\n"
    day4 = day3 + "\n".join(good_rows(401, 100)) + "\r\n"
    feed = write_days(tmp_path / "data", [d.encode() for d in (day1, day2, day3, day4)])
    con = fresh_db(tmp_path / "db.sqlite")
    records = []
    for day in (1, 2, 3, 4):
        records.append(pipelines.incremental_step(con, feed, "client_1", day))
        table, _, oracle_rejected = oracle_for(feed, "client_1", day)
        assert_table_matches(state(con), table)
        assert [(n, raw) for n, _, raw in rejected(con)] == oracle_rejected
    assert [r.rows_processed for r in records] == [300, 0, 101, 100]  # the blank line: a record
    assert [reason for _, reason, _ in rejected(con)] == ["empty line"]


def test_the_csv_member_is_found_beside_folders_metadata_and_a_readme(tmp_path):
    # As file managers and exporters zip a day: a folder entry, macOS's metadata, a
    # readme, and the CSV under another name than the day's.
    rows = good_rows(1, 500)
    texts = [(HEADER + "\n" + "\n".join(rows[:n]) + "\n").encode() for n in (300, 500)]
    plain = write_days(tmp_path / "plain", texts)  # the oracle's: one member, named by day
    feed = write_days(tmp_path / "data", texts)
    for day in (1, 2):
        path = archive.archive_path(feed, "client_1", day)
        with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf:
            zf.writestr("export/", b"")
            zf.writestr("__MACOSX/export/._sales.csv", b"\x00\x05\x16\x07")
            zf.writestr("export/README.txt", b"daily export")
            zf.writestr("export/sales.csv", texts[day - 1])
    con = replay(feed, tmp_path / "db.sqlite", [1, 2])
    table, _, _ = oracle_for(plain, "client_1", 2)
    assert_table_matches(state(con), table)


def test_a_quote_left_open_in_a_plain_feed_stops_the_run_in_one_line(tmp_path):
    # With no later quote to close it, the record runs to the end of the file: far over
    # the 1% of rejected rows, so the step stops and changes nothing.
    day1 = HEADER + "\n" + "\n".join(good_rows(1, 150)) + "\n"
    day2 = day1 + '151,2025-10-01,SKU-1,2,3.50,2025-12-01,94"107\n' + "\n".join(good_rows(152, 50))
    feed = write_days(tmp_path / "data", [day1.encode(), (day2 + "\n").encode()])
    con = fresh_db(tmp_path / "db.sqlite")
    pipelines.incremental_step(con, feed, "client_1", 1)
    with pytest.raises(
        config.InputError, match="line 152, broken quoting: a quoted field is never"
    ):
        pipelines.incremental_step(con, feed, "client_1", 2)
    assert store.read_checkpoint(con, "client_1").last_day == 1


def test_an_unterminated_quote_at_the_end_of_a_day_is_rejected_then_rebuilt(tmp_path):
    head = HEADER + "\n"
    rows = good_rows(1, 300)
    open_end = '301,2025-10-01,SKU-1,2,3.50,2025-12-01,"94107'  # the day ends inside quotes
    day1 = head + "\n".join(rows[:200]) + "\n" + open_end
    day2 = day1 + '"\n' + "\n".join(rows[200:]) + "\n"  # the next day closes it
    feed = write_days(tmp_path / "data", [day1.encode(), day2.encode()])
    con = fresh_db(tmp_path / "db.sqlite")
    pipelines.incremental_step(con, feed, "client_1", 1)
    assert rejected(con) == [(202, "broken quoting: a quoted field is never closed", open_end)]
    assert store.read_checkpoint(con, "client_1").open_quote
    record = pipelines.incremental_step(con, feed, "client_1", 2)
    assert "a quoted field left open) was extended" in record.note  # rebuilt from the archive
    table, counters, _ = oracle_for(feed, "client_1", 2)
    assert counters["rows_rejected"] == 0 and rejected(con) == []
    assert_table_matches(state(con), table)
    assert not store.read_checkpoint(con, "client_1").open_quote


def multiline_row(i: int) -> str:
    """A record whose zip_code_raw is quoted and holds a CRLF line end."""
    return f"{i},2025-10-0{i % 3 + 1},SKU-{i % 3 + 1},{i % 9 + 1},{i}.25,2025-12-01," + (
        f'"9410{i % 10}\r\nApt {i}"'
    )


def test_quoted_line_ends_across_block_boundaries_keep_lines_and_parity(tmp_path, monkeypatch):
    # Blocks of ~2 KB and pieces of ~300 bytes: many records hold a line end inside a
    # quoted field, so cuts fall near them; line numbers count physical lines.
    monkeypatch.setattr(blocks, "BLOCK_BYTES", 2_000)
    monkeypatch.setattr(parse, "SUB_BLOCK_BYTES", 300)
    rows = [
        multiline_row(i)
        if i % 4 == 0
        else GOOD.format(i=i, d=i % 3 + 1, s=i % 3 + 1, q=i % 9 + 1, z=i % 10)
        for i in range(1, 400)
    ]
    rows[250] = "bad,row"  # one rejected record among them: the slow path runs too
    head = HEADER + "\r\n"
    texts = [head + "\r\n".join(rows[:n]) + "\r\n" for n in (120, 260, 399)]
    feed = write_days(tmp_path / "data", [t.encode() for t in texts])
    con = replay(feed, tmp_path / "db.sqlite", [1, 2, 3])
    table, _, oracle_rejected = oracle_for(feed, "client_1", 3)
    assert_table_matches(state(con), table)
    assert [(n, raw) for n, _, raw in rejected(con)] == oracle_rejected
    assert oracle_rejected[0][0] == 251 + 1 + 250 // 4  # header + rows + line ends inside
    full = full_recompute(feed, 3)
    assert full.rejected["line_number"].to_list() == [oracle_rejected[0][0]]
    assert store.read_checkpoint(con, "client_1").lines_processed == texts[2].count("\n")


def test_bom_reordered_and_extra_columns_read_by_name(tmp_path, capsys):
    names = HEADER.split(",")
    order = [names[6], "store", f" {names[0]} ", *names[1:6], "note"]  # names are trimmed

    def reorder(row: str, i: int) -> str:
        f = row.split(",")
        return ",".join([f'"{f[6]}"', f"S{i % 3}", *f[:6], '"a, b"'])

    rows = good_rows(1, 400)
    texts = [
        (config.BOM + (",".join(order) + "\r\n").encode())
        + "".join(reorder(r, i) + "\r\n" for i, r in enumerate(rows[:n])).encode()
        for n in (250, 400)
    ]
    feed = write_days(tmp_path / "data", texts)
    con = replay(feed, tmp_path / "db.sqlite", [1, 2])
    table, counters, _ = oracle_for(feed, "client_1", 2)
    assert counters["rows_rejected"] == 0 and sum(r["order_count"] for r in table.values()) == 400
    assert_table_matches(state(con), table)
    # The extra columns are named once by the run, and the report says what it read.
    out = tmp_path / "out"
    out.mkdir()
    args = ["--data-dir", str(feed), "--db", str(out / "db"), "--day", "2", "--repeat", "1"]
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        assert main.main([*args, "--no-sweep", "--no-peers", "--report", str(out / "r.md")]) == 0
    assert printed.getvalue().count("extra column(s) ignored: store, note") == 1
    report = (out / "r.md").read_text()
    said = "byte-order mark, CRLF line ends, quoted fields, columns reordered, extra columns"
    assert f"| CSV dialect read | {said} ignored: store, note |" in report
    # The in-memory peer reads such a file by name too.
    peer = out / "peer.db"
    fresh_db(peer).close()
    peers.run_polars_in_memory(peer, feed, "client_1", 2)
    with contextlib.closing(store.connect(peer)) as con:
        rows = con.execute("SELECT * FROM processed_sales_full_refresh").fetchall()
    names = [c for c, _ in config.SALES_TABLE.items()]
    assert_table_matches(pl.DataFrame(rows, schema=names, orient="row"), table)


@pytest.mark.parametrize(
    ("zip_raw", "rejected_alone"),
    [
        ('"941"07""', True),  # text after a closing quote: Polars would drop the quotes
        ('"Bldg "B" 94107"', True),  # quotes inside a quoted field, not doubled
        ("94\r107", True),  # a CR alone: a line end for the csv module, not for Polars
        ("94107\r\r", False),  # CR CR LF: the csv module ends the row at the first CR;
        # Polars would keep a CR in the field
    ],
)
def test_records_polars_would_misread_are_read_the_exact_way_however_the_text_is_cut(
    zip_raw, rejected_alone, tmp_path
):
    # Day 1 holds the odd record among good ones (read by the fast path if it let it
    # through); day 2 adds a bad record, so the full recompute's single block takes the
    # exact path. Both must agree with each other and with the oracle.
    row = f"1000,2025-10-01,SKU-1,2,3.50,2025-12-01,{zip_raw}"
    day1 = HEADER + "\n" + "\n".join(good_rows(1, 150)) + "\n" + row + "\n"
    day2 = day1 + "\n".join(good_rows(200, 150)) + "\nbad,row\n"
    feed = write_days(tmp_path / "data", [day1.encode(), day2.encode()])
    con = replay(feed, tmp_path / "db.sqlite", [1, 2])
    table, _, oracle_rejected = oracle_for(feed, "client_1", 2)
    assert_table_matches(state(con), table)
    assert [(n, raw) for n, _, raw in rejected(con)] == oracle_rejected
    assert (oracle_rejected[0][0] == 152) == rejected_alone  # rejected alone, or read
    full = full_recompute(feed, 2)
    assert full.rejected["line_number"].to_list() == [n for n, _ in oracle_rejected]


def test_a_quote_left_open_does_not_make_reading_quadratic(tmp_path, monkeypatch):
    # No record ends after an open quote: the text must not be joined and searched
    # again for every chunk read, only each time it has doubled.
    monkeypatch.setattr(blocks, "BLOCK_BYTES", 1_000)
    searches = []
    real = blocks.last_record_end
    monkeypatch.setattr(blocks, "last_record_end", lambda *a: searches.append(1) or real(*a))
    text = HEADER + "\n" + '1,2025-10-01,SKU-1,2,3.50,2025-12-01,"94107\n' + "x" * 400_000
    chunks = [text.encode()[i : i + 1_000] for i in range(0, len(text), 1_000)]
    header = blocks.read_header(Path("x.csv"), chunks[0])
    scan = blocks.LineBlocks(Path("x.csv"), chunks, blocks.ReadPlan(), header)
    assert sum(len(b) for b in scan) == len(text) - header.length
    assert scan.open_quote and len(searches) <= 12  # log2(400) + 1, not 400
