"""An independent oracle: the contract's table computed in plain Python (csv, re, datetime).

It shares no code with main.py, so a test comparing the two catches a wrong rule in
either. Rules: ../shared/CONTRACT.md sections 2 and 3.
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


def expected(
    csv_text: str, client: str, zip_state: dict[str, str], sku_group: dict[str, str]
) -> tuple[dict[tuple, dict], dict[str, int], list[tuple[int, str]]]:
    """(table rows by key, counters, rejected (line_number, raw_line)) for one whole CSV."""
    sums: dict[tuple, list[int]] = defaultdict(lambda: [0, 0, 0])
    counters = defaultdict(int)
    rejected = []
    lines = csv_text.split("\n")
    if lines[-1] == "":
        lines.pop()
    for number, line in enumerate(lines[1:], start=2):
        fields = line.split(",")
        if len(fields) != COLUMNS:
            rejected.append((number, line))
            continue
        _id, tx_text, sku, qty_text, rev_text, mat_text, zip_raw = fields
        tx = iso_date(tx_text)
        try:
            qty = int(qty_text)
            cents = int((Decimal(rev_text) * 100).to_integral_value())
        except (ValueError, InvalidOperation):
            qty = cents = None
        if tx is None or qty is None or cents is None:
            rejected.append((number, line))
            continue
        if zip_raw.strip() == "":
            zip_code = "00000"
            counters["zip_missing"] += 1
        else:
            found = re.search(r"[0-9]{5}", re.sub(r"\s", "", zip_raw).upper())
            zip_code = found.group() if found else "00000"
            if not found:
                counters["zip_international"] += 1
            elif zip_raw != zip_code:
                counters["zip_repaired"] += 1
        if zip_code not in zip_state:
            counters["zip_unknown"] += 1
        maturity = iso_date(mat_text)
        if maturity is None:
            maturity = tx + dt.timedelta(days=3)
            counters["maturity_imputed"] += 1
        if maturity < tx:
            maturity = tx
            counters["maturity_clamped"] += 1
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
    return table, dict(counters), rejected
