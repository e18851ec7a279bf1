"""otlp_join: the prompt and completion of an OTLP span from the log records of the same span.

The OpenAI instrumentation on its default (older) semantic conventions puts
no content on the chat span: each message is a log record of its own
(`gen_ai.{system,user,assistant,tool}.message`, `gen_ai.choice`), and newer
versions may send a `gen_ai.client.inference.operation.details` event beside
a content-less span. Both carry the span's trace and span id. Without this
stage such calls are priced but can never be judged (no text).

Spans and log records are sharded by a hash of their span id (`shards` keys dealt round robin
over every worker, one item per batch and shard crossing workers). Per span:

- a span with content goes on at once;
- a span without content waits until a details event of its span arrives
  (its content is filled in at once) or until the join's clock passes the
  span's bound, `wait_s` past it; then it goes on with the messages collected
  so far (input messages in the order they were written, the choices by
  index), or without content when none came (`outcome="no_content"`);
- log records that come before their span wait for it: a details event
  (written as the call ends) until `wait_s` past it, then it goes on as its
  own event (`details_alone`), as it did before this stage existed; a message
  record until `call_max_s + wait_s` past it, because the instrumentation
  writes the prompt's records as the call *starts* and the span only as it
  ends (a 30-s call's span comes 30 s after its prompt). Message records
  whose span never comes are dropped and counted (`unmatched_logs`) — they
  carry no usage, so nothing is lost from the ledger; records of a span
  already sent on are dropped and counted (`late_logs`), so a details event
  never counts a call twice; nor does a span that comes after its details
  event went on alone (`late_span`).

The clock, with Kafka input: *where the partitions stood* (`Source.after_ms`,
`operators.event_time`). A shard takes its items in, one by one, in the order
of where their partition stood when each was read (then by message and place
in it), and only once the flow has processed every partition up to there
(`event_time.INPUT.processed_ms`): by then nothing read before it can still be
on its way. An item is "at" that position, and a bound is that far past it.
The first message the flow reads from a partition stood nowhere before it (it
is taken in at once): its bounds count from its own Kafka time instead
(`OtlpCall.first_read_ms`), which is no earlier than where the records of its
calls in other partitions, written with it, stood.
So every run — batches, workers, processes, a crash and resume, a replay —
takes the same items in the same order at the same clock and joins them the
same way, whatever the interleaving of partitions or the judges' latency.
`wait_s` is then how far (in Kafka message time) a span's records may be read
after or before it. The price: every OTLP item waits until the flow has
processed its position, one epoch (`--snapshot-s`) or so.

What the join holds, the stages after it wait for: each shard seals, at every
epoch's end, the earliest event time it still holds (`operators.owed.JOINED`),
and those stages take a window as complete only once that has passed
(`operators.owed.arrived_ms`), so a held call is never decided without.

Without Kafka input (tests, benchmarks) the clock is the newest span end / log
time the shard has seen plus the wall time elapsed since, and items are taken
in as they come. The end of a bounded input sends every waiting span on. The
waiting spans and records are in the recovery snapshot.
"""

from __future__ import annotations

import heapq
import itertools
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Protocol

import bytewax.operators as op
import msgspec
import xxhash
from bytewax.dataflow import Stream, operator
from bytewax.operators import StatefulBatchLogic

from core import metrics
from core.records import Event, Source
from operators import event_time, owed
from operators.otlp import OtlpCall, OtlpContent
from operators.routing import spread_keys

Item = OtlpCall | OtlpContent
_Where = tuple[int, str, int, int, str, int]  # (partition's position, topic, partition, offset, span, place)


@dataclass
class _JoinState:
    newest_ms: int = -1  # the newest span end / log time this shard has seen (without Kafka input)
    seen_at_s: float = 0.0  # wall time when it moved (live progress counts from there)
    calls: dict[str, OtlpCall] = field(default_factory=dict)  # spans waiting for content
    parts: dict[str, list[OtlpContent]] = field(default_factory=dict)  # log records waiting
    due: dict[str, int] = field(default_factory=dict)  # span key -> event time it is settled at
    done: dict[str, int] = field(default_factory=dict)  # span keys sent on -> event time to forget them
    alone: set[str] = field(default_factory=set)  # keys in `done` whose details event went on alone
    # (time, key) heaps over `due` and `done`; an entry whose time no longer matches is stale
    due_heap: list[tuple[int, str]] = field(default_factory=list)
    done_heap: list[tuple[int, str]] = field(default_factory=list)
    # Kafka input: items not taken in yet, a heap by where they were read
    pending: list[tuple[_Where, int, Item]] = field(default_factory=list)
    pushed: int = 0  # items ever put on `pending` (a tie-break that is never needed between two items)


