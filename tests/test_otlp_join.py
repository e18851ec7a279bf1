"""The OTLP content join: spans without content get the prompt and completion of their span's log
records (the official OpenAI instrumentation's default, semantic conventions 1.30), within a bound
of event time; calls whose log records never come go on without them; log records whose span
never comes are counted and dropped (a details event stands on its own). Then the whole flow with
spans and log records made by opentelemetry-instrumentation-openai-v2 around a real OpenAI client
call to the local endpoint, encoded by the SDK's OTLP protobuf encoder: the stored and judged event
has the prompt and the completion."""

from __future__ import annotations

import time

import pytest
from opentelemetry.exporter.otlp.proto.common._log_encoder import encode_logs
from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans
from opentelemetry.sdk._logs import LoggerProvider
from opentelemetry.sdk._logs.export import InMemoryLogRecordExporter, SimpleLogRecordProcessor
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from core import metrics
from core.records import Event
from operators.otlp import OtlpCall, OtlpContent
from operators.otlp_join import _JoinLogic
from simulators.kafka_mock import produce_all
from simulators.local_endpoint import EndpointConfig, LocalEndpoint
from sinks.clickhouse import connect, ensure_schema
from tests.conftest import rows, run_flow, topic_flow_settings

WAIT_MS = 5_000
CALL_MAX_MS = 60_000
T0 = 1_795_379_050_000


def event(event_id: str, ts_ms: int = T0, input_text: str = "", output_text: str = "") -> Event:
    return Event(
        event_id=event_id,
        ts_ms=ts_ms,
        tenant_id="acme",
        agent="bot",
        model="gpt-4o-mini",
        provider="openai",
        variant="baseline",
        input_text=input_text,
        output_text=output_text,
        context=None,
        input_tokens=10,
        output_tokens=5,
        cache_read_tokens=0,
        cache_write_tokens=0,
        reasoning_tokens=0,
        provided_cost_pusd=None,
        latency_ms=20.0,
        conversation_id=None,
        user_id=None,
        metadata={},
        source=None,
    )


def span(key: str, end_ms: int = T0 + 20, *, content: bool = False) -> OtlpCall:
    text = ("user: hi", "hello") if content else ("", "")
    return OtlpCall(key, end_ms, event(key, end_ms - 20, *text), content)


def msg(key: str, role: str, text: str, at_ms: int, *, choice: int = -1) -> OtlpContent:
    return OtlpContent(key, at_ms, (at_ms * 1_000_000, 0, 0, 0), role, text, choice)


def details(key: str, at_ms: int) -> OtlpContent:
    call = event("log:resp-" + key, at_ms, "user: from details", "details answer")
    return OtlpContent(key, at_ms, (at_ms * 1_000_000, 0, 0, 0), call=call)


def tick(at_ms: int) -> OtlpCall:
    """Another call on the shard, with content: moves the shard's event time."""
    return span(f"tick-{at_ms}", at_ms, content=True)


def logic(resume=None) -> _JoinLogic:
    return _JoinLogic(WAIT_MS, lambda: 0.0, resume, call_max_ms=CALL_MAX_MS)  # no wall time passes


def run(batches: list[list], resume=None, *, eof: bool = False) -> list[Event]:
    j = logic(resume)
    out: list[Event] = []
    for b in batches:
        got, _ = j.on_batch([b])
        out += [e for lst in got for e in lst]
    if eof:
        got, _ = j.on_eof()
        out += [e for lst in got for e in lst]
    return [e for e in out if not e.event_id.startswith("tick-")]


def outcome(name: str) -> float:
    return metrics.OTLP_JOIN.labels(name)._value.get()


def test_a_span_without_content_gets_its_message_log_records_once_the_bound_passed() -> None:
    before = outcome("joined")
    batches = [
        [msg("a", "system", "Be brief.", T0), msg("a", "user", "Where is my order?", T0 + 1)],
        [span("a")],
        [msg("a", "assistant", "It ships today.", T0 + 20, choice=0)],
        [tick(T0 + 20 + WAIT_MS - 1)],
    ]
    assert run(batches) == []  # still inside the bound: waiting
    (e,) = run([*batches, [tick(T0 + 20 + WAIT_MS)]])
    assert e.event_id == "a"
    assert (e.input_text, e.output_text) == ("system: Be brief.\nuser: Where is my order?", "It ships today.")
    assert (e.input_tokens, e.output_tokens) == (10, 5)  # usage is the span's
    assert outcome("joined") - before == 1


