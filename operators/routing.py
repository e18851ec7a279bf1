"""routing: which worker bytewax sends a key to, so that a step with a fixed set of keys can deal
them evenly over the workers.

bytewax 0.21 sends an item of a stateful step to worker `SipHash-1-3(key) mod workers`: Rust's
`DefaultHasher` (SipHash-1-3 with both keys zero) over the key's UTF-8 bytes and a 0xff byte (Rust's
`Hash for str`), the result taken modulo the number of workers (`PartitionFn` in bytewax's
`src/timely.rs`). `worker_of` computes the same.

A step keyed by a handful of fixed keys (the re-delivery step's 16 shards) gets whatever split those
keys hash to: `"0"`…`"15"` fall 6 / 10 on two workers, and everything behind that step then runs 62.5%
on one of them. `spread_keys` picks keys whose hashes are their index modulo 840, so key i goes to
worker i mod W for every W from 1 to 8: dealt round robin.

Only evenness depends on this. Rust does not promise `DefaultHasher` stays SipHash-1-3; if a bytewax
release changed it, the keys would land where its hash sends them — still correct, just not dealt
evenly. `tests/test_routing.py` checks `worker_of` against bytewax itself.
"""

from __future__ import annotations

import functools

_M = (1 << 64) - 1
_ROUND_ROBIN_UP_TO = 840  # lcm(1..8): key i lands on worker i mod W for any W up to 8
# more keys than this are left to the hash: they spread well enough, and the search costs ~6 ms a key
SEARCHED_UP_TO = 64


def _rotl(x: int, b: int) -> int:
    return ((x << b) | (x >> (64 - b))) & _M


def siphash13(data: bytes) -> int:
    """SipHash-1-3 with both keys zero, as Rust's `DefaultHasher`."""
    v0, v1, v2, v3 = 0x736F6D6570736575, 0x646F72616E646F6D, 0x6C7967656E657261, 0x7465646279746573

    def sip_round() -> None:
        nonlocal v0, v1, v2, v3
        v0 = (v0 + v1) & _M
        v1 = _rotl(v1, 13) ^ v0
        v0 = _rotl(v0, 32)
        v2 = (v2 + v3) & _M
        v3 = _rotl(v3, 16) ^ v2
        v0 = (v0 + v3) & _M
        v3 = _rotl(v3, 21) ^ v0
        v2 = (v2 + v1) & _M
        v1 = _rotl(v1, 17) ^ v2
        v2 = _rotl(v2, 32)

    n = len(data)
    end = n - n % 8
    for i in range(0, end, 8):
        m = int.from_bytes(data[i : i + 8], "little")
        v3 ^= m
        sip_round()
        v0 ^= m
    last = ((n & 0xFF) << 56) | int.from_bytes(data[end:], "little")
    v3 ^= last
    sip_round()
    v0 ^= last
    v2 ^= 0xFF
    for _ in range(3):
        sip_round()
    return v0 ^ v1 ^ v2 ^ v3


def key_hash(key: str) -> int:
    """The hash bytewax routes `key` by: SipHash-1-3 of its bytes and 0xff (Rust's `Hash for str`)."""
    return siphash13(key.encode() + b"\xff")


def worker_of(key: str, workers: int) -> int:
    """The worker (0-based) bytewax sends a stateful step's item with `key` to."""
    return key_hash(key) % workers


@functools.cache
def spread_keys(n: int) -> tuple[str, ...]:
    """`n` keys, the i-th sent to worker i mod W by bytewax for every W from 1 to 8 (up to
    `SEARCHED_UP_TO` keys; beyond that `"0"`…: left to the hash). Key i is `"i"` or `"i.<salt>"`."""
    if n > SEARCHED_UP_TO:
        return tuple(str(i) for i in range(n))
    keys = []
    for i in range(n):
        salt = 0
        key = str(i)
        while key_hash(key) % _ROUND_ROBIN_UP_TO != i % _ROUND_ROBIN_UP_TO:
            salt += 1
            key = f"{i}.{salt}"
        keys.append(key)
    return tuple(keys)
