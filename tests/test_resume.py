"""Resuming inside the cumulative archive from saved deflate access points."""

from __future__ import annotations

import contextlib
import shutil
import zipfile
import zlib
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import blake3
import pytest
from conftest import assert_table_matches, fresh_db, generate, oracle_for, read_csv_bytes, state
from isal import isal_zlib

import generate_data
from incremental_bench import archive, config, deflate, harness, pipelines, store

START = generate_data.dt.date(2025, 10, 1)


def archive_file(feed: Path, day: int) -> Path:
    return archive.archive_path(feed, "client_1", day)


def write_deflated(path: Path, csv: bytes, raw_deflate: bytes, size: int | None = None) -> None:
    """A one-member zip around given raw deflate bytes (the generator's own zip writer)."""
    name = path.stem.encode() + b".csv"
    crc, usize = zlib.crc32(csv), len(csv) if size is None else size
    header = generate_data.local_header(name, crc, len(raw_deflate), usize, START)
    body = header + raw_deflate
    path.write_bytes(
        body + generate_data.central_directory(name, crc, len(raw_deflate), usize, START, len(body))
    )


def zlib_deflate(level: int) -> Callable[[bytes], bytes]:
    def deflate(csv: bytes) -> bytes:
        c = zlib.compressobj(level, zlib.DEFLATED, -15)
        return c.compress(csv) + c.flush()

    return deflate


def isal_deflate(csv: bytes) -> bytes:
    return isal_zlib.compress(csv, 2, -15)


def resumed_text(member: archive.Member, point: deflate.AccessPoint) -> tuple[bytes, list]:
    inflate = deflate.TrackedInflate(member, point)
    return b"".join(inflate), inflate.access_points()


@pytest.fixture(scope="module")
def drip_feed(tmp_path_factory):
    """1 client, 8 days: 8,000 rows, then a single row a day (the tiniest append)."""
    return generate(
        tmp_path_factory.mktemp("drip") / "data",
        *["--clients", "1", "--days", "8", "--base-rows", "8000", "--daily-rows", "1"],
        *["--seed", "5"],
    )


@pytest.fixture(scope="module")
def four_days(tmp_path_factory):
    """1 client, 4 days, 6,000 + 400 rows: the archive the fallback tests tamper with."""
    return generate(
        tmp_path_factory.mktemp("four") / "data",
        *["--clients", "1", "--days", "4", "--base-rows", "6000", "--daily-rows", "400"],
        *["--seed", "9"],
    )


@pytest.mark.parametrize("feed_name", ["drip_feed", "four_days"])
def test_the_resumed_tail_equals_a_full_inflate_byte_for_byte(feed_name, request, tmp_path):
    feed = request.getfixturevalue(feed_name)
    client = "client_1"
    days = sorted(int(p.stem.split("_")[-1]) for p in (feed / client).glob("*.zip"))
    con = fresh_db(tmp_path / "db.sqlite")
    pipelines.incremental_step(con, feed, client, 1)
    for day in days[1:]:
        member = archive.locate_member(archive_file(feed, day), day)
        full = read_csv_bytes(archive_file(feed, day))  # zipfile and zlib: another inflater
        cp = store.read_checkpoint(con, client)
        point, _, why = pipelines.choose_access_point(
            member, cp, store.read_access_points(con, client)
        )
        assert point is not None, why
        tail, found = resumed_text(member, point)
        assert tail == full[point.offset :]
        # The inflate floor's bare zlib loop gives the same text.
        last_byte = archive.member_byte(member, point.compressed_offset - 1) if point.bits else 0
        compressed = b"".join(archive.compressed_pieces(member, point.compressed_offset))
        assert b"".join(harness.inflate_tail(point, last_byte, compressed)) == tail
        # The points this read found resume correctly too, each one of them.
        assert 1 <= len(found) <= config.ACCESS_POINTS_KEPT and found[0].offset >= point.offset
        for p in found:
            assert resumed_text(member, p)[0] == full[p.offset :]
        record = pipelines.incremental_step(con, feed, client, day)
        assert record.read_mode.startswith("resumed"), record.read_mode
        assert record.note == ""
        # Inflated: the tail past the point, never the history before it (the point
        # lies within the last few blocks, about 100 KB of text each, of yesterday's).
        assert record.bytes_inflated == len(full) - point.offset
        assert cp.bytes_processed - point.offset < 300_000
        assert record.rows_processed == full.count(b"\n") - cp.lines_processed
    table, _, _ = oracle_for(feed, client, days[-1])
    assert_table_matches(state(con), table)


