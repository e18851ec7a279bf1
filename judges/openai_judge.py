"""An LLM judge behind the official `openai` client (OpenAI, Azure, vLLM, Ollama...).

The verdict is requested as strict structured output (`json_schema`) and validated again here; a
refusal, an answer cut off at the token limit or one that does not fit the schema is an
`InvalidVerdictError`. The client, the raw path and the call itself: `judges.sdk_judge`.
"""

from __future__ import annotations

from typing import Any

import msgspec
import openai

from judges.rubrics import API_VERDICT_SCHEMA, Prompt, VerdictPayload, parse_verdict
from judges.sdk_judge import MAX_OUTPUT_TOKENS, SdkJudge, non_json

_RESPONSE_FORMAT = {
    "type": "json_schema",
    "json_schema": {"name": "verdict", "schema": API_VERDICT_SCHEMA, "strict": True},
}


class _Message(msgspec.Struct):
    content: str | None = None
    refusal: str | None = None


class _Choice(msgspec.Struct):
    message: _Message
    finish_reason: str | None = None


class _Usage(msgspec.Struct):
    prompt_tokens: int = 0
    completion_tokens: int = 0


class _Completion(msgspec.Struct):
    choices: list[_Choice]
    usage: _Usage | None = None


_decode_completion = msgspec.json.Decoder(_Completion).decode


class OpenAIJudge(SdkJudge[_Completion]):
    """Tier-1/2 judge through `openai.AsyncOpenAI`. Create it inside the running loop.

    Args:
        raw: send through `client.post()` and decode with msgspec (default), or
            through `chat.completions.create()` and the SDK's models (for comparison).
        structured: ask for the verdict as strict `json_schema` structured output
            (off for OpenAI-compatible servers without it; the answer is parsed as strictly).
    """

    provider = "openai"
    sdk = openai
    path = "chat/completions"

    def __init__(self, *, structured: bool = True, **kwargs: Any) -> None:
        self._structured = structured
        super().__init__(**kwargs)

    def client(self, **kwargs: Any) -> openai.AsyncOpenAI:
        return openai.AsyncOpenAI(**kwargs)

    def request(self, prompt: Prompt) -> dict[str, Any]:
        body: dict[str, Any] = {
            "model": self._model,
            "messages": [
                {"role": "system", "content": prompt.system},
                {"role": "user", "content": prompt.user},
            ],
            "temperature": 0,
            "max_tokens": MAX_OUTPUT_TOKENS,
        }
        if self._structured:
            body["response_format"] = _RESPONSE_FORMAT
        return body

    def decode(self, body: bytes) -> _Completion:
        return _decode_completion(body)

    async def sdk_call(self, request: dict[str, Any]) -> _Completion:
        return _from_sdk(await self._client.chat.completions.create(**request))

    def tokens(self, answer: _Completion) -> tuple[int, int]:
        u = answer.usage or _Usage()
        return u.prompt_tokens, u.completion_tokens

    def payload(self, answer: _Completion) -> VerdictPayload:
        choice = answer.choices[0] if answer.choices else None
        if choice is None or choice.message.refusal:
            msg = "the model declined to give a verdict"
            raise ValueError(msg)
        if choice.finish_reason == "length":
            msg = "the verdict was cut off at the output token limit"
            raise ValueError(msg)
        return parse_verdict(choice.message.content or "")


def _from_sdk(resp: object) -> _Completion:
    non_json(resp)
    choices = [
        _Choice(_Message(c.message.content, c.message.refusal), c.finish_reason)
        for c in resp.choices  # type: ignore[attr-defined]
    ]
    u = resp.usage  # type: ignore[attr-defined]
    usage = _Usage(u.prompt_tokens, u.completion_tokens) if u else None
    return _Completion(choices, usage)
