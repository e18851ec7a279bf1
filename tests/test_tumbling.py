"""The shared tumbling windows' state: which windows are final, kept as bits (one per window for
a day behind the watermark) with the same answers as the set of starts it replaced; and snapshots
that copy only what the next batch could change, yet stay what they were after it."""

from __future__ import annotations

import pickle
import random
from copy import deepcopy

import msgspec
import pytest
from prometheus_client import REGISTRY

from core.records import Evaluation, Event, SavingsEntry
from operators import abuse, estimates, event_time, savings
from operators.sample_design import StratumCount
from operators.tumbling import FinalWindows, _Spec, _TumblingLogic, _TumblingState
from tests.test_abuse import MIN, NORMALIZE, T0, event

DAY = 1440 * MIN


# --- FinalWindows ---------------------------------------------------------------------


def test_membership_add_below_the_base_and_forgetting():
    final = FinalWindows(MIN)
    assert T0 not in final and len(final) == 0
    final.add(T0 + 5 * MIN)
    final.add(T0 + 7 * MIN)
    final.add(T0 + 2 * MIN)  # below the base: rebased
    assert list(final) == [T0 + 2 * MIN, T0 + 5 * MIN, T0 + 7 * MIN]
    assert [m for m in range(-3, 10) if T0 + m * MIN in final] == [2, 5, 7]
    assert T0 + 5 * MIN + 1 not in final  # not a window start
    final.forget_before(T0 + 5 * MIN)  # keeps the window starting at the cut
    assert list(final) == [T0 + 5 * MIN, T0 + 7 * MIN]
    final.forget_before(T0 + 5 * MIN + 1)  # between two windows
    assert list(final) == [T0 + 7 * MIN] and final.base == T0 + 7 * MIN
    assert T0 + 5 * MIN not in final and T0 + 7 * MIN in final
    final.forget_before(T0 + DAY)
    assert list(final) == [] and T0 + 7 * MIN not in final
    final.add(T0 - MIN)  # empty again: starts over anywhere
    assert list(final) == [T0 - MIN]


def test_it_answers_as_the_set_of_starts_did():
    rng = random.Random(7)
    final, model = FinalWindows(MIN), set()
    for step in range(5000):
        start = T0 + rng.randrange(-50, 3000) * MIN
        final.add(start)
        model.add(start)
        if step % 17 == 0:
            cut = T0 + rng.randrange(-60, 3000) * MIN + rng.choice([0, 1, MIN - 1])
            final.forget_before(cut)
            model = {s for s in model if s >= cut}
        probe = T0 + rng.randrange(-60, 3010) * MIN
        assert (probe in final) == (probe in model)
    assert list(final) == sorted(model) and len(final) == len(model)


def test_a_day_of_minutes_trimmed_on_every_advance_stays_a_day_of_bits():
    final = FinalWindows(MIN)
    for m in range(10 * 1440):  # ten days, one final minute at a time
        final.add(T0 + m * MIN)
        final.forget_before(T0 + (m + 1) * MIN - DAY)
        assert final.bits.bit_length() <= 1440
    assert len(final) == 1440 and next(iter(final)) == T0 + (9 * 1440) * MIN
    assert len(pickle.dumps(final)) < 400  # a set of the same starts: ~13 KB


def test_it_pickles_and_keeps_working():
    final = FinalWindows(MIN)
    for m in (3, 1, 8):
        final.add(T0 + m * MIN)
    back = pickle.loads(pickle.dumps(final))
    assert back == final and list(back) == [T0 + MIN, T0 + 3 * MIN, T0 + 8 * MIN]
    back.add(T0)
    back.forget_before(T0 + 2 * MIN)
    assert list(back) == [T0 + 3 * MIN, T0 + 8 * MIN]
    assert list(final) == [T0 + MIN, T0 + 3 * MIN, T0 + 8 * MIN]  # a copy, not a view


def test_a_start_off_the_grid_is_a_bug():
    final = FinalWindows(MIN)
    final.add(T0)
    with pytest.raises(ValueError, match="not on the 60000 ms grid"):
        final.add(T0 + 1)


# --- the logic ------------------------------------------------------------------------


