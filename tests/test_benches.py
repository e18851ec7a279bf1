"""Every benchmark script still runs (on a tiny input) and prints its table: a bench that no longer
matches the code it measures would otherwise only be found when someone needs the numbers. No timing
is checked here."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

SMALL = {
    "alerts.py": ["--tenants", "5", "--hours", "1", "--repeat", "1"],
    "cache_stage.py": ["--events", "2000", "--repeat", "1"],
    "clickhouse_sinks.py": ["--events", "2000", "--repeat", "1"],
    "content_key.py": ["--texts", "200", "--repeat", "1"],
    "cost_path.py": ["--events", "4000", "--repeat", "1"],
    "estimates.py": ["--seeds", "3", "--shapes", "xstest", "presidio"],
    "judge_savings.py": ["--events", "500"],
    "judged_share.py": ["--seeds", "2", "--demo-events", "3000", "--shapes", "presidio", "halueval"],
    "judge_throughput.py": ["--calls", "40", "--latencies", "20", "--variants", "raw", "flow"],
    "kafka_source.py": ["--events", "4000", "--repeat", "1"],
    "local_model.py": ["--benign", "50", "--timed", "40", "--repeat", "1"],
    "otlp_decode.py": ["--events", "200", "--spans", "1", "5", "--repeat", "1"],
    "otlp_join.py": ["--calls", "500", "--repeat", "1"],
    "profile_stages.py": ["--events", "1000"],
    "retention_disk.py": ["--events", "500"],
    "rules_engines.py": ["--events", "50", "--repeat", "1"],
    "scale_out.py": ["--events", "3000", "--repeat", "1"],
    "schedule_scan.py": ["--quiet", "0,2000", "--events", "3000"],
    "seen_set.py": ["--events", "3000", "--batch", "64"],
    "soak.py": ["--events", "3000", "--keys", "1000", "--hours", "2", "--churn", "1000"],
    "spend_metrics.py": ["--events", "2000", "--repeat", "1"],
    "throughput.py": ["--events", "2000", "--repeat", "1", "--sinks"],
    "tumbling_state.py": ["--number", "20", "--repeat", "1", "--days", "1"],
}


def test_every_bench_is_listed():
    scripts = {p.name for p in (ROOT / "bench").glob("*.py") if not p.name.startswith("_")}
    assert scripts == set(SMALL)


@pytest.mark.slow
@pytest.mark.parametrize("script", sorted(SMALL))
def test_the_bench_runs_and_prints_its_table(script, tmp_path):
    proc = subprocess.run(
        [sys.executable, str(ROOT / "bench" / script), *SMALL[script]],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "|" in proc.stdout or "/s" in proc.stdout, proc.stdout[-2000:]
