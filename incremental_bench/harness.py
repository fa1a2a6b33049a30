"""The harness: fresh processes, repeats, the sweep, the floors, memory_profiler tables.

Owns running the measured calls in their own processes from copies of one state, the
inflaters' comparison and each stage's floor. Knows nothing of the report's words."""

from __future__ import annotations

import builtins
import collections
import contextlib
import json
import os
import statistics
import subprocess
import sys
import zipfile
from collections.abc import Callable, Iterable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import blake3
import polars as pl
from isal import isal_zlib

from incremental_bench.archive import (
    Member,
    archive_path,
    compressed_pieces,
    inflate_all,
    locate_member,
)
from incremental_bench.blocks import ReadPlan, member_header, read_header, verify_resume
from incremental_bench.clock import Stopwatch, progress
from incremental_bench.config import (
    FLOOR_TRIES,
    FULL_REFRESH_TABLES,
    HEADER_BYTES,
    READ_CHUNK_BYTES,
    SALES_COLUMN_NAMES,
    Z_BUF_ERROR,
    Z_NO_FLUSH,
    Z_OK,
    Z_STREAM_END,
    BenchConfig,
    CorruptArchive,
    InputError,
    WorkerError,
)
from incremental_bench.deflate import AccessPoint, BlockInflater, TrackedInflate
from incremental_bench.parity import check_parity
from incremental_bench.parse import parse_block
from incremental_bench.peers import PEERS, peer_parity
from incremental_bench.pipelines import choose_access_point, incremental_step
from incremental_bench.store import (
    Checkpoint,
    Connection,
    Db,
    connect,
    copy_client_rows,
    copy_db,
    create_empty,
    delete_client,
    delete_days,
    drop_db,
    ensure_schema,
    existing_days,
    flush_pending,
    insert_statements,
    move_db,
    read_access_points,
    read_checkpoint,
    run_statements,
    scratch_db,
    stored_rows,
    transaction,
    write_access_points,
    write_checkpoint,
)
from incremental_bench.transform import finalize, load_lookups, process_transactions, sum_additive
from incremental_bench.worker import PIPELINES, RunResult, RunSpec


def run_in_fresh_process(
    pipeline: str, state: Db, cfg: BenchConfig, day: int, mode: str, scratch: Path
) -> RunResult:
    """One pipeline call in a new interpreter, on its own copy of `state` (then removed)."""
    db = scratch_db(cfg, scratch, f"run-{pipeline}")
    copy_db(state, db)
    # Flush what earlier runs and this copy left for the disk to write, so that a run's
    # own commit does not wait behind them (docs/measurement.md).
    flush_pending(db)
    out = scratch / f"result-{pipeline}.json"
    spec = RunSpec(
        pipeline=pipeline,
        db=str(db),
        data_dir=str(cfg.data_dir),
        client=cfg.client,
        day=day,
        mode=mode,
        out=str(out),
        driver_pid=os.getpid(),
    )
    cmd = [sys.executable, "-m", "incremental_bench.worker_entry", json.dumps(asdict(spec))]
    # The package's folder on the worker's path, from wherever the driver was started.
    home = str(Path(__file__).resolve().parent.parent)
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(filter(None, [home, os.environ.get("PYTHONPATH")])),
    }
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if proc.returncode == 2:
        raise InputError(proc.stderr.strip().splitlines()[-1].removeprefix("main.py: error: "))
    if proc.returncode != 0:
        tail = (proc.stderr.strip().splitlines() or [f"exit code {proc.returncode}"])[-1]
        raise WorkerError(f"{pipeline} run failed in its process: {tail}")
    return RunResult.from_json(out.read_text())


@dataclass
class Measurement:
    """The main measurement: each pipeline's warm-up and timed repeats, and its output."""

    warmups: dict[str, RunResult]
    runs: dict[str, list[RunResult]]
    final: Db  # the last repeat's database, holding both answers for the parity check


