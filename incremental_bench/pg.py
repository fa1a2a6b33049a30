"""PostgreSQL: the server side of the store, for a `--db postgresql://...` URL.

Owns the connection (SQLAlchemy 2 over psycopg 3, which pandas' to_sql drives), the
COPY that to_sql writes through, databases made, copied, renamed and dropped on the
server (the scratch copies of a run), the advisory lock of a run, and rows copied from
one database to another. The SQL of the tables themselves stays in the store."""

from __future__ import annotations

import contextlib
import hashlib
import re
from collections.abc import Iterable, Iterator
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from incremental_bench.config import InputError

URL_SCHEMES = ("postgresql://", "postgres://")
OLDEST_SERVER = 130000  # DROP DATABASE ... WITH (FORCE) came with PostgreSQL 13
SCRATCH_MARK = "__"  # a scratch database's name: <run token>__<name>


def load_driver() -> None:
    """Import psycopg and SQLAlchemy now (an SQLite run never does): a measured call
    then times the connection, not the import."""
    import psycopg  # noqa: F401
    import sqlalchemy
    import sqlalchemy.dialects.postgresql.psycopg  # noqa: F401


def is_url(db: object) -> bool:
    """Whether a --db value names a PostgreSQL database rather than an SQLite file."""
    return isinstance(db, str) and db.startswith(URL_SCHEMES)


def safe_url(url: str) -> str:
    """The URL without its password (after the user, or as a `password=` parameter),
    for messages and the report."""
    parts = urlsplit(url)
    netloc = parts.netloc
    if "@" in netloc:
        user, host = netloc.rsplit("@", 1)
        netloc = f"{user.split(':', 1)[0]}@{host}"
    query = "&".join(
        p for p in parts.query.split("&") if p and not p.lower().startswith("password=")
    )
    return urlunsplit(parts._replace(netloc=netloc, query=query))


def database_of(url: str) -> str:
    """The database a URL names (libpq's default: the user's name)."""
    parts = urlsplit(url)
    return parts.path.lstrip("/") or parts.username or "postgres"


def with_database(url: str, name: str) -> str:
    """The same server and login, another database."""
    return urlunsplit(urlsplit(url)._replace(path=f"/{name}"))


def scratch_token(url: str, client: str) -> str:
    """The name prefix of one (database, client)'s scratch databases: at most one run of
    the pair at a time (the advisory lock), so a leftover with it is a killed run's."""
    digest = hashlib.blake2b(f"{safe_url(url)}|{client}".encode(), digest_size=5).hexdigest()
    return f"bench_{digest}"


def scratch_database(url: str, client: str, name: str) -> str:
    """The URL of one of a run's scratch databases on the same server."""
    safe_name = re.sub(r"[^a-z0-9_]", "_", name.lower())
    return with_database(url, f"{scratch_token(url, client)}{SCRATCH_MARK}{safe_name}")


def placeholders(sql: str) -> str:
    """The store's `?` placeholders as psycopg's `%s` (a literal % doubled); a `?` inside
    a quoted string or name is text, not a placeholder."""
    pieces = re.split(r"""('(?:[^']|'')*'|"(?:[^"]|"")*")""", sql.replace("%", "%%"))
    return "".join(p if i % 2 else p.replace("?", "%s") for i, p in enumerate(pieces))


class Rows:
    """A statement's rows, fetched at once (the statement's transaction may end next)."""

    def __init__(self, rows: list[tuple]) -> None:
        self.rows = rows

    def fetchone(self) -> tuple | None:
        return self.rows[0] if self.rows else None

    def fetchall(self) -> list[tuple]:
        return self.rows


