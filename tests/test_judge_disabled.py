"""A fatal judge error (401) is remembered in the control store (Redis): a restarted job does not call
the provider again with the bad key, until `judgeflow judges enable` or a configuration change."""

from __future__ import annotations

from flows.cli import main
from flows.config import load_settings
from flows.deps import build_runtime
from simulators.local_endpoint import EndpointConfig, LocalEndpoint
from sinks.redis_store import RedisControlStore
from tests.conftest import CONFIG
from tests.test_judge_runtime import judge_one

BAD_KEY = "sk-revoked-1111"


def settings(ep: LocalEndpoint, redis_url: str, key: str):
    env = {"OPENAI_API_KEY": key, "JUDGEFLOW_REDIS_URL": redis_url}
    return load_settings(CONFIG, env=env, **{"judges.tier1.base_url": ep.openai_base_url})


def test_a_disabled_judge_stays_disabled_across_restarts_until_enabled(redis_server, capsys, monkeypatch):
    with LocalEndpoint(EndpointConfig(latency=1.0, bad_keys=frozenset({BAD_KEY}))) as ep:
        store = RedisControlStore(redis_server.url, refresh_s=0)
        try:
            s = settings(ep, redis_server.url, BAD_KEY)
            rt = build_runtime(s, store)
            try:
                first = judge_one(rt)
            finally:
                rt.close()
            assert "disabled" in first.error and ep.stats()["total"] == 1
            assert list(store.disabled_judges()) == [first.judge]

            restarted = build_runtime(s, store)  # a restart with the same bad key
            try:
                again = judge_one(restarted)
            finally:
                restarted.close()
            assert "disabled" in again.error and "judges enable" in again.error
            assert ep.stats()["total"] == 1  # the provider was not called again

            monkeypatch.setenv("JUDGEFLOW_REDIS_URL", redis_server.url)
            assert main(["judges", "list"]) == 0
            assert first.judge in capsys.readouterr().out
            assert main(["judges", "enable", first.judge]) == 0
            assert store.disabled_judges() == {}

            fixed = build_runtime(settings(ep, redis_server.url, "test-key"), store)
            try:
                assert judge_one(fixed).verdict is not None
            finally:
                fixed.close()
            assert BAD_KEY not in str(store.disabled_judges())
        finally:
            store.close()


def test_a_new_key_is_a_new_configuration(redis_server):
    with LocalEndpoint(EndpointConfig(latency=1.0, bad_keys=frozenset({BAD_KEY}))) as ep:
        store = RedisControlStore(redis_server.url, refresh_s=0)
        try:
            rt = build_runtime(settings(ep, redis_server.url, BAD_KEY), store)
            try:
                judge_one(rt)
            finally:
                rt.close()
            rotated = build_runtime(settings(ep, redis_server.url, "test-key"), store)  # the key was rotated
            try:
                assert judge_one(rotated).verdict is not None
            finally:
                rotated.close()
        finally:
            store.close()
