"""Kubernetes (docker/k8s): the manifests are valid objects for the Kubernetes API (checked offline
against the schemas kubernetes-validate ships) and agree with each other and with `judgeflow run`;
every pod computes the process id and addresses `judgeflow run -i/-a` expects; and bytewax behaves as
the scaling procedure in the README says when each process has its own recovery directory."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import kubernetes_validate
import pytest
import yaml

from flows.cli import StartupError, _parser, _recovery
from flows.cluster import Pod, main, pod_from_env, pod_ordinal, run_args, wait_resolvable
from flows.config import ConfigError, load_settings
from flows.health_probes import ClusterShape, assigned_partitions
from tests.conftest import free_port

K8S = Path(__file__).resolve().parents[1] / "docker" / "k8s"
NAMESPACE = "llm-platform"


def manifests() -> dict[str, dict]:
    """Every object in docker/k8s by kind (one object per file)."""
    objects = {}
    for path in sorted(K8S.glob("*.yaml")):
        docs = [d for d in yaml.safe_load_all(path.read_text()) if d]
        assert len(docs) == 1, path
        objects[docs[0]["kind"]] = docs[0] | {"_file": path.name}
    return objects


def container(objects: dict[str, dict]) -> dict:
    (c,) = objects["StatefulSet"]["spec"]["template"]["spec"]["containers"]
    return c


def pod_env(objects: dict[str, dict], ordinal: int) -> dict[str, str]:
    """The environment Kubernetes gives pod `ordinal`: literal values and the downward API."""
    name = f"{objects['StatefulSet']['metadata']['name']}-{ordinal}"
    fields = {"metadata.name": name, "metadata.namespace": NAMESPACE}
    env = {}
    for var in container(objects)["env"]:
        if "value" in var:
            env[var["name"]] = var["value"]
        else:
            env[var["name"]] = fields[var["valueFrom"]["fieldRef"]["fieldPath"]]
    return env


# --- the manifests --------------------------------------------------------------------------------


@pytest.mark.parametrize("version", ["1.29", kubernetes_validate.latest_version()])
def test_every_manifest_is_a_valid_kubernetes_object(version):
    objects = manifests()
    assert set(objects) == {
        "Kustomization",
        "ConfigMap",
        "Secret",
        "Service",
        "StatefulSet",
        "PodDisruptionBudget",
    }
    for kind, obj in objects.items():
        if kind == "Kustomization":  # kustomize's own file, not an API object
            continue
        body = {k: v for k, v in obj.items() if k != "_file"}
        # strict: an unknown or misspelt field is an error, not silently dropped
        kubernetes_validate.validate(body, version, strict=True)


def test_the_validation_catches_a_misspelt_field():
    sts = {k: v for k, v in manifests()["StatefulSet"].items() if k != "_file"}
    sts["spec"]["template"]["spec"]["containers"][0]["livenesProbe"] = {"httpGet": {"path": "/healthz"}}
    with pytest.raises(kubernetes_validate.ValidationError, match="livenesProbe"):
        kubernetes_validate.validate(sts, "1.29", strict=True)


def test_the_kustomization_applies_every_manifest_but_the_secret():
    objects = manifests()
    listed = objects["Kustomization"]["resources"]
    files = {o["_file"] for k, o in objects.items() if k not in ("Kustomization", "Secret")}
    assert sorted(listed) == sorted(files)  # real keys are never overwritten by the placeholders


def test_every_pod_computes_the_addresses_judgeflow_run_expects():
    objects = manifests()
    sts, service = objects["StatefulSet"], objects["Service"]
    replicas = sts["spec"]["replicas"]
    command = container(objects)["command"]
    assert command[:3] == ["python", "-m", "flows.cluster"]
    cluster_port = {p["name"]: p["containerPort"] for p in container(objects)["ports"]}["cluster"]

    seen = []
    for ordinal in range(replicas):
        pod = pod_from_env(pod_env(objects, ordinal), hostname="ignored")
        args = _parser().parse_args(run_args(command[3:], pod))  # `judgeflow run`'s own parser
        assert args.func.__name__ == "_cmd_run"
        assert args.process_id == ordinal
        addresses = args.addresses.split(";")  # as `judgeflow run` splits them
        assert len(addresses) == replicas == len(set(addresses))
        # this pod's own entry is its DNS name under the headless Service: bytewax binds it
        assert addresses[ordinal] == (
            f"{sts['metadata']['name']}-{ordinal}.{service['metadata']['name']}"
            f".{NAMESPACE}.svc.cluster.local:{cluster_port}"
        )
        seen.append(addresses)
    assert all(a == seen[0] for a in seen)  # every process, the same list in the same order

    # the headless Service gives those names before any pod is ready, on the same port
    assert sts["spec"]["serviceName"] == service["metadata"]["name"]
    assert service["spec"]["clusterIP"] == "None"
    assert service["spec"]["publishNotReadyAddresses"] is True
    ports = {p["name"]: p for p in service["spec"]["ports"]}
    assert ports["cluster"]["port"] == cluster_port and ports["cluster"]["targetPort"] == "cluster"
    pod_labels = sts["spec"]["template"]["metadata"]["labels"]
    assert service["spec"]["selector"].items() <= pod_labels.items()
    assert sts["spec"]["podManagementPolicy"] == "Parallel"  # bytewax waits for every process


def test_the_pods_config_probes_volumes_and_secret_fit_together(tmp_path):
    objects = manifests()
    sts, c = objects["StatefulSet"], container(objects)
    spec = sts["spec"]["template"]["spec"]
    env = pod_env(objects, 0)
    assert int(env["JUDGEFLOW_PROCESSES"]) == sts["spec"]["replicas"]
    assert env["JUDGEFLOW_CLUSTER_SERVICE"] == sts["spec"]["serviceName"]

    args = _parser().parse_args(run_args(c["command"][3:], pod_from_env(env, "ignored")))
    mounts = {m["name"]: m["mountPath"] for m in c["volumeMounts"]}
    volumes = {v["name"]: v for v in spec["volumes"]}
    # the flow config is the ConfigMap's file, and it is a valid flow config
    config_map = objects["ConfigMap"]
    assert volumes["config"]["configMap"]["name"] == config_map["metadata"]["name"]
    (key,) = config_map["data"]
    assert str(args.config) == f"{mounts['config']}/{key}"
    toml = tmp_path / key
    toml.write_text(config_map["data"][key])
    secret = objects["Secret"]["stringData"]
    assert [s["secretRef"]["name"] for s in c["envFrom"]] == [objects["Secret"]["metadata"]["name"]]
    settings = load_settings(toml, env={**env, **secret})
    assert settings.flow.kafka.brokers == env["JUDGEFLOW_KAFKA_BROKERS"]
    assert settings.flow.cache.redis_url == env["JUDGEFLOW_REDIS_URL"]  # shared by the processes
    assert settings.flow.clickhouse.dsn == secret["JUDGEFLOW_CLICKHOUSE_DSN"]
    assert set(secret) <= {"OPENAI_API_KEY", "ANTHROPIC_API_KEY", "JUDGEFLOW_CLICKHOUSE_DSN"}
    assert settings.flow.metrics.stall_s > settings.flow.clickhouse.max_retry_s  # a sink riding out an outage
    assert settings.flow.metrics.stall_s == float(env["JUDGEFLOW_HEALTH_STALL_S"])

    # probes and Prometheus reach the health server on the config's metrics port
    metrics_port = {p["name"]: p["containerPort"] for p in c["ports"]}["metrics"]
    assert settings.flow.metrics.port == metrics_port and settings.flow.metrics.host == "0.0.0.0"
    probes = {name: c[name]["httpGet"] for name in ("startupProbe", "livenessProbe", "readinessProbe")}
    assert {n: p["path"] for n, p in probes.items()} == {
        "startupProbe": "/healthz",
        "livenessProbe": "/healthz",
        "readinessProbe": "/readyz",
    }
    assert all(p["port"] == "metrics" for p in probes.values())
    assert sts["spec"]["template"]["metadata"]["annotations"]["prometheus.io/port"] == str(metrics_port)
    assert c["resources"]["requests"]["cpu"] and c["resources"]["requests"]["memory"]

    # a volume per pod for recovery, where `--recovery-dir` points
    (claim,) = sts["spec"]["volumeClaimTemplates"]
    assert str(args.recovery_dir) == mounts[claim["metadata"]["name"]]
    assert sts["spec"]["persistentVolumeClaimRetentionPolicy"]["whenScaled"] == "Retain"

    pdb = objects["PodDisruptionBudget"]["spec"]
    assert pdb["selector"]["matchLabels"].items() <= sts["spec"]["template"]["metadata"]["labels"].items()


# --- the entrypoint -------------------------------------------------------------------------------


def test_the_ordinal_comes_from_a_statefulset_pods_name():
    assert pod_ordinal("judgeflow-0") == ("judgeflow", 0)
    assert pod_ordinal("judge-flow-12") == ("judge-flow", 12)
    for bad in ("judgeflow", "judgeflow-", "judgeflow-01", "judgeflow-abc12", "Judgeflow-1"):
        with pytest.raises(ConfigError, match="is not <statefulset>-<ordinal>"):
            pod_ordinal(bad)


def test_the_entrypoint_refuses_what_would_break_the_cluster():
    env = {"POD_NAMESPACE": "ns", "JUDGEFLOW_PROCESSES": "2", "JUDGEFLOW_CLUSTER_SERVICE": "judgeflow"}
    assert pod_from_env(env, "judgeflow-1").addresses() == [
        "judgeflow-0.judgeflow.ns.svc.cluster.local:2101",
        "judgeflow-1.judgeflow.ns.svc.cluster.local:2101",
    ]
    assert pod_from_env({**env, "POD_NAME": "jf-0"}, "judgeflow-1").statefulset == "jf"  # POD_NAME first
    with pytest.raises(ConfigError, match="outside a cluster of JUDGEFLOW_PROCESSES=2"):
        pod_from_env(env, "judgeflow-2")  # scaled up without raising JUDGEFLOW_PROCESSES
    with pytest.raises(ConfigError, match="POD_NAMESPACE, JUDGEFLOW_CLUSTER_SERVICE not set"):
        pod_from_env({"JUDGEFLOW_PROCESSES": "2"}, "judgeflow-0")
    with pytest.raises(ConfigError, match="JUDGEFLOW_CLUSTER_PORT must be a whole number above 0"):
        pod_from_env({**env, "JUDGEFLOW_CLUSTER_PORT": "x"}, "judgeflow-0")
    pod = Pod("judgeflow", 0, "ns", 1, "judgeflow")
    with pytest.raises(ConfigError, match=r"^-i, --addresses=a:1: the process id and addresses come from"):
        run_args(["--config", "c.toml", "-i", "3", "--addresses=a:1"], pod)
    assert run_args(["run", "--bounded"], pod) == run_args(["--bounded"], pod)


def test_the_entrypoint_waits_for_its_own_dns_name():
    clock, answers = [0.0], [OSError("no such host"), OSError("no such host"), "10.0.0.7"]

    def resolve(host: str) -> str:
        answer = answers.pop(0)
        if isinstance(answer, OSError):
            raise answer
        return answer

    def sleep(s: float) -> None:
        clock[0] += s

    wait_resolvable("judgeflow-0.judgeflow", resolve=resolve, sleep=sleep, clock=lambda: clock[0])
    assert answers == [] and clock[0] == 2.0

    def never(host: str) -> str:
        raise OSError("no such host")

    with pytest.raises(StartupError, match=r"did not resolve for 5 s .*publish not-ready addresses"):
        wait_resolvable("judgeflow-0", timeout_s=5, resolve=never, sleep=sleep, clock=lambda: clock[0])


def test_the_entrypoint_says_what_is_missing_in_one_line(monkeypatch, capsys):
    for var in ("POD_NAME", "POD_NAMESPACE", "JUDGEFLOW_PROCESSES", "JUDGEFLOW_CLUSTER_SERVICE"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("POD_NAME", "judgeflow-0")
    assert main(["--config", "x.toml"]) == 2
    err = capsys.readouterr().err
    assert err.strip() == (
        "judgeflow: POD_NAMESPACE, JUDGEFLOW_PROCESSES, JUDGEFLOW_CLUSTER_SERVICE not set "
        "(see docker/k8s/statefulset.yaml)"
    )


# --- what the scaling procedure relies on ---------------------------------------------------------

FLOW = """
import os

