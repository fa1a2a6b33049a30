"""The two pipelines: the baseline's full refresh and the incremental step.

Owns what each pipeline reads, how the incremental step resumes inside the archive,
merges new rows into the stored days and commits them with its checkpoint. Knows
nothing of timing, processes or the report."""

from __future__ import annotations

import contextlib
import zipfile
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import polars as pl

from incremental_bench.archive import (
    READABLE_METHODS,
    RESUMABLE_METHODS,
    Member,
    archive_path,
    inflate_all,
    locate_member,
)
from incremental_bench.blocks import Header, LineBlocks, ReadPlan, member_header, scan_archive
from incremental_bench.clock import Stopwatch, progress
from incremental_bench.config import (
    ConflictError,
    CorruptArchive,
    Restated,
    Say,
    StaleDayError,
)
from incremental_bench.deflate import (
    AccessPoint,
    CompressedPrefix,
    TrackedInflate,
    TrackedRead,
    TrackedStored,
)
from incremental_bench.store import (
    Checkpoint,
    ClientState,
    Connection,
    connect,
)
from incremental_bench.transform import (
    Lookups,
    PipelineArtifacts,
    check_rejections,
    finalize,
    iso,
    load_lookups,
    local_split,
    process_blocks,
    sum_additive,
    top_five,
)


@dataclass
class RunRecord:
    """What one pipeline run did and how long each stage took."""

    pipeline: str
    stages_s: dict[str, float]
    counters: dict[str, int]
    rows_processed: int
    rows_written: int
    bytes_inflated: int
    archive_bytes: int
    latest_date: str | None
    note: str = ""  # restatements and fallbacks, in words
    read_mode: str = ""  # incremental: how it read the archive (resumed, read whole, rebuilt)
    top_five: list[dict] = field(default_factory=list)  # of the rows processed (PipelineArtifacts)
    local_split: list[dict] = field(default_factory=list)
    dialect: dict[str, Any] = field(default_factory=dict)  # how the CSV is written (Header)


def run_record(
    pipeline: str,
    clock: Stopwatch,
    artifacts: PipelineArtifacts,
    blocks: LineBlocks,
    rows_written: int,
    **more: Any,
) -> RunRecord:
    """What a run that read `blocks` and computed `artifacts` did; `more` overrides."""
    with clock.stage("transform"):  # the day's summary is part of the run's answer
        top = top_five(artifacts.aggregated, artifacts.latest_date).to_dicts()
        split = local_split(artifacts.aggregated, artifacts.latest_date).to_dicts()
    fields = {
        "pipeline": pipeline,
        "stages_s": clock.stages_s,
        "counters": artifacts.counters,
        "rows_processed": artifacts.rows_read,
        "rows_written": rows_written,
        "bytes_inflated": blocks.inflated,
        "archive_bytes": blocks.size,
        "latest_date": iso(artifacts.latest_date),
        "top_five": top,
        "local_split": split,
        "dialect": {**blocks.header.dialect(), "quoted_fields": blocks.quoted},
    }
    return RunRecord(**{**fields, **more})


def check_archives(data_dir: Path, client: str, day: int) -> tuple[Path, list[str]]:
    """Open every archive of days 1..`day` and read its header, before any work: one
    clear error for the first that is missing, corrupt or without the seven columns.
    Returns day `day`'s archive and the extra columns of its CSV (read past)."""
    paths = [archive_path(data_dir, client, d) for d in range(1, day + 1)]
    headers = [member_header(locate_member(path, d)) for d, path in enumerate(paths, start=1)]
    return paths[-1], headers[-1].extras


def run_baseline_benchmark(db: Path, data_dir: Path, client: str, day: int) -> RunRecord:
    """Baseline: recompute the client from the whole day-N archive; full refresh write."""
    clock = Stopwatch()
    lookups = load_lookups(data_dir)
    path = archive_path(data_dir, client, day)
    with clock.stage("read"):
        blocks = scan_archive(path, day)
    artifacts = process_blocks(blocks, blocks.header.lines + 1, client, lookups, clock)
    with clock.stage("transform"):
        check_rejections(path, artifacts, "rows")
        table = finalize(artifacts.aggregated)
    with clock.stage("write"), contextlib.closing(connect(db)) as con:
        ClientState(con, client).replace_full_refresh(table, artifacts, day)
    return run_record("baseline", clock, artifacts, blocks, table.height)


