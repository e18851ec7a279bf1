"""How far a backfill has got, shown while it runs: done / total from the range's end offsets, the
recent rate and ETA, and the partitions furthest behind — a rich live panel on a terminal, one line
every few seconds otherwise (`ProgressDisplay`), read from the source's positions
(`flows.sources.POSITIONS`) by `ProgressTracker`."""

from __future__ import annotations

import logging
import sys
import threading
import time
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import IO, Any

from flows.sources import POSITIONS, TopicPartitionKey

Ranges = dict[TopicPartitionKey, tuple[int, int]]  # (start, stop) offsets per partition


@dataclass(frozen=True)
class ProgressState:
    done: int  # messages of the range handed to the flow, over all runs
    total: int
    this_run: int  # ...of them in this run
    elapsed_s: float  # this run
    rate: float | None  # messages/s, recent
    eta_s: float | None
    lags: dict[TopicPartitionKey, int]  # messages left per partition


class ProgressTracker:
    """Done, rate and ETA from the source's read positions (`flows.sources.POSITIONS`)."""

    def __init__(self, ranges: Ranges, *, now: float, window_s: float = 30.0) -> None:
        self._ranges = ranges
        self._started = now
        self._first: dict[TopicPartitionKey, int] = {}  # where each partition was at its first poll
        self._samples: deque[tuple[float, int]] = deque([(now, 0)])
        self._window_s = window_s

    def observe(
        self,
        positions: Mapping[TopicPartitionKey, int],
        now: float,
        opened: Mapping[TopicPartitionKey, int] | None = None,
    ) -> ProgressState:
        """`positions`: the next offset per partition; `opened`: where each was when this run opened
        it (else: where it was first seen)."""
        done = this_run = 0
        lags: dict[TopicPartitionKey, int] = {}
        for tp, (start, stop) in self._ranges.items():
            at = min(max(positions.get(tp, start), start), stop)
            if tp in positions:
                seen = (opened or {}).get(tp, at)
                first = self._first.setdefault(tp, min(max(seen, start), stop))
            else:
                first = at
            done += at - start
            this_run += at - first
            lags[tp] = stop - at
        samples = self._samples
        samples.append((now, this_run))
        while len(samples) > 2 and now - samples[1][0] >= self._window_s:
            samples.popleft()
        since, n0 = samples[0]
        rate = (this_run - n0) / (now - since) if now > since else None
        left = sum(lags.values())
        eta = 0.0 if left == 0 else (left / rate if rate else None)
        total = sum(b - a for a, b in self._ranges.values())
        return ProgressState(done, total, this_run, now - self._started, rate, eta, lags)


def duration(seconds: float | None) -> str:
    if seconds is None:
        return "?"
    return str(timedelta(seconds=round(seconds)))


def progress_line(s: ProgressState, *, max_partitions: int = 8) -> str:
    """One plain-text line: done/total, rate, ETA and the partitions with the most left."""
    pct = 100.0 * s.done / s.total if s.total else 100.0
    rate = "?" if s.rate is None else f"{s.rate:,.0f}"
    behind = sorted(((lag, tp) for tp, lag in s.lags.items() if lag), reverse=True)
    lag = " ".join(f"{t}[{p}]={n:,}" for n, (t, p) in behind[:max_partitions])
    if len(behind) > max_partitions:
        lag += f" (+{len(behind) - max_partitions} more)"
    return (
        f"backfill: {s.done:,}/{s.total:,} events ({pct:.1f}%), {rate} events/s, "
        f"ETA {duration(s.eta_s)}, lag {lag or 'none'}"
    )


class ProgressDisplay:
    """Shows progress every `interval_s` while the flow runs: a live rich display when `stream` is
    a terminal, else one log line per interval (and one at the end)."""

    def __init__(self, ranges: Ranges, stream: IO[str], *, interval_s: float = 10.0) -> None:
        self._tracker = ProgressTracker(ranges, now=time.monotonic())
        self._stream = stream
        self._interval_s = interval_s
        self._tty = bool(getattr(stream, "isatty", lambda: False)())
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._live: Any = None
        self._moved: list[logging.StreamHandler] = []
        self._lock = threading.Lock()  # the rich refresh thread and stop() both observe

    def _observe(self) -> ProgressState:
        with self._lock:
            return self._tracker.observe(POSITIONS.snapshot(), time.monotonic(), POSITIONS.opened_at())

    def start(self) -> None:
        if self._tty:
            from rich.console import Console
            from rich.live import Live

            console = Console(file=self._stream)
            self._live = Live(
                get_renderable=lambda: _rich_view(self._observe()), console=console, refresh_per_second=4
            )
            self._live.start()
            # log lines written to the terminal go through rich's redirect, above the display
            self._moved = [
                h
                for h in logging.getLogger().handlers
                if isinstance(h, logging.StreamHandler) and h.stream is self._stream
            ]
            for h in self._moved:
                h.setStream(sys.stderr)
            return
        self._thread = threading.Thread(target=self._log_loop, name="backfill-progress", daemon=True)
        self._thread.start()

    def _log_loop(self) -> None:
        while not self._stop.wait(self._interval_s):
            self._write(progress_line(self._observe()))

    def _write(self, line: str) -> None:
        stamp = datetime.now(tz=UTC).strftime("%Y-%m-%d %H:%M:%S")
        print(f"{stamp} {line}", file=self._stream, flush=True)

    def stop(self) -> ProgressState:
        """Stop showing; the final state (also shown once more)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        final = self._observe()
        if self._live is not None:
            self._live.update(_rich_view(final), refresh=True)
            self._live.stop()
            for h in self._moved:
                h.setStream(self._stream)
        else:
            self._write(progress_line(final))
        return final


def _rich_view(s: ProgressState, *, max_partitions: int = 12) -> Any:
    from rich.console import Group
    from rich.progress_bar import ProgressBar
    from rich.table import Table

    head = Table.grid(padding=(0, 1))
    rate = "?" if s.rate is None else f"{s.rate:,.0f}"
    head.add_row(
        "backfill",
        ProgressBar(total=max(s.total, 1), completed=s.done, width=40),
        f"{s.done:,}/{s.total:,} events",
        f"{rate} events/s",
        f"ETA {duration(s.eta_s)}",
        f"elapsed {duration(s.elapsed_s)}",
    )
    parts = Table("partition", "lag", box=None, padding=(0, 2), show_edge=False)
    behind = sorted(((lag, tp) for tp, lag in s.lags.items()), reverse=True)
    for lag, (topic, p) in behind[:max_partitions]:
        parts.add_row(f"{topic}[{p}]", f"{lag:,}")
    if len(behind) > max_partitions:
        parts.add_row(f"(+{len(behind) - max_partitions} more)", "")
    return Group(head, parts)