def measure(cfg: BenchConfig, state: Db, scratch: Path) -> Measurement:
    """Warm up, then time every repeat of both pipelines, each from its own copy of `state`.

    Repeats alternate baseline, incremental and the peers, so that drift of a shared,
    noisy machine hits all alike. Each peer's last answer stays in run-<peer>.db.
    """
    names = [*PIPELINES, *(PEERS if cfg.peers else ())]
    warmups = {p: run_in_fresh_process(p, state, cfg, cfg.day, "memory", scratch) for p in names}
    runs: dict[str, list[RunResult]] = {p: [] for p in names}
    for _ in progress(range(cfg.repeat), "timed repeats", unit="repeat"):
        for pipeline in names:
            runs[pipeline].append(
                run_in_fresh_process(pipeline, state, cfg, cfg.day, "time", scratch)
            )
    # The last incremental state, with the last baseline's answer beside it.
    final = scratch_db(cfg, scratch, "final")
    move_db(scratch_db(cfg, scratch, "run-incremental"), final)
    with contextlib.closing(connect(final)) as con:
        baseline = scratch_db(cfg, scratch, "run-baseline")
        copy_client_rows(baseline, con, cfg.client, FULL_REFRESH_TABLES)
    return Measurement(warmups, runs, final)


def median_time(run: Callable[[], object], undo: Callable[[], object] = lambda: None) -> float:
    """Median wall time of FLOOR_TRIES calls of `run`, after one untimed call (so warm).

    `undo`, called after each call outside the clock, puts back what `run` changed. The
    disk's pending writes are flushed before each call, as before each pipeline run.
    """
    times = []
    for attempt in range(FLOOR_TRIES + 1):
        os.sync()
        clock = Stopwatch()
        with clock.stage("run"):
            run()
        undo()
        if attempt:
            times.append(clock.stages_s["run"])
    return statistics.median(times)


def measure_inflaters(cfg: BenchConfig) -> dict[str, Any]:
    """Inflate the whole day-N member with each inflater used here (median_time).

    Outside the pipelines' timings; it tells the reader how much the choice of
    inflater weighs.
    """
    member = locate_member(archive_path(cfg.data_dir, cfg.client, cfg.day), cfg.day)
    if member.method != zipfile.ZIP_DEFLATED:
        return {}  # zipfile reads other methods: no inflater to compare
    readers: dict[str, Callable[[], Iterable[bytes]]] = {
        "ISA-L (isal)": lambda: inflate_all(member),
        "zlib (Z_BLOCK, ctypes)": lambda: TrackedInflate(member),
    }
    seconds = {
        name: median_time(lambda read=read: collections.deque(read(), maxlen=0))
        for name, read in readers.items()
    }
    return {"bytes": member.size, "compressed_bytes": member.compressed_size, "seconds": seconds}


def inflate_tail(point: AccessPoint, last_byte: int, tail: bytes) -> Iterator[bytes]:
    """The text of a deflate stream from an access point, zlib alone: no hashing, no CRC,
    no boundaries noted (the inflate floor). `last_byte`: the byte before the point."""
    inflater = BlockInflater()
    code = Z_OK
    try:
        inflater.prime(point.bits, last_byte, point.window)
        for start in range(0, len(tail), READ_CHUNK_BYTES):
            inflater.feed(tail[start : start + READ_CHUNK_BYTES])
            # Until zlib wants more input (all taken, room left) or the stream ends.
            while code == Z_OK and (inflater.strm.avail_in or not inflater.strm.avail_out):
                code, text = inflater.inflate(Z_NO_FLUSH)
                yield text
            if code == Z_BUF_ERROR:
                code = Z_OK  # nothing was pending: zlib wants the next piece
            if code != Z_OK:
                break
    finally:
        inflater.close()
    if code != Z_STREAM_END:
        raise CorruptArchive(f"the tail past an access point does not inflate (zlib {code})")


@dataclass(frozen=True)
class Floors:
    """Each stage's floor in seconds, and the work the floors did: the bytes they
    inflated, the records they parsed and the rows they wrote, for the results to set
    beside the pipeline's own (a floor of other work would be no floor)."""

    seconds: dict[str, float]
    work: dict[str, int]


