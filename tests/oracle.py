"""An independent oracle: the spec's table computed in plain Python (csv, re, datetime).

It shares no code with main.py, so a test comparing the two catches a wrong rule in
either. Rules: docs/spec.md sections 2 and 3.
"""

from __future__ import annotations

import datetime as dt
import re
from collections import defaultdict
from decimal import Decimal, InvalidOperation

COLUMNS = 7


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
    except (ValueError, InvalidOperation):
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


def expected(
    csv_text: str, client: str, zip_state: dict[str, str], sku_group: dict[str, str]
) -> tuple[dict[tuple, dict], dict[str, int], list[tuple[int, str]]]:
    """(table rows by key, counters, rejected (line_number, raw_line)) for one whole CSV."""
    sums: dict[tuple, list[int]] = defaultdict(lambda: [0, 0, 0])
    counters: dict[str, int] = defaultdict(int)
    rejected = []
    lines = csv_text.split("\n")
    if lines[-1] == "":
        lines.pop()
    for number, line in enumerate(lines[1:], start=2):
        fields = line.split(",")
        parsed = parse(fields)
        if parsed is None:
            rejected.append((number, line))
            continue
        tx, qty, cents = parsed
        zip_code = clean_zip(fields[6], counters)
        if zip_code not in zip_state:
            counters["zip_unknown"] += 1
        maturity = clean_maturity(fields[5], tx, counters)
        group = sku_group.get(fields[2])
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
            "revenue_share_of_day": cents / day_cents[key[:2]],
            "revenue_rank": ranks.index(cents) + 1,
        }
    return table
