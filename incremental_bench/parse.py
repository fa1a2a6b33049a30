"""The parse stage: a block's records as rows of raw fields.

Owns Polars' reader on whole records and the checks that make it exact (shape, quote
placement, lone CRs), the record-by-record fallback, and typing the values that decide
whether a record is rejected. Knows nothing of the cleaning rules' lookups or of SQL."""

from __future__ import annotations

import contextlib
import csv
import io
from collections.abc import Iterator

import numpy as np
import polars as pl

from incremental_bench.blocks import Header, last_record_end, quote_toggles
from incremental_bench.config import (
    COLUMNS,
    COMMA,
    CR,
    ISO_DATE,
    LF,
    PARSED_SCHEMA,
    QUOTE,
    SUB_BLOCK_BYTES,
)


def parse_block(
    block: bytes, first_line: int, header: Header, check_values: bool = True
) -> tuple[pl.DataFrame, int]:
    """Parse stage: the block's records as rows of raw fields, and the lines they span.

    Rows carry their line number (where the record starts), the seven fields as
    strings, a `reason` for records that cannot be rows at all and, for those, their
    raw text. Polars' CSV reader reads the block first; a block it cannot read, whose
    shape does not add up, or that holds a rejected record whose raw text the fields
    cannot give back, is cut into pieces of about SUB_BLOCK_BYTES, and the pieces that
    still fail are read record by record, so a bad record is rejected alone.
    `check_values=False` leaves that last check to the caller (block_artifacts), which
    learns of rejected values from the transformation and takes their raw text from the
    block itself (record_texts).
    """
    newlines = count_byte(block, LF)  # counted once: the lines spanned, and fast_parse's check
    lines = newlines + (1 if block and not block.endswith(b"\n") else 0)
    rows = fast_parse(block, first_line, header, newlines, check_values)
    if rows is None:
        parts = []
        for piece, line in pieces(block, first_line):
            part = fast_parse(piece, line, header, check_values=check_values)
            parts.append(part if part is not None else parse_records(piece, line, header))
        rows = pl.concat(parts) if parts else empty_rows()
    return rows, lines


def record_texts(block: bytes, first_line: int, starts: pl.Series, wanted: pl.Series) -> pl.Series:
    """The raw text of the records of `block` that start on the lines `wanted` (the
    record's bytes without its line end, as rejected_rows keeps them). `starts`: the
    first line of every record of the block, in order; a record runs to the next."""
    ends = np.flatnonzero(np.frombuffer(block, dtype=np.uint8) == LF)
    line_starts = np.concatenate([[0], ends + 1])  # byte where each line of the block starts
    following = starts.to_numpy()
    texts = []
    for line in wanted.to_list():
        after = following[np.searchsorted(following, line, side="right") :]
        start = int(line_starts[line - first_line])
        stop = int(line_starts[after[0] - first_line]) if len(after) else len(block)
        record = block[start:stop].removesuffix(b"\n").removesuffix(b"\r")
        texts.append(record.decode("utf-8", "replace"))
    return pl.Series("raw_line", texts, dtype=pl.String)


def empty_rows() -> pl.DataFrame:
    """The parse stage's columns, without rows."""
    return pl.DataFrame(schema=PARSED_SCHEMA)


def raw_from_fields(data: bytes, header: Header) -> bool:
    """Whether a record's raw text can be rebuilt from its fields: only for unquoted
    records whose columns are the seven, in order."""
    return header.columns == tuple(COLUMNS) and b'"' not in data


