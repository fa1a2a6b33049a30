"""The report: results.md and its chart, formatted from the results record alone.

Computes no figure and imports no engine: neither Polars nor SQLite nor the pipelines."""

from __future__ import annotations

from typing import Any

from incremental_bench.config import COUNTERS, PIPELINE_NAMES


def fmt_s(seconds: float) -> str:
    """Seconds for a table cell."""
    return f"{seconds:.3f}"


def fmt_mib(size: int) -> str:
    """Bytes as MiB for a table cell."""
    return f"{size / 2**20:,.1f}"


def fmt_dialect(dialect: dict[str, Any]) -> str:
    """How the CSV was written, in words."""
    extras = dialect["extra_columns"]
    return ", ".join(
        [
            "byte-order mark" if dialect["bom"] else "no byte-order mark",
            f"{dialect['line_end']} line ends",
            "quoted fields" if dialect["quoted_fields"] else "no quoted fields",
            "columns in order" if dialect["columns_in_order"] else "columns reordered",
            f"extra columns ignored: {', '.join(extras)}" if extras else "no extra columns",
        ]
    )


def fmt_spread(paired: dict[str, Any]) -> str:
    """The spread of a speed-up over the runs paired repeat by repeat."""
    runs = len(paired["runs"])
    if runs < 2:
        return "one timed run"
    return (
        f"{paired['min']:.1f}x to {paired['max']:.1f}x over {runs} side-by-side runs,"
        f" median {paired['median']:.1f}x"
    )


def render_headline(results: dict[str, Any]) -> list[str]:
    """The title and the one-sentence answer."""
    cond, ratios = results["conditions"], results["ratios"]
    return [
        "# Incremental versus full reprocessing: benchmark results",
        "",
        f"Client `{cond['client']}`, step from day {cond['previous_day']} to day {cond['day']}: "
        f"the incremental pipeline was **{ratios['speedup']:.1f}x faster**"
        f" ({fmt_spread(ratios['speedup_paired'])}) "
        f"and used **{ratios['memory_ratio']:.1f}x less peak memory** than full "
        f"reprocessing; parity **{'held' if results['parity']['ok'] else 'FAILED'}**.",
        "",
        *render_best(results),
    ]


def render_best(results: dict[str, Any]) -> list[str]:
    """The headline against the best full refresh of the run, whoever it was."""
    best = results["against_the_best"]
    if not results["peers"]:
        return []
    return [
        f"Against the fastest correct full refresh of this run ({best['fastest']}), the"
        f" incremental pipeline was **{best['speedup']:.1f}x faster**"
        f" ({fmt_spread(best['speedup_paired'])}); against the leanest"
        f" ({best['leanest']}), it used **{best['memory_words'][0]:.1f}x"
        f" {best['memory_words'][1]} peak memory**"
        f" (full refreshes with parity: {', '.join(best['full_refreshes'])}).",
        "",
    ]


def render_conditions(results: dict[str, Any]) -> list[str]:
    """What was measured, on what."""
    cond, env = results["conditions"], results["environment"]
    return [
        "## Conditions",
        "",
        "| item | value |",
        "| --- | --- |",
        f"| client, day | {cond['client']}, day {cond['day']} |",
        f"| benchmark date (latest transaction date) | {cond['benchmark_date']} |",
        f"| rows in the day-{cond['day']} archive | {cond['rows_total']:,} |",
        f"| new rows since day {cond['previous_day']} | {cond['rows_new']:,} |",
        f"| archive CSV size | {fmt_mib(cond['archive_bytes'])} MiB |",
        f"| CSV dialect read | {fmt_dialect(cond['dialect'])} |",
        f"| repeats (after one untimed warm-up) | {cond['repeat']} |",
        f"| run at | {cond['run_at']} |",
        f"| command | `{env['command']}` |",
        f"| CPU | {env['cpu_model']}, {env['cpu_count']} cores, {env['memory_gib']} GiB |",
        f"| OS | {env['os']} |",
        f"| Python / Polars / pandas | {env['python']} / {env['polars']} / {env['pandas']} |",
        f"| database | {cond['database']} |",
        f"| memory_profiler | {env['memory_profiler']} |",
        "",
    ]