def counting_spec(step_id: str, now: list[float]) -> _Spec:
    return _Spec(
        step_id=step_id,
        key_of=lambda x: "k",
        size_ms=MIN,
        lateness_ms=0,
        idle_s=0.0,
        ts_of=lambda x: x,
        new=list,
        fold=lambda acc, x: acc.append(x),
        rows=lambda key, start, acc, version: [(start, len(acc))],
        clock=lambda: now[0],
    )


def dropped(step_id: str) -> float:
    return REGISTRY.get_sample_value("judgeflow_late_records_dropped_total", {"step": step_id}) or 0


def test_final_windows_are_remembered_for_a_day_of_event_time_then_forgotten():
    now = [1000.0]
    logic = _TumblingLogic(counting_spec("t_horizon", now), None)
    assert list(logic.on_batch([T0 + 1, T0 + 2 * MIN])[0]) == [(T0, 1)]
    before = dropped("t_horizon")
    assert list(logic.on_batch([T0 + 2, T0 + 3 * MIN])[0]) == [(T0 + 2 * MIN, 1)]
    assert dropped("t_horizon") == before + 1  # minute 0 is final
    logic.on_batch([T0 + DAY])
    assert list(logic._s.final) == [T0, T0 + 2 * MIN, T0 + 3 * MIN]  # a day to the millisecond: kept
    logic.on_batch([T0 + DAY + 1])  # its day has passed: forgotten, a record for it opens it again
    assert list(logic._s.final) == [T0 + 2 * MIN, T0 + 3 * MIN]
    assert list(logic.on_batch([T0 + 3])[0]) == [(T0, 1)]  # reported again, not counted as dropped
    assert dropped("t_horizon") == before + 1
    assert list(logic._s.final) == [T0 + 2 * MIN, T0 + 3 * MIN]  # and not remembered again


def test_the_wake_up_is_the_earliest_time_a_window_is_due():
    """Due: a window not reported (or changed since) when the watermark passes its end; a reported one
    when the watermark passes its end plus the lateness and it has been idle for `idle_s` — with Kafka
    input then, or when that has passed, 30 s to 5 min from now (`event_time.forget_wake`)."""
    rnd = random.Random(7)
    now = [0.0]
    for _ in range(300):
        now[0] = 1000.0 + rnd.random() * 100
        spec = _Spec(
            step_id="t_wake",
            key_of=lambda x: "k",
            size_ms=MIN,
            lateness_ms=rnd.choice((0, 5 * MIN)),
            idle_s=rnd.choice((0.0, 30.0, 300.0)),
            ts_of=lambda x: x,
            new=list,
            fold=lambda acc, x: acc.append(x),
            rows=lambda key, start, acc, version: [],
            clock=lambda: now[0],
        )
        logic = _TumblingLogic(spec, None)
        s = logic._s
        s.max_ts_ms = T0 + rnd.randrange(60 * MIN)
        s.seen_at_s = now[0] - rnd.random() * 60
        for i in rnd.sample(range(60), rnd.randrange(1, 40)):
            start = T0 + i * MIN
            s.open[start] = []
            s.arrived_s[start] = now[0] - rnd.random() * 600
            if rnd.random() < 0.8:
                s.emitted.add(start)
                if rnd.random() < 0.2:
                    s.dirty.add(start)
        report, final = [], []
        for start in s.open:
            end = start + MIN
            if start not in s.emitted or start in s.dirty:
                report.append(s.seen_at_s + max(end - s.max_ts_ms, 0) / 1000)
            else:
                past_lateness = s.seen_at_s + max(end + spec.lateness_ms - s.max_ts_ms, 0) / 1000
                final.append(max(past_lateness, s.arrived_s[start] + spec.idle_s))
        logic._kafka = rnd.random() < 0.5  # with Kafka input a window waiting to be final is not urgent
        want = [event_time.wake_at(min(report), now[0])] if report else []
        if final:
            wake = event_time.forget_wake if logic._kafka else event_time.wake_at
            want.append(wake(min(final), now[0]))
        at = logic.notify_at()
        assert at is not None
        assert at.timestamp() == pytest.approx(min(want), abs=1e-6)
    s.open.clear()
    assert logic.notify_at() is None


