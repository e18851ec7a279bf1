"""`judgeflow overrides list|set|clear` against a real redis-server: what the
CLI sets is what the sampler's store reads, what the alert actions wrote is
listed, and without Redis (or with Redis down) the command says why."""

from __future__ import annotations

import json
import time

import pytest
from prometheus_client import REGISTRY

from core.ports import OverrideAction
from flows.cli import main
from sinks.control import ControlSink
from sinks.redis_store import RedisControlStore
from tests.conftest import CONFIG


@pytest.fixture
def cli(redis_server, monkeypatch, capsys):
    monkeypatch.setenv("JUDGEFLOW_REDIS_URL", redis_server.url)

    def run(*argv: str) -> tuple[int, str, str]:
        code = main(["overrides", *argv, "--config", str(CONFIG)])
        out = capsys.readouterr()
        return code, out.out, out.err

    return run


def test_set_list_clear(cli, redis_server):
    assert cli("list") == (0, "no overrides in force\n", "")
    code, out, _ = cli("set", "acme", "--rate", "0.05", "--ttl", "30m", "--reason", "cost spike")
    assert code == 0 and out.startswith("acme: judge sampling 5.00% until ")
    assert cli("set", "globex", "--pause", "--ttl", "2h")[0] == 0

    # what the sampler's store sees
    store = RedisControlStore(redis_server.url)
    try:
        seen = store.active()
    finally:
        store.close()
    assert {t: (o.rate, o.reason) for t, o in seen.items()} == {
        "acme": (0.05, "cost spike"),
        "globex": (0.0, "set by hand"),
    }
    assert seen["acme"].set_by.startswith("cli:")
    now = time.time_ns() // 1_000_000
    assert now < seen["acme"].expires_ms <= now + 30 * 60_000

    code, out, _ = cli("list")
    lines = out.splitlines()
    assert lines[0].split()[:4] == ["TENANT", "RATE", "EXPIRES", "(UTC)"]
    assert lines[1].split()[:2] == ["acme", "5.00%"] and lines[1].endswith("cost spike")
    assert lines[2].split()[:2] == ["globex", "paused"]
    code, out, _ = cli("list", "--json")
    assert [(r["tenant"], r["rate"]) for r in json.loads(out)] == [("acme", 0.05), ("globex", 0.0)]

    assert cli("clear", "acme")[:2] == (0, "acme: override cleared, the configured sampling applies again\n")
    assert cli("clear", "acme") == (1, "", "acme: no override in force\n")
    assert [r["tenant"] for r in json.loads(cli("list", "--json")[1])] == ["globex"]


def test_lists_what_the_alert_actions_wrote(cli, redis_server):
    store = RedisControlStore(redis_server.url)
    expires = time.time_ns() // 1_000_000 + 3_600_000
    try:
        ControlSink(store).build("overrides", 0, 1).write_batch(
            [
                OverrideAction(
                    "ramp", "set", 0.01, expires, "alert:abc", "judge sampling set to 1.00% for 1 h", 0
                )
            ]
        )
    finally:
        store.close()
    (row,) = json.loads(cli("list", "--json")[1])
    assert (row["tenant"], row["rate"], row["set_by"], row["expires_ms"]) == (
        "ramp",
        0.01,
        "alert:abc",
        expires,
    )


def test_without_redis_it_says_the_store_is_in_process(monkeypatch, capsys):
    monkeypatch.delenv("JUDGEFLOW_REDIS_URL", raising=False)
    assert main(["overrides", "list", "--config", str(CONFIG)]) == 2
    err = capsys.readouterr().err
    assert "set JUDGEFLOW_REDIS_URL" in err and "in-process" in err


def test_redis_down_is_an_error_not_an_empty_list(cli, redis_server):
    redis_server.stop()
    code, out, err = cli("list")
    assert (code, out) == (1, "")
    assert err.startswith(f"judgeflow: cannot reach Redis at 127.0.0.1:{redis_server.port}: ")


@pytest.mark.parametrize(
    "argv", [["set", "t", "--rate", "2"], ["set", "t", "--pause", "--ttl", "soon"], ["set", "t"]]
)
def test_bad_arguments(cli, argv):
    with pytest.raises(SystemExit) as exc:
        cli(*argv)
    assert exc.value.code == 2


def test_alert_actions_ride_out_a_redis_outage(redis_server):
    store = RedisControlStore(redis_server.url)
    sink = ControlSink(store, attempts=2, backoff_s=0.0).build("overrides", 0, 1)
    expires = time.time_ns() // 1_000_000 + 3_600_000
    action = OverrideAction(
        "ramp", "set", 0.01, expires, "alert:abc", "judge sampling set to 1.00% for 1 h", 0
    )
    failed = REGISTRY.get_sample_value("judgeflow_override_actions_total", {"outcome": "failed"}) or 0
    try:
        redis_server.stop()
        sink.write_batch([action])  # given up after two tries: logged and counted, not raised
        assert (
            REGISTRY.get_sample_value("judgeflow_override_actions_total", {"outcome": "failed"}) == failed + 1
        )
        redis_server.start()
        sink.write_batch([action])
        assert store.active()["ramp"].set_by == "alert:abc"
    finally:
        store.close()


@pytest.mark.parametrize("backend", ["redis", "memory"])
def test_an_alert_only_clears_the_override_it_set(redis_server, backend):
    from core.ports import Override
    from sinks.memory_store import MemoryControlStore

    store = RedisControlStore(redis_server.url, refresh_s=0) if backend == "redis" else MemoryControlStore()
    later = int(time.time() * 1000) + 3_600_000
    store.set(Override("acme", 0.01, "cost spike", "alert:a1", later))
    # an operator takes over by hand: the alert's resolution must leave it alone
    store.set(Override("acme", 0.0, "investigating", "cli:ops", later))
    assert store.clear("acme", if_set_by="alert:a1") is False
    assert store.active()["acme"].set_by == "cli:ops"
    assert store.clear("acme", if_set_by="cli:ops") is True
    assert "acme" not in store.active()
    if backend == "redis":
        store.close()
