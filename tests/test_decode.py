"""decode: good events become typed events; every kind of bad input becomes a
dead letter with a reason and its Kafka coordinates — never an exception."""

from __future__ import annotations

import json

import pytest
from bytewax.connectors.kafka import KafkaSourceMessage

from core.records import DeadLetter, Event, usd_to_pico
from operators.decode import DecodeLimits, decode_message

NOW = 1_763_800_000_000  # 2025-11-22
LIMITS = DecodeLimits(
    earliest_ts_ms=1_577_836_800_000,
    max_future_ms=86_400_000,
    max_tokens=10_000_000,
    max_cost_pico=usd_to_pico(1000),
)


def good(**overrides) -> dict:
    d = {
        "event_id": "e-1",
        "ts": "2025-11-22T10:00:00.250Z",
        "tenant_id": "acme",
        "agent": "support-bot",
        "model": "gpt-4o-mini",
        "provider": "openai",
        "variant": "finetuned",
        "input": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}],
        "output": "Hello!",
        "context": "kb article 7",
        "usage": {"input_tokens": 120, "output_tokens": 30, "cache_read_tokens": 100, "reasoning_tokens": 10},
        "cost_usd": "0.000123",
        "latency_ms": 812.5,
        "conversation_id": "c-9",
        "user_id": "u-3",
        "metadata": {"region": "eu"},
    }
    d.update(overrides)
    return d


def msg(value: bytes | None, offset: int = 7) -> KafkaSourceMessage:
    return KafkaSourceMessage(key=None, value=value, topic="llm-events", partition=2, offset=offset)


def run(payload) -> Event | DeadLetter:
    raw = payload if isinstance(payload, bytes) or payload is None else json.dumps(payload).encode()
    return decode_message(msg(raw), LIMITS, NOW)


def test_full_event_decodes_with_every_field():
    e = run(good())
    assert isinstance(e, Event)
    assert e.ts_ms == 1_763_805_600_250
    assert e.input_text == "system: Be brief.\nuser: Hi"
    assert (e.input_tokens, e.output_tokens, e.cache_read_tokens, e.reasoning_tokens) == (120, 30, 100, 10)
    assert e.provided_cost_pusd == 123_000_000
    assert e.variant == "finetuned" and e.context == "kb article 7" and e.metadata == {"region": "eu"}
    assert (e.source.topic, e.source.partition, e.source.offset) == ("llm-events", 2, 7)


def test_minimal_event_with_epoch_ms_and_string_input():
    d = {
        "event_id": "e-2",
        "ts": 1_763_805_600_000,
        "tenant_id": "t",
        "agent": "a",
        "model": "m",
        "input": "plain prompt",
        "output": "",
        "usage": {},
    }
    e = run(d)
    assert isinstance(e, Event)
    assert e.ts_ms == 1_763_805_600_000 and e.input_text == "plain prompt"
    assert e.variant == "baseline" and e.provider == "" and e.provided_cost_pusd is None


@pytest.mark.parametrize(
    ("payload", "reason"),
    [
        (b"{not json", "malformed"),
        (b"", "malformed"),
        (b"[1, 2]", "Expected `object`"),
        (None, "empty message"),
        (good(usage={"input_tokens": -1}), "usage.input_tokens = -1"),
        (good(usage={"input_tokens": "ten"}), "Expected `int`"),
        (good(ts=1_700_000_000), "before the earliest accepted time"),  # epoch seconds, not ms
        (good(ts="2031-01-01T00:00:00Z"), "in the future"),
        (good(ts="2025-11-22T10:00:00"), "has no UTC offset"),
        (good(ts=True), "Expected `int | datetime`"),
        (good(tenant_id=""), "tenant_id is empty"),
        (good(event_id="x" * 300), "event_id is 300 characters long"),
        (good(variant="v" * 300), "variant is 300 characters long"),
        # ids are joined with U+001F into the keyed steps' keys: "acme\x1fglobex" + agent "a" would share
        # the windows of tenant "acme" with agent "globex\x1fa"
        (good(tenant_id="acme\x1fglobex"), "tenant_id contains a control character (U+001F at 4)"),
        (good(agent="bot\x00"), "agent contains a control character (U+0000 at 3)"),
        (good(variant="b\x85"), "variant contains a control character (U+0085 at 1)"),
        (good(cost_usd="-0.5"), "cost_usd -0.5 outside"),
        (good(cost_usd="NaN"), "not a finite number"),
        (good(usage={"input_tokens": 5, "cache_read_tokens": 9}), "exceed input_tokens"),
        (good(usage={"output_tokens": 5, "reasoning_tokens": 9}), "reasoning_tokens (9) exceed"),
        (good(latency_ms=-3), "latency_ms = -3"),
        ({k: v for k, v in good().items() if k != "model"}, "missing required field `model`"),
        # an unknown field nested 100,000 deep: the producer's fault, not an internal error (a bug alert)
        (
            json.dumps(good())[:-1].encode() + b', "x": ' + b"[" * 100_000 + b"]" * 100_000 + b"}",
            "nested too deeply",
        ),
    ],
)
def test_bad_input_becomes_a_dead_letter_with_reason(payload, reason):
    d = run(payload)
    assert isinstance(d, DeadLetter)
    assert d.stage == "decode"
    assert reason in d.reason
    assert d.key == "llm-events:2:7"
    assert d.source.offset == 7
    if isinstance(payload, bytes):
        assert d.raw == payload