def run_optimized_benchmark(db: Path, data_dir: Path, client: str, day: int) -> RunRecord:
    """Incremental: process only the rows past the checkpoint and merge them in."""
    with contextlib.closing(connect(db)) as con:
        return incremental_step(con, data_dir, client, day)


def nothing_new(cp: Checkpoint) -> RunRecord:
    """The incremental step's record on the day its checkpoint already holds."""
    return RunRecord(
        pipeline="incremental",
        stages_s={},
        counters={},
        rows_processed=0,
        rows_written=0,
        bytes_inflated=0,
        archive_bytes=0,
        latest_date=cp.last_transaction_date,
        note="no-op",
    )


def incremental_step(con: Connection, data_dir: Path, client: str, day: int) -> RunRecord:
    """Bring `client` from its checkpoint to `day` in one transaction.

    No-op on the day the checkpoint holds; refuses an older day. If the archive does
    not start with the bytes already processed (history restated), the client is
    rebuilt from the full archive, in the same transaction.
    """
    clock = Stopwatch()
    lookups = load_lookups(data_dir)
    path = archive_path(data_dir, client, day)
    state = ClientState(con, client)
    cp = state.checkpoint()
    if cp and day == cp.last_day:
        return nothing_new(cp)
    if cp and day < cp.last_day:
        raise StaleDayError(
            f"{path}: checkpoint of {client} already holds day {cp.last_day}; "
            f"refusing to go back to day {day}"
        )
    with clock.stage("read"):
        member = locate_member(path, day)
        header = member_header(member)
    new = read_new_rows(state, member, header, cp, day, lookups, clock)
    artifacts = new.artifacts
    with clock.stage("transform"):
        check_rejections(path, artifacts, "new rows")
    kept = None if new.rebuilt else cp  # the state the new rows add to
    latest = max(
        [d for d in (kept and kept.last_transaction_date, iso(artifacts.latest_date)) if d],
        default=None,
    )
    after = Checkpoint(
        last_day=day,
        bytes_processed=new.blocks.size,
        lines_processed=(kept.lines_processed if kept else header.lines) + artifacts.lines_read,
        prefix_blake3=new.blocks.fingerprint or "",
        last_transaction_date=latest,
        ends=new.blocks.ends,
        open_quote=new.blocks.open_quote,
    )
    with clock.stage("write"):
        rows_written = merge_new_rows(state, cp, after, new, clock)
    return run_record(
        "incremental",
        clock,
        artifacts,
        new.blocks,
        rows_written,
        bytes_inflated=new.inflated,  # over every attempt
        latest_date=latest,  # of the whole state, not only of the new rows
        note="; ".join(new.notes),
        read_mode=new.read_mode,
    )


def merge_new_rows(
    state: ClientState,
    started_from: Checkpoint | None,
    after: Checkpoint,
    new: NewRows,
    clock: Stopwatch,
) -> int:
    """Merge the new rows into the stored days they touch, in one transaction; rows written.

    Also stores the rejected rows, the next checkpoint and the next access points. A
    rebuilt client's rows are all replaced.
    """
    with state.change():
        if state.checkpoint() != started_from:
            raise ConflictError(
                f"{state.client}: another run moved the checkpoint while day {after.last_day}"
                " was being processed; nothing written, run again"
            )
        if new.rebuilt or started_from is None:
            state.clear()
        written = merge_days(state, new.artifacts.aggregated, clock)
        state.add_rejected(new.artifacts, after.last_day)
        state.advance(after, new.points)
    return written


def merge_days(state: ClientState, aggregated: pl.DataFrame, clock: Stopwatch) -> int:
    """Add new aggregates to the stored rows of the days they touch (inside the caller's
    transaction): additive columns summed, derived ones recomputed; rows written.

    The stored rows are read inside the transaction, so no other writer can change
    them between the read and the write.
    """
    touched = sorted({str(d) for d in aggregated["transaction_date"].unique()})
    with clock.stage("transform"):
        merged = pl.concat([state.stored_days(touched), aggregated])
        table = finalize(sum_additive(merged))
    state.replace_days(touched, table)
    return table.height


