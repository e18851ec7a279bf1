"""`judgeflow backfill`: re-run the flow over a slice of the Kafka topics into another database.

A backfill reads, per partition, the offsets [start, stop) fixed when it first
starts (from `--from` / `--to`: times looked up with `offsets_for_time`,
explicit offsets, or the high watermark at start when `--to` is omitted),
runs the same dataflow (`flows.judgeflow.build_flow`) on them and ends by
itself. Nothing past `--to` is read into the flow.

It writes into a database of its own (`--into`), never the live one: the
evaluation rows carry no rubric version (their id is event, metric and tier),
so re-judged verdicts written to the live database would replace the old ones,
and the cost windows at the slice's edges hold only the slice's events, which
would replace complete rows. Side by side, the two databases compare by
`(event_id, metric, tier)`. It shares nothing with the live job that it could
change: no Kafka alerts or dead letters, no webhooks, its own in-process
control store (sampling overrides set by hand on the live job do not apply).
The verdict cache is shared — its keys include the judge version (rubrics,
rules, models), so a new rubric never reuses an old verdict.

Its recovery directory (default `.judgeflow/backfill/<database>/<from>--<to>`)
holds the bytewax snapshots and `backfill.json`, the resolved offsets: after
Ctrl-C the same command resumes and ends at the same offsets.

Progress comes from the offsets the source has handed to the flow
(`flows.sources.POSITIONS`): done / total messages, messages/s, ETA and the lag
of each partition, as a live display on a terminal and as log lines otherwise.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import re
import signal
import threading
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import IO

from flows.backfill_progress import (
    ProgressDisplay,
    ProgressState,
    Ranges,
    duration,
)
from flows.config import ConfigError, KafkaConfig, Settings
from flows.sources import POSITIONS, TopicPartitionKey

STATE_FILE = "backfill.json"
DEFAULT_ROOT = Path(".judgeflow/backfill")
SYNTAX = (
    "an RFC 3339 time (2026-11-28T00:00:00Z; a bare date is 00:00 UTC), epoch milliseconds "
    "(1795824000000), or offsets per partition [TOPIC:]PARTITION:OFFSET,... naming every partition"
)
_DATABASE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,63}$")
_OFFSET = re.compile(r"^(?:(?P<topic>[A-Za-z0-9._-]+):)?(?P<partition>\d+):(?P<offset>\d+)$")


class BackfillError(ConfigError):
    """A backfill that cannot start as asked; the message says what to change."""


# --- the range ------------------------------------------------------------------------


@dataclass(frozen=True)
class Bound:
    """One end of the range: a time (ms) or offsets per (topic, partition)."""

    text: str
    time_ms: int | None = None
    offsets: Mapping[TopicPartitionKey, int] | None = None


def parse_bound(text: str, *, topics: Sequence[str], flag: str = "--from") -> Bound:
    """`text` as a time or as per-partition offsets (see `SYNTAX`)."""
    text = text.strip()
    if text.isdigit():
        return Bound(text, time_ms=int(text))
    try:
        when = datetime.fromisoformat(text)
    except ValueError:
        when = None
    if when is None and all(_OFFSET.match(t.strip()) for t in text.split(",")):
        offsets: dict[TopicPartitionKey, int] = {}
        for item in text.split(","):
            m = _OFFSET.match(item.strip())
            assert m is not None
            topic = m["topic"]
            if topic is None:
                if len(topics) != 1:
                    msg = f"{flag} {text}: name the topic of each partition (TOPIC:PARTITION:OFFSET)"
                    raise BackfillError(msg)
                topic = topics[0]
            if topic not in topics:
                msg = f"{flag} {text}: topic {topic!r} is not read (kafka.topics = {list(topics)})"
                raise BackfillError(msg)
            offsets[(topic, int(m["partition"]))] = int(m["offset"])
        return Bound(text, offsets=offsets)
    if when is None:
        msg = f"{flag} {text!r}: expected {SYNTAX}"
        raise BackfillError(msg)
    if when.tzinfo is None:
        if len(text) != 10:  # a bare date is a UTC day; a time must say its offset
            msg = f"{flag} {text!r}: add the UTC offset (Z or +00:00)"
            raise BackfillError(msg)
        when = datetime.combine(date.fromisoformat(text), datetime.min.time(), tzinfo=UTC)
    return Bound(text, time_ms=int(when.timestamp() * 1000))


def resolve_ranges(
    kafka: KafkaConfig, start: Bound, stop: Bound | None, *, timeout_s: float = 30.0
) -> Ranges:
    """Per (topic, partition), the offsets [start, stop) the backfill reads: a time is the first
    offset at or after it; no `stop` is the high watermark now; given offsets are kept within the
    partition's watermarks."""
    from flows.kafka_offsets import offsets_for_time, watermarks

    if (
        start.time_ms is not None
        and stop is not None
        and stop.time_ms is not None
        and stop.time_ms <= start.time_ms
    ):
        msg = f"--to {stop.text} is not after --from {start.text}"
        raise BackfillError(msg)
    bootstrap, extra = ",".join(kafka.broker_list), dict(kafka.extra)
    out: Ranges = {}
    for topic in kafka.topics:
        marks = watermarks(bootstrap, topic, timeout_s=timeout_s, config=extra)

        def at(bound: Bound, flag: str, topic: str = topic, marks: dict = marks) -> dict[int, int]:
            if bound.time_ms is not None:
                return offsets_for_time(bootstrap, topic, bound.time_ms, timeout_s=timeout_s, config=extra)
            given = {p: o for (t, p), o in (bound.offsets or {}).items() if t == topic}
            if set(given) != set(marks):
                msg = (
                    f"{flag} {bound.text}: give an offset for every partition of {topic!r} "
                    f"({sorted(marks)}), got {sorted(given)}"
                )
                raise BackfillError(msg)
            return {p: min(max(o, marks[p][0]), marks[p][1]) for p, o in given.items()}

        first = at(start, "--from")
        last = {p: high for p, (_, high) in marks.items()} if stop is None else at(stop, "--to")
        for p in sorted(marks):
            if last[p] < first[p]:
                msg = f"--to is before --from on {topic}[{p}]: offsets {first[p]} .. {last[p]}"
                raise BackfillError(msg)
            out[(topic, p)] = (first[p], last[p])
    return out


