"""The fleet: every client's day N both ways on a Dask cluster, one task per client.

Owns the cluster (a LocalCluster sized to the machine, or an existing scheduler), the
task a worker runs (one client's pipeline call, measured), the night's job with its
repeats, retries and failed clients, and its figures. The pipelines, the store and the
parity check are the single benchmark's own."""

from __future__ import annotations

import contextlib
import ipaddress
import logging
import os
import socket
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from incremental_bench import pg
from incremental_bench.clock import progress, summarize
from incremental_bench.config import FULL_REFRESH_TABLES, BenchConfig, InputError, Say
from incremental_bench.parity import check_parity
from incremental_bench.pipelines import populate_historical_data
from incremental_bench.store import (
    Db,
    as_db,
    connect,
    copy_client_rows,
    copy_db,
    ensure_schema,
    scratch_db,
)
from incremental_bench.worker import PIPELINES, AnonPeak, anon_rss_mib

FLEET = "fleet"  # the name the whole fleet's lock and scratch databases go by
TASK_RETRIES = 2  # a task that raised is run again this many times (a lost worker: Dask's own)


@dataclass(frozen=True)
class FleetTask:
    """One client's pipeline call, as a Dask worker receives it."""

    pipeline: str  # "baseline" or "incremental"
    db: str  # the shared database every task of this job writes its client into
    data_dir: str
    client: str
    day: int


@dataclass(frozen=True)
class TaskResult:
    """What one task measured: its own wall and CPU time and its peak memory."""

    client: str
    error: str  # empty when the call succeeded; else the one-line reason
    wall_s: float = 0.0
    cpu_s: float = 0.0  # CPU-seconds of the worker process over the call (every thread)
    peak_mib: float = 0.0  # private memory at its peak, above what it was before the call
    worker_peak_mib: float = 0.0  # the worker process's private memory at that peak
    rows_processed: int = 0
    rows_written: int = 0


def quiet(line: str) -> None:
    """A `say` for code run inside a task: its progress lines are not the driver's."""


def run_task(task: FleetTask) -> TaskResult:
    """Inside a Dask worker: one client's pipeline call, measured.

    Unusable input is the client's own failure, returned with its reason (running it
    again cannot mend a feed); anything else raises, and Dask runs the task again.
    """
    # No gc.collect() first, as the single benchmark's worker does: in a Dask worker it
    # costs tens of milliseconds a task (docs/fleet.md), which the makespan would carry.
    before = anon_rss_mib()
    cpu, wall = time.process_time(), time.perf_counter()
    try:
        with AnonPeak() as peak:
            record = PIPELINES[task.pipeline](
                as_db(task.db), Path(task.data_dir), task.client, task.day
            )
    except InputError as exc:
        return TaskResult(task.client, str(exc))
    return TaskResult(
        client=task.client,
        error="",
        wall_s=time.perf_counter() - wall,
        cpu_s=time.process_time() - cpu,
        peak_mib=peak.peak_mib - before,
        worker_peak_mib=peak.peak_mib,
        rows_processed=record.rows_processed,
        rows_written=record.rows_written,
    )


def prepare_client(db: str, data_dir: str, client: str, day: int) -> str:
    """Inside a Dask worker: a client's state brought to day N-1; its one-line failure,
    or an empty string."""
    try:
        populate_historical_data(as_db(db), Path(data_dir), client, day, quiet)
    except InputError as exc:
        return str(exc)
    return ""


def prepare_all(dask: Any, state: Db, cfg: BenchConfig, clients: list[str]) -> dict[str, str]:
    """Every client's state brought to day N-1, one task each; the clients that failed,
    with their one-line reasons (a task that raised is run again first)."""
    from distributed import wait

    run = uuid.uuid4().hex[:8]
    futures = {
        client: dask.submit(
            prepare_client,
            str(state),
            str(cfg.data_dir),
            client,
            cfg.day,
            key=f"prepare-{run}-{client}",
            retries=TASK_RETRIES,
        )
        for client in clients
    }
    wait(list(futures.values()))
    failed = {}
    for client, future in futures.items():
        try:
            why = future.result()
        except Exception as exc:
            why = " ".join(f"task failed: {type(exc).__name__}: {exc}".split())
        if why:
            failed[client] = why
    return failed


