"""results.md of a fleet run, formatted from its results record alone (no figure is
computed here beyond formatting)."""

from __future__ import annotations

from typing import Any


def seconds(spread: dict[str, Any]) -> str:
    return f"{spread['median']:.2f} ({spread['min']:.2f} to {spread['max']:.2f})"


def render_fleet_headline(results: dict[str, Any]) -> list[str]:
    fleet, cond = results["fleet"], results["conditions"]
    base, inc = fleet["ways"]["baseline"], fleet["ways"]["incremental"]
    ok = sum(fleet["parity"].values())
    verdict = (
        f"parity held for all {ok} clients"
        if fleet["parity_ok"] and not fleet["failed"]
        else f"parity held for {ok} of {len(fleet['clients'])} clients"
    )
    return [
        f"# Fleet: every client's day {cond['day']}, both ways, on Dask",
        "",
        f"**The incremental night took {inc['makespan_s']['median']:.2f} s against"
        f" {base['makespan_s']['median']:.2f} s for the full refresh"
        f" ({fleet['ratios']['makespan']:.1f}x less wall time) and"
        f" {inc['cpu_s']['median']:.1f} CPU-seconds against {base['cpu_s']['median']:.1f}"
        f" ({fleet['ratios']['cpu_s']:.1f}x fewer), over {len(fleet['clients'])} clients on"
        f" {fleet['workers']} workers; {verdict}.**",
        "",
    ]


def render_fleet_conditions(results: dict[str, Any]) -> list[str]:
    fleet, cond, env = results["fleet"], results["conditions"], results["environment"]
    base, inc = fleet["ways"]["baseline"], fleet["ways"]["incremental"]
    return [
        "## Conditions",
        "",
        "| item | value |",
        "| --- | --- |",
        f"| clients, day | {len(fleet['clients'])}, day {cond['day']} |",
        f"| rows in the day-{cond['day']} archives | {base['rows_processed']:,} |",
        f"| new rows since day {cond['day'] - 1} | {inc['rows_processed']:,} |",
        f"| repeats | {cond['repeat']} |",
        f"| cluster | {cond['cluster']}, {fleet['workers']} workers, one thread each |",
        f"| database | {cond['database']} |",
        f"| command | `{env['command']}` |",
        f"| CPU | {env['cpu_model']}, {env['cpu_count']} cores, {env['memory_gib']} GiB |",
        f"| Python / Polars / Dask | {env['python']} / {env['polars']} / {env['dask']} |",
        "",
    ]


def render_fleet_ways(results: dict[str, Any]) -> list[str]:
    ways = results["fleet"]["ways"]
    lines = [
        "## The night's job",
        "",
        "Makespan: wall time from submitting every client's task to the last one's end,"
        " median (min to max) over the repeats. CPU-seconds: the worker processes' CPU"
        " time over the tasks, summed over the clients. Peak memory: each task's private"
        " memory at its peak above where it started (a long-lived worker reuses what"
        " earlier tasks freed, so this is small), and the worker process's private memory"
        " at that peak (what a machine must hold per worker).",
        "",
        "| way | makespan s | CPU-seconds | task wall s, summed | peak MiB per task, median"
        " (max) | worker MiB at the peak, max | rows processed | rows written |"
        " tasks run again |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for way, figures in ways.items():
        peak = figures["peak_mib_per_task"]
        lines.append(
            f"| {way} | {seconds(figures['makespan_s'])} | {seconds(figures['cpu_s'])} |"
            f" {figures['task_wall_s']['median']:.2f} | {peak['median']:.0f} ({peak['max']:.0f}) |"
            f" {figures['worker_peak_mib']['max']:.0f} |"
            f" {figures['rows_processed']:,} | {figures['rows_written']:,} |"
            f" {figures['tasks_run_again']} |"
        )
    return [*lines, ""]


def render_fleet_clients(results: dict[str, Any]) -> list[str]:
    fleet = results["fleet"]
    tasks = {
        way: {t["client"]: t for t in figures["tasks"]} for way, figures in fleet["ways"].items()
    }
    lines = [
        "## Every client (last repeat)",
        "",
        "| client | parity | full refresh s | incremental s | full refresh CPU-s |"
        " incremental CPU-s | incremental peak MiB |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    for client in fleet["clients"]:
        if client in fleet["failed"]:
            lines.append(f"| {client} | failed: {fleet['failed'][client]} | | | | | |")
            continue
        base, inc = tasks["baseline"][client], tasks["incremental"][client]
        held = "held" if fleet["parity"].get(client) else "FAILED"
        lines.append(
            f"| {client} | {held} | {base['wall_s']:.3f} | {inc['wall_s']:.3f} |"
            f" {base['cpu_s']:.3f} | {inc['cpu_s']:.3f} | {inc['peak_mib']:.0f} |"
        )
    return [*lines, ""]


def render_fleet_report(results: dict[str, Any]) -> str:
    """results.md of a fleet run."""
    sections = [
        render_fleet_headline(results),
        render_fleet_conditions(results),
        render_fleet_ways(results),
        render_fleet_clients(results),
    ]
    return "\n".join(line for section in sections for line in section)