import bytewax.operators as op
from bytewax.dataflow import Dataflow
from bytewax.inputs import FixedPartitionedSource, StatefulSourcePartition

ITEMS = int(os.environ["ITEMS"])


class _Part(StatefulSourcePartition):
    def __init__(self, key, resume):
        self.key, self.read = key, resume or 0

    def next_batch(self):
        if self.read >= ITEMS:
            raise StopIteration()
        self.read += 1
        return [(self.key, 1)]

    def snapshot(self):
        return self.read


class Parts(FixedPartitionedSource):
    def list_parts(self):
        return ["a", "b", "c"]

    def build_part(self, step_id, for_part, resume_state):
        print("BUILT", for_part, flush=True)
        return _Part(for_part, resume_state)


flow = Dataflow("scale")
counts = op.stateful_map("count", op.input("in", flow, Parts()), lambda n, x: ((n or 0) + x, (n or 0) + x))
op.inspect("out", counts, lambda _step, kv: print("OUT", kv[0], kv[1], flush=True))
"""


def run_cluster(tmp_path: Path, processes: int, items: int) -> list[list[str]]:
    """Run the test flow on `processes` processes, each with its own recovery directory made as
    `judgeflow run --recovery-dir` makes it; each process's output lines."""
    (tmp_path / "scale_flow.py").write_text(FLOW)
    addresses = ";".join(f"127.0.0.1:{free_port()}" for _ in range(processes))
    env = {**os.environ, "ITEMS": str(items), "PYTHONPATH": str(tmp_path)}
    procs, logs = [], [(tmp_path / f"out-{i}.log", tmp_path / f"err-{i}.log") for i in range(processes)]
    for i, (out, err) in enumerate(logs):
        recovery = tmp_path / f"recovery-{i}"
        _recovery(recovery)
        cmd = [sys.executable, "-m", "bytewax.run", "scale_flow:flow", "-i", str(i), "-a", addresses]
        cmd += ["-r", str(recovery), "-s", "10", "-b", "0"]
        with out.open("wb") as stdout, err.open("wb") as stderr:
            procs.append(subprocess.Popen(cmd, cwd=tmp_path, env=env, stdout=stdout, stderr=stderr))
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and any(p.poll() is None for p in procs):
        if any(p.returncode for p in procs):  # its peers fail too, or wait for it for ever
            time.sleep(2)
            break
        time.sleep(0.05)
    for p in procs:
        if p.poll() is None:
            p.kill()
            p.wait()
    # a process whose peer failed says only "Send thread panic": every process's error tells which
    failed = {
        i: err.read_text()[-3000:] or f"killed ({p.returncode})"
        for i, (p, (_, err)) in enumerate(zip(procs, logs, strict=True))
        if p.returncode
    }
    assert not failed, "\n".join(f"--- process {i}:\n{err}" for i, err in failed.items())
    return [out.read_text().splitlines() for out, _ in logs]


