"""`judgeflow run` without a judge key (OPENAI_API_KEY / ANTHROPIC_API_KEY unset, no base URL) starts:
the cost path runs as usual, the tier-0 rules still judge, the LLM tiers are off and the log says so
once per tier. Exiting instead would make compose (restart: unless-stopped) restart it forever."""

from __future__ import annotations

import logging

import pytest

from flows.cli import main
from flows.config import load_settings
from flows.deps import build_plan, judge_tiers, keyless_tiers
from judges.rules import Tier0Rules
from simulators.kafka_mock import produce_all
from simulators.traffic import generate
from sinks.clickhouse import connect
from tests.conftest import CONFIG, rows

NO_KEYS = ("OPENAI_API_KEY", "OPENAI_BASE_URL", "ANTHROPIC_API_KEY", "ANTHROPIC_BASE_URL")


def test_tiers_without_a_key_or_a_base_url_are_left_out_of_the_plan():
    tier2 = {"judges.tier2": {"provider": "anthropic", "model": "claude-sonnet-4-5"}}
    s = load_settings(CONFIG, env={}, **tier2)
    assert keyless_tiers(s) == {1: "OPENAI_API_KEY", 2: "ANTHROPIC_API_KEY"}
    assert judge_tiers(s) == {}
    plan = build_plan(s, Tier0Rules())
    assert plan.llm_tiers == frozenset()
    assert plan.llm_metrics == ()  # no metric is sent to an LLM
    assert plan.metrics["pii"] == (0,)  # the rules still judge

    only_openai = load_settings(CONFIG, env={"OPENAI_API_KEY": "k"}, **tier2)
    assert keyless_tiers(only_openai) == {2: "ANTHROPIC_API_KEY"}
    assert set(judge_tiers(only_openai)) == {1}
    # a self-hosted OpenAI-compatible endpoint may need no key
    self_hosted = load_settings(CONFIG, env={"OPENAI_BASE_URL": "http://vllm:8000/v1"})
    assert keyless_tiers(self_hosted) == {} and set(judge_tiers(self_hosted)) == {1}


@pytest.mark.slow
def test_run_without_a_judge_key_counts_every_event_and_judges_with_the_rules_only(
    kafka, chdb_dsn, database, tmp_path, monkeypatch, caplog
):
    kafka.create_topic("llm-events", 2)
    traffic = list(generate(limit=400, bad=False))
    produce_all(kafka.bootstrap, "llm-events", traffic)
    for var in (*NO_KEYS, "JUDGEFLOW_REDIS_URL"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("JUDGEFLOW_KAFKA_BROKERS", kafka.bootstrap)
    monkeypatch.setenv("JUDGEFLOW_CLICKHOUSE_DSN", chdb_dsn)
    config = tmp_path / "flow.toml"
    config.write_text(CONFIG.read_text().replace('database = "judgeflow"', f'database = "{database}"', 1))

    with caplog.at_level(logging.WARNING, logger="judgeflow"):
        assert main(["run", "--config", str(config), "--bounded"]) == 0

    said = [r.getMessage() for r in caplog.records if r.name == "judgeflow"]
    off = [line for line in said if "is off" in line]
    assert off == [
        "judges.tier1 (openai/gpt-4o-mini) is off: OPENAI_API_KEY is not set (nor OPENAI_BASE_URL)"
    ]
    assert any("tier-0 rules judge; no judge for hallucination, until a key is set" in line for line in said)
    client = connect(chdb_dsn, database)
    assert rows(client, "SELECT count() FROM llm_events FINAL") == [(len(traffic),)]
    [(windowed,)] = rows(
        client, "SELECT sum(requests) FROM cost_windows FINAL WHERE window_s = 60 AND category = 'llm'"
    )
    assert windowed == len(traffic)
    by_tier = rows(client, "SELECT tier, countIf(error != ''), count() FROM evaluations FINAL GROUP BY tier")
    assert [(tier, errors) for tier, errors, _ in by_tier] == [(0, 0)]  # rules only, nothing failed
    assert rows(client, "SELECT count() FROM evaluations FINAL WHERE metric = 'hallucination'") == [(0,)]
    assert rows(client, "SELECT count() FROM cost_windows FINAL WHERE category = 'judge'") == [(0,)]