class PgConnection:
    """A PostgreSQL connection with the few methods the store uses of sqlite3's.

    Statements use the store's `?` placeholders. Outside `begin()`...`commit()` each
    statement commits at once, as SQLite's autocommit mode does. pandas' to_sql is given
    `sa`, the SQLAlchemy connection: inside our transaction it neither begins nor commits.
    """

    hold_commit = False

    def __init__(self, url: str, autocommit: bool = False) -> None:
        import sqlalchemy  # imported here: an SQLite run never needs it
        from sqlalchemy.pool import NullPool

        self.url = url
        engine_url = "postgresql+psycopg://" + url.split("://", 1)[1]
        self.engine = sqlalchemy.create_engine(engine_url, poolclass=NullPool)
        self.sa = self.engine.connect()
        if autocommit:  # CREATE and DROP DATABASE run outside any transaction
            self.sa = self.sa.execution_options(isolation_level="AUTOCOMMIT")
        self.tx: Any = None

    @property
    def in_transaction(self) -> bool:
        return self.tx is not None

    def execute(self, sql: str, params: Iterable[Any] = ()) -> Rows:
        with self.statement():
            result = self.sa.exec_driver_sql(placeholders(sql), tuple(params))
            rows = [tuple(r) for r in result.fetchall()] if result.returns_rows else []
        return Rows(rows)

    def executemany(self, sql: str, rows: Iterable[tuple]) -> None:
        rows = [tuple(r) for r in rows]
        with self.statement():
            if rows:
                self.sa.exec_driver_sql(placeholders(sql), rows)

    @contextlib.contextmanager
    def statement(self) -> Iterator[None]:
        """Outside our transaction, a statement commits at once, or its failure is rolled
        back (else SQLAlchemy's own transaction would stay open and aborted)."""
        try:
            yield
        except BaseException:
            if self.tx is None:
                self.sa.rollback()
            raise
        if self.tx is None:
            self.sa.commit()

    def begin(self) -> None:
        self.tx = self.sa.begin()

    def commit(self) -> None:
        if self.tx is not None and not self.hold_commit:
            self.tx.commit()
            self.tx = None

    def rollback(self) -> None:
        if self.tx is not None:
            self.tx.rollback()
            self.tx = None

    def raw(self) -> Any:
        """The psycopg connection underneath (for COPY)."""
        return self.sa.connection.dbapi_connection

    def close(self) -> None:
        self.rollback()
        self.sa.close()
        self.engine.dispose()


def connect(url: str, autocommit: bool = False) -> PgConnection:
    """A connection to the URL's database; a failure is one line naming the URL."""
    import psycopg
    import sqlalchemy.exc

    try:
        con = PgConnection(url, autocommit)
        version = con.raw().info.server_version
    except (sqlalchemy.exc.SQLAlchemyError, psycopg.Error, ValueError) as exc:
        cause = getattr(exc, "orig", exc)
        reason = " ".join(str(cause).split()) or type(cause).__name__
        raise InputError(f"{safe_url(url)}: cannot connect ({reason})") from None
    if version < OLDEST_SERVER:
        con.close()
        raise InputError(
            f"{safe_url(url)}: PostgreSQL {version // 10000} is too old (13 or later needed)"
        )
    return con


# SQLSTATE classes of a server's failure rather than of our SQL: insufficient resources
# (53: a full disk, out of memory), operator intervention (57: shutdown, cancelled),
# system errors (58), connection exceptions (08).
SERVER_FAILURES = ("08", "53", "57", "58")


def is_driver_error(exc: BaseException) -> bool:
    """Whether an exception came from psycopg or SQLAlchemy (a server's answer)."""
    return type(exc).__module__.split(".")[0] in ("psycopg", "sqlalchemy")


def server_failure(exc: BaseException) -> str | None:
    """Why a statement failed when the server failed it, in one line; else None."""
    import psycopg
    import sqlalchemy.exc

    cause = exc.orig if isinstance(exc, sqlalchemy.exc.DBAPIError) else exc
    if not isinstance(cause, psycopg.Error):
        return None
    state = cause.sqlstate or ""
    lost = isinstance(cause, psycopg.OperationalError | psycopg.InterfaceError) and not state
    if not lost and not state.startswith(SERVER_FAILURES):
        return None
    text = " ".join(str(cause).split()) or type(cause).__name__
    if state == "53100":
        return f"its disk is full ({text})"
    return f"the server failed ({text})"


def server_version(con: PgConnection) -> str:
    """The server's version, as `SHOW server_version` gives it."""
    return con.execute("SHOW server_version").fetchone()[0]


def copy_insert(pd_table: Any, sa_con: Any, columns: list[str], rows: Iterable[tuple]) -> int:
    """pandas' to_sql insert method: the rows through COPY ... FROM STDIN, the way pandas'
    documentation writes for PostgreSQL, in psycopg 3's binary-free text COPY."""
    names = ", ".join(columns)
    count = 0
    with (
        sa_con.connection.dbapi_connection.cursor() as cur,
        cur.copy(f"COPY {pd_table.name} ({names}) FROM STDIN") as copy,
    ):
        for row in rows:
            copy.write_row(row)
            count += 1
    return count


