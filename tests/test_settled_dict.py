"""SettledDict behaves as a dict under any sequence of writes, deletes, settles and pickles, and its pickle
re-uses the settled part's bytes only while that part is unchanged."""

from __future__ import annotations

import copy
import pickle

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from operators.settled_dict import SettledDict

KEYS = st.integers(0, 12)
OPS = st.lists(
    st.one_of(
        st.tuples(st.just("set"), KEYS, st.integers()),
        st.tuples(st.just("del"), KEYS, st.just(0)),
        st.tuples(st.just("settle"), st.just(0), st.just(0)),
        st.tuples(st.just("pickle"), st.just(0), st.just(0)),
    ),
    max_size=60,
)


@settings(max_examples=300, deadline=None)
@given(ops=OPS)
def test_it_is_a_dict_through_writes_deletes_settles_and_restores(ops):
    d: SettledDict[int, int] = SettledDict()
    want: dict[int, int] = {}
    snapshots: list[tuple[bytes, dict[int, int]]] = []
    for op, key, value in ops:
        if op == "set":
            d[key] = value
            want[key] = value
        elif op == "del":
            if key in want:
                del d[key]
                del want[key]
            else:
                with pytest.raises(KeyError):
                    del d[key]
        elif op == "settle":
            d.settle()
        else:  # a snapshot, and carry on with the restored copy as a restart would
            blob = pickle.dumps(d)
            snapshots.append((blob, dict(want)))
            d = pickle.loads(blob)
        assert dict(d.items()) == want
        assert len(d) == len(want) and sorted(d) == sorted(want)
        assert all(d.get(k, "none") == want.get(k, "none") for k in range(13))
        assert all((k in d) == (k in want) for k in range(13))
    # every snapshot restores what the mapping held when it was taken, whatever happened after
    for blob, held in snapshots:
        assert pickle.loads(blob) == held


def test_a_pickle_carries_the_settled_bytes_until_they_change():
    d: SettledDict[int, int] = SettledDict({i: i for i in range(1000)})
    first = pickle.dumps(d)
    d[5000] = 1  # recent: the settled bytes are re-used as they are
    assert pickle.loads(pickle.dumps(d)) == {**{i: i for i in range(1000)}, 5000: 1}
    assert d._blob is not None and d._blob in pickle.dumps(d)
    cached = d._blob
    del d[3]  # a settled entry goes: new bytes
    assert d._blob is None
    assert 3 not in pickle.loads(pickle.dumps(d))
    assert d._blob is not cached
    assert len(first) > 1000


def test_copies_are_independent():
    d: SettledDict[str, int] = SettledDict({"a": 1}, {"b": 2})
    for c in (copy.copy(d), copy.deepcopy(d)):
        c["b"] = 3
        del c["a"]
        assert dict(d.items()) == {"a": 1, "b": 2}
