"""The command line: checking inputs, one run of the benchmark in its seven steps, and
writing its outputs, with one-line errors and exit codes (docs/spec.md section 5)."""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import fcntl
import json
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from incremental_bench import pg
from incremental_bench.clock import Stopwatch
from incremental_bench.config import (
    FULL_REFRESH_TABLES,
    SCRATCH_PREFIX,
    STATE_TABLES,
    TABLES,
    BenchConfig,
    BusyError,
    InputError,
    Say,
)
from incremental_bench.fleet import FleetOptions, default_workers
from incremental_bench.parity import check_parity, overall_parity
from incremental_bench.pipelines import check_archives
from incremental_bench.store import (
    Db,
    as_db,
    connect,
    copy_client_rows,
    copy_db,
    create_empty,
    current_tables,
    database_errors_named,
    db_exists,
    delete_client,
    describe,
    ensure_schema,
    full_disk_named,
    scratch_db,
    transaction,
)
from incremental_bench.transform import load_lookups


def check_inputs(cfg: BenchConfig, say: Say) -> None:
    """Fail fast, before any database change, on a missing or unusable input.

    Extra columns of the day-N archive are named once, through `say`.
    """
    check_data_folder(cfg)
    if cfg.client in ("", ".", "..") or Path(cfg.client).name != cfg.client:
        raise InputError(
            f"--client {cfg.client!r}: not a client folder name (give a folder of"
            f" {cfg.data_dir} by its name, such as client_1)"
        )
    folder = cfg.data_dir / cfg.client
    if not folder.is_dir():
        found = sorted(p.name for p in cfg.data_dir.glob("client_*"))
        raise InputError(f"{folder}: no such client folder (found: {', '.join(found) or 'none'})")
    last, extras = check_archives(cfg.data_dir, cfg.client, cfg.day)
    check_outputs(cfg)
    if extras:
        say(f"{last}: extra column(s) ignored: {', '.join(extras)}")


def check_fleet_inputs(cfg: BenchConfig) -> None:
    """The fleet's inputs before any work: the data folder, its lookups, the outputs and
    the database. A client's own archives are checked by its tasks: a broken client
    fails alone."""
    check_data_folder(cfg)
    check_outputs(cfg)


def check_data_folder(cfg: BenchConfig) -> None:
    """The data folder is there and its lookups load."""
    if not cfg.data_dir.is_dir():
        raise InputError(f"{cfg.data_dir}: data folder not found (run generate_data.py first)")
    load_lookups(cfg.data_dir)


def check_outputs(cfg: BenchConfig) -> None:
    """The database answers (a server: the login works and the database is there; a
    file: it can be written), and so can --report and --json."""
    if pg.is_url(cfg.db):
        connect(cfg.db).close()
    else:
        check_output_path("--db", Path(cfg.db))
    for option, path in (("--report", cfg.report), ("--json", cfg.json_path)):
        if path is not None:
            check_output_path(option, path)


def check_output_path(option: str, path: Path) -> None:
    """One clear error, before any work, for a path the run could not write."""
    folder = path.resolve().parent
    if path.is_dir():
        raise InputError(f"{path}: {option} names a folder; give a file in it")
    if not folder.is_dir():
        raise InputError(f"{path}: the folder for {option} does not exist")
    if not os.access(folder, os.W_OK | os.X_OK) or (path.exists() and not os.access(path, os.W_OK)):
        raise InputError(f"{path}: {option} is not writable here (permission denied)")