def test_a_snapshot_pickled_and_resumed_still_drops_records_of_final_windows():
    now = [1000.0]
    spec = counting_spec("t_resume", now)
    logic = _TumblingLogic(spec, None)
    for m in range(0, 1440, 3):
        logic.on_batch([T0 + m * MIN])
    snap = pickle.loads(pickle.dumps(logic.snapshot()))
    assert len(snap.final) == 479 and snap.open.keys() == {T0 + 1437 * MIN}
    resumed = _TumblingLogic(spec, snap)
    before = dropped("t_resume")
    assert list(resumed.on_batch([T0 + 3 * MIN + 5, T0 + 4 * MIN, T0 + 1440 * MIN])[0]) == [
        (T0 + 4 * MIN, 1),  # never seen: opens, and closes at once (no lateness, no idle time)
        (T0 + 1437 * MIN, 1),
    ]
    assert dropped("t_resume") == before + 1


def test_a_snapshot_from_when_final_windows_were_a_set_resumes():
    now = [1000.0]
    spec = counting_spec("t_legacy", now)
    old = _TumblingState(final={T0, T0 + 2 * MIN}, key="k", max_ts_ms=T0 + 3 * MIN)
    logic = _TumblingLogic(spec, pickle.loads(pickle.dumps(old)))
    assert list(logic._s.final) == [T0, T0 + 2 * MIN]
    before = dropped("t_legacy")
    assert list(logic.on_batch([T0 + 2 * MIN + 1, T0 + MIN + 1])[0]) == [(T0 + MIN, 1)]
    assert dropped("t_legacy") == before + 1


# --- snapshots of the three users' accumulators ----------------------------------------


def abuse_event(i: int, ts: int, prompt: str, user: str) -> Event:
    return event(i, "acme", prompt, ts, user)


def abuse_batches() -> tuple[_Spec, list[list], list[list]]:
    def batch(*events: Event) -> list:
        return abuse.combine(events, MIN, NORMALIZE)

    spec = _Spec(
        step_id="t_snap_abuse",
        key_of=lambda p: p.tenant_id,
        size_ms=MIN,
        lateness_ms=2 * MIN,
        idle_s=0.0,
        ts_of=lambda p: p.ts_ms,
        new=abuse._Counts,
        fold=abuse.fold,
        rows=lambda key, start, acc, version: [abuse.abuse_row(key, start, MIN, acc, version)],
        clock=lambda: 1000.0,
        copy=abuse._Counts.copy,
    )
    before = [
        batch(abuse_event(0, T0, "hi", "u1"), abuse_event(1, T0 + 1, "hi", "u2")),
        batch(abuse_event(2, T0 + MIN, "yo", "u1"), abuse_event(3, T0 + 2 * MIN, "hi", "u1")),
    ]
    after = [  # the same windows' counts change, and minute 0 becomes final
        batch(abuse_event(4, T0 + 5, "hi", "u1"), abuse_event(5, T0 + MIN + 5, "new", "u3")),
        batch(abuse_event(6, T0 + 3 * MIN + 30_000, "x", "u9")),
    ]
    return spec, before, after


def evaluation(i: int, ts: int, tier: int, label: str, metric: str = "pii") -> Evaluation:
    return Evaluation(
        eval_id=f"v-{i}-{tier}",
        event_id=f"e-{i}",
        ts_ms=ts,
        tenant_id="acme",
        agent="bot",
        model="m",
        variant="baseline",
        metric=metric,
        score=1.0,
        label=label,
        explanation="",
        judge="j",
        tier=tier,
        cache_hit=False,
        inclusion_prob=0.5,
        content_hash="h",
        judge_cost_pusd=0,
        judge_latency_ms=0.0,
        stratum="s",
    )


