"""The OTLP join with Kafka input gives the same events in every run: whatever the interleaving of
the partitions, the batches, how far the flow has processed when the join looks, or a crash and
resume from any snapshot. And what it holds it seals (`operators.owed.JOINED`): no call it sends
on later is earlier than what it said it held at the last epoch's end."""

from __future__ import annotations

import random

import clickhouse_connect
import msgspec
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from opentelemetry.exporter.otlp.proto.common._log_encoder import encode_logs
from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans

from core.records import Event, Source
from operators.otlp import OtlpCall, OtlpContent
from operators.otlp_join import _JoinLogic
from operators.owed import OwedWork
from simulators.chdb_http import start_chdb_http
from simulators.kafka_mock import produce_all
from sinks.clickhouse import connect, ensure_schema
from tests.conftest import job_env, rows, run_flow, topic_flow_settings
from tests.test_otlp_join import CALL_MAX_MS, T0, WAIT_MS, event
from tests.test_otlp_join import instrumented as instrumented  # a fixture
from tests.test_recovery import (
    count,
    crash_differences,
    judge_minutes_unexplained,
    judgeflow_run,
    kill_twice_then_finish,
    tables,
)

Item = OtlpCall | OtlpContent


class _Processed:
    """Kafka input whose processed position the test sets."""

    def __init__(self) -> None:
        self.at: int | None = -1

    def has_input(self) -> bool:
        return True

    def processed_ms(self) -> int | None:
        return self.at


# one call: (partition of the span, of the prompt record, of the answer record, of a details event or
# -1, span has content, call length s, span / prompt / answer / details read this many s after written)
_call = st.tuples(
    st.integers(0, 2),
    st.integers(0, 2),
    st.integers(0, 2),
    st.integers(-1, 2),
    st.booleans(),
    st.integers(0, 40),
    st.tuples(st.integers(0, 12), st.integers(0, 12), st.integers(0, 12), st.integers(0, 12)),
)


def _partitions(calls: list[tuple], gaps: list[int]) -> list[list[Item]]:
    """Each call's span and log records, in the partitions they were written to, in the order of
    their Kafka time, each tagged with where its partition stood (the previous message's time)."""
    written: list[list[tuple[int, int, Item]]] = [[], [], []]
    start = T0
    for i, (p_span, p_prompt, p_answer, p_details, content, length_s, late) in enumerate(calls):
        start += gaps[i % len(gaps)] * 1000
        end = start + length_s * 1000
        key = f"s{i}"
        text = ("user: q", "a") if content else ("", "")
        span = OtlpCall(key, end, event(key, start, *text), content)
        prompt = OtlpContent(key, start, (start * 1_000_000, 0, 0, 0), "user", f"q{i}")
        answer = OtlpContent(key, end, (end * 1_000_000, 0, 0, 1), "assistant", f"a{i}", 0)
        items: list[tuple[int, int, Item]] = [
            (p_span, end + late[0] * 1000, span),
            (p_prompt, start + late[1] * 1000, prompt),
            (p_answer, end + late[2] * 1000, answer),
        ]
        if p_details >= 0:
            details = event("log:" + key, end, f"user: q{i}", f"a{i}")
            items.append(
                (p_details, end + late[3] * 1000, OtlpContent(key, end, (end, 0, 0, 2), call=details))
            )
        for partition, kafka_ms, item in items:
            written[partition].append((kafka_ms, i, item))
    out: list[list[Item]] = []
    for partition, messages in enumerate(written):
        messages.sort(key=lambda m: (m[0], m[1]))
        tagged: list[Item] = []
        before: int | None = None
        for offset, (kafka_ms, _, item) in enumerate(messages):
            source = Source("otlp", partition, offset, before)
            if isinstance(item, OtlpCall):
                item = msgspec.structs.replace(item, event=msgspec.structs.replace(item.event, source=source))
            else:
                item = msgspec.structs.replace(item, source=source)
            tagged.append(item)
            before = kafka_ms if before is None else max(before, kafka_ms)
        out.append(tagged)
    return out


def _got(events: list[Event]) -> list[tuple[str, str, str]]:
    return sorted((e.event_id, e.input_text, e.output_text) for e in events)


def _logic(progress: _Processed, joined: OwedWork, resume=None) -> _JoinLogic:
    return _JoinLogic(WAIT_MS, lambda: 0.0, resume, call_max_ms=CALL_MAX_MS, progress=progress, joined=joined)


