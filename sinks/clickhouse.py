"""ClickHouse storage for judgeflow: the schema, one shared client per DSN, and retries (the sinks are in
`sinks.clickhouse_sink`).

The flow writes the tables of `sinks.clickhouse_tables` (DDL in `schema.sql`). Writes are idempotent: every
table is a ReplacingMergeTree keyed by the record's deterministic id, so a
replay or a crash-restart that re-writes a batch never double counts (read
with FINAL). Money leaves the flow as integer picodollars and lands as exact
`Decimal(38, 12)` dollars.

One client API, two backends, chosen by the DSN:

- `chdb:///abs/dir` (or a relative `chdb://dir`): the embedded ClickHouse
  engine (chdb) through clickhouse-connect's chdb backend. The directory is
  created. chdb hosts ONE data directory per process (and a directory is
  locked by one process): every chdb DSN used in a process must name the
  same directory, and `connect()` fails clearly when it does not. In tests,
  use one session-wide directory and a database per test; several processes
  that must share data go through `simulators.chdb_http` instead.
- `http(s)://user:pass@host:port`: a ClickHouse server (or `simulators.chdb_http`).

Bytewax runs several worker threads per process, and chdb allows only one
engine per process, so `connect()` shares one chdb client per process and
returns a `LockedClient` that serialises every call on it. Over HTTP the
requests carry no session, so calls from several threads go out at once: the
write-behind sinks' writer threads wait for their inserts side by side rather
than one after another. There `connect()` shares one client per DSN and
database (a client's database is its own), and takes no lock.

Errors (what the sink raises; the flow stops, a restart resumes from the last
bytewax snapshot and the idempotent keys make the re-write harmless):

    ClickHouseSinkError
     ├── InsertRejectedError   fatal at once: bad data, unknown table or
     │                         column, wrong credentials, a bug
     └── InsertGaveUpError     retryable errors (network, overload, server
                               errors) outlasted `max_retry_s`
"""

from __future__ import annotations

import logging
import re
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlsplit, urlunsplit

import clickhouse_connect
from clickhouse_connect.driver import Client
from clickhouse_connect.driver.exceptions import (
    DatabaseError,
    DataError,
    InterfaceError,
    NotSupportedError,
    ProgrammingError,
)
from clickhouse_connect.driver.insert import InsertContext
from prometheus_client import Counter

from core.errors import Backoff, FatalError, GaveUp, JudgeflowError, call_with_retries
from sinks.clickhouse_rows import event_row
from sinks.clickhouse_tables import ROW_BUILDERS, TABLES, TableSpec, table_spec

logger = logging.getLogger(__name__)

T = TypeVar("T")

DEFAULT_DATABASE = "judgeflow"

ROWS = Counter("judgeflow_clickhouse_rows_total", "Rows inserted into ClickHouse by the sinks.", ["table"])
RETRIES = Counter(
    "judgeflow_clickhouse_insert_retries_total",
    "Failed ClickHouse insert (or connect) attempts that were retried.",
    ["table"],
)
FAILURES = Counter(
    "judgeflow_clickhouse_insert_failures_total",
    "ClickHouse connects or inserts that failed for good (the sink raised, the flow stops).",
    ["table"],
)

# Server error codes that no retry can fix: the request or the setup is wrong.
_FATAL_CODES = frozenset(
    {
        16,  # NO_SUCH_COLUMN_IN_TABLE
        27,  # CANNOT_PARSE_INPUT_ASSERTION_FAILED
        33,  # CANNOT_READ_ALL_DATA (malformed insert body)
        47,  # UNKNOWN_IDENTIFIER
        53,  # TYPE_MISMATCH
        60,  # UNKNOWN_TABLE
        62,  # SYNTAX_ERROR
        69,  # ARGUMENT_OUT_OF_BOUND
        81,  # UNKNOWN_DATABASE
        192,  # UNKNOWN_USER
        193,  # WRONG_PASSWORD
        497,  # ACCESS_DENIED
        516,  # AUTHENTICATION_FAILED
    }
)
_CLIENT_SIDE_ERRORS = (ProgrammingError, DataError, NotSupportedError, InterfaceError)
_IDENTIFIER = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


class ClickHouseSinkError(JudgeflowError):
    """A ClickHouse write failed for good; the message names the table and the cause."""