def estimates_batches() -> tuple[_Spec, list[list], list[list]]:
    spec = _Spec(
        step_id="t_snap_estimates",
        key_of=lambda v: f"{v.tenant_id}/{v.agent}",
        size_ms=MIN,
        lateness_ms=2 * MIN,
        idle_s=0.0,
        ts_of=lambda v: v.window_start_ms if isinstance(v, StratumCount) else v.ts_ms,
        new=estimates._Acc,
        fold=lambda acc, v: estimates._fold(acc, v, MIN),
        rows=lambda key, start, acc, version: [(start, len(acc.verdicts), version)],
        clock=lambda: 1000.0,
        copy=estimates._Acc.copy,
    )
    count = StratumCount("acme", "bot", T0, "s", 10, 5, 0.5, (("pii", 2),))
    before = [
        [evaluation(0, T0 + 1, 0, "ok"), evaluation(1, T0 + 2, 0, "flagged"), count],
        [evaluation(2, T0 + MIN, 0, "ok"), evaluation(3, T0 + 2 * MIN, 0, "ok")],
    ]
    after = [  # a higher tier replaces a verdict, the same stratum counts more, minute 0 becomes final
        [evaluation(0, T0 + 1, 1, "flagged"), count, evaluation(4, T0 + MIN + 1, 0, "ok", "toxicity")],
        [evaluation(5, T0 + 3 * MIN + 30_000, 0, "ok")],
    ]
    return spec, before, after


def savings_batches() -> tuple[_Spec, list[list], list[list]]:
    def rows(key: str, start: int, acc: savings._Acc, version: int) -> list:
        assert acc.entry is not None
        row = savings.savings_row(start, MIN, acc.entry, "ref", version)
        savings._export(acc, row)  # as the operator's rows do: the exported sums live in the window
        return [row]

    spec = _Spec(
        step_id="t_snap_savings",
        key_of=lambda x: x.tenant_id,
        size_ms=MIN,
        lateness_ms=2 * MIN,
        idle_s=0.0,
        ts_of=lambda x: x.ts_ms,
        new=savings._Acc,
        fold=savings.fold,
        rows=rows,
        clock=lambda: 1000.0,
        copy=savings._Acc.copy,
    )

    def entry(ts: int, **sums: int) -> SavingsEntry:
        return SavingsEntry(tenant_id="acme", ts_ms=ts, **sums)

    before = [
        [entry(T0 + 1, events=10, baseline_calls=30, baseline_pusd=3000, judge_calls=2, judge_pusd=400)],
        [entry(T0 + MIN, events=5, baseline_calls=15, baseline_pusd=1500), entry(T0 + 2 * MIN, events=1)],
    ]
    after = [
        [entry(T0 + 5, events=4, baseline_calls=12, baseline_pusd=1200, cache_calls=1)],
        [entry(T0 + MIN + 3, judge_calls=1, judge_pusd=90), entry(T0 + 3 * MIN + 30_000, events=2)],
    ]
    return spec, before, after


@pytest.mark.parametrize("make", [abuse_batches, estimates_batches, savings_batches])
def test_a_snapshot_stays_what_it_was_while_the_windows_change(make):
    spec, before, after = make()
    logic = _TumblingLogic(spec, None)
    for b in before:
        logic.on_batch(b)
    assert len(logic._s.open) == 3 and len(logic._s.emitted) == 2  # minutes 0 and 1 reported, still open
    snap = logic.snapshot()
    assert snap == deepcopy(logic._s)  # the user's copy copies all of it
    was = deepcopy(snap)
    for b in after:
        logic.on_batch(b)
    assert logic._s.final.base == T0 and T0 not in logic._s.open  # the batches did change the state
    assert logic._s.open[T0 + MIN] != was.open[T0 + MIN]
    assert snap == was


@pytest.mark.parametrize("make", [abuse_batches, estimates_batches, savings_batches])
def test_a_run_resumed_from_a_snapshot_writes_what_an_uninterrupted_run_writes(make):
    spec, before, after = make()
    whole = _TumblingLogic(spec, None)
    want = [list(whole.on_batch(b)[0]) for b in before + after] + [list(whole.on_eof()[0])]
    first = _TumblingLogic(spec, None)
    got = [list(first.on_batch(b)[0]) for b in before]
    snap = pickle.loads(pickle.dumps(first.snapshot()))
    first.on_batch(after[0])  # the crashed run went on past the snapshot; its state must not leak
    resumed = _TumblingLogic(spec, snap)
    got += [list(resumed.on_batch(b)[0]) for b in after] + [list(resumed.on_eof()[0])]
    assert strip_versions(got) == strip_versions(want)


