"""The flow config: one TOML file, validated, plus URLs and secrets from the environment.

`load_settings(path)` is called once at the composition root; the frozen
`Settings` it returns is handed to `build_flow` and from there to operators
and sinks, which never read `os.environ` themselves.

Environment (override the file; secrets come only from here):

    JUDGEFLOW_KAFKA_BROKERS      host:port[,host:port]  (unset: embedded mock cluster)
    JUDGEFLOW_REDIS_URL          redis://host:port/db   (unset: in-process cache)
    JUDGEFLOW_CLICKHOUSE_DSN     http(s)://user:pass@host:8123 or chdb:///abs/dir
    OPENAI_API_KEY, OPENAI_BASE_URL, ANTHROPIC_API_KEY, ANTHROPIC_BASE_URL
"""

from __future__ import annotations

import itertools
import os
import tomllib
from collections.abc import Mapping
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    AwareDatetime,
    Field,
    SecretStr,
    ValidationError,
    model_validator,
)

from core.errors import FatalError
from flows.config_alerts import AlertsConfig
from flows.config_judges import JudgesConfig
from flows.config_section import NonNegMoney
from flows.config_section import Section as _Section

DEFAULT_CONFIG = Path(__file__).with_name("judgeflow.example.toml")


class ConfigError(FatalError, ValueError):
    """The flow config is invalid; the message names the key and what is allowed."""


class KafkaConfig(_Section):
    brokers: str = ""
    topics: tuple[str, ...] = ("llm-events",)
    # per source partition and poll; a caught-up input hands out what has arrived, a backlog full batches
    # (5,000: 22-38% less CPU per event than 1,000 over 100,000 tenant x agent keys, README "Soak")
    batch_size: int = Field(5000, ge=1, le=100_000)
    # beginning | end | an RFC 3339 time with offset (replay from that time)
    start: Literal["beginning", "end"] | AwareDatetime = "beginning"
    tail: bool = True
    # release a partition's messages at most this far ahead of the slowest partition (of this process)
    # that still has input, so a replay keeps event time in step (operators/event_time.py); -1: off
    align_partitions_s: float = Field(5.0, ge=-1)
    alerts_topic: str = "judgeflow-alerts"
    dead_letters_topic: str = "judgeflow-dead-letters"
    extra: dict[str, str] = {}

    @property
    def broker_list(self) -> list[str]:
        """`brokers` ("host:port,host:port") as a list; empty when unset."""
        return [b.strip() for b in self.brokers.split(",") if b.strip()]


class DecodeConfig(_Section):
    earliest_ts: datetime = datetime(2020, 1, 1, tzinfo=UTC)
    max_future_s: int = Field(86_400, ge=0)
    max_tokens: int = Field(10_000_000, ge=1)
    max_cost_usd: NonNegMoney = Decimal(1000)
    max_record_bytes: int = Field(1 << 20, ge=1024)  # larger records go to dead letters


class OtlpConfig(_Section):
    """OTLP export requests (protobuf or JSON) on the input topics (the Collector's Kafka exporter)."""

    enabled: bool = True  # detected per message; native JSON events keep working beside them
    tenant_attribute: str = "tenant.id"
    variant_attribute: str = "judgeflow.variant"
    default_tenant: str = ""  # empty: a call without a tenant attribute is dead-lettered
    # how long a span without content waits for the log records of its span: past its end, and past
    # where its partition stood when it was read (operators/otlp_join.py)
    join_wait_s: float = Field(5.0, ge=0, le=3600)
    # the longest LLM call: a call's message log records are written when it starts, its span when it
    # ends, so a message record waits this much longer for its span before it is given up
    join_call_max_s: float = Field(900.0, ge=0, le=86400)


class PriceOverride(_Section):
    """Prices per 1M tokens for a model the catalog does not know (fine-tuned, self-hosted)."""

    input_per_mtok: NonNegMoney
    output_per_mtok: NonNegMoney
    cache_read_per_mtok: NonNegMoney | None = None
    cache_write_per_mtok: NonNegMoney | None = None


class PricingConfig(_Section):
    prefer_provided_cost: bool = True
    overrides: dict[str, PriceOverride] = {}


class CacheConfig(_Section):
    backend: Literal["auto", "redis", "memory"] = "auto"
    redis_url: str = ""
    ttl_s: int = Field(7 * 86_400, ge=1)
    max_entries: int = Field(200_000, ge=1)
    retry_after_s: float = Field(5.0, gt=0)  # Redis down: judge without the cache, retry after this
    lowercase: bool = False
    volatile_patterns: tuple[str, ...] = (
        r"\b[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}\b",
        r"\b\d{4}-\d{2}-\d{2}([T ]\d{2}:\d{2}(:\d{2}(\.\d+)?)?(Z|[+-]\d{2}:?\d{2})?)?\b",
    )


