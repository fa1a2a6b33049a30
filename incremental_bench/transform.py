"""The shared transformation: clean, count and aggregate (both pipelines, every peer).

Owns the lookups, the cleaning rules of docs/spec.md section 2, the aggregate and the
table's derived columns (section 3), and the loop that parses and transforms block
after block. Knows nothing of SQL or of how the text was read."""

from __future__ import annotations

import contextlib
import datetime as dt
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import polars as pl

from incremental_bench.blocks import Header, LineBlocks
from incremental_bench.clock import Stopwatch
from incremental_bench.config import (
    COLUMNS,
    COUNTERS,
    KEY,
    LOCAL_STATE,
    MATURITY_DEFAULT_DAYS,
    REJECT_LIMIT,
    UNKNOWN_SKU_GROUP,
    InputError,
)
from incremental_bench.parse import (
    VALUE_REASONS,
    dates,
    empty_rows,
    parse_block,
    raw_from_fields,
    record_texts,
    typed_columns,
    value_reason,
)


@dataclass(frozen=True)
class Lookups:
    """Static lookups, loaded once per process and shared by both pipelines."""

    zips: pl.DataFrame  # zip_code -> state (a key listed twice: its first row)
    skus: pl.DataFrame  # sku_id -> sku_group

    # Derived once, with the lookups (before any clock), for the transformation:
    zip_flags: pl.Series = field(init=False)  # see lookup_arrays
    groups: pl.Series = field(init=False)  # every sku_group, UNKNOWN_SKU_GROUP included
    sku_index: tuple[pl.Series, pl.Series] = field(init=False)  # sku_id, index in groups

    def __post_init__(self) -> None:
        for name, value in zip(
            ("zip_flags", "groups", "sku_index"), lookup_arrays(self.zips, self.skus), strict=True
        ):
            object.__setattr__(self, name, value)


def lookup_arrays(
    zips: pl.DataFrame, skus: pl.DataFrame
) -> tuple[pl.Series, pl.Series, tuple[pl.Series, pl.Series]]:
    """The lookups as the transformation uses them.

    `zip_flags`, indexed by a five-digit code read as a number: 1 if the code is
    listed, plus 2 if its state is LOCAL_STATE (a cleaned zip_code is always five
    ASCII digits, so one gather replaces a join on text; listed codes of another shape
    can match nothing). `groups`: every sku_group, UNKNOWN_SKU_GROUP included, rows
    group on an index into these. `sku_index`: each listed sku_id and the index of its
    group (null for a listed sku_id without a group: unmatched, as an absent one).
    """
    five = zips.filter(pl.col("zip_code").str.contains(r"^[0-9]{5}$"))
    flags = np.zeros(10**5, np.uint8)
    local = (five["state"] == LOCAL_STATE).fill_null(False).to_numpy()
    flags[five["zip_code"].cast(pl.UInt32).to_numpy()] = 1 + 2 * local
    groups = skus["sku_group"].drop_nulls().unique(maintain_order=True)
    if UNKNOWN_SKU_GROUP not in groups:
        groups = groups.append(pl.Series([UNKNOWN_SKU_GROUP]))
    index = pl.int_range(len(groups), eager=True, dtype=pl.UInt32)
    sku_index = skus["sku_group"].replace_strict(groups, index, default=None)
    return pl.Series("zip_flags", flags), groups, (skus["sku_id"], sku_index)


_LOOKUPS: dict[Path, Lookups] = {}


def load_lookups(data_dir: Path) -> Lookups:
    """Read (once per process) and validate the two static lookups."""
    if data_dir not in _LOOKUPS:
        static = data_dir / "static"
        zips = read_lookup(static / "us_zip_codes.csv", ["zip_code", "state"])
        skus = read_lookup(static / "sku_groups.csv", ["sku_id", "sku_group"])
        _LOOKUPS[data_dir] = Lookups(
            zips=zips.unique("zip_code", keep="first"),
            skus=skus.unique("sku_id", keep="first"),
        )
    return _LOOKUPS[data_dir]


def read_lookup(path: Path, columns: list[str]) -> pl.DataFrame:
    """One lookup CSV as strings, with the columns it must have."""
    try:
        frame = pl.read_csv(path, infer_schema=False)
    except FileNotFoundError:
        raise InputError(f"{path}: lookup file not found") from None
    except (pl.exceptions.PolarsError, OSError) as exc:
        raise InputError(f"{path}: cannot read lookup ({str(exc).splitlines()[0]})") from None
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        raise InputError(f"{path}: lookup lacks column(s) {missing}")
    return frame.select(columns)