def is_local(address: str) -> bool:
    """Whether a scheduler address is on this machine (then its workers can share an
    SQLite file here)."""
    host = urlsplit(address if "://" in address else f"tcp://{address}").hostname or ""
    if host in ("localhost", socket.gethostname()) or address.startswith("inproc://"):
        return True
    with contextlib.suppress(ValueError):
        return ipaddress.ip_address(host).is_loopback
    return False


@contextlib.contextmanager
def cluster(scheduler: str | None, workers: int) -> Iterator[Any]:
    """A Dask client: of a LocalCluster of `workers` processes, one thread each and
    Polars limited to one thread in each (tasks side by side never oversubscribe the
    cores), or of the scheduler at `scheduler`."""
    from distributed import Client, LocalCluster

    if scheduler:
        try:
            client = Client(scheduler, timeout=10)
        except (OSError, TimeoutError) as exc:
            raise InputError(f"--scheduler {scheduler}: cannot reach it ({exc})") from None
        with client:
            yield client
        return
    with (
        LocalCluster(
            n_workers=workers,
            threads_per_worker=1,
            processes=True,
            dashboard_address=":0",  # a free port: never one another cluster holds
            silence_logs=logging.ERROR,
            env={"POLARS_MAX_THREADS": "1"},
        ) as local,
        Client(local) as client,
    ):
        yield client


def night(
    dask: Any,
    tasks: list[FleetTask],
    label: str,
    task_fn: Callable[[FleetTask], TaskResult] = run_task,
) -> tuple[float, list[TaskResult], int]:
    """One job: every client's task submitted at once. Its makespan (the wall time until
    the last task ends), the results by client, and how many tasks were run again."""
    from distributed import as_completed

    start = time.perf_counter()
    # Keys unique to this run: another fleet on the same scheduler never shares a result.
    run = uuid.uuid4().hex[:8]
    futures = {
        dask.submit(task_fn, task, key=f"{label}-{run}-{task.client}", retries=TASK_RETRIES): task
        for task in tasks
    }
    results = []
    for future in progress(as_completed(futures), label, total=len(futures), unit="client"):
        try:
            results.append(future.result())
        except Exception as exc:  # it failed every try: the client's failure, not the night's
            why = f"task failed: {type(exc).__name__}: {exc}"
            results.append(TaskResult(futures[future].client, " ".join(why.split())))
    makespan = time.perf_counter() - start
    again = dask.run_on_scheduler(tasks_run_again, keys=[f.key for f in futures])
    return makespan, sorted(results, key=lambda r: r.client), again


def tasks_run_again(dask_scheduler: Any, keys: list[str]) -> int:
    """On the scheduler: how many of these tasks ran more than once (a worker lost in the
    middle of one, or a retry after an exception)."""
    count = 0
    for key in keys:
        task = dask_scheduler.tasks.get(key)
        if task is not None and (task.suspicious > 0 or task.retries < TASK_RETRIES):
            count += 1
    return count


def fleet_clients(cfg: BenchConfig, asked: list[str]) -> list[str]:
    """The clients of the night: those asked, or every client folder of the data folder."""
    clients = asked or sorted(
        p.name
        for p in cfg.data_dir.iterdir()
        if p.is_dir() and p.name != "static" and not p.name.startswith(".")
    )
    missing = [c for c in clients if not (cfg.data_dir / c).is_dir()]
    if missing or not clients:
        raise InputError(f"{cfg.data_dir}: no client folder {', '.join(missing) or '(none found)'}")
    return clients


@dataclass(frozen=True)
class FleetOptions:
    """The fleet's own options."""

    clients: list[str]  # empty: every client folder
    scheduler: str | None
    workers: int
    task_fn: Callable[[FleetTask], TaskResult] = run_task  # the tests' faults come in here


