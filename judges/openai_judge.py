"""An LLM judge behind the official `openai` client (OpenAI, Azure, vLLM, Ollama...).

One long-lived `AsyncOpenAI` per process on the aiohttp transport (the
cheapest per call, see INFRA.md), SDK retries off — retries, back-off, rate
limits and circuit breaking belong to the judge runtime, which counts them.
The verdict is requested as strict structured output and validated again here.

Where the CPU goes (bench/judge_throughput.py profiles it): with
`chat.completions.create` about half of each call is the SDK transforming the
request parameters against their TypedDicts and another sixth building the
pydantic response. The default `raw` path sends the same request through the
client's documented low-level `post()` with a body encoded once by msgspec,
and decodes only the fields a verdict needs; auth, headers, timeouts, the
transport and the SDK's status-code exceptions are the client's as before.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from types import ModuleType
from typing import Any

import httpx2
import msgspec
import openai

from core.records import JudgeCall, Verdict
from judges.base import InvalidVerdictError, JudgeItem, JudgeResult, RetryableJudgeError
from judges.errors import classify_sdk_error
from judges.rubrics import API_VERDICT_SCHEMA, build_prompt, parse_verdict

# (input_tokens, output_tokens) -> picodollars
CostFn = Callable[[int, int], int]

MAX_OUTPUT_TOKENS = 200

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
_encode = msgspec.json.Encoder().encode


def aiohttp_client(sdk: ModuleType, *, timeout_s: float, max_connections: int) -> httpx2.AsyncClient:
    """The SDK's aiohttp transport with a keep-alive pool as large as the calls in flight
    (its default keeps 20: with hundreds in flight the rest reconnect on every call)."""
    limits = httpx2.Limits(max_connections=max_connections, max_keepalive_connections=max_connections)
    return sdk.DefaultAioHttpClient(timeout=timeout_s, limits=limits)


def endpoint_url(client: openai.AsyncOpenAI | Any, path: str) -> str:
    """The absolute URL of `path` under the client's base URL."""
    return f"{str(client.base_url).rstrip('/')}/{path}"


class OpenAIJudge:
    """Tier-1/2 judge through `openai.AsyncOpenAI`. Create it inside the running loop.

    Args:
        raw: send through `client.post()` and decode with msgspec (default), or
            through `chat.completions.create()` and the SDK's models (for comparison).
        structured: ask for the verdict as strict `json_schema` structured output
            (off for OpenAI-compatible servers without it; the answer is parsed as strictly).
    """

    def __init__(
        self,
        *,
        model: str,
        api_key: str,
        base_url: str | None,
        tier: int,
        timeout_s: float,
        cost: CostFn,
        structured: bool = True,
        raw: bool = True,
        max_connections: int = 256,
    ) -> None:
        self.name = f"openai/{model}"
        self.tier = tier
        self._model = model
        self._cost = cost
        self._structured = structured
        self._raw = raw
        self._client = openai.AsyncOpenAI(
            api_key=api_key,
            base_url=base_url or None,
            max_retries=0,
            timeout=timeout_s,
            http_client=aiohttp_client(openai, timeout_s=timeout_s, max_connections=max_connections),
        )
        # an absolute URL saves the SDK joining it to the base URL on every call (~8% of its CPU)
        self._url = endpoint_url(self._client, "chat/completions")

    async def judge(self, metric: str, item: JudgeItem) -> JudgeResult:
        prompt = build_prompt(metric, item)
        body: dict = {
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
        started = time.perf_counter()
        try:
            if self._raw:
                resp = await self._client.post(self._url, cast_to=httpx2.Response, content=_encode(body))
                completion = _decode_completion(resp.content)
            else:
                completion = _from_sdk(await self._client.chat.completions.create(**body))
        except openai.APIError as exc:
            raise classify_sdk_error(exc, openai) from exc
        except (ValueError, msgspec.DecodeError) as exc:  # a truncated or non-JSON body
            msg = f"malformed response body: {str(exc)[:80]}"
            raise RetryableJudgeError(msg) from exc
        latency_ms = (time.perf_counter() - started) * 1000
        usage = completion.usage or _Usage()
        call = JudgeCall(
            judge=self.name,
            tier=self.tier,
            input_tokens=usage.prompt_tokens,
            output_tokens=usage.completion_tokens,
            cost_pusd=self._cost(usage.prompt_tokens, usage.completion_tokens),
            latency_ms=latency_ms,
            ok=True,
        )
        choice = completion.choices[0] if completion.choices else None
        try:
            if choice is None or choice.message.refusal:
                msg = "the model declined to give a verdict"
                raise ValueError(msg)
            if choice.finish_reason == "length":
                msg = "the verdict was cut off at the output token limit"
                raise ValueError(msg)
            payload = parse_verdict(choice.message.content or "")
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


def _from_sdk(resp: object) -> _Completion:
    if isinstance(resp, str):  # the SDK hands back a 200 with a non-JSON body as text
        msg = f"non-JSON response body: {resp[:80]!r}"
        raise ValueError(msg)
    choices = [
        _Choice(_Message(c.message.content, c.message.refusal), c.finish_reason)
        for c in resp.choices  # type: ignore[attr-defined]
    ]
    u = resp.usage  # type: ignore[attr-defined]
    usage = _Usage(u.prompt_tokens, u.completion_tokens) if u else None
    return _Completion(choices, usage)
