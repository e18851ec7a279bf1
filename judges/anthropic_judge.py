"""An LLM judge behind the official `anthropic` client.

The verdict comes back as a forced tool call (`record_verdict`, whose input
schema is the verdict schema) and is validated again here; a text answer, a
missing or malformed tool input is an `InvalidVerdictError`. Like the OpenAI
judge: one long-lived `AsyncAnthropic` per process on the aiohttp transport,
SDK retries off, and by default the request goes through the client's
low-level `post()` with a msgspec-encoded body and a msgspec-decoded answer
(`raw=False` uses `messages.create()` and the SDK's models).
"""

from __future__ import annotations

import time
from typing import Any

import anthropic
import httpx2
import msgspec

from core.records import JudgeCall, Verdict
from judges.base import InvalidVerdictError, JudgeItem, JudgeResult, RetryableJudgeError
from judges.errors import classify_sdk_error
from judges.openai_judge import MAX_OUTPUT_TOKENS, CostFn, aiohttp_client, endpoint_url
from judges.rubrics import API_VERDICT_SCHEMA, build_prompt, parse_verdict_object

TOOL_NAME = "record_verdict"

_TOOL = {
    "name": TOOL_NAME,
    "description": "Record the evaluation verdict for the DATA.",
    "input_schema": API_VERDICT_SCHEMA,
}
_TOOL_CHOICE = {"type": "tool", "name": TOOL_NAME}


class _Block(msgspec.Struct):
    type: str
    name: str | None = None
    input: Any = None


class _Usage(msgspec.Struct):
    input_tokens: int = 0
    output_tokens: int = 0


class _Message(msgspec.Struct):
    content: list[_Block]
    usage: _Usage | None = None
    stop_reason: str | None = None


_decode_message = msgspec.json.Decoder(_Message).decode
_encode = msgspec.json.Encoder().encode


class AnthropicJudge:
    """Tier-1/2 judge through `anthropic.AsyncAnthropic`. Create it inside the running loop."""

    def __init__(
        self,
        *,
        model: str,
        api_key: str,
        base_url: str | None,
        tier: int,
        timeout_s: float,
        cost: CostFn,
        raw: bool = True,
        max_connections: int = 256,
    ) -> None:
        self.name = f"anthropic/{model}"
        self.tier = tier
        self._model = model
        self._cost = cost
        self._raw = raw
        self._client = anthropic.AsyncAnthropic(
            api_key=api_key,
            base_url=base_url or None,
            max_retries=0,
            timeout=timeout_s,
            http_client=aiohttp_client(anthropic, timeout_s=timeout_s, max_connections=max_connections),
        )
        self._url = endpoint_url(self._client, "v1/messages")

    async def judge(self, metric: str, item: JudgeItem) -> JudgeResult:
        prompt = build_prompt(metric, item)
        body: dict[str, Any] = {
            "model": self._model,
            "max_tokens": MAX_OUTPUT_TOKENS,  # no temperature: this API version has none
            "system": prompt.system,
            "messages": [{"role": "user", "content": prompt.user}],
            "tools": [_TOOL],
            "tool_choice": _TOOL_CHOICE,
        }
        started = time.perf_counter()
        try:
            if self._raw:
                resp = await self._client.post(self._url, cast_to=httpx2.Response, content=_encode(body))
                message = _decode_message(resp.content)
            else:
                message = _from_sdk(await self._client.messages.create(**body))
        except anthropic.APIError as exc:
            raise classify_sdk_error(exc, anthropic) from exc
        except (ValueError, msgspec.DecodeError) as exc:  # a truncated or non-JSON body
            msg = f"malformed response body: {str(exc)[:80]}"
            raise RetryableJudgeError(msg) from exc
        latency_ms = (time.perf_counter() - started) * 1000
        usage = message.usage or _Usage()
        call = JudgeCall(
            judge=self.name,
            tier=self.tier,
            input_tokens=usage.input_tokens,
            output_tokens=usage.output_tokens,
            cost_pusd=self._cost(usage.input_tokens, usage.output_tokens),
            latency_ms=latency_ms,
            ok=True,
        )
        try:
            payload = parse_verdict_object(_tool_input(message))
        except ValueError as exc:
            raise InvalidVerdictError(str(exc), call=call) from exc
        verdict = Verdict(
            metric=metric,
            score=payload.score,
            label=payload.label,
            explanation=payload.explanation[:400],
            judge=self.name,
            tier=self.tier,
        )
        return JudgeResult(verdict=verdict, call=call)

    async def aclose(self) -> None:
        await self._client.close()


def _tool_input(message: _Message) -> Any:
    if message.stop_reason == "max_tokens":
        msg = "the verdict was cut off at the output token limit"
        raise ValueError(msg)
    for block in message.content:
        if block.type == "tool_use" and block.name == TOOL_NAME:
            return block.input
    msg = f"no {TOOL_NAME} tool call in the answer (got {[b.type for b in message.content]})"
    raise ValueError(msg)


def _from_sdk(resp: object) -> _Message:
    if isinstance(resp, str):  # the SDK hands back a 200 with a non-JSON body as text
        msg = f"non-JSON response body: {resp[:80]!r}"
        raise ValueError(msg)
    blocks = [
        _Block(b.type, getattr(b, "name", None), getattr(b, "input", None))
        for b in resp.content  # type: ignore[attr-defined]
    ]
    u = resp.usage  # type: ignore[attr-defined]
    return _Message(blocks, _Usage(u.input_tokens, u.output_tokens), resp.stop_reason)  # type: ignore[attr-defined]
