"""The Prometheus rules in docker/prometheus/: valid (`promtool check rules`),
behaving as specified (`promtool test rules`: levels, pending, hysteresis,
daily spend, counter resets; for the operations rules each symptom and its
look-alikes), and in step with the flow config's defaults and the metrics the
job exports."""

from __future__ import annotations

import re
import shutil
import subprocess
from decimal import Decimal
from pathlib import Path

import pytest
from bytewax.connectors.kafka import BYTEWAX_CONSUMER_LAG_GAUGE

from core import metrics
from sinks import clickhouse
from tests.conftest import flow_settings

PROM = Path(__file__).resolve().parents[1] / "docker" / "prometheus"
RULES = PROM / "rules" / "judgeflow.yml"
TESTS = PROM / "tests" / "judgeflow_test.yml"
OPS_RULES = PROM / "rules" / "operations.yml"
OPS_TESTS = PROM / "tests" / "operations_test.yml"


def promtool(*args: str) -> subprocess.CompletedProcess[str]:
    exe = shutil.which("promtool")
    if exe is None:
        pytest.fail(
            "promtool is not installed: `apt-get install -y --no-install-recommends prometheus` "
            "(or run `make test`, which installs it)"
        )
    return subprocess.run([exe, *args], capture_output=True, text=True, timeout=120, check=False)


def test_rules_are_valid():
    done = promtool("check", "rules", str(RULES))
    assert done.returncode == 0, done.stdout + done.stderr
    assert "SUCCESS: 8 rules found" in done.stdout


def test_rule_unit_tests_pass():
    done = promtool("test", "rules", str(TESTS))
    assert done.returncode == 0, done.stdout + done.stderr
    assert "SUCCESS" in done.stdout


def thresholds(alert: str) -> tuple[Decimal, Decimal]:
    """(fires at, keeps firing down to) of one alert in the rules file."""
    text = RULES.read_text()
    block = text[text.index(f"- alert: {alert}\n") :].split("- alert:", 2)[1]
    found = [Decimal(x) for x in re.findall(r"increase1[hd] >= ([\d.]+)", block)]
    assert len(found) == 2, block
    return found[0], found[1]


def test_thresholds_follow_the_flow_config_defaults():
    alerts = flow_settings().flow.alerts
    keep = 1 - Decimal(str(alerts.hysteresis))
    burn = alerts.burn_rate
    for alert, level in (
        ("JudgeflowBurnRateWarn", burn.warn),
        ("JudgeflowBurnRateCritical", burn.critical),
        ("JudgeflowBurnRateEmergency", burn.emergency),
        ("JudgeflowDailySpend", alerts.daily_spend.critical),
    ):
        assert thresholds(alert) == (level, level * keep), alert


def test_rules_read_metrics_the_job_exports():
    text = RULES.read_text()
    assert "judgeflow_cost_usd_total" in text and "judgeflow_llm_cost_usd_total" in text
    sample = metrics.COST.labels(tenant="t", category="llm")
    assert sample is not None  # the labels the rules sum by and filter on exist
    assert {"tenant", "category"} == set(metrics.COST._labelnames)
    assert {"tenant", "agent", "model"} == set(metrics.LLM_COST._labelnames)


def test_operations_rules_are_valid_and_their_unit_tests_pass():
    done = promtool("check", "rules", str(OPS_RULES))
    assert done.returncode == 0, done.stdout + done.stderr
    assert "SUCCESS: 12 rules found" in done.stdout
    done = promtool("test", "rules", str(OPS_TESTS))
    assert done.returncode == 0, done.stdout + done.stderr
    assert "SUCCESS" in done.stdout


def ops_threshold(alert: str, pattern: str) -> Decimal:
    text = OPS_RULES.read_text()
    block = text[text.index(f"- alert: {alert}\n") :].split("- alert:", 2)[1]
    [found] = re.findall(pattern, block)
    return Decimal(found)


def test_operations_thresholds_follow_the_flow_config_defaults():
    flow = flow_settings().flow
    # 30 s above the sampler's own delay: half a sampling window on average, then its lateness or
    # (with alert actions) until the tenant's alerts are evaluated through the window's start
    window = Decimal(flow.sampling.window_s)
    after_end = max(Decimal(str(flow.sampling.allowed_lateness_s)), flow.alerts.eval_delay_s - window)
    sampler_wait = window / 2 + after_end
    assert ops_threshold("JudgeflowEvaluationsSlow", r"avg5m > ([\d.]+)") == sampler_wait + 30
    # lag below one Kafka batch is noise
    assert ops_threshold("JudgeflowConsumerLagGrowing", r"lag:sum > ([\d.]+)") == flow.kafka.batch_size


def test_operations_rules_read_labels_the_job_exports():
    assert metrics.EVALUATION_LATENCY._labelnames == ("tier",)
    assert metrics.JUDGE_DISABLED._labelnames == ("judge",)
    assert metrics.JUDGE_BREAKER_OPEN._labelnames == ("judge",)
    assert metrics.DEAD_LETTERS._labelnames == ("stage", "reason")
    assert clickhouse.FAILURES._labelnames == clickhouse.RETRIES._labelnames == ("table",)
    # bytewax's Kafka source exports the lag per step, topic and partition
    assert BYTEWAX_CONSUMER_LAG_GAUGE._labelnames == ("step_id", "topic", "partition")