def test_floors_do_the_work_of_their_stages_and_leave_the_state_as_it_was(four_days, tmp_path):
    db = tmp_path / "state.db"
    con = fresh_db(db)
    for day in (1, 2, 3):
        pipelines.incremental_step(con, four_days, "client_1", day)
    before = state(con)
    con.close()
    cfg = config.BenchConfig(data_dir=four_days, db=db, day=4)
    floors = harness.measure_floors(cfg, db, tmp_path)
    assert list(floors.seconds) == list(config.STAGES) and min(floors.seconds.values()) > 0
    with contextlib.closing(store.connect(tmp_path / "floors.db")) as after:
        assert state(after).equals(before)  # every write undone
    full = harness.measure_full_floors(cfg, db, tmp_path)
    assert list(full.seconds) == ["read", "parse", "transform", "write"]
    assert min(full.seconds.values()) > 0 and not (tmp_path / "floors-full.db").exists()
    # Each floor did its stage's work: the bytes the run inflated, the records it
    # parsed, the rows it wrote (a floor of less work would flatter the gap).
    for floor, run in (
        (floors, pipelines.run_optimized_benchmark),
        (full, pipelines.run_baseline_benchmark),
    ):
        copy = tmp_path / f"{run.__name__}.db"
        store.copy_db(db, copy)
        record = run(copy, four_days, "client_1", 4)
        done = {k: getattr(record, k) for k in ("bytes_inflated", "rows_processed", "rows_written")}
        assert floor.work == done, run.__name__
    # A first day has no state to resume from: no floors.
    fresh_db(tmp_path / "empty.db").close()
    assert harness.measure_floors(replace(cfg, day=1), tmp_path / "empty.db", tmp_path) is None


@pytest.mark.parametrize("method", [zipfile.ZIP_DEFLATED, zipfile.ZIP_STORED])
def test_floors_of_a_feed_whose_records_end_without_a_line_end(method, four_days, tmp_path):
    # Each day's CSV ends right after its last field; the next day continues with the
    # line end and the new rows. The floors read the new text as the step does: the
    # line end that completes yesterday's last record is not a new (empty) record. A
    # stored member's read floor reads its bytes, as the step does.
    feed = tmp_path / "data"
    shutil.copytree(four_days, feed)
    for day in range(1, 5):
        path = archive_file(feed, day)
        text = read_csv_bytes(path).rstrip(b"\n")
        with zipfile.ZipFile(path, "w", method) as zf:
            zf.writestr(path.stem + ".csv", text)
    db = tmp_path / "state.db"
    con = fresh_db(db)
    for day in (1, 2, 3):
        pipelines.incremental_step(con, feed, "client_1", day)
    con.close()
    floors = harness.measure_floors(config.BenchConfig(data_dir=feed, db=db, day=4), db, tmp_path)
    store.copy_db(db, tmp_path / "run.db")
    record = pipelines.run_optimized_benchmark(tmp_path / "run.db", feed, "client_1", 4)
    assert record.read_mode.startswith("resumed") and record.counters["rows_rejected"] == 0
    assert floors.work == {
        "bytes_inflated": record.bytes_inflated,
        "rows_processed": record.rows_processed,
        "rows_written": record.rows_written,
    }


