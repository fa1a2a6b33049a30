"""The same promises on PostgreSQL: each test runs against a server of the session's own
(conftest.pg_server), and compares with the oracle and with the SQLite run's tables."""

from __future__ import annotations

import contextlib
import json
import shutil
import subprocess
import sys
import zipfile

import pytest
from conftest import (
    ROOT,
    assert_table_matches,
    free_port,
    oracle_for,
    read_csv_bytes,
    replay,
    state,
)

import main
from incremental_bench import config, pg, pipelines, store

RUN = ["--repeat", "1", "--no-sweep", "--no-peers"]


def pg_state(url: str, table: str = "processed_sales") -> object:
    with contextlib.closing(store.connect(url)) as con:
        return store.sales_rows(con, table, "client_1")


def rejected(con: store.DbConnection) -> list[tuple]:
    return con.execute(
        "SELECT day, line_number, reason, raw_line FROM rejected_rows ORDER BY line_number"
    ).fetchall()


def scratch_databases(url: str) -> list[str]:
    with pg.server(url) as con:
        rows = con.execute("SELECT datname FROM pg_database WHERE datname LIKE 'bench\\_%'")
        return [name for (name,) in rows.fetchall()]


def test_every_day_equals_the_oracle_and_the_sqlite_tables(medium_feed, pg_db, tmp_path):
    # 10% late rows and noisy values: merges into stored days and rejected rows.
    sqlite = replay(medium_feed, tmp_path / "db.sqlite", [])
    with contextlib.closing(store.connect(pg_db)) as con:
        store.ensure_schema(con, say=lambda line: None)
        for day in range(1, 5):
            mode = pipelines.incremental_step(con, medium_feed, "client_1", day).read_mode
            assert day == 1 or mode.startswith("resumed"), mode
            pipelines.incremental_step(sqlite, medium_feed, "client_1", day)
            table, _, _ = oracle_for(medium_feed, "client_1", day)
            assert_table_matches(state(con), table)
        # An independent check of the stored table: the SQLite run's, read back alike.
        on_pg, on_sqlite = state(con), state(sqlite)
        assert on_pg.select(store.KEY).equals(on_sqlite.select(store.KEY))
        for column, dtype in on_pg.schema.items():
            if dtype.is_float():
                assert (
                    (on_pg[column] - on_sqlite[column]).abs() <= 1e-9 * on_sqlite[column].abs()
                ).all()
            else:
                assert on_pg[column].equals(on_sqlite[column]), column
        assert rejected(con) == rejected(sqlite)
        assert store.read_checkpoint(con, "client_1") == store.read_checkpoint(sqlite, "client_1")
    # The full refresh writes through COPY: the same answer.
    pipelines.run_baseline_benchmark(pg_db, medium_feed, "client_1", 4)
    assert_table_matches(pg_state(pg_db, "processed_sales_full_refresh"), table)


def test_main_runs_goes_back_a_day_and_drops_a_killed_runs_leftovers(
    tiny_feed, pg_db, tmp_path, capsys
):
    # A scratch database a killed run left: the next run of the client drops it.
    leftover = pg.scratch_database(pg_db, "client_1", "run-baseline")
    pg.create_database(leftover)
    for day in (3, 2):  # then an earlier day: replayed from the archives
        report, out = tmp_path / f"r{day}.md", tmp_path / f"r{day}.json"
        args = ["--data-dir", str(tiny_feed), "--db", pg_db, "--day", str(day), *RUN]
        if day == 3:  # the peers too, through the same write path
            args.remove("--no-peers")
        assert main.main([*args, "--report", str(report), "--json", str(out)]) == 0
        results = json.loads(out.read_text())
        assert results["parity"]["ok"] and results["incremental"]["resumed_runs"] > 0
        # The full-refresh peers wrote their answers through the same COPY path.
        for name in ("polars_in_memory", "duckdb") if day == 3 else ():
            assert results["peers"][name]["parity"]["ok"], name
        assert results["conditions"]["database"].startswith("PostgreSQL 1")
        assert "| database | PostgreSQL 1" in report.read_text()
        table, _, _ = oracle_for(tiny_feed, "client_1", day)
        assert_table_matches(pg_state(pg_db), table)  # the database holds day N
    printed = capsys.readouterr()
    assert f"dropped database {pg.database_of(leftover)}" in printed.out
    assert scratch_databases(pg_db) == []  # every scratch copy dropped
    assert "Traceback" not in printed.err


def test_a_restated_history_rebuilds_the_client(tiny_feed, pg_db, tmp_path):
    feed = tmp_path / "data"
    shutil.copytree(tiny_feed, feed)
    with contextlib.closing(store.connect(pg_db)) as con:
        store.ensure_schema(con, say=lambda line: None)
        for day in (1, 2):
            pipelines.incremental_step(con, feed, "client_1", day)
        path = feed / "client_1" / "transactions_day_3.zip"
        csv = bytearray(read_csv_bytes(path))
        at = csv.index(b"\n") + 3  # a digit of the first row's id, processed on day 1
        csv[at] = ord("7") if csv[at] != ord("7") else ord("8")
        with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf:
            zf.writestr(path.stem + ".csv", bytes(csv))
        record = pipelines.incremental_step(con, feed, "client_1", 3)
        assert record.read_mode == "rebuilt: history restated"
        table, _, _ = oracle_for(feed, "client_1", 3)
        assert_table_matches(state(con), table)


