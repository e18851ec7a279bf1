"""What every judge is: a named, versioned scorer of one item for one metric.

Judges come in tiers: tier 0 is free code (`judges.rules`), tiers 1 and 2 are
LLMs behind the `openai` / `anthropic` clients. All of them answer with a
`Verdict` (score in [0, 1] = how strongly the problem the metric looks for is
present; label `flagged` or `ok`; a short explanation).

Errors (kinds of `core.errors`)::

    JudgeError                   rejected for this item (e.g. 400): recorded, not retried
    ├── RetryableJudgeError      (a RetryableError) 429, 5xx, timeouts, connection resets, broken bodies,
    │                            an open circuit breaker
    ├── InvalidVerdictError      output not valid against the verdict schema
    └── FatalJudgeError          (a FatalError) 401/403, unknown model: disable the judge
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Protocol

from core.errors import FatalError, JudgeflowError, RetryableError
from core.records import JudgeCall, Verdict

METRICS = ("toxicity", "hallucination", "pii", "refusal", "jailbreak", "sentiment")

FLAGGED = "flagged"
OK = "ok"


@dataclass(frozen=True, slots=True)
class JudgeItem:
    """What a judge sees: the text to evaluate, as data."""

    input_text: str
    output_text: str
    context: str | None = None


@dataclass(frozen=True, slots=True)
class JudgeResult:
    verdict: Verdict | None
    call: JudgeCall


class JudgeError(JudgeflowError):
    """A judge could not produce a verdict. `call` is set when the call itself
    happened and was billed (e.g. the model answered with an invalid verdict)."""

    def __init__(self, msg: str, *, call: JudgeCall | None = None) -> None:
        super().__init__(msg)
        self.call = call


class RetryableJudgeError(JudgeError, RetryableError):
    """Worth another attempt later. `throttled` (429) means the endpoint is up
    but over its limit: it does not count against the circuit breaker."""

    def __init__(self, msg: str, *, retry_after_s: float | None = None, throttled: bool = False) -> None:
        JudgeError.__init__(self, msg)
        self.retry_after_s = retry_after_s
        self.throttled = throttled


class InvalidVerdictError(JudgeError):
    """The model answered, but not with a verdict that fits the schema."""


class FatalJudgeError(JudgeError, FatalError):
    """Retrying cannot help (bad key, unknown model): the judge is disabled."""


class RuleJudge(Protocol):
    """Tier 0: synchronous, free, deterministic."""

    name: str
    version: str

    def judge(self, metric: str, item: JudgeItem) -> Verdict | None:
        """A verdict, or None when this rule set does not cover `metric`."""
        ...

    def verdict(self, metric: str, flags: Iterable[str]) -> Verdict | None:
        """The verdict for `metric` from names `flags()` returned, without rescanning."""
        ...

    def flags(self, item: JudgeItem) -> frozenset[str]:
        """Every rule that fires on the item, in one pass (sampler strata)."""
        ...


class LLMJudge(Protocol):
    """Tiers 1 and 2: an LLM behind an official client, called asynchronously."""

    name: str  # e.g. "openai/gpt-4o-mini"
    tier: int

    async def judge(self, metric: str, item: JudgeItem) -> JudgeResult:
        """One call for one metric. Raises `JudgeError` subclasses."""
        ...

    async def aclose(self) -> None: ...
