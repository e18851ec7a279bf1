"""A ClickHouse HTTP front over one chdb session, so several processes can share it.

chdb embeds ClickHouse in a process and locks its data directory, and it does
not serve the HTTP interface. When a test or a local run needs several
processes on one ClickHouse (a 2-process flow, a report CLI beside a running
flow), this front owns the chdb session and speaks enough of the ClickHouse
HTTP protocol for `clickhouse_connect.get_client(host=..., port=...)` to work
unmodified, so the production HTTP client path is the one under test:

- `GET /ping` (and `GET /` without a query) -> `Ok.`
- the query in the `query` URL parameter and/or the POST body (joined by a
  newline), or in multipart form fields; `param_<name>` query parameters; `database`;
  `default_format`; any other parameter is a setting, applied with `SET`
  (HTTP-only settings such as `enable_http_compression` are accepted and
  ignored).
- `INSERT ... FORMAT <fmt>` followed by the data in the body, any input
  format chdb reads (clickhouse-connect sends Native), streamed into chdb
  without a temp file.
- request bodies compressed with `Content-Encoding` lz4 (frame), zstd, gzip,
  deflate or br; responses are sent uncompressed (identity), which the client
  accepts whatever it asked for.
- results in the query's `FORMAT` (clickhouse-connect asks for Native), with
  `X-ClickHouse-Format`, `-Query-Id`, `-Timezone` and `-Summary` headers.
- errors: status 500, the ClickHouse exception text as the body and its code
  in `X-ClickHouse-Exception-Code`, so the client raises `DatabaseError`.

Not implemented: authentication (any user is accepted: loopback only),
separate sessions (all requests share one session; `session_id` is ignored),
external data, Native-compressed bodies (`decompress=1`), progress headers.
Requests are served one at a time (one chdb session, one lock); with
`--insert-delay-s` an insert's answer comes that much later, the wait taken
outside the lock, so concurrent inserts wait side by side as on a server
elsewhere. `GET /front/stats` reports how many did at once (at most), the
INSERTs received and the front's CPU time.

Run: `python -m simulators.chdb_http --path DIR --port 0 [--ready-file PATH]` prints
`http://127.0.0.1:PORT` as its first stdout line and serves until SIGTERM
(exit 0). In Python: `with start_chdb_http(path) as url: ...`.
"""

from __future__ import annotations

import argparse
import gzip
import json
import logging
import os
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
import uuid
import zlib
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from email.parser import BytesParser
from email.policy import HTTP
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlsplit

logger = logging.getLogger(__name__)

# URL parameters that are part of the HTTP protocol, not settings.
_PROTOCOL_PARAMS = frozenset(
    {
        "query",
        "database",
        "default_format",
        "session_id",
        "session_timeout",
        "session_check",
        "close_session",
        "query_id",
        "user",
        "password",
        "quota_key",
        "role",
        "buffer_size",
        "wait_end_of_query",
        "compress",
        "decompress",
        "client_protocol_version",
        "stacktrace",
    }
)
# Real settings that only mean something to an HTTP server.
_HTTP_ONLY_SETTINGS = frozenset(
    {
        "enable_http_compression",
        "http_zlib_compression_level",
        "send_progress_in_http_headers",
        "http_headers_progress_interval_ms",
        "cancel_http_readonly_queries_on_client_close",
        "http_wait_end_of_query",
        "http_response_buffer_size",
        "http_native_compression_disable_checksumming_on_decompress",
        "add_http_cors_header",
    }
)
_SETTING_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_INSERT_HEAD = re.compile(
    rb"\A\s*INSERT\s+INTO\s+(?P<target>.+?)\s+FORMAT\s+(?P<fmt>\w+)[ \t]*(?:\r?\n|\Z)",
    re.IGNORECASE | re.DOTALL,
)
_NOT_A_DATA_INSERT = re.compile(rb"\b(?:VALUES|SELECT|WITH)\b", re.IGNORECASE)
_TRAILING_FORMAT = re.compile(r"\bFORMAT\s+(\w+)\s*;?\s*\Z", re.IGNORECASE)
_USE = re.compile(r"\A\s*USE\s", re.IGNORECASE)
_ERROR_CODE = re.compile(r"Code: (\d+)")
_HEAD_SCAN_BYTES = 1 << 16
_STD_EXCEPTION = 1001  # ClickHouse STD_EXCEPTION
_UNKNOWN_EXCEPTION = 1002  # ClickHouse UNKNOWN_EXCEPTION
_BINARY_FORMATS = frozenset({"Native", "RowBinary", "Parquet", "Arrow", "ArrowStream", "ORC"})


