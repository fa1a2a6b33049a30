"""An independent oracle: the spec's table computed in plain Python (csv, re, datetime).

It shares no code with main.py, so a test comparing the two catches a wrong rule in
either. Records are split line by line and read with Python's csv module, not with
Polars. Rules: docs/spec.md sections 1 (the dialect), 2 and 3.
"""

from __future__ import annotations

import csv
import datetime as dt
import io
import re
from collections import defaultdict
from decimal import Decimal, InvalidOperation

NAMES = [
    "transaction_id",
    "transaction_date",
    "sku_id",
    "quantity_sold",
    "revenue_usd",
    "maturity_date",
    "zip_code_raw",
]
COLUMNS = len(NAMES)


def iso_date(text: str) -> dt.date | None:
    """A strict YYYY-MM-DD date, or None."""
    if not re.fullmatch(r"[0-9]{4}-[0-9]{2}-[0-9]{2}", text):
        return None
    try:
        return dt.date.fromisoformat(text)
    except ValueError:
        return None


def parse(fields: list[str]) -> tuple[dt.date, int, int] | None:
    """(transaction date, quantity, revenue in cents) of a row, or None to reject it."""
    if len(fields) != COLUMNS:
        return None
    tx = iso_date(fields[1])
    try:
        qty = int(fields[3])
        cents = int((Decimal(fields[4]) * 100).to_integral_value())
    except (ValueError, InvalidOperation, OverflowError):  # not a number, or not finite
        return None
    return (tx, qty, cents) if tx is not None else None


def clean_zip(zip_raw: str, counters: dict[str, int]) -> str:
    """The ZIP rule: blank is 00000, else the first five digits after removing whitespace."""
    if zip_raw.strip() == "":
        counters["zip_missing"] += 1
        return "00000"
    found = re.search(r"[0-9]{5}", re.sub(r"\s", "", zip_raw).upper())
    if not found:
        counters["zip_international"] += 1
        return "00000"
    if zip_raw != found.group():
        counters["zip_repaired"] += 1
    return found.group()


def clean_maturity(mat_text: str, tx: dt.date, counters: dict[str, int]) -> dt.date:
    """The maturity rule: invalid is transaction + 3 days, earlier is clamped to it."""
    maturity = iso_date(mat_text)
    if maturity is None:
        maturity = tx + dt.timedelta(days=3)
        counters["maturity_imputed"] += 1
    if maturity < tx:
        counters["maturity_clamped"] += 1
        return tx
    return maturity


def records(text: str) -> list[tuple[int, str, bool]]:
    """(line where it starts, text without its line end, quotes left open) of each record."""
    lines = text.split("\n")
    if lines[-1] == "":
        lines.pop()
    out, current, start, toggles = [], None, 0, 0
    for number, line in enumerate(lines, start=1):
        current, start = (line, number) if current is None else (current + "\n" + line, start)
        toggles += line.count('"')  # every quote opens or closes quoting
        if toggles % 2 == 0:
            out.append((start, current.removesuffix("\r"), False))
            current, toggles = None, 0
    if current is not None:  # a quoted field never closed: the record runs to the end
        out.append((start, current.removesuffix("\r"), True))
    return out


def fields_of(text: str, open_quote: bool, width: int) -> list[str] | None:
    """A record's fields, or None when it cannot be a row (blank, broken, wrong width)."""
    if not text or open_quote:
        return None
    try:
        rows = list(csv.reader(io.StringIO(text, newline=""), strict=True))
    except csv.Error:
        return None
    if len(rows) != 1 or len(rows[0]) != width:
        return None
    return rows[0]


def expected(
    csv_text: str, client: str, zip_state: dict[str, str], sku_group: dict[str, str]
) -> tuple[dict[tuple, dict], dict[str, int], list[tuple[int, str]]]:
    """(table rows by key, counters, rejected (line_number, raw_line)) for one whole CSV."""
    sums: dict[tuple, list[int]] = defaultdict(lambda: [0, 0, 0])
    counters: dict[str, int] = defaultdict(int)
    rejected = []
    (_, header, _), *body = records(csv_text.removeprefix("\ufeff"))
    names = [n.strip() for n in next(csv.reader([header]))]
    where = [names.index(n) for n in NAMES]
    for number, text, open_quote in body:
        fields = fields_of(text, open_quote, len(names))
        parsed = parse([fields[i] for i in where]) if fields else None
        if parsed is None:
            rejected.append((number, text))
            continue
        _id, _tx, sku, _q, _r, maturity_text, zip_raw = (fields[i] for i in where)
        tx, qty, cents = parsed
        zip_code = clean_zip(zip_raw, counters)
        if zip_code not in zip_state:
            counters["zip_unknown"] += 1
        maturity = clean_maturity(maturity_text, tx, counters)
        group = sku_group.get(sku)
        if group is None:
            group = "UNKNOWN"
            counters["sku_unmatched"] += 1
        local = 1 if zip_state.get(zip_code) == "CA" else 0
        acc = sums[(client, tx.isoformat(), maturity.isoformat(), group, local)]
        acc[0] += qty
        acc[1] += cents
        acc[2] += 1
    counters["rows_rejected"] = len(rejected)
    return table_of(sums), dict(counters), rejected


def table_of(sums: dict[tuple, list[int]]) -> dict[tuple, dict]:
    """The table's columns from the additive sums of each key."""
    day_cents: dict[tuple, int] = defaultdict(int)
    day_values: dict[tuple, set[int]] = defaultdict(set)
    for key, (_q, cents, _n) in sums.items():
        day_cents[key[:2]] += cents
        day_values[key[:2]].add(cents)
    table = {}
    for key, (qty, cents, count) in sums.items():
        ranks = sorted(day_values[key[:2]], reverse=True)
        table[key] = {
            "total_quantity": qty,
            "total_revenue": cents / 100,
            "order_count": count,
            "avg_quantity_per_order": qty / count,
            "avg_order_value": cents / 100 / count,
            "days_to_maturity": (
                dt.date.fromisoformat(key[2]) - dt.date.fromisoformat(key[1])
            ).days,
            "revenue_share_of_day": cents / day_cents[key[:2]] if day_cents[key[:2]] else 0.0,
            "revenue_rank": ranks.index(cents) + 1,
        }
    return table