def render_time_memory(results: dict[str, Any]) -> list[str]:
    """Every timed run and the memory figures, with how memory is measured."""
    out = [
        "## Time and memory",
        "",
        "| pipeline | wall s, median | min | max | every run (s) | peak memory MiB |"
        " of it: data MiB | process RSS before -> peak MiB | kernel high-water check MiB |"
        " of the peak: library code paged in MiB |",
        "| --- | ---: | ---: | ---: | --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    for name, fig in (
        ("baseline (full refresh)", results["baseline"]),
        ("incremental", results["incremental"]),
    ):
        w = fig["wall_s"]
        out.append(
            f"| {name} | {fmt_s(w['median'])} | {fmt_s(w['min'])} | {fmt_s(w['max'])} | "
            f"{', '.join(fmt_s(r) for r in w['runs'])} | {fig['peak_mib']:,.1f} | "
            f"{fig['data_mib']:,.1f} | "
            f"{fig['rss_before_mib']:,.0f} -> {fig['peak_rss_mib']:,.0f} | "
            f"{fig['hwm_delta_mib']['median']:,.1f} | {fig['file_rss_delta_mib']:,.1f} |"
        )
    return [
        *out,
        "",
        "Peak memory is the pipeline's own: peak resident size during the call minus the"
        " resident size just before it, sampled every 5 ms by memory_profiler in a fresh"
        " process. The check column is the kernel's own high-water mark (VmHWM) of each run's"
        " process minus the same starting size, median over all runs: it cannot miss a"
        " short peak, so agreement with the sampled figure says the sampling did not either."
        " The last column is the part of the peak that is file-backed (RssFile after the call"
        " minus before): pages of Polars', pandas' and SQLite's shared libraries that the"
        " call touched for the first time in its process. Both pipelines pay it once; it is"
        " clean, shared memory, counted here because the measure is the resident size. The"
        " data column is the same peak counting only the process's private, anonymous memory"
        " (resident minus shared pages of /proc/self/statm, sampled every 5 ms on a thread"
        " during the same call): what the pipeline itself made.",
        "",
    ]


def fmt_parity(peer: dict[str, Any]) -> str:
    """A peer's parity, with what it lost when it failed."""
    if peer["parity_ok"]:
        return "held"
    diff = peer["parity"]["diff"]
    return f"FAILED: {diff['rows_lost']:,} rows lost, {diff['keys_differing']:,} keys differ"


def render_peers(results: dict[str, Any]) -> list[str]:
    """Every way of doing the day measured in the run, side by side."""
    if not results["peers"]:
        why = "--no-peers" if not results["conditions"]["peers"] else "none"
        return ["## Against the peers", "", f"Not measured in this run ({why}).", ""]
    rows = {
        "baseline": {**results["baseline"], "kind": "full refresh", "parity_ok": True},
        "incremental": {**results["incremental"], "kind": "incremental", "parity_ok": True},
        **results["peers"],
    }
    out = [
        "## Against the peers",
        "",
        "What a data team would run instead, measured in the same run by the same protocol"
        " (a fresh process per run, one warm-up that also measures memory, the repeats"
        " alternating with the two pipelines), each answer checked against the baseline's.",
        "",
        "| way | kind | wall s, median | min | max | peak MiB | data MiB | read | hash of history |"
        " parse | transform | write | parity with the baseline |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- |",
    ]
    for name, fig in rows.items():
        w, st = fig["wall_s"], fig["stages_s"]
        out.append(
            f"| {name} | {fig['kind']} | {fmt_s(w['median'])} | {fmt_s(w['min'])} |"
            f" {fmt_s(w['max'])} | {fig['peak_mib']:,.1f} | {fig['data_mib']:,.1f} |"
            f" {fmt_s(st['read'])} | {fmt_s(st['verify'])} | {fmt_s(st['parse'])} |"
            f" {fmt_s(st['transform'])} | {fmt_s(st['write'])} |"
            f" {'held' if name in PIPELINE_NAMES else fmt_parity(fig)} |"
        )
    return [
        *out,
        "",
        "- polars_in_memory: the full refresh an engineer writes first: the whole member"
        " inflated in one call, one read_csv of every record, the shared transformation on"
        " every row at once and the baseline's own write. It holds the whole text and every"
        " row in memory at once, and checks nothing of the reader's shape (a record the"
        " reader misreads shows in its parity).",
        "- duckdb: the same rules in one DuckDB SQL statement over the CSV, which it reads"
        " itself (inflated to a file beside the database inside the timed call), every"
        " field as text with its sniffer on; the table goes through the baseline's own"
        " write path, so only the engine differs. DuckDB fuses parsing into its query:"
        " its parse time is inside transform.",
        "- by_date: from the same day N-1 state as the incremental pipeline, it reads the"
        " whole archive, keeps the rows dated after the last processed date and merges"
        " them like the incremental pipeline. Rows that arrive late, dated on or before"
        " that date, are lost: that is what its parity shows. The incremental pipeline"
        " checkpoints by byte offset in the cumulative file instead, so no row is missed"
        " whatever its date.",
        "",
    ]