def strip_versions(batches: list[list]) -> list[list]:
    out = []
    for rows in batches:
        out.append([r[:-1] if isinstance(r, tuple) else _without_version(r) for r in rows])
    return out


def _without_version(row: object) -> tuple:
    return tuple(v for k, v in msgspec.structs.asdict(row).items() if k != "version")


@pytest.mark.parametrize("make", [abuse_batches, estimates_batches, savings_batches])
def test_each_snapshot_is_the_state_of_its_epoch_and_unchanged_windows_are_not_copied_again(make):
    spec, before, after = make()
    logic = _TumblingLogic(spec, None)
    snaps, was = [], []
    for b in [*before, *after]:
        logic.on_batch(b)
        snaps.append(logic.snapshot())
        assert snaps[-1] == deepcopy(logic._s)
        was.append(deepcopy(snaps[-1]))
    logic.on_eof()  # reports (and, for the savings, records what it reported in) every open window
    assert snaps == was  # no later batch, report or snapshot reached an earlier snapshot
    again = logic.snapshot()
    assert again == deepcopy(logic._s)
    quiet = logic.snapshot()  # nothing changed since: every window handed out as it was
    assert quiet.open == again.open and all(quiet.open[s] is again.open[s] for s in again.open)
    logic.on_batch(after[-1])  # one window changes: only it is copied anew
    changed = {spec.ts_of(x) - spec.ts_of(x) % MIN for x in after[-1]}
    last = logic.snapshot()
    assert last == deepcopy(logic._s)
    assert {s for s in last.open if last.open[s] is not quiet.open.get(s)} == changed


def test_a_window_is_final_only_once_the_flow_has_processed_every_partition_past_it():
    """A record that is not late by its partition's position may still be on its way until the flow has
    processed every partition past the window's end plus lateness: until then the window takes it."""
    from dataclasses import replace

    now, processed = [1000.0], [T0]
    logic = _TumblingLogic(replace(counting_spec("t_processed", now), processed=lambda: processed[0]), None)
    assert list(logic.on_batch([T0 + 1, T0 + 2 * MIN])[0]) == [(T0, 1)]
    before = dropped("t_processed")
    assert list(logic.on_batch([T0 + 2])[0]) == [(T0, 2)]  # past the watermark, not past the flow: counted
    processed[0] = T0 + 3 * MIN
    logic.on_batch([T0 + 3 * MIN])  # final now
    assert list(logic.on_batch([T0 + 3])[0]) == []
    assert dropped("t_processed") == before + 1


def test_a_record_late_by_its_position_is_dropped_even_while_its_window_is_open():
    """Whether a window is still open when a late record comes depends on timing; where its event's
    partition stood does not: a record read when its partition had passed the window's end plus
    lateness is dropped in every run, and one read before goes in."""
    from dataclasses import replace

    now, processed = [1000.0], [T0]  # the flow holds minute 0 open
    at = {T0 + 1: None, T0 + 2: T0 + MIN - 1, T0 + 3: T0 + MIN, T0 + 4: T0 + 10 * MIN}  # ts -> after_ms
    spec = replace(counting_spec("t_position", now), processed=lambda: processed[0], after_of=at.get)
    logic = _TumblingLogic(spec, None)
    before = dropped("t_position")
    assert list(logic.on_batch([T0 + 1, T0 + 2, T0 + 3, T0 + 4, T0 + 2 * MIN])[0]) == [(T0, 2)]
    assert dropped("t_position") == before + 2


def replaying(monkeypatch: pytest.MonkeyPatch, now_s: float) -> None:
    """The process reads a Kafka backlog: one partition a day behind the wall clock (not live)."""
    progress = event_time.InputProgress()
    progress.opened("p")
    progress.polled("p", frontier_ms=T0, caught_up=False, now=now_s)
    monkeypatch.setattr(event_time, "INPUT", progress)
    assert progress.replaying()


def keys_dropped(step_id: str) -> float:
    return REGISTRY.get_sample_value("judgeflow_window_keys_dropped_total", {"step": step_id}) or 0


