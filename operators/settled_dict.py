"""SettledDict: a mapping for big, slowly changing snapshot state, whose pickle re-uses bytes.

A stateful step's snapshot pickles its whole state every epoch. Where most of a large mapping has not
changed since the last epoch (an alert ledger's newest row per window key: hundreds per tenant, a few
written per epoch), that is mostly the same bytes again. A `SettledDict` keeps the entries written
since its last `settle()` apart from the settled rest, and pickles the settled part once: until it
changes (a delete, or the next `settle()`), each pickle carries those bytes as they are plus the
recent entries.

A value changed in place must be written again (`d[k] = v`) after the change: that makes it recent, and
a recent entry wins over the settled one when the pickle is loaded. A change inside a settled value that
is not written again would not reach the cached bytes.
"""

from __future__ import annotations

import pickle
from collections.abc import Iterator
from typing import Any, Generic, TypeVar

K = TypeVar("K")
V = TypeVar("V")

_MISSING: Any = object()


class SettledDict(Generic[K, V]):
    """The dict operations the ledger uses, over settled entries plus the recent ones (which win)."""

    __slots__ = ("_blob", "_recent", "_settled")

    def __init__(self, settled: dict[K, V] | None = None, recent: dict[K, V] | None = None) -> None:
        self._settled: dict[K, V] = settled if settled is not None else {}
        self._recent: dict[K, V] = recent if recent is not None else {}
        self._blob: bytes | None = None  # the settled part pickled, while it is unchanged

    def get(self, key: K, default: Any = None) -> Any:
        value = self._recent.get(key, _MISSING)
        return self._settled.get(key, default) if value is _MISSING else value

    def __getitem__(self, key: K) -> V:
        value = self._recent.get(key, _MISSING)
        return self._settled[key] if value is _MISSING else value

    def __setitem__(self, key: K, value: V) -> None:
        self._recent[key] = value

    def __delitem__(self, key: K) -> None:
        found = self._recent.pop(key, _MISSING) is not _MISSING
        if key in self._settled:
            del self._settled[key]
            self._blob = None
            found = True
        if not found:
            raise KeyError(key)

    def __contains__(self, key: object) -> bool:
        return key in self._recent or key in self._settled

    def __iter__(self) -> Iterator[K]:
        yield from self._settled
        yield from (k for k in self._recent if k not in self._settled)

    def __len__(self) -> int:
        return len(self._settled) + sum(1 for k in self._recent if k not in self._settled)

    def items(self) -> list[tuple[K, V]]:
        return [(k, self[k]) for k in self]

    def __eq__(self, other: object) -> bool:
        if isinstance(other, SettledDict):
            return dict(self.items()) == dict(other.items())
        return isinstance(other, dict) and dict(self.items()) == other

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return f"SettledDict({dict(self.items())!r})"

    def __copy__(self) -> SettledDict[K, V]:
        return SettledDict(dict(self._settled), dict(self._recent))

    def settle(self) -> None:
        """The recent entries join the settled ones (whose bytes are made again at the next pickle)."""
        if self._recent:
            self._settled.update(self._recent)
            self._recent = {}
            self._blob = None

    def __reduce__(self) -> tuple[Any, ...]:
        if self._blob is None:
            self._blob = pickle.dumps(self._settled, protocol=pickle.HIGHEST_PROTOCOL)
        return (_restore, (self._blob, self._recent))


def _restore(blob: bytes, recent: dict[Any, Any]) -> SettledDict[Any, Any]:
    restored: SettledDict[Any, Any] = SettledDict(pickle.loads(blob), recent)  # noqa: S301 (our own state)
    restored._blob = blob  # the bytes it was made from
    return restored
