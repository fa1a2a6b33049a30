"""The central promise (docs/spec.md section 4) under late, repeated, restated and killed runs."""

from __future__ import annotations

import fcntl
import random
import re
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import polars as pl
import pytest
from conftest import (
    HEADER,
    ROOT,
    assert_table_matches,
    fresh_db,
    generate,
    oracle_for,
    parsed,
    state,
    write_feed,
)
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from oracle import expected

import main
from incremental_bench import blocks, config, pipelines, store, transform


@pytest.fixture(scope="module")
def late_feed(tmp_path_factory):
    """1 client, 7 days, 20% of each later day's rows dated 1 to 3 days early."""
    return generate(
        tmp_path_factory.mktemp("late") / "data",
        *["--clients", "1", "--days", "7", "--base-rows", "2000", "--daily-rows", "400"],
        *["--late-fraction", "0.2", "--seed", "3"],
    )


def test_late_rows_keep_parity_on_every_day(late_feed, tmp_path):
    con = fresh_db(tmp_path / "db.sqlite")
    grew = []
    for day in range(1, 8):
        yesterday = f"2025-10-{day - 1:02d}" if day > 1 else "none"
        before = state(con).filter(pl.col("transaction_date") == yesterday)
        pipelines.incremental_step(con, late_feed, "client_1", day)
        table, _, _ = oracle_for(late_feed, "client_1", day)
        assert_table_matches(state(con), table)
        after = state(con).filter(pl.col("transaction_date") == yesterday)
        grew.append(after["order_count"].sum() > before["order_count"].sum())
    # Late rows landed on dates already processed: merged there, not lost.
    assert sum(grew[2:]) == 5


def test_gap_day_7_right_after_day_5_and_reruns_change_nothing(late_feed, tmp_path):
    con = fresh_db(tmp_path / "db.sqlite")
    for day in (1, 2, 3, 3, 4, 5, 5, 7, 7):
        pipelines.incremental_step(con, late_feed, "client_1", day)
    table, _, _ = oracle_for(late_feed, "client_1", 7)
    assert_table_matches(state(con), table)
    assert store.read_checkpoint(con, "client_1").last_day == 7


def rows(n: int, start: int = 1) -> list[str]:
    zips = ["94107", "10001", "CA90210", "", "SW1A 1AA", "99999"]
    return [
        f"{i},2025-10-0{i % 5 + 1},SKU-{i % 4},{i % 7 + 1},{i % 50 + 5}.{i % 100:02d},"
        f"2025-1{i % 3}-15,{zips[i % len(zips)]}"
        for i in range(start, start + n)
    ]


@pytest.mark.parametrize(
    "restate",
    [
        pytest.param(lambda r: [r[0].replace(",6.01,", ",999.99,"), *r[1:]], id="changed"),
        pytest.param(lambda r: r[1:], id="removed"),
        pytest.param(lambda r: [r[1], r[0], *r[2:]], id="reordered"),
    ],
)
def test_restated_history_is_detected_and_the_client_rebuilt(restate, tmp_path):
    day1, day2 = rows(150), rows(150, start=151)
    assert restate(day1) != day1 and ",6.01," in day1[0]
    feed = write_feed(tmp_path / "data", [day1, day2])
    con = fresh_db(tmp_path / "db.sqlite")
    pipelines.incremental_step(con, feed, "client_1", 1)
    # Day 2's archive no longer starts with what day 1 held.
    text = HEADER + "\n" + "".join(r + "\n" for r in restate(day1) + day2)
    with zipfile.ZipFile(feed / "client_1/transactions_day_2.zip", "w") as zf:
        zf.writestr("transactions_day_2.csv", text)
    record = pipelines.incremental_step(con, feed, "client_1", 2)
    assert "restatement detected in client_1 day 2" in record.note
    table, _, _ = oracle_for(feed, "client_1", 2)
    assert_table_matches(state(con), table)


# --- crashes ------------------------------------------------------------------------------------

CHILD = """
import os, signal, sys
sys.path.insert(0, {root!r})
import main
from pathlib import Path
import polars as pl
from incremental_bench import blocks, config, pipelines, store, transform

point, db, feed = sys.argv[1], sys.argv[2], Path(sys.argv[3])
calls = {{"write_frame": 0}}
die = lambda: os.kill(os.getpid(), signal.SIGKILL)
real_write, real_commit = store.write_frame, store.Connection.commit
real_execute = store.Connection.execute

def write_frame(con, table, frame):
    calls["write_frame"] += 1
    if point == "before-insert" and calls["write_frame"] == 1:
        die()
    real_write(con, table, frame)
    if point == "between-inserts" and calls["write_frame"] == 1:
        die()

def commit(self):
    if point == "at-commit" and not self.hold_commit:
        die()
    real_commit(self)

def execute(self, sql, *args):
    if point == "after-delete" and sql.startswith("DELETE FROM processed_sales WHERE"):
        real_execute(self, sql, *args)
        die()
    if point == "before-checkpoint" and sql.startswith("INSERT INTO ingest_checkpoint"):
        die()
    return real_execute(self, sql, *args)

con = store.connect(Path(db))
pipelines.incremental_step(con, feed, "client_1", 1)
store.write_frame, store.Connection.commit, store.Connection.execute = write_frame, commit, execute
pipelines.incremental_step(con, feed, "client_1", 2)
if point == "after-commit":
    die()
"""