class FrontError(Exception):
    """A request this front cannot serve; `code` is the ClickHouse error code sent back."""

    def __init__(self, message: str, code: int = _UNKNOWN_EXCEPTION) -> None:
        super().__init__(message)
        self.code = code


@dataclass
class Request:
    """A ClickHouse HTTP request, transport details removed."""

    params: dict[str, str]
    payload: bytes  # the query text, possibly followed by insert data


@dataclass
class Response:
    body: bytes = b""
    fmt: str | None = None  # X-ClickHouse-Format: set when the statement has a result set
    summary: dict[str, str] = field(default_factory=dict)


# --- request decoding ----------------------------------------------------------


def _decompress_lz4(data: bytes) -> bytes:
    import lz4.frame

    out = []
    while data:  # clickhouse-connect sends one frame per block
        decompressor = lz4.frame.LZ4FrameDecompressor()
        out.append(decompressor.decompress(data))
        data = decompressor.unused_data
    return b"".join(out)


def _decompress_zstd(data: bytes) -> bytes:
    if sys.version_info >= (3, 14):
        from compression import zstd
    else:
        from backports import zstd
    return zstd.decompress(data)


def _decompress_br(data: bytes) -> bytes:
    import brotli

    return brotli.decompress(data)


_DECODERS: dict[str, Callable[[bytes], bytes]] = {
    "lz4": _decompress_lz4,
    "zstd": _decompress_zstd,
    "gzip": gzip.decompress,
    "deflate": zlib.decompress,
    "br": _decompress_br,
}


def decode_body(body: bytes, content_encoding: str | None) -> bytes:
    """Undo a request's `Content-Encoding` (lz4, zstd, gzip, deflate, br)."""
    encoding = (content_encoding or "identity").strip().lower()
    if encoding == "identity" or not body:
        return body
    decoder = _DECODERS.get(encoding)
    if decoder is None:
        msg = f"chdb_http: unsupported Content-Encoding {encoding!r}"
        raise FrontError(msg, code=_UNKNOWN_EXCEPTION)
    try:
        return decoder(body)
    except ImportError as ex:
        msg = f"chdb_http: Content-Encoding {encoding!r} needs a module that is missing: {ex}"
        raise FrontError(msg) from ex


def _form_fields(body: bytes, content_type: str) -> dict[str, str]:
    message = BytesParser(policy=HTTP).parsebytes(
        b"Content-Type: " + content_type.encode() + b"\r\n\r\n" + body
    )
    fields: dict[str, str] = {}
    for part in message.iter_parts():
        name = part.get_param("name", header="content-disposition")
        if part.get_filename() is not None:
            msg = f"chdb_http: external data (form file {name!r}) is not supported"
            raise FrontError(msg)
        payload = part.get_payload(decode=True)
        fields[str(name)] = payload.decode() if isinstance(payload, bytes) else ""
    return fields


def build_request(query_string: str, body: bytes, headers: Any) -> Request:
    """Turn URL parameters, headers and the raw body into a `Request`."""
    params = dict(parse_qsl(query_string, keep_blank_values=True))
    if params.get("decompress") in ("1", "true"):
        msg = "chdb_http: Native-compressed bodies (decompress=1) are not supported"
        raise FrontError(msg)
    body = decode_body(body, headers.get("Content-Encoding"))
    # Like ClickHouse: only multipart forms are parsed (curl's default
    # x-www-form-urlencoded body is the query itself).
    if (headers.get("Content-Type") or "").lower().startswith("multipart/form-data"):
        params.update(_form_fields(body, headers.get("Content-Type")))
        body = b""
    # ClickHouse reads the `query` parameter, then the body as its continuation
    query = params.pop("query", "").encode()
    return Request(params, b"\n".join(part for part in (query, body) if part))