def test_messages_sort_by_their_time_and_choices_by_index_whatever_the_arrival() -> None:
    parts = [
        msg("a", "assistant", "second", T0 + 30, choice=1),
        msg("a", "user", "question", T0 + 2),
        msg("a", "assistant", "first", T0 + 31, choice=0),
        msg("a", "system", "rules", T0 + 1),
    ]
    results = set()
    for order in (parts, parts[::-1], parts[1:] + parts[:1]):
        (e,) = run([[span("a")], order, [tick(T0 + 10 * WAIT_MS)]])
        results.add((e.input_text, e.output_text))
    assert results == {("system: rules\nuser: question", "first\nsecond")}


def test_a_span_whose_logs_never_come_goes_on_without_content_after_the_bound() -> None:
    before = outcome("no_content")
    (e,) = run([[span("a")], [tick(T0 + 20 + WAIT_MS)]])
    assert (e.event_id, e.input_text, e.output_text) == ("a", "", "")
    assert outcome("no_content") - before == 1


def test_message_records_without_content_leave_the_span_without_content() -> None:
    before = outcome("no_content")  # what the instrumentation writes with content capture off
    (e,) = run(
        [[msg("a", "user", "", T0), span("a"), msg("a", "assistant", "", T0 + 20, choice=0)]], eof=True
    )
    assert (e.input_text, e.output_text) == ("", "")
    assert outcome("no_content") - before == 1


def test_a_details_event_fills_a_span_at_once_and_a_span_with_content_does_not_wait() -> None:
    assert [e.input_text for e in run([[span("a")], [details("a", T0 + 20)]])] == ["user: from details"]
    assert [e.output_text for e in run([[details("b", T0)], [span("b")]])] == ["details answer"]
    (e,) = run([[span("c", content=True)]])
    assert (e.event_id, e.output_text) == ("c", "hello")


def test_logs_whose_span_never_comes_are_counted_and_dropped_but_a_details_event_stands_alone() -> None:
    unmatched, alone = outcome("unmatched_logs"), outcome("details_alone")
    batches = [[msg("x", "user", "hi", T0), details("y", T0)], [tick(T0 + WAIT_MS)]]
    assert [e.event_id for e in run(batches)] == ["log:resp-y"]  # written as its call ended
    assert outcome("details_alone") - alone == 1
    assert outcome("unmatched_logs") == unmatched  # a prompt's record waits as long as a call may take
    run([*batches, [tick(T0 + CALL_MAX_MS + WAIT_MS - 1)]])
    assert outcome("unmatched_logs") == unmatched
    run([*batches, [tick(T0 + CALL_MAX_MS + WAIT_MS)]])
    assert outcome("unmatched_logs") - unmatched == 1


def test_a_long_calls_prompt_records_wait_for_its_span_which_is_written_when_the_call_ends() -> None:
    """The instrumentation writes the prompt's log records as the call starts and the span as it
    ends: a 40-s call's records come 40 s before its span, with other traffic in between."""
    end = T0 + 40_000
    batches = [
        [msg("a", "system", "Be brief.", T0), msg("a", "user", "Where is my order?", T0)],
        [tick(T0 + 10_000)],
        [tick(T0 + 30_000)],
        [span("a", end)],
        [msg("a", "assistant", "It ships today.", end, choice=0)],
        [tick(end + WAIT_MS - 1)],
    ]
    assert run(batches) == []
    (e,) = run([*batches, [tick(end + WAIT_MS)]])  # the span's own bound, not the prompt's
    assert (e.input_text, e.output_text) == ("system: Be brief.\nuser: Where is my order?", "It ships today.")
    # with a details event before its span, the span is filled in at once
    (e,) = run([[details("b", T0)], [tick(T0 + WAIT_MS - 1)], [span("b", T0)]])
    assert e.output_text == "details answer"
    # a details event says the call has ended: without its span it goes on alone at its own bound
    out = run([[msg("c", "user", "q", T0)], [details("c", T0 + 20_000)], [tick(T0 + 20_000 + WAIT_MS)]])
    assert [e.event_id for e in out] == ["log:resp-c"]


