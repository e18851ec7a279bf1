"""The local model tier: trained classifiers that run in the process, with no API key.

A local model answers a metric at tier 1, before the tier-1 LLM: free, deterministic,
batch-scored (one vectorizer and one model call for a whole batch of events). The
cascade (`judges.cascade.JudgePlan.asks_llm`) sends an event on to the LLM only when
the local score is unsure; a confident local verdict is final and saves the call.

Models ship their weights inside a PyPI package, so nothing is downloaded at run time:

    profanity-check   toxicity   alt-profanity-check: TF-IDF + a calibrated linear SVM
                                 trained on human-labelled comments (~1 MB in the wheel)

The package is an optional extra (`pip install 'judgeflow[local]'`, it brings
scikit-learn); without it `load_local_models` logs one line and the tier is off.
A verdict's judge names the model and the package version that made it
(`local/profanity-check-1.9.1`), and the version is part of the verdict-cache keys
(`flows.deps.judge_version`), so an upgrade re-judges instead of reusing verdicts.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from importlib import metadata
from typing import Any, Protocol

from core.records import Verdict
from judges.base import FLAGGED, OK, JudgeItem

log = logging.getLogger(__name__)

LOCAL_TIER = 1  # local verdicts are tier-1 verdicts: above the rules, in place of the tier-1 LLM
_DIGITS = 6  # scores are rounded: the same text gives the same score, whatever it is batched with


class LocalModel(Protocol):
    """A classifier that scores texts for one metric: 1.0 = the problem is present."""

    name: str  # "local/<model>-<package version>": the judge of its verdicts
    metric: str

    def scores(self, texts: Sequence[str]) -> list[float]:
        """One score in [0, 1] per text, in order; one call for the whole batch."""
        ...


class ProfanityCheck:
    """Toxicity from alt-profanity-check's TF-IDF vectorizer and calibrated linear SVM."""

    metric = "toxicity"
    package = "alt-profanity-check"

    def __init__(self) -> None:
        # the package loads its two joblib files (shipped in its wheel) when imported
        from profanity_check import profanity_check as pc

        self._vectorizer = pc.vectorizer
        self._model = pc.model
        self._linear = _linear_parts(pc.model)
        self.name = f"local/profanity-check-{metadata.version(self.package)}"

    def scores(self, texts: Sequence[str]) -> list[float]:
        if not texts:
            return []
        x = self._vectorizer.transform(list(texts))
        if self._linear is None:
            proba = self._model.predict_proba(x)[:, 1]
        else:  # the same arithmetic as predict_proba, without its per-call checks (~2.6 ms a call)
            from scipy.special import expit

            w, b, a, c = self._linear
            proba = expit(-(a * (x @ w + b) + c)).mean(axis=1)
        return [round(float(p), _DIGITS) for p in proba]


def _linear_parts(model: Any) -> tuple[Any, Any, Any, Any] | None:
    """A calibrated ensemble of binary linear models as arrays: (weights, intercepts, sigmoid a, b),
    one column per fold, so that P(class 1) = mean(expit(-(a * (x @ w + b) + c))), which is
    what scikit-learn's `CalibratedClassifierCV.predict_proba` computes for sigmoid calibration.
    None for any other shape (then `predict_proba` itself is called)."""
    import numpy as np

    folds = getattr(model, "calibrated_classifiers_", None)
    if not folds or getattr(model, "method", None) != "sigmoid" or len(model.classes_) != 2:
        return None
    if any(not hasattr(f.estimator, "coef_") or len(f.calibrators) != 1 for f in folds):
        return None
    w = np.column_stack([f.estimator.coef_.ravel() for f in folds])
    b = np.array([f.estimator.intercept_[0] for f in folds])
    a = np.array([f.calibrators[0].a_ for f in folds])
    c = np.array([f.calibrators[0].b_ for f in folds])
    return w, b, a, c


# model name (as in `[judges.local] models`) -> (class, the pip extra that installs it)
MODELS: dict[str, tuple[type, str]] = {"profanity-check": (ProfanityCheck, "local")}
MODEL_METRICS = {"profanity-check": ProfanityCheck.metric}


@dataclass(frozen=True)
class LocalJudge:
    """The loaded local models, by metric, and the score at which a verdict is `flagged`."""

    models: Mapping[str, LocalModel]
    flag_at: float = 0.5

    @property
    def metrics(self) -> frozenset[str]:
        return frozenset(self.models)

    @property
    def version(self) -> str:
        """What local verdicts depend on (part of the verdict-cache keys)."""
        names = ",".join(f"{m}={self.models[m].name}" for m in sorted(self.models))
        return f"{names}|flag_at={self.flag_at}"

    def judge_many(self, metric: str, items: Sequence[JudgeItem]) -> list[Verdict]:
        """Verdicts for `metric` on the items' responses, scored in one batch."""
        model = self.models[metric]
        return [self._verdict(model, s) for s in self._scores(metric, items)]

    def flagged_many(self, metric: str, items: Sequence[JudgeItem]) -> list[bool]:
        """Whether `judge_many` would label each item `flagged` (the same text, one batch)."""
        return [s >= self.flag_at for s in self._scores(metric, items)]

    def _scores(self, metric: str, items: Sequence[JudgeItem]) -> list[float]:
        return self.models[metric].scores([i.output_text for i in items])  # the response is judged

    def _verdict(self, model: LocalModel, score: float) -> Verdict:
        label = FLAGGED if score >= self.flag_at else OK
        why = f"{model.name} scored the response {score:.3f} (flagged from {self.flag_at})"
        return Verdict(
            metric=model.metric, score=score, label=label, explanation=why, judge=model.name, tier=LOCAL_TIER
        )


def load_local_models(models: Mapping[str, str], *, flag_at: float = 0.5) -> LocalJudge | None:
    """Load `metric -> model name`; a model whose package is missing is left out with a
    log line saying how to install it. None when no model could be loaded (the tier is off)."""
    loaded: dict[str, LocalModel] = {}
    for metric, name in models.items():
        cls, extra = MODELS[name]
        try:
            model = cls()
        except ImportError as exc:
            log.warning(
                "local model tier: %s for %s is off (%s); install it with `pip install 'judgeflow[%s]'`",
                name,
                metric,
                exc,
                extra,
            )
            continue
        log.info("local model tier: %s judges %s", model.name, metric)
        loaded[metric] = model
    return LocalJudge(loaded, flag_at=flag_at) if loaded else None
