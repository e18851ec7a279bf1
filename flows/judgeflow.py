"""The judgeflow dataflow, top to bottom.

    kafka_in ─ decode ─┬─ errs ─────────────────────────────────────────────► dead letters
                       └─ price ─┬─ cost_window ─┬─────────────────────────────────► cost_windows (llm)
                          │      ├─ expensive ───┤
                          │      ├─ abuse ───────┼─────────────────────────────────► abuse_windows
                          │      │               └─ alerts ─┬─► alerts (ClickHouse, Kafka, hooks)
                          │      │                          ├─► sampling overrides (control store)
                          │      │                          └─ progress, overrides ─┐ (in-band)
                          │      └─ dedup ─ sample ◄────────────────────────────────┘
                          │       (verdict cache) ├─ chosen ─ judge ─┬─► evaluations ─► estimates
                          │                       │                  └─ judge_window ─► cost_windows (judge)
                          │                       │                        └─ judge_alerts ─► alerts
                          │                       ├─ baseline, spend, hits ─ savings ─► judge_savings
                          │                       └─ every event ────────────────────► llm_events
                          └─ unknown models ─► pricing_issues
    cost_windows (llm, judge; 1 min) ─ rollup ─► cost_windows (1 h, 1 day)

The spend alerts feed the sampler in-band: a tenant's window is decided once its
alerts are evaluated through the window's start, under the override they set,
so the closed loop acts the same in a live run, a replay and after a restart.
Alerts on judge spend come after the judges (no cycle) and do not act. `abuse`
counts, per tenant and window, the requests repeating a prompt and the top user's
share; the alerts read them too (informational unless an action names them).

Between decode and price, `otlp_join` (with OTLP input on) fills in the prompt
and completion of OTLP spans from the log records of their span, and
`redeliveries` passes each event_id once (a Kafka re-delivery with another
payload joins the dead letters).

`build_flow(settings)` wires the stages; `flows.deps` builds what they need
(clients, caches, judges) from the settings. Nothing here connects anywhere
until the dataflow runs.
"""

from __future__ import annotations

import bytewax.operators as op
from bytewax.dataflow import Dataflow
from bytewax.inputs import Source

from flows.config import Settings
from flows.deps import Deps, build_deps
from flows.sources import kafka_source
from operators.abuse import abuse_window
from operators.alerts import alerts
from operators.decode import decode
from operators.dedup import dedup
from operators.estimates import quality_estimates
from operators.expensive import expensive_requests
from operators.judge import judge
from operators.otlp_join import join_otlp_content
from operators.owed import judged_ms
from operators.price import price
from operators.redeliveries import drop_redeliveries
from operators.rollups import rollup
from operators.sample import sample
from operators.savings import judge_savings
from operators.windows import cost_window
from sinks.clickhouse_sink import MAX_SHARDS, ClickHouseSink, WriteBehindClickHouseSink, key_batches
from sinks.control import ControlSink
from sinks.kafka import kafka_out