def stream_feed(data_dir: Path, source: Path, cuts: list[int], mem_level: int, sync: bool) -> Path:
    """Cumulative archives from one running compressor, as the generator writes them.

    Day k holds the source's day-4 CSV up to cuts[k-1]: the stream so far, plus a
    flushed copy of the compressor. memLevel 1 makes blocks of a few KiB of text (so
    access points fall within 32 KiB of each other); `sync` ends every day with a
    sync flush (a block boundary exactly at the day's end).
    """
    shutil.copytree(source / "static", data_dir / "static")
    (data_dir / "client_1").mkdir()
    csv = read_csv_bytes(archive_file(source, 4))
    compressor = zlib.compressobj(6, zlib.DEFLATED, -15, mem_level)
    stream, done = b"", 0
    for day, cut in enumerate(cuts, start=1):
        stream += compressor.compress(csv[done:cut])
        if sync:
            stream += compressor.flush(zlib.Z_SYNC_FLUSH)
        done = cut
        write_deflated(archive_file(data_dir, day), csv[:cut], stream + compressor.copy().flush())
    return data_dir


def replay_and_check_every_day(feed: Path, days: int, db: Path) -> None:
    """Apply every day: each resumes, each stored point inflates to zipfile's tail, and
    the last day ends equal to the oracle, rejected rows and lines counted included."""
    con = fresh_db(db)
    pipelines.incremental_step(con, feed, "client_1", 1)
    for day in range(2, days + 1):
        record = pipelines.incremental_step(con, feed, "client_1", day)
        assert record.read_mode.startswith("resumed"), (day, record.read_mode, record.note)
        member = archive.locate_member(archive_file(feed, day), day)
        full = read_csv_bytes(archive_file(feed, day))
        for point in store.read_access_points(con, "client_1"):
            assert resumed_text(member, point)[0] == full[point.offset :]
    table, _, rejected = oracle_for(feed, "client_1", days)
    assert_table_matches(state(con), table)
    stored = con.execute("SELECT line_number FROM rejected_rows ORDER BY 1").fetchall()
    assert [n for (n,) in stored] == [n for n, _ in rejected]
    cp = store.read_checkpoint(con, "client_1")
    assert cp.lines_processed == full.count(b"\n") + (not full.endswith(b"\n"))


@pytest.mark.parametrize("sync", [False, True], ids=["flushed-copy", "sync-flush"])
def test_small_blocks_resume_with_windows_that_span_the_point(sync, four_days, tmp_path):
    # Blocks of a few KiB: the 32 KiB window of a point found after a resume reaches
    # back past the point resumed from, into text this run never inflated.
    csv = read_csv_bytes(archive_file(four_days, 4))
    ends = [len(read_csv_bytes(archive_file(four_days, d))) for d in (1, 2, 3, 4)]
    # Many tiny days, each ending at a line's end.
    cuts = sorted({*ends, *(csv.index(b"\n", c) + 1 for c in range(ends[0], ends[-1], 9_000))})
    feed = stream_feed(tmp_path / "data", four_days, cuts, mem_level=1, sync=sync)
    assert len(csv) == cuts[-1]
    replay_and_check_every_day(feed, len(cuts), tmp_path / "db.sqlite")


def test_a_point_at_the_old_end_of_an_unterminated_file(four_days, tmp_path):
    # Day 1 stops before its last newline; a sync flush puts a boundary right there.
    # Day 2's text starts with the newline that completes the line processed whole.
    end = len(read_csv_bytes(archive_file(four_days, 1)))
    later = read_csv_bytes(archive_file(four_days, 4)).index(b"\n", end + 5_000) + 1
    feed = stream_feed(tmp_path / "data", four_days, [end - 1, later], 6, sync=True)
    con = fresh_db(tmp_path / "db.sqlite")
    pipelines.incremental_step(con, feed, "client_1", 1)
    assert any(p.offset == end - 1 for p in store.read_access_points(con, "client_1"))
    replay_and_check_every_day(feed, 2, tmp_path / "again.sqlite")


