"""The progress board: how far every process of a cluster has read its Kafka partitions.

With several processes (`judgeflow run -i I -a ADDRS`) each reads its own partitions, and
`operators.event_time` must know the others' to align partitions and to tell live input from a
backlog for the whole cluster. Every round each process publishes the state of the partitions
it reads — the time of the next message it may release, whether it is caught up, how far the flow has
processed what it released (`event_time.Reading`), or that it is done, in which epoch —
as the metadata of a committed offset in a consumer group of its own on the input brokers (a side
channel: nothing in it is data; judgeflow's source never commits offsets), and reads everyone's back
into `event_time.INPUT` as remote partitions.

An entry written before this process started (an earlier run's) or not refreshed for `stale_s` counts
as not heard: it holds every partition at its start until its owner writes again. So a slow or stopped
peer delays the others; it never lets them run ahead. Clocks of the processes' hosts are assumed within
a second or two of each other (NTP); a larger skew only delays.

How often. A round every `interval_s` (0.2 s) while the input is live, every `replay_interval_s`
(0.02 s) while a backlog is read (`event_time.INPUT.replaying()`: a replay, a backfill, a catch-up).
In a backlog the processes' partitions advance in step — each at most `kafka.align_partitions_s` of
event time past the slowest one it has heard of — so a replay across processes moves at most that much
event time per round: at 0.2 s, 5 s of alignment and traffic of 500 events a second of event time, the
cluster read ~9,000 events/s whatever its size (`bench/scale_out.py`). A round is one offset commit and
one offset fetch: ~100 requests a second per process to the brokers while replaying.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import xxhash
from confluent_kafka import Consumer, KafkaException, TopicPartition

from operators import event_time
from operators.owed import JOINED, OWED, OwedWork

log = logging.getLogger(__name__)


def board_group(topics: Sequence[str], addresses: Sequence[str], database: str) -> str:
    """The consumer group of one cluster's board: its processes share the addresses, topics and
    database; another cluster (a backfill beside the live job) gets another group."""
    ident = "|".join([",".join(sorted(topics)), ";".join(addresses), database])
    return f"judgeflow-progress.{xxhash.xxh3_64_hexdigest(ident.encode())}"


class ProgressBoard:
    """Publishes this process's partitions and reads the others' (see the module docstring)."""

    def __init__(
        self,
        brokers: str,
        topics: Sequence[str],
        *,
        group: str,
        extra: Mapping[str, Any] | None = None,
        interval_s: float = 0.2,
        replay_interval_s: float = 0.02,
        stale_s: float = 10.0,
        progress: event_time.InputProgress = event_time.INPUT,
        owed: OwedWork = OWED,
        joined: OwedWork = JOINED,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._topics = list(topics)
        self._interval_s = interval_s
        self._replay_interval_s = replay_interval_s
        self._stale_ms = int(stale_s * 1000)
        self._progress = progress
        self._owed = owed
        self._joined = joined
        self._clock = clock
        self._started_ms = int(clock() * 1000)
        self._consumer = Consumer(
            {**(extra or {}), "bootstrap.servers": brokers, "group.id": group, "enable.auto.commit": False}
        )
        self._parts: list[TopicPartition] = []
        self._mine: set[str] = set()  # every partition this process has read (done once it stops)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._unheard_since: dict[str, float] = {}

    def open(self) -> None:
        """List the partitions and mark every one unheard, so nothing runs ahead before its owner speaks."""
        meta = self._consumer.list_topics(timeout=10)
        for topic in self._topics:
            for idx in sorted(meta.topics[topic].partitions):
                self._parts.append(TopicPartition(topic, idx))
        self._progress.set_remote({self._name(tp): None for tp in self._parts}, self._clock())
        for work in (self._owed, self._joined):
            work.set_remote({self._name(tp): None for tp in self._parts})  # (until the first round)

    def start(self) -> None:
        """`open`, then publish and read in rounds (`wait_s` apart) in a background thread."""
        self.open()
        self._thread = threading.Thread(target=self._run, name="judgeflow-progress-board", daemon=True)
        self._thread.start()

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        self._consumer.close()

    def step(self) -> None:
        """One round: publish this process's partitions, then read the others'."""
        now = self._clock()
        now_ms = int(now * 1000)
        local = self._progress.local()
        owes = {"o": self._owed.local_ms(), "j": self._joined.local_ms()}  # (after the partitions)
        self._mine.update(local)
        offsets = []
        for tp in self._parts:
            name = self._name(tp)
            if name not in self._mine:
                continue
            published = _publish(local.get(name), now_ms, owes)
            offsets.append(TopicPartition(tp.topic, tp.partition, 0, metadata=json.dumps(published)))
        if offsets:
            self._consumer.commit(offsets=offsets, asynchronous=False)
        theirs = [tp for tp in self._parts if self._name(tp) not in self._mine]
        states: dict[str, event_time.Reading | None] = {}
        owed: dict[str, tuple[int, int | None] | None] = {}
        joined: dict[str, tuple[int, int | None] | None] = {}
        for tp in self._consumer.committed(theirs, timeout=10) if theirs else []:
            name = self._name(tp)
            entry = _entry(tp.metadata)
            if entry is None or not self._started_ms <= entry["t"] or entry["t"] < now_ms - self._stale_ms:
                states[name] = owed[name] = joined[name] = None
                self._warn_unheard(name, now)
                continue
            self._unheard_since.pop(name, None)
            states[name] = _reading(entry)
            if not (entry.get("d") and "e" not in entry):  # (closed: its process owes nothing)
                owed[name], joined[name] = _owes(entry, "o"), _owes(entry, "j")
        self._progress.set_remote(states, now)
        self._owed.set_remote(owed)
        self._joined.set_remote(joined)

    def _run(self) -> None:
        warned_at = float("-inf")
        while not self._stop.is_set():
            try:
                self.step()
            except KafkaException as exc:  # brokers away, or no ACL for the group: keep the states, retry
                if time.monotonic() - warned_at >= 30:  # once every 30 s, not every round
                    log.warning("progress board: %s (the processes wait for each other meanwhile)", exc)
                    warned_at = time.monotonic()
            self._stop.wait(self.wait_s())

    def wait_s(self) -> float:
        """How long until the next round: short while a backlog is read (see the module docstring)."""
        return self._replay_interval_s if self._progress.replaying() else self._interval_s

    @staticmethod
    def _name(tp: TopicPartition) -> str:
        return (
            f"{tp.partition}-{tp.topic}"  # bytewax's name of a Kafka partition, as flows.sources registers it
        )

    def _warn_unheard(self, name: str, now: float) -> None:
        since = self._unheard_since.setdefault(name, now)
        if now - since >= 30:
            log.warning(
                "progress board: nothing heard of %s for %.0f s; waiting for its process", name, now - since
            )
            self._unheard_since[name] = now


def _publish(
    state: event_time.Reading | None, now_ms: int, owes: dict[str, tuple[int, int | None]]
) -> dict[str, Any]:
    """A board entry: a partition this process reads ("f", "c": alignment and liveness; "e", "p": the
    epoch it reads in, where it stood as far as the flow has processed), or has read to its end ("d",
    in epoch "e"; without "e": closed, nothing of it in flight); and while the process runs, what its
    stages owe the judge-spend windows ("o") and what its OTLP join holds ("j"), each as the epoch it
    counted to and the earliest event time."""
    if state is None:
        return {"t": now_ms, "d": 1}
    owing = {k: list(v) for k, v in owes.items()}
    if state.ended:
        return {"t": now_ms, "d": 1, "e": state.epoch, "p": state.processed_ms} | owing
    entry = {"t": now_ms, "f": state.frontier_ms, "c": state.caught_up, "e": state.epoch}
    return entry | {"p": state.processed_ms} | owing


def _owes(entry: dict[str, Any], field: str) -> tuple[int, int | None] | None:
    """What a board entry says its process owes or holds (`field`; None: it does not say: an older
    version, which holds those windows as a process not heard of does)."""
    o = entry.get(field)
    if not (isinstance(o, list) and len(o) == 2 and isinstance(o[0], int)):
        return None
    return o[0], o[1] if isinstance(o[1], int) else None


def _reading(entry: dict[str, Any]) -> event_time.Reading:
    epoch = entry.get("e")
    if entry.get("d"):
        epoch = epoch if isinstance(epoch, int) else -1  # (-1: closed, nothing of it in flight)
        return event_time.Reading(None, True, epoch, entry.get("p"), ended=True)
    epoch = epoch if isinstance(epoch, int) else 0
    return event_time.Reading(entry.get("f"), bool(entry.get("c")), epoch, entry.get("p"))


def _entry(metadata: str | None) -> dict[str, Any] | None:
    if not metadata:
        return None
    try:
        entry = json.loads(metadata)
    except ValueError:
        return None
    return entry if isinstance(entry, dict) and isinstance(entry.get("t"), int) else None
