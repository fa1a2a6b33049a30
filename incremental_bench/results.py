"""The results record: every figure of the report, computed once (the --json).

Owns turning measured runs into medians, ratios, floors, growth and parity figures, as
frozen records serialised in one place (Results.to_json) to the JSON of docs/spec.md
section 5. Knows nothing of Markdown."""

from __future__ import annotations

import contextlib
import datetime as dt
import os
import platform
import sqlite3
import statistics
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import memory_profiler
import pandas
import polars as pl
import psutil

from incremental_bench import pg
from incremental_bench.clock import Spread, summarize
from incremental_bench.config import FLAT_SHARE, FLOOR_TRIES, PIPELINE_NAMES, STAGES, BenchConfig
from incremental_bench.fleet import FleetOptions
from incremental_bench.harness import Floors, Measurement
from incremental_bench.peers import PEERS
from incremental_bench.store import describe, engine_version
from incremental_bench.worker import RunResult


@dataclass(frozen=True)
class RunFigures:
    """One sampled run of a pipeline (a sweep day, or day N's warm-up)."""

    wall_s: float
    peak_mib: float
    data_mib: float
    rows_processed: int
    bytes_inflated: int
    read_mode: str
    notes: list[str]


def run_figures(run: RunResult) -> RunFigures:
    """One sampled run's figures."""
    return RunFigures(
        wall_s=run.wall_s,
        peak_mib=run.peak_mib,
        data_mib=run.data_mib,
        rows_processed=run.record.rows_processed,
        bytes_inflated=run.record.bytes_inflated,
        read_mode=run.record.read_mode,
        notes=[run.record.note] if run.record.note else [],
    )


@dataclass(frozen=True)
class PipelineFigures:
    """A pipeline's figures: time from the timed repeats, memory from the warm-up."""

    wall_s: Spread
    peak_mib: float
    data_mib: float
    peak_rss_mib: float | None
    rss_before_mib: float
    warmup_wall_s: float  # untimed in the figures above; the sweep's day N
    hwm_delta_mib: Spread
    file_rss_delta_mib: float
    stages_s: dict[str, float]
    # The part of each timed call outside every stage (opening and closing the
    # database, reading the checkpoint), median over the runs.
    unstaged_s: float
    counters: dict[str, int]
    rows_processed: int
    rows_written: int
    bytes_inflated: int
    archive_bytes: int
    latest_date: str | None
    notes: list[str]
    read_modes: list[str]
    resumed_runs: int
    top_five: list[dict]
    local_split: list[dict]
    dialect: dict[str, Any]


@dataclass(frozen=True)
class PeerFigures(PipelineFigures):
    """A peer's figures, measured as the pipelines' are, with its kind and its parity."""

    kind: str = ""
    parity_ok: bool = False
    parity: dict[str, Any] = field(default_factory=dict)


def pipeline_figures(warm: RunResult, runs: list[RunResult]) -> dict[str, Any]:
    """The fields of a PipelineFigures, from a warm-up and the timed repeats."""
    every = [warm, *runs]
    last = runs[-1].record
    modes = [r.record.read_mode for r in every]
    return {
        "wall_s": summarize([r.wall_s for r in runs]),
        "peak_mib": warm.peak_mib,
        "data_mib": warm.data_mib,
        "peak_rss_mib": warm.peak_rss_mib,
        "rss_before_mib": warm.rss_before_mib,
        "warmup_wall_s": warm.wall_s,
        "hwm_delta_mib": summarize([r.hwm_rss_mib - r.rss_before_mib for r in every]),
        "file_rss_delta_mib": warm.file_rss_delta_mib,
        "stages_s": {
            stage: statistics.median(r.record.stages_s.get(stage, 0.0) for r in runs)
            for stage in STAGES
        },
        "unstaged_s": statistics.median(r.wall_s - sum(r.record.stages_s.values()) for r in runs),
        "counters": last.counters,
        "rows_processed": last.rows_processed,
        "rows_written": last.rows_written,
        "bytes_inflated": last.bytes_inflated,
        "archive_bytes": last.archive_bytes,
        "latest_date": last.latest_date,
        "notes": sorted({r.record.note for r in every if r.record.note}),
        "read_modes": modes,
        "resumed_runs": sum(m.startswith("resumed") for m in modes),
        "top_five": last.top_five,
        "local_split": last.local_split,
        "dialect": last.dialect,
    }


