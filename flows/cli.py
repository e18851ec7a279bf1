"""The `judgeflow` command.

judgeflow run     [--config F] [-w N] [-i I -a ADDRS] [--recovery-dir D]   the streaming job
judgeflow backfill --from T [--to T] --into DB [-w N]                      a slice, into another database
judgeflow demo    [--workers N] [--limit N] [--data DIR]                    everything embedded
judgeflow init-db [--config F]                                              create the tables and their TTLs
judgeflow report  cost|variants|top|hourly|budget|tokens|quality|savings|abuse|alerts|pricing|all
                  the runbooks' questions, answered from ClickHouse
judgeflow overrides list|set|clear [TENANT]                                per-tenant judge sampling (Redis)
judgeflow judges  list|enable NAME                                          judges a fatal error disabled
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from collections.abc import Callable, Sequence
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

from core.errors import FatalError
from flows.config import ConfigError, Settings, load_settings
from simulators.traffic import TrafficDataError

if TYPE_CHECKING:
    from flows.health import HealthServer
    from flows.progress_board import ProgressBoard

log = logging.getLogger("judgeflow")


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    configure_logging()
    try:
        return int(args.func(args) or 0)
    except (ConfigError, StartupError, TrafficDataError) as exc:
        print(f"judgeflow: {exc}", file=sys.stderr)
        return 2


def configure_logging() -> None:
    """INFO and up to stderr, without the client libraries' lines that repeat ours."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    for chatty in ("httpx", "httpx2", "openai", "anthropic"):  # a line per judge call otherwise
        logging.getLogger(chatty).setLevel(logging.WARNING)
    # two warnings per failed ClickHouse request (the pool's retry, the driver's exception), each with
    # the whole URL: `sinks.clickhouse.retry` says it once, and only at each doubling of the attempts
    for repeating in ("urllib3", "clickhouse_connect"):
        logging.getLogger(repeating).setLevel(logging.ERROR)


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="judgeflow", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    sub = p.add_subparsers(required=True, metavar="COMMAND")

    run = sub.add_parser("run", help="run the streaming job")
    _config_arg(run)
    run.add_argument("-w", "--workers", type=int, default=1, help="worker threads in this process")
    run.add_argument("-i", "--process-id", type=int, default=None, help="this process's index in a cluster")
    run.add_argument("-a", "--addresses", default=None, help="host:port of every process, ';'-separated")
    run.add_argument(
        "--recovery-dir", type=Path, default=None, help="bytewax recovery partitions (resume on restart)"
    )
    run.add_argument("--snapshot-s", type=float, default=10.0, help="epoch / snapshot interval in seconds")
    run.add_argument(
        "--from",
        dest="start",
        default=None,
        help="backfill: start every partition at this RFC 3339 time (overrides kafka.start)",
    )
    run.add_argument(
        "--bounded", action="store_true", help="stop at the current end of the topics (kafka.tail = false)"
    )
    run.set_defaults(func=_cmd_run)

    _add_backfill_parser(sub)

    demo = sub.add_parser("demo", help="run the whole job embedded on sample production traffic")
    _config_arg(demo)
    demo.add_argument("--workers", type=int, default=1)
    demo.add_argument("--limit", type=int, default=None, help="events to replay (default: all, ~28k)")
    demo.add_argument(
        "--dsn",
        default=None,
        help="ClickHouse for the results (default: the config's, chdb in .judgeflow/chdb)",
    )
    demo.add_argument("--judge-latency-ms", type=float, default=150.0, help="simulated judge latency")
    demo.add_argument(
        "--data",
        type=Path,
        default=None,
        help="the full third-party sets, laid out like ../shared/data (default: the sample in the package)",
    )
    demo.set_defaults(func=_cmd_demo)

    init = sub.add_parser(
        "init-db", help="create the ClickHouse database and tables and set their retention ([retention])"
    )
    _config_arg(init)
    init.set_defaults(func=_cmd_init_db)

    from flows.overrides import add_judges_parser, add_overrides_parser
    from flows.report import add_report_parser

    add_report_parser(sub)
    add_overrides_parser(sub)
    add_judges_parser(sub)
    return p


def _config_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", "-c", type=Path, default=None, help="flow config TOML (default: the example)")