@dataclass
class PipelineArtifacts:
    """What process_transactions returns to both pipelines."""

    aggregated: pl.DataFrame  # KEY + total_quantity, revenue_cents, order_count
    counters: dict[str, int]  # data-quality counters of docs/spec.md section 2
    latest_date: dt.date | None  # latest transaction_date among the rows processed
    rejected: pl.DataFrame  # line_number, reason, raw_line
    rows_read: int = 0  # records
    lines_read: int = 0  # lines they span (a quoted field may hold line ends)


def typed_rows(rows: pl.DataFrame) -> pl.DataFrame:
    """Typed columns, the parsed maturity_date and a rejection reason (null for rows that
    parse). Materialised once: the aggregate and the rejected rows both start here."""
    typed = {name: pl.col(name) for name in ("tx_date", "quantity", "revenue_cents")}
    return (
        rows.lazy()
        .with_columns(**typed_columns(rows), maturity_parsed=dates(rows, "maturity_date"))
        .with_columns(reason=pl.coalesce("reason", value_reason(typed)))
        .collect()
    )


def cleaned_zips(raw: pl.Series) -> tuple[pl.Series, dict[str, int]]:
    """The ZIP rules of docs/spec.md section 2: per row the five digits found, as a
    number (null: none, so 00000), and the three ZIP counters.

    Most raw values are exactly five ASCII digits already (a length and a cast tell):
    those need no pattern. Only the others are searched, gathered apart and put back.
    """
    raw = raw.fill_null("")  # absent: as empty
    number = raw.cast(pl.UInt32, strict=False)
    plain = (raw.str.len_bytes() == 5) & number.is_not_null() & ~raw.str.starts_with("+")
    at = (~plain).arg_true()
    # Whitespace dropped (runs at once: the same text), the first five digits are found
    # by their byte offset (a search, cheaper than a capture) and cut out as bytes.
    text = pl.col("raw").str.replace_all(r"\s+", "")
    blank = text == ""  # empty or only whitespace (Unicode's, as \s is)
    start = text.str.find(r"[0-9]{5}")
    five = text.cast(pl.Binary).bin.slice(start, 5).cast(pl.String).cast(pl.UInt32)
    other = (
        pl.LazyFrame({"raw": raw.gather(at)})
        .select(
            five=five,
            zip_missing=blank,
            zip_international=~blank & start.is_null(),
            # Never exactly the five digits it holds (those are the rows above): repaired.
            zip_repaired=start.is_not_null(),
        )
        .collect()
    )
    counts = {c: int(other[c].sum()) for c in ("zip_missing", "zip_international", "zip_repaired")}
    return number.scatter(at, other["five"]), counts


def cleaned_rows(valid: pl.LazyFrame, lookups: Lookups) -> pl.LazyFrame:
    """Apply the cleaning rules of docs/spec.md section 2, with one flag column per counter.

    `sku` is the index of the row's sku_group in `lookups.groups` (null: unmatched) and
    `zip_flags` the code's entry in `lookups.zip_flags`.
    """
    tx = pl.col("tx_date")
    parsed_m = pl.col("maturity_parsed")
    maturity = parsed_m.fill_null(tx + pl.duration(days=MATURITY_DEFAULT_DAYS))
    sku_ids, sku_index = lookups.sku_index
    flags = pl.col("zip_flags")
    return valid.with_columns(
        maturity_imputed=parsed_m.is_null(),
        maturity_clamped=maturity < tx,
        maturity=pl.max_horizontal(maturity, tx),
        zip_flags=pl.lit(lookups.zip_flags).gather(pl.col("zip_int").fill_null(0)),
        sku=pl.col("sku_id").replace_strict(
            sku_ids, sku_index, default=None, return_dtype=pl.UInt32
        ),
    ).with_columns(
        zip_unknown=(flags & 1) == 0,
        local=(flags & 2) != 0,
        sku_unmatched=pl.col("sku").is_null(),
    )


# Rows group on two integers instead of four columns (a date, a date, a text, a flag):
# the transaction date in days shifted left past the days to maturity (under 2**DAY_BITS
# for any date of years 0000-9999), and the sku_group's index doubled plus `local`.
DAY_BITS = 23