class SamplingRule(_Section):
    """`rate` for the events it matches; every field that is set must match.

    Names are glob patterns (`code-*`); lengths are bucket labels as built from
    `length_buckets` (`<1000`, `1000-4000`, `>=4000`); `flag` is the prefix of a
    tier-0 rule that fired (`refusal.`).
    """

    rate: float = Field(ge=0.0, le=1.0)
    tenant: str | None = None
    agent: str | None = None
    model: str | None = None
    variant: str | None = None
    input_length: str | None = None
    output_length: str | None = None
    flag: str | None = None


class SamplingConfig(_Section):
    """The stratified sampler (operators/sample.py has the design and the math)."""

    base_rate: float = Field(0.1, ge=0.0, le=1.0)
    version: str = "v1"
    # a stratum is tenant x agent x these x the matching rule
    strata: tuple[Literal["model", "variant", "input_length", "output_length", "flags"], ...] = (
        "model",
        "variant",
        "input_length",
    )
    length_buckets: tuple[int, ...] = (1000, 4000)  # token edges of the length buckets
    rules: tuple[SamplingRule, ...] = ()  # first match wins; no match: base_rate
    always_over_tokens: int = Field(8000, ge=0)  # input + output tokens; 0: off
    always_on_flags: tuple[str, ...] = ("pii.", "jailbreak.", "toxicity.")  # tier-0 flag prefixes
    min_per_stratum: int = Field(2, ge=0)  # K per window
    max_per_tenant_per_window: int = Field(600, ge=0)  # M; 0: no cap
    # s: at most this share of a tenant's events judged per window, forced judging and K included
    # (operators/sample.py: "Judged-share ceiling"); 0: none
    max_judged_share: float = Field(0.2, ge=0.0, le=1.0)
    judged_share_by_tenant: dict[str, Annotated[float, Field(ge=0.0, le=1.0)]] = {}  # tenant -> s
    window_s: int = Field(60, ge=1)
    allowed_lateness_s: float = Field(10.0, ge=0)
    idle_s: float = Field(5.0, ge=0)  # and no arrival for this long (wall clock) before a window closes

    def judged_share(self, tenant: str) -> float:
        """The tenant's judged-share ceiling (0: none)."""
        return self.judged_share_by_tenant.get(tenant, self.max_judged_share)

    @model_validator(mode="after")
    def _valid_buckets(self) -> SamplingConfig:
        edges = self.length_buckets
        if any(e <= 0 for e in edges) or list(edges) != sorted(set(edges)):
            msg = f"sampling.length_buckets must be increasing positive token counts, got {list(edges)}"
            raise ValueError(msg)
        from operators.sample_design import bucket_labels

        labels = bucket_labels(edges)
        for i, r in enumerate(self.rules):
            for name in ("input_length", "output_length"):
                value = getattr(r, name)
                if value is not None and value not in labels:
                    msg = f"sampling.rules[{i}].{name} = {value!r}: not a length bucket; allowed: {labels}"
                    raise ValueError(msg)
        return self


class WindowsConfig(_Section):
    size_s: int = Field(60, ge=1)
    allowed_lateness_s: int = Field(300, ge=0)
    # judge verdicts return well after their requests during replays: more slack
    judge_allowed_lateness_s: int = Field(1800, ge=0)
    # coarser windows rolled up from the minutes (same table, told apart by window_s)
    rollups_s: tuple[int, ...] = (3600, 86400)
    # open windows that changed are written this often (wall time) as provisional rows, which the
    # final row replaces, so reports see the current minute; 0: only closed windows are written
    provisional_s: float = Field(5.0, ge=0)
    # with Kafka input, drop a window key's state (cost windows and their levels; abuse, estimates,
    # savings) once its windows are past their lateness (keys that come and go do not add up); off:
    # every key ever seen is kept
    drop_finished_keys: bool = True
    # drop Kafka re-deliveries (each event_id counted once); off only with producers that
    # never re-send (idempotent producers, no mirrors): it costs ~20% on one process, ~50% on two
    drop_redeliveries: bool = True
    # keys the seen-set is sharded over: more spread the work after it over more workers, fewer keep
    # batches large downstream (each shard's events travel on as one list per batch)
    redelivery_shards: int = Field(16, ge=1, le=4096)
    # how long (event time) an event_id is remembered; unset: the longest window plus the lateness
    dedup_horizon_s: int | None = Field(None, ge=0)

    @property
    def redelivery_horizon_s(self) -> int:
        if self.dedup_horizon_s is not None:
            return self.dedup_horizon_s
        lateness = max(self.allowed_lateness_s, self.judge_allowed_lateness_s)
        return max((self.size_s, *self.rollups_s)) + lateness

    @model_validator(mode="after")
    def _rollups_nest(self) -> WindowsConfig:
        sizes = (self.size_s, *self.rollups_s)
        for smaller, larger in itertools.pairwise(sizes):
            if larger <= smaller or larger % smaller:
                msg = (
                    f"windows.rollups_s: each size must be a larger multiple of the one before "
                    f"(starting with size_s = {self.size_s}), got {list(self.rollups_s)}"
                )
                raise ValueError(msg)
        return self