class InsertRejectedError(ClickHouseSinkError, FatalError):
    """A non-retryable failure (bad data, schema mismatch, auth, a bug)."""


class InsertGaveUpError(ClickHouseSinkError, FatalError):
    """Retryable failures went on for longer than `max_retry_s`: the job stops with the reason (and
    resumes from its last snapshot when restarted)."""


# --- the schema --------------------------------------------------------------


def check_identifier(name: str, what: str = "database") -> str:
    """Return `name` if it is a plain ClickHouse identifier, else raise ValueError."""
    if not _IDENTIFIER.match(name):
        msg = f"invalid ClickHouse {what} name {name!r}: use letters, digits and _"
        raise ValueError(msg)
    return name


def schema_statements(database: str = DEFAULT_DATABASE) -> list[str]:
    """The DDL of `schema.sql` for `database`, one idempotent statement per item."""
    sql = resources.files("sinks").joinpath("schema.sql").read_text(encoding="utf-8")
    sql = sql.replace("{database}", f"`{check_identifier(database)}`")
    statements = []
    for chunk in sql.split(";\n"):
        lines = [line for line in chunk.splitlines() if not line.lstrip().startswith("--")]
        statement = "\n".join(lines).strip()
        if statement:
            statements.append(statement)
    return statements


def ensure_schema(client: LockedClient | Client, database: str = DEFAULT_DATABASE) -> None:
    """Create the database and its tables if they are missing (safe to repeat)."""
    for statement in schema_statements(database):
        client.command(statement, use_database=False)


# --- one shared client per DSN per process -----------------------------------


@dataclass
class _Shared:
    client: Client
    lock: threading.RLock | None  # None: the client takes calls from several threads at once (HTTP)
    default_database: str | None
    schemas: set[str] = field(default_factory=set)  # databases a sink has made sure of
    schema_lock: threading.Lock = field(default_factory=threading.Lock)


_SHARED: dict[str, _Shared] = {}
_SHARED_LOCK = threading.Lock()
_chdb_dir: Path | None = None


class LockedClient:
    """A clickhouse-connect `Client` shared by the threads of a process.

    With chdb every call holds the client's lock and runs in this handle's
    database, so worker threads never interleave on the one engine. Over HTTP
    the client is this handle's database's own and calls are not serialised
    (no session: clickhouse-connect takes them from several threads). Methods
    not listed are forwarded the same way. `close()` does nothing: the shared
    client lives as long as the process.
    """

    def __init__(self, shared: _Shared, database: str | None) -> None:
        self._shared = shared
        self._database = database or shared.default_database

    @property
    def database(self) -> str | None:
        return self._database

    def _call(self, method: str, *args: Any, **kwargs: Any) -> Any:
        lock = self._shared.lock
        if lock is None:  # over HTTP: a client of this database's own
            return getattr(self._shared.client, method)(*args, **kwargs)
        with lock:
            client = self._shared.client
            client.database = self._database
            return getattr(client, method)(*args, **kwargs)

    def query(self, *args: Any, **kwargs: Any) -> Any:
        return self._call("query", *args, **kwargs)

    def command(self, *args: Any, **kwargs: Any) -> Any:
        return self._call("command", *args, **kwargs)

    def insert(self, *args: Any, **kwargs: Any) -> Any:
        return self._call("insert", *args, **kwargs)

    def raw_query(self, *args: Any, **kwargs: Any) -> bytes:
        return self._call("raw_query", *args, **kwargs)

    def create_insert_context(self, *args: Any, **kwargs: Any) -> InsertContext:
        return self._call("create_insert_context", *args, **kwargs)

    def close(self) -> None:
        """Keep the shared client open: other threads of this process use it."""

    def __getattr__(self, name: str) -> Any:
        if name.startswith("_"):  # private and dunder lookups (copy, pickle) stay here
            raise AttributeError(name)
        attr = getattr(self._shared.client, name)
        if not callable(attr):
            return attr

        def locked(*args: Any, **kwargs: Any) -> Any:
            return self._call(name, *args, **kwargs)

        return locked


