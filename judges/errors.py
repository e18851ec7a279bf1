"""Map the official clients' exceptions onto the judge error hierarchy (`judges.base`).

`openai` and `anthropic` are generated from the same template, so both raise
the same family of exceptions (`RateLimitError`, `APITimeoutError`,
`InternalServerError` and its 503/504/529 subclasses...); one classifier
serves both, given the SDK module.
"""

from __future__ import annotations

from types import ModuleType

from judges.base import FatalJudgeError, JudgeError, RetryableJudgeError

# statuses worth retrying besides 5xx: request timeout, conflict (a lock on the provider's side)
_RETRYABLE_4XX = frozenset({408, 409})


def classify_sdk_error(exc: Exception, sdk: ModuleType) -> JudgeError:
    """A `JudgeError` for an exception raised by `sdk` (the `openai` or `anthropic` module)."""
    if isinstance(exc, sdk.RateLimitError):
        return RetryableJudgeError(
            f"429 rate limited: {_short(exc)}", retry_after_s=retry_after(exc), throttled=True
        )
    if isinstance(exc, sdk.APITimeoutError):
        return RetryableJudgeError("timeout")
    if isinstance(exc, sdk.APIConnectionError):
        return RetryableJudgeError(f"connection error: {_short(exc)}")
    if isinstance(exc, sdk.AuthenticationError | sdk.PermissionDeniedError):
        return FatalJudgeError(f"{exc.status_code} not authorised: {_short(exc)}")
    if isinstance(exc, sdk.NotFoundError):
        return FatalJudgeError(f"404 model or endpoint not found: {_short(exc)}")
    if isinstance(exc, sdk.APIStatusError):
        if exc.status_code >= 500 or exc.status_code in _RETRYABLE_4XX:
            return RetryableJudgeError(f"{exc.status_code} server error", retry_after_s=retry_after(exc))
        return JudgeError(f"{exc.status_code} request rejected: {_short(exc)}")
    return JudgeError(f"request failed: {type(exc).__name__}: {_short(exc)}")


def retry_after(exc: Exception) -> float | None:
    """Seconds from `retry-after-ms` or `retry-after` (numeric form), if the response had them."""
    response = getattr(exc, "response", None)
    if response is None:
        return None
    for header, scale in (("retry-after-ms", 0.001), ("retry-after", 1.0)):
        value = response.headers.get(header)
        if value is None:
            continue
        try:
            return max(0.0, float(value) * scale)
        except ValueError:
            continue  # an HTTP date: fall back to our own back-off
    return None


def _short(exc: Exception) -> str:
    return str(exc)[:200]