@pytest.mark.parametrize("limit", [1_000, 150_000])
def test_points_stay_near_the_end_of_the_stream(limit, four_days, monkeypatch):
    # The read keeps the text behind its candidate points (to hash their tails), so
    # only boundaries within POINT_TAIL_BYTES of the end qualify: a stream of huge
    # blocks keeps no point rather than its whole text in memory.
    monkeypatch.setattr(deflate, "POINT_TAIL_BYTES", limit)
    member = archive.locate_member(archive_file(four_days, 4), 4)
    inflate = deflate.TrackedInflate(member)
    text = b"".join(inflate)
    found = inflate.access_points()
    assert all(p.offset >= len(text) - limit - config.INFLATE_OUT_BYTES for p in found)
    assert bool(found) == (limit > 100_000)  # this feed's blocks hold about 100 KB of text
    for point in found:
        assert resumed_text(member, point)[0] == text[point.offset :]


def test_the_fingerprint_stays_a_chain_of_what_each_day_added(drip_feed, tmp_path):
    con = fresh_db(tmp_path / "db.sqlite")
    digest, ends = b"", []
    for day in range(1, 6):
        pipelines.incremental_step(con, drip_feed, "client_1", day)
        csv = read_csv_bytes(archive_file(drip_feed, day))
        digest = blake3.blake3(digest + csv[ends[-1] if ends else 0 :]).digest()
        ends.append(len(csv))
    cp = store.read_checkpoint(con, "client_1")
    assert (cp.ends, cp.prefix_blake3) == (ends, digest.hex())


def rewrite_days(feed: Path, days: range, deflate: Callable[[bytes], bytes]) -> None:
    for day in days:
        csv = read_csv_bytes(archive_file(feed, day))
        write_deflated(archive_file(feed, day), csv, deflate(csv))


def stored(feed: Path, days: range) -> None:
    for day in days:
        csv = read_csv_bytes(archive_file(feed, day))
        with zipfile.ZipFile(archive_file(feed, day), "w", zipfile.ZIP_STORED) as zf:
            zf.writestr(f"transactions_day_{day}.csv", csv)


@pytest.mark.parametrize(
    ("recompress", "why"),  # stored: the text as it is, so any offset is a point
    [
        pytest.param(lambda f, d: rewrite_days(f, d, zlib_deflate(1)), "differ", id="level-1"),
        pytest.param(lambda f, d: rewrite_days(f, d, zlib_deflate(9)), "differ", id="level-9"),
        pytest.param(lambda f, d: rewrite_days(f, d, isal_deflate), "differ", id="isal"),
        pytest.param(stored, "differ", id="stored"),
    ],
)
def test_another_compressor_reads_whole_once_then_resumes(recompress, why, four_days, tmp_path):
    feed = tmp_path / "data"
    shutil.copytree(four_days, feed)
    con = fresh_db(tmp_path / "db.sqlite")
    for day in (1, 2):
        pipelines.incremental_step(con, feed, "client_1", day)
    recompress(feed, range(3, 5))  # same text, other compressed bytes
    record = pipelines.incremental_step(con, feed, "client_1", 3)
    assert record.read_mode.startswith("read whole") and why in record.read_mode
    assert "read whole" in record.note and str(archive_file(feed, 3)) in record.note
    assert "restatement" not in record.note  # the text did not change: no rebuild
    assert record.rows_processed == 400 and record.rows_written > 0
    # The whole read of day 3 left access points into the new compressor's stream.
    record = pipelines.incremental_step(con, feed, "client_1", 4)
    assert record.read_mode.startswith("resumed"), record.read_mode
    table, _, _ = oracle_for(feed, "client_1", 4)
    assert_table_matches(state(con), table)