def measure_full_floors(cfg: BenchConfig, state: Db, scratch: Path) -> Floors | None:
    """What each stage of the day-N full refresh costs at least here, done alone.

    Each stage's work on the whole archive in one call, its input ready before the clock
    (median_time, warm, outside the pipelines' timings): read: ISA-L inflating the whole
    member from its compressed bytes in memory; parse: Polars' CSV reader on the whole
    text, every field as text, no checks; transform: the shared transformation on every
    row at once and the table's derived columns; write: the database alone replacing
    the client's full-refresh rows with the same rows, parameters built beforehand
    (SQLite: the same multi-row INSERTs; PostgreSQL: one COPY), and committing (no
    pandas, no conversions).
    """
    member = locate_member(archive_path(cfg.data_dir, cfg.client, cfg.day), cfg.day)
    if member.method != zipfile.ZIP_DEFLATED:
        return None
    lookups = load_lookups(cfg.data_dir)
    compressed = b"".join(compressed_pieces(member))
    text = isal_zlib.decompress(compressed, -15)
    header = read_header(member.path, text[:HEADER_BYTES])
    body = text[header.length :]
    names = {f"column_{i}": pl.String for i in range(len(header.columns))}
    rows = parse_block(body, header.lines + 1, header)[0]
    work = {"bytes_inflated": len(text), "rows_processed": rows.height}
    del text

    def transform() -> pl.DataFrame:
        return finalize(process_transactions(rows, cfg.client, lookups).aggregated)

    values = transform().rows()
    work["rows_written"] = len(values)
    db = scratch_db(cfg, scratch, "floors-full")
    copy_db(state, db)
    with contextlib.closing(connect(db)) as con:
        inserts = insert_statements(con, "processed_sales_full_refresh", SALES_COLUMN_NAMES, values)

        def clear() -> None:
            """As each baseline run starts: no full-refresh rows of the client."""
            with transaction(con):
                delete_client(con, cfg.client, ("processed_sales_full_refresh",))

        def write() -> None:
            with transaction(con):
                delete_client(con, cfg.client, ("processed_sales_full_refresh",))
                run_statements(con, inserts)

        clear()
        seconds = {
            "read": median_time(lambda: isal_zlib.decompress(compressed, -15)),
            "parse": median_time(
                lambda: pl.read_csv(body, has_header=False, schema=names, raise_if_empty=False)
            ),
            "transform": median_time(transform),
            "write": median_time(write, undo=clear),
        }
    drop_db(db)
    return Floors(seconds, work)


def tail_reader(
    member: Member, point: AccessPoint, history: bytes
) -> tuple[Callable[[], Iterator[bytes]], bytes]:
    """The read floor's call, and the text it gives: zlib inflating the compressed tail
    alone, or reading the tail of a stored member (its text is its bytes)."""
    if member.method == zipfile.ZIP_STORED:
        return lambda: compressed_pieces(member, point.compressed_offset), b"".join(
            compressed_pieces(member, point.compressed_offset)
        )
    tail = b"".join(compressed_pieces(member, point.compressed_offset))
    last_byte = history[-1] if point.bits else 0
    return lambda: inflate_tail(point, last_byte, tail), b"".join(
        inflate_tail(point, last_byte, tail)
    )


def measure_floors(cfg: BenchConfig, state: Db, scratch: Path) -> Floors | None:
    """What each stage of day N's incremental step costs at least here, done alone.

    From the day N-1 state, with the access point the step resumes from, each stage's
    work without what our code adds to it (median_time, warm, outside the pipelines'
    timings): read: zlib inflating the tail alone (reading it, for a stored member);
    verify: BLAKE3 over the compressed history already in memory; parse: Polars' CSV
    reader on the new text alone (no checks, no line numbers); transform: the new rows'
    transformation without the merge into the stored days; write: the database alone
    deleting the touched days, inserting the merged rows with their parameters prebuilt
    (SQLite: the same multi-row INSERTs; PostgreSQL: one COPY), storing the checkpoint
    and the access points, and committing (no pandas, no conversions).
    Empty when the step would not resume from an access point.
    """
    db = scratch_db(cfg, scratch, "floors")
    copy_db(state, db)
    member = locate_member(archive_path(cfg.data_dir, cfg.client, cfg.day), cfg.day)
    header, lookups = member_header(member), load_lookups(cfg.data_dir)
    with contextlib.closing(connect(db)) as con:
        cp = read_checkpoint(con, cfg.client)
        point = None
        if cp is not None:
            point, _, _ = choose_access_point(member, cp, read_access_points(con, cfg.client))
        if cp is None or point is None:
            return None
        history = b"".join(compressed_pieces(member, 0, point.compressed_offset))
        read, inflated = tail_reader(member, point, history)
        done = cp.bytes_processed - point.offset
        # As the step reads it: a line end completing the last line processed is not new.
        plan = ReadPlan(open_quote=bool(cp.open_quote))
        # The byte before the old end: in the inflated text, or before the point itself.
        last = inflated[done - 1 : done] if done else point.window[-1:] or b"\n"
        ends_line = last == b"\n"
        text = verify_resume(member.path, None, plan, ends_line, inflated[done:])
        names = {f"column_{i}": pl.String for i in range(len(header.columns))}
        rows = parse_block(text, cp.lines_processed + 1, header)[0]
        new = process_transactions(rows, cfg.client, lookups)
        touched = sorted({str(d) for d in new.aggregated["transaction_date"].unique()})
        stored = existing_days(con, cfg.client, touched)
        merged = finalize(sum_additive(pl.concat([stored, new.aggregated]))).rows()
        work = {
            "bytes_inflated": len(inflated),
            "rows_processed": rows.height,
            "rows_written": len(merged),
        }
        seconds = {
            "read": median_time(lambda: collections.deque(read(), maxlen=0)),
            "verify": median_time(lambda: blake3.blake3(history).digest()),
            "parse": median_time(
                lambda: pl.read_csv(text, has_header=False, schema=names, raise_if_empty=False)
            ),
            "transform": median_time(lambda: process_transactions(rows, cfg.client, lookups)),
            "write": step_write_floor(con, cfg.client, cp, merged, touched),
        }
        return Floors(seconds, work)


