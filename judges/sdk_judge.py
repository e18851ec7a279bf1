"""What the LLM judges behind the official SDKs share: one long-lived client per process on the SDK's
aiohttp transport (the cheapest per call, see INFRA.md) with the SDK's retries off — retries, back-off,
rate limits and circuit breaking belong to the judge runtime, which counts them — and one call per
(metric, item): the request, the SDK's errors translated (`judges/errors.py`), the call billed, the
verdict parsed and checked.

Where the CPU goes (bench/judge_throughput.py profiles it): through the SDK's typed call
(`chat.completions.create`, `messages.create`) about half of each call is the SDK transforming the
request parameters against their TypedDicts and another sixth building the pydantic response. The
default `raw` path sends the same request through the client's documented low-level `post()` with a
body encoded once by msgspec, and decodes only the fields a verdict needs; auth, headers, timeouts, the
transport and the SDK's status-code exceptions are the client's as before. A provider (`OpenAIJudge`,
`AnthropicJudge`) says only what differs: the request body, how its answer decodes, and where the
tokens and the verdict are in it.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from types import ModuleType
from typing import Any, Generic, TypeVar

import httpx2
import msgspec

from core.records import JudgeCall, Verdict
from judges.base import InvalidVerdictError, JudgeItem, JudgeResult, RetryableJudgeError
from judges.errors import classify_sdk_error
from judges.rubrics import Prompt, VerdictPayload, build_prompt

# (input_tokens, output_tokens) -> picodollars
CostFn = Callable[[int, int], int]
A = TypeVar("A")  # a provider's decoded answer

MAX_OUTPUT_TOKENS = 200
_encode = msgspec.json.Encoder().encode


def aiohttp_client(sdk: ModuleType, *, timeout_s: float, max_connections: int) -> httpx2.AsyncClient:
    """The SDK's aiohttp transport with a keep-alive pool as large as the calls in flight
    (its default keeps 20: with hundreds in flight the rest reconnect on every call)."""
    limits = httpx2.Limits(max_connections=max_connections, max_keepalive_connections=max_connections)
    return sdk.DefaultAioHttpClient(timeout=timeout_s, limits=limits)


def endpoint_url(client: Any, path: str) -> str:
    """The absolute URL of `path` under the client's base URL (saves the SDK joining it on every
    call, ~8% of its CPU)."""
    return f"{str(client.base_url).rstrip('/')}/{path}"


class SdkJudge(Generic[A]):
    """A tier-1/2 judge through an official SDK's async client. Create it inside the running loop.

    Subclasses set `provider`, `sdk`, `path` and build the client, and say how a request is made
    (`request`), how an answer decodes (`decode`, or `sdk_call` through the SDK's typed call), and
    where its tokens (`tokens`) and verdict (`payload`, raising ValueError when there is none) are.
    """

    provider: str
    sdk: ModuleType
    path: str

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
        self.name = f"{self.provider}/{model}"
        self.tier = tier
        self._model = model
        self._cost = cost
        self._raw = raw
        self._client = self.client(
            api_key=api_key,
            base_url=base_url or None,
            max_retries=0,
            timeout=timeout_s,
            http_client=aiohttp_client(self.sdk, timeout_s=timeout_s, max_connections=max_connections),
        )
        self._url = endpoint_url(self._client, self.path)

    def client(self, **kwargs: Any) -> Any:
        raise NotImplementedError

    def request(self, prompt: Prompt) -> dict[str, Any]:
        raise NotImplementedError

    def decode(self, body: bytes) -> A:
        raise NotImplementedError

    async def sdk_call(self, request: dict[str, Any]) -> A:
        raise NotImplementedError

    def tokens(self, answer: A) -> tuple[int, int]:
        raise NotImplementedError

    def payload(self, answer: A) -> VerdictPayload:
        raise NotImplementedError

    async def judge(self, metric: str, item: JudgeItem) -> JudgeResult:
        request = self.request(build_prompt(metric, item))
        started = time.perf_counter()
        try:
            if self._raw:
                resp = await self._client.post(self._url, cast_to=httpx2.Response, content=_encode(request))
                answer = self.decode(resp.content)
            else:
                answer = await self.sdk_call(request)
        except self.sdk.APIError as exc:
            raise classify_sdk_error(exc, self.sdk) from exc
        except (ValueError, msgspec.DecodeError) as exc:  # a truncated or non-JSON body
            msg = f"malformed response body: {str(exc)[:80]}"
            raise RetryableJudgeError(msg) from exc
        latency_ms = (time.perf_counter() - started) * 1000
        tokens_in, tokens_out = self.tokens(answer)
        call = JudgeCall(
            judge=self.name,
            tier=self.tier,
            input_tokens=tokens_in,
            output_tokens=tokens_out,
            cost_pusd=self._cost(tokens_in, tokens_out),
            latency_ms=latency_ms,
            ok=True,
        )
        try:
            p = self.payload(answer)
        except ValueError as exc:
            raise InvalidVerdictError(str(exc), call=call) from exc
        verdict = Verdict(
            metric=metric,
            score=p.score,
            label=p.label,
            explanation=p.explanation[:400],
            judge=self.name,
            tier=self.tier,
        )
        return JudgeResult(verdict=verdict, call=call)

    async def aclose(self) -> None:
        await self._client.close()


def non_json(resp: object) -> None:
    """The SDK hands back a 200 with a non-JSON body as text: a malformed answer."""
    if isinstance(resp, str):
        msg = f"non-JSON response body: {resp[:80]!r}"
        raise ValueError(msg)
