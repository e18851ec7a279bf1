"""An LLM judge behind the official `anthropic` client.

The verdict comes back as a forced tool call (`record_verdict`, whose input
schema is the verdict schema) and is validated again here; a text answer, a
missing or malformed tool input is an `InvalidVerdictError`. The client, the
raw path (`raw=False` uses `messages.create()` and the SDK's models) and the
call itself: `judges.sdk_judge`.
"""

from __future__ import annotations

from typing import Any

import anthropic
import msgspec

from judges.rubrics import API_VERDICT_SCHEMA, Prompt, VerdictPayload, parse_verdict_object
from judges.sdk_judge import MAX_OUTPUT_TOKENS, SdkJudge, non_json

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


class AnthropicJudge(SdkJudge[_Message]):
    """Tier-1/2 judge through `anthropic.AsyncAnthropic`. Create it inside the running loop."""

    provider = "anthropic"
    sdk = anthropic
    path = "v1/messages"

    def client(self, **kwargs: Any) -> anthropic.AsyncAnthropic:
        return anthropic.AsyncAnthropic(**kwargs)

    def request(self, prompt: Prompt) -> dict[str, Any]:
        return {
            "model": self._model,
            "max_tokens": MAX_OUTPUT_TOKENS,  # no temperature: this API version has none
            "system": prompt.system,
            "messages": [{"role": "user", "content": prompt.user}],
            "tools": [_TOOL],
            "tool_choice": _TOOL_CHOICE,
        }

    def decode(self, body: bytes) -> _Message:
        return _decode_message(body)

    async def sdk_call(self, request: dict[str, Any]) -> _Message:
        return _from_sdk(await self._client.messages.create(**request))

    def tokens(self, answer: _Message) -> tuple[int, int]:
        u = answer.usage or _Usage()
        return u.input_tokens, u.output_tokens

    def payload(self, answer: _Message) -> VerdictPayload:
        return parse_verdict_object(_tool_input(answer))


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
    non_json(resp)
    blocks = [
        _Block(b.type, getattr(b, "name", None), getattr(b, "input", None))
        for b in resp.content  # type: ignore[attr-defined]
    ]
    u = resp.usage  # type: ignore[attr-defined]
    return _Message(blocks, _Usage(u.input_tokens, u.output_tokens), resp.stop_reason)  # type: ignore[attr-defined]
