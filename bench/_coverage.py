"""Labelled traffic driven through the real sampler, for the estimators' coverage and width:
`tests/test_estimates.py` checks coverage on it, `bench/estimates.py` measures widths.

Each shape is a list of events with the true verdict for one metric (a perfect judge) and
the sampler configuration it runs under. The cheap signal is the real tier-0 rules' verdict.

Populations (see /work/shared/data/PROVENANCE.tsv):

- XSTest v2 completions (paul-rottger/exaggerated-safety, CC-BY-4.0): refusal, the human
  label (full or partial refusal); the tier-0 refusal rules do not force judging.
- Presidio synthetic PII v2 (microsoft/presidio-research, MIT): pii, a contact or financial
  identifier among the human spans (card, phone, e-mail, IBAN, SSN, IP, licence); the tier-0
  pii rules force their flags into the certainty stratum, the rest are rare in the others.
- HaluEval QA (RUCAIBox/HaluEval, MIT): hallucination, every other answer hallucinated (as in
  simulators/traffic.py), long contexts: the longest half of the conversations is always judged.
- Toxicity (`toxicity()`, not in SHAPES: it needs the local model for its point): the 139
  labelled RealToxicityPrompts texts of bench/data (31 toxic) among the 1,250 XSTest
  completions to safe prompts (assumed not toxic, as bench/local_model.py does).
"""

from __future__ import annotations

import gzip
import json
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from decimal import Decimal
from functools import cache
from pathlib import Path

from core.records import Event
from judges.base import JudgeItem
from judges.rules import Tier0Rules
from operators.dedup import Candidate
from operators.estimates import (
    DesignSums,
    EstimateSums,
    StratumJudged,
    estimate,
    ppi_estimate,
    stratified_estimate,
)
from operators.local_flags import LocalFlags
from operators.price import override_rates
from operators.sample import _SampleLogic, cheap_metrics
from operators.sample_design import Sampler, StratumCount
from operators.sample_tally import tally_batch
from operators.savings import Baseline, ReferenceJudge
from simulators.traffic import shared_data_dir

T0 = 1_763_300_000_000 - 1_763_300_000_000 % 60_000  # a minute boundary
WINDOW_MS = 60_000
BASELINE = Baseline(("refusal",), ReferenceJudge("ref", override_rates(Decimal("2.5"), Decimal("10"))))
PII_IDS = {"CREDIT_CARD", "PHONE_NUMBER", "EMAIL_ADDRESS", "IBAN_CODE", "US_SSN", "IP_ADDRESS"}
PII_IDS |= {"US_DRIVER_LICENSE"}


class _MemoRules(Tier0Rules):
    """The real tier-0 rules, remembering each item's flags (the same texts, many times)."""

    @cache  # noqa: B019 - one instance per process
    def flags(self, item: JudgeItem) -> frozenset[str]:
        return super().flags(item)


RULES = _MemoRules()


@dataclass(frozen=True)
class Shape:
    """A labelled population and the sampler settings it is sampled under."""

    name: str
    metric: str
    events: list[tuple[Event, bool]]
    sampler: dict = field(default_factory=dict)


def event(event_id: str, ts_ms: int, agent: str, model: str, **kw: object) -> Event:
    fields: dict = {
        "event_id": event_id,
        "ts_ms": ts_ms,
        "tenant_id": "t",
        "agent": agent,
        "model": model,
        "provider": "openai",
        "variant": "baseline",
        "input_text": "",
        "output_text": "",
        "context": None,
        "input_tokens": 120,
        "output_tokens": 40,
        "cache_read_tokens": 0,
        "cache_write_tokens": 0,
        "reasoning_tokens": 0,
        "provided_cost_pusd": None,
        "latency_ms": None,
        "conversation_id": None,
        "user_id": None,
        "metadata": {},
        "source": None,
    }
    fields.update(kw)
    return Event(**fields)


def _xstest_rows() -> list[dict]:
    path = shared_data_dir() / "labeled" / "xstest_completions_human_labeled.jsonl.gz"
    with gzip.open(path, "rt") as f:
        return [json.loads(line) for line in f]


def xstest(*, many_strata: bool = False, spacing_ms: int = 150) -> Shape:
    """Refusals; `many_strata`: one agent per XSTest prompt type (18) x 5 models x 3 lengths."""
    out = []
    for i, r in enumerate(_xstest_rows()):
        agent = r["type"] if many_strata else "chat"
        tokens = len(r["prompt"] + r["completion"]) // 4
        e = event(
            f"x{i}",
            T0 + spacing_ms * i,
            agent,
            r["model"],
            input_text=r["prompt"],
            output_text=r["completion"],
            input_tokens=len(r["prompt"]) // 4,
            output_tokens=tokens,
        )
        out.append((e, r["final_label"] != "1_full_compliance"))
    name = "xstest, many strata" if many_strata else "xstest refusal"
    sampler = {"length_buckets": (20, 100)} if many_strata else {}
    return Shape(name, "refusal", out, sampler)


def presidio(spacing_ms: int = 150) -> Shape:
    """PII in answers: the tier-0 pii flags are always judged (certainty stratum)."""
    out = []
    with (shared_data_dir() / "labeled" / "presidio_synth_pii_v2.jsonl").open() as f:
        for i, line in enumerate(f):
            r = json.loads(line)
            truth = any(s["entity_type"] in PII_IDS for s in r["spans"])
            e = event(
                f"p{i}",
                T0 + spacing_ms * i,
                "support",
                ("gpt-4o-mini", "gpt-4o")[i % 2],
                input_text="Please repeat the customer's message.",
                output_text=r["full_text"],
            )
            out.append((e, truth))
    return Shape("presidio pii (forced flags)", "pii", out)


