"""Where a database is and what is done to it whole: open, copy, move, a full disk.

A --db value is an SQLite file or a postgresql:// URL (`pg` holds the server's side).
Opening a connection, copying a database for a scratch run, moving it into place,
and naming a full disk in one line live here; what is inside the tables is the store's."""

from __future__ import annotations

import contextlib
import errno
import os
import sqlite3
import tempfile
from collections.abc import Iterator
from pathlib import Path

from incremental_bench import pg
from incremental_bench.config import FULL_DISK_BYTES, BenchConfig, DiskFull, InputError
from incremental_bench.pg import PgConnection


class Connection(sqlite3.Connection):
    """sqlite3 connection whose commit() waits while one of our transactions is open.

    pandas' to_sql commits after every call; holding that commit back lets the
    delete, the insert, the rejected rows and the checkpoint commit together.
    """

    hold_commit = False

    def commit(self) -> None:
        """Commit, unless a `transaction()` block will do it."""
        if not self.hold_commit:
            super().commit()


def out_of_space(exc: BaseException, folder: Path) -> str | None:
    """Why a failed write in `folder` found its disk full, or None when it failed otherwise.

    SQLite says so by its result code, the operating system by errno (a full disk or
    a used-up quota), DuckDB and Polars only in the message. SQLite also reports some
    writes that found no room (its shared memory, a backup's pages) as a plain I/O
    error: that one counts when the folder's disk has next to nothing left.
    """
    if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return os.strerror(exc.errno)
    if isinstance(exc, sqlite3.Error):
        code = getattr(exc, "sqlite_errorcode", 0) & 0xFF
        if code == sqlite3.SQLITE_FULL:
            return str(exc)
        if code == sqlite3.SQLITE_IOERR and free_bytes(folder) < FULL_DISK_BYTES:
            return f"{exc}, {free_bytes(folder):,} bytes free"
    if "No space left on device" in str(exc) and not pg.is_driver_error(exc):
        return "No space left on device"  # a server's full disk is the server's (pg)
    return None


def free_bytes(folder: Path) -> int:
    """Bytes left for this user on the folder's disk (max when it cannot be asked)."""
    try:
        stat = os.statvfs(folder)
    except OSError:
        return 1 << 62
    return stat.f_bavail * stat.f_frsize


@contextlib.contextmanager
def full_disk_named(folder: Path) -> Iterator[None]:
    """A full disk met inside as one DiskFull naming the folder written to.

    The folder is the file's own when the error names one, else `folder` (SQLite's
    errors name no file: its files are the database's, and its scratch copies beside
    it). Used inside the scratch folder's block, so that the disk is judged before the
    scratch copies go and free their space.
    """
    try:
        yield
    except DiskFull:
        raise
    except Exception as exc:
        filename = getattr(exc, "filename", None)
        where = Path(filename).resolve().parent if isinstance(filename, str) else folder
        why = out_of_space(exc, where)
        if why is None:
            raise
        raise DiskFull(f"{where}: its disk is full ({why}); nothing was changed") from None


Db = Path | str  # where a database is: an SQLite file, or a postgresql:// URL
DbConnection = Connection | PgConnection


def as_db(text: str | Path) -> Db:
    """A --db value as the store takes it: a URL stays text, anything else is a path."""
    return text if pg.is_url(text) else Path(text)


def describe(db: Db) -> str:
    """The database for messages and the report (a URL without its password)."""
    return pg.safe_url(db) if pg.is_url(db) else str(db)


def connect(db: Db) -> DbConnection:
    """Open a database: SQLite in WAL mode, waiting up to 30 s for another writer; or a
    PostgreSQL database through its URL."""
    if pg.is_url(db):
        return pg.connect(db)
    con = sqlite3.connect(db, factory=Connection, isolation_level=None, timeout=30)
    con.execute("PRAGMA journal_mode=WAL")
    con.execute("PRAGMA synchronous=NORMAL")
    return con  # type: ignore[return-value]


def copy_db(src: Db, dst: Db) -> None:
    """Copy a database: SQLite's backup API (consistent even in WAL mode), or a new
    PostgreSQL database made from `src` as its template (a copy on the server)."""
    if pg.is_url(src):
        pg.create_database(str(dst), template=str(src))
        return
    src, dst = Path(src), Path(dst)
    with (
        contextlib.closing(sqlite3.connect(src)) as s,
        contextlib.closing(sqlite3.connect(dst)) as d,
    ):
        try:
            s.backup(d)
        except sqlite3.DatabaseError as exc:
            if out_of_space(exc, dst.parent):
                raise
            raise InputError(f"{src}: cannot read as an SQLite database ({exc})") from None
        d.execute("PRAGMA journal_mode=WAL")  # as the real database, set outside any timing


def move_db(src: Db, dst: Db) -> None:
    """`src` renamed to `dst`, replacing it (os.replace, or ALTER DATABASE ... RENAME)."""
    if pg.is_url(src):
        pg.rename_database(str(src), str(dst))
    else:
        os.replace(src, dst)


def db_exists(db: Db) -> bool:
    """Whether the database is there already (a file, or a database on the server)."""
    return pg.database_exists(db) if pg.is_url(db) else Path(db).exists()


def scratch_db(cfg: BenchConfig, scratch: Path, name: str) -> Db:
    """One of a run's scratch databases: a file in its scratch folder, or a database on
    the server named with the run's prefix (one prefix per database and client)."""
    if not pg.is_url(cfg.db):
        return scratch / f"{name}.db"
    return pg.scratch_database(str(cfg.db), cfg.client, name)


def create_empty(db: Db) -> None:
    """A new, empty database in place of any there."""
    if pg.is_url(db):
        pg.create_database(str(db))
    else:
        Path(db).unlink(missing_ok=True)


def drop_db(db: Db) -> None:
    """Remove a scratch database."""
    if pg.is_url(db):
        pg.drop_database(str(db))
    else:
        Path(db).unlink(missing_ok=True)


@contextlib.contextmanager
def database_errors_named(db: Db) -> Iterator[None]:
    """A PostgreSQL server that went away, refused a statement for want of room or
    resources, or shut down mid-run, as one InputError naming its URL (no password);
    a full disk here (the scratch folder's) as DiskFull.

    The server's own failures are judged first: its full disk says "No space left on
    device" too, and is the server's, not this machine's /tmp. Errors of our own SQL
    are bugs and keep their traceback."""
    try:
        yield
    except DiskFull:
        raise
    except Exception as exc:
        reason = pg.server_failure(exc)
        if reason is not None:
            raise InputError(f"{describe(db)}: {reason}; nothing was changed") from None
        folder = Path(tempfile.gettempdir())
        why = out_of_space(exc, folder)
        if why is None:
            raise
        raise DiskFull(f"{folder}: its disk is full ({why}); nothing was changed") from None


def engine_version(db: Db) -> str:
    """The database's engine and version, and where it is, for the report."""
    if not pg.is_url(db):
        return f"SQLite {sqlite3.sqlite_version} ({db})"
    with contextlib.closing(connect(db)) as con:
        return f"PostgreSQL {pg.server_version(con)} ({describe(db)})"


def flush_pending(db: Db) -> None:
    """Write out what earlier work left for the disk: the kernel's dirty pages and, for
    PostgreSQL, the server's (a CHECKPOINT, where the login may ask for one)."""
    if pg.is_url(db):
        pg.checkpoint(str(db))
    os.sync()