CHILD = """
import os, signal, sys
sys.path.insert(0, {root!r})
from pathlib import Path
from incremental_bench import config, pg, pipelines, store

point, url, feed = sys.argv[1], sys.argv[2], Path(sys.argv[3])
die = lambda: os.kill(os.getpid(), signal.SIGKILL)
real_write, real_commit = store.write_frame, pg.PgConnection.commit

def write_frame(con, table, frame):
    real_write(con, table, frame)
    if point == "after-first-write":
        die()

def commit(self):
    if point == "before-commit" and self.tx is not None:
        die()
    real_commit(self)

con = store.connect(url)
pipelines.incremental_step(con, feed, "client_1", 1)
store.write_frame, pg.PgConnection.commit = write_frame, commit
pipelines.incremental_step(con, feed, "client_1", 2)
"""


@pytest.mark.parametrize("point", ["after-first-write", "before-commit"])
def test_sigkill_during_the_write_changes_nothing_then_rerun_keeps_parity(
    point, medium_feed, pg_db
):
    with contextlib.closing(store.connect(pg_db)) as con:
        store.ensure_schema(con, say=lambda line: None)
    child = subprocess.run(
        [sys.executable, "-c", CHILD.format(root=str(ROOT)), point, pg_db, str(medium_feed)],
        capture_output=True,
        timeout=120,
    )
    assert child.returncode == -9, child.stderr.decode()  # it really died by SIGKILL
    with contextlib.closing(store.connect(pg_db)) as con:
        assert store.read_checkpoint(con, "client_1").last_day == 1  # all or nothing
        assert_table_matches(state(con), oracle_for(medium_feed, "client_1", 1)[0])
        for day in range(1, 5):
            pipelines.incremental_step(con, medium_feed, "client_1", day)
        assert_table_matches(state(con), oracle_for(medium_feed, "client_1", 4)[0])


def test_a_second_run_on_the_same_database_and_client_stops_at_once(
    tiny_feed, pg_db, tmp_path, capsys
):
    args = ["--data-dir", str(tiny_feed), "--db", pg_db, "--day", "2", *RUN]
    with pg.advisory_lock(pg_db, "client_1") as free:
        assert free
        assert main.main([*args, "--report", str(tmp_path / "r.md")]) == 1
    err = capsys.readouterr().err
    assert "another main.py run is using this database for client_1" in err
    assert err.count("\n") == 1 and not (tmp_path / "r.md").exists()
    # The lock is per client: another client's is free meanwhile.
    with pg.advisory_lock(pg_db, "client_1"), pg.advisory_lock(pg_db, "client_2") as free:
        assert free


@pytest.mark.parametrize(
    ("url", "said"),
    [
        pytest.param(
            lambda base: f"postgresql://postgres:s3cret@127.0.0.1:{free_port()}/x",
            "cannot connect",
            id="unreachable",
        ),
        pytest.param(lambda base: f"{base}/no_such_db", "does not exist", id="missing-database"),
        pytest.param(
            lambda base: base.replace("postgres@", "nobody:s3cret@") + "/postgres",
            'role "nobody" does not exist',
            id="refused-login",
        ),
    ],
)
def test_server_faults_are_one_line_naming_the_url_without_password(
    url, said, pg_server, tiny_feed, tmp_path, capsys
):
    target = url(pg_server)
    args = ["--data-dir", str(tiny_feed), "--db", target, "--day", "2", *RUN]
    assert main.main([*args, "--report", str(tmp_path / "r.md")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and said in err and "s3cret" not in err, err
    assert err.startswith(f"main.py: error: {pg.safe_url(target)}: ")
    assert not (tmp_path / "r.md").exists()


def test_the_sqlite_default_loads_nothing_of_the_server_side(tiny_feed, tmp_path):
    # A path stays SQLite; its run imports neither SQLAlchemy nor psycopg.
    script = (
        "import sys; from pathlib import Path; from incremental_bench import pipelines, store;"
        f"con = store.connect(store.as_db({str(tmp_path / 'db.sqlite')!r}));"
        "store.ensure_schema(con, print);"
        f"pipelines.incremental_step(con, Path({str(tiny_feed)!r}), 'client_1', 1);"
        "print(sorted(m for m in ('sqlalchemy', 'psycopg') if m in sys.modules))"
    )
    out = subprocess.run(
        [sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, check=True
    ).stdout
    assert out.strip().splitlines()[-1] == "[]"
    assert pg.is_url(str(store.as_db("postgresql://u@h/d"))) and pg.is_url("postgres://u@h/d")


def test_a_password_never_shows_however_the_url_carries_it():
    from incremental_bench import results

    for url in (
        "postgresql://u:s3cret@h:5432/d",
        "postgresql://u@h/d?password=s3cret&sslmode=require",
        "postgres://u:s3cret@h/d?password=s3cret",
    ):
        assert "s3cret" not in pg.safe_url(url) and pg.safe_url(url).startswith(url[:10])
        assert "s3cret" not in results.without_password(f"--db={url}")
        assert "s3cret" not in results.without_password(url)
    assert results.without_password("--report=x.md") == "--report=x.md"


def test_a_full_disk_on_the_server_is_the_servers_not_this_machines():
    import psycopg

    url = "postgresql://u:s3cret@db.example:5432/d"
    with pytest.raises(config.InputError) as err, store.database_errors_named(url):
        raise psycopg.errors.DiskFull("could not extend file: No space left on device")
    message = str(err.value)
    assert message.startswith("postgresql://u@db.example:5432/d: its disk is full"), message
    assert not isinstance(err.value, config.DiskFull) and "s3cret" not in message


def test_placeholders_leave_quoted_text_alone():
    sql = "SELECT 'a?b', \"c?\" FROM t WHERE x = ? AND y LIKE 'z%' AND w = 'it''s ?' AND v = ?"
    assert pg.placeholders(sql) == (
        "SELECT 'a?b', \"c?\" FROM t WHERE x = %s AND y LIKE 'z%%' AND w = 'it''s ?' AND v = %s"
    )