class ClickHouseConfig(_Section):
    dsn: str = "chdb://.judgeflow/chdb"
    database: str = "judgeflow"
    store_text: bool = False
    max_retry_s: float = Field(60.0, gt=0)
    # inserts run on a writer thread per sink partition while the worker goes on, flushed before each
    # epoch commits; false: the worker waits for each insert's answer in line (the same rows)
    write_behind: bool = True
    # write-behind: a sink partition inserts once this many rows wait, or once the first has waited
    # linger_s (and at every epoch's end): fewer, larger inserts cost the worker and the server less
    insert_rows: int = Field(10_000, ge=1)
    insert_linger_s: float = Field(1.0, ge=0)
    # at start: keep trying to reach ClickHouse (schema) and Kafka (brokers, input topics) for this long
    startup_timeout_s: float = Field(120.0, ge=0)


class RetentionConfig(_Section):
    """Days each ClickHouse table keeps a row after it was written (`inserted_at`, so a backfill of
    old traffic is kept too); 0 keeps rows for good. Set as table TTLs by `judgeflow init-db` and at
    every start (altered only when changed)."""

    llm_events_days: int = Field(90, ge=0)
    evaluations_days: int = Field(90, ge=0)
    # cost_windows holds every window size: the windows.size_s rows (1 min) and the rollups (1 h, 1 day)
    cost_windows_days: int = Field(35, ge=0)
    cost_rollups_days: int = Field(0, ge=0)
    quality_estimates_days: int = Field(90, ge=0)
    judge_savings_days: int = Field(90, ge=0)
    alerts_days: int = Field(0, ge=0)
    dead_letters_days: int = Field(30, ge=0)
    pricing_issues_days: int = Field(0, ge=0)
    abuse_windows_days: int = Field(90, ge=0)

    def table_days(self) -> dict[str, int]:
        """Table -> days, for the tables with one retention (all but cost_windows)."""
        windowed = ("cost_windows_days", "cost_rollups_days")
        return {key.removesuffix("_days"): days for key, days in self if key not in windowed}

    def window_days(self, windows: WindowsConfig) -> dict[int, int]:
        """cost_windows window size (s) -> days."""
        rollups = dict.fromkeys(windows.rollups_s, self.cost_rollups_days)
        return {windows.size_s: self.cost_windows_days, **rollups}


class MetricsConfig(_Section):
    port: int | None = Field(None, ge=0, le=65535)
    host: str = "127.0.0.1"  # 0.0.0.0 only inside a container network
    # /healthz fails after this long without progress while input waits (env JUDGEFLOW_HEALTH_STALL_S);
    # longer than clickhouse.max_retry_s: a sink riding out an outage is not stuck
    stall_s: float = Field(300.0, gt=0, allow_inf_nan=False)
    # label cardinality per process: the first N tenants, agents and models seen keep their names,
    # later ones are counted as __other__; the LLM spend metrics keep the first N (tenant, agent, model)
    # combinations, later ones count as (tenant, __other__, __other__)
    max_label_values: int = Field(500, ge=1)
    max_label_sets: int = Field(5000, ge=1)


class FlowConfig(_Section):
    """Everything tunable about one judgeflow deployment."""

    kafka: KafkaConfig = KafkaConfig()
    decode: DecodeConfig = DecodeConfig()
    otlp: OtlpConfig = OtlpConfig()
    pricing: PricingConfig = PricingConfig()
    cache: CacheConfig = CacheConfig()
    sampling: SamplingConfig = SamplingConfig()
    judges: JudgesConfig = JudgesConfig()
    windows: WindowsConfig = WindowsConfig()
    alerts: AlertsConfig = AlertsConfig()
    clickhouse: ClickHouseConfig = ClickHouseConfig()
    retention: RetentionConfig = RetentionConfig()
    metrics: MetricsConfig = MetricsConfig()

    @model_validator(mode="after")
    def _judge_windows_hold_sampler_windows(self) -> FlowConfig:
        """The estimates' and savings' windows (`windows.size_s`, `judge_allowed_lateness_s`) must hold
        whole sampler windows and wait at least as long: an event late for them is then late for its
        sampler window too, so its design counts leave the estimates with its verdicts
        (`operators.sample_tally`)."""
        size, sample = self.windows.size_s, self.sampling.window_s
        if size % sample:
            msg = f"windows.size_s: must be a multiple of sampling.window_s ({sample}), got {size}"
            raise ValueError(msg)
        if self.windows.judge_allowed_lateness_s < self.sampling.allowed_lateness_s:
            msg = (
                f"windows.judge_allowed_lateness_s: must be at least sampling.allowed_lateness_s "
                f"({self.sampling.allowed_lateness_s:g}), got {self.windows.judge_allowed_lateness_s}"
            )
            raise ValueError(msg)
        return self


