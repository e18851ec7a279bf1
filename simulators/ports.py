"""A free loopback port for a server the tests or the benchmarks start, below the kernel's ephemeral
range.

A port from `bind(("127.0.0.1", 0))` comes from the ephemeral range, the range every outgoing
connection also takes its local port from. Between the moment the port is picked and the moment the
server binds it, any connection on the machine can take it: the server then fails with "Address
already in use", and in a bytewax cluster the other processes with "Send thread panic". Below the
range only an explicit bind takes a port, so the pick is checked with one."""

from __future__ import annotations

import random
import socket
from pathlib import Path

_LOWEST = 10_000  # above the registered ports most services use
_PICK = random.Random()  # its own generator: tests that seed `random` do not all pick the same port


def ephemeral_range() -> tuple[int, int]:
    """The kernel's range for automatically assigned local ports (Linux's default if unknown)."""
    try:
        low, high = Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()
        return int(low), int(high)
    except (OSError, ValueError):
        return 32768, 60999


def free_port() -> int:
    """A loopback TCP port nothing is bound to, outside the ephemeral range when there is room."""
    low, _ = ephemeral_range()
    if low - _LOWEST >= 1000:
        for _ in range(200):
            port = _PICK.randrange(_LOWEST, low)
            with socket.socket() as s:
                try:
                    s.bind(("127.0.0.1", port))
                except OSError:
                    continue
                return port
    with socket.socket() as s:  # no room below the range (or none free): the kernel's pick
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])
