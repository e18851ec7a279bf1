"""Scale-out: two `judgeflow run` processes form one bytewax cluster over the
topic's partitions and share one ClickHouse (over HTTP, through the chdb
front). Every event is counted exactly once and the windows reconcile."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import clickhouse_connect
import pytest

from simulators.chdb_http import start_chdb_http
from simulators.kafka_mock import produce_all
from simulators.traffic import generate
from tests.conftest import CONFIG, free_port, job_env

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_two_processes_split_the_partitions_and_count_every_event_once(kafka, judge_endpoint, tmp_path):
    kafka.create_topic("llm-events", 4)
    messages = list(generate(limit=4000))
    produce_all(kafka.bootstrap, "llm-events", messages)
    bad = sum(1 for k, _, _ in messages if k.startswith(b"bad-"))
    with start_chdb_http(tmp_path / "chdb") as url:
        env = job_env(kafka, url, judge_endpoint)
        addresses = ";".join(f"127.0.0.1:{free_port()}" for _ in range(2))
        procs = [
            subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "flows.cli",
                    "run",
                    "--config",
                    str(CONFIG),
                    "--bounded",
                    "-i",
                    str(i),
                    "-a",
                    addresses,
                ],
                cwd=ROOT,
                env=env,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.PIPE,
            )
            for i in range(2)
        ]
        for p in procs:
            _, err = p.communicate(timeout=300)
            assert p.returncode == 0, err.decode()[-3000:]

        host, port = url.removeprefix("http://").split(":")
        client = clickhouse_connect.get_client(host=host, port=int(port), database="judgeflow")
        n, cost = client.query("SELECT count(), sum(cost_usd) FROM llm_events FINAL").result_rows[0]
        assert n == len(messages) - bad
        assert client.query("SELECT count() FROM dead_letters FINAL").result_rows[0][0] == bad
        requests, window_cost = client.query(
            "SELECT sum(requests), sum(cost_usd) FROM cost_windows FINAL"
            " WHERE window_s = 60 AND category = 'llm'"
        ).result_rows[0]
        assert (requests, window_cost) == (n, cost)
        # every partition was read (bytewax assigns them to the cluster's two workers)
        partitions = client.query("SELECT uniqExact(source_partition) FROM llm_events FINAL").result_rows
        assert partitions[0][0] == 4


@pytest.mark.slow
def test_two_processes_write_what_one_process_writes(kafka, judge_endpoint, tmp_path):
    """The determinism matrix's hardest input (re-deliveries, late events, half the traffic on one
    partition) on one process and on a cluster of two: the same events, dead letters, cost windows at
    every size, alerts, abuse windows, evaluations (the judged set, tiers, labels, inclusion
    probabilities) and quality estimates. The progress board aligns the two processes' partitions; a
    sampler window waits until the flow has processed what every partition of the cluster released up
    to its end (bytewax's epochs), and an event is late by its position in its partition — so no
    window is decided while one of its events is still crossing from the other process."""
    from tests.test_fault_matrix import compare, result, run_job, skewed_topic

    kafka.create_topic("llm-events", 4)
    produce_all(kafka.bootstrap, "llm-events", skewed_topic(6000))
    with start_chdb_http(tmp_path / "one") as url:
        one = run_job(job_env(kafka, url, judge_endpoint))
        _, err = one.communicate(timeout=600)
        assert one.returncode == 0, err.decode()[-3000:]
        want = result(url)
    assert len(want["evaluations"]) > 1000 and len(want["alerts"]) > 0
    with start_chdb_http(tmp_path / "two") as url:
        addresses = ";".join(f"127.0.0.1:{free_port()}" for _ in range(2))
        procs = [
            run_job(job_env(kafka, url, judge_endpoint), "-i", str(i), "-a", addresses) for i in range(2)
        ]
        for p in procs:
            _, err = p.communicate(timeout=600)
            assert p.returncode == 0, err.decode()[-3000:]
        differ = compare(result(url), want)
    differ.pop("judge_windows", None)  # calls one process's verdict cache saved and the other's did not
    assert differ == {}, differ
