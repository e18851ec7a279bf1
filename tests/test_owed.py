"""The judge frontier (operators.owed): what the sampler and the judges still owe the judge-spend
windows, when a stage key's seal counts, the other processes' share, and — as a property — that the
judge-spend windows count each judged event exactly once whatever the judges' latency, the batches or
a crash."""

from __future__ import annotations

import pickle
from collections import defaultdict
from dataclasses import dataclass
from typing import Any

from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from prometheus_client import REGISTRY

from bench._coverage import BASELINE, RULES, xstest
from core.records import CostWindow, Event, LedgerEntry, entry_hash
from operators import event_time
from operators.dedup import Candidate
from operators.judge import _JudgeState, _owed_ms, _Waiting
from operators.ledger import combine
from operators.owed import OWED, OwedWork, _arrived_ms, _judged_ms
from operators.sample import _SampleLogic
from operators.sample_design import Sampler
from operators.sample_tally import tally_batch
from operators.windows import _WindowLogic
from simulators.kafka_mock import produce_all
from simulators.local_endpoint import EndpointConfig, LocalEndpoint
from simulators.traffic import generate
from sinks.clickhouse import connect
from tests.conftest import rows, run_flow, topic_flow_settings
from tests.test_windows import (
    BASE,
    MIN,
    _Partitions,
    _partitions_and_order,
    _running_clock,
    kafka_messages,
)


@dataclass
class _Epochs:
    """The cluster's epochs as `event_time.INPUT` reports them: the one partitions read in (every
    earlier one is processed), and the newest this process's partitions have ended."""

    reading: int = 0
    ended: int = 0
    processed: int | None = None
    kafka: bool = True

    def epoch(self) -> int:
        return self.reading

    def epoch_bound(self) -> int:
        return max(self.reading, self.ended)

    def has_input(self) -> bool:
        return self.kafka

    def processed_ms(self) -> int | None:
        return self.processed

    def end_epoch(self) -> None:
        """The partitions end the epoch they read in (their snapshots): the stages seal after this."""
        self.ended = self.reading + 1

    def read_next(self) -> None:
        """The flow has processed the epoch: the partitions read in the next one."""
        self.reading += 1


def test_a_seal_counts_once_the_flow_has_processed_the_epoch_it_was_made_in():
    epochs = _Epochs()
    board = OwedWork(epochs)
    sampler, judge = board.key(), board.key()
    board.seal(sampler, 1_000)
    assert board.owed_ms() == 1_000  # nothing counts yet: everything it ever owed
    epochs.end_epoch()
    # epoch 0 ends: the sampler's window is decided (its events go to the judge) and the judge owes them
    board.seal(sampler, None)
    board.seal(judge, 1_000)
    epochs.read_next()
    epochs.end_epoch()
    board.seal(judge, None)  # epoch 1: the judge emits the spend (it may still be on its way)
    assert board.owed_ms() == 1_000
    # the flow reads in epoch 2: epoch 1 is processed, but the seal is labelled with an upper bound
    # of its epoch (past what the partitions ended, plus one): it counts two epochs later
    for _ in range(2):
        epochs.read_next()
        assert board.owed_ms() == 1_000
    epochs.read_next()
    assert board.owed_ms() is None
    # a key that owes nothing is forgotten; sealing nothing again adds nothing
    board.seal(sampler, None)
    assert board._seals == {}


def test_a_key_owes_the_least_of_its_seals_since_the_newest_that_counts():
    epochs = _Epochs(reading=5)
    board = OwedWork(epochs)
    k = board.key()
    board.seal(k, 3_000)  # label 6
    epochs.reading = 7
    board.seal(k, 2_000)  # label 8: an older event arrived from upstream
    board.seal(k, 9_000)  # also label 8: the same epoch bound, the least of the two
    assert board.owed_ms() == 2_000
    epochs.reading = 9
    assert board.owed_ms() == 2_000  # the newest that counts
    board.seal(k, 9_000)  # label 10
    assert board.owed_ms() == 2_000
    epochs.reading = 11
    assert board.owed_ms() == 9_000