# --- the plan, kept in the recovery directory ----------------------------------------------


@dataclass(frozen=True)
class Plan:
    """What one backfill reads and where it writes; `resumed`: found in its recovery directory."""

    database: str
    start: str
    stop: str | None
    rubric_version: str
    ranges: Ranges
    recovery_dir: Path
    resumed: bool = False

    @property
    def total(self) -> int:
        return sum(b - a for a, b in self.ranges.values())


def check_database(name: str, *, live: str) -> str:
    if not _DATABASE.match(name):
        msg = f"--into {name!r}: a database name is letters, digits and _ (not starting with a digit)"
        raise BackfillError(msg)
    if name == live:
        msg = (
            f"--into {name!r} is the live database: a backfill writes into a database of its own "
            "(re-judged verdicts would replace the live ones, and the windows at the slice's edges "
            "hold only part of their events); pick another name, e.g. "
            f"{live}_backfill, and compare the two side by side"
        )
        raise BackfillError(msg)
    return name


def default_recovery_dir(database: str, start: str, stop: str | None) -> Path:
    """`.judgeflow/backfill/<database>/<from>--<to>` (`end` when `--to` is omitted)."""
    slug = f"{_slug(start)}--{_slug(stop) if stop else 'end'}"
    if len(slug) > 100:  # long offset lists
        slug = slug[:80] + "-" + hashlib.sha256(slug.encode()).hexdigest()[:12]
    return DEFAULT_ROOT / database / slug


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9.+-]+", "_", text).strip("_")


def load_or_plan(
    kafka: KafkaConfig,
    *,
    database: str,
    start: str,
    stop: str | None,
    recovery_dir: Path,
    rubric_version: str,
) -> Plan:
    """The plan kept in `recovery_dir` when there is one (the same backfill, resumed), else a new
    one with its offsets resolved now (`run_backfill` keeps it there before reading anything)."""
    state = recovery_dir / STATE_FILE
    if state.exists():
        plan = _read_plan(state, recovery_dir)
        asked = (database, start, stop)
        if (plan.database, plan.start, plan.stop) != asked:
            msg = (
                f"{recovery_dir} holds another backfill (--from {plan.start} --to {plan.stop or '(end)'} "
                f"--into {plan.database}); give another --recovery-dir or remove that one"
            )
            raise BackfillError(msg)
        if plan.rubric_version != rubric_version:
            msg = (
                f"{recovery_dir} was started with rubrics {plan.rubric_version}, this code has "
                f"{rubric_version}: its verdicts would mix; finish it with the same code, or start "
                "again in a new database"
            )
            raise BackfillError(msg)
        return plan
    topics = kafka.topics
    ranges = resolve_ranges(
        kafka,
        parse_bound(start, topics=topics),
        parse_bound(stop, topics=topics, flag="--to") if stop else None,
    )
    return Plan(database, start, stop, rubric_version, ranges, recovery_dir)


def _save_plan(plan: Plan) -> None:
    body = {
        "database": plan.database,
        "from": plan.start,
        "to": plan.stop,
        "rubric_version": plan.rubric_version,
        "partitions": [[t, p, a, b] for (t, p), (a, b) in sorted(plan.ranges.items())],
    }
    state = plan.recovery_dir / STATE_FILE
    tmp = state.with_suffix(".tmp")
    tmp.write_text(json.dumps(body, indent=1) + "\n")
    tmp.replace(state)


def _read_plan(state: Path, recovery_dir: Path) -> Plan:
    body = json.loads(state.read_text())
    ranges = {(t, int(p)): (int(a), int(b)) for t, p, a, b in body["partitions"]}
    return Plan(
        body["database"], body["from"], body["to"], body["rubric_version"], ranges, recovery_dir, resumed=True
    )