@pytest.mark.slow
def test_a_cluster_resumes_from_process_0s_recovery_directory_on_more_processes(tmp_path):
    first = run_cluster(tmp_path, processes=2, items=20)
    # partitions go round robin over the workers, as /readyz computes it
    built = [sum(line.startswith("BUILT") for line in out) for out in first]
    assert built == [assigned_partitions(3, ClusterShape(i, 2, 1)) for i in range(2)] == [2, 1]

    # process 1's volume is lost, and the cluster grows to 3 processes with more input: only
    # process 0's directory held the snapshots, so every count goes on from where it was
    for f in (tmp_path / "recovery-1").iterdir():
        f.unlink()
    (tmp_path / "recovery-1").rmdir()
    second = run_cluster(tmp_path, processes=3, items=30)
    built = [sum(line.startswith("BUILT") for line in out) for out in second]
    assert built == [assigned_partitions(3, ClusterShape(i, 3, 1)) for i in range(3)] == [1, 1, 1]
    counts: dict[str, list[int]] = {}
    for line in (line for out in second for line in out if line.startswith("OUT")):
        _, key, n = line.split()
        counts.setdefault(key, []).append(int(n))
    assert {k: (min(v), max(v)) for k, v in counts.items()} == {k: (21, 30) for k in "abc"}