def _cmd_run(args: argparse.Namespace) -> int:
    from bytewax.run import cli_main

    from flows.deps import build_deps
    from flows.judgeflow import build_flow

    overrides: dict[str, Any] = {}
    if args.start:
        overrides["kafka.start"] = args.start
    if args.bounded:
        overrides["kafka.tail"] = False
    settings = load_settings(args.config, **overrides)
    _check_runnable(settings)
    addresses = args.addresses.split(";") if args.addresses else None
    health = _serve_metrics(settings, args.process_id or 0, len(addresses or [""]), args.workers)
    try:
        _init_db(settings)
        _check_kafka(settings)
        recovery = _recovery(args.recovery_dir) if args.recovery_dir else None
        deps = build_deps(settings)
        board = progress_board(settings, deps.brokers, addresses)
        try:
            cli_main(
                build_flow(settings, deps=deps, workers=args.workers * len(addresses or [""])),
                workers_per_process=args.workers,
                process_id=args.process_id,
                addresses=addresses,
                epoch_interval=timedelta(seconds=args.snapshot_s),
                recovery_config=recovery,
            )
        finally:
            if board is not None:
                board.close()
            deps.close()
    finally:
        if health is not None:
            health.close()
    return 0


def progress_board(
    settings: Settings, brokers: list[str], addresses: list[str] | None
) -> ProgressBoard | None:
    """With several processes, the board that shares each one's Kafka progress with the others
    (`flows.progress_board`), started; None for one process."""
    if not addresses or len(addresses) < 2 or not brokers:
        return None
    from flows.progress_board import ProgressBoard, board_group

    kafka = settings.flow.kafka
    group = board_group(kafka.topics, addresses, settings.flow.clickhouse.database)
    board = ProgressBoard(",".join(brokers), kafka.topics, group=group, extra=kafka.extra)
    board.start()
    return board


def _add_backfill_parser(sub) -> None:
    from flows.backfill import SYNTAX

    bf = sub.add_parser(
        "backfill",
        help="re-run the flow over a slice of the topics into another database, with progress",
        description="Re-run the whole flow over the Kafka messages from --from up to (not including) "
        "--to into the database --into (created with the schema; never the live one), then stop. "
        f"--from and --to take {SYNTAX}. Ctrl-C stops it; the same command resumes it.",
    )
    bf.add_argument(
        "--config",
        "-c",
        type=Path,
        default=None,
        help="flow config TOML (default: flows/judgeflow.example.toml)",
    )
    bf.add_argument("--from", dest="start", metavar="T", required=True, help="first message read (inclusive)")
    bf.add_argument(
        "--to",
        dest="stop",
        metavar="T",
        default=None,
        help="end, exclusive (default: each partition's end when the backfill first starts)",
    )
    bf.add_argument(
        "--into", metavar="DB", required=True, help="target database, not the config's clickhouse.database"
    )
    bf.add_argument(
        "-w", "--workers", metavar="N", type=int, default=1, help="worker threads (default: %(default)s)"
    )
    bf.add_argument(
        "--recovery-dir",
        metavar="DIR",
        type=Path,
        default=None,
        help="snapshots and resolved offsets, to resume (default: .judgeflow/backfill/DB/FROM--TO)",
    )
    bf.add_argument(
        "--snapshot-s",
        metavar="S",
        type=float,
        default=10.0,
        help="epoch / snapshot interval in seconds (default: %(default)s)",
    )
    bf.add_argument(
        "--progress-s",
        metavar="S",
        type=float,
        default=10.0,
        help="seconds between progress lines when stderr is not a terminal (default: %(default)s)",
    )
    bf.set_defaults(func=_cmd_backfill)


def _cmd_backfill(args: argparse.Namespace) -> int:
    from flows import backfill
    from judges.rubrics import RUBRIC_VERSION

    live = load_settings(args.config).flow.clickhouse.database
    into = backfill.check_database(args.into, live=live)
    target: dict[str, Any] = {"clickhouse.database": into, "kafka.tail": False}
    settings = load_settings(args.config, **target)
    _check_runnable(settings)
    _check_kafka(settings)
    recovery = args.recovery_dir or backfill.default_recovery_dir(into, args.start, args.stop)
    plan = backfill.load_or_plan(
        settings.flow.kafka,
        database=into,
        start=args.start,
        stop=args.stop,
        recovery_dir=recovery,
        rubric_version=RUBRIC_VERSION,
    )
    _init_db(settings)
    backfill.check_fresh(settings, plan)
    log.info(
        "backfill %s: %d messages in %d partitions into %s (rubrics %s), recovery in %s",
        "resumed" if plan.resumed else "started",
        plan.total,
        len(plan.ranges),
        into,
        RUBRIC_VERSION,
        recovery,
    )
    summary = backfill.run_backfill(
        settings,
        plan,
        workers=args.workers,
        snapshot_s=args.snapshot_s,
        progress_s=args.progress_s,
        stream=sys.stderr,
    )
    print(summary.text(plan))
    return 0 if summary.completed else 130


def _cmd_demo(args: argparse.Namespace) -> int:
    from flows.demo import run_demo

    return run_demo(
        config=args.config,
        workers=args.workers,
        limit=args.limit,
        dsn=args.dsn,
        judge_latency_ms=args.judge_latency_ms,
        data=args.data,
    )