class _Progress(Protocol):
    def has_input(self) -> bool: ...

    def processed_ms(self) -> int | None: ...


class _JoinLogic(StatefulBatchLogic[list[Item], list[Event], _JoinState]):
    def __init__(
        self,
        wait_ms: int,
        clock: Callable[[], float],
        resume: _JoinState | None,
        *,
        call_max_ms: int,
        progress: _Progress = event_time.INPUT,
        joined: owed.OwedWork = owed.JOINED,
    ) -> None:
        self._wait = wait_ms
        self._call_max = call_max_ms
        self._clock = clock
        self._progress = progress
        self._joined = joined
        self._owed = joined.key()
        self._s = resume if resume is not None else _JoinState()
        if resume is not None:
            resume.seen_at_s = clock()  # the downtime is not event-time progress
            if not hasattr(resume, "pending"):  # a snapshot from before items waited for their position
                resume.pending, resume.pushed = [], 0
            if not hasattr(resume, "alone"):
                resume.alone = set()
            joined.seal(self._owed, self._held_ms())  # what it held is held from the start

    def on_batch(self, values: list[list[Item]]) -> tuple[Iterable[list[Event]], bool]:
        s = self._s
        out: list[Event] = []
        if self._progress.has_input():
            for x in itertools.chain.from_iterable(values):
                heapq.heappush(s.pending, (_where(x), s.pushed, x))
                s.pushed += 1
            self._take_in(out)
            return [out] if out else [], StatefulBatchLogic.RETAIN
        live_ms = self._now_ms()  # live wall time counts once per batch
        moved = False
        # item by item, settling after each: the same messages give the same events however batched
        for x in itertools.chain.from_iterable(values):
            at = x.end_ms if isinstance(x, OtlpCall) else x.ts_ms
            if at > s.newest_ms:
                s.newest_ms, moved = at, True
            self._take(x, out)
            self._settle(max(s.newest_ms, live_ms), out)
        if moved:
            s.seen_at_s = self._clock()
        return [out] if out else [], StatefulBatchLogic.RETAIN

    def on_notify(self) -> tuple[Iterable[list[Event]], bool]:
        out: list[Event] = []
        if self._progress.has_input():
            self._take_in(out)
        else:
            self._settle(self._now_ms(), out)
        return [out] if out else [], StatefulBatchLogic.RETAIN

    def on_eof(self) -> tuple[Iterable[list[Event]], bool]:
        # the end of a bounded input: nothing more can come for the waiting spans
        out: list[Event] = []
        self._take_in(out, everything=True)
        self._settle(None, out)
        return [out] if out else [], StatefulBatchLogic.RETAIN

    def notify_at(self) -> datetime | None:
        s = self._s
        first = self._next_due()
        if self._progress.has_input():
            if first is None and not s.pending:
                return None
            now = self._clock()  # look again as the flow's processed position moves
            return datetime.fromtimestamp(event_time.wake_at(now, now), tz=UTC)
        if first is None:
            return None
        wait_s = (first - s.newest_ms) / 1000
        at = event_time.wake_at(s.seen_at_s + max(wait_s, 0.0), self._clock())
        return datetime.fromtimestamp(at, tz=UTC)

    def snapshot(self) -> _JoinState:
        s = self._s
        self._joined.seal(self._owed, self._held_ms())
        return _JoinState(
            newest_ms=s.newest_ms,
            seen_at_s=s.seen_at_s,
            calls=dict(s.calls),
            parts={k: list(v) for k, v in s.parts.items()},
            due=dict(s.due),
            done=dict(s.done),
            alone=set(s.alone),
            due_heap=list(s.due_heap),
            done_heap=list(s.done_heap),
            pending=list(s.pending),
            pushed=s.pushed,
        )

    def _held_ms(self) -> int | None:
        """The earliest event time of a call this shard has not sent on yet (None: none)."""
        s = self._s
        held = [x.event.ts_ms for x in s.calls.values()]
        held += [p.call.ts_ms for ps in s.parts.values() for p in ps if p.call is not None]
        for _, _, x in s.pending:
            if isinstance(x, OtlpCall):
                held.append(x.event.ts_ms)
            elif x.call is not None:
                held.append(x.call.ts_ms)
        return min(held, default=None)

    def _now_ms(self) -> int:
        s = self._s
        return s.newest_ms + int(event_time.elapsed_s(s.seen_at_s, self._clock()) * 1000)

    def _take_in(self, out: list[Event], *, everything: bool = False) -> None:
        """Kafka input: take in, in order, the items read before where the flow has processed every
        partition (all of them: the end of the input); the clock is where each was read, then that."""
        s = self._s
        upto = None if everything else self._progress.processed_ms()  # None: every partition is done
        while s.pending and (upto is None or s.pending[0][0][0] < upto):
            where, _, x = heapq.heappop(s.pending)
            self._settle(where[0], out)  # the bounds that had passed where it was read
            self._take(x, out)
        self._settle(upto, out)

    def _take(self, x: Item, out: list[Event]) -> None:
        if isinstance(x, OtlpCall):
            self._call(x, out)
        else:
            self._content(x, out)

    def _call(self, c: OtlpCall, out: list[Event]) -> None:
        s = self._s
        key = c.span_key
        if key in s.done:
            if key in s.alone:  # its details event went on alone with the same call: never twice
                metrics.OTLP_JOIN.labels("late_span").inc()
            else:  # the same span again (a re-delivery): the redelivery stage decides
                out.append(c.event)
            return
        at = _at(c.event.source, c.end_ms, c.first_read_ms)
        details = next((p.call for p in s.parts.get(key, ()) if p.call is not None), None)
        if c.has_content or details is not None:
            if details is not None and not c.has_content:
                metrics.OTLP_JOIN.labels("joined").inc()
                out.append(_filled(c.event, details.input_text, details.output_text))
            else:
                out.append(c.event)
            self._finish(key, at)
            return
        s.calls[key] = c
        # every record of the span is written by its end: a message record's longer wait ends here
        self._wait_until(key, at + self._wait)

    def _content(self, p: OtlpContent, out: list[Event]) -> None:
        s = self._s
        key = p.span_key
        if key in s.done:
            metrics.OTLP_JOIN.labels("late_logs").inc()
            return
        call = s.calls.get(key)
        if call is not None and p.call is not None:
            metrics.OTLP_JOIN.labels("joined").inc()
            out.append(_filled(call.event, p.call.input_text, p.call.output_text))
            self._finish(key, _at(call.event.source, call.end_ms, call.first_read_ms))
            return
        s.parts.setdefault(key, []).append(p)
        if call is None:  # no span yet: wait for it, from the earliest record's bound
            # a message record may be the prompt, written as the call started
            wait = self._wait + (self._call_max if p.call is None else 0)
            bound = _at(p.source, p.ts_ms, p.first_read_ms) + wait
            self._wait_until(key, min(s.due.get(key, bound), bound))

    def _wait_until(self, key: str, due_ms: int) -> None:
        s = self._s
        if s.due.get(key) != due_ms:
            s.due[key] = due_ms
            heapq.heappush(s.due_heap, (due_ms, key))

    def _next_due(self) -> int | None:
        s = self._s
        while s.due_heap and s.due.get(s.due_heap[0][1]) != s.due_heap[0][0]:
            heapq.heappop(s.due_heap)  # settled or moved since
        return s.due_heap[0][0] if s.due_heap else None

    def _finish(self, key: str, at_ms: int, *, alone: bool = False) -> None:
        """The span's call went on (`alone`: as its details event): what comes of it later is late."""
        s = self._s
        s.calls.pop(key, None)
        s.due.pop(key, None)
        s.parts.pop(key, None)  # records of a span that had its content add nothing
        until = max(at_ms, s.newest_ms) + self._wait
        s.done[key] = until
        if alone:
            s.alone.add(key)
        heapq.heappush(s.done_heap, (until, key))

    def _settle(self, now_ms: int | None, out: list[Event]) -> None:
        """Send on every span (and give up on every log record) whose bound passed; None: all."""
        s = self._s
        while (first := self._next_due()) is not None and (now_ms is None or first <= now_ms):
            _, key = heapq.heappop(s.due_heap)
            call = s.calls.get(key)
            parts = s.parts.get(key, [])
            if call is not None:
                # without content capture the instrumentation still writes the records, empty
                messages = [p for p in parts if p.call is None and p.text]
                metrics.OTLP_JOIN.labels("joined" if messages else "no_content").inc()
                out.append(_assembled(call.event, messages) if messages else call.event)
                self._finish(key, first)
                continue
            details = [p.call for p in parts if p.call is not None]
            if details:
                metrics.OTLP_JOIN.labels("details_alone").inc()
                out.append(min(details, key=lambda e: e.event_id))
            if len(parts) > len(details):
                metrics.OTLP_JOIN.labels("unmatched_logs").inc(len(parts) - len(details))
            self._finish(key, first, alone=bool(details))
        while now_ms is not None and s.done_heap and s.done_heap[0][0] <= now_ms:
            until, key = heapq.heappop(s.done_heap)
            if s.done.get(key) == until:
                del s.done[key]
                s.alone.discard(key)


