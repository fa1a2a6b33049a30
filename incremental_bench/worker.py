"""A measured run: one pipeline or peer call in a fresh process, timed and sampled.

Owns the run's specification and result, the memory readings (memory_profiler, /proc)
and the worker's life tied to its driver. Knows nothing of repeats or the report."""

from __future__ import annotations

import contextlib
import gc
import json
import resource
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import psutil
from memory_profiler import memory_usage

from incremental_bench.clock import Stopwatch
from incremental_bench.config import MEMORY_SAMPLE_S, PAGE_BYTES, PIPELINE_NAMES
from incremental_bench.peers import PEERS, duckdb_session
from incremental_bench.pg import is_url, load_driver
from incremental_bench.pipelines import RunRecord, run_baseline_benchmark, run_optimized_benchmark
from incremental_bench.store import as_db
from incremental_bench.transform import load_lookups


def proc_status_mib(field_name: str) -> float | None:
    """A memory field of /proc/self/status (VmHWM, RssFile...) in MiB; None where absent."""
    with contextlib.suppress(OSError):
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(f"{field_name}:"):
                return int(line.split()[1]) / 1024
    return None


def rss_mib() -> float:
    """Resident size of this process now, in MiB (psutil, memory_profiler's own backend)."""
    return psutil.Process().memory_info().rss / 2**20


def anon_rss_mib() -> float:
    """This process's private, anonymous resident memory now (resident - shared), in MiB.

    /proc/self/statm is one cheap read; the shared part is the file-backed pages
    (library code) and shared memory, so what remains is the data the process made.
    """
    try:
        fields = Path("/proc/self/statm").read_text().split()
    except OSError:
        return 0.0
    return (int(fields[1]) - int(fields[2])) * PAGE_BYTES / 2**20


class AnonPeak:
    """The peak of anon_rss_mib() during a block, sampled every MEMORY_SAMPLE_S on a thread."""

    def __init__(self) -> None:
        self.peak_mib = anon_rss_mib()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def _sample(self) -> None:
        while not self._stop.wait(MEMORY_SAMPLE_S):
            self.peak_mib = max(self.peak_mib, anon_rss_mib())

    def __enter__(self) -> AnonPeak:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.peak_mib = max(self.peak_mib, anon_rss_mib())


def peak_rss_mib() -> float:
    """The kernel's high-water mark of this process's resident size, in MiB.

    VmHWM where /proc has it: unlike getrusage's ru_maxrss, it is not inherited from
    the parent across fork and exec (ru_maxrss would report the benchmark driver's own
    size for a smaller worker; docs/measurement.md).
    """
    hwm = proc_status_mib("VmHWM")
    if hwm is not None:
        return hwm
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


@dataclass(frozen=True)
class RunSpec:
    """One measured pipeline call, as the driver hands it to a fresh worker process."""

    pipeline: str  # a key of PIPELINES or PEERS
    db: str  # the worker's own copy of the day N-1 state
    data_dir: str
    client: str
    day: int
    mode: str  # "time": wall time only; "memory": memory_profiler samples the call too
    out: str  # where the worker writes its RunResult (JSON)
    driver_pid: int  # the worker dies with this process


@dataclass(frozen=True)
class RunResult:
    """What a worker measured around one pipeline call."""

    record: RunRecord
    wall_s: float
    rss_before_mib: float
    file_rss_delta_mib: float  # library code paged in by the call (RssFile after - before)
    hwm_rss_mib: float  # the kernel's high-water mark of the worker's resident size
    peak_rss_mib: float | None = None  # sampled by memory_profiler ("memory" mode only)
    anon_before_mib: float = 0.0  # private, anonymous resident memory before the call
    anon_peak_mib: float | None = None  # its sampled peak during the call ("memory" mode)

    @property
    def peak_mib(self) -> float:
        """The call's own peak: sampled peak minus the resident size just before it."""
        return (self.peak_rss_mib or 0.0) - self.rss_before_mib

    @property
    def data_mib(self) -> float:
        """The same peak counting only private, anonymous memory (no library code)."""
        return (self.anon_peak_mib or 0.0) - self.anon_before_mib

    @classmethod
    def from_json(cls, text: str) -> RunResult:
        """A result as a worker wrote it."""
        data = json.loads(text)
        return cls(**{**data, "record": RunRecord(**data["record"])})


PIPELINES: dict[str, Callable[[Path, Path, str, int], RunRecord]] = dict(
    zip(PIPELINE_NAMES, (run_baseline_benchmark, run_optimized_benchmark), strict=True)
)


def worker(spec: RunSpec) -> RunResult:
    """Run one pipeline call in this (fresh) process and measure it.

    mode "time": wall time around the call. mode "memory": memory_profiler samples the
    resident size every 5 ms during the call (its wall time is kept too, for the
    sweep; the main figures time only "time" runs). Imports and lookups are loaded
    before either measurement starts, for both pipelines alike (the modules' imports,
    pandas' included, all happen when this module loads; PostgreSQL's driver here).
    """
    fn = PIPELINES[spec.pipeline] if spec.pipeline in PIPELINES else PEERS[spec.pipeline].run
    if spec.pipeline == "duckdb":
        duckdb_session(Path(spec.data_dir))  # its lookups, like the pipelines', before the clock
    args = (as_db(spec.db), Path(spec.data_dir), spec.client, spec.day)
    load_lookups(args[1])
    if is_url(spec.db):  # PostgreSQL's driver and SQLAlchemy, imported before the clock too
        load_driver()
    gc.collect()
    before, file_before = rss_mib(), proc_status_mib("RssFile") or 0.0
    anon_before = anon_rss_mib()
    clock = Stopwatch()

    def call() -> RunRecord:
        with clock.stage("call"):
            return fn(*args)

    peak = anon = None
    if spec.mode == "memory":
        with AnonPeak() as anon:
            peak, record = memory_usage(
                (call, ()), interval=MEMORY_SAMPLE_S, max_usage=True, retval=True
            )
    else:
        record = call()
    return RunResult(
        record=record,
        wall_s=clock.stages_s["call"],
        rss_before_mib=before,
        # Code pages stay mapped once touched: after minus before is what the call paged in.
        file_rss_delta_mib=(proc_status_mib("RssFile") or 0.0) - file_before,
        hwm_rss_mib=peak_rss_mib(),
        peak_rss_mib=peak,
        anon_before_mib=anon_before,
        anon_peak_mib=anon.peak_mib if anon else None,
    )
