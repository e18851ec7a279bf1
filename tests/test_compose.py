"""docker/compose.yaml, checked offline (our build machines have no Docker engine): valid against the
Compose Specification's JSON schema (the `compose-spec.json` that check-jsonschema vendors from
github.com/compose-spec/compose-spec, Apache-2.0), every service with a healthcheck, a Kafka listener
for the host beside the containers' one, the environment the job reads (the names match the README's
table and what flows/config.py reads), and a .dockerignore that keeps local state out of the image."""

from __future__ import annotations

import copy
import fnmatch
import json
import re
import tomllib
from importlib.resources import files
from pathlib import Path

import jsonschema
import pytest
import yaml

from flows.config import load_settings
from tests.conftest import CONFIG

ROOT = Path(__file__).resolve().parents[1]
COMPOSE = ROOT / "docker" / "compose.yaml"
JOBS = ("judgeflow-0", "judgeflow-1")


def compose_spec() -> dict:
    schema = files("check_jsonschema.builtin_schemas.vendor") / "compose-spec.json"
    return json.loads(schema.read_text())


def spec_errors(doc: dict) -> list[str]:
    schema = compose_spec()
    validator = jsonschema.validators.validator_for(schema)(schema)
    return [f"{'/'.join(map(str, e.absolute_path))}: {e.message}" for e in validator.iter_errors(doc)]


@pytest.fixture(scope="module")
def compose() -> dict:
    return yaml.safe_load(COMPOSE.read_text())


def test_compose_is_valid_against_the_compose_specification(compose):
    assert compose_spec()["title"] == "Compose Specification"
    assert spec_errors(compose) == []


@pytest.mark.parametrize(
    ("break_it", "complaint"),
    [
        (lambda d: d["services"]["redis"]["healthcheck"].update(intervall="5s"), "intervall"),
        (
            lambda d: d["services"]["grafana"]["depends_on"]["prometheus"].update(condition="healthy"),
            "healthy",
        ),
        (lambda d: d["services"]["kafka"].update(port=["9094:9094"]), "port"),
        (lambda d: d["services"]["clickhouse"].update(ulimits={"nofile": {"soft": "lots"}}), "lots"),
    ],
)
def test_the_schema_check_catches_a_broken_compose_file(compose, break_it, complaint):
    broken = copy.deepcopy(compose)
    break_it(broken)
    errors = spec_errors(broken)
    assert errors and any(complaint in e for e in errors), errors


def test_every_service_has_a_healthcheck_and_waits_only_for_healthchecked_ones(compose):
    services = compose["services"]
    for name, service in services.items():
        check = service.get("healthcheck")
        assert check and check["test"] and not check.get("disable"), f"{name} has no healthcheck"
        for dep, how in (service.get("depends_on") or {}).items():
            assert dep in services, f"{name} depends on an unknown service {dep}"
            if how.get("condition") == "service_healthy":
                assert services[dep].get("healthcheck"), f"{name} waits for {dep}, which has no healthcheck"


def test_the_jobs_healthcheck_asks_healthz_on_the_configured_metrics_port(compose):
    flow = tomllib.loads((ROOT / "docker" / "judgeflow.toml").read_text())
    port = flow["metrics"]["port"]
    assert flow["metrics"]["host"] == "0.0.0.0"  # scraped and probed across the compose network
    for job in JOBS:
        test = compose["services"][job]["healthcheck"]["test"]
        assert test[:4] == ["CMD", "python", "-m", "flows.health"]  # the image has no curl
        assert f"http://127.0.0.1:{port}/healthz" in test[4:]
        assert all(url.startswith(f"http://127.0.0.1:{port}/") for url in test[4:])
        assert f"127.0.0.1:{9464 + JOBS.index(job)}:{port}" in compose["services"][job]["ports"]
    scraped = yaml.safe_load((ROOT / "docker" / "prometheus" / "prometheus.yml").read_text())
    targets = scraped["scrape_configs"][0]["static_configs"][0]["targets"]
    assert targets == [f"{job}:{port}" for job in JOBS]


def listeners(value: str) -> dict[str, tuple[str, int]]:
    out = {}
    for item in value.split(","):
        name, hostport = item.split("://")
        host, port = hostport.rsplit(":", 1)
        out[name] = (host, int(port))
    return out