def _assembled(e: Event, messages: list[OtlpContent]) -> Event:
    """The span's event with the text of its message log records."""
    ordered = sorted(messages, key=lambda p: p.order)
    inputs = "\n".join(f"{p.role}: {p.text}" for p in ordered if p.choice < 0)
    choices = sorted((p for p in ordered if p.choice >= 0), key=lambda p: p.choice)
    return _filled(e, inputs, "\n".join(p.text for p in choices))


def _filled(e: Event, input_text: str, output_text: str) -> Event:
    return msgspec.structs.replace(e, input_text=input_text, output_text=output_text)


def _at(source: Source | None, own_ms: int, first_read_ms: int | None) -> int:
    """Where an item's bounds count from: its own time (a span's end, a record's time), or where its
    partition stood when it was read if that was later (a message can be read long after it was
    written; where the partition stood before it says nothing of a sparse partition's next one). The
    first message read from a partition stood nowhere before it: its own Kafka time stands in."""
    stood = source.after_ms if source is not None else None
    if stood is None:
        stood = first_read_ms
    return own_ms if stood is None else max(own_ms, stood)


def _where(x: Item) -> _Where:
    """Where an item was read, as a total order: its partition's position, then its message and place."""
    source, place = (x.event.source, -1) if isinstance(x, OtlpCall) else (x.source, x.order[3])
    if source is None:
        return (-1, "", -1, -1, x.span_key, place)
    at = -1 if source.after_ms is None else source.after_ms
    return (at, source.topic, source.partition, source.offset, x.span_key, place)


@operator
def join_otlp_content(
    step_id: str,
    up: Stream[Item],
    *,
    wait_s: float,
    call_max_s: float,
    shards: int = 16,
    clock: Callable[[], float] = time.time,
) -> Stream[Event]:
    """Spans from `up` as events, with the content of their log records filled in (module docstring)."""
    wait_ms = int(wait_s * 1000)
    keys = spread_keys(shards)  # dealt round robin over the workers (the keys changed once: upgrade notes)

    def group_batch(items: list[Item]) -> Iterable[tuple[str, list[Item]]]:
        groups: dict[int, list[Item]] = {}
        for x in items:
            groups.setdefault(xxhash.xxh3_64_intdigest(x.span_key.encode()) % shards, []).append(x)
        return [(keys[shard], group) for shard, group in groups.items()]

    keyed = op.flat_map_batch("shard", up, group_batch)
    call_max_ms = int(call_max_s * 1000)
    joined = op.stateful_batch(
        "join", keyed, lambda resume: _JoinLogic(wait_ms, clock, resume, call_max_ms=call_max_ms)
    )
    return op.flat_map_batch(
        "events", joined, lambda kvs: list(itertools.chain.from_iterable(v for _, v in kvs))
    )
