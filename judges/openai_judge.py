"""An LLM judge behind the official `openai` client (OpenAI, Azure, vLLM, Ollama...).

One long-lived `AsyncOpenAI` per process on the aiohttp transport (the
cheapest per call, see INFRA.md), SDK retries off — retries, back-off and
circuit breaking belong to the judge runtime, which counts them. The verdict
is requested as strict structured output and validated again here.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import openai

from judges.base import (
    FatalJudgeError,
    InvalidVerdictError,
    JudgeError,
    JudgeItem,
    JudgeResult,
    RetryableJudgeError,
)
from judges.rubrics import API_VERDICT_SCHEMA, build_prompt, parse_verdict
from operators.records import JudgeCall, Verdict

# (input_tokens, output_tokens) -> picodollars
CostFn = Callable[[int, int], int]


class OpenAIJudge:
    """Tier-1/2 judge through `openai.AsyncOpenAI`. Create it inside the running loop."""

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
    ) -> None:
        self.name = f"openai/{model}"
        self.tier = tier
        self._model = model
        self._cost = cost
        self._structured = structured
        self._client = openai.AsyncOpenAI(
            api_key=api_key,
            base_url=base_url or None,
            max_retries=0,
            timeout=timeout_s,
            http_client=openai.DefaultAioHttpClient(timeout=timeout_s),
        )

    async def judge(self, metric: str, item: JudgeItem) -> JudgeResult:
        prompt = build_prompt(metric, item)
        kwargs: dict = {}
        if self._structured:
            kwargs["response_format"] = {
                "type": "json_schema",
                "json_schema": {"name": "verdict", "schema": API_VERDICT_SCHEMA, "strict": True},
            }
        started = time.perf_counter()
        try:
            resp = await self._client.chat.completions.create(
                model=self._model,
                messages=[
                    {"role": "system", "content": prompt.system},
                    {"role": "user", "content": prompt.user},
                ],
                temperature=0,
                max_tokens=200,
                **kwargs,
            )
        except openai.APIError as exc:
            raise classify_openai_error(exc) from exc
        except ValueError as exc:  # a truncated JSON body surfaces as json.JSONDecodeError
            msg = f"malformed response body: {exc}"
            raise RetryableJudgeError(msg) from exc
        if isinstance(resp, str):  # a 200 with a non-JSON body comes back as text
            msg = f"non-JSON response body: {resp[:80]!r}"
            raise RetryableJudgeError(msg)
        latency_ms = (time.perf_counter() - started) * 1000
        usage = resp.usage
        in_tok = usage.prompt_tokens if usage else 0
        out_tok = usage.completion_tokens if usage else 0
        content = resp.choices[0].message.content if resp.choices else None
        call = JudgeCall(
            judge=self.name,
            tier=self.tier,
            input_tokens=in_tok,
            output_tokens=out_tok,
            cost_pusd=self._cost(in_tok, out_tok),
            latency_ms=latency_ms,
            ok=True,
        )
        try:
            payload = parse_verdict(content or "")
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


def classify_openai_error(exc: openai.APIError) -> JudgeError:
    """Map the SDK's exceptions onto retryable / fatal / per-item errors."""
    if isinstance(exc, openai.RateLimitError):
        return RetryableJudgeError(f"429 rate limited: {_short(exc)}", retry_after_s=_retry_after(exc))
    if isinstance(exc, openai.APITimeoutError):
        return RetryableJudgeError("timeout")
    if isinstance(exc, openai.APIConnectionError):
        return RetryableJudgeError(f"connection error: {_short(exc)}")
    if isinstance(exc, openai.InternalServerError):
        return RetryableJudgeError(f"{exc.status_code} server error", retry_after_s=_retry_after(exc))
    if isinstance(exc, (openai.AuthenticationError, openai.PermissionDeniedError)):
        return FatalJudgeError(f"{exc.status_code} not authorised: {_short(exc)}")
    if isinstance(exc, openai.NotFoundError):
        return FatalJudgeError(f"404 model or endpoint not found: {_short(exc)}")
    if isinstance(exc, openai.APIStatusError) and exc.status_code >= 500:
        return RetryableJudgeError(f"{exc.status_code} server error")
    return JudgeError(f"request rejected: {_short(exc)}")


def _retry_after(exc: openai.APIError) -> float | None:
    response = getattr(exc, "response", None)
    if response is None:
        return None
    value = response.headers.get("retry-after")
    try:
        return float(value) if value is not None else None
    except ValueError:
        return None


def _short(exc: Exception) -> str:
    return str(exc)[:200]