# --- the run -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Summary:
    completed: bool
    progress: ProgressState
    rows: dict[str, int]  # table -> rows in the target database (FINAL); empty when interrupted

    def text(self, plan: Plan) -> str:
        s = self.progress
        rate = s.this_run / s.elapsed_s if s.elapsed_s > 0 else 0.0
        head = "backfill complete" if self.completed else "backfill interrupted"
        lines = [
            f"{head}: --from {plan.start} --to {plan.stop or '(end at start)'} into {plan.database}",
            f"  events read    {s.done:,} of {s.total:,} (this run {s.this_run:,})",
            f"  elapsed        {duration(s.elapsed_s)} (this run), {rate:,.0f} events/s",
        ]
        if self.rows:
            lines.append(f"  dead letters   {self.rows.get('dead_letters', 0):,}")
            lines.append("  rows written   " + ", ".join(f"{t} {n:,}" for t, n in self.rows.items()))
        if not self.completed:
            lines.append(f"  resume with the same command (recovery directory {plan.recovery_dir})")
        return "\n".join(lines)


@contextlib.contextmanager
def _interrupts() -> Iterator[threading.Event]:
    """SIGINT and SIGTERM interrupt the run (KeyboardInterrupt) and are remembered, so the run's
    end tells an interrupt from a failure."""
    seen = threading.Event()
    if threading.current_thread() is not threading.main_thread():
        yield seen
        return

    def interrupt(signum: int, frame: object) -> None:
        seen.set()
        raise KeyboardInterrupt

    before = {sig: signal.signal(sig, interrupt) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield seen
    finally:
        for sig, handler in before.items():
            signal.signal(sig, handler)


def table_rows(dsn: str, database: str) -> dict[str, int]:
    """Rows per judgeflow table in `database`, FINAL (what a reader sees)."""
    from sinks.clickhouse import connect
    from sinks.clickhouse_tables import TABLES

    client = connect(dsn)
    count = "SELECT count() FROM {}.{} FINAL"  # identifiers: a checked database name, our tables
    return {t: int(client.query(count.format(database, t)).result_rows[0][0]) for t in TABLES}


def check_fresh(settings: Settings, plan: Plan) -> None:
    """A new backfill starts on an empty database (a resumed one finds its own rows)."""
    if plan.resumed:
        return
    ch = settings.flow.clickhouse
    filled = {t: n for t, n in table_rows(ch.dsn, plan.database).items() if n}
    if filled:
        shown = ", ".join(f"{t} {n:,}" for t, n in filled.items())
        msg = (
            f"database {plan.database!r} already holds rows ({shown}) and {plan.recovery_dir} has no "
            f"backfill in progress: drop it (DROP DATABASE {plan.database}) or pick another --into"
        )
        raise BackfillError(msg)


def run_backfill(
    settings: Settings,
    plan: Plan,
    *,
    workers: int = 1,
    snapshot_s: float = 10.0,
    progress_s: float = 10.0,
    stream: IO[str],
) -> Summary:
    """Run the flow over the plan's offsets into the plan's database (`settings` already name it),
    with progress on `stream`. Ctrl-C stops it at the last snapshot: a Summary with
    completed=False (the same plan resumes)."""
    from bytewax.recovery import RecoveryConfig, init_db_dir
    from bytewax.run import cli_main

    from flows.deps import build_deps
    from flows.judgeflow import build_flow
    from flows.sources import bounded_kafka_source
    from sinks.memory_store import MemoryControlStore

    if settings.flow.clickhouse.database != plan.database:
        msg = f"settings write to {settings.flow.clickhouse.database!r}, the plan to {plan.database!r}"
        raise BackfillError(msg)
    plan.recovery_dir.mkdir(parents=True, exist_ok=True)
    if not (plan.recovery_dir / STATE_FILE).exists():
        _save_plan(plan)  # before anything is read: a resumed run ends at the same offsets
    if not any(plan.recovery_dir.glob("part-*.sqlite3")):
        init_db_dir(plan.recovery_dir, 1)
    kafka = settings.flow.kafka
    # nothing leaves for the live job's consumers: no Kafka outputs, no webhooks, own overrides
    deps = dataclasses.replace(build_deps(settings), brokers=[], webhooks=None, control=MemoryControlStore())
    source = bounded_kafka_source(kafka, kafka.broker_list, plan.ranges)
    POSITIONS.reset()
    display = ProgressDisplay(plan.ranges, stream, interval_s=progress_s)
    display.start()
    completed = False
    with _interrupts() as interrupted:
        try:
            cli_main(
                build_flow(settings, source=source, deps=deps, workers=workers),
                workers_per_process=workers,
                epoch_interval=timedelta(seconds=snapshot_s),
                recovery_config=RecoveryConfig(str(plan.recovery_dir)),
            )
            completed = True
        except BaseException:
            # Ctrl-C lands in whatever Python code runs (a sink's insert: bytewax wraps it in its own
            # error). Like a crash, it leaves the last snapshot, and re-written rows keep their ids.
            if not interrupted.is_set():
                raise
        finally:
            final = display.stop()
            deps.close()
    rows = table_rows(settings.flow.clickhouse.dsn, plan.database) if completed else {}
    return Summary(completed, final, rows)