# --- execution -------------------------------------------------------------------


def _quote(value: str) -> str:
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


def _error_code(message: str) -> int:
    match = _ERROR_CODE.search(message)
    return int(match.group(1)) if match else _UNKNOWN_EXCEPTION


def _split_insert(payload: bytes) -> tuple[str, str, bytes] | None:
    """`INSERT INTO t (cols) FORMAT F\\n<data>` -> ("INSERT INTO t (cols)", F, data)."""
    match = _INSERT_HEAD.match(payload[:_HEAD_SCAN_BYTES])
    if match is None or _NOT_A_DATA_INSERT.search(match.group("target")):
        return None
    statement = b"INSERT INTO " + match.group("target")
    return statement.decode(), match.group("fmt").decode(), payload[match.end() :]


class ChdbEngine:
    """One chdb session behind a lock, mapping HTTP requests onto it.

    Settings sent with a request are applied with SET and reset to DEFAULT
    when a later request does not send them, so requests do not leak
    settings into each other (clients resend the same ones, so this is
    nearly free). A `fail_inserts` count makes the first N INSERTs fail with
    a server error: a test hook for retry paths; `insert_delay_s` makes every INSERT answer that much
    later (a server elsewhere, or a slow one, for tests that act while inserts are in flight).
    """

    def __init__(self, path: Path, *, fail_inserts: int = 0, insert_delay_s: float = 0.0) -> None:
        try:
            import chdb
        except ImportError as ex:
            msg = f"chdb_http needs the embedded ClickHouse engine: pip install 'judgeflow[embedded]' ({ex})"
            raise ImportError(msg) from ex

        path.mkdir(parents=True, exist_ok=True)
        self._conn = chdb.connect(str(path))
        self._lock = threading.Lock()
        self._applied: dict[str, str] = {}
        self._database: str | None = None
        self._fail_inserts = fail_inserts
        self._insert_delay_s = insert_delay_s
        self._stats_lock = threading.Lock()
        self._waiting = 0
        self.max_waiting = 0  # inserts waiting out `insert_delay_s` at once, at most
        self.inserts = 0  # INSERTs received
        timezone = self._conn.query("SELECT timezone()", "TabSeparated").bytes()
        self.timezone = timezone.decode().strip()

    def close(self) -> None:
        with self._lock:
            self._conn.close()

    def execute(self, request: Request) -> Response:
        """Run one request under the session lock; chdb errors become FrontError."""
        params = request.params
        insert = _split_insert(request.payload)
        if insert is not None:
            with self._stats_lock:
                self.inserts += 1
        if insert is not None and self._insert_delay_s:
            self._wait(self._insert_delay_s)
        with self._lock:
            try:
                self._use(params.get("database") or "default")
                self._apply_settings(_settings_of(params))
                if insert is not None:
                    return self._insert(*insert)
                return self._query(request.payload.decode(), params)
            except RuntimeError as ex:  # ChdbError and chdb's streaming insert errors
                message = str(ex)
                raise FrontError(message, _error_code(message)) from ex

    def _wait(self, seconds: float) -> None:
        """An insert's answer comes `seconds` late, as from a server elsewhere: concurrent requests
        wait side by side, outside the engine's lock; `max_waiting` counts how many at once."""
        with self._stats_lock:
            self._waiting += 1
            self.max_waiting = max(self.max_waiting, self._waiting)
        try:
            time.sleep(seconds)
        finally:
            with self._stats_lock:
                self._waiting -= 1

    def _use(self, database: str) -> None:
        if database != self._database:
            quoted = database.replace("\\", "\\\\").replace("`", "\\`")
            self._conn.query(f"USE `{quoted}`", "TabSeparated")
            self._database = database

    def _apply_settings(self, wanted: dict[str, str]) -> None:
        for name in [name for name in self._applied if name not in wanted]:
            self._conn.query(f"SET {name} = DEFAULT", "TabSeparated")
            del self._applied[name]
        for name, value in wanted.items():
            if self._applied.get(name) != value:
                self._conn.query(f"SET {name} = {_quote(value)}", "TabSeparated")
                self._applied[name] = value

    def _insert(self, statement: str, fmt: str, data: bytes) -> Response:
        if self._fail_inserts > 0:
            self._fail_inserts -= 1
            msg = (
                f"Code: {_UNKNOWN_EXCEPTION}. DB::Exception: chdb_http: injected insert "
                f"failure ({self._fail_inserts} more to come). (UNKNOWN_EXCEPTION)"
            )
            raise FrontError(msg, _UNKNOWN_EXCEPTION)
        inserter = self._conn.send_insert(statement, fmt)
        try:
            if data:
                inserter.append(data)
            result = inserter.finish()
        finally:
            inserter.cancel()  # no-op once finished
        summary = {
            "written_rows": str(result.rows_written),
            "written_bytes": str(result.bytes_written),
            "elapsed_ns": str(int(result.elapsed * 1e9)),
        }
        return Response(summary=summary)

    def _query(self, sql: str, params: dict[str, str]) -> Response:
        if not sql.strip():
            msg = "Code: 62. DB::Exception: Empty query. (SYNTAX_ERROR)"
            raise FrontError(msg, 62)
        bind = {name[6:]: value for name, value in params.items() if name.startswith("param_")}
        explicit = _TRAILING_FORMAT.search(sql)
        fmt = explicit.group(1) if explicit else params.get("default_format")
        if fmt is None:
            # ClickHouse's default is TabSeparated, and it reports a format only
            # for statements with a result set: the names line tells them apart.
            result = self._conn.query(sql, "TabSeparatedWithNames", params=bind)
            body = result.bytes() or b""
            newline = body.find(b"\n")
            response = Response(body[newline + 1 :], "TabSeparated" if body else None)
        else:
            result = self._conn.query(sql, fmt, params=bind)
            response = Response(result.bytes() or b"", fmt)
        if _USE.match(sql):
            self._database = None  # the session's database is now the statement's
        response.summary = {
            "read_rows": str(result.rows_read()),
            "read_bytes": str(result.bytes_read()),
            "elapsed_ns": str(int(result.elapsed() * 1e9)),
        }
        return response