def build_flow(
    settings: Settings, *, source: Source | None = None, deps: Deps | None = None, workers: int = 1
) -> Dataflow:
    """The whole pipeline. `source` replaces the Kafka input (tests, benchmarks); `workers` is the
    cluster's worker count (all processes), which the ClickHouse inserts are spread over."""
    cfg = settings.flow
    d = deps if deps is not None else build_deps(settings)
    ch = cfg.clickhouse

    def to_clickhouse(step_id: str, stream, table: str) -> None:
        if not ch.write_behind:  # the worker waits for each insert
            in_line = ClickHouseSink(
                ch.dsn, ch.database, table, store_text=ch.store_text, max_retry_s=ch.max_retry_s
            )
            op.output(step_id, stream, in_line)
            return
        # inserts on writer threads, flushed per epoch
        behind = WriteBehindClickHouseSink(
            ch.dsn,
            ch.database,
            table,
            store_text=ch.store_text,
            max_retry_s=ch.max_retry_s,
            insert_rows=ch.insert_rows,
            linger_s=ch.insert_linger_s,
        )
        stream = key_batches(f"{step_id}_shard", stream, sink=behind, shards=min(workers, MAX_SHARDS))
        op.output(step_id, stream, behind)

    flow = Dataflow("judgeflow")
    longest_window_s = max((cfg.windows.size_s, *cfg.windows.rollups_s))
    raw = op.input("kafka_in", flow, source or kafka_source(cfg.kafka, d.brokers, align_s=longest_window_s))

    decoded = decode("decode", raw, limits=d.decode_limits, now_ms=d.now_ms, otlp=d.otlp)
    events_in, rejected = decoded.oks, [decoded.errs]
    if d.otlp is not None:
        # OTLP spans get the prompt / completion their span's log records carry
        joined = join_otlp_content(
            "otlp_join", decoded.otel, wait_s=d.otlp_join_wait_s, call_max_s=d.otlp_join_call_max_s
        )
        events_in = op.merge("otlp_events", events_in, joined)
    # exactly once per event_id: Kafka re-deliveries never reach a count
    if cfg.windows.drop_redeliveries:
        unique = drop_redeliveries(
            "redeliveries",
            events_in,
            horizon_s=cfg.windows.redelivery_horizon_s,
            shards=cfg.windows.redelivery_shards,
        )
        events_in = unique.oks
        rejected.append(unique.errs)
    priced = price("price", events_in, pricer=d.pricer)
    events = priced.events

    # cost: every event into windowed spend per key; alerts over it, in event time
    request_windows = cost_window(
        "cost_window",
        events,
        size_s=cfg.windows.size_s,
        allowed_lateness_s=cfg.windows.allowed_lateness_s,
        provisional_s=cfg.windows.provisional_s,
        drop_finished=cfg.windows.drop_finished_keys,
    )
    expensive = expensive_requests("expensive", events, policy=d.alert_policy)
    # the same prompt again and again, one user driving a tenant: per tenant and window
    abuse = abuse_window(
        "abuse",
        events,
        size_s=cfg.windows.size_s,
        allowed_lateness_s=cfg.windows.allowed_lateness_s,
        normalize=d.keyer.normalize,
        drop_finished=cfg.windows.drop_finished_keys,
    )
    # (with the marks of the keys dropped: the alert ledgers let their rows go then)
    spend_alerts = alerts("alerts", request_windows.marked, expensive, abuse, policy=d.alert_policy.spend())

    # quality: look verdicts up, choose what to judge (under the overrides the alerts set), judge
    looked_up = dedup("dedup", events, cache=d.cache, keyer=d.keyer, llm_metrics=d.plan.llm_metrics)
    sampled = sample(
        "sample",
        looked_up.cands,
        sampler=d.sampler,
        rules=d.rules,
        control=d.control,
        baseline=d.baseline,
        alerts=spend_alerts.progress if d.alert_policy.actions else None,
        metrics_=tuple(d.plan.metrics),  # those with tier-0 rules: flags counted on every event
        local=d.local if cfg.judges.local.score_every_event else None,  # `<metric>.local` flags
        judged_window_s=(cfg.windows.size_s, cfg.windows.judge_allowed_lateness_s),
    )
    judged = judge(
        "judge",
        sampled.judge,
        plan=d.plan,
        rules=d.rules,
        runtime=d.runtime,
        cache=d.cache,
        keyer=d.keyer,
        now_ms=d.now_ms,
        max_queued=cfg.judges.max_queued,
        local=d.local,
    )
    evaluations = judged.evaluations
    # unbiased flagged rates from the sampled verdicts and the sampler's strata (stratified, and
    # prediction-powered from the tier-0 flags on every event); what judging less saved — their
    # windows final once the sampler and the judges owe them nothing (`operators.owed`)
    estimates = quality_estimates(
        "estimates",
        evaluations,
        design=sampled.design,
        sample_window_s=cfg.sampling.window_s,
        size_s=cfg.windows.size_s,
        allowed_lateness_s=cfg.windows.judge_allowed_lateness_s,
        processed=judged_ms,
        drop_finished=cfg.windows.drop_finished_keys,
    )
    savings = judge_savings(
        "savings",
        sampled.savings,
        judged.spend,
        judged.evaluations,
        reference=d.baseline.reference.name,
        size_s=cfg.windows.size_s,
        allowed_lateness_s=cfg.windows.judge_allowed_lateness_s,
        processed=judged_ms,
        drop_finished=cfg.windows.drop_finished_keys,
    )
    # judge verdicts come back after the requests they judge: judge spend gets
    # its own windows (same ledger, category "judge") that follow their own event-time progress
    # and forget a window only once the sampler and the judges owe it nothing (`operators.owed`)
    judge_windows = cost_window(
        "judge_window",
        judged.spend,
        size_s=cfg.windows.size_s,
        allowed_lateness_s=cfg.windows.judge_allowed_lateness_s,
        category="judge",
        provisional_s=cfg.windows.provisional_s,
        processed=judged_ms,  # and until no stage still owes one of their entries
        drop_finished=cfg.windows.drop_finished_keys,
    )
    windows = op.merge("windows", request_windows.rows, judge_windows.rows)
    # the same in line with the marks of the minute keys that may be dropped (`KeyMark`)
    marked = op.merge("windows_marked", request_windows.marked, judge_windows.marked)
    judge_alerts = alerts("judge_alerts", marked, policy=d.alert_policy.judge_spend(), processed=judged_ms)
    if cfg.windows.rollups_s:  # 1 h and 1 day rows, derived from the minute rows
        lateness_s = max(cfg.windows.allowed_lateness_s, cfg.windows.judge_allowed_lateness_s)
        rollups = rollup(
            "rollup",
            marked,
            sizes_s=cfg.windows.rollups_s,
            allowed_lateness_s=lateness_s,
            processed=judged_ms,
        )
        windows = op.merge("windows_and_rollups", windows, rollups)
    all_alerts = op.merge("all_alerts", spend_alerts.alerts, judge_alerts.alerts)

    # outputs; dead letters from the cache lookup on are of events stored but not judged (a bug)
    dead_letters = op.merge("dead_letters", *rejected, priced.errs, looked_up.errs, sampled.errs, judged.errs)
    to_clickhouse("llm_events_out", op.map("event_of", sampled.events, lambda c: c.event), "llm_events")
    to_clickhouse("evaluations_out", evaluations, "evaluations")
    to_clickhouse("estimates_out", estimates, "quality_estimates")
    to_clickhouse("savings_out", savings, "judge_savings")
    to_clickhouse("cost_windows_out", windows, "cost_windows")
    to_clickhouse("abuse_out", abuse, "abuse_windows")
    to_clickhouse("alerts_out", all_alerts, "alerts")
    op.output("overrides_out", spend_alerts.actions, ControlSink(d.control))
    if d.webhooks is not None:
        op.output("webhooks_out", all_alerts, d.webhooks)
    to_clickhouse("dead_letters_out", dead_letters, "dead_letters")
    to_clickhouse("pricing_issues_out", priced.issues, "pricing_issues")
    if d.brokers:
        kafka_out(
            "alerts_kafka",
            all_alerts,
            brokers=d.brokers,
            topic=cfg.kafka.alerts_topic,
            extra=cfg.kafka.extra,
        )
        kafka_out(
            "dead_letters_kafka",
            dead_letters,
            brokers=d.brokers,
            topic=cfg.kafka.dead_letters_topic,
            extra=cfg.kafka.extra,
        )
    return flow