KILL_POINTS = [
    "after-delete",
    "before-insert",
    "between-inserts",
    "before-checkpoint",
    "at-commit",
    "after-commit",
]


@pytest.fixture(scope="module")
def late_excel_feed(tmp_path_factory):
    """late_feed's rows written as Excel writes CSV: BOM, CRLF, quotes where needed."""
    return generate(
        tmp_path_factory.mktemp("late_excel") / "data",
        *["--clients", "1", "--days", "3", "--base-rows", "2000", "--daily-rows", "400"],
        *["--late-fraction", "0.2", "--seed", "3", "--dialect", "excel"],
    )


@pytest.mark.parametrize("feed_name", ["late_feed", "late_excel_feed"])
def test_sigkill_anywhere_in_a_step_then_rerun_keeps_parity(feed_name, request, tmp_path):
    late_feed = request.getfixturevalue(feed_name)
    # One child per point, all at once (their start-up dominates): each dies by SIGKILL
    # inside day 2's step, before, during or after its write.
    children = {}
    for point in KILL_POINTS:
        db = tmp_path / f"{point}.sqlite"
        fresh_db(db).close()
        script = [sys.executable, "-c", CHILD.format(root=str(ROOT)), point, str(db)]
        children[point] = subprocess.Popen(
            [*script, str(late_feed)], stdout=subprocess.PIPE, stderr=subprocess.PIPE
        )
    table, _, _ = oracle_for(late_feed, "client_1", 3)
    for point, child in children.items():
        _, err = child.communicate(timeout=60)
        assert child.returncode == -9, (point, err)  # it really died by SIGKILL
        con = store.connect(tmp_path / f"{point}.sqlite")
        cp = store.read_checkpoint(con, "client_1")
        assert cp.last_day == (2 if point == "after-commit" else 1), point  # all or nothing
        for day in range(cp.last_day, 4):  # the rerun: from the checkpoint day (a no-op) on
            pipelines.incremental_step(con, late_feed, "client_1", day)
        assert_table_matches(state(con), table)  # nothing lost, nothing counted twice
        con.close()


# --- concurrency --------------------------------------------------------------------------------