@contextlib.contextmanager
def exclusive_run(db: Db, client: str) -> Iterator[None]:
    """One run per database at a time; a second run stops at once.

    PostgreSQL: a session advisory lock per database and client, held by a connection
    for the whole run (the server frees it when that connection ends, a killed run's
    too). SQLite: `<db>.lock` for the whole database. The databases' own locks (SQLite:
    WAL, 30 s busy timeout; both: the checkpoint re-checked inside each transaction)
    already keep a table from being corrupted or double-counted; this lock makes a
    second benchmark say so plainly instead of racing the first to the end. A stale pid
    left in the lock file by a killed run is no obstacle: the kernel released its lock.
    """
    if pg.is_url(db):
        with pg.advisory_lock(str(db), client) as free:
            if not free:
                raise BusyError(
                    f"{describe(db)}: another main.py run is using this database for {client};"
                    " wait for it to finish"
                )
            yield
        return
    db = Path(db)
    lock_path = db.resolve().with_name(db.resolve().name + ".lock")  # same file via any link
    try:
        lock = open(lock_path, "a+")  # noqa: SIM115 (closed below, after the run)
    except OSError as exc:
        raise InputError(f"{lock_path}: cannot open the lock file ({exc.strerror})") from None
    with lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            lock.seek(0)
            holder = lock.read().strip() or "unknown"
            raise BusyError(
                f"{db}: another main.py run is using this database ({holder}); "
                "wait for it to finish"
            ) from None
        lock.seek(0)
        lock.truncate()
        lock.write(f"pid {os.getpid()}, started {dt.datetime.now():%Y-%m-%d %H:%M:%S}")
        lock.flush()
        yield


def db_place(cfg: BenchConfig) -> contextlib.AbstractContextManager[None]:
    """Errors of the database's place as one line: a full disk (named by its folder, or
    by the server's URL), a server that went away."""
    if pg.is_url(cfg.db):
        return database_errors_named(cfg.db)
    return full_disk_named(scratch_home(cfg))


def scratch_home(cfg: BenchConfig) -> Path:
    """Where the scratch folder goes: beside an SQLite database, in the temporary folder
    for a PostgreSQL one (whose scratch copies are databases on its server)."""
    if pg.is_url(cfg.db):
        return Path(tempfile.gettempdir()).resolve()
    return Path(cfg.db).resolve().parent


@contextlib.contextmanager
def scratch_folder(cfg: BenchConfig, say: Say) -> Iterator[Path]:
    """A temporary folder for the run's copies and results, removed after it (with the
    scratch databases on a PostgreSQL server).

    Called with the database's lock held: any scratch folder or database of the same
    database (and client, on a server) still there belongs to a run that was killed
    (its lock is gone), so it is removed.
    """
    home = scratch_home(cfg)
    if pg.is_url(cfg.db):
        token = pg.scratch_token(str(cfg.db), cfg.client)
        prefix = f"{SCRATCH_PREFIX}{token}-"
        for name in pg.drop_scratch(str(cfg.db), token):
            say(f"dropped database {name}, a scratch copy of a run that did not finish")
    else:
        prefix = f"{SCRATCH_PREFIX}{Path(cfg.db).resolve().name}-"
    for leftover in sorted(home.glob(f"{prefix}*")):
        if leftover.is_dir():
            shutil.rmtree(leftover, ignore_errors=True)
            say(f"removed {leftover}, the scratch folder of a run that did not finish")
    try:
        with tempfile.TemporaryDirectory(prefix=prefix, dir=home) as tmp:
            yield Path(tmp)
    finally:
        if pg.is_url(cfg.db):
            pg.drop_scratch(str(cfg.db), token)


def scratch_state(cfg: BenchConfig, scratch: Path) -> Db:
    """A copy of the database to work on, its schema current, the baseline's table empty.

    The real database changes only at the very end, and then only for this client, so
    bad input found late leaves it untouched. SQLite copies the whole file; PostgreSQL
    a new database holding the client's state rows (the server's other clients and
    tables stay where they are).
    """
    state = scratch_db(cfg, scratch, "state")
    if pg.is_url(cfg.db):
        create_empty(state)
    elif Path(cfg.db).exists():
        copy_db(cfg.db, state)
    with contextlib.closing(connect(state)) as con:
        ensure_schema(con, say=lambda line: None)  # said when the real one is migrated
        if pg.is_url(cfg.db):
            copy_client_rows(cfg.db, con, cfg.client, current_tables(cfg.db, STATE_TABLES))
        with transaction(con):  # every baseline run then writes into a client-free table
            delete_client(con, cfg.client, FULL_REFRESH_TABLES)
    return state


def final_parity(final: Path, client: str, day: int, sweep: list[dict[str, Any]]) -> dict[str, Any]:
    """Parity of the last repeat's two answers, failed if any sweep day failed (timed apart)."""
    clock = Stopwatch()
    with clock.stage("parity"), contextlib.closing(connect(final)) as con:
        parity = overall_parity(check_parity(con, client), sweep, day)
    return {**parity, "seconds": clock.stages_s["parity"]}


