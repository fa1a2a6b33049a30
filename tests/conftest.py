"""Shared helpers: tiny feeds generated once per test session, the oracle, databases."""

from __future__ import annotations

import contextlib
import fcntl
import glob
import io
import os
import pwd
import shutil
import socket
import subprocess
import sys
import tempfile
import uuid
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import polars as pl  # noqa: E402
from oracle import expected  # noqa: E402

import generate_data  # noqa: E402
import main  # noqa: E402
from incremental_bench import blocks, config, parse, pipelines, store  # noqa: E402

TINY = ["--days", "3", "--base-rows", "3000", "--daily-rows", "300", "--seed", "7"]


def generate(out: Path, *options: str) -> Path:
    """Run generate_data.main in this process (quietly) and return the output folder."""
    assert generate_data.main(["--out", str(out), "--quiet", *options]) == 0
    return out


def read_csv_bytes(archive: Path) -> bytes:
    """The one member of a day archive, checked to be the only one and correctly named."""
    with zipfile.ZipFile(archive) as zf:
        names = zf.namelist()
        assert names == [archive.stem + ".csv"]
        return zf.read(names[0])


@pytest.fixture(scope="session")
def tiny_feed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """2 clients x 3 days, 3,000 + 300 rows, seed 7: the size of the spec's smoke run."""
    return generate(tmp_path_factory.mktemp("tiny") / "data", *TINY)


@pytest.fixture(scope="session")
def medium_feed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Big enough for distribution checks: 50,000 + 5,000 rows, 10% late rows."""
    return generate(
        tmp_path_factory.mktemp("medium") / "data",
        *["--days", "4", "--base-rows", "50000", "--daily-rows", "5000"],
        *["--seed", "11", "--late-fraction", "0.1"],
    )


HEADER = (
    "transaction_id,transaction_date,sku_id,quantity_sold,revenue_usd,maturity_date,zip_code_raw"
)
PLAIN_HEADER = blocks.read_header(Path("feed.csv"), (HEADER + "\n").encode())


def parsed(body: bytes, first_line: int = 2) -> pl.DataFrame:
    """The parse stage's rows for CSV records under the spec's own header."""
    return parse.parse_block(body, first_line, PLAIN_HEADER)[0]


HAND_ZIPS = {"94107": "CA", "90210": "CA", "10001": "NY", "00000": ""}
HAND_SKUS = {"SKU-1": "G1", "SKU-2": "G2", "SKU-3": "G1"}


def row(
    zip_raw: str = "94107", maturity: str = "2025-11-01", sku: str = "SKU-1", tx: str = "2025-10-01"
) -> str:
    """One hand-written data line of the seven columns, in order."""
    return f"1,{tx},{sku},2,10.50,{maturity},{zip_raw}"


def write_feed(data_dir: Path, days: list[list[str]], client: str = "client_1") -> Path:
    """Hand-written cumulative feed: day N's archive holds the rows of days 1..N."""
    static = data_dir / "static"
    static.mkdir(parents=True, exist_ok=True)
    (static / "us_zip_codes.csv").write_text(
        "zip_code,city,state,is_us\n"
        + "".join(f"{z},X,{s},{str(z != '00000').lower()}\n" for z, s in HAND_ZIPS.items())
    )
    (static / "sku_groups.csv").write_text(
        "sku_id,sku_group,category,is_high_priority\n"
        + "".join(f"{k},{g},C,false\n" for k, g in HAND_SKUS.items())
    )
    folder = data_dir / client
    folder.mkdir(parents=True, exist_ok=True)
    text = HEADER + "\n"
    for day, rows in enumerate(days, start=1):
        text += "".join(row + "\n" for row in rows)
        with zipfile.ZipFile(
            folder / f"transactions_day_{day}.zip", "w", zipfile.ZIP_DEFLATED
        ) as zf:
            zf.writestr(f"transactions_day_{day}.csv", text)
    return data_dir


def oracle_for(feed: Path, client: str, day: int) -> tuple[dict, dict, list]:
    """The oracle's (table, counters, rejected) for one day's whole archive."""
    zips = pl.read_csv(feed / "static/us_zip_codes.csv", infer_schema=False)
    skus = pl.read_csv(feed / "static/sku_groups.csv", infer_schema=False)
    text = read_csv_bytes(feed / client / f"transactions_day_{day}.zip").decode("utf-8", "replace")
    return expected(
        text,
        client,
        dict(zip(zips["zip_code"], zips["state"], strict=True)),
        dict(zip(skus["sku_id"], skus["sku_group"], strict=True)),
    )