def test_second_run_on_a_busy_database_stops_with_a_clear_message(tmp_path, capsys):
    feed = write_feed(tmp_path / "data", [rows(150), rows(150, start=151)])
    db = tmp_path / "db.sqlite"
    with open(tmp_path / "db.sqlite.lock", "w") as held:
        fcntl.flock(held, fcntl.LOCK_EX)
        held.write("pid 12345, started earlier")
        held.flush()
        code = main.main(["--data-dir", str(feed), "--db", str(db), "--day", "2", "--repeat", "1"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 1 and len(err) == 1
    assert "another main.py run is using this database (pid 12345" in err[0]
    assert not db.exists()


# --- headers --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("header", "says"),
    [
        (HEADER.replace(",quantity_sold", ""), "lacks column(s) ['quantity_sold']"),
        (HEADER.replace("sku_id,", "sku,"), "lacks column(s) ['sku_id']"),
        (HEADER + ",sku_id", "repeats column(s) ['sku_id']"),
        ("", "no header line"),
    ],
)
def test_a_header_without_a_column_is_one_error_naming_it(header, says):
    with pytest.raises(config.InputError, match=r"x\.zip: .*" + re.escape(says)):
        blocks.read_header(Path("x.zip"), (header + "\n1,2\n").encode() if header else b"")


def test_any_order_extra_columns_a_bom_and_quotes_are_a_header():
    names = ["zip_code_raw", "discount", *HEADER.split(",")[:-1], "note"]
    text = config.BOM + ",".join(f'"{n}"' for n in names).encode() + b"\r\n1,2\r\n"
    header = blocks.read_header(Path("x.zip"), text)
    assert header.columns == tuple(names) and header.extras == ["discount", "note"]
    assert header.length == text.index(b"\n") + 1 and header.lines == 1
    assert header.dialect() == {
        "bom": True,
        "line_end": "CRLF",
        "header_quoted": True,
        "columns_in_order": False,
        "extra_columns": ["discount", "note"],
    }


# --- fuzz and properties ------------------------------------------------------------------------

ZIP_TEXT = st.text(
    alphabet=st.sampled_from([*"0123456789 \t-:ABCZipzip.#/", "\u00a0", "\u0663"]),
    max_size=14,
)
MATURITY_TEXT = st.one_of(
    st.text(alphabet=st.sampled_from(list("0123456789-/ T:aZ")), max_size=12),
    st.dates().map(str),
)


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(zip_raw=ZIP_TEXT, maturity=MATURITY_TEXT)
def test_fuzzed_zip_and_maturity_follow_the_cleaning_rules(zip_raw, maturity):
    line = f"1,2025-10-01,SKU-1,2,10.50,{maturity},{zip_raw}"
    zip_state = {"94107": "CA", "10001": "NY", "00000": ""}
    table, counters, rejected = expected(
        HEADER + "\n" + line + "\n", "c", zip_state, {"SKU-1": "G1"}
    )
    lookups = transform.Lookups(
        zips=pl.DataFrame({"zip_code": list(zip_state), "state": list(zip_state.values())}),
        skus=pl.DataFrame({"sku_id": ["SKU-1"], "sku_group": ["G1"]}),
    )
    art = main.process_transactions(parsed(line.encode()), "c", lookups)
    assert not rejected and art.counters == {c: counters.get(c, 0) for c in config.COUNTERS}
    got = transform.finalize(art.aggregated).row(0, named=True)
    key = (
        got["client_id"],
        got["transaction_date"],
        got["maturity_date"],
        got["sku_group"],
        got["local"],
    )
    assert set(table) == {key}


@st.composite
def feed_story(draw: st.DrawFn) -> tuple[list[list[str]], int | None, list[int]]:
    """Rows split into days, maybe a restatement from some day on, and a run order."""
    total = draw(st.integers(min_value=2, max_value=120))
    seed = draw(st.integers(min_value=0, max_value=10**6))
    rng = random.Random(seed)
    zips = ["94107", "10001", "94107-0001", "", "INTL", "99999", " 10001"]
    all_rows = [
        f"{i},2025-10-{rng.randint(1, 9):02d},SKU-{rng.randint(1, 5)},{rng.randint(1, 10)},"
        f"{rng.randint(500, 50000) / 100:.2f},"
        f"{rng.choice(['', '2025-11-30', '2025-09-01', '2026-13-01', '2025-10-05'])},"
        f"{rng.choice(zips)}"
        for i in range(1, total + 1)
    ]
    days = draw(st.integers(min_value=1, max_value=5))
    cuts = sorted(draw(st.lists(st.integers(1, total - 1), min_size=days - 1, max_size=days - 1)))
    split = [all_rows[a:b] for a, b in zip([0, *cuts], [*cuts, total], strict=True)]
    restate_from = draw(st.one_of(st.none(), st.integers(min_value=2, max_value=max(days, 2))))
    order = sorted(draw(st.lists(st.integers(1, days), min_size=1, max_size=8)))
    return split, restate_from if restate_from and restate_from <= days else None, order


@settings(
    max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(story=feed_story(), block=st.sampled_from([150, 1_000, config.BLOCK_BYTES]))
def test_any_story_of_runs_ends_equal_to_a_full_recompute(story, block, tmp_path_factory):
    # Blocks as small as a few lines too: the prefix check and the sums across blocks.
    split, restate_from, order = story
    folder = tmp_path_factory.mktemp("story")
    feed = write_feed(folder / "data", split)
    if restate_from:
        # From that day on, every archive carries a changed first row.
        for day in range(restate_from, len(split) + 1):
            path = feed / "client_1" / f"transactions_day_{day}.zip"
            with zipfile.ZipFile(path) as zf:
                text = zf.read(path.stem + ".csv").decode()
            first = text.split("\n")[1]
            fields = first.split(",")
            fields[3] = str(int(fields[3]) % 10 + 1)  # another quantity
            text = text.replace(first, ",".join(fields), 1)
            with zipfile.ZipFile(path, "w") as zf:
                zf.writestr(path.stem + ".csv", text)
    con = fresh_db(folder / "db.sqlite")
    default_block, blocks.BLOCK_BYTES = blocks.BLOCK_BYTES, block
    try:
        for day in order:
            pipelines.incremental_step(con, feed, "client_1", day)
    finally:
        blocks.BLOCK_BYTES = default_block
    table, _, _ = oracle_for(feed, "client_1", order[-1])
    assert_table_matches(state(con), table)
    archive = feed / "client_1" / f"transactions_day_{order[-1]}.zip"
    with zipfile.ZipFile(archive) as zf:
        text = zf.read(archive.stem + ".csv")
    cp = store.read_checkpoint(con, "client_1")
    assert (cp.bytes_processed, cp.lines_processed) == (len(text), text.count(b"\n"))
    con.close()
    shutil.rmtree(folder)