def restate(feed: Path, i: int) -> None:
    """Day 3 with one byte of already-processed text changed, compressed as the generator does."""
    csv = bytearray(read_csv_bytes(archive_file(feed, 3)))
    csv[i] = ord("7") if csv[i] != ord("7") else ord("8")
    write_deflated(archive_file(feed, 3), bytes(csv), zlib_deflate(6)(bytes(csv)))


@pytest.mark.parametrize(
    "at",
    [
        pytest.param(lambda csv, end: csv.index(b"\n") + 3, id="first-row"),
        # Just before yesterday's end: the compressed prefix still matches at the
        # access point, only the text between the point and the old end changed.
        pytest.param(lambda csv, end: csv.rindex(b",", 0, end) - 2, id="last-row-processed"),
    ],
)
def test_restated_history_behind_or_past_the_point_rebuilds(at, four_days, tmp_path):
    feed = tmp_path / "data"
    shutil.copytree(four_days, feed)
    con = fresh_db(tmp_path / "db.sqlite")
    for day in (1, 2):
        pipelines.incremental_step(con, feed, "client_1", day)
    end = store.read_checkpoint(con, "client_1").bytes_processed
    restate(feed, at(read_csv_bytes(archive_file(feed, 3)), end))
    record = pipelines.incremental_step(con, feed, "client_1", 3)
    assert "restatement detected in client_1 day 3" in record.note
    assert record.read_mode == "rebuilt: history restated"
    table, _, _ = oracle_for(feed, "client_1", 3)
    assert_table_matches(state(con), table)


def flip(path: Path, offset_from_end: int) -> None:
    member = archive.locate_member(path, 3)
    data = bytearray(path.read_bytes())
    at = member.data_start + member.compressed_size - offset_from_end
    data[at] ^= 0x55
    path.write_bytes(bytes(data))


def truncate(path: Path) -> None:
    csv = read_csv_bytes(path)
    raw = zlib_deflate(6)(csv)
    write_deflated(path, csv, raw[: len(raw) - 200])


@pytest.mark.parametrize(
    ("damage", "error"),
    [
        pytest.param(lambda p: flip(p, 300), "CRC-32 mismatch", id="corrupt-tail"),
        pytest.param(
            lambda p: flip(p, archive.locate_member(p, 3).compressed_size - 50),
            "corrupt archive, cannot inflate",
            id="corrupt-prefix",
        ),
        pytest.param(truncate, "the deflate stream is truncated", id="truncated"),
    ],
)
def test_a_damaged_archive_fails_in_one_line_and_changes_nothing(
    damage, error, four_days, tmp_path
):
    feed = tmp_path / "data"
    shutil.copytree(four_days, feed)
    con = fresh_db(tmp_path / "db.sqlite")
    for day in (1, 2):
        pipelines.incremental_step(con, feed, "client_1", day)
    good, before = archive_file(feed, 3).read_bytes(), state(con)
    damage(archive_file(feed, 3))
    with pytest.raises(config.InputError) as err:
        pipelines.incremental_step(con, feed, "client_1", 3)
    message = str(err.value)
    assert str(archive_file(feed, 3)) in message and "\n" not in message
    assert error in message, message
    assert store.read_checkpoint(con, "client_1").last_day == 2
    assert state(con).equals(before)  # nothing written
    # Mended, the same step resumes where day 2 left off.
    archive_file(feed, 3).write_bytes(good)
    assert pipelines.incremental_step(con, feed, "client_1", 3).read_mode.startswith("resumed")
    table, _, _ = oracle_for(feed, "client_1", 3)
    assert_table_matches(state(con), table)