def assert_table_matches(frame: pl.DataFrame, table: dict) -> None:
    """Same keys as the oracle's table; integers equal, floats within 1e-9 relative."""
    got = {tuple(r[k] for k in config.KEY): r for r in frame.iter_rows(named=True)}
    assert set(got) == set(table)
    for key, want in table.items():
        for column, value in want.items():
            if isinstance(value, float):
                assert got[key][column] == pytest.approx(value, rel=1e-9), (key, column)
            else:
                assert got[key][column] == value, (key, column)


def fresh_db(path: Path) -> store.Connection:
    """A database with the current schema and nothing in it."""
    con = store.connect(path)
    store.ensure_schema(con, print)
    return con


def replay(feed: Path, db: Path, days: range | list[int]) -> store.Connection:
    """client_1's incremental state after running the given days in order."""
    con = fresh_db(db)
    for day in days:
        pipelines.incremental_step(con, feed, "client_1", day)
    return con


def state(con: store.Connection) -> pl.DataFrame:
    """client_1's rows of processed_sales."""
    return store.sales_rows(con, "processed_sales", "client_1")


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


def postgres_bin() -> Path | None:
    """The folder of PostgreSQL's server programs (Debian's versioned one), if installed."""
    found = shutil.which("initdb")
    if found:
        return Path(found).resolve().parent
    folders = sorted(glob.glob("/usr/lib/postgresql/*/bin"), key=lambda f: int(f.split("/")[4]))
    return Path(folders[-1]) if folders else None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def pg_server() -> Iterator[str]:
    """A throwaway PostgreSQL server of this session's own, on a free port; its base URL.

    initdb refuses to run as root: as root, the server runs as the `postgres` user in a
    folder it owns. Stopped at the end of the session, however the tests ended. CI
    installs PostgreSQL (.ci/run) and never skips; a machine without it may.
    """
    binaries = postgres_bin()
    if binaries is None:
        if os.environ.get("CI"):
            pytest.fail("PostgreSQL is not installed: .ci/run installs it")
        pytest.skip("PostgreSQL's server programs are not installed here")
    # Not under pytest's own folder, which only its user may enter.
    home = Path(tempfile.mkdtemp(prefix="bench-test-postgres-"))
    run_as: list[str] = []
    if os.geteuid() == 0:
        user = pwd.getpwnam("postgres")
        os.chown(home, user.pw_uid, user.pw_gid)
        run_as = ["runuser", "-u", "postgres", "--"]
    data, port = home / "data", free_port()
    subprocess.run(
        [*run_as, binaries / "initdb", "-D", data, "-A", "trust", "-U", "postgres", "--no-sync"],
        check=True,
        capture_output=True,
    )
    # Durability off: these tests check answers, not crash safety of the server itself.
    options = f"-p {port} -k {home} -c listen_addresses=127.0.0.1 -c fsync=off"
    pg_ctl = [*run_as, binaries / "pg_ctl", "-D", data]
    subprocess.run(
        [*pg_ctl, "-o", options, "-l", home / "log", "-w", "start"], check=True, capture_output=True
    )
    try:
        yield f"postgresql://postgres@127.0.0.1:{port}"
    finally:
        subprocess.run([*pg_ctl, "-m", "immediate", "-w", "stop"], capture_output=True)
        shutil.rmtree(home, ignore_errors=True)


@pytest.fixture
def pg_db(pg_server: str) -> Iterator[str]:
    """A new, empty database on the session's server; its URL. Dropped afterwards."""
    from incremental_bench import pg

    url = f"{pg_server}/t_{uuid.uuid4().hex[:12]}"
    pg.create_database(url)
    yield url
    pg.drop_database(url)


@pytest.fixture(params=["sqlite", "postgresql"])
def any_db(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[store.DbConnection]:
    """An empty database of each kind, schema made: a test taking it runs on both."""
    where = (
        tmp_path / "db.sqlite" if request.param == "sqlite" else request.getfixturevalue("pg_db")
    )
    con = store.connect(where)
    store.ensure_schema(con, say=lambda line: None)
    try:
        yield con
    finally:
        con.close()