def test_other_processes_hold_their_share_and_the_epoch_a_seal_counts_to():
    epochs = _Epochs(reading=10)
    board = OwedWork(epochs)
    k = board.key()
    board.seal(k, 5_000)  # label 11
    epochs.reading = 12
    board.seal(k, None)  # label 13
    epochs.reading = 14
    assert board.owed_ms() is None
    board.seal(k, 5_000)  # label 15
    board.set_remote({"0-llm-events": (16, None), "1-llm-events": (15, 7_000)})
    epochs.reading = 16
    board.seal(k, None)  # label 17
    epochs.reading = 18
    # another process published from epoch 15: the seal of 17 does not count for this process yet
    assert board.local_ms() == (18, 5_000)
    assert board.owed_ms() == 5_000
    board.set_remote({"0-llm-events": (18, None), "1-llm-events": (18, 7_000)})
    assert board.local_ms() == (18, None)
    assert board.owed_ms() == 7_000
    board.set_remote({"0-llm-events": None, "1-llm-events": (18, None)})  # not heard of: it holds all
    assert board.owed_ms() == -1


def test_the_judge_spend_windows_wait_for_the_flow_and_for_what_is_owed():
    epochs = _Epochs(processed=BASE + 10 * MIN)
    board = OwedWork(epochs)
    assert _judged_ms(epochs, board, OwedWork(epochs)) == BASE + 10 * MIN
    board.seal(board.key(), BASE + MIN)
    assert _judged_ms(epochs, board, OwedWork(epochs)) == BASE + MIN
    epochs.processed = BASE
    assert _judged_ms(epochs, board, OwedWork(epochs)) == BASE
    epochs.processed = None  # every partition read to its end and processed: the judges still owe
    assert _judged_ms(epochs, board, OwedWork(epochs)) == BASE + MIN
    epochs.kafka = False  # no Kafka input (an in-memory source): the watermark decides
    assert _judged_ms(epochs, board, OwedWork(epochs)) is None


def test_the_stages_after_the_otlp_join_wait_for_what_it_holds_and_the_judge_side_for_both():
    epochs = _Epochs(processed=BASE + 10 * MIN)
    joined, owed = OwedWork(epochs), OwedWork(epochs)
    assert _arrived_ms(epochs, joined) == _judged_ms(epochs, owed, joined) == BASE + 10 * MIN
    joined.seal(joined.key(), BASE + 2 * MIN)  # a span waiting for its log records
    assert _arrived_ms(epochs, joined) == _judged_ms(epochs, owed, joined) == BASE + 2 * MIN
    owed.seal(owed.key(), BASE + MIN)
    assert (_arrived_ms(epochs, joined), _judged_ms(epochs, owed, joined)) == (BASE + 2 * MIN, BASE + MIN)
    epochs.processed = None  # every partition read to its end and processed: the join still holds
    assert _arrived_ms(epochs, joined) == BASE + 2 * MIN
    epochs.kafka = False  # no Kafka input: the watermark decides
    assert _arrived_ms(epochs, joined) is None and _judged_ms(epochs, owed, joined) is None


def test_how_far_the_judges_hold_the_windows_back_is_a_metric():
    epochs = _Epochs(processed=BASE + 10 * MIN)
    board = OwedWork(epochs)
    board.seal(board.key(), BASE + 4 * MIN)
    _judged_ms(epochs, board, OwedWork(epochs))
    assert REGISTRY.get_sample_value("judgeflow_judge_frontier_behind_seconds") == 360.0
    board.set_remote({"1-llm-events": None})  # a process not heard of: not a measure of the judges
    _judged_ms(epochs, board, OwedWork(epochs))
    assert REGISTRY.get_sample_value("judgeflow_judge_frontier_behind_seconds") == 0.0


def test_the_sampler_and_the_judge_seal_what_they_owe():
    """Their snapshots seal: the sampler its oldest open window, the judge its oldest event under
    way or finished and not yet emitted; a restored key owes what its snapshot held at once."""
    sampler = Sampler(base_rate=0.5, version="v1")
    logic = _SampleLogic(sampler, lambda: 0.0, None)
    events = [e for e, _ in xstest().events[:50]]
    oldest = min(e.ts_ms for e in events)
    cands = [Candidate(e, e.event_id, {}, ()) for e in events]
    logic.on_batch(tally_batch(cands, sampler=sampler, rules=RULES, baseline=BASELINE))
    snap = logic.snapshot()
    window_ms = sampler.window_s * 1000
    assert OWED.owed_ms() == oldest - oldest % window_ms
    _SampleLogic(sampler, lambda: 0.0, pickle.loads(pickle.dumps(snap)))  # restored: owes the same
    logic.on_eof()
    logic.snapshot()
    event_time.INPUT.processed("0-llm-events", epoch=5, processed_ms=None)  # epochs later
    assert OWED._local(5) == oldest - oldest % window_ms  # the restored key still owes its windows

    cand = Candidate(events[0], events[0].event_id, {}, ())
    ready = LedgerEntry("t", "a", "j", "tier1", events[0].ts_ms - 7)
    assert _owed_ms(_JudgeState(waiting=[_Waiting(cand, {})], ready=[ready])) == events[0].ts_ms - 7
    assert _owed_ms(_JudgeState(waiting=[_Waiting(cand, {})], ready=[])) == events[0].ts_ms
    assert _owed_ms(_JudgeState(waiting=[], ready=[])) is None