def _settings_of(params: dict[str, str]) -> dict[str, str]:
    settings = {}
    for name, value in params.items():
        if name in _PROTOCOL_PARAMS or name in _HTTP_ONLY_SETTINGS or name.startswith("param_"):
            continue
        if not _SETTING_NAME.match(name):
            msg = f"Code: 115. DB::Exception: Unknown setting {name!r}. (UNKNOWN_SETTING)"
            raise FrontError(msg, 115)
        settings[name] = value
    return settings


# --- HTTP ------------------------------------------------------------------------


class ChdbHttpServer(ThreadingHTTPServer):
    """A loopback HTTP server whose handlers share one `ChdbEngine`."""

    daemon_threads = True

    def __init__(self, port: int, engine: ChdbEngine, *, verbose: bool = False) -> None:
        super().__init__(("127.0.0.1", port), _Handler)
        self.engine = engine
        self.verbose = verbose

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_port}"


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, as urllib3 pools expect
    server: ChdbHttpServer

    def do_GET(self) -> None:
        self._handle()

    def do_POST(self) -> None:
        self._handle()

    def log_message(self, format: str, *args: Any) -> None:
        if self.server.verbose:
            super().log_message(format, *args)

    def _handle(self) -> None:
        split = urlsplit(self.path)
        try:
            body = self._read_body()
        except (ValueError, OSError) as ex:
            self._send(400, f"chdb_http: unreadable request body: {ex}\n".encode(), {})
            self.close_connection = True
            return
        if split.path.rstrip("/") == "/ping" or (split.path in ("", "/") and not split.query and not body):
            self._send(200, b"Ok.\n", {"Content-Type": "text/plain; charset=UTF-8"})
            return
        if split.path == "/front/stats":  # the front's own counters (tests, benchmarks)
            stats = {
                "max_waiting_inserts": self.server.engine.max_waiting,
                "inserts": self.server.engine.inserts,
                "cpu_s": time.process_time(),  # the front's process, every thread (the engine's too)
            }
            self._send(200, json.dumps(stats).encode(), {"Content-Type": "application/json"})
            return
        if split.path not in ("", "/"):
            self._send(404, f"chdb_http: no handler for {split.path}\n".encode(), {})
            return
        query_id = ""
        try:
            request = build_request(split.query, body, self.headers)
            query_id = request.params.get("query_id") or str(uuid.uuid4())
            response = self.server.engine.execute(request)
        except FrontError as ex:
            self._send_error(ex.code, str(ex), query_id)
            return
        except Exception as ex:  # a request we failed to parse (bad encoding, bad body): tell the client
            logger.exception("chdb_http: request failed")
            self._send_error(_STD_EXCEPTION, f"Code: {_STD_EXCEPTION}. chdb_http: {ex!r}", query_id)
            return
        self._send(200, response.body, self._result_headers(response, query_id))

    def _send_error(self, code: int, message: str, query_id: str) -> None:
        headers = {
            "Content-Type": "text/plain; charset=UTF-8",
            "X-ClickHouse-Exception-Code": str(code),
            "X-ClickHouse-Query-Id": query_id,
        }
        self._send(500, f"{message}\n".encode(), headers)

    def _result_headers(self, response: Response, query_id: str) -> dict[str, str]:
        binary = response.fmt in _BINARY_FORMATS
        headers = {
            "Content-Type": "application/octet-stream" if binary else "text/plain; charset=UTF-8",
            "X-ClickHouse-Query-Id": query_id,
            "X-ClickHouse-Timezone": self.server.engine.timezone,
            "X-ClickHouse-Summary": json.dumps(response.summary),
            "X-ClickHouse-Server-Display-Name": "chdb_http",
        }
        if response.fmt is not None:
            headers["X-ClickHouse-Format"] = response.fmt
        return headers

    def _read_body(self) -> bytes:
        if "chunked" in (self.headers.get("Transfer-Encoding") or "").lower():
            return self._read_chunked()
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length > 0 else b""

    def _read_chunked(self) -> bytes:
        chunks: list[bytes] = []
        while True:
            size = int(self.rfile.readline().split(b";", 1)[0].strip(), 16)
            if size == 0:
                while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                    pass  # trailers
                return b"".join(chunks)
            chunks.append(self.rfile.read(size))
            self.rfile.readline()  # the CRLF after each chunk

    def _send(self, status: int, body: bytes, headers: dict[str, str]) -> None:
        self.send_response(status)
        for name, value in headers.items():
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)


