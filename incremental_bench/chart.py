"""The chart beside results.md: time and peak memory of both pipelines against rows in
the archive, drawn from the results record alone (matplotlib, no display)."""

from __future__ import annotations

from pathlib import Path
from typing import Any


def render_chart(results: dict[str, Any], path: Path) -> None:
    """The PNG next to results.md: time and peak memory against rows in the archive."""
    # Imported here, only when a chart is drawn: matplotlib's import is slow
    # (docs/design.md), and a run without a sweep never needs it.
    import matplotlib

    matplotlib.use("Agg")  # no display needed
    import matplotlib.pyplot as plt

    points = results["sweep"]
    rows = [p["rows_total"] / 1e6 for p in points]
    fig, (ax_time, ax_mem) = plt.subplots(1, 2, figsize=(11, 4.2))
    for pipeline, style in (("baseline", "o-"), ("incremental", "s-")):
        ax_time.plot(rows, [p[pipeline]["wall_s"] for p in points], style, label=pipeline)
        ax_mem.plot(rows, [p[pipeline]["peak_mib"] for p in points], style, label=pipeline)
    for ax, label in ((ax_time, "wall time (s)"), (ax_mem, "peak memory (MiB)")):
        ax.set_xlabel("rows in the archive (millions)")
        ax.set_ylabel(label)
        ax.set_ylim(bottom=0)
        ax.grid(alpha=0.3)
        ax.legend()
    cond = results["conditions"]
    fig.suptitle(f"{cond['client']}: one day's step, days 2 to {cond['day']}")
    fig.tight_layout()
    try:
        fig.savefig(path, format="png", dpi=100)
    finally:
        plt.close(fig)