def process_transactions(rows: pl.DataFrame, client: str, lookups: Lookups) -> PipelineArtifacts:
    """The one transformation both pipelines run: type, clean, count and aggregate.

    The typed rows are materialised once (the aggregate and the rejected rows both read
    them); the cleaning and the aggregate are one lazy query, whose counters are sums
    in the aggregate's own group_by (then summed over its groups), so the cleaned rows
    are passed over once.
    """
    typed = typed_rows(rows)
    bad = typed["reason"].is_not_null()
    # The rejected rows outlive the block (they are kept to the end of the read): their
    # texts are made anew, as a filtered string column would keep the whole block's
    # string buffers alive through its views (docs/design.md).
    rejected = typed.filter(bad).select(
        "line_number",
        pl.col("reason").str.replace_all("^", ""),
        raw_line=pl.coalesce(
            "raw_line", pl.concat_str(COLUMNS, separator=","), pl.lit("")
        ).str.replace_all("^", ""),
    )
    valid = typed.filter(~bad) if rejected.height else typed
    zip_int, zip_counts = cleaned_zips(valid["zip_code_raw"])
    clean = cleaned_rows(valid.lazy().with_columns(zip_int=zip_int), lookups)
    flags = [c for c in COUNTERS if c not in ("rows_rejected", *zip_counts)]
    tx = pl.col("tx_date")
    group = pl.col("sku").fill_null(lookups.groups.index_of(UNKNOWN_SKU_GROUP))
    counted = (
        clean.group_by(
            day_key=tx.cast(pl.Int64) * 2**DAY_BITS + (pl.col("maturity") - tx).dt.total_days(),
            group_key=group.cast(pl.UInt64) * 2 + pl.col("local").cast(pl.UInt64),
        )
        .agg(
            total_quantity=pl.col("quantity").sum(),
            revenue_cents=pl.col("revenue_cents").sum(),
            order_count=pl.len().cast(pl.Int64),
            **{c: pl.col(c).sum() for c in flags},
        )
        .collect()
    )
    totals = counted.select(pl.col(flags).sum())
    stats = {c: int(totals[c][0]) for c in flags} | zip_counts
    stats["rows_rejected"] = rejected.height
    day = (pl.col("day_key") // 2**DAY_BITS).cast(pl.Int32).cast(pl.Date)
    agg = counted.select(
        client_id=pl.lit(client, pl.String),
        transaction_date=day,
        maturity_date=day + pl.duration(days=pl.col("day_key") % 2**DAY_BITS),
        sku_group=pl.lit(lookups.groups).gather(pl.col("group_key") // 2),
        local=pl.col("group_key") % 2 == 1,
        total_quantity="total_quantity",
        revenue_cents="revenue_cents",
        order_count="order_count",
    )
    return PipelineArtifacts(
        aggregated=agg,
        counters={c: stats[c] for c in COUNTERS},
        latest_date=agg["transaction_date"].max(),
        rejected=rejected,
        rows_read=valid.height + rejected.height,
    )


def process_blocks(
    blocks: LineBlocks,
    first_line: int,
    client: str,
    lookups: Lookups,
    clock: Stopwatch,
    keep: pl.Expr | None = None,
) -> PipelineArtifacts:
    """Parse and transform block after block, then add the partial results up.

    Every output column is a sum (or a max), so blocks combine exactly; the stage
    clocks accumulate over the blocks. `keep`, if given, selects the parsed rows to
    process (a peer's shortcut; the pipelines process every row they read).
    """
    task = (client, lookups)
    parts = []
    # Closed on any error too: its read's inflating thread stops now, not whenever the
    # traceback that holds this frame goes.
    with contextlib.closing(iter(blocks)) as texts:
        while True:
            with clock.stage("read"):
                block = next(texts, None)
            if block is None:
                break
            handed = [block]
            del block  # block_artifacts holds the only reference, and lets go once it can
            parts.append(block_artifacts(handed, first_line, blocks.header, clock, keep, task))
            first_line += parts[-1].lines_read
    with clock.stage("transform"):
        if not parts:  # nothing new: an empty result with the right columns
            return process_transactions(empty_rows(), client, lookups)
        return parts[0] if len(parts) == 1 else combine(parts)


def block_artifacts(
    handed: list[bytes],
    first_line: int,
    header: Header,
    clock: Stopwatch,
    keep: pl.Expr | None,
    task: tuple[str, Lookups],
) -> PipelineArtifacts:
    """One block (alone in `handed`) parsed and transformed (`task`: the client and the
    lookups).

    The values are judged by the transformation, not again by the parse; where a
    record is rejected for them and its raw text cannot be rebuilt from its fields
    (raw_from_fields), that text is taken from the block, from the record's first line
    to the next record's.
    """
    block = handed.pop()
    exact = raw_from_fields(block, header)
    with clock.stage("parse"):
        rows, lines = parse_block(block, first_line, header, check_values=False)
        starts = rows["line_number"]
        if exact:
            block = b""  # the text is in `rows` now
        if keep is not None:
            rows = rows.filter(keep)
    with clock.stage("transform"):
        part = process_transactions(rows, *task)
    del rows
    by_value = part.rejected["reason"].is_in(list(VALUE_REASONS.values()))
    if not exact and by_value.any():
        with clock.stage("parse"):
            wanted = part.rejected.filter(by_value)["line_number"]
            texts = pl.DataFrame(
                {"line_number": wanted, "text": record_texts(block, first_line, starts, wanted)}
            )
            part.rejected = (
                part.rejected.join(texts, on="line_number", how="left", maintain_order="left")
                .with_columns(raw_line=pl.coalesce("text", "raw_line"))
                .drop("text")
            )
    part.lines_read = lines
    return part


def sum_additive(frame: pl.DataFrame) -> pl.DataFrame:
    """Add up the additive columns of rows that share a key."""
    return frame.group_by(KEY).agg(
        pl.col("total_quantity").sum(), pl.col("revenue_cents").sum(), pl.col("order_count").sum()
    )


def combine(parts: list[PipelineArtifacts]) -> PipelineArtifacts:
    """One PipelineArtifacts from those of consecutive blocks."""
    aggregated = sum_additive(pl.concat([p.aggregated for p in parts]))
    latest = max((p.latest_date for p in parts if p.latest_date), default=None)
    return PipelineArtifacts(
        aggregated=aggregated,
        counters={c: sum(p.counters[c] for p in parts) for c in COUNTERS},
        latest_date=latest,
        rejected=pl.concat([p.rejected for p in parts]),
        rows_read=sum(p.rows_read for p in parts),
        lines_read=sum(p.lines_read for p in parts),
    )


def check_rejections(path: Path, artifacts: PipelineArtifacts, which: str) -> None:
    """Stop (changing nothing) when more than 1% of the rows read cannot be parsed.

    `which` names them for the message: the baseline reads "rows", the incremental
    pipeline "new rows".
    """
    rejected, read = artifacts.counters["rows_rejected"], artifacts.rows_read
    if read and rejected / read > REJECT_LIMIT:
        sample = artifacts.rejected.row(0, named=True)
        raise InputError(
            f"{path}: {rejected:,} of {read:,} {which} cannot be parsed "
            f"(over {REJECT_LIMIT:.0%}); first: line {sample['line_number']}, {sample['reason']}"
        )


def iso(day: dt.date | None) -> str | None:
    """A date as YYYY-MM-DD text, None stays None."""
    return day.isoformat() if day else None


def top_five(aggregated: pl.DataFrame, day: dt.date | None) -> pl.DataFrame:
    """Top 5 sku_groups by revenue on `day` (ties broken by name, for a stable order)."""
    if day is None:
        return pl.DataFrame()
    cents = pl.col("revenue_cents")
    return (
        aggregated.filter(pl.col("transaction_date") == day)
        .group_by("sku_group")
        .agg(cents.sum(), orders=pl.col("order_count").sum())
        .sort(["revenue_cents", "sku_group"], descending=[True, False])
        .head(5)
        .select("sku_group", revenue=cents / 100, orders="orders")
    )


def local_split(aggregated: pl.DataFrame, day: dt.date | None) -> pl.DataFrame:
    """Orders, revenue and average order value of local (CA) and other customers on `day`."""
    if day is None:
        return pl.DataFrame()
    cents, orders = pl.col("revenue_cents"), pl.col("orders")
    return (
        aggregated.filter(pl.col("transaction_date") == day)
        .group_by("local")
        .agg(orders=pl.col("order_count").sum(), revenue_cents=cents.sum())
        .sort("local", descending=True)
        .select("local", "orders", revenue=cents / 100, avg_order_value=cents / (orders * 100))
    )


def finalize(aggregated: pl.DataFrame) -> pl.DataFrame:
    """From the additive columns to the table of docs/spec.md section 3.

    Revenue stays in integer cents until here: totals, shares and rank ties are then
    identical whatever order the rows were added in.
    """
    cents = pl.col("revenue_cents")
    day = ["client_id", "transaction_date"]
    return (
        aggregated.lazy()
        .select(
            *KEY,
            "total_quantity",
            total_revenue=cents / 100,
            order_count="order_count",
            avg_quantity_per_order=pl.col("total_quantity") / pl.col("order_count"),
            avg_order_value=cents / (pl.col("order_count") * 100),
            days_to_maturity=(pl.col("maturity_date") - pl.col("transaction_date")).dt.total_days(),
            # A day whose revenue sums to zero has no shares to give: 0, not NaN.
            revenue_share_of_day=pl.when(cents.sum().over(day) != 0)
            .then(cents / cents.sum().over(day))
            .otherwise(0.0),
            revenue_rank=cents.rank("dense", descending=True).over(day).cast(pl.Int64),
        )
        .with_columns(
            pl.col("transaction_date").dt.to_string("%Y-%m-%d"),
            pl.col("maturity_date").dt.to_string("%Y-%m-%d"),
            pl.col("local").cast(pl.Int64),
        )
        .sort(KEY)
        .collect()
    )
