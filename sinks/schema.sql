-- judgeflow's ClickHouse schema. `{database}` is replaced by the configured
-- database name (default `judgeflow`) by sinks.clickhouse.ensure_schema().
--
-- Every statement is idempotent (IF NOT EXISTS). Every table is a
-- ReplacingMergeTree whose sorting key is the record's deterministic id, so a
-- replay or a crash-restart that re-writes rows never double counts: read
-- with FINAL (or argMax by the version column). Money is Decimal(38, 12)
-- dollars, converted exactly from the flow's integer picodollars; times are
-- UTC milliseconds. `inserted_at` is filled by the server and is the replacing
-- version where the record has none, so the latest write of a key wins.
--
-- Retention is not set here: `judgeflow init-db` and every start give each
-- table a TTL on `inserted_at` from the flow config's [retention] section
-- (sinks.clickhouse_tables.apply_ttls); cost_windows gets one per window size.

CREATE DATABASE IF NOT EXISTS {database};

-- One row per LLM request event (core.records.Event).
CREATE TABLE IF NOT EXISTS {database}.llm_events
(
    event_id           String,
    ts                 DateTime64(3, 'UTC'),
    tenant_id          LowCardinality(String),
    agent              LowCardinality(String),
    model              LowCardinality(String),
    provider           LowCardinality(String),
    variant            LowCardinality(String),
    input_tokens       UInt32,
    output_tokens      UInt32,
    cache_read_tokens  UInt32,
    cache_write_tokens UInt32,
    reasoning_tokens   UInt32,
    cost_usd           Decimal(38, 12),
    cost_source        LowCardinality(String) COMMENT 'provided | catalog | override | unknown',
    latency_ms         Nullable(Float64),
    conversation_id    Nullable(String),
    user_id            Nullable(String),
    input_chars        UInt32,
    output_chars       UInt32,
    input_text         String COMMENT 'empty unless the sink runs with store_text',
    output_text        String COMMENT 'empty unless the sink runs with store_text',
    flags              Array(LowCardinality(String)) COMMENT 'tier-0 rules that fired, e.g. pii.email',
    source_topic       LowCardinality(Nullable(String)),
    source_partition   Nullable(Int32),
    source_offset      Nullable(Int64),
    inserted_at        DateTime64(3, 'UTC') DEFAULT now64(3)
)
ENGINE = ReplacingMergeTree(inserted_at)
PARTITION BY toYYYYMM(ts)
ORDER BY (tenant_id, event_id);