def fast_parse(
    data: bytes,
    first_line: int,
    header: Header,
    newlines: int | None = None,
    check_values: bool = True,
) -> pl.DataFrame | None:
    """The records of `data` through Polars' CSV reader, or None where that is not exact.

    Polars pads a short record with empty fields and reads a blank line as a record
    of empties, so the shape is checked against the bytes: one line end per record
    (plus those inside fields) and one comma less than the columns per record (plus
    those inside fields). Any other trouble (broken quoting, a long record) makes the
    reader fail or the check differ. `newlines`: the line ends in `data`, if counted.
    """
    if not data:
        return empty_rows()
    quoted = b'"' in data
    if quoted and not quotes_well_placed(data):
        return None
    if b"\r" in data and lone_cr(data):
        return None  # a CR alone ends a line for Python's csv module, not for Polars
    names = [f"column_{i}" for i in range(len(header.columns))]
    frame = read_fields(data, names)
    if frame is None:
        return None
    records = frame.height
    ends = records - (0 if data.endswith(b"\n") else 1)
    if newlines is None:
        newlines = count_byte(data, LF)
    extra_lines = extra_commas = 0
    if quoted:  # line ends and commas inside quoted fields are not separators
        inner = [pl.col(n).str.count_matches(",", literal=True).sum() for n in names]
        extra_commas = sum(frame.select(inner).row(0))
        if newlines != ends:  # some field holds a line end: which record's lines are longer
            lines = (pl.col(n).str.count_matches("\n", literal=True) for n in names)
            frame = frame.with_columns(_lines=pl.sum_horizontal(lines))
            extra_lines = int(frame["_lines"].sum())
    if (
        newlines != ends + extra_lines
        or count_byte(data, COMMA) != records * (len(names) - 1) + extra_commas
    ):
        return None
    line = pl.int_range(pl.len(), dtype=pl.Int64) + first_line
    if extra_lines:  # a record starts below the lines its predecessors' fields span
        line += pl.col("_lines").cum_sum().shift(1, fill_value=0).cast(pl.Int64)
    rows = frame.select(
        line_number=line,
        **{c: pl.col(names[header.columns.index(c)]) for c in COLUMNS},
        reason=pl.lit(None, pl.String),
        raw_line=pl.lit(None, pl.String),
    )
    # A rejected row's raw text is rebuilt from its fields (raw_from_fields).
    if (
        check_values
        and not raw_from_fields(data, header)
        and rows.select(value_reason(typed_columns(rows)).is_not_null().any()).item()
    ):
        return None
    return rows


def read_fields(data: bytes, names: list[str]) -> pl.DataFrame | None:
    """Polars' reader on whole records, every field as text; None if it cannot read them.

    Strict UTF-8 first, as it is the faster read; text that is not valid UTF-8 is read
    again with U+FFFD in its place (the row is judged, not the file).
    """
    for encoding in ("utf8", "utf8-lossy"):
        with contextlib.suppress(pl.exceptions.PolarsError):
            return pl.read_csv(
                data,
                has_header=False,
                schema=dict.fromkeys(names, pl.String),
                encoding=encoding,
                empty_string_is_null=False,
                truncate_ragged_lines=False,
                raise_if_empty=False,
            )
    return None


# The quote check and the byte counts look at this much text at a time: their temporary
# arrays stay small enough for the processor's cache, whatever the block.
QUOTE_CHECK_BYTES = 1 << 20


def count_byte(data: bytes, byte: int) -> int:
    """How often `byte` occurs in `data`: numpy counts faster than bytes.count here.
    QUOTE_CHECK_BYTES at a time, so that its comparison never needs more than that much
    memory, whatever the block."""
    text = np.frombuffer(data, dtype=np.uint8)
    return sum(
        int(np.count_nonzero(text[start : start + QUOTE_CHECK_BYTES] == byte))
        for start in range(0, len(text), QUOTE_CHECK_BYTES)
    )


def quotes_well_placed(data: bytes) -> bool:
    """Whether every quote opens a field, closes one, or is doubled inside one.

    Polars reads `"941"07` or `"Bldg "B" 94107"` (text after a closing quote) without
    complaint, dropping quotes; Python's csv module, the exact path, rejects them. So
    a block goes to Polars only when its quotes are where RFC 4180 puts them, counted
    from the block's start (a record start): an opening quote (even count before it)
    follows a comma, a line end, another quote or the start; a closing one (odd) is
    followed by a comma, CR, LF, another quote or the end. Also false when the quotes
    are odd: a quoted field is left open.
    """
    text = np.frombuffer(data, dtype=np.uint8)
    last = len(text) - 1
    seen = 0
    for start in range(0, len(text), QUOTE_CHECK_BYTES):
        at = np.flatnonzero(text[start : start + QUOTE_CHECK_BYTES] == QUOTE) + start
        first = seen % 2  # whether this piece's first quote closes a field
        opening, closing = at[first::2], at[1 - first :: 2]
        seen += len(at)
        before = text[np.maximum(opening - 1, 0)]
        after = text[np.minimum(closing + 1, last)]
        starts = (before == COMMA) | (before == LF) | (before == QUOTE) | (opening == 0)
        ends = (after == COMMA) | (after == CR) | (after == LF) | (after == QUOTE)
        if not (starts.all() and (ends | (closing == last)).all()):
            return False
    return seen % 2 == 0


def lone_cr(data: bytes) -> bool:
    """Whether some CR in `data` is not followed by LF."""
    text = np.frombuffer(data, dtype=np.uint8)
    at = np.flatnonzero(text == CR)
    return bool(len(at)) and (at[-1] == len(text) - 1 or bool((text[at + 1] != LF).any()))