def run_fleet(
    cfg: BenchConfig, options: FleetOptions, scratch: Path, state: Db, say: Say
) -> dict[str, Any]:
    """The night's job both ways, `cfg.repeat` times, on one cluster; the fleet record.

    Every client's state is first brought to day N-1 in `state` (tasks too). Then each
    repeat runs the full refresh of every client from a copy of it, and the incremental
    step of every client from another copy: every task of a job writes into that job's
    one database. Parity is checked per client on the last repeat's two answers.
    """
    if options.scheduler and not pg.is_url(cfg.db) and not is_local(options.scheduler):
        raise InputError(
            f"--scheduler {options.scheduler}: workers elsewhere cannot share the SQLite file"
            f" {cfg.db}; give --db a postgresql:// URL"
        )
    clients = fleet_clients(cfg, options.clients)
    with cluster(options.scheduler, options.workers) as dask:
        workers = len(dask.scheduler_info()["workers"])
        say(f"fleet: {len(clients)} clients on {workers} Dask workers")
        with contextlib.closing(connect(state)) as con:
            ensure_schema(con, say=quiet)
        failed = prepare_all(dask, state, cfg, clients)
        good = [c for c in clients if c not in failed]
        jobs: dict[str, list[dict[str, Any]]] = {"baseline": [], "incremental": []}
        for repeat in range(cfg.repeat):
            for way in jobs:
                db = scratch_db(cfg, scratch, f"fleet-{way}")
                copy_db(state, db)
                tasks = [FleetTask(way, str(db), str(cfg.data_dir), c, cfg.day) for c in good]
                label = f"{way} {repeat + 1}/{cfg.repeat}"
                makespan, results, again = night(dask, tasks, label, options.task_fn)
                jobs[way].append({"makespan_s": makespan, "again": again, "results": results})
    for way in jobs:  # a client that failed in any repeat is a failed client
        for run in jobs[way]:
            for result in run["results"]:
                if result.error:
                    failed.setdefault(result.client, result.error)
    return fleet_record(cfg, clients, failed, jobs, scratch, workers)


def fleet_record(
    cfg: BenchConfig,
    clients: list[str],
    failed: dict[str, str],
    jobs: dict[str, list[dict[str, Any]]],
    scratch: Path,
    workers: int,
) -> dict[str, Any]:
    """Figures of both ways, and every client's parity on the last repeat's answers."""
    parity: dict[str, Any] = {}
    with contextlib.closing(connect(fleet_answer(cfg, scratch))) as con:
        ok = [c for c in clients if c not in failed]
        for client in ok:
            baseline = scratch_db(cfg, scratch, "fleet-baseline")
            copy_client_rows(baseline, con, client, FULL_REFRESH_TABLES)
            parity[client] = check_parity(con, client)["ok"]
    ways = {way: way_figures(runs) for way, runs in jobs.items()}
    base, inc = ways["baseline"], ways["incremental"]
    return {
        "clients": clients,
        "workers": workers,
        "failed": failed,
        "parity": parity,
        "parity_ok": bool(parity) and all(parity.values()),
        "ways": ways,
        "ratios": {
            "makespan": base["makespan_s"]["median"] / max(inc["makespan_s"]["median"], 1e-9),
            "cpu_s": base["cpu_s"]["median"] / max(inc["cpu_s"]["median"], 1e-9),
        },
    }


def fleet_answer(cfg: BenchConfig, scratch: Path) -> Db:
    """The database holding the last repeat's incremental state of every client, with
    the full refresh's answer beside it (kept out of the record: a URL may hold a
    password)."""
    return scratch_db(cfg, scratch, "fleet-incremental")


def way_figures(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """One way's figures over the repeats: makespan, CPU-seconds summed over its tasks,
    peak memory per task, rows, and the tasks run again."""
    done = [[r for r in run["results"] if not r.error] for run in runs]
    last = done[-1] if done else []

    def spread(values: list[float]) -> dict[str, Any]:
        return asdict(summarize(values))

    return {
        "makespan_s": spread([run["makespan_s"] for run in runs]),
        "cpu_s": spread([sum(r.cpu_s for r in results) for results in done]),
        "task_wall_s": spread([sum(r.wall_s for r in results) for results in done]),
        "peak_mib_per_task": spread([r.peak_mib for r in last]),
        "worker_peak_mib": spread([r.worker_peak_mib for r in last]),
        "rows_processed": sum(r.rows_processed for r in last),
        "rows_written": sum(r.rows_written for r in last),
        "tasks_run_again": sum(run["again"] for run in runs),
        "tasks": [asdict(r) for r in last],
    }


def default_workers() -> int:
    """A worker process per core."""
    return max(1, os.cpu_count() or 1)