def _emitted(got) -> list[Event]:
    return [e for batch in got[0] for e in batch]


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    calls=st.lists(_call, min_size=1, max_size=12),
    gaps=st.lists(st.integers(0, 20), min_size=1, max_size=5),
    steps=st.lists(st.tuples(st.integers(0, 2), st.integers(1, 4), st.integers(0, 3)), max_size=60),
)
@example(  # a 30-s call whose prompt is read in another partition 20 s before its span
    calls=[(0, 1, 0, -1, False, 30, (1, 0, 1, 0)), (1, 1, 1, -1, True, 0, (0, 0, 0, 0))],
    gaps=[20],
    steps=[(1, 2, 3), (0, 1, 0), (0, 2, 3)],
)
def test_the_join_gives_the_same_events_whatever_the_interleaving_the_progress_or_a_crash(
    calls: list[tuple], gaps: list[int], steps: list[tuple[int, int, int]]
) -> None:
    """One run takes every item at once and then ends; the other delivers the partitions' items
    interleaved in `steps` (partition, how many, what then: 0 nothing, 1 the flow's processed position
    moves as far as it may, 2 a wake-up after that, 3 an epoch's end and a crash resumed from its
    snapshot), then the rest, and ends."""
    parts = _partitions(calls, gaps)
    everything = [x for p in parts for x in p]
    progress, joined = _Processed(), OwedWork()
    whole = _logic(progress, joined)
    expected = _got([*_emitted(whole.on_batch([everything])), *_emitted(whole.on_eof())])

    progress, joined = _Processed(), OwedWork()
    join = _logic(progress, joined)
    sent: list[Event] = []
    delivered: set[str] = set()  # ids of the calls whose span or details event the join has been given
    held_at_snapshot: int | None = None
    held_ids: set[str] = set()
    queues = [list(p) for p in parts]

    def bound() -> int | None:
        """How far the flow may have processed: every item read before it is delivered."""
        nexts = [q[0] for q in queues if q]
        if not nexts:
            return None
        ats = [_source(x).after_ms for x in nexts]
        return -1 if any(a is None for a in ats) else min(a for a in ats if a is not None)

    def emit(got) -> None:
        for e in _emitted(got):
            if e.event_id in held_ids:  # given before the last epoch's end, sent on after it
                assert held_at_snapshot is not None and e.ts_ms >= held_at_snapshot
            sent.append(e)

    for partition, n, then in steps:
        batch, queues[partition] = queues[partition][:n], queues[partition][n:]
        delivered.update(_call_id(x) for x in batch if _call_id(x))
        emit(join.on_batch([batch]))
        if then >= 1:
            progress.at = bound()
            emit(join.on_batch([]))
        if then >= 2:
            emit(join.on_notify())
        if then == 3:
            state = join.snapshot()  # (it seals what it holds)
            held_at_snapshot, held_ids = join._held_ms(), delivered - {e.event_id for e in sent}
            join = _logic(progress, joined, resume=state)
    emit(join.on_batch([[x for q in queues for x in q]]))
    progress.at = None
    emit(join.on_eof())
    assert _got(sent) == expected


def _source(x: Item) -> Source:
    source = x.event.source if isinstance(x, OtlpCall) else x.source
    assert source is not None
    return source


def _call_id(x: Item) -> str | None:
    if isinstance(x, OtlpCall):
        return x.event.event_id
    return x.call.event_id if x.call is not None else None


# --- the whole flow --------------------------------------------------------------------------


def _otlp_topic(instrumented, endpoint, calls: int) -> list[tuple[bytes, bytes, int]]:
    """`calls` copies of a real instrumented call (the OpenAI instrumentation's span without
    content, its prompt's and its answer's log records), each with its own ids, a start every 0-6 s
    and a length of 0-40 s, written the way the SDK exports them: the prompt's records about a
    second after the call starts, the answer's about a second after it ends, the span 1-5 s after
    it ends — keyed by span id (records) and trace id (span), so they land in different partitions."""
    from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceRequest
    from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

    from tests.test_otlp_join import instrumented_calls

    instrumented_calls(instrumented, endpoint)
    spans, logs = instrumented
    first = spans.get_finished_spans()[0]
    records = [r for r in logs.get_finished_logs() if r.log_record.span_id == first.context.span_id]
    span_template = encode_spans([first])
    logs_template = encode_logs(records)
    rng = random.Random(5)
    start_ns = T0 * 1_000_000
    out: list[tuple[bytes, bytes, int]] = []
    for i in range(calls):
        start_ns += rng.randint(0, 6_000) * 1_000_000
        end_ns = start_ns + rng.randint(200, 40_000) * 1_000_000
        trace_id, span_id = (i + 1).to_bytes(16, "big"), (i + 1).to_bytes(8, "big")
        span = ExportTraceServiceRequest()
        span.CopyFrom(span_template)
        s = span.resource_spans[0].scope_spans[0].spans[0]
        s.trace_id, s.span_id = trace_id, span_id
        s.start_time_unix_nano, s.end_time_unix_nano = start_ns, end_ns
        out.append(
            (
                trace_id.hex().encode(),
                span.SerializeToString(),
                end_ns // 1_000_000 + rng.randint(1_000, 5_000),
            )
        )
        for answer in (False, True):
            part = ExportLogsServiceRequest()
            part.CopyFrom(logs_template)
            kept = part.resource_logs[0].scope_logs[0].log_records
            for j in reversed(range(len(kept))):
                if (kept[j].event_name == "gen_ai.choice") != answer:
                    del kept[j]
            at_ns = end_ns if answer else start_ns
            for r in kept:
                r.trace_id, r.span_id = trace_id, span_id
                r.time_unix_nano = r.observed_time_unix_nano = at_ns
            exported = at_ns // 1_000_000 + rng.randint(500, 1_500)
            out.append((span_id.hex().encode(), part.SerializeToString(), exported))
    return sorted(out, key=lambda m: m[2])