def redact_dsn(dsn: str) -> str:
    """`dsn` with its password replaced by ***, for messages and logs."""
    parts = urlsplit(dsn)
    if not parts.password:
        return dsn
    netloc = parts.netloc.replace(f":{parts.password}@", ":***@", 1)
    return urlunsplit(parts._replace(netloc=netloc))


def chdb_dir_in_use() -> Path | None:
    """The chdb data directory this process has opened, if any (one per process)."""
    return _chdb_dir


def _chdb_path(dsn: str) -> Path:
    rest = dsn[len("chdb:") :]
    rest = rest[2:] if rest.startswith("//") else rest
    if not rest or "?" in rest:
        msg = f"chdb DSN {dsn!r}: expected chdb:///abs/dir or chdb://relative/dir"
        raise ValueError(msg)
    return Path(rest).expanduser().resolve()


def _open_chdb(path: Path) -> _Shared:
    global _chdb_dir
    if _chdb_dir is not None and _chdb_dir != path:
        msg = (
            f"chdb hosts one data directory per process: this process already uses "
            f"{_chdb_dir}, cannot also open {path} (use one directory, or simulators.chdb_http)"
        )
        raise ValueError(msg)
    path.mkdir(parents=True, exist_ok=True)
    try:
        client = clickhouse_connect.get_client(interface="chdb", path=str(path))
    except ImportError as ex:
        msg = f"a chdb DSN needs the embedded ClickHouse engine: pip install 'judgeflow[embedded]' ({ex})"
        raise ImportError(msg) from ex
    _chdb_dir = path
    # A chdb handle keeps the last USE; None must mean the engine's default.
    current = client.command("SELECT currentDatabase()", use_database=False)
    return _Shared(client, threading.RLock(), str(current))


def _open_http(dsn: str, connect_timeout: float, database: str | None) -> _Shared:
    client = clickhouse_connect.get_client(
        dsn=dsn,
        # stateless requests: no server session to lock or expire, so threads can share the client
        autogenerate_session_id=False,
        connect_timeout=max(1, round(connect_timeout)),
    )
    if database is not None:
        client.database = database  # not checked here: `ensure_schema` may create it later
    return _Shared(client, None, database)


def _shared_key(dsn: str, database: str | None) -> str:
    if dsn.startswith("chdb:"):
        return f"chdb://{_chdb_path(dsn)}"
    if dsn.startswith(("http://", "https://")):
        return f"{dsn}#{database or ''}"  # a client per database: calls do not switch it
    msg = f"unsupported ClickHouse DSN {redact_dsn(dsn)!r}: use chdb:///abs/dir or http(s)://..."
    raise ValueError(msg)


def connect(dsn: str, database: str | None = None, *, connect_timeout: float = 10.0) -> LockedClient:
    """A thread-safe handle on the process-wide client for `dsn`, in `database`.

    Args:
        dsn: `chdb:///abs/dir` (a relative `chdb://dir` is resolved against the
            working directory; the directory is created) or `http(s)://user:pass@host:port`.
        database: the database unqualified table names refer to; the server
            default when None. It is not created here (see `ensure_schema`).
        connect_timeout: seconds to wait for a TCP connection (HTTP only).

    The first call for a DSN opens the client (the HTTP one checks the server
    is up); later calls, from any thread, share it.
    """
    if database is not None:
        check_identifier(database)
    key = _shared_key(dsn, database)
    with _SHARED_LOCK:
        shared = _SHARED.get(key)
        if shared is None:
            if key.startswith("chdb:"):
                shared = _open_chdb(_chdb_path(dsn))
            else:
                shared = _open_http(dsn, connect_timeout, database)
            _SHARED[key] = shared
    return LockedClient(shared, database)


# --- retries -----------------------------------------------------------------


def is_retryable(ex: BaseException) -> bool:
    """True for failures a later attempt can fix (network, overload, server errors)."""
    if isinstance(ex, (ClickHouseSinkError, *_CLIENT_SIDE_ERRORS)):
        return False
    if isinstance(ex, DatabaseError):
        return getattr(ex, "code", None) not in _FATAL_CODES
    return isinstance(ex, OSError)  # connection refused / reset, timeouts


BACKOFF = Backoff(base_s=0.05, cap_s=5.0)


