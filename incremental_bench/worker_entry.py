"""A measured run's process: `python -m incremental_bench.worker_entry SPEC_JSON`.

Started by the harness only. Its first act is to tie its life to the driver's, before
the measuring machinery (Polars, pandas, memory_profiler) loads, so that a driver
killed at any moment leaves no worker behind.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import signal
import sys
from dataclasses import asdict
from pathlib import Path


def die_with_driver(driver_pid: int) -> None:
    """Have the kernel kill this worker when the driver dies, even by SIGKILL.

    PR_SET_PDEATHSIG is set in the worker itself (a preexec_fn would run in the
    driver's forked child while Polars' threads exist); a driver already gone before
    it took effect is caught by the parent check.
    """
    pr_set_pdeathsig = 1
    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(pr_set_pdeathsig, signal.SIGKILL, 0, 0, 0)
    if os.getppid() != driver_pid:
        os._exit(1)


def main(argv: list[str] | None = None) -> int:
    """Run the measured call of the spec in argv[0]; an unusable input is one line on
    stderr and exit 2, as from main.py."""
    spec = json.loads((sys.argv[1:] if argv is None else argv)[0])
    die_with_driver(spec["driver_pid"])
    # Imported only now: loading the machinery takes long enough for the driver to die
    # meanwhile, and until die_with_driver has run the worker would outlive it.
    from incremental_bench.config import SCRATCH_PREFIX, InputError
    from incremental_bench.pg import is_url
    from incremental_bench.store import database_errors_named, full_disk_named
    from incremental_bench.worker import RunSpec, worker

    if is_url(spec["db"]):  # a server's failure names its URL, without the password
        errors = database_errors_named(spec["db"])
    else:
        # A copy in the run's scratch folder: a full disk names the folder the user
        # chose, the one that holds the scratch folder.
        folder = Path(spec["db"]).resolve().parent
        if folder.name.startswith(SCRATCH_PREFIX):
            folder = folder.parent
        errors = full_disk_named(folder)
    try:
        with errors:
            result = worker(RunSpec(**spec))
    except InputError as exc:
        print(f"main.py: error: {exc}", file=sys.stderr)
        return 2
    Path(spec["out"]).write_text(json.dumps(asdict(result)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