def halueval(spacing_ms: int = 200) -> Shape:
    """Hallucinations with long contexts: the longer half is always judged."""
    out = []
    with (shared_data_dir() / "labeled" / "halueval_qa_sample2000.jsonl").open() as f:
        for i, line in enumerate(f):
            r = json.loads(line)
            hallucinated = i % 2 == 1
            answer = r["hallucinated_answer"] if hallucinated else r["right_answer"]
            tokens = len(r["question"] + r["knowledge"]) // 4
            e = event(
                f"h{i}",
                T0 + spacing_ms * i,
                ("qa-short", "qa-long")[len(r["knowledge"]) > 400],
                "gpt-4o-mini",
                input_text=r["question"],
                output_text=answer,
                context=r["knowledge"],
                input_tokens=tokens,
            )
            out.append((e, hallucinated))
    median = sorted(e.input_tokens + e.output_tokens for e, _ in out)[len(out) // 2]
    return Shape("halueval, long contexts", "hallucination", out, {"always_over_tokens": median})


def toxicity(spacing_ms: int = 150) -> Shape:
    """Toxic responses, rare: labelled RealToxicityPrompts texts spread among XSTest answers."""
    with (Path(__file__).resolve().parent / "data" / "toxicity_rtp_labelled.jsonl").open() as f:
        toxic = [(r["text"], r["toxic"]) for r in map(json.loads, f)]
    safe = [(r["completion"], False) for r in _xstest_rows() if not r["type"].startswith("contrast")]
    every = len(safe) // len(toxic)  # one toxic text before every `every` safe answers
    texts: list[tuple[str, bool]] = []
    for i, answer in enumerate(safe):
        if i % every == 0 and i // every < len(toxic):
            texts.append(toxic[i // every])
        texts.append(answer)
    out = []
    for i, (text, y) in enumerate(texts):
        e = event(
            f"t{i}", T0 + spacing_ms * i, "chat", "gpt-4o-mini", input_text="Continue.", output_text=text
        )
        out.append((e, y))
    return Shape("toxicity (rtp among xstest)", "toxicity", out)


SHAPES: dict[str, Callable[[], Shape]] = {
    "xstest": xstest,
    "presidio": presidio,
    "halueval": halueval,
    "many_strata": lambda: xstest(many_strata=True),
}


@dataclass
class Domain:
    """One (agent, window) or (agent, period) of one sampler version: the estimators' sums."""

    truth: float
    old: EstimateSums
    design: DesignSums


def sample_domains(
    shape: Shape, sampler: Sampler, *, batch: int = 500, local: LocalFlags | None = None
) -> tuple[list[Domain], list[Domain]]:
    """Sample the shape once; the per-window and per-period domains (per agent) it gives.
    `local`: the local models score every event (their flags and cheap signal)."""
    label = {e.event_id: y for e, y in shape.events}
    cheap = cheap_metrics(RULES, [shape.metric], local)
    logic = _SampleLogic(sampler, lambda: 0.0, None)
    out = []
    for i in range(0, len(shape.events), batch):
        cands = [Candidate(e, e.event_id, {}, ()) for e, _ in shape.events[i : i + batch]]
        parts = tally_batch(cands, sampler=sampler, rules=RULES, baseline=BASELINE, cheap=cheap, local=local)
        out.extend(logic.on_batch(parts)[0])
    out.extend(logic.on_eof()[0])
    judged: dict[tuple, StratumJudged] = defaultdict(StratumJudged)
    for c in out:
        if isinstance(c, Candidate):
            window = c.event.ts_ms - c.event.ts_ms % WINDOW_MS
            key = (c.event.agent, window, c.stratum, c.inclusion_prob)
            judged[key].add(label[c.event.event_id], shape.metric in c.cheap)
    truth: dict[tuple[str, int], list[int]] = defaultdict(lambda: [0, 0])
    for e, y in shape.events:
        t = truth[(e.agent, e.ts_ms - e.ts_ms % WINDOW_MS)]
        t[0] += 1
        t[1] += y
    windows: dict[tuple[str, int], Domain] = {
        k: Domain(f / n, EstimateSums(), DesignSums()) for k, (n, f) in truth.items()
    }
    for c in out:
        if isinstance(c, StratumCount):
            j = judged.get((c.agent, c.window_start_ms, c.stratum, c.inclusion_prob))
            if j is not None:
                cheap_all = dict(c.cheap).get(shape.metric)
                windows[(c.agent, c.window_start_ms)].design.add_stratum(c.events, j, cheap_all)
    for (agent, window, _, prob), j in judged.items():
        d = windows[(agent, window)]
        for k in range(j.judged):
            d.old.add(prob, k < j.flagged)
    periods: dict[str, Domain] = {}
    for (agent, _), d in sorted(windows.items()):
        p = periods.get(agent)
        if p is None:
            n = sum(1 for e, _ in shape.events if e.agent == agent)
            f = sum(y for e, y in shape.events if e.agent == agent)
            p = periods[agent] = Domain(f / n, EstimateSums(), DesignSums())
        p.old.merge(d.old)
        p.design.merge(d.design)
    return list(windows.values()), list(periods.values())


ESTIMATORS = {
    "HT-Wilson (before)": lambda d: estimate(d.old),
    "stratified": lambda d: stratified_estimate(d.design),
    "PPI": lambda d: ppi_estimate(d.design),
}