def _cmd_init_db(args: argparse.Namespace) -> int:
    settings = load_settings(args.config)
    _init_db(settings)
    print(f"tables ready in database {settings.flow.clickhouse.database!r}")
    return 0


def _check_runnable(settings: Settings) -> None:
    if not settings.flow.kafka.brokers:
        msg = (
            "kafka.brokers is empty: set JUDGEFLOW_KAFKA_BROKERS "
            "(or use `judgeflow demo` for the embedded setup)"
        )
        raise ConfigError(msg)
    j = settings.flow.judges
    if not j.enabled:
        return
    # a missing key is not a reason to stop: the cost path needs none, and an orchestrator would
    # restart a job that exits forever. The LLM tiers without one stay off, and the log says so.
    from flows.deps import judge_tiers, keyless_tiers

    off = keyless_tiers(settings)
    for tier, var in off.items():
        t = j.tier1 if tier == 1 else j.tier2
        assert t is not None
        log.warning(
            "judges.tier%d (%s/%s) is off: %s is not set (nor %s_BASE_URL)",
            tier,
            t.provider,
            t.model,
            var,
            t.provider.upper(),
        )
    if off:
        usable = set(judge_tiers(settings))
        unjudged = [m for m, tiers in j.metrics.items() if 0 not in tiers and not usable & set(tiers)]
        log.warning(
            "prices, windows and alerts run as usual and the tier-0 rules judge; %s, until a key is set "
            "and the job restarted",
            f"no judge for {', '.join(unjudged)}" if unjudged else "every metric keeps a judge",
        )


def _recovery(path: Path):
    """Recovery snapshots in `path`; a new, empty directory gets one partition."""
    from bytewax.recovery import RecoveryConfig, init_db_dir

    path.mkdir(parents=True, exist_ok=True)
    if not any(path.glob("part-*.sqlite3")):
        init_db_dir(path, 1)
        log.info("created bytewax recovery partitions in %s", path)
    return RecoveryConfig(str(path))


class StartupError(FatalError, RuntimeError):
    """A dependency stayed unreachable for the whole start-up timeout."""


def _init_db(settings: Settings) -> None:
    """Create the schema and set the retention TTLs, retrying while ClickHouse is unreachable."""
    from sinks.clickhouse import connect, ensure_schema
    from sinks.clickhouse_retention import apply_ttls, ttl_clauses

    ch, retention = settings.flow.clickhouse, settings.flow.retention
    ttls = ttl_clauses(retention.table_days(), window_days=retention.window_days(settings.flow.windows))

    def init() -> None:
        client = connect(ch.dsn)
        ensure_schema(client, ch.database)
        apply_ttls(client, ch.database, ttls)

    _retry_at_start("ClickHouse", init, ch.startup_timeout_s)


def _check_kafka(settings: Settings) -> None:
    """The first metadata request, retried while the brokers do not answer or the topics are missing."""
    from flows.sources import check_topics

    kafka = settings.flow.kafka
    _retry_at_start("Kafka", lambda: check_topics(kafka), settings.flow.clickhouse.startup_timeout_s)


def _retry_at_start(
    what: str, fn: Callable[[], object], timeout_s: float, *, sleep: Callable[[float], None] = time.sleep
) -> None:
    """Run `fn` until it succeeds, with back-off (0.5 s doubling to 10 s) and one log line per try;
    after `timeout_s`, StartupError with one clear line."""
    deadline = time.monotonic() + timeout_s
    delay, attempt = 0.5, 0
    while True:
        attempt += 1
        try:
            fn()
            return
        except Exception as exc:
            left = deadline - time.monotonic()
            reason = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"[:300]
            if left <= 0:
                msg = f"{what} unreachable for {timeout_s:g} s at start ({attempt} tries): {reason}"
                raise StartupError(msg) from None
            wait = min(delay, left)
            log.warning("%s not ready (try %d, next in %.1f s): %s", what, attempt, wait, reason)
            sleep(wait)
            delay = min(delay * 2, 10.0)


def _serve_metrics(settings: Settings, process_id: int, processes: int, workers: int) -> HealthServer | None:
    """`/metrics`, `/healthz` and `/readyz` on `metrics.port` (see flows.health), before the start-up
    checks: while the job waits for Kafka and ClickHouse it is alive but not ready."""
    if settings.flow.metrics.port is None:
        return None
    from flows.health import serve
    from flows.health_probes import ClusterShape

    server = serve(settings, shape=ClusterShape(process_id, processes, workers))
    host = settings.flow.metrics.host
    log.info("Prometheus metrics on http://%s:%d/metrics, health on /healthz and /readyz", host, server.port)
    return server


if __name__ == "__main__":
    raise SystemExit(main())