def pieces(block: bytes, first_line: int) -> Iterator[tuple[bytes, int]]:
    """The block in pieces of about SUB_BLOCK_BYTES that each hold whole records."""
    start, line = 0, first_line
    while start < len(block):
        size = SUB_BLOCK_BYTES
        end = len(block)
        while start + size < len(block):
            cut = last_record_end(block[start : start + size])
            if cut:
                end = start + cut
                break
            size *= 2  # one record longer than a piece: take a bigger one
        piece = block[start:end]
        yield piece, line
        line += piece.count(b"\n")
        start = end


def parse_records(data: bytes, first_line: int, header: Header) -> pl.DataFrame:
    """The records of `data` one by one (Python's csv module): the exact, slow path."""
    width = len(header.columns)
    where = [header.columns.index(c) for c in COLUMNS]
    out: dict[str, list] = {c: [] for c in PARSED_SCHEMA}
    line = first_line
    for record in split_records(data):
        text = record.removesuffix(b"\n").removesuffix(b"\r").decode("utf-8", "replace")
        fields, reason = record_fields(record, text, width)
        out["line_number"].append(line)
        for column, at in zip(COLUMNS, where, strict=True):
            out[column].append(fields[at] if fields else None)
        out["reason"].append(reason)
        out["raw_line"].append(text)  # kept for a rejected row, by values or by shape
        line += record.count(b"\n") + (0 if record.endswith(b"\n") else 1)
    return pl.DataFrame(out, schema=PARSED_SCHEMA)


def split_records(data: bytes) -> Iterator[bytes]:
    """The records of `data` (which starts at one), each with its line end if it has one."""
    start = 0
    while start < len(data):
        end = data.find(b"\n", start)
        while end >= 0 and quote_toggles(data, start, end) % 2:
            end = data.find(b"\n", end + 1)
        stop = len(data) if end < 0 else end + 1
        yield data[start:stop]
        start = stop


def record_fields(record: bytes, text: str, width: int) -> tuple[list[str] | None, str | None]:
    """A record's fields, or why it has none that can be used (its rejection reason)."""
    if not text:
        return None, "empty line"
    if not text.strip():
        return None, "blank line: whitespace only"
    if quote_toggles(record, 0, len(record)) % 2:
        return None, "broken quoting: a quoted field is never closed"
    try:
        rows = list(csv.reader(io.StringIO(text, newline=""), strict=True))
    except csv.Error as exc:
        return None, f"broken quoting: {exc}"
    if len(rows) != 1:
        return None, "broken quoting: one record reads as several"
    if len(rows[0]) != width:
        return None, f"wrong column count: {len(rows[0])} instead of {width}"
    return rows[0], None


def dates(rows: pl.DataFrame, column: str) -> pl.Expr:
    """`column`'s text as dates, null where it is not a real date written YYYY-MM-DD.

    Each distinct text is judged once (a day's rows hold a few hundred distinct dates),
    then mapped onto the rows: cheaper than a pattern and a parse on every row.
    """
    texts = rows[column].unique().drop_nulls()
    valid = pl.when(texts.str.contains(ISO_DATE)).then(texts.str.to_date("%Y-%m-%d", strict=False))
    return pl.col(column).replace_strict(
        texts, pl.select(valid).to_series(), default=None, return_dtype=pl.Date
    )


def typed_columns(rows: pl.DataFrame) -> dict[str, pl.Expr]:
    """The three values a row needs to be aggregated, typed (null where they do not parse)."""
    revenue = pl.col("revenue_usd").cast(pl.Float64, strict=False)
    revenue = pl.when(revenue.is_finite()).then(revenue)
    return {
        "tx_date": dates(rows, "transaction_date"),
        "quantity": pl.col("quantity_sold").cast(pl.Int64, strict=False),
        "revenue_cents": (revenue * 100).round().cast(pl.Int64),
    }


# Why a record's values cannot be aggregated, by the typed column that is null.
VALUE_REASONS = {
    "tx_date": "transaction_date is not a valid YYYY-MM-DD date",
    "quantity": "quantity_sold is not an integer",
    "revenue_cents": "revenue_usd is not a number",
}


def value_reason(typed: dict[str, pl.Expr]) -> pl.Expr:
    """Why a record's values cannot be aggregated (null when they can)."""
    return (
        pl.when(typed["tx_date"].is_null())
        .then(pl.lit(VALUE_REASONS["tx_date"]))
        .when(typed["quantity"].is_null())
        .then(pl.lit(VALUE_REASONS["quantity"]))
        .when(typed["revenue_cents"].is_null())
        .then(pl.lit(VALUE_REASONS["revenue_cents"]))
    )