@contextlib.contextmanager
def server(url: str) -> Iterator[PgConnection]:
    """A connection to the server's maintenance database, for CREATE and DROP DATABASE."""
    con = connect(with_database(url, "postgres"), autocommit=True)
    try:
        yield con
    finally:
        con.close()


def quoted(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def database_exists(url: str) -> bool:
    with server(url) as con:
        found = con.execute("SELECT 1 FROM pg_database WHERE datname = ?", (database_of(url),))
        return found.fetchone() is not None


def create_database(url: str, template: str | None = None) -> None:
    """Create the URL's database, empty or as a copy of `template` (a file-level copy on
    the server: no row crosses the network)."""
    name = database_of(url)
    with server(url) as con:
        con.execute(f"DROP DATABASE IF EXISTS {quoted(name)} WITH (FORCE)")
        copy = f" TEMPLATE {quoted(database_of(template))}" if template else ""
        con.execute(f"CREATE DATABASE {quoted(name)}{copy}")


def drop_database(url: str) -> None:
    with server(url) as con:
        con.execute(f"DROP DATABASE IF EXISTS {quoted(database_of(url))} WITH (FORCE)")


def rename_database(src: str, dst: str) -> None:
    """`src` renamed to `dst` (replacing it), as os.replace does to a file."""
    with server(src) as con:
        con.execute(f"DROP DATABASE IF EXISTS {quoted(database_of(dst))} WITH (FORCE)")
        con.execute(
            f"ALTER DATABASE {quoted(database_of(src))} RENAME TO {quoted(database_of(dst))}"
        )


def drop_scratch(url: str, token: str) -> list[str]:
    """Drop every scratch database of `token` on the server; their names."""
    with server(url) as con:
        names = [
            name
            for (name,) in con.execute(
                "SELECT datname FROM pg_database WHERE starts_with(datname, ?)",
                (token + SCRATCH_MARK,),
            ).fetchall()
        ]
        for name in names:
            con.execute(f"DROP DATABASE IF EXISTS {quoted(name)} WITH (FORCE)")
    return names


def checkpoint(url: str) -> None:
    """CHECKPOINT, so that the next measured run's commit does not wait behind earlier
    work; a login without the right (superuser or pg_checkpoint) just goes on."""
    import psycopg
    import sqlalchemy.exc

    with server(url) as con, contextlib.suppress(sqlalchemy.exc.ProgrammingError, psycopg.Error):
        con.execute("CHECKPOINT")


def lock_key(url: str, client: str) -> int:
    """The advisory lock's 64-bit key of one (database, client)."""
    digest = hashlib.blake2b(f"{safe_url(url)}|{client}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big", signed=True)


def client_lock(client: str) -> tuple[int, int]:
    """The two 32-bit keys of a client's transaction lock (a key space apart from the
    64-bit keys of lock_key)."""
    digest = hashlib.blake2b(client.encode(), digest_size=4).digest()
    return 0x1BE4C0DE, int.from_bytes(digest, "big", signed=True)


@contextlib.contextmanager
def advisory_lock(url: str, client: str) -> Iterator[bool]:
    """Hold the session advisory lock of (database, client) while the block runs; yields
    whether it was free. The server frees it when this connection ends, even killed."""
    con = connect(url)
    try:
        (got,) = con.execute("SELECT pg_try_advisory_lock(?)", (lock_key(url, client),)).fetchone()
        yield bool(got)
    finally:
        con.close()


def copy_rows(src: str, dst: PgConnection, table: str, where: str, params: tuple) -> None:
    """The rows of `table` matching `where` in database `src`, appended to `dst`'s table
    (inside `dst`'s transaction), streamed through COPY in PostgreSQL's binary format."""
    source = connect(src)
    try:
        select = placeholders(f"COPY (SELECT * FROM {table} WHERE {where}) TO STDOUT")
        with (
            source.raw().cursor() as out_cur,
            out_cur.copy(select + " (FORMAT binary)", params) as out,
            dst.raw().cursor() as in_cur,
            in_cur.copy(f"COPY {table} FROM STDIN (FORMAT binary)") as into,
        ):
            for data in out:
                into.write(data)
    finally:
        source.close()