def render_stages(results: dict[str, Any]) -> list[str]:
    """Where the time goes, stage by stage."""
    out = [
        "## Where the time goes (medians, seconds)",
        "",
        "| pipeline | read | hash of history | parse | transform | write | rows processed |"
        " rows written | bytes inflated / in archive |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- |",
    ]
    for name in PIPELINE_NAMES:
        fig = results[name]
        st = fig["stages_s"]
        out.append(
            f"| {name} | {fmt_s(st['read'])} | {fmt_s(st['verify'])} | {fmt_s(st['parse'])} |"
            f" {fmt_s(st['transform'])} | {fmt_s(st['write'])} | {fig['rows_processed']:,} |"
            f" {fig['rows_written']:,} |"
            f" {fmt_mib(fig['bytes_inflated'])} / {fmt_mib(fig['archive_bytes'])} MiB |"
        )
    return [*out, "", STAGE_WORDS, "", *render_reads(results), "", *render_floors(results)]


STAGE_WORDS = (
    "The stages of a run do not overlap. read: opening the archive, waiting for its inflated"
    " text (the inflating runs on a thread, ahead of the parse) and cutting it into blocks of"
    " whole records (the incremental run also hashes the new text for its fingerprint);"
    " hash of history: proving the compressed bytes before the access point unchanged;"
    " parse: lines into fields; transform: cleaning, counting and aggregating (for the"
    " incremental run, also the merge into the stored days it touches); write: the"
    " transaction that stores the result."
)
STAGE_LABELS = {"verify": "hash of history"}  # report names of stages that differ from keys


# What each stage's floor is (measure_floors), for the report.
FLOOR_WHAT = {
    "read": "zlib inflating the same tail from the same access point, alone: no CRC, no"
    " hashing, no boundaries noted, no blocks cut",
    "verify": "BLAKE3 over the compressed bytes before the point, already in memory",
    "parse": "Polars' CSV reader on the new text alone, in one call, every field as text: no"
    " checks, no line numbers",
    "transform": "the new rows' transformation alone, without the merge (reading back the"
    " days they touch, adding up, deriving the table's columns)",
    "write": "the database alone: delete the touched days, insert the same rows with their"
    " parameters built beforehand (SQLite: the same multi-row INSERTs; PostgreSQL: one"
    " COPY), store the checkpoint and the access points, commit",
}


FULL_FLOOR_WHAT = {
    "read": "ISA-L inflating the whole member in one call, its compressed bytes in memory",
    "parse": "Polars' CSV reader on the whole text in one call, every field as text: no"
    " checks, no line numbers",
    "transform": "the shared transformation on every row at once, and the table's derived columns",
    "write": "the database alone: insert the same rows with their parameters built"
    " beforehand (SQLite: the same multi-row INSERTs; PostgreSQL: one COPY), commit",
}


def render_floors(results: dict[str, Any]) -> list[str]:
    """The incremental step's stages beside their floors, then the full refresh's."""
    floors = results["floors"]
    if not floors:
        return render_full_floors(results)
    return [
        "### The incremental step against its floor",
        "",
        "Each stage of the day-N incremental step (median of the timed runs) beside the"
        " least its work costs here: the same work done alone, from the same day N-1 state"
        f" and access point, warm, median of {floors['tries']}, outside the pipelines'"
        " timings. The gap is what the step adds to the bare work: its checks and"
        " bookkeeping, the merge into the stored days, pandas on the write path, and the"
        " first use of each library in a fresh process (the floors run warm).",
        "",
        *floor_rows(
            floors,
            FLOOR_WHAT,
            "step",
            "opening and closing the database (SQLite folds its write-ahead log into the"
            " file when the last connection closes; a server's connection is made) and"
            " reading the checkpoint",
        ),
        "",
        *render_full_floors(results),
    ]


def render_full_floors(results: dict[str, Any]) -> list[str]:
    """The full refresh's stages beside their floors."""
    floors = results["floors_full_refresh"]
    if not floors:
        return []
    return [
        "### The full refresh against its floor",
        "",
        "Each stage of the baseline (median of the timed runs) beside the least its work"
        " costs here: the same work on the whole day-N archive in one call, its input ready"
        f" beforehand, warm, median of {floors['tries']}, outside the pipelines' timings."
        " The floors hold the whole text and every row at once; the baseline holds a block"
        " at a time, which is what bounds its memory.",
        "",
        *floor_rows(floors, FULL_FLOOR_WHAT, "refresh", "the call itself"),
        "",
    ]