def test_log_records_after_their_span_went_on_are_dropped_never_a_second_event() -> None:
    before = outcome("late_logs")
    out = run([[span("a", content=True)], [details("a", T0 + 25), msg("a", "user", "late", T0 + 26)]])
    assert [e.event_id for e in out] == ["a"]
    assert outcome("late_logs") - before == 2


def test_a_span_after_its_details_event_went_on_alone_is_dropped_never_a_second_call() -> None:
    before = outcome("late_span")
    out = run([[details("a", T0)], [tick(T0 + WAIT_MS)], [span("a", T0)], [span("b", content=True)]])
    assert [e.event_id for e in out] == ["log:resp-a", "b"]  # the call of span a counts once
    assert outcome("late_span") - before == 1
    # a span that went on itself, delivered again, is left to the redelivery stage
    out = run([[span("c", content=True)], [span("c", content=True)]])
    assert [e.event_id for e in out] == ["c", "c"]


def test_the_same_records_give_the_same_events_however_they_are_batched() -> None:
    items = [
        msg("a", "user", "q-a", T0),
        span("a"),
        span("b", T0 + 1_000),
        tick(T0 + 20 + WAIT_MS),  # a's bound passes here: the answer after it comes too late
        msg("a", "assistant", "r-a", T0 + 20, choice=0),
        msg("b", "user", "q-b", T0 + 900),
        details("c", T0 + 2_000),
        msg("b", "assistant", "r-b", T0 + 1_000, choice=0),
        tick(T0 + 4 * WAIT_MS),
    ]
    one_batch = run([items])
    assert [(e.event_id, e.input_text, e.output_text) for e in one_batch] == [
        ("a", "user: q-a", ""),
        ("b", "user: q-b", "r-b"),
        ("log:resp-c", "user: from details", "details answer"),
    ]
    for size in (1, 2, 3, 4):
        assert run([items[i : i + size] for i in range(0, len(items), size)]) == one_batch


def test_the_end_of_a_bounded_input_sends_waiting_spans_on() -> None:
    j = logic()
    j.on_batch([[msg("a", "user", "hi", T0), span("a")]])
    got, _ = j.on_eof()
    ((e,),) = got
    assert (e.event_id, e.input_text) == ("a", "user: hi")
    assert j.notify_at() is None


def test_a_snapshot_and_resume_anywhere_give_the_same_events_as_one_run() -> None:
    batches = [
        [msg("a", "user", "q-a", T0), span("b")],
        [span("a"), msg("b", "user", "q-b", T0 + 5)],
        [msg("a", "assistant", "r-a", T0 + 20, choice=0), details("c", T0 + 30)],
        [tick(T0 + 3 * WAIT_MS)],
    ]
    whole = run(batches)
    assert sorted(e.event_id for e in whole) == ["a", "b", "log:resp-c"]
    for cut in range(1, len(batches)):
        j = logic()
        first: list[Event] = []
        for b in batches[:cut]:
            got, _ = j.on_batch([b])
            first += [e for lst in got for e in lst]
        resumed = run(batches[cut:], resume=j.snapshot())
        assert [e for e in first + resumed if not e.event_id.startswith("tick-")] == whole


# --- the official OpenAI instrumentation, end to end ------------------------------------


PROMPTS = ["How do I reset my password?", "Where is my order 1234?", "Cancel my subscription, please."]


