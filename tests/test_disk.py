"""A full disk at any step is one line naming the folder, exit 2, and nothing changed.

Each test mounts a small tmpfs of its own: its disk fills for real, as a user's does.
Mounting needs root; CI runs as root and never skips, a developer's machine may.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from conftest import replay

import main
from incremental_bench import cli, config, store

RUN = ["--day", "3", "--repeat", "1", "--no-sweep", "--no-peers"]


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Callable[[int], Path]]:
    """Mounts a tmpfs of the given size in bytes; each unmounted at the end."""
    mounted: list[Path] = []

    def mount(size: int) -> Path:
        folder = tmp_path / f"small-{len(mounted)}"
        folder.mkdir()
        proc = subprocess.run(
            ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(folder)],
            capture_output=True,
            text=True,
        )
        if proc.returncode != 0:
            if os.environ.get("CI"):
                pytest.fail(f"cannot mount a tmpfs: {proc.stderr.strip()}")
            pytest.skip(f"cannot mount a tmpfs here (root needed): {proc.stderr.strip()}")
        mounted.append(folder)
        return folder

    yield mount
    for folder in mounted:
        subprocess.run(["umount", "--lazy", str(folder)], check=False)


def dump(db: Path) -> list[str]:
    """The database's whole content as SQL text: what 'unchanged' means."""
    with contextlib.closing(sqlite3.connect(db)) as con:
        return list(con.iterdump())


def fill(folder: Path) -> None:
    """Take every byte left on the folder's disk."""
    with open(folder / "filler", "wb", buffering=0) as f, contextlib.suppress(OSError):
        while f.write(b"\0" * 4096):
            pass


def day_2_state(feed: Path, db: Path) -> Path:
    """client_1 after days 1 and 2, checkpointed into the database's one file."""
    with contextlib.closing(replay(feed, db, [1, 2])) as con:
        con.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    return db


def one_line_naming(capsys: pytest.CaptureFixture[str], folder: Path) -> str:
    """The error printed, checked to be one line naming the full folder; stdout before it."""
    out, err = capsys.readouterr()
    assert err.count("\n") == 1 and "Traceback" not in err, err
    assert err.startswith(f"main.py: error: {folder}: its disk is full"), err
    return out


def leftovers(folder: Path) -> list[str]:
    """Files a run may not leave: scratch folders, half-written outputs."""
    return [p.name for p in folder.iterdir() if p.name.startswith(".")]


def test_a_new_database_on_a_full_disk(tiny_feed, small_disk, tmp_path, capsys):
    folder = small_disk(256 << 10)
    args = ["--data-dir", str(tiny_feed), "--db", str(folder / "db.sqlite"), *RUN]
    args += ["--report", str(tmp_path / "r.md"), "--json", str(tmp_path / "r.json")]
    assert main.main(args) == 2
    one_line_naming(capsys, folder)
    assert not (folder / "db.sqlite").exists()
    assert not (tmp_path / "r.md").exists() and not (tmp_path / "r.json").exists()
    assert leftovers(folder) == []


@pytest.mark.parametrize(
    ("room", "step"),
    [
        # Room for the database's own files (its shared-memory index among them), not
        # for a copy of it.
        pytest.param(lambda db: db + (128 << 10), "scratch copy", id="scratch-copy"),
        pytest.param(lambda db: 3 * db + (256 << 10), "measured run", id="measured-run"),
    ],
)
def test_an_existing_database_on_a_full_disk(room, step, tiny_feed, small_disk, tmp_path, capsys):
    built = day_2_state(tiny_feed, tmp_path / "built.sqlite")
    folder = small_disk(room(built.stat().st_size))
    db = folder / "db.sqlite"
    db.write_bytes(built.read_bytes())
    before = dump(db)
    args = ["--data-dir", str(tiny_feed), "--db", str(db), *RUN]
    assert main.main([*args, "--report", str(tmp_path / "r.md")]) == 2
    out = one_line_naming(capsys, folder)
    # The step that met the full disk: the measured runs start by saying so.
    assert ("timing 1 repeat(s)" in out) == (step == "measured run"), out
    assert dump(db) == before and not (tmp_path / "r.md").exists()
    assert leftovers(folder) == []


def test_a_full_report_folder_leaves_the_database_as_it_was(
    tiny_feed, small_disk, tmp_path, capsys
):
    db = day_2_state(tiny_feed, tmp_path / "db.sqlite")
    before = dump(db)
    full = small_disk(64 << 10)
    fill(full)
    args = ["--data-dir", str(tiny_feed), "--db", str(db), *RUN]
    args += ["--report", str(full / "r.md"), "--json", str(tmp_path / "r.json")]
    assert main.main(args) == 2
    one_line_naming(capsys, full)
    assert dump(db) == before  # the report is written before the database changes
    assert not (tmp_path / "r.json").exists()  # no output without the others
    assert leftovers(full) == [] and leftovers(tmp_path) == []


def test_the_final_replace_on_a_full_disk_changes_nothing(tiny_feed, small_disk, tmp_path):
    # The last write of a run: day N's rows into the real database. Made to fail alone:
    # the database sits on a disk filled just before it.
    final = tmp_path / "final.sqlite"
    with contextlib.closing(replay(tiny_feed, final, [1, 2, 3])):
        pass
    built = day_2_state(tiny_feed, tmp_path / "built.sqlite")
    folder = small_disk(built.stat().st_size + (128 << 10))
    db = folder / "db.sqlite"
    db.write_bytes(built.read_bytes())
    before = dump(db)
    fill(folder)
    with pytest.raises(config.DiskFull) as err, store.full_disk_named(folder):
        cli.save_day_n(db, final, "client_1", say=lambda line: None)
    assert str(err.value).startswith(f"{folder}: its disk is full")
    (folder / "filler").unlink()
    assert dump(db) == before
