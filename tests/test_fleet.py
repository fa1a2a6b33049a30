"""The fleet on Dask: a local cluster of two workers over three clients, every client's
table equal to the oracle; a worker killed in the middle of a task; a broken client
among good ones; a remote scheduler refused with an SQLite file."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import sys
from pathlib import Path

import pytest
from conftest import assert_table_matches, generate, oracle_for, state

import main
from incremental_bench import fleet, store

FEED = ["--clients", "3", "--days", "3", "--base-rows", "3000", "--daily-rows", "300"]


@pytest.fixture(scope="module")
def three_clients(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return generate(tmp_path_factory.mktemp("fleet") / "data", *FEED, "--seed", "5")


@pytest.fixture(scope="module")
def scheduler() -> str:
    """A local cluster of two workers for the module's tests; its scheduler's address."""
    from distributed import LocalCluster

    with LocalCluster(
        n_workers=2, threads_per_worker=1, dashboard_address=":0", env={"POLARS_MAX_THREADS": "1"}
    ) as cluster:
        yield cluster.scheduler_address


def run(feed: Path, tmp_path: Path, *options: str) -> tuple[int, dict]:
    out = tmp_path / "r.json"
    args = ["--data-dir", str(feed), "--db", str(tmp_path / "db.sqlite"), "--day", "3"]
    args += ["--repeat", "2", "--report", str(tmp_path / "r.md"), "--json", str(out), *options]
    code = main.main(["--fleet", *args])
    return code, json.loads(out.read_text()) if out.exists() else {}


def test_every_clients_table_equals_the_oracle(three_clients, scheduler, tmp_path, capsys):
    code, results = run(three_clients, tmp_path, "--scheduler", scheduler)
    assert code == 0, capsys.readouterr().err
    night = results["fleet"]
    assert night["clients"] == ["client_1", "client_2", "client_3"] and not night["failed"]
    assert night["parity"] == {c: True for c in night["clients"]} and night["workers"] == 2
    for way in ("baseline", "incremental"):
        figures = night["ways"][way]
        assert len(figures["makespan_s"]["runs"]) == 2 and figures["cpu_s"]["median"] > 0
        assert figures["tasks_run_again"] == 0 and len(figures["tasks"]) == 3
    rows = [oracle_for(three_clients, c, 3)[0] for c in night["clients"]]
    assert night["ways"]["baseline"]["rows_written"] == sum(len(t) for t in rows)
    # The database holds every client's day 3, equal to the oracle.
    with store.connect(tmp_path / "db.sqlite") as con:
        for client, table in zip(night["clients"], rows, strict=True):
            assert_table_matches(store.sales_rows(con, "processed_sales", client), table)
    report = (tmp_path / "r.md").read_text()
    assert "parity held for all 3 clients" in report and "| client_3 | held |" in report


def kill_the_worker_once(task: fleet.FleetTask) -> fleet.TaskResult:
    """The incremental task of client_2 kills its own worker process in the middle of
    its write the first time it runs (the marker file says whether it ran)."""
    marker = Path(os.environ["FLEET_TEST_MARKER"])
    if task.pipeline == "incremental" and task.client == "client_2" and not marker.exists():
        marker.touch()
        real = store.write_frame

        def write_then_die(con, table, frame):
            real(con, table, frame)
            os.kill(os.getpid(), signal.SIGKILL)  # inside the transaction, before the commit

        store.write_frame = write_then_die
    return fleet.run_task(task)


def test_a_worker_killed_mid_task_is_retried_and_the_table_is_exact(
    three_clients, tmp_path, monkeypatch
):
    import cloudpickle

    cloudpickle.register_pickle_by_value(sys.modules[__name__])
    monkeypatch.setenv("FLEET_TEST_MARKER", str(tmp_path / "killed"))
    db = tmp_path / "db.sqlite"
    cfg = main.config_from(main.parse_args(["--data-dir", str(three_clients), "--db", str(db)]))
    cfg = main.replace(cfg, day=3, repeat=1, client=fleet.FLEET)
    options = fleet.FleetOptions([], None, 2, task_fn=kill_the_worker_once)
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    night = fleet.run_fleet(cfg, options, scratch, scratch / "state.db", say=print)
    assert (tmp_path / "killed").exists()  # the fault happened
    assert night["ways"]["incremental"]["tasks_run_again"] >= 1
    assert night["parity_ok"] and not night["failed"]
    with store.connect(fleet.fleet_answer(cfg, scratch)) as con:
        assert_table_matches(
            store.sales_rows(con, "processed_sales", "client_2"),
            oracle_for(three_clients, "client_2", 3)[0],
        )


def test_a_broken_client_fails_alone(three_clients, scheduler, tmp_path, capsys):
    feed = tmp_path / "data"
    shutil.copytree(three_clients, feed)
    (feed / "client_2" / "transactions_day_3.zip").write_bytes(b"not a zip")
    code, results = run(feed, tmp_path, "--scheduler", scheduler)
    assert code == 2
    night = results["fleet"]
    assert (
        list(night["failed"]) == ["client_2"]
        and "transactions_day_3.zip" in (night["failed"]["client_2"])
    )
    assert night["parity"] == {"client_1": True, "client_3": True}
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 1 and err[0].startswith("main.py: client client_2 failed: ")
    with store.connect(tmp_path / "db.sqlite") as con:  # the good clients saved, not it
        assert_table_matches(state(con), oracle_for(feed, "client_1", 3)[0])
        assert store.sales_rows(con, "processed_sales", "client_2").height == 0
        assert store.sales_rows(con, "processed_sales", "client_3").height > 0


def test_a_remote_scheduler_with_an_sqlite_file_is_refused(three_clients, tmp_path, capsys):
    code, _ = run(three_clients, tmp_path, "--scheduler", "tcp://10.255.0.1:8786")
    assert code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "cannot share the SQLite file" in err
    assert fleet.is_local("tcp://127.0.0.1:8786") and fleet.is_local("localhost:8786")
    assert not fleet.is_local("tcp://10.255.0.1:8786")


def test_the_fleet_on_postgresql_keeps_every_table_and_no_password(
    three_clients, scheduler, pg_db, tmp_path
):
    url = pg_db.replace("postgres@", "postgres:s3cret@")  # trust login: the password unused
    out, report = tmp_path / "r.json", tmp_path / "r.md"
    args = ["--fleet", "--data-dir", str(three_clients), "--db", url, "--day", "3"]
    args += ["--repeat", "1", "--scheduler", scheduler, "--report", str(report)]
    assert main.main([*args, "--json", str(out)]) == 0
    assert "s3cret" not in out.read_text() + report.read_text()
    results = json.loads(out.read_text())
    assert results["conditions"]["database"].startswith("PostgreSQL")
    with contextlib.closing(store.connect(pg_db)) as con:
        for client in ("client_1", "client_2", "client_3"):
            table = oracle_for(three_clients, client, 3)[0]
            assert_table_matches(store.sales_rows(con, "processed_sales", client), table)