# --- running it ------------------------------------------------------------------


def _write_atomically(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    tmp.replace(path)


def serve(
    path: Path,
    port: int = 0,
    *,
    ready_file: Path | None = None,
    fail_inserts: int = 0,
    insert_delay_s: float = 0.0,
    verbose: bool = False,
) -> int:
    """Serve chdb at `path` on 127.0.0.1:`port` until SIGTERM or SIGINT; return 0
    (2 when another process holds the directory)."""
    try:
        engine = ChdbEngine(path, fail_inserts=fail_inserts, insert_delay_s=insert_delay_s)
    except RuntimeError as exc:  # chdb's "Cannot lock file DIR/status": one process per directory
        print(
            f"chdb_http: cannot open {path}: {exc}\nAnother process is using this directory (a running"
            " `judgeflow run` or `judgeflow demo`?): stop it first, then start this server before the job"
            " and give the job JUDGEFLOW_CLICKHOUSE_DSN=<the URL this prints>.",
            file=sys.stderr,
        )
        return 2
    server = ChdbHttpServer(port, engine, verbose=verbose)

    def stop(signum: int, _frame: Any) -> None:
        # shutdown() waits for serve_forever(), which runs on this (main) thread
        threading.Thread(target=server.shutdown, daemon=True).start()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    print(server.url, flush=True)
    if ready_file is not None:
        _write_atomically(ready_file, server.url + "\n")
    try:
        server.serve_forever(poll_interval=0.2)
    finally:
        server.server_close()
        engine.close()
    return 0


def _wait_ready(proc: subprocess.Popen[bytes], ready_file: Path, timeout: float) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if ready_file.exists():
            return ready_file.read_text(encoding="utf-8").strip()
        if proc.poll() is not None:
            msg = f"chdb_http exited with status {proc.returncode} before it was ready"
            raise RuntimeError(msg)
        time.sleep(0.02)
    msg = f"chdb_http was not ready after {timeout}s"
    raise TimeoutError(msg)


def _stop(proc: subprocess.Popen[bytes], timeout: float = 15.0) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    if proc.returncode != 0:
        logger.warning("chdb_http exited with status %s", proc.returncode)


def front_stats(url: str) -> dict[str, float]:
    """The front's own counters at `url` (`GET /front/stats`): `max_waiting_inserts`, `inserts` (INSERTs
    received) and `cpu_s` (its process's CPU time)."""
    with urllib.request.urlopen(f"{url}/front/stats", timeout=10) as resp:  # noqa: S310 - the front's URL
        return json.loads(resp.read())


@contextmanager
def start_chdb_http(
    path: str | os.PathLike[str],
    *,
    port: int = 0,
    fail_inserts: int = 0,
    insert_delay_s: float = 0.0,
    startup_timeout: float = 60.0,
) -> Iterator[str]:
    """Run the front in a subprocess over chdb at `path`; yield its URL; stop it on exit.

    A subprocess, because chdb allows one data directory per process: the
    caller can keep using its own. `fail_inserts` makes the first N INSERTs
    fail, `insert_delay_s` every INSERT slower (test hooks).
    """
    package_root = Path(__file__).resolve().parents[1]
    with tempfile.TemporaryDirectory(prefix="chdb_http_") as tmp:
        ready_file = Path(tmp) / "url"
        cmd = [
            sys.executable,
            "-m",
            "simulators.chdb_http",
            "--path",
            str(Path(path).resolve()),
            "--port",
            str(port),
            "--ready-file",
            str(ready_file),
            "--fail-inserts",
            str(fail_inserts),
            "--insert-delay-s",
            str(insert_delay_s),
        ]
        proc = subprocess.Popen(cmd, cwd=package_root, stdout=subprocess.DEVNULL)  # noqa: S603
        try:
            yield _wait_ready(proc, ready_file, startup_timeout)
        finally:
            _stop(proc)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m simulators.chdb_http", description=__doc__.split("\n", 1)[0]
    )
    parser.add_argument("--path", required=True, type=Path, help="chdb data directory")
    parser.add_argument("--port", type=int, default=0, help="TCP port on 127.0.0.1 (0: any free)")
    parser.add_argument("--ready-file", type=Path, help="write the URL here once serving")
    parser.add_argument("--fail-inserts", type=int, default=0, help="test hook: fail the first N INSERTs")
    parser.add_argument("--insert-delay-s", type=float, default=0.0, help="test hook: slow every INSERT")
    parser.add_argument("--verbose", action="store_true", help="log every request to stderr")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING)
    return serve(
        args.path.resolve(),
        args.port,
        ready_file=args.ready_file,
        fail_inserts=args.fail_inserts,
        insert_delay_s=args.insert_delay_s,
        verbose=args.verbose,
    )


if __name__ == "__main__":
    sys.exit(main())
