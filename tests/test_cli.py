"""The command line end to end (docs/spec.md section 5): the results JSON, the report,
the peers, memory_profiler, bad input and a killed run."""

from __future__ import annotations

import builtins
import contextlib
import dataclasses
import io
import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import psutil
import pytest
from conftest import (
    HEADER,
    ROOT,
    assert_table_matches,
    fresh_db,
    oracle_for,
    read_csv_bytes,
    write_feed,
)

import main
from incremental_bench import (
    config,
    harness,
    parity,
    peers,
    pipelines,
    report,
    results,
    store,
)


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
            tables[name] = store.sales_rows(con, "processed_sales_full_refresh", "client_1")
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
    assert dataclasses.asdict(results.summarize([3.0, 1.0, 2.0])) == {
        "median": 2.0,
        "min": 1.0,
        "max": 3.0,
        "runs": [3.0, 1.0, 2.0],
    }
    assert results.summarize([4.0, 1.0, 2.0, 10.0]).median == 3.0
    assert results.summarize([0.5]) == results.Spread(median=0.5, min=0.5, max=0.5, runs=[0.5])


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
    assert_table_matches(store.sales_rows(con, "processed_sales", "client_1"), table)
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
        zf.writestr("readme.txt", data)


def two_csv_members(path: Path) -> None:
    data = read_csv_bytes(path)
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("a.csv", data)
        zf.writestr("b.csv", data)


def deflate64_member(path: Path) -> None:
    """A member whose headers say Deflate64 (method 9), which zipfile cannot read."""
    data = read_csv_bytes(path)
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as zf:
        zf.writestr(path.stem + ".csv", data)
    raw = bytearray(path.read_bytes())
    raw[8:10] = (9).to_bytes(2, "little")  # the local header's method
    central = raw.rindex(b"PK\x01\x02")
    raw[central + 10 : central + 12] = (9).to_bytes(2, "little")
    path.write_bytes(bytes(raw))


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
            "no single CSV member for day 2 (.csv members found: none; archive holds: readme.txt)",
        ),
        (
            lambda d: two_csv_members(d / "client_1/transactions_day_2.zip"),
            "no single CSV member for day 2 (.csv members found: 2: a.csv, b.csv",
        ),
        (
            lambda d: deflate64_member(d / "client_1/transactions_day_2.zip"),
            "transactions_day_2.csv is compressed with Deflate64, which cannot be read here",
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


def test_every_output_path_is_checked_before_any_work(tiny_feed, tmp_path, capsys):
    # A folder where a file is expected, a missing parent, a folder we may not write:
    # one line naming the path and the problem, exit 2, nothing created.
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    cases = {
        "a folder": (tmp_path, "names a folder"),
        "a missing parent": (tmp_path / "no" / "x", "does not exist"),
    }
    if os.geteuid() != 0:  # root writes anywhere: the permission check cannot fire
        cases["no permission"] = (locked / "x", "not writable")
    args = ["--data-dir", str(tiny_feed), "--day", "2", "--db", str(tmp_path / "db")]
    for option in ("--db", "--report", "--json"):
        for path, says in cases.values():
            code = main.main([*args, option, str(path)])
            err = capsys.readouterr().err.strip().splitlines()
            assert code == 2 and len(err) == 1, (option, path, err)
            assert str(path) in err[0] and option in err[0] and says in err[0]
    assert not (tmp_path / "db").exists()


def test_ctrl_c_ends_the_run_in_one_line_with_exit_130(medium_feed, tmp_path):
    # As a terminal sends it: SIGINT to the whole process group, driver and workers.
    db = tmp_path / "db.sqlite"
    fresh_db(db).close()
    before = db.read_bytes()
    args = ["--data-dir", str(medium_feed), "--db", str(db), "--no-sweep", "--day", "4"]
    driver = subprocess.Popen(
        [sys.executable, str(ROOT / "main.py"), *args, "--repeat", "50"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    deadline = time.monotonic() + 60
    while not workers_of(driver.pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    time.sleep(0.5)
    os.killpg(driver.pid, signal.SIGINT)
    _, err = driver.communicate(timeout=60)
    assert driver.returncode == 130, err
    assert "Traceback" not in err and err.strip().splitlines()[-1].startswith(
        "main.py: interrupted"
    )
    assert db.read_bytes() == before and not list(tmp_path.glob(".bench-*"))


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