@dataclass(frozen=True)
class SweepPoint:
    """One day of the chart: both pipelines' sampled runs and their ratios."""

    day: int
    baseline: RunFigures
    incremental: RunFigures
    rows_total: int
    rows_new: int
    speedup: float
    memory_ratio: float


def sweep_points(sweep: list[dict[str, Any]], m: Measurement, day: int) -> list[SweepPoint]:
    """The chart's rows: the sweep's days plus day N.

    Day N's point is the main measurement's warm-up: like every sweep point, one run
    with memory sampled, so the curve is measured one way throughout.
    """
    points = [*sweep, {"day": day, "runs": m.warmups}] if sweep else []
    rows = []
    for point in points:
        base, inc = (run_figures(point["runs"][p]) for p in PIPELINE_NAMES)
        rows.append(
            SweepPoint(
                day=point["day"],
                baseline=base,
                incremental=inc,
                rows_total=base.rows_processed,
                rows_new=inc.rows_processed,
                speedup=base.wall_s / inc.wall_s,
                memory_ratio=base.peak_mib / max(inc.peak_mib, 0.1),
            )
        )
    return rows


def growth(points: list[SweepPoint]) -> dict[str, Any] | None:
    """How each pipeline's cost moved over the sweep: first and last day, range and slope."""
    rows = [p.rows_total / 1e6 for p in points]
    if len(points) < 2 or len(set(rows)) < 2:
        return None
    out: dict[str, Any] = {"first_day": points[0].day, "last_day": points[-1].day}
    for pipeline in PIPELINE_NAMES:
        for figure in ("wall_s", "peak_mib"):
            values = [getattr(getattr(p, pipeline), figure) for p in points]
            out[f"{pipeline}_{figure}"] = {
                "first": values[0],
                "last": values[-1],
                "min": min(values),
                "max": max(values),
                "last_over_first": values[-1] / max(values[0], 1e-9),
                # least-squares slope: this figure's unit per million rows of history
                "per_million_rows": statistics.linear_regression(rows, values).slope,
            }
    inc, base = out["incremental_wall_s"], out["baseline_wall_s"]
    out["incremental_flat"] = inc["per_million_rows"] < FLAT_SHARE * base["per_million_rows"]
    return out


def without_password(arg: str) -> str:
    """A command-line argument as the report may show it: a URL, alone or after
    `--option=`, without its password."""
    option, eq, value = arg.partition("=")
    if eq and pg.is_url(value):
        return f"{option}={describe(value)}"
    return describe(arg) if pg.is_url(arg) else arg


def environment() -> dict[str, Any]:
    """Machine and software the figures were measured on."""
    cpu = platform.processor()
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    return {
        "python": platform.python_version(),
        "polars": pl.__version__,
        "pandas": pandas.__version__,
        "sqlite": sqlite3.sqlite_version,
        "memory_profiler": memory_profiler.__version__,
        "os": platform.platform(),
        "cpu_model": cpu,
        "cpu_count": os.cpu_count(),
        "memory_gib": round(psutil.virtual_memory().total / 2**30, 1),
        # A PostgreSQL URL's password, if one was given, is never written.
        "command": " ".join(["python", *map(without_password, sys.argv)]),
    }


def unique_notes(warmup: dict[str, Any], sweep: list[dict], inc: PipelineFigures) -> list[str]:
    """Every restatement and fallback the run met, each once, in the order met."""
    notes = [
        *warmup["notes"],
        *[n for p in sweep for n in run_figures(p["runs"]["incremental"]).notes],
        *inc.notes,
    ]
    return list(dict.fromkeys(notes))


def peer_figures(m: Measurement, checks: dict[str, dict[str, Any]]) -> dict[str, PeerFigures]:
    """Each peer's figures, measured as the pipelines' are, with its kind and its parity."""
    return {
        name: PeerFigures(
            **pipeline_figures(m.warmups[name], m.runs[name]),
            kind=PEERS[name].kind,
            parity_ok=check["ok"],
            parity=check,
        )
        for name, check in checks.items()
    }


def paired_ratios(full: PipelineFigures, inc: PipelineFigures) -> Spread:
    """Each timed run of a full refresh over the incremental run of the same repeat (the
    repeats alternate, so each pair ran side by side): the headline's spread."""
    pairs = zip(full.wall_s.runs, inc.wall_s.runs, strict=True)
    return summarize([f / i for f, i in pairs])


