"""The demo's closed loop, asserted on ClickHouse rows: the replay (an hour of real arrivals from two
services, the sample shipped in the package, read in seconds) drives globex's burn rate to critical, the
alert sets its judge sampling to 1% for an hour of event time, and the sampler — which decides each window
only once the tenant's alerts are evaluated through it — judges under 1% of globex's events from then on,
against ~10% before."""

from __future__ import annotations

import pytest

from flows.demo import CLOSED_LOOP_SQL, run_demo
from sinks.clickhouse import connect
from tests.conftest import rows


@pytest.mark.slow
def test_the_demo_throttles_judging_of_the_tenant_its_alert_names(chdb_dsn, database, capsys):
    assert run_demo(dsn=chdb_dsn, database=database, judge_latency_ms=5) == 0
    printed = capsys.readouterr().out
    assert "the closed loop" in printed
    client = connect(chdb_dsn, database)
    ((tenant, at, before, before_pct, during, during_pct),) = rows(client, CLOSED_LOOP_SQL)
    assert tenant == "globex" and before > 1000 and during > 1000
    # the normal design: 10% base rate plus the forced strata (17.6% of globex's events here), less the
    # events that shared an identical text's call or found their verdict in the cache (7.6-7.9%)
    assert before_pct > 5
    assert during_pct < 2  # 1%, in event time, although the whole hour was read before the alert
    critical = "SELECT toString(ts) FROM alerts FINAL WHERE tenant_id = 'globex' AND level = 'critical'"
    assert rows(client, critical) == [(at,)]