# How the incremental path reads a day archive: resume where it can, else read whole.


def choose_access_point(
    member: Member, cp: Checkpoint, points: list[AccessPoint]
) -> tuple[AccessPoint | None, CompressedPrefix, str]:
    """The latest stored access point that this archive still has, or why there is none.

    A point is usable when the compressed bits before it hash as they did: deflate
    decodes the same bits to the same text, so the text before it is the one processed.
    """
    prefix = CompressedPrefix(member)
    if member.method not in RESUMABLE_METHODS:
        method = READABLE_METHODS.get(member.method, f"method {member.method}")
        return (
            None,
            prefix,
            f"the CSV member is {method}-compressed: only stored and deflate resume",
        )
    if not points:
        return None, prefix, "no access point stored (a checkpoint without one)"
    best = None
    for point in points:  # in stream order: the prefix hash moves forward only
        if point.offset > cp.bytes_processed:
            continue
        if prefix.digest_at(point.compressed_offset, point.bits) == point.compressed_blake3:
            best = point
    if best is None:
        return (
            None,
            prefix,
            "the compressed bytes before every stored access point differ"
            " (another compressor or level, or history restated)",
        )
    return best, prefix, ""


def verified_plan(cp: Checkpoint, point: AccessPoint | None, hashing: bool) -> ReadPlan:
    """A read past the checkpoint that first proves the processed text unchanged.

    From an access point: the text between it and the old end must hash as stored
    with the point. From the start: the whole processed text must give the
    checkpoint's fingerprint.
    """
    plan = ReadPlan(
        skip=cp.bytes_processed,
        check_ends=cp.ends,
        check_digest=cp.prefix_blake3,
        prior_ends=cp.ends,
        prior_digest=cp.prefix_blake3,
        hashing=hashing,
        open_quote=cp.open_quote,
    )
    if point is None:
        return plan
    return replace(
        plan,
        base=point.offset,
        check_ends=[cp.bytes_processed],
        check_digest=point.tail_blake3,
        ends_line=point.window.endswith(b"\n"),
    )


def incremental_inflate(
    member: Member, start: AccessPoint | None = None, prefix: CompressedPrefix | None = None
) -> TrackedRead | Iterator[bytes]:
    """The incremental path's read: one that leaves access points where the method allows."""
    if member.method == zipfile.ZIP_DEFLATED:
        return TrackedInflate(member, start, prefix)
    if member.method == zipfile.ZIP_STORED:
        return TrackedStored(member, start, prefix)
    return inflate_all(member)


@dataclass
class NewRows:
    """What the incremental path read from a day archive, and how it read it."""

    artifacts: PipelineArtifacts
    blocks: LineBlocks  # the read that succeeded: the CSV's size and fingerprint
    points: list[AccessPoint]  # block boundaries for the next run to resume from
    inflated: int  # bytes inflated, over every attempt
    read_mode: str = ""  # resumed, read whole (why), rebuilt
    notes: list[str] = field(default_factory=list)  # every fallback and restatement

    @property
    def rebuilt(self) -> bool:
        """History was restated: the client is rebuilt from the whole archive."""
        return self.read_mode.startswith("rebuilt")