@dataclass(frozen=True)
class AgainstTheBest:
    """The incremental run against the fastest and the leanest correct full refresh."""

    full_refreshes: list[str]
    fastest: str
    speedup: float
    speedup_paired: Spread
    leanest: str
    memory_ratio: float
    # For the sentence: "N x less" when the incremental run is leaner, "N x more" if not.
    memory_words: tuple[float, str]


def against_the_best(
    figures: dict[str, PipelineFigures], peers: dict[str, PeerFigures]
) -> AgainstTheBest:
    """The incremental run against the correct full refreshes of the run."""
    inc = figures["incremental"]
    full = {"baseline": figures["baseline"]} | {
        n: p for n, p in peers.items() if p.kind == "full refresh" and p.parity_ok
    }
    fastest = min(full, key=lambda n: full[n].wall_s.median)
    leanest = min(full, key=lambda n: full[n].peak_mib)
    memory_ratio = full[leanest].peak_mib / max(inc.peak_mib, 0.1)
    return AgainstTheBest(
        full_refreshes=list(full),
        fastest=fastest,
        speedup=full[fastest].wall_s.median / inc.wall_s.median,
        speedup_paired=paired_ratios(full[fastest], inc),
        leanest=leanest,
        memory_ratio=memory_ratio,
        memory_words=(memory_ratio, "less") if memory_ratio >= 1 else (1 / memory_ratio, "more"),
    )


@dataclass(frozen=True)
class FloorFigures:
    """Each stage's median of a pipeline beside its floor, and their sums."""

    stages: dict[str, dict[str, float]]  # stage -> {"ours": s, "floor": s}
    total: dict[str, float]  # "ours" and "floor" summed over the stages
    wall_s: float  # the pipeline's median
    unstaged_s: float
    tries: int  # the timed calls each floor is the median of
    work: dict[str, int]  # bytes inflated, records parsed, rows written by the floors
    same_work: bool  # whether the pipeline's record did exactly that work


def floor_figures(floors: Floors | None, fig: PipelineFigures) -> FloorFigures | None:
    """A pipeline's stages beside their floors (measure_floors, measure_full_floors)."""
    if floors is None:
        return None
    stages = {
        stage: {"ours": fig.stages_s[stage], "floor": s} for stage, s in floors.seconds.items()
    }
    ours = {k: getattr(fig, k) for k in ("bytes_inflated", "rows_processed", "rows_written")}
    total = {k: sum(figures[k] for figures in stages.values()) for k in ("ours", "floor")}
    return FloorFigures(
        stages=stages,
        total=total,
        wall_s=fig.wall_s.median,
        unstaged_s=fig.unstaged_s,
        tries=FLOOR_TRIES,
        work=floors.work,
        same_work=floors.work == ours,
    )


@dataclass(frozen=True)
class Ratios:
    """The baseline against the incremental run: time, its spread, memory."""

    speedup: float
    speedup_paired: Spread
    memory_ratio: float
    memory_ratio_without_library_code: float


def ratios(base: PipelineFigures, inc: PipelineFigures) -> Ratios:
    """The baseline's figures over the incremental run's."""
    code_free = (base.peak_mib - base.file_rss_delta_mib) / max(
        inc.peak_mib - inc.file_rss_delta_mib, 0.1
    )
    return Ratios(
        speedup=base.wall_s.median / inc.wall_s.median,
        speedup_paired=paired_ratios(base, inc),
        memory_ratio=base.peak_mib / max(inc.peak_mib, 0.1),
        memory_ratio_without_library_code=code_free,
    )


@dataclass(frozen=True)
class Conditions:
    """What was measured: the client, the day, the rows, the options, when."""

    client: str
    day: int
    previous_day: int
    rows_total: int
    rows_new: int
    archive_bytes: int
    benchmark_date: str | None
    repeat: int
    sweep: bool
    peers: bool
    dialect: dict[str, Any]  # of the day-N archive, as the baseline read it whole
    run_at: str
    database: str  # the engine, its version and where (a URL without its password)