-- One row per judge verdict (core.records.Evaluation). The columns follow
-- the OpenTelemetry `gen_ai.evaluation.result` event; the mapping is in the
-- column comments. One row per (event, metric, tier): a cascade that escalates
-- writes the tier-1 and the tier-2 verdict; the highest tier is the verdict of
-- record. `label` is flagged | ok, or error (the judge failed, see `error`) |
-- skipped (the tenant's daily judge budget was spent and no rule covers the metric).
CREATE TABLE IF NOT EXISTS {database}.evaluations
(
    eval_id          String,
    event_id         String COMMENT 'gen_ai.response.id: the judged event',
    ts               DateTime64(3, 'UTC'),
    tenant_id        LowCardinality(String),
    agent            LowCardinality(String),
    model            LowCardinality(String),
    variant          LowCardinality(String),
    metric           LowCardinality(String) COMMENT 'gen_ai.evaluation.name',
    score            Float64 COMMENT 'gen_ai.evaluation.score.value',
    label            LowCardinality(String) COMMENT 'gen_ai.evaluation.score.label',
    explanation      String COMMENT 'gen_ai.evaluation.explanation',
    judge            LowCardinality(String),
    tier             UInt8,
    judge_cost_usd   Decimal(38, 12),
    judge_latency_ms Float64,
    cache_hit        Bool,
    inclusion_prob   Float64 COMMENT 'sampling inclusion probability, for Horvitz-Thompson estimates',
    content_hash     String,
    error            String COMMENT 'error.type when the judge failed, else empty',
    inserted_at      DateTime64(3, 'UTC') DEFAULT now64(3)
)
ENGINE = ReplacingMergeTree(inserted_at)
PARTITION BY toYYYYMM(ts)
ORDER BY (tenant_id, eval_id);

-- Tumbling windows (core.records.CostWindow). 1 min, 1 h and 1 day rows
-- share the table, told apart by window_s. Spend on the product's LLM requests
-- (category llm) and on judgeflow's own judge calls (category judge) are kept
-- in separate rows of the same ledger: judge verdicts return later than the
-- requests they judge, so each category keeps its own event-time progress. A window re-emitted within the
-- allowed lateness carries a newer version, which replaces the earlier row;
-- entries later still arrive as `correction` rows with their own ids, which
-- add to the window: sum over both kinds. In category judge rows, `model` is
-- the judge (e.g. openai/gpt-4o-mini), `variant` its tier (tier1 | tier2) and
-- the token counts are the judge's.
CREATE TABLE IF NOT EXISTS {database}.cost_windows
(
    tenant_id             LowCardinality(String),
    agent                 LowCardinality(String),
    model                 LowCardinality(String),
    variant               LowCardinality(String),
    window_s              UInt32,
    window_start          DateTime64(3, 'UTC'),
    category              LowCardinality(String) COMMENT 'llm (requests) | judge (judge calls)',
    kind                  LowCardinality(String) COMMENT 'window | correction',
    correction_id         String COMMENT 'the late entry of a correction row, else empty',
    requests              UInt64,
    input_tokens          UInt64,
    output_tokens         UInt64,
    cost_usd              Decimal(38, 12),
    unknown_cost_requests UInt64,
    judge_calls           UInt64,
    judge_cost_usd        Decimal(38, 12),
    max_request_cost_usd  Decimal(38, 12),
    version               UInt64 COMMENT 'emission time: the newest row of a key wins',
    provisional           Bool DEFAULT false COMMENT 'an open window so far: its final row (higher version) replaces it',
    inserted_at           DateTime64(3, 'UTC') DEFAULT now64(3)
)
ENGINE = ReplacingMergeTree(version)
PARTITION BY toYYYYMM(window_start)
ORDER BY (tenant_id, agent, model, variant, window_s, window_start, category, kind, correction_id);

-- tables created before open windows were written as they fill
ALTER TABLE {database}.cost_windows ADD COLUMN IF NOT EXISTS provisional Bool DEFAULT false AFTER version;

-- Alert state transitions (core.records.Alert).
CREATE TABLE IF NOT EXISTS {database}.alerts
(
    alert_id       String,
    rule           LowCardinality(String),
    tenant_id      LowCardinality(String),
    scope          String,
    level          LowCardinality(String),
    previous_level LowCardinality(String),
    value          Float64,
    threshold      Float64,
    window_start   DateTime64(3, 'UTC'),
    window_end     DateTime64(3, 'UTC'),
    ts             DateTime64(3, 'UTC'),
    message        String,
    runbook        String COMMENT 'the judgeflow command(s) to run first',
    details        String COMMENT 'JSON: the numbers behind the alert (per rule, see operators/alert_rules.py)',
    inserted_at    DateTime64(3, 'UTC') DEFAULT now64(3)
)
ENGINE = ReplacingMergeTree(inserted_at)
PARTITION BY toYYYYMM(ts)
ORDER BY (tenant_id, alert_id);

-- tables created before alerts carried their numbers
ALTER TABLE {database}.alerts ADD COLUMN IF NOT EXISTS details String AFTER runbook;

-- Records the flow could not process (core.records.DeadLetter).
CREATE TABLE IF NOT EXISTS {database}.dead_letters
(
    key              String,
    ts               DateTime64(3, 'UTC'),
    stage            LowCardinality(String),
    reason           String,
    raw              String COMMENT 'the undecodable bytes, verbatim',
    source_topic     LowCardinality(Nullable(String)),
    source_partition Nullable(Int32),
    source_offset    Nullable(Int64),
    inserted_at      DateTime64(3, 'UTC') DEFAULT now64(3)
)
ENGINE = ReplacingMergeTree(inserted_at)
PARTITION BY toYYYYMM(ts)
ORDER BY key;

-- Models the flow could not price (core.records.PricingIssue): one row
-- per (model, provider, UTC day), keyed deterministically so workers and
-- replays replace each other. The requests themselves are in llm_events
-- (cost_source = 'unknown') and cost_windows (unknown_cost_requests).
CREATE TABLE IF NOT EXISTS {database}.pricing_issues
(
    key         String,
    day         Date,
    model       String,
    provider    LowCardinality(String),
    issue       LowCardinality(String) COMMENT 'unknown_model',
    message     String,
    inserted_at DateTime64(3, 'UTC') DEFAULT now64(3)
)
ENGINE = ReplacingMergeTree(inserted_at)
PARTITION BY toYYYYMM(day)
ORDER BY key;

-- Horvitz-Thompson estimates of the share of flagged responses per
-- (tenant, agent, metric, window), from the sampled verdicts and their
-- inclusion probabilities (core.records.QualityEstimate). The sums make
-- any rollup exact: rate = sum(sum_wy) / sum(sum_w), interval as in
-- operators/estimates.py (query_estimates). Re-emitted as verdicts arrive: the
-- newest version wins.
CREATE TABLE IF NOT EXISTS {database}.quality_estimates
(
    tenant_id    LowCardinality(String),
    agent        LowCardinality(String),
    metric       LowCardinality(String),
    window_s     UInt32,
    window_start DateTime64(3, 'UTC'),
    judged       UInt64 COMMENT 'events with a verdict for the metric',
    flagged      UInt64 COMMENT 'of which flagged',
    rate         Float64 COMMENT 'estimated share of flagged responses among all events',
    ci_low       Float64 COMMENT '95% interval: exact strata + Wilson at the stratified effective sample size',
    ci_high      Float64,
    population   Float64 COMMENT 'estimated events: sum of 1/inclusion_prob',
    sum_w        Float64,
    sum_wy       Float64,
    sum_ww1      Float64 COMMENT 'sum of w(w-1), w = 1/inclusion_prob',
    sum_ww1y     Float64,
    version      UInt64 COMMENT 'emission time: the newest row of a key wins',
    exact_events Float64 DEFAULT 0 COMMENT 'events of strata judged in full (inclusion probability 1)',
    exact_flagged Float64 DEFAULT 0 COMMENT 'of which flagged',
    sampled_events Float64 DEFAULT 0 COMMENT 'events of the sampled strata with a verdict',
    sampled_flagged Float64 DEFAULT 0 COMMENT 'their stratified estimate of the flagged: sum N_h * judged mean',
    sampled_var Float64 DEFAULT 0 COMMENT 'its variance: sum N_h^2 (1 - f_h) s_h^2 / m_h, small-sample corrected',
    sampled_var_unit Float64 DEFAULT 0 COMMENT 'sum N_h^2 (1 - f_h) / m_h: the design at unit variance',
    cheap_events Float64 DEFAULT 0 COMMENT 'events the cheap signal (tier-0 rules, or the local flag) was counted on',
    cheap_flagged Float64 DEFAULT 0 COMMENT 'of which the cheap signal flagged',
    ppi_sampled_flagged Float64 DEFAULT 0 COMMENT 'prediction-powered: tier-0 flags of the sampled strata + N_h * mean residual',
    ppi_sampled_var Float64 DEFAULT 0 COMMENT 'its variance (residuals judge - tier-0)',
    ppi_rate Float64 DEFAULT nan COMMENT 'prediction-powered rate (NaN: no tier-0 rule covers the metric)',
    ppi_low Float64 DEFAULT nan COMMENT 'its 95% interval',
    ppi_high Float64 DEFAULT nan,
    inserted_at  DateTime64(3, 'UTC') DEFAULT now64(3)
)
ENGINE = ReplacingMergeTree(version)
PARTITION BY toYYYYMM(window_start)
ORDER BY (tenant_id, agent, metric, window_s, window_start);

-- tables created before the stratified design and the prediction-powered estimates were kept
ALTER TABLE {database}.quality_estimates ADD COLUMN IF NOT EXISTS exact_events Float64 DEFAULT 0 AFTER version;
ALTER TABLE {database}.quality_estimates ADD COLUMN IF NOT EXISTS exact_flagged Float64 DEFAULT 0 AFTER exact_events;
ALTER TABLE {database}.quality_estimates ADD COLUMN IF NOT EXISTS sampled_events Float64 DEFAULT 0 AFTER exact_flagged;
ALTER TABLE {database}.quality_estimates ADD COLUMN IF NOT EXISTS sampled_flagged Float64 DEFAULT 0 AFTER sampled_events;
ALTER TABLE {database}.quality_estimates ADD COLUMN IF NOT EXISTS sampled_var Float64 DEFAULT 0 AFTER sampled_flagged;
ALTER TABLE {database}.quality_estimates ADD COLUMN IF NOT EXISTS sampled_var_unit Float64 DEFAULT 0 AFTER sampled_var;
ALTER TABLE {database}.quality_estimates ADD COLUMN IF NOT EXISTS cheap_events Float64 DEFAULT 0 AFTER sampled_var_unit;
ALTER TABLE {database}.quality_estimates ADD COLUMN IF NOT EXISTS cheap_flagged Float64 DEFAULT 0 AFTER cheap_events;
ALTER TABLE {database}.quality_estimates ADD COLUMN IF NOT EXISTS ppi_sampled_flagged Float64 DEFAULT 0 AFTER cheap_flagged;
ALTER TABLE {database}.quality_estimates ADD COLUMN IF NOT EXISTS ppi_sampled_var Float64 DEFAULT 0 AFTER ppi_sampled_flagged;
ALTER TABLE {database}.quality_estimates ADD COLUMN IF NOT EXISTS ppi_rate Float64 DEFAULT nan AFTER ppi_sampled_var;
ALTER TABLE {database}.quality_estimates ADD COLUMN IF NOT EXISTS ppi_low Float64 DEFAULT nan AFTER ppi_rate;
ALTER TABLE {database}.quality_estimates ADD COLUMN IF NOT EXISTS ppi_high Float64 DEFAULT nan AFTER ppi_low;

-- The judge savings ledger per (tenant, window) (core.records.JudgeSavings):
-- judge calls and dollars of judging every event on every metric with the
-- reference (most expensive configured) judge, and what sampling, the cache
-- and the cascade avoided; judge_* is what was spent. baseline = sampling +
-- cache + cascade + judge.
CREATE TABLE IF NOT EXISTS {database}.judge_savings
(
    tenant_id       LowCardinality(String),
    window_s        UInt32,
    window_start    DateTime64(3, 'UTC'),
    events          UInt64,
    baseline_calls  UInt64,
    baseline_usd    Decimal(38, 12),
    sampling_calls  UInt64,
    sampling_usd    Decimal(38, 12),
    cache_calls     UInt64,
    cache_usd       Decimal(38, 12) COMMENT 'at the window mean reference cost per call',
    cascade_calls   Int64 COMMENT 'tier-0 settled and cheaper tiers, net of retries',
    cascade_usd     Decimal(38, 12),
    judge_calls     UInt64,
    judge_usd       Decimal(38, 12),
    reference_judge LowCardinality(String),
    version         UInt64 COMMENT 'emission time: the newest row of a key wins',
    judged_events   UInt64 COMMENT 'events the sampler chose',
    allowed_events  UInt64 COMMENT 'its cap or judged-share ceiling per sampler window, summed',
    forced_events   UInt64 COMMENT 'events in certainty strata (tier-0 flags, long conversations)',
    inserted_at     DateTime64(3, 'UTC') DEFAULT now64(3)
)
ENGINE = ReplacingMergeTree(version)
PARTITION BY toYYYYMM(window_start)
ORDER BY (tenant_id, window_s, window_start);

-- tables created before the judged share was kept
ALTER TABLE {database}.judge_savings ADD COLUMN IF NOT EXISTS judged_events UInt64 DEFAULT 0 AFTER version;
ALTER TABLE {database}.judge_savings ADD COLUMN IF NOT EXISTS allowed_events UInt64 DEFAULT 0 AFTER judged_events;
ALTER TABLE {database}.judge_savings ADD COLUMN IF NOT EXISTS forced_events UInt64 DEFAULT 0 AFTER allowed_events;

-- Per (tenant, window): the usual abuse shapes (core.records.AbuseWindow,
-- operators/abuse.py) — requests repeating a prompt already sent in the window
-- (normalized as the verdict cache does, hashed) and the requests of the top
-- user id. Shares are of all the window's requests. Re-emitted while events
-- arrive within the allowed lateness: the newest version wins.
CREATE TABLE IF NOT EXISTS {database}.abuse_windows
(
    tenant_id           LowCardinality(String),
    window_s            UInt32,
    window_start        DateTime64(3, 'UTC'),
    window_end          DateTime64(3, 'UTC'),
    requests            UInt64,
    repeated_requests   UInt64 COMMENT 'requests whose normalized prompt was already sent in the window',
    repeated_share      Float64 COMMENT 'repeated_requests / requests',
    distinct_prompts    UInt64,
    top_prompt_requests UInt64 COMMENT 'requests of the most repeated prompt',
    distinct_users      UInt64,
    top_user            String COMMENT 'the user_id with the most requests (smallest on a tie); empty without user ids',
    top_user_requests   UInt64,
    top_user_share      Float64 COMMENT 'top_user_requests / requests',
    version             UInt64 COMMENT 'emission time: the newest row of a key wins',
    inserted_at         DateTime64(3, 'UTC') DEFAULT now64(3)
)
ENGINE = ReplacingMergeTree(version)
PARTITION BY toYYYYMM(window_start)
ORDER BY (tenant_id, window_s, window_start);
