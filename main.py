"""Benchmark: incremental processing of cumulative daily feeds versus full reprocessing.

For one client and day N (the rules: docs/spec.md, sections 2 to 5), a run takes the
seven steps of `run_benchmark` below:

1. check the inputs, before anything changes;
2. copy the database to a scratch folder;
3. bring the client's incremental state there to exactly days 1..N-1
   (`populate_historical_data`);
4. time the baseline (`run_baseline_benchmark`: recompute everything from the day-N
   archive, full refresh) and the incremental pipeline (`run_optimized_benchmark`:
   only the rows past the checkpoint, merged into ``processed_sales``), and the peers a
   data team would run instead, each call in a fresh process from a copy of that state;
   both pipelines run the same transformation, `process_transactions`, which returns
   `PipelineArtifacts`;
5. sweep days 2..N-1 to chart how cost grows;
6. check parity between the two answers (timed apart);
7. leave the database holding day N, and write ``--json`` and ``results.md``
   (`generate_report`).

The machinery lives in the package ``incremental_bench``, one module per concern.

Example::

    python main.py                                    # client_1, day 10, 5 repeats
    python main.py --client client_2 --day 4 --repeat 3
    python -m memory_profiler main.py                 # plus line-by-line memory tables
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

from incremental_bench.chart import render_chart
from incremental_bench.cli import (
    check_fleet_inputs,
    check_inputs,
    config_from,
    day_n_target,
    db_place,
    exclusive_run,
    final_parity,
    fleet_exit_code,
    fleet_failures,
    fleet_options,
    fleet_summary,
    parity_failure,
    parse_args,
    save_day_n,
    save_fleet_day_n,
    scratch_folder,
    scratch_state,
    staged_outputs,
    summary,
)
from incremental_bench.config import (
    BenchConfig,
    BusyError,
    ConflictError,
    InputError,
    Say,
    WorkerError,
)
from incremental_bench.fleet import FLEET, FleetOptions, fleet_answer, run_fleet
from incremental_bench.fleet_report import render_fleet_report
from incremental_bench.harness import (
    measure,
    measure_floors,
    measure_full_floors,
    measure_inflaters,
    peer_checks,
    profile_lines,
    run_sweep,
)
from incremental_bench.pipelines import (
    populate_historical_data,
    run_baseline_benchmark,
    run_optimized_benchmark,
)
from incremental_bench.report import render_report
from incremental_bench.results import build_results, fleet_results
from incremental_bench.store import create_empty, scratch_db
from incremental_bench.transform import PipelineArtifacts, process_transactions

Stage = Callable[[Path, Callable[[Path], None]], None]  # cli.staged_outputs' stage

__all__ = [
    "PipelineArtifacts",
    "generate_report",
    "main",
    "populate_historical_data",
    "process_transactions",
    "run_baseline_benchmark",
    "run_benchmark",
    "run_fleet_benchmark",
    "run_optimized_benchmark",
]


def run_benchmark(cfg: BenchConfig, say: Say) -> dict[str, Any]:
    """One benchmark run, in the seven steps of the README; returns the results record."""
    check_inputs(cfg, say)  # 1. inputs first
    place = db_place(cfg)
    with exclusive_run(cfg.db, cfg.client), scratch_folder(cfg, say) as scratch, place:
        state = scratch_state(cfg, scratch)  # 2. a scratch copy
        warmup = populate_historical_data(state, cfg.data_dir, cfg.client, cfg.day, say)  # 3.
        say(f"timing {cfg.repeat} repeat(s) of each pipeline, each in a fresh process")
        measured = measure(cfg, state, scratch)  # 4. timing
        inflaters = measure_inflaters(cfg)
        floors = measure_floors(cfg, state, scratch)
        full_floors = measure_full_floors(cfg, state, scratch)
        if cfg.sweep and cfg.day > 2:
            say(f"sweep: both pipelines on days 2..{cfg.day - 1}, one sampled run each")
        sweep = run_sweep(cfg, scratch)  # 5. sweep
        profile_lines(cfg, state, scratch)
        parity = final_parity(measured.final, cfg.client, cfg.day, sweep)  # 6. parity
        peers = peer_checks(cfg, measured, scratch)
        target = day_n_target(cfg, parity)
        results = build_results(
            cfg, measured, warmup, sweep, parity, peers, inflaters, floors, full_floors
        ).to_json()
        # 7. results: the outputs written aside first, so that a full disk or an error
        # while writing them leaves the database as it was; then day N, then the renames.
        with staged_outputs() as stage:
            generate_report(cfg, results, stage)
            save_day_n(target, measured.final, cfg.client, say)
    return results


def generate_report(cfg: BenchConfig, results: dict[str, Any], stage: Stage) -> None:
    """The --json record, then the chart and results.md rendered from it.

    Each goes through `stage`: written under a temporary name beside its place, and
    renamed into place once every output and the database are written.
    """
    if cfg.json_path:
        text = json.dumps(results, indent=2, default=str) + "\n"
        stage(cfg.json_path, lambda tmp: tmp.write_text(text, encoding="utf-8"))
    if results.get("chart"):
        stage(cfg.report.with_name(results["chart"]), lambda tmp: render_chart(results, tmp))
    report = render_fleet_report(results) if "fleet" in results else render_report(results)
    stage(cfg.report, lambda tmp: tmp.write_text(report, encoding="utf-8"))


def run_fleet_benchmark(cfg: BenchConfig, options: FleetOptions, say: Say) -> dict[str, Any]:
    """The night's job for every client, both ways, one Dask task per client
    (docs/fleet.md); returns the fleet's results record."""
    check_fleet_inputs(cfg)
    night = replace(cfg, client=FLEET)  # the lock and the scratch names of the whole fleet
    with exclusive_run(cfg.db, FLEET), scratch_folder(night, say) as scratch, db_place(cfg):
        state = scratch_db(night, scratch, "fleet-state")
        create_empty(state)
        fleet = run_fleet(night, options, scratch, state, say)
        results = fleet_results(cfg, options, fleet)
        with staged_outputs() as stage:  # as the single benchmark's step 7
            generate_report(cfg, results, stage)
            save_fleet_day_n(cfg, fleet, fleet_answer(night, scratch), say)
    return results


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark; 0 on parity, 1 on a parity failure, 2 on unusable input."""
    args = parse_args(argv)
    cfg, fleet = config_from(args), fleet_options(args)
    say = lambda line: print(line, flush=True)  # noqa: E731 (one line, said twice)
    try:
        with db_place(cfg):
            if fleet is not None:
                results = run_fleet_benchmark(cfg, fleet, say)
            else:
                results = run_benchmark(cfg, say)
    except InputError as exc:
        print(f"main.py: error: {exc}", file=sys.stderr)
        return 2
    except (BusyError, ConflictError, WorkerError) as exc:
        print(f"main.py: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        # Workers die with the driver, the scratch folder goes on the way out, the
        # database changes in one transaction and each output file by one rename.
        print("main.py: interrupted; nothing half-written left behind", file=sys.stderr)
        return 130
    if fleet is not None:
        print(fleet_summary(cfg, results))
        for line in fleet_failures(results):
            print(line, file=sys.stderr)
        return fleet_exit_code(results)
    print(summary(cfg, results))
    if not results["parity"]["ok"]:
        print(parity_failure(cfg, results["parity"]), file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