def day_n_target(cfg: BenchConfig, parity: dict[str, Any]) -> Db:
    """Where day N's state goes: the database, or beside it when parity failed (noted)."""
    if parity["ok"]:
        return cfg.db
    if pg.is_url(cfg.db):
        name = pg.database_of(str(cfg.db))
        kept: Db = pg.with_database(str(cfg.db), f"{name}_parity_failed")
    else:
        kept = Path(cfg.db).with_name(Path(cfg.db).name + ".parity-failed")
    parity["kept"] = describe(kept)
    return kept


def save_day_n(target: Db, final: Db, client: str, say: Say) -> None:
    """The client's rows of every table replaced by the day-N state, in one transaction.

    On a parity failure `target` is the file (or database) kept beside the database,
    which then stays as it was.
    """
    if pg.is_url(target) and not db_exists(target):
        create_empty(target)
    with contextlib.closing(connect(target)) as con:
        ensure_schema(con, say)
        copy_client_rows(final, con, client, TABLES)


Write = Callable[[Path], None]  # writes one output file, at the path it is given


@contextlib.contextmanager
def staged_outputs() -> Iterator[Callable[[Path, Write], None]]:
    """Output files written under temporary names beside their places, then put in place.

    The block gets `stage(path, write)`, which has `write` write `path` under a
    temporary name (a full disk there names `path`'s folder). When the block ends
    normally every file is renamed into place (a rename needs no space); when it fails,
    none is, and the temporary files go.
    """
    staged: list[tuple[Path, Path]] = []

    def stage(path: Path, write: Write) -> None:
        tmp = path.with_name(f".{path.name}.tmp")
        staged.append((tmp, path))
        with full_disk_named(path.resolve().parent):
            write(tmp)

    try:
        yield stage
        for tmp, path in staged:
            os.replace(tmp, path)
    finally:
        for tmp, _ in staged:
            tmp.unlink(missing_ok=True)  # gone after the rename; after a failure, not left


def positive_int(text: str) -> int:
    """argparse type: an integer of at least 1."""
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """Command-line options (docs/spec.md section 5) over the BenchConfig defaults."""
    d = BenchConfig()
    p = argparse.ArgumentParser(
        prog="main.py",
        description="Benchmark incremental processing against full reprocessing of a "
        "cumulative daily feed, check parity, and write results.md.",
        epilog="example: python main.py --client client_2 --day 4 --repeat 3 --json results.json",
    )
    p.add_argument(
        "--data-dir",
        type=Path,
        default=d.data_dir,
        help=f"feeds written by generate_data.py (default: {d.data_dir})",
    )
    db_help = "SQLite file, or PostgreSQL URL postgresql://user@host:port/dbname"
    p.add_argument("--db", type=as_db, default=d.db, help=f"{db_help} (default: {d.db})")
    p.add_argument(
        "--client", default=d.client, help=f"client folder to benchmark (default: {d.client})"
    )
    p.add_argument(
        "--day",
        type=positive_int,
        default=d.day,
        help=f"benchmark the step from day N-1 to day N (default: {d.day})",
    )
    p.add_argument(
        "--repeat",
        type=positive_int,
        default=d.repeat,
        help=f"timed runs of each pipeline after one warm-up (default: {d.repeat})",
    )
    p.add_argument(
        "--report", type=Path, default=d.report, help=f"Markdown report (default: {d.report})"
    )
    p.add_argument(
        "--json",
        type=Path,
        default=None,
        dest="json_path",
        help="also write the machine-readable results here, e.g. results.json",
    )
    p.add_argument(
        "--sweep",
        action=argparse.BooleanOptionalAction,
        default=d.sweep,
        help="also run both pipelines once on every day 2..N-1 and chart how cost grows "
        "(default: on; --no-sweep skips it)",
    )
    p.add_argument(
        "--peers",
        action=argparse.BooleanOptionalAction,
        default=d.peers,
        help="also measure what a data team would run instead, on day N: a full refresh in"
        " DuckDB and the by-date shortcut (default: on; --no-peers skips them)",
    )
    add_fleet_options(p)
    return fleet_args_checked(p, p.parse_args(argv))