def floor_rows(floors: dict[str, Any], what: dict[str, str], run: str, outside: str) -> list[str]:
    """A floors table: one row per stage, then their sums; `outside`: what lies outside
    every stage of a run. A floor that did other work than the run is said to be so."""
    stages = floors["stages"]
    work = floors.get("work", {})
    differs = (
        []
        if floors.get("same_work", True)
        else [
            "",
            f"The floors did other work than the {run}: {work.get('bytes_inflated', 0):,} bytes"
            f" inflated, {work.get('rows_processed', 0):,} records parsed and"
            f" {work.get('rows_written', 0):,} rows written; compare with care.",
        ]
    )
    return [
        "| stage | ours s | floor s | the floor is |",
        "| --- | ---: | ---: | --- |",
        *[
            f"| {STAGE_LABELS.get(stage, stage)} | {fmt_s(f['ours'])} | {fmt_s(f['floor'])} |"
            f" {what[stage]} |"
            for stage, f in stages.items()
        ],
        f"| all {len(stages)} | {fmt_s(floors['total']['ours'])} |"
        f" {fmt_s(floors['total']['floor'])} | of a whole {run} of {fmt_s(floors['wall_s'])} s,"
        f" of which {fmt_s(floors['unstaged_s'])} s lie outside every stage: {outside} |",
        *differs,
    ]


def render_reads(results: dict[str, Any]) -> list[str]:
    """How the incremental runs read the archive, and what each inflater costs."""
    inc, cond = results["incremental"], results["conditions"]
    out = [
        f"The incremental run resumed inside the archive in {inc['resumed_runs']} of its"
        f" {len(inc['read_modes'])} runs (warm-up included): it read the access point saved by"
        f" day {cond['previous_day']}'s run, hashed the compressed history before it to prove"
        f" it unchanged ({fmt_s(inc['stages_s']['verify'])} s), then inflated only"
        f" {fmt_mib(inc['bytes_inflated'])} of the archive's {fmt_mib(inc['archive_bytes'])}"
        " MiB, and parsed, transformed and wrote only the new rows and the days they touch.",
    ]
    others = sorted({m for m in inc["read_modes"] if not m.startswith("resumed")})
    if others:
        out[0] += " Other runs: " + "; ".join(others) + "."
    inflaters = results["inflaters"]
    if not inflaters:
        return out
    used = {
        "ISA-L (isal)": "every whole read of the baseline",
        "zlib (Z_BLOCK, ctypes)": "the incremental run's reads (it needs block boundaries)",
    }
    out += [
        "",
        f"Inflaters, on the whole day-{cond['day']} member ({fmt_mib(inflaters['bytes'])} MiB"
        " of CSV, median of 3, outside the pipelines' timings):",
        "",
        "| inflater | used for | seconds | MiB/s |",
        "| --- | --- | ---: | ---: |",
        *[
            f"| {name} | {used.get(name, '')} | {fmt_s(sec)} |"
            f" {inflaters['mib_per_s'][name]:,.0f} |"
            for name, sec in inflaters["seconds"].items()
        ],
        "",
        "The baseline gets the fastest inflater measured here. The incremental run"
        " inflates with zlib, the only one that reports deflate block boundaries and can"
        " be primed at one, so the slower inflater counts against it, on its small tail.",
    ]
    return out