@pytest.mark.parametrize("drop", [False, True])
def test_in_a_kafka_replay_what_the_flow_processed_finishes_a_quiet_keys_windows(monkeypatch, drop):
    """In a replay a quiet key's own watermark stands still (wall time is not event time there). What
    the flow has processed reports its last window and makes it final, and meanwhile, its row out, the
    key looks again no sooner than `FORGET_MIN_S` — not every second until the input goes live. With
    `drop_finished` its state is dropped then; a record for its windows is late by its position and
    dropped all the same, and one for a new window opens it afresh."""
    from dataclasses import replace

    now = [T0 / 1000 + 86_400]
    replaying(monkeypatch, now[0])
    processed = [T0]
    after = {T0 + 1: T0, T0 + 2: T0, T0 + 3: T0 + 6 * MIN, T0 + 10 * MIN: T0 + 6 * MIN}  # ts -> position
    step = f"t_quiet_{drop}"
    spec = replace(
        counting_spec(step, now),
        lateness_ms=5 * MIN,
        idle_s=300.0,
        processed=lambda: processed[0],
        after_of=after.get,
        drop_finished=drop,
    )
    logic = _TumblingLogic(spec, None)
    assert logic.on_batch([T0 + 1, T0 + 2]) == ([], False)  # (RETAIN)
    now[0] += 1000.0  # wall time passes, event time does not
    processed[0] = T0 + MIN
    assert logic.on_notify() == ([(T0, 2)], False)
    now[0] += 1000.0
    at = logic.notify_at()
    assert at is not None and at.timestamp() == pytest.approx(now[0] + event_time.FORGET_MIN_S)
    before, late = keys_dropped(step), dropped(step)
    processed[0] = T0 + 6 * MIN  # past the window's end plus the lateness
    assert logic.on_notify() == ([], drop)  # final: DISCARD with drop_finished
    assert not logic._s.open and keys_dropped(step) == before + drop
    if drop:
        logic = _TumblingLogic(spec, None)  # the key's next record meets a fresh state
    else:
        assert logic.notify_at() is None
    assert logic.on_batch([T0 + 3]) == ([], drop)  # late by its position
    assert dropped(step) == late + 1
    assert logic.on_batch([T0 + 10 * MIN]) == ([], False)  # a new window opens
    assert list(logic._s.open) == [T0 + 10 * MIN]


def test_without_kafka_input_a_key_with_no_open_window_is_kept():
    """Without Kafka input lateness is the key's own watermark's: it needs the final windows it
    remembers, so it is never dropped."""
    from dataclasses import replace

    now = [1000.0]
    spec = replace(counting_spec("t_no_kafka", now), drop_finished=True)
    logic = _TumblingLogic(spec, None)
    assert logic.on_batch([T0 + 1, T0 + 2 * MIN]) == ([(T0, 1)], False)
    now[0] += 120.0
    assert logic.on_notify() == ([(T0 + 2 * MIN, 1)], False)
    assert not logic._s.open and list(logic._s.final) == [T0, T0 + 2 * MIN]


@pytest.mark.parametrize("kafka", [False, True])
def test_a_key_restored_with_no_window_open_looks_once_and_is_dropped_with_kafka_input(monkeypatch, kafka):
    """A snapshot from before keys were dropped holds keys with no window open, which ask for no wake-up:
    with `drop_finished` such a key looks once, and goes if the input is Kafka."""
    from dataclasses import replace

    now = [T0 / 1000 + 86_400]
    if kafka:
        replaying(monkeypatch, now[0])
    step = f"t_restored_{kafka}"
    spec = replace(
        counting_spec(step, now), processed=lambda: T0 + 10 * MIN if kafka else None, drop_finished=True
    )
    old = _TumblingState(FinalWindows(MIN), key="k", max_ts_ms=T0 + 2 * MIN)
    old.final.add(T0)
    logic = _TumblingLogic(spec, pickle.loads(pickle.dumps(old)))
    at = logic.notify_at()
    assert at is not None and at.timestamp() == pytest.approx(now[0])
    before = keys_dropped(step)
    assert logic.on_notify() == ([], kafka)
    assert keys_dropped(step) == before + kafka
    if not kafka:  # kept, and it has looked
        assert logic.notify_at() is None
    kept = _TumblingLogic(replace(spec, drop_finished=False), pickle.loads(pickle.dumps(old)))
    assert kept.notify_at() is None