@pytest.mark.slow
@pytest.mark.parametrize("wait_s", [5.0, 1.0])
def test_otlp_calls_give_the_same_tables_whatever_the_batches_or_the_workers(
    instrumented, kafka, chdb_dsn, judge_endpoint, wait_s
) -> None:
    """With the default wait every call is joined; with a 1-s wait some records come too late for
    their span (they are read up to 1.5 s after its end, the span up to 5 s), and which ones is the
    same in every run."""
    kafka.create_topic("llm-events", 3)
    produce_all(kafka.bootstrap, "llm-events", _otlp_topic(instrumented, judge_endpoint, 150))
    results = {}
    for name, batch, workers in (("clean", 1000, 1), ("batch 3, 2 workers", 3, 2)):
        db = "otlp_" + name.split()[0]
        client = connect(chdb_dsn, db)
        ensure_schema(client, db)
        overrides = {
            "kafka.batch_size": batch,
            "clickhouse.store_text": True,
            "sampling.base_rate": 0.5,
            "otlp.join_wait_s": wait_s,
        }
        run_flow(topic_flow_settings(kafka, chdb_dsn, db, judge_endpoint, **overrides), workers=workers)
        results[name] = {
            **tables(client),
            "text": set(rows(client, "SELECT event_id, input_text, output_text FROM llm_events FINAL")),
        }
    want = results["clean"]
    assert len(want["llm_events"]) == 150 and want["evaluations"]
    joined = sum(1 for _, prompt, answer in want["text"] if prompt and answer)
    assert joined == 150 if wait_s == 5.0 else 0 < joined < 150
    got = results["batch 3, 2 workers"]
    assert {t: (len(got[t] - want[t]), len(want[t] - got[t])) for t in want} == dict.fromkeys(want, (0, 0))


@pytest.mark.slow
def test_otlp_calls_killed_twice_and_resumed_write_what_a_clean_run_writes(
    instrumented, kafka, judge_endpoint, tmp_path
) -> None:
    """`judgeflow run` on OTLP spans whose content comes apart, SIGKILLed twice while spans wait in
    the join, resumed from its snapshots: the same tables as a clean run, and judge spend minute by
    minute equal to the evaluations'. Every call has the same text, so one event pays for the judge
    call and the others share it, and after a crash (the in-process cache died) another event can pay:
    every judged event writes a judge-spend entry (with no calls when it paid nothing), so the minutes
    written before the crash are written again."""
    kafka.create_topic("llm-events", 3)
    calls = 3000
    produce_all(kafka.bootstrap, "llm-events", _otlp_topic(instrumented, judge_endpoint, calls))
    database = "judgeflow"  # the example config's; each ClickHouse here is private to one run

    with start_chdb_http(tmp_path / "clean_chdb") as url:
        clean = judgeflow_run(tmp_path / "clean_recovery", job_env(kafka, url, judge_endpoint))
        _, err = clean.communicate(timeout=300)
        assert clean.returncode == 0, err.decode()[-3000:]
        want = tables(_client(url, database))
    with start_chdb_http(tmp_path / "chdb") as url:
        kill_twice_then_finish(
            url, job_env(kafka, url, judge_endpoint), tmp_path / "recovery", database, (300, 1500), calls
        )
        client = _client(url, database)
        assert count(client, "llm_events") == calls
        assert crash_differences(tables(client), want) == {}
        assert judge_minutes_unexplained(client) == []
    assert len(want["llm_events"]) == calls and want["evaluations"]


def _client(url: str, database: str):
    host, port = url.removeprefix("http://").split(":")
    return clickhouse_connect.get_client(host=host, port=int(port), database=database)