def conditions(cfg: BenchConfig, base: PipelineFigures, inc: PipelineFigures) -> Conditions:
    """The run's conditions, from its options and both pipelines' records."""
    return Conditions(
        client=cfg.client,
        day=cfg.day,
        previous_day=cfg.day - 1,
        rows_total=base.rows_processed,
        rows_new=inc.rows_processed,
        archive_bytes=base.archive_bytes,
        benchmark_date=base.latest_date,
        repeat=cfg.repeat,
        sweep=cfg.sweep,
        peers=cfg.peers,
        dialect=base.dialect,
        run_at=dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        database=engine_version(cfg.db),
    )


@dataclass(frozen=True)
class Correctness:
    """How the state was made, parity on every day checked, rejected rows, notes."""

    state: str
    parity_day_n: bool
    parity_sweep_days: dict[str, bool]
    rows_rejected_archive: int
    rows_rejected_new: int
    restatements: list[str]
    fallbacks: list[str]


@dataclass(frozen=True)
class Results:
    """The results record: every figure results.md shows (docs/spec.md section 5)."""

    baseline: PipelineFigures
    incremental: PipelineFigures
    peers: dict[str, PeerFigures]
    against_the_best: AgainstTheBest
    parity: dict[str, Any]
    ratios: Ratios
    conditions: Conditions
    warmup: dict[str, Any]
    correctness: Correctness
    inflaters: dict[str, Any]
    floors: FloorFigures | None
    floors_full_refresh: FloorFigures | None
    sweep: list[SweepPoint]
    growth: dict[str, Any] | None
    chart: str | None
    summary: dict[str, Any]
    environment: dict[str, Any]

    def to_json(self) -> dict[str, Any]:
        """The record as the JSON of docs/spec.md section 5 (floors empty as {})."""
        record = asdict(self)
        for key in ("floors", "floors_full_refresh"):
            record[key] = record[key] or {}
        return record


def build_results(
    cfg: BenchConfig,
    m: Measurement,
    warmup: dict[str, Any],
    sweep: list[dict[str, Any]],
    parity: dict[str, Any],
    peer_checks: dict[str, dict[str, Any]],
    inflaters: dict[str, Any],
    floors: Floors | None,
    full_floors: Floors | None,
) -> Results:
    """The results record: every figure results.md shows, computed here."""
    figures = {
        p: PipelineFigures(**pipeline_figures(m.warmups[p], m.runs[p])) for p in PIPELINE_NAMES
    }
    peers = peer_figures(m, peer_checks)
    base, inc = figures["baseline"], figures["incremental"]
    notes = unique_notes(warmup, sweep, inc)
    points = sweep_points(sweep, m, cfg.day)
    if inflaters:
        mib = inflaters["bytes"] / 2**20
        inflaters["mib_per_s"] = {k: mib / s for k, s in inflaters["seconds"].items()}
    return Results(
        baseline=base,
        incremental=inc,
        peers=peers,
        against_the_best=against_the_best(figures, peers),
        parity=parity,
        ratios=ratios(base, inc),
        conditions=conditions(cfg, base, inc),
        warmup=warmup,
        correctness=Correctness(
            state=warmup["how"],
            parity_day_n=parity["ok"],
            parity_sweep_days={str(p["day"]): p["parity"]["ok"] for p in sweep},
            rows_rejected_archive=base.counters["rows_rejected"],
            rows_rejected_new=inc.counters["rows_rejected"],
            restatements=[n for n in notes if "restatement" in n],
            fallbacks=[n for n in notes if "restatement" not in n],
        ),
        inflaters=inflaters,
        floors=floor_figures(floors, inc),
        floors_full_refresh=floor_figures(full_floors, base),
        sweep=points,
        growth=growth(points),
        chart=cfg.report.with_suffix(".png").name if points else None,
        summary={
            "date": base.latest_date,
            "top_five": base.top_five,
            "local_split": base.local_split,
        },
        environment=environment(),
    )


def fleet_results(cfg: BenchConfig, options: FleetOptions, fleet: dict[str, Any]) -> dict[str, Any]:
    """The fleet run's results record: the fleet's figures, its conditions, the machine."""
    from importlib.metadata import version

    return {
        "fleet": fleet,
        "conditions": {
            "day": cfg.day,
            "repeat": cfg.repeat,
            "cluster": f"scheduler {options.scheduler}" if options.scheduler else "LocalCluster",
            "database": engine_version(cfg.db),
            "run_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        },
        "environment": {**environment(), "dask": version("distributed")},
    }
