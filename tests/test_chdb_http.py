"""The chdb HTTP front: the unmodified clickhouse-connect HTTP client works against it,
and several processes share one chdb through it.

Each test runs the front in a subprocess over its own tmp dir, so this module
never opens chdb in the pytest process.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import textwrap
import urllib.error
import urllib.parse
import urllib.request
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import clickhouse_connect
import pytest
from clickhouse_connect.driver.exceptions import DatabaseError

from simulators.chdb_http import start_chdb_http

REPO = Path(__file__).resolve().parents[1]

CREATE = """
CREATE TABLE IF NOT EXISTS demo.spend
(
    id String,
    ts DateTime64(3, 'UTC'),
    tenant LowCardinality(String),
    cost_usd Decimal(38, 12),
    latency_ms Nullable(Float64),
    raw String
)
ENGINE = ReplacingMergeTree
ORDER BY id
"""
COLUMNS = ["id", "ts", "tenant", "cost_usd", "latency_ms", "raw"]


def http_client(url: str, **options: Any) -> clickhouse_connect.driver.Client:
    parts = urllib.parse.urlsplit(url)
    return clickhouse_connect.get_client(host=parts.hostname, port=parts.port, interface="http", **options)


def post(
    url: str, body: bytes, headers: dict[str, str] | None = None, **params: str
) -> tuple[int, dict[str, str], bytes]:
    request = urllib.request.Request(
        f"{url}/?{urllib.parse.urlencode(params)}", data=body, headers=headers or {}
    )
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, dict(response.headers), response.read()
    except urllib.error.HTTPError as error:
        with error:
            return error.code, dict(error.headers), error.read()


def rows(i: int) -> list[tuple[Any, ...]]:
    ts = datetime(2026, 1, 1, tzinfo=UTC)
    return [
        (f"id-{i}-{n}", ts, f"tenant-{n % 2}", Decimal(n).scaleb(-12), None if n else 1.5, b"\xff")
        for n in range(100)
    ]


def test_the_cli_prints_its_url_first_serves_ping_and_exits_0_on_sigterm(tmp_path: Path) -> None:
    proc = subprocess.Popen(
        [sys.executable, "-m", "simulators.chdb_http", "--path", str(tmp_path / "db"), "--port", "0"],
        cwd=REPO,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        url = proc.stdout.readline().strip()
        assert url.startswith("http://127.0.0.1:")
        with urllib.request.urlopen(f"{url}/ping", timeout=10) as response:
            assert response.read() == b"Ok.\n"
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=15) == 0
        assert proc.stdout is not None
        proc.stdout.close()


@pytest.mark.parametrize("compress", [True, False, "zstd", "gzip"])
def test_clickhouse_connect_creates_inserts_and_queries(tmp_path: Path, compress: object) -> None:
    with start_chdb_http(tmp_path / "db") as url:
        client = http_client(url, compress=compress)
        assert client.ping()
        client.command("CREATE DATABASE IF NOT EXISTS demo")
        client.command(CREATE)
        client.command(CREATE)  # idempotent DDL answers without a result set
        data = rows(0)
        summary = client.insert("spend", data, column_names=COLUMNS, database="demo")
        assert summary.written_rows == 100
        client.insert("spend", data, column_names=COLUMNS, database="demo")  # a replay

        result = client.query(
            "SELECT id, ts, tenant, cost_usd, latency_ms, raw FROM demo.spend FINAL"
            " WHERE tenant = {tenant:String} AND cost_usd >= {min:Decimal(38, 12)} ORDER BY id",
            parameters={"tenant": "tenant-1", "min": Decimal("0.000000000050")},
            column_formats={"raw": "bytes"},
        )
        expected = [
            (r[0], r[1].replace(tzinfo=None), *r[2:])
            for r in sorted(data)
            if r[2] == "tenant-1" and r[3] >= Decimal("0.000000000050")
        ]
        assert result.result_rows == expected
        assert client.command("SELECT count() FROM demo.spend FINAL") == 100
        assert client.command("SELECT sum(cost_usd) FROM demo.spend FINAL") == "0.00000000495"
        assert client.query("SELECT * FROM demo.spend LIMIT 0").column_names == tuple(COLUMNS)
        assert client.command("SELECT 1 WHERE 0") == ""


def test_errors_come_back_as_database_errors_with_the_clickhouse_code(tmp_path: Path) -> None:
    with start_chdb_http(tmp_path / "db") as url:
        client = http_client(url)
        with pytest.raises(DatabaseError, match="UNKNOWN_TABLE") as raised:
            client.query("SELECT * FROM default.nothing")
        assert raised.value.code == 60
        with pytest.raises(DatabaseError, match="SYNTAX_ERROR"):
            client.command("SELEC 1")
        assert client.command("SELECT 1") == 1  # the front keeps serving


def test_query_parameters_sent_as_a_multipart_form(tmp_path: Path) -> None:
    with start_chdb_http(tmp_path / "db") as url:
        client = http_client(url, form_encode_query_params=True)
        result = client.query(
            "SELECT {name:String} AS name, {n:UInt64} * 2 AS twice",
            parameters={"name": "tab\there 'quoted'", "n": 21},
        )
        assert result.result_rows == [("tab\there 'quoted'", 42)]


def test_settings_apply_to_their_request_only(tmp_path: Path) -> None:
    with start_chdb_http(tmp_path / "db") as url:
        client = http_client(url)
        default = client.command("SELECT getSetting('max_block_size')")
        tuned = client.command("SELECT getSetting('max_block_size')", settings={"max_block_size": 1234})
        assert tuned == 1234
        assert client.command("SELECT getSetting('max_block_size')") == default != 1234


def test_plain_http_queries_and_text_inserts(tmp_path: Path) -> None:
    with start_chdb_http(tmp_path / "db") as url:
        status, headers, body = post(url, b"SELECT 1 AS one, 'a\tb' AS s")
        assert (status, body) == (200, b"1\ta\\tb\n")
        assert headers["X-ClickHouse-Format"] == "TabSeparated"

        status, _, _ = post(url, b"CREATE TABLE kv (k String, v UInt32) ENGINE = Memory")
        assert status == 200
        status, headers, _ = post(url, b"a,1\nb,2\n", query="INSERT INTO kv FORMAT CSV")
        assert status == 200 and '"written_rows": "2"' in headers["X-ClickHouse-Summary"]
        status, _, _ = post(url, b'INSERT INTO kv FORMAT JSONEachRow\n{"k": "c", "v": 3}\n')
        assert status == 200
        status, _, body = post(url, b"SELECT sum(v) FROM kv WHERE k != {skip:String}", param_skip="b")
        assert (status, body) == (200, b"4\n")

        status, headers, body = post(url, b"SELECT * FROM missing")
        assert status == 500
        assert headers["X-ClickHouse-Exception-Code"] == "60"
        assert b"UNKNOWN_TABLE" in body


def test_broken_requests_get_an_error_and_the_front_keeps_serving(tmp_path: Path) -> None:
    with start_chdb_http(tmp_path / "db") as url:
        status, headers, _ = post(url, b"\xff\xfe not utf-8")
        assert status == 500 and headers["X-ClickHouse-Exception-Code"] == "1001"
        status, _, body = post(url, b"not lz4", {"Content-Encoding": "lz4"})
        assert status == 500 and b"chdb_http" in body
        status, _, body = post(url, b"SELECT 1", {"Content-Encoding": "compress"})
        assert status == 500 and b"unsupported Content-Encoding 'compress'" in body
        status, _, body = post(url, b"", query="SELECT 2")
        assert (status, body) == (200, b"2\n")


def test_two_processes_share_one_chdb(tmp_path: Path) -> None:
    script = textwrap.dedent(
        """
        import sys
        from decimal import Decimal
        from urllib.parse import urlsplit
        import clickhouse_connect

        url = urlsplit(sys.argv[1])
        client = clickhouse_connect.get_client(host=url.hostname, port=url.port)
        client.insert(
            "shared.t", [(i, Decimal(i).scaleb(-12)) for i in range(1000, 1500)], ["n", "usd"]
        )
        print(client.command("SELECT count() FROM shared.t"))
        """
    )
    with start_chdb_http(tmp_path / "db") as url:
        client = http_client(url)
        client.command("CREATE DATABASE shared")
        client.command("CREATE TABLE shared.t (n UInt32, usd Decimal(38, 12)) ENGINE = MergeTree ORDER BY n")
        client.insert("shared.t", [(i, Decimal(i).scaleb(-12)) for i in range(1000)], ["n", "usd"])

        other = subprocess.run(
            [sys.executable, "-c", script, url],
            capture_output=True,
            text=True,
            timeout=60,
            check=True,
        )

        assert other.stdout.strip() == "1500"  # the other process saw our rows, then added its own
        assert client.command("SELECT count(), max(n) FROM shared.t") == ["1500", "1499"]