@pytest.fixture
def instrumented(monkeypatch):
    """The official OpenAI instrumentation on its default conventions (1.30) with content capture,
    its spans and log records kept in memory."""
    from opentelemetry.instrumentation.openai_v2 import OpenAIInstrumentor

    monkeypatch.setenv("OTEL_INSTRUMENTATION_GENAI_CAPTURE_MESSAGE_CONTENT", "true")
    monkeypatch.delenv("OTEL_SEMCONV_STABILITY_OPT_IN", raising=False)
    resource = Resource.create({"service.name": "support-bot", "tenant.id": "initech"})
    spans, logs = InMemorySpanExporter(), InMemoryLogRecordExporter()
    tracer_provider = TracerProvider(resource=resource)
    tracer_provider.add_span_processor(SimpleSpanProcessor(spans))
    logger_provider = LoggerProvider(resource=resource)
    logger_provider.add_log_record_processor(SimpleLogRecordProcessor(logs))
    instrumentor = OpenAIInstrumentor()
    instrumentor.instrument(tracer_provider=tracer_provider, logger_provider=logger_provider)
    try:
        yield spans, logs
    finally:
        instrumentor.uninstrument()


def instrumented_calls(instrumented, endpoint) -> tuple[list[bytes], dict[str, tuple[str, str]]]:
    """PROMPTS sent through the instrumented OpenAI client to the local endpoint: the Kafka messages
    the Collector's exporter would write (otlp_proto: logs and spans in messages of their own, each
    call's log records in one message, logs first) and response id -> (prompt, completion)."""
    import openai

    spans, logs = instrumented
    client = openai.OpenAI(api_key="test-key", base_url=endpoint.openai_base_url)
    answers = {}
    for prompt in PROMPTS:
        r = client.chat.completions.create(
            model="gpt-4o-mini",
            messages=[
                {"role": "system", "content": "You are a support agent."},
                {"role": "user", "content": prompt},
            ],
        )
        answers[r.id] = (prompt, r.choices[0].message.content)
    finished = spans.get_finished_spans()
    assert len(finished) == len(PROMPTS)
    assert all("gen_ai.input.messages" not in s.attributes for s in finished)  # content only in logs
    names = sorted({r.log_record.event_name for r in logs.get_finished_logs()})
    assert names == ["gen_ai.choice", "gen_ai.system.message", "gen_ai.user.message"]
    by_span: dict[int, list] = {}
    for r in logs.get_finished_logs():
        by_span.setdefault(r.log_record.span_id, []).append(r)
    messages = [encode_logs(records).SerializeToString() for records in by_span.values()]
    messages.append(encode_spans(finished).SerializeToString())
    return messages, answers


@pytest.mark.parametrize("workers", [1, 2])
def test_instrumented_openai_calls_are_stored_and_judged_with_their_text(
    instrumented, kafka, chdb_dsn, database, judge_endpoint, workers
) -> None:
    messages, answers = instrumented_calls(instrumented, judge_endpoint)
    kafka.create_topic("llm-events", 3)
    produce_all(kafka.bootstrap, "llm-events", messages)
    client_ch = connect(chdb_dsn, database)
    ensure_schema(client_ch, database)
    joined_before = outcome("joined")
    settings = topic_flow_settings(
        kafka,
        chdb_dsn,
        database,
        judge_endpoint,
        **{"clickhouse.store_text": True, "sampling.base_rate": 1.0, "sampling.max_judged_share": 0.0},
    )
    run_flow(settings, workers=workers)

    got = rows(
        client_ch,
        "SELECT event_id, tenant_id, agent, model, input_text, output_text, input_tokens > 0, cost_usd > 0 "
        "FROM llm_events FINAL ORDER BY event_id",
    )
    assert len(got) == len(PROMPTS)
    stored = {}
    for event_id, tenant, agent, model, input_text, output_text, has_tokens, priced in got:
        assert (tenant, agent, model, has_tokens, priced) == ("initech", "support-bot", "gpt-4o-mini", 1, 1)
        stored[input_text] = (event_id, output_text)
    for prompt, completion in answers.values():
        event_id, output_text = stored[f"system: You are a support agent.\nuser: {prompt}"]
        assert output_text == completion and completion
    assert outcome("joined") - joined_before == len(PROMPTS)
    judged = rows(client_ch, "SELECT DISTINCT event_id FROM evaluations FINAL ORDER BY event_id")
    assert [e for (e,) in judged] == sorted(e for e, _ in stored.values())