def test_a_checkpoint_without_piece_ends_or_points_reads_whole_once_then_resumes(
    four_days, tmp_path
):
    db = tmp_path / "db.sqlite"
    con = fresh_db(db)
    for day in (1, 2):
        pipelines.incremental_step(con, four_days, "client_1", day)
    # A checkpoint of the simplest kind: no piece_ends or open_quote, no access points, and
    # the plain BLAKE3 of the processed CSV as its fingerprint.
    csv = read_csv_bytes(archive_file(four_days, 2))
    con.execute("ALTER TABLE ingest_checkpoint DROP COLUMN open_quote")
    con.execute("ALTER TABLE ingest_checkpoint DROP COLUMN piece_ends")
    con.execute("DROP TABLE ingest_access_points")
    con.execute("UPDATE ingest_checkpoint SET prefix_blake3 = ?", (blake3.blake3(csv).hexdigest(),))
    con.commit()
    said: list[str] = []
    store.ensure_schema(con, said.append)
    assert said == ["table ingest_checkpoint gained column(s) piece_ends, open_quote"]
    record = pipelines.incremental_step(con, four_days, "client_1", 3)
    assert record.read_mode.startswith("read whole: no access point stored")
    assert "restatement" not in record.note and record.rows_processed == 400
    record = pipelines.incremental_step(con, four_days, "client_1", 4)
    assert record.read_mode.startswith("resumed")
    table, _, _ = oracle_for(four_days, "client_1", 4)
    assert_table_matches(state(con), table)


def test_a_state_hashed_with_sha256_is_set_aside_and_the_client_rebuilt(four_days, tmp_path):
    # Digests of another hash can never match: the checkpoint and access point tables
    # of such a database have other column names, are renamed aside (never dropped), and
    # the next step rebuilds the client from its whole archive instead of trusting them.
    con = fresh_db(tmp_path / "db.sqlite")
    for day in (1, 2):
        pipelines.incremental_step(con, four_days, "client_1", day)
    for table, column in (
        ("ingest_checkpoint", "prefix"),
        ("ingest_access_points", "compressed"),
        ("ingest_access_points", "tail"),
    ):
        con.execute(f"ALTER TABLE {table} RENAME COLUMN {column}_blake3 TO {column}_sha256")
    said: list[str] = []
    store.ensure_schema(con, said.append)
    assert [line.split(":")[0] for line in said] == [
        "table ingest_checkpoint had another schema",
        "table ingest_access_points had another schema",
    ]
    assert store.read_checkpoint(con, "client_1") is None
    record = pipelines.incremental_step(con, four_days, "client_1", 3)
    assert record.read_mode == "read whole: first run"
    table, _, _ = oracle_for(four_days, "client_1", 3)
    assert_table_matches(state(con), table)


def test_zip64_archives_resume(tmp_path, monkeypatch, four_days):
    # Members of 4 GiB or more carry zip64 records, which move the compressed data:
    # lower the limit so that these small archives carry them too.
    monkeypatch.setattr(generate_data, "ZIP64_LIMIT", 1000)
    feed = tmp_path / "data"
    shutil.copytree(four_days, feed)
    rewrite_days(feed, range(1, 5), zlib_deflate(6))
    member = archive.locate_member(archive_file(feed, 1), 1)
    assert member.data_start == 30 + len("transactions_day_1.csv") + 20  # the zip64 extra
    con = fresh_db(tmp_path / "db.sqlite")
    for day in range(1, 5):
        record = pipelines.incremental_step(con, feed, "client_1", day)
        assert day == 1 or record.read_mode.startswith("resumed")
    table, _, _ = oracle_for(feed, "client_1", 4)
    assert_table_matches(state(con), table)


def test_the_prefix_hash_ignores_only_the_next_blocks_bits(four_days):
    member = archive.locate_member(archive_file(four_days, 2), 2)
    raw = Path(member.path).read_bytes()[
        member.data_start : member.data_start + member.compressed_size
    ]
    prefix = deflate.CompressedPrefix(member)
    for offset, bits in ((1000, 0), (1000, 3), (2000, 7)):
        kept = (
            raw[: offset - 1] + bytes([raw[offset - 1] & (0xFF >> bits)]) if bits else raw[:offset]
        )
        assert prefix.digest_at(offset, bits) == blake3.blake3(kept).hexdigest()
    assert prefix.digest_at(member.compressed_size + 1, 0) is None
