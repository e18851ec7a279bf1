"""judge_calls: one judge call per (content, metric, tier) at a time in a judge shard.

The judge stage shards by content (`operators.judge`), so identical pairs meet in one shard. There the
first event that needs a call key *leads*: its call is made. Every other event that needs the key while
that call is queued behind busy slots, under way, or finished and not yet emitted *follows* it and gets
its outcome, shared (`Outcome.shared`: no call of its own, cost 0). A tier-1 outcome that escalates keeps
answering its key until its content's cascade ends (its tier-2 outcome), so an identical event arriving
meanwhile shares tier 1 and then follows tier 2. After that the verdict cache answers: a final verdict is
stored in the harvest that emits it, before any later lookup, and it answers its key for the rest of that
harvest (the escalations of outcomes shared in it).

A call key is (the verdict-cache key of the content and metric, the tier).
"""

from __future__ import annotations

from collections.abc import Mapping

from judges.runtime import Outcome

__all__ = ["CallKey", "SharedCalls", "shared"]

CallKey = tuple[str, int]  # (cache key of the content and metric, tier)


def shared(o: Outcome) -> Outcome:
    """A call's outcome for an event that waited for it: the verdict (or the error), no calls."""
    return Outcome(o.metric, o.verdict, error=o.error, shared=True, tier=o.tier, judge=o.judge)


class SharedCalls:
    """One shard's calls on their way, their followers, and the outcomes that still answer their key.
    `answered` is what a snapshot keeps (`snapshot`); followers are in the stage's waiting work."""

    def __init__(self, answered: Mapping[CallKey, Outcome] | None = None) -> None:
        self._followers: dict[CallKey, list[str]] = {}
        self._answered: dict[CallKey, Outcome] = dict(answered or {})
        self._finals: list[CallKey] = []  # answering for the current harvest only (their verdicts are cached)

    def follow(self, key: CallKey, event_id: str) -> bool:
        """Whether `event_id` now follows the key's call (one is on its way)."""
        followers = self._followers.get(key)
        if followers is None:
            return False
        followers.append(event_id)
        return True

    def answer(self, key: CallKey) -> Outcome | None:
        """The shared outcome that answers `key` already, if any."""
        o = self._answered.get(key)
        return None if o is None else shared(o)

    def lead(self, key: CallKey) -> None:
        """The key's call is being made."""
        self._followers[key] = []

    def finished(self, key: CallKey, o: Outcome) -> list[str]:
        """The key's call ended with `o`: the events that followed it (they share it)."""
        if o.tier > 1 or o.verdict is None:  # the end of its content's cascade
            self.end_cascade(key)
        return self._followers.pop(key, [])

    def answers(self, key: CallKey, o: Outcome, *, final: bool) -> None:
        """`o` (a call's verdict) answers `key`: until its cascade ends when it escalates, for the
        current harvest when it is final (cached)."""
        self._answered[key] = o
        if final:
            self._finals.append(key)

    def harvested(self) -> None:
        """The harvest is over: its final verdicts are in the cache."""
        for key in self._finals:
            self._answered.pop(key, None)
        self._finals.clear()

    def end_cascade(self, key: CallKey) -> None:
        """The content's cascade for the key's metric ended: its tier-1 verdict answers no more."""
        self._answered.pop((key[0], 1), None)

    def snapshot(self) -> dict[CallKey, Outcome]:
        return dict(self._answered)

    def clear(self) -> None:
        self._followers.clear()
        self._answered.clear()
        self._finals.clear()