def test_batches_of_one_give_the_same_events_as_batches_of_a_thousand(
    instrumented, kafka, chdb_dsn, database, judge_endpoint
) -> None:
    messages, _ = instrumented_calls(instrumented, judge_endpoint)
    kafka.create_topic("llm-events", 3)
    produce_all(kafka.bootstrap, "llm-events", messages)
    stored = []
    for db, batch in ((database, 1000), (f"{database}_b1", 1)):
        client = connect(chdb_dsn, db)
        ensure_schema(client, db)
        overrides = {"clickhouse.store_text": True, "kafka.batch_size": batch}
        run_flow(topic_flow_settings(kafka, chdb_dsn, db, **overrides))
        stored.append(
            rows(
                client, "SELECT event_id, input_text, output_text, cost_usd FROM llm_events FINAL ORDER BY 1"
            )
        )
    assert len(stored[0]) == len(PROMPTS) and all(r[1] and r[2] for r in stored[0])
    assert stored[1] == stored[0]


def test_a_call_longer_than_the_join_wait_is_stored_with_its_prompt(
    instrumented, kafka, chdb_dsn, database
) -> None:
    """Calls that take 1.2 s against a 0.2-s join wait: the instrumentation writes each prompt's log
    records 1.2 s before the span, and each call's records reach the flow before its span."""
    with LocalEndpoint(EndpointConfig(latency=1200.0)) as slow:
        messages, answers = instrumented_calls(instrumented, slow)
    spans, logs = instrumented
    ((prompt_ns, end_ns),) = {
        (r.log_record.timestamp or r.log_record.observed_timestamp, s.end_time)
        for s in spans.get_finished_spans()[:1]
        for r in logs.get_finished_logs()
        if r.log_record.span_id == s.context.span_id and r.log_record.event_name == "gen_ai.user.message"
    }
    assert end_ns - prompt_ns >= 1_000_000_000  # the prompt is written as the call starts
    kafka.create_topic("llm-events", 3)
    # one partition, so the records are read before the span, as the docstring says. Left to the
    # producer, the messages share a partition only when they go out within its sticky linger (10 ms):
    # on a loaded machine the spans can be the first message of one partition (no position before it,
    # so their bound counts from their own end) and a call's records the second of another, read at
    # their produce time, seconds past the 1.2-s calls' bounds: that call is stored without its text
    produce_all(kafka.bootstrap, "llm-events", messages, partition=0)
    assert stored_texts(kafka, chdb_dsn, database) == wanted_texts(answers)


def stored_texts(kafka, chdb_dsn: str, database: str) -> list[tuple]:
    """Run the flow over the topic with a 0.2-s join wait; the prompts and completions it stored."""
    client = connect(chdb_dsn, database)
    ensure_schema(client, database)
    overrides = {"clickhouse.store_text": True, "otlp.join_wait_s": 0.2}
    run_flow(topic_flow_settings(kafka, chdb_dsn, database, **overrides))
    return rows(client, "SELECT input_text, output_text FROM llm_events FINAL ORDER BY input_text")


def wanted_texts(answers: dict[str, tuple[str, str]]) -> list[tuple]:
    return sorted(
        (f"system: You are a support agent.\nuser: {prompt}", completion)
        for prompt, completion in answers.values()
    )


def test_a_span_first_in_its_partition_is_bounded_from_its_messages_kafka_time(
    instrumented, kafka, chdb_dsn, database, judge_endpoint
) -> None:
    """The spans are the first message of partition 0; the calls' log records follow one another in
    partition 1, all written by the exporter a second after the calls ended. The records after the first
    are read where partition 1 stood, a second past the spans' own end times: a span bounded from its
    end would be sent on without them. Bounded from its message's Kafka time, every call has its text."""
    messages, answers = instrumented_calls(instrumented, judge_endpoint)
    *log_messages, span_message = messages
    time.sleep(1.0)  # the exporter's delay, five times the join's wait
    written_ms = int(time.time() * 1000)
    kafka.create_topic("llm-events", 2)
    produce_all(kafka.bootstrap, "llm-events", [(None, span_message, written_ms)], partition=0)
    produce_all(kafka.bootstrap, "llm-events", [(None, m, written_ms) for m in log_messages], partition=1)
    late_before = outcome("late_logs")
    assert stored_texts(kafka, chdb_dsn, database) == wanted_texts(answers)
    assert outcome("late_logs") == late_before