def step_write_floor(
    con: Connection, client: str, cp: Checkpoint, merged: list[tuple], touched: list[str]
) -> float:
    """The incremental step's write done alone (median_time): delete the touched days,
    insert `merged` in prebuilt multi-row INSERTs, store the checkpoint and the access
    points, commit; the stored rows are put back after each try."""
    before = stored_rows(con, client, touched)
    points = read_access_points(con, client)

    def write(inserts: list[tuple[str, list]]) -> None:
        with transaction(con):
            delete_days(con, client, touched)
            run_statements(con, inserts)
            write_checkpoint(con, client, cp)
            write_access_points(con, client, points)

    new_rows = insert_statements(con, "processed_sales", SALES_COLUMN_NAMES, merged)
    old_rows = insert_statements(con, "processed_sales", SALES_COLUMN_NAMES, before)
    return median_time(lambda: write(new_rows), undo=lambda: write(old_rows))


def run_sweep(cfg: BenchConfig, scratch: Path) -> list[dict[str, Any]]:
    """Both pipelines on every day 2..N-1: one run each, time and memory sampled together.

    Each day starts from the state the incremental run of the day before left (the
    sweep's own, from day 1), so every day is measured from exactly the day before,
    and the two answers of every day are checked for parity. Day N is the main
    measurement's warm-up.
    """
    if not cfg.sweep or cfg.day <= 2:
        return []
    state = scratch_db(cfg, scratch, "sweep-state")
    create_empty(state)
    with contextlib.closing(connect(state)) as con:
        ensure_schema(con, say=lambda line: None)
        incremental_step(con, cfg.data_dir, cfg.client, 1)
    days = []
    for day in progress(range(2, cfg.day), "sweep: days"):
        runs = {p: run_in_fresh_process(p, state, cfg, day, "memory", scratch) for p in PIPELINES}
        answer = scratch_db(cfg, scratch, "run-incremental")
        with contextlib.closing(connect(answer)) as con:
            baseline = scratch_db(cfg, scratch, "run-baseline")
            copy_client_rows(baseline, con, cfg.client, FULL_REFRESH_TABLES)
            parity = check_parity(con, cfg.client)
            with transaction(con):  # tomorrow's baseline starts client-free again
                delete_client(con, cfg.client, FULL_REFRESH_TABLES)
        move_db(answer, state)
        days.append({"day": day, "runs": runs, "parity": parity})
    return days


def profile_lines(cfg: BenchConfig, state: Db, scratch: Path) -> None:
    """Under `python -m memory_profiler main.py`: one line-by-line table per pipeline.

    memory_profiler installs `profile` in builtins. Registering incremental_step's code
    lets its lines show inside the one traced call of run_optimized_benchmark; the
    warm-up replays ran before, untraced.
    """
    line_profiler = getattr(builtins, "profile", None)
    if line_profiler is None:
        return
    line_profiler(incremental_step)
    for pipeline, fn in PIPELINES.items():
        db = scratch_db(cfg, scratch, f"profile-{pipeline}")
        copy_db(state, db)
        line_profiler(fn)(db, cfg.data_dir, cfg.client, cfg.day)


def peer_checks(cfg: BenchConfig, measured: Measurement, scratch: Path) -> dict[str, Any]:
    """Each measured peer's last answer against the baseline's (peer_parity)."""
    return {
        name: peer_parity(
            scratch_db(cfg, scratch, f"run-{name}"), PEERS[name].table, measured.final, cfg.client
        )
        for name in measured.runs
        if name in PEERS
    }