class Secrets(_Section):
    openai_api_key: SecretStr | None = None
    anthropic_api_key: SecretStr | None = None
    webhook_urls: dict[str, SecretStr] = {}  # webhook target name -> URL read from its url_env


class Settings(_Section):
    """The frozen settings object built once at the composition root."""

    flow: FlowConfig
    secrets: Secrets = Secrets()
    config_path: str = ""


_ENV_OVERRIDES: dict[str, tuple[str, ...]] = {
    "JUDGEFLOW_KAFKA_BROKERS": ("kafka", "brokers"),
    "JUDGEFLOW_REDIS_URL": ("cache", "redis_url"),
    "JUDGEFLOW_CLICKHOUSE_DSN": ("clickhouse", "dsn"),
    "JUDGEFLOW_HEALTH_STALL_S": ("metrics", "stall_s"),
}


def load_settings(
    path: str | Path | None = None, *, env: Mapping[str, str] | None = None, **overrides: Any
) -> Settings:
    """Read the TOML flow config, apply environment overrides, validate.

    `overrides` are dotted keys for programmatic use (tests, demo), e.g.
    `load_settings(p, **{"kafka.brokers": "127.0.0.1:9092"})`.
    """
    env = os.environ if env is None else env
    path = Path(path) if path is not None else DEFAULT_CONFIG
    try:
        data = tomllib.loads(path.read_text())
    except FileNotFoundError as exc:
        msg = f"flow config {path} does not exist"
        raise ConfigError(msg) from exc
    except tomllib.TOMLDecodeError as exc:
        msg = f"flow config {path} is not valid TOML: {exc}"
        raise ConfigError(msg) from exc
    for var, keys in _ENV_OVERRIDES.items():
        if env.get(var):
            _set(data, keys, env[var])
    for dotted, value in overrides.items():
        _set(data, tuple(dotted.split(".")), value)
    # a provider's base URL goes to each judge tier that uses that provider (after the overrides,
    # which may add a tier or change its provider; an override of the URL itself wins)
    for tier in ("tier1", "tier2"):
        section = data.get("judges", {}).get(tier)
        if (section is None and tier == "tier2") or f"judges.{tier}.base_url" in overrides:
            continue
        provider = (section or {}).get("provider", "openai")
        url = env.get("ANTHROPIC_BASE_URL" if provider == "anthropic" else "OPENAI_BASE_URL")
        if url:
            _set(data, ("judges", tier, "base_url"), url)
    try:
        flow = FlowConfig.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(_explain(path, exc)) from None
    secrets = Secrets(
        openai_api_key=env.get("OPENAI_API_KEY") or None,
        anthropic_api_key=env.get("ANTHROPIC_API_KEY") or None,
        webhook_urls={
            t.name: env[t.url_env] for t in flow.alerts.webhooks.targets if t.url_env and env.get(t.url_env)
        },
    )
    return Settings(flow=flow, secrets=secrets, config_path=str(path))


def _set(data: dict, keys: tuple[str, ...], value: Any) -> None:
    for key in keys[:-1]:
        data = data.setdefault(key, {})
    data[keys[-1]] = value


def _explain(path: Path, exc: ValidationError) -> str:
    lines = [f"flow config {path} is invalid:"]
    for err in exc.errors():
        where = ".".join(str(p) for p in err["loc"]) or "(top level)"
        got = err.get("input")
        shown = "" if isinstance(got, dict) else f" (got {got!r})"
        msg = str(err["msg"]).removeprefix("Value error, ")
        if err["type"] == "extra_forbidden":
            lines.append(f"  {where}: unknown key{shown}")
        elif err["type"] == "value_error" and (not err["loc"] or msg.startswith(f"{err['loc'][0]}.")):
            lines.append(f"  {msg}")  # a check of ours: its message names the key
        else:
            lines.append(f"  {where}: {err['msg']}{shown}")
    return "\n".join(lines)