def test_judge_spend_is_late_by_where_its_events_partition_stood():
    def spend(after_ms: int | None) -> LedgerEntry:
        return LedgerEntry("t", "a", "j", "tier1", BASE + 1_000, entry_id="e", after_ms=after_ms)

    close = BASE + MIN + 2 * MIN  # the window's end plus the lateness
    for after_ms, late in ((None, False), (close - 1, False), (close, True)):
        (x,) = combine([spend(after_ms)], MIN, -1, 2 * MIN)
        assert (x.late, x.entry_id) == (late, "e" if late else "")


# --- the property ---------------------------------------------------------------------------------


class _Judge:
    """The judge stage: an event read in epoch e is done `delay` epochs later (its LLM calls), then
    its spend entry is emitted; at every epoch's end it seals the earliest event it still owes."""

    def __init__(self, board: OwedWork, pending: list[tuple[int, Event]] | None = None) -> None:
        self.board = board
        self.key = board.key()
        self.pending = pending or []
        if self.pending:  # a restore: what the snapshot held is owed from the start
            board.seal(self.key, min(e.ts_ms for _, e in self.pending))

    def take(self, events: list[Event], epoch: int, delays: list[int]) -> None:
        for e in events:
            self.pending.append((epoch + (delays.pop(0) if delays else 0), e))

    def done(self, epoch: int) -> list[LedgerEntry]:
        out = [_spend(e) for at, e in self.pending if at <= epoch]
        self.pending = [(at, e) for at, e in self.pending if at > epoch]
        return out

    def snapshot(self) -> list[tuple[int, Event]]:
        self.board.seal(self.key, min((e.ts_ms for _, e in self.pending), default=None))
        return list(self.pending)


def _spend(e: Event) -> LedgerEntry:
    eid = f"{e.event_id}|judge|toxicity|1"
    after = e.source.after_ms if e.source is not None else None
    return LedgerEntry(
        e.tenant_id, e.agent, "judge", "tier1", e.ts_ms, judge_calls=1, judge_cost_pusd=e.cost_pusd,
        entry_id=eid, ids=entry_hash(eid), after_ms=after,
    )  # fmt: skip