def summary(cfg: BenchConfig, results: dict[str, Any]) -> str:
    """The run's last line: both pipelines' figures and where the report is."""
    base, inc, ratios = results["baseline"], results["incremental"], results["ratios"]
    return (
        f"baseline {base['wall_s']['median']:.3f} s, {base['peak_mib']:.0f} MiB; "
        f"incremental {inc['wall_s']['median']:.3f} s, {inc['peak_mib']:.0f} MiB: "
        f"{ratios['speedup']:.1f}x faster, {ratios['memory_ratio']:.1f}x less memory; "
        f"report: {cfg.report}"
    )


def save_fleet_day_n(cfg: BenchConfig, fleet: dict[str, Any], answer: Db, say: Say) -> None:
    """Every client whose parity held leaves its day-N rows in the database; a failed
    client's stay as they were."""
    for client, held in fleet["parity"].items():
        if held:
            save_day_n(cfg.db, answer, client, say)


def fleet_failures(results: dict[str, Any]) -> list[str]:
    """A line for each client that failed, its input or its parity (stderr)."""
    fleet = results["fleet"]
    lines = [f"main.py: client {client} failed: {why}" for client, why in fleet["failed"].items()]
    lines += [
        f"main.py: client {client}: parity FAILED (its rows in the database left unchanged)"
        for client, held in fleet["parity"].items()
        if not held
    ]
    return lines


def fleet_summary(cfg: BenchConfig, results: dict[str, Any]) -> str:
    """The fleet run's last line: both ways' makespans and CPU-seconds, and the report."""
    fleet = results["fleet"]
    base, inc = fleet["ways"]["baseline"], fleet["ways"]["incremental"]
    return (
        f"fleet of {len(fleet['clients'])}: full refresh {base['makespan_s']['median']:.2f} s,"
        f" {base['cpu_s']['median']:.1f} CPU-s; incremental {inc['makespan_s']['median']:.2f} s,"
        f" {inc['cpu_s']['median']:.1f} CPU-s: {fleet['ratios']['makespan']:.1f}x less wall"
        f" time, {fleet['ratios']['cpu_s']:.1f}x fewer CPU-seconds; report: {cfg.report}"
    )


def fleet_exit_code(results: dict[str, Any]) -> int:
    """2 when a client's input failed it, 1 when a client's parity failed, else 0."""
    fleet = results["fleet"]
    if fleet["failed"]:
        return 2
    return 0 if fleet["parity_ok"] else 1


def fleet_options(args: argparse.Namespace) -> FleetOptions | None:
    """The fleet's options, or None for the single-client benchmark."""
    if args.fleet is None:
        return None
    return FleetOptions(args.fleet, args.scheduler, args.workers or default_workers())


def fleet_args_checked(p: argparse.ArgumentParser, args: argparse.Namespace) -> argparse.Namespace:
    """The fleet's options only with --fleet: a usage error (exit 2) otherwise."""
    if args.fleet is None and (args.scheduler or args.workers):
        p.error("--scheduler and --workers go with --fleet")
    return args


def add_fleet_options(p: argparse.ArgumentParser) -> None:
    """--fleet, --scheduler, --workers (docs/fleet.md)."""
    p.add_argument(
        "--fleet",
        nargs="*",
        metavar="CLIENT",
        help="the night's job instead: day N of every client (or of those named), both"
        " ways, one Dask task per client",
    )
    p.add_argument(
        "--scheduler", metavar="ADDRESS", help="with --fleet: an existing Dask scheduler"
    )
    p.add_argument(
        "--workers",
        type=positive_int,
        help="with --fleet: worker processes of the local cluster (default: one per core)",
    )


def parity_failure(cfg: BenchConfig, parity: dict[str, Any]) -> str:
    """What differs, then the one-line error, for a run whose parity failed."""
    return (
        f"parity diff: {json.dumps(parity['diff'], indent=2, default=str)}\n"
        f"main.py: parity FAILED for {cfg.client} day {cfg.day}: {parity['error']}"
        f" (database left unchanged; failing state kept in {parity['kept']})"
    )


def config_from(args: argparse.Namespace) -> BenchConfig:
    """The run's configuration from its parsed options."""
    return BenchConfig(
        data_dir=args.data_dir,
        db=args.db,
        client=args.client,
        day=args.day,
        repeat=args.repeat,
        report=args.report,
        json_path=args.json_path,
        sweep=args.sweep,
        peers=args.peers,
    )