def read_new_rows(
    state: ClientState,
    member: Member,
    header: Header,
    cp: Checkpoint | None,
    day: int,
    lookups: Lookups,
    clock: Stopwatch,
) -> NewRows:
    """Process the rows past the checkpoint, inflating as little of the archive as is safe.

    In order: resume from the latest access point whose compressed prefix the archive
    still has (inflate only the tail); else inflate it whole and verify the processed
    bytes against the fingerprint; if those changed (history restated), rebuild the
    client from the whole archive. Every fallback is noted, none is silent.
    """
    notes: list[str] = []
    inflated = 0

    def attempt(plan: ReadPlan, mode: str, **start: Any) -> NewRows:
        nonlocal inflated
        chunks = incremental_inflate(member, **start)
        blocks = LineBlocks(member.path, chunks, plan, header)
        first_line = cp.lines_processed + 1 if cp and plan.skip else header.lines + 1
        try:
            artifacts = process_blocks(blocks, first_line, state.client, lookups, clock)
        finally:
            inflated += blocks.inflated
        points = (
            chunks.access_points() if isinstance(chunks, TrackedInflate | TrackedStored) else []
        )
        return NewRows(artifacts, blocks, points, inflated, mode, notes)

    if cp is None:
        return attempt(ReadPlan(hashing=True), "read whole: first run")
    with clock.stage("verify"):  # hashing the compressed history to prove it unchanged
        point, prefix, why = choose_access_point(member, cp, state.access_points())
    try:
        if point is not None:
            try:
                plan = verified_plan(cp, point, hashing=True)
                mode = f"resumed at CSV byte {point.offset:,}"
                return attempt(plan, mode, start=point, prefix=prefix)
            except CorruptArchive as exc:
                # The tail does not inflate from the point: read whole, which either
                # works or fails with the archive's own error.
                why = f"resuming from the access point failed ({exc})"
        notes.append(f"{member.path}: read whole: {why}")
        return attempt(verified_plan(cp, None, hashing=True), f"read whole: {why}")
    except Restated as exc:
        notes.append(
            f"restatement detected in {state.client} day {day} ({exc}):"
            " rebuilt from the full archive"
        )
    # History restated: every row of the archive, from the start.
    return attempt(ReadPlan(hashing=True), "rebuilt: history restated")


def populate_historical_data(
    db: Path, data_dir: Path, client: str, day: int, say: Say
) -> dict[str, Any]:
    """Bring the client's incremental state in `db` to exactly days 1..day-1.

    A stored state is reused only when its checkpoint is day-1 and its fingerprint
    matches that day's archive; a state behind it is carried forward (each step checks
    its own prefix); anything else is cleared and replayed from day 1.
    """
    target = day - 1
    clock = Stopwatch()
    notes = []
    with clock.stage("warm-up"), contextlib.closing(connect(db)) as con:
        first, how = starting_day(ClientState(con, client), data_dir, target)
        for d in progress(range(first, target + 1), f"{client}: replaying days"):
            record = incremental_step(con, data_dir, client, d)
            if record.note:
                notes.append(record.note)
                say(record.note)
    say(f"state of {client} at day {target}: {how}")
    return {
        "target_day": target,
        "days_replayed": list(range(first, target + 1)),
        "how": how,
        "notes": notes,
        "seconds": clock.stages_s["warm-up"],
    }


def starting_day(state: ClientState, data_dir: Path, target: int) -> tuple[int, str]:
    """The first day to replay to reach `target`, and how the stored state was used.

    Clears the client's state when it cannot be used.
    """
    cp = state.checkpoint()
    if cp and cp.last_day == target and state_matches_archive(state, cp, data_dir):
        return target + 1, f"reused the stored state of day {target} (fingerprint verified)"
    if cp and cp.last_day < target:
        return cp.last_day + 1, f"carried the stored state forward from day {cp.last_day}"
    with state.change():
        state.clear()
    how = f"replayed days 1..{target}" if target else "nothing to replay: day 1 starts empty"
    if cp:
        how += f" (stored state was day {cp.last_day}, not {target})"
    return 1, how


def state_matches_archive(state: ClientState, cp: Checkpoint, data_dir: Path) -> bool:
    """True when the checkpoint describes its day's whole archive, byte for byte.

    Through an access point when one still fits (hash the compressed prefix, inflate
    the short tail); else by inflating the archive and checking the fingerprint.
    """
    path = archive_path(data_dir, state.client, cp.last_day)
    member = locate_member(path, cp.last_day)
    if member.size != cp.bytes_processed:
        return False

    def matches(chunks: Iterable[bytes], point: AccessPoint | None) -> bool:
        try:
            plan = verified_plan(cp, point, False)
            for _ in LineBlocks(path, chunks, plan, member_header(member)):
                return False  # longer than what was processed
        except Restated:
            return False
        return True

    point, prefix, _ = choose_access_point(member, cp, state.access_points())
    if point is not None:
        with contextlib.suppress(CorruptArchive):  # then check the fingerprint instead
            return matches(incremental_inflate(member, point, prefix), point)
    return matches(inflate_all(member), None)
