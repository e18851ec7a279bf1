"""librdkafka's log, through Python logging, one line per kind of line per interval.

While a broker is down librdkafka logs every failed connection attempt, and it tries again many times
a second (a metadata refresh through the bootstrap connection); each Kafka partition the job reads has
its own consumer. Measured on the mock cluster: one broker down for 30 s under 4 partitions wrote 2,339
lines to stderr (~20 a second per partition), bypassing the job's logging. Here they go to the
`librdkafka` logger, and a line like one already written (the same level, facility, connection thread
and text with its numbers left out), by any client, within `EVERY_S` is counted instead; the next line
of that kind says how many were held back. The partitions' own warnings say when a broker stops and
starts answering (`flows.kafka_partition`).

confluent-kafka hands the log to the `logger` configuration property's `log` method, on the thread
that polls the client (a consumer's `consume`, a producer's `poll` or `flush`).
"""

from __future__ import annotations

import logging
import re
import threading
import time
from collections.abc import Callable

EVERY_S = 30.0  # at most one line of a kind per this many seconds

_NUMBERS = re.compile(r"\d+")


class LibrdkafkaLog:
    """A `logger` for confluent-kafka clients; one instance can serve all of a process's clients."""

    def __init__(
        self,
        logger: logging.Logger | None = None,
        every_s: float = EVERY_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._logger = logger or logging.getLogger("librdkafka")
        self._every_s = every_s
        self._clock = clock
        self._lock = threading.Lock()
        self._kinds: dict[tuple[int, str, str], list[float]] = {}  # kind -> [written at, held back since]

    def log(self, level: int, fmt: str, *args: object) -> None:
        # confluent-kafka calls log(level, "%s [%s] %s", facility, client name, text)
        facility, client, text = (str(a) for a in args) if len(args) == 3 else ("", "", fmt % args)
        kind = (level, facility, _NUMBERS.sub("N", text))
        now = self._clock()
        with self._lock:
            seen = self._kinds.get(kind)
            if seen is not None and now - seen[0] < self._every_s:
                seen[1] += 1
                return
            held, since = (0, now) if seen is None else (int(seen[1]), seen[0])
            self._kinds[kind] = [now, 0]
        suffix = f" ({held} more like it held back over the last {now - since:.0f} s)" if held else ""
        self._logger.log(level, "%s [%s] %s%s", facility, client, text, suffix)


LIBRDKAFKA_LOG = LibrdkafkaLog()  # the process's clients share it: an outage is one line, not one per client