def test_kafka_has_a_listener_for_the_containers_and_one_for_the_host(compose):
    kafka = compose["services"]["kafka"]
    env = kafka["environment"]
    bound, advertised = listeners(env["KAFKA_LISTENERS"]), listeners(env["KAFKA_ADVERTISED_LISTENERS"])
    protocols = dict(p.split(":") for p in env["KAFKA_LISTENER_SECURITY_PROTOCOL_MAP"].split(","))
    assert set(bound) <= set(protocols)
    # the containers' listener is what the jobs are given
    internal = env["KAFKA_INTER_BROKER_LISTENER_NAME"]
    job_env = compose["services"]["judgeflow-0"]["environment"]
    assert job_env["JUDGEFLOW_KAFKA_BROKERS"] == "{}:{}".format(*advertised[internal])
    assert advertised[internal][1] == bound[internal][1]
    # the host's: advertised on localhost, at a port published on the host's loopback
    [external] = [n for n, (host, _) in advertised.items() if host == "localhost"]
    port = advertised[external][1]
    assert bound[external][1] == port and external != internal
    assert f"127.0.0.1:{port}:{port}" in kafka["ports"]
    assert env["KAFKA_CONTROLLER_LISTENER_NAMES"] not in advertised


def readme_env_names() -> set[str]:
    """The variable names in the README's environment table (| variable | meaning | unset |)."""
    lines = (ROOT / "README.md").read_text().splitlines()
    start = lines.index("| variable | meaning | unset |")
    table = []
    for line in lines[start + 2 :]:
        if not line.startswith("|"):
            break
        table.append(line.split("|")[1])
    names = {n for cell in table for n in re.findall(r"`([A-Z][A-Z0-9_]+)`", cell)}
    assert names, "the README's environment table is empty"
    return names


def config_env_names() -> set[str]:
    """The environment names flows/config.py reads."""
    source = (ROOT / "flows" / "config.py").read_text()
    return set(re.findall(r'"((?:JUDGEFLOW|OPENAI|ANTHROPIC)_[A-Z0-9_]+)"', source))


SAMPLE = {
    "JUDGEFLOW_KAFKA_BROKERS": "kafka:9092",
    "JUDGEFLOW_REDIS_URL": "redis://redis:6379/0",
    "JUDGEFLOW_CLICKHOUSE_DSN": "http://judgeflow:pw@clickhouse:8123",
    "JUDGEFLOW_HEALTH_STALL_S": "123",
}


def test_the_environment_in_compose_is_what_the_readme_documents_and_the_config_reads(compose, tmp_path):
    documented, read = readme_env_names(), config_env_names()
    assert documented == read, f"README only: {documented - read}; config.py only: {read - documented}"
    for job in JOBS:
        env = compose["services"][job]["environment"]
        assert set(env) <= documented, f"{job}: not in the README's table: {set(env) - documented}"
        assert {"OPENAI_API_KEY", "ANTHROPIC_API_KEY"} <= set(env)
    # each name really changes the settings the job runs with (an anthropic tier 2 for its variables)
    config = tmp_path / "flow.toml"
    config.write_text(CONFIG.read_text() + '\n[judges.tier2]\nprovider = "anthropic"\nmodel = "claude-x"\n')
    plain = load_settings(config, env={})
    for name in sorted(read):
        value = SAMPLE.get(name, "http://judge:8000/v1" if name.endswith("_BASE_URL") else "secret")
        assert load_settings(config, env={name: value}) != plain, f"{name} does not change the settings"


def dockerignore_patterns() -> list[str]:
    lines = (ROOT / ".dockerignore").read_text().splitlines()
    return [line.strip() for line in lines if line.strip() and not line.startswith("#")]


def ignored(path: str, patterns: list[str]) -> bool:
    parts = path.split("/")
    for pattern in patterns:
        bare = pattern.removeprefix("**/")
        if fnmatch.fnmatch(path, pattern) or any(fnmatch.fnmatch(p, bare) for p in parts):
            return True
    return False


def test_dockerignore_keeps_local_state_out_and_what_the_image_copies_in():
    patterns = dockerignore_patterns()
    for local in (".venv", ".git", ".judgeflow", ".pytest_cache", ".ruff_cache", ".mypy_cache", ".env"):
        assert ignored(local, patterns), f"{local} would be sent to the Docker build"
    assert ignored("operators/__pycache__/price.cpython-312.pyc", patterns)
    dockerfile = (ROOT / "docker" / "Dockerfile").read_text()
    copied = [
        src for line in dockerfile.splitlines() if line.startswith("COPY ") for src in line.split()[1:-1]
    ]
    packages = {
        p.split(".")[0]
        for p in tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"]
    }
    assert {"pyproject.toml", "README.md", *packages} <= set(copied), (
        "every package in pyproject.toml is copied"
    )
    for src in copied:
        assert not ignored(src, patterns), f"the Dockerfile copies {src}, which .dockerignore leaves out"
    for package in sorted(packages):
        for f in (ROOT / package).rglob("*"):
            rel = f.relative_to(ROOT).as_posix()
            if f.is_file() and "__pycache__" not in rel:
                assert not ignored(rel, patterns), f"{rel} is left out of the image"