def retry(
    fn: Callable[[], T],
    *,
    table: str,
    action: str,
    max_retry_s: float,
    sleep: Callable[[float], None] = time.sleep,
    count_rejection: bool = True,
) -> T:
    """Run `fn`, retrying retryable failures with the back-off for at most `max_retry_s`.

    No sleep when `fn` succeeds. Raises InsertRejectedError at once for a
    fatal failure, InsertGaveUpError when the time budget runs out; both
    name the table, the attempts and the last cause. `count_rejection=False`
    leaves a rejection out of the failures metric (the caller decides).
    """

    started, retries = time.monotonic(), [0]

    def retrying(n: int, delay: float, ex: BaseException) -> None:
        RETRIES.labels(table).inc()
        retries[0] = n
        if n & (n - 1) == 0:  # retries 1, 2, 4, 8, ...: an outage is a line per doubling, not per attempt
            logger.warning(
                "ClickHouse %s for %s failed (attempt %d, %.1fs since the first), retrying in %.2fs: %s",
                action,
                table,
                n,
                time.monotonic() - started,
                delay,
                brief(ex),
            )

    try:
        result = call_with_retries(
            fn, backoff=BACKOFF, retryable=is_retryable, within_s=max_retry_s, on_retry=retrying, sleep=sleep
        )
    except GaveUp as g:
        FAILURES.labels(table).inc()
        msg = (
            f"ClickHouse {action} for table {table!r} gave up after {g.attempts} "
            f"attempts in {g.elapsed_s:.1f}s (max_retry_s={max_retry_s}); last error: {g.__cause__!r}"
        )
        raise InsertGaveUpError(msg) from g.__cause__
    except Exception as ex:
        if count_rejection:
            FAILURES.labels(table).inc()
        msg = f"ClickHouse {action} for table {table!r} failed and cannot be retried: {ex!r}"
        raise InsertRejectedError(msg) from ex
    if retries[0]:
        elapsed = time.monotonic() - started
        logger.info(
            "ClickHouse %s for %s succeeded after %d attempts (%.1fs)", action, table, retries[0] + 1, elapsed
        )
    return result


def brief(ex: BaseException) -> str:
    """`repr(ex)` without the request's query string (the HTTP client puts the whole URL, settings and
    query id, into its errors: most of a 500-character line)."""
    return _QUERY_STRING.sub("?...", repr(ex))


_QUERY_STRING = re.compile(r"\?[^\s'\"]+")


# --- what the sinks share ----------------------------------------------------


def check_dsn(dsn: str) -> str:
    """`dsn` if it is one `connect` takes, else ValueError (without connecting)."""
    _shared_key(dsn, None)
    return dsn


def insert_context(client: LockedClient, spec: TableSpec, database: str | None) -> InsertContext:
    """A reusable column-oriented insert into `spec`'s table, with its types (no DESCRIBE per batch)."""
    return client.create_insert_context(
        spec.name,
        spec.column_names,
        database=database,
        column_type_names=spec.column_types,
        column_oriented=True,
    )


def ensure_schema_once(client: LockedClient, database: str) -> None:
    """`ensure_schema` by the first sink of this process on the DSN and database; the flow's
    other sinks (one per table, on every worker) find it done instead of repeating its DDL
    (29 statements, a round trip each over HTTP)."""
    shared = client._shared
    with shared.schema_lock:
        if database not in shared.schemas:
            ensure_schema(client, database)
            shared.schemas.add(database)


def is_data_fault(exc: InsertRejectedError) -> bool:
    """True when a value could not be encoded for its column (out of range, not UTF-8, None
    in a non-nullable column): the client raised before anything reached the server."""
    cause = exc.__cause__
    if isinstance(cause, DataError):
        return True
    return cause is not None and not isinstance(cause, (DatabaseError, *_CLIENT_SIDE_ERRORS, OSError))


__all__ = [
    "DEFAULT_DATABASE",
    "ROW_BUILDERS",
    "TABLES",
    "ClickHouseSinkError",
    "InsertGaveUpError",
    "InsertRejectedError",
    "LockedClient",
    "TableSpec",
    "chdb_dir_in_use",
    "check_dsn",
    "check_identifier",
    "connect",
    "ensure_schema",
    "ensure_schema_once",
    "event_row",
    "insert_context",
    "is_data_fault",
    "is_retryable",
    "redact_dsn",
    "retry",
    "schema_statements",
    "table_spec",
]