def render_sweep(results: dict[str, Any]) -> list[str]:
    """The 'how cost grows' section: the chart and its numbers."""
    if not results["sweep"]:
        why = "no earlier day to sweep" if results["conditions"]["sweep"] else "--no-sweep"
        return ["## How cost grows", "", f"Not measured in this run ({why}).", ""]
    out = [
        "## How cost grows",
        "",
        "Each day's step from the day before, for every day: the baseline's cost follows"
        " the rows in the archive, the incremental one's the new rows (it inflates only the"
        " tail past its access point; hashing the compressed history, timed above, is all"
        " that still grows with the archive). Every day is one run per pipeline, time"
        " and memory sampled in the same run (for day N, the warm-up run of the main"
        " measurement), so these single figures are noisier than the medians above.",
        "",
        f"![time and peak memory against rows in the archive]({results['chart']})",
        "",
        "| day | rows in archive | new rows | baseline s | incremental s | speed-up |"
        " baseline MiB | incremental MiB | memory ratio | incremental inflated MiB |",
        "| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for p in results["sweep"]:
        base, inc = p["baseline"], p["incremental"]
        out.append(
            f"| {p['day']} | {p['rows_total']:,} | {p['rows_new']:,} | {fmt_s(base['wall_s'])} | "
            f"{fmt_s(inc['wall_s'])} | {p['speedup']:.1f}x | {base['peak_mib']:,.1f} | "
            f"{inc['peak_mib']:,.1f} | {p['memory_ratio']:.1f}x |"
            f" {fmt_mib(inc['bytes_inflated'])} |"
        )
    return [*out, ""]


def render_counters(results: dict[str, Any]) -> list[str]:
    """The data-quality counters of both pipelines."""
    base, inc = results["baseline"]["counters"], results["incremental"]["counters"]
    return [
        "## Data quality counters",
        "",
        "| counter | baseline (whole archive) | incremental (new rows) |",
        "| --- | ---: | ---: |",
        *[f"| {c} | {base[c]:,} | {inc[c]:,} |" for c in COUNTERS],
        "",
    ]


def render_parity(results: dict[str, Any]) -> list[str]:
    """The parity verdict, with the diff when it failed."""
    parity, client = results["parity"], results["conditions"]["client"]
    if parity["ok"]:
        return [
            "## Parity",
            "",
            f"Passed: the {parity['rows']:,} rows of `processed_sales` for {client} equal"
            " the full refresh (same keys, integer columns equal, float columns within 1e-9"
            f" relative), and so do the rejected rows. Checked in {parity['seconds']:.3f} s,"
            " outside every timing.",
            "",
        ]
    diff = parity["diff"]
    return [
        "## Parity",
        "",
        f"**FAILED**: {parity['error']}",
        "",
        f"- rows only in the incremental state: {diff['rows_only_incremental']:,}",
        f"- rows only in the full refresh: {diff['rows_only_full_refresh']:,}",
        f"- columns that differ (rows): {diff['columns_differing']}",
        *[f"- `{line}`" for line in diff["sample"]],
        "",
    ]


def render_correctness(results: dict[str, Any]) -> list[str]:
    """The 'Correctness' section: which checks ran in this run, and what they found."""
    c, cond = results["correctness"], results["conditions"]
    sweep_days = c["parity_sweep_days"]
    failed = [d for d, ok in sweep_days.items() if not ok]
    lines = [
        "## Correctness",
        "",
        f"- State at day {cond['previous_day']}: {c['state']}"
        f" ({results['warmup']['seconds']:.1f} s, untimed).",
        f"- Parity on day {cond['day']}: {'held' if c['parity_day_n'] else 'FAILED'}.",
    ]
    if sweep_days:
        days = list(sweep_days)
        lines.append(
            f"- Parity on each sweep day ({days[0]} to {days[-1]}, incremental state against"
            f" a full recompute of that day's archive): "
            + ("held on every day." if not failed else f"FAILED on days {failed}.")
        )
    elif cond["sweep"]:
        lines.append("- Parity on earlier days: no earlier day to sweep.")
    else:
        lines.append("- Parity on earlier days: not checked in this run (--no-sweep).")
    return [
        *lines,
        f"- Rows rejected (kept in `rejected_rows` with line and reason): "
        f"{c['rows_rejected_archive']:,} in the day-{cond['day']} archive,"
        f" {c['rows_rejected_new']:,} of them among its new rows.",
        "- Restatements detected (client rebuilt from the full archive): "
        + ("; ".join(c["restatements"]) if c["restatements"] else "none."),
        "- Fallbacks from an access point to a whole read (every replay, sweep and"
        " measured run): " + ("; ".join(c["fallbacks"]) if c["fallbacks"] else "none."),
        "",
    ]


def render_summary(results: dict[str, Any]) -> list[str]:
    """The day's leaderboard and local split, as the baseline's run computed them."""
    summary = results["summary"]
    return [
        f"## Top 5 SKU groups by revenue on {summary['date']}",
        "",
        "| rank | sku_group | revenue USD | orders |",
        "| ---: | --- | ---: | ---: |",
        *[
            f"| {i} | {r['sku_group']} | {r['revenue']:,.2f} | {r['orders']:,} |"
            for i, r in enumerate(summary["top_five"], 1)
        ],
        "",
        f"## California-local versus non-local on {summary['date']}",
        "",
        "| customers | orders | revenue USD | average order value USD |",
        "| --- | ---: | ---: | ---: |",
        *[
            f"| {'local (CA)' if r['local'] else 'non-local'} | {r['orders']:,} | "
            f"{r['revenue']:,.2f} | {r['avg_order_value']:,.2f} |"
            for r in summary["local_split"]
        ],
        "",
    ]


def render_conclusion(results: dict[str, Any]) -> list[str]:
    """The measured ratios, and what the sweep says about history."""
    ratios, inc, grew = results["ratios"], results["incremental"], results["growth"]
    lines = [
        "## Conclusion",
        "",
        f"- Speed: {ratios['speedup']:.2f}x (baseline median / incremental median).",
        f"- Memory: {ratios['memory_ratio']:.2f}x (baseline peak / incremental peak)."
        f" Leaving out the library code each run pages in (the last column of the memory"
        f" table, {inc['file_rss_delta_mib']:.0f} MiB of the incremental run's"
        f" {inc['peak_mib']:.0f}), the ratio would be"
        f" {ratios['memory_ratio_without_library_code']:.2f}x.",
    ]
    if grew:
        b, i = grew["baseline_wall_s"], grew["incremental_wall_s"]
        bm, im = grew["baseline_peak_mib"], grew["incremental_peak_mib"]
        verdict = (
            "its cost did not grow with history"
            if grew["incremental_flat"]
            else "its time grew with history too"
        )
        lines.append(
            f"- History: from day {grew['first_day']} to day {grew['last_day']} the baseline"
            f" went from {fmt_s(b['first'])} s and {bm['first']:,.0f} MiB to"
            f" {fmt_s(b['last'])} s and {bm['last']:,.0f} MiB (a fit over every day:"
            f" {b['per_million_rows']:+.3f} s per million rows of history); the incremental"
            f" run stayed between {fmt_s(i['min'])} and {fmt_s(i['max'])} s and between"
            f" {im['min']:,.0f} and {im['max']:,.0f} MiB ({i['per_million_rows']:+.3f} s per"
            f" million rows): {verdict}."
        )
    lines.append(f"- Parity: {'held' if results['parity']['ok'] else 'FAILED'}.")
    return [*lines, ""]


def render_method() -> list[str]:
    """How both pipelines work and how they are measured."""
    return [
        "## Methodology",
        "",
        "- Both pipelines use the same code for everything but what they read and how they"
        " write: `process_transactions` (Polars, lazy) parses, cleans"
        " (docs/spec.md section 2), counts and aggregates; `finalize` derives the table's"
        " columns from integer-cent sums.",
        "- Baseline: inflate the whole day-N archive, process every row, replace the"
        " client's rows of `processed_sales_full_refresh` in one transaction.",
        "- Incremental: resume inflating at a deflate block boundary saved by the day"
        " before (zlib's zran method: compressed offset and bit, the 32 KiB window),"
        " once the compressed bytes before it hash as they did (BLAKE3) and the text from"
        " it to yesterday's end hashes as processed; process only the rows past the"
        " checkpoint, then in one transaction delete and re-insert the days they touch"
        " (additive columns summed, derived ones recomputed), advance the checkpoint and"
        " store the next access points. If no point fits, it inflates the whole archive"
        " and checks the processed bytes against the checkpoint's fingerprint instead;"
        " if those changed, it rebuilds the client. Both are reported above.",
        "- Before timing, the client's incremental state is brought to day N-1 by"
        " replaying the archives through the incremental path (or a verified stored state"
        " is reused). Every run, timed or not, starts from its own copy of that state and"
        " runs in a fresh Python process, started once the disk's pending writes are flushed;"
        " the static lookups and imports are loaded before the clock starts. One untimed"
        " warm-up run per pipeline (which also measures memory), then the repeats,"
        " alternating the two pipelines.",
        "- `wall_s` spans the whole pipeline call, from its first step (for the incremental"
        " run, opening the database and reading the checkpoint) to the committed write;"
        " parity is checked afterwards, on the last repeat's output, and never timed with"
        " a pipeline.",
        "",
    ]


def render_report(results: dict[str, Any]) -> str:
    """results.md, formatted from the results record alone (no figure is computed here)."""
    sections = [
        render_headline(results),
        render_conditions(results),
        render_time_memory(results),
        render_peers(results),
        render_stages(results),
        render_sweep(results),
        render_counters(results),
        render_parity(results),
        render_correctness(results),
        render_summary(results),
        render_conclusion(results),
        render_method(),
    ]
    return "\n".join(line for section in sections for line in section)