@settings(max_examples=1000, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    messages=kafka_messages(max_size=40),
    pick=st.lists(st.integers(0, 2), max_size=120),
    delays_before=st.lists(st.integers(0, 12), max_size=40),  # the judges' latency, in epochs
    delays_after=st.lists(st.integers(0, 12), max_size=40),
    before=st.integers(1, 5),
    after=st.integers(1, 5),
    crash=st.one_of(st.none(), st.tuples(st.integers(0, 8), st.integers(0, 6))),
    lateness=st.sampled_from([0, 2 * MIN]),
)
# found by the search with the windows waiting for the flow alone: the crashed run forgets the first
# minute before its last judgement comes (a correction), the run after the crash has it in the window
@example(
    messages=[(0, MIN, 0, 1), (1, 0, 0, 1), (1, 0, 0, 1), (2, 0, 0, 1)],
    pick=[],
    delays_before=[],
    delays_after=[0, 0, 0, 1],
    before=1,
    after=1,
    crash=(0, 3),
    lateness=0,
)
def test_judge_spend_windows_count_each_event_once_whatever_the_judges_latency_or_a_crash(
    messages, pick, delays_before, delays_after, before, after, crash, lateness
):
    """Events from three Kafka partitions read in epochs; each is judged some epochs later (another
    latency after a crash, which resumes from the snapshot of the windows and the judge's work, reads
    the rest of the input again and keeps the rows written after the snapshot), on a wall clock that
    runs on: the judge-spend minute rows plus their corrections hold each event's spend exactly once."""
    parts, order = _partitions_and_order(messages, pick)
    now = _running_clock()

    kafka = _Partitions(parts)
    table: dict[tuple[str, int, str, str], CostWindow] = {}

    def process(resume: dict[str, Any] | None = None) -> tuple[_Epochs, OwedWork, dict, _Judge, Any]:
        """A process starting (epochs from 0), with what a snapshot held."""
        epochs = _Epochs()
        board = OwedWork(epochs)

        def judged() -> int | None:
            epochs.processed = kafka.processed()
            return _judged_ms(epochs, board, OwedWork(epochs))

        def window(state: Any = None) -> _WindowLogic:
            return _WindowLogic(MIN, lateness, now, state, "judge", processed=judged)

        resume = resume or {"w": {}, "j": []}
        logics = {k: window(s) for k, s in resume["w"].items()}
        return epochs, board, logics, _Judge(board, resume["j"]), window

    def write(rows: Any) -> None:
        for x in rows:
            table[(x.agent, x.window_start_ms, x.kind, x.correction_id)] = x

    epochs, _, logics, judge, window = process()
    delays = list(delays_before)
    saved = None
    snapshot_at, crash_after = crash if crash is not None else (-1, 0)
    epoch, size = 0, before
    while order or judge.pending:
        if epoch == snapshot_at and saved is None:
            state = {"w": {k: v.snapshot() for k, v in logics.items()}, "j": judge.snapshot()}
            saved = (epoch, pickle.dumps((state, kafka.cursor, kafka.released, kafka.sealed, order)))
        judge.take(kafka.read(order, size), epoch, delays)
        spend = judge.done(epoch)
        # the epoch ends at the partitions (their snapshots), then at the judge: it seals before the
        # windows downstream have processed what it emitted in the epoch
        epochs.end_epoch()
        judge.snapshot()
        keyed: dict[str, list[LedgerEntry]] = defaultdict(list)
        for x in combine(spend, MIN, -1, lateness):
            keyed[x.agent].append(x)
        for agent, entries in keyed.items():
            write(logics.setdefault(agent, window()).on_batch(entries)[0])
        for logic in logics.values():
            write(logic.on_notify()[0])
        # the flow has processed the epoch: where the partitions stood at its end counts
        kafka.seal()
        epochs.read_next()
        epoch += 1
        if saved is not None and epoch == saved[0] + crash_after + 1 and crash is not None:
            state, kafka.cursor, kafka.released, kafka.sealed, order = pickle.loads(saved[1])
            epochs, _, logics, judge, window = process(state)  # killed: resume, read the rest again
            delays = list(delays_after)
            epoch, size, crash = saved[0], after, None
    for logic in logics.values():
        write(logic.on_eof()[0])

    got: dict[int, int] = defaultdict(int)
    for (_, start, _, _), r in table.items():
        got[start] += r.judge_cost_pusd
    want: dict[int, int] = defaultdict(int)
    for part in parts:
        for _, event_ms, cost, _ in part:
            want[event_ms - event_ms % MIN] += cost
    assert dict(got) == dict(want)


# --- the whole flow -------------------------------------------------------------------------------


def test_a_slow_judge_holds_the_judge_spend_windows_in_a_replay(kafka, chdb_dsn, database):
    """A backlog read far faster than the judges answer (every call takes 1.5 s; the replay reads
    minutes of event time in that while), with no lateness for judge spend: the flow has processed
    far past a minute long before its judgements come, yet every judge-spend entry goes into its
    window — none is a correction — and no verdict comes after its estimate or savings window is
    final, because the sampler and the judge owe them."""
    dropped = {step: _dropped(step) for step in ("estimates", "savings")}
    kafka.create_topic("llm-events", 4)
    produce_all(kafka.bootstrap, "llm-events", list(generate(limit=2500, bad=False)))
    with LocalEndpoint(EndpointConfig(latency=1500.0)) as endpoint:
        # (the sampler may wait no longer than the judge-side windows: none either)
        overrides = {"windows.judge_allowed_lateness_s": 0, "sampling.allowed_lateness_s": 0}
        settings = topic_flow_settings(kafka, chdb_dsn, database, endpoint, **overrides)
        run_flow(settings)
    client = connect(chdb_dsn, database)
    got = dict(
        rows(
            client,
            "SELECT kind, sum(judge_calls) FROM cost_windows FINAL "
            "WHERE category = 'judge' AND window_s = 60 AND NOT provisional GROUP BY kind",
        )
    )
    (calls,) = rows(client, "SELECT count() FROM evaluations WHERE judge_cost_usd > 0")[0]
    assert got.get("window", 0) > 100 and calls > 100
    assert got.get("correction", 0) == 0, got
    assert {step: _dropped(step) - n for step, n in dropped.items()} == {"estimates": 0, "savings": 0}
    (estimated,) = rows(client, "SELECT sum(judged) FROM quality_estimates FINAL")[0]
    assert estimated > 100


def _dropped(step: str) -> float:
    return REGISTRY.get_sample_value("judgeflow_late_records_dropped_total", {"step": step}) or 0.0
